//! The `log` crate's sink: Valkey's own log file.
//!
//! It keeps no module context, so it stays valid across MODULE UNLOAD and LOAD, and it is safe
//! from worker threads (Valkey allows `Log` with no context from any thread).

use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Metadata, Record};
use valkey_module::raw;

struct ValkeyLog;

static LOGGER: ValkeyLog = ValkeyLog;

/// A cap on lines a second. Failing AUTHs can each log a line, and a flood of them must not
/// fill the disk; what is dropped is counted and reported.
struct RateLimit {
    what: &'static str,
    per_second: u64,
    /// The current one-second window, the lines logged in it, and the lines dropped since the
    /// last report. Approximate under races, which is all a rate limit needs.
    window: AtomicU64,
    lines: AtomicU64,
    dropped: AtomicU64,
}

impl RateLimit {
    const fn new(what: &'static str, per_second: u64) -> RateLimit {
        RateLimit {
            what,
            per_second,
            window: AtomicU64::new(0),
            lines: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written now; reports the lines dropped in earlier windows.
    fn admit(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let window = self.window.load(Relaxed);
        if now != window
            && self
                .window
                .compare_exchange(window, now, Relaxed, Relaxed)
                .is_ok()
        {
            self.lines.store(0, Relaxed);
            let dropped = self.dropped.swap(0, Relaxed);
            if dropped > 0 {
                write(
                    c"warning",
                    &format!(
                        "valkeyauth: {dropped} {} were dropped (over {} a second)",
                        self.what, self.per_second
                    ),
                );
            }
        }
        if self.lines.fetch_add(1, Relaxed) < self.per_second {
            return true;
        }
        self.dropped.fetch_add(1, Relaxed);
        false
    }
}

/// Each kind of line has its own budget, so that a storm of one kind (allowed logins,
/// say) cannot silence another (denials, or a server going down).
static GENERAL: RateLimit = RateLimit::new("log lines", 20);
static AUDIT_ALLOWED: RateLimit = RateLimit::new("audit lines of allowed logins", 100);
static AUDIT_REFUSED: RateLimit = RateLimit::new("audit lines of refused logins", 100);

/// Which audit lines: allowed logins go to the verbose level, the rest to notice.
pub enum AuditLevel {
    Allowed,
    Refused,
}

/// Writes an audit record to the Valkey log. The file sink, not this one, keeps every record.
pub fn audit(level: AuditLevel, text: impl FnOnce() -> String) {
    let (limit, level) = match level {
        AuditLevel::Allowed => (&AUDIT_ALLOWED, c"verbose"),
        AuditLevel::Refused => (&AUDIT_REFUSED, c"notice"),
    };
    if limit.admit() {
        write(level, &text());
    }
}

fn write(level: &CStr, text: &str) {
    // Messages may quote untrusted text; a NUL would cut the C string, so it goes.
    let Ok(text) = CString::new(text.replace('\0', "\\0")) else {
        return;
    };
    // SAFETY: reads a function pointer that module init filled in.
    let Some(log_fn) = (unsafe { raw::RedisModule_Log }) else {
        return;
    };
    // SAFETY: the format is a constant "%s", so the message is never read as a format; all
    // pointers are valid NUL-terminated strings for the duration of the call; a NULL context
    // is allowed from any thread.
    unsafe {
        log_fn(
            std::ptr::null_mut(),
            level.as_ptr(),
            c"%s".as_ptr(),
            text.as_ptr(),
        )
    };
}

/// Routes `log` records to Valkey. A second call (after a reload in the same process) finds the
/// logger already installed, which is fine.
pub fn install() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(LevelFilter::Info);
}

impl log::Log for ValkeyLog {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        let level: &CStr = match record.level() {
            Level::Error | Level::Warn => c"warning",
            Level::Info => c"notice",
            Level::Debug | Level::Trace => c"verbose",
        };
        if GENERAL.admit() {
            write(level, &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

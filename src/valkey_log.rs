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

/// At most this many lines a second reach the log. Failing AUTHs can each log a line, and a
/// flood of them must not fill the disk; what is dropped is counted and reported.
const LINES_PER_SECOND: u64 = 20;

/// The current one-second window, the lines logged in it, and the lines dropped since the last
/// report. Approximate under races, which is all a rate limit needs.
static WINDOW: AtomicU64 = AtomicU64::new(0);
static LINES: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Whether a line may be written now; reports the lines dropped in earlier windows.
fn admit() -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let window = WINDOW.load(Relaxed);
    if now != window
        && WINDOW
            .compare_exchange(window, now, Relaxed, Relaxed)
            .is_ok()
    {
        LINES.store(0, Relaxed);
        let dropped = DROPPED.swap(0, Relaxed);
        if dropped > 0 {
            write(c"warning", &format!("valkeyauth: {dropped} log lines were dropped (over {LINES_PER_SECOND} a second)"));
        }
    }
    if LINES.fetch_add(1, Relaxed) < LINES_PER_SECOND {
        return true;
    }
    DROPPED.fetch_add(1, Relaxed);
    false
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
        if admit() {
            write(level, &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

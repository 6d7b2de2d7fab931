//! The `log` crate's sink: Valkey's own log file.
//!
//! It keeps no module context, so it stays valid across MODULE UNLOAD and LOAD, and it is safe
//! from worker threads (Valkey allows `Log` with no context from any thread).

use std::ffi::{CStr, CString};

use log::{Level, LevelFilter, Metadata, Record};
use valkey_module::raw;

struct ValkeyLog;

static LOGGER: ValkeyLog = ValkeyLog;

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
        // Messages may quote untrusted text; a NUL would cut the C string, so it goes.
        let text = record.args().to_string().replace('\0', "\\0");
        let Ok(text) = CString::new(text) else { return };
        // SAFETY: RedisModule_Log is set by module init before any record can be logged; the
        // format is a constant "%s" so the message is never read as a format; all pointers are
        // valid NUL-terminated strings for the duration of the call.
        unsafe {
            if let Some(log_fn) = raw::RedisModule_Log {
                log_fn(
                    std::ptr::null_mut(),
                    level.as_ptr(),
                    c"%s".as_ptr(),
                    text.as_ptr(),
                );
            }
        }
    }

    fn flush(&self) {}
}

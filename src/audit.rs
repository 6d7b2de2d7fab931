//! The audit trail: one record per authentication decision, to the Valkey log or as JSON lines
//! to a file.
//!
//! The main thread only formats a record and hands it to the writer thread through a bounded
//! channel; it never touches the file. When the channel is full the record is dropped and
//! counted (`audit_dropped` in INFO) rather than making a login wait on a disk.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use crate::engine::{Class, Outcome};
use crate::files::open_regular_file;
use crate::ldap::is_unsafe_for_log;
use crate::stats::{Event, STATS};
use crate::valkey_log;

/// Where decisions are recorded (`audit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Off,
    /// The Valkey log: denials at notice level, allowed logins at verbose.
    Log,
    /// JSON lines appended to `audit_file`.
    File,
}

/// Records waiting for the writer; beyond this they are dropped and counted.
const QUEUE: usize = 65_536;

/// One decision. Never holds a password.
pub struct Record<'a> {
    pub client: String,
    pub client_id: u64,
    pub username: &'a [u8],
    pub outcome: Outcome,
    /// The directory server that answered, if one did.
    pub server: Option<&'a str>,
    /// From the AUTH's arrival to the decision.
    pub latency: Duration,
    /// Answered from the cache, without asking the directory.
    pub cached: bool,
    /// Valkey's own password check follows (`local_fallback`).
    pub local_fallback: bool,
}

impl Record<'_> {
    fn class(&self) -> &'static str {
        match self.outcome.class() {
            Class::Allowed => "allowed",
            Class::Denied => "denied",
            Class::Outage => "outage",
        }
    }

    /// A username that is not UTF-8, byte for byte: shown as text, its invalid bytes would all
    /// become U+FFFD, and different names the same.
    fn username_hex(&self) -> Option<String> {
        std::str::from_utf8(self.username).err()?;
        Some(self.username.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// One JSON object on one line; every text is escaped, so no input can add a line.
    pub fn json(&self, now: SystemTime) -> String {
        let mut out = String::with_capacity(256);
        out.push_str("{\"time\":\"");
        out.push_str(&rfc3339(now));
        out.push_str("\",\"client\":");
        json_string(&mut out, &self.client);
        let _ = write!(out, ",\"client_id\":{},\"user\":", self.client_id);
        json_string(&mut out, &String::from_utf8_lossy(self.username));
        if let Some(hex) = self.username_hex() {
            let _ = write!(out, ",\"user_hex\":\"{hex}\"");
        }
        let _ = write!(
            out,
            ",\"outcome\":\"{}\",\"reason\":\"{}\",\"server\":",
            self.class(),
            self.outcome.reason()
        );
        match self.server {
            Some(server) => json_string(&mut out, server),
            None => out.push_str("null"),
        }
        let _ = write!(
            out,
            ",\"latency_ms\":{:.3},\"cached\":{},\"local_fallback\":{}}}",
            self.latency.as_secs_f64() * 1000.0,
            self.cached,
            self.local_fallback
        );
        out
    }

    /// The same record as one Valkey log line.
    fn log_line(&self) -> String {
        let mut out = String::from("valkeyauth: audit client=");
        out.push_str(&self.client);
        let _ = write!(out, " client_id={} user=", self.client_id);
        json_string(&mut out, &String::from_utf8_lossy(self.username));
        if let Some(hex) = self.username_hex() {
            let _ = write!(out, " user_hex={hex}");
        }
        let _ = write!(
            out,
            " outcome={} reason={} server={} latency_ms={:.3} cached={} local_fallback={}",
            self.class(),
            self.outcome.reason(),
            self.server.unwrap_or("-"),
            self.latency.as_secs_f64() * 1000.0,
            self.cached,
            self.local_fallback
        );
        out
    }
}

/// Appends `text` as a JSON string: quotes, backslashes and every control character escaped.
fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if is_unsafe_for_log(c) => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `2026-12-03T19:40:00.123Z`
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_date(secs / 86_400);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date of a day counted from 1970-01-01, by 400-year eras.
fn civil_date(days: u64) -> (u64, u64, u64) {
    let shifted = days + 719_468; // days since 0000-03-01
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

enum Message {
    Line(String),
    /// Write to this file from now on (opened again even if it is the same path).
    Open(PathBuf),
    Close,
}

/// The audit writer thread. Dropping it closes the channel; the thread writes what is queued,
/// then leaves, and is joined.
pub struct Auditor {
    // Declared before `thread`: dropping closes the channel first.
    sender: Option<Sender<Message>>,
    thread: Option<JoinHandle<()>>,
}

impl Auditor {
    pub fn start() -> io::Result<Auditor> {
        let (sender, receiver) = bounded(QUEUE);
        let thread = thread::Builder::new()
            .name("valkeyauth-audit".to_owned())
            .spawn(move || write_loop(&receiver))?;
        Ok(Auditor {
            sender: Some(sender),
            thread: Some(thread),
        })
    }

    /// Records a decision in the sink; never waits. The record is made only when it will be
    /// written: past the log's rate limit, a login costs no formatting.
    pub fn record<'a>(&self, sink: Sink, outcome: Outcome, make: impl FnOnce() -> Record<'a>) {
        let level = if outcome == Outcome::Allowed {
            valkey_log::AuditLevel::Allowed
        } else {
            valkey_log::AuditLevel::Refused
        };
        match sink {
            Sink::Off => {}
            Sink::Log => valkey_log::audit(level, || make().log_line()),
            Sink::File => {
                let mut line = make().json(SystemTime::now());
                line.push('\n');
                self.send(Message::Line(line));
            }
        }
    }

    /// Points the writer at `path` (None: closes the file). Also how `VALKEYAUTH.AUDIT REOPEN`
    /// works: the same path is opened again.
    pub fn open(&self, path: Option<&Path>) {
        self.send(path.map_or(Message::Close, |p| Message::Open(p.to_owned())));
    }

    fn send(&self, message: Message) {
        let Some(sender) = &self.sender else {
            return;
        };
        match sender.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                STATS.count(Event::AuditDropped);
            }
        }
    }
}

impl Drop for Auditor {
    fn drop(&mut self) {
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            // The loop catches nothing that can panic short of a bug; there is nothing to
            // clean up after one.
            let _ = thread.join();
        }
    }
}

/// The open audit file and the identity it had when opened, to notice it being moved away.
struct Target {
    path: PathBuf,
    file: Option<(File, (u64, u64))>,
}

impl Target {
    /// Opens the path for append, created 0600 when it does not exist.
    fn reopen(&mut self) {
        let opened = open_regular_file(
            OpenOptions::new().append(true).create(true).mode(0o600),
            &self.path,
        )
        .and_then(|file| {
            let meta = file.metadata().map_err(|e| e.to_string())?;
            Ok((file, (meta.dev(), meta.ino())))
        });
        self.file = match opened {
            Ok(file) => Some(file),
            Err(e) => {
                STATS.count(Event::AuditWriteError);
                log::warn!("valkeyauth: audit_file: {e}");
                None
            }
        };
    }

    /// A rotation tool that moved the file away (or deleted it) leaves us writing to a file
    /// nobody reads: open the path again when it no longer names our file.
    fn follow_rotation(&mut self) {
        let current = std::fs::metadata(&self.path)
            .map(|m| (m.dev(), m.ino()))
            .ok();
        if current.is_none() || self.file.as_ref().map(|(_, id)| *id) != current {
            self.reopen();
        }
    }

    fn write(&mut self, text: &str) {
        self.follow_rotation();
        let Some((file, _)) = self.file.as_mut() else {
            return;
        };
        if let Err(e) = file.write_all(text.as_bytes()) {
            STATS.count(Event::AuditWriteError);
            log::warn!(
                "valkeyauth: cannot write audit_file {}: {e}",
                self.path.display()
            );
            self.file = None;
        }
    }
}

fn write_loop(messages: &Receiver<Message>) {
    let mut target: Option<Target> = None;
    let mut batch = String::new();
    while let Ok(first) = messages.recv() {
        // Whatever else is queued goes out in the same write.
        for message in std::iter::once(first).chain(messages.try_iter()) {
            match message {
                Message::Line(line) => batch.push_str(&line),
                other => {
                    flush(&mut target, &mut batch);
                    target = match other {
                        Message::Open(path) => {
                            let mut opened = Target { path, file: None };
                            opened.reopen();
                            Some(opened)
                        }
                        _ => None,
                    };
                }
            }
        }
        flush(&mut target, &mut batch);
    }
}

fn flush(target: &mut Option<Target>, batch: &mut String) {
    if let (Some(target), false) = (target.as_mut(), batch.is_empty()) {
        target.write(batch);
    }
    batch.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_follow_the_gregorian_calendar() {
        let at = |secs: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_796_324_400), "2026-12-03T19:00:00.000Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_500)),
            "1970-01-01T00:00:01.500Z"
        );
    }

    #[test]
    fn a_record_is_one_escaped_json_line_without_a_password() {
        let record = Record {
            client: "127.0.0.1:5000".to_owned(),
            client_id: 7,
            username: b"al\"ice\r\n{\x00\xff",
            outcome: Outcome::AccountLocked,
            server: Some("ldap://127.0.0.1:389"),
            latency: Duration::from_micros(1500),
            cached: false,
            local_fallback: false,
        };
        let line = record.json(UNIX_EPOCH);
        assert!(!line.contains('\n') && !line.contains('\r'));
        assert_eq!(
            line,
            "{\"time\":\"1970-01-01T00:00:00.000Z\",\"client\":\"127.0.0.1:5000\",\"client_id\":7,\
             \"user\":\"al\\\"ice\\u000d\\u000a{\\u0000\u{fffd}\",\"user_hex\":\"616c226963650d0a7b00ff\",\
             \"outcome\":\"denied\",\
             \"reason\":\"account-locked\",\"server\":\"ldap://127.0.0.1:389\",\
             \"latency_ms\":1.500,\"cached\":false,\"local_fallback\":false}"
        );
        let allowed = Record {
            outcome: Outcome::Allowed,
            server: None,
            ..record
        };
        assert!(allowed
            .json(UNIX_EPOCH)
            .contains("\"outcome\":\"allowed\",\"reason\":\"allowed\",\"server\":null"));
        assert!(allowed
            .log_line()
            .contains("user_hex=616c226963650d0a7b00ff outcome=allowed reason=allowed server=-"));
        let utf8 = Record {
            username: "jürgen".as_bytes(),
            ..allowed
        };
        assert!(!utf8.json(UNIX_EPOCH).contains("user_hex"));
        assert!(!utf8.log_line().contains("user_hex"));
    }
}

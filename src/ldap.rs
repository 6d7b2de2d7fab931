//! Safe wrappers over libldap: one owned session handle ([`Connection`]), a
//! simple bind, a DN-only search, and a typed error ([`LdapError`]).
//!
//! Nothing here knows about Valkey, so it can be tested against a plain slapd.
//! The C declarations live in `openldap_sys`; every libldap return code becomes
//! a `Result` in `check`; every C allocation has one owner that frees it in
//! `Drop` ([`Connection`], `Message`, `LdapMem`).
//!
//! Threading: call [`init_global`] once on the main thread before any worker
//! touches libldap. After that each worker owns its own `Connection`s; a handle
//! is never shared between threads at the same time (`Connection` is `Send`,
//! not `Sync`).

use std::ffi::{c_char, c_int, c_long, c_uint, c_void, CStr, CString};
use std::fmt;
use std::ptr;
use std::time::Duration;

use crate::openldap_sys as sys;

/// Longest diagnostic text [`LdapError::diagnostic_lossy`] returns, in chars.
const DIAGNOSTIC_LOG_MAX_CHARS: usize = 256;

/// Timeouts are clamped to this: libldap turns a timeval into milliseconds in
/// a C `int` for poll(2), which overflows at about 24.8 days.
const MAX_TIMEOUT: Duration = Duration::from_secs(2_000_000);

/// TCP keepalive on every connection (libldap always sets SO_KEEPALIVE; these
/// make it useful): first probe after 60 s idle, then every 10 s, give up
/// after 3 unanswered probes. This finds pooled connections that a firewall
/// or a dead server dropped silently within about 90 s.
static KEEPALIVE_IDLE_SECS: c_int = 60;
static KEEPALIVE_INTERVAL_SECS: c_int = 10;
static KEEPALIVE_PROBES: c_int = 3;

// ---------------------------------------------------------------------------
// Result codes and errors
// ---------------------------------------------------------------------------

/// An LDAP result code: either sent by the server (RFC 4511, >= 0) or made up
/// by libldap itself (negative "API errors", e.g. [`ResultCode::SERVER_DOWN`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResultCode(pub i32);

impl ResultCode {
    pub const SUCCESS: ResultCode = ResultCode(sys::LDAP_SUCCESS);
    pub const OPERATIONS_ERROR: ResultCode = ResultCode(sys::LDAP_OPERATIONS_ERROR);
    pub const PROTOCOL_ERROR: ResultCode = ResultCode(sys::LDAP_PROTOCOL_ERROR);
    pub const TIMELIMIT_EXCEEDED: ResultCode = ResultCode(sys::LDAP_TIMELIMIT_EXCEEDED);
    pub const SIZELIMIT_EXCEEDED: ResultCode = ResultCode(sys::LDAP_SIZELIMIT_EXCEEDED);
    pub const AUTH_METHOD_NOT_SUPPORTED: ResultCode =
        ResultCode(sys::LDAP_AUTH_METHOD_NOT_SUPPORTED);
    pub const STRONG_AUTH_REQUIRED: ResultCode = ResultCode(sys::LDAP_STRONG_AUTH_REQUIRED);
    pub const REFERRAL: ResultCode = ResultCode(sys::LDAP_REFERRAL);
    pub const ADMINLIMIT_EXCEEDED: ResultCode = ResultCode(sys::LDAP_ADMINLIMIT_EXCEEDED);
    pub const CONFIDENTIALITY_REQUIRED: ResultCode = ResultCode(sys::LDAP_CONFIDENTIALITY_REQUIRED);
    pub const NO_SUCH_OBJECT: ResultCode = ResultCode(sys::LDAP_NO_SUCH_OBJECT);
    pub const INVALID_DN_SYNTAX: ResultCode = ResultCode(sys::LDAP_INVALID_DN_SYNTAX);
    pub const INAPPROPRIATE_AUTH: ResultCode = ResultCode(sys::LDAP_INAPPROPRIATE_AUTH);
    pub const INVALID_CREDENTIALS: ResultCode = ResultCode(sys::LDAP_INVALID_CREDENTIALS);
    pub const INSUFFICIENT_ACCESS: ResultCode = ResultCode(sys::LDAP_INSUFFICIENT_ACCESS);
    pub const BUSY: ResultCode = ResultCode(sys::LDAP_BUSY);
    pub const UNAVAILABLE: ResultCode = ResultCode(sys::LDAP_UNAVAILABLE);
    pub const UNWILLING_TO_PERFORM: ResultCode = ResultCode(sys::LDAP_UNWILLING_TO_PERFORM);
    pub const OTHER: ResultCode = ResultCode(sys::LDAP_OTHER);

    pub const SERVER_DOWN: ResultCode = ResultCode(sys::LDAP_SERVER_DOWN);
    pub const LOCAL_ERROR: ResultCode = ResultCode(sys::LDAP_LOCAL_ERROR);
    pub const ENCODING_ERROR: ResultCode = ResultCode(sys::LDAP_ENCODING_ERROR);
    pub const DECODING_ERROR: ResultCode = ResultCode(sys::LDAP_DECODING_ERROR);
    pub const TIMEOUT: ResultCode = ResultCode(sys::LDAP_TIMEOUT);
    pub const AUTH_UNKNOWN: ResultCode = ResultCode(sys::LDAP_AUTH_UNKNOWN);
    pub const FILTER_ERROR: ResultCode = ResultCode(sys::LDAP_FILTER_ERROR);
    pub const USER_CANCELLED: ResultCode = ResultCode(sys::LDAP_USER_CANCELLED);
    pub const PARAM_ERROR: ResultCode = ResultCode(sys::LDAP_PARAM_ERROR);
    pub const NO_MEMORY: ResultCode = ResultCode(sys::LDAP_NO_MEMORY);
    pub const CONNECT_ERROR: ResultCode = ResultCode(sys::LDAP_CONNECT_ERROR);
    pub const NOT_SUPPORTED: ResultCode = ResultCode(sys::LDAP_NOT_SUPPORTED);
    pub const X_CONNECTING: ResultCode = ResultCode(sys::LDAP_X_CONNECTING);

    /// The raw C value.
    pub fn raw(self) -> i32 {
        self.0
    }

    /// Made up by libldap (negative), not sent by a server.
    pub fn is_api_error(self) -> bool {
        self.0 < 0
    }

    /// libldap's text for the code (`ldap_err2string`), e.g. "Invalid credentials".
    pub fn description(self) -> String {
        // SAFETY: ldap_err2string accepts any int and returns a pointer to a
        // static NUL-terminated string (an "Unknown error" text for unknown
        // codes); it never returns NULL in OpenLDAP 2.5/2.6.
        let text = unsafe { sys::ldap_err2string(self.0) };
        if text.is_null() {
            return String::from("Unknown error");
        }
        // SAFETY: non-null, NUL-terminated, static lifetime (see above).
        let text = unsafe { CStr::from_ptr(text) };
        text.to_string_lossy().into_owned()
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.description(), self.0)
    }
}

/// Typed error: LDAP result code + diagnostic message as untrusted bytes (may
/// contain NUL/CR/LF). For library-reported codes the diagnostic is libldap's
/// `LDAP_OPT_DIAGNOSTIC_MESSAGE` (the server's text, e.g. Active Directory's
/// `... data 52e ...`), possibly empty; for errors raised in this module before
/// calling libldap (bad argument, NUL byte in a string) it is our own text.
#[derive(Debug, Clone)]
pub struct LdapError {
    pub code: ResultCode,
    pub diagnostic: Vec<u8>,
}

impl LdapError {
    pub fn new(code: ResultCode, diagnostic: impl Into<Vec<u8>>) -> LdapError {
        LdapError {
            code,
            diagnostic: diagnostic.into(),
        }
    }

    /// "Could not get an answer about the request from a working server", as
    /// opposed to "the server answered no". On these codes the credentials
    /// were not judged (or the verdict was lost), and the `Connection` must be
    /// dropped: libldap refuses further use of a handle after `SERVER_DOWN` or
    /// `LOCAL_ERROR`, and a timed-out request may still be outstanding on it
    /// (libldap then answers the next request on that handle at once with
    /// `BUSY`, measured with 2.5.13 after a TCP connect timed out).
    ///
    /// Transport: `SERVER_DOWN` (-1), `LOCAL_ERROR` (-2: socket/BER read
    /// failure or a failed SASL/TLS layer; the handle is dead), `DECODING_ERROR`
    /// (-4: unreadable reply), `TIMEOUT` (-5), `CONNECT_ERROR` (-11: e.g. TLS
    /// handshake failed), `X_CONNECTING` (-18: async connect not finished),
    /// `BUSY` (51) and `UNAVAILABLE` (52) (server alive but refusing service).
    ///
    /// Not transport: everything the server decided (49, 50, 53, 8, 13, 32, ...,
    /// including `TIMELIMIT_EXCEEDED` (3), a server-side verdict), and local
    /// argument errors (`PARAM_ERROR`, `FILTER_ERROR`, `ENCODING_ERROR`,
    /// `NO_MEMORY`, `NOT_SUPPORTED`, `AUTH_UNKNOWN`) that another server would
    /// not change.
    pub fn is_transport(&self) -> bool {
        matches!(
            self.code,
            ResultCode::SERVER_DOWN
                | ResultCode::LOCAL_ERROR
                | ResultCode::DECODING_ERROR
                | ResultCode::TIMEOUT
                | ResultCode::CONNECT_ERROR
                | ResultCode::X_CONNECTING
                | ResultCode::BUSY
                | ResultCode::UNAVAILABLE
        )
    }

    /// Our client-side deadline ran out (`TIMEOUT`, -5): `Timeouts::operation`
    /// for a request, or `Timeouts::connect` for the TCP connect. Every timeout
    /// is also [`is_transport`](Self::is_transport). A server-side time limit
    /// (`TIMELIMIT_EXCEEDED`, 3) is a server answer and is not counted here.
    pub fn is_timeout(&self) -> bool {
        self.code == ResultCode::TIMEOUT
    }

    /// The server rejected the credentials (49).
    pub fn is_invalid_credentials(&self) -> bool {
        self.code == ResultCode::INVALID_CREDENTIALS
    }

    /// The diagnostic made safe for a log line: invalid UTF-8 replaced, NUL and
    /// surrounding whitespace trimmed, every control character (CR, LF, ...)
    /// and bidirectional/zero-width formatting character replaced by `?`, and
    /// capped at 256 characters (`...` appended when cut).
    pub fn diagnostic_lossy(&self) -> String {
        sanitize_for_log(&self.diagnostic, DIAGNOSTIC_LOG_MAX_CHARS)
    }

    fn local(code: ResultCode, text: &str) -> LdapError {
        LdapError::new(code, text.as_bytes())
    }
}

impl fmt::Display for LdapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        let diagnostic = self.diagnostic_lossy();
        if !diagnostic.is_empty() {
            write!(f, ": {diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LdapError {}

fn is_unsafe_for_log(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}' // zero-width space/joiners, LRM, RLM
            | '\u{2028}'..='\u{202E}' // line/paragraph separators, bidi embeddings
            | '\u{2066}'..='\u{2069}' // bidi isolates
            | '\u{FEFF}')
}

fn sanitize_for_log(bytes: &[u8], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    let mut out = String::with_capacity(text.len().min(max_chars + 3));
    for (count, c) in text.chars().enumerate() {
        if count == max_chars {
            out.push_str("...");
            break;
        }
        out.push(if is_unsafe_for_log(c) { '?' } else { c });
    }
    out
}

// ---------------------------------------------------------------------------
// The one place a libldap return code becomes a Result
// ---------------------------------------------------------------------------

/// What a libldap call returned.
enum Ret {
    /// An LDAP result code (`ldap_initialize`, `ldap_*_s`, `ldap_unbind_ext`).
    Code(c_int),
    /// An `ldap_set_option`/`ldap_get_option` status for `option`.
    Option { option: c_int, status: c_int },
}

/// Turns a libldap return value into a `Result`, copying the handle's
/// diagnostic message out at once (`ld` may be NULL: no diagnostic then).
fn check(ld: *mut sys::LDAP, ret: Ret) -> Result<(), LdapError> {
    match ret {
        Ret::Code(sys::LDAP_SUCCESS) => Ok(()),
        Ret::Code(rc) => Err(LdapError {
            code: ResultCode(rc),
            diagnostic: diagnostic_message(ld),
        }),
        Ret::Option {
            status: sys::LDAP_OPT_SUCCESS,
            ..
        } => Ok(()),
        // An option the library rejected is our bad parameter (or an option
        // this libldap does not know), never a transport problem, so it does
        // not keep LDAP_OPT_ERROR (-1), which has the value of SERVER_DOWN.
        Ret::Option { option, status } => Err(LdapError::local(
            ResultCode::PARAM_ERROR,
            &format!("libldap rejected option {option:#06x} (status {status})"),
        )),
    }
}

/// The handle's `LDAP_OPT_DIAGNOSTIC_MESSAGE`, copied and freed.
fn diagnostic_message(ld: *mut sys::LDAP) -> Vec<u8> {
    if ld.is_null() {
        return Vec::new();
    }
    let mut message = LdapMem::null();
    // SAFETY: `ld` is a live handle owned by the caller; for this option the
    // out value is a `char **` that receives a copy (or NULL) which we own and
    // free with ldap_memfree through `LdapMem`.
    let status = unsafe {
        sys::ldap_get_option(
            ld,
            sys::LDAP_OPT_DIAGNOSTIC_MESSAGE,
            (&raw mut message.ptr).cast::<c_void>(),
        )
    };
    if status != sys::LDAP_OPT_SUCCESS {
        return Vec::new();
    }
    message.to_bytes()
}

/// A string argument for libldap. A NUL byte inside becomes a clean `code`
/// error instead of a truncated string.
fn c_string(value: &str, code: ResultCode, what: &str) -> Result<CString, LdapError> {
    CString::new(value).map_err(|_| LdapError::local(code, &format!("{what} contains a NUL byte")))
}

fn to_timeval(duration: Duration, what: &str) -> Result<sys::timeval, LdapError> {
    if duration.as_micros() == 0 {
        return Err(LdapError::local(
            ResultCode::PARAM_ERROR,
            &format!("{what} must be at least 1 microsecond"),
        ));
    }
    let duration = duration.min(MAX_TIMEOUT);
    Ok(sys::timeval {
        // Both fit any C long: at most 2_000_000 and 999_999.
        tv_sec: duration.as_secs() as c_long,
        tv_usec: duration.subsec_micros() as c_long,
    })
}

// ---------------------------------------------------------------------------
// Owners of libldap allocations
// ---------------------------------------------------------------------------

/// Owns a `char *` allocated by libldap (a DN, a diagnostic message); freed
/// with `ldap_memfree`.
struct LdapMem {
    ptr: *mut c_char,
}

impl LdapMem {
    fn null() -> LdapMem {
        LdapMem {
            ptr: ptr::null_mut(),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        if self.ptr.is_null() {
            return Vec::new();
        }
        // SAFETY: non-null strings libldap hands out are NUL-terminated and
        // live until we free them in Drop.
        let text = unsafe { CStr::from_ptr(self.ptr) };
        text.to_bytes().to_vec()
    }
}

impl Drop for LdapMem {
    fn drop(&mut self) {
        let p = std::mem::replace(&mut self.ptr, ptr::null_mut());
        if !p.is_null() {
            // SAFETY: `p` was allocated by libldap, is owned only by us, and
            // was nulled above so it is freed once.
            unsafe { sys::ldap_memfree(p.cast::<c_void>()) };
        }
    }
}

/// Owns an `LDAPMessage *` chain; freed with `ldap_msgfree`.
struct Message {
    ptr: *mut sys::LDAPMessage,
}

impl Drop for Message {
    fn drop(&mut self) {
        let p = std::mem::replace(&mut self.ptr, ptr::null_mut());
        if !p.is_null() {
            // SAFETY: `p` is a result chain returned by libldap, owned only
            // by us, nulled above so it is freed once. ldap_msgfree does not
            // use the session handle.
            unsafe { sys::ldap_msgfree(p) };
        }
    }
}

// ---------------------------------------------------------------------------
// Global initialisation
// ---------------------------------------------------------------------------

/// Must be called once on the main thread before any worker uses libldap: the
/// first libldap call initialises its global state (reads ldap.conf, `LDAP*`
/// environment variables) without locking against a concurrent first call.
/// Also sets global defaults that every new handle inherits: protocol v3 and
/// no referral chasing (`Connection::open` sets them again per handle).
///
/// Idempotent: it only sets options to fixed values, so calling it again (the
/// module unloaded and loaded again in the same process) is harmless. Errors
/// are ignored here because each handle sets the same options and reports
/// failures itself; use [`try_init_global`] to see them.
///
/// libldap has no global shutdown call worth making: its global state is freed
/// by its own destructor when the library is unloaded, so there is no deinit.
pub fn init_global() {
    let _ = try_init_global();
}

/// [`init_global`], reporting a rejected option.
pub fn try_init_global() -> Result<(), LdapError> {
    let version: c_int = sys::LDAP_VERSION3;
    set_option(
        ptr::null_mut(),
        sys::LDAP_OPT_PROTOCOL_VERSION,
        (&raw const version).cast(),
    )?;
    set_option(ptr::null_mut(), sys::LDAP_OPT_REFERRALS, sys::LDAP_OPT_OFF)
}

/// `ldap_set_option` on a handle, or on the global defaults when `ld` is NULL.
/// Callers pass `value` in the type ldap_get_option(3) documents for `option`.
fn set_option(ld: *mut sys::LDAP, option: c_int, value: *const c_void) -> Result<(), LdapError> {
    // SAFETY: `ld` is NULL (global options) or a live handle we own
    // exclusively; every caller passes `value` as the type the option expects
    // (int *, struct timeval *, unsigned int *, or LDAP_OPT_ON/OFF), pointing
    // at data that outlives the call; libldap copies the value.
    let status = unsafe { sys::ldap_set_option(ld, option, value) };
    check(ld, Ret::Option { option, status })
}

fn opt_on() -> *const c_void {
    (&raw const sys::ber_pvt_opt_on).cast()
}

// ---------------------------------------------------------------------------
// Connection
// ---------------------------------------------------------------------------

/// Client-side deadlines for one connection.
///
/// Measured with libldap 2.5.13 (CONNECT_ASYNC on, as `Connection::open`
/// sets it): the first request on a handle starts the TCP connect and waits
/// for connect + reply together under `operation`; a TCP connect that never
/// completes fails with `TIMEOUT` after `operation`, not after `connect`.
/// `connect` bounds the TLS handshake of `ldaps://` (a stalled handshake
/// fails with `SERVER_DOWN` after `connect`). Worst case for one request is
/// therefore about `connect + operation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `LDAP_OPT_NETWORK_TIMEOUT`: the TLS handshake (and a synchronous
    /// connect, which we do not use).
    pub connect: Duration,
    /// `LDAP_OPT_TIMEOUT` and the search's own timeout argument: each
    /// synchronous request (bind, search), including a TCP connect that the
    /// request has to wait for.
    pub operation: Duration,
}

/// Search scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Base,
    OneLevel,
    Subtree,
}

impl Scope {
    fn raw(self) -> c_int {
        match self {
            Scope::Base => sys::LDAP_SCOPE_BASE,
            Scope::OneLevel => sys::LDAP_SCOPE_ONELEVEL,
            Scope::Subtree => sys::LDAP_SCOPE_SUBTREE,
        }
    }
}

/// Owns one `LDAP *` handle; Drop calls `ldap_unbind_ext` (idempotent: the
/// pointer is nulled first). After an error that [`LdapError::is_transport`],
/// drop the connection and open a new one.
pub struct Connection {
    ld: *mut sys::LDAP,
    operation_timeout: sys::timeval,
}

// SAFETY: an LDAP handle is plain heap state plus a socket, with no affinity
// to the thread that created it. libldap 2.5+ is one thread-safe library
// (build.rs refuses older versions, whose non-`_r` libldap was not), so
// distinct handles may be used on distinct threads concurrently, and a handle
// may move to another thread between calls. `Connection` stays !Sync (it holds
// a raw pointer), and every operation takes `&mut self`, so a handle is used
// by one thread at a time.
unsafe impl Send for Connection {}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("ld", &self.ld)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// `ldap_initialize` plus the options every handle gets: protocol v3,
    /// `NETWORK_TIMEOUT` = `timeouts.connect`, `TIMEOUT` = `timeouts.operation`,
    /// referral chasing off, `CONNECT_ASYNC` on (without it a stalled TLS
    /// handshake ignores the timeouts), `RESTART` on (a signal landing on this
    /// thread restarts poll(2) instead of failing the request; libldap still
    /// counts the time already spent), TCP keepalive tuning, and
    /// `TCP_USER_TIMEOUT` = connect + operation.
    ///
    /// Does no network I/O: the connection is made by the first request.
    /// An empty URI is refused (libldap would fall back to ldap.conf), as are
    /// zero timeouts; timeouts above about 23 days are clamped.
    pub fn open(uri: &str, timeouts: &Timeouts) -> Result<Connection, LdapError> {
        if uri.trim().is_empty() {
            return Err(LdapError::local(ResultCode::PARAM_ERROR, "empty LDAP URI"));
        }
        let c_uri = c_string(uri, ResultCode::PARAM_ERROR, "LDAP URI")?;
        let connect = to_timeval(timeouts.connect, "connect timeout")?;
        let operation = to_timeval(timeouts.operation, "operation timeout")?;

        let mut conn = Connection {
            ld: ptr::null_mut(),
            operation_timeout: operation,
        };
        // SAFETY: `c_uri` is a valid NUL-terminated string; on success libldap
        // stores a new handle in `conn.ld`, which `conn` then owns and frees
        // in Drop (also if setting an option below fails).
        let rc = unsafe { sys::ldap_initialize(&raw mut conn.ld, c_uri.as_ptr()) };
        check(conn.ld, Ret::Code(rc)).map_err(|mut e| {
            if e.diagnostic.is_empty() {
                e.diagnostic = b"ldap_initialize rejected the URI".to_vec();
            }
            e
        })?;
        if conn.ld.is_null() {
            return Err(LdapError::local(
                ResultCode::LOCAL_ERROR,
                "ldap_initialize returned no handle",
            ));
        }

        let version: c_int = sys::LDAP_VERSION3;
        let user_timeout_ms = timeouts
            .connect
            .min(MAX_TIMEOUT)
            .saturating_add(timeouts.operation.min(MAX_TIMEOUT))
            .as_millis()
            .min(i32::MAX as u128);
        let user_timeout_ms = c_uint::try_from(user_timeout_ms).unwrap_or(c_uint::MAX);

        conn.set(sys::LDAP_OPT_PROTOCOL_VERSION, (&raw const version).cast())?;
        conn.set(sys::LDAP_OPT_NETWORK_TIMEOUT, (&raw const connect).cast())?;
        conn.set(sys::LDAP_OPT_TIMEOUT, (&raw const operation).cast())?;
        conn.set(sys::LDAP_OPT_REFERRALS, sys::LDAP_OPT_OFF)?;
        conn.set(sys::LDAP_OPT_CONNECT_ASYNC, opt_on())?;
        conn.set(sys::LDAP_OPT_RESTART, opt_on())?;
        conn.set(
            sys::LDAP_OPT_X_KEEPALIVE_IDLE,
            (&raw const KEEPALIVE_IDLE_SECS).cast(),
        )?;
        conn.set(
            sys::LDAP_OPT_X_KEEPALIVE_INTERVAL,
            (&raw const KEEPALIVE_INTERVAL_SECS).cast(),
        )?;
        conn.set(
            sys::LDAP_OPT_X_KEEPALIVE_PROBES,
            (&raw const KEEPALIVE_PROBES).cast(),
        )?;
        conn.set(
            sys::LDAP_OPT_TCP_USER_TIMEOUT,
            (&raw const user_timeout_ms).cast(),
        )?;
        Ok(conn)
    }

    /// Simple bind via `ldap_sasl_bind_s(ld, dn, LDAP_SASL_SIMPLE, &berval, ..)`.
    /// The password goes length-delimited and unchanged (NUL bytes included).
    ///
    /// A non-empty `dn` with an empty password is refused here with
    /// `PARAM_ERROR`, without asking the server: RFC 4513 calls it an
    /// "unauthenticated bind", and many servers (Active Directory by default)
    /// answer it with success. An anonymous bind (`""`, `b""`) is allowed.
    pub fn simple_bind(&mut self, dn: &str, password: &[u8]) -> Result<(), LdapError> {
        if password.is_empty() && !dn.is_empty() {
            return Err(LdapError::local(
                ResultCode::PARAM_ERROR,
                "empty password with a DN (an unauthenticated bind, RFC 4513 5.1.2) refused",
            ));
        }
        let c_dn = c_string(dn, ResultCode::PARAM_ERROR, "bind DN")?;
        let len = sys::ber_len_t::try_from(password.len())
            .map_err(|_| LdapError::local(ResultCode::PARAM_ERROR, "password too long"))?;
        let mut cred = sys::berval {
            bv_len: len,
            // libldap only reads the credentials (it copies them into the
            // request); the cast to *mut is for the C prototype.
            bv_val: password.as_ptr().cast_mut().cast::<c_char>(),
        };
        self.clear_diagnostic()?;
        // SAFETY: `self.ld` is our live handle; `c_dn` is NUL-terminated;
        // `cred` points at `password.len()` readable bytes for the duration of
        // the call; NULL controls and NULL servercredp are allowed.
        let rc = unsafe {
            sys::ldap_sasl_bind_s(
                self.ld,
                c_dn.as_ptr(),
                sys::LDAP_SASL_SIMPLE,
                &raw mut cred,
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        check(self.ld, Ret::Code(rc))
    }

    /// `ldap_search_ext_s` requesting no attributes ("1.1"), with the
    /// operation timeout and `size_limit` (0 = no client limit; the server's
    /// own limit still applies). Returns the DNs of entries only (search
    /// references are skipped). If the server answers sizeLimitExceeded (4),
    /// the entries already received are returned as `Ok`: the caller only
    /// needs to tell 0, 1, or >= 2 apart.
    pub fn search_dns(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        size_limit: i32,
    ) -> Result<Vec<String>, LdapError> {
        let c_base = c_string(base, ResultCode::PARAM_ERROR, "search base")?;
        let c_filter = c_string(filter, ResultCode::FILTER_ERROR, "search filter")?;
        // libldap only reads the attribute list; the cast to *mut is for the
        // C prototype.
        let mut attrs: [*mut c_char; 2] = [sys::LDAP_NO_ATTRS.as_ptr().cast_mut(), ptr::null_mut()];
        let mut timeout = self.operation_timeout;
        let mut result = Message {
            ptr: ptr::null_mut(),
        };
        self.clear_diagnostic()?;
        // SAFETY: `self.ld` is our live handle; base, filter and the
        // NULL-terminated attrs array are valid for the call; `timeout` is a
        // valid timeval; the result chain (set even on most errors) goes into
        // `result`, which frees it on every path.
        let rc = unsafe {
            sys::ldap_search_ext_s(
                self.ld,
                c_base.as_ptr(),
                scope.raw(),
                c_filter.as_ptr(),
                attrs.as_mut_ptr(),
                0,
                ptr::null_mut(),
                ptr::null_mut(),
                &raw mut timeout,
                size_limit,
                &raw mut result.ptr,
            )
        };
        let rc = if rc == sys::LDAP_SIZELIMIT_EXCEEDED {
            sys::LDAP_SUCCESS
        } else {
            rc
        };
        check(self.ld, Ret::Code(rc))?;

        let mut dns = Vec::new();
        // SAFETY: `result.ptr` is the chain returned above (or NULL, which
        // yields NULL); entries stay valid until `result` is dropped.
        let mut entry = unsafe { sys::ldap_first_entry(self.ld, result.ptr) };
        while !entry.is_null() {
            // SAFETY: `entry` is an entry of our live result chain; the DN
            // string returned is ours and is freed by `LdapMem`.
            let dn = LdapMem {
                ptr: unsafe { sys::ldap_get_dn(self.ld, entry) },
            };
            if dn.ptr.is_null() {
                return Err(LdapError::local(
                    ResultCode::DECODING_ERROR,
                    "ldap_get_dn could not decode an entry",
                ));
            }
            let dn = String::from_utf8(dn.to_bytes()).map_err(|_| {
                LdapError::local(ResultCode::DECODING_ERROR, "entry DN is not valid UTF-8")
            })?;
            dns.push(dn);
            // SAFETY: `entry` belongs to our live chain; returns the next
            // entry (skipping references) or NULL.
            entry = unsafe { sys::ldap_next_entry(self.ld, entry) };
        }
        Ok(dns)
    }

    /// Unbinds and frees the handle now, reporting the unbind's result (it
    /// only fails if the unbind request could not be sent; the handle is
    /// freed either way). Dropping a `Connection` does the same silently.
    pub fn close(mut self) -> Result<(), LdapError> {
        let rc = self.release();
        check(ptr::null_mut(), Ret::Code(rc))
    }

    fn set(&mut self, option: c_int, value: *const c_void) -> Result<(), LdapError> {
        set_option(self.ld, option, value)
    }

    /// Forget the previous request's diagnostic, so that an error of this
    /// request (e.g. SERVER_DOWN, which carries none) never shows a stale one.
    fn clear_diagnostic(&mut self) -> Result<(), LdapError> {
        // A NULL `char *` clears the handle's diagnostic message.
        self.set(sys::LDAP_OPT_DIAGNOSTIC_MESSAGE, ptr::null())
    }

    /// Unbinds and frees the handle once; returns the unbind's code.
    fn release(&mut self) -> c_int {
        let ld = std::mem::replace(&mut self.ld, ptr::null_mut());
        if ld.is_null() {
            return sys::LDAP_SUCCESS;
        }
        // SAFETY: `ld` is the live handle this Connection owned; it was nulled
        // above, so it is unbound and freed exactly once. No LDAPMessage or
        // string from it outlives this call (they are scoped to methods).
        unsafe { sys::ldap_unbind_ext(ld, ptr::null_mut(), ptr::null_mut()) }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first libldap call must not race: do it once, like the module does
    /// on the main thread at load.
    fn setup() {
        static INIT: std::sync::Once = std::sync::Once::new();
        INIT.call_once(|| try_init_global().expect("global options"));
    }

    #[test]
    fn sanitize_strips_controls_and_caps() {
        let e = LdapError::new(
            ResultCode::INVALID_CREDENTIALS,
            &b"bad\r\nline\0x\x1b[31m\0"[..],
        );
        assert_eq!(e.diagnostic_lossy(), "bad??line?x?[31m");
        let long = LdapError::new(ResultCode::OTHER, vec![b'a'; 1000]);
        let s = long.diagnostic_lossy();
        assert_eq!(s.chars().count(), DIAGNOSTIC_LOG_MAX_CHARS + 3);
        assert!(s.ends_with("..."));
        let bidi = LdapError::new(ResultCode::OTHER, "a\u{202E}b\u{FEFF}".as_bytes());
        assert_eq!(bidi.diagnostic_lossy(), "a?b?");
        let bad_utf8 = LdapError::new(ResultCode::OTHER, &b"\xff\xfeok"[..]);
        assert_eq!(bad_utf8.diagnostic_lossy(), "\u{FFFD}\u{FFFD}ok");
    }

    #[test]
    fn classification() {
        let err = |c| LdapError::new(c, Vec::new());
        for c in [
            ResultCode::SERVER_DOWN,
            ResultCode::LOCAL_ERROR,
            ResultCode::DECODING_ERROR,
            ResultCode::TIMEOUT,
            ResultCode::CONNECT_ERROR,
            ResultCode::X_CONNECTING,
            ResultCode::BUSY,
            ResultCode::UNAVAILABLE,
        ] {
            assert!(err(c).is_transport(), "{c:?}");
        }
        for c in [
            ResultCode::INVALID_CREDENTIALS,
            ResultCode::UNWILLING_TO_PERFORM,
            ResultCode::TIMELIMIT_EXCEEDED,
            ResultCode::PARAM_ERROR,
            ResultCode::FILTER_ERROR,
            ResultCode::ENCODING_ERROR,
            ResultCode::NO_MEMORY,
            ResultCode::CONFIDENTIALITY_REQUIRED,
        ] {
            assert!(!err(c).is_transport(), "{c:?}");
        }
        assert!(err(ResultCode::TIMEOUT).is_timeout());
        assert!(!err(ResultCode::TIMELIMIT_EXCEEDED).is_timeout());
        assert!(err(ResultCode::INVALID_CREDENTIALS).is_invalid_credentials());
    }

    #[test]
    fn display_names_code_and_diagnostic() {
        setup();
        let e = LdapError::new(ResultCode::INVALID_CREDENTIALS, &b"data 52e\n"[..]);
        assert_eq!(e.to_string(), "Invalid credentials (49): data 52e");
        let e = LdapError::new(ResultCode::SERVER_DOWN, Vec::new());
        assert_eq!(e.to_string(), "Can't contact LDAP server (-1)");
    }

    #[test]
    fn nul_bytes_are_clean_errors() {
        setup();
        let t = Timeouts {
            connect: Duration::from_secs(1),
            operation: Duration::from_secs(1),
        };
        let e = Connection::open("ldap://127.0.0.1:1/\0x", &t).unwrap_err();
        assert_eq!(e.code, ResultCode::PARAM_ERROR);
        let mut c = Connection::open("ldap://127.0.0.1:1/", &t).unwrap();
        let e = c.simple_bind("cn=a\0b", b"pw").unwrap_err();
        assert_eq!(e.code, ResultCode::PARAM_ERROR);
        let e = c.search_dns("dc=x\0", Scope::Base, "(a=b)", 0).unwrap_err();
        assert_eq!(e.code, ResultCode::PARAM_ERROR);
        let e = c.search_dns("dc=x", Scope::Base, "(a=b\0)", 0).unwrap_err();
        assert_eq!(e.code, ResultCode::FILTER_ERROR);
    }

    #[test]
    fn open_refuses_bad_arguments() {
        setup();
        let ok = Duration::from_secs(1);
        let t = Timeouts {
            connect: ok,
            operation: ok,
        };
        assert_eq!(
            Connection::open("  ", &t).unwrap_err().code,
            ResultCode::PARAM_ERROR
        );
        assert_eq!(
            Connection::open("notaurl://x", &t).unwrap_err().code,
            ResultCode::PARAM_ERROR
        );
        let zero = Timeouts {
            connect: Duration::ZERO,
            operation: ok,
        };
        assert_eq!(
            Connection::open("ldap://127.0.0.1/", &zero)
                .unwrap_err()
                .code,
            ResultCode::PARAM_ERROR
        );
        let huge = Timeouts {
            connect: Duration::MAX,
            operation: Duration::MAX,
        };
        Connection::open("ldap://127.0.0.1/", &huge)
            .unwrap()
            .close()
            .unwrap();
    }

    #[test]
    fn unauthenticated_bind_refused_locally() {
        setup();
        let t = Timeouts {
            connect: Duration::from_secs(1),
            operation: Duration::from_secs(1),
        };
        // Port 1 on loopback: nothing listens, but we must not even try.
        let mut c = Connection::open("ldap://127.0.0.1:1/", &t).unwrap();
        let e = c
            .simple_bind("uid=alice,dc=example,dc=test", b"")
            .unwrap_err();
        assert_eq!(e.code, ResultCode::PARAM_ERROR);
        assert!(!e.is_transport());
    }

    #[test]
    fn connection_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Connection>();
    }
}

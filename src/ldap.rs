//! Safe wrappers over libldap: one owned session handle ([`Connection`]), a
//! simple bind, a DN-only search, TLS (`ldaps://` and StartTLS, from
//! [`TlsSettings`], whose TLS context is built once and shared by all its
//! connections), and a typed error ([`LdapError`]).
//!
//! Nothing here knows about Valkey, so it can be tested against a plain slapd.
//! The C declarations live in `openldap_sys`; every libldap return code becomes
//! a `Result` in `check`; every C allocation has one owner that frees it in
//! `Drop` ([`Connection`], `Message`, `LdapMem`, `TlsContext`).
//!
//! Threading: call [`init_global`] once on the main thread before any worker
//! touches libldap. After that each worker owns its own `Connection`s; a handle
//! is never shared between threads at the same time (`Connection` is `Send`,
//! not `Sync`).

use std::ffi::{c_char, c_int, c_long, c_uint, c_void, CStr, CString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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

/// Where [`TlsSettings::ca_path`] `None` looks for the system's CA bundle,
/// first existing file wins (the Linux list of Go's crypto/x509). Debian's
/// libldap uses GnuTLS, whose libldap backend trusts nothing unless given a
/// CA file or directory (Debian's ldap.conf names the bundle for that reason,
/// and we do not read ldap.conf).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Arch, Gentoo, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",             // openSUSE
    "/etc/pki/tls/cacert.pem",            // OpenELEC
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // CentOS/RHEL 7+
    "/etc/ssl/cert.pem",                  // Alpine, BSDs
];

/// GnuTLS priority strings for [`TlsSettings::min_version`]. libldap 2.5's
/// GnuTLS backend ignores `LDAP_OPT_X_TLS_PROTOCOL_MIN` (measured: a 1.3
/// minimum still negotiated TLS 1.2), so the versions are set through the
/// cipher-suite option, which that backend passes to
/// `gnutls_priority_init`. "NORMAL" keeps GnuTLS's (and the system policy's)
/// default algorithms.
const GNUTLS_PRIORITY_TLS12: &CStr = c"NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2";
const GNUTLS_PRIORITY_TLS13: &CStr = c"NORMAL:-VERS-ALL:+VERS-TLS1.3";

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
    pub const CONSTRAINT_VIOLATION: ResultCode = ResultCode(sys::LDAP_CONSTRAINT_VIOLATION);
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
///
/// Errors of the TLS set-up in [`Connection::open`] also carry a
/// [`TlsFailure`] ([`LdapError::tls_failure`]), which `Display` names first,
/// e.g. `TLS: certificate verify failed (...): Can't contact LDAP server (-1):
/// (unknown error code)`.
#[derive(Debug, Clone)]
pub struct LdapError {
    pub code: ResultCode,
    pub diagnostic: Vec<u8>,
    tls: Option<TlsFailure>,
}

/// Which part of setting up TLS failed (see [`LdapError::tls_failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsFailure {
    /// Our own [`TlsSettings`] cannot be used: a CA, certificate or key path
    /// is missing or unreadable, only one of certificate and key is set, no
    /// system CA bundle exists, or libldap could not build a TLS context from
    /// the files. The same on every server, so **not** a transport failure:
    /// a configuration error. Code `PARAM_ERROR` (or `NOT_SUPPORTED` for a
    /// libldap without TLS).
    Settings,
    /// The server answered the StartTLS request with an error (e.g. slapd
    /// without TLS: `PROTOCOL_ERROR` (2) "unsupported extended operation").
    StartTlsRefused,
    /// The handshake ran, but libldap refused the server's certificate: not
    /// signed by a trusted CA, expired or not yet valid, or not issued for the
    /// host in the URL (subjectAltName; see [`TlsSettings`]).
    CertificateRejected,
    /// The handshake itself failed: no common protocol version or cipher, the
    /// server closed the connection or sent an alert, ...
    Handshake,
}

impl TlsFailure {
    /// Operator text; `Display` of [`LdapError`] starts with it.
    pub fn describe(self) -> &'static str {
        match self {
            TlsFailure::Settings => "TLS settings unusable",
            TlsFailure::StartTlsRefused => "TLS: the server refused StartTLS",
            TlsFailure::CertificateRejected => {
                "TLS: certificate verify failed (the server certificate is not signed by a \
                 trusted CA, is expired or not yet valid, or was not issued for the host \
                 in the URL)"
            }
            TlsFailure::Handshake => "TLS: handshake failed",
        }
    }
}

impl LdapError {
    pub fn new(code: ResultCode, diagnostic: impl Into<Vec<u8>>) -> LdapError {
        LdapError {
            code,
            diagnostic: diagnostic.into(),
            tls: None,
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
    /// Also transport, whatever the code: a TLS failure of this server
    /// ([`TlsFailure::StartTlsRefused`], [`TlsFailure::CertificateRejected`],
    /// [`TlsFailure::Handshake`]). `open` has dropped that handle; nothing
    /// was sent on it after the failure. Try the next server.
    ///
    /// Not transport: everything the server decided (49, 50, 53, 8, 13, 32, ...,
    /// including `TIMELIMIT_EXCEEDED` (3), a server-side verdict), local
    /// argument errors (`PARAM_ERROR`, `FILTER_ERROR`, `ENCODING_ERROR`,
    /// `NO_MEMORY`, `NOT_SUPPORTED`, `AUTH_UNKNOWN`) that another server would
    /// not change, and unusable TLS settings ([`TlsFailure::Settings`]).
    pub fn is_transport(&self) -> bool {
        let transport_code = matches!(
            self.code,
            ResultCode::SERVER_DOWN
                | ResultCode::LOCAL_ERROR
                | ResultCode::DECODING_ERROR
                | ResultCode::TIMEOUT
                | ResultCode::CONNECT_ERROR
                | ResultCode::X_CONNECTING
                | ResultCode::BUSY
                | ResultCode::UNAVAILABLE
        );
        let tls_of_server = matches!(
            self.tls,
            Some(
                TlsFailure::StartTlsRefused
                    | TlsFailure::CertificateRejected
                    | TlsFailure::Handshake
            )
        );
        transport_code || tls_of_server
    }

    /// The error came from setting up TLS in [`Connection::open`] (bad local
    /// settings, StartTLS refused, certificate refused, handshake failed).
    ///
    /// Not TLS-specific, hence `false`: a connection refused or reset, and a
    /// server that never answers (`TIMEOUT`): libldap cannot tell whether
    /// the TCP connect or the handshake stalled.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Which part of the TLS set-up failed, if this is a TLS error.
    pub fn tls_failure(&self) -> Option<TlsFailure> {
        self.tls
    }

    /// Our client-side deadline ran out (`TIMEOUT`, -5): `Timeouts::operation`
    /// for a request, or `Timeouts::connect` for the TCP connect and TLS
    /// handshake (libldap reports a stalled `ldaps://` connect as
    /// `SERVER_DOWN` without text; `Connection::open` reports it as
    /// `TIMEOUT`, see [`Timeouts`]). Every timeout
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

    /// A [`TlsFailure::Settings`] error with our own text.
    fn tls_settings(code: ResultCode, text: &str) -> LdapError {
        LdapError::local(code, text).with_tls(TlsFailure::Settings)
    }

    fn with_tls(mut self, failure: TlsFailure) -> LdapError {
        self.tls = Some(failure);
        self
    }
}

impl fmt::Display for LdapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(tls) = self.tls {
            write!(f, "{}: ", tls.describe())?;
        }
        write!(f, "{}", self.code)?;
        let diagnostic = self.diagnostic_lossy();
        if !diagnostic.is_empty() {
            write!(f, ": {diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LdapError {}

pub fn is_unsafe_for_log(c: char) -> bool {
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
        Ret::Code(rc) => Err(LdapError::new(ResultCode(rc), diagnostic_message(ld))),
        Ret::Option {
            status: sys::LDAP_OPT_SUCCESS,
            ..
        } => Ok(()),
        // An option the library rejected is our bad parameter (or an option
        // this libldap does not know), never a transport problem, so it does
        // not keep LDAP_OPT_ERROR (-1), which has the value of SERVER_DOWN.
        // Some options leave a reason in the diagnostic (LDAP_OPT_X_TLS_NEWCTX
        // puts the TLS library's text there).
        Ret::Option { option, status } => {
            let mut text = format!("libldap rejected option {option:#06x} (status {status})");
            let reason = sanitize_for_log(&diagnostic_message(ld), DIAGNOSTIC_LOG_MAX_CHARS);
            if !reason.is_empty() {
                text.push_str(": ");
                text.push_str(&reason);
            }
            Err(LdapError::local(ResultCode::PARAM_ERROR, &text))
        }
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

/// Owns an attribute's values as libldap returns them; frees them in Drop.
struct Values {
    ptr: *mut *mut sys::berval,
}

impl Values {
    fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            if self.ptr.is_null() {
                return None;
            }
            // SAFETY: a NULL-terminated array of berval pointers, alive while `self` is.
            let value = unsafe { *self.ptr.add(at) };
            if value.is_null() {
                return None;
            }
            at += 1;
            // SAFETY: `value` is a live berval whose bv_val holds bv_len bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts((*value).bv_val.cast::<u8>(), (*value).bv_len as usize)
            };
            Some(bytes)
        })
    }
}

impl Drop for Values {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: the array came from ldap_get_values_len and is freed once.
            unsafe { sys::ldap_value_free_len(self.ptr) };
            self.ptr = ptr::null_mut();
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

/// An X.509 Name (DER, e.g. a certificate's subject) as an RFC 4514 string.
pub fn x509_name_to_string(name: &[u8]) -> Option<String> {
    let mut input = sys::berval {
        bv_len: sys::ber_len_t::try_from(name.len()).ok()?,
        bv_val: name.as_ptr().cast_mut().cast(),
    };
    let mut out = sys::berval {
        bv_len: 0,
        bv_val: ptr::null_mut(),
    };
    // SAFETY: `input` describes `name`, which libldap only reads during the call; on success
    // it allocates `out.bv_val` (NUL-terminated), which `LdapMem` frees.
    let status = unsafe {
        sys::ldap_X509dn2bv(
            (&raw mut input).cast(),
            &raw mut out,
            ptr::null_mut(),
            sys::LDAP_DN_FORMAT_LDAPV3,
        )
    };
    let owned = LdapMem { ptr: out.bv_val };
    if status != sys::LDAP_SUCCESS || owned.ptr.is_null() {
        return None;
    }
    String::from_utf8(owned.to_bytes()).ok()
}

/// True when `text` parses as an RFC 4514 DN (the empty DN included).
pub fn is_dn(text: &str) -> bool {
    let Ok(c_text) = CString::new(text) else {
        return false;
    };
    let mut parsed = ParsedDn(ptr::null_mut());
    // SAFETY: `c_text` is a valid C string for the call; on success libldap stores a
    // structure in `parsed.0`, which `ParsedDn` frees.
    let status = unsafe {
        sys::ldap_str2dn(
            c_text.as_ptr(),
            &raw mut parsed.0,
            sys::LDAP_DN_FORMAT_LDAPV3,
        )
    };
    status == sys::LDAP_SUCCESS
}

/// What `ldap_str2dn` allocated.
struct ParsedDn(*mut c_void);

impl Drop for ParsedDn {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: allocated by ldap_str2dn and freed only here.
            unsafe { sys::ldap_dnfree(self.0) };
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
/// It also initialises libldap's TLS library (GnuTLS or OpenSSL) here:
/// libldap otherwise does that when it builds its first TLS context, with
/// unlocked counters, i.e. in the first TLS `Connection::open` of some
/// worker, possibly two at once. The public way there is to build the global
/// default TLS context (`LDAP_OPT_X_TLS_NEWCTX` on the global options, from
/// ldap.conf/`LDAPTLS_*`; about 18 ms with Debian's CA bundle). We never use
/// that context: every TLS handle gets the one built from its
/// [`TlsSettings`]. So its result is ignored (a broken `TLS_*` line in
/// ldap.conf must not matter).
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
    set_option(ptr::null_mut(), sys::LDAP_OPT_REFERRALS, sys::LDAP_OPT_OFF)?;
    let client: c_int = 0;
    // Ignored on purpose: see `init_global`.
    let _ = set_option(
        ptr::null_mut(),
        sys::LDAP_OPT_X_TLS_NEWCTX,
        (&raw const client).cast(),
    );
    Ok(())
}

/// `ldap_set_option` on a handle, or on the global defaults when `ld` is NULL.
/// Callers pass `value` in the type ldap_get_option(3) documents for `option`.
fn set_option(ld: *mut sys::LDAP, option: c_int, value: *const c_void) -> Result<(), LdapError> {
    // SAFETY: `ld` is NULL (global options) or a live handle we own
    // exclusively; every caller passes `value` as the type the option expects
    // (int *, struct timeval *, unsigned int *, LDAP_OPT_ON/OFF, a
    // NUL-terminated char *, NULL where the option accepts NULL to clear it,
    // or a live TLS context), pointing at data that outlives the call;
    // libldap copies the value (or takes its own reference to the context).
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
/// sets it):
/// - `ldap://` (no StartTLS): `open` does no I/O; the first request starts
///   the TCP connect and waits for connect + reply together under
///   `operation`; a TCP connect that never completes fails with `TIMEOUT`
///   after `operation`, not after `connect`.
/// - `ldaps://`: `open` connects and completes the handshake under
///   `connect` (TCP connect and handshake together; a stalled one fails with
///   `TIMEOUT` after `connect`).
/// - StartTLS: `open` sends the StartTLS request (with the TCP connect) under
///   `operation`, then the handshake runs under `connect`: at most about
///   `operation + connect`.
///
/// Every request after `open` is bounded by `operation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `LDAP_OPT_NETWORK_TIMEOUT`: the TLS handshake, and the TCP connect of
    /// `ldaps://` in `open`.
    pub connect: Duration,
    /// `LDAP_OPT_TIMEOUT` and the search's own timeout argument: each
    /// synchronous request (bind, search), including a TCP connect that the
    /// request has to wait for.
    pub operation: Duration,
}

// ---------------------------------------------------------------------------
// TLS settings
// ---------------------------------------------------------------------------

/// How the server certificate is checked (`LDAP_OPT_X_TLS_REQUIRE_CERT`, as
/// libldap defines the levels for a client; see ldap.conf(5) `TLS_REQCERT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequireCert {
    /// No certificate is requested or checked, not even the host name.
    /// Anyone on the path can read the passwords: for tests only.
    Never,
    /// The certificate is checked, but a bad one (untrusted, expired) is
    /// accepted, and the host name is **not** checked.
    Allow,
    /// A bad certificate (untrusted, expired, wrong host name) ends the
    /// session; only a server that sends no certificate at all is accepted
    /// (a TLS server always sends one, so in practice the same as `Demand`).
    Try,
    /// The certificate must be present, trusted and valid, and issued for the
    /// host in the URL. The default.
    Demand,
}

impl RequireCert {
    fn raw(self) -> c_int {
        match self {
            RequireCert::Never => sys::LDAP_OPT_X_TLS_NEVER,
            RequireCert::Allow => sys::LDAP_OPT_X_TLS_ALLOW,
            RequireCert::Try => sys::LDAP_OPT_X_TLS_TRY,
            RequireCert::Demand => sys::LDAP_OPT_X_TLS_DEMAND,
        }
    }
}

/// Lowest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

impl TlsVersion {
    fn raw(self) -> c_int {
        match self {
            TlsVersion::V1_2 => sys::LDAP_OPT_X_TLS_PROTOCOL_TLS1_2,
            TlsVersion::V1_3 => sys::LDAP_OPT_X_TLS_PROTOCOL_TLS1_3,
        }
    }

    fn gnutls_priority(self) -> &'static CStr {
        match self {
            TlsVersion::V1_2 => GNUTLS_PRIORITY_TLS12,
            TlsVersion::V1_3 => GNUTLS_PRIORITY_TLS13,
        }
    }
}

/// TLS for one connection: what [`Connection::open`] uses for `ldaps://` URLs
/// and StartTLS. Nothing comes from `LDAPTLS_*` environment variables,
/// `ldap.conf`/`ldaprc`, or other handles.
///
/// Host names: the server certificate must name the URL's host in a
/// subjectAltName (DNS or IP); the common name is only consulted when the
/// certificate has no subjectAltName at all (`LDAP_OPT_X_TLS_REQUIRE_SAN` =
/// try, RFC 6125). libldap replaces a URL host `localhost` with the
/// machine's host name for this check.
///
/// **One TLS context per configuration.** libldap keeps the CA certificates,
/// the client certificate and key, the certificate check level and the
/// protocol versions in a TLS context. The first TLS `open` with these
/// settings builds it (about 18 ms of CPU with Debian's CA bundle, and a
/// libldap leak of 8 to 25 KB, see `vendor-notes/libldap.md`); every later
/// `open` with the same `TlsSettings` or a clone of it, on any thread, shares
/// it. Making or cloning a `TlsSettings` builds nothing (a `CONFIG SET` on
/// Valkey's main thread stays cheap). The context is built again only when
/// its inputs change: a file named here (or the system CA bundle) replaced
/// or rewritten on disk, or the fields of a clone changed after the build.
/// A build that failed is retried when the inputs change, else at most every
/// 30 s; until then `open` returns the same error at once.
#[derive(Clone)]
pub struct TlsSettings {
    /// Send StartTLS on `ldap://` URLs before anything else (ignored for
    /// `ldaps://`, which is TLS from the first byte).
    pub starttls: bool,
    /// A CA bundle file (every certificate in it is trusted) or a directory
    /// of CA certificates (GnuTLS loads every PEM file in it; OpenSSL needs
    /// the hashed names of `openssl rehash`). `None` = the system's CA bundle
    /// (the first of `/etc/ssl/certs/ca-certificates.crt`,
    /// `/etc/pki/tls/certs/ca-bundle.crt`, ... that exists: see
    /// [`system_ca_bundle`]).
    pub ca_path: Option<PathBuf>,
    /// Client certificate (PEM), for servers that ask for one; needs `key_path`.
    pub cert_path: Option<PathBuf>,
    /// Private key (PEM, unencrypted) of `cert_path`.
    pub key_path: Option<PathBuf>,
    pub require_cert: RequireCert,
    pub min_version: TlsVersion,
    /// Not configuration: the TLS context built from the fields above,
    /// shared by clones; ignored by `==` and `Debug`. Fill it with
    /// `..TlsSettings::default()`. (Public only so that struct update syntax
    /// works outside this module; its contents are private.)
    pub context: TlsContextCache,
}

impl Default for TlsSettings {
    /// No StartTLS, system CAs, no client certificate, `Demand`, TLS 1.2+.
    fn default() -> TlsSettings {
        TlsSettings {
            starttls: false,
            ca_path: None,
            cert_path: None,
            key_path: None,
            require_cert: RequireCert::Demand,
            min_version: TlsVersion::V1_2,
            context: TlsContextCache::default(),
        }
    }
}

/// Compares the configuration fields only (not [`TlsSettings::context`]).
impl PartialEq for TlsSettings {
    fn eq(&self, other: &TlsSettings) -> bool {
        self.starttls == other.starttls
            && self.ca_path == other.ca_path
            && self.cert_path == other.cert_path
            && self.key_path == other.key_path
            && self.require_cert == other.require_cert
            && self.min_version == other.min_version
    }
}

impl Eq for TlsSettings {}

/// The configuration fields only (not [`TlsSettings::context`]).
impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("starttls", &self.starttls)
            .field("ca_path", &self.ca_path)
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("require_cert", &self.require_cert)
            .field("min_version", &self.min_version)
            .finish()
    }
}

impl TlsSettings {
    /// How many TLS contexts were built (or builds tried) for these settings
    /// and their clones: 1 after any number of TLS opens while the settings
    /// and their files stay the same. For tests and diagnostics.
    pub fn tls_context_builds(&self) -> u64 {
        self.context.shared.builds.load(Ordering::Relaxed)
    }
}

/// How long a failed TLS context build is remembered while its inputs stay
/// the same: opens meanwhile get the same error without parsing the files
/// again (and without libldap's per-build leak).
const FAILED_BUILD_RETRY: Duration = Duration::from_secs(30);

/// The TLS context of a [`TlsSettings`] ([`TlsSettings::context`]): empty
/// until the first TLS [`Connection::open`] builds it, then shared by every
/// clone of the settings. Dropping the last clone drops this reference to
/// the context; handles still using it hold their own.
#[derive(Clone, Default)]
pub struct TlsContextCache {
    shared: Arc<ContextSlot>,
}

impl fmt::Debug for TlsContextCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsContextCache")
            .field("builds", &self.shared.builds.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct ContextSlot {
    /// The last build. Locked while building, so that openers with the same
    /// settings wait for one build instead of each making (and leaking) one.
    last: Mutex<Option<Build>>,
    builds: AtomicU64,
}

/// A build: what it was made from, what came out, and when.
struct Build {
    inputs: ContextInputs,
    result: Result<Arc<TlsContext>, LdapError>,
    at: Instant,
}

impl TlsContextCache {
    /// The context for `inputs`: the last one built if it was built from the
    /// same inputs, else a new one, which replaces it. A failed build is
    /// returned again (cloned) for the same inputs during
    /// [`FAILED_BUILD_RETRY`]. `tls` names the files in a build error.
    fn get(&self, inputs: ContextInputs, tls: &TlsSettings) -> Result<Arc<TlsContext>, LdapError> {
        // A panic while building leaves the previous build in place, which is
        // consistent: keep using the slot.
        let mut last = self
            .shared
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(build) = last.as_ref().filter(|build| build.inputs == inputs) {
            match &build.result {
                Ok(context) => return Ok(Arc::clone(context)),
                Err(e) if build.at.elapsed() < FAILED_BUILD_RETRY => return Err(e.clone()),
                Err(_) => {}
            }
        }
        self.shared.builds.fetch_add(1, Ordering::Relaxed);
        let result = TlsContext::build(&inputs, tls).map(Arc::new);
        // Replacing the previous build drops our reference to its context;
        // open handles keep theirs.
        *last = Some(Build {
            inputs,
            result: result.clone(),
            at: Instant::now(),
        });
        result
    }
}

/// One reference to a libldap TLS context (`LDAP_OPT_X_TLS_CTX`: GnuTLS
/// credentials and priority, or an OpenSSL `SSL_CTX`), dropped with
/// `ldap_pvt_tls_ctx_free` in Drop; the context is freed with its last
/// reference. libldap counts references under a lock (`tlsg_ctx_ref`/
/// `tlsg_ctx_free` in tls_g.c; OpenSSL's `SSL_CTX_up_ref`/`SSL_CTX_free`);
/// every handle given the context holds one of its own until it is freed.
struct TlsContext {
    ptr: *mut c_void,
}

// SAFETY: the context is only read once built. libldap never changes a
// context after `LDAP_OPT_X_TLS_NEWCTX` returns; each TLS session made from
// it (one per handle) only reads it: GnuTLS keeps pointers to the
// credentials and priority (gnutls_credentials_set(3): credentials are meant
// to be shared between threads; "read-only access to objects, for example
// the credentials holding structures, is also thread-safe", GnuTLS manual,
// Thread safety), OpenSSL's SSL_new reads a shared SSL_CTX. Our only calls on
// it are taking a reference (`ldap_set_option`) and dropping ours
// (`ldap_pvt_tls_ctx_free`), both under libldap's reference-count lock. So
// the pointer may move to and be used from any thread, by several at once.
unsafe impl Send for TlsContext {}
// SAFETY: see `Send`: shared use is read-only or under libldap's lock.
unsafe impl Sync for TlsContext {}

impl TlsContext {
    /// Builds a client TLS context from `inputs` on a handle of its own,
    /// with every TLS option set explicitly (see
    /// [`Connection::set_context_options`]), then takes a reference to it.
    /// The handle is freed on return; the context lives on in ours.
    fn build(inputs: &ContextInputs, tls: &TlsSettings) -> Result<TlsContext, LdapError> {
        // NEWCTX builds from a handle's options (or from the global ones,
        // which every handle falls back on: not ours to change). `builder`
        // owns this handle, which never connects, and frees it on return.
        let mut builder = Connection {
            ld: ptr::null_mut(),
            operation_timeout: sys::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
        };
        // SAFETY: ldap_create stores a new handle (global options copied, no
        // URI, no I/O) in `builder.ld`, which `builder` then owns.
        let rc = unsafe { sys::ldap_create(&raw mut builder.ld) };
        check(ptr::null_mut(), Ret::Code(rc)).map_err(|e| e.with_tls(TlsFailure::Settings))?;
        if builder.ld.is_null() {
            return Err(LdapError::tls_settings(
                ResultCode::LOCAL_ERROR,
                "ldap_create returned no handle",
            ));
        }
        builder.set_context_options(inputs)?;
        builder.clear_diagnostic()?;
        let client: c_int = 0;
        let built = builder.set(sys::LDAP_OPT_X_TLS_NEWCTX, (&raw const client).cast());
        built.map_err(|_| {
            // GnuTLS builds leave no reason (libldap logs it at debug level
            // only): name the files.
            let mut files = format!("CA {}", ca_display(tls));
            if let (Some(cert), Some(key)) = (&tls.cert_path, &tls.key_path) {
                files += &format!(", cert {}, key {}", cert.display(), key.display());
            }
            LdapError::tls_settings(
                ResultCode::PARAM_ERROR,
                &format!(
                    "libldap cannot use {files} (not PEM, not a certificate/key pair, \
                     or an encrypted key?)"
                ),
            )
        })?;

        let mut context = TlsContext {
            ptr: ptr::null_mut(),
        };
        // SAFETY: `builder.ld` is our live handle; for LDAP_OPT_X_TLS_CTX the
        // out value is a `void **` that receives the handle's context with a
        // new reference (tls2.c, ldap_pvt_tls_get_option), which `context`
        // owns and drops in Drop.
        let status = unsafe {
            sys::ldap_get_option(
                builder.ld,
                sys::LDAP_OPT_X_TLS_CTX,
                (&raw mut context.ptr).cast::<c_void>(),
            )
        };
        let option = sys::LDAP_OPT_X_TLS_CTX;
        check(builder.ld, Ret::Option { option, status })
            .map_err(|e| e.with_tls(TlsFailure::Settings))?;
        if context.ptr.is_null() {
            return Err(LdapError::tls_settings(
                ResultCode::LOCAL_ERROR,
                "libldap built no TLS context",
            ));
        }
        Ok(context)
    }
}

impl Drop for TlsContext {
    fn drop(&mut self) {
        let p = std::mem::replace(&mut self.ptr, ptr::null_mut());
        if !p.is_null() {
            // SAFETY: `p` is the one reference this value took with
            // ldap_get_option(LDAP_OPT_X_TLS_CTX); it was nulled above, so it
            // is dropped once. Handles that were given the context hold
            // references of their own, so it is freed only after the last of
            // them is freed too.
            unsafe { sys::ldap_pvt_tls_ctx_free(p) };
        }
    }
}

/// What stat(2) says about a file read into a TLS context: replacing it
/// (`update-ca-certificates`, a renewed client certificate moved into place)
/// or rewriting it in place changes the inode, size, mtime or ctime.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Everything a TLS context is built from: the settings as they apply to
/// this libldap (`ca_path` `None` resolved to the system bundle) and the
/// stamps of every file read. Equal inputs give an equal context.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ContextInputs {
    backend: TlsBackend,
    ca: CaSource,
    cert: Option<CString>,
    key: Option<CString>,
    require_cert: RequireCert,
    min_version: TlsVersion,
    files: Vec<FileStamp>,
}

impl ContextInputs {
    /// Resolves `tls` and checks that every file it names exists and is
    /// readable (a [`TlsFailure::Settings`] error naming the file
    /// otherwise), without parsing any: a few stat(2) calls, made on every
    /// TLS open.
    fn resolve(tls: &TlsSettings, backend: TlsBackend) -> Result<ContextInputs, LdapError> {
        let mut files = Vec::new();
        let ca = ca_source(tls, backend, &mut files)?;
        let (cert, key) = match (&tls.cert_path, &tls.key_path) {
            (Some(cert), Some(key)) => (
                Some(tls_path(cert, "TLS client certificate", &mut files)?.0),
                Some(tls_path(key, "TLS client key", &mut files)?.0),
            ),
            (None, None) => (None, None),
            _ => {
                return Err(LdapError::tls_settings(
                    ResultCode::PARAM_ERROR,
                    "a TLS client certificate needs both a certificate and a key path",
                ))
            }
        };
        Ok(ContextInputs {
            backend,
            ca,
            cert,
            key,
            require_cert: tls.require_cert,
            min_version: tls.min_version,
            files,
        })
    }
}

/// The CA bundle that [`TlsSettings::ca_path`] `None` stands for: the first
/// that is a file of `/etc/ssl/certs/ca-certificates.crt` (Debian, Ubuntu,
/// Arch, Alpine), `/etc/pki/tls/certs/ca-bundle.crt` (Fedora, RHEL),
/// `/etc/ssl/ca-bundle.pem` (openSUSE), `/etc/pki/tls/cacert.pem`,
/// `/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem`, `/etc/ssl/cert.pem`;
/// `None` if there is none.
pub fn system_ca_bundle() -> Option<&'static Path> {
    SYSTEM_CA_BUNDLES
        .iter()
        .map(Path::new)
        .find(|path| path.is_file())
}

/// The TLS library libldap was built with (`LDAP_OPT_X_TLS_PACKAGE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsBackend {
    GnuTls,
    OpenSsl,
    Other,
}

fn tls_backend() -> Result<TlsBackend, LdapError> {
    let mut name = LdapMem::null();
    // SAFETY: a NULL handle reads the global option; for
    // LDAP_OPT_X_TLS_PACKAGE the out value is a `char **` that receives a
    // copy, owned and freed by `name`. A libldap without TLS refuses it.
    let status = unsafe {
        sys::ldap_get_option(
            ptr::null_mut(),
            sys::LDAP_OPT_X_TLS_PACKAGE,
            (&raw mut name.ptr).cast::<c_void>(),
        )
    };
    check(
        ptr::null_mut(),
        Ret::Option {
            option: sys::LDAP_OPT_X_TLS_PACKAGE,
            status,
        },
    )
    .map_err(|_| {
        LdapError::tls_settings(
            ResultCode::NOT_SUPPORTED,
            "this libldap was built without TLS support",
        )
    })?;
    Ok(match name.to_bytes().as_slice() {
        b"GnuTLS" => TlsBackend::GnuTls,
        b"OpenSSL" => TlsBackend::OpenSsl,
        _ => TlsBackend::Other,
    })
}

/// Where the trusted CAs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CaSource {
    File(CString),
    Dir(CString),
    /// Nothing set: OpenSSL then uses its default paths, GnuTLS trusts no CA.
    Unset,
}

/// A path for libldap, checked to be readable now so that a mistake gives a
/// clear [`TlsFailure::Settings`] error instead of a failed handshake. Adds
/// its stamp to `files` (for a directory: its own and each entry's, by name).
fn tls_path(
    path: &Path,
    what: &str,
    files: &mut Vec<FileStamp>,
) -> Result<(CString, bool), LdapError> {
    // Each reason names the path.
    let bad = |reason: String| {
        LdapError::tls_settings(ResultCode::PARAM_ERROR, &format!("{what}: {reason}"))
    };
    // The TLS library opens these with blocking calls on the worker's thread: a FIFO
    // swapped in since the option was set must fail here, not hang the worker.
    let meta = std::fs::metadata(path)
        .map_err(|e| bad(format!("cannot read '{}': {e}", path.display())))?;
    let is_dir = meta.is_dir();
    if is_dir {
        files.push(FileStamp::of(&meta));
        let entries = crate::files::library_input_dir(path).map_err(bad)?;
        files.extend(entries.iter().map(FileStamp::of));
    } else {
        files.push(FileStamp::of(
            &crate::files::library_input(path).map_err(bad)?,
        ));
    }
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| bad(format!("'{}' contains a NUL byte", path.display())))?;
    Ok((c_path, is_dir))
}

fn ca_source(
    tls: &TlsSettings,
    backend: TlsBackend,
    files: &mut Vec<FileStamp>,
) -> Result<CaSource, LdapError> {
    if let Some(path) = &tls.ca_path {
        let (c_path, is_dir) = tls_path(path, "TLS CA path", files)?;
        return Ok(if is_dir {
            CaSource::Dir(c_path)
        } else {
            CaSource::File(c_path)
        });
    }
    if let Some(bundle) = system_ca_bundle() {
        let (c_path, _) = tls_path(bundle, "system CA bundle", files)?;
        return Ok(CaSource::File(c_path));
    }
    let needs_ca = matches!(tls.require_cert, RequireCert::Demand | RequireCert::Try);
    if backend == TlsBackend::OpenSsl || !needs_ca {
        return Ok(CaSource::Unset);
    }
    Err(LdapError::tls_settings(
        ResultCode::PARAM_ERROR,
        &format!(
            "no TLS CA path set and no system CA bundle found (looked for {})",
            SYSTEM_CA_BUNDLES.join(", ")
        ),
    ))
}

/// `ca_path` for messages, or the system bundle it stands for.
fn ca_display(tls: &TlsSettings) -> String {
    let path: Option<&Path> = match &tls.ca_path {
        Some(path) => Some(path),
        None => system_ca_bundle(),
    };
    path.map_or_else(|| "(none)".to_owned(), |p| p.display().to_string())
}

/// Where a TLS session was being set up when an error happened.
#[derive(Debug, Clone, Copy)]
enum TlsStage {
    /// `ldap_connect` of an `ldaps://` URL; `timed_out`: it took (about) the
    /// connect timeout.
    Ldaps { timed_out: bool },
    /// `ldap_start_tls_s`.
    StartTls,
}

/// Adds the [`TlsFailure`] (if any) to an error of the TLS set-up, from the
/// code and libldap's diagnostic text.
///
/// Measured with Debian's libldap 2.5.13 (GnuTLS): a refused certificate
/// (untrusted, or not issued for the host) leaves the text "(unknown error
/// code)": libldap's own checks after the handshake return codes that
/// `gnutls_strerror` has no text for. A connection refused leaves "Error in
/// the push function."; a stalled `ldaps://` connect returns `SERVER_DOWN`
/// with no text after the connect timeout; other handshake failures leave
/// GnuTLS's reason ("The TLS connection was non-properly terminated.", "A
/// TLS fatal alert has been received.", ...). OpenSSL builds put "...
/// certificate verify failed ..." there.
fn classify_tls_error(mut err: LdapError, stage: TlsStage, backend: TlsBackend) -> LdapError {
    if matches!(stage, TlsStage::StartTls) && !err.code.is_api_error() {
        // The server's answer to the StartTLS request.
        return err.with_tls(TlsFailure::StartTlsRefused);
    }
    if err.code == ResultCode::TIMEOUT {
        if err.diagnostic.is_empty() && matches!(stage, TlsStage::StartTls) {
            err.diagnostic = b"no StartTLS answer or TLS handshake within the timeouts".to_vec();
        }
        return err;
    }
    if err.diagnostic.is_empty() {
        if let TlsStage::Ldaps { timed_out: true } = stage {
            // libldap reports its poll timeout here as SERVER_DOWN.
            err.code = ResultCode::TIMEOUT;
            err.diagnostic =
                b"no TCP connection and TLS session within the connect timeout".to_vec();
        }
        return err;
    }
    let text = err.diagnostic.as_slice();
    let contains = |needle: &[u8]| text.windows(needle.len()).any(|w| w == needle);
    let rejected = (backend == TlsBackend::GnuTls && text == b"(unknown error code)")
        || contains(b"certificate verify failed")
        || contains(b"does not match")
        || contains(b"unable to get");
    let socket_error = backend == TlsBackend::GnuTls
        && (text == b"Error in the push function." || text == b"Error in the pull function.");
    if rejected {
        err.with_tls(TlsFailure::CertificateRejected)
    } else if socket_error {
        err
    } else {
        err.with_tls(TlsFailure::Handshake)
    }
}

/// `ldaps://` anywhere in a URI (list).
fn has_ldaps_url(uri: &str) -> bool {
    uri.split(|c: char| c == ',' || c.is_whitespace())
        .any(|url| {
            url.get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("ldaps://"))
        })
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
    /// TLS: for an `ldaps://` URL, or with `tls.starttls`, the handle gets
    /// the TLS context of `tls` (`LDAP_OPT_X_TLS_CTX`), built on the first
    /// such `open` and shared afterwards (see [`TlsSettings`]). The context is
    /// built on a handle of its own with every TLS option of [`TlsSettings`]
    /// set, together with the ones we do not offer (cipher suite or GnuTLS
    /// priority, CRL file and checks, curve, key pin, `REQUIRE_SAN` = try,
    /// in-memory certificates), so that nothing comes from `LDAPTLS_*`,
    /// ldap.conf or the global defaults. The options that libldap reads from
    /// the connection's handle itself (`REQUIRE_CERT`, `REQUIRE_SAN`, key pin)
    /// are set on each handle. (Measured: a new handle inherits the global
    /// *levels*, e.g. `LDAPTLS_REQCERT=never`, and, without a context of its
    /// own, uses the global context built from ldap.conf/`LDAPTLS_*`; it does
    /// not inherit the file names.) Unusable settings (a missing or
    /// unreadable file, a file that is not PEM) fail here with
    /// [`TlsFailure::Settings`] before any I/O.
    /// - `ldaps://`: connects and completes the handshake now (TCP connect and
    ///   handshake bounded by `timeouts.connect`), so a bad certificate is an
    ///   `open` error.
    /// - `ldap://` with `starttls`: sends StartTLS now (`ldap_start_tls_s`;
    ///   request under `timeouts.operation`, handshake under
    ///   `timeouts.connect`).
    ///
    /// On any TLS error the handle is freed before `open` returns; the only
    /// thing libldap still sends on it is the UnbindRequest that closes it
    /// (no bind, no search: no plaintext fallback). See
    /// [`LdapError::tls_failure`] for the classification.
    ///
    /// Cost (libldap 2.5.13, GnuTLS): building the context parses the CA
    /// file: about 18 ms for Debian's 144-certificate bundle (`ca_path`
    /// `None`), 0.05 ms for one CA, and libldap's GnuTLS code leaks about 8 KB
    /// per context (a priority string is always set, for `min_version`), plus
    /// 17 KB when a client certificate is loaded. Both are paid once per
    /// `TlsSettings` (and again only when its files change), not per `open`;
    /// each later TLS `open` costs a few stat(2) calls plus the handshake.
    ///
    /// A plain `ldap://` connection without StartTLS does no network I/O here:
    /// it is made by the first request.
    ///
    /// An empty URI is refused (libldap would fall back to ldap.conf), as are
    /// zero timeouts; timeouts above about 23 days are clamped.
    pub fn open(
        uri: &str,
        timeouts: &Timeouts,
        tls: &TlsSettings,
    ) -> Result<Connection, LdapError> {
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

        let implicit_tls = has_ldaps_url(uri);
        if !implicit_tls && !tls.starttls {
            return Ok(conn);
        }
        let backend = tls_backend()?;
        let inputs = ContextInputs::resolve(tls, backend)?;
        let context = tls.context.get(inputs, tls)?;
        conn.use_tls_context(&context, tls.require_cert)?;
        if implicit_tls {
            conn.connect_now(timeouts.connect.min(MAX_TIMEOUT), backend)?;
        }
        if tls.starttls && !conn.tls_in_place() {
            conn.start_tls(backend)?;
        }
        // On every error above, `conn` is dropped on return: unbound and freed.
        Ok(conn)
    }

    /// Sets the operation timeout (`LDAP_OPT_TIMEOUT` and the search time
    /// limit we pass) and the network timeout (`LDAP_OPT_NETWORK_TIMEOUT`, for
    /// a reconnect or handshake) of this handle, e.g. to what remains of a
    /// request's deadline. Two `ldap_set_option` calls, no I/O. Zero
    /// timeouts are refused (nothing changes then); `TCP_USER_TIMEOUT` keeps
    /// the value from `open` (it applies to the socket when it is created).
    pub fn set_timeouts(&mut self, timeouts: &Timeouts) -> Result<(), LdapError> {
        let connect = to_timeval(timeouts.connect, "connect timeout")?;
        let operation = to_timeval(timeouts.operation, "operation timeout")?;
        self.set(sys::LDAP_OPT_NETWORK_TIMEOUT, (&raw const connect).cast())?;
        self.set(sys::LDAP_OPT_TIMEOUT, (&raw const operation).cast())?;
        self.operation_timeout = operation;
        Ok(())
    }

    /// Sets every option a TLS context is built from on this (builder)
    /// handle: the ones [`TlsSettings`] offers and the ones it does not
    /// (cleared), so that nothing comes from `LDAPTLS_*` or ldap.conf.
    fn set_context_options(&mut self, inputs: &ContextInputs) -> Result<(), LdapError> {
        let c_str = |value: &Option<CString>| value.as_ref().map_or(ptr::null(), |v| v.as_ptr());
        let (ca_file, ca_dir) = match &inputs.ca {
            CaSource::File(file) => (file.as_ptr(), ptr::null()),
            CaSource::Dir(dir) => (ptr::null(), dir.as_ptr()),
            CaSource::Unset => (ptr::null(), ptr::null()),
        };
        // The context keeps its own copy: GnuTLS checks the chain by it (the
        // handle's copy decides the host name check, see `use_tls_context`).
        let require_cert = inputs.require_cert.raw();
        // RFC 6125: with a subjectAltName present, the common name is not
        // used (libldap's default, allow, falls back to the CN).
        let require_san: c_int = sys::LDAP_OPT_X_TLS_TRY;
        let min_version = inputs.min_version.raw();
        let no_max_version: c_int = 0;
        let priority = match inputs.backend {
            TlsBackend::GnuTls => inputs.min_version.gnutls_priority().as_ptr(),
            // OpenSSL honours PROTOCOL_MIN; NULL = its default cipher list.
            TlsBackend::OpenSsl | TlsBackend::Other => ptr::null(),
        };

        // NULL clears a string option and an in-memory (berval) option.
        let options: [(c_int, *const c_void); 15] = [
            (sys::LDAP_OPT_X_TLS_CACERTFILE, ca_file.cast()),
            (sys::LDAP_OPT_X_TLS_CACERTDIR, ca_dir.cast()),
            (sys::LDAP_OPT_X_TLS_CACERT, ptr::null()),
            (sys::LDAP_OPT_X_TLS_CERTFILE, c_str(&inputs.cert).cast()),
            (sys::LDAP_OPT_X_TLS_KEYFILE, c_str(&inputs.key).cast()),
            (sys::LDAP_OPT_X_TLS_CERT, ptr::null()),
            (sys::LDAP_OPT_X_TLS_KEY, ptr::null()),
            (
                sys::LDAP_OPT_X_TLS_REQUIRE_CERT,
                (&raw const require_cert).cast(),
            ),
            (
                sys::LDAP_OPT_X_TLS_REQUIRE_SAN,
                (&raw const require_san).cast(),
            ),
            (
                sys::LDAP_OPT_X_TLS_PROTOCOL_MIN,
                (&raw const min_version).cast(),
            ),
            (
                sys::LDAP_OPT_X_TLS_PROTOCOL_MAX,
                (&raw const no_max_version).cast(),
            ),
            (sys::LDAP_OPT_X_TLS_CIPHER_SUITE, priority.cast()),
            (sys::LDAP_OPT_X_TLS_CRLFILE, ptr::null()),
            (sys::LDAP_OPT_X_TLS_ECNAME, ptr::null()),
            (sys::LDAP_OPT_X_TLS_PEERKEY_HASH, ptr::null()),
        ];
        for (option, value) in options {
            self.set(option, value)
                .map_err(|e| e.with_tls(TlsFailure::Settings))?;
        }
        if inputs.backend == TlsBackend::OpenSsl {
            // OpenSSL builds only (GnuTLS builds refuse the option).
            let no_crl_check: c_int = sys::LDAP_OPT_X_TLS_CRL_NONE;
            self.set(
                sys::LDAP_OPT_X_TLS_CRLCHECK,
                (&raw const no_crl_check).cast(),
            )
            .map_err(|e| e.with_tls(TlsFailure::Settings))?;
        }
        Ok(())
    }

    /// Gives this handle the shared TLS `context` (libldap takes a reference
    /// of the handle's own, dropped when the handle is freed), and sets the
    /// TLS options that libldap reads from the handle, not from the context,
    /// when it connects (tls2.c, tls_g.c): `REQUIRE_CERT` (whether the host
    /// name is checked; the context's copy, equal to it, decides whether the
    /// chain is), `REQUIRE_SAN`, and the public key pin (cleared). A new
    /// handle inherits these from the global options, i.e. from
    /// `LDAPTLS_REQCERT` and the like.
    fn use_tls_context(
        &mut self,
        context: &TlsContext,
        require_cert: RequireCert,
    ) -> Result<(), LdapError> {
        let require_cert = require_cert.raw();
        let require_san: c_int = sys::LDAP_OPT_X_TLS_TRY;
        let options: [(c_int, *const c_void); 4] = [
            (
                sys::LDAP_OPT_X_TLS_REQUIRE_CERT,
                (&raw const require_cert).cast(),
            ),
            (
                sys::LDAP_OPT_X_TLS_REQUIRE_SAN,
                (&raw const require_san).cast(),
            ),
            (sys::LDAP_OPT_X_TLS_PEERKEY_HASH, ptr::null()),
            // A `tls_ctx *`, kept alive by the caller's `Arc` for the call.
            (sys::LDAP_OPT_X_TLS_CTX, context.ptr.cast_const()),
        ];
        for (option, value) in options {
            self.set(option, value)
                .map_err(|e| e.with_tls(TlsFailure::Settings))?;
        }
        Ok(())
    }

    /// `ldap_connect`: TCP connect and, for `ldaps://`, the TLS handshake.
    fn connect_now(
        &mut self,
        connect_timeout: Duration,
        backend: TlsBackend,
    ) -> Result<(), LdapError> {
        self.clear_diagnostic()?;
        let started = Instant::now();
        // SAFETY: `self.ld` is our live handle; ldap_connect opens its default
        // connection, bounded by the handle's network timeout.
        let rc = unsafe { sys::ldap_connect(self.ld) };
        // libldap's own clock starts a little later and rounds to
        // milliseconds: allow 10%.
        let timed_out = started.elapsed() >= connect_timeout.mul_f64(0.9);
        check(self.ld, Ret::Code(rc))
            .map_err(|e| classify_tls_error(e, TlsStage::Ldaps { timed_out }, backend))
    }

    /// `ldap_start_tls_s`: the StartTLS request, then the handshake.
    fn start_tls(&mut self, backend: TlsBackend) -> Result<(), LdapError> {
        self.clear_diagnostic()?;
        // SAFETY: `self.ld` is our live handle; NULL control lists are allowed.
        let rc = unsafe { sys::ldap_start_tls_s(self.ld, ptr::null_mut(), ptr::null_mut()) };
        check(self.ld, Ret::Code(rc))
            .map_err(|e| classify_tls_error(e, TlsStage::StartTls, backend))
    }

    /// The default connection has a TLS layer.
    /// The server certificate this connection's TLS layer received (DER), or None without TLS.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        let mut der = sys::berval {
            bv_len: 0,
            bv_val: ptr::null_mut(),
        };
        // SAFETY: `self.ld` is our live handle; for this option libldap writes a berval whose
        // `bv_val` it allocated, which `LdapMem` frees.
        let status = unsafe {
            sys::ldap_get_option(self.ld, sys::LDAP_OPT_X_TLS_PEERCERT, (&raw mut der).cast())
        };
        let owned = LdapMem { ptr: der.bv_val };
        if status != sys::LDAP_OPT_SUCCESS || owned.ptr.is_null() {
            return None;
        }
        let len = usize::try_from(der.bv_len).ok()?;
        // SAFETY: libldap wrote `bv_len` bytes at `bv_val`, alive until `owned` drops.
        let bytes = unsafe { std::slice::from_raw_parts(owned.ptr.cast::<u8>(), len) };
        Some(bytes.to_vec())
    }

    fn tls_in_place(&self) -> bool {
        // SAFETY: `self.ld` is our live handle; ldap_tls_inplace only reads it.
        unsafe { sys::ldap_tls_inplace(self.ld) != 0 }
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

    /// A SASL bind with `mechanism` (`EXTERNAL`, `GSSAPI`), acting as
    /// `authz_id` when it is not empty. The credentials come from outside:
    /// the TLS client certificate (EXTERNAL) or Kerberos (GSSAPI: the client
    /// keytab or credential cache of the environment). The server's host name
    /// is not reverse-resolved (`LDAP_OPT_X_SASL_NOCANON`), so the service
    /// principal is built from the host name in the URL.
    pub fn sasl_bind(&mut self, mechanism: &str, authz_id: &str) -> Result<(), LdapError> {
        let c_mechanism = c_string(mechanism, ResultCode::PARAM_ERROR, "SASL mechanism")?;
        let c_authz = c_string(authz_id, ResultCode::PARAM_ERROR, "SASL authorization id")?;
        self.set(sys::LDAP_OPT_X_SASL_NOCANON, opt_on())?;
        self.clear_diagnostic()?;
        // SAFETY: `self.ld` is our live handle; `c_mechanism` is NUL-terminated;
        // a NULL DN and NULL controls are allowed; `sasl_interact` only reads
        // `defaults`, which points at `c_authz`, alive until the call returns.
        let rc = unsafe {
            sys::ldap_sasl_interactive_bind_s(
                self.ld,
                ptr::null(),
                c_mechanism.as_ptr(),
                ptr::null_mut(),
                ptr::null_mut(),
                sys::LDAP_SASL_QUIET,
                Some(sasl_interact),
                c_authz.as_ptr().cast_mut().cast::<c_void>(),
            )
        };
        check(self.ld, Ret::Code(rc))
    }

    /// Searches and returns the DNs of the entries found (references are skipped). On
    /// sizeLimitExceeded the entries already received are returned: callers that only need to
    /// know 0, 1 or more pass a small limit. `size_limit` 0 means no limit.
    pub fn search_dns(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        size_limit: i32,
    ) -> Result<Vec<String>, LdapError> {
        let result = self.search(base, scope, filter, sys::LDAP_NO_ATTRS, size_limit)?;
        let mut dns = Vec::new();
        for entry in self.entries(&result) {
            // SAFETY: `entry` is an entry of our live result chain; the DN string returned is
            // ours and is freed by `LdapMem`.
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
        }
        Ok(dns)
    }

    /// Searches and returns every value of `attribute` in the entries found (e.g. the
    /// `memberOf` values of one user entry); values that are not UTF-8 are skipped.
    pub fn search_values(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attribute: &str,
    ) -> Result<Vec<String>, LdapError> {
        let c_attr = c_string(attribute, ResultCode::PARAM_ERROR, "attribute")?;
        let result = self.search(base, scope, filter, &c_attr, 0)?;
        let mut values = Vec::new();
        for entry in self.entries(&result) {
            // SAFETY: `entry` is an entry of our live result chain and `c_attr` a valid
            // string; the array returned (or NULL) is owned by `Values`, which frees it.
            let list = Values {
                ptr: unsafe { sys::ldap_get_values_len(self.ld, entry, c_attr.as_ptr()) },
            };
            values.extend(
                list.iter()
                    .filter_map(|v| String::from_utf8(v.to_vec()).ok()),
            );
        }
        Ok(values)
    }

    /// One synchronous search asking for one attribute (or none: `LDAP_NO_ATTRS`).
    fn search(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attribute: &CStr,
        size_limit: i32,
    ) -> Result<Message, LdapError> {
        let c_base = c_string(base, ResultCode::PARAM_ERROR, "search base")?;
        let c_filter = c_string(filter, ResultCode::FILTER_ERROR, "search filter")?;
        // libldap only reads the attribute list; the cast to *mut is for the
        // C prototype.
        let mut attrs: [*mut c_char; 2] = [attribute.as_ptr().cast_mut(), ptr::null_mut()];
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
        Ok(result)
    }

    /// The entries of a result chain, skipping references.
    fn entries<'a>(
        &'a self,
        result: &'a Message,
    ) -> impl Iterator<Item = *mut sys::LDAPMessage> + 'a {
        // SAFETY: `result.ptr` is a live chain of this handle (or NULL, which yields NULL);
        // entries stay valid while `result` lives.
        let first = unsafe { sys::ldap_first_entry(self.ld, result.ptr) };
        std::iter::successors((!first.is_null()).then_some(first), move |entry| {
            // SAFETY: `entry` belongs to the live chain; returns the next entry or NULL.
            let next = unsafe { sys::ldap_next_entry(self.ld, *entry) };
            (!next.is_null()).then_some(next)
        })
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

/// The SASL interaction callback: answers the authorization-id question with
/// the string `defaults` points at, and any other question with the
/// mechanism's own default (or nothing). Never prompts; a panic becomes an
/// error code instead of unwinding into C.
unsafe extern "C" fn sasl_interact(
    _ld: *mut sys::LDAP,
    _flags: c_uint,
    defaults: *mut c_void,
    interact: *mut c_void,
) -> c_int {
    let answer = std::panic::catch_unwind(|| {
        let authz = defaults.cast_const().cast::<c_char>();
        let mut item = interact.cast::<sys::sasl_interact_t>();
        loop {
            // SAFETY: libldap passes an array of sasl_interact_t ending with
            // SASL_CB_LIST_END, which we walk one entry at a time.
            let question = unsafe { &mut *item };
            if question.id == sys::SASL_CB_LIST_END {
                return sys::LDAP_SUCCESS;
            }
            let text = match question.id {
                sys::SASL_CB_USER => authz,
                _ if question.defresult.is_null() => c"".as_ptr(),
                _ => question.defresult,
            };
            // SAFETY: `text` is NUL-terminated: `c_authz` of `sasl_bind`, a
            // static, or the mechanism's default; all outlive the bind call.
            let len = unsafe { CStr::from_ptr(text) }.to_bytes().len();
            question.result = text.cast::<c_void>();
            question.len = c_uint::try_from(len).unwrap_or(0);
            // SAFETY: not past the end: this entry was not the terminator.
            item = unsafe { item.add(1) };
        }
    });
    answer.unwrap_or(sys::LDAP_OTHER)
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
        let e =
            Connection::open("ldap://127.0.0.1:1/\0x", &t, &TlsSettings::default()).unwrap_err();
        assert_eq!(e.code, ResultCode::PARAM_ERROR);
        let mut c = Connection::open("ldap://127.0.0.1:1/", &t, &TlsSettings::default()).unwrap();
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
            Connection::open("  ", &t, &TlsSettings::default())
                .unwrap_err()
                .code,
            ResultCode::PARAM_ERROR
        );
        assert_eq!(
            Connection::open("notaurl://x", &t, &TlsSettings::default())
                .unwrap_err()
                .code,
            ResultCode::PARAM_ERROR
        );
        let zero = Timeouts {
            connect: Duration::ZERO,
            operation: ok,
        };
        assert_eq!(
            Connection::open("ldap://127.0.0.1/", &zero, &TlsSettings::default())
                .unwrap_err()
                .code,
            ResultCode::PARAM_ERROR
        );
        let huge = Timeouts {
            connect: Duration::MAX,
            operation: Duration::MAX,
        };
        Connection::open("ldap://127.0.0.1/", &huge, &TlsSettings::default())
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
        let mut c = Connection::open("ldap://127.0.0.1:1/", &t, &TlsSettings::default()).unwrap();
        let e = c
            .simple_bind("uid=alice,dc=example,dc=test", b"")
            .unwrap_err();
        assert_eq!(e.code, ResultCode::PARAM_ERROR);
        assert!(!e.is_transport());
    }

    #[test]
    fn tls_classification_and_display() {
        setup();
        let gnutls = TlsBackend::GnuTls;
        let refused = |text: &str| LdapError::new(ResultCode::SERVER_DOWN, text.as_bytes());

        let e = classify_tls_error(
            refused("(unknown error code)"),
            TlsStage::Ldaps { timed_out: false },
            gnutls,
        );
        assert_eq!(e.tls_failure(), Some(TlsFailure::CertificateRejected));
        assert!(e.is_tls() && e.is_transport());
        assert!(e
            .to_string()
            .starts_with("TLS: certificate verify failed (the server certificate"));
        assert!(e
            .to_string()
            .ends_with("Can't contact LDAP server (-1): (unknown error code)"));

        // A connection refused is not a TLS failure.
        let e = classify_tls_error(
            refused("Error in the push function."),
            TlsStage::Ldaps { timed_out: false },
            gnutls,
        );
        assert!(!e.is_tls() && e.is_transport());

        let e = classify_tls_error(
            refused("The TLS connection was non-properly terminated."),
            TlsStage::Ldaps { timed_out: false },
            gnutls,
        );
        assert_eq!(e.tls_failure(), Some(TlsFailure::Handshake));

        // A stalled ldaps connect: SERVER_DOWN without text after the timeout.
        let e = classify_tls_error(refused(""), TlsStage::Ldaps { timed_out: true }, gnutls);
        assert!(e.is_timeout() && e.is_transport() && !e.is_tls());
        let e = classify_tls_error(refused(""), TlsStage::Ldaps { timed_out: false }, gnutls);
        assert_eq!(e.code, ResultCode::SERVER_DOWN);

        // The server's own answer to StartTLS: transport-class whatever the code.
        let e = classify_tls_error(
            LdapError::new(
                ResultCode::PROTOCOL_ERROR,
                &b"unsupported extended operation"[..],
            ),
            TlsStage::StartTls,
            gnutls,
        );
        assert_eq!(e.tls_failure(), Some(TlsFailure::StartTlsRefused));
        assert!(e.is_transport());
        assert_eq!(
            e.to_string(),
            "TLS: the server refused StartTLS: Protocol error (2): unsupported extended operation"
        );

        let e = classify_tls_error(
            LdapError::new(
                ResultCode::CONNECT_ERROR,
                &b"error:0A000086:SSL routines::certificate verify failed"[..],
            ),
            TlsStage::StartTls,
            TlsBackend::OpenSsl,
        );
        assert_eq!(e.tls_failure(), Some(TlsFailure::CertificateRejected));

        let e = classify_tls_error(
            LdapError::new(ResultCode::TIMEOUT, Vec::new()),
            TlsStage::StartTls,
            gnutls,
        );
        assert!(e.is_timeout() && !e.is_tls() && !e.diagnostic.is_empty());

        // Bad local settings are the same on every server: not transport.
        let e = LdapError::tls_settings(ResultCode::PARAM_ERROR, "TLS CA path /x: gone");
        assert!(e.is_tls() && !e.is_transport());
        assert_eq!(
            e.to_string(),
            "TLS settings unusable: Bad parameter to an ldap routine (-9): TLS CA path /x: gone"
        );
    }

    #[test]
    fn ldaps_urls_are_recognised() {
        assert!(has_ldaps_url("ldaps://dc1.example.com"));
        assert!(has_ldaps_url("LDAPS://dc1"));
        assert!(has_ldaps_url("ldap://a ldaps://b:636"));
        assert!(has_ldaps_url("ldap://a,ldaps://b"));
        assert!(!has_ldaps_url("ldap://ldaps.example.com"));
        assert!(!has_ldaps_url("ldapi://%2Frun%2Fldapi"));
        assert!(!has_ldaps_url("ldaps:/"));
    }

    #[test]
    fn bad_tls_settings_fail_open_without_io() {
        setup();
        let t = Timeouts {
            connect: Duration::from_secs(1),
            operation: Duration::from_secs(1),
        };
        let missing = TlsSettings {
            ca_path: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..TlsSettings::default()
        };
        let e = Connection::open("ldaps://127.0.0.1:1/", &t, &missing).unwrap_err();
        assert_eq!(e.tls_failure(), Some(TlsFailure::Settings));
        assert!(!e.is_transport());
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");

        let half = TlsSettings {
            starttls: true,
            cert_path: Some(PathBuf::from("/etc/hostname")),
            ..TlsSettings::default()
        };
        let e = Connection::open("ldap://127.0.0.1:1/", &t, &half).unwrap_err();
        assert_eq!(e.tls_failure(), Some(TlsFailure::Settings));

        // Without ldaps:// or StartTLS the TLS settings are not used at all.
        Connection::open("ldap://127.0.0.1:1/", &t, &missing).unwrap();

        // ldaps:// to a closed port: a plain connection failure, at once.
        let started = Instant::now();
        let e = Connection::open("ldaps://127.0.0.1:1/", &t, &TlsSettings::default()).unwrap_err();
        assert_eq!(e.code, ResultCode::SERVER_DOWN, "{e}");
        assert!(!e.is_tls() && e.is_transport(), "{e}");
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn set_timeouts_refuses_zero() {
        setup();
        let t = Timeouts {
            connect: Duration::from_secs(1),
            operation: Duration::from_secs(1),
        };
        let mut c = Connection::open("ldap://127.0.0.1:1/", &t, &TlsSettings::default()).unwrap();
        let zero = Timeouts {
            connect: Duration::from_secs(1),
            operation: Duration::ZERO,
        };
        assert_eq!(
            c.set_timeouts(&zero).unwrap_err().code,
            ResultCode::PARAM_ERROR
        );
        let short = Timeouts {
            connect: Duration::from_millis(100),
            operation: Duration::from_millis(200),
        };
        c.set_timeouts(&short).unwrap();
        assert_eq!(c.operation_timeout.tv_usec, 200_000);
    }

    #[test]
    fn connection_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Connection>();
    }

    #[test]
    fn tls_settings_are_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TlsSettings>();
    }

    #[test]
    fn tls_settings_compare_and_print_configuration_only() {
        setup();
        let t = Timeouts {
            connect: Duration::from_secs(1),
            operation: Duration::from_secs(1),
        };
        let ca = std::env::temp_dir().join(format!("valkeyauth-unit-ca-{}", std::process::id()));
        std::fs::write(&ca, b"not a certificate\n").unwrap();
        let tls = TlsSettings {
            ca_path: Some(ca.clone()),
            ..TlsSettings::default()
        };
        // A build (GnuTLS: of a context that trusts nothing) is recorded in
        // the cache...
        Connection::open("ldaps://127.0.0.1:1/", &t, &tls).unwrap_err();
        assert_eq!(tls.tls_context_builds(), 1);
        // ...which `==` and `Debug` ignore, and clones share.
        let fresh = TlsSettings {
            ca_path: Some(ca.clone()),
            ..TlsSettings::default()
        };
        assert_eq!(fresh.tls_context_builds(), 0);
        assert_eq!(tls, fresh);
        assert_eq!(format!("{tls:?}"), format!("{fresh:?}"));
        assert!(!format!("{tls:?}").contains("context"));
        assert_eq!(tls.clone().tls_context_builds(), 1);
        let mut other = tls.clone();
        other.require_cert = RequireCert::Never;
        assert_ne!(tls, other);
        std::fs::remove_file(&ca).unwrap();
    }
}

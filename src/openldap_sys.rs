//! The project's in-tree `openldap-sys` layer: hand-written declarations of the
//! parts of OpenLDAP's client library (libldap, liblber) that `ldap.rs` calls.
//!
//! Why hand-written: crates.io has no maintained `openldap-sys` binding, the
//! pure-Rust `ldap3` crate needs the tokio runtime, and bindgen would pull
//! libclang into the build for about a dozen functions. Linking is set up by
//! `build.rs` (pkg-config `ldap` and `lber`, OpenLDAP >= 2.5).
//!
//! Rules for this file: declarations and constants only, no logic; only what we
//! call; grouped by the C header they come from; values copied from the 2.5
//! headers (`/usr/include/ldap.h`, `lber.h`, `lber_types.h`), which 2.6 keeps.
//! See `vendor-notes/libldap.md`.

// Names follow the C headers.
#![allow(non_camel_case_types, clippy::upper_case_acronyms)]

use std::ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_void};

// ---------------------------------------------------------------------------
// <sys/time.h>
// ---------------------------------------------------------------------------

/// `struct timeval`. `time_t` and `suseconds_t` are both `long` on the Linux
/// targets we build for (LP64 glibc and musl).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct timeval {
    pub tv_sec: c_long,
    pub tv_usec: c_long,
}

// ---------------------------------------------------------------------------
// <lber_types.h>, <lber.h>
// ---------------------------------------------------------------------------

/// `ber_len_t`: `unsigned long` (`LBER_LEN_T` is `long`).
pub type ber_len_t = c_ulong;

/// `struct berval`: a length-delimited octet string.
#[repr(C)]
#[derive(Debug)]
pub struct berval {
    pub bv_len: ber_len_t,
    pub bv_val: *mut c_char,
}

extern "C" {
    /// The object whose address is `LBER_OPT_ON` / `LDAP_OPT_ON`. Boolean
    /// options test only whether the pointer passed is NULL (off) or not (on).
    pub static ber_pvt_opt_on: c_char;
}

// ---------------------------------------------------------------------------
// <ldap.h>
// ---------------------------------------------------------------------------

/// Opaque session handle (`LDAP *`).
pub enum LDAP {}
/// Opaque result chain (`LDAPMessage *`).
pub enum LDAPMessage {}
/// Opaque control (`LDAPControl *`); we only ever pass NULL lists.
pub enum LDAPControl {}

pub const LDAP_VERSION3: c_int = 3;

/// `LDAP_NO_ATTRS`: request no attributes.
pub const LDAP_NO_ATTRS: &std::ffi::CStr = c"1.1";

/// `ldap_sasl_interactive_bind_s` flag: never prompt; unanswered questions
/// go to the interaction callback.
pub const LDAP_SASL_QUIET: c_uint = 2;

/// `LDAP_SASL_INTERACT_PROC`: called with a `sasl_interact_t` array (Cyrus
/// SASL) to fill in; `defaults` is the pointer given to the bind call.
pub type LDAP_SASL_INTERACT_PROC = unsafe extern "C" fn(
    ld: *mut LDAP,
    flags: c_uint,
    defaults: *mut c_void,
    interact: *mut c_void,
) -> c_int;

/// `LDAP_SASL_SIMPLE`: the NULL mechanism selects a simple bind.
pub const LDAP_SASL_SIMPLE: *const c_char = std::ptr::null();

// Options (ldap_get_option(3)).
pub const LDAP_OPT_REFERRALS: c_int = 0x0008;
pub const LDAP_OPT_RESTART: c_int = 0x0009;
pub const LDAP_OPT_PROTOCOL_VERSION: c_int = 0x0011;
pub const LDAP_OPT_DIAGNOSTIC_MESSAGE: c_int = 0x0032;
pub const LDAP_OPT_TIMEOUT: c_int = 0x5002;
pub const LDAP_OPT_NETWORK_TIMEOUT: c_int = 0x5005;
pub const LDAP_OPT_CONNECT_ASYNC: c_int = 0x5010;
pub const LDAP_OPT_TCP_USER_TIMEOUT: c_int = 0x5015;
pub const LDAP_OPT_X_KEEPALIVE_IDLE: c_int = 0x6300;
pub const LDAP_OPT_X_KEEPALIVE_PROBES: c_int = 0x6301;
pub const LDAP_OPT_X_KEEPALIVE_INTERVAL: c_int = 0x6302;

// TLS options (ldap_get_option(3), "TLS OPTIONS"). Strings are `char *`
// (NULL clears), levels and versions `int *`, in-memory PEM/DER `struct
// berval *` (NULL clears).
/// The handle's TLS context (`tls_ctx *`: an OpenSSL `SSL_CTX *`, or
/// libldap's own structure holding the GnuTLS credentials and priority).
/// libldap reference-counts it (tls2.c): `ldap_set_option` takes a reference
/// of its own (and drops the handle's previous one); `ldap_get_option` (out
/// value `void **`) hands out a new reference, which the caller must drop
/// with `ldap_pvt_tls_ctx_free`.
pub const LDAP_OPT_X_TLS_CTX: c_int = 0x6001;
pub const LDAP_OPT_X_TLS_CACERTFILE: c_int = 0x6002;
pub const LDAP_OPT_X_TLS_CACERTDIR: c_int = 0x6003;
pub const LDAP_OPT_X_TLS_CERTFILE: c_int = 0x6004;
pub const LDAP_OPT_X_TLS_KEYFILE: c_int = 0x6005;
pub const LDAP_OPT_X_TLS_REQUIRE_CERT: c_int = 0x6006;
pub const LDAP_OPT_X_TLS_PROTOCOL_MIN: c_int = 0x6007;
pub const LDAP_OPT_X_TLS_CIPHER_SUITE: c_int = 0x6008;
/// OpenSSL builds only: `ldap_set_option` refuses it when libldap uses GnuTLS.
pub const LDAP_OPT_X_TLS_CRLCHECK: c_int = 0x600b;
/// `int *`: 0 builds a client context, non-zero a server context.
pub const LDAP_OPT_X_TLS_NEWCTX: c_int = 0x600f;
pub const LDAP_OPT_X_TLS_CRLFILE: c_int = 0x6010;
/// Read-only, `char **`: "GnuTLS" or "OpenSSL" (a copy to free with
/// `ldap_memfree`).
pub const LDAP_OPT_X_TLS_PACKAGE: c_int = 0x6011;
pub const LDAP_OPT_X_TLS_ECNAME: c_int = 0x6012;
pub const LDAP_OPT_X_TLS_CACERT: c_int = 0x6016;
pub const LDAP_OPT_X_TLS_CERT: c_int = 0x6017;
pub const LDAP_OPT_X_TLS_KEY: c_int = 0x6018;
pub const LDAP_OPT_X_TLS_PEERKEY_HASH: c_int = 0x6019;
/// Read-only: the server certificate of the default connection, DER, in a `berval` whose
/// `bv_val` the caller frees with `ldap_memfree`.
pub const LDAP_OPT_X_TLS_PEERCERT: c_int = 0x6015;
pub const LDAP_OPT_X_TLS_REQUIRE_SAN: c_int = 0x601a;
pub const LDAP_OPT_X_TLS_PROTOCOL_MAX: c_int = 0x601b;

// SASL options (ldap_get_option(3), "SASL OPTIONS").
/// Boolean: do not canonicalise (reverse-resolve) the server's host name when
/// building the Kerberos service principal.
pub const LDAP_OPT_X_SASL_NOCANON: c_int = 0x610b;

// Levels for LDAP_OPT_X_TLS_REQUIRE_CERT and LDAP_OPT_X_TLS_REQUIRE_SAN.
pub const LDAP_OPT_X_TLS_NEVER: c_int = 0;
pub const LDAP_OPT_X_TLS_DEMAND: c_int = 2;
pub const LDAP_OPT_X_TLS_ALLOW: c_int = 3;
pub const LDAP_OPT_X_TLS_TRY: c_int = 4;

/// LDAP_OPT_X_TLS_CRLCHECK: no CRL checks.
pub const LDAP_OPT_X_TLS_CRL_NONE: c_int = 0;

// Values for LDAP_OPT_X_TLS_PROTOCOL_MIN/MAX: `(major << 8) + minor`.
pub const LDAP_OPT_X_TLS_PROTOCOL_TLS1_2: c_int = (3 << 8) + 3;
pub const LDAP_OPT_X_TLS_PROTOCOL_TLS1_3: c_int = (3 << 8) + 4;

/// `ldap_set_option` / `ldap_get_option` return values.
pub const LDAP_OPT_SUCCESS: c_int = 0;
/// `LDAP_OPT_OFF`: boolean options are switched off by a NULL `invalue`.
pub const LDAP_OPT_OFF: *const c_void = std::ptr::null();

/// `ldap_X509dn2bv` flags: an RFC 4514 string.
pub const LDAP_DN_FORMAT_LDAPV3: c_uint = 0x0010;

// Search scopes.
pub const LDAP_SCOPE_BASE: c_int = 0x0000;
pub const LDAP_SCOPE_ONELEVEL: c_int = 0x0001;
pub const LDAP_SCOPE_SUBTREE: c_int = 0x0002;

// Result codes sent by servers (RFC 4511).
pub const LDAP_SUCCESS: c_int = 0x00;
pub const LDAP_OPERATIONS_ERROR: c_int = 0x01;
pub const LDAP_PROTOCOL_ERROR: c_int = 0x02;
pub const LDAP_TIMELIMIT_EXCEEDED: c_int = 0x03;
pub const LDAP_SIZELIMIT_EXCEEDED: c_int = 0x04;
pub const LDAP_AUTH_METHOD_NOT_SUPPORTED: c_int = 0x07;
pub const LDAP_STRONG_AUTH_REQUIRED: c_int = 0x08;
pub const LDAP_REFERRAL: c_int = 0x0a;
pub const LDAP_ADMINLIMIT_EXCEEDED: c_int = 0x0b;
pub const LDAP_CONFIDENTIALITY_REQUIRED: c_int = 0x0d;
pub const LDAP_CONSTRAINT_VIOLATION: c_int = 0x13;
pub const LDAP_NO_SUCH_OBJECT: c_int = 0x20;
pub const LDAP_INVALID_DN_SYNTAX: c_int = 0x22;
pub const LDAP_INAPPROPRIATE_AUTH: c_int = 0x30;
pub const LDAP_INVALID_CREDENTIALS: c_int = 0x31;
pub const LDAP_INSUFFICIENT_ACCESS: c_int = 0x32;
pub const LDAP_BUSY: c_int = 0x33;
pub const LDAP_UNAVAILABLE: c_int = 0x34;
pub const LDAP_UNWILLING_TO_PERFORM: c_int = 0x35;
pub const LDAP_OTHER: c_int = 0x50;

// Result codes made up by the library itself (API errors, all negative).
pub const LDAP_SERVER_DOWN: c_int = -1;
pub const LDAP_LOCAL_ERROR: c_int = -2;
pub const LDAP_ENCODING_ERROR: c_int = -3;
pub const LDAP_DECODING_ERROR: c_int = -4;
pub const LDAP_TIMEOUT: c_int = -5;
pub const LDAP_AUTH_UNKNOWN: c_int = -6;
pub const LDAP_FILTER_ERROR: c_int = -7;
pub const LDAP_USER_CANCELLED: c_int = -8;
pub const LDAP_PARAM_ERROR: c_int = -9;
pub const LDAP_NO_MEMORY: c_int = -10;
pub const LDAP_CONNECT_ERROR: c_int = -11;
pub const LDAP_NOT_SUPPORTED: c_int = -12;
pub const LDAP_X_CONNECTING: c_int = -18;

extern "C" {
    // init.c / open.c
    /// A handle with the global options and no URI; no I/O.
    pub fn ldap_create(ldp: *mut *mut LDAP) -> c_int;
    pub fn ldap_initialize(ldp: *mut *mut LDAP, url: *const c_char) -> c_int;
    /// Opens the default connection now (2.5+), including the TLS handshake
    /// of an `ldaps://` URL.
    pub fn ldap_connect(ld: *mut LDAP) -> c_int;
    pub fn ldap_start_tls_s(
        ld: *mut LDAP,
        serverctrls: *mut *mut LDAPControl,
        clientctrls: *mut *mut LDAPControl,
    ) -> c_int;

    // tls2.c
    /// 1 if the default connection has a TLS layer installed, else 0.
    pub fn ldap_tls_inplace(ld: *mut LDAP) -> c_int;

    // options.c
    pub fn ldap_get_option(ld: *mut LDAP, option: c_int, outvalue: *mut c_void) -> c_int;
    pub fn ldap_set_option(ld: *mut LDAP, option: c_int, invalue: *const c_void) -> c_int;

    // sasl.c
    /// A SASL bind that runs the whole exchange; `proc` answers the
    /// mechanism's questions (with `LDAP_SASL_QUIET`, only through `proc`).
    pub fn ldap_sasl_interactive_bind_s(
        ld: *mut LDAP,
        dn: *const c_char,
        mechanism: *const c_char,
        serverctrls: *mut *mut LDAPControl,
        clientctrls: *mut *mut LDAPControl,
        flags: c_uint,
        proc_: Option<LDAP_SASL_INTERACT_PROC>,
        defaults: *mut c_void,
    ) -> c_int;
    pub fn ldap_sasl_bind_s(
        ld: *mut LDAP,
        dn: *const c_char,
        mechanism: *const c_char,
        cred: *mut berval,
        serverctrls: *mut *mut LDAPControl,
        clientctrls: *mut *mut LDAPControl,
        servercredp: *mut *mut berval,
    ) -> c_int;

    // search.c
    pub fn ldap_search_ext_s(
        ld: *mut LDAP,
        base: *const c_char,
        scope: c_int,
        filter: *const c_char,
        attrs: *mut *mut c_char,
        attrsonly: c_int,
        serverctrls: *mut *mut LDAPControl,
        clientctrls: *mut *mut LDAPControl,
        timeout: *mut timeval,
        sizelimit: c_int,
        res: *mut *mut LDAPMessage,
    ) -> c_int;

    // getentry.c
    pub fn ldap_first_entry(ld: *mut LDAP, chain: *mut LDAPMessage) -> *mut LDAPMessage;
    pub fn ldap_next_entry(ld: *mut LDAP, entry: *mut LDAPMessage) -> *mut LDAPMessage;

    // getdn.c
    pub fn ldap_get_dn(ld: *mut LDAP, entry: *mut LDAPMessage) -> *mut c_char;
    /// Turns a DER X.509 Name (`x509_name` points at a `berval` holding it) into a string DN
    /// in `dn`, whose `bv_val` the caller frees with `ldap_memfree`.
    pub fn ldap_X509dn2bv(
        x509_name: *mut c_void,
        dn: *mut berval,
        func: *mut c_void,
        flags: c_uint,
    ) -> c_int;

    /// Parses `str` as a DN; on success `dn` holds a structure the caller frees with
    /// `ldap_dnfree`.
    pub fn ldap_str2dn(str: *const c_char, dn: *mut *mut c_void, flags: c_uint) -> c_int;
    pub fn ldap_dnfree(dn: *mut c_void);

    // getvalues.c
    pub fn ldap_get_values_len(
        ld: *mut LDAP,
        entry: *mut LDAPMessage,
        target: *const c_char,
    ) -> *mut *mut berval;
    pub fn ldap_value_free_len(vals: *mut *mut berval);

    // result.c / free.c
    pub fn ldap_msgfree(lm: *mut LDAPMessage) -> c_int;
    pub fn ldap_memfree(p: *mut c_void);

    // error.c
    pub fn ldap_err2string(err: c_int) -> *mut c_char;

    // unbind.c
    pub fn ldap_unbind_ext(
        ld: *mut LDAP,
        serverctrls: *mut *mut LDAPControl,
        clientctrls: *mut *mut LDAPControl,
    ) -> c_int;
}

// ---------------------------------------------------------------------------
// <sasl/sasl.h> (Cyrus SASL, which Debian's libldap uses; values from 2.1.28)
// ---------------------------------------------------------------------------

/// One question of a SASL mechanism (`sasl_interact_t`); an array of them
/// ends with `id == SASL_CB_LIST_END`. The answer (`result`, `len`) must stay
/// valid until the bind call returns.
#[repr(C)]
#[derive(Debug)]
pub struct sasl_interact_t {
    pub id: c_ulong,
    pub challenge: *const c_char,
    pub prompt: *const c_char,
    pub defresult: *const c_char,
    pub result: *const c_void,
    pub len: c_uint,
}

pub const SASL_CB_LIST_END: c_ulong = 0;
/// The authorization identity to act as (empty: the authenticated one).
pub const SASL_CB_USER: c_ulong = 0x4001;

// ---------------------------------------------------------------------------
// <ldap_pvt.h>: OpenLDAP's private header (not installed by libldap-dev)
// ---------------------------------------------------------------------------

extern "C" {
    // tls2.c
    /// Drops one reference to a TLS context (`LDAP_OPT_X_TLS_CTX`); frees it
    /// with the last one. The only way to release the reference that
    /// `ldap_get_option(LDAP_OPT_X_TLS_CTX)` hands out. Not in the installed
    /// headers, but exported: `nm -D libldap-2.5.so.0` lists
    /// `ldap_pvt_tls_ctx_free@@OPENLDAP_2.5`, and 2.6's `ldap.map` exports it
    /// (`OPENLDAP_2.200`). Prototype from `include/ldap_pvt.h`.
    pub fn ldap_pvt_tls_ctx_free(ctx: *mut c_void);
}

//! TLS of the libldap layer (`valkeyauth::ldap`), against private slapds with certificates made
//! by Debian's `openssl` at test time. No Valkey involved.
//!
//! Covers: `ldaps://` and StartTLS with a CA file and a CA directory; untrusted certificates
//! and host names under each `RequireCert` level; StartTLS refused by a server without TLS (and
//! no bind sent); client certificates; the minimum TLS version; silent servers (bounded by the
//! timeouts); `set_timeouts` against a frozen server; in a child process started with
//! `LDAPTLS_*` variables, that the environment cannot weaken or widen our settings; and that
//! one `TlsSettings` builds its TLS context once and shares it (across opens, failed opens and
//! threads), builds it again when its files change, and never lends it to a changed clone.

mod common;

use common::pki::Pki;
use common::*;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread;
use std::time::{Duration, Instant};

use valkeyauth::ldap::{
    self, Connection, LdapError, RequireCert, ResultCode, Scope, Timeouts, TlsFailure, TlsSettings,
    TlsVersion,
};

fn setup() {
    static INIT: Once = Once::new();
    INIT.call_once(ldap::init_global);
}

fn timeouts(connect_ms: u64, operation_ms: u64) -> Timeouts {
    Timeouts {
        connect: Duration::from_millis(connect_ms),
        operation: Duration::from_millis(operation_ms),
    }
}

/// Generous: the servers are local, only the silent ones use up their timeouts.
fn normal() -> Timeouts {
    timeouts(5_000, 5_000)
}

// ============================================================================================
// Certificates
// ============================================================================================

// ============================================================================================
// Servers and clients
// ============================================================================================

/// slapd on ldap:// and ldaps:// with `cert` (a `Pki` name) and the CA for client
/// certificates, plus `extra` global lines.
fn tls_slapd(pki: &Pki, cert: &str, extra: &[&str]) -> Slapd {
    let mut b = Slapd::builder()
        .global(format!(
            "TLSCACertificateFile {}",
            pki.path("ca.pem").display()
        ))
        .global(format!(
            "TLSCertificateFile {}",
            pki.path(&format!("{cert}.pem")).display()
        ))
        .global(format!(
            "TLSCertificateKeyFile {}",
            pki.path(&format!("{cert}.key")).display()
        ))
        .ldaps();
    for line in extra {
        b = b.global(*line);
    }
    b.start()
}

fn trusting(path: PathBuf) -> TlsSettings {
    TlsSettings {
        ca_path: Some(path),
        ..TlsSettings::default()
    }
}

/// Opens `url` and binds as alice: the whole way a password goes.
fn open_and_bind(url: &str, tls: &TlsSettings) -> Result<(), LdapError> {
    let mut conn = Connection::open(url, &normal(), tls)?;
    conn.simple_bind(ALICE.dn, ALICE.password.as_bytes())
}

/// Asserts a TLS failure of the server (transport class) and that the server saw no bind.
#[track_caller]
fn assert_refused(result: Result<(), LdapError>, slapd: &Slapd, failure: TlsFailure) -> LdapError {
    let e = result.expect_err("the connection must be refused");
    assert_eq!(e.tls_failure(), Some(failure), "{e}");
    assert!(e.is_tls() && e.is_transport(), "{e}");
    assert_eq!(slapd.count_ops("BIND"), 0, "{:?}", slapd.ops("BIND"));
    e
}

/// `TLS established ... tls_proto=...` lines of the slapd log.
fn tls_sessions(slapd: &Slapd) -> Vec<String> {
    log_lines(slapd, "TLS established")
}

fn log_lines(slapd: &Slapd, needle: &str) -> Vec<String> {
    slapd
        .log()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Polls the slapd log (written asynchronously) until `tls_sessions` has `count` lines.
fn wait_tls_sessions(slapd: &Slapd, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sessions = tls_sessions(slapd);
        if sessions.len() >= count || Instant::now() >= deadline {
            return sessions;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

// ============================================================================================
// Tests
// ============================================================================================

#[test]
fn ldaps_with_ca_file_or_ca_directory() {
    setup();
    let pki = Pki::new();
    let slapd = tls_slapd(&pki, "server", &[]);
    let url = slapd.ldaps_url();

    open_and_bind(&url, &trusting(pki.path("ca.pem"))).expect("CA file");
    open_and_bind(&url, &trusting(pki.path("ca-dir"))).expect("CA directory");
    // A bundle: every certificate in it is trusted.
    let bundle = pki.path("bundle.pem");
    let mut both = fs::read(pki.path("rogue-ca.pem")).unwrap();
    both.extend(fs::read(pki.path("ca.pem")).unwrap());
    fs::write(&bundle, both).unwrap();
    open_and_bind(&url, &trusting(bundle)).expect("bundle with the CA second");

    // The handshake is eager: `open` alone establishes the TLS session.
    assert_eq!(wait_tls_sessions(&slapd, 3).len(), 3);
    let conn = Connection::open(&url, &normal(), &trusting(pki.path("ca.pem"))).unwrap();
    assert_eq!(wait_tls_sessions(&slapd, 4).len(), 4);
    drop(conn);
    assert_eq!(slapd.count_ops("BIND"), 3);
}

#[test]
fn untrusted_certificate_is_refused_unless_require_cert_allows() {
    setup();
    let pki = Pki::new();
    let slapd = tls_slapd(&pki, "rogue-server", &[]);
    let ldaps = slapd.ldaps_url();
    let with = |require_cert, starttls| TlsSettings {
        require_cert,
        starttls,
        ..trusting(pki.path("ca.pem"))
    };

    let e = assert_refused(
        open_and_bind(&ldaps, &with(RequireCert::Demand, false)),
        &slapd,
        TlsFailure::CertificateRejected,
    );
    assert!(
        e.to_string().starts_with("TLS: certificate verify failed"),
        "{e}"
    );
    println!("untrusted ldaps://, Demand: {e}");
    let e = assert_refused(
        open_and_bind(&slapd.url(), &with(RequireCert::Demand, true)),
        &slapd,
        TlsFailure::CertificateRejected,
    );
    println!("untrusted StartTLS, Demand: {e}");
    // Try ends the session on a bad certificate, like Demand.
    assert_refused(
        open_and_bind(&ldaps, &with(RequireCert::Try, false)),
        &slapd,
        TlsFailure::CertificateRejected,
    );
    // No CA path: the system store, which does not hold our test CAs.
    assert_refused(
        open_and_bind(&ldaps, &TlsSettings::default()),
        &slapd,
        TlsFailure::CertificateRejected,
    );

    // Each handle has its own TLS context: Allow and Never on one handle change nothing for
    // the next handle with Demand.
    open_and_bind(&ldaps, &with(RequireCert::Allow, false)).expect("Allow accepts it");
    open_and_bind(&ldaps, &with(RequireCert::Never, false)).expect("Never accepts it");
    open_and_bind(&slapd.url(), &with(RequireCert::Never, true)).expect("StartTLS, Never");
    assert_eq!(slapd.count_ops("BIND"), 3);
    let e = open_and_bind(&ldaps, &with(RequireCert::Demand, false)).unwrap_err();
    assert_eq!(e.tls_failure(), Some(TlsFailure::CertificateRejected));
    assert_eq!(slapd.count_ops("BIND"), 3);
}

#[test]
fn host_name_must_be_in_subject_alt_name() {
    setup();
    let pki = Pki::new();
    // Signed by our CA, subjectAltName IP:127.0.0.9, CN=127.0.0.1: libldap's default would
    // accept it by its CN; we check the subjectAltName only (REQUIRE_SAN try).
    let slapd = tls_slapd(&pki, "wrong-host", &[]);
    let with = |require_cert| TlsSettings {
        require_cert,
        ..trusting(pki.path("ca.pem"))
    };
    for level in [RequireCert::Demand, RequireCert::Try] {
        assert_refused(
            open_and_bind(&slapd.ldaps_url(), &with(level)),
            &slapd,
            TlsFailure::CertificateRejected,
        );
    }
    assert_refused(
        open_and_bind(
            &slapd.url(),
            &TlsSettings {
                starttls: true,
                ..with(RequireCert::Demand)
            },
        ),
        &slapd,
        TlsFailure::CertificateRejected,
    );
    // Allow checks the chain but not the host name; Never checks nothing.
    open_and_bind(&slapd.ldaps_url(), &with(RequireCert::Allow)).expect("Allow");
    open_and_bind(&slapd.ldaps_url(), &with(RequireCert::Never)).expect("Never");
}

#[test]
fn starttls_with_the_right_ca() {
    setup();
    let pki = Pki::new();
    let slapd = tls_slapd(&pki, "server", &[]);
    let tls = TlsSettings {
        starttls: true,
        ..trusting(pki.path("ca.pem"))
    };
    let mut conn = Connection::open(&slapd.url(), &normal(), &tls).unwrap();
    // StartTLS and the handshake happened in `open`, before anything else.
    assert_eq!(slapd.wait_ops("STARTTLS", 1, Duration::from_secs(5)), 1);
    assert_eq!(wait_tls_sessions(&slapd, 1).len(), 1);
    conn.simple_bind(ALICE.dn, ALICE.password.as_bytes())
        .unwrap();
    let dns = conn
        .search_dns(SUFFIX, Scope::Subtree, "(uid=bob)", 0)
        .unwrap();
    assert_eq!(dns, vec![BOB.dn.to_string()]);
    // slapd logs the bind's security strength factor: it went over TLS.
    let binds = log_lines(&slapd, &format!("BIND dn=\"{}\" mech=SIMPLE", ALICE.dn));
    assert_eq!(binds.len(), 1, "{}", slapd.log());
    assert!(!binds[0].ends_with(" ssf=0"), "{binds:?}");
}

#[test]
fn starttls_refused_by_a_server_without_tls_sends_no_bind() {
    setup();
    let slapd = Slapd::start_default();
    let tls = TlsSettings {
        starttls: true,
        require_cert: RequireCert::Never,
        ..TlsSettings::default()
    };
    let started = Instant::now();
    let e = Connection::open(&slapd.url(), &normal(), &tls).unwrap_err();
    println!("StartTLS refused: {e} after {:?}", started.elapsed());
    assert_eq!(e.tls_failure(), Some(TlsFailure::StartTlsRefused), "{e}");
    assert_eq!(e.code, ResultCode::PROTOCOL_ERROR, "{e}");
    assert!(e.is_transport() && e.is_tls());
    assert!(
        e.to_string()
            .starts_with("TLS: the server refused StartTLS: Protocol error (2)"),
        "{e}"
    );
    // The request reached the server, then nothing but the connection's close.
    assert_eq!(slapd.wait_ops("closed", 1, Duration::from_secs(5)), 1);
    assert_eq!(slapd.count_ops("EXT"), 1, "{}", slapd.log());
    assert_eq!(slapd.count_ops("BIND"), 0, "{}", slapd.log());
    assert_eq!(slapd.count_ops("SRCH"), 0, "{}", slapd.log());
}

#[test]
fn client_certificate_required_by_the_server() {
    setup();
    let pki = Pki::new();
    let slapd = tls_slapd(&pki, "server", &["TLSVerifyClient demand"]);
    let without = trusting(pki.path("ca.pem"));
    let with = TlsSettings {
        cert_path: Some(pki.path("client.pem")),
        key_path: Some(pki.path("client.key")),
        ..without.clone()
    };

    // With TLS 1.3 the server judges our certificate after our side of the handshake is done:
    // `open` may succeed, and then the first request fails. Either way: transport-class, and
    // the server saw no bind.
    for url in [slapd.ldaps_url(), slapd.url()] {
        let tls = TlsSettings {
            starttls: url.starts_with("ldap://"),
            ..without.clone()
        };
        let e = match Connection::open(&url, &normal(), &tls) {
            Err(e) => {
                println!("{url} without a client certificate: open failed: {e}");
                e
            }
            Ok(mut conn) => {
                let e = conn
                    .simple_bind(ALICE.dn, ALICE.password.as_bytes())
                    .unwrap_err();
                println!("{url} without a client certificate: open ok, bind failed: {e}");
                e
            }
        };
        assert!(e.is_transport(), "{e}");
    }
    assert_eq!(slapd.count_ops("BIND"), 0);

    open_and_bind(&slapd.ldaps_url(), &with).expect("ldaps with a client certificate");
    let starttls = TlsSettings {
        starttls: true,
        ..with.clone()
    };
    open_and_bind(&slapd.url(), &starttls).expect("StartTLS with a client certificate");
    assert_eq!(slapd.count_ops("BIND"), 2);
}

#[test]
fn minimum_tls_version() {
    setup();
    let pki = Pki::new();
    let v13 = TlsSettings {
        min_version: TlsVersion::V1_3,
        ..trusting(pki.path("ca.pem"))
    };
    // A normal server: TLS 1.3 is negotiated.
    let normal_server = tls_slapd(&pki, "server", &[]);
    open_and_bind(&normal_server.ldaps_url(), &v13).expect("1.3 against a 1.3 server");
    let sessions = wait_tls_sessions(&normal_server, 1);
    assert!(!sessions.is_empty());
    assert!(
        sessions.iter().all(|l| l.contains("tls_proto=TLS1.3")),
        "{sessions:?}"
    );

    // slapd has no maximum version, but Debian's slapd takes a GnuTLS priority string.
    let old_server = tls_slapd(&pki, "server", &["TLSCipherSuite NORMAL:-VERS-TLS1.3"]);
    let e = assert_refused(
        open_and_bind(&old_server.ldaps_url(), &v13),
        &old_server,
        TlsFailure::Handshake,
    );
    println!("min 1.3 against a 1.2-only server: {e}");
    let starttls = TlsSettings {
        starttls: true,
        ..v13.clone()
    };
    assert!(open_and_bind(&old_server.url(), &starttls)
        .unwrap_err()
        .is_transport());
    assert_eq!(old_server.count_ops("BIND"), 0);
    // The default minimum (1.2) accepts it.
    open_and_bind(&old_server.ldaps_url(), &trusting(pki.path("ca.pem"))).expect("1.2");
    let sessions = wait_tls_sessions(&old_server, 1);
    assert!(
        sessions.last().unwrap().contains("tls_proto=TLS1.2"),
        "{sessions:?}"
    );

    // The default minimum (1.2) is enforced too: Debian's GnuTLS would otherwise negotiate
    // TLS 1.1 (measured with ldapsearch), and libldap's PROTOCOL_MIN does not reach GnuTLS.
    let ancient = tls_slapd(
        &pki,
        "server",
        &["TLSCipherSuite NORMAL:-VERS-ALL:+VERS-TLS1.1:+VERS-TLS1.0"],
    );
    let e = assert_refused(
        open_and_bind(&ancient.ldaps_url(), &trusting(pki.path("ca.pem"))),
        &ancient,
        TlsFailure::Handshake,
    );
    println!("min 1.2 against a 1.1-only server: {e}");
}

/// Accepts connections, answers the first request with a successful StartTLS response, then
/// never sends another byte (the TLS handshake stalls).
struct StartTlsThenSilent {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl StartTlsThenSilent {
    fn start() -> StartTlsThenSilent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = thread::spawn(move || {
            let mut held = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                // ExtendedRequest: 30 LL 02 <n> <id...> 77 ...; we need the message ID.
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).unwrap_or(0);
                if n >= 5 && buf[0] == 0x30 && buf[1] < 0x80 && buf[2] == 0x02 {
                    let id = &buf[4..4 + buf[3] as usize];
                    let oid = b"1.3.6.1.4.1.1466.20037";
                    let mut op = vec![0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00, 0x8a];
                    op.push(oid.len() as u8);
                    op.extend_from_slice(oid);
                    let mut msg = vec![0x02, id.len() as u8];
                    msg.extend_from_slice(id);
                    msg.push(0x78);
                    msg.push(op.len() as u8);
                    msg.extend(op);
                    let mut out = vec![0x30, msg.len() as u8];
                    out.extend(msg);
                    let _ = s.write_all(&out);
                }
                held.push(s);
            }
        });
        StartTlsThenSilent {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StartTlsThenSilent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn silent_servers_fail_within_the_timeouts() {
    setup();
    let pki = Pki::new();
    let hole = BlackHole::start();
    let stall = StartTlsThenSilent::start();
    let timeout = Duration::from_millis(1000);
    let t = timeouts(1000, 1000);
    let tls = trusting(pki.path("ca.pem"));
    let starttls = TlsSettings {
        starttls: true,
        ..tls.clone()
    };
    let cases = [
        // TCP accepted, no ServerHello: bounded by the connect timeout.
        (
            "ldaps:// to a silent server",
            format!("ldaps://127.0.0.1:{}", hole.port()),
            &tls,
        ),
        // No answer to the StartTLS request: bounded by the operation timeout.
        ("StartTLS to a silent server", hole.url(), &starttls),
        // StartTLS answered, then the handshake stalls: bounded by the connect timeout.
        (
            "StartTLS answered, handshake stalls",
            format!("ldap://127.0.0.1:{}", stall.port),
            &starttls,
        ),
    ];
    for (what, url, settings) in cases {
        let started = Instant::now();
        let e = Connection::open(&url, &t, settings).unwrap_err();
        let took = started.elapsed();
        println!("{what}: {e} after {took:?}");
        assert!(e.is_transport() && e.is_timeout(), "{what}: {e}");
        assert!(took >= timeout * 9 / 10, "{what}: too fast ({took:?}): {e}");
        assert!(took < timeout * 3, "{what}: took {took:?}");
    }
}

#[test]
fn set_timeouts_bounds_the_next_request() {
    setup();
    let pki = Pki::new();
    let mut slapd = tls_slapd(&pki, "server", &[]);
    for (url, starttls) in [(slapd.ldaps_url(), false), (slapd.url(), true)] {
        let tls = TlsSettings {
            starttls,
            ..trusting(pki.path("ca.pem"))
        };
        let mut conn = Connection::open(&url, &timeouts(10_000, 10_000), &tls).unwrap();
        conn.simple_bind(ALICE.dn, ALICE.password.as_bytes())
            .unwrap();
        slapd.freeze();
        conn.set_timeouts(&timeouts(10_000, 300)).unwrap();
        let started = Instant::now();
        let e = conn
            .search_dns(SUFFIX, Scope::Subtree, "(uid=bob)", 0)
            .unwrap_err();
        let took = started.elapsed();
        slapd.thaw();
        println!("{url}: search against a frozen server: {e} after {took:?}");
        assert!(e.is_timeout(), "{e}");
        assert!(took < Duration::from_millis(900), "took {took:?}");

        // A bind too (libldap's own LDAP_OPT_TIMEOUT, not our search argument).
        let mut conn = Connection::open(&url, &timeouts(10_000, 10_000), &tls).unwrap();
        slapd.freeze();
        conn.set_timeouts(&timeouts(10_000, 300)).unwrap();
        let started = Instant::now();
        let e = conn
            .simple_bind(BOB.dn, BOB.password.as_bytes())
            .unwrap_err();
        let took = started.elapsed();
        slapd.thaw();
        assert!(e.is_timeout(), "{e}");
        assert!(took < Duration::from_millis(900), "took {took:?}");
    }
}

// ============================================================================================
// The environment cannot weaken TLS
// ============================================================================================

const CHILD_FLAG: &str = "VALKEYAUTH_TLS_ENV_CHILD";

/// libldap reads `LDAPTLS_*` (and ldap.conf) once, at its first call in a process. So this
/// runs the checks in a fresh copy of this test binary whose environment asks libldap to trust
/// everything: `LDAPTLS_REQCERT=never`, the rogue CA in `LDAPTLS_CACERT`/`LDAPTLS_CACERTDIR`,
/// our client certificate in `LDAPTLS_CERT`/`LDAPTLS_KEY`, `LDAPTLS_REQSAN=allow`, and a TLS
/// 1.2-only `LDAPTLS_CIPHER_SUITE`.
#[test]
fn environment_cannot_weaken_tls() {
    let pki = Pki::new();
    let rogue = tls_slapd(&pki, "rogue-server", &[]);
    let wrong_host = tls_slapd(&pki, "wrong-host", &[]);
    let client_cert = tls_slapd(&pki, "server", &["TLSVerifyClient demand"]);
    let rogue_dir = pki.path("rogue-dir");
    fs::create_dir(&rogue_dir).unwrap();
    fs::copy(pki.path("rogue-ca.pem"), rogue_dir.join("rogue.pem")).unwrap();

    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            "--exact",
            "environment_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_FLAG, "1")
        .env("LDAPTLS_REQCERT", "never")
        .env("LDAPTLS_CACERT", pki.path("rogue-ca.pem"))
        .env("LDAPTLS_CACERTDIR", &rogue_dir)
        .env("LDAPTLS_CERT", pki.path("client.pem"))
        .env("LDAPTLS_KEY", pki.path("client.key"))
        .env("LDAPTLS_REQSAN", "allow")
        .env("LDAPTLS_CIPHER_SUITE", "NORMAL:-VERS-ALL:+VERS-TLS1.2")
        .env("TEST_PKI", pki.path(""))
        .env("TEST_ROGUE_LDAPS", rogue.ldaps_url())
        .env("TEST_ROGUE_LDAP", rogue.url())
        .env("TEST_WRONG_HOST_LDAPS", wrong_host.ldaps_url())
        .env("TEST_CLIENT_CERT_LDAPS", client_cert.ldaps_url())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("test result: ok. 1 passed"), "{text}");

    assert_eq!(rogue.count_ops("BIND"), 0, "{:?}", rogue.ops("BIND"));
    assert_eq!(wrong_host.count_ops("BIND"), 0);
    // The one connection that worked used TLS 1.3, not the environment's 1.2-only suite.
    assert_eq!(client_cert.count_ops("BIND"), 1);
    let sessions = wait_tls_sessions(&client_cert, 1);
    assert!(!sessions.is_empty());
    assert!(
        sessions.iter().all(|l| l.contains("tls_proto=TLS1.3")),
        "{sessions:?}"
    );
}

/// Runs only as the child of `environment_cannot_weaken_tls`.
#[test]
#[ignore = "run by environment_cannot_weaken_tls in a child process"]
fn environment_child() {
    if std::env::var_os(CHILD_FLAG).is_none() {
        return;
    }
    let var = |name: &str| std::env::var(name).unwrap();
    let pki = PathBuf::from(var("TEST_PKI"));
    setup();

    // Control: libldap did read the environment: its global defaults now trust the rogue CA
    // and check nothing, so a handle that kept them would accept the rogue server.
    assert_eq!(
        global_int(valkeyauth::openldap_sys::LDAP_OPT_X_TLS_REQUIRE_CERT),
        0
    );
    assert!(raw_ldaps_connect_with_global_defaults(&var(
        "TEST_ROGUE_LDAPS"
    )));

    let ours = trusting(pki.join("ca.pem"));
    let rejected = |url: &str, tls: &TlsSettings| {
        let e = open_and_bind(url, tls).unwrap_err();
        println!("{url}: {e}");
        assert_eq!(
            e.tls_failure(),
            Some(TlsFailure::CertificateRejected),
            "{e}"
        );
    };
    // REQCERT=never and the rogue CA from the environment are not used...
    rejected(&var("TEST_ROGUE_LDAPS"), &ours);
    rejected(&var("TEST_ROGUE_LDAPS"), &TlsSettings::default());
    rejected(
        &var("TEST_ROGUE_LDAP"),
        &TlsSettings {
            starttls: true,
            ..ours.clone()
        },
    );
    // ...nor REQSAN=allow (the CN would match)...
    rejected(&var("TEST_WRONG_HOST_LDAPS"), &ours);
    // ...nor the client certificate...
    let e = open_and_bind(&var("TEST_CLIENT_CERT_LDAPS"), &ours).unwrap_err();
    assert!(e.is_transport(), "{e}");
    // ...nor the cipher suite: this one must negotiate TLS 1.3 (checked by the parent).
    let with_cert = TlsSettings {
        cert_path: Some(pki.join("client.pem")),
        key_path: Some(pki.join("client.key")),
        min_version: TlsVersion::V1_3,
        ..ours
    };
    open_and_bind(&var("TEST_CLIENT_CERT_LDAPS"), &with_cert).expect("our own settings work");
}

fn global_int(option: i32) -> i32 {
    use valkeyauth::openldap_sys as sys;
    let mut value: std::ffi::c_int = -1;
    // SAFETY: NULL reads the global options; this option's out value is an int.
    let status =
        unsafe { sys::ldap_get_option(std::ptr::null_mut(), option, (&raw mut value).cast()) };
    assert_eq!(status, sys::LDAP_OPT_SUCCESS);
    value
}

/// A bare libldap handle (only a network timeout set) connecting to `url`: true if the TLS
/// session came up with the global (environment) TLS settings.
fn raw_ldaps_connect_with_global_defaults(url: &str) -> bool {
    use valkeyauth::openldap_sys as sys;
    let c_url = std::ffi::CString::new(url).unwrap();
    let mut ld: *mut sys::LDAP = std::ptr::null_mut();
    // SAFETY: valid C string; the handle is unbound below.
    let rc = unsafe { sys::ldap_initialize(&raw mut ld, c_url.as_ptr()) };
    assert_eq!(rc, 0);
    let net = sys::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: live handle; this option takes a struct timeval *.
    unsafe { sys::ldap_set_option(ld, sys::LDAP_OPT_NETWORK_TIMEOUT, (&raw const net).cast()) };
    // SAFETY: live handle.
    let rc = unsafe { sys::ldap_connect(ld) };
    // SAFETY: live handle, freed once.
    unsafe { sys::ldap_unbind_ext(ld, std::ptr::null_mut(), std::ptr::null_mut()) };
    rc == 0
}

#[test]
fn unusable_client_certificate_is_a_settings_error() {
    setup();
    let pki = Pki::new();
    let slapd = tls_slapd(&pki, "server", &["TLSVerifyClient demand"]);
    let with = |cert: &str, key: &str| TlsSettings {
        cert_path: Some(pki.path(cert)),
        key_path: Some(pki.path(key)),
        ..trusting(pki.path("ca.pem"))
    };
    for (cert, key) in [
        ("client.pem", "ca.pem"),      // not a key
        ("client.pem", "server.key"),  // the key of another certificate
        ("client.pem", "missing.key"), // no such file
        ("client.key", "client.key"),  // not a certificate
    ] {
        let e = Connection::open(&slapd.ldaps_url(), &normal(), &with(cert, key)).unwrap_err();
        println!("cert {cert}, key {key}: {e}");
        assert_eq!(e.tls_failure(), Some(TlsFailure::Settings), "{e}");
        assert!(!e.is_transport(), "{e}");
    }
    assert_eq!(
        slapd.count_ops("ACCEPT"),
        0,
        "no connection was even opened"
    );
}

// ============================================================================================
// One TLS context per TlsSettings
// ============================================================================================

/// What building one TLS context costs with Debian's CA bundle (measured: 17.7 ms of CPU).
const CONTEXT_BUILD_COST: Duration = Duration::from_millis(17);

/// A CA file as large as a real one: the system bundle (about 144 certificates on Debian)
/// followed by the test CA, so that parsing it costs what `ca_path` `None` costs.
fn big_ca_bundle(pki: &Pki) -> PathBuf {
    let mut pem = ldap::system_ca_bundle()
        .map(|bundle| fs::read(bundle).expect("read the system CA bundle"))
        .unwrap_or_default();
    pem.extend(fs::read(pki.path("ca.pem")).unwrap());
    let path = pki.path("big-bundle.pem");
    fs::write(&path, pem).unwrap();
    path
}

/// The same configuration in a new `TlsSettings` (with no context built yet): what every
/// `CONFIG SET` makes.
fn same_config(tls: &TlsSettings) -> TlsSettings {
    TlsSettings {
        starttls: tls.starttls,
        ca_path: tls.ca_path.clone(),
        cert_path: tls.cert_path.clone(),
        key_path: tls.key_path.clone(),
        require_cert: tls.require_cert,
        min_version: tls.min_version,
        ..TlsSettings::default()
    }
}

#[test]
fn one_tls_context_for_many_connections() {
    setup();
    let pki = Pki::new();
    let slapd = tls_slapd(&pki, "server", &["TLSVerifyClient demand"]);
    let url = slapd.ldaps_url();
    let tls = TlsSettings {
        cert_path: Some(pki.path("client.pem")),
        key_path: Some(pki.path("client.key")),
        ..trusting(big_ca_bundle(&pki))
    };

    // Before: one context per open (each new TlsSettings builds its own).
    let fresh_opens = 5;
    let started = Instant::now();
    for _ in 0..fresh_opens {
        Connection::open(&url, &normal(), &same_config(&tls))
            .unwrap()
            .close()
            .unwrap();
    }
    let fresh_each = started.elapsed() / fresh_opens;

    // Now: 200 opens with one TlsSettings build one context.
    let opens = 200;
    let started = Instant::now();
    for i in 0..opens {
        let mut conn = Connection::open(&url, &normal(), &tls).unwrap();
        if i % 50 == 0 {
            // The server demands a client certificate: a bind shows it was sent and accepted.
            conn.simple_bind(ALICE.dn, ALICE.password.as_bytes())
                .unwrap();
        }
        conn.close().unwrap();
    }
    let took = started.elapsed();
    println!(
        "{opens} ldaps opens with one TlsSettings: {took:?} ({:?} each); \
         with a new TlsSettings each: {fresh_each:?} each",
        took / opens
    );
    assert_eq!(tls.tls_context_builds(), 1);
    assert_eq!(slapd.count_ops("BIND"), 4);
    assert_eq!(
        wait_tls_sessions(&slapd, (fresh_opens + opens) as usize).len(),
        (fresh_opens + opens) as usize
    );
    // One build instead of 200: less than 200 builds alone would cost, and well below 200
    // opens that each build (the handshakes remain, and a loaded machine slows both alike).
    assert!(
        took < CONTEXT_BUILD_COST * opens,
        "{opens} opens took {took:?}"
    );
    assert!(
        took < fresh_each * opens * 2 / 3,
        "{opens} opens took {took:?}, {:?} each with a new TlsSettings",
        fresh_each
    );
}

#[test]
fn failed_opens_share_the_tls_context_too() {
    setup();
    let pki = Pki::new();
    let tls = TlsSettings {
        cert_path: Some(pki.path("client.pem")),
        key_path: Some(pki.path("client.key")),
        ..trusting(big_ca_bundle(&pki))
    };
    // ldaps:// to a port where nothing listens: libldap needs the context before it connects,
    // so every open used to build one (and leak it) just to be refused.
    let closed = format!("ldaps://127.0.0.1:{}", free_port());
    let opens = 200;
    let started = Instant::now();
    for _ in 0..opens {
        let e = Connection::open(&closed, &normal(), &tls).unwrap_err();
        assert!(e.is_transport() && !e.is_tls(), "{e}");
    }
    let took = started.elapsed();
    println!("{opens} refused ldaps opens: {took:?}");
    assert_eq!(tls.tls_context_builds(), 1);
    assert!(
        took < CONTEXT_BUILD_COST * opens / 4,
        "{opens} opens took {took:?}"
    );
}

#[test]
fn tls_context_is_shared_across_threads() {
    setup();
    let pki = Pki::new();
    let slapd = tls_slapd(&pki, "server", &["TLSVerifyClient demand"]);
    let tls = TlsSettings {
        cert_path: Some(pki.path("client.pem")),
        key_path: Some(pki.path("client.key")),
        ..trusting(pki.path("ca.pem"))
    };
    let starttls = TlsSettings {
        starttls: true,
        ..tls.clone()
    };
    let workers: Vec<_> = (0..4)
        .map(|i| {
            // Clones share the context: two workers use StartTLS, two ldaps://.
            let (tls, url) = if i % 2 == 0 {
                (tls.clone(), slapd.ldaps_url())
            } else {
                (starttls.clone(), slapd.url())
            };
            thread::spawn(move || {
                for _ in 0..20 {
                    open_and_bind(&url, &tls).expect("open and bind");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
    assert_eq!(slapd.count_ops("BIND"), 80);
    assert_eq!(tls.tls_context_builds(), 1);
    assert_eq!(starttls.tls_context_builds(), 1);
}

#[test]
fn tls_context_is_built_again_when_its_files_change() {
    setup();
    let pki = Pki::new();
    let slapd = tls_slapd(&pki, "server", &["TLSVerifyClient demand"]);
    let url = slapd.ldaps_url();
    // Copies that the test replaces, as an operator renewing a certificate would.
    let (ca, cert, key) = (
        pki.path("live-ca.pem"),
        pki.path("live-client.pem"),
        pki.path("live-client.key"),
    );
    let tls = TlsSettings {
        cert_path: Some(cert.clone()),
        key_path: Some(key.clone()),
        ..trusting(ca.clone())
    };

    // A missing file: a settings error, and nothing built.
    let e = open_and_bind(&url, &tls).unwrap_err();
    assert_eq!(e.tls_failure(), Some(TlsFailure::Settings), "{e}");
    assert!(e.to_string().contains("live-ca.pem"), "{e}");
    assert_eq!(tls.tls_context_builds(), 0);

    // The files appear: the same settings work, and keep their context.
    fs::copy(pki.path("ca.pem"), &ca).unwrap();
    fs::copy(pki.path("client.pem"), &cert).unwrap();
    fs::copy(pki.path("client.key"), &key).unwrap();
    open_and_bind(&url, &tls).expect("files in place");
    open_and_bind(&url, &tls).expect("again");
    assert_eq!(tls.tls_context_builds(), 1);

    // The key is replaced by something that is not a key: the next open builds again and
    // reports it; the next ones report it again without building (the files did not change).
    let replace = |path: &PathBuf, with: &str| {
        let tmp = path.with_extension("new");
        fs::copy(pki.path(with), &tmp).unwrap();
        fs::rename(&tmp, path).unwrap();
    };
    replace(&key, "ca.pem");
    for _ in 0..3 {
        let e = Connection::open(&url, &normal(), &tls).unwrap_err();
        assert_eq!(e.tls_failure(), Some(TlsFailure::Settings), "{e}");
        assert!(!e.is_transport(), "{e}");
        assert!(e.to_string().contains("live-client.key"), "{e}");
    }
    assert_eq!(tls.tls_context_builds(), 2);

    // Fixed on disk: the same settings work again, without a new TlsSettings.
    replace(&key, "client.key");
    open_and_bind(&url, &tls).expect("key fixed");
    assert_eq!(tls.tls_context_builds(), 3);

    // The CA file rewritten in place with a CA that did not sign the server: refused now.
    fs::write(&ca, fs::read(pki.path("rogue-ca.pem")).unwrap()).unwrap();
    let e = open_and_bind(&url, &tls).unwrap_err();
    assert_eq!(
        e.tls_failure(),
        Some(TlsFailure::CertificateRejected),
        "{e}"
    );
    assert_eq!(tls.tls_context_builds(), 4);
    assert_eq!(slapd.count_ops("BIND"), 3);
}

#[test]
fn a_clone_changed_after_the_build_gets_its_own_context() {
    setup();
    let pki = Pki::new();
    let slapd = tls_slapd(&pki, "rogue-server", &[]);
    let url = slapd.ldaps_url();
    let demand = trusting(pki.path("ca.pem"));
    assert_refused(
        open_and_bind(&url, &demand),
        &slapd,
        TlsFailure::CertificateRejected,
    );
    assert_eq!(demand.tls_context_builds(), 1);

    // The clone shares the cache but not the context built for other settings: Never accepts
    // the rogue certificate, and Demand still refuses it afterwards.
    let mut never = demand.clone();
    never.require_cert = RequireCert::Never;
    open_and_bind(&url, &never).expect("Never accepts it");
    let e = open_and_bind(&url, &demand).unwrap_err();
    assert_eq!(
        e.tls_failure(),
        Some(TlsFailure::CertificateRejected),
        "{e}"
    );
    assert_eq!(slapd.count_ops("BIND"), 1);
    assert_eq!(demand.tls_context_builds(), 3);
}

/// Opens and binds on another thread, so that a hang fails the test instead of stalling it.
fn open_and_bind_within(url: &str, tls: &TlsSettings, limit: Duration) -> Result<(), LdapError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (url, tls) = (url.to_owned(), tls.clone());
    thread::spawn(move || tx.send(open_and_bind(&url, &tls)));
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("no answer within {limit:?}: the open hangs"))
}

/// The TLS library reads the CA, certificate and key with blocking calls on the worker's
/// thread. A FIFO (or an empty or pseudo file) put in place after the option was set is a
/// settings error at once, for a CA file and for an entry of a CA directory, and a good file
/// put back works again.
#[test]
fn files_that_would_hang_the_tls_library_are_refused() {
    setup();
    let pki = Pki::new();
    let slapd = tls_slapd(&pki, "server", &[]);
    let url = slapd.ldaps_url();
    let limit = Duration::from_secs(3);
    let refused = |tls: &TlsSettings, needle: &str| {
        let e = open_and_bind_within(&url, tls, limit).unwrap_err();
        assert_eq!(e.tls_failure(), Some(TlsFailure::Settings), "{e}");
        assert!(e.to_string().contains(needle), "{needle}: {e}");
    };

    let ca = pki.path("live-ca.pem");
    let tls = trusting(ca.clone());
    fs::copy(pki.path("ca.pem"), &ca).unwrap();
    open_and_bind_within(&url, &tls, limit).expect("a CA file");

    let fifo = pki.path("fifo.tmp");
    mkfifo(&fifo);
    fs::rename(&fifo, &ca).unwrap();
    refused(&tls, "not a regular file");
    fs::remove_file(&ca).unwrap();
    fs::write(&ca, "").unwrap();
    refused(&tls, "is empty");
    refused(
        &trusting(PathBuf::from("/proc/self/status")),
        "kernel interface",
    );
    fs::copy(pki.path("ca.pem"), &ca).unwrap();
    open_and_bind_within(&url, &tls, limit).expect("the CA file back");

    let dir_tls = trusting(pki.path("ca-dir"));
    open_and_bind_within(&url, &dir_tls, limit).expect("a CA directory");
    let entry = pki.path("ca-dir").join("0badf00d.0");
    mkfifo(&entry);
    refused(&dir_tls, "0badf00d.0");
    fs::remove_file(&entry).unwrap();
    std::os::unix::fs::symlink("/proc/self/status", &entry).unwrap();
    refused(&dir_tls, "0badf00d.0");
    fs::remove_file(&entry).unwrap();
    open_and_bind_within(&url, &dir_tls, limit).expect("the CA directory cleaned");
    assert_eq!(slapd.count_ops("BIND"), 4);
}

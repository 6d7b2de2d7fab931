//! TLS end to end: Valkey 9.1 loads the module, which talks to private slapds over `ldaps://`
//! or StartTLS with certificates made by Debian's `openssl` at test time (the approach of
//! `tests/ldap_tls.rs`, whose PKI helper is copied here in a smaller form).
//!
//! Covers: the right CA (right and wrong password); an untrusted CA and a refused StartTLS (the
//! outage error, and no bind reaches slapd); a server demanding a client certificate, fixed by
//! `CONFIG SET` without a restart; and a burst of concurrent AUTHs across TLS `CONFIG SET`s.

mod common;

use common::pki::Pki;
use common::*;
use std::fs;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

const LOG_WAIT: Duration = Duration::from_secs(5);

// ============================================================================================
// Certificates (from tests/ldap_tls.rs)
// ============================================================================================

// ============================================================================================
// Servers
// ============================================================================================

/// slapd on ldap:// and ldaps:// with the server certificate and the CA (for client
/// certificates), plus `extra` global lines.
fn tls_slapd(pki: &Pki, extra: &[&str]) -> Slapd {
    let mut b = Slapd::builder()
        .global(format!("TLSCACertificateFile {}", pki.arg("ca.pem")))
        .global(format!("TLSCertificateFile {}", pki.arg("server.pem")))
        .global(format!("TLSCertificateKeyFile {}", pki.arg("server.key")))
        .ldaps();
    for line in extra {
        b = b.global(*line);
    }
    b.start()
}

/// Valkey with the module in bind mode against `servers`, then `extra` (name, value, ...), and
/// the ACL users alice and bob.
fn valkey(servers: &str, extra: &[&str]) -> Valkey {
    let v = Valkey::builder().module(bind_args(servers, extra)).start();
    add_acl_users(&v, &["alice", "bob"]);
    v
}

/// Binds of alice that reached slapd.
fn alice_binds(slapd: &Slapd) -> usize {
    bind_dns(slapd).iter().filter(|dn| *dn == ALICE.dn).count()
}

// ============================================================================================
// Tests
// ============================================================================================

#[test]
fn ldaps_with_the_right_ca() {
    let pki = Pki::new();
    let slapd = tls_slapd(&pki, &[]);
    let v = valkey(
        &slapd.ldaps_url(),
        &["tls_ca_cert_path", &pki.arg("ca.pem")],
    );

    let (r, mut c) = login(&v, "alice", ALICE.password);
    assert_eq!(r, ok(), "log:\n{}", v.log());
    assert_eq!(c.whoami(), "alice");
    let (r, mut c) = login(&v, "alice", "not-alice-pw");
    assert_eq!(r, wrongpass());
    assert_eq!(c.whoami(), "default");

    assert_eq!(slapd.wait_ops("BIND", 2, LOG_WAIT), 2);
    assert_eq!(alice_binds(&slapd), 2);
    // Both binds went over TLS: slapd logs a non-zero security strength factor.
    let binds: Vec<String> = slapd
        .log()
        .lines()
        .filter(|l| l.contains(&format!("BIND dn=\"{}\" mech=SIMPLE", ALICE.dn)))
        .map(str::to_owned)
        .collect();
    assert!(!binds.is_empty(), "{}", slapd.log());
    assert!(binds.iter().all(|l| !l.ends_with(" ssf=0")), "{binds:?}");
}

#[test]
fn ldaps_with_an_untrusted_ca_is_an_outage_and_sends_no_bind() {
    let pki = Pki::new();
    let slapd = tls_slapd(&pki, &[]);
    let v = valkey(
        &slapd.ldaps_url(),
        &["tls_ca_cert_path", &pki.arg("rogue-ca.pem")],
    );

    let (r, mut c) = login(&v, "alice", ALICE.password);
    assert_eq!(r, unavailable(), "log:\n{}", v.log());
    assert_eq!(c.whoami(), "default");
    assert!(
        v.wait_for_log("certificate verify failed", LOG_WAIT),
        "log:\n{}",
        v.log()
    );

    // The control: the right CA, set at run time, lets the same AUTH through. Its bind is the
    // only one slapd saw (a bind from before would be logged before it).
    config_set_ok(&v, "valkeyauth.tls_ca_cert_path", &pki.arg("ca.pem"));
    let (r, _) = login(&v, "alice", ALICE.password);
    assert_eq!(r, ok(), "log:\n{}", v.log());
    assert_eq!(slapd.wait_ops("BIND", 1, LOG_WAIT), 1);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(slapd.count_ops("BIND"), 1, "{:?}", slapd.ops("BIND"));
    assert_eq!(alice_binds(&slapd), 1);
}

#[test]
fn starttls_refused_by_a_server_without_tls_is_an_outage_and_sends_no_bind() {
    let slapd = Slapd::start_default();
    let v = valkey(
        &slapd.url(),
        &["use_starttls", "yes", "tls_require_cert", "never"],
    );

    let (r, mut c) = login(&v, "alice", ALICE.password);
    assert_eq!(r, unavailable(), "log:\n{}", v.log());
    assert_eq!(c.whoami(), "default");
    // The StartTLS request reached slapd and the connection was closed; nothing else was sent.
    assert!(slapd.wait_ops("EXT", 1, LOG_WAIT) >= 1, "{}", slapd.log());
    assert!(
        slapd.wait_ops("closed", 1, LOG_WAIT) >= 1,
        "{}",
        slapd.log()
    );
    thread::sleep(Duration::from_millis(100));
    assert_eq!(slapd.count_ops("BIND"), 0, "{}", slapd.log());
    assert_eq!(slapd.count_ops("SRCH"), 0, "{}", slapd.log());

    // The control: without StartTLS the same AUTH reaches slapd.
    config_set_ok(&v, "valkeyauth.use_starttls", "no");
    let (r, _) = login(&v, "alice", ALICE.password);
    assert_eq!(r, ok(), "log:\n{}", v.log());
    assert_eq!(slapd.wait_ops("BIND", 1, LOG_WAIT), 1);
    assert_eq!(alice_binds(&slapd), 1);
}

#[test]
fn client_certificate_set_at_run_time_is_used_by_new_connections() {
    let pki = Pki::new();
    let slapd = tls_slapd(&pki, &["TLSVerifyClient demand"]);
    let v = valkey(
        &slapd.ldaps_url(),
        &["tls_ca_cert_path", &pki.arg("ca.pem")],
    );

    let (r, _) = login(&v, "alice", ALICE.password);
    assert_eq!(r, unavailable(), "no client certificate; log:\n{}", v.log());
    assert_eq!(slapd.count_ops("BIND"), 0, "{}", slapd.log());

    // Both options in one CONFIG SET: no restart, no new module load.
    let pid = v.pid();
    let (cert, key) = (pki.arg("client.pem"), pki.arg("client.key"));
    let r = v.raw().call(&[
        b"CONFIG",
        b"SET",
        b"valkeyauth.tls_cert_path",
        cert.as_bytes(),
        b"valkeyauth.tls_key_path",
        key.as_bytes(),
    ]);
    assert!(r.is_ok(), "CONFIG SET: {r}");
    let (r, mut c) = login(&v, "alice", ALICE.password);
    assert_eq!(r, ok(), "with the client certificate; log:\n{}", v.log());
    assert_eq!(c.whoami(), "alice");
    assert_eq!(v.pid(), pid);
    let (r, _) = login(&v, "bob", "not-bob-pw");
    assert_eq!(r, wrongpass());
    assert_eq!(slapd.wait_ops("BIND", 2, LOG_WAIT), 2);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(bind_dns(&slapd), [ALICE.dn, BOB.dn], "{}", slapd.log());
}

/// `CONFIG SET` of a TLS option, then 200 concurrent AUTHs (20 clients × 10, right and wrong
/// passwords, wrong ones all distinct), with another TLS `CONFIG SET` while they run.
#[test]
fn burst_of_auths_across_tls_config_changes() {
    const CLIENTS: usize = 20;
    const EACH: usize = 10;
    let pki = Pki::new();
    let slapd = tls_slapd(&pki, &[]);
    let v = valkey(
        &slapd.ldaps_url(),
        &["tls_ca_cert_path", &pki.arg("ca.pem")],
    );
    auth_ok(&v, &ALICE, "before the changes");

    // A bundle holding the other CA and the right one: trusts the same server.
    let mut bundle = fs::read(pki.path("rogue-ca.pem")).unwrap();
    bundle.extend(fs::read(pki.path("ca.pem")).unwrap());
    fs::write(pki.path("bundle.pem"), bundle).unwrap();

    config_set_ok(&v, "valkeyauth.tls_require_cert", "try");
    let start = Arc::new(Barrier::new(CLIENTS + 1));
    let halfway = Arc::new(Barrier::new(CLIENTS + 1));
    let port = v.port();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let (start, halfway) = (Arc::clone(&start), Arc::clone(&halfway));
            thread::spawn(move || {
                let mut wrong = Vec::new();
                start.wait();
                for i in 0..EACH {
                    if i == EACH / 2 {
                        halfway.wait();
                    }
                    let user = if (t + i) % 2 == 0 { &ALICE } else { &BOB };
                    let right = !(t * EACH + i).is_multiple_of(3);
                    let pass = if right {
                        user.password.to_owned()
                    } else {
                        format!("wrong-{t}-{i}")
                    };
                    let mut c = RawClient::connect(port);
                    let r = c.auth(user.name.as_bytes(), pass.as_bytes());
                    let want = if right { ok() } else { wrongpass() };
                    if r != want {
                        wrong.push(format!("{} {pass}: {r}", user.name));
                    }
                }
                wrong
            })
        })
        .collect();
    start.wait();
    // While the first half runs: swap the CA file for the bundle.
    config_set_ok(&v, "valkeyauth.tls_ca_cert_path", &pki.arg("bundle.pem"));
    halfway.wait();
    let wrong: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();
    assert!(wrong.is_empty(), "{} wrong answers: {wrong:?}", wrong.len());

    // At least one bind per wrong password (distinct, so never coalesced; no cache), plus the
    // first login.
    let wrong_count = (0..CLIENTS * EACH).filter(|n| n.is_multiple_of(3)).count();
    assert!(
        slapd.wait_ops("BIND", wrong_count + 1, LOG_WAIT) > wrong_count,
        "{}",
        slapd.log()
    );
    auth_ok(&v, &BOB, "after the burst");
}

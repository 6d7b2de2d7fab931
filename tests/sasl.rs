//! SASL service binds (`search_bind_mechanism`), with no password in any file:
//! - GSSAPI: a private MIT Kerberos KDC and a slapd that accepts Kerberos; the module's service
//!   principal logs in from a client keytab (`sasl_keytab`); tickets that expire are fetched
//!   again from the keytab.
//! - EXTERNAL: a slapd that maps the TLS client certificate to the service account.
//!
//! In both, slapd lets only the service account search (anonymous may only authenticate), so a
//! login proves the SASL identity was mapped; slapd's log shows the mechanism.

mod common;

use common::pki::Pki;
use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const REALM: &str = "VALKEY.TEST";

/// Only the service account may search; anyone may authenticate.
fn only_the_service_account_searches(b: SlapdBuilder) -> SlapdBuilder {
    b.no_default_acls()
        .acl("access to attrs=userPassword by anonymous auth by * none")
        .acl(format!(
            "access to * by dn.exact=\"{}\" read by * none",
            SEARCHER.dn
        ))
}

// ---- Kerberos ---------------------------------------------------------------------------------

/// A private KDC on 127.0.0.1 with realm [`REALM`], the service principal of slapd
/// (`ldap/127.0.0.1`: the host of the URL, not reverse-resolved) and the module's `svc`,
/// each with a keytab. Killed and removed on drop.
struct Kdc {
    dir: TempDir,
    child: Child,
}

impl Kdc {
    /// `max_life`: the longest ticket the KDC issues (e.g. `10h`, `6s`).
    fn start(max_life: &str) -> Kdc {
        let dir = TempDir::new("kdc");
        let d = dir.path();
        let port = free_port();
        fs::write(
            d.join("krb5.conf"),
            format!(
                "[libdefaults]\n default_realm = {REALM}\n dns_lookup_realm = false\n \
                 dns_lookup_kdc = false\n rdns = false\n udp_preference_limit = 1\n \
                 clockskew = 1\n\n[realms]\n {REALM} = {{\n  kdc = 127.0.0.1:{port}\n }}\n"
            ),
        )
        .expect("write krb5.conf");
        fs::write(
            d.join("kdc.conf"),
            format!(
                "[kdcdefaults]\n kdc_listen = 127.0.0.1:{port}\n kdc_tcp_listen = 127.0.0.1:{port}\n\n\
                 [realms]\n {REALM} = {{\n  database_name = {db}\n  key_stash_file = {stash}\n  \
                 acl_file = {acl}\n  max_life = {max_life}\n }}\n\n[logging]\n kdc = FILE:{log}\n",
                db = d.join("principal").display(),
                stash = d.join("stash").display(),
                acl = d.join("kadm5.acl").display(),
                log = d.join("kdc.log").display(),
            ),
        )
        .expect("write kdc.conf");
        fs::write(d.join("kadm5.acl"), "").expect("write kadm5.acl");
        let kdc = |program: &str| {
            let mut cmd = Command::new(program);
            cmd.env("KRB5_CONFIG", d.join("krb5.conf"))
                .env("KRB5_KDC_PROFILE", d.join("kdc.conf"))
                .stdin(Stdio::null());
            cmd
        };
        let run = |cmd: &mut Command, what: &str| {
            let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                out.status.success(),
                "{what}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(
            kdc("kdb5_util").args(["create", "-s", "-r", REALM, "-P", "master-pw"]),
            "kdb5_util create",
        );
        for (principal, keytab) in [("ldap/127.0.0.1", "ldap.keytab"), ("svc", "svc.keytab")] {
            let keytab = d.join(keytab);
            run(
                kdc("kadmin.local").args([
                    "-r",
                    REALM,
                    "-q",
                    &format!("addprinc -randkey {principal}"),
                ]),
                "addprinc",
            );
            run(
                kdc("kadmin.local").args([
                    "-r",
                    REALM,
                    "-q",
                    &format!("ktadd -k {} {principal}", keytab.display()),
                ]),
                "ktadd",
            );
        }
        let mut cmd = kdc("krb5kdc");
        cmd.arg("-n").stdout(Stdio::null()).stderr(Stdio::null());
        let child = spawn(cmd).expect("spawn krb5kdc");
        let kdc = Kdc { dir, child };
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "krb5kdc did not start");
            thread::sleep(Duration::from_millis(20));
        }
        kdc
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().expect("utf-8").to_owned()
    }

    /// How many initial tickets (AS requests) the KDC issued to `svc`.
    fn initial_tickets_of_svc(&self) -> usize {
        fs::read_to_string(self.path("kdc.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("AS_REQ") && l.contains("ISSUE") && l.contains("svc@"))
            .count()
    }

    /// slapd accepting GSSAPI with its keytab, mapping `svc` to the service account.
    fn slapd(&self) -> Slapd {
        only_the_service_account_searches(Slapd::builder())
            .global("sasl-host 127.0.0.1")
            .global(format!("sasl-realm {REALM}"))
            .global(format!(
                "authz-regexp \"^uid=svc,cn={},cn=gssapi,cn=auth$\" \"{}\"",
                REALM.to_lowercase(),
                SEARCHER.dn
            ))
            .env("KRB5_CONFIG", self.arg("krb5.conf"))
            .env("KRB5_KTNAME", format!("FILE:{}", self.arg("ldap.keytab")))
            .env("KRB5RCACHETYPE", "none")
            .start()
    }

    /// valkey-server that finds this KDC, with a credential cache of its own (in memory).
    fn valkey(&self, args: Vec<String>) -> Valkey {
        let wrapper = self.path("valkey-with-krb5");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nKRB5_CONFIG='{}' KRB5CCNAME=MEMORY:valkeyauth exec '{}' \"$@\"\n",
                self.arg("krb5.conf"),
                Version::V9_1.binary().display()
            ),
        )
        .expect("write wrapper");
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod");
        Valkey::builder().binary(&wrapper).module(args).start()
    }

    fn module_args(&self, slapd: &Slapd, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "search_bind_mechanism",
            "GSSAPI",
            "sasl_keytab",
            &self.arg("svc.keytab"),
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        search_args(&slapd.url(), &args)
    }
}

impl Drop for Kdc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SASL binds that slapd logged with `mech`.
fn sasl_binds(slapd: &Slapd, mech: &str) -> usize {
    slapd
        .log()
        .lines()
        .filter(|l| l.contains(" BIND ") && l.contains(&format!("mech={mech}")))
        .count()
}

#[test]
fn gssapi_service_bind_from_a_keytab() {
    let kdc = Kdc::start("10h");
    let slapd = kdc.slapd();
    let v = kdc.valkey(kdc.module_args(&slapd, &[]));
    add_acl_users(&v, &["alice", "bob"]);
    auth_ok(&v, &ALICE, "GSSAPI service account");
    assert_eq!(login(&v, "bob", "wrong").0, wrongpass());
    assert_eq!(login(&v, "nobody", "x").0, wrongpass());
    assert!(sasl_binds(&slapd, "GSSAPI") >= 1, "{}", slapd.log());
    assert_eq!(info_field(&v, "allowed"), 1);
    assert_eq!(info_field(&v, "denied_bad_credentials"), 1);

    // The option is load time only: the environment is not changed under running threads.
    let r = v.raw().call(&[
        b"CONFIG",
        b"SET",
        b"valkeyauth.sasl_keytab",
        b"/tmp/other.keytab",
    ]);
    assert!(r.error().is_some(), "CONFIG SET sasl_keytab: {r}");

    // The keytab swapped for a FIFO, which Kerberos would block on: after RELOAD (fresh
    // connections) the AUTH fails at once and PING stays prompt. Put back, logins work again.
    let keytab = kdc.path("svc.keytab");
    let saved = kdc.path("svc.keytab.saved");
    fs::rename(&keytab, &saved).unwrap();
    mkfifo(&keytab);
    assert!(v.raw().call(&[b"VALKEYAUTH.RELOAD"]).is_ok());
    let t = Instant::now();
    let r = login(&v, "bob", BOB.password).0;
    assert!(r.error().is_some(), "{r}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(v.raw().call(&[b"PING"]), Reply::Simple("PONG".to_owned()));
    assert!(v.wait_for_log("sasl_keytab", Duration::from_secs(5)));
    fs::remove_file(&keytab).unwrap();
    fs::rename(&saved, &keytab).unwrap();
    assert!(v.raw().call(&[b"VALKEYAUTH.RELOAD"]).is_ok());
    auth_ok(&v, &BOB, "the keytab back");
}

/// With 6-second tickets, a service bind after they expired still works: the Kerberos library
/// gets new ones from the client keytab (the KDC logs a second initial ticket).
#[test]
fn gssapi_tickets_are_fetched_again_from_the_keytab() {
    let kdc = Kdc::start("6s");
    let slapd = kdc.slapd();
    let v = kdc.valkey(kdc.module_args(&slapd, &["workers", "1", "connection_max_idle_s", "1"]));
    add_acl_users(&v, &["alice"]);
    auth_ok(&v, &ALICE, "first tickets");
    assert_eq!(kdc.initial_tickets_of_svc(), 1);
    thread::sleep(Duration::from_secs(8));
    // The idle search connection is replaced: a new GSSAPI bind with expired tickets.
    auth_ok(&v, &ALICE, "after the tickets expired");
    assert!(
        kdc.initial_tickets_of_svc() >= 2,
        "{}",
        fs::read_to_string(kdc.path("kdc.log")).unwrap_or_default()
    );
    assert!(sasl_binds(&slapd, "GSSAPI") >= 2, "{}", slapd.log());
}

// ---- EXTERNAL ---------------------------------------------------------------------------------

fn tls_slapd(pki: &Pki) -> Slapd {
    only_the_service_account_searches(Slapd::builder())
        .global(format!("TLSCACertificateFile {}", pki.arg("ca.pem")))
        .global(format!("TLSCertificateFile {}", pki.arg("server.pem")))
        .global(format!("TLSCertificateKeyFile {}", pki.arg("server.key")))
        .global("TLSVerifyClient try")
        .global(format!(
            "authz-regexp \"^cn=valkeyauth-client$\" \"{}\"",
            SEARCHER.dn
        ))
        .start()
}

/// The service account is the TLS client certificate. Without a certificate the SASL bind
/// fails and the worker drops that connection; once one is set, the next AUTH connects again
/// and succeeds.
#[test]
fn external_service_bind_with_the_client_certificate() {
    let pki = Pki::new();
    let slapd = tls_slapd(&pki);
    let tls = [
        "use_starttls",
        "yes",
        "tls_ca_cert_path",
        &pki.arg("ca.pem"),
        "search_bind_mechanism",
        "EXTERNAL",
    ];
    let v = Valkey::with_module(search_args(&slapd.url(), &tls));
    add_acl_users(&v, &["alice"]);
    let r = login(&v, "alice", ALICE.password).0;
    assert!(!r.is_ok(), "EXTERNAL without a certificate: {r}");

    config_set_ok(&v, "valkeyauth.tls_key_path", &pki.arg("client.key"));
    config_set_ok(&v, "valkeyauth.tls_cert_path", &pki.arg("client.pem"));
    // A failed service bind may have marked the server down: the health check brings it back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = login(&v, "alice", ALICE.password).0;
        if r.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "EXTERNAL with a certificate: {r}\n{}",
            v.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(sasl_binds(&slapd, "EXTERNAL") >= 1, "{}", slapd.log());
    assert_eq!(login(&v, "alice", "wrong").0, wrongpass());
}

/// `sasl_authz_id`: the certificate is a proxy identity that may act as the service account
/// (`authzTo`); with the authorization id the search connection is the service account (as
/// the proxy alone, slapd would show it nothing at all).
#[test]
fn external_service_bind_acting_as_another_identity() {
    let pki = Pki::new();
    let proxy = "cn=proxy,ou=services,dc=example,dc=test";
    // slapd checks authzTo with `auth` access to it.
    let proxy_acl = format!("access to dn.exact=\"{proxy}\" attrs=authzTo by * auth");
    let slapd = only_the_service_account_searches(Slapd::builder().acl(proxy_acl))
        .extra_ldif(&format!(
            "dn: {proxy}\nobjectClass: organizationalRole\ncn: proxy\nauthzTo: dn.exact:{}\n\n",
            SEARCHER.dn
        ))
        .global(format!("TLSCACertificateFile {}", pki.arg("ca.pem")))
        .global(format!("TLSCertificateFile {}", pki.arg("server.pem")))
        .global(format!("TLSCertificateKeyFile {}", pki.arg("server.key")))
        .global("TLSVerifyClient try")
        .global("authz-policy to")
        .global(format!(
            "authz-regexp \"^cn=valkeyauth-client$\" \"{proxy}\""
        ))
        .start();
    let authz = format!("dn:{}", SEARCHER.dn);
    let args = [
        "use_starttls",
        "yes",
        "tls_ca_cert_path",
        &pki.arg("ca.pem"),
        "tls_cert_path",
        &pki.arg("client.pem"),
        "tls_key_path",
        &pki.arg("client.key"),
        "search_bind_mechanism",
        "EXTERNAL",
        "sasl_authz_id",
        &authz,
    ];
    let v = Valkey::with_module(search_args(&slapd.url(), &args));
    add_acl_users(&v, &["alice"]);
    auth_ok(&v, &ALICE, "EXTERNAL acting as the service account");
    let asked = format!("authzid=\"dn:{}\"", SEARCHER.dn);
    assert!(slapd.log().contains(&asked), "{}", slapd.log());
}

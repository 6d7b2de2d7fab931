//! Tests of the test harness itself (tests/common). None of them loads the module.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

fn ldapwhoami(url: &str, dn: &str, pw: &str) -> (bool, String) {
    let out = Command::new("ldapwhoami")
        .args(["-x", "-H", url, "-D", dn, "-w", pw])
        .output()
        .expect("run ldapwhoami");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn free_ports_are_never_handed_out_twice() {
    let ports: Vec<u16> = (0..300).map(|_| free_port()).collect();
    let unique: BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(unique.len(), ports.len());
}

#[test]
fn base64_round_trips() {
    for s in ["", "a", "ab", "abc", "abcd", " spaceuser ", "pässwörd-ü"] {
        assert_eq!(
            base64_decode(&base64_encode(s.as_bytes())),
            s.as_bytes(),
            "{s:?}"
        );
    }
    assert_eq!(base64_encode(b" spaceuser "), "IHNwYWNldXNlciA=");
    assert_eq!(filter_escape(b"a*(b)\\"), "a\\2a\\28b\\29\\5c");
}

#[test]
fn slapd_every_fixture_user_binds_with_ldapwhoami() {
    let slapd = Slapd::start_default();
    for u in USERS.iter().chain([&SEARCHER]) {
        let (ok, text) = ldapwhoami(&slapd.url(), u.dn, u.password);
        assert!(ok, "{} ({}) cannot bind: {text}", u.name, u.dn);
        assert!(text.starts_with("dn:"), "{text}");
        let (ok, text) = ldapwhoami(&slapd.url(), u.dn, "wrong-password");
        assert!(
            !ok && text.contains("(49)"),
            "{}: wrong password: {text}",
            u.name
        );
    }
    let (ok, text) = ldapwhoami(&slapd.url(), ROOT_DN, ROOT_PW);
    assert!(ok, "{text}");
    // No password at all: 49 with one, 53 (unauthenticated bind) with an empty one.
    assert_eq!(slapd.bind(NOPW.dn, "anything").unwrap(), 49);
    assert_eq!(slapd.bind(NOPW.dn, "").unwrap(), 53);
    let (ok, _) = ldapwhoami(&slapd.url(), ALICE.dn, "alice-pw ");
    assert!(!ok, "a trailing space must not be ignored");
}

#[test]
fn slapd_fixture_entries_and_exact_password_bytes() {
    let slapd = Slapd::start_default();
    // Every user is found by its escaped uid exactly once (twin twice).
    for u in USERS {
        let dns = slapd.search_dns(&format!("(uid={})", filter_escape(u.name.as_bytes())));
        let expect = if u.name == "twin" { 2 } else { 1 };
        assert_eq!(dns.len(), expect, "uid {:?}: {dns:?}", u.name);
    }
    let twins = slapd.search_dns("(uid=twin)");
    assert_eq!(twins.len(), 2, "{twins:?}");
    assert!(
        twins.contains(&TWIN_PEOPLE.dn.to_owned()) && twins.contains(&TWIN_STAFF.dn.to_owned())
    );
    // An unescaped star is a wildcard: proves the escaping matters.
    assert!(slapd.search_dns("(uid=star*)").len() == 1);
    assert!(slapd.search_dns("(uid=*)").len() > 10);
    // Groups.
    let admins = slapd.search_dns(&format!(
        "(&(objectClass=groupOfNames)(member={}))",
        ALICE.dn
    ));
    assert_eq!(admins, vec![ADMINS_DN.to_owned()]);
    let readers = slapd.search_dns(&format!("(member={})", CAROL.dn));
    assert_eq!(readers, vec![READERS_DN.to_owned()]);
    assert_eq!(slapd.search_dns("(objectClass=groupOfNames)").len(), 2);

    // Exact bytes: UTF-8 works, its Latin-1 form does not; NUL truncation does not log in.
    assert_eq!(slapd.bind(UTF8.dn, UTF8.password).unwrap(), 0);
    assert_eq!(slapd.bind(UTF8.dn, latin1(UTF8.password)).unwrap(), 49);
    assert_eq!(slapd.bind(NUL.dn, "abc").unwrap(), 0);
    assert_eq!(slapd.bind(NUL.dn, b"abc\0def").unwrap(), 49);
    assert_eq!(slapd.bind(ZOE.dn, ZOE.password).unwrap(), 0);
    // Hex-escaped DN forms reach the same entries.
    assert_eq!(
        slapd
            .bind(
                "cn=\\20spaceuser\\20,ou=people,dc=example,dc=test",
                SPACES.password
            )
            .unwrap(),
        0
    );
    assert_eq!(
        slapd
            .bind(
                "cn=back\\5cuser,ou=people,dc=example,dc=test",
                BACKSLASH.password
            )
            .unwrap(),
        0
    );
    // slapd ignores leading/trailing spaces in a DN value (documented on SPACES).
    assert_eq!(
        slapd
            .bind("cn=spaceuser,ou=people,dc=example,dc=test", SPACES.password)
            .unwrap(),
        0
    );
}

#[test]
fn slapd_counts_ops_and_survives_stop_start_freeze() {
    let mut slapd = Slapd::builder().global("idletimeout 30").start();
    let port = slapd.port();
    assert_eq!(
        slapd.count_ops("BIND"),
        0,
        "the readiness probe is not counted"
    );
    assert_eq!(slapd.bind(ALICE.dn, ALICE.password).unwrap(), 0);
    assert_eq!(slapd.bind(BOB.dn, "nope").unwrap(), 49);
    slapd.search_dns("(uid=alice)");
    assert_eq!(slapd.wait_ops("BIND", 3, Duration::from_secs(5)), 3);
    assert_eq!(slapd.wait_ops("SRCH", 1, Duration::from_secs(5)), 1);
    assert!(
        slapd.ops("SRCH")[0].contains("filter=\"(uid=alice)\""),
        "{:?}",
        slapd.ops("SRCH")
    );

    // Freeze: connections are accepted, nothing answers.
    slapd.freeze();
    let t = Instant::now();
    let r = ldap_simple_bind(port, ALICE.dn, ALICE.password, Duration::from_millis(300));
    assert!(r.is_err(), "frozen slapd answered: {r:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    slapd.thaw();
    assert_eq!(slapd.bind(ALICE.dn, ALICE.password).unwrap(), 0);

    // Stop: refused. Start again: same port, same data, counts carry on.
    let old_pid = slapd.pid();
    slapd.stop();
    assert!(slapd.bind(ALICE.dn, ALICE.password).is_err());
    slapd.start();
    assert_eq!(slapd.port(), port);
    assert_ne!(slapd.pid(), old_pid);
    assert_eq!(slapd.bind(CAROL.dn, CAROL.password).unwrap(), 0);
    assert!(slapd.wait_ops("BIND", 5, Duration::from_secs(5)) >= 5);

    // Drop while frozen must not hang.
    slapd.freeze();
    let pid = slapd.pid();
    drop(slapd);
    assert_eq!(process_state(pid), None, "slapd {pid} survived drop");
}

#[test]
fn slapd_options_allow_bind_anon_dn_and_acls() {
    let slapd = Slapd::builder()
        .global("allow bind_anon_dn")
        .acl("access to dn.subtree=\"ou=staff,dc=example,dc=test\" attrs=userPassword by * none")
        .extra_ldif(&person_ldif(
            "cn=dave,ou=people,dc=example,dc=test",
            "dave",
            b"dave-pw",
        ))
        .start();
    // A DN with an empty password is now an anonymous success: the dangerous case.
    assert_eq!(slapd.bind(ALICE.dn, "").unwrap(), 0);
    assert_eq!(
        slapd
            .bind("cn=dave,ou=people,dc=example,dc=test", "dave-pw")
            .unwrap(),
        0
    );
    // The extra ACL (before the defaults) forbids auth for staff.
    assert_eq!(slapd.bind(TWIN_STAFF.dn, TWIN_STAFF.password).unwrap(), 49);
    assert_eq!(slapd.bind(TWIN_PEOPLE.dn, TWIN_PEOPLE.password).unwrap(), 0);
}

#[test]
fn slapd_bad_ldif_reports_slapadd_output() {
    let err = Slapd::builder()
        .extra_ldif(
            "dn: cn=broken,ou=people,dc=example,dc=test\nobjectClass: noSuchClass\ncn: broken\n",
        )
        .try_start()
        .err()
        .expect("bad LDIF must fail");
    assert!(err.contains("slapadd failed"), "{err}");
}

#[test]
fn black_hole_accepts_and_never_answers() {
    let hole = BlackHole::start();
    let r = ldap_simple_bind(
        hole.port(),
        ALICE.dn,
        ALICE.password,
        Duration::from_millis(200),
    );
    assert!(r.is_err());
    assert_eq!(hole.accepted(), 1);
}

fn valkey_acl_auth(version: Version) {
    let v = Valkey::builder().version(version).start();
    let mut c = v.client();
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("u1")
        .arg("on")
        .arg(">pw1")
        .arg("~*")
        .arg("+@all")
        .query(&mut c)
        .unwrap();
    // A password with a NUL byte, set and used through exact bytes.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("u2")
        .arg("on")
        .arg(&b">ab\0cd"[..])
        .arg("+@all")
        .query(&mut c)
        .unwrap();

    let mut c2 = v.client();
    assert_eq!(auth(&mut c2, b"u1", b"pw1").unwrap(), redis::Value::Okay);
    assert_eq!(whoami(&mut c2).unwrap(), "u1");
    let e = auth(&mut c2, b"u1", b"bad").unwrap_err();
    assert_eq!(e.code(), Some("WRONGPASS"), "{e:?}");
    assert_eq!(auth(&mut c2, b"u2", b"ab\0cd").unwrap(), redis::Value::Okay);
    assert!(auth(&mut c2, b"u2", b"ab").is_err());

    let mut c3 = v.client();
    let hello = hello3_auth(&mut c3, b"u1", b"pw1").unwrap();
    assert!(matches!(hello, redis::Value::Map(_)), "{hello:?}");
    assert_eq!(whoami(&mut c3).unwrap(), "u1");
    assert!(hello3_auth(&mut v.client(), b"u1", b"bad").is_err());

    // One-argument AUTH is for `default`: it needs a password.
    let mut c4 = v.client();
    assert!(auth1(&mut c4, b"whatever").is_err());

    // RawClient: exact errors as text, RESP3 maps.
    let mut raw = v.raw();
    let r = raw.auth(b"u1", b"bad");
    assert!(r.error().unwrap().starts_with("WRONGPASS"), "{r}");
    assert!(raw.auth(b"u1", b"pw1").is_ok());
    let hello = raw.hello3_auth(b"u2", b"ab\0cd");
    assert_eq!(hello.get("proto"), Some(&Reply::Int(3)), "{hello:?}");
    let expect = if version == Version::V9_1 {
        "9.1.2"
    } else {
        "8.1."
    };
    assert!(
        hello
            .get("version")
            .unwrap()
            .text()
            .unwrap()
            .starts_with(expect),
        "{hello:?}"
    );
    assert_eq!(raw.call(&[b"ACL", b"WHOAMI"]), Reply::Bulk(b"u2".to_vec()));
    // A reply never comes for a blocked read: the timeout fails instead of hanging.
    assert!(raw.auth(b"u1", b"pw1").is_ok());
    raw.send(&[b"BLPOP", b"nokey", b"0"]).unwrap();
    assert!(raw.try_read_timeout(Duration::from_millis(200)).is_err());
    drop(raw);

    assert!(
        v.log().contains("Ready to accept connections"),
        "{}",
        v.log()
    );
    let _: () = redis::cmd("CONFIG").arg("REWRITE").query(&mut c).unwrap();
    assert!(std::fs::read_to_string(v.config_path())
        .unwrap()
        .contains("user u1"));
}

#[test]
fn valkey_9_1_starts_without_module_and_authenticates_acl_users() {
    valkey_acl_auth(Version::V9_1);
}

#[test]
fn valkey_8_1_starts_without_module_and_authenticates_acl_users() {
    valkey_acl_auth(Version::V8_1);
}

#[test]
fn redis_7_0_starts() {
    let v = Valkey::builder().version(Version::Redis7_0).start();
    let mut raw = v.raw();
    assert_eq!(raw.call(&[b"PING"]), Reply::Simple("PONG".into()));
    let info = raw.call(&[b"INFO", b"server"]).text().unwrap();
    assert!(info.contains("redis_version:7.0."), "{info}");
}

#[test]
fn valkey_stop_restart_and_expected_failures() {
    let mut v = Valkey::builder()
        .config("user alice on >pw ~* +@all")
        .start();
    let port = v.port();
    assert!(v.stop().success());
    v.restart().unwrap();
    assert_eq!(v.port(), port);
    assert!(auth(&mut v.client(), b"alice", b"pw").is_ok());
    let pid = v.pid();
    drop(v);
    assert_eq!(process_state(pid), None, "valkey {pid} survived drop");

    let log = Valkey::builder()
        .config("no-such-directive 1")
        .start_expect_failure();
    assert!(log.contains("no-such-directive"), "{log}");
    let log = Valkey::builder()
        .module_path("/nonexistent/libnothing.so")
        .start_expect_failure();
    assert!(log.contains("libnothing.so"), "{log}");
}

//! `local_fallback`: when Valkey's own password check is tried for a user the module handles.
//!
//! Each policy is checked with an ACL user `alice` who also has a local password (`localpw`):
//! the LDAP password, the local password and a wrong password, with the directory up and then
//! stopped. A `nopass` ACL user must never get in through the module under `never`.

mod common;

use common::*;
use std::time::{Duration, Instant};

const LOCAL_PW: &str = "localpw";

/// What a client should see.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Ok,
    WrongPass,
    Unavailable,
}

fn check(v: &Valkey, case: &str, user: &str, pass: &str, expect: Expect) {
    let mut c = v.raw();
    let reply = c.auth(user.as_bytes(), pass.as_bytes());
    let good = match expect {
        Expect::Ok => reply.is_ok(),
        Expect::WrongPass => reply.error() == Some(WRONGPASS),
        Expect::Unavailable => reply.error() == Some(UNAVAILABLE),
    };
    assert!(
        good,
        "{case}: AUTH {user} {pass:?}: expected {expect:?}, got {reply}\nlog:\n{}",
        v.log()
    );
    if expect == Expect::Ok {
        // The session is really logged in as that user.
        assert_eq!(
            c.call(&[b"ACL", b"WHOAMI"]),
            Reply::Bulk(user.as_bytes().to_vec()),
            "{case}"
        );
    }
}

/// A slapd and a Valkey whose module uses it with `policy`; alice has the local password.
fn setup(policy: &str) -> (Slapd, Valkey) {
    let slapd = Slapd::start_default();
    let v = Valkey::builder()
        .module(bind_args(
            &slapd.url(),
            &[
                "local_fallback",
                policy,
                "connect_timeout_ms",
                "500",
                "operation_timeout_ms",
                "1000",
                // A restarted directory is used again once the health checker has seen it.
                "health_check_interval_ms",
                "100",
            ],
        ))
        .start();
    acl_setuser(&v, &["alice", "on", ">localpw", "+@all", "~*"]);
    (slapd, v)
}

/// Runs cases (a)–(e) for one policy: `up` = [a, b, c] with the directory up, `down` = [d, e]
/// with it stopped.
fn policy_cases(policy: &str, up: [Expect; 3], down: [Expect; 2]) {
    let (mut slapd, v) = setup(policy);
    let p = policy;
    check(
        &v,
        &format!("{p} (a) LDAP pw, up"),
        "alice",
        ALICE.password,
        up[0],
    );
    check(
        &v,
        &format!("{p} (b) local pw, up"),
        "alice",
        LOCAL_PW,
        up[1],
    );
    check(
        &v,
        &format!("{p} (c) wrong pw, up"),
        "alice",
        "wrong-both",
        up[2],
    );
    slapd.stop();
    check(
        &v,
        &format!("{p} (d) local pw, down"),
        "alice",
        LOCAL_PW,
        down[0],
    );
    check(
        &v,
        &format!("{p} (e) LDAP pw, down"),
        "alice",
        ALICE.password,
        down[1],
    );
    // The directory answers again once it is back and the health checker has seen it.
    slapd.start();
    wait_all_servers_up(&v);
    check(
        &v,
        &format!("{p} after restart"),
        "alice",
        ALICE.password,
        Expect::Ok,
    );
}

#[test]
fn never_the_directory_alone_decides() {
    use Expect::*;
    policy_cases(
        "never",
        [Ok, WrongPass, WrongPass],
        [Unavailable, Unavailable],
    );
}

#[test]
fn never_is_the_default() {
    let mut slapd = Slapd::start_default();
    let v = Valkey::builder()
        .module(bind_args(&slapd.url(), NO_ARGS))
        .start();
    let got = v
        .raw()
        .call(&[b"CONFIG", b"GET", b"valkeyauth.local_fallback"]);
    assert_eq!(
        got.get("valkeyauth.local_fallback")
            .and_then(Reply::text)
            .as_deref(),
        Some("never")
    );
    acl_setuser(&v, &["alice", "on", ">localpw", "+@all", "~*"]);
    check(&v, "default (b)", "alice", LOCAL_PW, Expect::WrongPass);
    slapd.stop();
    check(&v, "default (d)", "alice", LOCAL_PW, Expect::Unavailable);
    assert_eq!(info_field(&v, "local_fallback_used"), 0);
}

#[test]
fn unavailable_uses_the_local_password_only_in_an_outage() {
    use Expect::*;
    policy_cases("unavailable", [Ok, WrongPass, WrongPass], [Ok, WrongPass]);
}

#[test]
fn always_uses_the_local_password_after_any_failed_check() {
    use Expect::*;
    policy_cases("always", [Ok, Ok, WrongPass], [Ok, WrongPass]);
}

#[test]
fn fallback_is_counted_in_info() {
    let (mut slapd, v) = setup("unavailable");
    check(&v, "wrong pw, up", "alice", LOCAL_PW, Expect::WrongPass);
    assert_eq!(info_field(&v, "local_fallback_used"), 0);
    slapd.stop();
    check(&v, "local pw, down", "alice", LOCAL_PW, Expect::Ok);
    assert_eq!(info_field(&v, "local_fallback_used"), 1);
    assert!(info_field(&v, "outage_unreachable") >= 1);
}

#[test]
fn a_policy_change_applies_to_the_next_auth() {
    let (mut slapd, v) = setup("never");
    check(&v, "never, up", "alice", LOCAL_PW, Expect::WrongPass);
    config_set_ok(&v, "valkeyauth.local_fallback", "always");
    check(&v, "always, up", "alice", LOCAL_PW, Expect::Ok);
    config_set_ok(&v, "valkeyauth.local_fallback", "unavailable");
    check(&v, "unavailable, up", "alice", LOCAL_PW, Expect::WrongPass);
    slapd.stop();
    check(&v, "unavailable, down", "alice", LOCAL_PW, Expect::Ok);
    config_set_ok(&v, "valkeyauth.local_fallback", "never");
    check(&v, "never, down", "alice", LOCAL_PW, Expect::Unavailable);
}

/// The classic hole: a `nopass` ACL user would accept any password if a failed directory check
/// fell through to Valkey's own check.
#[test]
fn never_a_nopass_user_cannot_log_in_with_any_password() {
    let (mut slapd, v) = setup("never");
    acl_setuser(&v, &["bob", "on", "nopass", "+@all", "~*"]);
    // Also a nopass user who is not in the directory at all.
    acl_setuser(&v, &["mallory", "on", "nopass", "+@all", "~*"]);
    let tries = ["anything", "wrong-pw", "x", "nopass", LOCAL_PW];
    for pass in tries {
        check(&v, "nopass bob, up", "bob", pass, Expect::WrongPass);
        check(&v, "nopass mallory, up", "mallory", pass, Expect::WrongPass);
        let r = v.raw().hello3_auth(b"bob", pass.as_bytes());
        assert_eq!(r.error(), Some(WRONGPASS), "HELLO AUTH bob {pass:?}: {r}");
    }
    // Bob's directory password works: the directory decides.
    check(&v, "nopass bob, LDAP pw", "bob", BOB.password, Expect::Ok);

    slapd.stop();
    for pass in tries.iter().chain([&BOB.password]) {
        check(&v, "nopass bob, down", "bob", pass, Expect::Unavailable);
        check(
            &v,
            "nopass mallory, down",
            "mallory",
            pass,
            Expect::Unavailable,
        );
        let r = v.raw().hello3_auth(b"bob", pass.as_bytes());
        assert_eq!(r.error(), Some(UNAVAILABLE), "HELLO AUTH bob {pass:?}: {r}");
    }
    assert_eq!(info_field(&v, "local_fallback_used"), 0);
    assert_eq!(info_field(&v, "allowed"), 1, "only bob's LDAP password");
}

/// `unavailable` covers a directory that accepts connections and never answers: once every
/// server timed out, the local password is tried.
#[test]
fn unavailable_also_applies_when_the_directory_times_out() {
    let (mut slapd, v) = setup("unavailable");
    check(&v, "up", "alice", ALICE.password, Expect::Ok);
    slapd.freeze();
    check(&v, "frozen, local pw", "alice", LOCAL_PW, Expect::Ok);
    // The first AUTH paid the timeout and marked the server down; the next one is answered at
    // once as unreachable, and the fallback applies the same way.
    let t = Instant::now();
    check(
        &v,
        "frozen, LDAP pw",
        "alice",
        ALICE.password,
        Expect::WrongPass,
    );
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(info_field(&v, "outage_timeout"), 1);
    assert_eq!(info_field(&v, "outage_unreachable"), 1);
    assert_eq!(info_field(&v, "local_fallback_used"), 2);
    slapd.thaw();
    wait_all_servers_up(&v);
    check(&v, "thawed, local pw", "alice", LOCAL_PW, Expect::WrongPass);
    check(&v, "thawed, LDAP pw", "alice", ALICE.password, Expect::Ok);
}

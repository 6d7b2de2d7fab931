//! End-to-end AUTH tests in bind mode (the default): the module binds as
//! `cn=<escaped username>,ou=people,dc=example,dc=test` with the client's password.
//!
//! Every test starts its own slapd and Valkey. Each asserts the exact reply, and where it proves
//! why, the module's INFO counters and what slapd's stats log saw.

mod common;

use common::*;
use std::thread;
use std::time::Duration;

const LOG_WAIT: Duration = Duration::from_secs(5);

// ---- helpers --------------------------------------------------------------------------------

/// Valkey 9.1 with the module in bind mode against `slapd`, then `extra` (name, value, ...).
fn start_valkey(slapd: &Slapd, extra: &[&str]) -> Valkey {
    Valkey::builder()
        .module(bind_args(&slapd.url(), extra))
        .start()
}

// ---- the basics ------------------------------------------------------------------------------

#[test]
fn right_password_logs_in_as_the_acl_user() {
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, &[]);
    add_acl_users(&v, &["alice"]);

    let (r, mut c) = login(&v, "alice", ALICE.password);
    assert_eq!(r, ok());
    assert_eq!(c.whoami(), "alice");
    assert_eq!(c.call(&[b"SET", b"k", b"v"]), ok(), "alice has +@all");
    assert_eq!(bind_dns(&slapd), [ALICE.dn]);
    assert_outcomes(&v, &[("allowed", 1)]);
}

#[test]
fn wrong_password_is_wrongpass() {
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, &[]);
    add_acl_users(&v, &["alice"]);

    for bad in ["alice-pw-not", "ALICE-PW", "alice-pw ", "x"] {
        let (r, mut c) = login(&v, "alice", bad);
        assert_eq!(r, wrongpass(), "password {bad:?}");
        assert_eq!(c.whoami(), "default", "still the default user");
    }
    assert_eq!(bind_dns(&slapd), [ALICE.dn; 4]);
    assert_outcomes(&v, &[("denied_bad_credentials", 4)]);
}

#[test]
fn unknown_directory_user_with_an_acl_user_is_wrongpass() {
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, &[]);
    add_acl_users(&v, &["mallory"]);

    let (r, mut c) = login(&v, "mallory", "any-password");
    assert_eq!(r, wrongpass());
    assert_eq!(c.whoami(), "default");
    // The bind was tried; slapd answers 49 for a DN that does not exist, so bind mode cannot
    // tell an unknown user from a wrong password.
    assert_eq!(
        bind_dns(&slapd),
        ["cn=mallory,ou=people,dc=example,dc=test"]
    );
    assert_outcomes(&v, &[("denied_bad_credentials", 1)]);
}

#[test]
fn no_acl_user_is_wrongpass_without_asking_the_directory() {
    let slapd = Slapd::start_default();
    // One worker: the fence login below reaches slapd after anything queued before it.
    let v = start_valkey(&slapd, &["workers", "1"]);
    add_acl_users(&v, &["alice"]);
    // carol is in the directory but has no Valkey ACL user: her right password, a wrong one
    // and HELLO AUTH are all refused before anything is sent to the directory.
    let (r, mut c) = login(&v, "carol", CAROL.password);
    assert_eq!(r, wrongpass());
    assert_eq!(c.whoami(), "default");
    assert_eq!(login(&v, "carol", "wrong").0, wrongpass());
    assert_eq!(
        v.raw()
            .hello3_auth(b"carol", CAROL.password.as_bytes())
            .error(),
        Some(WRONGPASS)
    );
    // A name the directory does not know either.
    assert_eq!(login(&v, "nobody", "any-password").0, wrongpass());
    assert_eq!(
        slapd.count_ops("ACCEPT"),
        0,
        "no connection to the directory"
    );

    // The fence: alice's bind is the first and only operation slapd ever saw.
    assert_eq!(login(&v, "alice", ALICE.password).0, ok());
    assert_eq!(slapd.wait_ops("BIND", 1, LOG_WAIT), 1);
    assert_eq!(bind_dns(&slapd), [ALICE.dn]);
    assert_eq!(slapd.count_ops("SRCH"), 0);
    assert_outcomes(&v, &[("denied_no_acl_user", 4), ("allowed", 1)]);
}

/// The ACL user is checked again when the directory's answer comes back: one deleted while
/// the bind was on its way cannot log in, although the directory accepted the password.
#[test]
fn acl_user_deleted_while_the_directory_checks_is_wrongpass() {
    let mut slapd = Slapd::start_default();
    let v = start_valkey(&slapd, &["workers", "1"]);
    add_acl_users(&v, &["bob"]);
    slapd.freeze();
    let mut waiting = v.raw();
    waiting
        .send(&[b"AUTH", b"bob", BOB.password.as_bytes()])
        .expect("send AUTH");
    // The AUTH passed the first ACL check and waits on the frozen directory.
    assert!(
        waiting
            .try_read_timeout(Duration::from_millis(300))
            .is_err(),
        "the AUTH was answered while the directory was frozen"
    );
    assert_eq!(
        v.raw().call(&[b"ACL", b"DELUSER", b"bob"]),
        Reply::Int(1),
        "ACL DELUSER bob"
    );
    slapd.thaw();
    assert_eq!(waiting.read(), wrongpass());
    assert_eq!(waiting.whoami(), "default");
    assert_eq!(bind_dns(&slapd), [BOB.dn]);
    assert_eq!(
        slapd.wait_ops("mech=SIMPLE", 1, LOG_WAIT),
        1,
        "the directory accepted bob's bind"
    );
    assert_outcomes(&v, &[("denied_no_acl_user", 1)]);
}

#[test]
fn disabled_acl_user_is_wrongpass() {
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, &[]);
    acl_setuser(&v, &["bob", "off", "+@all", "~*"]);

    let (r, mut c) = login(&v, "bob", BOB.password);
    assert_eq!(r, wrongpass());
    assert_eq!(c.whoami(), "default");
    assert_eq!(
        slapd.count_ops("mech=SIMPLE"),
        1,
        "the directory accepted bob"
    );
    assert_outcomes(&v, &[("denied_no_acl_user", 1)]);

    // Enabled again: the same login works.
    acl_setuser(&v, &["bob", "on"]);
    let (r, mut c) = login(&v, "bob", BOB.password);
    assert_eq!(r, ok());
    assert_eq!(c.whoami(), "bob");
}

#[test]
fn empty_password_is_refused_without_asking_the_directory() {
    let slapd = Slapd::builder().global("allow bind_anon_dn").start();
    // The directory itself WOULD accept alice's DN with an empty password.
    assert_eq!(slapd.bind(ALICE.dn, "").unwrap(), 0);
    let v = start_valkey(&slapd, &["workers", "1"]);
    add_acl_users(&v, &["alice", "bob"]);
    let binds_before = slapd.count_ops("BIND");

    let (r, mut c) = login(&v, "alice", "");
    assert_eq!(r, wrongpass());
    assert_eq!(c.whoami(), "default");

    // A later login is the fence: once slapd has logged bob's bind, any bind for the empty
    // password (queued before bob's on the single worker) would have been logged too.
    assert_eq!(login(&v, "bob", BOB.password).0, ok());
    assert_eq!(
        slapd.wait_ops("BIND", binds_before + 1, LOG_WAIT),
        binds_before + 1
    );
    assert_eq!(bind_dns(&slapd).last().map(String::as_str), Some(BOB.dn));
    assert_outcomes(&v, &[("denied_empty_password", 1), ("allowed", 1)]);
}

// ---- HELLO -----------------------------------------------------------------------------------

#[test]
fn hello_auth_logs_in_with_resp3_and_resp2() {
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, &[]);
    add_acl_users(&v, &["alice", "bob"]);

    let mut c3 = v.raw();
    let hello = c3.hello3_auth(b"alice", ALICE.password.as_bytes());
    assert!(matches!(hello, Reply::Map(_)), "{hello:?}");
    assert_eq!(hello.get("proto"), Some(&Reply::Int(3)), "{hello:?}");
    assert_eq!(c3.whoami(), "alice");

    let mut c2 = v.raw();
    let hello = c2.call(&[b"HELLO", b"2", b"AUTH", b"bob", BOB.password.as_bytes()]);
    assert!(matches!(hello, Reply::Array(_)), "{hello:?}");
    assert_eq!(hello.get("proto"), Some(&Reply::Int(2)), "{hello:?}");
    assert_eq!(c2.whoami(), "bob");

    assert_outcomes(&v, &[("allowed", 2)]);
}

#[test]
fn hello_auth_with_a_wrong_password_is_wrongpass() {
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, &[]);
    add_acl_users(&v, &["alice"]);

    let mut c = v.raw();
    assert_eq!(c.hello3_auth(b"alice", b"wrong"), wrongpass());
    assert_eq!(
        c.call(&[b"HELLO", b"2", b"AUTH", b"alice", b"wrong"]),
        wrongpass()
    );
    // The failed HELLO changed nothing: still RESP2 and the default user.
    assert_eq!(
        c.call(&[b"ACL", b"WHOAMI"]),
        Reply::Bulk(b"default".to_vec())
    );
    assert_eq!(bind_dns(&slapd), [ALICE.dn; 2]);
    assert_outcomes(&v, &[("denied_bad_credentials", 2)]);
}

// ---- exempt users and an inactive module ----------------------------------------------------

#[test]
fn exempt_default_user_uses_its_valkey_password() {
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, &[]);
    let mut admin = v.raw();
    assert!(admin
        .call(&[b"CONFIG", b"SET", b"requirepass", b"localpw"])
        .is_ok());

    let mut c = v.raw();
    assert_eq!(c.auth(b"default", b"localpw"), ok());
    assert_eq!(c.whoami(), "default");
    let mut c = v.raw();
    assert_eq!(c.call(&[b"AUTH", b"localpw"]), ok(), "one-argument AUTH");
    assert_eq!(c.whoami(), "default");
    let mut c = v.raw();
    assert_eq!(c.auth(b"default", b"wrong"), wrongpass());

    assert_eq!(slapd.count_ops("ACCEPT"), 0, "no LDAP traffic at all");
    assert_outcomes_with(&mut admin, &[("exempt_passthrough", 3)]);
}

#[test]
fn users_added_to_exempt_users_use_their_valkey_password() {
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, &["workers", "1"]);
    acl_setuser(&v, &["bob", "on", ">bob-local", "+@all", "~*"]);

    // Handled by the module: the directory password works, the Valkey one does not.
    assert_eq!(login(&v, "bob", BOB.password).0, ok());
    assert_eq!(login(&v, "bob", "bob-local").0, wrongpass());
    assert_eq!(slapd.count_ops("BIND"), 2);

    config_set_ok(&v, "valkeyauth.exempt_users", "default,bob");

    // Exempt: the other way round, and the directory is not asked.
    let (r, mut c) = login(&v, "bob", "bob-local");
    assert_eq!(r, ok());
    assert_eq!(c.whoami(), "bob");
    assert_eq!(login(&v, "bob", BOB.password).0, wrongpass());
    assert_eq!(slapd.count_ops("BIND"), 2, "no bind for an exempt user");
    assert_outcomes(
        &v,
        &[
            ("allowed", 1),
            ("denied_bad_credentials", 1),
            ("exempt_passthrough", 2),
        ],
    );

    // Listing bob alone drops default from the list: allowed, with a warning in the log.
    assert!(!v.log().contains("exempt_users does not list default"));
    config_set_ok(&v, "valkeyauth.exempt_users", "bob");
    assert!(v.wait_for_log(
        "WARNING: exempt_users does not list default",
        Duration::from_secs(5)
    ));
}

#[test]
fn without_servers_auth_is_plain_valkey() {
    let v = Valkey::builder().module(["servers", ""]).start();
    acl_setuser(&v, &["alice", "on", ">localpw", "+@all", "~*"]);

    let (r, mut c) = login(&v, "alice", "localpw");
    assert_eq!(r, ok());
    assert_eq!(c.whoami(), "alice");
    assert_eq!(login(&v, "alice", ALICE.password).0, wrongpass());
    assert_eq!(
        v.raw().hello3_auth(b"alice", b"localpw").get("proto"),
        Some(&Reply::Int(3))
    );

    // The module saw nothing, not even as exempt.
    let info = counters(&v);
    assert_eq!(info.get("active"), Some(&0), "{info:?}");
    assert_eq!(info.get("servers"), Some(&0), "{info:?}");
    assert_outcomes(&v, &[]);
}

// ---- transactions ----------------------------------------------------------------------------

#[test]
fn auth_inside_multi_is_refused_and_the_server_keeps_working() {
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, &[]);
    add_acl_users(&v, &["alice"]);

    let mut c = v.raw();
    assert_eq!(c.call(&[b"MULTI"]), ok());
    assert_eq!(
        c.auth(b"alice", ALICE.password.as_bytes()),
        Reply::Simple("QUEUED".into())
    );
    let binds = slapd.count_ops("BIND");
    assert_eq!(
        c.call(&[b"EXEC"]),
        Reply::Array(vec![Reply::Error(
            "ERR valkeyauth: AUTH inside MULTI is not supported".into()
        )])
    );
    assert_eq!(
        slapd.count_ops("BIND"),
        binds,
        "no password went to the directory"
    );
    assert_eq!(c.whoami(), "default", "the AUTH in MULTI did not log in");

    // The same connection and others keep working.
    assert_eq!(c.call(&[b"PING"]), Reply::Simple("PONG".into()));
    assert_eq!(c.auth(b"alice", ALICE.password.as_bytes()), ok());
    assert_eq!(c.whoami(), "alice");
    assert_eq!(v.raw().call(&[b"PING"]), Reply::Simple("PONG".into()));
}

// ---- connections and concurrency ------------------------------------------------------------

#[test]
fn one_worker_reuses_one_directory_connection() {
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, &["workers", "1"]);
    add_acl_users(&v, &["alice", "bob"]);

    let mut c = v.raw();
    for i in 0..20 {
        let (user, right) = if i % 2 == 0 {
            (ALICE, true)
        } else {
            (BOB, i % 3 == 0)
        };
        let pass = if right { user.password } else { "wrong" };
        let want = if right { ok() } else { wrongpass() };
        assert_eq!(
            c.auth(user.name.as_bytes(), pass.as_bytes()),
            want,
            "AUTH #{i}"
        );
    }
    assert_eq!(slapd.count_ops("BIND"), 20);
    // slapd logs one ACCEPT per connection.
    assert_eq!(slapd.count_ops("ACCEPT"), 1, "{:#?}", slapd.ops("ACCEPT"));
    assert_eq!(slapd.count_ops("closed"), 0, "the connection stays open");
}

#[test]
fn many_concurrent_clients_all_get_the_right_answer() {
    const THREADS: usize = 20;
    const ROUNDS: usize = 20;
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, &[]);
    add_acl_users(&v, &["alice", "bob"]);

    thread::scope(|s| {
        for t in 0..THREADS {
            let v = &v;
            s.spawn(move || {
                let user = if t % 2 == 0 { ALICE } else { BOB };
                let mut c = v.raw();
                for i in 0..ROUNDS {
                    let right = (t + i) % 2 == 0;
                    let pass = if right {
                        user.password
                    } else {
                        "not-the-password"
                    };
                    let want = if right { ok() } else { wrongpass() };
                    let got = c.auth(user.name.as_bytes(), pass.as_bytes());
                    assert_eq!(got, want, "thread {t} round {i} ({})", user.name);
                    if right {
                        assert_eq!(c.whoami(), user.name);
                    }
                }
            });
        }
    });
    let half = (THREADS * ROUNDS / 2) as u64;
    assert_outcomes(&v, &[("allowed", half), ("denied_bad_credentials", half)]);
    // Identical AUTHs in flight at the same moment share one bind.
    let binds = slapd.count_ops("BIND") as u64;
    let coalesced = info_field(&v, "coalesced");
    assert_eq!(
        binds + coalesced,
        (THREADS * ROUNDS) as u64,
        "{binds} binds, {coalesced} coalesced"
    );
}

// ---- Valkey 8.1 ------------------------------------------------------------------------------

#[test]
fn valkey_8_1_right_wrong_and_hello3() {
    let slapd = Slapd::start_default();
    let v = Valkey::builder()
        .version(Version::V8_1)
        .module(bind_args(&slapd.url(), NO_ARGS))
        .start();
    let server = v.raw().call(&[b"INFO", b"server"]).text().unwrap();
    assert!(server.contains("valkey_version:8.1."), "{server}");
    add_acl_users(&v, &["alice"]);

    let (r, mut c) = login(&v, "alice", ALICE.password);
    assert_eq!(r, ok());
    assert_eq!(c.whoami(), "alice");
    assert_eq!(login(&v, "alice", "wrong").0, wrongpass());
    let mut c = v.raw();
    let hello = c.hello3_auth(b"alice", ALICE.password.as_bytes());
    assert_eq!(hello.get("proto"), Some(&Reply::Int(3)), "{hello:?}");
    assert_eq!(c.whoami(), "alice");
    assert_eq!(v.raw().hello3_auth(b"alice", b"wrong"), wrongpass());
    assert_outcomes(&v, &[("allowed", 2), ("denied_bad_credentials", 2)]);
}

//! End-to-end AUTH tests in search+bind mode: the module searches for `(uid=<username>)`
//! (anonymously or as a service account), then binds as the one entry found.
//!
//! Every test starts its own slapd and Valkey. Each asserts the exact reply, and where it proves
//! why, the module's INFO counters and what slapd's stats log saw.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

// ---- helpers --------------------------------------------------------------------------------

/// Valkey 9.1 with the module in search+bind mode against `slapd`.
fn start_valkey<S: AsRef<str>>(slapd: &Slapd, extra: &[S]) -> Valkey {
    Valkey::builder()
        .module(search_args(&slapd.url(), extra))
        .start()
}

/// A mode-0600 file holding `password` and a trailing newline, as an editor would write it.
fn password_file(dir: &TempDir, password: &str) -> PathBuf {
    let path = dir.path().join("service.pw");
    fs::write(&path, format!("{password}\n")).expect("write password file");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
    path
}

/// [`service_args`] with one worker, so that requests and connections come in a known order.
fn service_args_one_worker(file: &Path) -> Vec<String> {
    let mut args = service_args(file);
    args.extend(["workers".to_owned(), "1".to_owned()]);
    args
}

/// `ldapsearch` from [`SUFFIX`] for `filter`, anonymously or as `(dn, password)`: the exit code
/// (the LDAP result code) and the DNs found.
fn ldapsearch(slapd: &Slapd, who: Option<(&str, &str)>, filter: &str) -> (i32, Vec<String>) {
    let mut cmd = Command::new("ldapsearch");
    cmd.args(["-x", "-LLL", "-o", "ldif-wrap=no", "-H", &slapd.url()]);
    if let Some((dn, pw)) = who {
        cmd.args(["-D", dn, "-w", pw]);
    }
    let out = cmd
        .args(["-b", SUFFIX, "-s", "sub", filter, "1.1"])
        .stdin(Stdio::null())
        .output()
        .expect("run ldapsearch");
    let dns = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("dn: ").map(str::to_owned))
        .collect();
    (out.status.code().unwrap_or(-1), dns)
}

/// A slapd where only the service account may search: anonymous may only authenticate.
fn slapd_searchable_only_by_service_account() -> Slapd {
    Slapd::builder()
        .no_default_acls()
        .acl("access to attrs=userPassword by anonymous auth by * none")
        .acl(format!(
            "access to * by dn.exact=\"{}\" read by * none",
            SEARCHER.dn
        ))
        .start()
}

// ---- anonymous search ------------------------------------------------------------------------

#[test]
fn anonymous_search_finds_the_user_by_uid() {
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, NO_ARGS);
    add_acl_users(&v, &["alice"]);

    let (r, mut c) = login(&v, "alice", ALICE.password);
    assert_eq!(r, ok());
    assert_eq!(c.whoami(), "alice");
    let (r, mut c) = login(&v, "alice", "wrong");
    assert_eq!(r, wrongpass());
    assert_eq!(c.whoami(), "default");

    assert_eq!(
        search_filters(&slapd),
        ["(&(objectClass=*)(uid=alice))"; 2],
        "searched from {SUFFIX}: {:#?}",
        slapd.ops("SRCH")
    );
    assert!(slapd.ops("SRCH")[0].contains(&format!("base=\"{SUFFIX}\" scope=2")));
    assert_eq!(bind_dns(&slapd), [ALICE.dn; 2], "bound as the entry found");
    assert_outcomes(&v, &[("allowed", 1), ("denied_bad_credentials", 1)]);
}

#[test]
fn the_bind_dn_comes_from_the_entry_not_from_the_username() {
    // uid, cn and the DN all differ: only a search can find this entry.
    let dave_dn = "cn=Dave Jones,ou=staff,dc=example,dc=test";
    let slapd = Slapd::builder()
        .extra_ldif(&ldif_entry(
            dave_dn,
            &[
                ("objectClass", b"inetOrgPerson"),
                ("cn", b"Dave Jones"),
                ("sn", b"Jones"),
                ("uid", b"djones"),
                ("userPassword", b"dave-pw"),
            ],
        ))
        .start();
    let v = start_valkey(&slapd, NO_ARGS);
    add_acl_users(&v, &["djones"]);

    let (r, mut c) = login(&v, "djones", "dave-pw");
    assert_eq!(r, ok());
    assert_eq!(c.whoami(), "djones");
    assert_eq!(bind_dns(&slapd), [dave_dn]);
    assert_outcomes(&v, &[("allowed", 1)]);
}

#[test]
fn unknown_uid_is_denied_without_a_user_bind() {
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, NO_ARGS);
    add_acl_users(&v, &["mallory"]);

    let (r, mut c) = login(&v, "mallory", "any-password");
    assert_eq!(r, wrongpass());
    assert_eq!(c.whoami(), "default");
    assert_eq!(search_filters(&slapd), ["(&(objectClass=*)(uid=mallory))"]);
    assert_eq!(slapd.count_ops("BIND"), 0, "nothing to bind as");
    assert_outcomes(&v, &[("denied_unknown_user", 1)]);
}

#[test]
fn no_acl_user_is_refused_before_the_search() {
    let slapd = Slapd::start_default();
    let dir = TempDir::new("search-bind");
    let file = password_file(&dir, SEARCHER.password);
    let v = start_valkey(&slapd, &service_args_one_worker(&file));
    add_acl_users(&v, &["alice"]);

    // carol is in the directory, mallory is not; neither has an ACL user.
    for (user, pass) in [
        ("carol", CAROL.password),
        ("carol", "wrong"),
        ("mallory", "any-password"),
    ] {
        let (r, mut c) = login(&v, user, pass);
        assert_eq!(r, wrongpass(), "{user}");
        assert_eq!(c.whoami(), "default");
    }
    assert_eq!(
        slapd.count_ops("ACCEPT"),
        0,
        "no connection to the directory"
    );
    // The fence (one worker): alice's search and bind are all the directory ever saw.
    assert_eq!(login(&v, "alice", ALICE.password).0, ok());
    assert_eq!(slapd.wait_ops("BIND", 2, Duration::from_secs(5)), 2);
    assert_eq!(search_filters(&slapd), ["(&(objectClass=*)(uid=alice))"]);
    assert_eq!(bind_dns(&slapd), [SEARCHER.dn, ALICE.dn]);
    assert_outcomes(&v, &[("denied_no_acl_user", 3), ("allowed", 1)]);
}

// ---- the service account ---------------------------------------------------------------------

#[test]
fn service_account_searches_where_anonymous_cannot() {
    let slapd = slapd_searchable_only_by_service_account();
    // The directory's own view: anonymous finds nothing, the service account finds alice.
    let (rc, dns) = ldapsearch(&slapd, None, "(uid=alice)");
    assert_eq!(
        (rc, dns),
        (32, vec![]),
        "anonymous: the base is hidden (no such object)"
    );
    let (rc, dns) = ldapsearch(
        &slapd,
        Some((SEARCHER.dn, SEARCHER.password)),
        "(uid=alice)",
    );
    assert_eq!((rc, dns), (0, vec![ALICE.dn.to_owned()]));
    // ... and alice may still authenticate.
    assert_eq!(slapd.bind(ALICE.dn, ALICE.password).unwrap(), 0);
    let binds_before = slapd.count_ops("BIND");

    // Anonymous search mode: the search is refused, so nobody logs in. slapd hides the base
    // from anonymous (32); the module reports a search it cannot run as a directory problem.
    let anonymous = start_valkey(&slapd, NO_ARGS);
    add_acl_users(&anonymous, &["alice"]);
    let (r, mut c) = login(&anonymous, "alice", ALICE.password);
    assert_eq!(r, unavailable());
    assert_eq!(c.whoami(), "default");
    assert_eq!(login(&anonymous, "alice", "wrong").0, unavailable());
    assert_eq!(slapd.count_ops("BIND"), binds_before, "no user bind");
    assert_outcomes(&anonymous, &[("outage_directory_error", 2)]);

    // The same directory with the service account: right and wrong passwords as usual.
    let dir = TempDir::new("search-bind");
    let file = password_file(&dir, SEARCHER.password);
    let service = start_valkey(&slapd, &service_args_one_worker(&file));
    add_acl_users(&service, &["alice"]);
    let (r, mut c) = login(&service, "alice", ALICE.password);
    assert_eq!(r, ok());
    assert_eq!(c.whoami(), "alice");
    assert_eq!(login(&service, "alice", "wrong").0, wrongpass());
    assert_eq!(
        bind_dns(&slapd)[binds_before..],
        [SEARCHER.dn, ALICE.dn, ALICE.dn]
    );
    assert_outcomes(&service, &[("allowed", 1), ("denied_bad_credentials", 1)]);
}

#[test]
fn wrong_service_password_is_an_outage_for_every_user() {
    let slapd = Slapd::start_default();
    let dir = TempDir::new("search-bind");
    let file = password_file(&dir, "not-the-searcher-pw");
    let v = start_valkey(&slapd, &service_args(&file));
    add_acl_users(&v, &["alice", "bob", "mallory"]);

    for (user, pass) in [
        ("alice", ALICE.password),
        ("bob", "wrong"),
        ("mallory", "any-password"),
    ] {
        let (r, mut c) = login(&v, user, pass);
        assert_eq!(r, unavailable(), "{user}");
        assert_eq!(c.whoami(), "default");
    }
    // Only the service account ever bound, and no search ran.
    let dns = bind_dns(&slapd);
    assert!(
        !dns.is_empty() && dns.iter().all(|dn| dn == SEARCHER.dn),
        "{dns:#?}"
    );
    assert_eq!(slapd.count_ops("SRCH"), 0);
    assert_eq!(slapd.count_ops("mech=SIMPLE"), 0, "no bind succeeded");
    assert_outcomes(&v, &[("outage_directory_error", 3)]);
    assert!(!v.log().contains("not-the-searcher-pw"), "{}", v.log());
}

// ---- what the search may find ----------------------------------------------------------------

#[test]
fn two_entries_with_the_same_uid_are_ambiguous() {
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, &["workers", "1"]);
    add_acl_users(&v, &["twin"]);

    // From the suffix, uid=twin finds ou=people's and ou=staff's: neither password logs in.
    for pass in [TWIN_PEOPLE.password, TWIN_STAFF.password] {
        let (r, mut c) = login(&v, "twin", pass);
        assert_eq!(r, wrongpass());
        assert_eq!(c.whoami(), "default");
    }
    assert_eq!(search_filters(&slapd).len(), 2);
    assert!(
        !bind_dns(&slapd).iter().any(|dn| dn.starts_with("cn=twin,")),
        "no bind as either twin: {:#?}",
        bind_dns(&slapd)
    );
    assert_outcomes(&v, &[("denied_ambiguous_user", 2)]);

    // Searching only ou=people finds one twin, whose password then works.
    config_set_ok(&v, "valkeyauth.search_base", PEOPLE);
    let (r, mut c) = login(&v, "twin", TWIN_PEOPLE.password);
    assert_eq!(r, ok());
    assert_eq!(c.whoami(), "twin");
    assert_eq!(login(&v, "twin", TWIN_STAFF.password).0, wrongpass());
    assert_eq!(bind_dns(&slapd), [TWIN_PEOPLE.dn; 2]);
}

#[test]
fn search_filter_restricts_which_entries_count() {
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, &["search_filter", "(objectClass=inetOrgPerson)"]);
    add_acl_users(&v, &["alice"]);

    let (r, mut c) = login(&v, "alice", ALICE.password);
    assert_eq!(r, ok());
    assert_eq!(c.whoami(), "alice");
    assert_eq!(
        search_filters(&slapd),
        ["(&(objectClass=inetOrgPerson)(uid=alice))"]
    );

    // A filter that no person matches: alice is not found, whatever her password.
    config_set_ok(&v, "valkeyauth.search_filter", "(objectClass=groupOfNames)");
    let (r, mut c) = login(&v, "alice", ALICE.password);
    assert_eq!(r, wrongpass());
    assert_eq!(c.whoami(), "default");
    assert_eq!(
        search_filters(&slapd)[1],
        "(&(objectClass=groupOfNames)(uid=alice))"
    );
    assert_eq!(
        bind_dns(&slapd),
        [ALICE.dn],
        "no bind after the empty search"
    );
    assert_outcomes(&v, &[("allowed", 1), ("denied_unknown_user", 1)]);
}

// ---- round trips ---------------------------------------------------------------------------

#[test]
fn a_login_costs_one_search_and_one_bind() {
    const N: usize = 12;
    let slapd = Slapd::start_default();
    let dir = TempDir::new("search-bind");
    let file = password_file(&dir, SEARCHER.password);
    let v = start_valkey(&slapd, &service_args_one_worker(&file));
    add_acl_users(&v, &["alice", "bob"]);

    let mut c = v.raw();
    for i in 0..N {
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
    assert_eq!(slapd.count_ops("SRCH"), N);
    let dns = bind_dns(&slapd);
    assert_eq!(dns.len(), N + 1, "{dns:#?}");
    assert_eq!(
        dns[0], SEARCHER.dn,
        "one service bind, when the connection opens"
    );
    assert!(dns[1..].iter().all(|dn| dn != SEARCHER.dn), "{dns:#?}");
    assert_eq!(
        slapd.count_ops("ACCEPT"),
        2,
        "one search and one bind connection"
    );
}

// ---- Valkey 8.1 ------------------------------------------------------------------------------

#[test]
fn valkey_8_1_search_bind_right_wrong_and_hello3() {
    let slapd = Slapd::start_default();
    let dir = TempDir::new("search-bind");
    let file = password_file(&dir, SEARCHER.password);
    let v = Valkey::builder()
        .version(Version::V8_1)
        .module(search_args(&slapd.url(), &service_args(&file)))
        .start();
    let server = v.raw().call(&[b"INFO", b"server"]).text().unwrap();
    assert!(server.contains("valkey_version:8.1."), "{server}");
    add_acl_users(&v, &["alice", "twin"]);

    let (r, mut c) = login(&v, "alice", ALICE.password);
    assert_eq!(r, ok());
    assert_eq!(c.whoami(), "alice");
    assert_eq!(login(&v, "alice", "wrong").0, wrongpass());
    let mut c = v.raw();
    let hello = c.hello3_auth(b"alice", ALICE.password.as_bytes());
    assert_eq!(hello.get("proto"), Some(&Reply::Int(3)), "{hello:?}");
    assert_eq!(c.whoami(), "alice");
    assert_eq!(login(&v, "twin", TWIN_PEOPLE.password).0, wrongpass());
    assert_outcomes(
        &v,
        &[
            ("allowed", 2),
            ("denied_bad_credentials", 1),
            ("denied_ambiguous_user", 1),
        ],
    );
}

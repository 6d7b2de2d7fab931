//! End-to-end tests of what a client can put into AUTH: usernames that need escaping, exact
//! password bytes, invalid usernames and hostile input. Every case runs in bind mode and in
//! search+bind mode (`<case>::bind`, `<case>::search_bind`).
//!
//! slapd's stats log shows each DN and filter in slapd's own normalised form (hex escapes such
//! as `\2C`, and with the spaces around a filter value trimmed), so the expected log forms below
//! are slapd's renderings of the fixture entries.

mod common;

use common::*;
use std::time::Duration;

const LOG_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Bind as `cn=<username>,ou=people,dc=example,dc=test`.
    Bind,
    /// Search `(uid=<username>)` anonymously from [`SUFFIX`], then bind as the entry.
    SearchBind,
}

/// Runs `$case(Mode::Bind)` and `$case(Mode::SearchBind)` as the tests `$case::bind` and
/// `$case::search_bind`.
macro_rules! in_both_modes {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[test]
            fn bind() {
                super::$case(super::Mode::Bind)
            }
            #[test]
            fn search_bind() {
                super::$case(super::Mode::SearchBind)
            }
        }
    )*};
}

in_both_modes!(
    escaped_usernames_log_in_as_their_own_entry,
    crafted_usernames_never_match_another_entry,
    non_ascii_username_logs_in,
    password_bytes_are_passed_exactly,
    invalid_usernames_never_reach_the_directory,
    username_of_512_bytes_reaches_the_directory,
    hostile_input_neither_crashes_nor_leaks,
    one_megabyte_password_is_a_wrong_password_not_an_outage,
    valkey_8_1_escaping_and_invalid_usernames,
);

// ---- helpers --------------------------------------------------------------------------------

/// Valkey 9.1 with the module in `mode` against `slapd`, and one worker so that the directory
/// sees requests in the order they were sent.
fn start_valkey(slapd: &Slapd, mode: Mode) -> Valkey {
    start_version(slapd, mode, Version::V9_1)
}

fn start_version(slapd: &Slapd, mode: Mode, version: Version) -> Valkey {
    let extra = ["workers", "1"];
    let args = match mode {
        Mode::Bind => bind_args(&slapd.url(), &extra),
        Mode::SearchBind => search_args(&slapd.url(), &extra),
    };
    Valkey::builder()
        .version(version)
        .module(args)
        .config("loglevel debug")
        .start()
}

/// The counter of a wrong password for a user the directory knows nothing about: bind mode
/// cannot tell (slapd answers 49 for a missing DN), search+bind finds no entry.
fn no_such_user(mode: Mode) -> &'static str {
    match mode {
        Mode::Bind => "denied_bad_credentials",
        Mode::SearchBind => "denied_unknown_user",
    }
}

/// The filter the module sends for `value`, as slapd logs it.
fn logged_filter(value: &str) -> String {
    format!("(&(objectClass=*)(uid={value}))")
}

/// Logs in as `user` with its password on a new connection and waits until slapd has logged
/// that bind: every request queued before it (one worker) has reached slapd by then.
fn fence(v: &Valkey, slapd: &Slapd, user: FixtureUser) {
    let binds = slapd.count_ops("BIND");
    assert_eq!(login(v, user.name, user.password).0, ok(), "fence login");
    assert_eq!(slapd.wait_ops("BIND", binds + 1, LOG_WAIT), binds + 1);
}

/// A fixture user and how slapd logs its entry's DN and its uid in a filter.
struct Escaped {
    user: FixtureUser,
    logged_dn: &'static str,
    logged_uid: &'static str,
}

const ESCAPED: [Escaped; 8] = [
    Escaped {
        user: STAR,
        logged_dn: "cn=star*user,ou=people,dc=example,dc=test",
        logged_uid: "star\\2Auser",
    },
    Escaped {
        user: COMMA,
        logged_dn: "cn=comma\\2Cuser,ou=people,dc=example,dc=test",
        logged_uid: "comma,user",
    },
    Escaped {
        user: PLUS,
        logged_dn: "cn=plus\\2Buser,ou=people,dc=example,dc=test",
        logged_uid: "plus+user",
    },
    Escaped {
        user: BACKSLASH,
        logged_dn: "cn=back\\5Cuser,ou=people,dc=example,dc=test",
        logged_uid: "back\\5Cuser",
    },
    Escaped {
        user: HASH,
        logged_dn: "cn=\\23hashuser,ou=people,dc=example,dc=test",
        logged_uid: "#hashuser",
    },
    Escaped {
        user: SPACES,
        // The spaces are kept (escaped); slapd logs a filter value trimmed.
        logged_dn: "cn=\\20spaceuser\\20,ou=people,dc=example,dc=test",
        logged_uid: "spaceuser",
    },
    Escaped {
        user: PARENS,
        logged_dn: "cn=paren)(user,ou=people,dc=example,dc=test",
        logged_uid: "paren\\29\\28user",
    },
    Escaped {
        user: SPECIALS,
        logged_dn: "cn=q\\22\\3C\\3B\\3E\\3Duser,ou=people,dc=example,dc=test",
        logged_uid: "q\"<;>=user",
    },
];

// ---- usernames that need escaping -------------------------------------------------------------

fn escaped_usernames_log_in_as_their_own_entry(mode: Mode) {
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, mode);
    // Valkey refuses ACL user names with spaces, so " spaceuser " has no ACL user: it is
    // refused before the directory (denied_no_acl_user) with any password.
    let mut acl_names: Vec<&str> = ESCAPED
        .iter()
        .map(|e| e.user.name)
        .filter(|n| !n.contains(' '))
        .collect();
    acl_names.push(ALICE.name);
    add_acl_users(&v, &acl_names);

    for e in &ESCAPED {
        let u = e.user;
        let (binds, searches) = (bind_dns(&slapd).len(), search_filters(&slapd).len());
        let (r, mut c) = login(&v, u.name, u.password);
        if u == SPACES {
            assert_eq!(r, wrongpass(), "{:?}: no ACL user", u.name);
            assert_eq!(c.whoami(), "default");
        } else {
            assert_eq!(r, ok(), "{:?} with its password", u.name);
            assert_eq!(c.whoami(), u.name);
        }
        assert_eq!(login(&v, u.name, "wrong-pw").0, wrongpass(), "{:?}", u.name);

        if u == SPACES {
            // Nothing reached the directory: after the fence, alice's bind is all it saw.
            fence(&v, &slapd, ALICE);
            assert_eq!(bind_dns(&slapd)[binds..], [ALICE.dn], "{:?}", u.name);
            let filters = &search_filters(&slapd)[searches..];
            match mode {
                Mode::Bind => assert!(filters.is_empty(), "{filters:?}"),
                Mode::SearchBind => assert_eq!(filters, [logged_filter("alice")]),
            }
            continue;
        }
        assert_eq!(
            bind_dns(&slapd)[binds..],
            [e.logged_dn; 2],
            "{:?} binds as its own entry",
            u.name
        );
        let filters = &search_filters(&slapd)[searches..];
        match mode {
            Mode::Bind => assert!(filters.is_empty(), "{filters:?}"),
            Mode::SearchBind => assert_eq!(
                filters,
                [logged_filter(e.logged_uid), logged_filter(e.logged_uid)]
            ),
        }
    }
    let n = ESCAPED.len() as u64;
    // n - 1 escaped users and the fence's alice logged in.
    assert_outcomes(
        &v,
        &[
            ("allowed", n),
            ("denied_no_acl_user", 2),
            ("denied_bad_credentials", n - 1),
        ],
    );
}

fn crafted_usernames_never_match_another_entry(mode: Mode) {
    // Each would find or bind as alice, star*user or paren)(user if it reached a DN or filter
    // unescaped. Each is a Valkey ACL user, so only the directory can refuse them.
    const CRAFTED: [&str; 10] = [
        "*",
        "alic*",
        "star*",
        "*user",
        "alice)(uid=*",
        "*)(uid=*))(|(uid=*",
        "paren)(uid=*",
        "alice\\",
        "alice,ou=people,dc=example,dc=test",
        "alice+sn=alice",
    ];
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, mode);
    add_acl_users(&v, &CRAFTED);

    for name in CRAFTED {
        for u in [ALICE, STAR, PARENS] {
            let (r, mut c) = login(&v, name, u.password);
            assert_eq!(r, wrongpass(), "{name:?} with {}'s password", u.name);
            assert_eq!(c.whoami(), "default");
        }
    }
    let real: Vec<&str> = [ALICE, STAR, PARENS].iter().map(|u| u.dn).collect();
    let dns = bind_dns(&slapd);
    assert!(
        dns.iter().all(|dn| !real.contains(&dn.as_str())),
        "bound as a real entry: {dns:#?}"
    );
    match mode {
        Mode::Bind => assert_eq!(dns.len(), 3 * CRAFTED.len(), "{dns:#?}"),
        Mode::SearchBind => assert!(dns.is_empty(), "no entry found, nothing bound: {dns:#?}"),
    }
    assert_outcomes(&v, &[(no_such_user(mode), 3 * CRAFTED.len() as u64)]);
}

fn non_ascii_username_logs_in(mode: Mode) {
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, mode);
    add_acl_users(&v, &[ZOE.name]);

    let (r, mut c) = login(&v, ZOE.name, ZOE.password);
    assert_eq!(r, ok());
    assert_eq!(c.whoami(), "zoë");
    let mut c = v.raw();
    let hello = c.hello3_auth(ZOE.name.as_bytes(), ZOE.password.as_bytes());
    assert_eq!(hello.get("proto"), Some(&Reply::Int(3)), "{hello:?}");
    assert_eq!(c.whoami(), "zoë");
    assert_eq!(login(&v, ZOE.name, "wrong").0, wrongpass());
    // The name's Latin-1 bytes are not UTF-8: refused before the directory.
    assert_eq!(login(&v, latin1(ZOE.name), ZOE.password).0, wrongpass());

    assert_eq!(bind_dns(&slapd), [ZOE.dn; 3]);
    if mode == Mode::SearchBind {
        assert_eq!(search_filters(&slapd), vec![logged_filter("zo\\C3\\AB"); 3]);
    }
    assert_outcomes(
        &v,
        &[
            ("allowed", 2),
            ("denied_bad_credentials", 1),
            ("denied_invalid_username", 1),
        ],
    );
}

// ---- passwords ---------------------------------------------------------------------------------

fn password_bytes_are_passed_exactly(mode: Mode) {
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, mode);
    add_acl_users(&v, &[UTF8.name, NUL.name, ALICE.name]);

    let (r, mut c) = login(&v, UTF8.name, UTF8.password);
    assert_eq!(r, ok(), "UTF-8 password");
    assert_eq!(c.whoami(), UTF8.name);
    let (r, mut c) = login(&v, NUL.name, b"abc");
    assert_eq!(r, ok(), "abc");
    assert_eq!(c.whoami(), NUL.name);

    let wrong: [(&str, Vec<u8>); 6] = [
        (UTF8.name, latin1(UTF8.password)),
        (NUL.name, b"abc\0def".to_vec()),
        (NUL.name, b"abc\0".to_vec()),
        (NUL.name, b"\0abc".to_vec()),
        (ALICE.name, b"alice-pw ".to_vec()),
        (ALICE.name, b" alice-pw".to_vec()),
    ];
    for (user, pass) in &wrong {
        let (r, mut c) = login(&v, user, pass);
        assert_eq!(r, wrongpass(), "{user} with {pass:?}");
        assert_eq!(c.whoami(), "default");
    }
    assert_outcomes(
        &v,
        &[
            ("allowed", 2),
            ("denied_bad_credentials", wrong.len() as u64),
        ],
    );
}

// ---- invalid usernames ---------------------------------------------------------------------------

fn invalid_usernames_never_reach_the_directory(mode: Mode) {
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, mode);
    let too_long = vec![b'a'; 513];
    // 256 two-byte characters and one more byte: 513 bytes, 257 characters.
    let too_long_utf8 = format!("{}a", "é".repeat(256)).into_bytes();
    let not_utf8 = b"\xff\xfealice".to_vec();
    // Those that Valkey accepts as ACL users are created, so that only the module can refuse.
    add_acl_users(&v, &[&too_long, &too_long_utf8, &not_utf8, &latin1("zoë")]);
    add_acl_users(&v, &[ALICE.name]);

    let invalid: Vec<(&str, Vec<u8>)> = vec![
        ("empty", b"".to_vec()),
        ("NUL inside", b"ali\0ce".to_vec()),
        ("NUL at the end", b"alice\0".to_vec()),
        ("not UTF-8", not_utf8),
        ("Latin-1", latin1("zoë")),
        ("513 bytes", too_long),
        ("513 bytes of UTF-8", too_long_utf8),
    ];
    let mut n = 0;
    for (what, name) in invalid {
        for pass in [ALICE.password.as_bytes(), b"any-password"] {
            let (r, mut c) = login(&v, &name, pass);
            assert_eq!(r, wrongpass(), "{what}");
            assert_eq!(c.whoami(), "default");
            n += 1;
        }
        let mut c = v.raw();
        assert_eq!(
            c.hello3_auth(&name, ALICE.password.as_bytes()),
            wrongpass(),
            "HELLO, {what}"
        );
        n += 1;
    }

    // Only the fence reaches the directory.
    fence(&v, &slapd, ALICE);
    assert_eq!(bind_dns(&slapd), [ALICE.dn]);
    let expect_searches = match mode {
        Mode::Bind => vec![],
        Mode::SearchBind => vec![logged_filter("alice")],
    };
    assert_eq!(search_filters(&slapd), expect_searches);
    assert_outcomes(&v, &[("denied_invalid_username", n), ("allowed", 1)]);
}

fn username_of_512_bytes_reaches_the_directory(mode: Mode) {
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd, mode);
    let ascii = "a".repeat(512);
    let utf8 = "é".repeat(256); // 512 bytes
    add_acl_users(&v, &[&ascii, &utf8]);

    for name in [&ascii, &utf8] {
        let (r, mut c) = login(&v, name, "wrong");
        assert_eq!(r, wrongpass(), "{} bytes", name.len());
        assert_eq!(c.whoami(), "default");
    }
    match mode {
        Mode::Bind => assert_eq!(
            bind_dns(&slapd),
            [
                format!("cn={ascii},ou=people,dc=example,dc=test"),
                format!("cn={utf8},ou=people,dc=example,dc=test"),
            ]
        ),
        Mode::SearchBind => {
            assert_eq!(
                search_filters(&slapd),
                [
                    logged_filter(&ascii),
                    logged_filter(&"\\C3\\A9".repeat(256))
                ]
            );
        }
    }
    assert_outcomes(&v, &[(no_such_user(mode), 2)]);
}

// ---- hostile input -------------------------------------------------------------------------------

/// Bytes 0 to 255 around a marker that can be looked for in the logs.
fn garbage(marker: &str) -> Vec<u8> {
    let mut g: Vec<u8> = (0..=255u8).collect();
    g.extend_from_slice(marker.as_bytes());
    g.extend((0..=255u8).rev());
    g
}

/// Asserts that Valkey still answers and that its log holds none of `secrets`.
fn assert_alive_and_silent(v: &Valkey, secrets: &[&str]) {
    assert_eq!(v.raw().call(&[b"PING"]), Reply::Simple("PONG".into()));
    let log = v.log();
    for s in secrets {
        assert!(!log.contains(s), "the log contains {s:?}:\n{log}");
    }
}

fn hostile_input_neither_crashes_nor_leaks(mode: Mode) {
    let slapd = Slapd::start_default();
    let mut v = start_valkey(&slapd, mode);
    let users: [&[u8]; 5] = [
        b"%s%s%n",
        b"%n%n%n%n%n%n%n%n",
        b"%99999999s%x%p",
        b"alice",
        b"al\r\nice",
    ];
    // Valkey refuses CR and LF in ACL user names (the last one): it is refused before the
    // directory as a name without an ACL user.
    add_acl_users(&v, &users[..4]);
    let secrets = [
        "pw-%s%s%n-SECRET-1",
        "%99999999s%n%x%p-SECRET-2",
        "SECRET-3-GARBAGE",
        "SECRET-4\r\n-ERR injected\r\n",
    ];
    let passwords: Vec<Vec<u8>> = vec![
        secrets[0].as_bytes().to_vec(),
        secrets[1].as_bytes().to_vec(),
        garbage(secrets[2]),
        secrets[3].as_bytes().to_vec(),
    ];

    for user in users {
        for pass in &passwords {
            let (r, mut c) = login(&v, user, pass);
            assert_eq!(r, wrongpass(), "{:?}", String::from_utf8_lossy(user));
            assert_eq!(c.whoami(), "default");
        }
    }
    // Binary garbage as a username is not UTF-8: refused before the directory.
    assert_eq!(login(&v, garbage("user"), ALICE.password).0, wrongpass());

    assert!(v.is_running(), "valkey-server died: {:?}", v.exit_status());
    assert_eq!(login(&v, ALICE.name, ALICE.password).0, ok());
    // Only the names with an ACL user reached the directory; alice's login is the fence.
    let reached = (users.len() - 1) * passwords.len() + 1;
    let kind = match mode {
        Mode::Bind => "BIND",
        Mode::SearchBind => "SRCH",
    };
    assert_eq!(slapd.wait_ops(kind, reached, LOG_WAIT), reached, "{kind}");
    assert_alive_and_silent(&v, &[&secrets[..], &["SECRET-4", ALICE.password]].concat());

    // alice's wrong passwords are bad credentials in both modes; the other names exist only
    // in Valkey, which search+bind tells apart; the last one has no ACL user.
    let per_user = passwords.len() as u64;
    let to_directory = (users.len() as u64 - 1) * per_user;
    let directory_denials = match mode {
        Mode::Bind => vec![("denied_bad_credentials", to_directory)],
        Mode::SearchBind => vec![
            ("denied_bad_credentials", per_user),
            ("denied_unknown_user", to_directory - per_user),
        ],
    };
    let local = [
        ("allowed", 1),
        ("denied_invalid_username", 1),
        ("denied_no_acl_user", per_user),
    ];
    assert_outcomes(&v, &[&local[..], &directory_denials].concat());
}

fn one_megabyte_password_is_a_wrong_password_not_an_outage(mode: Mode) {
    const MARKER: &str = "BIGPW-SECRET-";
    let big = MARKER.repeat((1 << 20) / MARKER.len() + 1).into_bytes();
    let slapd = Slapd::start_default();
    let mut v = start_valkey(&slapd, mode);
    add_acl_users(&v, &[ALICE.name]);

    // A wrong password first: the module's bind connection is then not authenticated (slapd
    // accepts far less from an anonymous connection than from an authenticated one).
    assert_eq!(login(&v, ALICE.name, "wrong").0, wrongpass());
    let (big_reply, mut c) = login(&v, ALICE.name, &big);
    assert_eq!(c.whoami(), "default");

    // Whatever the reply: no crash, no leak, and the next logins work.
    assert!(v.is_running(), "valkey-server died: {:?}", v.exit_status());
    assert_alive_and_silent(&v, &[MARKER]);
    assert_eq!(login(&v, ALICE.name, ALICE.password).0, ok());
    assert_eq!(
        login(&v, ALICE.name, &big).0,
        wrongpass(),
        "after a success"
    );

    // A password the directory cannot accept is a wrong password, not "directory unavailable".
    assert_eq!(
        big_reply,
        wrongpass(),
        "1 MB password after a failed bind ({UNAVAILABLE:?} means the module took slapd \
         closing the connection for an outage)"
    );
    // Refused locally: slapd saw only the wrong password and alice's login.
    assert_outcomes(
        &v,
        &[
            ("allowed", 1),
            ("denied_bad_credentials", 1),
            ("denied_password_too_long", 2),
        ],
    );
}

// ---- Valkey 8.1 ----------------------------------------------------------------------------------

fn valkey_8_1_escaping_and_invalid_usernames(mode: Mode) {
    let slapd = Slapd::start_default();
    let v = start_version(&slapd, mode, Version::V8_1);
    let server = v.raw().call(&[b"INFO", b"server"]).text().unwrap();
    assert!(server.contains("valkey_version:8.1."), "{server}");
    add_acl_users(&v, &[COMMA.name, PARENS.name, "alic*"]);

    for u in [COMMA, PARENS] {
        let (r, mut c) = login(&v, u.name, u.password);
        assert_eq!(r, ok(), "{}", u.name);
        assert_eq!(c.whoami(), u.name);
    }
    assert_eq!(login(&v, "alic*", ALICE.password).0, wrongpass());
    assert_eq!(login(&v, "", ALICE.password).0, wrongpass());
    assert_eq!(login(&v, ALICE.name, "").0, wrongpass());
    assert_outcomes(
        &v,
        &[
            ("allowed", 2),
            (no_such_user(mode), 1),
            ("denied_invalid_username", 1),
            ("denied_empty_password", 1),
        ],
    );
}

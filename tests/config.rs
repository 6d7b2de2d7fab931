//! Configuration: every option through CONFIG SET/GET, valkey.conf lines, module arguments,
//! CONFIG REWRITE, changes at run time, and the service password staying secret.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

// --------------------------------------------------------------------------------------------
// Helpers
// --------------------------------------------------------------------------------------------

fn config_set(c: &mut RawClient, name: &str, value: &[u8]) -> Reply {
    let key = format!("valkeyauth.{name}");
    c.call(&[b"CONFIG", b"SET", key.as_bytes(), value])
}

fn config_get(c: &mut RawClient, name: &str) -> String {
    let key = format!("valkeyauth.{name}");
    let r = c.call(&[b"CONFIG", b"GET", key.as_bytes()]);
    r.get(&key)
        .and_then(Reply::text)
        .unwrap_or_else(|| panic!("CONFIG GET {key}: {r}"))
}

fn set_ok(c: &mut RawClient, name: &str, value: &str) {
    let r = config_set(c, name, value.as_bytes());
    assert!(r.is_ok(), "CONFIG SET valkeyauth.{name} {value:?}: {r}");
}

/// `(name, default)` of every row of the README's option table.
fn readme_options() -> Vec<(String, String)> {
    let readme = fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let table = readme
        .split("\n## Options\n")
        .nth(1)
        .expect("README has an Options section");
    table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|row| {
            let cells: Vec<&str> = row.split(" | ").collect();
            let name = cells[0].trim_start_matches('|').trim().to_owned();
            let default = match cells[2].trim() {
                "\"\"" => String::new(),
                d => d.trim_matches('`').to_owned(),
            };
            (name, default)
        })
        .collect()
}

/// Writes `contents` to `dir/name` with `mode`; returns the path.
fn password_file(dir: &Path, name: &str, contents: &str, mode: u32) -> String {
    let path = dir.join(name);
    fs::write(&path, contents).expect("write password file");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    path.to_str().expect("utf-8").to_owned()
}

fn auth(v: &Valkey, user: &FixtureUser) -> Reply {
    v.raw().auth(user.name.as_bytes(), user.password.as_bytes())
}

/// Polls until `pid` has `want` worker threads (at most 10 s); returns the last count.
fn wait_worker_threads(pid: u32, want: usize) -> usize {
    wait_for(want, Duration::from_secs(10), || worker_threads(pid))
}

/// Every text a client or an operator can read about the running server.
fn everything_visible(v: &Valkey) -> String {
    everything_shown(v, &mut v.raw())
}

// --------------------------------------------------------------------------------------------
// CONFIG SET / CONFIG GET
// --------------------------------------------------------------------------------------------

#[test]
fn config_get_shows_every_readme_option_with_its_default() {
    let options = readme_options();
    assert_eq!(options.len(), 44, "README option table: {options:?}");
    let v = Valkey::builder().module([] as [&str; 0]).start();
    let mut c = v.raw();
    let all = c.call(&[b"CONFIG", b"GET", b"valkeyauth.*"]);
    let Reply::Array(items) = &all else {
        panic!("CONFIG GET valkeyauth.*: {all}")
    };
    assert_eq!(items.len(), 2 * options.len(), "{all}");
    for (name, default) in &options {
        assert_eq!(&config_get(&mut c, name), default, "default of {name}");
    }
    // No servers: inactive, and Valkey's own check applies.
    assert_eq!(info_field(&v, "active"), 0);
}

/// `(bad value, words the error must contain)`
type BadValues = Vec<(Vec<u8>, &'static str)>;

#[test]
fn every_option_accepts_a_valid_value_and_refuses_bad_ones() {
    let slapd = Slapd::start_default();
    let dir = TempDir::new("config-pw");
    let good_pw = password_file(dir.path(), "good.pw", "searcher-pw\n", 0o600);
    let open_pw = password_file(dir.path(), "open.pw", "searcher-pw\n", 0o644);
    let empty_pw = password_file(dir.path(), "empty.pw", "\n", 0o600);
    let servers = format!("{} ldap://127.0.0.1:1", slapd.url());
    // TLS files are checked when set, never read in full: any regular file passes. A FIFO
    // would hang whichever thread opened it.
    let ca_file = password_file(dir.path(), "ca.pem", "not read here", 0o644);
    let cert_file = password_file(dir.path(), "client.pem", "not read here", 0o644);
    let key_file = password_file(dir.path(), "client.key", "not read here", 0o600);
    let fifo = dir.path().join("pipe.pem");
    mkfifo(&fifo);
    let fifo = fifo.to_str().expect("utf-8").to_owned();
    let missing = dir.path().join("missing.pem").to_str().unwrap().to_owned();
    let dir_path = dir.path().to_str().unwrap().to_owned();
    let dangling = dir.path().join("dangling.jsonl");
    std::os::unix::fs::symlink(dir.path().join("elsewhere.jsonl"), &dangling).unwrap();
    let dangling = dangling.to_str().unwrap().to_owned();

    // (option, valid value, [(bad value, words the error must contain)])
    let cases: Vec<(&str, String, BadValues)> = vec![
        (
            "servers",
            servers,
            vec![
                (b"http://x".to_vec(), "is not an LDAP URL"),
                (
                    b"ldap://127.0.0.1:389/dc=example,dc=test".to_vec(),
                    "must name only a server",
                ),
                (b"ldap://a\nldap://b".to_vec(), "control characters"),
                (
                    b"ldap://user:pw@127.0.0.1".to_vec(),
                    "must name only a server",
                ),
                (b"ldap://127.0.0.1:0".to_vec(), "has an invalid port"),
                (b"ldap://127.0.0.1:65536".to_vec(), "has an invalid port"),
                (b"ldaps://:636".to_vec(), "must name a host"),
            ],
        ),
        (
            "auth_mode",
            "search+bind".into(),
            vec![(b"foo".to_vec(), "must be one of: bind, search+bind")],
        ),
        (
            "bind_dn_prefix",
            "uid=".into(),
            vec![(b"cn=\r".to_vec(), "control characters")],
        ),
        (
            "bind_dn_suffix",
            ", ou=people, dc=example, dc=test".into(),
            vec![(b",ou=people\n".to_vec(), "control characters")],
        ),
        (
            "search_base",
            PEOPLE.into(),
            vec![
                (b"ou=x\0y".to_vec(), "control characters"),
                (b"${HOME}".to_vec(), "must be a DN"),
            ],
        ),
        (
            "search_scope",
            "one".into(),
            vec![(b"foo".to_vec(), "must be one of: base, one, sub")],
        ),
        (
            "search_filter",
            "(&(objectClass=person)(cn=*))".into(),
            vec![
                (b"(a=b".to_vec(), "must be one LDAP filter"),
                (b"(a=b)(c=d)".to_vec(), "must be one LDAP filter"),
                (b"".to_vec(), "must be one LDAP filter"),
            ],
        ),
        (
            "search_attribute",
            "cn".into(),
            vec![
                (b"uid)(x".to_vec(), "attribute name"),
                (b"".to_vec(), "attribute name"),
            ],
        ),
        (
            "search_bind_dn",
            SEARCHER.dn.into(),
            vec![(b"cn=x\t".to_vec(), "control characters")],
        ),
        (
            "search_bind_passwd_file",
            good_pw,
            vec![
                (b"/nonexistent/pw".to_vec(), "cannot open"),
                (open_pw.into_bytes(), "chmod 600"),
                (empty_pw.into_bytes(), "empty password"),
            ],
        ),
        (
            "allow_readable_passwd_file",
            "no".into(),
            vec![(b"maybe".to_vec(), "must be one of: no, yes")],
        ),
        (
            "search_bind_mechanism",
            "EXTERNAL".into(),
            vec![(
                b"PLAIN".to_vec(),
                "must be one of: simple, EXTERNAL, GSSAPI",
            )],
        ),
        (
            "sasl_authz_id",
            format!("dn:{}", SEARCHER.dn),
            vec![(b"dn:x\n".to_vec(), "control characters")],
        ),
        (
            "workers",
            "3".into(),
            vec![
                (b"0".to_vec(), "whole number from 1 to 256"),
                (b"257".to_vec(), "whole number from 1 to 256"),
                (b"abc".to_vec(), "whole number from 1 to 256"),
                (b"-1".to_vec(), "whole number from 1 to 256"),
            ],
        ),
        (
            "max_pending",
            "77".into(),
            vec![
                (b"0".to_vec(), "whole number from 1 to 1000000"),
                (b"1000001".to_vec(), "whole number from 1 to 1000000"),
            ],
        ),
        (
            "connect_timeout_ms",
            "1234".into(),
            vec![
                (b"0".to_vec(), "whole number from 1 to 600000"),
                (b"600001".to_vec(), "whole number from 1 to 600000"),
            ],
        ),
        (
            "operation_timeout_ms",
            "4321".into(),
            vec![
                (b"-1".to_vec(), "whole number from 1 to 600000"),
                (b"1.5".to_vec(), "whole number from 1 to 600000"),
            ],
        ),
        (
            "auth_timeout_ms",
            "2500".into(),
            vec![
                (b"0".to_vec(), "whole number from 1 to 600000"),
                (b"600001".to_vec(), "whole number from 1 to 600000"),
            ],
        ),
        (
            "connection_max_idle_s",
            "30".into(),
            vec![
                (b"0".to_vec(), "whole number from 1 to 86400"),
                (b"86401".to_vec(), "whole number from 1 to 86400"),
            ],
        ),
        (
            "health_check_interval_ms",
            "250".into(),
            vec![
                (b"9".to_vec(), "whole number from 10 to 600000"),
                (b"600001".to_vec(), "whole number from 10 to 600000"),
            ],
        ),
        (
            "use_starttls",
            "yes".into(),
            vec![
                (b"maybe".to_vec(), "must be one of: no, yes"),
                (b"".to_vec(), "must be one of: no, yes"),
            ],
        ),
        (
            "tls_ca_cert_path",
            ca_file.clone(),
            vec![
                (b"/etc/ssl/ca\n.pem".to_vec(), "control characters"),
                (b"ca.pem".to_vec(), "absolute path"),
                (missing.as_bytes().to_vec(), "No such file"),
                (fifo.as_bytes().to_vec(), "not a regular file"),
                (b"/proc/self/status".to_vec(), "kernel interface"),
            ],
        ),
        (
            "tls_cert_path",
            cert_file.clone(),
            vec![
                (b"/etc/valkey/\x07.pem".to_vec(), "control characters"),
                (dir_path.as_bytes().to_vec(), "not a regular file"),
                (fifo.as_bytes().to_vec(), "not a regular file"),
                (b"/proc/self/status".to_vec(), "kernel interface"),
            ],
        ),
        (
            "tls_key_path",
            key_file.clone(),
            vec![
                (b"/etc/valkey/client.key\r".to_vec(), "control characters"),
                (b"client.key".to_vec(), "absolute path"),
                (missing.as_bytes().to_vec(), "No such file"),
                (fifo.as_bytes().to_vec(), "not a regular file"),
            ],
        ),
        (
            "tls_require_cert",
            "allow".into(),
            vec![(
                b"sometimes".to_vec(),
                "must be one of: never, allow, try, demand",
            )],
        ),
        (
            "tls_min_version",
            "1.3".into(),
            vec![
                (b"1.1".to_vec(), "must be one of: 1.2, 1.3"),
                (b"1.4".to_vec(), "must be one of: 1.2, 1.3"),
            ],
        ),
        (
            "cache_ttl_s",
            "45".into(),
            vec![
                (b"86401".to_vec(), "whole number from 0 to 86400"),
                (b"-1".to_vec(), "whole number from 0 to 86400"),
            ],
        ),
        (
            "cache_max_entries",
            "5000".into(),
            vec![
                (b"0".to_vec(), "whole number from 1 to 10000000"),
                (b"10000001".to_vec(), "whole number from 1 to 10000000"),
            ],
        ),
        (
            "negative_cache_ttl_s",
            "0".into(),
            vec![(b"3601".to_vec(), "whole number from 0 to 3600")],
        ),
        (
            "cache_stale_on_outage_s",
            "3600".into(),
            vec![(b"604801".to_vec(), "whole number from 0 to 604800")],
        ),
        (
            "provision",
            "on".into(),
            vec![(b"maybe".to_vec(), "must be one of: off, on")],
        ),
        (
            "acl_map",
            format!("admins => +@all ~*; cn=readers,{GROUPS} => +@read ~*"),
            vec![
                (b"admins +@all".to_vec(), "is not '<group> => <rules>'"),
                (b"=> +@all".to_vec(), "needs both a group and rules"),
                (b"admins => +@no-such-category".to_vec(), "are invalid"),
            ],
        ),
        (
            "default_acl_rules",
            "+@read ~*".into(),
            vec![(b"+no-such-command".to_vec(), "are invalid")],
        ),
        (
            "group_search_base",
            GROUPS.into(),
            vec![
                (b"ou=groups\n".to_vec(), "control characters"),
                (b"groups".to_vec(), "must be a DN"),
            ],
        ),
        (
            "group_search_filter",
            "(member={dn})".into(),
            vec![(
                b"(member={dn})(memberUid={username})".to_vec(),
                "must be one LDAP filter",
            )],
        ),
        (
            "group_membership_attribute",
            "memberOf".into(),
            vec![
                (b"member of".to_vec(), "attribute name"),
                (b"\r\n".to_vec(), "control characters"),
            ],
        ),
        (
            "nested_groups",
            "yes".into(),
            vec![(b"deep".to_vec(), "must be one of: no, yes")],
        ),
        (
            "nested_groups_max_depth",
            "3".into(),
            vec![
                (b"0".to_vec(), "whole number from 1 to 64"),
                (b"65".to_vec(), "whole number from 1 to 64"),
            ],
        ),
        (
            "legacy_auth_separator",
            ":".into(),
            vec![(b"\t".to_vec(), "control characters")],
        ),
        (
            "exempt_users",
            "default,ops backup".into(),
            vec![(b"default\0ops".to_vec(), "control characters")],
        ),
        (
            "local_fallback",
            "unavailable".into(),
            vec![(
                b"foo".to_vec(),
                "must be one of: never, unavailable, always",
            )],
        ),
        (
            "audit",
            "off".into(),
            vec![(b"syslog".to_vec(), "must be one of: off, log, file")],
        ),
        (
            "audit_file",
            "/tmp/valkeyauth-config-test-audit.jsonl".into(),
            vec![
                (b"/var/log/\x07.jsonl".to_vec(), "control characters"),
                (b"audit.jsonl".to_vec(), "absolute path"),
                (b"/nonexistent-dir/audit.jsonl".to_vec(), "does not exist"),
                (b"/tmp".to_vec(), "not a regular file"),
                (b"/dev/full".to_vec(), "not a regular file"),
                (fifo.as_bytes().to_vec(), "not a regular file"),
                (b"/proc/self/status".to_vec(), "kernel interface"),
                (b"/proc/self/audit.jsonl".to_vec(), "kernel interface"),
                (dangling.as_bytes().to_vec(), "leads nowhere"),
            ],
        ),
    ];
    // sasl_keytab is load time only: CONFIG SET refuses every value (checked below).
    let names: Vec<String> = readme_options()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n != "sasl_keytab")
        .collect();
    let tested: Vec<String> = cases.iter().map(|(n, _, _)| n.to_string()).collect();
    assert_eq!(tested, names, "every README option is tested here");

    let v = Valkey::builder().module([] as [&str; 0]).start();
    let mut c = v.raw();
    let r = config_set(&mut c, "sasl_keytab", b"/etc/valkey/svc.keytab");
    assert!(r.error().is_some(), "CONFIG SET sasl_keytab: {r}");
    for (name, valid, bad) in &cases {
        set_ok(&mut c, name, valid);
        assert_eq!(&config_get(&mut c, name), valid, "CONFIG GET {name}");
        for (value, reason) in bad {
            let shown = String::from_utf8_lossy(value);
            let r = config_set(&mut c, name, value);
            let err = r
                .error()
                .unwrap_or_else(|| panic!("CONFIG SET {name} {shown:?} was accepted: {r}"));
            assert!(
                err.contains(reason),
                "CONFIG SET {name} {shown:?}: the error does not say {reason:?}: {err}"
            );
            assert!(
                err.contains(&format!("valkeyauth.{name}")),
                "the error does not name the option: {err}"
            );
            assert_eq!(&config_get(&mut c, name), valid, "{name} after {shown:?}");
        }
    }
    // Everything set above is in force together.
    assert_eq!(info_field(&v, "workers"), 3);
    assert_eq!(info_field(&v, "max_pending"), 77);
    assert_eq!(info_field(&v, "servers"), 2);
    assert_eq!(info_field(&v, "active"), 1);
    let pid = v.pid();
    assert_eq!(wait_worker_threads(pid, 3), 3);
}

/// `search_filter` is exactly one RFC 4515 filter; `servers` name only servers, except
/// `ldapi://`, whose part after the scheme is a socket path.
#[test]
fn filters_and_server_urls_are_checked_exactly() {
    let v = Valkey::builder().module([] as [&str; 0]).start();
    let mut c = v.raw();
    for good in [
        "(&(a=b)(c=d))",
        "a=b",
        "(a=b)",
        "(!(a=b))",
        "(|(objectClass=person)(&(ou=a)(!(cn=x\\29y))))",
    ] {
        set_ok(&mut c, "search_filter", good);
        assert_eq!(config_get(&mut c, "search_filter"), good);
    }
    for bad in [
        "(a=b)(c=d)",
        "a=b)(c=d",
        "(&)",
        "(a=b))",
        "((a=b))",
        "(&(a=b)x)",
    ] {
        let r = config_set(&mut c, "search_filter", bad.as_bytes());
        assert!(
            r.error()
                .is_some_and(|e| e.contains("must be one LDAP filter")),
            "search_filter {bad:?}: {r}"
        );
    }
    for good in [
        "ldap://127.0.0.1",
        "ldap://127.0.0.1:1,ldaps://h.example:65535/",
        "ldap://[::1]:389",
        "ldapi://%2Frun%2Fslapd%2Fldapi",
    ] {
        set_ok(&mut c, "servers", good);
        assert_eq!(config_get(&mut c, "servers"), good);
    }
    for (bad, reason) in [
        ("ldap://admin@127.0.0.1", "must name only a server"),
        ("ldap://127.0.0.1:389/?base", "must name only a server"),
        ("ldap://127.0.0.1:-1", "has an invalid port"),
        ("ldap://127.0.0.1:http", "has an invalid port"),
        ("ldap://", "must name a host"),
        ("ldap://127.0.0.1 http://x", "is not an LDAP URL"),
    ] {
        let r = config_set(&mut c, "servers", bad.as_bytes());
        assert!(
            r.error().is_some_and(|e| e.contains(reason)),
            "servers {bad:?}: expected {reason:?}, got {r}"
        );
    }
    // The last good value is still in force.
    assert_eq!(
        config_get(&mut c, "servers"),
        "ldapi://%2Frun%2Fslapd%2Fldapi"
    );
    assert_eq!(info_field(&v, "servers"), 1);
}

#[test]
fn config_set_of_several_options_is_all_or_nothing() {
    let v = Valkey::builder().module([] as [&str; 0]).start();
    let mut c = v.raw();
    let r = c.call(&[
        b"CONFIG",
        b"SET",
        b"valkeyauth.workers",
        b"3",
        b"valkeyauth.auth_mode",
        b"foo",
    ]);
    assert!(r.error().is_some(), "{r}");
    assert_eq!(config_get(&mut c, "workers"), "8");
    assert_eq!(config_get(&mut c, "auth_mode"), "bind");
    assert_eq!(info_field(&v, "workers"), 8);

    let r = c.call(&[
        b"CONFIG",
        b"SET",
        b"valkeyauth.workers",
        b"3",
        b"valkeyauth.local_fallback",
        b"always",
    ]);
    assert!(r.is_ok(), "{r}");
    assert_eq!(config_get(&mut c, "workers"), "3");
    assert_eq!(config_get(&mut c, "local_fallback"), "always");
    assert_eq!(info_field(&v, "workers"), 3);
}

// --------------------------------------------------------------------------------------------
// valkey.conf and module arguments
// --------------------------------------------------------------------------------------------

#[test]
fn valkey_conf_lines_are_loaded() {
    let slapd = Slapd::start_default();
    let v = Valkey::builder()
        .module([] as [&str; 0])
        .config(format!("valkeyauth.servers {}", conf_quote(&slapd.url())))
        .config(format!(
            "valkeyauth.bind_dn_suffix {}",
            conf_quote(BIND_SUFFIX)
        ))
        .config("valkeyauth.workers 3")
        .config("valkeyauth.max_pending 42")
        .config("valkeyauth.local_fallback unavailable")
        .config("valkeyauth.exempt_users \"default,ops\"")
        .config("valkeyauth.auth_timeout_ms 4000")
        .config("valkeyauth.health_check_interval_ms 250")
        .config("valkeyauth.tls_min_version 1.3")
        .start();
    let mut c = v.raw();
    assert_eq!(config_get(&mut c, "servers"), slapd.url());
    assert_eq!(config_get(&mut c, "bind_dn_suffix"), BIND_SUFFIX);
    assert_eq!(config_get(&mut c, "workers"), "3");
    assert_eq!(config_get(&mut c, "local_fallback"), "unavailable");
    assert_eq!(config_get(&mut c, "exempt_users"), "default,ops");
    assert_eq!(config_get(&mut c, "auth_timeout_ms"), "4000");
    assert_eq!(config_get(&mut c, "health_check_interval_ms"), "250");
    assert_eq!(config_get(&mut c, "tls_min_version"), "1.3");
    assert_eq!(info_field(&v, "workers"), 3);
    assert_eq!(info_field(&v, "max_pending"), 42);
    assert_eq!(wait_worker_threads(v.pid(), 3), 3);
    add_acl_users(&v, &["alice"]);
    auth_ok(&v, &ALICE, "configured from valkey.conf");
}

/// Module arguments and `valkeyauth.*` lines work together (each option set in one place).
/// Which one wins when both set the same option is left out on purpose: see
/// `config_rewrite_keeps_a_changed_module_argument`.
#[test]
fn module_arguments_and_conf_lines_combine() {
    let slapd = Slapd::start_default();
    let v = Valkey::builder()
        .module([
            "workers",
            "2",
            "servers",
            &slapd.url(),
            "default_acl_rules",
            "+@read ~*",
        ])
        .config(format!(
            "valkeyauth.bind_dn_suffix {}",
            conf_quote(BIND_SUFFIX)
        ))
        .config("valkeyauth.max_pending 9")
        .start();
    // A value with a space loads, with a warning: CONFIG REWRITE would write it unquoted.
    assert!(v.wait_for_log(
        "module argument default_acl_rules holds spaces or quotes",
        Duration::from_secs(5)
    ));
    let mut c = v.raw();
    assert_eq!(config_get(&mut c, "workers"), "2");
    assert_eq!(config_get(&mut c, "servers"), slapd.url());
    assert_eq!(config_get(&mut c, "bind_dn_suffix"), BIND_SUFFIX);
    assert_eq!(config_get(&mut c, "max_pending"), "9");
    assert_eq!(info_field(&v, "workers"), 2);
    assert_eq!(info_field(&v, "max_pending"), 9);
    add_acl_users(&v, &["alice"]);
    auth_ok(&v, &ALICE, "module arguments and conf lines");
}

fn assert_clean_refusal(log: &str, needles: &[&str]) {
    for n in needles {
        assert!(log.contains(n), "the log does not say {n:?}:\n{log}");
    }
    assert!(!log.contains("crashed by signal"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_bad_value_in_valkey_conf_refuses_to_start() {
    let log = Valkey::builder()
        .module([] as [&str; 0])
        .config("valkeyauth.workers 0")
        .start_expect_failure();
    assert_clean_refusal(&log, &["valkeyauth.workers", "whole number from 1 to 256"]);

    let log = Valkey::builder()
        .module([] as [&str; 0])
        .config("valkeyauth.servers http://x")
        .start_expect_failure();
    assert_clean_refusal(&log, &["valkeyauth.servers", "is not an LDAP URL"]);

    let log = Valkey::builder()
        .module([] as [&str; 0])
        .config("valkeyauth.search_bind_passwd_file /nonexistent/pw")
        .start_expect_failure();
    assert_clean_refusal(&log, &["valkeyauth.search_bind_passwd_file", "cannot open"]);

    // A name the module does not have.
    let log = Valkey::builder()
        .module([] as [&str; 0])
        .config("valkeyauth.no_such_option 1")
        .start_expect_failure();
    assert_clean_refusal(&log, &["valkeyauth.no_such_option"]);
}

#[test]
fn bad_module_arguments_refuse_to_load() {
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["no_such_option", "1"],
            &["unknown module argument 'no_such_option'"],
        ),
        (
            &["servers"],
            &["module arguments must be <name> <value> pairs"],
        ),
        (
            &["workers", "0"],
            &["workers: must be a whole number from 1 to 256"],
        ),
        (
            &["servers", "http://x"],
            &["servers: 'http://x' is not an LDAP URL"],
        ),
    ];
    for (args, needles) in cases {
        let log = Valkey::builder().module(args).start_expect_failure();
        assert_clean_refusal(&log, needles);
        assert_eq!(
            log.lines().filter(|l| l.contains(needles[0])).count(),
            1,
            "one log line for {args:?}:\n{log}"
        );
    }

    // The same at run time: MODULE LOAD fails with an error, the server goes on.
    let v = Valkey::builder().start();
    let mut c = v.raw();
    let path = module_path();
    let r = c.call(&[
        b"MODULE",
        b"LOAD",
        path.to_str().unwrap().as_bytes(),
        b"workers",
        b"abc",
    ]);
    assert!(r.error().is_some(), "{r}");
    assert!(v.wait_for_log("workers: must be a whole number", Duration::from_secs(5)));
    assert_eq!(c.call(&[b"PING"]), Reply::Simple("PONG".into()));
    let r = c.call(&[b"MODULE", b"LIST"]);
    assert!(!format!("{r:?}").contains("valkeyauth"), "{r}");
    // A good load works afterwards.
    let r = c.call(&[b"MODULE", b"LOAD", path.to_str().unwrap().as_bytes()]);
    assert!(r.is_ok(), "{r}\n{}", v.log());
}

// --------------------------------------------------------------------------------------------
// CONFIG REWRITE
// --------------------------------------------------------------------------------------------

#[test]
fn config_rewrite_round_trips() {
    let slapd = Slapd::start_default();
    let slapd2 = Slapd::start_default();
    let mut v = Valkey::builder().module([] as [&str; 0]).start();
    add_acl_users(&v, &["alice"]);
    let files = TempDir::new("config-rewrite");
    let spaced = files.path().join("ca certs");
    fs::create_dir(&spaced).unwrap();
    let tls_file = |name: &str| password_file(&spaced, name, "not read here", 0o600);
    let servers = format!("{} , {}", slapd.url(), slapd2.url());
    let values: Vec<(&str, String)> = vec![
        ("servers", servers),
        // A DN with commas and spaces, and a prefix with a space.
        ("bind_dn_prefix", "cn=".into()),
        ("bind_dn_suffix", ", ou=people, dc=example, dc=test".into()),
        ("search_base", "ou=people, dc=example,dc=test".into()),
        ("search_filter", "(&(objectClass=person)(!(cn=x y)))".into()),
        (
            "search_bind_dn",
            "cn=valkey service,ou=services,dc=example,dc=test".into(),
        ),
        ("exempt_users", "default ops \"quoted\" back\\slash".into()),
        ("workers", "3".into()),
        ("max_pending", "55".into()),
        ("connect_timeout_ms", "1500".into()),
        ("operation_timeout_ms", "2500".into()),
        ("local_fallback", "always".into()),
        ("search_scope", "one".into()),
        ("auth_timeout_ms", "7000".into()),
        ("connection_max_idle_s", "120".into()),
        ("health_check_interval_ms", "300".into()),
        ("use_starttls", "no".into()),
        // Paths with a space; TLS settings are not used by ldap:// without StartTLS.
        ("tls_ca_cert_path", tls_file("ca.pem")),
        ("tls_cert_path", tls_file("client.pem")),
        ("tls_key_path", tls_file("client.key")),
        ("tls_require_cert", "try".into()),
        ("tls_min_version", "1.3".into()),
        ("cache_ttl_s", "45".into()),
        ("cache_max_entries", "5000".into()),
        ("negative_cache_ttl_s", "0".into()),
        ("cache_stale_on_outage_s", "3600".into()),
        // Separators and spaces that CONFIG REWRITE must quote.
        ("acl_map", "admins => +@all ~*; readers => +@read ~*".into()),
        ("legacy_auth_separator", ":".into()),
    ];
    let mut c = v.raw();
    for (name, value) in &values {
        set_ok(&mut c, name, value);
    }
    let r = c.call(&[b"CONFIG", b"REWRITE"]);
    assert!(r.is_ok(), "CONFIG REWRITE: {r}");
    drop(c);
    let rewritten = fs::read_to_string(v.config_path()).unwrap();
    assert!(rewritten.contains("\nvalkeyauth.workers "), "{rewritten}");

    v.restart()
        .unwrap_or_else(|log| panic!("restart after CONFIG REWRITE:\n{log}"));
    let mut c = v.raw();
    for (name, value) in &values {
        assert_eq!(&config_get(&mut c, name), value, "{name} after restart");
    }
    assert_eq!(info_field(&v, "workers"), 3);
    assert_eq!(info_field(&v, "servers"), 2);
    // The DN with spaces works with slapd, and the users came back too.
    auth_ok(&v, &ALICE, "after restart");
}

/// A value given as a module argument and later changed with CONFIG SET must survive
/// CONFIG REWRITE and a restart like any other value.
#[test]
fn config_rewrite_keeps_a_changed_module_argument() {
    let slapd = Slapd::start_default();
    let mut v = Valkey::builder()
        .module(["workers", "2", "servers", &slapd.url()])
        .start();
    let mut c = v.raw();
    set_ok(&mut c, "workers", "4");
    set_ok(&mut c, "bind_dn_suffix", BIND_SUFFIX);
    let r = c.call(&[b"CONFIG", b"REWRITE"]);
    assert!(r.is_ok(), "CONFIG REWRITE: {r}");
    drop(c);
    v.restart()
        .unwrap_or_else(|log| panic!("restart after CONFIG REWRITE:\n{log}"));
    let mut c = v.raw();
    assert_eq!(config_get(&mut c, "bind_dn_suffix"), BIND_SUFFIX);
    assert_eq!(
        config_get(&mut c, "workers"),
        "4",
        "CONFIG SET + CONFIG REWRITE + restart lost the change; valkey.conf:\n{}",
        fs::read_to_string(v.config_path()).unwrap()
    );
}

// --------------------------------------------------------------------------------------------
// Changes at run time
// --------------------------------------------------------------------------------------------

#[test]
fn a_change_applies_to_the_next_auth() {
    let mut slapd = Slapd::start_default();
    let slapd2 = Slapd::start_default();
    let v = Valkey::builder()
        .module([
            "servers",
            &slapd.url(),
            "bind_dn_suffix",
            ",ou=nowhere,dc=example,dc=test",
        ])
        .start();
    add_acl_users(&v, &["alice", "bob"]);
    let mut c = v.raw();

    // Wrong suffix: no such entry.
    assert_eq!(auth(&v, &ALICE).error(), Some(WRONGPASS));
    set_ok(&mut c, "bind_dn_suffix", BIND_SUFFIX);
    auth_ok(&v, &ALICE, "right suffix");

    // Another directory: the first one can go away.
    set_ok(&mut c, "servers", &slapd2.url());
    slapd.stop();
    let binds = slapd2.count_ops("BIND");
    auth_ok(&v, &BOB, "second directory");
    auth_ok(&v, &ALICE, "second directory");
    assert!(slapd2.wait_ops("BIND", binds + 2, Duration::from_secs(5)) >= binds + 2);

    // Pool size: 8 -> 2 -> 5, AUTHs working in between.
    let pid = v.pid();
    assert_eq!(wait_worker_threads(pid, 8), 8);
    for n in [2usize, 5] {
        set_ok(&mut c, "workers", &n.to_string());
        assert_eq!(info_field(&v, "workers"), n as u64);
        for _ in 0..n + 1 {
            auth_ok(&v, &ALICE, &format!("workers {n}"));
        }
        assert_eq!(
            auth(&v, &BOB.with_password("nope")).error(),
            Some(WRONGPASS)
        );
        // The replaced pool's threads leave.
        assert_eq!(wait_worker_threads(pid, n), n, "valkeyauth-* threads");
    }

    // No servers: the module steps aside and Valkey's own check applies.
    set_ok(&mut c, "servers", "");
    assert_eq!(info_field(&v, "active"), 0);
    assert_eq!(auth(&v, &ALICE).error(), Some(WRONGPASS));
    let r = c.call(&[b"ACL", b"SETUSER", b"alice", b">localpw"]);
    assert!(r.is_ok(), "{r}");
    auth_ok(&v, &ALICE.with_password("localpw"), "module inactive");
}

trait WithPassword {
    fn with_password(&self, password: &'static str) -> FixtureUser;
}

impl WithPassword for FixtureUser {
    fn with_password(&self, password: &'static str) -> FixtureUser {
        FixtureUser::new(self.name, self.dn, password)
    }
}

// --------------------------------------------------------------------------------------------
// The service password
// --------------------------------------------------------------------------------------------

#[test]
fn the_service_password_never_shows() {
    let slapd = Slapd::start_default();
    let dir = TempDir::new("config-secret");
    let pw_file = password_file(
        dir.path(),
        "service.pw",
        &format!("{}\n", SEARCHER.password),
        0o600,
    );
    let mut v = Valkey::builder()
        .module(search_args(&slapd.url(), &["search_bind_dn", SEARCHER.dn]))
        .config("loglevel debug")
        .config("slowlog-log-slower-than 0")
        .start();
    add_acl_users(&v, &["alice"]);
    let mut c = v.raw();
    set_ok(&mut c, "search_bind_passwd_file", &pw_file);
    auth_ok(&v, &ALICE, "search+bind with the service account");
    let searcher_binds = slapd
        .ops("BIND")
        .iter()
        .filter(|l| l.contains(SEARCHER.dn))
        .count();
    assert!(searcher_binds >= 1, "the service account never bound");

    // A wrong service password: an outage, and still nothing shows.
    fs::write(&pw_file, "wrong-service-secret\n").unwrap();
    set_ok(&mut c, "search_bind_passwd_file", &pw_file);
    let r = auth(&v, &BOB);
    assert!(r.error().is_some(), "{r}");
    assert!(auth(&v, &ALICE.with_password("bad")).error().is_some());

    let r = c.call(&[b"CONFIG", b"REWRITE"]);
    assert!(r.is_ok(), "CONFIG REWRITE: {r}");
    let seen = everything_visible(&v);
    assert!(seen.contains(&pw_file), "the file path itself is shown");
    for secret in [SEARCHER.password, "wrong-service-secret"] {
        assert!(
            !seen.contains(secret),
            "{secret:?} shows somewhere:\n{seen}"
        );
    }
    // Also after a restart from the rewritten file.
    fs::write(&pw_file, format!("{}\n", SEARCHER.password)).unwrap();
    drop(c);
    v.restart().unwrap_or_else(|log| panic!("restart:\n{log}"));
    auth_ok(&v, &ALICE, "after restart");
    let seen = everything_visible(&v);
    assert!(!seen.contains(SEARCHER.password), "{seen}");
}

//! Operations, end to end against a real slapd and a real Valkey 9.1: every INFO field moving as
//! it should, ACL LOG entries, the audit trail in both sinks (with log rotation), the dry-run
//! `VALKEYAUTH.CHECK`, the service password file's rules and `VALKEYAUTH.RELOAD`, and no
//! password anywhere an operator or a client can read.

mod common;

use common::pki::Pki;
use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

// --------------------------------------------------------------------------------------------
// Helpers
// --------------------------------------------------------------------------------------------

fn valkey(servers: &str, extra: &[&str]) -> Valkey {
    let v = Valkey::builder()
        .module(bind_args(servers, extra))
        .config("loglevel verbose")
        .start();
    add_acl_users(&v, &["alice", "bob"]);
    v
}

fn info(v: &Valkey) -> BTreeMap<String, String> {
    info_valkeyauth(&mut v.raw())
}

/// One `key=value` of the `server<index>` INFO line.
fn server_field(v: &Valkey, index: usize, key: &str) -> String {
    let all = info(v);
    let line = all
        .get(&format!("server{index}"))
        .unwrap_or_else(|| panic!("no server{index} in {all:?}"));
    line.split(',')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .to_owned()
}

fn ms(all: &BTreeMap<String, String>, field: &str) -> f64 {
    all[field]
        .parse()
        .unwrap_or_else(|_| panic!("{field} is not a number"))
}

fn password_file(dir: &Path, password: &str, mode: u32) -> PathBuf {
    let path = dir.join("service.pw");
    fs::write(&path, format!("{password}\n")).expect("write password file");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

fn lines_of(reply: &Reply) -> Vec<String> {
    match reply {
        Reply::Array(items) => items.iter().filter_map(Reply::text).collect(),
        other => panic!("expected an array, got {other}"),
    }
}

fn check(v: &Valkey, args: &[&str]) -> Vec<String> {
    let mut cmd: Vec<&[u8]> = vec![b"VALKEYAUTH.CHECK"];
    cmd.extend(args.iter().map(|a| a.as_bytes()));
    lines_of(&v.raw().call(&cmd))
}

fn has_line(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

/// The audit file's lines once it holds at least `n` (or after 10 s).
fn audit_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<String> = fs::File::open(path)
            .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
            .unwrap_or_default();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// --------------------------------------------------------------------------------------------
// INFO
// --------------------------------------------------------------------------------------------

#[test]
fn info_fields_follow_what_happens() {
    let mut slapd = Slapd::start_default();
    let v = valkey(
        &slapd.url(),
        &[
            "workers",
            "1",
            "cache_ttl_s",
            "30",
            "local_fallback",
            "unavailable",
            "health_check_interval_ms",
            "100",
        ],
    );
    acl_setuser(&v, &["carol", "on", ">carol-local", "+@all", "~*"]);
    let before = info(&v);
    for (field, want) in [
        ("latency_count", "0"),
        ("busy_workers", "0"),
        ("queue_depth", "0"),
        ("queue_depth_peak", "0"),
        ("latency_p99_ms", "0.000"),
    ] {
        assert_eq!(before[field], want, "{field}");
    }
    assert_eq!(server_field(&v, 0, "last_error"), "none");
    assert_eq!(server_field(&v, 0, "open_connections"), "0");

    assert_eq!(v.raw().auth(b"alice", ALICE.password.as_bytes()), ok());
    assert_eq!(v.raw().auth(b"alice", ALICE.password.as_bytes()), ok()); // cache
    assert_eq!(v.raw().auth(b"bob", b"wrong"), wrongpass());
    assert_eq!(v.raw().auth(b"nobody", b"pw"), wrongpass());
    assert_eq!(v.raw().auth(b"alice", b""), wrongpass());
    v.raw().auth(b"default", b"x"); // exempt: Valkey decides
    assert_outcomes(
        &v,
        &[
            ("allowed", 2),
            ("denied_bad_credentials", 1),
            ("denied_no_acl_user", 1),
            ("denied_empty_password", 1),
            ("exempt_passthrough", 1),
        ],
    );
    let after = info(&v);
    let counter = |f: &str| after[f].parse::<u64>().unwrap();
    assert_eq!(counter("latency_count"), 2, "two AUTHs asked the directory");
    assert_eq!(counter("cache_hits"), 1);
    // alice's first AUTH and bob's; a name without an ACL user or an empty password never
    // gets as far as the cache.
    assert_eq!(counter("cache_misses"), 2);
    assert_eq!(counter("exempt_passthrough"), 1);
    let (p50, p90, p99, max) = (
        ms(&after, "latency_p50_ms"),
        ms(&after, "latency_p90_ms"),
        ms(&after, "latency_p99_ms"),
        ms(&after, "latency_max_ms"),
    );
    assert!(
        0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
        "{after:?}"
    );
    assert_eq!(server_field(&v, 0, "open_connections"), "1");
    assert!(server_field(&v, 0, "last_rtt_ms").parse::<f64>().unwrap() > 0.0);
    assert_eq!(server_field(&v, 0, "last_error"), "none");

    // A frozen directory: one worker busy, the rest queued.
    slapd.freeze();
    let mut waiting: Vec<RawClient> = (0..3)
        .map(|i| {
            let mut c = v.raw();
            let user = format!("user{i}");
            acl_setuser(&v, &[&user, "on", "+@all"]);
            c.send(&[b"AUTH", user.as_bytes(), b"pw"]).unwrap();
            c
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while info(&v)["queue_depth"] != "2" && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let stormy = info(&v);
    assert_eq!(stormy["busy_workers"], "1", "{stormy:?}");
    assert_eq!(stormy["queue_depth"], "2", "{stormy:?}");
    let peak: u64 = stormy["queue_depth_peak"].parse().unwrap();
    assert!((2..=3).contains(&peak), "{stormy:?}");
    slapd.thaw();
    for c in &mut waiting {
        assert_eq!(c.read(), wrongpass());
    }

    // The directory gone: the outage counters, the server's state and error class, and the
    // local fallback.
    slapd.stop();
    assert!(v.raw().auth(b"bob", b"bob-pw").error().is_some());
    assert_eq!(server_field(&v, 0, "state"), "down");
    assert_eq!(server_field(&v, 0, "last_error"), "unreachable");
    assert_eq!(v.raw().auth(b"carol", b"carol-local"), ok());
    let down = info(&v);
    assert!(down["outage_unreachable"].parse::<u64>().unwrap() >= 2);
    assert_eq!(down["local_fallback_used"], "2");
    // A worker counts itself idle just after it hands its answer over.
    let deadline = Instant::now() + Duration::from_secs(2);
    let idle = loop {
        let now = info(&v);
        let idle = now["queue_depth"] == "0" && now["busy_workers"] == "0";
        if idle || Instant::now() > deadline {
            break idle;
        }
        thread::sleep(Duration::from_millis(10));
    };
    assert!(idle, "{:?}", info(&v));
}

#[test]
fn every_denial_is_in_acl_log_with_its_reason() {
    let slapd = Slapd::start_default();
    let v = valkey(&slapd.url(), &[]);
    let mut admin = v.raw();
    admin.call(&[b"ACL", b"LOG", b"RESET"]);
    assert_eq!(v.raw().auth(b"alice", b"wrong"), wrongpass());
    assert_eq!(v.raw().auth(b"nobody", b"pw"), wrongpass());
    assert_eq!(v.raw().auth(b"bob", b""), wrongpass());
    let entries = match admin.call(&[b"ACL", b"LOG"]) {
        Reply::Array(entries) => entries,
        other => panic!("ACL LOG: {other}"),
    };
    let seen: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            let field = |k: &str| e.get(k).and_then(Reply::text).unwrap_or_default();
            (field("username"), field("object"), field("reason"))
        })
        .collect();
    for (user, object) in [
        ("bob", "valkeyauth:empty-password"),
        ("nobody", "valkeyauth:no-acl-user"),
        ("alice", "valkeyauth:bad-credentials"),
    ] {
        assert!(
            seen.iter()
                .any(|(u, o, r)| u == user && o == object && r == "auth"),
            "{user} {object} in {seen:?}"
        );
    }
}

// --------------------------------------------------------------------------------------------
// Audit trail
// --------------------------------------------------------------------------------------------

/// With UPN bind names, a username that could name another account is refused on the main
/// thread: no worker, no directory server in the audit, no cache miss.
#[test]
fn upn_names_that_could_change_the_account_are_refused_without_a_server() {
    let slapd = Slapd::start_default();
    let dir = TempDir::new("audit-upn");
    let file = dir.path().join("audit.jsonl");
    let v = valkey(
        &slapd.url(),
        &[
            "bind_dn_prefix",
            "",
            "bind_dn_suffix",
            "@corp.example.test",
            "audit",
            "file",
            "audit_file",
            file.to_str().unwrap(),
        ],
    );
    acl_setuser(&v, &["eve@other.test", "on", ">eve-local", "+@all", "~*"]);
    let binds = slapd.count_ops("BIND");
    assert_eq!(v.raw().auth(b"eve@other.test", b"Eve-Upn-Pw"), wrongpass());
    let lines = audit_lines(&file, 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("\"reason\":\"invalid-username\",\"server\":null"),
        "{}",
        lines[0]
    );
    assert!(!lines[0].contains("Eve-Upn-Pw"));
    let after = info(&v);
    assert_eq!(after["denied_invalid_username"], "1");
    assert_eq!(after["cache_misses"], "0");
    assert_eq!(after["latency_count"], "0");

    // CHECK refuses it the same way, and says so in its list form.
    let lines = check(&v, &["eve@other.test", "Eve-Upn-Pw"]);
    assert!(
        has_line(
            &lines,
            "result: denied (invalid-username) without asking the directory"
        ),
        "{lines:#?}"
    );
    assert_eq!(
        slapd.count_ops("BIND"),
        binds,
        "no bind reached the directory"
    );
}

#[test]
fn audit_file_has_every_decision_and_follows_rotation() {
    let slapd = Slapd::start_default();
    let dir = TempDir::new("audit");
    let file = dir.path().join("audit.jsonl");
    let v = valkey(
        &slapd.url(),
        &["audit", "file", "audit_file", file.to_str().unwrap()],
    );
    assert_eq!(v.raw().auth(b"alice", ALICE.password.as_bytes()), ok());
    assert_eq!(v.raw().auth(b"bob", b"Wrong-Audit-Pw"), wrongpass());
    assert_eq!(v.raw().auth(b"nobody", b"Other-Audit-Pw"), wrongpass());
    let lines = audit_lines(&file, 3);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("{\"time\":\"20") && lines[0].ends_with('}'));
    assert!(lines[0].contains("\"client\":\"127.0.0.1:"), "{}", lines[0]);
    assert!(lines[0].contains("\"user\":\"alice\",\"outcome\":\"allowed\""));
    assert!(lines[0].contains(&format!("\"server\":\"{}\"", slapd.url())));
    assert!(
        lines[1].contains("\"user\":\"bob\",\"outcome\":\"denied\",\"reason\":\"bad-credentials\"")
    );
    assert!(lines[2].contains("\"reason\":\"no-acl-user\",\"server\":null"));
    let text = lines.join("\n");
    for secret in [ALICE.password, "Wrong-Audit-Pw", "Other-Audit-Pw"] {
        assert!(!text.contains(secret), "{secret} in the audit file");
    }
    let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Rotation by moving the file away: the next record goes to a new file by itself.
    let moved = dir.path().join("audit.jsonl.1");
    fs::rename(&file, &moved).unwrap();
    assert_eq!(v.raw().auth(b"bob", b"bob-pw"), ok());
    assert_eq!(audit_lines(&file, 1).len(), 1);
    assert_eq!(audit_lines(&moved, 3).len(), 3);

    // Rotation by copy and truncate keeps the same file; REOPEN is the explicit signal.
    let rotated = dir.path().join("audit.jsonl.2");
    fs::rename(&file, &rotated).unwrap();
    let mut admin = v.raw();
    assert!(admin.call(&[b"VALKEYAUTH.AUDIT", b"REOPEN"]).is_ok());
    assert!(file.exists() || audit_lines(&file, 0).is_empty());
    assert_eq!(v.raw().auth(b"alice", ALICE.password.as_bytes()), ok());
    assert_eq!(audit_lines(&file, 1).len(), 1);
    assert_eq!(audit_lines(&rotated, 1).len(), 1);
    let counters = info(&v);
    assert_eq!(counters["audit_dropped"], "0");
    assert_eq!(counters["audit_write_errors"], "0");

    // What cannot be an audit file is refused when set; a FIFO would block whoever opens it.
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    for (bad, why) in [
        (fifo.to_str().unwrap(), "not a regular file"),
        ("/dev/full", "not a regular file"),
        ("relative.jsonl", "absolute path"),
        ("/nonexistent-dir/audit.jsonl", "does not exist"),
    ] {
        let r = admin.call(&[b"CONFIG", b"SET", b"valkeyauth.audit_file", bad.as_bytes()]);
        assert!(r.error().unwrap_or_default().contains(why), "{bad}: {r}");
    }

    // A file that cannot be written later is counted and logged; logins go on.
    let gone = dir.path().join("gone");
    fs::create_dir(&gone).unwrap();
    let target = gone.join("audit.jsonl");
    let r = admin.call(&[
        b"CONFIG",
        b"SET",
        b"valkeyauth.audit_file",
        target.to_str().unwrap().as_bytes(),
    ]);
    assert!(r.is_ok(), "{r}");
    audit_lines(&target, 0);
    // The audit thread opens the new file in its own time: it may create it while the
    // directory is being removed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = fs::remove_dir_all(&gone) {
        assert!(Instant::now() < deadline, "remove {}: {e}", gone.display());
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(v.raw().auth(b"alice", ALICE.password.as_bytes()), ok());
    let deadline = Instant::now() + Duration::from_secs(5);
    while info(&v)["audit_write_errors"] == "0" && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_ne!(info(&v)["audit_write_errors"], "0");
    assert!(v.wait_for_log(
        "valkeyauth: audit_file: cannot open",
        Duration::from_secs(5)
    ));
    assert_eq!(admin.call(&[b"PING"]), Reply::Simple("PONG".to_owned()));
}

#[test]
fn audit_to_the_log_and_its_errors() {
    let slapd = Slapd::start_default();
    let v = valkey(&slapd.url(), &[]);
    assert_eq!(v.raw().auth(b"alice", ALICE.password.as_bytes()), ok());
    assert_eq!(v.raw().auth(b"bob", b"Log-Audit-Wrong"), wrongpass());
    assert!(v.wait_for_log(
        "valkeyauth: audit client=127.0.0.1:",
        Duration::from_secs(5)
    ));
    let log = v.log();
    assert!(
        log.contains("user=\"alice\" outcome=allowed reason=allowed"),
        "{log}"
    );
    assert!(
        log.contains("user=\"bob\" outcome=denied reason=bad-credentials"),
        "{log}"
    );
    assert!(!log.contains("Log-Audit-Wrong"));

    let mut admin = v.raw();
    let r = admin.call(&[b"CONFIG", b"SET", b"valkeyauth.audit", b"file"]);
    assert!(r.error().unwrap_or_default().contains("audit_file"), "{r}");
    assert!(admin
        .call(&[b"VALKEYAUTH.AUDIT", b"REOPEN"])
        .error()
        .unwrap_or_default()
        .contains("not `file`"));
    assert!(admin
        .call(&[b"VALKEYAUTH.AUDIT", b"ROTATE"])
        .error()
        .is_some());
    config_set_ok(&v, "valkeyauth.audit", "off");
    let lines = v.log().matches("valkeyauth: audit ").count();
    assert_eq!(v.raw().auth(b"bob", b"wrong"), wrongpass());
    thread::sleep(Duration::from_millis(200));
    assert_eq!(v.log().matches("valkeyauth: audit ").count(), lines);
}

// --------------------------------------------------------------------------------------------
// VALKEYAUTH.CHECK
// --------------------------------------------------------------------------------------------

#[test]
fn check_servers_healthy_dead_bad_ca_and_wrong_service_password() {
    let pki = Pki::new();
    let slapd = Slapd::builder()
        .global(format!("TLSCertificateFile {}", pki.arg("server.pem")))
        .global(format!("TLSCertificateKeyFile {}", pki.arg("server.key")))
        .ldaps()
        .start();
    let dir = TempDir::new("check");
    let pw = password_file(dir.path(), SEARCHER.password, 0o600);
    let dead = format!("ldap://127.0.0.1:{}", free_port());
    let mut args = search_args(
        &format!("{} {} {dead}", slapd.url(), slapd.ldaps_url()),
        &[
            "tls_ca_cert_path",
            &pki.arg("ca.pem"),
            "connect_timeout_ms",
            "1000",
        ],
    );
    args.extend(service_args(&pw));
    let v = Valkey::builder().module(args).start();

    let lines = check(&v, &[]);
    let plain = slapd.url();
    let tls = slapd.ldaps_url();
    for want in [
        format!("{plain} connect: ok"),
        format!("{plain} root_dse: ok"),
        format!("{plain} tls: ok"),
        "not used: this connection is plaintext".to_owned(),
        format!("{plain} service_bind: ok"),
        format!("bound as {}", SEARCHER.dn),
        format!("{plain} search_base: ok"),
        format!("{SUFFIX} exists"),
        format!("{tls} connect: ok"),
        format!("{tls} tls: ok"),
        "subject cn=127.0.0.1".to_owned(),
        format!("{tls} search_base: ok"),
        format!("{dead} root_dse: FAILED"),
    ] {
        assert!(has_line(&lines, &want), "{want:?} in {lines:#?}");
    }
    let expiry = lines.iter().find(|l| l.contains("expires 20")).unwrap();
    assert!(!expiry.contains("EXPIRED"), "{expiry}");
    assert!(!has_line(&lines, &format!("{dead} service_bind")));

    // An untrusted certificate, and a wrong service password.
    fs::write(&pw, "not-the-password\n").unwrap();
    let mut admin = v.raw();
    let r = admin.call(&[
        b"CONFIG",
        b"SET",
        b"valkeyauth.tls_ca_cert_path",
        pki.arg("rogue-ca.pem").as_bytes(),
    ]);
    assert!(r.is_ok(), "{r}");
    let lines = check(&v, &[]);
    assert!(
        has_line(&lines, &format!("{tls} connect: FAILED")),
        "{lines:#?}"
    );
    assert!(has_line(&lines, "certificate"), "{lines:#?}");
    let bind = lines
        .iter()
        .find(|l| l.starts_with(&format!("{plain} service_bind")))
        .unwrap();
    assert!(
        bind.contains("FAILED") && bind.contains("Invalid credentials"),
        "{bind}"
    );
    assert!(!has_line(&lines, &format!("{plain} search_base")));
}

#[test]
fn check_a_login_without_logging_in() {
    let slapd = Slapd::start_default();
    let v = Valkey::builder()
        .module(search_args(
            &slapd.url(),
            &[
                "provision",
                "on",
                "acl_map",
                "admins => +@all ~*; readers => +@read ~*",
                "exempt_users",
                "default ops",
            ],
        ))
        .config("slowlog-log-slower-than 0")
        .start();
    add_acl_users(&v, &["alice"]);
    let mut monitor = v.raw();
    assert!(monitor.call(&[b"MONITOR"]).is_ok());

    let lines = check(&v, &["alice", ALICE.password]);
    assert!(has_line(&lines, "user: alice"), "{lines:#?}");
    assert!(has_line(&lines, &format!("server: {}", slapd.url())));
    assert!(has_line(&lines, &format!("dn: {}", ALICE.dn)));
    assert!(has_line(&lines, "result: allowed"));
    assert!(has_line(&lines, "acl: the ACL user of this name"));

    let lines = check(&v, &["bob", BOB.password]);
    assert!(has_line(&lines, "result: allowed"), "{lines:#?}");
    assert!(has_line(&lines, READERS_DN), "{lines:#?}");
    assert!(
        has_line(
            &lines,
            "acl: a provisioned user with the rules: (+@read ~*)"
        ),
        "{lines:#?}"
    );

    let lines = check(&v, &["bob", "Check-Wrong-Pw"]);
    assert!(
        has_line(&lines, "result: denied (bad-credentials)"),
        "{lines:#?}"
    );
    let lines = check(&v, &["nobody", "Check-Wrong-Pw"]);
    assert!(has_line(&lines, "dn: (not found)"), "{lines:#?}");
    assert!(has_line(&lines, "result: denied (unknown-user)"));
    let r = v.raw().call(&[b"VALKEYAUTH.CHECK", b"alice", b""]);
    assert!(
        r.error().unwrap_or_default().contains("empty-password"),
        "{r}"
    );
    let r = v.raw().call(&[b"VALKEYAUTH.CHECK", b"alice"]);
    assert!(r.error().is_some(), "{r}");
    // A password given alone, by mistake, is redacted too.
    let r = v.raw().call(&[b"VALKEYAUTH.CHECK", b"Check-Alone-Pw"]);
    assert!(r.error().is_some(), "{r}");
    let r = v
        .raw()
        .call(&[b"VALKEYAUTH.CHECK", b"alice", b"Check-Extra-Pw", b"x"]);
    assert!(
        r.error().unwrap_or_default().contains("wrong number"),
        "{r}"
    );

    // A name AUTH would refuse before asking the directory gets the same answer, with no
    // directory traffic (provisioning cannot take upper-case names).
    let binds = slapd.count_ops("BIND");
    let lines = check(&v, &["Bob", BOB.password]);
    assert!(
        has_line(&lines, "without asking the directory"),
        "{lines:#?}"
    );
    assert!(has_line(&lines, "cannot be provisioned"), "{lines:#?}");
    assert_eq!(slapd.count_ops("BIND"), binds);

    // Nobody was logged in, and nothing was counted as a login.
    assert_eq!(info_field(&v, "allowed"), 0);
    assert_eq!(run_whoami(&v), "default");

    // The password never shows in SLOWLOG or MONITOR.
    let slowlog = all_text(&v.raw().call(&[b"SLOWLOG", b"GET", b"100"]));
    assert!(
        slowlog.to_lowercase().contains("valkeyauth.check"),
        "{slowlog}"
    );
    monitor.set_read_timeout(Duration::from_millis(300));
    let mut monitored = String::new();
    while let Ok(r) = monitor.try_read() {
        monitored += &all_text(&r);
    }
    // Valkey leaves the blocked, redacted command out of MONITOR; what follows it shows.
    assert!(monitored.contains("\"ACL\" \"WHOAMI\""), "{monitored}");
    for secret in [
        ALICE.password,
        BOB.password,
        "Check-Wrong-Pw",
        "Check-Extra-Pw",
        "Check-Alone-Pw",
    ] {
        assert!(!slowlog.contains(secret), "{secret} in SLOWLOG: {slowlog}");
        assert!(
            !monitored.contains(secret),
            "{secret} in MONITOR: {monitored}"
        );
    }

    // Admin only.
    acl_setuser(&v, &["ops", "on", ">ops-pw", "+@all", "-@admin"]);
    let mut ops = v.raw();
    assert_eq!(ops.auth(b"ops", b"ops-pw"), ok());
    let r = ops.call(&[b"VALKEYAUTH.CHECK"]);
    assert!(r.error().unwrap_or_default().contains("NOPERM"), "{r}");
}

fn run_whoami(v: &Valkey) -> String {
    v.raw().whoami()
}

// --------------------------------------------------------------------------------------------
// The service password file
// --------------------------------------------------------------------------------------------

#[test]
fn password_file_readable_by_others_is_refused_unless_allowed() {
    let slapd = Slapd::start_default();
    let dir = TempDir::new("pwfile");
    let pw = password_file(dir.path(), SEARCHER.password, 0o640);
    let mut args = search_args(&slapd.url(), &[] as &[&str]);
    args.extend(service_args(&pw));
    let refused = Valkey::builder()
        .module(args.clone())
        .start_expect_failure();
    assert!(
        refused.contains("can be read or written by group or others"),
        "{refused}"
    );

    args.extend(["allow_readable_passwd_file".to_owned(), "yes".to_owned()]);
    let v = Valkey::builder().module(args).start();
    add_acl_users(&v, &["alice"]);
    assert!(v.wait_for_log("is open to group or others", Duration::from_secs(5)));
    assert_eq!(v.raw().auth(b"alice", ALICE.password.as_bytes()), ok());

    let mut admin = v.raw();
    let set = |c: &mut RawClient, name: &str, value: &str| {
        let key = format!("valkeyauth.{name}");
        c.call(&[b"CONFIG", b"SET", key.as_bytes(), value.as_bytes()])
    };
    let r = set(&mut admin, "allow_readable_passwd_file", "no");
    assert!(r.error().unwrap_or_default().contains("chmod 600"), "{r}");
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o602)).unwrap();
    let r = set(&mut admin, "allow_readable_passwd_file", "no");
    assert!(r.error().unwrap_or_default().contains("chmod 600"), "{r}");
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(set(&mut admin, "allow_readable_passwd_file", "no").is_ok());

    // A FIFO, a directory, a relative path or a huge file is refused at once; a FIFO never
    // holds the main thread.
    let fifo = dir.path().join("pw.fifo");
    mkfifo(&fifo);
    fs::set_permissions(&fifo, fs::Permissions::from_mode(0o600)).unwrap();
    let huge = dir.path().join("huge.pw");
    fs::write(&huge, vec![b'x'; 100_000]).unwrap();
    fs::set_permissions(&huge, fs::Permissions::from_mode(0o600)).unwrap();
    for (bad, why) in [
        (fifo.to_str().unwrap(), "not a regular file"),
        (dir.path().to_str().unwrap(), "not a regular file"),
        ("service.pw", "absolute path"),
        (huge.to_str().unwrap(), "too long"),
    ] {
        let started = Instant::now();
        let r = set(&mut admin, "search_bind_passwd_file", bad);
        assert!(r.error().unwrap_or_default().contains(why), "{bad}: {r}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{bad} held the main thread"
        );
    }
    assert_eq!(v.raw().auth(b"alice", ALICE.password.as_bytes()), ok());
}

#[test]
fn reload_and_setting_the_path_again_read_the_file_again() {
    let slapd = Slapd::start_default();
    let dir = TempDir::new("reload");
    let pw = password_file(dir.path(), SEARCHER.password, 0o600);
    let mut args = search_args(&slapd.url(), &["workers", "1"]);
    args.extend(service_args(&pw));
    let v = Valkey::builder().module(args).start();
    add_acl_users(&v, &["alice"]);
    assert_eq!(v.raw().auth(b"alice", ALICE.password.as_bytes()), ok());

    // A wrong password in the file changes nothing until the file is read again: the bound
    // connection is kept.
    fs::write(&pw, "rotated-wrongly\n").unwrap();
    assert_eq!(v.raw().auth(b"alice", ALICE.password.as_bytes()), ok());
    let mut admin = v.raw();
    assert!(admin.call(&[b"VALKEYAUTH.RELOAD"]).is_ok());
    let r = v.raw().auth(b"alice", ALICE.password.as_bytes());
    assert!(
        r.error().is_some(),
        "the wrong service password was used: {r}"
    );

    fs::write(&pw, format!("{}\n", SEARCHER.password)).unwrap();
    let path = pw.to_str().unwrap();
    config_set_ok(&v, "valkeyauth.search_bind_passwd_file", path);
    assert_eq!(v.raw().auth(b"alice", ALICE.password.as_bytes()), ok());

    // RELOAD refuses a file that became unreadable by its rules, and keeps running.
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o644)).unwrap();
    let r = admin.call(&[b"VALKEYAUTH.RELOAD"]);
    assert!(r.error().unwrap_or_default().contains("chmod 600"), "{r}");
    assert_eq!(v.raw().auth(b"alice", ALICE.password.as_bytes()), ok());
}

/// Files are checked when their option is set, and the password file again on RELOAD. One
/// that goes away later (a deleted log directory, a removed password file) must not block
/// changes to other options: those are what an operator needs in an incident.
#[test]
fn a_file_gone_missing_blocks_no_other_change() {
    let slapd = Slapd::start_default();
    let dir = TempDir::new("gone");
    let pw = password_file(dir.path(), SEARCHER.password, 0o600);
    let logs = dir.path().join("logs");
    fs::create_dir(&logs).unwrap();
    let audit = logs.join("audit.jsonl");
    let mut args = search_args(&slapd.url(), &["workers", "1"]);
    args.extend(service_args(&pw));
    args.extend(["audit", "file", "audit_file", audit.to_str().unwrap()].map(String::from));
    let v = Valkey::builder().module(args).start();
    add_acl_users(&v, &["alice"]);
    assert_eq!(v.raw().auth(b"alice", ALICE.password.as_bytes()), ok());
    assert_eq!(audit_lines(&audit, 1).len(), 1);

    fs::remove_dir_all(&logs).unwrap();
    config_set_ok(&v, "valkeyauth.workers", "2");
    config_set_ok(&v, "valkeyauth.servers", &slapd.url());
    let mut admin = v.raw();
    assert!(admin.call(&[b"VALKEYAUTH.RELOAD"]).is_ok());
    assert_eq!(v.raw().auth(b"alice", ALICE.password.as_bytes()), ok());
    let errors = || info(&v)["audit_write_errors"].parse::<u64>().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while errors() == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(errors() > 0, "the lost audit directory is counted");

    fs::remove_file(&pw).unwrap();
    config_set_ok(&v, "valkeyauth.workers", "1");
    config_set_ok(&v, "valkeyauth.audit", "log");
    let r = admin.call(&[b"VALKEYAUTH.RELOAD"]);
    let err = r.error().unwrap_or_default();
    assert!(
        err.contains("search_bind_passwd_file") && err.contains("No such file"),
        "{r}"
    );
}

/// File paths are protected configs, as Valkey's own `dir` and `dbfilename` are: with
/// `enable-protected-configs no`, CONFIG SET cannot point them at another file, while
/// valkey.conf and module arguments still set them.
#[test]
fn file_paths_are_protected_configs() {
    let slapd = Slapd::start_default();
    let dir = TempDir::new("protected");
    let pw = password_file(dir.path(), SEARCHER.password, 0o600);
    let audit = dir.path().join("audit.jsonl");
    let mut args = search_args(&slapd.url(), &["audit", "file"]);
    args.extend(service_args(&pw));
    let v = Valkey::builder()
        .module(args)
        .config(format!("valkeyauth.audit_file {}", audit.display()))
        .config("enable-protected-configs no")
        .start();
    add_acl_users(&v, &["alice"]);
    assert_eq!(v.raw().auth(b"alice", ALICE.password.as_bytes()), ok());
    assert_eq!(audit_lines(&audit, 1).len(), 1);
    let other = dir.path().join("other.pem");
    fs::write(&other, "not read").unwrap();
    for name in [
        "audit_file",
        "search_bind_passwd_file",
        "tls_ca_cert_path",
        "tls_cert_path",
        "tls_key_path",
    ] {
        let r = v.raw().call(&[
            b"CONFIG",
            b"SET",
            format!("valkeyauth.{name}").as_bytes(),
            other.to_str().unwrap().as_bytes(),
        ]);
        let err = r.error().unwrap_or_default();
        assert!(err.contains("protected"), "CONFIG SET {name}: {r}");
    }
    config_set_ok(&v, "valkeyauth.workers", "3");
}

// --------------------------------------------------------------------------------------------
// Secrets
// --------------------------------------------------------------------------------------------

/// Every flow with distinctive passwords, then a search for each of them in everything the
/// server writes or shows.
#[test]
fn no_password_anywhere() {
    const USER_PW: &str = "Dq7-User-Secret-Alpha";
    const WRONG_PW: &str = "Dq7-Wrong-Secret-Bravo";
    const SERVICE_PW: &str = "Dq7-Service-Secret-Charlie";
    const LEGACY_PW: &str = "Dq7-Legacy-Secret-Delta";
    const CHECK_PW: &str = "Dq7-Check-Secret-Echo";
    let slapd = Slapd::start_default();
    for (dn, pw) in [
        (ALICE.dn, USER_PW),
        (SEARCHER.dn, SERVICE_PW),
        (BOB.dn, LEGACY_PW),
    ] {
        ldapmodify(
            &slapd,
            &format!("dn: {dn}\nchangetype: modify\nreplace: userPassword\nuserPassword: {pw}\n"),
        );
    }
    let dir = TempDir::new("secrets");
    let pw = password_file(dir.path(), SERVICE_PW, 0o600);
    let audit = dir.path().join("audit.jsonl");
    let mut args = search_args(
        &slapd.url(),
        &[
            "legacy_auth_separator",
            ":",
            "audit",
            "file",
            "audit_file",
            audit.to_str().unwrap(),
        ],
    );
    args.extend(service_args(&pw));
    let v = Valkey::builder()
        .module(args)
        .config("loglevel debug")
        .config("slowlog-log-slower-than 0")
        .config("requirepass default-local-pw")
        .start();
    let mut admin = v.raw();
    assert_eq!(admin.auth(b"default", b"default-local-pw"), ok());
    for user in ["alice", "bob"] {
        admin.call(&[b"ACL", b"SETUSER", user.as_bytes(), b"on", b"+@all", b"~*"]);
    }
    let mut monitor = v.raw();
    monitor.auth(b"default", b"default-local-pw");
    assert!(monitor.call(&[b"MONITOR"]).is_ok());

    assert_eq!(v.raw().auth(b"alice", USER_PW.as_bytes()), ok());
    assert_eq!(v.raw().auth(b"alice", WRONG_PW.as_bytes()), wrongpass());
    assert_eq!(
        v.raw().hello3_auth(b"alice", USER_PW.as_bytes()).error(),
        None
    );
    let legacy = format!("bob:{LEGACY_PW}");
    assert_eq!(
        v.raw().call(&[b"AUTH", legacy.as_bytes()]),
        ok(),
        "legacy AUTH"
    );
    let lines = lines_of(&admin.call(&[b"VALKEYAUTH.CHECK", b"alice", CHECK_PW.as_bytes()]));
    assert!(has_line(&lines, "denied (bad-credentials)"), "{lines:?}");
    // The legacy form is checked as a one-argument AUTH would be: as bob.
    let lines = lines_of(&admin.call(&[b"VALKEYAUTH.CHECK", b"default", legacy.as_bytes()]));
    assert!(has_line(&lines, "user: bob"), "{lines:?}");
    assert!(has_line(&lines, "result: allowed"), "{lines:?}");
    assert!(has_line(
        &lines_of(&admin.call(&[b"VALKEYAUTH.CHECK"])),
        "service_bind: ok"
    ));
    assert!(admin.call(&[b"VALKEYAUTH.RELOAD"]).is_ok());
    assert!(admin.call(&[b"CONFIG", b"REWRITE"]).is_ok());
    audit_lines(&audit, 4);

    let mut seen = everything_shown(&v, &mut admin);
    seen += &all_text(&admin.call(&[b"VALKEYAUTH.USERS"]));
    monitor.set_read_timeout(Duration::from_millis(300));
    while let Ok(r) = monitor.try_read() {
        seen += &all_text(&r);
    }
    seen += &fs::read_to_string(&audit).unwrap();
    assert!(seen.contains("valkeyauth_allowed:3"), "INFO was read");
    assert!(seen.contains("loadmodule"), "the rewritten config was read");
    assert!(
        seen.contains("\"outcome\":\"allowed\""),
        "the audit file was read"
    );
    assert!(
        seen.to_lowercase().contains("valkeyauth.check"),
        "MONITOR was read"
    );
    for secret in [USER_PW, WRONG_PW, SERVICE_PW, LEGACY_PW, CHECK_PW] {
        assert!(!seen.contains(secret), "{secret} appears:\n{seen}");
    }
}

/// Valkey with the module writing its audit to a file of a new temporary directory, and the
/// directory operation timeout cut to 300 ms; `extra` adds module arguments.
fn with_audit_file(slapd: &Slapd, extra: &[&str]) -> (TempDir, PathBuf, Valkey) {
    let dir = TempDir::new("audit");
    let file = dir.path().join("audit.jsonl");
    let mut args = vec![
        "audit",
        "file",
        "audit_file",
        file.to_str().unwrap(),
        "operation_timeout_ms",
        "300",
    ];
    args.extend_from_slice(extra);
    let v = valkey(&slapd.url(), &args);
    (dir, file, v)
}

#[test]
fn an_outage_is_audited_with_the_server_that_failed() {
    let mut slapd = Slapd::start_default();
    let (_dir, file, v) = with_audit_file(&slapd, &[]);
    slapd.freeze();
    let r = v.raw().auth(b"alice", ALICE.password.as_bytes());
    assert!(r.error().is_some(), "{r}");
    let lines = audit_lines(&file, 1);
    let expected = format!(
        "\"outcome\":\"outage\",\"reason\":\"timeout\",\"server\":\"{}\"",
        slapd.url()
    );
    assert!(lines[0].contains(&expected), "{lines:?}");
}

/// A client that hangs up before its answer still reached the directory (a wrong password
/// there counts toward a lockout): every such AUTH is audited and counted, shared answers
/// included, and none shows its password.
#[test]
fn a_client_that_hangs_up_is_still_audited_and_counted() {
    let mut slapd = Slapd::start_default();
    let (_dir, file, v) = with_audit_file(&slapd, &["negative_cache_ttl_s", "0"]);
    // Some answers may still beat the hang-up: either way, one record per AUTH.
    for i in 0..20 {
        auth_and_hang_up(&v, b"bob", format!("Hangup-Wrong-{i}").as_bytes());
    }
    let lines = audit_lines(&file, 20);
    assert_eq!(lines.len(), 20, "{lines:#?}");
    assert!(lines
        .iter()
        .all(|l| l.contains("\"reason\":\"bad-credentials\"")));
    assert_eq!(info(&v)["denied_bad_credentials"], "20");

    // Against a frozen directory the hang-up always comes first. Two identical AUTHs share
    // one request, and each is recorded.
    slapd.freeze();
    auth_and_hang_up(&v, b"alice", b"Hangup-Frozen-Pw");
    auth_and_hang_up(&v, b"alice", b"Hangup-Frozen-Pw");
    let lines = audit_lines(&file, 22);
    for line in &lines[20..] {
        assert!(
            line.contains("\"client\":\"disconnected\",\"client_id\":"),
            "{line}"
        );
        assert!(
            line.contains("\"user\":\"alice\",\"outcome\":\"outage\",\"reason\":\"timeout\""),
            "{line}"
        );
    }
    assert_eq!(info(&v)["outage_timeout"], "2");
    let text = fs::read_to_string(&file).unwrap();
    assert!(!text.contains("Hangup-"), "a password in the audit file");
}

/// A hang-up is judged against the ACL user as a login would be: allowed for a user that is
/// on, denied (no-acl-user) for one switched off. Each outcome is the same whichever comes
/// first, the answer or the hang-up.
#[test]
fn a_hang_up_is_judged_against_the_acl_user() {
    let slapd = Slapd::start_default();
    let (_dir, file, v) = with_audit_file(&slapd, &["cache_ttl_s", "0"]);
    acl_setuser(&v, &["bob", "off"]);
    for _ in 0..5 {
        auth_and_hang_up(&v, b"alice", ALICE.password.as_bytes());
        auth_and_hang_up(&v, b"bob", BOB.password.as_bytes());
    }
    let lines = audit_lines(&file, 10);
    assert_eq!(lines.len(), 10, "{lines:#?}");
    for line in &lines {
        let expected = if line.contains("\"user\":\"alice\"") {
            "\"outcome\":\"allowed\""
        } else {
            "\"outcome\":\"denied\",\"reason\":\"no-acl-user\""
        };
        assert!(line.contains(expected), "{line}");
    }
    assert_eq!(info(&v)["allowed"], "5");
    assert_eq!(info(&v)["denied_no_acl_user"], "5");
}

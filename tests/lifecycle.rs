//! Module lifecycle: repeated MODULE LOAD/UNLOAD without leaked workers or health checkers, a
//! clean refusal on
//! Redis 7.0, a smoke test on Valkey 8.1, and MODULE UNLOAD while a client waits on the
//! directory.

mod common;

use common::*;
use std::time::{Duration, Instant};

// --------------------------------------------------------------------------------------------
// Helpers
// --------------------------------------------------------------------------------------------

fn module_path_bytes() -> Vec<u8> {
    module_path()
        .to_str()
        .expect("utf-8 path")
        .as_bytes()
        .to_vec()
}

/// `MODULE LOAD <path> servers <url> bind_dn_suffix <suffix> <extra...>`
fn module_load(c: &mut RawClient, servers: &str, extra: &[&str]) -> Reply {
    let path = module_path_bytes();
    let mut args: Vec<&[u8]> = vec![
        b"MODULE",
        b"LOAD",
        &path,
        b"servers",
        servers.as_bytes(),
        b"bind_dn_suffix",
        BIND_SUFFIX.as_bytes(),
    ];
    args.extend(extra.iter().map(|a| a.as_bytes()));
    c.call(&args)
}

fn module_unload(c: &mut RawClient) -> Reply {
    c.call(&[b"MODULE", b"UNLOAD", b"valkeyauth"])
}

fn auth(v: &Valkey, user: &str, pass: &str) -> Reply {
    v.raw().auth(user.as_bytes(), pass.as_bytes())
}

fn info_section(v: &Valkey) -> String {
    v.raw()
        .call(&[b"INFO", b"valkeyauth"])
        .text()
        .expect("INFO")
}

/// Polls `f` until it returns `want` or 10 s pass; returns the last value.
fn wait<T: PartialEq>(want: T, f: impl FnMut() -> T) -> T {
    wait_for(want, Duration::from_secs(10), f)
}

fn assert_no_crash(log: &str) {
    for bad in [
        "crashed by signal",
        "panicked",
        "STACK TRACE",
        "ASSERTION FAILED",
    ] {
        assert!(!log.contains(bad), "{bad:?} in the log:\n{log}");
    }
}

// --------------------------------------------------------------------------------------------
// Tests
// --------------------------------------------------------------------------------------------

#[test]
fn twenty_unload_load_cycles_leak_no_workers() {
    const WORKERS: usize = 4;
    let slapd = Slapd::start_default();
    let v = Valkey::builder().start();
    add_acl_users(&v, &["alice"]);
    let pid = v.pid();
    let baseline = thread_names(pid).len();
    let mut c = v.raw();

    for cycle in 0..20 {
        let r = module_load(&mut c, &slapd.url(), &["workers", &WORKERS.to_string()]);
        assert!(r.is_ok(), "cycle {cycle}: MODULE LOAD: {r}\n{}", v.log());
        assert_eq!(
            wait(WORKERS, || worker_threads(pid)),
            WORKERS,
            "cycle {cycle}: {:?}",
            thread_names(pid)
        );
        assert_eq!(
            wait(1, || health_threads(pid)),
            1,
            "cycle {cycle}: one health checker: {:?}",
            thread_names(pid)
        );
        let r = auth(&v, "alice", ALICE.password);
        assert!(r.is_ok(), "cycle {cycle}: AUTH: {r}\n{}", v.log());
        // Counters start from zero on every load.
        assert_eq!(info_field(&v, "allowed"), 1, "cycle {cycle}");
        let r = auth(&v, "alice", "wrong");
        assert_eq!(r.error(), Some(WRONGPASS), "cycle {cycle}: {r}");

        let r = module_unload(&mut c);
        assert!(r.is_ok(), "cycle {cycle}: MODULE UNLOAD: {r}\n{}", v.log());
        // Unload joins the workers before it returns (the kernel may list a joined thread
        // for a moment longer, hence the short poll).
        assert_eq!(
            wait(0, || worker_threads(pid)),
            0,
            "cycle {cycle}: {:?}",
            thread_names(pid)
        );
        assert_eq!(
            wait(0, || health_threads(pid)),
            0,
            "cycle {cycle}: {:?}",
            thread_names(pid)
        );
        // Without the module, alice (no local password) cannot log in.
        assert_eq!(auth(&v, "alice", ALICE.password).error(), Some(WRONGPASS));
    }

    assert_eq!(wait(0, || worker_threads(pid)), 0);
    assert_eq!(wait(0, || health_threads(pid)), 0);
    let after = wait(baseline, || thread_names(pid).len());
    assert!(
        after <= baseline + 1,
        "threads: {baseline} before, {after} after: {:?}",
        thread_names(pid)
    );
    assert_eq!(
        info_section(&v)
            .lines()
            .filter(|l| l.starts_with("valkeyauth_"))
            .count(),
        0
    );
    assert_eq!(c.call(&[b"PING"]), Reply::Simple("PONG".into()));
    assert_no_crash(&v.log());
}

#[test]
fn redis_7_0_refuses_to_load_with_one_clear_line() {
    let log = Valkey::builder()
        .version(Version::Redis7_0)
        .module(["servers", "ldap://127.0.0.1:389"])
        .start_expect_failure();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("module authentication API"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("valkeyauth"), "{}", lines[0]);
    assert_no_crash(&log);

    // The same at run time: MODULE LOAD fails, the server goes on.
    let v = Valkey::builder().version(Version::Redis7_0).start();
    let mut c = v.raw();
    let r = module_load(&mut c, "ldap://127.0.0.1:389", &[]);
    assert!(r.error().is_some(), "MODULE LOAD on Redis 7.0: {r}");
    assert_eq!(c.call(&[b"PING"]), Reply::Simple("PONG".into()));
    let log = v.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("module authentication API"))
            .count(),
        1,
        "{log}"
    );
    assert_no_crash(&log);
}

#[test]
fn valkey_8_1_smoke() {
    let slapd = Slapd::start_default();
    let v = Valkey::builder()
        .version(Version::V8_1)
        .module(bind_args(&slapd.url(), NO_ARGS))
        .start();
    add_acl_users(&v, &["alice"]);
    let mut c = v.raw();
    let hello = c.call(&[b"HELLO", b"3"]);
    let version = hello
        .get("version")
        .and_then(Reply::text)
        .unwrap_or_default();
    assert!(version.starts_with("8.1."), "{hello:?}");

    assert!(auth(&v, "alice", ALICE.password).is_ok());
    assert_eq!(auth(&v, "alice", "wrong").error(), Some(WRONGPASS));
    let r = v.raw().hello3_auth(b"alice", ALICE.password.as_bytes());
    assert_eq!(r.get("proto"), Some(&Reply::Int(3)), "{r:?}");

    let r = c.call(&[b"CONFIG", b"SET", b"valkeyauth.workers", b"3"]);
    assert!(r.is_ok(), "{r}");
    let r = c.call(&[b"CONFIG", b"GET", b"valkeyauth.workers"]);
    assert_eq!(
        r.get("valkeyauth.workers").and_then(Reply::text).as_deref(),
        Some("3")
    );
    let r = c.call(&[b"CONFIG", b"SET", b"valkeyauth.workers", b"0"]);
    assert!(r.error().is_some(), "{r}");
    assert_eq!(info_field(&v, "workers"), 3);
    assert!(auth(&v, "alice", ALICE.password).is_ok());

    let pid = v.pid();
    for cycle in 0..3 {
        let r = module_unload(&mut c);
        assert!(r.is_ok(), "cycle {cycle}: MODULE UNLOAD: {r}\n{}", v.log());
        assert_eq!(wait(0, || worker_threads(pid)), 0, "cycle {cycle}");
        let r = module_load(&mut c, &slapd.url(), &[]);
        assert!(r.is_ok(), "cycle {cycle}: MODULE LOAD: {r}\n{}", v.log());
        assert!(auth(&v, "alice", ALICE.password).is_ok(), "cycle {cycle}");
        assert_eq!(
            auth(&v, "alice", "wrong").error(),
            Some(WRONGPASS),
            "cycle {cycle}"
        );
    }
    assert_no_crash(&v.log());
}

#[test]
fn unload_is_refused_while_a_client_waits_on_the_directory() {
    let mut slapd = Slapd::start_default();
    let v = Valkey::builder()
        .module(bind_args(&slapd.url(), &["operation_timeout_ms", "1500"]))
        .start();
    add_acl_users(&v, &["alice"]);
    let pid = v.pid();
    let mut c = v.raw();
    let blocked = |c: &mut RawClient| -> u64 {
        let info = c.call(&[b"INFO", b"clients"]).text().expect("INFO clients");
        info.lines()
            .find_map(|l| l.strip_prefix("blocked_clients:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("blocked_clients")
    };
    slapd.freeze();

    // A client still connected when its answer comes.
    let mut waiting = v.raw();
    waiting
        .send(&[b"AUTH", b"alice", ALICE.password.as_bytes()])
        .unwrap();
    assert_eq!(wait(1, || blocked(&mut c)), 1, "the AUTH never blocked");
    let r = module_unload(&mut c);
    assert!(
        r.error().is_some_and(|e| e.contains("blocked clients")),
        "MODULE UNLOAD while blocked: {r}"
    );
    assert_eq!(c.call(&[b"PING"]), Reply::Simple("PONG".into()));
    assert_eq!(waiting.read().error(), Some(UNAVAILABLE));
    assert_eq!(wait(0, || blocked(&mut c)), 0);
    // The timed-out server is now probed by the health checker, which may refuse the unload
    // for the length of one probe (see unload_never_waits_on_a_directory).
    unload_when_idle(&mut c);
    assert_eq!(wait(0, || worker_threads(pid)), 0);

    // A client that leaves while its AUTH waits: unload is still refused until the worker is
    // done with it, and nothing of the module runs afterwards.
    let r = module_load(&mut c, &slapd.url(), &["operation_timeout_ms", "1500"]);
    assert!(r.is_ok(), "{r}");
    let mut leaving = v.raw();
    leaving
        .send(&[b"AUTH", b"alice", ALICE.password.as_bytes()])
        .unwrap();
    assert_eq!(wait(1, || blocked(&mut c)), 1, "the AUTH never blocked");
    drop(leaving);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refusals = 0;
    loop {
        let r = module_unload(&mut c);
        if r.is_ok() {
            break;
        }
        assert!(
            r.error()
                .is_some_and(|e| e.contains("blocked clients") || e.contains(UNLOAD_REFUSED)),
            "{r}"
        );
        refusals += 1;
        assert!(
            Instant::now() < deadline,
            "MODULE UNLOAD still refused: {r}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        refusals >= 1,
        "unload was not refused while the worker held the AUTH"
    );
    assert_eq!(wait(0, || worker_threads(pid)), 0);

    slapd.thaw();
    // Without the module, Valkey answers as usual.
    assert_eq!(auth(&v, "alice", ALICE.password).error(), Some(WRONGPASS));
    assert_eq!(c.call(&[b"PING"]), Reply::Simple("PONG".into()));
    assert_no_crash(&v.log());
}

/// What Valkey answers when the module's OnUnload refuses.
const UNLOAD_REFUSED: &str = "operation not possible";

/// MODULE UNLOAD, again every 20 ms while it is refused because a module thread is inside a
/// directory call; each refusal must be immediate.
fn unload_when_idle(c: &mut RawClient) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut refusals = 0;
    loop {
        let t = Instant::now();
        let r = module_unload(c);
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "MODULE UNLOAD took {:?}",
            t.elapsed()
        );
        if r.is_ok() {
            return refusals;
        }
        assert!(r.error().is_some_and(|e| e.contains(UNLOAD_REFUSED)), "{r}");
        assert!(
            Instant::now() < deadline,
            "MODULE UNLOAD still refused: {r}"
        );
        refusals += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A frozen directory: the health checker's probe waits for its timeouts. MODULE UNLOAD must
/// not join it on Valkey's main thread: it is refused at once with one clear log line, the
/// module keeps working, and the unload succeeds once the probe is over.
#[test]
fn unload_never_waits_on_a_directory() {
    let mut slapd = Slapd::start_default();
    let v = Valkey::builder()
        .module(bind_args(
            &slapd.url(),
            &[
                "connect_timeout_ms",
                "3000",
                "operation_timeout_ms",
                "4000",
                "auth_timeout_ms",
                "500",
                "health_check_interval_ms",
                "50",
            ],
        ))
        .start();
    add_acl_users(&v, &["alice"]);
    assert!(auth(&v, "alice", ALICE.password).is_ok());
    slapd.freeze();
    // Cut short by its own deadline, the AUTH makes the server suspect: the checker probes it
    // with the full timeouts.
    assert_eq!(auth(&v, "alice", ALICE.password).error(), Some(UNAVAILABLE));
    std::thread::sleep(Duration::from_millis(300));

    let mut c = v.raw();
    let pinger = {
        let mut p = v.raw();
        std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            for _ in 0..40 {
                let t = Instant::now();
                assert_eq!(p.call(&[b"PING"]), Reply::Simple("PONG".into()));
                slowest = slowest.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(10));
            }
            slowest
        })
    };
    let t = Instant::now();
    let r = module_unload(&mut c);
    let took = t.elapsed();
    assert!(r.error().is_some_and(|e| e.contains(UNLOAD_REFUSED)), "{r}");
    assert!(
        took < Duration::from_millis(300),
        "the refusal took {took:?}"
    );
    let slowest = pinger.join().unwrap();
    assert!(
        slowest < Duration::from_millis(300),
        "a PING took {slowest:?}"
    );
    assert!(v.wait_for_log(
        "valkeyauth: not unloading: the health checker is probing",
        Duration::from_secs(2)
    ));
    // Still loaded and answering.
    assert_eq!(auth(&v, "alice", "wrong").error(), Some(UNAVAILABLE));
    assert!(info_section(&v).contains("valkeyauth"));

    slapd.thaw();
    unload_when_idle(&mut c);
    assert_eq!(wait(0, || worker_threads(v.pid())), 0);
    let r = module_load(&mut c, &slapd.url(), &[]);
    assert!(r.is_ok(), "{r}");
    assert!(auth(&v, "alice", ALICE.password).is_ok());
    assert_no_crash(&v.log());
}

#[test]
fn shutdown_while_a_client_waits_on_the_directory_is_prompt() {
    let mut slapd = Slapd::start_default();
    let mut v = Valkey::builder()
        .module(bind_args(&slapd.url(), &["operation_timeout_ms", "3000"]))
        .start();
    add_acl_users(&v, &["alice"]);
    slapd.freeze();
    let mut waiting = v.raw();
    waiting
        .send(&[b"AUTH", b"alice", ALICE.password.as_bytes()])
        .unwrap();
    let mut c = v.raw();
    let blocked = wait(true, || {
        let info = c.call(&[b"INFO", b"clients"]).text().unwrap_or_default();
        info.contains("blocked_clients:1")
    });
    assert!(blocked, "the AUTH never blocked");
    drop(c);

    let t = Instant::now();
    let status = v.stop();
    let took = t.elapsed();
    assert!(
        status.success(),
        "valkey-server exited with {status}\n{}",
        v.log()
    );
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert_no_crash(&v.log());
    // The waiting client was disconnected, not left hanging.
    assert!(waiting.try_read_timeout(Duration::from_secs(5)).is_err());
    slapd.thaw();
}

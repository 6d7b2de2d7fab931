//! Outages: a stopped, frozen, restarted or silent directory, failover between servers, and a
//! full queue. Every wait must be bounded by the module's timeouts, and Valkey must keep
//! answering other clients meanwhile.

mod common;

use common::*;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const CONNECT_MS: u64 = 500;
const OPERATION_MS: u64 = 1000;
/// How often the health checker probes a server marked down.
const HEALTH_MS: u64 = 100;
/// An AUTH answered without trying a server marked down (no timeout paid).
const AT_ONCE: Duration = Duration::from_millis(250);
/// An outage answer must come within this, whatever the cause.
const OUTAGE_BOUND: Duration = Duration::from_secs(5);
/// PING from another client while an AUTH waits on the directory.
const PING_BOUND: Duration = Duration::from_millis(100);

/// Valkey with the module pointed at `servers`, small timeouts, a health check every
/// [`HEALTH_MS`], `extra` module arguments, and the ACL users alice and bob.
fn valkey(servers: &str, extra: &[&str]) -> Valkey {
    let (connect, operation) = (CONNECT_MS.to_string(), OPERATION_MS.to_string());
    let health = HEALTH_MS.to_string();
    let mut args = bind_args(
        servers,
        &[
            "connect_timeout_ms",
            &connect,
            "operation_timeout_ms",
            &operation,
            "health_check_interval_ms",
            &health,
        ],
    );
    args.extend(extra.iter().map(|a| a.to_string()));
    let v = Valkey::builder().module(args).start();
    add_acl_users(&v, &["alice", "bob"]);
    v
}

/// An AUTH sent on its own connection whose reply is read later.
struct PendingAuth {
    client: RawClient,
    sent: Instant,
    reply: Option<(Reply, Duration)>,
}

impl PendingAuth {
    fn send(v: &Valkey, user: &FixtureUser) -> PendingAuth {
        let mut client = v.raw();
        let sent = Instant::now();
        client
            .send(&[b"AUTH", user.name.as_bytes(), user.password.as_bytes()])
            .expect("send AUTH");
        PendingAuth {
            client,
            sent,
            reply: None,
        }
    }

    /// True while no reply has come (waits up to `t` for one).
    fn is_pending(&mut self, t: Duration) -> bool {
        if self.reply.is_none() {
            if let Ok(r) = self.client.try_read_timeout(t) {
                self.reply = Some((r, self.sent.elapsed()));
            }
        }
        self.reply.is_none()
    }

    /// The reply and how long after sending it came.
    fn finish(mut self) -> (Reply, Duration) {
        match self.reply.take() {
            Some(r) => r,
            None => {
                let r = self.client.read();
                (r, self.sent.elapsed())
            }
        }
    }
}

/// Round-trip time of one PING on an already connected client.
fn ping_time(c: &mut RawClient) -> Duration {
    let t = Instant::now();
    assert_eq!(c.call(&[b"PING"]), Reply::Simple("PONG".into()));
    t.elapsed()
}

/// PINGs from `pinger` for as long as `auth` is pending (at least once); returns the slowest.
fn ping_while_pending(pinger: &mut RawClient, auth: &mut PendingAuth) -> Duration {
    let mut slowest = ping_time(pinger);
    while auth.is_pending(Duration::from_millis(50)) {
        slowest = slowest.max(ping_time(pinger));
    }
    slowest
}

fn assert_unavailable(reply: &Reply, took: Duration, bound: Duration, context: &str) {
    eprintln!("{context}: {reply} after {took:?}");
    assert_eq!(reply.error(), Some(UNAVAILABLE), "{context}: {reply}");
    assert!(took < bound, "{context}: the outage answer took {took:?}");
}

#[test]
fn stopped_directory_answers_outage_within_connect_timeout() {
    let mut slapd = Slapd::start_default();
    let v = valkey(&slapd.url(), &[]);
    auth_ok(&v, &ALICE, "directory up");
    slapd.stop();

    let mut pinger = v.raw();
    let mut pending = PendingAuth::send(&v, &ALICE);
    let slowest_ping = ping_while_pending(&mut pinger, &mut pending);
    let (reply, took) = pending.finish();
    assert_unavailable(
        &reply,
        took,
        Duration::from_millis(CONNECT_MS) + Duration::from_millis(500),
        "stopped directory",
    );
    assert!(slowest_ping < PING_BOUND, "PING took {slowest_ping:?}");
    assert_eq!(info_field(&v, "outage_unreachable"), 1);
    assert_eq!(info_field(&v, "outage_timeout"), 0);
    let health = server_health(&v);
    assert!(
        !health[0].up && health[0].consecutive_failures >= 1,
        "{health:?}"
    );
    assert_eq!(info_field(&v, "servers_up"), 0);

    // The server is marked down: the next AUTH is answered at once, without trying it.
    let (reply, took) = PendingAuth::send(&v, &BOB).finish();
    assert_unavailable(&reply, took, AT_ONCE, "stopped directory, bob");
    assert_eq!(info_field(&v, "outage_unreachable"), 2);

    // Back up: used again once the health checker has seen it.
    slapd.start();
    wait_all_servers_up(&v);
    let health = server_health(&v);
    assert_eq!(health[0].consecutive_failures, 0, "{health:?}");
    assert_eq!(info_field(&v, "servers_up"), 1);
    auth_ok(&v, &BOB, "after restart");
}

#[test]
fn frozen_directory_times_out_and_valkey_keeps_answering() {
    let mut slapd = Slapd::start_default();
    let v = valkey(&slapd.url(), &[]);
    slapd.freeze();

    let mut pinger = v.raw();
    let mut pending = PendingAuth::send(&v, &ALICE);
    // Still waiting on the directory after a while, while PINGs answer at once.
    assert!(pending.is_pending(Duration::from_millis(300)));
    let slowest_ping = ping_while_pending(&mut pinger, &mut pending);
    let (reply, took) = pending.finish();
    assert_unavailable(&reply, took, OUTAGE_BOUND, "frozen directory");
    assert!(
        took >= Duration::from_millis(OPERATION_MS) - Duration::from_millis(100),
        "the answer came before the operation timeout: {took:?}"
    );
    assert!(slowest_ping < PING_BOUND, "PING took {slowest_ping:?}");
    assert!(info_field(&v, "outage_timeout") >= 1);

    // Marked down by the timeout: the next AUTH does not pay it again.
    assert!(!server_health(&v)[0].up);
    let (reply, took) = PendingAuth::send(&v, &BOB).finish();
    assert_unavailable(&reply, took, AT_ONCE, "frozen directory, marked down");

    slapd.thaw();
    wait_all_servers_up(&v);
    auth_ok(&v, &ALICE, "after thaw");
    auth_ok(&v, &BOB, "after thaw");
}

#[test]
fn frozen_directory_with_a_pooled_connection_times_out_then_recovers() {
    let mut slapd = Slapd::start_default();
    // One worker: the AUTH after the freeze uses the connection made before it.
    let v = valkey(&slapd.url(), &["workers", "1"]);
    auth_ok(&v, &ALICE, "before freeze");
    let binds_before = slapd.wait_ops("BIND", 1, Duration::from_secs(5));
    let first_conn = conn_of(&slapd.ops("BIND")[0]);
    slapd.freeze();

    let mut pinger = v.raw();
    let mut pending = PendingAuth::send(&v, &ALICE);
    let slowest_ping = ping_while_pending(&mut pinger, &mut pending);
    let (reply, took) = pending.finish();
    assert_unavailable(&reply, took, OUTAGE_BOUND, "frozen, pooled connection");
    assert!(took >= Duration::from_millis(OPERATION_MS) - Duration::from_millis(100));
    assert!(slowest_ping < PING_BOUND, "PING took {slowest_ping:?}");
    assert!(info_field(&v, "outage_timeout") >= 1);

    slapd.thaw();
    // Once the health checker has seen the server again, the first AUTH must succeed
    // (reconnecting if needed), not fail.
    wait_all_servers_up(&v);
    auth_ok(&v, &ALICE, "first AUTH after thaw");
    let r = v.raw().auth(b"alice", b"wrong");
    assert_eq!(r.error(), Some(WRONGPASS), "wrong password after thaw: {r}");
    auth_ok(&v, &BOB, "after thaw");
    // The timed-out connection was replaced by a new one: the three binds after the thaw ran
    // on another connection than the one before the freeze (which may still log the bind
    // sent while frozen).
    let on_new_connections = || {
        slapd.ops("BIND")[binds_before..]
            .iter()
            .filter(|l| conn_of(l) != first_conn)
            .count()
    };
    assert_eq!(
        wait_for(3, Duration::from_secs(5), on_new_connections),
        3,
        "binds after the thaw: {:#?}",
        &slapd.ops("BIND")[binds_before..]
    );
}

/// The `conn=<n>` of a slapd stats-log line.
fn conn_of(line: &str) -> String {
    line.split_whitespace()
        .find(|t| t.starts_with("conn="))
        .unwrap_or_else(|| panic!("no conn= in {line:?}"))
        .to_owned()
}

#[test]
fn black_hole_as_the_only_server_is_a_bounded_outage() {
    let hole = BlackHole::start();
    let v = valkey(&hole.url(), &[]);
    let mut pinger = v.raw();
    let mut pending = PendingAuth::send(&v, &ALICE);
    let slowest_ping = ping_while_pending(&mut pinger, &mut pending);
    let (reply, took) = pending.finish();
    assert_unavailable(&reply, took, OUTAGE_BOUND, "black hole");
    assert!(slowest_ping < PING_BOUND, "PING took {slowest_ping:?}");
    assert!(hole.accepted() >= 1, "the module never connected");
    assert!(info_field(&v, "outage_timeout") >= 1);
}

#[test]
fn black_hole_first_fails_over_to_the_second_server() {
    let hole = BlackHole::start();
    let slapd = Slapd::start_default();
    let v = valkey(&format!("{} {}", hole.url(), slapd.url()), &[]);
    let (reply, took) = PendingAuth::send(&v, &ALICE).finish();
    assert!(reply.is_ok(), "failover AUTH alice: {reply}");
    eprintln!("failover AUTH alice took {took:?}");
    assert!(
        took < Duration::from_millis(CONNECT_MS + OPERATION_MS) + Duration::from_secs(2),
        "failover took {took:?}"
    );
    // The silent server is marked down: later AUTHs go straight to the second one.
    let health = server_health(&v);
    assert!(!health[0].up && health[1].up, "{health:?}");
    let (reply, took) = PendingAuth::send(&v, &BOB).finish();
    assert!(reply.is_ok(), "AUTH bob after the failover: {reply}");
    assert!(took < AT_ONCE, "AUTH after the failover took {took:?}");
    // A wrong password through the failover is a plain deny.
    let (reply, took) =
        PendingAuth::send(&v, &FixtureUser::new("alice", ALICE.dn, "nope")).finish();
    assert_eq!(reply.error(), Some(WRONGPASS), "{reply}");
    assert!(took < AT_ONCE, "{took:?}");
    assert!(hole.accepted() >= 1, "the first server was never tried");
    assert!(slapd.count_ops("BIND") >= 3);
    assert_eq!(info_field(&v, "allowed"), 2);
}

#[test]
fn unreachable_first_server_fails_over_at_once() {
    let slapd = Slapd::start_default();
    // A port that nothing listens on: refused at once.
    let closed = format!("ldap://127.0.0.1:{}", free_port());
    let v = valkey(&format!("{closed},{}", slapd.url()), &[]);
    let (reply, took) = PendingAuth::send(&v, &ALICE).finish();
    assert!(reply.is_ok(), "{reply}");
    assert!(took < Duration::from_millis(CONNECT_MS), "took {took:?}");
    auth_ok(&v, &BOB, "second AUTH");

    // Both down: an outage, not a deny.
    let v2 = valkey(&format!("{closed} ldap://127.0.0.1:{}", free_port()), &[]);
    let (reply, took) = PendingAuth::send(&v2, &ALICE).finish();
    assert_unavailable(&reply, took, OUTAGE_BOUND, "every server closed");
}

#[test]
fn restarted_directory_replaces_the_stale_connection() {
    let mut slapd = Slapd::start_default();
    // One worker, so the second AUTH reuses the connection the first one made.
    let v = valkey(&slapd.url(), &["workers", "1"]);
    auth_ok(&v, &ALICE, "before restart");

    slapd.stop();
    slapd.start();
    auth_ok(&v, &ALICE, "after stop/start");

    // A crash (SIGKILL) and restart: a wrong password is still a plain deny.
    slapd.kill();
    slapd.start();
    let r = v.raw().auth(b"alice", b"wrong");
    assert_eq!(
        r.error(),
        Some(WRONGPASS),
        "wrong password after restart: {r}"
    );
    auth_ok(&v, &BOB, "after kill/start");

    for field in [
        "outage_unreachable",
        "outage_timeout",
        "outage_directory_error",
    ] {
        assert_eq!(info_field(&v, field), 0, "{field}");
    }
    assert_eq!(info_field(&v, "denied_bad_credentials"), 1);
}

#[test]
fn full_queue_refuses_at_once_and_the_rest_time_out() {
    const CLIENTS: usize = 6;
    let mut slapd = Slapd::start_default();
    let v = valkey(&slapd.url(), &["workers", "1", "max_pending", "1"]);
    slapd.freeze();

    let barrier = Arc::new(Barrier::new(CLIENTS + 1));
    // Different passwords: identical AUTHs would share one place in the queue.
    let handles: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mut client = v.raw();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                let t = Instant::now();
                let reply = client.auth(b"alice", format!("guess-{i}").as_bytes());
                (reply, t.elapsed())
            })
        })
        .collect();
    let mut pinger = v.raw();
    barrier.wait();
    let mut slowest_ping = Duration::ZERO;
    while !handles.iter().all(|h| h.is_finished()) {
        slowest_ping = slowest_ping.max(ping_time(&mut pinger));
        thread::sleep(Duration::from_millis(20));
    }
    let results: Vec<(Reply, Duration)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    eprintln!("replies: {results:?}; slowest PING {slowest_ping:?}");

    let busy: Vec<_> = results
        .iter()
        .filter(|(r, _)| r.error() == Some(BUSY))
        .collect();
    let unavailable: Vec<_> = results
        .iter()
        .filter(|(r, _)| r.error() == Some(UNAVAILABLE))
        .collect();
    assert_eq!(
        busy.len() + unavailable.len(),
        CLIENTS,
        "only busy or outage answers expected: {results:?}"
    );
    assert!(!busy.is_empty(), "no busy answer: {results:?}");
    assert!(!unavailable.is_empty(), "no outage answer: {results:?}");
    for (_, took) in &busy {
        assert!(
            *took < Duration::from_millis(200),
            "busy answer took {took:?}"
        );
    }
    for (_, took) in &unavailable {
        assert!(*took < 2 * OUTAGE_BOUND, "outage answer took {took:?}");
    }
    assert!(slowest_ping < PING_BOUND, "PING took {slowest_ping:?}");
    assert_eq!(info_field(&v, "outage_busy"), busy.len() as u64);
    assert_eq!(info_field(&v, "queue_depth"), 0);
    assert_eq!(info_field(&v, "max_pending"), 1);

    slapd.thaw();
    wait_all_servers_up(&v);
    auth_ok(&v, &ALICE, "after thaw");
}

/// Search+bind keeps two connections per worker (service search, user bind): both must be
/// bounded when the directory freezes and replaced when it restarts.
#[test]
fn search_bind_mode_survives_freeze_and_restart() {
    let mut slapd = Slapd::start_default();
    let dir = TempDir::new("outage-pw");
    let pw_file = dir.path().join("service.pw");
    std::fs::write(&pw_file, SEARCHER.password).unwrap();
    std::fs::set_permissions(
        &pw_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut extra = vec![
        "workers",
        "1",
        "auth_mode",
        "search+bind",
        "search_base",
        SUFFIX,
    ];
    let service = service_args(&pw_file);
    extra.extend(service.iter().map(String::as_str));
    let v = valkey(&slapd.url(), &extra);
    auth_ok(&v, &ALICE, "search+bind, up");

    slapd.stop();
    slapd.start();
    auth_ok(&v, &BOB, "search+bind, after restart");
    let r = v.raw().auth(b"alice", b"wrong");
    assert_eq!(r.error(), Some(WRONGPASS), "{r}");

    slapd.freeze();
    let mut pinger = v.raw();
    let mut pending = PendingAuth::send(&v, &ALICE);
    let slowest_ping = ping_while_pending(&mut pinger, &mut pending);
    let (reply, took) = pending.finish();
    assert_unavailable(&reply, took, OUTAGE_BOUND, "search+bind, frozen");
    assert!(slowest_ping < PING_BOUND, "PING took {slowest_ping:?}");

    slapd.thaw();
    wait_all_servers_up(&v);
    auth_ok(&v, &ALICE, "search+bind, after thaw");
    auth_ok(&v, &BOB, "search+bind, after thaw");
}

/// Directories close idle connections (slapd `idletimeout`, AD's MaxConnIdleTime): the next
/// AUTH must reconnect, not fail.
#[test]
fn connection_closed_by_an_idle_timeout_is_replaced() {
    let slapd = Slapd::builder().global("idletimeout 1").start();
    let v = valkey(&slapd.url(), &["workers", "1"]);
    auth_ok(&v, &ALICE, "before the idle timeout");
    assert!(
        slapd.wait_ops("closed", 1, Duration::from_secs(10)) >= 1,
        "slapd never closed the idle connection:\n{}",
        slapd.log()
    );
    auth_ok(&v, &ALICE, "after the idle timeout");
    let r = v.raw().auth(b"bob", b"wrong");
    assert_eq!(r.error(), Some(WRONGPASS), "{r}");
    for field in ["outage_unreachable", "outage_timeout"] {
        assert_eq!(info_field(&v, field), 0, "{field}");
    }
}

/// Changing the pool while AUTHs wait on a frozen directory: every waiting client still gets
/// its answer, and the new pool serves the next AUTHs.
#[test]
fn pool_change_while_auths_wait_answers_every_client() {
    let mut slapd = Slapd::start_default();
    let v = valkey(&slapd.url(), &["workers", "2"]);
    slapd.freeze();
    let mut pending: Vec<PendingAuth> = (0..3).map(|_| PendingAuth::send(&v, &ALICE)).collect();
    assert!(pending[0].is_pending(Duration::from_millis(200)));
    let mut c = v.raw();
    for n in [b"4", b"1"] {
        let t = Instant::now();
        let r = c.call(&[b"CONFIG", b"SET", b"valkeyauth.workers", n]);
        assert!(r.is_ok(), "{r}");
        assert!(
            t.elapsed() < PING_BOUND,
            "CONFIG SET waited for the old pool: {:?}",
            t.elapsed()
        );
    }
    assert_eq!(info_field(&v, "workers"), 1);
    for p in pending {
        let (reply, took) = p.finish();
        assert_unavailable(
            &reply,
            took,
            2 * OUTAGE_BOUND,
            "waiting across a pool change",
        );
    }
    slapd.thaw();
    wait_all_servers_up(&v);
    auth_ok(&v, &ALICE, "new pool after thaw");
    auth_ok(&v, &BOB, "new pool after thaw");
}

//! Resilience against real slapd instances on 127.0.0.1: failover between two directories and
//! fail-back, the whole-AUTH deadline, idle connections, the bound on open connections, bursts,
//! a soak for leaks, a main thread that never stalls on CONFIG SET, and referrals.
//!
//! Timeouts are small to keep the file fast: connect 300 ms, operation 500 ms, whole AUTH 2 s,
//! a health check every 100 ms. Every wrong answer fails a test: a right password must never
//! get WRONGPASS, a wrong one never OK, and with a second healthy server no AUTH may get the
//! outage error.

mod common;

use common::*;
use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

const CONNECT_MS: u64 = 300;
const OPERATION_MS: u64 = 500;
const AUTH_MS: u64 = 2000;
const HEALTH_MS: u64 = 100;
/// Added to a deadline for the reply to travel and for a busy test machine.
const MARGIN: Duration = Duration::from_millis(1000);
/// An AUTH that paid a timeout took at least the smallest one (connect, 300 ms): one that
/// took less paid none.
const FAST: Duration = Duration::from_millis(CONNECT_MS);
/// How long a failed server may take to be used again once it is back: a few health checks.
const FAIL_BACK_BOUND: Duration = Duration::from_secs(2);

// ---- helpers --------------------------------------------------------------------------------

/// Module arguments: `servers`, bind mode under ou=people, the small timeouts, then `extra`.
fn module_args(servers: &str, extra: &[&str]) -> Vec<String> {
    let mut args = bind_args(
        servers,
        &[
            "connect_timeout_ms",
            &CONNECT_MS.to_string(),
            "operation_timeout_ms",
            &OPERATION_MS.to_string(),
            "auth_timeout_ms",
            &AUTH_MS.to_string(),
            "health_check_interval_ms",
            &HEALTH_MS.to_string(),
        ],
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The ACL users of [`start_valkey`] (mallory is not in the directory).
const ACL_USERS: [&str; 4] = ["alice", "bob", "carol", "mallory"];

/// Valkey with the module (see [`module_args`]) and the [`ACL_USERS`].
fn start_valkey(servers: &str, extra: &[&str]) -> Valkey {
    let v = Valkey::builder()
        .module(module_args(servers, extra))
        .start();
    add_acl_users(&v, &ACL_USERS);
    v
}

/// Search+bind module arguments for `servers` with [`SEARCHER`] as the service account.
fn search_bind_args(servers: &str, pw_file: &str, extra: &[&str]) -> Vec<String> {
    let mut args = module_args(
        servers,
        &["auth_mode", "search+bind", "search_base", SUFFIX],
    );
    args.extend(service_args(pw_file));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A 0600 file holding the service account's password.
fn service_password_file(dir: &TempDir) -> String {
    let path = dir.path().join("service.pw");
    fs::write(&path, format!("{}\n", SEARCHER.password)).expect("write password file");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
    path.to_str().expect("utf-8 path").to_owned()
}

/// The password sent for `user`: its own, or a wrong one.
fn password(user: &FixtureUser, right: bool) -> Vec<u8> {
    if right {
        user.password.as_bytes().to_vec()
    } else {
        format!("{}-wrong", user.password).into_bytes()
    }
}

/// The `i`-th AUTH of a mixed load: alice and bob, right and wrong passwords.
fn attempt(i: usize) -> (FixtureUser, bool) {
    let user = if i.is_multiple_of(2) { ALICE } else { BOB };
    (user, (i / 2).is_multiple_of(2))
}

/// `AUTH user password` on `c`, and how long the reply took.
fn timed_auth(c: &mut RawClient, user: &FixtureUser, right: bool) -> (Reply, Duration) {
    let t = Instant::now();
    let r = c.auth(user.name.as_bytes(), &password(user, right));
    (r, t.elapsed())
}

/// Panics unless `reply` is the right answer: OK for the right password, WRONGPASS for a wrong
/// one. The outage error is a wrong answer too: these tests always have a server that answers.
fn assert_answer(context: &str, user: &FixtureUser, right: bool, reply: &Reply) {
    let good = if right {
        reply.is_ok()
    } else {
        reply.error() == Some(WRONGPASS)
    };
    assert!(
        good,
        "{context}: AUTH {} with the {} password got {reply}",
        user.name,
        if right { "right" } else { "wrong" }
    );
}

/// Asserts that no AUTH ended as an outage.
fn assert_no_outage(v: &Valkey) {
    let got = counters(v);
    for name in [
        "outage_unreachable",
        "outage_timeout",
        "outage_busy",
        "outage_directory_error",
        "denied_internal_error",
    ] {
        assert_eq!(got.get(name), Some(&0), "{name}: {got:?}");
    }
}

/// Socket inodes held open by process `pid`.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    fds.flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?.to_owned();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

mod netlink {
    //! A minimal NETLINK_SOCK_DIAG client: the kernel lists IPv4 TCP sockets in the states
    //! asked for, so the TIME_WAIT sockets that every test leaves behind (thousands, which make
    //! reading /proc/net/tcp take tens of milliseconds) are skipped in the kernel.
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::raw::{c_int, c_void};

    extern "C" {
        fn socket(domain: c_int, kind: c_int, protocol: c_int) -> c_int;
        fn send(fd: c_int, buf: *const c_void, len: usize, flags: c_int) -> isize;
        fn recv(fd: c_int, buf: *mut c_void, len: usize, flags: c_int) -> isize;
    }

    const AF_NETLINK: c_int = 16;
    const SOCK_DGRAM: c_int = 2;
    const SOCK_CLOEXEC: c_int = 0o2000000;
    const NETLINK_SOCK_DIAG: c_int = 4;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_DUMP: u16 = 0x300;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const AF_INET: u8 = 2;
    const IPPROTO_TCP: u8 = 6;
    const TCP_TIME_WAIT: u32 = 6;
    const TCP_LISTEN: u32 = 10;

    /// `(remote port, inode)` of every IPv4 TCP socket that is neither listening nor in
    /// TIME_WAIT (sockets no process holds any more have inode 0).
    pub fn tcp_sockets() -> io::Result<Vec<(u16, u64)>> {
        // SAFETY: socket(2) has no memory-safety preconditions; the fd is owned below.
        let fd = unsafe { socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let states: u32 = 0xfff & !(1 << TCP_TIME_WAIT) & !(1 << TCP_LISTEN);
        // nlmsghdr (16 bytes) + inet_diag_req_v2 (56 bytes).
        let mut req = Vec::with_capacity(72);
        req.extend_from_slice(&72u32.to_ne_bytes());
        req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req.extend_from_slice(&1u32.to_ne_bytes()); // seq
        req.extend_from_slice(&0u32.to_ne_bytes()); // pid
        req.extend_from_slice(&[AF_INET, IPPROTO_TCP, 0, 0]);
        req.extend_from_slice(&states.to_ne_bytes());
        // inet_diag_sockid: no filter.
        req.extend_from_slice(&[0u8; 48]);
        // SAFETY: `req` is a valid buffer of `req.len()` bytes; the kernel is the default
        // destination of an unconnected netlink socket.
        if unsafe { send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: `buf` is a valid writable buffer of `buf.len()` bytes.
            let n = unsafe { recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut msgs = &buf[..n as usize];
            while msgs.len() >= 16 {
                let u32_at = |b: &[u8], at: usize| {
                    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
                };
                let len = u32_at(msgs, 0) as usize;
                let kind = u16::from_ne_bytes([msgs[4], msgs[5]]);
                if len < 16 || len > msgs.len() {
                    return Err(io::Error::other("malformed netlink message"));
                }
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => return Err(io::Error::other("netlink error reply")),
                    _ => {
                        // inet_diag_msg after the header: dport at 6 (big-endian), inode at 68.
                        let body = &msgs[16..len];
                        if body.len() >= 72 {
                            let dport = u16::from_be_bytes([body[6], body[7]]);
                            out.push((dport, u64::from(u32_at(body, 68))));
                        }
                    }
                }
                msgs = &msgs[((len + 3) & !3).min(msgs.len())..];
            }
        }
    }
}

/// TCP connections that process `pid` holds open to 127.0.0.1:`port` (its sockets whose remote
/// port is `port`, in any state but TIME_WAIT, as long as the process has not closed them).
fn connections_to(pid: u32, port: u16) -> usize {
    let inodes = socket_inodes(pid);
    netlink::tcp_sockets()
        .expect("sock_diag dump")
        .iter()
        .filter(|(remote, inode)| *remote == port && *inode != 0 && inodes.contains(inode))
        .count()
}

/// Open file descriptors of process `pid`.
fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

/// The number of open file descriptors of process `pid` once it has held still for 250 ms
/// (Valkey closes a connection the test just closed a moment later), or after 5 s.
fn settled_fd_count(pid: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut last, mut since) = (fd_count(pid), Instant::now());
    loop {
        thread::sleep(Duration::from_millis(25));
        let n = fd_count(pid);
        if n != last {
            (last, since) = (n, Instant::now());
        } else if since.elapsed() >= Duration::from_millis(250) || Instant::now() >= deadline {
            return n;
        }
    }
}

/// What each open file descriptor of process `pid` is: a path, `pipe:[..]`, or for a TCP
/// socket its remote port (`tcp to :389`).
fn fd_table(pid: u32) -> std::collections::BTreeMap<u32, String> {
    let ports: std::collections::HashMap<u64, u16> = netlink::tcp_sockets()
        .unwrap_or_default()
        .into_iter()
        .map(|(port, inode)| (inode, port))
        .collect();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Default::default();
    };
    fds.flatten()
        .filter_map(|fd| {
            let n = fd.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(fd.path())
                .ok()?
                .to_string_lossy()
                .into_owned();
            let inode = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            let shown = match inode.and_then(|i| ports.get(&i)) {
                Some(port) => format!("{target} (tcp to :{port})"),
                None => target,
            };
            Some((n, shown))
        })
        .collect()
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc/PID/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// PINGs Valkey from its own connection until stopped, about once a millisecond, and keeps
/// every round trip time.
struct Pinger {
    stop: std::sync::Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Vec<Duration>>>,
}

impl Pinger {
    fn start(v: &Valkey) -> Pinger {
        let mut c = v.raw();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut times = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let t = Instant::now();
                assert_eq!(c.call(&[b"PING"]), Reply::Simple("PONG".into()));
                times.push(t.elapsed());
                thread::sleep(Duration::from_millis(1));
            }
            times
        });
        Pinger {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops; the round trip time of every PING, slowest last.
    fn finish(mut self) -> Vec<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("pinger thread")
            .join()
            .map(|mut times| {
                times.sort();
                times
            })
            .expect("pinger panicked")
    }
}

/// `(command, microseconds)` of every entry of Valkey's SLOWLOG: the time each command ran on
/// the main thread (for a blocked AUTH: the callbacks, not the time it waited).
fn slowlog(v: &Valkey) -> Vec<(String, u64)> {
    let Reply::Array(entries) = v.raw().call(&[b"SLOWLOG", b"GET", b"-1"]) else {
        panic!("SLOWLOG GET -1 is not an array");
    };
    entries
        .iter()
        .map(|entry| {
            let Reply::Array(fields) = entry else {
                panic!("SLOWLOG entry {entry:?}");
            };
            let (Reply::Int(micros), Reply::Array(args)) = (&fields[2], &fields[3]) else {
                panic!("SLOWLOG entry {entry:?}");
            };
            let command = args
                .iter()
                .take(2)
                .filter_map(Reply::text)
                .collect::<Vec<_>>()
                .join(" ")
                .to_uppercase();
            (command, u64::try_from(*micros).expect("duration"))
        })
        .collect()
}

/// A username and a password, as sent.
type Credentials = (Vec<u8>, Vec<u8>);

/// Sends `AUTH user pass` for each item on `clients` connections at once (each connection
/// pipelines its share), then reads every reply. Replies come back in the order of `items`.
fn burst(v: &Valkey, clients: usize, items: &[Credentials]) -> Vec<Reply> {
    let shares: Vec<Vec<(usize, &Credentials)>> = (0..clients)
        .map(|k| items.iter().enumerate().skip(k).step_by(clients).collect())
        .collect();
    let mut replies: Vec<Option<Reply>> = vec![None; items.len()];
    let results: Vec<Vec<(usize, Reply)>> = thread::scope(|s| {
        let handles: Vec<_> = shares
            .iter()
            .map(|share| {
                s.spawn(move || {
                    let mut c = v.raw();
                    for (_, (user, pass)) in share {
                        c.send(&[b"AUTH", user, pass]).expect("send AUTH");
                    }
                    share
                        .iter()
                        .map(|(i, _)| (*i, c.read()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("burst client panicked"))
            .collect()
    });
    for (i, r) in results.into_iter().flatten() {
        replies[i] = Some(r);
    }
    replies
        .into_iter()
        .map(|r| r.expect("every AUTH has a reply"))
        .collect()
}

// ---- failover and fail-back --------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// slapd #1 stopped (connections refused).
    Stopped,
    /// slapd #1 frozen with SIGSTOP (connections accepted by the kernel, nothing answers).
    Frozen,
    /// The first server is a black hole from the start (accepts, never answers).
    BlackHole,
}

/// Two servers, the first one fails as `failure`: the first AUTH fails over within the
/// deadline, later ones skip the failed server without paying its timeout, nothing gets a wrong
/// answer or an outage, and once the first server is back traffic returns to it.
fn first_server_fails(failure: Failure) {
    let mut first = Slapd::start_default();
    let second = Slapd::start_default();
    let hole = BlackHole::start();
    let first_url = match failure {
        Failure::BlackHole => hole.url(),
        _ => first.url(),
    };
    let v = start_valkey(&format!("{first_url},{}", second.url()), &["workers", "4"]);
    let mut c = v.raw();

    if failure != Failure::BlackHole {
        // Priority order: while the first server is up, every AUTH goes to it.
        for i in 0..8 {
            let (user, right) = attempt(i);
            let (r, _) = timed_auth(&mut c, &user, right);
            assert_answer("both up", &user, right, &r);
        }
        assert_eq!(first.wait_ops("BIND", 8, Duration::from_secs(5)), 8);
        assert_eq!(second.count_ops("BIND"), 0, "the second server was used");
        match failure {
            Failure::Stopped => first.stop(),
            Failure::Frozen => first.freeze(),
            Failure::BlackHole => unreachable!(),
        }
    }

    // The failover: the first AUTH after the failure pays at most one timeout.
    let (r, failover) = timed_auth(&mut c, &ALICE, true);
    assert_answer("failover", &ALICE, true, &r);
    eprintln!(
        "failover ({failure:?}): the first AUTH after the first server failed took {failover:?}"
    );
    assert!(
        failover < Duration::from_millis(AUTH_MS) + MARGIN,
        "failover took {failover:?}"
    );
    let health = server_health(&v);
    assert!(!health[0].up && health[1].up, "{health:?}");

    // Later AUTHs skip the failed server: none pays a timeout again.
    let second_binds = second.count_ops("BIND");
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let (user, right) = attempt(i);
        let (r, took) = timed_auth(&mut c, &user, right);
        assert_answer("after the failover", &user, right, &r);
        assert!(took < FAST, "AUTH #{i} after the failover took {took:?}");
        slowest = slowest.max(took);
    }
    eprintln!("failover ({failure:?}): slowest of 20 later AUTHs {slowest:?}");
    assert_eq!(
        second.wait_ops("BIND", second_binds + 20, Duration::from_secs(5)),
        second_binds + 20,
        "each later AUTH bound once on the second server"
    );
    // Concurrent clients are served by the second server as well.
    thread::scope(|s| {
        for t in 0..4 {
            let v = &v;
            s.spawn(move || {
                let mut c = v.raw();
                for i in 0..10 {
                    let (user, right) = attempt(t + i);
                    let (r, took) = timed_auth(&mut c, &user, right);
                    assert_answer("concurrent, after the failover", &user, right, &r);
                    assert!(took < Duration::from_millis(AUTH_MS) + MARGIN, "{took:?}");
                }
            });
        }
    });
    // The checker keeps probing the failed server, and keeps it down.
    let probed = wait_for(true, Duration::from_secs(5), || {
        server_health(&v)[0].consecutive_failures >= 3
    });
    assert!(probed, "{:?}", server_health(&v));
    assert!(!server_health(&v)[0].up);
    assert_no_outage(&v);

    if failure == Failure::BlackHole {
        assert!(hole.accepted() >= 1, "the black hole was never tried");
        return;
    }

    // Fail-back: once the first server is back, carol (never used before) binds there.
    match failure {
        Failure::Stopped => first.start(),
        Failure::Frozen => first.thaw(),
        Failure::BlackHole => unreachable!(),
    }
    let back = Instant::now();
    loop {
        let (r, _) = timed_auth(&mut c, &CAROL, true);
        assert_answer("fail-back", &CAROL, true, &r);
        if bind_dns(&first).iter().any(|dn| dn == CAROL.dn) {
            break;
        }
        assert!(
            back.elapsed() < FAIL_BACK_BOUND,
            "no fail-back after {:?}: {:?}",
            back.elapsed(),
            server_health(&v)
        );
        thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "fail-back ({failure:?}): traffic back on the first server {:?} after it returned",
        back.elapsed()
    );
    assert!(server_health(&v).iter().all(|s| s.up));
    // ... and stays there.
    let second_binds = second.count_ops("BIND");
    for i in 0..10 {
        let (user, right) = attempt(i);
        let (r, took) = timed_auth(&mut c, &user, right);
        assert_answer("after the fail-back", &user, right, &r);
        assert!(took < FAST, "AUTH #{i} after the fail-back took {took:?}");
    }
    assert_eq!(
        second.count_ops("BIND"),
        second_binds,
        "the second server was used"
    );
    assert_no_outage(&v);
}

#[test]
fn first_server_stopped_fails_over_and_back() {
    first_server_fails(Failure::Stopped);
}

#[test]
fn first_server_frozen_fails_over_and_back() {
    first_server_fails(Failure::Frozen);
}

#[test]
fn first_server_a_black_hole_fails_over() {
    first_server_fails(Failure::BlackHole);
}

/// One AUTH of a load: what was sent, what came back, when.
struct Sample {
    user: FixtureUser,
    right: bool,
    reply: Reply,
    sent: Instant,
    took: Duration,
}

#[test]
fn first_server_killed_during_a_load_of_concurrent_auths() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 30;
    const KILL_AFTER: usize = 60;
    let mut first = Slapd::start_default();
    let second = Slapd::start_default();
    let v = start_valkey(
        &format!("{},{}", first.url(), second.url()),
        &["workers", "4"],
    );
    // One user per thread, each AUTH with its own wrong password: no two AUTHs in flight are
    // identical, so none shares another's bind and every one reaches a directory.
    let users: [FixtureUser; THREADS] = [ALICE, BOB, CAROL, STAR, COMMA, PLUS, HASH, UTF8];
    let mut admin = v.raw();
    for user in &users[3..] {
        let r = admin.call(&[
            b"ACL",
            b"SETUSER",
            user.name.as_bytes(),
            b"on",
            b"+@all",
            b"~*",
        ]);
        assert!(r.is_ok(), "ACL SETUSER {}: {r}", user.name);
    }
    let done = AtomicUsize::new(0);
    let samples: Mutex<Vec<Sample>> = Mutex::new(Vec::new());

    let killed_at = thread::scope(|s| {
        for (t, user) in users.into_iter().enumerate() {
            let (v, done, samples) = (&v, &done, &samples);
            s.spawn(move || {
                let mut c = v.raw();
                for i in 0..ROUNDS {
                    let right = (t + i).is_multiple_of(2);
                    let mut pass = password(&user, right);
                    if !right {
                        pass.extend_from_slice(format!("-{i}").as_bytes());
                    }
                    let sent = Instant::now();
                    let reply = c.auth(user.name.as_bytes(), &pass);
                    let took = sent.elapsed();
                    samples.lock().unwrap().push(Sample {
                        user,
                        right,
                        reply,
                        sent,
                        took,
                    });
                    done.fetch_add(1, Ordering::Relaxed);
                    // Spread the load so that the kill lands in the middle of it.
                    thread::sleep(Duration::from_millis(3));
                }
            });
        }
        while done.load(Ordering::Relaxed) < KILL_AFTER {
            thread::sleep(Duration::from_millis(1));
        }
        first.kill();
        // Reaped: nothing sent from now on can reach the first server.
        Instant::now()
    });

    let samples = samples.into_inner().unwrap();
    assert_eq!(samples.len(), THREADS * ROUNDS);
    let mut slowest = Duration::ZERO;
    for s in &samples {
        assert_answer("load with a kill", &s.user, s.right, &s.reply);
        assert!(
            s.took < Duration::from_millis(AUTH_MS) + MARGIN,
            "an AUTH took {:?}",
            s.took
        );
        slowest = slowest.max(s.took);
    }
    let after: Vec<&Sample> = samples.iter().filter(|s| s.sent >= killed_at).collect();
    assert!(
        after.len() >= THREADS * ROUNDS / 2,
        "the kill came too late: {} AUTHs after it",
        after.len()
    );
    let first_after = after
        .iter()
        .min_by_key(|s| s.sent)
        .expect("an AUTH after the kill");
    eprintln!(
        "failover (killed under load): the first AUTH sent after the kill took {:?}, the slowest \
         of all {slowest:?}; {} of {} AUTHs were sent after the kill",
        first_after.took,
        after.len(),
        samples.len()
    );
    // A killed server refuses at once: no AUTH after the kill waits for a timeout.
    for s in &after {
        assert!(s.took < FAST, "an AUTH after the kill took {:?}", s.took);
    }
    assert!(!server_health(&v)[0].up, "{:?}", server_health(&v));
    // Every AUTH bound on one of the servers (one whose bind was lost with the first server
    // bound again on the second); those sent after the kill bound on the second.
    let (first_binds, second_binds) = (first.count_ops("BIND"), second.count_ops("BIND"));
    eprintln!("binds: {first_binds} on the first server, {second_binds} on the second");
    assert_eq!(info_field(&v, "coalesced"), 0);
    assert!(
        first_binds >= KILL_AFTER,
        "the load began on the first server"
    );
    assert!(
        second_binds >= after.len(),
        "the rest went to the second server"
    );
    assert!(first_binds + second_binds >= THREADS * ROUNDS);
    assert_no_outage(&v);

    // Fail-back after a restart.
    first.start();
    let back = Instant::now();
    let mut c = v.raw();
    loop {
        let (r, _) = timed_auth(&mut c, &CAROL, true);
        assert_answer("fail-back", &CAROL, true, &r);
        if bind_dns(&first).iter().any(|dn| dn == CAROL.dn) {
            break;
        }
        assert!(back.elapsed() < FAIL_BACK_BOUND, "{:?}", server_health(&v));
        thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "fail-back (killed): traffic back on the first server {:?} after its restart",
        back.elapsed()
    );
    assert_no_outage(&v);
}

// ---- the whole-AUTH deadline -----------------------------------------------------------------

#[test]
fn auth_timeout_bounds_an_auth_on_a_frozen_server_queueing_included() {
    const CLIENTS: usize = 4;
    let mut slapd = Slapd::start_default();
    let v = start_valkey(
        &slapd.url(),
        &[
            "workers",
            "1",
            "auth_timeout_ms",
            "1000",
            "operation_timeout_ms",
            "5000",
        ],
    );
    slapd.freeze();

    // One AUTH: the deadline (1 s) ends it, not the operation timeout (5 s).
    let (r, took) = timed_auth(&mut v.raw(), &ALICE, true);
    eprintln!("one AUTH on a frozen server with auth_timeout_ms 1000: {r} after {took:?}");
    assert_eq!(r.error(), Some(UNAVAILABLE), "{r}");
    assert!(
        took >= Duration::from_millis(900),
        "answered early: {took:?}"
    );
    assert!(took < Duration::from_millis(1800), "took {took:?}");
    assert_eq!(info_field(&v, "outage_timeout"), 1);

    // A configuration change starts with every server up again: several AUTHs queue behind
    // the frozen server on the single worker. Each is answered within its own deadline.
    let mut admin = v.raw();
    let r = admin.call(&[b"CONFIG", b"SET", b"valkeyauth.connect_timeout_ms", b"301"]);
    assert!(r.is_ok(), "{r}");
    assert!(server_health(&v)[0].up);
    // Distinct passwords: identical AUTHs would share one place in the queue.
    let mut pending: Vec<(RawClient, Instant)> = (0..CLIENTS)
        .map(|i| {
            let mut c = v.raw();
            c.send(&[b"AUTH", b"alice", format!("guess-{i}").as_bytes()])
                .expect("send AUTH");
            (c, Instant::now())
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for (c, sent) in &mut pending {
        let r = c.read();
        let took = sent.elapsed();
        assert_eq!(r.error(), Some(UNAVAILABLE), "{r}");
        assert!(
            took < Duration::from_millis(1000) + Duration::from_millis(800),
            "a queued AUTH took {took:?}"
        );
        slowest = slowest.max(took);
    }
    eprintln!("{CLIENTS} AUTHs queued behind a frozen server: the slowest took {slowest:?}");
    assert_eq!(info_field(&v, "queue_depth"), 0);

    slapd.thaw();
    wait_all_servers_up(&v);
    let (r, _) = timed_auth(&mut v.raw(), &ALICE, true);
    assert!(r.is_ok(), "after the thaw: {r}");
}

/// An AUTH that runs out of its own deadline while the directory works on it ends as a
/// timeout for that AUTH only: the server did not fail, so it must stay up, and the AUTHs
/// queued behind it must still be sent to it.
///
/// The step timeouts are cut to what is left of the AUTH's deadline; when such a cut timeout
/// expires, the server must not be marked down like a server that failed.
#[test]
fn an_auth_running_out_of_its_deadline_does_not_mark_a_healthy_server_down() {
    const CLIENTS: usize = 400;
    let slapd = Slapd::start_default();
    // A 5 ms budget and one worker: 400 AUTHs queued at once (one per connection) take far
    // longer than that to serve, so later ones expire while queued, and one of them runs out
    // while slapd answers it. No health check within the test, so a wrong mark stays visible.
    let v = start_valkey(
        &slapd.url(),
        &[
            "workers",
            "1",
            "auth_timeout_ms",
            "5",
            "health_check_interval_ms",
            "600000",
        ],
    );
    // Distinct wrong passwords: no two AUTHs share one directory request.
    let items: Vec<Credentials> = (0..CLIENTS)
        .map(|i| (b"alice".to_vec(), format!("guess-{i}").into_bytes()))
        .collect();
    let replies = burst(&v, CLIENTS, &items);
    for r in &replies {
        assert!(
            r.error() == Some(WRONGPASS) || r.error() == Some(UNAVAILABLE),
            "{r}"
        );
    }
    let c = counters(&v);
    eprintln!(
        "deadline burst: {} refused, {} outage_timeout, {} outage_unreachable; {:?}",
        c["denied_bad_credentials"],
        c["outage_timeout"],
        c["outage_unreachable"],
        server_health(&v)
    );
    assert!(c["outage_timeout"] >= 1, "no AUTH ran out of time: {c:?}");
    let health = server_health(&v);
    assert!(
        health[0].up && health[0].consecutive_failures == 0,
        "the healthy server was marked down: {health:?}"
    );
    assert_eq!(
        c["outage_unreachable"], 0,
        "AUTHs refused because the healthy server was marked down: {c:?}"
    );
}

// ---- idle connections ------------------------------------------------------------------------

#[test]
fn connection_closed_by_the_server_while_idle_is_replaced_without_an_outage() {
    let slapd = Slapd::builder().global("idletimeout 1").start();
    let v = start_valkey(&slapd.url(), &["workers", "1"]);
    let (r, _) = timed_auth(&mut v.raw(), &ALICE, true);
    assert!(r.is_ok(), "{r}");
    thread::sleep(Duration::from_millis(2500));
    assert!(
        slapd.wait_ops("closed", 1, Duration::from_secs(5)) >= 1,
        "slapd did not close the idle connection:\n{}",
        slapd.log()
    );
    // The first AUTH after the server closed the connection succeeds.
    let (r, took) = timed_auth(&mut v.raw(), &BOB, true);
    assert!(r.is_ok(), "first AUTH after the idle close: {r}");
    assert!(took < FAST, "took {took:?}");
    assert_outcomes(&v, &[("allowed", 2)]);
    let health = server_health(&v);
    assert!(
        health[0].up && health[0].consecutive_failures == 0,
        "{health:?}"
    );
}

#[test]
fn connection_idle_longer_than_connection_max_idle_s_is_replaced_by_the_module() {
    let slapd = Slapd::start_default();
    let v = start_valkey(
        &slapd.url(),
        &["workers", "1", "connection_max_idle_s", "1"],
    );
    let (r, _) = timed_auth(&mut v.raw(), &ALICE, true);
    assert!(r.is_ok(), "{r}");
    assert_eq!(slapd.wait_ops("BIND", 1, Duration::from_secs(5)), 1);
    let conn_of = |line: &str| -> String {
        line.split_whitespace()
            .find(|t| t.starts_with("conn="))
            .expect("conn= in the line")
            .to_owned()
    };
    let old = conn_of(&slapd.ops("BIND")[0]);
    thread::sleep(Duration::from_millis(1500));
    let (r, _) = timed_auth(&mut v.raw(), &BOB, true);
    assert!(r.is_ok(), "{r}");
    assert_eq!(slapd.wait_ops("BIND", 2, Duration::from_secs(5)), 2);

    // The second AUTH ran on a new connection ...
    let new = conn_of(&slapd.ops("BIND")[1]);
    assert_ne!(new, old, "the idle connection was reused");
    assert_eq!(slapd.count_ops("ACCEPT"), 2, "{:#?}", slapd.ops("ACCEPT"));
    // ... and the module closed the old one itself: an UNBIND from the client, then closed.
    let unbound = wait_for(true, Duration::from_secs(5), || {
        slapd.ops("UNBIND").iter().any(|l| conn_of(l) == old)
    });
    assert!(unbound, "no UNBIND on {old}:\n{}", slapd.log());
    let closed = wait_for(true, Duration::from_secs(5), || {
        slapd.ops("closed").iter().any(|l| conn_of(l) == old)
    });
    assert!(closed, "{old} was not closed:\n{}", slapd.log());
    assert!(
        !slapd.ops("closed").iter().any(|l| conn_of(l) == new),
        "the new connection was closed"
    );
    assert_outcomes(&v, &[("allowed", 2)]);
}

// ---- one bind per AUTH -------------------------------------------------------------------------

#[test]
fn a_wrong_password_reaches_the_directories_once() {
    const WRONG: usize = 5;
    let first = Slapd::start_default();
    let second = Slapd::start_default();
    let servers = format!("{} {}", first.url(), second.url());
    let dir = TempDir::new("resilience-pw");
    let pw = service_password_file(&dir);
    for search_bind in [false, true] {
        let v = if search_bind {
            Valkey::builder()
                .module(search_bind_args(&servers, &pw, &[]))
                .start()
        } else {
            start_valkey(&servers, &[])
        };
        let r = v
            .raw()
            .call(&[b"ACL", b"SETUSER", b"carol", b"on", b"+@all", b"~*"]);
        assert!(r.is_ok(), "{r}");
        let mode = if search_bind { "search+bind" } else { "bind" };
        let before = |s: &Slapd| bind_dns(s).iter().filter(|dn| *dn == CAROL.dn).count();
        let (first_before, second_before) = (before(&first), before(&second));
        let searches_before = first.count_ops("SRCH") + second.count_ops("SRCH");
        for _ in 0..WRONG {
            let (r, _) = timed_auth(&mut v.raw(), &CAROL, false);
            assert_answer(mode, &CAROL, false, &r);
        }
        // The replies came after slapd logged the binds; a short wait catches any retry.
        thread::sleep(Duration::from_millis(200));
        let (first_binds, second_binds) = (
            before(&first) - first_before,
            before(&second) - second_before,
        );
        assert_eq!(
            (first_binds, second_binds),
            (WRONG, 0),
            "{mode}: binds of carol on the first and second server"
        );
        if search_bind {
            let searches = first.count_ops("SRCH") + second.count_ops("SRCH") - searches_before;
            assert_eq!(searches, WRONG, "{mode}: one search per AUTH");
        }
        assert_outcomes(&v, &[("denied_bad_credentials", WRONG as u64)]);
    }
}

// ---- search+bind pool hygiene ----------------------------------------------------------------

#[test]
fn searches_never_run_on_a_connection_bound_as_a_user() {
    const ROUNDS: usize = 40;
    // Only the service account may search; a connection bound as a user finds nothing.
    let slapd = Slapd::builder()
        .no_default_acls()
        .acl("access to attrs=userPassword by anonymous auth by * none")
        .acl(format!(
            "access to * by dn.exact=\"{}\" read by * none",
            SEARCHER.dn
        ))
        .start();
    let dir = TempDir::new("resilience-pw");
    let pw = service_password_file(&dir);
    let v = Valkey::builder()
        .module(search_bind_args(&slapd.url(), &pw, &["workers", "2"]))
        .start();
    for user in ["alice", "bob", "carol"] {
        let r = v
            .raw()
            .call(&[b"ACL", b"SETUSER", user.as_bytes(), b"on", b"+@all", b"~*"]);
        assert!(r.is_ok(), "{r}");
    }
    let cases = [(ALICE, true), (BOB, false), (CAROL, true)];
    let wrong = AtomicUsize::new(0);
    let run = |name: &str, offset: usize| {
        let mut c = v.raw();
        for i in 0..ROUNDS {
            let (user, right) = cases[(offset + i) % cases.len()];
            let (r, _) = timed_auth(&mut c, &user, right);
            assert_answer(&format!("{name}, AUTH #{i}"), &user, right, &r);
            wrong.fetch_add(usize::from(!right), Ordering::Relaxed);
        }
    };
    // Sequential on one client, then concurrent on two: both workers serve every kind.
    run("sequential", 0);
    thread::scope(|s| {
        for t in 0..2 {
            let run = &run;
            s.spawn(move || run(&format!("thread {t}"), t));
        }
    });
    let (total, wrong) = (3 * ROUNDS as u64, wrong.into_inner() as u64);
    assert_outcomes(
        &v,
        &[
            ("allowed", total - wrong),
            ("denied_bad_credentials", wrong),
        ],
    );
    // One search per AUTH, except for AUTHs that shared the answer of an identical one in
    // flight at the same moment.
    let coalesced = info_field(&v, "coalesced") as usize;
    assert_eq!(slapd.count_ops("SRCH") + coalesced, 3 * ROUNDS);
}

// ---- bounded connections ---------------------------------------------------------------------

#[test]
fn open_connections_stay_within_two_per_worker_plus_one() {
    const WORKERS: usize = 3;
    let mut slapd = Slapd::start_default();
    let dir = TempDir::new("resilience-pw");
    let pw = service_password_file(&dir);
    let v = Valkey::builder()
        .module(search_bind_args(
            &slapd.url(),
            &pw,
            &["workers", &WORKERS.to_string()],
        ))
        .start();
    for user in ["alice", "bob", "mallory"] {
        let r = v
            .raw()
            .call(&[b"ACL", b"SETUSER", user.as_bytes(), b"on", b"+@all", b"~*"]);
        assert!(r.is_ok(), "{r}");
    }
    let (pid, port) = (v.pid(), slapd.port());
    let stop = AtomicBool::new(false);
    let most = AtomicUsize::new(0);
    let samples = AtomicUsize::new(0);
    let answers = AtomicUsize::new(0);

    thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                most.fetch_max(connections_to(pid, port), Ordering::Relaxed);
                samples.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_micros(500));
            }
        });
        for t in 0..4 {
            let (v, stop, answers) = (&v, &stop, &answers);
            s.spawn(move || {
                let mut c = v.raw();
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    // alice right, bob wrong, mallory unknown to the directory.
                    let (user, right) = match i % 3 {
                        0 => (ALICE, true),
                        1 => (BOB, false),
                        _ => (FixtureUser::new("mallory", "", "mallory-pw"), true),
                    };
                    let (r, took) = timed_auth(&mut c, &user, right);
                    // The directory is stopped or frozen part of the time: an outage is
                    // allowed then, a wrong answer never.
                    let good = match (user.name, r.error()) {
                        (_, Some(UNAVAILABLE)) => true,
                        ("alice", _) => r.is_ok(),
                        _ => r.error() == Some(WRONGPASS),
                    };
                    assert!(good, "AUTH {} got {r}", user.name);
                    assert!(took < Duration::from_millis(AUTH_MS) + MARGIN, "{took:?}");
                    answers.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
        let run = |ms| thread::sleep(Duration::from_millis(ms));
        run(300);
        slapd.stop();
        run(300);
        slapd.start();
        wait_all_servers_up(&v);
        run(300);
        slapd.freeze();
        run(1200);
        slapd.thaw();
        wait_all_servers_up(&v);
        run(300);
        stop.store(true, Ordering::Relaxed);
    });

    let most = most.into_inner();
    eprintln!(
        "open connections to slapd: at most {most} in {} samples, {} AUTHs answered",
        samples.into_inner(),
        answers.into_inner()
    );
    assert!(
        most <= WORKERS * 2 + 1,
        "{most} connections open at once with {WORKERS} workers"
    );
    assert!(most >= 2, "the sampler saw no connections");
    let c = counters(&v);
    assert!(c["outage_unreachable"] + c["outage_timeout"] >= 1, "{c:?}");
    assert!(
        c["allowed"] >= 1 && c["denied_bad_credentials"] >= 1,
        "{c:?}"
    );
    assert!(c["denied_unknown_user"] >= 1, "{c:?}");
}

// ---- bursts ------------------------------------------------------------------------------------

#[test]
fn bursts_of_200_auths_after_load_and_after_a_config_change() {
    const N: usize = 200;
    let slapd = Slapd::start_default();
    let v = start_valkey(&slapd.url(), &[]);
    let cases = [(ALICE, true), (BOB, false), (CAROL, true), (BOB, true)];
    // Each wrong password is different, so each goes to the directory; identical right ones in
    // flight together may share one bind.
    let items: Vec<Credentials> = (0..N)
        .map(|i| {
            let (user, right) = cases[i % cases.len()];
            let mut pass = password(&user, right);
            if !right {
                pass.extend_from_slice(i.to_string().as_bytes());
            }
            (user.name.as_bytes().to_vec(), pass)
        })
        .collect();
    let check = |replies: Vec<Reply>, when: &str| {
        for (i, r) in replies.iter().enumerate() {
            let (user, right) = cases[i % cases.len()];
            assert_answer(&format!("{when}, AUTH #{i}"), &user, right, r);
        }
    };

    // Right after the module loaded: no worker has a connection yet.
    let t = Instant::now();
    check(burst(&v, N, &items), "right after load");
    eprintln!("{N} concurrent AUTHs right after load: {:?}", t.elapsed());

    // Right after a change of a connection setting: every worker reconnects.
    config_set_ok(&v, "valkeyauth.operation_timeout_ms", "600");
    let t = Instant::now();
    check(burst(&v, N, &items), "right after CONFIG SET");
    eprintln!(
        "{N} concurrent AUTHs right after CONFIG SET: {:?}",
        t.elapsed()
    );

    let right = (0..N).filter(|i| cases[i % cases.len()].1).count() as u64;
    let wrong = N as u64 - right;
    assert_outcomes(
        &v,
        &[
            ("allowed", 2 * right),
            ("denied_bad_credentials", 2 * wrong),
        ],
    );
}

// ---- soak ----------------------------------------------------------------------------------------

#[test]
fn thousands_of_failing_auths_leak_no_fds_and_no_memory() {
    const CLIENTS: usize = 8;
    let mut slapd = Slapd::start_default();
    let v = start_valkey(&slapd.url(), &["workers", "2"]);
    let pid = v.pid();
    let start = Instant::now();
    let mallory = FixtureUser::new("mallory", "", "mallory-pw");
    let items = |user: &FixtureUser, right: bool, n: usize| -> Vec<Credentials> {
        (0..n)
            .map(|i| {
                let mut pass = password(user, right);
                pass.extend_from_slice(i.to_string().as_bytes());
                (user.name.as_bytes().to_vec(), pass)
            })
            .collect()
    };
    let expect_all = |replies: Vec<Reply>, want: &str, what: &str| {
        for r in &replies {
            assert_eq!(r.error(), Some(want), "{what}: {r}");
        }
    };
    // One round: wrong passwords, a user only Valkey knows, the directory down, then back.
    let round = |slapd: &mut Slapd, n: usize| {
        expect_all(
            burst(&v, CLIENTS, &items(&ALICE, false, n)),
            WRONGPASS,
            "wrong",
        );
        expect_all(
            burst(&v, CLIENTS, &items(&mallory, true, n)),
            WRONGPASS,
            "unknown",
        );
        slapd.stop();
        expect_all(
            burst(&v, CLIENTS, &items(&BOB, true, n)),
            UNAVAILABLE,
            "down",
        );
        slapd.start();
        wait_all_servers_up(&v);
        let right = burst(&v, CLIENTS, &items(&CAROL, true, 4 * CLIENTS));
        // Carol's password with a suffix is wrong; what matters is the directory answers.
        expect_all(right, WRONGPASS, "back up");
    };

    // Warm-up: every kind of failure once, so that buffers, arenas and connections exist.
    round(&mut slapd, 200);
    let (fds_before, rss_before) = (settled_fd_count(pid), rss_kib(pid));
    let table_before = fd_table(pid);

    for _ in 0..2 {
        round(&mut slapd, 1500);
    }
    let fds_after = wait_for(fds_before, Duration::from_secs(5), || settled_fd_count(pid));
    let rss_after = rss_kib(pid);
    let c = counters(&v);
    eprintln!(
        "soak: {} failing AUTHs in {:?}; fds {fds_before} -> {fds_after}; RSS {rss_before} KiB -> \
         {rss_after} KiB",
        c["denied_bad_credentials"] + c["denied_unknown_user"] + c["outage_unreachable"],
        start.elapsed()
    );
    assert_eq!(
        fds_after,
        fds_before,
        "file descriptors of valkey-server (slapd on :{}): before {table_before:#?}, after {:#?}",
        slapd.port(),
        fd_table(pid)
    );
    assert!(
        rss_after <= rss_before + 2048,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // mallory is unknown to the directory; bind mode cannot tell that from a wrong password.
    let per_round = |n: u64| 2 * n + 4 * CLIENTS as u64;
    assert_outcomes(
        &v,
        &[
            (
                "denied_bad_credentials",
                per_round(200) + 2 * per_round(1500),
            ),
            ("outage_unreachable", 200 + 2 * 1500),
        ],
    );
}

// ---- the main thread -------------------------------------------------------------------------

#[test]
fn config_set_and_auth_on_a_frozen_server_never_stall_the_main_thread() {
    const BOUND: Duration = Duration::from_millis(50);
    let good = Slapd::start_default();
    let mut frozen = Slapd::start_default();
    let v = Valkey::builder()
        .module(module_args(&good.url(), &[]))
        .config("slowlog-log-slower-than 0")
        .config("slowlog-max-len 100000")
        .start();
    add_acl_users(&v, &ACL_USERS);
    let (r, _) = timed_auth(&mut v.raw(), &ALICE, true);
    assert!(r.is_ok(), "{r}");
    frozen.freeze();

    let pinger = Pinger::start(&v);
    let mut admin = v.raw();
    let mut slowest_config = Duration::ZERO;
    let mut config_set = |name: &str, value: &str| {
        let t = Instant::now();
        let r = admin.call(&[
            b"CONFIG",
            b"SET",
            format!("valkeyauth.{name}").as_bytes(),
            value.as_bytes(),
        ]);
        assert!(r.is_ok(), "CONFIG SET {name} {value}: {r}");
        slowest_config = slowest_config.max(t.elapsed());
    };
    config_set("servers", &frozen.url());
    // An AUTH waits on the frozen server while the configuration changes again.
    let mut waiting = v.raw();
    let sent = Instant::now();
    waiting
        .send(&[b"AUTH", b"alice", ALICE.password.as_bytes()])
        .expect("send AUTH");
    thread::sleep(Duration::from_millis(100));
    config_set("operation_timeout_ms", "700");
    config_set("workers", "3");
    config_set("servers", &format!("{} {}", frozen.url(), good.url()));
    let r = waiting.read();
    let took = sent.elapsed();
    assert_eq!(r.error(), Some(UNAVAILABLE), "{r}");
    assert!(took < Duration::from_millis(AUTH_MS) + MARGIN, "{took:?}");
    // With the good server second, AUTHs fail over to it.
    let (r, _) = timed_auth(&mut v.raw(), &ALICE, true);
    assert!(r.is_ok(), "{r}");
    config_set("servers", &frozen.url());
    let (r, _) = timed_auth(&mut v.raw(), &BOB, true);
    assert_eq!(r.error(), Some(UNAVAILABLE), "{r}");
    let pings = pinger.finish();
    frozen.thaw();

    let slowest_ping = *pings.last().expect("PINGs");
    let p99 = pings[pings.len() * 99 / 100];
    let main_thread = slowlog(&v);
    let slowest_command = main_thread
        .iter()
        .filter(|(command, _)| command.starts_with("CONFIG SET") || command.starts_with("AUTH"))
        .max_by_key(|(_, micros)| *micros)
        .cloned()
        .expect("CONFIG SET and AUTH in the SLOWLOG");
    eprintln!(
        "PING during CONFIG SET and AUTHs on a frozen server: slowest {slowest_ping:?}, 99th \
         percentile {p99:?}, of {} PINGs; slowest CONFIG SET round trip {slowest_config:?}; \
         longest on the main thread: {} for {} us",
        pings.len(),
        slowest_command.0,
        slowest_command.1
    );
    // What the main thread itself spent on each CONFIG SET and AUTH, from Valkey's own clock.
    let counted = |prefix: &str| {
        main_thread
            .iter()
            .filter(|(c, _)| c.starts_with(prefix))
            .count()
    };
    assert!(
        counted("CONFIG SET") >= 5 && counted("AUTH") >= 3,
        "{main_thread:?}"
    );
    assert!(
        Duration::from_micros(slowest_command.1) < BOUND,
        "the main thread ran {} for {} us",
        slowest_command.0,
        slowest_command.1
    );
    // Seen from a client. A main thread that waited on the frozen server would hold one PING for
    // at least the operation timeout; a busy test machine delays a rare PING by far less.
    assert!(p99 < BOUND, "99% of the PINGs took up to {p99:?}");
    assert!(
        slowest_ping < Duration::from_millis(OPERATION_MS / 2),
        "a PING took {slowest_ping:?}"
    );
}

// ---- referrals -------------------------------------------------------------------------------

#[test]
fn referral_objects_are_neither_entries_nor_chased() {
    let hole = BlackHole::start();
    let target = format!(
        "ldap://127.0.0.1:{}/ou=elsewhere,dc=other,dc=test",
        hole.port()
    );
    let referral = |ou: &str, uid: &str| {
        ldif_entry(
            &format!("ou={ou},{PEOPLE}"),
            &[
                ("objectClass", b"referral"),
                ("objectClass", b"extensibleObject"),
                ("ou", ou.as_bytes()),
                ("uid", uid.as_bytes()),
                ("ref", target.as_bytes()),
            ],
        )
    };
    let slapd = Slapd::builder()
        .extra_ldif(&referral("elsewhere", "alice"))
        .extra_ldif(&referral("further", "ghost"))
        .start();
    let v = Valkey::builder()
        .module(module_args(
            &slapd.url(),
            &["auth_mode", "search+bind", "search_base", SUFFIX],
        ))
        .start();
    for user in ["alice", "ghost"] {
        let r = v
            .raw()
            .call(&[b"ACL", b"SETUSER", user.as_bytes(), b"on", b"+@all", b"~*"]);
        assert!(r.is_ok(), "{r}");
    }
    // slapd answers a search under the base (anonymous, without ManageDsaIT, as the module
    // searches) with the real entry and a continuation reference per referral object.
    let out = std::process::Command::new("ldapsearch")
        .args(["-x", "-H", &slapd.url(), "-b", SUFFIX, "(uid=alice)", "1.1"])
        .output()
        .expect("run ldapsearch");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("# numEntries: 1") && text.contains("# numReferences: 2"),
        "{text}"
    );
    let mut c = v.raw();
    for round in 0..3 {
        let (r, took) = timed_auth(&mut c, &ALICE, true);
        assert!(r.is_ok(), "round {round}: alice: {r}");
        assert!(took < FAST, "round {round}: alice took {took:?}");
        let (r, took) = timed_auth(&mut c, &ALICE, false);
        assert_eq!(r.error(), Some(WRONGPASS), "round {round}: {r}");
        assert!(took < FAST, "round {round}: took {took:?}");
        // Only behind a referral: not found, and not looked for there.
        let (r, took) = timed_auth(&mut c, &FixtureUser::new("ghost", "", "ghost-pw"), true);
        assert_eq!(r.error(), Some(WRONGPASS), "round {round}: ghost: {r}");
        assert!(took < FAST, "round {round}: ghost took {took:?}");
    }
    assert_eq!(hole.accepted(), 0, "a referral was chased");
    // Binds as a user: alice's six (ldapsearch's anonymous bind above has an empty DN).
    let user_binds: Vec<String> = bind_dns(&slapd)
        .into_iter()
        .filter(|dn| !dn.is_empty())
        .collect();
    assert_eq!(user_binds, [ALICE.dn; 6]);
    assert_outcomes(
        &v,
        &[
            ("allowed", 3),
            ("denied_bad_credentials", 3),
            ("denied_unknown_user", 3),
        ],
    );
}

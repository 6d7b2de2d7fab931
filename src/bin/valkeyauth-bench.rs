//! `valkeyauth-bench`: measures ValkeyAUTH on this machine against what the directory itself can
//! do and against Valkey's own AUTH, in one run. See BENCHMARK.md.
//!
//! It starts a private slapd and a private valkey-server with the module (127.0.0.1 only, one
//! temporary directory), drives them with its own RESP load generator (one thread, poll(2), one
//! connection per client, one AUTH in flight per connection, every reply checked), prints a
//! table and the ratios, and stops everything it started: on success, on error, on Ctrl-C and
//! on a panic (children are killed in `Drop`, and the kernel kills them if this process dies
//! any other way: `PR_SET_PDEATHSIG`).
//!
//! Exit status: 0 when every answer was right (ratios that miss their goal are reported, not
//! fatal, unless `--fail-on-miss`), 1 on a wrong answer or a setup failure, 2 on a missed goal
//! with `--fail-on-miss`, 130 when interrupted.

use std::collections::BTreeMap;
use std::ffi::{c_int, c_ulong};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use valkeyauth::ldap::{self, Connection, LdapError, Scope, Timeouts, TlsSettings};

const USAGE: &str = "\
valkeyauth-bench: ValkeyAUTH throughput, latency, main-thread and memory benchmark

usage: cargo run --release --bin valkeyauth-bench -- [options]

  --clients N         concurrent Valkey clients, one AUTH in flight each (default 50)
  --workers N         module workers, and threads of the direct-LDAP limit lines (default 8)
  --users N           directory users user00000.. with password pw-<name> (default 10000)
  --seconds S         measured duration of each line, fractions allowed (default 10)
  --memory-auths N    mixed AUTHs of line 7 (default 200000)
  --quick             every line ~1 s, 1000 users, 5000 memory AUTHs (explicit options win)
  --module PATH       libvalkeyauth.so (default: next to this binary, else target/release)
  --valkey-server P   valkey-server 9.1 (default: tools/valkey-9.1/valkey-server)
  --pin               slapd on CPU 0, valkey-server and the bench on the other CPUs
  --keep-tmp          keep the temporary directory (configs, logs) for inspection
  --fail-on-miss      exit 2 when a ratio misses its goal (default: reported only)
  -h, --help          this text

Starts its own slapd and valkey-server on free 127.0.0.1 ports and stops them when done.
";

// =============================================================================================
// Fixed names of the generated directory
// =============================================================================================

const SUFFIX: &str = "dc=bench,dc=test";
const PEOPLE: &str = "ou=people,dc=bench,dc=test";
const SERVICES: &str = "ou=services,dc=bench,dc=test";
const ROOT_DN: &str = "cn=admin,dc=bench,dc=test";
const ROOT_PW: &str = "admin-pw";
const SEARCHER_DN: &str = "cn=searcher,ou=services,dc=bench,dc=test";
const SEARCHER_PW: &str = "searcher-pw";
/// The module's `search_filter`; the limit line ANDs it with `(uid=<name>)` as the module does.
const SEARCH_FILTER: &str = "objectClass=inetOrgPerson";
/// A Valkey ACL user the module leaves alone (`exempt_users`): line 2.
const NATIVE_USER: &str = "benchnative";
const NATIVE_PW: &str = "native-pw";
/// The local password of every directory user's ACL user. With `local_fallback never` it is
/// never checked; if the module were not answering, every right AUTH would fail with it.
const LOCAL_ONLY_PW: &str = "valkey-local-only-never-used";

const UNAVAILABLE_REPLY: &[u8] = b"-ERR valkeyauth: directory unavailable, try again later";
/// How long the generator waits for replies still in flight when a line ends.
const DRAIN: Duration = Duration::from_secs(15);
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// AUTH deadline while the directory is frozen (line 6b), so the storm keeps getting answers.
const FROZEN_AUTH_TIMEOUT_MS: u64 = 200;

type Res<T> = Result<T, String>;
const INTERRUPTED: &str = "interrupted";

// =============================================================================================
// Options
// =============================================================================================

struct Args {
    clients: usize,
    workers: usize,
    users: usize,
    seconds: f64,
    memory_auths: u64,
    quick: bool,
    module: Option<PathBuf>,
    valkey_server: Option<PathBuf>,
    keep_tmp: bool,
    fail_on_miss: bool,
    pin: bool,
}

impl Args {
    fn line(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }

    fn warmup(&self) -> Duration {
        if self.quick {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        }
    }

    fn settle(&self) -> Duration {
        if self.quick {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(2)
        }
    }
}

fn take_value(
    name: &str,
    inline: Option<String>,
    rest: &mut impl Iterator<Item = String>,
) -> Res<String> {
    inline
        .or_else(|| rest.next())
        .ok_or_else(|| format!("{name} needs a value"))
}

/// The number after option `name`, within `min..=max`.
fn numeric<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
    name: &str,
    inline: Option<String>,
    rest: &mut impl Iterator<Item = String>,
    min: T,
    max: T,
) -> Res<T> {
    number(name, &take_value(name, inline, rest)?, min, max)
}

fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
    name: &str,
    text: &str,
    min: T,
    max: T,
) -> Res<T> {
    match text.trim().parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(format!(
            "{name} must be a number from {min} to {max}, not {text:?}"
        )),
    }
}

fn parse_args() -> Res<Args> {
    let mut clients = None;
    let mut workers = None;
    let mut users = None;
    let mut seconds = None;
    let mut memory_auths = None;
    let mut quick = false;
    let mut module = None;
    let mut valkey_server = None;
    let mut keep_tmp = false;
    let mut fail_on_miss = false;
    let mut pin = false;
    let mut rest = std::env::args().skip(1);
    while let Some(arg) = rest.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        match name.as_str() {
            "--clients" => clients = Some(numeric(&name, inline, &mut rest, 1, 10_000)?),
            "--workers" => workers = Some(numeric(&name, inline, &mut rest, 1, 256)?),
            "--users" => users = Some(numeric(&name, inline, &mut rest, 1, 1_000_000)?),
            "--seconds" => seconds = Some(numeric(&name, inline, &mut rest, 0.1, 3600.0)?),
            "--memory-auths" => {
                memory_auths = Some(numeric(&name, inline, &mut rest, 1, 100_000_000)?)
            }
            "--module" => module = Some(PathBuf::from(take_value(&name, inline, &mut rest)?)),
            "--valkey-server" => {
                valkey_server = Some(PathBuf::from(take_value(&name, inline, &mut rest)?))
            }
            "--quick" if inline.is_none() => quick = true,
            "--keep-tmp" if inline.is_none() => keep_tmp = true,
            "--fail-on-miss" if inline.is_none() => fail_on_miss = true,
            "--pin" if inline.is_none() => pin = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {arg:?} (see --help)")),
        }
    }
    Ok(Args {
        clients: clients.unwrap_or(50),
        workers: workers.unwrap_or(8),
        users: users.unwrap_or(if quick { 1000 } else { 10_000 }),
        seconds: seconds.unwrap_or(if quick { 1.0 } else { 10.0 }),
        memory_auths: memory_auths.unwrap_or(if quick { 5000 } else { 200_000 }),
        quick,
        module,
        valkey_server,
        keep_tmp,
        fail_on_miss,
        pin,
    })
}

// =============================================================================================
// OS glue: signals, child processes, poll(2), /proc
// =============================================================================================

mod os {
    use std::ffi::{c_int, c_long, c_short, c_ulong};

    #[repr(C)]
    pub struct PollFd {
        pub fd: c_int,
        pub events: c_short,
        pub revents: c_short,
    }

    pub const POLLIN: c_short = 0x001;
    pub const POLLOUT: c_short = 0x004;
    pub const POLLERR: c_short = 0x008;
    pub const POLLHUP: c_short = 0x010;
    pub const POLLNVAL: c_short = 0x020;

    pub const SIGHUP: c_int = 1;
    pub const SIGINT: c_int = 2;
    pub const SIGKILL: c_int = 9;
    pub const SIGTERM: c_int = 15;
    pub const SIGCONT: c_int = 18;
    pub const SIGSTOP: c_int = 19;
    pub const ESRCH: i32 = 3;
    pub const PR_SET_PDEATHSIG: c_int = 1;
    pub const SC_CLK_TCK: c_int = 2;

    extern "C" {
        pub fn kill(pid: c_int, sig: c_int) -> c_int;
        pub fn prctl(option: c_int, arg2: c_ulong, ...) -> c_int;
        pub fn getppid() -> c_int;
        pub fn setpgid(pid: c_int, pgid: c_int) -> c_int;
        pub fn signal(sig: c_int, handler: extern "C" fn(c_int)) -> usize;
        pub fn poll(fds: *mut PollFd, nfds: c_ulong, timeout: c_int) -> c_int;
        pub fn sysconf(name: c_int) -> c_long;
        pub fn _exit(status: c_int) -> !;
        pub fn sched_setaffinity(pid: c_int, size: usize, mask: *const u64) -> c_int;
    }
}

/// Set by SIGINT/SIGTERM/SIGHUP: every loop checks it and returns `INTERRUPTED`, so the normal
/// `Drop`s stop the servers. A second signal exits at once (the kernel still kills the
/// children through `PR_SET_PDEATHSIG`).
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { os::_exit(130) }
    }
}

fn install_signal_handlers() {
    for sig in [os::SIGINT, os::SIGTERM, os::SIGHUP] {
        // SAFETY: the handler only touches an atomic and calls _exit.
        unsafe { os::signal(sig, on_signal) };
    }
}

fn interrupted() -> Res<()> {
    if STOP.load(Ordering::Relaxed) {
        Err(INTERRUPTED.to_owned())
    } else {
        Ok(())
    }
}

/// Sleeps, waking every 50 ms to notice Ctrl-C.
fn nap(d: Duration) -> Res<()> {
    let until = Instant::now() + d;
    loop {
        interrupted()?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// A CPU set for sched_setaffinity(2): up to 1024 CPUs, as glibc's `cpu_set_t`.
#[derive(Clone, Copy)]
struct CpuSet([u64; 16]);

impl CpuSet {
    fn of(cpus: impl IntoIterator<Item = usize>) -> CpuSet {
        let mut set = [0u64; 16];
        for cpu in cpus.into_iter().filter(|c| *c < 1024) {
            set[cpu / 64] |= 1 << (cpu % 64);
        }
        CpuSet(set)
    }

    /// Binds the calling thread (and the threads and processes it creates later).
    /// Async-signal-safe: one system call.
    fn apply(&self) -> io::Result<()> {
        // SAFETY: the mask is a valid 128-byte cpu_set_t for the call.
        let rc = unsafe { os::sched_setaffinity(0, 128, self.0.as_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// `--pin`: the directory gets CPU 0 to itself, everything else the other CPUs, as when the
/// directory runs on its own machine.
struct Pinning {
    directory: CpuSet,
    rest: CpuSet,
    cpus: usize,
}

fn signal(pid: u32, sig: c_int) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { os::kill(pid as c_int, sig) == 0 }
}

fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// A child process in its own process group; the group is killed (after SIGCONT, in case it
/// was frozen) and reaped on drop.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    /// Must be called from the main thread: the parent-death signal follows the forking thread.
    /// With `cpus`, the child runs on those CPUs only.
    fn spawn(name: &'static str, mut cmd: Command, cpus: Option<CpuSet>) -> Res<Proc> {
        let parent = std::process::id() as c_int;
        // SAFETY: between fork and exec the closure makes only async-signal-safe calls
        // (setpgid, prctl, getppid, sched_setaffinity) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                os::setpgid(0, 0);
                os::prctl(os::PR_SET_PDEATHSIG, os::SIGKILL as c_ulong);
                if os::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(os::ESRCH));
                }
                if let Some(cpus) = &cpus {
                    cpus.apply()?;
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Proc { name, child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited ({status})", self.name)),
            Ok(None) => None,
            Err(e) => Some(format!("{}: {e}", self.name)),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let group = -(self.child.id() as c_int);
        // SAFETY: kill(2) on our own child's process group.
        unsafe {
            os::kill(group, os::SIGCONT);
            os::kill(group, os::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `$TMPDIR/valkeyauth-bench/run-<pid>-<nanos>`, removed on drop unless `--keep-tmp`.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn new(keep: bool) -> Res<TempDir> {
        let root = std::env::temp_dir().join("valkeyauth-bench");
        // Directories of runs that were killed with SIGKILL (their servers died with them).
        if let Ok(entries) = fs::read_dir(&root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let pid = name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
                if let Some(pid) = pid {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        let _ = fs::remove_dir_all(entry.path());
                    }
                }
            }
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = root.join(format!("run-{}-{nanos:x}", std::process::id()));
        fs::create_dir_all(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        Ok(TempDir { path, keep })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("valkeyauth-bench: kept {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn free_port() -> Res<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn rss_kb(pid: u32) -> Res<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn fd_count(pid: u32) -> Res<usize> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .map_err(|e| format!("read /proc/{pid}/fd: {e}"))
}

/// utime + stime in clock ticks of one /proc stat line, and the thread's name.
fn stat_ticks(path: &str) -> Option<(String, u64)> {
    let stat = fs::read_to_string(path).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the comm: state is field 3 of proc(5), utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { os::sysconf(os::SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time used so far, in clock ticks, by the processes that share the machine.
#[derive(Clone, Default)]
struct CpuTicks {
    slapd: u64,
    /// Per slapd thread, to see whether one of them (its listener) is the limit.
    slapd_threads: BTreeMap<String, u64>,
    valkey_main: u64,
    valkey_workers: u64,
    valkey_other: u64,
    bench: u64,
    /// Every CPU of the machine: busy (not idle, not iowait) and idle ticks, from /proc/stat.
    machine_busy: u64,
    machine_idle: u64,
}

#[derive(Clone)]
struct CpuSnap {
    at: Instant,
    ticks: CpuTicks,
}

/// Busy and idle ticks of all CPUs together (first line of /proc/stat).
fn machine_ticks() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let busy = v.iter().take(8).sum::<u64>().saturating_sub(idle);
    (busy, idle)
}

fn cpu_snap(slapd: u32, valkey: u32) -> CpuSnap {
    let (machine_busy, machine_idle) = machine_ticks();
    let mut t = CpuTicks {
        slapd: stat_ticks(&format!("/proc/{slapd}/stat")).map_or(0, |s| s.1),
        bench: stat_ticks("/proc/self/stat").map_or(0, |s| s.1),
        machine_busy,
        machine_idle,
        ..CpuTicks::default()
    };
    if let Ok(tasks) = fs::read_dir(format!("/proc/{slapd}/task")) {
        for task in tasks.flatten() {
            let tid = task.file_name().to_string_lossy().into_owned();
            if let Some((_, ticks)) = stat_ticks(&format!("/proc/{slapd}/task/{tid}/stat")) {
                t.slapd_threads.insert(tid, ticks);
            }
        }
    }
    if let Ok(tasks) = fs::read_dir(format!("/proc/{valkey}/task")) {
        for task in tasks.flatten() {
            let tid = task.file_name().to_string_lossy().into_owned();
            let Some((comm, ticks)) = stat_ticks(&format!("/proc/{valkey}/task/{tid}/stat")) else {
                continue;
            };
            let is_worker = comm
                .strip_prefix("valkeyauth-")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if tid == valkey.to_string() {
                t.valkey_main += ticks;
            } else if is_worker {
                t.valkey_workers += ticks;
            } else {
                t.valkey_other += ticks;
            }
        }
    }
    CpuSnap {
        at: Instant::now(),
        ticks: t,
    }
}

/// Percent of one core over an interval.
#[derive(Clone, Copy)]
struct CpuUse {
    slapd: f64,
    slapd_busiest_thread: f64,
    valkey_main: f64,
    valkey_workers: f64,
    valkey_other: f64,
    bench: f64,
    /// Everything else on the machine (other users' builds and tests, the kernel's own threads).
    elsewhere: f64,
    idle: f64,
}

fn cpu_use(a: &CpuSnap, b: &CpuSnap) -> CpuUse {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let hz = clock_ticks();
    let pct = |x: u64, y: u64| y.saturating_sub(x) as f64 / hz / secs * 100.0;
    let (x, y) = (&a.ticks, &b.ticks);
    let busiest = y
        .slapd_threads
        .iter()
        .filter_map(|(tid, after)| Some(after.saturating_sub(*x.slapd_threads.get(tid)?)))
        .max()
        .unwrap_or(0);
    let ours = [
        y.slapd.saturating_sub(x.slapd),
        y.valkey_main.saturating_sub(x.valkey_main),
        y.valkey_workers.saturating_sub(x.valkey_workers),
        y.valkey_other.saturating_sub(x.valkey_other),
        y.bench.saturating_sub(x.bench),
    ]
    .iter()
    .sum::<u64>();
    let busy = y.machine_busy.saturating_sub(x.machine_busy);
    CpuUse {
        slapd: pct(x.slapd, y.slapd),
        slapd_busiest_thread: pct(0, busiest),
        valkey_main: pct(x.valkey_main, y.valkey_main),
        valkey_workers: pct(x.valkey_workers, y.valkey_workers),
        valkey_other: pct(x.valkey_other, y.valkey_other),
        bench: pct(x.bench, y.bench),
        elsewhere: pct(0, busy.saturating_sub(ours)),
        idle: pct(x.machine_idle, y.machine_idle),
    }
}

// =============================================================================================
// Small pieces: random numbers, RESP
// =============================================================================================

/// xorshift64*: fast, good enough to pick users.
struct Rng(u64);

impl Rng {
    fn seeded(stream: u64) -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng((nanos ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in 0..n.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

/// Appends one command as a RESP array of bulk strings.
fn resp(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut s: String = text.chars().take(90).collect();
    if text.chars().count() > 90 {
        s.push_str("...");
    }
    s
}

#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Simple(s) => write!(f, "+{s}"),
            Reply::Error(s) => write!(f, "-{s}"),
            Reply::Int(i) => write!(f, ":{i}"),
            Reply::Bulk(Some(b)) => write!(f, "{:?}", printable(b)),
            Reply::Bulk(None) | Reply::Array(None) => write!(f, "(nil)"),
            Reply::Array(Some(a)) => write!(f, "[{} items]", a.len()),
        }
    }
}

/// A blocking RESP2 client for set-up and INFO.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16, timeout: Duration) -> io::Result<Client> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        stream.set_write_timeout(Some(Duration::from_secs(60)))?;
        Ok(Client {
            reader: BufReader::new(stream),
        })
    }

    fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    fn read(&mut self) -> io::Result<Reply> {
        read_reply(&mut self.reader)
    }

    fn call(&mut self, args: &[&[u8]]) -> Res<Reply> {
        let mut buf = Vec::new();
        resp(&mut buf, args);
        let name = String::from_utf8_lossy(args.first().copied().unwrap_or_default());
        self.send_raw(&buf)
            .and_then(|()| self.read())
            .map_err(|e| format!("valkey {name}: {e}"))
    }

    fn ok(&mut self, args: &[&str]) -> Res<()> {
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        match self.call(&bytes)? {
            Reply::Simple(s) if s == "OK" => Ok(()),
            other => Err(format!("valkey {}: {other}", args.join(" "))),
        }
    }

    fn config_set(&mut self, option: &str, value: &str) -> Res<()> {
        self.ok(&["CONFIG", "SET", &format!("valkeyauth.{option}"), value])
    }

    /// `INFO <section>` as a map of its `key:value` lines.
    fn info(&mut self, section: &str) -> Res<BTreeMap<String, String>> {
        match self.call(&[b"INFO", section.as_bytes()])? {
            Reply::Bulk(Some(text)) => Ok(String::from_utf8_lossy(&text)
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
                .collect()),
            other => Err(format!("INFO {section}: {other}")),
        }
    }

    fn info_u64(&mut self, section: &str, key: &str) -> Res<u64> {
        self.info(section)?
            .get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("INFO {section} has no number {key}"))
    }

    /// The numeric fields of `INFO valkeyauth`.
    fn module_counters(&mut self) -> Res<BTreeMap<String, u64>> {
        Ok(self
            .info("valkeyauth")?
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect())
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\r\n") {
        return Err(bad("connection closed or reply without CRLF"));
    }
    line.truncate(line.len() - 2);
    let text = String::from_utf8_lossy(&line[1..]).into_owned();
    let len = || {
        text.parse::<i64>()
            .map_err(|_| bad(format!("bad length {text:?}")))
    };
    Ok(match line.first() {
        Some(b'+') => Reply::Simple(text),
        Some(b'-') => Reply::Error(text),
        Some(b':') => Reply::Int(len()?),
        Some(b'$') => {
            let n = len()?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let mut buf = vec![0u8; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Reply::Bulk(Some(buf))
            }
        }
        Some(b'*') => {
            let n = len()?;
            if n < 0 {
                Reply::Array(None)
            } else {
                Reply::Array(Some(
                    (0..n).map(|_| read_reply(r)).collect::<io::Result<_>>()?,
                ))
            }
        }
        _ => return Err(bad(format!("unknown reply {:?}", printable(&line)))),
    })
}

// =============================================================================================
// The directory's users
// =============================================================================================

struct Users {
    count: usize,
    width: usize,
    /// ACL users that are not in the directory ("unknown user" of line 7).
    ghosts: usize,
    /// `AUTH <user> <right password>` of every user, encoded once.
    auth_right: Arc<Vec<Vec<u8>>>,
}

impl Users {
    fn new(count: usize) -> Users {
        let width = (count.saturating_sub(1)).to_string().len().max(5);
        let mut users = Users {
            count,
            width,
            ghosts: (count / 10).clamp(10, 1000),
            auth_right: Arc::new(Vec::new()),
        };
        let cmds = (0..count)
            .map(|i| {
                let mut cmd = Vec::new();
                resp(
                    &mut cmd,
                    &[
                        b"AUTH",
                        users.name(i).as_bytes(),
                        users.password(i).as_bytes(),
                    ],
                );
                cmd
            })
            .collect();
        users.auth_right = Arc::new(cmds);
        users
    }

    fn name(&self, i: usize) -> String {
        format!("user{i:0w$}", w = self.width)
    }

    fn password(&self, i: usize) -> String {
        format!("pw-{}", self.name(i))
    }

    fn dn(&self, i: usize) -> String {
        format!("uid={},{PEOPLE}", self.name(i))
    }

    fn ghost(&self, i: usize) -> String {
        format!("ghost{i:0w$}", w = self.width)
    }

    fn ldif(&self) -> String {
        let mut s = format!(
            "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: bench\ndc: bench\n\n\
             dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: {SERVICES}\nobjectClass: organizationalUnit\nou: services\n\n\
             dn: {SEARCHER_DN}\nobjectClass: applicationProcess\nobjectClass: simpleSecurityObject\n\
             cn: searcher\nuserPassword: {SEARCHER_PW}\n\n"
        );
        s.reserve(self.count * 160);
        for i in 0..self.count {
            let name = self.name(i);
            s.push_str(&format!(
                "dn: {}\nobjectClass: inetOrgPerson\nuid: {name}\ncn: {name}\nsn: {name}\n\
                 userPassword: {}\n\n",
                self.dn(i),
                self.password(i)
            ));
        }
        s
    }
}

// =============================================================================================
// slapd
// =============================================================================================

const SLAPD: &str = "/usr/sbin/slapd";
const SLAPADD: &str = "/usr/sbin/slapadd";

struct Slapd {
    port: u16,
    proc: Proc,
    log: PathBuf,
}

impl Slapd {
    fn start(tmp: &Path, users: &Users, cpus: Option<CpuSet>) -> Res<Slapd> {
        for tool in [SLAPD, SLAPADD] {
            if !Path::new(tool).exists() {
                return Err(format!(
                    "{tool} is missing: run scripts/install-deps.sh (Debian slapd)"
                ));
            }
        }
        let dir = tmp.join("slapd");
        let db = dir.join("db");
        fs::create_dir_all(&db).map_err(|e| format!("create {}: {e}", db.display()))?;
        let conf = dir.join("slapd.conf");
        let mut c = String::new();
        for schema in ["core", "cosine", "inetorgperson", "nis"] {
            c += &format!("include /etc/ldap/schema/{schema}.schema\n");
        }
        c += "modulepath /usr/lib/ldap\nmoduleload back_mdb\n";
        c += &format!(
            "pidfile {}\nargsfile {}\n",
            dir.join("slapd.pid").display(),
            dir.join("slapd.args").display()
        );
        // No logging at all: a stats line per operation would cost the directory throughput.
        c += "loglevel 0\n";
        c += "\ndatabase mdb\nmaxsize 1073741824\n";
        c += &format!("suffix \"{SUFFIX}\"\nrootdn \"{ROOT_DN}\"\nrootpw {ROOT_PW}\n");
        c += &format!("directory {}\n", db.display());
        // As any real deployment: the search attribute is indexed.
        c += "index objectClass eq\nindex uid eq\n";
        c += "access to attrs=userPassword by anonymous auth by * none\n";
        c += "access to * by * read\n";
        fs::write(&conf, c).map_err(|e| format!("write {}: {e}", conf.display()))?;
        let ldif = dir.join("data.ldif");
        fs::write(&ldif, users.ldif()).map_err(|e| format!("write {}: {e}", ldif.display()))?;
        let out = Command::new(SLAPADD)
            .arg("-q")
            .arg("-f")
            .arg(&conf)
            .arg("-l")
            .arg(&ldif)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run {SLAPADD}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "slapadd failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let log = dir.join("slapd.out");
        let mut last = String::new();
        for _attempt in 0..3 {
            let port = free_port()?;
            let out = fs::File::create(&log).map_err(|e| e.to_string())?;
            let err = out.try_clone().map_err(|e| e.to_string())?;
            let mut cmd = Command::new(SLAPD);
            // -d 0: stay in the foreground (a child we can kill), print nothing.
            cmd.arg("-f")
                .arg(&conf)
                .arg("-h")
                .arg(format!("ldap://127.0.0.1:{port}/"))
                .arg("-d")
                .arg("0")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .current_dir(&dir);
            let mut slapd = Slapd {
                port,
                proc: Proc::spawn("slapd", cmd, cpus)?,
                log: log.clone(),
            };
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                interrupted()?;
                if let Some(why) = slapd.proc.exited() {
                    last = format!("{why}: {}", tail(&slapd.log, 20));
                    break;
                }
                if slapd.service_bind().is_ok() {
                    return Ok(slapd);
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "slapd not ready after {START_TIMEOUT:?}: {}",
                        tail(&slapd.log, 20)
                    ));
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Err(format!("slapd did not start: {last}"))
    }

    fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    fn service_bind(&self) -> Result<(), LdapError> {
        let t = Timeouts {
            connect: Duration::from_secs(1),
            operation: Duration::from_secs(1),
        };
        let mut c = Connection::open(&self.url(), &t, &TlsSettings::default())?;
        c.simple_bind(SEARCHER_DN, SEARCHER_PW.as_bytes())
    }

    fn wait_state(&self, stopped: bool) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let state = process_state(self.pid());
            let is_stopped = matches!(state, Some('T' | 't'));
            if state.is_none() || is_stopped == stopped {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("slapd state {state:?} did not change"));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    fn freeze(&self) -> Res<()> {
        signal(self.pid(), os::SIGSTOP);
        self.wait_state(true)
    }

    fn thaw(&self) -> Res<()> {
        signal(self.pid(), os::SIGCONT);
        self.wait_state(false)
    }
}

// =============================================================================================
// valkey-server with the module
// =============================================================================================

struct Valkey {
    port: u16,
    proc: Proc,
    log: PathBuf,
}

fn conf_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    out
}

impl Valkey {
    fn start(
        tmp: &Path,
        binary: &Path,
        module: &Path,
        module_args: &[(&str, String)],
    ) -> Res<Valkey> {
        let dir = tmp.join("valkey");
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let log = dir.join("valkey.log");
        let out_path = dir.join("stdout.log");
        let mut last = String::new();
        for _attempt in 0..3 {
            let port = free_port()?;
            let mut c = format!("port {port}\nbind 127.0.0.1\n");
            c += &format!("dir {}\n", conf_quote(&dir.to_string_lossy()));
            c += &format!("logfile {}\n", conf_quote(&log.to_string_lossy()));
            c += "daemonize no\nsave \"\"\nappendonly no\n";
            c += "loadmodule ";
            c += &conf_quote(&module.to_string_lossy());
            for (name, value) in module_args {
                c += &format!(" {} {}", conf_quote(name), conf_quote(value));
            }
            c.push('\n');
            let conf = dir.join("valkey.conf");
            fs::write(&conf, c).map_err(|e| format!("write {}: {e}", conf.display()))?;
            let out = fs::File::create(&out_path).map_err(|e| e.to_string())?;
            let err = out.try_clone().map_err(|e| e.to_string())?;
            let mut cmd = Command::new(binary);
            cmd.arg(&conf)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .current_dir(&dir);
            let mut valkey = Valkey {
                port,
                proc: Proc::spawn("valkey-server", cmd, None)?,
                log: log.clone(),
            };
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                interrupted()?;
                if let Some(why) = valkey.proc.exited() {
                    last = format!("{why}: {}\n{}", tail(&valkey.log, 20), tail(&out_path, 20));
                    break;
                }
                if let Ok(mut client) = Client::connect(port, Duration::from_secs(1)) {
                    if let Ok(Reply::Simple(pong)) = client.call(&[b"PING"]) {
                        if pong == "PONG" {
                            return Ok(valkey);
                        }
                    }
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "valkey-server not ready after {START_TIMEOUT:?}: {}",
                        tail(&valkey.log, 20)
                    ));
                }
                thread::sleep(Duration::from_millis(20));
            }
            if !last.contains("Address already in use") {
                break;
            }
        }
        Err(format!("valkey-server did not start: {last}"))
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    fn client(&self) -> Res<Client> {
        Client::connect(self.port, Duration::from_secs(5))
            .map_err(|e| format!("connect to valkey on port {}: {e}", self.port))
    }
}

/// `ACL SETUSER` for every directory user, every ghost and the native user, pipelined.
fn create_acl_users(admin: &mut Client, users: &Users) -> Res<()> {
    let mut names: Vec<String> = (0..users.count).map(|i| users.name(i)).collect();
    names.extend((0..users.ghosts).map(|i| users.ghost(i)));
    let local = format!(">{LOCAL_ONLY_PW}");
    for chunk in names.chunks(2000) {
        interrupted()?;
        let mut buf = Vec::with_capacity(chunk.len() * 96);
        for name in chunk {
            resp(
                &mut buf,
                &[
                    b"ACL",
                    b"SETUSER",
                    name.as_bytes(),
                    b"on",
                    local.as_bytes(),
                    b"~*",
                    b"+@all",
                ],
            );
        }
        admin
            .send_raw(&buf)
            .map_err(|e| format!("ACL SETUSER: {e}"))?;
        for name in chunk {
            match admin.read().map_err(|e| format!("ACL SETUSER: {e}"))? {
                Reply::Simple(s) if s == "OK" => {}
                other => return Err(format!("ACL SETUSER {name}: {other}")),
            }
        }
    }
    admin.ok(&[
        "ACL",
        "SETUSER",
        NATIVE_USER,
        "on",
        &format!(">{NATIVE_PW}"),
        "~*",
        "+@all",
    ])
}

// =============================================================================================
// Measurements
// =============================================================================================

/// Wrong answers, grouped by what came back.
#[derive(Default)]
struct Wrong {
    total: u64,
    kinds: BTreeMap<String, u64>,
}

impl Wrong {
    fn add(&mut self, what: String) {
        self.total += 1;
        let key = if self.kinds.len() < 8 || self.kinds.contains_key(&what) {
            what
        } else {
            "(other)".to_owned()
        };
        *self.kinds.entry(key).or_default() += 1;
    }

    fn merge(&mut self, other: Wrong) {
        for (what, n) in other.kinds {
            for _ in 0..n {
                self.add(what.clone());
            }
        }
    }
}

/// What one line measured: requests completed inside the window, latency of every answer.
#[derive(Default)]
struct Measured {
    window: Duration,
    completed: u64,
    answered: u64,
    lat_ns: Vec<u64>,
    wrong: Wrong,
}

impl Measured {
    fn merge(&mut self, other: Measured) {
        self.window = self.window.max(other.window);
        self.completed += other.completed;
        self.answered += other.answered;
        self.lat_ns.extend(other.lat_ns);
        self.wrong.merge(other.wrong);
    }

    fn summary(mut self) -> Summary {
        self.lat_ns.sort_unstable();
        let pct = |p: f64| -> Option<Duration> {
            let n = self.lat_ns.len();
            (n > 0).then(|| {
                let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
                Duration::from_nanos(self.lat_ns[rank - 1])
            })
        };
        Summary {
            rate: self.completed as f64 / self.window.as_secs_f64().max(1e-9),
            p50: pct(0.50),
            p99: pct(0.99),
            answered: self.answered,
            wrong: self.wrong,
        }
    }
}

struct Summary {
    rate: f64,
    p50: Option<Duration>,
    p99: Option<Duration>,
    answered: u64,
    wrong: Wrong,
}

// =============================================================================================
// The load generator: N connections, one thread, poll(2)
// =============================================================================================

/// The reply a request must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Ok,
    WrongPass,
    Unavailable,
}

impl Expect {
    fn matches(self, line: &[u8]) -> bool {
        match self {
            Expect::Ok => line == b"+OK",
            Expect::WrongPass => line.starts_with(b"-WRONGPASS "),
            Expect::Unavailable => line == UNAVAILABLE_REPLY,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Expect::Ok => "+OK",
            Expect::WrongPass => "-WRONGPASS",
            Expect::Unavailable => "-ERR valkeyauth: directory unavailable",
        }
    }
}

#[derive(Clone, Copy)]
enum Until {
    Time(Duration),
    Count(u64),
}

/// Writes the next request of connection `conn` into the buffer and says what it must get.
type Maker<'a> = dyn FnMut(usize, &mut Rng, &mut Vec<u8>) -> Expect + 'a;

struct GenConn {
    stream: TcpStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    inflight: Option<(Instant, Expect)>,
    dead: bool,
}

impl GenConn {
    fn connect(port: u16) -> Res<GenConn> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("load generator: connect to valkey: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(GenConn {
            stream,
            rbuf: Vec::with_capacity(256),
            wbuf: Vec::with_capacity(256),
            wpos: 0,
            inflight: None,
            dead: false,
        })
    }

    fn fail(&mut self, wrong: &mut Wrong, what: String) {
        if self.inflight.take().is_some() || !self.dead {
            wrong.add(what);
        }
        self.dead = true;
    }

    fn flush(&mut self, wrong: &mut Wrong) {
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return self.fail(wrong, "write: connection closed".to_owned()),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(wrong, format!("write: {e}")),
            }
        }
    }

    fn issue(&mut self, index: usize, rng: &mut Rng, maker: &mut Maker, wrong: &mut Wrong) {
        self.wbuf.clear();
        self.wpos = 0;
        let expect = maker(index, rng, &mut self.wbuf);
        self.inflight = Some((Instant::now(), expect));
        self.flush(wrong);
    }
}

fn take_line(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = buf[..end].to_vec();
    buf.drain(..end + 2);
    Some(line)
}

/// Runs `clients` closed-loop connections (each sends its next request when the previous reply
/// arrives) until the time is up or `Count` requests were sent, then waits up to [`DRAIN`] for
/// the replies still in flight. With `go`, sets it once the first requests are out (a PING
/// prober starts on it).
fn run_load(
    port: u16,
    clients: usize,
    until: Until,
    go: Option<&AtomicBool>,
    maker: &mut Maker,
) -> Res<Measured> {
    let mut conns = (0..clients)
        .map(|_| GenConn::connect(port))
        .collect::<Res<Vec<_>>>()?;
    let mut rng = Rng::seeded(0x5EED);
    let mut m = Measured {
        lat_ns: Vec::with_capacity(1 << 16),
        ..Measured::default()
    };
    let start = Instant::now();
    let (deadline, target) = match until {
        Until::Time(d) => (Some(start + d), u64::MAX),
        Until::Count(n) => (None, n),
    };
    let mut issued = 0u64;
    let mut last_reply = start;
    let mut drain_deadline: Option<Instant> = None;
    for (i, c) in conns.iter_mut().enumerate() {
        if issued < target {
            c.issue(i, &mut rng, maker, &mut m.wrong);
            issued += 1;
        }
    }
    if let Some(go) = go {
        go.store(true, Ordering::SeqCst);
    }
    let mut pfds: Vec<os::PollFd> = Vec::with_capacity(clients);
    let mut index: Vec<usize> = Vec::with_capacity(clients);
    let mut scratch = vec![0u8; 16 * 1024];
    loop {
        interrupted()?;
        let now = Instant::now();
        let sending = deadline.map_or(issued < target, |d| now < d);
        let in_flight = conns.iter().filter(|c| c.inflight.is_some()).count();
        if in_flight == 0 {
            if !sending {
                break;
            }
            if conns.iter().all(|c| c.dead) {
                return Err(format!(
                    "load generator: every connection to valkey failed: {:?}",
                    m.wrong.kinds
                ));
            }
        }
        if !sending {
            let dd = *drain_deadline.get_or_insert(now + DRAIN);
            if now >= dd {
                for c in conns.iter_mut().filter(|c| c.inflight.is_some()) {
                    c.fail(&mut m.wrong, format!("no reply within {DRAIN:?}"));
                }
                break;
            }
        }
        pfds.clear();
        index.clear();
        for (i, c) in conns.iter().enumerate() {
            if c.inflight.is_some() {
                let out = if c.wpos < c.wbuf.len() {
                    os::POLLOUT
                } else {
                    0
                };
                pfds.push(os::PollFd {
                    fd: c.stream.as_raw_fd(),
                    events: os::POLLIN | out,
                    revents: 0,
                });
                index.push(i);
            }
        }
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs for the call.
        let n = unsafe { os::poll(pfds.as_mut_ptr(), pfds.len() as c_ulong, 20) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        if n == 0 {
            continue;
        }
        for (pfd, &i) in pfds.iter().zip(&index) {
            let re = pfd.revents;
            if re == 0 {
                continue;
            }
            let c = &mut conns[i];
            if re & os::POLLOUT != 0 {
                c.flush(&mut m.wrong);
            }
            if re & (os::POLLIN | os::POLLHUP | os::POLLERR | os::POLLNVAL) == 0 || c.dead {
                continue;
            }
            match c.stream.read(&mut scratch) {
                Ok(0) => c.fail(&mut m.wrong, "connection closed by valkey".to_owned()),
                Ok(len) => {
                    c.rbuf.extend_from_slice(&scratch[..len]);
                    while let Some(line) = take_line(&mut c.rbuf) {
                        let at = Instant::now();
                        let Some((sent, expect)) = c.inflight.take() else {
                            m.wrong
                                .add(format!("unsolicited reply {:?}", printable(&line)));
                            continue;
                        };
                        if !expect.matches(&line) {
                            m.wrong.add(format!(
                                "{} (expected {})",
                                printable(&line),
                                expect.text()
                            ));
                        }
                        m.answered += 1;
                        m.lat_ns.push(at.duration_since(sent).as_nanos() as u64);
                        if deadline.is_none_or(|d| at <= d) {
                            m.completed += 1;
                            last_reply = at;
                        }
                    }
                    let more = deadline.map_or(issued < target, |d| Instant::now() < d);
                    if c.inflight.is_none() && !c.dead && more {
                        c.issue(i, &mut rng, maker, &mut m.wrong);
                        issued += 1;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => c.fail(&mut m.wrong, format!("read: {e}")),
            }
        }
    }
    m.window = match deadline {
        Some(d) => d.duration_since(start),
        None => last_reply.duration_since(start),
    };
    Ok(m)
}

/// One client sending PINGs back to back, each timed, from its own thread: it starts when `go`
/// is set and runs for `length`.
struct Prober {
    handle: thread::JoinHandle<Res<Measured>>,
}

impl Prober {
    fn start(port: u16, go: Arc<AtomicBool>, length: Duration) -> Res<Prober> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("PING client: connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let handle = thread::Builder::new()
            .name("bench-ping".to_owned())
            .spawn(move || {
                while !go.load(Ordering::SeqCst) {
                    interrupted()?;
                    thread::sleep(Duration::from_micros(200));
                }
                let mut m = Measured {
                    lat_ns: Vec::with_capacity(1 << 16),
                    ..Measured::default()
                };
                let start = Instant::now();
                let mut reply = [0u8; 7];
                while start.elapsed() < length {
                    interrupted()?;
                    let sent = Instant::now();
                    let answer = stream
                        .write_all(b"*1\r\n$4\r\nPING\r\n")
                        .and_then(|()| stream.read_exact(&mut reply));
                    let took = sent.elapsed();
                    if let Err(e) = answer {
                        m.wrong.add(format!("PING: {e}"));
                        break;
                    }
                    if &reply != b"+PONG\r\n" {
                        m.wrong
                            .add(format!("{} (expected +PONG)", printable(&reply).trim_end()));
                        break;
                    }
                    m.answered += 1;
                    m.completed += 1;
                    m.lat_ns.push(took.as_nanos() as u64);
                }
                m.window = start.elapsed();
                Ok(m)
            })
            .map_err(|e| format!("spawn PING thread: {e}"))?;
        Ok(Prober { handle })
    }

    fn finish(self) -> Res<Measured> {
        self.handle
            .join()
            .map_err(|_| "the PING thread panicked".to_owned())?
    }
}

// =============================================================================================
// Direct LDAP: the directory's own limit, through the crate's FFI layer
// =============================================================================================

#[derive(Clone, Copy, PartialEq, Eq)]
enum LimitKind {
    Bind,
    SearchBind,
}

fn ldap_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(3),
        operation: Duration::from_secs(5),
    }
}

/// The connections of one limit thread: one for user binds, and for search+bind one more,
/// bound as the service account, for searches (as a module worker holds them).
struct LimitConns {
    user: Connection,
    search: Option<Connection>,
}

impl LimitConns {
    fn open(url: &str, kind: LimitKind) -> Result<LimitConns, LdapError> {
        let tls = TlsSettings::default();
        let user = Connection::open(url, &ldap_timeouts(), &tls)?;
        let search = match kind {
            LimitKind::Bind => None,
            LimitKind::SearchBind => {
                let mut c = Connection::open(url, &ldap_timeouts(), &tls)?;
                c.simple_bind(SEARCHER_DN, SEARCHER_PW.as_bytes())?;
                Some(c)
            }
        };
        Ok(LimitConns { user, search })
    }

    /// One login of user `i`: Err(text, reconnect) when it did not succeed.
    fn login(&mut self, users: &Users, i: usize) -> Result<(), (String, bool)> {
        let password = users.password(i);
        let dn = match &mut self.search {
            None => users.dn(i),
            Some(search) => {
                let filter = format!("(&({SEARCH_FILTER})(uid={}))", users.name(i));
                let mut dns = search
                    .search_dns(PEOPLE, Scope::Subtree, &filter, 2)
                    .map_err(|e| (format!("search: {e}"), e.is_transport()))?;
                if dns.len() != 1 {
                    return Err((format!("search found {} entries, not 1", dns.len()), false));
                }
                dns.swap_remove(0)
            }
        };
        self.user
            .simple_bind(&dn, password.as_bytes())
            .map_err(|e| (format!("bind: {e}"), e.is_transport()))
    }
}

/// `threads` threads, each with its own connections, log in random users for `length`.
fn run_limit(
    kind: LimitKind,
    url: &str,
    users: &Users,
    threads: usize,
    length: Duration,
) -> Res<Measured> {
    let barrier = Barrier::new(threads);
    let results: Vec<Res<Measured>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || -> Res<Measured> {
                    let mut rng = Rng::seeded(t as u64 + 1);
                    // The first login makes the TCP connections; keep it out of the window.
                    let opened = LimitConns::open(url, kind)
                        .map_err(|e| e.to_string())
                        .and_then(|mut c| c.login(users, 0).map(|()| c).map_err(|(e, _)| e));
                    barrier.wait();
                    let mut conns = opened.map_err(|e| format!("direct LDAP: {e}"))?;
                    let mut m = Measured {
                        lat_ns: Vec::with_capacity(1 << 14),
                        ..Measured::default()
                    };
                    let start = Instant::now();
                    let deadline = start + length;
                    while Instant::now() < deadline {
                        interrupted()?;
                        let i = rng.below(users.count);
                        let sent = Instant::now();
                        let result = conns.login(users, i);
                        let at = Instant::now();
                        m.answered += 1;
                        m.lat_ns.push(at.duration_since(sent).as_nanos() as u64);
                        if at <= deadline {
                            m.completed += 1;
                        }
                        if let Err((what, reconnect)) = result {
                            m.wrong.add(what);
                            if reconnect {
                                conns = LimitConns::open(url, kind)
                                    .map_err(|e| format!("direct LDAP: reconnect: {e}"))?;
                            }
                        }
                    }
                    m.window = length;
                    Ok(m)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a limit thread panicked".to_owned()))
            })
            .collect()
    });
    let mut total = Measured::default();
    for r in results {
        total.merge(r?);
    }
    Ok(total)
}

// =============================================================================================
// Report
// =============================================================================================

struct Row {
    id: &'static str,
    what: String,
    unit: &'static str,
    s: Summary,
    cpu: Option<CpuUse>,
    counters: String,
}

struct Memory {
    auths: u64,
    rss_before_kb: u64,
    rss_after_kb: u64,
    fds_before: usize,
    fds_after: usize,
}

#[derive(Clone, Copy)]
enum Goal {
    AtLeast(f64),
    AtMost(f64),
    Below(f64),
    Zero,
    Info,
}

impl Goal {
    fn text(self) -> String {
        match self {
            Goal::AtLeast(x) => format!("≥ {x:.2}"),
            Goal::AtMost(x) => format!("≤ {x:.1}"),
            Goal::Below(x) => format!("< {x:.0}"),
            Goal::Zero => "= 0".to_owned(),
            Goal::Info => "-".to_owned(),
        }
    }

    fn met(self, v: f64) -> Option<bool> {
        if !v.is_finite() {
            return (!matches!(self, Goal::Info)).then_some(false);
        }
        match self {
            Goal::AtLeast(x) => Some(v >= x),
            Goal::AtMost(x) => Some(v <= x),
            Goal::Below(x) => Some(v < x),
            Goal::Zero => Some(v == 0.0),
            Goal::Info => None,
        }
    }
}

struct Ratio {
    id: &'static str,
    what: &'static str,
    value: f64,
    goal: Goal,
    precision: usize,
}

#[derive(Default)]
struct Report {
    /// CPUs of the machine (before `--pin` narrowed what this process may use).
    cpus: usize,
    rows: Vec<Row>,
    memory: Option<Memory>,
    /// The bench did not measure what it meant to (module counters disagree).
    setup_errors: Vec<String>,
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.3}", d.as_secs_f64() * 1000.0),
    )
}

impl Report {
    fn row(&self, id: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.id == id)
    }

    fn rate(&self, id: &str) -> f64 {
        self.row(id).map_or(f64::NAN, |r| r.s.rate)
    }

    fn p99(&self, id: &str) -> f64 {
        self.row(id)
            .and_then(|r| r.s.p99)
            .map_or(f64::NAN, |d| d.as_secs_f64())
    }

    fn add(&mut self, row: Row) {
        let s = &row.s;
        eprintln!(
            "  [{}] {}: {:.0} {}, p50 {} ms, p99 {} ms, {} answers, {} wrong",
            row.id,
            row.what,
            s.rate,
            row.unit,
            ms(s.p50),
            ms(s.p99),
            s.answered,
            s.wrong.total
        );
        self.rows.push(row);
    }

    fn wrong_total(&self) -> u64 {
        self.rows.iter().map(|r| r.s.wrong.total).sum()
    }

    fn ratios(&self) -> Vec<Ratio> {
        let mut v = vec![
            Ratio {
                id: "3 ÷ 1",
                what: "module bind, uncached ÷ direct bind limit",
                value: self.rate("3") / self.rate("1"),
                goal: Goal::AtLeast(0.90),
                precision: 2,
            },
            Ratio {
                id: "4 ÷ 4L",
                what: "module search+bind ÷ direct search+bind limit",
                value: self.rate("4") / self.rate("4L"),
                goal: Goal::AtLeast(0.90),
                precision: 2,
            },
            Ratio {
                id: "5 ÷ 2",
                what: "module cached ÷ native ACL AUTH",
                value: self.rate("5") / self.rate("2"),
                goal: Goal::AtLeast(0.80),
                precision: 2,
            },
            Ratio {
                id: "6a ÷ 6",
                what: "PING p99: healthy-directory storm ÷ idle",
                value: self.p99("6a") / self.p99("6"),
                goal: Goal::AtMost(1.5),
                precision: 2,
            },
            Ratio {
                id: "6b ÷ 6",
                what: "PING p99: frozen-directory storm ÷ idle",
                value: self.p99("6b") / self.p99("6"),
                goal: Goal::AtMost(1.5),
                precision: 2,
            },
        ];
        if let Some(mem) = &self.memory {
            v.push(Ratio {
                id: "7 RSS",
                what: "valkey-server RSS growth, MB",
                value: (mem.rss_after_kb as f64 - mem.rss_before_kb as f64) / 1024.0,
                goal: Goal::Below(5.0),
                precision: 2,
            });
            v.push(Ratio {
                id: "7 fds",
                what: "valkey-server open fd delta",
                value: mem.fds_after as f64 - mem.fds_before as f64,
                goal: Goal::Zero,
                precision: 0,
            });
        } else {
            v.push(Ratio {
                id: "7 RSS",
                what: "valkey-server RSS growth, MB",
                value: f64::NAN,
                goal: Goal::Below(5.0),
                precision: 2,
            });
            v.push(Ratio {
                id: "7 fds",
                what: "valkey-server open fd delta",
                value: f64::NAN,
                goal: Goal::Zero,
                precision: 0,
            });
        }
        v.push(Ratio {
            id: "6n ÷ 6",
            what: "info: PING p99, native-AUTH storm ÷ idle",
            value: self.p99("6n") / self.p99("6"),
            goal: Goal::Info,
            precision: 2,
        });
        v.push(Ratio {
            id: "6a ÷ 6n",
            what: "info: PING p99, module storm ÷ native storm",
            value: self.p99("6a") / self.p99("6n"),
            goal: Goal::Info,
            precision: 2,
        });
        v.push(Ratio {
            id: "6b ÷ 6n",
            what: "info: PING p99, frozen storm ÷ native storm",
            value: self.p99("6b") / self.p99("6n"),
            goal: Goal::Info,
            precision: 2,
        });
        v
    }

    /// Prints everything; returns (missed goals, failures).
    fn print(&self, header: &str) -> (usize, usize) {
        println!();
        println!("{header}");
        println!();
        println!(
            "{:<5} {:<52} {:>10} {:<7} {:>9} {:>9} {:>9} {:>6}",
            "line", "what", "rate", "unit", "p50 ms", "p99 ms", "answers", "wrong"
        );
        for r in &self.rows {
            println!(
                "[{:<3}] {:<52} {:>10.0} {:<7} {:>9} {:>9} {:>9} {:>6}",
                r.id,
                r.what,
                r.s.rate,
                r.unit,
                ms(r.s.p50),
                ms(r.s.p99),
                r.s.answered,
                r.s.wrong.total
            );
        }
        if let Some(mem) = &self.memory {
            println!(
                "[7  ] memory and handles after {} mixed AUTHs: RSS {:.1} MB -> {:.1} MB ({:+.2} MB), \
                 fds {} -> {} ({:+})",
                mem.auths,
                mem.rss_before_kb as f64 / 1024.0,
                mem.rss_after_kb as f64 / 1024.0,
                (mem.rss_after_kb as f64 - mem.rss_before_kb as f64) / 1024.0,
                mem.fds_before,
                mem.fds_after,
                mem.fds_after as i64 - mem.fds_before as i64
            );
        }

        println!();
        println!("wrong answers (any is a failure of the run):");
        let mut any = false;
        for r in &self.rows {
            for (what, n) in &r.s.wrong.kinds {
                any = true;
                println!("  [{}] {n} x {what}", r.id);
            }
        }
        if !any {
            println!("  none");
        }

        println!();
        println!(
            "CPU during each line, % of one core ({} cores; slapd, the generator and valkey share them):",
            self.cpus
        );
        println!(
            "{:<5} {:>6} {:>13} {:>12} {:>15} {:>13} {:>6} {:>10} {:>5}",
            "line",
            "slapd",
            "slapd-thread",
            "valkey-main",
            "module-workers",
            "valkey-other",
            "bench",
            "elsewhere",
            "idle"
        );
        for r in &self.rows {
            if let Some(c) = r.cpu {
                println!(
                    "[{:<3}] {:>6.0} {:>13.0} {:>12.0} {:>15.0} {:>13.0} {:>6.0} {:>10.0} {:>5.0}",
                    r.id,
                    c.slapd,
                    c.slapd_busiest_thread,
                    c.valkey_main,
                    c.valkey_workers,
                    c.valkey_other,
                    c.bench,
                    c.elsewhere,
                    c.idle
                );
            }
        }
        println!(
            "  slapd-thread: its busiest thread; elsewhere: everything not started by this run \
             (other builds and tests, kernel threads); a noisy machine shows here"
        );

        println!();
        println!("module counters (INFO valkeyauth, change during the line):");
        for r in &self.rows {
            if !r.counters.is_empty() {
                println!("[{:<3}] {}", r.id, r.counters);
            }
        }

        println!();
        println!("ratios:");
        println!(
            "{:<9} {:<48} {:>9} {:>8}  result",
            "ratio", "what", "value", "goal"
        );
        let mut missed = 0;
        for ratio in self.ratios() {
            let value = if ratio.value.is_finite() {
                format!("{:.*}", ratio.precision, ratio.value)
            } else {
                "n/a".to_owned()
            };
            let result = match ratio.goal.met(ratio.value) {
                Some(true) => "PASS",
                Some(false) => {
                    missed += 1;
                    "MISS"
                }
                None => "info",
            };
            println!(
                "{:<9} {:<48} {:>9} {:>8}  {result}",
                ratio.id,
                ratio.what,
                value,
                ratio.goal.text()
            );
        }

        let mut failures = 0;
        if !self.setup_errors.is_empty() {
            println!();
            println!("measurement errors:");
            for e in &self.setup_errors {
                println!("  {e}");
            }
            failures += self.setup_errors.len();
        }
        let wrong = self.wrong_total();
        failures += usize::from(wrong > 0);
        println!();
        if failures == 0 {
            println!("result: every answer was right; {missed} goal(s) missed");
        } else {
            println!(
                "result: FAILED: {wrong} wrong answer(s), {} measurement error(s); {missed} goal(s) missed",
                self.setup_errors.len()
            );
        }
        (missed, failures)
    }
}

/// The non-zero changes of the interesting module counters, e.g. `allowed +1234`.
fn counter_delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
    const SHOWN: [&str; 13] = [
        "allowed",
        "denied_bad_credentials",
        "denied_unknown_user",
        "denied_no_acl_user",
        "denied_internal_error",
        "outage_unreachable",
        "outage_timeout",
        "outage_busy",
        "outage_directory_error",
        "exempt_passthrough",
        "cache_hits",
        "cache_misses",
        "coalesced",
    ];
    SHOWN
        .iter()
        .filter_map(|name| {
            let key = format!("valkeyauth_{name}");
            let d = after.get(&key).copied().unwrap_or(0) as i64
                - before.get(&key).copied().unwrap_or(0) as i64;
            (d != 0).then(|| format!("{name} {d:+}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, name: &str) -> u64 {
    let key = format!("valkeyauth_{name}");
    after
        .get(&key)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(&key).copied().unwrap_or(0))
}

// =============================================================================================
// The run
// =============================================================================================

struct Bench<'a> {
    args: &'a Args,
    users: &'a Users,
    slapd: &'a Slapd,
    valkey: &'a Valkey,
    admin: Client,
    report: Report,
}

/// What one Valkey line measures and how it checks that it measured the intended path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PathCheck {
    /// Every answer was Valkey's own (exempt user).
    Exempt,
    /// No answer came from the cache.
    Uncached,
    /// Every answer came from the cache.
    Cached,
}

impl Bench<'_> {
    fn cpu(&self) -> CpuSnap {
        cpu_snap(self.slapd.pid(), self.valkey.pid())
    }

    /// A Valkey line: a warm-up with the same requests (unless `warm` is false), then `until`
    /// with the CPU and module counters taken around it. Wrong answers of the warm-up count.
    fn valkey_line(
        &mut self,
        until: Until,
        check: PathCheck,
        warm: bool,
        go: Option<&AtomicBool>,
        maker: &mut Maker,
    ) -> Res<(Measured, Option<CpuUse>, String)> {
        let warm = if warm {
            self.warm_up(maker)?
        } else {
            Measured::default()
        };
        let before = self.admin.module_counters()?;
        let cpu0 = self.cpu();
        let m = run_load(self.valkey.port, self.args.clients, until, go, maker)?;
        let cpu1 = self.cpu();
        let after = self.admin.module_counters()?;
        let mut m = m;
        m.wrong.merge(warm.wrong);
        let counters = counter_delta(&before, &after);
        let hits = delta(&before, &after, "cache_hits");
        match check {
            PathCheck::Exempt if delta(&before, &after, "exempt_passthrough") != m.answered => {
                self.report.setup_errors.push(format!(
                    "native line: {} answers but exempt_passthrough {:+}",
                    m.answered,
                    delta(&before, &after, "exempt_passthrough")
                ))
            }
            PathCheck::Uncached if hits != 0 => self
                .report
                .setup_errors
                .push(format!("an uncached line had {hits} cache hits")),
            PathCheck::Cached if hits != m.answered => self.report.setup_errors.push(format!(
                "cached line: {} answers but {hits} cache hits",
                m.answered
            )),
            _ => {}
        }
        Ok((m, Some(cpu_use(&cpu0, &cpu1)), counters))
    }

    fn warm_up(&mut self, maker: &mut Maker) -> Res<Measured> {
        run_load(
            self.valkey.port,
            self.args.clients,
            Until::Time(self.args.warmup()),
            None,
            maker,
        )
    }

    fn limit_line(&mut self, id: &'static str, kind: LimitKind, what: String) -> Res<()> {
        let url = self.slapd.url();
        run_limit(
            kind,
            &url,
            self.users,
            self.args.workers,
            self.args.warmup(),
        )?;
        let cpu0 = self.cpu();
        let m = run_limit(kind, &url, self.users, self.args.workers, self.args.line())?;
        let cpu1 = self.cpu();
        let unit = match kind {
            LimitKind::Bind => "bind/s",
            LimitKind::SearchBind => "login/s",
        };
        self.report.add(Row {
            id,
            what,
            unit,
            s: m.summary(),
            cpu: Some(cpu_use(&cpu0, &cpu1)),
            counters: String::new(),
        });
        Ok(())
    }

    /// A Valkey line with a PING client timed beside it: two rows, the PING client's and the
    /// storm's.
    fn storm_line(
        &mut self,
        id: &'static str,
        what: (&str, String),
        check: PathCheck,
        warm: bool,
        maker: &mut Maker,
    ) -> Res<()> {
        let go = Arc::new(AtomicBool::new(false));
        let prober = Prober::start(self.valkey.port, Arc::clone(&go), self.args.line())?;
        let result = self.valkey_line(Until::Time(self.args.line()), check, warm, Some(&go), maker);
        // The prober runs on its own clock: stop waiting for `go` if the storm failed.
        go.store(true, Ordering::SeqCst);
        let ping = prober.finish();
        let (storm, cpu, counters) = result?;
        let ping = ping?;
        self.report.add(Row {
            id,
            what: format!("PING, 1 client, during {}", what.0),
            unit: "PING/s",
            s: ping.summary(),
            cpu,
            counters: String::new(),
        });
        self.report.add(Row {
            id,
            what: format!("  the storm: {}", what.1),
            unit: "AUTH/s",
            s: storm.summary(),
            cpu: None,
            counters,
        });
        Ok(())
    }

    /// Waits until no client but ours is connected and no AUTH is queued, lets the server
    /// settle, then reads RSS and fds.
    fn settled_memory(&mut self) -> Res<(u64, usize)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            interrupted()?;
            let clients = self.admin.info_u64("clients", "connected_clients")?;
            let queued = self
                .admin
                .info_u64("valkeyauth", "valkeyauth_queue_depth")?;
            if clients == 1 && queued == 0 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "valkey did not settle: {clients} clients, {queued} queued AUTHs"
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
        nap(self.args.settle())?;
        Ok((rss_kb(self.valkey.pid())?, fd_count(self.valkey.pid())?))
    }

    /// After the directory was frozen: waits until a right AUTH succeeds again.
    fn wait_recovered(&mut self) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let name = self.users.name(0);
        let password = self.users.password(0);
        loop {
            interrupted()?;
            let mut c = self.valkey.client()?;
            let reply = c.call(&[b"AUTH", name.as_bytes(), password.as_bytes()])?;
            if reply == Reply::Simple("OK".to_owned()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the module did not recover within 30 s after the directory was thawed: {reply}"
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn run(&mut self) -> Res<()> {
        let (clients, workers) = (self.args.clients, self.args.workers);

        // [1] What the directory can do: simple binds straight through the FFI layer.
        eprintln!("[1] direct binds ...");
        self.limit_line(
            "1",
            LimitKind::Bind,
            format!("limit: direct bind, {workers} threads"),
        )?;

        // [2] Valkey's own ACL password AUTH (an exempt user), same clients.
        eprintln!("[2] native AUTH ...");
        let mut native = native_maker();
        let (m, cpu, counters) = self.valkey_line(
            Until::Time(self.args.line()),
            PathCheck::Exempt,
            true,
            None,
            &mut native,
        )?;
        self.report.add(Row {
            id: "2",
            what: format!("native: Valkey ACL AUTH, {clients} clients"),
            unit: "AUTH/s",
            s: m.summary(),
            cpu,
            counters,
        });

        // [3] Module, bind mode, no cache: every AUTH is a directory bind.
        eprintln!("[3] module bind, uncached ...");
        let mut right = random_user(&self.users.auth_right, Expect::Ok);
        let (m, cpu, counters) = self.valkey_line(
            Until::Time(self.args.line()),
            PathCheck::Uncached,
            true,
            None,
            &mut right,
        )?;
        self.report.add(Row {
            id: "3",
            what: format!("module bind, uncached, {clients} clients"),
            unit: "AUTH/s",
            s: m.summary(),
            cpu,
            counters,
        });

        // [4] Module, search+bind, no cache; and the same two steps straight to the directory.
        eprintln!("[4] module search+bind, uncached ...");
        self.admin.config_set("auth_mode", "search+bind")?;
        let (m, cpu, counters) = self.valkey_line(
            Until::Time(self.args.line()),
            PathCheck::Uncached,
            true,
            None,
            &mut right,
        )?;
        self.report.add(Row {
            id: "4",
            what: format!("module search+bind, uncached, {clients} clients"),
            unit: "AUTH/s",
            s: m.summary(),
            cpu,
            counters,
        });
        eprintln!("[4L] direct search+bind ...");
        self.limit_line(
            "4L",
            LimitKind::SearchBind,
            format!("limit: direct search+bind, {workers} threads"),
        )?;

        // [5] Module with the cache on: each client repeats its own credentials.
        eprintln!("[5] module cached ...");
        self.admin.config_set("auth_mode", "bind")?;
        self.admin.config_set("cache_ttl_s", "300")?;
        let cmds = Arc::clone(&self.users.auth_right);
        let mut repeat = move |c: usize, _: &mut Rng, buf: &mut Vec<u8>| {
            buf.extend_from_slice(&cmds[c % cmds.len()]);
            Expect::Ok
        };
        let (m, cpu, counters) = self.valkey_line(
            Until::Time(self.args.line()),
            PathCheck::Cached,
            true,
            None,
            &mut repeat,
        )?;
        self.report.add(Row {
            id: "5",
            what: format!("module cached, {clients} clients"),
            unit: "AUTH/s",
            s: m.summary(),
            cpu,
            counters,
        });
        self.admin.config_set("cache_ttl_s", "0")?;

        // [6] The main thread: PING latency idle, and while AUTHs storm in.
        eprintln!("[6] PING idle ...");
        let go = Arc::new(AtomicBool::new(true));
        let cpu0 = self.cpu();
        let idle = Prober::start(self.valkey.port, go, self.args.line())?.finish()?;
        let cpu1 = self.cpu();
        self.report.add(Row {
            id: "6",
            what: "PING, 1 client, idle server".to_owned(),
            unit: "PING/s",
            s: idle.summary(),
            cpu: Some(cpu_use(&cpu0, &cpu1)),
            counters: String::new(),
        });
        eprintln!("[6n] PING during a native AUTH storm ...");
        self.storm_line(
            "6n",
            (
                "native AUTH storm (reference)",
                format!("native ACL AUTH, {clients} clients"),
            ),
            PathCheck::Exempt,
            true,
            &mut native,
        )?;
        eprintln!("[6a] PING during a module AUTH storm, healthy directory ...");
        self.storm_line(
            "6a",
            (
                "module storm, healthy directory",
                format!("module bind, uncached, {clients} clients"),
            ),
            PathCheck::Uncached,
            true,
            &mut right,
        )?;
        eprintln!("[6b] PING during a module AUTH storm, frozen directory ...");
        self.admin
            .config_set("auth_timeout_ms", &FROZEN_AUTH_TIMEOUT_MS.to_string())?;
        // Warm up healthy (workers reconnect for the new setting), then freeze: the measured
        // window includes the switch from timeouts to fast "unavailable" answers.
        let warm = self.warm_up(&mut right)?;
        self.slapd.freeze()?;
        let mut unavailable = random_user(&self.users.auth_right, Expect::Unavailable);
        let frozen = self.storm_line(
            "6b",
            (
                "module storm, frozen directory",
                format!(
                    "slapd kill -STOP, auth_timeout {FROZEN_AUTH_TIMEOUT_MS} ms, {clients} clients"
                ),
            ),
            PathCheck::Uncached,
            false,
            &mut unavailable,
        );
        self.slapd.thaw()?;
        frozen?;
        if let Some(storm) = self.report.rows.last_mut() {
            storm.s.wrong.merge(warm.wrong);
        }
        self.admin.config_set("auth_timeout_ms", "10000")?;
        self.wait_recovered()?;

        // [7] Memory and handles: mixed right, wrong and unknown, search+bind, no cache.
        eprintln!("[7] memory and fds ...");
        self.admin.config_set("auth_mode", "search+bind")?;
        let users = self.users;
        let right = Arc::clone(&users.auth_right);
        let ghosts: Arc<Vec<String>> =
            Arc::new((0..users.ghosts).map(|i| users.ghost(i)).collect());
        let names: Arc<Vec<String>> = Arc::new((0..users.count).map(|i| users.name(i)).collect());
        let mut mix = move |_: usize, rng: &mut Rng, buf: &mut Vec<u8>| {
            let roll = rng.below(100);
            if roll < 70 {
                buf.extend_from_slice(&right[rng.below(right.len())]);
                return Expect::Ok;
            }
            let (user, password) = if roll < 90 {
                (
                    names[rng.below(names.len())].clone(),
                    format!("wrong-{:x}", rng.next()),
                )
            } else if roll < 95 {
                (
                    ghosts[rng.below(ghosts.len())].clone(),
                    "pw-ghost".to_owned(),
                )
            } else {
                (
                    format!("nobody{}", rng.below(1_000_000)),
                    "pw-nobody".to_owned(),
                )
            };
            resp(buf, &[b"AUTH", user.as_bytes(), password.as_bytes()]);
            Expect::WrongPass
        };
        let warm_count = (self.args.memory_auths / 5).max(500);
        let warm = run_load(
            self.valkey.port,
            clients,
            Until::Count(warm_count),
            None,
            &mut mix,
        )?;
        let (rss_before_kb, fds_before) = self.settled_memory()?;
        let (m, cpu, counters) = {
            let before = self.admin.module_counters()?;
            let cpu0 = self.cpu();
            let m = run_load(
                self.valkey.port,
                clients,
                Until::Count(self.args.memory_auths),
                None,
                &mut mix,
            )?;
            let cpu1 = self.cpu();
            let after = self.admin.module_counters()?;
            let hits = delta(&before, &after, "cache_hits");
            if hits != 0 {
                self.report
                    .setup_errors
                    .push(format!("the memory line had {hits} cache hits"));
            }
            (
                m,
                Some(cpu_use(&cpu0, &cpu1)),
                counter_delta(&before, &after),
            )
        };
        let (rss_after_kb, fds_after) = self.settled_memory()?;
        let mut m = m;
        m.wrong.merge(warm.wrong);
        self.report.add(Row {
            id: "7",
            what: "module search+bind mix: 70% right, 20% wrong pw, 10% unknown".to_owned(),
            unit: "AUTH/s",
            s: m.summary(),
            cpu,
            counters,
        });
        self.report.memory = Some(Memory {
            auths: self.args.memory_auths,
            rss_before_kb,
            rss_after_kb,
            fds_before,
            fds_after,
        });
        Ok(())
    }
}

/// Every request: AUTH as a random user with the right password; every reply must be `expect`.
fn random_user(
    cmds: &Arc<Vec<Vec<u8>>>,
    expect: Expect,
) -> impl FnMut(usize, &mut Rng, &mut Vec<u8>) -> Expect {
    let cmds = Arc::clone(cmds);
    move |_, rng, buf| {
        buf.extend_from_slice(&cmds[rng.below(cmds.len())]);
        expect
    }
}

fn native_maker() -> impl FnMut(usize, &mut Rng, &mut Vec<u8>) -> Expect {
    let mut cmd = Vec::new();
    resp(
        &mut cmd,
        &[b"AUTH", NATIVE_USER.as_bytes(), NATIVE_PW.as_bytes()],
    );
    move |_, _, buf| {
        buf.extend_from_slice(&cmd);
        Expect::Ok
    }
}

/// The module cargo built with this binary. Cargo compiles the cdylib into
/// `target/<profile>/deps/` whenever it builds this bin (or the tests), but copies it up to
/// `target/<profile>/libvalkeyauth.so` only on a plain `cargo build`, so that copy can be older
/// than the code: take the newer of the two beside this binary, else target/release.
fn default_module() -> PathBuf {
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let candidates = dir
        .iter()
        .flat_map(|d| [d.join("deps/libvalkeyauth.so"), d.join("libvalkeyauth.so")]);
    candidates
        .filter_map(|p| Some((modified(&p)?, p)))
        .max_by_key(|(at, _)| *at)
        .map(|(_, p)| p)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/libvalkeyauth.so")
        })
}

fn run(args: &Args) -> Res<(usize, usize)> {
    // libldap's global state, once, before any thread uses it (as the module does at load).
    ldap::init_global();
    let module = args.module.clone().unwrap_or_else(default_module);
    let valkey_bin = args.valkey_server.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/valkey-9.1/valkey-server")
    });
    if !module.exists() {
        return Err(format!(
            "{} is missing: cargo build --release (or --module PATH)",
            module.display()
        ));
    }
    if !valkey_bin.exists() {
        return Err(format!(
            "{} is missing: run scripts/install-deps.sh (or --valkey-server PATH)",
            valkey_bin.display()
        ));
    }

    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let pinning = if args.pin {
        if cpus < 2 {
            return Err("--pin needs at least 2 CPUs".to_owned());
        }
        let pinning = Pinning {
            directory: CpuSet::of([0]),
            rest: CpuSet::of(1..cpus),
            cpus,
        };
        // Before any thread or child exists: everything started from here on inherits it,
        // except slapd, which gets CPU 0.
        pinning
            .rest
            .apply()
            .map_err(|e| format!("--pin: sched_setaffinity: {e}"))?;
        Some(pinning)
    } else {
        None
    };
    let tmp = TempDir::new(args.keep_tmp)?;
    eprintln!(
        "valkeyauth-bench: generating {} users, starting slapd and valkey-server in {}",
        args.users,
        tmp.path.display()
    );
    let users = Users::new(args.users);
    let slapd = Slapd::start(&tmp.path, &users, pinning.as_ref().map(|p| p.directory))?;
    let pw_file = tmp.path.join("searcher.pw");
    fs::write(&pw_file, format!("{SEARCHER_PW}\n")).map_err(|e| e.to_string())?;
    fs::set_permissions(&pw_file, fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    let max_pending = (args.clients * 2).max(1024);
    let module_args: Vec<(&str, String)> = vec![
        ("servers", slapd.url()),
        ("auth_mode", "bind".to_owned()),
        ("bind_dn_prefix", "uid=".to_owned()),
        ("bind_dn_suffix", format!(",{PEOPLE}")),
        ("search_base", PEOPLE.to_owned()),
        ("search_scope", "sub".to_owned()),
        ("search_filter", format!("({SEARCH_FILTER})")),
        ("search_attribute", "uid".to_owned()),
        ("search_bind_dn", SEARCHER_DN.to_owned()),
        (
            "search_bind_passwd_file",
            pw_file.to_string_lossy().into_owned(),
        ),
        ("workers", args.workers.to_string()),
        ("max_pending", max_pending.to_string()),
        ("cache_ttl_s", "0".to_owned()),
        ("negative_cache_ttl_s", "0".to_owned()),
        ("exempt_users", format!("default,{NATIVE_USER}")),
    ];
    let valkey = Valkey::start(&tmp.path, &valkey_bin, &module, &module_args)?;
    let mut admin = valkey.client()?;
    let server = admin.info("server")?;
    let workers = admin.info_u64("valkeyauth", "valkeyauth_workers")?;
    if workers != args.workers as u64 {
        return Err(format!(
            "the module runs {workers} workers, not {}",
            args.workers
        ));
    }
    create_acl_users(&mut admin, &users)?;
    let header = format!(
        "ValkeyAUTH benchmark: {} clients, {} workers, {} directory users, {:.1} s per line{}\n\
         valkey {} (pid {}), slapd pid {}, module {}, {} CPU cores{}",
        args.clients,
        args.workers,
        args.users,
        args.seconds,
        if args.quick { " (--quick)" } else { "" },
        server.get("valkey_version").map_or("?", String::as_str),
        valkey.pid(),
        slapd.pid(),
        module.display(),
        cpus,
        match &pinning {
            Some(p) => format!(
                "; pinned: slapd on CPU 0, valkey-server and the bench on CPUs 1-{}",
                p.cpus - 1
            ),
            None => String::new(),
        }
    );
    eprintln!("{header}");

    let mut bench = Bench {
        args,
        users: &users,
        slapd: &slapd,
        valkey: &valkey,
        admin,
        report: Report {
            cpus,
            ..Report::default()
        },
    };
    let outcome = bench.run();
    if let Err(e) = &outcome {
        if e != INTERRUPTED {
            eprintln!(
                "valkeyauth-bench: {e}\n--- valkey log ---\n{}\n--- slapd output ---\n{}",
                tail(&valkey.log, 30),
                tail(&slapd.log, 30)
            );
        }
    }
    outcome?;
    let (missed, failures) = bench.report.print(&header);
    Ok((missed, failures))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("valkeyauth-bench: {e}");
            return ExitCode::from(1);
        }
    };
    install_signal_handlers();
    match run(&args) {
        Ok((_, failures)) if failures > 0 => ExitCode::from(1),
        Ok((missed, _)) if missed > 0 && args.fail_on_miss => ExitCode::from(2),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) if e == INTERRUPTED => {
            eprintln!("valkeyauth-bench: interrupted; every server it started is stopped");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("valkeyauth-bench: {e}");
            ExitCode::from(1)
        }
    }
}

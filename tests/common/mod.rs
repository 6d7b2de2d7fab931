//! Test harness shared by every integration test (`mod common;`).
//!
//! Starts real servers on 127.0.0.1, each on its own port and in its own temporary directory:
//!   - [`Slapd`]: a private OpenLDAP slapd loaded with an LDIF fixture ([`base_ldif`]).
//!   - [`Valkey`]: a valkey-server (9.1 or 8.1 from `tools/`, or Debian's redis-server 7.0),
//!     optionally with `target/release/libvalkeyauth.so` loaded.
//!   - [`BlackHole`]: a TCP server that accepts and never answers.
//!
//! Clients: [`Valkey::client`] (a `redis::Connection`), [`RawClient`] (exact RESP bytes, errors
//! as text), [`ldap_simple_bind`] (one LDAP simple bind with exact password bytes).
//!
//! Every server is killed and its directory removed when its value is dropped, also when a test
//! panics. Server processes are spawned from one long-lived harness thread with
//! `PR_SET_PDEATHSIG`, so even a test binary killed with SIGKILL leaves no server behind.
//! Set `VALKEYAUTH_KEEP_TMP=1` to keep the temporary directories for inspection.
//!
//! Binaries come from `scripts/install-deps.sh`; the module from `cargo build --release`.
#![allow(dead_code)]

pub mod deb;
pub mod netns;
pub mod pki;

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

// ============================================================================================
// Paths and constants
// ============================================================================================

/// The repository root (the crate's manifest directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/release/libvalkeyauth.so` (honours `CARGO_TARGET_DIR`).
pub fn module_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                repo_root().join(p)
            }
        })
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("release").join("libvalkeyauth.so")
}

/// Read timeout of every client the harness hands out: a hang fails the test instead of CI.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

// ============================================================================================
// Ports, temporary directories, processes, signals
// ============================================================================================

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process never handed out
/// before (a process-global set guards against two tests getting the same port).
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut used = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        drop(l);
        if used.insert(port) {
            return port;
        }
    }
    panic!("free_port: no new free port after 1000 tries");
}

/// A directory under `$TMPDIR/valkeyauth-tests/`, removed (recursively) on drop.
pub struct TempDir {
    path: PathBuf,
}

/// `$TMPDIR/valkeyauth-tests`
pub fn temp_root() -> PathBuf {
    std::env::temp_dir().join("valkeyauth-tests")
}

/// Removes directories left by test processes that no longer exist (killed with SIGKILL: their
/// servers died with them, see [`spawn`], but nothing removed the directories).
fn sweep_stale_dirs() {
    let Ok(entries) = fs::read_dir(temp_root()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // <tag>-<pid>-<n>-<nanos>
        let pid = name.rsplit('-').nth(2).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(sweep_stale_dirs);
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = temp_root().join(format!("{tag}-{}-{n}-{nanos:x}", std::process::id()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("VALKEYAUTH_KEEP_TMP").is_none() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

mod sys {
    use std::os::raw::{c_int, c_ulong};
    extern "C" {
        pub fn kill(pid: c_int, sig: c_int) -> c_int;
        pub fn prctl(option: c_int, arg2: c_ulong, ...) -> c_int;
    }
    pub const PR_SET_PDEATHSIG: c_int = 1;
}

pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;
pub const SIGCONT: i32 = 18;
pub const SIGSTOP: i32 = 19;

/// Sends `sig` to `pid`. Returns false if the process does not exist.
pub fn signal(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { sys::kill(pid as i32, sig) == 0 }
}

/// The state letter of /proc/PID/stat ('R', 'S', 'T' stopped, 'Z' zombie...), None if gone.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` from one harness thread that lives as long as the test process, with
/// PR_SET_PDEATHSIG=SIGKILL: the kernel kills the server if the test process dies, however it
/// dies. (The death signal follows the *thread* that forked, hence the long-lived thread.)
pub fn spawn(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // SAFETY: the closure runs in the forked child before exec and only calls
                    // prctl(2), which is async-signal-safe.
                    unsafe {
                        cmd.pre_exec(|| {
                            sys::prctl(sys::PR_SET_PDEATHSIG, SIGKILL as std::os::raw::c_ulong);
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn harness-spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .expect("harness-spawner thread is gone");
    reply_rx.recv().expect("harness-spawner thread is gone")
}

/// Waits for `child` to exit for at most `timeout`.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL and reap. Resumes a stopped process first.
fn terminate(child: &mut Child, grace: Duration) -> ExitStatus {
    if let Ok(Some(st)) = child.try_wait() {
        return st;
    }
    signal(child.id(), SIGCONT);
    signal(child.id(), SIGTERM);
    if let Some(st) = wait_timeout(child, grace) {
        return st;
    }
    let _ = child.kill();
    child.wait().expect("wait for killed child")
}

fn kill_and_reap(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal(child.id(), SIGCONT);
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_stopped(pid: u32, stopped: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match process_state(pid) {
            Some('T') | Some('t') if stopped => return,
            Some(c) if !stopped && c != 'T' && c != 't' => return,
            None => return,
            _ => thread::sleep(Duration::from_millis(2)),
        }
    }
    panic!(
        "process {pid} did not become {}",
        if stopped { "stopped" } else { "running" }
    );
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn append_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

// ============================================================================================
// Encodings used by the fixture and by tests
// ============================================================================================

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match B64.iter().position(|&x| x == c) {
            Some(v) => v as u32,
            None => continue, // '=' padding and whitespace
        };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// The ISO-8859-1 bytes of `s` (panics on characters above U+00FF).
pub fn latin1(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| u8::try_from(u32::from(c)).expect("not Latin-1"))
        .collect()
}

/// RFC 4515 escaping of a value for an LDAP filter (test-side reference implementation).
pub fn filter_escape(value: &[u8]) -> String {
    let mut out = String::new();
    for &b in value {
        match b {
            b'*' | b'(' | b')' | b'\\' | 0 => out.push_str(&format!("\\{b:02x}")),
            0x80..=0xff => out.push_str(&format!("\\{b:02x}")),
            _ => out.push(b as char),
        }
    }
    out
}

// ============================================================================================
// LDAP fixture
// ============================================================================================

pub const SUFFIX: &str = "dc=example,dc=test";
pub const PEOPLE: &str = "ou=people,dc=example,dc=test";
pub const STAFF: &str = "ou=staff,dc=example,dc=test";
pub const GROUPS: &str = "ou=groups,dc=example,dc=test";
pub const SERVICES: &str = "ou=services,dc=example,dc=test";
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=test";
pub const ROOT_PW: &str = "admin-pw";
/// Bind DN the harness's readiness probe uses; [`Slapd::count_ops`] ignores its connections.
pub const PROBE_DN: &str = "cn=harness-probe";

/// A person in the fixture: `uid` and `cn` are both `name`; `dn` is the RFC 4514 form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixtureUser {
    pub name: &'static str,
    pub dn: &'static str,
    pub password: &'static str,
}

impl FixtureUser {
    pub const fn new(name: &'static str, dn: &'static str, password: &'static str) -> Self {
        FixtureUser { name, dn, password }
    }
}

pub const ALICE: FixtureUser =
    FixtureUser::new("alice", "cn=alice,ou=people,dc=example,dc=test", "alice-pw");
pub const BOB: FixtureUser =
    FixtureUser::new("bob", "cn=bob,ou=people,dc=example,dc=test", "bob-pw");
pub const CAROL: FixtureUser =
    FixtureUser::new("carol", "cn=carol,ou=people,dc=example,dc=test", "carol-pw");
// Names that need escaping somewhere (DN, filter, or both).
pub const STAR: FixtureUser = FixtureUser::new(
    "star*user",
    "cn=star*user,ou=people,dc=example,dc=test",
    "star-pw",
);
pub const COMMA: FixtureUser = FixtureUser::new(
    "comma,user",
    "cn=comma\\,user,ou=people,dc=example,dc=test",
    "comma-pw",
);
pub const PLUS: FixtureUser = FixtureUser::new(
    "plus+user",
    "cn=plus\\+user,ou=people,dc=example,dc=test",
    "plus-pw",
);
pub const BACKSLASH: FixtureUser = FixtureUser::new(
    "back\\user",
    "cn=back\\\\user,ou=people,dc=example,dc=test",
    "backslash-pw",
);
pub const HASH: FixtureUser = FixtureUser::new(
    "#hashuser",
    "cn=\\#hashuser,ou=people,dc=example,dc=test",
    "hash-pw",
);
/// Leading and trailing space. Note: slapd's DN and uid matching ignore them, so
/// `cn=spaceuser,...` binds to this entry too and `(uid=spaceuser)` finds it.
pub const SPACES: FixtureUser = FixtureUser::new(
    " spaceuser ",
    "cn=\\ spaceuser\\ ,ou=people,dc=example,dc=test",
    "space-pw",
);
pub const PARENS: FixtureUser = FixtureUser::new(
    "paren)(user",
    "cn=paren)(user,ou=people,dc=example,dc=test",
    "paren-pw",
);
/// The other RFC 4514 specials: `"` `<` `;` `>` `=`.
pub const SPECIALS: FixtureUser = FixtureUser::new(
    "q\"<;>=user",
    "cn=q\\\"\\<\\;\\>=user,ou=people,dc=example,dc=test",
    "specials-pw",
);
/// Two entries with uid `twin`: a search from [`SUFFIX`] finds both.
pub const TWIN_PEOPLE: FixtureUser = FixtureUser::new(
    "twin",
    "cn=twin,ou=people,dc=example,dc=test",
    "twin-people-pw",
);
pub const TWIN_STAFF: FixtureUser = FixtureUser::new(
    "twin",
    "cn=twin,ou=staff,dc=example,dc=test",
    "twin-staff-pw",
);
/// Password is UTF-8; its Latin-1 bytes (`latin1(UTF8.password)`) must not log in.
pub const UTF8: FixtureUser = FixtureUser::new(
    "utf8user",
    "cn=utf8user,ou=people,dc=example,dc=test",
    "pässwörd-ü",
);
/// Real password `abc`: `abc\0def` must not log in.
pub const NUL: FixtureUser =
    FixtureUser::new("nuluser", "cn=nuluser,ou=people,dc=example,dc=test", "abc");
/// A non-ASCII user name.
pub const ZOE: FixtureUser =
    FixtureUser::new("zoë", "cn=zoë,ou=people,dc=example,dc=test", "zoe-pw");

/// Every person who can bind with its password.
pub const USERS: &[FixtureUser] = &[
    ALICE,
    BOB,
    CAROL,
    STAR,
    COMMA,
    PLUS,
    BACKSLASH,
    HASH,
    SPACES,
    PARENS,
    SPECIALS,
    TWIN_PEOPLE,
    TWIN_STAFF,
    UTF8,
    NUL,
    ZOE,
];
/// A person with no userPassword: every bind fails (49, or 53 for an empty password).
pub const NOPW: FixtureUser =
    FixtureUser::new("nopwuser", "cn=nopwuser,ou=people,dc=example,dc=test", "");
/// A service account for search+bind (`search_bind_dn`); it has no `uid`.
pub const SEARCHER: FixtureUser = FixtureUser::new(
    "searcher",
    "cn=searcher,ou=services,dc=example,dc=test",
    "searcher-pw",
);
pub const ADMINS_DN: &str = "cn=admins,ou=groups,dc=example,dc=test";
pub const READERS_DN: &str = "cn=readers,ou=groups,dc=example,dc=test";

fn ldif_attr(out: &mut String, attr: &str, value: &[u8]) {
    let unsafe_start = matches!(value.first(), Some(b' ' | b':' | b'<'));
    let unsafe_end = value.last() == Some(&b' ');
    let unsafe_byte = value
        .iter()
        .any(|&b| b == 0 || b == b'\n' || b == b'\r' || b >= 0x80);
    if unsafe_start || unsafe_end || unsafe_byte {
        out.push_str(&format!("{attr}:: {}\n", base64_encode(value)));
    } else {
        out.push_str(&format!("{attr}: {}\n", String::from_utf8_lossy(value)));
    }
}

/// One LDIF entry; `attrs` are (name, value) pairs written in order, base64 where needed.
pub fn ldif_entry(dn: &str, attrs: &[(&str, &[u8])]) -> String {
    let mut out = String::new();
    ldif_attr(&mut out, "dn", dn.as_bytes());
    for (a, v) in attrs {
        ldif_attr(&mut out, a, v);
    }
    out.push('\n');
    out
}

/// An inetOrgPerson with uid = cn = sn = `name`, and `password` unless it is empty.
pub fn person_ldif(dn: &str, name: &str, password: &[u8]) -> String {
    let mut attrs: Vec<(&str, &[u8])> = vec![
        ("objectClass", b"inetOrgPerson"),
        ("cn", name.as_bytes()),
        ("sn", name.as_bytes()),
        ("uid", name.as_bytes()),
    ];
    if !password.is_empty() {
        attrs.push(("userPassword", password));
    }
    ldif_entry(dn, &attrs)
}

/// The default fixture: see the `FixtureUser` constants, plus groups `cn=admins` (alice) and
/// `cn=readers` (bob, carol) under [`GROUPS`] and the [`SEARCHER`] service account.
/// Passwords are stored in cleartext (slapd compares them as given).
pub fn base_ldif() -> String {
    let mut s = String::new();
    s += &ldif_entry(
        SUFFIX,
        &[
            ("objectClass", b"dcObject"),
            ("objectClass", b"organization"),
            ("o", b"example"),
            ("dc", b"example"),
        ],
    );
    for (dn, ou) in [
        (PEOPLE, "people"),
        (STAFF, "staff"),
        (GROUPS, "groups"),
        (SERVICES, "services"),
    ] {
        s += &ldif_entry(
            dn,
            &[
                ("objectClass", b"organizationalUnit"),
                ("ou", ou.as_bytes()),
            ],
        );
    }
    for u in USERS {
        s += &person_ldif(u.dn, u.name, u.password.as_bytes());
    }
    s += &person_ldif(NOPW.dn, NOPW.name, b"");
    s += &ldif_entry(
        SEARCHER.dn,
        &[
            ("objectClass", b"applicationProcess"),
            ("objectClass", b"simpleSecurityObject"),
            ("cn", SEARCHER.name.as_bytes()),
            ("userPassword", SEARCHER.password.as_bytes()),
        ],
    );
    s += &ldif_entry(
        ADMINS_DN,
        &[
            ("objectClass", b"groupOfNames"),
            ("cn", b"admins"),
            ("member", ALICE.dn.as_bytes()),
        ],
    );
    s += &ldif_entry(
        READERS_DN,
        &[
            ("objectClass", b"groupOfNames"),
            ("cn", b"readers"),
            ("member", BOB.dn.as_bytes()),
            ("member", CAROL.dn.as_bytes()),
        ],
    );
    s
}

// ============================================================================================
// A minimal LDAP client: one simple bind with exact bytes
// ============================================================================================

fn ber_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn ber_tlv(tag: u8, content: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    ber_len(content.len(), out);
    out.extend_from_slice(content);
}

fn ber_read_tlv(r: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    let tag = b[0];
    r.read_exact(&mut b)?;
    let len = if b[0] < 0x80 {
        b[0] as usize
    } else {
        let n = (b[0] & 0x7f) as usize;
        if n == 0 || n > 4 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad BER length"));
        }
        let mut buf = [0u8; 4];
        r.read_exact(&mut buf[4 - n..])?;
        u32::from_be_bytes(buf) as usize
    };
    let mut content = vec![0u8; len];
    r.read_exact(&mut content)?;
    Ok((tag, content))
}

/// One LDAPv3 simple bind on a fresh connection to 127.0.0.1:`port`, with the exact bytes of
/// `dn` and `password`. Returns the LDAP result code (0 success, 49 invalid credentials, 53
/// unwilling to perform...). An I/O error (refused, or no answer within `timeout`) is Err.
pub fn ldap_simple_bind(
    port: u16,
    dn: impl AsRef<[u8]>,
    password: impl AsRef<[u8]>,
    timeout: Duration,
) -> io::Result<u32> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut bind = Vec::new();
    ber_tlv(0x02, &[3], &mut bind);
    ber_tlv(0x04, dn.as_ref(), &mut bind);
    ber_tlv(0x80, password.as_ref(), &mut bind);
    let mut msg = Vec::new();
    ber_tlv(0x02, &[1], &mut msg);
    ber_tlv(0x60, &bind, &mut msg);
    let mut pdu = Vec::new();
    ber_tlv(0x30, &msg, &mut pdu);
    s.write_all(&pdu)?;
    let (tag, content) = ber_read_tlv(&mut s)?;
    if tag != 0x30 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("LDAP reply tag {tag:#x}"),
        ));
    }
    let mut c = &content[..];
    let _msgid = ber_read_tlv(&mut c)?;
    let (op, body) = ber_read_tlv(&mut c)?;
    if op != 0x61 && op != 0x78 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("LDAP op tag {op:#x}"),
        ));
    }
    let (etag, code) = ber_read_tlv(&mut &body[..])?;
    if etag != 0x0a || code.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "no resultCode"));
    }
    let rc = code.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
    // UnbindRequest; the server closes the connection.
    let _ = s.write_all(&[0x30, 0x05, 0x02, 0x01, 0x02, 0x42, 0x00]);
    let _ = s.shutdown(Shutdown::Both);
    Ok(rc)
}

// ============================================================================================
// slapd
// ============================================================================================

const SLAPD: &str = "/usr/sbin/slapd";
const SLAPADD: &str = "/usr/sbin/slapadd";
const DEFAULT_ACLS: [&str; 2] = [
    "access to attrs=userPassword by anonymous auth by * none",
    "access to * by * read",
];

/// Options for a private slapd. `Slapd::builder().start()` gives the base fixture.
pub struct SlapdBuilder {
    global: Vec<String>,
    acls: Vec<String>,
    default_acls: bool,
    ldif: String,
    ldaps: bool,
    timeout: Duration,
    env: Vec<(String, String)>,
}

impl SlapdBuilder {
    /// An environment variable for slapd (e.g. `KRB5_KTNAME` for GSSAPI).
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.to_owned(), value.into()));
        self
    }

    /// A global slapd.conf line, before `database` (e.g. `allow bind_anon_dn`, `idletimeout 2`,
    /// `TLSCertificateFile /path`).
    pub fn global(mut self, line: impl Into<String>) -> Self {
        self.global.push(line.into());
        self
    }

    /// An `access to ...` line for the database. Extra lines come BEFORE the defaults
    /// (`access to attrs=userPassword by anonymous auth by * none`, `access to * by * read`),
    /// and slapd uses the first `access` whose `to` matches.
    pub fn acl(mut self, line: impl Into<String>) -> Self {
        self.acls.push(line.into());
        self
    }

    /// Leave out the two default ACL lines (only the `acl()` lines remain).
    pub fn no_default_acls(mut self) -> Self {
        self.default_acls = false;
        self
    }

    /// Replace the whole LDIF (default: [`base_ldif`]). It must create [`SUFFIX`].
    pub fn ldif(mut self, text: impl Into<String>) -> Self {
        self.ldif = text.into();
        self
    }

    /// Append entries to the LDIF.
    pub fn extra_ldif(mut self, text: &str) -> Self {
        if !self.ldif.ends_with("\n\n") {
            self.ldif.push('\n');
        }
        self.ldif.push_str(text);
        self
    }

    /// Also listen on `ldaps://127.0.0.1:<second port>/` (add the TLS global lines yourself).
    pub fn ldaps(mut self) -> Self {
        self.ldaps = true;
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn start(self) -> Slapd {
        self.try_start()
            .unwrap_or_else(|e| panic!("slapd did not start:\n{e}"))
    }

    /// Err carries the reason with the slapadd output or the slapd log.
    pub fn try_start(self) -> Result<Slapd, String> {
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let dir = TempDir::new("slapd");
            let port = free_port();
            let ldaps_port = self.ldaps.then(free_port);
            let mut s = Slapd {
                conf: dir.path().join("slapd.conf"),
                log: dir.path().join("slapd.log"),
                dir,
                port,
                ldaps_port,
                child: None,
                frozen: false,
                timeout: self.timeout,
                env: self.env.clone(),
            };
            s.write_config(&self)?;
            match s.spawn_and_wait() {
                Ok(()) => return Ok(s),
                Err(e) if e.contains("Address already in use") => last_err = e, // port race: retry
                Err(e) => return Err(e),
            }
        }
        Err(last_err)
    }
}

/// A private slapd on 127.0.0.1, from its own temp dir; killed and removed on drop.
pub struct Slapd {
    dir: TempDir,
    port: u16,
    ldaps_port: Option<u16>,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    frozen: bool,
    timeout: Duration,
    env: Vec<(String, String)>,
}

impl Slapd {
    pub fn builder() -> SlapdBuilder {
        SlapdBuilder {
            global: Vec::new(),
            acls: Vec::new(),
            default_acls: true,
            ldif: base_ldif(),
            ldaps: false,
            timeout: START_TIMEOUT,
            env: Vec::new(),
        }
    }

    /// slapd with the base fixture and default options.
    pub fn start_default() -> Slapd {
        Slapd::builder().start()
    }

    fn write_config(&self, b: &SlapdBuilder) -> Result<(), String> {
        let d = self.dir.path();
        fs::create_dir_all(d.join("db")).map_err(|e| e.to_string())?;
        let mut c = String::new();
        for schema in ["core", "cosine", "inetorgperson", "nis"] {
            c += &format!("include /etc/ldap/schema/{schema}.schema\n");
        }
        c += "modulepath /usr/lib/ldap\nmoduleload back_mdb\n";
        c += &format!(
            "pidfile {}\nargsfile {}\n",
            d.join("slapd.pid").display(),
            d.join("slapd.args").display()
        );
        for l in &b.global {
            c += l;
            c.push('\n');
        }
        c += "\ndatabase mdb\nmaxsize 1073741824\n";
        c += &format!("suffix \"{SUFFIX}\"\nrootdn \"{ROOT_DN}\"\nrootpw {ROOT_PW}\n");
        c += &format!("directory {}\n", d.join("db").display());
        for l in &b.acls {
            c += l;
            c.push('\n');
        }
        if b.default_acls {
            for l in DEFAULT_ACLS {
                c += l;
                c.push('\n');
            }
        }
        fs::write(&self.conf, c).map_err(|e| e.to_string())?;
        let ldif_path = d.join("data.ldif");
        fs::write(&ldif_path, &b.ldif).map_err(|e| e.to_string())?;
        let out = Command::new(SLAPADD)
            .arg("-f")
            .arg(&self.conf)
            .arg("-l")
            .arg(&ldif_path)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run {SLAPADD}: {e} (run scripts/install-deps.sh)"))?;
        if !out.status.success() {
            return Err(format!(
                "slapadd failed ({}):\n{}{}\n--- slapd.conf ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                read_lossy(&self.conf)
            ));
        }
        Ok(())
    }

    fn listen_urls(&self) -> String {
        let mut urls = format!("ldap://127.0.0.1:{}/", self.port);
        if let Some(p) = self.ldaps_port {
            urls += &format!(" ldaps://127.0.0.1:{p}/");
        }
        urls
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = append_file(&self.log);
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(SLAPD);
        // -d stats: stay in the foreground and log every operation (count_ops reads it).
        cmd.arg("-f")
            .arg(&self.conf)
            .arg("-h")
            .arg(self.listen_urls())
            .arg("-d")
            .arg("stats");
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path());
        let child =
            spawn(cmd).map_err(|e| format!("spawn {SLAPD}: {e} (run scripts/install-deps.sh)"))?;
        self.child = Some(child);
        self.frozen = false;
        let deadline = Instant::now() + self.timeout;
        loop {
            let child = self.child.as_mut().expect("child");
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Err(format!(
                    "slapd exited ({st}) while starting; log:\n{}",
                    self.log()
                ));
            }
            // Any BindResponse means slapd is serving. The probe DN with an empty password is
            // an "unauthenticated bind": refused with 53 unless `allow bind_anon_dn`.
            if ldap_simple_bind(self.port, PROBE_DN, b"", Duration::from_secs(5)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut child = self.child.take().expect("child");
                kill_and_reap(&mut child);
                return Err(format!(
                    "slapd not ready after {:?}; log:\n{}",
                    self.timeout,
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `ldap://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldaps://127.0.0.1:PORT2` (only with `.ldaps()`).
    pub fn ldaps_url(&self) -> String {
        format!(
            "ldaps://127.0.0.1:{}",
            self.ldaps_port.expect("slapd started without .ldaps()")
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn ldaps_port(&self) -> Option<u16> {
        self.ldaps_port
    }

    /// Pid of the running slapd (panics when stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("slapd is not running").id()
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The temp dir (for test files such as certificates); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.conf
    }

    /// SIGTERM and wait (SIGKILL after 10 s). The data and the port stay for `start()`.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(10));
        }
        self.frozen = false;
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_reap(&mut c);
        }
        self.frozen = false;
    }

    /// Starts again on the same port with the same data (after `stop()`/`kill()`).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "slapd is already running");
        if let Err(e) = self.spawn_and_wait() {
            panic!("slapd did not restart:\n{e}");
        }
    }

    /// SIGSTOP: connections are still accepted by the kernel, nothing answers.
    pub fn freeze(&mut self) {
        let pid = self.pid();
        signal(pid, SIGSTOP);
        wait_stopped(pid, true);
        self.frozen = true;
    }

    /// SIGCONT.
    pub fn thaw(&mut self) {
        let pid = self.pid();
        signal(pid, SIGCONT);
        wait_stopped(pid, false);
        self.frozen = false;
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// The whole `-d stats` log (all starts).
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// The stats-log lines of operations of `kind`, leaving out the harness's readiness
    /// probes. Kinds: "BIND" (one line per bind request: ` BIND dn="..." method=`), "SRCH" (one
    /// line per search: ` SRCH base="..." scope=.. filter="..."`), or any other word of the log
    /// such as "UNBIND", "ACCEPT", "RESULT", "WHOAMI", "EXT", "closed" (whole-word match).
    pub fn ops(&self, kind: &str) -> Vec<String> {
        let log = self.log();
        let conn_of = |line: &str| -> Option<String> {
            line.split_whitespace()
                .find(|t| t.starts_with("conn="))
                .map(str::to_owned)
        };
        let probe_marker = format!("BIND dn=\"{PROBE_DN}\"");
        let probe_conns: BTreeSet<String> = log
            .lines()
            .filter(|l| l.contains(&probe_marker))
            .filter_map(conn_of)
            .collect();
        log.lines()
            .filter(|l| match kind {
                "BIND" => l.contains(" BIND dn=\"") && l.contains(" method="),
                "SRCH" => l.contains(" SRCH base=\""),
                k => l.split_whitespace().any(|t| t == k),
            })
            .filter(|l| conn_of(l).is_none_or(|c| !probe_conns.contains(&c)))
            .map(str::to_owned)
            .collect()
    }

    /// `ops(kind).len()`.
    pub fn count_ops(&self, kind: &str) -> usize {
        self.ops(kind).len()
    }

    /// Polls until `count_ops(kind) >= at_least` or `timeout`; returns the last count.
    pub fn wait_ops(&self, kind: &str, at_least: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.count_ops(kind);
            if n >= at_least || Instant::now() >= deadline {
                return n;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// One simple bind with exact bytes (see [`ldap_simple_bind`]); 5 s timeout.
    pub fn bind(&self, dn: impl AsRef<[u8]>, password: impl AsRef<[u8]>) -> io::Result<u32> {
        ldap_simple_bind(self.port, dn, password, Duration::from_secs(5))
    }

    /// DNs (as slapd returns them, RFC 4514 with hex escapes) of a subtree search from
    /// [`SUFFIX`] as the rootdn, via `ldapsearch`.
    pub fn search_dns(&self, filter: &str) -> Vec<String> {
        let out = Command::new("ldapsearch")
            .args([
                "-x",
                "-LLL",
                "-o",
                "ldif-wrap=no",
                "-H",
                &self.url(),
                "-D",
                ROOT_DN,
                "-w",
                ROOT_PW,
            ])
            .args(["-b", SUFFIX, "-s", "sub", filter, "1.1"])
            .stdin(Stdio::null())
            .output()
            .expect("run ldapsearch");
        assert!(
            out.status.success(),
            "ldapsearch {filter} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                if let Some(v) = l.strip_prefix("dn:: ") {
                    Some(String::from_utf8_lossy(&base64_decode(v)).into_owned())
                } else {
                    l.strip_prefix("dn: ").map(str::to_owned)
                }
            })
            .collect()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_reap(&mut c); // SIGCONT first, then SIGKILL
        }
    }
}

// ============================================================================================
// A server that accepts connections and never answers
// ============================================================================================

/// Listens on 127.0.0.1, accepts every connection, reads and discards, never writes.
pub struct BlackHole {
    port: u16,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl BlackHole {
    pub fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let thread = thread::spawn(move || {
            let mut held = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        accepted2.fetch_add(1, Ordering::Relaxed);
                        held.push(s);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        BlackHole {
            port,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ============================================================================================
// Valkey
// ============================================================================================

/// Which server binary to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// tools/valkey-9.1/valkey-server (9.1.2)
    V9_1,
    /// tools/valkey-8.1/valkey-server (8.1.8)
    V8_1,
    /// Debian's /usr/bin/redis-server (7.0.15: no module auth API)
    Redis7_0,
}

impl Version {
    pub fn binary(self) -> PathBuf {
        match self {
            Version::V9_1 => repo_root().join("tools/valkey-9.1/valkey-server"),
            Version::V8_1 => repo_root().join("tools/valkey-8.1/valkey-server"),
            Version::Redis7_0 => PathBuf::from("/usr/bin/redis-server"),
        }
    }
}

/// Quotes `s` for a valkey.conf line (double quotes; `\\`, `\"`, `\xHH` escapes).
pub fn conf_quote(s: &str) -> String {
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

/// Options for a valkey-server. Default: 9.1, no module.
pub struct ValkeyBuilder {
    binary: PathBuf,
    module: Option<(PathBuf, Vec<String>)>,
    config: Vec<String>,
    timeout: Duration,
}

impl ValkeyBuilder {
    pub fn version(mut self, v: Version) -> Self {
        self.binary = v.binary();
        self
    }

    /// Any server binary (e.g. `/usr/bin/redis-server`).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = path.into();
        self
    }

    /// Load `target/release/libvalkeyauth.so` with these module arguments
    /// (e.g. `["servers", &url, "auth_mode", "bind"]`; `[] as [&str; 0]` for none).
    /// Unless the arguments are empty or set a cache option themselves, caching is turned off
    /// first, so that every AUTH reaches the directory as the test expects.
    pub fn module<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut args: Vec<String> = args.into_iter().map(|s| s.as_ref().to_owned()).collect();
        if !args.is_empty() && !args.iter().any(|a| a.contains("cache_")) {
            let off = ["cache_ttl_s", "0", "negative_cache_ttl_s", "0"];
            args.splice(0..0, off.map(String::from));
        }
        let path = self
            .module
            .take()
            .map(|(p, _)| p)
            .unwrap_or_else(module_path);
        self.module = Some((path, args));
        self
    }

    /// Load another module file instead (keeps the args given to `module()`).
    pub fn module_path(mut self, path: impl Into<PathBuf>) -> Self {
        let args = self.module.take().map(|(_, a)| a).unwrap_or_default();
        self.module = Some((path.into(), args));
        self
    }

    /// Do not load the module.
    pub fn no_module(mut self) -> Self {
        self.module = None;
        self
    }

    /// A valkey.conf line, after the harness's own (so it overrides them), e.g.
    /// `user alice on >pw ~* +@all`, `valkeyauth.servers ldap://...`, `loglevel debug`.
    pub fn config(mut self, line: impl Into<String>) -> Self {
        self.config.push(line.into());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Starts and waits for PING; panics with the log on failure.
    pub fn start(self) -> Valkey {
        self.try_start()
            .unwrap_or_else(|log| panic!("valkey-server did not start:\n{log}"))
    }

    /// A server that is EXPECTED to fail to start: returns its log (logfile + stderr).
    /// Panics if it starts.
    pub fn start_expect_failure(self) -> String {
        match self.try_start() {
            Ok(v) => panic!(
                "valkey-server started but was expected to fail; log:\n{}",
                v.log()
            ),
            Err(log) => log,
        }
    }

    /// Ok(server) once it answers PING; Err(log) if it exits or is not ready in time.
    pub fn try_start(self) -> Result<Valkey, String> {
        if let Some((path, _)) = &self.module {
            if !path.exists() && *path == module_path() {
                panic!(
                    "{} is missing: run `cargo build --release` first",
                    path.display()
                );
            }
        }
        if !self.binary.exists() {
            panic!(
                "{} is missing: run scripts/install-deps.sh",
                self.binary.display()
            );
        }
        let mut last = String::new();
        for _attempt in 0..3 {
            let dir = TempDir::new("valkey");
            let mut v = Valkey {
                port: free_port(),
                conf: dir.path().join("valkey.conf"),
                logfile: dir.path().join("valkey.log"),
                stderr: dir.path().join("stderr.log"),
                dir,
                binary: self.binary.clone(),
                child: None,
                timeout: self.timeout,
            };
            v.write_config(&self);
            match v.spawn_and_wait() {
                Ok(()) => return Ok(v),
                Err(log) if log.contains("Address already in use") => last = log, // retry
                Err(log) => return Err(log),
            }
        }
        Err(last)
    }
}

/// A valkey-server on 127.0.0.1 from its own temp dir; killed and removed on drop.
pub struct Valkey {
    dir: TempDir,
    port: u16,
    binary: PathBuf,
    conf: PathBuf,
    logfile: PathBuf,
    stderr: PathBuf,
    child: Option<Child>,
    timeout: Duration,
}

impl Valkey {
    pub fn builder() -> ValkeyBuilder {
        ValkeyBuilder {
            binary: Version::V9_1.binary(),
            module: None,
            config: Vec::new(),
            timeout: START_TIMEOUT,
        }
    }

    /// Valkey 9.1 with the module loaded with `args`.
    pub fn with_module<I, S>(args: I) -> Valkey
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Valkey::builder().module(args).start()
    }

    fn write_config(&self, b: &ValkeyBuilder) {
        let d = self.dir.path().to_str().expect("utf-8 temp path");
        let mut c = String::new();
        c += &format!("port {}\nbind 127.0.0.1\n", self.port);
        c += &format!("dir {}\n", conf_quote(d));
        c += &format!(
            "logfile {}\n",
            conf_quote(self.logfile.to_str().expect("utf-8 path"))
        );
        c += "daemonize no\nsave \"\"\nappendonly no\nenable-module-command yes\nenable-debug-command yes\nenable-protected-configs yes\n";
        if let Some((path, args)) = &b.module {
            c += "loadmodule ";
            c += &conf_quote(path.to_str().expect("utf-8 module path"));
            for a in args {
                c.push(' ');
                c += &conf_quote(a);
            }
            c.push('\n');
        }
        for l in &b.config {
            c += l;
            c.push('\n');
        }
        fs::write(&self.conf, c).expect("write valkey.conf");
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let out = append_file(&self.stderr);
        let err = out.try_clone().expect("clone");
        let mut cmd = Command::new(&self.binary);
        cmd.arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .current_dir(self.dir.path());
        let child = spawn(cmd).map_err(|e| format!("spawn {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + self.timeout;
        loop {
            let child = self.child.as_mut().expect("child");
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Err(format!(
                    "valkey-server exited ({st}) while starting; log:\n{}",
                    self.log()
                ));
            }
            if let Ok(mut c) = RawClient::try_connect(self.port, Duration::from_secs(2)) {
                match c.cmd(&[b"PING"]) {
                    Ok(Reply::Simple(_)) => return Ok(()),
                    Ok(Reply::Error(e)) if e.starts_with("NOAUTH") => return Ok(()),
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                let mut child = self.child.take().expect("child");
                kill_and_reap(&mut child);
                return Err(format!(
                    "valkey-server not ready after {:?}; log:\n{}",
                    self.timeout,
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Pid of the running server (panics when stopped).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("valkey-server is not running")
            .id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The valkey.conf the server was started with (CONFIG REWRITE writes here).
    pub fn config_path(&self) -> &Path {
        &self.conf
    }

    /// The server's logfile, followed by its stdout/stderr if any (config errors go there).
    pub fn log(&self) -> String {
        let mut s = read_lossy(&self.logfile);
        let e = read_lossy(&self.stderr);
        if !e.trim().is_empty() {
            s += "\n--- stdout/stderr ---\n";
            s += &e;
        }
        s
    }

    /// Polls the log until it contains `needle`; returns whether it did within `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// A new `redis::Connection` (RESP2, not authenticated), 30 s read/write timeouts.
    pub fn client(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("redis::Client::open");
        let conn = client
            .get_connection_with_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| {
                panic!(
                    "connect to valkey on {}: {e}\nlog:\n{}",
                    self.port,
                    self.log()
                )
            });
        conn.set_read_timeout(Some(CLIENT_TIMEOUT))
            .expect("set_read_timeout");
        conn.set_write_timeout(Some(CLIENT_TIMEOUT))
            .expect("set_write_timeout");
        conn
    }

    /// A new [`RawClient`].
    pub fn raw(&self) -> RawClient {
        RawClient::connect(self.port)
    }

    /// Whether the process is alive (false after a crash, `stop()` or `kill()`).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The exit status if the process has exited (e.g. crashed), without waiting.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM (a clean shutdown; module deinit runs), wait up to 10 s, then SIGKILL.
    pub fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("valkey-server is not running");
        terminate(&mut c, Duration::from_secs(10))
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_reap(&mut c);
        }
    }

    /// Starts again from `config_path()` (maybe rewritten by CONFIG REWRITE), same port.
    /// Stops the running server first.
    pub fn restart(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn_and_wait()
    }
}

impl Drop for Valkey {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_reap(&mut c);
        }
    }
}

// ============================================================================================
// Client helpers
// ============================================================================================

/// `AUTH user pass` with the exact bytes. A server error is `Err` (`e.code()` is e.g.
/// `Some("WRONGPASS")`, `e.detail()` the rest).
pub fn auth(
    conn: &mut redis::Connection,
    user: &[u8],
    pass: &[u8],
) -> redis::RedisResult<redis::Value> {
    redis::cmd("AUTH").arg(user).arg(pass).query(conn)
}

/// One-argument `AUTH pass` (the server treats it as user `default`).
pub fn auth1(conn: &mut redis::Connection, pass: &[u8]) -> redis::RedisResult<redis::Value> {
    redis::cmd("AUTH").arg(pass).query(conn)
}

/// `HELLO 3 AUTH user pass`. On success the connection speaks RESP3 afterwards and the reply
/// is a `Value::Map`.
pub fn hello3_auth(
    conn: &mut redis::Connection,
    user: &[u8],
    pass: &[u8],
) -> redis::RedisResult<redis::Value> {
    redis::cmd("HELLO")
        .arg(3)
        .arg("AUTH")
        .arg(user)
        .arg(pass)
        .query(conn)
}

/// `HELLO 2 AUTH user pass` (stays RESP2).
pub fn hello2_auth(
    conn: &mut redis::Connection,
    user: &[u8],
    pass: &[u8],
) -> redis::RedisResult<redis::Value> {
    redis::cmd("HELLO")
        .arg(2)
        .arg("AUTH")
        .arg(user)
        .arg(pass)
        .query(conn)
}

/// `ACL WHOAMI`.
pub fn whoami(conn: &mut redis::Connection) -> redis::RedisResult<String> {
    redis::cmd("ACL").arg("WHOAMI").query(conn)
}

/// `+OK`.
pub fn ok() -> Reply {
    Reply::Simple("OK".into())
}

/// The reply to a refused login ([`WRONGPASS`]).
pub fn wrongpass() -> Reply {
    Reply::Error(WRONGPASS.into())
}

/// The reply when no directory server answered in time ([`UNAVAILABLE`]).
pub fn unavailable() -> Reply {
    Reply::Error(UNAVAILABLE.into())
}

/// `AUTH` as `user` with its own password on a new connection, which must succeed.
pub fn auth_ok(v: &Valkey, user: &FixtureUser, context: &str) {
    let r = v.raw().auth(user.name.as_bytes(), user.password.as_bytes());
    assert!(
        r.is_ok(),
        "{context}: AUTH {}: {r}\nlog:\n{}",
        user.name,
        v.log()
    );
}

/// `AUTH user pass` with exact bytes on a new connection; returns the reply and the connection.
pub fn login(v: &Valkey, user: impl AsRef<[u8]>, pass: impl AsRef<[u8]>) -> (Reply, RawClient) {
    let mut c = v.raw();
    let r = c.auth(user.as_ref(), pass.as_ref());
    (r, c)
}

/// `CONFIG SET <name> <value>` on a new connection, which must succeed (`name` in full, e.g.
/// `valkeyauth.workers`).
pub fn config_set_ok(v: &Valkey, name: &str, value: &str) {
    let r = v
        .raw()
        .call(&[b"CONFIG", b"SET", name.as_bytes(), value.as_bytes()]);
    assert!(r.is_ok(), "CONFIG SET {name} {value}: {r}");
}

/// `ACL SETUSER <args...>`, which must succeed.
pub fn acl_setuser(v: &Valkey, args: &[&str]) {
    let mut cmd: Vec<&[u8]> = vec![b"ACL", b"SETUSER"];
    cmd.extend(args.iter().map(|a| a.as_bytes()));
    let r = v.raw().call(&cmd);
    assert!(r.is_ok(), "ACL SETUSER {args:?}: {r}");
}

/// `ACL SETUSER <name> on +@all ~*` for each name, as exact bytes (no password: the directory
/// decides).
pub fn add_acl_users<N: AsRef<[u8]>>(v: &Valkey, names: &[N]) {
    let mut admin = v.raw();
    for name in names {
        let name = name.as_ref();
        let r = admin.call(&[b"ACL", b"SETUSER", name, b"on", b"+@all", b"~*"]);
        assert!(
            r.is_ok(),
            "ACL SETUSER {:?}: {r}",
            String::from_utf8_lossy(name)
        );
    }
}

// ============================================================================================
// Module arguments
// ============================================================================================

/// The `bind_dn_suffix` of the fixture's people: bind mode binds as `cn=<user>` + this.
pub const BIND_SUFFIX: &str = ",ou=people,dc=example,dc=test";

/// No `extra` module arguments.
pub const NO_ARGS: &[&str] = &[];

fn module_args<S: AsRef<str>>(servers: &str, mode: &[&str], extra: &[S]) -> Vec<String> {
    let mut args = vec!["servers".to_owned(), servers.to_owned()];
    args.extend(mode.iter().map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.as_ref().to_owned()));
    args
}

/// Module arguments for bind mode: `servers <servers> bind_dn_suffix` [`BIND_SUFFIX`], then
/// `extra` (later arguments win).
pub fn bind_args<S: AsRef<str>>(servers: &str, extra: &[S]) -> Vec<String> {
    module_args(servers, &["bind_dn_suffix", BIND_SUFFIX], extra)
}

/// Module arguments for search+bind (anonymous searches from [`SUFFIX`]): `servers <servers>
/// auth_mode search+bind search_base` [`SUFFIX`], then `extra` (later arguments win).
pub fn search_args<S: AsRef<str>>(servers: &str, extra: &[S]) -> Vec<String> {
    module_args(
        servers,
        &["auth_mode", "search+bind", "search_base", SUFFIX],
        extra,
    )
}

/// Module arguments that make search+bind search as [`SEARCHER`] with the password in
/// `pw_file`.
pub fn service_args(pw_file: impl AsRef<Path>) -> Vec<String> {
    vec![
        "search_bind_dn".to_owned(),
        SEARCHER.dn.to_owned(),
        "search_bind_passwd_file".to_owned(),
        pw_file.as_ref().to_str().expect("utf-8 path").to_owned(),
    ]
}

// ============================================================================================
// Changing the directory
// ============================================================================================

/// Applies `ldif` (with `changetype` lines) to `slapd` as the root DN, with `ldapmodify`.
pub fn ldapmodify(slapd: &Slapd, ldif: &str) {
    let mut child = Command::new("ldapmodify")
        .args(["-x", "-H", &slapd.url(), "-D", ROOT_DN, "-w", ROOT_PW])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ldapmodify");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(ldif.as_bytes())
        .expect("write LDIF to ldapmodify");
    let out = child.wait_with_output().expect("wait for ldapmodify");
    assert!(
        out.status.success(),
        "ldapmodify failed: {}{}\n{ldif}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One RESP2/RESP3 reply, as read by [`RawClient`].
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Simple(String),
    /// `-ERR ...` (or a RESP3 blob error), the text after `-`.
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
    Map(Vec<(Reply, Reply)>),
    Set(Vec<Reply>),
    Push(Vec<Reply>),
    Double(String),
    Bool(bool),
    BigNumber(String),
    /// Verbatim string, with its `txt:` prefix removed.
    Verbatim(String),
}

impl Reply {
    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Simple(s) if s == "OK")
    }

    /// The error text (e.g. `WRONGPASS invalid username-password pair or user is disabled.`).
    pub fn error(&self) -> Option<&str> {
        match self {
            Reply::Error(e) => Some(e),
            _ => None,
        }
    }

    /// The text of a simple, bulk or verbatim string.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) | Reply::Verbatim(s) => Some(s.clone()),
            Reply::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// For maps (RESP3) and flat key/value arrays (RESP2): the value under `key`.
    pub fn get(&self, key: &str) -> Option<&Reply> {
        match self {
            Reply::Map(m) => m
                .iter()
                .find(|(k, _)| k.text().as_deref() == Some(key))
                .map(|(_, v)| v),
            Reply::Array(a) => a
                .chunks(2)
                .find(|kv| kv[0].text().as_deref() == Some(key))
                .and_then(|kv| kv.get(1)),
            _ => None,
        }
    }
}

/// Every text in a reply, one per line, bytes decoded (lossily), so that a search for a
/// string finds it wherever the reply holds it.
pub fn all_text(reply: &Reply) -> String {
    match reply {
        Reply::Simple(t)
        | Reply::Error(t)
        | Reply::Double(t)
        | Reply::BigNumber(t)
        | Reply::Verbatim(t) => format!("{t}\n"),
        Reply::Bulk(b) => format!("{}\n", String::from_utf8_lossy(b)),
        Reply::Int(n) => format!("{n}\n"),
        Reply::Bool(b) => format!("{b}\n"),
        Reply::Nil => "nil\n".to_owned(),
        Reply::Array(items) | Reply::Set(items) | Reply::Push(items) => {
            items.iter().map(all_text).collect()
        }
        Reply::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| format!("{}{}", all_text(k), all_text(v)))
            .collect(),
    }
}

/// What a client or an operator can read about a running server, as text: INFO, CONFIG GET,
/// SLOWLOG, ACL LOG, CLIENT LIST, MODULE LIST and HELLO, plus the log and the config file
/// (as CONFIG REWRITE left it). For searches that prove a secret appears nowhere.
pub fn everything_shown(v: &Valkey, c: &mut RawClient) -> String {
    let mut out = String::new();
    for cmd in [
        &[&b"INFO"[..], b"everything"][..],
        &[b"CONFIG", b"GET", b"*"],
        &[b"SLOWLOG", b"GET", b"1000"],
        &[b"ACL", b"LOG"],
        &[b"CLIENT", b"LIST"],
        &[b"MODULE", b"LIST"],
        &[b"HELLO", b"3"],
    ] {
        out += &all_text(&c.call(cmd));
    }
    out += &v.log();
    out += &fs::read_to_string(v.config_path()).unwrap_or_default();
    out
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Simple(s) => write!(f, "+{s}"),
            Reply::Error(s) => write!(f, "-{s}"),
            Reply::Int(i) => write!(f, ":{i}"),
            Reply::Bulk(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Reply::Nil => write!(f, "(nil)"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// A RESP client over a plain TcpStream: sends arrays of bulk strings built from exact bytes,
/// reads replies without interpreting errors. Default read timeout: [`CLIENT_TIMEOUT`].
pub struct RawClient {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl RawClient {
    pub fn connect(port: u16) -> RawClient {
        RawClient::try_connect(port, CLIENT_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
    }

    pub fn try_connect(port: u16, timeout: Duration) -> io::Result<RawClient> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(RawClient {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.writer
            .set_read_timeout(Some(t))
            .expect("set_read_timeout");
    }

    /// Writes one command: a RESP array of bulk strings.
    pub fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&buf)
    }

    /// Writes raw bytes (inline commands, pipelines, malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Reads one reply; Err on timeout (`WouldBlock`/`TimedOut`), EOF or a malformed reply.
    pub fn try_read(&mut self) -> io::Result<Reply> {
        read_reply(&mut self.reader)
    }

    /// Reads one reply with a temporary read timeout (the default is restored).
    pub fn try_read_timeout(&mut self, t: Duration) -> io::Result<Reply> {
        self.set_read_timeout(t);
        let r = self.try_read();
        self.set_read_timeout(CLIENT_TIMEOUT);
        r
    }

    /// Reads one reply; panics on timeout or EOF.
    pub fn read(&mut self) -> Reply {
        self.try_read()
            .unwrap_or_else(|e| panic!("RawClient: no reply: {e}"))
    }

    /// send + try_read.
    pub fn cmd(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        self.send(args)?;
        self.try_read()
    }

    /// send + read; panics on I/O errors. Server errors are `Reply::Error`.
    pub fn call(&mut self, args: &[&[u8]]) -> Reply {
        self.cmd(args).unwrap_or_else(|e| panic!("RawClient: {e}"))
    }

    /// `AUTH user pass`.
    pub fn auth(&mut self, user: &[u8], pass: &[u8]) -> Reply {
        self.call(&[b"AUTH", user, pass])
    }

    /// `HELLO 3 AUTH user pass`.
    pub fn hello3_auth(&mut self, user: &[u8], pass: &[u8]) -> Reply {
        self.call(&[b"HELLO", b"3", b"AUTH", user, pass])
    }

    /// `ACL WHOAMI`: the user this connection is logged in as.
    pub fn whoami(&mut self) -> String {
        self.call(&[b"ACL", b"WHOAMI"])
            .text()
            .expect("ACL WHOAMI text")
    }

    /// True if the server closed the connection (EOF within `t`).
    pub fn is_closed(&mut self, t: Duration) -> bool {
        self.set_read_timeout(t);
        let mut b = [0u8; 1];
        let r = matches!(self.reader.read(&mut b), Ok(0));
        self.set_read_timeout(CLIENT_TIMEOUT);
        r
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(bad(format!(
            "line without CRLF: {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn read_blob(r: &mut impl BufRead, len: &str) -> io::Result<Option<Vec<u8>>> {
    let n: i64 = len.parse().map_err(|_| bad(format!("bad length {len}")))?;
    if n < 0 {
        return Ok(None);
    }
    let mut buf = vec![0u8; n as usize + 2];
    r.read_exact(&mut buf)?;
    buf.truncate(n as usize);
    Ok(Some(buf))
}

fn read_n(r: &mut impl BufRead, len: &str) -> io::Result<Option<Vec<Reply>>> {
    let n: i64 = len.parse().map_err(|_| bad(format!("bad count {len}")))?;
    if n < 0 {
        return Ok(None);
    }
    (0..n)
        .map(|_| read_reply(r))
        .collect::<io::Result<Vec<_>>>()
        .map(Some)
}

fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    let line = read_line(r)?;
    let (kind, rest) = line.split_at(line.chars().next().map_or(0, char::len_utf8));
    Ok(match kind {
        "+" => Reply::Simple(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Int(rest.parse().map_err(|_| bad(format!("bad int {rest}")))?),
        "$" => read_blob(r, rest)?.map_or(Reply::Nil, Reply::Bulk),
        "!" => Reply::Error(
            String::from_utf8_lossy(&read_blob(r, rest)?.unwrap_or_default()).into_owned(),
        ),
        "=" => {
            let b = read_blob(r, rest)?.unwrap_or_default();
            let s = String::from_utf8_lossy(&b).into_owned();
            Reply::Verbatim(s.get(4..).unwrap_or("").to_owned())
        }
        "*" => read_n(r, rest)?.map_or(Reply::Nil, Reply::Array),
        "~" => Reply::Set(read_n(r, rest)?.unwrap_or_default()),
        ">" => Reply::Push(read_n(r, rest)?.unwrap_or_default()),
        "%" => {
            let items = read_n(
                r,
                &(rest.parse::<i64>().map_err(|_| bad("bad map len"))? * 2).to_string(),
            )?
            .unwrap_or_default();
            let mut it = items.into_iter();
            let mut m = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                m.push((k, v));
            }
            Reply::Map(m)
        }
        "|" => {
            // Attributes: skip them, return the reply they annotate.
            let n: i64 = rest.parse().map_err(|_| bad("bad attribute len"))?;
            for _ in 0..n * 2 {
                read_reply(r)?;
            }
            read_reply(r)?
        }
        "_" => Reply::Nil,
        "#" => Reply::Bool(rest == "t"),
        "," => Reply::Double(rest.to_owned()),
        "(" => Reply::BigNumber(rest.to_owned()),
        _ => return Err(bad(format!("unknown reply line {line:?}"))),
    })
}

// ============================================================================================
// What the module shows: replies, INFO valkeyauth, its threads
// ============================================================================================

/// The reply to a refused login.
pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
/// The reply when no directory server answered in time.
pub const UNAVAILABLE: &str = "ERR valkeyauth: directory unavailable, try again later";
/// The reply when `max_pending` AUTHs are already queued.
pub const BUSY: &str = "ERR valkeyauth: too many pending logins, try again later";

/// Every `valkeyauth_*` field of `INFO valkeyauth`, without the prefix, as text.
pub fn info_valkeyauth(c: &mut RawClient) -> std::collections::BTreeMap<String, String> {
    let text = c
        .call(&[b"INFO", b"valkeyauth"])
        .text()
        .expect("INFO valkeyauth text");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("valkeyauth_"))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The numeric `valkeyauth_*` fields of `INFO valkeyauth` (counters, pool), on client `c`.
pub fn counters_with(c: &mut RawClient) -> std::collections::BTreeMap<String, u64> {
    info_valkeyauth(c)
        .into_iter()
        .filter_map(|(k, v)| v.parse().ok().map(|n| (k, n)))
        .collect()
}

/// The numeric `valkeyauth_*` fields of `INFO valkeyauth`, on a new connection.
pub fn counters(v: &Valkey) -> std::collections::BTreeMap<String, u64> {
    counters_with(&mut v.raw())
}

/// One numeric field of `INFO valkeyauth` (`field` without the `valkeyauth_` prefix); panics
/// when it is missing.
pub fn info_field(v: &Valkey, field: &str) -> u64 {
    let all = counters(v);
    *all.get(field)
        .unwrap_or_else(|| panic!("no valkeyauth_{field} in INFO: {all:?}"))
}

/// Counters that record why an AUTH ended the way it did.
pub const OUTCOMES: [&str; 15] = [
    "allowed",
    "denied_bad_credentials",
    "denied_unknown_user",
    "denied_ambiguous_user",
    "denied_empty_password",
    "denied_password_too_long",
    "denied_invalid_username",
    "denied_no_acl_user",
    "denied_internal_error",
    "outage_unreachable",
    "outage_timeout",
    "outage_busy",
    "outage_directory_error",
    "exempt_passthrough",
    "local_fallback_used",
];

/// Asserts every outcome counter: those in `expected` have that value, all others are 0.
pub fn assert_outcomes_with(c: &mut RawClient, expected: &[(&str, u64)]) {
    let got = counters_with(c);
    for name in OUTCOMES {
        let want = expected
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v);
        assert_eq!(got.get(name).copied(), Some(want), "{name}: {got:?}");
    }
    for (name, _) in expected {
        assert!(OUTCOMES.contains(name), "unknown counter {name}");
    }
}

/// [`assert_outcomes_with`] on a new connection.
pub fn assert_outcomes(v: &Valkey, expected: &[(&str, u64)]) {
    assert_outcomes_with(&mut v.raw(), expected);
}

/// One `valkeyauth_server<i>:url=...,state=up|down,consecutive_failures=<n>` line of INFO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHealth {
    pub url: String,
    pub up: bool,
    pub consecutive_failures: u64,
}

/// The health of every configured server, in the order of `servers`.
pub fn server_health(v: &Valkey) -> Vec<ServerHealth> {
    let info = info_valkeyauth(&mut v.raw());
    let count: usize = info
        .get("servers")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no valkeyauth_servers in INFO: {info:?}"));
    (0..count)
        .map(|i| {
            let line = info
                .get(&format!("server{i}"))
                .unwrap_or_else(|| panic!("no valkeyauth_server{i} in INFO: {info:?}"));
            let field = |name: &str| -> &str {
                line.split(',')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    .unwrap_or_else(|| panic!("no {name} in valkeyauth_server{i}:{line}"))
            };
            let state = field("state");
            assert!(
                state == "up" || state == "down",
                "server{i} state {state:?}"
            );
            ServerHealth {
                url: field("url").to_owned(),
                up: state == "up",
                consecutive_failures: field("consecutive_failures")
                    .parse()
                    .expect("consecutive_failures is a number"),
            }
        })
        .collect()
}

/// Polls INFO until server `index` is up (`want_up`) or down, for at most `timeout`; returns
/// whether it got there.
pub fn wait_server_state(v: &Valkey, index: usize, want_up: bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if server_health(v)[index].up == want_up {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (at most 10 s) until INFO shows every server up, and asserts that it did. After a
/// directory comes back, the module uses it again once its health checker has seen it.
pub fn wait_all_servers_up(v: &Valkey) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = server_health(v);
        if health.iter().all(|s| s.up) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "servers still down after 10 s: {health:?}\nlog:\n{}",
            v.log()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Names of the threads of process `pid`.
pub fn thread_names(pid: u32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc/PID/task")
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim_end().to_owned())
        .collect()
}

/// The module's worker threads (`valkeyauth-<index>`) in process `pid`.
pub fn worker_threads(pid: u32) -> usize {
    thread_names(pid)
        .iter()
        .filter(|n| {
            n.strip_prefix("valkeyauth-")
                .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
        })
        .count()
}

/// The module's health checker threads (`valkeyauth-health`, which the kernel shows cut to 15
/// bytes: `valkeyauth-heal`) in process `pid`.
pub fn health_threads(pid: u32) -> usize {
    thread_names(pid)
        .iter()
        .filter(|n| "valkeyauth-health".starts_with(n.as_str()) && n.len() >= 15)
        .count()
}

/// Polls `f` until it returns `want` or `timeout` passes; returns the last value.
pub fn wait_for<T: PartialEq>(want: T, timeout: Duration, mut f: impl FnMut() -> T) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let got = f();
        if got == want || Instant::now() >= deadline {
            return got;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ============================================================================================
// What slapd saw
// ============================================================================================

/// The `dn="..."` of each BIND request slapd received, as slapd renders it (harness probes
/// left out).
pub fn bind_dns(slapd: &Slapd) -> Vec<String> {
    slapd
        .ops("BIND")
        .iter()
        .filter_map(|l| {
            let (_, rest) = l.split_once(" BIND dn=\"")?;
            rest.split_once("\" method=").map(|(dn, _)| dn.to_owned())
        })
        .collect()
}

/// The `filter="..."` of each search slapd received, as slapd logs it (harness probes left
/// out).
pub fn search_filters(slapd: &Slapd) -> Vec<String> {
    slapd
        .ops("SRCH")
        .iter()
        .filter_map(|l| {
            let (_, rest) = l.split_once(" filter=\"")?;
            rest.rsplit_once('"').map(|(f, _)| f.to_owned())
        })
        .collect()
}

/// Makes a named pipe at `path`: what a path option must refuse without opening it.
pub fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Sends one AUTH on a new connection and hangs up without reading the answer.
pub fn auth_and_hang_up(v: &Valkey, user: &[u8], password: &[u8]) {
    v.raw().send(&[b"AUTH", user, password]).expect("send AUTH");
}

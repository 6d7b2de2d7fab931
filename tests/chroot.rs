//! The module on a minimal distribution (slow: debootstrap takes about a minute on a fresh
//! machine). A Debian `minbase` root, plus only the libldap runtime package, gets the Debian
//! package installed with its own dpkg (so its declared dependencies must be met there) and
//! the pinned valkey-server copied in. Valkey runs inside it with `chroot` and logs a user
//! in against a slapd on the host's loopback (a chroot shares the network namespace). This
//! shows that the module needs nothing beyond what the package declares.
//!
//! The finished root is kept as a tarball under the git-ignored `.tmp/minbase/`, so later
//! runs on the same machine unpack it in a second; a fresh machine (CI) builds it.
//! `VALKEYAUTH_DEBIAN_MIRROR` overrides the mirror, which is otherwise the one apt uses here.

mod common;

use common::deb::{self, INSTALLED_MODULE};
use common::*;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

// --------------------------------------------------------------------------------------------
// The minbase root
// --------------------------------------------------------------------------------------------

/// `VERSION_CODENAME` of /etc/os-release: the root must be the same release as the machine
/// the package was built on, or its library versions may not match.
fn host_suite() -> String {
    let text = fs::read_to_string("/etc/os-release").expect("/etc/os-release");
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
        .expect("VERSION_CODENAME in /etc/os-release")
}

/// The mirror apt uses for `suite` on this machine (deb822 `.sources` files or the one-line
/// `sources.list` format), so the test reaches the same registry as apt.
fn apt_mirror(suite: &str) -> String {
    if let Ok(m) = std::env::var("VALKEYAUTH_DEBIAN_MIRROR") {
        return m;
    }
    let mut texts = Vec::new();
    if let Ok(t) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            if e.path()
                .extension()
                .is_some_and(|x| x == "sources" || x == "list")
            {
                texts.push(fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    texts
        .iter()
        .find_map(|t| mirror_in_one_line(t, suite).or_else(|| mirror_in_deb822(t, suite)))
        .unwrap_or_else(|| panic!("no apt source for {suite}: set VALKEYAUTH_DEBIAN_MIRROR"))
}

/// `deb [options] URI SUITE COMPONENTS...`
fn mirror_in_one_line(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace().filter(|w| !w.starts_with('['));
        (words.next()? == "deb").then_some(())?;
        let uri = words.next()?;
        (words.next()? == suite).then(|| uri.to_owned())
    })
}

/// Paragraphs with `Types: deb`, `URIs:` and `Suites:` that list `suite`.
fn mirror_in_deb822(text: &str, suite: &str) -> Option<String> {
    text.split("\n\n").find_map(|para| {
        let value = |key: &str| {
            para.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
        };
        let types = value("Types:")?;
        let suites = value("Suites:")?;
        (types.split_whitespace().any(|t| t == "deb")
            && suites.split_whitespace().any(|s| s == suite))
        .then_some(())?;
        value("URIs:")?.split_whitespace().next().map(str::to_owned)
    })
}

/// The cached tarball of a minbase root of `suite` plus `extra`, built with debootstrap when
/// missing. A file lock keeps two test processes from building it at once.
fn minbase_tarball(suite: &str, extra: &str) -> PathBuf {
    let cache = repo_root().join(".tmp").join("minbase");
    fs::create_dir_all(&cache).expect("create .tmp/minbase");
    let lock = File::create(cache.join("lock")).expect("create .tmp/minbase/lock");
    lock.lock().expect("lock .tmp/minbase/lock");
    let tarball = cache.join(format!("{suite}-minbase-{extra}.tar"));
    if tarball.exists() {
        return tarball;
    }
    let mirror = apt_mirror(suite);
    let root = cache.join(format!("build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let log = cache.join("debootstrap.log");
    let started = Instant::now();
    let status = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={extra}"), suite])
        .arg(&root)
        .arg(&mirror)
        .stdin(Stdio::null())
        .stdout(File::create(&log).expect("create debootstrap.log"))
        .stderr(File::create(cache.join("debootstrap.err")).expect("create debootstrap.err"))
        .status()
        .expect("run debootstrap (run scripts/install-deps.sh)");
    let err = fs::read_to_string(cache.join("debootstrap.err")).unwrap_or_default();
    assert!(
        status.success(),
        "debootstrap {suite} from {mirror} failed ({status}):\n{err}\nsee {}",
        log.display()
    );
    eprintln!(
        "[chroot] debootstrap --variant=minbase --include={extra} {suite} {mirror}: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let partial = tarball.with_extension("tar.partial");
    deb::run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["--numeric-owner", "-cf"])
            .arg(&partial)
            .arg("."),
    );
    fs::rename(&partial, &tarball).expect("move the tarball in place");
    fs::remove_dir_all(&root).expect("remove the debootstrap directory");
    tarball
}

/// A fresh copy of the cached root in a temporary directory.
fn unpack(tarball: &Path) -> TempDir {
    let dir = TempDir::new("chroot");
    let started = Instant::now();
    deb::run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "-xpf"])
            .arg(tarball)
            .arg("-C")
            .arg(dir.path()),
    );
    eprintln!(
        "[chroot] root unpacked in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    dir
}

/// Runs `args` inside `root` with chroot; panics with the output on failure.
fn in_chroot(root: &Path, args: &[&str]) -> String {
    deb::stdout_of(Command::new("chroot").arg(root).args(args))
}

// --------------------------------------------------------------------------------------------
// Valkey inside the root
// --------------------------------------------------------------------------------------------

/// valkey-server running inside a chroot; killed on drop.
struct ChrootValkey {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl ChrootValkey {
    /// Writes /etc/valkey/valkey.conf into `root` (`lines` after the harness's own) and
    /// starts /usr/local/bin/valkey-server with it.
    fn start(root: &Path, lines: &[String]) -> ChrootValkey {
        let port = free_port();
        fs::create_dir_all(root.join("etc/valkey")).expect("mkdir etc/valkey");
        fs::create_dir_all(root.join("var/lib/valkey")).expect("mkdir var/lib/valkey");
        let mut conf = format!(
            "port {port}\nbind 127.0.0.1\ndir /var/lib/valkey\nlogfile /var/log/valkey.log\n\
             daemonize no\nsave \"\"\nappendonly no\n"
        );
        for l in lines {
            conf += l;
            conf.push('\n');
        }
        fs::write(root.join("etc/valkey/valkey.conf"), conf).expect("write valkey.conf");
        let mut cmd = Command::new("chroot");
        cmd.arg(root)
            .args(["/usr/local/bin/valkey-server", "/etc/valkey/valkey.conf"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn(cmd).expect("spawn chroot valkey-server");
        let mut v = ChrootValkey {
            child,
            port,
            log: root.join("var/log/valkey.log"),
        };
        v.wait_ready();
        v
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("valkey-server in the chroot exited ({st}):\n{}", self.log());
            }
            if let Ok(mut c) = RawClient::try_connect(self.port, Duration::from_secs(2)) {
                if c.cmd(&[b"PING"]).is_ok_and(|r| r.text().is_some()) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "valkey-server in the chroot not ready:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn raw(&self) -> RawClient {
        RawClient::connect(self.port)
    }
}

impl Drop for ChrootValkey {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --------------------------------------------------------------------------------------------
// Test
// --------------------------------------------------------------------------------------------

#[test]
fn minbase_root_with_only_libldap_runs_the_packaged_module() {
    deb::require_root("debootstrap and chroot");
    let suite = host_suite();
    let libldap = deb::libldap_package(&module_path());
    // The package build and debootstrap are independent: on a fresh machine, run them side
    // by side.
    let (deb, tarball) = thread::scope(|s| {
        let built = s.spawn(|| deb::package().to_path_buf());
        let tarball = minbase_tarball(&suite, &libldap);
        (built.join().expect("package build"), tarball)
    });
    let root = unpack(&tarball);
    let root = root.path();

    // The root's own dpkg installs the package: it refuses if a declared dependency is
    // missing, and nothing beyond minbase and libldap is there to hide an undeclared one.
    let inside = Path::new("tmp").join(deb.file_name().expect("deb file name"));
    fs::copy(&deb, root.join(&inside)).expect("copy the .deb into the root");
    let inside = format!("/{}", inside.display());
    in_chroot(root, &["dpkg", "-i", &inside]);
    assert!(root
        .join(INSTALLED_MODULE.trim_start_matches('/'))
        .is_file());
    let dev_files = in_chroot(root, &["dpkg-query", "-W", "-f=${Package}\\n"]);
    assert!(
        !dev_files.lines().any(|p| p.ends_with("-dev")),
        "no development package in the root: {dev_files}"
    );

    // The pinned server needs only glibc (ldd: libc, libm, libdl, librt, libpthread).
    let server = root.join("usr/local/bin/valkey-server");
    fs::copy(Version::V9_1.binary(), &server).expect("copy valkey-server into the root");

    let slapd = Slapd::start_default();
    let v = ChrootValkey::start(
        root,
        &[
            format!(
                "loadmodule {INSTALLED_MODULE} servers {} bind_dn_suffix {}",
                slapd.url(),
                conf_quote(BIND_SUFFIX)
            ),
            "user alice on ~* +@all".into(),
        ],
    );
    let mut c = v.raw();
    assert_eq!(
        c.auth(ALICE.name.as_bytes(), ALICE.password.as_bytes()),
        ok(),
        "log:\n{}",
        v.log()
    );
    assert_eq!(c.whoami(), "alice");
    assert_eq!(v.raw().auth(b"alice", b"wrong"), wrongpass());
    assert_eq!(
        v.raw().auth(BOB.name.as_bytes(), BOB.password.as_bytes()),
        wrongpass(),
        "bob has no ACL user"
    );

    // Search+bind too: a second kind of connection (anonymous search, then bind).
    let mut admin = v.raw();
    for (name, value) in [
        ("valkeyauth.auth_mode", "search+bind"),
        ("valkeyauth.search_base", SUFFIX),
    ] {
        let r = admin.call(&[b"CONFIG", b"SET", name.as_bytes(), value.as_bytes()]);
        assert!(r.is_ok(), "CONFIG SET {name}: {r}");
    }
    assert_eq!(
        v.raw()
            .auth(ALICE.name.as_bytes(), ALICE.password.as_bytes()),
        ok(),
        "search+bind; log:\n{}",
        v.log()
    );
    assert_eq!(search_filters(&slapd).len(), 1, "one search");
    let alice_binds = bind_dns(&slapd).iter().filter(|dn| *dn == ALICE.dn).count();
    assert_eq!(
        alice_binds,
        3,
        "right and wrong password, then search+bind: {:?}",
        bind_dns(&slapd)
    );
}

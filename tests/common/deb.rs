//! The Debian package, built from the working tree with `dpkg-buildpackage`, and tools to
//! look into it (`dpkg-deb`, `readelf`).
//!
//! The build runs once per test process, in a copy of the tree under the git-ignored
//! `.tmp/deb/` (dpkg-buildpackage writes into the tree and puts the `.deb` next to it). Its
//! cargo target directory stays there between runs, so only the first build on a machine
//! compiles every crate. A file lock keeps two test processes from building at once.

use super::{repo_root, TempDir};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

/// The binary package's name (debian/control).
pub const PACKAGE: &str = "valkey-valkeyauth";
/// Where the package installs the module.
pub const INSTALLED_MODULE: &str = "/usr/lib/valkey/modules/valkeyauth.so";
/// Where the package installs the sample configuration.
pub const INSTALLED_EXAMPLE: &str = "/usr/share/doc/valkey-valkeyauth/examples/valkeyauth.conf";

/// glibc libraries the module may need (`readelf -d`, NEEDED): libc, libm, libpthread, libdl
/// and the dynamic loader (Rust's thread-locals call `__tls_get_addr` there), plus the unwinder
/// libgcc_s. With OpenLDAP's libldap and liblber ([`needed_is_allowed`]), nothing else may creep
/// in.
pub const ALLOWED_SYSTEM_LIBS: [&str; 6] = [
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "ld-linux-x86-64.so.2",
    "libgcc_s.so.1",
];

/// Whether a NEEDED entry is allowed: glibc and libgcc_s as listed, or OpenLDAP's libldap or
/// liblber under any soname (`libldap-2.5.so.0` on Debian 12, `libldap.so.2` with 2.6).
pub fn needed_is_allowed(lib: &str) -> bool {
    ALLOWED_SYSTEM_LIBS.contains(&lib) || is_openldap(lib, "libldap") || is_openldap(lib, "liblber")
}

/// `libldap.so.2`, `libldap-2.5.so.0`, not `libldapfoo.so`.
pub fn is_openldap(lib: &str, stem: &str) -> bool {
    lib.strip_prefix(stem)
        .is_some_and(|rest| rest.starts_with(".so.") || rest.starts_with('-'))
}

/// Panics with a clear message unless the tests run as root: installing packages, debootstrap
/// and chroot need it (CI runs as root).
pub fn require_root(what: &str) {
    let uid = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        })
        .unwrap_or_default();
    assert_eq!(uid, "0", "{what} needs root");
}

/// `.tmp/deb/` in the repository (git-ignored).
fn work_dir() -> PathBuf {
    repo_root().join(".tmp").join("deb")
}

/// Runs `cmd`, panicking with its output when it cannot start or fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e} (run scripts/install-deps.sh)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// stdout of `cmd`, which must succeed.
pub fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run_ok(cmd).stdout).into_owned()
}

/// The `.deb`, built once per test process. Panics with the end of the build log on failure.
pub fn package() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(build)
}

fn build() -> PathBuf {
    let work = work_dir();
    fs::create_dir_all(&work).expect("create .tmp/deb");
    let lock = File::create(work.join("lock")).expect("create .tmp/deb/lock");
    lock.lock().expect("lock .tmp/deb/lock");

    let src = work.join("src");
    copy_tree(&src);
    for old in debs_in(&work) {
        fs::remove_file(old).expect("remove an old .deb");
    }
    let log_path = work.join("build.log");
    let log = File::create(&log_path).expect("create build.log");
    let started = Instant::now();
    // -b: binary only. -us -uc: nothing to sign. The profile says the Rust toolchain comes
    // from rustup (debian/control). The target directory outlives the copied tree.
    let status = Command::new("dpkg-buildpackage")
        .args(["-b", "-us", "-uc", "-Ppkg.valkeyauth.rustup"])
        .env("DEB_CARGO_TARGET_DIR", work.join("target"))
        .current_dir(&src)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log)
        .status()
        .expect("run dpkg-buildpackage (run scripts/install-deps.sh)");
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        status.success(),
        "dpkg-buildpackage failed ({status}); end of {}:\n{}",
        log_path.display(),
        tail(&text, 60)
    );
    eprintln!(
        "[deb] dpkg-buildpackage took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let debs = debs_in(&work);
    assert_eq!(debs.len(), 1, "expected one .deb in {}", work.display());
    debs.into_iter().next().expect("one .deb")
}

/// Replaces `dst` with the files git would commit (tracked and untracked, not ignored), with
/// their times kept so that cargo sees unchanged files as unchanged.
fn copy_tree(dst: &Path) {
    if dst.exists() {
        fs::remove_dir_all(dst).expect("remove the old copy");
    }
    fs::create_dir_all(dst).expect("create the copy");
    let script = "git ls-files -z -co --exclude-standard \
                  | tar --null --ignore-failed-read -T - -cf - \
                  | tar -xf - -C \"$1\"";
    run_ok(
        Command::new("bash")
            .args(["-o", "pipefail", "-c", script, "copy"])
            .arg(dst)
            .current_dir(repo_root()),
    );
}

fn debs_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read .tmp/deb")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    v.sort();
    v
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The files (not directories) in `deb`, as absolute paths (`/usr/lib/...`).
pub fn files(deb: &Path) -> Vec<String> {
    stdout_of(Command::new("dpkg-deb").arg("--contents").arg(deb))
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect()
}

/// One control field of `deb` (e.g. `Depends`).
pub fn field(deb: &Path, name: &str) -> String {
    stdout_of(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name))
        .trim()
        .to_owned()
}

/// `deb` unpacked into a new temporary directory.
pub fn extract(deb: &Path) -> TempDir {
    let dir = TempDir::new("deb-x");
    run_ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir.path()));
    dir
}

/// The NEEDED entries of an ELF file.
pub fn needed(elf: &Path) -> Vec<String> {
    stdout_of(Command::new("readelf").arg("-d").arg(elf))
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| {
            l.split_once('[')?
                .1
                .split_once(']')
                .map(|(n, _)| n.to_owned())
        })
        .collect()
}

/// Section names of an ELF file (`readelf -S`).
pub fn sections(elf: &Path) -> Vec<String> {
    stdout_of(Command::new("readelf").args(["-S", "-W"]).arg(elf))
        .lines()
        .filter_map(|l| l.split_once(']').map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter(|name| name.starts_with('.'))
        .map(str::to_owned)
        .collect()
}

/// The Debian package that provides the libldap the module links (e.g. `libldap-2.5-0`),
/// found from the library file itself, so that it follows the distribution.
pub fn libldap_package(module: &Path) -> String {
    let ldd = stdout_of(Command::new("ldd").arg(module));
    let lib = ldd
        .lines()
        .find(|l| l.trim_start().starts_with("libldap"))
        .and_then(|l| l.split("=>").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no libldap in ldd output:\n{ldd}"));
    let real = fs::canonicalize(lib).unwrap_or_else(|e| panic!("{lib}: {e}"));
    let owner = stdout_of(Command::new("dpkg").arg("-S").arg(&real));
    owner
        .split(':')
        .next()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| panic!("no package owns {}: {owner}", real.display()))
}

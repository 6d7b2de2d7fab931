//! Probes for OpenLDAP's client libraries (libldap, liblber) and tells cargo
//! how to link them. It only probes: no files are written or copied.
//!
//! 1. `pkg-config` (the binary, or `$PKG_CONFIG`) for the `ldap` and `lber`
//!    modules: version check, then link search paths.
//! 2. Without pkg-config or its .pc files: look for `libldap.so` and
//!    `liblber.so` in the usual library directories, and read the version from
//!    `ldap_features.h` when the header is there.
//! 3. Nothing found: fail, naming the packages to install.
//!
//! Version policy: OpenLDAP >= 2.5 is required; 2.4 fails the build. In 2.4
//! the thread-safe library was the separate `libldap_r`, and plain `libldap`
//! (what `-lldap` picks) is not safe for our one-handle-per-worker-thread
//! use; 2.4 also lacks `LDAP_OPT_TCP_USER_TIMEOUT`, which every connection
//! sets. A version that cannot be read at all (fallback without headers) gives
//! a warning, not a failure.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIN_MAJOR: u32 = 2;
const MIN_MINOR: u32 = 5;

const INSTALL_HINT: &str = "install the OpenLDAP client development files: \
     Debian/Ubuntu `apt-get install libldap-dev pkg-config`, \
     Fedora/RHEL `dnf install openldap-devel pkgconf-pkg-config`";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for var in [
        "PKG_CONFIG",
        "PKG_CONFIG_PATH",
        "PKG_CONFIG_LIBDIR",
        "PKG_CONFIG_SYSROOT_DIR",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let pkg_config_error = match probe_pkg_config() {
        Ok(()) => return,
        Err(reason) => reason,
    };
    println!("cargo:warning=valkeyauth: pkg-config did not find libldap ({pkg_config_error}); searching the usual library directories");

    if let Err(reason) = probe_fallback() {
        panic!(
            "valkeyauth needs libldap and liblber from OpenLDAP >= {MIN_MAJOR}.{MIN_MINOR}.\n\
             pkg-config: {pkg_config_error}\n\
             fallback search: {reason}\n\
             To fix: {INSTALL_HINT}."
        );
    }
}

/// Asks pkg-config. `Err` carries why it could not be used.
fn probe_pkg_config() -> Result<(), String> {
    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());

    let version = run(&pkg_config, &["--modversion", "ldap"])?;
    run(&pkg_config, &["--exists", "lber"])?;
    check_version(&version, "pkg-config `ldap` module")?;

    let search = run(&pkg_config, &["--libs-only-L", "ldap", "lber"])?;
    for flag in search.split_whitespace() {
        if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        }
    }
    println!("cargo:rustc-link-lib=ldap");
    println!("cargo:rustc-link-lib=lber");
    Ok(())
}

/// Looks for the shared libraries in the usual places.
fn probe_fallback() -> Result<(), String> {
    let mut lib_dirs: Vec<PathBuf> = Vec::new();
    if let (Ok(arch), Ok(os)) = (
        env::var("CARGO_CFG_TARGET_ARCH"),
        env::var("CARGO_CFG_TARGET_OS"),
    ) {
        // Debian multiarch triple, e.g. x86_64-linux-gnu, aarch64-linux-gnu.
        lib_dirs.push(PathBuf::from(format!("/usr/lib/{arch}-{os}-gnu")));
    }
    for dir in [
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib64",
        "/usr/local/lib",
    ] {
        lib_dirs.push(PathBuf::from(dir));
    }

    let dir = lib_dirs
        .iter()
        .find(|dir| has_lib(dir, "ldap") && has_lib(dir, "lber"))
        .ok_or_else(|| {
            let searched: Vec<String> = lib_dirs.iter().map(|d| d.display().to_string()).collect();
            format!("no libldap.so + liblber.so in {}", searched.join(", "))
        })?;

    let header = ["/usr/include", "/usr/local/include"]
        .iter()
        .map(|d| Path::new(d).join("ldap_features.h"))
        .find(|p| p.is_file());
    match header {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let version = header_version(&text).ok_or_else(|| {
                format!("no LDAP_VENDOR_VERSION_MAJOR/MINOR in {}", path.display())
            })?;
            check_version(&version, &path.display().to_string())?;
        }
        None => println!(
            "cargo:warning=valkeyauth: found libldap in {} but no ldap_features.h; \
             cannot check that it is OpenLDAP >= {MIN_MAJOR}.{MIN_MINOR}",
            dir.display()
        ),
    }

    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=ldap");
    println!("cargo:rustc-link-lib=lber");
    Ok(())
}

fn has_lib(dir: &Path, name: &str) -> bool {
    dir.join(format!("lib{name}.so")).exists()
}

/// Runs pkg-config; `Ok` holds trimmed stdout.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            stderr.trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// "2.5.13+dfsg-5" / "2.6.10" -> (major, minor).
fn parse_version(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn header_version(text: &str) -> Option<String> {
    let define = |name: &str| -> Option<String> {
        text.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("#define") && words.next() == Some(name))
                .then(|| words.next().map(str::to_string))
                .flatten()
        })
    };
    Some(format!(
        "{}.{}",
        define("LDAP_VENDOR_VERSION_MAJOR")?,
        define("LDAP_VENDOR_VERSION_MINOR")?
    ))
}

fn check_version(version: &str, source: &str) -> Result<(), String> {
    let (major, minor) = parse_version(version)
        .ok_or_else(|| format!("cannot parse OpenLDAP version {version:?} from {source}"))?;
    if (major, minor) < (MIN_MAJOR, MIN_MINOR) {
        panic!(
            "valkeyauth needs OpenLDAP >= {MIN_MAJOR}.{MIN_MINOR}, but {source} is {version}: \
             before 2.5 plain libldap is not thread-safe (that was libldap_r) and lacks \
             options every connection sets. Build on a release that ships 2.5 or 2.6 \
             (Debian 12+, Ubuntu 22.04+, RHEL 9+, Fedora), then {INSTALL_HINT}."
        );
    }
    Ok(())
}

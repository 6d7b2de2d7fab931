//! The Debian package (slow: builds it with dpkg-buildpackage, about 3 minutes on a fresh
//! machine, then seconds): its file list and control fields, a stripped module with only the
//! libraries it declares, no build path anywhere, and a real install on this machine whose
//! module and sample configuration log a directory user in to Valkey 9.1 and 8.1, then a purge
//! (a package already installed by hand is purged too).

mod common;

use common::deb::{self, INSTALLED_EXAMPLE, INSTALLED_MODULE, PACKAGE};
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

// --------------------------------------------------------------------------------------------
// Helpers
// --------------------------------------------------------------------------------------------

/// `version = "..."` of Cargo.toml's [package].
fn cargo_version() -> String {
    let toml = fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
    toml.lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("version in Cargo.toml")
        .to_owned()
}

/// Directories whose names must not appear in anything the package ships: where it was
/// built, the repository, cargo's and rustup's homes, temporary files.
fn build_paths() -> Vec<String> {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let env_or = |name: &str, default: String| std::env::var(name).unwrap_or(default);
    vec![
        repo_root().display().to_string(),
        repo_root().join(".tmp").display().to_string(),
        env_or("CARGO_HOME", format!("{home}/.cargo")),
        env_or("RUSTUP_HOME", format!("{home}/.rustup")),
        home,
        temp_root().display().to_string(),
    ]
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The bytes of `file`, decompressed when it is gzip (dh_compress'ed docs).
fn contents(file: &Path) -> Vec<u8> {
    if file.extension().is_some_and(|x| x == "gz") {
        deb::run_ok(Command::new("zcat").arg(file)).stdout
    } else {
        fs::read(file).expect("read a packaged file")
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Asserts that `so` needs libc, libldap and liblber, and nothing outside the allowed list;
/// returns its NEEDED list.
fn assert_needed_allowed(so: &Path) -> Vec<String> {
    let needed = deb::needed(so);
    for lib in &needed {
        assert!(
            deb::needed_is_allowed(lib),
            "unexpected NEEDED {lib}: {needed:?}"
        );
    }
    let has = |f: &dyn Fn(&str) -> bool| needed.iter().any(|n| f(n));
    assert!(has(&|n| n == "libc.so.6"), "libc: {needed:?}");
    assert!(
        has(&|n| deb::is_openldap(n, "libldap")),
        "libldap: {needed:?}"
    );
    assert!(
        has(&|n| deb::is_openldap(n, "liblber")),
        "liblber: {needed:?}"
    );
    needed
}

fn dpkg_status(package: &str) -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stdin(Stdio::null())
        .output()
        .expect("run dpkg-query");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a dpkg command, waiting (up to 2 minutes) while another dpkg or apt holds its lock.
/// Err carries dpkg's output.
fn dpkg(args: &[&str]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = Command::new("dpkg")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run dpkg: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("lock") && Instant::now() < deadline {
            thread::sleep(Duration::from_secs(1));
            continue;
        }
        return Err(format!(
            "dpkg {args:?} failed ({}):\n{}{err}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        ));
    }
}

/// The package installed on this machine; purged when dropped, also when the test fails, so
/// that the machine is left as it was.
struct Installed;

impl Installed {
    fn install(deb: &Path) -> Installed {
        dpkg(&["-i", deb.to_str().expect("utf-8 path")]).unwrap_or_else(|e| panic!("{e}"));
        Installed
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        // No panic here: it may run while a failed test unwinds.
        if let Err(e) = dpkg(&["--purge", PACKAGE]) {
            eprintln!("[package] could not purge {PACKAGE}: {e}");
        }
    }
}

/// The installed sample configuration, pointed at `slapd`: its example servers and suffix
/// replaced, nothing else changed.
fn sample_config_for(slapd: &Slapd, dir: &Path) -> PathBuf {
    let text = fs::read_to_string(INSTALLED_EXAMPLE).expect("installed sample configuration");
    let servers = "\"ldaps://ldap1.example.com ldaps://ldap2.example.com\"";
    assert!(text.contains(servers), "{text}");
    let text = text
        .replace(servers, &slapd.url())
        .replace("dc=example,dc=com", "dc=example,dc=test");
    let path = dir.join("valkeyauth.conf");
    fs::write(&path, text).expect("write the sample configuration");
    path
}

// --------------------------------------------------------------------------------------------
// Tests
// --------------------------------------------------------------------------------------------

#[test]
fn package_file_list_and_control_fields() {
    let deb = deb::package();
    let mut files = deb::files(deb);
    files.sort();
    let doc = "/usr/share/doc/valkey-valkeyauth";
    // The vendor notes the README points to, each as it is or compressed by dh_compress.
    let notes_dir = format!("{doc}/vendor-notes/");
    let (notes, files): (Vec<String>, Vec<String>) =
        files.into_iter().partition(|f| f.starts_with(&notes_dir));
    for entry in fs::read_dir(repo_root().join("vendor-notes")).expect("vendor-notes/") {
        let name = entry.expect("vendor-notes entry").file_name();
        let name = name.to_str().expect("UTF-8 name");
        let plain = format!("{notes_dir}{name}");
        assert!(
            notes.contains(&plain) || notes.contains(&format!("{plain}.gz")),
            "vendor-notes/{name} is not in the package: {notes:?}"
        );
    }
    assert_eq!(
        notes.len(),
        fs::read_dir(repo_root().join("vendor-notes"))
            .unwrap()
            .count()
    );
    let mut want = vec![
        INSTALLED_MODULE.to_owned(),
        format!("{doc}/README.md.gz"),
        format!("{doc}/changelog.gz"),
        format!("{doc}/copyright"),
        INSTALLED_EXAMPLE.to_owned(),
    ];
    want.sort();
    assert_eq!(files, want, "dpkg-deb --contents {}", deb.display());

    assert_eq!(deb::field(deb, "Package"), PACKAGE);
    assert_eq!(
        deb::field(deb, "Version"),
        cargo_version(),
        "debian/changelog"
    );
    // Depends comes from dh_shlibdeps: the libldap runtime package of this distribution.
    let depends = deb::field(deb, "Depends");
    let libldap = deb::libldap_package(&module_path());
    for dep in ["libc6", "libgcc-s1", libldap.as_str()] {
        assert!(
            depends.split(',').any(|d| d.trim().starts_with(dep)),
            "{dep} in Depends: {depends}"
        );
    }
    let control = fs::read_to_string(repo_root().join("debian/control")).expect("debian/control");
    let depends_line = control
        .lines()
        .find(|l| l.starts_with("Depends:"))
        .expect("Depends in debian/control");
    assert!(
        depends_line.contains("${shlibs:Depends}") && !depends_line.contains("ldap"),
        "debian/control must leave library dependencies to dh_shlibdeps: {depends_line}"
    );
}

#[test]
fn packaged_module_is_stripped_and_needs_only_libc_and_libldap() {
    let x = deb::extract(deb::package());
    let so = x.path().join(INSTALLED_MODULE.trim_start_matches('/'));
    let needed = assert_needed_allowed(&so);
    eprintln!("[package] NEEDED: {needed:?}");
    let sections = deb::sections(&so);
    assert!(
        !sections
            .iter()
            .any(|s| s == ".symtab" || s.starts_with(".debug")),
        "not stripped: {sections:?}"
    );
}

#[test]
fn the_ordinary_build_needs_only_libc_and_libldap() {
    // The same list for target/release, so that a new dependency fails here first, without
    // waiting for a package build.
    assert_needed_allowed(&module_path());
    // The list itself: OpenLDAP under either soname, nothing that merely looks like it.
    for lib in ["libldap.so.2", "liblber-2.5.so.0", "libgcc_s.so.1"] {
        assert!(deb::needed_is_allowed(lib), "{lib}");
    }
    for lib in [
        "libssl.so.3",
        "libldapx.so.1",
        "libstdc++.so.6",
        "libsasl2.so.2",
    ] {
        assert!(!deb::needed_is_allowed(lib), "{lib}");
    }
}

#[test]
fn package_holds_no_build_path() {
    let x = deb::extract(deb::package());
    let forbidden = build_paths();
    let files = walk(x.path());
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        let bytes = contents(&file);
        for path in &forbidden {
            assert!(
                !find(&bytes, path.as_bytes()),
                "{} contains the build path {path}",
                file.display()
            );
        }
    }
}

#[test]
fn installed_package_logs_a_directory_user_in_and_purges_cleanly() {
    deb::require_root("dpkg -i");
    let deb = deb::package();
    let slapd = Slapd::start_default();
    {
        let _installed = Installed::install(deb);
        assert!(dpkg_status(PACKAGE).contains("install ok installed"));
        assert!(Path::new(INSTALLED_MODULE).is_file());

        // Valkey 9.1 with the installed sample configuration, as an operator would use it:
        // `include` it from valkey.conf (it loads the installed module itself).
        let dir = TempDir::new("package");
        let conf = sample_config_for(&slapd, dir.path());
        let v = Valkey::builder()
            .no_module()
            .config(format!("include {}", conf_quote(conf.to_str().unwrap())))
            .config("user alice on ~* +@all")
            .start();
        let modules = v.raw().call(&[b"MODULE", b"LIST"]);
        let loaded_from = |m: &Reply| m.get("path").and_then(Reply::text);
        let paths: Vec<String> = match &modules {
            Reply::Array(list) => list.iter().filter_map(loaded_from).collect(),
            other => panic!("MODULE LIST: {other}"),
        };
        assert!(paths.iter().any(|p| p == INSTALLED_MODULE), "{paths:?}");
        let (r, mut c) = login(&v, ALICE.name, ALICE.password);
        assert_eq!(r, ok(), "log:\n{}", v.log());
        assert_eq!(c.whoami(), "alice");
        assert_eq!(login(&v, ALICE.name, "wrong").0, wrongpass());
        assert_eq!(bind_dns(&slapd).first().map(String::as_str), Some(ALICE.dn));
        assert_outcomes(&v, &[("allowed", 1), ("denied_bad_credentials", 1)]);

        // The same installed module under Valkey 8.1, the other tested version.
        let v81 = Valkey::builder()
            .version(Version::V8_1)
            .no_module()
            .config(format!("include {}", conf_quote(conf.to_str().unwrap())))
            .config("user alice on ~* +@all")
            .start();
        assert_eq!(login(&v81, ALICE.name, ALICE.password).0, ok());
        assert_eq!(login(&v81, ALICE.name, "wrong").0, wrongpass());
    }
    // Purged: nothing of the package is left.
    let status = dpkg_status(PACKAGE);
    assert!(
        !status.contains("ok installed") && !status.contains("config-files"),
        "after the purge: {status:?}"
    );
    assert!(!Path::new(INSTALLED_MODULE).exists());
    assert!(!Path::new("/usr/share/doc/valkey-valkeyauth").exists());
}

//! 389 Directory Server (also Red Hat Directory Server and FreeIPA's directory): bind mode,
//! search+bind with a service account, and an empty password refused before any bind (389-DS
//! itself answers one with 53, unwilling to perform).
//!
//! One instance per test binary, created with `dscreate` under a private prefix (nothing in
//! /etc, /var or /run) and run in the foreground (`ns-slapd -d 0`) in a network namespace of
//! its own, so it may listen on every address; Valkey runs in the same namespace.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

const MANAGER_PW: &str = "Directory-Manager-pw";
const PEOPLE_389: &str = "ou=people,dc=example,dc=test";

fn pw(name: &str) -> String {
    format!("{name}-Pass-389")
}

struct Ds {
    dir: TempDir,
    /// `ns-slapd`, in its own network namespace.
    child: Mutex<Child>,
    pid: u32,
    svc_pw_file: PathBuf,
    valkey_wrapper: PathBuf,
}

fn ds() -> &'static Ds {
    static DS: OnceLock<Result<Ds, String>> = OnceLock::new();
    DS.get_or_init(|| {
        std::panic::catch_unwind(Ds::start).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "Ds::start panicked".to_owned())
        })
    })
    .as_ref()
    .unwrap_or_else(|e| panic!("no 389-DS: {e}"))
}

/// Joins the instance's network namespace (see `common::netns`).
fn join_ds() -> &'static Ds {
    let ds = ds();
    netns::enter(ds.pid);
    ds
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (run scripts/install-deps.sh)"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// dscreate's `defaults.inf` with every path that an instance writes moved under `root`, and
/// no systemd.
fn private_defaults(root: &Path) -> String {
    let system = fs::read_to_string("/usr/share/dirsrv/inf/defaults.inf")
        .expect("read /usr/share/dirsrv/inf/defaults.inf (Debian package 389-ds-base)");
    let r = root.display();
    let moved = [
        ("with_systemd = 1", "with_systemd = 0".to_owned()),
        ("= /etc", format!("= {r}/etc")),
        ("= /var/log/dirsrv", format!("= {r}/log")),
        ("= /var/lib/dirsrv", format!("= {r}/lib")),
        ("= /var", format!("= {r}/var")),
        ("= /run/lock/dirsrv", format!("= {r}/lock")),
        ("= /run/dirsrv", format!("= {r}/run")),
        ("= /run", format!("= {r}/run")),
        ("= /dev/shm", format!("= {r}/shm")),
        ("= /tmp", format!("= {r}/tmp")),
    ];
    system
        .lines()
        .map(|line| {
            let line = moved
                .iter()
                .find(|(from, _)| line.contains(from))
                .map_or(line.to_owned(), |(from, to)| line.replacen(from, to, 1));
            format!("{line}\n")
        })
        .collect()
}

const ENTRIES: &str = "\
dn: ou=people,dc=example,dc=test
objectClass: top
objectClass: organizationalUnit
ou: people

dn: uid=svc,ou=people,dc=example,dc=test
objectClass: top
objectClass: inetOrgPerson
uid: svc
cn: svc
sn: svc
userPassword: svc-Pass-389

dn: uid=alice,ou=people,dc=example,dc=test
objectClass: top
objectClass: inetOrgPerson
uid: alice
cn: alice
sn: alice
userPassword: alice-Pass-389

dn: uid=bob,ou=people,dc=example,dc=test
objectClass: top
objectClass: inetOrgPerson
uid: bob
cn: bob
sn: bob
userPassword: bob-Pass-389

dn: uid=carol,ou=people,dc=example,dc=test
objectClass: top
objectClass: inetOrgPerson
uid: carol
cn: carol
sn: carol
userPassword: carol-Pass-389

dn: dc=example,dc=test
changetype: modify
add: aci
aci: (targetattr=\"*\")(version 3.0; acl \"svc searches\"; allow (read,search,compare) userdn=\"ldap:///uid=svc,ou=people,dc=example,dc=test\";)
";

/// The instance name: per test process, because ns-slapd keeps a named semaphore for it in
/// /dev/shm (`sem.slapd-<name>.stats`) that outlives the process.
fn instance() -> String {
    format!("va{}", std::process::id())
}

/// Removes the semaphores of instances whose test process is gone.
fn sweep_stale_semaphores() {
    let Ok(entries) = fs::read_dir("/dev/shm") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("sem.slapd-va")
            .and_then(|rest| rest.strip_suffix(".stats"))
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

impl Ds {
    fn start() -> Ds {
        sweep_stale_semaphores();
        let instance = instance();
        let dir = TempDir::new("389ds");
        let root = dir.path().join("root");
        let inf_dir = root.join("share/dirsrv/inf");
        fs::create_dir_all(&inf_dir).expect("mkdir");
        fs::write(inf_dir.join("defaults.inf"), private_defaults(&root)).expect("defaults.inf");
        for sub in [
            "run",
            "lock",
            "log",
            "lib",
            "shm",
            "tmp",
            "var",
            "etc/default",
            "etc/tmpfiles.d",
        ] {
            fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        // dscreate copies the schema and config templates from <sysconf_dir>/dirsrv.
        run(
            Command::new("cp")
                .arg("-r")
                .arg("/etc/dirsrv")
                .arg(root.join("etc")),
            "copy /etc/dirsrv",
        );
        run(
            Command::new("chown")
                .args(["-R", "dirsrv:dirsrv"])
                .arg(&root),
            "chown",
        );
        // ns-slapd runs as dirsrv: it must reach its files through the temp directories.
        run(
            Command::new("chmod")
                .args(["755"])
                .arg(dir.path())
                .arg(temp_root()),
            "chmod",
        );
        let inf = dir.path().join("instance.inf");
        fs::write(
            &inf,
            format!(
                "[general]\nfull_machine_name = localhost\nstart = False\n\
                 strict_host_checking = False\n[slapd]\ninstance_name = {instance}\nport = 389\n\
                 root_password = {MANAGER_PW}\nself_sign_cert = False\n\
                 [backend-userroot]\nsample_entries = no\nsuffix = {SUFFIX}\n\
                 create_suffix_entry = True\n"
            ),
        )
        .expect("instance.inf");
        // dscreate starts the server once to configure it, on every address: in a throwaway
        // network namespace.
        run(
            netns::unshare_command(&format!("exec dscreate from-file '{}'", inf.display()))
                .env("PREFIX", &root),
            "dscreate from-file",
        );

        let config = root.join(format!("etc/dirsrv/slapd-{instance}"));
        // As root (not dirsrv) ns-slapd keeps the parent-death signal that `common::spawn`
        // sets (a change of user clears it), so it dies with the test binary.
        let dse = config.join("dse.ldif");
        let text = fs::read_to_string(&dse).expect("read dse.ldif");
        assert!(
            text.contains("nsslapd-localuser: dirsrv"),
            "dse.ldif names no user"
        );
        fs::write(
            &dse,
            text.replace("nsslapd-localuser: dirsrv", "nsslapd-localuser: root"),
        )
        .expect("write dse.ldif");
        let log = fs::File::create(dir.path().join("ns-slapd.out")).expect("log");
        let mut cmd = netns::unshare_command(&format!(
            "exec /usr/sbin/ns-slapd -D '{}' -i '{}' -d 0",
            config.display(),
            root.join("run/ns-slapd.pid").display()
        ));
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone"))
            .stderr(log);
        let child = spawn(cmd).expect("spawn ns-slapd");
        let pid = child.id();
        netns::wait_until_unshared(pid);
        let svc_pw_file = dir.path().join("svc.pw");
        fs::write(&svc_pw_file, pw("svc")).expect("svc.pw");
        fs::set_permissions(
            &svc_pw_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        let ds = Ds {
            valkey_wrapper: netns::valkey_wrapper(dir.path(), pid),
            dir,
            child: Mutex::new(child),
            pid,
            svc_pw_file,
        };
        ds.wait_ready();
        ds.add_entries();
        ds
    }

    fn in_netns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let pid = self.pid;
        thread::spawn(move || {
            netns::enter(pid);
            f()
        })
        .join()
        .expect("thread in the instance's namespace")
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        let ready = self.in_netns(|| {
            let deadline = Instant::now() + START_TIMEOUT;
            let mut last = None;
            while Instant::now() < deadline {
                match ldap_simple_bind(389, "", "", Duration::from_secs(2)) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = Some(e),
                }
                thread::sleep(Duration::from_millis(50));
            }
            Err(last)
        });
        let exited = self.child.lock().unwrap().try_wait();
        assert!(
            ready.is_ok() && matches!(exited, Ok(None)),
            "ns-slapd did not start after {:?} ({exited:?}, {ready:?}); log:\n{}",
            started.elapsed(),
            fs::read_to_string(self.dir.path().join("ns-slapd.out")).unwrap_or_default()
        );
    }

    fn add_entries(&self) {
        let ldif = self.dir.path().join("entries.ldif");
        fs::write(&ldif, ENTRIES).expect("entries.ldif");
        run(
            Command::new("nsenter")
                .arg(format!("--net=/proc/{}/ns/net", self.pid))
                .args(["ldapmodify", "-a", "-x", "-H", "ldap://127.0.0.1:389"])
                .args(["-D", "cn=Directory Manager", "-w", MANAGER_PW, "-f"])
                .arg(&ldif),
            "ldapmodify",
        );
    }

    fn valkey(&self, args: Vec<String>) -> Valkey {
        Valkey::builder()
            .binary(&self.valkey_wrapper)
            .module(args)
            .start()
    }

    /// Valkey in bind mode against this server: `uid=<username>,ou=people,...`.
    fn bind_mode_valkey(&self) -> Valkey {
        let suffix = format!(",{PEOPLE_389}");
        let args = [
            "servers",
            "ldap://127.0.0.1",
            "bind_dn_prefix",
            "uid=",
            "bind_dn_suffix",
            &suffix,
        ];
        self.valkey(args.map(String::from).to_vec())
    }
}

fn assert_login(v: &Valkey, user: &str, password: &str) {
    let r = v.raw().auth(user.as_bytes(), password.as_bytes());
    assert!(r.is_ok(), "AUTH {user}: {r}\nlog:\n{}", v.log());
}

fn assert_refused(v: &Valkey, user: &str, password: &str) {
    let r = v.raw().auth(user.as_bytes(), password.as_bytes());
    assert_eq!(r, wrongpass(), "AUTH {user:?}");
}

#[test]
fn bind_mode_logins() {
    let ds = join_ds();
    let v = ds.bind_mode_valkey();
    add_acl_users(&v, &["alice", "bob", "nobody"]);
    assert_login(&v, "alice", &pw("alice"));
    assert_refused(&v, "bob", &pw("alice"));
    assert_refused(&v, "nobody", "x");
    assert_eq!(info_field(&v, "allowed"), 1);
    assert_eq!(info_field(&v, "denied_bad_credentials"), 2);
}

#[test]
fn search_bind_logins_with_a_service_account() {
    let ds = join_ds();
    let svc = format!("uid=svc,{PEOPLE_389}");
    let pw_file = ds.svc_pw_file.to_str().expect("utf-8").to_owned();
    let v = ds.valkey(search_args(
        "ldap://127.0.0.1",
        &[
            "search_filter",
            "(objectClass=inetOrgPerson)",
            "search_bind_dn",
            &svc,
            "search_bind_passwd_file",
            &pw_file,
        ],
    ));
    add_acl_users(&v, &["alice", "bob", "nobody"]);
    assert_login(&v, "alice", &pw("alice"));
    assert_login(&v, "bob", &pw("bob"));
    assert_refused(&v, "bob", "wrong");
    assert_refused(&v, "nobody", "x");
    assert_eq!(info_field(&v, "allowed"), 2);
    assert_eq!(info_field(&v, "denied_unknown_user"), 1);
    assert_eq!(info_field(&v, "denied_bad_credentials"), 1);
}

/// 389-DS answers an empty-password bind with 53; the module never sends one.
#[test]
fn empty_password_refused_without_a_bind() {
    let ds = join_ds();
    let alice = format!("uid=alice,{PEOPLE_389}");
    assert_eq!(
        ldap_simple_bind(389, &alice, "", Duration::from_secs(5)).unwrap(),
        53
    );
    let v = ds.bind_mode_valkey();
    add_acl_users(&v, &["alice"]);
    assert_refused(&v, "alice", "");
    assert_eq!(info_field(&v, "denied_empty_password"), 1);
    assert_eq!(info_field(&v, "denied_bad_credentials"), 0);
}

/// 389-DS's lockout (`passwordLockout`): after 3 bad passwords the account is refused even with
/// the right one, with constraintViolation (19): a deny with reason `account_locked`, not an
/// outage.
#[test]
fn locked_account_is_a_deny() {
    let ds = join_ds();
    let ldif = ds.dir.path().join("lockout.ldif");
    fs::write(
        &ldif,
        "dn: cn=config\nchangetype: modify\nreplace: passwordLockout\npasswordLockout: on\n-\n\
         replace: passwordMaxFailure\npasswordMaxFailure: 3\n",
    )
    .expect("lockout.ldif");
    run(
        Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", ds.pid))
            .args(["ldapmodify", "-x", "-H", "ldap://127.0.0.1:389"])
            .args(["-D", "cn=Directory Manager", "-w", MANAGER_PW, "-f"])
            .arg(&ldif),
        "ldapmodify cn=config",
    );
    let v = ds.bind_mode_valkey();
    add_acl_users(&v, &["carol"]);
    for _ in 0..3 {
        assert_refused(&v, "carol", "wrong");
    }
    assert_refused(&v, "carol", &pw("carol"));
    assert_eq!(info_field(&v, "denied_account_locked"), 1);
    assert_eq!(info_field(&v, "denied_bad_credentials"), 3);
    assert_eq!(info_field(&v, "outage_directory_error"), 0);
}

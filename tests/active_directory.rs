//! Active Directory, through Samba's AD domain controller (a real AD-protocol server that
//! refuses simple binds without TLS, returns references from the domain root, has no "Who am
//! I?" and explains bind failures with `data <code>`).
//!
//! The DC listens on fixed ports (389, 636, ...), so it runs in a network namespace of its own
//! (`unshare --net`), provisioned once per test binary and shared by every test here. Each test
//! thread joins that namespace (`setns`), so its ports, clients and `127.0.0.1` are the DC's;
//! valkey-server is started there too (`nsenter --net`), so the module reaches the DC at
//! `ldap://127.0.0.1` with StartTLS and a certificate for `IP:127.0.0.1`.
//!
//! Tests use distinct accounts, so that they can run in parallel against the one DC.

mod common;

use common::pki::Pki;
use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

const REALM: &str = "corp.example.test";
const DOMAIN_ROOT: &str = "DC=corp,DC=example,DC=test";
const USERS: &str = "CN=Users,DC=corp,DC=example,DC=test";

/// Every account's password: its name with a capital, then `-Pass1!` (AD's complexity rules).
fn pw(name: &str) -> String {
    let mut chars = name.chars();
    let first = chars.next().expect("a name").to_ascii_uppercase();
    format!("{first}{}-Pass1!", chars.as_str())
}

// ---- the domain controller --------------------------------------------------------------------

/// Accounts and groups, made with Samba's own Python bindings in one process (one `samba-tool`
/// call per change would take seconds):
/// - alice ∈ staff ∈ ops (nested); bob, carol, dave, erin: no groups; svc: the service account;
/// - dis: disabled (533); exp: account expired (701); mcp: must change its password (773);
///   pexp: password expired (532, `pwdLastSet` in 1970 with a 42-day maximum age); lck: for
///   lockout (775), with the domain's lockout threshold at 3 bad passwords.
const ACCOUNTS_PY: &str = r#"
import sys, time, ldb
from samba.samdb import SamDB
from samba.auth import system_session
from samba.param import LoadParm

lp = LoadParm()
lp.load(sys.argv[1])
db = SamDB(url=lp.private_path("sam.ldb"), session_info=system_session(), lp=lp)

def pw(name):
    return name[0].upper() + name[1:] + "-Pass1!"

def replace(dn, attr, value, controls=()):
    m = ldb.Message()
    m.dn = dn
    m[attr] = ldb.MessageElement(value, ldb.FLAG_MOD_REPLACE, attr)
    db.modify(m, controls=list(controls))

def user_dn(name):
    return db.search(base=db.domain_dn(), expression="(sAMAccountName=%s)" % name, attrs=[])[0].dn

for name in ["alice", "bob", "carol", "dave", "erin", "svc", "dis", "exp", "mcp", "pexp", "lck"]:
    db.newuser(name, pw(name))
db.newgroup("staff")
db.newgroup("ops")
db.add_remove_group_members("staff", ["alice"], add_members_operation=True)
db.add_remove_group_members("ops", ["staff"], add_members_operation=True)
db.disable_account("(sAMAccountName=dis)")
yesterday = int((time.time() - 86400 + 11644473600) * 10**7)
replace(user_dn("exp"), "accountExpires", str(yesterday))
replace(user_dn("mcp"), "pwdLastSet", "0")
# Only with this control does Samba take a pwdLastSet other than 0 or -1.
replace(user_dn("pexp"), "pwdLastSet", "116444736000000000",
        ["local_oid:1.3.6.1.4.1.7165.4.3.20:0"])
replace(ldb.Dn(db, db.domain_dn()), "lockoutThreshold", "3")
"#;

struct Dc {
    dir: TempDir,
    pki: Pki,
    /// The `samba` process; its network namespace is the DC's.
    child: Mutex<Child>,
    pid: u32,
    svc_pw_file: PathBuf,
    /// `valkey-server` started inside the DC's namespace.
    valkey_wrapper: PathBuf,
}

/// The one DC of this test binary, provisioned and started on first use; if that fails, every
/// test fails with the same reason instead of trying again. The process dies with the test
/// binary (PR_SET_PDEATHSIG, see `common::spawn`); the next run sweeps its directory.
fn dc() -> &'static Dc {
    static DC: OnceLock<Result<Dc, String>> = OnceLock::new();
    let dc = DC.get_or_init(|| {
        let started = Instant::now();
        let dc = std::panic::catch_unwind(Dc::start).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "Dc::start panicked".to_owned())
        });
        eprintln!("samba AD DC started in {:?}", started.elapsed());
        dc
    });
    dc.as_ref()
        .unwrap_or_else(|e| panic!("no samba AD DC: {e}"))
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

impl Dc {
    fn start() -> Dc {
        let dir = TempDir::new("samba-ad");
        let pki = Pki::new();
        let target = dir.path().join("dc");
        let conf = target.join("etc/smb.conf");
        run(
            Command::new("samba-tool").args([
                "domain",
                "provision",
                &format!("--targetdir={}", target.display()),
                "--realm=CORP.EXAMPLE.TEST",
                "--domain=CORP",
                "--server-role=dc",
                "--use-rfc2307",
                "--dns-backend=NONE",
                "--adminpass=Adm1n-Pass!",
                "--host-ip=127.0.0.1",
                "--option=interfaces=127.0.0.1",
                "--option=bind interfaces only=yes",
            ]),
            "samba-tool domain provision",
        );
        // Without a DH parameters file Samba generates 2048-bit ones at start, which takes
        // from 1 to over 30 seconds; the RFC 7919 group is instant and as good.
        let dh = dir.path().join("dh.pem");
        run(
            Command::new("openssl")
                .args(["genpkey", "-genparam", "-algorithm", "DH"])
                .args([
                    "-pkeyopt",
                    "dh_param:ffdhe2048",
                    "-out",
                    dh.to_str().expect("utf-8"),
                ]),
            "openssl genpkey",
        );
        // The LDAP service does not start at all with a key that others can read.
        let key = dir.path().join("dc.key");
        fs::copy(pki.path("server.key"), &key).expect("copy key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod key");
        let global = format!(
            "[global]\n\tserver services = ldap\n\tlog file = {}\n\tpid directory = {}\n\
             \ttls enabled = yes\n\ttls keyfile = {}\n\ttls certfile = {}\n\ttls cafile = {}\n\
             \ttls dh params file = {}\n",
            dir.path().join("samba.log").display(),
            target.display(),
            key.display(),
            pki.arg("server.pem"),
            pki.arg("ca.pem"),
            dh.display(),
        );
        // Provision ignores some options: replace what it wrote for them.
        let text = fs::read_to_string(&conf).expect("read smb.conf");
        let text: String = text
            .lines()
            .filter(|l| {
                let l = l.trim_start();
                !l.starts_with("server services") && !l.starts_with("log file")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(&conf, text.replacen("[global]\n", &global, 1)).expect("write smb.conf");

        let script = dir.path().join("accounts.py");
        fs::write(&script, ACCOUNTS_PY).expect("write accounts.py");
        // Samba's bindings belong to Debian's Python, whatever `python3` is first on PATH.
        run(
            Command::new("/usr/bin/python3").arg(&script).arg(&conf),
            "create accounts",
        );

        let svc_pw_file = dir.path().join("svc.pw");
        fs::write(&svc_pw_file, pw("svc")).expect("write svc.pw");
        fs::set_permissions(&svc_pw_file, fs::Permissions::from_mode(0o600)).expect("chmod");

        let log = fs::File::create(dir.path().join("samba.out")).expect("samba.out");
        // One process (`-M single`).
        let mut cmd = netns::unshare_command(&format!(
            "exec samba -s '{}' -F -M single --debug-stdout",
            conf.display()
        ));
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone"))
            .stderr(log);
        let child = spawn(cmd).expect("spawn samba");
        let pid = child.id();
        netns::wait_until_unshared(pid);

        let valkey_wrapper = netns::valkey_wrapper(dir.path(), pid);

        let dc = Dc {
            dir,
            pki,
            child: Mutex::new(child),
            pid,
            svc_pw_file,
            valkey_wrapper,
        };
        dc.wait_ready();
        dc
    }

    /// Ready when the LDAP service answers a bind (in the DC's namespace, on a thread of its
    /// own so that the caller's namespace does not change).
    fn wait_ready(&self) {
        let pid = self.pid;
        let ready = thread::spawn(move || {
            netns::enter(pid);
            let deadline = Instant::now() + START_TIMEOUT;
            while Instant::now() < deadline {
                if ldap_simple_bind(389, "", "", Duration::from_secs(2)).is_ok() {
                    return true;
                }
                thread::sleep(Duration::from_millis(50));
            }
            false
        });
        let ready = ready.join().expect("readiness thread");
        let exited = self.child.lock().unwrap().try_wait().ok().flatten();
        assert!(
            ready && exited.is_none(),
            "samba did not start ({exited:?}); log:\n{}",
            fs::read_to_string(self.dir.path().join("samba.out")).unwrap_or_default()
        );
    }

    fn ca(&self) -> String {
        self.pki.arg("ca.pem")
    }

    /// Module arguments: the DC over StartTLS with its CA, workers and health checks quick.
    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "servers",
            "ldap://127.0.0.1",
            "use_starttls",
            "yes",
            "tls_ca_cert_path",
            &self.ca(),
            "workers",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Search+bind as svc from the domain root by `sAMAccountName`.
    fn search_args(&self, extra: &[&str]) -> Vec<String> {
        let svc = format!("CN=svc,{USERS}");
        let pw_file = self.svc_pw_file.to_str().expect("utf-8").to_owned();
        let mut args = vec![
            "auth_mode",
            "search+bind",
            "search_base",
            DOMAIN_ROOT,
            "search_filter",
            "(objectClass=user)",
            "search_attribute",
            "sAMAccountName",
            "search_bind_dn",
            &svc,
            "search_bind_passwd_file",
            &pw_file,
        ];
        args.extend_from_slice(extra);
        self.args(&args)
    }

    /// Valkey 9.1 in the DC's namespace with the module loaded with `args`; the calling test
    /// thread must have joined the namespace ([`join_dc`]).
    fn valkey(&self, args: Vec<String>) -> Valkey {
        Valkey::builder()
            .binary(&self.valkey_wrapper)
            .module(args)
            .start()
    }
}

/// Makes the calling thread's network namespace the DC's (its sockets, `free_port`, and
/// every client it opens), starting the DC first if needed.
fn join_dc() -> &'static Dc {
    let dc = dc();
    netns::enter(dc.pid);
    dc
}

// ---- helpers ----------------------------------------------------------------------------------

fn login_reply(v: &Valkey, user: &str, password: &str) -> Reply {
    v.raw().auth(user.as_bytes(), password.as_bytes())
}

fn assert_login(v: &Valkey, user: &str, password: &str) {
    let r = login_reply(v, user, password);
    assert!(r.is_ok(), "AUTH {user}: {r}\nlog:\n{}", v.log());
}

fn assert_refused(v: &Valkey, user: &str, password: &str) {
    assert_eq!(login_reply(v, user, password), wrongpass(), "AUTH {user:?}");
}

fn assert_allowed(r: &Reply, context: &str) {
    assert!(r.error().is_none(), "{context}: expected success, got {r}");
}

fn assert_noperm(r: &Reply, context: &str) {
    assert!(
        r.error().is_some_and(|e| e.starts_with("NOPERM")),
        "{context}: expected NOPERM, got {r}"
    );
}

fn set(v: &Valkey, name: &str, value: &str) {
    config_set_ok(v, &format!("valkeyauth.{name}"), value);
}

// ---- bind mode --------------------------------------------------------------------------------

/// The recipes AD administrators write: UPN (`""` + user + `@realm`) and down-level
/// (`CORP\` + user); and a full DN for comparison.
#[test]
fn upn_and_down_level_binds() {
    let dc = join_dc();
    let suffix = format!("@{REALM}");
    let v = dc.valkey(dc.args(&["bind_dn_prefix", "", "bind_dn_suffix", &suffix]));
    add_acl_users(&v, &["alice", "bob"]);
    assert_login(&v, "alice", &pw("alice"));
    assert_refused(&v, "bob", "wrong");

    set(&v, "bind_dn_prefix", "CORP\\");
    set(&v, "bind_dn_suffix", "");
    assert_login(&v, "alice", &pw("alice"));
    assert_refused(&v, "alice", &pw("bob"));

    set(&v, "bind_dn_prefix", "CN=");
    set(&v, "bind_dn_suffix", &format!(",{USERS}"));
    assert_login(&v, "alice", &pw("alice"));
    assert_eq!(info_field(&v, "allowed"), 3);
    assert_eq!(info_field(&v, "denied_bad_credentials"), 2);
}

/// A username can never name another account: with alice's password, usernames that would
/// move the realm or the domain (or that AD forbids in account names) are refused without a
/// bind, under both recipes.
#[test]
fn usernames_cannot_change_the_bound_account() {
    let dc = join_dc();
    let suffix = format!("@{REALM}");
    let v = dc.valkey(dc.args(&["bind_dn_prefix", "", "bind_dn_suffix", &suffix]));
    let alice = pw("alice");
    let tricks = [
        format!("alice@{REALM}"),
        "alice@corp".to_owned(),
        "CORP\\alice".to_owned(),
        "x\\alice".to_owned(),
        "alice,CN=Users".to_owned(),
        "CN=alice".to_owned(),
        "alice/x".to_owned(),
        "ali*".to_owned(),
    ];
    add_acl_users(&v, &tricks);
    for user in &tricks {
        assert_refused(&v, user, &alice);
    }
    set(&v, "bind_dn_prefix", "CORP\\");
    set(&v, "bind_dn_suffix", "");
    for user in &tricks {
        assert_refused(&v, user, &alice);
    }
    let refused = 2 * tricks.len() as u64;
    assert_eq!(info_field(&v, "denied_invalid_username"), refused);
    assert_eq!(info_field(&v, "denied_bad_credentials"), 0);
    assert_eq!(info_field(&v, "allowed"), 0);
}

// ---- search+bind ------------------------------------------------------------------------------

/// The service account finds the user by `sAMAccountName` (then by `userPrincipalName`) from
/// the domain root, whose answer holds references besides the one entry, over StartTLS with a
/// verified certificate.
#[test]
fn search_bind_by_account_name_over_starttls() {
    let dc = join_dc();
    let v = dc.valkey(dc.search_args(&[]));
    add_acl_users(&v, &["carol", "nobody", &format!("carol@{REALM}")]);
    assert_login(&v, "carol", &pw("carol"));
    assert_refused(&v, "carol", &pw("dave"));
    assert_refused(&v, "nobody", "x");
    assert_eq!(info_field(&v, "denied_unknown_user"), 1);

    set(&v, "search_attribute", "userPrincipalName");
    assert_login(&v, &format!("carol@{REALM}"), &pw("carol"));
    assert_eq!(info_field(&v, "allowed"), 2);
    assert_eq!(info_field(&v, "outage_directory_error"), 0);
}

/// Without TLS the DC refuses the service account's simple bind (strong authentication
/// required): the AUTH fails as an outage, nothing is sent in clear after that.
#[test]
fn plain_ldap_service_bind_is_refused_by_the_dc() {
    let dc = join_dc();
    let v = dc.valkey(dc.search_args(&["use_starttls", "no"]));
    add_acl_users(&v, &["carol"]);
    let r = login_reply(&v, "carol", &pw("carol"));
    assert!(!r.is_ok(), "AUTH without TLS: {r}");
    assert_eq!(info_field(&v, "allowed"), 0);
}

// ---- groups -----------------------------------------------------------------------------------

/// alice ∈ staff ∈ ops. `memberOf` gives staff only; the in-chain rule gives staff and ops.
/// ops may GET, staff may SET; checked by running commands as the provisioned user.
#[test]
fn nested_groups_map_to_acl_rules() {
    let dc = join_dc();
    let v = dc.valkey(dc.search_args(&[
        "provision",
        "on",
        "acl_map",
        "ops => +get ~k*; staff => +set ~k*",
        "group_membership_attribute",
        "memberOf",
    ]));
    let (r, mut c) = login(&v, "alice", pw("alice"));
    assert!(r.is_ok(), "AUTH alice (memberOf): {r}\n{}", v.log());
    assert_allowed(&c.call(&[b"SET", b"k1", b"v"]), "staff may SET");
    assert_noperm(&c.call(&[b"GET", b"k1"]), "without nesting, not in ops");

    set(&v, "group_membership_attribute", "");
    set(&v, "group_search_base", DOMAIN_ROOT);
    set(
        &v,
        "group_search_filter",
        "(member:1.2.840.113556.1.4.1941:={dn})",
    );
    let (r, mut c) = login(&v, "alice", pw("alice"));
    assert!(r.is_ok(), "AUTH alice (in-chain): {r}\n{}", v.log());
    assert_allowed(&c.call(&[b"SET", b"k2", b"v"]), "staff may SET");
    assert_eq!(
        c.call(&[b"GET", b"k2"]),
        Reply::Bulk(b"v".to_vec()),
        "ops may GET"
    );
    assert_noperm(&c.call(&[b"DEL", b"k2"]), "nobody may DEL");

    // bob is in no group: no mapped rules, so no login.
    assert_refused(&v, "bob", &pw("bob"));
    assert_eq!(info_field(&v, "denied_no_mapping"), 1);
}

// ---- account state ----------------------------------------------------------------------------

/// Each of AD's account states is a deny with its own reason in INFO; the client always gets
/// the one WRONGPASS.
#[test]
fn account_state_reasons() {
    let dc = join_dc();
    let suffix = format!("@{REALM}");
    let v = dc.valkey(dc.args(&["bind_dn_prefix", "", "bind_dn_suffix", &suffix]));
    let users = ["dis", "exp", "mcp", "pexp", "lck"];
    add_acl_users(&v, &users);
    for (user, reason) in [
        ("dis", "denied_account_disabled"),
        ("exp", "denied_account_expired"),
        ("mcp", "denied_password_must_change"),
        ("pexp", "denied_password_expired"),
    ] {
        assert_refused(&v, user, &pw(user));
        assert_eq!(info_field(&v, reason), 1, "{user}");
    }
    // The domain locks an account after 3 bad passwords; then even the right one is refused.
    for _ in 0..3 {
        assert_refused(&v, "lck", "wrong");
    }
    assert_refused(&v, "lck", &pw("lck"));
    assert_eq!(info_field(&v, "denied_account_locked"), 1);
    assert_eq!(info_field(&v, "denied_bad_credentials"), 3);
    assert_eq!(info_field(&v, "allowed"), 0);
}

/// An empty password would be an "unauthenticated bind", which AD answers with success: it is
/// refused before any bind.
#[test]
fn empty_password_refused_without_a_bind() {
    let dc = join_dc();
    let suffix = format!("@{REALM}");
    let v = dc.valkey(dc.args(&["bind_dn_prefix", "", "bind_dn_suffix", &suffix]));
    add_acl_users(&v, &["erin"]);
    assert_refused(&v, "erin", "");
    assert_eq!(info_field(&v, "denied_empty_password"), 1);
    assert_login(&v, "erin", &pw("erin"));
}

// ---- health -----------------------------------------------------------------------------------

/// AD has no "Who am I?": the health check (StartTLS, service bind, root DSE read) still finds
/// the DC up, and the servers stay up through logins.
#[test]
fn health_check_stays_green() {
    let dc = join_dc();
    valkeyauth::ldap::init_global();
    let mut settings = valkeyauth::config::Settings::defaults();
    let args = dc.search_args(&[]);
    for pair in args.chunks(2) {
        let spec = valkeyauth::config::OptionSpec::index_of(&pair[0])
            .map(|i| &valkeyauth::config::OPTIONS[i])
            .expect("known option");
        spec.apply(&mut settings, &pair[1]).expect("valid value");
    }
    valkeyauth::engine::probe(&settings, "ldap://127.0.0.1").expect("probe the DC");

    let v = dc.valkey(dc.search_args(&["health_check_interval_ms", "50"]));
    add_acl_users(&v, &["dave"]);
    assert_login(&v, "dave", &pw("dave"));
    assert_refused(&v, "dave", "wrong");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(info_field(&v, "servers_up"), 1);
    assert!(
        info_valkeyauth(&mut v.raw())["server0"].contains("state=up"),
        "{:?}",
        info_valkeyauth(&mut v.raw())
    );
}

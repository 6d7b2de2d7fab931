//! The cache, end to end against a real slapd and a real Valkey 9.1: positive entries and their
//! TTL, the lockout shield (negative entries), the outage window, coalescing of identical AUTHs,
//! `VALKEYAUTH.CACHE FLUSH`, invalidation on configuration changes, the bound, and passwords
//! staying out of everything an operator or a client can read.
//!
//! What reached the directory is read from slapd's stats log (one ` BIND dn="..."` line per bind
//! request); what the module did from `INFO valkeyauth`.

mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

/// A suffix under which no entry exists: every bind fails with invalid credentials.
const BAD_SUFFIX: &str = ",ou=nowhere,dc=example,dc=test";

// --------------------------------------------------------------------------------------------
// Helpers
// --------------------------------------------------------------------------------------------

/// Valkey 9.1 with the module pointed at `slapd` in bind mode, short network timeouts, the
/// `extra` module arguments (later ones win), and the ACL users alice, bob and carol.
fn valkey(slapd: &Slapd, extra: &[&str]) -> Valkey {
    valkey_with(slapd, extra, &[])
}

/// As [`valkey`], with extra valkey.conf lines.
fn valkey_with(slapd: &Slapd, extra: &[&str], conf: &[&str]) -> Valkey {
    // The module's cache defaults, named so that the harness keeps the cache on.
    let mut args = bind_args(
        &slapd.url(),
        &[
            "cache_ttl_s",
            "30",
            "negative_cache_ttl_s",
            "10",
            "connect_timeout_ms",
            "1000",
            "operation_timeout_ms",
            "5000",
        ],
    );
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut builder = Valkey::builder().module(args);
    for line in conf {
        builder = builder.config(*line);
    }
    let v = builder.start();
    add_acl_users(&v, &["alice", "bob", "carol"]);
    v
}

/// Polls INFO until `field >= want` (or 10 s); returns the last value.
fn wait_field(v: &Valkey, field: &str, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = info_field(v, field);
        if n >= want || Instant::now() >= deadline {
            return n;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// User binds slapd received: every BIND line except the root DN's (ldapmodify).
fn user_binds(slapd: &Slapd) -> usize {
    let root = format!("dn=\"{ROOT_DN}\"");
    slapd
        .ops("BIND")
        .iter()
        .filter(|l| !l.contains(&root))
        .count()
}

/// BIND lines for exactly this DN.
fn binds_as(slapd: &Slapd, dn: &str) -> usize {
    let needle = format!("BIND dn=\"{dn}\"");
    slapd
        .ops("BIND")
        .iter()
        .filter(|l| l.contains(&needle))
        .count()
}

/// `AUTH user pass` on a new connection.
fn auth(v: &Valkey, user: &str, pass: &str) -> Reply {
    v.raw().auth(user.as_bytes(), pass.as_bytes())
}

fn assert_ok(v: &Valkey, user: &str, pass: &str, context: &str) {
    let mut c = v.raw();
    let r = c.auth(user.as_bytes(), pass.as_bytes());
    assert!(r.is_ok(), "{context}: AUTH {user}: {r}\nlog:\n{}", v.log());
    let me = c.call(&[b"ACL", b"WHOAMI"]).text();
    assert_eq!(me.as_deref(), Some(user), "{context}: ACL WHOAMI");
}

fn assert_wrongpass(v: &Valkey, user: &str, pass: &str, context: &str) {
    let r = auth(v, user, pass);
    assert_eq!(r.error(), Some(WRONGPASS), "{context}: AUTH {user}: {r}");
}

fn assert_unavailable(v: &Valkey, user: &str, pass: &str, context: &str) {
    let r = auth(v, user, pass);
    assert_eq!(r.error(), Some(UNAVAILABLE), "{context}: AUTH {user}: {r}");
}

/// Replaces `userPassword` of `dn` in the directory, as the root DN.
fn set_directory_password(slapd: &Slapd, dn: &str, password: &str) {
    ldapmodify(
        slapd,
        &format!("dn: {dn}\nchangetype: modify\nreplace: userPassword\nuserPassword: {password}\n"),
    );
}

fn cache_cmd(c: &mut RawClient, args: &[&str]) -> Reply {
    let mut cmd: Vec<&[u8]> = vec![b"VALKEYAUTH.CACHE"];
    cmd.extend(args.iter().map(|a| a.as_bytes()));
    c.call(&cmd)
}

/// Sends `AUTH user pass` on a new connection without reading the reply.
fn send_auth(v: &Valkey, user: &str, pass: &str) -> RawClient {
    let mut c = v.raw();
    c.send(&[b"AUTH", user.as_bytes(), pass.as_bytes()])
        .expect("send AUTH");
    c
}

// --------------------------------------------------------------------------------------------
// Positive entries
// --------------------------------------------------------------------------------------------

#[test]
fn a_success_is_served_from_the_cache_until_the_ttl_ends() {
    let slapd = Slapd::start_default();
    let v = valkey(&slapd, &["cache_ttl_s", "1"]);

    assert_ok(&v, "alice", "alice-pw", "first login");
    assert_eq!(user_binds(&slapd), 1, "the first login binds");
    assert_eq!(info_field(&v, "cache_misses"), 1);
    assert_eq!(info_field(&v, "cache_hits"), 0);
    assert_eq!(info_field(&v, "cache_entries"), 1);

    assert_ok(&v, "alice", "alice-pw", "second login at once");
    assert_eq!(user_binds(&slapd), 1, "a cache hit sends nothing");
    assert_eq!(info_field(&v, "cache_hits"), 1);

    // HELLO AUTH goes through the same callback and the same cache.
    let mut c = v.raw();
    let r = c.hello3_auth(b"alice", b"alice-pw");
    assert!(matches!(r, Reply::Map(_)), "HELLO 3 AUTH alice: {r}");
    assert_eq!(user_binds(&slapd), 1, "HELLO AUTH hit");
    assert_eq!(info_field(&v, "cache_hits"), 2);

    thread::sleep(Duration::from_millis(1200));
    assert_ok(&v, "alice", "alice-pw", "after the TTL");
    assert_eq!(user_binds(&slapd), 2, "an expired entry binds again");
    assert_eq!(info_field(&v, "cache_hits"), 2);
    assert_eq!(info_field(&v, "cache_misses"), 2);
    assert_eq!(info_field(&v, "allowed"), 4);
}

#[test]
fn a_different_password_is_never_served_from_the_cache() {
    let slapd = Slapd::start_default();
    let v = valkey(&slapd, &["cache_ttl_s", "60"]);
    assert_ok(&v, "alice", "alice-pw", "login");
    assert_eq!(user_binds(&slapd), 1);

    assert_wrongpass(&v, "alice", "wrong", "wrong password after a cached login");
    assert_eq!(
        user_binds(&slapd),
        2,
        "the wrong password went to the directory"
    );
    // Near misses of the cached password, and the cached password for another user.
    assert_wrongpass(&v, "alice", "alice-pw ", "trailing space");
    assert_wrongpass(&v, "alice", "alice-p", "prefix");
    assert_wrongpass(&v, "alice", "ALICE-PW", "other case");
    assert_wrongpass(&v, "bob", "alice-pw", "alice's password for bob");
    assert_eq!(user_binds(&slapd), 6, "each of them went to the directory");
    assert_eq!(info_field(&v, "cache_hits"), 0);
    assert_eq!(info_field(&v, "denied_bad_credentials"), 5);

    // The cached entry is still there for the right password.
    assert_ok(&v, "alice", "alice-pw", "right password again");
    assert_eq!(user_binds(&slapd), 6);
    assert_eq!(info_field(&v, "cache_hits"), 1);
}

#[test]
fn a_password_changed_in_the_directory_stops_working_when_the_ttl_ends() {
    const TTL: Duration = Duration::from_secs(2);
    const MARGIN: Duration = Duration::from_millis(500);
    let slapd = Slapd::start_default();
    let v = valkey(&slapd, &["cache_ttl_s", "2"]);

    // The entry is recorded between these two instants.
    let login_sent = Instant::now();
    assert_ok(&v, "alice", "alice-pw", "login with the old password");
    let login_answered = Instant::now();
    assert_eq!(user_binds(&slapd), 1);
    set_directory_password(&slapd, ALICE.dn, "alice-new-pw");

    // Still cached: the old password works without asking the directory...
    assert_ok(&v, "alice", "alice-pw", "old password from the cache");
    assert_eq!(user_binds(&slapd), 1);
    // ...until the TTL ends, and no later than that (plus a margin for the polling).
    loop {
        thread::sleep(Duration::from_millis(100));
        let sent = Instant::now();
        let r = auth(&v, "alice", "alice-pw");
        if r.is_ok() {
            let age = sent.duration_since(login_answered);
            assert!(
                age < TTL,
                "the old password still worked when sent {age:?} after the login (TTL {TTL:?})"
            );
            continue;
        }
        assert_eq!(
            r.error(),
            Some(WRONGPASS),
            "old password after the TTL: {r}"
        );
        let refused_after = login_sent.elapsed();
        assert!(
            refused_after >= TTL,
            "the old password was refused {refused_after:?} after the login (TTL {TTL:?})"
        );
        let sent_after = sent.duration_since(login_sent);
        assert!(
            sent_after <= TTL + MARGIN,
            "the old password worked until {sent_after:?} after the login (TTL {TTL:?})"
        );
        break;
    }
    assert_eq!(user_binds(&slapd), 2, "the expired entry sent one bind");

    assert_ok(&v, "alice", "alice-new-pw", "new password");
    assert_eq!(user_binds(&slapd), 3);
    assert_wrongpass(&v, "alice", "alice-pw", "old password after the new one");
}

// --------------------------------------------------------------------------------------------
// VALKEYAUTH.CACHE FLUSH
// --------------------------------------------------------------------------------------------

#[test]
fn flush_forgets_one_user_or_everything() {
    let slapd = Slapd::start_default();
    let v = valkey(&slapd, &["cache_ttl_s", "60", "negative_cache_ttl_s", "60"]);
    let mut admin = v.raw();

    assert_ok(&v, "alice", "alice-pw", "alice");
    assert_ok(&v, "bob", "bob-pw", "bob");
    assert_wrongpass(&v, "carol", "wrong", "carol refused");
    assert_eq!(user_binds(&slapd), 3);
    assert_eq!(info_field(&v, "cache_entries"), 3);

    assert_eq!(cache_cmd(&mut admin, &["FLUSH", "alice"]), Reply::Int(1));
    assert_eq!(cache_cmd(&mut admin, &["flush", "alice"]), Reply::Int(0));
    assert_eq!(cache_cmd(&mut admin, &["FLUSH", "nobody"]), Reply::Int(0));
    assert_eq!(info_field(&v, "cache_entries"), 2);
    assert_ok(&v, "alice", "alice-pw", "alice after FLUSH alice");
    assert_eq!(user_binds(&slapd), 4, "a flushed user binds again");
    assert_ok(&v, "bob", "bob-pw", "bob after FLUSH alice");
    assert_eq!(user_binds(&slapd), 4, "FLUSH alice kept bob");

    let entries = info_field(&v, "cache_entries");
    assert_eq!(entries, 3, "alice, bob and carol's refusal");
    assert_eq!(
        cache_cmd(&mut admin, &["FLUSH"]),
        Reply::Int(entries as i64),
        "FLUSH returns how many entries it removed"
    );
    assert_eq!(info_field(&v, "cache_entries"), 0);
    assert_eq!(cache_cmd(&mut admin, &["FLUSH"]), Reply::Int(0));

    assert_ok(&v, "bob", "bob-pw", "bob after FLUSH");
    assert_wrongpass(&v, "carol", "wrong", "carol after FLUSH");
    assert_eq!(user_binds(&slapd), 6, "both bind again");
}

#[test]
fn flush_is_an_admin_command_with_strict_arguments() {
    let slapd = Slapd::start_default();
    let v = valkey(&slapd, &["exempt_users", "default limited reader"]);
    acl_setuser(
        &v,
        &[
            "limited",
            "on",
            ">limited-pw",
            "~*",
            "&*",
            "+@all",
            "-@admin",
        ],
    );
    acl_setuser(&v, &["reader", "on", ">reader-pw", "~*", "+@read"]);
    let mut admin = v.raw();
    // Every check runs; the test fails at the end with all that went wrong.
    let mut problems = Vec::new();

    // Users without @admin are refused (exempt users: they log in with their Valkey passwords).
    for (user, pw) in [("limited", "limited-pw"), ("reader", "reader-pw")] {
        let mut c = v.raw();
        let r = c.auth(user.as_bytes(), pw.as_bytes());
        assert!(r.is_ok(), "AUTH {user} (exempt): {r}");
        for args in [&["FLUSH"][..], &["FLUSH", "alice"]] {
            let r = cache_cmd(&mut c, args);
            if !r.error().is_some_and(|e| e.starts_with("NOPERM")) {
                problems.push(format!(
                    "user {user}: VALKEYAUTH.CACHE {}: expected NOPERM, got {r}",
                    args.join(" ")
                ));
            }
        }
    }

    // ACL categories: admin and dangerous.
    for category in ["admin", "dangerous"] {
        let r = admin.call(&[b"ACL", b"CAT", category.as_bytes()]);
        let Reply::Array(names) = &r else {
            panic!("ACL CAT {category}: {r}")
        };
        if !names
            .iter()
            .any(|n| n.text().as_deref() == Some("valkeyauth.cache"))
        {
            problems.push(format!("valkeyauth.cache is not in ACL CAT {category}"));
        }
    }
    // COMMAND INFO: [name, arity, flags, first, last, step, acl categories, ...]
    let r = admin.call(&[b"COMMAND", b"INFO", b"valkeyauth.cache"]);
    let doc = match &r {
        Reply::Array(docs) => match docs.first() {
            Some(Reply::Array(doc)) => doc.clone(),
            _ => panic!("COMMAND INFO valkeyauth.cache: {r}"),
        },
        _ => panic!("COMMAND INFO valkeyauth.cache: {r}"),
    };
    let texts = |i: usize| -> Vec<String> {
        match doc.get(i) {
            Some(Reply::Array(f)) | Some(Reply::Set(f)) => {
                f.iter().filter_map(Reply::text).collect()
            }
            _ => Vec::new(),
        }
    };
    let (flags, categories) = (texts(2), texts(6));
    for flag in ["admin", "noscript"] {
        if !flags.iter().any(|f| f == flag) {
            problems.push(format!("COMMAND INFO flags {flags:?} lack {flag}"));
        }
    }
    for category in ["@admin", "@dangerous"] {
        if !categories.iter().any(|c| c == category) {
            problems.push(format!(
                "COMMAND INFO ACL categories {categories:?} lack {category}"
            ));
        }
    }

    // Not from scripts.
    let r = admin.call(&[
        b"EVAL",
        b"return redis.call('valkeyauth.cache', 'flush')",
        b"0",
    ]);
    if r.error().is_none() {
        problems.push(format!("VALKEYAUTH.CACHE ran from a script: {r}"));
    }

    // Arguments.
    let r = cache_cmd(&mut admin, &["FROB"]);
    if !r
        .error()
        .is_some_and(|e| e.starts_with("ERR unknown subcommand") && e.contains("FROB"))
    {
        problems.push(format!("VALKEYAUTH.CACHE FROB: {r}"));
    }
    for args in [&[][..], &["FLUSH", "alice", "bob"]] {
        let r = cache_cmd(&mut admin, args);
        if !r
            .error()
            .is_some_and(|e| e.starts_with("ERR") && e.contains("wrong number of arguments"))
        {
            problems.push(format!("VALKEYAUTH.CACHE {}: {r}", args.join(" ")));
        }
    }
    // The admin (the default user) may.
    assert_eq!(cache_cmd(&mut admin, &["FLUSH"]), Reply::Int(0));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// --------------------------------------------------------------------------------------------
// The lockout shield
// --------------------------------------------------------------------------------------------

#[test]
fn the_lockout_shield_sends_a_repeated_wrong_password_once() {
    let slapd = Slapd::start_default();
    let v = valkey(&slapd, &["negative_cache_ttl_s", "5"]);
    for i in 0..10 {
        assert_wrongpass(&v, "alice", "wrong", &format!("wrong password #{i}"));
    }
    assert_eq!(user_binds(&slapd), 1, "one bind for ten identical refusals");
    assert_eq!(info_field(&v, "cache_negative_hits"), 9);
    assert_eq!(info_field(&v, "denied_bad_credentials"), 10);

    assert_wrongpass(&v, "alice", "wrong2", "another wrong password");
    assert_eq!(
        user_binds(&slapd),
        2,
        "a different wrong password reaches the directory"
    );
    assert_wrongpass(&v, "bob", "wrong", "the same wrong password for bob");
    assert_eq!(user_binds(&slapd), 3, "the shield is per user");
    // The shield never stands in the way of the right password.
    assert_ok(&v, "alice", "alice-pw", "right password while shielded");
    assert_eq!(user_binds(&slapd), 4);
    assert_eq!(info_field(&v, "cache_negative_hits"), 9);
}

#[test]
fn without_the_lockout_shield_every_wrong_password_binds() {
    let slapd = Slapd::start_default();
    let v = valkey(&slapd, &["negative_cache_ttl_s", "0"]);
    for i in 0..10 {
        assert_wrongpass(&v, "alice", "wrong", &format!("wrong password #{i}"));
    }
    assert_eq!(user_binds(&slapd), 10);
    assert_eq!(info_field(&v, "cache_negative_hits"), 0);
    assert_eq!(info_field(&v, "cache_entries"), 0);
}

#[test]
fn a_refused_password_stays_refused_until_the_negative_ttl_ends() {
    const NEGATIVE_TTL: Duration = Duration::from_secs(2);
    let slapd = Slapd::start_default();
    let v = valkey(&slapd, &["negative_cache_ttl_s", "2", "cache_ttl_s", "60"]);

    assert_wrongpass(&v, "alice", "pw1", "pw1 before the change");
    // The refusal was recorded before its answer arrived.
    let refused = Instant::now();
    assert_eq!(user_binds(&slapd), 1);
    set_directory_password(&slapd, ALICE.dn, "pw1");

    // Documented behaviour: the refusal is remembered for negative_cache_ttl_s even though the
    // directory would now accept pw1; nothing is sent until it ends.
    assert_wrongpass(&v, "alice", "pw1", "pw1 right after the change (shielded)");
    assert_eq!(user_binds(&slapd), 1, "a shielded password is not sent");
    assert_eq!(info_field(&v, "cache_negative_hits"), 1);

    let wait = NEGATIVE_TTL.saturating_sub(refused.elapsed()) + Duration::from_millis(200);
    thread::sleep(wait);
    assert_ok(&v, "alice", "pw1", "pw1 after the negative TTL");
    assert_eq!(user_binds(&slapd), 2);
    // The success replaced the refusal: pw1 is now served from the cache.
    assert_ok(&v, "alice", "pw1", "pw1 again");
    assert_eq!(user_binds(&slapd), 2);
    assert_eq!(info_field(&v, "cache_hits"), 1);
    assert_eq!(info_field(&v, "cache_entries"), 1, "no refusal left behind");
}

/// The helpdesk case: a password refused a moment ago is set in the directory, and a flush of
/// the user lets it in at once, without waiting for the negative TTL. Other users' refusals
/// stay.
#[test]
fn flushing_a_user_forgets_its_refused_passwords_too() {
    let slapd = Slapd::start_default();
    let v = valkey(&slapd, &["negative_cache_ttl_s", "300"]);
    assert_wrongpass(&v, "alice", "pw-new", "before the change");
    assert_wrongpass(&v, "bob", "pw-new", "bob's wrong password");
    set_directory_password(&slapd, ALICE.dn, "pw-new");
    assert_wrongpass(&v, "alice", "pw-new", "shielded");
    let mut admin = v.raw();
    assert_eq!(cache_cmd(&mut admin, &["FLUSH", "alice"]), Reply::Int(1));
    assert_ok(&v, "alice", "pw-new", "after the flush");
    let binds = user_binds(&slapd);
    assert_wrongpass(&v, "bob", "pw-new", "bob still shielded");
    assert_eq!(user_binds(&slapd), binds, "bob's refusal was kept");
}

// --------------------------------------------------------------------------------------------
// The outage window
// --------------------------------------------------------------------------------------------

#[test]
fn the_outage_window_admits_only_a_recent_password_while_the_directory_is_down() {
    let mut slapd = Slapd::start_default();
    let v = valkey(
        &slapd,
        &["cache_ttl_s", "1", "cache_stale_on_outage_s", "60"],
    );
    assert_ok(&v, "alice", "alice-pw", "login while up");
    thread::sleep(Duration::from_millis(1200));
    slapd.stop();

    assert_ok(&v, "alice", "alice-pw", "same password during the outage");
    assert_eq!(info_field(&v, "cache_stale_on_outage"), 1);
    assert_unavailable(&v, "alice", "wrong", "wrong password during the outage");
    assert_unavailable(&v, "bob", "bob-pw", "a user never seen before");
    assert_eq!(info_field(&v, "cache_stale_on_outage"), 1);
    assert_ok(&v, "alice", "alice-pw", "again during the outage");
    assert_eq!(info_field(&v, "cache_stale_on_outage"), 2);
    assert_eq!(info_field(&v, "cache_hits"), 0, "stale entries are no hits");

    // Back up: the directory decides again.
    slapd.start();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = auth(&v, "bob", "bob-pw");
        if r.is_ok() {
            break;
        }
        assert_eq!(
            r.error(),
            Some(UNAVAILABLE),
            "bob while slapd comes back: {r}"
        );
        assert!(Instant::now() < deadline, "the directory never came back");
        thread::sleep(Duration::from_millis(100));
    }
    let stale = info_field(&v, "cache_stale_on_outage");
    assert_ok(&v, "alice", "alice-pw", "alice after the outage");
    assert_eq!(info_field(&v, "cache_stale_on_outage"), stale);
}

#[test]
fn without_the_outage_window_a_cached_user_gets_the_outage_error() {
    let mut slapd = Slapd::start_default();
    let v = valkey(&slapd, &["cache_ttl_s", "1"]);
    assert_ok(&v, "alice", "alice-pw", "login while up");
    thread::sleep(Duration::from_millis(1200));
    slapd.stop();
    assert_unavailable(&v, "alice", "alice-pw", "outage, window off (default)");
    assert_eq!(info_field(&v, "cache_stale_on_outage"), 0);
}

/// A password the directory refused after it had succeeded (it was changed, maybe because it
/// leaked) must not come back through the outage window when the directory goes down.
#[test]
fn the_outage_window_never_admits_a_password_the_directory_refused_since() {
    let mut slapd = Slapd::start_default();
    let v = valkey(
        &slapd,
        &[
            "cache_ttl_s",
            "1",
            "cache_stale_on_outage_s",
            "60",
            "negative_cache_ttl_s",
            "0",
        ],
    );
    assert_ok(&v, "alice", "alice-pw", "login with the old password");
    set_directory_password(&slapd, ALICE.dn, "alice-new-pw");
    thread::sleep(Duration::from_millis(1200));
    assert_wrongpass(
        &v,
        "alice",
        "alice-pw",
        "old password refused by the directory",
    );
    assert_eq!(user_binds(&slapd), 2);

    slapd.stop();
    assert_unavailable(
        &v,
        "alice",
        "alice-pw",
        "old password during an outage after the directory refused it",
    );
    assert_eq!(info_field(&v, "cache_stale_on_outage"), 0);
}

// --------------------------------------------------------------------------------------------
// Coalescing
// --------------------------------------------------------------------------------------------

/// [`valkey`] with one worker and timeouts long enough for AUTHs to wait on a frozen slapd.
fn patient_valkey(slapd: &Slapd, extra: &[&str]) -> Valkey {
    let mut args = vec![
        "workers",
        "1",
        "operation_timeout_ms",
        "15000",
        "auth_timeout_ms",
        "20000",
    ];
    args.extend_from_slice(extra);
    valkey(slapd, &args)
}

/// Sends `n` identical AUTHs on `n` connections while slapd is frozen, waits until the module
/// parked all but one behind the first, thaws, and returns the replies.
fn concurrent_auths(v: &Valkey, slapd: &mut Slapd, n: usize, user: &str, pass: &str) -> Vec<Reply> {
    let coalesced = info_field(v, "coalesced");
    slapd.freeze();
    let mut clients: Vec<RawClient> = (0..n).map(|_| send_auth(v, user, pass)).collect();
    let want = coalesced + n as u64 - 1;
    let got = wait_field(v, "coalesced", want);
    slapd.thaw();
    assert_eq!(got, want, "AUTHs parked behind the first");
    clients.iter_mut().map(RawClient::read).collect()
}

#[test]
fn identical_concurrent_auths_share_one_bind() {
    const N: usize = 20;
    let mut slapd = Slapd::start_default();
    let v = patient_valkey(&slapd, &[]);

    let replies = concurrent_auths(&v, &mut slapd, N, "alice", "alice-pw");
    for (i, r) in replies.iter().enumerate() {
        assert!(r.is_ok(), "concurrent AUTH #{i}: {r}");
    }
    assert_eq!(user_binds(&slapd), 1, "twenty identical AUTHs, one bind");
    assert_eq!(info_field(&v, "coalesced"), (N - 1) as u64);
    assert_eq!(info_field(&v, "allowed"), N as u64);

    let replies = concurrent_auths(&v, &mut slapd, N, "alice", "not-alice-pw");
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(
            r.error(),
            Some(WRONGPASS),
            "concurrent wrong AUTH #{i}: {r}"
        );
    }
    assert_eq!(
        user_binds(&slapd),
        2,
        "twenty identical wrong AUTHs, one bind"
    );
    assert_eq!(info_field(&v, "coalesced"), 2 * (N - 1) as u64);
    assert_eq!(info_field(&v, "denied_bad_credentials"), N as u64);
    assert_eq!(info_field(&v, "queue_depth"), 0);
}

/// Clients that leave while parked, the first one (whose AUTH went to the directory)
/// included, cost nothing to those still waiting, and the server keeps running.
#[test]
fn parked_auths_survive_clients_that_leave() {
    const N: usize = 10;
    let mut slapd = Slapd::start_default();
    let v = patient_valkey(&slapd, &[]);
    slapd.freeze();
    let mut clients: Vec<Option<RawClient>> = (0..N)
        .map(|_| Some(send_auth(&v, "alice", "alice-pw")))
        .collect();
    assert_eq!(wait_field(&v, "coalesced", (N - 1) as u64), (N - 1) as u64);
    // The first (the one sent to the directory) and every other one hang up.
    for c in clients.iter_mut().step_by(2) {
        drop(c.take());
    }
    thread::sleep(Duration::from_millis(100));
    slapd.thaw();
    for (i, c) in clients.iter_mut().enumerate() {
        if let Some(c) = c {
            let r = c.read();
            assert!(r.is_ok(), "AUTH #{i} after others left: {r}");
        }
    }
    assert_eq!(user_binds(&slapd), 1);
    let mut c = v.raw();
    assert_eq!(c.call(&[b"PING"]), Reply::Simple("PONG".into()));
    // The answer of the AUTH whose client left was still cached.
    assert_ok(&v, "alice", "alice-pw", "after the wave");
    assert_eq!(user_binds(&slapd), 1);
    assert_eq!(info_field(&v, "cache_hits"), 1);
}

// --------------------------------------------------------------------------------------------
// Configuration changes
// --------------------------------------------------------------------------------------------

#[test]
fn a_config_change_that_may_change_answers_drops_the_cache() {
    let slapd = Slapd::start_default();
    let v = valkey(&slapd, &["cache_ttl_s", "60", "negative_cache_ttl_s", "60"]);
    let mut admin = v.raw();
    let set = |c: &mut RawClient, name: &str, value: &str| {
        let key = format!("valkeyauth.{name}");
        let r = c.call(&[b"CONFIG", b"SET", key.as_bytes(), value.as_bytes()]);
        assert!(r.is_ok(), "CONFIG SET {key} {value:?}: {r}");
    };

    assert_ok(&v, "alice", "alice-pw", "login");
    assert_eq!(user_binds(&slapd), 1);

    // No effect on answers: the entry stays.
    set(&mut admin, "workers", "2");
    set(&mut admin, "exempt_users", "default nobody");
    assert_ok(&v, "alice", "alice-pw", "after changing workers");
    assert_eq!(user_binds(&slapd), 1, "still cached");
    assert_eq!(info_field(&v, "cache_hits"), 1);

    // A different DN: the directory must decide again.
    set(&mut admin, "bind_dn_suffix", BAD_SUFFIX);
    assert_eq!(info_field(&v, "cache_entries"), 0);
    assert_wrongpass(&v, "alice", "alice-pw", "after changing bind_dn_suffix");
    assert_eq!(user_binds(&slapd), 2);
    assert_eq!(binds_as(&slapd, &format!("cn=alice{BAD_SUFFIX}")), 1);

    // And back: the refusal under the other suffix is not kept either.
    set(&mut admin, "bind_dn_suffix", BIND_SUFFIX);
    assert_ok(&v, "alice", "alice-pw", "after restoring bind_dn_suffix");
    assert_eq!(user_binds(&slapd), 3);
    assert_eq!(binds_as(&slapd, ALICE.dn), 2);
}

/// An answer that was on its way when the configuration changed may still answer that AUTH,
/// but must not be cached for the new configuration.
#[test]
fn an_answer_from_before_a_config_change_is_not_cached_after_it() {
    let mut slapd = Slapd::start_default();
    let v = patient_valkey(&slapd, &["cache_ttl_s", "60"]);
    slapd.freeze();
    let mut in_flight = send_auth(&v, "alice", "alice-pw");
    assert_eq!(wait_field(&v, "cache_misses", 1), 1, "AUTH queued");
    config_set_ok(&v, "valkeyauth.bind_dn_suffix", BAD_SUFFIX);
    slapd.thaw();
    let r = in_flight.read();
    assert!(r.is_ok(), "the AUTH sent before the change: {r}");
    assert_eq!(binds_as(&slapd, ALICE.dn), 1);

    let r = auth(&v, "alice", "alice-pw");
    assert_eq!(
        r.error(),
        Some(WRONGPASS),
        "AUTH after the change was answered from an entry cached for the old bind_dn_suffix: {r}"
    );
    assert_eq!(binds_as(&slapd, &format!("cn=alice{BAD_SUFFIX}")), 1);
}

// --------------------------------------------------------------------------------------------
// The bound
// --------------------------------------------------------------------------------------------

/// Logs in user `name(i)` with `password(i)` for each `i` of `users`, as one pipeline on `c`;
/// every AUTH must succeed.
fn pipelined_logins(
    c: &mut RawClient,
    users: &[usize],
    name: impl Fn(usize) -> String,
    password: impl Fn(usize) -> String,
) {
    let mut buf = Vec::new();
    for &i in users {
        let (u, p) = (name(i), password(i));
        buf.extend_from_slice(
            format!(
                "*3\r\n$4\r\nAUTH\r\n${}\r\n{u}\r\n${}\r\n{p}\r\n",
                u.len(),
                p.len()
            )
            .as_bytes(),
        );
    }
    c.send_raw(&buf).expect("send AUTH pipeline");
    for &i in users {
        let r = c.read();
        assert!(r.is_ok(), "AUTH {}: {r}", name(i));
    }
}

#[test]
fn the_cache_stays_within_its_bound() {
    const USERS: usize = 5000;
    const MAX: u64 = 1000;
    const CONNECTIONS: usize = 25;
    let started = Instant::now();
    let name = |i: usize| format!("u{i:04}");
    let password = |i: usize| format!("pw-{i:04}");
    let mut ldif = String::new();
    for i in 0..USERS {
        ldif += &person_ldif(
            &format!("cn={}{BIND_SUFFIX}", name(i)),
            &name(i),
            password(i).as_bytes(),
        );
    }
    let slapd = Slapd::builder().extra_ldif(&ldif).start();
    let v = valkey(&slapd, &["cache_ttl_s", "600", "cache_max_entries", "1000"]);

    // 5000 ACL users, pipelined.
    let mut admin = v.raw();
    let mut pipeline = Vec::new();
    for i in 0..USERS {
        let user = name(i);
        pipeline.extend_from_slice(b"*6\r\n$3\r\nACL\r\n$7\r\nSETUSER\r\n");
        pipeline.extend_from_slice(format!("${}\r\n{user}\r\n", user.len()).as_bytes());
        pipeline.extend_from_slice(b"$2\r\non\r\n$5\r\n+@all\r\n$2\r\n~*\r\n");
    }
    admin
        .send_raw(&pipeline)
        .expect("send ACL SETUSER pipeline");
    for i in 0..USERS {
        let r = admin.read();
        assert!(r.is_ok(), "ACL SETUSER {}: {r}", name(i));
    }

    // Each user logs in once: CONNECTIONS connections, each with a pipeline of AUTHs.
    let port = v.port();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|k| {
            thread::spawn(move || {
                let mut c = RawClient::connect(port);
                let mine: Vec<usize> = (k..USERS).step_by(CONNECTIONS).collect();
                pipelined_logins(&mut c, &mine, name, password);
            })
        })
        .collect();
    for w in workers {
        w.join().expect("login thread");
    }

    let c = counters(&v);
    assert_eq!(c["allowed"], USERS as u64, "{c:?}");
    assert!(
        c["cache_entries"] <= MAX,
        "cache_entries {} > cache_max_entries {MAX}",
        c["cache_entries"]
    );
    assert!(
        c["cache_evictions"] >= USERS as u64 - MAX,
        "cache_evictions {} < {}",
        c["cache_evictions"],
        USERS as u64 - MAX
    );
    // Least recently used goes first. The wave's order across connections is up to the
    // scheduler, so the order is set here: `last` first, then 1000 other users in sequence
    // (one connection, so one after the other).
    let last = USERS - 1;
    assert_ok(&v, &name(last), &password(last), "the last user again");
    let recent: Vec<usize> = (0..MAX as usize).collect();
    let mut c = v.raw();
    pipelined_logins(&mut c, &recent, name, password);
    let binds = user_binds(&slapd);
    assert_ok(
        &v,
        &name(MAX as usize - 1),
        &password(MAX as usize - 1),
        "most recent",
    );
    assert_eq!(user_binds(&slapd), binds, "the most recent login is cached");
    assert_ok(&v, &name(last), &password(last), "1000 logins ago");
    assert_eq!(
        user_binds(&slapd),
        binds + 1,
        "the least recent login was evicted"
    );
    assert!(info_field(&v, "cache_entries") <= MAX);
    let took = started.elapsed();
    eprintln!("bound test: {took:?}");
    // About 3 s on an idle 2-core machine; the bound only catches a stall.
    assert!(
        took < Duration::from_secs(60),
        "the bound test took {took:?}"
    );
}

/// `cache_max_entries` is "the bound of the cache", and INFO `cache_entries` counts successes
/// and refusals together: refusals must not take the cache past the bound.
#[test]
fn refusals_count_against_the_same_bound() {
    let slapd = Slapd::start_default();
    let v = valkey(
        &slapd,
        &["cache_max_entries", "2", "negative_cache_ttl_s", "60"],
    );
    assert_ok(&v, "alice", "alice-pw", "alice");
    assert_ok(&v, "bob", "bob-pw", "bob");
    assert_wrongpass(&v, "carol", "wrong1", "carol wrong1");
    assert_wrongpass(&v, "carol", "wrong2", "carol wrong2");
    let entries = info_field(&v, "cache_entries");
    assert!(
        entries <= 2,
        "cache_entries {entries} > cache_max_entries 2 (2 successes + 2 refusals kept)"
    );
}

// --------------------------------------------------------------------------------------------
// No password anywhere
// --------------------------------------------------------------------------------------------

#[test]
fn no_password_shows_up_after_cached_logins() {
    const RIGHT: &str = "Canary-Right-5a7f31";
    const WRONG: &str = "Canary-Wrong-9c04d2";
    let dn = format!("cn=canary{BIND_SUFFIX}");
    let mut slapd = Slapd::builder()
        .extra_ldif(&person_ldif(&dn, "canary", RIGHT.as_bytes()))
        .start();
    let v = valkey_with(
        &slapd,
        &[
            "cache_ttl_s",
            "1",
            "cache_stale_on_outage_s",
            "60",
            "negative_cache_ttl_s",
            "60",
        ],
        &["loglevel debug", "slowlog-log-slower-than 0"],
    );
    acl_setuser(&v, &["canary", "on", "+@all", "~*"]);

    assert_ok(&v, "canary", RIGHT, "first login");
    assert_ok(&v, "canary", RIGHT, "cached login");
    let mut c = v.raw();
    assert!(matches!(
        c.hello3_auth(b"canary", RIGHT.as_bytes()),
        Reply::Map(_)
    ));
    assert_wrongpass(&v, "canary", WRONG, "wrong password");
    assert_wrongpass(&v, "canary", WRONG, "shielded wrong password");
    assert_eq!(info_field(&v, "cache_hits"), 2);
    assert_eq!(info_field(&v, "cache_negative_hits"), 1);
    thread::sleep(Duration::from_millis(1100));
    slapd.stop();
    assert_ok(&v, "canary", RIGHT, "outage window");
    assert_unavailable(
        &v,
        "canary",
        "Canary-Other-77e1aa",
        "other password, outage",
    );
    assert_eq!(info_field(&v, "cache_stale_on_outage"), 1);

    let mut seen = everything_shown(&v, &mut c);
    seen += &all_text(&c.call(&[b"VALKEYAUTH.CACHE", b"FLUSH", b"canary"]));
    assert!(seen.contains("valkeyauth_cache_hits:2"), "INFO was read");
    for secret in [RIGHT, WRONG, "Canary-Other-77e1aa", "Canary-"] {
        assert!(
            !seen.contains(secret),
            "{secret:?} appears in what the server shows:\n{seen}"
        );
    }
}

/// An AUTH that arrives after a flush never shares an answer asked for before it: the flush
/// may follow a change in the directory that the older answer does not know of.
#[test]
fn an_auth_after_a_flush_does_not_share_an_earlier_request() {
    let mut slapd = Slapd::start_default();
    let v = patient_valkey(&slapd, &[]);
    slapd.freeze();
    let mut first = send_auth(&v, "alice", "alice-pw");
    let mut admin = v.raw();
    assert_eq!(cache_cmd(&mut admin, &["FLUSH", "alice"]), Reply::Int(0));
    let mut second = send_auth(&v, "alice", "alice-pw");
    thread::sleep(Duration::from_millis(100));
    slapd.thaw();
    assert!(first.read().is_ok());
    assert!(second.read().is_ok());
    assert_eq!(info_field(&v, "coalesced"), 0);
    assert_eq!(
        user_binds(&slapd),
        2,
        "the second AUTH asked the directory itself"
    );
}

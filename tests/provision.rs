//! Provisioning: users the directory accepts who have no Valkey ACL user are logged in as module
//! users with the rules their directory groups map to (`acl_map`, `default_acl_rules`), found
//! by group search (`member`, `uniqueMember`, `memberUid`), by a membership attribute of the user
//! entry, and through nested groups. Also: precedence of existing ACL users, name case, exempt
//! users, `acl_map` validation and persistence, legacy one-argument AUTH, `VALKEYAUTH.USERS` and
//! MODULE UNLOAD with provisioned sessions.
//!
//! Every test starts its own slapd (with the fixture below, not the shared one) and its own
//! Valkey 9.1, and checks rules by running commands as the logged-in user.

mod common;

use common::*;
use std::time::{Duration, Instant};

// ---- the directory --------------------------------------------------------------------------

const WRITERS: &str = "cn=writers,ou=groups,dc=example,dc=test";
const READERS: &str = "cn=readers,ou=groups,dc=example,dc=test";
/// A groupOfUniqueNames (`uniqueMember`).
const CACHERS: &str = "cn=cachers,ou=groups,dc=example,dc=test";
/// A posixGroup (`memberUid`).
const PINGERS: &str = "cn=pingers,ou=groups,dc=example,dc=test";
/// A group DN with an escaped comma and spaces in its first RDN.
const OPS_BERLIN: &str = "cn=Ops Team\\, Berlin,ou=groups,dc=example,dc=test";
/// Nesting: nina ∈ g1 ∈ g2 ∈ g3.
const G1: &str = "cn=g1,ou=groups,dc=example,dc=test";
const G2: &str = "cn=g2,ou=groups,dc=example,dc=test";
const G3: &str = "cn=g3,ou=groups,dc=example,dc=test";
/// A cycle: frank ∈ c1, c1 ∈ c2, c2 ∈ c1.
const C1: &str = "cn=c1,ou=groups,dc=example,dc=test";
const C2: &str = "cn=c2,ou=groups,dc=example,dc=test";
/// A person whose DN holds an escaped comma; its uid is `jsmith`.
const JSMITH_DN: &str = "cn=smith\\, john,ou=people,dc=example,dc=test";

/// The mapping most tests use, by bare group name.
const MAP: &str =
    "writers => +@all ~*; readers => +@read ~*; cachers => +set ~cache:*; pingers => +echo";

/// `cn=<name>,ou=people,...`
fn person_dn(name: &str) -> String {
    format!("cn={name},{PEOPLE}")
}

/// The password of every fixture person: `<uid>-pw`.
fn pw(uid: &str) -> String {
    format!("{uid}-pw")
}

fn entry(dn: &str, attrs: &[(&str, &str)]) -> String {
    let attrs: Vec<(&str, &[u8])> = attrs.iter().map(|(a, v)| (*a, v.as_bytes())).collect();
    ldif_entry(dn, &attrs)
}

fn group_of_names(dn: &str, cn: &str, members: &[&str]) -> String {
    let mut attrs = vec![("objectClass", "groupOfNames"), ("cn", cn)];
    attrs.extend(members.iter().map(|m| ("member", *m)));
    entry(dn, &attrs)
}

/// People (uid = cn, password `<uid>-pw`):
/// - alice ∈ writers, readers; bob ∈ readers; carol ∈ cachers (uniqueMember) and pingers
///   (memberUid); dave ∈ pingers; erin ∈ "Ops Team, Berlin"; nina ∈ g1 ∈ g2 ∈ g3;
///   frank ∈ c1 (c1 ∈ c2 ∈ c1); jsmith (`cn=smith\, john`) ∈ readers (by `member` only);
///   olga ∈ writers and cachers;
/// - hank is in no group but lists readers and pingers in `seeAlso`;
/// - zed and svc are in no group; `default` (a directory person named like Valkey's default
///   user) ∈ writers.
fn fixture() -> String {
    let mut s = entry(
        SUFFIX,
        &[
            ("objectClass", "dcObject"),
            ("objectClass", "organization"),
            ("o", "example"),
            ("dc", "example"),
        ],
    );
    for (dn, ou) in [(PEOPLE, "people"), (GROUPS, "groups")] {
        s += &entry(dn, &[("objectClass", "organizationalUnit"), ("ou", ou)]);
    }
    for uid in [
        "alice", "bob", "carol", "dave", "erin", "frank", "nina", "olga", "zed", "svc", "default",
    ] {
        s += &person_ldif(&person_dn(uid), uid, pw(uid).as_bytes());
    }
    let hank_pw = pw("hank");
    s += &entry(
        &person_dn("hank"),
        &[
            ("objectClass", "inetOrgPerson"),
            ("cn", "hank"),
            ("sn", "hank"),
            ("uid", "hank"),
            ("userPassword", &hank_pw),
            ("seeAlso", READERS),
            ("seeAlso", PINGERS),
        ],
    );
    let jsmith_pw = pw("jsmith");
    s += &entry(
        JSMITH_DN,
        &[
            ("objectClass", "inetOrgPerson"),
            ("cn", "smith, john"),
            ("sn", "smith"),
            ("uid", "jsmith"),
            ("userPassword", &jsmith_pw),
        ],
    );
    let (alice, bob, carol) = (person_dn("alice"), person_dn("bob"), person_dn("carol"));
    let (default, olga) = (person_dn("default"), person_dn("olga"));
    s += &group_of_names(WRITERS, "writers", &[&alice, &default, &olga]);
    s += &group_of_names(READERS, "readers", &[&alice, &bob, JSMITH_DN]);
    s += &entry(
        CACHERS,
        &[
            ("objectClass", "groupOfUniqueNames"),
            ("cn", "cachers"),
            ("uniqueMember", &carol),
            ("uniqueMember", &olga),
        ],
    );
    s += &entry(
        PINGERS,
        &[
            ("objectClass", "posixGroup"),
            ("cn", "pingers"),
            ("gidNumber", "5000"),
            ("memberUid", "carol"),
            ("memberUid", "dave"),
        ],
    );
    s += &group_of_names(OPS_BERLIN, "Ops Team, Berlin", &[&person_dn("erin")]);
    s += &group_of_names(G1, "g1", &[&person_dn("nina")]);
    s += &group_of_names(G2, "g2", &[G1]);
    s += &group_of_names(G3, "g3", &[G2]);
    s += &group_of_names(C1, "c1", &[&person_dn("frank"), C2]);
    s += &group_of_names(C2, "c2", &[C1]);
    s
}

fn start_slapd() -> Slapd {
    Slapd::builder().ldif(fixture()).start()
}

// ---- Valkey ---------------------------------------------------------------------------------

/// Search+bind from [`SUFFIX`] (anonymous searches), provisioning on, `acl_map` [`MAP`], then
/// `extra` (later arguments win).
fn args(slapd: &Slapd, extra: &[&str]) -> Vec<String> {
    let mut a = search_args(&slapd.url(), &["provision", "on", "acl_map", MAP]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn start_valkey(slapd: &Slapd, extra: &[&str]) -> Valkey {
    Valkey::builder().module(args(slapd, extra)).start()
}

/// Runs a command given as text arguments.
/// Adds (`"add"`) or removes (`"delete"`) `user` as a member of `group` in the directory.
fn change_member(slapd: &Slapd, change: &str, group: &str, user: &str) {
    let member = person_dn(user);
    ldapmodify(
        slapd,
        &format!("dn: {group}\nchangetype: modify\n{change}: member\nmember: {member}\n"),
    );
}

fn run(c: &mut RawClient, cmd: &[&str]) -> Reply {
    let args: Vec<&[u8]> = cmd.iter().map(|a| a.as_bytes()).collect();
    c.call(&args)
}

fn whoami_of(c: &mut RawClient) -> Option<String> {
    run(c, &["ACL", "WHOAMI"]).text()
}

/// The user `c` is logged in as. `ACL WHOAMI` needs `@slow`, which most provisioned users here
/// lack; then the session's id comes from `HELLO` (always allowed) and its user from
/// `CLIENT LIST ID` on a new (default user) connection.
fn session_user(v: &Valkey, c: &mut RawClient) -> String {
    let r = run(c, &["ACL", "WHOAMI"]);
    if let Some(me) = r.text() {
        return me;
    }
    assert_noperm(&r, "ACL WHOAMI");
    let hello = run(c, &["HELLO", "2"]);
    let id = match hello.get("id") {
        Some(Reply::Int(id)) => id.to_string(),
        _ => panic!("HELLO 2: {hello}"),
    };
    let list = run(&mut v.raw(), &["CLIENT", "LIST", "ID", &id])
        .text()
        .expect("CLIENT LIST text");
    list.split_whitespace()
        .find_map(|kv| kv.strip_prefix("user="))
        .unwrap_or_else(|| panic!("no user= in {list}"))
        .to_owned()
}

/// A new connection logged in as `user`; asserts `+OK` and who the session is.
fn login(v: &Valkey, user: &str, password: &str) -> RawClient {
    let mut c = v.raw();
    let r = c.auth(user.as_bytes(), password.as_bytes());
    assert_eq!(r, ok(), "AUTH {user}\nlog:\n{}", v.log());
    assert_eq!(session_user(v, &mut c), user, "session user");
    c
}

/// `AUTH user password` on a new connection.
fn try_login(v: &Valkey, user: &str, password: &str) -> Reply {
    v.raw().auth(user.as_bytes(), password.as_bytes())
}

fn assert_denied(v: &Valkey, user: &str, password: &str, context: &str) {
    assert_eq!(
        try_login(v, user, password),
        wrongpass(),
        "{context}: AUTH {user}"
    );
}

/// Asserts a NOPERM reply.
fn assert_noperm(r: &Reply, context: &str) {
    assert!(
        r.error().is_some_and(|e| e.starts_with("NOPERM")),
        "{context}: expected NOPERM, got {r}"
    );
}

/// Asserts a command was allowed (any reply but an error).
fn assert_allowed(r: &Reply, context: &str) {
    assert!(r.error().is_none(), "{context}: expected success, got {r}");
}

fn config_set(c: &mut RawClient, name: &str, value: &str) -> Reply {
    let name = format!("valkeyauth.{name}");
    run(c, &["CONFIG", "SET", &name, value])
}

fn set_ok(c: &mut RawClient, name: &str, value: &str) {
    let r = config_set(c, name, value);
    assert_eq!(r, ok(), "CONFIG SET valkeyauth.{name} {value:?}");
}

fn config_get(c: &mut RawClient, name: &str) -> String {
    let name = format!("valkeyauth.{name}");
    match run(c, &["CONFIG", "GET", &name]) {
        Reply::Array(a) if a.len() == 2 => a[1].text().expect("text value"),
        other => panic!("CONFIG GET {name}: {other}"),
    }
}

/// One numeric field of `INFO valkeyauth` on `c` (which may need to be authenticated).
fn field(c: &mut RawClient, name: &str) -> u64 {
    let all = counters_with(c);
    *all.get(name)
        .unwrap_or_else(|| panic!("no valkeyauth_{name} in INFO: {all:?}"))
}

/// One row of `VALKEYAUTH.USERS`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    name: String,
    rules: String,
    sessions: i64,
}

fn row(name: &str, rules: &str, sessions: i64) -> Row {
    Row {
        name: name.into(),
        rules: rules.into(),
        sessions,
    }
}

/// `VALKEYAUTH.USERS` on `c`, parsed strictly as `[name, rules, sessions]` rows.
fn users(c: &mut RawClient) -> Vec<Row> {
    let r = run(c, &["VALKEYAUTH.USERS"]);
    let Reply::Array(rows) = &r else {
        panic!("VALKEYAUTH.USERS: {r}");
    };
    rows.iter()
        .map(|item| match item {
            Reply::Array(f) if f.len() == 3 => match (&f[0], &f[1], &f[2]) {
                (Reply::Bulk(n), Reply::Bulk(rules), Reply::Int(s)) => Row {
                    name: String::from_utf8_lossy(n).into_owned(),
                    rules: String::from_utf8_lossy(rules).into_owned(),
                    sessions: *s,
                },
                _ => panic!("VALKEYAUTH.USERS row is not [bulk, bulk, int]: {item:?}"),
            },
            _ => panic!("VALKEYAUTH.USERS row is not a 3-element array: {item:?}"),
        })
        .collect()
}

/// The newest `ACL LOG` entry's `object` field.
fn last_acl_log_object(c: &mut RawClient) -> Option<String> {
    match run(c, &["ACL", "LOG", "1"]) {
        Reply::Array(entries) => entries.first()?.get("object")?.text(),
        _ => None,
    }
}

/// Search filters slapd received that look for groups (`member`, `uniqueMember`, `memberUid`).
fn group_searches(slapd: &Slapd) -> Vec<String> {
    search_filters(slapd)
        .into_iter()
        .filter(|f| f.to_lowercase().contains("member"))
        .collect()
}

// ---- one, two and zero groups ---------------------------------------------------------------

#[test]
fn one_group_gives_its_rules_read_only_cannot_write_writer_can() {
    let slapd = start_slapd();
    let v = start_valkey(&slapd, &[]);

    // bob is in readers only.
    let mut bob = login(&v, "bob", &pw("bob"));
    assert_noperm(&run(&mut bob, &["SET", "k", "v"]), "bob SET");
    assert_allowed(&run(&mut bob, &["GET", "k"]), "bob GET");
    assert_noperm(&run(&mut bob, &["FLUSHALL"]), "bob FLUSHALL");

    // alice is in writers and readers: +@all ~* wins for writes.
    let mut alice = login(&v, "alice", &pw("alice"));
    assert_eq!(run(&mut alice, &["SET", "k", "v"]), ok(), "alice SET");
    assert_eq!(
        run(&mut bob, &["GET", "k"]),
        Reply::Bulk(b"v".to_vec()),
        "bob reads what alice wrote"
    );

    // HELLO 3 AUTH provisions the same way.
    let mut hello = v.raw();
    let r = hello.hello3_auth(b"bob", pw("bob").as_bytes());
    assert!(matches!(r, Reply::Map(_)), "HELLO 3 AUTH bob: {r}");
    assert_noperm(&run(&mut hello, &["SET", "k", "w"]), "bob SET after HELLO");

    let mut admin = v.raw();
    assert_eq!(
        users(&mut admin),
        vec![
            row("alice", "(+@all ~*) (+@read ~*)", 1),
            row("bob", "(+@read ~*)", 2)
        ]
    );
    // No ACL users were created: ACL LIST shows only default.
    let list = format!("{:?}", run(&mut admin, &["ACL", "USERS"]));
    assert!(
        !list.contains("alice") && !list.contains("bob"),
        "ACL USERS: {list}"
    );
    assert_eq!(field(&mut admin, "allowed"), 3);
}

#[test]
fn two_groups_give_the_union_of_their_rules_and_key_patterns_hold() {
    let slapd = start_slapd();
    let v = start_valkey(&slapd, &[]);

    // carol is in cachers (groupOfUniqueNames) => +set ~cache:* and pingers (posixGroup,
    // memberUid) => +echo.
    let mut carol = login(&v, "carol", &pw("carol"));
    assert_eq!(
        run(&mut carol, &["SET", "cache:1", "x"]),
        ok(),
        "from cachers"
    );
    assert_eq!(
        run(&mut carol, &["ECHO", "hi"]),
        Reply::Bulk(b"hi".to_vec()),
        "from pingers"
    );
    assert_noperm(
        &run(&mut carol, &["SET", "other:1", "x"]),
        "key outside ~cache:*",
    );
    assert_noperm(
        &run(&mut carol, &["GET", "cache:1"]),
        "GET is in neither group",
    );
    assert_noperm(
        &run(&mut carol, &["DEL", "cache:1"]),
        "DEL is in neither group",
    );

    // dave is only in pingers: no SET at all.
    let mut dave = login(&v, "dave", &pw("dave"));
    assert_eq!(run(&mut dave, &["ECHO", "x"]), Reply::Bulk(b"x".to_vec()));
    assert_noperm(&run(&mut dave, &["SET", "cache:1", "x"]), "dave SET");

    let mut admin = v.raw();
    assert_eq!(
        users(&mut admin),
        vec![
            row("carol", "(+set ~cache:*) (+echo)", 1),
            row("dave", "(+echo)", 1)
        ]
    );
}

#[test]
fn no_group_is_denied_without_default_rules_and_gets_them_with() {
    let slapd = start_slapd();
    let v = start_valkey(&slapd, &[]);
    let mut admin = v.raw();

    // zed is in no group and there are no default_acl_rules.
    let before = field(&mut admin, "denied_no_mapping");
    assert_denied(&v, "zed", &pw("zed"), "no group, no default");
    assert_eq!(field(&mut admin, "denied_no_mapping"), before + 1);
    assert_eq!(field(&mut admin, "allowed"), 0);
    assert_eq!(
        last_acl_log_object(&mut admin).as_deref(),
        Some("valkeyauth:no-mapping"),
        "ACL LOG"
    );
    assert_eq!(users(&mut admin), vec![], "nobody was provisioned");
    // A wrong password is still a bad password, not a missing mapping.
    assert_denied(&v, "zed", "wrong", "wrong password");
    assert_eq!(field(&mut admin, "denied_no_mapping"), before + 1);
    assert_eq!(field(&mut admin, "denied_bad_credentials"), 1);

    // With default rules, zed gets exactly them.
    set_ok(&mut admin, "default_acl_rules", "+ping +get ~public:*");
    let mut zed = login(&v, "zed", &pw("zed"));
    assert_eq!(run(&mut zed, &["PING"]), Reply::Simple("PONG".into()));
    assert_allowed(&run(&mut zed, &["GET", "public:x"]), "GET public:x");
    assert_noperm(&run(&mut zed, &["GET", "secret"]), "GET outside ~public:*");
    assert_noperm(&run(&mut zed, &["SET", "public:x", "1"]), "SET");
    assert_eq!(
        users(&mut admin),
        vec![row("zed", "(+ping +get ~public:*)", 1)]
    );
    assert_eq!(field(&mut admin, "denied_no_mapping"), before + 1);

    // A mapped user gets the default rules after those of its groups.
    let mut dave = login(&v, "dave", &pw("dave"));
    assert_eq!(run(&mut dave, &["ECHO", "x"]), Reply::Bulk(b"x".to_vec()));
    assert_allowed(&run(&mut dave, &["GET", "public:x"]), "dave GET");
    assert_noperm(&run(&mut dave, &["GET", "secret"]), "dave GET secret");
    assert_eq!(
        users(&mut admin)[0],
        row("dave", "(+echo) (+ping +get ~public:*)", 1)
    );
}

/// The union of rules must hold when one group grants every key (`~*`, `allkeys`) or channel
/// (`&*`) and another group, or `default_acl_rules`, adds a narrower pattern. Valkey refuses a
/// narrower pattern after `~*` in one rule string ("Adding a pattern after the * pattern ... is
/// not valid"), although each group's rules alone are valid and were accepted by CONFIG SET.
#[test]
fn union_of_an_all_keys_group_and_a_narrower_pattern() {
    let slapd = start_slapd();
    let v = start_valkey(&slapd, &[]);
    let mut admin = v.raw();

    // olga is in writers (+@all ~*) and cachers (+set ~cache:*).
    let r = try_login(&v, "olga", &pw("olga"));
    assert_eq!(
        r,
        ok(),
        "olga in writers and cachers: counters {:?}\nlog:\n{}",
        counters_with(&mut admin),
        v.log()
    );
    let mut olga = login(&v, "olga", &pw("olga"));
    assert_eq!(run(&mut olga, &["SET", "any", "1"]), ok(), "from writers");
    assert_eq!(run(&mut olga, &["SET", "cache:1", "1"]), ok(), "from both");

    // The same with a narrower pattern in default_acl_rules after a group's ~*.
    set_ok(&mut admin, "default_acl_rules", "+ping ~public:*");
    let mut bob = login(&v, "bob", &pw("bob"));
    assert_allowed(&run(&mut bob, &["GET", "secret"]), "~* from readers");
    assert_eq!(run(&mut bob, &["PING"]), Reply::Simple("PONG".into()));

    // And for channels.
    set_ok(&mut admin, "default_acl_rules", "");
    set_ok(
        &mut admin,
        "acl_map",
        "writers => +@all ~* &*; cachers => +set ~cache:* &cache",
    );
    let mut olga = login(&v, "olga", &pw("olga"));
    assert_eq!(
        run(&mut olga, &["PUBLISH", "news", "x"]),
        Reply::Int(0),
        "&* from writers"
    );
    assert_eq!(field(&mut admin, "denied_internal_error"), 0);
}

// ---- nested groups --------------------------------------------------------------------------

#[test]
fn nested_groups_three_levels_deep() {
    let slapd = start_slapd();
    // Only the outermost group is mapped.
    let v = start_valkey(
        &slapd,
        &["acl_map", "g3 => +@all ~*", "nested_groups", "yes"],
    );
    let mut admin = v.raw();

    let mut nina = login(&v, "nina", &pw("nina"));
    assert_eq!(run(&mut nina, &["SET", "k", "v"]), ok(), "rules of g3");
    assert_eq!(users(&mut admin), vec![row("nina", "(+@all ~*)", 1)]);

    set_ok(&mut admin, "nested_groups", "no");
    assert_denied(&v, "nina", &pw("nina"), "nested_groups no");

    set_ok(&mut admin, "nested_groups", "yes");
    set_ok(&mut admin, "nested_groups_max_depth", "2");
    assert_denied(&v, "nina", &pw("nina"), "max depth 2 stops at g2");

    set_ok(&mut admin, "nested_groups_max_depth", "3");
    let _ = login(&v, "nina", &pw("nina"));

    // The same with the DN of g3 in acl_map.
    set_ok(&mut admin, "acl_map", &format!("{G3} => +get ~*"));
    let mut nina = login(&v, "nina", &pw("nina"));
    assert_noperm(&run(&mut nina, &["SET", "k", "v"]), "now only +get");
    assert_eq!(run(&mut nina, &["GET", "k"]), Reply::Bulk(b"v".to_vec()));
}

#[test]
fn a_group_cycle_does_not_hang_and_still_resolves() {
    let slapd = start_slapd();
    let v = start_valkey(
        &slapd,
        &["acl_map", "c2 => +@all ~*", "nested_groups", "yes"],
    );
    let started = Instant::now();
    let mut frank = login(&v, "frank", &pw("frank"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "AUTH took {:?}",
        started.elapsed()
    );
    assert_eq!(run(&mut frank, &["SET", "k", "v"]), ok());
    // The cycle is followed a bounded number of times: one search for frank's groups, then one
    // per group (c1, c2), well below the default depth of 8.
    let n = group_searches(&slapd).len();
    assert!(n <= 4, "{n} group searches: {:?}", group_searches(&slapd));

    // Again, with the whole cycle mapped, and with the deepest allowed depth.
    let mut admin = v.raw();
    set_ok(&mut admin, "acl_map", "c1 => +get ~*; c2 => +echo");
    set_ok(&mut admin, "nested_groups_max_depth", "64");
    let mut frank = login(&v, "frank", &pw("frank"));
    assert_noperm(&run(&mut frank, &["SET", "k", "v"]), "SET");
    assert_allowed(&run(&mut frank, &["GET", "k"]), "GET from c1");
    assert_allowed(&run(&mut frank, &["ECHO", "k"]), "ECHO from c2");
    assert_eq!(
        users(&mut admin),
        vec![row("frank", "(+get ~*) (+echo)", 2)]
    );
    assert_eq!(run(&mut admin, &["PING"]), Reply::Simple("PONG".into()));
    assert!(!v.log().contains("panicked"), "{}", v.log());
}

// ---- DNs with commas ------------------------------------------------------------------------

#[test]
fn a_user_dn_with_an_escaped_comma_is_found_in_member() {
    let slapd = start_slapd();
    let v = start_valkey(&slapd, &[]);
    // jsmith's entry is cn=smith\, john: found by search, then matched as a `member` of readers.
    let mut jsmith = login(&v, "jsmith", &pw("jsmith"));
    assert_allowed(&run(&mut jsmith, &["GET", "k"]), "GET");
    assert_noperm(&run(&mut jsmith, &["SET", "k", "v"]), "SET");
    let mut admin = v.raw();
    assert_eq!(users(&mut admin), vec![row("jsmith", "(+@read ~*)", 1)]);
    // It bound as that entry.
    let binds = bind_dns(&slapd);
    assert!(
        binds
            .iter()
            .any(|dn| dn.to_lowercase().starts_with("cn=smith\\2c john,")
                || dn.to_lowercase().starts_with("cn=smith\\, john,")),
        "binds: {binds:?}"
    );
    assert_denied(&v, "jsmith", "wrong", "wrong password");
}

#[test]
fn a_group_dn_with_commas_and_spaces_and_bare_names_match() {
    let slapd = start_slapd();
    let map = format!("{OPS_BERLIN} => +@all ~*; readers => +@read ~*");
    let v = start_valkey(&slapd, &["acl_map", &map]);
    let mut admin = v.raw();

    let mut erin = login(&v, "erin", &pw("erin"));
    assert_eq!(
        run(&mut erin, &["SET", "k", "v"]),
        ok(),
        "rules of Ops Team, Berlin"
    );
    let mut bob = login(&v, "bob", &pw("bob"));
    assert_noperm(&run(&mut bob, &["SET", "k", "v"]), "readers by bare name");
    assert_eq!(run(&mut bob, &["GET", "k"]), Reply::Bulk(b"v".to_vec()));

    // Other spellings of the same DN: case, spaces after commas, hex escape.
    set_ok(
        &mut admin,
        "acl_map",
        "CN=ops team\\2c berlin, OU=Groups, DC=Example, DC=test => +get ~*",
    );
    let mut erin = login(&v, "erin", &pw("erin"));
    assert_noperm(&run(&mut erin, &["SET", "k", "v"]), "only +get now");
    assert_allowed(&run(&mut erin, &["GET", "k"]), "GET");

    // The bare name of that group is its cn, comma included.
    set_ok(&mut admin, "acl_map", "ops team, berlin => +echo");
    let mut erin = login(&v, "erin", &pw("erin"));
    assert_allowed(&run(&mut erin, &["ECHO", "x"]), "ECHO by bare name");

    // The same cn under another OU is another group.
    set_ok(
        &mut admin,
        "acl_map",
        "cn=Ops Team\\, Berlin,ou=elsewhere,dc=example,dc=test => +@all ~*",
    );
    assert_denied(&v, "erin", &pw("erin"), "look-alike DN");
}

// ---- changes in the directory ---------------------------------------------------------------

/// Rules are set at each successful login, on the one module user that all sessions of that
/// name share. A login that is denied changes nothing: when a user leaves every mapped group,
/// the next login is refused but sessions already open keep the last rules until they
/// disconnect (and `CLIENT KILL USER` does not know module users; kill them by ID).
#[test]
fn a_user_removed_from_a_group_loses_its_rights_at_the_next_login() {
    let slapd = start_slapd();
    let v = start_valkey(&slapd, &[]);
    let mut admin = v.raw();

    // Session A: alice as writer (writers + readers).
    let mut a = login(&v, "alice", &pw("alice"));
    assert_eq!(run(&mut a, &["SET", "k", "1"]), ok());

    change_member(&slapd, "delete", WRITERS, "alice");
    // Nothing changes until she logs in again.
    assert_eq!(run(&mut a, &["SET", "k", "2"]), ok(), "before the re-login");

    // Session B: the next login has only the readers' rules.
    let mut b = login(&v, "alice", &pw("alice"));
    assert_noperm(&run(&mut b, &["SET", "k", "3"]), "B after removal");
    assert_eq!(run(&mut b, &["GET", "k"]), Reply::Bulk(b"2".to_vec()));

    // Live sessions of one name share one user: session A, opened before B's login, now has
    // B's rules too.
    assert_noperm(&run(&mut a, &["SET", "k", "4"]), "A after B's re-login");
    assert_eq!(run(&mut a, &["GET", "k"]), Reply::Bulk(b"2".to_vec()));
    assert_eq!(users(&mut admin), vec![row("alice", "(+@read ~*)", 2)]);

    // Added back: the next login restores writing for both sessions.
    change_member(&slapd, "add", WRITERS, "alice");
    let _c = login(&v, "alice", &pw("alice"));
    assert_eq!(run(&mut a, &["SET", "k", "5"]), ok(), "A after re-adding");
    assert_eq!(run(&mut b, &["SET", "k", "6"]), ok(), "B after re-adding");
    assert_eq!(
        users(&mut admin),
        vec![row("alice", "(+@all ~*) (+@read ~*)", 3)]
    );
}

/// Out of every mapped group: the next login is denied, and the sessions still open with the
/// old rules are closed, since the directory has just said that no rules are left.
#[test]
fn a_user_removed_from_every_group_loses_its_open_sessions_at_the_next_login() {
    let slapd = start_slapd();
    let v = start_valkey(&slapd, &[]);
    let mut admin = v.raw();
    let mut a = login(&v, "alice", &pw("alice"));
    assert_eq!(run(&mut a, &["SET", "k", "1"]), ok());
    for group in [WRITERS, READERS] {
        change_member(&slapd, "delete", group, "alice");
    }
    assert_denied(&v, "alice", &pw("alice"), "in no mapped group");
    assert_eq!(users(&mut admin), vec![], "alice is forgotten");
    let after = a.cmd(&[b"PING"]);
    assert!(after.is_err(), "session A is closed: {after:?}");
    assert!(v
        .log()
        .contains("the open sessions of \"alice\" are closed"));
}

/// A client that hangs up before its answer is judged the same way: its re-login, out of every
/// mapped group, closes the open sessions and is counted as denied, and nothing is cached that
/// would let the next login in with the old rules.
#[test]
fn a_hang_up_out_of_every_group_closes_the_open_sessions_too() {
    let slapd = start_slapd();
    let v = start_valkey(&slapd, &["cache_ttl_s", "300"]);
    let mut admin = v.raw();
    let mut a = login(&v, "alice", &pw("alice"));
    for group in [WRITERS, READERS] {
        change_member(&slapd, "delete", group, "alice");
    }
    assert_eq!(
        run(&mut admin, &["VALKEYAUTH.CACHE", "FLUSH", "alice"]),
        Reply::Int(1)
    );
    let denied = field(&mut admin, "denied_no_mapping");
    auth_and_hang_up(&v, b"alice", pw("alice").as_bytes());
    let deadline = Instant::now() + Duration::from_secs(5);
    while field(&mut admin, "denied_no_mapping") == denied {
        assert!(Instant::now() < deadline, "the hang-up was never judged");
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = a.cmd(&[b"PING"]);
    assert!(after.is_err(), "session A is closed: {after:?}");
    assert_eq!(users(&mut admin), vec![], "alice is forgotten");
    assert_eq!(field(&mut admin, "allowed"), 1, "only the first login");
    assert_denied(&v, "alice", &pw("alice"), "the next login");
}

/// With the cache on, a login with a cached password skips the directory; it must still get
/// the rules of the current `acl_map` ("A change applies to the next AUTH"), and must not keep
/// rules that the new `acl_map` no longer grants.
#[test]
fn acl_map_changes_apply_at_the_next_login_with_the_cache_on() {
    let slapd = start_slapd();
    let v = start_valkey(&slapd, &["cache_ttl_s", "300"]);
    let mut admin = v.raw();
    let mut bob = login(&v, "bob", &pw("bob"));
    assert_noperm(&run(&mut bob, &["SET", "k", "v"]), "readers");

    // Wider rules for readers.
    set_ok(&mut admin, "acl_map", "readers => +@all ~*");
    let mut bob = login(&v, "bob", &pw("bob"));
    assert_eq!(
        run(&mut bob, &["SET", "k", "v"]),
        ok(),
        "the new acl_map at the next login; USERS: {:?}",
        users(&mut admin)
    );

    // readers no longer mapped at all: the next login is denied, as without the cache.
    set_ok(&mut admin, "acl_map", "writers => +@all ~*");
    let r = try_login(&v, "bob", &pw("bob"));
    assert_eq!(
        r,
        wrongpass(),
        "bob's group is no longer mapped; USERS: {:?}",
        users(&mut admin)
    );
}

/// With the cache on, group changes in the directory are seen once the cached password is
/// gone: `VALKEYAUTH.CACHE FLUSH <user>` (as the README says for disabled users).
#[test]
fn with_the_cache_on_a_group_change_applies_after_cache_flush() {
    let slapd = start_slapd();
    let v = start_valkey(&slapd, &["cache_ttl_s", "300"]);
    let mut admin = v.raw();
    let mut alice = login(&v, "alice", &pw("alice"));
    assert_eq!(run(&mut alice, &["SET", "k", "v"]), ok());
    change_member(&slapd, "delete", WRITERS, "alice");
    assert_eq!(
        run(&mut admin, &["VALKEYAUTH.CACHE", "FLUSH", "alice"]),
        Reply::Int(1)
    );
    let mut again = login(&v, "alice", &pw("alice"));
    assert_noperm(&run(&mut again, &["SET", "k", "v"]), "after the flush");
    assert_noperm(
        &run(&mut alice, &["SET", "k", "v"]),
        "the older session too",
    );
    assert_eq!(users(&mut admin), vec![row("alice", "(+@read ~*)", 2)]);
}

// ---- existing ACL users ---------------------------------------------------------------------

#[test]
fn an_existing_acl_user_wins_over_its_groups() {
    let slapd = start_slapd();
    let v = start_valkey(&slapd, &[]);
    let mut admin = v.raw();
    assert_eq!(
        run(&mut admin, &["ACL", "SETUSER", "alice", "on", "+get", "~*"]),
        ok()
    );

    // Her groups would give +@all; she gets only the ACL user's +get.
    let mut alice = login(&v, "alice", &pw("alice"));
    assert_noperm(&run(&mut alice, &["SET", "k", "v"]), "SET");
    assert_allowed(&run(&mut alice, &["GET", "k"]), "GET");
    assert_noperm(&run(&mut alice, &["ECHO", "x"]), "ECHO");
    // The directory still decides the password.
    assert_denied(&v, "alice", "wrong", "wrong password");
    assert_eq!(users(&mut admin), vec![], "not provisioned");
    assert!(
        group_searches(&slapd).is_empty(),
        "no group lookup for an ACL user: {:?}",
        group_searches(&slapd)
    );
}

#[test]
fn a_disabled_acl_user_is_not_replaced_by_provisioning() {
    let slapd = start_slapd();
    let v = start_valkey(&slapd, &[]);
    let mut admin = v.raw();
    assert_eq!(
        run(
            &mut admin,
            &["ACL", "SETUSER", "alice", "off", "+@all", "~*"]
        ),
        ok()
    );
    let before = field(&mut admin, "denied_no_acl_user");
    assert_denied(&v, "alice", &pw("alice"), "disabled ACL user");
    assert_eq!(field(&mut admin, "denied_no_acl_user"), before + 1);
    assert_eq!(field(&mut admin, "allowed"), 0);
    assert_eq!(users(&mut admin), vec![], "not provisioned");

    // Enabled again, she is that ACL user (not a provisioned one).
    assert_eq!(run(&mut admin, &["ACL", "SETUSER", "alice", "on"]), ok());
    let _alice = login(&v, "alice", &pw("alice"));
    assert_eq!(users(&mut admin), vec![]);
}

// ---- names ----------------------------------------------------------------------------------

#[test]
fn only_the_lowercase_spelling_is_provisioned() {
    let slapd = start_slapd();
    // Bind mode: slapd would accept cn=ALICE (DNs compare without regard to case).
    let v = Valkey::builder()
        .module([
            "servers",
            &slapd.url(),
            "bind_dn_suffix",
            &format!(",{PEOPLE}"),
            "group_search_base",
            GROUPS,
            "provision",
            "on",
            "acl_map",
            MAP,
        ])
        .start();
    let mut admin = v.raw();

    let mut alice = login(&v, "alice", &pw("alice"));
    assert_eq!(run(&mut alice, &["SET", "k", "v"]), ok());
    for name in ["ALICE", "Alice", "alicE"] {
        assert_denied(&v, name, &pw("alice"), "uppercase spelling");
    }
    assert_eq!(field(&mut admin, "denied_no_acl_user"), 3);
    assert_eq!(
        users(&mut admin),
        vec![row("alice", "(+@all ~*) (+@read ~*)", 1)]
    );
    // Refused before anything reached the directory.
    let binds = bind_dns(&slapd);
    assert!(
        !binds
            .iter()
            .any(|dn| dn.contains("ALICE") || dn.contains("Alice") || dn.contains("alicE")),
        "binds: {binds:?}"
    );
    // ...although slapd itself would have accepted that spelling.
    assert_eq!(
        slapd
            .bind("cn=ALICE,ou=people,dc=example,dc=test", "alice-pw")
            .unwrap(),
        0
    );
}

#[test]
fn exempt_users_and_default_are_never_provisioned() {
    let slapd = start_slapd();
    let v = start_valkey(&slapd, &["exempt_users", "default,svc"]);
    let mut admin = v.raw();

    // svc exists in the directory but is exempt: Valkey's own check, which has no user svc.
    assert_denied(&v, "svc", &pw("svc"), "exempt user");
    assert_eq!(field(&mut admin, "exempt_passthrough"), 1);
    // default (a directory person in writers) is exempt too: Valkey's own (nopass) check.
    let mut d = v.raw();
    assert_eq!(d.auth(b"default", b"anything"), ok());
    assert_eq!(whoami_of(&mut d).as_deref(), Some("default"));
    assert_eq!(field(&mut admin, "exempt_passthrough"), 2);
    assert_eq!(users(&mut admin), vec![]);
    let binds = bind_dns(&slapd);
    assert!(binds.is_empty(), "nothing reached the directory: {binds:?}");

    // default no longer exempt: the directory checks it, but it stays Valkey's default user.
    assert_eq!(
        run(
            &mut admin,
            &[
                "ACL",
                "SETUSER",
                "admin",
                "on",
                ">admin-secret",
                "+@all",
                "~*"
            ]
        ),
        ok()
    );
    set_ok(&mut admin, "exempt_users", "svc admin");
    let mut admin = v.raw();
    assert_eq!(admin.auth(b"admin", b"admin-secret"), ok());
    assert_denied(
        &v,
        "default",
        "anything",
        "directory password for default is checked",
    );
    let mut d = login(&v, "default", &pw("default"));
    assert_allowed(&run(&mut d, &["SET", "k", "v"]), "default's own +@all");
    assert_eq!(users(&mut admin), vec![]);

    // Disabled, default is refused and not replaced by a provisioned user.
    assert_eq!(run(&mut admin, &["ACL", "SETUSER", "default", "off"]), ok());
    assert_denied(&v, "default", &pw("default"), "default disabled");
    assert_eq!(users(&mut admin), vec![]);
    // svc is still exempt.
    assert_denied(&v, "svc", &pw("svc"), "exempt user again");
    assert!(
        !bind_dns(&slapd).iter().any(|dn| dn.contains("cn=svc")),
        "svc never reached the directory"
    );
}

// ---- acl_map validation and persistence -----------------------------------------------------

#[test]
fn invalid_acl_map_values_are_refused_and_the_old_value_stays() {
    let slapd = start_slapd();
    let v = start_valkey(&slapd, &["acl_map", "readers => +@read ~*"]);
    let mut admin = v.raw();

    let r = config_set(&mut admin, "acl_map", "readers => +@nosuchcategory");
    let e = r.error().unwrap_or_else(|| panic!("accepted: {r}"));
    assert!(e.contains("+@nosuchcategory"), "names the rules: {e}");

    let r = config_set(
        &mut admin,
        "acl_map",
        "writers => +@all ~*; readers => +get ~* nosuchrule",
    );
    let e = r.error().unwrap_or_else(|| panic!("accepted: {r}"));
    assert!(e.contains("nosuchrule"), "names the rules: {e}");

    for bad in [
        "readers +@all",
        "=> +@all",
        "readers =>",
        "readers => +@all; writers",
        "cn=readers,ougroups => +@all",
    ] {
        let r = config_set(&mut admin, "acl_map", bad);
        assert!(r.error().is_some(), "{bad:?} accepted: {r}");
    }
    // A password in a rule is refused without repeating it.
    for bad in [
        "readers => +@all >Rule-Secret-Pw",
        "readers => #Rule-Secret-Pw",
    ] {
        let r = config_set(&mut admin, "acl_map", bad);
        let e = r.error().unwrap_or_else(|| panic!("accepted: {r}"));
        assert!(e.contains("may not hold passwords"), "{e}");
        assert!(!e.contains("Rule-Secret-Pw"), "{e}");
    }
    assert!(!v.log().contains("Rule-Secret-Pw"));
    let r = config_set(&mut admin, "default_acl_rules", "+@bogus");
    let e = r.error().unwrap_or_else(|| panic!("accepted: {r}"));
    assert!(e.contains("+@bogus"), "{e}");

    assert_eq!(config_get(&mut admin, "acl_map"), "readers => +@read ~*");
    assert_eq!(config_get(&mut admin, "default_acl_rules"), "");
    // And it is still in force.
    let mut bob = login(&v, "bob", &pw("bob"));
    assert_noperm(&run(&mut bob, &["SET", "k", "v"]), "bob SET");
    assert_allowed(&run(&mut bob, &["GET", "k"]), "bob GET");
}

#[test]
fn acl_map_round_trips_through_config_rewrite_and_restart() {
    let slapd = start_slapd();
    // acl_map is set at run time, not as a module argument (CONFIG REWRITE writes those
    // unquoted).
    let mut v = Valkey::builder()
        .module(search_args(&slapd.url(), &["provision", "on"]))
        .start();
    let map = format!("{OPS_BERLIN} => +@all ~*; readers => +@read ~*; cachers => ~a\\;b +get");
    let mut admin = v.raw();
    set_ok(&mut admin, "acl_map", &map);
    set_ok(&mut admin, "default_acl_rules", "+ping");
    assert_eq!(config_get(&mut admin, "acl_map"), map);
    assert_eq!(run(&mut admin, &["CONFIG", "REWRITE"]), ok());
    drop(admin);
    let conf = std::fs::read_to_string(v.config_path()).expect("read valkey.conf");
    assert!(conf.contains("valkeyauth.acl_map"), "rewritten:\n{conf}");

    v.restart()
        .unwrap_or_else(|log| panic!("restart failed:\n{log}"));
    let mut admin = v.raw();
    assert_eq!(config_get(&mut admin, "acl_map"), map);
    assert_eq!(config_get(&mut admin, "default_acl_rules"), "+ping");
    let mut erin = login(&v, "erin", &pw("erin"));
    assert_eq!(run(&mut erin, &["SET", "k", "v"]), ok(), "Ops Team, Berlin");
    let mut bob = login(&v, "bob", &pw("bob"));
    assert_noperm(&run(&mut bob, &["SET", "k", "v"]), "readers");
    assert_eq!(run(&mut bob, &["PING"]), Reply::Simple("PONG".into()));
    let mut carol = login(&v, "carol", &pw("carol"));
    assert_allowed(&run(&mut carol, &["GET", "a;b"]), "key pattern with ;");
    assert_noperm(&run(&mut carol, &["GET", "ab"]), "other key");
    assert_eq!(
        users(&mut admin),
        vec![
            row("bob", "(+@read ~*) (+ping)", 1),
            row("carol", "(~a;b +get) (+ping)", 1),
            row("erin", "(+@all ~*) (+ping)", 1),
        ]
    );
}

// ---- membership attribute -------------------------------------------------------------------

#[test]
fn groups_from_a_membership_attribute_of_the_user_entry() {
    let slapd = start_slapd();
    let v = start_valkey(&slapd, &[]);
    let mut admin = v.raw();

    // hank is no member of any group; his seeAlso lists readers and pingers.
    assert_denied(&v, "hank", &pw("hank"), "group search finds nothing");

    set_ok(&mut admin, "group_membership_attribute", "seeAlso");
    let searches_before = group_searches(&slapd).len();
    let mut hank = login(&v, "hank", &pw("hank"));
    assert_allowed(&run(&mut hank, &["GET", "k"]), "from readers");
    assert_eq!(
        run(&mut hank, &["ECHO", "x"]),
        Reply::Bulk(b"x".to_vec()),
        "from pingers"
    );
    assert_noperm(&run(&mut hank, &["SET", "k", "v"]), "SET");
    assert_eq!(
        users(&mut admin),
        vec![row("hank", "(+@read ~*) (+echo)", 1)]
    );
    assert_eq!(
        group_searches(&slapd).len(),
        searches_before,
        "the attribute was read, no group was searched"
    );

    // With the attribute, real group membership is not searched: bob (member of readers, no
    // seeAlso) has no groups.
    assert_denied(&v, "bob", &pw("bob"), "no seeAlso");
}

// ---- legacy one-argument AUTH ---------------------------------------------------------------

/// A connection logged in as `default` with the one-argument AUTH.
fn admin_with_password(v: &Valkey) -> RawClient {
    let mut c = v.raw();
    assert_eq!(c.call(&[b"AUTH", b"defpw"]), ok(), "AUTH defpw");
    c
}

/// Sends exactly `*2\r\n$4\r\nAUTH\r\n$<n>\r\n<arg>\r\n` on a new connection.
fn legacy_auth(v: &Valkey, arg: &str) -> (RawClient, Reply) {
    let mut c = v.raw();
    let mut bytes = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n", arg.len()).into_bytes();
    bytes.extend_from_slice(arg.as_bytes());
    bytes.extend_from_slice(b"\r\n");
    c.send_raw(&bytes).expect("send");
    let r = c.read();
    (c, r)
}

#[test]
fn legacy_single_argument_auth() {
    let slapd = start_slapd();
    let v = Valkey::builder()
        .module(args(&slapd, &["legacy_auth_separator", ":"]))
        .config("requirepass defpw")
        .start();
    let mut admin = admin_with_password(&v);

    // Exactly the bytes of an old client: provisioned alice.
    let mut c = v.raw();
    c.send_raw(b"*2\r\n$4\r\nAUTH\r\n$14\r\nalice:alice-pw\r\n")
        .expect("send");
    assert_eq!(c.read(), ok());
    assert_eq!(whoami_of(&mut c).as_deref(), Some("alice"));
    assert_eq!(run(&mut c, &["SET", "k", "v"]), ok(), "alice's groups");
    assert_eq!(
        users(&mut admin),
        vec![row("alice", "(+@all ~*) (+@read ~*)", 1)]
    );

    // An existing ACL user: bob gets his ACL user's rules, not his groups'.
    assert_eq!(
        run(&mut admin, &["ACL", "SETUSER", "bob", "on", "+@all", "~*"]),
        ok()
    );
    let (mut c, r) = legacy_auth(&v, "bob:bob-pw");
    assert_eq!(r, ok());
    assert_eq!(whoami_of(&mut c).as_deref(), Some("bob"));
    assert_eq!(run(&mut c, &["SET", "k", "v"]), ok(), "ACL user bob");

    assert_eq!(legacy_auth(&v, "alice:wrong").1, wrongpass());
    assert_eq!(legacy_auth(&v, "nosuchuser:x").1, wrongpass());

    // The split is at the first separator: the password may hold more.
    ldapmodify(
        &slapd,
        &format!(
            "dn: {}\nchangetype: modify\nreplace: userPassword\nuserPassword: pa:ss\n",
            person_dn("alice")
        ),
    );
    let (mut c, r) = legacy_auth(&v, "alice:pa:ss");
    assert_eq!(r, ok(), "password with the separator\n{}", v.log());
    assert_eq!(whoami_of(&mut c).as_deref(), Some("alice"));
    assert_eq!(
        legacy_auth(&v, "alice:alice-pw").1,
        wrongpass(),
        "old password"
    );
    assert_eq!(
        legacy_auth(&v, "alice:pa").1,
        wrongpass(),
        "a prefix of the password"
    );

    // Without a separator in it, the argument is default's password.
    let (mut c, r) = legacy_auth(&v, "defpw");
    assert_eq!(r, ok());
    assert_eq!(whoami_of(&mut c).as_deref(), Some("default"));
    assert_eq!(legacy_auth(&v, "wrongpw").1, wrongpass());

    // Separator off: `alice:pa:ss` is only a wrong password for default.
    set_ok(&mut admin, "legacy_auth_separator", "");
    let binds_before = bind_dns(&slapd).len();
    assert_eq!(legacy_auth(&v, "alice:pa:ss").1, wrongpass());
    assert_eq!(
        bind_dns(&slapd).len(),
        binds_before,
        "nothing sent to the directory"
    );
    let (mut c, r) = legacy_auth(&v, "defpw");
    assert_eq!(r, ok());
    assert_eq!(whoami_of(&mut c).as_deref(), Some("default"));
}

// ---- VALKEYAUTH.USERS -----------------------------------------------------------------------

#[test]
fn users_command_shows_rules_and_live_session_counts() {
    let slapd = start_slapd();
    let v = start_valkey(&slapd, &[]);
    let mut admin = v.raw();
    assert_eq!(users(&mut admin), vec![]);

    let bob1 = login(&v, "bob", &pw("bob"));
    let bob2 = login(&v, "bob", &pw("bob"));
    let carol = login(&v, "carol", &pw("carol"));
    assert_eq!(
        users(&mut admin),
        vec![
            row("bob", "(+@read ~*)", 2),
            row("carol", "(+set ~cache:*) (+echo)", 1)
        ]
    );

    drop(bob2);
    let got = wait_for(1, Duration::from_secs(10), || users(&mut admin)[0].sessions);
    assert_eq!(got, 1, "one bob session after closing the other");
    drop(carol);
    drop(bob1);
    let got = wait_for(
        vec![
            row("bob", "(+@read ~*)", 0),
            row("carol", "(+set ~cache:*) (+echo)", 0),
        ],
        Duration::from_secs(10),
        || users(&mut admin),
    );
    assert_eq!(
        got,
        vec![
            row("bob", "(+@read ~*)", 0),
            row("carol", "(+set ~cache:*) (+echo)", 0)
        ],
        "users stay listed without sessions"
    );

    // A session that logs in as someone else no longer counts.
    let mut c = login(&v, "bob", &pw("bob"));
    assert_eq!(users(&mut admin)[0].sessions, 1);
    assert_eq!(c.auth(b"carol", pw("carol").as_bytes()), ok());
    assert_eq!(
        users(&mut admin),
        vec![
            row("bob", "(+@read ~*)", 0),
            row("carol", "(+set ~cache:*) (+echo)", 1)
        ]
    );
    assert_eq!(
        run(&mut admin, &["VALKEYAUTH.USERS", "extra"])
            .error()
            .map(|e| e.starts_with("ERR wrong number")),
        Some(true)
    );
}

#[test]
fn concurrent_first_logins_share_one_user() {
    const CLIENTS: usize = 24;
    let slapd = start_slapd();
    let v = start_valkey(&slapd, &[]);
    let sessions: Vec<RawClient> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|_| {
                s.spawn(|| {
                    let mut c = v.raw();
                    let r = c.auth(b"bob", pw("bob").as_bytes());
                    (c, r)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (c, r) = h.join().expect("client thread");
                assert_eq!(r, ok(), "concurrent AUTH bob");
                c
            })
            .collect()
    });
    let mut admin = v.raw();
    assert_eq!(
        users(&mut admin),
        vec![row("bob", "(+@read ~*)", CLIENTS as i64)]
    );
    assert_eq!(field(&mut admin, "allowed"), CLIENTS as u64);
    for mut c in sessions {
        assert_noperm(&run(&mut c, &["SET", "k", "v"]), "bob SET");
    }
}

#[test]
fn users_command_needs_admin_rights() {
    let slapd = start_slapd();
    let v = start_valkey(&slapd, &[]);
    let mut bob = login(&v, "bob", &pw("bob"));
    assert_noperm(
        &run(&mut bob, &["VALKEYAUTH.USERS"]),
        "read-only provisioned user",
    );
    assert_noperm(
        &run(&mut bob, &["VALKEYAUTH.CACHE", "FLUSH"]),
        "read-only user",
    );
    // alice (+@all) may.
    let mut alice = login(&v, "alice", &pw("alice"));
    assert_eq!(
        users(&mut alice),
        vec![
            row("alice", "(+@all ~*) (+@read ~*)", 1),
            row("bob", "(+@read ~*)", 1)
        ]
    );
}

// ---- MODULE UNLOAD --------------------------------------------------------------------------

#[test]
fn module_unload_disconnects_provisioned_sessions_and_load_works_again() {
    let slapd = start_slapd();
    let mut v = start_valkey(&slapd, &[]);
    let mut admin = v.raw();
    // An ACL user's session is not the module's: it stays.
    assert_eq!(
        run(&mut admin, &["ACL", "SETUSER", "dave", "on", "+@all", "~*"]),
        ok()
    );
    let mut dave = login(&v, "dave", &pw("dave"));
    let mut bob = login(&v, "bob", &pw("bob"));
    let mut carol = login(&v, "carol", &pw("carol"));

    let r = run(&mut admin, &["MODULE", "UNLOAD", "valkeyauth"]);
    assert_eq!(r, ok(), "MODULE UNLOAD\n{}", v.log());
    for (name, c) in [("bob", &mut bob), ("carol", &mut carol)] {
        let r = c.cmd(&[b"GET", b"k"]);
        assert!(
            r.is_err(),
            "{name}'s session still answers after unload: {r:?}"
        );
    }
    assert_eq!(run(&mut admin, &["PING"]), Reply::Simple("PONG".into()));
    assert_eq!(run(&mut dave, &["PING"]), Reply::Simple("PONG".into()));
    assert_eq!(whoami_of(&mut dave).as_deref(), Some("dave"));
    // No module: bob has no ACL user.
    assert_denied(&v, "bob", &pw("bob"), "without the module");

    let path = module_path();
    let mut load: Vec<String> = vec![
        "MODULE".into(),
        "LOAD".into(),
        path.to_str().expect("utf-8 path").into(),
    ];
    load.extend(args(
        &slapd,
        &["cache_ttl_s", "0", "negative_cache_ttl_s", "0"],
    ));
    let load: Vec<&str> = load.iter().map(String::as_str).collect();
    let r = run(&mut admin, &load);
    assert_eq!(r, ok(), "MODULE LOAD\n{}", v.log());
    assert_eq!(users(&mut admin), vec![], "a fresh load has no users");
    let mut bob = login(&v, "bob", &pw("bob"));
    assert_noperm(&run(&mut bob, &["SET", "k", "v"]), "bob SET");
    assert_allowed(&run(&mut bob, &["GET", "k"]), "bob GET");
    assert_eq!(users(&mut admin), vec![row("bob", "(+@read ~*)", 1)]);
    assert!(v.is_running());
    let log = v.log();
    assert!(
        !log.contains("crashed by signal") && !log.contains("panicked"),
        "{log}"
    );
}

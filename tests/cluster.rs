//! Valkey Cluster: 3 primaries and 3 replicas (Valkey 9.1) on loopback, every node with the
//! module and the same `valkeyauth.*` lines in its valkey.conf, against one slapd. Users are
//! provisioned from their directory groups, so no node needs its own ACL users.
//!
//! Checked: AUTH on every node; a cluster client logged in with directory credentials (our
//! own MOVED-following client, and `valkey-cli -c`) writes and reads keys across all
//! primaries; group rules hold on every node; `scripts/cluster-config-set.sh` changes every
//! node; after `CLUSTER FAILOVER` on a replica, AUTH, reads and writes work on the new primary.

mod common;

use common::*;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const PRIMARIES: usize = 3;
const KEYS: usize = 300;
/// Group rules: admins (alice) may do everything, readers (bob, carol) only read.
const ACL_MAP: &str = "admins => +@all ~* &*; readers => +@read ~*";

fn valkey_cli() -> PathBuf {
    repo_root().join("tools/valkey-8.1/valkey-cli")
}

// --------------------------------------------------------------------------------------------
// Starting the cluster
// --------------------------------------------------------------------------------------------

/// The lines an operator would put in every node's valkey.conf (the module loads with no
/// arguments; `valkeyauth.*` lines are what CONFIG REWRITE keeps).
fn valkeyauth_lines(slapd: &Slapd) -> Vec<String> {
    vec![
        format!("valkeyauth.servers {}", slapd.url()),
        "valkeyauth.auth_mode search+bind".into(),
        format!("valkeyauth.search_base {}", conf_quote(SUFFIX)),
        "valkeyauth.workers 2".into(),
        "valkeyauth.provision on".into(),
        format!("valkeyauth.acl_map {}", conf_quote(ACL_MAP)),
    ]
}

/// One cluster node. The bus port is chosen free too (`cluster-port`), instead of relying on
/// port + 10000 being free.
fn start_node(slapd: &Slapd) -> Valkey {
    let mut b = Valkey::builder()
        .module(NO_ARGS)
        .config("cluster-enabled yes")
        .config(format!("cluster-port {}", free_port()))
        .config("cluster-config-file nodes.conf")
        .config("cluster-node-timeout 5000")
        // Replicas sync at once instead of after the default 5 s wait for more replicas.
        .config("repl-diskless-sync-delay 0");
    for l in valkeyauth_lines(slapd) {
        b = b.config(l);
    }
    b.start()
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

/// `valkey-cli --cluster create` with one replica per primary.
fn create_cluster(nodes: &[Valkey]) {
    let mut cmd = Command::new(valkey_cli());
    cmd.arg("--cluster").arg("create");
    for n in nodes {
        cmd.arg(format!("127.0.0.1:{}", n.port()));
    }
    cmd.args(["--cluster-replicas", "1", "--cluster-yes"]);
    let out = run(&mut cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("All 16384 slots covered"),
        "valkey-cli --cluster create:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cluster_info(v: &Valkey) -> String {
    v.raw()
        .call(&[b"CLUSTER", b"INFO"])
        .text()
        .unwrap_or_default()
}

/// Waits until every node reports `cluster_state:ok` and knows all the others.
fn wait_cluster_ok(nodes: &[Valkey]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = |v: &Valkey| {
        let info = cluster_info(v);
        info.contains("cluster_state:ok")
            && info.contains(&format!("cluster_known_nodes:{}", nodes.len()))
    };
    while !nodes.iter().all(ready) {
        assert!(
            Instant::now() < deadline,
            "cluster not ok after 30 s:\n{}",
            cluster_info(&nodes[0])
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn replication(v: &Valkey) -> String {
    v.raw()
        .call(&[b"INFO", b"replication"])
        .text()
        .unwrap_or_default()
}

/// Waits until every replica has finished its initial sync: a manual failover waits for the
/// replica to catch up with its primary, and one that never synced cannot.
fn wait_replicas_synced(nodes: &[Valkey]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let synced = |v: &Valkey| {
        let info = replication(v);
        info.contains("role:master")
            || (info.contains("master_link_status:up")
                && info.contains("master_sync_in_progress:0"))
    };
    for n in nodes {
        while !synced(n) {
            assert!(
                Instant::now() < deadline,
                "replica {} not in sync:\n{}",
                n.port(),
                replication(n)
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One line of CLUSTER NODES.
struct NodeLine {
    id: String,
    port: u16,
    primary: bool,
    primary_id: String,
}

fn cluster_nodes(v: &Valkey) -> Vec<NodeLine> {
    let text = v
        .raw()
        .call(&[b"CLUSTER", b"NODES"])
        .text()
        .expect("CLUSTER NODES");
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let addr = f[1].split('@').next().expect("address");
            NodeLine {
                id: f[0].to_owned(),
                port: addr
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("port"),
                primary: f[2].contains("master"),
                primary_id: f[3].to_owned(),
            }
        })
        .collect()
}

/// `ROLE`'s first element: "master" or "slave".
fn role(v: &Valkey) -> String {
    match v.raw().call(&[b"ROLE"]) {
        Reply::Array(a) => a.first().and_then(Reply::text).unwrap_or_default(),
        other => panic!("ROLE: {other}"),
    }
}

fn dbsize(v: &Valkey) -> i64 {
    match v.raw().call(&[b"DBSIZE"]) {
        Reply::Int(n) => n,
        other => panic!("DBSIZE: {other}"),
    }
}

// --------------------------------------------------------------------------------------------
// A small cluster client: logs in to each node it talks to, follows MOVED and ASK, and
// remembers which node serves a slot, as cluster-aware clients do.
// --------------------------------------------------------------------------------------------

/// The cluster hash slot of `key` (CRC16/XMODEM of the key or of its `{hash tag}`, mod 16384).
fn key_slot(key: &[u8]) -> usize {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &b in tagged {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    usize::from(crc) % 16384
}

/// `MOVED <slot> <host>:<port>` or `ASK ...`: (is ASK, slot, port).
fn redirect(err: &str) -> Option<(bool, usize, u16)> {
    let mut words = err.split_whitespace();
    let ask = match words.next()? {
        "MOVED" => false,
        "ASK" => true,
        _ => return None,
    };
    let slot = words.next()?.parse().ok()?;
    let port = words.next()?.rsplit(':').next()?.parse().ok()?;
    Some((ask, slot, port))
}

struct ClusterClient {
    user: &'static str,
    password: &'static str,
    seed: u16,
    conns: HashMap<u16, RawClient>,
    slots: HashMap<usize, u16>,
    redirects: usize,
}

impl ClusterClient {
    fn new(seed: u16, user: &FixtureUser) -> ClusterClient {
        ClusterClient {
            user: user.name,
            password: user.password,
            seed,
            conns: HashMap::new(),
            slots: HashMap::new(),
            redirects: 0,
        }
    }

    /// The logged-in connection to `port`, opened on first use.
    fn conn(&mut self, port: u16) -> &mut RawClient {
        let (user, password) = (self.user, self.password);
        self.conns.entry(port).or_insert_with(|| {
            let mut c = RawClient::connect(port);
            let r = c.auth(user.as_bytes(), password.as_bytes());
            assert_eq!(r, ok(), "AUTH {user} on node {port}");
            c
        })
    }

    /// Runs a command on `key`'s node; returns the final reply.
    fn call(&mut self, key: &[u8], args: &[&[u8]]) -> Reply {
        let slot = key_slot(key);
        let mut port = *self.slots.get(&slot).unwrap_or(&self.seed);
        let mut asking = false;
        for _ in 0..5 {
            let c = self.conn(port);
            if asking {
                assert!(c.call(&[b"ASKING"]).is_ok());
            }
            let reply = c.call(args);
            let Some((ask, to_slot, to_port)) = reply.error().and_then(redirect) else {
                return reply;
            };
            assert_eq!(to_slot, slot, "{reply}");
            port = to_port;
            self.redirects += 1;
            asking = ask;
            if !ask {
                self.slots.insert(slot, port);
            }
        }
        panic!("more than 5 redirects for slot {slot}");
    }

    fn set(&mut self, key: &str, value: &str) -> Reply {
        self.call(key.as_bytes(), &[b"SET", key.as_bytes(), value.as_bytes()])
    }

    fn get(&mut self, key: &str) -> Reply {
        self.call(key.as_bytes(), &[b"GET", key.as_bytes()])
    }
}

/// Writes `KEYS` keys `<prefix>:<i>` and reads them back through `client`.
fn write_and_read(client: &mut ClusterClient, prefix: &str) {
    for i in 0..KEYS {
        let key = format!("{prefix}:{i}");
        assert_eq!(client.set(&key, &format!("v{i}")), ok(), "SET {key}");
    }
    for i in 0..KEYS {
        let key = format!("{prefix}:{i}");
        assert_eq!(
            client.get(&key),
            Reply::Bulk(format!("v{i}").into_bytes()),
            "GET {key}"
        );
    }
}

// --------------------------------------------------------------------------------------------
// The admin helper
// --------------------------------------------------------------------------------------------

/// `scripts/cluster-config-set.sh [flags] 127.0.0.1:<seed> <name> <value>`: (exit ok,
/// stdout).
fn cluster_config_set(seed: u16, flags: &[&str], name: &str, value: &str) -> (bool, String) {
    let out = run(Command::new("bash")
        .arg(repo_root().join("scripts/cluster-config-set.sh"))
        .args(flags)
        .arg(format!("127.0.0.1:{seed}"))
        .args([name, value])
        .env("VALKEY_CLI", valkey_cli()));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.trim().is_empty(), "stderr: {err}");
    (out.status.success(), text)
}

fn config_get(v: &Valkey, name: &str) -> String {
    let r = v.raw().call(&[b"CONFIG", b"GET", name.as_bytes()]);
    r.get(name)
        .and_then(Reply::text)
        .unwrap_or_else(|| panic!("CONFIG GET {name}: {r}"))
}

// --------------------------------------------------------------------------------------------
// Test
// --------------------------------------------------------------------------------------------

#[test]
fn three_primaries_three_replicas_auth_keys_and_failover() {
    let started = Instant::now();
    let slapd = Slapd::start_default();
    let nodes: Vec<Valkey> = (0..2 * PRIMARIES).map(|_| start_node(&slapd)).collect();
    create_cluster(&nodes);
    wait_cluster_ok(&nodes);
    wait_replicas_synced(&nodes);
    let by_port: BTreeMap<u16, &Valkey> = nodes.iter().map(|n| (n.port(), n)).collect();
    let roles: Vec<String> = nodes.iter().map(role).collect();
    assert_eq!(roles.iter().filter(|r| *r == "master").count(), PRIMARIES);

    // AUTH on every node, primaries and replicas alike; the groups' rules on every node.
    for n in &nodes {
        let (r, mut c) = login(n, ALICE.name, ALICE.password);
        assert_eq!(r, ok(), "node {}: log:\n{}", n.port(), n.log());
        assert_eq!(c.whoami(), "alice");
        assert_eq!(login(n, ALICE.name, "wrong").0, wrongpass());
        let (r, mut c) = login(n, BOB.name, BOB.password);
        assert_eq!(r, ok(), "node {}", n.port());
        let denied = c.call(&[b"SET", b"x", b"1"]);
        assert!(
            denied.error().is_some_and(|e| e.starts_with("NOPERM")),
            "bob may only read, node {}: {denied}",
            n.port()
        );
        assert_eq!(login(n, "nobody", "pw").0, wrongpass());
    }

    // A cluster client logged in as alice writes and reads across every primary.
    let seed = nodes[0].port();
    let mut alice = ClusterClient::new(seed, &ALICE);
    write_and_read(&mut alice, "key");
    assert!(alice.redirects > 0, "keys on other nodes were redirected");
    let primaries: Vec<&Valkey> = nodes.iter().filter(|n| role(n) == "master").collect();
    let sizes: Vec<i64> = primaries.iter().map(|n| dbsize(n)).collect();
    assert!(
        sizes.iter().all(|&s| s > 0),
        "keys on every primary: {sizes:?}"
    );
    assert_eq!(sizes.iter().sum::<i64>(), KEYS as i64);
    // bob reads anywhere, writes nowhere.
    let mut bob = ClusterClient::new(seed, &BOB);
    assert_eq!(bob.get("key:7"), Reply::Bulk(b"v7".to_vec()));
    assert!(bob
        .set("key:7", "x")
        .error()
        .is_some_and(|e| e.starts_with("NOPERM")));

    // A standard cluster-aware client: valkey-cli -c, the password in its environment.
    let out = run(Command::new(valkey_cli())
        .args(["-c", "--no-auth-warning", "--user", ALICE.name])
        .args(["-p", &seed.to_string(), "GET", "key:42"])
        .env("REDISCLI_AUTH", ALICE.password)
        .env("VALKEYCLI_AUTH", ALICE.password));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v42");

    // The admin helper changes every node, and reports a value a node refuses.
    let (ok_all, text) = cluster_config_set(seed, &[], "valkeyauth.workers", "3");
    assert!(ok_all, "{text}");
    assert_eq!(
        text.lines().filter(|l| l.ends_with(": OK")).count(),
        nodes.len(),
        "{text}"
    );
    for n in &nodes {
        assert_eq!(info_field(n, "workers"), 3, "node {}", n.port());
    }
    let (ok_all, text) = cluster_config_set(seed, &[], "valkeyauth.workers", "0");
    assert!(!ok_all, "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains("ERR")).count(),
        nodes.len()
    );
    let (ok_all, text) =
        cluster_config_set(seed, &["--rewrite"], "valkeyauth.auth_timeout_ms", "8000");
    assert!(ok_all, "{text}");
    for n in &nodes {
        assert_eq!(config_get(n, "valkeyauth.auth_timeout_ms"), "8000");
        let file = std::fs::read_to_string(n.config_path()).expect("valkey.conf");
        assert!(
            file.contains("valkeyauth.auth_timeout_ms \"8000\""),
            "CONFIG REWRITE on {}:\n{file}",
            n.port()
        );
    }

    // Manual failover: a replica takes over its primary's slots.
    let lines = cluster_nodes(&nodes[0]);
    let replica = lines.iter().find(|l| !l.primary).expect("a replica");
    let old_primary = lines
        .iter()
        .find(|l| l.id == replica.primary_id)
        .expect("the replica's primary");
    let (new_p, old_p) = (by_port[&replica.port], by_port[&old_primary.port]);
    let keys_before = dbsize(new_p);
    assert!(new_p.raw().call(&[b"CLUSTER", b"FAILOVER"]).is_ok());
    let deadline = Instant::now() + Duration::from_secs(30);
    while role(new_p) != "master" || role(old_p) != "slave" {
        assert!(
            Instant::now() < deadline,
            "failover did not finish:\nnew primary:\n{}\nold primary:\n{}",
            replication(new_p),
            replication(old_p)
        );
        thread::sleep(Duration::from_millis(100));
    }
    wait_cluster_ok(&nodes);

    // The new primary authenticates, and serves reads and writes of its slots; the client
    // follows the MOVED from the old primary.
    let (r, mut c) = login(new_p, ALICE.name, ALICE.password);
    assert_eq!(r, ok(), "log:\n{}", new_p.log());
    assert_eq!(c.whoami(), "alice");
    assert_eq!(login(new_p, ALICE.name, "wrong").0, wrongpass());
    let redirects = alice.redirects;
    for i in 0..KEYS {
        assert_eq!(
            alice.get(&format!("key:{i}")),
            Reply::Bulk(format!("v{i}").into_bytes())
        );
    }
    assert!(
        alice.redirects > redirects,
        "the moved slots were redirected"
    );
    write_and_read(&mut alice, "after");
    assert!(
        dbsize(new_p) > keys_before,
        "writes reached the new primary"
    );
    let mut fresh = ClusterClient::new(new_p.port(), &ALICE);
    write_and_read(&mut fresh, "fresh");
    eprintln!(
        "[cluster] 6 nodes, {} keys written, failover included: {:.1} s",
        3 * KEYS,
        started.elapsed().as_secs_f64()
    );
}

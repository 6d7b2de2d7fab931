mod common;
use common::*;

#[test]
fn explore() {
    let slapd = Slapd::start_default();
    let v = Valkey::builder().module(["servers", &slapd.url(), "bind_dn_suffix", ",ou=people,dc=example,dc=test", "workers", "1"]).start();
    let mut a = v.raw();
    for name in ["alice", " spaceuser ", "q\"<;>=user", "#hashuser", "zoë", "paren)(user"] {
        println!("setuser {name:?}: {}", a.call(&[b"ACL", b"SETUSER", name.as_bytes(), b"on", b"+@all", b"~*"]));
    }
    let mut c = v.raw();
    println!("{}", c.auth(b"alice", b"alice-pw"));
    println!("{}", c.auth(b"alice", b"bad"));
    println!("{}", c.auth(b" spaceuser ", b"space-pw"));
    println!("{}", c.auth(b"#hashuser", b"hash-pw"));
    println!("{}", c.auth(b"alice", b""));
    println!("{}", c.auth(b"", b"x"));
    println!("{}", a.call(&[b"INFO", b"valkeyauth"]));
    println!("{}", slapd.log());
    println!("{}", v.log());
}

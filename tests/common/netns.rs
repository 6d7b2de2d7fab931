//! Servers with fixed ports (Samba's AD DC, 389-DS) run in a network namespace of their own,
//! made with `unshare --net`: its `127.0.0.1` is theirs. A test thread joins it with
//! [`enter`] (then its ports, clients and `free_port` are there), and valkey-server is started
//! in it through the wrapper of [`valkey_wrapper`].

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::Version;

mod sys {
    use std::ffi::c_int;
    pub const CLONE_NEWNET: c_int = 0x4000_0000;
    extern "C" {
        pub fn setns(fd: c_int, nstype: c_int) -> c_int;
    }
}

/// Moves the calling thread into the network namespace of process `pid`.
pub fn enter(pid: u32) {
    let ns = fs::File::open(format!("/proc/{pid}/ns/net"))
        .unwrap_or_else(|e| panic!("open the network namespace of {pid}: {e}"));
    // SAFETY: `ns` is an open namespace file; setns(2) changes only this thread's network
    // namespace.
    let rc = unsafe { sys::setns(ns.as_raw_fd(), sys::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Waits until process `pid`, started with [`unshare_command`], is in its new namespace: until
/// then `/proc/<pid>/ns/net` is still ours, and joining it would join nothing.
pub fn wait_until_unshared(pid: u32) {
    let ns_of = |pid: u32| fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    let ours = ns_of(std::process::id());
    let deadline = Instant::now() + super::START_TIMEOUT;
    while ns_of(pid) == ours {
        assert!(
            Instant::now() < deadline,
            "{pid} never left our network namespace"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// A script in `dir` that runs Valkey 9.1 in the network namespace of `pid` (`nsenter` execs,
/// so the server keeps the script's pid); give it to `ValkeyBuilder::binary`.
pub fn valkey_wrapper(dir: &Path, pid: u32) -> PathBuf {
    let wrapper = dir.join("valkey-in-netns");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec nsenter --net=/proc/{pid}/ns/net '{}' \"$@\"\n",
            Version::V9_1.binary().display()
        ),
    )
    .expect("write wrapper");
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod wrapper");
    wrapper
}

/// `sh -c <script>` in a new network namespace with loopback up; `script` should end by
/// exec-ing the server, so that the child's pid is the server's.
pub fn unshare_command(script: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--net", "sh", "-c"])
        .arg(format!("ip link set lo up && {script}"));
    cmd
}

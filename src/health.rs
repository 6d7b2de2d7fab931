//! Which directory servers are up, and the one thread that brings failed ones back.
//!
//! A worker that cannot reach a server marks it down; later AUTHs skip it instead of paying its
//! timeout again. The checker probes down servers every `health_check_interval_ms` and marks
//! those that answer up again, so traffic returns to a recovered higher-priority server.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::AcqRel, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};

use crate::engine::{self, Generation};
use crate::ldap::LdapError;

/// What kind of trouble a server last gave, for INFO. The names are INFO values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    None,
    Unreachable,
    Timeout,
    Tls,
    /// The server answered, but not as a working directory should (an unexpected result
    /// code, a refused service account, a failed search).
    Directory,
}

impl ErrorClass {
    const ALL: [ErrorClass; 5] = [
        ErrorClass::None,
        ErrorClass::Unreachable,
        ErrorClass::Timeout,
        ErrorClass::Tls,
        ErrorClass::Directory,
    ];

    pub fn of(e: &LdapError) -> ErrorClass {
        if e.is_tls() {
            ErrorClass::Tls
        } else if e.is_timeout() {
            ErrorClass::Timeout
        } else if e.is_transport() {
            ErrorClass::Unreachable
        } else {
            ErrorClass::Directory
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::None => "none",
            ErrorClass::Unreachable => "unreachable",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Tls => "tls",
            ErrorClass::Directory => "directory",
        }
    }
}

/// The state of each configured server, by index into `Settings::servers`.
#[derive(Debug)]
pub struct Health {
    servers: Vec<ServerState>,
}

#[derive(Debug, Default)]
struct ServerState {
    down: AtomicBool,
    /// Timed out on a step cut short by an AUTH's own deadline: the checker decides.
    suspect: AtomicBool,
    consecutive_failures: AtomicU64,
    /// An [`ErrorClass`] index.
    last_error: AtomicU8,
    last_rtt_us: AtomicU64,
    open_connections: AtomicU64,
}

impl Health {
    pub fn new(servers: usize) -> Health {
        Health {
            servers: (0..servers).map(|_| ServerState::default()).collect(),
        }
    }

    pub fn is_up(&self, server: usize) -> bool {
        !self.servers[server].down.load(Relaxed)
    }

    pub fn mark_down(&self, server: usize) {
        let state = &self.servers[server];
        state.consecutive_failures.fetch_add(1, Relaxed);
        state.down.store(true, Relaxed);
    }

    pub fn mark_up(&self, server: usize) {
        let state = &self.servers[server];
        state.consecutive_failures.store(0, Relaxed);
        state.suspect.store(false, Relaxed);
        state.down.store(false, Relaxed);
    }

    /// Leaves the server in use, but has the checker probe it with the full timeouts.
    pub fn suspect(&self, server: usize) {
        self.servers[server].suspect.store(true, Relaxed);
    }

    /// Every server is marked down: an AUTH cannot be answered by the directory now.
    pub fn all_down(&self) -> bool {
        self.servers.iter().all(|s| s.down.load(Relaxed))
    }

    pub fn consecutive_failures(&self, server: usize) -> u64 {
        self.servers[server].consecutive_failures.load(Relaxed)
    }

    pub fn record_error(&self, server: usize, e: &LdapError) {
        self.servers[server]
            .last_error
            .store(ErrorClass::of(e) as u8, Relaxed);
    }

    pub fn last_error(&self, server: usize) -> ErrorClass {
        let index = self.servers[server].last_error.load(Relaxed);
        ErrorClass::ALL[usize::from(index)]
    }

    /// The time one request to the server took, last time one was answered.
    pub fn record_rtt(&self, server: usize, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.servers[server].last_rtt_us.store(us, Relaxed);
    }

    pub fn last_rtt(&self, server: usize) -> Duration {
        Duration::from_micros(self.servers[server].last_rtt_us.load(Relaxed))
    }

    pub fn connection_opened(&self, server: usize) {
        self.servers[server].open_connections.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self, server: usize) {
        self.servers[server].open_connections.fetch_sub(1, Relaxed);
    }

    /// Connections that workers hold open to the server for this configuration.
    pub fn open_connections(&self, server: usize) -> u64 {
        self.servers[server].open_connections.load(Relaxed)
    }

    /// Servers to probe: those marked down, and those under suspicion.
    fn to_probe(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.servers.len())
            .filter(|i| !self.is_up(*i) || self.servers[*i].suspect.load(Relaxed))
    }
}

/// The health checker thread. It follows configuration changes through a channel; dropping
/// the checker closes the channel and joins the thread.
pub struct Checker {
    // Declared before `thread`: dropping closes the channel, then the join finds it leaving.
    updates: Option<Sender<Arc<Generation>>>,
    thread: Option<JoinHandle<()>>,
    /// [`IDLE`], [`PROBING`] or [`STOPPING`]: the thread probes only from idle, and the
    /// checker is stopped only from idle, so a stop never waits on a directory.
    state: Arc<AtomicU8>,
}

const IDLE: u8 = 0;
const PROBING: u8 = 1;
const STOPPING: u8 = 2;

impl Checker {
    pub fn start(generation: Arc<Generation>) -> io::Result<Checker> {
        let (updates, rx) = unbounded();
        let state = Arc::new(AtomicU8::new(IDLE));
        let thread_state = Arc::clone(&state);
        let thread = thread::Builder::new()
            .name("valkeyauth-health".to_owned())
            .spawn(move || check_loop(generation, rx, &thread_state))?;
        Ok(Checker {
            updates: Some(updates),
            thread: Some(thread),
            state,
        })
    }

    /// Keeps the thread from starting another probe, so that dropping the checker joins at
    /// once. False (and nothing changed) while a probe is talking to a directory.
    pub fn try_stop(&self) -> bool {
        self.state
            .compare_exchange(IDLE, STOPPING, AcqRel, Relaxed)
            .is_ok()
    }

    /// Hands the checker a new configuration; never waits.
    pub fn update(&self, generation: Arc<Generation>) {
        if let Some(updates) = &self.updates {
            let _ = updates.send(generation);
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.updates = None;
        if let Some(thread) = self.thread.take() {
            // The loop catches panics of a probe; an Err here leaves nothing to clean up.
            let _ = thread.join();
        }
    }
}

fn check_loop(
    mut generation: Arc<Generation>,
    updates: Receiver<Arc<Generation>>,
    state: &AtomicU8,
) {
    loop {
        match updates.recv_timeout(generation.settings.health_check_interval) {
            Ok(newer) => generation = newer,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if generation.health.to_probe().next().is_none() {
            continue;
        }
        if state
            .compare_exchange(IDLE, PROBING, AcqRel, Relaxed)
            .is_err()
        {
            return; // stopping
        }
        let probed = std::panic::catch_unwind(|| probe_down_servers(&generation));
        state.store(IDLE, Relaxed);
        if probed.is_err() {
            log::warn!("valkeyauth: the health checker recovered from an internal error");
        }
    }
}

fn probe_down_servers(generation: &Generation) {
    let settings = &generation.settings;
    for index in generation.health.to_probe() {
        let url = &settings.servers[index];
        match engine::probe(settings, url) {
            Ok(()) => {
                if !generation.health.is_up(index) {
                    log::info!("valkeyauth: directory server {url} is up again");
                }
                generation.health.mark_up(index);
            }
            Err(e) => {
                generation.health.record_error(index, &e);
                generation.health.mark_down(index);
                log::debug!("valkeyauth: directory server {url} is still down: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::ldap::Timeouts;
    use std::net::TcpListener;
    use std::time::Instant;

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// A server that takes connections and never answers: the probe waits for its timeout.
    /// The checker refuses to stop meanwhile and goes on probing; once idle it stops, and
    /// dropping it joins at once.
    #[test]
    fn stops_only_between_probes() {
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut settings = Settings::defaults();
        settings.servers = vec![format!("ldap://{}", silent.local_addr().unwrap())];
        settings.timeouts = Timeouts {
            connect: Duration::from_millis(400),
            operation: Duration::from_millis(400),
        };
        settings.health_check_interval = Duration::from_millis(10);
        let generation = Arc::new(Generation::new(settings));
        generation.health.mark_down(0);
        let checker = Checker::start(Arc::clone(&generation)).unwrap();

        wait_until("the first probe", || checker.state.load(Relaxed) == PROBING);
        assert!(!checker.try_stop());
        assert_eq!(checker.state.load(Relaxed), PROBING);
        // Refused, it goes on: the probe fails, and later ones too.
        wait_until("two failed probes", || {
            generation.health.consecutive_failures(0) >= 3
        });

        // No listener: each probe now fails at once, and a stop gets in between two.
        drop(silent);
        wait_until("the checker is idle", || checker.try_stop());
        let t = Instant::now();
        drop(checker);
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn marks_count_failures_until_up() {
        let health = Health::new(2);
        assert!(health.is_up(0) && health.is_up(1));
        health.mark_down(1);
        health.mark_down(1);
        assert!(!health.is_up(1));
        assert_eq!(health.consecutive_failures(1), 2);
        assert_eq!(health.to_probe().collect::<Vec<_>>(), [1]);
        health.suspect(0);
        assert!(health.is_up(0));
        assert_eq!(health.to_probe().collect::<Vec<_>>(), [0, 1]);
        health.mark_up(1);
        assert!(health.is_up(1));
        assert_eq!(health.consecutive_failures(1), 0);
        health.mark_up(0);
        assert!(health.to_probe().next().is_none());
    }
}

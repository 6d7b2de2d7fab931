//! Which directory servers are up, and the one thread that brings failed ones back.
//!
//! A worker that cannot reach a server marks it down; later AUTHs skip it instead of paying its
//! timeout again. The checker probes down servers every `health_check_interval_ms` and marks
//! those that answer up again, so traffic returns to a recovered higher-priority server.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};

use crate::engine::{self, Generation};

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
}

impl Checker {
    pub fn start(generation: Arc<Generation>) -> io::Result<Checker> {
        let (updates, rx) = unbounded();
        let thread = thread::Builder::new()
            .name("valkeyauth-health".to_owned())
            .spawn(move || check_loop(generation, rx))?;
        Ok(Checker {
            updates: Some(updates),
            thread: Some(thread),
        })
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

fn check_loop(mut generation: Arc<Generation>, updates: Receiver<Arc<Generation>>) {
    loop {
        match updates.recv_timeout(generation.settings.health_check_interval) {
            Ok(newer) => generation = newer,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let probed = std::panic::catch_unwind(|| probe_down_servers(&generation));
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
                generation.health.mark_down(index);
                log::debug!("valkeyauth: directory server {url} is still down: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

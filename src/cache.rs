//! What the directory answered recently, so that reconnects with the same credentials do not ask
//! it again.
//!
//! Entries hold a username and a keyed BLAKE3 hash of username and password, under a key drawn
//! at load and never shown: a memory dump gives no password and no way to test guesses
//! offline. Only the main thread uses the cache, so it needs no lock of its own.
//!
//! - Positive entries: the password that last succeeded for a user, for `cache_ttl_s`.
//! - Negative entries (the lockout shield): passwords the directory refused, for
//!   `negative_cache_ttl_s`, so a client retrying a stale password in a loop does not lock its
//!   user out of Active Directory. A different wrong password still goes to the directory.
//! - While no directory server can be reached, a positive entry up to `cache_stale_on_outage_s`
//!   old still admits the same password.

use std::fs::File;
use std::io::{self, Read};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;

/// A keyed hash of one username and password.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Fingerprint(blake3::Hash);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub stale_on_outage: Duration,
    pub max_entries: usize,
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The directory accepted this password within the TTL.
    Allowed,
    /// The directory refused this password within the negative TTL.
    Refused,
    Miss,
}

struct Success {
    fingerprint: Fingerprint,
    at: Instant,
}

/// A refused password: keyed by its fingerprint, with the username so that one user's
/// refusals can be flushed (after a password change, say).
struct Refusal {
    username: String,
    at: Instant,
}

pub struct Cache {
    key: [u8; 32],
    limits: Limits,
    positive: LruCache<String, Success>,
    negative: LruCache<Fingerprint, Refusal>,
    pub evictions: u64,
    pub epoch: u64,
}

impl Cache {
    pub fn new(limits: Limits) -> io::Result<Cache> {
        let mut key = [0u8; 32];
        File::open("/dev/urandom")?.read_exact(&mut key)?;
        let capacity = NonZeroUsize::new(limits.max_entries).unwrap_or(NonZeroUsize::MIN);
        Ok(Cache {
            key,
            limits,
            positive: LruCache::new(capacity),
            negative: LruCache::new(capacity),
            evictions: 0,
            epoch: 0,
        })
    }

    /// Keeps the key (so in-flight fingerprints stay valid) but drops every entry when the
    /// limits change.
    pub fn set_limits(&mut self, limits: Limits) {
        if limits != self.limits {
            let capacity = NonZeroUsize::new(limits.max_entries).unwrap_or(NonZeroUsize::MIN);
            self.positive = LruCache::new(capacity);
            self.negative = LruCache::new(capacity);
            self.limits = limits;
            self.epoch += 1;
        }
    }

    pub fn fingerprint(&self, username: &str, password: &[u8]) -> Fingerprint {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        // The length prefix keeps ("ab", "c") and ("a", "bc") apart.
        hasher.update(&(username.len() as u64).to_le_bytes());
        hasher.update(username.as_bytes());
        hasher.update(password);
        Fingerprint(hasher.finalize())
    }

    pub fn lookup(&mut self, username: &str, fingerprint: Fingerprint) -> Lookup {
        let now = Instant::now();
        if self.fresh_success(username, fingerprint, self.limits.ttl, now) {
            return Lookup::Allowed;
        }
        match self.negative.get(&fingerprint) {
            Some(refusal) if now.duration_since(refusal.at) < self.limits.negative_ttl => {
                Lookup::Refused
            }
            Some(_) => {
                self.negative.pop(&fingerprint);
                Lookup::Miss
            }
            None => Lookup::Miss,
        }
    }

    /// The outage window: whether this password succeeded recently enough to admit it while
    /// no directory server can be reached.
    pub fn admits_during_outage(&mut self, username: &str, fingerprint: Fingerprint) -> bool {
        self.fresh_success(
            username,
            fingerprint,
            self.limits.stale_on_outage,
            Instant::now(),
        )
    }

    fn fresh_success(
        &mut self,
        username: &str,
        fingerprint: Fingerprint,
        ttl: Duration,
        now: Instant,
    ) -> bool {
        match self.positive.get(username) {
            // blake3::Hash compares in constant time.
            Some(s) if s.fingerprint == fingerprint => now.duration_since(s.at) < ttl,
            _ => false,
        }
    }

    fn enforce_bound(&mut self) {
        while self.entries() > self.limits.max_entries {
            if self.negative.pop_lru().is_none() {
                self.positive.pop_lru();
            }
            self.evictions += 1;
        }
    }

    pub fn record_success(&mut self, username: &str, fingerprint: Fingerprint) {
        self.negative.pop(&fingerprint);
        let longest = self.limits.ttl.max(self.limits.stale_on_outage);
        if longest.is_zero() {
            return;
        }
        let success = Success {
            fingerprint,
            at: Instant::now(),
        };
        if let Some((evicted, _)) = self.positive.push(username.to_owned(), success) {
            if evicted != username {
                self.evictions += 1;
            }
        }
        self.enforce_bound();
    }

    pub fn record_refusal(&mut self, username: &str, fingerprint: Fingerprint) {
        if self
            .positive
            .peek(username)
            .is_some_and(|s| s.fingerprint == fingerprint)
        {
            self.positive.pop(username);
        }
        if self.limits.negative_ttl.is_zero() {
            return;
        }
        let refusal = Refusal {
            username: username.to_owned(),
            at: Instant::now(),
        };
        if let Some((evicted, _)) = self.negative.push(fingerprint, refusal) {
            if evicted != fingerprint {
                self.evictions += 1;
            }
        }
        self.enforce_bound();
    }

    /// Removes one user's entries, or all; returns how many were removed. Answers already on
    /// their way are not cached when they arrive: they may predate what made the flush needed.
    pub fn flush(&mut self, username: Option<&str>) -> usize {
        self.epoch += 1;
        match username {
            Some(user) => {
                let refused: Vec<Fingerprint> = self
                    .negative
                    .iter()
                    .filter(|(_, refusal)| refusal.username == user)
                    .map(|(fingerprint, _)| *fingerprint)
                    .collect();
                for fingerprint in &refused {
                    self.negative.pop(fingerprint);
                }
                refused.len() + usize::from(self.positive.pop(user).is_some())
            }
            None => {
                let removed = self.positive.len() + self.negative.len();
                self.positive.clear();
                self.negative.clear();
                removed
            }
        }
    }

    /// Drops every entry: the configuration that produced them changed.
    pub fn clear(&mut self) {
        self.epoch += 1;
        self.positive.clear();
        self.negative.clear();
    }

    pub fn entries(&self) -> usize {
        self.positive.len() + self.negative.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(ttl_ms: u64, negative_ms: u64, stale_ms: u64, max: usize) -> Cache {
        Cache::new(Limits {
            ttl: Duration::from_millis(ttl_ms),
            negative_ttl: Duration::from_millis(negative_ms),
            stale_on_outage: Duration::from_millis(stale_ms),
            max_entries: max,
        })
        .unwrap()
    }

    #[test]
    fn only_the_same_password_hits() {
        let mut c = cache(60_000, 60_000, 0, 10);
        let right = c.fingerprint("alice", b"alice-pw");
        let other = c.fingerprint("alice", b"alice-pw2");
        assert_eq!(c.lookup("alice", right), Lookup::Miss);
        c.record_success("alice", right);
        assert_eq!(c.lookup("alice", right), Lookup::Allowed);
        assert_eq!(c.lookup("alice", other), Lookup::Miss);
        assert_eq!(c.lookup("bob", right), Lookup::Miss);
    }

    #[test]
    fn fingerprints_separate_users_and_keys() {
        let c = cache(1, 1, 0, 1);
        assert_ne!(c.fingerprint("ab", b"c"), c.fingerprint("a", b"bc"));
        let d = cache(1, 1, 0, 1);
        assert_ne!(
            c.fingerprint("a", b"b"),
            d.fingerprint("a", b"b"),
            "a key per cache"
        );
    }

    #[test]
    fn entries_expire() {
        let mut c = cache(30, 30, 0, 10);
        let f = c.fingerprint("alice", b"pw");
        let g = c.fingerprint("alice", b"bad");
        c.record_success("alice", f);
        c.record_refusal("alice", g);
        assert_eq!(c.lookup("alice", f), Lookup::Allowed);
        assert_eq!(c.lookup("alice", g), Lookup::Refused);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.lookup("alice", f), Lookup::Miss);
        assert_eq!(c.lookup("alice", g), Lookup::Miss);
    }

    #[test]
    fn ttl_zero_caches_nothing() {
        let mut c = cache(0, 0, 0, 10);
        let f = c.fingerprint("alice", b"pw");
        c.record_success("alice", f);
        c.record_refusal("alice", f);
        assert_eq!(c.lookup("alice", f), Lookup::Miss);
        assert_eq!(c.entries(), 0);
    }

    #[test]
    fn outage_window_is_separate_from_the_ttl() {
        let mut c = cache(1, 0, 60_000, 10);
        let f = c.fingerprint("alice", b"pw");
        c.record_success("alice", f);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.lookup("alice", f), Lookup::Miss);
        assert!(c.admits_during_outage("alice", f));
        assert!(!c.admits_during_outage("alice", c.fingerprint("alice", b"other")));
    }

    #[test]
    fn success_clears_a_refusal_of_the_same_password() {
        let mut c = cache(60_000, 60_000, 0, 10);
        let f = c.fingerprint("alice", b"new-pw");
        c.record_refusal("alice", f);
        c.record_success("alice", f);
        assert_eq!(c.lookup("alice", f), Lookup::Allowed);
    }

    #[test]
    fn the_bound_holds_and_evictions_count() {
        let mut c = cache(60_000, 60_000, 0, 1000);
        for i in 0..200_000 {
            let user = format!("user{i}");
            let f = c.fingerprint(&user, b"pw");
            c.record_success(&user, f);
        }
        assert_eq!(c.entries(), 1000);
        assert_eq!(c.evictions, 199_000);
    }

    #[test]
    fn flush_one_or_all() {
        let mut c = cache(60_000, 60_000, 0, 10);
        for user in ["alice", "bob"] {
            let f = c.fingerprint(user, b"pw");
            c.record_success(user, f);
        }
        // An answer already on its way (of the epoch before) will not be cached.
        let before = c.epoch;
        assert_eq!(c.flush(Some("alice")), 1);
        assert_ne!(c.epoch, before);
        assert_eq!(c.flush(Some("alice")), 0);
        assert_eq!(c.flush(None), 1);
        assert_eq!(c.entries(), 0);

        // A user's refusals go too: the helpdesk set the password that was refused before.
        for (user, password) in [("alice", b"old"), ("alice", b"new"), ("bob", b"new")] {
            let f = c.fingerprint(user, password);
            c.record_refusal(user, f);
        }
        assert_eq!(c.flush(Some("alice")), 2);
        let bob = c.fingerprint("bob", b"new");
        assert_eq!(c.lookup("bob", bob), Lookup::Refused);
        let alice = c.fingerprint("alice", b"new");
        assert_eq!(c.lookup("alice", alice), Lookup::Miss);
    }

    /// Entries hold usernames, fingerprints and times: nothing in them can hold password bytes.
    #[test]
    fn entries_hold_no_password_bytes() {
        assert_eq!(std::mem::size_of::<Fingerprint>(), 32);
        let mut c = cache(60_000, 60_000, 0, 10);
        let password = b"hunter2-hunter2-hunter2";
        let f = c.fingerprint("alice", password);
        c.record_success("alice", f);
        let bytes = f.0.as_bytes();
        assert!(!bytes.windows(7).any(|w| w == b"hunter2"));
    }
}

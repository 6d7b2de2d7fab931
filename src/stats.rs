//! Counters for `INFO valkeyauth`. Plain atomics: workers and the main thread bump them without
//! a lock, and reading INFO never waits on a worker.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::engine::Outcome;

/// Events counted besides the outcomes. The names are the INFO field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An AUTH left to Valkey because the user is exempt.
    ExemptPassthrough,
    /// A failed directory check handed on to Valkey's own password check by `local_fallback`.
    LocalFallbackUsed,
    CacheHit,
    CacheMiss,
    /// A wrong password refused from the lockout shield, without a bind.
    CacheNegativeHit,
    /// Admitted by the outage window while no directory server could be reached.
    CacheStaleOnOutage,
    /// An AUTH that waited for an identical one already on its way to the directory.
    Coalesced,
}

impl Event {
    pub const ALL: [Event; 7] = [
        Event::ExemptPassthrough,
        Event::LocalFallbackUsed,
        Event::CacheHit,
        Event::CacheMiss,
        Event::CacheNegativeHit,
        Event::CacheStaleOnOutage,
        Event::Coalesced,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Event::ExemptPassthrough => "exempt_passthrough",
            Event::LocalFallbackUsed => "local_fallback_used",
            Event::CacheHit => "cache_hits",
            Event::CacheMiss => "cache_misses",
            Event::CacheNegativeHit => "cache_negative_hits",
            Event::CacheStaleOnOutage => "cache_stale_on_outage",
            Event::Coalesced => "coalesced",
        }
    }
}

pub struct Stats {
    outcomes: [AtomicU64; Outcome::ALL.len()],
    events: [AtomicU64; Event::ALL.len()],
}

/// Global because Valkey's INFO and auth callbacks carry no pointer of ours.
pub static STATS: Stats = Stats {
    outcomes: [const { AtomicU64::new(0) }; Outcome::ALL.len()],
    events: [const { AtomicU64::new(0) }; Event::ALL.len()],
};

impl Stats {
    pub fn record(&self, outcome: Outcome) {
        self.outcomes[outcome.index()].fetch_add(1, Relaxed);
    }

    pub fn count(&self, event: Event) {
        self.events[event as usize].fetch_add(1, Relaxed);
    }

    /// A module loaded again into the same process may find these statics still set.
    pub fn reset(&self) {
        for counter in self.outcomes.iter().chain(&self.events) {
            counter.store(0, Relaxed);
        }
    }

    /// `(field, value)` pairs in INFO order.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let outcomes = Outcome::ALL
            .iter()
            .map(|o| (o.name(), self.outcomes[o.index()].load(Relaxed)));
        let events = Event::ALL
            .iter()
            .map(|e| (e.name(), self.events[*e as usize].load(Relaxed)));
        outcomes.chain(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_index_their_own_counter() {
        for (i, e) in Event::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
        }
    }
}

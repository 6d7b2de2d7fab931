//! Counters for `INFO valkeyauth`. Plain atomics: workers and the main thread bump them without
//! a lock, and reading INFO never waits on a worker.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::engine::Outcome;

pub struct Stats {
    outcomes: [AtomicU64; Outcome::ALL.len()],
    /// AUTHs left to Valkey because the user is exempt.
    exempt: AtomicU64,
    /// Failed directory checks handed on to Valkey's own password check by `local_fallback`.
    local_fallback: AtomicU64,
}

/// Global because Valkey's INFO and auth callbacks carry no pointer of ours.
pub static STATS: Stats = Stats {
    outcomes: [const { AtomicU64::new(0) }; Outcome::ALL.len()],
    exempt: AtomicU64::new(0),
    local_fallback: AtomicU64::new(0),
};

impl Stats {
    pub fn record(&self, outcome: Outcome) {
        self.outcomes[outcome.index()].fetch_add(1, Relaxed);
    }

    pub fn record_exempt(&self) {
        self.exempt.fetch_add(1, Relaxed);
    }

    pub fn record_local_fallback(&self) {
        self.local_fallback.fetch_add(1, Relaxed);
    }

    /// A module loaded again into the same process may find these statics still set.
    pub fn reset(&self) {
        for counter in self
            .outcomes
            .iter()
            .chain([&self.exempt, &self.local_fallback])
        {
            counter.store(0, Relaxed);
        }
    }

    /// `(field, value)` pairs in INFO order.
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        let mut fields: Vec<_> = Outcome::ALL
            .iter()
            .map(|o| (o.name(), self.outcomes[o.index()].load(Relaxed)))
            .collect();
        fields.push(("exempt_passthrough", self.exempt.load(Relaxed)));
        fields.push(("local_fallback_used", self.local_fallback.load(Relaxed)));
        fields
    }
}

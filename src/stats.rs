//! Counters for `INFO valkeyauth`. Plain atomics: workers and the main thread bump them without
//! a lock, and reading INFO never waits on a worker.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

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
    /// An audit record dropped because the writer fell behind.
    AuditDropped,
    /// A failed open or write of `audit_file`.
    AuditWriteError,
}

impl Event {
    pub const ALL: [Event; 9] = [
        Event::ExemptPassthrough,
        Event::LocalFallbackUsed,
        Event::CacheHit,
        Event::CacheMiss,
        Event::CacheNegativeHit,
        Event::CacheStaleOnOutage,
        Event::Coalesced,
        Event::AuditDropped,
        Event::AuditWriteError,
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
            Event::AuditDropped => "audit_dropped",
            Event::AuditWriteError => "audit_write_errors",
        }
    }
}

pub struct Stats {
    outcomes: [AtomicU64; Outcome::ALL.len()],
    events: [AtomicU64; Event::ALL.len()],
    /// Time workers spend on the directory for one AUTH.
    pub latency: Histogram,
}

/// Global because Valkey's INFO and auth callbacks carry no pointer of ours.
pub static STATS: Stats = Stats {
    outcomes: [const { AtomicU64::new(0) }; Outcome::ALL.len()],
    events: [const { AtomicU64::new(0) }; Event::ALL.len()],
    latency: Histogram::new(),
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
        self.latency.reset();
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

/// Buckets grow by a fifth from 50 µs, so a percentile is read to within 20 %; the last
/// bound is past ten minutes, beyond any configurable AUTH deadline.
const BUCKETS: usize = 92;

const fn bucket_bounds() -> [u64; BUCKETS] {
    let mut bounds = [0u64; BUCKETS];
    let mut bound = 50;
    let mut i = 0;
    while i < BUCKETS {
        bounds[i] = bound;
        bound = bound + bound.div_ceil(5);
        i += 1;
    }
    bounds
}

/// Upper bound of each bucket, in microseconds.
const BOUNDS_US: [u64; BUCKETS] = bucket_bounds();

/// A latency histogram with fixed buckets: recording is two atomic adds and a max, with no
/// allocation and no lock.
pub struct Histogram {
    /// One more than the bounds: the last takes whatever is above them.
    buckets: [AtomicU64; BUCKETS + 1],
    count: AtomicU64,
    max_us: AtomicU64,
}

impl Histogram {
    pub const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS + 1],
            count: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }

    pub fn record(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let index = BOUNDS_US.partition_point(|bound| *bound < us);
        self.buckets[index].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_us.load(Relaxed))
    }

    /// The upper bound of the bucket holding the `percent`th percentile, never above the
    /// maximum seen; zero before anything was recorded.
    pub fn percentile(&self, percent: u64) -> Duration {
        let total: u64 = self.buckets.iter().map(|b| b.load(Relaxed)).sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = (total * percent).div_ceil(100).max(1);
        let mut seen = 0;
        let mut bound = u64::MAX;
        for (index, n) in self.buckets.iter().enumerate() {
            seen += n.load(Relaxed);
            if seen >= rank {
                bound = BOUNDS_US.get(index).copied().unwrap_or(u64::MAX);
                break;
            }
        }
        Duration::from_micros(bound.min(self.max_us.load(Relaxed)))
    }

    fn reset(&self) {
        for counter in self.buckets.iter().chain([&self.count, &self.max_us]) {
            counter.store(0, Relaxed);
        }
    }
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_grow_by_a_fifth_past_ten_minutes() {
        assert_eq!(&BOUNDS_US[..4], &[50, 60, 72, 87]);
        assert!(BOUNDS_US
            .windows(2)
            .all(|w| w[1] > w[0] && w[1] <= w[0] + w[0] / 5 + 1));
        assert!(BOUNDS_US[BUCKETS - 1] > 600_000_000);
    }

    #[test]
    fn percentiles_come_from_the_buckets_and_stop_at_the_max() {
        let h = Histogram::new();
        assert_eq!(h.percentile(50), Duration::ZERO);
        for _ in 0..90 {
            h.record(Duration::from_micros(1000));
        }
        for _ in 0..9 {
            h.record(Duration::from_millis(20));
        }
        h.record(Duration::from_millis(300));
        assert_eq!(h.count(), 100);
        let p50 = h.percentile(50).as_micros() as u64;
        assert!((1000..=1200).contains(&p50), "{p50}");
        let p99 = h.percentile(99).as_micros() as u64;
        assert!((20_000..=24_000).contains(&p99), "{p99}");
        assert_eq!(h.percentile(100), Duration::from_millis(300));
        assert_eq!(h.max(), Duration::from_millis(300));
        h.record(Duration::from_secs(100_000));
        assert_eq!(h.percentile(100), Duration::from_secs(100_000));
        h.reset();
        assert_eq!((h.count(), h.max()), (0, Duration::ZERO));
    }

    #[test]
    fn events_index_their_own_counter() {
        for (i, e) in Event::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
        }
    }
}

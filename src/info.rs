//! `INFO valkeyauth`: outcome counters, directory latency, queue and workers, and the state
//! of each server. Every field is an atomic read: INFO never waits on a worker.

use std::time::Duration;

use valkey_module::{InfoContext, ValkeyResult};

use crate::runtime::RUNTIME;
use crate::stats::STATS;

pub fn section(ctx: &InfoContext, for_crash_report: bool) -> ValkeyResult<()> {
    let mut section = ctx.builder().add_section("");
    for (name, value) in STATS.fields() {
        section = section.field(name, value)?;
    }
    let latency = &STATS.latency;
    section = section
        .field("latency_count", latency.count())?
        .field("latency_p50_ms", ms(latency.percentile(50)))?
        .field("latency_p90_ms", ms(latency.percentile(90)))?
        .field("latency_p99_ms", ms(latency.percentile(99)))?
        .field("latency_max_ms", ms(latency.max()))?;
    // A crash report may run while the lock is held; it then shows no pool fields.
    let runtime = if for_crash_report {
        RUNTIME.try_lock()
    } else {
        Some(RUNTIME.lock())
    };
    if let Some(Some(runtime)) = runtime.as_deref() {
        let settings = &runtime.generation.settings;
        section = section
            .field("active", u64::from(settings.is_active()))?
            .field("servers", settings.servers.len() as u64)?
            .field("workers", runtime.pool.threads() as u64)?
            .field("busy_workers", runtime.busy_workers() as u64)?
            .field("queue_depth", runtime.queue_depth() as u64)?
            .field("queue_depth_peak", runtime.pool.queue_peak() as u64)?
            .field("max_pending", runtime.pool.capacity() as u64)?
            .field("cache_entries", runtime.cache.entries() as u64)?
            .field("cache_evictions", runtime.cache.evictions)?;
        let health = &runtime.generation.health;
        let up = (0..settings.servers.len())
            .filter(|i| health.is_up(*i))
            .count();
        section = section.field("servers_up", up as u64)?;
        for (index, url) in settings.servers.iter().enumerate() {
            let state = if health.is_up(index) { "up" } else { "down" };
            section = section.field(
                &format!("server{index}"),
                format!(
                    "url={url},state={state},consecutive_failures={},last_error={},last_rtt_ms={},open_connections={}",
                    health.consecutive_failures(index),
                    health.last_error(index).name(),
                    ms(health.last_rtt(index)),
                    health.open_connections(index),
                ),
            )?;
        }
    }
    section.build_section()?.build_info()?;
    Ok(())
}

/// Milliseconds with microsecond precision, as INFO shows times.
fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

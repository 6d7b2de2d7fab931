//! `INFO valkeyauth`: outcome counters, queue depth and pool size.

use valkey_module::{InfoContext, ValkeyResult};

use crate::runtime::RUNTIME;
use crate::stats::STATS;

pub fn section(ctx: &InfoContext, for_crash_report: bool) -> ValkeyResult<()> {
    let mut section = ctx.builder().add_section("");
    for (name, value) in STATS.fields() {
        section = section.field(name, value)?;
    }
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
            .field("queue_depth", runtime.pool.queued() as u64)?
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
                    "url={url},state={state},consecutive_failures={}",
                    health.consecutive_failures(index)
                ),
            )?;
        }
    }
    section.build_section()?.build_info()?;
    Ok(())
}

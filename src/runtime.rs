//! The live module state: the current settings snapshot and the worker pool serving it.
//!
//! Only the main thread touches it (auth callback, config callbacks, INFO, load and unload);
//! workers get what they need through their jobs, so the lock is never contended.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::auth::{self, Job};
use crate::config::Settings;
use crate::engine::Engine;
use crate::pool::Pool;

pub struct Runtime {
    pub settings: Arc<Settings>,
    pub pool: Pool<Job>,
    /// Pools replaced by a `workers` or `max_pending` change. They finish their queued jobs
    /// and are joined once their threads have left, so the main thread never waits on them.
    retired: Vec<Pool<Job>>,
}

/// Global because Valkey's auth, config and INFO callbacks carry no pointer of ours.
pub static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);

fn start_pool(settings: &Settings) -> std::io::Result<Pool<Job>> {
    Pool::start(
        settings.workers,
        settings.max_pending,
        Engine::default,
        auth::work,
    )
}

/// Starts the runtime; called once per module load.
pub fn start(settings: Settings) -> std::io::Result<()> {
    let pool = start_pool(&settings)?;
    *RUNTIME.lock() = Some(Runtime {
        settings: Arc::new(settings),
        pool,
        retired: Vec::new(),
    });
    Ok(())
}

/// Publishes a new snapshot; the next AUTH uses it. The pool is replaced only when its size
/// or queue bound changed.
pub fn reconfigure(settings: Settings) -> std::io::Result<()> {
    let mut guard = RUNTIME.lock();
    let Some(runtime) = guard.as_mut() else {
        return Ok(());
    };
    runtime.retired.retain(|pool| !pool.is_finished());
    if settings.workers != runtime.pool.threads() || settings.max_pending != runtime.pool.capacity()
    {
        let mut old = std::mem::replace(&mut runtime.pool, start_pool(&settings)?);
        old.close();
        runtime.retired.push(old);
    }
    runtime.settings = Arc::new(settings);
    Ok(())
}

/// Closes every channel and joins every worker: after unload, none of our code may run.
pub fn stop() {
    let runtime = RUNTIME.lock().take();
    drop(runtime);
}

//! The live module state: the current configuration generation, the worker pool serving it and
//! the health checker.
//!
//! Only the main thread touches it (auth callback, config callbacks, INFO, load and unload);
//! workers and the checker get what they need through channels, so the lock is never contended.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::audit::{Auditor, Sink};
use crate::auth::{self, Job, Parked};
use crate::cache::{Cache, Fingerprint};
use crate::commands::CheckJob;
use crate::config::{Settings, TLS_NEVER_WARNING};
use crate::engine::{Engine, Generation};
use crate::health::Checker;
use crate::ldap::RequireCert;
use crate::module_users::ModuleUsers;
use crate::pool::Pool;

pub struct Runtime {
    pub generation: Arc<Generation>,
    pub cache: Cache,
    pub users: ModuleUsers,
    /// AUTHs waiting for an identical one already on its way to the directory, by fingerprint
    /// and cache epoch of that one. They get its verdict when it comes back. The epoch keeps
    /// an AUTH from sharing an answer asked for before a flush or a configuration change.
    pub waiting: HashMap<(Fingerprint, u64), Vec<Parked>>,
    pub pool: Pool<Task>,
    /// Pools replaced by a `workers` or `max_pending` change. They finish their queued jobs
    /// and are joined once their threads have left, so the main thread never waits on them.
    retired: Vec<Pool<Task>>,
    checker: Checker,
    pub auditor: Auditor,
}

impl Runtime {
    /// Workers running a job, in the pool and in pools retired by a resize that still finish
    /// their jobs.
    pub fn busy_workers(&self) -> usize {
        self.pools().map(Pool::busy).sum()
    }

    /// Jobs waiting for a worker, in every pool.
    pub fn queue_depth(&self) -> usize {
        self.pools().map(Pool::queued).sum()
    }

    fn pools(&self) -> impl Iterator<Item = &Pool<Task>> {
        std::iter::once(&self.pool).chain(&self.retired)
    }
}

/// Global because Valkey's auth, config and INFO callbacks carry no pointer of ours.
pub static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);

/// What the workers do.
pub enum Task {
    Auth(Job),
    /// `VALKEYAUTH.CHECK`, which must not take the main thread's time either.
    Check(CheckJob),
}

fn work(engine: &mut Engine, task: Task) {
    match task {
        Task::Auth(job) => auth::work(engine, job),
        Task::Check(job) => job.run(engine),
    }
}

fn start_pool(settings: &Settings) -> std::io::Result<Pool<Task>> {
    Pool::start(
        settings.workers,
        settings.max_pending,
        Engine::default,
        work,
    )
}

fn warn_about(settings: &Settings) {
    if settings.tls.require_cert == RequireCert::Never {
        log::warn!("{TLS_NEVER_WARNING}");
    }
    if settings.is_active() && !settings.is_exempt(b"default") {
        log::warn!("{DEFAULT_NOT_EXEMPT_WARNING}");
    }
}

/// Easy to do by accident: listing one service user in exempt_users drops the default.
const DEFAULT_NOT_EXEMPT_WARNING: &str = "valkeyauth: WARNING: exempt_users does not list \
    default: AUTH as default now goes to the directory, not to its Valkey password";

/// Starts the runtime; called once per module load.
pub fn start(settings: Settings) -> std::io::Result<()> {
    warn_about(&settings);
    let pool = start_pool(&settings)?;
    let cache = Cache::new(settings.cache)?;
    let generation = Arc::new(Generation::new(settings));
    let checker = Checker::start(Arc::clone(&generation))?;
    let auditor = Auditor::start()?;
    auditor.open(audit_file(&generation.settings));
    *RUNTIME.lock() = Some(Runtime {
        generation,
        cache,
        users: ModuleUsers::default(),
        waiting: HashMap::new(),
        pool,
        retired: Vec::new(),
        checker,
        auditor,
    });
    Ok(())
}

/// Publishes a new configuration; the next AUTH uses it, and workers reconnect in the
/// background. The pool is replaced only when its size or queue bound changed.
pub fn reconfigure(mut settings: Settings) -> std::io::Result<()> {
    let mut guard = RUNTIME.lock();
    let Some(runtime) = guard.as_mut() else {
        return Ok(());
    };
    warn_about(&settings);
    runtime.retired.retain(|pool| !pool.is_finished());
    if settings.workers != runtime.pool.threads() || settings.max_pending != runtime.pool.capacity()
    {
        let mut old = std::mem::replace(&mut runtime.pool, start_pool(&settings)?);
        old.close();
        runtime.retired.push(old);
    }
    let old = &runtime.generation.settings;
    if settings.tls == old.tls {
        // The TLS context built for these settings stays valid; building one costs up to
        // ~18 ms and some memory that libldap never gives back.
        settings.tls.context = old.tls.context.clone();
    }
    if audit_file(&settings) != audit_file(old) {
        runtime.auditor.open(audit_file(&settings));
    }
    runtime.cache.set_limits(settings.cache);
    if !settings.same_answers_as(&runtime.generation.settings) {
        runtime.cache.clear();
    }
    runtime.generation = Arc::new(Generation::new(settings));
    runtime.checker.update(Arc::clone(&runtime.generation));
    Ok(())
}

/// The file the audit trail goes to, if it goes to one.
pub fn audit_file(settings: &Settings) -> Option<&std::path::Path> {
    (settings.audit == Sink::File)
        .then_some(settings.audit_file.as_deref())
        .flatten()
}

/// Closes every channel and joins every thread: after unload, none of our code may run.
/// Refused (with the reason, and nothing changed) while the health checker is inside a
/// directory call: joining it would hold Valkey's main thread for up to the connect and
/// operation timeouts. Workers need no such check: Valkey refuses the unload while any client
/// waits on the module, and a worker does nothing on the network after answering its client.
pub fn stop() -> Result<(), String> {
    let mut guard = RUNTIME.lock();
    let Some(runtime) = guard.as_ref() else {
        return Ok(());
    };
    if !runtime.checker.try_stop() {
        let timeouts = &runtime.generation.settings.timeouts;
        return Err(format!(
            "the health checker is probing a directory server that is down (each step for up \
             to connect_timeout_ms {} / operation_timeout_ms {})",
            timeouts.connect.as_millis(),
            timeouts.operation.as_millis()
        ));
    }
    drop(guard.take());
    Ok(())
}

//! Valkey glue for AUTH and HELLO AUTH.
//!
//! The auth callback checks the input and the cache on the main thread. A cache hit is answered
//! at once. Otherwise it blocks the client and queues a job (or, when an identical AUTH is
//! already on its way to the directory, parks the client to share that answer); it never
//! touches the network. A worker asks the directory, stores the verdict and unblocks the client.
//! Valkey then runs the reply callback on the main thread, which logs the client in as the ACL
//! user of the same name or denies, and the free callback, which updates the cache and releases
//! the parked clients.

use std::cell::Cell;
use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use valkey_module::{
    raw, BlockedClient, Context, ContextFlags, Status, ValkeyError, ValkeyString, AUTH_HANDLED,
    AUTH_NOT_HANDLED,
};

use crate::audit::Record;
use crate::audit::Sink;
use crate::cache::{Fingerprint, Lookup};
use crate::config::LocalFallback;
use crate::engine::{Answer, Class, Credentials, Engine, Outcome, Request};
use crate::mapping;
use crate::runtime::{Runtime, Task, RUNTIME};
use crate::stats::{Event, STATS};

const UNAVAILABLE: &str = "valkeyauth: directory unavailable, try again later";
const IN_MULTI: &str = "valkeyauth: AUTH inside MULTI is not supported";
const BUSY: &str = "valkeyauth: too many pending logins, try again later";

/// A queued AUTH. Dropping it unblocks the client: with a verdict stored, or without one, which
/// the reply callback treats as an internal error.
pub struct Job {
    request: Request,
    client: BlockedClient<Verdict>,
    client_id: ClientId,
    fingerprint: Fingerprint,
    epoch: u64,
    started: Instant,
}

/// Valkey's id of a client, as CLIENT LIST shows it.
pub type ClientId = u64;

/// An AUTH waiting for an identical one on its way to the directory.
pub type Parked = (BlockedClient<Verdict>, ClientId);

/// What comes back to the main thread for one blocked client.
#[derive(Clone)]
pub struct Verdict {
    client_id: ClientId,
    /// Set by the reply callback. Valkey skips it for a client that left before its answer,
    /// and the free callback then records the decision instead.
    replied: Cell<bool>,
    outcome: Outcome,
    fallback: LocalFallback,
    fingerprint: Fingerprint,
    epoch: u64,
    /// The directory user: the AUTH's username, or the one inside a legacy one-argument AUTH.
    username: String,
    /// Group DNs, when provisioning asked for them.
    groups: Vec<String>,
    /// Set on the AUTH that went to the directory (not on those that shared its answer): its
    /// free callback records the answer in the cache and releases the others.
    leader: bool,
    /// For the audit trail: when the AUTH arrived, and the server that answered it.
    started: Instant,
    server: Option<String>,
}

/// Where a decision came from, for the audit trail.
#[derive(Clone, Copy)]
struct Trail<'a> {
    started: Instant,
    server: Option<&'a str>,
    cached: bool,
}

impl Trail<'_> {
    fn local(started: Instant) -> Trail<'static> {
        Trail {
            started,
            server: None,
            cached: false,
        }
    }

    fn cached(started: Instant) -> Trail<'static> {
        Trail {
            cached: true,
            ..Trail::local(started)
        }
    }
}

/// Redis 7.0 and older have no module authentication API.
pub fn server_has_auth_api() -> bool {
    // SAFETY: reads function pointers that module init filled in; nothing writes them after.
    let (register, block) = unsafe {
        (
            raw::RedisModule_RegisterAuthCallback,
            raw::RedisModule_BlockClientOnAuth,
        )
    };
    register.is_some() && block.is_some()
}

/// The registered auth callback.
pub fn on_auth(
    ctx: &Context,
    username: ValkeyString,
    password: ValkeyString,
) -> Result<c_int, ValkeyError> {
    let started = Instant::now();
    guarded(|| begin(ctx, &username, password.as_slice(), started))
}

fn begin(
    ctx: &Context,
    given_user: &ValkeyString,
    given_password: &[u8],
    started: Instant,
) -> Result<c_int, ValkeyError> {
    let mut guard = RUNTIME.lock();
    let Some(runtime) = guard.as_mut() else {
        return Ok(AUTH_NOT_HANDLED);
    };
    let generation = Arc::clone(&runtime.generation);
    let settings = &generation.settings;
    if !settings.is_active() {
        return Ok(AUTH_NOT_HANDLED);
    }
    let (user, password) = legacy_split(
        &settings.legacy_auth_separator,
        given_user.as_slice(),
        given_password,
    );
    let split;
    let username = if user == given_user.as_slice() {
        given_user
    } else {
        split = ValkeyString::create_from_slice(std::ptr::null_mut(), user);
        &split
    };
    if settings.is_exempt(user) {
        STATS.count(Event::ExemptPassthrough);
        return Ok(AUTH_NOT_HANDLED);
    }
    if ctx.get_flags().contains(ContextFlags::MULTI) {
        // Valkey refuses to block a client inside a transaction, so the answer could never
        // arrive; refuse before a password goes to the directory.
        return Err(ValkeyError::Str(IN_MULTI));
    }
    let fallback = settings.local_fallback;
    let here = Trail::local(started);
    let credentials = match Credentials::check(user, password) {
        Ok(credentials) => credentials,
        Err(outcome) => return conclude(ctx, Some(runtime), username, outcome, fallback, here),
    };
    let name = credentials.username;
    let fingerprint = runtime.cache.fingerprint(name, password);
    let has_acl_user = acl_user_exists(username);
    let provisioned = settings.provision && provisionable(name);
    match runtime.cache.lookup(name, fingerprint) {
        Lookup::Allowed if has_acl_user || runtime.users.rules_of(name).is_some() => {
            STATS.count(Event::CacheHit);
            return log_in(ctx, runtime, username, name, None, Trail::cached(started));
        }
        Lookup::Refused => {
            STATS.count(Event::CacheNegativeHit);
            let trail = Trail::cached(started);
            return conclude(
                ctx,
                Some(runtime),
                username,
                Outcome::BadCredentials,
                fallback,
                trail,
            );
        }
        _ => {}
    }
    // Without an ACL user (or provisioning) the login cannot succeed: asking the directory
    // would only let clients guess, or lock out, directory accounts never meant for Valkey.
    if !has_acl_user && !provisioned {
        return conclude(
            ctx,
            Some(runtime),
            username,
            Outcome::NoAclUser,
            fallback,
            here,
        );
    }
    if settings.refuses_bind_name(name) {
        return conclude(
            ctx,
            Some(runtime),
            username,
            Outcome::InvalidUsername,
            fallback,
            here,
        );
    }
    STATS.count(Event::CacheMiss);
    let shared = (fingerprint, runtime.cache.epoch);
    if let Some(parked) = runtime.waiting.get_mut(&shared) {
        STATS.count(Event::Coalesced);
        parked.push((
            ctx.block_client_on_auth(on_reply, Some(on_free)),
            ctx.get_client_id(),
        ));
        return Ok(AUTH_HANDLED);
    }
    if generation.health.all_down() {
        // Answered here: a worker would only find the same, at the cost of a block, a queue
        // slot and an unblock on this thread.
        return answer_unreachable(
            ctx,
            runtime,
            username,
            name,
            fingerprint,
            Outcome::Unreachable,
            fallback,
            here,
        );
    }
    if runtime.pool.is_full() {
        return conclude(ctx, Some(runtime), username, Outcome::Busy, fallback, here);
    }
    let job = Job {
        request: Request::new(generation.clone(), credentials, !has_acl_user),
        client: ctx.block_client_on_auth(on_reply, Some(on_free)),
        client_id: ctx.get_client_id(),
        fingerprint,
        epoch: runtime.cache.epoch,
        started,
    };
    match runtime.pool.submit(Task::Auth(job)) {
        Ok(()) => {
            runtime.waiting.insert(shared, Vec::new());
        }
        // Only the main thread sends and the queue had room, so the channel was closed; the
        // client is still answered, through the reply callback.
        Err(Task::Auth(job)) => deliver(job, Answer::from(Outcome::Busy)),
        Err(_) => {}
    }
    Ok(AUTH_HANDLED)
}

/// Clients older than ACLs can send only `AUTH <password>`, which Valkey hands over as user
/// `default`. With a separator configured, `alice<sep>secret` stands for user alice with
/// password secret, split at the first separator.
pub fn legacy_split<'a>(
    separator: &str,
    user: &'a [u8],
    password: &'a [u8],
) -> (&'a [u8], &'a [u8]) {
    let sep = separator.as_bytes();
    if user != b"default" || sep.is_empty() {
        return (user, password);
    }
    match password.windows(sep.len()).position(|w| w == sep) {
        Some(at) => (&password[..at], &password[at + sep.len()..]),
        None => (user, password),
    }
}

/// Only plain lowercase ASCII names are provisioned. Directories match names loosely (case,
/// surrounding spaces, full-width letters), Valkey exactly: `ALICE`, `alice ` or `ａｌｉｃｅ`
/// must never become a second user with alice's rights, or get around a disabled `alice`.
pub fn provisionable(name: &str) -> bool {
    !name.is_empty()
        && name != "default"
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-@".contains(&b))
}

/// The worker's job handler.
pub fn work(engine: &mut Engine, job: Job) {
    // Caught here as well as in the pool, so that a verdict is always delivered: clients
    // parked behind this one are released only by it.
    let started = Instant::now();
    let answer = catch_unwind(AssertUnwindSafe(|| engine.authenticate(&job.request)))
        .unwrap_or_else(|_| {
            *engine = Engine::default();
            Answer::from(Outcome::InternalError)
        });
    STATS.latency.record(started.elapsed());
    deliver(job, answer);
}

fn deliver(job: Job, answer: Answer) {
    let Job {
        request,
        mut client,
        client_id,
        fingerprint,
        epoch,
        started,
    } = job;
    let settings = &request.generation.settings;
    let verdict = Verdict {
        client_id,
        replied: Cell::new(false),
        outcome: answer.outcome,
        fallback: settings.local_fallback,
        fingerprint,
        epoch,
        username: request.username().to_owned(),
        groups: answer.groups,
        leader: true,
        started,
        server: answer.server.map(|i| settings.servers[i].clone()),
    };
    // The password is wiped before the client can run again.
    drop(request);
    // Fails only without a free callback, and ours is always set.
    let _ = client.set_blocked_private_data(verdict);
}

fn on_reply(
    ctx: &Context,
    given_user: ValkeyString,
    _password: ValkeyString,
    verdict: Option<&Verdict>,
) -> Result<c_int, ValkeyError> {
    guarded(|| {
        let mut guard = RUNTIME.lock();
        if let Some(verdict) = verdict {
            verdict.replied.set(true);
        }
        let (Some(verdict), Some(runtime)) = (verdict, guard.as_mut()) else {
            let trail = Trail::local(Instant::now());
            let outcome = Outcome::InternalError;
            return conclude(ctx, None, &given_user, outcome, LocalFallback::Never, trail);
        };
        let username = ValkeyString::create(None, verdict.username.as_str());
        let name = verdict.username.as_str();
        let trail = Trail {
            started: verdict.started,
            server: verdict.server.as_deref(),
            cached: false,
        };
        let groups = Some(verdict.groups.as_slice());
        match verdict.outcome {
            Outcome::Allowed => log_in(ctx, runtime, &username, name, groups, trail),
            outcome @ (Outcome::Unreachable | Outcome::Timeout) => answer_unreachable(
                ctx,
                runtime,
                &username,
                name,
                verdict.fingerprint,
                outcome,
                verdict.fallback,
                trail,
            ),
            other => conclude(
                ctx,
                Some(runtime),
                &username,
                other,
                verdict.fallback,
                trail,
            ),
        }
    })
}

/// Runs after the reply callback, or alone when the client went away meanwhile.
fn on_free(_ctx: &Context, verdict: Verdict) {
    let released = catch_unwind(AssertUnwindSafe(|| {
        let mut guard = RUNTIME.lock();
        let Some(runtime) = guard.as_mut() else {
            return;
        };
        if !verdict.replied.get() {
            record_unanswered(runtime, &verdict);
        }
        if !verdict.leader {
            return;
        }
        let cache = &mut runtime.cache;
        match verdict.outcome {
            // An answer from before a configuration change is not cached after it.
            _ if verdict.epoch != cache.epoch => {}
            Outcome::Allowed => cache.record_success(&verdict.username, verdict.fingerprint),
            Outcome::BadCredentials | Outcome::UnknownUser => {
                cache.record_refusal(&verdict.username, verdict.fingerprint)
            }
            _ => {}
        }
        for (mut parked, client_id) in runtime
            .waiting
            .remove(&(verdict.fingerprint, verdict.epoch))
            .unwrap_or_default()
        {
            let _ = parked.set_blocked_private_data(Verdict {
                client_id,
                replied: Cell::new(false),
                leader: false,
                ..verdict.clone()
            });
        }
    }));
    if released.is_err() {
        log::warn!("valkeyauth: internal error while releasing waiting logins");
    }
}

/// A client that disconnected before its answer: its AUTH may have reached the directory (and
/// counted toward a lockout there), so the decision is counted and audited all the same. ACL
/// LOG is left out: Valkey builds its entry from the client, which is gone.
fn record_unanswered(runtime: &mut Runtime, verdict: &Verdict) {
    let outcome = admitted(runtime, verdict);
    STATS.record(outcome);
    let trail = Trail {
        started: verdict.started,
        server: verdict.server.as_deref(),
        cached: false,
    };
    let client = Client::Gone(verdict.client_id);
    audit(
        client,
        runtime,
        verdict.username.as_bytes(),
        outcome,
        trail,
        false,
    );
}

/// What a login the directory allowed would have become, judged as for a client still there
/// (an ACL user, or the groups of a provisioned one) without logging anyone in. A provisioned
/// user's rules are set again as at a login, so that the success cached next gives no session
/// rules that its groups no longer grant.
fn admitted(runtime: &mut Runtime, verdict: &Verdict) -> Outcome {
    if verdict.outcome != Outcome::Allowed {
        return verdict.outcome;
    }
    let username = ValkeyString::create(None, verdict.username.as_str());
    match acl_user_enabled(&username) {
        Some(true) => return Outcome::Allowed,
        // A login as a switched-off user fails, and it is never replaced by provisioning.
        Some(false) => return Outcome::NoAclUser,
        None => {}
    }
    let groups = Some(verdict.groups.as_slice());
    let rules = match provisioned_rules(runtime, &username, &verdict.username, groups) {
        Ok(rules) => rules,
        Err(outcome) => return outcome,
    };
    match runtime.users.set_rules(&verdict.username, &rules) {
        Ok(()) => Outcome::Allowed,
        Err(e) => {
            log::warn!(
                "valkeyauth: cannot set the rules of {:?}: {e}",
                verdict.username
            );
            Outcome::InternalError
        }
    }
}

/// No directory server could be reached. The outage window still admits a password that
/// succeeded recently enough.
#[allow(clippy::too_many_arguments)] // each is one fact of this AUTH; a struct would only wrap them
fn answer_unreachable(
    ctx: &Context,
    runtime: &mut Runtime,
    username: &ValkeyString,
    name: &str,
    fingerprint: Fingerprint,
    outcome: Outcome,
    fallback: LocalFallback,
    trail: Trail,
) -> Result<c_int, ValkeyError> {
    if runtime.cache.admits_during_outage(name, fingerprint) {
        STATS.count(Event::CacheStaleOnOutage);
        return log_in(
            ctx,
            runtime,
            username,
            name,
            None,
            Trail::cached(trail.started),
        );
    }
    conclude(ctx, Some(runtime), username, outcome, fallback, trail)
}

/// Logs the client in as the ACL user of the same name or, with provisioning, as a module user
/// with the rules of its groups (`groups` None: the rules it already has, for a cache hit).
fn log_in(
    ctx: &Context,
    runtime: &mut Runtime,
    username: &ValkeyString,
    name: &str,
    groups: Option<&[String]>,
    trail: Trail,
) -> Result<c_int, ValkeyError> {
    let generation = Arc::clone(&runtime.generation);
    let settings = &generation.settings;
    let fallback = settings.local_fallback;
    if ctx.authenticate_client_with_acl_user(username) == Status::Ok {
        return conclude(
            ctx,
            Some(runtime),
            username,
            Outcome::Allowed,
            fallback,
            trail,
        );
    }
    let rules = match provisioned_rules(runtime, username, name, groups) {
        Ok(rules) => rules,
        Err(outcome) => return conclude(ctx, Some(runtime), username, outcome, fallback, trail),
    };
    let outcome = match runtime.users.log_in(ctx, name, &rules) {
        Ok(()) => Outcome::Allowed,
        Err(e) => {
            log::warn!("valkeyauth: cannot log {name:?} in as a provisioned user: {e}");
            Outcome::InternalError
        }
    };
    conclude(ctx, Some(runtime), username, outcome, fallback, trail)
}

/// The rules of a provisioned login that the directory allowed (`groups` None: the rules it
/// already has, for a cache hit), or why it is refused. Decided the same way whether the
/// client is still there or left before its answer.
fn provisioned_rules(
    runtime: &mut Runtime,
    username: &ValkeyString,
    name: &str,
    groups: Option<&[String]>,
) -> Result<String, Outcome> {
    let settings = &runtime.generation.settings;
    if acl_user_exists(username) || !settings.provision || !provisionable(name) {
        // An existing (but disabled) ACL user always wins over provisioning.
        return Err(Outcome::NoAclUser);
    }
    let rules = match groups {
        Some(groups) => mapping::rules_for(&settings.acl_map, groups, &settings.default_acl_rules),
        None => runtime.users.rules_of(name).map(str::to_owned),
    };
    rules.ok_or_else(|| {
        log::warn!("valkeyauth: {name:?} is in no group of acl_map and there are no default_acl_rules; denied");
        // The directory vouched for this password and says no group is left: sessions that
        // still have the old rules must not keep them.
        if runtime.users.revoke(name) {
            runtime.cache.flush(Some(name));
            log::warn!("valkeyauth: the open sessions of {name:?} are closed");
        }
        Outcome::NoMapping
    })
}

pub fn acl_user_exists(username: &ValkeyString) -> bool {
    with_acl_user(username, |_| ()).is_some()
}

/// Whether the ACL user of this name is switched on (None: there is none). Builds the user's
/// whole ACL description, so it is kept off the per-AUTH path.
fn acl_user_enabled(username: &ValkeyString) -> Option<bool> {
    // SAFETY: reads a function pointer that module init filled in.
    let describe = unsafe { raw::RedisModule_GetModuleUserACLString }?;
    with_acl_user(username, |user| {
        // SAFETY: main thread; `user` is a live handle. Valkey returns a new string that we
        // own, which `from_redis_module_string` frees when dropped.
        let acl = unsafe { describe(user) };
        if acl.is_null() {
            return false;
        }
        let acl = ValkeyString::from_redis_module_string(std::ptr::null_mut(), acl);
        // The description starts with the user's flags, `on` or `off` first.
        acl.as_slice().split(|b| *b == b' ').next() == Some(b"on")
    })
}

/// Runs `f` on a handle to the ACL user of this name, if there is one.
fn with_acl_user<T>(
    username: &ValkeyString,
    f: impl FnOnce(*mut raw::RedisModuleUser) -> T,
) -> Option<T> {
    // SAFETY: reads function pointers that module init filled in; nothing writes them after.
    let (get, free) = unsafe {
        (
            raw::RedisModule_GetModuleUserFromUserName,
            raw::RedisModule_FreeModuleUser,
        )
    };
    let (Some(get), Some(free)) = (get, free) else {
        return None;
    };
    // SAFETY: main thread; `username` is a live string. The call returns a new handle to an
    // existing ACL user, or NULL when there is none.
    let user = unsafe { get(username.inner) };
    if user.is_null() {
        return None;
    }
    let result = f(user);
    // SAFETY: `user` came from GetModuleUserFromUserName; freeing it frees only the handle,
    // never the ACL user itself.
    unsafe { free(user) };
    Some(result)
}

/// Counts the outcome, records it in the audit trail, and turns it into the answer Valkey
/// expects from an auth callback. A denial is written to ACL LOG like a native one, with the
/// reason as its object.
fn conclude(
    ctx: &Context,
    runtime: Option<&Runtime>,
    username: &ValkeyString,
    outcome: Outcome,
    fallback: LocalFallback,
    trail: Trail,
) -> Result<c_int, ValkeyError> {
    STATS.record(outcome);
    let local_fallback = outcome.class() != Class::Allowed && falls_back(outcome, fallback);
    if let Some(runtime) = runtime {
        let client = Client::Live(ctx);
        audit(
            client,
            runtime,
            username.as_slice(),
            outcome,
            trail,
            local_fallback,
        );
    }
    if local_fallback {
        // Valkey's own check follows, and logs its own failure.
        STATS.count(Event::LocalFallbackUsed);
        return Ok(AUTH_NOT_HANDLED);
    }
    if outcome.class() == Class::Denied {
        add_acl_log_entry(ctx, username, outcome);
    }
    match outcome.class() {
        // Handled without logging the client in: Valkey sends the standard WRONGPASS line.
        Class::Allowed | Class::Denied => Ok(AUTH_HANDLED),
        Class::Outage if outcome == Outcome::Busy => Err(ValkeyError::Str(BUSY)),
        Class::Outage => Err(ValkeyError::Str(UNAVAILABLE)),
    }
}

/// Whom an audit record is about.
enum Client<'a> {
    /// The client being answered.
    Live(&'a Context),
    /// A client that hung up before its answer.
    Gone(ClientId),
}

fn audit(
    client: Client,
    runtime: &Runtime,
    username: &[u8],
    outcome: Outcome,
    trail: Trail,
    local_fallback: bool,
) {
    let sink = runtime.generation.settings.audit;
    if sink == Sink::Off {
        return;
    }
    let latency = trail.started.elapsed();
    runtime.auditor.record(sink, outcome, || {
        let (address, client_id) = match client {
            Client::Live(ctx) => {
                let client_id = ctx.get_client_id();
                (client_address(client_id), client_id)
            }
            Client::Gone(client_id) => ("disconnected".to_owned(), client_id),
        };
        Record {
            client: address,
            client_id,
            username,
            outcome,
            server: trail.server,
            latency,
            cached: trail.cached,
            local_fallback,
        }
    });
}

/// `ip:port` of a client, as CLIENT LIST shows it.
fn client_address(client_id: u64) -> String {
    // SAFETY: reads a function pointer that module init filled in.
    let Some(get_info) = (unsafe { raw::RedisModule_GetClientInfoById }) else {
        return "?".to_owned();
    };
    let mut info = raw::RedisModuleClientInfo {
        version: 1,
        ..Default::default()
    };
    // SAFETY: main thread; `info` is a version-1 client info struct that Valkey fills in.
    let status = unsafe { get_info((&raw mut info).cast(), client_id) };
    if status != raw::REDISMODULE_OK as c_int {
        return "?".to_owned();
    }
    // SAFETY: Valkey wrote a NUL-terminated address into the fixed-size array.
    let addr = unsafe { std::ffi::CStr::from_ptr(info.addr.as_ptr()) };
    format!("{}:{}", addr.to_string_lossy(), info.port)
}

fn add_acl_log_entry(ctx: &Context, username: &ValkeyString, outcome: Outcome) {
    // SAFETY: reads a function pointer that module init filled in.
    let Some(add) = (unsafe { raw::RedisModule_ACLAddLogEntryByUserName }) else {
        return;
    };
    let object = ValkeyString::create(None, format!("valkeyauth:{}", outcome.reason()));
    // SAFETY: main thread, inside an auth or reply callback whose context names the client;
    // both strings are live for the call, and Valkey copies what it keeps.
    unsafe {
        add(
            ctx.ctx,
            username.inner,
            object.inner,
            raw::RedisModuleACLLogEntryReason_REDISMODULE_ACL_LOG_AUTH,
        )
    };
}

fn falls_back(outcome: Outcome, fallback: LocalFallback) -> bool {
    match fallback {
        LocalFallback::Never => false,
        LocalFallback::Unavailable => matches!(outcome, Outcome::Unreachable | Outcome::Timeout),
        LocalFallback::Always => true,
    }
}

/// A panic must never unwind into valkey-server: it becomes a deny.
fn guarded(f: impl FnOnce() -> Result<c_int, ValkeyError>) -> Result<c_int, ValkeyError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        log::warn!("valkeyauth: internal error in the auth path; the login is denied");
        STATS.record(Outcome::InternalError);
        Ok(AUTH_HANDLED)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_lowercase_names_are_provisioned() {
        for name in ["alice", "j.smith", "ops-bot_2", "alice@corp.example"] {
            assert!(provisionable(name), "{name}");
        }
        for name in [
            "default",
            "ALICE",
            "Alice",
            "alice ",
            " alice",
            "a  b",
            "ａｌｉｃｅ",
            "zoë",
            "",
        ] {
            assert!(!provisionable(name), "{name:?}");
        }
    }

    #[test]
    fn legacy_split_takes_the_first_separator() {
        assert_eq!(
            legacy_split(":", b"default", b"alice:pa:ss"),
            (&b"alice"[..], &b"pa:ss"[..])
        );
        assert_eq!(
            legacy_split(":", b"default", b"defpw"),
            (&b"default"[..], &b"defpw"[..])
        );
        assert_eq!(
            legacy_split(":", b"bob", b"alice:pw"),
            (&b"bob"[..], &b"alice:pw"[..])
        );
        assert_eq!(
            legacy_split("", b"default", b"alice:pw"),
            (&b"default"[..], &b"alice:pw"[..])
        );
    }
}

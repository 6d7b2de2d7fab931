//! Valkey glue for AUTH and HELLO AUTH.
//!
//! The auth callback checks the input, blocks the client and queues a job; it never touches the
//! network. A worker asks the directory, stores the verdict and unblocks the client. Valkey then
//! runs the reply callback on the main thread, which logs the client in as the ACL user of the
//! same name or denies.

use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use valkey_module::{
    raw, BlockedClient, Context, ContextFlags, Status, ValkeyError, ValkeyString, AUTH_HANDLED,
    AUTH_NOT_HANDLED,
};

use crate::config::LocalFallback;
use crate::engine::{Class, Engine, Outcome, Request};
use crate::runtime::RUNTIME;
use crate::stats::STATS;

const UNAVAILABLE: &str = "valkeyauth: directory unavailable, try again later";
const IN_MULTI: &str = "valkeyauth: AUTH inside MULTI is not supported";
const BUSY: &str = "valkeyauth: too many pending logins, try again later";

/// A queued AUTH. Dropping it unblocks the client: with a verdict stored, or without one, which
/// the reply callback treats as an internal error (this is what a panicking worker leaves).
pub struct Job {
    request: Request,
    client: BlockedClient<Verdict>,
}

/// What the worker hands back to the main thread.
pub struct Verdict {
    outcome: Outcome,
    fallback: LocalFallback,
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
    guarded(|| begin(ctx, &username, password.as_slice()))
}

fn begin(
    ctx: &Context,
    username_string: &ValkeyString,
    password: &[u8],
) -> Result<c_int, ValkeyError> {
    let username = username_string.as_slice();
    let guard = RUNTIME.lock();
    let Some(runtime) = guard.as_ref() else {
        return Ok(AUTH_NOT_HANDLED);
    };
    let settings = &runtime.generation.settings;
    if !settings.is_active() {
        return Ok(AUTH_NOT_HANDLED);
    }
    if settings.is_exempt(username) {
        STATS.record_exempt();
        return Ok(AUTH_NOT_HANDLED);
    }
    if ctx.get_flags().contains(ContextFlags::MULTI) {
        // Valkey refuses to block a client inside a transaction, so the answer could never
        // arrive; refuse before a password goes to the directory.
        return Err(ValkeyError::Str(IN_MULTI));
    }
    let fallback = settings.local_fallback;
    let request = match Request::new(Arc::clone(&runtime.generation), username, password) {
        Ok(request) => request,
        Err(outcome) => return conclude(outcome, fallback),
    };
    // Without an ACL user the login cannot succeed: asking the directory would only let clients
    // guess (or lock out) directory accounts that were never meant for Valkey.
    if !acl_user_exists(username_string) {
        return conclude(Outcome::NoAclUser, fallback);
    }
    if runtime.pool.is_full() {
        return conclude(Outcome::Busy, fallback);
    }
    let client = ctx.block_client_on_auth(on_reply, Some(on_free));
    if let Err(job) = runtime.pool.submit(Job { request, client }) {
        // Only the main thread sends and the queue had room, so the channel was closed; the
        // client is still answered, through the reply callback.
        deliver(job, Outcome::Busy);
    }
    Ok(AUTH_HANDLED)
}

/// The worker's job handler.
pub fn work(engine: &mut Engine, job: Job) {
    let outcome = engine.authenticate(&job.request);
    deliver(job, outcome);
}

fn deliver(job: Job, outcome: Outcome) {
    let Job {
        request,
        mut client,
    } = job;
    let verdict = Verdict {
        outcome,
        fallback: request.generation.settings.local_fallback,
    };
    // The password is wiped before the client can run again.
    drop(request);
    // Fails only without a free callback, and ours is always set.
    let _ = client.set_blocked_private_data(verdict);
}

fn on_reply(
    ctx: &Context,
    username: ValkeyString,
    _password: ValkeyString,
    verdict: Option<&Verdict>,
) -> Result<c_int, ValkeyError> {
    guarded(|| {
        let (outcome, fallback) = verdict
            .map_or((Outcome::InternalError, LocalFallback::Never), |v| {
                (v.outcome, v.fallback)
            });
        let outcome = match outcome {
            Outcome::Allowed if ctx.authenticate_client_with_acl_user(&username) != Status::Ok => {
                Outcome::NoAclUser
            }
            other => other,
        };
        conclude(outcome, fallback)
    })
}

fn on_free(_ctx: &Context, _verdict: Verdict) {}

fn acl_user_exists(username: &ValkeyString) -> bool {
    // SAFETY: reads function pointers that module init filled in; nothing writes them after.
    let (get, free) = unsafe {
        (
            raw::RedisModule_GetModuleUserFromUserName,
            raw::RedisModule_FreeModuleUser,
        )
    };
    let (Some(get), Some(free)) = (get, free) else {
        return false;
    };
    // SAFETY: main thread; `username` is a live string. The call returns a new handle to an
    // existing ACL user, or NULL when there is none.
    let user = unsafe { get(username.inner) };
    if user.is_null() {
        return false;
    }
    // SAFETY: `user` came from GetModuleUserFromUserName; freeing it frees only the handle,
    // never the ACL user itself.
    unsafe { free(user) };
    true
}

/// Counts the outcome and turns it into the answer Valkey expects from an auth callback.
fn conclude(outcome: Outcome, fallback: LocalFallback) -> Result<c_int, ValkeyError> {
    STATS.record(outcome);
    if outcome.class() != Class::Allowed && falls_back(outcome, fallback) {
        STATS.record_local_fallback();
        return Ok(AUTH_NOT_HANDLED);
    }
    match outcome.class() {
        // Handled without logging the client in: Valkey sends the standard WRONGPASS line.
        Class::Allowed | Class::Denied => Ok(AUTH_HANDLED),
        Class::Outage if outcome == Outcome::Busy => Err(ValkeyError::Str(BUSY)),
        Class::Outage => Err(ValkeyError::Str(UNAVAILABLE)),
    }
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

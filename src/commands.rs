//! Module commands.

use std::os::raw::c_int;
use std::sync::Arc;

use valkey_module::{
    raw, BlockedClient, Context, NextArg, ThreadSafeContext, ValkeyError, ValkeyResult,
    ValkeyString, ValkeyValue,
};

use crate::auth;
use crate::check::{self, AclPlan};
use crate::engine::{Credentials, Engine, Generation, Outcome, Request};
use crate::runtime::{self, Task, RUNTIME};
use crate::valkey_config;

/// `VALKEYAUTH.CACHE FLUSH [username]`: forgets every cached directory answer, or one user's,
/// and returns how many entries were removed. After a user is disabled in the directory, this
/// shuts them out at once instead of after `cache_ttl_s`.
pub fn cache(_ctx: &Context, args: Vec<ValkeyString>) -> ValkeyResult {
    let mut args = args.into_iter().skip(1);
    let subcommand = args.next_string()?;
    if !subcommand.eq_ignore_ascii_case("flush") {
        return Err(ValkeyError::String(format!(
            "ERR unknown subcommand '{}'. Try VALKEYAUTH.CACHE FLUSH [username]",
            subcommand.escape_debug()
        )));
    }
    let username = args
        .next()
        .map(|u| String::from_utf8_lossy(u.as_slice()).into_owned());
    if args.next().is_some() {
        return Err(ValkeyError::WrongArity);
    }
    let removed = RUNTIME
        .lock()
        .as_mut()
        .map_or(0, |runtime| runtime.cache.flush(username.as_deref()));
    Ok(ValkeyValue::Integer(removed as i64))
}

/// `VALKEYAUTH.USERS`: the provisioned users, each as `[name, rules, sessions]`. Valkey's own
/// ACL LIST does not show module users.
pub fn users(ctx: &Context, args: Vec<ValkeyString>) -> ValkeyResult {
    if args.len() != 1 {
        return Err(ValkeyError::WrongArity);
    }
    let clients = match ctx.call("CLIENT", &["LIST"])? {
        ValkeyValue::SimpleString(text) | ValkeyValue::BulkString(text) => text,
        ValkeyValue::StringBuffer(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => String::new(),
    };
    let guard = RUNTIME.lock();
    let Some(runtime) = guard.as_ref() else {
        return Ok(ValkeyValue::Array(Vec::new()));
    };
    let rows = runtime
        .users
        .list()
        .into_iter()
        .map(|(name, rules)| {
            let marker = format!(" user={name} ");
            let sessions = clients.lines().filter(|l| l.contains(&marker)).count();
            ValkeyValue::Array(vec![
                ValkeyValue::BulkString(name.to_owned()),
                ValkeyValue::BulkString(rules.to_owned()),
                ValkeyValue::Integer(sessions as i64),
            ])
        })
        .collect();
    Ok(ValkeyValue::Array(rows))
}

/// `VALKEYAUTH.AUDIT REOPEN`: opens `audit_file` again, after log rotation moved it away.
pub fn audit(_ctx: &Context, args: Vec<ValkeyString>) -> ValkeyResult {
    let mut args = args.into_iter().skip(1);
    let subcommand = args.next_string()?;
    if !subcommand.eq_ignore_ascii_case("reopen") {
        return Err(ValkeyError::String(format!(
            "ERR unknown subcommand '{}'. Try VALKEYAUTH.AUDIT REOPEN",
            subcommand.escape_debug()
        )));
    }
    if args.next().is_some() {
        return Err(ValkeyError::WrongArity);
    }
    let guard = RUNTIME.lock();
    let runtime = guard.as_ref().ok_or(NOT_RUNNING)?;
    let path = runtime::audit_file(&runtime.generation.settings)
        .ok_or(ValkeyError::Str("ERR valkeyauth.audit is not `file`"))?;
    // The writer thread opens it; this thread never waits on a disk.
    runtime.auditor.open(Some(path));
    Ok(ValkeyValue::SimpleStringStatic("OK"))
}

/// `VALKEYAUTH.RELOAD`: reads the service password file again and has every worker reconnect
/// with it (and with fresh connections) before its next AUTH.
pub fn reload(_ctx: &Context, args: Vec<ValkeyString>) -> ValkeyResult {
    if args.len() != 1 {
        return Err(ValkeyError::WrongArity);
    }
    let settings = valkey_config::current()
        .and_then(|settings| settings.check_password_file_now().map(|()| settings))
        .map_err(|e| ValkeyError::String(format!("ERR {e}")))?;
    runtime::reconfigure(settings)
        .map_err(|e| ValkeyError::String(format!("ERR cannot start workers: {e}")))?;
    Ok(ValkeyValue::SimpleStringStatic("OK"))
}

/// `VALKEYAUTH.CHECK [username password]`: a dry run on a worker. Without arguments it checks
/// each server; with them, one login through the whole flow, without logging anyone in. The
/// password is redacted from SLOWLOG and MONITOR.
pub fn check(ctx: &Context, args: Vec<ValkeyString>) -> ValkeyResult {
    // The password is redacted; with the wrong arity every argument is, since any of them
    // may be a password (`VALKEYAUTH.CHECK secret` is an easy mistake).
    let first_secret = if args.len() == 3 { 2 } else { 1 };
    for position in first_secret..args.len() {
        redact(ctx, position as c_int);
    }
    if args.len() != 1 && args.len() != 3 {
        return Err(ValkeyError::WrongArity);
    }
    let mut guard = RUNTIME.lock();
    let runtime = guard.as_mut().ok_or(NOT_RUNNING)?;
    let generation = Arc::clone(&runtime.generation);
    let what = match &args[..] {
        [_, user, password] => match login_check(&generation, user, password.as_slice())? {
            Ok(what) => what,
            // Refused before any directory traffic, as AUTH would be: answered here.
            Err(lines) => return Ok(array(lines)),
        },
        _ => What::Servers(generation),
    };
    if runtime.pool.is_full() {
        return Err(ValkeyError::Str(
            "ERR valkeyauth: too many pending logins, try again later",
        ));
    }
    let job = CheckJob {
        client: Some(ctx.block_client()),
        what,
    };
    // Refused only when the pool is closing: the job's Drop answers the client.
    let _ = runtime.pool.submit(Task::Check(job));
    Ok(ValkeyValue::NoReply)
}

const NOT_RUNNING: ValkeyError = ValkeyError::Str("ERR valkeyauth is not running");

fn redact(ctx: &Context, position: c_int) {
    // SAFETY: reads a function pointer that module init filled in.
    if let Some(redact) = unsafe { raw::RedisModule_RedactClientCommandArgument } {
        // SAFETY: main thread, inside this command's own context; `position` is within argv.
        unsafe { redact(ctx.ctx, position) };
    }
}

/// What a login check needs, decided here on the main thread: the local checks and which ACL
/// rules could apply. The directory part runs on a worker; a login that AUTH would refuse
/// without asking the directory gets its answer (`Err(lines)`) here, without traffic.
fn login_check(
    generation: &Arc<Generation>,
    given_user: &ValkeyString,
    given_password: &[u8],
) -> Result<Result<What, Vec<String>>, ValkeyError> {
    let settings = &generation.settings;
    if !settings.is_active() {
        return Err(ValkeyError::Str(
            "ERR valkeyauth.servers is empty: Valkey's own passwords decide every login",
        ));
    }
    // `default` with `alice<sep>secret` is alice, as for a one-argument AUTH.
    let (name, password) = auth::legacy_split(
        &settings.legacy_auth_separator,
        given_user.as_slice(),
        given_password,
    );
    let split = ValkeyString::create_from_slice(std::ptr::null_mut(), name);
    let user = &split;
    if settings.is_exempt(user.as_slice()) {
        return Err(ValkeyError::Str(
            "ERR this user is in valkeyauth.exempt_users: Valkey's own password decides",
        ));
    }
    let credentials = Credentials::check(user.as_slice(), password).map_err(|outcome| {
        ValkeyError::String(format!(
            "ERR denied before any directory traffic: {}",
            outcome.reason()
        ))
    })?;
    let has_acl_user = auth::acl_user_exists(user);
    let plan = if has_acl_user {
        AclPlan::AclUser
    } else if !settings.provision {
        return Ok(Err(check::refused_locally(
            credentials.username,
            Outcome::NoAclUser,
            "there is no ACL user of this name, and provision is off",
        )));
    } else if !auth::provisionable(credentials.username) {
        return Ok(Err(check::refused_locally(
            credentials.username,
            Outcome::NoAclUser,
            "the name cannot be provisioned (lowercase ASCII letters, digits and ._-@ only)",
        )));
    } else {
        AclPlan::Provision
    };
    if settings.refuses_bind_name(credentials.username) {
        return Ok(Err(check::refused_locally(
            credentials.username,
            Outcome::InvalidUsername,
            "the name holds a character that could change the realm or domain of the bind name",
        )));
    }
    let request = Request::new(Arc::clone(generation), credentials, !has_acl_user);
    Ok(Ok(What::Login { request, plan }))
}

fn array(lines: Vec<String>) -> ValkeyValue {
    ValkeyValue::Array(lines.into_iter().map(ValkeyValue::BulkString).collect())
}

enum What {
    Servers(Arc<Generation>),
    Login { request: Request, plan: AclPlan },
}

/// A queued `VALKEYAUTH.CHECK`. It always answers its client: with the result, or, when it is
/// dropped unrun (a closing pool, a panic), with an error.
pub struct CheckJob {
    client: Option<BlockedClient>,
    what: What,
}

impl CheckJob {
    pub fn run(mut self, engine: &mut Engine) {
        let lines = match &self.what {
            What::Servers(generation) => check::servers(&generation.settings),
            What::Login { request, plan } => check::login(engine, request, *plan),
        };
        self.reply(Ok(array(lines)));
    }

    fn reply(&mut self, result: ValkeyResult) {
        if let Some(client) = self.client.take() {
            // Replying through a blocked client's context needs no lock; dropping it unblocks.
            ThreadSafeContext::with_blocked_client(client).reply(result);
        }
    }
}

impl Drop for CheckJob {
    fn drop(&mut self) {
        self.reply(Err(ValkeyError::Str(
            "ERR valkeyauth: the check could not run",
        )));
    }
}

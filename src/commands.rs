//! Module commands.

use valkey_module::{Context, NextArg, ValkeyError, ValkeyResult, ValkeyString, ValkeyValue};

use crate::runtime::RUNTIME;

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

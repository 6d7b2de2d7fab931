//! Valkey glue for provisioned users: module users whose rules come from directory groups.
//!
//! Valkey does not list module users (ACL LIST, ACL USERS) and does not de-duplicate their
//! names, so the module keeps one per name here. One user object is shared by all sessions of
//! that name: each login sets its rules again, so a change of groups applies to every live
//! session of the user at its next login.

use std::collections::HashMap;
use std::ffi::CString;
use std::ptr;

use valkey_module::{raw, Context, ValkeyString};

use crate::mapping;

/// Owns one module user. Dropping it frees the user, which disconnects its sessions: after
/// MODULE UNLOAD no session with rules from the module outlives it.
pub struct ModuleUser {
    user: *mut raw::RedisModuleUser,
    pub rules: String,
}

// SAFETY: a ModuleUser is created, used and freed only on Valkey's main thread; it sits in the
// runtime's Mutex, which needs Send, and is never handed to a worker.
unsafe impl Send for ModuleUser {}

impl Drop for ModuleUser {
    fn drop(&mut self) {
        // SAFETY: reads a function pointer that module init filled in.
        let free = unsafe { raw::RedisModule_FreeModuleUser };
        if let (false, Some(free)) = (self.user.is_null(), free) {
            // SAFETY: `user` came from CreateModuleUser and is freed once (nulled below).
            unsafe { free(self.user) };
        }
        self.user = ptr::null_mut();
    }
}

impl ModuleUser {
    fn create(name: &str) -> Result<ModuleUser, String> {
        let name = CString::new(name).map_err(|_| "a user name with NUL".to_owned())?;
        // SAFETY: reads a function pointer that module init filled in.
        let create = unsafe { raw::RedisModule_CreateModuleUser }.ok_or("no module users")?;
        // SAFETY: main thread; Valkey copies the name.
        let user = unsafe { create(name.as_ptr()) };
        if user.is_null() {
            return Err("Valkey refused to create the user".to_owned());
        }
        Ok(ModuleUser {
            user,
            rules: String::new(),
        })
    }

    /// Replaces the user's rules with `reset on <rules>`; the error is Valkey's own sentence.
    /// `ctx` may be null (outside a callback that has one).
    fn set_rules(&mut self, ctx: *mut raw::RedisModuleCtx, rules: &str) -> Result<(), String> {
        let acl = CString::new(format!("reset on {rules}"))
            .map_err(|_| "ACL rules with NUL".to_owned())?;
        // SAFETY: reads a function pointer that module init filled in.
        let set = unsafe { raw::RedisModule_SetModuleUserACLString }.ok_or("no ACL strings")?;
        let mut error: *mut raw::RedisModuleString = ptr::null_mut();
        // SAFETY: main thread; `self.user` is live; Valkey reads `acl` during the call and, on
        // failure, hands us an error string that we own.
        let rc = unsafe { set(ctx, self.user, acl.as_ptr(), &mut error) };
        if rc == raw::REDISMODULE_OK as i32 {
            self.rules = rules.to_owned();
            return Ok(());
        }
        let message = if error.is_null() {
            "invalid ACL rules".to_owned()
        } else {
            // Takes ownership of the error string: it is freed when dropped.
            let error = ValkeyString::from_redis_module_string(ctx, error);
            String::from_utf8_lossy(error.as_slice()).into_owned()
        };
        Err(message)
    }
}

/// Checks ACL rule strings with Valkey itself, on a throwaway user.
pub fn check_rules(rules: &[&str]) -> Result<(), String> {
    if rules.is_empty() {
        return Ok(());
    }
    // Checked here, not by Valkey: its error would repeat the password.
    if rules
        .iter()
        .flat_map(|r| r.split_whitespace())
        .any(|token| token.starts_with(['>', '<', '#', '!']))
    {
        return Err(
            "ACL rules here may not hold passwords (>, <, #, !): the directory checks them"
                .to_owned(),
        );
    }
    let mut probe = ModuleUser::create("valkeyauth-rule-check")?;
    // Each rule string becomes a selector of a provisioned user, so it is checked as one:
    // user flags such as `nopass`, `>password` or `off` have no place there.
    for r in rules {
        probe
            .set_rules(ptr::null_mut(), &mapping::selector(r))
            .map_err(|e| format!("ACL rules '{r}' are invalid: {e}"))?;
    }
    Ok(())
}

/// The provisioned users, by name.
#[derive(Default)]
pub struct ModuleUsers {
    users: HashMap<String, ModuleUser>,
}

impl ModuleUsers {
    /// Sets `name`'s rules (creating the user on first use) and logs the client in as it.
    pub fn log_in(&mut self, ctx: &Context, name: &str, rules: &str) -> Result<(), String> {
        let user = match self.users.entry(name.to_owned()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(ModuleUser::create(name)?),
        };
        user.set_rules(ctx.ctx, rules)?;
        // SAFETY: reads a function pointer that module init filled in.
        let auth =
            unsafe { raw::RedisModule_AuthenticateClientWithUser }.ok_or("no module auth")?;
        // No callback: Valkey could call it after MODULE UNLOAD, when a session of a user freed
        // at unload is closed.
        // SAFETY: main thread, in the reply callback of the client being logged in; the user
        // stays alive in `self` until unload.
        let rc = unsafe { auth(ctx.ctx, user.user, None, ptr::null_mut(), ptr::null_mut()) };
        if rc != raw::REDISMODULE_OK as i32 {
            return Err("Valkey refused to log the client in".to_owned());
        }
        Ok(())
    }

    /// Sets the rules of `name`'s sessions, if it has a user, as a login of it would.
    pub fn set_rules(&mut self, name: &str, rules: &str) -> Result<(), String> {
        match self.users.get_mut(name) {
            Some(user) => user.set_rules(ptr::null_mut(), rules),
            None => Ok(()),
        }
    }

    /// Forgets `name`; freeing its user disconnects every session logged in as it. True when
    /// there was one.
    pub fn revoke(&mut self, name: &str) -> bool {
        self.users.remove(name).is_some()
    }

    pub fn rules_of(&self, name: &str) -> Option<&str> {
        self.users.get(name).map(|u| u.rules.as_str())
    }

    /// `(name, rules)` pairs, sorted by name.
    pub fn list(&self) -> Vec<(&str, &str)> {
        let mut list: Vec<_> = self
            .users
            .iter()
            .map(|(name, user)| (name.as_str(), user.rules.as_str()))
            .collect();
        list.sort();
        list
    }
}

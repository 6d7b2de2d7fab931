//! ValkeyAUTH: a Valkey module that checks `AUTH` and `HELLO ... AUTH` against LDAP and
//! Active Directory.
//!
//! The auth callback queues each check for a fixed pool of worker threads ([`pool`]), each with
//! its own directory connections ([`engine`]) through our own libldap layer ([`ldap`],
//! [`openldap_sys`]). Options are declared once in [`config`].

pub mod audit;
pub mod auth;
pub mod cache;
pub mod check;
pub mod commands;
pub mod config;
pub mod engine;
pub mod escape;
pub mod files;
pub mod health;
pub mod info;
pub mod ldap;
pub mod mapping;
pub mod module_users;
pub mod openldap_sys;
pub mod pool;
pub mod runtime;
pub mod secret;
pub mod stats;
pub mod valkey_config;
pub mod valkey_log;
pub mod x509;

use auth::on_auth;
use valkey_module::{valkey_module, Context, InfoContext, Status, ValkeyResult, ValkeyString};

/// Refuses to load where there is no module authentication API (Redis 7.0 and older): there the
/// module could not see a single AUTH.
fn preload(_ctx: &Context, _args: &[ValkeyString]) -> Status {
    valkey_log::install();
    if !auth::server_has_auth_api() {
        log::error!(
            "valkeyauth: this server has no module authentication API (Valkey 7.2 or later is needed); not loading"
        );
        return Status::Err;
    }
    Status::Ok
}

fn init(ctx: &Context, args: &[ValkeyString]) -> Status {
    // libldap's global state is set up here, on the main thread, before any worker exists.
    ldap::init_global();
    stats::STATS.reset();
    // The crate ignores the command table's categories below its Valkey 8.0 feature; without
    // them a user with -@admin could empty the lockout shield.
    for command in [
        c"valkeyauth.cache",
        c"valkeyauth.users",
        c"valkeyauth.check",
        c"valkeyauth.audit",
        c"valkeyauth.reload",
    ] {
        if ctx.set_acl_category(command.as_ptr(), c"admin dangerous".as_ptr()) == Status::Err {
            log::error!("valkeyauth: not loading: cannot put {command:?} in @admin");
            return Status::Err;
        }
    }
    let started = valkey_config::load(ctx, args).and_then(|settings| {
        export_keytab(&settings);
        runtime::start(settings).map_err(|e| format!("cannot start workers: {e}"))
    });
    match started {
        Ok(()) => Status::Ok,
        Err(e) => {
            log::error!("valkeyauth: not loading: {e}");
            Status::Err
        }
    }
}

/// Hands `sasl_keytab` to Kerberos, which reads only the environment (`KRB5_CLIENT_KTNAME`).
/// Setting a variable races with any thread reading the environment, so it happens only here:
/// on Valkey's main thread, before our workers exist (Valkey loads modules before it starts
/// its own threads, whose work never reads the environment), and the option cannot change
/// later (it is load time only).
fn export_keytab(settings: &config::Settings) {
    if let Some(keytab) = &settings.sasl_keytab {
        std::env::set_var("KRB5_CLIENT_KTNAME", keytab);
    }
}

/// MODULE UNLOAD: closes the queue and joins every worker before the library can be unmapped,
/// or refuses (Valkey keeps the module loaded) rather than wait on a directory.
fn deinit(_ctx: &Context) -> Status {
    if let Err(why) = runtime::stop() {
        log::warn!("valkeyauth: not unloading: {why}; try again later");
        return Status::Err;
    }
    valkey_config::clear();
    Status::Ok
}

/// `INFO valkeyauth`
fn info(ctx: &InfoContext, for_crash_report: bool) {
    if let Err(e) = info::section(ctx, for_crash_report) {
        log::warn!("valkeyauth: INFO section failed: {e}");
    }
}

valkey_module! {
    name: "valkeyauth",
    version: 1,
    allocator: (std::alloc::System, std::alloc::System),
    data_types: [],
    preload: preload,
    init: init,
    deinit: deinit,
    info: info,
    // AUTH <user> <password> and HELLO <ver> AUTH <user> <password>
    auth: [on_auth],
    commands: [
        // VALKEYAUTH.CACHE FLUSH [username]
        ["valkeyauth.cache", commands::cache, "admin deny-script", 0, 0, 0],
        // VALKEYAUTH.USERS
        ["valkeyauth.users", commands::users, "admin deny-script", 0, 0, 0],
        // VALKEYAUTH.CHECK [username password]
        ["valkeyauth.check", commands::check, "admin deny-script", 0, 0, 0],
        // VALKEYAUTH.AUDIT REOPEN
        ["valkeyauth.audit", commands::audit, "admin deny-script", 0, 0, 0],
        // VALKEYAUTH.RELOAD
        ["valkeyauth.reload", commands::reload, "admin deny-script", 0, 0, 0],
    ],
}

//! Valkey glue for configuration: registers every entry of [`OPTIONS`] as a module config
//! (`valkeyauth.<name>`), applies `loadmodule` arguments, and republishes [`Settings`] on change.
//!
//! Every option is registered as a string config checked by its own parser, so that one table
//! drives registration, validation and documentation.

use std::ffi::{c_char, c_int, c_void, CString};
use std::ptr;

use parking_lot::Mutex;
use valkey_module::{raw, Context, ValkeyString};

use crate::config::{OptionSpec, Settings, LOAD_TIME_ONLY, OPTIONS};
use crate::module_users;
use crate::runtime;

const OK: c_int = raw::REDISMODULE_OK as c_int;
const ERR: c_int = raw::REDISMODULE_ERR as c_int;

/// The current text of each option, and the Valkey string that CONFIG GET returns for it.
/// Keeping that string (instead of making one per GET) is what keeps CONFIG GET from leaking.
struct Value {
    text: String,
    shown: *mut raw::RedisModuleString,
}

struct Values(Vec<Value>);

// SAFETY: the `shown` pointers are created, returned and freed only by Valkey's main thread
// (config callbacks, module load and unload); the Mutex exists because a static must be Sync.
unsafe impl Send for Values {}

static VALUES: Mutex<Values> = Mutex::new(Values(Vec::new()));

/// Registers every option and loads the values from valkey.conf. `loadmodule` arguments
/// (`name value` pairs) replace the built-in defaults, so a `valkeyauth.*` line, which is what
/// CONFIG REWRITE writes, wins over them.
pub fn load(ctx: &Context, args: &[ValkeyString]) -> Result<Settings, String> {
    clear();
    let defaults = defaults_with_args(args)?;
    VALUES.lock().0 = defaults
        .iter()
        .map(|text| Value {
            text: text.clone(),
            shown: ptr::null_mut(),
        })
        .collect();
    for (index, default) in defaults.iter().enumerate() {
        register(ctx, index, default)?;
    }
    // SAFETY: called from OnLoad with its context, after every config of ours is registered.
    if unsafe { raw::RedisModule_LoadConfigs.ok_or("no LoadConfigs API")?(ctx.ctx) } != OK {
        return Err(
            "a valkeyauth option (module argument or valkey.conf line) is invalid (see above)"
                .to_owned(),
        );
    }
    let settings = current()?;
    settings.check_password_file_now()?;
    Ok(settings)
}

/// Frees what `load` kept; called on unload.
pub fn clear() {
    for value in VALUES.lock().0.drain(..) {
        free(value.shown);
    }
}

fn register(ctx: &Context, index: usize, default: &str) -> Result<(), String> {
    let spec = &OPTIONS[index];
    let name = CString::new(spec.name).map_err(|e| e.to_string())?;
    let default = CString::new(default).map_err(|e| e.to_string())?;
    // Paths are protected as Valkey protects `dir` and `dbfilename`: whoever may CONFIG SET
    // must not thereby read or append to any file the server can reach.
    let flags = if LOAD_TIME_ONLY.contains(&spec.name) {
        raw::REDISMODULE_CONFIG_IMMUTABLE
    } else if spec.parser.names_a_file() {
        raw::REDISMODULE_CONFIG_PROTECTED
    } else {
        raw::REDISMODULE_CONFIG_DEFAULT
    };
    // SAFETY: reads a function pointer that module init filled in.
    let register =
        unsafe { raw::RedisModule_RegisterStringConfig }.ok_or("no RegisterStringConfig API")?;
    // SAFETY: OnLoad context; Valkey copies the name and default; the callbacks are plain
    // functions that live as long as the module, and privdata is just the option's index.
    let rc = unsafe {
        register(
            ctx.ctx,
            name.as_ptr(),
            default.as_ptr(),
            flags,
            Some(get_config),
            Some(set_config),
            Some(apply_config),
            index as *mut c_void,
        )
    };
    if rc != OK {
        return Err(format!("cannot register config valkeyauth.{}", spec.name));
    }
    Ok(())
}

/// The default of every option, with the `loadmodule` arguments applied.
fn defaults_with_args(args: &[ValkeyString]) -> Result<Vec<String>, String> {
    if !args.len().is_multiple_of(2) {
        return Err(format!(
            "module arguments must be <name> <value> pairs, and there are {}; a value with \
             spaces written back by CONFIG REWRITE without quotes splits into several (set such \
             options as valkeyauth.<name> lines instead)",
            args.len()
        ));
    }
    let mut defaults: Vec<String> = OPTIONS.iter().map(|o| o.default.to_owned()).collect();
    for pair in args.chunks(2) {
        let name = String::from_utf8_lossy(pair[0].as_slice());
        let index = OptionSpec::index_of(&name)
            .ok_or_else(|| format!("unknown module argument '{}'", name.escape_debug()))?;
        let value = std::str::from_utf8(pair[1].as_slice())
            .map_err(|_| format!("{name}: must be UTF-8 text"))?;
        // The password file is checked against every argument together, by `current`.
        check(index, value).map_err(|e| format!("{name}: {e}"))?;
        if value.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
            log::warn!(
                "valkeyauth: WARNING: module argument {name} holds spaces or quotes; CONFIG \
                 REWRITE writes module arguments back without quotes, and Valkey could then not \
                 start: set it as a valkeyauth.{name} line instead"
            );
        }
        defaults[index] = value.to_owned();
    }
    Ok(defaults)
}

/// The snapshot of the values stored now.
pub fn current() -> Result<Settings, String> {
    let texts: Vec<String> = VALUES.lock().0.iter().map(|v| v.text.clone()).collect();
    Settings::from_values(&texts)
}

/// Validates a value, handing ACL rules in it to Valkey to check.
fn check(index: usize, value: &str) -> Result<(), String> {
    let scratch = OPTIONS[index].validate(value)?;
    module_users::check_rules(&scratch.acl_rules())
}

/// Validates and stores a value; `shown` is the string Valkey passed to the set callback.
fn store(index: usize, shown: *mut raw::RedisModuleString) -> Result<(), String> {
    let bytes = ValkeyString::string_as_slice(shown);
    let text = std::str::from_utf8(bytes).map_err(|_| "must be UTF-8 text".to_owned())?;
    check(index, text)?;
    let texts: Vec<String> = VALUES.lock().0.iter().map(|v| v.text.clone()).collect();
    Settings::check_password_file(&texts, index, text)?;
    // SAFETY: `shown` is the live string Valkey passed to the set callback; retaining it makes
    // it ours until we free it.
    unsafe { raw::RedisModule_RetainString.ok_or("no RetainString API")?(ptr::null_mut(), shown) };
    let mut values = VALUES.lock();
    let value = &mut values.0[index];
    free(std::mem::replace(&mut value.shown, shown));
    value.text = text.to_owned();
    Ok(())
}

fn create_string(text: &str) -> *mut raw::RedisModuleString {
    // SAFETY: reads a function pointer that module init filled in.
    let Some(create) = (unsafe { raw::RedisModule_CreateString }) else {
        return ptr::null_mut();
    };
    // SAFETY: a NULL context makes an unmanaged string; the pointer and length describe `text`.
    unsafe { create(ptr::null_mut(), text.as_ptr().cast::<c_char>(), text.len()) }
}

fn free(s: *mut raw::RedisModuleString) {
    // SAFETY: reads a function pointer that module init filled in.
    let free_fn = unsafe { raw::RedisModule_FreeString };
    if let (false, Some(free_string)) = (s.is_null(), free_fn) {
        // SAFETY: `s` was created or retained by us with a NULL context and is freed once.
        unsafe { free_string(ptr::null_mut(), s) };
    }
}

extern "C" fn get_config(
    _name: *const c_char,
    privdata: *mut c_void,
) -> *mut raw::RedisModuleString {
    std::panic::catch_unwind(|| {
        let mut values = VALUES.lock();
        let value = values.0.get_mut(privdata as usize)?;
        if value.shown.is_null() {
            value.shown = create_string(&value.text);
        }
        Some(value.shown)
    })
    .ok()
    .flatten()
    .unwrap_or(ptr::null_mut())
}

extern "C" fn set_config(
    _name: *const c_char,
    val: *mut raw::RedisModuleString,
    privdata: *mut c_void,
    err: *mut *mut raw::RedisModuleString,
) -> c_int {
    let result = std::panic::catch_unwind(|| store(privdata as usize, val))
        .unwrap_or_else(|_| Err("internal error".to_owned()));
    match result {
        Ok(()) => OK,
        Err(message) => {
            // Valkey's reply already names the option.
            report(err, &message);
            ERR
        }
    }
}

extern "C" fn apply_config(
    _ctx: *mut raw::RedisModuleCtx,
    _privdata: *mut c_void,
    err: *mut *mut raw::RedisModuleString,
) -> c_int {
    let result = std::panic::catch_unwind(|| {
        let settings = current()?;
        runtime::reconfigure(settings).map_err(|e| format!("cannot start workers: {e}"))
    })
    .unwrap_or_else(|_| Err("internal error".to_owned()));
    match result {
        Ok(()) => OK,
        Err(message) => {
            report(err, &message);
            ERR
        }
    }
}

/// Hands an error sentence to Valkey, which shows it to the client and frees it.
fn report(err: *mut *mut raw::RedisModuleString, message: &str) {
    if !err.is_null() {
        // SAFETY: Valkey passes a valid out-pointer for the error string.
        unsafe { *err = create_string(message) };
    }
}

//! Every configuration option, declared once: name, default, type, doc and parser.
//!
//! The Valkey glue registers these, the README's option table is generated from them, and a
//! change rebuilds one immutable [`Settings`] snapshot that the auth path reads.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::audit::Sink;
use crate::cache::Limits;
use crate::escape;
use crate::files::{self, open_regular_file};
use crate::ldap::{RequireCert, Scope, Timeouts, TlsSettings, TlsVersion};
use crate::mapping::{self, Mapping};
use crate::secret::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Bind,
    SearchBind,
}

/// How the search connection authenticates as the service account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceBind {
    /// `search_bind_dn` with the password in `search_bind_passwd_file`, or anonymous.
    Simple,
    /// SASL EXTERNAL: the TLS client certificate.
    External,
    /// SASL GSSAPI: Kerberos, from a client keytab.
    Gssapi,
}

impl ServiceBind {
    /// The SASL mechanism name, None for a simple bind.
    pub fn sasl_mechanism(self) -> Option<&'static str> {
        match self {
            ServiceBind::Simple => None,
            ServiceBind::External => Some("EXTERNAL"),
            ServiceBind::Gssapi => Some("GSSAPI"),
        }
    }
}

/// Options that only `loadmodule` arguments or valkey.conf set; CONFIG SET refuses them.
/// `sasl_keytab` becomes the process environment's `KRB5_CLIENT_KTNAME`, which may only be
/// changed while no other thread can read the environment: at load, before the workers start.
pub const LOAD_TIME_ONLY: &[&str] = &["sasl_keytab"];

/// What happens when the directory does not admit a user the module handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalFallback {
    /// The directory is authoritative: a failed check is a deny.
    Never,
    /// Valkey's own password is tried only when no directory server can be reached.
    Unavailable,
    /// Valkey's own password is tried after any failed directory check.
    Always,
}

pub const TLS_NEVER_WARNING: &str = "valkeyauth: WARNING: tls_require_cert is never: directory \
     server certificates are NOT checked, so anyone on the network path can read passwords";

/// How a user's groups are found after a successful bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLookup {
    /// Empty: `search_base`.
    pub base: String,
    /// With `{dn}` and `{username}` placeholders, filled in RFC 4515-escaped.
    pub filter: String,
    /// When set (e.g. `memberOf`), read from the user entry instead of searching groups.
    pub membership_attribute: String,
    pub nested: bool,
    pub max_depth: usize,
}

/// An immutable snapshot of the configuration, rebuilt on every change.
#[derive(Debug)]
pub struct Settings {
    pub servers: Vec<String>,
    pub mode: AuthMode,
    pub bind_dn_prefix: String,
    pub bind_dn_suffix: String,
    pub search_base: String,
    pub search_scope: Scope,
    /// Without outer parentheses.
    pub search_filter: String,
    pub search_attribute: String,
    pub search_bind_dn: String,
    /// Read when a worker binds its search connection, so a rotated password is picked up
    /// at the next reconnect.
    pub search_bind_passwd_file: Option<PathBuf>,
    /// Accept a password file that group or others can read (with a warning).
    pub allow_readable_passwd_file: bool,
    pub service_bind: ServiceBind,
    /// GSSAPI client keytab, exported as `KRB5_CLIENT_KTNAME` at load.
    pub sasl_keytab: Option<PathBuf>,
    /// SASL authorization identity; empty: the authenticated identity.
    pub sasl_authz_id: String,
    pub workers: usize,
    pub max_pending: usize,
    /// Per step: opening a connection, one bind or search.
    pub timeouts: Timeouts,
    /// The most one AUTH waits, queueing included.
    pub auth_timeout: Duration,
    /// Connections idle longer than this are replaced before use.
    pub connection_max_idle: Duration,
    pub health_check_interval: Duration,
    pub tls: TlsSettings,
    pub cache: Limits,
    pub groups: GroupLookup,
    pub acl_map: Vec<Mapping>,
    pub default_acl_rules: String,
    /// Log in users who have no ACL user as module users, with rules from their groups.
    pub provision: bool,
    /// With a separator, a one-argument `AUTH alice<sep>secret` logs in directory user alice.
    pub legacy_auth_separator: String,
    pub exempt_users: Vec<String>,
    pub local_fallback: LocalFallback,
    pub audit: Sink,
    pub audit_file: Option<PathBuf>,
}

impl Settings {
    /// No servers configured: every AUTH goes to Valkey as if the module were absent.
    pub fn is_active(&self) -> bool {
        !self.servers.is_empty()
    }

    pub fn is_exempt(&self, username: &[u8]) -> bool {
        self.exempt_users.iter().any(|u| u.as_bytes() == username)
    }

    /// True when bind mode could not make a bind name of `username` (see
    /// [`escape::bind_name`]): it is refused before any directory traffic.
    pub fn refuses_bind_name(&self, username: &str) -> bool {
        self.mode == AuthMode::Bind
            && escape::bind_name_refused(&self.bind_dn_prefix, username, &self.bind_dn_suffix)
    }

    /// Whether the same credentials would end the same way under both configurations: the
    /// directory's answer and, for provisioned users, the rules it leads to. When they might
    /// not, cached answers are dropped.
    pub fn same_answers_as(&self, other: &Settings) -> bool {
        self.servers == other.servers
            && self.mode == other.mode
            && self.bind_dn_prefix == other.bind_dn_prefix
            && self.bind_dn_suffix == other.bind_dn_suffix
            && self.search_base == other.search_base
            && self.search_scope == other.search_scope
            && self.search_filter == other.search_filter
            && self.search_attribute == other.search_attribute
            && self.search_bind_dn == other.search_bind_dn
            && self.search_bind_passwd_file == other.search_bind_passwd_file
            && self.service_bind == other.service_bind
            && self.sasl_keytab == other.sasl_keytab
            && self.sasl_authz_id == other.sasl_authz_id
            && self.tls == other.tls
            && self.groups == other.groups
            && self.acl_map == other.acl_map
            && self.default_acl_rules == other.default_acl_rules
            && self.provision == other.provision
    }

    /// Every ACL rule string the configuration would hand to Valkey, so that Valkey can check
    /// them when they are set.
    pub fn acl_rules(&self) -> Vec<&str> {
        self.acl_map
            .iter()
            .map(|m| m.rules.as_str())
            .chain(Some(self.default_acl_rules.as_str()).filter(|r| !r.is_empty()))
            .collect()
    }

    /// Builds a snapshot from one value per entry of [`OPTIONS`], in order.
    pub fn from_values<S: AsRef<str>>(values: &[S]) -> Result<Settings, String> {
        let settings = Settings::parse(values)?;
        settings.check_combination()?;
        Ok(settings)
    }

    /// [`Settings::from_values`] without the checks that span options.
    fn parse<S: AsRef<str>>(values: &[S]) -> Result<Settings, String> {
        let mut settings = Settings::blank();
        for (spec, value) in OPTIONS.iter().zip(values) {
            spec.apply(&mut settings, value.as_ref())
                .map_err(|e| format!("{}: {e}", spec.name))?;
        }
        Ok(settings)
    }

    /// Checks the service password file as it would be read if `value` replaced the option at
    /// `index` in `values`: the file's rules depend on two options, and a bad one must be
    /// refused when it is set, not later when a worker binds.
    pub fn check_password_file<S: AsRef<str>>(
        values: &[S],
        index: usize,
        value: &str,
    ) -> Result<(), String> {
        if !matches!(
            OPTIONS[index].name,
            "search_bind_passwd_file" | "allow_readable_passwd_file"
        ) {
            return Ok(());
        }
        let mut candidate: Vec<&str> = values.iter().map(AsRef::as_ref).collect();
        candidate[index] = value;
        Settings::parse(&candidate)?.check_password_file_now()
    }

    /// Reads the service password file under this configuration's rules, as module load and
    /// `VALKEYAUTH.RELOAD` do. Other changes do not read it: a file that went missing must
    /// not block them.
    pub fn check_password_file_now(&self) -> Result<(), String> {
        self.service_password()
            .map_err(|e| format!("search_bind_passwd_file: {e}"))?;
        if let (Some(file), true) = (
            &self.search_bind_passwd_file,
            self.allow_readable_passwd_file,
        ) {
            if file_is_shared(file) {
                log::warn!("valkeyauth: WARNING: search_bind_passwd_file {} is open to group or others (allowed by allow_readable_passwd_file)", file.display());
            }
        }
        Ok(())
    }

    /// Checks what depends on more than one option.
    fn check_combination(&self) -> Result<(), String> {
        if self.audit == Sink::File && self.audit_file.is_none() {
            return Err("audit: `file` needs audit_file set".to_owned());
        }
        Ok(())
    }

    /// The service account's password, read from its file now (None: no file set).
    pub fn service_password(&self) -> Result<Option<Secret>, String> {
        self.search_bind_passwd_file
            .as_deref()
            .map(|file| read_password_file(file, self.allow_readable_passwd_file))
            .transpose()
    }

    /// The snapshot with every option at its default.
    pub fn defaults() -> Settings {
        let values: Vec<&str> = OPTIONS.iter().map(|o| o.default).collect();
        Settings::from_values(&values).expect("defaults are valid")
    }

    fn blank() -> Settings {
        Settings {
            servers: Vec::new(),
            mode: AuthMode::Bind,
            bind_dn_prefix: String::new(),
            bind_dn_suffix: String::new(),
            search_base: String::new(),
            search_scope: Scope::Subtree,
            search_filter: String::new(),
            search_attribute: String::new(),
            search_bind_dn: String::new(),
            search_bind_passwd_file: None,
            allow_readable_passwd_file: false,
            service_bind: ServiceBind::Simple,
            sasl_keytab: None,
            sasl_authz_id: String::new(),
            workers: 1,
            max_pending: 1,
            timeouts: Timeouts {
                connect: Duration::ZERO,
                operation: Duration::ZERO,
            },
            auth_timeout: Duration::ZERO,
            connection_max_idle: Duration::ZERO,
            health_check_interval: Duration::ZERO,
            tls: TlsSettings::default(),
            groups: GroupLookup {
                base: String::new(),
                filter: String::new(),
                membership_attribute: String::new(),
                nested: false,
                max_depth: 1,
            },
            acl_map: Vec::new(),
            default_acl_rules: String::new(),
            provision: false,
            legacy_auth_separator: String::new(),
            cache: Limits {
                ttl: Duration::ZERO,
                negative_ttl: Duration::ZERO,
                stale_on_outage: Duration::ZERO,
                max_entries: 1,
            },
            exempt_users: Vec::new(),
            local_fallback: LocalFallback::Never,
            audit: Sink::Off,
            audit_file: None,
        }
    }
}

/// How a value is checked before its setter sees it.
pub enum Parser {
    Text(fn(&mut Settings, &str) -> Result<(), String>),
    Number {
        min: u64,
        max: u64,
        set: fn(&mut Settings, u64),
    },
    /// A path to a secret file: read and checked when set (its permissions against the other
    /// options, when the whole configuration is), then read again when used.
    File(fn(&mut Settings, &str)),
    /// An absolute path that something else opens later (libldap, Kerberos, the audit
    /// thread). What it names is checked only when this option is set, so that a file that
    /// goes away later never blocks changes to other options.
    Path {
        kind: PathKind,
        set: fn(&mut Settings, Option<PathBuf>),
    },
    /// The setter receives the index of the matched choice.
    Choice {
        choices: &'static [&'static str],
        set: fn(&mut Settings, usize),
    },
}

impl Parser {
    pub fn names_a_file(&self) -> bool {
        matches!(self, Parser::File(_) | Parser::Path { .. })
    }
}

/// What a [`Parser::Path`] must name when it is set.
#[derive(Clone, Copy)]
pub enum PathKind {
    /// An existing regular file that can be opened for reading.
    File,
    /// The same, or a directory (of hashed CA certificates).
    FileOrDirectory,
    /// A file to append to: its directory exists, and the path names a regular file or nothing.
    Output,
}

pub struct OptionSpec {
    pub name: &'static str,
    pub default: &'static str,
    pub parser: Parser,
    pub doc: &'static str,
}

impl OptionSpec {
    /// Checks `value` and stores it into `settings`; the error is a sentence for the operator.
    pub fn apply(&self, settings: &mut Settings, value: &str) -> Result<(), String> {
        match &self.parser {
            Parser::Text(set) => set(settings, value),
            Parser::File(set) => {
                set(settings, value);
                Ok(())
            }
            Parser::Path { set, .. } => {
                set(settings, absolute_path(value)?);
                Ok(())
            }
            Parser::Number { min, max, set } => {
                let n = value
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (*min..=*max).contains(n))
                    .ok_or_else(|| format!("must be a whole number from {min} to {max}"))?;
                set(settings, n);
                Ok(())
            }
            Parser::Choice { choices, set } => {
                let index = choices
                    .iter()
                    .position(|c| c.eq_ignore_ascii_case(value.trim()))
                    .ok_or_else(|| format!("must be one of: {}", choices.join(", ")))?;
                set(settings, index);
                Ok(())
            }
        }
    }

    /// Checks a value without keeping it; returns a snapshot holding only that value, for
    /// checks that need Valkey (ACL rules).
    pub fn validate(&self, value: &str) -> Result<Settings, String> {
        match &self.parser {
            Parser::Path { kind, .. } => {
                if let Some(path) = absolute_path(value)? {
                    check_path(*kind, &path)?;
                }
            }
            Parser::File(_) => {
                if let Some(path) = absolute_path(value)? {
                    read_password_file(&path, true)?;
                }
            }
            _ => {}
        }
        let mut scratch = Settings::blank();
        self.apply(&mut scratch, value)?;
        Ok(scratch)
    }

    /// The type column of the documentation table.
    pub fn type_doc(&self) -> String {
        match &self.parser {
            Parser::Text(_) => "string".to_owned(),
            Parser::File(_) | Parser::Path { .. } => "path".to_owned(),
            Parser::Number { min, max, .. } => format!("number {min}–{max}"),
            Parser::Choice { choices, .. } => format!("`{}`", choices.join("` \\| `")),
        }
    }

    pub fn index_of(name: &str) -> Option<usize> {
        OPTIONS
            .iter()
            .position(|o| o.name.eq_ignore_ascii_case(name))
    }
}

pub static OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "servers",
        default: "",
        parser: Parser::Text(|s, v| {
            s.servers = parse_servers(v)?;
            Ok(())
        }),
        doc:
            "LDAP URLs (`ldap://`, `ldaps://`, `ldapi://`), space- or comma-separated, in priority \
              order. Empty: the module is inactive and Valkey authenticates as if it were absent.",
    },
    OptionSpec {
        name: "auth_mode",
        default: "bind",
        parser: Parser::Choice {
            choices: &["bind", "search+bind"],
            set: |s, i| s.mode = [AuthMode::Bind, AuthMode::SearchBind][i],
        },
        doc: "`bind`: bind as `bind_dn_prefix` + escaped username + `bind_dn_suffix`. \
              `search+bind`: find the user's DN with a search, then bind as it.",
    },
    OptionSpec {
        name: "bind_dn_prefix",
        default: "cn=",
        parser: Parser::Text(|s, v| {
            s.bind_dn_prefix = plain_text(v)?;
            Ok(())
        }),
        doc:
            "Bind mode: text before the username. Used literally (not escaped), so `CORP\\` works \
             (in valkey.conf write `\"CORP\\\\\"` or unquoted `CORP\\`: a backslash in double quotes \
             escapes).",
    },
    OptionSpec {
        name: "bind_dn_suffix",
        default: "",
        parser: Parser::Text(|s, v| {
            s.bind_dn_suffix = plain_text(v)?;
            Ok(())
        }),
        doc: "Bind mode: text after the username, e.g. `,ou=people,dc=example,dc=com` or \
              `@corp.example.com`. Used literally.",
    },
    OptionSpec {
        name: "search_base",
        default: "",
        parser: Parser::Text(|s, v| {
            s.search_base = parse_dn(v)?;
            Ok(())
        }),
        doc: "Search+bind: the DN to search under.",
    },
    OptionSpec {
        name: "search_scope",
        default: "sub",
        parser: Parser::Choice {
            choices: &["base", "one", "sub"],
            set: |s, i| s.search_scope = [Scope::Base, Scope::OneLevel, Scope::Subtree][i],
        },
        doc: "Search+bind: search scope.",
    },
    OptionSpec {
        name: "search_filter",
        default: "objectClass=*",
        parser: Parser::Text(|s, v| {
            s.search_filter = parse_filter(v)?;
            Ok(())
        }),
        doc: "Search+bind: filter ANDed with `(<search_attribute>=<username>)`. Outer parentheses \
              optional.",
    },
    OptionSpec {
        name: "search_attribute",
        default: "uid",
        parser: Parser::Text(|s, v| {
            s.search_attribute = parse_attribute(v)?;
            Ok(())
        }),
        doc: "Search+bind: the attribute that holds the username, e.g. `uid` or `sAMAccountName`.",
    },
    OptionSpec {
        name: "search_bind_dn",
        default: "",
        parser: Parser::Text(|s, v| {
            s.search_bind_dn = plain_text(v)?;
            Ok(())
        }),
        doc: "Search+bind: the service account that searches. Empty: search anonymously.",
    },
    OptionSpec {
        name: "search_bind_passwd_file",
        default: "",
        parser: Parser::File(|s, v| {
            s.search_bind_passwd_file = (!v.is_empty()).then(|| PathBuf::from(v));
        }),
        doc: "Search+bind: a file holding the service account's password (one trailing newline \
              ignored; must be readable by its owner only). Read again when a connection binds \
              and on `VALKEYAUTH.RELOAD`. There is deliberately no \
              password option: Valkey shows module configs in CONFIG GET, SLOWLOG and rewritten \
              config files.",
    },
    OptionSpec {
        name: "allow_readable_passwd_file",
        default: "no",
        parser: Parser::Choice {
            choices: &["no", "yes"],
            set: |s, i| s.allow_readable_passwd_file = i == 1,
        },
        doc: "`yes`: accept a `search_bind_passwd_file` that group or others can read, with a \
              warning in the log.",
    },
    OptionSpec {
        name: "search_bind_mechanism",
        default: "simple",
        parser: Parser::Choice {
            choices: &["simple", "EXTERNAL", "GSSAPI"],
            set: |s, i| {
                s.service_bind = [
                    ServiceBind::Simple,
                    ServiceBind::External,
                    ServiceBind::Gssapi,
                ][i]
            },
        },
        doc: "How the search connection authenticates: `simple` (`search_bind_dn` and \
              `search_bind_passwd_file`, or anonymous), `EXTERNAL` (SASL with the TLS client \
              certificate of `tls_cert_path`/`tls_key_path`), `GSSAPI` (SASL with Kerberos \
              tickets from `sasl_keytab` or the environment). No password in any file with SASL.",
    },
    OptionSpec {
        name: "sasl_keytab",
        default: "",
        parser: Parser::Path {
            kind: PathKind::File,
            set: |s, p| s.sasl_keytab = p,
        },
        doc: "GSSAPI: the client keytab of the service principal, exported as \
              `KRB5_CLIENT_KTNAME` at load (load time only: module argument or valkey.conf). \
              Tickets are fetched from it when needed, and again when they expire. Empty: \
              the environment's `KRB5_CLIENT_KTNAME` or credential cache.",
    },
    OptionSpec {
        name: "sasl_authz_id",
        default: "",
        parser: Parser::Text(|s, v| {
            s.sasl_authz_id = plain_text(v)?;
            Ok(())
        }),
        doc: "SASL: the authorization identity to act as (e.g. `dn:cn=search,dc=example,dc=com`). \
              Empty: the authenticated identity.",
    },
    OptionSpec {
        name: "workers",
        default: "8",
        parser: Parser::Number {
            min: 1,
            max: 256,
            set: |s, n| s.workers = n as usize,
        },
        doc: "Threads in the pool; each holds its own directory connections.",
    },
    OptionSpec {
        name: "max_pending",
        default: "1024",
        parser: Parser::Number {
            min: 1,
            max: 1_000_000,
            set: |s, n| s.max_pending = n as usize,
        },
        doc: "AUTHs queued for the workers before new ones are refused at once as busy.",
    },
    OptionSpec {
        name: "connect_timeout_ms",
        default: "3000",
        parser: Parser::Number {
            min: 1,
            max: 600_000,
            set: |s, n| s.timeouts.connect = Duration::from_millis(n),
        },
        doc: "Limit for opening a connection to a directory server (TCP and TLS).",
    },
    OptionSpec {
        name: "operation_timeout_ms",
        default: "5000",
        parser: Parser::Number {
            min: 1,
            max: 600_000,
            set: |s, n| s.timeouts.operation = Duration::from_millis(n),
        },
        doc: "Limit for one bind or search.",
    },
    OptionSpec {
        name: "auth_timeout_ms",
        default: "10000",
        parser: Parser::Number {
            min: 1,
            max: 600_000,
            set: |s, n| s.auth_timeout = Duration::from_millis(n),
        },
        doc: "The most one AUTH waits, queueing included; then the client gets the outage error \
              and nothing more is sent for that AUTH.",
    },
    OptionSpec {
        name: "connection_max_idle_s",
        default: "600",
        parser: Parser::Number {
            min: 1,
            max: 86_400,
            set: |s, n| s.connection_max_idle = Duration::from_secs(n),
        },
        doc: "A directory connection idle this long is replaced before its next use, before a \
              server or firewall drops it (Active Directory drops idle connections after 900 s).",
    },
    OptionSpec {
        name: "health_check_interval_ms",
        default: "1000",
        parser: Parser::Number {
            min: 10,
            max: 600_000,
            set: |s, n| s.health_check_interval = Duration::from_millis(n),
        },
        doc: "How often the health checker probes servers marked down; one that answers is used \
              again (fail-back to a higher-priority server included).",
    },
    OptionSpec {
        name: "use_starttls",
        default: "no",
        parser: Parser::Choice {
            choices: &["no", "yes"],
            set: |s, i| s.tls.starttls = i == 1,
        },
        doc: "Upgrade `ldap://` connections with StartTLS. If it fails the connection is dropped \
              and nothing is sent on it; there is no plaintext fallback.",
    },
    OptionSpec {
        name: "tls_ca_cert_path",
        default: "",
        parser: Parser::Path {
            kind: PathKind::FileOrDirectory,
            set: |s, p| s.tls.ca_path = p,
        },
        doc: "CA bundle file (every certificate in it is trusted) or directory of hashed CA \
              certificates. Empty: the system's default trust store.",
    },
    OptionSpec {
        name: "tls_cert_path",
        default: "",
        parser: Parser::Path {
            kind: PathKind::File,
            set: |s, p| s.tls.cert_path = p,
        },
        doc: "Client certificate (PEM), for servers that require one.",
    },
    OptionSpec {
        name: "tls_key_path",
        default: "",
        parser: Parser::Path {
            kind: PathKind::File,
            set: |s, p| s.tls.key_path = p,
        },
        doc: "Key of the client certificate (PEM).",
    },
    OptionSpec {
        name: "tls_require_cert",
        default: "demand",
        parser: Parser::Choice {
            choices: &["never", "allow", "try", "demand"],
            set: |s, i| {
                s.tls.require_cert = [
                    RequireCert::Never,
                    RequireCert::Allow,
                    RequireCert::Try,
                    RequireCert::Demand,
                ][i]
            },
        },
        doc: "Server certificate check, as libldap defines the levels. `demand` checks the chain \
              and the host name in the URL. `never` turns checking off and is logged as a warning \
              at load and on every configuration change.",
    },
    OptionSpec {
        name: "tls_min_version",
        default: "1.2",
        parser: Parser::Choice {
            choices: &["1.2", "1.3"],
            set: |s, i| s.tls.min_version = [TlsVersion::V1_2, TlsVersion::V1_3][i],
        },
        doc: "Lowest TLS version accepted.",
    },
    OptionSpec {
        name: "cache_ttl_s",
        default: "30",
        parser: Parser::Number {
            min: 0,
            max: 86_400,
            set: |s, n| s.cache.ttl = Duration::from_secs(n),
        },
        doc: "How long a password the directory accepted is accepted again without asking it \
              (same user, same password only). 0: off.",
    },
    OptionSpec {
        name: "cache_max_entries",
        default: "100000",
        parser: Parser::Number {
            min: 1,
            max: 10_000_000,
            set: |s, n| s.cache.max_entries = n as usize,
        },
        doc: "Bound of the cache; the least recently used entries go first.",
    },
    OptionSpec {
        name: "negative_cache_ttl_s",
        default: "10",
        parser: Parser::Number {
            min: 0,
            max: 3600,
            set: |s, n| s.cache.negative_ttl = Duration::from_secs(n),
        },
        doc: "Lockout shield: how long a password the directory refused is refused again \
              without another bind. A different wrong password still goes to the directory. \
              0: off.",
    },
    OptionSpec {
        name: "cache_stale_on_outage_s",
        default: "0",
        parser: Parser::Number {
            min: 0,
            max: 604_800,
            set: |s, n| s.cache.stale_on_outage = Duration::from_secs(n),
        },
        doc: "Outage window: only while no directory server can be reached, a password that \
              succeeded up to this long ago is still accepted. 0: off.",
    },
    OptionSpec {
        name: "provision",
        default: "off",
        parser: Parser::Choice {
            choices: &["off", "on"],
            set: |s, i| s.provision = i == 1,
        },
        doc: "`on`: a user the directory accepts who has no Valkey ACL user is logged in as a \
              module user with the rules of its groups (`acl_map`, `default_acl_rules`), \
              starting from `reset`. Names must be lowercase. An existing ACL user always wins.",
    },
    OptionSpec {
        name: "acl_map",
        default: "",
        parser: Parser::Text(|s, v| {
            s.acl_map = mapping::parse(&plain_text(v)?)?;
            Ok(())
        }),
        doc: "Group to ACL rules, in order: `<group> => <rules>; <group> => <rules>`. A group \
              is a DN (`cn=ops\\, berlin,ou=groups,dc=example,dc=com`) or a group name (its \
              `cn`). Rules are checked by Valkey when set. `\\;` is a `;` inside rules.",
    },
    OptionSpec {
        name: "default_acl_rules",
        default: "",
        parser: Parser::Text(|s, v| {
            s.default_acl_rules = plain_text(v.trim())?;
            Ok(())
        }),
        doc: "Rules every provisioned user gets, after those of its groups. Empty: a user with \
              no mapped group is denied.",
    },
    OptionSpec {
        name: "group_search_base",
        default: "",
        parser: Parser::Text(|s, v| {
            s.groups.base = parse_dn(v)?;
            Ok(())
        }),
        doc: "Where groups are searched. Empty: `search_base`.",
    },
    OptionSpec {
        name: "group_search_filter",
        default: "(|(member={dn})(uniqueMember={dn})(memberUid={username}))",
        parser: Parser::Text(|s, v| {
            let filled = v.replace("{dn}", "x").replace("{username}", "x");
            parse_filter(&filled)?;
            s.groups.filter = plain_text(v.trim())?;
            Ok(())
        }),
        doc: "Filter for the user's groups; `{dn}` and `{username}` are replaced, escaped. For \
              Active Directory nested groups: `(member:1.2.840.113556.1.4.1941:={dn})`.",
    },
    OptionSpec {
        name: "group_membership_attribute",
        default: "",
        parser: Parser::Text(|s, v| {
            s.groups.membership_attribute = if plain_text(v)?.trim().is_empty() {
                String::new()
            } else {
                parse_attribute(v)?
            };
            Ok(())
        }),
        doc: "When set (e.g. `memberOf`), the user's groups are read from this attribute of the \
              user entry instead of searched.",
    },
    OptionSpec {
        name: "nested_groups",
        default: "no",
        parser: Parser::Choice {
            choices: &["no", "yes"],
            set: |s, i| s.groups.nested = i == 1,
        },
        doc: "Also count groups that contain the user's groups, breadth first, with cycle \
              detection (not needed with the Active Directory in-chain filter).",
    },
    OptionSpec {
        name: "nested_groups_max_depth",
        default: "8",
        parser: Parser::Number {
            min: 1,
            max: 64,
            set: |s, n| s.groups.max_depth = n as usize,
        },
        doc: "How many levels of nesting are followed.",
    },
    OptionSpec {
        name: "legacy_auth_separator",
        default: "",
        parser: Parser::Text(|s, v| {
            s.legacy_auth_separator = plain_text(v)?;
            Ok(())
        }),
        doc: "With e.g. `:`, a one-argument `AUTH alice:secret` (clients older than ACLs) logs \
              in directory user alice with password secret; the split is at the first \
              separator. Valkey passes one-argument AUTH to modules only when `default` has a \
              password. Empty: off.",
    },
    OptionSpec {
        name: "exempt_users",
        default: "default",
        parser: Parser::Text(|s, v| {
            s.exempt_users = plain_text(v)?
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            Ok(())
        }),
        doc: "Valkey users the module never handles, space- or comma-separated; they log in \
              with their Valkey passwords.",
    },
    OptionSpec {
        name: "local_fallback",
        default: "never",
        parser: Parser::Choice {
            choices: &["never", "unavailable", "always"],
            set: |s, i| {
                s.local_fallback = [
                    LocalFallback::Never,
                    LocalFallback::Unavailable,
                    LocalFallback::Always,
                ][i]
            },
        },
        doc: "When Valkey's own password check is tried for a user the module handles: `never` \
              (the directory decides), `unavailable` (only when no directory server can be \
              reached), `always` (after any failed directory check).",
    },
    OptionSpec {
        name: "audit",
        default: "log",
        parser: Parser::Choice {
            choices: &["off", "log", "file"],
            set: |s, i| s.audit = [Sink::Off, Sink::Log, Sink::File][i],
        },
        doc: "Where every authentication decision is recorded (time, client, username, outcome, \
              reason, server, latency; never a password): `log` (Valkey's log: denials at \
              notice level, allowed logins at verbose, at most 100 lines a second of each), \
              `file` (every decision, as JSON lines appended to `audit_file`), or `off`.",
    },
    OptionSpec {
        name: "audit_file",
        default: "",
        parser: Parser::Path {
            kind: PathKind::Output,
            set: |s, p| s.audit_file = p,
        },
        doc: "The JSON-lines file of `audit file`, created 0600. Written by a thread of its own. \
              After log rotation it is opened again by `VALKEYAUTH.AUDIT REOPEN`, or by itself \
              when the file was moved or deleted.",
    },
];

/// The Markdown table of every option, as the README shows it.
pub fn markdown_table() -> String {
    let mut out = String::from("| name | type | default | meaning |\n|---|---|---|---|\n");
    for o in OPTIONS {
        let default = if o.default.is_empty() {
            "\"\"".to_owned()
        } else {
            format!("`{}`", o.default)
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            o.name,
            o.type_doc(),
            default,
            o.doc
        ));
    }
    out
}

/// Refuses control characters: every text option ends up in a C string or a log line.
fn plain_text(v: &str) -> Result<String, String> {
    if v.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(v.to_owned())
}

/// A DN, checked by libldap's own parser (empty: the root).
fn parse_dn(v: &str) -> Result<String, String> {
    let v = plain_text(v)?;
    if !crate::ldap::is_dn(&v) {
        return Err("must be a DN such as ou=people,dc=example,dc=com".to_owned());
    }
    Ok(v)
}

fn optional_path(v: &str) -> Result<Option<PathBuf>, String> {
    let v = plain_text(v)?;
    Ok((!v.is_empty()).then(|| PathBuf::from(v)))
}

fn parse_servers(v: &str) -> Result<Vec<String>, String> {
    let v = plain_text(v)?;
    v.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|url| !url.is_empty())
        .map(|url| check_server_url(url).map(|()| url.to_owned()))
        .collect()
}

/// Accepts `ldap[s]://host[:port][/]` and `ldapi://<socket path>`: only a server, so that no
/// DN, credentials or extensions hide in a URL.
fn check_server_url(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    // Errors go to the log and to the client that set the value: a password typed into the
    // URL must not come back in them.
    let url = without_credentials(url);
    if lower.starts_with("ldapi://") {
        return Ok(());
    }
    let rest = ["ldap://", "ldaps://"]
        .iter()
        .find_map(|scheme| lower.strip_prefix(scheme))
        .ok_or_else(|| format!("'{url}' is not an LDAP URL (ldap://, ldaps:// or ldapi://)"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '@']) {
        return Err(format!(
            "'{url}' must name only a server: no DN, options or credentials"
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') => (host, Some(port)),
        _ => (authority, None),
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("'{url}' must name a host"));
    }
    if let Some(port) = port {
        port.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("'{url}' has an invalid port"))?;
    }
    Ok(())
}

/// `url` with whatever precedes an `@` after the scheme replaced, since that is where a user
/// and password go.
fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://<credentials removed>@{host}"),
        None => url.to_owned(),
    }
}

/// Accepts one RFC 4515 filter, with or without its outer parentheses, and stores it without
/// them.
fn parse_filter(v: &str) -> Result<String, String> {
    let v = plain_text(v.trim())?;
    let wrapped = if v.starts_with('(') {
        v
    } else {
        format!("({v})")
    };
    match filter_end(wrapped.as_bytes(), 0) {
        Some(end) if end == wrapped.len() => Ok(wrapped[1..end - 1].to_owned()),
        _ => Err("must be one LDAP filter, e.g. objectClass=person or (&(a=b)(c=d))".to_owned()),
    }
}

/// The index just past the filter that starts at `at`, if one does. Values are not checked
/// beyond having no raw parentheses: RFC 4515 escapes those as \28 and \29.
fn filter_end(s: &[u8], at: usize) -> Option<usize> {
    if s.get(at) != Some(&b'(') {
        return None;
    }
    let mut i = at + 1;
    match s.get(i)? {
        b'&' | b'|' => {
            i += 1;
            let first = i;
            while s.get(i) == Some(&b'(') {
                i = filter_end(s, i)?;
            }
            if i == first {
                return None;
            }
        }
        b'!' => i = filter_end(s, i + 1)?,
        _ => {
            let len = s[i..].iter().position(|c| matches!(c, b'(' | b')'))?;
            let item = &s[i..i + len];
            let eq = item.iter().position(|c| *c == b'=')?;
            if eq == 0
                || item[..eq]
                    .iter()
                    .all(|c| matches!(c, b'~' | b'<' | b'>' | b':'))
            {
                return None;
            }
            i += len;
        }
    }
    (s.get(i) == Some(&b')')).then_some(i + 1)
}

fn parse_attribute(v: &str) -> Result<String, String> {
    let v = v.trim();
    let valid = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ';' | '.'));
    if !valid {
        return Err("must be an attribute name such as uid or sAMAccountName".to_owned());
    }
    Ok(v.to_owned())
}

/// The longest service password; its file may hold a line end on top.
const MAX_PASSWORD_BYTES: usize = 16 * 1024;
const MAX_PASSWORD_FILE_BYTES: u64 = MAX_PASSWORD_BYTES as u64 + 2;

/// Reads a service password: one trailing newline dropped; refused when empty, too long, not
/// a regular file, or open to group or others (unless `allow_shared`).
pub fn read_password_file(path: &Path, allow_shared: bool) -> Result<Secret, String> {
    let path_text = path.display();
    let file = open_regular_file(fs::OpenOptions::new().read(true), path)?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read '{path_text}': {e}"))?;
    if !allow_shared && meta.permissions().mode() & SHARED_MODE_BITS != 0 {
        return Err(format!(
            "'{path_text}' can be read or written by group or others; chmod 600 it \
             (or set allow_readable_passwd_file yes)"
        ));
    }
    if meta.len() > MAX_PASSWORD_FILE_BYTES {
        return Err(format!("'{path_text}' is too long for a password file"));
    }
    // One byte more than a file may hold: files whose size says nothing (`/proc`) are
    // measured by what they give.
    let mut bytes = Vec::new();
    let read = file
        .take(MAX_PASSWORD_FILE_BYTES + 1)
        .read_to_end(&mut bytes);
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    let fits = bytes.len() <= MAX_PASSWORD_BYTES;
    let secret = Secret::new(&bytes);
    bytes.fill(0);
    read.map_err(|e| format!("cannot read '{path_text}': {e}"))?;
    if !fits {
        return Err(format!("'{path_text}' is too long for a password file"));
    }
    if secret.is_empty() {
        // An empty password turns the service bind into an unauthenticated bind.
        return Err(format!("'{path_text}' holds an empty password"));
    }
    Ok(secret)
}

/// Read and write permission for group and others.
const SHARED_MODE_BITS: u32 = 0o066;

fn file_is_shared(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & SHARED_MODE_BITS != 0)
}

/// An absolute path, so that it does not depend on Valkey's `dir`.
fn absolute_path(v: &str) -> Result<Option<PathBuf>, String> {
    let path = optional_path(v)?;
    match &path {
        Some(p) if !p.is_absolute() => Err("must be an absolute path".to_owned()),
        _ => Ok(path),
    }
}

/// Checks what a [`Parser::Path`] names, so that a FIFO or a pseudo file is refused here
/// instead of hanging whichever thread opens it later.
fn check_path(kind: PathKind, path: &Path) -> Result<(), String> {
    let shown = path.display();
    match kind {
        PathKind::File => files::library_input(path).map(drop),
        PathKind::FileOrDirectory if path.is_dir() => files::library_input_dir(path).map(drop),
        PathKind::FileOrDirectory => check_path(PathKind::File, path),
        PathKind::Output => {
            files::refuse_kernel_interface(path)?;
            if path.parent().is_some_and(|dir| !dir.is_dir()) {
                return Err(format!("the directory of '{shown}' does not exist"));
            }
            if fs::metadata(path).is_ok_and(|meta| !meta.is_file()) {
                return Err(format!("'{shown}' is not a regular file"));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, value: &str) -> Result<Settings, String> {
        let mut s = Settings::defaults();
        let spec = &OPTIONS[OptionSpec::index_of(name).unwrap()];
        spec.validate(value)?;
        spec.apply(&mut s, value)?;
        Ok(s)
    }

    #[test]
    fn defaults_match_the_issue() {
        let s = Settings::defaults();
        assert!(!s.is_active());
        assert_eq!(s.mode, AuthMode::Bind);
        assert_eq!(s.bind_dn_prefix, "cn=");
        assert_eq!(s.search_filter, "objectClass=*");
        assert_eq!(s.search_attribute, "uid");
        assert_eq!(s.workers, 8);
        assert_eq!(s.max_pending, 1024);
        assert_eq!(s.timeouts.connect, Duration::from_millis(3000));
        assert_eq!(s.timeouts.operation, Duration::from_millis(5000));
        assert!(s.is_exempt(b"default"));
        assert_eq!(s.local_fallback, LocalFallback::Never);
    }

    #[test]
    fn servers_split_on_spaces_and_commas() {
        let s = set("servers", "ldap://a:389, ldaps://b  ldapi://%2Frun%2Fslapd").unwrap();
        assert_eq!(
            s.servers,
            ["ldap://a:389", "ldaps://b", "ldapi://%2Frun%2Fslapd"]
        );
        assert!(set("servers", "http://a").is_err());
        assert!(set("servers", "ldap://a/dc=x").is_err());
        assert!(set("servers", "ldap://a\n").is_err());
        assert!(set("servers", "").unwrap().servers.is_empty());
        assert!(set("servers", "ldap://[::1]:389 ldaps://h:636/").is_ok());
        let err = set("servers", "ldap://alice:Hunter2-Pw@h:389").unwrap_err();
        assert!(
            err.contains("credentials") && !err.contains("Hunter2"),
            "{err}"
        );
        let err = set("servers", "http://alice:Hunter2-Pw@h").unwrap_err();
        assert!(!err.contains("Hunter2"), "{err}");
        for bad in [
            "ldap://",
            "ldap://:389",
            "ldap://h:99999",
            "ldap://h:0",
            "ldap://u:pw@h",
            "ldap://h/?x",
        ] {
            assert!(set("servers", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_are_bounded() {
        assert_eq!(set("workers", "256").unwrap().workers, 256);
        for bad in ["0", "257", "-1", "x", "", "1.5"] {
            assert!(set("workers", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn choices_ignore_case() {
        assert_eq!(
            set("auth_mode", "Search+Bind").unwrap().mode,
            AuthMode::SearchBind
        );
        assert!(set("auth_mode", "search").is_err());
        assert!(set("local_fallback", "sometimes").is_err());
        assert_eq!(
            set("search_scope", "one").unwrap().search_scope,
            Scope::OneLevel
        );
    }

    #[test]
    fn filters_lose_outer_parentheses() {
        assert_eq!(
            set("search_filter", "(objectClass=person)")
                .unwrap()
                .search_filter,
            "objectClass=person"
        );
        assert_eq!(
            set("search_filter", "(&(a=b)(c=d))").unwrap().search_filter,
            "&(a=b)(c=d)"
        );
        assert_eq!(
            set("search_filter", "(!(a=b))").unwrap().search_filter,
            "!(a=b)"
        );
        assert_eq!(
            set("search_filter", "(&(objectClass=person)(|(ou=a)(ou=b)))")
                .unwrap()
                .search_filter,
            "&(objectClass=person)(|(ou=a)(ou=b))"
        );
        assert_eq!(
            set("search_filter", "cn>=m").unwrap().search_filter,
            "cn>=m"
        );
        let bad = [
            "",
            "()",
            "(a=b",
            "a=b)",
            ")(",
            "(a=b)(c=d)",
            "(&)",
            "(=x)",
            "(abc)",
            "(&(a=b)x)",
        ];
        for bad in bad {
            assert!(set("search_filter", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bases_are_dns() {
        for good in [
            "",
            "ou=people,dc=example,dc=test",
            "ou=people, dc=example,dc=test",
            "DC=corp,DC=example,DC=test",
            "cn=a\\,b,dc=x",
        ] {
            assert!(set("search_base", good).is_ok(), "{good}");
            assert!(set("group_search_base", good).is_ok(), "{good}");
        }
        for bad in ["abc", "${HOME}", "ou=x,", "=x", "ou=people,,dc=x"] {
            assert!(set("search_base", bad).is_err(), "{bad}");
            assert!(set("group_search_base", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn attributes_are_names() {
        assert!(set("search_attribute", "sAMAccountName").is_ok());
        assert!(set("search_attribute", "uid)(x=y").is_err());
    }

    #[test]
    fn password_file_rules() {
        let dir = std::env::temp_dir().join(format!("valkeyauth-cfg-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        fs::write(&file, "s3cret\r\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        let path = file.to_str().unwrap();
        let s = set("search_bind_passwd_file", path).unwrap();
        assert_eq!(s.service_password().unwrap().unwrap().expose(), b"s3cret");

        for mode in [0o640, 0o604, 0o644] {
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
            let values: Vec<String> = OPTIONS
                .iter()
                .map(|o| match o.name {
                    "search_bind_passwd_file" => path.to_owned(),
                    _ => o.default.to_owned(),
                })
                .collect();
            assert!(Settings::from_values(&values)
                .unwrap()
                .check_password_file_now()
                .unwrap_err()
                .contains("chmod 600"));
            let allowed: Vec<String> = OPTIONS
                .iter()
                .zip(values)
                .map(|(o, v)| match o.name {
                    "allow_readable_passwd_file" => "yes".to_owned(),
                    _ => v,
                })
                .collect();
            let s = Settings::from_values(&allowed).unwrap();
            assert_eq!(s.service_password().unwrap().unwrap().expose(), b"s3cret");
        }

        fs::write(&file, "\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(set("search_bind_passwd_file", path)
            .unwrap_err()
            .contains("empty"));
        assert!(set("search_bind_passwd_file", "/nonexistent/pw").is_err());

        // 16 KiB of password, with or without a line end; one byte more is refused.
        let max = "p".repeat(MAX_PASSWORD_BYTES);
        for (contents, fits) in [
            (format!("{max}\r\n"), true),
            (max.clone(), true),
            (format!("{max}x"), false),
            (format!("{max}x\n"), false),
            (format!("{max}xy"), false),
        ] {
            fs::write(&file, contents).unwrap();
            let read = read_password_file(&file, false);
            assert_eq!(read.is_ok(), fits, "{:?}", read.err());
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The README's option table is generated from OPTIONS; with VALKEYAUTH_UPDATE_README set,
    /// this test rewrites it instead of failing.
    #[test]
    fn readme_table_is_generated_from_the_declarations() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = fs::read_to_string(path).unwrap();
        let (begin, end) = ("<!-- options:begin", "<!-- options:end -->");
        let start = readme
            .find(begin)
            .expect("README has the options:begin marker");
        let start = start + readme[start..].find('\n').unwrap() + 1;
        let stop = readme.find(end).expect("README has the options:end marker");
        if readme[start..stop] == markdown_table() {
            return;
        }
        assert!(
            std::env::var_os("VALKEYAUTH_UPDATE_README").is_some(),
            "README option table is stale: run VALKEYAUTH_UPDATE_README=1 cargo test --lib readme"
        );
        let updated = format!(
            "{}{}{}",
            &readme[..start],
            markdown_table(),
            &readme[stop..]
        );
        fs::write(path, updated).unwrap();
    }
}

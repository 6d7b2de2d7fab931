//! The directory check of one AUTH, free of Valkey types.
//!
//! A worker owns one [`Engine`]: its persistent connections, reused across AUTHs. In bind mode it
//! holds one connection for user binds; in search+bind mode a second one stays bound as the
//! service account, so an AUTH costs one search and one bind.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{AuthMode, ServiceBind, Settings};
use crate::escape;
use crate::files;
use crate::health::Health;
use crate::ldap::{Connection, LdapError, ResultCode, Scope, Timeouts};
use crate::secret::Secret;

/// Longest username accepted, in bytes.
pub const MAX_USERNAME_LEN: usize = 512;

/// Longest password sent to the directory, in bytes. Far above any directory's own limit
/// (Active Directory: 256 characters), and far below the request size at which directories drop
/// an unauthenticated connection (slapd: 256 KiB), which would otherwise turn a junk password
/// into an outage.
pub const MAX_PASSWORD_LEN: usize = 16 * 1024;

/// The result of one AUTH. The names are the INFO field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    BadCredentials,
    UnknownUser,
    AmbiguousUser,
    EmptyPassword,
    PasswordTooLong,
    InvalidUsername,
    NoAclUser,
    NoMapping,
    AccountDisabled,
    AccountExpired,
    AccountLocked,
    PasswordExpired,
    PasswordMustChange,
    LogonRestricted,
    InternalError,
    Unreachable,
    Timeout,
    Busy,
    DirectoryError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Allowed,
    /// The credentials were refused: the client gets the standard WRONGPASS.
    Denied,
    /// The directory could not give an answer.
    Outage,
}

impl Outcome {
    pub const ALL: [Outcome; 20] = [
        Outcome::Allowed,
        Outcome::BadCredentials,
        Outcome::UnknownUser,
        Outcome::AmbiguousUser,
        Outcome::EmptyPassword,
        Outcome::PasswordTooLong,
        Outcome::InvalidUsername,
        Outcome::NoAclUser,
        Outcome::NoMapping,
        Outcome::AccountDisabled,
        Outcome::AccountExpired,
        Outcome::AccountLocked,
        Outcome::PasswordExpired,
        Outcome::PasswordMustChange,
        Outcome::LogonRestricted,
        Outcome::InternalError,
        Outcome::Unreachable,
        Outcome::Timeout,
        Outcome::Busy,
        Outcome::DirectoryError,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::BadCredentials => "denied_bad_credentials",
            Outcome::UnknownUser => "denied_unknown_user",
            Outcome::AmbiguousUser => "denied_ambiguous_user",
            Outcome::EmptyPassword => "denied_empty_password",
            Outcome::PasswordTooLong => "denied_password_too_long",
            Outcome::InvalidUsername => "denied_invalid_username",
            Outcome::NoAclUser => "denied_no_acl_user",
            Outcome::NoMapping => "denied_no_mapping",
            Outcome::AccountDisabled => "denied_account_disabled",
            Outcome::AccountExpired => "denied_account_expired",
            Outcome::AccountLocked => "denied_account_locked",
            Outcome::PasswordExpired => "denied_password_expired",
            Outcome::PasswordMustChange => "denied_password_must_change",
            Outcome::LogonRestricted => "denied_logon_restricted",
            Outcome::InternalError => "denied_internal_error",
            Outcome::Unreachable => "outage_unreachable",
            Outcome::Timeout => "outage_timeout",
            Outcome::Busy => "outage_busy",
            Outcome::DirectoryError => "outage_directory_error",
        }
    }

    /// The reason in ACL LOG and logs: the name without its class, e.g. `bad-credentials`.
    pub fn reason(self) -> String {
        let name = self.name();
        let bare = name
            .strip_prefix("denied_")
            .or_else(|| name.strip_prefix("outage_"))
            .unwrap_or(name);
        bare.replace('_', "-")
    }

    pub fn class(self) -> Class {
        match self {
            Outcome::Allowed => Class::Allowed,
            Outcome::Unreachable | Outcome::Timeout | Outcome::Busy | Outcome::DirectoryError => {
                Class::Outage
            }
            _ => Class::Denied,
        }
    }

    pub fn index(self) -> usize {
        Outcome::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }
}

/// One configuration and the health of its servers. A configuration change makes a new one, so
/// workers reconnect and every server starts as up.
#[derive(Debug)]
pub struct Generation {
    pub settings: Settings,
    pub health: Health,
}

impl Generation {
    pub fn new(settings: Settings) -> Generation {
        Generation {
            health: Health::new(settings.servers.len()),
            settings,
        }
    }
}

/// A username and password that passed the local checks: only [`Credentials::check`] makes
/// one, so the directory never sees an empty password or a username it cannot put into a DN or
/// a filter.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    pub username: &'a str,
    pub password: &'a [u8],
}

impl<'a> Credentials<'a> {
    pub fn check(username: &'a [u8], password: &'a [u8]) -> Result<Credentials<'a>, Outcome> {
        if username.is_empty() || username.len() > MAX_USERNAME_LEN || username.contains(&0) {
            return Err(Outcome::InvalidUsername);
        }
        let username = std::str::from_utf8(username).map_err(|_| Outcome::InvalidUsername)?;
        // RFC 4513 §5.1.2: a DN with an empty password is an "unauthenticated bind", which many
        // directories answer with success. It must never reach the directory.
        if password.is_empty() {
            return Err(Outcome::EmptyPassword);
        }
        if password.len() > MAX_PASSWORD_LEN {
            return Err(Outcome::PasswordTooLong);
        }
        Ok(Credentials { username, password })
    }
}

/// An AUTH on its way to the directory.
#[derive(Debug)]
pub struct Request {
    pub generation: Arc<Generation>,
    /// Provisioning needs the user's groups after a successful bind.
    pub wants_groups: bool,
    username: String,
    password: Secret,
    deadline: Instant,
}

impl Request {
    pub fn new(
        generation: Arc<Generation>,
        credentials: Credentials,
        wants_groups: bool,
    ) -> Request {
        let deadline = Instant::now() + generation.settings.auth_timeout;
        Request {
            generation,
            wants_groups,
            username: credentials.username.to_owned(),
            password: Secret::new(credentials.password),
            deadline,
        }
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    /// The step timeouts, cut to what is left before the deadline; None once it has passed.
    fn timeouts_left(&self) -> Option<Timeouts> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let configured = &self.generation.settings.timeouts;
        // Below a millisecond nothing useful fits (and libldap refuses a zero timeout).
        (left >= Duration::from_millis(1)).then(|| Timeouts {
            connect: configured.connect.min(left),
            operation: configured.operation.min(left),
        })
    }
}

/// The matching rule of Active Directory's transitive membership search.
const IN_CHAIN_RULE: &str = "1.2.840.113556.1.4.1941";

/// What the directory said about one AUTH.
#[derive(Debug)]
pub struct Answer {
    pub outcome: Outcome,
    /// Group DNs, when the request asked for them and the login succeeded.
    pub groups: Vec<String>,
    /// The server that gave the answer, or for an outage the last one that failed, by index
    /// into `Settings::servers`.
    pub server: Option<usize>,
    /// The DN the user was bound as, when the directory was asked.
    pub dn: Option<String>,
}

impl From<Outcome> for Answer {
    fn from(outcome: Outcome) -> Answer {
        Answer {
            outcome,
            groups: Vec::new(),
            server: None,
            dn: None,
        }
    }
}

/// A connection kept between AUTHs.
struct Pooled {
    server: usize,
    conn: Connection,
    last_used: Instant,
    _open: OpenConnection,
}

/// Counts a connection in its server's `open_connections` for as long as it lives.
struct OpenConnection {
    generation: Arc<Generation>,
    server: usize,
}

impl OpenConnection {
    fn new(generation: &Arc<Generation>, server: usize) -> OpenConnection {
        generation.health.connection_opened(server);
        OpenConnection {
            generation: Arc::clone(generation),
            server,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.generation.health.connection_closed(self.server);
    }
}

type Slot = Option<Pooled>;

/// Where one step runs, and for how long at most.
struct Target<'a> {
    server: usize,
    url: &'a str,
    generation: &'a Arc<Generation>,
    settings: &'a Settings,
    timeouts: Timeouts,
}

impl Target<'_> {
    /// Notes a failure of the server itself (not a refused user) for INFO.
    fn record_error(&self, e: &LdapError) {
        self.generation.health.record_error(self.server, e);
    }
}

/// What trying one server gave: a final outcome, or a transport failure that sends the AUTH on
/// to the next server.
enum Attempt {
    /// Allowed, with the user's DN and groups (when they were asked for).
    Allowed {
        dn: String,
        groups: Vec<String>,
    },
    /// The bind was refused, or never tried (no DN found).
    Final(Outcome, Option<String>),
    NextServer(Outcome),
}

#[derive(Default)]
pub struct Engine {
    /// The generation the connections below were opened for; held so that `Arc::ptr_eq`
    /// cannot match a new generation allocated at a freed one's address.
    generation: Option<Arc<Generation>>,
    user: Slot,
    search: Slot,
}

impl Engine {
    pub fn authenticate(&mut self, request: &Request) -> Answer {
        let generation = &request.generation;
        if !self
            .generation
            .as_ref()
            .is_some_and(|g| Arc::ptr_eq(g, generation))
        {
            // New configuration: connections made for the old one may point elsewhere.
            self.user = None;
            self.search = None;
            self.generation = Some(Arc::clone(generation));
        }
        let settings = &generation.settings;
        // With every server down, the AUTH fails at once instead of paying timeouts again.
        let mut outage = Answer::from(Outcome::Unreachable);
        for (server, url) in settings.servers.iter().enumerate() {
            if !generation.health.is_up(server) {
                continue;
            }
            let Some(timeouts) = request.timeouts_left() else {
                return Answer {
                    outcome: Outcome::Timeout,
                    ..outage
                };
            };
            let target = Target {
                server,
                url,
                generation,
                settings,
                timeouts,
            };
            match self.try_server(&target, request) {
                Attempt::Final(outcome, dn) => {
                    return Answer {
                        server: Some(server),
                        dn,
                        ..Answer::from(outcome)
                    };
                }
                Attempt::Allowed { dn, groups } => {
                    return Answer {
                        outcome: Outcome::Allowed,
                        groups,
                        server: Some(server),
                        dn: Some(dn),
                    }
                }
                Attempt::NextServer(why) => {
                    // A step cut short by this AUTH's own deadline may say more about the
                    // queue than about the server: the checker probes it with the full
                    // timeouts and marks it down if it really does not answer.
                    let cut = target.timeouts != settings.timeouts;
                    if why == Outcome::Timeout && cut {
                        generation.health.suspect(server);
                    } else {
                        generation.health.mark_down(server);
                    }
                    // The audit names the last server that failed.
                    outage = Answer {
                        server: Some(server),
                        ..Answer::from(why)
                    };
                }
            }
        }
        outage
    }

    fn try_server(&mut self, target: &Target, request: &Request) -> Attempt {
        let settings = target.settings;
        let dn = match settings.mode {
            AuthMode::Bind => match escape::bind_name(
                &settings.bind_dn_prefix,
                request.username(),
                &settings.bind_dn_suffix,
            ) {
                Some(name) => name,
                None => return Attempt::Final(Outcome::InvalidUsername, None),
            },
            AuthMode::SearchBind => match self.find_user(target, request.username()) {
                Ok(dn) => dn,
                Err(attempt) => return attempt,
            },
        };
        let bind = run(
            &mut self.user,
            target,
            |_, _| Ok(()),
            |conn| conn.simple_bind(&dn, request.password.expose()),
        );
        match bind {
            Ok(()) if request.wants_groups => {
                match self.find_groups(target, &dn, request.username()) {
                    Ok(groups) => Attempt::Allowed { dn, groups },
                    Err(e) => {
                        log::warn!("valkeyauth: group lookup on {} failed: {e}", target.url);
                        target.record_error(&e);
                        Attempt::Final(Outcome::DirectoryError, Some(dn))
                    }
                }
            }
            Ok(()) => Attempt::Allowed {
                dn,
                groups: Vec::new(),
            },
            Err(e) => match bind_failure(target, &e) {
                Attempt::Final(outcome, _) => Attempt::Final(outcome, Some(dn)),
                other => other,
            },
        }
    }

    /// The DNs of the user's groups, found with the service account (or anonymously) on the
    /// search connection: read from the membership attribute of the user entry, or searched;
    /// with `nested_groups`, also the groups that contain those, breadth first.
    fn find_groups(
        &mut self,
        target: &Target,
        user_dn: &str,
        username: &str,
    ) -> Result<Vec<String>, LdapError> {
        let settings = target.settings;
        let lookup = &settings.groups;
        let base = if lookup.base.is_empty() {
            &settings.search_base
        } else {
            &lookup.base
        };
        let mut groups = if lookup.membership_attribute.is_empty() {
            let filter = lookup
                .filter
                .replace("{dn}", &escape::filter_value(user_dn))
                .replace("{username}", &escape::filter_value(username));
            run(&mut self.search, target, bind_service, |conn| {
                conn.search_dns(base, Scope::Subtree, &filter, 0)
            })?
        } else {
            run(&mut self.search, target, bind_service, |conn| {
                conn.search_values(
                    user_dn,
                    Scope::Base,
                    "(objectClass=*)",
                    &lookup.membership_attribute,
                )
            })?
        };
        // Active Directory's in-chain rule already returns every level.
        if !lookup.nested || lookup.filter.contains(IN_CHAIN_RULE) {
            return Ok(groups);
        }
        let mut seen: HashSet<String> = groups.iter().map(|g| g.to_lowercase()).collect();
        let mut frontier = groups.clone();
        for _ in 1..lookup.max_depth {
            let mut next = Vec::new();
            for group in &frontier {
                let filter = format!(
                    "(|(member={0})(uniqueMember={0}))",
                    escape::filter_value(group)
                );
                let parents = run(&mut self.search, target, bind_service, |conn| {
                    conn.search_dns(base, Scope::Subtree, &filter, 0)
                })?;
                // A group seen before is not followed again, which also ends cycles.
                next.extend(
                    parents
                        .into_iter()
                        .filter(|p| seen.insert(p.to_lowercase())),
                );
            }
            if next.is_empty() {
                break;
            }
            groups.extend(next.iter().cloned());
            frontier = next;
        }
        Ok(groups)
    }

    /// Search+bind: the DN of the one entry whose search attribute equals the username. The
    /// search runs on its own connection, bound as the service account, never on one left bound
    /// as a user.
    fn find_user(&mut self, target: &Target, username: &str) -> Result<String, Attempt> {
        let settings = target.settings;
        let filter = format!(
            "(&({})({}={}))",
            settings.search_filter,
            settings.search_attribute,
            escape::filter_value(username)
        );
        let found = run(&mut self.search, target, bind_service, |conn| {
            conn.search_dns(&settings.search_base, settings.search_scope, &filter, 2)
        });
        match found {
            Ok(mut dns) if dns.len() == 1 => Ok(dns.swap_remove(0)),
            Ok(dns) if dns.is_empty() => Err(Attempt::Final(Outcome::UnknownUser, None)),
            Ok(_) => {
                log::warn!("valkeyauth: more than one entry matches username {username:?}; denied as ambiguous");
                Err(Attempt::Final(Outcome::AmbiguousUser, None))
            }
            Err(e) if e.is_transport() => Err(next_server(target.url, &e)),
            Err(e) => {
                log::warn!("valkeyauth: user search on {} failed: {e}", target.url);
                target.record_error(&e);
                Err(Attempt::Final(Outcome::DirectoryError, None))
            }
        }
    }
}

/// Runs `op` on the slot's connection to the target server, opening (and preparing) a new one
/// when there is none, it talks to another server, or it sat idle too long.
/// A transport error on a reused connection usually means the server or a firewall dropped it
/// while idle: the step is retried once on a fresh connection. A timeout is not retried, since
/// the server may have processed the request.
fn run<T>(
    slot: &mut Slot,
    target: &Target,
    prepare: fn(&mut Connection, &Settings) -> Result<(), LdapError>,
    mut op: impl FnMut(&mut Connection) -> Result<T, LdapError>,
) -> Result<T, LdapError> {
    let max_idle = target.settings.connection_max_idle;
    if let Some(mut pooled) =
        slot.take_if(|p| p.server == target.server && p.last_used.elapsed() < max_idle)
    {
        pooled.conn.set_timeouts(&target.timeouts)?;
        match timed(target, || op(&mut pooled.conn)) {
            Err(e) if e.is_transport() && !e.is_timeout() => {}
            Err(e) if e.is_transport() => return Err(e),
            result => {
                pooled.last_used = Instant::now();
                *slot = Some(pooled);
                return result;
            }
        }
    }
    // Whatever the slot held is closed here, before a new connection opens.
    *slot = None;
    let mut conn = Connection::open(target.url, &target.timeouts, &target.settings.tls)
        .inspect_err(|e| target.record_error(e))?;
    let open = OpenConnection::new(target.generation, target.server);
    prepare(&mut conn, target.settings).inspect_err(|e| target.record_error(e))?;
    let result = timed(target, || op(&mut conn));
    if !matches!(&result, Err(e) if e.is_transport()) {
        *slot = Some(Pooled {
            server: target.server,
            conn,
            last_used: Instant::now(),
            _open: open,
        });
    }
    result
}

/// Runs one request, keeping its round-trip time (or its transport failure) for INFO.
fn timed<T>(target: &Target, op: impl FnOnce() -> Result<T, LdapError>) -> Result<T, LdapError> {
    let started = Instant::now();
    let result = op();
    match &result {
        Err(e) if e.is_transport() => target.record_error(e),
        _ => target
            .generation
            .health
            .record_rtt(target.server, started.elapsed()),
    }
    result
}

/// Binds a fresh search connection as the service account: with SASL, or with a DN and its
/// password file; with neither, searches run anonymously. A failed bind drops the new
/// connection, so the next AUTH connects again.
pub fn bind_service(conn: &mut Connection, settings: &Settings) -> Result<(), LdapError> {
    if let Some(mechanism) = settings.service_bind.sasl_mechanism() {
        check_keytab(settings)?;
        return conn.sasl_bind(mechanism, &settings.sasl_authz_id);
    }
    if settings.search_bind_dn.is_empty() {
        return Ok(());
    }
    // Not a transport error: another server would not make the file readable.
    let password = settings
        .service_password()
        .map_err(|e| LdapError::new(ResultCode::PARAM_ERROR, e))?;
    let Some(password) = password else {
        return Ok(());
    };
    conn.simple_bind(&settings.search_bind_dn, password.expose())
}

/// Kerberos reads the keytab with blocking calls on this thread: one swapped for a FIFO since
/// it was set must fail here, not hang a worker or the health checker. Not a transport error:
/// another server would not fix the file.
fn check_keytab(settings: &Settings) -> Result<(), LdapError> {
    let Some(keytab) = settings.sasl_keytab.as_deref() else {
        return Ok(());
    };
    if settings.service_bind != ServiceBind::Gssapi {
        return Ok(());
    }
    files::library_input(keytab)
        .map(drop)
        .map_err(|e| LdapError::new(ResultCode::PARAM_ERROR, format!("sasl_keytab: {e}")))
}

/// The health check of one server: connect (with TLS as configured), bind as the service
/// account or anonymously, and read the root DSE, which every directory (Active Directory
/// included) offers. Any answer from the server, even a refusal, proves it is up.
pub fn probe(settings: &Settings, url: &str) -> Result<(), LdapError> {
    let checked = Connection::open(url, &settings.timeouts, &settings.tls).and_then(|mut conn| {
        bind_service(&mut conn, settings)?;
        conn.search_dns("", Scope::Base, "(objectClass=*)", 1)
    });
    match checked {
        Err(e) if e.is_transport() => Err(e),
        _ => Ok(()),
    }
}

fn bind_failure(target: &Target, e: &LdapError) -> Attempt {
    if e.is_transport() {
        return next_server(target.url, e);
    }
    if let Some(outcome) = active_directory_reason(&e.diagnostic) {
        return Attempt::Final(outcome, None);
    }
    let outcome = match e.code {
        // The server refuses this account with this password.
        ResultCode::INVALID_CREDENTIALS
        | ResultCode::INAPPROPRIATE_AUTH
        | ResultCode::INSUFFICIENT_ACCESS
        | ResultCode::UNWILLING_TO_PERFORM => Outcome::BadCredentials,
        ResultCode::NO_SUCH_OBJECT | ResultCode::INVALID_DN_SYNTAX => Outcome::UnknownUser,
        // 389-DS (Red Hat DS, FreeIPA) refuses a bind to a locked account with
        // constraintViolation ("Exceed password retry limit").
        ResultCode::CONSTRAINT_VIOLATION => Outcome::AccountLocked,
        _ => {
            log::warn!("valkeyauth: user bind on {} failed: {e}", target.url);
            target.record_error(e);
            Outcome::DirectoryError
        }
    };
    Attempt::Final(outcome, None)
}

/// Active Directory says why a bind failed in its diagnostic text (`... data 533, v4563`).
/// The reason goes to INFO and ACL LOG; the client still gets the one uniform WRONGPASS.
/// 530, 531 and 532 mean the password was right, which is never told to the client.
fn active_directory_reason(diagnostic: &[u8]) -> Option<Outcome> {
    let at = diagnostic.windows(5).position(|w| w == b"data ")?;
    let code: String = diagnostic[at + 5..]
        .iter()
        .take_while(|b| b.is_ascii_hexdigit())
        .map(|b| char::from(b.to_ascii_lowercase()))
        .collect();
    Some(match code.as_str() {
        "525" => Outcome::UnknownUser,
        "52e" => Outcome::BadCredentials,
        "530" | "531" => Outcome::LogonRestricted,
        "532" => Outcome::PasswordExpired,
        "533" => Outcome::AccountDisabled,
        "701" => Outcome::AccountExpired,
        "773" => Outcome::PasswordMustChange,
        "775" => Outcome::AccountLocked,
        _ => return None,
    })
}

fn next_server(url: &str, e: &LdapError) -> Attempt {
    log::warn!("valkeyauth: directory server {url} failed: {e}");
    Attempt::NextServer(if e.is_timeout() {
        Outcome::Timeout
    } else {
        Outcome::Unreachable
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(user: &[u8], pass: &[u8]) -> Result<Request, Outcome> {
        let credentials = Credentials::check(user, pass)?;
        Ok(Request::new(
            Arc::new(Generation::new(Settings::defaults())),
            credentials,
            false,
        ))
    }

    #[test]
    fn input_is_checked_before_any_traffic() {
        assert_eq!(request(b"", b"pw").unwrap_err(), Outcome::InvalidUsername);
        assert_eq!(
            request(b"a\0b", b"pw").unwrap_err(),
            Outcome::InvalidUsername
        );
        assert_eq!(
            request(b"\xff", b"pw").unwrap_err(),
            Outcome::InvalidUsername
        );
        assert_eq!(
            request(&[b'a'; 513], b"pw").unwrap_err(),
            Outcome::InvalidUsername
        );
        assert_eq!(request(b"alice", b"").unwrap_err(), Outcome::EmptyPassword);
        assert!(request(&[b'a'; 512], b"pw").is_ok());
        let long = vec![b'p'; MAX_PASSWORD_LEN + 1];
        assert_eq!(
            request(b"alice", &long).unwrap_err(),
            Outcome::PasswordTooLong
        );
        assert!(request(b"alice", &long[1..]).is_ok());
        assert_eq!(
            request(b"alice", b"p\0w").unwrap().password.expose(),
            b"p\0w"
        );
    }

    #[test]
    fn active_directory_bind_diagnostics_give_the_reason() {
        let text = |code: &str| {
            format!("80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data {code}, v4563\0")
        };
        for (code, outcome) in [
            ("525", Outcome::UnknownUser),
            ("52e", Outcome::BadCredentials),
            ("52E", Outcome::BadCredentials),
            ("530", Outcome::LogonRestricted),
            ("531", Outcome::LogonRestricted),
            ("532", Outcome::PasswordExpired),
            ("533", Outcome::AccountDisabled),
            ("701", Outcome::AccountExpired),
            ("773", Outcome::PasswordMustChange),
            ("775", Outcome::AccountLocked),
        ] {
            assert_eq!(
                active_directory_reason(text(code).as_bytes()),
                Some(outcome),
                "{code}"
            );
        }
        assert_eq!(active_directory_reason(text("999").as_bytes()), None);
        assert_eq!(active_directory_reason(b"Invalid credentials"), None);
        assert_eq!(active_directory_reason(b"data "), None);
    }

    #[test]
    fn every_outcome_has_a_distinct_name_and_index() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
            assert_eq!(
                Outcome::ALL.iter().filter(|p| p.name() == o.name()).count(),
                1
            );
        }
    }
}

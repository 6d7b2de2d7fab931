//! The directory check of one AUTH, free of Valkey types.
//!
//! A worker owns one [`Engine`]: its persistent connections, reused across AUTHs. In bind mode it
//! holds one connection for user binds; in search+bind mode a second one stays bound as the
//! service account, so an AUTH costs one search and one bind.

use std::sync::Arc;

use crate::config::{read_password_file, AuthMode, Settings};
use crate::escape;
use crate::ldap::{Connection, LdapError, ResultCode};
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
    pub const ALL: [Outcome; 13] = [
        Outcome::Allowed,
        Outcome::BadCredentials,
        Outcome::UnknownUser,
        Outcome::AmbiguousUser,
        Outcome::EmptyPassword,
        Outcome::PasswordTooLong,
        Outcome::InvalidUsername,
        Outcome::NoAclUser,
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
            Outcome::InternalError => "denied_internal_error",
            Outcome::Unreachable => "outage_unreachable",
            Outcome::Timeout => "outage_timeout",
            Outcome::Busy => "outage_busy",
            Outcome::DirectoryError => "outage_directory_error",
        }
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

/// A checked AUTH, ready for the directory. Only [`Request::new`] makes one, so the engine never
/// sees an empty password or a username it cannot put into a DN or a filter.
#[derive(Debug)]
pub struct Request {
    pub settings: Arc<Settings>,
    username: String,
    password: Secret,
}

impl Request {
    pub fn new(
        settings: Arc<Settings>,
        username: &[u8],
        password: &[u8],
    ) -> Result<Request, Outcome> {
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
        Ok(Request {
            settings,
            username: username.to_owned(),
            password: Secret::new(password),
        })
    }

    pub fn username(&self) -> &str {
        &self.username
    }
}

/// A connection and the index of the server it talks to.
type Slot = Option<(usize, Connection)>;

/// What trying one server gave: a final outcome, or a transport failure that sends the AUTH on
/// to the next server.
enum Attempt {
    Final(Outcome),
    NextServer(Outcome),
}

#[derive(Default)]
pub struct Engine {
    /// The snapshot the connections below were opened for; held so that `Arc::ptr_eq` cannot
    /// match a new snapshot allocated at a freed one's address.
    settings: Option<Arc<Settings>>,
    user: Slot,
    search: Slot,
}

impl Engine {
    pub fn authenticate(&mut self, request: &Request) -> Outcome {
        let settings = &request.settings;
        if !self
            .settings
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, settings))
        {
            // New configuration: connections made for the old one may point elsewhere.
            self.user = None;
            self.search = None;
            self.settings = Some(Arc::clone(settings));
        }
        let mut outage = Outcome::Unreachable;
        for (index, url) in settings.servers.iter().enumerate() {
            match self.try_server(settings, index, url, request) {
                Attempt::Final(outcome) => return outcome,
                Attempt::NextServer(why) => outage = why,
            }
        }
        outage
    }

    fn try_server(
        &mut self,
        settings: &Settings,
        index: usize,
        url: &str,
        request: &Request,
    ) -> Attempt {
        let dn = match settings.mode {
            AuthMode::Bind => format!(
                "{}{}{}",
                settings.bind_dn_prefix,
                escape::dn_value(request.username()),
                settings.bind_dn_suffix
            ),
            AuthMode::SearchBind => {
                match self.find_user(settings, index, url, request.username()) {
                    Ok(dn) => dn,
                    Err(attempt) => return attempt,
                }
            }
        };
        let bind = run(
            &mut self.user,
            index,
            url,
            settings,
            |_, _| Ok(()),
            |conn| conn.simple_bind(&dn, request.password.expose()),
        );
        match bind {
            Ok(()) => Attempt::Final(Outcome::Allowed),
            Err(e) => bind_failure(url, &e),
        }
    }

    /// Search+bind: the DN of the one entry whose search attribute equals the username.
    fn find_user(
        &mut self,
        settings: &Settings,
        index: usize,
        url: &str,
        username: &str,
    ) -> Result<String, Attempt> {
        let filter = format!(
            "(&({})({}={}))",
            settings.search_filter,
            settings.search_attribute,
            escape::filter_value(username)
        );
        let found = run(
            &mut self.search,
            index,
            url,
            settings,
            bind_service,
            |conn| conn.search_dns(&settings.search_base, settings.search_scope, &filter, 2),
        );
        match found {
            Ok(mut dns) if dns.len() == 1 => Ok(dns.swap_remove(0)),
            Ok(dns) if dns.is_empty() => Err(Attempt::Final(Outcome::UnknownUser)),
            Ok(_) => {
                log::warn!("valkeyauth: more than one entry matches username {username:?}; denied as ambiguous");
                Err(Attempt::Final(Outcome::AmbiguousUser))
            }
            Err(e) if e.is_transport() => Err(next_server(url, &e)),
            Err(e) => {
                log::warn!("valkeyauth: user search on {url} failed: {e}");
                Err(Attempt::Final(Outcome::DirectoryError))
            }
        }
    }
}

/// Runs `op` on the slot's connection to server `index`, opening (and preparing) one if needed.
/// A transport error on a reused connection usually means the server or a firewall dropped it
/// while idle: the step is retried once on a fresh connection. A timeout is not retried, since
/// the server may have processed the request.
fn run<T>(
    slot: &mut Slot,
    index: usize,
    url: &str,
    settings: &Settings,
    prepare: fn(&mut Connection, &Settings) -> Result<(), LdapError>,
    mut op: impl FnMut(&mut Connection) -> Result<T, LdapError>,
) -> Result<T, LdapError> {
    let reused = matches!(slot, Some((i, _)) if *i == index);
    if reused {
        if let Some((_, conn)) = slot.as_mut() {
            match op(conn) {
                Err(e) if e.is_transport() && !e.is_timeout() => *slot = None,
                Err(e) if e.is_transport() => {
                    *slot = None;
                    return Err(e);
                }
                result => return result,
            }
        }
    }
    *slot = None;
    let mut conn = Connection::open(url, &settings.timeouts)?;
    prepare(&mut conn, settings)?;
    let result = op(&mut conn);
    match &result {
        Err(e) if e.is_transport() => {}
        _ => *slot = Some((index, conn)),
    }
    result
}

/// Binds a fresh search connection as the service account; with no account, searches run
/// anonymously.
fn bind_service(conn: &mut Connection, settings: &Settings) -> Result<(), LdapError> {
    let (Some(file), false) = (
        &settings.search_bind_passwd_file,
        settings.search_bind_dn.is_empty(),
    ) else {
        return Ok(());
    };
    // Not a transport error: another server would not make the file readable.
    let password =
        read_password_file(file).map_err(|e| LdapError::new(ResultCode::PARAM_ERROR, e))?;
    conn.simple_bind(&settings.search_bind_dn, password.expose())
}

fn bind_failure(url: &str, e: &LdapError) -> Attempt {
    if e.is_transport() {
        return next_server(url, e);
    }
    match e.code {
        // The server refuses this account with this password.
        ResultCode::INVALID_CREDENTIALS
        | ResultCode::INAPPROPRIATE_AUTH
        | ResultCode::INSUFFICIENT_ACCESS
        | ResultCode::UNWILLING_TO_PERFORM => Attempt::Final(Outcome::BadCredentials),
        ResultCode::NO_SUCH_OBJECT | ResultCode::INVALID_DN_SYNTAX => {
            Attempt::Final(Outcome::UnknownUser)
        }
        _ => {
            log::warn!("valkeyauth: user bind on {url} failed: {e}");
            Attempt::Final(Outcome::DirectoryError)
        }
    }
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
        Request::new(Arc::new(Settings::defaults()), user, pass)
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

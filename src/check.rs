//! The dry run behind `VALKEYAUTH.CHECK`, free of Valkey types: each configured server step by
//! step, or one login through the whole flow without logging anyone in. Runs on a worker.

use std::time::{Duration, Instant, SystemTime};

use crate::audit;
use crate::config::Settings;
use crate::engine::{self, Answer, Class, Engine, Outcome, Request};
use crate::ldap::{self, Connection, LdapError, ResultCode, Scope};
use crate::mapping;
use crate::x509;

/// Which ACL rules a login would get, as far as the main thread can tell before the directory
/// answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclPlan {
    /// The ACL user of the same name: its own rules.
    AclUser,
    /// A module user with the rules of the groups.
    Provision,
}

/// The answer for a login that AUTH refuses before asking the directory.
pub fn refused_locally(username: &str, outcome: Outcome, reason: &str) -> Vec<String> {
    vec![
        format!("user: {username}"),
        format!(
            "result: denied ({}) without asking the directory",
            outcome.reason()
        ),
        format!("why: {reason}"),
    ]
}

/// `<url> <step>: ok (<ms> ms): <detail>` or `... FAILED ...`; a failed step ends the server.
fn step_line(url: &str, step: &str, took: Duration, result: &Result<String, String>) -> String {
    let (status, detail) = match result {
        Ok(detail) => ("ok", detail),
        Err(reason) => ("FAILED", reason),
    };
    let ms = took.as_secs_f64() * 1000.0;
    if detail.is_empty() {
        format!("{url} {step}: {status} ({ms:.3} ms)")
    } else {
        format!("{url} {step}: {status} ({ms:.3} ms): {detail}")
    }
}

/// Checks every configured server: connect (and TLS), the certificate, the service bind and
/// the search base. Opens its own connections, so what it measures is a fresh start.
pub fn servers(settings: &Settings) -> Vec<String> {
    if settings.servers.is_empty() {
        return vec!["no servers configured: the module is inactive".to_owned()];
    }
    settings
        .servers
        .iter()
        .flat_map(|url| server(settings, url))
        .collect()
}

fn server(settings: &Settings, url: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut step = |name: &str, run: &mut dyn FnMut() -> Result<String, String>| {
        let started = Instant::now();
        let result = run();
        lines.push(step_line(url, name, started.elapsed(), &result));
        result.is_ok()
    };
    let mut conn: Option<Connection> = None;
    step("connect", &mut || {
        let c = Connection::open(url, &settings.timeouts, &settings.tls).map_err(explain)?;
        conn = Some(c);
        Ok(if url.starts_with("ldap://") && !settings.tls.starttls {
            "deferred: plain ldap:// connects with the first request".to_owned()
        } else {
            String::new()
        })
    });
    let Some(mut conn) = conn else {
        return lines;
    };
    let answered = step("root_dse", &mut || {
        conn.search_dns("", Scope::Base, "(objectClass=*)", 1)
            .map_err(explain)?;
        Ok("the server answers".to_owned())
    });
    if !answered {
        return lines;
    }
    step("tls", &mut || certificate(&conn));
    let bound = step("service_bind", &mut || {
        engine::bind_service(&mut conn, settings).map_err(explain)?;
        Ok(if settings.search_bind_dn.is_empty() {
            "anonymous (search_bind_dn is empty)".to_owned()
        } else {
            format!("bound as {}", settings.search_bind_dn)
        })
    });
    if bound && !settings.search_base.is_empty() {
        step("search_base", &mut || match conn.search_dns(
            &settings.search_base,
            Scope::Base,
            "(objectClass=*)",
            1,
        ) {
            Ok(found) if !found.is_empty() => Ok(format!("{} exists", settings.search_base)),
            Ok(_) => Err(format!("{} is not visible", settings.search_base)),
            Err(e) if e.code == ResultCode::NO_SUCH_OBJECT => {
                Err(format!("{} does not exist", settings.search_base))
            }
            Err(e) => Err(explain(e)),
        });
    }
    lines
}

/// The server certificate's subject and expiry, or why there is none.
fn certificate(conn: &Connection) -> Result<String, String> {
    let Some(der) = conn.peer_certificate() else {
        return Ok("not used: this connection is plaintext".to_owned());
    };
    let summary = x509::summarize(&der).ok_or("the server certificate cannot be read")?;
    let subject =
        ldap::x509_name_to_string(summary.subject).unwrap_or_else(|| "(unreadable)".to_owned());
    // Both are `YYYY-MM-DDTHH:MM:SS`, so text order is time order.
    let now = audit::rfc3339(SystemTime::now());
    let expired = summary.not_after[..19] < now[..19];
    Ok(format!(
        "subject {subject}, expires {}{}",
        summary.not_after,
        if expired { " (EXPIRED)" } else { "" }
    ))
}

fn explain(e: LdapError) -> String {
    e.to_string()
}

/// Runs one login through the directory as an AUTH would, and says what would happen.
pub fn login(engine: &mut Engine, request: &Request, plan: AclPlan) -> Vec<String> {
    let settings = &request.generation.settings;
    let health = &request.generation.health;
    // Before the run: a server that this login marks down was still tried.
    let skipped: Vec<&str> = (0..settings.servers.len())
        .filter(|i| !health.is_up(*i))
        .map(|i| settings.servers[i].as_str())
        .collect();
    let started = Instant::now();
    let answer = engine.authenticate(request);
    let took = started.elapsed();
    let mut lines = vec![format!("user: {}", request.username())];
    if !skipped.is_empty() {
        lines.push(format!(
            "skipped: {} (marked down, as for AUTH; VALKEYAUTH.CHECK without arguments probes them)",
            skipped.join(" ")
        ));
    }
    lines.push(format!(
        "server: {}",
        match answer.server {
            Some(i) => settings.servers[i].as_str(),
            None if answer.outcome.class() == Class::Outage => "none answered",
            None => "none asked",
        }
    ));
    lines.push(format!(
        "dn: {}",
        match (&answer.dn, answer.outcome) {
            (Some(dn), _) => dn.as_str(),
            (None, Outcome::UnknownUser) => "(not found)",
            (None, outcome) if outcome.class() == Class::Outage => "(no answer)",
            (None, _) => "(none)",
        }
    ));
    lines.push(format!(
        "result: {} ({:.3} ms)",
        describe(answer.outcome),
        took.as_secs_f64() * 1000.0
    ));
    lines.push(format!("groups: {}", groups(request, &answer)));
    lines.push(format!("acl: {}", acl(settings, plan, &answer)));
    lines
}

fn describe(outcome: Outcome) -> String {
    match outcome.class() {
        Class::Allowed => "allowed".to_owned(),
        Class::Denied => format!("denied ({})", outcome.reason()),
        Class::Outage => format!("no answer ({})", outcome.reason()),
    }
}

fn groups(request: &Request, answer: &Answer) -> String {
    if !request.wants_groups {
        "not looked up (an ACL user's own rules apply)".to_owned()
    } else if answer.outcome != Outcome::Allowed {
        "not looked up (the bind did not succeed)".to_owned()
    } else if answer.groups.is_empty() {
        "none".to_owned()
    } else {
        answer.groups.join("; ")
    }
}

fn acl(settings: &Settings, plan: AclPlan, answer: &Answer) -> String {
    if answer.outcome.class() == Class::Outage {
        return "none: no answer from the directory".to_owned();
    }
    if answer.outcome != Outcome::Allowed {
        return "none: the directory did not accept the login".to_owned();
    }
    match plan {
        AclPlan::AclUser => "the ACL user of this name, with its own rules".to_owned(),
        AclPlan::Provision => {
            match mapping::rules_for(
                &settings.acl_map,
                &answer.groups,
                &settings.default_acl_rules,
            ) {
                Some(rules) => format!("a provisioned user with the rules: {rules}"),
                None => {
                    "none: no group of acl_map matches and default_acl_rules is empty".to_owned()
                }
            }
        }
    }
}

//! `acl_map`: which Valkey ACL rules a directory group grants.
//!
//! Syntax: mappings separated by `;`, each `<group> => <rules>`, e.g.
//! `cn=admins,ou=groups,dc=example,dc=com => +@all ~* &*; readers => +@read ~cache:*`.
//! A group with a `=` is a DN, compared RDN by RDN without regard to case, spacing or escaping
//! style; a group without one is a name, compared with the value of a group DN's first RDN
//! (its `cn`). `\;` writes a `;` inside rules. The separator is safe for DNs: RFC 4514 escapes
//! `;` and `>` inside values, so neither a raw `;` nor `=>` can occur in one.

/// One `<group> => <rules>` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    group: Group,
    pub rules: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Group {
    Dn(Vec<Rdn>),
    Name(String),
}

/// An RDN with its attribute and value decoded and lowercased.
type Rdn = (String, String);

pub fn parse(text: &str) -> Result<Vec<Mapping>, String> {
    split_unescaped(text, ';')
        .into_iter()
        .map(|entry| entry.trim().to_owned())
        .filter(|entry| !entry.is_empty())
        .map(|entry| parse_entry(&entry))
        .collect()
}

fn parse_entry(entry: &str) -> Result<Mapping, String> {
    let (group, rules) = entry
        .split_once("=>")
        .ok_or_else(|| format!("'{entry}' is not '<group> => <rules>'"))?;
    let (group, rules) = (group.trim(), rules.trim().replace("\\;", ";"));
    if group.is_empty() || rules.is_empty() {
        return Err(format!("'{entry}' needs both a group and rules"));
    }
    let group = if group.contains('=') {
        Group::Dn(parse_dn(group).ok_or_else(|| format!("'{group}' is not a DN"))?)
    } else {
        Group::Name(group.to_lowercase())
    };
    Ok(Mapping { group, rules })
}

impl Mapping {
    fn matches(&self, group_dn: &[Rdn]) -> bool {
        match &self.group {
            Group::Dn(dn) => dn.as_slice() == group_dn,
            Group::Name(name) => group_dn.first().is_some_and(|(_, value)| value == name),
        }
    }
}

/// The rules a user gets from the groups it is in, in `acl_map` order, and the default rules;
/// `None` when no mapping matches and there are no default rules. Each group's rules become
/// one selector, so a user in two groups may do what either group allows and no more: one
/// group's commands never reach another group's keys.
pub fn rules_for(map: &[Mapping], group_dns: &[String], default_rules: &str) -> Option<String> {
    let groups: Vec<Vec<Rdn>> = group_dns.iter().filter_map(|dn| parse_dn(dn)).collect();
    let selectors: Vec<String> = map
        .iter()
        .filter(|m| groups.iter().any(|g| m.matches(g)))
        .map(|m| m.rules.as_str())
        .chain(Some(default_rules.trim()).filter(|r| !r.is_empty()))
        .map(selector)
        .collect();
    (!selectors.is_empty()).then(|| selectors.join(" "))
}

/// One group's rules as a Valkey ACL selector.
pub fn selector(rules: &str) -> String {
    format!("({rules})")
}

/// Splits an RFC 4514 DN into decoded, lowercased RDNs; `None` if it is not one.
/// Multi-valued RDNs (`+`) are kept as one value, which is enough to compare group names.
pub fn parse_dn(dn: &str) -> Option<Vec<Rdn>> {
    split_unescaped(dn, ',')
        .into_iter()
        .map(|rdn| {
            let (attr, value) = rdn.split_once('=')?;
            let attr = attr.trim().to_lowercase();
            let value = unescape(value.trim())?.to_lowercase();
            (!attr.is_empty()).then_some((attr, value))
        })
        .collect()
}

/// Splits at `sep` where it is not escaped by a backslash; the pieces keep their escapes.
fn split_unescaped(text: &str, sep: char) -> Vec<&str> {
    let mut pieces = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            c if c == sep => {
                pieces.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    pieces.push(&text[start..]);
    pieces
}

/// Decodes RFC 4514 escapes: `\` followed by a special character or by two hex digits.
fn unescape(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(*bytes.get(i + 1)?);
                i += 2;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMINS: &str = "cn=admins,ou=groups,dc=example,dc=com";

    #[test]
    fn parses_dns_with_commas_and_spaces_and_names() {
        let map = parse(
            "CN=Ops Team\\, Berlin,OU=Groups,DC=example,DC=com => +@all ~* &*; readers => +@read ~cache:*",
        )
        .unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map[1].rules, "+@read ~cache:*");
        let ops = "cn=ops team\\2C berlin, ou=groups, dc=example, dc=com".to_owned();
        assert_eq!(rules_for(&map, &[ops], "").unwrap(), "(+@all ~* &*)");
    }

    #[test]
    fn each_group_is_one_selector_in_map_order_then_default() {
        let map = parse(&format!("{ADMINS} => +@all; readers => +@read")).unwrap();
        let groups = [
            "cn=readers,ou=groups,dc=example,dc=com".to_owned(),
            ADMINS.to_owned(),
        ];
        assert_eq!(
            rules_for(&map, &groups, "+get ~app:*").unwrap(),
            "(+@all) (+@read) (+get ~app:*)"
        );
        assert_eq!(
            rules_for(&map, &[], "+get ~app:*").unwrap(),
            "(+get ~app:*)"
        );
        assert_eq!(rules_for(&map, &[], ""), None);
        let other = ["cn=others,ou=groups,dc=example,dc=com".to_owned()];
        assert_eq!(rules_for(&map, &other, ""), None);
    }

    #[test]
    fn a_dn_matches_only_the_whole_dn() {
        let map = parse(&format!("{ADMINS} => +@all")).unwrap();
        let lookalike = ["cn=admins,ou=other,dc=example,dc=com".to_owned()];
        assert_eq!(rules_for(&map, &lookalike, ""), None);
    }

    #[test]
    fn escaped_semicolons_stay_in_rules() {
        let map = parse("readers => ~a\\;b +get").unwrap();
        assert_eq!(map[0].rules, "~a;b +get");
    }

    #[test]
    fn refuses_what_is_not_a_mapping() {
        for bad in ["readers", "=> +@all", "readers =>", "cn=,x => +@all"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("").unwrap().is_empty());
        assert!(parse(" ; ").unwrap().is_empty());
    }
}

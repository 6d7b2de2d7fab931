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

/// The rules a user gets from the groups it is in, in `acl_map` order, followed by the default
/// rules; `None` when no mapping matches and there are no default rules.
pub fn rules_for(map: &[Mapping], group_dns: &[String], default_rules: &str) -> Option<String> {
    let groups: Vec<Vec<Rdn>> = group_dns.iter().filter_map(|dn| parse_dn(dn)).collect();
    let mut rules: Vec<&str> = map
        .iter()
        .filter(|m| groups.iter().any(|g| m.matches(g)))
        .map(|m| m.rules.as_str())
        .collect();
    if rules.is_empty() && default_rules.trim().is_empty() {
        return None;
    }
    rules.push(default_rules.trim());
    Some(union(&rules))
}

/// Joins rule strings into one that Valkey accepts. Valkey refuses a key pattern after `~*`
/// (and a channel pattern after `&*`), although each group's rules are valid alone: a pattern
/// that everything-access already covers is dropped.
fn union(rules: &[&str]) -> String {
    let tokens: Vec<&str> = rules.iter().flat_map(|r| tokens(r)).collect();
    let all_keys = tokens.iter().any(|t| matches!(*t, "~*" | "allkeys"));
    let all_channels = tokens.iter().any(|t| matches!(*t, "&*" | "allchannels"));
    let covered = |t: &&str| {
        let key_pattern = t.starts_with('~') || (t.starts_with('%') && t.contains('~'));
        (all_keys && key_pattern && *t != "~*")
            || (all_channels && t.starts_with('&') && *t != "&*")
    };
    tokens
        .into_iter()
        .filter(|t| !covered(t))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Splits rules at spaces, keeping a parenthesised selector such as `(~x +get)` whole.
fn tokens(rules: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut depth) = (None, 0usize);
    for (i, c) in rules.char_indices() {
        match c {
            '(' => {
                depth += 1;
                start.get_or_insert(i);
            }
            ')' => depth = depth.saturating_sub(1),
            c if c.is_whitespace() && depth == 0 => {
                if let Some(s) = start.take() {
                    out.push(&rules[s..i]);
                }
            }
            _ => {
                start.get_or_insert(i);
            }
        }
    }
    if let Some(s) = start {
        out.push(&rules[s..]);
    }
    out
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
        assert_eq!(rules_for(&map, &[ops], "").unwrap(), "+@all ~* &*");
    }

    #[test]
    fn rules_are_the_union_in_map_order_plus_default() {
        let map = parse(&format!("{ADMINS} => +@all; readers => +@read")).unwrap();
        let groups = [
            "cn=readers,ou=groups,dc=example,dc=com".to_owned(),
            ADMINS.to_owned(),
        ];
        assert_eq!(
            rules_for(&map, &groups, "~app:*").unwrap(),
            "+@all +@read ~app:*"
        );
        assert_eq!(rules_for(&map, &[], "~app:*").unwrap(), "~app:*");
        assert_eq!(rules_for(&map, &[], ""), None);
        let other = ["cn=others,ou=groups,dc=example,dc=com".to_owned()];
        assert_eq!(rules_for(&map, &other, ""), None);
    }

    #[test]
    fn all_keys_and_channels_cover_narrower_patterns() {
        let map = parse("writers => +@all ~* &*; cachers => +set ~cache:* %R~x &news").unwrap();
        let groups = ["cn=writers,o=x".to_owned(), "cn=cachers,o=x".to_owned()];
        assert_eq!(
            rules_for(&map, &groups, "~public:*").unwrap(),
            "+@all ~* &* +set"
        );
        let narrow = ["cn=cachers,o=x".to_owned()];
        assert_eq!(
            rules_for(&map, &narrow, "").unwrap(),
            "+set ~cache:* %R~x &news"
        );
    }

    #[test]
    fn selectors_stay_whole() {
        assert_eq!(
            tokens("+get (~a +set  ~b) ~*"),
            ["+get", "(~a +set  ~b)", "~*"]
        );
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

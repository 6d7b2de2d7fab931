//! Escaping of untrusted text (user names) before it goes into an LDAP DN or
//! search filter. Pure functions, no libldap.
//!
//! Both escapers keep ordinary UTF-8 as it is and hex-escape ASCII control
//! characters as well, so an escaped value never carries a raw CR, LF or NUL
//! into a DN, a filter, or a log line.

use std::fmt::Write as _;

/// RFC 4514 attribute-value escaping for a DN: escape `, + " \ < > ;` and `=`
/// (harmless, escaped too) with a backslash, NUL and other ASCII control
/// characters as `\XX` hex pairs, a leading `#` or space, and a trailing space;
/// keep other UTF-8 as is.
///
/// The result is one attribute value: put it after `attr=` in an RDN, e.g.
/// `format!("uid={},ou=people,dc=example,dc=com", dn_value(user))`.
pub fn dn_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let last = s.chars().count().saturating_sub(1);
    for (i, c) in s.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_ascii_control() => push_hex(&mut out, c as u8, HexCase::Upper),
            c => out.push(c),
        }
    }
    out
}

/// RFC 4515 filter value escaping: `*` `(` `)` `\` NUL as `\2a` `\28` `\29`
/// `\5c` `\00`; other ASCII control characters are hex-escaped too; other
/// UTF-8 is kept as is (RFC 4515 allows it unescaped).
///
/// The result is an assertion value: put it after `attr=` inside parentheses,
/// e.g. `format!("(&(objectClass=person)(uid={}))", filter_value(user))`.
pub fn filter_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '*' | '(' | ')' | '\\' => push_hex(&mut out, c as u8, HexCase::Lower),
            c if c.is_ascii_control() => push_hex(&mut out, c as u8, HexCase::Lower),
            c => out.push(c),
        }
    }
    out
}

/// Characters refused in a username that goes into a bind name that is not a DN (a UPN
/// `user@realm` or a down-level `DOMAIN\user`): `@` and `\\` would move the realm or domain
/// boundary, and the rest are what Active Directory forbids in `sAMAccountName` (`/` included).
const NOT_IN_ACCOUNT_NAMES: &[char] = &[
    '@', '\\', '/', '"', '[', ']', ':', ';', '|', '=', ',', '+', '*', '?', '<', '>',
];

/// The bind name for bind mode: `prefix` + username + `suffix`, the literal parts as given.
///
/// When the prefix or suffix holds an `=`, they make a DN (`cn=` … `,ou=people,…`) and the
/// username is one RFC 4514 attribute value ([`dn_value`]). Otherwise the name is not a DN
/// (`@corp.example.com`, `CORP\\`), DN escaping would change it (AD reads `\\` in
/// `CORP\\x\\bob` literally), and nothing there can be escaped. So the username is used as
/// it is, and refused (None) when it holds a character of [`NOT_IN_ACCOUNT_NAMES`], a control
/// character, a non-ASCII character that is not a letter or digit (full-width `＠` and `＼`,
/// `∕`, zero-width and bidirectional marks: a directory that folds them could read another
/// realm or domain into the name), one of the [`INVISIBLE_LETTERS`], or leading or trailing
/// white space (which a directory may trim, binding an account whose name differs from the one
/// logged in). Then the account part of the bind name is exactly the username.
pub fn bind_name(prefix: &str, username: &str, suffix: &str) -> Option<String> {
    if is_dn_form(prefix, suffix) {
        return Some(format!("{prefix}{}{suffix}", dn_value(username)));
    }
    (!refused_account_name(username)).then(|| format!("{prefix}{username}{suffix}"))
}

/// True when [`bind_name`] would refuse `username`; cheap enough for Valkey's main thread,
/// which refuses such names without asking a worker.
pub fn bind_name_refused(prefix: &str, username: &str, suffix: &str) -> bool {
    !is_dn_form(prefix, suffix) && refused_account_name(username)
}

fn is_dn_form(prefix: &str, suffix: &str) -> bool {
    prefix.contains('=') || suffix.contains('=')
}

/// Letters that show nothing (the Hangul fillers): a name made of them would look empty or
/// like another one in every log and audit line.
const INVISIBLE_LETTERS: &[char] = &['\u{115f}', '\u{1160}', '\u{3164}', '\u{ffa0}'];

fn refused_account_name(username: &str) -> bool {
    username.is_empty()
        || username.starts_with(char::is_whitespace)
        || username.ends_with(char::is_whitespace)
        || username.chars().any(|c| {
            c.is_control()
                || NOT_IN_ACCOUNT_NAMES.contains(&c)
                || INVISIBLE_LETTERS.contains(&c)
                || (!c.is_ascii() && !c.is_alphanumeric())
        })
}

enum HexCase {
    Upper,
    Lower,
}

fn push_hex(out: &mut String, byte: u8, case: HexCase) {
    // Writing to a String cannot fail.
    let _ = match case {
        HexCase::Upper => write!(out, "\\{byte:02X}"),
        HexCase::Lower => write!(out, "\\{byte:02x}"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ---- test-only RFC 4514 value parser --------------------------------

    /// One unit of an RFC 4514 attribute value string.
    #[derive(Debug, PartialEq)]
    enum DnToken {
        /// `\` followed by a special character or a space.
        Escaped(char),
        /// `\XX`.
        Hex(u8),
        /// Any other character, taken literally.
        Plain(char),
    }

    const DN_SPECIALS: &str = " \"#+,;<=>\\";

    fn dn_tokens(s: &str) -> Result<Vec<DnToken>, String> {
        let mut tokens = Vec::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '\\' {
                tokens.push(DnToken::Plain(c));
                continue;
            }
            match chars.next() {
                None => return Err("dangling backslash".into()),
                Some(e) if DN_SPECIALS.contains(e) => tokens.push(DnToken::Escaped(e)),
                Some(h) if h.is_ascii_hexdigit() => {
                    let l = chars.next().ok_or("half a hex pair")?;
                    if !l.is_ascii_hexdigit() {
                        return Err(format!("bad hex pair \\{h}{l}"));
                    }
                    let byte = u8::from_str_radix(&format!("{h}{l}"), 16).unwrap();
                    tokens.push(DnToken::Hex(byte));
                }
                Some(other) => return Err(format!("bad escape \\{other}")),
            }
        }
        Ok(tokens)
    }

    /// RFC 4514 section 3 `string` production (not the `#hexstring` form):
    /// unescaped `" + , ; < > \` and NUL are not allowed anywhere, nor an
    /// unescaped leading `#` or space, nor an unescaped trailing space.
    fn parse_dn_value(s: &str) -> Result<String, String> {
        let tokens = dn_tokens(s)?;
        let mut bytes = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            match *t {
                DnToken::Plain(c) => {
                    if "\"+,;<>\\\0".contains(c) {
                        return Err(format!("unescaped {c:?}"));
                    }
                    if i == 0 && (c == '#' || c == ' ') {
                        return Err(format!("unescaped leading {c:?}"));
                    }
                    if i + 1 == tokens.len() && c == ' ' {
                        return Err("unescaped trailing space".into());
                    }
                    let mut buf = [0; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                DnToken::Escaped(c) => bytes.push(c as u8),
                DnToken::Hex(b) => bytes.push(b),
            }
        }
        String::from_utf8(bytes).map_err(|e| e.to_string())
    }

    /// The characters of `escaped` that are not part of an escape sequence.
    fn dn_unescaped_chars(escaped: &str) -> Vec<(usize, char)> {
        dn_tokens(escaped)
            .expect("escaper output must tokenize")
            .into_iter()
            .enumerate()
            .filter_map(|(i, t)| match t {
                DnToken::Plain(c) => Some((i, c)),
                _ => None,
            })
            .collect()
    }

    // ---- test-only RFC 4515 value unescaper -----------------------------

    /// RFC 4515 `valueencoding`: `\XX` for escapes; unescaped `* ( ) \` and
    /// NUL are not allowed.
    fn unescape_filter_value(s: &str) -> Result<String, String> {
        let mut bytes = Vec::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    let h = chars.next().ok_or("dangling backslash")?;
                    let l = chars.next().ok_or("half a hex pair")?;
                    if !h.is_ascii_hexdigit() || !l.is_ascii_hexdigit() {
                        return Err(format!("bad escape \\{h}{l}"));
                    }
                    bytes.push(u8::from_str_radix(&format!("{h}{l}"), 16).unwrap());
                }
                '*' | '(' | ')' | '\0' => return Err(format!("unescaped {c:?}")),
                c => {
                    let mut buf = [0; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        String::from_utf8(bytes).map_err(|e| e.to_string())
    }

    /// The characters of `escaped` outside `\XX` escape sequences.
    fn filter_unescaped_chars(escaped: &str) -> Vec<char> {
        let mut out = Vec::new();
        let mut chars = escaped.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                chars.next();
                chars.next();
            } else {
                out.push(c);
            }
        }
        out
    }

    // ---- examples -------------------------------------------------------

    #[test]
    fn dn_examples() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("alice", "alice"),
            ("*", "*"),
            (")(", ")("),
            ("a,b", "a\\,b"),
            ("a+b", "a\\+b"),
            ("back\\slash", "back\\\\slash"),
            ("#hash", "\\#hash"),
            ("mid#hash", "mid#hash"),
            (" lead", "\\ lead"),
            ("trail ", "trail\\ "),
            (" ", "\\ "),
            ("  ", "\\ \\ "),
            ("   ", "\\  \\ "),
            ("in side", "in side"),
            ("a=b", "a\\=b"),
            ("say \"hi\"", "say \\\"hi\\\""),
            ("<>;", "\\<\\>\\;"),
            ("nul\0byte", "nul\\00byte"),
            ("cr\r\nlf", "cr\\0D\\0Alf"),
            ("del\u{7f}", "del\\7F"),
            ("Jürgen Çelik 東京", "Jürgen Çelik 東京"),
            ("x,cn=admin", "x\\,cn\\=admin"),
            ("# ", "\\#\\ "),
        ];
        for (input, want) in cases {
            assert_eq!(dn_value(input), *want, "dn_value({input:?})");
            assert_eq!(
                parse_dn_value(want).as_deref(),
                Ok(*input),
                "parse {want:?}"
            );
        }
    }

    #[test]
    fn filter_examples() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("alice", "alice"),
            ("*", "\\2a"),
            (")(", "\\29\\28"),
            (
                "*)(uid=*))(|(uid=*",
                "\\2a\\29\\28uid=\\2a\\29\\29\\28|\\28uid=\\2a",
            ),
            ("a,b+c", "a,b+c"),
            ("back\\slash", "back\\5cslash"),
            ("#lead", "#lead"),
            (" sp ", " sp "),
            ("a=b", "a=b"),
            ("\"<>;", "\"<>;"),
            ("nul\0byte", "nul\\00byte"),
            ("cr\r\nlf", "cr\\0d\\0alf"),
            ("Jürgen 東京", "Jürgen 東京"),
        ];
        for (input, want) in cases {
            assert_eq!(filter_value(input), *want, "filter_value({input:?})");
            assert_eq!(
                unescape_filter_value(want).as_deref(),
                Ok(*input),
                "unescape {want:?}"
            );
        }
    }

    #[test]
    fn very_long_values() {
        let s = ",*( ".repeat(25_000);
        let dn = dn_value(&s);
        assert_eq!(parse_dn_value(&dn).as_deref(), Ok(s.as_str()));
        let f = filter_value(&s);
        assert_eq!(unescape_filter_value(&f).as_deref(), Ok(s.as_str()));
        let u = "é".repeat(100_000);
        assert_eq!(dn_value(&u), u);
        assert_eq!(filter_value(&u), u);
    }

    #[test]
    fn test_parsers_reject_bad_input() {
        for bad in ["a,b", "a+b", "#x", " x", "x ", "a\\", "a\\q", "a\\4", "a\0"] {
            assert!(parse_dn_value(bad).is_err(), "{bad:?}");
        }
        for bad in ["*", "(", ")", "a\\", "a\\2", "a\\zz", "\0"] {
            assert!(unescape_filter_value(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bind_name_examples() {
        let upn = |u: &str| bind_name("", u, "@corp.example.test");
        let down_level = |u: &str| bind_name("CORP\\", u, "");
        assert_eq!(upn("alice").as_deref(), Some("alice@corp.example.test"));
        assert_eq!(down_level("alice").as_deref(), Some("CORP\\alice"));
        assert_eq!(
            upn("Jürgen.Çelik-1_x").as_deref(),
            Some("Jürgen.Çelik-1_x@corp.example.test")
        );
        assert_eq!(
            upn("o'neil #1").as_deref(),
            Some("o'neil #1@corp.example.test")
        );
        for bad in [
            "alice\u{ff20}other.realm",
            "OTHER\u{ff3c}alice",
            "alice\u{2215}x",
            "alice\u{200b}",
            "\u{feff}alice",
            "alice\u{202e}",
            "\u{3164}",
            "alice\u{115f}",
            "al\u{1160}ice",
            "\u{ffa0}bob",
            "bob@corp.example.test",
            "bob@evil.test",
            "x\\bob",
            "EVIL\\bob",
            "a,b",
            "cn=admin",
            "a/b",
            "a\0b",
            "a\nb",
            " bob",
            "bob ",
            "",
            "a*",
            "a:b",
            "a;b",
            "a|b",
            "a\"b",
            "[a]",
            "a+b",
            "a?<>",
        ] {
            assert_eq!(upn(bad), None, "{bad:?}");
            assert_eq!(down_level(bad), None, "{bad:?}");
        }
        // A DN template escapes instead.
        assert_eq!(
            bind_name("cn=", "x,cn=admin", ",ou=people,dc=example,dc=test").as_deref(),
            Some("cn=x\\,cn\\=admin,ou=people,dc=example,dc=test")
        );
        assert_eq!(bind_name("", "a@b", ",dc=x").as_deref(), Some("a@b,dc=x"));
        assert_eq!(bind_name("", "alice", "").as_deref(), Some("alice"));
        assert_eq!(bind_name("", "a@b", ""), None);
    }

    // ---- properties -----------------------------------------------------

    /// Strings rich in the characters that matter, plus arbitrary Unicode.
    fn tricky() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ #,+\"\\\\<>;=*()@/\u{0}\r\na-zé東\u{7f}]{0,24}",
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn dn_round_trip(s in tricky()) {
            prop_assert_eq!(parse_dn_value(&dn_value(&s)), Ok(s));
        }

        #[test]
        fn dn_has_no_unescaped_specials(s in tricky()) {
            let escaped = dn_value(&s);
            let plain = dn_unescaped_chars(&escaped);
            let count = dn_tokens(&escaped).unwrap().len();
            for (i, c) in plain {
                prop_assert!(!",+;<>\"\\\0".contains(c), "unescaped {:?} in {:?}", c, escaped);
                prop_assert!(!c.is_ascii_control(), "raw control {:?} in {:?}", c, escaped);
                if i == 0 {
                    prop_assert!(c != '#' && c != ' ', "unescaped leading {:?} in {:?}", c, escaped);
                }
                if i + 1 == count {
                    prop_assert!(c != ' ', "unescaped trailing space in {:?}", escaped);
                }
            }
        }

        /// Whatever the username, a UPN bind name names the configured realm and an account
        /// part equal to the username, and a down-level one the configured domain.
        #[test]
        fn bind_names_cannot_change_realm_or_domain(s in tricky()) {
            if let Some(name) = bind_name("", &s, "@corp.example.test") {
                prop_assert_eq!(name.split_once('@'), Some((s.as_str(), "corp.example.test")));
            }
            if let Some(name) = bind_name("CORP\\", &s, "") {
                prop_assert_eq!(name.rsplit_once('\\'), Some(("CORP", s.as_str())));
            }
        }

        #[test]
        fn filter_round_trip(s in tricky()) {
            prop_assert_eq!(unescape_filter_value(&filter_value(&s)), Ok(s));
        }

        #[test]
        fn filter_has_no_unescaped_specials(s in tricky()) {
            let escaped = filter_value(&s);
            for c in filter_unescaped_chars(&escaped) {
                prop_assert!(!"*()\\\0".contains(c), "unescaped {:?} in {:?}", c, escaped);
                prop_assert!(!c.is_ascii_control(), "raw control {:?} in {:?}", c, escaped);
            }
        }
    }
}

//! Just enough DER to read a server certificate's subject and expiry for `VALKEYAUTH.CHECK`.
//! Nothing here decides trust: libldap has already verified the chain.

/// The parts of a certificate an operator needs at a glance.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary<'a> {
    /// The subject Name, DER (turned into text by `ldap::x509_name_to_string`).
    pub subject: &'a [u8],
    /// notAfter as `YYYY-MM-DDTHH:MM:SSZ`.
    pub not_after: String,
}

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const VERSION: u8 = 0xa0;

/// One DER element: its tag, its content, the whole element and what follows it.
struct Element<'a> {
    tag: u8,
    content: &'a [u8],
    whole: &'a [u8],
    rest: &'a [u8],
}

fn element(input: &[u8]) -> Option<Element<'_>> {
    let (&tag, after_tag) = input.split_first()?;
    let (&first, after_len) = after_tag.split_first()?;
    let (len, body) = if first < 0x80 {
        (usize::from(first), after_len)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || after_len.len() < count {
            return None;
        }
        let len = after_len[..count]
            .iter()
            .fold(0usize, |n, b| (n << 8) | usize::from(*b));
        (len, &after_len[count..])
    };
    if body.len() < len {
        return None;
    }
    let header = input.len() - body.len();
    Some(Element {
        tag,
        content: &body[..len],
        whole: &input[..header + len],
        rest: &body[len..],
    })
}

/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serial,
/// signature, issuer, validity SEQUENCE { notBefore, notAfter }, subject, ... }, ... }
pub fn summarize(der: &[u8]) -> Option<Summary<'_>> {
    let certificate = element(der).filter(|e| e.tag == SEQUENCE)?;
    let tbs = element(certificate.content).filter(|e| e.tag == SEQUENCE)?;
    let mut fields = tbs.content;
    let mut next = || {
        let e = element(fields)?;
        fields = e.rest;
        Some(e)
    };
    // The serial number, after the version when there is one.
    if next()?.tag == VERSION {
        next()?;
    }
    let _signature = next()?;
    let _issuer = next()?;
    let validity = next().filter(|e| e.tag == SEQUENCE)?;
    let subject = next().filter(|e| e.tag == SEQUENCE)?;
    let not_before = element(validity.content)?;
    let not_after = element(not_before.rest)?;
    Some(Summary {
        subject: subject.whole,
        not_after: time_text(not_after.tag, not_after.content)?,
    })
}

/// UTCTime `YYMMDDHHMMSSZ` (years 1950–2049, RFC 5280) or GeneralizedTime `YYYYMMDDHHMMSSZ`.
fn time_text(tag: u8, content: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(content).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy: u32 = digits[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    Some(format!(
        "{year:04}-{}-{}T{}:{}:{}Z",
        &rest[..2],
        &rest[2..4],
        &rest[4..6],
        &rest[6..8],
        &rest[8..10]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if content.len() < 0x80 {
            out.push(content.len() as u8);
        } else {
            out.extend([0x82, (content.len() >> 8) as u8, content.len() as u8]);
        }
        out.extend_from_slice(content);
        out
    }

    fn certificate(version: bool, not_after: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let subject = tlv(
            SEQUENCE,
            &tlv(0x31, &tlv(SEQUENCE, b"\x06\x03\x55\x04\x03\x0c\x01x")),
        );
        let validity = [tlv(UTC_TIME, b"250101000000Z"), not_after.to_vec()].concat();
        let mut tbs = Vec::new();
        if version {
            tbs.extend(tlv(VERSION, &tlv(0x02, &[2])));
        }
        tbs.extend(tlv(0x02, &[1; 200])); // a long serial: a two-byte length
        tbs.extend(tlv(SEQUENCE, b""));
        tbs.extend(tlv(SEQUENCE, b""));
        tbs.extend(tlv(SEQUENCE, &validity));
        tbs.extend(&subject);
        tbs.extend(tlv(SEQUENCE, b""));
        (
            tlv(
                SEQUENCE,
                &[tlv(SEQUENCE, &tbs), tlv(SEQUENCE, b"")].concat(),
            ),
            subject,
        )
    }

    #[test]
    fn reads_subject_and_expiry() {
        let (der, subject) = certificate(true, &tlv(UTC_TIME, b"271203190000Z"));
        let summary = summarize(&der).unwrap();
        assert_eq!(summary.subject, &subject[..]);
        assert_eq!(summary.not_after, "2027-12-03T19:00:00Z");
        let (der, _) = certificate(false, &tlv(GENERALIZED_TIME, b"20991231235959Z"));
        assert_eq!(summarize(&der).unwrap().not_after, "2099-12-31T23:59:59Z");
        let (der, _) = certificate(true, &tlv(UTC_TIME, b"990101000000Z"));
        assert_eq!(summarize(&der).unwrap().not_after, "1999-01-01T00:00:00Z");
    }

    #[test]
    fn refuses_what_is_not_a_certificate() {
        let (der, _) = certificate(true, &tlv(UTC_TIME, b"2712031900Z"));
        assert!(summarize(&der).is_none());
        let (der, _) = certificate(true, &tlv(UTC_TIME, b"271203190000Z"));
        for cut in 0..der.len() {
            assert!(summarize(&der[..cut]).is_none(), "{cut}");
        }
        assert!(summarize(b"").is_none());
        assert!(summarize(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
    }
}

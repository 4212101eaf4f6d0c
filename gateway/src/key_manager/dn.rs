//! Distinguished names for `tls_client_auth` (RFC 8705 2.1.2): the DN a
//! client registered (an RFC 4514 string) against the subject of its
//! verified certificate. The comparison does not depend on RDN order,
//! spacing or letter case (attribute values compare as RFC 4517
//! caseIgnoreMatch: insignificant spaces removed, case folded). No crate
//! parses RFC 4514 strings, so the small grammar is parsed here; the
//! certificate side is read with x509-parser.

use std::collections::BTreeMap;

/// Short names (RFC 4514 3, and the ones TPP certificates use) -> OID.
const NAMES: [(&str, &str); 14] = [
    ("cn", "2.5.4.3"),
    ("c", "2.5.4.6"),
    ("l", "2.5.4.7"),
    ("st", "2.5.4.8"),
    ("street", "2.5.4.9"),
    ("o", "2.5.4.10"),
    ("ou", "2.5.4.11"),
    ("dc", "0.9.2342.19200300.100.1.25"),
    ("uid", "0.9.2342.19200300.100.1.1"),
    ("serialnumber", "2.5.4.5"),
    ("organizationidentifier", "2.5.4.97"),
    ("emailaddress", "1.2.840.113549.1.9.1"),
    ("title", "2.5.4.12"),
    ("postalcode", "2.5.4.17"),
];

/// A DN as a multiset of (attribute OID, normalised value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dn(BTreeMap<(String, String), usize>);

fn oid_of(attr: &str) -> Result<String, String> {
    let a = attr.trim();
    let lower = a.to_ascii_lowercase();
    let dotted = lower.strip_prefix("oid.").unwrap_or(&lower);
    if !dotted.is_empty() && dotted.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
        return Ok(dotted.to_string());
    }
    NAMES
        .iter()
        .find(|(n, _)| *n == lower)
        .map(|(_, o)| o.to_string())
        .ok_or_else(|| format!("unknown attribute type {a:?}"))
}

/// caseIgnoreMatch: trimmed, inner runs of spaces as one, case folded.
fn normalise(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

impl Dn {
    /// Parses an RFC 4514 string (`CN=tpp, O=Bank\, Inc., C=GB`; `+` joins
    /// multi-valued RDNs; `\XX` hex and `\<char>` escapes).
    pub fn parse(s: &str) -> Result<Dn, String> {
        if s.trim().is_empty() {
            return Err("empty distinguished name".into());
        }
        if s.len() > 1024 {
            return Err("distinguished name longer than 1024 characters".into());
        }
        let mut set = BTreeMap::new();
        let mut chars = s.chars().peekable();
        loop {
            // attributeType
            let mut attr = String::new();
            let mut equals = false;
            for c in chars.by_ref() {
                if c == '=' {
                    equals = true;
                    break;
                }
                attr.push(c);
            }
            if !equals {
                return Err(format!("{s:?}: {:?} has no '='", attr.trim()));
            }
            if attr.trim().is_empty() {
                return Err(format!("{s:?}: an attribute without a type"));
            }
            let oid = oid_of(&attr)?;
            // attributeValue, up to an unescaped , ; + or the end.
            let mut value: Vec<u8> = Vec::new();
            let mut end = None;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        let Some(n) = chars.next() else { return Err(format!("{s:?}: a trailing backslash")) };
                        if n.is_ascii_hexdigit() {
                            let Some(m) = chars.next().filter(char::is_ascii_hexdigit) else {
                                return Err(format!("{s:?}: a bad \\XX escape"));
                            };
                            let byte = u8::from_str_radix(&format!("{n}{m}"), 16).map_err(|e| e.to_string())?;
                            value.push(byte);
                        } else {
                            let mut buf = [0u8; 4];
                            value.extend_from_slice(n.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                    ',' | ';' | '+' => {
                        end = Some(c);
                        break;
                    }
                    c => {
                        let mut buf = [0u8; 4];
                        value.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
            let value = String::from_utf8(value).map_err(|_| format!("{s:?}: a value that is not UTF-8"))?;
            if value.trim_start().starts_with('#') {
                return Err(format!("{s:?}: hex-encoded (#...) values are not supported"));
            }
            *set.entry((oid, normalise(&value))).or_insert(0) += 1;
            if end.is_none() {
                break;
            }
        }
        Ok(Dn(set))
    }

    /// The subject DN of a DER certificate.
    pub fn of_certificate(der: &[u8]) -> Result<Dn, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("certificate: {e}"))?;
        let mut set = BTreeMap::new();
        for rdn in cert.subject().iter_rdn() {
            for atv in rdn.iter() {
                let value = atv.as_str().map_err(|_| "a subject attribute that is not a string".to_string())?;
                *set.entry((atv.attr_type().to_id_string(), normalise(value))).or_insert(0) += 1;
            }
        }
        Ok(Dn(set))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_spacing_and_case_do_not_matter() {
        let a = Dn::parse("CN=tpp-1, O=Test TPP Ltd, C=GB").unwrap();
        assert_eq!(a, Dn::parse("c=gb,o=test   tpp ltd ,  cn=TPP-1").unwrap());
        assert_eq!(a, Dn::parse("2.5.4.6=GB;OID.2.5.4.10=Test TPP Ltd+CN=tpp-1").unwrap());
        assert_ne!(a, Dn::parse("CN=tpp-2, O=Test TPP Ltd, C=GB").unwrap());
        assert_ne!(a, Dn::parse("CN=tpp-1, O=Test TPP Ltd").unwrap(), "an attribute less");
        assert_ne!(a, Dn::parse("CN=tpp-1, O=Test TPP Ltd, C=GB, OU=x").unwrap(), "an attribute more");
    }

    #[test]
    fn escapes_are_decoded() {
        assert_eq!(Dn::parse(r"O=Bank\, Inc.,CN=a\2Bb").unwrap(), Dn::parse(r"CN=a\+b, O=Bank\2C Inc.").unwrap());
        assert_ne!(Dn::parse(r"O=Bank\, Inc.").unwrap(), Dn::parse("O=Bank, CN=Inc.").unwrap_or(Dn(BTreeMap::new())));
    }

    #[test]
    fn malformed_names_are_errors() {
        for bad in ["", "CN", "=x", "XX=1", "CN=a\\", "CN=a\\2", "CN=#0403"] {
            assert!(Dn::parse(bad).is_err(), "{bad:?}");
        }
    }
}

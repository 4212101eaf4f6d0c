//! PSD2 roles and the TPP's identity from an eIDAS certificate (QWAC):
//! the QCStatements extension (RFC 3739, OID 1.3.6.1.5.5.7.1.3) holding the
//! ETSI TS 119 495 PSD2 statement (0.4.0.19495.2) with the roles of the
//! payment service provider, and the subject's organizationIdentifier
//! (2.5.4.97, `PSDGB-FCA-123456` style). The certificate is parsed with
//! x509-parser and the statement decoded with der-parser.
//!
//! ```text
//! QCStatements ::= SEQUENCE OF QCStatement
//! QCStatement  ::= SEQUENCE { statementId OID, statementInfo ANY OPTIONAL }
//! PSD2QcType   ::= SEQUENCE { rolesOfPSP RolesOfPSP, nCAName UTF8String, nCAId UTF8String }
//! RolesOfPSP   ::= SEQUENCE OF SEQUENCE { roleOfPspOid OID, roleOfPspName UTF8String }
//! ```

use tollgate_crds::api_deployment::TppRole;
use x509_parser::der_parser::ber::{BerObject, BerObjectContent};
use x509_parser::der_parser::oid::Oid;

const QC_STATEMENTS: &str = "1.3.6.1.5.5.7.1.3";
const PSD2_STATEMENT: &str = "0.4.0.19495.2";
const ORGANIZATION_IDENTIFIER: &str = "2.5.4.97";

/// What an eIDAS certificate says about its TPP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Psd2 {
    pub roles: Vec<TppRole>,
    /// The subject's organizationIdentifier.
    pub organization_id: Option<String>,
    /// The national competent authority (nCAId), when stated.
    pub nca_id: Option<String>,
}

/// The role an ETSI role OID stands for.
fn role(oid: &str) -> Option<TppRole> {
    match oid {
        "0.4.0.19495.1.1" => Some(TppRole::ASPSP),
        "0.4.0.19495.1.2" => Some(TppRole::PISP),
        "0.4.0.19495.1.3" => Some(TppRole::AISP),
        "0.4.0.19495.1.4" => Some(TppRole::CBPII),
        _ => None,
    }
}

fn oid_text(o: &BerObject) -> Option<String> {
    o.as_oid().ok().map(Oid::to_id_string)
}

fn sequence<'a>(o: &'a BerObject<'a>) -> Option<&'a [BerObject<'a>]> {
    match &o.content {
        BerObjectContent::Sequence(items) => Some(items),
        _ => None,
    }
}

fn text(o: &BerObject) -> Option<String> {
    o.as_str().ok().map(str::to_string)
}

impl Psd2 {
    /// Reads a DER certificate; a certificate without a PSD2 statement has
    /// no roles. Fails only when the certificate or a present QCStatements
    /// extension cannot be decoded.
    pub fn of_certificate(der: &[u8]) -> Result<Psd2, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("certificate: {e}"))?;
        let mut out = Psd2::default();
        for rdn in cert.subject().iter_rdn() {
            for atv in rdn.iter() {
                if atv.attr_type().to_id_string() == ORGANIZATION_IDENTIFIER {
                    out.organization_id = atv.as_str().ok().map(str::to_string);
                }
            }
        }
        for ext in cert.extensions() {
            if ext.oid.to_id_string() == QC_STATEMENTS {
                out.read_statements(ext.value)?;
            }
        }
        Ok(out)
    }

    /// Reads the value of a QCStatements extension.
    fn read_statements(&mut self, value: &[u8]) -> Result<(), String> {
        let (_, statements) = x509_parser::der_parser::parse_der(value).map_err(|e| format!("QCStatements: {e}"))?;
        let statements = sequence(&statements).ok_or("QCStatements is not a SEQUENCE")?;
        for st in statements {
            let Some([id, info, ..]) = sequence(st) else { continue };
            if oid_text(id).as_deref() != Some(PSD2_STATEMENT) {
                continue;
            }
            let fields = sequence(info).ok_or("the PSD2 statement is not a SEQUENCE")?;
            let roles = fields.first().and_then(sequence).ok_or("the PSD2 statement has no rolesOfPSP")?;
            for r in roles {
                if let Some(role) = sequence(r).and_then(|f| f.first()).and_then(oid_text).and_then(|o| role(&o))
                    && !self.roles.contains(&role)
                {
                    self.roles.push(role);
                }
            }
            self.nca_id = fields.get(2).and_then(text);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QCStatements with a PSD2 statement of the given role OIDs (and a
    /// statement of another kind before it).
    fn statements(roles: &[&[u64]]) -> Vec<u8> {
        yasna::construct_der(|w| {
            w.write_sequence(|w| {
                // QcCompliance (0.4.0.1862.1.1), no info.
                w.next().write_sequence(|w| {
                    w.next().write_oid(&yasna::models::ObjectIdentifier::from_slice(&[0, 4, 0, 1862, 1, 1]))
                });
                w.next().write_sequence(|w| {
                    w.next().write_oid(&yasna::models::ObjectIdentifier::from_slice(&[0, 4, 0, 19495, 2]));
                    w.next().write_sequence(|w| {
                        w.next().write_sequence(|w| {
                            for r in roles {
                                w.next().write_sequence(|w| {
                                    w.next().write_oid(&yasna::models::ObjectIdentifier::from_slice(r));
                                    w.next().write_utf8_string("role");
                                });
                            }
                        });
                        w.next().write_utf8_string("Financial Conduct Authority");
                        w.next().write_utf8_string("GB-FCA");
                    });
                });
            })
        })
    }

    #[test]
    fn roles_come_from_the_psd2_statement() {
        let mut p = Psd2::default();
        p.read_statements(&statements(&[&[0, 4, 0, 19495, 1, 2], &[0, 4, 0, 19495, 1, 3], &[1, 2, 3]])).unwrap();
        assert_eq!(p.roles, [TppRole::PISP, TppRole::AISP], "unknown role OIDs are left out");
        assert_eq!(p.nca_id.as_deref(), Some("GB-FCA"));
        let mut none = Psd2::default();
        none.read_statements(&statements(&[])).unwrap();
        assert!(none.roles.is_empty());
        assert!(Psd2::default().read_statements(b"\x04\x01x").is_err(), "not a SEQUENCE");
        assert!(Psd2::default().read_statements(b"garbage").is_err());
    }
}

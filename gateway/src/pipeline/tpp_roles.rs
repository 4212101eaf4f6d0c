//! Pipeline step `tpp_roles` (openBanking.tppRoles): only a TPP whose
//! verified client certificate (an eIDAS QWAC) holds one of the listed
//! PSD2 roles reaches the API. The roles and the subject's
//! organizationIdentifier go to the backend in `X-Tollgate-TPP-Roles` and
//! `X-Tollgate-TPP-Organization-Id` (a client's own are always removed).
//!
//! Answers: 401 without a verified client certificate; 403 when the
//! certificate holds none of the roles (or no PSD2 statement at all).

use tollgate_crds::api_deployment::TppRole;

use super::Flow;
use super::request::RequestCtx;
use crate::respond::Reply;

pub const ROLES_HEADER: &str = "x-tollgate-tpp-roles";
pub const ORGANIZATION_HEADER: &str = "x-tollgate-tpp-organization-id";

pub struct TppRolesStep {
    pub allowed: Vec<TppRole>,
}

fn name(r: TppRole) -> &'static str {
    match r {
        TppRole::AISP => "AISP",
        TppRole::PISP => "PISP",
        TppRole::CBPII => "CBPII",
        TppRole::ASPSP => "ASPSP",
    }
}

impl TppRolesStep {
    pub fn on_request(&self, ctx: &mut RequestCtx) -> Flow {
        let wanted = self.allowed.iter().map(|r| name(*r)).collect::<Vec<_>>().join(", ");
        let Some(cert) = ctx.client.cert.clone() else {
            return Flow::Reply(
                Reply::new(
                    401,
                    "unauthorized",
                    format!("this API needs an eIDAS client certificate with a PSD2 role ({wanted})"),
                )
                .header("www-authenticate", "Bearer error=\"invalid_token\""),
            );
        };
        let psd2 = match cert.psd2() {
            Ok(p) => p,
            Err(why) => {
                return Flow::Reply(Reply::new(
                    403,
                    "tpp_role_missing",
                    format!("the client certificate cannot be read: {why}"),
                ));
            }
        };
        if !psd2.roles.iter().any(|r| self.allowed.contains(r)) {
            let held = if psd2.roles.is_empty() {
                "no PSD2 role".to_string()
            } else {
                psd2.roles.iter().map(|r| name(*r)).collect::<Vec<_>>().join(", ")
            };
            let mut reply = Reply::new(
                403,
                "tpp_role_missing",
                format!("this API needs a TPP with the PSD2 role {wanted}; the certificate holds {held}"),
            );
            reply.extra =
                Some(serde_json::json!({"requiredRoles": self.allowed.iter().map(|r| name(*r)).collect::<Vec<_>>()}));
            return Flow::Reply(reply);
        }
        ctx.identity_headers.push((ROLES_HEADER, psd2.roles.iter().map(|r| name(*r)).collect::<Vec<_>>().join(",")));
        if let Some(org) = psd2
            .organization_id
            .as_ref()
            .filter(|o| o.len() <= 256 && o.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        {
            ctx.identity_headers.push((ORGANIZATION_HEADER, org.clone()));
        }
        Flow::Next
    }
}

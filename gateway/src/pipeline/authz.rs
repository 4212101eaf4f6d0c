//! Pipeline step `authz`: an OAuth2 token must grant every scope the
//! matched operation lists (`operations[].scopes`); else 403 with
//! `WWW-Authenticate: Bearer error="insufficient_scope", scope="..."`
//! (RFC 6750). API keys carry no scopes: an API-key caller is authorised by
//! its subscription alone, so list only `oauth2` on operations that must be
//! scope-checked.

use super::Flow;
use super::request::{Credential, RequestCtx};
use crate::respond::Reply;

/// The compiled `authz` step.
pub struct AuthzStep;

impl AuthzStep {
    pub fn on_request(&self, ctx: &RequestCtx) -> Flow {
        let (Some(p), Some(op)) = (&ctx.principal, ctx.operation.operation()) else { return Flow::Next };
        if p.credential != Credential::OAuth2 || op.scopes.is_empty() {
            return Flow::Next;
        }
        let granted = p.scopes();
        let missing: Vec<&str> =
            op.scopes.iter().filter(|s| !granted.iter().any(|g| g == *s)).map(String::as_str).collect();
        if missing.is_empty() {
            return Flow::Next;
        }
        let required = op.scopes.join(" ");
        Flow::Reply(
            Reply::new(403, "insufficient_scope", format!("the access token lacks the scope(s) {}", missing.join(" ")))
                .header(
                    "www-authenticate",
                    format!("Bearer error=\"insufficient_scope\", scope=\"{}\"", required.replace('"', "'")),
                ),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::oauth::VerifiedToken;
    use crate::pipeline::request::{OpMatch, Operation, Principal};
    use crate::store::keys::Environment;

    fn ctx(required: &[&str], granted: &[&str], credential: Credential) -> RequestCtx {
        let token = VerifiedToken {
            issuer_id: "bank/idp".into(),
            claims: Default::default(),
            client_id: Some("tpp".into()),
            scopes: granted.iter().map(|s| s.to_string()).collect(),
            x5t_s256: None,
            expires: 0,
            issuer_fingerprint: [0; 32],
            keys: None,
        };
        let op = Operation { name: "".into(), policy: None, scopes: required.iter().map(|s| s.to_string()).collect() };
        RequestCtx {
            operation: OpMatch::Path { allow: "GET".into(), op: Some(Arc::new(op)) },
            principal: Some(Principal {
                credential,
                application: "app".into(),
                environment: Environment::Production,
                tier: None,
                client_id: None,
                token: (credential == Credential::OAuth2).then(|| Arc::new(token)),
                client_cert: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn every_listed_scope_is_required() {
        assert!(matches!(
            AuthzStep.on_request(&ctx(&["accounts"], &["accounts", "x"], Credential::OAuth2)),
            Flow::Next
        ));
        assert!(matches!(AuthzStep.on_request(&ctx(&[], &[], Credential::OAuth2)), Flow::Next));
        match AuthzStep.on_request(&ctx(&["accounts", "payments"], &["accounts"], Credential::OAuth2)) {
            Flow::Reply(r) => {
                assert_eq!(r.status, 403);
                assert!(r.message.contains("payments") && !r.message.contains("accounts"));
                let challenge = &r.headers.iter().find(|(n, _)| n == "www-authenticate").unwrap().1;
                assert_eq!(challenge, "Bearer error=\"insufficient_scope\", scope=\"accounts payments\"");
            }
            _ => panic!("403 expected"),
        }
        // API keys are authorised by their subscription.
        assert!(matches!(AuthzStep.on_request(&ctx(&["accounts"], &[], Credential::ApiKey)), Flow::Next));
    }
}

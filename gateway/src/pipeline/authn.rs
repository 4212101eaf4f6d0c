//! Pipeline step `authn`: checks the credential `spec.security` asks for and
//! produces the request's one verified [`Principal`]. It is the only code
//! that reads a credential; a credential it read is removed from what the
//! backend receives (the header named in `apiKey.header`, the query
//! parameter named in `apiKey.query`).
//!
//! Answers: 401 with `WWW-Authenticate` for a missing, unknown or revoked
//! credential; 403 when the application is not subscribed to the API or
//! holds sandbox keys for an API without sandbox endpoints; 503 with
//! `Retry-After` when keys cannot be checked (no store, database down and
//! key not cached).

use pingora::http::RequestHeader;
use tollgate_crds::ApiDeploymentSpec;
use tollgate_crds::api_deployment::Security;

use super::Flow;
use super::request::{Credential, Principal, RequestCtx, header};
use crate::respond::Reply;
use crate::runtime::Shared;
use crate::store::cache::KeyCheck;
use crate::store::keys::Environment;

/// Where the API key travels.
#[derive(Debug, PartialEq, Eq)]
enum KeyIn {
    /// Lower-cased header name.
    Header(String),
    Query(String),
}

/// The compiled `authn` step.
pub struct AuthnStep {
    api_id: String,
    has_sandbox: bool,
    api_key: Option<KeyIn>,
    mtls_required: bool,
}

const API_KEY_CHALLENGE: &str = "APIKey";

impl AuthnStep {
    /// The step for `security`; None when it asks for nothing.
    pub fn new(api_id: &str, security: &Security, spec: &ApiDeploymentSpec) -> Option<AuthnStep> {
        if security.api_key.is_none() && security.oauth2.is_none() && security.mtls.is_none() {
            return None;
        }
        let api_key = security.api_key.as_ref().map(|k| match (&k.header, &k.query) {
            (None, Some(q)) => KeyIn::Query(q.clone()),
            (h, _) => KeyIn::Header(h.as_deref().unwrap_or("apikey").to_ascii_lowercase()),
        });
        Some(AuthnStep {
            api_id: api_id.to_string(),
            has_sandbox: !spec.backend.sandbox_endpoints.is_empty(),
            api_key,
            mtls_required: security.mtls.as_ref().is_some_and(|m| m.required),
        })
    }

    pub async fn on_request(&self, req: &mut RequestHeader, ctx: &mut RequestCtx, rt: &Shared) -> Flow {
        match self.authenticate(req, ctx, rt).await {
            Ok(principal) => {
                ctx.principal = Some(principal);
                Flow::Next
            }
            Err(reply) => Flow::Reply(reply),
        }
    }

    async fn authenticate(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
        rt: &Shared,
    ) -> Result<Principal, Reply> {
        let Some(key_in) = &self.api_key else {
            return Err(Reply::new(
                401,
                "unauthorized",
                "this API requires OAuth2 or mTLS credentials, which this gateway cannot verify yet",
            )
            .header("www-authenticate", "Bearer"));
        };
        // mtls.required is an extra requirement on top of any scheme. Client
        // certificates are not requested by the listeners yet (no client CA),
        // so no request can meet it: refuse instead of serving with less.
        if self.mtls_required {
            return Err(Reply::new(
                401,
                "unauthorized",
                "this API requires a verified TLS client certificate (mutual TLS)",
            )
            .header("www-authenticate", "Bearer error=\"invalid_token\""));
        }
        let presented = match key_in {
            KeyIn::Query(name) => {
                let presented = query_param(req.uri.query().unwrap_or(""), name);
                // The key never reaches the backend, nor any log line or
                // error summary that prints the request: drop it from the
                // request itself now.
                if presented.is_some() {
                    strip_key_from_query(req, name);
                }
                presented
            }
            KeyIn::Header(name) => {
                ctx.strip_headers.push(name.clone());
                header(req, name).map(str::to_string)
            }
        };
        let Some(key) = presented.filter(|k| !k.is_empty()) else {
            return Err(unauthorized("an API key is required"));
        };
        let Some(store) = &rt.store else {
            return Err(Reply::new(503, "key_check_unavailable", "this gateway has no store to check API keys"));
        };
        let grant = match store.cache.check(&store.db, &crate::store::keys::hash(&key)).await {
            KeyCheck::Valid(g) => g,
            KeyCheck::Unknown => return Err(unauthorized("unknown API key")),
            KeyCheck::Revoked => return Err(unauthorized("revoked API key")),
            KeyCheck::Unavailable => {
                return Err(Reply::new(503, "key_check_unavailable", "API keys cannot be checked right now")
                    .header("retry-after", "1"));
            }
        };
        let Some((_, tier)) = grant.subscriptions.iter().find(|(a, _)| *a == self.api_id) else {
            return Err(Reply::new(403, "forbidden", format!("the application is not subscribed to {}", self.api_id)));
        };
        if grant.environment == Environment::Sandbox && !self.has_sandbox {
            return Err(Reply::new(
                403,
                "forbidden",
                format!("{} has no sandbox endpoints for sandbox keys", self.api_id),
            ));
        }
        Ok(Principal {
            credential: Credential::ApiKey,
            application: grant.application_id.clone(),
            environment: grant.environment,
            tier: Some(tier.clone()),
            scopes: Vec::new(),
            claims: serde_json::Map::new(),
        })
    }
}

fn unauthorized(message: &str) -> Reply {
    Reply::new(401, "unauthorized", message).header("www-authenticate", API_KEY_CHALLENGE)
}

/// The decoded value of the first query parameter named `name`.
fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// `query` without any parameter whose decoded name is `name`; the other
/// parameters are kept byte for byte. None when nothing is left.
fn strip_query_param(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| form_urlencoded::parse(pair.as_bytes()).next().is_none_or(|(k, _)| k != name))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Rewrites the request's URI without the query parameter `name`.
fn strip_key_from_query(req: &mut RequestHeader, name: &str) {
    let uri = &req.uri;
    let Some(query) = uri.query() else { return };
    let target = match strip_query_param(query, name) {
        Some(q) => format!("{}?{q}", uri.path()),
        None => uri.path().to_string(),
    };
    if let Ok(new) = target.parse::<http::Uri>() {
        req.set_uri(new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::test_support::{request, runtime, spec};

    fn step(security: &str) -> AuthnStep {
        let s = spec(&format!(
            "apiManagerRef: {{name: m}}\ncontext: /a\nversion: v1\n\
             backend: {{endpoints: [{{url: 'http://127.0.0.1:1'}}]}}\nsecurity: {security}\n"
        ));
        AuthnStep::new("ns/a", s.security.as_ref().unwrap(), &s).unwrap()
    }

    #[test]
    fn query_keys_are_read_decoded_and_stripped_exactly() {
        assert_eq!(query_param("a=1&api%6Bey=s%2Bk+y&apikey=2", "apikey").as_deref(), Some("s+k y"));
        assert_eq!(strip_query_param("a=1&apikey=x&b=%2F&apikey=y", "apikey").as_deref(), Some("a=1&b=%2F"));
        assert_eq!(strip_query_param("api%6Bey=x&b", "apikey").as_deref(), Some("b"));
        assert_eq!(strip_query_param("apikey=x", "apikey"), None);
        assert_eq!(strip_query_param("apikeyx=1&&", "apikey").as_deref(), Some("apikeyx=1"));
    }

    #[tokio::test]
    async fn a_query_key_leaves_the_request_even_when_it_cannot_be_checked() {
        let rt = runtime();
        let mut req = request("GET", "/a/v1/x?a=1&key=secret", &[]);
        let mut ctx = RequestCtx::default();
        let flow = step("{apiKey: {query: key}}").on_request(&mut req, &mut ctx, &rt).await;
        assert!(matches!(flow, Flow::Reply(r) if r.status == 503), "no store: 503");
        assert_eq!(req.uri.to_string(), "/a/v1/x?a=1");
        assert!(ctx.principal.is_none());
    }

    #[tokio::test]
    async fn header_keys_are_never_forwarded_and_missing_ones_get_a_challenge() {
        let rt = runtime();
        let mut req = request("GET", "/a/v1/x", &[]);
        let mut ctx = RequestCtx::default();
        match step("{apiKey: {header: X-Key}}").on_request(&mut req, &mut ctx, &rt).await {
            Flow::Reply(r) => {
                assert_eq!(r.status, 401);
                assert!(r.headers.contains(&("www-authenticate".into(), "APIKey".into())));
            }
            _ => panic!("401 expected"),
        }
        assert_eq!(ctx.strip_headers, ["x-key"]);
    }

    #[tokio::test]
    async fn mtls_required_is_on_top_of_api_keys_and_oauth2_alone_is_refused() {
        let rt = runtime();
        for security in ["{apiKey: {}, mtls: {required: true}}", "{oauth2: {}}"] {
            let mut req = request("GET", "/a/v1/x", &[("apikey", "k")]);
            let mut ctx = RequestCtx::default();
            let flow = step(security).on_request(&mut req, &mut ctx, &rt).await;
            assert!(matches!(flow, Flow::Reply(r) if r.status == 401), "{security}");
            assert!(ctx.principal.is_none());
        }
    }
}

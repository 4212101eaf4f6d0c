//! Pipeline step `authn`: checks the credential `spec.security` asks for and
//! produces the request's one verified [`Principal`]. It is the only code
//! that reads a credential; a credential it read is removed from what the
//! backend receives (the API-key header or query parameter; the
//! Authorization header unless `oauth2.forwardToken`), and the backend gets
//! the verified identity instead (`X-Tollgate-Application`,
//! `X-Tollgate-Client-Id`).
//!
//! Each listed scheme is accepted: a `Bearer` token when `oauth2` is listed,
//! else the API key. `mtls.required` is an extra requirement on top of
//! either: a verified client certificate, and for tokens a binding to it
//! (RFC 8705 `cnf.x5t#S256`). A token bound to a certificate is refused
//! without that certificate on any API.
//!
//! Answers (RFC 6750 for tokens): 401 with `WWW-Authenticate` for a
//! missing, malformed, expired, wrongly signed or foreign credential, or a
//! missing or mismatched certificate; 403 when the client or key belongs to
//! no application, the application is not subscribed to the API, or holds
//! sandbox credentials for an API without sandbox endpoints; 503 with
//! `Retry-After` when credentials cannot be checked (no store, database
//! down and nothing cached, issuer keys never fetched).

use std::sync::Arc;

use pingora::http::RequestHeader;
use tollgate_crds::ApiDeploymentSpec;
use tollgate_crds::api_deployment::Security;

use super::Flow;
use super::request::{ClientCert, Credential, Principal, RequestCtx, header};
use crate::metrics::ResultLabels;
use crate::oauth::{Issuer, TokenError, VerifiedToken};
use crate::respond::Reply;
use crate::runtime::Shared;
use crate::store::cache::KeyCheck;
use crate::store::db::KeyGrant;
use crate::store::keys::Environment;

/// Where the API key travels.
#[derive(Debug, PartialEq, Eq)]
enum KeyIn {
    /// Lower-cased header name.
    Header(String),
    Query(String),
}

/// What `security.oauth2` compiles to.
pub struct OAuth2 {
    /// The KeyManagers whose tokens are accepted.
    pub issuers: Vec<Arc<Issuer>>,
    /// `security.oauth2.audience`.
    pub audience: Option<String>,
    pub forward_token: bool,
}

/// The compiled `authn` step.
pub struct AuthnStep {
    api_id: String,
    has_sandbox: bool,
    api_key: Option<KeyIn>,
    oauth2: Option<OAuth2>,
    mtls_required: bool,
}

const API_KEY_CHALLENGE: &str = "APIKey";

/// Identity headers the gateway sets; a client's own are always removed.
pub const IDENTITY_HEADERS: [&str; 4] = [
    "x-tollgate-application",
    "x-tollgate-client-id",
    super::tpp_roles::ROLES_HEADER,
    super::tpp_roles::ORGANIZATION_HEADER,
];

fn invalid_token(message: impl Into<String>) -> Reply {
    let message = message.into();
    let challenge = format!("Bearer error=\"invalid_token\", error_description=\"{}\"", message.replace('"', "'"));
    Reply::new(401, "invalid_token", message).header("www-authenticate", challenge)
}

fn unavailable(message: &str) -> Reply {
    Reply::new(503, "key_check_unavailable", message).header("retry-after", "1")
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(req: &RequestHeader) -> Option<&str> {
    let v = header(req, "authorization")?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl AuthnStep {
    /// The step for `security` (with the issuers `oauth2` trusts); None when
    /// it asks for nothing.
    pub fn new(
        api_id: &str,
        security: &Security,
        spec: &ApiDeploymentSpec,
        oauth2: Option<OAuth2>,
    ) -> Option<AuthnStep> {
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
            oauth2: security
                .oauth2
                .as_ref()
                .map(|_| oauth2.unwrap_or(OAuth2 { issuers: Vec::new(), audience: None, forward_token: false })),
            mtls_required: security.mtls.as_ref().is_some_and(|m| m.required),
        })
    }

    pub async fn on_request(&self, req: &mut RequestHeader, ctx: &mut RequestCtx, rt: &Shared) -> Flow {
        match self.authenticate(req, ctx, rt).await {
            Ok(principal) if !rt.environments.contains(&principal.environment) => {
                let accepted: Vec<&str> = rt.environments.iter().map(|e| e.as_str()).collect();
                Flow::Reply(Reply::new(
                    403,
                    "wrong_environment",
                    format!(
                        "{} credentials are not accepted by this gateway (it serves {})",
                        principal.environment.as_str(),
                        accepted.join(" and ")
                    ),
                ))
            }
            Ok(principal) => {
                ctx.identity_headers.push(("x-tollgate-application", principal.application.clone()));
                if let Some(c) = &principal.client_id {
                    ctx.identity_headers.push(("x-tollgate-client-id", c.clone()));
                }
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
        if self.mtls_required && ctx.client.cert.is_none() {
            return Err(Reply::new(
                401,
                "unauthorized",
                "this API requires a verified TLS client certificate (mutual TLS)",
            )
            .header("www-authenticate", "Bearer error=\"invalid_token\""));
        }
        // Every credential header this API knows is removed before
        // forwarding, whichever scheme the caller used.
        if let Some(KeyIn::Header(name)) = &self.api_key {
            ctx.strip_headers.push(name.clone());
        }
        if let Some(oauth2) = &self.oauth2 {
            if !oauth2.forward_token {
                ctx.strip_headers.push("authorization".into());
            }
            // Which of several would the backend read? Refuse the question.
            if req.headers.get_all("authorization").iter().count() > 1 {
                return Err(Reply::new(400, "invalid_request", "more than one Authorization header")
                    .header("www-authenticate", "Bearer error=\"invalid_request\""));
            }
        }
        let token = self.oauth2.as_ref().and_then(|_| bearer(req)).map(str::to_string);
        match (token, &self.oauth2, &self.api_key) {
            (Some(token), Some(oauth2), _) => self.with_token(&token, oauth2, ctx, rt).await,
            (None, _, Some(key_in)) => self.with_api_key(req, key_in, ctx, rt).await,
            _ => {
                let mut reply = invalid_token("an OAuth2 access token is required (Authorization: Bearer)");
                if self.api_key.is_some() {
                    reply.headers.push(("www-authenticate".into(), API_KEY_CHALLENGE.into()));
                }
                Err(reply)
            }
        }
    }

    async fn with_token(
        &self,
        token: &str,
        oauth2: &OAuth2,
        ctx: &mut RequestCtx,
        rt: &Shared,
    ) -> Result<Principal, Reply> {
        let verified = match rt.tokens.verify(token, &oauth2.issuers, &rt.jwks).await {
            Ok(t) => t,
            Err(e) => {
                rt.metrics.token_rejections.get_or_create(&ResultLabels { result: e.label() }).inc();
                return Err(match e {
                    TokenError::KeysUnavailable => {
                        unavailable("the key manager's signing keys cannot be fetched right now")
                    }
                    e => invalid_token(e.to_string()),
                });
            }
        };
        let reject = |e: TokenError| {
            rt.metrics.token_rejections.get_or_create(&ResultLabels { result: e.label() }).inc();
            invalid_token(e.to_string())
        };
        if let Some(aud) = &oauth2.audience
            && !verified.has_audience(aud)
        {
            return Err(reject(TokenError::WrongAudience));
        }
        // RFC 8705: a bound token is good only with its certificate.
        let cert = ctx.client.cert.clone();
        match (&verified.x5t_s256, &cert) {
            (Some(bound), Some(c)) if *bound == c.x5t_s256 => {}
            (Some(_), Some(_)) => {
                rt.metrics.token_rejections.get_or_create(&ResultLabels { result: "certificate_mismatch" }).inc();
                return Err(invalid_token("the access token is bound to another client certificate"));
            }
            (Some(_), None) => {
                rt.metrics.token_rejections.get_or_create(&ResultLabels { result: "certificate_missing" }).inc();
                return Err(invalid_token("the access token is bound to a client certificate that was not presented"));
            }
            (None, _) if self.mtls_required => {
                rt.metrics.token_rejections.get_or_create(&ResultLabels { result: "unbound" }).inc();
                return Err(invalid_token(
                    "this API requires an access token bound to the client certificate (cnf.x5t#S256)",
                ));
            }
            (None, _) => {}
        }
        let Some(client_id) = verified.client_id.clone() else {
            return Err(Reply::new(403, "forbidden", "the access token names no OAuth2 client"));
        };
        let Some(store) = &rt.store else {
            return Err(Reply::new(
                503,
                "key_check_unavailable",
                "this gateway has no store to find the client's application",
            ));
        };
        // Tokens of the built-in key manager can be revoked (RFC 7009).
        if verified.issuer_id == crate::key_manager::BUILTIN {
            let Some(jti) = verified.claims.get("jti").and_then(|j| j.as_str()) else {
                return Err(reject(TokenError::MissingClaim("jti".into())));
            };
            match store.cache.check_revoked(&store.db, jti).await {
                Some(false) => {}
                Some(true) => {
                    rt.metrics.token_rejections.get_or_create(&ResultLabels { result: "revoked" }).inc();
                    return Err(invalid_token("the access token has been revoked"));
                }
                None => return Err(unavailable("revocations cannot be checked right now")),
            }
        }
        let grant = match store.cache.check_client(&store.db, &verified.issuer_id, &client_id).await {
            KeyCheck::Valid(g) => g,
            KeyCheck::Unknown | KeyCheck::Revoked => {
                return Err(Reply::new(
                    403,
                    "forbidden",
                    format!("client {client_id} of {} is not registered to an application", verified.issuer_id),
                ));
            }
            KeyCheck::Unavailable => return Err(unavailable("the client's application cannot be looked up right now")),
        };
        self.principal(&grant, Credential::OAuth2, Some(client_id), Some(verified), cert)
    }

    async fn with_api_key(
        &self,
        req: &mut RequestHeader,
        key_in: &KeyIn,
        ctx: &mut RequestCtx,
        rt: &Shared,
    ) -> Result<Principal, Reply> {
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
            KeyIn::Header(name) => header(req, name).map(str::to_string),
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
            KeyCheck::Unavailable => return Err(unavailable("API keys cannot be checked right now")),
        };
        self.principal(&grant, Credential::ApiKey, None, None, ctx.client.cert.clone())
    }

    /// The caller a credential's grant makes, when its application is
    /// subscribed to this API.
    fn principal(
        &self,
        grant: &KeyGrant,
        credential: Credential,
        client_id: Option<String>,
        token: Option<Arc<VerifiedToken>>,
        client_cert: Option<Arc<ClientCert>>,
    ) -> Result<Principal, Reply> {
        let (environment, tier) = self.subscription(grant)?;
        Ok(Principal {
            credential,
            application: grant.application_id.clone(),
            environment,
            tier: Some(tier),
            client_id,
            token,
            client_cert,
        })
    }

    /// The application's environment and its tier for this API.
    fn subscription(&self, grant: &KeyGrant) -> Result<(Environment, String), Reply> {
        let Some((_, tier)) = grant.subscriptions.iter().find(|(a, _)| *a == self.api_id) else {
            return Err(Reply::new(403, "forbidden", format!("the application is not subscribed to {}", self.api_id)));
        };
        if grant.environment == Environment::Sandbox && !self.has_sandbox {
            return Err(Reply::new(
                403,
                "forbidden",
                format!("{} has no sandbox endpoints for sandbox credentials", self.api_id),
            ));
        }
        Ok((grant.environment, tier.clone()))
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
        AuthnStep::new("ns/a", s.security.as_ref().unwrap(), &s, None).unwrap()
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
    async fn mtls_required_needs_a_certificate_and_oauth2_a_bearer_token() {
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

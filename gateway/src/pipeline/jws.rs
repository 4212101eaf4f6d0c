//! Pipeline step `jws` (openBanking.jws.verifyRequests): a POST, PUT or
//! PATCH must carry `x-jws-signature`, a detached JWS over the exact body
//! by a key the calling OAuth2 client registered (its `jwks` or `jwksUri`).
//! Missing, malformed or not matching: 400. The body was read before the
//! pipeline ran (bounded; 413 beyond the limit).

use http::Method;
use pingora::http::RequestHeader;

use super::Flow;
use super::request::{RequestCtx, header};
use crate::jws::verify_detached;
use crate::respond::Reply;
use crate::runtime::Shared;

pub const HEADER: &str = "x-jws-signature";

/// Methods whose bodies are signed.
pub fn has_signed_body(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH)
}

fn invalid(message: impl Into<String>) -> Flow {
    Flow::Reply(Reply::new(400, "invalid_signature", message))
}

pub struct VerifyStep;

impl VerifyStep {
    pub async fn on_request(&self, req: &RequestHeader, ctx: &mut RequestCtx, rt: &Shared) -> Flow {
        if !has_signed_body(&req.method) {
            return Flow::Next;
        }
        let Some(signature) = header(req, HEADER).filter(|s| !s.trim().is_empty()) else {
            return invalid("x-jws-signature is required: a detached JWS over the request body");
        };
        if req.headers.get_all(HEADER).iter().count() > 1 {
            return invalid("more than one x-jws-signature");
        }
        let client =
            ctx.principal.as_ref().and_then(|p| Some((p.token.as_ref()?.issuer_id.clone(), p.client_id.clone()?)));
        let Some((issuer, client_id)) = client else {
            return invalid("signed requests need an OAuth2 client (its registered keys verify the signature)");
        };
        let Some(store) = &rt.store else {
            return Flow::Reply(Reply::new(
                503,
                "key_check_unavailable",
                "this gateway has no store to find the client's keys",
            ));
        };
        let source = match rt.client_keys.get(store, &rt.jwks, &issuer, &client_id).await {
            Ok(Some(s)) => s,
            Ok(None) => return invalid(format!("client {client_id} registered no keys (jwks or jwksUri)")),
            Err(_) => {
                return Flow::Reply(
                    Reply::new(503, "key_check_unavailable", "the client's keys cannot be read right now")
                        .header("retry-after", "1"),
                );
            }
        };
        let kid = crate::jws::kid_of(signature);
        let Some(keys) = source.keys(kid.as_deref(), &rt.jwks).await else {
            return Flow::Reply(
                Reply::new(503, "key_check_unavailable", "the client's jwksUri cannot be fetched right now")
                    .header("retry-after", "1"),
            );
        };
        let body = ctx.body.as_deref().unwrap_or_default();
        match verify_detached(signature, body, &keys) {
            Ok(()) => Flow::Next,
            Err(e) => invalid(e.to_string()),
        }
    }
}

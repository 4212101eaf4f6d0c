//! Pipeline step `idempotency` (openBanking.idempotency): a POST, PUT or
//! PATCH must carry `x-idempotency-key` (1 to 40 visible characters, else
//! 400). Keys belong to the calling client (its application) and the API.
//! The first request with a key is forwarded and its answer stored (status,
//! headers, body up to 1 MiB) with a fingerprint of method, path, query and
//! body; a repeat with the same fingerprint within the TTL gets the stored
//! answer (`x-idempotency-replayed: true`) and the backend is not called; a
//! repeat with another fingerprint is 400; a repeat while the first is in
//! flight waits up to 2 s, then 409. Keys live in the store database, so
//! every gateway on it agrees. A request that got no answer from the backend
//! (502, 504, 5xx) frees its key for a retry.

use std::time::Duration;

use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};

use super::Flow;
use super::jws::has_signed_body;
use super::request::{RequestCtx, header};
use crate::respond::Reply;
use crate::runtime::Shared;
use crate::store::idempotency::Existing;

pub const HEADER: &str = "x-idempotency-key";
/// Longest stored answer body.
pub const MAX_STORED_BODY: usize = 1 << 20;
/// How long a repeat waits for the first request to finish.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(2);

/// A key this request owns, to be completed with its answer.
#[derive(Debug)]
pub struct Claim {
    pub scope: String,
    pub key: String,
    /// This request's claim on the key (only it completes or frees it).
    pub id: String,
    /// How long the answer is kept once stored.
    pub ttl: Duration,
    /// The answer so far (status, headers, body; None when over the limit).
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

pub struct IdempotencyStep {
    pub api_id: String,
    /// How long an answered key is kept.
    pub ttl: Duration,
    /// How long a claim without an answer holds the key (a gateway that
    /// died mid-request does not block it for the whole TTL).
    pub lease: Duration,
}

fn bad(message: &str) -> Flow {
    Flow::Reply(Reply::new(400, "invalid_idempotency_key", message))
}

impl IdempotencyStep {
    pub async fn on_request(&self, req: &RequestHeader, ctx: &mut RequestCtx, rt: &Shared) -> Flow {
        if !has_signed_body(&req.method) {
            return Flow::Next;
        }
        if req.headers.get_all(HEADER).iter().count() > 1 {
            return bad("more than one x-idempotency-key");
        }
        let Some(key) = header(req, HEADER).map(str::trim).filter(|k| !k.is_empty()) else {
            return bad("x-idempotency-key is required for POST, PUT and PATCH on this API");
        };
        if key.len() > 40 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return bad("x-idempotency-key must be 1 to 40 visible ASCII characters");
        }
        let Some(store) = &rt.store else {
            return Flow::Reply(Reply::new(
                503,
                "idempotency_unavailable",
                "this gateway has no store for idempotency keys",
            ));
        };
        let caller = ctx.principal.as_ref().map(|p| p.application.as_str()).unwrap_or("-");
        let scope = format!("{}\n{caller}", self.api_id);
        let mut h = Sha256::new();
        h.update(req.method.as_str());
        h.update(b"\n");
        h.update(req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
        h.update(b"\n");
        h.update(ctx.body.as_deref().unwrap_or_default());
        let fingerprint = hex::encode(h.finalize());
        let expires = crate::throttle::now_ms() as i64 + self.lease.as_millis() as i64;
        let deadline = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
        let claim = crate::store::keys::new_id();
        loop {
            match store.db.claim_idempotency_key(&scope, key, &fingerprint, expires, &claim).await {
                Ok(None) => {
                    ctx.idempotency = Some(Claim {
                        scope,
                        key: key.to_string(),
                        id: claim,
                        ttl: self.ttl,
                        status: None,
                        headers: Vec::new(),
                        body: Some(Vec::new()),
                    });
                    return Flow::Next;
                }
                Ok(Some(Existing::Mismatch)) => {
                    return bad("x-idempotency-key was already used for a different request");
                }
                Ok(Some(Existing::Done(stored))) => return Flow::Stored(stored),
                Ok(Some(Existing::InFlight)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Some(Existing::InFlight)) => {
                    return Flow::Reply(Reply::new(
                        409,
                        "idempotency_key_in_use",
                        "a request with this x-idempotency-key is still in progress; try again",
                    ));
                }
                Err(_) => {
                    return Flow::Reply(
                        Reply::new(503, "idempotency_unavailable", "idempotency keys cannot be checked right now")
                            .header("retry-after", "1"),
                    );
                }
            }
        }
    }
}

/// Headers of an answer worth storing (not hop-by-hop or framing ones).
pub fn storable_header(name: &str) -> bool {
    !matches!(
        name,
        "connection" | "keep-alive" | "transfer-encoding" | "content-length" | "date" | "te" | "upgrade" | "trailer"
    )
}

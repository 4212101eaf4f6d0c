//! Pipeline step `interaction` (openBanking.interactionId): the FAPI
//! `x-fapi-interaction-id` round trip. A request's id is echoed when it is
//! a UUID (RFC 4122 text form); anything else is 400, so a client cannot
//! put arbitrary text into logs or the backend's headers. Without one the
//! gateway makes a UUID. The id goes to the backend, onto every answer of
//! the API (the gateway's own errors too) and into the access log. It runs
//! first, so every later answer carries it.

use pingora::http::{RequestHeader, ResponseHeader};

use super::Flow;
use super::request::RequestCtx;
use crate::respond::Reply;

pub const HEADER: &str = "x-fapi-interaction-id";

/// A new random (version 4) UUID.
pub fn new_id() -> String {
    uuid::Builder::from_random_bytes(crate::store::keys::random_bytes::<16>()).into_uuid().hyphenated().to_string()
}

/// Whether `v` is a UUID in its 36-character text form.
fn is_uuid(v: &str) -> bool {
    v.len() == 36 && uuid::Uuid::try_parse(v).is_ok()
}

pub struct InteractionStep;

impl InteractionStep {
    pub fn on_request(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Flow {
        let given: Vec<&str> = req.headers.get_all(HEADER).iter().map(|v| v.to_str().unwrap_or("\u{0}")).collect();
        match given.as_slice() {
            [] => {
                ctx.interaction_id = Some(new_id());
                ctx.identity_headers.push((HEADER, ctx.interaction_id.clone().unwrap_or_default()));
                Flow::Next
            }
            [one] if is_uuid(one.trim()) => {
                ctx.interaction_id = Some(one.trim().to_ascii_lowercase());
                ctx.identity_headers.push((HEADER, ctx.interaction_id.clone().unwrap_or_default()));
                Flow::Next
            }
            _ => {
                // The answer still carries an id (a new one): the client's is not echoed.
                ctx.interaction_id = Some(new_id());
                let why = if given.len() > 1 {
                    "more than one x-fapi-interaction-id"
                } else {
                    "x-fapi-interaction-id must be a UUID"
                };
                Flow::Reply(Reply::new(400, "invalid_interaction_id", why))
            }
        }
    }

    pub fn on_response(&self, resp: &mut ResponseHeader, ctx: &RequestCtx) -> pingora::Result<()> {
        if let Some(id) = &ctx.interaction_id {
            resp.insert_header(HEADER, id.as_str())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::test_support::request;

    #[test]
    fn uuids_are_echoed_anything_else_is_refused_and_none_gets_one() {
        let mut ctx = RequestCtx::default();
        let id = "3F2504E0-4F89-11D3-9A0C-0305E82C3301";
        assert!(matches!(InteractionStep.on_request(&request("GET", "/", &[(HEADER, id)]), &mut ctx), Flow::Next));
        assert_eq!(ctx.interaction_id.as_deref(), Some("3f2504e0-4f89-11d3-9a0c-0305e82c3301"));
        assert_eq!(ctx.identity_headers, [(HEADER, "3f2504e0-4f89-11d3-9a0c-0305e82c3301".to_string())]);

        let mut ctx = RequestCtx::default();
        assert!(matches!(InteractionStep.on_request(&request("GET", "/", &[]), &mut ctx), Flow::Next));
        let made = ctx.interaction_id.clone().unwrap();
        assert!(is_uuid(&made) && made.as_bytes()[14] == b'4', "{made}");

        for bad in [
            "not-a-uuid",
            "3f2504e0-4f89-11d3-9a0c-0305e82c3301 x",
            "{3f2504e0-4f89-11d3-9a0c-0305e82c3301}",
            "3f2504e04f8911d39a0c0305e82c3301",
        ] {
            let mut ctx = RequestCtx::default();
            let flow = InteractionStep.on_request(&request("GET", "/", &[(HEADER, bad)]), &mut ctx);
            assert!(matches!(flow, Flow::Reply(r) if r.status == 400), "{bad:?}");
            assert_ne!(ctx.interaction_id.as_deref(), Some(bad), "never echoed");
            assert!(ctx.interaction_id.as_deref().is_some_and(is_uuid));
        }
    }
}

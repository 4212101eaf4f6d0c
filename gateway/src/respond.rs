//! JSON answers written by the gateway itself (errors, 429s, preflights).

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::json;

/// A response the gateway writes without asking a backend.
pub struct Reply {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub headers: Vec<(String, String)>,
    pub extra: Option<serde_json::Value>,
}

impl Reply {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Reply {
        Reply { status, code, message: message.into(), headers: Vec::new(), extra: None }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// Body: `{"error": code, "message": ..., "status": n, ...extra}`.
    pub fn body(&self) -> Bytes {
        let mut v = json!({"error": self.code, "message": self.message, "status": self.status});
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) = (&self.extra, v.as_object_mut()) {
            for (k, val) in extra {
                obj.insert(k.clone(), val.clone());
            }
        }
        Bytes::from(v.to_string())
    }

    /// Writes the reply (no body for HEAD).
    pub async fn send(self, session: &mut Session, extra_headers: &[(String, String)]) -> pingora::Result<()> {
        let body = self.body();
        let head_only = session.req_header().method == http::Method::HEAD;
        let mut resp = ResponseHeader::build(self.status, Some(4 + self.headers.len() + extra_headers.len()))?;
        resp.insert_header("content-type", "application/json")?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        for (n, v) in &self.headers {
            resp.insert_header(n.clone(), v.as_str())?;
        }
        for (n, v) in extra_headers {
            resp.append_header(n.clone(), v.as_str())?;
        }
        session.write_response_header(Box::new(resp), head_only).await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }
}

/// Writes a bodiless response with the given headers.
pub async fn send_empty(session: &mut Session, status: u16, headers: &[(String, String)]) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(status, Some(headers.len() + 1))?;
    resp.insert_header("content-length", "0")?;
    for (n, v) in headers {
        resp.append_header(n.clone(), v.as_str())?;
    }
    session.write_response_header(Box::new(resp), true).await
}

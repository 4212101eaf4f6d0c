//! Who is asking: the session cookie (a developer or an administrator), the
//! token every form must carry (CSRF), and the cookies an answer sets.
//!
//! Cookies are HttpOnly, SameSite=Lax, `Path=/portal`, and Secure when the
//! page came over TLS. Before sign-in, forms carry the value of a separate
//! random cookie (double submit); after it, the session's own token kept
//! in the database. Cookie values are base64url, so the header is split on
//! `;` and `=` without any decoding.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::Portal;
use crate::store::keys::{constant_time_eq, random_bytes};
use crate::store::portal::Session;

pub const SESSION_COOKIE: &str = "tollgate_session";
pub const FORM_COOKIE: &str = "tollgate_form";
/// How long a sign-in lasts.
pub const SESSION_TTL_MS: i64 = 8 * 3_600_000;

/// The management listener the request came on was TLS (set per request
/// by the management server).
#[derive(Clone, Copy, Debug)]
pub struct OverTls(pub bool);

pub struct Visitor {
    pub session: Option<Session>,
    /// The session cookie's value (to end it at sign-out).
    pub session_cookie: Option<String>,
    /// The token this visitor's forms carry.
    pub csrf: String,
    /// The pre-session form cookie's value (the token once signed out).
    form_token: String,
    secure: bool,
    set_cookies: Vec<String>,
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| {
            !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn token() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

impl Visitor {
    fn cookie_line(&self, name: &str, value: &str, max_age_s: i64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{name}={value}; Path=/portal; HttpOnly; SameSite=Lax; Max-Age={max_age_s}{secure}")
    }

    /// Starts a session: the cookie is set with the answer, and forms from
    /// now on carry the session's token.
    pub fn signed_in(&mut self, cookie: &str, csrf: String, session: Session) {
        let line = self.cookie_line(SESSION_COOKIE, cookie, SESSION_TTL_MS / 1000);
        self.set_cookies.push(line);
        self.csrf = csrf;
        self.session = Some(session);
        self.session_cookie = Some(cookie.to_string());
    }

    /// Ends the session in the browser.
    pub fn signed_out(&mut self) {
        let line = self.cookie_line(SESSION_COOKIE, "", 0);
        self.set_cookies.push(line);
        self.session = None;
        self.session_cookie = None;
        self.csrf = self.form_token.clone();
    }

    /// Adds the Set-Cookie headers of this answer.
    pub fn set_cookies(&self, headers: &mut HeaderMap) {
        for c in &self.set_cookies {
            if let Ok(v) = HeaderValue::from_str(c) {
                headers.append(header::SET_COOKIE, v);
            }
        }
    }

    /// Whether a form's token is this visitor's (constant time).
    pub fn csrf_ok(&self, presented: &str) -> bool {
        !presented.is_empty() && constant_time_eq(presented.as_bytes(), self.csrf.as_bytes())
    }

    /// The signed-in developer's id.
    pub fn developer_id(&self) -> Option<&str> {
        self.session.as_ref().and_then(|s| s.developer.as_ref()).map(|d| d.id.as_str())
    }

    pub fn is_admin(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.is_admin)
    }
}

impl FromRequestParts<Portal> for Visitor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, p: &Portal) -> Result<Visitor, Response> {
        let secure = parts.extensions.get::<OverTls>().is_some_and(|t| t.0);
        let mut v = Visitor {
            session: None,
            session_cookie: None,
            csrf: String::new(),
            form_token: String::new(),
            secure,
            set_cookies: Vec::new(),
        };
        // The pre-session form token: kept, or made now.
        match cookie(&parts.headers, FORM_COOKIE) {
            Some(t) => v.form_token = t.to_string(),
            None => {
                v.form_token = token();
                let line = v.cookie_line(FORM_COOKIE, &v.form_token, 86_400);
                v.set_cookies.push(line);
            }
        }
        v.csrf = v.form_token.clone();
        let Some(value) = cookie(&parts.headers, SESSION_COOKIE).map(str::to_string) else {
            return Ok(v);
        };
        let found = match p.store.ensure_migrated().await {
            Ok(()) => p.store.db.session(&value, p.store.admin_token.as_deref()).await,
            Err(e) => Err(e),
        };
        match found {
            Ok(Some(s)) => {
                v.csrf = s.csrf.clone();
                v.session = Some(s);
                v.session_cookie = Some(value);
            }
            // Unknown, expired or disabled: signed out.
            Ok(None) => v.signed_out(),
            Err(e) => return Err(super::store_failure(p, &v, e)),
        }
        Ok(v)
    }
}

/// A posted form with its CSRF token.
#[derive(Deserialize)]
pub struct Posted<T> {
    #[serde(default)]
    pub csrf: String,
    #[serde(flatten)]
    pub form: T,
}

/// Reads an `application/x-www-form-urlencoded` form and checks its token;
/// Err is the page to answer with (returned as is by every handler, so not
/// boxed).
#[allow(clippy::result_large_err)]
pub fn read_form<T: DeserializeOwned>(
    p: &Portal,
    v: &Visitor,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Response> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !ct.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded")) {
        return Err(super::message(
            p,
            v,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported form",
            "Send the form from the portal's page.",
        ));
    }
    let posted: Posted<T> = serde_urlencoded::from_bytes(body).map_err(|e| {
        super::message(p, v, StatusCode::BAD_REQUEST, "Bad form", format!("The form could not be read: {e}."))
    })?;
    if !v.csrf_ok(&posted.csrf) {
        return Err(super::message(
            p,
            v,
            StatusCode::FORBIDDEN,
            "Form expired",
            "This form is not from your current session (it may have expired). Reload the page and try again.",
        ));
    }
    Ok(posted.form)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_by_exact_name_and_only_when_well_formed() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; tollgate_session_x=no; tollgate_session=abc-_9; b=2"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc-_9"));
        assert_eq!(cookie(&h, "missing"), None);
        h.insert(header::COOKIE, HeaderValue::from_static("tollgate_session=\"x;y\""));
        assert_eq!(cookie(&h, SESSION_COOKIE), None, "quotes are not a token");
    }

    #[test]
    fn csrf_tokens_must_match_exactly() {
        let v = Visitor {
            session: None,
            session_cookie: None,
            csrf: "abc".into(),
            form_token: "abc".into(),
            secure: true,
            set_cookies: vec![],
        };
        assert!(v.csrf_ok("abc"));
        assert!(!v.csrf_ok("abd") && !v.csrf_ok("") && !v.csrf_ok("abcd"));
        assert!(v.cookie_line(SESSION_COOKIE, "v", 5).ends_with("Max-Age=5; Secure"));
    }
}

//! The developer portal (the classic Store): server-rendered pages on the
//! management listeners (role store) under `/portal/`, for TPP developers
//! to find APIs, sign up, create applications, subscribe, get keys and see
//! their usage.
//!
//! Templates are askama's: compiled into the binary and type-checked at
//! build time (a template that names a missing field does not build), with
//! HTML escaping on by default. Every asset is served from the binary too
//! (the try-it console is swagger-ui-dist, Apache-2.0, vendored under
//! `gateway/assets/swagger-ui/`), and the Content-Security-Policy says so.
//! Forms post back to the portal with a CSRF token; pages work without
//! JavaScript except the try-it console.

mod account;
mod admin;
mod apps;
mod assets;
mod catalogue;
mod chart;
mod openapi;
mod session;

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::reload::State;
use crate::store::Store;
use crate::store::db::StoreError;
pub use session::{OverTls, Visitor};

/// The portal's settings (flags --portal-gateway-url, --portal-name).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Without a trailing slash.
    pub gateway_url: String,
    pub name: String,
}

/// What every handler gets.
#[derive(Clone)]
pub struct Portal {
    pub state: Arc<State>,
    pub store: Arc<Store>,
    /// Where developers call the APIs (shown on API pages, the try-it
    /// console's server, and allowed by the CSP's connect-src).
    pub gateway_url: Arc<str>,
    pub name: Arc<str>,
    /// The APIs' OpenAPI documents, built once per compiled API.
    pub documents: Arc<openapi::Documents>,
}

/// The portal's routes.
pub fn routes(state: Arc<State>, store: Arc<Store>, settings: &Settings) -> Router {
    let p = Portal {
        state,
        store,
        gateway_url: settings.gateway_url.trim_end_matches('/').into(),
        name: settings.name.as_str().into(),
        documents: Arc::new(openapi::Documents::new()),
    };
    Router::new()
        .route("/portal", get(|| async { axum::response::Redirect::permanent("/portal/") }))
        .route("/portal/", get(catalogue::index))
        .route("/portal/apis/{namespace}/{name}", get(catalogue::api_page))
        .route("/portal/apis/{namespace}/{name}/openapi.json", get(catalogue::openapi_document))
        .route("/portal/assets/{*file}", get(assets::serve))
        .route("/portal/signup", get(account::signup_page).post(account::signup))
        .route("/portal/signin", get(account::signin_page).post(account::signin))
        .route("/portal/signout", post(account::signout))
        .route("/portal/applications", get(apps::list).post(apps::create))
        .route("/portal/applications/{id}", get(apps::show))
        .route("/portal/applications/{id}/subscriptions", post(apps::subscribe))
        .route("/portal/applications/{id}/subscriptions/{sub}/delete", post(apps::unsubscribe))
        .route("/portal/applications/{id}/keys", post(apps::create_key))
        .route("/portal/applications/{id}/keys/{key}/revoke", post(apps::revoke_key))
        .route("/portal/applications/{id}/oauth-clients", post(apps::create_client))
        .route("/portal/applications/{id}/oauth-clients/{client}/delete", post(apps::delete_client))
        .route("/portal/admin", get(admin::index))
        .route("/portal/admin/signin", get(admin::signin_page).post(admin::signin))
        .route("/portal/admin/developers/{id}/disable", post(admin::disable))
        .route("/portal/admin/developers/{id}/enable", post(admin::enable))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(p)
}

/// What the page frame needs.
pub struct Layout {
    pub title: String,
    pub portal_name: String,
    pub signed_in: bool,
    pub email: Option<String>,
    pub is_admin: bool,
    pub csrf: String,
    pub notice: Option<String>,
    pub error: Option<String>,
}

impl Layout {
    pub fn new(p: &Portal, v: &Visitor, title: impl Into<String>) -> Layout {
        Layout {
            title: title.into(),
            portal_name: p.name.to_string(),
            signed_in: v.session.is_some(),
            email: v.session.as_ref().and_then(|s| s.developer.as_ref()).map(|d| d.email.clone()),
            is_admin: v.session.as_ref().is_some_and(|s| s.is_admin),
            csrf: v.csrf.clone(),
            notice: None,
            error: None,
        }
    }
    pub fn notice(mut self, n: impl Into<String>) -> Layout {
        self.notice = Some(n.into());
        self
    }
    pub fn error(mut self, e: impl Into<String>) -> Layout {
        self.error = Some(e.into());
        self
    }
}

#[derive(Template)]
#[template(path = "portal/message.html")]
struct MessagePage {
    layout: Layout,
    heading: String,
    message: String,
    back: String,
}

/// Content-Security-Policy of the pages: nothing from another origin but
/// the gateway the try-it console calls.
fn csp(gateway_url: &str) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
         font-src 'self'; connect-src 'self' {gateway_url}; form-action 'self'; frame-ancestors 'none'; \
         base-uri 'none'"
    )
}

/// The headers every portal answer carries.
fn secure_headers(p: &Portal, headers: &mut HeaderMap) {
    if let Ok(v) = HeaderValue::from_str(&csp(&p.gateway_url)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
}

/// A rendered page with the visitor's cookies and the security headers.
pub fn page(p: &Portal, v: &Visitor, status: StatusCode, t: &impl Template) -> Response {
    let body = match t.render() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "portal template failed");
            return plain_error(p, StatusCode::INTERNAL_SERVER_ERROR);
        }
    };
    let mut r = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    let h = r.headers_mut();
    secure_headers(p, h);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    v.set_cookies(h);
    r
}

/// A page that says what went wrong, in the portal's frame.
pub fn message(p: &Portal, v: &Visitor, status: StatusCode, heading: &str, text: impl Into<String>) -> Response {
    let back = if v.session.is_some() { "/portal/applications" } else { "/portal/" };
    let t = MessagePage {
        layout: Layout::new(p, v, heading),
        heading: heading.into(),
        message: text.into(),
        back: back.into(),
    };
    page(p, v, status, &t)
}

/// Last resort when not even the frame renders.
fn plain_error(p: &Portal, status: StatusCode) -> Response {
    let mut r =
        (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "The portal failed; see the gateway log.")
            .into_response();
    secure_headers(p, r.headers_mut());
    r
}

/// A store failure as a page (never a raw error body).
pub fn store_failure(p: &Portal, v: &Visitor, e: StoreError) -> Response {
    match e {
        StoreError::Unavailable(m) => {
            tracing::warn!(error = %m, "portal: database unavailable");
            message(
                p,
                v,
                StatusCode::SERVICE_UNAVAILABLE,
                "Temporarily unavailable",
                "The portal's database cannot be reached. Try again in a moment.",
            )
        }
        StoreError::NotFound(what) => message(p, v, StatusCode::NOT_FOUND, "Not found", format!("No such {what}.")),
        StoreError::Conflict(m) => message(p, v, StatusCode::CONFLICT, "Conflict", m),
        StoreError::Other(m) => {
            tracing::error!(error = %m, "portal: store error");
            message(
                p,
                v,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "The portal could not do that; the gateway log has the details.",
            )
        }
    }
}

/// A redirect after a successful form (303: the browser GETs the target).
pub fn see_other(p: &Portal, v: &Visitor, to: &str) -> Response {
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response();
    secure_headers(p, r.headers_mut());
    v.set_cookies(r.headers_mut());
    r
}

/// Milliseconds since the epoch as `2026-11-28 09:14 UTC`.
pub fn when(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_default()
}

//! Administration: sign-in with the admin token, every application and
//! developer, disabling and enabling developers.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::account::{Nothing, reserve_attempt, start_session};
use super::session::{Visitor, read_form};
use super::{Layout, Portal, message, page, see_other, store_failure, when};
use crate::store::keys::constant_time_eq;

/// The failure counter of admin-token sign-ins.
const ADMIN_KEY: &str = "admin-token";

#[derive(Template)]
#[template(path = "portal/admin_signin.html")]
struct SignInPage {
    layout: Layout,
}

struct DeveloperRow {
    id: String,
    email: String,
    created: String,
    disabled: bool,
}

struct AppRow {
    id: String,
    name: String,
    owner: String,
    created: String,
}

#[derive(Template)]
#[template(path = "portal/admin.html")]
struct AdminPage {
    layout: Layout,
    developers: Vec<DeveloperRow>,
    apps: Vec<AppRow>,
}

pub async fn signin_page(State(p): State<Portal>, v: Visitor) -> Response {
    page(&p, &v, StatusCode::OK, &SignInPage { layout: Layout::new(&p, &v, "Administrator sign-in") })
}

#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    token: String,
}

pub async fn signin(State(p): State<Portal>, mut v: Visitor, headers: HeaderMap, body: Bytes) -> Response {
    let f: TokenForm = match read_form(&p, &v, &headers, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some(expected) = p.store.admin_token.clone() else {
        return message(
            &p,
            &v,
            StatusCode::FORBIDDEN,
            "Administration is off",
            "The gateway runs without --admin-token-file, so nobody can administer the portal.",
        );
    };
    if let Err(e) = p.store.ensure_migrated().await {
        return store_failure(&p, &v, e);
    }
    // Reserved before the check; a wrong token leaves it as a failure.
    if let Err(r) = reserve_attempt(&p, &v, ADMIN_KEY).await {
        return r;
    }
    if constant_time_eq(f.token.trim().as_bytes(), &expected) {
        let _ = p.store.db.clear_sign_in_failures(ADMIN_KEY).await;
        return start_session(&p, &mut v, None, "/portal/admin").await;
    }
    let t = SignInPage { layout: Layout::new(&p, &v, "Administrator sign-in").error("Wrong admin token.") };
    page(&p, &v, StatusCode::UNAUTHORIZED, &t)
}

fn not_admin(p: &Portal, v: &Visitor) -> Response {
    message(p, v, StatusCode::FORBIDDEN, "Administrators only", "Sign in with the admin token to see this page.")
}

pub async fn index(State(p): State<Portal>, v: Visitor) -> Response {
    if !v.is_admin() {
        return not_admin(&p, &v);
    }
    let (devs, apps) = match (p.store.db.developers().await, p.store.db.applications().await) {
        (Ok(d), Ok(a)) => (d, a),
        (Err(e), _) | (_, Err(e)) => return store_failure(&p, &v, e),
    };
    let email_of = |id: &Option<String>| match id {
        Some(id) => devs.iter().find(|d| &d.id == id).map(|d| d.email.clone()).unwrap_or_else(|| id.clone()),
        None => "management API".to_string(),
    };
    let t = AdminPage {
        layout: Layout::new(&p, &v, "Administration"),
        apps: apps
            .iter()
            .map(|a| AppRow {
                id: a.id.clone(),
                name: a.name.clone(),
                owner: email_of(&a.owner),
                created: when(a.created_at_ms),
            })
            .collect(),
        developers: devs
            .iter()
            .map(|d| DeveloperRow {
                id: d.id.clone(),
                email: d.email.clone(),
                created: when(d.created_at_ms),
                disabled: d.disabled_at_ms.is_some(),
            })
            .collect(),
    };
    page(&p, &v, StatusCode::OK, &t)
}

async fn set_disabled(p: Portal, v: Visitor, headers: HeaderMap, body: Bytes, id: String, disabled: bool) -> Response {
    if let Err(r) = read_form::<Nothing>(&p, &v, &headers, &body) {
        return r;
    }
    if !v.is_admin() {
        return not_admin(&p, &v);
    }
    match p.store.db.set_developer_disabled(&id, disabled).await {
        Ok(apps) => {
            // Their keys and clients stop (or start) working now on this gateway.
            for a in &apps {
                p.store.cache.invalidate_application(a);
            }
            tracing::info!(developer = %id, disabled, applications = apps.len(), "portal: developer state changed");
            see_other(&p, &v, "/portal/admin")
        }
        Err(e) => store_failure(&p, &v, e),
    }
}

pub async fn disable(
    State(p): State<Portal>,
    v: Visitor,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    set_disabled(p, v, headers, body, id, true).await
}

pub async fn enable(
    State(p): State<Portal>,
    v: Visitor,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    set_disabled(p, v, headers, body, id, false).await
}

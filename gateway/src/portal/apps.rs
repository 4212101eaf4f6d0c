//! "My applications": create, subscribe with a tier, API keys (shown
//! once), OAuth clients of the built-in key manager, usage.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::account::Nothing;
use super::catalogue::{Tier, listed, tiers};
use super::chart::{Bar, bars};
use super::session::{Visitor, read_form};
use super::{Layout, Portal, message, page, see_other, store_failure, when};
use crate::key_manager::client_auth::{PRIVATE_KEY_JWT, TLS_CLIENT_AUTH};
use crate::key_manager::dn::Dn;
use crate::store::db::{Application, StoreError};
use crate::store::keys::Environment;
use crate::store::oauth_clients::{BUILTIN, NewClient};
use crate::throttle::now_ms;

struct AppRow {
    id: String,
    name: String,
    created: String,
}

#[derive(Template)]
#[template(path = "portal/apps.html")]
struct AppsPage {
    layout: Layout,
    apps: Vec<AppRow>,
}

struct KeyRow {
    id: String,
    prefix: String,
    environment: String,
    created: String,
    revoked: bool,
}

struct ClientRow {
    id: String,
    client_id: String,
    auth: String,
    environment: String,
}

struct UsageRow {
    api: String,
    requests: u64,
    errors: u64,
    throttled: u64,
    p95: String,
}

#[derive(Template)]
#[template(path = "portal/app.html")]
struct AppPage {
    layout: Layout,
    app: Application,
    new_key: Option<String>,
    new_client_secret: Option<String>,
    subscriptions: Vec<crate::store::db::Subscription>,
    /// (id, label) of the APIs it can subscribe to.
    apis: Vec<(String, String)>,
    tiers: Vec<Tier>,
    keys: Vec<KeyRow>,
    clients: Vec<ClientRow>,
    chart: String,
    usage: Vec<UsageRow>,
}

fn sign_in_first(p: &Portal, v: &Visitor) -> Response {
    see_other(p, v, "/portal/signin")
}

pub async fn list(State(p): State<Portal>, v: Visitor) -> Response {
    let Some(dev) = v.developer_id() else { return sign_in_first(&p, &v) };
    match p.store.db.applications_of(dev).await {
        Ok(apps) => {
            let t = AppsPage {
                layout: Layout::new(&p, &v, "My applications"),
                apps: apps
                    .into_iter()
                    .map(|a| AppRow { created: when(a.created_at_ms), id: a.id, name: a.name })
                    .collect(),
            };
            page(&p, &v, StatusCode::OK, &t)
        }
        Err(e) => store_failure(&p, &v, e),
    }
}

#[derive(Deserialize)]
pub struct NewApp {
    #[serde(default)]
    name: String,
}

pub async fn create(State(p): State<Portal>, v: Visitor, headers: HeaderMap, body: Bytes) -> Response {
    let f: NewApp = match read_form(&p, &v, &headers, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some(dev) = v.developer_id() else { return sign_in_first(&p, &v) };
    let name = f.name.trim();
    let again = |error: String| async {
        match p.store.db.applications_of(dev).await {
            Ok(apps) => {
                let t = AppsPage {
                    layout: Layout::new(&p, &v, "My applications").error(error),
                    apps: apps
                        .into_iter()
                        .map(|a| AppRow { created: when(a.created_at_ms), id: a.id, name: a.name })
                        .collect(),
                };
                page(&p, &v, StatusCode::UNPROCESSABLE_ENTITY, &t)
            }
            Err(e) => store_failure(&p, &v, e),
        }
    };
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return again("The name must be 1 to 200 printable characters.".into()).await;
    }
    match p.store.db.create_owned_application(name, dev).await {
        Ok(app) => see_other(&p, &v, &format!("/portal/applications/{}", app.id)),
        Err(StoreError::Conflict(_)) => again(format!("The name {name:?} is taken; choose another.")).await,
        Err(e) => store_failure(&p, &v, e),
    }
}

/// The application when the visitor may see it (its owner, or an
/// administrator); Err is the page (404 for anybody else's, so ids do not
/// leak).
#[allow(clippy::result_large_err)]
async fn owned(p: &Portal, v: &Visitor, id: &str) -> Result<Application, Response> {
    if v.session.is_none() {
        return Err(sign_in_first(p, v));
    }
    match p.store.db.get_application(id).await {
        Ok(app) if v.is_admin() || (app.owner.is_some() && app.owner.as_deref() == v.developer_id()) => Ok(app),
        Ok(_) | Err(StoreError::NotFound(_)) => {
            Err(message(p, v, StatusCode::NOT_FOUND, "Not found", "No such application among yours."))
        }
        Err(e) => Err(store_failure(p, v, e)),
    }
}

/// A posted form about one of the visitor's applications: the form (its
/// CSRF token checked) and the application; Err is the page to answer
/// (returned as is by every handler, so not boxed).
#[allow(clippy::result_large_err)]
async fn app_form<T: serde::de::DeserializeOwned>(
    p: &Portal,
    v: &Visitor,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(T, Application), Response> {
    let f = read_form(p, v, headers, body)?;
    Ok((f, owned(p, v, id).await?))
}

async fn render(
    p: &Portal,
    v: &Visitor,
    app: Application,
    new_key: Option<String>,
    new_secret: Option<String>,
    error: Option<String>,
) -> Response {
    let db = &p.store.db;
    let (subs, keys, clients) =
        match (db.subscriptions(Some(&app.id)).await, db.keys(&app.id).await, db.oauth_clients(&app.id).await) {
            (Ok(s), Ok(k), Ok(c)) => (s, k, c),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return store_failure(p, v, e),
        };
    let snap = p.state.snapshot.load_full();
    let apis: Vec<(String, String)> = listed(&snap)
        .iter()
        .filter(|a| !subs.iter().any(|s| s.api == a.id))
        .map(|a| {
            (
                a.id.clone(),
                format!(
                    "{} {} ({})",
                    a.spec.display_name.clone().unwrap_or_else(|| a.id.clone()),
                    a.spec.version,
                    a.id
                ),
            )
        })
        .collect();
    // Tiers offered by the first API on offer (they are per namespace, the
    // same for every API of a bank in practice); the server checks the
    // chosen pair.
    let offered = listed(&snap);
    let tier_list = offered
        .iter()
        .find(|a| apis.first().is_some_and(|(id, _)| id == &a.id))
        .map(|a| tiers(&snap, a))
        .unwrap_or_default();

    // Usage: the last 24 hours from the minute rollups.
    let now = now_ms() as i64;
    let hour = 3_600_000;
    let start = now - now.rem_euclid(hour) - 23 * hour;
    let (chart, usage) = match db.read_minutes(start, now + 1, None, Some(&app.id)).await {
        Ok(rows) => usage(&rows, start),
        Err(e) => return store_failure(p, v, e),
    };
    let mut layout = Layout::new(p, v, app.name.clone());
    if let Some(e) = error {
        layout = layout.error(e);
    }
    let t = AppPage {
        layout,
        new_key,
        new_client_secret: new_secret,
        subscriptions: subs,
        apis,
        tiers: tier_list,
        keys: keys
            .into_iter()
            .map(|k| KeyRow {
                id: k.id,
                prefix: k.prefix,
                environment: k.environment.as_str().to_string(),
                created: when(k.created_at_ms),
                revoked: k.revoked_at_ms.is_some(),
            })
            .collect(),
        clients: clients
            .into_iter()
            .filter(|c| c.key_manager == BUILTIN)
            .map(|c| ClientRow {
                id: c.id,
                client_id: c.client_id,
                auth: c.token_endpoint_auth_method.unwrap_or_default(),
                environment: c.environment.as_str().to_string(),
            })
            .collect(),
        chart,
        usage,
        app,
    };
    let status = if t.layout.error.is_some() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
    page(p, v, status, &t)
}

/// The chart (requests per hour from `start`) and the per-API table.
fn usage(rows: &[crate::store::analytics::MinuteRow], start: i64) -> (String, Vec<UsageRow>) {
    let hour = 3_600_000;
    let mut per_hour = vec![(0u64, 0u64); 24];
    let mut per_api: std::collections::BTreeMap<String, crate::store::analytics::Counts> = Default::default();
    for r in rows {
        let i = ((r.key.minute_ms - start) / hour).clamp(0, 23) as usize;
        per_hour[i].0 += r.counts.requests;
        per_hour[i].1 += r.counts.errors;
        per_api.entry(r.key.api.clone()).or_default().add(&r.counts);
    }
    let chart_bars: Vec<Bar> = per_hour
        .iter()
        .enumerate()
        .map(|(i, (req, err))| Bar {
            label: jiff::Timestamp::from_millisecond(start + i as i64 * hour)
                .map(|t| t.strftime("%H:00").to_string())
                .unwrap_or_default(),
            requests: *req,
            errors: *err,
        })
        .collect();
    let table = per_api
        .into_iter()
        .map(|(api, c)| UsageRow {
            api,
            requests: c.requests,
            errors: c.errors,
            throttled: c.throttled,
            p95: c.latency.quantile(0.95).map(|ms| format!("{ms:.1} ms")).unwrap_or_else(|| "–".into()),
        })
        .collect();
    (bars("Requests per hour, last 24 hours (UTC)", &chart_bars), table)
}

pub async fn show(State(p): State<Portal>, v: Visitor, Path(id): Path<String>) -> Response {
    match owned(&p, &v, &id).await {
        Ok(app) => render(&p, &v, app, None, None, None).await,
        Err(r) => r,
    }
}

#[derive(Deserialize)]
pub struct NewSubscription {
    #[serde(default)]
    api: String,
    #[serde(default)]
    tier: String,
}

pub async fn subscribe(
    State(p): State<Portal>,
    v: Visitor,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (f, app): (NewSubscription, Application) = match app_form(&p, &v, &id, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let snap = p.state.snapshot.load_full();
    let Some(api) = listed(&snap).into_iter().find(|a| a.id == f.api) else {
        return render(&p, &v, app, None, None, Some(format!("No published API {:?}.", f.api))).await;
    };
    if !tiers(&snap, &api).iter().any(|t| t.name == f.tier) {
        return render(&p, &v, app, None, None, Some(format!("{} has no tier {:?}.", api.id, f.tier))).await;
    }
    match p.store.db.create_subscription(&app.id, &api.id, &f.tier).await {
        Ok(_) => {
            p.store.cache.invalidate_application(&app.id);
            see_other(&p, &v, &format!("/portal/applications/{}", app.id))
        }
        Err(StoreError::Conflict(_)) => {
            render(&p, &v, app, None, None, Some(format!("Already subscribed to {}.", api.id))).await
        }
        Err(e) => store_failure(&p, &v, e),
    }
}

pub async fn unsubscribe(
    State(p): State<Portal>,
    v: Visitor,
    Path((id, sub)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let app = match app_form::<Nothing>(&p, &v, &id, &headers, &body).await {
        Ok((_, app)) => app,
        Err(r) => return r,
    };
    // Only a subscription of this application.
    match p.store.db.subscriptions(Some(&app.id)).await {
        Ok(subs) if subs.iter().any(|s| s.id == sub) => {}
        Ok(_) => return message(&p, &v, StatusCode::NOT_FOUND, "Not found", "No such subscription."),
        Err(e) => return store_failure(&p, &v, e),
    }
    match p.store.db.delete_subscription(&sub).await {
        Ok(_) => {
            p.store.cache.invalidate_application(&app.id);
            see_other(&p, &v, &format!("/portal/applications/{}", app.id))
        }
        Err(e) => store_failure(&p, &v, e),
    }
}

#[derive(Deserialize)]
pub struct NewKey {
    #[serde(default)]
    environment: String,
}

pub async fn create_key(
    State(p): State<Portal>,
    v: Visitor,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (f, app): (NewKey, Application) = match app_form(&p, &v, &id, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(env) = Environment::parse(&f.environment) else {
        return render(&p, &v, app, None, None, Some("Choose production or sandbox.".into())).await;
    };
    match p.store.db.create_key(&app.id, env).await {
        // Shown in this answer only (no redirect: the key is never stored).
        Ok((_, key)) => render(&p, &v, app, Some(key), None, None).await,
        Err(e) => store_failure(&p, &v, e),
    }
}

pub async fn revoke_key(
    State(p): State<Portal>,
    v: Visitor,
    Path((id, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let app = match app_form::<Nothing>(&p, &v, &id, &headers, &body).await {
        Ok((_, app)) => app,
        Err(r) => return r,
    };
    match p.store.db.revoke_key(&app.id, &key).await {
        Ok(hash) => {
            p.store.cache.invalidate(&hash).await;
            see_other(&p, &v, &format!("/portal/applications/{}", app.id))
        }
        Err(e) => store_failure(&p, &v, e),
    }
}

#[derive(Deserialize)]
pub struct NewClientForm {
    #[serde(default)]
    method: String,
    #[serde(default)]
    jwks: String,
    #[serde(default)]
    dn: String,
    #[serde(default)]
    scopes: String,
}

pub async fn create_client(
    State(p): State<Portal>,
    v: Visitor,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (f, app): (NewClientForm, Application) = match app_form(&p, &v, &id, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if p.state.shared.builtin.is_none() {
        return render(&p, &v, app, None, None, Some("This gateway has no built-in key manager.".into())).await;
    }
    let scopes: Vec<String> = f.scopes.split_whitespace().map(str::to_string).collect();
    if scopes.iter().any(|s| s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')) {
        return render(&p, &v, app, None, None, Some("Scopes are words of visible characters.".into())).await;
    }
    let (jwks, dn) = match f.method.as_str() {
        PRIVATE_KEY_JWT => {
            let parsed: serde_json::Value = match serde_json::from_str(f.jwks.trim()) {
                Ok(j) => j,
                Err(e) => return render(&p, &v, app, None, None, Some(format!("The JWK Set is not JSON: {e}."))).await,
            };
            if let Err(e) = crate::oauth::keys::KeySet::parse(parsed.to_string().as_bytes()) {
                return render(&p, &v, app, None, None, Some(format!("The JWK Set is not usable: {e}."))).await;
            }
            (Some(parsed), None)
        }
        TLS_CLIENT_AUTH => {
            let dn = f.dn.trim().to_string();
            if let Err(e) = Dn::parse(&dn) {
                return render(&p, &v, app, None, None, Some(format!("The subject DN is not valid: {e}."))).await;
            }
            (None, Some(dn))
        }
        other => {
            return render(&p, &v, app, None, None, Some(format!("Unknown authentication method {other:?}."))).await;
        }
    };
    let client_id = crate::store::keys::new_id();
    let new = NewClient {
        key_manager: BUILTIN,
        client_id: &client_id,
        environment: Some(Environment::Production),
        jwks: jwks.as_ref(),
        auth_method: Some(f.method.as_str()),
        subject_dn: dn.as_deref(),
        scopes: &scopes,
        ..Default::default()
    };
    match p.store.db.create_oauth_client(&app.id, new).await {
        Ok(_) => see_other(&p, &v, &format!("/portal/applications/{}", app.id)),
        Err(e) => store_failure(&p, &v, e),
    }
}

pub async fn delete_client(
    State(p): State<Portal>,
    v: Visitor,
    Path((id, client)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let app = match app_form::<Nothing>(&p, &v, &id, &headers, &body).await {
        Ok((_, app)) => app,
        Err(r) => return r,
    };
    match p.store.db.delete_oauth_client(&app.id, &client).await {
        Ok(c) => {
            p.store.cache.invalidate_client(&c.key_manager, &c.client_id).await;
            see_other(&p, &v, &format!("/portal/applications/{}", app.id))
        }
        Err(e) => store_failure(&p, &v, e),
    }
}

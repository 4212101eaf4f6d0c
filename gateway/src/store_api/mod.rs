//! The store's management REST API under /api/v1 (JSON, bearer admin token).
//!
//! Errors are JSON `{"error", "message", "status"}`: 400 malformed JSON or
//! unknown fields, 401 missing or wrong token, 404 unknown id, 409 duplicate,
//! 413 body over 64 KiB, 415 not JSON, 422 semantically invalid, 503 the
//! database is unreachable.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

mod analytics;
mod oauth_clients;

use crate::reload::State;
use crate::store::Store;
use crate::store::db::StoreError;
use crate::store::keys::{Environment, constant_time_eq};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Clone)]
pub struct ApiState {
    pub state: Arc<State>,
    pub store: Arc<Store>,
}

pub fn routes(state: Arc<State>, store: Arc<Store>) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/apis", get(list_apis))
        .route("/api/v1/applications", post(create_application).get(list_applications))
        .route("/api/v1/applications/{id}", get(get_application).delete(delete_application))
        .route("/api/v1/applications/{id}/keys", post(create_key).get(list_keys))
        .route("/api/v1/applications/{id}/keys/{key_id}", delete(revoke_key))
        .route("/api/v1/applications/{id}/oauth-clients", post(oauth_clients::create).get(oauth_clients::list))
        .route("/api/v1/applications/{id}/oauth-clients/{client_id}", delete(oauth_clients::delete))
        .route("/api/v1/subscriptions", post(create_subscription).get(list_subscriptions))
        .route("/api/v1/subscriptions/{id}", delete(delete_subscription))
        // Oversized bodies are refused by the JSON reader with 413; keep axum's own limit above ours.
        .layer(DefaultBodyLimit::max(MAX_BODY * 4))
        .with_state(ApiState { state, store })
}

/// The analytics queries (role analytics).
pub fn analytics_routes(state: Arc<State>, store: Arc<Store>) -> Router {
    Router::new()
        .route("/api/v1/analytics/usage", get(analytics::usage))
        .route("/api/v1/analytics/availability", get(analytics::availability))
        .with_state(ApiState { state, store })
}

/// A JSON error response.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": code, "message": message.into(), "status": status.as_u16()});
    (status, axum::Json(body)).into_response()
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::Unavailable(m) => error(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", m),
        StoreError::NotFound(what) => error(StatusCode::NOT_FOUND, "not_found", format!("{what} not found")),
        StoreError::Conflict(m) => error(StatusCode::CONFLICT, "conflict", m),
        StoreError::Other(m) => {
            tracing::error!(error = %m, "store error");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the store failed; see the gateway log")
        }
    }
}

/// Bearer token check (constant time); Err is the 401/503 response.
fn authorize(s: &ApiState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(token) = &s.store.admin_token else {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the management API is disabled: start the gateway with --admin-token-file",
        )));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match presented {
        Some(p) if constant_time_eq(p.as_bytes(), token) => Ok(()),
        Some(_) => Err(Box::new(error(StatusCode::UNAUTHORIZED, "unauthorized", "wrong bearer token"))),
        None => Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authorization: Bearer <admin token> is required",
        ))),
    }
}

/// Reads a JSON body strictly: content type, size, syntax, unknown fields.
fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, Box<Response>> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let is_json = ct.split(';').next().is_some_and(|m| {
        let m = m.trim().to_ascii_lowercase();
        m == "application/json" || m.ends_with("+json")
    });
    if !is_json {
        return Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send Content-Type: application/json",
        )));
    }
    if body.len() > MAX_BODY {
        return Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is {} bytes; at most {MAX_BODY} are accepted", body.len()),
        )));
    }
    serde_json::from_slice(body)
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, "bad_request", format!("invalid JSON body: {e}"))))
}

fn unprocessable(message: impl Into<String>) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message)
}

async fn ready(s: &ApiState) -> Result<(), Box<Response>> {
    s.store.ensure_migrated().await.map_err(|e| Box::new(store_error(e)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewApplication {
    name: String,
}

async fn create_application(AxState(s): AxState<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    let req: NewApplication = match json_body(&headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let name = req.name.trim();
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return unprocessable("name must be 1 to 200 printable characters");
    }
    if let Err(r) = ready(&s).await {
        return *r;
    }
    match s.store.db.create_application(name).await {
        Ok(app) => (StatusCode::CREATED, axum::Json(app)).into_response(),
        Err(e) => store_error(e),
    }
}

async fn list_applications(AxState(s): AxState<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    if let Err(r) = ready(&s).await {
        return *r;
    }
    match s.store.db.applications().await {
        Ok(apps) => axum::Json(json!({ "items": apps })).into_response(),
        Err(e) => store_error(e),
    }
}

async fn get_application(AxState(s): AxState<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    if let Err(r) = ready(&s).await {
        return *r;
    }
    match s.store.db.get_application(&id).await {
        Ok(app) => axum::Json(app).into_response(),
        Err(e) => store_error(e),
    }
}

async fn delete_application(AxState(s): AxState<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    if let Err(r) = ready(&s).await {
        return *r;
    }
    match s.store.db.delete_application(&id).await {
        Ok(hashes) => {
            for h in hashes {
                s.store.cache.invalidate(&h).await;
            }
            // Its OAuth clients' grants too.
            s.store.cache.invalidate_application(&id);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewKey {
    #[serde(default)]
    environment: Option<String>,
}

async fn create_key(
    AxState(s): AxState<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    let req: NewKey = if body.is_empty() {
        NewKey::default()
    } else {
        match json_body(&headers, &body) {
            Ok(r) => r,
            Err(r) => return *r,
        }
    };
    let env = match req.environment.as_deref() {
        None => Environment::Production,
        Some(e) => match Environment::parse(e) {
            Some(env) => env,
            None => return unprocessable(format!("environment must be production or sandbox, not {e:?}")),
        },
    };
    if let Err(r) = ready(&s).await {
        return *r;
    }
    match s.store.db.create_key(&id, env).await {
        Ok((info, key)) => {
            let mut v = serde_json::to_value(&info).unwrap_or_default();
            v["apiKey"] = json!(key);
            (StatusCode::CREATED, [(header::CACHE_CONTROL, "no-store")], axum::Json(v)).into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn list_keys(AxState(s): AxState<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    if let Err(r) = ready(&s).await {
        return *r;
    }
    match s.store.db.keys(&id).await {
        Ok(keys) => axum::Json(json!({ "items": keys })).into_response(),
        Err(e) => store_error(e),
    }
}

async fn revoke_key(
    AxState(s): AxState<ApiState>,
    headers: HeaderMap,
    Path((id, key_id)): Path<(String, String)>,
) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    if let Err(r) = ready(&s).await {
        return *r;
    }
    match s.store.db.revoke_key(&id, &key_id).await {
        Ok(hash) => {
            s.store.cache.invalidate(&hash).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewSubscription {
    application_id: String,
    api: String,
    policy: String,
}

async fn create_subscription(AxState(s): AxState<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    let req: NewSubscription = match json_body(&headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    // The API and the tier must be known to this gateway's snapshot.
    let snap = s.state.snapshot.load_full();
    let Some(api) = snap.apis.iter().find(|a| a.id == req.api) else {
        return unprocessable(format!(
            "unknown API {:?}: use <namespace>/<name> of a published ApiDeployment",
            req.api
        ));
    };
    if snap.tier_policy(api, &req.policy).is_none() {
        return unprocessable(format!("unknown ThrottlePolicy {:?} for API {}", req.policy, req.api));
    }
    if let Err(r) = ready(&s).await {
        return *r;
    }
    match s.store.db.create_subscription(&req.application_id, &req.api, &req.policy).await {
        Ok(sub) => {
            s.store.cache.invalidate_application(&sub.application_id);
            (StatusCode::CREATED, axum::Json(sub)).into_response()
        }
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionQuery {
    application_id: Option<String>,
}

async fn list_subscriptions(
    AxState(s): AxState<ApiState>,
    headers: HeaderMap,
    Query(q): Query<SubscriptionQuery>,
) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    if let Err(r) = ready(&s).await {
        return *r;
    }
    match s.store.db.subscriptions(q.application_id.as_deref()).await {
        Ok(items) => axum::Json(json!({ "items": items })).into_response(),
        Err(e) => store_error(e),
    }
}

async fn delete_subscription(AxState(s): AxState<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    if let Err(r) = ready(&s).await {
        return *r;
    }
    match s.store.db.delete_subscription(&id).await {
        Ok(app) => {
            s.store.cache.invalidate_application(&app);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize)]
struct ApisQuery {
    q: Option<String>,
}

/// Published APIs (from the routing snapshot); `q` filters by words.
async fn list_apis(AxState(s): AxState<ApiState>, headers: HeaderMap, Query(q): Query<ApisQuery>) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    let snap = s.state.snapshot.load_full();
    let query = q.q.as_deref().unwrap_or("").trim().to_string();
    let selected: Vec<Arc<crate::snapshot::Api>> = if query.is_empty() {
        snap.apis.clone()
    } else if s.store.search.is_some() {
        let (store, snap2, query2) = (s.store.clone(), snap.clone(), query.clone());
        let found = tokio::task::spawn_blocking(move || {
            store.sync_search(&snap2.revision, &snap2.indexed_apis());
            store.search.as_ref().map(|i| i.search(&query2, 1000))
        })
        .await;
        match found {
            Ok(Some(Ok(ids))) => ids.iter().filter_map(|id| snap.apis.iter().find(|a| &a.id == id).cloned()).collect(),
            other => {
                tracing::error!(result = ?other.map(|o| o.map(|r| r.map(|v| v.len()))), "search failed");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the search index failed; see the gateway log",
                );
            }
        }
    } else {
        let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
        snap.apis
            .iter()
            .filter(|a| {
                let text = a.search_text().to_lowercase();
                words.iter().all(|w| text.contains(w.as_str()))
            })
            .cloned()
            .collect()
    };
    let items: Vec<Value> = selected
        .iter()
        .map(|a| {
            json!({
                "id": a.id,
                "name": a.spec.display_name.clone().unwrap_or_else(|| a.id.clone()),
                "description": a.spec.description,
                "tags": a.spec.tags,
                "context": a.spec.context,
                "version": a.spec.version,
                "url": a.versioned_path,
                "lifecycle": format!("{:?}", a.spec.lifecycle),
            })
        })
        .collect();
    axum::Json(json!({ "items": items })).into_response()
}

async fn openapi(AxState(s): AxState<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    ([(header::CONTENT_TYPE, "application/json")], crate::store::openapi::DOCUMENT).into_response()
}

//! The catalogue of published APIs (full-text search over the store's
//! tantivy index), an API's page, and its OpenAPI document.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::session::Visitor;
use super::{Layout, Portal, message, page};
use crate::snapshot::{Api, Snapshot};
use tollgate_crds::api_deployment::Lifecycle;
use tollgate_crds::throttle_policy::KeyBy;

/// An API as the pages show it.
pub struct ApiCard {
    pub namespace: String,
    pub name: String,
    pub title: String,
    pub version: String,
    pub path: String,
    pub lifecycle: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
}

impl ApiCard {
    pub fn of(a: &Api) -> ApiCard {
        ApiCard {
            namespace: a.object.namespace.clone(),
            name: a.object.name.clone(),
            title: a.spec.display_name.clone().unwrap_or_else(|| a.object.name.clone()),
            version: a.spec.version.clone(),
            path: a.versioned_path.clone(),
            lifecycle: format!("{:?}", a.spec.lifecycle),
            description: a.spec.description.clone(),
            tags: a.spec.tags.clone(),
        }
    }
}

/// A subscription tier offered for an API.
pub struct Tier {
    pub name: String,
    pub limit: String,
}

/// The APIs developers see: published or deprecated (Created and Blocked
/// ones are not offered).
pub fn listed(snap: &Snapshot) -> Vec<Arc<Api>> {
    let mut apis: Vec<Arc<Api>> = snap
        .apis
        .iter()
        .filter(|a| matches!(a.spec.lifecycle, Lifecycle::Published | Lifecycle::Deprecated))
        .cloned()
        .collect();
    apis.sort_by(|a, b| a.versioned_path.cmp(&b.versioned_path).then(a.id.cmp(&b.id)));
    apis
}

fn period(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{} day{}", s / 86_400, if s == 86_400 { "" } else { "s" }),
        s if s % 3_600 == 0 => format!("{} hour{}", s / 3_600, if s == 3_600 { "" } else { "s" }),
        s if s % 60 == 0 => format!("{} minute{}", s / 60, if s == 60 { "" } else { "s" }),
        s => format!("{s} seconds"),
    }
}

/// The tiers an API can be subscribed with: per-consumer ThrottlePolicies
/// of its namespace and its ApiManager's.
pub fn tiers(snap: &Snapshot, api: &Api) -> Vec<Tier> {
    let ns = &api.object.namespace;
    let mgr_ns = api.spec.api_manager_ref.namespace.as_deref().unwrap_or(ns);
    let mut out: Vec<Tier> = snap
        .policies
        .values()
        .filter(|p| p.key_by == KeyBy::Consumer)
        .filter(|p| {
            let pns = p.id.split_once('/').map(|(n, _)| n).unwrap_or("");
            pns == ns || pns == mgr_ns
        })
        .filter(|p| snap.tier_policy(api, &p.name).is_some_and(|q| q.id == p.id))
        .map(|p| Tier {
            name: p.name.clone(),
            limit: format!("{} requests per {}", p.limit.requests, period(p.limit.period_secs)),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[derive(Template)]
#[template(path = "portal/catalogue.html")]
struct CataloguePage {
    layout: Layout,
    query: String,
    apis: Vec<ApiCard>,
}

#[derive(Deserialize)]
pub struct Search {
    #[serde(default)]
    q: String,
}

pub async fn index(
    State(p): State<Portal>,
    v: Visitor,
    q: Result<Query<Search>, axum::extract::rejection::QueryRejection>,
) -> Response {
    // An unreadable query string searches for nothing.
    let query: String = q.map(|Query(s)| s.q).unwrap_or_default().trim().chars().take(200).collect();
    let snap = p.state.snapshot.load_full();
    let mut apis = listed(&snap);
    if !query.is_empty() {
        let found = match &p.store.search {
            Some(_) => {
                let (store, snap2, q2) = (p.store.clone(), snap.clone(), query.clone());
                tokio::task::spawn_blocking(move || {
                    store.sync_search(&snap2.revision, &snap2.indexed_apis());
                    store.search.as_ref().map(|i| i.search(&q2, 1000))
                })
                .await
            }
            None => Ok(None),
        };
        apis = match found {
            // In the index's order (best first).
            Ok(Some(Ok(ids))) => ids.iter().filter_map(|id| apis.iter().find(|a| &a.id == id).cloned()).collect(),
            Ok(None) => {
                let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
                apis.into_iter()
                    .filter(|a| {
                        let text = a.search_text().to_lowercase();
                        words.iter().all(|w| text.contains(w.as_str()))
                    })
                    .collect()
            }
            other => {
                tracing::error!(result = ?other.map(|o| o.map(|r| r.map(|v| v.len()))), "portal search failed");
                return message(
                    &p,
                    &v,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Search failed",
                    "The search index failed; the gateway log has the details.",
                );
            }
        };
    }
    let t = CataloguePage {
        layout: Layout::new(&p, &v, "APIs"),
        query,
        apis: apis.iter().map(|a| ApiCard::of(a)).collect(),
    };
    page(&p, &v, StatusCode::OK, &t)
}

struct OperationRow {
    method: String,
    path: String,
    scopes: String,
}

#[derive(Template)]
#[template(path = "portal/api.html")]
struct ApiPage {
    layout: Layout,
    api: ApiCard,
    gateway_url: String,
    security: String,
    versions: Vec<ApiCard>,
    tiers: Vec<Tier>,
    operations: Vec<OperationRow>,
}

fn find(snap: &Snapshot, namespace: &str, name: &str) -> Option<Arc<Api>> {
    let id = format!("{namespace}/{name}");
    listed(snap).into_iter().find(|a| a.id == id)
}

fn security_text(a: &Api) -> String {
    let Some(s) = &a.spec.security else { return "None: the API is open.".into() };
    let mut parts = Vec::new();
    if let Some(k) = &s.api_key {
        parts.push(match (&k.header, &k.query) {
            (_, Some(q)) => format!("API key in the query parameter {q}"),
            (Some(h), None) => format!("API key in the {h} header"),
            (None, None) => "API key in the apikey header".into(),
        });
    }
    if s.oauth2.is_some() {
        parts.push("OAuth2 access token (Authorization: Bearer)".into());
    }
    if s.mtls.as_ref().is_some_and(|m| m.required) {
        parts.push("a client certificate (mutual TLS)".into());
    }
    if parts.is_empty() { "None: the API is open.".into() } else { parts.join(", ") }
}

pub async fn api_page(
    State(p): State<Portal>,
    v: Visitor,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let snap = p.state.snapshot.load_full();
    let Some(api) = find(&snap, &namespace, &name) else {
        return message(&p, &v, StatusCode::NOT_FOUND, "No such API", format!("No published API {namespace}/{name}."));
    };
    let versions = listed(&snap)
        .iter()
        .filter(|o| o.spec.context == api.spec.context && o.id != api.id)
        .map(|o| ApiCard::of(o))
        .collect();
    let card = ApiCard::of(&api);
    let t = ApiPage {
        layout: Layout::new(&p, &v, card.title.clone()),
        gateway_url: p.gateway_url.to_string(),
        security: security_text(&api),
        versions,
        tiers: tiers(&snap, &api),
        operations: api
            .spec
            .operations
            .iter()
            .map(|o| OperationRow {
                method: o.method.as_str().to_string(),
                path: o.path.clone(),
                scopes: o.scopes.join(" "),
            })
            .collect(),
        api: card,
    };
    page(&p, &v, StatusCode::OK, &t)
}

pub async fn openapi_document(State(p): State<Portal>, Path((namespace, name)): Path<(String, String)>) -> Response {
    let snap = p.state.snapshot.load_full();
    let Some(api) = find(&snap, &namespace, &name) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": "not_found", "message": "no such API"})),
        )
            .into_response();
    };
    let doc = p.documents.get(&api, &p.gateway_url);
    let mut r = ([(header::CONTENT_TYPE, "application/json")], doc.to_string()).into_response();
    r.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    r
}

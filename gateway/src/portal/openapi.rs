//! The OpenAPI 3 document of an API as the gateway serves it: its server
//! (the gateway URL and the API's path), its operations with their path
//! parameters and scopes, and its security schemes.
//!
//! An API with a definition (the operator carries a ConfigMap's document
//! into the artifact) gets that document: its descriptions, parameters,
//! schemas and examples, with the gateway's server and security in place of
//! the backend's, and only the operations the gateway serves. An API
//! without one gets a document generated from its operations.

use std::sync::{Arc, Weak};

use serde_json::{Map, Value, json};
use tollgate_crds::{ApiDeploymentSpec, api_deployment::Definition};

use crate::snapshot::Api;

/// Bytes of built documents kept.
const DOCUMENTS_BYTES: u64 = 32 * 1024 * 1024;

/// Served documents, built once per compiled API (an API is recompiled
/// whenever its spec, and so its definition, changes).
pub struct Documents {
    built: moka::sync::Cache<String, (Weak<Api>, Arc<str>)>,
}

impl Documents {
    pub fn new() -> Documents {
        // Bounded by size, not count: a definition may be up to 1 MiB.
        let built = moka::sync::Cache::builder()
            .weigher(|id: &String, (_, text): &(Weak<Api>, Arc<str>)| {
                u32::try_from(id.len() + text.len()).unwrap_or(u32::MAX)
            })
            .max_capacity(DOCUMENTS_BYTES)
            .build();
        Documents { built }
    }

    /// The JSON document of `api` served at `<gateway_url><versioned_path>`.
    pub fn get(&self, api: &Arc<Api>, gateway_url: &str) -> Arc<str> {
        // A live Weak keeps its allocation, so pointer equality means the
        // very same compiled API, never a newer one at a reused address.
        let me = Arc::downgrade(api);
        if let Some((seen, text)) = self.built.get(&api.id)
            && Weak::ptr_eq(&seen, &me)
        {
            return text;
        }
        let text: Arc<str> = document(&api.id, &api.spec, gateway_url, &api.versioned_path).to_string().into();
        self.built.insert(api.id.clone(), (me, text.clone()));
        text
    }
}

impl Default for Documents {
    fn default() -> Self {
        Self::new()
    }
}

/// `{name}` segments of an operation path.
fn path_params(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|s| s.trim_end_matches('*').to_string())
        .collect()
}

/// The document for an API served at `<gateway_url><versioned_path>`: its
/// definition's document made to describe the gateway, else a generated one.
pub fn document(id: &str, spec: &ApiDeploymentSpec, gateway_url: &str, versioned_path: &str) -> Value {
    let generated = generated(id, spec, gateway_url, versioned_path);
    let written = spec
        .definition
        .as_ref()
        .and_then(|d| d.document.as_deref())
        .and_then(|text| Definition::parse_document(text).ok());
    match written {
        Some(doc) => served_view(doc, generated, spec),
        None => generated,
    }
}

/// Methods a path item may hold.
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// The written document as the gateway serves it: the gateway's servers and
/// security schemes in place of the document's (backend addresses and the
/// backend's own authentication are not what callers use), the operations
/// the gateway does not serve left out, and served operations the document
/// lacks added from the generated document.
fn served_view(mut doc: Value, generated: Value, spec: &ApiDeploymentSpec) -> Value {
    let every_path_served = spec.operations.is_empty();
    let mut paths = Map::new();
    if let Some(written) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in std::mem::take(written) {
            let Value::Object(mut item) = item else { continue };
            item.remove("servers");
            let generated_item = generated["paths"].get(&path);
            for method in METHODS {
                let Some(op) = item.get_mut(method) else { continue };
                let served = generated_item.and_then(|g| g.get(method));
                if !every_path_served && served.is_none() {
                    item.remove(method);
                    continue;
                }
                if let Some(op) = op.as_object_mut() {
                    op.remove("servers");
                    op.remove("security");
                    if let Some(security) = served.and_then(|g| g.get("security")) {
                        op.insert("security".into(), security.clone());
                    }
                }
            }
            if METHODS.iter().any(|m| item.contains_key(*m)) {
                paths.insert(path, Value::Object(item));
            }
        }
    }
    if !every_path_served && let Some(generated_paths) = generated["paths"].as_object() {
        for (path, generated_item) in generated_paths {
            let item = paths.entry(path.clone()).or_insert_with(|| json!({}));
            for (method, op) in generated_item.as_object().into_iter().flatten() {
                if let Some(item) = item.as_object_mut()
                    && !item.contains_key(method)
                {
                    item.insert(method.clone(), op.clone());
                }
            }
        }
    }
    let Some(obj) = doc.as_object_mut() else { return generated };
    obj.insert("paths".into(), Value::Object(paths));
    obj.insert("servers".into(), generated["servers"].clone());
    obj.remove("security");
    if let Some(security) = generated.get("security") {
        obj.insert("security".into(), security.clone());
    }
    let components = obj.entry("components").or_insert_with(|| json!({}));
    if let Some(components) = components.as_object_mut() {
        components.remove("securitySchemes");
        if let Some(schemes) = generated.get("components").and_then(|c| c.get("securitySchemes")) {
            components.insert("securitySchemes".into(), schemes.clone());
        }
    }
    let info = obj.entry("info").or_insert_with(|| json!({}));
    if let Some(info) = info.as_object_mut() {
        for field in ["title", "version"] {
            if !info.get(field).is_some_and(Value::is_string) {
                info.insert(field.into(), generated["info"][field].clone());
            }
        }
    }
    doc
}

/// The document generated from the API's operations and security.
fn generated(id: &str, spec: &ApiDeploymentSpec, gateway_url: &str, versioned_path: &str) -> Value {
    let mut schemes = Map::new();
    let mut requirement = Map::new();
    if let Some(sec) = &spec.security {
        if let Some(k) = &sec.api_key {
            let (place, name) = match (&k.header, &k.query) {
                (_, Some(q)) => ("query", q.clone()),
                (Some(h), None) => ("header", h.clone()),
                (None, None) => ("header", "apikey".to_string()),
            };
            schemes.insert("apiKey".into(), json!({"type": "apiKey", "in": place, "name": name}));
            requirement.insert("apiKey".into(), json!([]));
        }
        if sec.oauth2.is_some() {
            schemes.insert("oauth2".into(), json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}));
            requirement.insert("oauth2".into(), json!([]));
        }
        if sec.mtls.as_ref().is_some_and(|m| m.required) {
            schemes.insert("mutualTLS".into(), json!({"type": "mutualTLS"}));
            requirement.insert("mutualTLS".into(), json!([]));
        }
    }
    let mut paths = Map::new();
    if spec.operations.is_empty() {
        paths.insert(
            "/{path}".into(),
            json!({"get": {"summary": "Any path under the API", "parameters": [
                {"name": "path", "in": "path", "required": true, "schema": {"type": "string"}}
            ], "responses": {"default": {"description": "The backend's answer"}}}}),
        );
    }
    for op in &spec.operations {
        let path = op.path.replace("*}", "}");
        let entry = paths.entry(path.clone()).or_insert_with(|| json!({}));
        let params: Vec<Value> = path_params(&op.path)
            .into_iter()
            .map(|n| json!({"name": n, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut o = json!({
            "summary": format!("{} {}", op.method.as_str(), op.path),
            "parameters": params,
            "responses": {"default": {"description": "The backend's answer"}},
        });
        if !op.scopes.is_empty() && requirement.contains_key("oauth2") {
            let mut req = requirement.clone();
            req.insert("oauth2".into(), json!(op.scopes));
            o["security"] = json!([req]);
        }
        if let Some(obj) = entry.as_object_mut() {
            obj.insert(op.method.as_str().to_ascii_lowercase(), o);
        }
    }
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": spec.display_name.clone().unwrap_or_else(|| id.to_string()),
            "version": spec.version,
            "description": spec.description.clone().unwrap_or_default(),
        },
        "servers": [{"url": format!("{gateway_url}{versioned_path}")}],
        "paths": paths,
    });
    if !schemes.is_empty() {
        doc["components"] = json!({"securitySchemes": schemes});
        doc["security"] = json!([requirement]);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_security_and_server_are_in_the_document() {
        let spec: ApiDeploymentSpec = serde_json::from_value(json!({
            "apiManagerRef": {"name": "m"}, "context": "/accounts", "version": "v1",
            "backend": {"endpoints": [{"url": "http://b"}]},
            "security": {"apiKey": {"header": "x-key"}, "oauth2": {}},
            "operations": [{"method": "GET", "path": "/accounts/{id}", "scopes": ["accounts"]},
                           {"method": "POST", "path": "/accounts"}],
        }))
        .unwrap();
        let d = document("bank/accounts", &spec, "https://api.bank", "/accounts/v1");
        assert_eq!(d["servers"][0]["url"], "https://api.bank/accounts/v1");
        assert_eq!(d["paths"]["/accounts/{id}"]["get"]["parameters"][0]["name"], "id");
        assert_eq!(d["paths"]["/accounts/{id}"]["get"]["security"][0]["oauth2"], json!(["accounts"]));
        assert!(d["paths"]["/accounts"]["post"].is_object());
        assert_eq!(
            d["components"]["securitySchemes"]["apiKey"],
            json!({"type": "apiKey", "in": "header", "name": "x-key"})
        );
    }

    const WRITTEN: &str = r#"
openapi: 3.0.3
info: {title: Account and Transaction API, version: '3.1.10', description: Accounts of the PSU}
servers: [{url: 'http://accounts.internal:8080/backend'}]
security: [{backendBasic: []}]
paths:
  /accounts:
    servers: [{url: 'http://10.0.0.7'}]
    get:
      summary: Get Accounts
      description: Every account the consent covers.
      security: [{PSUOAuth2Security: [accounts]}]
      responses:
        '200':
          description: Accounts read
          content:
            application/json:
              schema: {$ref: '#/components/schemas/OBReadAccount6'}
              example: {Data: {Account: [{AccountId: '22289'}]}}
  /accounts/{AccountId}/statements:
    get: {summary: Statements, description: Not served by this gateway}
components:
  schemas:
    OBReadAccount6: {type: object, description: The accounts, properties: {Data: {type: object}}}
  securitySchemes:
    backendBasic: {type: http, scheme: basic}
"#;

    fn spec_with(extra: Value) -> ApiDeploymentSpec {
        let mut v = json!({
            "apiManagerRef": {"name": "m"}, "context": "/aisp", "version": "v3.1",
            "backend": {"endpoints": [{"url": "http://b"}]},
            "security": {"oauth2": {}},
            "definition": {"document": WRITTEN},
        });
        for (k, e) in extra.as_object().unwrap() {
            v[k] = e.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_written_definition_is_shown_with_the_gateways_server_and_security() {
        let spec = spec_with(json!({"operations": [
            {"method": "GET", "path": "/accounts", "scopes": ["accounts"]},
            {"method": "POST", "path": "/accounts/{AccountId}/consents"},
        ]}));
        let d = document("bank/aisp", &spec, "https://api.bank", "/aisp/v3.1");
        // The document's own words, schemas and examples.
        assert_eq!(d["info"]["title"], "Account and Transaction API");
        assert_eq!(d["info"]["description"], "Accounts of the PSU");
        let get = &d["paths"]["/accounts"]["get"];
        assert_eq!(get["description"], "Every account the consent covers.");
        let ok = &get["responses"]["200"]["content"]["application/json"];
        assert_eq!(ok["example"]["Data"]["Account"][0]["AccountId"], "22289");
        assert_eq!(ok["schema"]["$ref"], "#/components/schemas/OBReadAccount6");
        assert_eq!(d["components"]["schemas"]["OBReadAccount6"]["description"], "The accounts");
        // The gateway's server and security, never the backend's.
        assert_eq!(d["servers"], json!([{"url": "https://api.bank/aisp/v3.1"}]));
        assert!(d["paths"]["/accounts"].get("servers").is_none(), "{d}");
        assert!(!d.to_string().contains("accounts.internal") && !d.to_string().contains("10.0.0.7"), "{d}");
        assert_eq!(d["security"], json!([{"oauth2": []}]));
        assert_eq!(get["security"], json!([{"oauth2": ["accounts"]}]));
        assert_eq!(
            d["components"]["securitySchemes"],
            json!({"oauth2": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}})
        );
        // Only what the gateway serves: an unserved operation goes, a served
        // one the document lacks is added.
        assert!(d["paths"].get("/accounts/{AccountId}/statements").is_none(), "{d}");
        assert!(d["paths"]["/accounts/{AccountId}/consents"]["post"].is_object(), "{d}");
    }

    #[test]
    fn every_written_operation_stays_when_the_api_serves_every_path() {
        let d = document("bank/aisp", &spec_with(json!({})), "https://api.bank", "/aisp/v3.1");
        assert_eq!(d["paths"]["/accounts/{AccountId}/statements"]["get"]["description"], "Not served by this gateway");
        assert!(d["paths"].get("/{path}").is_none(), "{d}");
        // No operation scopes to show: the document's own requirement goes too.
        assert!(d["paths"]["/accounts"]["get"].get("security").is_none(), "{d}");
    }

    #[test]
    fn an_api_without_a_usable_document_gets_the_generated_one() {
        for document_text in ["swagger: '2.0'\npaths: {}\n", "[not, a, map]", "openapi: [3"] {
            let spec = spec_with(json!({"definition": {"document": document_text},
                "operations": [{"method": "GET", "path": "/accounts"}]}));
            let d = document("bank/aisp", &spec, "https://api.bank", "/aisp/v3.1");
            assert_eq!(d["openapi"], "3.1.0", "{document_text}");
            assert_eq!(d["paths"]["/accounts"]["get"]["summary"], "GET /accounts");
        }
        let mut spec = spec_with(json!({"operations": [{"method": "GET", "path": "/accounts"}]}));
        spec.definition = None;
        assert_eq!(document("bank/aisp", &spec, "https://api.bank", "/aisp/v3.1")["info"]["title"], "bank/aisp");
    }
}

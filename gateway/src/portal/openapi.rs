//! The OpenAPI 3 document of an API as the gateway serves it: its server
//! (the gateway URL and the API's path), its operations with their path
//! parameters and scopes, and its security schemes. The operator derives
//! the operations from the ApiDeployment's definition, so this is the
//! served contract, not the backend's.

use serde_json::{Map, Value, json};
use tollgate_crds::ApiDeploymentSpec;

/// `{name}` segments of an operation path.
fn path_params(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|s| s.trim_end_matches('*').to_string())
        .collect()
}

/// The document for an API served at `<gateway_url><versioned_path>`.
pub fn document(id: &str, spec: &ApiDeploymentSpec, gateway_url: &str, versioned_path: &str) -> Value {
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
}

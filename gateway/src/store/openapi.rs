//! The management API's own OpenAPI document (served at /api/v1/openapi.json).

/// OpenAPI 3 description of /api/v1.
pub const DOCUMENT: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    #[test]
    fn document_is_valid_json_and_lists_every_route() {
        let v: serde_json::Value = serde_json::from_str(super::DOCUMENT).unwrap();
        assert_eq!(v["openapi"], "3.0.3");
        for p in [
            "/api/v1/apis",
            "/api/v1/applications",
            "/api/v1/applications/{id}/keys",
            "/api/v1/subscriptions/{id}",
            "/api/v1/applications/{id}/oauth-clients",
        ] {
            assert!(v["paths"].get(p).is_some(), "{p}");
        }
    }
}

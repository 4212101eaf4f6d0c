//! Cross-origin resource sharing from `spec.cors`.

use tollgate_crds::api_deployment::Cors;

/// Whether `origin` is allowed.
pub fn origin_allowed(cors: &Cors, origin: &str) -> bool {
    cors.allow_origins.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
}

/// Headers for an actual (non-preflight) response to an allowed origin.
pub fn response_headers(cors: &Cors, origin: &str) -> Vec<(String, String)> {
    let mut h = Vec::with_capacity(4);
    let wildcard = cors.allow_origins.iter().any(|o| o == "*") && !cors.allow_credentials;
    h.push(("access-control-allow-origin".into(), if wildcard { "*".into() } else { origin.to_string() }));
    if !wildcard {
        h.push(("vary".into(), "Origin".into()));
    }
    if cors.allow_credentials {
        h.push(("access-control-allow-credentials".into(), "true".into()));
    }
    if !cors.expose_headers.is_empty() {
        h.push(("access-control-expose-headers".into(), cors.expose_headers.join(", ")));
    }
    h
}

/// Headers for a preflight answer, or `None` when the request is not allowed
/// (the preflight is then answered without CORS headers and the browser
/// blocks the call).
pub fn preflight_headers(
    cors: &Cors,
    origin: &str,
    method: &str,
    request_headers: Option<&str>,
    operation_methods: &str,
) -> Option<Vec<(String, String)>> {
    if !origin_allowed(cors, origin) {
        return None;
    }
    let methods: Vec<String> = if cors.allow_methods.is_empty() {
        operation_methods.split(", ").map(str::to_string).collect()
    } else {
        cors.allow_methods.clone()
    };
    if !methods.iter().any(|m| m == "*" || m.eq_ignore_ascii_case(method)) {
        return None;
    }
    if let Some(req) = request_headers {
        for name in req.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !cors.allow_headers.iter().any(|h| h == "*" || h.eq_ignore_ascii_case(name)) {
                return None;
            }
        }
    }
    let mut h = response_headers(cors, origin);
    h.push(("access-control-allow-methods".into(), methods.join(", ")));
    if !cors.allow_headers.is_empty() {
        h.push(("access-control-allow-headers".into(), cors.allow_headers.join(", ")));
    }
    if let Some(age) = cors.max_age {
        h.push(("access-control-max-age".into(), age.to_string()));
    }
    if !h.iter().any(|(n, _)| n == "vary") {
        h.push(("vary".into(), "Origin".into()));
    }
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors {
            allow_origins: vec!["https://tpp.example".into()],
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["authorization".into(), "x-fapi-interaction-id".into()],
            max_age: Some(600),
            ..Default::default()
        }
    }

    #[test]
    fn allowed_preflight_gets_headers() {
        let h = preflight_headers(&cors(), "https://tpp.example", "POST", Some("Authorization"), "GET").unwrap();
        assert!(h.contains(&("access-control-allow-origin".into(), "https://tpp.example".into())));
        assert!(h.contains(&("access-control-max-age".into(), "600".into())));
    }

    #[test]
    fn disallowed_origin_method_or_header_gets_none() {
        assert!(preflight_headers(&cors(), "https://evil.example", "GET", None, "GET").is_none());
        assert!(preflight_headers(&cors(), "https://tpp.example", "DELETE", None, "GET").is_none());
        assert!(preflight_headers(&cors(), "https://tpp.example", "GET", Some("x-secret"), "GET").is_none());
    }
}

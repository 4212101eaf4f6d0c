//! Cross-origin resource sharing from `spec.cors`.

use tollgate_crds::api_deployment::Cors;

/// Whether `origin` is allowed. With `allowCredentials`, only origins listed
/// by name are (the schema refuses `"*"` with credentials; this holds even
/// for a manifest that slipped past it): a credentialed response never
/// reflects an arbitrary origin.
pub fn origin_allowed(cors: &Cors, origin: &str) -> bool {
    cors.allow_origins.iter().any(|o| (o == "*" && !cors.allow_credentials) || o.eq_ignore_ascii_case(origin))
}

/// Headers for an actual (non-preflight) response to an allowed origin.
pub fn response_headers(cors: &Cors, origin: &str) -> Vec<(String, String)> {
    let mut h = Vec::with_capacity(4);
    let named = cors.allow_origins.iter().any(|o| o.eq_ignore_ascii_case(origin));
    let wildcard = !named && cors.allow_origins.iter().any(|o| o == "*") && !cors.allow_credentials;
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

/// Makes a backend response carry exactly the gateway's CORS answer: the
/// backend's own `Access-Control-*` headers go (they would duplicate or widen
/// what `spec.cors` allows), ours are set, and `Origin` appears in `Vary`
/// once, next to the backend's other Vary values.
pub fn apply_to_response(resp: &mut pingora::http::ResponseHeader, ours: &[(String, String)]) -> pingora::Result<()> {
    let backend: Vec<http::HeaderName> =
        resp.headers.keys().filter(|n| n.as_str().starts_with("access-control-")).cloned().collect();
    for n in backend {
        resp.remove_header(&n);
    }
    let mut vary: Vec<String> = resp
        .headers
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    for (n, v) in ours {
        if n == "vary" {
            if !vary.iter().any(|x| x.eq_ignore_ascii_case(v)) {
                vary.push(v.clone());
            }
        } else {
            resp.insert_header(n.clone(), v.as_str())?;
        }
    }
    if !vary.is_empty() {
        resp.insert_header("vary", vary.join(", "))?;
    }
    Ok(())
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
    fn credentials_never_go_to_an_origin_that_is_not_named() {
        let mut c = cors();
        c.allow_origins = vec!["*".into(), "https://tpp.example".into()];
        c.allow_credentials = true;
        assert!(!origin_allowed(&c, "https://evil.example"));
        assert!(preflight_headers(&c, "https://evil.example", "GET", None, "GET").is_none());
        let h = response_headers(&c, "https://tpp.example");
        assert!(h.contains(&("access-control-allow-origin".into(), "https://tpp.example".into())));
        assert!(h.contains(&("access-control-allow-credentials".into(), "true".into())));
        // Without credentials "*" is answered as "*", never as the origin.
        c.allow_credentials = false;
        let h = response_headers(&c, "https://any.example");
        assert!(h.contains(&("access-control-allow-origin".into(), "*".into())));
        assert!(!h.iter().any(|(n, _)| n == "access-control-allow-credentials"));
    }

    #[test]
    fn disallowed_origin_method_or_header_gets_none() {
        assert!(preflight_headers(&cors(), "https://evil.example", "GET", None, "GET").is_none());
        assert!(preflight_headers(&cors(), "https://tpp.example", "DELETE", None, "GET").is_none());
        assert!(preflight_headers(&cors(), "https://tpp.example", "GET", Some("x-secret"), "GET").is_none());
    }
}

//! Pipeline step `cors`: cross-origin resource sharing from `spec.cors`.
//! Every answer to an allowed origin carries the CORS headers (also the
//! gateway's own errors, so a browser can read them); preflights are
//! answered here, without reaching the backend or needing credentials.

use pingora::http::{RequestHeader, ResponseHeader};
use tollgate_crds::api_deployment::Cors;

use super::Flow;
use super::request::{OpMatch, RequestCtx, header};

/// Methods an API without declared operations allows.
pub const ANY_METHOD: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// The compiled `cors` step.
pub struct CorsStep {
    cors: Cors,
}

impl CorsStep {
    pub fn new(cors: Cors) -> CorsStep {
        CorsStep { cors }
    }

    /// Notes the CORS headers for an allowed origin; answers a preflight
    /// (OPTIONS with Access-Control-Request-Method) to a declared path with
    /// 204, with CORS headers only when the origin, method and headers are
    /// allowed (the browser then blocks the call).
    pub fn on_request(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Flow {
        let Some(origin) = header(req, "origin") else { return Flow::Next };
        if origin_allowed(&self.cors, origin) {
            ctx.cors_headers = response_headers(&self.cors, origin);
        }
        let preflight_method = header(req, "access-control-request-method");
        let (true, Some(method)) = (req.method == http::Method::OPTIONS, preflight_method) else {
            return Flow::Next;
        };
        let allow = match &ctx.operation {
            OpMatch::Undeclared => ANY_METHOD,
            OpMatch::Path { allow, .. } => allow,
            // Unknown paths are refused by the operations step.
            OpMatch::NoPath => return Flow::Next,
        };
        let headers =
            preflight_headers(&self.cors, origin, method, header(req, "access-control-request-headers"), allow);
        Flow::Empty { status: 204, headers: headers.unwrap_or_default() }
    }

    /// A backend response carries exactly the gateway's CORS answer.
    pub fn on_response(&self, resp: &mut ResponseHeader, ctx: &RequestCtx) -> pingora::Result<()> {
        apply_to_response(resp, &ctx.cors_headers)
    }
}

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
    fn the_step_answers_preflights_and_notes_headers_for_allowed_origins() {
        use crate::pipeline::test_support::request;
        let step = CorsStep::new(cors());
        let mut ctx = RequestCtx::default();
        let req = request("GET", "/x", &[("origin", "https://tpp.example")]);
        assert!(matches!(step.on_request(&req, &mut ctx), Flow::Next));
        assert!(ctx.cors_headers.contains(&("access-control-allow-origin".into(), "https://tpp.example".into())));

        let mut ctx = RequestCtx::default();
        let req = request("GET", "/x", &[("origin", "https://evil.example")]);
        assert!(matches!(step.on_request(&req, &mut ctx), Flow::Next));
        assert!(ctx.cors_headers.is_empty());

        let preflight = |origin: &str, op: OpMatch| {
            let mut ctx = RequestCtx { operation: op, ..Default::default() };
            let req = request("OPTIONS", "/x", &[("origin", origin), ("access-control-request-method", "POST")]);
            step.on_request(&req, &mut ctx)
        };
        match preflight("https://tpp.example", OpMatch::Undeclared) {
            Flow::Empty { status: 204, headers } => {
                assert!(headers.contains(&("access-control-allow-methods".into(), "GET, POST".into())));
            }
            _ => panic!("preflight answered"),
        }
        match preflight("https://evil.example", OpMatch::Undeclared) {
            Flow::Empty { status: 204, headers } => assert!(headers.is_empty(), "no CORS for a foreign origin"),
            _ => panic!("preflight answered"),
        }
        assert!(matches!(preflight("https://tpp.example", OpMatch::NoPath), Flow::Next), "404 comes later");
    }

    #[test]
    fn disallowed_origin_method_or_header_gets_none() {
        assert!(preflight_headers(&cors(), "https://evil.example", "GET", None, "GET").is_none());
        assert!(preflight_headers(&cors(), "https://tpp.example", "DELETE", None, "GET").is_none());
        assert!(preflight_headers(&cors(), "https://tpp.example", "GET", Some("x-secret"), "GET").is_none());
    }
}

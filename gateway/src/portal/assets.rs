//! The portal's static files, compiled into the binary.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// (path under /portal/assets/, content type, bytes)
const FILES: &[(&str, &str, &[u8])] = &[
    ("portal.css", "text/css; charset=utf-8", include_bytes!("../../assets/portal/portal.css")),
    ("try-it.js", "text/javascript; charset=utf-8", include_bytes!("../../assets/portal/try-it.js")),
    (
        "swagger-ui/swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js"),
    ),
    ("swagger-ui/swagger-ui.css", "text/css; charset=utf-8", include_bytes!("../../assets/swagger-ui/swagger-ui.css")),
    ("swagger-ui/LICENSE", "text/plain; charset=utf-8", include_bytes!("../../assets/swagger-ui/LICENSE")),
    ("swagger-ui/NOTICE", "text/plain; charset=utf-8", include_bytes!("../../assets/swagger-ui/NOTICE")),
];

pub async fn serve(Path(file): Path<String>) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == file) {
        Some((_, ctype, bytes)) => {
            let mut r = ([(header::CONTENT_TYPE, *ctype)], *bytes).into_response();
            let h = r.headers_mut();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
            h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            r
        }
        None => (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "no such file")
            .into_response(),
    }
}

//! The web UI's files (embedded at build time, see `appliance/build.rs`) and the headers
//! every answer of the configuration server carries for browsers.

use super::*;

/// One file of the UI.
pub struct UiFile {
    /// Its path under `/`.
    pub path: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
    /// The same, gzip-compressed, when the UI build made it.
    pub gzip: Option<&'static [u8]>,
}

include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));

/// The content security policy: only this origin's own scripts, styles, images and API;
/// no inline script, no framing, no plugins, forms only to this origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Adds the browser security headers to an answer (whatever it is: a page, an asset, JSON).
pub(super) fn secure_headers(headers: &mut http::HeaderMap) {
    use http::header::{self, HeaderValue};
    let set = |h: &mut http::HeaderMap, name: header::HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(headers, header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(headers, header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::HeaderName::from_static("cross-origin-opener-policy"), "same-origin");
    set(headers, header::HeaderName::from_static("cross-origin-resource-policy"), "same-origin");
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("woff2") => "font/woff2",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// One embedded file: gzip when the browser takes it; `index.html` is revalidated on every
/// load, the hashed assets are cached for good.
fn file(path: &str, headers: &http::HeaderMap) -> Result<Response<ResponseBody>, ApiError> {
    use http_body_util::BodyExt as _;
    let Some(UiFile { bytes, gzip: gz, .. }) = UI_FILES.iter().find(|f| f.path == path) else {
        return Err(ApiError::not_found("not_found", format!("no such file: /{path}")));
    };
    let gzip_ok = headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| e.split(';').next().is_some_and(|n| n.trim().eq_ignore_ascii_case("gzip")));
    let (body, encoding) = match gz {
        Some(z) if gzip_ok => (*z, Some("gzip")),
        _ => (*bytes, None),
    };
    let cache =
        if path == "index.html" { "no-cache" } else { "public, max-age=31536000, immutable" };
    let mut r = Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, content_type(path))
        .header(http::header::CACHE_CONTROL, cache)
        .header(http::header::VARY, "accept-encoding");
    if let Some(e) = encoding {
        r = r.header(http::header::CONTENT_ENCODING, e);
    }
    let full = http_body_util::Full::new(bytes::Bytes::from_static(body))
        .map_err(|never| match never {})
        .boxed_unsync();
    r.body(full).map_err(|e| ApiError::internal(e.to_string()))
}

/// `GET /`: the UI's page (it routes by the URL's fragment).
pub(super) async fn index(headers: http::HeaderMap) -> Answer {
    file("index.html", &headers)
}

/// `GET /assets/{file}`: the UI's scripts and styles.
pub(super) async fn asset(Path(name): Path<String>, headers: http::HeaderMap) -> Answer {
    if name.contains('/') || name.starts_with('.') {
        return Err(ApiError::not_found("not_found", "no such file"));
    }
    file(&format!("assets/{name}"), &headers)
}

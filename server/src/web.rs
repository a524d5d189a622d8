//! The web client, served from the binary itself: `web/dist` is embedded at compile time in
//! release builds (one binary is the whole product); debug builds read the same folder from
//! disk, so a rebuilt bundle shows up without recompiling the server.
//!
//! Any path that is not a file (`/`, `/r/{room}`) gets `index.html`, so room links work as
//! deep links.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

/// The built web client (`cargo xtask web` writes it).
#[derive(RustEmbed)]
#[folder = "../web/dist"]
#[allow_missing = true]
struct Bundle;

/// Serves a bundle file, or `index.html` for app routes.
pub async fn serve(uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().trim_start_matches('/');
    let looks_like_file = path.rsplit('/').next().is_some_and(|last| last.contains('.'));
    let (name, file) = match Bundle::get(path) {
        Some(file) if !path.is_empty() => (path, file),
        _ if looks_like_file => return (StatusCode::NOT_FOUND, "not found").into_response(),
        _ => match Bundle::get("index.html") {
            Some(file) => ("index.html", file),
            None => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The web client is not built: run `cargo xtask run` (it builds it), or `cargo xtask web`.",
                )
                    .into_response();
            }
        },
    };
    let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..16]));
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mime = file.metadata.mimetype().to_owned();
    let mut response = Response::new(Body::from(file.data.into_owned()));
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&mime) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    // File names carry no hash, so browsers revalidate (cheap: 304 via the ETag).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let _ = name;
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

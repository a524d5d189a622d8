//! The web client, served from the binary itself: `web/dist` is embedded at compile time in
//! release builds (one binary is the whole product); debug builds read the same folder from
//! disk, so a rebuilt bundle shows up without recompiling the server.
//!
//! Any path that is not a file (`/`, `/r/{room}`) gets `index.html`, so room links work as
//! deep links.
//!
//! `index.html` names every other file with its version, `/huddle_web_bg.wasm?v=<hash>`, and
//! such a versioned URL is served as immutable: a returning visitor's browser then loads it from
//! its HTTP cache without asking the server again (the service worker, `assets/sw.js`, keeps
//! copies too, for a page it serves offline). Unversioned URLs are revalidated on every use
//! (cheap: a 304 via the ETag). The HTML itself is always revalidated, so a new build is picked
//! up at the next load.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

/// The built web client (`cargo xtask web` writes it).
#[derive(RustEmbed)]
#[folder = "../web/dist"]
#[allow_missing = true]
struct Bundle;

/// Files whose URLs `index.html` versions: all but the HTML and the service worker (whose URL
/// must stay the same for its registration).
fn versioned(name: &str) -> bool {
    name != "index.html" && name != "sw.js"
}

/// A file's version: the start of its SHA-256, as in its ETag.
fn version(file: &rust_embed::EmbeddedFile) -> String {
    hex(&file.metadata.sha256_hash()[..8])
}

/// `html` with every quoted reference to a bundle file (`"/huddle_web.js"`) given its version
/// (`"/huddle_web.js?v=…"`).
fn with_versions(html: &str) -> String {
    let files = Bundle::iter()
        .filter(|name| versioned(name))
        .filter_map(|name| Bundle::get(&name).map(|file| (name.into_owned(), version(&file))));
    add_versions(html, files)
}

/// `html` with each `"/<name>"` or `'/<name>'` of `files` (name, version) turned into
/// `"/<name>?v=<version>"`.
fn add_versions(html: &str, files: impl IntoIterator<Item = (String, String)>) -> String {
    let mut out = html.to_owned();
    for (name, v) in files {
        for quote in ['"', '\''] {
            out = out.replace(
                &format!("{quote}/{name}{quote}"),
                &format!("{quote}/{name}?v={v}{quote}"),
            );
        }
    }
    out
}

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
    let mime = file.metadata.mimetype().to_owned();
    // Immutable only when the URL names this very version (an older page may still ask for
    // an older one: it gets today's file, revalidated like any unversioned URL).
    let immutable = versioned(name)
        && uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == format!("v={}", version(&file))));
    // The HTML's content includes the other files' versions, so its ETag is taken from what is
    // sent: a new wasm under an unchanged `index.html` still changes it.
    let (body, etag) = if name == "index.html" {
        let html = with_versions(&String::from_utf8_lossy(&file.data));
        let etag = format!("\"{}-{:08x}\"", version(&file), crc32fast::hash(html.as_bytes()));
        (Body::from(html), etag)
    } else {
        let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..16]));
        (Body::from(file.data.into_owned()), etag)
    };
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut response = Response::new(body);
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&mime) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if immutable {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_each_file_with_its_version_and_nothing_else_changes() {
        let html = r#"<link href="/huddle_web.js"><script>import x from '/huddle_web.js'; f('/huddle_web_bg.wasm'); g("/huddle_web.jsx"); register('/sw.js')</script>"#;
        let files = [
            ("huddle_web.js".to_owned(), "aa".to_owned()),
            ("huddle_web_bg.wasm".to_owned(), "bb".to_owned()),
        ];
        assert_eq!(
            add_versions(html, files),
            r#"<link href="/huddle_web.js?v=aa"><script>import x from '/huddle_web.js?v=aa'; f('/huddle_web_bg.wasm?v=bb'); g("/huddle_web.jsx"); register('/sw.js')</script>"#
        );
        assert!(!versioned("sw.js") && !versioned("index.html") && versioned("assets/style.css"));
    }
}

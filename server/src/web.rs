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
    name != "index.html" && name != "sw.js" && !is_variant(name)
}

/// Precompressed copies that `cargo xtask web` writes beside a file (`x.wasm.br`, `x.wasm.gz`),
/// best first, with the content coding each is sent as.
const VARIANTS: [(&str, &str); 2] = [("br", "br"), ("gz", "gzip")];

/// Whether `name` is a precompressed copy of another file rather than a file of its own.
fn is_variant(name: &str) -> bool {
    VARIANTS.iter().any(|(ext, _)| name.strip_suffix(ext).is_some_and(|n| n.ends_with('.')))
}

/// Whether an `Accept-Encoding` header value accepts `coding` (named, or by `*`, and not with
/// `q=0`).
fn accepts(accept_encoding: &str, coding: &str) -> bool {
    let mut by_star = false;
    for item in accept_encoding.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or_default().trim();
        let refused = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        if name.eq_ignore_ascii_case(coding) {
            return !refused;
        }
        if name == "*" {
            by_star = !refused;
        }
    }
    by_star
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
    // Other files go out precompressed when the browser takes it (the compression layer leaves
    // a response that has a `Content-Encoding` alone). Each coding has its own ETag, which
    // still starts with the version (the service worker checks that).
    let accept = headers.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut coding = None;
    let (body, etag) = if name == "index.html" {
        let html = with_versions(&String::from_utf8_lossy(&file.data));
        let etag = format!("\"{}-{:08x}\"", version(&file), crc32fast::hash(html.as_bytes()));
        (Body::from(html), etag)
    } else {
        let hash = hex(&file.metadata.sha256_hash()[..16]);
        let variant = VARIANTS
            .iter()
            .filter(|(_, c)| accepts(accept, c))
            .find_map(|(ext, c)| Bundle::get(&format!("{name}.{ext}")).map(|v| (v, *ext, *c)));
        match variant {
            Some((v, ext, c)) => {
                coding = Some(c);
                (Body::from(v.data.into_owned()), format!("\"{hash}-{ext}\""))
            }
            None => (Body::from(file.data.into_owned()), format!("\"{hash}\"")),
        }
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
    if name != "index.html" {
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if let Some(c) = coding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(c));
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
        assert!(!versioned("huddle_web_bg.wasm.br") && !versioned("assets/style.css.gz"));
        assert!(versioned("assets/logo.brand.svg"));
    }

    #[test]
    fn a_coding_is_used_only_when_the_browser_accepts_it() {
        // What Chromium sends over plain HTTP, and over HTTPS.
        assert!(accepts("gzip, deflate", "gzip") && !accepts("gzip, deflate", "br"));
        assert!(accepts("gzip, deflate, br, zstd", "br"));
        assert!(!accepts("", "gzip"));
        assert!(!accepts("br;q=0, gzip;q=0.5", "br") && accepts("br;q=0, gzip;q=0.5", "gzip"));
        assert!(accepts("*", "br") && !accepts("*, br;q=0", "br") && !accepts("*;q=0", "gzip"));
        assert!(accepts("GZIP", "gzip") && !accepts("gzipx", "gzip"));
    }
}

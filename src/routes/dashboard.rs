//! The live web dashboard: HTML pages rendered from `templates/` and the small JavaScript
//! client, stylesheet and icon they load. Everything is embedded in the binary with
//! `include_str!`, so the server never reads a file at run time and needs no front-end build.
//!
//! Pages are shells: the client (`templates/assets/switchyard.js`) fills them over REST and
//! `/ws`, with the caller's token when the server has a secret. The only per-request value is
//! whether the server asks for a token (`data-auth` on `<body>`), so the page can ask for one
//! before its first request instead of collecting a 401.
//!
//! The Switchyard client library (`clients/js/`, an ES module apps import) is served at
//! `/client.js` with its types at `/client.d.ts`; the dashboard's own script imports it, so
//! there is one client. Pages on other origins load it too (`<script type="module">` is a CORS
//! request), so it carries `Access-Control-Allow-Origin: *`: it is public and sent without
//! credentials.
//!
//! Caching: pages are `no-cache` (always revalidated, so a new binary shows at once). Assets are
//! linked as `/assets/<name>?v=<content hash>`; a request carrying the current hash is
//! `immutable` for a year, anything else is `no-cache`. Every response has a strong `ETag`
//! and answers `If-None-Match` with 304.

use std::sync::OnceLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::{AppError, ErrorCode};
use crate::state::AppState;

const LAYOUT: &str = include_str!("../../templates/layout.html");

/// One dashboard page: its name (`data-page`, which the client dispatches on), the nav entry it
/// belongs to, its `<title>` and its body template.
struct Page {
    name: &'static str,
    href: &'static str,
    nav: Option<&'static str>,
    title: &'static str,
    body: &'static str,
}

const PAGES: &[Page] = &[
    Page {
        name: "overview",
        href: "/",
        nav: Some("Overview"),
        title: "Overview",
        body: include_str!("../../templates/overview.html"),
    },
    Page {
        name: "operations",
        href: "/operations",
        nav: Some("Operations"),
        title: "Operations",
        body: include_str!("../../templates/operations.html"),
    },
    Page {
        name: "operation",
        href: "/operations",
        nav: None,
        title: "Operation",
        body: include_str!("../../templates/operation.html"),
    },
    Page {
        name: "activity",
        href: "/activity",
        nav: Some("Activity"),
        title: "Activity",
        body: include_str!("../../templates/activity.html"),
    },
    Page {
        name: "rooms",
        href: "/rooms",
        nav: Some("Rooms"),
        title: "Rooms",
        body: include_str!("../../templates/rooms.html"),
    },
];

/// A static file served under `/assets/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "switchyard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../templates/assets/switchyard.js"),
    },
    Asset {
        name: "charts.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../templates/assets/charts.js"),
    },
    Asset {
        name: "switchyard.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../templates/assets/switchyard.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../templates/assets/favicon.svg"),
    },
];

/// The client library, `GET /client.js` and `GET /client.d.ts` (from `clients/js/`).
const CLIENT: &[Asset] = &[
    Asset {
        name: "js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../clients/js/switchyard.js"),
    },
    Asset {
        name: "d.ts",
        content_type: "application/typescript; charset=utf-8",
        body: include_bytes!("../../clients/js/switchyard.d.ts"),
    },
];

/// Scripts, styles and connections from this origin only; no inline code, no framing.
/// (`connect-src 'self'` covers `ws:`/`wss:` to the same host in CSP Level 3.)
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// FNV-1a, 64 bits: a stable content hash for cache-busting and `ETag`s (not for security).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The hash of every asset together: the `?v=` that pages link assets with.
fn asset_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        // The dashboard's script imports the client library: a new library is a new version.
        let bodies: Vec<&[u8]> = ASSETS.iter().chain(CLIENT).map(|a| a.body).collect();
        format!("{:012x}", fnv1a(&bodies) & 0xffff_ffff_ffff)
    })
}

/// Pages rendered once, except for the `{{auth}}` placeholder that depends on the server.
fn rendered() -> &'static [(String, String)] {
    static RENDERED: OnceLock<Vec<(String, String)>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        PAGES
            .iter()
            .map(|p| {
                let html = LAYOUT
                    .replace("{{nav}}", &nav(p))
                    .replace("{{content}}", p.body)
                    .replace("{{title}}", p.title)
                    .replace("{{page}}", p.name)
                    .replace("{{version}}", env!("CARGO_PKG_VERSION"))
                    .replace("{{asset_version}}", asset_version());
                let etag = format!("\"p{:016x}\"", fnv1a(&[html.as_bytes()]));
                (html, etag)
            })
            .collect()
    })
}

/// The navigation list, with `aria-current="page"` on the page's own entry (the detail page
/// counts as Operations).
fn nav(current: &Page) -> String {
    PAGES
        .iter()
        .filter_map(|p| p.nav.map(|label| (p, label)))
        .map(|(p, label)| {
            let here = p.href == current.href;
            format!(
                "<li><a href=\"{}\"{}>{}</a></li>",
                p.href,
                if here { " aria-current=\"page\"" } else { "" },
                label
            )
        })
        .collect()
}

fn not_modified(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

fn page(name: &str, req: &HttpRequest, state: &AppState) -> HttpResponse {
    let Some(i) = PAGES.iter().position(|p| p.name == name) else {
        return HttpResponse::NotFound().finish();
    };
    let (html, etag) = &rendered()[i];
    let auth = if state.auth.open_mode() {
        "open"
    } else {
        "required"
    };
    // The auth mode is part of the representation: fold it into the tag.
    let etag = format!("{}-{auth}\"", etag.trim_end_matches('"'));
    let unchanged = not_modified(req, &etag);
    let mut res = if unchanged {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::ETAG, etag.as_str()))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    if unchanged {
        return res.finish();
    }
    res.content_type("text/html; charset=utf-8")
        .body(html.replace("{{auth}}", auth))
}

/// `GET /`: the overview (connection, live stats, health, active operations).
pub async fn overview(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    page("overview", &req, &state)
}

/// `GET /operations`: the live list with filters, the demo button and cancel buttons.
pub async fn operations(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    page("operations", &req, &state)
}

/// `GET /operations/{id}`: one operation; the client reads the id from the path.
pub async fn operation(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let id = path.into_inner();
    let plausible = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !plausible {
        return Err(AppError::new(
            ErrorCode::NotFound,
            format!("no operation page for {id:?}"),
        ));
    }
    Ok(page("operation", &req, &state))
}

/// `GET /activity`: the global feed.
pub async fn activity(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    page("activity", &req, &state)
}

/// `GET /rooms`: rooms with members and presence.
pub async fn rooms(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    page("rooms", &req, &state)
}

#[derive(serde::Deserialize)]
pub struct AssetQuery {
    v: Option<String>,
}

/// `GET /assets/{name}`: the client scripts, the stylesheet and the icon.
pub async fn asset(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<AssetQuery>,
) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let asset = ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| AppError::new(ErrorCode::NotFound, format!("no asset {name:?}")))?;
    Ok(serve(&req, asset, query.v.as_deref()).finish_with(asset))
}

/// `GET /client.js` and `GET /client.d.ts`: the client library and its types, for any origin.
pub async fn client(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<AssetQuery>,
) -> Result<HttpResponse, AppError> {
    let ext = path.into_inner();
    let file = CLIENT
        .iter()
        .find(|a| a.name == ext)
        .ok_or_else(|| AppError::new(ErrorCode::NotFound, format!("no client.{ext}")))?;
    let mut res = serve(&req, file, query.v.as_deref());
    res.0
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"));
    Ok(res.finish_with(file))
}

/// A response being built for a static file, and whether it is a 304.
struct Static(actix_web::HttpResponseBuilder, bool);

impl Static {
    fn finish_with(mut self, file: &Asset) -> HttpResponse {
        if self.1 {
            return self.0.finish();
        }
        self.0
            .insert_header((
                header::CONTENT_TYPE,
                HeaderValue::from_static(file.content_type),
            ))
            .body(file.body)
    }
}

/// The caching headers of a static file: `immutable` when linked with the current `?v=` hash,
/// else `no-cache`; a strong `ETag` answering `If-None-Match` with 304.
fn serve(req: &HttpRequest, file: &Asset, version: Option<&str>) -> Static {
    let etag = format!("\"a{:016x}\"", fnv1a(&[file.body]));
    let cache = if version == Some(asset_version()) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let unchanged = not_modified(req, &etag);
    let mut res = if unchanged {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::CACHE_CONTROL, cache))
        .insert_header((header::ETAG, etag))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    Static(res, unchanged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_renders_without_leftover_placeholders_except_auth() {
        for (html, _) in rendered() {
            let rest = html.replace("{{auth}}", "");
            assert!(!rest.contains("{{"), "placeholder left in:\n{rest}");
            assert!(html.contains("data-auth=\"{{auth}}\""));
            assert!(html.contains(asset_version()));
        }
    }

    #[test]
    fn the_current_page_is_marked_in_the_nav() {
        let ops = &PAGES[1];
        let n = nav(ops);
        assert!(n.contains("<a href=\"/operations\" aria-current=\"page\">Operations</a>"));
        assert!(n.contains("<a href=\"/\">Overview</a>"));
        // The detail page belongs to Operations.
        assert_eq!(nav(&PAGES[2]), n);
    }

    #[test]
    fn pages_load_nothing_from_other_origins() {
        let sources = PAGES.iter().map(|p| p.body).chain([LAYOUT]).chain(
            ASSETS
                .iter()
                .chain(CLIENT)
                .filter_map(|a| std::str::from_utf8(a.body).ok()),
        );
        for text in sources {
            assert!(!text.contains("https://"), "external URL in a template");
            assert!(!text.contains("//cdn"), "CDN reference in a template");
        }
    }
}

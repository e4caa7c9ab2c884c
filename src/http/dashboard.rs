//! The live web dashboard: `GET /` (the page), `GET /assets/{app.js,app.css}` and
//! `GET /api/dashboard` (what the page needs besides the API: nodes in configuration
//! order with their own `astdb.txt` names).
//!
//! The page is plain HTML, CSS and JavaScript in `web/`, embedded in the binary with
//! `include_str!`: no build step, nothing fetched from elsewhere. Every page response
//! carries a Content-Security-Policy without `unsafe-inline`, `X-Frame-Options: DENY` and
//! `Referrer-Policy: no-referrer` (`X-Content-Type-Options: nosniff` is added to every
//! answer by the router). Assets are revalidated with an `ETag`, so an upgraded daemon
//! never serves stale script. See `docs/dashboard.md`.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::{Ctx, json_reply};

/// The page's policy: only its own script, style and connections (plus the WebSocket).
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                       connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'; \
                       base-uri 'none'; form-action 'self'";

/// One embedded file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
}

const INDEX: Asset = Asset {
    body: include_str!("../../web/index.html"),
    content_type: "text/html; charset=utf-8",
};
const APP_JS: Asset = Asset {
    body: include_str!("../../web/app.js"),
    content_type: "text/javascript; charset=utf-8",
};
const APP_CSS: Asset = Asset {
    body: include_str!("../../web/app.css"),
    content_type: "text/css; charset=utf-8",
};

/// The page's routes.
pub(super) fn routes(
    ctx: Arc<Ctx>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let index = warp::path::end()
        .and(warp::get())
        .and(warp::header::optional::<String>("if-none-match"))
        .map(|inm: Option<String>| asset_reply(&INDEX, inm.as_deref()));
    let assets = warp::path!("assets" / String)
        .and(warp::get())
        .and(warp::header::optional::<String>("if-none-match"))
        .and_then(|name: String, inm: Option<String>| async move {
            let asset = match name.as_str() {
                "app.js" => &APP_JS,
                "app.css" => &APP_CSS,
                _ => return Err(warp::reject::not_found()),
            };
            Ok::<_, Rejection>(asset_reply(asset, inm.as_deref()))
        });
    // Behind the read gate like every read: it names the configured nodes.
    let meta = warp::path!("api" / "dashboard")
        .and(warp::get())
        .and(super::auth::guard(ctx.clone()))
        .map(move |a: super::auth::ReadAccess| meta(&ctx, a.identity.limit()));
    index.or(assets).unify().or(meta).unify()
}

/// The ETag of an asset: a hash of its bytes and the version, computed once.
fn etag(asset: &Asset) -> &'static str {
    static TAGS: OnceLock<[String; 3]> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        [&INDEX, &APP_JS, &APP_CSS].map(|a| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            env!("CARGO_PKG_VERSION").hash(&mut h);
            a.body.hash(&mut h);
            format!("\"{:016x}\"", h.finish())
        })
    });
    let i = if std::ptr::eq(asset.body, INDEX.body) {
        0
    } else if std::ptr::eq(asset.body, APP_JS.body) {
        1
    } else {
        2
    };
    &tags[i]
}

/// An asset with its security and cache headers; `304` when the client's copy is current.
fn asset_reply(asset: &Asset, if_none_match: Option<&str>) -> Response {
    let tag = etag(asset);
    let fresh = if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut res = if fresh {
        warp::reply::with_status(warp::reply(), StatusCode::NOT_MODIFIED).into_response()
    } else {
        warp::reply::with_header(asset.body, header::CONTENT_TYPE, asset.content_type)
            .into_response()
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Revalidate every time: cheap (304) and never stale after an upgrade.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(tag) {
        h.insert(header::ETAG, v);
    }
    res
}

/// One configured node as the page's card header shows it.
#[derive(Serialize)]
struct MetaNode {
    node_id: String,
    server: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    callsign: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<String>,
}

#[derive(Serialize)]
struct Meta {
    version: &'static str,
    /// Every configured node, in configuration order.
    nodes: Vec<MetaNode>,
}

/// `GET /api/dashboard`: the nodes in configuration order with their astdb names (only
/// its nodes for an identity limited by `nodes:`).
fn meta(ctx: &Ctx, limit: Option<&[String]>) -> Response {
    let db = ctx.app.state.read().astdb.clone();
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let nodes = ctx
        .app
        .config
        .servers
        .iter()
        .flat_map(|s| s.nodes.iter().map(move |n| (s, n)))
        .filter(|(_, n)| limit.is_none_or(|l| l.contains(&n.node_id)))
        .map(|(s, n)| {
            let entry = db.get(&n.node_id);
            MetaNode {
                node_id: n.node_id.clone(),
                server: s.name.clone(),
                callsign: entry.and_then(|e| non_empty(&e.callsign)),
                description: entry.and_then(|e| non_empty(&e.description)),
                location: entry.and_then(|e| non_empty(&e.location)),
            }
        })
        .collect();
    json_reply(
        StatusCode::OK,
        &Meta {
            version: env!("CARGO_PKG_VERSION"),
            nodes,
        },
    )
}

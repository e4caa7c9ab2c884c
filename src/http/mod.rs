//! The HTTP surface: the REST API (`/api/...`), the resumable WebSocket stream (`/ws`)
//! and the Prometheus endpoint (`/metrics`), served with warp on a listener the caller
//! binds (tests use port 0).
//!
//! Every reader answers from memory ([`App`]: the state store, alert history, script
//! table, metrics registry) and never waits on AMI. Every error is JSON
//! (`{"error": "..."}`). No CORS headers are sent: browsers may only use the API from the
//! same origin, or through a reverse proxy that serves the dashboard; WebSocket handshakes
//! and POSTs that carry a foreign `Origin` are refused ([`origin`]). Nothing from the
//! configuration is serialised (it holds AMI passwords). See `docs/api.md`.

pub mod auth;
mod body_pool;
mod control;
mod dashboard;
mod errors;
mod history;
mod metrics;
mod openapi;
mod origin;
mod rest;
mod server;
mod ws;
mod wsframe;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use warp::http::{HeaderValue, Method, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::app::App;
pub use errors::ApiReject;

/// Largest request body accepted (no route takes a body today).
pub const MAX_BODY_BYTES: u64 = 16 * 1024;

/// How long shutdown waits for in-flight requests and WebSocket goodbyes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// One route of the API: its method and path template (`{id}` matches one segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
}

/// Every route, in documentation order. `docs/api.md` and the OpenAPI document list the
/// same set; the request counter labels requests with these templates.
pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/api/health",
    },
    Route {
        method: "GET",
        path: "/api/nodes",
    },
    Route {
        method: "GET",
        path: "/api/nodes/{id}",
    },
    Route {
        method: "POST",
        path: "/api/nodes/{id}/poll",
    },
    Route {
        method: "GET",
        path: "/api/nodes/{id}/voter",
    },
    Route {
        method: "GET",
        path: "/api/alerts",
    },
    Route {
        method: "GET",
        path: "/api/scripts",
    },
    Route {
        method: "GET",
        path: "/api/history/keyups",
    },
    Route {
        method: "GET",
        path: "/api/history/links",
    },
    Route {
        method: "GET",
        path: "/api/history/ami",
    },
    Route {
        method: "GET",
        path: "/api/history/alerts",
    },
    Route {
        method: "GET",
        path: "/api/stats/talkers",
    },
    Route {
        method: "GET",
        path: "/api/stats/activity",
    },
    Route {
        method: "GET",
        path: "/api/openapi.json",
    },
    Route {
        method: "POST",
        path: "/api/login",
    },
    Route {
        method: "POST",
        path: "/api/logout",
    },
    Route {
        method: "GET",
        path: "/api/session",
    },
    Route {
        method: "POST",
        path: "/api/nodes/{id}/links",
    },
    Route {
        method: "DELETE",
        path: "/api/nodes/{id}/links",
    },
    Route {
        method: "DELETE",
        path: "/api/nodes/{id}/links/{target}",
    },
    Route {
        method: "GET",
        path: "/api/audit",
    },
    Route {
        method: "GET",
        path: "/api/dashboard",
    },
    Route {
        method: "GET",
        path: "/ws",
    },
    Route {
        method: "GET",
        path: "/metrics",
    },
];

/// Whether a request path matches a template.
fn template_matches(template: &str, path: &str) -> bool {
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) if ts.starts_with('{') => {
                if ps.is_empty() {
                    return false;
                }
            }
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return false,
        }
    }
}

/// The route template a path belongs to (`/api/nodes/{id}`), or `unmatched`: a bounded
/// label set for `nexus_http_requests_total`.
pub fn route_label(path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|r| template_matches(r.path, path))
        .map(|r| r.path)
        .unwrap_or("unmatched")
}

/// The methods a path accepts (empty when the path is unknown).
fn allowed_methods(path: &str) -> Vec<&'static str> {
    ROUTES
        .iter()
        .filter(|r| template_matches(r.path, path))
        .map(|r| r.method)
        .collect()
}

/// What every request handler can reach. Cheap to share.
pub(crate) struct Ctx {
    pub app: App,
    pub hub: ws::Hub,
    pub shutdown: CancellationToken,
    /// `POST /api/nodes/{id}/poll` per client address.
    pub poll_limit: rest::PollLimiter,
}

/// A JSON reply with `status`; API data is live, so it is never cached.
pub(crate) fn json_reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let mut res = warp::reply::with_status(warp::reply::json(body), status).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// [`json_reply`] for a body already encoded as JSON (same headers).
pub(crate) fn json_bytes_reply(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response {
    let mut res = warp::http::Response::new(body.into()).into_response();
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Serves the API on `listener` until `shutdown` is cancelled, then stops accepting,
/// says goodbye to WebSocket clients (close 1001), lets in-flight requests finish and
/// returns — within [`SHUTDOWN_GRACE`] (5 s).
pub async fn serve(
    app: App,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with_grace(app, listener, shutdown, SHUTDOWN_GRACE).await
}

/// [`serve`] with a chosen grace period: after `grace`, connections still open are closed.
pub async fn serve_with_grace(
    app: App,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("the HTTP listener has no local address")?;
    let limits = server::Limits::new(&app.config.http);
    let ctx = Arc::new(Ctx {
        poll_limit: rest::PollLimiter::new(app.config.http.poll_requests_per_minute),
        app,
        hub: ws::Hub::default(),
        shutdown: shutdown.clone(),
    });
    let server = server::Server::new(
        handler(routes(ctx.clone()).map(Reply::into_response)),
        limits.clone(),
        shutdown.clone(),
        ctx.app.metrics.clone(),
    );
    tracing::info!(
        "[HTTP] listening on http://{addr} (REST /api, WebSocket /ws, Prometheus /metrics; at most {} connections, {} per address)",
        limits.max_total,
        limits.max_per_ip
    );
    // 1. Stop accepting (the listener is closed when the loop returns).
    server.accept_loop(listener).await;
    tracing::info!(
        "[HTTP] shutting down: no new connections; finishing {} open connection(s), closing WebSockets (1001)",
        server.registry.len()
    );
    // 2. WebSocket clients see the same token and send their close frames; HTTP
    //    connections finish the request in flight with keep-alive off.
    server.conns.close();
    ctx.hub.tracker.close();
    let finished = async {
        server.conns.wait().await;
        ctx.hub.tracker.wait().await;
    };
    // 3. Past the grace period, whatever is left is closed.
    if tokio::time::timeout(grace, finished).await.is_err() {
        tracing::warn!(
            "[HTTP] connections still open {:?} after shutdown: closing them",
            grace
        );
        server.force.cancel();
    }
    tracing::info!("[HTTP] stopped");
    Ok(())
}

/// The routes as one boxed request handler for the accept loop.
fn handler<F>(filter: F) -> server::Handler
where
    F: Filter<Extract = (Response,), Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let svc = warp::service(filter);
    Arc::new(move |req| {
        let mut svc = svc.clone();
        Box::pin(async move {
            match tower_service::Service::call(&mut svc, req).await {
                Ok(res) => res,
                Err(never) => match never {},
            }
        })
    })
}

/// 421 for a `Host` that is not this daemon's (DNS rebinding): see [`origin::host_allowed`].
fn host_check(ctx: Arc<Ctx>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("host")
        .and_then(move |host: Option<String>| {
            let allowed = match &host {
                // HTTP/1.0 without Host: not a browser.
                None => true,
                Some(h) => origin::host_allowed(h, &ctx.app.config.http.allowed_hosts),
            };
            async move {
                if allowed {
                    return Ok(());
                }
                let host = host.unwrap_or_default();
                Err(ApiReject::rejection(
                    StatusCode::MISDIRECTED_REQUEST,
                    format!(
                        "host {:?} is not served here: use an IP address or localhost, or add the name to http.allowed_hosts",
                        errors::clip(&host)
                    ),
                ))
            }
        })
        .untuple_one()
}

/// Every route, the JSON error handling, the request counter and the common headers.
fn routes(
    ctx: Arc<Ctx>,
) -> impl Filter<Extract = (impl Reply,), Error = std::convert::Infallible> + Clone + Send + Sync + 'static
{
    let reads = rest::routes(ctx.clone())
        .or(history::routes(ctx.clone()))
        .unify()
        .or(ws::route(ctx.clone()))
        .unify()
        .or(metrics::route(ctx.clone()))
        .unify();
    let api = control::routes(ctx.clone())
        .or(auth::guard(ctx.clone()).and(reads).and_then(auth::mask))
        .unify()
        .or(dashboard::routes(ctx.clone()))
        .unify()
        .or(wrong_method())
        .unify();
    let counted = ctx.app.metrics.clone();
    host_check(ctx.clone())
        .and(body_limit())
        .and(api)
        .recover(errors::recover)
        .unify()
        .map(|mut res: Response| {
            res.headers_mut().insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            res
        })
        .with(warp::log::custom(move |info: warp::log::Info<'_>| {
            let status = info.status().as_u16();
            let class = match status {
                100..=199 => "1xx",
                200..=299 => "2xx",
                300..=399 => "3xx",
                400..=499 => "4xx",
                _ => "5xx",
            };
            counted
                .http_requests
                .with_label_values(&[route_label(info.path()), class])
                .inc();
            tracing::debug!(
                "[HTTP] {} {} {} {:.1}ms",
                info.method(),
                errors::clip(info.path()),
                status,
                info.elapsed().as_secs_f64() * 1000.0
            );
        }))
}

/// Refuses bodies over [`MAX_BODY_BYTES`] (413) before any route runs.
fn body_limit() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and_then(|len: Option<u64>| async move {
            match len {
                Some(n) if n > MAX_BODY_BYTES => Err(ApiReject::rejection(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body of {n} bytes is too large (the limit is {MAX_BODY_BYTES} bytes)"),
                )),
                _ => Ok(()),
            }
        })
        .untuple_one()
}

/// Last in line: a known path asked with the wrong method gets 405 with `Allow`.
/// Anything else falls through as "not found" so that a more precise rejection from a
/// route (bad query string, missing WebSocket headers) wins.
fn wrong_method() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path::full().and(warp::method()).and_then(
        |path: warp::path::FullPath, method: Method| async move {
            let allowed = allowed_methods(path.as_str());
            if allowed.is_empty() || allowed.contains(&method.as_str()) {
                return Err(warp::reject::not_found());
            }
            let mut res = errors::error_reply(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!(
                    "method {} is not allowed on {}: use {}",
                    method,
                    route_label(path.as_str()),
                    allowed.join(", ")
                ),
            );
            if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                res.headers_mut().insert(header::ALLOW, v);
            }
            Ok(res)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_templates() {
        assert_eq!(route_label("/api/nodes"), "/api/nodes");
        assert_eq!(route_label("/api/nodes/1999"), "/api/nodes/{id}");
        assert_eq!(route_label("/api/nodes/1999/poll"), "/api/nodes/{id}/poll");
        assert_eq!(route_label("/api/nodes//poll"), "unmatched");
        assert_eq!(route_label("/api/nodes/1999/extra"), "unmatched");
        assert_eq!(route_label("/metrics"), "/metrics");
        assert_eq!(route_label("/"), "unmatched");
        assert_eq!(allowed_methods("/api/nodes/1/poll"), ["POST"]);
        assert!(allowed_methods("/nope").is_empty());
    }
}

//! `GET /metrics`: the Prometheus text exposition of the metrics catalogue
//! (`crate::metrics`, listed in `docs/metrics.md`).
//!
//! A scrape only encodes what is already in memory; nothing is asked of Asterisk.

use std::sync::Arc;

use warp::http::{HeaderValue, header};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::Ctx;

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

pub(super) fn route(
    ctx: Arc<Ctx>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("metrics").and(warp::get()).map(move || {
        let mut res = ctx.app.metrics.render().into_response();
        let headers = res.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    })
}

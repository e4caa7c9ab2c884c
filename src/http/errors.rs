//! Error replies: every failure the HTTP surface reports is JSON `{"error": "..."}` with
//! the fitting status, including the ones warp itself detects (unknown route, wrong
//! method, unreadable query string, missing WebSocket headers, oversized body).
//!
//! Handlers build their error replies directly with [`error_reply`]; filters that must
//! reject before a handler runs use [`ApiReject`]; [`recover`] turns every rejection into
//! JSON. Messages never contain configuration secrets, and request text echoed back is
//! cut short ([`clip`]).

use std::convert::Infallible;

use serde::Serialize;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Rejection, Reply};

/// The error body.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

/// A JSON error reply with `status`.
pub fn error_reply(status: StatusCode, message: &str) -> Response {
    let mut res =
        warp::reply::with_status(warp::reply::json(&ErrorBody { error: message }), status)
            .into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// A rejection raised by our own filters (before any handler runs).
#[derive(Debug)]
pub struct ApiReject {
    pub status: StatusCode,
    pub message: String,
}

impl warp::reject::Reject for ApiReject {}

impl ApiReject {
    pub fn rejection(status: StatusCode, message: impl Into<String>) -> Rejection {
        warp::reject::custom(ApiReject {
            status,
            message: message.into(),
        })
    }
}

/// Cuts request text (a node id, a header) before it is echoed in a message.
pub fn clip(s: &str) -> String {
    const MAX: usize = 32;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push('…');
        out
    }
}

/// Turns any rejection into a JSON error reply. Installed once, around every route.
pub async fn recover(err: Rejection) -> Result<Response, Infallible> {
    use warp::reject::{
        InvalidHeader, InvalidQuery, LengthRequired, MethodNotAllowed, MissingHeader,
        PayloadTooLarge, UnsupportedMediaType,
    };

    let (status, message): (StatusCode, String) = if let Some(e) = err.find::<ApiReject>() {
        (e.status, e.message.clone())
    } else if err.is_not_found() {
        (
            StatusCode::NOT_FOUND,
            "no such route: see GET /api/openapi.json for every route".into(),
        )
    } else if err.find::<MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this route: see GET /api/openapi.json".into(),
        )
    } else if err.find::<InvalidQuery>().is_some() {
        (
            StatusCode::BAD_REQUEST,
            "the query string could not be read (use name=value pairs, URL-encoded)".into(),
        )
    } else if err.find::<warp::ws::MissingConnectionUpgrade>().is_some() {
        (StatusCode::BAD_REQUEST, "this endpoint speaks WebSocket: send an upgrade request (Connection: upgrade, Upgrade: websocket)".into())
    } else if let Some(e) = err.find::<MissingHeader>() {
        (
            StatusCode::BAD_REQUEST,
            format!("missing request header {}{}", e.name(), ws_hint(e.name())),
        )
    } else if let Some(e) = err.find::<InvalidHeader>() {
        (
            StatusCode::BAD_REQUEST,
            format!("invalid request header {}{}", e.name(), ws_hint(e.name())),
        )
    } else if err.find::<PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large".into(),
        )
    } else if err.find::<LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "a Content-Length header is required".into(),
        )
    } else if err.find::<UnsupportedMediaType>().is_some() {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported content type".into(),
        )
    } else {
        tracing::warn!("[HTTP] unhandled rejection: {err:?}");
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
    };
    Ok(error_reply(status, &message))
}

/// For the headers only the WebSocket upgrade checks.
fn ws_hint(name: &str) -> &'static str {
    if name.starts_with("sec-websocket") || name == "upgrade" || name == "connection" {
        " (this endpoint speaks WebSocket: send an upgrade request with Connection: upgrade, Upgrade: websocket)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_long_text() {
        assert_eq!(clip("1999"), "1999");
        let long = "x".repeat(100);
        assert_eq!(clip(&long).chars().count(), 33);
    }
}

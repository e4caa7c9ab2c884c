//! Who a request comes from (bearer token, `?token=` on the WebSocket handshake, or the
//! login cookie), the read gate (`anonymous_read: false` makes reads need a credential)
//! and IP masking of REST answers for anonymous and `read` callers.
//!
//! WebSocket and metrics masking hook in elsewhere: the WebSocket fan-out decides per
//! client with [`read_access`]`(..).mask` (the WebSocket client's `masked` flag);
//! metrics carry no link IP labels.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use warp::http::{HeaderMap, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::{ApiReject, Ctx, origin};
use crate::auth::{Identity, Via, mask_ips_in};
use crate::linkctl::LinkControl;

/// The cookie that carries a login session.
pub const COOKIE: &str = "nexus_session";
/// Largest REST answer re-written for masking (larger ones are refused rather than leaked).
const MAX_MASKED_BODY: usize = 64 * 1024 * 1024;

/// Why a credential was refused (401).
pub(crate) const BAD_TOKEN: &str =
    "the bearer token is not valid (check Authorization: Bearer <token>)";

/// The identity behind a request. `Err` when a token was sent and is wrong (401); no
/// credential at all is the anonymous identity. An unknown or expired cookie counts as
/// no credential (browsers keep old cookies).
pub(crate) fn identify(
    lc: &LinkControl,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Identity, &'static str> {
    let auth = lc.auth();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    if let Some(token) = bearer.or(query_token) {
        return auth.token(token).ok_or(BAD_TOKEN);
    }
    if headers.contains_key(header::AUTHORIZATION) {
        return Err("the Authorization header must be Bearer <token>");
    }
    if let Some(id) = session_cookie(headers) {
        if let Some(identity) = auth.session(&id) {
            return Ok(identity);
        }
    }
    Ok(Identity::anonymous(auth.enabled()))
}

/// The session id from the `Cookie` header, if any.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_owned())
}

/// For requests made with the login cookie: the `X-CSRF-Token` header must match the
/// session's token and `Origin` must be present and this site's. `None` = fine.
pub(crate) fn cookie_check(ctx: &Ctx, identity: &Identity, headers: &HeaderMap) -> Option<String> {
    let Via::Cookie { csrf, .. } = &identity.via else {
        return None;
    };
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let sent = h("x-csrf-token").unwrap_or("");
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        sent.as_bytes(),
        csrf.as_bytes(),
    )) {
        return Some(
            "requests made with the login cookie need the X-CSRF-Token header from /api/login or /api/session".into(),
        );
    }
    match h("origin") {
        Some(o)
            if origin::allowed(
                o,
                h("host"),
                h("x-forwarded-host"),
                &ctx.app.config.websocket.allowed_origins,
            ) =>
        {
            None
        }
        Some(_) => Some(
            "requests made with the login cookie must come from this site (Origin does not match)"
                .into(),
        ),
        None => Some("requests made with the login cookie need an Origin header".into()),
    }
}

/// The peer address and the `X-Forwarded-For` a proxy added.
pub(crate) fn source(
    addr: Option<SocketAddr>,
    headers: &HeaderMap,
) -> (Option<String>, Option<String>) {
    (
        addr.map(|a| a.ip().to_string()),
        headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    )
}

/// What a reader may see.
#[derive(Debug, Clone)]
pub struct ReadAccess {
    pub identity: Identity,
    /// Link IPs must be masked for this reader.
    pub mask: bool,
    path: String,
}

/// Paths readable without a credential even when `anonymous_read` is off.
fn always_open(path: &str) -> bool {
    matches!(path, "/api/health" | "/api/openapi.json")
}

/// Decides read access for a request; `Err` is the 401 to answer.
pub fn read_access(
    lc: &LinkControl,
    path: &str,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<ReadAccess, String> {
    let identity = identify(lc, headers, query_token).map_err(str::to_owned)?;
    if lc.auth().reads_need_credential() && identity.role.is_none() && !always_open(path) {
        return Err(
            "this daemon needs a credential for reads (anonymous_read is off): send \
             Authorization: Bearer <token>, ?token= on /ws, or log in"
                .into(),
        );
    }
    Ok(ReadAccess {
        mask: !identity.sees_ips(),
        identity,
        path: path.to_owned(),
    })
}

/// The read gate in front of the REST, WebSocket and metrics routes.
pub(super) fn guard(
    ctx: Arc<Ctx>,
) -> impl Filter<Extract = (ReadAccess,), Error = Rejection> + Clone {
    warp::path::full()
        .and(warp::header::headers_cloned())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and_then(
            move |path: warp::path::FullPath, headers: HeaderMap, query: String| {
                let lc = ctx.app.linkctl.clone();
                async move {
                    let token = (path.as_str() == "/ws")
                        .then(|| query_param(&query, "token"))
                        .flatten();
                    let access = read_access(&lc, path.as_str(), &headers, token.as_deref())
                        .map_err(|m| ApiReject::rejection(StatusCode::UNAUTHORIZED, m))?;
                    match beyond_limit(&access.identity, path.as_str(), &query) {
                        Some(m) => Err(ApiReject::rejection(StatusCode::FORBIDDEN, m)),
                        None => Ok(access),
                    }
                }
            },
        )
}

/// For an identity limited to some nodes (`nodes:`), why this read asks for more (the
/// 403 to answer): `/metrics` (a whole-daemon view), `/api/nodes/{id}…` of another node,
/// a history or statistics `node=` outside the limit, a `/ws?nodes=` entry outside it.
/// Lists (`/api/nodes`, alerts, history without `node=`, WebSocket frames) are filtered
/// by their routes instead.
fn beyond_limit(identity: &Identity, path: &str, query: &str) -> Option<String> {
    identity.limit()?;
    let outside =
        |node: &str| (!identity.may_node(node)).then(|| identity.limit_refusal(Some(node)));
    if path == "/metrics" {
        return Some(identity.limit_refusal(None));
    }
    if let Some(rest) = path.strip_prefix("/api/nodes/") {
        let id = rest.split('/').next().unwrap_or("");
        return outside(&decode(id).unwrap_or_else(|| id.to_owned()));
    }
    // Every occurrence counts: the routes read the last one, this reads them all.
    if path.starts_with("/api/history/") || path.starts_with("/api/stats/") {
        return query_params(query, "node").find_map(|n| outside(&n));
    }
    if path == "/ws" {
        return query_params(query, "nodes").find_map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .find_map(outside)
        });
    }
    None
}

/// One URL-decoded query parameter (its first occurrence).
fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .find(|(k, _)| decode(k).as_deref() == Some(name))
        .and_then(|(_, v)| decode(v))
}

/// Every URL-decoded value of a query parameter (an undecodable one is kept raw).
fn query_params<'q>(query: &'q str, name: &'q str) -> impl Iterator<Item = String> + 'q {
    query
        .split('&')
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .filter(move |(k, _)| decode(k).as_deref() == Some(name))
        .map(|(_, v)| decode(v).unwrap_or_else(|| v.to_owned()))
}

/// Percent-decoding (`+` is a space).
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Masks link IPs in node answers for readers who may not see them.
pub(super) async fn mask(access: ReadAccess, res: Response) -> Result<Response, Rejection> {
    let is_nodes = access.path == "/api/nodes"
        || (access.path.starts_with("/api/nodes/") && access.path.matches('/').count() == 3)
        || access.path == "/api/history/links";
    if !access.mask || !is_nodes || res.status() != StatusCode::OK {
        return Ok(res);
    }
    let (parts, body) = res.into_parts();
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(masking_failed()),
    };
    if bytes.len() > MAX_MASKED_BODY {
        return Err(masking_failed());
    }
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Err(masking_failed());
    };
    mask_ips_in(&mut json);
    let Ok(out) = serde_json::to_vec(&json) else {
        return Err(masking_failed());
    };
    let mut res = Response::from_parts(parts, bytes::Bytes::from(out).into());
    res.headers_mut().remove(header::CONTENT_LENGTH);
    Ok(res)
}

fn masking_failed() -> Rejection {
    ApiReject::rejection(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the answer could not be prepared for this reader",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cookies_and_query_tokens() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=b; nexus_session=abc123 ; c=d".parse().expect("hv"),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("abc123"));
        assert_eq!(
            query_param("since=3&token=a%2Bb+c", "token").as_deref(),
            Some("a+b c")
        );
        assert_eq!(query_param("since=3", "token"), None);
    }

    #[test]
    fn node_limits_refuse_other_nodes_and_whole_daemon_views() {
        let id = Identity {
            name: "v2000".into(),
            role: Some(crate::auth::Role::Read),
            nodes: Some(vec!["2000".into()]),
            via: Via::Token,
        };
        for (path, query) in [
            ("/metrics", ""),
            ("/api/nodes/1999", ""),
            ("/api/nodes/%31999", ""),
            ("/api/nodes/1999/voter", ""),
            ("/api/history/links", "node=2000&node=1999"),
            ("/api/stats/talkers", "node=1999"),
            ("/ws", "nodes=2000,1999"),
        ] {
            let why = beyond_limit(&id, path, query).unwrap_or_default();
            assert!(
                why.contains("v2000 is limited to node(s) 2000"),
                "{path}?{query}"
            );
        }
        for (path, query) in [
            ("/api/nodes", ""),
            ("/api/nodes/2000", ""),
            ("/api/nodes/%32000/voter", ""),
            ("/api/history/links", "node=2000"),
            ("/api/history/links", ""),
            ("/ws", "nodes=2000&servers=default"),
            ("/api/alerts", "limit=5"),
        ] {
            assert_eq!(beyond_limit(&id, path, query), None, "{path}?{query}");
        }
        assert_eq!(
            beyond_limit(&Identity::anonymous(true), "/metrics", ""),
            None
        );
    }
}

//! The control routes: login, logout and session for browsers; connect, disconnect and
//! disconnect-all of links; the audit log for admins (`docs/api.md`, "Control").
//!
//! Every link request is audited, refused ones included, before it is answered; the
//! work itself is done by [`crate::linkctl::LinkControl`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::auth::{self, COOKIE, identify};
use super::errors::error_reply;
use super::{Ctx, json_reply, origin};
use crate::audit::{AuditEntry, AuditQuery};
use crate::auth::{Identity, LoginError, Role};
use crate::linkctl::{Actor, LinkAction, RawRequest, Refusal};
use crate::state::node::rfc3339;

/// Entries returned by `GET /api/audit` without `limit`, and the most with it.
const DEFAULT_AUDIT_LIMIT: usize = 200;
const MAX_AUDIT_LIMIT: usize = 10_000;

/// Every control route.
pub(super) fn routes(
    ctx: Arc<Ctx>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let links = link_routes(ctx.clone());
    let with = move || {
        let ctx = ctx.clone();
        warp::any().map(move || ctx.clone())
    };
    let common = {
        let with = with.clone();
        move || {
            super::server::remote()
                .and(warp::header::headers_cloned())
                .and(with())
        }
    };
    let login = warp::path!("api" / "login")
        .and(warp::post())
        .and(warp::body::content_length_limit(super::MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(common())
        .then(|b: bytes::Bytes, a, h, c| async move { login(c, &b, a, &h).await });
    let logout = warp::path!("api" / "logout")
        .and(warp::post())
        .and(common())
        .then(|a, h, c| async move { logout(c, a, &h).await });
    let session = warp::path!("api" / "session")
        .and(warp::get())
        .and(common())
        .map(|_a, h: HeaderMap, c: Arc<Ctx>| session(&c, &h));
    let audit = warp::path!("api" / "audit")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::headers_cloned())
        .and(with())
        .then(
            |q: HashMap<String, String>, h: HeaderMap, c: Arc<Ctx>| async move {
                audit(&c, &q, &h).await
            },
        );
    login
        .or(logout)
        .unify()
        .or(session)
        .unify()
        .or(links)
        .unify()
        .or(audit)
        .unify()
}

/// Connect, disconnect and disconnect-all.
fn link_routes(ctx: Arc<Ctx>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let common = move || {
        let ctx = ctx.clone();
        super::server::remote()
            .and(warp::header::headers_cloned())
            .and(warp::any().map(move || ctx.clone()))
    };
    let connect = warp::path!("api" / "nodes" / String / "links")
        .and(warp::post())
        .and(warp::body::content_length_limit(super::MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(common())
        .then(|id: String, b: bytes::Bytes, a, h, c| async move {
            let raw = connect_request(id, &b);
            link(c, raw, a, &h).await
        });
    let disconnect = warp::path!("api" / "nodes" / String / "links" / String)
        .and(warp::delete())
        .and(common())
        .then(|id: String, target: String, a, h, c| async move {
            let raw = Ok(RawRequest {
                action: LinkAction::Disconnect,
                node: id,
                target: Some(target),
                mode: None,
                permanent: None,
            });
            link(c, raw, a, &h).await
        });
    let disconnect_all = warp::path!("api" / "nodes" / String / "links")
        .and(warp::delete())
        .and(common())
        .then(|id: String, a, h, c| async move {
            let raw = Ok(RawRequest {
                action: LinkAction::DisconnectAll,
                node: id,
                target: None,
                mode: None,
                permanent: None,
            });
            link(c, raw, a, &h).await
        });
    connect.or(disconnect).unify().or(disconnect_all).unify()
}

/// The body of `POST /api/nodes/{id}/links`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectBody {
    target: serde_json::Value,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    permanent: Option<bool>,
}

/// Reads the connect body; `Err` keeps what could be read, for the audit.
fn connect_request(node: String, body: &[u8]) -> Result<RawRequest, (RawRequest, String)> {
    let mut raw = RawRequest {
        action: LinkAction::Connect,
        node,
        target: None,
        mode: None,
        permanent: None,
    };
    let parsed: ConnectBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            return Err((
                raw,
                format!(
                    "the body must be JSON {{\"target\":\"2003\",\"mode\":\"transceive\",\"permanent\":false}}: {e}"
                ),
            ));
        }
    };
    raw.mode = parsed.mode;
    raw.permanent = parsed.permanent;
    raw.target = Some(match parsed.target {
        serde_json::Value::String(s) => s,
        serde_json::Value::Number(n) => n.to_string(),
        _ => {
            return Err((
                raw,
                "target must be a node number (string or number)".into(),
            ));
        }
    });
    Ok(raw)
}

/// Connect, disconnect or disconnect-all, with the cookie checks, audited.
async fn link(
    ctx: Arc<Ctx>,
    raw: Result<RawRequest, (RawRequest, String)>,
    addr: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Response {
    let lc = ctx.app.linkctl.clone();
    let (source, forwarded_for) = auth::source(addr, headers);
    let mut actor = Actor {
        identity: Identity::anonymous(lc.enabled()),
        source,
        forwarded_for,
    };
    let req = match raw {
        Ok(r) => r,
        Err((r, why)) => return refusal(lc.refuse(&actor, &r, Refusal::new(400, why)).await),
    };
    match identify(&lc, headers, None) {
        Ok(id) => actor.identity = id,
        Err(why) => return refusal(lc.refuse(&actor, &req, Refusal::new(401, why)).await),
    }
    if let Some(why) = auth::cookie_check(&ctx, &actor.identity, headers) {
        return refusal(lc.refuse(&actor, &req, Refusal::new(403, why)).await);
    }
    match lc.execute(&actor, &req).await {
        Ok(outcome) => json_reply(StatusCode::OK, &outcome),
        Err(r) => refusal(r),
    }
}

/// A refusal as a JSON error (with `Retry-After` on 429).
fn refusal(r: Refusal) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = error_reply(status, &r.message);
    if let Some(secs) = r.retry_after {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

#[derive(Deserialize)]
struct LoginBody {
    name: String,
    password: String,
}

#[derive(Serialize)]
struct LoginReply<'a> {
    name: &'a str,
    role: Option<Role>,
    nodes: &'a Option<Vec<String>>,
    csrf_token: &'a str,
}

/// `POST /api/login`: checks the password, sets the session cookie. Every attempt is
/// audited before the answer, refused ones (wrong Origin, unreadable body, wrong password,
/// lockout) included; with no users configured it is a plain 403.
async fn login(
    ctx: Arc<Ctx>,
    body: &[u8],
    addr: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Response {
    let lc = ctx.app.linkctl.clone();
    if !lc.auth().login_available() {
        // Nobody can log in, so there is nothing to audit (and no flood to store).
        return error_reply(
            StatusCode::FORBIDDEN,
            "no users are configured: add users with password_hash (see docs/security.md)",
        );
    }
    let parsed = serde_json::from_slice::<LoginBody>(body);
    let name = parsed
        .as_ref()
        .map_or_else(|_| "(unreadable)".into(), |b| AuditEntry::clip(&b.name));
    let mut entry = audit_entry(name, "login", addr, headers);
    entry.via = "login".into();
    entry.result = "refused".into();
    if let Some(why) = login_precheck(&ctx, headers) {
        return refuse_login(&lc, entry, StatusCode::FORBIDDEN, why).await;
    }
    let Ok(b) = parsed else {
        return refuse_login(
            &lc,
            entry,
            StatusCode::BAD_REQUEST,
            "the body must be JSON {\"name\":\"...\",\"password\":\"...\"}",
        )
        .await;
    };
    let result = lc
        .auth()
        .login(&b.name, &b.password, addr.map(|a| a.ip()))
        .await;
    let (status, result_word, detail) = match &result {
        Ok(_) => (200, "ok", "logged in".to_owned()),
        Err(LoginError::Bad) => (401, "refused", "wrong user name or password".to_owned()),
        Err(e @ LoginError::LockedOut { .. }) => (429, "refused", e.to_string()),
        Err(e @ LoginError::Internal(_)) => (500, "failed", e.to_string()),
    };
    entry.status = status;
    entry.result = result_word.into();
    entry.detail = detail;
    if let Err(r) = lc.record(entry).await {
        return refusal(r);
    }
    match result {
        Ok(ok) => logged_in(&ctx, headers, &ok),
        Err(LoginError::LockedOut { retry_after }) => refusal(Refusal {
            status: 429,
            message: LoginError::LockedOut { retry_after }.to_string(),
            retry_after: Some(retry_after.as_secs().max(1)),
        }),
        Err(e @ LoginError::Bad) => error_reply(StatusCode::UNAUTHORIZED, &e.to_string()),
        Err(e) => error_reply(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// An audit entry of a login or logout by `identity` (the caller fills in the outcome).
fn audit_entry(
    identity: String,
    action: &str,
    addr: Option<SocketAddr>,
    headers: &HeaderMap,
) -> AuditEntry {
    let (source, forwarded_for) = auth::source(addr, headers);
    let now = crate::observe::now_ms();
    AuditEntry {
        time_ms: now,
        time: rfc3339(now),
        identity,
        source,
        forwarded_for,
        action: action.into(),
        ..AuditEntry::default()
    }
}

/// The 200 of a successful login: who, and the session cookie (`Secure` behind https).
fn logged_in(ctx: &Ctx, headers: &HeaderMap, ok: &crate::auth::LoginOk) -> Response {
    let mut res = json_reply(
        StatusCode::OK,
        &LoginReply {
            name: &ok.identity.name,
            role: ok.identity.role,
            nodes: &ok.identity.nodes,
            csrf_token: &ok.csrf_token,
        },
    );
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        ok.session_id,
        ctx.app.config.control.session_ttl.0.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// Why a login is refused before the password is looked at (wrong Origin).
fn login_precheck(ctx: &Ctx, headers: &HeaderMap) -> Option<&'static str> {
    if let Some(o) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        if !origin::allowed(
            o,
            h("host"),
            h("x-forwarded-host"),
            &ctx.app.config.websocket.allowed_origins,
        ) {
            return Some("logins must come from this site (Origin does not match)");
        }
    }
    None
}

/// Audits a refused login or logout, then answers it (503 when the audit cannot be written).
async fn refuse_login(
    lc: &crate::linkctl::LinkControl,
    mut entry: AuditEntry,
    status: StatusCode,
    why: &str,
) -> Response {
    entry.status = status.as_u16();
    entry.detail = why.to_owned();
    match lc.record(entry).await {
        Ok(()) => error_reply(status, why),
        Err(r) => refusal(r),
    }
}

/// `POST /api/logout`: ends the cookie's session (204 even without one). Like every
/// state change made with the cookie, it needs the `X-CSRF-Token` header and this site's
/// `Origin` (403 otherwise, audited, and the session stays).
async fn logout(ctx: Arc<Ctx>, addr: Option<SocketAddr>, headers: &HeaderMap) -> Response {
    let lc = ctx.app.linkctl.clone();
    if let Some(id) = auth::session_cookie(headers) {
        if let Some(identity) = lc.auth().session(&id) {
            let mut entry = audit_entry(identity.name.clone(), "logout", addr, headers);
            entry.via = "cookie".into();
            if let Some(why) = auth::cookie_check(&ctx, &identity, headers) {
                entry.result = "refused".into();
                return refuse_login(&lc, entry, StatusCode::FORBIDDEN, &why).await;
            }
            entry.result = "ok".into();
            entry.status = 204;
            entry.detail = "logged out".into();
            let _ = lc.record(entry).await;
        }
        lc.auth().logout(&id);
    }
    let mut res = warp::reply::Reply::into_response(StatusCode::NO_CONTENT);
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
    )) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

#[derive(Serialize)]
struct SessionReply {
    authenticated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    role: Option<Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    csrf_token: Option<String>,
    login_available: bool,
    control_enabled: bool,
}

/// `GET /api/session`: who the caller is (a wrong token answers 401).
fn session(ctx: &Ctx, headers: &HeaderMap) -> Response {
    let lc = ctx.app.linkctl.clone();
    let id = match identify(&lc, headers, None) {
        Ok(id) => id,
        Err(why) => return error_reply(StatusCode::UNAUTHORIZED, why),
    };
    let authenticated = id.role.is_some();
    let csrf_token = match &id.via {
        crate::auth::Via::Cookie { csrf, .. } => Some(csrf.clone()),
        _ => None,
    };
    json_reply(
        StatusCode::OK,
        &SessionReply {
            authenticated,
            name: authenticated.then(|| id.name.clone()),
            role: id.role,
            nodes: if authenticated {
                id.nodes.clone()
            } else {
                None
            },
            csrf_token,
            login_available: lc.auth().login_available(),
            control_enabled: lc.enabled(),
        },
    )
}

/// `GET /api/audit` (admin): filtered entries, oldest first, from the history store when
/// enabled (with `next_cursor` for the older page), else from `audit.jsonl`.
async fn audit(ctx: &Ctx, q: &HashMap<String, String>, headers: &HeaderMap) -> Response {
    let lc = ctx.app.linkctl.clone();
    if !lc.enabled() {
        return error_reply(StatusCode::FORBIDDEN, crate::linkctl::DISABLED);
    }
    let id = match identify(&lc, headers, None) {
        Ok(id) => id,
        Err(why) => return error_reply(StatusCode::UNAUTHORIZED, why),
    };
    if id.role.is_none() {
        return error_reply(
            StatusCode::UNAUTHORIZED,
            "the audit log needs an admin credential",
        );
    }
    if !id.has(Role::Admin) {
        return error_reply(StatusCode::FORBIDDEN, "the audit log needs the admin role");
    }
    let query = match audit_query(q) {
        Ok(query) => query,
        Err(why) => return error_reply(StatusCode::BAD_REQUEST, &why),
    };
    if query.cursor.is_some() && !lc.audit().in_history() {
        return error_reply(
            StatusCode::BAD_REQUEST,
            "parameter `cursor`: paging needs the history store (history.enabled: true); \
             without it, narrow the range with since/until",
        );
    }
    match lc.audit().query(query).await {
        Ok(page) => json_reply(StatusCode::OK, &page),
        Err(e) => error_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the audit log cannot be read: {e}"),
        ),
    }
}

/// `identity`, `node`, `action`, `result`, `since`/`until` (ms or RFC 3339), `limit`,
/// `cursor` (a previous answer's `next_cursor`).
fn audit_query(q: &HashMap<String, String>) -> Result<AuditQuery, String> {
    let time = |key: &str| -> Result<Option<u64>, String> {
        let Some(v) = q.get(key) else { return Ok(None) };
        if let Ok(ms) = v.parse::<u64>() {
            return Ok(Some(ms));
        }
        humantime::parse_rfc3339_weak(v)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| Some(d.as_millis() as u64))
            .ok_or_else(|| format!("{key} must be ms since the Unix epoch or an RFC 3339 time"))
    };
    let limit = match q.get("limit") {
        None => DEFAULT_AUDIT_LIMIT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_AUDIT_LIMIT).contains(&n) => n,
            _ => return Err(format!("limit must be 1 to {MAX_AUDIT_LIMIT}")),
        },
    };
    let cursor = match q.get("cursor") {
        None => None,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(
                    "parameter `cursor`: must be a `next_cursor` from a previous answer".into(),
                );
            }
        },
    };
    Ok(AuditQuery {
        cursor,
        identity: q.get("identity").cloned(),
        node: q.get("node").cloned(),
        action: q.get("action").cloned(),
        result: q.get("result").cloned(),
        since_ms: time("since")?,
        until_ms: time("until")?,
        limit,
    })
}

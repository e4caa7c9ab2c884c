//! The REST routes under `/api`: health in plain words, nodes, poll-now, voter receivers,
//! alerts, scripts, and the OpenAPI document.
//!
//! Readers take a short read lock on in-memory state and never wait on AMI; poll-now only
//! wakes the node's poller and answers 202 at once. Replies use the field names of the
//! node model (`state::model`), documented in `docs/api.md`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use serde::Serialize;
use warp::http::{HeaderMap, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::auth::ReadAccess;
use super::body_pool::BodyPool;
use super::errors::{clip, error_reply};
use super::server::ConnInfo;
use super::{Ctx, json_bytes_reply, json_reply, openapi, origin};
use crate::ami::{ConnectionStatus, ErrorKind};
use crate::control::ControlError;
use crate::state::StateStore;
use crate::state::change::now_ms;
use crate::state::node::rfc3339;

/// Alerts returned by `GET /api/alerts` without `limit`.
const DEFAULT_ALERT_LIMIT: usize = 100;
/// Largest `limit` accepted.
const MAX_ALERT_LIMIT: usize = 10_000;

/// Client addresses tracked by [`PollLimiter`] before idle ones are forgotten.
const MAX_TRACKED_CLIENTS: usize = 4096;

/// A token bucket per client address for `POST /api/nodes/{id}/poll`: `per_minute`
/// requests a minute, in bursts of up to `per_minute`.
pub(crate) struct PollLimiter {
    pub per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl PollLimiter {
    pub fn new(per_minute: u32) -> PollLimiter {
        PollLimiter {
            per_minute: per_minute.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `ip`, or says in how many whole seconds one is due.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let cap = f64::from(self.per_minute);
        let rate = cap / 60.0;
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() >= MAX_TRACKED_CLIENTS && !b.contains_key(&ip) {
            // Forget clients whose bucket has refilled; they lose nothing.
            b.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < cap
            });
            if b.len() >= MAX_TRACKED_CLIENTS {
                b.clear();
            }
        }
        let (tokens, at) = b.entry(ip).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(cap);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

/// Every `/api` route.
pub(super) fn routes(
    ctx: Arc<Ctx>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    // The reader's identity, for the lists a node-limited identity sees only part of.
    let access = {
        let ctx = ctx.clone();
        move || super::auth::guard(ctx.clone())
    };
    let with = move || {
        let ctx = ctx.clone();
        warp::any().map(move || ctx.clone())
    };
    let health = warp::path!("api" / "health")
        .and(warp::get())
        .and(with())
        .map(|c: Arc<Ctx>| health(&c));
    let nodes = warp::path!("api" / "nodes")
        .and(warp::get())
        .and(access())
        .and(with())
        .map(|a: ReadAccess, c: Arc<Ctx>| nodes(&c, a.identity.limit()));
    let node = warp::path!("api" / "nodes" / String)
        .and(warp::get())
        .and(with())
        .map(|id: String, c: Arc<Ctx>| node(&c, &id));
    let poll = warp::path!("api" / "nodes" / String / "poll")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<ConnInfo>())
        .and(with())
        .map(
            |id: String, h: HeaderMap, conn: Option<ConnInfo>, c: Arc<Ctx>| {
                let ip = conn.map_or(IpAddr::from([0, 0, 0, 0]), |i| i.peer.ip());
                poll(&c, &id, &h, ip)
            },
        );
    let voter = warp::path!("api" / "nodes" / String / "voter")
        .and(warp::get())
        .and(with())
        .map(|id: String, c: Arc<Ctx>| voter(&c, &id));
    let alerts = warp::path!("api" / "alerts")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(access())
        .and(with())
        .map(|q: HashMap<String, String>, a: ReadAccess, c: Arc<Ctx>| {
            alerts(&c, &q, a.identity.limit())
        });
    let scripts = warp::path!("api" / "scripts")
        .and(warp::get())
        .and(with())
        .map(|c: Arc<Ctx>| {
            #[derive(Serialize)]
            struct Scripts {
                scripts: Vec<crate::script::ScriptStatus>,
            }
            json_reply(
                StatusCode::OK,
                &Scripts {
                    scripts: c.app.scripts.list(),
                },
            )
        });
    let openapi = warp::path!("api" / "openapi.json")
        .and(warp::get())
        .map(|| {
            warp::Reply::into_response(warp::reply::with_header(
                openapi::DOCUMENT,
                header::CONTENT_TYPE,
                "application/json",
            ))
        });
    health
        .or(nodes)
        .unify()
        .or(node)
        .unify()
        .or(poll)
        .unify()
        .or(voter)
        .unify()
        .or(alerts)
        .unify()
        .or(scripts)
        .unify()
        .or(openapi)
        .unify()
}

/// One AMI server in `GET /api/health`.
#[derive(Debug, Serialize)]
struct ServerHealth {
    name: String,
    /// `host:port`.
    host: String,
    connected: bool,
    /// `connected`, `disconnected`, or `connecting` (no attempt has finished yet).
    state: ServerState,
    /// When the session was established (connected) or lost (disconnected), RFC 3339.
    since: Option<String>,
    /// Seconds in the current state.
    for_seconds: Option<u64>,
    reconnect_attempts: u64,
    /// The last error in plain words (kept after a reconnect, for the record).
    last_error: Option<String>,
    /// Its short form: `refused`, `timeout`, `host_not_found`, `auth_failed`, …
    last_error_kind: Option<ErrorKind>,
    /// The Asterisk Manager greeting of the current or last session.
    banner: Option<String>,
}

/// Where one AMI server's session stands (`/api/health` `servers[].state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum ServerState {
    Connected,
    Disconnected,
    /// No attempt has finished yet.
    Connecting,
}

/// The daemon's overall state (`/api/health` `status`); the values only grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum HealthState {
    Ok,
    /// An AMI server is not connected, or a script has a problem.
    Degraded,
}

#[derive(Debug, Serialize)]
struct Health {
    /// `ok`, or `degraded` when any AMI server is disconnected.
    status: HealthState,
    /// One sentence an operator can act on.
    summary: String,
    version: &'static str,
    uptime_seconds: u64,
    started: String,
    ami_enabled: bool,
    servers: Vec<ServerHealth>,
    nodes: usize,
    /// Nodes whose data may be out of date (their server is down).
    stale_nodes: usize,
    websocket_clients: usize,
    /// Sequence number of the last change (resume point for `/ws?since=`).
    last_seq: u64,
    /// This run's id (`/ws?since=SEQ&epoch=EPOCH`).
    epoch: String,
}

/// The status of every configured server, as the model holds it (the engine's copy, the
/// one published status), else "connecting" (nothing reported yet). Memory only.
fn server_statuses(ctx: &Ctx) -> Vec<ConnectionStatus> {
    let stored = ctx.app.state.servers();
    ctx.app
        .config
        .servers
        .iter()
        .map(|s| {
            stored
                .iter()
                .find(|st| st.server == s.name)
                .cloned()
                .unwrap_or_else(|| ConnectionStatus::never_connected(s))
        })
        .collect()
}

fn health(ctx: &Ctx) -> Response {
    let now = now_ms();
    let servers: Vec<ServerHealth> = server_statuses(ctx)
        .into_iter()
        .map(|s| {
            let state = if s.connected {
                ServerState::Connected
            } else if s.since_ms == 0 && s.last_error.is_none() {
                ServerState::Connecting
            } else {
                ServerState::Disconnected
            };
            ServerHealth {
                since: (s.since_ms > 0).then(|| rfc3339(s.since_ms)),
                for_seconds: (s.since_ms > 0).then(|| now.saturating_sub(s.since_ms) / 1000),
                name: s.server,
                host: s.host,
                connected: s.connected,
                state,
                reconnect_attempts: s.reconnect_attempts,
                last_error: s.last_error,
                last_error_kind: s.last_error_kind,
                banner: s.banner,
            }
        })
        .collect();
    // Counted under the read lock: no view of every node (5,000 on a fleet) is made.
    let (node_count, stale_nodes) = {
        let m = ctx.app.state.read();
        (m.nodes.len(), m.nodes.values().filter(|n| n.stale).count())
    };
    let down: Vec<&ServerHealth> = servers.iter().filter(|s| !s.connected).collect();
    let summary = if !ctx.app.config.ami_enabled {
        "AMI is disabled in the configuration (ami_enabled: false): there is no live node data"
            .to_owned()
    } else if down.is_empty() {
        format!(
            "all {} AMI server(s) connected; watching {} node(s)",
            servers.len(),
            node_count
        )
    } else {
        let list: Vec<String> = down
            .iter()
            .map(|s| match (&s.last_error, s.state) {
                (_, ServerState::Connecting) => {
                    format!("{} ({}: connecting, no answer yet)", s.name, s.host)
                }
                (Some(e), _) => format!("{} ({e})", s.name),
                (None, _) => format!("{} ({}: disconnected)", s.name, s.host),
            })
            .collect();
        format!(
            "{} of {} AMI server(s) not connected: {}",
            down.len(),
            servers.len(),
            list.join("; ")
        )
    };
    let body = Health {
        status: if down.is_empty() && ctx.app.scripts.problem().is_none() {
            HealthState::Ok
        } else {
            HealthState::Degraded
        },
        summary,
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: now.saturating_sub(ctx.app.started_ms) / 1000,
        started: rfc3339(ctx.app.started_ms),
        ami_enabled: ctx.app.config.ami_enabled,
        stale_nodes,
        nodes: node_count,
        servers,
        websocket_clients: ctx.hub.clients(),
        last_seq: ctx.app.state.seq(),
        epoch: ctx.app.state.epoch().to_owned(),
    };
    json_reply(StatusCode::OK, &body)
}

/// `GET /api/nodes` body of the last request: the next one reserves this much (and a
/// little more) at once instead of growing a multi-MiB buffer by doubling.
static NODES_BODY_HINT: AtomicUsize = AtomicUsize::new(0);

/// The `GET /api/nodes` body's buffer, kept a few seconds between requests (`body_pool`).
static NODES_BODY: LazyLock<BodyPool> = LazyLock::new(BodyPool::default);

fn nodes(ctx: &Ctx, limit: Option<&[String]>) -> Response {
    if let Some(limit) = limit {
        return limited_nodes(ctx, limit);
    }
    let hint = NODES_BODY_HINT.load(Ordering::Relaxed);
    let buf = NODES_BODY.take(hint + hint / 16 + 256);
    match nodes_body(&ctx.app.state, buf) {
        Ok(body) => {
            NODES_BODY_HINT.store(body.len(), Ordering::Relaxed);
            json_bytes_reply(StatusCode::OK, NODES_BODY.body(body))
        }
        Err(e) => error_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the node list could not be encoded: {e}"),
        ),
    }
}

/// `GET /api/nodes` for an identity limited to some nodes: the same document with only
/// those nodes (`seq` and `nodes` still taken under one read lock).
fn limited_nodes(ctx: &Ctx, limit: &[String]) -> Response {
    #[derive(Serialize)]
    struct Nodes<'a> {
        seq: u64,
        epoch: &'a str,
        nodes: Vec<crate::state::NodeView>,
    }
    let (seq, mut nodes, _rx) = ctx.app.state.subscribe_with_snapshot();
    nodes.retain(|n| limit.contains(&n.node_id));
    let epoch = ctx.app.state.epoch();
    json_reply(StatusCode::OK, &Nodes { seq, epoch, nodes })
}

/// The body of `GET /api/nodes`: `{"seq":…,"epoch":"…","nodes":[…]}`, byte for byte
/// what serialising `{seq, epoch, nodes: Vec<NodeView>}` gives (docs/api.md), written in
/// one pass under one read lock so that `seq` and `nodes` agree (`state::snapshot`).
fn nodes_body(state: &StateStore, mut out: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let epoch = state.epoch();
    let mut head_err = None;
    state.encode_nodes(&mut out, |out, seq| {
        out.extend_from_slice(b"{\"seq\":");
        out.extend_from_slice(seq.to_string().as_bytes());
        out.extend_from_slice(b",\"epoch\":");
        if let Err(e) = serde_json::to_writer(&mut *out, epoch) {
            head_err = Some(e);
        }
        out.extend_from_slice(b",\"nodes\":");
    })?;
    if let Some(e) = head_err {
        return Err(e.into());
    }
    out.push(b'}');
    Ok(out)
}

/// Whether the node is in the configuration.
fn configured(ctx: &Ctx, id: &str) -> bool {
    ctx.app
        .config
        .servers
        .iter()
        .any(|s| s.nodes.iter().any(|n| n.node_id == id))
}

fn unknown_node(id: &str) -> Response {
    error_reply(
        StatusCode::NOT_FOUND,
        &format!(
            "unknown node {:?}: it is not in the configuration",
            clip(id)
        ),
    )
}

fn node(ctx: &Ctx, id: &str) -> Response {
    match ctx.app.state.node(id) {
        Some(n) => json_reply(StatusCode::OK, &n),
        None if configured(ctx, id) => error_reply(
            StatusCode::NOT_FOUND,
            &format!(
                "node {id} is configured but has no state yet: the state engine has not reported it"
            ),
        ),
        None => unknown_node(id),
    }
}

fn poll(ctx: &Ctx, id: &str, headers: &HeaderMap, ip: IpAddr) -> Response {
    if let Some(refused) = foreign_origin(ctx, headers) {
        return refused;
    }
    if let Err(wait) = ctx.poll_limit.check(ip) {
        let per_minute = ctx.poll_limit.per_minute;
        let mut res = error_reply(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "too many poll requests from {ip}: at most {per_minute} a minute (http.poll_requests_per_minute); try again in {wait} s"
            ),
        );
        if let Ok(v) = header::HeaderValue::from_str(&wait.to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return res;
    }
    match ctx.app.control.poll_now(id) {
        Ok(()) => {
            #[derive(Serialize)]
            struct Accepted<'a> {
                status: &'static str,
                node: &'a str,
                message: String,
            }
            let message = format!(
                "poll of node {id} requested: the result arrives as changes on /ws and in GET /api/nodes/{id} (a node whose AMI server is down is polled as soon as it reconnects)"
            );
            json_reply(
                StatusCode::ACCEPTED,
                &Accepted {
                    status: "accepted",
                    node: id,
                    message,
                },
            )
        }
        Err(ControlError::UnknownNode(_)) => unknown_node(id),
        Err(e @ ControlError::NoPoller(_)) => {
            error_reply(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        Err(e @ ControlError::RateLimited { retry_after, .. }) => {
            let mut res = error_reply(StatusCode::TOO_MANY_REQUESTS, &e.to_string());
            let secs = retry_after_secs(retry_after);
            res.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
            res
        }
        Err(e) => error_reply(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `Retry-After` seconds for a wait: rounded up, at least 1.
fn retry_after_secs(wait: std::time::Duration) -> u64 {
    let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    whole.max(1)
}

/// 403 for a browser request from another site (see `origin`).
fn foreign_origin(ctx: &Ctx, headers: &HeaderMap) -> Option<Response> {
    let o = headers.get(header::ORIGIN)?;
    let text = o.to_str().unwrap_or("");
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if origin::allowed(
        text,
        h("host"),
        h("x-forwarded-host"),
        &ctx.app.config.websocket.allowed_origins,
    ) {
        return None;
    }
    Some(error_reply(
        StatusCode::FORBIDDEN,
        &format!(
            "requests from origin {:?} are not allowed: add it to websocket.allowed_origins",
            clip(text)
        ),
    ))
}

fn voter(ctx: &Ctx, id: &str) -> Response {
    match ctx.app.control.voter(id) {
        Some(v) => json_reply(StatusCode::OK, &v),
        None if configured(ctx, id) || ctx.app.state.node(id).is_some() => error_reply(
            StatusCode::NOT_FOUND,
            &format!(
                "no voter data for node {id} yet: the voter plugin (plugins/voter.lua) publishes it every plugins.voter.interval_seconds once it runs and the node has a voter"
            ),
        ),
        None => unknown_node(id),
    }
}

/// `GET /api/alerts`; an identity limited to some nodes sees the alerts about them and
/// those about no node (as on the WebSocket), never those about another node.
fn alerts(ctx: &Ctx, q: &HashMap<String, String>, limit_to: Option<&[String]>) -> Response {
    let limit = match q.get("limit") {
        None => DEFAULT_ALERT_LIMIT,
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_ALERT_LIMIT).contains(&n) => n,
            _ => {
                return error_reply(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "invalid limit {:?}: give a whole number from 1 to {MAX_ALERT_LIMIT}",
                        clip(v)
                    ),
                );
            }
        },
    };
    #[derive(Serialize)]
    struct Alerts<'a> {
        alerts: Vec<&'a crate::alerts::Alert>,
    }
    let recent = match limit_to {
        None => ctx.app.alerts.recent(limit),
        Some(nodes) => {
            let mut mine = ctx.app.alerts.recent(usize::MAX);
            mine.retain(|a| a.node.as_ref().is_none_or(|n| nodes.contains(n)));
            let skip = mine.len().saturating_sub(limit);
            mine.split_off(skip)
        }
    };
    json_reply(
        StatusCode::OK,
        &Alerts {
            alerts: recent.iter().map(|a| a.as_ref()).collect(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_limiter_allows_a_burst_then_refuses_per_address() {
        let l = PollLimiter::new(3);
        let a = IpAddr::from([10, 0, 0, 1]);
        assert!((0..3).all(|_| l.check(a).is_ok()));
        let wait = l.check(a).expect_err("fourth refused");
        assert!((1..=20).contains(&wait), "{wait}");
        assert!(l.check(IpAddr::from([10, 0, 0, 2])).is_ok(), "per address");
    }

    #[test]
    fn health_states_serialise_as_the_strings_they_replaced() {
        fn json<T: Serialize>(v: &T) -> String {
            serde_json::to_string(v).expect("json")
        }
        assert_eq!(json(&HealthState::Ok), "\"ok\"");
        assert_eq!(json(&HealthState::Degraded), "\"degraded\"");
        assert_eq!(json(&ServerState::Connected), "\"connected\"");
        assert_eq!(json(&ServerState::Disconnected), "\"disconnected\"");
        assert_eq!(json(&ServerState::Connecting), "\"connecting\"");
    }

    /// The body as it was built before the one-pass encoding: a `Vec<NodeView>` under
    /// the lock, then serialised.
    fn nodes_body_by_views(state: &StateStore) -> Vec<u8> {
        #[derive(Serialize)]
        struct Nodes<'a> {
            seq: u64,
            epoch: &'a str,
            nodes: Vec<crate::state::NodeView>,
        }
        let (seq, nodes, _rx) = state.subscribe_with_snapshot();
        let epoch = state.epoch();
        serde_json::to_vec(&Nodes { seq, epoch, nodes }).expect("encodes")
    }

    #[test]
    fn the_nodes_body_is_byte_identical_to_serialising_the_views() {
        use crate::ami::{AmiEvent, Frame};
        use crate::state::engine::{Engine, NodeSpec};
        let state = StateStore::new(16, 16);
        let mut e = Engine::new(state.clone(), crate::metrics::Metrics::default(), true);
        let ids = ["1999", "2000", "2001"];
        let specs: Vec<NodeSpec> = ids
            .iter()
            .map(|n| NodeSpec {
                node_id: (*n).into(),
                server: "s".into(),
                poll_interval: std::time::Duration::from_secs(30),
            })
            .collect();
        e.add_nodes(&specs);
        for (i, n) in ids.iter().take(2).enumerate() {
            e.on_ami(AmiEvent::Event {
                server: Arc::from("s"),
                frame: Frame::from_headers(&[
                    ("Event", "RPT_ALINKS".to_owned()),
                    ("Node", (*n).to_owned()),
                    ("EventValue", "2,2100TK,2101TU".to_owned()),
                ]),
                rx_seq: i as u64 + 1,
                received: Instant::now(),
            });
        }
        assert!(state.seq() > 0);
        // Views hold whole seconds: try again if the two fell on either side of one.
        let (fast, slow) = (0..5)
            .map(|_| {
                let fast = nodes_body(&state, Vec::new()).expect("encodes");
                (fast, nodes_body_by_views(&state))
            })
            .find(|(a, b)| a == b)
            .unwrap_or_else(|| {
                let fast = nodes_body(&state, Vec::new()).expect("encodes");
                (fast, nodes_body_by_views(&state))
            });
        assert_eq!(
            String::from_utf8_lossy(&fast),
            String::from_utf8_lossy(&slow)
        );
        // A reused buffer only changes the capacity.
        assert_eq!(
            nodes_body(&state, Vec::with_capacity(fast.len() * 2))
                .map(|b| b.len())
                .ok(),
            Some(fast.len())
        );
        let v: serde_json::Value = serde_json::from_slice(&fast).expect("valid JSON");
        assert_eq!(v["nodes"].as_array().map(Vec::len), Some(3));
        assert_eq!(v["epoch"], state.epoch());
    }
}

//! `GET /ws`: the live change stream, resumable with `?since=SEQ`.
//!
//! Protocol (every message is a JSON text frame with `type` and `seq`; `docs/api.md`):
//! - `snapshot` first (`seq` = the snapshot's point, `nodes`, `reason`), then one `event`
//!   per change, in order, whose `event` is the change's JSON made once by the state store
//!   ([`Published::json`], embedded verbatim);
//! - `heartbeat` every `websocket.heartbeat`, `alert` for each alert, `pong` for a
//!   `{"type":"ping"}`, and — to admin clients only — `control` for each finished link
//!   control attempt (its audit fields); these carry the last `seq` sent to the client;
//! - with `?since=SEQ` the missed events are replayed instead of a snapshot, or a
//!   snapshot (`reason: "replay_miss"`) is sent when they are no longer buffered.
//!
//! Fan-out: each client has three tasks. Its *pump* reads the store's broadcast, alerts
//! and the heartbeat timer, and moves frames into a bounded queue
//! (`websocket.client_queue`) with `try_send`; its *writer* drains that queue into the
//! socket; its *reader* reads what the client sends (pings, oversized messages, close). A socket that stops draining therefore only fills its own queue. When the
//! queue is full (or the broadcast reports the pump lagged) the client is resynced: the
//! pump stops queuing, waits for the writer to empty the queue, then queues a fresh
//! snapshot (`reason: "resync"`). If the queue does not drain within two heartbeat
//! intervals the client is dropped. Nothing here ever waits on another client.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::ws::{Message, WebSocket, Ws};
use warp::{Filter, Rejection, Reply};

use super::errors::{clip, error_reply};
use super::server::ConnInfo;
use super::{Ctx, origin};
use crate::alerts::Alert;
use crate::audit::AuditEntry;
use crate::state::{NodeView, Published, Replay};

/// Close codes (RFC 6455 §7.4.1).
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_TOO_BIG: u16 = 1009;

/// Shortest heartbeat accepted (a zero interval would spin).
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// Shortest time a slow client gets to drain its queue before it is dropped.
const MIN_STALL: Duration = Duration::from_secs(1);
/// A client that sends nothing at all — not even the pong its WebSocket stack owes for
/// our pings — for three heartbeats (and at least this long) is dropped.
const MIN_SILENCE: Duration = Duration::from_secs(10);

/// The WebSocket clients: a count for the cap and the gauge, and a tracker so shutdown
/// can wait for their goodbyes.
#[derive(Default)]
pub(crate) struct Hub {
    clients: AtomicUsize,
    pub tracker: TaskTracker,
}

impl Hub {
    /// Connected (and handshaking) clients.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
}

/// A client's place under `websocket.max_clients`; released on drop.
pub(crate) struct Slot {
    ctx: Arc<Ctx>,
    _task: TaskTrackerToken,
}

impl Slot {
    fn acquire(ctx: &Arc<Ctx>) -> Option<Slot> {
        let max = ctx.app.config.websocket.max_clients;
        ctx.hub
            .clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        ctx.app.metrics.ws_clients.inc();
        Some(Slot {
            ctx: ctx.clone(),
            _task: ctx.hub.tracker.token(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.ctx.hub.clients.fetch_sub(1, Ordering::AcqRel);
        self.ctx.app.metrics.ws_clients.dec();
    }
}

/// The `/ws` route.
pub(super) fn route(
    ctx: Arc<Ctx>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("ws")
        .and(warp::ws())
        .and(warp::header::headers_cloned())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::ext::optional::<ConnInfo>())
        .map(
            move |ws: Ws,
                  headers: HeaderMap,
                  query: HashMap<String, String>,
                  conn: Option<ConnInfo>| {
                // Readers who may not see link IPs (anonymous or `read` while identities
                // are configured) get every frame with IPs masked, as REST does.
                let token = query.get("token").map(String::as_str);
                let access = super::auth::read_access(&ctx.app.linkctl, "/ws", &headers, token);
                let mask = access.as_ref().map_or(true, |a| a.mask);
                // Admins also get the `control` messages.
                let admin = access.is_ok_and(|a| a.identity.has(crate::auth::Role::Admin));
                let res = handshake(&ctx, ws, &headers, &query, (mask, admin));
                if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(c) = conn {
                        c.mark_upgraded();
                    }
                }
                res
            },
        )
}

/// Checks the handshake (origin, `since`, client cap) and upgrades.
fn handshake(
    ctx: &Arc<Ctx>,
    ws: Ws,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    (mask, admin): (bool, bool),
) -> Response {
    let cfg = &ctx.app.config.websocket;
    if let Some(o) = headers.get(header::ORIGIN) {
        let text = o.to_str().unwrap_or("");
        let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if !origin::allowed(text, h("host"), h("x-forwarded-host"), &cfg.allowed_origins) {
            tracing::info!("[WS] refused a connection from origin {:?}", clip(text));
            return error_reply(
                StatusCode::FORBIDDEN,
                &format!(
                    "WebSocket connections from origin {:?} are not allowed: serve the page from this host or add the origin to websocket.allowed_origins",
                    clip(text)
                ),
            );
        }
    }
    let since = match query.get("since").map(|v| v.trim().parse::<u64>()) {
        None => None,
        Some(Ok(s)) => Some(Resume {
            since: s,
            epoch: query.get("epoch").map(|e| e.trim().to_owned()),
        }),
        Some(Err(_)) => {
            return error_reply(
                StatusCode::BAD_REQUEST,
                "invalid since: give the seq of the last message received (a whole number), or leave it out for a snapshot",
            );
        }
    };
    let Some(slot) = Slot::acquire(ctx) else {
        tracing::warn!(
            "[WS] refused a client: websocket.max_clients ({}) reached",
            cfg.max_clients
        );
        let mut res = error_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "too many WebSocket clients (websocket.max_clients is {}): try again later",
                cfg.max_clients
            ),
        );
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return res;
    };
    let ctx = ctx.clone();
    // Memory: tungstenite gives every connection a 128 KiB read buffer (touched on the first
    // read, so resident: ~140 KiB per client in all). warp 0.4 exposes no setting for it;
    // shrinking it needs tokio-tungstenite as a direct dependency or a warp change.
    let max = cfg.max_message_bytes.max(125);
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| Client::run(ctx, socket, since, slot, (mask, admin)))
        .into_response()
}

/// Messages to the client.
#[derive(Serialize)]
struct SnapshotMsg<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    seq: u64,
    /// This run's id (see [`crate::state::StateStore::epoch`]).
    epoch: &'a str,
    /// `connect`, `replay_miss` (the `since` point is no longer buffered), `resync`
    /// (the client fell behind) or `epoch_changed` (`since` belongs to another run).
    reason: &'static str,
    nodes: &'a [NodeView],
}

#[derive(Serialize)]
struct AlertMsg<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    seq: u64,
    epoch: &'a str,
    alert: &'a Alert,
}

/// `{"type":"control","seq":N,"epoch":..., <the audit entry's fields>}` (admins only).
#[derive(Serialize)]
struct ControlMsg<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    seq: u64,
    epoch: &'a str,
    #[serde(flatten)]
    entry: &'a AuditEntry,
}

/// A message from the client; only `{"type":"ping"}` means something.
#[derive(Deserialize)]
struct Inbound<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

/// `{"type":"event","seq":N,"event":<json>}` around the change's JSON, made once per change.
fn event_frame(p: &Published, epoch: &str) -> String {
    let mut s = String::with_capacity(p.json.len() + 64 + epoch.len());
    let _ = write!(
        s,
        "{{\"type\":\"event\",\"seq\":{},\"epoch\":\"{epoch}\",\"event\":",
        p.event.seq
    );
    s.push_str(&p.json);
    s.push('}');
    s
}

fn snapshot_frame(seq: u64, epoch: &str, nodes: &[NodeView], reason: &'static str) -> String {
    serde_json::to_string(&SnapshotMsg { kind: "snapshot", seq, epoch, reason, nodes })
        .unwrap_or_else(|e| format!("{{\"type\":\"snapshot\",\"seq\":{seq},\"epoch\":\"{epoch}\",\"reason\":\"{reason}\",\"nodes\":[],\"error\":\"{e}\"}}"))
}

fn simple_frame(kind: &str, seq: u64, epoch: &str) -> String {
    format!("{{\"type\":\"{kind}\",\"seq\":{seq},\"epoch\":\"{epoch}\"}}")
}

/// A resume request: `?since=SEQ`, with the run it came from (`&epoch=`) when known.
#[derive(Debug)]
struct Resume {
    since: u64,
    epoch: Option<String>,
}

/// Why the pump stopped.
enum Exit {
    /// The peer closed, the socket failed, or the writer stopped.
    Gone,
    /// Say goodbye with a close frame.
    Close(u16, String),
    /// Too slow: drop the connection without ceremony (its socket is full).
    Drop,
}

/// One client's pump.
struct Client {
    ctx: Arc<Ctx>,
    queue: mpsc::Sender<Message>,
    /// Notified by the writer each time the queue runs empty.
    drained: Arc<Notify>,
    /// Seq of the last change (or snapshot) queued for the client.
    last_seq: u64,
    /// Waiting for the queue to drain before a resync snapshot, until this deadline.
    resync_by: Option<Instant>,
    stall: Duration,
}

enum Push {
    Queued,
    Full,
    Closed,
}

impl Client {
    async fn run(
        ctx: Arc<Ctx>,
        socket: WebSocket,
        since: Option<Resume>,
        slot: Slot,
        (mask, admin): (bool, bool),
    ) {
        let cfg = ctx.app.config.websocket.clone();
        let heartbeat = cfg.heartbeat.0.max(MIN_HEARTBEAT);
        let (sink, inbound) = socket.split();
        let (qtx, qrx) = mpsc::channel(cfg.client_queue.max(1));
        let drained = Arc::new(Notify::new());
        let stall = (heartbeat * 2).max(MIN_STALL);
        let mut writer = tokio::spawn(write_loop(sink, qrx, drained.clone(), stall, mask));
        let (from_tx, mut from_client) = mpsc::channel(4);
        let heard = Arc::new(AtomicBool::new(true));
        let reader = tokio::spawn(read_loop(inbound, from_tx, heard.clone()));
        let silence_limit =
            (heartbeat * 3).max(MIN_SILENCE).as_millis() / heartbeat.as_millis().max(1);
        let mut silent_beats: u128 = 0;
        let alerts = alert_stream(ctx.app.alerts.subscribe());
        tokio::pin!(alerts);
        let controls = control_stream(admin.then(|| ctx.app.linkctl.subscribe_controls()));
        tokio::pin!(controls);
        let mut client = Client {
            ctx: ctx.clone(),
            queue: qtx,
            drained,
            last_seq: 0,
            resync_by: None,
            stall,
        };
        tracing::debug!(
            "[WS] client connected (since {since:?}); {} connected",
            ctx.hub.clients()
        );

        // Held across iterations: its registration is made once.
        let shutdown = ctx.shutdown.cancelled();
        tokio::pin!(shutdown);
        let start = tokio::select! {
            _ = &mut shutdown => Err(Exit::Close(CLOSE_GOING_AWAY, "server shutting down".into())),
            r = client.start(since) => r,
        };
        let exit = match start {
            Err(exit) => exit,
            Ok(rx) => {
                let changes = change_stream(rx);
                tokio::pin!(changes);
                let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
                ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                let mut alerts_open = true;
                // Armed while a resync waits for the queue to drain.
                let stall_timer = tokio::time::sleep(Duration::ZERO);
                tokio::pin!(stall_timer);
                let mut armed_for = None;
                loop {
                    let resyncing = client.resync_by.is_some();
                    if resyncing && armed_for != client.resync_by {
                        armed_for = client.resync_by;
                        if let Some(d) = armed_for {
                            stall_timer.as_mut().reset(d);
                        }
                    }
                    let step = tokio::select! {
                        biased;
                        _ = &mut shutdown => Err(Exit::Close(CLOSE_GOING_AWAY, "server shutting down".into())),
                        m = from_client.recv() => client.on_client(m, cfg.max_message_bytes),
                        _ = client.drained.notified(), if resyncing => {
                            if let Some(rx) = client.try_finish_resync() {
                                changes.set(change_stream(rx));
                            }
                            Ok(())
                        }
                        _ = &mut stall_timer, if resyncing => Err(Exit::Drop),
                        r = changes.next(), if !resyncing => match r {
                            Some(r) => client.on_change(r),
                            None => Err(Exit::Gone),
                        },
                        a = alerts.next(), if alerts_open => {
                            match a {
                                Some(Ok(alert)) if !resyncing => client.on_alert(&alert),
                                Some(Ok(_)) | Some(Err(RecvError::Lagged(_))) => Ok(()),
                                Some(Err(RecvError::Closed)) | None => {
                                    alerts_open = false;
                                    Ok(())
                                }
                            }
                        }
                        Some(c) = controls.next() => match c {
                            Ok(entry) if !resyncing => client.on_control(&entry),
                            _ => Ok(()),
                        },
                        _ = ticker.tick(), if !resyncing => {
                            silent_beats = if heard.swap(false, Ordering::AcqRel) { 0 } else { silent_beats + 1 };
                            if silent_beats > silence_limit {
                                Err(Exit::Drop)
                            } else {
                                let frame = simple_frame("heartbeat", client.last_seq, ctx.app.state.epoch());
                                // A protocol ping too: every WebSocket stack answers it,
                                // so a client that stopped reading falls silent.
                                let _ = client.queue.try_send(Message::ping(Vec::<u8>::new()));
                                client.push_or_resync(frame)
                            }
                        }
                    };
                    // A resync that can complete at once (queue already empty).
                    if step.is_ok() && client.resync_by.is_some() && client.queue_empty() {
                        if let Some(rx) = client.try_finish_resync() {
                            changes.set(change_stream(rx));
                        }
                    }
                    if let Err(exit) = step {
                        break exit;
                    }
                }
            }
        };

        match exit {
            Exit::Gone => writer.abort(),
            Exit::Drop => {
                tracing::info!(
                    "[WS] dropped a client that stopped reading (queue not drained within {:?}, or silent for {} heartbeats)",
                    client.stall,
                    silence_limit
                );
                ctx.app
                    .metrics
                    .ws_resyncs
                    .with_label_values(&["dropped"])
                    .inc();
                writer.abort();
            }
            Exit::Close(code, reason) => {
                let Client { queue, .. } = client;
                if queue.try_send(Message::close_with(code, reason)).is_ok() {
                    drop(queue);
                    let _ = tokio::time::timeout(Duration::from_secs(1), &mut writer).await;
                }
                writer.abort();
            }
        }
        reader.abort();
        drop(slot);
        tracing::debug!("[WS] client gone; {} connected", ctx.hub.clients());
    }

    /// The first messages: a snapshot, or the replay after `since`. Returns the change
    /// subscription that continues right after them.
    async fn start(
        &mut self,
        resume: Option<Resume>,
    ) -> Result<broadcast::Receiver<Arc<Published>>, Exit> {
        let store = &self.ctx.app.state;
        let Some(Resume { since, epoch }) = resume else {
            let (seq, nodes, rx) = store.subscribe_with_snapshot();
            self.queue_snapshot(seq, &nodes, "connect")?;
            return Ok(rx);
        };
        if epoch.as_deref().is_some_and(|e| e != store.epoch()) {
            // `since` counts another run's changes: never replay ours against it.
            self.ctx
                .app
                .metrics
                .ws_resyncs
                .with_label_values(&["epoch_changed"])
                .inc();
            let (seq, nodes, rx) = store.subscribe_with_snapshot();
            self.queue_snapshot(seq, &nodes, "epoch_changed")?;
            return Ok(rx);
        }
        match store.replay_since(since) {
            (Replay::Changes(missed), rx) => {
                self.last_seq = since;
                // A long replay may exceed the queue: wait for the writer (this client
                // only), within the stall limit.
                let stall = self.stall;
                let queue = self.queue.clone();
                let send_all = async {
                    for p in &missed {
                        queue
                            .send(Message::text(event_frame(p, store.epoch())))
                            .await
                            .map_err(|_| Exit::Gone)?;
                    }
                    Ok(())
                };
                match tokio::time::timeout(stall, send_all).await {
                    Ok(Ok(())) => {}
                    Ok(Err(exit)) => return Err(exit),
                    Err(_) => return Err(Exit::Drop),
                }
                if let Some(last) = missed.last() {
                    self.last_seq = last.event.seq;
                }
                Ok(rx)
            }
            (Replay::TooOld, _) => {
                self.ctx
                    .app
                    .metrics
                    .ws_resyncs
                    .with_label_values(&["replay_miss"])
                    .inc();
                let (seq, nodes, rx) = store.subscribe_with_snapshot();
                self.queue_snapshot(seq, &nodes, "replay_miss")?;
                Ok(rx)
            }
        }
    }

    fn queue_snapshot(
        &mut self,
        seq: u64,
        nodes: &[NodeView],
        reason: &'static str,
    ) -> Result<(), Exit> {
        match self.push(snapshot_frame(
            seq,
            self.ctx.app.state.epoch(),
            nodes,
            reason,
        )) {
            Push::Queued => {
                self.last_seq = seq;
                Ok(())
            }
            Push::Full => Err(Exit::Drop),
            Push::Closed => Err(Exit::Gone),
        }
    }

    fn push(&self, frame: String) -> Push {
        match self.queue.try_send(Message::text(frame)) {
            Ok(()) => Push::Queued,
            Err(TrySendError::Full(_)) => Push::Full,
            Err(TrySendError::Closed(_)) => Push::Closed,
        }
    }

    /// Queues a frame; a full queue starts a resync.
    fn push_or_resync(&mut self, frame: String) -> Result<(), Exit> {
        match self.push(frame) {
            Push::Queued => Ok(()),
            Push::Full => {
                self.begin_resync();
                Ok(())
            }
            Push::Closed => Err(Exit::Gone),
        }
    }

    fn on_change(&mut self, r: Result<Arc<Published>, RecvError>) -> Result<(), Exit> {
        match r {
            Ok(p) => {
                if p.event.seq <= self.last_seq {
                    return Ok(()); // already covered by the snapshot or replay
                }
                match self.push(event_frame(&p, self.ctx.app.state.epoch())) {
                    Push::Queued => {
                        self.last_seq = p.event.seq;
                        Ok(())
                    }
                    Push::Full => {
                        self.begin_resync();
                        Ok(())
                    }
                    Push::Closed => Err(Exit::Gone),
                }
            }
            Err(RecvError::Lagged(_)) => {
                self.begin_resync();
                Ok(())
            }
            Err(RecvError::Closed) => {
                Err(Exit::Close(CLOSE_GOING_AWAY, "server shutting down".into()))
            }
        }
    }

    fn on_alert(&mut self, alert: &Alert) -> Result<(), Exit> {
        let frame = serde_json::to_string(&AlertMsg {
            kind: "alert",
            seq: self.last_seq,
            epoch: self.ctx.app.state.epoch(),
            alert,
        })
        .unwrap_or_default();
        if frame.is_empty() {
            return Ok(());
        }
        self.push_or_resync(frame)
    }

    fn on_control(&mut self, entry: &AuditEntry) -> Result<(), Exit> {
        let frame = serde_json::to_string(&ControlMsg {
            kind: "control",
            seq: self.last_seq,
            epoch: self.ctx.app.state.epoch(),
            entry,
        })
        .unwrap_or_default();
        if frame.is_empty() {
            return Ok(());
        }
        self.push_or_resync(frame)
    }

    fn on_client(&mut self, msg: Option<FromClient>, max: usize) -> Result<(), Exit> {
        match msg {
            Some(FromClient::Ping) if self.resync_by.is_none() => {
                let frame = simple_frame("pong", self.last_seq, self.ctx.app.state.epoch());
                self.push_or_resync(frame)
            }
            Some(FromClient::Ping) => Ok(()),
            Some(FromClient::TooBig) => Err(Exit::Close(
                CLOSE_TOO_BIG,
                format!("message too big: the limit is {max} bytes"),
            )),
            Some(FromClient::ProtocolError) => {
                Err(Exit::Close(CLOSE_PROTOCOL_ERROR, "protocol error".into()))
            }
            Some(FromClient::Gone) | None => Err(Exit::Gone),
        }
    }

    fn begin_resync(&mut self) {
        if self.resync_by.is_none() {
            self.ctx
                .app
                .metrics
                .ws_resyncs
                .with_label_values(&["slow"])
                .inc();
            tracing::debug!(
                "[WS] client fell behind at seq {}: resyncing",
                self.last_seq
            );
            self.resync_by = Some(Instant::now() + self.stall);
        }
    }

    fn queue_empty(&self) -> bool {
        self.queue.capacity() == self.queue.max_capacity()
    }

    /// Once the queue is empty: a fresh snapshot and subscription.
    fn try_finish_resync(&mut self) -> Option<broadcast::Receiver<Arc<Published>>> {
        if self.resync_by.is_none() || !self.queue_empty() {
            return None;
        }
        let (seq, nodes, rx) = self.ctx.app.state.subscribe_with_snapshot();
        let frame = snapshot_frame(seq, self.ctx.app.state.epoch(), &nodes, "resync");
        if let Push::Queued = self.push(frame) {
            self.last_seq = seq;
            self.resync_by = None;
            Some(rx)
        } else {
            None
        }
    }
}

/// What the reader task tells the pump.
enum FromClient {
    /// `{"type":"ping"}`: answer with `pong`.
    Ping,
    /// A message over `websocket.max_message_bytes` (the WebSocket layer refused it).
    TooBig,
    ProtocolError,
    /// Closed or reset by the peer.
    Gone,
}

/// Reads the client's messages in a task of its own, so the socket is only read when it
/// has data. (Polling a tungstenite stream that has no data still prepares its whole read
/// buffer — 128 KiB — so it must not sit in the pump's `select!`, which runs for every
/// change.)
async fn read_loop(
    mut inbound: SplitStream<WebSocket>,
    to_pump: mpsc::Sender<FromClient>,
    heard: Arc<AtomicBool>,
) {
    let end = loop {
        let next = inbound.next().await;
        heard.store(true, Ordering::Release);
        match next {
            None => break FromClient::Gone,
            Some(Err(e)) => {
                let text = e.to_string();
                if text.contains("Space limit exceeded") || text.contains("too long") {
                    tracing::info!("[WS] closing a client that sent an oversized message ({text})");
                    break FromClient::TooBig;
                }
                tracing::debug!("[WS] read error: {text}");
                break FromClient::ProtocolError;
            }
            Some(Ok(m)) if m.is_close() => break FromClient::Gone,
            Some(Ok(m)) if m.is_text() => {
                if let Ok(Inbound { kind }) = serde_json::from_slice::<Inbound<'_>>(m.as_bytes()) {
                    if kind == "ping" {
                        // A client pinging faster than it reads loses pongs, nothing else.
                        let _ = to_pump.try_send(FromClient::Ping);
                    }
                }
            }
            // Binary, ping and pong frames: nothing to do (pings are answered below us).
            Some(Ok(_)) => {}
        }
    };
    let _ = to_pump.send(end).await;
}

/// The change subscription as a stream whose pending `recv` survives `select!` rounds.
fn change_stream(
    rx: broadcast::Receiver<Arc<Published>>,
) -> impl futures_util::Stream<Item = Result<Arc<Published>, RecvError>> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        let r = rx.recv().await;
        Some((r, rx))
    })
}

/// The alert subscription, likewise.
fn alert_stream(
    rx: broadcast::Receiver<Arc<Alert>>,
) -> impl futures_util::Stream<Item = Result<Arc<Alert>, RecvError>> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        let r = rx.recv().await;
        Some((r, rx))
    })
}

/// Finished control attempts for an admin client (`None`: never yields). A closed
/// channel never yields either; a lagging client skips what it missed.
fn control_stream(
    rx: Option<broadcast::Receiver<Arc<AuditEntry>>>,
) -> impl futures_util::Stream<Item = Result<Arc<AuditEntry>, RecvError>> {
    futures_util::stream::unfold(rx, |rx| async move {
        let Some(mut rx) = rx else {
            return std::future::pending().await;
        };
        match rx.recv().await {
            Err(RecvError::Closed) => std::future::pending().await,
            r => Some((r, Some(rx))),
        }
    })
}

/// Drains the client's queue into its socket, flushing whenever the queue runs empty.
/// A write that cannot complete within `stall` (the client stopped reading and its socket
/// is full) ends the connection.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<Message>,
    drained: Arc<Notify>,
    stall: Duration,
    mask: bool,
) {
    while let Some(msg) = queue.recv().await {
        let close = msg.is_close();
        let msg = if mask { masked(msg) } else { msg };
        if !matches!(
            tokio::time::timeout(stall, sink.feed(msg)).await,
            Ok(Ok(()))
        ) {
            return;
        }
        if close || queue.is_empty() {
            if !matches!(tokio::time::timeout(stall, sink.flush()).await, Ok(Ok(()))) {
                return;
            }
            drained.notify_one();
        }
        if close {
            return;
        }
    }
    let _ = sink.close().await;
}

/// The frame with every link IP masked (`crate::auth::mask_ips_in`); frames that are not
/// JSON text (pings, close) pass unchanged. Only masked readers pay for the re-encoding.
fn masked(msg: Message) -> Message {
    let Ok(text) = msg.to_str() else {
        return msg;
    };
    if !text.contains("\"ip\"") {
        return msg;
    }
    let Ok(mut json) = serde_json::from_str::<serde_json::Value>(text) else {
        return msg;
    };
    crate::auth::mask_ips_in(&mut json);
    match serde_json::to_string(&json) {
        Ok(t) => Message::text(t),
        Err(_) => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ChangeEvent, ChangeKind};

    #[test]
    fn masked_frames_hide_link_ips_and_keep_the_rest() {
        let f = r#"{"type":"event","seq":3,"event":{"kind":"link_keyed","link":{"node":"2000","ip":"192.0.2.44"}}}"#;
        let out = masked(Message::text(f));
        let text = out.to_str().expect("text");
        assert!(!text.contains("192.0.2.44"), "{text}");
        assert!(text.contains("\"node\":\"2000\""), "{text}");
        let plain = r#"{"type":"heartbeat","seq":3}"#;
        assert_eq!(masked(Message::text(plain)).to_str().ok(), Some(plain));
    }

    #[test]
    fn event_frames_embed_the_change_verbatim() {
        let mut ev = ChangeEvent::new(ChangeKind::TxKeyed, "default", Some("1999"));
        ev.seq = 42;
        let p = Published::new(ev);
        let frame = event_frame(&p, "e1");
        assert!(frame.starts_with("{\"type\":\"event\",\"seq\":42,\"epoch\":\"e1\",\"event\":{"));
        assert!(frame.contains(&p.json));
        let v: serde_json::Value = serde_json::from_str(&frame).expect("valid JSON");
        assert_eq!(v["event"]["kind"], "tx_keyed");
        assert_eq!(v["event"]["seq"], 42);
    }

    #[test]
    fn snapshot_and_simple_frames_are_json() {
        let v: serde_json::Value =
            serde_json::from_str(&snapshot_frame(7, "e1", &[], "connect")).expect("json");
        assert_eq!(v["epoch"], "e1");
        assert_eq!(v["type"], "snapshot");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["reason"], "connect");
        assert!(v["nodes"].as_array().is_some_and(|a| a.is_empty()));
        let v: serde_json::Value =
            serde_json::from_str(&simple_frame("heartbeat", 9, "e1")).expect("json");
        assert_eq!(v["epoch"], "e1");
        assert_eq!(
            (v["type"].as_str(), v["seq"].as_u64()),
            (Some("heartbeat"), Some(9))
        );
    }
}

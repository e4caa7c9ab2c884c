//! `GET /ws`: the live change stream, resumable with `?since=SEQ`, optionally narrowed to
//! some nodes or servers (`?nodes=2000,2001`, `?servers=hub,home`).
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
//! Transport: the upgrade is taken here (hyper's `OnUpgrade`), and frames are written to
//! the socket as bytes ([`wsframe`]). An event's frame is encoded once for every client
//! ([`FrameCache`]: server frames are unmasked, so identical; readers whose link IPs are
//! hidden share a second, masked variant), and a client's reader holds only the bytes of
//! the frame it is reading.
//!
//! Fan-out: a few fan-out tasks ([`FANOUT_SHARDS`]) each take every change from the
//! store once and offer it to their share of the clients: under the client's lock
//! ([`Flow`]), the shared frame is written straight to the socket (a non-blocking write)
//! when nothing waits for the client's *writer* and the socket takes it whole; otherwise
//! it goes into a bounded queue (`websocket.client_queue`) with `try_send`, which the
//! writer drains into the socket (the queue and the writer task are made when a frame
//! first has to wait: a client that keeps up has neither). No client task wakes for a
//! change. Each client also has
//! its own task (its snapshot or replay, alerts, control records, heartbeats, answers, its
//! resyncs, the goodbye), which sleeps between those, and a *reader* that sleeps on the
//! socket's readiness and reads what the client sends (pings, oversized messages, close).
//! Order is kept: every frame is written under the client's lock, and nothing is written
//! directly while anything handed to the writer is unwritten. A socket that stops
//! draining therefore only fills its own queue. When the queue is full the client is
//! resynced: the fan-out passes it by, its task waits for the writer to empty the queue,
//! then sends a fresh snapshot (`reason: "resync"`), after which the fan-out serves it
//! again (the changes published while the snapshot was made are sent from the
//! subscription taken with it). If the queue does not drain within two heartbeat
//! intervals the client is dropped. Nothing here ever waits on another client.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::upgrade::OnUpgrade;
use serde::{Deserialize, Serialize};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::ws::Ws;
use warp::{Filter, Rejection};

use super::errors::{clip, error_reply};
use super::server::{self, ConnInfo, UpgradedConn};
use super::wsframe::{self, DecodeError, Decoder, Inbound as Frame};
use super::{Ctx, origin};
use crate::alerts::Alert;
use crate::audit::AuditEntry;
use crate::config::Config;
use crate::observe::InternalEvent;
use crate::state::{ChangeEvent, NodeView, Published, Replay};

mod events;
pub use events::{ResyncReason, SnapshotReason, WsResync};

/// Close codes (RFC 6455 §7.4.1).
const CLOSE_NORMAL: u16 = 1000;
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

/// Bytes read from a client at a time; the reader's buffer is let go again once it has
/// held more than [`READ_KEEP`] (a big message) and is empty.
const READ_CHUNK: usize = 512;
const READ_KEEP: usize = 4096;
/// Frames already queued are written together, up to this many bytes per write.
const WRITE_BATCH: usize = 64 * 1024;
/// How long a goodbye waits for the close frame to go out and the client to close.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Most entries in `?nodes=` or `?servers=`, and most bytes in either value.
const MAX_SELECTED: usize = 1024;
const MAX_SELECTION_BYTES: usize = 16 * 1024;

/// Event frames kept for reuse: the last this many changes (by `seq`).
const CACHE_SLOTS: usize = 64;

/// Fan-out tasks (each serves a share of the clients; started with the first client).
const FANOUT_SHARDS: usize = 2;

/// The WebSocket clients: a count for the cap and the gauge, a tracker so shutdown can
/// wait for their goodbyes, the frames every client shares and the fan-out.
#[derive(Default)]
pub(crate) struct Hub {
    clients: AtomicUsize,
    pub tracker: TaskTracker,
    frames: FrameCache,
    fanout: FanOut,
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

// --- frames shared by every client -----------------------------------------------------

/// One change's `event` frame, encoded once: plain, and (made by the first reader who
/// needs it) with link IPs masked.
struct EventFrames {
    seq: u64,
    plain: Bytes,
    masked: OnceLock<Bytes>,
}

impl EventFrames {
    fn new(p: &Published, epoch: &str) -> EventFrames {
        EventFrames {
            seq: p.event.seq,
            plain: wsframe::text(&event_frame(p.event.seq, epoch, &p.json)),
            masked: OnceLock::new(),
        }
    }

    fn get(&self, p: &Published, epoch: &str, mask: bool) -> &Bytes {
        if !mask {
            return &self.plain;
        }
        self.masked
            .get_or_init(|| match masked_event_json(&p.event) {
                Some(json) => wsframe::text(&event_frame(p.event.seq, epoch, &json)),
                None => self.plain.clone(),
            })
    }
}

/// The frames of the last [`CACHE_SLOTS`] changes, so the first client to need one
/// encodes it and the others clone its bytes (a reference count).
struct FrameCache {
    slots: [Mutex<Option<Arc<EventFrames>>>; CACHE_SLOTS],
}

impl Default for FrameCache {
    fn default() -> FrameCache {
        FrameCache {
            slots: std::array::from_fn(|_| Mutex::new(None)),
        }
    }
}

impl FrameCache {
    /// The `event` frame of `p` for a plain or a masked reader.
    fn frame(&self, p: &Published, epoch: &str, mask: bool) -> Bytes {
        self.event(p, epoch).get(p, epoch, mask).clone()
    }

    /// Both frames of `p` (the masked one made when first asked for).
    fn event(&self, p: &Published, epoch: &str) -> Arc<EventFrames> {
        let seq = p.event.seq;
        {
            let mut slot = self.slots[(seq % CACHE_SLOTS as u64) as usize]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match &*slot {
                Some(f) if f.seq == seq => f.clone(),
                // A client far behind (a replay): encode for it alone.
                Some(f) if f.seq > seq => Arc::new(EventFrames::new(p, epoch)),
                _ => {
                    let f = Arc::new(EventFrames::new(p, epoch));
                    *slot = Some(f.clone());
                    f
                }
            }
        }
    }
}

/// The change's JSON with its link IP masked (`crate::auth::mask_ip`), or `None` when it
/// carries no IP. Same result as masking the JSON text, without reordering its fields.
fn masked_event_json(ev: &ChangeEvent) -> Option<String> {
    let ip = ev.link.as_ref()?.ip.as_ref()?;
    let mut ev = ev.clone();
    let masked = crate::auth::mask_ip(ip);
    if let Some(l) = ev.link.as_mut() {
        l.ip = Some(masked);
    }
    serde_json::to_string(&ev).ok()
}

// --- the fan-out -----------------------------------------------------------------------

/// The fan-out tasks and the clients waiting to be taken in by one.
#[derive(Default)]
struct FanOut {
    shards: [Shard; FANOUT_SHARDS],
    next: AtomicUsize,
}

#[derive(Default)]
struct Shard {
    /// Clients handed to this shard's task, not yet taken in.
    joining: Mutex<Vec<Arc<Member>>>,
    /// Tells the task a client joined or left.
    wake: Notify,
    started: AtomicBool,
}

impl FanOut {
    /// Hands a client to a fan-out task (started now if it is the first); returns the
    /// shard, to tell it when the client leaves.
    fn join(&self, ctx: &Arc<Ctx>, member: Arc<Member>) -> usize {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % FANOUT_SHARDS;
        let shard = &self.shards[i];
        shard
            .joining
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(member);
        if !shard.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(fan_out(ctx.clone(), i));
        }
        shard.wake.notify_one();
        i
    }

    /// A client of shard `i` stopped: its task lets go of it now, not at the next change.
    fn left(&self, i: usize) {
        self.shards[i].wake.notify_one();
    }
}

/// One fan-out task: takes every change from the store once and offers it to each of
/// its clients (a non-blocking write to a quiet client's socket). It ends with the
/// server. A lag of its own subscription is repaired from the replay buffer; past the
/// buffer, its clients are resynced.
async fn fan_out(ctx: Arc<Ctx>, shard: usize) {
    let store = &ctx.app.state;
    let here = &ctx.hub.fanout.shards[shard];
    let mut members: Vec<Arc<Member>> = Vec::new();
    let shutdown = ctx.shutdown.cancelled();
    tokio::pin!(shutdown);
    // The last change dealt with (a lag is repaired from there).
    let mut done = store.seq();
    let (replay, mut rx) = store.replay_since(done);
    if let Replay::Changes(missed) = replay {
        done = missed.last().map_or(done, |p| p.event.seq);
    }
    loop {
        let r = tokio::select! {
            biased;
            _ = &mut shutdown => return,
            _ = here.wake.notified() => {
                take_in(here, &mut members);
                members.retain(|m| !m.lock().stopped());
                continue;
            }
            r = rx.recv() => r,
        };
        take_in(here, &mut members);
        match r {
            Ok(p) => {
                deliver(&ctx, &mut members, &p).await;
                done = p.event.seq;
            }
            Err(RecvError::Lagged(_)) => {
                let floor = store.seq();
                let (replay, fresh) = store.replay_since(done);
                rx = fresh;
                match replay {
                    Replay::Changes(missed) => {
                        for p in &missed {
                            deliver(&ctx, &mut members, p).await;
                            done = p.event.seq;
                        }
                    }
                    Replay::TooOld => {
                        for m in &members {
                            m.fell_behind();
                        }
                        done = floor;
                    }
                }
            }
            Err(RecvError::Closed) => {
                for m in &members {
                    m.stop(Stop::GoingAway);
                }
                return;
            }
        }
    }
}

/// Moves the clients that joined into the task's own list.
fn take_in(shard: &Shard, members: &mut Vec<Arc<Member>>) {
    let mut joining = shard.joining.lock().unwrap_or_else(PoisonError::into_inner);
    members.append(&mut joining);
}

/// One change to every client of a fan-out task; stopped clients are let go.
async fn deliver(ctx: &Ctx, members: &mut Vec<Arc<Member>>, p: &Arc<Published>) {
    let epoch = ctx.app.state.epoch();
    let frames = ctx.hub.frames.event(p, epoch);
    let mut i = 0;
    while i < members.len() {
        // The worker's other tasks (the engine, requests) get their turn during a big
        // fan-out: tokio's cooperative budget yields every 128 clients.
        tokio::task::coop::consume_budget().await;
        if members[i].offer(&ctx.hub.frames, p, &frames, epoch) {
            i += 1;
        } else {
            members.swap_remove(i);
        }
    }
}

/// A client as the fan-out sees it.
struct Member {
    flow: Mutex<Flow>,
    /// Link IPs hidden from this reader.
    mask: bool,
    selection: Option<Arc<Selection>>,
    /// Wakes the client's own task when the fan-out changed its mode (a resync to do, the
    /// socket gone, the stream ended).
    news: Notify,
}

/// A client's write side. Every frame for the client is written under this lock (by the
/// fan-out or by the client's task), so they keep one order.
struct Flow {
    /// The socket and the writer's queue; `None` once the client's task let go of them.
    sink: Option<Sink>,
    /// Seq of the last change (or snapshot) the client is up to: sent, or left out by
    /// its selection.
    last_seq: u64,
    mode: Mode,
}

enum Mode {
    /// The snapshot or replay is not out yet: the fan-out passes this client by.
    Starting,
    /// Gets every change after `last_seq`. The subscription is the one taken with the
    /// snapshot (or replay): the fan-out sends what it holds before the next change it
    /// offers (the changes published while the snapshot was being made), then drops it.
    Live(Option<broadcast::Receiver<Arc<Published>>>),
    /// Fell behind: nothing is sent until the writer has drained and a fresh snapshot is
    /// out.
    Resyncing,
    Stopped(Stop),
}

/// Why the fan-out stopped serving a client.
#[derive(Clone, Copy)]
enum Stop {
    /// The socket failed, or the client's task ended.
    Gone,
    /// The change stream ended (the server is going away).
    GoingAway,
}

/// The socket and the writer's queue.
struct Sink {
    /// The socket (the write side is shut when the writer's handle and this one are
    /// gone). The fan-out writes it directly with one non-blocking `send` through
    /// `socket2::SockRef` (no tokio readiness bookkeeping: three more cache lines per
    /// client per change, `docs/performance.md`); a write it cannot complete goes to the
    /// writer, which waits on tokio's readiness (stale at worst: tokio then tries, gets
    /// `WouldBlock` and waits for the next edge).
    sock: Arc<OwnedWriteHalf>,
    /// The writer's queue and task: started when a frame first has to wait for the
    /// socket (a client that keeps up never has one). Dropping the sink stops it.
    writer: Option<(mpsc::Sender<Out>, JoinHandle<()>)>,
    /// Frames handed to the writer and not yet written out (queued or being written).
    pending: Arc<AtomicUsize>,
    /// Notified by the writer each time it has written everything handed to it.
    drained: Arc<Notify>,
    /// Frames the queue holds (`websocket.client_queue`).
    queue_len: usize,
    /// A write that cannot complete within this ends the connection.
    stall: Duration,
}

enum Push {
    Queued,
    Full,
    Closed,
}

impl Sink {
    fn new(sock: OwnedWriteHalf, queue_len: usize, stall: Duration) -> Sink {
        Sink {
            sock: Arc::new(sock),
            writer: None,
            pending: Arc::new(AtomicUsize::new(0)),
            drained: Arc::new(Notify::new()),
            queue_len: queue_len.max(1),
            stall,
        }
    }

    /// The writer's queue, the writer started if it is not yet.
    fn queue(&mut self) -> &mpsc::Sender<Out> {
        let (tx, _) = self.writer.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(self.queue_len);
            let task = tokio::spawn(write_loop(
                self.sock.clone(),
                rx,
                self.pending.clone(),
                self.drained.clone(),
                self.stall,
            ));
            (tx, task)
        });
        tx
    }

    /// The writer task, if any, to wait for it to finish what it was given.
    fn take_writer(&mut self) -> Option<JoinHandle<()>> {
        self.writer.take().map(|(_, task)| task)
    }

    /// Sends a frame: straight to the socket when nothing is waiting for the writer and
    /// the socket takes it all (the usual case: no task hand-off), else through the queue.
    fn push(&mut self, frame: &Bytes) -> Push {
        if self.pending.load(Ordering::Acquire) == 0 {
            let tcp: &tokio::net::TcpStream = (*self.sock).as_ref();
            match socket2::SockRef::from(tcp).send(frame) {
                Ok(n) if n == frame.len() => return Push::Queued,
                // The rest goes first in the (empty) queue, so order is kept.
                Ok(n) => return self.enqueue(Out::Frame(frame.slice(n..))),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Push::Closed,
            }
        }
        self.enqueue(Out::Frame(frame.clone()))
    }

    /// Hands a frame to the writer.
    fn enqueue(&mut self, out: Out) -> Push {
        self.pending.fetch_add(1, Ordering::AcqRel);
        let r = match self.queue().try_send(out) {
            Ok(()) => return Push::Queued,
            Err(TrySendError::Full(_)) => Push::Full,
            Err(TrySendError::Closed(_)) => Push::Closed,
        };
        self.pending.fetch_sub(1, Ordering::AcqRel);
        r
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.writer {
            task.abort();
        }
    }
}

impl Flow {
    fn push(&mut self, frame: &Bytes) -> Push {
        match &mut self.sink {
            Some(sink) => sink.push(frame),
            None => Push::Closed,
        }
    }

    fn stopped(&self) -> bool {
        matches!(self.mode, Mode::Stopped(_))
    }

    /// Sends one change (or records it as left out by the selection); `false` once
    /// the client is no longer live (it fell behind, or its socket failed).
    fn send(&mut self, m: &Member, p: &Published, frames: &EventFrames, epoch: &str) -> bool {
        if !m.follows(&p.event) {
            self.last_seq = p.event.seq;
            return true;
        }
        match self.push(frames.get(p, epoch, m.mask)) {
            Push::Queued => {
                self.last_seq = p.event.seq;
                true
            }
            Push::Full => {
                self.mode = Mode::Resyncing;
                false
            }
            Push::Closed => {
                self.mode = Mode::Stopped(Stop::Gone);
                false
            }
        }
    }
}

impl Member {
    fn lock(&self) -> std::sync::MutexGuard<'_, Flow> {
        self.flow.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn follows(&self, ev: &ChangeEvent) -> bool {
        self.selection.as_ref().is_none_or(|s| s.event(ev))
    }

    /// Offers a change (the fan-out); `false` when the client has stopped.
    fn offer(&self, cache: &FrameCache, p: &Published, frames: &EventFrames, epoch: &str) -> bool {
        let mut flow = self.lock();
        let catch_up = match &mut flow.mode {
            Mode::Live(c) => c.take(),
            Mode::Stopped(_) => return false,
            Mode::Starting | Mode::Resyncing => return true,
        };
        if p.event.seq <= flow.last_seq {
            // Already in its snapshot: the subscription's changes are all later still.
            flow.mode = Mode::Live(catch_up);
            return true;
        }
        if let Some(rx) = catch_up {
            if !self.catch_up(&mut flow, rx, cache, p.event.seq, epoch) {
                drop(flow);
                self.news.notify_one();
                return true;
            }
        }
        if !flow.send(self, p, frames, epoch) {
            drop(flow);
            self.news.notify_one();
        }
        true
    }

    /// Sends what `rx` holds before `seq`: the changes published between the client's
    /// snapshot and the change being offered. `false` when the client is no longer live.
    fn catch_up(
        &self,
        flow: &mut Flow,
        mut rx: broadcast::Receiver<Arc<Published>>,
        cache: &FrameCache,
        seq: u64,
        epoch: &str,
    ) -> bool {
        loop {
            match rx.try_recv() {
                Ok(q) if q.event.seq < seq => {
                    if q.event.seq > flow.last_seq
                        && !flow.send(self, &q, &cache.event(&q, epoch), epoch)
                    {
                        return false;
                    }
                }
                Err(TryRecvError::Lagged(_)) => {
                    flow.mode = Mode::Resyncing;
                    return false;
                }
                Ok(_) | Err(TryRecvError::Empty | TryRecvError::Closed) => return true,
            }
        }
    }

    /// Starts a resync of a live client (the fan-out lost changes it cannot replay).
    fn fell_behind(&self) {
        let mut flow = self.lock();
        if matches!(flow.mode, Mode::Live(_)) {
            flow.mode = Mode::Resyncing;
            drop(flow);
            self.news.notify_one();
        }
    }

    fn stop(&self, why: Stop) {
        let mut flow = self.lock();
        if !flow.stopped() {
            flow.mode = Mode::Stopped(why);
            drop(flow);
            self.news.notify_one();
        }
    }
}

// --- the handshake ---------------------------------------------------------------------

/// The `/ws` route. warp's `ws()` filter checks the upgrade headers (its rejections name
/// what is missing); the upgrade itself is ours.
pub(super) fn route(
    ctx: Arc<Ctx>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("ws")
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::ws())
        .and(warp::header::headers_cloned())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::ext::optional::<ConnInfo>())
        .map(
            move |upgrade: Option<OnUpgrade>,
                  _checked: Ws,
                  headers: HeaderMap,
                  query: HashMap<String, String>,
                  conn: Option<ConnInfo>| {
                // Readers who may not see link IPs (anonymous or `read` while identities
                // are configured) get every frame with IPs masked, as REST does.
                let token = query.get("token").map(String::as_str);
                let access = super::auth::read_access(&ctx.app.linkctl, "/ws", &headers, token);
                let mask = access.as_ref().map_or(true, |a| a.mask);
                // A node-limited reader (`nodes:`) follows only its nodes.
                let limit = access.as_ref().ok().and_then(|a| a.identity.nodes.clone());
                // Admins also get the `control` messages.
                let admin = access.is_ok_and(|a| a.identity.has(crate::auth::Role::Admin));
                let res = handshake(&ctx, upgrade, &headers, &query, (mask, admin, limit));
                if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(c) = conn {
                        c.mark_upgraded();
                    }
                }
                res
            },
        )
}

/// What a client asked for in its query string.
struct Request {
    resume: Option<Resume>,
    selection: Option<Arc<Selection>>,
    mask: bool,
    /// An admin reader: also gets the `control` messages.
    admin: bool,
}

/// Checks the handshake (origin, `since`, filters, client cap) and upgrades.
fn handshake(
    ctx: &Arc<Ctx>,
    upgrade: Option<OnUpgrade>,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    (mask, admin, limit): (bool, bool, Option<Vec<String>>),
) -> Response {
    let cfg = &ctx.app.config.websocket;
    if let Some(refused) = check_origin(headers, &cfg.allowed_origins) {
        return refused;
    }
    let resume = match resume_of(query) {
        Ok(r) => r,
        Err(why) => return error_reply(StatusCode::BAD_REQUEST, why),
    };
    let selection = match Selection::from_query(query, &ctx.app.config) {
        Ok(s) => Selection::within(s, limit.as_deref(), &ctx.app.config).map(Arc::new),
        Err(e) => return error_reply(StatusCode::BAD_REQUEST, &e),
    };
    let (Some(upgrade), Some(key)) = (upgrade, headers.get("sec-websocket-key")) else {
        return error_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "this connection cannot be upgraded to WebSocket",
        );
    };
    let Some(slot) = Slot::acquire(ctx) else {
        return too_many_clients(cfg.max_clients);
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let req = Request {
        resume,
        selection,
        mask,
        admin,
    };
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let conn = match upgrade.await {
            Ok(up) => server::take_upgraded(up),
            Err(e) => {
                tracing::debug!("[WS] the upgrade did not complete: {e}");
                return;
            }
        };
        match conn {
            Ok(conn) => Client::run(ctx, conn, req, slot).await,
            Err(e) => tracing::warn!("[WS] {e}"),
        }
    });
    let mut res = Response::default();
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

/// `?since=N[&epoch=E]`: where a resuming client left off; for a `since` that is not a
/// whole number, what the 400 answer says.
fn resume_of(query: &HashMap<String, String>) -> Result<Option<Resume>, &'static str> {
    match query.get("since").map(|v| v.trim().parse::<u64>()) {
        None => Ok(None),
        Some(Ok(s)) => Ok(Some(Resume {
            since: s,
            epoch: query.get("epoch").map(|e| e.trim().to_owned()),
        })),
        Some(Err(_)) => Err(
            "invalid since: give the seq of the last message received (a whole number), or leave it out for a snapshot",
        ),
    }
}

/// 503 with `Retry-After` once `websocket.max_clients` are connected.
fn too_many_clients(max_clients: usize) -> Response {
    tracing::warn!("[WS] refused a client: websocket.max_clients ({max_clients}) reached");
    let mut res = error_reply(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!(
            "too many WebSocket clients (websocket.max_clients is {max_clients}): try again later"
        ),
    );
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    res
}

/// 403 for a foreign `Origin` (cross-site WebSocket hijacking).
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Option<Response> {
    let o = headers.get(header::ORIGIN)?;
    let text = o.to_str().unwrap_or("");
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if origin::allowed(text, h("host"), h("x-forwarded-host"), allowed) {
        return None;
    }
    tracing::info!("[WS] refused a connection from origin {:?}", clip(text));
    Some(error_reply(
        StatusCode::FORBIDDEN,
        &format!(
            "WebSocket connections from origin {:?} are not allowed: serve the page from this host or add the origin to websocket.allowed_origins",
            clip(text)
        ),
    ))
}

/// `?nodes=` and `?servers=`: the nodes a client follows. A node is followed when it is
/// named, or its server is; changes without a node (`ami_*`) pass when their server is
/// one of the followed nodes' servers.
#[derive(Debug, Default, PartialEq, Eq)]
struct Selection {
    nodes: HashSet<String>,
    servers: HashSet<String>,
}

impl Selection {
    /// `None` when neither parameter is given (every node). Unknown names are refused,
    /// naming the first one, so a typo does not look like a quiet node.
    fn from_query(
        query: &HashMap<String, String>,
        config: &Config,
    ) -> Result<Option<Selection>, String> {
        let nodes = list(query, "nodes")?;
        let servers = list(query, "servers")?;
        if nodes.is_none() && servers.is_none() {
            return Ok(None);
        }
        let mut sel = Selection::default();
        for name in servers.unwrap_or_default() {
            let Some(s) = config.servers.iter().find(|s| s.name == name) else {
                return Err(format!(
                    "unknown server {:?} in servers=: give names of configured servers (servers[].name)",
                    clip(name)
                ));
            };
            sel.servers.insert(s.name.clone());
            sel.nodes.extend(s.nodes.iter().map(|n| n.node_id.clone()));
        }
        for id in nodes.unwrap_or_default() {
            if id.is_empty() || id.len() > 10 || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "invalid node {:?} in nodes=: node numbers are digits, separated by commas",
                    clip(id)
                ));
            }
            let server = config
                .servers
                .iter()
                .find(|s| s.nodes.iter().any(|n| n.node_id == id));
            let Some(server) = server else {
                return Err(format!(
                    "unknown node {id} in nodes=: it is not a node of this daemon (see GET /api/nodes)"
                ));
            };
            sel.servers.insert(server.name.clone());
            sel.nodes.insert(id.to_owned());
        }
        Ok(Some(sel))
    }

    /// `sel` narrowed to a node-limited reader's nodes (`servers=` intersected; a
    /// `nodes=` entry outside them was refused by the read gate, `auth::guard`).
    fn within(
        sel: Option<Selection>,
        limit: Option<&[String]>,
        config: &Config,
    ) -> Option<Selection> {
        let Some(limit) = limit else { return sel };
        let mut out = Selection::default();
        for s in &config.servers {
            for n in s.nodes.iter().filter(|n| limit.contains(&n.node_id)) {
                if sel.as_ref().is_none_or(|sel| sel.node(&n.node_id)) {
                    out.nodes.insert(n.node_id.clone());
                    out.servers.insert(s.name.clone());
                }
            }
        }
        Some(out)
    }

    fn node(&self, id: &str) -> bool {
        self.nodes.contains(id)
    }

    fn event(&self, ev: &ChangeEvent) -> bool {
        match &ev.node {
            Some(n) => self.nodes.contains(n),
            None => self.servers.contains(&ev.server),
        }
    }

    /// Alerts about another node are left out; alerts about no node go to everyone.
    fn alert(&self, a: &Alert) -> bool {
        a.node.as_deref().is_none_or(|n| self.nodes.contains(n))
    }
}

/// The comma-separated entries of a query parameter (`None` when absent).
fn list<'q>(
    query: &'q HashMap<String, String>,
    name: &str,
) -> Result<Option<Vec<&'q str>>, String> {
    let Some(value) = query.get(name) else {
        return Ok(None);
    };
    if value.len() > MAX_SELECTION_BYTES {
        return Err(format!(
            "{name}= is too long (the limit is {MAX_SELECTION_BYTES} bytes)"
        ));
    }
    let items: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        return Err(format!(
            "{name}= is empty: give a comma-separated list, or leave it out for every node"
        ));
    }
    if items.len() > MAX_SELECTED {
        return Err(format!(
            "{name}= names {} entries (the limit is {MAX_SELECTED})",
            items.len()
        ));
    }
    Ok(Some(items))
}

// --- messages --------------------------------------------------------------------------

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
    reason: SnapshotReason,
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

/// `{"type":"event","seq":N,"epoch":E,"event":<json>}` around a change's JSON.
fn event_frame(seq: u64, epoch: &str, json: &str) -> String {
    let mut s = String::with_capacity(json.len() + 64 + epoch.len());
    let _ = write!(
        s,
        "{{\"type\":\"event\",\"seq\":{seq},\"epoch\":\"{epoch}\",\"event\":"
    );
    s.push_str(json);
    s.push('}');
    s
}

fn snapshot_frame(seq: u64, epoch: &str, nodes: &[NodeView], reason: SnapshotReason) -> String {
    serde_json::to_string(&SnapshotMsg { kind: "snapshot", seq, epoch, reason, nodes })
        .unwrap_or_else(|e| format!("{{\"type\":\"snapshot\",\"seq\":{seq},\"epoch\":\"{epoch}\",\"reason\":\"{}\",\"nodes\":[],\"error\":\"{e}\"}}", reason.as_str()))
}

fn simple_frame(kind: &str, seq: u64, epoch: &str) -> String {
    format!("{{\"type\":\"{kind}\",\"seq\":{seq},\"epoch\":\"{epoch}\"}}")
}

/// The JSON text with every link IP masked (`crate::auth::mask_ips_in`), for the
/// messages made per client (snapshots, alerts); text without an `"ip"` key is unchanged.
fn masked_text(text: String) -> String {
    if !text.contains("\"ip\"") {
        return text;
    }
    let Ok(mut json) = serde_json::from_str::<serde_json::Value>(&text) else {
        return text;
    };
    crate::auth::mask_ips_in(&mut json);
    serde_json::to_string(&json).unwrap_or(text)
}

/// A resume request: `?since=SEQ`, with the run it came from (`&epoch=`) when known.
#[derive(Debug)]
struct Resume {
    since: u64,
    epoch: Option<String>,
}

/// What the writer sends: a frame, or the close frame after which it stops.
enum Out {
    Frame(Bytes),
    Close(Bytes),
}

/// Why the pump stopped.
enum Exit {
    /// The peer went away, the socket failed, or the writer stopped.
    Gone,
    /// Say goodbye with a close frame.
    Close(u16, String),
    /// Too slow: drop the connection without ceremony (its socket is full).
    Drop,
}

// --- the client's own task ---------------------------------------------------------------

/// One client's own task: its first messages, then everything but the changes (alerts,
/// control records, heartbeats, answers to the client, resyncs, the goodbye).
struct Client {
    ctx: Arc<Ctx>,
    /// What the fan-out serves; every frame is written through its lock.
    member: Arc<Member>,
    /// The fan-out shard serving this client.
    shard: usize,
    /// Frames handed to the writer and not yet written out.
    pending: Arc<AtomicUsize>,
    /// Notified by the writer each time it has written everything handed to it.
    drained: Arc<Notify>,
    /// Waiting for the queue to drain before a resync snapshot, until this deadline.
    resync_by: Option<Instant>,
    stall: Duration,
    /// Gets the `control` messages (an admin reader). (Messages for some roles only are
    /// decided from the reader's access here; link IPs are masked by the member's `mask`.)
    admin: bool,
}

impl Client {
    async fn run(ctx: Arc<Ctx>, conn: UpgradedConn, req: Request, slot: Slot) {
        let cfg = ctx.app.config.websocket.clone();
        let heartbeat = cfg.heartbeat.0.max(MIN_HEARTBEAT);
        let UpgradedConn {
            stream,
            read_buf,
            lease,
        } = conn;
        let (read_half, write_half) = stream.into_split();
        let stall = (heartbeat * 2).max(MIN_STALL);
        let sink = Sink::new(write_half, cfg.client_queue, stall);
        let (pending, drained) = (sink.pending.clone(), sink.drained.clone());
        let (from_tx, from_client) = mpsc::channel(4);
        let heard = Arc::new(AtomicBool::new(true));
        let max = cfg.max_message_bytes.max(125);
        let mut reader = tokio::spawn(read_loop(read_half, read_buf, max, from_tx, heard.clone()));
        let member = Arc::new(Member {
            flow: Mutex::new(Flow {
                sink: Some(sink),
                last_seq: 0,
                mode: Mode::Starting,
            }),
            mask: req.mask,
            selection: req.selection,
            news: Notify::new(),
        });
        let shard = ctx.hub.fanout.join(&ctx, member.clone());
        let mut client = Client {
            ctx: ctx.clone(),
            member,
            shard,
            pending,
            drained,
            resync_by: None,
            stall,
            admin: req.admin,
        };
        tracing::debug!(
            "[WS] client connected (since {:?}); {} connected",
            req.resume,
            ctx.hub.clients()
        );
        let silence_limit =
            (heartbeat * 3).max(MIN_SILENCE).as_millis() / heartbeat.as_millis().max(1);
        let exit = client
            .pump(req.resume, heartbeat, silence_limit, from_client, &heard)
            .await;
        client.end(exit, &mut reader).await;
        reader.abort();
        drop(lease);
        drop(slot);
        tracing::debug!("[WS] client gone; {} connected", ctx.hub.clients());
    }

    /// Ends the connection as `exit` says: a close frame (then the client's own close,
    /// within [`CLOSE_WAIT`]), or at once. The fan-out lets go of the client first.
    async fn end(self, exit: Exit, reader: &mut JoinHandle<()>) {
        let sink = {
            let mut flow = self.member.lock();
            flow.mode = Mode::Stopped(Stop::Gone);
            flow.sink.take()
        };
        self.ctx.hub.fanout.left(self.shard);
        match exit {
            Exit::Gone => {}
            Exit::Drop => self.count_resync(ResyncReason::Dropped),
            Exit::Close(code, reason) => {
                let Some(mut sink) = sink else { return };
                let close = Out::Close(wsframe::close(code, &reason));
                let Push::Queued = sink.enqueue(close) else {
                    return;
                };
                let Some(mut writer) = sink.take_writer() else {
                    return;
                };
                // The writer's is then the last handle of the socket: the write side is
                // shut when it is done.
                drop(sink);
                // The close frame out, then the client's own close (end of input).
                let _ = tokio::time::timeout(CLOSE_WAIT, async {
                    let _ = (&mut writer).await;
                    let _ = (&mut *reader).await;
                })
                .await;
                writer.abort();
            }
        }
    }

    /// Serves the client (all but the changes, which the fan-out sends) until it goes or
    /// must go.
    async fn pump(
        &mut self,
        resume: Option<Resume>,
        heartbeat: Duration,
        silence_limit: u128,
        mut from_client: mpsc::Receiver<FromClient>,
        heard: &AtomicBool,
    ) -> Exit {
        let ctx = self.ctx.clone();
        let max_message = ctx.app.config.websocket.max_message_bytes;
        let alerts = alert_stream(ctx.app.alerts.subscribe());
        tokio::pin!(alerts);
        let controls = control_stream(self.admin.then(|| ctx.app.linkctl.subscribe_controls()));
        tokio::pin!(controls);
        // Held across iterations: its registration is made once.
        let shutdown = ctx.shutdown.cancelled();
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => return going_away(),
            r = self.start(resume) => if let Err(exit) = r {
                return exit;
            },
        }
        let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut alerts_open = true;
        let mut silent_beats: u128 = 0;
        // Armed while a resync waits for the queue to drain.
        let stall_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(stall_timer);
        let mut armed_for = None;
        loop {
            let resyncing = self.resync_by.is_some();
            if resyncing && armed_for != self.resync_by {
                armed_for = self.resync_by;
                if let Some(d) = armed_for {
                    stall_timer.as_mut().reset(d);
                }
            }
            // Per-role streams (records for admin clients only) join this select!.
            let step = tokio::select! {
                biased;
                _ = &mut shutdown => Err(going_away()),
                m = from_client.recv() => self.on_client(m, max_message),
                _ = self.member.news.notified() => self.on_news(),
                _ = self.drained.notified(), if resyncing => {
                    self.try_finish_resync();
                    Ok(())
                }
                _ = &mut stall_timer, if resyncing => Err(Exit::Drop),
                a = alerts.next(), if alerts_open => self.on_alert_news(a, resyncing, &mut alerts_open),
                Some(c) = controls.next() => match c {
                    Ok(entry) if !resyncing => self.on_control(&entry),
                    _ => Ok(()),
                },
                _ = ticker.tick(), if !resyncing => {
                    silent_beats = if heard.swap(false, Ordering::AcqRel) { 0 } else { silent_beats + 1 };
                    if silent_beats > silence_limit { Err(Exit::Drop) } else { self.on_heartbeat() }
                }
            };
            // A resync that can complete at once (queue already empty).
            if step.is_ok() && self.resync_by.is_some() && self.queue_empty() {
                self.try_finish_resync();
            }
            if let Err(exit) = step {
                return exit;
            }
        }
    }

    /// The first messages: a snapshot, or the replay after `since`; then the client is
    /// live for the fan-out, from right after them.
    async fn start(&mut self, resume: Option<Resume>) -> Result<(), Exit> {
        let store = &self.ctx.app.state;
        let Some(Resume { since, epoch }) = resume else {
            let (seq, nodes, rx) = store.subscribe_with_snapshot();
            return self.go_live(seq, nodes, rx, SnapshotReason::Connect);
        };
        if epoch.as_deref().is_some_and(|e| e != store.epoch()) {
            // `since` counts another run's changes: never replay ours against it.
            self.count_resync(ResyncReason::EpochChanged);
            let (seq, nodes, rx) = store.subscribe_with_snapshot();
            return self.go_live(seq, nodes, rx, SnapshotReason::EpochChanged);
        }
        match store.replay_since(since) {
            (Replay::Changes(missed), rx) => {
                self.replay(&missed).await?;
                let mut flow = self.member.lock();
                flow.last_seq = missed.last().map_or(since, |p| p.event.seq);
                flow.mode = Mode::Live(Some(rx));
                Ok(())
            }
            (Replay::TooOld, _) => {
                self.count_resync(ResyncReason::ReplayMiss);
                let (seq, nodes, rx) = store.subscribe_with_snapshot();
                self.go_live(seq, nodes, rx, SnapshotReason::ReplayMiss)
            }
        }
    }

    /// Sends a snapshot taken with `rx`, and hands the client to the fan-out from there.
    fn go_live(
        &mut self,
        seq: u64,
        nodes: Vec<NodeView>,
        rx: broadcast::Receiver<Arc<Published>>,
        reason: SnapshotReason,
    ) -> Result<(), Exit> {
        let frame = self.snapshot(seq, nodes, reason);
        let mut flow = self.member.lock();
        match flow.push(&frame) {
            Push::Queued => {
                flow.last_seq = seq;
                flow.mode = Mode::Live(Some(rx));
                Ok(())
            }
            Push::Full => Err(Exit::Drop),
            Push::Closed => Err(Exit::Gone),
        }
    }

    /// Queues the missed changes this client follows. A long replay may exceed the
    /// queue: it waits for the writer (this client only), within the stall limit.
    async fn replay(&self, missed: &[Arc<Published>]) -> Result<(), Exit> {
        if !missed.iter().any(|p| self.member.follows(&p.event)) {
            return Ok(()); // no writer needed
        }
        let epoch = self.ctx.app.state.epoch();
        let Some(queue) = self.member.lock().sink.as_mut().map(|s| s.queue().clone()) else {
            return Err(Exit::Gone);
        };
        let send_all = async {
            for p in missed.iter().filter(|p| self.member.follows(&p.event)) {
                let frame = self.ctx.hub.frames.frame(p, epoch, self.member.mask);
                self.pending.fetch_add(1, Ordering::AcqRel);
                if queue.send(Out::Frame(frame)).await.is_err() {
                    self.pending.fetch_sub(1, Ordering::AcqRel);
                    return Err(Exit::Gone);
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.stall, send_all).await {
            Ok(r) => r,
            Err(_) => Err(Exit::Drop),
        }
    }

    fn count_resync(&self, reason: ResyncReason) {
        let last_seq = self.member.lock().last_seq;
        WsResync { reason, last_seq }.emit(&self.ctx.app.metrics);
    }

    /// A snapshot frame of the nodes this client follows, masked if it must be.
    fn snapshot(&self, seq: u64, mut nodes: Vec<NodeView>, reason: SnapshotReason) -> Bytes {
        if let Some(sel) = &self.member.selection {
            nodes.retain(|n| sel.node(&n.node_id));
        }
        let text = snapshot_frame(seq, self.ctx.app.state.epoch(), &nodes, reason);
        wsframe::text(&self.for_reader(text))
    }

    fn for_reader(&self, text: String) -> String {
        if self.member.mask {
            masked_text(text)
        } else {
            text
        }
    }

    /// Sends a message of the client's own, made from the client's stream position
    /// (`None`: nothing to send) while it is live; a full queue starts a resync.
    fn send_own(&mut self, make: impl FnOnce(u64) -> Option<Bytes>) -> Result<(), Exit> {
        let mut flow = self.member.lock();
        if !matches!(flow.mode, Mode::Live(_)) {
            // Resyncing (the snapshot will follow), or stopped (the news says why).
            return Ok(());
        }
        let Some(frame) = make(flow.last_seq) else {
            return Ok(());
        };
        match flow.push(&frame) {
            Push::Queued => Ok(()),
            Push::Full => {
                flow.mode = Mode::Resyncing;
                drop(flow);
                self.note_resync();
                Ok(())
            }
            Push::Closed => {
                flow.mode = Mode::Stopped(Stop::Gone);
                Err(Exit::Gone)
            }
        }
    }

    /// A control frame (ping, pong) whatever the mode; one lost is no matter.
    fn send_control(&self, frame: &Bytes) {
        let _ = self.member.lock().push(frame);
    }

    /// What the fan-out changed: a resync to do, or the end.
    fn on_news(&mut self) -> Result<(), Exit> {
        let mode = match self.member.lock().mode {
            Mode::Stopped(why) => Some(why),
            Mode::Resyncing => None,
            Mode::Starting | Mode::Live(_) => return Ok(()),
        };
        match mode {
            Some(Stop::Gone) => Err(Exit::Gone),
            Some(Stop::GoingAway) => Err(going_away()),
            None => {
                self.note_resync();
                Ok(())
            }
        }
    }

    /// What the alert subscription said: an alert (skipped while resyncing), a lag, or
    /// the end (`open` turns false).
    fn on_alert_news(
        &mut self,
        news: Option<Result<Arc<Alert>, RecvError>>,
        resyncing: bool,
        open: &mut bool,
    ) -> Result<(), Exit> {
        match news {
            Some(Ok(alert)) if !resyncing => self.on_alert(&alert),
            Some(Ok(_)) | Some(Err(RecvError::Lagged(_))) => Ok(()),
            Some(Err(RecvError::Closed)) | None => {
                *open = false;
                Ok(())
            }
        }
    }

    fn on_alert(&mut self, alert: &Alert) -> Result<(), Exit> {
        if self
            .member
            .selection
            .as_ref()
            .is_some_and(|s| !s.alert(alert))
        {
            return Ok(());
        }
        let ctx = self.ctx.clone();
        let mask = self.member.mask;
        self.send_own(|seq| {
            let text = serde_json::to_string(&AlertMsg {
                kind: "alert",
                seq,
                epoch: ctx.app.state.epoch(),
                alert,
            })
            .ok()?;
            let text = if mask { masked_text(text) } else { text };
            Some(wsframe::text(&text))
        })
    }

    fn on_control(&mut self, entry: &AuditEntry) -> Result<(), Exit> {
        let ctx = self.ctx.clone();
        self.send_own(|seq| {
            let text = serde_json::to_string(&ControlMsg {
                kind: "control",
                seq,
                epoch: ctx.app.state.epoch(),
                entry,
            })
            .ok()?;
            Some(wsframe::text(&text))
        })
    }

    fn on_heartbeat(&mut self) -> Result<(), Exit> {
        // A protocol ping too: every WebSocket stack answers it, so a client that stopped
        // reading falls silent.
        self.send_control(&wsframe::ping());
        let ctx = self.ctx.clone();
        self.send_own(|seq| {
            let frame = simple_frame("heartbeat", seq, ctx.app.state.epoch());
            Some(wsframe::text(&frame))
        })
    }

    fn on_client(&mut self, msg: Option<FromClient>, max: usize) -> Result<(), Exit> {
        match msg {
            Some(FromClient::Ping) => {
                let ctx = self.ctx.clone();
                self.send_own(|seq| {
                    let frame = simple_frame("pong", seq, ctx.app.state.epoch());
                    Some(wsframe::text(&frame))
                })
            }
            Some(FromClient::ProtocolPing(payload)) => {
                // Answered like any WebSocket stack does; a client pinging faster than it
                // reads loses pongs, nothing else.
                self.send_control(&wsframe::pong(&payload));
                Ok(())
            }
            Some(FromClient::TooBig) => Err(Exit::Close(
                CLOSE_TOO_BIG,
                format!("message too big: the limit is {max} bytes"),
            )),
            Some(FromClient::ProtocolError) => {
                Err(Exit::Close(CLOSE_PROTOCOL_ERROR, "protocol error".into()))
            }
            // The closing handshake: echo the client's code (RFC 6455 §5.5.1).
            Some(FromClient::Closed(code)) => Err(Exit::Close(echo_code(code), String::new())),
            Some(FromClient::Gone) | None => Err(Exit::Gone),
        }
    }

    /// The client fell behind (found by the fan-out or here): counted once, and the
    /// queue gets until the deadline to drain.
    fn note_resync(&mut self) {
        if self.resync_by.is_none() {
            self.count_resync(ResyncReason::Slow);
            self.resync_by = Some(Instant::now() + self.stall);
        }
    }

    /// Everything handed to the writer is written out.
    fn queue_empty(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    /// Once the queue is empty: a fresh snapshot, and the client is live again from it.
    fn try_finish_resync(&mut self) {
        if self.resync_by.is_none() || !self.queue_empty() {
            return;
        }
        let (seq, nodes, rx) = self.ctx.app.state.subscribe_with_snapshot();
        let frame = self.snapshot(seq, nodes, SnapshotReason::Resync);
        let mut flow = self.member.lock();
        if !matches!(flow.mode, Mode::Resyncing) {
            return; // stopped meanwhile: the news says why
        }
        match flow.push(&frame) {
            Push::Queued => {
                flow.last_seq = seq;
                flow.mode = Mode::Live(Some(rx));
                self.resync_by = None;
            }
            Push::Full => {}
            Push::Closed => {
                flow.mode = Mode::Stopped(Stop::Gone);
                drop(flow);
                self.member.news.notify_one();
            }
        }
    }
}

/// The goodbye when the server shuts down.
fn going_away() -> Exit {
    Exit::Close(CLOSE_GOING_AWAY, "server shutting down".into())
}

/// The code to answer a client's close frame with: its own, unless it may not be sent.
fn echo_code(code: u16) -> u16 {
    match code {
        1000..=1003 | 1007..=1011 | 3000..=4999 => code,
        _ => CLOSE_NORMAL,
    }
}

// --- the reader and the writer ----------------------------------------------------------

/// What the reader task tells the pump.
enum FromClient {
    /// `{"type":"ping"}`: answer with `pong`.
    Ping,
    /// A WebSocket ping frame: answer with a pong frame.
    ProtocolPing(Bytes),
    /// A message over `websocket.max_message_bytes`.
    TooBig,
    ProtocolError,
    /// The client sent a close frame with this code.
    Closed(u16),
    /// Closed or reset by the peer.
    Gone,
}

/// Reads the client's frames in a task of its own. An idle client holds no read buffer:
/// the reader waits for the socket to be readable, then reads [`READ_CHUNK`] bytes at a
/// time into a buffer that only grows to fit the frame being read.
async fn read_loop(
    sock: OwnedReadHalf,
    first: Bytes,
    max: usize,
    to_pump: mpsc::Sender<FromClient>,
    heard: Arc<AtomicBool>,
) {
    let mut dec = Decoder::new(max);
    dec.extend(&first);
    let end = read_frames(&sock, &mut dec, max, &to_pump, &heard).await;
    let _ = to_pump.send(end).await;
    // The pump may be saying goodbye: keep reading (and dropping) until the client closes
    // too, so its socket is not reset under the close frame by unread input.
    let mut sink = [0u8; READ_CHUNK];
    while sock.readable().await.is_ok() {
        match sock.try_read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
}

/// Decodes the client's frames until one ends the connection.
async fn read_frames(
    sock: &OwnedReadHalf,
    dec: &mut Decoder,
    max: usize,
    to_pump: &mpsc::Sender<FromClient>,
    heard: &AtomicBool,
) -> FromClient {
    loop {
        match dec.next() {
            Ok(Some(frame)) => {
                if let Some(end) = on_frame(frame, to_pump) {
                    return end;
                }
                continue;
            }
            Ok(None) => dec.shrink(READ_KEEP),
            Err(DecodeError::TooBig) => {
                tracing::info!(
                    "[WS] closing a client that sent a message over {max} bytes (websocket.max_message_bytes)"
                );
                return FromClient::TooBig;
            }
            Err(DecodeError::Protocol(why)) => {
                tracing::debug!("[WS] protocol error from a client: {why}");
                return FromClient::ProtocolError;
            }
        }
        if sock.readable().await.is_err() {
            return FromClient::Gone;
        }
        match sock.try_read_buf(dec.read_buf(READ_CHUNK)) {
            Ok(0) => return FromClient::Gone,
            Ok(_) => heard.store(true, Ordering::Release),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return FromClient::Gone,
        }
    }
}

/// One frame from the client; `Some` when the reader must stop.
fn on_frame(frame: Frame, to_pump: &mpsc::Sender<FromClient>) -> Option<FromClient> {
    match frame {
        Frame::Text(t) => {
            if let Ok(Inbound { kind }) = serde_json::from_slice::<Inbound<'_>>(&t) {
                if kind == "ping" {
                    // A client pinging faster than it reads loses pongs, nothing else.
                    let _ = to_pump.try_send(FromClient::Ping);
                }
            }
            None
        }
        Frame::Ping(payload) => {
            let _ = to_pump.try_send(FromClient::ProtocolPing(payload));
            None
        }
        Frame::Binary | Frame::Pong => None,
        Frame::Close(code) => Some(FromClient::Closed(code)),
    }
}

/// The alert subscription as a stream whose pending `recv` survives `select!` rounds.
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

/// Drains the client's queue into its socket: the frames waiting are written together
/// (one system call), and the pump is told whenever everything handed over is written. A
/// write that cannot complete within `stall` (the client stopped reading and its socket is
/// full) ends the connection. After a close frame it ends, dropping its handle of the
/// socket (the last one by then), which shuts the write side.
async fn write_loop(
    sock: Arc<OwnedWriteHalf>,
    mut queue: mpsc::Receiver<Out>,
    pending: Arc<AtomicUsize>,
    drained: Arc<Notify>,
    stall: Duration,
) {
    while let Some(out) = queue.recv().await {
        let (mut bytes, mut close) = match out {
            Out::Frame(b) => (b, false),
            Out::Close(b) => (b, true),
        };
        let mut items = 1;
        if !close && !queue.is_empty() {
            let mut joined = bytes::BytesMut::from(&bytes[..]);
            while joined.len() < WRITE_BATCH {
                match queue.try_recv() {
                    Ok(Out::Frame(b)) => joined.extend_from_slice(&b),
                    Ok(Out::Close(b)) => {
                        joined.extend_from_slice(&b);
                        close = true;
                    }
                    Err(_) => break,
                }
                items += 1;
                if close {
                    break;
                }
            }
            bytes = joined.freeze();
        }
        if !matches!(
            tokio::time::timeout(stall, write_all(&sock, &bytes)).await,
            Ok(Ok(()))
        ) {
            return;
        }
        if close {
            return;
        }
        if pending.fetch_sub(items, Ordering::AcqRel) == items {
            drained.notify_one();
        }
    }
}

/// Writes all of `buf`, waiting for the socket to take it.
async fn write_all(sock: &OwnedWriteHalf, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        sock.writable().await?;
        match sock.try_write(buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ChangeKind, LinkView};

    fn keyed(seq: u64, node: &str, ip: Option<&str>) -> Arc<Published> {
        let mut ev = ChangeEvent::new(ChangeKind::LinkKeyed, "hub", Some(node));
        ev.seq = seq;
        ev.link = Some(LinkView {
            node: "2000".into(),
            ip: ip.map(str::to_owned),
            elapsed: "00:00:01".into(),
            connected_seconds: 1,
            keyed: true,
            keyups: 1,
            ..LinkView::default()
        });
        Published::new(ev)
    }

    /// The payload of an unfragmented, unmasked server frame.
    fn payload(frame: &[u8]) -> &str {
        let at = match frame[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        std::str::from_utf8(&frame[at..]).expect("utf8")
    }

    #[test]
    fn event_frames_embed_the_change_verbatim() {
        let mut ev = ChangeEvent::new(ChangeKind::TxKeyed, "default", Some("1999"));
        ev.seq = 42;
        let p = Published::new(ev);
        let frame = event_frame(p.event.seq, "e1", &p.json);
        assert!(frame.starts_with("{\"type\":\"event\",\"seq\":42,\"epoch\":\"e1\",\"event\":{"));
        assert!(frame.contains(&p.json));
        let v: serde_json::Value = serde_json::from_str(&frame).expect("valid JSON");
        assert_eq!(v["event"]["kind"], "tx_keyed");
        assert_eq!(v["event"]["seq"], 42);
    }

    #[test]
    fn one_encoding_per_change_shared_by_every_client() {
        let cache = FrameCache::default();
        let p = keyed(7, "1999", Some("192.0.2.44"));
        let a = cache.frame(&p, "e1", false);
        let b = cache.frame(&p, "e1", false);
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same bytes, not a copy");
        let m1 = cache.frame(&p, "e1", true);
        let m2 = cache.frame(&p, "e1", true);
        assert_eq!(
            m1.as_ptr(),
            m2.as_ptr(),
            "the masked variant is made once too"
        );
        assert_ne!(a.as_ptr(), m1.as_ptr());
        assert!(payload(&a).contains("192.0.2.44"));
        assert!(!payload(&m1).contains("192.0.2.44"), "{}", payload(&m1));
        // An event with no IP: masked readers get the plain bytes.
        let q = keyed(108, "1999", None);
        assert_eq!(
            cache.frame(&q, "e1", true).as_ptr(),
            cache.frame(&q, "e1", false).as_ptr()
        );
        // A client far behind gets an older change encoded for it, without evicting.
        let old_seq = 108 - CACHE_SLOTS as u64;
        let old = keyed(old_seq, "1999", None);
        let f = cache.frame(&old, "e1", false);
        assert!(payload(&f).contains(&format!("\"seq\":{old_seq}")));
        assert_eq!(
            cache.frame(&q, "e1", false).as_ptr(),
            cache.frame(&q, "e1", true).as_ptr()
        );
    }

    #[test]
    fn masked_events_match_masking_the_json_and_keep_the_field_order() {
        let p = keyed(3, "1999", Some("192.0.2.44"));
        let json = masked_event_json(&p.event).expect("has an IP");
        assert!(
            json.starts_with("{\"seq\":3,\"kind\":\"link_keyed\""),
            "{json}"
        );
        let mut want: serde_json::Value = serde_json::from_str(&p.json).expect("json");
        crate::auth::mask_ips_in(&mut want);
        let got: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(got, want);
        assert!(masked_event_json(&keyed(4, "1999", None).event).is_none());
    }

    #[test]
    fn masked_text_hides_link_ips_and_keeps_the_rest() {
        let f = r#"{"type":"snapshot","seq":3,"nodes":[{"node_id":"2000","links":[{"node":"2001","ip":"192.0.2.44"}]}]}"#;
        let out = masked_text(f.to_owned());
        assert!(!out.contains("192.0.2.44"), "{out}");
        assert!(out.contains("\"node\":\"2001\""), "{out}");
        let plain = r#"{"type":"heartbeat","seq":3}"#;
        assert_eq!(masked_text(plain.to_owned()), plain);
    }

    #[test]
    fn snapshot_and_simple_frames_are_json() {
        let v: serde_json::Value =
            serde_json::from_str(&snapshot_frame(7, "e1", &[], SnapshotReason::Connect))
                .expect("json");
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

    fn fleet() -> Config {
        let yaml = "ami_servers:\n  - name: hub\n    username: u\n    password: s\n    nodes: [{node_id: 2000}, {node_id: 2001}]\n  - name: home\n    username: u\n    password: s\n    nodes: [{node_id: 3000}]\n";
        Config::parse(yaml, "test", None).expect("config")
    }

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selections_name_nodes_or_servers_and_refuse_unknown_ones() {
        let cfg = fleet();
        assert_eq!(Selection::from_query(&query(&[]), &cfg), Ok(None));
        let sel = Selection::from_query(&query(&[("nodes", "2001")]), &cfg)
            .expect("valid")
            .expect("some");
        assert!(sel.node("2001") && !sel.node("2000") && !sel.node("3000"));
        assert!(sel.servers.contains("hub") && !sel.servers.contains("home"));
        let sel = Selection::from_query(&query(&[("servers", "home"), ("nodes", "2000")]), &cfg)
            .expect("valid")
            .expect("some");
        assert!(sel.node("3000") && sel.node("2000") && !sel.node("2001"));

        let err = |q: &[(&str, &str)]| Selection::from_query(&query(q), &cfg).expect_err("bad");
        assert!(err(&[("nodes", "2000,2005")]).contains("unknown node 2005"));
        assert!(err(&[("nodes", "20a0")]).contains("invalid node \"20a0\""));
        assert!(err(&[("nodes", ",")]).contains("nodes= is empty"));
        assert!(err(&[("servers", "away")]).contains("unknown server \"away\""));
        let many = vec!["2000"; MAX_SELECTED + 1].join(",");
        assert!(err(&[("nodes", &many)]).contains("the limit is 1024"));
        let long = "1".repeat(MAX_SELECTION_BYTES + 1);
        assert!(err(&[("nodes", &long)]).contains("too long"));
    }

    #[test]
    fn selections_filter_events_and_alerts() {
        let cfg = fleet();
        let sel = Selection::from_query(&query(&[("nodes", "2000")]), &cfg)
            .expect("valid")
            .expect("some");
        let ev =
            |server: &str, node: Option<&str>| ChangeEvent::new(ChangeKind::TxKeyed, server, node);
        assert!(sel.event(&ev("hub", Some("2000"))));
        assert!(!sel.event(&ev("hub", Some("2001"))));
        assert!(
            sel.event(&ev("hub", None)),
            "server-wide news of a followed node's server"
        );
        assert!(!sel.event(&ev("home", None)));
        let alert = |node: Option<&str>| Alert {
            id: 1,
            time_ms: 0,
            severity: crate::alerts::Severity::Warning,
            title: "t".into(),
            message: "m".into(),
            node: node.map(str::to_owned),
            key: None,
            source: "test".into(),
            truncated: false,
        };
        assert!(sel.alert(&alert(Some("2000"))));
        assert!(!sel.alert(&alert(Some("3000"))));
        assert!(sel.alert(&alert(None)));
    }

    /// A member writing to one end of a loopback connection (queue of `queue` frames);
    /// the other end for the test to read.
    async fn member_on_socket(
        queue: usize,
        selection: Option<Arc<Selection>>,
    ) -> (Arc<Member>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (server, _) = accepted.expect("accept");
        let (_read, write) = server.into_split();
        let member = Arc::new(Member {
            flow: Mutex::new(Flow {
                sink: Some(Sink::new(write, queue, Duration::from_secs(60))),
                last_seq: 0,
                mode: Mode::Starting,
            }),
            mask: false,
            selection,
            news: Notify::new(),
        });
        (member, client.expect("connect"))
    }

    /// The seqs of the event frames readable on `sock` now (waits briefly for `n`).
    async fn event_seqs(sock: &mut tokio::net::TcpStream, n: usize) -> Vec<u64> {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        let mut buf = Vec::new();
        while got.len() < n {
            let mut chunk = [0u8; 4096];
            let k = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut chunk))
                .await
                .expect("frames within 5 s")
                .expect("read");
            assert!(k > 0, "closed");
            buf.extend_from_slice(&chunk[..k]);
            // Unmasked server frames of up to 64 KiB.
            while buf.len() >= 4 {
                let (at, len) = match buf[1] {
                    126 => (4, usize::from(u16::from_be_bytes([buf[2], buf[3]]))),
                    n => (2, usize::from(n)),
                };
                if buf.len() < at + len {
                    break;
                }
                let v: serde_json::Value =
                    serde_json::from_slice(&buf[at..at + len]).expect("a JSON text frame");
                got.push(v["seq"].as_u64().expect("seq"));
                buf.drain(..at + len);
            }
        }
        got
    }

    fn small(seq: u64, node: &str) -> Arc<Published> {
        let mut ev = ChangeEvent::new(ChangeKind::TxKeyed, "hub", Some(node));
        ev.seq = seq;
        Published::new(ev)
    }

    /// Offers `p` as the fan-out does.
    fn offer(m: &Member, cache: &FrameCache, p: &Arc<Published>) -> bool {
        m.offer(cache, p, &cache.event(p, "e1"), "e1")
    }

    #[tokio::test]
    async fn the_fan_out_sends_what_was_published_during_the_snapshot_first() {
        let cache = FrameCache::default();
        let (m, mut sock) = member_on_socket(8, None).await;
        // Passed by while starting.
        assert!(offer(&m, &cache, &small(1, "2000")));
        // Snapshot at 1, its subscription holding 2 and 3; the fan-out's next change is 4.
        let (tx, rx) = broadcast::channel(16);
        for seq in 2..=4 {
            tx.send(small(seq, "2000")).expect("send");
        }
        {
            let mut flow = m.lock();
            flow.last_seq = 1;
            flow.mode = Mode::Live(Some(rx));
        }
        assert!(offer(&m, &cache, &small(4, "2000")));
        assert!(offer(&m, &cache, &small(4, "2000")), "a repeat is skipped");
        assert!(offer(&m, &cache, &small(5, "2000")));
        assert_eq!(event_seqs(&mut sock, 4).await, [2, 3, 4, 5]);
        assert!(
            matches!(m.lock().mode, Mode::Live(None)),
            "subscription dropped"
        );
        assert!(
            m.lock().sink.as_ref().is_some_and(|s| s.writer.is_none()),
            "a client that keeps up has no writer task"
        );
        // Stopped: the fan-out lets go.
        m.stop(Stop::Gone);
        assert!(!offer(&m, &cache, &small(6, "2000")));
    }

    #[tokio::test]
    async fn changes_left_out_by_the_selection_still_move_the_cursor() {
        let cfg = fleet();
        let sel = Selection::from_query(&query(&[("nodes", "2001")]), &cfg)
            .expect("valid")
            .map(Arc::new);
        let cache = FrameCache::default();
        let (m, mut sock) = member_on_socket(8, sel).await;
        m.lock().mode = Mode::Live(None);
        for (seq, node) in [(1, "2000"), (2, "2001"), (3, "2000")] {
            assert!(offer(&m, &cache, &small(seq, node)));
        }
        assert_eq!(event_seqs(&mut sock, 1).await, [2]);
        assert_eq!(m.lock().last_seq, 3);
    }

    #[tokio::test]
    async fn a_full_queue_turns_the_client_to_a_resync_and_tells_its_task() {
        let cache = FrameCache::default();
        let (m, _sock) = member_on_socket(2, None).await;
        m.lock().mode = Mode::Live(None);
        let mut ev = ChangeEvent::new(ChangeKind::AmiDisconnected, "hub", None);
        ev.error = Some("x".repeat(256 * 1024));
        // The socket's buffers fill (nobody reads), then the queue of 2.
        let mut seq = 0;
        while matches!(m.lock().mode, Mode::Live(_)) {
            seq += 1;
            assert!(seq < 1000, "never fell behind");
            let mut e = ev.clone();
            e.seq = seq;
            assert!(offer(&m, &cache, &Published::new(e)));
        }
        assert!(matches!(m.lock().mode, Mode::Resyncing));
        assert!(m.lock().sink.as_ref().is_some_and(|s| s.writer.is_some()));
        tokio::time::timeout(Duration::from_secs(1), m.news.notified())
            .await
            .expect("the client's task is told");
        // Passed by until its task has sent a fresh snapshot.
        let last = m.lock().last_seq;
        assert!(offer(&m, &cache, &small(seq + 1, "2000")));
        assert_eq!(m.lock().last_seq, last);
    }

    #[tokio::test]
    async fn a_lagged_catch_up_subscription_resyncs_the_client() {
        let cache = FrameCache::default();
        let (m, _sock) = member_on_socket(8, None).await;
        let (tx, rx) = broadcast::channel(2);
        for seq in 2..=6 {
            tx.send(small(seq, "2000")).expect("send");
        }
        {
            let mut flow = m.lock();
            flow.last_seq = 1;
            flow.mode = Mode::Live(Some(rx));
        }
        assert!(offer(&m, &cache, &small(7, "2000")));
        assert!(matches!(m.lock().mode, Mode::Resyncing));
    }

    #[test]
    fn close_codes_that_may_not_be_sent_are_answered_with_1000() {
        assert_eq!(echo_code(1001), 1001);
        assert_eq!(echo_code(4000), 4000);
        assert_eq!(echo_code(1005), 1000);
        assert_eq!(echo_code(1006), 1000);
    }
}

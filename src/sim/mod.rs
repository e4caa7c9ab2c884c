//! The app_rpt simulator: an AMI server that behaves on the wire like Asterisk + app_rpt
//! (`shared/reference/ami-app-rpt.md`).
//!
//! Used by the end-to-end tests (always on port 0, or [`SimHandle::serve_stream`] over an
//! in-memory duplex), by `allstar-nexus demo` ([`demo_network`] + [`spawn_activity`]) and by
//! `allstar-nexus simulate` ([`run_standalone`]) so operators can try Lua scripts without a
//! radio.
//!
//! The pieces:
//! - [`truth`]: the nodes, links, keying, voter receivers and variables, and which events
//!   each mutation emits;
//! - `format`: the exact wire text (XStat columns, SawStat `-1`, events, Command styles);
//! - `session` / `actions` / `command`: one AMI session — banner, login, actions, CLI,
//!   event delivery between replies, faults;
//! - `shared`: the lock-protected truth + session registry with bounded per-session queues;
//! - [`activity`]: the demo network and its seeded activity generator;
//! - [`fleet`]: many servers in one process, each on its own port (`simulate --servers`).
//!
//! Two eras are modelled ([`Era`]): current ASL3 (Asterisk 22, app_rpt ≥ 3.5) and legacy
//! (Asterisk 1.4 / app_rpt < 3.0.5: ActionID before Response, ctime values ending in `\n`,
//! `Response: Follows` commands, `Response: Pong`, no VarSet, status flags 1 = enabled).

mod actions;
pub mod activity;
mod command;
pub mod faults;
pub mod fleet;
mod format;
mod mask;
mod rng;
mod session;
mod shared;
pub mod truth;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use activity::{demo_network, spawn_activity};
pub use faults::SimFaults;
pub use truth::{SimLink, SimLinkTruth, SimNodeTruth, SimTruth, SimVoterReceiver};

use crate::rpt::types::{LinkState, Mode};
use shared::Shared;

/// Which Asterisk/app_rpt generation the simulator imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Era {
    /// Asterisk 22 (`AMI_VERSION` 11.0.0) with app_rpt ≥ 3.5: `Response` before
    /// `ActionID`, `Command` with `Output:` lines, `Ping` → `Success`/`Ping: Pong`/
    /// `Timestamp`, `VarSet` events, status flags 1 = disabled.
    #[default]
    Modern,
    /// Asterisk 1.4 (ASL2) / app_rpt < 3.0.5: banner `Asterisk Call Manager/1.0`,
    /// `ActionID` before `Response` in RptStatus/VoterStatus replies, event ctime values
    /// ending in a stray `\n`, `Response: Follows … --END COMMAND--`, `Response: Pong`, no
    /// VarSet, status flags 1 = enabled.
    Legacy,
}

/// How to run a simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Manager user (matched case-insensitively, like Asterisk).
    pub username: String,
    pub secret: String,
    pub era: Era,
    /// Node ids hosted by this server, e.g. `["1999", "2000"]`.
    pub nodes: Vec<String>,
    /// Faults switched on by [`run_standalone`] (`allstar-nexus simulate` flags).
    pub faults: SimFaults,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            username: "admin".to_owned(),
            secret: "nexus-sim".to_owned(),
            era: Era::Modern,
            nodes: vec!["1999".to_owned()],
            faults: SimFaults::default(),
        }
    }
}

/// One request the simulator received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedAction {
    /// The session it came on (1, 2, ... in accept order).
    pub session: u64,
    /// Headers in order; `Secret` values are `********`. A line that is not `Key: Value`
    /// (such as one with leading whitespace) has an empty key and the whole line as value.
    pub headers: Vec<(String, String)>,
}

impl RecordedAction {
    /// The first value of a header (case-insensitive name).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// The `Action:` value.
    pub fn action(&self) -> Option<&str> {
        self.get("Action")
    }
}

/// A running simulator. Cheap to clone; every clone controls the same server. Dropping
/// handles does not stop it: call [`SimHandle::shutdown`].
#[derive(Clone)]
pub struct SimHandle {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr())
            .field("era", &self.shared.config.era)
            .field("sessions", &self.session_count())
            .finish()
    }
}

/// Binds `listen` (port 0 allowed) and spawns the accept loop.
pub async fn start(listen: SocketAddr, config: SimConfig) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind(listen).await?;
    let handle = SimHandle::detached(config);
    handle.install_listener(listener)?;
    Ok(handle)
}

/// Runs a simulator until `shutdown` is cancelled, logging where it listens and how to log
/// in. This is `allstar-nexus simulate`.
pub async fn run_standalone(
    listen: SocketAddr,
    config: SimConfig,
    with_demo_network: bool,
    activity_seed: Option<u64>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (user, secret, era) = (config.username.clone(), config.secret.clone(), config.era);
    let faults = config.faults.clone();
    let handle = start(listen, config).await.with_context(|| {
        format!("simulator cannot listen on {listen} (port in use, or no permission?)")
    })?;
    faults.apply(&handle, &shutdown);
    if with_demo_network {
        demo_network(&handle);
    }
    let activity =
        activity_seed.map(|seed| spawn_activity(handle.clone(), seed, shutdown.child_token()));
    let nodes: Vec<String> = handle.truth().nodes.keys().cloned().collect();
    tracing::info!(
        address = %handle.addr(),
        username = %user,
        secret = %secret,
        era = ?era,
        nodes = %nodes.join(","),
        activity = activity_seed.is_some(),
        faults = %faults.describe(),
        "app_rpt simulator listening: point an AMI client at it with these credentials"
    );
    shutdown.cancelled().await;
    handle.shutdown();
    if let Some(task) = activity {
        let _ = task.await;
    }
    tracing::info!("app_rpt simulator stopped");
    Ok(())
}

/// The accept loop: refuse (accept and close) while the fault is on, else spawn sessions.
async fn accept_loop(handle: SimHandle, listener: TcpListener, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((sock, peer)) => {
                handle.shared.accepted.fetch_add(1, Ordering::Relaxed);
                if shared::Faults::on(&handle.shared.faults.refuse) {
                    drop(sock);
                    continue;
                }
                let _ = sock.set_nodelay(true);
                let local = sock.local_addr().ok();
                tokio::spawn(session::run(handle.shared.clone(), sock, local, Some(peer)));
            }
            Err(e) => {
                tracing::warn!("simulator: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl SimHandle {
    /// A simulator with no listening socket: serve sessions with [`SimHandle::serve_stream`]
    /// (tests over `tokio::io::duplex`). [`SimHandle::addr`] is `0.0.0.0:0` until a
    /// listener exists.
    pub fn detached(config: SimConfig) -> SimHandle {
        SimHandle {
            shared: Arc::new(Shared::new(config)),
        }
    }

    fn install_listener(&self, listener: TcpListener) -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        *lock(&self.shared.addr) = Some(addr);
        let stop = self.shared.shutdown.child_token();
        let task = tokio::spawn(accept_loop(self.clone(), listener, stop.clone()));
        *lock(&self.shared.listener) = Some((stop, task));
        Ok(())
    }

    /// The bound address (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        lock(&self.shared.addr).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// Serves one session over any stream (tests use `tokio::io::duplex`).
    pub fn serve_stream<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(&self, stream: S) {
        tokio::spawn(session::run(self.shared.clone(), stream, None, None));
    }

    // --- truth mutations -------------------------------------------------------------

    /// Starts hosting a node (emits the eight start-up events with value `0`).
    pub fn add_node(&self, node: &str) {
        let epoch = self.shared.clock.epoch();
        self.shared
            .mutate(|t, now| ((), t.add_node(node, now, epoch)));
    }

    /// Establishes a link (or starts connecting, per `link.state`), newest first.
    /// Replaces a link of the same name. Ignored (with a warning) if the node is unknown.
    pub fn connect_link(&self, node: &str, link: SimLink) {
        let found = self
            .shared
            .mutate(|t, now| match t.connect_link(node, link, now) {
                Some(ev) => (true, ev),
                None => (false, Vec::new()),
            });
        if !found {
            tracing::warn!(
                node,
                "simulator: connect_link on a node this server does not host"
            );
        }
    }

    /// Drops a link; `false` if there was none.
    pub fn disconnect_link(&self, node: &str, link: &str) -> bool {
        self.shared
            .mutate(|t, _| split(t.disconnect_link(node, link)))
    }

    /// Remote key/unkey: updates SawStat ages and emits the four link events (on a change).
    pub fn set_link_keyed(&self, node: &str, link: &str, keyed: bool) -> bool {
        self.shared
            .mutate(|t, now| split(t.set_link_keyed(node, link, keyed, now)))
    }

    /// CONNECTING ↔ ESTABLISHED (becoming established restarts the connect time).
    pub fn set_link_state(&self, node: &str, link: &str, state: LinkState) -> bool {
        self.shared
            .mutate(|t, now| split(t.set_link_state(node, link, state, now)))
    }

    /// Changes a link's mode.
    pub fn set_link_mode(&self, node: &str, link: &str, mode: Mode) -> bool {
        self.shared
            .mutate(|t, _| split(t.set_link_mode(node, link, mode)))
    }

    /// Marks a link permanent (as `ilink 12/13/18` or another tool would): `ilink 1` then
    /// leaves it up, only `ilink 11` or `6` drops it. Emits nothing, like app_rpt.
    pub fn set_link_permanent(&self, node: &str, link: &str, permanent: bool) -> bool {
        self.shared
            .mutate(|t, _| (t.set_link_permanent(node, link, permanent), Vec::new()))
    }

    /// The nodes behind a link (LinkedNodes / RPT_LINKS); emits nothing, like app_rpt.
    pub fn set_remote_nodes(&self, node: &str, link: &str, nodes: Vec<(Mode, String)>) -> bool {
        self.shared
            .mutate(|t, _| (t.set_remote_nodes(node, link, nodes), Vec::new()))
    }

    /// Moves a link's connect time `age` into the past (e.g. to show `141:46:12`).
    pub fn backdate_link(&self, node: &str, link: &str, age: Duration) -> bool {
        self.shared
            .mutate(|t, _| (t.backdate_link(node, link, age), Vec::new()))
    }

    /// Local receiver COS: `RPT_RXKEYED` on a change.
    pub fn set_rx_keyed(&self, node: &str, keyed: bool) {
        self.shared
            .mutate(|t, now| ((), t.set_rx_keyed(node, keyed, now)));
    }

    /// Local transmitter: `RPT_TXKEYED` on a change.
    pub fn set_tx_keyed(&self, node: &str, keyed: bool) {
        self.shared
            .mutate(|t, now| ((), t.set_tx_keyed(node, keyed, now)));
    }

    /// Makes the node a voter instance with these receivers; the voted receiver is the
    /// strongest active one with RSSI > 0.
    pub fn set_voter(&self, node: &str, receivers: Vec<SimVoterReceiver>) {
        self.shared.mutate(|t, _| {
            t.set_voter(node, receivers);
            ((), Vec::new())
        });
    }

    /// The node stops being a voter instance.
    pub fn clear_voter(&self, node: &str) -> bool {
        self.shared.mutate(|t, _| (t.clear_voter(node), Vec::new()))
    }

    /// Sets the rx channel name events carry (default `SimpleUSB/<node>`, `Voter/<node>`
    /// once a voter).
    pub fn set_node_channel(&self, node: &str, channel: &str) -> bool {
        self.shared
            .mutate(|t, _| (t.set_channel(node, channel), Vec::new()))
    }

    /// Like `rpt set variable`: the variable moves to the front of XStat's `Var:` lines;
    /// VarSet only (no RPT event).
    pub fn set_variable(&self, node: &str, name: &str, value: &str) {
        self.shared
            .mutate(|t, _| ((), t.set_variable(node, name, value)));
    }

    /// Adds (or replaces) an entry of the EchoLink directory `echolink dbget nodename`
    /// answers from (`node` without the leading 3, e.g. 123456).
    pub fn set_echolink_entry(&self, node: u32, callsign: &str, ip: &str) {
        lock(&self.shared.echolink).insert(node, (callsign.to_owned(), ip.to_owned()));
    }

    /// A copy of the truth.
    pub fn truth(&self) -> SimTruth {
        self.shared.read(Clone::clone)
    }

    // --- faults ------------------------------------------------------------------------

    /// Accept connections and close them at once (no banner).
    pub fn set_refuse(&self, on: bool) {
        self.shared.faults.refuse.store(on, Ordering::Relaxed);
    }

    /// "Asterisk down": stop listening (the port is closed) and close every session.
    pub async fn pause_listener(&self) {
        let task = lock(&self.shared.listener).take();
        if let Some((stop, task)) = task {
            stop.cancel();
            let _ = task.await;
        }
        self.drop_sessions();
    }

    /// "Asterisk back": listen again on the same address.
    pub async fn resume_listener(&self) -> std::io::Result<()> {
        if lock(&self.shared.listener).is_some() {
            return Ok(());
        }
        let Some(addr) = *lock(&self.shared.addr) else {
            return Err(std::io::Error::other(
                "simulator was started without a listener",
            ));
        };
        let listener = TcpListener::bind(addr).await?;
        self.install_listener(listener)
    }

    /// Hang: sessions stay open but stop reading and answering; no events are produced
    /// meanwhile (requests sent during the stall are answered once it ends).
    pub fn set_stall(&self, on: bool) {
        self.shared.stall.send_replace(on);
    }

    /// Closes every session now.
    pub fn drop_sessions(&self) {
        self.shared.drop_sessions();
    }

    /// Cut each write into flushed pieces of at most `max` bytes (`None`: whole writes).
    pub fn set_chunk_writes(&self, max: Option<usize>) {
        let n = max.map_or(0, |m| m.max(1));
        self.shared.faults.chunk.store(n, Ordering::Relaxed);
    }

    /// Write a reply and the events queued behind it (or a burst of events) in one write.
    pub fn set_coalesce(&self, on: bool) {
        self.shared.faults.coalesce.store(on, Ordering::Relaxed);
    }

    /// Drop this fraction of events per session (deterministic seeded RNG); never replies.
    pub fn set_event_drop_ratio(&self, ratio: f64) {
        self.shared.set_drop_ratio(ratio);
    }

    /// Write raw (possibly malformed) bytes to every session, between replies.
    pub fn inject_raw(&self, bytes: &[u8]) {
        self.shared.inject_raw(Bytes::copy_from_slice(bytes));
    }

    /// Reject every login (after Asterisk's 1 s delay) and close.
    pub fn set_fail_login(&self, on: bool) {
        self.shared.faults.fail_login.store(on, Ordering::Relaxed);
    }

    /// Model app_rpt's internal RptStatus failure (§2.1): XStat/SawStat/NodeStat write
    /// `Response: Success` (and `Node:`) and the session closes with the frame unterminated.
    pub fn set_rptstatus_abort(&self, on: bool) {
        self.shared
            .faults
            .abort_rptstatus
            .store(on, Ordering::Relaxed);
    }

    /// Answer every `Action: Command` with `Response: Error` / `Permission denied`, as
    /// Asterisk does for a manager user without the `command` write class.
    pub fn set_reject_commands(&self, on: bool) {
        self.shared
            .faults
            .reject_commands
            .store(on, Ordering::Relaxed);
    }

    /// Depth of the event queue of sessions opened from now on (default 4096). A session
    /// whose queue overflows is closed, like Asterisk's write timeout.
    pub fn set_event_queue_limit(&self, limit: usize) {
        self.shared
            .faults
            .queue_limit
            .store(limit.max(1), Ordering::Relaxed);
    }

    /// Every request received, in order (Secret redacted).
    pub fn recorded_actions(&self) -> Vec<RecordedAction> {
        self.shared.recorded()
    }

    /// Forgets the recorded requests.
    pub fn clear_recorded(&self) {
        self.shared.clear_recorded();
    }

    /// Waits until at least `n` requests are recorded (no sleeping in tests).
    pub async fn wait_for_recorded(&self, n: usize) {
        let mut rx = self.shared.recorded_count.subscribe();
        let _ = rx.wait_for(|c| *c >= n).await;
    }

    /// Connections accepted so far (refused ones included): connection attempts that
    /// reached this server.
    pub fn accepted_connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Logged-in sessions now.
    pub fn session_count(&self) -> usize {
        self.shared.session_count()
    }

    /// Waits until exactly `n` sessions are logged in.
    pub async fn wait_for_session_count(&self, n: usize) {
        let mut rx = self.shared.logged_in.subscribe();
        let _ = rx.wait_for(|c| *c == n).await;
    }

    /// Stops accepting and closes every session. The activity generator keeps its own
    /// token.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
        lock(&self.shared.listener).take();
    }
}

/// `Option<Emitted>` → (found, events).
fn split(r: Option<truth::Emitted>) -> (bool, truth::Emitted) {
    match r {
        Some(ev) => (true, ev),
        None => (false, Vec::new()),
    }
}

/// Locks a std mutex, tolerating poison (the data is plain and stays consistent).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;

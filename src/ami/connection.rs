//! The connection supervisor: one task per Asterisk server that keeps an AMI session alive
//! forever.
//!
//! It connects with a timeout, checks the banner (a peer that accepts TCP but sends no
//! greeting gets its own error), logs in and checks the reply before calling the session
//! connected; matches replies to actions by `ActionID` (see [`take_pending`] for the one
//! exception app_rpt requires); sends `Ping` on an idle session and resets a peer that stops
//! answering; fails every pending action at once on disconnect (nothing is re-sent); and
//! reconnects along the [`Backoff`] ladder. While it waits out a step of the ladder after
//! the port stopped answering, it probes the port with a bare TCP connect every
//! [`PROBE_EVERY`] and logs in as soon as it answers, so recovery after an Asterisk restart
//! takes seconds, with no more login attempts than the ladder alone. On shutdown it sends
//! `Action: Logoff` (waiting at most [`LOGOFF_WAIT`]) and ends; [`AmiHandle::stopped`]
//! awaits that. Events go to the state engine through a bounded channel (overflow is
//! counted, and the next poll recovers it); so do status changes, in order with the events:
//! the published status lives in the model (the supervisor keeps its own copy only to run
//! and for its pollers). Notable things are typed [`super::events`] (metric + log line).
//! Each supervisor runs in an `ami{server=NAME}` span, so every line it writes names its
//! server.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::backoff::{Backoff, FleetMember};
use super::codec::{Action, AmiCodec, CodecError, Frame, Incoming};
use super::events::{
    ActionResult, AmiActionDone, AmiConnected, AmiDisconnected, AmiLoginFailed, AmiProtocolError,
    event_label,
};
use crate::config::{AmiSettings, ServerConfig};
use crate::metrics::Metrics;
use crate::observe::{InternalEvent, clip, now_ms};

/// Text a peer sends that is stored, logged or shown (banner, login reply) is cut to this
/// many characters, with a note that it was cut.
pub const MAX_PEER_TEXT: usize = 200;

/// While waiting to reconnect to a port that stopped answering, probe it this often.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Initial size of a session's read buffer (it grows to the largest frame seen).
pub const READ_BUFFER: usize = 2048;

/// Initial size of a session's write buffer (actions are a few hundred bytes).
pub const WRITE_BUFFER: usize = 512;

/// On shutdown, how long to wait for Asterisk's `Response: Goodbye` to our `Logoff`.
pub const LOGOFF_WAIT: Duration = Duration::from_secs(1);

/// `text` clipped to [`MAX_PEER_TEXT`] characters, saying so when it was cut.
pub fn shown(text: &str) -> String {
    match clip(text, MAX_PEER_TEXT) {
        (t, false) => t,
        (t, true) => format!("{t}… [clipped: {} bytes in all]", text.len()),
    }
}

/// Any byte stream an AMI session can run over (TCP, or an in-memory pipe in tests).
pub trait AmiStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AmiStream for T {}

/// A boxed future returning a connected stream.
pub type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<Box<dyn AmiStream>, ConnectError>> + Send>>;

/// A boxed future saying whether the port answered a bare connect.
pub type ProbeFuture = Pin<Box<dyn Future<Output = bool> + Send>>;

/// How the supervisor opens a stream: TCP in production, anything in tests.
pub trait Connector: Send + Sync + 'static {
    fn connect(&self) -> ConnectFuture;

    /// A cheap check that the server's port answers again (a bare TCP connect, closed at
    /// once; no login). `None`: this connector cannot probe, the ladder is waited out.
    fn probe(&self) -> Option<ProbeFuture> {
        None
    }
}

/// Opens TCP connections to `host:port` with a timeout.
pub struct TcpConnector {
    pub host: String,
    pub port: u16,
    pub timeout: Duration,
}

impl Connector for TcpConnector {
    fn connect(&self) -> ConnectFuture {
        let (host, port, timeout) = (self.host.clone(), self.port, self.timeout);
        Box::pin(async move {
            let addr = format!("{host}:{port}");
            let attempt = async {
                let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map_err(|_| ConnectError::HostNotFound { host: host.clone() })?
                    .collect();
                let mut last = ConnectError::HostNotFound { host: host.clone() };
                for a in addrs {
                    match tokio::net::TcpStream::connect(a).await {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            return Ok(Box::new(s) as Box<dyn AmiStream>);
                        }
                        Err(e) => last = ConnectError::from_io(e, &addr),
                    }
                }
                Err(last)
            };
            tokio::time::timeout(timeout, attempt)
                .await
                .unwrap_or(Err(ConnectError::TimedOut {
                    addr,
                    after: timeout,
                }))
        })
    }

    fn probe(&self) -> Option<ProbeFuture> {
        let (host, port) = (self.host.clone(), self.port);
        let limit = self.timeout.min(PROBE_EVERY);
        Some(Box::pin(async move {
            let attempt = tokio::net::TcpStream::connect((host.as_str(), port));
            // Dropped at once: Asterisk sees a connection that closes before its banner.
            matches!(tokio::time::timeout(limit, attempt).await, Ok(Ok(_)))
        }))
    }
}

/// Why a session could not be established or was lost, in words an operator can act on.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ConnectError {
    #[error(
        "connection refused by {addr} — is Asterisk running and is the manager enabled in manager.conf?"
    )]
    Refused { addr: String },
    #[error("connection to {addr} timed out after {}s — is the host up and port open (firewall)?", after.as_secs_f64())]
    TimedOut { addr: String, after: Duration },
    #[error("{addr} answered but sent no AMI greeting within {}s — is this port really Asterisk's manager interface?", after.as_secs_f64())]
    NoGreeting { addr: String, after: Duration },
    #[error("host not found: {host:?} — check ami_host")]
    HostNotFound { host: String },
    #[error("authentication failed for user {user} — check ami_username/ami_password")]
    AuthFailed { user: String },
    #[error("not an Asterisk Manager: the server greeted with {banner:?}")]
    BadBanner { banner: String },
    #[error("AMI login was not answered: {0}")]
    Login(String),
    #[error("connection closed by Asterisk")]
    Closed,
    #[error("keepalive: no reply to Ping (or to an action) within {}s — the peer stopped answering", .0.as_secs_f64())]
    KeepaliveTimeout(Duration),
    #[error("AMI protocol error: {0}")]
    Protocol(String),
    #[error("network error talking to {addr}: {message}")]
    Io { addr: String, message: String },
    #[error("shutting down")]
    Shutdown,
}

impl ConnectError {
    fn from_io(e: std::io::Error, addr: &str) -> ConnectError {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ConnectError::Refused {
                addr: addr.to_owned(),
            },
            std::io::ErrorKind::TimedOut => ConnectError::TimedOut {
                addr: addr.to_owned(),
                after: Duration::ZERO,
            },
            _ => ConnectError::Io {
                addr: addr.to_owned(),
                message: e.to_string(),
            },
        }
    }

    /// The error's kind, for APIs, metrics and rate-limit keys.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConnectError::Refused { .. } => ErrorKind::Refused,
            ConnectError::TimedOut { .. } => ErrorKind::Timeout,
            ConnectError::NoGreeting { .. } => ErrorKind::NoGreeting,
            ConnectError::HostNotFound { .. } => ErrorKind::HostNotFound,
            ConnectError::AuthFailed { .. } => ErrorKind::AuthFailed,
            ConnectError::BadBanner { .. } | ConnectError::Protocol(_) => ErrorKind::Protocol,
            ConnectError::Login(_) => ErrorKind::Login,
            ConnectError::Closed => ErrorKind::Closed,
            ConnectError::KeepaliveTimeout(_) => ErrorKind::Keepalive,
            ConnectError::Io { .. } => ErrorKind::Io,
            ConnectError::Shutdown => ErrorKind::Shutdown,
        }
    }

    /// True when the port itself did not answer (refused, unreachable, timed out): only
    /// then is probing it worth anything.
    fn port_down(&self) -> bool {
        matches!(
            self,
            ConnectError::Refused { .. }
                | ConnectError::TimedOut { .. }
                | ConnectError::HostNotFound { .. }
                | ConnectError::Io { .. }
        )
    }
}

/// The short form of why a server is not connected: `ConnectionStatus.last_error_kind`
/// and `/api/health`'s `last_error_kind` (serialised in snake_case: `refused`,
/// `auth_failed`…; the values only grow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Refused,
    Timeout,
    /// The port answered but sent no AMI greeting.
    NoGreeting,
    HostNotFound,
    AuthFailed,
    /// Not an Asterisk Manager, or a broken frame.
    Protocol,
    /// The login was not answered.
    Login,
    Closed,
    Keepalive,
    Io,
    Shutdown,
    /// Not contacted: the server is not set up yet (no AMI secret, no nodes).
    NotConfigured,
}

impl ErrorKind {
    /// The JSON spelling (also the log rate-limit key).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Refused => "refused",
            ErrorKind::Timeout => "timeout",
            ErrorKind::NoGreeting => "no_greeting",
            ErrorKind::HostNotFound => "host_not_found",
            ErrorKind::AuthFailed => "auth_failed",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Login => "login",
            ErrorKind::Closed => "closed",
            ErrorKind::Keepalive => "keepalive",
            ErrorKind::Io => "io",
            ErrorKind::Shutdown => "shutdown",
            ErrorKind::NotConfigured => "not_configured",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an action got no usable reply.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ActionError {
    #[error("AMI server {server} is not connected")]
    NotConnected { server: String },
    #[error("AMI connection to {server} was lost before the reply: {reason}")]
    Disconnected { server: String, reason: String },
    #[error("no reply to {action} within {}s", after.as_secs_f64())]
    Timeout { action: String, after: Duration },
    #[error("Asterisk rejected {action}: {message}")]
    Rejected { action: String, message: String },
}

/// A reply to an action.
#[derive(Debug, Clone)]
pub struct Reply {
    pub frame: Frame,
    /// Position of the reply in the server's frame stream (events carry the same counter),
    /// so the state engine can tell which of an event and a poll is newer.
    pub rx_seq: u64,
}

/// What the supervisor tells the state engine.
#[derive(Debug, Clone)]
pub enum AmiEvent {
    /// An unsolicited event frame.
    Event {
        server: Arc<str>,
        frame: Frame,
        rx_seq: u64,
        received: std::time::Instant,
    },
    /// The session was established or lost.
    Status(ConnectionStatus),
}

/// The state of one server's session, as shown everywhere (API, metrics, Lua).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConnectionStatus {
    pub server: String,
    /// `host:port`.
    pub host: String,
    pub connected: bool,
    /// When the session was established or lost (ms since the Unix epoch; 0 = never).
    pub since_ms: u64,
    /// Connection attempts after the first.
    pub reconnect_attempts: u64,
    /// The last error in plain words.
    pub last_error: Option<String>,
    /// The last error's short form (`refused`, `timeout`, `auth_failed`, `host_not_found`…).
    pub last_error_kind: Option<ErrorKind>,
    /// The greeting of the current or last session (`Asterisk Call Manager/11.0.0`).
    pub banner: Option<String>,
}

impl ConnectionStatus {
    /// The status of a server before its first attempt.
    pub fn never_connected(server: &ServerConfig) -> ConnectionStatus {
        ConnectionStatus {
            server: server.name.clone(),
            host: server.address(),
            connected: false,
            since_ms: 0,
            reconnect_attempts: 0,
            last_error: None,
            last_error_kind: None,
            banner: None,
        }
    }
}

struct Pending {
    tx: oneshot::Sender<Result<Reply, ActionError>>,
    action: String,
}

struct Command {
    action: Action,
    tx: oneshot::Sender<Result<Reply, ActionError>>,
}

struct Shared {
    server: String,
    connected: AtomicBool,
    next_id: AtomicU64,
    action_timeout: Duration,
    /// The supervisor's own copy (its pollers wait on it); the published one is the model's.
    status: watch::Sender<ConnectionStatus>,
    metrics: Metrics,
    /// Cancelled when the supervisor task has ended (after its Logoff).
    stopped: CancellationToken,
}

/// The handle everyone uses to talk to one server. Cheap to clone.
#[derive(Clone)]
pub struct AmiHandle {
    shared: Arc<Shared>,
    /// Boxed: the queue's first block (32 slots) is allocated up front for every server.
    commands: mpsc::Sender<Box<Command>>,
}

impl AmiHandle {
    /// The server's configured name.
    pub fn server(&self) -> &str {
        &self.shared.server
    }

    /// True while a verified session is up.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// The supervisor's own copy of its status, for the supervisor's pollers and tests.
    /// The published status lives in the model (`StateStore::servers`): read it there.
    pub fn status(&self) -> ConnectionStatus {
        self.shared.status.borrow().clone()
    }

    /// The supervisor's own copy, for waiting on a condition (`wait_for(|s| s.connected)`):
    /// its pollers wait for the session this way. Updated after the engine has the status.
    pub fn watch_status(&self) -> watch::Receiver<ConnectionStatus> {
        self.shared.status.subscribe()
    }

    /// Waits until the supervisor task has ended: after shutdown was signalled, it logged
    /// out (`Action: Logoff`, at most [`LOGOFF_WAIT`]) and closed the session.
    pub async fn stopped(&self) {
        self.shared.stopped.cancelled().await
    }

    /// True once the supervisor task has ended.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.is_cancelled()
    }

    /// Sends an action and waits for its reply with the configured timeout.
    pub async fn send(&self, action: Action) -> Result<Reply, ActionError> {
        self.send_timeout(action, self.shared.action_timeout).await
    }

    /// Sends an action and waits up to `timeout` for its reply. An `ActionID` is assigned
    /// here (any given one is replaced). `Response: Error` becomes [`ActionError::Rejected`].
    /// Every outcome is counted in `nexus_ami_actions_total{server,action,result}`.
    pub async fn send_timeout(
        &self,
        action: Action,
        timeout: Duration,
    ) -> Result<Reply, ActionError> {
        let name = action.name().to_owned();
        let out = self.send_uncounted(action, timeout).await;
        let result = match &out {
            Ok(_) => ActionResult::Ok,
            Err(ActionError::Rejected { .. }) => ActionResult::Error,
            Err(ActionError::Timeout { .. }) => ActionResult::Timeout,
            Err(ActionError::Disconnected { .. }) => ActionResult::Disconnected,
            Err(ActionError::NotConnected { .. }) => ActionResult::NotConnected,
        };
        AmiActionDone {
            server: &self.shared.server,
            action: &name,
            result,
        }
        .emit(&self.shared.metrics);
        out
    }

    async fn send_uncounted(
        &self,
        mut action: Action,
        timeout: Duration,
    ) -> Result<Reply, ActionError> {
        let name = action.name().to_owned();
        if !self.is_connected() {
            return Err(ActionError::NotConnected {
                server: self.shared.server.clone(),
            });
        }
        let id = format!("nx-{}", self.shared.next_id.fetch_add(1, Ordering::Relaxed));
        // The id is our own text: it cannot contain CR/LF.
        let _ = action.set_action_id(&id);
        let (tx, rx) = oneshot::channel();
        let not_connected = || ActionError::NotConnected {
            server: self.shared.server.clone(),
        };
        self.commands
            .send(Box::new(Command { action, tx }))
            .await
            .map_err(|_| not_connected())?;
        let reply = match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                return Err(ActionError::Timeout {
                    action: name,
                    after: timeout,
                });
            }
            Ok(Err(_)) => return Err(not_connected()),
            Ok(Ok(r)) => r?,
        };
        if reply
            .frame
            .response()
            .is_some_and(|r| r.eq_ignore_ascii_case("Error"))
        {
            let message = reply
                .frame
                .get("Message")
                .unwrap_or("no message")
                .to_owned();
            return Err(ActionError::Rejected {
                action: name,
                message,
            });
        }
        Ok(reply)
    }
}

/// Everything a supervisor needs.
pub struct SupervisorParts {
    pub server: ServerConfig,
    pub settings: AmiSettings,
    pub connector: Box<dyn Connector>,
    pub events: mpsc::Sender<AmiEvent>,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
}

/// Starts the supervisor task for one server over TCP.
pub fn spawn_tcp(
    server: ServerConfig,
    settings: AmiSettings,
    events: mpsc::Sender<AmiEvent>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> AmiHandle {
    let connector = Box::new(TcpConnector {
        host: server.host.clone(),
        port: server.port,
        timeout: settings.connect_timeout,
    });
    spawn(SupervisorParts {
        server,
        settings,
        connector,
        events,
        metrics,
        shutdown,
    })
}

/// Starts the supervisor task with any connector.
pub fn spawn(parts: SupervisorParts) -> AmiHandle {
    let (status, _) = watch::channel(ConnectionStatus::never_connected(&parts.server));
    let shared = Arc::new(Shared {
        server: parts.server.name.clone(),
        connected: AtomicBool::new(false),
        next_id: AtomicU64::new(1),
        action_timeout: parts.settings.action_timeout,
        status,
        metrics: parts.metrics.clone(),
        stopped: CancellationToken::new(),
    });
    let (commands, rx) = mpsc::channel(1024);
    let handle = AmiHandle {
        shared: shared.clone(),
        commands,
    };
    parts
        .metrics
        .ami_up
        .with_label_values(&[&parts.server.name])
        .set(0);
    // Dropped when the task ends, however it ends (even by a panic): `stopped()` returns.
    let done = shared.stopped.clone().drop_guard();
    // Counted before the task runs, so the whole fleet is known when its first connect
    // is spread (backoff.rs).
    let member = FleetMember::join();
    // One span per supervisor for its whole life: every line it writes names its server
    // (`ami{server=NAME}: [AMI] …`). A span costs a slot in the subscriber's registry and
    // its formatted fields: 475 bytes measured with the daemon's subscriber, 0.45 MiB for
    // a fleet of 1,000 servers (docs/architecture.md, Observability).
    let span = tracing::info_span!("ami", server = %parts.server.name);
    tokio::spawn(
        async move {
            let _done = done;
            let _member = member;
            Supervisor::new(parts, shared, rx).run().await;
        }
        .instrument(span),
    );
    handle
}

struct Supervisor {
    parts: SupervisorParts,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Box<Command>>,
    name: Arc<str>,
    rx_seq: u64,
}

type Reader = FramedRead<tokio::io::ReadHalf<Box<dyn AmiStream>>, AmiCodec>;
type Writer = FramedWrite<tokio::io::WriteHalf<Box<dyn AmiStream>>, AmiCodec>;

/// A logged-in session's streams.
/// One session's keepalive: a Ping after `interval` of silence, and a reset when a Ping
/// or the first action written since the peer last spoke gets no frame back within
/// `timeout` (that action is the probe a Ping would be, so no Ping is sent meanwhile).
struct Keepalive {
    interval: Duration,
    timeout: Duration,
    last_rx: Instant,
    /// The Ping waiting for its reply: its ActionID and when it was written.
    ping: Option<(String, Instant)>,
    /// When the first action since the peer last spoke was written.
    probe: Option<Instant>,
}

/// What the keepalive timer says when it fires.
enum Tick {
    /// A Ping or a probe went unanswered for `timeout`: the peer is gone.
    Dead,
    /// Silent for `interval` with nothing waiting: send a Ping.
    Ping,
    /// Nothing to do until then.
    Wait(Instant),
}

impl Keepalive {
    fn new(interval: Duration, timeout: Duration) -> Keepalive {
        Keepalive {
            interval,
            timeout,
            last_rx: Instant::now(),
            ping: None,
            probe: None,
        }
    }

    /// A frame came: the peer is alive.
    fn heard(&mut self) {
        self.last_rx = Instant::now();
        self.probe = None;
    }

    /// Whether `frame` is the reply to our Ping.
    fn answers(&self, frame: &Frame) -> bool {
        self.ping
            .as_ref()
            .is_some_and(|(id, _)| frame.action_id() == Some(id.as_str()))
    }

    /// An action was written; the deadline for an answer when it is the probe.
    fn wrote(&mut self) -> Option<Instant> {
        if self.probe.is_some() {
            return None;
        }
        let now = Instant::now();
        self.probe = Some(now);
        Some(now + self.timeout)
    }

    fn tick(&self, now: Instant) -> Tick {
        // The oldest unanswered write since the peer last spoke: a Ping or an action.
        let oldest = match (&self.ping, self.probe) {
            (Some((_, p)), Some(a)) => Some((*p).min(a)),
            (Some((_, p)), None) => Some(*p),
            (None, a) => a,
        };
        match oldest {
            Some(sent) if now >= sent + self.timeout => Tick::Dead,
            Some(sent) => Tick::Wait(sent + self.timeout),
            None if now >= self.last_rx + self.interval => Tick::Ping,
            None => Tick::Wait(self.last_rx + self.interval),
        }
    }

    /// A Ping was written at `now`; the deadline for its reply.
    fn pinged(&mut self, id: String, now: Instant) -> Instant {
        self.ping = Some((id, now));
        now + self.timeout
    }
}

struct Session {
    reader: Reader,
    writer: Writer,
    /// The greeting, clipped for display.
    banner: String,
}

impl Session {
    /// Gives back the read and write buffers once nothing is waiting in them: a fleet's
    /// sessions are idle nearly all the time (1,000 × 2.5 KiB). The next frame regrows the
    /// read buffer from a few bytes; events, which come in streams, find it grown.
    fn quiet(&mut self, book: &mut Book) {
        self.release_buffers();
        book.release();
    }

    /// The read and write buffers, when empty, are freed (the next frame regrows them).
    fn release_buffers(&mut self) {
        let read = self.reader.read_buffer_mut();
        if read.is_empty() && read.capacity() > 0 {
            *read = BytesMut::new();
        }
        let write = self.writer.write_buffer_mut();
        if write.is_empty() && write.capacity() > 0 {
            *write = BytesMut::new();
        }
    }
}

impl Supervisor {
    fn new(
        parts: SupervisorParts,
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Box<Command>>,
    ) -> Supervisor {
        let name: Arc<str> = Arc::from(parts.server.name.as_str());
        Supervisor {
            parts,
            shared,
            commands,
            name,
            rx_seq: 0,
        }
    }

    async fn run(mut self) {
        let s = &self.parts.settings;
        let mut backoff = Backoff::new(s.retry_interval, s.retry_max, s.retry_jitter);
        let addr = self.parts.server.address();
        let mut attempt: u64 = 0;
        // A fleet does not connect every server in the same instant.
        let first = backoff.spread_delay();
        // The rarer steps are boxed: a task's future is as large as its largest step, and
        // a fleet keeps a thousand of them waiting in `serve`.
        if !first.is_zero() && !Box::pin(self.wait(first, false, &backoff)).await {
            return self.stop();
        }
        loop {
            attempt += 1;
            if attempt == 1 {
                tracing::info!("[AMI] attempting initial connection to {addr}");
            } else {
                self.update_status(|st| st.reconnect_attempts += 1);
                self.parts
                    .metrics
                    .ami_reconnect_attempts
                    .with_label_values(&[&self.name])
                    .inc();
                tracing::info!("[AMI] reconnecting to {addr} (attempt #{attempt})");
            }
            let shutdown = self.parts.shutdown.clone();
            let outcome = tokio::select! {
                r = Box::pin(self.establish()) => r,
                _ = shutdown.cancelled() => return self.stop(),
            };
            let probe = match outcome {
                Ok(session) => {
                    let started = Instant::now();
                    Box::pin(self.connected(&session.banner)).await;
                    let err = self.serve(session).await;
                    if err == ConnectError::Shutdown {
                        return self.stop();
                    }
                    Box::pin(self.disconnected(&err, true, attempt)).await;
                    if started.elapsed() >= backoff.stable_after() {
                        backoff.reset();
                    }
                    err.port_down()
                }
                Err(err) => {
                    Box::pin(self.disconnected(&err, false, attempt)).await;
                    err.port_down()
                }
            };
            let wait = backoff.next_delay();
            if !wait.is_zero() {
                let how = if probe {
                    " (sooner if the port answers again)"
                } else {
                    ""
                };
                tracing::info!(
                    "[AMI] retrying connection in {}{how}...",
                    humantime::format_duration(round_secs(wait))
                );
            }
            if !Box::pin(self.wait(wait, probe, &backoff)).await {
                return self.stop();
            }
        }
    }

    /// Waits out a backoff delay, failing any action that arrives meanwhile. With `probe`,
    /// the port is probed every [`PROBE_EVERY`] (plus a random part of the fleet's spread
    /// window, so a fleet's probes and logins after a mass restart do not all land in the
    /// same second) and the wait ends as soon as it answers. False on shutdown.
    async fn wait(&mut self, wait: Duration, probe: bool, backoff: &Backoff) -> bool {
        let deadline = Instant::now() + wait;
        let sleep = tokio::time::sleep_until(deadline);
        tokio::pin!(sleep);
        let connector = &self.parts.connector;
        let probing = probe && connector.probe().is_some();
        // Each server of a fleet probes at its own pace (one alone: every second), so
        // the ports reopening after a mass restart are not all probed in the same second.
        let probe_gap = || PROBE_EVERY + backoff.spread_delay();
        let mut next_probe = Instant::now() + probe_gap();
        loop {
            let probe_now = probing && next_probe < deadline;
            let probe_fut = async {
                tokio::time::sleep_until(next_probe).await;
                match connector.probe() {
                    Some(f) => f.await,
                    None => false,
                }
            };
            tokio::select! {
                _ = &mut sleep => return true,
                _ = self.parts.shutdown.cancelled() => return false,
                Some(cmd) = self.commands.recv() => {
                    let _ = cmd.tx.send(Err(ActionError::NotConnected { server: self.name.to_string() }));
                }
                answered = probe_fut, if probe_now => {
                    if answered {
                        tracing::info!("[AMI] the manager port answers again: logging in now");
                        return true;
                    }
                    next_probe = Instant::now() + probe_gap();
                }
            }
        }
    }

    fn stop(&mut self) {
        self.set_connected(false);
        tracing::info!("[AMI] supervisor stopped");
    }

    /// Connect, read the banner, log in, and verify the reply.
    async fn establish(&mut self) -> Result<Session, ConnectError> {
        let stream = self.parts.connector.connect().await?;
        let (r, w) = tokio::io::split(stream);
        let max = self.parts.settings.max_frame_bytes;
        // Small buffers that grow with the frames (tokio-util starts both at 8 KiB; a
        // fleet of 1,000 idle sessions held 16 MiB in them).
        let mut reader = FramedRead::with_capacity(r, AmiCodec::client(max), READ_BUFFER);
        let mut writer = FramedWrite::with_capacity(w, AmiCodec::client(max), WRITE_BUFFER);
        let timeout = self.parts.settings.connect_timeout;
        let deadline = Instant::now() + timeout;
        let addr = self.parts.server.address();
        let banner = match tokio::time::timeout_at(deadline, reader.next()).await {
            Err(_) => {
                return Err(ConnectError::NoGreeting {
                    addr,
                    after: timeout,
                });
            }
            Ok(Some(Ok(Incoming::Banner(b)))) => b,
            Ok(Some(Ok(Incoming::Frame(f)))) => {
                return Err(ConnectError::BadBanner {
                    banner: shown(&format!("{f:?}")),
                });
            }
            Ok(Some(Err(e))) => return Err(self.codec_error(e)),
            Ok(None) => return Err(ConnectError::Closed),
        };
        if !banner.starts_with("Asterisk Call Manager") {
            let err = ConnectError::BadBanner {
                banner: shown(&banner),
            };
            self.protocol_error(&err.to_string());
            return Err(err);
        }
        match tokio::time::timeout_at(deadline, self.login(&mut reader, &mut writer)).await {
            Err(_) => {
                AmiActionDone {
                    server: &self.name,
                    action: "Login",
                    result: ActionResult::Timeout,
                }
                .emit(&self.parts.metrics);
                Err(ConnectError::Login(format!(
                    "no reply to Login within {}s",
                    timeout.as_secs_f64()
                )))
            }
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Ok(Session {
                reader,
                writer,
                banner: shown(&banner),
            }),
        }
    }

    /// Sends `Login` and reads its reply (events before it are skipped).
    async fn login(&self, reader: &mut Reader, writer: &mut Writer) -> Result<(), ConnectError> {
        let server = &self.parts.server;
        let login = Action::new("Login")
            .and_then(|a| a.header("Username", &server.username))
            .and_then(|a| a.header("Secret", &server.password))
            .and_then(|a| a.header("Events", &self.parts.settings.events))
            .and_then(|a| a.header("ActionID", "nx-login"))
            .map_err(|e| ConnectError::Login(e.to_string()))?;
        // A session lost before Login's reply still counts the Login it sent.
        let lost = |e: CodecError| {
            AmiActionDone {
                server: &self.name,
                action: "Login",
                result: ActionResult::Disconnected,
            }
            .emit(&self.parts.metrics);
            self.codec_error(e)
        };
        writer.send(&login).await.map_err(lost)?;
        let failed = |message: &str| {
            AmiLoginFailed {
                server: &self.name,
                user: &server.username,
                message,
            }
            .emit(&self.parts.metrics);
        };
        loop {
            let frame = match reader.next().await {
                Some(Ok(Incoming::Frame(f))) => f,
                Some(Ok(Incoming::Banner(_))) => continue,
                Some(Err(e)) => return Err(lost(e)),
                // Asterisk closes right after a failed login.
                None => {
                    failed("connection closed after Login");
                    return Err(ConnectError::AuthFailed {
                        user: server.username.clone(),
                    });
                }
            };
            if frame.event().is_some() {
                continue;
            }
            return match frame.response() {
                Some(r) if r.eq_ignore_ascii_case("Success") => {
                    AmiActionDone {
                        server: &self.name,
                        action: "Login",
                        result: ActionResult::Ok,
                    }
                    .emit(&self.parts.metrics);
                    Ok(())
                }
                Some(r) if r.eq_ignore_ascii_case("Error") => {
                    let msg = shown(frame.get("Message").unwrap_or(""));
                    failed(&msg);
                    if msg.to_ascii_lowercase().contains("auth") {
                        Err(ConnectError::AuthFailed {
                            user: server.username.clone(),
                        })
                    } else {
                        Err(ConnectError::Login(msg))
                    }
                }
                _ => {
                    let text = shown(&format!("unexpected reply {frame:?}"));
                    failed(&text);
                    Err(ConnectError::Login(text))
                }
            };
        }
    }

    fn protocol_error(&self, detail: &str) {
        AmiProtocolError {
            server: &self.name,
            detail,
        }
        .emit(&self.parts.metrics);
    }

    fn codec_error(&self, e: CodecError) -> ConnectError {
        match e {
            CodecError::Io(io) => ConnectError::from_io(io, &self.parts.server.address()),
            other => {
                let text = other.to_string();
                self.protocol_error(&text);
                ConnectError::Protocol(text)
            }
        }
    }

    /// Runs a logged-in session until it fails; returns why.
    async fn serve(&mut self, mut session: Session) -> ConnectError {
        let mut book = Book::default();
        let mut ka = Keepalive::new(
            self.parts.settings.keepalive_interval,
            self.parts.settings.keepalive_timeout,
        );
        let timer = tokio::time::sleep(ka.interval);
        tokio::pin!(timer);
        let shutdown = self.parts.shutdown.clone();
        let err = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    Box::pin(self.logoff(&mut session)).await;
                    break ConnectError::Shutdown;
                }
                item = session.reader.next() => match item {
                    None => break ConnectError::Closed,
                    Some(Err(e)) => break self.codec_error(e),
                    Some(Ok(Incoming::Banner(_))) => {}
                    Some(Ok(Incoming::Frame(frame))) => {
                        self.on_frame(&mut session, &mut book, &mut ka, frame);
                    }
                },
                Some(cmd) = self.commands.recv() => {
                    match self.write_action(&mut session, &mut book, *cmd).await {
                        Err(e) => break e,
                        Ok(false) => continue,
                        Ok(true) => {}
                    }
                    // The first action since the peer last spoke is the probe: its reply
                    // (or any frame) must come within the keepalive timeout.
                    if let Some(deadline) = ka.wrote() {
                        if deadline < timer.deadline() {
                            timer.as_mut().reset(deadline);
                        }
                    }
                },
                _ = &mut timer => {
                    // Forget actions whose caller gave up (timed out).
                    book.forget_abandoned();
                    if book.is_empty() {
                        session.quiet(&mut book);
                    }
                    let now = Instant::now();
                    match ka.tick(now) {
                        Tick::Dead => {
                            if ka.ping.take().is_some() {
                                self.ping_done(ActionResult::Timeout);
                            }
                            break ConnectError::KeepaliveTimeout(ka.timeout);
                        }
                        Tick::Wait(deadline) => timer.as_mut().reset(deadline),
                        Tick::Ping => {
                            let id = format!("nx-{}", self.shared.next_id.fetch_add(1, Ordering::Relaxed));
                            if let Ok(action) = Action::new("Ping").and_then(|a| a.header("ActionID", &id)) {
                                if let Err(e) = session.writer.send(&action).await {
                                    break self.codec_error(e);
                                }
                            }
                            timer.as_mut().reset(ka.pinged(id, now));
                        }
                    }
                }
            }
        };
        if ka.ping.is_some() {
            self.ping_done(ActionResult::Disconnected);
        }
        self.fail_all(book, &err);
        err
    }

    /// One frame of a logged-in session: an event goes to the engine, a reply to its caller
    /// (or to the keepalive); once every action is answered the session goes quiet.
    fn on_frame(
        &mut self,
        session: &mut Session,
        book: &mut Book,
        ka: &mut Keepalive,
        frame: Frame,
    ) {
        ka.heard();
        self.rx_seq += 1;
        if frame.event().is_some() {
            self.forward_event(frame);
            return;
        }
        if ka.answers(&frame) {
            ka.ping = None;
            self.ping_done(ActionResult::Ok);
        } else {
            self.on_reply(book, frame);
        }
        if book.is_empty() && ka.ping.is_none() {
            session.quiet(book);
        }
    }

    /// Counts the keepalive Ping's outcome (`nexus_ami_actions_total{action="Ping"}`).
    fn ping_done(&self, result: ActionResult) {
        AmiActionDone {
            server: &self.name,
            action: "Ping",
            result,
        }
        .emit(&self.parts.metrics);
    }

    /// Writes a caller's action and books it for its reply; a failed write fails the
    /// caller and ends the session. An action without an `ActionID` is not sent (`false`).
    async fn write_action(
        &mut self,
        session: &mut Session,
        book: &mut Book,
        cmd: Command,
    ) -> Result<bool, ConnectError> {
        let Some(id) = cmd.action.get("ActionID").map(str::to_owned) else {
            return Ok(false);
        };
        if let Err(e) = session.writer.send(&cmd.action).await {
            let _ = cmd.tx.send(Err(ActionError::Disconnected {
                server: self.name.to_string(),
                reason: e.to_string(),
            }));
            return Err(self.codec_error(e));
        }
        book.add(
            id,
            Pending {
                tx: cmd.tx,
                action: cmd.action.name().to_owned(),
            },
        );
        Ok(true)
    }

    /// A reply: completes the action it belongs to, or is counted as a protocol error.
    fn on_reply(&self, book: &mut Book, frame: Frame) {
        let next_id = self.shared.next_id.load(Ordering::Relaxed);
        match take_pending(book, &frame, next_id) {
            Match::Found(p) => {
                let _ = p.tx.send(Ok(Reply {
                    frame,
                    rx_seq: self.rx_seq,
                }));
            }
            Match::Late => {
                tracing::debug!("[AMI] late reply to an action whose caller gave up");
            }
            Match::Stray(why) => {
                self.protocol_error(&format!("{why}: {}", shown(&format!("{frame:?}"))))
            }
        }
    }

    /// Every waiting action fails now; nothing is re-sent.
    fn fail_all(&mut self, book: Book, err: &ConnectError) {
        self.set_connected(false);
        let reason = err.to_string();
        for (_, p) in book.pending {
            let _ = p.tx.send(Err(ActionError::Disconnected {
                server: self.name.to_string(),
                reason: reason.clone(),
            }));
        }
        while let Ok(cmd) = self.commands.try_recv() {
            let _ = cmd.tx.send(Err(ActionError::Disconnected {
                server: self.name.to_string(),
                reason: reason.clone(),
            }));
        }
    }

    /// Says goodbye: `Action: Logoff`, then waits (at most [`LOGOFF_WAIT`]) for
    /// `Response: Goodbye` or the close that follows it.
    async fn logoff(&self, session: &mut Session) {
        let result = async {
            let action = Action::new("Logoff")
                .and_then(|a| a.header("ActionID", "nx-logoff"))
                .ok()?;
            session.writer.send(&action).await.ok()?;
            loop {
                match session.reader.next().await {
                    None | Some(Err(_)) => return Some(()),
                    Some(Ok(Incoming::Frame(f)))
                        if f.response()
                            .is_some_and(|r| r.eq_ignore_ascii_case("Goodbye")) =>
                    {
                        return Some(());
                    }
                    Some(Ok(_)) => {}
                }
            }
        };
        let result = match tokio::time::timeout(LOGOFF_WAIT, result).await {
            Ok(Some(())) => ActionResult::Ok,
            Ok(None) => ActionResult::Disconnected,
            Err(_) => ActionResult::Timeout,
        };
        AmiActionDone {
            server: &self.name,
            action: "Logoff",
            result,
        }
        .emit(&self.parts.metrics);
        tracing::info!(result = result.label(), "[AMI] logged out");
    }

    fn forward_event(&self, frame: Frame) {
        let metrics = &self.parts.metrics;
        let name = frame.event().map_or("other", event_label);
        metrics
            .ami_events
            .with_label_values(&[&self.name, name])
            .inc();
        let ev = AmiEvent::Event {
            server: self.name.clone(),
            frame,
            rx_seq: self.rx_seq,
            received: std::time::Instant::now(),
        };
        if self.parts.events.try_send(ev).is_err() {
            metrics
                .ami_events_dropped
                .with_label_values(&[&self.name])
                .inc();
        }
    }

    fn set_connected(&self, up: bool) {
        self.shared.connected.store(up, Ordering::Release);
    }

    /// Changes the supervisor's own copy of the status (not published: the attempt
    /// counter between two outcomes).
    fn update_status(&self, f: impl FnOnce(&mut ConnectionStatus)) {
        self.shared.status.send_modify(f);
    }

    /// Publishes an outcome: the status goes to the state engine, which keeps the one
    /// published copy in the model (`/api/health`, Lua, metrics read it there). The
    /// supervisor's own copy (its pollers wait on it) is updated after the engine has it
    /// queued, so nothing that saw the new copy can ask the model before it is on its way.
    async fn publish(&self, f: impl FnOnce(&mut ConnectionStatus)) {
        let mut st = self.shared.status.borrow().clone();
        f(&mut st);
        // Status changes are rare and must stay in order with events: wait for room.
        let _ = self.parts.events.send(AmiEvent::Status(st.clone())).await;
        self.shared.status.send_replace(st);
    }

    async fn connected(&self, banner: &str) {
        self.set_connected(true);
        AmiConnected {
            server: &self.name,
            banner,
        }
        .emit(&self.parts.metrics);
        self.publish(|st| {
            st.connected = true;
            st.since_ms = now_ms();
            st.banner = Some(banner.to_owned());
        })
        .await;
    }

    async fn disconnected(&self, err: &ConnectError, was_up: bool, attempt: u64) {
        self.set_connected(false);
        AmiDisconnected {
            server: &self.name,
            error: err,
            was_up,
            attempt,
        }
        .emit(&self.parts.metrics);
        // Every failed attempt is published too: each error is news to the API.
        self.publish(|st| {
            if st.connected || st.since_ms == 0 {
                st.since_ms = now_ms();
            }
            st.connected = false;
            st.last_error = Some(err.to_string());
            st.last_error_kind = Some(err.kind());
        })
        .await;
    }
}

/// The actions of one session waiting for their replies, and the order they were sent in.
#[derive(Default)]
struct Book {
    pending: HashMap<String, Pending>,
    order: VecDeque<String>,
}

impl Book {
    fn add(&mut self, id: String, p: Pending) {
        self.order.push_back(id.clone());
        self.pending.insert(id, p);
        if self.order.len() > 4 * self.pending.len() + 64 {
            let pending = &self.pending;
            self.order.retain(|id| pending.contains_key(id));
        }
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// An empty book gives its tables back (see [`Session::release_buffers`]).
    fn release(&mut self) {
        if self.pending.is_empty() && self.pending.capacity() > 0 {
            self.pending = HashMap::new();
        }
        if self.order.is_empty() && self.order.capacity() > 0 {
            self.order = VecDeque::new();
        }
    }

    fn forget_abandoned(&mut self) {
        self.pending.retain(|_, p| !p.tx.is_closed());
        let pending = &self.pending;
        self.order.retain(|id| pending.contains_key(id));
    }
}

/// What a reply frame turned out to answer.
enum Match {
    Found(Pending),
    /// One of our ids whose caller already gave up (timed out): ignored.
    Late,
    /// It answers nothing: a protocol error (counted), never a completed request.
    Stray(&'static str),
}

/// Actions app_rpt may answer with no `ActionID` and no `Response:` line at all
/// (ami-app-rpt.md §2.5, §2.6): `RptLocalNodes` (XML lines) and a `VoterStatus` that
/// matched nothing (a bare blank line).
const BARE_REPLIES: [&str; 2] = ["VoterStatus", "RptLocalNodes"];

/// Finds the action a reply belongs to, by `ActionID` only, with one exception the
/// reference requires: a frame with neither `ActionID` nor `Response:` answers the oldest
/// waiting action when that is a `VoterStatus` or `RptLocalNodes` (Asterisk answers one
/// action at a time, in order, and never puts events inside a reply, §1.6). Any other
/// reply without a known `ActionID` completes nothing (issue 9 item 12: a bare
/// `Response: Success` once completed a poll as "ok" with an empty node).
fn take_pending(book: &mut Book, frame: &Frame, next_id: u64) -> Match {
    if let Some(id) = frame.action_id() {
        if let Some(p) = book.pending.remove(id) {
            if book.order.front().map(String::as_str) == Some(id) {
                book.order.pop_front();
            }
            return Match::Found(p);
        }
        let ours = id
            .strip_prefix("nx-")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n < next_id);
        return if ours {
            Match::Late
        } else {
            Match::Stray("reply with an unknown ActionID")
        };
    }
    if frame.response().is_some() {
        return Match::Stray("reply without ActionID");
    }
    while let Some(id) = book.order.front() {
        match book.pending.get(id) {
            None => {
                book.order.pop_front();
            }
            Some(p)
                if BARE_REPLIES
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(&p.action)) =>
            {
                let id = book.order.pop_front().unwrap_or_default();
                return match book.pending.remove(&id) {
                    Some(p) => Match::Found(p),
                    None => Match::Stray("reply without ActionID"),
                };
            }
            Some(_) => break,
        }
    }
    Match::Stray("reply without ActionID")
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs_f64().round() as u64)
}

#[cfg(test)]
mod tests;

//! The connection supervisor: one task per Asterisk server that keeps an AMI session alive
//! forever.
//!
//! It connects with a timeout, checks the banner, logs in and checks the reply before
//! calling the session connected; matches replies to actions by `ActionID` (or, for a reply
//! without one, to the oldest action waiting); sends `Ping` on an idle session and resets a
//! peer that stops answering; fails every pending action at once on disconnect (nothing is
//! re-sent); and reconnects along the [`Backoff`] ladder. Events go to the state engine
//! through a bounded channel (overflow is counted, and the next poll recovers it); status
//! changes go to everyone through [`AmiHandle`].

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::codec::{Action, AmiCodec, CodecError, Frame, Incoming};
use crate::config::{AmiSettings, ServerConfig};
use crate::metrics::Metrics;
use crate::observe::now_ms;

/// Any byte stream an AMI session can run over (TCP, or an in-memory pipe in tests).
pub trait AmiStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AmiStream for T {}

/// A boxed future returning a connected stream.
pub type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<Box<dyn AmiStream>, ConnectError>> + Send>>;

/// How the supervisor opens a stream: TCP in production, anything in tests.
pub trait Connector: Send + Sync + 'static {
    fn connect(&self) -> ConnectFuture;
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
    #[error("keepalive: no reply to Ping within {}s — the peer stopped answering", .0.as_secs_f64())]
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

    /// A short machine-friendly reason (`refused`, `timeout`, `auth`, …) for APIs.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectError::Refused { .. } => "refused",
            ConnectError::TimedOut { .. } => "timeout",
            ConnectError::HostNotFound { .. } => "host_not_found",
            ConnectError::AuthFailed { .. } => "auth_failed",
            ConnectError::BadBanner { .. } | ConnectError::Protocol(_) => "protocol",
            ConnectError::Login(_) => "login",
            ConnectError::Closed => "closed",
            ConnectError::KeepaliveTimeout(_) => "keepalive",
            ConnectError::Io { .. } => "io",
            ConnectError::Shutdown => "shutdown",
        }
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
    pub last_error_kind: Option<&'static str>,
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
    status: watch::Sender<ConnectionStatus>,
    changes: broadcast::Sender<ConnectionStatus>,
    /// For `nexus_ami_actions_total`.
    metrics: Metrics,
}

/// The handle everyone uses to talk to one server. Cheap to clone.
#[derive(Clone)]
pub struct AmiHandle {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
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

    /// The current status.
    pub fn status(&self) -> ConnectionStatus {
        self.shared.status.borrow().clone()
    }

    /// Every status change, in order, each with its time and error.
    pub fn subscribe_status(&self) -> broadcast::Receiver<ConnectionStatus> {
        self.shared.changes.subscribe()
    }

    /// The latest status, for waiting on a condition (`wait_for(|s| s.connected)`).
    pub fn watch_status(&self) -> watch::Receiver<ConnectionStatus> {
        self.shared.status.subscribe()
    }

    /// Resolves once the supervisor task has ended (after shutdown): the daemon awaits it.
    pub async fn stopped(&self) {
        self.commands.closed().await
    }

    /// Sends an action and waits for its reply with the configured timeout.
    pub async fn send(&self, action: Action) -> Result<Reply, ActionError> {
        self.send_timeout(action, self.shared.action_timeout).await
    }

    /// Sends an action and waits up to `timeout` for its reply. An `ActionID` is assigned
    /// here (any given one is replaced). `Response: Error` becomes [`ActionError::Rejected`].
    pub async fn send_timeout(
        &self,
        action: Action,
        timeout: Duration,
    ) -> Result<Reply, ActionError> {
        let name = action.name().to_owned();
        let result = self.send_uncounted(action, timeout).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ActionError::Rejected { .. }) => "error",
            Err(ActionError::Timeout { .. }) => "timeout",
            Err(ActionError::NotConnected { .. } | ActionError::Disconnected { .. }) => {
                "disconnected"
            }
        };
        self.shared
            .metrics
            .ami_actions
            .with_label_values(&[&self.shared.server, &name, outcome])
            .inc();
        result
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
            .send(Command { action, tx })
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
    let (changes, _) = broadcast::channel(64);
    let shared = Arc::new(Shared {
        server: parts.server.name.clone(),
        connected: AtomicBool::new(false),
        next_id: AtomicU64::new(1),
        action_timeout: parts.settings.action_timeout,
        status,
        changes,
        metrics: parts.metrics.clone(),
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
    tokio::spawn(Supervisor::new(parts, shared, rx).run());
    handle
}

struct Supervisor {
    parts: SupervisorParts,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    name: Arc<str>,
    rx_seq: u64,
}

/// A logged-in session's streams.
struct Session {
    reader: FramedRead<tokio::io::ReadHalf<Box<dyn AmiStream>>, AmiCodec>,
    writer: FramedWrite<tokio::io::WriteHalf<Box<dyn AmiStream>>, AmiCodec>,
    banner: String,
}

impl Supervisor {
    fn new(
        parts: SupervisorParts,
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
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
        loop {
            attempt += 1;
            if attempt == 1 {
                tracing::info!(server = %self.name, "[AMI] attempting initial connection to {addr}");
            } else {
                self.update_status(|st| st.reconnect_attempts += 1);
                self.parts
                    .metrics
                    .ami_reconnect_attempts
                    .with_label_values(&[&self.name])
                    .inc();
                tracing::info!(server = %self.name, "[AMI] reconnecting to {addr} (attempt #{attempt})");
            }
            let shutdown = self.parts.shutdown.clone();
            let outcome = tokio::select! {
                r = self.establish() => r,
                _ = shutdown.cancelled() => return self.stop(),
            };
            match outcome {
                Ok(session) => {
                    let started = Instant::now();
                    self.connected(&session.banner).await;
                    let err = self.serve(session).await;
                    if err == ConnectError::Shutdown {
                        return self.stop();
                    }
                    tracing::warn!(server = %self.name, "[AMI] connection lost: {err}");
                    self.disconnected(&err).await;
                    if started.elapsed() >= backoff.stable_after() {
                        backoff.reset();
                    }
                }
                Err(err) => {
                    tracing::warn!(server = %self.name, "[AMI] connection failed (attempt #{attempt}): {err}");
                    self.disconnected(&err).await;
                }
            }
            let wait = backoff.next_delay();
            if !wait.is_zero() {
                tracing::info!(server = %self.name, "[AMI] retrying connection in {}...", humantime::format_duration(round_secs(wait)));
            }
            if !self.wait(wait).await {
                return self.stop();
            }
        }
    }

    /// Waits out a backoff delay, failing any action that arrives meanwhile. False on shutdown.
    async fn wait(&mut self, wait: Duration) -> bool {
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                _ = self.parts.shutdown.cancelled() => return false,
                Some(cmd) = self.commands.recv() => {
                    let _ = cmd.tx.send(Err(ActionError::NotConnected { server: self.name.to_string() }));
                }
            }
        }
    }

    fn stop(&mut self) {
        self.set_connected(false);
        tracing::info!(server = %self.name, "[AMI] supervisor stopped");
    }

    /// Connect, read the banner, log in, and verify the reply.
    async fn establish(&mut self) -> Result<Session, ConnectError> {
        let stream = self.parts.connector.connect().await?;
        let (r, w) = tokio::io::split(stream);
        let max = self.parts.settings.max_frame_bytes;
        let mut reader = FramedRead::new(r, AmiCodec::client(max));
        let mut writer = FramedWrite::new(w, AmiCodec::client(max));
        let deadline = self.parts.settings.connect_timeout;
        let addr = self.parts.server.address();
        let login = async {
            let banner = match reader.next().await {
                Some(Ok(Incoming::Banner(b))) => b,
                Some(Ok(Incoming::Frame(f))) => {
                    return Err(ConnectError::BadBanner {
                        banner: format!("{f:?}"),
                    });
                }
                Some(Err(e)) => return Err(self.codec_error(e)),
                None => return Err(ConnectError::Closed),
            };
            if !banner.starts_with("Asterisk Call Manager") {
                return Err(ConnectError::BadBanner {
                    banner: banner.chars().take(80).collect(),
                });
            }
            let server = &self.parts.server;
            let login = Action::new("Login")
                .and_then(|a| a.header("Username", &server.username))
                .and_then(|a| a.header("Secret", &server.password))
                .and_then(|a| a.header("Events", &self.parts.settings.events))
                .and_then(|a| a.header("ActionID", "nx-login"))
                .map_err(|e| ConnectError::Login(e.to_string()))?;
            writer.send(&login).await.map_err(|e| self.codec_error(e))?;
            loop {
                let frame = match reader.next().await {
                    Some(Ok(Incoming::Frame(f))) => f,
                    Some(Ok(Incoming::Banner(_))) => continue,
                    Some(Err(e)) => return Err(self.codec_error(e)),
                    // Asterisk closes right after a failed login.
                    None => {
                        return Err(ConnectError::AuthFailed {
                            user: server.username.clone(),
                        });
                    }
                };
                if frame.event().is_some() {
                    continue;
                }
                return match frame.response() {
                    Some(r) if r.eq_ignore_ascii_case("Success") => Ok(banner),
                    Some(r) if r.eq_ignore_ascii_case("Error") => {
                        let msg = frame.get("Message").unwrap_or("");
                        if msg.to_ascii_lowercase().contains("auth") {
                            Err(ConnectError::AuthFailed {
                                user: server.username.clone(),
                            })
                        } else {
                            Err(ConnectError::Login(msg.to_owned()))
                        }
                    }
                    _ => Err(ConnectError::Login(format!("unexpected reply {frame:?}"))),
                };
            }
        };
        let banner =
            tokio::time::timeout(deadline, login)
                .await
                .map_err(|_| ConnectError::TimedOut {
                    addr,
                    after: deadline,
                })??;
        Ok(Session {
            reader,
            writer,
            banner,
        })
    }

    fn codec_error(&self, e: CodecError) -> ConnectError {
        match e {
            CodecError::Io(io) => ConnectError::from_io(io, &self.parts.server.address()),
            other => {
                self.parts
                    .metrics
                    .ami_protocol_errors
                    .with_label_values(&[&self.name])
                    .inc();
                ConnectError::Protocol(other.to_string())
            }
        }
    }

    /// Runs a logged-in session until it fails; returns why.
    async fn serve(&mut self, mut session: Session) -> ConnectError {
        let mut pending: HashMap<String, Pending> = HashMap::new();
        let mut order: VecDeque<String> = VecDeque::new();
        let keepalive = self.parts.settings.keepalive_interval;
        let ping_timeout = self.parts.settings.keepalive_timeout;
        let mut last_rx = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let timer = tokio::time::sleep(keepalive);
        tokio::pin!(timer);
        let shutdown = self.parts.shutdown.clone();
        let err = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break ConnectError::Shutdown,
                item = session.reader.next() => match item {
                    None => break ConnectError::Closed,
                    Some(Err(e)) => break self.codec_error(e),
                    Some(Ok(Incoming::Banner(_))) => {}
                    Some(Ok(Incoming::Frame(frame))) => {
                        last_rx = Instant::now();
                        self.rx_seq += 1;
                        if frame.event().is_some() {
                            self.forward_event(frame);
                        } else if let Some(p) = take_pending(&mut pending, &mut order, &frame) {
                            if p.action == "Ping" { ping_sent = None; }
                            let _ = p.tx.send(Ok(Reply { frame, rx_seq: self.rx_seq }));
                        }
                    }
                },
                Some(cmd) = self.commands.recv() => {
                    let Some(id) = cmd.action.get("ActionID").map(str::to_owned) else { continue };
                    if let Err(e) = session.writer.send(&cmd.action).await {
                        let _ = cmd.tx.send(Err(ActionError::Disconnected { server: self.name.to_string(), reason: e.to_string() }));
                        break self.codec_error(e);
                    }
                    order.push_back(id.clone());
                    pending.insert(id, Pending { tx: cmd.tx, action: cmd.action.name().to_owned() });
                    if order.len() > 4 * pending.len() + 64 {
                        order.retain(|id| pending.contains_key(id));
                    }
                },
                _ = &mut timer => {
                    // Forget actions whose caller gave up (timed out).
                    pending.retain(|_, p| !p.tx.is_closed());
                    order.retain(|id| pending.contains_key(id));
                    let now = Instant::now();
                    if let Some(sent) = ping_sent {
                        if now >= sent + ping_timeout {
                            break ConnectError::KeepaliveTimeout(ping_timeout);
                        }
                        timer.as_mut().reset(sent + ping_timeout);
                    } else if now >= last_rx + keepalive {
                        let id = format!("nx-{}", self.shared.next_id.fetch_add(1, Ordering::Relaxed));
                        let ping = Action::new("Ping").and_then(|a| a.header("ActionID", &id));
                        if let Ok(ping) = ping {
                            if let Err(e) = session.writer.send(&ping).await {
                                break self.codec_error(e);
                            }
                            let (tx, _rx) = oneshot::channel();
                            order.push_back(id.clone());
                            pending.insert(id, Pending { tx, action: "Ping".into() });
                        }
                        ping_sent = Some(now);
                        timer.as_mut().reset(now + ping_timeout);
                    } else {
                        timer.as_mut().reset(last_rx + keepalive);
                    }
                }
            }
        };
        // Every waiting action fails now; nothing is re-sent.
        self.set_connected(false);
        let reason = err.to_string();
        for (_, p) in pending.drain() {
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
        err
    }

    fn forward_event(&self, frame: Frame) {
        let metrics = &self.parts.metrics;
        let name = match frame.event() {
            Some(e) if e.starts_with("RPT_") || e == "VarSet" => e,
            _ => "other",
        };
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

    fn update_status(&self, f: impl FnOnce(&mut ConnectionStatus)) -> ConnectionStatus {
        let mut out = None;
        self.shared.status.send_modify(|st| {
            f(st);
            out = Some(st.clone());
        });
        out.unwrap_or_else(|| self.shared.status.borrow().clone())
    }

    async fn publish(&self, st: ConnectionStatus) {
        let _ = self.shared.changes.send(st.clone());
        // Status changes are rare and must stay in order with events: wait for room.
        let _ = self.parts.events.send(AmiEvent::Status(st)).await;
    }

    async fn connected(&self, banner: &str) {
        self.set_connected(true);
        let m = &self.parts.metrics;
        m.ami_up.with_label_values(&[&self.name]).set(1);
        m.ami_connected_since
            .with_label_values(&[&self.name])
            .set(now_ms() as f64 / 1000.0);
        tracing::info!(server = %self.name, banner, "AMI connection established");
        let st = self.update_status(|st| {
            st.connected = true;
            st.since_ms = now_ms();
            st.banner = Some(banner.to_owned());
        });
        self.publish(st).await;
    }

    async fn disconnected(&self, err: &ConnectError) {
        self.set_connected(false);
        let m = &self.parts.metrics;
        m.ami_up.with_label_values(&[&self.name]).set(0);
        m.ami_connected_since
            .with_label_values(&[&self.name])
            .set(0.0);
        let st = self.update_status(|st| {
            if st.connected || st.since_ms == 0 {
                st.since_ms = now_ms();
            }
            st.connected = false;
            st.last_error = Some(err.to_string());
            st.last_error_kind = Some(err.reason());
        });
        // Every failed attempt is published too: each error is news to the API.
        self.publish(st).await;
    }
}

/// Finds the action a reply belongs to: by `ActionID`, else the oldest one waiting.
fn take_pending(
    pending: &mut HashMap<String, Pending>,
    order: &mut VecDeque<String>,
    frame: &Frame,
) -> Option<Pending> {
    if let Some(id) = frame.action_id() {
        let p = pending.remove(id)?;
        if order.front().map(String::as_str) == Some(id) {
            order.pop_front();
        }
        return Some(p);
    }
    while let Some(id) = order.pop_front() {
        if let Some(p) = pending.remove(&id) {
            return Some(p);
        }
    }
    None
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs_f64().round() as u64)
}

#[cfg(test)]
mod tests;

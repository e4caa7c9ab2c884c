//! The HTTP server's accept loop and connections, run by us rather than by `warp::serve`
//! so that the limits of `docs/security.md, "HTTP limits"` hold:
//!
//! - HTTP/1.1 only (hyper's `http1` server; no plain-text HTTP/2 on the API port); the
//!   headers of each request, and the wait for the next request on a keep-alive
//!   connection, are bounded by `http.header_read_timeout`;
//! - a connection cap per client address (`http.max_connections_per_ip`) and in all
//!   (`http.max_connections`, lowered to fit the open-file limit). When a cap is reached
//!   the oldest *idle* connection (no request in flight, not a WebSocket) is closed to make
//!   room, so idle sockets can never lock out a new client; only when every connection is
//!   busy is the newcomer refused (503);
//! - accept errors (out of file descriptors) are counted, logged at a limited rate and
//!   followed by a pause instead of a spin;
//! - malformed requests are counted and logged at a limited rate (never at ERROR), and
//!   hyper's bodiless automatic 400/414/431 replies are given JSON bodies ([`Guarded`]);
//! - `HEAD` is served as `GET` without the body;
//! - on shutdown: stop accepting, let each connection finish its request (keep-alive off),
//!   and after the grace period close whatever is left.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::http::{Method, Request};
use warp::reply::Response;

use crate::config::HttpConfig;
use crate::metrics::Metrics;
use crate::observe::{LogDecision, LogLimiter};

/// File descriptors kept free for AMI sessions, files and scripts when the connection
/// cap is derived from the open-file limit.
const FD_RESERVE: u64 = 64;
/// Pause after an accept error that means "out of resources" (EMFILE, ENFILE, ENOBUFS).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Largest request head hyper buffers (bigger heads get 431).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long a refused connection gets to receive its 503.
const REFUSE_WRITE: Duration = Duration::from_millis(500);

/// The request handler: every route (warp filters), as one boxed function.
pub(crate) type Handler =
    Arc<dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// The limits in force (from `http:` in the configuration).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub header_read_timeout: Duration,
    pub max_per_ip: usize,
    pub max_total: usize,
}

impl Limits {
    /// `http.max_connections`, lowered to fit the process's open-file limit.
    pub fn new(cfg: &HttpConfig) -> Limits {
        let room = open_file_limit().map(|n| n.saturating_sub(FD_RESERVE).max(16) as usize);
        Limits {
            header_read_timeout: cfg.header_read_timeout.0,
            max_per_ip: cfg.max_connections_per_ip.max(1),
            max_total: room.map_or(cfg.max_connections, |r| r.min(cfg.max_connections)),
        }
    }
}

/// The soft open-file limit (`/proc/self/limits`; `None` when unknown or unlimited).
fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.get("Max open files".len()..)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What the registry knows of one connection.
#[derive(Default)]
pub(crate) struct ConnState {
    /// Requests being answered.
    busy: AtomicUsize,
    /// Switched to WebSocket: never idle, never evicted.
    upgraded: AtomicBool,
}

impl ConnState {
    fn idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0 && !self.upgraded.load(Ordering::Acquire)
    }
}

struct Entry {
    ip: IpAddr,
    opened: Instant,
    state: Arc<ConnState>,
    kill: CancellationToken,
}

#[derive(Default)]
struct Table {
    conns: HashMap<u64, Entry>,
    per_ip: HashMap<IpAddr, usize>,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.conns.remove(&id)?;
        if let Some(n) = self.per_ip.get_mut(&e.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&e.ip);
            }
        }
        Some(e)
    }

    /// Closes the oldest idle connection (of `ip`, if given). False if there is none.
    fn evict_oldest_idle(&mut self, ip: Option<IpAddr>) -> bool {
        let victim = self
            .conns
            .iter()
            .filter(|(_, e)| ip.is_none_or(|ip| e.ip == ip) && e.state.idle())
            .min_by_key(|(_, e)| e.opened)
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.remove(id)) {
            Some(e) => {
                e.kill.cancel();
                true
            }
            None => false,
        }
    }
}

/// Every open connection, for the caps.
#[derive(Default)]
pub(crate) struct Registry {
    table: Mutex<Table>,
    next: AtomicU64,
}

/// Why a connection could not be admitted, or what it cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Room was free.
    Free,
    /// An idle connection was closed to make room.
    Evicted,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `ip`, closing the oldest idle one if a cap is reached;
    /// `None` when every connection in the way is busy.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &Limits,
        parent: &CancellationToken,
    ) -> Option<(Arc<Lease>, CancellationToken, Admission)> {
        let mut t = self.lock();
        let mut admission = Admission::Free;
        if t.conns.len() >= limits.max_total {
            if !t.evict_oldest_idle(None) {
                return None;
            }
            admission = Admission::Evicted;
        }
        if t.per_ip.get(&ip).copied().unwrap_or(0) >= limits.max_per_ip {
            if !t.evict_oldest_idle(Some(ip)) {
                return None;
            }
            admission = Admission::Evicted;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let kill = parent.child_token();
        let state = Arc::new(ConnState::default());
        t.conns.insert(
            id,
            Entry {
                ip,
                opened: Instant::now(),
                state: state.clone(),
                kill: kill.clone(),
            },
        );
        *t.per_ip.entry(ip).or_insert(0) += 1;
        let lease = Arc::new(Lease {
            id,
            registry: self.clone(),
            state,
        });
        Some((lease, kill, admission))
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }
}

/// A connection's place in the registry, released when the socket is closed.
pub(crate) struct Lease {
    id: u64,
    registry: Arc<Registry>,
    state: Arc<ConnState>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.registry.lock().remove(self.id);
    }
}

/// What a route may know about its connection (a request extension).
#[derive(Clone)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    lease: Arc<Lease>,
}

/// The peer's address, from the connection (warp's `addr::remote` knows nothing here:
/// the accept loop is ours).
pub(crate) fn remote()
-> impl warp::Filter<Extract = (Option<SocketAddr>,), Error = std::convert::Infallible> + Clone {
    use warp::Filter;
    warp::ext::optional::<ConnInfo>().map(|c: Option<ConnInfo>| c.map(|c| c.peer))
}

impl ConnInfo {
    /// The connection becomes a WebSocket: it is never idle from now on.
    pub fn mark_upgraded(&self) {
        self.lease.state.upgraded.store(true, Ordering::Release);
    }
}

/// A WebSocket connection taken back from hyper after the upgrade (`/ws` writes its
/// frames straight to the socket): the socket, what the client sent after its request,
/// and the connection's registry place, which must live as long as the socket.
pub(crate) struct UpgradedConn {
    pub stream: TcpStream,
    /// Bytes hyper read past the upgrade request (the client's first frames, if any).
    pub read_buf: bytes::Bytes,
    pub lease: Arc<Lease>,
}

/// The socket under an upgraded connection. Fails only if the connection was not one of
/// this server's (hyper was handed some other IO type).
pub(crate) fn take_upgraded(up: hyper::upgrade::Upgraded) -> Result<UpgradedConn, &'static str> {
    let parts = up
        .downcast::<TokioIo<Guarded>>()
        .map_err(|_| "the upgraded connection is not a TCP socket of this server")?;
    let guarded = parts.io.into_inner();
    Ok(UpgradedConn {
        stream: guarded.inner,
        read_buf: parts.read_buf,
        lease: guarded.lease,
    })
}

/// Counts a request in flight while alive.
struct Busy(Arc<ConnState>);

impl Busy {
    fn enter(state: &Arc<ConnState>) -> Busy {
        state.busy.fetch_add(1, Ordering::AcqRel);
        Busy(state.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The server: accept loop, connections, limits.
pub(crate) struct Server {
    handler: Handler,
    limits: Limits,
    shutdown: CancellationToken,
    /// Cancelled after the grace period: closes every connection still open.
    pub force: CancellationToken,
    pub conns: TaskTracker,
    pub registry: Arc<Registry>,
    metrics: Metrics,
    logs: LogLimiter,
}

impl Server {
    pub fn new(
        handler: Handler,
        limits: Limits,
        shutdown: CancellationToken,
        metrics: Metrics,
    ) -> Arc<Server> {
        Arc::new(Server {
            handler,
            limits,
            shutdown,
            force: CancellationToken::new(),
            conns: TaskTracker::new(),
            registry: Arc::new(Registry::default()),
            metrics,
            logs: LogLimiter::new(Duration::from_secs(10), 64),
        })
    }

    /// Counts a connection problem and logs it at most once per 10 s per kind.
    fn report(&self, kind: &'static str, warn: bool, line: impl FnOnce() -> String) {
        self.metrics
            .http_connection_errors
            .with_label_values(&[kind])
            .inc();
        if let LogDecision::Write { suppressed } = self.logs.allow(kind) {
            let more = if suppressed > 0 {
                format!(" ({suppressed} more since the last line)")
            } else {
                String::new()
            };
            if warn {
                tracing::warn!("[HTTP] {}{more}", line());
            } else {
                tracing::debug!("[HTTP] {}{more}", line());
            }
        }
    }

    /// Accepts connections until shutdown; the listener is closed when this returns.
    pub async fn accept_loop(self: &Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    if !self.admit(stream, peer) {
                        // Let the evicted or refused connection close its socket before
                        // the next accept takes another descriptor.
                        tokio::task::yield_now().await;
                    }
                }
                Err(e) => {
                    let exhausted = out_of_resources(&e);
                    self.report("accept", true, || {
                        format!(
                            "could not accept a connection: {e}{}",
                            if exhausted {
                                " (out of file descriptors or memory: pausing accepts briefly)"
                            } else {
                                ""
                            }
                        )
                    });
                    if exhausted {
                        tokio::select! {
                            _ = self.shutdown.cancelled() => break,
                            _ = tokio::time::sleep(ACCEPT_PAUSE) => {}
                        }
                    }
                }
            }
        }
        drop(listener);
    }

    /// Serves or refuses a new connection; false if a cap was hit (a connection was
    /// evicted or this one refused).
    fn admit(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) -> bool {
        // Small frames (WebSocket events) must not wait for the peer's delayed ACK.
        let _ = stream.set_nodelay(true);
        match self.registry.admit(peer.ip(), &self.limits, &self.force) {
            Some((lease, kill, admission)) => {
                if admission == Admission::Evicted {
                    self.report("evicted", true, || {
                        format!(
                            "connection limit reached (http.max_connections_per_ip {}, http.max_connections {}): closed the oldest idle connection for one from {}",
                            self.limits.max_per_ip,
                            self.limits.max_total,
                            peer.ip()
                        )
                    });
                }
                let me = self.clone();
                self.conns
                    .spawn(async move { me.serve_conn(stream, peer, lease, kill).await });
                admission == Admission::Free
            }
            None => {
                self.report("refused", true, || {
                    format!(
                        "refused a connection from {}: every connection slot is busy (http.max_connections_per_ip {}, http.max_connections {})",
                        peer.ip(),
                        self.limits.max_per_ip,
                        self.limits.max_total
                    )
                });
                tokio::spawn(refuse(stream));
                false
            }
        }
    }

    async fn serve_conn(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        lease: Arc<Lease>,
        kill: CancellationToken,
    ) {
        let info = ConnInfo {
            peer,
            lease: lease.clone(),
        };
        let handler = self.handler.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(info.clone());
            if req.method() == Method::HEAD {
                // hyper remembers the request was HEAD and sends no body.
                *req.method_mut() = Method::GET;
            }
            let busy = Busy::enter(&info.lease.state);
            let fut = handler(req);
            async move {
                let res = fut.await;
                drop(busy);
                Ok::<_, Infallible>(res)
            }
        });
        let io = TokioIo::new(Guarded {
            inner: stream,
            lease,
            pending: None,
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(MAX_HEAD_BYTES)
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = kill.cancelled() => return,
            _ = self.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    r = conn.as_mut() => r,
                    _ = kill.cancelled() => return,
                }
            }
        };
        if let Err(e) = result {
            if e.is_parse() || e.is_parse_too_large() || e.is_parse_status() {
                self.report("malformed", true, || {
                    format!("malformed request from {}: {e}", peer.ip())
                });
            } else if e.is_timeout() {
                self.report("header_timeout", false, || {
                    format!(
                        "closed a connection from {}: no complete request within {:?}",
                        peer.ip(),
                        self.limits.header_read_timeout
                    )
                });
            } else {
                tracing::debug!("[HTTP] connection from {peer} ended: {e}");
            }
        }
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: retrying at once would spin.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12)) || e.kind() == io::ErrorKind::OutOfMemory
}

/// The 503 a refused connection gets (written, then the socket is closed).
fn refused_reply() -> Vec<u8> {
    let body = "{\"error\":\"too many connections: every connection slot is busy (http.max_connections_per_ip, http.max_connections); try again later\"}";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncache-control: no-store\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(REFUSE_WRITE, async {
        stream.write_all(&refused_reply()).await?;
        stream.shutdown().await
    })
    .await;
}

/// hyper's automatic reply to an unreadable request has no body; ours always have a JSON
/// one. Returns the JSON reply that replaces it.
fn automatic_error(buf: &[u8]) -> Option<Vec<u8>> {
    let (status, message) = if buf.starts_with(b"HTTP/1.1 400 ") {
        (
            "400 Bad Request",
            "the request could not be read: malformed HTTP/1.1 request line or header",
        )
    } else if buf.starts_with(b"HTTP/1.1 414 ") {
        ("414 URI Too Long", "the request URI is too long")
    } else if buf.starts_with(b"HTTP/1.1 431 ") {
        (
            "431 Request Header Fields Too Large",
            "the request headers are too large (the limit is 64 KiB)",
        )
    } else {
        return None;
    };
    let end = memchr::memmem::find(buf, b"\r\n\r\n")?;
    let head = buf[..end].to_ascii_lowercase();
    if memchr::memmem::find(&head, b"\r\ncontent-type:").is_some() {
        return None; // one of ours
    }
    let body = format!("{{\"error\":\"{message}\"}}");
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// The accepted socket as hyper sees it: holds the connection's [`Lease`] for as long as
/// the socket lives (through a WebSocket upgrade too) and swaps hyper's bodiless automatic
/// error replies for JSON ones. Writes are not vectored, so a reply head arrives whole.
struct Guarded {
    inner: TcpStream,
    lease: Arc<Lease>,
    /// A replacement reply still being written, and how much of it is out.
    pending: Option<(Vec<u8>, usize)>,
}

impl Guarded {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, at)) = &mut self.pending {
            if *at >= bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *at += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some(reply) = automatic_error(buf) {
            this.pending = Some((reply, 0));
            if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            // The rest goes out on flush.
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_ip: usize, total: usize) -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(1),
            max_per_ip: per_ip,
            max_total: total,
        }
    }

    #[test]
    fn caps_evict_the_oldest_idle_connection_and_refuse_when_all_are_busy() {
        let reg = Arc::new(Registry::default());
        let parent = CancellationToken::new();
        let l = limits(2, 3);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let (first, first_kill, adm) = reg.admit(a, &l, &parent).expect("room");
        assert_eq!(adm, Admission::Free);
        let (second, _k2, _) = reg.admit(a, &l, &parent).expect("room");
        // A third from `a`: the oldest idle one of `a` goes.
        let (third, _k3, adm) = reg.admit(a, &l, &parent).expect("evicts");
        assert_eq!(adm, Admission::Evicted);
        assert!(first_kill.is_cancelled());
        drop(first);
        assert_eq!(reg.len(), 2);
        // Busy connections are never evicted.
        let _b1 = Busy::enter(&second.state);
        third.state.upgraded.store(true, Ordering::Release);
        assert!(reg.admit(a, &l, &parent).is_none(), "both busy: refused");
        let (other, _k, adm) = reg.admit(b, &l, &parent).expect("another address");
        assert_eq!(adm, Admission::Free);
        let _b2 = Busy::enter(&other.state);
        assert!(reg.admit(b, &l, &parent).is_none(), "total cap, all busy");
        drop(other);
        assert_eq!(reg.len(), 2);
    }

    #[test]
    fn automatic_errors_get_json_bodies_and_ours_are_left_alone() {
        let hyper_reply =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(automatic_error(hyper_reply).expect("replaced")).expect("utf8");
        assert!(out.starts_with("HTTP/1.1 431 "));
        let body = out.split("\r\n\r\n").nth(1).expect("body");
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert!(v["error"].as_str().is_some_and(|e| e.contains("headers")));
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n{\"error\":\"\"}";
        assert!(automatic_error(ours).is_none());
        assert!(automatic_error(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
    }

    #[test]
    fn resource_errors_pause_the_accept_loop() {
        assert!(out_of_resources(&io::Error::from_raw_os_error(24)));
        assert!(out_of_resources(&io::Error::from_raw_os_error(23)));
        assert!(!out_of_resources(&io::Error::from_raw_os_error(103)));
    }
}

//! One AMI session, as Asterisk's `session_do` runs it: the banner, then requests answered
//! in order, with queued events written only while idle or right after a reply — never
//! inside one (ami-app-rpt.md §1.6).
//!
//! Every write goes through [`Output`], which applies the chunking and coalescing faults.
//! The session also honours the stall switch (stops reading and answering), the kill token
//! (`drop_sessions`, `shutdown`, queue overflow) and Asterisk's 30 s `authtimeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::actions::{Reply, Session};
use super::shared::Shared;
use crate::ami::{AmiCodec, CodecError, Incoming};

/// Largest request accepted (Asterisk's limits are 1 KiB lines × 128 headers).
const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Asterisk closes sessions that have not logged in after this long (`authtimeout`).
const AUTH_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes frames through the fault layer.
pub(crate) struct Output<W> {
    w: W,
    shared: Arc<Shared>,
}

impl<W: AsyncWrite + Unpin> Output<W> {
    /// Writes frames: one write each, or all in one write when coalescing; each write cut
    /// into flushed pieces when chunking.
    pub(crate) async fn send(&mut self, frames: &[Bytes]) -> std::io::Result<()> {
        let chunk = self.shared.faults.chunk();
        let coalesce = super::shared::Faults::on(&self.shared.faults.coalesce);
        if coalesce && frames.len() > 1 {
            return self.put(&frames.concat(), chunk).await;
        }
        for frame in frames {
            self.put(frame, chunk).await?;
        }
        Ok(())
    }

    async fn put(&mut self, data: &[u8], chunk: Option<usize>) -> std::io::Result<()> {
        let Some(size) = chunk else {
            self.w.write_all(data).await?;
            return self.w.flush().await;
        };
        for piece in data.chunks(size.max(1)) {
            self.w.write_all(piece).await?;
            self.w.flush().await?;
            // Give the reader a chance to see each piece on its own.
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    async fn close(&mut self) {
        let _ = self.w.shutdown().await;
    }

    #[cfg(test)]
    pub(crate) fn for_test(w: W, shared: Arc<Shared>) -> Output<W> {
        Output { w, shared }
    }

    #[cfg(test)]
    pub(crate) fn inner(&self) -> &W {
        &self.w
    }
}

/// What woke the session up.
enum Wake {
    Closed,
    StallChanged,
    Event(Bytes),
    Request(Option<Result<Incoming, CodecError>>),
}

/// Removes the session from the registry however the task ends.
struct Registration {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.unregister(self.id);
    }
}

/// The per-connection machinery around [`Session`].
struct Conn<R, W> {
    session: Session,
    reader: FramedRead<R, AmiCodec>,
    out: Output<W>,
    events: mpsc::Receiver<Bytes>,
    kill: CancellationToken,
    stall: watch::Receiver<bool>,
    auth_deadline: Instant,
}

/// Serves one session on `stream` until either side closes it.
pub(crate) async fn run<S>(
    shared: Arc<Shared>,
    stream: S,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (id, events, kill) = shared.register();
    let _registration = Registration {
        shared: shared.clone(),
        id,
    };
    let (rd, wr) = tokio::io::split(stream);
    let mut conn = Conn {
        session: Session::new(shared.clone(), id, local, peer),
        // Requests are small: a fleet of 1,000 servers should not hold 8 KiB per session.
        reader: FramedRead::with_capacity(rd, AmiCodec::server(MAX_REQUEST_BYTES), 1024),
        out: Output {
            w: wr,
            shared: shared.clone(),
        },
        events,
        kill,
        stall: shared.stall.subscribe(),
        auth_deadline: Instant::now() + AUTH_TIMEOUT,
    };
    tracing::debug!(session = id, ?peer, "simulator: session opened");
    conn.serve().await;
    conn.out.close().await;
    tracing::debug!(session = id, "simulator: session closed");
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Conn<R, W> {
    async fn serve(&mut self) {
        if !self.wait_unstalled().await {
            return;
        }
        let banner = self.session.banner();
        if !self.write(vec![banner]).await {
            return;
        }
        while self.step().await {}
    }

    /// Handles one wake-up; `false` ends the session.
    async fn step(&mut self) -> bool {
        if *self.stall.borrow() {
            return self.wait_unstalled().await;
        }
        match self.wake().await {
            Wake::Closed => false,
            Wake::StallChanged => true,
            Wake::Event(first) => {
                let batch = self.drain(vec![first]);
                self.write(batch).await
            }
            Wake::Request(Some(Ok(Incoming::Frame(frame)))) => {
                // A failed login sleeps a second: stay killable meanwhile.
                let reply = tokio::select! {
                    biased;
                    _ = self.kill.cancelled() => return false,
                    reply = self.session.handle(frame) => reply,
                };
                self.answer(reply).await
            }
            Wake::Request(Some(Ok(Incoming::Banner(_)))) => true,
            Wake::Request(Some(Err(e))) => {
                tracing::debug!(
                    session = self.session.id(),
                    "simulator: bad request stream: {e}"
                );
                false
            }
            Wake::Request(None) => false,
        }
    }

    async fn wake(&mut self) -> Wake {
        let authed = self.session.authenticated();
        tokio::select! {
            biased;
            _ = self.kill.cancelled() => Wake::Closed,
            r = self.stall.changed() => if r.is_ok() { Wake::StallChanged } else { Wake::Closed },
            Some(ev) = self.events.recv() => Wake::Event(ev),
            _ = tokio::time::sleep_until(self.auth_deadline), if !authed => {
                tracing::debug!(session = self.session.id(), "simulator: client did not authenticate");
                Wake::Closed
            }
            item = self.reader.next() => Wake::Request(item),
        }
    }

    /// Writes a reply and then whatever events queued up meanwhile.
    async fn answer(&mut self, reply: Reply) -> bool {
        if reply.close {
            self.write(reply.frames).await;
            return false;
        }
        let batch = self.drain(reply.frames);
        self.write(batch).await
    }

    /// Appends every event already queued.
    fn drain(&mut self, mut batch: Vec<Bytes>) -> Vec<Bytes> {
        while let Ok(ev) = self.events.try_recv() {
            batch.push(ev);
        }
        batch
    }

    /// Writes unless the session is killed first; `false` when it must end.
    async fn write(&mut self, frames: Vec<Bytes>) -> bool {
        if frames.is_empty() {
            return true;
        }
        tokio::select! {
            biased;
            _ = self.kill.cancelled() => false,
            r = self.out.send(&frames) => r.is_ok(),
        }
    }

    /// Waits while stalled; `false` if killed meanwhile.
    async fn wait_unstalled(&mut self) -> bool {
        tokio::select! {
            biased;
            _ = self.kill.cancelled() => false,
            r = self.stall.wait_for(|stalled| !*stalled) => r.is_ok(),
        }
    }
}

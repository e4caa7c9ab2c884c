//! Durable history in SQLite: every keyup, link session, AMI session, alert and control
//! action, kept across restarts and queried by the REST API, the statistics routes and Lua.
//!
//! Data flows one way: a recorder task subscribes to the change stream and the alert hub and
//! hands each item to one writer OS thread through a bounded queue (`try_send`: the state
//! engine never waits on disk; overflow is counted and logged at a limited rate). The writer
//! batches items into one transaction every [`FLUSH_EVERY`] in a WAL-mode file, so a
//! `kill -9` loses at most that much. Readers use their own connection (held behind a
//! mutex, used from `spawn_blocking` by the HTTP routes). See `docs/history.md`.

pub mod query;
pub mod schema;
mod writer;

use flume::{Sender, TrySendError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::alerts::{Alert, AlertHub};
use crate::audit::AuditEntry;
use crate::config::HistoryConfig;
use crate::metrics::Metrics;
use crate::observe::{LogDecision, LogLimiter};
use crate::state::{EngineSender, Published, StateStore};

pub use query::{Page, QueryError, RangeQuery};

/// Longest time an accepted item waits before its transaction commits.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// The longest a control answer or login waits for its audit entry to be committed.
pub const AUDIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Told by the writer once an audit entry is committed (or why it could not be).
pub(crate) type AuditAck = tokio::sync::oneshot::Sender<Result<(), String>>;

/// One item for the writer thread.
pub(crate) enum Op {
    Change(Arc<Published>),
    Alert(Arc<Alert>),
    /// An audit entry; with an ack, its batch commits at once and is synced to disk.
    Audit(Box<AuditEntry>, Option<AuditAck>),
    /// `nexus.store` write: value as JSON text, `None` deletes.
    Store {
        script: String,
        key: String,
        value: Option<String>,
    },
}

struct Inner {
    tx: Sender<Op>,
    reader: Mutex<Connection>,
    depth: Arc<AtomicI64>,
    metrics: Metrics,
    limiter: LogLimiter,
    path: PathBuf,
    closed: tokio::sync::watch::Receiver<bool>,
}

/// The history store. Cheap to clone.
#[derive(Clone)]
pub struct History {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// `PRAGMA cache_size` of a read connection: 256 KiB (a negative size is in KiB). SQLite's
/// default, 2 MiB, stayed resident after one statistics query (docs/performance.md).
const READ_CACHE_SIZE: i64 = -256;

/// Opens a connection with the settings every connection shares.
pub(crate) fn connect(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    if read_only {
        // The writer commits at least once a second (heartbeat), which empties a reader's
        // page cache at its next query anyway: a small cache holds what one query revisits
        // (b-tree inner pages) without keeping SQLite's 2 MiB default per reader resident.
        conn.pragma_update(None, "cache_size", READ_CACHE_SIZE)?;
    } else {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
    }
    Ok(conn)
}

impl History {
    /// Opens (creating and migrating) the database, closes rows a crash left open, and
    /// starts the writer thread and the recorder task. `None` when history is disabled.
    /// Must be called before the state engine starts, so no change is missed.
    pub fn start(
        cfg: &HistoryConfig,
        store: &StateStore,
        engine: EngineSender,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Option<History>> {
        if !cfg.enabled {
            tracing::info!("[HISTORY] disabled (history.enabled: false)");
            return Ok(None);
        }
        let path = cfg
            .path
            .clone()
            .unwrap_or_else(|| PathBuf::from("./state/history.db"));
        let history = History::open(&path, cfg, engine, metrics, shutdown.clone())?;
        history.record_changes(store, shutdown);
        Ok(Some(history))
    }

    /// Opens the database and starts the writer, without subscribing to anything (tests,
    /// benchmarks and tools feed it through [`History::record`]). Today's per-link totals go
    /// to `engine` (a sender whose engine is gone is fine: they are then dropped).
    pub fn open(
        path: &Path,
        cfg: &HistoryConfig,
        engine: EngineSender,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> anyhow::Result<History> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            anyhow::anyhow!(
                "history database {}: {what}: {e} (fix the path or permissions, or set history.enabled: false)",
                path.display()
            )
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail("cannot create its folder", &e))?;
        }
        let mut conn = connect(path, false).map_err(|e| fail("cannot open", &e))?;
        schema::migrate(&mut conn).map_err(|e| fail("cannot migrate", &e))?;
        let reader = connect(path, true).map_err(|e| fail("cannot open for reading", &e))?;
        let (tx, rx) = flume::bounded(cfg.queue.max(1));
        let depth = Arc::new(AtomicI64::new(0));
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        let parts = writer::Parts {
            conn,
            rx,
            depth: depth.clone(),
            metrics: metrics.clone(),
            engine,
            retention_days: cfg.retention_days,
            shutdown,
            closed: closed_tx,
        };
        // Not joined here: the daemon's lifecycle awaits `closed()` on shutdown (open rows
        // closed, file flushed); a rig that never shuts down just leaves the thread idle.
        std::thread::Builder::new()
            .name("nexus-history".into())
            .spawn(move || writer::run(parts))
            .map_err(|e| fail("cannot start the writer thread", &e))?;
        tracing::info!("[HISTORY] recording to {}", path.display());
        Ok(History {
            inner: Arc::new(Inner {
                tx,
                reader: Mutex::new(reader),
                depth,
                metrics,
                limiter: LogLimiter::new(Duration::from_secs(10), 4),
                path: path.to_owned(),
                closed,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Queues one item for the writer; never waits. A full queue drops it (counted).
    pub(crate) fn send(&self, op: Op) -> bool {
        let i = &self.inner;
        match i.tx.try_send(op) {
            Ok(()) => {
                let d = i.depth.fetch_add(1, Ordering::Relaxed) + 1;
                i.metrics.history_queue_depth.set(d.max(0));
                true
            }
            Err(TrySendError::Full(_)) => {
                self.dropped(1);
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    fn dropped(&self, n: u64) {
        self.inner.metrics.history_queue_dropped.inc_by(n);
        if let LogDecision::Write { suppressed } = self.inner.limiter.allow("dropped") {
            tracing::warn!(
                "[HISTORY] the writer is behind: {n} item(s) not recorded ({suppressed} similar lines held back); \
                 see nexus_history_queue_dropped_total"
            );
        }
    }

    /// Records one change (as the recorder does for every change of the stream).
    pub fn record(&self, change: Arc<Published>) -> bool {
        self.send(Op::Change(change))
    }

    /// Records one alert.
    pub fn record_alert(&self, alert: Arc<Alert>) -> bool {
        self.send(Op::Alert(alert))
    }

    /// Records a control action or login in the `audit` table. Never waits (and so may
    /// drop it when the queue is full): for entries that must be on disk before an answer,
    /// use [`History::write_audit`].
    pub fn record_audit(&self, entry: AuditEntry) -> bool {
        self.send(Op::Audit(Box::new(entry), None))
    }

    /// Writes an audit entry and waits until the writer has committed it (synced to disk),
    /// at most [`AUDIT_TIMEOUT`]. A full queue is retried within that time rather than
    /// dropped; the state engine is never held up (its items are only ever `try_send`).
    pub async fn write_audit(&self, entry: AuditEntry) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + AUDIT_TIMEOUT;
        let (ack, done) = tokio::sync::oneshot::channel();
        let mut op = Op::Audit(Box::new(entry), Some(ack));
        loop {
            match self.inner.tx.try_send(op) {
                Ok(()) => {
                    let d = self.inner.depth.fetch_add(1, Ordering::Relaxed) + 1;
                    self.inner.metrics.history_queue_depth.set(d.max(0));
                    break;
                }
                Err(TrySendError::Full(back)) if tokio::time::Instant::now() < deadline => {
                    op = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(TrySendError::Full(_)) => {
                    return Err(format!(
                        "the history writer's queue stayed full for {} s",
                        AUDIT_TIMEOUT.as_secs()
                    ));
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err("the history writer has stopped".into());
                }
            }
        }
        match tokio::time::timeout_at(deadline, done).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the history writer stopped before committing".into()),
            Err(_) => Err(format!(
                "not committed within {} s (is the disk stalled?)",
                AUDIT_TIMEOUT.as_secs()
            )),
        }
    }

    /// Audit entries matching `q` (see [`query::audit`]), blocking.
    pub fn audit_blocking(
        &self,
        q: &crate::audit::AuditQuery,
    ) -> Result<crate::audit::AuditPage, QueryError> {
        self.read(|conn| query::audit(conn, q))
    }

    /// Imports a JSON Lines audit file left by a daemon that ran without history (or an
    /// older version): every readable line becomes a row (lines already imported are
    /// skipped, so a repeated import adds nothing), in one transaction; then the file is
    /// renamed `<name>.imported` (or `<name>.imported.N`) and kept as an archive. Returns
    /// how many rows were added. A missing file is nothing to do.
    pub fn import_audit_file(&self, file: &Path) -> Result<usize, String> {
        if !file.exists() {
            return Ok(0);
        }
        let entries = crate::audit::read_file(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let mut conn = connect(self.path(), false)
            .map_err(|e| format!("cannot open {}: {e}", self.path().display()))?;
        let added = writer::import_audit(&mut conn, &entries)
            .map_err(|e| format!("cannot import into {}: {e}", self.path().display()))?;
        let mut to = file.as_os_str().to_owned();
        to.push(".imported");
        let mut to = PathBuf::from(to);
        let mut n = 1;
        while to.exists() {
            let mut t = file.as_os_str().to_owned();
            t.push(format!(".imported.{n}"));
            to = PathBuf::from(t);
            n += 1;
        }
        std::fs::rename(file, &to).map_err(|e| {
            format!(
                "imported {added} entries but cannot rename {} to {}: {e} (a later import skips them)",
                file.display(),
                to.display()
            )
        })?;
        Ok(added)
    }

    /// Persists one `nexus.store` key of `script` (`None` deletes). Never waits.
    pub fn store_set(&self, script: &str, key: &str, value: Option<String>) -> bool {
        self.send(Op::Store {
            script: script.to_owned(),
            key: key.to_owned(),
            value,
        })
    }

    /// Runs `f` with the read connection (blocking; use from `spawn_blocking` on async paths).
    pub fn read<R>(&self, f: impl FnOnce(&Connection) -> R) -> R {
        let conn = self.inner.reader.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }

    /// Waits until the writer has stopped (after shutdown: open rows closed, file flushed).
    pub async fn closed(&self) {
        let mut rx = self.inner.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Subscribes to the change stream (now, synchronously) and feeds the writer.
    fn record_changes(&self, store: &StateStore, shutdown: CancellationToken) {
        let mut rx = store.subscribe();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    got = rx.recv() => match got {
                        Ok(p) => { me.record(p); }
                        Err(RecvError::Lagged(n)) => me.dropped(n),
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        });
    }

    /// Records every alert the hub raises from now on.
    pub fn record_alerts(&self, hub: &AlertHub, shutdown: CancellationToken) {
        let mut rx = hub.subscribe();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    got = rx.recv() => match got {
                        Ok(a) => { me.record_alert(a); }
                        Err(RecvError::Lagged(n)) => me.dropped(n),
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        });
    }
}

/// The audit log's durable store (see [`crate::audit`]).
impl crate::audit::AuditStore for History {
    fn write(
        &self,
        entry: AuditEntry,
    ) -> futures_util::future::BoxFuture<'static, Result<(), String>> {
        let h = self.clone();
        Box::pin(async move { h.write_audit(entry).await })
    }

    fn read(&self, q: &crate::audit::AuditQuery) -> Result<crate::audit::AuditPage, String> {
        self.audit_blocking(q).map_err(|e| e.to_string())
    }

    fn import_file(&self, file: &Path) -> Result<usize, String> {
        self.import_audit_file(file)
    }

    fn location(&self) -> &Path {
        self.path()
    }
}

#[cfg(test)]
mod tests;

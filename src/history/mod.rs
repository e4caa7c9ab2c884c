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

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::alerts::{Alert, AlertHub};
use crate::config::HistoryConfig;
use crate::metrics::Metrics;
use crate::observe::{LogDecision, LogLimiter};
use crate::state::{Published, StateStore};

pub use query::{Page, QueryError, RangeQuery};

/// Longest time an accepted item waits before its transaction commits.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// A control action or login, for the audit table (`History::record_audit`).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub time_ms: u64,
    /// Who: user name, `lua:<script>`, or `anonymous`.
    pub actor: String,
    /// What: `login`, `connect`, `disconnect`, …
    pub action: String,
    pub node: Option<String>,
    pub target: Option<String>,
    /// `ok`, `denied`, `verified`, … in the caller's words.
    pub result: String,
    /// Anything else, as JSON text (never secrets).
    pub detail: Option<String>,
}

/// One item for the writer thread.
pub(crate) enum Op {
    Change(Arc<Published>),
    Alert(Arc<Alert>),
    Audit(AuditRecord),
    /// `nexus.store` write: value as JSON text, `None` deletes.
    Store {
        script: String,
        key: String,
        value: Option<String>,
    },
}

struct Inner {
    tx: SyncSender<Op>,
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
    if !read_only {
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
        let history = History::open(&path, cfg, store.clone(), metrics, shutdown.clone())?;
        history.record_changes(store, shutdown);
        Ok(Some(history))
    }

    /// Opens the database and starts the writer, without subscribing to anything (tests,
    /// benchmarks and tools feed it through [`History::record`]).
    pub fn open(
        path: &Path,
        cfg: &HistoryConfig,
        store: StateStore,
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
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.queue.max(1));
        let depth = Arc::new(AtomicI64::new(0));
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        let parts = writer::Parts {
            conn,
            rx,
            depth: depth.clone(),
            metrics: metrics.clone(),
            store,
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

    /// Records a control action or login in the `audit` table. Never waits.
    pub fn record_audit(&self, record: AuditRecord) -> bool {
        self.send(Op::Audit(record))
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

#[cfg(test)]
mod tests;

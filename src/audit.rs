//! The control audit log: every link-control attempt (accepted, refused or failed) and
//! every login, written durably before the caller answers. Entries name the identity,
//! never a secret.
//!
//! With history enabled the entries live in the history database's `audit` table (the
//! writer commits and syncs them before [`AuditLog::append`] returns; an `audit.jsonl`
//! left by an older run is imported once at start and renamed `audit.jsonl.imported`).
//! Without history they are JSON Lines appended to `<state_dir>/audit.jsonl`, synced to
//! disk, only ever appended to. Either is read back for `GET /api/audit`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use futures_util::future::BoxFuture;

/// The file name under `state_dir`.
pub const FILE_NAME: &str = "audit.jsonl";
/// Longest text kept in a field (request text is clipped, so a flood cannot bloat it).
const MAX_FIELD: usize = 64;

/// One audited attempt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The row id in the history store (the paging cursor); absent in the JSON Lines file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// When it happened, ms since the Unix epoch.
    pub time_ms: u64,
    /// The same time, RFC 3339.
    pub time: String,
    /// Token or user name, `script:<file>`, `anonymous`, or the name a login tried.
    pub identity: String,
    /// `token`, `cookie`, `script`, `anonymous`, `open`, `login`.
    pub via: String,
    /// The peer address (the proxy's, behind one).
    pub source: Option<String>,
    /// `X-Forwarded-For` as the proxy sent it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_for: Option<String>,
    /// `connect`, `disconnect`, `disconnect_all`, `login`, `logout`.
    pub action: String,
    pub node: Option<String>,
    pub target: Option<String>,
    pub mode: Option<String>,
    pub permanent: Option<bool>,
    /// `verified`, `unverified`, `already`, `refused`, `failed`, `ok` (login/logout).
    pub result: String,
    /// The HTTP status answered (or that a script's call would have had).
    pub status: u16,
    /// What verification saw, or why it was refused, in plain words.
    pub detail: String,
}

impl AuditEntry {
    /// Cuts request-supplied text to a bounded length.
    pub fn clip(s: &str) -> String {
        crate::observe::clip(s, MAX_FIELD).0
    }
}

/// Filters for [`AuditLog::query`]; every given field must match.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub identity: Option<String>,
    pub node: Option<String>,
    pub action: Option<String>,
    pub result: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Newest entries kept (the answer is oldest first).
    pub limit: usize,
    /// Only entries older than this one (`next_cursor` of a previous answer; history only).
    pub cursor: Option<i64>,
}

impl AuditQuery {
    fn matches(&self, e: &AuditEntry) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        eq(&self.identity, Some(&e.identity))
            && eq(&self.node, e.node.as_deref())
            && eq(&self.action, Some(&e.action))
            && eq(&self.result, Some(&e.result))
            && self.since_ms.is_none_or(|s| e.time_ms >= s)
            && self.until_ms.is_none_or(|u| e.time_ms < u)
    }
}

/// One page of entries: oldest first (as `GET /api/audit` has always answered), the newest
/// `limit` matches below the cursor.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `cursor` for the page of older entries; `null` when there are none.
    pub next_cursor: Option<String>,
}

/// A durable store for the entries: the history database implements it
/// (the `History` store of the history module), so this module does not depend on it.
pub trait AuditStore: Send + Sync {
    /// Writes one entry; `Ok` once it is committed and synced to disk.
    fn write(&self, entry: AuditEntry) -> BoxFuture<'static, Result<(), String>>;
    /// Entries matching `q` (blocking).
    fn read(&self, q: &AuditQuery) -> Result<AuditPage, String>;
    /// Imports a JSON Lines audit file once and moves it aside; returns the rows added.
    fn import_file(&self, file: &Path) -> Result<usize, String>;
    /// The file that holds the entries.
    fn location(&self) -> &Path;
}

/// Where entries go.
#[derive(Clone)]
enum Backend {
    File(FileLog),
    History(Arc<dyn AuditStore>),
}

/// The audit log. Cheap to clone; clones share the file or the store.
#[derive(Clone)]
pub struct AuditLog {
    backend: Backend,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path())
            .finish()
    }
}

impl AuditLog {
    /// The JSON Lines log in `state_dir` (created on first write).
    pub fn new(state_dir: &Path) -> AuditLog {
        AuditLog {
            backend: Backend::File(FileLog::new(state_dir)),
        }
    }

    /// The log in the history store, when there is one, after importing (once) the JSON
    /// Lines file an earlier run left in `state_dir`. A failed import is logged and the
    /// file left in place for the next start; the store is used all the same.
    pub fn open(state_dir: &Path, history: Option<Arc<dyn AuditStore>>) -> AuditLog {
        let Some(history) = history else {
            return AuditLog::new(state_dir);
        };
        let file = state_dir.join(FILE_NAME);
        match history.import_file(&file) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                "[CONTROL] imported {n} audit entries from {} into the history database",
                file.display()
            ),
            Err(e) => tracing::error!(
                "[CONTROL] the old audit file was not imported: {e}; it stays where it is and \
                 is imported at the next start"
            ),
        }
        AuditLog {
            backend: Backend::History(history),
        }
    }

    /// The file that holds the entries (the JSON Lines file or the history database).
    pub fn path(&self) -> &Path {
        match &self.backend {
            Backend::File(f) => &f.path,
            Backend::History(h) => h.location(),
        }
    }

    /// Whether entries live in the history store (paging with `cursor` works).
    pub fn in_history(&self) -> bool {
        matches!(self.backend, Backend::History(_))
    }

    /// Writes one entry; it is on disk when this returns Ok (history: committed and synced
    /// by the history writer within its audit timeout, 5 s).
    pub async fn append(&self, entry: AuditEntry) -> std::io::Result<()> {
        match &self.backend {
            Backend::File(f) => {
                let log = f.clone();
                tokio::task::spawn_blocking(move || log.append_blocking(&entry))
                    .await
                    .map_err(|e| std::io::Error::other(format!("audit writer stopped: {e}")))?
            }
            Backend::History(h) => h.write(entry).await.map_err(std::io::Error::other),
        }
    }

    /// Entries matching `q`, oldest first, at most `q.limit` (the newest), with the cursor
    /// of the next (older) page when the store pages.
    pub async fn query(&self, q: AuditQuery) -> std::io::Result<AuditPage> {
        let backend = self.backend.clone();
        tokio::task::spawn_blocking(move || match backend {
            Backend::File(f) => f.query_blocking(&q).map(|entries| AuditPage {
                entries,
                next_cursor: None,
            }),
            Backend::History(h) => h.read(&q).map_err(std::io::Error::other),
        })
        .await
        .map_err(|e| std::io::Error::other(format!("audit reader stopped: {e}")))?
    }
}

/// Every readable entry of a JSON Lines audit file, in file order (unreadable lines are
/// skipped).
pub fn read_file(path: &Path) -> std::io::Result<Vec<AuditEntry>> {
    let f = File::open(path)?;
    let mut out = Vec::new();
    for line in BufReader::new(f).lines() {
        if let Ok(e) = serde_json::from_str::<AuditEntry>(&line?) {
            out.push(e);
        }
    }
    Ok(out)
}

/// The append-only JSON Lines file (history disabled).
#[derive(Clone)]
struct FileLog {
    path: PathBuf,
    file: Arc<Mutex<Option<File>>>,
}

impl FileLog {
    fn new(state_dir: &Path) -> FileLog {
        FileLog {
            path: state_dir.join(FILE_NAME),
            file: Arc::new(Mutex::new(None)),
        }
    }

    /// Appends one entry and syncs it to disk.
    fn append_blocking(&self, entry: &AuditEntry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            *guard = Some(f);
        }
        let Some(f) = guard.as_mut() else {
            return Err(std::io::Error::other("audit file not open"));
        };
        let written = f.write_all(&line).and_then(|()| f.sync_data());
        if written.is_err() {
            // Reopen next time (the file may have been rotated or the disk remounted).
            *guard = None;
        }
        written
    }

    /// Entries matching `q`, oldest first, at most `q.limit` (the newest). Unreadable
    /// lines are skipped. A missing file is an empty log.
    fn query_blocking(&self, q: &AuditQuery) -> std::io::Result<Vec<AuditEntry>> {
        let f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = std::collections::VecDeque::new();
        for line in BufReader::new(f).lines() {
            let line = line?;
            let Ok(e) = serde_json::from_str::<AuditEntry>(&line) else {
                continue;
            };
            if q.matches(&e) {
                if out.len() == q.limit.max(1) {
                    out.pop_front();
                }
                out.push_back(e);
            }
        }
        Ok(out.into())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An entry for tests (also the history store's audit tests).
    pub(crate) fn entry(n: u64, who: &str, result: &str) -> AuditEntry {
        AuditEntry {
            time_ms: n,
            identity: who.into(),
            action: "connect".into(),
            node: Some("1999".into()),
            result: result.into(),
            ..AuditEntry::default()
        }
    }

    #[test]
    fn appends_survive_a_new_handle_and_filter() {
        let dir = std::env::temp_dir().join(format!("nexus-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = FileLog::new(&dir);
        for i in 0..5 {
            let who = if i % 2 == 0 { "alice" } else { "bob" };
            log.append_blocking(&entry(i, who, "verified"))
                .expect("append");
        }
        log.append_blocking(&entry(9, "bob", "refused"))
            .expect("append");
        let again = FileLog::new(&dir);
        let all = again
            .query_blocking(&AuditQuery {
                limit: 100,
                ..AuditQuery::default()
            })
            .expect("read");
        assert_eq!(all.len(), 6);
        let bob = again
            .query_blocking(&AuditQuery {
                identity: Some("bob".into()),
                result: Some("verified".into()),
                limit: 100,
                ..AuditQuery::default()
            })
            .expect("read");
        assert_eq!(bob.iter().map(|e| e.time_ms).collect::<Vec<_>>(), [1, 3]);
        let newest = again
            .query_blocking(&AuditQuery {
                since_ms: Some(2),
                limit: 2,
                ..AuditQuery::default()
            })
            .expect("read");
        assert_eq!(newest.iter().map(|e| e.time_ms).collect::<Vec<_>>(), [4, 9]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

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

use crate::history::{AuditPage, History};

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

/// Where entries go.
#[derive(Clone)]
enum Backend {
    File(FileLog),
    History(History),
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
    pub fn open(state_dir: &Path, history: Option<History>) -> AuditLog {
        let Some(history) = history else {
            return AuditLog::new(state_dir);
        };
        let file = state_dir.join(FILE_NAME);
        match history.import_audit_file(&file) {
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
            Backend::History(h) => h.path(),
        }
    }

    /// Whether entries live in the history store (paging with `cursor` works).
    pub fn in_history(&self) -> bool {
        matches!(self.backend, Backend::History(_))
    }

    /// Writes one entry; it is on disk when this returns Ok (history: committed and synced
    /// by the writer within [`crate::history::AUDIT_TIMEOUT`]).
    pub async fn append(&self, entry: AuditEntry) -> std::io::Result<()> {
        match &self.backend {
            Backend::File(f) => {
                let log = f.clone();
                tokio::task::spawn_blocking(move || log.append_blocking(&entry))
                    .await
                    .map_err(|e| std::io::Error::other(format!("audit writer stopped: {e}")))?
            }
            Backend::History(h) => h.write_audit(entry).await.map_err(std::io::Error::other),
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
            Backend::History(h) => h
                .audit_blocking(&q)
                .map_err(|e| std::io::Error::other(e.to_string())),
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
mod tests {
    use super::*;

    fn entry(n: u64, who: &str, result: &str) -> AuditEntry {
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

    fn history(path: &Path, shutdown: &tokio_util::sync::CancellationToken) -> History {
        let cfg = crate::config::HistoryConfig {
            retention_days: 0,
            ..crate::config::HistoryConfig::default()
        };
        History::open(
            path,
            &cfg,
            crate::state::StateStore::new(16, 16),
            crate::metrics::Metrics::default(),
            shutdown.clone(),
        )
        .expect("open history")
    }

    fn all(limit: usize) -> AuditQuery {
        AuditQuery {
            limit,
            ..AuditQuery::default()
        }
    }

    #[tokio::test]
    async fn history_backed_entries_are_committed_before_append_returns_and_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!(
            "nexus-audit-history-{}-{}",
            std::process::id(),
            crate::observe::now_ms()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let db = dir.join("history.db");
        let stop = tokio_util::sync::CancellationToken::new();
        let h = history(&db, &stop);
        let log = AuditLog::open(&dir, Some(h.clone()));
        assert!(log.in_history());
        for i in 0..5u64 {
            let mut e = entry(
                1000 + i,
                if i % 2 == 0 { "alice" } else { "bob" },
                "verified",
            );
            e.via = "token".into();
            e.source = Some("192.0.2.9".into());
            e.mode = Some("transceive".into());
            e.permanent = Some(i == 4);
            e.status = 200;
            e.detail = format!("try {i}");
            log.append(e).await.expect("append");
            // Committed, not merely queued: a fresh connection sees it at once.
            let rows: i64 = crate::history::connect(&db, true)
                .expect("reader")
                .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
                .expect("count");
            assert_eq!(rows, i as i64 + 1);
        }
        assert!(
            !dir.join(FILE_NAME).exists(),
            "no JSON Lines file with history"
        );
        stop.cancel();
        h.closed().await;

        let stop = tokio_util::sync::CancellationToken::new();
        let log = AuditLog::open(&dir, Some(history(&db, &stop)));
        let page = log.query(all(100)).await.expect("query");
        let times: Vec<u64> = page.entries.iter().map(|e| e.time_ms).collect();
        assert_eq!(times, [1000, 1001, 1002, 1003, 1004], "oldest first");
        let last = &page.entries[4];
        assert_eq!(
            (
                last.identity.as_str(),
                last.via.as_str(),
                last.status,
                last.permanent
            ),
            ("alice", "token", 200, Some(true))
        );
        assert_eq!(last.source.as_deref(), Some("192.0.2.9"));
        assert_eq!(last.detail, "try 4");
        assert!(
            last.time.starts_with("1970-01-01T00:00:01"),
            "{}",
            last.time
        );
        assert_eq!(page.next_cursor, None);

        // Filters as the file had them; pages of 2 walk back with no gap or repeat.
        let bob = log
            .query(AuditQuery {
                identity: Some("bob".into()),
                ..all(100)
            })
            .await
            .expect("query");
        assert_eq!(
            bob.entries.iter().map(|e| e.time_ms).collect::<Vec<_>>(),
            [1001, 1003]
        );
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let p = log
                .query(AuditQuery { cursor, ..all(2) })
                .await
                .expect("page");
            let mut t: Vec<u64> = p.entries.iter().map(|e| e.time_ms).collect();
            t.extend(seen);
            seen = t;
            match p.next_cursor {
                Some(c) => cursor = Some(c.parse().expect("cursor")),
                None => break,
            }
        }
        assert_eq!(seen, [1000, 1001, 1002, 1003, 1004]);
        stop.cancel();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_old_jsonl_file_is_imported_once_and_kept_as_an_archive() {
        let dir = std::env::temp_dir().join(format!(
            "nexus-audit-import-{}-{}",
            std::process::id(),
            crate::observe::now_ms()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        // An older run, without history, wrote three entries (and one torn line).
        let file = FileLog::new(&dir);
        for i in 0..3 {
            file.append_blocking(&entry(i, "alice", "verified"))
                .expect("append");
        }
        let text = std::fs::read_to_string(dir.join(FILE_NAME)).expect("read");
        std::fs::write(dir.join(FILE_NAME), format!("{text}{{\"torn")).expect("write");

        let db = dir.join("history.db");
        let stop = tokio_util::sync::CancellationToken::new();
        let log = AuditLog::open(&dir, Some(history(&db, &stop)));
        assert!(!dir.join(FILE_NAME).exists(), "the file is moved aside");
        assert!(dir.join("audit.jsonl.imported").exists(), "and kept");
        log.append(entry(10, "bob", "refused"))
            .await
            .expect("append");
        let got = log.query(all(100)).await.expect("query");
        assert_eq!(
            got.entries.iter().map(|e| e.time_ms).collect::<Vec<_>>(),
            [0, 1, 2, 10]
        );

        // The same file showing up again (a restored backup) adds nothing twice, and its
        // archive does not overwrite the first one.
        std::fs::copy(dir.join("audit.jsonl.imported"), dir.join(FILE_NAME)).expect("copy");
        let log = AuditLog::open(&dir, Some(log_history(&log)));
        assert!(dir.join("audit.jsonl.imported.1").exists());
        assert_eq!(log.query(all(100)).await.expect("query").entries.len(), 4);
        stop.cancel();
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn log_history(log: &AuditLog) -> History {
        match &log.backend {
            Backend::History(h) => h.clone(),
            Backend::File(_) => panic!("expected the history backend"),
        }
    }
}

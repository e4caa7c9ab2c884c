//! The control audit log: every link-control attempt (accepted, refused or failed) and
//! every login, one JSON object per line, appended to `<state_dir>/audit.jsonl` and
//! synced to disk before the caller answers. The file is only ever appended to; it is
//! read back for `GET /api/audit`. Entries name the identity, never a secret.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The file name under `state_dir`.
pub const FILE_NAME: &str = "audit.jsonl";
/// Longest text kept in a field (request text is clipped, so a flood cannot bloat it).
const MAX_FIELD: usize = 64;

/// One audited attempt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
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

/// The append-only log. Cheap to clone; clones share the file.
#[derive(Clone)]
pub struct AuditLog {
    path: PathBuf,
    file: Arc<Mutex<Option<File>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

impl AuditLog {
    /// The log in `state_dir` (created on first write).
    pub fn new(state_dir: &Path) -> AuditLog {
        AuditLog {
            path: state_dir.join(FILE_NAME),
            file: Arc::new(Mutex::new(None)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry and syncs it to disk (blocking; see [`AuditLog::append`]).
    pub fn append_blocking(&self, entry: &AuditEntry) -> std::io::Result<()> {
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

    /// Appends one entry off the async threads; the entry is on disk when this returns Ok.
    pub async fn append(&self, entry: AuditEntry) -> std::io::Result<()> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.append_blocking(&entry))
            .await
            .map_err(|e| std::io::Error::other(format!("audit writer stopped: {e}")))?
    }

    /// Entries matching `q`, oldest first, at most `q.limit` (the newest). Unreadable
    /// lines are skipped. A missing file is an empty log.
    pub fn query_blocking(&self, q: &AuditQuery) -> std::io::Result<Vec<AuditEntry>> {
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

    /// [`AuditLog::query_blocking`] off the async threads.
    pub async fn query(&self, q: AuditQuery) -> std::io::Result<Vec<AuditEntry>> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.query_blocking(&q))
            .await
            .map_err(|e| std::io::Error::other(format!("audit reader stopped: {e}")))?
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
        let log = AuditLog::new(&dir);
        for i in 0..5 {
            let who = if i % 2 == 0 { "alice" } else { "bob" };
            log.append_blocking(&entry(i, who, "verified"))
                .expect("append");
        }
        log.append_blocking(&entry(9, "bob", "refused"))
            .expect("append");
        let again = AuditLog::new(&dir);
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

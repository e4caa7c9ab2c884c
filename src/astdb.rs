//! AllStarLink's node database (`astdb.txt`: `node|callsign|description|location` per
//! line): callsign, description and location for each link.
//!
//! A missing or unreadable file means no names and one log line, never an error. The
//! file is watched (its directory, since the updater replaces it by rename) and reloaded
//! when it changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

/// One node's entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AstDbEntry {
    pub callsign: String,
    pub description: String,
    pub location: String,
}

/// The parsed database.
#[derive(Debug, Clone, Default)]
pub struct AstDb {
    entries: HashMap<String, AstDbEntry>,
}

impl AstDb {
    /// Parses the file's text; malformed lines are skipped.
    pub fn parse(text: &str) -> AstDb {
        let mut entries = HashMap::new();
        for line in text.lines() {
            let mut parts = line.trim_end_matches('\r').splitn(4, '|');
            let Some(node) = parts.next().map(str::trim).filter(|n| !n.is_empty()) else {
                continue;
            };
            let mut next = || parts.next().unwrap_or("").trim().to_owned();
            let entry = AstDbEntry {
                callsign: next(),
                description: next(),
                location: next(),
            };
            entries.insert(node.to_owned(), entry);
        }
        AstDb { entries }
    }

    /// Reads the file; `None` (with the reason) when it cannot be read.
    pub fn load(path: &Path) -> Result<AstDb, std::io::Error> {
        let bytes = std::fs::read(path)?;
        Ok(AstDb::parse(&String::from_utf8_lossy(&bytes)))
    }

    /// The entry of a node, if known.
    pub fn get(&self, node: &str) -> Option<&AstDbEntry> {
        self.entries.get(node)
    }

    /// Number of nodes known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Loads the database now (logging once if it is missing) and reloads it on change,
/// calling `apply` with each new version until `shutdown`.
pub fn watch(
    path: PathBuf,
    apply: impl Fn(Arc<AstDb>) + Send + Sync + 'static,
    shutdown: CancellationToken,
) {
    let load = {
        let path = path.clone();
        move || match AstDb::load(&path) {
            Ok(db) => {
                tracing::info!("[ASTDB] loaded {} nodes from {}", db.len(), path.display());
                Some(Arc::new(db))
            }
            Err(e) => {
                tracing::info!(
                    "[ASTDB] {} not readable ({e}); links are shown without callsigns",
                    path.display()
                );
                None
            }
        }
    };
    if let Some(db) = load() {
        apply(db);
    }
    let Some(dir) = path.parent().map(Path::to_path_buf).filter(|d| d.is_dir()) else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(8);
    let file_name = path.file_name().map(|f| f.to_owned());
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if ev
                .paths
                .iter()
                .any(|p| p.file_name() == file_name.as_deref())
            {
                let _ = tx.try_send(());
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("[ASTDB] cannot watch {}: {e}", dir.display());
            return;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!("[ASTDB] cannot watch {}: {e}", dir.display());
        return;
    }
    tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = rx.recv() => {
                    if got.is_none() { return; }
                    // Debounce: the updater writes then renames.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    while rx.try_recv().is_ok() {}
                    if let Some(db) = load() { apply(db); }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_skips_junk() {
        let db = AstDb::parse(
            "2000|W1AW|ARRL HQ Hub|Newington, CT\n\n|nobody|x|y\n2001|N0CALL\n3123456|K1ABC-L|EchoLink|\r\n",
        );
        assert_eq!(db.len(), 3);
        assert_eq!(
            db.get("2000").map(|e| e.location.as_str()),
            Some("Newington, CT")
        );
        assert_eq!(db.get("2001").map(|e| e.callsign.as_str()), Some("N0CALL"));
        assert_eq!(db.get("2001").map(|e| e.description.as_str()), Some(""));
        assert_eq!(
            db.get("3123456").map(|e| e.description.as_str()),
            Some("EchoLink")
        );
    }

    #[test]
    fn missing_file_is_an_error_not_a_panic() {
        assert!(AstDb::load(Path::new("/nonexistent/astdb.txt")).is_err());
    }
}

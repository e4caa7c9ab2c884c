//! AllStarLink's node database (`astdb.txt`: `node|callsign|description|location` per
//! line): callsign, description and location for each link.
//!
//! A missing or unreadable file means no names and one log line, never an error. The
//! file is watched (its directory, since the updater replaces it by rename; `.` for a bare
//! file name, the same rule as the script watcher: [`crate::fswatch`]) and reloaded once
//! per burst of changes ([`DEBOUNCE`] quiet). Reading it is not a change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

/// Quiet time after the last change before reloading (the updater writes, then renames).
pub const DEBOUNCE: Duration = Duration::from_millis(500);
/// A burst of changes never delays a reload longer than this.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(5);
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
    let dir = crate::fswatch::dir_of(&path);
    if !dir.is_dir() {
        tracing::info!(
            "[ASTDB] {} does not exist: {} is not watched",
            dir.display(),
            path.display()
        );
        return;
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<()>(8);
    let file_name = path.file_name().map(|f| f.to_owned());
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if crate::fswatch::changes_content(&ev.kind)
                && ev
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
        crate::fswatch::debounce(rx, DEBOUNCE, DEBOUNCE_MAX, shutdown, || {
            if let Some(db) = load() {
                apply(db);
            }
        })
        .await;
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

    /// A real watcher: one reload per change; reading the file (as every reload does) is
    /// not a change, so nothing reloads while the file is left alone.
    #[tokio::test]
    async fn one_reload_per_change_and_none_from_reading_it() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = std::env::temp_dir().join(format!("nexus-astdb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("astdb.txt");
        std::fs::write(&path, "2000|W1AW|Hub|CT\n").expect("write");
        let loads = Arc::new(AtomicUsize::new(0));
        let (l, shutdown) = (loads.clone(), CancellationToken::new());
        watch(
            path.clone(),
            move |_| {
                l.fetch_add(1, Ordering::SeqCst);
            },
            shutdown.clone(),
        );
        assert_eq!(loads.load(Ordering::SeqCst), 1, "loaded at start");
        std::fs::write(dir.join(".astdb.tmp"), "2000|W1AW|Hub|CT\n2001|N0CALL||\n").expect("write");
        std::fs::rename(dir.join(".astdb.tmp"), &path).expect("rename");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while loads.load(Ordering::SeqCst) < 2 {
            assert!(tokio::time::Instant::now() < deadline, "never reloaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Reading is not a change. Proving an absence takes a quiet spell: three
        // debounce periods after the reads (before the fix: a reload every 500 ms).
        for _ in 0..5 {
            let _ = std::fs::read(&path);
        }
        tokio::time::sleep(DEBOUNCE * 3).await;
        assert_eq!(loads.load(Ordering::SeqCst), 2, "reloads while idle");
        shutdown.cancel();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_file_is_an_error_not_a_panic() {
        assert!(AstDb::load(Path::new("/nonexistent/astdb.txt")).is_err());
    }
}

//! Hot reload: which files are scripts, and a watcher on the script directories.
//!
//! The directories are watched, not the files: editors save by writing a temporary file and
//! renaming it over the old one, which a file watch would lose. Any event naming a script
//! file starts a short quiet period (debounce); when it ends the Lua thread rescans the
//! directories, loads what changed (by content hash) and unloads what disappeared.
//! Access events (a file opened or read, as every rescan does) are ignored
//! ([`crate::fswatch::changes_content`]): otherwise each rescan would trigger the next.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::queue::{Command, Inbox};

/// Quiet time after the last file event before rescanning.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// A burst of events never delays a rescan longer than this.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(2);
/// Larger files are refused (a script is a few kilobytes).
pub const MAX_SCRIPT_BYTES: u64 = 1 << 20;

/// Whether a file name is a script: `*.lua`, not hidden, not an editor's lock, backup or
/// swap file (`.#x.lua`, `x.lua~`, `.x.lua.swp`, `#x.lua#`).
pub fn is_script_name(name: &str) -> bool {
    name.len() > 4
        && name.ends_with(".lua")
        && !name.starts_with('.')
        && !name.starts_with('#')
        && !name.contains('~')
        && !name.contains(['/', '\\'])
}

fn is_script_path(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(is_script_name)
}

/// The script files in `dirs`, sorted by path; unreadable directories are skipped.
pub fn scan(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if is_script_path(&path) && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                out.push(path);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Reads a script, refusing oversized files.
pub fn read_script(path: &Path) -> Result<Vec<u8>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > MAX_SCRIPT_BYTES {
        return Err(format!(
            "{} is larger than {MAX_SCRIPT_BYTES} bytes",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A fingerprint of a script's content (stable within one process).
pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Watches `dirs` and asks the Lua thread to rescan after each burst of script-file events.
/// Missing directories are reported and skipped (SIGHUP rescans them).
pub(crate) fn watch(
    dirs: &[PathBuf],
    inbox: Arc<Inbox>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<()>(16);
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev)
                if crate::fswatch::changes_content(&ev.kind)
                    && ev.paths.iter().any(|p| is_script_path(p)) =>
            {
                // Full means a rescan is already coming.
                let _ = tx.try_send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("[LUA] script directory watch error: {e}"),
        })?;
    let mut watched = 0;
    for dir in dirs {
        let dir = crate::fswatch::dir(dir);
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => watched += 1,
            Err(e) => tracing::warn!(
                "[LUA] cannot watch script directory {}: {e} (create it, then send SIGHUP to load its scripts)",
                dir.display()
            ),
        }
    }
    if watched > 0 {
        // The task owns the watcher: dropping it stops watching.
        tokio::spawn(async move {
            let _watcher = watcher;
            crate::fswatch::debounce(rx, DEBOUNCE, DEBOUNCE_MAX, shutdown, || {
                inbox.push_command(Command::Rescan { force: false })
            })
            .await;
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn editor_files_are_not_scripts() {
        for ok in ["alerts.lua", "my-script.lua", "a.b.lua"] {
            assert!(is_script_name(ok), "{ok}");
        }
        for no in [
            ".lua",
            ".#alerts.lua",
            "alerts.lua~",
            ".alerts.lua.swp",
            "#alerts.lua#",
            "alerts.lua.tmp",
            "4913",
            "x.txt",
            ".hidden.lua",
        ] {
            assert!(!is_script_name(no), "{no}");
        }
    }

    #[test]
    fn hash_tells_contents_apart() {
        assert_eq!(content_hash(b"a"), content_hash(b"a"));
        assert_ne!(content_hash(b"a"), content_hash(b"b"));
    }
}

//! The links this daemon made permanent (`ilink 12/13/18`), kept in
//! `<state_dir>/permanent_links.json` so that a disconnect after a restart still sends
//! `ilink 11`: app_rpt ignores `ilink 1` on a permanent link. The file is rewritten whole
//! (temporary file, then rename) on every change; changes are rare (one per permanent
//! connect or disconnect). A link made permanent by another tool is not in it; the
//! disconnect falls back to `ilink 11` when `ilink 1` leaves the link up (see
//! [`super::LinkControl`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The file's name under the state directory.
pub const FILE_NAME: &str = "permanent_links.json";

/// One `(node, target)` pair, as the file stores it.
#[derive(Debug, Serialize, Deserialize)]
struct Pair {
    node: String,
    target: String,
}

/// The set of permanent links, mirrored to the file.
pub struct PermanentLinks {
    path: PathBuf,
    set: Mutex<BTreeSet<(String, String)>>,
}

impl PermanentLinks {
    /// Reads the file under `state_dir`; a missing file is an empty set, an unreadable
    /// one is logged and treated as empty (a disconnect then relies on the fallback).
    pub fn load(state_dir: &Path) -> PermanentLinks {
        let path = state_dir.join(FILE_NAME);
        let set = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<Pair>>(&bytes) {
                Ok(pairs) => pairs.into_iter().map(|p| (p.node, p.target)).collect(),
                Err(e) => {
                    tracing::warn!(
                        "[CONTROL] {} is not a list of links ({e}); starting with none",
                        path.display()
                    );
                    BTreeSet::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => {
                tracing::warn!(
                    "[CONTROL] cannot read {}: {e}; starting with no permanent links",
                    path.display()
                );
                BTreeSet::new()
            }
        };
        PermanentLinks {
            path,
            set: Mutex::new(set),
        }
    }

    pub fn contains(&self, node: &str, target: &str) -> bool {
        self.lock().contains(&(node.to_owned(), target.to_owned()))
    }

    /// Marks `target` on `node` permanent or not.
    pub fn set(&self, node: &str, target: &str, permanent: bool) {
        let mut set = self.lock();
        let key = (node.to_owned(), target.to_owned());
        let changed = if permanent {
            set.insert(key)
        } else {
            set.remove(&key)
        };
        if changed {
            self.save(&set);
        }
    }

    /// Forgets every link of `node` (after a verified disconnect-all).
    pub fn clear_node(&self, node: &str) {
        let mut set = self.lock();
        let before = set.len();
        set.retain(|(n, _)| n != node);
        if set.len() != before {
            self.save(&set);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<(String, String)>> {
        self.set.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the set; a failure is logged (the in-memory set stays right until a restart).
    fn save(&self, set: &BTreeSet<(String, String)>) {
        let pairs: Vec<Pair> = set
            .iter()
            .map(|(node, target)| Pair {
                node: node.clone(),
                target: target.clone(),
            })
            .collect();
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = self.path.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&pairs)?)?;
            std::fs::rename(&tmp, &self.path)
        };
        if let Err(e) = write() {
            tracing::warn!(
                "[CONTROL] cannot write {}: {e}; after a restart a disconnect of these links \
                 relies on the ilink 11 fallback",
                self.path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_survives_a_new_handle() {
        let dir = std::env::temp_dir().join(format!(
            "nexus-perm-{}-{}",
            std::process::id(),
            crate::observe::now_ms()
        ));
        let p = PermanentLinks::load(&dir);
        assert!(!p.contains("1999", "2003"), "no file: empty");
        p.set("1999", "2003", true);
        p.set("1999", "2004", true);
        p.set("2000", "2005", true);
        p.set("1999", "2004", false);
        let again = PermanentLinks::load(&dir);
        assert!(again.contains("1999", "2003"));
        assert!(!again.contains("1999", "2004"));
        again.clear_node("1999");
        let third = PermanentLinks::load(&dir);
        assert!(!third.contains("1999", "2003"));
        assert!(third.contains("2000", "2005"));
        std::fs::write(dir.join(FILE_NAME), b"not json").expect("write");
        assert!(!PermanentLinks::load(&dir).contains("2000", "2005"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! What the API shows about each script (`GET /api/scripts`). The Lua host thread writes
//! it; readers clone it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;

/// A script's condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptState {
    /// Loaded and receiving changes.
    Running,
    /// The last load failed; the previous version (if any) keeps running.
    Error,
    /// Disabled after failing again and again, or by the watchdog (an alert was raised;
    /// `disabled_reason` says why). Saving the file or SIGHUP gives it another chance.
    Disabled,
}

/// One script, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScriptStatus {
    /// File name relative to its script directory (`alerts.lua`).
    pub name: String,
    pub path: String,
    pub status: ScriptState,
    /// When the running version was loaded (ms since the Unix epoch).
    pub loaded_at_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<u64>,
    pub errors: u64,
    pub timeouts: u64,
    pub reloads: u64,
    /// Change kinds the script listens to (`nexus.on`).
    pub hooks: Vec<String>,
    /// Why the script is disabled (only while `status` is `disabled`).
    pub disabled_reason: Option<String>,
}

/// Shared table of script statuses. Cheap to clone.
#[derive(Clone, Default)]
pub struct ScriptRegistry {
    inner: Arc<RwLock<BTreeMap<String, ScriptStatus>>>,
    /// Set while the Lua thread is stuck (see `script::watchdog`).
    problem: Arc<RwLock<Option<String>>>,
}

impl ScriptRegistry {
    /// Every script, by path.
    pub fn list(&self) -> Vec<ScriptStatus> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// One script by name or path.
    pub fn get(&self, name: &str) -> Option<ScriptStatus> {
        let all = self.inner.read().unwrap_or_else(|p| p.into_inner());
        all.get(name)
            .cloned()
            .or_else(|| all.values().find(|s| s.name == name).cloned())
    }

    /// Inserts or replaces a script's status (keyed by path).
    pub fn set(&self, status: ScriptStatus) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(status.path.clone(), status);
    }

    /// Updates a script's status in place.
    pub fn update(&self, path: &str, f: impl FnOnce(&mut ScriptStatus)) {
        if let Some(s) = self
            .inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(path)
        {
            f(s);
        }
    }

    /// `Some(plain words)` while the script host is unhealthy (the Lua thread is stuck in
    /// a callback far past its budget): `/api/health` then says `degraded`.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records (or clears) the script host's problem.
    pub fn set_problem(&self, problem: Option<String>) {
        *self.problem.write().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// Forgets a script (file deleted).
    pub fn remove(&self, path: &str) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
    }
}

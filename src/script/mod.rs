//! Lua automations: operators drop `.lua` files in the script directories and the daemon
//! runs them against the live change stream (`docs/lua-api.md`).
//!
//! - [`host`]: the one OS thread that owns every script, fed by a bounded inbox
//!   ([`queue`]), so a script can never stall the AMI read loop or HTTP;
//! - [`sandbox`]: each script's own Lua state, safe libraries, memory limit, and the time
//!   budget that holds inside `pcall` and coroutines;
//! - [`api`]: the `nexus` table; [`store`]: `nexus.store`;
//! - [`reload`]: directory watching, debounce, content hashes;
//! - [`status`]: what `GET /api/scripts` shows;
//! - [`watchdog`]: notices a Lua thread stuck in one callback far past its budget.
//! - [`builtin`]: the bundled plugins compiled into the binary (`plugins_builtin`).
//!
//! [`spawn`] starts it all and returns a [`ScriptHost`] handle.

mod api;
pub mod builtin;
mod control_api;
mod event;
pub mod history_api;
mod host;
mod instance;
mod queue;
pub mod reload;
pub mod sandbox;
pub mod status;
pub mod store;
pub mod watchdog;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;

use crate::alerts::AlertHub;
use crate::config::{Config, LuaConfig};
use crate::control::Control;
use crate::metrics::Metrics;
use crate::state::{Published, StateStore};
use host::{Host, HostShared};
use queue::{Command, Inbox};

pub use status::{ScriptRegistry, ScriptState, ScriptStatus};

/// What scripts reach of the daemon: exactly the handles the Lua API uses (the read side
/// of the model, commands, alerts, the status table, metrics, and the `lua`, script
/// directory and plugin settings). Cheap to clone.
#[derive(Clone)]
pub struct ScriptEnv {
    pub lua: LuaConfig,
    pub script_dirs: Vec<PathBuf>,
    /// Whether the bundled plugins compiled into the binary run (`plugins_builtin`).
    pub plugins_builtin: bool,
    /// `plugins:` settings, handed to each script as `nexus.config` (by file stem).
    pub plugins: Arc<BTreeMap<String, serde_json::Value>>,
    /// Read side of the model and the change stream.
    pub state: StateStore,
    /// Poll now, polling intervals, VoterStatus.
    pub control: Control,
    pub alerts: AlertHub,
    /// What `GET /api/scripts` shows (and the health problem).
    pub scripts: ScriptRegistry,
    pub metrics: Metrics,
    /// The history store (`nexus.history`, durable `nexus.store`), when enabled.
    pub history: Option<crate::history::History>,
    /// Link control for `nexus.connect` & co. (absent in rigs built without it).
    pub linkctl: Option<crate::linkctl::LinkControl>,
}

impl ScriptEnv {
    /// The environment from the configuration and the daemon's handles.
    pub fn new(
        config: &Config,
        state: StateStore,
        control: Control,
        alerts: AlertHub,
        scripts: ScriptRegistry,
        metrics: Metrics,
    ) -> ScriptEnv {
        ScriptEnv {
            lua: config.lua.clone(),
            script_dirs: config.script_dirs.clone(),
            plugins_builtin: config.plugins_builtin,
            plugins: Arc::new(config.plugins.clone()),
            state,
            control,
            alerts,
            scripts,
            metrics,
            history: None,
            linkctl: None,
        }
    }

    /// The same environment with link control.
    pub fn with_linkctl(mut self, linkctl: crate::linkctl::LinkControl) -> ScriptEnv {
        self.linkctl = Some(linkctl);
        self
    }

    /// The same environment with the history store.
    pub fn with_history(mut self, history: Option<crate::history::History>) -> ScriptEnv {
        self.history = history;
        self
    }
}

/// Why [`ScriptHost::call`] failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScriptCallError {
    #[error("{0}")]
    Script(String),
    #[error("the script host is not running")]
    Stopped,
}

/// A handle on the Lua thread. Cheap to clone.
#[derive(Clone)]
pub struct ScriptHost {
    inbox: Arc<Inbox>,
    shared: Arc<HostShared>,
    metrics: Metrics,
}

/// Starts the Lua thread, the change forwarder and the directory watcher.
///
/// Must be called from within a tokio runtime (the forwarder and `nexus.voter_status`
/// run on it).
pub fn spawn(app: ScriptEnv, shutdown: CancellationToken) -> anyhow::Result<ScriptHost> {
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| anyhow::anyhow!("the script host must be started inside the tokio runtime"))?;
    let inbox = Inbox::new(app.lua.queue);
    let watch = watchdog::Watch::new(app.scripts.clone(), app.metrics.clone());
    watchdog::spawn(watch.clone())?;
    {
        let (watch, shutdown) = (watch.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            watch.stop();
        });
    }
    let shared = HostShared::new(app.lua.queue, watch);
    let handle = ScriptHost {
        inbox: inbox.clone(),
        shared: shared.clone(),
        metrics: app.metrics.clone(),
    };
    let changes = app.state.subscribe();
    let dirs = app.script_dirs.clone();
    let thread_inbox = inbox.clone();
    std::thread::Builder::new()
        .name("nexus-lua".into())
        .spawn(move || run_thread(app, rt, thread_inbox, shared))?;
    tokio::spawn(forward(changes, handle.clone(), shutdown.clone()));
    if let Err(e) = reload::watch(&dirs, inbox, shutdown) {
        // Scripts still run; only saving a file no longer reloads it (SIGHUP does).
        tracing::warn!(
            "[LUA] cannot watch the script directories ({e}): hot reload is off, use SIGHUP"
        );
    }
    tracing::info!(
        "[LUA] script host started (directories: {})",
        host::describe_dirs(&dirs)
    );
    Ok(handle)
}

/// The Lua thread's body. A panic in the host itself (a bug: scripts' panics are
/// contained per call) restarts it with every script reloaded, instead of ending automation.
fn run_thread(
    app: ScriptEnv,
    rt: tokio::runtime::Handle,
    inbox: Arc<Inbox>,
    shared: Arc<HostShared>,
) {
    loop {
        let host = Host::new(app.clone(), rt.clone(), inbox.clone(), shared.clone());
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| host.run())) {
            Ok(()) => return,
            Err(_) => {
                tracing::error!(
                    "[LUA] the script host crashed (a bug); restarting it and reloading every script"
                );
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Forwards the change stream into the inbox without ever waiting on Lua.
async fn forward(
    mut rx: broadcast::Receiver<Arc<Published>>,
    host: ScriptHost,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            got = rx.recv() => match got {
                Ok(p) => {
                    host.dispatch(p);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    host.metrics.script_queue_dropped.with_label_values(&["lua_subscription"]).inc_by(n);
                    tracing::warn!("[LUA] scripts missed {n} changes (subscription lagged)");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }
    host.inbox.push_command(Command::Shutdown);
}

impl ScriptHost {
    /// Reloads every script from disk, changed or not, and re-enables disabled ones
    /// (SIGHUP). A script whose new load fails keeps its previous version.
    pub fn reload_all(&self) {
        self.inbox.push_command(Command::Rescan { force: true });
    }

    /// Loads new and changed scripts and unloads deleted ones (what the watcher does).
    pub fn rescan(&self) {
        self.inbox.push_command(Command::Rescan { force: false });
    }

    /// Offers a change to the scripts. `false` (and counted in
    /// `nexus_script_queue_dropped_total{queue="lua"}`) when the queue is full.
    pub fn dispatch(&self, p: Arc<Published>) -> bool {
        let ok = self.inbox.try_push_change(p);
        if !ok {
            self.metrics
                .script_queue_dropped
                .with_label_values(&["lua"])
                .inc();
            if self.shared.should_warn_drop() {
                tracing::warn!(
                    "[LUA] the script queue is full (lua.queue = {}): changes are being dropped; a script is too slow",
                    self.shared.queue_cap
                );
            }
        }
        ok
    }

    /// Waits until every change queued so far has been handled by the scripts.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.inbox.push_barrier(tx);
        let _ = rx.await;
    }

    /// How many times the Lua thread has rescanned the script directories (loads at start,
    /// watcher bursts, SIGHUP, [`ScriptHost::rescan`]).
    pub fn rescans(&self) -> u64 {
        self.shared.rescans.load(Ordering::Acquire)
    }

    /// `seq` of the last change the scripts have handled.
    pub fn delivered_seq(&self) -> u64 {
        self.shared.delivered.load(Ordering::Acquire)
    }

    /// Changes waiting for the Lua thread.
    pub fn queued(&self) -> usize {
        self.inbox.len()
    }

    /// The content hash ([`reload::content_hash`]) of the running version of a script
    /// (by file name or path); `None` when it is not running.
    pub fn version(&self, script: &str) -> Option<u64> {
        let v = self
            .shared
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        v.get(script).copied().or_else(|| {
            v.iter()
                .find(|(k, _)| {
                    std::path::Path::new(k)
                        .file_name()
                        .is_some_and(|n| n == script)
                })
                .map(|(_, h)| *h)
        })
    }

    /// Waits up to `timeout` until the running version of `script` has this content.
    pub async fn wait_version(&self, script: &str, content: &[u8], timeout: Duration) -> bool {
        let want = reload::content_hash(content);
        self.wait_until(timeout, |h| h.version(script) == Some(want))
            .await
    }

    /// Waits up to `timeout` for a condition re-checked after every load, unload or
    /// script failure. Returns whether it held.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&ScriptHost) -> bool,
    ) -> bool {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if cond(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return cond(self);
            }
        }
    }

    /// Calls a script's global function with JSON arguments (under the same budget as any
    /// callback) and returns its first result as JSON.
    pub async fn call(
        &self,
        script: &str,
        function: &str,
        args: Vec<serde_json::Value>,
    ) -> Result<serde_json::Value, ScriptCallError> {
        let (reply, rx) = oneshot::channel();
        let (script, function) = (script.to_owned(), function.to_owned());
        self.inbox.push_command(Command::Call {
            script,
            function,
            args,
            reply,
        });
        match rx.await {
            Ok(r) => r.map_err(ScriptCallError::Script),
            Err(_) => Err(ScriptCallError::Stopped),
        }
    }
}

//! The Lua thread: one OS thread that owns every script state, takes changes and commands
//! from the inbox, runs timers, and keeps the status registry and metrics up to date.
//!
//! Nothing here blocks on the daemon: the engine offers changes with `try_push`, and the
//! thread answers back only through `Control`, `AlertHub` and the registry.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::ScriptEnv;
use super::instance::{CallError, Failure, LoadParams, Script};
use super::queue::{CallResult, Command, Inbox, Item};
use super::reload;
use super::status::{ScriptState, ScriptStatus};
use super::store::SharedStore;
use super::watchdog::Watch;
use crate::alerts::{AlertRequest, Severity};
use crate::metrics::Metrics;
use crate::observe::InternalEvent;
use crate::state::Published;
use crate::state::change::now_ms;

/// A script's error log lines are written at most this often (the rest are counted).
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the thread shares with [`super::ScriptHost`] handles.
pub struct HostShared {
    /// Content hash of each running script, by registry key (path).
    pub versions: Mutex<HashMap<String, u64>>,
    /// `seq` of the last change handed to the scripts.
    pub delivered: AtomicU64,
    /// Bumped after every load, unload or failure (for waiters).
    pub changed: watch::Sender<u64>,
    /// `lua.queue`, for messages.
    pub queue_cap: usize,
    /// When a full queue was last reported (ms since the Unix epoch).
    drop_warned_ms: AtomicU64,
    /// Rescans of the script directories so far.
    pub rescans: AtomicU64,
    /// What the Lua thread runs now, for the watchdog.
    pub watch: Arc<Watch>,
}

impl HostShared {
    pub fn new(queue_cap: usize, watch: Arc<Watch>) -> Arc<HostShared> {
        Arc::new(HostShared {
            watch,
            versions: Mutex::new(HashMap::new()),
            delivered: AtomicU64::new(0),
            changed: watch::channel(0).0,
            queue_cap,
            drop_warned_ms: AtomicU64::new(0),
            rescans: AtomicU64::new(0),
        })
    }

    /// Whether dropped changes should be logged now (at most once per
    /// [`ERROR_LOG_INTERVAL`]; they are always counted).
    pub fn should_warn_drop(&self) -> bool {
        let now = now_ms();
        let last = self.drop_warned_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= ERROR_LOG_INTERVAL.as_millis() as u64
            && self
                .drop_warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn set_version(&self, key: &str, hash: Option<u64>) {
        let mut v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        match hash {
            Some(h) => v.insert(key.to_owned(), h),
            None => v.remove(key),
        };
    }
}

/// Rate limit for one script's error log lines.
#[derive(Default)]
struct LogGate {
    last: Option<Instant>,
    held: u64,
}

impl LogGate {
    /// `Some(held back since the last line)` when a line may be written now.
    fn pass(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < ERROR_LOG_INTERVAL) {
            self.held += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.held))
    }
}

/// One script file and what runs from it.
struct Slot {
    name: String,
    /// The running version (`None`: never loaded, or disabled).
    script: Option<Script>,
    /// Hash of the content last tried (loaded or failed): unchanged files are skipped.
    attempted: Option<u64>,
    loads: u64,
    gate: LogGate,
}

/// Parts of the thread that failure handling needs next to a borrowed slot.
struct Env {
    app: ScriptEnv,
    shared: Arc<HostShared>,
}

/// The state of the Lua thread.
pub struct Host {
    env: Env,
    rt: tokio::runtime::Handle,
    inbox: Arc<Inbox>,
    slots: BTreeMap<String, Slot>,
    stores: HashMap<String, SharedStore>,
    next_generation: u64,
}

impl Host {
    pub fn new(
        app: ScriptEnv,
        rt: tokio::runtime::Handle,
        inbox: Arc<Inbox>,
        shared: Arc<HostShared>,
    ) -> Host {
        Host {
            env: Env { app, shared },
            rt,
            inbox,
            slots: BTreeMap::new(),
            stores: HashMap::new(),
            next_generation: 0,
        }
    }

    /// Loads every script, then serves the inbox and timers until shut down.
    pub fn run(mut self) {
        let _rt = self.rt.enter();
        self.rescan(true);
        let mut batch = VecDeque::new();
        loop {
            let mut due = self.next_due();
            self.inbox.pop_batch(due, &mut batch);
            while let Some(item) = batch.pop_front() {
                match item {
                    Item::Change(p) => self.dispatch(&p),
                    Item::Barrier(tx) => {
                        let _ = tx.send(());
                    }
                    Item::Command(Command::Shutdown) => {
                        tracing::info!("[LUA] script host stopped");
                        return;
                    }
                    Item::Command(c) => self.command(c),
                }
                // A steady stream of changes must not starve the timers.
                if due.is_some_and(|d| Instant::now() >= d) {
                    self.run_timers();
                    due = self.next_due();
                }
            }
            if due.is_some_and(|d| Instant::now() >= d) {
                self.run_timers();
            }
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Rescan { force } => self.rescan(force),
            Command::VoterReply {
                script,
                generation,
                call,
                result,
            } => {
                let Some(slot) = self.slots.get_mut(&script) else {
                    return;
                };
                let Some(s) = slot.script.as_mut().filter(|s| s.generation == generation) else {
                    return;
                };
                if let Some(f) = s.voter_reply(call, result) {
                    self.env.failed(&script, slot, vec![f]);
                }
            }
            Command::Call {
                script,
                function,
                args,
                reply,
            } => {
                let _ = reply.send(self.call(&script, &function, args));
            }
            Command::Shutdown => {}
        }
    }

    fn call(&mut self, script: &str, function: &str, args: Vec<serde_json::Value>) -> CallResult {
        let key = self
            .find(script)
            .ok_or_else(|| format!("no script {script:?}"))?;
        let slot = self
            .slots
            .get_mut(&key)
            .ok_or_else(|| format!("no script {script:?}"))?;
        let s = slot
            .script
            .as_mut()
            .ok_or_else(|| format!("script {script:?} is not running"))?;
        match s.call_global(function, args) {
            Ok(v) => Ok(v),
            Err(CallError::NoFunction(message)) => Err(message),
            Err(CallError::Failed(f)) => {
                let message = f.message.clone();
                self.env.failed(&key, slot, vec![f]);
                Err(message)
            }
        }
    }

    fn find(&self, script: &str) -> Option<String> {
        if self.slots.contains_key(script) {
            return Some(script.to_owned());
        }
        self.slots
            .iter()
            .find(|(_, s)| s.name == script)
            .map(|(k, _)| k.clone())
    }

    fn dispatch(&mut self, p: &Published) {
        for (key, slot) in self.slots.iter_mut() {
            let Some(s) = slot.script.as_mut() else {
                continue;
            };
            if !s.wants(p.event.kind) {
                continue;
            }
            let failures = s.dispatch(p);
            if !failures.is_empty() {
                self.env.failed(key, slot, failures);
            }
        }
        self.env
            .shared
            .delivered
            .store(p.event.seq, Ordering::Release);
    }

    fn next_due(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter_map(|s| s.script.as_ref()?.next_due())
            .min()
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        for (key, slot) in self.slots.iter_mut() {
            let Some(s) = slot.script.as_mut() else {
                continue;
            };
            if s.next_due().is_none_or(|d| d > now) {
                continue;
            }
            let failures = s.run_timers(now);
            if !failures.is_empty() {
                self.env.failed(key, slot, failures);
            }
        }
    }

    /// Loads new and changed scripts (all of them with `force`), unloads deleted ones.
    fn rescan(&mut self, force: bool) {
        self.env.shared.rescans.fetch_add(1, Ordering::AcqRel);
        let dirs = self.env.app.script_dirs.clone();
        let found = reload::scan(&dirs);
        let builtins = super::builtin::active(self.env.app.plugins_builtin, &found);
        let mut present: HashSet<String> = found.iter().map(|p| p.display().to_string()).collect();
        present.extend(builtins.iter().map(|(k, _)| k.clone()));
        let gone: Vec<String> = self
            .slots
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.unload(&key);
        }
        for path in &found {
            self.consider(path, force);
        }
        for (key, _) in &builtins {
            self.consider(Path::new(key), force);
        }
        self.env.update_loaded(&self.slots);
        self.env.shared.bump();
    }

    fn unload(&mut self, key: &str) {
        if let Some(slot) = self.slots.remove(key) {
            tracing::info!("[LUA] {} removed: unloaded", slot.name);
        }
        self.env.app.scripts.remove(key);
        self.env.shared.set_version(key, None);
    }

    /// Loads one file if it is new or changed (or `force`).
    fn consider(&mut self, path: &Path, force: bool) {
        let key = path.display().to_string();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| key.clone());
        if !self.slots.contains_key(&key) {
            self.env.app.scripts.set(new_status(&name, &key));
            let slot = Slot {
                name: name.clone(),
                script: None,
                attempted: None,
                loads: 0,
                gate: LogGate::default(),
            };
            self.slots.insert(key.clone(), slot);
        }
        let read = match super::builtin::source(&key) {
            Some(embedded) => Ok(embedded.as_bytes().to_vec()),
            None => reload::read_script(path),
        };
        let source = match read {
            Ok(s) => s,
            Err(message) => {
                let f = Failure {
                    context: "load".into(),
                    message,
                    timeout: false,
                    disable: None,
                };
                return self.load_failed(&key, f);
            }
        };
        let hash = reload::content_hash(&source);
        let Some(slot) = self.slots.get_mut(&key) else {
            return;
        };
        if !force && slot.attempted == Some(hash) {
            return;
        }
        slot.attempted = Some(hash);
        self.load(&key, &name, &source, hash);
    }

    fn load(&mut self, key: &str, name: &str, source: &[u8], hash: u64) {
        self.next_generation += 1;
        let stem = name.strip_suffix(".lua").unwrap_or(name);
        let plugin = self
            .env
            .app
            .plugins
            .get(stem)
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let store = self
            .stores
            .entry(key.to_owned())
            .or_insert_with(|| super::history_api::load_store(&self.env.app, key))
            .clone();
        let params = LoadParams {
            name,
            key,
            source,
            hash,
            generation: self.next_generation,
            app: &self.env.app,
            rt: &self.rt,
            inbox: &self.inbox,
            store,
            plugin: &plugin,
            watch: &self.env.shared.watch,
        };
        match Script::load(params) {
            Ok(script) => self.loaded(key, script),
            Err(f) => self.load_failed(key, f),
        }
    }

    fn loaded(&mut self, key: &str, script: Script) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        let hooks = script.hook_names();
        let (name, hash) = (slot.name.clone(), script.hash);
        slot.loads += 1;
        let reloads = slot.loads - 1;
        tracing::info!(
            "[LUA] {name} loaded (listening to: {})",
            if hooks.is_empty() {
                "-".into()
            } else {
                hooks.join(", ")
            }
        );
        slot.script = Some(script);
        self.env
            .app
            .metrics
            .script_reloads
            .with_label_values(&[name.as_str(), "ok"])
            .inc();
        m_disabled(&self.env.app.metrics, &name, false);
        self.env.app.scripts.update(key, |s| {
            s.status = ScriptState::Running;
            s.disabled_reason = None;
            s.loaded_at_ms = Some(now_ms());
            s.reloads = reloads;
            s.hooks = hooks;
        });
        self.env.shared.set_version(key, Some(hash));
    }

    fn load_failed(&mut self, key: &str, f: Failure) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        let running = slot.script.is_some();
        let name = slot.name.clone();
        ScriptLoadFailed {
            script: &name,
            message: &f.message,
            keeps_running: running,
        }
        .emit(&self.env.app.metrics);
        self.env.app.scripts.update(key, |s| {
            s.status = ScriptState::Error;
            s.last_error = Some(f.message.clone());
            s.last_error_at_ms = Some(now_ms());
            s.errors += 1;
            s.timeouts += u64::from(f.timeout);
        });
    }
}

impl Env {
    /// Counts, records and logs (rate-limited) a script's runtime failures; disables the
    /// script once it has failed `lua.max_consecutive_errors` times in a row.
    fn failed(&self, key: &str, slot: &mut Slot, failures: Vec<Failure>) {
        ScriptFailed {
            script: &slot.name,
            failures: &failures,
            gate: &mut slot.gate,
        }
        .emit(&self.app.metrics);
        let Some(last) = failures.last() else { return };
        let timeouts = failures.iter().filter(|f| f.timeout).count() as u64;
        self.app.scripts.update(key, |s| {
            s.errors += failures.len() as u64;
            s.timeouts += timeouts;
            s.last_error = Some(format!("{}: {}", last.context, last.message));
            s.last_error_at_ms = Some(now_ms());
        });
        let max = self.app.lua.max_consecutive_errors.max(1);
        let streak = slot
            .script
            .as_ref()
            .map(|s| s.consecutive_errors)
            .unwrap_or(0);
        if let Some(reason) = failures.iter().find_map(|f| f.disable.clone()) {
            self.disable(key, slot, reason, &last.message);
        } else if streak >= max {
            let reason = format!("disabled after {max} consecutive errors");
            self.disable(key, slot, reason, &last.message);
        }
        self.shared.bump();
    }

    fn disable(&self, key: &str, slot: &mut Slot, reason: String, last: &str) {
        if slot.script.take().is_none() {
            return;
        }
        let name = slot.name.clone();
        tracing::error!("[LUA] {name} {reason}; last error: {last}");
        self.app.scripts.update(key, |s| {
            s.status = ScriptState::Disabled;
            s.disabled_reason = Some(reason.clone());
        });
        m_disabled(&self.app.metrics, &name, true);
        self.shared.set_version(key, None);
        self.app.alerts.raise(AlertRequest {
            severity: Severity::Warning,
            title: format!("Lua script {name} disabled"),
            message: format!(
                "{name} was {reason}; last error: {last}. Fix the file (it reloads on save) or send SIGHUP."
            ),
            node: None,
            key: Some(format!("script_disabled:{key}")),
            source: "nexus".into(),
        });
        self.app.metrics.scripts_loaded.dec();
    }

    fn update_loaded(&self, slots: &BTreeMap<String, Slot>) {
        let n = slots.values().filter(|s| s.script.is_some()).count();
        self.app.metrics.scripts_loaded.set(n as i64);
    }
}

/// A script could not be loaded (syntax error, an error or the time limit while it ran
/// its top level): counts `nexus_script_reloads_total{script,result="error"}` and
/// `nexus_script_errors_total{script}`, and logs. Happens once per attempt (a save, a
/// SIGHUP), so it is not rate-limited.
struct ScriptLoadFailed<'a> {
    script: &'a str,
    message: &'a str,
    /// The previous version keeps running.
    keeps_running: bool,
}

impl InternalEvent for ScriptLoadFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        let script = self.script;
        metrics
            .script_reloads
            .with_label_values(&[script, "error"])
            .inc();
        metrics.script_errors.with_label_values(&[script]).inc();
        let keeps = if self.keeps_running {
            " (the previous version keeps running)"
        } else {
            ""
        };
        tracing::warn!(script = %script, "[LUA] {script} failed to load: {}{keeps}", self.message);
    }
}

/// A running script's hooks or timers failed (errors, time limits): counts
/// `nexus_script_errors_total{script}` and `nexus_script_timeouts_total{script}`, and
/// logs the last failure, at most once per [`ERROR_LOG_INTERVAL`] per script (with the
/// number held back since the last line).
struct ScriptFailed<'a> {
    script: &'a str,
    failures: &'a [Failure],
    gate: &'a mut LogGate,
}

impl InternalEvent for ScriptFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        let script = self.script;
        let timeouts = self.failures.iter().filter(|f| f.timeout).count() as u64;
        metrics
            .script_errors
            .with_label_values(&[script])
            .inc_by(self.failures.len() as u64);
        metrics
            .script_timeouts
            .with_label_values(&[script])
            .inc_by(timeouts);
        let Some(last) = self.failures.last() else {
            return;
        };
        if let Some(held) = self.gate.pass() {
            let more = if held > 0 {
                format!(" ({held} more errors since the last report)")
            } else {
                String::new()
            };
            tracing::warn!(script = %script, "[LUA] {script}: error in {}: {}{more}", last.context, last.message);
        }
    }
}

/// `nexus_script_disabled{script}`.
fn m_disabled(m: &crate::metrics::Metrics, name: &str, disabled: bool) {
    m.script_disabled
        .with_label_values(&[name])
        .set(i64::from(disabled));
}

fn new_status(name: &str, key: &str) -> ScriptStatus {
    ScriptStatus {
        name: name.to_owned(),
        path: key.to_owned(),
        status: ScriptState::Error,
        loaded_at_ms: None,
        last_error: None,
        last_error_at_ms: None,
        errors: 0,
        timeouts: 0,
        reloads: 0,
        hooks: Vec::new(),
        disabled_reason: None,
    }
}

/// The script directories, for messages.
pub fn describe_dirs(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(timeout: bool) -> Failure {
        Failure {
            context: "on tx_keyed".into(),
            message: "boom".into(),
            timeout,
            disable: None,
        }
    }

    #[test]
    fn script_failures_count_errors_and_timeouts_and_log_once_per_interval() {
        let m = Metrics::default();
        let mut gate = LogGate::default();
        let failures = [failure(false), failure(true)];
        for _ in 0..3 {
            ScriptFailed {
                script: "a.lua",
                failures: &failures,
                gate: &mut gate,
            }
            .emit(&m);
        }
        assert_eq!(m.script_errors.with_label_values(&["a.lua"]).get(), 6);
        assert_eq!(m.script_timeouts.with_label_values(&["a.lua"]).get(), 3);
        assert_eq!(gate.held, 2, "one line written, two held back");
    }

    #[test]
    fn a_load_failure_counts_a_failed_reload_and_an_error() {
        let m = Metrics::default();
        ScriptLoadFailed {
            script: "b.lua",
            message: "syntax error near 'end'",
            keeps_running: true,
        }
        .emit(&m);
        assert_eq!(
            m.script_reloads
                .with_label_values(&["b.lua", "error"])
                .get(),
            1
        );
        assert_eq!(m.script_errors.with_label_values(&["b.lua"]).get(), 1);
    }
}

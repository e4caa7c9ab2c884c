//! One loaded script: its own sandboxed Lua state, the hooks and timers it registered, and
//! the one way into it ([`Script::call`]) that arms the budget, contains panics and counts
//! consecutive failures.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::chunk::ChunkMode;
use mlua::serde::DeserializeOptions;
use mlua::{Function, IntoLuaMulti, Lua, LuaSerdeExt, Value};

use super::ScriptEnv;
use super::api::{self, Ctx, Registration, TO_LUA};
use super::event::EventBuilder;
use super::queue::Inbox;
use super::sandbox::{self, Budget};
use super::store::SharedStore;
use super::watchdog::Watch;
use crate::control::VoterSnapshot;
use crate::state::{ChangeKind, Published};

/// Why a call into a script failed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What was running (`on tx_keyed`, `every 5s`, `load`…).
    pub context: String,
    /// The error, one line, with the script's line number when Lua gave one.
    pub message: String,
    /// The callback was aborted (or ran) past its time budget.
    pub timeout: bool,
    /// The script must be disabled now, for this reason (stuck past the watchdog's limit,
    /// or over budget again and again).
    pub disable: Option<String>,
}

/// Timeouts within [`TIMEOUT_WINDOW`] that disable a script.
pub const MAX_TIMEOUTS: usize = 3;
/// See [`MAX_TIMEOUTS`].
pub const TIMEOUT_WINDOW: Duration = Duration::from_secs(600);

/// Why [`Script::call_global`] failed.
#[derive(Debug)]
pub enum CallError {
    /// There is no such function (the caller's mistake, not the script's).
    NoFunction(String),
    /// The function failed (counted like any callback failure).
    Failed(Failure),
}

/// Everything needed to build a script.
pub struct LoadParams<'a> {
    pub name: &'a str,
    pub key: &'a str,
    pub source: &'a [u8],
    pub hash: u64,
    pub generation: u64,
    pub app: &'a ScriptEnv,
    pub rt: &'a tokio::runtime::Handle,
    pub inbox: &'a Arc<Inbox>,
    pub store: SharedStore,
    pub plugin: &'a serde_json::Value,
    pub watch: &'a Arc<Watch>,
}

/// Where a call into the script came from (for messages).
#[derive(Debug, Clone, Copy)]
enum Site {
    Load,
    On(Option<ChangeKind>),
    Every(Duration),
    Voter,
    Call,
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Site::Load => f.write_str("load"),
            Site::On(Some(k)) => write!(f, "on {k}"),
            Site::On(None) => f.write_str("on *"),
            Site::Every(d) => write!(f, "every {}s", d.as_secs_f64()),
            Site::Voter => f.write_str("voter_status callback"),
            Site::Call => f.write_str("call"),
        }
    }
}

struct Timer {
    every: Duration,
    next: Instant,
    f: Function,
}

/// A loaded, running script.
pub struct Script {
    pub hash: u64,
    pub generation: u64,
    /// Failures since the last successful call.
    pub consecutive_errors: u32,
    lua: Lua,
    budget: Arc<Budget>,
    key: Arc<str>,
    name: Arc<str>,
    watch: Arc<Watch>,
    /// When recent callbacks ran past their budget (at most [`MAX_TIMEOUTS`] kept).
    timeouts: VecDeque<Instant>,
    /// Hooks by `ChangeKind` position in [`ChangeKind::ALL`], then `"*"` hooks last.
    hooks: Vec<Vec<Function>>,
    timers: Vec<Timer>,
    events: EventBuilder,
}

const STAR: usize = ChangeKind::ALL.len();

fn kind_index(kind: ChangeKind) -> usize {
    ChangeKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(STAR)
}

impl Script {
    /// Builds a fresh state, runs the script's top level under the budget, and keeps what
    /// it registered. Any error leaves nothing behind.
    pub fn load(p: LoadParams<'_>) -> Result<Script, Failure> {
        let cfg = &p.app.lua;
        let budget = Budget::new(cfg.callback_budget.0);
        let load_failure = |e: mlua::Error| Failure {
            context: "load".into(),
            message: sandbox::describe(&e),
            timeout: false,
            disable: None,
        };
        let lua = sandbox::new_state(cfg.memory_limit_mb.saturating_mul(1 << 20), &budget)
            .map_err(load_failure)?;
        let ctx = Ctx::new(
            p.name.to_owned(),
            p.key.to_owned(),
            p.generation,
            p.app.clone(),
            p.rt.clone(),
            p.inbox.clone(),
        );
        api::install(&lua, ctx, p.plugin, p.store).map_err(load_failure)?;
        let chunk = lua
            .load(p.source)
            .set_name(format!("@{}", p.name))
            .set_mode(ChunkMode::Text)
            .into_function();
        let main = chunk.map_err(load_failure)?;
        let events = EventBuilder::new(&lua).map_err(load_failure)?;
        let mut script = Script {
            events,
            hash: p.hash,
            generation: p.generation,
            consecutive_errors: 0,
            lua,
            budget,
            key: p.key.into(),
            name: p.name.into(),
            watch: p.watch.clone(),
            timeouts: VecDeque::new(),
            hooks: vec![Vec::new(); STAR + 1],
            timers: Vec::new(),
        };
        script.call(Site::Load, &main, ())?;
        Ok(script)
    }

    /// The kinds this script listens to (`"*"` included), for the status API.
    pub fn hook_names(&self) -> Vec<String> {
        let mut out: Vec<String> = ChangeKind::ALL
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.hooks[*i].is_empty())
            .map(|(_, k)| k.as_str().to_owned())
            .collect();
        if !self.hooks[STAR].is_empty() {
            out.push("*".into());
        }
        out
    }

    /// Whether any hook wants this kind of change.
    pub fn wants(&self, kind: ChangeKind) -> bool {
        !self.hooks[kind_index(kind)].is_empty() || !self.hooks[STAR].is_empty()
    }

    /// Calls every hook for the change (each with its own budget); returns the failures.
    pub fn dispatch(&mut self, p: &Published) -> Vec<Failure> {
        let kind = p.event.kind;
        let mut failures = Vec::new();
        let event = match self.events.build(&self.lua, &p.event) {
            Ok(v) => v,
            Err(e) => {
                failures.push(self.failed(Site::On(Some(kind)), &e, false));
                return failures;
            }
        };
        for (idx, site) in [
            (kind_index(kind), Site::On(Some(kind))),
            (STAR, Site::On(None)),
        ] {
            if self.hooks[idx].is_empty() {
                continue;
            }
            // Taken out while running, so hooks registered meanwhile land behind them.
            let hooks = std::mem::take(&mut self.hooks[idx]);
            for f in &hooks {
                if let Err(fail) = self.call(site, f, event.clone()) {
                    failures.push(fail);
                }
            }
            let added = std::mem::replace(&mut self.hooks[idx], hooks);
            self.hooks[idx].extend(added);
        }
        failures
    }

    /// When the next timer is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.timers.iter().map(|t| t.next).min()
    }

    /// Runs every timer that is due at `now`; returns the failures.
    pub fn run_timers(&mut self, now: Instant) -> Vec<Failure> {
        let mut failures = Vec::new();
        for i in 0..self.timers.len() {
            if self.timers[i].next > now {
                continue;
            }
            let t = &mut self.timers[i];
            t.next += t.every;
            if t.next <= now {
                t.next = now + t.every;
            }
            let (f, every) = (t.f.clone(), t.every);
            if let Err(fail) = self.call(Site::Every(every), &f, ()) {
                failures.push(fail);
            }
        }
        failures
    }

    /// Hands a `nexus.voter_status` answer to the callback waiting for it.
    pub fn voter_reply(
        &mut self,
        call: u64,
        result: Result<VoterSnapshot, String>,
    ) -> Option<Failure> {
        let f = api::ctx_mut(&self.lua).ok()?.voter_calls.remove(&call)?;
        let args = match result {
            Ok(snap) => match self.lua.to_value_with(&snap.receivers, TO_LUA) {
                Ok(v) => (v, Value::Nil),
                Err(e) => return Some(self.failed(Site::Voter, &e, false)),
            },
            Err(msg) => match self.lua.create_string(&msg) {
                Ok(s) => (Value::Nil, Value::String(s)),
                Err(e) => return Some(self.failed(Site::Voter, &e, false)),
            },
        };
        self.call(Site::Voter, &f, args).err()
    }

    /// Calls a global function with JSON arguments; returns its first result as JSON.
    pub fn call_global(
        &mut self,
        function: &str,
        args: Vec<serde_json::Value>,
    ) -> Result<serde_json::Value, CallError> {
        let f = match self.lua.globals().raw_get::<Value>(function) {
            Ok(Value::Function(f)) => f,
            _ => {
                return Err(CallError::NoFunction(format!(
                    "no global function {function:?}"
                )));
            }
        };
        let mut values = Vec::with_capacity(args.len());
        for a in &args {
            let v = self.lua.to_value_with(a, TO_LUA);
            values.push(v.map_err(|e| CallError::Failed(self.failed(Site::Call, &e, false)))?);
        }
        let ret = self
            .call_returning(Site::Call, &f, mlua::MultiValue::from_iter(values))
            .map_err(CallError::Failed)?;
        let opts = DeserializeOptions::new()
            .deny_unsupported_types(false)
            .deny_recursive_tables(false);
        self.lua
            .from_value_with(ret, opts)
            .map_err(|e| CallError::Failed(self.failed(Site::Call, &e, false)))
    }

    fn call(&mut self, site: Site, f: &Function, args: impl IntoLuaMulti) -> Result<(), Failure> {
        self.call_returning(site, f, args).map(drop)
    }

    /// The one way into the script: budget armed, watchdog told, panics contained,
    /// registrations kept, consecutive failures counted. A call that returns after its
    /// budget (a long C call the hook could not interrupt) counts as a timeout too.
    fn call_returning(
        &mut self,
        site: Site,
        f: &Function,
        args: impl IntoLuaMulti,
    ) -> Result<Value, Failure> {
        let started = Instant::now();
        self.budget.arm();
        self.watch.begin(&self.key, &self.name, self.budget.limit());
        let result = catch_unwind(AssertUnwindSafe(|| f.call::<Value>(args)));
        let condemned = self.watch.end();
        let over = self.budget.disarm() || started.elapsed() > self.budget.limit();
        self.take_registrations();
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(mlua::Error::runtime(
                "internal error (panic) while running the script",
            )),
        };
        let mut failure = match result {
            Ok(v) if !over => {
                self.consecutive_errors = 0;
                return Ok(v);
            }
            Ok(_) => self.failed(site, &mlua::Error::runtime(sandbox::TIMEOUT_MESSAGE), true),
            Err(e) => self.failed(site, &e, over),
        };
        failure.disable = self.disable_reason(over, condemned, started.elapsed());
        Err(failure)
    }

    /// Whether a failed call must disable the script: the watchdog condemned it, or it is
    /// the [`MAX_TIMEOUTS`]th timeout within [`TIMEOUT_WINDOW`].
    fn disable_reason(&mut self, over: bool, condemned: bool, ran: Duration) -> Option<String> {
        let budget = self.budget.limit().as_millis();
        if condemned {
            return Some(format!(
                "disabled by the watchdog: one callback ran {} ms (budget {budget} ms, lua.callback_budget)",
                ran.as_millis()
            ));
        }
        if !over {
            return None;
        }
        let now = Instant::now();
        self.timeouts.push_back(now);
        while self.timeouts.len() > MAX_TIMEOUTS
            || self
                .timeouts
                .front()
                .is_some_and(|t| now.duration_since(*t) > TIMEOUT_WINDOW)
        {
            self.timeouts.pop_front();
        }
        (self.timeouts.len() >= MAX_TIMEOUTS).then(|| {
            format!(
                "disabled: exceeded its time budget ({budget} ms, lua.callback_budget) {MAX_TIMEOUTS} times within {} minutes",
                TIMEOUT_WINDOW.as_secs() / 60
            )
        })
    }

    fn failed(&mut self, site: Site, e: &mlua::Error, timeout: bool) -> Failure {
        self.consecutive_errors += 1;
        let message = if timeout {
            format!(
                "{} ({} ms)",
                sandbox::TIMEOUT_MESSAGE,
                self.budget.limit().as_millis()
            )
        } else {
            sandbox::describe(e)
        };
        Failure {
            context: site.to_string(),
            message,
            timeout,
            disable: None,
        }
    }

    /// Moves hooks and timers registered by the last call into the script.
    fn take_registrations(&mut self) {
        let regs = match api::ctx_mut(&self.lua) {
            Ok(mut c) if !c.registrations.is_empty() => std::mem::take(&mut c.registrations),
            _ => return,
        };
        for r in regs {
            match r {
                Registration::Hook(kind, f) => {
                    self.hooks[kind.map(kind_index).unwrap_or(STAR)].push(f)
                }
                Registration::Timer(every, f) => self.timers.push(Timer {
                    every,
                    next: Instant::now() + every,
                    f,
                }),
            }
        }
    }
}

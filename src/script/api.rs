//! The `nexus` table: everything a script can ask of the daemon (`docs/lua-api.md`).
//!
//! Scripts talk back through commands (`Control`, `AlertHub`), never by touching shared
//! state. Calls that wait on AMI (`nexus.voter_status`) run on the tokio runtime and answer
//! later through the Lua thread's inbox, so the Lua thread never blocks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::serde::SerializeOptions;
use mlua::{AppDataRef, AppDataRefMut, Function, Lua, LuaSerdeExt, MultiValue, Table, Value};

use super::ScriptEnv;
use super::queue::{Command, Inbox};
use super::sandbox;
use super::store::{self, SharedStore};
use crate::alerts::{AlertRequest, Severity};
use crate::state::ChangeKind;

/// How values reach Lua: `None`/JSON `null` become `nil` (not a sentinel), arrays are plain.
pub const TO_LUA: SerializeOptions = SerializeOptions::new()
    .serialize_none_to_null(false)
    .serialize_unit_to_null(false)
    .set_array_metatable(false);

/// Shortest `nexus.every` interval.
pub const MIN_TIMER: Duration = Duration::from_millis(10);
/// `nexus.voter_status` requests a script may have waiting at once.
pub const MAX_VOTER_CALLS: usize = 64;
/// `nexus.log` lines a script may write per second (the rest are counted, then summarised).
pub const LOG_LINES_PER_SECOND: u32 = 50;
/// AMI actions (`nexus.poll_now`, `nexus.voter_status`) a script may start in a burst…
pub const ACTIONS_BURST: f64 = 10.0;
/// …and per second after it; past that the call answers `nil, "rate limited: …"`.
pub const ACTIONS_PER_SECOND: f64 = 5.0;
/// Longest log line kept.
const MAX_LOG_CHARS: usize = 2000;

/// Something a script registered; the host moves these out after every call into Lua.
pub enum Registration {
    /// `nexus.on(kind, fn)`; `None` = `"*"`.
    Hook(Option<ChangeKind>, Function),
    /// `nexus.every(seconds, fn)`.
    Timer(Duration, Function),
}

/// Per-state data behind the API functions (Lua app data).
pub struct Ctx {
    /// File name (`alerts.lua`).
    pub name: String,
    /// Registry key (the path).
    pub key: String,
    /// Which load of the script this state is (voter replies for older ones are dropped).
    pub generation: u64,
    pub app: ScriptEnv,
    pub rt: tokio::runtime::Handle,
    pub inbox: Arc<Inbox>,
    pub registrations: Vec<Registration>,
    /// Callbacks of `nexus.voter_status` waiting for their answer, by call id.
    pub voter_calls: HashMap<u64, Function>,
    next_call: u64,
    log_window: Instant,
    log_lines: u32,
    log_suppressed: u64,
    /// Token bucket for AMI actions: tokens left, and when it was last refilled.
    action_tokens: f64,
    action_refill: Instant,
}

impl Ctx {
    pub fn new(
        name: String,
        key: String,
        generation: u64,
        app: ScriptEnv,
        rt: tokio::runtime::Handle,
        inbox: Arc<Inbox>,
    ) -> Ctx {
        Ctx {
            name,
            key,
            generation,
            app,
            rt,
            inbox,
            registrations: Vec::new(),
            voter_calls: HashMap::new(),
            next_call: 0,
            log_window: Instant::now(),
            log_lines: 0,
            log_suppressed: 0,
            action_tokens: ACTIONS_BURST,
            action_refill: Instant::now(),
        }
    }

    /// Takes one AMI action from the script's budget, or says why not.
    fn take_action(&mut self, what: &str) -> Result<(), String> {
        let now = Instant::now();
        let refill = now.duration_since(self.action_refill).as_secs_f64() * ACTIONS_PER_SECOND;
        self.action_tokens = (self.action_tokens + refill).min(ACTIONS_BURST);
        self.action_refill = now;
        if self.action_tokens < 1.0 {
            return Err(format!(
                "rate limited: {what} refused, a script may start at most {ACTIONS_PER_SECOND} AMI actions a second (bursts of {ACTIONS_BURST})"
            ));
        }
        self.action_tokens -= 1.0;
        Ok(())
    }

    /// Whether another log line may be written now; says how many were held back.
    fn log_allowed(&mut self) -> (bool, u64) {
        if self.log_window.elapsed() >= Duration::from_secs(1) {
            self.log_window = Instant::now();
            self.log_lines = 0;
        }
        self.log_lines += 1;
        if self.log_lines > LOG_LINES_PER_SECOND {
            self.log_suppressed += 1;
            return (false, 0);
        }
        (true, std::mem::take(&mut self.log_suppressed))
    }
}

pub fn ctx(lua: &Lua) -> mlua::Result<AppDataRef<'_, Ctx>> {
    lua.try_app_data_ref::<Ctx>()
        .ok()
        .flatten()
        .ok_or_else(|| mlua::Error::runtime("nexus: script context unavailable"))
}

pub fn ctx_mut(lua: &Lua) -> mlua::Result<AppDataRefMut<'_, Ctx>> {
    lua.try_app_data_mut::<Ctx>()
        .ok()
        .flatten()
        .ok_or_else(|| mlua::Error::runtime("nexus: script context unavailable"))
}

/// Installs `nexus`, `print`, and the context into a fresh sandboxed state.
pub fn install(
    lua: &Lua,
    context: Ctx,
    plugin: &serde_json::Value,
    store: SharedStore,
) -> mlua::Result<()> {
    let name = context.name.clone();
    lua.set_app_data(context);
    let nexus = lua.create_table()?;
    nexus.set("script", name)?;
    nexus.set(
        "kinds",
        lua.create_sequence_from(ChangeKind::ALL.iter().map(|k| k.as_str()))?,
    )?;
    nexus.set("on", lua.create_function(on)?)?;
    nexus.set("every", lua.create_function(every)?)?;
    nexus.set(
        "nodes",
        lua.create_function(|lua, ()| lua.to_value_with(&ctx(lua)?.app.state.nodes(), TO_LUA))?,
    )?;
    // Just the ids (sorted): cheap where `nexus.nodes()` builds every node's full view.
    nexus.set(
        "node_ids",
        lua.create_function(|lua, ()| lua.create_sequence_from(ctx(lua)?.app.state.node_ids()))?,
    )?;
    nexus.set("node", lua.create_function(node)?)?;
    nexus.set("set_poll_interval", lua.create_function(set_poll_interval)?)?;
    nexus.set("poll_interval", lua.create_function(poll_interval)?)?;
    nexus.set("poll_now", lua.create_function(poll_now)?)?;
    nexus.set("voter_status", lua.create_function(voter_status)?)?;
    super::control_api::register(lua, &nexus)?;
    nexus.set("alert", lua.create_function(alert)?)?;
    nexus.set("now", lua.create_function(|_, ()| Ok(wall_seconds()))?)?;
    sandbox::wrap_functions(lua, &nexus, "nexus")?;
    nexus.set("config", plugin_config(lua, plugin)?)?;
    nexus.set("store", store::proxy(lua, store)?)?;
    nexus.set("history", super::history_api::table(lua)?)?;
    let log = log_table(lua)?;
    sandbox::wrap_functions(lua, &log, "nexus.log")?;
    lua.globals().set("print", log.get::<Function>("info")?)?;
    nexus.set("log", log)?;
    lua.globals().set("nexus", nexus)
}

/// Wall-clock time, seconds since the Unix epoch.
pub fn wall_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn plugin_config(lua: &Lua, plugin: &serde_json::Value) -> mlua::Result<Value> {
    match plugin {
        serde_json::Value::Null => Ok(Value::Table(lua.create_table()?)),
        v => lua.to_value_with(v, TO_LUA),
    }
}

fn kind_names() -> String {
    let mut names: Vec<&str> = ChangeKind::ALL.iter().map(|k| k.as_str()).collect();
    names.push("\"*\"");
    names.join(", ")
}

fn on(lua: &Lua, (kind, f): (Value, Value)) -> mlua::Result<()> {
    let kind_name = match &kind {
        Value::String(s) => s.to_str()?.to_string(),
        other => {
            return Err(mlua::Error::runtime(format!(
                "nexus.on: the kind must be a string, not {}",
                other.type_name()
            )));
        }
    };
    if kind_name == super::control_api::EVENT {
        return super::control_api::on_result(lua, f);
    }
    let kind = match kind_name.as_str() {
        "*" => None,
        k => Some(ChangeKind::parse(k).ok_or_else(|| {
            mlua::Error::runtime(format!(
                "nexus.on: unknown change kind {k:?}; valid kinds: {}",
                kind_names()
            ))
        })?),
    };
    let Value::Function(f) = f else {
        return Err(mlua::Error::runtime(format!(
            "nexus.on({kind_name:?}, fn): fn must be a function, not {}",
            f.type_name()
        )));
    };
    ctx_mut(lua)?
        .registrations
        .push(Registration::Hook(kind, f));
    Ok(())
}

fn every(lua: &Lua, (seconds, f): (Value, Value)) -> mlua::Result<()> {
    let secs = match seconds {
        Value::Integer(i) => i as f64,
        Value::Number(n) => n,
        other => {
            return Err(mlua::Error::runtime(format!(
                "nexus.every: seconds must be a number, not {}",
                other.type_name()
            )));
        }
    };
    if !secs.is_finite() || secs < MIN_TIMER.as_secs_f64() || secs > 86_400.0 {
        return Err(mlua::Error::runtime(format!(
            "nexus.every: {secs} seconds is out of range (0.01 … 86400)"
        )));
    }
    let Value::Function(f) = f else {
        return Err(mlua::Error::runtime(format!(
            "nexus.every(seconds, fn): fn must be a function, not {}",
            f.type_name()
        )));
    };
    ctx_mut(lua)?
        .registrations
        .push(Registration::Timer(Duration::from_secs_f64(secs), f));
    Ok(())
}

/// A node id given as a number or a string.
fn node_id(v: &Value) -> mlua::Result<String> {
    match v {
        Value::String(s) => Ok(s.to_str()?.to_string()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Number(n) if n.fract() == 0.0 && n.is_finite() => Ok(format!("{n:.0}")),
        other => Err(mlua::Error::runtime(format!(
            "node must be a number or a string, not {}",
            other.type_name()
        ))),
    }
}

fn node(lua: &Lua, id: Value) -> mlua::Result<Value> {
    let id = node_id(&id)?;
    let view = ctx(lua)?.app.state.node(&id);
    lua.to_value_with(&view, TO_LUA)
}

fn set_poll_interval(
    lua: &Lua,
    (node, seconds): (Value, f64),
) -> mlua::Result<(Option<f64>, Option<String>)> {
    let node = node_id(&node)?;
    match ctx(lua)?.app.control.set_poll_interval(&node, seconds) {
        Ok(d) => Ok((Some(d.as_secs_f64()), None)),
        Err(e) => Ok((None, Some(e.to_string()))),
    }
}

fn poll_interval(lua: &Lua, node: Value) -> mlua::Result<Option<f64>> {
    let node = node_id(&node)?;
    Ok(ctx(lua)?
        .app
        .control
        .poll_interval(&node)
        .map(|d| d.as_secs_f64()))
}

fn poll_now(lua: &Lua, node: Value) -> mlua::Result<(Option<bool>, Option<String>)> {
    let node = node_id(&node)?;
    let mut c = ctx_mut(lua)?;
    if let Err(e) = c.take_action("nexus.poll_now") {
        return Ok((None, Some(e)));
    }
    match c.app.control.poll_now(&node) {
        Ok(()) => Ok((Some(true), None)),
        Err(e) => Ok((None, Some(e.to_string()))),
    }
}

fn voter_status(
    lua: &Lua,
    (node, cb): (Value, Function),
) -> mlua::Result<(Option<bool>, Option<String>)> {
    let node = node_id(&node)?;
    let mut c = ctx_mut(lua)?;
    if c.voter_calls.len() >= MAX_VOTER_CALLS {
        return Ok((
            None,
            Some(format!(
                "too many voter_status calls waiting ({MAX_VOTER_CALLS})"
            )),
        ));
    }
    if let Err(e) = c.take_action("nexus.voter_status") {
        return Ok((None, Some(e)));
    }
    c.next_call += 1;
    let call = c.next_call;
    c.voter_calls.insert(call, cb);
    let (script, generation, inbox, control) = (
        c.key.clone(),
        c.generation,
        c.inbox.clone(),
        c.app.control.clone(),
    );
    c.rt.spawn(async move {
        let result = control.voter_status(&node).await.map_err(|e| e.to_string());
        inbox.push_command(Command::VoterReply {
            script,
            generation,
            call,
            result,
        });
    });
    Ok((Some(true), None))
}

fn opt_string(t: &Table, key: &str) -> mlua::Result<Option<String>> {
    match t.get::<Value>(key)? {
        Value::Nil => Ok(None),
        Value::String(s) => Ok(Some(s.to_str()?.to_string())),
        v @ (Value::Integer(_) | Value::Number(_)) => Ok(Some(node_id(&v)?)),
        other => Err(mlua::Error::runtime(format!(
            "nexus.alert: {key} must be a string, not {}",
            other.type_name()
        ))),
    }
}

fn alert(lua: &Lua, t: Table) -> mlua::Result<(Option<u64>, Option<String>)> {
    let severity = match opt_string(&t, "severity")? {
        None => Severity::Warning,
        Some(s) => Severity::parse(&s).ok_or_else(|| {
            mlua::Error::runtime(format!(
                "nexus.alert: unknown severity {s:?} (info, warning, critical)"
            ))
        })?,
    };
    let title = opt_string(&t, "title")?
        .ok_or_else(|| mlua::Error::runtime("nexus.alert: title is required"))?;
    let c = ctx(lua)?;
    let req = AlertRequest {
        severity,
        title: truncate(title, 200),
        message: truncate(opt_string(&t, "message")?.unwrap_or_default(), 2000),
        node: opt_string(&t, "node")?,
        key: opt_string(&t, "key")?,
        source: c.name.clone(),
    };
    match c.app.alerts.try_raise(req) {
        Ok(a) => Ok((Some(a.id), None)),
        Err(why) => Ok((None, Some(why.to_string()))),
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[derive(Clone, Copy)]
enum Level {
    Info,
    Warn,
    Error,
}

fn log_table(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for (name, level) in [
        ("info", Level::Info),
        ("warn", Level::Warn),
        ("error", Level::Error),
    ] {
        t.set(
            name,
            lua.create_function(move |lua, args: MultiValue| log(lua, level, args))?,
        )?;
    }
    Ok(t)
}

fn log(lua: &Lua, level: Level, args: MultiValue) -> mlua::Result<()> {
    let mut parts = Vec::with_capacity(args.len());
    for v in args {
        parts.push(v.to_string()?);
    }
    let text = truncate(parts.join(" "), MAX_LOG_CHARS);
    let (name, (allowed, held)) = {
        let mut c = ctx_mut(lua)?;
        (c.name.clone(), c.log_allowed())
    };
    if !allowed {
        return Ok(());
    }
    if held > 0 {
        tracing::warn!(script = %name, "[LUA] {name}: {held} log lines suppressed (more than {LOG_LINES_PER_SECOND}/s)");
    }
    match level {
        Level::Info => tracing::info!(script = %name, "[LUA] {name}: {text}"),
        Level::Warn => tracing::warn!(script = %name, "[LUA] {name}: {text}"),
        Level::Error => tracing::error!(script = %name, "[LUA] {name}: {text}"),
    }
    Ok(())
}

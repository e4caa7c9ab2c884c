//! The sandbox every script runs in: a Lua 5.4 state of its own with only safe libraries,
//! a memory limit, and a time budget per callback.
//!
//! Libraries: `table`, `string` (without `dump`), `math`, `utf8`, `coroutine`, a restricted
//! `os` (`time`, `date`, `clock`) and the safe part of the base library. There is no `io`,
//! `debug`, `package`/`require`, `dofile`/`loadfile`, `warn`; `load` accepts text chunks
//! only; `collectgarbage` answers only `"count"`; `__gc` metamethods are refused (a
//! finalizer could run outside any callback's budget).
//!
//! # The budget
//! A global instruction hook (every [`HOOK_EVERY`] VM instructions) compares the time
//! against the deadline armed for the running callback and raises an error once it has
//! passed. Lua 5.4 copies the creating thread's hook into every new coroutine
//! (`lua_newthread`), and a *global* mlua hook is not tied to one thread, so coroutines are
//! covered wherever they are created or resumed. The abort is sticky: once over budget,
//! every later hook call raises again, and `pcall`, `xpcall`, `coroutine.resume`,
//! `coroutine.close` and `load` (whose reader function runs protected) are wrapped so that
//! catching the abort re-raises it at once. A callback therefore cannot outlive its budget
//! by more than one hook interval, however it nests `pcall`s and coroutines.
//!
//! `xpcall` message handlers need one more guard: Lua calls the handler from inside the
//! error machinery, and when the error was raised by the hook, hooks are off while the
//! handler runs (and it is called again for every error it raises). The wrapped `xpcall`
//! therefore skips the script's handler once the budget has tripped. `<close>` handlers
//! can likewise run with hooks off while an abort unwinds: `setmetatable` wraps a
//! metatable's `__close` so that it is skipped once over budget (a `__close` assigned to
//! the metatable later is not wrapped; the watchdog is the backstop for such a case).
//!
//! A long C call (`string.find` with a pathological pattern) runs no VM instructions, so
//! the hook cannot stop it: the host counts it as a timeout when it returns, and the
//! watchdog (`script::watchdog`) reports a thread stuck in one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mlua::{HookTriggers, Lua, LuaOptions, StdLib, VmState};

/// The hook runs every this many VM instructions (tens of microseconds of Lua).
pub const HOOK_EVERY: u32 = 1000;

/// The error text of an aborted callback.
pub const TIMEOUT_MESSAGE: &str = "script exceeded its time budget (lua.callback_budget)";

/// The deadline of the callback running now. Shared by the hook and the host.
pub struct Budget {
    base: Instant,
    limit: Duration,
    /// Nanoseconds after `base`; 0 = no callback running.
    deadline_ns: AtomicU64,
    tripped: AtomicBool,
}

impl Budget {
    pub fn new(limit: Duration) -> Arc<Budget> {
        Arc::new(Budget {
            base: Instant::now(),
            limit,
            deadline_ns: AtomicU64::new(0),
            tripped: AtomicBool::new(false),
        })
    }

    /// Starts a callback's budget.
    pub fn arm(&self) {
        let deadline = (Instant::now() + self.limit).saturating_duration_since(self.base);
        let ns = u64::try_from(deadline.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        self.tripped.store(false, Ordering::Relaxed);
        self.deadline_ns.store(ns, Ordering::Relaxed);
    }

    /// Ends a callback's budget; returns whether it was exceeded.
    pub fn disarm(&self) -> bool {
        self.deadline_ns.store(0, Ordering::Relaxed);
        self.tripped.swap(false, Ordering::Relaxed)
    }

    /// Whether the running callback is over budget (sticky until [`Budget::disarm`]).
    pub fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }

    /// Called by the hook: `false` once the deadline has passed.
    fn within(&self) -> bool {
        if self.tripped.load(Ordering::Relaxed) {
            return false;
        }
        let deadline = self.deadline_ns.load(Ordering::Relaxed);
        if deadline == 0 || (self.base.elapsed().as_nanos() as u64) < deadline {
            return true;
        }
        self.tripped.store(true, Ordering::Relaxed);
        false
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }
}

/// Lua run once per state, before any script code: wraps the functions that can catch
/// errors so that a budget abort cannot be swallowed, and restricts `load`,
/// `setmetatable` and `collectgarbage`.
const PROTECT: &str = r#"
local tripped, timeout_message, message = ...
local raw_pcall, raw_xpcall, raw_error, raw_select = pcall, xpcall, error, select
local co_resume, co_close = coroutine.resume, coroutine.close
local raw_load, raw_setmetatable, raw_collect = load, setmetatable, collectgarbage
local rawget, rawset, type, sub = rawget, rawset, type, string.sub

local function checked(ok, ...)
  if not ok and tripped() then raw_error(timeout_message, 0) end
  return ok, ...
end
local function loaded(f, ...)
  if f == nil and tripped() then raw_error(timeout_message, 0) end
  return f, ...
end

pcall = function(...) return checked(raw_pcall(...)) end
-- A message handler runs inside the error machinery; when the error came from the budget
-- hook, Lua runs the handler with hooks switched off, so a looping handler would never be
-- stopped. Once over budget the handler is skipped: the abort goes straight through.
xpcall = function(f, handler, ...)
  local function guarded(e)
    if tripped() then return e end
    return handler(e)
  end
  return checked(raw_xpcall(f, guarded, ...))
end
coroutine.resume = function(...) return checked(co_resume(...)) end
coroutine.close = function(...) return checked(co_close(...)) end
load = function(chunk, name, mode, ...)
  if raw_select('#', ...) > 0 then return loaded(raw_load(chunk, name, "t", ...)) end
  return loaded(raw_load(chunk, name, "t"))
end
-- A `<close>` handler run while an over-budget abort unwinds may run with hooks off:
-- once over budget, it is skipped (guards are remembered so they are not stacked).
local guards = raw_setmetatable({}, { __mode = "k" })
setmetatable = function(t, mt)
  if type(mt) == "table" then
    if rawget(mt, "__gc") ~= nil then
      raw_error("__gc metamethods are not allowed in scripts", 2)
    end
    local close = rawget(mt, "__close")
    if type(close) == "function" and not guards[close] then
      local guard = function(...)
        if tripped() then return end
        return close(...)
      end
      guards[guard] = true
      rawset(mt, "__close", guard)
    end
  end
  return raw_setmetatable(t, mt)
end
collectgarbage = function(opt)
  if opt == nil or opt == "count" then return raw_collect("count") end
  raw_error("collectgarbage: only \"count\" is allowed in scripts", 2)
end

-- Errors raised by Rust functions reach Lua as userdata; API functions are wrapped so a
-- script sees a plain string, positioned at its own call ("x.lua:12: nexus.on: ...").
return function(f, name)
  local prefix = name .. ": "
  local function finish(ok, ...)
    if ok then return ... end
    if tripped() then raw_error(timeout_message, 0) end
    local text = message((...))
    if sub(text, 1, #prefix) ~= prefix then text = prefix .. text end
    raw_error(text, 2)
  end
  return function(...) return finish(raw_pcall(f, ...)) end
end
"#;

/// A fresh sandboxed state with `budget` enforced and at most `memory_limit` bytes.
pub fn new_state(memory_limit: usize, budget: &Arc<Budget>) -> mlua::Result<Lua> {
    let libs = StdLib::TABLE
        | StdLib::STRING
        | StdLib::MATH
        | StdLib::UTF8
        | StdLib::COROUTINE
        | StdLib::OS;
    let lua = Lua::new_with(libs, LuaOptions::new())?;
    strip_globals(&lua)?;
    let b = budget.clone();
    let tripped = lua.create_function(move |_, ()| Ok(b.tripped()))?;
    let message = lua.create_function(|_, v: mlua::Value| Ok(error_message(&v)))?;
    let wrap: mlua::Function =
        lua.load(PROTECT)
            .set_name("=sandbox")
            .call((tripped, TIMEOUT_MESSAGE, message))?;
    lua.set_named_registry_value(WRAP_KEY, wrap)?;
    let b = budget.clone();
    lua.set_global_hook(
        HookTriggers::new().every_nth_instruction(HOOK_EVERY),
        move |_, _| {
            if b.within() {
                Ok(VmState::Continue)
            } else {
                Err(mlua::Error::runtime(TIMEOUT_MESSAGE))
            }
        },
    )?;
    lua.set_memory_limit(memory_limit)?;
    Ok(lua)
}

/// Registry name of the API wrapper made by [`PROTECT`].
const WRAP_KEY: &str = "nexus.wrap";

/// Replaces every function in `t` by one that raises plain string errors, prefixed with
/// `prefix.name`, at the script's call site (see [`PROTECT`]).
pub fn wrap_functions(lua: &Lua, t: &mlua::Table, prefix: &str) -> mlua::Result<()> {
    let wrap: mlua::Function = lua.named_registry_value(WRAP_KEY)?;
    let mut functions = Vec::new();
    for pair in t.pairs::<mlua::Value, mlua::Value>() {
        let (k, v) = pair?;
        if let mlua::Value::Function(f) = v {
            functions.push((k, f));
        }
    }
    for (k, f) in functions {
        let name = format!("{prefix}.{}", k.to_string()?);
        t.raw_set(k, wrap.call::<mlua::Function>((f, name))?)?;
    }
    Ok(())
}

/// The text of an error value caught in Lua.
fn error_message(v: &mlua::Value) -> String {
    match v {
        mlua::Value::Error(e) => describe(e),
        other => other.to_string().unwrap_or_else(|_| "error".into()),
    }
}

/// One line an operator can act on, with the script's `file:line:` when Lua gave one.
pub fn describe(e: &mlua::Error) -> String {
    let text = match e {
        mlua::Error::CallbackError { cause, .. } => return describe(cause),
        mlua::Error::WithContext { context, cause } => {
            return format!("{context}: {}", describe(cause));
        }
        mlua::Error::MemoryError(_) => return "out of memory (lua.memory_limit_mb reached)".into(),
        mlua::Error::SyntaxError { message, .. } => format!("syntax error: {message}"),
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::BadArgument { pos, cause, .. } => {
            format!("bad argument #{pos}: {}", describe(cause))
        }
        other => other.to_string(),
    };
    let first = text.lines().next().unwrap_or("").trim();
    let first = first.strip_prefix("runtime error: ").unwrap_or(first);
    truncate(first, 500)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Removes what scripts must not reach and narrows `os`.
fn strip_globals(lua: &Lua) -> mlua::Result<()> {
    let g = lua.globals();
    for name in [
        "dofile", "loadfile", "require", "package", "io", "debug", "warn", "print",
    ] {
        g.raw_set(name, mlua::Value::Nil)?;
    }
    let string: mlua::Table = g.get("string")?;
    string.raw_set("dump", mlua::Value::Nil)?;
    let os: mlua::Table = g.get("os")?;
    let safe_os = lua.create_table()?;
    for name in ["time", "date", "clock"] {
        safe_os.raw_set(name, os.get::<mlua::Value>(name)?)?;
    }
    g.raw_set("os", safe_os)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (Lua, Arc<Budget>) {
        let budget = Budget::new(Duration::from_millis(50));
        (new_state(8 << 20, &budget).expect("state"), budget)
    }

    fn run(lua: &Lua, budget: &Budget, src: &str) -> (mlua::Result<()>, bool, Duration) {
        let start = Instant::now();
        budget.arm();
        let r = lua.load(src).exec();
        (r, budget.disarm(), start.elapsed())
    }

    #[test]
    fn escapes_are_absent() {
        let (lua, _) = state();
        let src = r#"
            assert(io == nil and debug == nil and package == nil and require == nil)
            assert(dofile == nil and loadfile == nil and string.dump == nil and ("").dump == nil)
            assert(os.execute == nil and os.getenv == nil and os.remove == nil and os.exit == nil)
            assert(os.rename == nil and os.tmpname == nil and type(os.time()) == "number")
            assert(type(os.date("%Y")) == "string" and type(os.clock()) == "number")
            local f, err = load("\27Lua\84\0")
            assert(f == nil and err:find("binary"), err)
            assert(load("return 1")() == 1)
            assert(not pcall(collectgarbage, "collect"))
            assert(not pcall(collectgarbage, "stop"))
            assert(type(collectgarbage("count")) == "number")
            assert(not pcall(setmetatable, {}, {__gc = function() end}))
        "#;
        lua.load(src).exec().expect("sandbox assertions");
    }

    #[test]
    fn budget_holds_in_loops_pcall_and_coroutines() {
        let (lua, budget) = state();
        for src in [
            "while true do end",
            "while true do pcall(function() while true do end end) end",
            "while true do xpcall(function() while true do end end, function(e) return e end) end",
            "local co = coroutine.create(function() while true do end end) coroutine.resume(co)",
            "while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
            "coroutine.wrap(function() pcall(function() while true do end end) end)()",
            "while true do load(function() while true do end end) end",
        ] {
            let (r, over, took) = run(&lua, &budget, src);
            assert!(r.is_err(), "{src} must fail");
            assert!(over, "{src} must trip the budget");
            assert!(took < Duration::from_millis(250), "{src} took {took:?}");
        }
        let (r, over, _) = run(
            &lua,
            &budget,
            "local x = 0 for i = 1, 1000 do x = x + i end",
        );
        assert!(r.is_ok() && !over);
        let (r, over, _) = run(
            &lua,
            &budget,
            "local ok, e = xpcall(error, function(e) return 'handled' end, 'x') assert(e == 'handled')",
        );
        assert!(
            r.is_ok() && !over,
            "handlers still run within budget: {r:?}"
        );
    }

    /// Message handlers and `<close>` handlers, each in its own state on its own thread so
    /// a case that escapes the budget is named instead of hanging the test run.
    #[test]
    fn budget_holds_in_message_and_close_handlers() {
        const CASES: &[&str] = &[
            "xpcall(function() error('x') end, function(e) while true do end end)",
            "xpcall(function() while true do end end, function(e) while true do end end)",
            "coroutine.wrap(function() xpcall(error, function() while true do end end) end)()",
            "xpcall(error, function() xpcall(error, function() while true do end end) end)",
            "local x <close> = setmetatable({}, {__close = function() while true do end end}) error('x')",
            "local x <close> = setmetatable({}, {__close = function() while true do end end}) while true do end",
            "do local x <close> = setmetatable({}, {__close = function() while true do end end}) end",
            "local co = coroutine.create(function() local x <close> = setmetatable({}, {__close = function() while true do end end}) coroutine.yield() end) coroutine.resume(co) coroutine.close(co)",
        ];
        let mut escaped = Vec::new();
        for src in CASES {
            let (tx, rx) = std::sync::mpsc::channel();
            let _ = std::thread::spawn(move || {
                let (lua, budget) = state();
                let (r, over, took) = run(&lua, &budget, src);
                let _ = tx.send((r.is_err(), over, took));
            });
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok((true, true, took)) if took < Duration::from_millis(250) => {}
                other => escaped.push(format!("{src}: {other:?}")),
            }
        }
        assert!(escaped.is_empty(), "escaped the budget: {escaped:#?}");
    }

    #[test]
    fn coroutine_created_earlier_is_still_limited() {
        let (lua, budget) = state();
        lua.load("co = coroutine.create(function() coroutine.yield() while true do end end) coroutine.resume(co)")
            .exec()
            .expect("setup");
        let (r, over, _) = run(&lua, &budget, "coroutine.resume(co)");
        assert!(r.is_err() && over);
    }

    #[test]
    fn memory_is_limited() {
        let budget = Budget::new(Duration::from_secs(5));
        let lua = new_state(4 << 20, &budget).expect("state");
        let err = lua
            .load("local t = {} for i = 1, 1e8 do t[i] = i end")
            .exec()
            .expect_err("bomb");
        assert!(matches!(err, mlua::Error::MemoryError(_)), "{err}");
        assert!(lua.used_memory() <= 4 << 20);
        lua.load("x = 1 + 1").exec().expect("state still usable");
    }
}

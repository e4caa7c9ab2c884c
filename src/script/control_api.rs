//! Link control from Lua: `nexus.connect(node, target, {mode=, permanent=}, fn)`,
//! `nexus.disconnect(node, target, fn)`, `nexus.disconnect_all(node, fn)`.
//!
//! Calls return at once; the work runs on the tokio runtime through the same
//! [`LinkControl`](crate::linkctl::LinkControl) as the REST API (validation, rate limit,
//! idempotence, verification, audit as `script:<file name>`). The result comes back through
//! the script's inbox to the callback, or, without one, to the `control_result` event:
//! every function given to `nexus.on("control_result", fn)`, then the script's global
//! `on_control_result(result)`. A reloaded script does not get results of calls made by its
//! previous load.

use mlua::{Function, Lua, Table, Value};
use serde_json::json;

use super::api::ctx;
use super::queue::Command;
use crate::auth::Identity;
use crate::linkctl::{Actor, LinkAction, RawRequest};

/// The global the results are delivered through (internal).
pub const DISPATCH: &str = "__nexus_control_result";
/// Registry table of callbacks waiting, by call id.
const CALLS: &str = "nexus_control_calls";
/// Registry sequence of `nexus.on("control_result", fn)` handlers.
const HANDLERS: &str = "nexus_control_handlers";
/// The event name scripts listen to with `nexus.on`.
pub const EVENT: &str = "control_result";
/// Control calls a script may have waiting at once.
pub const MAX_CONTROL_CALLS: usize = 64;

/// Adds the control functions to `nexus` (before the table is wrapped) and the dispatcher.
pub fn register(lua: &Lua, nexus: &Table) -> mlua::Result<()> {
    lua.set_named_registry_value(CALLS, lua.create_table()?)?;
    lua.set_named_registry_value(HANDLERS, lua.create_table()?)?;
    nexus.set(
        "connect",
        lua.create_function(|lua, args: mlua::MultiValue| call(lua, LinkAction::Connect, args))?,
    )?;
    nexus.set(
        "disconnect",
        lua.create_function(|lua, args: mlua::MultiValue| call(lua, LinkAction::Disconnect, args))?,
    )?;
    nexus.set(
        "disconnect_all",
        lua.create_function(|lua, args: mlua::MultiValue| {
            call(lua, LinkAction::DisconnectAll, args)
        })?,
    )?;
    lua.globals().set(DISPATCH, lua.create_function(dispatch)?)
}

/// A node number as given (validated later, so bad input is audited too).
fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::Integer(i)) => i.to_string(),
        Some(Value::Number(n)) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{n:.0}"),
        Some(Value::String(s)) => s.to_string_lossy(),
        Some(other) => format!("<{}>", other.type_name()),
        None => String::new(),
    }
}

/// Reads the arguments, queues the work; returns `(call_id)` or `(nil, error)`.
fn call(
    lua: &Lua,
    action: LinkAction,
    args: mlua::MultiValue,
) -> mlua::Result<(Option<u64>, Option<String>)> {
    let (raw, callback) = request(action, args)?;
    let id = match reserve(lua, callback)? {
        Ok(id) => id,
        Err(message) => return Ok((None, Some(message))),
    };
    let c = ctx(lua)?;
    let Some(lc) = c.app.linkctl.clone() else {
        return Ok((None, Some("link control is not available here".to_owned())));
    };
    let actor = Actor {
        identity: Identity::script(&c.name),
        source: None,
        forwarded_for: None,
    };
    let (script, inbox) = (c.key.clone(), c.inbox.clone());
    c.rt.spawn(async move {
        let result = result_value(lc.execute(&actor, &raw).await, &raw);
        let (reply, _) = tokio::sync::oneshot::channel();
        inbox.push_command(Command::Call {
            script,
            function: DISPATCH.to_owned(),
            args: vec![json!(id), result],
            reply,
        });
    });
    Ok((Some(id), None))
}

/// The request and the callback (last function argument, or `opts.callback`).
fn request(
    action: LinkAction,
    args: mlua::MultiValue,
) -> mlua::Result<(RawRequest, Option<Function>)> {
    let args: Vec<Value> = args.into_iter().collect();
    let callback = args.iter().rev().find_map(|v| match v {
        Value::Function(f) => Some(f.clone()),
        _ => None,
    });
    let opts = args.iter().find_map(|v| match v {
        Value::Table(t) => Some(t.clone()),
        _ => None,
    });
    let (mode, permanent, opts_callback) = match &opts {
        Some(t) => (
            t.get::<Option<String>>("mode")?,
            t.get::<Option<bool>>("permanent")?,
            t.get::<Option<Function>>("callback")?,
        ),
        None => (None, None, None),
    };
    let connect = action == LinkAction::Connect;
    let raw = RawRequest {
        action,
        node: text(args.first()),
        target: (action != LinkAction::DisconnectAll).then(|| text(args.get(1))),
        mode: mode.filter(|_| connect),
        permanent: permanent.filter(|_| connect),
    };
    Ok((raw, callback.or(opts_callback)))
}

/// A call id, with `callback` kept under it; `Err` when too many calls wait.
fn reserve(lua: &Lua, callback: Option<Function>) -> mlua::Result<Result<u64, String>> {
    let calls: Table = lua.named_registry_value(CALLS)?;
    if calls.pairs::<Value, Value>().count() >= MAX_CONTROL_CALLS {
        return Ok(Err(format!(
            "too many control calls waiting ({MAX_CONTROL_CALLS})"
        )));
    }
    let id: u64 = calls.get::<Option<u64>>("next")?.unwrap_or(0) + 1;
    calls.raw_set("next", id)?;
    if let Some(f) = callback {
        calls.raw_set(id, f)?;
    }
    Ok(Ok(id))
}

/// The result table a script gets: the REST answer plus `ok` and `status`, or the error.
fn result_value(
    result: Result<crate::linkctl::Outcome, crate::linkctl::Refusal>,
    raw: &RawRequest,
) -> serde_json::Value {
    match result {
        Ok(o) => {
            let mut v = serde_json::to_value(&o).unwrap_or_default();
            v["ok"] = json!(true);
            v["status"] = json!(200);
            v
        }
        Err(r) => json!({
            "ok": false,
            "status": r.status,
            "error": r.message,
            "action": raw.action.as_str(),
            "node": raw.node,
            "target": raw.target,
        }),
    }
}

/// `nexus.on("control_result", fn)`: `fn` gets every result that has no callback.
pub fn on_result(lua: &Lua, f: Value) -> mlua::Result<()> {
    let Value::Function(f) = f else {
        return Err(mlua::Error::runtime(format!(
            "nexus.on(\"{EVENT}\", fn): fn must be a function, not {}",
            f.type_name()
        )));
    };
    let handlers: Table = lua.named_registry_value(HANDLERS)?;
    handlers.raw_push(f)
}

/// Hands a result to its callback, or to the `control_result` handlers and the global
/// `on_control_result`.
fn dispatch(lua: &Lua, (id, result): (u64, Value)) -> mlua::Result<()> {
    let calls: Table = lua.named_registry_value(CALLS)?;
    let cb: Option<Function> = calls.raw_get(id)?;
    calls.raw_set(id, Value::Nil)?;
    if let Some(f) = cb {
        return f.call::<()>(result);
    }
    let handlers: Table = lua.named_registry_value(HANDLERS)?;
    for f in handlers.sequence_values::<Function>() {
        f?.call::<()>(result.clone())?;
    }
    if let Ok(Value::Function(f)) = lua.globals().raw_get::<Value>("on_control_result") {
        return f.call::<()>(result);
    }
    Ok(())
}

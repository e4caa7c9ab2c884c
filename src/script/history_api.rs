//! `nexus.history` for Lua (read-only, row-limited: `keyups{…}`, `talkers{…}`) and the
//! durability of `nexus.store` through the history database (`script_store` table).
//!
//! Queries run on the history store's read connection on the Lua thread; they are small
//! (at most [`MAX_ROWS`] rows) and bounded by the script's time budget like any call.

use std::sync::{Arc, Mutex};

use mlua::{Lua, LuaSerdeExt, Table, Value};

use super::ScriptEnv;
use super::api::{TO_LUA, ctx};
use super::store::{KvStore, SharedStore, StoreValue};
use crate::history::query::{self, RangeQuery};

/// Most rows one call returns.
pub const MAX_ROWS: usize = 100;
/// Rows without `limit`.
pub const DEFAULT_ROWS: usize = 20;

/// The `nexus.history` table.
pub fn table(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set(
        "keyups",
        lua.create_function(|lua, args: Option<Table>| {
            let q = range(args)?;
            let rows = with_history(lua, |c| query::keyups(c, &q))?;
            lua.to_value_with(&rows.items, TO_LUA)
        })?,
    )?;
    t.set(
        "talkers",
        lua.create_function(|lua, args: Option<Table>| {
            let q = range(args)?;
            let rows = with_history(lua, |c| query::talkers(c, &q))?;
            lua.to_value_with(&rows, TO_LUA)
        })?,
    )?;
    super::sandbox::wrap_functions(lua, &t, "nexus.history")?;
    Ok(t)
}

fn with_history<R>(
    lua: &Lua,
    f: impl FnOnce(&rusqlite::Connection) -> Result<R, query::QueryError>,
) -> mlua::Result<R> {
    let history = ctx(lua)?
        .app
        .history
        .clone()
        .ok_or_else(|| mlua::Error::runtime("history is disabled (history.enabled: false)"))?;
    history
        .read(f)
        .map_err(|e| mlua::Error::runtime(e.to_string()))
}

/// A time argument: seconds since the epoch (as `nexus.now()` gives) or an RFC 3339 string.
fn time_arg(v: Value, key: &str) -> mlua::Result<Option<u64>> {
    match v {
        Value::Nil => Ok(None),
        Value::Integer(i) if i >= 0 => Ok(Some(i as u64 * 1000)),
        Value::Number(n) if n.is_finite() && n >= 0.0 => Ok(Some((n * 1000.0) as u64)),
        Value::String(s) => query::parse_time(key, &s.to_str()?)
            .map(Some)
            .map_err(|e| mlua::Error::runtime(e.to_string())),
        other => Err(mlua::Error::runtime(format!(
            "{key} must be seconds since 1970 or an RFC 3339 string, not {}",
            other.type_name()
        ))),
    }
}

/// A node or link: a string or a whole number (a value of another type raises, never
/// ignored).
fn id_arg(v: Value, key: &str) -> mlua::Result<Option<String>> {
    match v {
        Value::Nil => Ok(None),
        Value::Integer(i) => Ok(Some(i.to_string())),
        Value::String(s) => Ok(Some(s.to_str()?.to_owned())),
        other => Err(mlua::Error::runtime(format!(
            "{key} must be a string or number, not {}",
            other.type_name()
        ))),
    }
}

fn range(args: Option<Table>) -> mlua::Result<RangeQuery> {
    let mut q = RangeQuery {
        limit: DEFAULT_ROWS,
        ..RangeQuery::default()
    };
    let Some(t) = args else { return Ok(q) };
    q.node = id_arg(t.get("node")?, "node")?;
    q.link = id_arg(t.get("link")?, "link")?;
    q.since_ms = time_arg(t.get("since")?, "since")?;
    q.until_ms = time_arg(t.get("until")?, "until")?;
    q.limit = match t.get::<Value>("limit")? {
        Value::Nil => DEFAULT_ROWS,
        Value::Integer(n) if n >= 1 => (n as usize).min(MAX_ROWS),
        _ => {
            return Err(mlua::Error::runtime(format!(
                "limit must be a whole number from 1 (at most {MAX_ROWS} rows are returned)"
            )));
        }
    };
    Ok(q)
}

/// Persists one `nexus.store` write of the calling script (no-op without history).
pub fn persist_store(lua: &Lua, key: &str, value: Option<&StoreValue>) {
    let Ok(c) = ctx(lua) else { return };
    if let Some(h) = &c.app.history {
        h.store_set(&c.key, key, value.map(encode));
    }
}

fn encode(v: &StoreValue) -> String {
    match v {
        StoreValue::Str(s) => serde_json::Value::String(s.clone()).to_string(),
        StoreValue::Int(i) => i.to_string(),
        StoreValue::Num(n) => serde_json::Number::from_f64(*n)
            .map(|n| {
                let s = n.to_string();
                if s.contains(['.', 'e', 'E']) {
                    s
                } else {
                    format!("{s}.0")
                }
            })
            .unwrap_or_else(|| "null".into()),
        StoreValue::Bool(b) => b.to_string(),
    }
}

fn decode(text: &str) -> Option<StoreValue> {
    match serde_json::from_str::<serde_json::Value>(text).ok()? {
        serde_json::Value::String(s) => Some(StoreValue::Str(s)),
        serde_json::Value::Bool(b) => Some(StoreValue::Bool(b)),
        serde_json::Value::Number(n) if n.is_i64() => n.as_i64().map(StoreValue::Int),
        serde_json::Value::Number(n) => n.as_f64().map(StoreValue::Num),
        _ => None,
    }
}

/// A script's store, filled from the database (empty without history).
pub fn load_store(app: &ScriptEnv, script_key: &str) -> SharedStore {
    let mut kv = KvStore::default();
    if let Some(h) = &app.history {
        let rows = h.read(|c| -> rusqlite::Result<Vec<(String, String)>> {
            let mut st = c.prepare("SELECT key, value FROM script_store WHERE script = ?1")?;
            let rows = st.query_map([script_key], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        });
        match rows {
            Ok(rows) => {
                for (k, v) in rows {
                    if let Some(v) = decode(&v) {
                        let _ = kv.set(&k, Some(v));
                    }
                }
            }
            Err(e) => {
                tracing::warn!("[LUA] cannot read the saved nexus.store of {script_key}: {e}")
            }
        }
    }
    Arc::new(Mutex::new(kv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_values_round_trip_their_types() {
        for v in [
            StoreValue::Str("W1AW \"x\"".into()),
            StoreValue::Int(-42),
            StoreValue::Num(1.0),
            StoreValue::Num(2.5),
            StoreValue::Bool(true),
        ] {
            assert_eq!(decode(&encode(&v)), Some(v.clone()), "{v:?}");
        }
    }
}

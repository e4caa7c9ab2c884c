//! `nexus.store`: a small key-value store per script that survives reloads.
//!
//! The host keeps one [`KvStore`] per script path for the life of the process (a reload or
//! a brief delete-and-recreate by an editor keeps the data). Keys are strings, values are
//! strings, numbers or booleans; assigning `nil` deletes. Sizes are bounded so a script
//! cannot grow the daemon through its store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use mlua::{Lua, MetaMethod, Table, Value};

/// At most this many keys per script.
pub const MAX_KEYS: usize = 1024;
/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Longest string value, in bytes.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// Total size of keys and values, in bytes.
pub const MAX_TOTAL_BYTES: usize = 256 * 1024;

/// A stored value.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreValue {
    Str(String),
    Int(i64),
    Num(f64),
    Bool(bool),
}

impl StoreValue {
    fn size(&self) -> usize {
        match self {
            StoreValue::Str(s) => s.len(),
            _ => 8,
        }
    }

    fn into_lua(self, lua: &Lua) -> mlua::Result<Value> {
        Ok(match self {
            StoreValue::Str(s) => Value::String(lua.create_string(&s)?),
            StoreValue::Int(i) => Value::Integer(i),
            StoreValue::Num(n) => Value::Number(n),
            StoreValue::Bool(b) => Value::Boolean(b),
        })
    }
}

/// One script's data.
#[derive(Debug, Default)]
pub struct KvStore {
    map: BTreeMap<String, StoreValue>,
    bytes: usize,
}

/// A store shared between the host and a script's state.
pub type SharedStore = Arc<Mutex<KvStore>>;

impl KvStore {
    pub fn get(&self, key: &str) -> Option<StoreValue> {
        self.map.get(key).cloned()
    }

    /// Sets (or with `None` removes) a key, within the limits.
    pub fn set(&mut self, key: &str, value: Option<StoreValue>) -> Result<(), String> {
        if key.len() > MAX_KEY_BYTES {
            return Err(format!(
                "nexus.store: key longer than {MAX_KEY_BYTES} bytes"
            ));
        }
        let old = self.map.get(key).map(|v| key.len() + v.size()).unwrap_or(0);
        let Some(value) = value else {
            self.map.remove(key);
            self.bytes -= old;
            return Ok(());
        };
        if value.size() > MAX_VALUE_BYTES {
            return Err(format!(
                "nexus.store: value of {key:?} longer than {MAX_VALUE_BYTES} bytes"
            ));
        }
        if old == 0 && self.map.len() >= MAX_KEYS {
            return Err(format!("nexus.store: full ({MAX_KEYS} keys)"));
        }
        let new = key.len() + value.size();
        if self.bytes - old + new > MAX_TOTAL_BYTES {
            return Err(format!("nexus.store: full ({MAX_TOTAL_BYTES} bytes)"));
        }
        self.bytes = self.bytes - old + new;
        self.map.insert(key.to_owned(), value);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

fn lock(store: &SharedStore) -> std::sync::MutexGuard<'_, KvStore> {
    store.lock().unwrap_or_else(|p| p.into_inner())
}

fn key_of(v: &Value) -> mlua::Result<String> {
    match v {
        Value::String(s) => Ok(s.to_str()?.to_owned()),
        other => Err(mlua::Error::runtime(format!(
            "nexus.store: keys must be strings, not {}",
            other.type_name()
        ))),
    }
}

fn value_of(v: Value) -> mlua::Result<Option<StoreValue>> {
    Ok(Some(match v {
        Value::Nil => return Ok(None),
        Value::String(s) => StoreValue::Str(s.to_str()?.to_owned()),
        Value::Integer(i) => StoreValue::Int(i),
        Value::Number(n) => StoreValue::Num(n),
        Value::Boolean(b) => StoreValue::Bool(b),
        other => {
            return Err(mlua::Error::runtime(format!(
                "nexus.store: values must be strings, numbers or booleans, not {}",
                other.type_name()
            )));
        }
    }))
}

/// The `nexus.store` proxy: an empty table whose metatable reads and writes `store`;
/// `pairs(nexus.store)` iterates a snapshot.
pub fn proxy(lua: &Lua, store: SharedStore) -> mlua::Result<Table> {
    let meta = lua.create_table()?;
    let s = store.clone();
    meta.set(
        MetaMethod::Index.name(),
        lua.create_function(
            move |lua, (_, k): (Value, Value)| match lock(&s).get(&key_of(&k)?) {
                Some(v) => v.into_lua(lua),
                None => Ok(Value::Nil),
            },
        )?,
    )?;
    let s = store.clone();
    meta.set(
        MetaMethod::NewIndex.name(),
        lua.create_function(move |lua, (_, k, v): (Value, Value, Value)| {
            let key = key_of(&k)?;
            let value = value_of(v)?;
            lock(&s)
                .set(&key, value.clone())
                .map_err(mlua::Error::runtime)?;
            // Durable through the history database (a no-op without it).
            super::history_api::persist_store(lua, &key, value.as_ref());
            Ok(())
        })?,
    )?;
    let s = store;
    meta.set(
        MetaMethod::Pairs.name(),
        lua.create_function(move |lua, _: Value| {
            let snapshot = lua.create_table()?;
            let entries: Vec<(String, StoreValue)> = lock(&s)
                .map
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (k, v) in entries {
                snapshot.raw_set(k, v.into_lua(lua)?)?;
            }
            let next: mlua::Function = lua.globals().get("next")?;
            Ok((next, snapshot, Value::Nil))
        })?,
    )?;
    super::sandbox::wrap_functions(lua, &meta, "nexus.store")?;
    meta.set("__metatable", false)?;
    let t = lua.create_table()?;
    t.set_metatable(Some(meta))?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_delete_frees_space() {
        let mut s = KvStore::default();
        s.set("a", Some(StoreValue::Int(1))).expect("set");
        assert!(
            s.set(&"k".repeat(MAX_KEY_BYTES + 1), Some(StoreValue::Bool(true)))
                .is_err()
        );
        assert!(
            s.set(
                "big",
                Some(StoreValue::Str("x".repeat(MAX_VALUE_BYTES + 1)))
            )
            .is_err()
        );
        for i in 0..MAX_KEYS - 1 {
            s.set(&format!("k{i}"), Some(StoreValue::Bool(true)))
                .expect("room");
        }
        assert!(s.set("one-too-many", Some(StoreValue::Int(0))).is_err());
        s.set("a", None).expect("delete");
        s.set("one-too-many", Some(StoreValue::Int(0)))
            .expect("room again");
        assert_eq!(s.len(), MAX_KEYS);
    }

    #[test]
    fn proxy_reads_writes_and_iterates() {
        let budget = crate::script::sandbox::Budget::new(std::time::Duration::from_secs(1));
        let lua = crate::script::sandbox::new_state(1 << 20, &budget).expect("state");
        let store: SharedStore = Arc::default();
        lua.globals()
            .set("store", proxy(&lua, store.clone()).expect("proxy"))
            .expect("global");
        lua.load(
            r#"
            store.count = (store.count or 0) + 1
            store.name = "W1AW"
            store.on = true
            store.gone = 1 store.gone = nil
            local n = 0 for k, v in pairs(store) do n = n + 1 end
            assert(n == 3, n)
            assert(not pcall(function() store.t = {} end))
            assert(not pcall(function() store[1] = 1 end))
            "#,
        )
        .exec()
        .expect("script");
        assert_eq!(lock(&store).get("count"), Some(StoreValue::Int(1)));
        assert_eq!(
            lock(&store).get("name"),
            Some(StoreValue::Str("W1AW".into()))
        );
    }
}

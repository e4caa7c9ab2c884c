//! Change events as Lua tables, built fast.
//!
//! The obvious way (`serde` into a Lua value) costs a protected call per field once a
//! memory limit is set, about 16 µs per event. Here the fields are handed as arguments to
//! one small Lua constructor, and the strings that repeat (kinds, servers, nodes,
//! callsigns…) are created once per script and reused: a few microseconds per event. The
//! result is the same table serde would give (a test holds both side by side), and the
//! exhaustive destructuring below stops the build if `ChangeEvent` or `LinkView` gain a
//! field without being taught here.

use std::collections::HashMap;

use mlua::{Function, Lua, LuaSerdeExt, LuaString, MultiValue, Value};
use serde::Serialize;

use super::api::TO_LUA;
use crate::state::{ChangeEvent, LinkView};

/// Distinct strings kept per script (then the cache starts over).
const MAX_CACHED: usize = 4096;

const CONSTRUCTOR: &str = r#"
return function(seq, kind, time_ms, server, node, duration_seconds, err, fields, has_link,
                lnode, lkind, ip, direction, elapsed, connected_seconds, mode, state, keyed,
                last_keyed_seconds, last_unkeyed_seconds, reconnects, callsign, description,
                location, keyups, keyed_seconds_total, keyups_today, talk_seconds_today)
  local link
  if has_link then
    link = {
      node = lnode, kind = lkind, ip = ip, direction = direction, elapsed = elapsed,
      connected_seconds = connected_seconds, mode = mode, state = state, keyed = keyed,
      last_keyed_seconds = last_keyed_seconds, last_unkeyed_seconds = last_unkeyed_seconds,
      reconnects = reconnects, callsign = callsign, description = description,
      location = location, keyups = keyups, keyed_seconds_total = keyed_seconds_total,
      keyups_today = keyups_today, talk_seconds_today = talk_seconds_today,
    }
  end
  return {
    seq = seq, kind = kind, time_ms = time_ms, server = server, node = node, link = link,
    duration_seconds = duration_seconds, error = err, fields = fields,
  }
end
"#;

/// Builds event tables for one script's state.
pub struct EventBuilder {
    constructor: Function,
    strings: HashMap<Box<str>, LuaString>,
    args: Vec<Value>,
}

impl EventBuilder {
    pub fn new(lua: &Lua) -> mlua::Result<EventBuilder> {
        let constructor = lua.load(CONSTRUCTOR).set_name("=event").eval()?;
        Ok(EventBuilder {
            constructor,
            strings: HashMap::new(),
            args: Vec::with_capacity(28),
        })
    }

    /// The event as a Lua table.
    pub fn build(&mut self, lua: &Lua, e: &ChangeEvent) -> mlua::Result<Value> {
        let ChangeEvent {
            seq,
            kind,
            time_ms,
            server,
            node,
            link,
            duration_seconds,
            error,
            fields,
        } = e;
        let mut args = std::mem::take(&mut self.args);
        args.clear();
        args.push(int(*seq));
        args.push(self.string(lua, kind.as_str())?);
        args.push(int(*time_ms));
        args.push(self.string(lua, server)?);
        args.push(self.opt_string(lua, node.as_deref())?);
        args.push(duration_seconds.map(Value::Number).unwrap_or(Value::Nil));
        args.push(match error {
            Some(text) => Value::String(lua.create_string(text)?),
            None => Value::Nil,
        });
        args.push(if fields.is_empty() {
            Value::Nil
        } else {
            lua.to_value_with(fields, TO_LUA)?
        });
        args.push(Value::Boolean(link.is_some()));
        if let Some(l) = link {
            self.push_link(lua, l, &mut args)?;
        }
        let result = self.constructor.call(MultiValue::from_iter(args.drain(..)));
        self.args = args;
        result
    }

    fn push_link(&mut self, lua: &Lua, l: &LinkView, args: &mut Vec<Value>) -> mlua::Result<()> {
        let LinkView {
            node,
            kind,
            ip,
            direction,
            elapsed,
            connected_seconds,
            mode,
            state,
            keyed,
            last_keyed_seconds,
            last_unkeyed_seconds,
            reconnects,
            callsign,
            description,
            location,
            keyups,
            keyed_seconds_total,
            keyups_today,
            talk_seconds_today,
        } = l;
        args.push(self.string(lua, node)?);
        args.push(self.wire(lua, kind)?);
        args.push(self.opt_string(lua, ip.as_deref())?);
        args.push(self.opt_wire(lua, direction.as_ref())?);
        args.push(Value::String(lua.create_string(elapsed)?));
        args.push(int(*connected_seconds));
        args.push(self.opt_wire(lua, mode.as_ref())?);
        args.push(self.opt_wire(lua, state.as_ref())?);
        args.push(Value::Boolean(*keyed));
        args.push(last_keyed_seconds.map(int).unwrap_or(Value::Nil));
        args.push(last_unkeyed_seconds.map(int).unwrap_or(Value::Nil));
        args.push(Value::Integer(i64::from(*reconnects)));
        args.push(self.opt_string(lua, callsign.as_deref())?);
        args.push(self.opt_string(lua, description.as_deref())?);
        args.push(self.opt_string(lua, location.as_deref())?);
        args.push(int(*keyups));
        args.push(Value::Number(*keyed_seconds_total));
        args.push(int(*keyups_today));
        args.push(Value::Number(*talk_seconds_today));
        Ok(())
    }

    /// A Lua string for `s`, created once and reused.
    fn string(&mut self, lua: &Lua, s: &str) -> mlua::Result<Value> {
        if let Some(v) = self.strings.get(s) {
            return Ok(Value::String(v.clone()));
        }
        if self.strings.len() >= MAX_CACHED {
            self.strings.clear();
        }
        let v = lua.create_string(s)?;
        self.strings.insert(s.into(), v.clone());
        Ok(Value::String(v))
    }

    fn opt_string(&mut self, lua: &Lua, s: Option<&str>) -> mlua::Result<Value> {
        match s {
            Some(s) => self.string(lua, s),
            None => Ok(Value::Nil),
        }
    }

    /// An enum as its serde name (`"allstar"`, `"OUT"`, `"T"`…).
    fn wire<T: Serialize>(&mut self, lua: &Lua, v: &T) -> mlua::Result<Value> {
        match serde_json::to_value(v) {
            Ok(serde_json::Value::String(s)) => self.string(lua, &s),
            _ => Ok(Value::Nil),
        }
    }

    fn opt_wire<T: Serialize>(&mut self, lua: &Lua, v: Option<&T>) -> mlua::Result<Value> {
        match v {
            Some(v) => self.wire(lua, v),
            None => Ok(Value::Nil),
        }
    }
}

fn int(v: u64) -> Value {
    Value::Integer(i64::try_from(v).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ChangeKind, Direction, LinkKind, LinkState, Mode};

    fn full_event() -> ChangeEvent {
        let mut e = ChangeEvent::new(ChangeKind::LinkUpdated, "hub", Some("1999"));
        e.seq = 42;
        e.duration_seconds = Some(1.5);
        e.error = Some("why".into());
        e.fields = vec!["mode", "ip"];
        e.link = Some(LinkView {
            node: "2000".into(),
            kind: LinkKind::Echolink,
            ip: Some("192.0.2.1".into()),
            direction: Some(Direction::Out),
            elapsed: "01:02:03".into(),
            connected_seconds: 3723,
            mode: Some(Mode::T),
            state: Some(LinkState::Established),
            keyed: true,
            last_keyed_seconds: Some(0),
            last_unkeyed_seconds: Some(9),
            reconnects: 2,
            callsign: Some("W1AW".into()),
            description: Some("Hartford".into()),
            location: Some("CT".into()),
            keyups: 7,
            keyed_seconds_total: 12.25,
            ..LinkView::default()
        });
        e
    }

    #[test]
    fn same_table_as_serde() {
        let lua = Lua::new();
        let mut b = EventBuilder::new(&lua).expect("builder");
        let mut sparse = ChangeEvent::new(ChangeKind::AmiDisconnected, "default", None);
        sparse.seq = 1;
        let mut no_options = full_event();
        if let Some(l) = no_options.link.as_mut() {
            (l.ip, l.direction, l.mode, l.state, l.callsign) = (None, None, None, None, None);
            (l.last_keyed_seconds, l.last_unkeyed_seconds) = (None, None);
        }
        for e in [full_event(), sparse, no_options] {
            for _ in 0..2 {
                let fast: serde_json::Value = lua
                    .from_value(b.build(&lua, &e).expect("build"))
                    .expect("json");
                let slow: serde_json::Value = lua
                    .from_value(lua.to_value_with(&e, TO_LUA).expect("serde"))
                    .expect("json");
                assert_eq!(fast, slow);
            }
        }
        // With every field present, it is exactly the WebSocket event.
        let e = full_event();
        let fast: serde_json::Value = lua
            .from_value(b.build(&lua, &e).expect("build"))
            .expect("json");
        assert_eq!(fast, serde_json::to_value(&e).expect("websocket json"));
    }
}

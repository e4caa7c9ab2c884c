//! What the bridges publish, shared by every broker: topic names and JSON payloads.
//!
//! - `{prefix}/{server}/{node}/state`: the node as `/api/nodes/{id}` shows it, with
//!   `origin` (the publishing daemon), `epoch` and `seq` (the change stream's position
//!   when the state was read). Retained.
//! - `{prefix}/{server}/{node}/event`: the WebSocket `event` frame of each change
//!   (`{"type":"event","seq":N,"epoch":"…","event":{…}}`) plus `origin`. Changes that
//!   concern a server, not a node (`ami_connected`…), use the node level `_server`.
//! - `{prefix}/{server}/{node}/alert`: the alert as `/api/alerts` shows it, plus `origin`;
//!   alerts about no node go to `{prefix}/daemon/{name}/alert`.
//! - `{prefix}/daemon/{name}/status`: `online`, or `offline` (last will). Retained.
//!
//! Topic levels taken from names (`server`, `node`) have `/`, `+`, `#` and control
//! characters replaced by `_`, so a name can never add a level or a wildcard.

use std::fmt::Write as _;

use serde::Serialize;

use crate::alerts::Alert;
use crate::state::{NodeView, Published};

/// The node level used for changes that concern a whole server.
pub const SERVER_LEVEL: &str = "_server";

/// One topic level made from a name: never empty, never a wildcard or a separator.
pub fn level(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#') || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if s.is_empty() { "_".into() } else { s }
}

/// Topic names under one prefix, for one daemon.
#[derive(Debug, Clone)]
pub struct Topics {
    pub prefix: String,
    /// This daemon's name (`{prefix}/daemon/{name}/…`).
    pub name: String,
    /// The separator: `/` for MQTT, `.` for NATS subjects.
    pub sep: char,
}

impl Topics {
    fn node_topic(&self, server: &str, node: &str, leaf: &str) -> String {
        let s = self.sep;
        format!(
            "{}{s}{}{s}{}{s}{leaf}",
            self.prefix,
            level(server),
            level(node)
        )
    }

    pub fn state(&self, server: &str, node: &str) -> String {
        self.node_topic(server, node, "state")
    }

    pub fn event(&self, server: &str, node: &str) -> String {
        self.node_topic(server, node, "event")
    }

    pub fn alert(&self, server: &str, node: &str) -> String {
        self.node_topic(server, node, "alert")
    }

    /// `{prefix}/daemon/{name}/{leaf}`.
    pub fn daemon(&self, leaf: &str) -> String {
        let s = self.sep;
        format!("{}{s}daemon{s}{}{s}{leaf}", self.prefix, level(&self.name))
    }

    pub fn status(&self) -> String {
        self.daemon("status")
    }
}

/// The retained state message: the REST node model plus where it stands in the stream.
#[derive(Serialize)]
struct StateMsg<'a> {
    #[serde(flatten)]
    node: &'a NodeView,
    epoch: &'a str,
    seq: u64,
}

/// The state payload of `node` (its `origin` set to `name`).
pub fn state_json(node: &NodeView, name: &str, epoch: &str, seq: u64) -> String {
    let mut node = node.clone();
    node.origin = Some(name.to_owned());
    serde_json::to_string(&StateMsg {
        node: &node,
        epoch,
        seq,
    })
    .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// The WebSocket `event` frame of a change, with `origin` (built like `http::ws`'s).
pub fn event_json(p: &Published, epoch: &str, name: &str) -> String {
    let mut s = String::with_capacity(p.json.len() + 96 + epoch.len() + name.len());
    let origin = serde_json::to_string(name).unwrap_or_else(|_| "\"\"".into());
    let epoch = serde_json::to_string(epoch).unwrap_or_else(|_| "\"\"".into());
    let _ = write!(
        s,
        "{{\"type\":\"event\",\"seq\":{},\"epoch\":{epoch},\"origin\":{origin},\"event\":",
        p.event.seq
    );
    s.push_str(&p.json);
    s.push('}');
    s
}

/// The alert message.
#[derive(Serialize)]
struct AlertMsg<'a> {
    #[serde(flatten)]
    alert: &'a Alert,
    origin: &'a str,
}

pub fn alert_json(alert: &Alert, name: &str) -> String {
    serde_json::to_string(&AlertMsg {
        alert,
        origin: name,
    })
    .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// One Home Assistant discovery message: where it goes and what it says.
pub struct Discovery {
    pub topic: String,
    pub payload: String,
}

/// Home Assistant MQTT discovery for one node: a binary sensor `transmitting`, sensors
/// `links` (how many) and `talker` (the link keyed now, or `none`), all read from the
/// node's retained state, available while the daemon's status is `online`.
pub fn discovery(topics: &Topics, disc_prefix: &str, node: &NodeView) -> Vec<Discovery> {
    let object: String = format!("allstar_{}_{}", topics.name, node.node_id)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let state = topics.state(&node.server, &node.node_id);
    let device = serde_json::json!({
        "identifiers": [object],
        "name": format!("AllStar node {}", node.node_id),
        "manufacturer": "AllStar Nexus",
        "via_device": topics.name,
    });
    let entity = |kind: &str, key: &str, title: &str, template: &str| {
        let mut v = serde_json::json!({
            "name": title,
            "unique_id": format!("{object}_{key}"),
            "object_id": format!("{object}_{key}"),
            "state_topic": state,
            "value_template": template,
            "availability_topic": topics.status(),
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
        });
        if kind == "binary_sensor" {
            v["payload_on"] = "ON".into();
            v["payload_off"] = "OFF".into();
        }
        Discovery {
            topic: format!("{disc_prefix}/{kind}/{object}/{key}/config"),
            payload: v.to_string(),
        }
    };
    vec![
        entity(
            "binary_sensor",
            "transmitting",
            "Transmitting",
            "{{ 'ON' if value_json.tx_keyed else 'OFF' }}",
        ),
        entity(
            "sensor",
            "links",
            "Links",
            "{{ value_json.links | length }}",
        ),
        entity(
            "sensor",
            "talker",
            "Talker",
            "{{ (value_json.links | selectattr('keyed') | map(attribute='node') | list + ['none']) | first }}",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ChangeEvent, ChangeKind};

    fn topics() -> Topics {
        Topics {
            prefix: "allstar".into(),
            name: "hub".into(),
            sep: '/',
        }
    }

    #[test]
    fn names_cannot_add_levels_or_wildcards() {
        let t = topics();
        assert_eq!(t.state("main", "1999"), "allstar/main/1999/state");
        assert_eq!(t.event("a/b", "+#"), "allstar/a_b/__/event");
        assert_eq!(t.status(), "allstar/daemon/hub/status");
        assert_eq!(level(""), "_");
        let nats = Topics { sep: '.', ..t };
        assert_eq!(nats.alert("main", "1999"), "allstar.main.1999.alert");
    }

    #[test]
    fn the_event_payload_is_the_websocket_frame_with_its_origin() {
        let mut ev = ChangeEvent::new(ChangeKind::TxKeyed, "main", Some("1999"));
        ev.seq = 7;
        let p = Published::new(ev);
        let json: serde_json::Value =
            serde_json::from_str(&event_json(&p, "e-1", "hub")).expect("json");
        assert_eq!(json["type"], "event");
        assert_eq!(json["seq"], 7);
        assert_eq!(json["epoch"], "e-1");
        assert_eq!(json["origin"], "hub");
        assert_eq!(json["event"]["kind"], "tx_keyed");
        assert_eq!(json["event"]["node"], "1999");
    }
}

//! Every node's view encoded as JSON in one pass, for `GET /api/nodes` on a fleet.
//!
//! [`StateStore::nodes`] builds a `Vec<NodeView>` of the whole model and the caller then
//! serialises it: at 5,000 nodes that is 5,000 views (≈ 15 allocations each: every name,
//! address and time cloned or formatted) and serde_json escaping every field name of
//! every node (a quarter of the time). [`StateStore::encode_nodes`] writes each node
//! straight from the engine's state into one buffer, under the same single read lock:
//! field names as literal bytes, values as serde_json writes them (strings escaped,
//! floats, enums), so the bytes are exactly what serialising the `NodeView`s gives. The
//! views' field names and meanings stay defined by `NodeView`/`LinkView` (`state::model`)
//! and their values by `NodeState::view`/`Link::view` (the helpers both use); the tests
//! compare the two encodings byte for byte. Times that advance (connected seconds,
//! seconds since a key) are computed at one `now` for the whole snapshot, as before.

use std::io::{self, Write};

use serde::Serialize;

use super::node::{Link, NodeState, rfc3339};
use super::store::{StateStore, TodayCounts};
use crate::astdb::AstDb;
use crate::rpt::types::format_elapsed;

impl StateStore {
    /// Writes `head(seq)`, then the JSON array of every node's view in node-id order,
    /// into `out`, all under one read lock: `seq` is the last change the array contains.
    /// Returns `seq`.
    pub fn encode_nodes(
        &self,
        out: &mut Vec<u8>,
        head: impl FnOnce(&mut Vec<u8>, u64),
    ) -> io::Result<u64> {
        let today = self.today_counts();
        let m = self.read();
        let now = super::change::now_ms();
        head(out, m.seq);
        out.push(b'[');
        for (i, n) in m.nodes.values().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_node(out, n, now, &m.astdb, &today)?;
        }
        out.push(b']');
        Ok(m.seq)
    }
}

/// A value as serde_json writes it.
fn json<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) -> io::Result<()> {
    serde_json::to_writer(&mut *out, v).map_err(io::Error::from)
}

/// An `Option<u64>`: the number or `null`.
fn opt_u64(out: &mut Vec<u8>, v: Option<u64>) -> io::Result<()> {
    match v {
        Some(v) => write!(out, "{v}"),
        None => out.write_all(b"null"),
    }
}

/// One node, as `serde_json` writes `NodeState::view` (with today's totals).
fn write_node(
    out: &mut Vec<u8>,
    n: &NodeState,
    now: u64,
    db: &AstDb,
    today: &TodayCounts,
) -> io::Result<()> {
    out.write_all(b"{\"node_id\":")?;
    json(out, &n.node_id)?;
    out.write_all(b",\"server\":")?;
    json(out, &n.server)?;
    write!(
        out,
        ",\"rx_keyed\":{},\"tx_keyed\":{},\"links\":[",
        n.rx.keyed, n.tx.keyed
    )?;
    for (i, l) in n.links.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_link(out, &n.node_id, l, now, db, today)?;
    }
    out.write_all(b"],\"linked_nodes\":")?;
    json(out, &n.linked_nodes)?;
    out.write_all(b",\"poll_interval_seconds\":")?;
    json(out, &n.poll_interval.as_secs_f64())?;
    out.write_all(b",\"last_poll\":")?;
    match n.last_poll_ms {
        Some(ms) => json(out, &rfc3339(ms))?,
        None => out.write_all(b"null")?,
    }
    write!(
        out,
        ",\"stale\":{},\"tx_keyups\":{},\"tx_seconds_total\":",
        n.stale, n.tx.keyups
    )?;
    json(out, &n.tx.total_now(now))?;
    write!(out, ",\"rx_keyups\":{}", n.rx.keyups)?;
    if let Some(origin) = &n.origin {
        out.write_all(b",\"origin\":")?;
        json(out, origin)?;
    }
    out.push(b'}');
    Ok(())
}

/// One link, as `serde_json` writes `Link::view` (with today's totals).
fn write_link(
    out: &mut Vec<u8>,
    node: &str,
    l: &Link,
    now: u64,
    db: &AstDb,
    today: &TodayCounts,
) -> io::Result<()> {
    let secs = l.connected_seconds(now);
    out.write_all(b"{\"node\":")?;
    json(out, &l.name)?;
    out.write_all(b",\"kind\":")?;
    json(out, &l.kind)?;
    out.write_all(b",\"ip\":")?;
    json(out, &l.ip)?;
    out.write_all(b",\"direction\":")?;
    json(out, &l.direction)?;
    // HH:MM:SS: digits and colons only, nothing to escape.
    write!(
        out,
        ",\"elapsed\":\"{}\",\"connected_seconds\":{secs},\"mode\":",
        format_elapsed(secs)
    )?;
    json(out, &l.mode)?;
    out.write_all(b",\"state\":")?;
    json(out, &l.state)?;
    write!(out, ",\"keyed\":{},\"last_keyed_seconds\":", l.keyed)?;
    opt_u64(out, l.last_keyed_seconds(now))?;
    out.write_all(b",\"last_unkeyed_seconds\":")?;
    opt_u64(out, l.last_unkeyed_seconds(now))?;
    write!(out, ",\"reconnects\":{}", l.reconnects)?;
    if let Some(e) = db.get(&l.name) {
        for (key, v) in [
            (&b",\"callsign\":"[..], &e.callsign),
            (b",\"description\":", &e.description),
            (b",\"location\":", &e.location),
        ] {
            if !v.is_empty() {
                out.write_all(key)?;
                json(out, v)?;
            }
        }
    }
    write!(out, ",\"keyups\":{},\"keyed_seconds_total\":", l.keyups)?;
    json(out, &l.keyed_seconds_total(now))?;
    let (k, s) = if today.is_empty() {
        (0, 0.0)
    } else {
        today
            .get(&(node.to_owned(), l.name.clone()))
            .copied()
            .unwrap_or((0, 0.0))
    };
    write!(out, ",\"keyups_today\":{k},\"talk_seconds_today\":")?;
    json(out, &s)?;
    out.push(b'}');
    Ok(())
}

#[cfg(test)]
mod tests;

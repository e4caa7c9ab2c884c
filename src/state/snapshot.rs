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

use std::io;

use serde::Serialize;

use super::node::{Link, NodeState, rfc3339};
use super::store::{StateStore, TodayCounts};
use crate::astdb::AstDb;

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

/// A whole number in decimal (what serde_json writes; without `fmt`'s machinery).
fn num(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn boolean(out: &mut Vec<u8>, v: bool) {
    out.extend_from_slice(if v { b"true" } else { b"false" });
}

/// An `Option<u64>`: the number or `null`.
fn opt_num(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => num(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// `format_elapsed(secs)` as a JSON string (`"HH:MM:SS"`: nothing to escape).
fn elapsed(out: &mut Vec<u8>, secs: u64) {
    let two = |out: &mut Vec<u8>, v: u64| {
        if v < 10 {
            out.push(b'0');
        }
        num(out, v);
    };
    out.push(b'"');
    two(out, secs / 3600);
    out.push(b':');
    two(out, (secs / 60) % 60);
    out.push(b':');
    two(out, secs % 60);
    out.push(b'"');
}

/// One node, as `serde_json` writes `NodeState::view` (with today's totals).
fn write_node(
    out: &mut Vec<u8>,
    n: &NodeState,
    now: u64,
    db: &AstDb,
    today: &TodayCounts,
) -> io::Result<()> {
    out.extend_from_slice(b"{\"node_id\":");
    json(out, &n.node_id)?;
    out.extend_from_slice(b",\"server\":");
    json(out, &n.server)?;
    out.extend_from_slice(b",\"rx_keyed\":");
    boolean(out, n.rx.keyed);
    out.extend_from_slice(b",\"tx_keyed\":");
    boolean(out, n.tx.keyed);
    out.extend_from_slice(b",\"links\":[");
    for (i, l) in n.links.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_link(out, &n.node_id, l, now, db, today)?;
    }
    out.extend_from_slice(b"],\"linked_nodes\":");
    json(out, &n.linked_nodes)?;
    out.extend_from_slice(b",\"poll_interval_seconds\":");
    json(out, &n.poll_interval.as_secs_f64())?;
    out.extend_from_slice(b",\"last_poll\":");
    match n.last_poll_ms {
        Some(ms) => json(out, &rfc3339(ms))?,
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"stale\":");
    boolean(out, n.stale);
    out.extend_from_slice(b",\"tx_keyups\":");
    num(out, n.tx.keyups);
    out.extend_from_slice(b",\"tx_seconds_total\":");
    json(out, &n.tx.total_now(now))?;
    out.extend_from_slice(b",\"rx_keyups\":");
    num(out, n.rx.keyups);
    if let Some(origin) = &n.origin {
        out.extend_from_slice(b",\"origin\":");
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
    out.extend_from_slice(b"{\"node\":");
    json(out, &l.name)?;
    out.extend_from_slice(b",\"kind\":");
    json(out, &l.kind)?;
    out.extend_from_slice(b",\"ip\":");
    json(out, &l.ip)?;
    out.extend_from_slice(b",\"direction\":");
    json(out, &l.direction)?;
    out.extend_from_slice(b",\"elapsed\":");
    elapsed(out, secs);
    out.extend_from_slice(b",\"connected_seconds\":");
    num(out, secs);
    out.extend_from_slice(b",\"mode\":");
    json(out, &l.mode)?;
    out.extend_from_slice(b",\"state\":");
    json(out, &l.state)?;
    out.extend_from_slice(b",\"keyed\":");
    boolean(out, l.keyed);
    out.extend_from_slice(b",\"last_keyed_seconds\":");
    opt_num(out, l.last_keyed_seconds(now));
    out.extend_from_slice(b",\"last_unkeyed_seconds\":");
    opt_num(out, l.last_unkeyed_seconds(now));
    out.extend_from_slice(b",\"reconnects\":");
    num(out, u64::from(l.reconnects));
    if let Some(e) = db.get(&l.name) {
        for (key, v) in [
            (&b",\"callsign\":"[..], &e.callsign),
            (b",\"description\":", &e.description),
            (b",\"location\":", &e.location),
        ] {
            if !v.is_empty() {
                out.extend_from_slice(key);
                json(out, v)?;
            }
        }
    }
    out.extend_from_slice(b",\"keyups\":");
    num(out, l.keyups);
    out.extend_from_slice(b",\"keyed_seconds_total\":");
    json(out, &l.keyed_seconds_total(now))?;
    let (k, s) = if today.is_empty() {
        (0, 0.0)
    } else {
        today
            .get(&(node.to_owned(), l.name.clone()))
            .copied()
            .unwrap_or((0, 0.0))
    };
    out.extend_from_slice(b",\"keyups_today\":");
    num(out, k);
    out.extend_from_slice(b",\"talk_seconds_today\":");
    json(out, &s)?;
    out.push(b'}');
    Ok(())
}

#[cfg(test)]
mod tests;

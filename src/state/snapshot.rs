//! Every node's view encoded as JSON in one pass, for `GET /api/nodes` on a fleet.
//!
//! [`StateStore::nodes`] builds a `Vec<NodeView>` of the whole model and the caller then
//! serialises it: at 5,000 nodes that is 5,000 views (≈ 15 allocations each) alive at
//! once and a 4.4 MiB buffer grown by doubling. [`StateStore::encode_nodes`] makes one
//! node's view at a time, writes it into the caller's buffer and drops it, under the same
//! single read lock, so the bytes are exactly what serialising the `Vec<NodeView>` would
//! give (the views and their field names are still `NodeView`'s, `state::model`). Times
//! that advance (connected seconds, seconds since a key) are computed at one `now` for
//! the whole snapshot, as before.

use std::io;

use super::model::NodeView;
use super::store::{StateStore, TodayCounts};

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
            let mut view = n.view(now, &m.astdb);
            add_today(&today, &mut view);
            serde_json::to_writer(&mut *out, &view)?;
        }
        out.push(b']');
        Ok(m.seq)
    }
}

/// Fills `keyups_today` / `talk_seconds_today` of a view's links from the history
/// store's totals (as `StateStore::nodes` does).
fn add_today(today: &TodayCounts, view: &mut NodeView) {
    if today.is_empty() {
        return;
    }
    for l in &mut view.links {
        if let Some(&(k, s)) = today.get(&(view.node_id.clone(), l.node.clone())) {
            l.keyups_today = k;
            l.talk_seconds_today = s;
        }
    }
}

#[cfg(test)]
mod tests;

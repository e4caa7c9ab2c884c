//! The shared read side of the node model.
//!
//! The state engine is the only writer. Readers (REST, WebSocket snapshots, Lua's
//! `nexus.nodes()`) take a short read lock and get plain views; they never wait on AMI.
//! Changes are published while the write lock is held, so a snapshot taken together with
//! a subscription ([`StateStore::subscribe_with_snapshot`]) has no gap and no overlap, and
//! the replay buffer serves clients resuming with `?since=SEQ`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::broadcast;

use super::change::{ChangeEvent, Published};
use super::model::{NodeView, VoterSnapshot};
use super::node::NodeState;
use crate::ami::ConnectionStatus;
use crate::astdb::AstDb;

/// Everything behind the lock.
pub(crate) struct Model {
    pub nodes: BTreeMap<String, NodeState>,
    pub servers: BTreeMap<String, ConnectionStatus>,
    /// Node names for link views.
    pub astdb: Arc<AstDb>,
    /// The last VoterStatus result of each node asked about.
    pub voters: BTreeMap<String, VoterSnapshot>,
    /// Sequence number of the last published change.
    pub seq: u64,
    replay: VecDeque<Arc<Published>>,
    replay_cap: usize,
    /// What the replay buffer holds, estimated ([`replay_cost`]), and its limit.
    replay_bytes: usize,
    replay_max_bytes: usize,
}

/// The replay buffer's default size limit (config `websocket.replay_buffer_bytes`).
pub use crate::config::DEFAULT_REPLAY_BYTES;

/// What one change held by the replay buffer costs: its JSON, about as much again for the
/// event's own strings, and the fixed parts.
fn replay_cost(p: &Published) -> usize {
    2 * p.json.len() + std::mem::size_of::<Published>() + 16
}

/// Per-link totals for today, kept by the history store: (node, link) → (keyups, seconds).
pub type TodayCounts = std::collections::HashMap<(String, String), (u64, f64)>;

/// The shared model. Cheap to clone.
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<RwLock<Model>>,
    tx: broadcast::Sender<Arc<Published>>,
    /// This run's id: sequence numbers only mean something within one epoch.
    epoch: Arc<str>,
    /// Today's per-link totals (history, installed by the engine): copied into link views
    /// when they are made.
    today: Arc<RwLock<Arc<TodayCounts>>>,
}

/// A new per-run id: the start time, the process id and a counter (several stores in one
/// process, as in tests, each get their own).
fn new_epoch() -> Arc<str> {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{:x}-{:x}-{n:x}",
        super::change::now_ms(),
        std::process::id()
    )
    .into()
}

/// What a resuming client gets.
pub enum Replay {
    /// Every change after the requested sequence number, in order.
    Changes(Vec<Arc<Published>>),
    /// The requested point is older than the buffer (or in the future): take a snapshot.
    TooOld,
}

impl StateStore {
    /// An empty model; `replay_cap` changes are kept for resuming clients, and the
    /// broadcast channel holds `channel_cap` changes for slow subscribers.
    pub fn new(replay_cap: usize, channel_cap: usize) -> StateStore {
        let (tx, _) = broadcast::channel(channel_cap.max(16));
        let model = Model {
            nodes: BTreeMap::new(),
            servers: BTreeMap::new(),
            astdb: Arc::new(AstDb::default()),
            voters: BTreeMap::new(),
            seq: 0,
            replay: VecDeque::with_capacity(replay_cap.min(65_536)),
            replay_cap: replay_cap.max(1),
            replay_bytes: 0,
            replay_max_bytes: DEFAULT_REPLAY_BYTES,
        };
        StateStore {
            inner: Arc::new(RwLock::new(model)),
            tx,
            epoch: new_epoch(),
            today: Arc::default(),
        }
    }

    /// Limits the replay buffer to about `bytes` (besides its count, `replay_cap`): a fleet's
    /// changes are large, and a resuming client beyond the buffer gets a snapshot anyway.
    pub fn limit_replay_bytes(&self, bytes: usize) {
        let mut m = self.write();
        m.replay_max_bytes = bytes.max(1);
        m.trim_replay();
    }

    /// Installs today's per-link totals. Only the engine calls this: the history writer
    /// sends them as `EngineInput::Today`.
    pub(super) fn set_link_today(&self, counts: TodayCounts) {
        *self.today.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(counts);
    }

    /// Fills `keyups_today` / `talk_seconds_today` of every link from the cached totals.
    fn with_today(&self, mut views: Vec<NodeView>) -> Vec<NodeView> {
        let today = self.today.read().unwrap_or_else(|p| p.into_inner()).clone();
        if today.is_empty() {
            return views;
        }
        for n in &mut views {
            for l in &mut n.links {
                if let Some(&(k, s)) = today.get(&(n.node_id.clone(), l.node.clone())) {
                    l.keyups_today = k;
                    l.talk_seconds_today = s;
                }
            }
        }
        views
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Model> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, Model> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every node, in node-id order.
    pub fn nodes(&self) -> Vec<NodeView> {
        let views = {
            let m = self.read();
            let now = super::change::now_ms();
            m.nodes.values().map(|n| n.view(now, &m.astdb)).collect()
        };
        self.with_today(views)
    }

    /// One node.
    pub fn node(&self, id: &str) -> Option<NodeView> {
        let now = super::change::now_ms();
        let view = {
            let m = self.read();
            m.nodes.get(id).map(|n| n.view(now, &m.astdb))
        };
        view.and_then(|v| self.with_today(vec![v]).pop())
    }

    /// The ids of every node.
    pub fn node_ids(&self) -> Vec<String> {
        self.read().nodes.keys().cloned().collect()
    }

    /// This run's id (a short string, different on every start and for every store):
    /// WebSocket clients resume with `?since=SEQ&epoch=EPOCH`.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The sequence number of the last change.
    pub fn seq(&self) -> u64 {
        self.read().seq
    }

    /// The last voter receivers recorded for a node.
    pub fn voter(&self, node: &str) -> Option<VoterSnapshot> {
        self.read().voters.get(node).cloned()
    }

    /// The status of every AMI server.
    pub fn servers(&self) -> Vec<ConnectionStatus> {
        self.read().servers.values().cloned().collect()
    }

    /// Subscribes to changes (from the next one on).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }

    /// A snapshot, its sequence number, and a subscription that starts right after it.
    pub fn subscribe_with_snapshot(
        &self,
    ) -> (u64, Vec<NodeView>, broadcast::Receiver<Arc<Published>>) {
        let (seq, views, rx) = {
            let m = self.read();
            let now = super::change::now_ms();
            let rx = self.tx.subscribe();
            (
                m.seq,
                m.nodes.values().map(|n| n.view(now, &m.astdb)).collect(),
                rx,
            )
        };
        (seq, self.with_today(views), rx)
    }

    /// The changes after `since`, if the buffer still holds all of them, with a
    /// subscription that continues right after the last one.
    pub fn replay_since(&self, since: u64) -> (Replay, broadcast::Receiver<Arc<Published>>) {
        let m = self.read();
        let rx = self.tx.subscribe();
        if since > m.seq {
            return (Replay::TooOld, rx);
        }
        if since == m.seq {
            return (Replay::Changes(Vec::new()), rx);
        }
        let oldest = m.replay.front().map(|p| p.event.seq).unwrap_or(u64::MAX);
        if since + 1 < oldest {
            return (Replay::TooOld, rx);
        }
        let out = m
            .replay
            .iter()
            .filter(|p| p.event.seq > since)
            .cloned()
            .collect();
        (Replay::Changes(out), rx)
    }
}

impl Model {
    /// Numbers, records and broadcasts one change. Called with the write lock held.
    pub(crate) fn publish(
        &mut self,
        tx: &broadcast::Sender<Arc<Published>>,
        mut event: ChangeEvent,
    ) -> Arc<Published> {
        self.seq += 1;
        event.seq = self.seq;
        let p = Published::new(event);
        self.replay_bytes += replay_cost(&p);
        self.replay.push_back(p.clone());
        self.trim_replay();
        let _ = tx.send(p.clone());
        p
    }

    /// Drops the oldest changes until the replay buffer is within its count and size (the
    /// newest change always stays).
    fn trim_replay(&mut self) {
        while self.replay.len() > 1
            && (self.replay.len() > self.replay_cap || self.replay_bytes > self.replay_max_bytes)
        {
            if let Some(old) = self.replay.pop_front() {
                self.replay_bytes = self.replay_bytes.saturating_sub(replay_cost(&old));
            }
        }
    }
}

impl StateStore {
    /// Applies `f` to the model under the write lock; `f` publishes through the given
    /// sender. Only the state engine calls this (it is private to `state`).
    pub(super) fn update<R>(
        &self,
        f: impl FnOnce(&mut Model, &broadcast::Sender<Arc<Published>>) -> R,
    ) -> R {
        let mut m = self.write();
        f(&mut m, &self.tx)
    }
}

impl StateStore {
    /// Today's per-link totals as last installed (`state::snapshot` encodes with them).
    pub(crate) fn today_counts(&self) -> Arc<TodayCounts> {
        self.today.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ChangeKind;

    fn publish(store: &StateStore, n: usize) {
        for _ in 0..n {
            let event = ChangeEvent::new(ChangeKind::TxKeyed, "main", Some("1999"));
            store.update(|m, tx| m.publish(tx, event));
        }
    }

    fn replayable(store: &StateStore) -> usize {
        match store.replay_since(0).0 {
            Replay::Changes(c) => c.len(),
            Replay::TooOld => store.read().replay.len(),
        }
    }

    #[test]
    fn the_replay_buffer_keeps_the_newest_changes_within_its_count_and_size() {
        let store = StateStore::new(100, 1024);
        publish(&store, 150);
        assert_eq!(replayable(&store), 100, "the count limit");

        // A size limit of about 20 changes: the oldest go, the newest stay in order.
        let cost = replay_cost(&store.read().replay[0]);
        store.limit_replay_bytes(20 * cost + cost / 2);
        assert_eq!(replayable(&store), 20);
        publish(&store, 30);
        let m = store.read();
        assert_eq!(m.replay.len(), 20);
        assert_eq!(m.replay.back().map(|p| p.event.seq), Some(180));
        let sum: usize = m.replay.iter().map(|p| replay_cost(p)).sum();
        assert_eq!(m.replay_bytes, sum, "the running size follows");
        drop(m);

        // A client 10 changes behind resumes; one 30 behind gets a snapshot.
        assert!(matches!(store.replay_since(170).0, Replay::Changes(c) if c.len() == 10));
        assert!(matches!(store.replay_since(150).0, Replay::TooOld));
    }
}

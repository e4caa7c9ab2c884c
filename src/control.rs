//! Commands back into the daemon, shared by the REST API and Lua: poll now, change a
//! node's polling interval, and query voter receivers. Every value is checked here before
//! anything reaches AMI (node ids must be configured nodes).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::ami::{Action, ActionError, AmiHandle};
use crate::metrics::Metrics;
use crate::poller::PollerHandle;
use crate::rpt::{VoterReceiver, parse_voter_status};
use crate::state::StateStore;
use crate::state::change::now_ms;

/// Why a command was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ControlError {
    #[error("unknown node {0:?}: it is not in the configuration")]
    UnknownNode(String),
    #[error("polling is not running for node {0}")]
    NoPoller(String),
    #[error("invalid interval {0}: give seconds between 1 and 3600")]
    BadInterval(f64),
    #[error("{0}")]
    Ami(#[from] ActionError),
    #[error("unreadable VoterStatus reply: {0}")]
    Parse(String),
}

/// The last voter receivers seen for a node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VoterSnapshot {
    pub node: String,
    /// When the receivers were read (ms since the Unix epoch).
    pub time_ms: u64,
    /// The receiver currently voted (the winner), if any.
    pub voted: Option<String>,
    pub receivers: Vec<VoterReceiver>,
}

struct Inner {
    pollers: BTreeMap<String, PollerHandle>,
    servers: BTreeMap<String, AmiHandle>,
    node_server: BTreeMap<String, String>,
    voter: Mutex<BTreeMap<String, VoterSnapshot>>,
    store: StateStore,
    metrics: Metrics,
}

/// The command surface. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

impl Control {
    /// Builds the command surface over the running pollers and AMI sessions.
    pub fn new(
        pollers: BTreeMap<String, PollerHandle>,
        servers: BTreeMap<String, AmiHandle>,
        node_server: BTreeMap<String, String>,
        store: StateStore,
        metrics: Metrics,
    ) -> Control {
        Control {
            inner: Arc::new(Inner {
                pollers,
                servers,
                node_server,
                voter: Mutex::new(BTreeMap::new()),
                store,
                metrics,
            }),
        }
    }

    fn check_node(&self, node: &str) -> Result<(), ControlError> {
        if self.inner.node_server.contains_key(node) {
            Ok(())
        } else {
            Err(ControlError::UnknownNode(node.chars().take(32).collect()))
        }
    }

    /// The AMI sessions, by server name.
    pub fn servers(&self) -> &BTreeMap<String, AmiHandle> {
        &self.inner.servers
    }

    /// The AMI session a node lives on.
    pub fn ami_for(&self, node: &str) -> Result<&AmiHandle, ControlError> {
        self.check_node(node)?;
        self.inner
            .node_server
            .get(node)
            .and_then(|s| self.inner.servers.get(s))
            .ok_or_else(|| ControlError::UnknownNode(node.to_owned()))
    }

    /// Asks the node's poller to poll at once.
    pub fn poll_now(&self, node: &str) -> Result<(), ControlError> {
        self.check_node(node)?;
        let p = self
            .inner
            .pollers
            .get(node)
            .ok_or_else(|| ControlError::NoPoller(node.to_owned()))?;
        p.poll_now();
        Ok(())
    }

    /// Changes a node's polling interval (seconds, 1 … 3600). Returns the interval set.
    pub fn set_poll_interval(&self, node: &str, seconds: f64) -> Result<Duration, ControlError> {
        self.check_node(node)?;
        if !(1.0..=3600.0).contains(&seconds) {
            return Err(ControlError::BadInterval(seconds));
        }
        let p = self
            .inner
            .pollers
            .get(node)
            .ok_or_else(|| ControlError::NoPoller(node.to_owned()))?;
        let d = p.set_interval(Duration::from_secs_f64(seconds));
        self.inner.store.set_poll_interval(node, d);
        Ok(d)
    }

    /// The node's current polling interval.
    pub fn poll_interval(&self, node: &str) -> Option<Duration> {
        self.inner.pollers.get(node).map(PollerHandle::interval)
    }

    /// Runs `VoterStatus` for the node on its AMI session, records the result (API and
    /// metrics) and returns it.
    pub async fn voter_status(&self, node: &str) -> Result<VoterSnapshot, ControlError> {
        let ami = self.ami_for(node)?;
        let action = Action::new("VoterStatus")
            .and_then(|a| a.header("Node", node))
            .map_err(|e| ControlError::Parse(e.to_string()))?;
        let reply = ami.send(action).await?;
        let instances =
            parse_voter_status(&reply.frame).map_err(|e| ControlError::Parse(e.to_string()))?;
        let inst = instances.into_iter().find(|i| i.node == node);
        let snap = VoterSnapshot {
            node: node.to_owned(),
            time_ms: now_ms(),
            voted: inst.as_ref().and_then(|i| i.voted.clone()),
            receivers: inst.map(|i| i.receivers).unwrap_or_default(),
        };
        self.record_voter(snap.clone());
        Ok(snap)
    }

    /// The last voter receivers recorded for a node.
    pub fn voter(&self, node: &str) -> Option<VoterSnapshot> {
        self.inner
            .voter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned()
    }

    fn record_voter(&self, snap: VoterSnapshot) {
        let m = &self.inner.metrics;
        let mut all = self.inner.voter.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = all.get(&snap.node) {
            if old.voted.is_some() && snap.voted.is_some() && old.voted != snap.voted {
                m.voter_voted_changes.with_label_values(&[&snap.node]).inc();
            }
            for gone in old
                .receivers
                .iter()
                .filter(|o| !snap.receivers.iter().any(|r| r.name == o.name))
            {
                let _ = m.voter_rssi.remove_label_values(&[&snap.node, &gone.name]);
            }
        }
        for r in &snap.receivers {
            m.voter_rssi
                .with_label_values(&[&snap.node, &r.name])
                .set(i64::from(r.rssi));
        }
        m.voter_receivers
            .with_label_values(&[&snap.node])
            .set(snap.receivers.len() as i64);
        all.insert(snap.node.clone(), snap);
    }
}

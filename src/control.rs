//! Commands back into the daemon, shared by the REST API and Lua: poll now, change a
//! node's polling interval, and query voter receivers. Every value is checked here before
//! anything reaches AMI (node ids must be configured nodes). Model changes (the interval
//! shown, voter results) go to the state engine, the model's only writer. The AMI actions
//! scripts and the API cause share one budget per server (a token bucket, config
//! `ami_actions_per_second`); past it a command is refused with
//! [`ControlError::RateLimited`], which the caller sees.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::ami::{Action, ActionError, AmiHandle};
use crate::metrics::Metrics;
use crate::poller::PollerHandle;
use crate::rpt::parse_voter_status;
use crate::state::change::now_ms;
use crate::state::{EngineInput, EngineSender};

/// The voter snapshot lives in the model now; this path keeps working.
pub use crate::state::VoterSnapshot;

/// Why a command was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ControlError {
    #[error("unknown node {0:?}: it is not in the configuration")]
    UnknownNode(String),
    #[error(
        "node {node} is a remote node shown from daemon {origin} (sources:): control it on that daemon"
    )]
    RemoteNode { node: String, origin: String },
    #[error("polling is not running for node {0}")]
    NoPoller(String),
    #[error("invalid interval {0}: give seconds between 1 and 3600")]
    BadInterval(f64),
    #[error("{0}")]
    Ami(#[from] ActionError),
    #[error("unreadable VoterStatus reply: {0}")]
    Parse(String),
    #[error("rate limited: at most {per_second} actions/s to server {server}; try again shortly")]
    RateLimited {
        server: String,
        per_second: u32,
        /// How long until the budget holds enough for this request (REST: `Retry-After`).
        retry_after: Duration,
    },
    #[error("{0}")]
    Engine(#[from] crate::state::engine::EngineSendError),
}

/// A token bucket: `rate` tokens a second, holding at most `rate` (one second's burst), or
/// the cost of the largest request when that is more (so a two-action poll is possible
/// at one action a second).
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The per-server action budget shared by scripts and the API.
struct RateLimit {
    per_second: u32,
    buckets: Mutex<BTreeMap<String, Bucket>>,
}

impl RateLimit {
    fn new(per_second: u32) -> RateLimit {
        RateLimit {
            per_second: per_second.max(1),
            buckets: Mutex::new(BTreeMap::new()),
        }
    }

    /// Takes `cost` tokens from `server`'s bucket, or says how long until it holds
    /// enough (nothing taken).
    fn take(&self, server: &str, cost: f64) -> Result<(), Duration> {
        let rate = f64::from(self.per_second);
        let capacity = rate.max(cost);
        let now = Instant::now();
        let mut all = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = all.entry(server.to_owned()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * rate;
        b.tokens = (b.tokens + refill).min(capacity);
        b.at = now;
        if b.tokens >= cost {
            b.tokens -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((cost - b.tokens) / rate))
        }
    }
}

struct Inner {
    pollers: BTreeMap<String, PollerHandle>,
    servers: BTreeMap<String, AmiHandle>,
    node_server: BTreeMap<String, String>,
    engine: EngineSender,
    store: crate::state::StateStore,
    metrics: Metrics,
    limit: RateLimit,
}

/// The command surface. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

impl Control {
    /// Builds the command surface over the running pollers and AMI sessions; model
    /// changes go to the state engine through `engine`; at most `actions_per_second` AMI
    /// actions per server come from here.
    pub fn with_engine(
        pollers: BTreeMap<String, PollerHandle>,
        servers: BTreeMap<String, AmiHandle>,
        node_server: BTreeMap<String, String>,
        engine: EngineSender,
        store: crate::state::StateStore,
        metrics: Metrics,
        actions_per_second: u32,
    ) -> Control {
        Control {
            inner: Arc::new(Inner {
                pollers,
                servers,
                node_server,
                engine,
                store,
                metrics,
                limit: RateLimit::new(actions_per_second),
            }),
        }
    }

    fn check_node(&self, node: &str) -> Result<(), ControlError> {
        if self.inner.node_server.contains_key(node) {
            Ok(())
        } else if let Some(origin) = self.inner.store.node(node).and_then(|n| n.origin) {
            Err(ControlError::RemoteNode {
                node: node.to_owned(),
                origin,
            })
        } else {
            Err(ControlError::UnknownNode(node.chars().take(32).collect()))
        }
    }

    /// Takes `actions` from the node's server budget, or refuses (counted).
    fn spend(&self, node: &str, actions: u32) -> Result<(), ControlError> {
        let server = self
            .inner
            .node_server
            .get(node)
            .ok_or_else(|| ControlError::UnknownNode(node.chars().take(32).collect()))?;
        let Err(retry_after) = self.inner.limit.take(server, f64::from(actions)) else {
            return Ok(());
        };
        self.inner
            .metrics
            .ami_actions_rate_limited
            .with_label_values(&[server])
            .inc();
        Err(ControlError::RateLimited {
            server: server.clone(),
            per_second: self.inner.limit.per_second,
            retry_after,
        })
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

    /// Asks the node's poller to poll at once. Requests coalesce (one poll in flight, at
    /// most one queued), and each accepted request spends two actions (XStat + SawStat)
    /// of the server's budget.
    pub fn poll_now(&self, node: &str) -> Result<(), ControlError> {
        self.check_node(node)?;
        let p = self
            .inner
            .pollers
            .get(node)
            .ok_or_else(|| ControlError::NoPoller(node.to_owned()))?;
        if p.poll_pending() {
            // Already queued: this request is served by that poll, at no cost.
            return Ok(());
        }
        self.spend(node, 2)?;
        p.poll_now();
        Ok(())
    }

    /// Whether a poll of `node` is asked for and not started yet.
    pub fn poll_pending(&self, node: &str) -> bool {
        self.inner
            .pollers
            .get(node)
            .is_some_and(PollerHandle::poll_pending)
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
        self.inner.engine.try_send(EngineInput::SetInterval {
            node: node.to_owned(),
            interval: d,
        })?;
        Ok(d)
    }

    /// The node's current polling interval.
    pub fn poll_interval(&self, node: &str) -> Option<Duration> {
        self.inner.pollers.get(node).map(PollerHandle::interval)
    }

    /// Runs `VoterStatus` for the node on its AMI session, records the result in the
    /// model (API and metrics, through the state engine) and returns it.
    pub async fn voter_status(&self, node: &str) -> Result<VoterSnapshot, ControlError> {
        let ami = self.ami_for(node)?;
        self.spend(node, 1)?;
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
        self.inner.engine.voter(snap.clone()).await?;
        Ok(snap)
    }

    /// The last voter receivers recorded for a node (read from the model).
    pub fn voter(&self, node: &str) -> Option<VoterSnapshot> {
        self.inner.store.voter(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_a_second_of_burst_then_the_rate() {
        let l = RateLimit::new(10);
        let granted = (0..100).filter(|_| l.take("a", 1.0).is_ok()).count();
        assert_eq!(granted, 10, "one second's worth at once");
        assert!(l.take("b", 1.0).is_ok(), "servers have their own budgets");
        tokio::time::advance(Duration::from_millis(500)).await;
        let granted = (0..100).filter(|_| l.take("a", 1.0).is_ok()).count();
        assert_eq!(granted, 5, "refilled at 10/s");
        tokio::time::advance(Duration::from_secs(60)).await;
        let granted = (0..100).filter(|_| l.take("a", 1.0).is_ok()).count();
        assert_eq!(granted, 10, "never more than one second's burst");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_larger_than_what_is_left_takes_nothing() {
        let l = RateLimit::new(3);
        assert!(l.take("a", 2.0).is_ok());
        assert!(l.take("a", 2.0).is_err());
        assert!(l.take("a", 1.0).is_ok(), "the refused request took nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_says_when_the_budget_holds_enough() {
        let l = RateLimit::new(4);
        assert!(l.take("a", 4.0).is_ok());
        assert_eq!(l.take("a", 2.0), Err(Duration::from_millis(500)));
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(l.take("a", 2.0), Err(Duration::from_millis(250)));
        tokio::time::advance(Duration::from_millis(250)).await;
        assert!(l.take("a", 2.0).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_is_possible_at_one_action_a_second() {
        let l = RateLimit::new(1);
        assert!(l.take("a", 2.0).is_ok(), "the bucket holds a whole poll");
        assert_eq!(l.take("a", 2.0), Err(Duration::from_secs(2)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(l.take("a", 2.0).is_ok());
    }
}

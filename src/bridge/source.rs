//! A remote source (`sources: [{mqtt: {url, topic_prefix}}]`): nodes other daemons publish
//! to a broker, rebuilt here and handed to the state engine as [`RemoteInput`]s.
//!
//! It subscribes to `{prefix}/+/+/state` (retained: the whole picture at once),
//! `{prefix}/+/+/event` and `{prefix}/daemon/+/status`. Each daemon's events carry its
//! stream's `epoch` and `seq`; a new epoch (the daemon restarted) or a missing sequence
//! number (messages were lost) makes the source subscribe to the states again, which
//! brings every retained state back. A daemon whose status turns `offline` (its last
//! will) keeps its nodes, stale. Nothing is ever asked over AMI for a remote node, and
//! control of one is refused (`control`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::mqtt::{OFFLINE, ONLINE, options};
use crate::ami::backoff::Backoff;
use crate::config::bridges::MqttSourceConfig;
use crate::metrics::Metrics;
use crate::state::engine::{EngineInput, EngineSender, RemoteInput};
use crate::state::{ChangeEvent, ChangeKind, LinkView, NodeView};

/// At most one "take the states again" per this period (a burst of gaps asks once).
const RESYNC_EVERY: Duration = Duration::from_millis(500);

/// A state message: the node view plus where the publisher's stream stood.
#[derive(Deserialize)]
struct StateMsg {
    #[serde(flatten)]
    node: NodeView,
}

/// An event message (the WebSocket `event` frame plus `origin`).
#[derive(Deserialize)]
struct EventMsg {
    seq: u64,
    epoch: String,
    origin: String,
    event: RemoteEvent,
}

/// A change as published (the fields a [`ChangeEvent`] serialises).
#[derive(Deserialize)]
struct RemoteEvent {
    kind: ChangeKind,
    time_ms: u64,
    server: String,
    node: Option<String>,
    link: Option<LinkView>,
    duration_seconds: Option<f64>,
    error: Option<String>,
    #[serde(default)]
    fields: Vec<String>,
}

/// The names `link_updated` and `node_updated` use in `fields` (a [`ChangeEvent`]
/// holds static names).
/// `node_updated` uses `stale` and `state` (the latter is also a link field).
const FIELD_NAMES: &[&str] = &[
    "direction",
    "mode",
    "state",
    "ip",
    "reconnects",
    "kind",
    "stale",
];

impl RemoteEvent {
    fn into_change(self) -> ChangeEvent {
        ChangeEvent {
            seq: 0,
            kind: self.kind,
            time_ms: self.time_ms,
            server: self.server,
            node: self.node,
            link: self.link,
            duration_seconds: self.duration_seconds,
            error: self.error,
            fields: self
                .fields
                .iter()
                .filter_map(|f| FIELD_NAMES.iter().copied().find(|k| k == f))
                .collect(),
        }
    }
}

/// Where one publishing daemon's stream stands, as seen here.
#[derive(Default)]
struct Origin {
    epoch: String,
    last_seq: u64,
    offline: bool,
}

/// What a message means for the source.
enum Verdict {
    Input(RemoteInput),
    /// A gap or a new run: take the retained states again.
    Resync,
    InputAndResync(RemoteInput),
    Nothing,
}

/// Reads topics and payloads; keeps each daemon's stream position.
struct Reader {
    prefix: String,
    origins: HashMap<String, Origin>,
}

impl Reader {
    fn read(&mut self, topic: &str, payload: &[u8]) -> (Verdict, &'static str) {
        let Some(rest) = topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return (Verdict::Nothing, "ignored");
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["daemon", name, "status"] => (self.status(name, payload), "status"),
            [_, _, "state"] => (self.state(payload), "state"),
            [_, _, "event"] => (self.event(payload), "event"),
            _ => (Verdict::Nothing, "ignored"),
        }
    }

    fn status(&mut self, name: &str, payload: &[u8]) -> Verdict {
        let online = match payload {
            p if p == ONLINE.as_bytes() => true,
            p if p == OFFLINE.as_bytes() => false,
            _ => return Verdict::Nothing,
        };
        let o = self.origins.entry(name.to_owned()).or_default();
        o.offline = !online;
        Verdict::Input(RemoteInput::Status {
            origin: name.to_owned(),
            online,
        })
    }

    fn state(&mut self, payload: &[u8]) -> Verdict {
        let Ok(StateMsg { mut node }) = serde_json::from_slice::<StateMsg>(payload) else {
            return Verdict::Nothing; // An emptied retained topic, or not ours.
        };
        let Some(origin) = node.origin.as_deref() else {
            return Verdict::Nothing;
        };
        if self.origins.get(origin).is_some_and(|o| o.offline) {
            node.stale = true;
        }
        Verdict::Input(RemoteInput::State(Box::new(node)))
    }

    fn event(&mut self, payload: &[u8]) -> Verdict {
        let Ok(msg) = serde_json::from_slice::<EventMsg>(payload) else {
            return Verdict::Nothing;
        };
        let o = self.origins.entry(msg.origin.clone()).or_default();
        let first = o.epoch.is_empty();
        let new_run = !first && o.epoch != msg.epoch;
        if !first && !new_run && msg.seq <= o.last_seq {
            return Verdict::Nothing; // Seen already (a QoS 1 repeat).
        }
        let gap = !first && !new_run && msg.seq > o.last_seq + 1;
        o.epoch = msg.epoch;
        o.last_seq = msg.seq;
        let input = msg
            .event
            .node
            .is_some()
            .then(|| RemoteInput::Change(Box::new(msg.event.into_change())));
        match (input, gap || new_run) {
            (Some(i), true) => Verdict::InputAndResync(i),
            (Some(i), false) => Verdict::Input(i),
            (None, true) => Verdict::Resync,
            (None, false) => Verdict::Nothing,
        }
    }
}

/// Starts a source; it ends when `stop` is cancelled.
pub fn spawn(
    cfg: MqttSourceConfig,
    engine: EngineSender,
    metrics: Metrics,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(run(cfg, engine, metrics, stop))
}

/// Reads the broker until `stop`, reconnecting with backoff, and hands the engine what
/// it learns.
async fn run(
    cfg: MqttSourceConfig,
    engine: EngineSender,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let (client, mut eventloop) =
        AsyncClient::new(options(&cfg.login, Duration::from_secs(5)), 1000);
    let mut src = Source::new(&cfg, client, metrics);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30), 0.2);
    loop {
        let got = tokio::select! {
            _ = stop.cancelled() => break,
            got = eventloop.poll() => got,
        };
        match got {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                src.on_session();
            }
            Ok(Event::Incoming(Packet::Publish(msg))) => {
                if let Some(i) = src.on_message(&msg.topic, &msg.payload) {
                    if engine.send(EngineInput::Remote(i)).await.is_err() {
                        break; // The engine has stopped.
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                src.on_error(&e);
                let wait = backoff.next_delay().max(Duration::from_millis(100));
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    src.set_up(false);
    let _ = src.client.try_disconnect();
}

/// One source's connection state: what it subscribes to, and each daemon's position.
struct Source {
    label: String,
    client: AsyncClient,
    metrics: Metrics,
    /// Whether the broker answered last (`nexus_bridge_connected`).
    up: bool,
    /// `{prefix}/+/+/state`: subscribed again to take every retained state again.
    states: String,
    filters: [String; 3],
    reader: Reader,
    last_resync: Option<Instant>,
}

impl Source {
    fn new(cfg: &MqttSourceConfig, client: AsyncClient, metrics: Metrics) -> Source {
        let label = format!("source:{}:{}", cfg.login.addr.host, cfg.login.addr.port);
        let p = &cfg.topic_prefix;
        let states = format!("{p}/+/+/state");
        Source {
            up: false,
            label,
            client,
            metrics,
            filters: [
                states.clone(),
                format!("{p}/+/+/event"),
                format!("{p}/daemon/+/status"),
            ],
            states,
            reader: Reader {
                prefix: p.clone(),
                origins: HashMap::new(),
            },
            last_resync: None,
        }
    }

    /// A new session: positions start again, and the subscriptions bring the retained
    /// states and statuses.
    fn on_session(&mut self) {
        self.set_up(true);
        tracing::info!(
            "[BRIDGE] {}: connected, reading {}/…",
            self.label,
            self.reader.prefix
        );
        self.reader.origins.clear();
        for f in &self.filters {
            let _ = self.client.try_subscribe(f.as_str(), QoS::AtLeastOnce);
        }
    }

    /// One message: counted, read, and a resync asked when it shows a gap (at most one
    /// per [`RESYNC_EVERY`]). Returns what the engine should be told.
    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Option<RemoteInput> {
        let (verdict, kind) = self.reader.read(topic, payload);
        self.metrics
            .bridge_received
            .with_label_values(&[&self.label, kind])
            .inc();
        let (input, resync) = match verdict {
            Verdict::Input(i) => (Some(i), false),
            Verdict::InputAndResync(i) => (Some(i), true),
            Verdict::Resync => (None, true),
            Verdict::Nothing => (None, false),
        };
        let due = self.last_resync.is_none_or(|t| t.elapsed() >= RESYNC_EVERY);
        if resync && due {
            self.last_resync = Some(Instant::now());
            self.metrics
                .bridge_resyncs
                .with_label_values(&[&self.label])
                .inc();
            // Subscribing again makes the broker send every retained state.
            let _ = self
                .client
                .try_subscribe(self.states.as_str(), QoS::AtLeastOnce);
        }
        input
    }

    fn on_error(&mut self, e: &rumqttc::ConnectionError) {
        if self.up {
            tracing::warn!("[BRIDGE] {}: broker unreachable: {e}; retrying", self.label);
        }
        self.set_up(false);
    }

    fn set_up(&mut self, up: bool) {
        self.up = up;
        self.metrics
            .bridge_connected
            .with_label_values(&[&self.label])
            .set(i64::from(up));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(origin: &str, epoch: &str, seq: u64) -> Vec<u8> {
        format!(
            "{{\"type\":\"event\",\"seq\":{seq},\"epoch\":\"{epoch}\",\"origin\":\"{origin}\",\
             \"event\":{{\"seq\":{seq},\"kind\":\"tx_keyed\",\"time_ms\":1,\"server\":\"s\",\"node\":\"2001\"}}}}"
        )
        .into_bytes()
    }

    fn verdict(r: &mut Reader, topic: &str, payload: &[u8]) -> &'static str {
        match r.read(topic, payload).0 {
            Verdict::Input(_) => "input",
            Verdict::InputAndResync(_) => "input+resync",
            Verdict::Resync => "resync",
            Verdict::Nothing => "nothing",
        }
    }

    #[test]
    fn gaps_and_new_runs_ask_for_the_states_again() {
        let mut r = Reader {
            prefix: "club".into(),
            origins: HashMap::new(),
        };
        let t = "club/s/2001/event";
        assert_eq!(verdict(&mut r, t, &event("east", "e1", 10)), "input");
        assert_eq!(verdict(&mut r, t, &event("east", "e1", 11)), "input");
        assert_eq!(verdict(&mut r, t, &event("east", "e1", 11)), "nothing");
        assert_eq!(verdict(&mut r, t, &event("east", "e1", 13)), "input+resync");
        assert_eq!(verdict(&mut r, t, &event("east", "e2", 1)), "input+resync");
        // Another daemon has its own numbering.
        assert_eq!(verdict(&mut r, t, &event("west", "w1", 500)), "input");
        assert_eq!(
            verdict(&mut r, "other/s/2001/event", &event("east", "e2", 2)),
            "nothing"
        );
    }

    #[test]
    fn a_forwarded_node_updated_keeps_its_fields() {
        let mut r = Reader {
            prefix: "club".into(),
            origins: HashMap::new(),
        };
        let body = br#"{"type":"event","seq":3,"epoch":"e1","origin":"east","event":{"seq":3,"kind":"node_updated","time_ms":1,"server":"s","node":"2001","fields":["stale","state","bogus"]}}"#;
        match r.read("club/s/2001/event", body).0 {
            Verdict::Input(RemoteInput::Change(ev)) => {
                assert_eq!(ev.kind, ChangeKind::NodeUpdated);
                assert_eq!(ev.fields, vec!["stale", "state"]);
            }
            _ => panic!("a change input"),
        }
    }

    #[test]
    fn an_offline_daemon_makes_later_states_stale() {
        let mut r = Reader {
            prefix: "club".into(),
            origins: HashMap::new(),
        };
        assert_eq!(
            verdict(&mut r, "club/daemon/east/status", b"offline"),
            "input"
        );
        let mut n = crate::state::node::NodeState::new("2001", "s", Duration::from_secs(60));
        n.stale = false;
        let mut v = n.view(0, &Default::default());
        v.origin = Some("east".into());
        let body = serde_json::to_vec(&v).expect("json");
        match r.read("club/s/2001/state", &body).0 {
            Verdict::Input(RemoteInput::State(v)) => assert!(v.stale),
            _ => panic!("a state input"),
        }
    }
}

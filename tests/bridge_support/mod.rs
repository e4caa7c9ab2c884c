//! Helpers for the broker tests: a real Mosquitto on a free loopback port (generated
//! config, killed on drop) and a recording MQTT subscriber.
//!
//! A missing `mosquitto` fails the test under CI (`CI=true`, `.ci/run` installs it) and
//! skips it with a message elsewhere.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Finds a program in PATH or in /usr/sbin (where Debian puts mosquitto and nats-server).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
}

/// The program, or `None` (skip) outside CI; under CI a missing program fails the test.
pub fn require(name: &str) -> Option<PathBuf> {
    if let Some(p) = find_program(name) {
        return Some(p);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "{name} is not installed: .ci/run installs it (apt-get install mosquitto)"
    );
    eprintln!(
        "SKIPPED: {name} is not installed (apt-get install {name}); the broker tests need it"
    );
    None
}

/// A free loopback TCP port below Linux's ephemeral range (32768 …), so no outgoing
/// connection takes it while the broker is restarted on it.
pub fn free_port() -> u16 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = u64::from(std::process::id()) ^ allstar_nexus::observe::now_ms() ^ (n * 613);
    for i in 0..2000u64 {
        let port = 20_000 + ((seed.wrapping_mul(7919) + i * 104_729) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A Mosquitto broker on 127.0.0.1, without persistence (a restart forgets retained
/// messages, so what is retained after a restart was published again).
pub struct Mosquitto {
    program: PathBuf,
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Mosquitto {
    /// Starts a broker on a free port; `None` when mosquitto is missing outside CI.
    pub fn start() -> Option<Mosquitto> {
        let program = require("mosquitto")?;
        let port = free_port();
        // One folder per broker (the port is unique among this process's brokers).
        let dir =
            std::env::temp_dir().join(format!("nexus-mosquitto-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let mut b = Mosquitto {
            program,
            child: None,
            port,
            dir,
        };
        b.spawn();
        Some(b)
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// The broker's process id (for its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
                self.port
            ),
        )
        .expect("broker config");
        let log_path = self.dir.join("mosquitto.log");
        let log = std::fs::File::create(&log_path).expect("broker log");
        let child = Command::new(&self.program)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                std::time::Instant::now() < deadline && exited.is_none(),
                "mosquitto did not listen on {} (exit {exited:?}): {}",
                self.port,
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One message as the subscriber saw it.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
}

/// A subscriber that records everything under its filters.
#[derive(Clone)]
pub struct Recorder {
    pub all: Arc<Mutex<Vec<Msg>>>,
    pub client: AsyncClient,
}

impl Recorder {
    /// Connects to `port` and subscribes to `filters`.
    pub async fn start(port: u16, filters: &[&str]) -> Recorder {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("rec-{}-{n}", std::process::id());
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut el) = AsyncClient::new(o, 1000);
        let all = Arc::new(Mutex::new(Vec::new()));
        let sink = all.clone();
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let sub = client.clone();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    // Each (clean) session subscribes again.
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for f in &filters {
                            let _ = sub.try_subscribe(f.as_str(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(t) = ready_tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock().expect("lock").push(Msg {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(20), ready).await;
        Recorder { all, client }
    }

    /// Every message so far.
    pub fn msgs(&self) -> Vec<Msg> {
        self.all.lock().expect("lock").clone()
    }

    /// The last payload seen on each topic.
    pub fn latest(&self) -> HashMap<String, String> {
        self.msgs()
            .into_iter()
            .map(|m| (m.topic, m.payload))
            .collect()
    }

    /// The last payload of `topic`, as JSON (or `Null`).
    pub fn json(&self, topic: &str) -> serde_json::Value {
        self.latest()
            .get(topic)
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Waits (up to `secs`) until `cond` holds over the messages.
    pub async fn wait(&self, what: &str, secs: u64, mut cond: impl FnMut(&[Msg]) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if cond(&self.msgs()) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; saw topics {:?}",
                self.latest().keys().collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `bridges.mqtt` YAML for a test publisher.
pub fn bridge_yaml(url: &str, name: &str, prefix: &str, extra: &str) -> String {
    format!(
        "bridges:\n  mqtt:\n    url: {url}\n    client_id: {name}\n    topic_prefix: {prefix}\n{extra}"
    )
}

/// A NATS server (`nats-server`) on a free loopback port, killed on drop.
pub struct NatsServer {
    child: Child,
    pub port: u16,
}

impl NatsServer {
    /// Starts a server; `None` when nats-server is missing outside CI.
    pub fn start() -> Option<NatsServer> {
        let program = require("nats-server")?;
        let port = free_port();
        let child = Command::new(program)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(NatsServer { child, port })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of every series of `name` in the daemon's `/metrics` text whose labels
/// contain each of `labels` (`reason="queue_full"`).
pub fn metric(metrics: &allstar_nexus::metrics::Metrics, name: &str, labels: &[&str]) -> f64 {
    metrics
        .render()
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

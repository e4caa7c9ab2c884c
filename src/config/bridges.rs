//! `bridges:` (publish the change stream to an MQTT broker) and `sources:` (take remote
//! nodes from a broker), as written and as validated. See `docs/fleet.md` and
//! `docs/configuration.md`.
//!
//! Secrets are read from the environment (`password_env`) when the file is loaded and are
//! kept in a [`Secret`], whose `Debug` never shows them.

use serde::Deserialize;

/// Default `topic_prefix`.
pub const DEFAULT_TOPIC_PREFIX: &str = "allstar";
/// Default `queue`: messages held while the broker is away.
pub const DEFAULT_QUEUE: usize = 10_000;
/// Default Home Assistant discovery prefix.
pub const DEFAULT_DISCOVERY_PREFIX: &str = "homeassistant";

/// `bridges:` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgesFile {
    pub mqtt: Option<MqttFile>,
    pub nats: Option<NatsFile>,
}

/// `bridges.nats:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsFile {
    pub url: String,
    pub subject_prefix: Option<String>,
    /// A `.creds` file (JWT and NKey seed).
    pub credentials: Option<std::path::PathBuf>,
    /// This daemon's name in subjects (default `allstar-nexus-<hostname>`).
    pub name: Option<String>,
    pub queue: Option<usize>,
}

/// `bridges.mqtt:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttFile {
    pub url: String,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub tls: Option<bool>,
    pub topic_prefix: Option<String>,
    pub qos: Option<u8>,
    pub retain: Option<bool>,
    #[serde(default)]
    pub home_assistant: bool,
    pub discovery_prefix: Option<String>,
    pub queue: Option<usize>,
}

/// One entry of `sources:` as written: `{mqtt: {url, topic_prefix, …}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    pub mqtt: Option<SourceMqttFile>,
}

/// `sources[].mqtt:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceMqttFile {
    pub url: String,
    pub topic_prefix: Option<String>,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub tls: Option<bool>,
}

/// A secret read from the environment; `Debug` shows only that it is set.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself (give it only to the broker client).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where a broker listens, from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    /// TLS (rustls, the system's roots): `mqtts://`, `ssl://` or `tls: true`.
    pub tls: bool,
}

/// How to log in to a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerLogin {
    pub addr: BrokerAddr,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// `bridges.mqtt`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    pub login: BrokerLogin,
    /// First topic level (`allstar`).
    pub topic_prefix: String,
    /// This daemon's name in `{prefix}/daemon/{name}/status` and in payloads' `origin`
    /// (the client id).
    pub name: String,
    /// QoS of every message (0, 1 or 2).
    pub qos: u8,
    /// Whether node state, status and discovery messages are retained (default true).
    pub retain: bool,
    pub home_assistant: bool,
    pub discovery_prefix: String,
    /// Messages held while the broker is away (overflow is counted and dropped).
    pub queue: usize,
}

/// `sources[].mqtt`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSourceConfig {
    pub login: BrokerLogin,
    pub topic_prefix: String,
}

/// `bridges.nats`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// `nats://host:port` or `tls://host:port`, as given.
    pub url: String,
    /// First subject token(s) (`allstar`).
    pub subject_prefix: String,
    pub credentials: Option<std::path::PathBuf>,
    /// This daemon's name (`{prefix}.daemon.{name}.status`).
    pub name: String,
    /// Messages the client holds while the server is away.
    pub queue: usize,
}

/// Everything about brokers, validated: where to publish and where to read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgesConfig {
    pub mqtt: Option<MqttConfig>,
    pub nats: Option<NatsConfig>,
    pub sources: Vec<MqttSourceConfig>,
}

/// A mistake in `bridges:` or `sources:`: the key (for its line) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeError {
    pub key: &'static str,
    pub message: String,
}

fn err(key: &'static str, message: String) -> BridgeError {
    BridgeError { key, message }
}

/// Validates `bridges:` and `sources:`; `env` reads an environment variable.
pub fn resolve(
    bridges: BridgesFile,
    sources: Vec<SourceFile>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BridgesConfig, BridgeError> {
    let mqtt = match bridges.mqtt {
        Some(m) => Some(mqtt_config(m, env)?),
        None => None,
    };
    let nats = match bridges.nats {
        Some(n) => Some(nats_config(n)?),
        None => None,
    };
    let mut out = Vec::new();
    for (i, s) in sources.into_iter().enumerate() {
        let Some(m) = s.mqtt else {
            return Err(err(
                "sources",
                format!(
                    "entry {} names no broker: write `- mqtt: {{url: mqtt://host:1883}}`",
                    i + 1
                ),
            ));
        };
        let login = login(
            &m.url,
            m.tls,
            m.client_id.as_deref(),
            "-source",
            m.username,
            m.password_env.as_deref(),
            env,
        )?;
        let topic_prefix = prefix(m.topic_prefix)?;
        out.push(MqttSourceConfig {
            login,
            topic_prefix,
        });
    }
    Ok(BridgesConfig {
        mqtt,
        nats,
        sources: out,
    })
}

fn mqtt_config(
    m: MqttFile,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<MqttConfig, BridgeError> {
    let login = login(
        &m.url,
        m.tls,
        m.client_id.as_deref(),
        "",
        m.username,
        m.password_env.as_deref(),
        env,
    )?;
    let qos = m.qos.unwrap_or(1);
    if qos > 2 {
        return Err(err("qos", format!("must be 0, 1 or 2, got {qos}")));
    }
    let queue = m.queue.unwrap_or(DEFAULT_QUEUE);
    if !(16..=1_000_000).contains(&queue) {
        return Err(err(
            "queue",
            format!("must be between 16 and 1000000 messages, got {queue}"),
        ));
    }
    let discovery_prefix = m
        .discovery_prefix
        .unwrap_or_else(|| DEFAULT_DISCOVERY_PREFIX.to_owned());
    check_prefix("discovery_prefix", &discovery_prefix)?;
    Ok(MqttConfig {
        name: login.client_id.clone(),
        login,
        topic_prefix: prefix(m.topic_prefix)?,
        qos,
        retain: m.retain.unwrap_or(true),
        home_assistant: m.home_assistant,
        discovery_prefix,
        queue,
    })
}

fn nats_config(n: NatsFile) -> Result<NatsConfig, BridgeError> {
    let url = n.url.trim().to_owned();
    let ok_scheme = ["nats://", "tls://"].iter().any(|s| url.starts_with(s));
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or("");
    if !ok_scheme
        || rest.is_empty()
        || rest.contains(['/', '?', '#'])
        || rest.contains(char::is_whitespace)
    {
        return Err(err(
            "url",
            format!(
                "{url:?} is not a NATS server address; write e.g. nats://127.0.0.1:4222 or tls://nats.example.org:4222"
            ),
        ));
    }
    let subject_prefix = n
        .subject_prefix
        .unwrap_or_else(|| DEFAULT_TOPIC_PREFIX.to_owned());
    let bad = subject_prefix.is_empty()
        || subject_prefix.len() > 200
        || subject_prefix.split('.').any(str::is_empty)
        || subject_prefix
            .chars()
            .any(|c| c == '*' || c == '>' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(err(
            "subject_prefix",
            format!(
                "{subject_prefix:?} is not a subject prefix: write tokens such as allstar or club.allstar (no *, >, spaces or empty tokens)"
            ),
        ));
    }
    if let Some(c) = &n.credentials {
        if std::fs::metadata(c).map(|m| !m.is_file()).unwrap_or(true) {
            return Err(err(
                "credentials",
                format!("{} is not a readable .creds file", c.display()),
            ));
        }
    }
    let name = n
        .name
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| format!("allstar-nexus-{}", hostname()));
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_');
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok) {
        return Err(err(
            "name",
            format!(
                "{name:?} must be 1 to 64 letters, digits, '-' or '_' (it names this daemon in subjects)"
            ),
        ));
    }
    let queue = n.queue.unwrap_or(DEFAULT_QUEUE);
    if !(16..=1_000_000).contains(&queue) {
        return Err(err(
            "queue",
            format!("must be between 16 and 1000000 messages, got {queue}"),
        ));
    }
    Ok(NatsConfig {
        url,
        subject_prefix,
        credentials: n.credentials,
        name,
        queue,
    })
}

fn prefix(p: Option<String>) -> Result<String, BridgeError> {
    let p = p.unwrap_or_else(|| DEFAULT_TOPIC_PREFIX.to_owned());
    check_prefix("topic_prefix", &p)?;
    Ok(p)
}

/// A topic prefix: not empty, no wildcards, no control characters, no leading or trailing `/`.
fn check_prefix(key: &'static str, p: &str) -> Result<(), BridgeError> {
    let bad = p.is_empty()
        || p.len() > 200
        || p.starts_with('/')
        || p.ends_with('/')
        || p.contains("//")
        || p.chars().any(|c| c == '+' || c == '#' || c.is_control());
    if bad {
        return Err(err(
            key,
            format!(
                "{p:?} is not a topic prefix: write one or more levels such as allstar or club/allstar (no +, #, empty levels or control characters)"
            ),
        ));
    }
    Ok(())
}

fn login(
    url: &str,
    tls: Option<bool>,
    client_id: Option<&str>,
    suffix: &str,
    username: Option<String>,
    password_env: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BrokerLogin, BridgeError> {
    let mut addr = parse_url(url)?;
    if let Some(t) = tls {
        addr.tls = t;
    }
    let client_id = match client_id {
        Some(c) => c.trim().to_owned(),
        None => format!("allstar-nexus-{}{suffix}", hostname()),
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if client_id.is_empty() || client_id.len() > 64 || !client_id.chars().all(ok) {
        return Err(err(
            "client_id",
            format!(
                "{client_id:?} must be 1 to 64 letters, digits, '-', '_' or '.' (it also names this daemon in topics)"
            ),
        ));
    }
    let password = match password_env {
        None => None,
        Some(var) => match env(var) {
            Some(v) if !v.is_empty() => Some(Secret(v)),
            _ => {
                return Err(err(
                    "password_env",
                    format!("the environment variable {var:?} is not set (or empty)"),
                ));
            }
        },
    };
    if password.is_some() && username.is_none() {
        return Err(err(
            "password_env",
            "a password needs a username: add `username:`".into(),
        ));
    }
    Ok(BrokerLogin {
        addr,
        client_id,
        username,
        password,
    })
}

/// `mqtt://host[:port]` (1883), `mqtts://` or `ssl://host[:port]` (8883, TLS), `tcp://`.
pub fn parse_url(url: &str) -> Result<BrokerAddr, BridgeError> {
    let bad = |why: &str| {
        err(
            "url",
            format!(
                "{url:?} is not a broker address ({why}); write e.g. mqtt://127.0.0.1:1883 or mqtts://broker.example.org"
            ),
        )
    };
    let (scheme, rest) = url
        .trim()
        .split_once("://")
        .ok_or_else(|| bad("no scheme"))?;
    let (tls, default_port) = match scheme {
        "mqtt" | "tcp" => (false, 1883),
        "mqtts" | "ssl" => (true, 8883),
        _ => return Err(bad("the scheme must be mqtt, mqtts, tcp or ssl")),
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains(['/', '@', '?', '#']) || rest.chars().any(|c| c.is_whitespace()) {
        return Err(bad("only host and port may be given"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        (h, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(bad("the port must be 1 to 65535")),
        },
    };
    Ok(BrokerAddr {
        host: host.to_owned(),
        port,
        tls,
    })
}

/// This machine's name (for default client ids), or `host` when it cannot be read.
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let clean: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if clean.is_empty() {
        "host".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn mqtt(yaml: &str) -> Result<BridgesConfig, BridgeError> {
        let f: BridgesFile = serde_yaml_ng::from_str(yaml).expect("yaml");
        resolve(f, Vec::new(), &no_env)
    }

    #[test]
    fn defaults_fill_in() {
        let c = mqtt("mqtt: {url: 'mqtt://127.0.0.1', client_id: hub}")
            .expect("valid")
            .mqtt
            .expect("mqtt");
        assert_eq!(c.login.addr.port, 1883);
        assert!(!c.login.addr.tls);
        assert_eq!(c.topic_prefix, "allstar");
        assert_eq!((c.qos, c.retain, c.queue), (1, true, DEFAULT_QUEUE));
        assert_eq!(c.name, "hub");
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!(parse_url("mqtts://b.example.org").expect("ok").port, 8883);
        assert!(parse_url("mqtts://b.example.org").expect("ok").tls);
        assert_eq!(parse_url("mqtt://[::1]:1884").expect("ok").host, "::1");
        for bad in [
            "http://x",
            "x:1883",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://u:p@h",
            "mqtt://h:99999",
        ] {
            let e = parse_url(bad).expect_err(bad);
            assert_eq!(e.key, "url");
            assert!(e.message.contains("mqtt://127.0.0.1:1883"), "{}", e.message);
        }
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        let e = mqtt("mqtt: {url: 'mqtt://h', qos: 3}").expect_err("qos");
        assert_eq!(e.key, "qos");
        let e = mqtt("mqtt: {url: 'mqtt://h', topic_prefix: 'a/+'}").expect_err("prefix");
        assert_eq!(e.key, "topic_prefix");
        let e = mqtt("mqtt: {url: 'mqtt://h', queue: 1}").expect_err("queue");
        assert_eq!(e.key, "queue");
        let e = mqtt("mqtt: {url: 'mqtt://h', client_id: 'a b'}").expect_err("id");
        assert_eq!(e.key, "client_id");
    }

    #[test]
    fn the_password_comes_from_the_environment_and_is_never_shown() {
        let f: BridgesFile =
            serde_yaml_ng::from_str("mqtt: {url: 'mqtt://h', username: u, password_env: MQTT_PW}")
                .expect("yaml");
        let env = |k: &str| (k == "MQTT_PW").then(|| "hunter2".to_owned());
        let c = resolve(f.clone(), Vec::new(), &env).expect("valid");
        let login = &c.mqtt.as_ref().expect("mqtt").login;
        assert_eq!(login.password.as_ref().map(Secret::expose), Some("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
        let e = resolve(f, Vec::new(), &no_env).expect_err("unset");
        assert!(e.message.contains("MQTT_PW"), "{}", e.message);
    }

    #[test]
    fn nats_keys_are_checked() {
        let c = mqtt("nats: {url: 'nats://127.0.0.1:4222', name: hub}")
            .expect("valid")
            .nats
            .expect("nats");
        assert_eq!(
            (c.subject_prefix.as_str(), c.name.as_str()),
            ("allstar", "hub")
        );
        for (yaml, key) in [
            ("nats: {url: 'http://h'}", "url"),
            (
                "nats: {url: 'nats://h', subject_prefix: 'a.*'}",
                "subject_prefix",
            ),
            (
                "nats: {url: 'nats://h', subject_prefix: 'a..b'}",
                "subject_prefix",
            ),
            (
                "nats: {url: 'nats://h', credentials: /nonexistent/x.creds}",
                "credentials",
            ),
            ("nats: {url: 'nats://h', name: 'a.b'}", "name"),
        ] {
            assert_eq!(mqtt(yaml).expect_err(yaml).key, key, "{yaml}");
        }
    }

    #[test]
    fn a_source_must_name_a_broker() {
        let s: Vec<SourceFile> =
            serde_yaml_ng::from_str("[{mqtt: {url: 'mqtt://h:1884', topic_prefix: club}}, {}]")
                .expect("yaml");
        let e = resolve(BridgesFile::default(), s.clone(), &no_env).expect_err("empty");
        assert!(e.message.contains("entry 2"), "{}", e.message);
        let c = resolve(BridgesFile::default(), s[..1].to_vec(), &no_env).expect("valid");
        assert_eq!(c.sources[0].topic_prefix, "club");
        assert_eq!(c.sources[0].login.addr.port, 1884);
    }
}

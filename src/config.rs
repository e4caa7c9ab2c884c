//! Configuration: YAML (read with `serde_yaml_ng`, the maintained successor of the archived
//! `serde_yaml`) into typed settings, validated with messages that name the key and line.
//!
//! Operators' existing keys are kept verbatim (`ami_host`, `ami_retry_interval`,
//! `polling_interval_seconds`, `nodes: [{node_id, polling_interval}]`, …). The flat `ami_*`
//! keys are shorthand for one server named `default`; `ami_servers` lists several.
//! Every key is documented in `config.example.yaml`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A configuration problem, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// Durations written as `15s`, `2m`, `1h30m`, `250ms`, or a plain number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) if s >= 0.0 && s.is_finite() => Ok(Dur(Duration::from_secs_f64(s))),
            Raw::Secs(s) => Err(serde::de::Error::custom(format!(
                "duration must be positive, got {s}"
            ))),
            Raw::Text(t) => humantime::parse_duration(t.trim()).map(Dur).map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {t:?} ({e}); write e.g. 15s, 2m, 1h"
                ))
            }),
        }
    }
}

/// Node ids may be written as numbers or strings (`1999` or `"1999"`).
fn node_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(u64),
        Text(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Num(n) => n.to_string(),
        Raw::Text(t) => t.trim().to_owned(),
    })
}

/// One node to watch, as written in YAML.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    #[serde(deserialize_with = "node_id")]
    pub node_id: String,
    /// Seconds (or a duration) between polls of this node; overrides the global value.
    #[serde(default)]
    pub polling_interval: Option<Dur>,
}

/// One AMI server in `ami_servers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub name: String,
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub nodes: Vec<NodeFile>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// The YAML file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "yes")]
    pub ami_enabled: bool,
    #[serde(default = "default_host")]
    pub ami_host: String,
    #[serde(default = "default_port")]
    pub ami_port: u16,
    pub ami_username: Option<String>,
    pub ami_password: Option<String>,
    pub ami_password_env: Option<String>,
    pub ami_password_file: Option<PathBuf>,
    pub ami_retry_interval: Option<Dur>,
    pub ami_retry_max: Option<Dur>,
    pub ami_connect_timeout: Option<Dur>,
    pub ami_keepalive_interval: Option<Dur>,
    pub ami_keepalive_timeout: Option<Dur>,
    pub ami_action_timeout: Option<Dur>,
    pub ami_events: Option<String>,
    pub ami_max_frame_bytes: Option<usize>,
    #[serde(default)]
    pub ami_servers: Vec<ServerFile>,
    #[serde(default)]
    pub disable_link_poller: bool,
    pub polling_interval_seconds: Option<f64>,
    #[serde(default)]
    pub nodes: Vec<NodeFile>,
    pub script_dirs: Option<Vec<PathBuf>>,
    pub astdb_path: Option<PathBuf>,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub websocket: WebSocketConfig,
    #[serde(default)]
    pub lua: LuaConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub alert_webhooks: Vec<WebhookConfig>,
    #[serde(default)]
    pub plugins: BTreeMap<String, serde_json::Value>,
    /// Directory for durable state (the control audit log; later the history store).
    pub state_dir: Option<PathBuf>,
    /// Whether reads need no credential once tokens or users exist (default true).
    #[serde(default = "yes")]
    pub anonymous_read: bool,
    #[serde(default)]
    pub api_tokens: Vec<ApiTokenConfig>,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub control: ControlConfig,
}

/// One entry of `api_tokens:` (see `docs/security.md`).
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenConfig {
    pub name: String,
    /// The secret itself, or `sha256:<64 hex>` of it. Never logged.
    pub token: String,
    pub role: crate::auth::Role,
    /// Local nodes this token may act on and read (absent = all).
    #[serde(default, deserialize_with = "opt_node_ids")]
    pub nodes: Option<Vec<String>>,
}

impl std::fmt::Debug for ApiTokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTokenConfig")
            .field("name", &self.name)
            .field("token", &"********")
            .field("role", &self.role)
            .field("nodes", &self.nodes)
            .finish()
    }
}

/// One entry of `users:` (browser logins).
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Argon2id PHC string from `allstar-nexus hash-password`.
    pub password_hash: String,
    pub role: crate::auth::Role,
    #[serde(default, deserialize_with = "opt_node_ids")]
    pub nodes: Option<Vec<String>>,
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password_hash", &"********")
            .field("role", &self.role)
            .field("nodes", &self.nodes)
            .finish()
    }
}

/// Node lists written as numbers or strings.
fn opt_node_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    struct Id(#[serde(deserialize_with = "node_id")] String);
    let v: Option<Vec<Id>> = Option::deserialize(d)?;
    Ok(v.map(|v| v.into_iter().map(|i| i.0).collect()))
}

/// `control:` section (link control).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// How long a connect/disconnect waits for XStat to show the result.
    pub verify_timeout: Dur,
    /// Control actions allowed per identity per minute.
    pub rate_limit_per_minute: u32,
    /// Lifetime of a browser login session.
    pub session_ttl: Dur,
    /// Failed logins from one address before each further attempt is slowed down.
    pub login_slowdown_after: u32,
    /// Failed logins from one address before it is locked out.
    pub login_lockout_after: u32,
    /// How long a lockout lasts.
    pub login_lockout: Dur,
}

impl Default for ControlConfig {
    fn default() -> ControlConfig {
        ControlConfig {
            verify_timeout: Dur(Duration::from_secs(10)),
            rate_limit_per_minute: 10,
            session_ttl: Dur(Duration::from_secs(12 * 3600)),
            login_slowdown_after: 3,
            login_lockout_after: 10,
            login_lockout: Dur(Duration::from_secs(15 * 60)),
        }
    }
}

/// `metrics:` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Export per-link series (`nexus_link_*`); off by default to keep cardinality low.
    #[serde(default)]
    pub per_link: bool,
}

/// `websocket:` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    pub max_clients: usize,
    pub replay_buffer: usize,
    pub client_queue: usize,
    pub heartbeat: Dur,
    pub max_message_bytes: usize,
    /// Origins allowed to open `/ws` from a browser (`Origin` header). Empty = same host
    /// only; `"*"` = any.
    pub allowed_origins: Vec<String>,
}

impl Default for WebSocketConfig {
    fn default() -> WebSocketConfig {
        WebSocketConfig {
            max_clients: 1024,
            replay_buffer: 4096,
            client_queue: 512,
            heartbeat: Dur(Duration::from_secs(15)),
            max_message_bytes: 4096,
            allowed_origins: Vec::new(),
        }
    }
}

/// `lua:` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LuaConfig {
    /// Memory limit per script, in MiB.
    pub memory_limit_mb: usize,
    /// Time budget of one callback (enforced by an instruction hook), e.g. `100ms`.
    pub callback_budget: Dur,
    /// Depth of the queue of changes waiting for the Lua thread.
    pub queue: usize,
    /// Consecutive failures after which a script is disabled.
    pub max_consecutive_errors: u32,
}

impl Default for LuaConfig {
    fn default() -> LuaConfig {
        LuaConfig {
            memory_limit_mb: 32,
            callback_budget: Dur(Duration::from_millis(100)),
            queue: 10_000,
            max_consecutive_errors: 10,
        }
    }
}

/// `alerts:` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Alerts kept for `GET /api/alerts`.
    pub history: usize,
    /// Minimum time between two alerts with the same `key`.
    pub repeat_interval: Dur,
}

impl Default for AlertsConfig {
    fn default() -> AlertsConfig {
        AlertsConfig {
            history: 500,
            repeat_interval: Dur(Duration::from_secs(300)),
        }
    }
}

/// One entry of `alert_webhooks:`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    #[serde(default = "default_webhook_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_webhook_retries")]
    pub retries: u32,
    /// Only alerts at or above this severity (`info`, `warning`, `critical`).
    #[serde(default)]
    pub min_severity: Option<String>,
}

fn default_webhook_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_webhook_retries() -> u32 {
    3
}
fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    5038
}
fn yes() -> bool {
    true
}

/// Timing and protocol settings of AMI sessions (shared by all servers).
#[derive(Debug, Clone, PartialEq)]
pub struct AmiSettings {
    /// First retry waits this long after the immediate one (`ami_retry_interval`).
    pub retry_interval: Duration,
    /// Retry waits double up to this (`ami_retry_max`).
    pub retry_max: Duration,
    /// Fraction of random extra wait added to each retry (0.1 = up to 10 %).
    pub retry_jitter: f64,
    pub connect_timeout: Duration,
    /// Idle time after which a `Ping` is sent.
    pub keepalive_interval: Duration,
    /// How long a `Ping` may go unanswered before the session is reset.
    pub keepalive_timeout: Duration,
    /// Default deadline of an action's reply.
    pub action_timeout: Duration,
    /// Event mask requested at login (`Events:`): `call` brings app_rpt's RPT_* events.
    pub events: String,
    pub max_frame_bytes: usize,
}

impl Default for AmiSettings {
    fn default() -> AmiSettings {
        AmiSettings {
            retry_interval: Duration::from_secs(15),
            retry_max: Duration::from_secs(60),
            retry_jitter: 0.1,
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            action_timeout: Duration::from_secs(10),
            events: "call".into(),
            max_frame_bytes: crate::ami::codec::DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

/// One AMI server, resolved.
#[derive(Clone, PartialEq)]
pub struct ServerConfig {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub username: String,
    /// Never logged, never serialised (see the `Debug` impl).
    pub password: String,
    pub nodes: Vec<NodeConfig>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &"********")
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl ServerConfig {
    /// `host:port` for messages.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One watched node, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    pub node_id: String,
    pub poll_interval: Duration,
}

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub ami_enabled: bool,
    pub ami: AmiSettings,
    pub servers: Vec<ServerConfig>,
    pub disable_link_poller: bool,
    pub script_dirs: Vec<PathBuf>,
    pub astdb_path: PathBuf,
    pub metrics: MetricsConfig,
    pub websocket: WebSocketConfig,
    pub lua: LuaConfig,
    pub alerts: AlertsConfig,
    pub alert_webhooks: Vec<WebhookConfig>,
    pub plugins: BTreeMap<String, serde_json::Value>,
    /// Durable state (`state_dir`, default `state` beside the config file).
    pub state_dir: PathBuf,
    pub anonymous_read: bool,
    pub api_tokens: Vec<ApiTokenConfig>,
    pub users: Vec<UserConfig>,
    pub control: ControlConfig,
}

/// Where AllStarLink keeps the node database.
pub const DEFAULT_ASTDB: &str = "/var/lib/asterisk/astdb.txt";

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string(), path.parent())
    }

    /// Parses YAML text; `origin` names the file in messages; relative paths in the file
    /// (password files, script dirs, astdb) are resolved against `base`.
    pub fn parse(text: &str, origin: &str, base: Option<&Path>) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        };
        let file: ConfigFile = if text.trim().is_empty() {
            return Err(invalid(
                "the file is empty; see config.example.yaml for every key".into(),
            ));
        } else {
            let de = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de)
                .map_err(|e| invalid(describe_yaml_error(text, &e)))?
        };
        Resolver { text, base }.resolve(file).map_err(invalid)
    }
}

/// Turns serde's wording into the operator's: the key (its path), the line, what is wrong.
fn describe_yaml_error(text: &str, e: &serde_path_to_error::Error<serde_yaml_ng::Error>) -> String {
    let path = e.path().to_string();
    let inner = e.inner();
    let mut msg = inner.to_string();
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        msg = format!(
            "unknown key {rest} (check the spelling; every key is listed in config.example.yaml)"
        );
    }
    let has_line = inner.location().is_some() && msg.contains("line ");
    let line = if has_line {
        String::new()
    } else {
        // Custom errors (bad durations…) carry no position: find the key's line.
        let leaf = path.rsplit('.').next().unwrap_or(&path);
        let leaf = leaf.split('[').next().unwrap_or(leaf);
        Resolver { text, base: None }
            .at(leaf)
            .strip_prefix(leaf)
            .unwrap_or("")
            .to_owned()
    };
    if path.is_empty() || path == "." {
        msg
    } else {
        format!("{path}{line}: {msg}")
    }
}

struct Resolver<'a> {
    text: &'a str,
    base: Option<&'a Path>,
}

impl Resolver<'_> {
    /// `key` at line N, found by a plain text search (for checks made after parsing).
    fn at(&self, key: &str) -> String {
        for (i, line) in self.text.lines().enumerate() {
            let t = line.trim_start().trim_start_matches("- ");
            if t.starts_with(key) && t[key.len()..].trim_start().starts_with(':') {
                return format!("{key} (line {})", i + 1);
            }
        }
        key.to_owned()
    }

    fn path(&self, p: &Path) -> PathBuf {
        match self.base {
            Some(b) if p.is_relative() && !b.as_os_str().is_empty() => b.join(p),
            _ => p.to_owned(),
        }
    }

    fn resolve(&self, f: ConfigFile) -> Result<Config, String> {
        let listen: SocketAddr = f.listen.parse().map_err(|_| {
            format!(
                "{}: {:?} is not an address:port such as 127.0.0.1:8080",
                self.at("listen"),
                f.listen
            )
        })?;
        let ami = self.ami_settings(&f)?;
        let global_poll = match f.polling_interval_seconds {
            None => Duration::from_secs(60),
            Some(s) if s >= 1.0 && s.is_finite() => Duration::from_secs_f64(s),
            Some(s) => {
                return Err(format!(
                    "{}: must be at least 1 second, got {s}",
                    self.at("polling_interval_seconds")
                ));
            }
        };
        let servers = self.servers(&f, global_poll)?;
        let mut seen = BTreeMap::new();
        for s in &servers {
            for n in &s.nodes {
                if let Some(other) = seen.insert(n.node_id.clone(), s.name.clone()) {
                    return Err(format!(
                        "{}: node {} is listed twice (servers {other} and {})",
                        self.at("node_id"),
                        n.node_id,
                        s.name
                    ));
                }
            }
        }
        if f.websocket.max_clients == 0
            || f.websocket.replay_buffer == 0
            || f.websocket.client_queue == 0
        {
            return Err(format!(
                "{}: max_clients, replay_buffer and client_queue must be above 0",
                self.at("websocket")
            ));
        }
        if f.lua.memory_limit_mb == 0 || f.lua.queue == 0 {
            return Err(format!(
                "{}: memory_limit_mb and queue must be above 0",
                self.at("lua")
            ));
        }
        for w in &f.alert_webhooks {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return Err(format!(
                    "{}: {:?} must start with http:// or https://",
                    self.at("url"),
                    w.url
                ));
            }
        }
        crate::auth::check_config(&f.api_tokens, &f.users, &f.control, &seen)
            .map_err(|e| format!("{}: {e}", self.at(e.key())))?;
        let script_dirs = f
            .script_dirs
            .clone()
            .unwrap_or_else(|| vec![PathBuf::from("plugins"), PathBuf::from("scripts")])
            .iter()
            .map(|p| self.path(p))
            .collect();
        Ok(Config {
            listen,
            ami_enabled: f.ami_enabled,
            ami,
            servers,
            disable_link_poller: f.disable_link_poller,
            script_dirs,
            astdb_path: f
                .astdb_path
                .as_deref()
                .map(|p| self.path(p))
                .unwrap_or_else(|| DEFAULT_ASTDB.into()),
            metrics: f.metrics,
            websocket: f.websocket,
            lua: f.lua,
            alerts: f.alerts,
            alert_webhooks: f.alert_webhooks,
            plugins: f.plugins,
            state_dir: self.path(f.state_dir.as_deref().unwrap_or(Path::new("state"))),
            anonymous_read: f.anonymous_read,
            api_tokens: f.api_tokens,
            users: f.users,
            control: f.control,
        })
    }

    fn ami_settings(&self, f: &ConfigFile) -> Result<AmiSettings, String> {
        let d = AmiSettings::default();
        let pick = |v: Option<Dur>,
                    dflt: Duration,
                    key: &str,
                    min: Duration|
         -> Result<Duration, String> {
            let v = v.map(|d| d.0).unwrap_or(dflt);
            if v < min {
                return Err(format!(
                    "{}: must be at least {}",
                    self.at(key),
                    humantime::format_duration(min)
                ));
            }
            Ok(v)
        };
        let ms = Duration::from_millis(1);
        let s = AmiSettings {
            retry_interval: pick(
                f.ami_retry_interval,
                d.retry_interval,
                "ami_retry_interval",
                ms,
            )?,
            retry_max: pick(f.ami_retry_max, d.retry_max, "ami_retry_max", ms)?,
            retry_jitter: d.retry_jitter,
            connect_timeout: pick(
                f.ami_connect_timeout,
                d.connect_timeout,
                "ami_connect_timeout",
                ms,
            )?,
            keepalive_interval: pick(
                f.ami_keepalive_interval,
                d.keepalive_interval,
                "ami_keepalive_interval",
                ms,
            )?,
            keepalive_timeout: pick(
                f.ami_keepalive_timeout,
                d.keepalive_timeout,
                "ami_keepalive_timeout",
                ms,
            )?,
            action_timeout: pick(
                f.ami_action_timeout,
                d.action_timeout,
                "ami_action_timeout",
                ms,
            )?,
            events: f.ami_events.clone().unwrap_or(d.events),
            max_frame_bytes: f.ami_max_frame_bytes.unwrap_or(d.max_frame_bytes),
        };
        if s.retry_max < s.retry_interval {
            return Err(format!(
                "{}: ({}) is shorter than ami_retry_interval ({})",
                self.at("ami_retry_max"),
                humantime::format_duration(s.retry_max),
                humantime::format_duration(s.retry_interval)
            ));
        }
        if s.max_frame_bytes < 64 * 1024 {
            return Err(format!(
                "{}: must be at least 65536 bytes",
                self.at("ami_max_frame_bytes")
            ));
        }
        if s.events.contains(['\r', '\n']) {
            return Err(format!("{}: must be one line", self.at("ami_events")));
        }
        Ok(s)
    }

    fn servers(&self, f: &ConfigFile, global_poll: Duration) -> Result<Vec<ServerConfig>, String> {
        if !f.ami_enabled {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let flat_used = f.ami_username.is_some() || !f.nodes.is_empty();
        if flat_used {
            let sf = ServerFile {
                name: "default".into(),
                host: f.ami_host.clone(),
                port: f.ami_port,
                username: f.ami_username.clone(),
                password: f.ami_password.clone(),
                password_env: f.ami_password_env.clone(),
                password_file: f.ami_password_file.clone(),
                nodes: f.nodes.clone(),
                enabled: true,
            };
            out.push(self.server(&sf, "ami_", global_poll)?);
        }
        for s in f.ami_servers.iter().filter(|s| s.enabled) {
            if out.iter().any(|o: &ServerConfig| o.name == s.name) {
                return Err(format!(
                    "{}: server name {:?} is used twice",
                    self.at("name"),
                    s.name
                ));
            }
            out.push(self.server(s, "", global_poll)?);
        }
        if out.is_empty() {
            return Err(
                "no AMI server configured: set ami_username/ami_password and nodes, or list ami_servers (or set ami_enabled: false)"
                    .into(),
            );
        }
        Ok(out)
    }

    fn server(
        &self,
        s: &ServerFile,
        prefix: &str,
        global_poll: Duration,
    ) -> Result<ServerConfig, String> {
        let key = |k: &str| self.at(&format!("{prefix}{k}"));
        if s.name.is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "{}: server name {:?} may only use letters, digits, '-', '_' and '.'",
                self.at("name"),
                s.name
            ));
        }
        if s.host.trim().is_empty() {
            return Err(format!("{}: is empty", key("host")));
        }
        let username = s
            .username
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                format!(
                    "{}: missing for server {:?} (the manager.conf user)",
                    key("username"),
                    s.name
                )
            })?;
        let password = self.password(s, prefix)?;
        for (what, v) in [("username", &username), ("password", &password)] {
            if v.contains(['\r', '\n']) {
                return Err(format!("{}: must not contain a line break", key(what)));
            }
        }
        if s.nodes.is_empty() {
            return Err(format!(
                "{}: server {:?} lists no nodes to watch",
                self.at("nodes"),
                s.name
            ));
        }
        let mut nodes = Vec::new();
        for n in &s.nodes {
            if n.node_id.is_empty()
                || !n
                    .node_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(format!(
                    "{}: {:?} is not a node number",
                    self.at("node_id"),
                    n.node_id
                ));
            }
            let poll_interval = match n.polling_interval {
                None => global_poll,
                Some(Dur(d)) if d >= Duration::from_secs(1) => d,
                Some(_) => {
                    return Err(format!(
                        "{}: must be at least 1s (node {})",
                        self.at("polling_interval"),
                        n.node_id
                    ));
                }
            };
            nodes.push(NodeConfig {
                node_id: n.node_id.clone(),
                poll_interval,
            });
        }
        Ok(ServerConfig {
            name: s.name.clone(),
            host: s.host.trim().to_owned(),
            port: s.port,
            username,
            password,
            nodes,
        })
    }

    /// The password from the YAML, an environment variable, or a file (exactly one).
    fn password(&self, s: &ServerFile, prefix: &str) -> Result<String, String> {
        let key = |k: &str| self.at(&format!("{prefix}{k}"));
        let given = [
            s.password.is_some(),
            s.password_env.is_some(),
            s.password_file.is_some(),
        ];
        match given.iter().filter(|g| **g).count() {
            0 => {
                return Err(format!(
                    "{}: missing for server {:?} (or use {prefix}password_env / {prefix}password_file)",
                    key("password"),
                    s.name
                ));
            }
            1 => {}
            _ => {
                return Err(format!(
                    "{}: give only one of {prefix}password, {prefix}password_env, {prefix}password_file",
                    key("password")
                ));
            }
        }
        if let Some(p) = &s.password {
            return Ok(p.clone());
        }
        if let Some(var) = &s.password_env {
            return std::env::var(var).map_err(|_| {
                format!(
                    "{}: environment variable {var} is not set",
                    key("password_env")
                )
            });
        }
        if let Some(file) = &s.password_file {
            let path = self.path(file);
            return std::fs::read_to_string(&path)
                .map(|t| t.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| {
                    format!(
                        "{}: cannot read {}: {e}",
                        key("password_file"),
                        path.display()
                    )
                });
        }
        Err(format!("{}: missing", key("password")))
    }
}

#[cfg(test)]
mod tests;

//! Configuration: YAML (read with `serde_yaml_ng`, the maintained successor of the archived
//! `serde_yaml`) into typed settings, validated with messages that name the key and line.
//!
//! Operators' existing keys are kept verbatim (`ami_host`, `ami_retry_interval`,
//! `polling_interval_seconds`, `nodes: [{node_id, polling_interval}]`, …). The flat `ami_*`
//! keys are shorthand for one server named `default`; `ami_servers` lists several.
//! Every key is documented in `config.example.yaml`.
//!
//! Limits (docs/security.md, "AMI and config limits"): the file is read up to
//! [`MAX_CONFIG_BYTES`], a password file up to [`MAX_SECRET_BYTES`]; nesting deeper than
//! [`MAX_NESTING`] is refused before YAML parsing; a leading UTF-8 BOM is accepted; every
//! duration and number has a range, named in the error with the key and its line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub mod bridges;

/// Default cap on one AMI frame: far above any real XStat/LinkedNodes reply. Defined here
/// (not in `ami`) so `config` imports nothing above it; `ami::codec` re-exports it.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

pub mod identity;

pub use identity::{ApiTokenConfig, Role, UserConfig};

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

/// The config file is read up to this size (a larger file, or `/dev/zero`, is an error).
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// A password file is read up to this size.
pub const MAX_SECRET_BYTES: u64 = 4 * 1024;
/// Deepest nesting of YAML collections accepted (block or flow).
pub const MAX_NESTING: usize = 64;
/// The longest duration any setting accepts as written (each key has its own, lower cap).
const MAX_DURATION_SECS: f64 = 365.0 * 24.0 * 3600.0;
/// Default cap on one AMI frame (the same value as `ami::codec::DEFAULT_MAX_FRAME_BYTES`;
/// kept here so `config` imports nothing from `ami`).
pub const DEFAULT_AMI_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Reads at most `limit` bytes of `path` as UTF-8 text; a longer file (or an endless one
/// such as `/dev/zero`) is an error that says so, without reading further.
pub fn read_capped(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("file is larger than the {limit} bytes allowed"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "file is not UTF-8 text (byte {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
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
            Raw::Secs(s) if (0.0..=MAX_DURATION_SECS).contains(&s) => {
                Ok(Dur(Duration::from_secs_f64(s)))
            }
            Raw::Secs(s) if s > MAX_DURATION_SECS => Err(serde::de::Error::custom(format!(
                "duration {s} s is too long (at most one year; each key has its own range)"
            ))),
            Raw::Secs(s) => Err(serde::de::Error::custom(format!(
                "duration must be positive, got {s}"
            ))),
            Raw::Text(t) => match humantime::parse_duration(t.trim()) {
                Ok(d) if d.as_secs_f64() <= MAX_DURATION_SECS => Ok(Dur(d)),
                Ok(_) => Err(serde::de::Error::custom(format!(
                    "duration {t:?} is too long (at most one year; each key has its own range)"
                ))),
                Err(e) => Err(serde::de::Error::custom(format!(
                    "invalid duration {t:?} ({e}); write e.g. 15s, 2m, 1h"
                ))),
            },
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
    /// Run the plugins compiled into the binary (a same-named file in `script_dirs` wins).
    #[serde(default)]
    pub plugins_builtin: bool,
    pub astdb_path: Option<PathBuf>,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub websocket: WebSocketConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub lua: LuaConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// Directory for the daemon's own files (history database, sessions). Default `./state`.
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub history: HistoryConfig,
    #[serde(default)]
    pub alert_webhooks: Vec<WebhookConfig>,
    #[serde(default)]
    pub plugins: BTreeMap<String, serde_json::Value>,
    /// How long shutdown may take (HTTP drain, AMI logoff, flushing); default 5 s.
    pub shutdown_grace: Option<Dur>,
    /// AMI actions per second per server that scripts and the API together may cause.
    pub ami_actions_per_second: Option<u32>,
    /// Whether reads need no credential once tokens or users exist (default true).
    #[serde(default = "yes")]
    pub anonymous_read: bool,
    #[serde(default)]
    pub api_tokens: Vec<ApiTokenConfig>,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub control: ControlConfig,
    /// Publishing to brokers (`src/config/bridges.rs`).
    #[serde(default)]
    pub bridges: bridges::BridgesFile,
    /// Remote nodes taken from brokers.
    #[serde(default)]
    pub sources: Vec<bridges::SourceFile>,
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

/// The WebSocket replay buffer's default size limit (`websocket.replay_buffer_bytes`).
pub const DEFAULT_REPLAY_BYTES: usize = 2 * 1024 * 1024;

/// `websocket:` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    pub max_clients: usize,
    pub replay_buffer: usize,
    /// The replay buffer's size limit, besides its count (`replay_buffer`).
    pub replay_buffer_bytes: usize,
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
            replay_buffer_bytes: DEFAULT_REPLAY_BYTES,
            client_queue: 512,
            heartbeat: Dur(Duration::from_secs(15)),
            max_message_bytes: 4096,
            allowed_origins: Vec::new(),
        }
    }
}

/// `http:` section: limits of the HTTP server (see `docs/security.md, "HTTP limits"`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Host names (or `host:port`) accepted in the `Host` header besides the listen
    /// address and loopback names; `"*"` accepts any (DNS rebinding protection off).
    pub allowed_hosts: Vec<String>,
    /// Time a client has to send a request's headers; also how long an idle keep-alive
    /// connection stays open.
    pub header_read_timeout: Dur,
    /// Open connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Open connections in all (HTTP and WebSocket).
    pub max_connections: usize,
    /// `POST /api/nodes/{id}/poll` per client address per minute.
    pub poll_requests_per_minute: u32,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            allowed_hosts: Vec::new(),
            header_read_timeout: Dur(Duration::from_secs(10)),
            max_connections_per_ip: 128,
            max_connections: 2048,
            poll_requests_per_minute: 30,
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

/// `history:` section: the SQLite history store (`docs/history.md`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    pub enabled: bool,
    /// Database file; default `<state_dir>/history.db`. Resolved when the config is loaded.
    pub path: Option<PathBuf>,
    /// Rows older than this many days are pruned (0 = keep forever).
    pub retention_days: u32,
    /// Depth of the queue from the change stream to the writer thread.
    pub queue: usize,
}

impl Default for HistoryConfig {
    fn default() -> HistoryConfig {
        HistoryConfig {
            enabled: true,
            path: None,
            retention_days: 90,
            queue: 65_536,
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
    /// Only alerts at or above this severity (`info`, `warning`, `critical`); checked at
    /// load, so a typo is a config error naming the line (not "send everything").
    #[serde(default, deserialize_with = "min_severity")]
    pub min_severity: Option<Severity>,
}

/// How bad an alert is. Defined here, at the bottom of the module graph, because the
/// config names it (`alert_webhooks[].min_severity`); `alerts` re-exports it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    /// The words [`Severity::parse`] accepts, for messages.
    pub const ALLOWED: &'static str = "info, warning (warn), critical (crit, error)";

    /// Parses `info`, `warning` (or `warn`), `critical` (or `crit`, `error`).
    pub fn parse(s: &str) -> Option<Severity> {
        match s.to_ascii_lowercase().as_str() {
            "info" => Some(Severity::Info),
            "warning" | "warn" => Some(Severity::Warning),
            "critical" | "crit" | "error" => Some(Severity::Critical),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// `min_severity: <word>` with [`Severity::parse`]'s words; anything else is an error
/// that lists them (the key and line are added by [`describe_yaml_error`]).
fn min_severity<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Severity>, D::Error> {
    let Some(word) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    Severity::parse(word.trim()).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "{word:?} is not a severity; write one of {}",
            Severity::ALLOWED
        ))
    })
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
    /// Idle time after which a `Ping` is sent. Longer than the idle poll (60 s), so the
    /// polls themselves prove an idle session alive and no Ping is spent (issue 13).
    pub keepalive_interval: Duration,
    /// How long a `Ping`, or an action written while the peer was silent, may go
    /// unanswered before the session is reset.
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
            keepalive_interval: Duration::from_secs(90),
            keepalive_timeout: Duration::from_secs(10),
            action_timeout: Duration::from_secs(10),
            events: "call".into(),
            max_frame_bytes: DEFAULT_AMI_MAX_FRAME_BYTES,
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
    /// Run the bundled plugins embedded in the binary (`script::builtin`).
    pub plugins_builtin: bool,
    pub astdb_path: PathBuf,
    pub metrics: MetricsConfig,
    pub websocket: WebSocketConfig,
    pub http: HttpConfig,
    pub lua: LuaConfig,
    pub alerts: AlertsConfig,
    pub alert_webhooks: Vec<WebhookConfig>,
    pub plugins: BTreeMap<String, serde_json::Value>,
    /// Servers not set up yet: AMI secret missing, or no nodes listed (server name → what
    /// to configure, in plain words). Only [`Config::load_for_service`] leaves this
    /// non-empty: those servers are not contacted, and health says what to do, instead of
    /// the service crash-looping.
    pub setup_needed: BTreeMap<String, String>,
    /// How long shutdown may take before the process exits anyway (0 … 60 s).
    pub shutdown_grace: Duration,
    /// AMI actions per second per server from scripts and the API together (1 … 1000).
    pub ami_actions_per_second: u32,
    /// Directory for the daemon's own files (resolved against the config file's folder).
    pub state_dir: PathBuf,
    /// Durable history (`history:`), with `path` resolved.
    pub history: HistoryConfig,
    pub anonymous_read: bool,
    pub api_tokens: Vec<ApiTokenConfig>,
    pub users: Vec<UserConfig>,
    pub control: ControlConfig,
    /// `bridges:` and `sources:` (MQTT), validated.
    pub bridges: bridges::BridgesConfig,
}

/// Default `shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Default `ami_actions_per_second`.
pub const DEFAULT_AMI_ACTIONS_PER_SECOND: u32 = 20;

/// Where AllStarLink keeps the node database.
pub const DEFAULT_ASTDB: &str = "/var/lib/asterisk/astdb.txt";

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_capped(path, MAX_CONFIG_BYTES).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string(), path.parent())
    }

    /// Like [`Config::load`], but a server whose AMI secret is missing (not given, its
    /// environment variable unset, its file unreadable or empty) or that lists no nodes is
    /// kept, listed in `setup_needed`, instead of failing: a freshly installed service
    /// starts, serves health and says what to configure. Every other mistake is an error.
    pub fn load_for_service(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse_with(&text, &path.display().to_string(), path.parent(), true)
    }

    /// Parses YAML text; `origin` names the file in messages; relative paths in the file
    /// (password files, script dirs, astdb) are resolved against `base`.
    pub fn parse(text: &str, origin: &str, base: Option<&Path>) -> Result<Config, ConfigError> {
        Config::parse_with(text, origin, base, false)
    }

    fn parse_with(
        text: &str,
        origin: &str,
        base: Option<&Path>,
        lenient: bool,
    ) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        };
        // Editors on Windows save a byte-order mark; YAML allows it.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(invalid(format!(
                "the file is larger than the {MAX_CONFIG_BYTES} bytes allowed"
            )));
        }
        if let Some(line) = too_deep(text, MAX_NESTING) {
            return Err(invalid(format!(
                "line {line}: nesting is deeper than {MAX_NESTING} levels (refused before parsing)"
            )));
        }
        if let Some(msg) = repeated_key(text) {
            return Err(invalid(msg));
        }
        let file: ConfigFile = if text.trim().is_empty() {
            return Err(invalid(
                "the file is empty; see config.example.yaml for every key".into(),
            ));
        } else {
            let de = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de)
                .map_err(|e| invalid(describe_yaml_error(text, &e)))?
        };
        let resolver = Resolver {
            text,
            base,
            lenient,
            missing: Default::default(),
        };
        resolver.resolve(file).map_err(invalid)
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
    let leaf = path.rsplit('.').next().unwrap_or(&path);
    let leaf = leaf.split('[').next().unwrap_or(leaf);
    // A bad value in a list item is placed by serde at the item's start: name the key's
    // own line (the first at or after that one) instead.
    let own_line = inner
        .location()
        .filter(|_| has_line && !path.ends_with(']'))
        .and_then(|l| key_line_from(text, leaf, l.line()));
    let line = if let Some(n) = own_line {
        if let Some(at) = msg.rfind(" at line ") {
            msg.truncate(at);
        }
        format!(" (line {n})")
    } else if has_line {
        String::new()
    } else {
        // Custom errors (bad durations…) carry no position: find the key's line.
        Resolver {
            text,
            base: None,
            lenient: false,
            missing: Default::default(),
        }
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

/// The first line, from `from` (1-based) on, where `key:` is written (in block or flow
/// style).
fn key_line_from(text: &str, key: &str, from: usize) -> Option<usize> {
    if key.is_empty() {
        return None;
    }
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, line)| {
            line.split([',', '{', '}', '[', ']']).any(|part| {
                part.trim()
                    .trim_start_matches("- ")
                    .strip_prefix(key)
                    .is_some_and(|r| r.trim_start().starts_with(':'))
            })
        })
        .map(|(i, _)| i + 1)
}

struct Resolver<'a> {
    text: &'a str,
    base: Option<&'a Path>,
    /// Missing AMI secrets and empty node lists are recorded in `missing` (not failing).
    lenient: bool,
    missing: std::cell::RefCell<BTreeMap<String, String>>,
}

/// Why a server's password could not be had.
enum SecretError {
    /// Not given, or its variable/file is not there: what a fresh install looks like.
    Missing(String),
    /// A mistake in the file (several sources given).
    Invalid(String),
}

impl Resolver<'_> {
    /// `key` at line N, found by a plain text search (for checks made after parsing). A
    /// dotted key (`history.queue`) is looked for in that top-level section only.
    fn at(&self, key: &str) -> String {
        if let Some((section, leaf)) = key.split_once('.') {
            return self.at_in(section, leaf).map_or_else(
                || self.at(leaf).replacen(leaf, key, 1),
                |line| format!("{key} (line {line})"),
            );
        }
        for (i, line) in self.text.lines().enumerate() {
            let t = line.trim_start().trim_start_matches("- ");
            if t.starts_with(key) && t[key.len()..].trim_start().starts_with(':') {
                return format!("{key} (line {})", i + 1);
            }
        }
        key.to_owned()
    }

    /// The line of `key` inside the top-level block `section:` (before the next top-level
    /// key), if it is written there.
    fn at_in(&self, section: &str, key: &str) -> Option<usize> {
        let mut inside = false;
        for (i, line) in self.text.lines().enumerate() {
            let t = line.trim_start();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let has = |k: &str| t.starts_with(k) && t[k.len()..].trim_start().starts_with(':');
            if !line.starts_with(' ') {
                inside = has(section);
            } else if inside && has(key) {
                return Some(i + 1);
            }
        }
        None
    }

    /// The `nth` (1-based) line where `key` has `value` (quotes ignored), as
    /// `key (line N)`; falls back to [`Resolver::at`].
    fn at_value(&self, key: &str, value: &str, nth: usize) -> String {
        let mut found = 0;
        for (i, line) in self.text.lines().enumerate() {
            for part in line.split([',', '{', '}', '[', ']']) {
                let t = part.trim().trim_start_matches("- ");
                let Some(v) = t
                    .strip_prefix(key)
                    .and_then(|r| r.trim_start().strip_prefix(':'))
                else {
                    continue;
                };
                if v.split(" #")
                    .next()
                    .unwrap_or(v)
                    .trim()
                    .trim_matches(['"', '\''])
                    == value
                {
                    found += 1;
                    if found == nth {
                        return format!("{key} (line {})", i + 1);
                    }
                }
            }
        }
        self.at(key)
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
        self.check_sections(&f)?;
        let servers = self.servers(&f, self.global_poll(&f)?)?;
        let seen = self.node_owners(&servers)?;
        let shutdown_grace = self.dur_in(
            "shutdown_grace",
            f.shutdown_grace.map_or(DEFAULT_SHUTDOWN_GRACE, |d| d.0),
            Duration::ZERO,
            MAX_SHUTDOWN_GRACE,
        )?;
        let ami_actions_per_second = self.num_in(
            "ami_actions_per_second",
            f.ami_actions_per_second
                .unwrap_or(DEFAULT_AMI_ACTIONS_PER_SECOND),
            1,
            1000,
        )?;
        let state_dir = self.path(
            f.state_dir
                .as_deref()
                .unwrap_or_else(|| Path::new("./state")),
        );
        identity::check_config(&f.api_tokens, &f.users, &seen)
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
            plugins_builtin: f.plugins_builtin,
            astdb_path: f
                .astdb_path
                .as_deref()
                .map(|p| self.path(p))
                .unwrap_or_else(|| DEFAULT_ASTDB.into()),
            metrics: f.metrics,
            websocket: f.websocket,
            http: f.http,
            lua: f.lua,
            alerts: f.alerts,
            alert_webhooks: f.alert_webhooks,
            plugins: f.plugins,
            setup_needed: self.missing.take(),
            shutdown_grace,
            ami_actions_per_second,
            history: HistoryConfig {
                path: Some(self.history_path(&f.history, &state_dir)),
                ..f.history
            },
            state_dir,
            anonymous_read: f.anonymous_read,
            api_tokens: f.api_tokens,
            users: f.users,
            control: f.control,
            bridges: bridges::resolve(f.bridges, f.sources, &|k| std::env::var(k).ok())
                .map_err(|e| format!("{}: {}", self.at(e.key), e.message))?,
        })
    }

    /// The history database: `history.path` resolved, else `<state_dir>/history.db`.
    fn history_path(&self, h: &HistoryConfig, state_dir: &Path) -> PathBuf {
        h.path
            .as_deref()
            .map(|p| self.path(p))
            .unwrap_or_else(|| state_dir.join("history.db"))
    }

    /// `polling_interval_seconds`, 60 s when not given.
    fn global_poll(&self, f: &ConfigFile) -> Result<Duration, String> {
        match f.polling_interval_seconds {
            None => Ok(Duration::from_secs(60)),
            Some(s) if (1.0..=DAY.as_secs_f64()).contains(&s) => Ok(Duration::from_secs_f64(s)),
            Some(s) => Err(format!(
                "{}: must be between 1 and 86400 seconds, got {s}",
                self.at("polling_interval_seconds")
            )),
        }
    }

    /// Which server watches each node; a node listed twice is an error naming the second
    /// listing.
    fn node_owners(&self, servers: &[ServerConfig]) -> Result<BTreeMap<String, String>, String> {
        let mut seen = BTreeMap::new();
        for s in servers {
            for n in &s.nodes {
                if let Some(other) = seen.insert(n.node_id.clone(), s.name.clone()) {
                    return Err(format!(
                        "{}: node {} is listed twice (servers {other} and {})",
                        self.at_value("node_id", &n.node_id, 2),
                        n.node_id,
                        s.name
                    ));
                }
            }
        }
        Ok(seen)
    }

    fn ami_settings(&self, f: &ConfigFile) -> Result<AmiSettings, String> {
        let d = AmiSettings::default();
        let pick = |v: Option<Dur>, dflt: Duration, key: &str, max: Duration| {
            self.dur_in(key, v.map(|d| d.0).unwrap_or(dflt), MS, max)
        };
        let s = AmiSettings {
            retry_interval: pick(
                f.ami_retry_interval,
                d.retry_interval,
                "ami_retry_interval",
                HOUR,
            )?,
            retry_max: pick(f.ami_retry_max, d.retry_max, "ami_retry_max", HOUR)?,
            retry_jitter: d.retry_jitter,
            connect_timeout: pick(
                f.ami_connect_timeout,
                d.connect_timeout,
                "ami_connect_timeout",
                FIVE_MIN,
            )?,
            keepalive_interval: pick(
                f.ami_keepalive_interval,
                d.keepalive_interval,
                "ami_keepalive_interval",
                HOUR,
            )?,
            keepalive_timeout: pick(
                f.ami_keepalive_timeout,
                d.keepalive_timeout,
                "ami_keepalive_timeout",
                FIVE_MIN,
            )?,
            action_timeout: pick(
                f.ami_action_timeout,
                d.action_timeout,
                "ami_action_timeout",
                FIVE_MIN,
            )?,
            events: f.ami_events.clone().unwrap_or(d.events),
            max_frame_bytes: self.num_in(
                "ami_max_frame_bytes",
                f.ami_max_frame_bytes.unwrap_or(d.max_frame_bytes),
                64 * 1024,
                256 * 1024 * 1024,
            )?,
        };
        if s.retry_max < s.retry_interval {
            return Err(format!(
                "{}: ({}) is shorter than ami_retry_interval ({})",
                self.at("ami_retry_max"),
                humantime::format_duration(s.retry_max),
                humantime::format_duration(s.retry_interval)
            ));
        }
        if !valid_event_mask(&s.events) {
            return Err(format!(
                "{}: {:?} is not an AMI event mask: write on, off, a number, or classes such as call or call,dialplan",
                self.at("ami_events"),
                s.events
            ));
        }
        Ok(s)
    }

    /// `v` if it lies in `lo..=hi`, else an error naming the key, its line and the range.
    fn dur_in(
        &self,
        key: &str,
        v: Duration,
        lo: Duration,
        hi: Duration,
    ) -> Result<Duration, String> {
        if v < lo || v > hi {
            return Err(format!(
                "{}: must be between {} and {}, got {}",
                self.at(key),
                humantime::format_duration(lo),
                humantime::format_duration(hi),
                humantime::format_duration(v)
            ));
        }
        Ok(v)
    }

    /// `v` if it lies in `lo..=hi`, else an error naming the key, its line and the range.
    fn num_in<T: PartialOrd + std::fmt::Display>(
        &self,
        key: &str,
        v: T,
        lo: T,
        hi: T,
    ) -> Result<T, String> {
        if v < lo || v > hi {
            return Err(format!(
                "{}: must be between {lo} and {hi}, got {v}",
                self.at(key)
            ));
        }
        Ok(v)
    }

    /// Ranges of the `websocket`, `lua`, `alerts`, `http`, `alert_webhooks`, `history` and
    /// `control` settings.
    fn check_sections(&self, f: &ConfigFile) -> Result<(), String> {
        let ws = &f.websocket;
        self.num_in("max_clients", ws.max_clients, 1, 100_000)?;
        self.num_in("replay_buffer", ws.replay_buffer, 1, 1_000_000)?;
        self.num_in(
            "replay_buffer_bytes",
            ws.replay_buffer_bytes,
            64 * 1024,
            1024 * 1024 * 1024,
        )?;
        self.num_in("client_queue", ws.client_queue, 1, 100_000)?;
        self.num_in(
            "max_message_bytes",
            ws.max_message_bytes,
            64,
            16 * 1024 * 1024,
        )?;
        self.dur_in(
            "heartbeat",
            ws.heartbeat.0,
            Duration::from_millis(100),
            HOUR,
        )?;
        let lua = &f.lua;
        self.num_in("memory_limit_mb", lua.memory_limit_mb, 1, 4096)?;
        self.num_in("queue", lua.queue, 1, 10_000_000)?;
        self.num_in(
            "max_consecutive_errors",
            lua.max_consecutive_errors,
            1,
            1_000_000,
        )?;
        self.dur_in(
            "callback_budget",
            lua.callback_budget.0,
            MS,
            Duration::from_secs(60),
        )?;
        self.num_in("history", f.alerts.history, 0, 1_000_000)?;
        self.dur_in(
            "repeat_interval",
            f.alerts.repeat_interval.0,
            Duration::ZERO,
            7 * DAY,
        )?;
        let h = &f.http;
        self.dur_in(
            "header_read_timeout",
            h.header_read_timeout.0,
            Duration::from_millis(100),
            HOUR,
        )?;
        self.num_in(
            "max_connections_per_ip",
            h.max_connections_per_ip,
            1,
            1_000_000,
        )?;
        self.num_in("max_connections", h.max_connections, 1, 1_000_000)?;
        self.num_in(
            "poll_requests_per_minute",
            h.poll_requests_per_minute as usize,
            1,
            1_000_000,
        )?;
        for w in &f.alert_webhooks {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return Err(format!(
                    "{}: {:?} must start with http:// or https://",
                    self.at("url"),
                    w.url
                ));
            }
            self.dur_in("timeout", w.timeout.0, MS, FIVE_MIN)?;
            self.num_in("retries", w.retries, 0, 100)?;
        }
        self.num_in(
            "history.retention_days",
            f.history.retention_days,
            0,
            MAX_RETENTION_DAYS,
        )?;
        self.num_in("history.queue", f.history.queue, 1, 1_000_000)?;
        self.check_control(&f.control)
    }

    /// Ranges of the `control:` numbers and durations.
    fn check_control(&self, c: &ControlConfig) -> Result<(), String> {
        self.dur_in(
            "control.verify_timeout",
            c.verify_timeout.0,
            Duration::from_millis(100),
            FIVE_MIN,
        )?;
        self.num_in(
            "control.rate_limit_per_minute",
            c.rate_limit_per_minute,
            1,
            10_000,
        )?;
        self.dur_in(
            "control.session_ttl",
            c.session_ttl.0,
            Duration::from_secs(60),
            30 * DAY,
        )?;
        self.num_in(
            "control.login_slowdown_after",
            c.login_slowdown_after,
            0,
            1000,
        )?;
        self.num_in(
            "control.login_lockout_after",
            c.login_lockout_after,
            1,
            1000,
        )?;
        self.dur_in(
            "control.login_lockout",
            c.login_lockout.0,
            Duration::from_secs(1),
            DAY,
        )?;
        Ok(())
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
        if s.port == 0 {
            return Err(format!(
                "{}: must be between 1 and 65535, got 0",
                key("port")
            ));
        }
        let (username, password) = self.credentials(s, prefix)?;
        Ok(ServerConfig {
            name: s.name.clone(),
            host: s.host.trim().to_owned(),
            port: s.port,
            username,
            password,
            nodes: self.nodes(s, global_poll)?,
        })
    }

    /// The AMI user and secret of a server (a missing secret is recorded, not an error,
    /// in service mode).
    fn credentials(&self, s: &ServerFile, prefix: &str) -> Result<(String, String), String> {
        let key = |k: &str| self.at(&format!("{prefix}{k}"));
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
        let password = match self.password(s, prefix) {
            Ok(p) => p,
            Err(SecretError::Missing(e)) if self.lenient => {
                self.setup_needed(&s.name, format!(
                    "no AMI secret for server {:?} ({e}): give the secret of the ami_username user in /etc/asterisk/manager.conf",
                    s.name
                ));
                String::new()
            }
            Err(SecretError::Missing(e) | SecretError::Invalid(e)) => return Err(e),
        };
        for (what, v) in [("username", &username), ("password", &password)] {
            if v.contains(['\r', '\n']) {
                return Err(format!("{}: must not contain a line break", key(what)));
            }
        }
        Ok((username, password))
    }

    /// A server's nodes with their polling intervals (an empty list is recorded, not an
    /// error, in service mode).
    fn nodes(&self, s: &ServerFile, global_poll: Duration) -> Result<Vec<NodeConfig>, String> {
        if s.nodes.is_empty() {
            let e = format!(
                "{}: server {:?} lists no nodes to watch",
                self.at("nodes"),
                s.name
            );
            if !self.lenient {
                return Err(e);
            }
            self.setup_needed(
                &s.name,
                format!(
                    "{e}: add your node number(s), the [NNNN] sections of /etc/asterisk/rpt.conf"
                ),
            );
        }
        let mut nodes = Vec::new();
        for n in &s.nodes {
            if n.node_id.is_empty()
                || n.node_id.len() > 10
                || !n.node_id.bytes().all(|c| c.is_ascii_digit())
            {
                return Err(format!(
                    "{}: {:?} is not a node number (node numbers are 1 to 10 digits, e.g. 1999)",
                    self.at_value("node_id", &n.node_id, 1),
                    n.node_id
                ));
            }
            let poll_interval = match n.polling_interval {
                None => global_poll,
                Some(Dur(d)) if d >= Duration::from_secs(1) && d <= DAY => d,
                Some(Dur(d)) => {
                    return Err(format!(
                        "{}: must be between 1s and 1day, got {} (node {})",
                        self.at("polling_interval"),
                        humantime::format_duration(d),
                        n.node_id
                    ));
                }
            };
            nodes.push(NodeConfig {
                node_id: n.node_id.clone(),
                poll_interval,
            });
        }
        Ok(nodes)
    }

    /// Records what a server still needs (service mode).
    fn setup_needed(&self, server: &str, what: String) {
        let mut m = self.missing.borrow_mut();
        let entry = m.entry(server.to_owned()).or_default();
        if !entry.is_empty() {
            entry.push_str("; ");
        }
        entry.push_str(&what);
    }

    /// The password from the YAML, an environment variable, or a file (exactly one).
    fn password(&self, s: &ServerFile, prefix: &str) -> Result<String, SecretError> {
        let key = |k: &str| self.at(&format!("{prefix}{k}"));
        let given = [
            s.password.is_some(),
            s.password_env.is_some(),
            s.password_file.is_some(),
        ];
        match given.iter().filter(|g| **g).count() {
            0 => {
                return Err(SecretError::Missing(format!(
                    "{}: missing for server {:?} (or use {prefix}password_env / {prefix}password_file)",
                    key("password"),
                    s.name
                )));
            }
            1 => {}
            _ => {
                return Err(SecretError::Invalid(format!(
                    "{}: give only one of {prefix}password, {prefix}password_env, {prefix}password_file",
                    key("password")
                )));
            }
        }
        if let Some(p) = &s.password {
            return Ok(p.clone());
        }
        if let Some(var) = &s.password_env {
            return std::env::var(var).map_err(|_| {
                SecretError::Missing(format!(
                    "{}: environment variable {var} is not set",
                    key("password_env")
                ))
            });
        }
        if let Some(file) = &s.password_file {
            let path = self.path(file);
            let secret = read_capped(&path, MAX_SECRET_BYTES)
                .map(|t| t.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| {
                    let msg = format!(
                        "{}: cannot read {}: {e}",
                        key("password_file"),
                        path.display()
                    );
                    // Absent is a fresh install; too large or not text is a mistake.
                    if e.kind() == std::io::ErrorKind::NotFound {
                        SecretError::Missing(msg)
                    } else {
                        SecretError::Invalid(msg)
                    }
                })?;
            if secret.is_empty() {
                return Err(SecretError::Missing(format!(
                    "{}: {} is empty",
                    key("password_file"),
                    path.display()
                )));
            }
            return Ok(secret);
        }
        Err(SecretError::Missing(format!(
            "{}: missing",
            key("password")
        )))
    }
}

#[cfg(test)]
mod tests;

const MS: Duration = Duration::from_millis(1);
const FIVE_MIN: Duration = Duration::from_secs(300);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
/// Longest `shutdown_grace` (the default is [`DEFAULT_SHUTDOWN_GRACE`]).
pub const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(60);
/// Longest `history.retention_days` (a century; 0 keeps rows forever).
const MAX_RETENTION_DAYS: u32 = 36_500;

/// Asterisk's AMI event class names in bit order (`main/manager.c`); the simulator's mask
/// parser uses the same list.
pub const EVENT_CLASSES: [&str; 19] = [
    "system",
    "call",
    "log",
    "verbose",
    "command",
    "agent",
    "user",
    "config",
    "dtmf",
    "reporting",
    "cdr",
    "dialplan",
    "originate",
    "agi",
    "cc",
    "aoc",
    "test",
    "security",
    "message",
];

/// An `Events:` mask Asterisk understands (ami-app-rpt.md §1.4, `strings_to_mask`): all
/// digits, a true/false word, or a comma list of event class names.
fn valid_event_mask(mask: &str) -> bool {
    const WORDS: [&str; 6] = ["on", "off", "yes", "no", "true", "false"];
    let m = mask.trim();
    if !m.is_empty() && m.len() <= 10 && m.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    if WORDS.iter().any(|w| w.eq_ignore_ascii_case(m)) {
        return true;
    }
    !m.is_empty()
        && m.split(',').all(|c| {
            EVENT_CLASSES
                .iter()
                .any(|k| k.eq_ignore_ascii_case(c.trim()))
        })
}

/// Leading blanks, and the text after any `- ` list markers: (column of the text, number
/// of markers, text).
fn split_indent(line: &str) -> (usize, usize, &str) {
    let mut col = line.len() - line.trim_start_matches(' ').len();
    let mut rest = &line[col..];
    let mut dashes = 0;
    while let Some(r) = rest
        .strip_prefix("- ")
        .or(if rest == "-" { Some("") } else { None })
    {
        let r2 = r.trim_start_matches(' ');
        col += rest.len() - r2.len();
        rest = r2;
        dashes += 1;
    }
    (col, dashes, rest)
}

/// True when a line's value opens a block scalar (`key: |`, `- >-`…).
fn opens_block_scalar(rest: &str) -> bool {
    let v = rest.split_once(": ").map_or(rest, |(_, v)| v).trim_end();
    let v = v.split(" #").next().unwrap_or(v).trim_end();
    matches!(v.chars().next(), Some('|' | '>'))
        && v.len() <= 3
        && v[1..].chars().all(|c| matches!(c, '-' | '+' | '0'..='9'))
}

/// The line where nesting (block indentation levels, or flow `[`/`{` depth) first goes
/// past `max`, found with one pass over the text (YAML parsing of such input is slow).
fn too_deep(text: &str, max: usize) -> Option<usize> {
    let mut stack: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut scalar: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let (col, dashes, rest) = split_indent(line);
        if rest.is_empty() || rest.starts_with('#') {
            continue;
        }
        if let Some(at) = scalar {
            if line.len() - line.trim_start_matches(' ').len() > at {
                continue;
            }
            scalar = None;
        }
        if flow == 0 {
            let lead = line.len() - line.trim_start_matches(' ').len();
            while stack.last().is_some_and(|t| *t > lead) {
                stack.pop();
            }
            if stack.last() != Some(&lead) {
                stack.push(lead);
            }
            if stack.len() + dashes > max {
                return Some(i + 1);
            }
            if opens_block_scalar(rest) {
                scalar = Some(lead);
                continue;
            }
        }
        let _ = col;
        let (mut single, mut double) = (false, false);
        let mut prev = b' ';
        for &b in rest.as_bytes() {
            match b {
                b'\'' if !double => single = !single,
                b'"' if !single && prev != b'\\' => double = !double,
                b'#' if !single && !double && prev == b' ' => break,
                b'[' | b'{' if !single && !double => {
                    flow += 1;
                    if flow > max {
                        return Some(i + 1);
                    }
                }
                b']' | b'}' if !single && !double => flow = flow.saturating_sub(1),
                _ => {}
            }
            prev = b;
        }
    }
    None
}

/// A key written twice in the same block mapping, named with both lines (serde's own
/// message would point at the wrong place or not say which key).
fn repeated_key(text: &str) -> Option<String> {
    let mut maps: Vec<(usize, BTreeMap<String, usize>)> = Vec::new();
    let mut scalar: Option<usize> = None;
    let mut flow = false;
    for (i, line) in text.lines().enumerate() {
        let (col, dashes, rest) = split_indent(line);
        if rest.is_empty() || rest.starts_with('#') {
            continue;
        }
        let lead = line.len() - line.trim_start_matches(' ').len();
        if let Some(at) = scalar {
            if lead > at {
                continue;
            }
            scalar = None;
        }
        if flow {
            // Inside a multi-line flow collection: not block keys.
            flow = rest.contains(['[', '{']) || !rest.contains([']', '}']);
            continue;
        }
        while maps
            .last()
            .is_some_and(|(c, _)| *c > col || (dashes > 0 && *c >= col))
        {
            maps.pop();
        }
        if opens_block_scalar(rest) {
            scalar = Some(lead);
        }
        let opens = rest.matches(['[', '{']).count();
        let closes = rest.matches([']', '}']).count();
        let Some((key, _)) = rest.split_once(':') else {
            flow = opens > closes;
            continue;
        };
        flow = opens > closes;
        let after = &rest[key.len() + 1..];
        let key = key.trim().trim_matches(['"', '\'']);
        let plain = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if !plain || !(after.is_empty() || after.starts_with(' ')) {
            continue;
        }
        if maps.last().is_none_or(|(c, _)| *c != col) {
            maps.push((col, BTreeMap::new()));
        }
        if let Some((_, keys)) = maps.last_mut() {
            if let Some(first) = keys.insert(key.to_owned(), i + 1) {
                return Some(format!(
                    "{key} (line {}): is repeated (first at line {first}); keep only one",
                    i + 1
                ));
            }
        }
    }
    None
}

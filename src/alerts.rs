//! Alerts: raised by Lua scripts (`nexus.alert{…}`) and the daemon, delivered to the log,
//! WebSocket clients, `GET /api/alerts` (bounded history), metrics, and webhooks.
//!
//! Repeats of the same `key` from the same source within `alerts.repeat_interval` are
//! suppressed (and counted). Every alert is bounded: fields are cut to [`MAX_FIELD_BYTES`]
//! (`message` to [`MAX_MESSAGE_BYTES`]) and marked `truncated`; each source (a script) may
//! raise at most [`MAX_PER_SECOND`] alerts a second and use at most [`MAX_KEYS_PER_SOURCE`]
//! distinct keys at once (refusals are counted in `nexus_alerts_dropped_total{reason}`);
//! alert log lines are rate-limited per source and title. So the history holds at most
//! `alerts.history` × about 7 KiB, whatever a script sends.
//!
//! Webhooks are POSTed from their own tasks with a timeout and retries, so a slow
//! receiver never blocks the engine or the Lua thread.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::config::{AlertsConfig, WebhookConfig};
use crate::metrics::Metrics;
use crate::observe::{InternalEvent, LogDecision, LogLimiter, now_ms};

/// Longest `title`, `node`, `key` and `source` kept, in bytes.
pub const MAX_FIELD_BYTES: usize = 1024;
/// Longest `message` kept, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Alerts one source may raise per second; the rest are refused (counted, reason `rate`).
pub const MAX_PER_SECOND: u32 = 10;
/// Distinct deduplication keys one source may hold at once (reason `keys` past it).
pub const MAX_KEYS_PER_SOURCE: usize = 1000;
/// Distinct sources tracked (scripts and the daemon); past it, sources share one slot.
const MAX_SOURCES: usize = 1024;
/// At most one log line per source and title this often (the rest are counted).
const LOG_EVERY: Duration = Duration::from_secs(1);
/// Longest message shown in a log line.
const LOG_MESSAGE_CHARS: usize = 300;

/// How bad it is (defined in `config`, which names it in `min_severity`).
pub use crate::config::Severity;

/// What a script or the daemon asks for.
#[derive(Debug, Clone)]
pub struct AlertRequest {
    pub severity: Severity,
    pub title: String,
    pub message: String,
    pub node: Option<String>,
    /// Deduplication key: repeats within the repeat interval are suppressed.
    pub key: Option<String>,
    /// Who raised it (script name, or `daemon`).
    pub source: String,
}

/// A raised alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub id: u64,
    pub time_ms: u64,
    pub severity: Severity,
    pub title: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub source: String,
    /// A field was longer than its limit and was cut (its text ends with `…`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl Alert {
    /// Bytes of text this alert holds (for the history bound).
    pub fn text_bytes(&self) -> usize {
        self.title.len()
            + self.message.len()
            + self.source.len()
            + self.node.as_ref().map_or(0, String::len)
            + self.key.as_ref().map_or(0, String::len)
    }
}

/// Why [`AlertHub::try_raise`] did not raise an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The same key was raised within `alerts.repeat_interval`.
    Repeat,
    /// The source raised more than [`MAX_PER_SECOND`] alerts this second.
    Rate,
    /// The source holds [`MAX_KEYS_PER_SOURCE`] keys already.
    Keys,
}

impl Refused {
    /// The `reason` label of `nexus_alerts_dropped_total` (`repeat` is counted in
    /// `nexus_alerts_suppressed_total` instead).
    pub fn label(self) -> &'static str {
        match self {
            Refused::Repeat => "repeat",
            Refused::Rate => "rate",
            Refused::Keys => "keys",
        }
    }
}

/// An alert was raised ([`crate::observe::InternalEvent`]): counts
/// `nexus_alerts_total{severity}` and logs it, at most one line per source and title per
/// [`LOG_EVERY`] (with the number held back).
struct AlertRaised<'a> {
    alert: &'a Alert,
    log_limit: &'a LogLimiter,
}

impl InternalEvent for AlertRaised<'_> {
    fn emit(self, metrics: &Metrics) {
        let alert = self.alert;
        metrics
            .alerts
            .with_label_values(&[alert.severity.as_str()])
            .inc();
        let (title, _) = crate::observe::clip(&alert.title, 100);
        let LogDecision::Write { suppressed } = self
            .log_limit
            .allow(&format!("{}\u{0}{title}", alert.source))
        else {
            return;
        };
        let (message, _) = crate::observe::clip(&alert.message, LOG_MESSAGE_CHARS);
        let more = if suppressed > 0 {
            format!(" ({suppressed} more like it not logged)")
        } else {
            String::new()
        };
        match alert.severity {
            Severity::Info => {
                tracing::info!(source = %alert.source, node = ?alert.node, "[ALERT] {title}: {message}{more}")
            }
            _ => {
                tracing::warn!(source = %alert.source, node = ?alert.node, severity = alert.severity.as_str(), "[ALERT] {title}: {message}{more}")
            }
        }
    }
}

/// An alert was not raised: suppressed as a repeat (counted in
/// `nexus_alerts_suppressed_total{severity}`, logged at debug level) or dropped by a
/// per-source limit (`nexus_alerts_dropped_total{reason}`, a warning). Both lines are
/// rate-limited per source.
struct AlertRefused<'a> {
    source: &'a str,
    severity: Severity,
    why: Refused,
    log_limit: &'a LogLimiter,
}

impl InternalEvent for AlertRefused<'_> {
    fn emit(self, metrics: &Metrics) {
        let (source, why) = (crate::observe::clip(self.source, 100).0, self.why);
        if why == Refused::Repeat {
            metrics
                .alerts_suppressed
                .with_label_values(&[self.severity.as_str()])
                .inc();
        } else {
            metrics
                .alerts_dropped
                .with_label_values(&[why.label()])
                .inc();
        }
        let key = format!("\u{0}{}\u{0}{source}", why.label());
        let LogDecision::Write { suppressed } = self.log_limit.allow(&key) else {
            return;
        };
        if why == Refused::Repeat {
            tracing::debug!(source = %source, "[ALERT] an alert from {source} was {why} ({suppressed} more before this one)");
        } else {
            tracing::warn!(source = %source, "[ALERT] alerts from {source} {why} ({suppressed} more refused before this one)");
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::Repeat => "suppressed: the same key was raised within alerts.repeat_interval",
            Refused::Rate => "refused: more than 10 alerts a second from this script",
            Refused::Keys => "refused: this script already uses 1000 distinct alert keys",
        })
    }
}

/// One source's limits.
struct SourceState {
    /// When each key was last raised.
    keys: HashMap<String, Instant>,
    window: Instant,
    in_window: u32,
}

struct Inner {
    next_id: u64,
    history: VecDeque<Arc<Alert>>,
    sources: HashMap<String, SourceState>,
}

impl Inner {
    /// Applies the per-source limits; records the key when the alert may go out.
    fn admit(&mut self, req: &AlertRequest, repeat: Duration) -> Result<(), Refused> {
        let now = Instant::now();
        let slot = if self.sources.contains_key(&req.source) || self.sources.len() < MAX_SOURCES {
            req.source.clone()
        } else {
            "\u{0}other".to_owned()
        };
        let src = self.sources.entry(slot).or_insert_with(|| SourceState {
            keys: HashMap::new(),
            window: now,
            in_window: 0,
        });
        if let Some(key) = &req.key {
            if src
                .keys
                .get(key)
                .is_some_and(|t| now.duration_since(*t) < repeat)
            {
                return Err(Refused::Repeat);
            }
        }
        if now.duration_since(src.window) >= Duration::from_secs(1) {
            src.window = now;
            src.in_window = 0;
        }
        if src.in_window >= MAX_PER_SECOND {
            return Err(Refused::Rate);
        }
        if let Some(key) = &req.key {
            if !src.keys.contains_key(key) && src.keys.len() >= MAX_KEYS_PER_SOURCE {
                src.keys.retain(|_, t| now.duration_since(*t) < repeat);
                if src.keys.len() >= MAX_KEYS_PER_SOURCE {
                    return Err(Refused::Keys);
                }
            }
            src.keys.insert(key.clone(), now);
        }
        src.in_window += 1;
        Ok(())
    }
}

/// The longest prefix of `text` of at most `max` bytes ending on a character boundary.
fn clip_bytes(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Cuts a field to `max` bytes; says whether it was cut.
fn bounded(text: String, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text, false);
    }
    (
        format!("{}…", clip_bytes(&text, max - '…'.len_utf8())),
        true,
    )
}

fn bounded_opt(text: Option<String>, max: usize, cut: &mut bool) -> Option<String> {
    text.map(|t| {
        let (t, c) = bounded(t, max);
        *cut |= c;
        t
    })
}

/// The alert hub. Cheap to clone.
#[derive(Clone)]
pub struct AlertHub {
    inner: Arc<Mutex<Inner>>,
    tx: broadcast::Sender<Arc<Alert>>,
    history_cap: usize,
    repeat: Duration,
    webhooks: Arc<Vec<WebhookConfig>>,
    /// Made at the first delivery: building a TLS client (root certificates, crypto
    /// provider) costs memory a daemon without webhooks never needs.
    http: Arc<std::sync::OnceLock<reqwest::Client>>,
    metrics: Metrics,
    log_limit: Arc<LogLimiter>,
}

impl AlertHub {
    pub fn new(cfg: &AlertsConfig, webhooks: Vec<WebhookConfig>, metrics: Metrics) -> AlertHub {
        let (tx, _) = broadcast::channel(256);
        // Both reasons are shown from the start (0 until a script hits a limit).
        for why in [Refused::Rate, Refused::Keys] {
            metrics
                .alerts_dropped
                .with_label_values(&[why.label()])
                .inc_by(0);
        }
        AlertHub {
            inner: Arc::new(Mutex::new(Inner {
                next_id: 1,
                history: VecDeque::new(),
                sources: HashMap::new(),
            })),
            tx,
            history_cap: cfg.history.max(1),
            repeat: cfg.repeat_interval.0,
            webhooks: Arc::new(webhooks),
            http: Arc::default(),
            metrics,
            log_limit: Arc::new(LogLimiter::new(LOG_EVERY, MAX_SOURCES)),
        }
    }

    /// Raises an alert. Returns `None` when it was suppressed or refused
    /// ([`AlertHub::try_raise`] says why).
    pub fn raise(&self, req: AlertRequest) -> Option<Arc<Alert>> {
        self.try_raise(req).ok()
    }

    /// Raises an alert, cut to the field limits, unless a limit refuses it (counted).
    pub fn try_raise(&self, req: AlertRequest) -> Result<Arc<Alert>, Refused> {
        let mut cut = false;
        let (title, c1) = bounded(req.title, MAX_FIELD_BYTES);
        let (message, c2) = bounded(req.message, MAX_MESSAGE_BYTES);
        let (source, c3) = bounded(req.source, MAX_FIELD_BYTES);
        cut |= c1 | c2 | c3;
        let req = AlertRequest {
            node: bounded_opt(req.node, MAX_FIELD_BYTES, &mut cut),
            key: bounded_opt(req.key, MAX_FIELD_BYTES, &mut cut),
            title,
            message,
            source,
            severity: req.severity,
        };
        let alert = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(why) = inner.admit(&req, self.repeat) {
                drop(inner);
                self.refused(&req, why);
                return Err(why);
            }
            let alert = Arc::new(Alert {
                id: inner.next_id,
                time_ms: now_ms(),
                severity: req.severity,
                title: req.title,
                message: req.message,
                node: req.node,
                key: req.key,
                source: req.source,
                truncated: cut,
            });
            inner.next_id += 1;
            if inner.history.len() >= self.history_cap {
                inner.history.pop_front();
            }
            inner.history.push_back(alert.clone());
            alert
        };
        AlertRaised {
            alert: &alert,
            log_limit: &self.log_limit,
        }
        .emit(&self.metrics);
        let _ = self.tx.send(alert.clone());
        self.deliver(&alert);
        Ok(alert)
    }

    fn refused(&self, req: &AlertRequest, why: Refused) {
        AlertRefused {
            source: &req.source,
            severity: req.severity,
            why,
            log_limit: &self.log_limit,
        }
        .emit(&self.metrics);
    }

    /// Bytes of text held by the alert history (bounded by `alerts.history` × the field
    /// limits).
    pub fn held_bytes(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.history.iter().map(|a| a.text_bytes()).sum()
    }

    /// New alerts as they are raised.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Alert>> {
        self.tx.subscribe()
    }

    /// The most recent alerts, newest last, at most `limit`.
    pub fn recent(&self, limit: usize) -> Vec<Arc<Alert>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let skip = inner.history.len().saturating_sub(limit);
        inner.history.iter().skip(skip).cloned().collect()
    }

    /// POSTs the alert to every webhook that wants it, each from its own task.
    fn deliver(&self, alert: &Arc<Alert>) {
        if self.webhooks.is_empty() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for hook in self.webhooks.iter() {
            let min = hook.min_severity.unwrap_or(Severity::Info);
            if alert.severity < min {
                continue;
            }
            let (hook, alert, http, metrics) = (
                hook.clone(),
                alert.clone(),
                self.http.get_or_init(reqwest::Client::new).clone(),
                self.metrics.clone(),
            );
            handle.spawn(async move {
                let ok = post_with_retries(&http, &hook, &alert).await;
                metrics
                    .webhook_deliveries
                    .with_label_values(&[if ok { "ok" } else { "failed" }])
                    .inc();
            });
        }
    }
}

async fn post_with_retries(http: &reqwest::Client, hook: &WebhookConfig, alert: &Alert) -> bool {
    let mut wait = Duration::from_millis(500);
    for attempt in 0..=hook.retries {
        let res = http
            .post(&hook.url)
            .timeout(hook.timeout.0)
            .json(alert)
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => tracing::warn!(
                "[ALERT] webhook {} answered {} (attempt {})",
                redact_url(&hook.url),
                r.status(),
                attempt + 1
            ),
            Err(e) => tracing::warn!(
                "[ALERT] webhook {} failed (attempt {}): {}",
                redact_url(&hook.url),
                attempt + 1,
                without_url(e)
            ),
        }
        if attempt < hook.retries {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }
    false
}

/// Webhook URLs often carry tokens (Slack, Discord): log only scheme and host.
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or("?")),
        Err(_) => "<invalid url>".into(),
    }
}

/// The error without the URL (it may carry a token).
fn without_url(e: reqwest::Error) -> String {
    e.without_url().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(repeat: Duration) -> AlertHub {
        let cfg = AlertsConfig {
            history: 3,
            repeat_interval: crate::config::Dur(repeat),
        };
        AlertHub::new(&cfg, Vec::new(), Metrics::default())
    }

    fn req(key: Option<&str>) -> AlertRequest {
        AlertRequest {
            severity: Severity::Warning,
            title: "t".into(),
            message: "m".into(),
            node: Some("1999".into()),
            key: key.map(str::to_owned),
            source: "test".into(),
        }
    }

    #[test]
    fn same_key_is_rate_limited_and_history_is_bounded() {
        let h = hub(Duration::from_secs(60));
        assert!(h.raise(req(Some("k"))).is_some());
        assert!(h.raise(req(Some("k"))).is_none());
        for _ in 0..5 {
            assert!(h.raise(req(None)).is_some());
        }
        let recent = h.recent(10);
        assert_eq!(recent.len(), 3);
        assert!(recent.windows(2).all(|w| w[0].id < w[1].id));
    }

    #[test]
    fn fields_are_cut_and_marked_and_history_memory_is_bounded() {
        let h = hub(Duration::from_secs(60));
        let huge = "x".repeat(1 << 20);
        let a = h
            .raise(AlertRequest {
                severity: Severity::Warning,
                title: huge.clone(),
                message: huge.clone(),
                node: Some(huge.clone()),
                key: Some(huge.clone()),
                source: "flood.lua".into(),
            })
            .expect("raised");
        assert!(a.truncated);
        assert!(a.title.len() <= MAX_FIELD_BYTES && a.title.ends_with('…'));
        assert!(a.node.as_ref().is_some_and(|n| n.len() <= MAX_FIELD_BYTES));
        assert!(a.key.as_ref().is_some_and(|k| k.len() <= MAX_FIELD_BYTES));
        assert!(a.message.len() <= MAX_MESSAGE_BYTES);
        assert!(h.held_bytes() <= 3 * (4 * MAX_FIELD_BYTES + MAX_MESSAGE_BYTES));
        let small = h.raise(req(None)).expect("raised");
        assert!(!small.truncated);
        let json = serde_json::to_string(&*small).unwrap_or_default();
        assert!(!json.contains("truncated"), "{json}");
    }

    #[test]
    fn a_source_is_limited_per_second_and_in_distinct_keys() {
        let h = hub(Duration::from_secs(60));
        let m = h.metrics.clone();
        let mut ok = 0;
        for i in 0..50 {
            let mut r = req(None);
            r.source = "fast.lua".into();
            r.title = format!("t{i}");
            if h.try_raise(r).is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, MAX_PER_SECOND);
        assert!(
            m.render()
                .contains("nexus_alerts_dropped_total{reason=\"rate\"} 40")
        );
        // Another source is not affected.
        assert!(h.raise(req(None)).is_some());
        // Keys: fill one source's key table (bypassing the rate window).
        let mut inner = h.inner.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..MAX_KEYS_PER_SOURCE + 5 {
            let mut r = req(Some(&format!("k{i}")));
            r.source = "keys.lua".into();
            if let Some(s) = inner.sources.get_mut("keys.lua") {
                s.in_window = 0;
            }
            let got = inner.admit(&r, Duration::from_secs(60));
            assert_eq!(got.is_ok(), i < MAX_KEYS_PER_SOURCE, "key {i}");
        }
    }

    #[test]
    fn each_refusal_is_one_typed_event_with_its_label() {
        let m = Metrics::default();
        let limit = LogLimiter::new(Duration::from_secs(3600), 8);
        for why in [Refused::Repeat, Refused::Rate, Refused::Rate, Refused::Keys] {
            AlertRefused {
                source: "s.lua",
                severity: Severity::Critical,
                why,
                log_limit: &limit,
            }
            .emit(&m);
        }
        assert_eq!(
            m.alerts_suppressed.with_label_values(&["critical"]).get(),
            1
        );
        assert_eq!(m.alerts_dropped.with_label_values(&["rate"]).get(), 2);
        assert_eq!(m.alerts_dropped.with_label_values(&["keys"]).get(), 1);
        assert_eq!(m.alerts_dropped.with_label_values(&["repeat"]).get(), 0);
        // One line per reason and source; the second `rate` was held back.
        assert_eq!(
            limit.allow("\u{0}rate\u{0}s.lua"),
            crate::observe::LogDecision::Hold
        );
    }

    #[test]
    fn severity_parsing() {
        assert_eq!(Severity::parse("WARN"), Some(Severity::Warning));
        assert_eq!(Severity::parse("critical"), Some(Severity::Critical));
        assert_eq!(Severity::parse("loud"), None);
        assert!(Severity::Critical > Severity::Info);
    }

    #[test]
    fn urls_are_redacted_in_logs() {
        assert_eq!(
            redact_url("https://hooks.example.com/services/T0/B0/secret"),
            "https://hooks.example.com/…"
        );
    }
}

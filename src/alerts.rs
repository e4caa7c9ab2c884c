//! Alerts: raised by Lua scripts (`nexus.alert{…}`) and the daemon, delivered to the log,
//! WebSocket clients, `GET /api/alerts` (bounded history), metrics, and webhooks.
//!
//! Repeats of the same `key` within `alerts.repeat_interval` are suppressed (and counted).
//! Webhooks are POSTed from their own tasks with a timeout and retries, so a slow
//! receiver never blocks the engine or the Lua thread.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::config::{AlertsConfig, WebhookConfig};
use crate::metrics::Metrics;
use crate::state::change::now_ms;

/// How bad it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
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
}

struct Inner {
    next_id: u64,
    history: VecDeque<Arc<Alert>>,
    last_by_key: HashMap<String, Instant>,
}

/// The alert hub. Cheap to clone.
#[derive(Clone)]
pub struct AlertHub {
    inner: Arc<Mutex<Inner>>,
    tx: broadcast::Sender<Arc<Alert>>,
    history_cap: usize,
    repeat: Duration,
    webhooks: Arc<Vec<WebhookConfig>>,
    http: reqwest::Client,
    metrics: Metrics,
}

impl AlertHub {
    pub fn new(cfg: &AlertsConfig, webhooks: Vec<WebhookConfig>, metrics: Metrics) -> AlertHub {
        let (tx, _) = broadcast::channel(256);
        AlertHub {
            inner: Arc::new(Mutex::new(Inner {
                next_id: 1,
                history: VecDeque::new(),
                last_by_key: HashMap::new(),
            })),
            tx,
            history_cap: cfg.history.max(1),
            repeat: cfg.repeat_interval.0,
            webhooks: Arc::new(webhooks),
            http: reqwest::Client::new(),
            metrics,
        }
    }

    /// Raises an alert. Returns `None` when the same key was raised within the repeat
    /// interval (suppressed).
    pub fn raise(&self, req: AlertRequest) -> Option<Arc<Alert>> {
        let alert = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(key) = &req.key {
                let now = Instant::now();
                if let Some(last) = inner.last_by_key.get(key) {
                    if now.duration_since(*last) < self.repeat {
                        self.metrics
                            .alerts_suppressed
                            .with_label_values(&[req.severity.as_str()])
                            .inc();
                        return None;
                    }
                }
                inner.last_by_key.insert(key.clone(), now);
                if inner.last_by_key.len() > 10_000 {
                    let repeat = self.repeat;
                    inner
                        .last_by_key
                        .retain(|_, t| now.duration_since(*t) < repeat);
                }
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
            });
            inner.next_id += 1;
            if inner.history.len() >= self.history_cap {
                inner.history.pop_front();
            }
            inner.history.push_back(alert.clone());
            alert
        };
        self.metrics
            .alerts
            .with_label_values(&[alert.severity.as_str()])
            .inc();
        match alert.severity {
            Severity::Info => {
                tracing::info!(source = %alert.source, node = ?alert.node, "[ALERT] {}: {}", alert.title, alert.message)
            }
            _ => {
                tracing::warn!(source = %alert.source, node = ?alert.node, severity = alert.severity.as_str(), "[ALERT] {}: {}", alert.title, alert.message)
            }
        }
        let _ = self.tx.send(alert.clone());
        self.deliver(&alert);
        Some(alert)
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
            let min = hook
                .min_severity
                .as_deref()
                .and_then(Severity::parse)
                .unwrap_or(Severity::Info);
            if alert.severity < min {
                continue;
            }
            let (hook, alert, http, metrics) = (
                hook.clone(),
                alert.clone(),
                self.http.clone(),
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

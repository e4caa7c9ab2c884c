//! Typed internal events of the AMI supervisor ([`crate::observe::InternalEvent`]): a
//! session coming up or going down, a protocol error, a failed login, and every action
//! sent. Each one counts its metric and writes its log line; lines that can repeat (a
//! server refusing every retry, a peer sending garbage) are rate-limited per server.
//!
//! The events a supervisor emits are written inside its `ami{server=NAME}` span, which
//! names the server on every line; an action's outcome (written in the caller's context)
//! carries a `server` field.
//!
//! Label values are bounded: the server name comes from the config, action names and
//! event names from fixed lists ([`action_label`], [`event_label`]), anything else is
//! `other`.

use std::sync::LazyLock;
use std::time::Duration;

use super::connection::ConnectError;
use crate::metrics::Metrics;
use crate::observe::{InternalEvent, LogDecision, LogLimiter, now_ms};

/// One line per server and kind per minute for repeating failures.
static REPEATS: LazyLock<LogLimiter> =
    LazyLock::new(|| LogLimiter::new(Duration::from_secs(60), 256));

/// The action names counted by name in `nexus_ami_actions_total`; others are `other`.
const ACTIONS: [&str; 11] = [
    "Login",
    "Logoff",
    "Ping",
    "RptStatus",
    "VoterStatus",
    "Command",
    "Events",
    "Challenge",
    "RptLocalNodes",
    "Filter",
    "ListCommands",
];

/// The event names app_rpt and Asterisk send that are counted by name in
/// `nexus_ami_events_total` (ami-app-rpt.md §3.2, §3.3, §1.4); everything else is `other`,
/// so a peer inventing names cannot create series.
const EVENTS: [&str; 13] = [
    "RPT_RXKEYED",
    "RPT_TXKEYED",
    "RPT_ETXKEYED",
    "RPT_AUTOPATCHUP",
    "RPT_ALINKS",
    "RPT_NUMALINKS",
    "RPT_LINKS",
    "RPT_NUMLINKS",
    "DTMF",
    "MDC-1200",
    "VarSet",
    "FullyBooted",
    "SuccessfulAuth",
];

/// The label for an action name (case-insensitive match, canonical spelling).
pub fn action_label(name: &str) -> &'static str {
    ACTIONS
        .iter()
        .find(|a| a.eq_ignore_ascii_case(name))
        .copied()
        .unwrap_or("other")
}

/// The label for an event name: a known name, `RPT_URI_GPIO` / `RPT_PP` for the numbered
/// input events, else `other`.
pub fn event_label(name: &str) -> &'static str {
    if let Some(e) = EVENTS.iter().find(|e| **e == name) {
        return e;
    }
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()))
    };
    if numbered("RPT_URI_GPIO") {
        "RPT_URI_GPIO"
    } else if numbered("RPT_PP") {
        "RPT_PP"
    } else {
        "other"
    }
}

fn limited(kind: &str, server: &str, write: impl FnOnce(u64)) {
    if let LogDecision::Write { suppressed } = REPEATS.allow(&format!("{kind}\u{0}{server}")) {
        write(suppressed);
    }
}

/// A session was established (logged in).
pub struct AmiConnected<'a> {
    pub server: &'a str,
    /// The greeting, already clipped for display.
    pub banner: &'a str,
}

impl InternalEvent for AmiConnected<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.ami_up.with_label_values(&[self.server]).set(1);
        metrics
            .ami_connected_since
            .with_label_values(&[self.server])
            .set(now_ms() as f64 / 1000.0);
        tracing::info!(banner = %self.banner, "[AMI] AMI connection established");
    }
}

/// A session was lost, or an attempt failed.
pub struct AmiDisconnected<'a> {
    pub server: &'a str,
    pub error: &'a ConnectError,
    /// True when a logged-in session was lost (false: an attempt failed).
    pub was_up: bool,
    pub attempt: u64,
}

impl InternalEvent for AmiDisconnected<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.ami_up.with_label_values(&[self.server]).set(0);
        metrics
            .ami_connected_since
            .with_label_values(&[self.server])
            .set(0.0);
        let (server, err, attempt) = (self.server, self.error, self.attempt);
        if self.was_up {
            tracing::warn!("[AMI] connection lost: {err}");
        } else {
            limited(err.kind().as_str(), server, |held| {
                tracing::warn!(
                    suppressed = held,
                    "[AMI] connection failed (attempt #{attempt}): {err}"
                );
            });
        }
    }
}

/// Something the peer sent broke the protocol (bad frame, oversized frame, a reply that
/// matches no request, too many links…). The session may continue.
pub struct AmiProtocolError<'a> {
    pub server: &'a str,
    pub detail: &'a str,
}

impl InternalEvent for AmiProtocolError<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .ami_protocol_errors
            .with_label_values(&[self.server])
            .inc();
        let (server, detail) = (self.server, crate::observe::clip(self.detail, 200).0);
        limited("protocol", server, |held| {
            tracing::warn!(suppressed = held, "[AMI] protocol error: {detail}");
        });
    }
}

/// Login was refused (`Response: Error`, or Asterisk closed after the Login action).
pub struct AmiLoginFailed<'a> {
    pub server: &'a str,
    pub user: &'a str,
    /// Asterisk's message, clipped.
    pub message: &'a str,
}

impl InternalEvent for AmiLoginFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .ami_actions
            .with_label_values(&[self.server, "Login", "error"])
            .inc();
        let (server, user, msg) = (self.server, self.user, self.message);
        limited("login", server, |held| {
            tracing::warn!(suppressed = held, "[AMI] login as {user} refused: {msg}");
        });
    }
}

/// What became of an action sent to Asterisk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionResult {
    Ok,
    /// `Response: Error`.
    Error,
    Timeout,
    /// The session was lost before the reply.
    Disconnected,
    /// Not sent: no session.
    NotConnected,
}

impl ActionResult {
    pub fn label(self) -> &'static str {
        match self {
            ActionResult::Ok => "ok",
            ActionResult::Error => "error",
            ActionResult::Timeout => "timeout",
            ActionResult::Disconnected => "disconnected",
            ActionResult::NotConnected => "not_connected",
        }
    }
}

/// One action's outcome: counts `nexus_ami_actions_total{server,action,result}`.
pub struct AmiActionDone<'a> {
    pub server: &'a str,
    pub action: &'a str,
    pub result: ActionResult,
}

impl InternalEvent for AmiActionDone<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .ami_actions
            .with_label_values(&[self.server, action_label(self.action), self.result.label()])
            .inc();
        tracing::trace!(server = %self.server, action = %self.action, result = self.result.label(), "[AMI] action done");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_labels_come_from_a_fixed_set() {
        assert_eq!(event_label("RPT_ALINKS"), "RPT_ALINKS");
        assert_eq!(event_label("VarSet"), "VarSet");
        assert_eq!(event_label("RPT_URI_GPIO3"), "RPT_URI_GPIO");
        assert_eq!(event_label("RPT_PP12"), "RPT_PP");
        assert_eq!(event_label("RPT_PP"), "other");
        assert_eq!(event_label("RPT_ATTACKER_1"), "other");
        assert_eq!(event_label("Newchannel"), "other");
        let distinct: std::collections::HashSet<&str> = (0..100_000)
            .map(|i| event_label(&format!("RPT_X{i}")))
            .chain((0..1000).map(|i| event_label(&format!("RPT_PP{i}999"))))
            .collect();
        assert_eq!(distinct.len(), 1, "{distinct:?}");
    }

    #[test]
    fn action_labels_are_canonical_or_other() {
        assert_eq!(action_label("rptstatus"), "RptStatus");
        assert_eq!(action_label("Originate"), "other");
    }

    #[test]
    fn action_results_are_counted() {
        let m = Metrics::default();
        AmiActionDone {
            server: "s",
            action: "RptStatus",
            result: ActionResult::Timeout,
        }
        .emit(&m);
        assert_eq!(
            m.ami_actions
                .with_label_values(&["s", "RptStatus", "timeout"])
                .get(),
            1
        );
    }
}

//! The state engine's notable things as typed internal events (`observe::InternalEvent`):
//! each counts its metric and writes its log line, rate-limited where it can repeat.

use std::sync::LazyLock;
use std::time::Duration;

use super::change::ChangeEvent;
use crate::metrics::Metrics;
use crate::observe::{InternalEvent, LogDecision, LogLimiter, clip};
use crate::rpt::RptError;

/// One warning per server every 10 s for unreadable events.
static UNREADABLE_LOG: LazyLock<LogLimiter> =
    LazyLock::new(|| LogLimiter::new(Duration::from_secs(10), 64));

/// An app_rpt event (or `VarSet`) that could not be read: a protocol error, counted.
pub struct EventUnreadable<'a> {
    pub server: &'a str,
    pub error: RptError,
}

impl InternalEvent for EventUnreadable<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .ami_protocol_errors
            .with_label_values(&[self.server])
            .inc();
        if let LogDecision::Write { suppressed } = UNREADABLE_LOG.allow(self.server) {
            let (text, _) = clip(&self.error.to_string(), 200);
            tracing::warn!(
                server = self.server,
                "[AMI] unreadable app_rpt event from {}: {text} (counted in nexus_ami_protocol_errors_total; {suppressed} more not logged)",
                self.server
            );
        }
    }
}

/// A node's first good poll after its server (re)connected: the model is whole again.
pub struct ServerResync<'a> {
    pub server: &'a str,
    pub node: &'a str,
    pub links: usize,
}

impl InternalEvent for ServerResync<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.node_resyncs.with_label_values(&[self.node]).inc();
        tracing::info!(
            server = self.server,
            node = self.node,
            "[POLLING] node {} resynchronised from a poll ({} link(s))",
            self.node,
            self.links
        );
    }
}

/// A change went out on the change stream.
pub struct ChangePublished<'a> {
    pub event: &'a ChangeEvent,
}

impl InternalEvent for ChangePublished<'_> {
    fn emit(self, metrics: &Metrics) {
        let kind = self.event.kind.as_str();
        metrics.changes.with_label_values(&[kind]).inc();
        tracing::debug!(
            seq = self.event.seq,
            node = self.event.node.as_deref().unwrap_or(""),
            "change {kind} published"
        );
    }
}

/// A poll reply (XStat, SawStat) that could not be read: a protocol error, counted.
pub struct ReplyUnreadable<'a> {
    pub server: &'a str,
    pub node: &'a str,
    pub reply: &'static str,
    pub error: RptError,
}

impl InternalEvent for ReplyUnreadable<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .ami_protocol_errors
            .with_label_values(&[self.server])
            .inc();
        if let LogDecision::Write { suppressed } = UNREADABLE_LOG.allow(self.node) {
            let (text, _) = clip(&self.error.to_string(), 200);
            tracing::warn!(
                server = self.server,
                node = self.node,
                "[POLLING] unreadable {} reply for node {}: {text} ({suppressed} more not logged)",
                self.reply,
                self.node
            );
        }
    }
}

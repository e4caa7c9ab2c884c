//! The WebSocket stream's vocabulary and typed internal events
//! ([`crate::observe::InternalEvent`]): why a client gets a snapshot, and a client resynced
//! (a fresh snapshot instead of the changes it missed) or dropped. Each counts
//! `nexus_websocket_resyncs_total{reason}` and logs, at most one line per reason per
//! [`LOG_EVERY`] (with the number held back): a fan-out to a thousand clients can resync
//! them all at once.

use std::sync::LazyLock;
use std::time::Duration;

use serde::Serialize;

use crate::metrics::Metrics;
use crate::observe::{InternalEvent, LogDecision, LogLimiter};

/// At most one line per reason this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

static REPEATS: LazyLock<LogLimiter> = LazyLock::new(|| LogLimiter::new(LOG_EVERY, 8));

/// The `reason` of a `snapshot` message (snake_case; the values only grow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotReason {
    /// The first message of a new client.
    Connect,
    /// The `since` point is no longer buffered.
    ReplayMiss,
    /// The client fell behind and was resynced.
    Resync,
    /// `since` belongs to another run (`epoch`).
    EpochChanged,
}

impl SnapshotReason {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotReason::Connect => "connect",
            SnapshotReason::ReplayMiss => "replay_miss",
            SnapshotReason::Resync => "resync",
            SnapshotReason::EpochChanged => "epoch_changed",
        }
    }
}

/// Why a client did not get the changes it asked for: the `reason` label of
/// `nexus_websocket_resyncs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    /// It resumed with another run's `epoch`: a fresh snapshot.
    EpochChanged,
    /// It resumed from a point no longer buffered: a fresh snapshot.
    ReplayMiss,
    /// It fell behind the fan-out: a fresh snapshot once its queue drained.
    Slow,
    /// It stopped reading (queue not drained in time, or silent for too many heartbeats):
    /// dropped.
    Dropped,
}

impl ResyncReason {
    pub fn label(self) -> &'static str {
        match self {
            ResyncReason::EpochChanged => "epoch_changed",
            ResyncReason::ReplayMiss => "replay_miss",
            ResyncReason::Slow => "slow",
            ResyncReason::Dropped => "dropped",
        }
    }
}

/// A client was resynced or dropped.
pub struct WsResync {
    pub reason: ResyncReason,
    /// The client's stream position then.
    pub last_seq: u64,
}

impl InternalEvent for WsResync {
    fn emit(self, metrics: &Metrics) {
        let reason = self.reason;
        metrics
            .ws_resyncs
            .with_label_values(&[reason.label()])
            .inc();
        let LogDecision::Write { suppressed } = REPEATS.allow(reason.label()) else {
            return;
        };
        let seq = self.last_seq;
        match reason {
            ResyncReason::Dropped => tracing::info!(
                reason = reason.label(),
                suppressed,
                "[WS] dropped a client that stopped reading at seq {seq} (queue not drained in time, or silent for too many heartbeats)"
            ),
            ResyncReason::Slow => tracing::debug!(
                reason = reason.label(),
                suppressed,
                "[WS] client fell behind at seq {seq}: resyncing"
            ),
            ResyncReason::EpochChanged | ResyncReason::ReplayMiss => tracing::debug!(
                reason = reason.label(),
                suppressed,
                "[WS] client resumed from seq {seq}, which this run cannot replay: fresh snapshot"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reasons_serialise_as_before() {
        for r in [
            SnapshotReason::Connect,
            SnapshotReason::ReplayMiss,
            SnapshotReason::Resync,
            SnapshotReason::EpochChanged,
        ] {
            let json = serde_json::to_string(&r).expect("json");
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
    }

    #[test]
    fn a_resync_counts_its_reason() {
        let m = Metrics::default();
        for _ in 0..3 {
            WsResync {
                reason: ResyncReason::Slow,
                last_seq: 7,
            }
            .emit(&m);
        }
        WsResync {
            reason: ResyncReason::Dropped,
            last_seq: 9,
        }
        .emit(&m);
        assert_eq!(m.ws_resyncs.with_label_values(&["slow"]).get(), 3);
        assert_eq!(m.ws_resyncs.with_label_values(&["dropped"]).get(), 1);
    }
}

//! The simulator's fault knobs as command-line flags (`allstar-nexus simulate --refuse
//! …`), so a failure seen in a test can be reproduced from the shell. Each flag maps to the
//! [`super::SimHandle`] method the tests use; the periodic ones (`--drop-every`,
//! `--malformed-every`) run until the simulator stops. The benchmark load
//! ([`super::activity::SimLoad`]: `--links-per-node`, `--link-keys-per-second`) rides along.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::SimHandle;

/// Faults to switch on at start.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct SimFaults {
    /// Accept connections and close them at once, with no banner.
    #[arg(long)]
    pub refuse: bool,
    /// Hang: sessions stay open but stop reading and answering.
    #[arg(long)]
    pub stall: bool,
    /// Close every session every N seconds (Asterisk restarts, network drops).
    #[arg(long, value_name = "SECS")]
    pub drop_every: Option<u64>,
    /// Cut each write into flushed pieces of at most N bytes.
    #[arg(long, value_name = "BYTES")]
    pub chunk_writes: Option<usize>,
    /// Write a reply and the events queued behind it in one write.
    #[arg(long)]
    pub coalesce: bool,
    /// Drop this fraction of events (0 to 1; seeded, deterministic).
    #[arg(long, value_name = "RATIO", default_value_t = 0.0, value_parser = ratio)]
    pub event_drop_ratio: f64,
    /// Write malformed bytes (a header line with no colon, a NUL, an oversized name) to
    /// every session every N seconds.
    #[arg(long, value_name = "SECS")]
    pub malformed_every: Option<u64>,
    /// Reject every login (after Asterisk's 1 s delay) and close.
    #[arg(long)]
    pub fail_login: bool,
    /// XStat/SawStat/NodeStat fail like app_rpt's internal RptStatus error (unterminated
    /// reply, then the session closes).
    #[arg(long)]
    pub rptstatus_abort: bool,
    /// Answer every `Action: Command` (the CLI, `rpt cmd … ilink …`) with
    /// `Response: Error` / `Permission denied`, like a manager user without `command`.
    #[arg(long)]
    pub reject_commands: bool,
    /// Not a fault: the benchmark load (links per node, link keyups a second).
    #[command(flatten)]
    pub load: super::activity::SimLoad,
}

impl Eq for SimFaults {}

fn ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{text:?} is not a ratio between 0 and 1")),
    }
}

/// The malformed bytes `--malformed-every` writes.
pub const MALFORMED: &[u8] = b"Event RPT_GARBAGE no colon\r\n\x00\x01\xff\r\n\r\n";

impl SimFaults {
    /// Switches the knobs on `h` and starts the periodic ones (they end with `stop`).
    pub fn apply(&self, h: &SimHandle, stop: &CancellationToken) {
        h.set_refuse(self.refuse);
        h.set_stall(self.stall);
        h.set_chunk_writes(self.chunk_writes);
        h.set_coalesce(self.coalesce);
        h.set_event_drop_ratio(self.event_drop_ratio);
        h.set_fail_login(self.fail_login);
        h.set_rptstatus_abort(self.rptstatus_abort);
        h.set_reject_commands(self.reject_commands);
        if let Some(secs) = self.drop_every.filter(|s| *s > 0) {
            every(secs, stop, h.clone(), |h| h.drop_sessions());
        }
        if let Some(secs) = self.malformed_every.filter(|s| *s > 0) {
            every(secs, stop, h.clone(), |h| h.inject_raw(MALFORMED));
        }
        self.load.apply(h, stop);
    }

    /// The knobs that are on, for the start-up log line.
    pub fn describe(&self) -> String {
        let mut on = Vec::new();
        let flags = [
            (self.refuse, "refuse"),
            (self.stall, "stall"),
            (self.coalesce, "coalesce"),
            (self.fail_login, "fail-login"),
            (self.rptstatus_abort, "rptstatus-abort"),
            (self.reject_commands, "reject-commands"),
        ];
        on.extend(
            flags
                .iter()
                .filter(|(b, _)| *b)
                .map(|(_, n)| (*n).to_owned()),
        );
        if let Some(s) = self.drop_every {
            on.push(format!("drop-every={s}s"));
        }
        if let Some(n) = self.chunk_writes {
            on.push(format!("chunk-writes={n}"));
        }
        if self.event_drop_ratio > 0.0 {
            on.push(format!("event-drop-ratio={}", self.event_drop_ratio));
        }
        if let Some(s) = self.malformed_every {
            on.push(format!("malformed-every={s}s"));
        }
        if self.load.links_per_node > 0 {
            on.push(format!(
                "load={} links/node, {} link keys/s",
                self.load.links_per_node, self.load.link_keys_per_second
            ));
        }
        if on.is_empty() {
            "none".to_owned()
        } else {
            on.join(",")
        }
    }
}

fn every(secs: u64, stop: &CancellationToken, h: SimHandle, f: fn(&SimHandle)) {
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(secs));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => f(&h),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        faults: SimFaults,
    }

    #[test]
    fn flags_parse_and_ratio_is_checked() {
        let cli = Cli::try_parse_from([
            "x",
            "--refuse",
            "--stall",
            "--drop-every",
            "30",
            "--chunk-writes",
            "7",
            "--coalesce",
            "--event-drop-ratio",
            "0.25",
            "--malformed-every",
            "5",
            "--fail-login",
            "--rptstatus-abort",
        ])
        .expect("valid flags");
        let f = cli.faults;
        assert!(f.refuse && f.stall && f.coalesce && f.fail_login && f.rptstatus_abort);
        assert_eq!(
            (f.drop_every, f.chunk_writes, f.malformed_every),
            (Some(30), Some(7), Some(5))
        );
        assert_eq!(f.event_drop_ratio, 0.25);
        assert!(f.describe().contains("event-drop-ratio=0.25"));
        assert!(Cli::try_parse_from(["x", "--event-drop-ratio", "2"]).is_err());
        assert_eq!(
            Cli::try_parse_from(["x"]).expect("no flags").faults,
            SimFaults::default()
        );
    }

    #[tokio::test]
    async fn applied_faults_reach_the_simulator() {
        let h = super::super::start("127.0.0.1:0".parse().expect("addr"), Default::default())
            .await
            .expect("listens");
        let stop = CancellationToken::new();
        SimFaults {
            refuse: true,
            ..SimFaults::default()
        }
        .apply(&h, &stop);
        let mut s = tokio::net::TcpStream::connect(h.addr())
            .await
            .expect("accepts");
        let mut buf = [0u8; 64];
        let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
            .await
            .unwrap_or(0);
        assert_eq!(n, 0, "closed at once, no banner");
        stop.cancel();
        h.shutdown();
    }
}

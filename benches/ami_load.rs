//! AMI load of idle nodes (issue 13): the daemon with the adaptive polling plugin against
//! the simulator, over 10 simulated minutes on paused tokio time. Prints the actions per
//! node per minute, by action, as the simulator received them — once with the keepalive
//! of before (`ami_keepalive_interval: 30s`) and once with the default.
//!
//! `cargo bench --bench ami_load` (a few seconds of real time).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use idle_rig::IdleRig;

#[path = "../tests/idle_rig/mod.rs"]
mod idle_rig;

const NODES: [&str; 2] = ["1999", "2000"];
const MINUTES: u64 = 10;

/// Runs one configuration; returns actions per node per minute by action name.
async fn run(extra_yaml: &str, dir: &Path) -> BTreeMap<String, f64> {
    let IdleRig { sim, daemon } = idle_rig::start(&NODES, extra_yaml, dir).await;
    tokio::time::sleep(Duration::from_secs(60 * MINUTES)).await;
    let mut by_action = BTreeMap::new();
    for a in sim.recorded_actions() {
        let name = match (a.action(), a.get("Command")) {
            (Some(action), Some(cmd)) => format!("{action}/{cmd}"),
            (Some(action), None) => action.to_owned(),
            _ => "?".to_owned(),
        };
        *by_action.entry(name).or_insert(0.0) += 1.0 / NODES.len() as f64 / MINUTES as f64;
    }
    daemon.shutdown.cancel();
    let _ = daemon.done.await;
    sim.shutdown();
    by_action
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    for (label, extra) in [
        ("keepalive 30s (before)", "ami_keepalive_interval: 30s\n"),
        ("default keepalive", ""),
    ] {
        let dir = idle_rig::temp_dir("ami-load-bench");
        let by_action = runtime.block_on(run(extra, &dir));
        let total: f64 = by_action.values().sum();
        let parts: Vec<String> = by_action
            .iter()
            .map(|(a, n)| format!("{a} {n:.2}"))
            .collect();
        println!(
            "ami_load/idle_node ({label}): {total:.2} actions per node per minute over {MINUTES} \
             simulated minutes [{}]",
            parts.join(", ")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

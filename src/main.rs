//! The `allstar-nexus` command line: `run`, `demo`, `simulate`, `check-config`, `status`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use allstar_nexus::config::Config;
use allstar_nexus::daemon;
use allstar_nexus::logging::{self, LogFormat};
use allstar_nexus::sim::fleet::{DaemonConfigOptions, FleetActivity, FleetConfig};
use allstar_nexus::sim::{self, Era, SimConfig};

// mimalloc: the parsers and the change fan-out allocate many small strings; glibc's
// malloc spent a third of XStat parsing time in trimming and page faults
// (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc gives freed pages back to the system at once, not after its default delay
/// (`purge_delay`, 1 s, and ten times that for its arenas): after the first polls of a
/// fleet of 1,000 servers the daemon settles about 4 MiB lower (docs/performance.md,
/// "Fleet"). An operator's own `MIMALLOC_PURGE_DELAY` is left as it is.
fn tune_allocator() {
    /// `mi_option_purge_delay` in mimalloc's `mi_option_t` (v2 and v3 alike).
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
    unsafe extern "C" {
        // mimalloc's own C function, linked in by libmimalloc-sys.
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an option is allowed at any time (mimalloc reads options
        // atomically); the index is the documented `mi_option_purge_delay`.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

/// `--version`: the crate version and the git revision it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("NEXUS_GIT_REVISION"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "allstar-nexus",
    version = VERSION,
    about = "Monitor and automation engine for AllStarLink nodes"
)]
struct Cli {
    /// Log format: auto (journald style under systemd, colours only on a terminal and
    /// without NO_COLOR), text, json, journald.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the `simulate` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the daemon with a configuration file.
    Run {
        #[arg(long, short, default_value = "config.yaml")]
        config: PathBuf,
    },
    /// Start a simulated AllStar network and the daemon watching it (no radio needed).
    Demo {
        /// Where the API/WebSocket/metrics server listens (falls back to a free port).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Seed of the simulated activity (same seed, same story).
        #[arg(long, default_value_t = 1999)]
        seed: u64,
    },
    /// Run only the app_rpt simulator: an AMI server that behaves like Asterisk + app_rpt.
    Simulate {
        #[arg(long, default_value = "127.0.0.1:5038")]
        listen: SocketAddr,
        /// Nodes hosted by the simulated server (comma separated).
        #[arg(long, value_delimiter = ',', default_value = "1999")]
        nodes: Vec<String>,
        #[arg(long, default_value = "admin")]
        username: String,
        #[arg(long, default_value = "nexus-sim")]
        secret: String,
        /// Behave like ASL2 / old app_rpt (banner 1.0, ActionID first, stray newlines…).
        #[arg(long)]
        legacy: bool,
        /// Load the demo network (nodes 1999, 2000, 2001 with links and a voter).
        #[arg(long)]
        demo_network: bool,
        /// Generate activity (keyups, links coming and going) with this seed.
        #[arg(long)]
        activity: Option<u64>,
        #[command(flatten)]
        faults: sim::SimFaults,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Check a configuration file and exit (non-zero with the problem when invalid).
    CheckConfig { path: PathBuf },
    /// Show the running daemon's nodes, links, who is keyed and AMI status (from its API).
    Status(allstar_nexus::status::StatusArgs),
    /// Read a password (no echo) and print its Argon2id hash for `users[].password_hash`.
    HashPassword,
}

/// `simulate --servers N`: many simulated Asterisk servers in one process.
#[derive(clap::Args)]
struct FleetArgs {
    /// Serve this many AMI servers, each on its own port: consecutive ports from
    /// `--listen`'s, or ephemeral ones when its port is 0 (`--nodes` is ignored).
    #[arg(long, value_name = "N")]
    servers: Option<usize>,
    /// Nodes hosted by each fleet server.
    #[arg(long, value_name = "N", default_value_t = 5)]
    nodes_per_server: usize,
    /// Node number of the first fleet node (the rest follow in order).
    #[arg(long, value_name = "NODE", default_value_t = 10_000)]
    first_node: u64,
    /// Write a daemon configuration watching the whole fleet (the chosen ports) here.
    #[arg(long, value_name = "PATH")]
    write_config: Option<PathBuf>,
    /// `listen` of the written configuration.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    config_listen: SocketAddr,
    /// `polling_interval_seconds` of the written configuration.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    config_poll_seconds: u32,
    /// The written configuration runs the bundled Lua plugins (`plugins_builtin: true`).
    #[arg(long)]
    config_plugins: bool,
    /// Fleet activity (with `--activity SEED`): keyups per node per minute.
    #[arg(long, value_name = "RATE", default_value_t = 1.0)]
    keyups_per_minute: f64,
    /// Fleet activity (with `--activity SEED`): link changes per node per hour.
    #[arg(long, value_name = "RATE", default_value_t = 6.0)]
    link_changes_per_hour: f64,
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => run(config).await,
            Command::Demo { listen, seed } => allstar_nexus::demo::run(listen, seed).await,
            Command::Simulate {
                listen,
                nodes,
                username,
                secret,
                legacy,
                demo_network,
                activity,
                faults,
                fleet,
            } => {
                let era = if legacy { Era::Legacy } else { Era::Modern };
                let config = SimConfig {
                    username,
                    secret,
                    era,
                    nodes,
                    faults,
                };
                let shutdown = CancellationToken::new();
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    daemon::shutdown_signal().await;
                    stop.cancel();
                });
                match fleet.servers {
                    Some(_) => run_fleet(listen, config, fleet, activity, shutdown).await,
                    None => {
                        sim::run_standalone(listen, config, demo_network, activity, shutdown).await
                    }
                }
            }
            Command::CheckConfig { path } => check_config(path),
            Command::Status(args) => allstar_nexus::status::run(args).await,
            Command::HashPassword => allstar_nexus::auth::password::run_hash_password(),
        }
    });
    // Tasks still running after an orderly stop (or a late one) are abandoned, not awaited.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `run`: bind, build, serve until SIGINT/SIGTERM, stop within `shutdown_grace`.
async fn run(path: PathBuf) -> anyhow::Result<()> {
    // A missing AMI secret does not stop the service (no crash loop): health says what to do.
    let config = Config::load_for_service(&path)?;
    let listener = daemon::bind(config.listen).await?;
    tracing::info!(
        "AllStar Nexus listening on http://{}",
        listener.local_addr()?
    );
    let daemon = daemon::build(config).await?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        daemon::shutdown_signal().await;
        stop.cancel();
    });
    daemon.run(listener, shutdown).await
}

/// `simulate --servers N …`.
async fn run_fleet(
    listen: SocketAddr,
    template: SimConfig,
    args: FleetArgs,
    activity: Option<u64>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    for (name, rate) in [
        ("--keyups-per-minute", args.keyups_per_minute),
        ("--link-changes-per-hour", args.link_changes_per_hour),
    ] {
        if !(0.0..=600.0).contains(&rate) {
            anyhow::bail!("{name} must be between 0 and 600, got {rate}");
        }
    }
    let config = FleetConfig {
        servers: args.servers.unwrap_or(1),
        nodes_per_server: args.nodes_per_server,
        first_node: args.first_node,
        // `--links-per-node` (the load knob, shared): fleet nodes start with 2 when unset.
        links_per_node: match template.faults.load.links_per_node {
            0 => 2,
            n => n,
        },
        listen,
        template,
    };
    let daemon = DaemonConfigOptions {
        listen: args.config_listen,
        poll_seconds: args.config_poll_seconds,
        plugins: args.config_plugins,
    };
    let activity = activity.map(|seed| FleetActivity {
        keyups_per_minute: args.keyups_per_minute,
        link_changes_per_hour: args.link_changes_per_hour,
        seed,
    });
    sim::fleet::run_fleet(
        config,
        args.write_config.as_deref(),
        daemon,
        activity,
        shutdown,
    )
    .await
}

fn check_config(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let nodes: usize = config.servers.iter().map(|s| s.nodes.len()).sum();
    println!(
        "{}: OK — {} AMI server(s), {} node(s), listening on {}",
        path.display(),
        config.servers.len(),
        nodes,
        config.listen
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency check: no two arguments of a command share a name (the
    /// fleet and the load knobs once both declared `--links-per-node`).
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn simulate_takes_the_load_and_fleet_knobs_together() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from([
            "allstar-nexus",
            "simulate",
            "--servers",
            "3",
            "--links-per-node",
            "25",
            "--link-keys-per-second",
            "50",
        ]);
        assert!(cli.is_ok(), "{:?}", cli.err().map(|e| e.to_string()));
    }
}

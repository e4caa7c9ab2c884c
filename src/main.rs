//! The `allstar-nexus` command line: `run`, `demo`, `simulate`, `check-config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use allstar_nexus::config::Config;
use allstar_nexus::daemon;
use allstar_nexus::sim::{self, Era, SimConfig};

// mimalloc: the parsers and the change fan-out allocate many small strings; glibc's
// malloc spent a third of XStat parsing time in trimming and page faults
// (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "allstar-nexus",
    version,
    about = "Monitor and automation engine for AllStarLink nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

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
    },
    /// Check a configuration file and exit (non-zero with the problem when invalid).
    CheckConfig { path: PathBuf },
    /// Read a password (no echo) and print its Argon2id hash for `users[].password_hash`.
    HashPassword,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
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
            } => {
                let era = if legacy { Era::Legacy } else { Era::Modern };
                let config = SimConfig {
                    username,
                    secret,
                    era,
                    nodes,
                };
                let shutdown = CancellationToken::new();
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    daemon::shutdown_signal().await;
                    stop.cancel();
                });
                sim::run_standalone(listen, config, demo_network, activity, shutdown).await
            }
            Command::CheckConfig { path } => check_config(path),
            Command::HashPassword => allstar_nexus::auth::password::run_hash_password(),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let shutdown = CancellationToken::new();
    let running = daemon::start(config, shutdown.clone()).await?;
    tracing::info!("AllStar Nexus listening on http://{}", running.http_addr);
    daemon::shutdown_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    Ok(())
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

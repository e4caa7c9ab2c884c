//! The `allstar-nexus` command line: `run`, `demo`, `simulate`, `check-config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use allstar_nexus::config::Config;
use allstar_nexus::daemon;

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
    /// Check a configuration file and exit (non-zero with the problem when invalid).
    CheckConfig { path: PathBuf },
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
            Command::CheckConfig { path } => check_config(path),
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
    let _: Option<SocketAddr> = None;
    Ok(())
}

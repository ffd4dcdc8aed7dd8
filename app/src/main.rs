//! `signpost`: runs the platform. A thin layer over the kernel: parse flags,
//! load configuration, pick services, serve until a signal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use kernel::config::{Config, Overrides, SETTINGS};
use kernel::platform::CancellationToken;
use kernel::{Platform, Service};

/// mimalloc: the hot paths allocate small, short-lived buffers on every
/// request, which glibc's allocator serves at a noticeably higher cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Short links, dynamic QR codes, microsites and analytics, self-hosted.
#[derive(Debug, Parser)]
#[command(name = "signpost", version, propagate_version = true)]
struct Cli {
    /// Read settings from this TOML file (keys as listed below); the environment overrides it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service in one process. With no configuration: SQLite files,
    /// in-process cache, rate limiter and event bus, objects in the data dir.
    Up {
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Directory for SQLite files, objects and keys [default: ./data].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<String>,
    },
    /// Run one service in its own process, on the backends the configuration names.
    Serve {
        /// The service to run.
        service: String,
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Directory for SQLite files, objects and keys [default: ./data].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<String>,
    },
    /// Apply the database migrations of every service and report what was applied.
    Migrate {
        /// Directory for SQLite files [default: ./data].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<String>,
    },
}

fn settings_help() -> String {
    let mut s = String::from("Environment variables (signpost.toml key in brackets):\n");
    for (env, key, what) in SETTINGS {
        s.push_str(&format!("  {env} [{key}]\n      {what}\n"));
    }
    s.push_str("\nExit status: 0 after a clean shutdown (SIGTERM/SIGINT), 1 when start-up fails, 2 for bad configuration or usage.");
    s
}

fn main() -> ExitCode {
    let help = settings_help();
    let matches = Cli::command().after_long_help(help.clone()).after_help(help).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let (overrides, wanted) = match &cli.command {
        Command::Up { listen, data_dir } => {
            (Overrides { listen: listen.clone(), data_dir: data_dir.clone() }, None)
        }
        Command::Serve { service, listen, data_dir } => {
            (Overrides { listen: listen.clone(), data_dir: data_dir.clone() }, Some(service.clone()))
        }
        Command::Migrate { data_dir } => (Overrides { listen: None, data_dir: data_dir.clone() }, None),
    };
    let (config, warnings) = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    kernel::telemetry::init_logging(&config.log, config.log_format);
    for w in &warnings.0 {
        tracing::warn!("{w}");
    }
    let mut services = signpost::services();
    if let Some(name) = &wanted {
        services.retain(|s| s.name() == name);
        if name != "gateway" && !services.is_empty() {
            // A service alone still verifies its callers (behind the front gateway).
            services.push(std::sync::Arc::new(gateway::ServiceEdge));
        }
        if services.is_empty() {
            let known: Vec<&str> = signpost::services().iter().map(|s| s.name()).collect();
            eprintln!(
                "serve: unknown service {name:?} (this build has: {})",
                if known.is_empty() { "none yet".to_string() } else { known.join(", ") }
            );
            return ExitCode::from(2);
        }
        if config.nats.is_none() && services.iter().any(|s| s.migrations().is_some()) {
            // The in-process bus only reaches consumers in the same process.
            eprintln!(
                "NATS_URL: {name} runs in its own process, so its events need a shared bus; set NATS_URL"
            );
            return ExitCode::from(2);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Migrate { .. } => migrate(config, services).await,
            Command::Up { .. } | Command::Serve { .. } => run(config, services).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// A line on stdout. A reader that went away (`signpost up | head -1`) is not
/// a reason to stop serving, as `println!` would by panicking.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

async fn migrate(config: Config, services: Vec<Arc<dyn Service>>) -> Result<(), kernel::StartError> {
    let applied = kernel::platform::migrate(&config, &services).await?;
    if applied.is_empty() {
        say(format_args!("migrate: the database is up to date"));
    } else {
        for m in &applied {
            say(format_args!("migrate: applied {m}"));
        }
        say(format_args!("migrate: {} migration(s) applied", applied.len()));
    }
    Ok(())
}

async fn run(mut config: Config, services: Vec<Arc<dyn Service>>) -> Result<(), kernel::StartError> {
    kernel::install_crypto_provider();
    let _ = kernel::telemetry::metrics_handle();
    let listen = config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
    let addr = listener.local_addr()?;
    if config.public_url == format!("http://{listen}") {
        // Derived, not configured: follow the port actually bound (`--listen 127.0.0.1:0`).
        config.public_url = format!("http://{addr}");
    }
    let platform = Platform::start(config, services).await?;
    say(format_args!("signpost listening on http://{addr}"));
    let stop = CancellationToken::new();
    tokio::spawn(on_signal(stop.clone()));
    platform.serve(listener, stop).await
}

async fn on_signal(stop: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                    _ = int.recv() => tracing::info!("SIGINT: shutting down"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    stop.cancel();
}

//! The `weir` binary: configuration from the environment, logging, signals,
//! then [`weir::daemon::run`]; or `weir bench ...`.

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "Drop-in replacement for the AWS IoT Greengrass stream manager"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run the stream manager server (the default), configured by the
    /// STREAM_MANAGER_* environment variables.
    Serve,
    /// Benchmarks: a native load generator, and a server that stores nothing.
    #[command(subcommand)]
    Bench(weir::bench::BenchCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(),
        Command::Bench(cmd) => weir::bench::main(cmd),
    }
}

fn serve() -> std::process::ExitCode {
    let config = match weir::config::Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("weir: invalid configuration: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(&config.log_level);
    // Every segment of every File stream keeps its file open; a service
    // manager's default soft limit (often 1024) would run out with a few
    // large streams, so take what the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    let deadline = config.limits.shutdown_timeout;
    let code = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        // Handlers are installed before weir says it is listening, so a
        // SIGTERM right after that line is a clean stop, not a kill.
        let signals = install_signal_handlers();
        tokio::spawn(stop_on_signal(signals, shutdown.clone()));
        match weir::daemon::run(config, shutdown, |_| {}).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                std::process::ExitCode::FAILURE
            }
        }
    });
    // Every stream is synced by now; a stream operation still running on a
    // blocking thread (a connection closed at the deadline) gets as long
    // again, not forever: dropping the runtime would wait for it.
    runtime.shutdown_timeout(deadline);
    code
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.to_ascii_lowercase()));
    // A closed or full stderr must not take weir down: the subscriber would
    // report its own write errors on stderr, which panics when stderr is
    // gone, so it is told not to.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: Greengrass writes stderr to a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false)
        .init();
}

type Signals = Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>;

/// SIGTERM and SIGINT, caught from now on.
fn install_signal_handlers() -> Signals {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => Some((term, int)),
        _ => {
            tracing::error!("cannot install signal handlers");
            None
        }
    }
}

/// SIGTERM or SIGINT starts a clean shutdown; a second one exits at once.
async fn stop_on_signal(signals: Signals, shutdown: CancellationToken) {
    let Some((mut term, mut int)) = signals else {
        return;
    };
    for round in 0..2 {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        // Act first, then log: nothing may stand between a signal and the
        // shutdown it asks for.
        if round == 0 {
            shutdown.cancel();
            tracing::info!("stopping");
        } else {
            tracing::warn!("second signal: exiting now");
            std::process::exit(1);
        }
    }
}

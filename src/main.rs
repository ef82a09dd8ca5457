//! The `weir` binary: the command line (clap), then the configuration
//! ([`weir::config::Config::load`]), logging, signals and
//! [`weir::daemon::run`]; or `weir config`. The benchmarks are the
//! `weir-bench` binary (`src/bin/weir-bench.rs`).

use clap::Parser;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "Drop-in replacement for the AWS IoT Greengrass stream manager",
    long_about = "Drop-in replacement for the AWS IoT Greengrass stream manager.\n\n\
        Settings are the Java server's environment variables (STREAM_MANAGER_SERVER_PORT, \
        STREAM_MANAGER_STORE_ROOT_DIR, ...) and weir's WEIR_* ones. Each comes from, highest \
        first: a command-line flag, the environment variable, the TOML configuration file \
        (--config or WEIR_CONFIG; its keys are the variables' names), the default. \
        `weir config` prints every setting, its value and where it came from."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: SettingFlags,
}

/// Flags that set settings; they win over the environment and the file.
#[derive(clap::Args, Default)]
struct SettingFlags {
    /// The TOML configuration file (default: WEIR_CONFIG, else none)
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// STREAM_MANAGER_SERVER_PORT: TCP port, 0 picks a free one
    #[arg(long)]
    port: Option<String>,
    /// STREAM_MANAGER_STORE_ROOT_DIR: the store folder
    #[arg(long, value_name = "DIR")]
    store_root: Option<String>,
    /// WEIR_BIND_ADDRESS: the address to listen on
    #[arg(long, value_name = "ADDRESS")]
    bind_address: Option<String>,
    /// LOG_LEVEL: TRACE, DEBUG, INFO, WARN or ERROR
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Any setting, by its environment variable's name (repeatable; the
    /// named flags above win over it)
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = key_value)]
    set: Vec<(String, String)>,
}

fn key_value(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("{arg:?} is not KEY=VALUE")),
    }
}

impl Default for Command {
    fn default() -> Self {
        Command::Serve(SettingFlags::default())
    }
}

impl SettingFlags {
    /// These flags (given before the subcommand) and then `later` (after
    /// it), which win.
    fn then(self, later: SettingFlags) -> SettingFlags {
        let mut set = self.pairs();
        set.extend(later.pairs());
        SettingFlags {
            config: later.config.or(self.config),
            set,
            ..SettingFlags::default()
        }
    }

    /// The flags as key/value pairs, later ones winning.
    fn pairs(&self) -> Vec<(String, String)> {
        let mut pairs = self.set.clone();
        for (key, value) in [
            ("STREAM_MANAGER_SERVER_PORT", &self.port),
            ("STREAM_MANAGER_STORE_ROOT_DIR", &self.store_root),
            ("WEIR_BIND_ADDRESS", &self.bind_address),
            ("LOG_LEVEL", &self.log_level),
        ] {
            if let Some(value) = value {
                pairs.push((key.to_owned(), value.clone()));
            }
        }
        pairs
    }

    fn load(&self) -> Result<weir::config::Loaded, weir::config::LoadError> {
        weir::config::Config::load(
            self.config.as_deref(),
            |name| std::env::var(name).ok(),
            &self.pairs(),
        )
    }
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run the stream manager server (the default).
    Serve(SettingFlags),
    /// Print every setting, its effective value and where it came from
    /// (default, file, environment, command line), then exit; opens no
    /// store and binds nothing.
    Config(SettingFlags),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let top = cli.settings;
    match cli.command.unwrap_or_default() {
        Command::Serve(flags) => serve(&top.then(flags)),
        Command::Config(flags) => print_config(&top.then(flags)),
    }
}

/// `weir config`.
fn print_config(flags: &SettingFlags) -> std::process::ExitCode {
    match flags.load() {
        Ok(loaded) => {
            print!("{}", loaded.render());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weir: invalid configuration: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn serve(flags: &SettingFlags) -> std::process::ExitCode {
    let loaded = match flags.load() {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("weir: invalid configuration: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let config = loaded.config;
    init_logging(&config.log_level);
    if let Some((path, _)) = &loaded.file {
        tracing::info!(path = %path.display(), "configuration file");
    }
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
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

/// Logging to stderr; `RUST_LOG` wins over LOG_LEVEL (see
/// [`weir::config::log_filter`]).
fn init_logging(level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, warning) =
        weir::config::log_filter(std::env::var("RUST_LOG").ok().as_deref(), level);
    // A closed or full stderr must not take weir down: the subscriber would
    // report its own write errors on stderr, which panics when stderr is
    // gone, so it is told not to.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: Greengrass writes stderr to a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false)
        .finish()
        // The filter wraps the whole subscriber (as `with_env_filter` did),
        // so a disabled event's call site is switched off once and costs
        // one atomic load thereafter.
        .with(filter)
        .init();
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
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

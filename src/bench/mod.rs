//! `weir-bench`: measuring tools, in a binary of their own
//! (`src/bin/weir-bench.rs`) so that the server binary does not carry them.
//!
//! * `weir-bench load`: a native load generator. Several connections, each
//!   keeping many appends in flight (the protocol allows any number), then
//!   reads of 100 messages; reports appends/s, p50/p99 latency, reads/s.
//!   Without `--addr` it starts weir in-process on a free port.
//! * `weir-bench export`: export throughput to a Kinesis endpoint next to
//!   the same SDK's own PutRecords ceiling, and the rate under a bandwidth
//!   cap; `weir-bench load --exports 5` loads a stream with five exports.
//! * `weir-bench null-server`: the same server code with a request handler
//!   that stores nothing and answers at once: the baseline that shows what
//!   a client costs by itself.

mod client;
mod export;
mod load;
mod null;

pub use null::NullHandler;

/// Errors of the bench tools end the run with a message; no caller
/// inspects them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Append and read load against weir (in-process unless --addr is given).
    Load(load::LoadArgs),
    /// Export throughput to the Kinesis endpoint of AWS_ENDPOINT_URL_KINESIS
    /// next to the same SDK's PutRecords ceiling (and the rate under a cap).
    Export(export::ExportArgs),
    /// Serve the protocol without storing anything (auth off), printing the
    /// bound address; for client-side baselines.
    NullServer(null::NullArgs),
}

pub fn main(command: BenchCommand) -> ExitCode {
    // The null server runs as the weir binary does (one thread), so the two
    // differ only in storage; the load generator may use every core.
    let mut runtime = match command {
        BenchCommand::Load(_) | BenchCommand::Export(_) => {
            tokio::runtime::Builder::new_multi_thread()
        }
        BenchCommand::NullServer(_) => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = runtime
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    let result = runtime.block_on(async {
        match command {
            BenchCommand::Load(args) => load::run(args).await,
            BenchCommand::Export(args) => export::run(args).await,
            BenchCommand::NullServer(args) => null::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

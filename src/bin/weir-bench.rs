//! The `weir-bench` binary: weir's measuring tools ([`weir::bench`]), a
//! binary of their own so that the server binary, which devices install,
//! does not carry a load generator and a second Kinesis client.

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "weir's benchmarks: a load generator, export throughput, a server that stores nothing"
)]
struct Cli {
    #[command(subcommand)]
    command: weir::bench::BenchCommand,
}

fn main() -> std::process::ExitCode {
    weir::bench::main(Cli::parse().command)
}

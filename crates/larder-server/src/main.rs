//! `larder`: the binary on top of the larder engine.
//!
//! `larder serve` runs the HTTP service, `larder warm` fills an entity's
//! cache, `larder stats` prints a running service's figures (`larder top`:
//! live, each second), `larder demo`
//! shows the patterns on an embedded SQLite database. Errors are reported
//! in one readable line with a non-zero exit; a bad config is
//! `larder: <file>: <key>: <problem>`.

mod bench;
mod demo;
mod serve_cmd;
mod stats_cmd;
mod top_cmd;
mod warm_cmd;

use clap::{Parser, Subcommand};
use larder_server::config::ConfigError;
use std::process::ExitCode;

/// larder: the caching layer between your application and its database, on Redis.
#[derive(Debug, Parser)]
#[command(name = "larder", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve entities over HTTP: read-through and write-through caching for any language.
    Serve(serve_cmd::ServeArgs),
    /// Fill an entity's cache from its table, with a progress bar.
    Warm(warm_cmd::WarmArgs),
    /// Print a running service's /v1/stats as a table.
    Stats(stats_cmd::StatsArgs),
    /// A live view of a running service, redrawn each second (Ctrl-C to quit).
    Top(top_cmd::TopArgs),
    /// Show cache-aside and read-through on a sample SQLite database.
    Demo(demo::DemoArgs),
    /// Run one workload against several caching patterns and compare them.
    Bench(Box<bench::BenchArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Serve(_) => "warn,larder=info,larder_server=info",
        _ => "error",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LARDER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve_cmd::run(args).await,
            Command::Warm(args) => warm_cmd::run(args).await,
            Command::Stats(args) => stats_cmd::run(args).await,
            Command::Top(args) => top_cmd::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Bench(args) => bench::run(*args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<ConfigError>() {
                Some(config) => eprintln!("{config}"),
                None => eprintln!("error: {}", format!("{e:#}").replace(['\n', '\r'], " ")),
            }
            ExitCode::FAILURE
        }
    }
}

//! `dbmanager`: the command line for operators (`cargo install dbmanager-cli`).
//!
//! Every subcommand reads the same layered configuration as services do
//! (defaults < `dbmanager.toml` or `--config` < `.env` < environment), prints
//! results on stdout and logs on stderr, and reports a failure as one line
//! with a non-zero exit code.

mod args;
mod bench_cmd;
mod config_cmd;
mod db_cmd;
mod health_cmd;
mod migrate_cmd;
mod progress;
mod wait_cmd;

use std::process::ExitCode;

use clap::Parser;
use dbmanager::{Config, ConfigLoader};

use args::{Cli, Command, ConfigCommand};

/// Exit code for a failure (bad configuration, unreachable database, ...).
const FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => fail(&e.to_string()),
    }
}

/// Runs the subcommand; a failure is its error, for one line on stderr.
async fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let loader = loader(&cli);
    match cli.command {
        Command::Wait(args) => Ok(wait_cmd::run(load(&loader)?, args).await?),
        Command::Health => Ok(health_cmd::run(load(&loader)?).await?),
        Command::Bench(args) => Ok(bench_cmd::run(load(&loader)?, args).await?),
        Command::Db { command } => Ok(db_cmd::run(load(&loader)?, command).await?),
        Command::Migrate { command } => Ok(migrate_cmd::run(load(&loader)?, command).await?),
        Command::Config {
            command: ConfigCommand::Show { json },
        } => Ok(config_cmd::show(&loader, json)?),
    }
}

fn loader(cli: &Cli) -> ConfigLoader {
    match &cli.config {
        Some(path) => Config::loader().file(path),
        None => Config::loader(),
    }
}

fn load(loader: &ConfigLoader) -> dbmanager::Result<Config> {
    loader.load()
}

/// Prints one line and returns the failure code.
fn fail(message: &str) -> ExitCode {
    eprintln!("dbmanager: error: {message}");
    ExitCode::from(FAILURE)
}

/// Writes to stdout; a closed pipe (`dbmanager config show | head`) ends
/// the output quietly instead of panicking.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{text}").is_err() {
        std::process::exit(0);
    }
}

fn init_logging(verbose: u8) {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Quiet by default: the result goes to stdout, a failure is one line.
    let default = match verbose {
        0 => "error",
        1 => "info,mongodb=warn",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let terminal = std::io::stderr().is_terminal();
    // The bar sees the migration events whatever the log level: it has a
    // filter of its own, and draws nothing when stderr is not a terminal.
    let progress = progress::Progress::new(terminal);
    let bar_events = tracing_subscriber::filter::Targets::new()
        .with_target("dbmanager::migrate", tracing::Level::INFO);
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(progress.clone())
        .with_ansi(terminal)
        .with_target(false)
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(logs)
        .with(progress.with_filter(bar_events))
        .init();
}

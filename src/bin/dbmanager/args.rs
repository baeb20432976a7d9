//! The command line's arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Operate the databases of a dbmanager service: wait for them, create and
/// migrate them, check their health, show the configuration.
#[derive(Debug, Parser)]
#[command(name = "dbmanager", version, about, long_about = None)]
pub struct Cli {
    /// TOML configuration file (default: dbmanager.toml, or $DBMANAGER_CONFIG).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// More logging on stderr (-v info, -vv debug). DBMANAGER_LOG overrides.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Wait until the configured databases accept connections.
    Wait(WaitArgs),
    /// Print the health report as JSON; exit 0 when up, 1 degraded, 2 down.
    Health,
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Give up after this long ("30s", "2m").
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print every effective setting with where it came from; secrets are redacted.
    Show {
        /// As JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
}

/// Parses "30s", "250ms", "2m".
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|e| format!("{e} (write e.g. 30s, 250ms, 2m)"))
}

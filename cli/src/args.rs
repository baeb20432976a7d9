//! The command line's arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use dbmanager::migrate::AdoptFrom;

/// Operate the databases of a dbmanager service: wait for them, create and
/// migrate them, check their health, show the configuration.
#[derive(Debug, Parser)]
#[command(name = "dbmanager", version, about, long_about = None)]
pub struct Cli {
    /// TOML configuration file (default: dbmanager.toml, or $DBMANAGER_CONFIG).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// More logging on stderr (-v info, -vv debug). RUST_LOG overrides.
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
    /// Create, drop or reset the PostgreSQL database.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Apply, revert and inspect SQL migrations (folder: migrations.directory).
    Migrate {
        #[command(subcommand)]
        command: MigrateCommand,
    },
    /// Load the configured database with N tasks for a duration and report
    /// throughput and latency percentiles.
    Bench(BenchArgs),
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// select1, pgbench-S (needs a `pgbench -i` dataset), insert, ping or find-by-id.
    #[arg(long, default_value = "select1")]
    pub workload: dbmanager_bench::Workload,
    /// Concurrent tasks.
    #[arg(long, default_value_t = 8)]
    pub tasks: usize,
    /// pooled (check a connection out per operation) or multiplexed
    /// (pipeline statements over shared connections; PostgreSQL only).
    #[arg(long, default_value = "pooled")]
    pub mode: dbmanager_bench::Mode,
    /// Connections in the pool, or of the multiplexed handle with
    /// --mode multiplexed (all opened before the run); default: the configuration's.
    #[arg(long)]
    pub pool_size: Option<usize>,
    /// How long to measure ("10s", "1m").
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How long to run before measuring.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// One more task runs `SELECT pg_sleep(<this>)` back to back, unmeasured:
    /// what a slow statement among the load costs the others ("1s").
    #[arg(long, value_parser = parse_duration)]
    pub slow_statement: Option<Duration>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Give up after this long ("30s", "2m").
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Which database a `db` command works on.
#[derive(Debug, Args)]
pub struct DbTarget {
    /// The test database (TEST_DATABASE_URL, or the main one prefixed test_).
    #[arg(long)]
    pub test: bool,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create the database (and [bootstrap] extensions) when missing.
    Create(DbTarget),
    /// Drop the database. Refuses a name that does not look like a test
    /// database (test_*, *_test) unless --force.
    Drop {
        #[command(flatten)]
        target: DbTarget,
        /// Drop even a database that does not look like a test database.
        #[arg(long)]
        force: bool,
    },
    /// Drop, create and migrate the database (same refusal as drop).
    Reset {
        #[command(flatten)]
        target: DbTarget,
        /// Reset even a database that does not look like a test database.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Apply pending migrations (all, or up to --to).
    Up {
        /// Stop after this version.
        #[arg(long)]
        to: Option<i64>,
    },
    /// Revert migrations: the newest one, --steps of them, or down to --to.
    Down {
        /// How many to revert.
        #[arg(long, default_value_t = 1, conflicts_with = "to")]
        steps: usize,
        /// Revert every migration newer than this version (0: all).
        #[arg(long)]
        to: Option<i64>,
    },
    /// Show applied, pending, changed and missing migrations.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create an empty migration pair <version>_<name>.up.sql / .down.sql.
    New {
        /// Words of the name: lowercase letters, digits and underscores.
        name: String,
    },
    /// Re-record checksums after a deliberate edit of applied migrations,
    /// and forget applied migrations whose files are gone.
    Repair,
    /// Record the migrations another tool applied (its history table is
    /// read, not changed), so `migrate up` continues from there.
    Adopt {
        /// The tool: golang-migrate, sqlx or refinery.
        #[arg(long, value_parser = parse_tool)]
        from: AdoptFrom,
        /// The tool's history table, when not its default (golang-migrate's
        /// x-migrations-table; sqlx's and refinery's table setting).
        /// Defaults: schema_migrations, _sqlx_migrations, refinery_schema_history.
        #[arg(long)]
        table: Option<String>,
        /// The schema of that table. Without it, the table is looked up
        /// through the connection's search_path, as the tools do.
        #[arg(long)]
        schema: Option<String>,
    },
}

fn parse_tool(value: &str) -> Result<AdoptFrom, String> {
    value.parse()
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

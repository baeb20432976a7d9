//! The smallest useful program: load the configuration, connect (with
//! retry), run a query, print the health report, shut down.
//!
//! ```text
//! DATABASE_URL=postgres://app:secret@localhost:5432/app cargo run --example quickstart
//! ```
//! `scripts/demo quickstart` starts a local PostgreSQL first when
//! `DATABASE_URL` is unset.

use dbmanager::{Config, DatabaseManager};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,mongodb=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let config = Config::load()?;
    let db = DatabaseManager::builder().config(config).build().await?;

    let client = db.postgres()?.get().await?;
    let row = client
        .query_one("SELECT version(), now()::text", &[])
        .await?;
    let version: String = row.get(0);
    let now: String = row.get(1);
    println!("connected: {version}");
    println!("server time: {now}");
    drop(client);

    let report = db.health().await;
    println!("{}", serde_json::to_string_pretty(&report)?);

    let shutdown = db.shutdown().await?;
    println!(
        "shut down in {:?} (drained: {})",
        shutdown.took, shutdown.drained
    );
    Ok(())
}

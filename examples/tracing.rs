//! The crate's spans on stdout: every span is printed when it closes, with
//! its OpenTelemetry database attributes (`db.system.name`, `db.namespace`,
//! `server.address`, ...), for a checkout, a transaction rerun after a
//! serialization failure, a multiplexed statement, a replica routing
//! decision and the connect attempts behind them.
//!
//! ```text
//! DATABASE_URL=postgres://app:secret@localhost:5432/app cargo run --example tracing
//! DBMANAGER_POSTGRES__TRACE_QUERY_TEXT=true ...   # adds db.query.text
//! ```
//!
//! An application exporting to an OpenTelemetry collector adds
//! `tracing-opentelemetry`'s layer to the same subscriber instead of (or
//! beside) the fmt layer: docs/operations.md, "Traces".

use std::sync::atomic::{AtomicU32, Ordering};

use dbmanager::{Config, DatabaseManager, TxFutureExt};
use tracing_subscriber::fmt::format::FmtSpan;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,dbmanager=info".into()),
        )
        // One line per span as it closes, with every field it recorded.
        .with_span_events(FmtSpan::CLOSE)
        .with_target(false)
        .with_ansi(false)
        .init();

    let config = Config::load()?;
    let db = DatabaseManager::builder().config(config).build().await?;
    let pg = db.postgres()?;

    // A checkout: `dbmanager.acquire`.
    let client = pg.get().await?;
    client.simple_query("SELECT 1").await?;
    drop(client);

    // A transaction whose first attempt the server fails with a
    // serialization failure (40001): two `dbmanager.transaction` spans.
    let runs = AtomicU32::new(0);
    pg.transaction(|tx| {
        let run = runs.fetch_add(1, Ordering::SeqCst);
        async move {
            tx.batch_execute("CREATE TEMP TABLE example_t (id int) ON COMMIT DROP")
                .await?;
            if run == 0 {
                tx.batch_execute(
                    "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$",
                )
                .await?;
            }
            Ok(())
        }
        .scoped()
    })
    .await?;

    // A multiplexed statement: `dbmanager.query`, named `SELECT <db>`; the
    // parameter is never recorded.
    let id = 7_i32;
    pg.multiplexed()
        .query_one("SELECT $1::int + 1", &[&id])
        .await?;

    // A routing decision: `dbmanager.route` (the primary, with no replica
    // configured).
    drop(pg.replica().get().await?);

    db.shutdown().await?;
    Ok(())
}

//! `dbmanager wait`: block until the configured databases accept
//! connections, within a time limit.

use std::process::ExitCode;
use std::time::Duration;

use dbmanager::retry::RetryPolicy;
use dbmanager::{Config, DatabaseManager};

use crate::args::WaitArgs;

pub async fn run(config: Config, args: WaitArgs) -> dbmanager::Result<ExitCode> {
    let policy = RetryPolicy::exponential()
        .initial_delay(Duration::from_millis(200))
        .max_delay(Duration::from_secs(2))
        .unlimited_attempts()
        .max_elapsed(args.timeout);
    let db = DatabaseManager::builder()
        .config(config)
        .retry(policy)
        .build()
        .await?;
    if let Ok(pool) = db.postgres() {
        crate::emit(&format!("postgres: ready ({})", pool.target()));
    }
    if let Ok(mongo) = db.mongo() {
        crate::emit(&format!("mongodb: ready ({})", mongo.target()));
    }
    db.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

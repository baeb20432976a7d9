//! `dbmanager health`: the health report as JSON, and an exit code for
//! scripts: 0 up, 1 degraded, 2 down.

use std::process::ExitCode;

use dbmanager::{Config, DatabaseManager, HealthStatus};

pub async fn run(config: Config) -> dbmanager::Result<ExitCode> {
    let db = DatabaseManager::builder().config(config).build_lazy()?;
    let report = db.health().await;
    match serde_json::to_string_pretty(&report) {
        Ok(json) => crate::emit(&json),
        Err(e) => eprintln!("dbmanager: error: cannot print the report: {e}"),
    }
    db.shutdown().await?;
    Ok(ExitCode::from(match report.status {
        HealthStatus::Up => 0,
        HealthStatus::Degraded => 1,
        // Down, and any state a later version adds: not healthy.
        _ => 2,
    }))
}

//! The PostgreSQL health probe.

use std::time::{Duration, Instant};

use super::pool::PostgresPool;
use super::statements::first_row_text;
use crate::config::scrub;
use crate::error::Error;
use crate::health::{ComponentHealth, HealthStatus};
use crate::metrics;

impl PostgresPool {
    /// Checks out a connection and runs one query for the server version and
    /// database name, all within `timeout`.
    pub(crate) async fn probe(&self, timeout: Duration, required: bool) -> ComponentHealth {
        let mut health = ComponentHealth::new(required);
        health.database = Some(self.database().to_string());
        health.pool = Some(self.status());
        if self.is_draining() {
            health.error = Some("shutting down".into());
            return health;
        }
        let started = Instant::now();
        let outcome = tokio::time::timeout(timeout, async {
            let client = self.get_timeout(timeout).await?;
            let row = first_row_text(
                &client,
                self.statement_cache(),
                "SELECT current_setting('server_version'), current_database()::text",
            )
            .await
            .map_err(|e| Error::postgres("health probe", e))?;
            let mut columns = row.into_iter().map(Option::unwrap_or_default);
            let version = columns.next().unwrap_or_default();
            Ok::<_, Error>((version, columns.next().unwrap_or_default()))
        })
        .await;
        let latency = started.elapsed();
        metrics::probe(self.label(), latency);
        match outcome {
            Ok(Ok((version, database))) => {
                health.status = HealthStatus::Up;
                health.latency_ms = Some(latency.as_secs_f64() * 1000.0);
                // "15.18 (Debian 15.18-0+deb12u1)" -> "15.18"
                health.server_version = version.split_whitespace().next().map(str::to_string);
                health.database = Some(database);
            }
            Ok(Err(error)) => {
                health.error = Some(scrub(&error.to_string(), self.secrets()));
            }
            Err(_) => {
                health.error = Some(format!("no answer within the probe timeout of {timeout:?}"));
            }
        }
        health.pool = Some(self.status());
        if let Some(set) = self.replica_set() {
            health.replicas = Some(set.health(timeout).await);
        }
        let multiplexed = self.multiplexed();
        health.multiplex = multiplexed.is_started().then(|| multiplexed.status());
        super::maintenance::record_gauges(self.label(), &self.status());
        health
    }
}

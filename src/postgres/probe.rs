//! The PostgreSQL health probe.

use std::time::{Duration, Instant};

use super::pool::PostgresPool;
use super::statements::first_row_text;
use crate::config::scrub;
use crate::error::Error;
use crate::health::{ComponentHealth, HealthStatus};
use crate::metrics;

impl PostgresPool {
    /// Runs one of the crate's own statements (`sql`, no parameters) on a
    /// checked-out connection, checkout and statement together within
    /// `timeout`, and returns its first row as text; `None` when out of
    /// time. `what` names the work in a failure (`health probe`).
    pub(super) async fn first_row_within(
        &self,
        timeout: Duration,
        what: &'static str,
        sql: &str,
    ) -> Option<Result<Vec<Option<String>>, Error>> {
        tokio::time::timeout(timeout, async {
            let client = self.get_timeout(timeout).await?;
            first_row_text(&client, self.statement_cache(), sql)
                .await
                .map_err(|e| Error::postgres(what, e))
        })
        .await
        .ok()
    }

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
        let outcome = self
            .first_row_within(
                timeout,
                "health probe",
                "SELECT current_setting('server_version'), current_database()::text",
            )
            .await
            .map(|row| {
                row.map(|row| {
                    let mut columns = row.into_iter().map(Option::unwrap_or_default);
                    let version = columns.next().unwrap_or_default();
                    (version, columns.next().unwrap_or_default())
                })
            });
        let latency = started.elapsed();
        metrics::probe(self.label(), latency);
        match outcome {
            Some(Ok((version, database))) => {
                health.status = HealthStatus::Up;
                health.latency_ms = Some(latency.as_secs_f64() * 1000.0);
                // "15.18 (Debian 15.18-0+deb12u1)" -> "15.18"
                health.server_version = version.split_whitespace().next().map(str::to_string);
                health.database = Some(database);
            }
            Some(Err(error)) => {
                health.error = Some(scrub(&error.to_string(), self.secrets()));
            }
            None => {
                health.error = Some(format!("no answer within the probe timeout of {timeout:?}"));
            }
        }
        health.pool = Some(self.status());
        if let Some(set) = self.replica_set() {
            health.replicas = Some(set.health(timeout).await);
        }
        let multiplexed = self.multiplexed();
        health.multiplex = multiplexed.is_started().then(|| multiplexed.status());
        let listeners = self.listeners().health();
        health.listeners = (!listeners.is_empty()).then_some(listeners);
        super::maintenance::record_gauges(self.label(), &self.status());
        health
    }
}

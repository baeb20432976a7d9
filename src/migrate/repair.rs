//! Editing the history without running migrations: `repair` after a
//! deliberate edit of an applied file, `stamp` for a schema created another
//! way.

use std::time::Duration;

use super::error::MigrateError;
use super::migrator::{Migrator, Session};
use super::report::RepairReport;
use crate::error::{Error, Result};

impl Migrator<'_> {
    /// Makes the history match the files again after a deliberate edit:
    /// re-records the checksum (and name) of every changed migration, and
    /// forgets applied migrations whose files were removed. Runs no
    /// migration SQL.
    ///
    /// # Errors
    ///
    /// [`MigrateError::LockTimeout`]; pool, connection and query errors.
    pub async fn repair(&self) -> Result<RepairReport> {
        let span = super::spans::operation(&self.pool, "repair");
        super::spans::traced(span, async {
            let session = self.session().await?;
            let result = self.repair_locked(&session).await;
            session.finish(result).await
        })
        .await
    }

    /// Records the history as if exactly the migrations up to `version`
    /// were applied, without running any (Alembic's `stamp`): for a
    /// database whose schema was created another way. `0` empties the
    /// history.
    ///
    /// # Errors
    ///
    /// [`MigrateError::UnknownVersion`] when `version` is neither 0 nor a
    /// migration; otherwise as [`Migrator::repair`].
    pub async fn stamp(&self, version: i64) -> Result<RepairReport> {
        if version != 0 && self.migrations.get(version).is_none() {
            return Err(MigrateError::UnknownVersion { version }.into());
        }
        let span = super::spans::operation(&self.pool, "stamp");
        super::spans::traced(span, async {
            let session = self.session().await?;
            let result = self.stamp_locked(&session, version).await;
            session.finish(result).await
        })
        .await
    }

    async fn repair_locked(&self, session: &Session) -> Result<RepairReport> {
        let client = session.lock.client();
        let applied = session.history.applied(client).await?;
        let mut report = RepairReport::default();
        self.in_transaction(session, "repairing the migration history", async {
            for row in &applied {
                match self.migrations.get(row.version) {
                    Some(m) if m.checksum() != row.checksum || m.name() != row.name => {
                        session
                            .history
                            .update(client, row.version, m.name(), m.checksum())
                            .await?;
                        report.updated.push(row.version);
                    }
                    Some(_) => {}
                    None => {
                        session.history.remove(client, row.version).await?;
                        report.removed.push(row.version);
                    }
                }
            }
            Ok(())
        })
        .await?;
        tracing::info!(
            target: "dbmanager::migrate",
            updated = ?report.updated,
            removed = ?report.removed,
            "migration history repaired"
        );
        Ok(report)
    }

    async fn stamp_locked(&self, session: &Session, version: i64) -> Result<RepairReport> {
        let client = session.lock.client();
        let applied = session.history.applied(client).await?;
        let mut report = RepairReport::default();
        self.in_transaction(session, "stamping the migration history", async {
            for row in applied.iter().filter(|r| r.version > version) {
                session.history.remove(client, row.version).await?;
                report.removed.push(row.version);
            }
            for m in self.migrations.iter().filter(|m| m.version() <= version) {
                if !applied.iter().any(|r| r.version == m.version()) {
                    session
                        .history
                        .record(client, m.version(), m.name(), m.checksum(), Duration::ZERO)
                        .await?;
                    report.recorded.push(m.version());
                }
            }
            Ok(())
        })
        .await?;
        tracing::info!(
            target: "dbmanager::migrate",
            version,
            recorded = ?report.recorded,
            removed = ?report.removed,
            "migration history stamped"
        );
        Ok(report)
    }

    /// Runs history edits in one transaction.
    pub(super) async fn in_transaction(
        &self,
        session: &Session,
        what: &'static str,
        work: impl Future<Output = std::result::Result<(), tokio_postgres::Error>>,
    ) -> Result<()> {
        let client = session.lock.client();
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| Error::postgres(what, e))?;
        match work.await {
            Ok(()) => client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| Error::postgres(what, e)),
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                Err(Error::postgres(what, e))
            }
        }
    }
}

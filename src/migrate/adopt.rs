//! Taking over the history of another migration tool (golang-migrate, sqlx,
//! refinery): the versions it applied are recorded in dbmanager's history
//! with the checksums of the files, so `up` continues where it stopped.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;

use super::error::{MigrateError, list};
use super::migrator::{Migrator, Session};
use crate::error::{Error, Result};

/// The migration tool whose history [`Migrator::adopt`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum AdoptFrom {
    /// golang-migrate: `schema_migrations(version bigint, dirty boolean)`,
    /// one row, the current version; every version up to it is applied.
    GolangMigrate,
    /// sqlx: `_sqlx_migrations`, one row per migration with `success`.
    Sqlx,
    /// refinery: `refinery_schema_history`, one row per applied migration.
    Refinery,
}

impl AdoptFrom {
    /// Every tool, in the order of the command line's help.
    pub const ALL: [AdoptFrom; 3] = [
        AdoptFrom::GolangMigrate,
        AdoptFrom::Sqlx,
        AdoptFrom::Refinery,
    ];

    /// The tool's name on the command line: `golang-migrate`, `sqlx`,
    /// `refinery`.
    pub fn name(self) -> &'static str {
        match self {
            AdoptFrom::GolangMigrate => "golang-migrate",
            AdoptFrom::Sqlx => "sqlx",
            AdoptFrom::Refinery => "refinery",
        }
    }

    /// The history table the tool creates by default, found through the
    /// session's `search_path`.
    pub fn table(self) -> &'static str {
        match self {
            AdoptFrom::GolangMigrate => "schema_migrations",
            AdoptFrom::Sqlx => "_sqlx_migrations",
            AdoptFrom::Refinery => "refinery_schema_history",
        }
    }
}

impl fmt::Display for AdoptFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AdoptFrom {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        AdoptFrom::ALL
            .into_iter()
            .find(|tool| tool.name() == s)
            .ok_or_else(|| {
                format!("`{s}` is not a known tool: use golang-migrate, sqlx or refinery")
            })
    }
}

/// What [`Migrator::adopt`] found and recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AdoptReport {
    /// The tool whose history was read.
    pub from: AdoptFrom,
    /// Its history table, `schema.table`.
    pub table: String,
    /// The versions it had applied, ascending.
    pub applied: Vec<i64>,
    /// Those newly recorded in dbmanager's history by this call.
    pub recorded: Vec<i64>,
    /// Those dbmanager's history had already (an earlier adopt).
    pub already_recorded: Vec<i64>,
}

impl Migrator<'_> {
    /// Records in dbmanager's history the migrations another tool applied,
    /// with the checksums of the files here, so that [`Migrator::up`]
    /// applies only what that tool had not. Runs no migration SQL; the
    /// other tool's table is read, never changed. Calling it again records
    /// nothing new.
    ///
    /// The files keep their versions: golang-migrate and sqlx file names
    /// (`<version>_<name>.up.sql`) are dbmanager's already; refinery's
    /// `V<version>__<name>.sql` are renamed `<version>_<name>.up.sql`.
    ///
    /// ```no_run
    /// # async fn demo(db: dbmanager::DatabaseManager) -> dbmanager::Result<()> {
    /// use dbmanager::migrate::{AdoptFrom, Migrations};
    ///
    /// let migrations = Migrations::from_dir("migrations")?;
    /// let migrator = db.migrator(&migrations)?;
    /// let report = migrator.adopt(AdoptFrom::GolangMigrate).await?;
    /// println!("recorded {:?}", report.recorded);
    /// migrator.up().await?; // only what golang-migrate had not applied
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// - [`MigrateError::AdoptNoHistory`] when the tool's table is not found;
    /// - [`MigrateError::AdoptDirty`] for a dirty golang-migrate state or
    ///   failed sqlx migrations (nothing is recorded);
    /// - [`MigrateError::AdoptMissing`] for applied versions without a file;
    /// - [`MigrateError::LockTimeout`]; pool, connection and query errors.
    pub async fn adopt(&self, from: AdoptFrom) -> Result<AdoptReport> {
        self.adopt_table(from, None, from.table()).await
    }

    /// [`Migrator::adopt`] for a history the tool keeps under another name:
    /// golang-migrate's `x-migrations-table` (and the schema of its
    /// `search_path` / `x-migrations-table-quoted`), sqlx's and refinery's
    /// table setting. `schema` `None` looks the table up through the
    /// session's `search_path`, as the tools do. Names are taken as they
    /// are written (no case folding, quoted when read).
    ///
    /// ```no_run
    /// # async fn demo(db: dbmanager::DatabaseManager) -> dbmanager::Result<()> {
    /// use dbmanager::migrate::{AdoptFrom, Migrations};
    ///
    /// let migrations = Migrations::from_dir("migrations")?;
    /// let migrator = db.migrator(&migrations)?;
    /// // migrate -database "postgres://...?x-migrations-table=om_migrations&search_path=schema_om"
    /// migrator
    ///     .adopt_table(AdoptFrom::GolangMigrate, Some("schema_om"), "om_migrations")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Migrator::adopt`]; an empty schema or table name is a
    /// [`crate::Error::Config`].
    pub async fn adopt_table(
        &self,
        from: AdoptFrom,
        schema: Option<&str>,
        table: &str,
    ) -> Result<AdoptReport> {
        if table.is_empty() {
            return Err(Error::config(
                "migrate adopt table",
                "is empty: give the history table's name",
            ));
        }
        if schema.is_some_and(str::is_empty) {
            return Err(Error::config(
                "migrate adopt schema",
                "is empty: leave it out to use the search_path",
            ));
        }
        let span = super::spans::operation(&self.pool, "adopt");
        span.record("from", from.name());
        span.record("table", table);
        super::spans::traced(span, async {
            let session = self.session().await?;
            let result = self.adopt_locked(&session, from, schema, table).await;
            session.finish(result).await
        })
        .await
    }

    async fn adopt_locked(
        &self,
        session: &Session,
        from: AdoptFrom,
        schema: Option<&str>,
        name: &str,
    ) -> Result<AdoptReport> {
        let client = session.lock.client();
        let table = find_table(client, from, schema, name).await?;
        let applied = match from {
            AdoptFrom::GolangMigrate => self.golang_migrate_applied(client, &table).await?,
            AdoptFrom::Sqlx => sqlx_applied(client, &table).await?,
            AdoptFrom::Refinery => {
                read_versions(
                    client,
                    &format!("SELECT version::bigint FROM {table} ORDER BY version"),
                )
                .await?
            }
        };
        let missing: Vec<i64> = applied
            .iter()
            .copied()
            .filter(|v| self.migrations.get(*v).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(MigrateError::AdoptMissing {
                tool: from.name(),
                versions: missing,
            }
            .into());
        }
        let recorded_before = session.history.applied(client).await?;
        let mut report = AdoptReport {
            from,
            table: table.clone(),
            applied: applied.clone(),
            recorded: Vec::new(),
            already_recorded: Vec::new(),
        };
        self.in_transaction(session, "recording an adopted migration history", async {
            for version in &applied {
                if recorded_before.iter().any(|r| r.version == *version) {
                    report.already_recorded.push(*version);
                    continue;
                }
                let migration = self.migrations.get(*version).expect("checked above");
                session
                    .history
                    .record(
                        client,
                        *version,
                        migration.name(),
                        migration.checksum(),
                        Duration::ZERO,
                    )
                    .await?;
                report.recorded.push(*version);
            }
            Ok(())
        })
        .await?;
        tracing::info!(
            target: "dbmanager::migrate",
            from = from.name(),
            table = %table,
            recorded = ?report.recorded,
            already_recorded = ?report.already_recorded,
            "adopted the migration history of {}", from.name()
        );
        Ok(report)
    }

    /// golang-migrate keeps one row: the version it reached, and whether a
    /// migration failed halfway (dirty). Every file up to it is applied.
    async fn golang_migrate_applied(&self, client: &Client, table: &str) -> Result<Vec<i64>> {
        let rows = client
            .query(&format!("SELECT version, dirty FROM {table}"), &[])
            .await
            .map_err(|e| Error::postgres("reading golang-migrate's history", e))?;
        if rows.len() > 1 {
            return Err(MigrateError::AdoptDirty {
                tool: "golang-migrate",
                table: table.to_string(),
                versions: rows.iter().map(|r| r.get(0)).collect(),
                problem: "holds more than one row; golang-migrate keeps exactly one".into(),
            }
            .into());
        }
        let Some(row) = rows.first() else {
            return Ok(Vec::new());
        };
        let (version, dirty): (i64, bool) = (row.get(0), row.get(1));
        if dirty {
            return Err(MigrateError::AdoptDirty {
                tool: "golang-migrate",
                table: table.to_string(),
                versions: vec![version],
                problem: format!(
                    "is dirty at version {version}: that migration failed partway; repair the schema by hand, then `migrate force` it with golang-migrate"
                ),
            }
            .into());
        }
        let mut applied: Vec<i64> = self
            .migrations
            .iter()
            .map(|m| m.version())
            .filter(|v| *v <= version)
            .collect();
        // The current version must be a file here too.
        if version > 0 && !applied.contains(&version) {
            applied.push(version);
        }
        Ok(applied)
    }
}

/// sqlx keeps a row per migration; `success = false` is a failed one, which
/// sqlx itself reports as dirty.
async fn sqlx_applied(client: &Client, table: &str) -> Result<Vec<i64>> {
    let rows = client
        .query(
            &format!("SELECT version, success FROM {table} ORDER BY version"),
            &[],
        )
        .await
        .map_err(|e| Error::postgres("reading sqlx's history", e))?;
    let failed: Vec<i64> = rows
        .iter()
        .filter(|r| !r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    if !failed.is_empty() {
        return Err(MigrateError::AdoptDirty {
            tool: "sqlx",
            table: table.to_string(),
            problem: format!(
                "records failed migration{} {} (success = false); repair the schema by hand and delete {} there",
                if failed.len() == 1 { "" } else { "s" },
                list(&failed),
                if failed.len() == 1 { "that row" } else { "those rows" }
            ),
            versions: failed,
        }
        .into());
    }
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn read_versions(client: &Client, sql: &str) -> Result<Vec<i64>> {
    let rows = client
        .query(sql, &[])
        .await
        .map_err(|e| Error::postgres("reading refinery's history", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The tool's table, quoted and schema-qualified: in `schema`, or as the
/// session's `search_path` finds it. The names travel as parameters and are
/// quoted by the server (`quote_ident`), so any name is safe to look up.
async fn find_table(
    client: &Client,
    from: AdoptFrom,
    schema: Option<&str>,
    table: &str,
) -> Result<String> {
    let row = client
        .query_opt(
            "SELECT format('%I.%I', n.nspname, c.relname)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.oid = to_regclass(CASE WHEN $1::text IS NULL THEN quote_ident($2)
                                             ELSE quote_ident($1) || '.' || quote_ident($2) END)",
            &[&schema, &table],
        )
        .await
        .map_err(|e| Error::postgres("looking for the history table to adopt", e))?;
    row.map(|row| row.get(0)).ok_or_else(|| {
        MigrateError::AdoptNoHistory {
            tool: from.name(),
            table: match schema {
                Some(schema) => format!("{schema}.{table}"),
                None => table.to_string(),
            },
            searched: match schema {
                Some(_) => "",
                None => " on the search_path",
            },
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_parse_from_their_command_line_names() {
        for tool in AdoptFrom::ALL {
            assert_eq!(tool.name().parse::<AdoptFrom>(), Ok(tool));
            assert_eq!(tool.to_string(), tool.name());
        }
        let err = "flyway".parse::<AdoptFrom>().unwrap_err();
        assert!(err.contains("golang-migrate, sqlx or refinery"), "{err}");
    }

    #[test]
    fn refusals_name_the_versions() {
        let one = MigrateError::AdoptMissing {
            tool: "sqlx",
            versions: vec![4],
        };
        assert_eq!(
            one.to_string(),
            "sqlx applied migration 4 but it has no file among the migrations; add the file (same version) and adopt again; nothing was adopted"
        );
        assert_eq!(one.versions(), [4]);
    }
}

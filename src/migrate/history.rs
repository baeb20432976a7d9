//! The history table: which migrations are applied, with their checksum,
//! when and how long they took.

use std::time::{Duration, SystemTime};

use tokio_postgres::Client;

use crate::admin::quote_ident;
use crate::config::check_identifier;
use crate::error::{Error, Result};

/// A row of the history table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppliedRow {
    pub version: i64,
    pub name: String,
    pub checksum: String,
    pub applied_at: SystemTime,
    pub execution: Duration,
}

/// The history table, with its schema resolved once, so a migration that
/// changes `search_path` cannot send the bookkeeping elsewhere.
#[derive(Debug, Clone)]
pub(crate) struct HistoryTable {
    schema: String,
    table: String,
}

impl HistoryTable {
    /// Resolves `table` or `schema.table`. An unqualified name is the table
    /// of that name the session's `search_path` finds, else (first run) one
    /// in the current schema. Looking for an existing table first keeps
    /// the history where it is when a migration creates a schema that
    /// `search_path` names earlier (`"$user"`, say).
    pub async fn resolve(client: &Client, configured: &str) -> Result<HistoryTable> {
        check_identifier(configured)
            .map_err(|problem| Error::config("migrations.table", problem))?;
        if let Some((schema, table)) = configured.split_once('.') {
            return Ok(HistoryTable {
                schema: schema.to_string(),
                table: table.to_string(),
            });
        }
        let row = client
            .query_one(
                "SELECT coalesce(
                     (SELECT n.nspname::text FROM pg_class c
                        JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE c.oid = to_regclass(quote_ident($1))),
                     current_schema()::text)",
                &[&configured],
            )
            .await
            .map_err(|e| Error::postgres("reading the current schema", e))?;
        let schema: Option<String> = row.get(0);
        let schema = schema.ok_or_else(|| {
            Error::config(
                "migrations.table",
                format!(
                    "`{configured}` has no schema and the session's search_path names no existing schema; write it as `schema.{configured}`"
                ),
            )
        })?;
        Ok(HistoryTable {
            schema,
            table: configured.to_string(),
        })
    }

    /// The quoted, schema-qualified name for SQL.
    pub fn sql_name(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    /// `schema.table`, for messages.
    pub fn display_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// Whether the table exists (without creating it).
    pub async fn exists(&self, client: &Client) -> Result<bool> {
        let row = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&self.sql_name()])
            .await
            .map_err(|e| Error::postgres("looking for the migration history table", e))?;
        Ok(row.get(0))
    }

    /// Creates the schema and the table when missing. Runs under the
    /// migration lock, so concurrent migrators do not race on it.
    pub async fn ensure(&self, client: &Client) -> Result<()> {
        if self.exists(client).await? {
            return Ok(());
        }
        // `CREATE SCHEMA IF NOT EXISTS` needs CREATE on the database even
        // when the schema exists, which a least-privilege role owning only
        // its schema lacks: create the schema only when it is missing.
        let schema_exists = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                &[&self.schema],
            )
            .await
            .map_err(|e| Error::postgres("looking for the history table's schema", e))?
            .get::<_, bool>(0);
        if !schema_exists {
            client
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {}",
                    quote_ident(&self.schema)
                ))
                .await
                .map_err(|e| Error::postgres("creating the history table's schema", e))?;
        }
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                 version      BIGINT      PRIMARY KEY,
                 name         TEXT        NOT NULL,
                 checksum     TEXT        NOT NULL,
                 applied_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
                 execution_ms BIGINT      NOT NULL
             )",
            table = self.sql_name(),
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| Error::postgres("creating the migration history table", e))?;
        tracing::info!(target: "dbmanager::migrate", table = %self.display_name(), "created the migration history table");
        Ok(())
    }

    /// Every row, by ascending version; none when the table does not exist.
    pub async fn applied(&self, client: &Client) -> Result<Vec<AppliedRow>> {
        if !self.exists(client).await? {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT version, name, checksum, applied_at, execution_ms FROM {} ORDER BY version",
            self.sql_name()
        );
        let rows = client
            .query(&sql, &[])
            .await
            .map_err(|e| Error::postgres("reading the migration history", e))?;
        Ok(rows
            .iter()
            .map(|row| AppliedRow {
                version: row.get(0),
                name: row.get(1),
                checksum: row.get(2),
                applied_at: row.get(3),
                execution: Duration::from_millis(row.get::<_, i64>(4).max(0) as u64),
            })
            .collect())
    }

    /// Records an applied migration (inside the migration's transaction
    /// when it has one).
    pub async fn record(
        &self,
        client: &Client,
        version: i64,
        name: &str,
        checksum: &str,
        took: Duration,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        let sql = format!(
            "INSERT INTO {} (version, name, checksum, execution_ms) VALUES ($1, $2, $3, $4)",
            self.sql_name()
        );
        let ms = i64::try_from(took.as_millis()).unwrap_or(i64::MAX);
        client
            .execute(&sql, &[&version, &name, &checksum, &ms])
            .await
            .map(drop)
    }

    /// Forgets an applied migration (after reverting it, or on repair).
    pub async fn remove(
        &self,
        client: &Client,
        version: i64,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        let sql = format!("DELETE FROM {} WHERE version = $1", self.sql_name());
        client.execute(&sql, &[&version]).await.map(drop)
    }

    /// Re-records the checksum and name of an applied migration.
    pub async fn update(
        &self,
        client: &Client,
        version: i64,
        name: &str,
        checksum: &str,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        let sql = format!(
            "UPDATE {} SET checksum = $2, name = $3 WHERE version = $1",
            self.sql_name()
        );
        client
            .execute(&sql, &[&version, &checksum, &name])
            .await
            .map(drop)
    }
}

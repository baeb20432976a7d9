//! The PostgreSQL workloads: `select1`, `pgbench-S` and `insert`, each
//! operation checking a connection out of the manager's pool, or sent
//! through its multiplexed handle.

use std::sync::Arc;
use std::time::Instant;

use dbmanager::tokio_postgres::error::SqlState;
use dbmanager::tokio_postgres::types::Type;

use crate::error::{BenchError, Result};
use crate::runner::Step;
use crate::{BenchOptions, Mode, Workload};
use dbmanager::DatabaseManager;
use dbmanager::config::StatementCache;

/// pgbench's select-only script (`pgbench -S`), statement for statement.
pub(crate) const PGBENCH_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

/// Accounts per unit of pgbench scale (`naccounts` in pgbench).
const ACCOUNTS_PER_SCALE: i64 = 100_000;

/// What an insert carries besides the task number: a fixed 64-byte text.
const INSERT_PAYLOAD: &str = "dbmanager bench insert payload, sixty-four bytes long, exactly!!";

/// The statement one PostgreSQL operation runs.
#[derive(Debug, Clone)]
enum Statement {
    Select1,
    /// `aid` drawn from 1 to `accounts`; `bigint` when the column is
    /// `bigint` (pgbench uses it from scale 20000 on).
    PgbenchSelect {
        accounts: i64,
        bigint: bool,
    },
    Insert {
        sql: Arc<str>,
    },
}

/// One task's PostgreSQL operations.
pub(crate) struct PgStep {
    db: DatabaseManager,
    mode: Mode,
    statement: Statement,
    rng: fastrand::Rng,
    task: i32,
    /// `postgres.statement_cache` is `named`: statements are prepared once
    /// per connection (`prepare_cached`). Otherwise each runs as the
    /// unnamed statement in one round trip (`query_typed`), which works
    /// behind PgBouncer in transaction mode.
    cached: bool,
}

impl Step for PgStep {
    async fn step(&mut self) -> Result<Option<Instant>> {
        if self.mode == Mode::Multiplexed {
            self.multiplexed().await?;
            return Ok(None);
        }
        let client = self.db.postgres()?.get().await?;
        let acquired = Instant::now();
        if !self.cached {
            self.step_unnamed(&client).await?;
            drop(client);
            return Ok(Some(acquired));
        }
        match &self.statement {
            Statement::Select1 => {
                let statement = client.prepare_cached("SELECT 1").await?;
                client.query_one(&statement, &[]).await?;
            }
            Statement::PgbenchSelect { accounts, bigint } => {
                let aid = self.rng.i64(1..=*accounts);
                let statement = client.prepare_cached(PGBENCH_SELECT).await?;
                if *bigint {
                    client.query_one(&statement, &[&aid]).await?;
                } else {
                    let aid = aid as i32;
                    client.query_one(&statement, &[&aid]).await?;
                }
            }
            Statement::Insert { sql } => {
                let statement = client.prepare_cached(sql).await?;
                client
                    .execute(&statement, &[&self.task, &INSERT_PAYLOAD])
                    .await?;
            }
        }
        drop(client);
        Ok(Some(acquired))
    }
}

impl PgStep {
    /// One operation as the unnamed statement, parameter types given.
    async fn step_unnamed(&mut self, client: &dbmanager::PooledConnection) -> Result<()> {
        match &self.statement {
            Statement::Select1 => {
                client.query_typed_one("SELECT 1", &[]).await?;
            }
            Statement::PgbenchSelect { accounts, bigint } => {
                let aid = self.rng.i64(1..=*accounts);
                if *bigint {
                    client
                        .query_typed_one(PGBENCH_SELECT, &[(&aid, Type::INT8)])
                        .await?;
                } else {
                    let aid = aid as i32;
                    client
                        .query_typed_one(PGBENCH_SELECT, &[(&aid, Type::INT4)])
                        .await?;
                }
            }
            Statement::Insert { sql } => {
                client
                    .query_typed(
                        sql,
                        &[(&self.task, Type::INT4), (&INSERT_PAYLOAD, Type::TEXT)],
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// One operation through the multiplexed handle: the same statements,
    /// prepared once per connection by the handle.
    async fn multiplexed(&mut self) -> Result<()> {
        let mux = self.db.postgres()?.multiplexed();
        match &self.statement {
            Statement::Select1 => {
                mux.query_one("SELECT 1", &[]).await?;
            }
            Statement::PgbenchSelect { accounts, bigint } => {
                let aid = self.rng.i64(1..=*accounts);
                if *bigint {
                    mux.query_one(PGBENCH_SELECT, &[&aid]).await?;
                } else {
                    let aid = aid as i32;
                    mux.query_one(PGBENCH_SELECT, &[&aid]).await?;
                }
            }
            Statement::Insert { sql } => {
                mux.execute(&**sql, &[&self.task, &INSERT_PAYLOAD]).await?;
            }
        }
        Ok(())
    }
}

/// Runs `SELECT pg_sleep(sleep)` back to back until aborted, through
/// `mode`: the slow statement of the head-of-line measurement. Errors are
/// ignored (the run measures the other tasks).
pub(crate) async fn slow_statements(db: DatabaseManager, mode: Mode, sleep: std::time::Duration) {
    let seconds = sleep.as_secs_f64();
    loop {
        let Ok(pool) = db.postgres() else { return };
        let _ = match mode {
            Mode::Multiplexed => pool
                .multiplexed()
                .execute("SELECT pg_sleep($1)", &[&seconds])
                .await
                .map(drop),
            Mode::Pooled => match pool.get().await {
                Ok(client) => client
                    .execute("SELECT pg_sleep($1)", &[&seconds])
                    .await
                    .map(drop)
                    .map_err(dbmanager::Error::from),
                Err(e) => Err(e),
            },
        };
    }
}

/// Checks or creates what the workload needs, and makes one step per task.
/// Returns the steps and a description of the data set.
pub(crate) async fn prepare(
    db: &DatabaseManager,
    options: &BenchOptions,
) -> Result<(Vec<PgStep>, Option<String>)> {
    let (statement, dataset) = match options.workload {
        Workload::Select1 => (Statement::Select1, None),
        Workload::PgbenchS => {
            let (accounts, bigint, scale) = pgbench_dataset(db).await?;
            (
                Statement::PgbenchSelect { accounts, bigint },
                Some(format!("pgbench scale {scale}: {accounts} accounts")),
            )
        }
        Workload::Insert => {
            let table = quote_identifier(&options.insert_table);
            let client = db.postgres()?.get().await?;
            client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {table} (
                        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                        task integer NOT NULL,
                        payload text NOT NULL,
                        created_at timestamptz NOT NULL DEFAULT now()
                    )"
                ))
                .await
                .map_err(|e| BenchError::operation("creating the insert benchmark table", e))?;
            (
                Statement::Insert {
                    sql: format!("INSERT INTO {table} (task, payload) VALUES ($1, $2)").into(),
                },
                Some(format!("table {table}")),
            )
        }
        Workload::MongoPing | Workload::MongoFindById => {
            unreachable!("MongoDB workloads are prepared by bench::mongo")
        }
    };
    let steps = (0..options.tasks)
        .map(|task| PgStep {
            db: db.clone(),
            mode: options.mode,
            statement: statement.clone(),
            rng: fastrand::Rng::with_seed(options.seed.wrapping_add(task as u64)),
            task: i32::try_from(task).unwrap_or(i32::MAX),
            cached: db.config().postgres.statement_cache == StatementCache::Named,
        })
        .collect();
    Ok((steps, dataset))
}

/// Finds the `pgbench -i` dataset like pgbench does (the scale is the row
/// count of `pgbench_branches`) and the type of `aid`. Returns the number
/// of accounts, whether `aid` is `bigint`, and the scale.
async fn pgbench_dataset(db: &DatabaseManager) -> Result<(i64, bool, i64)> {
    let pool = db.postgres()?;
    let client = pool.get().await?;
    let missing = |problem: String| BenchError::MissingDataset {
        workload: Workload::PgbenchS,
        problem,
        hint: format!(
            "create it first with `pgbench -i -s <scale> {}` (or point DATABASE_URL at the database that holds it)",
            pool.database()
        ),
    };
    let scale: i64 = match client
        .query_one("SELECT count(*) FROM pgbench_branches", &[])
        .await
    {
        Ok(row) => row.get(0),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
            return Err(missing(format!(
                "database \"{}\" has no pgbench_branches table",
                pool.database()
            )));
        }
        Err(e) => return Err(BenchError::operation("reading the pgbench scale", e)),
    };
    if scale == 0 {
        return Err(missing(format!(
            "pgbench_branches in database \"{}\" is empty",
            pool.database()
        )));
    }
    let statement = match client.prepare(PGBENCH_SELECT).await {
        Ok(statement) => statement,
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
            return Err(missing(format!(
                "database \"{}\" has no pgbench_accounts table",
                pool.database()
            )));
        }
        Err(e) => return Err(BenchError::operation("preparing the pgbench select", e)),
    };
    let bigint = statement.params().first() == Some(&Type::INT8);
    Ok((scale * ACCOUNTS_PER_SCALE, bigint, scale))
}

/// A table name as one quoted SQL identifier.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_whole_with_quotes_doubled() {
        assert_eq!(quote_identifier("bench"), "\"bench\"");
        assert_eq!(quote_identifier("a\"b; drop"), "\"a\"\"b; drop\"");
    }

    #[test]
    fn the_insert_payload_is_sixty_four_bytes() {
        assert_eq!(INSERT_PAYLOAD.len(), 64);
    }
}

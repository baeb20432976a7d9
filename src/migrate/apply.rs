//! Running one migration script, statement by statement, with its
//! history bookkeeping in the same transaction.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::error::ErrorPosition;

use super::error::MigrateError;
use super::history::HistoryTable;
use super::migration::{Migration, NO_TRANSACTION_DIRECTIVE, Script};
use super::report::Direction;
use super::split::Statement;
use crate::config::scrub;
use crate::error::describe_postgres;
use crate::error::{Error, Result};

/// How much of a failing statement an error shows.
const EXCERPT_CHARS: usize = 160;

/// Runs the up or down script of `migration` and records (or forgets) it
/// in the history; returns how long the statements took.
///
/// A transactional script runs between `BEGIN` and `COMMIT` with the
/// history change inside the same transaction, so a failure leaves schema
/// and history as they were. A `no-transaction` script runs each statement
/// on its own (so `CREATE INDEX CONCURRENTLY` works), then the history is
/// changed.
pub(crate) async fn run(
    client: &Client,
    history: &HistoryTable,
    migration: &Migration,
    direction: Direction,
    secrets: &[String],
) -> Result<Duration> {
    let script = match direction {
        Direction::Up => &migration.up,
        Direction::Down => match &migration.down {
            Some(down) => down,
            None => {
                return Err(MigrateError::MissingDown {
                    versions: vec![migration.version()],
                }
                .into());
            }
        },
    };
    if script.unwrapped {
        tracing::info!(
            target: "dbmanager::migrate",
            file = %script.file,
            "{} wraps its body in BEGIN/COMMIT: running it in the migration's own transaction instead",
            script.file
        );
    }
    if script.transactional {
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| Error::postgres("starting a migration transaction", e))?;
    }
    let started = Instant::now();
    for (index, statement) in script.statements.iter().enumerate() {
        if let Err(error) = client.batch_execute(&statement.sql).await {
            if script.transactional {
                // If even this fails the connection is gone, and the server
                // rolls back with the session.
                let _ = client.batch_execute("ROLLBACK").await;
            }
            return Err(statement_error(script, index + 1, statement, &error, secrets).into());
        }
    }
    let took = started.elapsed();
    if !script.transactional {
        left_no_transaction_open(client, script).await?;
    }
    let bookkeeping = match direction {
        Direction::Up => {
            history
                .record(
                    client,
                    migration.version(),
                    migration.name(),
                    migration.checksum(),
                    took,
                )
                .await
        }
        Direction::Down => history.remove(client, migration.version()).await,
    };
    if let Err(error) = bookkeeping {
        if script.transactional {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        return Err(Error::postgres(
            "recording the migration in the history",
            error,
        ));
    }
    if script.transactional
        && let Err(error) = client.batch_execute("COMMIT").await
    {
        let commit = Statement {
            sql: "COMMIT (deferred constraints are checked here)".into(),
            line: script.statements.last().map_or(1, |s| s.line),
            words: Vec::new(),
        };
        let number = script.statements.len() + 1;
        return Err(statement_error(script, number, &commit, &error, secrets).into());
    }
    Ok(took)
}

/// A script run outside a transaction may manage its own, but one it left
/// open would swallow the history row and be rolled back with the
/// connection: the migration would read as applied while nothing was kept.
/// Inside a transaction block `now()` (its start) is older than the
/// current statement; in autocommit they are the same instant.
async fn left_no_transaction_open(client: &Client, script: &Script) -> Result<()> {
    // One simple-protocol message: in autocommit it is a transaction of
    // its own, begun when the message arrived.
    let rows = client
        .simple_query(
            "SELECT txid_current_if_assigned() IS NOT NULL OR now() <> statement_timestamp()",
        )
        .await
        .map_err(|e| Error::postgres("checking for an open transaction", e))?;
    let open = rows.iter().any(|message| match message {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0) == Some("t"),
        _ => false,
    });
    if !open {
        return Ok(());
    }
    let _ = client.batch_execute("ROLLBACK").await;
    Err(MigrateError::Statement {
        file: script.file.clone(),
        statement: to_u32(script.statements.len()),
        line: script.statements.last().map_or(1, |s| to_u32(s.line)),
        error_line: None,
        sql: "(end of file)".into(),
        reason: "the script ends inside a transaction it opened (BEGIN without COMMIT); \
                 that transaction was rolled back and the migration is not recorded"
            .into(),
        code: None,
        rolled_back: false,
    }
    .into())
}

fn statement_error(
    script: &Script,
    number: usize,
    statement: &Statement,
    error: &tokio_postgres::Error,
    secrets: &[String],
) -> MigrateError {
    let code = error.code().map(|c| c.code().to_string());
    let mut reason = scrub(&describe_postgres(error), secrets);
    if script.transactional && code.as_deref() == Some("25001") {
        reason.push_str(&format!(
            "; put `{NO_TRANSACTION_DIRECTIVE}` on the first line to run this migration outside a transaction"
        ));
    }
    let error_line = error
        .as_db_error()
        .and_then(|db| match db.position() {
            Some(ErrorPosition::Original(position)) => Some(*position as usize),
            _ => None,
        })
        .map(|position| {
            let before: String = statement
                .sql
                .chars()
                .take(position.saturating_sub(1))
                .collect();
            to_u32(statement.line + before.matches('\n').count())
        });
    MigrateError::Statement {
        file: script.file.clone(),
        statement: to_u32(number),
        line: to_u32(statement.line),
        error_line,
        sql: statement.excerpt(EXCERPT_CHARS),
        reason,
        code,
        rolled_back: script.transactional,
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

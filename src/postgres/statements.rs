//! The crate's own statements (health probes), sent the way
//! `postgres.statement_cache` allows: behind a transaction pooler a named
//! statement prepared in one round trip may be gone in the next.

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::config::StatementCache;

/// Runs `sql` (no parameters) and returns its first row's columns as text
/// (empty when it returned no row).
///
/// - `named`: prepared, then executed (tokio-postgres' `query`).
/// - `unnamed`: the unnamed statement, parsed, bound and executed in one
///   round trip (`query_typed`), which a transaction pooler keeps on one
///   server connection.
/// - `off`: the simple query protocol; nothing is prepared at all.
pub(crate) async fn first_row_text(
    client: &Client,
    mode: StatementCache,
    sql: &str,
) -> Result<Vec<Option<String>>, tokio_postgres::Error> {
    let rows = match mode {
        StatementCache::Named => client.query(sql, &[]).await?,
        StatementCache::Unnamed => client.query_typed(sql, &[]).await?,
        StatementCache::Off => {
            let messages = client.simple_query(sql).await?;
            return Ok(messages
                .iter()
                .find_map(|message| match message {
                    SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|i| row.get(i).map(str::to_string))
                            .collect(),
                    ),
                    _ => None,
                })
                .unwrap_or_default());
        }
    };
    Ok(rows
        .first()
        .map(|row| (0..row.len()).map(|i| row.get(i)).collect())
        .unwrap_or_default())
}

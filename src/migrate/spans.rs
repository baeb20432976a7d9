//! The spans of migration runs: one per command (`dbmanager.migrate`) and
//! one per migration applied or reverted (`dbmanager.migration`), with
//! OpenTelemetry's database attributes (see `crate::spans`).

use std::future::Future;

use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::migration::Migration;
use super::report::Direction;
use crate::error::Result;
use crate::postgres::PostgresPool;

/// The span of one migrate command: `db.operation.name` is `migrate up`,
/// `migrate down`, `migrate repair`, `migrate stamp` or `migrate adopt`
/// (also the exported span name). `from` and `table` are `adopt`'s.
pub(super) fn operation(pool: &PostgresPool, operation: &'static str) -> Span {
    let name = match operation {
        "up" => "migrate up",
        "down" => "migrate down",
        "repair" => "migrate repair",
        "stamp" => "migrate stamp",
        "adopt" => "migrate adopt",
        _ => "migrate",
    };
    let peer = pool.peer();
    tracing::info_span!(
        target: "dbmanager::migrate",
        "dbmanager.migrate",
        otel.name = name,
        otel.kind = "client",
        db.system.name = crate::spans::POSTGRESQL,
        db.namespace = %peer.namespace,
        server.address = %peer.address,
        server.port = peer.port,
        db.operation.name = name,
        operation,
        database = %pool.database(),
        from = Empty,
        table = Empty,
        error.type = Empty,
        db.response.status_code = Empty,
        otel.status_code = Empty,
    )
}

/// The span of one migration: its version, name, direction and place in
/// the run.
pub(super) fn migration(
    pool: &PostgresPool,
    migration: &Migration,
    direction: Direction,
    (index, total): (usize, usize),
) -> Span {
    let peer = pool.peer();
    let name = match direction {
        Direction::Up => "migration up",
        Direction::Down => "migration down",
    };
    tracing::info_span!(
        target: "dbmanager::migrate",
        "dbmanager.migration",
        otel.name = name,
        otel.kind = "client",
        db.system.name = crate::spans::POSTGRESQL,
        db.namespace = %peer.namespace,
        server.address = %peer.address,
        server.port = peer.port,
        db.operation.name = name,
        dbmanager.migration.version = migration.version(),
        dbmanager.migration.name = migration.name(),
        dbmanager.migration.direction = direction.as_str(),
        dbmanager.migration.index = index,
        dbmanager.migration.total = total,
        dbmanager.migration.transactional = migration.is_transactional(),
        error.type = Empty,
        db.response.status_code = Empty,
        otel.status_code = Empty,
    )
}

/// Runs `work` inside `span`, recording its failure there.
pub(super) async fn traced<T>(span: Span, work: impl Future<Output = Result<T>>) -> Result<T> {
    let result = work.instrument(span.clone()).await;
    if let Err(error) = &result {
        crate::spans::record_error(&span, error);
    }
    result
}

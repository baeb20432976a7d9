//! The migration operations, and their entry points on
//! [`DatabaseManager`].

use std::time::{Duration, Instant};

use super::apply;
use super::error::MigrateError;
use super::history::{AppliedRow, HistoryTable};
use super::lock::{HolderCheck, MigrationLock, lock_key};
use super::migration::Migration;
use super::report::{Direction, MigrateReport, MigrationRun};
use super::source::Migrations;
use super::status::StatusReport;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::manager::DatabaseManager;
use crate::postgres::PostgresPool;

impl DatabaseManager {
    /// Applies every pending migration: [`Migrator::up`] with the settings
    /// of `[migrations]`.
    ///
    /// Safe to call from every replica at start-up: the first takes the
    /// migration lock and applies, the others wait for it and find nothing
    /// left to do.
    ///
    /// ```no_run
    /// # async fn demo(db: dbmanager::DatabaseManager) -> dbmanager::Result<()> {
    /// let migrations = dbmanager::migrate::Migrations::from_dir("migrations")?;
    /// let report = db.migrate(&migrations).await?;
    /// println!("applied {:?}", report.versions());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Migrator::up`], and [`Error::NotConfigured`] without
    /// PostgreSQL.
    pub async fn migrate(&self, migrations: &Migrations) -> Result<MigrateReport> {
        self.migrator(migrations)?.up().await
    }

    /// Every migration operation (up, down, status, repair, stamp) on this
    /// manager's PostgreSQL database, with the settings of `[migrations]`.
    ///
    /// # Errors
    ///
    /// [`Error::NotConfigured`] without PostgreSQL.
    pub fn migrator<'a>(&self, migrations: &'a Migrations) -> Result<Migrator<'a>> {
        let pool = self.postgres()?.clone();
        Ok(Migrator::on_pool(pool, migrations, self.config()))
    }
}

impl<'a> Migrator<'a> {
    /// A migrator on `pool` with the settings of `config`'s `[migrations]`.
    pub(crate) fn on_pool(pool: PostgresPool, migrations: &'a Migrations, config: &Config) -> Self {
        let settings = &config.migrations;
        Migrator {
            pool,
            migrations,
            table: settings.table.clone(),
            allow_out_of_order: settings.allow_out_of_order,
            progress_interval: settings.progress_interval,
            lock_timeout: None,
            holder_check: HolderCheck::from_config(&config.postgres),
        }
    }
}

/// Runs migrations against one PostgreSQL database; from
/// [`DatabaseManager::migrator`].
///
/// Every operation that changes anything holds the migration lock (a
/// PostgreSQL advisory lock) for its whole run, so concurrent migrators
/// (replicas starting together) run one after the other. The lock lives on
/// a connection of its own that is closed afterwards; if the operation
/// fails, panics or is cancelled, closing it makes the server release the
/// lock and roll back the migration in progress.
#[derive(Debug)]
#[must_use = "a migrator does nothing until one of its operations is awaited"]
pub struct Migrator<'a> {
    pub(super) pool: PostgresPool,
    pub(super) migrations: &'a Migrations,
    table: String,
    allow_out_of_order: bool,
    progress_interval: Duration,
    lock_timeout: Option<Duration>,
    holder_check: HolderCheck,
}

/// Which migrations a revert covers.
#[derive(Debug, Clone, Copy)]
enum Revert {
    Steps(usize),
    To(i64),
}

/// A held lock with the history table resolved on its connection.
pub(super) struct Session {
    pub(super) lock: MigrationLock,
    pub(super) history: HistoryTable,
}

impl Session {
    /// Releases the lock after success; abandons it (closing the
    /// connection) after an error.
    pub(super) async fn finish<T>(self, result: Result<T>) -> Result<T> {
        match result {
            Ok(value) => {
                if let Err(e) = self.lock.release().await {
                    // The connection is closed anyway, which releases it.
                    tracing::warn!(target: "dbmanager::migrate", error = %e, "explicit unlock failed; the lock was released by closing the connection");
                }
                Ok(value)
            }
            Err(e) => {
                self.lock.abandon().await;
                Err(e)
            }
        }
    }
}

impl<'a> Migrator<'a> {
    /// How long to wait for another migrator's lock before failing with
    /// [`MigrateError::LockTimeout`]. Default: no limit (a replica waits
    /// while another applies a long migration).
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = Some(timeout);
        self
    }

    /// Apply pending migrations older than the newest applied one instead
    /// of refusing. Default: `migrations.allow_out_of_order`.
    pub fn allow_out_of_order(mut self, allow: bool) -> Self {
        self.allow_out_of_order = allow;
        self
    }

    /// The advisory lock key this migrator takes, for operators looking at
    /// `pg_locks`. It is derived from the history table's name without its
    /// schema, so `history` and `public.history` (the same table, written
    /// two ways) can never be locked by two migrators at once; history
    /// tables of the same name in different schemas merely take turns.
    pub fn lock_key(&self) -> i64 {
        let table = self
            .table
            .rsplit_once('.')
            .map_or(self.table.as_str(), |(_, table)| table);
        lock_key(&format!("migrate:{table}"))
    }

    /// Applies every pending migration, in version order, each in its own
    /// transaction (Alembic's `upgrade head`).
    ///
    /// # Errors
    ///
    /// - [`MigrateError::Changed`] / [`MigrateError::Missing`] when applied
    ///   migrations were edited or removed (nothing is run);
    /// - [`MigrateError::OutOfOrder`] for a pending migration older than the
    ///   newest applied one, unless allowed;
    /// - [`MigrateError::Statement`] naming the file and statement that
    ///   failed; migrations before it stay applied;
    /// - [`MigrateError::LockTimeout`]; pool and connection errors.
    pub async fn up(&self) -> Result<MigrateReport> {
        self.run_up(None).await
    }

    /// Applies pending migrations up to and including `version` (Alembic's
    /// `upgrade <rev>`).
    ///
    /// # Errors
    ///
    /// [`MigrateError::UnknownVersion`] when `version` is not a migration;
    /// otherwise as [`Migrator::up`].
    pub async fn up_to(&self, version: i64) -> Result<MigrateReport> {
        if self.migrations.get(version).is_none() {
            return Err(MigrateError::UnknownVersion { version }.into());
        }
        self.run_up(Some(version)).await
    }

    /// Reverts the `steps` newest applied migrations, newest first
    /// (Alembic's `downgrade -N`); fewer when fewer are applied.
    ///
    /// # Errors
    ///
    /// [`MigrateError::MissingDown`], [`MigrateError::Missing`] or
    /// [`MigrateError::Changed`] for any migration it would revert, before
    /// anything changes; [`MigrateError::Statement`] when a down script
    /// fails (reverts before it stay done).
    pub async fn down(&self, steps: usize) -> Result<MigrateReport> {
        self.run_down(Revert::Steps(steps)).await
    }

    /// Reverts every applied migration newer than `version`; `0` reverts
    /// all (Alembic's `downgrade <rev>` and `downgrade base`).
    ///
    /// # Errors
    ///
    /// [`MigrateError::UnknownVersion`] when `version` is neither 0, a
    /// migration, nor in the history; otherwise as [`Migrator::down`].
    pub async fn down_to(&self, version: i64) -> Result<MigrateReport> {
        self.run_down(Revert::To(version)).await
    }

    /// Every migration with its state: applied (with when and how long),
    /// pending, changed since applied, or applied but missing from the
    /// source. Takes no lock and creates nothing.
    ///
    /// # Errors
    ///
    /// Pool, connection and query errors.
    pub async fn status(&self) -> Result<StatusReport> {
        let connection = self.pool.get().await?;
        let history = HistoryTable::resolve(&connection, &self.table).await?;
        let applied = history.applied(&connection).await?;
        Ok(StatusReport::new(self.migrations, &applied))
    }

    /// Takes the lock on a dedicated connection and prepares the history
    /// table.
    pub(super) async fn session(&self) -> Result<Session> {
        let connection = self.pool.get().await?;
        let lock = MigrationLock::acquire(
            connection,
            self.lock_key(),
            self.lock_timeout,
            self.holder_check,
        )
        .await?;
        let prepared = async {
            let history = HistoryTable::resolve(lock.client(), &self.table).await?;
            history.ensure(lock.client()).await?;
            Ok::<_, Error>(history)
        }
        .await;
        match prepared {
            Ok(history) => Ok(Session { lock, history }),
            Err(e) => {
                lock.abandon().await;
                Err(e)
            }
        }
    }

    async fn run_up(&self, target: Option<i64>) -> Result<MigrateReport> {
        let span = super::spans::operation(&self.pool, "up");
        super::spans::traced(span, async {
            let started = Instant::now();
            let session = self.session().await?;
            let result = self.up_locked(&session, target, started).await;
            session.finish(result).await
        })
        .await
    }

    async fn up_locked(
        &self,
        session: &Session,
        target: Option<i64>,
        started: Instant,
    ) -> Result<MigrateReport> {
        let client = session.lock.client();
        let applied = session.history.applied(client).await?;
        let status = StatusReport::new(self.migrations, &applied);
        self.check_recorded(&status)?;
        let newest = applied.iter().map(|r| r.version).max();
        let pending: Vec<&Migration> = self
            .migrations
            .iter()
            .filter(|m| {
                status
                    .get(m.version())
                    .is_some_and(|s| !s.state.is_recorded())
            })
            .filter(|m| target.is_none_or(|t| m.version() <= t))
            .collect();
        if let (Some(newest), false) = (newest, self.allow_out_of_order) {
            let early: Vec<i64> = pending
                .iter()
                .map(|m| m.version())
                .filter(|v| *v < newest)
                .collect();
            if !early.is_empty() {
                return Err(MigrateError::OutOfOrder {
                    versions: early,
                    newest_applied: newest,
                }
                .into());
            }
        }
        let mut report = MigrateReport::new(Direction::Up);
        let total = pending.len();
        for (index, migration) in pending.into_iter().enumerate() {
            report.migrations.push(
                self.run_one(session, migration, Direction::Up, (index + 1, total))
                    .await?,
            );
        }
        report.took = started.elapsed();
        if report.is_empty() {
            tracing::info!(target: "dbmanager::migrate", current = status.current(), "schema is up to date; nothing to apply");
        } else {
            tracing::info!(
                target: "dbmanager::migrate",
                applied = report.migrations.len(),
                current = report.migrations.last().map(|m| m.version),
                took_ms = report.took.as_millis() as u64,
                "migrations applied"
            );
        }
        Ok(report)
    }

    /// Refuses to go on when applied migrations changed or went missing.
    fn check_recorded(&self, status: &StatusReport) -> Result<()> {
        let changed = status.changed();
        if !changed.is_empty() {
            let files = changed
                .iter()
                .filter_map(|v| self.migrations.get(*v))
                .map(|m| m.up_file().to_string())
                .collect();
            return Err(MigrateError::Changed {
                versions: changed,
                files,
            }
            .into());
        }
        let missing = status.missing();
        if !missing.is_empty() {
            return Err(MigrateError::Missing { versions: missing }.into());
        }
        Ok(())
    }

    /// Runs one migration, the `index`-th of `total` in this run: INFO as
    /// it starts (`applying migration 3/50: 3_add_index`), INFO every
    /// `migrations.progress_interval` while it runs, INFO when it is done.
    /// The command line's progress bar reads these events (their
    /// `progress` field says which).
    async fn run_one(
        &self,
        session: &Session,
        migration: &Migration,
        direction: Direction,
        place: (usize, usize),
    ) -> Result<MigrationRun> {
        let span = super::spans::migration(&self.pool, migration, direction, place);
        super::spans::traced(
            span,
            self.run_one_within(session, migration, direction, place),
        )
        .await
    }

    async fn run_one_within(
        &self,
        session: &Session,
        migration: &Migration,
        direction: Direction,
        (index, total): (usize, usize),
    ) -> Result<MigrationRun> {
        let verb = match direction {
            Direction::Up => "applying",
            Direction::Down => "reverting",
        };
        tracing::info!(
            target: "dbmanager::migrate",
            progress = "start",
            index,
            total,
            version = migration.version(),
            name = migration.name(),
            direction = direction.as_str(),
            transactional = migration.is_transactional(),
            "{verb} migration {index}/{total}: {}_{}",
            migration.version(),
            migration.name()
        );
        let started = Instant::now();
        let apply = apply::run(
            session.lock.client(),
            &session.history,
            migration,
            direction,
            self.pool.secrets(),
        );
        tokio::pin!(apply);
        let interval = self.progress_interval;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                result = &mut apply => break result,
                _ = ticks.tick() => {
                    let elapsed = started.elapsed();
                    tracing::info!(
                        target: "dbmanager::migrate",
                        progress = "running",
                        index,
                        total,
                        version = migration.version(),
                        name = migration.name(),
                        elapsed_s = elapsed.as_secs(),
                        "migration {index}/{total} {}_{} still running after {}",
                        migration.version(),
                        migration.name(),
                        humantime::format_duration(Duration::from_secs(elapsed.as_secs()))
                    );
                }
            }
        };
        let took = result.inspect_err(|e| {
            tracing::error!(
                target: "dbmanager::migrate",
                version = migration.version(),
                name = migration.name(),
                direction = direction.as_str(),
                error = %e,
                "migration failed"
            );
        })?;
        tracing::info!(
            target: "dbmanager::migrate",
            progress = "done",
            index,
            total,
            version = migration.version(),
            name = migration.name(),
            direction = direction.as_str(),
            took_ms = took.as_millis() as u64,
            "{} migration {index}/{total}",
            if direction == Direction::Up { "applied" } else { "reverted" }
        );
        Ok(MigrationRun {
            version: migration.version(),
            name: migration.name().to_string(),
            took,
        })
    }

    async fn run_down(&self, revert: Revert) -> Result<MigrateReport> {
        let span = super::spans::operation(&self.pool, "down");
        super::spans::traced(span, async {
            let started = Instant::now();
            let session = self.session().await?;
            let result = self.down_locked(&session, revert, started).await;
            session.finish(result).await
        })
        .await
    }

    async fn down_locked(
        &self,
        session: &Session,
        revert: Revert,
        started: Instant,
    ) -> Result<MigrateReport> {
        let applied = session.history.applied(session.lock.client()).await?;
        let plan = self.plan_revert(&applied, revert)?;
        let mut report = MigrateReport::new(Direction::Down);
        let total = plan.len();
        for (index, migration) in plan.into_iter().enumerate() {
            report.migrations.push(
                self.run_one(session, migration, Direction::Down, (index + 1, total))
                    .await?,
            );
        }
        report.took = started.elapsed();
        tracing::info!(
            target: "dbmanager::migrate",
            reverted = report.migrations.len(),
            took_ms = report.took.as_millis() as u64,
            "migrations reverted"
        );
        Ok(report)
    }

    /// The migrations to revert, newest first, after checking that every
    /// one can be: present, unchanged, with a down file.
    fn plan_revert(&self, applied: &[AppliedRow], revert: Revert) -> Result<Vec<&'a Migration>> {
        let mut recorded: Vec<&AppliedRow> = applied.iter().collect();
        recorded.sort_by_key(|r| std::cmp::Reverse(r.version));
        let chosen: Vec<&AppliedRow> = match revert {
            Revert::Steps(steps) => recorded.into_iter().take(steps).collect(),
            Revert::To(version) => {
                let known = version == 0
                    || self.migrations.get(version).is_some()
                    || applied.iter().any(|r| r.version == version);
                if !known {
                    return Err(MigrateError::UnknownVersion { version }.into());
                }
                recorded
                    .into_iter()
                    .filter(|r| r.version > version)
                    .collect()
            }
        };
        let missing: Vec<i64> = chosen
            .iter()
            .filter(|r| self.migrations.get(r.version).is_none())
            .map(|r| r.version)
            .collect();
        if !missing.is_empty() {
            let mut versions = missing;
            versions.sort_unstable();
            return Err(MigrateError::Missing { versions }.into());
        }
        let migrations: Vec<(&AppliedRow, &'a Migration)> = chosen
            .iter()
            .filter_map(|r| self.migrations.get(r.version).map(|m| (*r, m)))
            .collect();
        let mut changed: Vec<&Migration> = migrations
            .iter()
            .filter(|(r, m)| m.checksum() != r.checksum)
            .map(|(_, m)| *m)
            .collect();
        if !changed.is_empty() {
            changed.sort_by_key(|m| m.version());
            return Err(MigrateError::Changed {
                versions: changed.iter().map(|m| m.version()).collect(),
                files: changed.iter().map(|m| m.up_file().to_string()).collect(),
            }
            .into());
        }
        let without_down: Vec<i64> = migrations
            .iter()
            .filter(|(_, m)| !m.is_reversible())
            .map(|(_, m)| m.version())
            .collect();
        if !without_down.is_empty() {
            return Err(MigrateError::MissingDown {
                versions: without_down,
            }
            .into());
        }
        Ok(migrations.into_iter().map(|(_, m)| m).collect())
    }
}

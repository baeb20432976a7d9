//! Migrations against a real PostgreSQL server: up and down, the lock,
//! failures, checksums, the no-transaction directive.

mod support;

use std::sync::mpsc;
use std::time::Duration;

use dbmanager::migrate::{MigrateError, MigrationState, Migrations};
use dbmanager::{DatabaseManager, Error};
use support::{
    TestDb, catalog, eventually, example_migrations, history, manager, migrations_dir, query_i64,
};

const HISTORY: &str = "dbmanager_schema_history";

/// What most tests here start from: a database of their own, a folder of
/// migration files they may edit between runs (no files when they use the
/// example schema), and a connected manager on that database.
struct Fixture {
    db: TestDb,
    dir: tempfile::TempDir,
    manager: DatabaseManager,
}

impl Fixture {
    async fn new(prefix: &str, files: &[(&str, &str)]) -> Fixture {
        let db = TestDb::create(prefix).await;
        let dir = migrations_dir(files);
        let manager = manager(&db.url).await;
        Fixture { db, dir, manager }
    }

    /// The folder's migrations as the files are now.
    fn migrations(&self) -> Migrations {
        Migrations::from_dir(self.dir.path()).unwrap()
    }

    /// Writes (or rewrites) one migration file.
    fn write(&self, file: &str, content: impl AsRef<[u8]>) {
        std::fs::write(self.dir.path().join(file), content).unwrap();
    }

    /// The versions in the default history table.
    async fn history(&self) -> Vec<i64> {
        history(&self.db.url, HISTORY).await
    }

    async fn shutdown(self) {
        self.manager.shutdown().await.unwrap();
    }
}

fn migrate_error(error: Error) -> MigrateError {
    match error {
        Error::Migrate(e) => e,
        other => panic!("expected a migration error, got {other:?}"),
    }
}

async fn lock_is_free(url: &str, key: i64) -> bool {
    query_i64(
        url,
        &format!(
            "SELECT CASE WHEN pg_try_advisory_lock({key}) AND pg_advisory_unlock({key}) THEN 1::bigint ELSE 0::bigint END"
        ),
    )
    .await
        == 1
}

/// Whether the advisory lock `key` becomes free within `limit`: the server
/// frees a session's locks a moment after the session ends.
async fn lock_is_freed_within(limit: Duration, url: &str, key: i64) -> bool {
    eventually(limit, async || lock_is_free(url, key).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_then_down_to_zero_then_up_leaves_an_identical_schema() {
    let fx = Fixture::new("mig_roundtrip", &[]).await;
    let migrations = example_migrations();
    let before = catalog(&fx.db.url).await;

    let first = fx.manager.migrate(&migrations).await.unwrap();
    assert_eq!(first.versions(), [1, 2, 3]);
    let migrated = catalog(&fx.db.url).await;
    assert!(
        migrated.contains("constraint user_sessions user_sessions_user_id_fkey FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE"),
        "{migrated}"
    );
    assert!(
        migrated
            .contains("CREATE UNIQUE INDEX users_email_key ON public.users USING btree (email)")
    );

    let migrator = fx.manager.migrator(&migrations).unwrap();
    let down = migrator.down_to(0).await.unwrap();
    assert_eq!(down.versions(), [3, 2, 1]);
    assert_eq!(fx.history().await, Vec::<i64>::new());
    let emptied = catalog(&fx.db.url).await;
    let only_history: Vec<&str> = emptied.lines().filter(|l| !l.contains(HISTORY)).collect();
    assert_eq!(
        only_history.join("\n"),
        before,
        "down to 0 leaves nothing but the history table"
    );

    let again = migrator.up().await.unwrap();
    assert_eq!(again.versions(), [1, 2, 3]);
    assert_eq!(catalog(&fx.db.url).await, migrated);
    assert_eq!(fx.history().await, [1, 2, 3]);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_migrators_started_at_once_apply_each_migration_exactly_once() {
    let fx = Fixture::new(
        "mig_eight",
        &[
            ("1_a.up.sql", "CREATE TABLE a (id int PRIMARY KEY);"),
            // Holds the lock long enough for the others to queue behind it.
            (
                "2_slow.up.sql",
                "SELECT pg_sleep(0.3);\nCREATE TABLE b (id int);",
            ),
            ("3_c.up.sql", "INSERT INTO a VALUES (1);"),
        ],
    )
    .await;
    let migrations = fx.migrations();
    let mut others = Vec::new();
    for _ in 1..8 {
        others.push(manager(&fx.db.url).await);
    }
    let managers: Vec<&DatabaseManager> = std::iter::once(&fx.manager).chain(&others).collect();
    assert_eq!(managers.len(), 8);
    let runs =
        futures_util::future::join_all(managers.iter().map(|m| m.migrate(&migrations))).await;
    let mut applied = Vec::new();
    for run in runs {
        applied.extend(run.expect("every migrator succeeds").versions());
    }
    applied.sort_unstable();
    assert_eq!(
        applied,
        [1, 2, 3],
        "each migration applied by exactly one migrator"
    );
    assert_eq!(fx.history().await, [1, 2, 3]);
    assert_eq!(query_i64(&fx.db.url, "SELECT count(*) FROM a").await, 1);
    for m in others {
        m.shutdown().await.unwrap();
    }
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_failing_at_its_third_statement_leaves_schema_and_history_as_before() {
    let fx = Fixture::new(
        "mig_fail",
        &[
            ("1_a.up.sql", "CREATE TABLE a (id int);"),
            (
                "2_broken.up.sql",
                "-- three statements, the last one fails\nCREATE TABLE b (id int);\nINSERT INTO b VALUES (1);\n\nINSERT INTO\n  no_such_table VALUES (1);\n",
            ),
        ],
    )
    .await;
    let migrations = fx.migrations();
    let migrator = fx.manager.migrator(&migrations).unwrap();
    migrator.up_to(1).await.unwrap();
    let before = catalog(&fx.db.url).await;

    let error = migrate_error(migrator.up().await.unwrap_err());
    let text = error.to_string();
    match &error {
        MigrateError::Statement {
            file,
            statement,
            line,
            error_line,
            sql,
            code,
            rolled_back,
            ..
        } => {
            assert_eq!(file, "2_broken.up.sql");
            assert_eq!(*statement, 3);
            assert_eq!(*line, 5);
            assert_eq!(*error_line, Some(6), "the server points at the table name");
            assert_eq!(sql, "INSERT INTO no_such_table VALUES (1)");
            assert_eq!(code.as_deref(), Some("42P01"));
            assert!(rolled_back);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        text.contains("2_broken.up.sql failed at statement 3 (line 5"),
        "{text}"
    );
    assert!(text.contains("no_such_table"), "{text}");

    assert_eq!(catalog(&fx.db.url).await, before, "table b was rolled back");
    assert_eq!(fx.history().await, [1]);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_applied_migration_stops_up_naming_its_version_until_repaired() {
    let original = "CREATE TABLE a (id int);\nCREATE TABLE b (id int);\n";
    let fx = Fixture::new(
        "mig_checksum",
        &[
            ("1_a.up.sql", "SELECT 1;"),
            ("2_tables.up.sql", original),
            ("3_c.up.sql", "CREATE TABLE c (id int);"),
        ],
    )
    .await;
    let manager = &fx.manager;
    let applied = fx.migrations();
    manager.migrator(&applied).unwrap().up_to(2).await.unwrap();

    // The same file checked out with CRLF line endings is not a change.
    fx.write("2_tables.up.sql", original.replace('\n', "\r\n"));
    let crlf = fx.migrations();
    assert_eq!(
        crlf.get(2).unwrap().checksum(),
        applied.get(2).unwrap().checksum()
    );
    assert!(
        manager
            .migrator(&crlf)
            .unwrap()
            .status()
            .await
            .unwrap()
            .changed()
            .is_empty()
    );

    // A real edit is.
    fx.write(
        "2_tables.up.sql",
        "CREATE TABLE a (id bigint);\nCREATE TABLE b (id int);\n",
    );
    let edited = fx.migrations();
    let migrator = manager.migrator(&edited).unwrap();
    let error = migrate_error(migrator.up().await.unwrap_err());
    assert!(
        matches!(&error, MigrateError::Changed { versions, files } if versions == &[2] && files == &["2_tables.up.sql"]),
        "{error:?}"
    );
    assert!(error.to_string().contains("repair()"), "{error}");
    assert_eq!(fx.history().await, [1, 2], "nothing ran");
    let status = migrator.status().await.unwrap();
    assert_eq!(status.changed(), [2]);
    assert_eq!(status.get(2).unwrap().state, MigrationState::Changed);

    // A deliberate edit is accepted by repair(); up() goes on.
    let repaired = migrator.repair().await.unwrap();
    assert_eq!(repaired.updated, [2]);
    assert!(repaired.removed.is_empty());
    assert_eq!(migrator.up().await.unwrap().versions(), [3]);
    assert!(migrator.status().await.unwrap().is_up_to_date());
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_applied_migration_stops_up_and_repair_forgets_it() {
    let fx = Fixture::new(
        "mig_missing",
        &[("1_a.up.sql", "SELECT 1;"), ("2_b.up.sql", "SELECT 2;")],
    )
    .await;
    fx.manager.migrate(&fx.migrations()).await.unwrap();
    std::fs::remove_file(fx.dir.path().join("2_b.up.sql")).unwrap();
    fx.write("3_c.up.sql", "SELECT 3;");
    let migrations = fx.migrations();
    let migrator = fx.manager.migrator(&migrations).unwrap();
    let error = migrate_error(migrator.up().await.unwrap_err());
    assert!(
        matches!(&error, MigrateError::Missing { versions } if versions == &[2]),
        "{error:?}"
    );
    assert_eq!(migrator.status().await.unwrap().missing(), [2]);
    assert_eq!(migrator.repair().await.unwrap().removed, [2]);
    assert_eq!(migrator.up().await.unwrap().versions(), [3]);
    assert_eq!(fx.history().await, [1, 3]);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_transaction_migration_runs_create_index_concurrently() {
    let index = "CREATE INDEX CONCURRENTLY t_x_idx ON t (x);";
    let fx = Fixture::new(
        "mig_concurrently",
        &[
            (
                "1_t.up.sql",
                "CREATE TABLE t (x int);\nINSERT INTO t SELECT generate_series(1, 1000);",
            ),
            ("2_index.up.sql", index),
        ],
    )
    .await;

    // Without the directive the server refuses, and the error says what to add.
    let error = migrate_error(fx.manager.migrate(&fx.migrations()).await.unwrap_err());
    assert_eq!(error.sqlstate(), Some("25001"));
    assert!(
        error.to_string().contains("-- dbmanager:no-transaction"),
        "{error}"
    );
    assert_eq!(fx.history().await, [1]);

    fx.write(
        "2_index.up.sql",
        format!("-- dbmanager:no-transaction\n{index}\n"),
    );
    let migrations = fx.migrations();
    assert!(!migrations.get(2).unwrap().is_transactional());
    assert_eq!(
        fx.manager.migrate(&migrations).await.unwrap().versions(),
        [2]
    );
    assert_eq!(
        query_i64(
            &fx.db.url,
            "SELECT count(*) FROM pg_index WHERE indexrelid = 't_x_idx'::regclass AND indisvalid"
        )
        .await,
        1
    );
    assert_eq!(fx.history().await, [1, 2]);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_with_a_missing_down_file_is_refused_before_anything_changes() {
    let fx = Fixture::new(
        "mig_nodown",
        &[
            ("1_a.up.sql", "CREATE TABLE a (id int);"),
            ("1_a.down.sql", "DROP TABLE a;"),
            ("2_b.up.sql", "CREATE TABLE b (id int);"),
            ("3_c.up.sql", "CREATE TABLE c (id int);"),
            ("3_c.down.sql", "DROP TABLE c;"),
        ],
    )
    .await;
    let migrations = fx.migrations();
    let migrator = fx.manager.migrator(&migrations).unwrap();
    migrator.up().await.unwrap();
    let before = catalog(&fx.db.url).await;

    // Reverting to 0 would need 2's down file: refused before 3 is reverted.
    let error = migrate_error(migrator.down_to(0).await.unwrap_err());
    assert!(
        matches!(&error, MigrateError::MissingDown { versions } if versions == &[2]),
        "{error:?}"
    );
    assert!(error.to_string().contains("nothing was changed"), "{error}");
    assert_eq!(catalog(&fx.db.url).await, before);
    assert_eq!(fx.history().await, [1, 2, 3]);

    // One step down needs only 3's down file.
    assert_eq!(migrator.down(1).await.unwrap().versions(), [3]);
    assert_eq!(fx.history().await, [1, 2]);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_is_released_after_a_failed_migration() {
    let fx = Fixture::new(
        "mig_lockfail",
        &[
            ("1_a.up.sql", "CREATE TABLE a (id int);"),
            ("2_b.up.sql", "SELECT 1/0;"),
        ],
    )
    .await;
    let broken = fx.migrations();
    let migrator = fx.manager.migrator(&broken).unwrap();
    let key = migrator.lock_key();
    let error = migrate_error(migrator.up().await.unwrap_err());
    assert_eq!(error.sqlstate(), Some("22012"));
    assert!(
        lock_is_free(&fx.db.url, key).await,
        "unlocked as the error returned"
    );

    // A second migrator that may wait only for its first attempt proceeds.
    fx.write("2_b.up.sql", "SELECT 1;");
    let fixed = fx.migrations();
    let second = manager(&fx.db.url).await;
    let report = second
        .migrator(&fixed)
        .unwrap()
        .lock_timeout(Duration::from_millis(1))
        .up()
        .await
        .unwrap();
    assert_eq!(report.versions(), [2]);
    fx.shutdown().await;
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_makes_a_migrator_with_a_lock_timeout_fail_with_the_holder_named() {
    let fx = Fixture::new("mig_locktimeout", &[]).await;
    let manager = &fx.manager;
    let migrations = example_migrations();
    let migrator = manager.migrator(&migrations).unwrap();
    let key = migrator.lock_key();
    let (holder, connection) = tokio_postgres::connect(&fx.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(connection);
    holder
        .query_one("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .unwrap();
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let error = migrate_error(
        manager
            .migrator(&migrations)
            .unwrap()
            .lock_timeout(Duration::from_millis(200))
            .up()
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(error, MigrateError::LockTimeout { holder: Some(pid), .. } if pid == holder_pid),
        "{error:?}"
    );
    assert_eq!(fx.history().await, Vec::<i64>::new());
    drop(holder);
    let _ = task.await;
    assert_eq!(migrator.up().await.unwrap().versions(), [1, 2, 3]);
    fx.shutdown().await;
}

/// A tracing layer that panics when migration `version` starts: user code
/// (a subscriber) running inside the runner, as a panicking hook would.
struct PanicWhenApplying(i64);

#[derive(Default)]
struct EventFields {
    message: String,
    version: Option<i64>,
}

impl tracing::field::Visit for EventFields {
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        if field.name() == "version" {
            self.version = Some(value);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PanicWhenApplying {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = EventFields::default();
        event.record(&mut fields);
        if fields.message.starts_with("applying migration") && fields.version == Some(self.0) {
            panic!("subscriber panics as migration {} starts", self.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_is_released_after_a_panic_inside_the_runner() {
    use tracing_subscriber::layer::SubscriberExt;

    let fx = Fixture::new(
        "mig_lockpanic",
        &[
            ("1_a.up.sql", "CREATE TABLE a (id int);"),
            ("2_b.up.sql", "CREATE TABLE b (id int);"),
        ],
    )
    .await;
    // A process-wide subscriber as well: with a thread's subscriber alone,
    // tracing lets the first thread to reach a call site decide its cached
    // interest, and another test's thread (with no subscriber) reaching
    // the runner's call sites first would hide them from this one.
    let _ = support::logs();

    let url = fx.db.url.clone();
    let (key_tx, key_rx) = mpsc::channel();
    let (returned_tx, returned_rx) = mpsc::channel();
    let migrations = fx.migrations();
    let outcome = std::thread::spawn(move || {
        let subscriber = tracing_subscriber::registry().with(PanicWhenApplying(2));
        tracing::subscriber::with_default(subscriber, || {
            support::block_on_own_runtime(async {
                let manager = manager(&url).await;
                let migrator = manager.migrator(&migrations).unwrap();
                key_tx.send(migrator.lock_key()).unwrap();
                let returned = migrator.up().await;
                returned_tx.send(format!("{returned:?}")).unwrap();
            })
        })
    })
    .join();
    assert_eq!(
        returned_rx.try_recv().ok(),
        None,
        "the runner should have panicked, not returned"
    );
    assert!(outcome.is_err(), "the runner panicked");
    let key = key_rx.recv().unwrap();
    assert!(
        lock_is_freed_within(Duration::from_secs(10), &fx.db.url, key).await,
        "the server released the lock of the closed connection"
    );
    assert_eq!(fx.history().await, [1], "1 committed, 2 never started");

    let migrations = fx.migrations();
    assert_eq!(
        fx.manager.migrate(&migrations).await.unwrap().versions(),
        [2]
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_migration_is_rolled_back_and_releases_the_lock() {
    let fx = Fixture::new(
        "mig_cancel",
        &[(
            "1_slow.up.sql",
            "CREATE TABLE a (id int);\nSELECT pg_sleep(60);",
        )],
    )
    .await;
    let migrations = fx.migrations();
    let migrator = fx.manager.migrator(&migrations).unwrap();
    let key = migrator.lock_key();
    // Dropping the future mid-statement is what a panic or an aborted task does.
    let cancelled = tokio::time::timeout(Duration::from_millis(500), migrator.up()).await;
    assert!(cancelled.is_err(), "still sleeping when cancelled");
    assert!(
        lock_is_freed_within(Duration::from_secs(10), &fx.db.url, key).await,
        "the statement was cancelled and the session ended, well before pg_sleep(60)"
    );
    assert_eq!(
        query_i64(
            &fx.db.url,
            "SELECT count(*) FROM pg_class WHERE relname = 'a'"
        )
        .await,
        0,
        "rolled back"
    );
    assert_eq!(fx.history().await, Vec::<i64>::new());
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_to_down_stamp_and_status_move_through_the_history() {
    let fx = Fixture::new("mig_steps", &[]).await;
    let migrations = example_migrations();
    let migrator = fx.manager.migrator(&migrations).unwrap();

    let status = migrator.status().await.unwrap();
    assert_eq!(status.pending(), [1, 2, 3]);
    assert_eq!(status.current(), None);
    assert_eq!(
        fx.history().await,
        Vec::<i64>::new(),
        "status creates nothing"
    );

    assert_eq!(migrator.up_to(2).await.unwrap().versions(), [1, 2]);
    let status = migrator.status().await.unwrap();
    assert_eq!(status.current(), Some(2));
    assert_eq!(status.pending(), [3]);
    let first = status.get(1).unwrap();
    assert_eq!(first.state, MigrationState::Applied);
    assert!(first.applied_at.is_some() && first.execution.is_some() && first.reversible);

    assert!(migrator.up_to(1).await.unwrap().is_empty());
    assert_eq!(migrator.down(1).await.unwrap().versions(), [2]);
    assert_eq!(
        migrator.down(5).await.unwrap().versions(),
        [1],
        "fewer steps than asked"
    );
    assert!(migrator.down(1).await.unwrap().is_empty());

    let error = migrate_error(migrator.up_to(7).await.unwrap_err());
    assert!(
        matches!(error, MigrateError::UnknownVersion { version: 7 }),
        "{error:?}"
    );

    // stamp records without running: the tables do not appear.
    let stamped = migrator.stamp(3).await.unwrap();
    assert_eq!(stamped.recorded, [1, 2, 3]);
    assert_eq!(
        query_i64(
            &fx.db.url,
            "SELECT count(*) FROM pg_class WHERE relname = 'users'"
        )
        .await,
        0
    );
    assert!(migrator.status().await.unwrap().is_up_to_date());
    assert_eq!(migrator.stamp(0).await.unwrap().removed, [1, 2, 3]);
    assert_eq!(migrator.up().await.unwrap().versions(), [1, 2, 3]);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_pending_migration_is_refused_unless_out_of_order_is_allowed() {
    let fx = Fixture::new(
        "mig_order",
        &[
            ("1_a.up.sql", "CREATE TABLE a (id int);"),
            ("3_c.up.sql", "CREATE TABLE c (id int);"),
        ],
    )
    .await;
    let manager = &fx.manager;
    manager.migrate(&fx.migrations()).await.unwrap();
    // A branch merged later brings version 2.
    fx.write("2_b.up.sql", "CREATE TABLE b (id int);");
    let migrations = fx.migrations();
    let error = migrate_error(manager.migrate(&migrations).await.unwrap_err());
    assert!(
        matches!(&error, MigrateError::OutOfOrder { versions, newest_applied: 3 } if versions == &[2]),
        "{error:?}"
    );
    let report = manager
        .migrator(&migrations)
        .unwrap()
        .allow_out_of_order(true)
        .up()
        .await
        .unwrap();
    assert_eq!(report.versions(), [2]);
    assert_eq!(fx.history().await, [1, 2, 3]);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_qualified_history_table_is_created_in_its_schema() {
    let db = TestDb::create("mig_table").await;
    let mut config = support::pg_config(&db.url);
    config.migrations.table = "meta.schema_versions".into();
    let manager = support::build(config).await;
    let migrations = example_migrations();
    manager.migrate(&migrations).await.unwrap();
    assert_eq!(history(&db.url, "meta.schema_versions").await, [1, 2, 3]);
    assert_eq!(history(&db.url, HISTORY).await, Vec::<i64>::new());
    manager.shutdown().await.unwrap();
}

#[test]
fn embedded_migrations_equal_the_folder_read_at_run_time() {
    let embedded = dbmanager::embed_migrations!("$CARGO_MANIFEST_DIR/migrations").unwrap();
    let read = example_migrations();
    let summary = |m: &Migrations| -> Vec<(i64, String, String, bool)> {
        m.iter()
            .map(|m| {
                (
                    m.version(),
                    m.name().to_string(),
                    m.checksum().to_string(),
                    m.is_reversible(),
                )
            })
            .collect()
    };
    assert_eq!(summary(&embedded), summary(&read));
    assert_eq!(embedded.len(), 3);
}

#[test]
fn bad_migration_folders_are_typed_errors() {
    let dir = migrations_dir(&[("1_a.up.sql", ""), ("01_b.up.sql", "")]);
    assert!(matches!(
        Migrations::from_dir(dir.path()),
        Err(MigrateError::DuplicateVersion { version: 1, .. })
    ));
    let dir = migrations_dir(&[("1_a.up.sql", ""), ("2_b.down.sql", "")]);
    assert!(matches!(
        Migrations::from_dir(dir.path()),
        Err(MigrateError::DownWithoutUp { version: 2, .. })
    ));
    let dir = migrations_dir(&[("first.up.sql", "")]);
    assert!(matches!(
        Migrations::from_dir(dir.path()),
        Err(MigrateError::InvalidName { .. })
    ));
    let error = Migrations::from_dir("/no/such/folder").unwrap_err();
    assert!(matches!(error, MigrateError::Read { .. }));
    assert!(
        std::error::Error::source(&error).is_some(),
        "the I/O cause is the source"
    );
}

/// A least-privilege role that owns its schema but may not create schemas
/// in the database (no CREATE on it) can migrate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_owning_only_its_schema_can_migrate() {
    let db = TestDb::create("mig_owner").await;
    let role = support::unique_name("owner");
    support::sql(
        &db.url,
        &format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'owner-pw'; CREATE SCHEMA {role} AUTHORIZATION {role};"
        ),
    )
    .await;
    let role_url = support::with_credentials(&db.url, &role, "owner-pw");
    let dir = migrations_dir(&[("1_widgets.up.sql", "CREATE TABLE widgets (id int);")]);
    let manager = manager(&role_url).await;
    manager
        .migrate(&Migrations::from_dir(dir.path()).unwrap())
        .await
        .expect("migrating with the privileges of a schema owner");
    assert_eq!(history(&db.url, &format!("{role}.{HISTORY}")).await, [1]);
    manager.shutdown().await.unwrap();
    support::sql(
        &db.url,
        &format!("DROP SCHEMA {role} CASCADE; DROP ROLE {role};"),
    )
    .await;
}

/// A migration that creates the schema `search_path` names first
/// (`"$user"`) must not move the history table: the next run finds the
/// existing one instead of starting an empty history there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_stays_put_when_a_migration_creates_an_earlier_schema() {
    let fx = Fixture::new(
        "mig_user_schema",
        &[
            (
                "1_user_schema.up.sql",
                "DO $$ BEGIN EXECUTE format('CREATE SCHEMA %I', current_user); END $$;",
            ),
            ("2_t.up.sql", "CREATE TABLE public.t (id int);"),
        ],
    )
    .await;
    let migrations = fx.migrations();
    fx.manager.migrate(&migrations).await.unwrap();
    let again = fx.manager.migrate(&migrations).await.expect("a second run");
    assert!(again.is_empty(), "migrations ran twice: {again:?}");
    assert_eq!(
        history(&fx.db.url, &format!("public.{HISTORY}")).await,
        [1, 2]
    );
    fx.shutdown().await;
}

/// A no-transaction script may run its own transactions, but one it leaves
/// open would take the history row down with it: refused, not recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_transaction_script_that_leaves_a_transaction_open_is_refused() {
    let fx = Fixture::new(
        "mig_open_tx",
        &[
            (
                "1_closed.up.sql",
                "-- dbmanager:no-transaction\nBEGIN;\nCREATE TABLE kept (id int);\nCOMMIT;\n",
            ),
            (
                "2_open.up.sql",
                "-- dbmanager:no-transaction\nBEGIN;\nCREATE TABLE forgotten (id int);\n",
            ),
        ],
    )
    .await;
    let error = migrate_error(fx.manager.migrate(&fx.migrations()).await.unwrap_err());
    match &error {
        MigrateError::Statement { file, reason, .. } => {
            assert!(file.contains("2_open.up.sql"), "{error}");
            assert!(reason.contains("BEGIN without COMMIT"), "{error}");
        }
        other => panic!("expected a statement error, got {other:?}"),
    }
    assert_eq!(fx.history().await, [1]);
    assert_eq!(
        query_i64(
            &fx.db.url,
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('kept', 'forgotten')"
        )
        .await,
        1
    );
    fx.shutdown().await;
}

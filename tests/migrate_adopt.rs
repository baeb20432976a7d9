//! Taking over golang-migrate, sqlx and refinery histories, and files
//! wrapped in BEGIN ... COMMIT, against a real PostgreSQL server.

mod support;

use dbmanager::Error;
use dbmanager::migrate::{AdoptFrom, MigrateError, Migrations};
use support::{TestDb, history, manager, migrations_dir, query_i64, query_text, sql};

const HISTORY: &str = "dbmanager_schema_history";

/// The schema two migrations built, the first wrapped in BEGIN/COMMIT as
/// golang-migrate histories often are, and a third still to apply (also
/// wrapped).
const USERS_UP: &str = "BEGIN;\nCREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL);\nCREATE INDEX users_name ON users (name);\nCOMMIT;\n";
const USERS_DOWN: &str = "BEGIN;\nDROP TABLE users;\nCOMMIT;\n";
const EMAIL_UP: &str = "ALTER TABLE users ADD COLUMN email text;\n";
const POSTS_UP: &str = "BEGIN;\nCREATE TABLE posts (id bigint PRIMARY KEY, user_id bigint REFERENCES users (id));\nINSERT INTO posts VALUES (1, NULL);\nCOMMIT;\n";

fn folder() -> tempfile::TempDir {
    migrations_dir(&[
        ("1_create_users.up.sql", USERS_UP),
        ("1_create_users.down.sql", USERS_DOWN),
        ("2_add_email.up.sql", EMAIL_UP),
        ("3_create_posts.up.sql", POSTS_UP),
    ])
}

fn migrate_error(error: Error) -> MigrateError {
    match error {
        Error::Migrate(e) => e,
        other => panic!("expected a migration error, got {other:?}"),
    }
}

/// A database as the other tool left it after migrations 1 and 2.
/// Adopting the folder's migrations on `db` from `from`, which must fail.
async fn adopt_error(db: &TestDb, from: AdoptFrom) -> MigrateError {
    let dir = folder();
    let migrations = Migrations::from_dir(dir.path()).unwrap();
    let manager = manager(&db.url).await;
    let error = migrate_error(
        manager
            .migrator(&migrations)
            .unwrap()
            .adopt(from)
            .await
            .unwrap_err(),
    );
    manager.shutdown().await.unwrap();
    error
}

async fn migrated_by_another_tool(prefix: &str, history_sql: &str) -> TestDb {
    let db = TestDb::create(prefix).await;
    sql(&db.url, USERS_UP).await;
    sql(&db.url, EMAIL_UP).await;
    sql(&db.url, history_sql).await;
    db
}

/// golang-migrate's postgres driver: its CREATE TABLE, then one row.
const GOLANG_MIGRATE: &str = "CREATE TABLE IF NOT EXISTS \"schema_migrations\" (version bigint not null primary key, dirty boolean not null);\n\
     INSERT INTO \"schema_migrations\" (version, dirty) VALUES (2, false);";

/// sqlx's postgres migrator: its CREATE TABLE, then a row per migration.
const SQLX: &str = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
    success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL,
    execution_time BIGINT NOT NULL
);
INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
VALUES (1, 'create users', true, '\\x00'::bytea, 1200), (2, 'add email', true, '\\x01'::bytea, 800);";

/// refinery's postgres driver: its CREATE TABLE, then a row per migration.
const REFINERY: &str = "CREATE TABLE IF NOT EXISTS refinery_schema_history(
    version INT4 PRIMARY KEY,
    name VARCHAR(255),
    applied_on VARCHAR(255),
    checksum VARCHAR(255));
INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
VALUES (1, 'create_users', '2024-01-31T09:30:00Z', '9453458196254519425'),
       (2, 'add_email', '2024-02-01T10:00:00Z', '1732418922047521040');";

async fn adopt_then_up_applies_only_the_rest(from: AdoptFrom, history_sql: &str) {
    let db = migrated_by_another_tool(
        &format!("adopt_{}", from.name().replace('-', "_")),
        history_sql,
    )
    .await;
    let dir = folder();
    let migrations = Migrations::from_dir(dir.path()).unwrap();
    let manager = manager(&db.url).await;
    let migrator = manager.migrator(&migrations).unwrap();

    let report = migrator.adopt(from).await.unwrap();
    assert_eq!(report.from, from);
    assert_eq!(report.table, format!("public.{}", from.table()));
    assert_eq!(report.applied, [1, 2]);
    assert_eq!(report.recorded, [1, 2]);
    assert!(report.already_recorded.is_empty());
    assert_eq!(history(&db.url, HISTORY).await, [1, 2]);
    let recorded = query_text(
        &db.url,
        &format!("SELECT string_agg(checksum, ',' ORDER BY version) FROM {HISTORY}"),
    )
    .await;
    let expected: Vec<&str> = [1, 2]
        .iter()
        .map(|v| migrations.get(*v).unwrap().checksum())
        .collect();
    assert_eq!(
        recorded,
        expected.join(","),
        "dbmanager's checksums of the files"
    );

    let again = migrator.adopt(from).await.unwrap();
    assert!(again.recorded.is_empty(), "idempotent: {again:?}");
    assert_eq!(again.already_recorded, [1, 2]);

    let up = migrator.up().await.unwrap();
    assert_eq!(
        up.versions(),
        [3],
        "only the migration the other tool had not applied"
    );
    assert_eq!(history(&db.url, HISTORY).await, [1, 2, 3]);
    assert_eq!(query_i64(&db.url, "SELECT count(*) FROM posts").await, 1);
    let status = migrator.status().await.unwrap();
    assert!(status.changed().is_empty() && status.missing().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golang_migrate_history_is_adopted_and_up_continues_from_it() {
    adopt_then_up_applies_only_the_rest(AdoptFrom::GolangMigrate, GOLANG_MIGRATE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_history_is_adopted_and_up_continues_from_it() {
    adopt_then_up_applies_only_the_rest(AdoptFrom::Sqlx, SQLX).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refinery_history_is_adopted_and_up_continues_from_it() {
    adopt_then_up_applies_only_the_rest(AdoptFrom::Refinery, REFINERY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dirty_golang_migrate_state_is_refused_and_nothing_recorded() {
    let db = migrated_by_another_tool("adopt_dirty", GOLANG_MIGRATE).await;
    sql(&db.url, "UPDATE schema_migrations SET dirty = true").await;
    let error = adopt_error(&db, AdoptFrom::GolangMigrate).await;

    assert!(
        matches!(error, MigrateError::AdoptDirty { .. }),
        "{error:?}"
    );
    assert_eq!(error.versions(), [2]);
    let text = error.to_string();
    assert!(text.contains("is dirty at version 2"), "{text}");
    assert!(text.contains("nothing was adopted"), "{text}");
    assert_eq!(history(&db.url, HISTORY).await, Vec::<i64>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sqlx_migration_is_refused() {
    let db = migrated_by_another_tool("adopt_sqlx_failed", SQLX).await;
    sql(
        &db.url,
        "UPDATE _sqlx_migrations SET success = false WHERE version = 2",
    )
    .await;
    let error = adopt_error(&db, AdoptFrom::Sqlx).await;

    assert!(
        matches!(error, MigrateError::AdoptDirty { .. }),
        "{error:?}"
    );
    assert_eq!(error.versions(), [2]);
    assert!(error.to_string().contains("failed migration 2"), "{error}");
    assert_eq!(history(&db.url, HISTORY).await, Vec::<i64>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_versions_without_a_file_are_refused_by_name() {
    let db = migrated_by_another_tool("adopt_missing", REFINERY).await;
    sql(
        &db.url,
        "INSERT INTO refinery_schema_history VALUES (7, 'gone', 'x', 'y'), (9, 'also_gone', 'x', 'y')",
    )
    .await;
    let dir = folder();
    let migrations = Migrations::from_dir(dir.path()).unwrap();
    let manager = manager(&db.url).await;
    let migrator = manager.migrator(&migrations).unwrap();

    let error = migrate_error(migrator.adopt(AdoptFrom::Refinery).await.unwrap_err());
    assert!(
        matches!(error, MigrateError::AdoptMissing { .. }),
        "{error:?}"
    );
    assert_eq!(error.versions(), [7, 9]);
    assert!(
        error
            .to_string()
            .starts_with("refinery applied migrations 7, 9 but they have no file"),
        "{error}"
    );
    assert_eq!(history(&db.url, HISTORY).await, Vec::<i64>::new());

    // golang-migrate: a current version with no file of its own.
    sql(
        &db.url,
        GOLANG_MIGRATE.replace("(2, false)", "(5, false)").as_str(),
    )
    .await;
    let error = migrate_error(migrator.adopt(AdoptFrom::GolangMigrate).await.unwrap_err());
    assert_eq!(error.versions(), [5], "{error}");

    // No history of that tool at all.
    let error = migrate_error(migrator.adopt(AdoptFrom::Sqlx).await.unwrap_err());
    assert!(
        matches!(error, MigrateError::AdoptNoHistory { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("_sqlx_migrations"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapped_file_runs_in_the_migration_transaction_and_rolls_back_whole() {
    let logs = support::logs();
    let db = TestDb::create("adopt_wrapped").await;
    let dir = migrations_dir(&[
        ("1_create_users.up.sql", USERS_UP),
        ("1_create_users.down.sql", USERS_DOWN),
        (
            "2_broken.up.sql",
            "BEGIN;\nCREATE TABLE kept_if_committed (id int);\nINSERT INTO nope VALUES (1);\nCOMMIT;\n",
        ),
    ]);
    let migrations = Migrations::from_dir(dir.path()).unwrap();
    let manager = manager(&db.url).await;
    let migrator = manager.migrator(&migrations).unwrap();

    let error = migrate_error(migrator.up().await.unwrap_err());
    match &error {
        MigrateError::Statement {
            file,
            statement,
            line,
            rolled_back,
            ..
        } => {
            assert_eq!(file, "2_broken.up.sql");
            assert_eq!((*statement, *line), (2, 3), "numbered without the wrapper");
            assert!(*rolled_back);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(history(&db.url, HISTORY).await, [1]);
    assert_eq!(
        query_i64(
            &db.url,
            "SELECT count(*) FROM pg_class WHERE relname = 'users'"
        )
        .await,
        1
    );
    assert_eq!(
        query_i64(
            &db.url,
            "SELECT count(*) FROM pg_class WHERE relname = 'kept_if_committed'"
        )
        .await,
        0,
        "the whole file rolled back: its BEGIN/COMMIT did not commit on their own"
    );
    let logged = logs.contents();
    assert!(
        logged.contains("1_create_users.up.sql wraps its body in BEGIN/COMMIT"),
        "{logged}"
    );

    let down = migrator.down(1).await.unwrap();
    assert_eq!(down.versions(), [1], "a wrapped down file reverts too");
    assert_eq!(
        query_i64(
            &db.url,
            "SELECT count(*) FROM pg_class WHERE relname = 'users'"
        )
        .await,
        0
    );
}

/// Each tool's history under another table name in a schema of its own,
/// outside the search_path (golang-migrate's `x-migrations-table` in
/// `schema_om`, as OpenMeter's databases keep it): the default lookup does
/// not find it, `adopt_table` with the schema and name does, and `up`
/// continues after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_under_another_table_in_another_schema_is_adopted() {
    for (from, history_sql, table) in [
        (AdoptFrom::GolangMigrate, GOLANG_MIGRATE, "om_migrations"),
        (AdoptFrom::Sqlx, SQLX, "Sqlx History"),
        (AdoptFrom::Refinery, REFINERY, "refinery_history"),
    ] {
        let renamed = history_sql.replace(
            &[format!("\"{}\"", from.table()), from.table().to_string()]
                .into_iter()
                .find(|t| history_sql.contains(t.as_str()))
                .unwrap(),
            &format!("schema_om.\"{table}\""),
        );
        let db = migrated_by_another_tool(
            &format!("adopt_renamed_{}", from.name().replace('-', "_")),
            &format!("CREATE SCHEMA schema_om; {renamed}"),
        )
        .await;
        let dir = folder();
        let migrations = Migrations::from_dir(dir.path()).unwrap();
        let manager = manager(&db.url).await;
        let migrator = manager.migrator(&migrations).unwrap();

        let error = migrate_error(migrator.adopt(from).await.unwrap_err());
        assert!(
            matches!(error, MigrateError::AdoptNoHistory { .. }),
            "{from}: {error:?}"
        );
        assert!(error.to_string().contains("--table"), "{error}");
        let error = migrate_error(
            migrator
                .adopt_table(from, Some("public"), table)
                .await
                .unwrap_err(),
        );
        assert!(
            error.to_string().contains(&format!("public.{table}")),
            "{error}"
        );

        let report = migrator
            .adopt_table(from, Some("schema_om"), table)
            .await
            .unwrap();
        // Quoted only where PostgreSQL needs it (the space).
        let expected = if table.contains(' ') {
            format!("schema_om.\"{table}\"")
        } else {
            format!("schema_om.{table}")
        };
        assert_eq!(report.table, expected, "{from}");
        assert_eq!(report.applied, [1, 2], "{from}");
        assert_eq!(report.recorded, [1, 2], "{from}");
        assert_eq!(history(&db.url, HISTORY).await, [1, 2]);
        let up = migrator.up().await.unwrap();
        assert_eq!(up.versions(), [3], "{from}");
        manager.shutdown().await.unwrap();
    }
}

//! What an operator sees while migrations run: an INFO line as each starts
//! (`n/N`), the elapsed time of a long one at `migrations.progress_interval`,
//! and bootstrap's migrations on a `direct` pool without shutdown lines.

mod support;

use std::time::Duration;

use dbmanager::migrate::{Bootstrap, Migrations};
use support::{Reading, TestDb, migrations_dir, pg_config};

/// Waits until the captured logs contain `needle`, for at most 30 s (the
/// migration it waits for is blocked by the test itself, so it gets there
/// at the next progress tick).
async fn wait_for_log(logs: &support::Logs, needle: &str) {
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while !logs.contents().contains(needle) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "no `{needle}` in the logs:\n{}",
        logs.contents()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_migration_is_announced_n_of_total_and_a_long_one_reports_its_elapsed_time() {
    let logs = support::logs();
    let db = TestDb::create("migrate_progress").await;
    let dir = migrations_dir(&[
        ("1_first.up.sql", "CREATE TABLE first (id int);\n"),
        // Waits for the advisory lock the test holds: a long migration whose
        // end the test decides.
        (
            "2_slow_index.up.sql",
            "SELECT pg_advisory_xact_lock(424242);\nCREATE TABLE second (id int);\n",
        ),
        ("3_third.up.sql", "CREATE TABLE third (id int);\n"),
    ]);
    let migrations = Migrations::from_dir(dir.path()).unwrap();
    let mut config = pg_config(&db.url);
    config.migrations.progress_interval = Duration::from_millis(100);
    let manager = support::build(config).await;

    let blocker = manager.postgres().unwrap().get().await.unwrap();
    blocker
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(424242)")
        .await
        .unwrap();
    let migrating = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.migrate(&migrations).await })
    };
    wait_for_log(&logs, "applying migration 1/3: 1_first").await;
    wait_for_log(&logs, "applying migration 2/3: 2_slow_index").await;
    wait_for_log(&logs, "migration 2/3 2_slow_index still running after").await;
    blocker.batch_execute("COMMIT").await.unwrap();
    let report = migrating.await.unwrap().unwrap();
    assert_eq!(report.versions(), [1, 2, 3]);

    let text = logs.contents();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("progress=") && l.contains(&db.name))
        .collect();
    assert!(text.contains("applying migration 3/3: 3_third"), "{text}");
    for line in &lines {
        assert!(line.contains(" INFO "), "at INFO: {line}");
    }
    let running = text
        .lines()
        .find(|l| l.contains("still running after"))
        .unwrap();
    assert!(running.contains("elapsed_s="), "{running}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_migrates_on_a_direct_pool_and_logs_no_shutdown() {
    let logs = support::logs();
    let snapshotter = support::install_recorder();
    let db = TestDb::create("bootstrap_direct").await;
    let dir = migrations_dir(&[("1_first.up.sql", "CREATE TABLE first (id int);\n")]);
    let migrations = Migrations::from_dir(dir.path()).unwrap();
    let config = pg_config(&db.url);

    let report = Bootstrap::new(&config)
        .migrations(&migrations)
        .run()
        .await
        .unwrap();
    assert_eq!(
        report.databases[0].migrations.as_ref().unwrap().versions(),
        [1]
    );

    let reading = Reading::take(&snapshotter);
    let direct = [("database", "postgres"), ("pool", "direct")];
    let primary = [("database", "postgres"), ("pool", "primary")];
    assert!(
        reading.counter("dbmanager_connections_created_total", &direct) >= 1,
        "{:?}",
        reading.entries()
    );
    assert_eq!(
        reading.counter("dbmanager_connections_created_total", &primary),
        0,
        "{:?}",
        reading.entries()
    );
    let text = logs.contents();
    assert!(text.contains("applying migration 1/1: 1_first"), "{text}");
    assert!(text.contains("bootstrap finished"), "{text}");
    for shutdown in ["shutting down", "shut down", "draining"] {
        assert!(
            !text.contains(shutdown),
            "`{shutdown}` at start-up:\n{text}"
        );
    }
}

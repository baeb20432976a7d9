//! `TestDatabase`: isolated, migrated databases per test, dropped
//! afterwards (also after a panic), built from a shared template.

mod support;

use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dbmanager::migrate::Migrations;
use dbmanager::mongodb::Collection;
use dbmanager::mongodb::bson::{Document, doc};
use dbmanager::testing::TestDatabase;
use dbmanager::{Config, DatabaseUrl};
use support::{
    admin_url, database_exists, example_migrations, migrations_dir, pg_config, query_i64, sql,
};

/// PostgreSQL on the shared server, plus MongoDB when `with_mongo`.
fn config(with_mongo: bool) -> (Config, Option<support::MongoServer>) {
    let mut config = pg_config(&admin_url());
    let mut server = None;
    if with_mongo {
        let (url, started) = support::mongo();
        config.mongodb.url = Some(DatabaseUrl::new(url));
        config.mongodb.pool.min_size = 0;
        server = started;
    }
    (config, server)
}

async fn mongo_database_names(config: &Config) -> Vec<String> {
    let client =
        dbmanager::mongodb::Client::with_uri_str(config.mongodb.url.as_ref().unwrap().expose())
            .await
            .unwrap();
    let names = client.list_database_names().await.unwrap();
    client.shutdown().await;
    names
}

/// The `posts` collection of the test database's own MongoDB database.
fn posts(test_db: &TestDatabase) -> Collection<Document> {
    test_db
        .manager()
        .mongo()
        .unwrap()
        .database()
        .collection::<Document>("posts")
}

async fn emails(test_db: &TestDatabase) -> Vec<String> {
    let client = test_db.manager().postgres().unwrap().get().await.unwrap();
    client
        .query("SELECT email FROM users ORDER BY email", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_test_databases_write_the_same_table_without_seeing_each_other() {
    let (config, _mongo_server) = config(true);
    let migrations = example_migrations();
    let first = TestDatabase::with_config(&config, &migrations)
        .await
        .unwrap();
    let second = TestDatabase::with_config(&config, &migrations)
        .await
        .unwrap();
    assert_ne!(first.database_name(), second.database_name());

    for (test_db, email) in [
        (&first, "first@example.com"),
        (&second, "second@example.com"),
    ] {
        let client = test_db.manager().postgres().unwrap().get().await.unwrap();
        client
            .execute(
                "INSERT INTO users (email, name) VALUES ($1, 'someone')",
                &[&email],
            )
            .await
            .unwrap();
        posts(test_db)
            .insert_one(doc! { "author": email })
            .await
            .unwrap();
    }
    assert_eq!(emails(&first).await, ["first@example.com"]);
    assert_eq!(emails(&second).await, ["second@example.com"]);
    for (test_db, email) in [
        (&first, "first@example.com"),
        (&second, "second@example.com"),
    ] {
        let mongo = test_db.manager().mongo().unwrap();
        assert_eq!(
            mongo.database_name(),
            test_db.mongo_database_name().unwrap()
        );
        let authors: Vec<String> = {
            use futures_util::TryStreamExt;
            posts(test_db)
                .find(doc! {})
                .await
                .unwrap()
                .try_collect::<Vec<Document>>()
                .await
                .unwrap()
                .iter()
                .map(|d| d.get_str("author").unwrap().to_string())
                .collect()
        };
        assert_eq!(authors, [email]);
    }
    // The clone is migrated: the history says so, and migrate is a no-op.
    assert!(
        first
            .manager()
            .migrate(&migrations)
            .await
            .unwrap()
            .is_empty()
    );

    let names = [
        first.database_name().to_string(),
        second.database_name().to_string(),
    ];
    drop(first);
    drop(second);
    for name in &names {
        assert!(!database_exists(name).await, "{name} dropped");
    }
    let mongo_names = mongo_database_names(&config).await;
    assert!(
        names.iter().all(|n| !mongo_names.contains(n)),
        "MongoDB databases dropped: {mongo_names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_of_a_panicking_test_are_dropped() {
    let (config, _mongo_server) = config(true);
    let (name_tx, name_rx) = mpsc::channel();
    let thread_config = config.clone();
    // The "test": its own runtime, as #[tokio::test] gives it, then a panic.
    let outcome = std::thread::spawn(move || {
        support::block_on_own_runtime(async {
            let test_db = TestDatabase::with_config(&thread_config, &example_migrations())
                .await
                .unwrap();
            posts(&test_db).insert_one(doc! { "x": 1 }).await.unwrap();
            name_tx.send(test_db.database_name().to_string()).unwrap();
            assert!(database_exists(test_db.database_name()).await);
            panic!("the test fails while holding its database");
        })
    })
    .join();
    assert!(outcome.is_err());
    let name = name_rx.recv().unwrap();
    assert!(
        !database_exists(&name).await,
        "{name} dropped during the panic"
    );
    assert!(!mongo_database_names(&config).await.contains(&name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_test_databases_share_one_template_built_once() {
    let logs = support::logs();
    let (config, _) = config(false);
    // Migrations no other test uses, so the template is new.
    let marker = support::unique_name("tpl");
    let dir = migrations_dir(&[(
        "1_marker.up.sql",
        &format!("CREATE TABLE marker (name text);\nINSERT INTO marker VALUES ('{marker}');"),
    )]);
    let migrations = Migrations::from_dir(dir.path()).unwrap();
    let created = futures_util::future::join_all(
        (0..4).map(|_| TestDatabase::with_config(&config, &migrations)),
    )
    .await;
    let databases: Vec<TestDatabase> = created.into_iter().map(Result::unwrap).collect();
    let template = databases[0].template_name().to_string();
    assert!(databases.iter().all(|d| d.template_name() == template));
    assert_eq!(
        query_i64(
            &admin_url(),
            &format!(
                "SELECT count(*) FROM pg_database WHERE datname = '{template}' AND datistemplate AND NOT datallowconn"
            ),
        )
        .await,
        1
    );
    let builds = logs
        .contents()
        .lines()
        .filter(|l| l.contains("built the test template database") && l.contains(&template))
        .count();
    assert_eq!(builds, 1, "four concurrent databases, one template build");
    for test_db in &databases {
        let client = test_db.manager().postgres().unwrap().get().await.unwrap();
        let row = client
            .query_one("SELECT name FROM marker", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), marker);
    }
    drop(databases);
    sql(
        &admin_url(),
        &format!("ALTER DATABASE \"{template}\" IS_TEMPLATE false"),
    )
    .await;
    sql(&admin_url(), &format!("DROP DATABASE \"{template}\"")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_drops_old_leftovers_and_keeps_young_ones_of_other_hosts() {
    let (config, _mongo_server) = config(true);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let pid = std::process::id();
    // Leftovers of another host: one seven hours old, one just made.
    let old = format!("dbm_test_000000_{pid}_{}_0", now - 7 * 3600);
    let young = format!("dbm_test_000000_{pid}_{now}_1");
    let admin = admin_url();
    sql(&admin, &format!("CREATE DATABASE \"{old}\"")).await;
    sql(&admin, &format!("CREATE DATABASE \"{young}\"")).await;
    let _drop_young = support::TestDb::adopt(&young);
    let _drop_old_if_kept = support::TestDb::adopt(&old);
    let client =
        dbmanager::mongodb::Client::with_uri_str(config.mongodb.url.as_ref().unwrap().expose())
            .await
            .unwrap();
    client
        .database(&old)
        .collection::<Document>("c")
        .insert_one(doc! { "x": 1 })
        .await
        .unwrap();

    let report = TestDatabase::sweep(&config).await.unwrap();
    assert!(report.postgres.contains(&old), "{report:?}");
    assert!(!report.postgres.contains(&young), "{report:?}");
    assert!(report.mongodb.contains(&old), "{report:?}");
    assert!(!database_exists(&old).await);
    assert!(database_exists(&young).await);
    assert!(!client.list_database_names().await.unwrap().contains(&old));
    client.shutdown().await;
}

/// Not a benchmark: prints the per-test cost documented in
/// `docs/migrations.md` while checking every database is gone. Run with
/// `-- --nocapture` to see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_drop_cost_is_measured_and_nothing_is_left_behind() {
    const ROUNDS: usize = 20;
    let migrations = example_migrations();
    for with_mongo in [false, true] {
        let (config, _mongo_server) = config(with_mongo);
        // The first one may build the template.
        let warm = Instant::now();
        let first = TestDatabase::with_config(&config, &migrations)
            .await
            .unwrap();
        let first_took = warm.elapsed();
        drop(first);
        let (mut create, mut drop_times, mut names) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let test_db = TestDatabase::with_config(&config, &migrations)
                .await
                .unwrap();
            let created = Instant::now();
            names.push(test_db.database_name().to_string());
            drop(test_db);
            create.push(created - started);
            drop_times.push(created.elapsed());
        }
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let (c, d) = (median(&mut create), median(&mut drop_times));
        println!(
            "TestDatabase ({}): first {first_took:?}; median create {c:?}, drop {d:?}, total {:?} per test over {ROUNDS} rounds",
            if with_mongo {
                "PostgreSQL + MongoDB"
            } else {
                "PostgreSQL"
            },
            c + d
        );
        for name in &names {
            assert!(!database_exists(name).await, "{name} left behind");
        }
    }
}

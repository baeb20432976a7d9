//! The server restarts or kills sessions under load: no acknowledged write
//! is lost, callers get transient errors while it is away, and every caller
//! succeeds again soon after it accepts connections.

mod support;

use std::time::{Duration, Instant};

use dbmanager::Error;
use support::{PgCluster, TestDb, WriteLoad, admin_url, pg_config, sql, stored_ids};

const TASKS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_a_64_task_write_load_loses_no_acknowledged_write() {
    let cluster = PgCluster::start_new("restart-pw");
    let url = cluster.url("postgres");
    sql(&url, "CREATE TABLE writes (id bigint PRIMARY KEY)").await;
    let mut config = pg_config(&url);
    config.postgres.pool.max_size = 16;
    config.postgres.pool.min_idle = 4;
    config.postgres.pool.wait_timeout = Duration::from_secs(2);
    config.postgres.pool.connect_timeout = Duration::from_secs(2);
    let db = support::build(config).await;
    let load = WriteLoad::start(&db, TASKS);
    let start = Instant::now();
    assert!(
        support::eventually(Duration::from_secs(20), async || load
            .successes_since(start)
            >= 1_000)
        .await,
        "the load runs"
    );

    cluster.stop();
    let stopped = Instant::now();
    assert!(
        support::eventually(Duration::from_secs(20), async || !load
            .failures
            .lock()
            .unwrap()
            .is_empty())
        .await,
        "writes fail while the server is down"
    );
    cluster.start(); // returns once the server accepts connections
    let accepting = Instant::now();
    assert!(
        support::eventually(Duration::from_secs(30), async || load
            .successes_since(accepting)
            >= 1_000)
        .await,
        "the same manager writes again"
    );
    let (acknowledged, failures) = load.stop().await;

    // Every task wrote again soon after the server accepted connections.
    let slowest = support::every_task_wrote_again(&acknowledged, TASKS, accepting);
    println!(
        "{} writes acknowledged, {} failed; stopped for {:?}; every task wrote again within {slowest:?} of the server accepting",
        acknowledged.len(),
        failures.len(),
        accepting - stopped
    );
    assert!(slowest < Duration::from_secs(5), "{slowest:?}");
    for failure in &failures {
        assert!(
            failure.is_transient(),
            "a failure during the restart is transient: {failure}"
        );
    }
    // Nothing acknowledged is missing.
    let stored = stored_ids(&url).await;
    let lost = support::missing(&acknowledged, &stored);
    assert!(lost.is_empty(), "{} acknowledged writes lost", lost.len());
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_sessions_give_their_callers_a_transient_error_and_the_pool_refills() {
    let db = TestDb::create("terminate").await;
    sql(&db.url, "CREATE TABLE writes (id bigint PRIMARY KEY)").await;
    let mut config = pg_config(&db.url);
    config.postgres.pool.max_size = 8;
    config.postgres.pool.min_idle = 4;
    config.postgres.pool.maintenance_interval = Duration::from_millis(100);
    let app = config.postgres.application_name.clone();
    let manager = support::build(config).await;
    let pool = manager.postgres().unwrap();

    // Four callers in the middle of a statement when their sessions die.
    let held = futures_util::future::join_all((0..4).map(|_| pool.get())).await;
    let running: Vec<_> = held
        .into_iter()
        .map(|client| {
            tokio::spawn(async move {
                let client = client.unwrap();
                client.execute("SELECT pg_sleep(30)", &[]).await
            })
        })
        .collect();
    let active = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' AND query = 'SELECT pg_sleep(30)' AND state = 'active'"
    );
    assert!(
        support::eventually(Duration::from_secs(10), async || support::query_i64(
            &admin_url(),
            &active
        )
        .await
            == 4)
        .await
    );
    sql(
        &admin_url(),
        &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{app}' AND query = 'SELECT pg_sleep(30)' AND state = 'active'"),
    )
    .await;
    for task in running {
        let error = Error::from(task.await.unwrap().expect_err("the session was terminated"));
        assert!(error.is_transient(), "{error}");
    }
    // The terminated connections went back to the pool when their callers
    // dropped them; the maintenance task closes them once their connection
    // tasks have ended, and refills the pool.
    assert!(
        support::eventually(Duration::from_secs(10), async || {
            let status = pool.status();
            pool.stats().closed_broken >= 4 && status.in_use == 0 && status.open >= 4
        })
        .await,
        "refilled: {} {:?}",
        pool.status(),
        pool.stats()
    );
    let served = futures_util::future::join_all((0..8).map(|i| async move {
        let client = pool.get().await?;
        client
            .execute("INSERT INTO writes (id) VALUES ($1)", &[&(i as i64)])
            .await?;
        Ok::<_, Error>(())
    }))
    .await;
    assert!(served.iter().all(Result::is_ok), "{served:?}");
    manager.shutdown().await.unwrap();
}

//! Pool lifecycle: warm-up, recovery to min_idle, idle reaping, max
//! lifetime, max_idle, leak detection, hooks, and the maintenance task.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dbmanager::config::PostgresPoolConfig;
use dbmanager::{Config, DatabaseManager, Error};
use support::{TestDb, admin_url, eventually, pg_config, sessions, sessions_reach, sql};

fn lifecycle_config(url: &str) -> Config {
    let mut config = pg_config(url);
    config.postgres.pool.max_size = 6;
    config.postgres.pool.maintenance_interval = Duration::from_millis(100);
    config
}

/// What most tests here start from: a database of their own and a
/// connected manager on it, built from [`lifecycle_config`] with the pool
/// settings the test makes.
struct PoolUnderTest {
    manager: DatabaseManager,
    /// The application name the manager's sessions carry on the server.
    app: String,
    /// Dropped after the manager.
    _db: TestDb,
}

impl PoolUnderTest {
    async fn start(prefix: &str, settings: impl FnOnce(&mut PostgresPoolConfig)) -> PoolUnderTest {
        let db = TestDb::create(prefix).await;
        let mut config = lifecycle_config(&db.url);
        settings(&mut config.postgres.pool);
        let app = config.postgres.application_name.clone();
        let manager = support::build(config).await;
        PoolUnderTest {
            manager,
            app,
            _db: db,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_opens_min_idle_and_the_pool_recovers_after_sessions_are_killed() {
    let fx = PoolUnderTest::start("warm", |pool| pool.min_idle = 4).await;
    let (manager, app) = (&fx.manager, &fx.app);
    let pool = manager.postgres().unwrap();

    assert_eq!(
        sessions(&admin_url(), app).await,
        4,
        "four sessions when build() returns"
    );
    assert_eq!(pool.status().open, 4);
    assert_eq!(pool.status().idle, 4);

    let killed = support::query_i64(
        &admin_url(),
        &format!(
            "SELECT count(pg_terminate_backend(pid))::bigint FROM pg_stat_activity WHERE application_name = '{app}'"
        ),
    )
    .await;
    assert_eq!(killed, 4);

    assert!(
        eventually(Duration::from_secs(10), async || {
            pool.status().open == 4 && sessions(&admin_url(), app).await == 4
        })
        .await,
        "back to four connections: {}",
        pool.status()
    );
    assert!(pool.stats().closed_broken >= 4, "{:?}", pool.stats());

    // Callers see working connections, all of them at once.
    let results = futures_util::future::join_all((0..4).map(|_| async {
        let client = pool.get().await?;
        client
            .query_one("SELECT 1", &[])
            .await
            .map_err(dbmanager::Error::from)?;
        Ok::<_, dbmanager::Error>(())
    }))
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_surplus_connections_down_to_min_idle() {
    let fx = PoolUnderTest::start("idle", |pool| {
        pool.min_idle = 1;
        pool.idle_timeout = Some(Duration::from_millis(300));
    })
    .await;
    let (manager, app) = (&fx.manager, &fx.app);
    let pool = manager.postgres().unwrap();

    let held: Vec<_> = futures_util::future::join_all((0..5).map(|_| pool.get())).await;
    assert!(held.iter().all(Result::is_ok));
    assert_eq!(pool.status().open, 5);
    drop(held);

    // The reaper takes connections out of the pool, then counts them: wait
    // for both.
    assert!(
        eventually(Duration::from_secs(10), async || {
            pool.status().open == 1 && pool.stats().closed_idle == 4
        })
        .await,
        "surplus reaped: {}, {:?}",
        pool.status(),
        pool.stats()
    );
    assert!(sessions_reach(app, 1, Duration::from_secs(5)).await);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_lifetime_replaces_old_connections_without_touching_one_in_use() {
    let fx = PoolUnderTest::start("lifetime", |pool| {
        pool.min_idle = 2;
        pool.max_lifetime = Some(Duration::from_millis(400));
    })
    .await;
    let manager = &fx.manager;
    let pool = manager.postgres().unwrap().clone();

    let long = tokio::spawn({
        let pool = pool.clone();
        async move {
            let client = pool.get().await?;
            let pid: i32 = client
                .query_one("SELECT pg_backend_pid()", &[])
                .await?
                .get(0);
            client.query_one("SELECT pg_sleep(1.5)", &[]).await?;
            let again: i32 = client
                .query_one("SELECT pg_backend_pid()", &[])
                .await?
                .get(0);
            Ok::<_, dbmanager::Error>((pid, again))
        }
    });
    assert!(
        eventually(Duration::from_secs(10), async || pool
            .stats()
            .closed_lifetime
            >= 1)
        .await,
        "idle connections past max_lifetime were closed"
    );
    let (pid, again) = long
        .await
        .unwrap()
        .expect("the long query completed on its connection");
    assert_eq!(
        pid, again,
        "the connection in use was not replaced under its user"
    );
    assert!(
        pool.stats().created >= 3,
        "expired connections were replaced: {:?}",
        pool.stats()
    );
    assert!(
        eventually(Duration::from_secs(10), async || pool.status().idle >= 2).await,
        "min_idle kept: {}",
        pool.status()
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_idle_are_closed_when_returned() {
    let fx = PoolUnderTest::start("maxidle", |pool| {
        pool.min_idle = 1;
        pool.max_idle = Some(2);
    })
    .await;
    let manager = &fx.manager;
    let pool = manager.postgres().unwrap();
    let held: Vec<_> = futures_util::future::join_all((0..5).map(|_| pool.get())).await;
    assert_eq!(pool.status().open, 5);
    drop(held);
    // A return settles off the caller's path when the connection's task is
    // busy at that moment (it may still be writing what it was given).
    assert!(
        eventually(Duration::from_secs(10), async || pool.status().open == 2).await,
        "the overflow went away on return: {}",
        pool.status()
    );
    assert_eq!(pool.stats().closed_excess, 3);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_held_past_the_leak_threshold_is_reported_once_with_its_location() {
    let logs = support::logs();
    let fx = PoolUnderTest::start("leak", |pool| {
        pool.leak_detection_threshold = Some(Duration::from_millis(200));
    })
    .await;
    let manager = &fx.manager;
    let pool = manager.postgres().unwrap();

    let (held, line) = (pool.get().await.unwrap(), line!());
    let location = format!("tests/lifecycle.rs:{line}");
    assert!(
        eventually(Duration::from_secs(5), async || pool.stats().leaks == 1).await,
        "the leak was detected"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(held);
    let warnings: Vec<String> = logs
        .contents()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("leak") && l.contains(&location))
        .map(str::to_string)
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "exactly one warning naming {location}: {warnings:#?}"
    );
    assert_eq!(pool.stats().leaks, 1);

    // A connection returned in time is not reported.
    let quick = pool.get().await.unwrap();
    drop(quick);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(pool.stats().leaks, 1);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_and_checkin_hooks_run_once_per_event() {
    let db = TestDb::create("hooks").await;
    let checkouts = Arc::new(AtomicUsize::new(0));
    let checkins = Arc::new(AtomicUsize::new(0));
    let (out, back) = (checkouts.clone(), checkins.clone());
    let manager = DatabaseManager::builder()
        .config(lifecycle_config(&db.url))
        .on_checkout(move |_| {
            out.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        })
        .on_checkin(move |client| {
            let back = back.clone();
            Box::pin(async move {
                client.batch_execute("RESET ALL").await?;
                back.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        })
        .build()
        .await
        .unwrap();
    let pool = manager.postgres().unwrap();
    // build() proved the connection with one checkout of its own; the
    // warm-up opens connections without checking them out to anyone.
    assert_eq!(checkouts.load(Ordering::SeqCst), 1);
    assert!(
        eventually(Duration::from_secs(5), async || checkins
            .load(Ordering::SeqCst)
            == 1)
        .await
    );
    for _ in 0..10 {
        let client = pool.get().await.unwrap();
        client.simple_query("SELECT 1").await.unwrap();
    }
    assert_eq!(checkouts.load(Ordering::SeqCst), 11);
    assert!(
        eventually(Duration::from_secs(5), async || checkins
            .load(Ordering::SeqCst)
            == 11)
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        checkins.load(Ordering::SeqCst),
        11,
        "once per checkin, no more"
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_checkout_hook_discards_the_connection_and_tries_another() {
    let db = TestDb::create("badhook").await;
    let mut config = lifecycle_config(&db.url);
    config.postgres.pool.min_idle = 3;
    let rejected: Arc<Mutex<HashSet<i32>>> = Arc::default();
    let reject = rejected.clone();
    let manager = DatabaseManager::builder()
        .config(config)
        .on_checkout(move |client| {
            let reject = reject.clone();
            Box::pin(async move {
                let pid: i32 = client
                    .query_one("SELECT pg_backend_pid()", &[])
                    .await?
                    .get(0);
                let mut rejected = reject.lock().unwrap();
                // Reject the first connection ever offered, accept the rest.
                if rejected.is_empty() {
                    rejected.insert(pid);
                    return Err("this session is not usable".into());
                }
                Ok(())
            })
        })
        .build()
        .await
        .unwrap();
    let pool = manager.postgres().unwrap();
    for _ in 0..5 {
        let client = pool
            .get()
            .await
            .expect("callers never see the hook's failure");
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(
            !rejected.lock().unwrap().contains(&pid),
            "a rejected connection was handed out"
        );
    }
    assert_eq!(pool.stats().closed_hook, 1);
    let bad = *rejected.lock().unwrap().iter().next().unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || {
            support::query_i64(
                &admin_url(),
                &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {bad}"),
            )
            .await
                == 0
        })
        .await,
        "the rejected session was closed"
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_task_ends_on_shutdown_leaving_no_task_running() {
    let db = TestDb::create("tasks").await;
    sql(&db.url, "SELECT 1").await;
    let runtime = tokio::runtime::Handle::current();
    let baseline = runtime.metrics().num_alive_tasks();
    let mut config = lifecycle_config(&db.url);
    config.postgres.pool.min_idle = 2;
    let manager = support::build(config).await;
    let pool = manager.postgres().unwrap().clone();
    assert!(pool.stats().maintenance_running);
    assert!(
        runtime.metrics().num_alive_tasks() > baseline,
        "connection and maintenance tasks run"
    );

    manager.shutdown().await.unwrap();
    assert!(
        !pool.stats().maintenance_running,
        "the maintenance task ended"
    );
    assert!(
        eventually(Duration::from_secs(5), async || runtime
            .metrics()
            .num_alive_tasks()
            <= baseline)
        .await,
        "no task of the manager is left: {} alive, {baseline} before",
        runtime.metrics().num_alive_tasks()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_acquire_logs_a_warning_with_the_pool_status() {
    let logs = support::logs();
    let fx = PoolUnderTest::start("slowacq", |pool| {
        pool.max_size = 1;
        pool.min_idle = 1;
        pool.slow_acquire_threshold = Some(Duration::from_millis(100));
    })
    .await;
    let manager = &fx.manager;
    let pool = manager.postgres().unwrap().clone();

    let held = pool.get().await.unwrap();
    let releaser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        drop(held);
    });
    let (waited, line) = (pool.get().await.unwrap(), line!());
    releaser.await.unwrap();
    drop(waited);
    let location = format!("tests/lifecycle.rs:{line}");
    let warning = logs
        .contents()
        .lines()
        .find(|l| l.contains("slow connection acquire") && l.contains(&location))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no slow-acquire warning naming {location}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("max_size 1, open 1"),
        "the pool status is in the warning: {warning}"
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_hook_that_hangs_is_bounded_by_the_wait_timeout() {
    let db = TestDb::create("hanghook").await;
    let mut config = lifecycle_config(&db.url);
    config.postgres.pool.wait_timeout = Duration::from_millis(300);
    let hang = Arc::new(AtomicBool::new(false));
    let hanging = hang.clone();
    let manager = DatabaseManager::builder()
        .config(config)
        .on_checkout(move |_| {
            let hanging = hanging.clone();
            Box::pin(async move {
                if hanging.load(Ordering::Acquire) {
                    // A hook stuck on a dead network path.
                    std::future::pending::<()>().await;
                }
                Ok(())
            })
        })
        .build()
        .await
        .unwrap();
    hang.store(true, Ordering::Release);
    let pool = manager.postgres().unwrap();
    let err = pool.get().await.unwrap_err();
    match &err {
        Error::Hook { hook, reason } => {
            assert_eq!(*hook, "on_checkout");
            assert!(reason.contains("wait timeout"), "{reason}");
        }
        other => panic!("expected a hook error, got {other:?}"),
    }
    assert_eq!(
        pool.stats().closed_hook,
        1,
        "the connection left mid-hook is closed"
    );
    hang.store(false, Ordering::Release);
    pool.get()
        .await
        .expect("the pool still serves once the hook behaves");
    manager.shutdown().await.unwrap();
}

/// The top-up to `min_idle` must not keep the idle connections from callers
/// while its new connections are still connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_stay_available_while_the_top_up_connects() {
    let db = TestDb::create("topup").await;
    let (proxy, via_proxy) = support::FaultProxy::in_front_of(&db.url).await;
    let mut config = lifecycle_config(&via_proxy);
    config.postgres.pool.min_idle = 2;
    config.postgres.pool.connect_timeout = Duration::from_secs(30);
    config.postgres.pool.wait_timeout = Duration::from_secs(30);
    let manager = support::build(config).await;
    let pool = manager.postgres().unwrap();
    let pid_of = async |client: &dbmanager::PooledConnection| -> i32 {
        client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0)
    };
    let (first, second) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    let warm: HashSet<i32> = [pid_of(&first).await, pid_of(&second).await].into();
    drop(second);

    // From now on a new connection takes 20 s to reach the server. With one
    // connection held, the maintenance task starts opening another.
    let before = proxy.accepted();
    proxy.stall_new(Duration::from_secs(20));
    assert!(
        eventually(Duration::from_secs(10), async || proxy.accepted() > before).await,
        "the top-up did not start: {}",
        pool.status()
    );
    let during = pool.get().await.unwrap();
    assert!(
        warm.contains(&pid_of(&during).await),
        "a caller had to wait for a new connection while an idle one existed"
    );
    drop((first, during));
    proxy.stall_new(Duration::ZERO);
    drop(manager.shutdown().await);
}

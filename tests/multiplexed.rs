//! The multiplexed handle: statements from many callers pipelined over a
//! few shared connections, against real servers.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dbmanager::{Config, DatabaseManager, Error};
use support::{Blackhole, PgCluster, TestDb, admin_url, pg_config, sql};

/// A PostgreSQL-only configuration whose multiplexed handle has
/// `connections` connections.
fn mux_config(url: &str, connections: usize) -> Config {
    let mut config = pg_config(url);
    config.postgres.multiplex.connections = connections;
    config.postgres.multiplex.wait_timeout = Duration::from_secs(20);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_queries_each_get_their_own_row() {
    let db = TestDb::create("mux_rows").await;
    sql(
        &db.url,
        "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO t SELECT i, 'row ' || i FROM generate_series(0, 9999) i;",
    )
    .await;
    let manager = support::build(mux_config(&db.url, 4)).await;
    let callers: Vec<_> = (0..10_000i32)
        .map(|id| {
            let manager = manager.clone();
            tokio::spawn(async move {
                let row = manager
                    .postgres()?
                    .multiplexed()
                    .query_one("SELECT id, v FROM t WHERE id = $1", &[&id])
                    .await?;
                Ok::<_, Error>((id, row.get::<_, i32>(0), row.get::<_, String>(1)))
            })
        })
        .collect();
    for caller in callers {
        let (asked, id, v) = caller.await.unwrap().expect("every query succeeds");
        assert_eq!(id, asked);
        assert_eq!(v, format!("row {asked}"));
    }
    let status = manager.postgres().unwrap().multiplexed().status();
    assert_eq!(status.in_flight, 0, "{status}");
    assert!(status.open >= 1 && status.open <= 4, "{status}");
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_statement_among_pipelined_ones_fails_only_its_caller() {
    let db = TestDb::create("mux_fail").await;
    // One connection: every statement shares one pipeline.
    let manager = support::build(mux_config(&db.url, 1)).await;
    let callers: Vec<_> = (0..200i32)
        .map(|i| {
            let manager = manager.clone();
            tokio::spawn(async move {
                // Caller 100 divides by zero.
                let divisor = if i == 100 { 0 } else { 1 };
                let result = manager
                    .postgres()
                    .unwrap()
                    .multiplexed()
                    .query_one("SELECT $1::int / $2::int", &[&i, &divisor])
                    .await;
                (i, result.map(|row| row.get::<_, i32>(0)))
            })
        })
        .collect();
    for caller in callers {
        let (i, result) = caller.await.unwrap();
        if i == 100 {
            let error = result.expect_err("division by zero fails");
            assert_eq!(error.sqlstate(), Some("22012"), "{error}");
            assert!(!error.is_transient());
        } else {
            assert_eq!(result.expect("the others succeed"), i);
        }
    }
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_that_need_a_session_are_refused_with_a_typed_error() {
    let db = TestDb::create("mux_session").await;
    let manager = support::build(mux_config(&db.url, 1)).await;
    let mux = manager.postgres().unwrap().multiplexed();
    for (sql, recognised) in [
        ("BEGIN", "BEGIN"),
        ("set search_path = elsewhere", "SET"),
        ("LISTEN jobs", "LISTEN"),
        ("CREATE TEMP TABLE scratch (id int)", "CREATE TEMP TABLE"),
        ("DECLARE c CURSOR FOR SELECT 1", "DECLARE (a cursor)"),
        ("SELECT pg_advisory_lock(1)", "a session advisory lock"),
    ] {
        match mux.execute(sql, &[]).await {
            Err(Error::SessionRequired { statement }) => assert_eq!(statement, recognised),
            other => panic!("{sql}: expected SessionRequired, got {other:?}"),
        }
        let error = mux
            .statement(sql)
            .expect_err("refused when checked up front");
        assert!(error.to_string().contains("get()"), "{error}");
    }
    // Nothing of it reached the session: the setting is the server's.
    let path: String = mux
        .query_one("SELECT current_setting('search_path')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(path, "\"$user\", public");
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_request_sends_no_cancel_that_could_stop_another_callers_statement() {
    let db = TestDb::create("mux_abandon").await;
    let config = mux_config(&db.url, 1);
    let app = config.postgres.application_name.clone();
    let manager = support::build(config).await;
    let mux = manager.postgres().unwrap().multiplexed().clone();
    // Caller one's statement runs on the only connection...
    let running = {
        let mux = mux.clone();
        tokio::spawn(async move {
            mux.query_one("SELECT pg_sleep(1)::text, 1", &[])
                .await
                .map(|row| row.get::<_, i32>(1))
        })
    };
    let active = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' AND state = 'active' AND query LIKE 'SELECT pg_sleep%'"
    );
    assert!(
        support::eventually(Duration::from_secs(10), async || {
            support::query_i64(&admin_url(), &active).await == 1
        })
        .await,
        "the first statement runs"
    );
    // ...and caller two, queued behind it, gives up.
    let abandoned =
        tokio::time::timeout(Duration::from_millis(100), mux.query_one("SELECT 2", &[])).await;
    assert!(abandoned.is_err(), "caller two gave up while queued");
    // Had a cancel been sent for caller two, it would have stopped caller
    // one's statement (the one the backend ran): it completes instead.
    assert_eq!(
        running.await.unwrap().expect("caller one is not cancelled"),
        1
    );
    // Caller two's answer was discarded, not handed to the next caller.
    let next: i32 = mux.query_one("SELECT 3", &[]).await.unwrap().get(0);
    assert_eq!(next, 3);
    assert!(
        support::eventually(Duration::from_secs(5), async || mux.status().in_flight == 0).await,
        "{}",
        mux.status()
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_beyond_max_in_flight_wait_and_time_out_with_the_status() {
    let db = TestDb::create("mux_full").await;
    let mut config = mux_config(&db.url, 1);
    config.postgres.multiplex.max_in_flight = 1;
    config.postgres.multiplex.wait_timeout = Duration::from_millis(300);
    let manager = support::build(config).await;
    let mux = manager.postgres().unwrap().multiplexed().clone();
    let holder = {
        let mux = mux.clone();
        tokio::spawn(async move { mux.execute("SELECT pg_sleep(2)", &[]).await })
    };
    assert!(
        support::eventually(Duration::from_secs(10), async || mux.status().in_flight
            == 1)
        .await,
        "the first statement holds the only place"
    );
    match mux.query_one("SELECT 1", &[]).await {
        Err(Error::PoolTimeout { status, waited, .. }) => {
            assert_eq!((status.max_size, status.open, status.in_use), (1, 1, 1));
            assert!(waited >= Duration::from_millis(300), "{waited:?}");
        }
        other => panic!("expected a PoolTimeout, got {other:?}"),
    }
    holder.await.unwrap().expect("the holder finishes");
    // Room again: the next caller runs.
    mux.query_one("SELECT 1", &[]).await.unwrap();
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_stalled_behind_a_slow_statement_gets_no_new_work() {
    let db = TestDb::create("mux_stall").await;
    let mut config = mux_config(&db.url, 2);
    config.postgres.multiplex.warm_up = true;
    let manager = support::build(config).await;
    let mux = manager.postgres().unwrap().multiplexed().clone();
    assert!(
        support::eventually(Duration::from_secs(10), async || mux.status().open == 2).await,
        "both connections open"
    );
    let slow = {
        let mux = mux.clone();
        tokio::spawn(async move { mux.execute("SELECT pg_sleep(30)", &[]).await })
    };
    assert!(
        support::eventually(Duration::from_secs(10), async || mux.status().stalled == 1).await,
        "the connection running the slow statement is marked stalled: {}",
        mux.status()
    );
    // Everything else goes to the other connection, so it does not wait
    // for the slow statement (which runs for 30 s).
    let others = async {
        for i in 0..200i32 {
            let row = mux.query_one("SELECT $1::int", &[&i]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), i);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), others)
        .await
        .expect("no statement queued behind the slow one");
    assert!(!slow.is_finished());
    sql(
        &admin_url(),
        &format!("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND query LIKE 'SELECT pg_sleep%'", db.name),
    )
    .await;
    let error = slow.await.unwrap().expect_err("cancelled by the test");
    assert_eq!(error.sqlstate(), Some("57014"));
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_statements_finish() {
    let db = TestDb::create("mux_drain").await;
    let manager = support::build(mux_config(&db.url, 2)).await;
    let mux = manager.postgres().unwrap().multiplexed().clone();
    let in_flight: Vec<_> = (0..8i32)
        .map(|i| {
            let mux = mux.clone();
            tokio::spawn(async move {
                mux.query_one("SELECT pg_sleep(0.5)::text, $1::int", &[&i])
                    .await
                    .map(|row| row.get::<_, i32>(1))
            })
        })
        .collect();
    assert!(
        support::eventually(Duration::from_secs(10), async || mux.status().in_flight
            == 8)
        .await,
        "{}",
        mux.status()
    );
    let report = manager.shutdown().await.unwrap();
    assert!(report.drained, "{report:?}");
    for (i, statement) in in_flight.into_iter().enumerate() {
        assert_eq!(
            statement.await.unwrap().expect("finished during the drain"),
            i as i32
        );
    }
    assert!(matches!(
        mux.query_one("SELECT 1", &[]).await,
        Err(Error::ShuttingDown { .. })
    ));
    assert_eq!(mux.status().open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_open_on_first_use_unless_warmed_up_and_show_in_health() {
    let db = TestDb::create("mux_lazy").await;
    let lazy_config = mux_config(&db.url, 3);
    let lazy_app = lazy_config.postgres.application_name.clone();
    let lazy = support::build(lazy_config).await;
    let health = serde_json::to_value(lazy.health().await).unwrap();
    assert!(health["components"]["postgres"].get("multiplex").is_none());
    // The pool's min_idle connection only.
    assert!(support::sessions_reach(&lazy_app, 1, Duration::from_secs(5)).await);
    lazy.postgres()
        .unwrap()
        .multiplexed()
        .query_one("SELECT 1", &[])
        .await
        .unwrap();
    assert!(support::sessions_reach(&lazy_app, 4, Duration::from_secs(10)).await);
    let health = serde_json::to_value(lazy.health().await).unwrap();
    let multiplex = &health["components"]["postgres"]["multiplex"];
    assert_eq!(multiplex["connections"], 3, "{health}");
    assert_eq!(multiplex["open"], 3, "{health}");
    assert_eq!(multiplex["in_flight"], 0, "{health}");
    assert_eq!(multiplex["waiting"], 0, "{health}");
    lazy.shutdown().await.unwrap();
    assert!(support::sessions_reach(&lazy_app, 0, Duration::from_secs(10)).await);

    let mut eager_config = mux_config(&db.url, 3);
    eager_config.postgres.multiplex.warm_up = true;
    let eager_app = eager_config.postgres.application_name.clone();
    let eager = support::build(eager_config).await;
    assert!(support::sessions_reach(&eager_app, 4, Duration::from_secs(10)).await);
    eager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_lifetime_are_replaced() {
    let db = TestDb::create("mux_lifetime").await;
    let mut config = mux_config(&db.url, 1);
    config.postgres.multiplex.max_lifetime = Some(Duration::from_millis(500));
    let manager = support::build(config).await;
    let mux = manager.postgres().unwrap().multiplexed().clone();
    let pid = |mux: dbmanager::Multiplexed| async move {
        mux.query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get::<_, i32>(0)
    };
    let first = pid(mux.clone()).await;
    assert!(
        support::eventually(Duration::from_secs(10), async || pid(mux.clone()).await
            != first)
        .await,
        "a new connection serves after max_lifetime"
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_connection_fails_its_statements_within_the_tcp_bound_and_is_replaced() {
    let db = TestDb::create("mux_half_open").await;
    let mut config = mux_config(&db.url, 1);
    config.postgres.keepalives_idle = Duration::from_secs(1);
    config.postgres.keepalives_interval = Duration::from_secs(1);
    config.postgres.keepalives_retries = 2;
    config.postgres.tcp_user_timeout = Some(Duration::from_secs(2));
    let manager = support::build(config).await;
    let mux = manager.postgres().unwrap().multiplexed().clone();
    let port: i32 = mux
        .query_one("SELECT inet_client_port()", &[])
        .await
        .unwrap()
        .get(0);

    let blackhole = Blackhole::new();
    blackhole.flow(u16::try_from(port).unwrap());
    let vanished = Instant::now();
    let callers: Vec<_> = (0..16i32)
        .map(|i| {
            let mux = mux.clone();
            tokio::spawn(async move { mux.query_one("SELECT $1::int", &[&i]).await })
        })
        .collect();
    for caller in callers {
        let result = tokio::time::timeout(Duration::from_secs(30), caller)
            .await
            .expect("no caller hangs")
            .unwrap();
        let error = result.expect_err("the connection is gone");
        assert!(error.is_transient(), "{error}");
    }
    let took = vanished.elapsed();
    assert!(took < Duration::from_secs(15), "took {took:?}");
    drop(blackhole);
    let other: i32 = mux
        .query_one("SELECT inet_client_port()", &[])
        .await
        .expect("a new connection after the broken one")
        .get(0);
    assert_ne!(other, port);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_under_load_fails_callers_transiently_and_recovers() {
    let cluster = PgCluster::start_new("mux-restart-pw");
    let url = cluster.url("postgres");
    let manager: DatabaseManager = support::build(mux_config(&url, 4)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..64i32)
        .map(|task| {
            let (manager, stop) = (manager.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, Vec::new());
                while !stop.load(Ordering::Acquire) {
                    let result = tokio::time::timeout(
                        Duration::from_secs(30),
                        manager
                            .postgres()
                            .unwrap()
                            .multiplexed()
                            .query_one("SELECT $1::int", &[&task]),
                    )
                    .await
                    .expect("no caller hangs");
                    match result {
                        Ok(row) => {
                            assert_eq!(row.get::<_, i32>(0), task);
                            ok += 1;
                        }
                        Err(e) => {
                            failed.push(e);
                            tokio::task::yield_now().await;
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mux = manager.postgres().unwrap().multiplexed().clone();
    assert!(support::eventually(Duration::from_secs(10), async || mux.status().open == 4).await);
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop();
        cluster.start();
        cluster
    })
    .await
    .unwrap();
    // After the restart every caller gets answers again.
    assert!(
        support::eventually(Duration::from_secs(20), async || {
            mux.query_one("SELECT 1", &[]).await.is_ok() && mux.status().open == 4
        })
        .await,
        "the handle recovers: {}",
        mux.status()
    );
    let recovered = mux.status();
    stop.store(true, Ordering::Release);
    let mut failures = 0;
    for task in load {
        let (ok, failed) = task.await.unwrap();
        assert!(ok > 0);
        for error in &failed {
            assert!(
                error.is_transient(),
                "only transient failures while the server restarts: {error}"
            );
        }
        failures += failed.len();
    }
    assert!(failures > 0, "the restart was felt ({recovered})");
    manager.shutdown().await.unwrap();
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_waits_no_longer_than_wait_timeout_for_a_connection_that_cannot_open() {
    let db = TestDb::create("mux_stalled_open").await;
    let (proxy, via_proxy) = support::FaultProxy::in_front_of(&db.url).await;
    let mut config = mux_config(&via_proxy, 2);
    config.postgres.multiplex.wait_timeout = Duration::from_millis(500);
    // The pool's own connection opens before the proxy turns slow.
    let manager = support::build(config).await;
    proxy.stall_new(Duration::from_secs(60));
    let started = Instant::now();
    match manager
        .postgres()
        .unwrap()
        .multiplexed()
        .query_one("SELECT 1", &[])
        .await
    {
        Err(Error::PoolTimeout { status, .. }) => assert_eq!(status.open, 0, "{status}"),
        other => panic!("expected a PoolTimeout, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let report = manager.shutdown().await.unwrap();
    assert!(report.drained, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_the_grace_period_cancels_and_closes_what_is_still_in_flight() {
    let db = TestDb::create("mux_forced").await;
    let mut config = mux_config(&db.url, 1);
    config.shutdown.grace_period = Duration::from_millis(200);
    let app = config.postgres.application_name.clone();
    let manager = support::build(config).await;
    let mux = manager.postgres().unwrap().multiplexed().clone();
    let slow = {
        let mux = mux.clone();
        tokio::spawn(async move { mux.execute("SELECT pg_sleep(60)", &[]).await })
    };
    assert!(
        support::eventually(Duration::from_secs(10), async || mux.status().in_flight
            == 1)
        .await,
        "{}",
        mux.status()
    );
    let report = manager.shutdown().await.unwrap();
    assert_eq!(report.postgres_forced, 1, "{report:?}");
    assert!(!report.drained);
    assert!(report.took < Duration::from_secs(5), "{report:?}");
    let error = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the statement ends with the shutdown")
        .unwrap()
        .expect_err("ended before it finished");
    assert!(
        error.is_transient() || error.sqlstate() == Some("57014"),
        "{error}"
    );
    assert!(support::sessions_reach(&app, 0, Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_busy_with_an_abandoned_statement_is_not_routed_to_as_idle() {
    let db = TestDb::create("mux_abandon_routing").await;
    let mut config = mux_config(&db.url, 2);
    config.postgres.multiplex.warm_up = true;
    // Routing by in-flight counts alone: no stall mark within the test.
    config.postgres.multiplex.stall_threshold = Duration::from_secs(3600);
    let manager = support::build(config).await;
    let mux = manager.postgres().unwrap().multiplexed().clone();
    assert!(
        support::eventually(Duration::from_secs(10), async || mux.status().open == 2).await,
        "both connections open"
    );
    // A caller gives up on a slow statement; it keeps running on its
    // connection.
    let abandoned = tokio::time::timeout(
        Duration::from_millis(200),
        mux.query_one("SELECT pg_sleep(5)::text, pg_backend_pid()", &[]),
    )
    .await;
    assert!(abandoned.is_err(), "the caller gave up");
    let sleeping = format!(
        "SELECT pid::bigint FROM pg_stat_activity WHERE datname = '{}' AND state = 'active' AND query LIKE 'SELECT pg_sleep(5)%'",
        db.name
    );
    let running = format!("SELECT count(*) FROM ({sleeping}) s");
    assert!(
        support::eventually(Duration::from_secs(10), async || {
            support::query_i64(&admin_url(), &running).await == 1
        })
        .await,
        "the abandoned statement runs"
    );
    let busy_pid = support::query_i64(&admin_url(), &sleeping).await;
    // Still counted in flight while the server runs it...
    assert_eq!(mux.status().in_flight, 1, "{}", mux.status());
    // ...so every new statement goes to the other connection instead of
    // queueing behind it.
    for _ in 0..20 {
        let pid: i32 = mux
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_ne!(
            i64::from(pid),
            busy_pid,
            "routed behind the abandoned statement"
        );
    }
    assert_eq!(
        support::query_i64(&admin_url(), &sleeping).await,
        busy_pid,
        "the abandoned statement was still running throughout"
    );
    // Its place is given back once the server has answered it.
    assert!(
        support::eventually(Duration::from_secs(15), async || mux.status().in_flight
            == 0)
        .await,
        "{}",
        mux.status()
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_statements_are_refused_with_the_server_down_without_connecting() {
    let closed_port = support::free_port();
    let mut config = pg_config(&format!(
        "postgres://nobody:secret@127.0.0.1:{closed_port}/nowhere"
    ));
    // A statement that went to the network would wait this long and then
    // fail with PoolTimeout, not SessionRequired.
    config.postgres.multiplex.wait_timeout = Duration::from_secs(30);
    let manager = DatabaseManager::builder()
        .config(config)
        .build_lazy()
        .expect("build_lazy opens nothing");
    let pool = manager.postgres().unwrap();
    let mux = pool.multiplexed();
    for (sql, recognised) in [
        ("BEGIN", "BEGIN"),
        ("START TRANSACTION", "START TRANSACTION"),
        ("COMMIT", "COMMIT"),
        ("END", "END"),
        ("ROLLBACK", "ROLLBACK"),
        ("ABORT", "ABORT"),
        ("SAVEPOINT a", "SAVEPOINT"),
        ("RELEASE SAVEPOINT a", "RELEASE SAVEPOINT"),
        ("PREPARE p AS SELECT 1", "PREPARE"),
        ("EXECUTE p", "EXECUTE"),
        ("DEALLOCATE p", "DEALLOCATE"),
        ("SET search_path = x", "SET"),
        ("RESET ALL", "RESET"),
        ("LISTEN jobs", "LISTEN"),
        ("UNLISTEN jobs", "UNLISTEN"),
        ("DECLARE c CURSOR FOR SELECT 1", "DECLARE (a cursor)"),
        ("FETCH c", "FETCH"),
        ("MOVE c", "MOVE"),
        ("CLOSE c", "CLOSE"),
        ("DISCARD ALL", "DISCARD"),
        ("LOCK TABLE t", "LOCK"),
        ("LOAD 'auto_explain'", "LOAD"),
        ("CREATE TEMP TABLE scratch (id int)", "CREATE TEMP TABLE"),
        ("SELECT * INTO TEMP t FROM x", "SELECT INTO TEMP"),
        ("SELECT pg_advisory_lock(1)", "a session advisory lock"),
    ] {
        match mux.execute(sql, &[]).await {
            Err(Error::SessionRequired { statement }) => assert_eq!(statement, recognised),
            other => panic!("{sql}: expected SessionRequired, got {other:?}"),
        }
        match mux.query(sql, &[]).await {
            Err(Error::SessionRequired { .. }) => {}
            other => panic!("{sql}: expected SessionRequired, got {other:?}"),
        }
    }
    // Nothing was opened, nor tried.
    assert_eq!(mux.status().open, 0, "{}", mux.status());
    assert_eq!(pool.stats().created, 0);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_stats_count_multiplexed_connections_and_timeouts() {
    let db = TestDb::create("mux_stats").await;
    let mut config = mux_config(&db.url, 3);
    config.postgres.multiplex.max_in_flight = 1;
    config.postgres.multiplex.wait_timeout = Duration::from_millis(200);
    let manager = support::build(config).await;
    let pool = manager.postgres().unwrap();
    let mux = pool.multiplexed().clone();
    let pooled = pool.stats().created;
    mux.query_one("SELECT 1", &[]).await.unwrap();
    assert!(
        support::eventually(Duration::from_secs(10), async || mux.status().open == 3).await,
        "{}",
        mux.status()
    );
    assert_eq!(pool.stats().created, pooled + 3);
    // Every place taken, one more caller times out.
    let holders: Vec<_> = (0..3)
        .map(|_| {
            let mux = mux.clone();
            tokio::spawn(async move { mux.execute("SELECT pg_sleep(1)", &[]).await })
        })
        .collect();
    assert!(
        support::eventually(Duration::from_secs(10), async || mux.status().in_flight
            == 3)
        .await,
        "{}",
        mux.status()
    );
    let timeouts = pool.stats().acquire_timeouts;
    assert!(matches!(
        mux.query_one("SELECT 1", &[]).await,
        Err(Error::PoolTimeout { .. })
    ));
    assert_eq!(pool.stats().acquire_timeouts, timeouts + 1);
    for holder in holders {
        holder.await.unwrap().unwrap();
    }
    let pool_open = pool.status().open as u64;
    manager.shutdown().await.unwrap();
    // The pool's own connections and the handle's three.
    assert!(
        pool.stats().closed_shutdown >= pool_open + 3,
        "{:?}",
        pool.stats()
    );
}

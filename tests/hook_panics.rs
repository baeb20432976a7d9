//! A panic in a user hook is that hook's failure, nothing more: the caller
//! gets an error (or another connection), the connection is closed, the
//! pool's counts stay right and its maintenance task keeps running.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dbmanager::postgres::HookFuture;
use dbmanager::tokio_postgres::Client;
use dbmanager::{DatabaseManager, Error, Phase};
use support::{TestDb, admin_url, pg_config, sessions};

/// Pins a closure to the hook signature (a closure's own inference would
/// tie the client's lifetime to one call).
fn hook<F>(f: F) -> F
where
    F: for<'a> Fn(&'a Client) -> HookFuture<'a> + Send + Sync + 'static,
{
    f
}

/// A hook that panics on its `nth` call (counting from 1) and succeeds on
/// every other; the counter tells how often it ran.
fn panics_on_call(
    nth: usize,
) -> (
    Arc<AtomicUsize>,
    impl for<'a> Fn(&'a Client) -> HookFuture<'a> + Send + Sync + 'static,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let panicking = hook(move |_| {
        let call = counted.fetch_add(1, Ordering::AcqRel) + 1;
        Box::pin(async move {
            if call == nth {
                panic!("hook bug on call {call}");
            }
            Ok(())
        })
    });
    (calls, panicking)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_checkout_hook_costs_one_connection_and_the_caller_gets_another() {
    let db = TestDb::create("panic_checkout").await;
    let mut config = pg_config(&db.url);
    config.postgres.pool.min_idle = 2;
    config.postgres.pool.maintenance_interval = Duration::from_millis(100);
    let app = config.postgres.application_name.clone();
    // Call 1 is build()'s start-up proof; call 2 is the first caller's.
    let (calls, hook) = panics_on_call(2);
    let manager = DatabaseManager::builder()
        .config(config)
        .on_checkout(hook)
        .build()
        .await
        .unwrap();
    let pool = manager.postgres().unwrap();

    let client = pool.get().await.expect("another connection is handed out");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert_eq!(
        calls.load(Ordering::Acquire),
        3,
        "the hook ran again on the next connection"
    );
    assert_eq!(
        pool.stats().closed_hook,
        1,
        "the connection it panicked on was closed"
    );
    let status = pool.status();
    assert_eq!(status.in_use, 1, "{status}");
    drop(client);

    // The maintenance task survived and tops the pool back up to min_idle
    // idle connections (one more is open if a tick came while the caller
    // held its connection: min_idle counts idle ones), each a live session.
    assert!(pool.stats().maintenance_running);
    assert!(
        support::eventually(Duration::from_secs(10), async || {
            let status = pool.status();
            status.idle >= 2 && sessions(&admin_url(), &app).await == status.open as i64
        })
        .await,
        "back to min_idle: {}",
        pool.status()
    );
    assert_eq!(pool.status().in_use, 0);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_hook_that_always_panics_gives_the_caller_a_hook_error() {
    let db = TestDb::create("panic_always").await;
    let mut config = pg_config(&db.url);
    config.postgres.pool.min_idle = 0;
    config.postgres.pool.max_size = 2;
    let app = config.postgres.application_name.clone();
    let manager = DatabaseManager::builder()
        .config(config)
        .on_checkout(|_| Box::pin(async { panic!("always") }))
        .build_lazy()
        .unwrap();
    let pool = manager.postgres().unwrap();
    match pool.get().await {
        Err(Error::Hook { hook, reason }) => {
            assert_eq!(hook, "on_checkout");
            assert!(reason.contains("panicked: always"), "{reason}");
        }
        other => panic!("expected a hook error, got {other:?}"),
    }
    let status = pool.status();
    assert_eq!((status.in_use, status.open), (0, 0), "{status}");
    assert!(
        support::sessions_reach(&app, 0, Duration::from_secs(10)).await,
        "every connection the hook panicked on is closed"
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_checkin_hook_closes_that_connection_and_the_pool_serves_on() {
    let db = TestDb::create("panic_checkin").await;
    let mut config = pg_config(&db.url);
    config.postgres.pool.min_idle = 1;
    config.postgres.pool.max_size = 1;
    // Call 1 is the return of build()'s start-up proof; call 2 is the
    // first caller's.
    let (_, hook) = panics_on_call(2);
    let manager = DatabaseManager::builder()
        .config(config)
        .on_checkin(hook)
        .build()
        .await
        .unwrap();
    let pool = manager.postgres().unwrap();
    let first_pid: i32 = {
        let client = pool.get().await.unwrap();
        client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0)
    };
    assert!(
        support::eventually(Duration::from_secs(10), async || pool.stats().closed_hook
            == 1)
        .await,
        "the connection the hook panicked on is closed: {:?}",
        pool.stats()
    );
    let client = pool.get().await.expect("the pool serves on");
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(pid, first_pid, "a new connection, not the one of the panic");
    drop(client);
    assert!(
        support::eventually(Duration::from_secs(10), async || pool.status().in_use == 0).await,
        "{}",
        pool.status()
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_connect_hook_fails_the_background_start_instead_of_retrying_forever() {
    let db = TestDb::create("panic_connect").await;
    let mut config = pg_config(&db.url);
    config.postgres.pool.min_idle = 1;
    let manager = DatabaseManager::builder()
        .config(config.clone())
        .on_connect(|_| Box::pin(async { panic!("connect hook bug") }))
        .build_in_background()
        .unwrap();
    let error = tokio::time::timeout(Duration::from_secs(60), manager.wait_ready())
        .await
        .expect("the background start ends")
        .expect_err("the start-up fails");
    assert!(
        error.to_string().contains("panicked: connect hook bug"),
        "{error}"
    );
    assert_eq!(manager.phase(), Phase::Failed);
    assert!(!manager.liveness());
    manager.shutdown().await.unwrap();

    // The eager build reports the same failure as a typed error.
    let error = DatabaseManager::builder()
        .config(config)
        .on_connect(|_| Box::pin(async { panic!("connect hook bug") }))
        .build()
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("panicked: connect hook bug"),
        "{error}"
    );
}

//! Opening a connection during a checkout (the pool's connect future,
//! boxed whole): an `on_connect` error, a stalled handshake and a refused
//! password each reach the caller as their typed error within the wait
//! bound, leave no session behind, and the pool serves again afterwards.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use dbmanager::{DatabaseManager, Error};
use support::proxy::FaultProxy;
use support::{TestDb, pg_config, sessions_reach};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_connect_error_on_a_checkouts_new_connection_is_the_callers_hook_error() {
    let db = TestDb::create("hook_late").await;
    let mut config = pg_config(&db.url);
    config.postgres.pool.max_size = 2;
    config.postgres.pool.min_idle = 1;
    config.postgres.pool.wait_timeout = Duration::from_secs(3);
    let application = config.postgres.application_name.clone();
    let password = support::admin_url()
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('@').next())
        .and_then(|user| user.split(':').nth(1))
        .unwrap()
        .to_string();
    let connects = Arc::new(AtomicUsize::new(0));
    let counter = connects.clone();
    // Set once a good connection is held: every connection opened after
    // fails the hook.
    let refuse = Arc::new(AtomicBool::new(false));
    let refusing = refuse.clone();
    let secret = password.clone();
    let manager = DatabaseManager::builder()
        .config(config)
        .on_connect(move |client| {
            let refused = refusing.load(Ordering::SeqCst);
            if refused {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            let secret = secret.clone();
            Box::pin(async move {
                client.batch_execute("SELECT 1").await?;
                if !refused {
                    Ok(())
                } else {
                    Err(format!("refused with {secret}").into())
                }
            })
        })
        .build()
        .await
        .expect("the hook passes until told to refuse");
    let pool = manager.postgres().unwrap();
    let held = pool.get().await.unwrap();
    assert!(sessions_reach(&application, 1, Duration::from_secs(5)).await);
    refuse.store(true, Ordering::SeqCst);
    let error = pool
        .get()
        .await
        .expect_err("every new connection fails the hook");
    match &error {
        Error::Hook { hook, reason } => {
            assert_eq!(*hook, "on_connect");
            assert!(!reason.contains(&password), "{reason}");
        }
        other => panic!("not the hook's error: {other:?}"),
    }
    assert!(!format!("{error} {error:?}").contains(&password));
    assert!(connects.load(Ordering::SeqCst) >= 1);
    // The refused connections are closed on the server: only the held one.
    assert!(sessions_reach(&application, 1, Duration::from_secs(5)).await);
    drop(held);
    let again = pool.get().await.expect("the good connection serves again");
    again.query_one("SELECT 1", &[]).await.unwrap();
    drop(again);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_on_a_checkouts_new_connection_times_out_and_the_pool_recovers() {
    let db = TestDb::create("stall_late").await;
    let (proxy, url) = FaultProxy::in_front_of(&db.url).await;
    let mut config = pg_config(&url);
    config.postgres.pool.max_size = 2;
    config.postgres.pool.min_idle = 1;
    config.postgres.pool.connect_timeout = Duration::from_millis(500);
    config.postgres.pool.wait_timeout = Duration::from_secs(2);
    let manager = support::build(config).await;
    let pool = manager.postgres().unwrap();
    let held = pool.get().await.unwrap();
    proxy.stall_new(Duration::from_secs(60));
    let error = tokio::time::timeout(Duration::from_secs(20), pool.get())
        .await
        .expect("the checkout is bounded by its settings")
        .expect_err("no connection can open");
    assert!(
        matches!(
            error,
            Error::Timeout { .. } | Error::Connect { .. } | Error::PoolTimeout { .. }
        ),
        "{error:?}"
    );
    proxy.stall_new(Duration::ZERO);
    let second = pool.get().await.expect("a new connection opens again");
    second.query_one("SELECT 1", &[]).await.unwrap();
    drop((held, second));
    manager.shutdown().await.unwrap();
}

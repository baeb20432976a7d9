//! The transaction helper against a real PostgreSQL server: commit, roll
//! back on error, panic and drop, retry of conflicts, the limit of
//! attempts, an unknown commit outcome, and the transaction options.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use dbmanager::postgres::{IsolationLevel, TransactionOptions};
use dbmanager::retry::Jitter;
use dbmanager::{DatabaseManager, Error, PooledConnection, RetryPolicy, TxFutureExt};
use futures_util::FutureExt;
use support::{AtCommit, FaultProxy, TestDb, eventually, pg_config, query_i64, query_text, sql};

/// A pool of one connection, so "the next checkout" is the same connection
/// unless it was closed.
async fn single_connection_pool(url: &str) -> DatabaseManager {
    let mut config = pg_config(url);
    config.postgres.pool.max_size = 1;
    config.postgres.pool.min_idle = 0;
    support::build(config).await
}

fn quick_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy::exponential()
        .initial_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(50))
        .max_attempts(attempts)
        .jitter(Jitter::None)
}

async fn backend_pid(client: &PooledConnection) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Whether a session is inside a transaction block: in autocommit a
/// one-message query is a transaction of its own that has written nothing
/// and started with the statement.
async fn in_transaction_block(client: &PooledConnection) -> bool {
    let rows = client
        .simple_query(
            "SELECT txid_current_if_assigned() IS NOT NULL OR now() <> statement_timestamp()",
        )
        .await
        .unwrap();
    rows.iter().any(|m| match m {
        dbmanager::tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0) == Some("t"),
        _ => false,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_commits_and_returns_the_value() {
    let db = TestDb::create("tx_commit").await;
    sql(&db.url, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let manager = support::build(pg_config(&db.url)).await;

    let inserted = manager
        .postgres()
        .unwrap()
        .transaction(|tx| {
            async move {
                let n = tx.execute("INSERT INTO t VALUES (1), (2)", &[]).await?;
                Ok(n)
            }
            .scoped()
        })
        .await
        .unwrap();

    assert_eq!(inserted, 2);
    assert_eq!(query_i64(&db.url, "SELECT count(*) FROM t").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_serializable_transactions_are_retried_and_both_apply_once() {
    let db = TestDb::create("tx_conflict").await;
    sql(&db.url, "CREATE TABLE ledger (n int NOT NULL)").await;
    let manager = support::build(pg_config(&db.url)).await;
    // Both read the table before either writes: under SERIALIZABLE the two
    // "insert the sum plus one" transactions cannot both commit.
    let both_read = Arc::new(tokio::sync::Barrier::new(2));
    let attempts = Arc::new(AtomicU32::new(0));

    let run = |barrier: Arc<tokio::sync::Barrier>, attempts: Arc<AtomicU32>| {
        let manager = manager.clone();
        tokio::spawn(async move {
            let mine = AtomicU32::new(0);
            let options = TransactionOptions::new()
                .isolation(IsolationLevel::Serializable)
                .retry(quick_retry(5));
            manager
                .postgres()
                .unwrap()
                .transaction_with(options, |tx| {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    let first = mine.fetch_add(1, Ordering::SeqCst) == 0;
                    let (barrier, mine) = (&barrier, &mine);
                    async move {
                        let row = tx
                            .query_one("SELECT coalesce(sum(n), 0)::int FROM ledger", &[])
                            .await?;
                        let sum: i32 = row.get(0);
                        if first {
                            barrier.wait().await;
                        }
                        tx.execute("INSERT INTO ledger VALUES ($1)", &[&(sum + 1)])
                            .await?;
                        Ok(mine.load(Ordering::SeqCst))
                    }
                    .scoped()
                })
                .await
        })
    };
    let a = run(both_read.clone(), attempts.clone());
    let b = run(both_read.clone(), attempts.clone());
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());

    let mut runs = [a, b];
    runs.sort();
    assert_eq!(runs, [1, 2], "one ran once, the other was retried once");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(query_i64(&db.url, "SELECT count(*) FROM ledger").await, 2);
    assert_eq!(
        query_text(
            &db.url,
            "SELECT string_agg(n::text, ',' ORDER BY n) FROM ledger"
        )
        .await,
        "1,2",
        "the retried transaction saw the other's row: each effect is there once"
    );
}

#[derive(Debug, thiserror::Error)]
#[error("not enough stock")]
struct OutOfStock;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_err_rolls_back_and_the_same_connection_comes_back_outside_a_transaction() {
    let db = TestDb::create("tx_err").await;
    sql(&db.url, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let manager = single_connection_pool(&db.url).await;
    let pool = manager.postgres().unwrap();
    let attempts = AtomicU32::new(0);
    let pid = AtomicU32::new(0);

    let error = pool
        .transaction(|tx| {
            attempts.fetch_add(1, Ordering::SeqCst);
            let pid = &pid;
            async move {
                let backend: i32 = tx.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
                pid.store(backend as u32, Ordering::SeqCst);
                tx.execute("INSERT INTO t VALUES (1)", &[]).await?;
                Err::<(), _>(Error::abort(OutOfStock))
            }
            .scoped()
        })
        .await
        .unwrap_err();

    assert!(error.aborted::<OutOfStock>().is_some(), "{error:?}");
    assert_eq!(
        error.to_string(),
        "transaction rolled back: not enough stock"
    );
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "an abort is not retried"
    );
    assert_eq!(query_i64(&db.url, "SELECT count(*) FROM t").await, 0);
    let next = pool.get().await.unwrap();
    assert_eq!(
        backend_pid(&next).await as u32,
        pid.load(Ordering::SeqCst),
        "the connection went back to the pool"
    );
    assert!(!in_transaction_block(&next).await);
    next.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    drop(next);
    assert_eq!(
        query_i64(&db.url, "SELECT count(*) FROM t").await,
        1,
        "autocommit again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_statement_rolls_back_and_is_not_retried() {
    let db = TestDb::create("tx_fail").await;
    sql(&db.url, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let manager = single_connection_pool(&db.url).await;
    let attempts = AtomicU32::new(0);

    let error = manager
        .postgres()
        .unwrap()
        .transaction(|tx| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                tx.execute("INSERT INTO t VALUES (1)", &[]).await?;
                tx.execute("INSERT INTO t VALUES (1)", &[]).await?;
                Ok(())
            }
            .scoped()
        })
        .await
        .unwrap_err();

    assert_eq!(error.sqlstate(), Some("23505"), "{error}");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(query_i64(&db.url, "SELECT count(*) FROM t").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_rolls_back_resumes_and_the_connection_comes_back_outside_a_transaction() {
    let db = TestDb::create("tx_panic").await;
    sql(&db.url, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let manager = single_connection_pool(&db.url).await;
    let pid = Arc::new(AtomicU32::new(0));

    // Spawned: the helper's future is Send, and the panic reaches the task.
    let task = {
        let manager = manager.clone();
        let pid = pid.clone();
        tokio::spawn(async move {
            manager
                .postgres()
                .unwrap()
                .transaction(move |tx| {
                    let pid = pid.clone();
                    async move {
                        let backend: i32 =
                            tx.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
                        pid.store(backend as u32, Ordering::SeqCst);
                        tx.execute("INSERT INTO t VALUES (1)", &[]).await?;
                        if backend != 0 {
                            panic!("closure panicked");
                        }
                        Ok(())
                    }
                    .scoped()
                })
                .await
        })
    };
    let panic = task.await.unwrap_err();
    assert!(panic.is_panic());
    let message = panic.into_panic();
    assert_eq!(message.downcast_ref::<&str>(), Some(&"closure panicked"));

    assert_eq!(query_i64(&db.url, "SELECT count(*) FROM t").await, 0);
    let pool = manager.postgres().unwrap();
    let next = pool.get().await.unwrap();
    assert_eq!(
        backend_pid(&next).await as u32,
        pid.load(Ordering::SeqCst),
        "the same connection"
    );
    assert!(!in_transaction_block(&next).await);
    assert_eq!(pool.stats().closed_discarded, 0);

    // Caught in place as well, without a task boundary.
    let caught = std::panic::AssertUnwindSafe(
        pool.transaction::<(), _>(|_tx| async move { panic!("again") }.scoped()),
    )
    .catch_unwind();
    drop(next);
    assert!(caught.await.is_err());
    let next = pool.get().await.unwrap();
    assert!(!in_transaction_block(&next).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_transaction_future_rolls_back_and_its_connection_is_closed() {
    let db = TestDb::create("tx_drop").await;
    sql(&db.url, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let manager = single_connection_pool(&db.url).await;
    let (wrote, written) = tokio::sync::oneshot::channel::<i32>();

    let task = {
        let manager = manager.clone();
        tokio::spawn(async move {
            let mut wrote = Some(wrote);
            manager
                .postgres()
                .unwrap()
                .transaction(move |tx| {
                    let wrote = wrote.take();
                    async move {
                        tx.execute("INSERT INTO t VALUES (1)", &[]).await?;
                        let pid: i32 = tx.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
                        if let Some(wrote) = wrote {
                            let _ = wrote.send(pid);
                        }
                        std::future::pending::<()>().await;
                        Ok(())
                    }
                    .scoped()
                })
                .await
        })
    };
    let pid = written.await.unwrap();
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());

    // The abandoned session ends, and with it the transaction.
    let gone = eventually(Duration::from_secs(10), async || {
        query_i64(
            &db.url,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
        )
        .await
            == 0
    })
    .await;
    assert!(gone, "the connection of the dropped transaction was closed");
    assert_eq!(query_i64(&db.url, "SELECT count(*) FROM t").await, 0);
    // Its row lock is gone too: the same key can be written.
    sql(&db.url, "INSERT INTO t VALUES (1)").await;

    let pool = manager.postgres().unwrap();
    assert_eq!(pool.stats().closed_discarded, 1);
    let next = pool.get().await.unwrap();
    assert_ne!(backend_pid(&next).await, pid);
    assert!(!in_transaction_block(&next).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_attempts_give_the_last_error_with_the_attempt_count() {
    let db = TestDb::create("tx_exhaust").await;
    let manager = single_connection_pool(&db.url).await;
    let attempts = AtomicU32::new(0);
    let options = TransactionOptions::new().retry(quick_retry(3));

    let error = manager
        .postgres()
        .unwrap()
        .transaction_with(options, |tx| {
            let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tx.batch_execute(&format!(
                    "DO $$ BEGIN RAISE EXCEPTION 'conflict {n}' USING ERRCODE = 'serialization_failure'; END $$"
                ))
                .await?;
                Ok(())
            }
            .scoped()
        })
        .await
        .unwrap_err();

    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert!(
        matches!(
            &error,
            Error::TransactionRetriesExhausted { attempts: 3, .. }
        ),
        "{error:?}"
    );
    assert_eq!(error.attempts(), Some(3));
    assert_eq!(error.sqlstate(), Some("40001"));
    let text = error.to_string();
    assert!(
        text.starts_with("PostgreSQL transaction failed on all 3 attempts: "),
        "{text}"
    );
    assert!(
        text.contains("conflict 3"),
        "the last attempt's error: {text}"
    );
    let next = manager.postgres().unwrap().get().await.unwrap();
    assert!(!in_transaction_block(&next).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_is_retried_like_a_serialization_failure() {
    let db = TestDb::create("tx_deadlock").await;
    let manager = support::build(pg_config(&db.url)).await;
    let attempts = AtomicU32::new(0);
    let options = TransactionOptions::new().retry(quick_retry(3));

    let value = manager
        .postgres()
        .unwrap()
        .transaction_with(options, |tx| {
            let first = attempts.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    tx.batch_execute(
                        "DO $$ BEGIN RAISE EXCEPTION 'deadlock' USING ERRCODE = 'deadlock_detected'; END $$",
                    )
                    .await?;
                }
                Ok(7)
            }
            .scoped()
        })
        .await
        .unwrap();

    assert_eq!(value, 7);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_refuses_a_write_and_isolation_is_applied() {
    let db = TestDb::create("tx_options").await;
    sql(&db.url, "CREATE TABLE t (id int)").await;
    let manager = support::build(pg_config(&db.url)).await;
    let pool = manager.postgres().unwrap();
    let attempts = AtomicU32::new(0);

    let error = pool
        .transaction_with(TransactionOptions::new().read_only(true), |tx| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                tx.execute("INSERT INTO t VALUES (1)", &[]).await?;
                Ok(())
            }
            .scoped()
        })
        .await
        .unwrap_err();
    assert_eq!(error.sqlstate(), Some("25006"), "{error}");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);

    let options = TransactionOptions::new()
        .isolation(IsolationLevel::Serializable)
        .read_only(true)
        .deferrable(true);
    let settings: String = pool
        .transaction_with(options, |tx| {
            async move {
                let row = tx
                    .query_one(
                        "SELECT current_setting('transaction_isolation') || ' ' || \
                                current_setting('transaction_read_only') || ' ' || \
                                current_setting('transaction_deferrable')",
                        &[],
                    )
                    .await?;
                Ok(row.get(0))
            }
            .scoped()
        })
        .await
        .unwrap();
    assert_eq!(settings, "serializable on on");
}

/// Runs one insert of `id` through the helper on a one-connection pool
/// behind `proxy`, with `fault` armed for its first COMMIT, and returns the
/// helper's result and how many times the closure ran.
async fn insert_with_commit_fault(
    manager: &DatabaseManager,
    proxy: &FaultProxy,
    fault: AtCommit,
    options: TransactionOptions,
) -> (dbmanager::Result<i32>, u32) {
    let table = String::from("t");
    let mut attempts = 0u32;
    proxy.at_commit(fault);
    let result = manager
        .postgres()
        .unwrap()
        .transaction_with(options, |tx| {
            attempts += 1;
            let table = &table;
            async move {
                tx.execute(&format!("INSERT INTO {table} VALUES (1)"), &[])
                    .await?;
                Ok(1)
            }
            .scoped()
        })
        .await;
    assert!(proxy.commit_fault_fired(), "the COMMIT passed the proxy");
    (result, attempts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_found_committed_and_returns_ok_once() {
    let db = TestDb::create("tx_lost_answer").await;
    sql(&db.url, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let (proxy, via_proxy) = FaultProxy::in_front_of(&db.url).await;
    let manager = single_connection_pool(&via_proxy).await;

    let (result, attempts) = insert_with_commit_fault(
        &manager,
        &proxy,
        AtCommit::DeliverThenCut,
        TransactionOptions::new().retry(quick_retry(3)),
    )
    .await;

    assert_eq!(result.unwrap(), 1, "the server committed: Ok");
    assert_eq!(attempts, 1, "not run again");
    assert_eq!(query_i64(&db.url, "SELECT count(*) FROM t").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_never_reached_the_server_is_found_aborted_and_run_again() {
    let db = TestDb::create("tx_lost_commit").await;
    sql(&db.url, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let (proxy, via_proxy) = FaultProxy::in_front_of(&db.url).await;
    let manager = single_connection_pool(&via_proxy).await;

    let (result, attempts) = insert_with_commit_fault(
        &manager,
        &proxy,
        AtCommit::DropAndCut,
        TransactionOptions::new().retry(quick_retry(3)),
    )
    .await;

    assert_eq!(result.unwrap(), 1);
    assert_eq!(attempts, 2, "the rolled-back attempt ran again");
    assert_eq!(query_i64(&db.url, "SELECT count(*) FROM t").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_found_aborted_without_retries_left_is_exhausted_not_ok() {
    let db = TestDb::create("tx_lost_once").await;
    sql(&db.url, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let (proxy, via_proxy) = FaultProxy::in_front_of(&db.url).await;
    let manager = single_connection_pool(&via_proxy).await;

    let (result, attempts) = insert_with_commit_fault(
        &manager,
        &proxy,
        AtCommit::DropAndCut,
        TransactionOptions::new().retry(RetryPolicy::none()),
    )
    .await;

    let error = result.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::TransactionRetriesExhausted { attempts: 1, .. }
        ),
        "{error:?}"
    );
    assert_eq!(attempts, 1);
    assert_eq!(query_i64(&db.url, "SELECT count(*) FROM t").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_outcome_that_cannot_be_checked_within_the_bound_is_unknown_not_a_retry() {
    let db = TestDb::create("tx_unknown").await;
    sql(&db.url, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let (proxy, via_proxy) = FaultProxy::in_front_of(&db.url).await;
    let manager = single_connection_pool(&via_proxy).await;
    // The check needs a new connection; new connections stall past the
    // bound.
    let check_bound = Duration::from_millis(300);
    proxy.stall_new(Duration::from_secs(60));

    let (result, attempts) = insert_with_commit_fault(
        &manager,
        &proxy,
        AtCommit::DeliverThenCut,
        TransactionOptions::new()
            .retry(quick_retry(3))
            .outcome_timeout(check_bound),
    )
    .await;

    let error = result.unwrap_err();
    assert!(
        matches!(&error, Error::CommitOutcomeUnknown { attempt: 1, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("outcome unknown"), "{error}");
    assert!(
        error.to_string().contains("within 300ms"),
        "names the bound: {error}"
    );
    assert_eq!(attempts, 1, "never run again");
    let committed = eventually(Duration::from_secs(10), async || {
        query_i64(&db.url, "SELECT count(*) FROM t").await == 1
    })
    .await;
    assert!(committed, "the COMMIT reached the server and committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_of_a_transaction_that_wrote_nothing_runs_it_again() {
    let db = TestDb::create("tx_lost_read").await;
    let (proxy, via_proxy) = FaultProxy::in_front_of(&db.url).await;
    let manager = single_connection_pool(&via_proxy).await;
    let mut attempts = 0u32;

    proxy.at_commit(AtCommit::DeliverThenCut);
    let value: i32 = manager
        .postgres()
        .unwrap()
        .transaction_with(TransactionOptions::new().retry(quick_retry(3)), |tx| {
            attempts += 1;
            async move { Ok(tx.query_one("SELECT 41 + 1", &[]).await?.get(0)) }.scoped()
        })
        .await
        .unwrap();

    assert!(proxy.commit_fault_fired());
    assert_eq!(value, 42);
    assert_eq!(
        attempts, 2,
        "no transaction id: nothing written, so it ran again rather than trust a snapshot whose commit is unknown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_before_commit_runs_the_closure_again_on_another() {
    let db = TestDb::create("tx_lost").await;
    sql(&db.url, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let manager = single_connection_pool(&db.url).await;
    let attempts = AtomicU32::new(0);

    manager
        .postgres()
        .unwrap()
        .transaction(|tx| {
            let first = attempts.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                tx.execute("INSERT INTO t VALUES (1)", &[]).await?;
                if first {
                    tx.query("SELECT pg_terminate_backend(pg_backend_pid())", &[])
                        .await?;
                }
                Ok(())
            }
            .scoped()
        })
        .await
        .unwrap();

    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(query_i64(&db.url, "SELECT count(*) FROM t").await, 1);
}

fn mongo_config(url: &str) -> dbmanager::Config {
    let mut config = dbmanager::Config::default();
    config.mongodb.url = Some(dbmanager::DatabaseUrl::new(url));
    config.mongodb.database = Some(support::unique_name("dbm_tx"));
    config.mongodb.pool.min_size = 1;
    config.mongodb.server_selection_timeout = Duration::from_secs(2);
    config.mongodb.connect_timeout = Duration::from_secs(2);
    config
}

/// Proven against mongoeco (the default test server) and any mongod given
/// by MONGODB_URL: writes in the transaction are invisible outside it until
/// the commit, an `Err` and a panic abort them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_transactions_commit_on_ok_and_abort_on_err_and_panic() {
    use dbmanager::mongodb::bson::{Document, doc};
    let (url, _server) = support::mongo();
    let manager = support::build(mongo_config(&url)).await;
    let mongo = manager.mongo().unwrap();
    let coll = mongo.database().collection::<Document>("orders");
    coll.insert_one(doc! { "_id": 0 }).await.unwrap();

    let seen = mongo
        .transaction(|session| {
            let coll = &coll;
            async move {
                coll.insert_one(doc! { "_id": 1 })
                    .session(&mut *session)
                    .await?;
                let inside = coll.count_documents(doc! {}).session(&mut *session).await?;
                let outside = coll.count_documents(doc! {}).await?;
                Ok((inside, outside))
            }
            .scoped()
        })
        .await
        .unwrap();
    assert_eq!(
        seen,
        (2, 1),
        "the insert is visible only inside the transaction"
    );
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 2, "committed");

    let attempts = AtomicU32::new(0);
    let error = mongo
        .transaction(|session| {
            attempts.fetch_add(1, Ordering::SeqCst);
            let coll = &coll;
            async move {
                coll.insert_one(doc! { "_id": 2 })
                    .session(&mut *session)
                    .await?;
                Err::<(), _>(Error::abort(OutOfStock))
            }
            .scoped()
        })
        .await
        .unwrap_err();
    assert!(error.aborted::<OutOfStock>().is_some(), "{error:?}");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 2, "aborted");

    let task = {
        let coll = coll.clone();
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .mongo()
                .unwrap()
                .transaction(move |session| {
                    let coll = coll.clone();
                    async move {
                        coll.insert_one(doc! { "_id": 3 })
                            .session(&mut *session)
                            .await?;
                        if coll.name() == "orders" {
                            panic!("closure panicked");
                        }
                        Ok(())
                    }
                    .scoped()
                })
                .await
        })
    };
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(
        coll.count_documents(doc! {}).await.unwrap(),
        2,
        "aborted by the panic"
    );
    assert_eq!(
        coll.find_one(doc! { "_id": 3 }).await.unwrap(),
        None,
        "the panicking transaction left nothing"
    );
}

/// mongoeco's unlabelled answer to the commit of a transaction it applied.
fn server_deviation(error: &dbmanager::Error, kept: u64) -> bool {
    kept == 1 && error.to_string().contains("during transaction commit")
}

/// Issue 20's first case on MongoDB: the closure swallows a failed write
/// (a duplicate key) and returns `Ok`. What the helper returns must match
/// what was committed: either the other write is there, or the helper
/// does not say `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_a_swallowed_write_error_never_gives_ok_for_a_transaction_that_was_not_committed() {
    use dbmanager::mongo::TransactionOptions as MongoOptions;
    use dbmanager::mongodb::bson::{Document, doc};
    let (url, _server) = support::mongo();
    let manager = support::build(mongo_config(&url)).await;
    let mongo = manager.mongo().unwrap();
    let coll = mongo.database().collection::<Document>("orders");
    coll.insert_one(doc! { "_id": 1 }).await.unwrap();
    let mut attempts = 0u32;
    let options = MongoOptions::new().retry(quick_retry(3));

    let result = mongo
        .transaction_with(options, |session| {
            attempts += 1;
            let coll = &coll;
            async move {
                coll.insert_one(doc! { "_id": 2 })
                    .session(&mut *session)
                    .await?;
                let duplicate = coll
                    .insert_one(doc! { "_id": 1 })
                    .session(&mut *session)
                    .await;
                assert!(duplicate.is_err(), "the duplicate key is refused");
                Ok(())
            }
            .scoped()
        })
        .await;

    let kept = coll.count_documents(doc! { "_id": 2 }).await.unwrap();
    match &result {
        Ok(()) => assert_eq!(kept, 1, "Ok: the other write was committed"),
        // mongoeco, now and then (1 run in 7 on a loaded machine), answers
        // the commit of a transaction it applied with an unlabelled
        // "Write conflict during transaction commit" (code 8); by the
        // driver specification an unlabelled commit error is final, so the
        // helper passes the server's answer through. A server deviation,
        // not the helper's: accepted only for exactly that answer.
        Err(error) if server_deviation(error, kept) => {
            eprintln!(
                "the test server reported a failed commit of a transaction it applied: {error}"
            );
            return;
        }
        Err(error) => assert_eq!(kept, 0, "an error, and nothing committed: {error}"),
    }
    // Which of the two depends on the server: mongoeco (the default test
    // server) keeps the transaction open after the refused write and
    // commits the other one (Ok, one attempt); a mongod aborts it, its
    // commit fails as NoSuchTransaction labelled TransientTransactionError
    // and the closure reruns until the retry policy ends (an error).
    eprintln!("swallowed duplicate key: {result:?}, attempts {attempts}, kept {kept}");
    if result.is_ok() {
        assert_eq!(attempts, 1, "committed at the first attempt");
    } else {
        assert_eq!(attempts, 3, "rerun until the policy ended");
    }
}

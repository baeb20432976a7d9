//! The transaction helpers' metrics move as each scenario predicts, seen
//! through a real recorder (metrics-util's debugging recorder, installed
//! once for this process).

mod support;

use std::time::Duration;

use dbmanager::metrics::names;
use dbmanager::postgres::TransactionOptions;
use dbmanager::retry::Jitter;
use dbmanager::{DatabaseUrl, Error, RetryPolicy, TxFutureExt};
use support::{AtCommit, FaultProxy, Reading, TestDb, pg_config, sql};

const PG: (&str, &str) = ("database", "postgres");
const MONGO: (&str, &str) = ("database", "mongodb");

fn quick_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy::exponential()
        .initial_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(20))
        .max_attempts(attempts)
        .jitter(Jitter::None)
}

const CONFLICT: &str =
    "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_metrics_count_attempts_reruns_exhaustion_lost_commits_and_time() {
    let snapshotter = support::install_recorder();

    let db = TestDb::create("tx_metrics").await;
    sql(&db.url, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let (mongo_url, _mongo) = support::mongo();
    let (proxy, via_proxy) = FaultProxy::in_front_of(&db.url).await;
    let mut config = pg_config(&via_proxy);
    config.postgres.pool.max_size = 1;
    config.postgres.pool.min_idle = 0;
    config.mongodb.url = Some(DatabaseUrl::new(&mongo_url));
    config.mongodb.database = Some(support::unique_name("tx_metrics"));
    let manager = support::build(config).await;
    let pool = manager.postgres().unwrap();
    Reading::take(&snapshotter);

    // One conflict, then a commit: two attempts, one rerun of class 40.
    let mut attempts = 0;
    pool.transaction_with(TransactionOptions::new().retry(quick_retry(3)), |tx| {
        attempts += 1;
        let first = attempts == 1;
        async move {
            if first {
                tx.batch_execute(CONFLICT).await?;
            }
            Ok(())
        }
        .scoped()
    })
    .await
    .unwrap();
    let rerun = Reading::take(&snapshotter);
    assert_eq!(rerun.counter(names::TX_ATTEMPTS, &[PG]), 2);
    assert_eq!(rerun.counter(names::TX_RERUNS, &[PG, ("reason", "40")]), 1);
    assert_eq!(rerun.counter(names::TX_EXHAUSTED, &[PG]), 0);
    assert_eq!(
        rerun.histogram_count(names::TX_DURATION, &[PG, ("outcome", "committed")]),
        1
    );

    // Conflicts every time: exhausted after two attempts.
    let error = pool
        .transaction_with(TransactionOptions::new().retry(quick_retry(2)), |tx| {
            async move {
                tx.batch_execute(CONFLICT).await?;
                Ok(())
            }
            .scoped()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::TransactionRetriesExhausted { .. }),
        "{error:?}"
    );
    let exhausted = Reading::take(&snapshotter);
    assert_eq!(exhausted.counter(names::TX_ATTEMPTS, &[PG]), 2);
    assert_eq!(
        exhausted.counter(names::TX_RERUNS, &[PG, ("reason", "40")]),
        1
    );
    assert_eq!(exhausted.counter(names::TX_EXHAUSTED, &[PG]), 1);
    assert_eq!(
        exhausted.histogram_count(names::TX_DURATION, &[PG, ("outcome", "failed")]),
        1
    );

    // A COMMIT whose answer is lost: resolved as committed.
    let insert = |id: i32| {
        pool.transaction_with(TransactionOptions::new().retry(quick_retry(3)), move |tx| {
            async move {
                tx.execute("INSERT INTO t VALUES ($1)", &[&id]).await?;
                Ok(())
            }
            .scoped()
        })
    };
    proxy.at_commit(AtCommit::DeliverThenCut);
    insert(1).await.unwrap();
    let committed = Reading::take(&snapshotter);
    assert_eq!(
        committed.counter(names::TX_COMMIT_UNKNOWN, &[PG, ("outcome", "committed")]),
        1
    );
    assert_eq!(committed.counter(names::TX_ATTEMPTS, &[PG]), 1);

    // A COMMIT that never arrived: resolved as aborted, run again.
    proxy.at_commit(AtCommit::DropAndCut);
    insert(2).await.unwrap();
    let aborted = Reading::take(&snapshotter);
    assert_eq!(
        aborted.counter(names::TX_COMMIT_UNKNOWN, &[PG, ("outcome", "aborted")]),
        1
    );
    assert_eq!(
        aborted.counter(names::TX_RERUNS, &[PG, ("reason", "connection")]),
        1
    );
    assert_eq!(aborted.counter(names::TX_ATTEMPTS, &[PG]), 2);

    // MongoDB: a commit and an abort.
    let mongo = manager.mongo().unwrap();
    let error = support::commit_one_then_abort_one(mongo).await;
    assert_eq!(error.to_string(), "transaction rolled back: no");
    let m = Reading::take(&snapshotter);
    assert_eq!(m.counter(names::TX_ATTEMPTS, &[MONGO]), 2);
    assert_eq!(
        m.histogram_count(names::TX_DURATION, &[MONGO, ("outcome", "committed")]),
        1
    );
    assert_eq!(
        m.histogram_count(names::TX_DURATION, &[MONGO, ("outcome", "failed")]),
        1
    );
    assert_eq!(m.counter(names::TX_RERUNS, &[MONGO]), 0);
}

//! Failover with a multi-host URL and `target_session_attrs=read-write`:
//! the pool follows the writable server. A streaming standby promoted after
//! its primary stopped, under a 32-task write load, loses no acknowledged
//! write; a primary that turns read-only in place (a switchover that keeps
//! the old primary up) has its connections shed on the first refused write.

mod support;

use std::time::{Duration, Instant};

use support::{PgCluster, WriteLoad, every_task_wrote_again, missing, pg_config, stored_ids};

const TASKS: usize = 32;

/// Both servers in one URL, writable one wanted; writes wait for the
/// synchronous standby (the clusters run with `synchronous_commit = off`
/// by default, a session setting).
fn failover_url(first: &PgCluster, second: &PgCluster) -> String {
    format!(
        "postgres://postgres:{}@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write&options=-c%20synchronous_commit%3Don",
        first.password, first.port, second.port
    )
}

fn config(url: &str) -> dbmanager::Config {
    let mut config = pg_config(url);
    config.postgres.pool.max_size = 16;
    config.postgres.pool.min_idle = 4;
    config.postgres.pool.wait_timeout = Duration::from_secs(2);
    config.postgres.pool.connect_timeout = Duration::from_secs(1);
    config
}

async fn wait_for_writes(load: &WriteLoad, since: Instant, what: &str) {
    assert!(
        support::eventually(Duration::from_secs(30), async || load
            .successes_since(since)
            >= 500)
        .await,
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_takes_the_writes_with_none_lost() {
    let primary = PgCluster::start_new("failover-pw");
    primary.psql("CREATE TABLE writes (id bigint PRIMARY KEY)");
    let standby = primary.standby();
    let db = support::build(config(&failover_url(&primary, &standby))).await;
    let load = WriteLoad::start(&db, TASKS);
    wait_for_writes(&load, Instant::now(), "the load runs on the primary").await;

    primary.stop();
    let stopped = Instant::now();
    standby.promote();
    let promoted = Instant::now();
    wait_for_writes(
        &load,
        promoted,
        "the same manager writes to the promoted standby",
    )
    .await;
    let (acknowledged, failures) = load.stop().await;

    let slowest = every_task_wrote_again(&acknowledged, TASKS, promoted);
    println!(
        "{} writes acknowledged, {} failed; promotion took {:?}; every task wrote again within {slowest:?} of the promotion ({:?} after the primary stopped)",
        acknowledged.len(),
        failures.len(),
        promoted - stopped,
        slowest + (promoted - stopped),
    );
    assert!(slowest < Duration::from_secs(10), "{slowest:?}");
    for failure in &failures {
        assert!(
            failure.is_transient(),
            "a failure during the failover is transient: {failure}"
        );
    }
    let lost = missing(&acknowledged, &stored_ids(&standby.url("postgres")).await);
    assert!(lost.is_empty(), "{} acknowledged writes lost", lost.len());
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_a_primary_turned_read_only_are_shed() {
    let first = PgCluster::start_new("switch-pw");
    let second = PgCluster::start_new("switch-pw");
    for cluster in [&first, &second] {
        cluster.psql("CREATE TABLE writes (id bigint PRIMARY KEY)");
    }
    let read_only = |cluster: &PgCluster, on: bool| {
        cluster.psql(&format!(
            "ALTER SYSTEM SET default_transaction_read_only = {on}; SELECT pg_reload_conf();"
        ));
    };
    read_only(&second, true);
    let db = support::build(config(&failover_url(&first, &second))).await;
    let load = WriteLoad::start(&db, TASKS);
    wait_for_writes(&load, Instant::now(), "the load runs on the first server").await;

    // The switchover: the first server stays up but refuses writes; the
    // second takes them.
    read_only(&second, false);
    read_only(&first, true);
    let switched = Instant::now();
    wait_for_writes(&load, switched, "the pool moved to the writable server").await;
    let (acknowledged, failures) = load.stop().await;
    let slowest = every_task_wrote_again(&acknowledged, TASKS, switched);
    println!(
        "{} writes acknowledged, {} refused during the switchover; every task wrote again within {slowest:?}",
        acknowledged.len(),
        failures.len()
    );
    assert!(slowest < Duration::from_secs(10), "{slowest:?}");
    let stats = db.postgres().unwrap().stats();
    assert!(
        stats.closed_broken >= 1,
        "connections to the read-only server were shed: {stats:?}"
    );
    // What was acknowledged after the switch went to the second server.
    let on_second = stored_ids(&second.url("postgres")).await;
    let after: Vec<_> = acknowledged
        .iter()
        .filter(|(_, at)| *at > switched + slowest)
        .copied()
        .collect();
    assert!(!after.is_empty());
    assert!(missing(&after, &on_second).is_empty());
    db.shutdown().await.unwrap();
}

//! Failover the way production teams run it: a three-member Patroni
//! cluster (etcd, synchronous mode), the manager on a URL naming every
//! member with `target_session_attrs=read-write`, 32 tasks writing. First
//! a planned switchover (`patronictl switchover`), then the leader killed
//! (`kill -9` of Patroni and PostgreSQL). No acknowledged write is lost,
//! and every task writes again soon after Patroni has a new leader.

mod support;

use std::time::{Duration, Instant};

use support::{Patroni, WriteLoad, every_task_wrote_again, missing, pg_config, sql, stored_ids};

const TASKS: usize = 32;

async fn writes_again(load: &WriteLoad, since: Instant, what: &str) {
    assert!(
        support::eventually(Duration::from_secs(60), async || load
            .successes_since(since)
            >= 500)
        .await,
        "{what}"
    );
}

/// Stops the load; checks every failure was transient and every
/// acknowledged write is on `leader`; returns how long after `since` every
/// task wrote again, and the counts: acknowledged, failed, lost (none).
async fn settle(
    cluster: &Patroni,
    load: WriteLoad,
    leader: usize,
    since: Instant,
) -> (Duration, usize, usize, usize) {
    let (acknowledged, failures) = load.stop().await;
    for failure in &failures {
        assert!(
            failure.is_transient(),
            "a failure during the change of leader is transient: {failure}"
        );
    }
    let stored = stored_ids(&cluster.member_url(leader, "postgres")).await;
    let lost = missing(&acknowledged, &stored);
    assert!(lost.is_empty(), "{} acknowledged writes lost", lost.len());
    let slowest = every_task_wrote_again(&acknowledged, TASKS, since);
    (slowest, acknowledged.len(), failures.len(), lost.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_follows_patroni_through_a_switchover_and_a_killed_leader() {
    let mut cluster = Patroni::start(3);
    let (leader, _) = cluster.wait_for_leader(None, Duration::from_secs(60));
    sql(
        &cluster.member_url(leader, "postgres"),
        "CREATE TABLE writes (id bigint PRIMARY KEY)",
    )
    .await;
    let mut config = pg_config(&cluster.url("postgres"));
    config.postgres.pool.max_size = 16;
    config.postgres.pool.min_idle = 4;
    config.postgres.pool.wait_timeout = Duration::from_secs(2);
    config.postgres.pool.connect_timeout = Duration::from_secs(1);
    let db = support::build(config).await;

    // A planned switchover to the synchronous standby.
    let candidate = (0..3)
        .find(|&i| i != leader && cluster.is_synchronous(i))
        .expect("a synchronous standby");
    let load = WriteLoad::start(&db, TASKS);
    writes_again(&load, Instant::now(), "the load runs on the leader").await;
    let started = Instant::now();
    tokio::task::block_in_place(|| cluster.switchover(leader, candidate, Duration::from_secs(60)));
    let patroni_took = started.elapsed();
    let switched = Instant::now();
    let (switched_to, _) = tokio::task::block_in_place(|| {
        cluster.wait_for_leader(Some(leader), Duration::from_secs(60))
    });
    assert_eq!(switched_to, candidate);
    writes_again(
        &load,
        switched,
        "the same manager writes after the switchover",
    )
    .await;
    let (slowest, written, failed, lost) = settle(&cluster, load, candidate, switched).await;
    println!(
        "switchover: patronictl took {patroni_took:?}; every task wrote again {slowest:?} after it returned; {written} writes acknowledged, {failed} failed, {lost} acknowledged lost"
    );
    assert!(slowest < Duration::from_secs(10), "{slowest:?}");

    // The new leader crashes.
    let leader = candidate;
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    tokio::task::block_in_place(|| cluster.wait_for_replicas(&others, Duration::from_secs(60)));
    let load = WriteLoad::start(&db, TASKS);
    writes_again(&load, Instant::now(), "the load runs on the leader").await;
    // Patroni and every PostgreSQL process of the leader gone at once.
    tokio::task::block_in_place(|| cluster.kill(leader));
    let killed = Instant::now();
    let (new_leader, patroni_took) = tokio::task::block_in_place(|| {
        cluster.wait_for_leader(Some(leader), Duration::from_secs(60))
    });
    writes_again(
        &load,
        killed + patroni_took,
        "the same manager writes to the new leader",
    )
    .await;
    let (slowest, written, failed, lost) = settle(&cluster, load, new_leader, killed).await;
    println!(
        "leader killed: Patroni elected a new leader {patroni_took:?} after the kill; every task wrote again {slowest:?} after the kill ({:?} after the new leader); {written} writes acknowledged, {failed} failed, {lost} acknowledged lost",
        slowest.saturating_sub(patroni_took),
    );
    // Within Patroni's own switch time plus a few seconds of reconnects.
    assert!(
        slowest < patroni_took + Duration::from_secs(10),
        "{slowest:?}"
    );
    db.shutdown().await.unwrap();
}

//! Failover the way production teams run it: a three-member Patroni
//! cluster (etcd, synchronous mode), the manager on a URL naming every
//! member with `target_session_attrs=read-write`, 32 tasks writing. First
//! a planned switchover (`patronictl switchover`), then the leader killed
//! (`kill -9` of Patroni and PostgreSQL). No acknowledged write is lost,
//! and every task writes again soon after Patroni has a new leader. Every
//! member is also listed as a read replica: at each stage, reads from
//! `replica()` go to the members that are standbys then, never to the
//! leader, while the load writes.

mod support;

use std::time::{Duration, Instant};

use dbmanager::DatabaseManager;
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

/// Waits (bounded) until the manager sees exactly `standbys` as routable
/// read replicas (replica `i + 1` is member `i`) and the leader as out of
/// recovery, then checks that reads from `replica()` land on standbys
/// only. Prints each standby's lag as the manager measured it beside
/// Patroni's own figure.
async fn reads_go_to_standbys(
    db: &DatabaseManager,
    cluster: &Patroni,
    leader: usize,
    standbys: &[usize],
    stage: &str,
) {
    let mut last = None;
    let settled = support::eventually(Duration::from_secs(60), async || {
        let report = db.health().await;
        let replicas = report.components["postgres"].replicas.clone().unwrap();
        let ok = replicas
            .iter()
            .enumerate()
            .all(|(i, r)| r.routable == standbys.contains(&i))
            && replicas[leader].in_recovery == Some(false);
        last = Some(replicas);
        ok
    })
    .await;
    assert!(
        settled,
        "{stage}: standbys {standbys:?} routable, leader {leader} not: {last:#?}"
    );
    let replicas = db.postgres().unwrap().replica();
    for _ in 0..20 {
        let connection = replicas.get().await.unwrap();
        let row = connection
            .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
            .await
            .unwrap();
        let port = row.get::<_, i32>(0) as u16;
        assert!(
            standbys.iter().any(|&i| cluster.pg_port(i) == port) && row.get::<_, bool>(1),
            "{stage}: a replica read went to port {port}, not a standby"
        );
    }
    for (i, replica) in last.iter().flatten().enumerate() {
        if standbys.contains(&i) {
            println!(
                "{stage}: member {i} lag {:?} ms, {:?} bytes behind; Patroni says {:?} bytes",
                replica.lag_ms,
                replica.lag_bytes,
                cluster.patroni_lag(i)
            );
        }
    }
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
    // Every member a read replica, on the URL's credentials: whichever are
    // standbys at the moment take the reads.
    config.postgres.replicas.hosts = (0..3).map(|i| cluster.host(i)).collect();
    config.postgres.replicas.max_lag = Duration::from_secs(5);
    config.postgres.replicas.check_interval = Duration::from_millis(200);
    config.postgres.replicas.check_timeout = Duration::from_secs(1);
    let db = support::build(config).await;

    // A planned switchover to the synchronous standby.
    let candidate = (0..3)
        .find(|&i| i != leader && cluster.is_synchronous(i))
        .expect("a synchronous standby");
    let load = WriteLoad::start(&db, TASKS);
    writes_again(&load, Instant::now(), "the load runs on the leader").await;
    let standbys: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    reads_go_to_standbys(&db, &cluster, leader, &standbys, "before the switchover").await;
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
    reads_go_to_standbys(&db, &cluster, leader, &others, "after the switchover").await;
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
    let survivor: Vec<usize> = (0..3).filter(|&i| i != leader && i != new_leader).collect();
    reads_go_to_standbys(&db, &cluster, new_leader, &survivor, "after the kill").await;
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

//! MongoDB stopped under load: operations fail with a transient, classified
//! error within the server selection timeout, and succeed again once the
//! server is back, through the same manager; health follows.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dbmanager::mongodb::bson::{Document, doc};
use dbmanager::{Config, DatabaseUrl, Error, HealthStatus};
use support::{MongoServer, unique_name};

const SELECTION: Duration = Duration::from_secs(2);

/// One operation of the load: when it ended, how long it took, and how.
struct Outcome {
    ended: Instant,
    took: Duration,
    error: Option<Error>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_fail_transiently_while_the_server_is_down_and_succeed_after_it_returns() {
    let user = "faults";
    let password = "faults-pw";
    let mut server = MongoServer::start(user, password);
    let port = server.port;
    let mut config = Config::default();
    config.mongodb.url = Some(DatabaseUrl::new(server.url()));
    config.mongodb.database = Some(unique_name("faults"));
    config.mongodb.pool.min_size = 2;
    config.mongodb.pool.max_size = 8;
    config.mongodb.server_selection_timeout = SELECTION;
    config.mongodb.connect_timeout = Duration::from_secs(2);
    config.health.probe_timeout = Duration::from_secs(2);
    let db = support::build(config).await;

    // Eight tasks insert and find, back to back, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(std::sync::Mutex::new(Vec::<Outcome>::new()));
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let (db, stop, outcomes) = (db.clone(), stop.clone(), outcomes.clone());
            tokio::spawn(async move {
                let collection = db
                    .mongo()
                    .unwrap()
                    .database()
                    .collection::<Document>("load");
                let mut n = 0i64;
                while !stop.load(Ordering::Acquire) {
                    n += 1;
                    let started = Instant::now();
                    let result = async {
                        collection.insert_one(doc! { "task": task, "n": n }).await?;
                        collection.find_one(doc! { "task": task, "n": n }).await?;
                        Ok::<_, dbmanager::mongodb::error::Error>(())
                    }
                    .await;
                    let failed = result.is_err();
                    outcomes.lock().unwrap().push(Outcome {
                        ended: Instant::now(),
                        took: started.elapsed(),
                        error: result.err().map(Error::from),
                    });
                    if failed {
                        // Keep the loop from spinning on instant failures.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    let successes_after = |since: Instant| {
        let outcomes = outcomes.clone();
        move || {
            outcomes
                .lock()
                .unwrap()
                .iter()
                .filter(|o| o.ended > since && o.error.is_none())
                .count()
        }
    };
    let start = Instant::now();
    let served = successes_after(start);
    assert!(
        support::eventually(Duration::from_secs(20), async || served() >= 20).await,
        "the load runs"
    );

    server.kill();
    let killed = Instant::now();
    assert!(
        support::eventually(Duration::from_secs(20), async || {
            outcomes
                .lock()
                .unwrap()
                .iter()
                .any(|o| o.ended > killed && o.error.is_some())
        })
        .await,
        "operations fail while the server is down"
    );
    assert!(
        support::eventually(Duration::from_secs(10), async || db.health().await.status
            == HealthStatus::Down)
        .await,
        "health goes down"
    );
    assert!(!db.readiness().await);

    let _server = tokio::task::spawn_blocking(move || MongoServer::start_on(port, user, password))
        .await
        .unwrap();
    let restarted = Instant::now();
    let served = successes_after(restarted);
    assert!(
        support::eventually(Duration::from_secs(30), async || served() >= 20).await,
        "the same manager serves again once the server is back"
    );
    assert!(
        support::eventually(Duration::from_secs(10), async || db.health().await.status
            == HealthStatus::Up)
        .await,
        "health comes back up"
    );
    stop.store(true, Ordering::Release);
    for task in tasks {
        task.await.unwrap();
    }

    db.shutdown().await.unwrap();

    let outcomes = outcomes.lock().unwrap();
    let failures: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    assert!(!failures.is_empty());
    for failure in &failures {
        let error = failure.error.as_ref().unwrap();
        assert!(error.is_transient(), "not classified transient: {error}");
        // Two selections (insert and find) at most, plus scheduling.
        assert!(
            failure.took < SELECTION * 2 + Duration::from_secs(3),
            "a failure took {:?}: {error}",
            failure.took
        );
        assert!(
            !error.to_string().contains("faults-pw"),
            "no password in {error}"
        );
    }
    println!(
        "{} operations, {} failed while the server was down",
        outcomes.len(),
        failures.len()
    );
}

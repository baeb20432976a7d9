//! A write load for fault tests: tasks inserting ids of their own into a
//! `writes (id bigint PRIMARY KEY)` table, recording what the server
//! acknowledged and when, so a test can prove no acknowledged write was
//! lost and tell when every task wrote again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbmanager::{DatabaseManager, Error};

/// Each task inserts ids of its own, one after another, until stopped, and
/// records those the server acknowledged and when each success came.
pub struct WriteLoad {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<(i64, Instant)>>>,
    pub failures: Arc<Mutex<Vec<Error>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl WriteLoad {
    pub fn start(db: &DatabaseManager, tasks: usize) -> WriteLoad {
        // Loads started one after another in a test write disjoint ids.
        static ROUNDS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
        let round = ROUNDS.fetch_add(1, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..tasks as i64)
            .map(|task| {
                let (db, stop) = (db.clone(), stop.clone());
                let (acknowledged, failures) = (acknowledged.clone(), failures.clone());
                tokio::spawn(async move {
                    let mut n = 0i64;
                    // A write whose outcome was unknown (the connection lost
                    // around its commit) is tried again with the same id: it
                    // may have committed, so a conflict is no error.
                    while !stop.load(Ordering::Acquire) {
                        let id = task * 1_000_000_000 + round * 10_000_000 + n;
                        let written = async {
                            let client = db.postgres()?.get().await?;
                            client
                                .execute("INSERT INTO writes (id) VALUES ($1) ON CONFLICT (id) DO NOTHING", &[&id])
                                .await?;
                            Ok::<_, Error>(())
                        }
                        .await;
                        match written {
                            Ok(()) => {
                                acknowledged.lock().unwrap().push((id, Instant::now()));
                                n += 1;
                            }
                            Err(e) => {
                                failures.lock().unwrap().push(e);
                                // Do not spin on instant failures.
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        WriteLoad {
            stop,
            acknowledged,
            failures,
            tasks,
        }
    }

    pub fn successes_since(&self, since: Instant) -> usize {
        let acknowledged = self.acknowledged.lock().unwrap();
        acknowledged.iter().filter(|(_, at)| *at > since).count()
    }

    /// Stops the tasks; the acknowledged ids and the failures.
    pub async fn stop(self) -> (Vec<(i64, Instant)>, Vec<Error>) {
        self.stop.store(true, Ordering::Release);
        for task in self.tasks {
            task.await.unwrap();
        }
        let acknowledged = std::mem::take(&mut *self.acknowledged.lock().unwrap());
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (acknowledged, failures)
    }
}

/// The ids in the table.
pub async fn stored_ids(url: &str) -> HashSet<i64> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(connection);
    let ids = client
        .query("SELECT id FROM writes", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    drop(client);
    let _ = task.await;
    ids
}

/// How long after `since` the slowest task's first acknowledged write came
/// (panics if a task never wrote after it).
pub fn every_task_wrote_again(
    acknowledged: &[(i64, Instant)],
    tasks: usize,
    since: Instant,
) -> Duration {
    let mut first_again = vec![None; tasks];
    for (id, at) in acknowledged {
        let task = (*id / 1_000_000_000) as usize;
        if *at > since && first_again[task].is_none_or(|first: Instant| *at < first) {
            first_again[task] = Some(*at);
        }
    }
    first_again
        .iter()
        .map(|first| first.expect("every task wrote again") - since)
        .max()
        .unwrap_or_default()
}

/// The acknowledged ids the server does not have.
pub fn missing(acknowledged: &[(i64, Instant)], stored: &HashSet<i64>) -> Vec<i64> {
    acknowledged
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !stored.contains(id))
        .collect()
}

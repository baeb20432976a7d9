//! The session model reads the server's replies through the framer, which
//! reads whole messages in place when a read holds them and copies the
//! rest aside: against a real server, every shape of reply (rows larger
//! than any read, many small rows, COPY both ways, NOTICE floods,
//! parameter changes, notifications, long errors, pipelined statements)
//! leaves the pool judging the connection exactly: a clean session is
//! reused as is (same backend, nothing rolled back, cancelled or closed),
//! and one left inside a transaction is rolled back before the next caller.

mod support;

use std::time::Duration;

use bytes::Bytes;
use dbmanager::config::RecyclingMethod;
use dbmanager::{Config, DatabaseManager, PooledConnection};
use futures_util::{SinkExt, StreamExt};
use support::{TestDb, build, pg_config, query_i64, sql};

fn one_connection(url: &str, method: RecyclingMethod) -> Config {
    let mut config = pg_config(url);
    config.postgres.pool.max_size = 1;
    config.postgres.pool.min_idle = 1;
    config.postgres.pool.recycling = method;
    config.postgres.pool.recycle_timeout = Duration::from_secs(30);
    config.postgres.pool.wait_timeout = Duration::from_secs(40);
    config
}

/// What the pool did to connections, as its counters say.
#[derive(Debug, PartialEq, Clone, Copy)]
struct Judged {
    created: u64,
    closed_broken: u64,
    abandoned_cancelled: u64,
    closed_abandoned: u64,
    rolled_back: u64,
}

fn judged(manager: &DatabaseManager) -> Judged {
    let stats = manager.postgres().unwrap().stats();
    Judged {
        created: stats.created,
        closed_broken: stats.closed_broken,
        abandoned_cancelled: stats.abandoned_cancelled,
        closed_abandoned: stats.closed_abandoned,
        rolled_back: stats.rolled_back,
    }
}

/// The next checkout gets the very same backend, outside any transaction,
/// and the pool did exactly `rollbacks` more rollbacks and nothing else
/// to the connection since `before`.
async fn next_is_clean(
    manager: &DatabaseManager,
    pid: i32,
    before: Judged,
    rollbacks: u64,
    what: &str,
) {
    let pool = manager.postgres().unwrap();
    let client = pool.get().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    // One simple Query: its statement's timestamp is its transaction's
    // unless a transaction block was already open.
    let rows = client
        .simple_query(
            "SELECT pg_backend_pid(), now() = statement_timestamp(), \
             pg_current_xact_id_if_assigned() IS NULL",
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{what}: no row"));
    assert_eq!(
        row.get(0),
        Some(pid.to_string().as_str()),
        "{what}: another backend"
    );
    assert_eq!(
        row.get(1),
        Some("t"),
        "{what}: the next caller is inside a transaction"
    );
    assert_eq!(
        row.get(2),
        Some("t"),
        "{what}: a transaction id is assigned"
    );
    drop(client);
    let after = judged(manager);
    let expected = Judged {
        rolled_back: before.rolled_back + rollbacks,
        ..before
    };
    assert_eq!(after, expected, "{what}: what the pool did");
    let status = pool.status();
    assert_eq!(
        (status.open, status.in_use, status.waiting),
        (1, 0, 0),
        "{what}: {status}"
    );
}

async fn pid_of(manager: &DatabaseManager) -> i32 {
    let client = manager.postgres().unwrap().get().await.unwrap();
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

async fn checkout(manager: &DatabaseManager) -> PooledConnection {
    manager
        .postgres()
        .unwrap()
        .get()
        .await
        .expect("a connection")
}

const METHODS: [RecyclingMethod; 2] = [RecyclingMethod::Fast, RecyclingMethod::Verified];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_shape_leaves_a_clean_session_reused_as_is() {
    let db = TestDb::create("framing").await;
    sql(&db.url, "CREATE TABLE sink (a int, b text)").await;
    for method in METHODS {
        let manager = build(one_connection(&db.url, method.clone())).await;
        let pid = pid_of(&manager).await;
        let m = &manager;

        macro_rules! step {
            ($what:expr, $rollbacks:expr, $body:expr) => {{
                let before = judged(m);
                $body;
                next_is_clean(
                    m,
                    pid,
                    before,
                    $rollbacks,
                    &format!("{method:?}: {}", $what),
                )
                .await;
            }};
        }

        step!("a 1 MB row, extended", 0, {
            let c = checkout(m).await;
            let row = c
                .query_one("SELECT repeat('x', 1000000)", &[])
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0).len(), 1_000_000);
        });
        step!("a 4 MB row, simple", 0, {
            let c = checkout(m).await;
            let rows = c.simple_query("SELECT repeat('x', 4000000)").await.unwrap();
            let value = rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::len),
                _ => None,
            });
            assert_eq!(value, Some(4_000_000));
        });
        step!("100k small rows of varied sizes", 0, {
            let c = checkout(m).await;
            let rows = c
                .query(
                    "SELECT g, repeat('y', g % 300) FROM generate_series(1, 100000) g",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(rows.len(), 100_000);
        });
        step!("empty rows and empty strings", 0, {
            let c = checkout(m).await;
            let rows = c
                .simple_query("SELECT FROM generate_series(1, 50000); SELECT ''; ;")
                .await
                .unwrap();
            assert!(rows.len() > 50_000);
        });
        step!("COPY OUT read to its end", 0, {
            let c = checkout(m).await;
            let stream = c
                .copy_out("COPY (SELECT g, repeat('z', g % 1000) FROM generate_series(1, 20000) g) TO STDOUT")
                .await
                .unwrap();
            let mut stream = std::pin::pin!(stream);
            let mut bytes = 0usize;
            while let Some(chunk) = stream.next().await {
                bytes += chunk.unwrap().len();
            }
            assert!(bytes > 10_000_000);
        });
        step!("COPY OUT of one 5 MB line", 0, {
            let c = checkout(m).await;
            let stream = c
                .copy_out("COPY (SELECT repeat('w', 5000000)) TO STDOUT")
                .await
                .unwrap();
            let mut stream = std::pin::pin!(stream);
            let mut bytes = 0usize;
            while let Some(chunk) = stream.next().await {
                bytes += chunk.unwrap().len();
            }
            assert_eq!(bytes, 5_000_001);
        });
        step!("COPY IN of 8 MB", 0, {
            let c = checkout(m).await;
            let sink = c.copy_in("COPY sink (a, b) FROM STDIN").await.unwrap();
            let mut sink = std::pin::pin!(sink);
            let line = format!("1\t{}\n", "v".repeat(1000));
            for _ in 0..8 {
                sink.send(Bytes::from(line.repeat(1000))).await.unwrap();
            }
            assert_eq!(sink.as_mut().finish().await.unwrap(), 8000);
        });
        step!("a NOTICE flood", 0, {
            let c = checkout(m).await;
            c.batch_execute(
                "SET client_min_messages = notice; \
                 DO $$ BEGIN FOR i IN 1..5000 LOOP RAISE NOTICE '%', repeat('n', i % 700); END LOOP; END $$",
            )
            .await
            .unwrap();
        });
        step!("parameter changes", 0, {
            let c = checkout(m).await;
            let long = "p".repeat(63);
            c.batch_execute(&format!(
                "SET application_name = '{long}'; SET TimeZone = 'Pacific/Chatham'; \
                 SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'iso_8601'; RESET ALL"
            ))
            .await
            .unwrap();
        });
        step!("notifications of 7999 bytes", 0, {
            let c = checkout(m).await;
            c.batch_execute("LISTEN framing").await.unwrap();
            for _ in 0..20 {
                c.batch_execute(&format!("NOTIFY framing, '{}'", "q".repeat(7999)))
                    .await
                    .unwrap();
            }
            c.batch_execute("UNLISTEN *").await.unwrap();
        });
        step!("an error of 10 kB, autocommit", 0, {
            let c = checkout(m).await;
            let e = c
                .batch_execute("DO $$ BEGIN RAISE EXCEPTION '%', repeat('e', 10000) USING DETAIL = repeat('d', 10000), HINT = repeat('h', 300); END $$")
                .await
                .unwrap_err();
            assert!(e.as_db_error().unwrap().message().len() >= 10_000);
        });
        step!("an error of 10 kB mid-pipeline", 0, {
            let c = checkout(m).await;
            let bad = "DO $$ BEGIN RAISE EXCEPTION '%', repeat('e', 10000); END $$";
            let (a, b, d) = tokio::join!(
                c.query("SELECT repeat('a', 300000) FROM generate_series(1, 4)", &[]),
                c.execute(bad, &[]),
                c.query("SELECT g FROM generate_series(1, 30000) g", &[]),
            );
            assert_eq!(a.unwrap().len(), 4);
            assert!(b.is_err());
            assert_eq!(d.unwrap().len(), 30_000);
        });
        step!("pipelined statements with large rows", 0, {
            let c = checkout(m).await;
            let queries = (0..16).map(|i| {
                let c = &c;
                async move {
                    c.query_one(&format!("SELECT repeat('r', {})", 1 + i * 70_001), &[])
                        .await
                        .unwrap()
                        .get::<_, String>(0)
                        .len()
                }
            });
            let lengths = futures_util::future::join_all(queries).await;
            assert_eq!(lengths, (0..16).map(|i| 1 + i * 70_001).collect::<Vec<_>>());
        });

        step!("a 4 MB parameter and a 1 MB query text", 0, {
            let c = checkout(m).await;
            let big = "k".repeat(4_000_000);
            let n: i32 = c
                .query_one("SELECT length($1::text)", &[&big])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 4_000_000);
            c.batch_execute(&format!("SELECT '{}'", "t".repeat(1_000_000)))
                .await
                .unwrap();
        });
        step!("BEGIN, a write with a 4 MB parameter, then returned", 1, {
            let c = checkout(m).await;
            c.batch_execute("BEGIN").await.unwrap();
            let big = "k".repeat(4_000_000);
            c.execute("INSERT INTO sink VALUES (-1, $1)", &[&big])
                .await
                .unwrap();
        });

        // Left inside a transaction after large replies: rolled back.
        step!("BEGIN, a write and a 2 MB row, then returned", 1, {
            let c = checkout(m).await;
            c.batch_execute("BEGIN; INSERT INTO sink VALUES (-1, 'in the transaction')")
                .await
                .unwrap();
            let row = c
                .query_one("SELECT repeat('x', 2000000)", &[])
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0).len(), 2_000_000);
        });
        step!("BEGIN, COPY OUT of 10 MB, then returned", 1, {
            let c = checkout(m).await;
            c.batch_execute("BEGIN; INSERT INTO sink VALUES (-1, 'in the transaction')")
                .await
                .unwrap();
            let stream = c
                .copy_out(
                    "COPY (SELECT repeat('z', 1000) FROM generate_series(1, 10000)) TO STDOUT",
                )
                .await
                .unwrap();
            let mut stream = std::pin::pin!(stream);
            while let Some(chunk) = stream.next().await {
                chunk.unwrap();
            }
        });
        step!(
            "BEGIN, a NOTICE flood, a 10 kB error: failed, then returned",
            1,
            {
                let c = checkout(m).await;
                c.batch_execute("BEGIN; INSERT INTO sink VALUES (-1, 'in the transaction')")
                    .await
                    .unwrap();
                c.batch_execute("DO $$ BEGIN FOR i IN 1..2000 LOOP RAISE NOTICE '%', repeat('n', 400); END LOOP; END $$")
                .await
                .unwrap();
                let e = c
                    .batch_execute("DO $$ BEGIN RAISE EXCEPTION '%', repeat('e', 10000); END $$")
                    .await
                    .unwrap_err();
                assert!(e.as_db_error().is_some());
            }
        );
        step!(
            "BEGIN and 100k rows pipelined with the write, then returned",
            1,
            {
                let c = checkout(m).await;
                c.batch_execute("BEGIN").await.unwrap();
                let (w, r) = tokio::join!(
                    c.execute("INSERT INTO sink VALUES (-1, 'in the transaction')", &[]),
                    c.query(
                        "SELECT g, repeat('y', g % 300) FROM generate_series(1, 100000) g",
                        &[]
                    ),
                );
                w.unwrap();
                assert_eq!(r.unwrap().len(), 100_000);
            }
        );
        step!("a committed transaction with a 3 MB row", 0, {
            let mut c = checkout(m).await;
            let tx = c.transaction().await.unwrap();
            tx.query_one("SELECT repeat('x', 3000000)", &[])
                .await
                .unwrap();
            tx.commit().await.unwrap();
        });

        assert_eq!(
            query_i64(&db.url, "SELECT count(*) FROM sink WHERE a = -1").await,
            0,
            "{method:?}: a write of a transaction returned open stayed"
        );
        manager.shutdown().await.unwrap();
    }
}

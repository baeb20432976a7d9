//! The transaction helpers where services call them: closures that borrow
//! their surroundings (a captured `&String`, fields of a request struct, a
//! counter incremented per attempt) inside `tokio::spawn` and inside an
//! axum handler, for PostgreSQL and MongoDB; and warnings that name the
//! caller's line.

mod support;

use std::time::Duration;

use dbmanager::mongodb::bson::{Document, doc};
use dbmanager::postgres::TransactionOptions;
use dbmanager::retry::Jitter;
use dbmanager::{DatabaseManager, DatabaseUrl, RetryPolicy, TxFutureExt};
use support::{TestDb, pg_config, query_i64, sql};

/// What a handler receives.
struct TransferRequest {
    from: i64,
    to: i64,
    amount: i64,
    note: String,
}

fn quick_retry() -> RetryPolicy {
    RetryPolicy::exponential()
        .initial_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(20))
        .max_attempts(3)
        .jitter(Jitter::None)
}

/// A transfer as a service writes it: the closure borrows the request's
/// fields and a table name, and counts its attempts. The first attempt
/// meets a serialization failure, so the counter shows the rerun.
async fn transfer(
    db: &DatabaseManager,
    req: &TransferRequest,
    table: &String,
) -> dbmanager::Result<(i64, u32)> {
    let mut attempts = 0u32;
    let options = TransactionOptions::new().retry(quick_retry());
    let balance = db
        .postgres()?
        .transaction_with(options, |tx| {
            attempts += 1;
            let first = attempts == 1;
            async move {
                tx.execute(
                    &format!("UPDATE {table} SET balance = balance - $2 WHERE id = $1"),
                    &[&req.from, &req.amount],
                )
                .await?;
                tx.execute(
                    &format!("UPDATE {table} SET balance = balance + $2 WHERE id = $1"),
                    &[&req.to, &req.amount],
                )
                .await?;
                if first {
                    tx.batch_execute(
                        "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$",
                    )
                    .await?;
                }
                let row = tx
                    .query_one(
                        &format!("SELECT balance FROM {table} WHERE id = $1"),
                        &[&req.from],
                    )
                    .await?;
                Ok(row.get(0))
            }
            .scoped()
        })
        .await?;
    Ok((balance, attempts))
}

/// The audit record of a transfer, in a MongoDB transaction whose closure
/// borrows the request's note and counts its attempts.
async fn audit(db: &DatabaseManager, req: &TransferRequest) -> dbmanager::Result<u32> {
    let audits = db.mongo()?.database().collection::<Document>("audits");
    let mut attempts = 0u32;
    db.mongo()?
        .transaction(|session| {
            attempts += 1;
            let audits = &audits;
            async move {
                audits
                    .insert_one(doc! { "from": req.from, "to": req.to, "note": &req.note })
                    .session(&mut *session)
                    .await?;
                Ok(())
            }
            .scoped()
        })
        .await?;
    Ok(attempts)
}

async fn manager_with_accounts(db: &TestDb) -> DatabaseManager {
    sql(
        &db.url,
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL); \
         INSERT INTO accounts VALUES (1, 1000), (2, 0)",
    )
    .await;
    let (mongo_url, _) = support::mongo();
    let mut config = pg_config(&db.url);
    config.mongodb.url = Some(DatabaseUrl::new(&mongo_url));
    config.mongodb.database = Some(support::unique_name("tx_usage"));
    support::build(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn borrowing_closures_run_inside_tokio_spawn() {
    let db = TestDb::create("tx_spawn").await;
    let _mongo = support::mongo();
    let manager = manager_with_accounts(&db).await;

    let task = tokio::spawn({
        let manager = manager.clone();
        async move {
            let req = TransferRequest {
                from: 1,
                to: 2,
                amount: 100,
                note: String::from("rent"),
            };
            let table = String::from("accounts");
            let (balance, attempts) = transfer(&manager, &req, &table).await?;
            let audited = audit(&manager, &req).await?;
            Ok::<_, dbmanager::Error>((balance, attempts, audited))
        }
    });
    let (balance, attempts, audited) = task.await.unwrap().unwrap();

    assert_eq!(balance, 900);
    assert_eq!(attempts, 2, "the counter saw the rerun");
    assert_eq!(audited, 1);
    assert_eq!(
        query_i64(&db.url, "SELECT sum(balance)::bigint FROM accounts").await,
        1000
    );
    assert_eq!(
        query_i64(&db.url, "SELECT balance FROM accounts WHERE id = 2").await,
        100
    );
    let audits = manager
        .mongo()
        .unwrap()
        .database()
        .collection::<Document>("audits");
    assert_eq!(
        audits
            .count_documents(doc! { "note": "rent" })
            .await
            .unwrap(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn borrowing_closures_run_inside_an_axum_handler() {
    use dbmanager::axum::Json;
    use dbmanager::axum::extract::State;
    use dbmanager::axum::routing::post;

    async fn handler(
        State(db): State<DatabaseManager>,
        Json(body): Json<serde_json::Value>,
    ) -> String {
        let number = |key: &str| body[key].as_i64().unwrap_or(0);
        let req = TransferRequest {
            from: number("from"),
            to: number("to"),
            amount: number("amount"),
            note: body["note"].as_str().unwrap_or_default().to_owned(),
        };
        let table = String::from("accounts");
        match transfer(&db, &req, &table).await {
            Ok((balance, attempts)) => match audit(&db, &req).await {
                Ok(audited) => format!("{balance} {attempts} {audited}"),
                Err(e) => format!("mongo error: {e}"),
            },
            Err(e) => format!("postgres error: {e}"),
        }
    }

    let db = TestDb::create("tx_axum").await;
    let _mongo = support::mongo();
    let manager = manager_with_accounts(&db).await;
    let app = dbmanager::axum::Router::new()
        .route("/transfer", post(handler))
        .with_state(manager.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { dbmanager::axum::serve(listener, app).await });

    let (status, body) = support::http(
        addr,
        "POST",
        "/transfer",
        Some(r#"{"from": 1, "to": 2, "amount": 250, "note": "invoice"}"#),
    )
    .await;
    server.abort();

    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "750 2 1");
    assert_eq!(
        query_i64(&db.url, "SELECT balance FROM accounts WHERE id = 2").await,
        250
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_under_the_helper_name_the_callers_line() {
    let logs = support::logs();
    let db = TestDb::create("tx_caller").await;
    let mut config = pg_config(&db.url);
    config.postgres.pool.max_size = 1;
    config.postgres.pool.min_idle = 0;
    // Every checkout that opens a connection is "slow", and a connection
    // held 50 ms is reported as a possible leak.
    config.postgres.pool.slow_acquire_threshold = Some(Duration::from_nanos(1));
    config.postgres.pool.leak_detection_threshold = Some(Duration::from_millis(50));
    let manager = support::build(config).await;
    let pool = manager.postgres().unwrap();
    let logs_ref = &logs;
    // Only what the transaction logs: the build checked out on its own.
    let before = logs.contents().len();

    // The only connection is held until the transaction waits for it:
    // its checkout is slow.
    let held = pool.get().await.unwrap();
    let release = tokio::spawn({
        let manager = manager.clone();
        async move {
            let pool = manager.postgres().unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while pool.status().waiting == 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let waited = pool.status().waiting > 0;
            drop(held);
            waited
        }
    });
    let work = pool.transaction(|tx| {
        async move {
            tx.execute("SELECT 1", &[]).await?;
            // Held until the leak warning is out (bounded).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !logs_ref.contents().contains("possible leak") {
                if tokio::time::Instant::now() >= deadline {
                    return Ok(false);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(true)
        }
        .scoped()
    });
    let line = line!() - 15;
    assert!(work.await.unwrap(), "the leak warning came");
    assert!(
        release.await.unwrap(),
        "the transaction waited for the connection"
    );

    let here = format!("acquired_at=tests/transaction_usage.rs:{line}:");
    let text = logs.contents()[before..].to_owned();
    let slow: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("slow connection acquire"))
        .collect();
    let leak: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("possible leak"))
        .collect();
    assert!(!slow.is_empty(), "{text}");
    assert!(
        slow.iter().all(|l| l.contains(&here)),
        "{slow:?} names {here}"
    );
    assert!(
        leak.iter().all(|l| l.contains(&here)),
        "{leak:?} names {here}"
    );
    assert!(!text.contains("src/postgres/transaction.rs"), "{text}");
}

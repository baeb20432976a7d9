//! A checkout's future stays small. deadpool's checkout future holds the
//! pool's connect future, and the caller's task holds and moves the whole
//! checkout future every time: with the connect inline it weighed 7 KB in a
//! release build, against raw deadpool-postgres' 1.6 KB, and every checkout
//! copied it (docs/benchmarks.md, "Pool overhead").

mod support;

use dbmanager::deadpool_postgres as deadpool;
use dbmanager::tokio_postgres::{self, NoTls};
use support::{TestDb, pg_config};

#[tokio::test]
async fn a_checkout_future_is_no_larger_than_raw_deadpool_postgres_one() {
    let db = TestDb::create("checkout-size").await;
    let manager = support::build(pg_config(&db.url)).await;
    let config: tokio_postgres::Config = db.url.parse().expect("a PostgreSQL URL");
    let raw = deadpool::Pool::builder(deadpool::Manager::new(config, NoTls))
        .max_size(1)
        .build()
        .expect("a deadpool pool");

    let ours = std::mem::size_of_val(&manager.postgres().unwrap().get());
    let theirs = std::mem::size_of_val(&raw.get());
    println!("checkout future: {ours} bytes; raw deadpool-postgres: {theirs} bytes");
    assert!(
        ours <= theirs,
        "a checkout's future is {ours} bytes, raw deadpool-postgres' {theirs}: something large \
         (a connect, a check) is inline in it instead of boxed"
    );
    manager.shutdown().await.unwrap();
}

//! The service of docs/guide.md, whole: migrations, users in PostgreSQL, an
//! audit trail in MongoDB, the health router, and a rollout's graceful stop
//! on SIGTERM or Ctrl-C. docs/guide.md shows this file verbatim (a test keeps
//! them equal).
//!
//! ```text
//! source .tools/run/env        # after scripts/services start
//! cargo run --example guide --features axum
//! ```

use dbmanager::axum::extract::{Path, State};
use dbmanager::axum::http::StatusCode;
use dbmanager::axum::routing::get;
use dbmanager::axum::{self, Json, Router};
use dbmanager::migrate::Bootstrap;
use dbmanager::mongodb::bson::{Document, doc};
use dbmanager::{Config, DatabaseManager};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // defaults < dbmanager.toml < .env < environment; [retry] drives the connect
    let config = Config::load()?;
    let migrations = dbmanager::embed_migrations!("$CARGO_MANIFEST_DIR/migrations")?;
    // Before build(): creates the database if needed, then migrates.
    Bootstrap::new(&config)
        .migrations(&migrations)
        .run()
        .await?;
    let db = DatabaseManager::builder().config(config).build().await?;

    let app = Router::new()
        .route("/users", get(list_users).post(create_user))
        .route("/slow/{ms}", get(slow))
        .with_state(db.clone())
        // The health router carries its own state: merge it after `with_state`.
        .merge(dbmanager::http::health_router(db.clone()));

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    // SIGTERM or Ctrl-C: readiness turns false, requests are still served
    // for shutdown.unready_period, then axum finishes those in flight. The
    // handlers are installed here, before the service says it listens.
    let stop = dbmanager::http::Rollout::new(db.clone()).on_signal();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?; // io::Error
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await?;

    // HTTP has drained; now the databases.
    let report = db.shutdown().await?;
    println!("stopped: drained {} in {:?}", report.drained, report.took);
    Ok(())
}

#[derive(serde::Serialize)]
struct User {
    email: String,
    name: String,
}

// `dbmanager::Error` is an axum response (503 + Retry-After when the
// database is unavailable, 500 otherwise), and `?` converts
// tokio-postgres and MongoDB errors into it.
async fn list_users(
    State(db): State<DatabaseManager>,
) -> Result<Json<Vec<User>>, dbmanager::Error> {
    let client = db.postgres()?.get().await?;
    let rows = client
        .query("SELECT email, name FROM users ORDER BY email", &[])
        .await?;
    let users = rows.iter().map(|r| User {
        email: r.get(0),
        name: r.get(1),
    });
    Ok(Json(users.collect()))
}

#[derive(serde::Deserialize)]
struct NewUser {
    email: String,
    name: String,
}

async fn create_user(
    State(db): State<DatabaseManager>,
    Json(new): Json<NewUser>,
) -> Result<(StatusCode, Json<User>), dbmanager::Error> {
    let mut client = db.postgres()?.get().await?;
    // One transaction: both statements or neither (rolled back on drop).
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO users (email, name) VALUES ($1, $2)",
        &[&new.email, &new.name],
    )
    .await?;
    tx.execute(
        "INSERT INTO system_configs (key, value) VALUES ('last_signup', to_jsonb($1::text))
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now()",
        &[&new.email],
    )
    .await?;
    tx.commit().await?;
    drop(client); // back to the pool before the MongoDB write

    // MongoDB is optional here: audit when it is configured.
    if let Ok(mongo) = db.mongo() {
        let audit = mongo.database().collection::<Document>("audit");
        audit
            .insert_one(doc! { "event": "user_created", "email": &new.email })
            .await?;
    }
    Ok((
        StatusCode::CREATED,
        Json(User {
            email: new.email,
            name: new.name,
        }),
    ))
}

/// A request that takes a while (`pg_sleep`), to watch the graceful stop
/// let it finish.
async fn slow(
    State(db): State<DatabaseManager>,
    Path(ms): Path<u32>,
) -> Result<String, dbmanager::Error> {
    let client = db.postgres()?.get().await?;
    let seconds = f64::from(ms) / 1000.0;
    client.execute("SELECT pg_sleep($1)", &[&seconds]).await?;
    Ok(format!("slept {ms} ms\n"))
}

//! An axum service on both databases: users in PostgreSQL, forum posts with
//! replies and upvotes in MongoDB, health endpoints, Prometheus metrics and
//! a graceful shutdown.
//!
//! ```text
//! cargo run --example service --features axum,metrics            # serve on $PORT (default 8080)
//! cargo run --example service --features axum,metrics -- seed    # insert the demo data, idempotently
//! ```
//!
//! Start-up: load the configuration, bootstrap PostgreSQL (create the
//! database, run the migrations in `migrations/`), connect both databases
//! with retry, ensure the MongoDB indexes. SIGTERM or Ctrl-C: readiness
//! turns false, requests are still served for `shutdown.unready_period`,
//! then the service stops accepting, finishes those in flight and drains
//! the databases (`dbmanager::http::Rollout`).

use std::net::SocketAddr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dbmanager::migrate::Bootstrap;
use dbmanager::mongo::{CollectionIndexes, IndexSpec};
use dbmanager::mongodb::bson::{Document, doc};
use dbmanager::mongodb::options::ReturnDocument;
use dbmanager::{Config, DatabaseManager, Error};
use futures_util::TryStreamExt;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Clone)]
struct App {
    db: DatabaseManager,
    metrics: PrometheusHandle,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,mongodb=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let metrics = PrometheusBuilder::new().install_recorder()?;
    dbmanager::metrics::describe();

    let config = Config::load()?;
    let migrations = dbmanager::embed_migrations!("$CARGO_MANIFEST_DIR/migrations")?;
    let prepared = Bootstrap::new(&config)
        .migrations(&migrations)
        .run()
        .await?;
    tracing::info!(
        already_prepared = prepared.is_noop(),
        "PostgreSQL bootstrapped"
    );

    let db = DatabaseManager::builder().config(config).build().await?;
    let indexes = db.mongo()?.ensure_indexes(&post_indexes()).await?;
    tracing::info!(created = indexes.created.len(), "MongoDB indexes ensured");

    if std::env::args().nth(1).as_deref() == Some("seed") {
        let seeded = seed(&db).await?;
        println!("seeded: {seeded}");
        db.shutdown().await?;
        return Ok(());
    }

    let app = App {
        db: db.clone(),
        metrics,
    };
    let router = Router::new()
        .route("/users", get(list_users).post(create_user))
        .route(
            "/users/{id}",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .route("/posts", get(list_posts).post(create_post))
        .route(
            "/posts/{id}",
            get(get_post).patch(update_post).delete(delete_post),
        )
        .route("/posts/{id}/replies", post(reply))
        .route("/posts/{id}/upvote", post(upvote))
        .route("/slow/{ms}", get(slow_query))
        .route("/metrics", get(render_metrics))
        .with_state(app)
        .merge(dbmanager::http::health_router(db.clone()));

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    // SIGTERM or Ctrl-C: readiness reads "draining" at once, requests are
    // still served for shutdown.unready_period (load balancers catching up),
    // then axum stops accepting and finishes those in flight. The handlers
    // are installed here, before the service says it listens.
    let stop = dbmanager::http::Rollout::new(db.clone()).on_signal();
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await?;

    // HTTP has drained; now the databases.
    let report = db.shutdown().await?;
    println!("stopped: drained {} in {:?}", report.drained, report.took);
    Ok(())
}

fn post_indexes() -> Vec<CollectionIndexes> {
    vec![CollectionIndexes::new(
        "posts",
        [
            IndexSpec::new(doc! { "author": 1, "created_at": -1 }),
            IndexSpec::new(doc! { "upvotes": -1 }),
        ],
    )]
}

// ---------------------------------------------------------------- errors

/// An error as the API shows it: a status and a message, never a secret.
struct ApiError(StatusCode, String);

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let status = match &error {
            Error::PoolTimeout { .. } | Error::ShuttingDown { .. } | Error::Connect { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ if error.sqlstate() == Some("23505") => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %error, "request failed");
        }
        ApiError(status, error.to_string())
    }
}

impl From<dbmanager::tokio_postgres::Error> for ApiError {
    fn from(error: dbmanager::tokio_postgres::Error) -> Self {
        Error::from(error).into()
    }
}

impl From<dbmanager::mongodb::error::Error> for ApiError {
    fn from(error: dbmanager::mongodb::error::Error) -> Self {
        Error::from(error).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn not_found(what: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("{what} not found"))
}

type ApiResult<T> = Result<T, ApiError>;

// ----------------------------------------------------------------- users

#[derive(Serialize)]
struct User {
    id: Uuid,
    email: String,
    name: String,
    created_at: String,
}

impl From<dbmanager::tokio_postgres::Row> for User {
    fn from(row: dbmanager::tokio_postgres::Row) -> Self {
        User {
            id: row.get("id"),
            email: row.get("email"),
            name: row.get("name"),
            created_at: row.get("created_at"),
        }
    }
}

const USER_COLUMNS: &str = "id, email, name, created_at::text AS created_at";

#[derive(Deserialize)]
struct NewUser {
    email: String,
    name: String,
}

#[derive(Deserialize)]
struct UserChanges {
    email: Option<String>,
    name: Option<String>,
}

async fn list_users(State(app): State<App>) -> ApiResult<Json<Vec<User>>> {
    let client = app.db.postgres()?.get().await?;
    let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY created_at, email LIMIT 100");
    let rows = client
        .query(&client.prepare_cached(&sql).await?, &[])
        .await?;
    Ok(Json(rows.into_iter().map(User::from).collect()))
}

async fn create_user(
    State(app): State<App>,
    Json(new): Json<NewUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let client = app.db.postgres()?.get().await?;
    let sql = format!("INSERT INTO users (email, name) VALUES ($1, $2) RETURNING {USER_COLUMNS}");
    let row = client
        .query_one(
            &client.prepare_cached(&sql).await?,
            &[&new.email, &new.name],
        )
        .await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

async fn get_user(State(app): State<App>, Path(id): Path<Uuid>) -> ApiResult<Json<User>> {
    let client = app.db.postgres()?.get().await?;
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    let row = client
        .query_opt(&client.prepare_cached(&sql).await?, &[&id])
        .await?;
    row.map(|r| Json(r.into())).ok_or_else(|| not_found("user"))
}

async fn update_user(
    State(app): State<App>,
    Path(id): Path<Uuid>,
    Json(changes): Json<UserChanges>,
) -> ApiResult<Json<User>> {
    let client = app.db.postgres()?.get().await?;
    let sql = format!(
        "UPDATE users SET email = coalesce($2, email), name = coalesce($3, name) WHERE id = $1 RETURNING {USER_COLUMNS}"
    );
    let row = client
        .query_opt(
            &client.prepare_cached(&sql).await?,
            &[&id, &changes.email, &changes.name],
        )
        .await?;
    row.map(|r| Json(r.into())).ok_or_else(|| not_found("user"))
}

async fn delete_user(State(app): State<App>, Path(id): Path<Uuid>) -> ApiResult<StatusCode> {
    let client = app.db.postgres()?.get().await?;
    let deleted = client
        .execute("DELETE FROM users WHERE id = $1", &[&id])
        .await?;
    if deleted == 0 {
        return Err(not_found("user"));
    }
    Ok(StatusCode::NO_CONTENT)
}

// ----------------------------------------------------------------- posts

#[derive(Debug, Serialize, Deserialize)]
struct Post {
    #[serde(rename = "_id")]
    id: String,
    title: String,
    body: String,
    author: String,
    upvotes: i64,
    replies: Vec<Reply>,
    created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reply {
    author: String,
    body: String,
}

#[derive(Deserialize)]
struct NewPost {
    title: String,
    body: String,
    author: String,
}

#[derive(Deserialize)]
struct PostChanges {
    title: Option<String>,
    body: Option<String>,
}

fn posts(app: &App) -> Result<dbmanager::mongodb::Collection<Post>, Error> {
    Ok(app.db.mongo()?.database().collection::<Post>("posts"))
}

fn now() -> String {
    // Seconds since the epoch keep the example free of a date crate; the
    // value only orders posts.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    format!("{secs:012}")
}

async fn list_posts(State(app): State<App>) -> ApiResult<Json<Vec<Post>>> {
    let cursor = posts(&app)?
        .find(doc! {})
        .sort(doc! { "created_at": -1, "_id": 1 })
        .limit(100)
        .await?;
    Ok(Json(cursor.try_collect().await?))
}

async fn create_post(
    State(app): State<App>,
    Json(new): Json<NewPost>,
) -> ApiResult<(StatusCode, Json<Post>)> {
    let post = Post {
        id: Uuid::new_v4().to_string(),
        title: new.title,
        body: new.body,
        author: new.author,
        upvotes: 0,
        replies: Vec::new(),
        created_at: now(),
    };
    posts(&app)?.insert_one(&post).await?;
    Ok((StatusCode::CREATED, Json(post)))
}

async fn get_post(State(app): State<App>, Path(id): Path<String>) -> ApiResult<Json<Post>> {
    let post = posts(&app)?.find_one(doc! { "_id": &id }).await?;
    post.map(Json).ok_or_else(|| not_found("post"))
}

async fn update_post(
    State(app): State<App>,
    Path(id): Path<String>,
    Json(changes): Json<PostChanges>,
) -> ApiResult<Json<Post>> {
    let mut set = Document::new();
    if let Some(title) = changes.title {
        set.insert("title", title);
    }
    if let Some(body) = changes.body {
        set.insert("body", body);
    }
    if set.is_empty() {
        return get_post(State(app), Path(id)).await;
    }
    let post = posts(&app)?
        .find_one_and_update(doc! { "_id": &id }, doc! { "$set": set })
        .return_document(ReturnDocument::After)
        .await?;
    post.map(Json).ok_or_else(|| not_found("post"))
}

async fn delete_post(State(app): State<App>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let deleted = posts(&app)?.delete_one(doc! { "_id": &id }).await?;
    if deleted.deleted_count == 0 {
        return Err(not_found("post"));
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn reply(
    State(app): State<App>,
    Path(id): Path<String>,
    Json(reply): Json<Reply>,
) -> ApiResult<Json<Post>> {
    let reply = dbmanager::mongodb::bson::to_bson(&reply)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let post = posts(&app)?
        .find_one_and_update(doc! { "_id": &id }, doc! { "$push": { "replies": reply } })
        .return_document(ReturnDocument::After)
        .await?;
    post.map(Json).ok_or_else(|| not_found("post"))
}

async fn upvote(State(app): State<App>, Path(id): Path<String>) -> ApiResult<Json<Post>> {
    let post = posts(&app)?
        .find_one_and_update(doc! { "_id": &id }, doc! { "$inc": { "upvotes": 1 } })
        .return_document(ReturnDocument::After)
        .await?;
    post.map(Json).ok_or_else(|| not_found("post"))
}

/// A deliberately slow query (`/slow/500` sleeps 500 ms in the database), to
/// watch shutdown wait for requests in flight.
async fn slow_query(
    State(app): State<App>,
    Path(ms): Path<u32>,
) -> ApiResult<Json<serde_json::Value>> {
    let seconds = f64::from(ms.min(10_000)) / 1000.0;
    let client = app.db.postgres()?.get().await?;
    client.execute("SELECT pg_sleep($1)", &[&seconds]).await?;
    Ok(Json(
        serde_json::json!({ "slept_ms": (seconds * 1000.0) as u64 }),
    ))
}

async fn render_metrics(State(app): State<App>) -> String {
    app.metrics.render()
}

// ------------------------------------------------------------------ seed

/// Inserts the demo data. Running it twice leaves the same data: users are
/// upserted by email, posts by a fixed id, and replies are set, not pushed.
async fn seed(db: &DatabaseManager) -> dbmanager::Result<String> {
    let users = [
        ("ada@example.com", "Ada Lovelace"),
        ("grace@example.com", "Grace Hopper"),
        ("edsger@example.com", "Edsger Dijkstra"),
    ];
    let client = db.postgres()?.get().await?;
    let upsert = client
        .prepare_cached(
            "INSERT INTO users (email, name) VALUES ($1, $2) ON CONFLICT (email) DO UPDATE SET name = EXCLUDED.name",
        )
        .await?;
    for (email, name) in users {
        client.execute(&upsert, &[&email, &name]).await?;
    }
    client
        .execute(
            "INSERT INTO system_configs (key, value) VALUES ('forum.open', 'true') \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
            &[],
        )
        .await?;
    drop(client);

    let posts = db.mongo()?.database().collection::<Document>("posts");
    let demo = [
        ("welcome", "Welcome to the forum", "ada@example.com", 3),
        (
            "pools",
            "How big should a connection pool be?",
            "grace@example.com",
            5,
        ),
    ];
    for (id, title, author, upvotes) in demo {
        let replies =
            vec![doc! { "author": "edsger@example.com", "body": "Smaller than you think." }];
        posts
            .update_one(
                doc! { "_id": id },
                doc! { "$set": {
                    "title": title,
                    "body": format!("{title} (demo post)"),
                    "author": author,
                    "upvotes": upvotes as i64,
                    "replies": replies,
                    "created_at": "000000000001",
                } },
            )
            .upsert(true)
            .await?;
    }
    Ok(format!("{} users, {} posts", users.len(), demo.len()))
}

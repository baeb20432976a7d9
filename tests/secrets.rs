//! Passwords never leave: not in Debug or Display of the configuration or
//! the manager, not in errors, health JSON or logs.

mod support;

use dbmanager::{Config, DatabaseManager, DatabaseUrl};
use support::{TestDb, encode, pg_config, sql};

const PASSWORD: &str = "Sup3r$ecret:@/pw";

fn assert_hidden(what: &str, text: &str) {
    for form in [PASSWORD.to_string(), encode(PASSWORD), "Sup3r".to_string()] {
        assert!(!text.contains(&form), "{what} shows the password: {text}");
    }
}

fn url_for(db: &TestDb, role: &str, password: &str) -> String {
    support::with_credentials(&db.url, role, &encode(password))
}

/// A login role with [`PASSWORD`] and every privilege on the database, and
/// the URL that connects as it. Dropped by [`drop_role`].
async fn role_with_the_password(db: &TestDb, prefix: &str) -> (String, String) {
    let role = support::unique_name(prefix);
    sql(
        &db.url,
        &format!("CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'; GRANT ALL ON DATABASE \"{}\" TO {role}", db.name),
    )
    .await;
    let url = url_for(db, &role, PASSWORD);
    (role, url)
}

async fn drop_role(db: &TestDb, role: &str) {
    sql(&db.url, &format!("DROP OWNED BY {role}; DROP ROLE {role}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_appears_in_no_output() {
    let logs = support::logs();
    let db = TestDb::create("secrets").await;
    let (role, url) = role_with_the_password(&db, "secret_role").await;

    let config: Config = pg_config(&url);
    assert_hidden("config Debug", &format!("{config:?}"));
    assert_hidden("config JSON", &serde_json::to_string(&config).unwrap());

    let manager = support::build(config.clone()).await;
    assert_hidden("manager Debug", &format!("{manager:?}"));
    assert_hidden("manager Display", &manager.to_string());
    assert_hidden("pool Debug", &format!("{:?}", manager.postgres().unwrap()));
    let report = manager.health().await;
    assert_hidden("health JSON", &serde_json::to_string(&report).unwrap());

    // A failed connect with the right user and a wrong password that
    // contains the right one.
    let mut wrong = config.clone();
    wrong.postgres.url = Some(DatabaseUrl::new(url_for(
        &db,
        &role,
        &format!("{PASSWORD}x"),
    )));
    wrong.retry = dbmanager::RetryPolicy::none();
    let err = support::build_error(wrong).await;
    assert_hidden("connect error Display", &err.to_string());
    assert_hidden("connect error Debug", &format!("{err:?}"));

    // A malformed URL containing the password.
    let mut malformed = config.clone();
    malformed.postgres.url = Some(DatabaseUrl::new(format!(
        "postgres://{role}:{}@127.0.0.1:notaport/x",
        encode(PASSWORD)
    )));
    let err = DatabaseManager::builder()
        .config(malformed)
        .build_lazy()
        .unwrap_err();
    assert_hidden("config error", &err.to_string());

    manager.shutdown().await.unwrap();
    assert_hidden("captured logs", &logs.contents());
    assert!(
        logs.contents().contains("connected to PostgreSQL"),
        "logs were captured"
    );
    drop_role(&db, &role).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_errors_quoting_the_password_are_scrubbed_before_they_are_logged() {
    let logs = support::logs();
    let db = TestDb::create("secrets_hooks").await;
    let (role, url) = role_with_the_password(&db, "hook_role").await;
    let mut config = pg_config(&url);
    config.postgres.pool.min_idle = 0;
    let rejected = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let first = rejected.clone();
    // A careless hook that puts the connection string it used into its
    // error: the first checkout is rejected, every checkin fails.
    let manager = DatabaseManager::builder()
        .config(config)
        .on_checkout(move |_| {
            let first = first.clone();
            Box::pin(async move {
                if !first.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    return Err(format!("checkout refused for password {PASSWORD}").into());
                }
                Ok(())
            })
        })
        .on_checkin(|_| {
            Box::pin(async move { Err(format!("checkin failed with {PASSWORD}").into()) })
        })
        .build()
        .await
        .unwrap();
    let pool = manager.postgres().unwrap();
    drop(pool.get().await.unwrap());
    assert!(
        support::eventually(std::time::Duration::from_secs(10), async || pool
            .stats()
            .closed_hook
            >= 2)
        .await,
        "both hooks failed and closed their connections: {:?}",
        pool.stats()
    );
    manager.shutdown().await.unwrap();
    let logged = logs.contents();
    assert!(logged.contains("on_checkout hook failed"), "{logged}");
    assert!(logged.contains("on_checkin hook failed"), "{logged}");
    assert_hidden("hook errors in the logs", &logged);
    drop_role(&db, &role).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_topology_settings_and_their_errors_show_no_password() {
    use std::time::Duration;

    use dbmanager::mongodb::bson::{Document, doc};

    let logs = support::logs();
    let server = support::MongoServer::start("secret_mongo", PASSWORD);
    let mut config = Config::default();
    config.mongodb.url = Some(DatabaseUrl::new(format!(
        "{}&readPreference=nearest",
        server.url()
    )));
    config.mongodb.database = Some(support::unique_name("secrets"));
    config.mongodb.direct_connection = Some(true);
    config.mongodb.server_selection_timeout = Duration::from_secs(1);
    config.health.probe_timeout = Duration::from_secs(5);
    config.retry = dbmanager::RetryPolicy::none();
    assert_hidden("config Debug", &format!("{config:?}"));
    assert_hidden("config JSON", &serde_json::to_string(&config).unwrap());

    // Up: the topology with the settings.
    let manager = support::build(config.clone()).await;
    assert_hidden("manager Debug", &format!("{manager:?}"));
    assert_hidden("handle Debug", &format!("{:?}", manager.mongo().unwrap()));
    let report = serde_json::to_string(&manager.health().await).unwrap();
    assert!(
        report.contains("\"read_preference\":\"nearest\""),
        "{report}"
    );
    assert_hidden("health JSON", &report);
    manager.shutdown().await.unwrap();

    // Down: a replica set the server does not have.
    let mut absent = config.clone();
    absent.mongodb.replica_set = Some("rs-absent".into());
    let manager = DatabaseManager::builder()
        .config(absent.clone())
        .build_lazy()
        .unwrap();
    let things = manager
        .mongo()
        .unwrap()
        .database()
        .collection::<Document>("things");
    let err: dbmanager::Error = things.find_one(doc! {}).await.unwrap_err().into();
    assert_hidden("selection error Display", &err.to_string());
    assert_hidden("selection error Debug", &format!("{err:?}"));
    let report = manager.health().await;
    assert!(report.components["mongodb"].error.is_some());
    assert_hidden(
        "health JSON when down",
        &serde_json::to_string(&report).unwrap(),
    );
    manager.shutdown().await.unwrap();
    let err = support::build_error(absent).await;
    assert_hidden("connect error Display", &err.to_string());
    assert_hidden("connect error Debug", &format!("{err:?}"));

    // Refused: a direct connection to several hosts, and a URL option the
    // driver refuses.
    let mut several = config.clone();
    several.mongodb.url = Some(DatabaseUrl::new(
        server
            .url()
            .replace("@127.0.0.1:", "@127.0.0.2:1,127.0.0.1:"),
    ));
    let err = DatabaseManager::builder()
        .config(several)
        .build_lazy()
        .unwrap_err();
    assert!(
        err.to_string().contains("mongodb.direct_connection"),
        "{err}"
    );
    assert_hidden("config error", &err.to_string());
    let mut refused = config.clone();
    refused.mongodb.url = Some(DatabaseUrl::new(format!(
        "{}&readPreference=closest",
        server.url()
    )));
    let err = DatabaseManager::builder()
        .config(refused)
        .build_lazy()
        .unwrap_err();
    assert!(err.to_string().contains("mongodb.url"), "{err}");
    assert_hidden("driver config error", &err.to_string());
    assert_hidden("captured logs", &logs.contents());
}

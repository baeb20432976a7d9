//! Rotating credentials: a password provider asked before every new
//! connection, against a role whose password changes on the real server
//! while the pool runs.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbmanager::retry::Jitter;
use dbmanager::{Config, Credential, DatabaseManager, Error, FailureKind, RetryPolicy};
use support::{
    TestDb, admin_url, connect_failure, logs, pg_config, sql, unique_name, with_credentials,
};

/// A login role on the shared server, dropped afterwards (declare it
/// before the database that its sessions use, so that goes first).
struct Role {
    name: String,
}

impl Role {
    async fn create(password: &str) -> Role {
        let name = unique_name("rotating");
        sql(
            &admin_url(),
            &format!("CREATE ROLE {name} LOGIN PASSWORD '{password}'"),
        )
        .await;
        Role { name }
    }

    async fn set_password(&self, password: &str) {
        sql(
            &admin_url(),
            &format!("ALTER ROLE {} PASSWORD '{password}'", self.name),
        )
        .await;
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let statement = format!("DROP ROLE IF EXISTS {}", self.name);
        let _ = std::thread::spawn(move || {
            support::block_on_own_runtime(async { sql(&admin_url(), &statement).await })
        })
        .join();
    }
}

/// The provider's side: the value it hands out and how often it was asked.
#[derive(Clone, Default)]
struct Vault {
    password: Arc<Mutex<String>>,
    calls: Arc<AtomicUsize>,
}

impl Vault {
    fn new(password: &str) -> Vault {
        let vault = Vault::default();
        vault.set(password);
        vault
    }

    fn set(&self, password: &str) {
        *self.password.lock().unwrap() = password.to_string();
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn fetch(&self) -> Result<String, std::io::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(self.password.lock().unwrap().clone())
    }
}

/// A configuration on the role's URL with a password the server never
/// accepts: only the provider's value can log in.
fn config_for(db: &TestDb, role: &Role) -> Config {
    let mut config = pg_config(&with_credentials(
        &db.url,
        &role.name,
        "url-password-never-valid",
    ));
    config.postgres.pool.min_idle = 1;
    // No top-up between the steps: every connection below is opened by a
    // checkout the test makes.
    config.postgres.pool.maintenance_interval = Duration::from_secs(3600);
    config
}

async fn build_with(config: Config, vault: &Vault) -> dbmanager::Result<DatabaseManager> {
    let vault = vault.clone();
    DatabaseManager::builder()
        .config(config)
        .password_provider(move || {
            let vault = vault.clone();
            async move { vault.fetch().await }
        })
        .build()
        .await
}

async fn current_user(client: &tokio_postgres::Client) -> String {
    client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_use_the_rotated_password_and_open_ones_keep_working() {
    let logs = logs();
    let role = Role::create("first-secret-1").await;
    let db = TestDb::create("rotate").await;
    let vault = Vault::new("first-secret-1");
    let manager = build_with(config_for(&db, &role), &vault).await.unwrap();
    let pool = manager.postgres().unwrap();
    assert_eq!(vault.calls(), 1, "build opened min_idle = 1 connection");
    let old = pool.get().await.unwrap();
    assert_eq!(current_user(&old).await, role.name);

    // Rotate: the server and the provider move to a new password.
    role.set_password("second-secret-2").await;
    vault.set("second-secret-2");
    let started = Instant::now();
    let new = pool.get().await.unwrap();
    println!(
        "a new connection after the rotation took {:?}",
        started.elapsed()
    );
    assert_eq!(vault.calls(), 2, "the new connection asked the provider");
    assert_eq!(
        current_user(&new).await,
        role.name,
        "the new password logged in"
    );
    assert_eq!(
        current_user(&old).await,
        role.name,
        "the connection opened with the old password keeps working"
    );

    // The server rotates, the provider does not follow: the next connection
    // fails as an authentication failure, once, not retried until the
    // checkout's wait runs out.
    role.set_password("third-secret-3").await;
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    let took = started.elapsed();
    println!("the rejected password failed the checkout in {took:?}");
    let (kind, attempts) = connect_failure(&err);
    assert_eq!(kind, FailureKind::Authentication, "{err}");
    assert_eq!(attempts, 1, "{err}");
    assert!(!err.is_transient(), "{err}");
    assert_eq!(
        vault.calls(),
        3,
        "one attempt, one question to the provider"
    );
    for secret in [
        "second-secret-2",
        "third-secret-3",
        "url-password-never-valid",
    ] {
        assert!(!err.to_string().contains(secret), "{err}");
        assert!(!format!("{err:?}").contains(secret), "{err:?}");
    }

    // Once the provider catches up, new connections work again.
    vault.set("third-secret-3");
    let third = pool.get().await.unwrap();
    assert_eq!(current_user(&third).await, role.name);
    assert_eq!(current_user(&old).await, role.name);

    let health = serde_json::to_string(&manager.health().await).unwrap();
    drop((old, new, third));
    manager.shutdown().await.unwrap();
    let logged = logs.contents();
    for secret in ["first-secret-1", "second-secret-2", "third-secret-3"] {
        assert!(
            !health.contains(secret),
            "health shows a password: {health}"
        );
        assert!(!logged.contains(secret), "a password was logged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_password_from_the_provider_fails_the_build_at_once() {
    let role = Role::create("right-password").await;
    let db = TestDb::create("rotate_reject").await;
    let vault = Vault::new("wrong-password");
    let provider_vault = vault.clone();
    let builder = DatabaseManager::builder().password_provider(move || {
        let vault = provider_vault.clone();
        async move { vault.fetch().await }
    });
    assert!(!format!("{builder:?}").contains("wrong-password"));
    let config = config_for(&db, &role);
    let mut config_slow = config.clone();
    config_slow.retry = support::slow_retry(Duration::from_secs(2));
    let started = Instant::now();
    let err = builder.config(config_slow).build().await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "failed in {took:?}, before the first retry delay"
    );
    println!("a rejected provider password failed build() in {took:?}");
    let (kind, attempts) = connect_failure(&err);
    assert_eq!((kind, attempts), (FailureKind::Authentication, 1), "{err}");
    assert_eq!(vault.calls(), 1);
    assert!(!err.to_string().contains("wrong-password"), "{err}");
}

/// The reason of an [`Error::CredentialProvider`]; panics on any other error.
fn provider_failure(err: &Error) -> &str {
    match err {
        Error::CredentialProvider { reason, .. } => reason,
        other => panic!("expected a provider error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_panicking_or_hung_provider_is_its_own_error_and_is_retried_under_the_policy() {
    let role = Role::create("unused-password").await;
    let db = TestDb::create("rotate_provider").await;
    let mut config = config_for(&db, &role);
    config.retry = RetryPolicy::exponential()
        .initial_delay(Duration::from_millis(10))
        .max_attempts(3)
        .jitter(Jitter::None);
    config.postgres.pool.connect_timeout = Duration::from_millis(300);

    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let err = DatabaseManager::builder()
        .config(config.clone())
        .password_provider(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Err::<String, _>(std::io::Error::other("vault is sealed")) }
        })
        .build()
        .await
        .unwrap_err();
    let reason = provider_failure(&err);
    assert!(reason.contains("vault is sealed"), "{reason}");
    assert!(err.is_transient());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "asked once per attempt: {err}"
    );

    // A provider that panics fails like one that returns an error.
    let err = DatabaseManager::builder()
        .config(config.clone())
        .password_provider(|| async {
            if true {
                panic!("token parser bug");
            }
            Ok::<_, std::io::Error>("never")
        })
        .build()
        .await
        .unwrap_err();
    let reason = provider_failure(&err);
    assert!(reason.contains("panicked: token parser bug"), "{reason}");

    // A provider that never answers is bounded by the connect timeout.
    let err = DatabaseManager::builder()
        .config(config)
        .password_provider(|| async {
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(Credential::password("never"))
        })
        .build()
        .await
        .unwrap_err();
    let reason = provider_failure(&err);
    assert!(reason.contains("no answer within 300ms"), "{reason}");
}

#[test]
fn a_credential_never_shows_its_password() {
    let credential = Credential::user_and_password("vault-user-1", "s3cr3t-token");
    let shown = format!("{credential:?}");
    assert!(shown.contains("vault-user-1"), "{shown}");
    assert!(!shown.contains("s3cr3t-token"), "{shown}");
}

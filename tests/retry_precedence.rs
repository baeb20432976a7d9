//! Which start-up retry policy applies: the configured `[retry]` unless the
//! builder's `retry()` replaces it. Against a closed port, so every attempt
//! is refused at once and counted.

use std::time::Duration;

use dbmanager::{Config, DatabaseManager, Error, FailureKind, RetryPolicy};

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The configuration as `Config::load()` would read it from these
/// environment variables (no `.env`, an empty `dbmanager.toml`).
fn load(env: &[(&str, String)]) -> Config {
    let empty = tempfile::NamedTempFile::new().unwrap();
    Config::loader()
        .no_dotenv()
        .file(empty.path())
        .env_vars(env.iter().map(|(k, v)| (k.to_string(), v.clone())))
        .load()
        .expect("the configuration loads")
}

fn attempts(error: Error) -> u32 {
    match error {
        Error::Connect { kind, attempts, .. } => {
            assert_eq!(kind, FailureKind::Refused);
            attempts
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
}

fn env_with_max_attempts_2() -> Vec<(&'static str, String)> {
    vec![
        (
            "DATABASE_URL",
            format!("postgres://app:secret@127.0.0.1:{}/app", closed_port()),
        ),
        ("DBMANAGER_RETRY__MAX_ATTEMPTS", "2".into()),
        ("DBMANAGER_RETRY__INITIAL_DELAY", "10ms".into()),
        ("DBMANAGER_RETRY__MAX_DELAY", "10ms".into()),
    ]
}

#[tokio::test]
async fn the_configured_retry_max_attempts_limits_build_when_no_policy_is_set() {
    let config = load(&env_with_max_attempts_2());
    assert_eq!(config.retry.max_attempts, Some(2));
    let error = DatabaseManager::builder()
        .config(config)
        .build()
        .await
        .unwrap_err();
    assert_eq!(
        attempts(error),
        2,
        "DBMANAGER_RETRY__MAX_ATTEMPTS=2 bounds the attempts"
    );
}

#[tokio::test]
async fn the_builder_retry_replaces_the_configured_policy_entirely() {
    let config = load(&env_with_max_attempts_2());
    // Only the delays are set here: the configured max_attempts = 2 is not
    // merged in; the policy's own limit (the default, 10) applies.
    let policy = RetryPolicy::exponential()
        .initial_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(5));
    let limit = policy.max_attempts.expect("the default policy has a limit");
    assert_ne!(limit, 2);
    let error = DatabaseManager::builder()
        .config(config)
        .retry(policy)
        .build()
        .await
        .unwrap_err();
    assert_eq!(attempts(error), limit, "the setter's policy wins");
}

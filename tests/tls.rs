//! TLS to PostgreSQL with libpq's sslmode semantics, against a server that
//! accepts only encrypted connections.

mod support;

use std::time::{Duration, Instant};

use dbmanager::retry::Jitter;
use dbmanager::{DatabaseManager, Error, FailureKind, RetryPolicy};
use support::{PgCluster, build_error, connect_failure, pg_config, slow_retry};

async fn encrypted(db: &DatabaseManager) -> bool {
    let client = db.postgres().unwrap().get().await.unwrap();
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn url(cluster: &PgCluster, host: &str, params: &str) -> String {
    format!(
        "postgres://postgres:{}@{host}:{}/postgres?{params}",
        cluster.password, cluster.port
    )
}

/// The first retry delay of [`connect`]: long, to see that TLS failures are
/// not retried.
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(2);

async fn connect(url: &str) -> dbmanager::Result<DatabaseManager> {
    let mut config = pg_config(url);
    config.retry = slow_retry(FIRST_RETRY_DELAY);
    DatabaseManager::builder().config(config).build().await
}

/// Whether a manager on `url` connects, over an encrypted connection.
async fn connects_encrypted(url: &str) -> bool {
    let db = connect(url).await.unwrap();
    let encrypted = encrypted(&db).await;
    db.shutdown().await.unwrap();
    encrypted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_behaves_as_in_libpq() {
    let cluster = PgCluster::init("tls-secret-pw");
    let ca = cluster.enable_tls();
    cluster.start();
    let ca = ca.display();

    // Encryption without authentication.
    for mode in ["require", "prefer"] {
        assert!(
            connects_encrypted(&url(&cluster, "127.0.0.1", &format!("sslmode={mode}"))).await,
            "sslmode={mode} encrypts"
        );
    }

    // The chain is checked against sslrootcert; the host name too with verify-full.
    assert!(
        connects_encrypted(&url(
            &cluster,
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ))
        .await
    );
    assert!(
        connects_encrypted(&url(
            &cluster,
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
        ))
        .await,
        "verify-ca ignores the host name"
    );

    // Failures are permanent: no retry, well before the first retry delay.
    let failures = [
        (
            url(
                &cluster,
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            "host name mismatch",
        ),
        (
            url(&cluster, "localhost", "sslmode=verify-full"),
            "untrusted issuer",
        ),
    ];
    for (url, what) in failures {
        let started = Instant::now();
        let err = connect(&url).await.unwrap_err();
        let took = started.elapsed();
        match &err {
            Error::Connect { kind, attempts, .. } => {
                assert_eq!(*kind, FailureKind::Tls, "{what}: {err}");
                assert_eq!(*attempts, 1, "{what}");
            }
            other => panic!("{what}: expected a connect error, got {other:?}"),
        }
        assert!(
            took < FIRST_RETRY_DELAY,
            "{what}: failed in {took:?}, before the first retry delay"
        );
        assert!(!err.to_string().contains("tls-secret-pw"), "{err}");
    }

    // A server that only accepts TLS refuses a plain connection.
    let err = connect(&url(&cluster, "127.0.0.1", "sslmode=disable"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Connect {
                kind: FailureKind::Authentication,
                ..
            }
        ),
        "pg_hba refuses unencrypted connections: {err}"
    );
    assert!(err.to_string().contains("no encryption"), "{err}");

    // A missing CA file is a configuration error naming the key.
    let err = connect(&url(
        &cluster,
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    ))
    .await
    .unwrap_err();
    match err {
        Error::Config { key, problem } => {
            assert_eq!(key, "postgres.url");
            assert!(problem.contains("sslrootcert"), "{problem}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

/// A connection cut during the TLS handshake (a server restarting, a proxy
/// dropping it) is retried like any other cut connection; only a refused
/// certificate or a server without TLS fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_during_the_handshake_is_retried() {
    // Agrees to TLS, then hangs up: what a server going down mid-handshake
    // looks like to the client.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut ssl_request = [0u8; 8];
            if socket.read_exact(&mut ssl_request).await.is_ok() {
                let _ = socket.write_all(b"S").await;
            }
            drop(socket);
        }
    });
    let mut config = pg_config(&format!(
        "postgres://app:secret@127.0.0.1:{port}/app?sslmode=require"
    ));
    config.retry = RetryPolicy::exponential()
        .initial_delay(Duration::from_millis(10))
        .max_attempts(3)
        .jitter(Jitter::None);
    let err = build_error(config).await;
    let (kind, attempts) = connect_failure(&err);
    assert_eq!(kind, FailureKind::Reset, "{err}");
    assert_eq!(attempts, 3, "{err}");
    assert!(err.is_transient());
    server.abort();
}

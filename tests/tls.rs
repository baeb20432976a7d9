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

/// Asserts that `err` is a configuration error of `postgres.url` whose
/// problem mentions `mentions`.
fn assert_url_problem(err: Error, mentions: &str) {
    match err {
        Error::Config { key, problem } => {
            assert_eq!(key, "postgres.url");
            assert!(problem.contains(mentions), "{problem}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

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
    assert_url_problem(err, "sslrootcert");
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

/// Runs SQL as the superuser over TLS (the TLS cluster refuses plain
/// connections, which the shared `sql` helper makes).
async fn tls_sql(cluster: &PgCluster, statements: &str) {
    let db = connect(&url(cluster, "127.0.0.1", "sslmode=require"))
        .await
        .unwrap();
    db.postgres()
        .unwrap()
        .get()
        .await
        .unwrap()
        .batch_execute(statements)
        .await
        .unwrap();
    db.shutdown().await.unwrap();
}

async fn current_user(url: &str) -> dbmanager::Result<String> {
    let db = connect(url).await?;
    let client = db.postgres().unwrap().get().await.unwrap();
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    drop(client);
    db.shutdown().await.unwrap();
    Ok(user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_logs_in_where_pg_hba_demands_one() {
    let cluster = PgCluster::init("tls-secret-pw");
    let ca = cluster.enable_tls();
    let (cert, key) = cluster.client_certificate("certuser");
    cluster.set_hba(
        "local all all scram-sha-256\n\
         hostssl all certuser 127.0.0.1/32 cert\n\
         hostssl all all 127.0.0.1/32 scram-sha-256\n\
         hostnossl all all 127.0.0.1/32 reject\n",
    );
    cluster.start();
    tls_sql(&cluster, "CREATE ROLE certuser LOGIN").await;
    let port = cluster.port;
    let (ca, cert, key) = (ca.display(), cert.display(), key.display());
    let with_cert = format!(
        "postgres://certuser@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}"
    );
    assert_eq!(current_user(&with_cert).await.unwrap(), "certuser");
    assert!(connects_encrypted(&with_cert).await);

    // Without the certificate, pg_hba's `cert` line refuses the user, for good.
    let without = format!(
        "postgres://certuser@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
    );
    let err = connect(&without).await.unwrap_err();
    assert_eq!(
        connect_failure(&err),
        (FailureKind::Authentication, 1),
        "{err}"
    );

    // Half a client certificate, and a key file that is no key, are
    // configuration errors naming the URL, and never quote the key file.
    let half = format!("{without}&sslcert={cert}");
    assert_url_problem(connect(&half).await.unwrap_err(), "sslkey");
    let not_a_key = tempfile::NamedTempFile::new().unwrap();
    let body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC-not-really-a-key";
    std::fs::write(
        not_a_key.path(),
        format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    let bad_key = format!(
        "{without}&sslcert={cert}&sslkey={}",
        not_a_key.path().display()
    );
    let err = connect(&bad_key).await.unwrap_err();
    assert!(matches!(&err, Error::Config { .. }), "{err:?}");
    let real_key = std::fs::read_to_string(key.to_string()).unwrap();
    let key_line = real_key.lines().nth(3).unwrap();
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(body), "{shown}");
        assert!(!shown.contains(key_line), "{shown}");
    }
    let config = pg_config(&with_cert);
    assert!(!format!("{config:?}").contains(key_line));
}

/// With `channel_binding=require` tokio-postgres completes a SCRAM exchange
/// only as SCRAM-SHA-256-PLUS (any other mechanism fails it), so a login
/// under it proves the binding to the server's certificate was used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_require_logs_in_with_scram_plus_over_tls() {
    let cluster = PgCluster::init("tls-secret-pw");
    let ca = cluster.enable_tls();
    cluster.start();
    let ca = ca.display();
    for params in [
        "sslmode=require&channel_binding=require".to_string(),
        format!("sslmode=verify-full&sslrootcert={ca}&channel_binding=require"),
    ] {
        assert!(
            connects_encrypted(&url(&cluster, "localhost", &params)).await,
            "{params}"
        );
    }

    // A server without TLS cannot bind the channel: a permanent
    // authentication failure, not retried.
    let plain = format!(
        "{}?sslmode=prefer&channel_binding=require",
        support::admin_url().split('?').next().unwrap()
    );
    let started = Instant::now();
    let err = connect(&plain).await.unwrap_err();
    assert_eq!(
        connect_failure(&err),
        (FailureKind::Authentication, 1),
        "{err}"
    );
    assert!(started.elapsed() < FIRST_RETRY_DELAY);
    assert!(err.to_string().contains("channel binding"), "{err}");
    assert!(!err.is_transient());

    // sslmode=disable with channel_binding=require can never work.
    let err = connect(&url(
        &cluster,
        "localhost",
        "sslmode=disable&channel_binding=require",
    ))
    .await
    .unwrap_err();
    assert_url_problem(err, "channel_binding");
}

/// libpq's `allow`: a plain connection first, TLS only when the server
/// refuses the plain one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_allow_tries_a_plain_connection_first() {
    let tls_only = PgCluster::init("tls-secret-pw");
    tls_only.enable_tls();
    tls_only.start();
    assert!(
        connects_encrypted(&url(&tls_only, "127.0.0.1", "sslmode=allow")).await,
        "a server refusing plain connections gets TLS"
    );

    let either = PgCluster::init("tls-secret-pw");
    either.enable_tls();
    either.set_hba("local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n");
    either.start();
    assert!(
        !connects_encrypted(&url(&either, "127.0.0.1", "sslmode=allow")).await,
        "a server accepting both gets a plain connection under allow"
    );
    assert!(
        connects_encrypted(&url(&either, "127.0.0.1", "sslmode=prefer")).await,
        "and TLS under prefer"
    );
}

/// The variable a child run of the system-trust test reads its URL from.
const SYSTEM_TRUST_URL: &str = "DBMANAGER_TEST_SYSTEM_TRUST_URL";

/// `sslrootcert=system` (libpq 16): the operating system's trust store,
/// where `SSL_CERT_FILE` applies, and verify-full only. The store is
/// process-wide, so the part that trusts the test CA runs in a child
/// process of this test binary with `SSL_CERT_FILE` naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslrootcert_system_uses_the_operating_system_store_and_verify_full() {
    if let Ok(url) = std::env::var(SYSTEM_TRUST_URL) {
        assert!(connects_encrypted(&url).await);
        return;
    }
    let cluster = PgCluster::init("tls-secret-pw");
    let ca = cluster.enable_tls();
    cluster.start();

    // The test CA is in no system store: verify-full refuses the server.
    let err = connect(&url(&cluster, "localhost", "sslrootcert=system"))
        .await
        .unwrap_err();
    assert_eq!(connect_failure(&err), (FailureKind::Tls, 1), "{err}");

    // A weaker sslmode with the system store is refused, as libpq 16 does.
    for mode in ["require", "verify-ca", "prefer"] {
        let params = format!("sslrootcert=system&sslmode={mode}");
        let err = connect(&url(&cluster, "localhost", &params))
            .await
            .unwrap_err();
        assert_url_problem(err, "verify-full");
    }

    // With the test CA as the system store, the default verify-full
    // connects to the name on the certificate, and refuses another name.
    let run_child = |host: &str| {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "sslrootcert_system_uses_the_operating_system_store_and_verify_full",
                "--exact",
                "--nocapture",
            ])
            .env("SSL_CERT_FILE", &ca)
            .env_remove("SSL_CERT_DIR")
            .env(SYSTEM_TRUST_URL, url(&cluster, host, "sslrootcert=system"))
            .output()
            .unwrap()
    };
    let trusted = run_child("localhost");
    let stdout = String::from_utf8_lossy(&trusted.stdout);
    assert!(
        trusted.status.success() && stdout.contains("1 passed"),
        "{stdout}{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let wrong_name = run_child("127.0.0.1");
    assert!(
        !wrong_name.status.success(),
        "verify-full checks the host name"
    );
}

//! From [`PostgresConfig`] to a `tokio_postgres::Config`, and from a failed
//! connect to a typed, redacted [`Error::Connect`].

use std::time::Duration;

use crate::config::{DatabaseUrl, PostgresConfig, parse_driver_config, scrub};
use crate::error::{Backend, Error, FailureKind, classify_postgres, describe_postgres};

/// The TLS connector connections are made with: rustls (feature `tls`),
/// or none.
#[cfg(feature = "tls")]
pub(crate) type Connector = super::tls::PgTls;
/// The TLS connector connections are made with: rustls (feature `tls`),
/// or none.
#[cfg(not(feature = "tls"))]
pub(crate) type Connector = tokio_postgres::NoTls;

/// What a connection needs: the driver configuration and the TLS connector.
#[derive(Clone)]
pub(crate) struct Driver {
    pub config: tokio_postgres::Config,
    pub tls: Connector,
    /// Asked for the password of every new connection, when set.
    pub credentials: Option<super::credentials::PasswordProvider>,
    /// `sslmode=allow`: `config` connects without TLS; a server that
    /// refuses that is asked again with TLS.
    pub plaintext_first: bool,
}

/// The task driving one direct connection's socket (outside the pool,
/// which opens its own under a tap: `super::open`).
#[cfg_attr(not(feature = "migrate"), allow(dead_code))]
pub(crate) type DirectTask = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <Connector as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

impl Driver {
    /// Opens one direct connection (outside the pool) with `config` (this
    /// driver's, or one derived from it). Under `sslmode=allow` a plain
    /// connection is tried first and, when the server answers it with an
    /// error (pg_hba.conf demanding `hostssl`), an encrypted one, as libpq
    /// does.
    #[cfg_attr(not(feature = "migrate"), allow(dead_code))]
    pub(crate) async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<(tokio_postgres::Client, DirectTask), tokio_postgres::Error> {
        match config.connect(self.tls.clone()).await {
            Err(error) if self.plaintext_first && error.as_db_error().is_some() => {
                let mut encrypted = config.clone();
                encrypted.ssl_mode(tokio_postgres::config::SslMode::Require);
                encrypted.connect(self.tls.clone()).await
            }
            outcome => outcome,
        }
    }
}

/// The TLS side of a URL: tokio-postgres' mode, whether to try without TLS
/// first (`allow`), and our connector.
#[cfg(feature = "tls")]
fn tls_settings(
    url: &DatabaseUrl,
) -> Result<(tokio_postgres::config::SslMode, bool, Connector), String> {
    use super::tls::{
        ClientCertificate, PgTls, Verification, client_config, is_system, path_param,
    };
    use tokio_postgres::config::SslMode;
    let parsed = crate::config::url::ConnectionString::parse(url.expose())
        .map_err(|p| format!("is not a valid connection string: it {p}"))?;
    let root_cert = path_param(parsed.param("sslrootcert"));
    let system = root_cert.as_deref().is_some_and(is_system);
    let client = ClientCertificate::from_params(parsed.param("sslcert"), parsed.param("sslkey"))?;
    // libpq 16: the system store makes verify-full the default and the
    // only mode allowed, since any CA in it could otherwise vouch for any
    // host.
    let sslmode = parsed
        .param("sslmode")
        .unwrap_or_else(|| if system { "verify-full" } else { "prefer" }.into());
    if system && sslmode != "verify-full" {
        return Err(format!(
            "has sslmode `{sslmode}` with sslrootcert=system, which allows only verify-full (as libpq 16)"
        ));
    }
    let (mode, verification, plaintext_first) = match sslmode.as_str() {
        "disable" => (SslMode::Disable, Verification::None, false),
        "allow" => (SslMode::Disable, Verification::None, true),
        "prefer" => (SslMode::Prefer, Verification::None, false),
        // libpq: with a CA file, `require` checks the chain like verify-ca.
        "require" if root_cert.is_some() => (SslMode::Require, Verification::Chain, false),
        "require" => (SslMode::Require, Verification::None, false),
        "verify-ca" => (SslMode::Require, Verification::Chain, false),
        "verify-full" => (SslMode::Require, Verification::Full, false),
        other => return Err(format!("has unknown sslmode `{other}`")),
    };
    if sslmode == "disable" && parsed.param("channel_binding").as_deref() == Some("require") {
        return Err(
            "has channel_binding=require with sslmode=disable: channel binding needs TLS".into(),
        );
    }
    let config = client_config(verification, root_cert.as_deref(), client.as_ref())?;
    Ok((mode, plaintext_first, PgTls::new(config)))
}

/// The driver configuration for a pool: the URL plus the session settings,
/// keepalives and timeouts of `[postgres]`. Session settings travel in the
/// startup packet (`options=-c ...`), so they cost no round trip.
pub(crate) fn driver_config(config: &PostgresConfig, url: &DatabaseUrl) -> Result<Driver, Error> {
    let mut pg =
        parse_driver_config(url).map_err(|problem| Error::config("postgres.url", problem))?;
    #[cfg(feature = "tls")]
    let (tls, plaintext_first) = {
        let (mode, plaintext_first, tls) =
            tls_settings(url).map_err(|problem| Error::config("postgres.url", problem))?;
        pg.ssl_mode(mode);
        (tls, plaintext_first)
    };
    #[cfg(not(feature = "tls"))]
    let (tls, plaintext_first) = (tokio_postgres::NoTls, false);
    if pg.get_application_name().is_none() {
        pg.application_name(&config.application_name);
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(config.pool.connect_timeout);
    }
    pg.keepalives(config.keepalives);
    pg.keepalives_idle(config.keepalives_idle);
    pg.keepalives_interval(config.keepalives_interval);
    pg.keepalives_retries(config.keepalives_retries);
    if let Some(timeout) = config.tcp_user_timeout {
        pg.tcp_user_timeout(timeout);
    }
    let mut options = pg.get_options().unwrap_or_default().to_string();
    let mut set = |name: &str, value: Option<Duration>| {
        if let Some(value) = value {
            if !options.is_empty() {
                options.push(' ');
            }
            options.push_str(&format!("-c {name}={}", value.as_millis().max(1)));
        }
    };
    set("statement_timeout", config.statement_timeout);
    set(
        "idle_in_transaction_session_timeout",
        config.idle_in_transaction_session_timeout,
    );
    if !options.is_empty() {
        pg.options(&options);
    }
    Ok(Driver {
        config: pg,
        tls,
        credentials: None,
        plaintext_first,
    })
}

/// The bound on one whole connection attempt, handshake included, for a
/// connect timeout: tokio-postgres' own timeout covers only the TCP
/// connect. The pool, its multiplexed connections and the direct
/// connections outside it all use this one bound.
pub(crate) fn attempt_timeout(connect_timeout: Duration) -> Duration {
    connect_timeout.saturating_mul(2)
}

/// A failed connection attempt as [`Error::Connect`] (one attempt; the
/// retry loop fills in the totals).
pub(crate) fn connect_error(
    error: &tokio_postgres::Error,
    target: &str,
    secrets: &[String],
) -> Error {
    let kind = classify_postgres(error);
    Error::Connect {
        backend: Backend::Postgres,
        target: target.to_string(),
        kind,
        reason: scrub(&describe_postgres(error), secrets),
        code: error.code().map(|c| c.code().to_string()),
        attempts: 1,
        elapsed: Duration::ZERO,
    }
}

/// A connect that did not finish within the pool's create timeout.
pub(crate) fn create_timeout(target: &str, after: Duration) -> Error {
    Error::Connect {
        backend: Backend::Postgres,
        target: target.to_string(),
        kind: FailureKind::Timeout,
        reason: format!("opening a connection took longer than {after:?}"),
        code: None,
        attempts: 1,
        elapsed: after,
    }
}

//! From [`PostgresConfig`] to a `tokio_postgres::Config`, and from a failed
//! connect to a typed, redacted [`Error::Connect`].

use std::time::Duration;

#[cfg(feature = "tls")]
use crate::config::libpq::PgOptions;
use crate::config::libpq::SslMode;
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
    /// The typed options of the URL plus the `[postgres]` settings. Its
    /// `ssl_mode` is set per attempt by the connect path from `sslmode`.
    pub config: tokio_postgres::Config,
    pub tls: Connector,
    /// Asked for the password of every new connection, when set.
    pub credentials: Option<super::credentials::PasswordProvider>,
    /// libpq's `sslmode` (`prefer` when the URL names none): which TLS
    /// attempts the connect path makes on each address, and in which order.
    pub sslmode: SslMode,
    /// `postgres.silence_timeout` (zero: off), for the connections'
    /// watchdogs ([`super::silence`]).
    pub silence_timeout: Duration,
}

impl Driver {
    /// Opens one direct connection (outside the pool) with `config` (this
    /// driver's, or one derived from it), by the pool's own connect path
    /// ([`super::open::open`]): libpq's host iteration, per-host timeout
    /// and TLS fallbacks.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] for the last host's failure.
    #[cfg_attr(not(feature = "migrate"), allow(dead_code))]
    pub(crate) async fn connect(
        &self,
        config: &tokio_postgres::Config,
        target: &str,
        secrets: &[String],
    ) -> Result<(tokio_postgres::Client, super::open::ConnectionTask), Error> {
        let mut driver = self.clone();
        driver.config = config.clone();
        let opened = super::open::open(&driver, target, secrets).await?;
        Ok((opened.client, opened.connection))
    }

    /// The bound on one whole connection attempt over the host list: each
    /// host gets its connect timeout (libpq's per-host bound, enforced by
    /// the connect path), plus one more for the `on_connect` hook. A
    /// safety net: the per-host bounds end the attempt first.
    pub(crate) fn attempt_timeout(&self) -> Duration {
        let hosts = self
            .config
            .get_hosts()
            .len()
            .max(self.config.get_hostaddrs().len())
            .max(1);
        let per_host = super::open::per_host_timeout(&self.config);
        per_host.saturating_mul(u32::try_from(hosts + 1).unwrap_or(u32::MAX))
    }
}

/// The TLS connector for the URL's `sslmode` and certificate files, and
/// the mode itself.
#[cfg(feature = "tls")]
fn tls_settings(options: &PgOptions) -> Result<(SslMode, Connector), String> {
    use super::tls::{
        ClientCertificate, PgTls, Verification, client_config, is_system, path_param,
    };
    let root_cert = path_param(options.sslrootcert.clone());
    let system = root_cert.as_deref().is_some_and(is_system);
    let client = ClientCertificate::from_params(options.sslcert.clone(), options.sslkey.clone())?;
    // libpq 16: the system store makes verify-full the default and the
    // only mode allowed, since any CA in it could otherwise vouch for any
    // host.
    let sslmode = options.sslmode.unwrap_or(if system {
        SslMode::VerifyFull
    } else {
        SslMode::Prefer
    });
    if system && sslmode != SslMode::VerifyFull {
        return Err(format!(
            "has sslmode `{}` with sslrootcert=system, which allows only verify-full (as libpq 16)",
            sslmode.name()
        ));
    }
    let verification = match sslmode {
        SslMode::Disable | SslMode::Allow | SslMode::Prefer => Verification::None,
        // libpq: with a CA file, `require` checks the chain like verify-ca.
        SslMode::Require if root_cert.is_some() => Verification::Chain,
        SslMode::Require => Verification::None,
        SslMode::VerifyCa => Verification::Chain,
        SslMode::VerifyFull => Verification::Full,
    };
    if sslmode == SslMode::Disable
        && options.config.get_channel_binding() == tokio_postgres::config::ChannelBinding::Require
    {
        return Err(
            "has channel_binding=require with sslmode=disable: channel binding needs TLS".into(),
        );
    }
    let config = client_config(verification, root_cert.as_deref(), client.as_ref())?;
    Ok((sslmode, PgTls::new(config)))
}

/// The driver configuration for a pool: the URL plus the session settings,
/// keepalives and timeouts of `[postgres]`. Session settings travel in the
/// startup packet (`options=-c ...`), so they cost no round trip.
pub(crate) fn driver_config(config: &PostgresConfig, url: &DatabaseUrl) -> Result<Driver, Error> {
    let options =
        parse_driver_config(url).map_err(|problem| Error::config("postgres.url", problem))?;
    #[cfg(feature = "tls")]
    let (sslmode, tls) =
        tls_settings(&options).map_err(|problem| Error::config("postgres.url", problem))?;
    #[cfg(not(feature = "tls"))]
    let (sslmode, tls) = match options.sslmode {
        None | Some(SslMode::Disable | SslMode::Allow | SslMode::Prefer) => {
            (SslMode::Disable, tokio_postgres::NoTls)
        }
        Some(mode) => {
            return Err(Error::config(
                "postgres.url",
                format!(
                    "has sslmode `{}`, which needs the `tls` feature",
                    mode.name()
                ),
            ));
        }
    };
    let mut pg = options.config;
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
        sslmode,
        silence_timeout: config.silence_timeout,
    })
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

//! libpq's host-iteration policy: which addresses are tried in which order,
//! what bounds each, and when an address is tried again with or without
//! TLS.
//!
//! - Hosts in the URL's order (shuffled with `load_balance_hosts=random`),
//!   each name's addresses in resolver order (shuffled likewise); a
//!   `hostaddr` replaces the lookup and the host name is kept for TLS.
//! - `connect_timeout` bounds the whole attempt at one address: TCP, TLS,
//!   startup, authentication and the `target_session_attrs` check. When it
//!   passes, the next address is tried (libpq: "per host or IP address").
//! - `sslmode=prefer`: when the server accepted TLS and then failed the
//!   session (a TLS handshake error, or an error response such as a
//!   pg_hba.conf that only has `hostnossl` for this client), the same
//!   address is tried once more without TLS. `allow`: a plain attempt
//!   answered with an error response is tried once more with TLS. Both
//!   within the same per-address bound, as libpq.
//! - A socket that cannot be opened, a timeout, a `target_session_attrs`
//!   refusal and a server that is not available (starting, stopping, full)
//!   move on to the next address; credentials or pg_hba.conf refused, an
//!   unknown database and TLS failures end the attempt, as in libpq
//!   ([`ends_the_list`]). The last failure is the error.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::config::{
    Host, LoadBalanceHosts, SslMode as DriverSslMode, TargetSessionAttrs,
};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, SimpleQueryMessage};

use tracing::Instrument;

use super::cancel::{Canceller, Endpoint};
use super::transport::{self, Address, SocketOptions};
use super::{ConnectionTask, Opened, TappedTransport};
use crate::config::libpq::{DEFAULT_PORT, SslMode};
use crate::error::{Backend, Error, FailureKind, classify_io};
use crate::postgres::connect::{Driver, connect_error};
use crate::postgres::wire_tap::{Tap, Tapped, TappedTls};

/// One host of the list: where to look it up, its port, its TLS name.
struct HostEntry {
    host: Option<Host>,
    hostaddr: Option<std::net::IpAddr>,
    port: u16,
}

/// Tries every address of every host in libpq's order; the first that
/// gives a usable session wins.
pub(super) async fn open(
    driver: &Driver,
    target: &str,
    secrets: &[String],
) -> Result<Opened, Error> {
    let config = &driver.config;
    let timeout = super::per_host_timeout(config);
    let mut entries = entries(config)?;
    let random = config.get_load_balance_hosts() == LoadBalanceHosts::Random;
    if random {
        fastrand::shuffle(&mut entries);
    }
    let mut last = None;
    for entry in entries {
        let hostname = match &entry.host {
            Some(Host::Tcp(name)) => Some(name.clone()),
            _ => None,
        };
        let addresses = match (entry.hostaddr, &entry.host) {
            (Some(ip), _) => Ok(vec![Address::Tcp(ip)]),
            (None, Some(Host::Tcp(name))) => resolve(name, entry.port, random, timeout).await,
            (None, Some(Host::Unix(dir))) => Ok(vec![Address::Unix(dir.clone())]),
            (None, None) => Ok(Vec::new()),
        };
        let addresses = match addresses {
            Ok(addresses) => addresses,
            Err(e) => {
                last = Some(io_error(&e, target));
                continue;
            }
        };
        for address in addresses {
            // The TLS server name: the host's name, else (a bare
            // `hostaddr`) the address itself, as libpq.
            let tls_name = match (&hostname, &address) {
                (Some(name), _) => Some(name.clone()),
                (None, Address::Tcp(ip)) => Some(ip.to_string()),
                (None, Address::Unix(_)) => None,
            };
            let span = attempt_span(config, hostname.as_deref(), &address, entry.port);
            let endpoint = Endpoint {
                address,
                port: entry.port,
                hostname: tls_name,
                timeout,
            };
            let outcome = at_address(endpoint, driver, target, secrets)
                .instrument(span.clone())
                .await;
            match &outcome {
                Ok(_) => span.record("dbmanager.connect.outcome", "connected"),
                Err(e) => {
                    crate::spans::record_error(&span, e);
                    span.record("dbmanager.connect.outcome", "failed")
                }
            };
            match outcome {
                Ok(opened) => return Ok(opened),
                Err(e) if ends_the_list(&e) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        io_error(
            &io::Error::new(
                io::ErrorKind::InvalidInput,
                "could not resolve any addresses",
            ),
            target,
        )
    }))
}

/// The client span of a connect attempt at one address: the host as
/// configured (`server.address`, else the address itself), the address
/// tried (`network.peer.address`), the port, and the outcome once known.
fn attempt_span(
    config: &tokio_postgres::Config,
    hostname: Option<&str>,
    address: &Address,
    port: u16,
) -> tracing::Span {
    let peer = match address {
        Address::Tcp(ip) => ip.to_string(),
        Address::Unix(dir) => dir.display().to_string(),
    };
    tracing::info_span!(
        target: "dbmanager::postgres",
        "dbmanager.connect.attempt",
        otel.name = "connect",
        otel.kind = "client",
        db.system.name = crate::spans::POSTGRESQL,
        db.namespace = config.get_dbname().or(config.get_user()).unwrap_or("postgres"),
        server.address = hostname.unwrap_or(peer.as_str()),
        server.port = port,
        network.peer.address = peer.as_str(),
        dbmanager.connect.outcome = tracing::field::Empty,
        error.type = tracing::field::Empty,
        db.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// Whether a failure at one address ends the whole attempt instead of
/// moving on to the next address. libpq moves on only past a socket that
/// cannot be opened, a timeout and a `target_session_attrs` refusal: "if a
/// connection is established successfully, but authentication fails, the
/// remaining hosts in the list are not tried" (the same credentials, TLS
/// settings and database name would fail the same way there). So do
/// credentials refused, pg_hba.conf, a missing database, TLS that cannot
/// be had and anything unclassified. Unlike libpq, a server that is
/// starting up, shutting down, full, or that drops the connection during
/// start-up is passed over too: that says nothing about the other hosts,
/// and a failover URL lists them for exactly that case.
fn ends_the_list(error: &Error) -> bool {
    match error {
        Error::Connect { kind, .. } => matches!(
            kind,
            FailureKind::Authentication
                | FailureKind::UnknownDatabase
                | FailureKind::Tls
                | FailureKind::Other
        ),
        _ => true,
    }
}

/// The host list of the configuration (the parser gives one port per
/// host).
fn entries(config: &tokio_postgres::Config) -> Result<Vec<HostEntry>, Error> {
    let hosts = config.get_hosts();
    let hostaddrs = config.get_hostaddrs();
    let ports = config.get_ports();
    let count = hosts.len().max(hostaddrs.len());
    if count == 0 {
        return Err(Error::config("postgres.url", "names no host"));
    }
    if !hosts.is_empty() && !hostaddrs.is_empty() && hosts.len() != hostaddrs.len() {
        return Err(Error::config(
            "postgres.url",
            "names a different number of hosts and hostaddrs",
        ));
    }
    if ports.len() > 1 && ports.len() != count {
        return Err(Error::config(
            "postgres.url",
            "names a different number of hosts and ports",
        ));
    }
    Ok((0..count)
        .map(|i| HostEntry {
            host: hosts.get(i).cloned(),
            hostaddr: hostaddrs.get(i).copied(),
            port: ports
                .get(i)
                .or(ports.first())
                .copied()
                .unwrap_or(DEFAULT_PORT),
        })
        .collect())
}

/// A name's addresses, within the per-host bound (libpq's lookup has none;
/// a resolver that hangs must not hold the whole list).
async fn resolve(
    name: &str,
    port: u16,
    random: bool,
    timeout: Duration,
) -> io::Result<Vec<Address>> {
    let lookup = tokio::net::lookup_host((name, port));
    let mut found: Vec<Address> = tokio::time::timeout(timeout, lookup)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "host name lookup timed out"))??
        .map(|a| Address::Tcp(a.ip()))
        .collect();
    if random {
        fastrand::shuffle(&mut found);
    }
    Ok(found)
}

/// The TLS modes tried at one address, in order: libpq's `sslmode`.
fn tls_plan(mode: SslMode) -> &'static [DriverSslMode] {
    match mode {
        SslMode::Disable => &[DriverSslMode::Disable],
        SslMode::Allow => &[DriverSslMode::Disable, DriverSslMode::Require],
        SslMode::Prefer => &[DriverSslMode::Prefer, DriverSslMode::Disable],
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => &[DriverSslMode::Require],
    }
}

/// Whether a failed attempt in `mode` is tried again in the plan's next
/// mode: `prefer` after TLS was used, `allow` after the server answered a
/// plain session with an error.
fn try_next_mode(mode: DriverSslMode, tls_used: bool, error: &tokio_postgres::Error) -> bool {
    match mode {
        DriverSslMode::Prefer => tls_used,
        DriverSslMode::Disable => error.as_db_error().is_some(),
        _ => false,
    }
}

/// Everything at one address, within its bound.
pub(super) async fn at_address(
    endpoint: Endpoint,
    driver: &Driver,
    target: &str,
    secrets: &[String],
) -> Result<Opened, Error> {
    let deadline = Instant::now() + endpoint.timeout;
    let plan = tls_plan(driver.sslmode);
    let mut last = None;
    for (i, mode) in plan.iter().enumerate() {
        let attempt = session(&endpoint, driver, *mode);
        let (outcome, tls_used) = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => return Err(timed_out(&endpoint, target)),
        };
        match outcome {
            Ok((client, connection, tap)) => {
                let session = (client, connection, tap);
                return finish(endpoint, driver, session, deadline, target, secrets).await;
            }
            Err(Failure::Driver(e)) => {
                let again = i + 1 < plan.len() && try_next_mode(*mode, tls_used, &e);
                last = Some(connect_error(&e, target, secrets));
                if !again {
                    break;
                }
            }
            Err(Failure::Io(e)) => {
                last = Some(io_error(&e, target));
                break;
            }
        }
    }
    Err(last.unwrap_or_else(|| timed_out(&endpoint, target)))
}

/// The per-address bound passed.
fn timed_out(endpoint: &Endpoint, target: &str) -> Error {
    Error::Connect {
        backend: Backend::Postgres,
        target: target.to_string(),
        kind: FailureKind::Timeout,
        reason: format!(
            "connecting to {} took longer than the connect timeout ({:?})",
            describe(endpoint),
            endpoint.timeout
        ),
        code: None,
        attempts: 1,
        elapsed: endpoint.timeout,
    }
}

/// How an address reads in an error.
fn describe(endpoint: &Endpoint) -> String {
    match &endpoint.address {
        Address::Tcp(ip) if ip.is_ipv6() => format!("[{ip}]:{}", endpoint.port),
        Address::Tcp(ip) => format!("{ip}:{}", endpoint.port),
        Address::Unix(dir) => dir
            .join(format!(".s.PGSQL.{}", endpoint.port))
            .display()
            .to_string(),
    }
}

enum Failure {
    Io(io::Error),
    Driver(tokio_postgres::Error),
}

type Session = (Client, ConnectionTask, Arc<Tap>);

/// A socket and a session in one TLS mode; also says whether a TLS
/// handshake was started (the server accepted TLS).
async fn session(
    endpoint: &Endpoint,
    driver: &Driver,
    mode: DriverSslMode,
) -> (Result<Session, Failure>, bool) {
    let used = Arc::new(AtomicBool::new(false));
    let outcome = async {
        let socket = transport::connect(
            &endpoint.address,
            endpoint.port,
            &SocketOptions::of(&driver.config),
        )
        .await
        .map_err(Failure::Io)?;
        let tap = Tap::new();
        let tls = MakeTlsConnect::<TappedTransport>::make_tls_connect(
            &mut driver.tls.clone(),
            endpoint.hostname.as_deref().unwrap_or(""),
        )
        .map_err(|e| Failure::Io(io::Error::other(e)))?;
        let mut config = driver.config.clone();
        config.ssl_mode(mode);
        let (client, connection) = config
            .connect_raw(
                Tapped::new(socket, tap.clone()),
                TappedTls::new(
                    Noted {
                        inner: tls,
                        used: used.clone(),
                    },
                    tap.clone(),
                ),
            )
            .await
            .map_err(Failure::Driver)?;
        Ok((client, connection, tap))
    }
    .await;
    (outcome, used.load(Ordering::Acquire))
}

/// The `target_session_attrs` check, within the address's deadline, and
/// the finished connection.
async fn finish(
    endpoint: Endpoint,
    driver: &Driver,
    (client, mut connection, tap): Session,
    deadline: Instant,
    target: &str,
    secrets: &[String],
) -> Result<Opened, Error> {
    let wanted = driver.config.get_target_session_attrs();
    if wanted != TargetSessionAttrs::Any {
        let check = read_only(&client, &mut connection);
        let read_only = match tokio::time::timeout_at(deadline, check).await {
            Err(_) => return Err(timed_out(&endpoint, target)),
            Ok(Err(e)) => return Err(connect_error(&e, target, secrets)),
            Ok(Ok(read_only)) => read_only,
        };
        let refusal = match (wanted, read_only) {
            (TargetSessionAttrs::ReadWrite, Some(true)) => Some("does not allow writes"),
            (TargetSessionAttrs::ReadOnly, Some(false)) => Some("is not read-only"),
            _ => None,
        };
        if let Some(refusal) = refusal {
            return Err(Error::Connect {
                backend: Backend::Postgres,
                target: target.to_string(),
                kind: FailureKind::Unavailable,
                reason: format!(
                    "the server at {} {refusal} (target_session_attrs)",
                    describe(&endpoint)
                ),
                code: None,
                attempts: 1,
                elapsed: Duration::ZERO,
            });
        }
    }
    // `NoTls` (no `tls` feature) is Copy; the rustls connector is not.
    #[allow(clippy::clone_on_copy)]
    let tls = driver.tls.clone();
    let canceller = Canceller::new(client.cancel_token(), endpoint, tls);
    Ok(Opened {
        client,
        connection,
        tap,
        canceller,
    })
}

/// `SHOW transaction_read_only`, running the connection meanwhile (it is
/// not spawned yet).
async fn read_only(
    client: &Client,
    connection: &mut ConnectionTask,
) -> Result<Option<bool>, tokio_postgres::Error> {
    let mut query = pin!(client.simple_query("SHOW transaction_read_only"));
    let messages = std::future::poll_fn(|cx| {
        // The connection ended before answering: its error, or (when it
        // ended cleanly) the query's, a closed connection, once polled.
        if let Poll::Ready(Err(e)) = Pin::new(&mut *connection).poll(cx) {
            return Poll::Ready(Err(e));
        }
        query.as_mut().poll(cx)
    })
    .await?;
    Ok(messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(|v| v == "on"),
        _ => None,
    }))
}

/// A socket that could not be opened, as [`Error::Connect`].
pub(super) fn io_error(error: &io::Error, target: &str) -> Error {
    let kind = classify_io(error);
    Error::Connect {
        backend: Backend::Postgres,
        target: target.to_string(),
        kind,
        reason: format!("error connecting to server: {error}"),
        code: None,
        attempts: 1,
        elapsed: Duration::ZERO,
    }
}

/// A TLS connector that notes when its handshake starts: tokio-postgres
/// calls it only after the server agreed to TLS, which is what decides
/// `sslmode=prefer`'s retry without TLS.
struct Noted<T> {
    inner: T,
    used: Arc<AtomicBool>,
}

impl<S, T: TlsConnect<S>> TlsConnect<S> for Noted<T> {
    type Stream = T::Stream;
    type Error = T::Error;
    type Future = T::Future;

    fn connect(self, stream: S) -> Self::Future {
        self.used.store(true, Ordering::Release);
        self.inner.connect(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_error(kind: FailureKind) -> Error {
        Error::Connect {
            backend: Backend::Postgres,
            target: String::new(),
            kind,
            reason: String::new(),
            code: None,
            attempts: 1,
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn each_sslmode_tries_libpqs_modes_in_libpqs_order() {
        use DriverSslMode as D;
        assert_eq!(tls_plan(SslMode::Disable), [D::Disable]);
        assert_eq!(tls_plan(SslMode::Allow), [D::Disable, D::Require]);
        assert_eq!(tls_plan(SslMode::Prefer), [D::Prefer, D::Disable]);
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            assert_eq!(tls_plan(mode), [D::Require]);
        }
    }

    #[test]
    fn refusals_end_the_host_list_and_unavailable_servers_do_not() {
        for kind in [
            FailureKind::Authentication,
            FailureKind::UnknownDatabase,
            FailureKind::Tls,
            FailureKind::Other,
        ] {
            assert!(ends_the_list(&connect_error(kind)), "{kind:?}");
        }
        for kind in [
            FailureKind::Refused,
            FailureKind::Reset,
            FailureKind::Timeout,
            FailureKind::Io,
            FailureKind::Unavailable,
            FailureKind::TooManyConnections,
        ] {
            assert!(!ends_the_list(&connect_error(kind)), "{kind:?}");
        }
    }
}

//! Opening a pooled connection over a socket of our own, so the byte tap
//! ([`super::wire_tap`]) can sit under tokio-postgres.
//!
//! tokio-postgres' `Config::connect` owns its socket; `connect_raw` takes
//! ours but leaves the rest to the caller. So this does what `connect`
//! does, in the same order: every host (and `hostaddr`) of a multi-host
//! URL, every address a name resolves to, `load_balance_hosts`, the
//! connect timeout, TCP keepalives and `tcp_user_timeout`, and the
//! `target_session_attrs` check. It keeps where it connected, because a
//! cancel request must go to the same server ([`Canceller`]).

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::{Host, LoadBalanceHosts, TargetSessionAttrs};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{CancelToken, Client, Config, SimpleQueryMessage};

use super::connect::{Connector, Driver, connect_error};
use super::wire_tap::{Tap, Tapped, TappedTls};
use crate::error::{Backend, Error, FailureKind, classify_io};

/// A socket to the server: TCP or a Unix-domain socket.
pub(crate) enum Transport {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The socket as tokio-postgres reads it: under the tap.
pub(crate) type TappedTransport = Tapped<Transport>;
type TlsStream = <Connector as MakeTlsConnect<TappedTransport>>::Stream;

/// The task half of a pooled connection: poll it to run the connection.
pub(crate) type ConnectionTask = tokio_postgres::Connection<TappedTransport, Tapped<TlsStream>>;

/// A connection just opened.
pub(crate) struct Opened {
    pub client: Client,
    pub connection: ConnectionTask,
    pub tap: Arc<Tap>,
    pub canceller: Canceller,
}

/// Where a connection went, for its cancel requests.
#[derive(Debug, Clone)]
enum Address {
    Tcp(IpAddr),
    Unix(PathBuf),
}

#[derive(Debug)]
struct Endpoint {
    address: Address,
    port: u16,
    hostname: Option<String>,
    connect_timeout: Option<Duration>,
}

/// Sends cancel requests for one connection, to the server it is on.
#[derive(Clone)]
pub(crate) struct Canceller {
    token: CancelToken,
    endpoint: Arc<Endpoint>,
    tls: Connector,
}

impl Canceller {
    /// Asks the server to cancel whatever the connection's backend runs now,
    /// within the connect timeout (or 5 s without one). It returns once the
    /// server has acted on the request (closed the cancel connection), not
    /// merely once the request was sent: the pool hands the connection out
    /// again only after that, so a late cancel cannot hit the next caller.
    pub async fn cancel(&self) -> io::Result<()> {
        let bound = self
            .endpoint
            .connect_timeout
            .unwrap_or(Duration::from_secs(5));
        let request = async {
            let endpoint = &self.endpoint;
            let socket = transport(&endpoint.address, endpoint.port, None, None, None).await?;
            let socket = UntilClosed(socket);
            let tls = MakeTlsConnect::<UntilClosed>::make_tls_connect(
                &mut self.tls.clone(),
                endpoint.hostname.as_deref().unwrap_or(""),
            )
            .map_err(io::Error::other)?;
            self.token
                .cancel_query_raw(socket, tls)
                .await
                .map_err(io::Error::other)
        };
        tokio::time::timeout(bound, request)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the cancel request timed out"))?
    }
}

/// Opens a connection as `Config::connect` would, with the tap under it.
/// Under `sslmode=allow` a plain connection is tried first and, when the
/// server answers it with an error (pg_hba.conf demanding `hostssl`), an
/// encrypted one, as libpq does.
pub(crate) async fn open(
    driver: &Driver,
    target: &str,
    secrets: &[String],
) -> Result<Opened, Error> {
    match open_once(driver, target, secrets).await {
        Err(Error::Connect { code: Some(_), .. }) if driver.plaintext_first => {
            let mut encrypted = driver.clone();
            encrypted
                .config
                .ssl_mode(tokio_postgres::config::SslMode::Require);
            open_once(&encrypted, target, secrets).await
        }
        outcome => outcome,
    }
}

/// [`open`] with the driver's TLS mode as it is.
async fn open_once(driver: &Driver, target: &str, secrets: &[String]) -> Result<Opened, Error> {
    let config = &driver.config;
    let hosts = config.get_hosts();
    let hostaddrs = config.get_hostaddrs();
    let count = hosts.len().max(hostaddrs.len());
    let ports = config.get_ports();
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
    let mut order: Vec<usize> = (0..count).collect();
    if config.get_load_balance_hosts() == LoadBalanceHosts::Random {
        fastrand::shuffle(&mut order);
    }
    let mut last = None;
    for i in order {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let hostname = match hosts.get(i) {
            Some(Host::Tcp(name)) => Some(name.clone()),
            _ => None,
        };
        let addresses = match (hostaddrs.get(i), hosts.get(i)) {
            (Some(ip), _) => Ok(vec![Address::Tcp(*ip)]),
            (None, Some(Host::Tcp(name))) => resolve(name, port, config).await,
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
            let endpoint = Endpoint {
                address,
                port,
                hostname: hostname.clone(),
                connect_timeout: config.get_connect_timeout().copied(),
            };
            match open_at(endpoint, driver, target, secrets).await {
                Ok(opened) => return Ok(opened),
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

async fn resolve(name: &str, port: u16, config: &Config) -> io::Result<Vec<Address>> {
    let mut found: Vec<Address> = tokio::net::lookup_host((name, port))
        .await?
        .map(|a| Address::Tcp(a.ip()))
        .collect();
    if config.get_load_balance_hosts() == LoadBalanceHosts::Random {
        fastrand::shuffle(&mut found);
    }
    Ok(found)
}

async fn open_at(
    endpoint: Endpoint,
    driver: &Driver,
    target: &str,
    secrets: &[String],
) -> Result<Opened, Error> {
    let config = &driver.config;
    let keepalive = config.get_keepalives().then(|| {
        let mut keepalive = TcpKeepalive::new().with_time(config.get_keepalives_idle());
        if let Some(interval) = config.get_keepalives_interval() {
            keepalive = keepalive.with_interval(interval);
        }
        if let Some(retries) = config.get_keepalives_retries() {
            keepalive = keepalive.with_retries(retries);
        }
        keepalive
    });
    let socket = transport(
        &endpoint.address,
        endpoint.port,
        endpoint.connect_timeout,
        config.get_tcp_user_timeout().copied(),
        keepalive.as_ref(),
    )
    .await
    .map_err(|e| io_error(&e, target))?;
    let tap = Tap::new();
    let tls = MakeTlsConnect::<TappedTransport>::make_tls_connect(
        &mut driver.tls.clone(),
        endpoint.hostname.as_deref().unwrap_or(""),
    )
    .map_err(|e| io_error(&io::Error::other(e), target))?;
    let (client, mut connection) = config
        .connect_raw(
            Tapped::new(socket, tap.clone()),
            TappedTls::new(tls, tap.clone()),
        )
        .await
        .map_err(|e| connect_error(&e, target, secrets))?;
    let wanted = config.get_target_session_attrs();
    if wanted != TargetSessionAttrs::Any {
        let read_only = read_only(&client, &mut connection)
            .await
            .map_err(|e| connect_error(&e, target, secrets))?;
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
                reason: format!("the server {refusal} (target_session_attrs)"),
                code: None,
                attempts: 1,
                elapsed: Duration::ZERO,
            });
        }
    }
    let canceller = Canceller {
        token: client.cancel_token(),
        endpoint: Arc::new(endpoint),
        tls: driver.tls.clone(),
    };
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

async fn transport(
    address: &Address,
    port: u16,
    timeout: Option<Duration>,
    user_timeout: Option<Duration>,
    keepalive: Option<&TcpKeepalive>,
) -> io::Result<Transport> {
    let bounded = async {
        match address {
            Address::Tcp(ip) => {
                let stream = TcpStream::connect((*ip, port)).await?;
                stream.set_nodelay(true)?;
                let socket = SockRef::from(&stream);
                #[cfg(target_os = "linux")]
                if let Some(user_timeout) = user_timeout {
                    socket.set_tcp_user_timeout(Some(user_timeout))?;
                }
                #[cfg(not(target_os = "linux"))]
                let _ = user_timeout;
                if let Some(keepalive) = keepalive {
                    socket.set_tcp_keepalive(keepalive)?;
                }
                Ok(Transport::Tcp(stream))
            }
            Address::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Ok(Transport::Unix(UnixStream::connect(path).await?))
            }
        }
    };
    match timeout {
        Some(timeout) => tokio::time::timeout(timeout, bounded)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))?,
        None => bounded.await,
    }
}

/// A socket that could not be opened, as [`Error::Connect`].
fn io_error(error: &io::Error, target: &str) -> Error {
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

/// A cancel request's socket. tokio-postgres ends a cancel request by
/// shutting its side down; this shutdown then also reads until the server
/// closes the connection, which PostgreSQL does after it has signalled the
/// backend.
struct UntilClosed(Transport);

impl AsyncRead for UntilClosed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for UntilClosed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let inner = &mut self.get_mut().0;
        std::task::ready!(Pin::new(&mut *inner).poll_shutdown(cx))?;
        let mut scratch = [0u8; 64];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            std::task::ready!(Pin::new(&mut *inner).poll_read(cx, &mut buf))?;
            if buf.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

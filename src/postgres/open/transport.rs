//! The socket under a connection: TCP (with `TCP_NODELAY`, keepalives and
//! `TCP_USER_TIMEOUT`) or a Unix-domain socket in a directory, as libpq
//! names it (`<dir>/.s.PGSQL.<port>`). No timeout here: the host-iteration
//! policy bounds the whole attempt this is the first step of.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A socket to the server: TCP or a Unix-domain socket.
pub(crate) enum Transport {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// One place a server may be: an IP address (with the port) or a socket
/// directory.
#[derive(Debug, Clone)]
pub(crate) enum Address {
    Tcp(IpAddr),
    Unix(PathBuf),
}

/// The socket options of `[postgres]` and the URL.
#[derive(Default)]
pub(crate) struct SocketOptions {
    pub user_timeout: Option<Duration>,
    pub keepalive: Option<TcpKeepalive>,
}

impl SocketOptions {
    /// From the driver configuration.
    pub fn of(config: &tokio_postgres::Config) -> SocketOptions {
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
        SocketOptions {
            user_timeout: config.get_tcp_user_timeout().copied(),
            keepalive,
        }
    }
}

/// Opens the socket to `address` (unbounded: the caller bounds it).
pub(crate) async fn connect(
    address: &Address,
    port: u16,
    options: &SocketOptions,
) -> io::Result<Transport> {
    match address {
        Address::Tcp(ip) => {
            let stream = TcpStream::connect((*ip, port)).await?;
            stream.set_nodelay(true)?;
            let socket = SockRef::from(&stream);
            #[cfg(target_os = "linux")]
            if let Some(user_timeout) = options.user_timeout {
                socket.set_tcp_user_timeout(Some(user_timeout))?;
            }
            if let Some(keepalive) = &options.keepalive {
                socket.set_tcp_keepalive(keepalive)?;
            }
            Ok(Transport::Tcp(stream))
        }
        Address::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            Ok(Transport::Unix(UnixStream::connect(path).await?))
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

//! Cancel requests: sent to the server a connection is on (the address it
//! was opened at, not the first of the URL's hosts), over a socket of their
//! own, and awaited until the server has acted on them.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::CancelToken;
use tokio_postgres::tls::MakeTlsConnect;

use super::transport::{self, Address, SocketOptions, Transport};
use crate::postgres::connect::Connector;

/// Where a connection went.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub address: Address,
    pub port: u16,
    pub hostname: Option<String>,
    /// The bound on one attempt at this address, and on a cancel request.
    pub timeout: Duration,
}

/// Sends cancel requests for one connection, to the server it is on.
#[derive(Clone)]
pub(crate) struct Canceller {
    token: CancelToken,
    endpoint: Arc<Endpoint>,
    tls: Connector,
}

impl Canceller {
    pub(super) fn new(token: CancelToken, endpoint: Endpoint, tls: Connector) -> Canceller {
        Canceller {
            token,
            endpoint: Arc::new(endpoint),
            tls,
        }
    }

    /// The server the connection is on.
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Asks the server to cancel whatever the connection's backend runs now,
    /// within the connect timeout. It returns once the server has acted on
    /// the request (closed the cancel connection), not merely once the
    /// request was sent: the pool hands the connection out again only after
    /// that, so a late cancel cannot hit the next caller.
    pub async fn cancel(&self) -> io::Result<()> {
        let request = async {
            let endpoint = &self.endpoint;
            let socket =
                transport::connect(&endpoint.address, endpoint.port, &SocketOptions::default())
                    .await?;
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
        tokio::time::timeout(self.endpoint.timeout, request)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the cancel request timed out"))?
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

//! Opening a pooled connection over a socket of our own, so the byte tap
//! ([`super::wire_tap`]) can sit under tokio-postgres.
//!
//! tokio-postgres' `Config::connect` owns its socket; `connect_raw` takes
//! ours but leaves the rest to the caller. So this does what libpq does,
//! split by concern:
//!
//! - [`transport`]: the socket (TCP with keepalives and
//!   `TCP_USER_TIMEOUT`, or a Unix-domain socket);
//! - [`hosts`]: libpq's host-iteration policy (every host and `hostaddr`,
//!   every address a name resolves to, `load_balance_hosts`,
//!   `connect_timeout` per address over the whole attempt, the
//!   `sslmode=prefer`/`allow` retries, `target_session_attrs`);
//! - [`cancel`]: cancel requests, to the server the connection is on.

mod cancel;
mod hosts;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::tls::MakeTlsConnect;

pub(crate) use cancel::Canceller;
pub(crate) use transport::Transport;

use super::connect::{Connector, Driver};
use super::wire_tap::{Tap, Tapped};
use crate::error::Error;

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

/// Opens a connection as libpq would, with the tap under it: the first
/// address of the host list that gives a usable session (see [`hosts`]).
///
/// # Errors
///
/// [`Error::Connect`] with the last address's failure, or
/// [`Error::Config`] for a host list that does not add up.
pub(crate) async fn open(
    driver: &Driver,
    target: &str,
    secrets: &[String],
) -> Result<Opened, Error> {
    hosts::open(driver, target, secrets).await
}

/// Opens another connection to the server `canceller`'s connection is on
/// (the address it was opened at, not the first of the URL's hosts),
/// within the connect timeout.
///
/// # Errors
///
/// [`Error::Connect`] with that address's failure.
pub(crate) async fn open_beside(
    canceller: &Canceller,
    driver: &Driver,
    target: &str,
    secrets: &[String],
) -> Result<Opened, Error> {
    hosts::at_address(canceller.endpoint().clone(), driver, target, secrets).await
}

/// The bound on one address's whole attempt: the connect timeout (the
/// URL's `connect_timeout`, else `postgres.pool.connect_timeout`, which
/// the driver configuration always carries), or 5 s without one.
pub(crate) fn per_host_timeout(config: &tokio_postgres::Config) -> Duration {
    config
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(5))
}

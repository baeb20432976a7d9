//! The shutdown sequence of a rolling deployment, as a future for axum's
//! `with_graceful_shutdown`.
//!
//! Kubernetes sends SIGTERM and removes the pod from its Service's endpoints
//! at the same time, and the two race: for a few seconds load balancers
//! still route new requests here. A server that closes its listener at once
//! refuses them. So: turn readiness false, keep serving while the endpoints
//! update, and only then stop accepting and drain.

use std::future::Future;
use std::time::Duration;

use crate::manager::DatabaseManager;

/// Runs a rollout's shutdown sequence: on the signal, readiness turns false
/// at once (`/health/ready` answers 503 with `"status": "draining"`,
/// `"phase": "stopping"`), requests are still served for
/// `shutdown.unready_period`, then the future resolves so axum stops
/// accepting and finishes the requests in flight. Call
/// [`DatabaseManager::shutdown`] after `axum::serve` returns.
///
/// ```no_run
/// # async fn demo(db: dbmanager::DatabaseManager, app: axum::Router) -> std::io::Result<()> {
/// use dbmanager::http::Rollout;
///
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
/// axum::serve(listener, app)
///     .with_graceful_shutdown(Rollout::new(db.clone()).on_signal()) // SIGTERM or Ctrl-C
///     .await?;
/// let report = db.shutdown().await; // after HTTP has drained
/// # Ok(()) }
/// ```
///
/// A second signal during the unready period ends it early (a second
/// Ctrl-C in a terminal does not wait). Give the process a termination
/// grace period above `unready_period` + the longest request +
/// `shutdown.grace_period`.
#[derive(Clone)]
#[must_use = "a Rollout does nothing until its future is awaited, usually through axum's with_graceful_shutdown"]
pub struct Rollout {
    db: DatabaseManager,
    unready_period: Duration,
}

impl Rollout {
    /// The sequence for this manager, serving `shutdown.unready_period`
    /// after the signal.
    pub fn new(db: DatabaseManager) -> Self {
        let unready_period = db.config().shutdown.unready_period;
        Rollout { db, unready_period }
    }

    /// Serves this long after readiness turned false, instead of
    /// `shutdown.unready_period`.
    pub fn unready_period(mut self, period: Duration) -> Self {
        self.unready_period = period;
        self
    }

    /// Waits for SIGTERM (what Kubernetes, systemd and `docker stop` send)
    /// or SIGINT (Ctrl-C), then runs the sequence; resolves when the server
    /// should stop accepting. A second signal ends the unready period early.
    ///
    /// The handlers are installed by this call, not at the future's first
    /// poll: a signal arriving between the call and the server's first
    /// poll of the future is caught, not left to its default action
    /// (ending the process). Call it inside the Tokio runtime.
    pub fn on_signal(self) -> impl Future<Output = ()> + Send + 'static {
        let mut signals = Signals::new();
        async move {
            signals.next().await;
            tracing::info!(target: "dbmanager", "shutdown signal received");
            self.after(std::future::ready(()), signals.next()).await;
        }
    }

    /// Runs the sequence when `signal` completes; `hurry`, polled only
    /// once the sequence has begun, ends the unready period early when it
    /// completes first. For signals of the service's own (an admin
    /// endpoint, a test).
    pub async fn after(self, signal: impl Future<Output = ()>, hurry: impl Future<Output = ()>) {
        signal.await;
        let announced = std::time::Instant::now();
        self.db.announce_shutdown();
        let cut_short = tokio::select! {
            () = tokio::time::sleep(self.unready_period) => false,
            () = hurry => true,
        };
        tracing::info!(
            target: "dbmanager",
            unready_ms = announced.elapsed().as_millis() as u64,
            cut_short,
            "no longer accepting requests: finishing those in flight"
        );
    }
}

/// SIGTERM and SIGINT, received repeatedly, each listened to from the
/// moment `Signals::new` returns. A signal that cannot be listened to is
/// never received, like a signal never sent, and says so in the log.
struct Signals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
                Ok(signal) => Some(signal),
                Err(error) => {
                    tracing::warn!(target: "dbmanager", %error, signal = name, "cannot listen for this signal; it will not start the shutdown");
                    None
                }
            };
            Signals {
                terminate: listen(SignalKind::terminate(), "SIGTERM"),
                interrupt: listen(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
                let received = match signal {
                    Some(signal) => signal.recv().await.is_some(),
                    None => false,
                };
                if !received {
                    std::future::pending::<()>().await;
                }
            }
            tokio::select! {
                () = received(self.terminate.as_mut()) => {}
                () = received(self.interrupt.as_mut()) => {}
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl std::fmt::Debug for Rollout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollout")
            .field("unready_period", &self.unready_period)
            .finish_non_exhaustive()
    }
}

//! A managed LISTEN connection: `db.postgres()?.listener()`.
//!
//! A connection taken from a pool is the wrong place for `LISTEN`: the
//! pool resets or recycles it (`DISCARD ALL`/`UNLISTEN *` on return, or a
//! new connection for the next checkout), so the listener stops hearing,
//! and nothing reads its socket while it sits idle, so the server's
//! notification queue fills up for every session. A [`Listener`] has a
//! connection of its own, outside the pool and the multiplexed handle,
//! opened the same way (TLS, hosts, `target_session_attrs`, password
//! provider, timeouts), read all the time, proved alive on a timer and
//! replaced when lost.

mod buffer;
mod event;
mod state;
mod task;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::pool::PostgresPool;
use crate::error::{Backend, Error, Result};
use crate::health::ListenerHealth;
pub use event::ListenerEvent;
use state::State;
use task::{Command, Context};

/// PostgreSQL's identifier limit (NAMEDATALEN - 1): a longer channel name
/// is truncated by the server, so notifications would come back under
/// another name.
const MAX_CHANNEL_BYTES: usize = 63;

/// A dedicated LISTEN connection and the stream of its events:
/// `db.postgres()?.listener().await?`.
///
/// - [`Listener::listen`] / [`Listener::unlisten`] return once the server
///   confirmed them.
/// - [`Listener::next`] yields [`ListenerEvent`]s: notifications in the
///   order the server sent them; `Reconnected` once a lost connection was
///   replaced **and** every channel is listened again; `Lagged` when the
///   consumer fell more than `postgres.listener.buffer_size` events behind.
///   On either of the last two, resync: nothing is ever lost silently.
///
/// The connection is read all the time, whatever the consumer does, so a
/// slow consumer never backs up the server's notification queue (which,
/// once full, makes `NOTIFY` fail in every session). A connection that
/// does not answer the round trip made every
/// `postgres.listener.liveness_interval` within `liveness_timeout` (a
/// half-open socket, a frozen server) is replaced, as is one lost to a
/// restart, `pg_terminate_backend` or a failover; reconnects back off up
/// to `reconnect_max_delay` and never give up before shutdown.
///
/// [`crate::DatabaseManager::shutdown`] closes the connection; `next` then
/// returns the events still buffered, then `None`. Dropping the handle
/// closes it too.
///
/// ```no_run
/// # async fn demo(db: dbmanager::DatabaseManager) -> dbmanager::Result<()> {
/// use dbmanager::ListenerEvent;
///
/// let mut listener = db.postgres()?.listener().await?;
/// listener.listen("orders").await?;
/// while let Some(event) = listener.next().await {
///     match event {
///         ListenerEvent::Notification { channel, payload, .. } => {
///             println!("{channel}: {payload}");
///         }
///         // Some notifications may be gone: read the state again.
///         ListenerEvent::Reconnected { .. } | ListenerEvent::Lagged { .. } => {}
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Listener {
    state: Arc<State>,
    commands: mpsc::UnboundedSender<Command>,
    bound: Duration,
}

impl PostgresPool {
    /// Opens a dedicated LISTEN connection (see [`Listener`]) with the
    /// pool's connect settings, within the connect timeout.
    ///
    /// # Errors
    ///
    /// [`Error::ShuttingDown`] once shutdown began; [`Error::Connect`] (or
    /// [`Error::CredentialProvider`], [`Error::Hook`]) when the connection
    /// could not be opened.
    pub async fn listener(&self) -> Result<Listener> {
        self.listeners.open().await
    }

    /// The listeners of this pool, for health and shutdown.
    pub(crate) fn listeners(&self) -> &Listeners {
        &self.listeners
    }
}

impl Listener {
    /// Listens to `channel` (taken as is, case included: it is quoted).
    /// Returns once the server confirmed it. While the connection is being
    /// replaced, the channel joins the others listened on the new one and
    /// this returns when that is done.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidChannel`] for an empty name, one over 63 bytes or
    /// with a NUL byte; [`Error::Timeout`] when no confirmation came within
    /// `postgres.listener.liveness_timeout` (the channel stays wanted: it is
    /// listened on the next connection, before `Reconnected`);
    /// [`Error::Postgres`] when the server refused (a standby refuses
    /// `LISTEN`); [`Error::ShuttingDown`] once the listener closed.
    pub async fn listen(&self, channel: &str) -> Result<()> {
        check_channel(channel)?;
        self.request("LISTEN", |reply| {
            Command::Listen(channel.to_string(), reply)
        })
        .await
    }

    /// Stops listening to `channel`. Returns once the server confirmed it
    /// (or the connection that listened is gone). Notifications of that
    /// channel already buffered are still delivered.
    ///
    /// # Errors
    ///
    /// As [`Listener::listen`].
    pub async fn unlisten(&self, channel: &str) -> Result<()> {
        check_channel(channel)?;
        self.request("UNLISTEN", |reply| {
            Command::Unlisten(channel.to_string(), reply)
        })
        .await
    }

    async fn request(
        &self,
        what: &'static str,
        command: impl FnOnce(oneshot::Sender<Result<()>>) -> Command,
    ) -> Result<()> {
        let closed = || Error::ShuttingDown {
            backend: Backend::Postgres,
        };
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).map_err(|_| closed())?;
        match tokio::time::timeout(self.bound, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(closed()),
            Err(_) => Err(Error::Timeout {
                what,
                after: self.bound,
            }),
        }
    }

    /// The next event; `None` once the listener has been shut down and
    /// every buffered event was read. Cancel-safe: an event is taken only
    /// when it is returned.
    pub async fn next(&mut self) -> Option<ListenerEvent> {
        loop {
            let ready = self.state.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if let Some(event) = self.state.pop() {
                return Some(event);
            }
            if self.state.is_ended() {
                // Events buffered just before the end.
                return self.state.pop();
            }
            ready.await;
        }
    }

    /// The event already buffered, if any, without waiting.
    pub fn try_next(&mut self) -> Option<ListenerEvent> {
        self.state.pop()
    }

    /// The channels listened to (or to be listened again after a
    /// reconnect), sorted.
    pub fn channels(&self) -> Vec<String> {
        self.state.channels()
    }

    /// Whether the connection is up now (false while it is being replaced
    /// and after shutdown).
    pub fn is_connected(&self) -> bool {
        self.state
            .connected
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Connection, channels, lag and counters, as in the health report.
    pub fn health(&self) -> ListenerHealth {
        self.state.health()
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("connected", &self.is_connected())
            .field("channels", &self.channels())
            .finish()
    }
}

fn check_channel(channel: &str) -> Result<()> {
    let problem = if channel.is_empty() {
        Some("it is empty")
    } else if channel.len() > MAX_CHANNEL_BYTES {
        Some("it is longer than 63 bytes, which the server would truncate")
    } else if channel.contains('\0') {
        Some("it contains a NUL byte")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::InvalidChannel {
            channel: channel.to_string(),
            problem,
        }),
        None => Ok(()),
    }
}

/// The listeners of one pool: how new ones connect, and the live ones for
/// health and shutdown.
#[derive(Clone)]
pub(crate) struct Listeners {
    inner: Arc<Registry>,
}

struct Registry {
    context: Arc<Context>,
    /// The live listeners; `None` once shutdown took them (no new ones).
    live: Mutex<Option<Vec<Entry>>>,
}

struct Entry {
    state: Weak<State>,
    task: JoinHandle<()>,
}

impl Listeners {
    pub(crate) fn new(
        settings: crate::config::PostgresListenerConfig,
        driver: super::connect::Driver,
        shared: Arc<super::shared::Shared>,
    ) -> Self {
        Listeners {
            inner: Arc::new(Registry {
                context: Arc::new(Context {
                    driver,
                    shared,
                    settings,
                }),
                live: Mutex::new(Some(Vec::new())),
            }),
        }
    }

    async fn open(&self) -> Result<Listener> {
        let context = &self.inner.context;
        let shutting_down = || Error::ShuttingDown {
            backend: Backend::Postgres,
        };
        if context.shared.is_draining() {
            return Err(shutting_down());
        }
        let state = Arc::new(State::new(context.settings.buffer_size));
        let live = task::connect(context, &state).await?;
        let (commands, receiver) = mpsc::unbounded_channel();
        let mut live_entries = self.inner.live.lock().expect("listeners lock");
        // Checked again under the lock shutdown takes: a listener opened
        // while shutdown began is not left running.
        let Some(entries) = live_entries.as_mut() else {
            return Err(shutting_down());
        };
        entries.retain(|e| !e.task.is_finished());
        let task = tokio::spawn(task::run(context.clone(), state.clone(), live, receiver));
        entries.push(Entry {
            state: Arc::downgrade(&state),
            task,
        });
        drop(live_entries);
        Ok(Listener {
            state,
            commands,
            bound: context.settings.liveness_timeout,
        })
    }

    /// Each live listener's state, for the health report.
    pub(crate) fn health(&self) -> Vec<ListenerHealth> {
        self.inner
            .live
            .lock()
            .expect("listeners lock")
            .iter()
            .flatten()
            .filter(|e| !e.task.is_finished())
            .filter_map(|e| e.state.upgrade())
            .map(|s| s.health())
            .collect()
    }

    /// Closes every listener within `grace` (their streams end); returns
    /// how many had to be ended forcibly at the deadline.
    pub(crate) async fn drain(&self, grace: Duration) -> usize {
        let entries = self
            .inner
            .live
            .lock()
            .expect("listeners lock")
            .take()
            .unwrap_or_default();
        for entry in &entries {
            if let Some(state) = entry.state.upgrade() {
                state.request_stop();
            }
        }
        let deadline = crate::clock::deadline_after(grace);
        let mut forced = 0;
        for mut entry in entries {
            if tokio::time::timeout_at(deadline, &mut entry.task)
                .await
                .is_err()
            {
                entry.task.abort();
                forced += 1;
            }
        }
        forced
    }
}

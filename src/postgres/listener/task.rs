//! A listener's connection task: opens the connection through the pool's
//! connect path, reads it without pause, answers `listen`/`unlisten`,
//! proves it alive on a timer, and replaces it (listening every channel
//! again) when it is lost.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, SimpleQueryMessage};

use super::state::State;
use crate::error::{Error, Result};
use crate::metrics::{self, PoolLabel};
use crate::postgres::connect::{Driver, create_timeout};
use crate::postgres::credentials::secrets_of;
use crate::postgres::open::{ConnectionTask, Opened, open};
use crate::postgres::shared::Shared;
use crate::retry::{Jitter, RetryPolicy};

/// The first wait between reconnect attempts; it doubles (with full
/// jitter) up to `postgres.listener.reconnect_max_delay`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// What a connection needs, the same for every listener of a pool.
pub(super) struct Context {
    pub driver: Driver,
    pub shared: Arc<Shared>,
    pub settings: crate::config::PostgresListenerConfig,
}

/// A request from the handle; the answer goes back once the server
/// confirmed it.
pub(super) enum Command {
    Listen(String, oneshot::Sender<Result<()>>),
    Unlisten(String, oneshot::Sender<Result<()>>),
}

/// One open connection: the client, and the task reading its socket
/// (ended with this value).
pub(super) struct Live {
    client: Client,
    reader: JoinHandle<()>,
}

impl Drop for Live {
    fn drop(&mut self) {
        // The reader owns the socket: ending it closes the connection even
        // when the peer no longer answers.
        self.reader.abort();
    }
}

/// Why the connected loop ended.
enum Exit {
    /// Shutdown, or the handle was dropped: end the task.
    Stop,
    /// The connection is gone or does not answer: replace it.
    Lost(&'static str),
}

/// Opens a connection within the connect bound and runs the `on_connect`
/// hook on it; its socket is read from then on.
pub(super) async fn connect(ctx: &Context, state: &Arc<State>) -> Result<Live> {
    let limit = ctx.driver.attempt_timeout();
    let started = Instant::now();
    let opening = async {
        let driver = ctx.driver.for_next_connection().await?;
        let secrets = secrets_of(&driver.config, &ctx.shared.secrets);
        open(&driver, &ctx.shared.target, &secrets).await
    };
    let Opened {
        client, connection, ..
    } = tokio::time::timeout(limit, opening)
        .await
        .map_err(|_| create_timeout(&ctx.shared.target, limit))
        .and_then(|opened| opened)
        .inspect_err(|e| metrics::connect_failed(PoolLabel::LISTENER, e))?;
    let reader = tokio::spawn(read(connection, state.clone()));
    let live = Live { client, reader };
    if let Some(hook) = &ctx.shared.hooks.on_connect
        && let Err(e) = hook.call(&live.client).await
    {
        return Err(Error::Hook {
            hook: "on_connect",
            reason: crate::config::scrub(&e.to_string(), &ctx.shared.secrets),
        });
    }
    metrics::connection_created(PoolLabel::LISTENER, Some(started.elapsed()));
    Ok(live)
}

/// Reads the socket until the connection ends, buffering every
/// notification at once: the server's queue never waits for the consumer.
async fn read(mut connection: ConnectionTask, state: Arc<State>) {
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                state.notification(n.channel(), n.payload(), n.process_id());
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(target: "dbmanager::postgres", error = %e, "listener connection ended with an error");
                return;
            }
            None => return,
        }
    }
}

/// `LISTEN "a"; LISTEN "b"` (or `UNLISTEN`), identifiers quoted.
fn statement(verb: &str, channels: &[&str]) -> String {
    let mut sql = String::new();
    for channel in channels {
        sql.push_str(verb);
        sql.push_str(" \"");
        sql.push_str(&channel.replace('"', "\"\""));
        sql.push_str("\";");
    }
    sql
}

/// Runs `sql` on the live connection; lost when it neither answers nor
/// delivers a notification for `bound`. Answers queue behind the
/// notifications the server sent first, so a flood delays the answer of a
/// healthy connection: progress on the socket counts as life.
async fn round_trip(state: &State, live: &Live, sql: &str, bound: Duration) -> RoundTrip {
    let answer = live.client.simple_query(sql);
    tokio::pin!(answer);
    let mut seen = state.received();
    loop {
        match tokio::time::timeout(bound, answer.as_mut()).await {
            Err(_) => {
                let now = state.received();
                if now == seen {
                    return RoundTrip::Lost("a round trip on the listener connection timed out");
                }
                seen = now;
            }
            Ok(Err(e)) if e.as_db_error().is_some() => return RoundTrip::Refused(e),
            Ok(Err(_)) => return RoundTrip::Lost("the listener connection closed"),
            Ok(Ok(messages)) => return RoundTrip::Answered(messages),
        }
    }
}

enum RoundTrip {
    Answered(Vec<SimpleQueryMessage>),
    /// The server answered with an error: the connection works.
    Refused(tokio_postgres::Error),
    Lost(&'static str),
}

/// Listens to every wanted channel on a new connection.
async fn listen_all(live: &Live, state: &State, bound: Duration) -> Result<()> {
    let channels = state.channels();
    if channels.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = channels.iter().map(String::as_str).collect();
    match round_trip(state, live, &statement("LISTEN", &names), bound).await {
        RoundTrip::Answered(_) => Ok(()),
        RoundTrip::Refused(error) => Err(Error::Postgres {
            what: "LISTEN",
            error,
        }),
        RoundTrip::Lost(_) => Err(Error::Timeout {
            what: "listening again on a new listener connection",
            after: bound,
        }),
    }
}

/// The task: serves the connection `live` and each one that replaces it,
/// until shutdown or until the handle is dropped.
pub(super) async fn run(
    ctx: Arc<Context>,
    state: Arc<State>,
    live: Live,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    // Ends the consumer's stream however this task ends (aborted too).
    struct End(Arc<State>);
    impl Drop for End {
        fn drop(&mut self) {
            self.0.end();
        }
    }
    let _end = End(state.clone());
    let mut live = Some(live);
    let mut waiting: Vec<oneshot::Sender<Result<()>>> = Vec::new();
    loop {
        if let Some(mut current) = live.take() {
            state.connected.store(true, Ordering::Release);
            match serve(&ctx, &state, &mut current, &mut commands, &mut waiting).await {
                Exit::Stop => return,
                Exit::Lost(why) => {
                    tracing::warn!(target: "dbmanager::postgres", reason = why, "listener connection lost; reconnecting");
                    state.connected.store(false, Ordering::Release);
                    metrics::connections_closed(
                        PoolLabel::LISTENER,
                        metrics::CloseReason::Broken,
                        1,
                    );
                }
            }
        }
        match reconnect(&ctx, &state, &mut commands, &mut waiting).await {
            Some(fresh) => live = Some(fresh),
            None => return,
        }
    }
}

/// Serves a live connection until it is lost or the task should stop.
async fn serve(
    ctx: &Context,
    state: &State,
    live: &mut Live,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    waiting: &mut Vec<oneshot::Sender<Result<()>>>,
) -> Exit {
    let settings = &ctx.settings;
    let bound = settings.liveness_timeout;
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.liveness_interval,
        settings.liveness_interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Callers whose channel was confirmed by listening again after a
    // reconnect.
    for reply in waiting.drain(..) {
        let _ = reply.send(Ok(()));
    }
    loop {
        if state.is_stopping() {
            return Exit::Stop;
        }
        tokio::select! {
            biased;
            () = state.stop.notified() => return Exit::Stop,
            // The reader ends when the socket closes or fails.
            _ = &mut live.reader => return Exit::Lost("the listener connection closed"),
            command = commands.recv() => {
                let Some(command) = command else { return Exit::Stop };
                if let Some(lost) = execute(state, live, command, bound, waiting).await {
                    return Exit::Lost(lost);
                }
            }
            _ = tick.tick() => {
                if let Some(lost) = prove_alive(ctx, state, live, bound).await {
                    return Exit::Lost(lost);
                }
            }
        }
    }
}

/// Answers one `listen`/`unlisten`; returns why the connection is lost when
/// it is (the caller's answer then waits for the reconnect).
async fn execute(
    state: &State,
    live: &Live,
    command: Command,
    bound: Duration,
    waiting: &mut Vec<oneshot::Sender<Result<()>>>,
) -> Option<&'static str> {
    let (verb, channel, reply) = match command {
        Command::Listen(channel, reply) => {
            // Wanted from now on: a reconnect during the round trip
            // listens to it with the others.
            state
                .channels
                .lock()
                .expect("listener channels lock")
                .insert(channel.clone());
            ("LISTEN", channel, reply)
        }
        Command::Unlisten(channel, reply) => {
            state
                .channels
                .lock()
                .expect("listener channels lock")
                .remove(&channel);
            ("UNLISTEN", channel, reply)
        }
    };
    match round_trip(state, live, &statement(verb, &[&channel]), bound).await {
        RoundTrip::Answered(_) => {
            let _ = reply.send(Ok(()));
            None
        }
        RoundTrip::Refused(error) => {
            if verb == "LISTEN" {
                state
                    .channels
                    .lock()
                    .expect("listener channels lock")
                    .remove(&channel);
            }
            let what = if verb == "LISTEN" {
                "LISTEN"
            } else {
                "UNLISTEN"
            };
            let _ = reply.send(Err(Error::Postgres { what, error }));
            None
        }
        RoundTrip::Lost(why) => {
            if verb == "LISTEN" {
                waiting.push(reply);
            } else {
                // The connection that listened is gone: nothing listens.
                let _ = reply.send(Ok(()));
            }
            Some(why)
        }
    }
}

/// The periodic round trip: a connection that does not answer within the
/// bound is lost (half-open, frozen server). When a writable server is
/// required, one that became read-only (a demoted primary) is left too.
async fn prove_alive(
    ctx: &Context,
    state: &State,
    live: &Live,
    bound: Duration,
) -> Option<&'static str> {
    let sql = if ctx.shared.require_writable {
        "SHOW transaction_read_only"
    } else {
        "SELECT 1"
    };
    match round_trip(state, live, sql, bound).await {
        RoundTrip::Answered(messages) => {
            let read_only = messages
                .iter()
                .any(|m| matches!(m, SimpleQueryMessage::Row(row) if row.get(0) == Some("on")));
            (ctx.shared.require_writable && read_only)
                .then_some("the server no longer allows writes (target_session_attrs)")
        }
        // A server that answers with an error is alive.
        RoundTrip::Refused(_) => None,
        RoundTrip::Lost(why) => Some(why),
    }
}

/// Opens a replacement, with backoff, until it is open and listens to every
/// wanted channel; then tells the consumer. `None` when the task should end
/// instead (shutdown, or the handle was dropped).
async fn reconnect(
    ctx: &Context,
    state: &Arc<State>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    waiting: &mut Vec<oneshot::Sender<Result<()>>>,
) -> Option<Live> {
    let lost_at = Instant::now();
    let policy = RetryPolicy::exponential()
        .initial_delay(FIRST_BACKOFF)
        .max_delay(ctx.settings.reconnect_max_delay.max(FIRST_BACKOFF))
        .unlimited_attempts()
        .jitter(Jitter::Full);
    let mut attempt: u32 = 0;
    loop {
        if state.is_stopping() {
            return None;
        }
        // Requests made while disconnected change the wanted set; their
        // answers wait for the connection that listens to it.
        loop {
            match commands.try_recv() {
                Ok(Command::Listen(channel, reply)) => {
                    state
                        .channels
                        .lock()
                        .expect("listener channels lock")
                        .insert(channel);
                    waiting.push(reply);
                }
                Ok(Command::Unlisten(channel, reply)) => {
                    state
                        .channels
                        .lock()
                        .expect("listener channels lock")
                        .remove(&channel);
                    let _ = reply.send(Ok(()));
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
            }
        }
        let outcome = match connect(ctx, state).await {
            Ok(live) => match listen_all(&live, state, ctx.settings.liveness_timeout).await {
                Ok(()) => Ok(live),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match outcome {
            Ok(live) => {
                let gap = lost_at.elapsed();
                // Connected before the consumer hears of it.
                state.connected.store(true, Ordering::Release);
                state.reconnected(gap);
                tracing::info!(target: "dbmanager::postgres", gap_ms = gap.as_millis() as u64, attempts = attempt + 1, "listener reconnected; every channel listened again");
                return Some(live);
            }
            Err(e) => {
                let wait = policy.jittered_delay_for(attempt);
                tracing::warn!(target: "dbmanager::postgres", error = %e, retry_in_ms = wait.as_millis() as u64, "listener could not reconnect");
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    () = state.stop.notified() => return None,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::statement;

    #[test]
    fn channel_names_are_quoted_as_identifiers() {
        assert_eq!(
            statement("LISTEN", &["orders", "a\"b"]),
            "LISTEN \"orders\";LISTEN \"a\"\"b\";"
        );
    }
}

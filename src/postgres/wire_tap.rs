//! A byte tap under tokio-postgres: every message the client writes and
//! the server sends passes through the exact session model
//! ([`super::protocol::Session`]), so the pool knows what a connection
//! carries — requests unanswered, transaction status, a COPY left open —
//! instead of guessing it.
//!
//! With TLS the tap sits twice: on the socket until the server accepts the
//! `SSLRequest` (after which those bytes are ciphertext and it stops
//! reading them), and above the TLS stream, where it reads the plaintext.
//!
//! The tap also watches the connection's task ([`Watched`]): a request a
//! caller handed to tokio-postgres sits in the client's queue until that
//! task writes it, and a caller whose future was dropped right after can
//! return the connection before then. The task is polled with a waker of
//! the tap's, so a request queued since the task last ran shows as
//! [`Tap::is_quiet`] false: the pool waits for the task to run (no round
//! trip) before it reads the session.
//!
//! And it keeps when the server last sent a byte, for the silence watchdog
//! ([`super::silence`]), which closes a connection through it
//! ([`Tap::close_for_silence`]).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

use super::protocol::{Framer, ServerError, Session, View};
use super::silence::silence_errors;

/// The start-up code of an `SSLRequest` (PostgreSQL protocol).
const SSL_REQUEST_CODE: u32 = 80_877_103;
/// The start-up code of a `GSSENCRequest`.
const GSSENC_REQUEST_CODE: u32 = 80_877_104;

/// The connection's task is being polled.
const POLLING: u8 = 1;
/// Something woke the task since its last poll began (a request queued, a
/// reply arrived, the socket became writable).
const WOKEN: u8 = 2;
/// The task's last write or flush could not complete: bytes wait in its
/// buffer that the tap has not seen.
const BLOCKED: u8 = 4;

/// What the tap knows of one connection; shared by the connection's task
/// (which feeds it) and the pool (which reads it between checkouts).
#[derive(Debug)]
pub(crate) struct Tap {
    session: Mutex<Session>,
    /// `POLLING | WOKEN | BLOCKED`: all clear when everything handed to the
    /// client has been written and the task has nothing left to do.
    task: AtomicU8,
    /// The task's own waker, which the tap's waker passes wake-ups on to.
    task_waker: AtomicWaker,
    /// Woken at the end of every poll of the task, and when it ends.
    changed: Notify,
    /// What the times below count from.
    born: Instant,
    /// Nanoseconds from `born` to the server's last byte.
    last_read: AtomicU64,
    /// Nanoseconds from `born` to the client's last write after the
    /// server's last byte (valid while `wrote_since_read`).
    last_write: AtomicU64,
    wrote_since_read: AtomicBool,
    /// The last read found no bytes: tokio-postgres waits on the server.
    /// Clear while it is not reading (its caller has not taken the answers
    /// already read), when the silence is this side's, not the server's.
    reading: AtomicBool,
    /// Set once by the silence watchdog: the server said nothing for too
    /// long; the reader ends the connection with this message.
    silenced: OnceLock<String>,
    /// The waker of whoever last waited for the server's bytes.
    reader: AtomicWaker,
}

impl Tap {
    pub fn new() -> Arc<Self> {
        Arc::new(Tap {
            session: Mutex::new(Session::new()),
            task: AtomicU8::new(0),
            task_waker: AtomicWaker::new(),
            changed: Notify::new(),
            born: Instant::now(),
            last_read: AtomicU64::new(0),
            last_write: AtomicU64::new(0),
            wrote_since_read: AtomicBool::new(false),
            reading: AtomicBool::new(false),
            silenced: OnceLock::new(),
            reader: AtomicWaker::new(),
        })
    }

    fn since_born(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn read_now(&self) {
        self.last_read.store(self.since_born(), Ordering::Release);
        self.wrote_since_read.store(false, Ordering::Release);
        self.reading.store(false, Ordering::Release);
    }

    fn waiting_for_bytes(&self) {
        self.reading.store(true, Ordering::Release);
    }

    fn wrote_now(&self) {
        // Every write is timed, not only the first after a read: a request
        // still being uploaded (a large parameter, COPY data, a slow link)
        // is this side still talking, not the server being silent.
        self.last_write.store(self.since_born(), Ordering::Release);
        self.wrote_since_read.store(true, Ordering::Release);
    }

    /// Since when the server has said nothing while it owed an answer, or
    /// `None` when it owes none (or the connection ended), or when this
    /// side is not reading (a caller slow to take its rows: the server may
    /// have sent everything). The silence counts from the later of its last
    /// byte and the client's last write after it: a request written to a
    /// connection at rest starts it, and an upload still in progress keeps
    /// restarting it.
    pub fn silent_since(&self) -> Option<Instant> {
        if !self.reading.load(Ordering::Acquire) || !self.session().server_owes() {
            return None;
        }
        let mut since = self.last_read.load(Ordering::Acquire);
        if self.wrote_since_read.load(Ordering::Acquire) {
            since = since.max(self.last_write.load(Ordering::Acquire));
        }
        Some(self.born + Duration::from_nanos(since))
    }

    /// The process id of the connection's backend, from the start-up.
    pub fn backend_pid(&self) -> Option<i32> {
        self.session().backend_pid()
    }

    /// Ends the connection for silence: its reader hands tokio-postgres an
    /// error with `message` (SQLSTATE 08006) in place of the server's
    /// answer, then the end of the stream, so the caller waiting for the
    /// answer gets that error and the connection closes.
    pub fn close_for_silence(&self, message: String) {
        if self.silenced.set(message).is_ok() {
            self.reader.wake();
            self.task_waker.wake();
        }
    }

    fn session(&self) -> MutexGuard<'_, Session> {
        // A panic while the lock was held leaves a session that may be half
        // updated: it is read as it is, and the model's own checks break it
        // if it no longer adds up.
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session as the pool acts on it.
    pub fn view(&self) -> View {
        self.session().view()
    }

    /// Why the session is broken, for logs.
    pub fn broken_reason(&self) -> Option<&'static str> {
        self.session().broken_reason()
    }

    /// Whether everything handed to tokio-postgres for this connection has
    /// been written, so [`Tap::view`] covers it.
    pub fn is_quiet(&self) -> bool {
        self.task.load(Ordering::Acquire) == 0
    }

    /// Waits until `ready` holds, re-checking after every run of the
    /// connection's task (the caller bounds the wait).
    pub async fn wait_until(&self, ready: impl Fn(&Tap) -> bool) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if ready(self) {
                return;
            }
            changed.await;
        }
    }

    /// Whether the last `CommandComplete` was tagged `ROLLBACK`, with the
    /// first error the server reported in that transaction: a `COMMIT` of a
    /// failed transaction is answered so.
    pub fn rolled_back(&self) -> Option<Option<ServerError>> {
        let session = self.session();
        session
            .last_tag_was_rollback()
            .then(|| session.first_error().cloned())
    }

    /// The first error the server reported in the current (or last)
    /// transaction.
    pub fn first_error(&self) -> Option<ServerError> {
        self.session().first_error().cloned()
    }

    /// Whether the server refused a write as read-only since the flag was
    /// last taken; clears it.
    pub fn take_refused_write(&self) -> bool {
        self.session().take_refused_write()
    }

    fn end(&self) {
        self.session().connection_ended();
        self.changed.notify_waiters();
    }

    fn set_blocked(&self, blocked: bool) {
        if blocked {
            self.task.fetch_or(BLOCKED, Ordering::AcqRel);
        } else {
            self.task.fetch_and(!BLOCKED, Ordering::AcqRel);
        }
    }
}

/// The waker the connection's task is polled with: it marks the task woken
/// before passing the wake-up on, so a request queued after the task's last
/// poll is seen at once.
struct TapWaker(Arc<Tap>);

impl Wake for TapWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.task.fetch_or(WOKEN, Ordering::AcqRel);
        self.0.task_waker.wake();
    }
}

/// A connection's task (tokio-postgres' `Connection` future) polled under
/// the tap's watch.
pub(crate) struct Watched<F> {
    inner: F,
    tap: Arc<Tap>,
    waker: Waker,
}

impl<F> Watched<F> {
    pub fn new(inner: F, tap: Arc<Tap>) -> Self {
        let waker = Waker::from(Arc::new(TapWaker(tap.clone())));
        Watched { inner, tap, waker }
    }
}

impl<F: Future + Unpin> Future for Watched<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        this.tap.task_waker.register(cx.waker());
        // WOKEN is cleared before the poll: a wake-up during it sets it
        // again, and the task runs once more.
        this.tap
            .task
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                Some((bits | POLLING) & !WOKEN)
            })
            .ok();
        let result = Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker));
        this.tap.task.fetch_and(!POLLING, Ordering::AcqRel);
        if result.is_ready() {
            this.tap.end();
        } else {
            this.tap.changed.notify_waiters();
        }
        result
    }
}

/// How one tapped layer reads the server's bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Incoming {
    /// Typed messages.
    Messages,
    /// The one-byte answer to an `SSLRequest` or `GSSENCRequest`.
    EncryptionAnswer,
    /// Ciphertext: the tap above the TLS stream reads the messages.
    Opaque,
}

/// A stream with the tap on it.
pub(crate) struct Tapped<S> {
    inner: S,
    tap: Arc<Tap>,
    /// `None` once the bytes written are ciphertext.
    outgoing: Option<Framer>,
    incoming: Incoming,
    incoming_framer: Framer,
    /// After [`Tap::close_for_silence`]: the error's bytes not yet handed
    /// to the reader (empty once all were: the stream ends).
    silence_error: Option<(Vec<u8>, usize)>,
}

impl<S> Tapped<S> {
    /// A tap on a fresh connection: the client speaks first, untyped.
    pub fn new(inner: S, tap: Arc<Tap>) -> Self {
        Tapped {
            inner,
            tap,
            outgoing: Some(Framer::new(false)),
            incoming: Incoming::Messages,
            incoming_framer: Framer::new(true),
            silence_error: None,
        }
    }

    /// After [`Tap::close_for_silence`]: an error in place of each answer
    /// owed (tokio-postgres hands each to the request it answers: the
    /// oldest may be housekeeping no caller waits for, a dropped statement's
    /// close), then the end of the stream. The errors go in only on a
    /// message boundary (it would garble a half-read message): otherwise
    /// the read fails with the message as an I/O error, and callers see the
    /// connection closed.
    fn end_for_silence(&mut self, message: &str, buf: &mut ReadBuf<'_>) -> io::Result<()> {
        if self.silence_error.is_none() {
            if !self.incoming_framer.at_boundary() {
                self.tap.end();
                return Err(io::Error::new(io::ErrorKind::TimedOut, message.to_string()));
            }
            let owed = self.tap.view().awaiting.max(1);
            self.silence_error = Some((silence_errors(message, owed), 0));
        }
        let Some((error, sent)) = &mut self.silence_error else {
            return Ok(());
        };
        let rest = &error[*sent..];
        if rest.is_empty() {
            self.tap.end();
            return Ok(());
        }
        let take = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..take]);
        *sent += take;
        Ok(())
    }

    fn wrote(&mut self, bytes: &[u8]) {
        let Some(framer) = &mut self.outgoing else {
            return;
        };
        let mut session = self.tap.session();
        let mut rest = bytes;
        while !rest.is_empty() {
            let mut encryption_requested = false;
            let mut started = false;
            let used = framer.feed(rest, &mut |kind, body| {
                if kind != 0 {
                    session.client_sent(kind, body);
                    return true;
                }
                match startup_code(body) {
                    Some(SSL_REQUEST_CODE | GSSENC_REQUEST_CODE) => encryption_requested = true,
                    _ => {
                        session.startup_sent();
                        started = true;
                    }
                }
                false
            });
            rest = &rest[used..];
            if started {
                framer.set_typed();
            }
            if encryption_requested {
                self.incoming = Incoming::EncryptionAnswer;
            }
        }
    }

    fn read(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.incoming {
                Incoming::Opaque => return,
                Incoming::EncryptionAnswer => {
                    if bytes[0] == b'S' || bytes[0] == b'G' {
                        // Encrypted from here on, in both directions.
                        self.incoming = Incoming::Opaque;
                        self.outgoing = None;
                        return;
                    }
                    self.incoming = Incoming::Messages;
                    bytes = &bytes[1..];
                }
                Incoming::Messages => {
                    let mut session = self.tap.session();
                    self.incoming_framer.feed(bytes, &mut |kind, body| {
                        session.server_sent(kind, body);
                        true
                    });
                    return;
                }
            }
        }
    }
}

/// The protocol or request code that opens a start-up message.
fn startup_code(body: &[u8]) -> Option<u32> {
    let code = body.get(..4)?;
    Some(u32::from_be_bytes(code.try_into().ok()?))
}

impl<S: AsyncRead + Unpin> AsyncRead for Tapped<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.incoming == Incoming::Messages
            && let Some(message) = this.tap.silenced.get().cloned()
        {
            return Poll::Ready(this.end_for_silence(&message, buf));
        }
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) => {
                let filled = &buf.filled()[before..];
                if !filled.is_empty() {
                    this.tap.read_now();
                    this.read(filled);
                } else if had_room {
                    this.tap.end();
                }
            }
            Poll::Ready(Err(_)) => this.tap.end(),
            Poll::Pending => {
                this.tap.waiting_for_bytes();
                this.tap.reader.register(cx.waker());
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tapped<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.tap.set_blocked(result.is_pending());
        match &result {
            Poll::Ready(Ok(written)) => {
                if *written > 0 {
                    this.tap.wrote_now();
                }
                this.wrote(&buf[..*written]);
            }
            Poll::Ready(Err(_)) => this.tap.end(),
            Poll::Pending => {}
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.tap.set_blocked(result.is_pending());
        result
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: TlsStream + Unpin> TlsStream for Tapped<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

/// A TLS connector whose encrypted stream gets a tap of its own (the one
/// on the socket stops at the handshake).
pub(crate) struct TappedTls<T> {
    inner: T,
    tap: Arc<Tap>,
}

impl<T> TappedTls<T> {
    pub fn new(inner: T, tap: Arc<Tap>) -> Self {
        TappedTls { inner, tap }
    }
}

impl<S, T> TlsConnect<S> for TappedTls<T>
where
    T: TlsConnect<S>,
    T::Future: Send + 'static,
    T::Stream: Send + 'static,
{
    type Stream = Tapped<T::Stream>;
    type Error = T::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Stream, T::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let handshake = self.inner.connect(stream);
        let tap = self.tap;
        Box::pin(async move {
            let stream = handshake.await?;
            Ok(Tapped::new(stream, tap))
        })
    }
}

#[cfg(test)]
mod tests;

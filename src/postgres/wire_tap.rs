//! A byte tap under tokio-postgres: it reads the protocol's message framing
//! as the bytes pass, and tells the pool what tokio-postgres does not
//! expose — how many requests are still unanswered on a connection, and
//! its transaction status (`I`dle, in a `T`ransaction, or in a failed one,
//! `E`), from the server's last `ReadyForQuery`.
//!
//! Every request ends with exactly one `ReadyForQuery`: a simple `Query`,
//! an extended-protocol batch ended by `Sync`, and the start-up message
//! (authentication ends with one). So "requests written − `ReadyForQuery`
//! read" is the number still in flight. The pool uses it to recognise a
//! connection returned while a caller's abandoned statement still runs,
//! and one returned inside a transaction (docs/decisions.md).
//!
//! With TLS the tap sits twice: on the socket until the server accepts the
//! `SSLRequest` (after which those bytes are ciphertext and it stops
//! reading them), and above the TLS stream, where it reads the plaintext.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

/// The start-up code of an `SSLRequest` (PostgreSQL protocol).
const SSL_REQUEST_CODE: u32 = 80_877_103;
/// How much of a message body is kept: enough for `ROLLBACK` and the
/// status byte of `ReadyForQuery`.
const PREFIX: usize = 8;

/// A connection's transaction status, from its last `ReadyForQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransactionStatus {
    /// Not in a transaction block.
    Idle,
    /// Inside a transaction block.
    InTransaction,
    /// Inside a failed transaction block (statements are refused until it
    /// ends).
    Failed,
}

/// What the tap has seen on one connection; shared by the connection task
/// (which writes it) and the pool (which reads it between checkouts).
#[derive(Debug, Default)]
pub(crate) struct Tap {
    /// Requests written: start-up, `Query` and `Sync` messages.
    sent: AtomicU64,
    /// `ReadyForQuery` messages read.
    answered: AtomicU64,
    /// The number (1-based, in `sent` order) of the last request that was
    /// not housekeeping: requests after it are all housekeeping.
    last_work: AtomicU64,
    /// The status byte of the last `ReadyForQuery`.
    status: AtomicU8,
    /// The type of the last message read from the server.
    last_reply: AtomicU8,
    /// Set when the server closed the connection (or reading or writing
    /// failed): nothing in flight will be answered any more.
    ended: AtomicBool,
    /// Woken when the last request in flight is answered, or on the end.
    settled: Notify,
}

impl Tap {
    pub fn new() -> Arc<Self> {
        Arc::new(Tap {
            status: AtomicU8::new(b'I'),
            ..Tap::default()
        })
    }

    /// Requests written but not yet answered.
    pub fn in_flight(&self) -> u64 {
        // `answered` first: read later, `sent` can only be larger.
        let answered = self.answered.load(Ordering::Acquire);
        self.sent.load(Ordering::Acquire).saturating_sub(answered)
    }

    /// Whether every request in flight is housekeeping tokio-postgres sends
    /// without waiting for the answer: a `ROLLBACK` when a `Transaction` is
    /// dropped uncommitted, and `Close` of a prepared statement when a
    /// `Statement` is dropped (after every `query` with SQL text). Quick,
    /// and safe to wait for.
    pub fn only_housekeeping_in_flight(&self) -> bool {
        self.last_work.load(Ordering::Acquire) <= self.answered.load(Ordering::Acquire)
    }

    /// Whether the one request in flight has had its last reply
    /// (`CommandComplete`, `EmptyQueryResponse` or `ErrorResponse`) but not
    /// yet its `ReadyForQuery`: the server is done with it, so it needs no
    /// cancel. A caller whose statement just finished and who let go at once
    /// often leaves exactly this: tokio-postgres completes the caller's
    /// future on that reply, and the `ReadyForQuery` can be a read later.
    pub fn finishing(&self) -> bool {
        self.in_flight() == 1
            && matches!(self.last_reply.load(Ordering::Acquire), b'C' | b'I' | b'E')
    }

    /// The transaction status reported by the last `ReadyForQuery`
    /// (meaningful when nothing is in flight).
    pub fn transaction_status(&self) -> TransactionStatus {
        match self.status.load(Ordering::Acquire) {
            b'T' => TransactionStatus::InTransaction,
            b'E' => TransactionStatus::Failed,
            _ => TransactionStatus::Idle,
        }
    }

    /// Whether the connection has ended (closed by the server, or failed).
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Waits until no request is in flight, or the connection has ended
    /// (the caller bounds the wait).
    pub async fn settle(&self) {
        loop {
            let settled = self.settled.notified();
            let mut settled = std::pin::pin!(settled);
            settled.as_mut().enable();
            if self.in_flight() == 0 || self.ended() {
                return;
            }
            settled.await;
        }
    }

    fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.settled.notify_waiters();
    }

    fn request_sent(&self, housekeeping: bool) {
        let number = self.sent.fetch_add(1, Ordering::AcqRel) + 1;
        if !housekeeping {
            self.last_work.store(number, Ordering::Release);
        }
    }

    fn ready(&self, status: u8) {
        self.status.store(status, Ordering::Release);
        self.answered.fetch_add(1, Ordering::AcqRel);
        if self.in_flight() == 0 {
            self.settled.notify_waiters();
        }
    }
}

/// One complete message, as far as the tap cares.
struct Message {
    kind: u8,
    prefix: [u8; PREFIX],
    prefix_len: usize,
}

impl Message {
    fn body(&self) -> &[u8] {
        &self.prefix[..self.prefix_len]
    }
}

/// Splits one direction's byte stream into messages. Untyped framing (a
/// length, then the body) is what the client's start-up messages use;
/// typed framing (a type byte, a length, the body) is everything else.
struct Framer {
    typed: bool,
    header: [u8; 5],
    header_len: usize,
    /// Body bytes still to pass of the current message (header complete).
    remaining: usize,
    current: Option<Message>,
}

impl Framer {
    fn new(typed: bool) -> Self {
        Framer {
            typed,
            header: [0; 5],
            header_len: 0,
            remaining: 0,
            current: None,
        }
    }

    fn header_size(&self) -> usize {
        if self.typed { 5 } else { 4 }
    }

    /// Feeds bytes; calls `complete` for each message that ends in them.
    /// Stops early (returning the bytes consumed) when `complete` returns
    /// false, so the caller can change how the rest is read.
    fn feed(&mut self, mut bytes: &[u8], complete: &mut dyn FnMut(&Message) -> bool) -> usize {
        let total = bytes.len();
        while !bytes.is_empty() {
            if self.current.is_none() {
                let need = self.header_size() - self.header_len;
                let take = need.min(bytes.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&bytes[..take]);
                self.header_len += take;
                bytes = &bytes[take..];
                if self.header_len < self.header_size() {
                    break;
                }
                let (kind, length) = if self.typed {
                    (self.header[0], &self.header[1..5])
                } else {
                    (0, &self.header[0..4])
                };
                let length = u32::from_be_bytes(length.try_into().expect("four bytes")) as usize;
                // The length counts itself, not the type byte.
                self.remaining = length.saturating_sub(4);
                self.header_len = 0;
                self.current = Some(Message {
                    kind,
                    prefix: [0; PREFIX],
                    prefix_len: 0,
                });
            }
            let message = self.current.as_mut().expect("set above");
            let take = self.remaining.min(bytes.len());
            let keep = (PREFIX - message.prefix_len).min(take);
            message.prefix[message.prefix_len..message.prefix_len + keep]
                .copy_from_slice(&bytes[..keep]);
            message.prefix_len += keep;
            self.remaining -= take;
            bytes = &bytes[take..];
            if self.remaining == 0 {
                let message = self.current.take().expect("set above");
                if !complete(&message) {
                    break;
                }
            }
        }
        total - bytes.len()
    }
}

/// How one tapped layer reads the server's bytes.
enum Incoming {
    /// Typed messages.
    Messages(Framer),
    /// The one-byte answer to an `SSLRequest`.
    SslAnswer,
    /// Ciphertext: the tap above the TLS stream reads the messages.
    Opaque,
}

/// A stream with the tap on it.
pub(crate) struct Tapped<S> {
    inner: S,
    tap: Arc<Tap>,
    outgoing: Option<Framer>,
    /// Whether the extended-protocol messages since the last `Sync` did
    /// more than close statements.
    batch_works: bool,
    incoming: Incoming,
}

impl<S> Tapped<S> {
    /// A tap on a fresh connection: the client speaks first, untyped.
    pub fn new(inner: S, tap: Arc<Tap>) -> Self {
        Tapped {
            inner,
            tap,
            outgoing: Some(Framer::new(false)),
            batch_works: false,
            incoming: Incoming::Messages(Framer::new(true)),
        }
    }

    fn wrote(&mut self, bytes: &[u8]) {
        let Some(framer) = &mut self.outgoing else {
            return;
        };
        let tap = &self.tap;
        let batch_works = &mut self.batch_works;
        let mut ssl_requested = false;
        let mut started = false;
        let mut rest = bytes;
        while !rest.is_empty() {
            let used = framer.feed(rest, &mut |message| {
                if framer_is_startup(message) {
                    if startup_code(message) == Some(SSL_REQUEST_CODE) {
                        ssl_requested = true;
                    } else {
                        // The start-up message: authentication ends with
                        // a ReadyForQuery.
                        tap.request_sent(false);
                        started = true;
                    }
                    return false;
                }
                match message.kind {
                    b'Q' => tap.request_sent(is_rollback(message.body())),
                    b'S' => tap.request_sent(!std::mem::take(batch_works)),
                    // Close (of a statement or portal).
                    b'C' => {}
                    _ => *batch_works = true,
                }
                true
            });
            rest = &rest[used..];
            if started {
                framer.typed = true;
                started = false;
            }
            if ssl_requested {
                self.incoming = Incoming::SslAnswer;
                ssl_requested = false;
            }
        }
    }

    fn read(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.incoming {
                Incoming::Opaque => return,
                Incoming::SslAnswer => {
                    if bytes[0] == b'S' {
                        // Encrypted from here on, in both directions.
                        self.incoming = Incoming::Opaque;
                        self.outgoing = None;
                        return;
                    }
                    self.incoming = Incoming::Messages(Framer::new(true));
                    bytes = &bytes[1..];
                }
                Incoming::Messages(framer) => {
                    let tap = &self.tap;
                    framer.feed(bytes, &mut |message| {
                        tap.last_reply.store(message.kind, Ordering::Release);
                        if message.kind == b'Z' && message.prefix_len == 1 {
                            tap.ready(message.prefix[0]);
                        }
                        true
                    });
                    return;
                }
            }
        }
    }
}

/// Whether a message came from untyped (start-up) framing.
fn framer_is_startup(message: &Message) -> bool {
    message.kind == 0
}

/// The protocol or request code that opens a start-up message.
fn startup_code(message: &Message) -> Option<u32> {
    let code = message.body().get(..4)?;
    Some(u32::from_be_bytes(code.try_into().ok()?))
}

fn is_rollback(query: &[u8]) -> bool {
    query.len() >= 8 && query[..8].eq_ignore_ascii_case(b"ROLLBACK")
}

impl<S: AsyncRead + Unpin> AsyncRead for Tapped<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) => {
                let filled = &buf.filled()[before..];
                if !filled.is_empty() {
                    this.read(filled);
                } else if had_room {
                    this.tap.end();
                }
            }
            Poll::Ready(Err(_)) => this.tap.end(),
            Poll::Pending => {}
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
        match &result {
            Poll::Ready(Ok(written)) => this.wrote(&buf[..*written]),
            Poll::Ready(Err(_)) => this.tap.end(),
            Poll::Pending => {}
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
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
mod tests {
    use super::*;

    fn typed(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn untyped(body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    fn tapped() -> Tapped<()> {
        Tapped::new((), Tap::new())
    }

    #[test]
    fn counts_requests_until_each_is_answered_even_split_byte_by_byte() {
        let mut t = tapped();
        let mut out = untyped(&196_608u32.to_be_bytes());
        out.extend(typed(b'P', b"\0SELECT 1\0\0\0"));
        out.extend(typed(b'S', b""));
        out.extend(typed(b'Q', b"SELECT pg_sleep(5)\0"));
        for byte in &out {
            t.wrote(std::slice::from_ref(byte));
        }
        assert_eq!(t.tap.in_flight(), 3);
        let mut incoming = typed(b'R', &0u32.to_be_bytes());
        incoming.extend(typed(b'Z', b"I"));
        incoming.extend(typed(b'1', b""));
        incoming.extend(typed(b'Z', b"T"));
        for byte in &incoming {
            t.read(std::slice::from_ref(byte));
        }
        assert_eq!(t.tap.in_flight(), 1);
        assert_eq!(t.tap.transaction_status(), TransactionStatus::InTransaction);
        assert!(!t.tap.only_housekeeping_in_flight());
        t.read(&typed(b'E', b"SERROR\0"));
        assert!(t.tap.finishing());
        t.read(&typed(b'Z', b"E"));
        assert_eq!(t.tap.in_flight(), 0);
        assert!(!t.tap.finishing());
        assert_eq!(t.tap.transaction_status(), TransactionStatus::Failed);
    }

    #[test]
    fn a_rollback_in_flight_is_recognised() {
        let mut t = tapped();
        t.wrote(&untyped(&196_608u32.to_be_bytes()));
        t.read(&typed(b'Z', b"I"));
        t.wrote(&typed(b'Q', b"BEGIN\0"));
        t.read(&typed(b'Z', b"T"));
        t.wrote(&typed(b'Q', b"ROLLBACK\0"));
        assert_eq!(t.tap.in_flight(), 1);
        assert!(t.tap.only_housekeeping_in_flight());
    }

    #[test]
    fn closing_a_statement_is_housekeeping_running_one_is_not() {
        let mut t = tapped();
        t.wrote(&untyped(&196_608u32.to_be_bytes()));
        t.read(&typed(b'Z', b"I"));
        t.wrote(&typed(b'C', b"Ss1\0"));
        t.wrote(&typed(b'S', b""));
        assert_eq!(t.tap.in_flight(), 1);
        assert!(t.tap.only_housekeeping_in_flight());
        t.wrote(&typed(b'B', b"\0s1\0"));
        t.wrote(&typed(b'E', b"\0\0\0\0\0"));
        t.wrote(&typed(b'S', b""));
        assert!(!t.tap.only_housekeeping_in_flight());
    }

    #[test]
    fn stops_reading_once_the_server_accepts_tls() {
        let mut t = tapped();
        t.wrote(&untyped(&SSL_REQUEST_CODE.to_be_bytes()));
        t.read(b"S");
        // Ciphertext from here on: nothing counted.
        t.wrote(&typed(b'Q', b"x\0"));
        t.read(&typed(b'Z', b"T"));
        assert_eq!(t.tap.in_flight(), 0);
        assert_eq!(t.tap.transaction_status(), TransactionStatus::Idle);
    }

    #[test]
    fn reads_on_when_the_server_declines_tls() {
        let mut t = tapped();
        t.wrote(&untyped(&SSL_REQUEST_CODE.to_be_bytes()));
        t.read(b"N");
        t.wrote(&untyped(&196_608u32.to_be_bytes()));
        assert_eq!(t.tap.in_flight(), 1);
        t.read(&typed(b'Z', b"I"));
        assert_eq!(t.tap.in_flight(), 0);
    }
}

//! One connection's session as the PostgreSQL frontend/backend protocol
//! defines it: a pure state machine fed every message the client writes and
//! every message the server sends, in the order each side put them on the
//! wire. No I/O, no clock: the transport ([`super::super::wire_tap`]) feeds
//! it, the pool reads it, and tests drive it with generated sequences.
//!
//! It models the server's reading of the client's stream. The server reads
//! requests in order and answers each: a simple `Query` or a
//! `FunctionCall` with replies ended by `ReadyForQuery`; extended-protocol
//! messages one reply each (`ParseComplete`, `BindComplete`, rows then
//! `CommandComplete`, ...) and a `Sync` with `ReadyForQuery`. After an error
//! in an extended batch the server discards messages up to the next `Sync`.
//! In COPY FROM STDIN mode it reads `CopyData` until `CopyDone` or
//! `CopyFail`, ignoring `Sync` and `Flush` (tokio-postgres sends a `Sync`
//! right after the `Execute` of a COPY, and another after `CopyDone`: only
//! the second is answered). Outside COPY mode it drops stray `CopyData`,
//! `CopyDone` and `CopyFail`.
//!
//! One case stays open by the protocol's own rules: when a COPY FROM STDIN
//! ends in an error, a `Sync` the client sent inside the COPY stream may
//! have been read in COPY mode (ignored) or after the error (answered), and
//! the replies cannot tell which until the server answers a later request
//! with something other than `ReadyForQuery`. The session says so
//! ([`View::stray_ready_possible`]); the pool then sends an empty query and
//! reads the answer before it hands the connection out.
//!
//! Anything the model does not expect (a reply with no request to answer,
//! COPY BOTH, a client message the protocol does not allow there) makes the
//! session [`View::broken`]: the pool closes such a connection rather than
//! guess.

use std::collections::VecDeque;

/// The most requests kept unanswered before the session stops tracking
/// them and calls itself broken: far beyond any pipeline the crate or
/// tokio-postgres builds (runs of `CopyData` count once), and a bound on
/// the memory one connection's model can take.
const MAX_UNANSWERED: usize = 65_536;

/// The SQLSTATE of a write refused by a read-only server.
const READ_ONLY_SQLSTATE: &str = "25006";

/// A connection's transaction status, from the server's last
/// `ReadyForQuery`.
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

impl TransactionStatus {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            b'I' => Some(TransactionStatus::Idle),
            b'T' => Some(TransactionStatus::InTransaction),
            b'E' => Some(TransactionStatus::Failed),
            _ => None,
        }
    }
}

/// A client message the server has not finished with, in the order the
/// server reads them. `Flush` is not kept: it has no reply and changes
/// nothing the pool acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// The start-up message; authentication ends with a `ReadyForQuery`.
    Startup,
    /// A simple query; `housekeeping` when it is a `ROLLBACK`
    /// tokio-postgres sends for a dropped `Transaction`.
    Query {
        housekeeping: bool,
    },
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    /// The end of an extended batch; `housekeeping` when the batch only
    /// closed statements or portals (tokio-postgres closing a dropped
    /// `Statement`).
    Sync {
        housekeeping: bool,
    },
    FunctionCall,
    /// One or more `CopyData` in a row.
    CopyData,
    CopyDone,
    CopyFail,
    Terminate,
}

impl Sent {
    /// Whether the server answers it with a `ReadyForQuery` (when read
    /// outside COPY mode).
    fn ends_request(self) -> bool {
        matches!(
            self,
            Sent::Startup | Sent::Query { .. } | Sent::Sync { .. } | Sent::FunctionCall
        )
    }

    /// Whether the server runs a statement for it.
    fn is_work(self) -> bool {
        matches!(
            self,
            Sent::Execute
                | Sent::Query {
                    housekeeping: false
                }
                | Sent::FunctionCall
        )
    }

    fn is_copy_stream(self) -> bool {
        matches!(self, Sent::CopyData | Sent::CopyDone | Sent::CopyFail)
    }
}

/// Where the server is in the client's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    /// Reading requests: its next reply answers the oldest one sent.
    Reading,
    /// Inside a simple query or function call it has read: its replies
    /// until `ReadyForQuery`.
    InRequest { housekeeping: bool },
    /// After an error in an extended batch: discarding messages up to the
    /// next `Sync`.
    Discarding,
    /// COPY FROM STDIN: reading the client's copy stream. `in_request`
    /// when a simple query started it (its `ReadyForQuery` is still owed).
    CopyIn { in_request: bool },
    /// COPY TO STDOUT: sending rows until `CopyDone`, then the command's
    /// completion.
    CopyOut { in_request: bool },
}

/// The first error the server reported in the current transaction (or in
/// the current request, outside one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerError {
    /// The SQLSTATE, when the message carried one.
    pub code: Option<String>,
    /// The primary message, as far as the transport kept it.
    pub message: Option<String>,
}

/// What the pool asks of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct View {
    /// `ReadyForQuery` messages still owed: requests written and not yet
    /// answered.
    pub awaiting: usize,
    /// A statement may still be running on the server for a request still
    /// owed: only a cancel ends it soon. False when what is owed is
    /// housekeeping (closing statements, a dropped transaction's
    /// `ROLLBACK`), a statement already done whose `ReadyForQuery` is still
    /// to come, messages the server discards after an error, or a COPY
    /// being read to its end.
    pub running: bool,
    /// The server waits for a message only the client's departed caller
    /// would have sent: the end of a COPY FROM STDIN stream, or the `Sync`
    /// that ends discarding after an error.
    pub awaits_client: bool,
    /// After a COPY FROM STDIN ended in an error, one more `ReadyForQuery`
    /// may still come (see the module's documentation).
    pub stray_ready_possible: bool,
    /// The transaction status of the last `ReadyForQuery`.
    pub status: TransactionStatus,
    /// The connection ended, or the session left what the model knows.
    pub broken: bool,
}

impl View {
    #[cfg(test)]
    /// Nothing owed, nothing uncertain, outside a transaction: a new
    /// caller may have it as it is.
    pub fn is_clean(&self) -> bool {
        self.awaiting == 0
            && !self.stray_ready_possible
            && !self.broken
            && !self.awaits_client
            && self.status == TransactionStatus::Idle
    }
}

/// One connection's protocol state.
#[derive(Debug)]
pub(crate) struct Session {
    sent: VecDeque<Sent>,
    server: Server,
    status: TransactionStatus,
    /// Extended messages since the last `Sync` did more than close.
    batch_works: bool,
    stray_ready_possible: bool,
    /// The type of the server's last reply (not counting asynchronous
    /// messages).
    last_reply: u8,
    /// The last `CommandComplete` tag was `ROLLBACK`: what the server
    /// answers a `COMMIT` of a failed transaction with.
    last_tag_rollback: bool,
    first_error: Option<ServerError>,
    /// A `ReadyForQuery` outside a transaction came since `first_error`:
    /// the next error starts afresh.
    error_stale: bool,
    refused_write: bool,
    broken: Option<&'static str>,
    ended: bool,
    /// The process id of the backend, from the server's `BackendKeyData`.
    backend_pid: Option<i32>,
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

impl Session {
    /// A session before the client's start-up message.
    pub fn new() -> Self {
        Session {
            sent: VecDeque::new(),
            server: Server::Reading,
            status: TransactionStatus::Idle,
            batch_works: false,
            stray_ready_possible: false,
            last_reply: 0,
            last_tag_rollback: false,
            first_error: None,
            error_stale: false,
            refused_write: false,
            broken: None,
            ended: false,
            backend_pid: None,
        }
    }

    /// The client wrote its start-up message.
    pub fn startup_sent(&mut self) {
        self.push(Sent::Startup);
    }

    /// The client wrote a typed message: its type byte and (the start of)
    /// its body.
    pub fn client_sent(&mut self, kind: u8, body: &[u8]) {
        let sent = match kind {
            b'Q' => Sent::Query {
                housekeeping: is_rollback(body),
            },
            b'P' => Sent::Parse,
            b'B' => Sent::Bind,
            b'D' => Sent::Describe,
            b'E' => Sent::Execute,
            b'C' => Sent::Close,
            b'S' => Sent::Sync {
                housekeeping: !std::mem::take(&mut self.batch_works),
            },
            b'F' => Sent::FunctionCall,
            b'd' => Sent::CopyData,
            b'c' => Sent::CopyDone,
            b'f' => Sent::CopyFail,
            b'X' => Sent::Terminate,
            // Flush: no reply, no effect on what the pool acts on.
            b'H' => return,
            // Password, SASL and GSS responses belong to the start-up.
            b'p' if self.sent.front() == Some(&Sent::Startup) => return,
            _ => return self.break_with("a client message the model does not know"),
        };
        if matches!(
            sent,
            Sent::Parse | Sent::Bind | Sent::Describe | Sent::Execute
        ) {
            self.batch_works = true;
        }
        if sent == Sent::CopyData && self.sent.back() == Some(&Sent::CopyData) {
            return;
        }
        self.push(sent);
        self.drop_unread_copy_stream();
    }

    /// The server sent a message: its type byte and (the start of) its
    /// body.
    pub fn server_sent(&mut self, kind: u8, body: &[u8]) {
        if self.broken.is_some() {
            return;
        }
        match kind {
            // Asynchronous: a notice, a notification, a parameter's new
            // value. They answer nothing.
            b'N' | b'A' | b'S' => return,
            b'E' => self.error(body),
            _ => {}
        }
        if self.sent.front() == Some(&Sent::Startup) {
            return self.startup_reply(kind, body);
        }
        match self.server {
            Server::Reading => self.reply_while_reading(kind, body),
            Server::InRequest { housekeeping } => self.reply_in_request(kind, body, housekeeping),
            Server::Discarding => match kind {
                b'Z' => self.ready_after_sync(body),
                _ => self.break_with("a reply while the server discards up to a Sync"),
            },
            Server::CopyIn { in_request } => self.reply_in_copy_in(kind, in_request),
            Server::CopyOut { in_request } => match kind {
                b'd' | b'c' => {}
                b'C' => {
                    self.completed(body);
                    self.server = after_copy(in_request, Server::Reading);
                }
                b'E' => self.server = after_copy(in_request, Server::Discarding),
                _ => self.break_with("an unexpected reply in COPY TO STDOUT"),
            },
        }
        if kind != b'Z' {
            self.last_reply = kind;
        }
        self.drop_unread_copy_stream();
    }

    /// The connection ended (closed by either side, or an I/O error).
    pub fn connection_ended(&mut self) {
        self.ended = true;
    }

    /// What the pool acts on.
    pub fn view(&self) -> View {
        let owed_by_server = matches!(
            self.server,
            Server::InRequest { .. }
                | Server::CopyIn { in_request: true }
                | Server::CopyOut { in_request: true }
        );
        // In COPY FROM STDIN the server ignores Syncs until the stream
        // ends (or, after an error, may answer them: see `Probe`).
        let stream_end = match self.server {
            Server::CopyIn { .. } => self
                .sent
                .iter()
                .position(|s| matches!(s, Sent::CopyDone | Sent::CopyFail))
                .unwrap_or(self.sent.len()),
            _ => 0,
        };
        let queued = self
            .sent
            .iter()
            .skip(stream_end)
            .filter(|s| s.ends_request())
            .count();
        let awaiting = queued + usize::from(owed_by_server);
        // What the server will still run: not what it discards up to the
        // next Sync after an error, nor a COPY stream.
        let unread_from = match self.server {
            Server::Discarding => self
                .sent
                .iter()
                .position(|s| matches!(s, Sent::Sync { .. }))
                .unwrap_or(self.sent.len()),
            _ => stream_end,
        };
        let queued_work = self.sent.iter().skip(unread_from).any(|s| s.is_work());
        let current_work = match self.server {
            Server::InRequest { housekeeping } => {
                !housekeeping && !matches!(self.last_reply, b'C' | b'I' | b'E' | b'V')
            }
            _ => false,
        };
        let awaits_client = match self.server {
            Server::CopyIn { .. } => !self
                .sent
                .iter()
                .any(|s| matches!(s, Sent::CopyDone | Sent::CopyFail)),
            Server::Discarding => !self.sent.iter().any(|s| matches!(s, Sent::Sync { .. })),
            _ => false,
        };
        View {
            awaiting,
            running: awaiting > 0 && (queued_work || current_work),
            awaits_client,
            stray_ready_possible: self.stray_ready_possible,
            status: self.status,
            broken: self.ended || self.broken.is_some(),
        }
    }

    /// Why the session is broken, when it is (for logs).
    pub fn broken_reason(&self) -> Option<&'static str> {
        if self.ended {
            return Some("the connection ended");
        }
        self.broken
    }

    /// The process id of the server's backend for this connection (behind
    /// a pooler such as PgBouncer, the pooler's own number).
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// Whether the server owes an answer it needs nothing more from the
    /// client to give: requests written and not answered, other than a
    /// COPY FROM STDIN stream or an extended batch still waiting for the
    /// client's next message.
    pub fn server_owes(&self) -> bool {
        let view = self.view();
        view.awaiting > 0 && !view.awaits_client && !view.broken
    }

    /// Whether the last `CommandComplete` was tagged `ROLLBACK`.
    pub fn last_tag_was_rollback(&self) -> bool {
        self.last_tag_rollback
    }

    /// The first error the server reported in the last transaction (or
    /// request, outside one): kept after the `ReadyForQuery` that ended it,
    /// replaced by the next error after that.
    pub fn first_error(&self) -> Option<&ServerError> {
        self.first_error.as_ref()
    }

    /// Whether the server refused a write as read-only since the flag was
    /// last taken.
    pub fn take_refused_write(&mut self) -> bool {
        std::mem::take(&mut self.refused_write)
    }

    fn push(&mut self, sent: Sent) {
        if self.sent.len() >= MAX_UNANSWERED {
            return self.break_with("too many requests unanswered");
        }
        if sent == Sent::Terminate {
            self.ended = true;
        }
        self.sent.push_back(sent);
    }

    fn break_with(&mut self, reason: &'static str) {
        if self.broken.is_none() {
            self.broken = Some(reason);
        }
    }

    /// Outside COPY mode the server drops copy messages it reads: once
    /// every request before them is answered, they are done with.
    fn drop_unread_copy_stream(&mut self) {
        if self.server != Server::Reading {
            return;
        }
        while self.sent.front().is_some_and(|s| s.is_copy_stream()) {
            self.sent.pop_front();
        }
    }

    fn error(&mut self, body: &[u8]) {
        let code = field(body, b'C').map(|c| String::from_utf8_lossy(c).into_owned());
        if code.as_deref() == Some(READ_ONLY_SQLSTATE) {
            self.refused_write = true;
        }
        if self.first_error.is_none() || self.error_stale {
            self.error_stale = false;
            self.first_error = Some(ServerError {
                code,
                message: field(body, b'M').map(|m| String::from_utf8_lossy(m).into_owned()),
            });
        }
    }

    fn completed(&mut self, tag: &[u8]) {
        self.last_tag_rollback = tag.starts_with(b"ROLLBACK");
    }

    fn ready(&mut self, body: &[u8]) {
        match body.first().copied().and_then(TransactionStatus::from_byte) {
            Some(status) => {
                self.status = status;
                if status == TransactionStatus::Idle {
                    self.error_stale = true;
                }
            }
            None => self.break_with("a ReadyForQuery without a known status"),
        }
        self.server = Server::Reading;
    }

    fn startup_reply(&mut self, kind: u8, body: &[u8]) {
        match kind {
            b'K' => {
                self.backend_pid = body
                    .get(..4)
                    .and_then(|pid| pid.try_into().ok())
                    .map(i32::from_be_bytes);
            }
            // Authentication, protocol negotiation.
            b'R' | b'v' => {}
            // A start-up error is fatal: the server closes the connection.
            b'E' => {}
            b'Z' => {
                self.sent.pop_front();
                self.ready(body);
            }
            _ => self.break_with("an unexpected reply during start-up"),
        }
    }

    fn reply_while_reading(&mut self, kind: u8, body: &[u8]) {
        let Some(&head) = self.sent.front() else {
            return self.break_with("a reply with no request to answer");
        };
        if kind != b'Z' {
            // A reply to a request read after any COPY stream: every Sync
            // in it has been read, answered or not.
            self.stray_ready_possible = false;
        }
        match (head, kind) {
            (Sent::Parse, b'1') | (Sent::Bind, b'2') | (Sent::Close, b'3') => {
                self.sent.pop_front();
            }
            (Sent::Describe, b't') | (Sent::Execute, b'D') => {}
            (Sent::Describe, b'T' | b'n') => {
                self.sent.pop_front();
            }
            (Sent::Execute, b'C' | b'I' | b's') => {
                if kind == b'C' {
                    self.completed(body);
                }
                self.sent.pop_front();
            }
            (Sent::Execute, b'G') => {
                self.sent.pop_front();
                self.server = Server::CopyIn { in_request: false };
            }
            (Sent::Execute, b'H') => {
                self.sent.pop_front();
                self.server = Server::CopyOut { in_request: false };
            }
            (Sent::Parse | Sent::Bind | Sent::Describe | Sent::Execute | Sent::Close, b'E') => {
                self.sent.pop_front();
                self.server = Server::Discarding;
            }
            (Sent::Sync { .. }, b'Z') => {
                self.sent.pop_front();
                self.ready(body);
            }
            (Sent::Query { .. } | Sent::FunctionCall, b'Z') => {
                self.break_with("a ReadyForQuery before any reply to a query")
            }
            (Sent::Query { housekeeping }, _) => {
                self.sent.pop_front();
                self.reply_in_request(kind, body, housekeeping);
            }
            (Sent::FunctionCall, _) => {
                self.sent.pop_front();
                self.reply_in_request(kind, body, false);
            }
            _ => self.break_with("a reply that does not answer the next request"),
        }
    }

    fn reply_in_request(&mut self, kind: u8, body: &[u8], housekeeping: bool) {
        self.server = Server::InRequest { housekeeping };
        match kind {
            b'T' | b'D' | b'I' | b'E' | b'V' => {}
            b'C' => self.completed(body),
            b'G' => self.server = Server::CopyIn { in_request: true },
            b'H' => self.server = Server::CopyOut { in_request: true },
            b'Z' => self.ready(body),
            b'W' => self.break_with("COPY BOTH (replication) is not modelled"),
            _ => self.break_with("an unexpected reply to a query"),
        }
    }

    fn reply_in_copy_in(&mut self, kind: u8, in_request: bool) {
        match kind {
            b'C' => {
                // The server read the copy stream through CopyDone; Syncs
                // in it were ignored.
                let Some(done) = self.sent.iter().position(|s| *s == Sent::CopyDone) else {
                    return self.break_with("a COPY completed before the client ended it");
                };
                let stream_ok = self
                    .sent
                    .iter()
                    .take(done)
                    .all(|s| matches!(s, Sent::CopyData | Sent::Sync { .. }));
                if !stream_ok {
                    return self.break_with("a COPY stream with other messages in it");
                }
                self.sent.drain(..=done);
                self.server = after_copy(in_request, Server::Reading);
            }
            b'E' => {
                // The server stopped reading the stream somewhere: Syncs
                // written so far before its end may have been read in COPY
                // mode (ignored) or after the error (answered).
                let end = self
                    .sent
                    .iter()
                    .position(|s| matches!(s, Sent::CopyDone | Sent::CopyFail))
                    .unwrap_or(self.sent.len());
                let before = self.sent.len();
                let mut index = 0;
                self.sent.retain(|s| {
                    let keep = index >= end || !matches!(s, Sent::Sync { .. });
                    index += 1;
                    keep
                });
                if self.sent.len() != before {
                    self.stray_ready_possible = true;
                }
                self.server = after_copy(in_request, Server::Discarding);
            }
            _ => self.break_with("an unexpected reply in COPY FROM STDIN"),
        }
    }

    fn ready_after_sync(&mut self, body: &[u8]) {
        match self
            .sent
            .iter()
            .position(|s| matches!(s, Sent::Sync { .. }))
        {
            Some(sync) => {
                self.sent.drain(..=sync);
                self.ready(body);
            }
            None => self.break_with("a ReadyForQuery with no Sync to answer"),
        }
    }
}

/// Where the server goes when a COPY ends: back into the simple query that
/// started it, or on with the extended batch (`otherwise`).
fn after_copy(in_request: bool, otherwise: Server) -> Server {
    if in_request {
        Server::InRequest {
            housekeeping: false,
        }
    } else {
        otherwise
    }
}

/// A field of an `ErrorResponse` body, if within the bytes kept.
fn field(mut fields: &[u8], wanted: u8) -> Option<&[u8]> {
    while let Some((&kind, rest)) = fields.split_first() {
        if kind == 0 {
            return None;
        }
        let end = rest.iter().position(|&b| b == 0)?;
        if kind == wanted {
            return Some(&rest[..end]);
        }
        fields = &rest[end + 1..];
    }
    None
}

/// A `ROLLBACK` (or `ROLLBACK TO SAVEPOINT`) as tokio-postgres sends it for
/// a dropped transaction or savepoint.
fn is_rollback(query: &[u8]) -> bool {
    query.len() >= 8 && query[..8].eq_ignore_ascii_case(b"ROLLBACK")
}

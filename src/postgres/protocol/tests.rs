//! The session model against the protocol: the message sequences
//! tokio-postgres produces, one by one, and generated conversations with a
//! reference server (a second, deliberately plain reading of the protocol
//! documentation) delivered in random chunks and interleavings.

use proptest::prelude::*;

use super::policy::{Action, decide};
use super::session::{Session, TransactionStatus};
use super::{Framer, View};

fn typed(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn error_body(code: &str) -> Vec<u8> {
    format!("SERROR\0VERROR\0C{code}\0Mboom {code}\0\0").into_bytes()
}

/// Both directions of one connection, framed as the transport frames them.
struct Wire {
    session: Session,
    client: Framer,
    server: Framer,
}

impl Wire {
    /// A connection past its start-up.
    fn started() -> Wire {
        let mut wire = Wire {
            session: Session::new(),
            client: Framer::new(false),
            server: Framer::new(true),
        };
        let mut startup = 196_608u32.to_be_bytes().to_vec();
        startup.extend_from_slice(b"user\0u\0\0");
        let mut packet = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend(startup);
        wire.client_bytes(&packet);
        wire.client.set_typed();
        wire.server_bytes(&typed(b'R', &0u32.to_be_bytes()));
        wire.server_bytes(&typed(b'S', b"client_encoding\0UTF8\0"));
        wire.server_bytes(&typed(b'K', &[0; 8]));
        wire.server_bytes(&typed(b'Z', b"I"));
        assert!(wire.view().is_clean(), "{:?}", wire.view());
        wire
    }

    fn client_bytes(&mut self, bytes: &[u8]) {
        let session = &mut self.session;
        let mut rest = bytes;
        while !rest.is_empty() {
            let used = self.client.feed(rest, &mut |kind, body| {
                if kind == 0 {
                    session.startup_sent();
                    return false;
                }
                session.client_sent(kind, body);
                true
            });
            rest = &rest[used..];
            if !rest.is_empty() {
                self.client.set_typed();
            }
        }
    }

    fn server_bytes(&mut self, bytes: &[u8]) {
        let session = &mut self.session;
        self.server.feed(bytes, &mut |kind, body| {
            session.server_sent(kind, body);
            true
        });
    }

    fn send(&mut self, kind: u8, body: &[u8]) -> &mut Self {
        self.client_bytes(&typed(kind, body));
        self
    }

    fn reply(&mut self, kind: u8, body: &[u8]) -> &mut Self {
        self.server_bytes(&typed(kind, body));
        self
    }

    fn view(&self) -> View {
        self.session.view()
    }

    fn action(&self) -> Action {
        decide(&self.view(), false)
    }
}

#[test]
fn a_simple_query_is_owed_until_its_ready_for_query() {
    let mut w = Wire::started();
    w.send(b'Q', b"SELECT 1\0");
    assert_eq!(w.view().awaiting, 1);
    assert_eq!(w.action(), Action::Cancel);
    w.reply(b'T', b"")
        .reply(b'D', b"")
        .reply(b'C', b"SELECT 1\0");
    assert!(!w.view().running, "{:?}", w.view());
    assert_eq!(w.action(), Action::Wait);
    w.reply(b'Z', b"I");
    assert_eq!(w.action(), Action::Ready);
}

#[test]
fn an_extended_query_whose_ready_for_query_is_late_is_waited_for() {
    let mut w = Wire::started();
    for kind in [b'P', b'B', b'D', b'E', b'S'] {
        w.send(kind, b"");
    }
    w.reply(b'1', b"").reply(b'2', b"").reply(b'T', b"");
    assert!(w.view().running);
    w.reply(b'D', b"").reply(b'C', b"SELECT 1\0");
    assert!(!w.view().running);
    assert_eq!(w.action(), Action::Wait);
    w.reply(b'Z', b"I");
    assert!(w.view().is_clean());
}

#[test]
fn an_error_mid_pipeline_skips_to_the_sync_and_the_next_batch_runs() {
    let mut w = Wire::started();
    for kind in [b'P', b'B', b'E', b'S', b'B', b'E', b'S'] {
        w.send(kind, b"");
    }
    assert_eq!(w.view().awaiting, 2);
    w.reply(b'1', b"").reply(b'E', &error_body("22012"));
    assert_eq!(w.view().awaiting, 2);
    w.reply(b'Z', b"I");
    assert_eq!(w.view().awaiting, 1);
    w.reply(b'2', b"")
        .reply(b'C', b"INSERT 0 1\0")
        .reply(b'Z', b"I");
    assert!(w.view().is_clean());
}

#[test]
fn closing_a_dropped_statement_is_housekeeping_and_a_query_is_not() {
    let mut w = Wire::started();
    w.send(b'C', b"Ss1\0").send(b'S', b"");
    assert!(!w.view().running);
    assert_eq!(w.action(), Action::Wait);
    w.send(b'Q', b"SELECT pg_sleep(5)\0");
    assert!(w.view().running);
    assert_eq!(w.action(), Action::Cancel);
    w.reply(b'3', b"").reply(b'Z', b"I");
    w.reply(b'E', &error_body("57014")).reply(b'Z', b"I");
    assert!(w.view().is_clean());
}

#[test]
fn a_dropped_transactions_rollback_is_housekeeping() {
    let mut w = Wire::started();
    w.send(b'Q', b"BEGIN\0")
        .reply(b'C', b"BEGIN\0")
        .reply(b'Z', b"T");
    assert_eq!(w.action(), Action::Rollback);
    w.send(b'Q', b"ROLLBACK\0");
    assert!(!w.view().running);
    w.reply(b'C', b"ROLLBACK\0").reply(b'Z', b"I");
    assert!(w.view().is_clean());
}

#[test]
fn commit_of_a_failed_transaction_is_seen_as_a_rollback_with_its_first_error() {
    let mut w = Wire::started();
    w.send(b'Q', b"BEGIN\0")
        .reply(b'C', b"BEGIN\0")
        .reply(b'Z', b"T");
    w.send(b'Q', b"SELECT 1/0\0")
        .reply(b'E', &error_body("22012"))
        .reply(b'Z', b"E");
    assert_eq!(w.view().status, TransactionStatus::Failed);
    assert_eq!(w.action(), Action::Rollback);
    w.send(b'Q', b"SELECT 2\0")
        .reply(b'E', &error_body("25P02"))
        .reply(b'Z', b"E");
    w.send(b'Q', b"COMMIT\0")
        .reply(b'C', b"ROLLBACK\0")
        .reply(b'Z', b"I");
    assert!(w.session.last_tag_was_rollback());
    let first = w.session.first_error().expect("an error was reported");
    assert_eq!(first.code.as_deref(), Some("22012"));
    assert_eq!(first.message.as_deref(), Some("boom 22012"));
    // The next error, after the transaction ended, starts afresh.
    w.send(b'Q', b"x\0")
        .reply(b'E', &error_body("42601"))
        .reply(b'Z', b"I");
    assert_eq!(
        w.session.first_error().unwrap().code.as_deref(),
        Some("42601")
    );
    w.send(b'Q', b"COMMIT\0")
        .reply(b'C', b"COMMIT\0")
        .reply(b'Z', b"I");
    assert!(!w.session.last_tag_was_rollback());
}

/// tokio-postgres' `copy_in`: Bind, Execute, Sync; then the data, CopyDone
/// and another Sync. The first Sync is read in COPY mode and ignored.
#[test]
fn a_finished_copy_in_leaves_a_clean_session() {
    let mut w = Wire::started();
    w.send(b'B', b"").send(b'E', b"").send(b'S', b"");
    w.reply(b'2', b"").reply(b'G', b"");
    assert!(w.view().awaits_client);
    assert_eq!(w.view().awaiting, 0);
    w.send(b'd', b"1\n")
        .send(b'd', b"2\n")
        .send(b'c', b"")
        .send(b'S', b"");
    assert_eq!(w.view().awaiting, 1);
    assert!(!w.view().awaits_client);
    w.reply(b'C', b"COPY 2\0");
    assert!(!w.view().running);
    w.reply(b'Z', b"I");
    assert!(w.view().is_clean(), "{:?}", w.view());
}

#[test]
fn a_failed_copy_in_is_probed_once_and_then_clean() {
    let mut w = Wire::started();
    w.send(b'B', b"").send(b'E', b"").send(b'S', b"");
    w.reply(b'2', b"").reply(b'G', b"");
    w.send(b'd', b"1\n").send(b'f', b"").send(b'S', b"");
    w.reply(b'E', &error_body("57014")).reply(b'Z', b"I");
    assert_eq!(w.view().awaiting, 0);
    assert!(w.view().stray_ready_possible);
    assert_eq!(w.action(), Action::Probe);
    w.send(b'Q', b"\0").reply(b'I', b"").reply(b'Z', b"I");
    assert!(w.view().is_clean(), "{:?}", w.view());
}

/// tokio-postgres' `copy_in` whose data the server rejects before the
/// client ended the stream; the prepared statement's Close follows.
#[test]
fn a_copy_in_rejected_mid_stream_is_waited_for_without_a_cancel() {
    let mut w = Wire::started();
    w.send(b'P', b"").send(b'D', b"").send(b'S', b"");
    w.reply(b'1', b"")
        .reply(b't', b"")
        .reply(b'n', b"")
        .reply(b'Z', b"I");
    w.send(b'B', b"").send(b'E', b"").send(b'S', b"");
    w.reply(b'2', b"").reply(b'G', b"");
    w.send(b'd', b"1\n");
    w.reply(b'E', &error_body("23505"));
    w.send(b'c', b"")
        .send(b'S', b"")
        .send(b'C', b"")
        .send(b'S', b"");
    assert_eq!(w.view().awaiting, 2);
    assert!(!w.view().running, "{:?}", w.view());
    assert_eq!(w.action(), Action::Wait);
    w.reply(b'Z', b"I");
    assert_eq!(w.action(), Action::Wait);
    // The Close's answer comes from a request after the COPY stream: the
    // server has read every Sync in it, so no probe is needed.
    w.reply(b'3', b"").reply(b'Z', b"I");
    assert!(w.view().is_clean());
    assert_eq!(w.action(), Action::Ready);
}

#[test]
fn a_copy_in_interrupted_before_it_read_the_first_sync_breaks_the_session() {
    let mut w = Wire::started();
    w.send(b'B', b"").send(b'E', b"").send(b'S', b"");
    w.reply(b'2', b"").reply(b'G', b"");
    w.send(b'd', b"1\n").send(b'c', b"").send(b'S', b"");
    // The server erred before it read the first Sync, so it answers both.
    w.reply(b'E', &error_body("57014")).reply(b'Z', b"I");
    assert_eq!(w.action(), Action::Probe);
    w.send(b'Q', b"\0");
    w.reply(b'Z', b"I");
    assert!(w.view().broken);
    assert!(matches!(w.action(), Action::Close(_)));
}

#[test]
fn a_copy_out_read_to_its_end_or_dropped_needs_no_cancel() {
    let mut w = Wire::started();
    w.send(b'B', b"").send(b'E', b"").send(b'S', b"");
    w.reply(b'2', b"").reply(b'H', b"").reply(b'd', b"1\n");
    assert_eq!(w.action(), Action::Wait);
    w.reply(b'd', b"2\n")
        .reply(b'c', b"")
        .reply(b'C', b"COPY 2\0")
        .reply(b'Z', b"I");
    assert!(w.view().is_clean());
}

#[test]
fn copy_in_by_simple_query() {
    let mut w = Wire::started();
    w.send(b'Q', b"COPY t FROM STDIN\0").reply(b'G', b"");
    assert!(w.view().awaits_client);
    assert_eq!(w.view().awaiting, 1);
    w.send(b'd', b"1\n").send(b'c', b"");
    w.reply(b'C', b"COPY 1\0").reply(b'Z', b"I");
    assert!(w.view().is_clean());
}

#[test]
fn a_function_call_and_notices_and_notifications_between_requests() {
    let mut w = Wire::started();
    w.reply(b'N', &error_body("01000"))
        .reply(b'A', b"\0\0\0\x01c\0p\0");
    assert!(w.view().is_clean());
    w.send(b'F', b"").reply(b'V', b"").reply(b'S', b"x\0y\0");
    assert!(!w.view().running);
    w.reply(b'Z', b"I");
    assert!(w.view().is_clean());
}

#[test]
fn a_read_only_refusal_is_noticed_once() {
    let mut w = Wire::started();
    w.send(b'Q', b"INSERT\0")
        .reply(b'E', &error_body("25006"))
        .reply(b'Z', b"I");
    assert!(w.session.take_refused_write());
    assert!(!w.session.take_refused_write());
}

#[test]
fn a_reply_nobody_asked_for_breaks_the_session() {
    let mut w = Wire::started();
    w.reply(b'C', b"SELECT 1\0");
    assert!(w.view().broken);
    let mut w = Wire::started();
    w.reply(b'Z', b"I");
    assert!(w.view().broken);
    let mut w = Wire::started();
    w.send(b'Q', b"START_REPLICATION\0").reply(b'W', b"");
    assert!(w.view().broken);
}

#[test]
fn terminate_and_the_end_of_the_connection_break_the_session() {
    let mut w = Wire::started();
    w.send(b'X', b"");
    assert!(w.view().broken);
    let mut w = Wire::started();
    w.session.connection_ended();
    assert!(matches!(w.action(), Action::Close(_)));
}

#[test]
fn a_cancelled_statement_is_waited_for_not_cancelled_twice() {
    let mut w = Wire::started();
    w.send(b'Q', b"SELECT pg_sleep(60)\0");
    assert_eq!(decide(&w.view(), true), Action::Wait);
}

// ---------------------------------------------------------------------
// Generated conversations with a reference server.

/// One statement's fate on the reference server.
#[derive(Debug, Clone, Copy)]
enum Stmt {
    Ok,
    Fail,
    Begin,
    Commit,
    Rollback,
    CopyOut(u8),
}

/// How a COPY FROM STDIN ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum CopyEnd {
    Done,
    /// The client sends CopyFail (a dropped `CopyInSink`).
    ClientFail,
    /// The server rejects the data in the first CopyData.
    BadData,
    /// The server errs before it reads anything after the Execute (a
    /// cancel arriving at that moment).
    Interrupted,
}

#[derive(Debug, Clone)]
enum Request {
    Simple(Vec<Stmt>),
    /// One Parse/Bind/Execute per statement, then a Sync.
    Extended(Vec<Stmt>),
    /// tokio-postgres' copy_in: B E S, data, CopyDone or CopyFail, S.
    CopyInExtended(u8, CopyEnd),
    /// Q, data, CopyDone or CopyFail.
    CopyInSimple(u8, CopyEnd),
    /// Close of a statement and a Sync.
    CloseSync,
    Call(bool),
    /// An empty query (the pool's probe).
    Empty,
}

fn stmt() -> impl Strategy<Value = Stmt> {
    prop_oneof![
        4 => Just(Stmt::Ok),
        2 => Just(Stmt::Fail),
        2 => Just(Stmt::Begin),
        2 => Just(Stmt::Commit),
        1 => Just(Stmt::Rollback),
        1 => (0u8..3).prop_map(Stmt::CopyOut),
    ]
}

fn copy_end(interrupted: bool) -> impl Strategy<Value = CopyEnd> {
    let mut ends = vec![CopyEnd::Done, CopyEnd::ClientFail, CopyEnd::BadData];
    if interrupted {
        ends.push(CopyEnd::Interrupted);
    }
    proptest::sample::select(ends)
}

fn request(interrupted: bool) -> impl Strategy<Value = Request> {
    prop_oneof![
        3 => prop::collection::vec(stmt(), 1..4).prop_map(Request::Simple),
        3 => prop::collection::vec(stmt(), 1..4).prop_map(Request::Extended),
        2 => (0u8..3, copy_end(interrupted)).prop_map(|(n, e)| Request::CopyInExtended(n, e)),
        1 => (0u8..3, copy_end(false)).prop_map(|(n, e)| Request::CopyInSimple(n, e)),
        1 => Just(Request::CloseSync),
        1 => any::<bool>().prop_map(Request::Call),
        1 => Just(Request::Empty),
    ]
}

/// The client's messages for a conversation.
fn client_messages(requests: &[Request]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    for request in requests {
        match request {
            Request::Simple(_) => out.push((b'Q', b"statements\0".to_vec())),
            Request::Extended(stmts) => {
                for _ in stmts {
                    out.push((b'P', vec![0]));
                    out.push((b'B', vec![0]));
                    out.push((b'E', vec![0]));
                }
                out.push((b'S', vec![]));
            }
            Request::CopyInExtended(rows, end) => {
                out.push((b'B', vec![0]));
                out.push((b'E', vec![0]));
                out.push((b'S', vec![]));
                for _ in 0..*rows {
                    out.push((b'd', b"row\n".to_vec()));
                }
                out.push((
                    if *end == CopyEnd::ClientFail {
                        b'f'
                    } else {
                        b'c'
                    },
                    vec![],
                ));
                out.push((b'S', vec![]));
            }
            Request::CopyInSimple(rows, end) => {
                out.push((b'Q', b"COPY t FROM STDIN\0".to_vec()));
                for _ in 0..*rows {
                    out.push((b'd', b"row\n".to_vec()));
                }
                out.push((
                    if *end == CopyEnd::ClientFail {
                        b'f'
                    } else {
                        b'c'
                    },
                    vec![],
                ));
            }
            Request::CloseSync => {
                out.push((b'C', b"Ss1\0".to_vec()));
                out.push((b'S', vec![]));
            }
            Request::Call(_) => out.push((b'F', vec![0])),
            Request::Empty => out.push((b'Q', b"\0".to_vec())),
        }
    }
    out
}

/// A reply, and the index of the client message the server must have read
/// before sending it.
type Reply = (usize, u8, Vec<u8>);

/// For each reply, the index of the client message from whose writing on
/// it is owed (a simple query's ReadyForQuery is owed once the query is
/// written, even when the server sends it only after the COPY data).
type OwedFrom = Vec<usize>;

/// The reference server: reads the client's messages in order and answers
/// as the protocol documentation says, keeping its own transaction status.
struct Reference {
    status: u8,
    replies: Vec<Reply>,
    owed_from: OwedFrom,
}

impl Reference {
    fn run(requests: &[Request]) -> Reference {
        let mut server = Reference {
            status: b'I',
            replies: Vec::new(),
            owed_from: Vec::new(),
        };
        let mut at = 0usize;
        for request in requests {
            at = server.request(request, at);
        }
        server
    }

    fn reply(&mut self, after: usize, kind: u8, body: &[u8]) {
        self.replies.push((after, kind, body.to_vec()));
        self.owed_from.push(after);
    }

    /// Runs one statement; false when it failed.
    fn statement(&mut self, after: usize, stmt: Stmt) -> bool {
        let failed_block = self.status == b'E';
        let fail = |s: &mut Self, code: &str| {
            s.reply(after, b'E', &error_body(code));
            if s.status == b'T' {
                s.status = b'E';
            }
            false
        };
        match stmt {
            Stmt::Commit => {
                let tag: &[u8] = if failed_block {
                    b"ROLLBACK\0"
                } else {
                    b"COMMIT\0"
                };
                self.status = b'I';
                self.reply(after, b'C', tag);
                true
            }
            Stmt::Rollback => {
                self.status = b'I';
                self.reply(after, b'C', b"ROLLBACK\0");
                true
            }
            _ if failed_block => fail(self, "25P02"),
            Stmt::Ok => {
                self.reply(after, b'C', b"SELECT 1\0");
                true
            }
            Stmt::Fail => fail(self, "22012"),
            Stmt::Begin => {
                self.status = b'T';
                self.reply(after, b'C', b"BEGIN\0");
                true
            }
            Stmt::CopyOut(rows) => {
                self.reply(after, b'H', b"");
                for _ in 0..rows {
                    self.reply(after, b'd', b"row\n");
                }
                self.reply(after, b'c', b"");
                self.reply(after, b'C', b"COPY\0");
                true
            }
        }
    }

    fn ready(&mut self, after: usize) {
        let status = [self.status];
        self.reply(after, b'Z', &status);
    }

    /// Answers one request whose first message is at `at`; returns the
    /// index after its last message.
    fn request(&mut self, request: &Request, at: usize) -> usize {
        match request {
            Request::Simple(stmts) => {
                for stmt in stmts {
                    if !self.statement(at, *stmt) {
                        break;
                    }
                }
                self.ready(at);
                at + 1
            }
            Request::Extended(stmts) => {
                let mut index = at;
                let mut failed = false;
                for stmt in stmts {
                    if !failed {
                        self.reply(index, b'1', b"");
                        self.reply(index + 1, b'2', b"");
                        failed = !self.statement(index + 2, *stmt);
                    }
                    index += 3;
                }
                self.ready(index);
                index + 1
            }
            Request::CopyInExtended(rows, end) => {
                let rows = usize::from(*rows);
                self.reply(at, b'2', b"");
                self.reply(at + 1, b'G', b"");
                let first_data = at + 3;
                let end_marker = first_data + rows;
                let last_sync = end_marker + 1;
                match end {
                    CopyEnd::Done => {
                        self.reply(end_marker, b'C', b"COPY\0");
                        self.ready(last_sync);
                    }
                    CopyEnd::ClientFail | CopyEnd::BadData => {
                        let culprit = if *end == CopyEnd::BadData && rows > 0 {
                            first_data
                        } else {
                            end_marker
                        };
                        self.fail_copy(culprit);
                        self.ready(last_sync);
                    }
                    CopyEnd::Interrupted => {
                        self.fail_copy(at + 1);
                        // The first Sync, read after the error, ends the
                        // discarding; the stream is then dropped and the
                        // last Sync answered too.
                        self.ready(at + 2);
                        self.ready(last_sync);
                    }
                }
                last_sync + 1
            }
            Request::CopyInSimple(rows, end) => {
                let rows = usize::from(*rows);
                self.reply(at, b'G', b"");
                let end_marker = at + 1 + rows;
                match end {
                    CopyEnd::Done => {
                        self.reply(end_marker, b'C', b"COPY\0");
                        self.ready(end_marker);
                    }
                    _ => {
                        let culprit = if *end == CopyEnd::BadData && rows > 0 {
                            at + 1
                        } else {
                            end_marker
                        };
                        self.fail_copy(culprit);
                        self.ready(culprit);
                    }
                }
                // The query's ReadyForQuery is owed from the query on.
                *self.owed_from.last_mut().expect("a reply") = at;
                end_marker + 1
            }
            Request::CloseSync => {
                self.reply(at, b'3', b"");
                self.ready(at + 1);
                at + 2
            }
            Request::Call(ok) => {
                if *ok {
                    self.reply(at, b'V', b"");
                } else {
                    self.statement(at, Stmt::Fail);
                }
                self.ready(at);
                at + 1
            }
            Request::Empty => {
                self.reply(at, b'I', b"");
                self.ready(at);
                at + 1
            }
        }
    }

    fn fail_copy(&mut self, after: usize) {
        self.reply(after, b'E', &error_body("22P02"));
        if self.status == b'T' {
            self.status = b'E';
        }
    }
}

/// The ReadyForQuery messages owed for the first `written` client
/// messages, less those `delivered` already.
fn owed(reference: &Reference, written: usize, delivered: usize) -> usize {
    reference.replies[delivered..]
        .iter()
        .zip(&reference.owed_from[delivered..])
        .filter(|((_, kind, _), from)| *kind == b'Z' && **from < written)
        .count()
}

fn status_byte(status: TransactionStatus) -> u8 {
    match status {
        TransactionStatus::Idle => b'I',
        TransactionStatus::InTransaction => b'T',
        TransactionStatus::Failed => b'E',
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// Whatever the order the two directions' bytes arrive in and however
    /// they are split, the model never says less is owed than the server
    /// will still send, agrees exactly whenever the server has caught up,
    /// and ends in the reference server's transaction status.
    #[test]
    fn the_session_follows_the_reference_server(
        requests in prop::collection::vec(request(false), 1..8),
        schedule in prop::collection::vec((any::<bool>(), 1usize..12), 0..400),
    ) {
        let messages = client_messages(&requests);
        let reference = Reference::run(&requests);
        let client: Vec<Vec<u8>> = messages.iter().map(|(k, b)| typed(*k, b)).collect();
        let server: Vec<Vec<u8>> = reference.replies.iter().map(|(_, k, b)| typed(*k, b)).collect();
        let mut w = Wire::started();
        // Whole messages passed so far each way, and bytes of the next.
        let (mut written, mut written_bytes) = (0usize, 0usize);
        let (mut delivered, mut delivered_bytes) = (0usize, 0usize);
        let mut steps = schedule.into_iter();
        loop {
            let can_write = written < client.len();
            let can_deliver = delivered < server.len() && reference.replies[delivered].0 < written;
            if !can_write && !can_deliver {
                break;
            }
            let (prefer_write, chunk) = steps.next().unwrap_or((can_write, usize::MAX));
            if can_write && (prefer_write || !can_deliver) {
                let message = &client[written];
                let take = chunk.min(message.len() - written_bytes);
                w.client_bytes(&message[written_bytes..written_bytes + take]);
                written_bytes += take;
                if written_bytes == message.len() {
                    written += 1;
                    written_bytes = 0;
                }
            } else {
                let message = &server[delivered];
                let take = chunk.min(message.len() - delivered_bytes);
                w.server_bytes(&message[delivered_bytes..delivered_bytes + take]);
                delivered_bytes += take;
                if delivered_bytes == message.len() {
                    delivered += 1;
                    delivered_bytes = 0;
                }
            }
            let view = w.view();
            prop_assert!(!view.broken, "broken: {:?}", w.session.broken_reason());
            let expected = owed(&reference, written, delivered);
            prop_assert!(view.awaiting >= expected, "model {} < server {}", view.awaiting, expected);
            let caught_up = written_bytes == 0 && delivered_bytes == 0
                && reference.replies[delivered..].iter().all(|(after, _, _)| *after >= written);
            if caught_up {
                prop_assert_eq!(view.awaiting, expected);
            }
        }
        let view = w.view();
        prop_assert_eq!(view.awaiting, 0);
        prop_assert!(!view.awaits_client);
        prop_assert_eq!(status_byte(view.status), reference.status);
        // A probe settles a failed COPY's uncertainty.
        if view.stray_ready_possible {
            w.send(b'Q', b"\0").reply(b'I', b"").reply(b'Z', &[reference.status]);
            prop_assert!(!w.view().stray_ready_possible);
        }
        let expected_action = if reference.status == b'I' { Action::Ready } else { Action::Rollback };
        prop_assert_eq!(w.action(), expected_action);
    }

    /// A COPY interrupted before the server read the Sync after it answers
    /// one ReadyForQuery more than tokio-postgres expects: the model must
    /// end broken (never clean) once the server has said everything, so
    /// the pool closes the connection.
    #[test]
    fn an_extra_ready_for_query_is_never_taken_for_a_clean_session(
        before in prop::collection::vec(request(false), 0..3),
        rows in 0u8..3,
        after in prop::collection::vec(request(false), 0..3),
    ) {
        let mut requests = before;
        requests.push(Request::CopyInExtended(rows, CopyEnd::Interrupted));
        requests.extend(after);
        requests.push(Request::Empty);
        let messages = client_messages(&requests);
        let reference = Reference::run(&requests);
        // As tokio-postgres does, the Sync after the COPY's Execute is
        // written before any reply (here: everything is).
        let mut w = Wire::started();
        for (kind, body) in &messages {
            w.send(*kind, body);
        }
        for (_, kind, body) in &reference.replies {
            w.reply(*kind, body);
        }
        prop_assert!(w.view().broken);
    }
}

/// One framed stream as [`Framer`] reports it, whatever the chunks: each
/// message's kind and kept body, then where each stop fell.
#[derive(Debug, PartialEq)]
struct Framed {
    messages: Vec<(u8, Vec<u8>)>,
    /// Where in the stream each stop fell (the bytes consumed up to it).
    stops: Vec<usize>,
    at_boundary: bool,
}

/// Feeds `stream` in `chunks` (cycled; 0 means the whole rest) as the
/// tap's writer does: untyped until `untyped` start-up messages have been
/// read (each stops the feed, and the framer turns typed after the last),
/// and a stop after every message whose index is in `stop_after`.
fn frame(stream: &[u8], chunks: &[usize], untyped: usize, stop_after: &[usize]) -> Framed {
    let mut framer = Framer::new(untyped == 0);
    let mut framed = Framed {
        messages: Vec::new(),
        stops: Vec::new(),
        at_boundary: true,
    };
    let mut seen_untyped = 0usize;
    let mut offset = 0usize;
    let mut chunk = 0usize;
    while offset < stream.len() {
        let size = match chunks.get(chunk % chunks.len().max(1)) {
            Some(0) | None => stream.len() - offset,
            Some(size) => (*size).min(stream.len() - offset),
        };
        chunk += 1;
        let mut rest = &stream[offset..offset + size];
        offset += size;
        while !rest.is_empty() {
            let messages = &mut framed.messages;
            let mut stopped = false;
            let used = framer.feed(rest, &mut |kind, body| {
                messages.push((kind, body.to_vec()));
                if kind == 0 {
                    seen_untyped += 1;
                    stopped = true;
                    return false;
                }
                let stop = stop_after.contains(&(messages.len() - 1));
                stopped = stop;
                !stop
            });
            if stopped {
                framed.stops.push(offset - rest.len() + used);
            }
            if seen_untyped == untyped {
                framer.set_typed();
            }
            rest = &rest[used..];
        }
    }
    framed.at_boundary = framer.at_boundary();
    framed
}

/// A message body of `len` bytes, each byte telling where it is (so a body
/// kept from the wrong offset shows).
fn body_of(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn message_spec() -> impl Strategy<Value = (u8, usize, u8)> {
    let kinds = proptest::sample::select(b"EZCDdcNASTRKQPBXHfGW1".to_vec());
    let lengths = prop_oneof![
        Just(0usize),
        0usize..12,
        250usize..262,
        0usize..600,
        4_000usize..70_000,
    ];
    (kinds, lengths, any::<u8>())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    /// The in-place reading of whole messages and the byte-by-byte reading
    /// agree on every message, every kept body, every stop's byte count
    /// and the final boundary, for any chunking: start-up messages untyped,
    /// then typed messages of any kind and length (empty bodies, `E`
    /// bodies around and past the 256 bytes kept, bodies larger than any
    /// read), with and without a trailing partial message.
    #[test]
    fn reading_in_place_agrees_with_reading_byte_by_byte(
        untyped in prop::collection::vec(0usize..40, 0..3),
        specs in prop::collection::vec(message_spec(), 0..40),
        chunks in prop::collection::vec(prop_oneof![0usize..1, 1usize..8, 1usize..600, 60_000usize..200_000], 1..20),
        stop_after in prop::collection::vec(0usize..45, 0..6),
        truncate in 0usize..40,
    ) {
        let mut stream = Vec::new();
        for (i, len) in untyped.iter().enumerate() {
            stream.extend_from_slice(&((len + 4) as u32).to_be_bytes());
            stream.extend(body_of(*len, i as u8));
        }
        for (kind, len, seed) in &specs {
            stream.extend(typed(*kind, &body_of(*len, *seed)));
        }
        stream.truncate(stream.len().saturating_sub(truncate));
        let byte_by_byte = frame(&stream, &[1], untyped.len(), &stop_after);
        let in_place = frame(&stream, &[0], untyped.len(), &stop_after);
        let chunked = frame(&stream, &chunks, untyped.len(), &stop_after);
        // The expected messages, straight from the specs.
        let mut expected = Vec::new();
        let mut end = 0usize;
        let mut ends = vec![0usize];
        for (i, len) in untyped.iter().enumerate() {
            end += 4 + len;
            ends.push(end);
            if end <= stream.len() {
                expected.push((0u8, body_of(*len, i as u8)[..(*len).min(4)].to_vec()));
            }
        }
        for (kind, len, seed) in &specs {
            end += 5 + len;
            ends.push(end);
            if end <= stream.len() {
                let keep = if *kind == b'E' { 256 } else { 8 };
                expected.push((*kind, body_of(*len, *seed)[..(*len).min(keep)].to_vec()));
            }
        }
        prop_assert_eq!(&byte_by_byte.messages, &expected);
        prop_assert_eq!(&in_place, &byte_by_byte);
        prop_assert_eq!(&chunked.messages, &byte_by_byte.messages);
        prop_assert_eq!(chunked.at_boundary, byte_by_byte.at_boundary);
        prop_assert_eq!(in_place.at_boundary, ends.contains(&stream.len()));
    }

    /// Arbitrary bytes (lengths under 4, huge lengths, garbage): both
    /// readings still agree, and neither panics.
    #[test]
    fn reading_in_place_agrees_on_arbitrary_bytes(
        stream in prop::collection::vec(any::<u8>(), 0..200),
        lengths in prop::collection::vec((any::<u8>(), 0u32..12), 0..20),
        chunks in prop::collection::vec(0usize..20, 1..10),
        untyped in 0usize..2,
    ) {
        // Short length fields (0..=11: under 4 is malformed) spliced in.
        let mut stream = stream;
        for (kind, length) in lengths {
            stream.push(kind);
            stream.extend_from_slice(&length.to_be_bytes());
        }
        let byte_by_byte = frame(&stream, &[1], untyped, &[]);
        let in_place = frame(&stream, &[0], untyped, &[]);
        let chunked = frame(&stream, &chunks, untyped, &[]);
        prop_assert_eq!(&in_place, &byte_by_byte);
        prop_assert_eq!(&chunked.messages, &byte_by_byte.messages);
        prop_assert_eq!(chunked.at_boundary, byte_by_byte.at_boundary);
    }
}

//! The tap on scripted streams: what it reads of each direction, the
//! task watch, and the silence bookkeeping.

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
fn follows_a_conversation_split_byte_by_byte() {
    let mut t = tapped();
    let mut out = untyped(&196_608u32.to_be_bytes());
    out.extend(typed(b'P', b"\0SELECT 1\0\0\0"));
    out.extend(typed(b'S', b""));
    out.extend(typed(b'Q', b"SELECT pg_sleep(5)\0"));
    for byte in &out {
        t.wrote(std::slice::from_ref(byte));
    }
    assert_eq!(t.tap.view().awaiting, 3);
    let mut incoming = typed(b'R', &0u32.to_be_bytes());
    incoming.extend(typed(b'Z', b"I"));
    incoming.extend(typed(b'1', b""));
    incoming.extend(typed(b'Z', b"T"));
    for byte in &incoming {
        t.read(std::slice::from_ref(byte));
    }
    assert_eq!(t.tap.view().awaiting, 1);
    t.read(&typed(b'E', b"SERROR\0C57014\0\0"));
    assert!(!t.tap.view().running);
    t.read(&typed(b'Z', b"E"));
    let view = t.tap.view();
    assert_eq!(view.awaiting, 0);
    assert!(!view.broken);
}

#[test]
fn stops_reading_once_the_server_accepts_tls() {
    let mut t = tapped();
    t.wrote(&untyped(&SSL_REQUEST_CODE.to_be_bytes()));
    t.read(b"S");
    // Ciphertext from here on: nothing counted.
    t.wrote(&typed(b'Q', b"x\0"));
    t.read(&typed(b'Z', b"T"));
    assert_eq!(t.tap.view().awaiting, 0);
    assert!(!t.tap.view().broken);
}

#[test]
fn reads_on_when_the_server_declines_tls() {
    let mut t = tapped();
    t.wrote(&untyped(&SSL_REQUEST_CODE.to_be_bytes()));
    t.read(b"N");
    t.wrote(&untyped(&196_608u32.to_be_bytes()));
    assert_eq!(t.tap.view().awaiting, 1);
    t.read(&typed(b'Z', b"I"));
    assert_eq!(t.tap.view().awaiting, 0);
}

/// A reader over bytes already read: what `Tapped::poll_read` hands
/// tokio-postgres, read to the end.
fn read_to_end(t: &mut Tapped<&'static [u8]>) -> (Vec<u8>, io::Result<()>) {
    let mut out = Vec::new();
    let noop = Waker::noop();
    let mut cx = Context::from_waker(noop);
    loop {
        let mut storage = [0u8; 7];
        let mut buf = ReadBuf::new(&mut storage);
        match Pin::new(&mut *t).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return (out, Ok(())),
            Poll::Ready(Ok(())) => out.extend_from_slice(buf.filled()),
            Poll::Ready(Err(e)) => return (out, Err(e)),
            Poll::Pending => unreachable!("a slice is always ready"),
        }
    }
}

#[test]
fn silence_answers_every_owed_request_with_the_error_then_ends() {
    let mut t = Tapped::new(&b""[..], Tap::new());
    t.wrote(&untyped(&196_608u32.to_be_bytes()));
    t.read(&typed(b'Z', b"I"));
    // A dropped statement's close, then a caller's query.
    t.wrote(&typed(b'C', b"Ss1\0"));
    t.wrote(&typed(b'S', b""));
    t.wrote(&typed(b'Q', b"SELECT 1\0"));
    assert!(t.tap.silent_since().is_none(), "not reading yet");
    t.tap.waiting_for_bytes();
    assert!(t.tap.silent_since().is_some());
    t.tap
        .close_for_silence("silent (postgres.silence_timeout)".into());
    // Read through a buffer smaller than one message.
    let (bytes, result) = read_to_end(&mut t);
    assert!(result.is_ok());
    let mut framer = Framer::new(true);
    let mut kinds = Vec::new();
    framer.feed(&bytes, &mut |kind, body| {
        if kind == b'E' {
            let text = String::from_utf8_lossy(body);
            assert!(text.contains("C08006"), "{text}");
            assert!(text.contains("postgres.silence_timeout"), "{text}");
        }
        kinds.push(kind);
        true
    });
    assert_eq!(kinds, b"EZEZ");
    assert!(framer.at_boundary());
    assert!(t.tap.view().broken);
}

#[test]
fn silence_mid_message_fails_the_read() {
    let mut t = Tapped::new(&b""[..], Tap::new());
    t.wrote(&untyped(&196_608u32.to_be_bytes()));
    t.read(&typed(b'Z', b"I"));
    t.wrote(&typed(b'Q', b"SELECT 1\0"));
    // Half of a RowDescription.
    t.read(&typed(b'T', b"\0\0")[..3]);
    t.tap.close_for_silence("silent".into());
    let (bytes, result) = read_to_end(&mut t);
    assert!(bytes.is_empty());
    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::TimedOut);
}

#[test]
fn the_tasks_waker_marks_it_woken_until_it_runs() {
    let tap = Tap::new();
    assert!(tap.is_quiet());
    let waker = Waker::from(Arc::new(TapWaker(tap.clone())));
    waker.wake_by_ref();
    assert!(!tap.is_quiet());
    let mut watched = Watched::new(std::future::pending::<()>(), tap.clone());
    let noop = Waker::noop();
    let mut cx = Context::from_waker(noop);
    assert!(Pin::new(&mut watched).poll(&mut cx).is_pending());
    assert!(tap.is_quiet());
}

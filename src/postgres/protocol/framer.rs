//! Splits one direction of a PostgreSQL connection's byte stream into
//! messages, whatever the chunks the bytes arrive in. Pure: bytes in,
//! messages out.
//!
//! Untyped framing (a length, then the body) is what the client's start-up
//! messages use; typed framing (a type byte, a length, the body) is
//! everything else. Only the start of each body is kept: as much as the
//! session model reads of that message type.

/// The most of a body kept, for an `ErrorResponse` (severity, SQLSTATE
/// and the start of the message).
const LONGEST_KEPT: usize = 256;

/// How much of a body of this type the session model reads.
fn kept(typed: bool, kind: u8) -> usize {
    match (typed, kind) {
        // Start-up messages: the protocol or request code.
        (false, _) => 4,
        // ErrorResponse (both directions' `E` kept alike: the client's
        // Execute body is short anyway).
        (true, b'E') => LONGEST_KEPT,
        // ROLLBACK in a Query or a CommandComplete tag; ReadyForQuery's
        // status byte.
        _ => 8,
    }
}

/// One direction's framing state.
pub(crate) struct Framer {
    typed: bool,
    header: [u8; 5],
    header_len: usize,
    /// Body bytes still to pass of the current message; `None` while the
    /// header is incomplete.
    remaining: Option<usize>,
    kind: u8,
    body: [u8; LONGEST_KEPT],
    body_len: usize,
    keep: usize,
}

impl Framer {
    /// A framer for typed messages, or for untyped start-up messages.
    pub fn new(typed: bool) -> Self {
        Framer {
            typed,
            header: [0; 5],
            header_len: 0,
            remaining: None,
            kind: 0,
            body: [0; LONGEST_KEPT],
            body_len: 0,
            keep: 0,
        }
    }

    /// Switches to typed framing (after the start-up message).
    pub fn set_typed(&mut self) {
        self.typed = true;
    }

    /// Whether the bytes fed so far end on a message boundary (no message
    /// half read).
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.remaining.is_none()
    }

    fn header_size(&self) -> usize {
        if self.typed { 5 } else { 4 }
    }

    /// The type and body length a complete header gives.
    fn read_header(&self, header: &[u8]) -> (u8, usize) {
        let (kind, length) = if self.typed {
            (header[0], &header[1..5])
        } else {
            (0, &header[..4])
        };
        let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]);
        // The length counts itself, not the type byte.
        (kind, (length as usize).saturating_sub(4))
    }

    /// Feeds bytes; calls `complete(kind, kept body)` for each message that
    /// ends in them (kind 0 for an untyped message). Stops early, returning
    /// the bytes consumed, when `complete` returns false, so the caller can
    /// change how the rest is read.
    pub fn feed(&mut self, mut bytes: &[u8], complete: &mut dyn FnMut(u8, &[u8]) -> bool) -> usize {
        let total = bytes.len();
        while !bytes.is_empty() {
            // Most reads hold whole messages: those are read in place,
            // without copying their header and body aside.
            if self.at_boundary() && bytes.len() >= self.header_size() {
                let header_size = self.header_size();
                let (kind, body_len) = self.read_header(bytes);
                if let Some(body) = bytes.get(header_size..header_size + body_len) {
                    bytes = &bytes[header_size + body_len..];
                    let keep = kept(self.typed, kind).min(body_len);
                    if !complete(kind, &body[..keep]) {
                        break;
                    }
                    continue;
                }
            }
            let remaining = match self.remaining {
                Some(remaining) => remaining,
                None => {
                    let need = self.header_size() - self.header_len;
                    let take = need.min(bytes.len());
                    self.header[self.header_len..self.header_len + take]
                        .copy_from_slice(&bytes[..take]);
                    self.header_len += take;
                    bytes = &bytes[take..];
                    if self.header_len < self.header_size() {
                        break;
                    }
                    let (kind, body_len) = self.read_header(&self.header);
                    self.header_len = 0;
                    self.kind = kind;
                    self.body_len = 0;
                    self.keep = kept(self.typed, kind);
                    body_len
                }
            };
            let take = remaining.min(bytes.len());
            let keep = (self.keep - self.body_len).min(take);
            self.body[self.body_len..self.body_len + keep].copy_from_slice(&bytes[..keep]);
            self.body_len += keep;
            bytes = &bytes[take..];
            if remaining == take {
                self.remaining = None;
                if !complete(self.kind, &self.body[..self.body_len]) {
                    break;
                }
            } else {
                self.remaining = Some(remaining - take);
            }
        }
        total - bytes.len()
    }
}

//! A TCP fault proxy between a client and a server, for faults the server
//! itself cannot produce: stalled handshakes, frozen flows, latency, replies
//! that never come back, resets and connections cut mid-stream. It speaks
//! no protocol, so it serves PostgreSQL and MongoDB alike.
//!
//! A frozen flow here is frozen at the application level: the proxy's own
//! kernel still acknowledges the client's bytes. A true half-open peer (no
//! acknowledgement at all, what `tcp_user_timeout` detects) is
//! `support::Blackhole`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

/// How a flow ends when told to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Both sockets closed normally (FIN).
    Close,
    /// Both sockets reset (RST).
    Reset,
}

/// What happens to the next chunk the client sends that carries a
/// PostgreSQL `COMMIT` (a simple query, as tokio-postgres sends it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtCommit {
    /// The chunk reaches the server, then the client's side is reset and
    /// the server's side closed: the server commits, its answer is lost.
    DeliverThenCut = 1,
    /// The chunk is dropped and both sides are reset: the server never
    /// sees the COMMIT and rolls back when it notices the connection gone.
    DropAndCut = 2,
    /// The chunk reaches the server, then this flow forwards no more of
    /// the server's replies, sockets kept open: the server commits, its
    /// answer never comes, and nothing closes the connection.
    DeliverThenSilence = 3,
}

/// The bytes of the simple query tokio-postgres sends to commit.
const COMMIT_QUERY: &[u8] = b"COMMIT\0";

/// How a pump ended.
enum PumpEnd {
    /// A side closed or the flow carried its allowance.
    Done,
    /// An armed [`AtCommit`] fired on this chunk.
    Commit(AtCommit),
}

/// The faults in force, shared by the proxy and all its flows.
struct Faults {
    /// New connections wait this long before reaching the server.
    stall_new_ms: AtomicU64,
    /// Every chunk forwarded, either way, waits this long.
    latency_ms: AtomicU64,
    /// The server's replies are read and dropped.
    drop_replies: AtomicBool,
    /// A flow that has carried this many bytes (both ways) is cut.
    cut_after_bytes: AtomicU64,
    /// While true, established flows forward nothing, either way.
    frozen: watch::Sender<bool>,
    /// Armed [`AtCommit`] (0: none); fires once, on the first flow it meets.
    at_commit: AtomicU8,
    /// Each message ends every flow established before it.
    end: watch::Sender<Option<Ending>>,
    accepted: AtomicUsize,
}

/// The proxy; dropping it stops accepting (established flows end with
/// their sockets).
pub struct FaultProxy {
    pub port: u16,
    faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Faults {
            stall_new_ms: AtomicU64::new(0),
            latency_ms: AtomicU64::new(0),
            drop_replies: AtomicBool::new(false),
            cut_after_bytes: AtomicU64::new(u64::MAX),
            at_commit: AtomicU8::new(0),
            frozen: watch::channel(false).0,
            end: watch::channel(None).0,
            accepted: AtomicUsize::new(0),
        });
        let shared = faults.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                shared.accepted.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(flow(inbound, upstream, shared.clone()));
            }
        });
        FaultProxy { port, faults, task }
    }

    /// A proxy in front of the server of a `postgres://` or `mongodb://` URL
    /// (one host), and the same URL through the proxy.
    pub async fn in_front_of(url: &str) -> (FaultProxy, String) {
        let after_scheme = url.split_once("://").expect("a URL").1;
        let authority_start = url.len() - after_scheme.len()
            + after_scheme
                .find('@')
                .filter(|at| after_scheme[..*at].find('/').is_none())
                .map_or(0, |at| at + 1);
        let rest = &url[authority_start..];
        let authority_len = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_len];
        let port: u16 = authority
            .rsplit_once(':')
            .expect("host:port")
            .1
            .parse()
            .unwrap();
        let upstream = format!("127.0.0.1:{port}").parse().unwrap();
        let proxy = FaultProxy::start(upstream).await;
        let via = format!(
            "{}127.0.0.1:{}{}",
            &url[..authority_start],
            proxy.port,
            &rest[authority_len..]
        );
        (proxy, via)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.faults.accepted.load(Ordering::Acquire)
    }

    /// New connections wait `delay` after the TCP accept before the proxy
    /// reaches the server: a stalled handshake.
    pub fn stall_new(&self, delay: Duration) {
        let ms = delay.as_millis().min(u64::MAX as u128) as u64;
        self.faults.stall_new_ms.store(ms, Ordering::Release);
    }

    /// Every chunk forwarded, either way, waits `latency`.
    pub fn set_latency(&self, latency: Duration) {
        let ms = latency.as_millis().min(u64::MAX as u128) as u64;
        self.faults.latency_ms.store(ms, Ordering::Release);
    }

    /// Established and new flows forward nothing until [`thaw`](Self::thaw).
    pub fn freeze(&self) {
        self.faults.frozen.send_replace(true);
    }

    pub fn thaw(&self) {
        self.faults.frozen.send_replace(false);
    }

    /// From now on the client's bytes still reach the server, but the
    /// server's replies are dropped: a request delivered, its answer lost.
    pub fn drop_replies(&self) {
        self.faults.drop_replies.store(true, Ordering::Release);
    }

    /// A flow is cut once it has carried `bytes` (both ways together).
    pub fn cut_after(&self, bytes: u64) {
        self.faults.cut_after_bytes.store(bytes, Ordering::Release);
    }

    /// Arms a fault on the next client chunk carrying a `COMMIT` (once).
    pub fn at_commit(&self, fault: AtCommit) {
        self.faults.at_commit.store(fault as u8, Ordering::Release);
    }

    /// Whether an armed [`AtCommit`] has fired.
    pub fn commit_fault_fired(&self) -> bool {
        self.faults.at_commit.load(Ordering::Acquire) == 0
    }

    /// Closes every established flow (both sockets, FIN).
    pub fn cut(&self) {
        self.faults.end.send_replace(Some(Ending::Close));
    }

    /// Resets every established flow (both sockets, RST).
    pub fn reset(&self) {
        self.faults.end.send_replace(Some(Ending::Reset));
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn flow(inbound: tokio::net::TcpStream, upstream: std::net::SocketAddr, faults: Arc<Faults>) {
    let mut end = faults.end.subscribe();
    end.mark_unchanged();
    let stall = Duration::from_millis(faults.stall_new_ms.load(Ordering::Acquire));
    tokio::time::sleep(stall).await;
    let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let carried = AtomicU64::new(0);
    // This flow's replies are dropped ([`AtCommit::DeliverThenSilence`]).
    let silenced = AtomicBool::new(false);
    let (client_read, client_write) = inbound.into_split();
    let (server_read, server_write) = outbound.into_split();
    let (client_write, server_write) = (Arc::new(client_write), Arc::new(server_write));
    let up = pump(
        client_read,
        server_write.clone(),
        &faults,
        &carried,
        &silenced,
        false,
    );
    let down = pump(
        server_read,
        client_write.clone(),
        &faults,
        &carried,
        &silenced,
        true,
    );
    let (reset_client, reset_server) = tokio::select! {
        ended = up => match ended {
            PumpEnd::Done | PumpEnd::Commit(AtCommit::DeliverThenSilence) => (false, false),
            // The server keeps the COMMIT it has read: a FIN after it.
            PumpEnd::Commit(AtCommit::DeliverThenCut) => (true, false),
            PumpEnd::Commit(AtCommit::DropAndCut) => (true, true),
        },
        _ = down => (false, false),
        Ok(()) = end.changed() => {
            let reset = end.borrow().unwrap_or(Ending::Close) == Ending::Reset;
            (reset, reset)
        }
    };
    for (half, reset) in [(&client_write, reset_client), (&server_write, reset_server)] {
        if reset {
            let half: &OwnedWriteHalf = half;
            let socket: &tokio::net::TcpStream = half.as_ref();
            let _ = socket.set_zero_linger();
        }
    }
    // The halves drop here: the sockets close (or reset).
}

/// Forwards one direction until either side closes or the flow has carried
/// its allowance.
async fn pump(
    mut from: OwnedReadHalf,
    to: Arc<OwnedWriteHalf>,
    faults: &Faults,
    carried: &AtomicU64,
    silenced: &AtomicBool,
    replies: bool,
) -> PumpEnd {
    let mut frozen = faults.frozen.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let _ = frozen.wait_for(|frozen| !*frozen).await;
        let Ok(n @ 1..) = from.read(&mut buf).await else {
            return PumpEnd::Done;
        };
        if !replies
            && buf[..n]
                .windows(COMMIT_QUERY.len())
                .any(|w| w == COMMIT_QUERY)
            && let Some(fault) = take_commit_fault(faults)
        {
            if fault == AtCommit::DeliverThenSilence {
                if write_all(&to, &buf[..n]).await.is_err() {
                    return PumpEnd::Done;
                }
                silenced.store(true, Ordering::Release);
                continue;
            }
            if fault == AtCommit::DeliverThenCut {
                let _ = write_all(&to, &buf[..n]).await;
            }
            return PumpEnd::Commit(fault);
        }
        let _ = frozen.wait_for(|frozen| !*frozen).await;
        let latency = faults.latency_ms.load(Ordering::Acquire);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let total = carried.fetch_add(n as u64, Ordering::AcqRel) + n as u64;
        let limit = faults.cut_after_bytes.load(Ordering::Acquire);
        let n = if total >= limit {
            // Deliver up to the limit, then end the flow.
            n - (total - limit).min(n as u64) as usize
        } else {
            n
        };
        if replies
            && (faults.drop_replies.load(Ordering::Acquire) || silenced.load(Ordering::Acquire))
        {
            continue;
        }
        // Shared with the flow (to reset it), so written through the stream.
        if write_all(&to, &buf[..n]).await.is_err() || total >= limit {
            return PumpEnd::Done;
        }
    }
}

fn take_commit_fault(faults: &Faults) -> Option<AtCommit> {
    match faults.at_commit.swap(0, Ordering::AcqRel) {
        1 => Some(AtCommit::DeliverThenCut),
        2 => Some(AtCommit::DropAndCut),
        3 => Some(AtCommit::DeliverThenSilence),
        _ => None,
    }
}

async fn write_all(to: &OwnedWriteHalf, mut bytes: &[u8]) -> std::io::Result<()> {
    let stream: &tokio::net::TcpStream = to.as_ref();
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

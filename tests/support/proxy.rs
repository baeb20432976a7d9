//! TCP proxies between a client and a server, for faults the server
//! itself cannot produce.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A TCP proxy in front of a server whose new connections can be made slow:
/// each accepted connection waits `delay` before it reaches the server.
/// Connections already through are not affected.
pub struct SlowProxy {
    pub port: u16,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> SlowProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let delay = delay_ms.clone();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::AcqRel);
                let wait = Duration::from_millis(delay.load(Ordering::Acquire));
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        SlowProxy {
            port,
            delay_ms,
            accepted,
            task,
        }
    }

    /// A proxy in front of the server of a `postgres://` URL, and the same
    /// URL through the proxy.
    pub async fn in_front_of(url: &str) -> (SlowProxy, String) {
        let parsed: tokio_postgres::Config = url.parse().expect("a PostgreSQL URL");
        let port = parsed.get_ports()[0];
        let upstream = format!("127.0.0.1:{port}").parse().unwrap();
        let proxy = SlowProxy::start(upstream).await;
        let host = url.split_once('@').unwrap().1.split_once('/').unwrap().0;
        let via_proxy = url.replacen(host, &format!("127.0.0.1:{}", proxy.port), 1);
        (proxy, via_proxy)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Acquire)
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Release);
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP proxy whose flows can lose their replies and then be cut: with
/// `hold_replies` the client's bytes still reach the server but nothing
/// comes back; `cut` closes every flow. The way to lose a connection after
/// a request was delivered and before its answer arrived.
pub struct CuttingProxy {
    pub port: u16,
    hold: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> CuttingProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut, _) = tokio::sync::watch::channel(false);
        let flows_hold = hold.clone();
        let flows_cut = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let hold = flows_hold.clone();
                let mut cut = flows_cut.subscribe();
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = inbound.into_split();
                    let (mut server_read, mut server_write) = outbound.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let down = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n @ 1..) = server_read.read(&mut buf).await {
                            if hold.load(Ordering::Acquire) {
                                continue;
                            }
                            if client_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        CuttingProxy {
            port,
            hold,
            cut,
            task,
        }
    }

    /// From now on, the server's replies are dropped.
    pub fn hold_replies(&self) {
        self.hold.store(true, Ordering::Release);
    }

    /// Closes every flow (both sockets of each).
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! Ports that no other test, and no other test process, can be handed
//! while a test holds them.
//!
//! [`free_port`](super::free_port) asks the kernel for a port nothing
//! listens on and closes it again: the number comes from the ephemeral
//! range, where the kernel also picks the next `free_port` of a test
//! running beside it and the local port of every outgoing connection. A
//! server that binds its port seconds later (Patroni's PostgreSQL, after
//! `initdb`) can find it taken. A [`ReservedPort`] lies outside that range
//! and is held, until dropped, by a UDP socket bound to the same number:
//! another process reserving ports meets that socket and skips the number,
//! while the TCP port stays free for the server the test starts.

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

/// A TCP port outside the kernel's ephemeral range, free when reserved and
/// kept from every other reservation until dropped.
pub struct ReservedPort {
    port: u16,
    _held: UdpSocket,
}

impl ReservedPort {
    /// Reserves a port; panics when every candidate is taken.
    pub fn new() -> ReservedPort {
        let candidates = candidates();
        assert!(
            !candidates.is_empty(),
            "no ports outside the ephemeral range ({}) to reserve",
            ephemeral_range().map_or("unknown".into(), |(l, h)| format!("{l}-{h}"))
        );
        // Processes start at different places so that they rarely meet.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let start = std::process::id()
            .wrapping_mul(7919)
            .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed) * 104_729);
        let count = candidates.len() as u32;
        (0..count)
            .map(|i| candidates[((start.wrapping_add(i)) % count) as usize])
            .find_map(|port| {
                let held = UdpSocket::bind(("127.0.0.1", port)).ok()?;
                // Nothing may listen there now either (a service of the host).
                TcpListener::bind(("127.0.0.1", port)).ok()?;
                Some(ReservedPort { port, _held: held })
            })
            .expect("a free port outside the ephemeral range")
    }

    pub fn get(&self) -> u16 {
        self.port
    }
}

/// `/proc/sys/net/ipv4/ip_local_port_range`.
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut numbers = text.split_whitespace().map(|n| n.parse().ok());
    Some((numbers.next()??, numbers.next()??))
}

/// Ports from 20000 up to the ephemeral range, else above it.
fn candidates() -> Vec<u16> {
    let (low, high) = ephemeral_range().unwrap_or((32768, 60999));
    if low > 21_000 {
        (20_000..low).collect()
    } else {
        (u32::from(high) + 1..=65_535).map(|p| p as u16).collect()
    }
}

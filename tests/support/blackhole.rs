//! Vanishing peers: the kernel drops every packet of chosen TCP flows on
//! loopback (nftables), so those connections go half-open (no FIN, no RST,
//! no answer) while every other flow keeps working. What a user-space
//! proxy cannot do: its own kernel would still acknowledge the data.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// An nftables table of this test's drop rules; deleted when dropped.
pub struct Blackhole {
    table: String,
}

/// `nft` from PATH, or where Debian installs it (root's PATH may lack
/// /usr/sbin under some runners).
fn nft_program() -> &'static str {
    if std::path::Path::new("/usr/sbin/nft").exists() {
        "/usr/sbin/nft"
    } else {
        "nft"
    }
}

fn nft(args: &[&str]) {
    let output = Command::new(nft_program())
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("the half-open tests need nftables as root (scripts/setup installs it): {e}")
        });
    assert!(
        output.status.success(),
        "nft {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Blackhole {
    /// An empty table: nothing is dropped yet.
    pub fn new() -> Blackhole {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let table = format!(
            "dbm_blackhole_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        nft(&["add", "table", "inet", &table]);
        nft(&[
            "add",
            "chain",
            "inet",
            &table,
            "out",
            "{ type filter hook output priority 0; }",
        ]);
        Blackhole { table }
    }

    /// Drops both directions of the connection whose client side uses
    /// local `port`: that connection's peer vanishes, others are untouched.
    pub fn flow(&self, port: u16) {
        let port = port.to_string();
        for direction in ["sport", "dport"] {
            nft(&[
                "add",
                "rule",
                "inet",
                &self.table,
                "out",
                "tcp",
                direction,
                &port,
                "drop",
            ]);
        }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let _ = Command::new(nft_program())
            .args(["delete", "table", "inet", &self.table])
            .output();
    }
}

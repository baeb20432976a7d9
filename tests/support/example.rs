//! Example binaries (examples/*.rs) run as processes, the way an operator
//! runs a service: environment in, "listening on http://..." out, SIGTERM to
//! stop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// An example binary, built by `cargo test` next to the test binaries.
pub fn example_binary(name: &str) -> PathBuf {
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let binary = deps.parent().unwrap().join("examples").join(name);
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo test --all-features` (or `cargo build --all-features --example {name}`)",
        binary.display()
    );
    binary
}

/// How to run one example: its name and its environment (the caller's
/// database settings are removed first).
pub struct Example {
    pub name: &'static str,
    pub env: Vec<(String, String)>,
}

/// A running example: the child, its address, and what it printed.
pub struct Running {
    pub child: Child,
    pub addr: SocketAddr,
    stdout: Arc<Mutex<String>>,
}

impl Example {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(example_binary(self.name));
        command.args(args).current_dir(super::workspace_root());
        for var in [
            "DATABASE_URL",
            "TEST_DATABASE_URL",
            "MONGODB_URL",
            "DBMANAGER_CONFIG",
            "PORT",
        ] {
            command.env_remove(var);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Starts serving; returns once it printed "listening on http://ADDR".
    pub fn start(&self) -> Running {
        let mut child = self
            .command(&[])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("{} exited before it listened", self.name))
                .unwrap();
            if let Some(addr) = line.strip_prefix("listening on http://") {
                break addr.parse().unwrap();
            }
        };
        // Keep reading stdout so the service never blocks on a full pipe.
        let printed = Arc::new(Mutex::new(String::new()));
        let sink = printed.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut out = sink.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
        });
        Running {
            child,
            addr,
            stdout: printed,
        }
    }
}

impl Running {
    /// Sends SIGTERM, as Kubernetes and systemd do.
    pub fn terminate(&self) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    }

    /// Waits for the process to exit; returns its status and everything it
    /// printed after its address.
    pub async fn wait(mut self) -> (std::process::ExitStatus, String) {
        let status = tokio::task::spawn_blocking(move || {
            let status = self.child.wait();
            (status, self.stdout)
        })
        .await
        .unwrap();
        let (status, stdout) = status;
        // The reader thread ends with the pipe; give it a moment.
        for _ in 0..50 {
            if stdout.lock().unwrap().contains("stopped") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let printed = stdout.lock().unwrap().clone();
        (status.unwrap(), printed)
    }
}

//! A Patroni cluster owned by one test: one etcd and three Patroni members
//! (Debian's `patroni` and `etcd-server`, which `scripts/setup` installs),
//! each PostgreSQL on a port of its own, `ttl: 10`, `loop_wait: 2` and
//! synchronous mode, so a failover never loses an acknowledged commit.
//! Everything runs as `postgres` under one temporary folder, each Patroni in
//! a process group of its own (its PostgreSQL included), and all of it is
//! killed when the value is dropped, however the test ends.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::cluster_dir;
use super::free_port;

const PASSWORD: &str = "patroni-pw";

struct Member {
    pg_port: u16,
    api_port: u16,
    config: PathBuf,
    process: Option<Child>,
}

pub struct Patroni {
    dir: tempfile::TempDir,
    etcd: Child,
    members: Vec<Member>,
}

fn require(program: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{program}` is not installed: run scripts/setup (it installs Debian's patroni and etcd-server)"
    );
}

fn as_postgres(program: &str) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--", program]);
    command
}

fn log_file(path: &Path) -> Stdio {
    Stdio::from(std::fs::File::create(path).unwrap())
}

impl Patroni {
    /// Starts etcd and `members` Patroni members, and waits (bounded, 90 s)
    /// for a leader.
    pub fn start(members: usize) -> Patroni {
        require("patroni");
        require("etcd");
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        assert!(
            is_root,
            "the Patroni tests run Patroni as the postgres user: run them as root"
        );
        let dir = cluster_dir("dbmanager-patroni-", true);
        let (client, peer) = (free_port(), free_port());
        let etcd = as_postgres("etcd")
            .args(["--name", "etcd", "--data-dir"])
            .arg(dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("etcd=http://127.0.0.1:{peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(log_file(&dir.path().join("etcd.log")))
            .process_group(0)
            .spawn()
            .expect("starting etcd");
        let bindir = super::cluster::pg_bindir();
        let members = (0..members)
            .map(|i| {
                let (pg_port, api_port) = (free_port(), free_port());
                let config = dir.path().join(format!("member{i}.yml"));
                std::fs::write(
                    &config,
                    member_config(i, dir.path(), &bindir, client, pg_port, api_port),
                )
                .unwrap();
                Member {
                    pg_port,
                    api_port,
                    config,
                    process: None,
                }
            })
            .collect();
        let mut patroni = Patroni { dir, etcd, members };
        for i in 0..patroni.members.len() {
            patroni.spawn(i);
        }
        let (leader, _) = patroni.wait_for_leader(None, Duration::from_secs(90));
        let others: Vec<usize> = (0..patroni.members.len())
            .filter(|&i| i != leader)
            .collect();
        patroni.wait_for_replicas(&others, Duration::from_secs(90));
        patroni
    }

    /// Whether member `i` is the synchronous standby now.
    pub fn is_synchronous(&self, i: usize) -> bool {
        self.api_status(i, "/sync") == Some(200)
    }

    /// Waits (bounded by `limit`) until each of `members` runs as a replica
    /// and one of them is the synchronous standby: only then can Patroni
    /// fail over without losing an acknowledged commit. (The REST API
    /// names a leader while it is still bootstrapping.)
    pub fn wait_for_replicas(&self, members: &[usize], limit: Duration) {
        let started = Instant::now();
        loop {
            let replicating = members
                .iter()
                .all(|&i| self.api_status(i, "/replica") == Some(200));
            let synchronous = members.iter().any(|&i| self.is_synchronous(i));
            if replicating && synchronous {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "members {members:?} were not replicating (one synchronously) within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn spawn(&mut self, i: usize) {
        let member = &mut self.members[i];
        let child = as_postgres("patroni")
            .arg(&member.config)
            .stdout(log_file(&self.dir.path().join(format!("member{i}.out"))))
            .stderr(log_file(&self.dir.path().join(format!("member{i}.log"))))
            .process_group(0)
            .spawn()
            .expect("starting patroni");
        member.process = Some(child);
    }

    /// A URL with every member, asking for the writable one.
    pub fn url(&self, database: &str) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.pg_port))
            .collect();
        format!(
            "postgres://postgres:{PASSWORD}@{}/{database}?target_session_attrs=read-write",
            hosts.join(",")
        )
    }

    /// The URL of one member alone.
    pub fn member_url(&self, i: usize, database: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{database}",
            self.members[i].pg_port
        )
    }

    /// The member Patroni's REST API calls the leader, if any.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| self.api_status(i, "/leader") == Some(200))
    }

    fn api_status(&self, i: usize, path: &str) -> Option<u16> {
        let address = format!("127.0.0.1:{}", self.members[i].api_port);
        let mut stream = std::net::TcpStream::connect(address).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        reply.split_whitespace().nth(1)?.parse().ok()
    }

    /// Waits (bounded by `limit`) until a member other than `except` is
    /// the leader; returns it and how long that took.
    pub fn wait_for_leader(&self, except: Option<usize>, limit: Duration) -> (usize, Duration) {
        let started = Instant::now();
        loop {
            if let Some(leader) = self.leader().filter(|l| Some(*l) != except) {
                return (leader, started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "no leader within {limit:?}: see the logs in {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `kill -9` of a member's Patroni and its PostgreSQL (its process
    /// group), as a crashed host would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].process.take() {
            let _ = Command::new("kill")
                .args(["-9", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
        kill_postmaster(&self.dir.path().join(format!("data{i}")));
    }

    /// A planned switchover to `candidate` (`patronictl switchover`).
    pub fn switchover(&self, leader: usize, candidate: usize) {
        let output = as_postgres("patronictl")
            .arg("-c")
            .arg(&self.members[leader].config)
            .args([
                "switchover",
                "--leader",
                &format!("member{leader}"),
                "--candidate",
                &format!("member{candidate}"),
                "--force",
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "patronictl switchover failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn kill_postmaster(data: &Path) {
    if let Ok(pid) = std::fs::read_to_string(data.join("postmaster.pid"))
        && let Some(pid) = pid.lines().next()
    {
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
    }
}

impl Drop for Patroni {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What Patroni said is the way to tell why a test failed.
            for i in 0..self.members.len() {
                let status = self.members[i].process.as_mut().map(|c| c.try_wait());
                eprintln!("--- member{i}: process {status:?}");
                let log = self.dir.path().join(format!("member{i}.log"));
                let out = self.dir.path().join(format!("member{i}.out"));
                let text = std::fs::read_to_string(log).unwrap_or_default()
                    + &std::fs::read_to_string(out).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                eprintln!("--- member{i} (last lines)");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{}", self.etcd.id())])
            .status();
        let _ = self.etcd.wait();
    }
}

fn member_config(
    i: usize,
    dir: &Path,
    bindir: &Path,
    etcd: u16,
    pg_port: u16,
    api_port: u16,
) -> String {
    let dir = dir.display();
    let bindir = bindir.display();
    format!(
        "scope: dbmanager
name: member{i}
restapi:
  listen: 127.0.0.1:{api_port}
  connect_address: 127.0.0.1:{api_port}
etcd3:
  hosts: 127.0.0.1:{etcd}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 2
    retry_timeout: 5
    synchronous_mode: true
    postgresql:
      parameters:
        fsync: off
        full_page_writes: off
  initdb:
    - encoding: UTF8
    - auth: scram-sha-256
  pg_hba:
    - host replication replicator 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {dir}/data{i}
  bin_dir: {bindir}
  pgpass: {dir}/pgpass{i}
  authentication:
    superuser:
      username: postgres
      password: {PASSWORD}
    replication:
      username: replicator
      password: replicator-pw
  parameters:
    unix_socket_directories: {dir}
"
    )
}

//! A Patroni cluster owned by one test: one etcd and three Patroni members
//! (Debian's `patroni` and `etcd-server`, which `scripts/setup` installs),
//! each PostgreSQL on a port of its own, `ttl: 10`, `loop_wait: 2` and
//! synchronous mode, so a failover never loses an acknowledged commit.
//!
//! Everything runs as `postgres`, from one temporary folder owned by it:
//! that folder is each process's working directory too. (Patroni starts
//! PostgreSQL through a Python `multiprocessing` helper that first enters
//! its parent's working directory; in a checkout `postgres` may not enter,
//! such as a `mktemp -d` folder, the helper dies and Patroni waits for it
//! for ever, holding the bootstrap: "waiting for leader to bootstrap".)
//!
//! Every port is a [`ReservedPort`]: outside the kernel's ephemeral range
//! and held from every other test (process) until the cluster is dropped,
//! so no server started beside this one takes a port before Patroni's
//! PostgreSQL binds it, seconds after `initdb`. The folder holds the logs:
//! `etcd.log`, `member<i>.log` (Patroni, with its PostgreSQL's log) and
//! `member<i>.out`. Each Patroni runs in a process group of its own; all
//! of it is killed when the value is dropped, however the test ends.
//! Every wait is bounded, ends early when etcd or a Patroni exits, and
//! fails with the tail of every log; a failed test keeps its logs folder.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::cluster_dir;
use super::ports::ReservedPort;

const PASSWORD: &str = "patroni-pw";
/// The bootstrap: etcd healthy, a leader, every replica streaming and one
/// of them synchronous.
const BOOTSTRAP_LIMIT: Duration = Duration::from_secs(90);
/// Lines of each log shown when something times out.
const TAIL: usize = 30;

struct Member {
    pg_port: ReservedPort,
    api_port: ReservedPort,
    config: PathBuf,
    process: Option<Child>,
}

pub struct Patroni {
    dir: tempfile::TempDir,
    etcd: Child,
    etcd_port: ReservedPort,
    _etcd_peer_port: ReservedPort,
    members: Vec<Member>,
    /// Keep the logs folder when dropped: a wait failed (and showed the
    /// logs) or the test panicked.
    keep_logs: bool,
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

/// `program` as the `postgres` user, working in `dir`.
fn as_postgres(program: &str, dir: &Path) -> Command {
    let mut command = Command::new("runuser");
    command
        .args(["-u", "postgres", "--", program])
        .current_dir(dir);
    command
}

fn log_file(path: &Path) -> Stdio {
    Stdio::from(std::fs::File::create(path).unwrap())
}

/// A `GET` over HTTP/1.0: the status and the body, or `None` when nothing
/// answers (within 2 s).
fn rest_get(port: u16, path: &str) -> Option<(u16, String)> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    let status = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Some((status, body))
}

/// The last `TAIL` lines of a log, or why there are none.
fn tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(TAIL)..].join("\n")
        }
        Err(e) => format!("({e})"),
    }
}

/// `/proc/<pid>/stat` after the command name: state, parent, group, ...
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether a process runs (a zombie does not: it serves nothing).
fn alive(pid: &str) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|state| state != "Z"))
}

/// The processes whose parent is `pid`.
fn children(pid: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter(|child| {
            stat_fields(child).is_some_and(|f| f.get(1).map(String::as_str) == Some(pid))
        })
        .collect()
}

fn kill_group(group: &str) {
    let _ = Command::new("kill")
        .args(["-9", "--", &format!("-{group}")])
        .stderr(Stdio::null())
        .status();
}

/// The pid in `data`'s `postmaster.pid`, if PostgreSQL runs there.
fn postmaster(data: &Path) -> Option<String> {
    let pid = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid = pid.lines().next()?.trim().to_string();
    alive(&pid).then_some(pid)
}

impl Patroni {
    /// Starts etcd and `members` Patroni members and waits (bounded) for a
    /// leader with every other member replicating, one synchronously.
    pub fn start(members: usize) -> Patroni {
        require("patroni");
        require("etcd");
        assert!(
            super::cluster::is_root(),
            "the Patroni tests run Patroni as the postgres user: run them as root"
        );
        let mut cluster = Patroni::launch(members);
        if let Err(why) = cluster.bootstrap(BOOTSTRAP_LIMIT) {
            cluster.fail(&format!("Patroni did not bootstrap: {why}"));
        }
        cluster
    }

    /// Reserves the ports, writes the configurations and starts etcd.
    fn launch(members: usize) -> Patroni {
        // Under scripts/test, the run's name is in the folder's, so that its
        // exit can stop what a killed test left running, and only that.
        let run = std::env::var("SERVICES_RUN_DIR")
            .ok()
            .and_then(|d| Some(Path::new(&d).file_name()?.to_str()?.to_string()))
            .map_or(String::new(), |name| format!("{name}-"));
        let dir = cluster_dir(&format!("dbmanager-patroni-{run}"), true);
        let usable = Command::new("runuser")
            .args(["-u", "postgres", "--", "test", "-w"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            usable,
            "the postgres user cannot write to {} (TMPDIR must be a folder it can enter)",
            dir.path().display()
        );
        let (etcd_port, etcd_peer_port) = (ReservedPort::new(), ReservedPort::new());
        let (client, peer) = (etcd_port.get(), etcd_peer_port.get());
        let etcd = as_postgres("etcd", dir.path())
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
                let (pg_port, api_port) = (ReservedPort::new(), ReservedPort::new());
                let config = dir.path().join(format!("member{i}.yml"));
                std::fs::write(
                    &config,
                    member_config(
                        i,
                        dir.path(),
                        &bindir,
                        client,
                        pg_port.get(),
                        api_port.get(),
                    ),
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
        Patroni {
            dir,
            etcd,
            etcd_port,
            _etcd_peer_port: etcd_peer_port,
            members,
            keep_logs: false,
        }
    }

    /// etcd healthy, then every member started, a leader, and every other
    /// member replicating with one synchronous, all within `limit`.
    fn bootstrap(&mut self, limit: Duration) -> Result<(), String> {
        let started = Instant::now();
        self.wait(limit, "etcd answering /health", |c| c.etcd_healthy())?;
        for i in 0..self.members.len() {
            self.spawn(i);
        }
        let left = limit.saturating_sub(started.elapsed());
        self.wait(left, "a leader", |c| c.leader().is_some())?;
        let leader = self.leader().ok_or("the leader went away")?;
        let others: Vec<usize> = (0..self.members.len()).filter(|&i| i != leader).collect();
        let left = limit.saturating_sub(started.elapsed());
        self.wait(
            left,
            &format!("members {others:?} replicating, one synchronously"),
            |c| c.replicating(&others),
        )?;
        Ok(())
    }

    /// Polls `check` until it holds (`Ok` with the time it took), `limit`
    /// passes or etcd or a running member exits (`Err` saying which).
    fn wait(
        &mut self,
        limit: Duration,
        what: &str,
        mut check: impl FnMut(&Self) -> bool,
    ) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            if check(self) {
                return Ok(started.elapsed());
            }
            if let Ok(Some(status)) = self.etcd.try_wait() {
                return Err(format!("waiting for {what}: etcd exited ({status})"));
            }
            for (i, member) in self.members.iter_mut().enumerate() {
                if let Some(Ok(Some(status))) = member.process.as_mut().map(Child::try_wait) {
                    return Err(format!(
                        "waiting for {what}: member{i}'s Patroni exited ({status})"
                    ));
                }
            }
            if started.elapsed() >= limit {
                return Err(format!("no {what} within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// As [`Patroni::wait`], failing the test with every log's tail.
    fn wait_or_fail(
        &mut self,
        limit: Duration,
        what: &str,
        check: impl FnMut(&Self) -> bool,
    ) -> Duration {
        match self.wait(limit, what, check) {
            Ok(took) => took,
            Err(why) => self.fail(&why),
        }
    }

    fn fail(&mut self, why: &str) -> ! {
        self.keep_logs = true;
        panic!("{why}\n{}", self.logs());
    }

    /// The state of every process and the tail of every log.
    pub fn logs(&mut self) -> String {
        let dir = self.dir.path().to_path_buf();
        let mut text = format!("logs in {}\n", dir.display());
        let etcd = self.etcd.try_wait();
        text += &format!(
            "--- etcd ({etcd:?}; None is running)\n{}\n",
            tail(&dir.join("etcd.log"))
        );
        for (i, member) in self.members.iter_mut().enumerate() {
            let status = member.process.as_mut().map(Child::try_wait);
            text += &format!(
                "--- member{i}: PostgreSQL on {}, REST on {}, Patroni {status:?} (Some(Ok(None)) is running)\n",
                member.pg_port.get(),
                member.api_port.get()
            );
            text += &format!(
                "--- member{i}.log (Patroni and PostgreSQL)\n{}\n",
                tail(&dir.join(format!("member{i}.log")))
            );
            text += &format!(
                "--- member{i}.out\n{}\n",
                tail(&dir.join(format!("member{i}.out")))
            );
        }
        text
    }

    fn etcd_healthy(&self) -> bool {
        rest_get(self.etcd_port.get(), "/health")
            .is_some_and(|(status, body)| status == 200 && body.contains("true"))
    }

    fn replicating(&self, members: &[usize]) -> bool {
        members
            .iter()
            .all(|&i| self.api_status(i, "/replica") == Some(200))
            && members.iter().any(|&i| self.is_synchronous(i))
    }

    /// Whether member `i` is the synchronous standby now.
    pub fn is_synchronous(&self, i: usize) -> bool {
        self.api_status(i, "/sync") == Some(200)
    }

    /// Waits (bounded by `limit`) until each of `members` runs as a replica
    /// and one of them is the synchronous standby: only then can Patroni
    /// fail over without losing an acknowledged commit. (The REST API
    /// names a leader while it is still bootstrapping.)
    pub fn wait_for_replicas(&mut self, members: &[usize], limit: Duration) {
        self.wait_or_fail(
            limit,
            &format!("members {members:?} replicating, one synchronously"),
            |c| c.replicating(members),
        );
    }

    fn spawn(&mut self, i: usize) {
        let member = &mut self.members[i];
        let child = as_postgres("patroni", self.dir.path())
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
            .map(|m| format!("127.0.0.1:{}", m.pg_port.get()))
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
            self.members[i].pg_port.get()
        )
    }

    /// Member `i`'s PostgreSQL port.
    pub fn pg_port(&self, i: usize) -> u16 {
        self.members[i].pg_port.get()
    }

    /// Member `i` as `host:port`, for `postgres.replicas.hosts`.
    pub fn host(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.pg_port(i))
    }

    /// Member `i`'s replication lag in bytes as Patroni's REST API
    /// (`/cluster`) reports it, asked of any member that answers; `None`
    /// for the leader and when no member answers.
    pub fn patroni_lag(&self, i: usize) -> Option<u64> {
        let name = format!("member{i}");
        (0..self.members.len()).find_map(|asked| {
            let (status, body) = rest_get(self.members[asked].api_port.get(), "/cluster")?;
            if status != 200 {
                return None;
            }
            let cluster: serde_json::Value = serde_json::from_str(&body).ok()?;
            cluster["members"]
                .as_array()?
                .iter()
                .find(|m| m["name"] == name.as_str())
                .and_then(|m| m["lag"].as_u64())
        })
    }

    /// The member Patroni's REST API calls the leader, if any.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| self.api_status(i, "/leader") == Some(200))
    }

    fn api_status(&self, i: usize, path: &str) -> Option<u16> {
        rest_get(self.members[i].api_port.get(), path).map(|(status, _)| status)
    }

    /// Waits (bounded by `limit`) until a member other than `except` is
    /// the leader; returns it and how long that took.
    pub fn wait_for_leader(&mut self, except: Option<usize>, limit: Duration) -> (usize, Duration) {
        let new_leader = |c: &Self| c.leader().filter(|l| Some(*l) != except);
        let took = self.wait_or_fail(limit, "a leader", |c| new_leader(c).is_some());
        match new_leader(self) {
            Some(leader) => (leader, took),
            None => self.fail("the new leader went away at once"),
        }
    }

    /// `kill -9` of a member's Patroni (its process group) and all of its
    /// PostgreSQL at once, as a crashed host would; returns once none of
    /// them runs (bounded: 10 s). Each backend runs in a session of its
    /// own, so the postmaster is stopped first (it forks no more) and its
    /// children are killed with it.
    pub fn kill(&mut self, i: usize) {
        if !self.kill_member(i) {
            self.fail(&format!(
                "member{i}'s PostgreSQL still runs 10 s after kill -9"
            ));
        }
    }

    /// As [`Patroni::kill`]; whether every process went (for `Drop`, which
    /// must not panic).
    fn kill_member(&mut self, i: usize) -> bool {
        let mut targets = Vec::new();
        let postmaster = postmaster(&self.dir.path().join(format!("data{i}")));
        if let Some(pid) = &postmaster {
            let _ = Command::new("kill").args(["-STOP", pid]).status();
            targets.extend(children(pid));
            targets.push(pid.clone());
        }
        let patroni = self.members[i].process.take();
        if let Some(child) = &patroni {
            targets.push(format!("-{}", child.id()));
        }
        if !targets.is_empty() {
            let _ = Command::new("kill")
                .args(["-9", "--"])
                .args(&targets)
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut child) = patroni {
            let _ = child.wait();
        }
        let started = Instant::now();
        let pids: Vec<&String> = targets.iter().filter(|t| !t.starts_with('-')).collect();
        while pids.iter().any(|pid| alive(pid)) {
            if started.elapsed() >= Duration::from_secs(10) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// A planned switchover to `candidate` (`patronictl switchover`),
    /// bounded by `limit`.
    pub fn switchover(&mut self, leader: usize, candidate: usize, limit: Duration) {
        let out = self.dir.path().join("switchover.out");
        let mut patronictl = as_postgres("patronictl", self.dir.path())
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
            .stdout(log_file(&out))
            .stderr(log_file(&out.with_extension("log")))
            .process_group(0)
            .spawn()
            .expect("starting patronictl");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = patronictl.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() >= limit {
                kill_group(&patronictl.id().to_string());
                let _ = patronictl.wait();
                self.fail(&format!(
                    "patronictl switchover did not return within {limit:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            let said = tail(&out) + "\n" + &tail(&out.with_extension("log"));
            self.fail(&format!("patronictl switchover failed ({status}): {said}"));
        }
    }
}

impl Drop for Patroni {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.keep_logs {
            // What Patroni said is the way to tell why a test failed (a
            // timeout here has put it in its panic message already).
            self.keep_logs = true;
            eprintln!("{}", self.logs());
        }
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
        kill_group(&self.etcd.id().to_string());
        let _ = self.etcd.wait();
        if self.keep_logs {
            // The data folders go; the logs and configurations stay.
            if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
                for entry in entries.flatten() {
                    if entry.path().is_dir() {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
            self.dir.disable_cleanup(true);
            eprintln!("Patroni logs kept in {}", self.dir.path().display());
        }
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

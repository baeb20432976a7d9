//! libpq's connection semantics, side by side: a table of connection
//! strings (URL and key/value forms) run through `psql` and through
//! dbmanager against servers this test starts, each row asserting the same
//! outcome (connected to which server, with or without TLS, or failed with
//! the same class of error) and dbmanager's time within psql's plus one
//! second (a bound on the timeouts' correctness, not a speed claim).
//!
//! Servers: `up` (TLS on, plain and encrypted sessions accepted, also
//! listening in libpq's default socket directory), `tls_only` (pg_hba
//! `hostssl` only), `nossl` (TLS on, pg_hba `hostnossl` only), `ro`
//! (`default_transaction_read_only = on`), `frozen` (a postmaster stopped
//! with SIGSTOP: accepts TCP, never answers), `silent` (a listener that
//! accepts and never answers) and `down` (a closed port).

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dbmanager::{DatabaseManager, Error, FailureKind, RetryPolicy};
use support::{PgCluster, pg_config};

const PASSWORD: &str = "parity-pw";

/// What a client got from a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Connected to this server, over TLS or not; `extra` is the row's
    /// own expression (an application name, a setting), or empty.
    Connected {
        server: String,
        tls: bool,
        extra: String,
    },
    /// Failed; the class of the (last) error.
    Failed(Class),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// A bound passed (`connect_timeout`).
    Timeout,
    /// Nothing listens (refused, no socket file).
    Unreachable,
    /// The server refused the session (pg_hba.conf, password).
    Rejected,
    /// TLS was required and could not be had, or the certificate failed.
    Tls,
    /// `target_session_attrs` refused every server.
    SessionAttrs,
    /// The connection string itself is wrong.
    Config,
}

/// A row: its name, the string (placeholders `{up}` etc. for ports,
/// `{pw}`, `{up_dir}`, `{ca}`), the extra SQL expression, and whether the
/// row is the frozen-first-host failover (checked against connect_timeout
/// + 1 s as well).
struct Row {
    name: &'static str,
    conninfo: &'static str,
    extra: &'static str,
    failover_within: Option<Duration>,
}

const fn row(name: &'static str, conninfo: &'static str) -> Row {
    Row {
        name,
        conninfo,
        extra: "''",
        failover_within: None,
    }
}

const fn with_extra(name: &'static str, conninfo: &'static str, extra: &'static str) -> Row {
    Row {
        name,
        conninfo,
        extra,
        failover_within: None,
    }
}

const fn failover(name: &'static str, conninfo: &'static str, within: Duration) -> Row {
    Row {
        name,
        conninfo,
        extra: "''",
        failover_within: Some(within),
    }
}

fn rows() -> Vec<Row> {
    vec![
        // TLS negotiation on a server that takes both.
        row(
            "url up sslmode=disable",
            "postgres://postgres:{pw}@127.0.0.1:{up}/postgres?sslmode=disable",
        ),
        row(
            "url up default sslmode (prefer)",
            "postgres://postgres:{pw}@127.0.0.1:{up}/postgres",
        ),
        row(
            "url up sslmode=require",
            "postgres://postgres:{pw}@127.0.0.1:{up}/postgres?sslmode=require",
        ),
        row(
            "url up sslmode=allow",
            "postgres://postgres:{pw}@127.0.0.1:{up}/postgres?sslmode=allow",
        ),
        // TLS-only (hostssl) and non-TLS (hostnossl) servers.
        row(
            "url tls_only sslmode=prefer",
            "postgres://postgres:{pw}@127.0.0.1:{tls_only}/postgres?sslmode=prefer",
        ),
        row(
            "url tls_only sslmode=allow (retry with TLS)",
            "postgres://postgres:{pw}@127.0.0.1:{tls_only}/postgres?sslmode=allow",
        ),
        row(
            "url tls_only sslmode=disable",
            "postgres://postgres:{pw}@127.0.0.1:{tls_only}/postgres?sslmode=disable",
        ),
        row(
            "url nossl sslmode=prefer (retry without TLS)",
            "postgres://postgres:{pw}@127.0.0.1:{nossl}/postgres?sslmode=prefer",
        ),
        row(
            "kv nossl default sslmode",
            "host=127.0.0.1 port={nossl} user=postgres password={pw} dbname=postgres",
        ),
        row(
            "url nossl sslmode=require",
            "postgres://postgres:{pw}@127.0.0.1:{nossl}/postgres?sslmode=require",
        ),
        row(
            "url nossl sslmode=allow",
            "postgres://postgres:{pw}@127.0.0.1:{nossl}/postgres?sslmode=allow",
        ),
        row(
            "kv tls_only,up sslmode=disable",
            "host=127.0.0.1,127.0.0.1 port={tls_only},{up} user=postgres password={pw} dbname=postgres sslmode=disable connect_timeout=2",
        ),
        // Hosts down, frozen and silent.
        row(
            "url down",
            "postgres://postgres:{pw}@127.0.0.1:{down}/postgres?connect_timeout=2",
        ),
        row(
            "url down,up",
            "postgres://postgres:{pw}@127.0.0.1:{down},127.0.0.1:{up}/postgres?connect_timeout=2",
        ),
        failover(
            "url frozen,up (SIGSTOPped postmaster first)",
            "postgres://postgres:{pw}@127.0.0.1:{frozen},127.0.0.1:{up}/postgres?connect_timeout=2",
            Duration::from_secs(3),
        ),
        failover(
            "kv frozen,up connect_timeout=1 (libpq: 2 s)",
            "host=127.0.0.1,127.0.0.1 port={frozen},{up} user=postgres password={pw} dbname=postgres connect_timeout=1",
            Duration::from_secs(3),
        ),
        failover(
            "url silent,up (listener that never answers)",
            "postgres://postgres:{pw}@127.0.0.1:{silent},127.0.0.1:{up}/postgres?connect_timeout=2",
            Duration::from_secs(3),
        ),
        row(
            "url frozen,silent,up",
            "postgres://postgres:{pw}@127.0.0.1:{frozen},127.0.0.1:{silent},127.0.0.1:{up}/postgres?connect_timeout=2",
        ),
        row(
            "url frozen",
            "postgres://postgres:{pw}@127.0.0.1:{frozen}/postgres?connect_timeout=2",
        ),
        row(
            "kv silent connect_timeout=3",
            "host=127.0.0.1 port={silent} user=postgres password={pw} dbname=postgres connect_timeout=3",
        ),
        row(
            "url down,frozen",
            "postgres://postgres:{pw}@127.0.0.1:{down},127.0.0.1:{frozen}/postgres?connect_timeout=2",
        ),
        // target_session_attrs.
        row(
            "url ro,up read-write",
            "postgres://postgres:{pw}@127.0.0.1:{ro},127.0.0.1:{up}/postgres?target_session_attrs=read-write",
        ),
        row(
            "url ro,up read-only",
            "postgres://postgres:{pw}@127.0.0.1:{ro},127.0.0.1:{up}/postgres?target_session_attrs=read-only",
        ),
        row(
            "kv up,ro read-only",
            "host=127.0.0.1,127.0.0.1 port={up},{ro} user=postgres password={pw} dbname=postgres target_session_attrs=read-only",
        ),
        row(
            "url ro read-write",
            "postgres://postgres:{pw}@127.0.0.1:{ro}/postgres?target_session_attrs=read-write",
        ),
        row(
            "url frozen,ro,up read-write",
            "postgres://postgres:{pw}@127.0.0.1:{frozen},127.0.0.1:{ro},127.0.0.1:{up}/postgres?target_session_attrs=read-write&connect_timeout=2",
        ),
        // load_balance_hosts (either order ends on the one host up).
        row(
            "url down,up load_balance_hosts=random",
            "postgres://postgres:{pw}@127.0.0.1:{down},127.0.0.1:{up}/postgres?load_balance_hosts=random&connect_timeout=2",
        ),
        row(
            "kv frozen,up load_balance_hosts=random",
            "host=127.0.0.1,127.0.0.1 port={frozen},{up} user=postgres password={pw} dbname=postgres load_balance_hosts=random connect_timeout=2",
        ),
        // hostaddr.
        row(
            "kv hostaddr alone",
            "hostaddr=127.0.0.1 port={up} user=postgres password={pw} dbname=postgres",
        ),
        row(
            "kv host=localhost hostaddr verify-full",
            "host=localhost hostaddr=127.0.0.1 port={up} user=postgres password={pw} dbname=postgres sslmode=verify-full sslrootcert={ca}",
        ),
        row(
            "url 127.0.0.1 verify-full (certificate is for localhost)",
            "postgres://postgres:{pw}@127.0.0.1:{up}/postgres?sslmode=verify-full&sslrootcert={ca}",
        ),
        row(
            "kv hostaddr down,up",
            "host=a.invalid,b.invalid hostaddr=127.0.0.1,127.0.0.1 port={down},{up} user=postgres password={pw} dbname=postgres connect_timeout=2",
        ),
        // Unix sockets, and no host at all (libpq's default directory).
        row(
            "kv unix socket",
            "host={up_dir} port={up} user=postgres password={pw} dbname=postgres",
        ),
        row(
            "url unix socket (percent-encoded)",
            "postgres://postgres:{pw}@{up_dir_encoded}:{up}/postgres",
        ),
        row(
            "url unix socket in query",
            "postgres://postgres:{pw}@/postgres?host={up_dir}&port={up}",
        ),
        row(
            "kv no host (default socket directory)",
            "port={up} user=postgres password={pw} dbname=postgres",
        ),
        row(
            "url no host (default socket directory)",
            "postgres://postgres:{pw}@/postgres?port={up}",
        ),
        row(
            "url unix socket down",
            "postgres://postgres:{pw}@/postgres?host={up_dir}&port={down}",
        ),
        // Empty port: the default port, then the next host.
        row(
            "url empty port first",
            "postgres://postgres:{pw}@127.0.0.1:,127.0.0.1:{up}/postgres?connect_timeout=2",
        ),
        // options and application_name.
        with_extra(
            "url options",
            "postgres://postgres:{pw}@127.0.0.1:{up}/postgres?options=-c%20work_mem%3D5MB",
            "current_setting('work_mem')",
        ),
        with_extra(
            "kv options quoted",
            "host=127.0.0.1 port={up} user=postgres password={pw} dbname=postgres options='-c work_mem=6MB -c search_path=parity'",
            "current_setting('work_mem') || ' ' || current_setting('search_path')",
        ),
        with_extra(
            "url application_name",
            "postgres://postgres:{pw}@127.0.0.1:{up}/postgres?application_name=parity_url",
            "current_setting('application_name')",
        ),
        with_extra(
            "kv application_name quoted",
            "host=127.0.0.1 port={up} user=postgres password={pw} dbname=postgres application_name='parity kv'",
            "current_setting('application_name')",
        ),
        // Failures of the credentials and of the string.
        row(
            "url wrong password",
            "postgres://postgres:wrong@127.0.0.1:{up}/postgres",
        ),
        row(
            "kv unknown option",
            "host=127.0.0.1 port={up} user=postgres password={pw} frobnicate=1",
        ),
        row(
            "kv connect_timeout not a number",
            "host=127.0.0.1 port={up} user=postgres password={pw} connect_timeout=soon",
        ),
    ]
}

/// Everything a row's placeholders stand for, and the server behind each
/// port.
struct Servers {
    values: HashMap<&'static str, String>,
    by_port: HashMap<String, &'static str>,
}

impl Servers {
    fn fill(&self, template: &str) -> String {
        let mut out = template.to_string();
        // Longest names first: `{up_dir_encoded}` before `{up_dir}` before `{up}`.
        let mut keys: Vec<_> = self.values.keys().collect();
        keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
        for key in keys {
            out = out.replace(&format!("{{{key}}}"), &self.values[key]);
        }
        out
    }

    fn server(&self, port: &str) -> String {
        self.by_port
            .get(port)
            .map(|s| s.to_string())
            .unwrap_or_else(|| format!("port {port}"))
    }
}

fn query(extra: &str) -> String {
    format!(
        "SELECT current_setting('port'), coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false), {extra}"
    )
}

/// psql on the string, with no PG* variable or password file in the way.
fn run_psql(conninfo: &str, extra: &str, servers: &Servers) -> (Outcome, Duration) {
    let psql = std::env::var("PSQL").unwrap_or_else(|_| "psql".into());
    let started = Instant::now();
    let output = Command::new(&psql)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PGPASSFILE", "/dev/null")
        .env("PGSYSCONFDIR", "/nonexistent")
        .args(["-X", "-A", "-t", "-F", "|", "-d", conninfo, "-c", &query(extra)])
        .output()
        .unwrap_or_else(|e| {
            panic!("psql is needed for the libpq parity test (scripts/setup installs postgresql-client): {e}")
        });
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    // load_balance_hosts came with libpq 16; an older psql is asked the
    // same host list without it (every such row ends on one host up, in
    // either order).
    // ("invalid connection option" / "invalid URI query parameter").
    if stderr.contains("\"load_balance_hosts\"") && conninfo.contains("load_balance_hosts=") {
        let without = conninfo
            .split_whitespace()
            .filter(|w| !w.starts_with("load_balance_hosts="))
            .collect::<Vec<_>>()
            .join(" ")
            .replace("load_balance_hosts=random&", "")
            .replace("&load_balance_hosts=random", "");
        println!("   (psql before 16: load_balance_hosts left out for psql)");
        return run_psql(&without, extra, servers);
    }
    if output.status.success() {
        let line = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let mut fields = line.splitn(3, '|');
        let port = fields.next().unwrap_or_default();
        let tls = fields.next() == Some("t");
        let extra = fields.next().unwrap_or_default().to_string();
        (
            Outcome::Connected {
                server: servers.server(port),
                tls,
                extra,
            },
            took,
        )
    } else {
        (Outcome::Failed(psql_class(&stderr)), took)
    }
}

/// The class of psql's last error (with several hosts, libpq lists one
/// failure per host; the last is the one a caller acts on).
fn psql_class(stderr: &str) -> Class {
    let last = stderr
        .lines()
        .rfind(|l| !l.starts_with('\t') && !l.trim().is_empty())
        .unwrap_or_default();
    let has = |s: &str| last.contains(s);
    if has("timeout expired") {
        Class::Timeout
    } else if has("Connection refused") || has("No such file or directory") {
        Class::Unreachable
    } else if has("read-only") || has("hot standby") {
        Class::SessionAttrs
    } else if has("pg_hba.conf") || has("password authentication failed") {
        Class::Rejected
    } else if has("SSL") || has("certificate") {
        Class::Tls
    } else if has("invalid") {
        Class::Config
    } else {
        panic!("unclassified psql error: {stderr}")
    }
}

/// dbmanager on the string: an eager build (one attempt, no retry), then
/// the same query on a pooled connection.
async fn run_dbmanager(conninfo: &str, extra: &str, servers: &Servers) -> (Outcome, Duration) {
    let mut config = pg_config(conninfo);
    config.retry = RetryPolicy::exponential().max_attempts(1);
    config.postgres.pool.min_idle = 1;
    // For strings without connect_timeout (none of their hosts hangs).
    config.postgres.pool.connect_timeout = Duration::from_secs(10);
    let started = Instant::now();
    let built = DatabaseManager::builder().config(config).build().await;
    let took = started.elapsed();
    match built {
        Ok(db) => {
            let client = db.postgres().unwrap().get().await.unwrap();
            let row = client.query_one(&query(extra), &[]).await.unwrap();
            let port: String = row.get(0);
            let tls: bool = row.get(1);
            let extra: Option<String> = row.get(2);
            drop(client);
            db.shutdown().await.unwrap();
            (
                Outcome::Connected {
                    server: servers.server(&port),
                    tls,
                    extra: extra.unwrap_or_default(),
                },
                took,
            )
        }
        Err(error) => (Outcome::Failed(dbmanager_class(&error)), took),
    }
}

fn dbmanager_class(error: &Error) -> Class {
    match error {
        Error::Config { .. } => Class::Config,
        Error::Connect { kind, reason, .. } => match kind {
            FailureKind::Timeout => Class::Timeout,
            FailureKind::Refused | FailureKind::Io | FailureKind::Reset => Class::Unreachable,
            FailureKind::Authentication => Class::Rejected,
            FailureKind::Tls => Class::Tls,
            FailureKind::Unavailable if reason.contains("target_session_attrs") => {
                Class::SessionAttrs
            }
            _ => panic!("unclassified dbmanager error: {error:?}"),
        },
        other => panic!("unclassified dbmanager error: {other:?}"),
    }
}

/// Sends SIGCONT to a stopped postmaster when dropped, so its cluster can
/// be stopped.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        signal("-STOP", pid);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(which: &str, pid: u32) {
    let status = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {which} {pid}");
}

/// libpq's default socket directory on Debian builds.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_strings_behave_as_in_psql() {
    let both_hba = "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n";
    let up = PgCluster::init(PASSWORD);
    let ca = up.enable_tls();
    up.set_hba(both_hba);
    assert!(
        Path::new(DEFAULT_SOCKET_DIR).is_dir(),
        "{DEFAULT_SOCKET_DIR} (libpq's default socket directory) is missing: install postgresql-common or create it for the postgres user"
    );
    up.start_with_sockets_also_in(&[Path::new(DEFAULT_SOCKET_DIR)]);

    let tls_only = PgCluster::init(PASSWORD);
    tls_only.enable_tls();
    tls_only.start();

    let nossl = PgCluster::init(PASSWORD);
    nossl.enable_tls();
    nossl.set_hba("local all all scram-sha-256\nhostnossl all all 127.0.0.1/32 scram-sha-256\n");
    nossl.start();

    let ro = PgCluster::start_new(PASSWORD);
    ro.psql("ALTER SYSTEM SET default_transaction_read_only = on; SELECT pg_reload_conf()");

    let frozen = PgCluster::start_new(PASSWORD);
    let _stopped = Stopped::new(frozen.postmaster_pid());

    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let down = support::free_port();

    let up_dir = up.socket_dir().display().to_string();
    let encoded: String = up_dir
        .bytes()
        .map(|b| match b {
            b'/' => "%2F".to_string(),
            b => (b as char).to_string(),
        })
        .collect();
    let ports: [(&'static str, u16); 7] = [
        ("up", up.port),
        ("tls_only", tls_only.port),
        ("nossl", nossl.port),
        ("ro", ro.port),
        ("frozen", frozen.port),
        ("silent", silent_port),
        ("down", down),
    ];
    let mut values: HashMap<&'static str, String> =
        ports.iter().map(|(n, p)| (*n, p.to_string())).collect();
    values.insert("pw", PASSWORD.into());
    values.insert("ca", ca.display().to_string());
    values.insert("up_dir", up_dir);
    values.insert("up_dir_encoded", encoded);
    let by_port = ports.iter().map(|(n, p)| (p.to_string(), *n)).collect();
    let servers = Servers { values, by_port };

    let margin = Duration::from_secs(1);
    let rows = rows();
    assert!(rows.len() >= 30);
    let mut mismatches = Vec::new();
    println!(
        "{:<52} | {:<34} | {:<34} | {:>7} | {:>7}",
        "row", "psql", "dbmanager", "psql s", "dbm s"
    );
    for (i, row) in rows.iter().enumerate() {
        let conninfo = servers.fill(row.conninfo);
        let (psql, psql_took) = {
            let conninfo = conninfo.clone();
            let extra = row.extra.to_string();
            let servers = &servers;
            tokio::task::block_in_place(|| run_psql(&conninfo, &extra, servers))
        };
        let (dbm, dbm_took) = run_dbmanager(&conninfo, row.extra, &servers).await;
        println!(
            "{:<52} | {:<34} | {:<34} | {:>7.2} | {:>7.2}",
            format!("{:>2} {}", i + 1, row.name),
            describe(&psql),
            describe(&dbm),
            psql_took.as_secs_f64(),
            dbm_took.as_secs_f64()
        );
        if psql != dbm {
            mismatches.push(format!("{}: psql {psql:?}, dbmanager {dbm:?}", row.name));
        }
        if dbm_took > psql_took + margin {
            mismatches.push(format!(
                "{}: dbmanager took {dbm_took:?}, psql {psql_took:?} (+{margin:?} allowed)",
                row.name
            ));
        }
        if let Some(within) = row.failover_within {
            if !matches!(&dbm, Outcome::Connected { server, .. } if server == "up") {
                mismatches.push(format!("{}: did not fail over to `up`", row.name));
            }
            if dbm_took > within {
                mismatches.push(format!(
                    "{}: failover took {dbm_took:?}, more than connect_timeout + 1 s ({within:?})",
                    row.name
                ));
            }
        }
    }
    drop(silent);
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Connected { server, tls, extra } => {
            let tls = if *tls { "TLS" } else { "plain" };
            if extra.is_empty() {
                format!("{server} {tls}")
            } else {
                format!("{server} {tls} [{extra}]")
            }
        }
        Outcome::Failed(class) => format!("failed: {class:?}"),
    }
}

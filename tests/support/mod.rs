//! Fixtures shared by the integration tests: real servers, real
//! connections.
//!
//! - The shared PostgreSQL server comes from `PG_ADMIN_URL` (a superuser
//!   URL; `scripts/test` starts one) or `DATABASE_URL`; each test works in a
//!   database of its own ([`TestDb`]).
//! - Tests that stop, restart or break a server own a cluster ([`PgCluster`]).
//! - MongoDB comes from `MONGODB_URL`, or a `mongoeco` server started for
//!   the test ([`MongoServer`]).
#![allow(dead_code)]

mod example;
#[allow(unused_imports)]
pub use example::*;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The superuser URL of the shared PostgreSQL server.
pub fn admin_url() -> String {
    std::env::var("PG_ADMIN_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| {
            panic!(
                "no PostgreSQL server for the tests: run them with `scripts/test` (which starts one), \
                 or set PG_ADMIN_URL (or DATABASE_URL) to a superuser URL"
            )
        })
}

/// The shared MongoDB server's URL, if the environment names one.
pub fn mongo_url_from_env() -> Option<String> {
    std::env::var("MONGODB_URL").ok().filter(|u| !u.is_empty())
}

/// A name no other test (or test process) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Replaces the database of a `postgres://` URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_end..].find('/') {
        Some(i) => &base[..authority_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// Replaces the user and password of a `postgres://user:password@...` URL.
pub fn with_credentials(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}:{password}@{host}")
}

/// Runs SQL on a fresh connection (outside any pool under test).
pub async fn sql(url: &str, statements: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting for test setup: {e}"));
    let task = tokio::spawn(connection);
    client
        .batch_execute(statements)
        .await
        .unwrap_or_else(|e| panic!("test setup SQL failed: {e:?}"));
    drop(client);
    let _ = task.await;
}

/// A query returning one i64 (count(*) etc.).
pub async fn query_i64(url: &str, query: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(connection);
    let value: i64 = client.query_one(query, &[]).await.unwrap().get(0);
    drop(client);
    let _ = task.await;
    value
}

/// A database of its own on the shared server, dropped afterwards (also
/// when the test panics).
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin: String,
}

impl TestDb {
    pub async fn create(prefix: &str) -> TestDb {
        let admin = admin_url();
        let name = unique_name(prefix);
        sql(&admin, &format!("CREATE DATABASE \"{name}\"")).await;
        TestDb {
            url: with_database(&admin, &name),
            name,
            admin,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                {
                    let task = tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                    drop(client);
                    let _ = task.await;
                }
            });
        })
        .join();
    }
}

fn pg_bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .find(|d| d.join("initdb").exists())
        .expect("PostgreSQL server binaries (initdb, pg_ctl) not found: run scripts/setup or install postgresql")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A PostgreSQL cluster owned by one test: SCRAM passwords, fsync off, on a
/// free port; stopped and removed when dropped.
pub struct PgCluster {
    dir: tempfile::TempDir,
    pub port: u16,
    pub password: String,
    bindir: PathBuf,
    root: bool,
}

impl PgCluster {
    /// Runs initdb; the server is not started.
    pub fn init(password: &str) -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("dbmanager-pg-")
            .tempdir()
            .unwrap();
        let root = is_root();
        let bindir = pg_bindir();
        if root {
            let status = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let pwfile = dir.path().join("pwfile");
        std::fs::File::create(&pwfile)
            .unwrap()
            .write_all(password.as_bytes())
            .unwrap();
        if root {
            Command::new("chown")
                .arg("postgres")
                .arg(&pwfile)
                .status()
                .unwrap();
        }
        let output = Self::command(root, &bindir.join("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-instructions",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::remove_file(&pwfile).unwrap();
        PgCluster {
            dir,
            port: free_port(),
            password: password.to_string(),
            bindir,
            root,
        }
    }

    /// initdb and start.
    pub fn start_new(password: &str) -> PgCluster {
        let cluster = PgCluster::init(password);
        cluster.start();
        cluster
    }

    fn command(root: bool, program: &Path) -> Command {
        if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    pub fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        let output = Self::command(self.root, &self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pg_ctl start failed: {}",
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    pub fn stop(&self) {
        let _ = Self::command(self.root, &self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .output();
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// Turns TLS on (before `start`) with a fresh test CA and a server
    /// certificate it signed for `localhost` only, and accepts only
    /// encrypted connections. Returns the CA certificate's path.
    pub fn enable_tls(&self) -> PathBuf {
        let data = self.dir.path().join("data");
        let dir = self.dir.path();
        let (ca, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let (cert, key, csr) = (
            data.join("server.crt"),
            data.join("server.key"),
            dir.join("server.csr"),
        );
        let extensions = dir.join("server.ext");
        std::fs::write(
            &extensions,
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        let openssl = |args: &[&std::ffi::OsStr]| {
            let output = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl is needed for the TLS tests");
            assert!(
                output.status.success(),
                "openssl: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let os = |s: &str| std::ffi::OsString::from(s);
        openssl(&[
            &os("req"),
            &os("-x509"),
            &os("-newkey"),
            &os("rsa:2048"),
            &os("-nodes"),
            &os("-days"),
            &os("2"),
            &os("-subj"),
            &os("/CN=dbmanager test CA"),
            &os("-keyout"),
            ca_key.as_os_str(),
            &os("-out"),
            ca.as_os_str(),
        ]);
        openssl(&[
            &os("req"),
            &os("-newkey"),
            &os("rsa:2048"),
            &os("-nodes"),
            &os("-subj"),
            &os("/CN=localhost"),
            &os("-keyout"),
            key.as_os_str(),
            &os("-out"),
            csr.as_os_str(),
        ]);
        openssl(&[
            &os("x509"),
            &os("-req"),
            &os("-in"),
            csr.as_os_str(),
            &os("-CA"),
            ca.as_os_str(),
            &os("-CAkey"),
            ca_key.as_os_str(),
            &os("-CAcreateserial"),
            &os("-days"),
            &os("2"),
            &os("-extfile"),
            extensions.as_os_str(),
            &os("-out"),
            cert.as_os_str(),
        ]);
        if self.root {
            Command::new("chown")
                .arg("postgres")
                .arg(&cert)
                .arg(&key)
                .status()
                .unwrap();
        }
        Command::new("chmod").arg("600").arg(&key).status().unwrap();
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        writeln!(
            conf,
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'"
        )
        .unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        ca
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Self::command(self.root, &self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// The Python that runs mongoeco: `MONGOECO_PYTHON`, or the virtual
/// environment `scripts/setup` creates.
fn mongoeco_python() -> PathBuf {
    if let Ok(p) = std::env::var("MONGOECO_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/mongoeco-venv/bin/python");
    assert!(
        venv.exists(),
        "no MongoDB server for the tests: run `scripts/setup` (creates .tools/mongoeco-venv with mongoeco), \
         set MONGOECO_PYTHON to a Python >= 3.13 with mongoeco[wire], or set MONGODB_URL"
    );
    venv
}

/// A mongoeco MongoDB wire-protocol server owned by one test, with a SCRAM
/// user; killed when dropped.
pub struct MongoServer {
    child: Option<Child>,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl MongoServer {
    pub fn start(user: &str, password: &str) -> MongoServer {
        Self::start_on(free_port(), user, password)
    }

    pub fn start_on(port: u16, user: &str, password: &str) -> MongoServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mongoeco_server.py");
        let mut child = Command::new(mongoeco_python())
            .arg(script)
            .args([
                "--port",
                &port.to_string(),
                "--user",
                user,
                "--password",
                password,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the mongoeco server");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(line.starts_with("READY"), "mongoeco did not start: {line}");
        MongoServer {
            child: Some(child),
            port,
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    /// The URL with the user's password percent-encoded.
    pub fn url(&self) -> String {
        format!(
            "mongodb://{}:{}@127.0.0.1:{}/?authSource=admin&authMechanism=SCRAM-SHA-256",
            encode(&self.user),
            encode(&self.password),
            self.port
        )
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A MongoDB URL for tests: the shared server when `MONGODB_URL` is set,
/// else a mongoeco server started for the calling test (kept alive by the
/// returned guard).
pub fn mongo() -> (String, Option<MongoServer>) {
    match mongo_url_from_env() {
        Some(url) => (url, None),
        None => {
            let server = MongoServer::start("tester", "tester-pw");
            (server.url(), Some(server))
        }
    }
}

/// Everything the tests log, captured process-wide.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per process) a subscriber capturing every event at DEBUG
/// and above, and returns the capture.
pub fn logs() -> Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let buffer = logs.0.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || LogWriter(buffer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("a global subscriber is installed once");
        logs
    })
    .clone()
}

/// Polls `check` until it is true or `limit` passes; returns whether it
/// became true. For waiting on asynchronous effects (sessions closing),
/// never for asserting speed.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A configuration for PostgreSQL only, with a small pool and timeouts
/// suited to tests.
pub fn pg_config(url: &str) -> dbmanager::Config {
    let mut config = dbmanager::Config::default();
    config.postgres.url = Some(dbmanager::DatabaseUrl::new(url));
    config.postgres.application_name = unique_name("dbm");
    config.postgres.pool.max_size = 4;
    config.postgres.pool.min_idle = 1;
    config.postgres.pool.wait_timeout = Duration::from_secs(5);
    config.postgres.pool.connect_timeout = Duration::from_secs(2);
    config.retry = dbmanager::RetryPolicy::exponential()
        .initial_delay(Duration::from_millis(100))
        .max_delay(Duration::from_millis(500))
        .max_attempts(5);
    config.shutdown.grace_period = Duration::from_secs(5);
    config
}

/// Sessions the server sees with this application name.
pub async fn sessions(admin: &str, application_name: &str) -> i64 {
    query_i64(
        admin,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application_name}'"
        ),
    )
    .await
}

/// A plain HTTP/1.1 GET: the status code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, None).await
}

/// A plain HTTP/1.1 request with an optional JSON body: the status code and
/// the body.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = json.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

// ---- migrations, bootstrap and test databases -------------------------

impl TestDb {
    /// Takes charge of an existing (or soon to exist) database on the
    /// shared server: dropped when the value is.
    pub fn adopt(name: &str) -> TestDb {
        let admin = admin_url();
        TestDb {
            url: with_database(&admin, name),
            name: name.to_string(),
            admin,
        }
    }
}

/// A folder of migration files, removed when dropped.
pub fn migrations_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("dbmanager-migrations-")
        .tempdir()
        .unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    dir
}

/// The example schema of `migrations/`.
pub fn example_migrations() -> dbmanager::migrate::Migrations {
    dbmanager::migrate::Migrations::from_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("the example migrations parse")
}

/// A manager on `url` (PostgreSQL only), connected.
pub async fn manager(url: &str) -> dbmanager::DatabaseManager {
    dbmanager::DatabaseManager::builder()
        .config(pg_config(url))
        .build()
        .await
        .expect("build a manager")
}

/// One text value from a query (NULL as the empty string).
pub async fn query_text(url: &str, query: &str) -> String {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(connection);
    let value: Option<String> = client.query_one(query, &[]).await.unwrap().get(0);
    drop(client);
    let _ = task.await;
    value.unwrap_or_default()
}

/// The user-visible schema of a database, one sorted line per table,
/// column, index and constraint: equal dumps mean equal schemas.
pub async fn catalog(url: &str) -> String {
    query_text(
        url,
        "SELECT string_agg(line, E'\\n' ORDER BY line) FROM (
            SELECT format('table %s.%s', table_schema, table_name) AS line
              FROM information_schema.tables
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
            UNION ALL
            SELECT format('column %s.%s.%s %s nullable=%s default=%s', table_schema, table_name,
                          column_name, data_type, is_nullable, coalesce(column_default, ''))
              FROM information_schema.columns
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
            UNION ALL
            SELECT format('index %s', indexdef)
              FROM pg_indexes
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
            UNION ALL
            SELECT format('constraint %s %s %s', c.conrelid::regclass, c.conname, pg_get_constraintdef(c.oid))
              FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
        ) lines",
    )
    .await
}

/// The versions in a history table, ascending.
pub async fn history(url: &str, table: &str) -> Vec<i64> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(connection);
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .unwrap()
        .get(0);
    let versions = if exists {
        client
            .query(
                &format!("SELECT version FROM {table} ORDER BY version"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    } else {
        Vec::new()
    };
    drop(client);
    let _ = task.await;
    versions
}

/// Whether a database of that name exists on the shared server.
pub async fn database_exists(name: &str) -> bool {
    query_i64(
        &admin_url(),
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
    )
    .await
        == 1
}

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

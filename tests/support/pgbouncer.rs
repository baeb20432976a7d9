//! A PgBouncer owned by one test: Debian's `pgbouncer` (installed by
//! `scripts/setup`) in transaction pooling mode, in front of a PostgreSQL
//! server, on a free port with its configuration in a temporary folder;
//! stopped when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use super::free_port;

fn pgbouncer_binary() -> PathBuf {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("pgbouncer"))
                    .find(|path| path.exists())
            })
        })
        .expect(
            "pgbouncer not found: run scripts/setup (or `apt-get install pgbouncer`) for the transaction-pooling tests",
        )
}

/// A running pgbouncer with `pool_mode = transaction`.
pub struct PgBouncer {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
    user: String,
    password: String,
}

impl PgBouncer {
    /// Starts pgbouncer in front of the server of `upstream` (a
    /// `postgres://user:password@host:port/db` URL; every database of that
    /// server is reachable through it), with `server_connections` server
    /// connections per database and user, so client connections share them.
    pub fn start(upstream: &str, server_connections: usize) -> PgBouncer {
        let binary = pgbouncer_binary();
        let config = tokio_postgres::Config::from_str(upstream).expect("an upstream URL");
        let user = config
            .get_user()
            .expect("a user in the upstream URL")
            .to_string();
        let password = String::from_utf8(config.get_password().expect("a password").to_vec())
            .expect("a UTF-8 password");
        let host = match &config.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(host) => host.clone(),
            other => panic!("pgbouncer needs a TCP upstream, not {other:?}"),
        };
        let upstream_port = config.get_ports().first().copied().unwrap_or(5432);
        let dir = tempfile::Builder::new()
            .prefix("dbmanager-pgbouncer-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let userlist = dir.path().join("userlist.txt");
        std::fs::write(&userlist, format!("\"{user}\" \"{password}\"\n")).unwrap();
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n\
                 * = host={host} port={upstream_port}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = scram-sha-256\n\
                 auth_file = {}\n\
                 pool_mode = transaction\n\
                 default_pool_size = {server_connections}\n\
                 max_client_conn = 1000\n\
                 ignore_startup_parameters = extra_float_digits,options\n",
                userlist.display()
            ),
        )
        .unwrap();
        let log = dir.path().join("pgbouncer.log");
        let mut command = Command::new(binary);
        if super::cluster::is_root() {
            // pgbouncer refuses to run as root: it takes the identity of
            // `postgres`, which must read its files.
            for path in [dir.path(), &userlist, &ini] {
                let status = Command::new("chown")
                    .arg("postgres")
                    .arg(path)
                    .status()
                    .unwrap();
                assert!(status.success());
            }
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting pgbouncer");
        let mut bouncer = PgBouncer {
            child,
            dir,
            port,
            user,
            password,
        };
        bouncer.wait_listening(Duration::from_secs(20));
        bouncer
    }

    /// Waits (bounded) until pgbouncer accepts connections; fails with its
    /// log if it exited or never listened.
    fn wait_listening(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            let exited = self.child.try_wait().unwrap();
            if exited.is_some() || Instant::now() >= deadline {
                panic!(
                    "pgbouncer did not start ({exited:?}): {}",
                    std::fs::read_to_string(self.dir.path().join("pgbouncer.log"))
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL of `database` through pgbouncer, with the upstream's user.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{database}",
            self.user, self.password, self.port
        )
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // A pgbouncer that died under the test explains the errors it saw:
        // show its log before the folder goes.
        if let Ok(Some(status)) = self.child.try_wait() {
            eprintln!(
                "pgbouncer had exited ({status}): {}",
                std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A PostgreSQL cluster owned by one test: initdb in a temporary folder,
//! SCRAM passwords, fsync off, on a free port; stopped when dropped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::free_port;

pub(super) fn pg_bindir() -> PathBuf {
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

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A temporary folder for a cluster, owned by `postgres` when running as
/// root (the server refuses to run as root).
pub(super) fn cluster_dir(prefix: &str, root: bool) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    if root {
        let status = Command::new("chown")
            .arg("postgres")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
    dir
}

/// Runs openssl for the TLS fixtures; fails the test with its message.
fn openssl(args: &[&std::ffi::OsStr]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is needed for the TLS tests: apt-get install openssl");
    assert!(
        output.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A key and a certificate for `subject` with `extensions`, signed by the
/// test CA in `dir` (`ca.crt`, `ca.key`), written to `out` as
/// `<name>.crt` and `<name>.key`.
fn issue(
    dir: &Path,
    out: &Path,
    name: &str,
    subject: &str,
    extensions: &str,
) -> (PathBuf, PathBuf) {
    let (ca, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let (cert, key) = (
        out.join(format!("{name}.crt")),
        out.join(format!("{name}.key")),
    );
    let (csr, ext) = (
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.ext")),
    );
    std::fs::write(&ext, extensions).unwrap();
    let os = |s: &str| std::ffi::OsString::from(s);
    openssl(&[
        &os("req"),
        &os("-newkey"),
        &os("rsa:2048"),
        &os("-nodes"),
        &os("-subj"),
        &os(subject),
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
        ext.as_os_str(),
        &os("-out"),
        cert.as_os_str(),
    ]);
    (cert, key)
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
        let root = is_root();
        let dir = cluster_dir("dbmanager-pg-", root);
        let bindir = pg_bindir();
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
        self.start_with_sockets_also_in(&[]);
    }

    /// Starts the server with its Unix socket in its own folder and in
    /// `extra` folders too (libpq's default socket directory, for a
    /// connection string without a host).
    pub fn start_with_sockets_also_in(&self, extra: &[&Path]) {
        let mut dirs = vec![self.dir.path().display().to_string()];
        dirs.extend(extra.iter().map(|d| d.display().to_string()));
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100",
            self.port,
            dirs.join(",")
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

    /// A streaming standby of this (running) cluster: `pg_basebackup -R`
    /// into a folder of its own, started on a port of its own, and made
    /// synchronous (`synchronous_standby_names = '*'` on this cluster): a
    /// session with `synchronous_commit = on` (the clusters' default is
    /// off) is told of its commit only once the standby has it.
    pub fn standby(&self) -> PgCluster {
        let streaming = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'";
        let before: usize = self.psql(streaming).parse().unwrap();
        let dir = cluster_dir("dbmanager-pg-standby-", self.root);
        let output = Self::command(self.root, &self.bindir.join("pg_basebackup"))
            .env("PGPASSWORD", &self.password)
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-D")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The standby's own connection to the primary carries the password.
        let conf = dir.path().join("data").join("postgresql.auto.conf");
        let mut auto = std::fs::read_to_string(&conf).unwrap();
        auto = auto.replace(
            "primary_conninfo = '",
            &format!(
                "primary_conninfo = 'password={} application_name=standby ",
                self.password
            ),
        );
        std::fs::write(&conf, auto).unwrap();
        let standby = PgCluster {
            dir,
            port: free_port(),
            password: self.password.clone(),
            bindir: self.bindir.clone(),
            root: self.root,
        };
        standby.start();
        self.wait_for_sql(streaming, &(before + 1).to_string());
        self.psql("ALTER SYSTEM SET synchronous_standby_names = '*'; SELECT pg_reload_conf();");
        standby
    }

    /// Promotes a standby to primary (`pg_ctl promote`, waiting for it).
    pub fn promote(&self) {
        let output = Self::command(self.root, &self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "-t", "60", "promote"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pg_ctl promote failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs SQL on this cluster's `postgres` database with psql, each
    /// `;`-separated statement on its own (`ALTER SYSTEM` refuses to run in
    /// a transaction block).
    pub fn psql(&self, sql: &str) -> String {
        let mut command = Command::new(self.bindir.join("psql"));
        command.env("PGPASSWORD", &self.password).args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-At",
        ]);
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            command.args(["-c", statement]);
        }
        let output = command
            .arg("-p")
            .arg(self.port.to_string())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Polls `sql` (bounded, 30 s) until it prints `expected`.
    pub fn wait_for_sql(&self, sql: &str, expected: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if self.psql(sql) == expected {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "`{sql}` did not give {expected} within 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
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
        let (cert, key) = issue(
            dir,
            &data,
            "server",
            "/CN=localhost",
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        );
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

impl PgCluster {
    /// The folder of the server's own Unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The running postmaster's process id (first line of postmaster.pid).
    pub fn postmaster_pid(&self) -> u32 {
        let pidfile = self.dir.path().join("data").join("postmaster.pid");
        std::fs::read_to_string(&pidfile)
            .unwrap_or_else(|e| panic!("{} cannot be read: {e}", pidfile.display()))
            .lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .expect("postmaster.pid starts with the process id")
    }

    /// Replaces pg_hba.conf (before `start`).
    pub fn set_hba(&self, lines: &str) {
        std::fs::write(self.dir.path().join("data").join("pg_hba.conf"), lines).unwrap();
    }

    /// After [`PgCluster::enable_tls`] (before `start`): the server checks
    /// client certificates against the test CA, and a certificate for
    /// `user` (its common name) signed by that CA is made. Returns the
    /// certificate's and the key's paths.
    pub fn client_certificate(&self, user: &str) -> (PathBuf, PathBuf) {
        let dir = self.dir.path();
        let data = dir.join("data");
        std::fs::copy(dir.join("ca.crt"), data.join("root.crt")).unwrap();
        if self.root {
            Command::new("chown")
                .arg("postgres")
                .arg(data.join("root.crt"))
                .status()
                .unwrap();
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        writeln!(conf, "ssl_ca_file = 'root.crt'").unwrap();
        // Extensions make it an X.509 v3 certificate, which rustls (like
        // any current TLS stack) requires of a client certificate.
        issue(
            dir,
            dir,
            user,
            &format!("/CN={user}"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        )
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

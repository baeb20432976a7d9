//! MongoDB for the tests: the shared server of `MONGODB_URL`, or a mongoeco
//! wire-protocol server owned by one test.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::free_port;

/// The shared MongoDB server's URL, if the environment names one.
pub fn mongo_url_from_env() -> Option<String> {
    std::env::var("MONGODB_URL").ok().filter(|u| !u.is_empty())
}

/// The Python that runs mongoeco: `MONGOECO_PYTHON`, or the virtual
/// environment `scripts/setup` creates.
fn mongoeco_python() -> PathBuf {
    if let Ok(p) = std::env::var("MONGOECO_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = super::workspace_root().join(".tools/mongoeco-venv/bin/python");
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
        let script = super::workspace_root().join("scripts/mongoeco_server.py");
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

/// Through the MongoDB transaction helper: one transaction that inserts
/// `{_id: 1}` into `orders` and commits, then one that aborts; returns the
/// abort's error.
pub async fn commit_one_then_abort_one(mongo: &dbmanager::mongo::MongoHandle) -> dbmanager::Error {
    use dbmanager::TxFutureExt;
    use dbmanager::mongodb::bson::{Document, doc};
    let coll = mongo.database().collection::<Document>("orders");
    mongo
        .transaction(|session| {
            let coll = &coll;
            async move {
                coll.insert_one(doc! { "_id": 1 })
                    .session(&mut *session)
                    .await?;
                Ok(())
            }
            .scoped()
        })
        .await
        .unwrap();
    mongo
        .transaction::<(), _>(|_session| async move { Err(dbmanager::Error::abort("no")) }.scoped())
        .await
        .unwrap_err()
}

//! The command line run as a process against real servers.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::process::{Command, Output};

use support::{TestDb, admin_url};

fn dbmanager(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dbmanager"));
    command.args(args).current_dir(std::env::temp_dir());
    // Only what the test gives: no developer settings leak in.
    for var in [
        "DATABASE_URL",
        "TEST_DATABASE_URL",
        "MONGODB_URL",
        "MONGODB_URI",
        "DBMANAGER_CONFIG",
    ] {
        command.env_remove(var);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("running dbmanager")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the command succeeded (showing its stderr when it did not) and
/// returns what it printed on stdout.
fn assert_success(output: &Output) -> String {
    assert!(output.status.success(), "{}", stderr(output));
    stdout(output)
}

/// A failure is one clear line on stderr and a non-zero exit code.
fn assert_one_line_failure(output: &Output) -> String {
    assert!(!output.status.success(), "expected a failure: {output:?}");
    let err = stderr(output);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {err}");
    lines[0].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_and_health_against_a_real_server() {
    let db = TestDb::create("cli").await;
    let env = [("DATABASE_URL", db.url.as_str())];

    let wait = assert_success(&dbmanager(&env, &["wait", "--timeout", "20s"]));
    assert!(wait.contains("postgres: ready"), "{wait}");

    let health = dbmanager(&env, &["health"]);
    assert_eq!(health.status.code(), Some(0), "{}", stderr(&health));
    let report: serde_json::Value = serde_json::from_str(&stdout(&health)).unwrap();
    assert_eq!(report["status"], "up");

    // Down: exit code 2, the report still printed.
    let port = support::free_port();
    let unreachable = format!("postgres://nobody:pw@127.0.0.1:{port}/x");
    let down = dbmanager(
        &[
            ("DATABASE_URL", &unreachable),
            ("DBMANAGER_HEALTH__PROBE_TIMEOUT", "1s"),
        ],
        &["health"],
    );
    assert_eq!(down.status.code(), Some(2), "{}", stderr(&down));
    let report: serde_json::Value = serde_json::from_str(&stdout(&down)).unwrap();
    assert_eq!(report["status"], "down");

    // Degraded: exit code 1.
    let degraded = dbmanager(
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("MONGODB_URL", &format!("mongodb://127.0.0.1:{port}/")),
            ("DBMANAGER_MONGODB__REQUIRED", "false"),
            ("DBMANAGER_MONGODB__SERVER_SELECTION_TIMEOUT", "500ms"),
            ("DBMANAGER_HEALTH__PROBE_TIMEOUT", "1s"),
        ],
        &["health"],
    );
    assert_eq!(degraded.status.code(), Some(1), "{}", stderr(&degraded));

    // wait gives up within its timeout with one line.
    let gave_up = dbmanager(
        &[("DATABASE_URL", &unreachable)],
        &["wait", "--timeout", "1s"],
    );
    let line = assert_one_line_failure(&gave_up);
    assert!(line.contains("refused"), "{line}");
}

#[test]
fn config_show_names_sources_and_hides_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("service.toml");
    std::fs::write(&file, "[postgres.pool]\nmax_size = 9\n").unwrap();
    let output = dbmanager(
        &[
            ("DATABASE_URL", "postgres://app:cli-secret-pw@db:5432/app"),
            ("DB_POOL_TIMEOUT", "7"),
        ],
        &["--config", file.to_str().unwrap(), "config", "show"],
    );
    let text = assert_success(&output);
    assert!(!text.contains("cli-secret-pw"), "{text}");
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            .to_string()
    };
    assert!(line("postgres.url").contains("environment DATABASE_URL"));
    assert!(line("postgres.url").contains("[redacted]"));
    assert!(
        line("postgres.pool.max_size").contains("9")
            && line("postgres.pool.max_size").contains("service.toml")
    );
    assert!(line("postgres.pool.wait_timeout").contains("DB_POOL_TIMEOUT"));
    assert!(line("retry.max_attempts").contains("default"));

    let json = assert_success(&dbmanager(
        &[("DATABASE_URL", "postgres://app:cli-secret-pw@db/app")],
        &["config", "show", "--json"],
    ));
    let settings: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        settings
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["key"] == "postgres.url")
    );
    assert!(!json.contains("cli-secret-pw"));
}

#[test]
fn bad_flags_and_bad_configuration_fail_with_one_line() {
    let output = dbmanager(&[], &["--bogus"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("unexpected argument '--bogus'"),
        "{}",
        stderr(&output)
    );

    let bad_value = dbmanager(
        &[
            ("DBMANAGER_POSTGRES__POOL__MAX_SIZE", "0"),
            ("DATABASE_URL", "postgres://a@b/c"),
        ],
        &["health"],
    );
    let line = assert_one_line_failure(&bad_value);
    assert!(line.contains("postgres.pool.max_size"), "{line}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    std::fs::write(&file, "[postgres\n").unwrap();
    let broken = dbmanager(&[], &["--config", file.to_str().unwrap(), "config", "show"]);
    let line = assert_one_line_failure(&broken);
    assert!(line.contains("broken.toml"), "{line}");

    let missing = dbmanager(&[], &["--config", "/nonexistent/dbmanager.toml", "health"]);
    let line = assert_one_line_failure(&missing);
    assert!(line.contains("does not exist"), "{line}");

    let nothing = dbmanager(&[], &["health"]);
    let line = assert_one_line_failure(&nothing);
    assert!(line.contains("not configured"), "{line}");
    let _ = admin_url;
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["wait", "--help"],
        vec!["health", "--help"],
        vec!["config", "show", "--help"],
        vec!["db", "--help"],
        vec!["db", "create", "--help"],
        vec!["db", "drop", "--help"],
        vec!["db", "reset", "--help"],
        vec!["migrate", "--help"],
        vec!["migrate", "up", "--help"],
        vec!["migrate", "down", "--help"],
        vec!["migrate", "status", "--help"],
        vec!["migrate", "new", "--help"],
        vec!["migrate", "repair", "--help"],
        vec!["migrate", "adopt", "--help"],
        vec!["bench", "--help"],
    ] {
        let output = dbmanager(&[], &args);
        assert!(output.status.success(), "{args:?}");
        assert!(stdout(&output).contains("Usage:"), "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_create_twice_then_migrate_up_status_down_then_drop() {
    let guard = TestDb::adopt(&support::unique_name("cli_db"));
    let migrations = support::workspace_root().join("migrations");
    let migrations = migrations.to_str().expect("a UTF-8 path");
    let env = [
        ("DATABASE_URL", guard.url.as_str()),
        ("DBMANAGER_MIGRATIONS__DIRECTORY", migrations),
    ];

    let first = assert_success(&dbmanager(&env, &["db", "create"]));
    assert!(first.contains(&format!("created database {}", guard.name)));
    let second = assert_success(&dbmanager(&env, &["db", "create"]));
    assert!(second.contains("already exists"), "{second}");

    let up = assert_success(&dbmanager(&env, &["migrate", "up"]));
    assert_eq!(
        up.lines().filter(|l| l.starts_with("up ")).count(),
        3,
        "{up}"
    );
    let again = dbmanager(&env, &["migrate", "up"]);
    assert_eq!(stdout(&again).trim(), "nothing to do");

    let status = assert_success(&dbmanager(&env, &["migrate", "status", "--json"]));
    let report: serde_json::Value = serde_json::from_str(&status).unwrap();
    let states: Vec<&str> = report["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["applied", "applied", "applied"]);

    let down = assert_success(&dbmanager(&env, &["migrate", "down", "--steps", "2"]));
    assert!(down.contains("down 3_create_system_configs"));
    assert!(down.contains("down 2_create_user_sessions"));
    let text = stdout(&dbmanager(&env, &["migrate", "status"]));
    assert_eq!(
        text.lines().filter(|l| l.contains("pending")).count(),
        2,
        "{text}"
    );
    assert_eq!(
        support::query_i64(
            &guard.url,
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'user_sessions'"
        )
        .await,
        0
    );

    // Reset: drop, create and migrate again, here on data written meanwhile.
    support::sql(
        &guard.url,
        "INSERT INTO users (email, name) VALUES ('x@example.com', 'x')",
    )
    .await;
    let refused = dbmanager(&env, &["db", "reset"]);
    assert!(assert_one_line_failure(&refused).contains("--force"));
    let reset = assert_success(&dbmanager(&env, &["db", "reset", "--force"]));
    assert!(reset.contains("dropped database"), "{reset}");
    assert_eq!(
        reset.lines().filter(|l| l.starts_with("applied ")).count(),
        3,
        "{reset}"
    );
    assert_eq!(
        support::query_i64(&guard.url, "SELECT count(*) FROM users").await,
        0
    );

    // Dropping a database whose name does not look like a test one needs --force.
    let refused = dbmanager(&env, &["db", "drop"]);
    let line = assert_one_line_failure(&refused);
    assert!(line.contains("--force"), "{line}");
    // The check is on the database that would be dropped, not on whatever
    // ends the URL.
    let decoy = format!("{}?application_name=/srv/test_decoy", guard.url);
    let refused = dbmanager(&[("DATABASE_URL", decoy.as_str())], &["db", "drop"]);
    let line = assert_one_line_failure(&refused);
    assert!(line.contains(&format!("`{}`", guard.name)), "{line}");
    assert!(support::database_exists(&guard.name).await);
    assert_success(&dbmanager(&env, &["db", "drop", "--force"]));
    assert!(!support::database_exists(&guard.name).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_adopt_records_golang_migrate_history_then_up_applies_the_rest() {
    let db = TestDb::create("cli_adopt").await;
    let dir = support::migrations_dir(&[
        (
            "1_create_users.up.sql",
            "BEGIN;\nCREATE TABLE users (id bigint PRIMARY KEY);\nCOMMIT;\n",
        ),
        (
            "2_create_posts.up.sql",
            "BEGIN;\nCREATE TABLE posts (id bigint PRIMARY KEY);\nCOMMIT;\n",
        ),
    ]);
    support::sql(
        &db.url,
        "CREATE TABLE users (id bigint PRIMARY KEY);
         CREATE TABLE IF NOT EXISTS \"schema_migrations\" (version bigint not null primary key, dirty boolean not null);
         INSERT INTO \"schema_migrations\" (version, dirty) VALUES (1, false);",
    )
    .await;
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        (
            "DBMANAGER_MIGRATIONS__DIRECTORY",
            dir.path().to_str().unwrap(),
        ),
    ];

    let adopt = dbmanager(&env, &["migrate", "adopt", "--from", "golang-migrate"]);
    assert!(adopt.status.success(), "{}", stderr(&adopt));
    assert_eq!(
        stdout(&adopt).trim(),
        "recorded 1 (applied by golang-migrate)"
    );
    let again = dbmanager(&env, &["migrate", "adopt", "--from", "golang-migrate"]);
    assert_eq!(stdout(&again).trim(), "already recorded: 1");
    let up = dbmanager(&env, &["migrate", "up"]);
    assert!(up.status.success(), "{}", stderr(&up));
    assert!(
        stdout(&up).starts_with("up 2_create_posts"),
        "{}",
        stdout(&up)
    );

    support::sql(&db.url, "UPDATE schema_migrations SET dirty = true").await;
    let dirty = dbmanager(&env, &["migrate", "adopt", "--from", "golang-migrate"]);
    let line = assert_one_line_failure(&dirty);
    assert!(line.contains("is dirty at version 1"), "{line}");
    let unknown = dbmanager(&env, &["migrate", "adopt", "--from", "flyway"]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("golang-migrate, sqlx or refinery"),
        "{}",
        stderr(&unknown)
    );
}

/// golang-migrate run with `x-migrations-table=om_migrations` and
/// `search_path=schema_om`: `--table` and `--schema` find its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_adopt_reads_a_history_under_another_table_and_schema() {
    let db = TestDb::create("cli_adopt_renamed").await;
    let dir = support::migrations_dir(&[(
        "1_create_users.up.sql",
        "CREATE TABLE users (id bigint PRIMARY KEY);\n",
    )]);
    support::sql(
        &db.url,
        "CREATE SCHEMA schema_om;
         CREATE TABLE users (id bigint PRIMARY KEY);
         CREATE TABLE schema_om.om_migrations (version bigint not null primary key, dirty boolean not null);
         INSERT INTO schema_om.om_migrations (version, dirty) VALUES (1, false);",
    )
    .await;
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        (
            "DBMANAGER_MIGRATIONS__DIRECTORY",
            dir.path().to_str().unwrap(),
        ),
    ];
    let default = dbmanager(&env, &["migrate", "adopt", "--from", "golang-migrate"]);
    let line = assert_one_line_failure(&default);
    assert!(
        line.contains("`schema_migrations` not found on the search_path"),
        "{line}"
    );
    let adopt = dbmanager(
        &env,
        &[
            "migrate",
            "adopt",
            "--from",
            "golang-migrate",
            "--table",
            "om_migrations",
            "--schema",
            "schema_om",
        ],
    );
    assert!(adopt.status.success(), "{}", stderr(&adopt));
    assert_eq!(
        stdout(&adopt).trim(),
        "recorded 1 (applied by golang-migrate)"
    );
}

#[test]
fn migrate_new_continues_the_numbering() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("migrations");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("7_first.up.sql"), "SELECT 1;").unwrap();
    let env = [("DBMANAGER_MIGRATIONS__DIRECTORY", folder.to_str().unwrap())];
    assert_success(&dbmanager(&env, &["migrate", "new", "add_orders"]));
    assert!(folder.join("8_add_orders.up.sql").exists());
    assert!(folder.join("8_add_orders.down.sql").exists());
    let bad = dbmanager(&env, &["migrate", "new", "Add Orders"]);
    assert_one_line_failure(&bad);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_a_short_load_and_reports_json() {
    let db = TestDb::create("cli_bench").await;
    let env = [("DATABASE_URL", db.url.as_str())];
    let args = [
        "bench",
        "--workload",
        "select1",
        "--tasks",
        "4",
        "--pool-size",
        "2",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--json",
    ];
    let printed = assert_success(&dbmanager(&env, &args));
    let report: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(report["workload"], "select1");
    assert_eq!(report["tasks"], 4);
    assert_eq!(report["pool_size"], 2);
    assert!(report["operations"].as_u64().unwrap() > 0);
    assert_eq!(report["errors"], 0);
    let bad = dbmanager(&env, &["bench", "--workload", "nonsense"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("nonsense"), "{}", stderr(&bad));
}

/// The command line's admin connections are bounded when the server
/// accepts TCP and then says nothing: `db create` fails within the
/// bootstrap budget instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_create_is_bounded_when_the_handshake_stalls() {
    let db = TestDb::create("cli_stall").await;
    let (proxy, via_proxy) = support::FaultProxy::in_front_of(&db.url).await;
    proxy.stall_new(std::time::Duration::from_secs(600));
    let env = [
        ("DATABASE_URL", via_proxy.as_str()),
        ("DBMANAGER_POSTGRES__POOL__CONNECT_TIMEOUT", "250ms"),
        ("DBMANAGER_BOOTSTRAP__WAIT_TIMEOUT", "1s"),
    ];
    let started = std::time::Instant::now();
    // The proxy runs on this runtime's other worker while the command runs.
    let output = tokio::task::block_in_place(|| dbmanager(&env, &["db", "create"]));
    let took = started.elapsed();
    assert!(!output.status.success(), "{}", stdout(&output));
    assert!(
        stderr(&output).contains("took longer than"),
        "{}",
        stderr(&output)
    );
    assert!(
        took < std::time::Duration::from_millis(1_500) + std::time::Duration::from_secs(3),
        "db create took {took:?}"
    );
    assert!(proxy.accepted() > 0);
}

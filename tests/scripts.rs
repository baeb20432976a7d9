//! The project's scripts clean up after themselves, also when they fail.
//!
//! `scripts/test` starts a PostgreSQL cluster and a mongoeco server and
//! stops them from its `EXIT` trap (`stop_run` in scripts/lib/common.sh).
//! These tests run a small script that does exactly that and then fails,
//! as a failing test run does, and check that no server of that run
//! survives. They never run the test suite itself.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Whether a process is still running (a zombie waiting for its parent to
/// reap it counts as gone: it serves nothing and holds no port).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) state ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

/// Runs `body` after sourcing scripts/lib/common.sh with the same `EXIT`
/// trap scripts/test installs; returns the exit status and stdout.
fn run_with_trap(run_dir: &Path, body: &str) -> (Option<i32>, String, String) {
    let common = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/common.sh");
    let script = format!(
        r#"source "{common}"
RUN_DIR="{run}"
trap 'stop_run "$RUN_DIR"' EXIT
{body}
"#,
        common = common.display(),
        run = run_dir.display(),
    );
    let output = Command::new("bash")
        .arg("-c")
        .arg(script)
        .env_remove("SERVICES_RUN_DIR")
        .output()
        .expect("bash runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn pid_of(stdout: &str, name: &str) -> u32 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("the script printed the {name} pid: {stdout}"))
}

#[test]
fn a_failing_run_stops_its_postgres_and_mongoeco_servers() {
    let parent = tempfile::Builder::new()
        .prefix("dbmanager-scripts-")
        .tempdir()
        .unwrap();
    let run_dir = parent.path().join("run");
    // As in scripts/test: start both servers, then a step fails under
    // `set -e` (common.sh sets it), which fires the EXIT trap.
    let (code, stdout, stderr) = run_with_trap(
        &run_dir,
        r#"PG_ADMIN_URL="$(start_postgres "$RUN_DIR/pg" "scripts-test-pw")"
MONGODB_URL="$(start_mongoeco "$RUN_DIR" "tester" "scripts-test-pw")"
echo "postgres $(head -n 1 "$RUN_DIR/pg/data/postmaster.pid")"
echo "mongoeco $(cat "$RUN_DIR/mongo.pid")"
false  # a failing test run
echo "not reached""#,
    );
    assert_eq!(
        code,
        Some(1),
        "the script keeps the failing status; stderr: {stderr}"
    );
    assert!(!stdout.contains("not reached"));
    let postgres = pid_of(&stdout, "postgres");
    let mongoeco = pid_of(&stdout, "mongoeco");
    // pg_ctl stop -m immediate and the mongoeco kill return once the
    // processes are told; give them a moment to go.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while (running(postgres) || running(mongoeco)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !running(postgres),
        "the postmaster {postgres} of the failed run still runs; stderr: {stderr}"
    );
    assert!(
        !running(mongoeco),
        "the mongoeco server {mongoeco} of the failed run still runs; stderr: {stderr}"
    );
    assert!(!run_dir.exists(), "the run directory is removed");
}

#[test]
fn helpers_that_print_a_path_succeed_inside_a_trap_of_a_failing_script() {
    // A bare `return` in a trap handler returns the status of the command
    // that fired the trap; every helper returns 0 explicitly.
    let parent = tempfile::tempdir().unwrap();
    let marker = parent.path().join("marker");
    let (code, _, stderr) = run_with_trap(
        &parent.path().join("run"),
        &format!(
            r#"trap 'stop_run "$RUN_DIR"; bindir="$(pg_bindir)"; echo "$bindir" > "{}"' EXIT
false"#,
            marker.display()
        ),
    );
    assert_eq!(code, Some(1), "{stderr}");
    let bindir = std::fs::read_to_string(&marker).unwrap_or_else(|e| {
        panic!("the trap ran to its end ({e}); stderr: {stderr}");
    });
    assert!(
        Path::new(bindir.trim()).join("pg_ctl").exists(),
        "pg_bindir printed {bindir:?}"
    );
}

//! `dbmanager migrate up|down|status|new|repair|adopt`.

use std::path::Path;
use std::process::ExitCode;

use dbmanager::migrate::{MigrateReport, MigrationState, Migrations};
use dbmanager::{Config, DatabaseManager, Error};

use crate::args::MigrateCommand;

pub async fn run(config: Config, command: MigrateCommand) -> dbmanager::Result<ExitCode> {
    if let MigrateCommand::New { name } = &command {
        return new(&config.migrations.directory, name);
    }
    let migrations = Migrations::from_dir(&config.migrations.directory)?;
    let db = DatabaseManager::builder().config(config).build_lazy()?;
    let migrator = db.migrator(&migrations)?;
    let result = match command {
        MigrateCommand::Up { to: None } => migrator.up().await.map(|r| print_runs(&r)),
        MigrateCommand::Up { to: Some(version) } => {
            migrator.up_to(version).await.map(|r| print_runs(&r))
        }
        MigrateCommand::Down {
            to: Some(version), ..
        } => migrator.down_to(version).await.map(|r| print_runs(&r)),
        MigrateCommand::Down { steps, to: None } => {
            migrator.down(steps).await.map(|r| print_runs(&r))
        }
        MigrateCommand::Status { json } => migrator.status().await.map(|status| {
            if json {
                match serde_json::to_string_pretty(&status) {
                    Ok(text) => crate::emit(&text),
                    Err(e) => eprintln!("dbmanager: error: cannot print the status: {e}"),
                }
                return;
            }
            if status.migrations.is_empty() {
                crate::emit("no migrations");
            }
            for m in &status.migrations {
                let state = match m.state {
                    MigrationState::Applied => "applied",
                    MigrationState::Pending => "pending",
                    MigrationState::Changed => "CHANGED since applied",
                    MigrationState::Missing => "MISSING file",
                    _ => "unknown",
                };
                let at = m
                    .applied_at
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                    .unwrap_or_default();
                crate::emit(&format!(
                    "{:>14}  {:<32} {:<22} {at}",
                    m.version, m.name, state
                ));
            }
        }),
        MigrateCommand::Repair => migrator.repair().await.map(|r| {
            if r.is_empty() {
                crate::emit("history matches the files: nothing to repair");
            }
            for version in &r.updated {
                crate::emit(&format!("re-recorded the checksum of {version}"));
            }
            for version in &r.removed {
                crate::emit(&format!("forgot {version} (its file is gone)"));
            }
        }),
        MigrateCommand::Adopt {
            from,
            table,
            schema,
        } => migrator
            .adopt_table(
                from,
                schema.as_deref(),
                table.as_deref().unwrap_or(from.table()),
            )
            .await
            .map(|r| {
                if r.applied.is_empty() {
                    crate::emit(&format!(
                        "{} ({}) records no applied migration",
                        r.from, r.table
                    ));
                }
                for version in &r.recorded {
                    crate::emit(&format!("recorded {version} (applied by {})", r.from));
                }
                if !r.already_recorded.is_empty() {
                    crate::emit(&format!(
                        "already recorded: {}",
                        r.already_recorded
                            .iter()
                            .map(i64::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }),
        MigrateCommand::New { .. } => unreachable!("handled above"),
    };
    // The migration's own error matters more than a shutdown one.
    let closed = db.shutdown().await;
    result?;
    closed?;
    Ok(ExitCode::SUCCESS)
}

fn print_runs(report: &MigrateReport) {
    if report.is_empty() {
        crate::emit("nothing to do");
    }
    for run in &report.migrations {
        crate::emit(&format!(
            "{} {}_{} ({:.1?})",
            report.direction.as_str(),
            run.version,
            run.name,
            run.took
        ));
    }
}

/// Writes an empty migration pair. Versions continue the folder's style:
/// the next integer after small integers, a UTC timestamp otherwise.
fn new(directory: &Path, name: &str) -> dbmanager::Result<ExitCode> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(Error::Config {
            key: "name".into(),
            problem: format!("`{name}` must be lowercase letters, digits and underscores"),
        });
    }
    let existing = if directory.exists() {
        Migrations::from_dir(directory)?.latest()
    } else {
        None
    };
    let version = match existing {
        Some(latest) if latest < 1_000_000 => latest + 1,
        _ => timestamp_version(),
    };
    std::fs::create_dir_all(directory).map_err(|e| file_error(directory, e))?;
    for (suffix, comment) in [("up", "apply"), ("down", "revert")] {
        let path = directory.join(format!("{version}_{name}.{suffix}.sql"));
        let body = format!("-- {name}: {comment}\n");
        std::fs::write(&path, body).map_err(|e| file_error(&path, e))?;
        crate::emit(&format!("created {}", path.display()));
    }
    Ok(ExitCode::SUCCESS)
}

/// `YYYYMMDDHHMMSS` in UTC.
fn timestamp_version() -> i64 {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    now.chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}

fn file_error(path: &Path, error: std::io::Error) -> Error {
    Error::ConfigFile {
        path: path.to_path_buf(),
        problem: format!("cannot be written: {error}"),
    }
}

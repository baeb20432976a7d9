//! `dbmanager db create|drop|reset`.

use std::process::ExitCode;

use dbmanager::admin::{drop_configured_database, looks_like_test_database};
use dbmanager::migrate::{Bootstrap, Migrations};
use dbmanager::{Config, Error};

use crate::args::{DbCommand, DbTarget};

pub async fn run(config: Config, command: DbCommand) -> dbmanager::Result<ExitCode> {
    match command {
        DbCommand::Create(target) => {
            let config = target_config(&config, &target)?;
            create(&config, None).await?;
        }
        DbCommand::Drop { target, force } => {
            let config = target_config(&config, &target)?;
            drop(&config, force).await?;
        }
        DbCommand::Reset { target, force } => {
            let config = target_config(&config, &target)?;
            let migrations = Migrations::from_dir(&config.migrations.directory)?;
            drop(&config, force).await?;
            create(&config, Some(&migrations)).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The configuration of the database the command works on; never creates
/// the test database as a side effect of the main one.
fn target_config(config: &Config, target: &DbTarget) -> dbmanager::Result<Config> {
    let mut config = if target.test {
        config.for_tests()?
    } else {
        config.clone()
    };
    config.bootstrap.create_test_database = false;
    config.bootstrap.create_database = true;
    Ok(config)
}

/// The database `drop` and `reset` act on, by the rule the library uses:
/// the connection string's dbname, else the user name, else `postgres`.
fn database_name(config: &Config) -> String {
    let Some(url) = config.postgres.url.as_ref() else {
        return String::new();
    };
    match url.expose().parse::<dbmanager::tokio_postgres::Config>() {
        Ok(parsed) => parsed
            .get_dbname()
            .or(parsed.get_user())
            .unwrap_or("postgres")
            .to_string(),
        // Validation has parsed it already; an unparseable URL names no
        // database, which is not a test database.
        Err(_) => String::new(),
    }
}

async fn create(config: &Config, migrations: Option<&Migrations>) -> dbmanager::Result<()> {
    let mut bootstrap = Bootstrap::new(config);
    if let Some(migrations) = migrations {
        bootstrap = bootstrap.migrations(migrations);
    }
    let report = bootstrap.run().await?;
    for database in &report.databases {
        if database.created {
            crate::emit(&format!("created database {}", database.database));
        } else {
            crate::emit(&format!("database {} already exists", database.database));
        }
        for extension in &database.extensions_created {
            crate::emit(&format!(
                "created extension {extension} in {}",
                database.database
            ));
        }
        if let Some(applied) = &database.migrations {
            for run in &applied.migrations {
                crate::emit(&format!(
                    "applied {}_{} ({:.1?})",
                    run.version, run.name, run.took
                ));
            }
        }
    }
    Ok(())
}

async fn drop(config: &Config, force: bool) -> dbmanager::Result<()> {
    let name = database_name(config);
    if !force && !looks_like_test_database(&name) {
        return Err(Error::Config {
            key: "postgres.url".into(),
            problem: format!(
                "names database `{name}`, which does not look like a test database (test_*, *_test); \
                 pass --force to drop it anyway"
            ),
        });
    }
    if drop_configured_database(config).await? {
        crate::emit(&format!("dropped database {name}"));
    } else {
        crate::emit(&format!("database {name} does not exist"));
    }
    Ok(())
}

//! `dbmanager db create|drop|reset`.

use std::process::ExitCode;

use dbmanager::migrate::{
    Bootstrap, Migrations, drop_configured_database, looks_like_test_database,
};
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

fn database_name(config: &Config) -> String {
    config
        .postgres
        .url
        .as_ref()
        .map(|u| u.redacted())
        .and_then(|u| {
            u.rsplit('/')
                .next()
                .map(|db| db.split('?').next().unwrap_or(db).to_string())
        })
        .unwrap_or_default()
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

//! The template database each test database is cloned from: named by a
//! hash of what shapes its schema, built once per server under an advisory
//! lock, and counted only once it is marked `IS_TEMPLATE`.

use sha2::{Digest, Sha256};

use crate::admin::{
    DirectConnection, Server, create_database, database_exists, drop_database, ensure_extension,
    quote_ident,
};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::migrate::Migrations;
use crate::migrate::{lock_key, wait_for_lock};

const TEMPLATE_PREFIX: &str = "dbm_tpl_";

/// `dbm_tpl_` and 16 hex digits of a hash of everything that shapes the
/// template's schema.
pub(super) fn template_name(config: &Config, migrations: &Migrations) -> String {
    let mut hasher = Sha256::new();
    hasher.update(migrations.fingerprint().as_bytes());
    hasher.update(format!("\ntable={}\n", config.migrations.table).as_bytes());
    for extension in &config.bootstrap.extensions {
        hasher.update(format!("extension={extension}\n").as_bytes());
    }
    let digest = hasher.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{TEMPLATE_PREFIX}{hex}")
}

/// Makes sure the template exists and is complete; builds it under an
/// advisory lock on the maintenance database when not.
pub(super) async fn ensure_template(
    config: &Config,
    server: &Server,
    admin: &DirectConnection,
    template: &str,
    migrations: &Migrations,
) -> Result<()> {
    if template_ready(admin, template).await? {
        return Ok(());
    }
    let key = lock_key("testing:template");
    wait_for_lock(admin, key, None, "test template").await?;
    let built = build_template(config, server, admin, template, migrations).await;
    let unlocked = admin
        .query_one("SELECT pg_advisory_unlock($1)", &[&key])
        .await;
    built?;
    unlocked.map_err(|e| Error::postgres("releasing the test template lock", e))?;
    Ok(())
}

async fn template_ready(admin: &DirectConnection, template: &str) -> Result<bool> {
    let row = admin
        .query_opt(
            "SELECT datistemplate FROM pg_database WHERE datname = $1",
            &[&template],
        )
        .await
        .map_err(|e| Error::postgres("looking up the test template", e))?;
    Ok(row.is_some_and(|r| r.get(0)))
}

async fn build_template(
    config: &Config,
    server: &Server,
    admin: &DirectConnection,
    template: &str,
    migrations: &Migrations,
) -> Result<()> {
    if template_ready(admin, template).await? {
        return Ok(()); // another process built it while we waited
    }
    let secrets = server.secrets();
    if database_exists(admin, template).await? {
        // Half-built by a process that died: start over.
        drop_database(admin, template, secrets).await?;
    }
    let started = std::time::Instant::now();
    create_database(admin, template, None, secrets).await?;
    let outcome = async {
        let connection = server.connect(template).await?;
        for extension in &config.bootstrap.extensions {
            ensure_extension(&connection, extension, template, secrets).await?;
        }
        drop(connection);
        crate::migrate::migrate_with_temporary_pool(config, server, template, migrations).await?;
        let sql = format!(
            "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false; ALTER DATABASE {name} WITH IS_TEMPLATE true",
            name = quote_ident(template)
        );
        admin
            .batch_execute(&sql)
            .await
            .map_err(|e| Error::postgres("marking the test template", e))
    }
    .await;
    if let Err(e) = outcome {
        let _ = drop_database(admin, template, secrets).await;
        return Err(e);
    }
    tracing::info!(
        target: "dbmanager::testing",
        template,
        migrations = migrations.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "built the test template database"
    );
    Ok(())
}

//! Isolated databases for tests: each [`TestDatabase`] is a fresh
//! PostgreSQL database with the migrations applied, plus a fresh MongoDB
//! database when MongoDB is configured, both dropped at the end.
//!
//! ```no_run
//! # async fn demo() -> dbmanager::Result<()> {
//! use dbmanager::testing::TestDatabase;
//!
//! let migrations = dbmanager::embed_migrations!("$CARGO_MANIFEST_DIR/migrations")?;
//! let test_db = TestDatabase::new(&migrations).await?;   // TEST_DATABASE_URL / DATABASE_URL
//! let client = test_db.manager().postgres()?.get().await?;
//! client.execute("INSERT INTO users (email, name) VALUES ('a@b.c', 'A')", &[]).await?;
//! // Dropped (with the MongoDB database) when `test_db` goes out of scope,
//! // also if the test panics.
//! # Ok(()) }
//! ```
//!
//! # How
//!
//! - The migrations are applied once per server to a **template database**
//!   (`dbm_tpl_<hash>`), whose name carries a hash of the migrations,
//!   extensions and history table: a changed migration makes a new
//!   template. Several test processes starting at once (nextest runs each
//!   test in a process of its own) build it once: the builder holds an
//!   advisory lock on the maintenance database, and a template only counts
//!   once it is marked `IS_TEMPLATE`, so a half-built one left by a crash is
//!   rebuilt.
//! - Each test database is `CREATE DATABASE … TEMPLATE dbm_tpl_<hash>`,
//!   named `dbm_test_<host>_<pid>_<unix time>_<n>`.
//! - Dropping a `TestDatabase` runs `DROP DATABASE … WITH (FORCE)` (and drops
//!   the MongoDB database) on a thread with its own runtime, so it works in
//!   any test runtime and during a panic; [`TestDatabase::close`] does the
//!   same asynchronously.
//! - Leftovers of killed runs are swept: a database whose process is gone
//!   (same host) or that is older than six hours is dropped, at most every
//!   ten minutes per host, on the first `TestDatabase` of a process, or on
//!   demand with [`TestDatabase::sweep`].
//!
//! # Cost
//!
//! Measured with `cargo test --all-features --test testing create_and_drop
//! -- --nocapture` (20 rounds, medians) on a 2-core machine with a local
//! PostgreSQL 15 (`fsync=off`) and the three-table example schema: creating
//! a test database takes 21–56 ms (mostly the server copying the template)
//! and dropping it 10–19 ms, so 31–69 ms per test; with MongoDB (mongoeco)
//! 38–99 ms. The first test on a server also builds the template (95–185
//! ms). See `docs/migrations.md`.
//!
//! Old templates are not removed automatically (another crate sharing the
//! server may still use them); list them with
//! `SELECT datname FROM pg_database WHERE datname LIKE 'dbm\_tpl\_%'` and
//! drop them with `ALTER DATABASE … IS_TEMPLATE false; DROP DATABASE …`.

mod sweep;
mod template;

pub use sweep::SweepReport;

use crate::admin::{Server, admin_error, drop_database, quote_ident};
use crate::config::Config;
use crate::error::{Backend, Error, Result};
use crate::manager::DatabaseManager;
use crate::migrate::Migrations;
use sweep::{new_database_name, sweep_once, sweep_test_server};
use template::{ensure_template, template_name};

/// A fresh PostgreSQL database (and MongoDB database, when configured)
/// with the migrations applied, for one test; dropped when this value is
/// dropped.
pub struct TestDatabase {
    manager: DatabaseManager,
    database: String,
    template: String,
    mongo_database: Option<String>,
    cleanup: Option<Cleanup>,
}

/// Everything needed to drop the databases, without the test's runtime.
struct Cleanup {
    server: Server,
    maintenance: String,
    database: String,
    #[cfg(feature = "mongodb")]
    mongo: Option<crate::config::MongoConfig>,
}

impl TestDatabase {
    /// A test database on the test server of the loaded configuration
    /// ([`Config::load`], then [`Config::for_tests`]: `TEST_DATABASE_URL`,
    /// else `DATABASE_URL`).
    ///
    /// # Errors
    ///
    /// As [`TestDatabase::with_config`], and configuration errors.
    pub async fn new(migrations: &Migrations) -> Result<TestDatabase> {
        TestDatabase::with_config(&Config::load()?, migrations).await
    }

    /// A test database on the test server of `config` (its
    /// [`Config::for_tests`]). The role needs the `CREATEDB` privilege.
    ///
    /// # Errors
    ///
    /// [`Error::NotConfigured`] without PostgreSQL; [`Error::Connect`];
    /// [`Error::Privilege`] when the role may not create databases;
    /// migration errors while building the template.
    pub async fn with_config(config: &Config, migrations: &Migrations) -> Result<TestDatabase> {
        let config = config.for_tests()?;
        let url = config.postgres.url.clone().ok_or(Error::NotConfigured {
            backend: Backend::Postgres,
            hint: "TEST_DATABASE_URL or DATABASE_URL",
        })?;
        let server = Server::new(&config.postgres, &url)?;
        let maintenance = config.bootstrap.maintenance_database.clone();
        sweep_once(&config).await;
        let admin = server.connect(&maintenance).await?;
        let template = template_name(&config, migrations);
        let database = new_database_name();
        let mut attempts = 0;
        loop {
            attempts += 1;
            ensure_template(&config, &server, &admin, &template, migrations).await?;
            let sql = format!(
                "CREATE DATABASE {} TEMPLATE {}",
                quote_ident(&database),
                quote_ident(&template)
            );
            match admin.batch_execute(&sql).await {
                Ok(()) => break,
                // The template was dropped in between (a manual clean-up):
                // build it again.
                Err(e) if e.code().map(|c| c.code()) == Some("3D000") && attempts < 3 => continue,
                Err(e) => {
                    return Err(admin_error(
                        format!("create database {}", quote_ident(&database)),
                        "creating a test database",
                        e,
                        server.secrets(),
                    ));
                }
            }
        }
        drop(admin);
        #[cfg(feature = "mongodb")]
        let mongo_database = config.mongodb.is_configured().then(|| database.clone());
        #[cfg(not(feature = "mongodb"))]
        let mongo_database: Option<String> = None;
        let cleanup = Cleanup {
            server: server.clone(),
            maintenance,
            database: database.clone(),
            #[cfg(feature = "mongodb")]
            mongo: mongo_database.as_ref().map(|_| config.mongodb.clone()),
        };
        let mut clone_config = config.clone();
        clone_config.postgres.url = Some(server.url_for(&database));
        clone_config.postgres.test_url = None;
        // Nothing to keep warm: the database lives for one test.
        clone_config.postgres.pool.min_idle = 0;
        if let Some(name) = &mongo_database {
            clone_config.mongodb.database = Some(name.clone());
            clone_config.mongodb.pool.min_size = 0;
        }
        let manager = match DatabaseManager::builder().config(clone_config).build_lazy() {
            Ok(manager) => manager,
            Err(e) => {
                let _ = cleanup.run().await;
                return Err(e);
            }
        };
        tracing::debug!(target: "dbmanager::testing", database = %database, template = %template, "test database created");
        Ok(TestDatabase {
            manager,
            database,
            template,
            mongo_database,
            cleanup: Some(cleanup),
        })
    }

    /// A manager connected to the test database(s).
    pub fn manager(&self) -> &DatabaseManager {
        &self.manager
    }

    /// Its configuration: the test configuration pointed at these
    /// databases.
    pub fn config(&self) -> &Config {
        self.manager.config()
    }

    /// The PostgreSQL database's name.
    pub fn database_name(&self) -> &str {
        &self.database
    }

    /// The template database it was cloned from (`dbm_tpl_<hash>`).
    pub fn template_name(&self) -> &str {
        &self.template
    }

    /// The MongoDB database's name, when MongoDB is configured.
    pub fn mongo_database_name(&self) -> Option<&str> {
        self.mongo_database.as_deref()
    }

    /// Shuts the manager down and drops the databases now, reporting
    /// errors (dropping the value does the same, logging them).
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] or [`Error::Privilege`] when a database could not
    /// be dropped.
    pub async fn close(mut self) -> Result<()> {
        let _ = self.manager.shutdown().await;
        match self.cleanup.take() {
            Some(cleanup) => cleanup.run().await,
            None => Ok(()),
        }
    }

    /// Drops test databases left by runs that were killed before they could
    /// clean up: those whose process no longer runs on this host, and any
    /// older than six hours. Templates are kept.
    ///
    /// # Errors
    ///
    /// Configuration and connection errors; [`Error::Privilege`].
    pub async fn sweep(config: &Config) -> Result<SweepReport> {
        sweep_test_server(&config.for_tests()?).await
    }
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase")
            .field("database", &self.database)
            .field("template", &self.template)
            .field("mongo_database", &self.mongo_database)
            .finish_non_exhaustive()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(cleanup) = self.cleanup.take() else {
            return;
        };
        let database = cleanup.database.clone();
        // The test's runtime may be single-threaded and blocked right here
        // (or unwinding from a panic): clean up on a thread of our own.
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(cleanup.run()).map_err(|e| e.to_string())
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(target: "dbmanager::testing", database = %database, error = %e, "could not drop the test database; a later sweep will")
            }
            Err(_) => {
                tracing::warn!(target: "dbmanager::testing", database = %database, "dropping the test database panicked; a later sweep will")
            }
        }
    }
}

impl Cleanup {
    async fn run(self) -> Result<()> {
        let admin = self.server.connect(&self.maintenance).await?;
        drop_database(&admin, &self.database, self.server.secrets()).await?;
        drop(admin);
        #[cfg(feature = "mongodb")]
        if let Some(mongo) = &self.mongo {
            let handle = crate::mongo::MongoHandle::with_parse(mongo).await?;
            let dropped = handle.database_named(&self.database).drop().await;
            handle.client().clone().shutdown().immediate(true).await;
            dropped.map_err(|e| Error::mongo("dropping a test database", e))?;
        }
        tracing::debug!(target: "dbmanager::testing", database = %self.database, "test database dropped");
        Ok(())
    }
}

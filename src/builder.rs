//! Building a [`DatabaseManager`]: settings are collected by a consuming
//! builder and validated together in `build()`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use tokio::sync::{OnceCell, watch};
use tracing::Instrument;

use crate::config::{Config, DatabaseUrl};
use crate::error::{Backend, Error, Result};
use crate::manager::{DatabaseManager, Inner, Phase};
#[cfg(feature = "mongodb")]
use crate::mongo::MongoHandle;
#[cfg(feature = "postgres")]
use crate::postgres::{Credential, Hook, HookFuture, Hooks, PasswordProvider, PostgresPool};
use crate::retry::{RetryPolicy, retry_notify};

/// Builds a [`DatabaseManager`]; from [`DatabaseManager::builder`].
///
/// Setters take and return the builder and never fail: a problem is kept
/// and returned by `build()`, after every setting has been checked
/// together.
#[must_use = "a builder does nothing until build(), build_lazy() or build_in_background()"]
#[derive(Debug, Default)]
pub struct DatabaseManagerBuilder {
    config: Option<Config>,
    retry: Option<RetryPolicy>,
    postgres_url: Option<DatabaseUrl>,
    mongodb_url: Option<DatabaseUrl>,
    #[cfg(feature = "postgres")]
    hooks: Hooks,
    error: Option<Error>,
}

impl DatabaseManager {
    /// Starts building a manager.
    pub fn builder() -> DatabaseManagerBuilder {
        DatabaseManagerBuilder::default()
    }
}

impl DatabaseManagerBuilder {
    /// The configuration. Default: [`Config::load`] at build time.
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Loads the configuration with this TOML file in place of
    /// `dbmanager.toml` (the other layers as usual). A file that is missing
    /// or invalid is reported by `build()`.
    pub fn config_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        match Config::loader().file(path).load() {
            Ok(config) => self.config = Some(config),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// The start-up connect retry. Default: the configuration's `[retry]`.
    ///
    /// This setter wins over the configuration: the policy given here
    /// replaces the configured `[retry]` section entirely (it is not merged
    /// key by key), so `DBMANAGER_RETRY__MAX_ATTEMPTS` and `dbmanager.toml`'s
    /// `[retry]` no longer apply. Leave it out to let operators tune the
    /// retry through the configuration.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The PostgreSQL URL, overriding the configuration's.
    pub fn postgres_url(mut self, url: impl Into<String>) -> Self {
        self.postgres_url = Some(DatabaseUrl::new(url));
        self
    }

    /// The MongoDB URL, overriding the configuration's.
    pub fn mongodb_url(mut self, url: impl Into<String>) -> Self {
        self.mongodb_url = Some(DatabaseUrl::new(url));
        self
    }

    /// Runs on every new PostgreSQL connection before its first use (like
    /// SQLAlchemy's `connect` event or HikariCP's `connectionInitSql`). An
    /// error fails that connection. Default: none.
    ///
    /// ```
    /// # fn demo(builder: dbmanager::DatabaseManagerBuilder) -> dbmanager::DatabaseManagerBuilder {
    /// builder.on_connect(|client| Box::pin(async move {
    ///     client.batch_execute("SET search_path TO app, public").await?;
    ///     Ok(())
    /// }))
    /// # }
    /// ```
    #[cfg(feature = "postgres")]
    pub fn on_connect<F>(mut self, hook: F) -> Self
    where
        F: for<'a> Fn(&'a tokio_postgres::Client) -> HookFuture<'a> + Send + Sync + 'static,
    {
        self.hooks.on_connect = Some(Hook::new(hook));
        self
    }

    /// Runs on every checkout, the manager's own included (the start-up
    /// proof of `build()`, health probes). An error discards that connection
    /// and another is tried, so callers only see it when no connection
    /// passes. Default: none.
    #[cfg(feature = "postgres")]
    pub fn on_checkout<F>(mut self, hook: F) -> Self
    where
        F: for<'a> Fn(&'a tokio_postgres::Client) -> HookFuture<'a> + Send + Sync + 'static,
    {
        self.hooks.on_checkout = Some(Hook::new(hook));
        self
    }

    /// Runs when a connection is returned, before it is idle again. An error
    /// closes the connection. Default: none.
    #[cfg(feature = "postgres")]
    pub fn on_checkin<F>(mut self, hook: F) -> Self
    where
        F: for<'a> Fn(&'a tokio_postgres::Client) -> HookFuture<'a> + Send + Sync + 'static,
    {
        self.hooks.on_checkin = Some(Hook::new(hook));
        self
    }

    /// Fetches the PostgreSQL password before every new connection, for
    /// credentials that expire: AWS RDS IAM tokens, Vault dynamic secrets.
    /// It returns a password for the URL's user (a `String`), or a
    /// [`Credential`] naming the user too. Default: none (the URL's
    /// password).
    ///
    /// The provider runs once per connection opened, not per checkout, and
    /// is bounded by `postgres.pool.connect_timeout`. Its failure is
    /// [`Error::CredentialProvider`] (transient: retried at start-up); a
    /// password the server rejects is [`Error::Connect`] with
    /// [`crate::FailureKind::Authentication`], permanent. Open connections
    /// are not affected by a rotation: the server authenticates a session
    /// once.
    ///
    /// ```
    /// # async fn fetch_token() -> Result<String, std::io::Error> { Ok("token".into()) }
    /// # fn demo(builder: dbmanager::DatabaseManagerBuilder) -> dbmanager::DatabaseManagerBuilder {
    /// builder.password_provider(|| async { fetch_token().await })
    /// # }
    /// ```
    #[cfg(feature = "postgres")]
    pub fn password_provider<F, Fut, C, E>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<C, E>> + Send + 'static,
        C: Into<Credential>,
        E: Into<crate::BoxError>,
    {
        self.hooks.password_provider = Some(PasswordProvider::new(provider));
        self
    }

    /// Connects now, retrying transient failures under the retry policy,
    /// and warms the pools to `min_idle` / `min_size` before returning, so a
    /// bad configuration fails at start-up.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for invalid settings; [`Error::Connect`] when a
    /// database could not be reached (at once for permanent failures such as
    /// a wrong password or an unknown database, after the retry budget for
    /// transient ones).
    pub async fn build(self) -> Result<DatabaseManager> {
        let settled = self.settle()?;
        // Eagerly, so `mongodb+srv` URLs get their DNS lookup here.
        #[cfg(feature = "mongodb")]
        let mongo = match settled.config.mongodb.is_configured() {
            true => Some(MongoHandle::with_parse(&settled.config.mongodb).await?),
            false => None,
        };
        #[cfg(not(feature = "mongodb"))]
        let mongo = None;
        let (manager, policy) = assemble(settled, Phase::Connecting, mongo)?;
        match connect(&manager, &policy).await {
            Ok(()) => {
                manager.finish_connecting(Phase::Ready);
                Ok(manager)
            }
            Err(e) => {
                manager.finish_connecting(Phase::Failed);
                // Nothing else holds the pools: closing now frees the
                // connections that did open.
                let _ = manager.shutdown().await;
                Err(e)
            }
        }
    }

    /// Builds without opening any connection; the first use connects.
    /// Readiness follows the probes from the start.
    ///
    /// The PostgreSQL maintenance task starts too: from its first round
    /// (`maintenance_interval` later) it keeps `min_idle` connections open,
    /// so set `postgres.pool.min_idle = 0` for a pool that opens connections
    /// only when they are asked for. Must be called within a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for invalid settings, and for a `mongodb+srv` URL,
    /// whose DNS lookup only the eager [`build`](Self::build) makes.
    pub fn build_lazy(self) -> Result<DatabaseManager> {
        let (manager, _) = assemble(self.settle()?, Phase::Ready, None)?;
        #[cfg(feature = "postgres")]
        if let Some(pool) = &manager.inner().postgres {
            pool.start_maintenance();
            if let Some(replicas) = pool.replica_set() {
                replicas.start();
            }
        }
        Ok(manager)
    }

    /// Returns at once and connects in the background, as `build()` would.
    /// Readiness is false until that succeeds; liveness turns false if it
    /// fails for good. [`DatabaseManager::wait_ready`] waits for the outcome.
    ///
    /// Use it to serve liveness probes while the database is still coming
    /// up. Must be called within a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for invalid settings, and for a `mongodb+srv` URL,
    /// whose DNS lookup only the eager [`build`](Self::build) makes.
    pub fn build_in_background(self) -> Result<DatabaseManager> {
        let (manager, policy) = assemble(self.settle()?, Phase::Connecting, None)?;
        let background = manager.clone();
        let task = tokio::spawn(async move {
            match connect(&background, &policy).await {
                Ok(()) => background.finish_connecting(Phase::Ready),
                Err(e) => {
                    tracing::error!(target: "dbmanager", error = %e, "start-up connect failed");
                    *background
                        .inner()
                        .startup_failure
                        .lock()
                        .expect("startup failure lock") = Some(e.to_string());
                    background.finish_connecting(Phase::Failed);
                }
            }
        });
        *manager.inner().background.lock().expect("background lock") = Some(task);
        Ok(manager)
    }

    /// The configuration with the builder's overrides, validated.
    fn settle(self) -> Result<Settled> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let mut config = match self.config {
            Some(config) => config,
            None => Config::load()?,
        };
        if let Some(url) = self.postgres_url {
            config.postgres.url = Some(url);
        }
        if let Some(url) = self.mongodb_url {
            config.mongodb.url = Some(url);
        }
        if let Some(policy) = self.retry {
            config.retry = policy;
        }
        config.validate()?;
        if !config.postgres.is_configured() && !config.mongodb.is_configured() {
            return Err(Error::NotConfigured {
                backend: Backend::Postgres,
                hint: "DATABASE_URL or MONGODB_URL (neither database is configured)",
            });
        }
        Ok(Settled {
            config,
            #[cfg(feature = "postgres")]
            hooks: self.hooks,
        })
    }
}

/// A validated configuration and the hooks, ready to become a manager.
struct Settled {
    config: Config,
    #[cfg(feature = "postgres")]
    hooks: Hooks,
}

#[cfg(feature = "mongodb")]
type MongoSlot = Option<MongoHandle>;
#[cfg(not(feature = "mongodb"))]
type MongoSlot = Option<std::convert::Infallible>;

/// Creates the pools (without connecting) and the manager around them.
/// `mongo` is a client already built asynchronously, if any.
fn assemble(
    settled: Settled,
    phase: Phase,
    mongo: MongoSlot,
) -> Result<(DatabaseManager, RetryPolicy)> {
    let Settled {
        config,
        #[cfg(feature = "postgres")]
        hooks,
    } = settled;
    #[cfg(feature = "postgres")]
    let postgres = match config.postgres.is_configured() {
        true => Some(PostgresPool::new(&config.postgres, hooks)?),
        false => None,
    };
    #[cfg(not(feature = "postgres"))]
    if config.postgres.is_configured() {
        return Err(Error::config(
            "postgres.url",
            "is set but this build lacks the `postgres` feature",
        ));
    }
    #[cfg(feature = "mongodb")]
    let mongo = match (mongo, config.mongodb.is_configured()) {
        (Some(handle), _) => Some(handle),
        (None, true) => Some(MongoHandle::new(&config.mongodb)?),
        (None, false) => None,
    };
    #[cfg(not(feature = "mongodb"))]
    let _ = mongo;
    #[cfg(not(feature = "mongodb"))]
    if config.mongodb.is_configured() {
        return Err(Error::config(
            "mongodb.url",
            "is set but this build lacks the `mongodb` feature",
        ));
    }
    let policy = config.retry.clone();
    let manager = DatabaseManager::from_inner(Inner {
        config,
        #[cfg(feature = "postgres")]
        postgres,
        #[cfg(feature = "mongodb")]
        mongo,
        phase: watch::Sender::new(phase),
        startup_failure: Mutex::new(None),
        background: Mutex::new(None),
        shutdown: OnceCell::new(),
    });
    Ok((manager, policy))
}

/// Connects every configured database concurrently, each under the retry
/// policy, then warms the pools.
async fn connect(manager: &DatabaseManager, policy: &RetryPolicy) -> Result<()> {
    #[cfg(feature = "postgres")]
    let postgres = async {
        let Some(pool) = &manager.inner().postgres else {
            return Ok(());
        };
        let span = tracing::info_span!("dbmanager.connect", database = "postgres", target = %pool.target());
        async {
            let started = Instant::now();
            let attempts = with_retry(policy, Backend::Postgres, || pool.connect_once()).await?;
            let warmed = pool.warm_up().await;
            pool.start_maintenance();
            // Replicas are optional: their first check and warm-up are
            // bounded, and one that is down delays nothing beyond that.
            if let Some(replicas) = pool.replica_set() {
                replicas.warm_up().await;
                replicas.start();
            }
            if manager.config().postgres.multiplex.warm_up {
                with_retry(policy, Backend::Postgres, || pool.multiplexed().warm_up()).await?;
            }
            tracing::info!(
                target: "dbmanager",
                attempts,
                warmed,
                took_ms = started.elapsed().as_millis() as u64,
                "connected to PostgreSQL"
            );
            Ok::<_, Error>(())
        }
        .instrument(span)
        .await
    };
    #[cfg(not(feature = "postgres"))]
    let postgres = async { Ok::<_, Error>(()) };
    #[cfg(feature = "mongodb")]
    let mongo = async {
        let Some(handle) = &manager.inner().mongo else {
            return Ok(());
        };
        let span = tracing::info_span!("dbmanager.connect", database = "mongodb", target = %handle.target());
        async {
            let started = Instant::now();
            let attempts = with_retry(policy, Backend::Mongodb, || handle.ping_once()).await?;
            let warmed = handle.warm_up().await;
            tracing::info!(
                target: "dbmanager",
                attempts,
                warmed,
                took_ms = started.elapsed().as_millis() as u64,
                "connected to MongoDB"
            );
            Ok::<_, Error>(())
        }
        .instrument(span)
        .await
    };
    #[cfg(not(feature = "mongodb"))]
    let mongo = async { Ok::<_, Error>(()) };
    // The first permanent failure ends the start-up at once; the other
    // database's connect (perhaps still retrying) is dropped with it.
    tokio::try_join!(postgres, mongo).map(|_| ())
}

/// Runs one connect attempt under the policy; returns how many attempts it
/// took, or the last error with the totals filled in.
async fn with_retry<F, Fut>(policy: &RetryPolicy, backend: Backend, attempt: F) -> Result<u32>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let started = Instant::now();
    let attempts = AtomicU32::new(0);
    let result = retry_notify(
        policy,
        "connect",
        || {
            attempts.fetch_add(1, Ordering::Relaxed);
            attempt()
        },
        |_, _, _| crate::metrics::connect_retry(crate::metrics::PoolLabel::main(backend)),
    )
    .await;
    let attempts = attempts.load(Ordering::Relaxed);
    result.map(|()| attempts).map_err(|mut e| {
        if let Error::Connect {
            attempts: a,
            elapsed,
            ..
        } = &mut e
        {
            *a = attempts;
            *elapsed = started.elapsed();
        }
        e
    })
}

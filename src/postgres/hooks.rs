//! Async hooks run on connection events, like SQLAlchemy's pool events or
//! HikariCP's `connectionInitSql`.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;

use crate::error::BoxError;

/// The future a hook returns.
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;

/// A hook: an async function of the connection.
///
/// ```
/// use dbmanager::postgres::{Hook, HookFuture};
///
/// let set_search_path = Hook::new(|client| -> HookFuture<'_> {
///     Box::pin(async move {
///         client.batch_execute("SET search_path TO app, public").await?;
///         Ok(())
///     })
/// });
/// ```
#[derive(Clone)]
pub struct Hook(Arc<dyn for<'a> Fn(&'a tokio_postgres::Client) -> HookFuture<'a> + Send + Sync>);

impl Hook {
    /// Wraps an async function of the connection.
    pub fn new<F>(f: F) -> Self
    where
        F: for<'a> Fn(&'a tokio_postgres::Client) -> HookFuture<'a> + Send + Sync + 'static,
    {
        Hook(Arc::new(f))
    }

    /// Runs the hook. A panic, while the hook builds its future or while
    /// the future runs, comes back as an error like any other failure of
    /// the hook: the caller discards the connection and the pool, its
    /// counts and its maintenance task carry on.
    pub(crate) fn call<'a>(&self, client: &'a tokio_postgres::Client) -> HookFuture<'a> {
        let hook = self.0.clone();
        Box::pin(async move {
            let future =
                std::panic::catch_unwind(AssertUnwindSafe(|| hook(client))).map_err(panicked)?;
            AssertUnwindSafe(future)
                .catch_unwind()
                .await
                .unwrap_or_else(|payload| Err(panicked(payload)))
        })
    }
}

/// A hook's panic as an error carrying the panic message.
pub(super) fn panicked(payload: Box<dyn Any + Send>) -> BoxError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text payload".into());
    format!("panicked: {message}").into()
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

/// The hooks of a PostgreSQL pool.
#[derive(Clone, Default, Debug)]
pub(crate) struct Hooks {
    /// Every new connection, before first use. An error discards the
    /// connection and fails its creation.
    pub on_connect: Option<Hook>,
    /// Every checkout. An error discards that connection and another is
    /// tried.
    pub on_checkout: Option<Hook>,
    /// Every return to the pool. An error closes the connection instead of
    /// returning it.
    pub on_checkin: Option<Hook>,
    /// Every new connection, before it is opened: its password.
    pub password_provider: Option<super::credentials::PasswordProvider>,
}

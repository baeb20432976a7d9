//! Credentials fetched before every new connection: short-lived passwords
//! such as AWS RDS IAM tokens or Vault dynamic secrets, which a URL fixed
//! at start-up cannot carry.
//!
//! The provider runs once per connection the pool opens, never per
//! checkout: a connection keeps the session it authenticated, so rotating
//! the password on the server leaves open connections working and only new
//! ones need the new value.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use super::connect::Driver;
use super::hooks::panicked;
use crate::config::Secret;
use crate::error::{Backend, BoxError, Error};

/// What a password provider returns: a password, and optionally the user it
/// belongs to (Vault's dynamic secrets create a new user with every lease).
///
/// A `String` or `&str` converts into a password for the URL's user.
/// `Debug` never shows the password.
#[derive(Clone)]
pub struct Credential {
    user: Option<String>,
    password: Secret,
}

impl Credential {
    /// A password for the user named in the URL.
    pub fn password(password: impl Into<String>) -> Self {
        Credential {
            user: None,
            password: Secret::new(password),
        }
    }

    /// A user and its password, replacing the URL's user.
    pub fn user_and_password(user: impl Into<String>, password: impl Into<String>) -> Self {
        Credential {
            user: Some(user.into()),
            password: Secret::new(password),
        }
    }
}

impl From<String> for Credential {
    fn from(password: String) -> Self {
        Credential::password(password)
    }
}

impl From<&str> for Credential {
    fn from(password: &str) -> Self {
        Credential::password(password)
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("user", &self.user)
            .field("password", &self.password)
            .finish()
    }
}

type CredentialFuture = Pin<Box<dyn Future<Output = Result<Credential, BoxError>> + Send>>;

/// The password provider of a pool, as given to
/// [`crate::DatabaseManagerBuilder::password_provider`].
#[derive(Clone)]
pub(crate) struct PasswordProvider(Arc<dyn Fn() -> CredentialFuture + Send + Sync>);

impl PasswordProvider {
    pub(crate) fn new<F, Fut, C, E>(provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C, E>> + Send + 'static,
        C: Into<Credential>,
        E: Into<BoxError>,
    {
        // A panic in the provider (building its future or running it) is
        // its failure like any other, not a panic of the checkout.
        PasswordProvider(Arc::new(move || {
            let future = match std::panic::catch_unwind(AssertUnwindSafe(&provider)) {
                Ok(future) => future,
                Err(payload) => {
                    let error = panicked(payload);
                    return Box::pin(async move { Err(error) });
                }
            };
            Box::pin(async move {
                match AssertUnwindSafe(future).catch_unwind().await {
                    Ok(outcome) => outcome.map(Into::into).map_err(Into::into),
                    Err(payload) => Err(panicked(payload)),
                }
            })
        }))
    }

    /// Asks the provider, within `limit`.
    async fn fetch(&self, limit: Duration) -> Result<Credential, Error> {
        let failed = |reason: String| Error::CredentialProvider {
            backend: Backend::Postgres,
            reason,
        };
        match tokio::time::timeout(limit, (self.0)()).await {
            Ok(Ok(credential)) if credential.password.expose().is_empty() => {
                Err(failed("it returned an empty password".into()))
            }
            Ok(Ok(credential)) => Ok(credential),
            // The provider's message is its own: it never saw a password
            // of ours, so there is nothing of ours to scrub from it.
            Ok(Err(error)) => Err(failed(error.to_string())),
            Err(_) => Err(failed(format!("no answer within {limit:?}"))),
        }
    }
}

impl std::fmt::Debug for PasswordProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordProvider")
    }
}

impl Driver {
    /// This driver with [`Driver::config_for_next_connection`] as its
    /// configuration: what opening the next pooled connection takes.
    ///
    /// # Errors
    ///
    /// As [`Driver::config_for_next_connection`].
    pub(crate) async fn for_next_connection(&self) -> Result<Driver, Error> {
        let config = self.config_for_next_connection().await?;
        Ok(Driver {
            config,
            ..self.clone()
        })
    }

    /// The driver configuration for the next connection: the pool's, with
    /// the provider's credential when there is a provider. The provider is
    /// bounded by the connect timeout, so a hung token service fails the
    /// connection like an unreachable server would.
    ///
    /// # Errors
    ///
    /// [`Error::CredentialProvider`] when the provider fails or does not
    /// answer within the connect timeout.
    pub(crate) async fn config_for_next_connection(&self) -> Result<tokio_postgres::Config, Error> {
        let mut config = self.config.clone();
        if let Some(provider) = &self.credentials {
            let limit = config
                .get_connect_timeout()
                .copied()
                .unwrap_or(Duration::from_secs(5));
            let credential = provider.fetch(limit).await?;
            if let Some(user) = &credential.user {
                config.user(user);
            }
            config.password(credential.password.expose());
        }
        Ok(config)
    }
}

/// The secrets to scrub from a connection's errors: the pool's, and the
/// password this connection was opened with (a provider's, which the pool
/// never saw before).
pub(crate) fn secrets_of(config: &tokio_postgres::Config, secrets: &[String]) -> Vec<String> {
    let mut all = secrets.to_vec();
    if let Some(password) = config.get_password() {
        all.push(String::from_utf8_lossy(password).into_owned());
    }
    all
}

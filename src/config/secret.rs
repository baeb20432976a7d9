//! Values that must never be printed: passwords and credentialed URLs.
//!
//! Both types deserialize from plain strings, and print, debug-format and
//! serialize only in redacted form, so a configuration can be logged,
//! dumped (`dbmanager config show`) or put into an error without leaking.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::url::ConnectionString;

/// What redacted secrets are replaced by.
pub const REDACTED: &str = "[redacted]";

/// A secret string, such as a password.
///
/// `Debug`, `Display` and `Serialize` show `[redacted]`; use
/// [`Secret::expose`] where the value is really needed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// A database URL (or libpq key/value connection string) that may carry a
/// password.
///
/// It prints as the URL with the password replaced (`postgres://app:[redacted]@db/app`),
/// so it is safe in logs and errors; [`DatabaseUrl::expose`] gives the
/// real string to the driver.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(Secret);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseUrl(Secret::new(url))
    }

    /// The URL with its password. Pass it to drivers; never log it.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The URL with any password replaced by `[redacted]`.
    pub fn redacted(&self) -> String {
        redact_url(self.expose())
    }

    /// The password in the URL, percent-decoded, if there is one. Used to
    /// scrub server messages before they are kept in errors.
    pub(crate) fn password(&self) -> Option<String> {
        ConnectionString::parse(self.expose())
            .ok()
            .and_then(|c| c.password())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(DatabaseUrl::new)
    }
}

/// Replaces the password of a URL or a key/value connection string by
/// `[redacted]`. Strings it cannot parse are redacted whole, since they may
/// still contain a password.
pub fn redact_url(url: &str) -> String {
    match ConnectionString::parse(url) {
        Ok(parsed) => parsed.redacted(),
        Err(_) if !url.contains('=') && !url.contains('@') => url.to_string(),
        Err(_) => REDACTED.to_string(),
    }
}

/// Removes every occurrence of the given secrets (and their
/// percent-encoded forms) from a message that came from a server or a
/// driver, before it is put into an error, a log line or a health report.
pub(crate) fn scrub(message: &str, secrets: &[String]) -> String {
    let mut out = message.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        let encoded = super::url::encode_userinfo(secret);
        for form in [secret.as_str(), encoded.as_str()] {
            if out.contains(form) {
                out = out.replace(form, REDACTED);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_display_and_serialize_hide_the_password() {
        let url = DatabaseUrl::new("postgres://app:s3cr%40t@db.internal:5432/app");
        for shown in [
            format!("{url}"),
            format!("{url:?}"),
            serde_json::to_string(&url).unwrap(),
        ] {
            assert!(!shown.contains("s3cr"), "{shown}");
            assert!(shown.contains("db.internal"), "{shown}");
        }
        assert_eq!(url.password().as_deref(), Some("s3cr@t"));
    }

    #[test]
    fn token_bearing_parameters_are_redacted_everywhere() {
        for (url, secret) in [
            (
                "mongodb://h:27017/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:tok3n",
                "tok3n",
            ),
            (
                "postgres://app@db/app?password=hunter2&sslmode=require",
                "hunter2",
            ),
            ("postgres://app@db/app?sslpassword=k3ypass", "k3ypass"),
            ("postgres://app@db/app?access_token=abc123", "abc123"),
            ("host=db user=app sslpassword=k3ypass dbname=app", "k3ypass"),
        ] {
            let url = DatabaseUrl::new(url);
            for shown in [
                format!("{url}"),
                format!("{url:?}"),
                serde_json::to_string(&url).unwrap(),
            ] {
                assert!(!shown.contains(secret), "{shown}");
                assert!(shown.contains(REDACTED), "{shown}");
            }
        }
    }

    #[test]
    fn key_value_strings_are_redacted() {
        let shown = redact_url("host=db user=app password='p w' dbname=app");
        assert!(!shown.contains("p w"), "{shown}");
        assert!(shown.contains("host=db"), "{shown}");
    }

    #[test]
    fn scrub_removes_raw_and_encoded_forms() {
        let secrets = vec!["p@ss:word".to_string()];
        let message = "auth failed for p@ss:word (p%40ss%3Aword)";
        let scrubbed = scrub(message, &secrets);
        assert!(!scrubbed.contains("p@ss"), "{scrubbed}");
        assert!(!scrubbed.contains("p%40ss"), "{scrubbed}");
    }
}

//! Environment variables (from the process or a `.env` file) as a figment
//! provider.
//!
//! Three families of names are understood:
//! - `DBMANAGER_<SECTION>__<KEY>`: every setting, `__` nesting;
//! - the well-known names other tools use: `DATABASE_URL`,
//!   `TEST_DATABASE_URL`, `MONGODB_URL`/`MONGODB_URI`, and the seed-style
//!   parts `POSTGRES_*` and `MONGO_*` assembled into a URL when no URL is
//!   given;
//! - SQLAlchemy's pool sizing: `DB_POOL_SIZE`, `DB_MAX_OVERFLOW`,
//!   `DB_POOL_TIMEOUT`.
//!
//! A `.env` file is read into a provider of its own, never into the process
//! environment, so it can sit between the TOML file and the real
//! environment in the layering.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider, Source};

use crate::config::url::encode_userinfo;
use crate::error::Error;

/// The prefix of every setting's variable.
pub(crate) const PREFIX: &str = "DBMANAGER_";
/// The variable naming the TOML file; not a setting.
pub(crate) const CONFIG_FILE_VAR: &str = "DBMANAGER_CONFIG";

const POSTGRES_PARTS: &[&str] = &[
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_SERVER",
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_DB",
];
const MONGO_PARTS: &[&str] = &[
    "MONGO_HOST",
    "MONGO_PORT",
    "MONGO_USER",
    "MONGO_PASSWORD",
    "MONGO_AUTH_SOURCE",
    "MONGO_DB",
];
const WELL_KNOWN: &[&str] = &[
    "DATABASE_URL",
    "TEST_DATABASE_URL",
    "MONGODB_URL",
    "MONGODB_URI",
    "DB_POOL_SIZE",
    "DB_MAX_OVERFLOW",
    "DB_POOL_TIMEOUT",
];

/// Whether a variable is one this crate reads.
pub(crate) fn is_relevant(name: &str) -> bool {
    (name.starts_with(PREFIX) && name != CONFIG_FILE_VAR)
        || WELL_KNOWN.contains(&name)
        || POSTGRES_PARTS.contains(&name)
        || MONGO_PARTS.contains(&name)
}

/// One layer of environment variables.
#[derive(Debug, Clone)]
pub(crate) struct EnvLayer {
    name: &'static str,
    path: Option<PathBuf>,
    vars: BTreeMap<String, String>,
    /// The variables of the layers below, so URL parts split between a
    /// `.env` file and the environment assemble into one URL.
    below: BTreeMap<String, String>,
}

/// One setting derived from the variables.
struct Entry {
    key: String,
    value: Value,
    var: String,
}

impl EnvLayer {
    /// The process environment (only the variables this crate reads).
    pub fn process(below: &EnvLayer) -> Self {
        Self::from_vars(
            "environment",
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
            below,
        )
    }

    /// Given variables standing for the environment (tests, embedding).
    pub fn from_vars(
        name: &'static str,
        vars: impl IntoIterator<Item = (String, String)>,
        below: &EnvLayer,
    ) -> Self {
        let mut all = below.below.clone();
        all.extend(below.vars.clone());
        EnvLayer {
            name,
            path: None,
            vars: vars
                .into_iter()
                .filter(|(k, v)| is_relevant(k) && !v.is_empty())
                .collect(),
            below: all,
        }
    }

    /// No variables.
    pub fn empty() -> Self {
        EnvLayer {
            name: "environment",
            path: None,
            vars: BTreeMap::new(),
            below: BTreeMap::new(),
        }
    }

    /// A `.env` file; a missing file is an empty layer.
    pub fn dotenv(path: &Path) -> Result<Self, Error> {
        let mut layer = EnvLayer {
            name: ".env file",
            path: Some(path.to_path_buf()),
            vars: BTreeMap::new(),
            below: BTreeMap::new(),
        };
        let iter = match dotenvy::from_path_iter(path) {
            Ok(iter) => iter,
            Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(layer);
            }
            Err(e) => return Err(dotenv_error(path, e)),
        };
        for item in iter {
            let (k, v) = item.map_err(|e| dotenv_error(path, e))?;
            if is_relevant(&k) && !v.is_empty() {
                layer.vars.insert(k, v);
            }
        }
        Ok(layer)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// This layer's value, else a lower layer's.
    fn get_any(&self, name: &str) -> Option<&str> {
        self.get(name)
            .or_else(|| self.below.get(name).map(String::as_str))
    }

    fn has_any(&self, names: &[&str]) -> bool {
        names.iter().any(|n| self.vars.contains_key(*n))
    }

    /// Checks the variables and maps them to settings.
    pub fn check(&self) -> Result<(), Error> {
        self.entries().map(|_| ())
    }

    fn entries(&self) -> Result<Vec<Entry>, Error> {
        let mut out = Vec::new();
        let mut push = |key: &str, value: Value, var: &str| {
            out.push(Entry {
                key: key.to_string(),
                value,
                var: var.to_string(),
            })
        };

        if let Some(url) = self.get("DATABASE_URL") {
            push("postgres.url", url.into(), "DATABASE_URL");
        } else if self.get_any("DATABASE_URL").is_none() && self.has_any(POSTGRES_PARTS) {
            push(
                "postgres.url",
                self.postgres_url_from_parts()?.into(),
                "POSTGRES_*",
            );
        }
        if let Some(url) = self.get("TEST_DATABASE_URL") {
            push("postgres.test_url", url.into(), "TEST_DATABASE_URL");
        }

        let mongo_url_var = ["MONGODB_URL", "MONGODB_URI"]
            .into_iter()
            .find(|v| self.get(v).is_some());
        if let Some(var) = mongo_url_var {
            push("mongodb.url", self.get(var).unwrap_or_default().into(), var);
        } else if self.get_any("MONGODB_URL").is_none()
            && self.get_any("MONGODB_URI").is_none()
            && self.has_any(MONGO_PARTS)
        {
            push(
                "mongodb.url",
                self.mongo_url_from_parts()?.into(),
                "MONGO_*",
            );
        }
        if let Some(db) = self.get("MONGO_DB") {
            push("mongodb.database", db.into(), "MONGO_DB");
        }

        if self.has_any(&["DB_POOL_SIZE", "DB_MAX_OVERFLOW"]) {
            let size = match self.get_any("DB_POOL_SIZE") {
                Some(v) => parse_count("DB_POOL_SIZE", v, 1)?,
                None => {
                    return Err(Error::config(
                        "DB_MAX_OVERFLOW",
                        "is set without DB_POOL_SIZE; the pool's maximum is DB_POOL_SIZE + DB_MAX_OVERFLOW",
                    ));
                }
            };
            let overflow = match self.get_any("DB_MAX_OVERFLOW") {
                Some(v) => parse_count("DB_MAX_OVERFLOW", v, 0)?,
                None => 0,
            };
            push(
                "postgres.pool.max_idle",
                (size as u64).into(),
                "DB_POOL_SIZE",
            );
            // Saturates: an absurd sum is then refused by the size limit.
            push(
                "postgres.pool.max_size",
                (size.saturating_add(overflow) as u64).into(),
                "DB_POOL_SIZE + DB_MAX_OVERFLOW",
            );
        }
        if let Some(v) = self.get("DB_POOL_TIMEOUT") {
            let secs: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s < 1e9)
                .ok_or_else(|| {
                    Error::config(
                        "DB_POOL_TIMEOUT",
                        "must be a number of seconds greater than zero",
                    )
                })?;
            let millis = (secs * 1000.0).round().max(1.0) as u64;
            push(
                "postgres.pool.wait_timeout",
                format!("{millis}ms").into(),
                "DB_POOL_TIMEOUT",
            );
        }

        for (var, raw) in &self.vars {
            let Some(rest) = var.strip_prefix(PREFIX) else {
                continue;
            };
            if var == CONFIG_FILE_VAR {
                continue;
            }
            let key = rest
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
                .join(".");
            if key.split('.').any(str::is_empty) {
                return Err(Error::config(
                    var.as_str(),
                    "has an empty section name (use `__` between sections)",
                ));
            }
            // Secrets and names stay strings even when they look like numbers.
            let value: Value = if key.ends_with("url")
                || key.contains("password")
                || key.ends_with("name")
                || key.ends_with("replica_set")
            {
                raw.as_str().into()
            } else {
                raw.parse().expect("parsing a figment value is infallible")
            };
            push(&key, value, var);
        }
        Ok(out)
    }

    fn postgres_url_from_parts(&self) -> Result<String, Error> {
        let user = self.get_any("POSTGRES_USER").unwrap_or("postgres");
        let host = self
            .get_any("POSTGRES_SERVER")
            .or_else(|| self.get_any("POSTGRES_HOST"))
            .unwrap_or("localhost");
        let port = parse_port("POSTGRES_PORT", self.get_any("POSTGRES_PORT"), 5432)?;
        let db = self.get_any("POSTGRES_DB").unwrap_or(user);
        let auth = match self.get_any("POSTGRES_PASSWORD") {
            Some(pw) => format!("{}:{}", encode_userinfo(user), encode_userinfo(pw)),
            None => encode_userinfo(user),
        };
        Ok(format!(
            "postgres://{auth}@{host}:{port}/{}",
            encode_userinfo(db)
        ))
    }

    fn mongo_url_from_parts(&self) -> Result<String, Error> {
        let host = self.get_any("MONGO_HOST").unwrap_or("localhost");
        let port = parse_port("MONGO_PORT", self.get_any("MONGO_PORT"), 27017)?;
        let auth = match (self.get_any("MONGO_USER"), self.get_any("MONGO_PASSWORD")) {
            (Some(user), Some(pw)) => format!("{}:{}@", encode_userinfo(user), encode_userinfo(pw)),
            (Some(user), None) => format!("{}@", encode_userinfo(user)),
            (None, Some(_)) => {
                return Err(Error::config("MONGO_PASSWORD", "is set without MONGO_USER"));
            }
            (None, None) => String::new(),
        };
        let db = self
            .get_any("MONGO_DB")
            .map(encode_userinfo)
            .unwrap_or_default();
        let query = match self.get_any("MONGO_AUTH_SOURCE") {
            Some(source) => format!("?authSource={}", encode_userinfo(source)),
            None => String::new(),
        };
        Ok(format!("mongodb://{auth}{host}:{port}/{db}{query}"))
    }

    /// Which variable set each setting, for `config show` and error
    /// messages.
    pub fn sources(&self) -> BTreeMap<String, String> {
        self.entries()
            .map(|entries| entries.into_iter().map(|e| (e.key, e.var)).collect())
            .unwrap_or_default()
    }
}

fn parse_count(var: &str, value: &str, min: usize) -> Result<usize, Error> {
    value
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n >= min && *n <= 100_000)
        .ok_or_else(|| {
            Error::config(
                var,
                if min == 0 {
                    "must be a whole number, zero or more"
                } else {
                    "must be a whole number, at least 1"
                },
            )
        })
}

fn parse_port(var: &str, value: Option<&str>, default: u16) -> Result<u16, Error> {
    match value {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Error::config(var, "must be a port number from 1 to 65535")),
    }
}

fn dotenv_error(path: &Path, error: dotenvy::Error) -> Error {
    // dotenvy's message quotes the offending line, which may hold a
    // password: report its position only.
    let problem = match error {
        dotenvy::Error::LineParse(line, index) => {
            let number = std::fs::read_to_string(path)
                .ok()
                .and_then(|text| text.lines().position(|l| l.contains(line.trim())))
                .map(|n| format!(" {}", n + 1))
                .unwrap_or_default();
            format!(
                "line{number} is not `NAME=value` (problem at column {})",
                index + 1
            )
        }
        dotenvy::Error::Io(e) => format!("cannot be read: {e}"),
        dotenvy::Error::EnvVar(e) => format!("refers to a variable that cannot be read: {e}"),
        _ => "cannot be parsed".to_string(),
    };
    Error::ConfigFile {
        path: path.to_path_buf(),
        problem,
    }
}

fn insert(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_string(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            if entry.as_dict().is_none() {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        let sources = Arc::new(self.sources());
        let name = if self.path.is_some() {
            ".env file"
        } else {
            self.name
        };
        let mut metadata = Metadata::named(name).interpolater(move |_: &Profile, keys: &[&str]| {
            let key = keys.join(".");
            match sources.get(&key) {
                Some(var) => var.clone(),
                None => format!("{PREFIX}{}", keys.join("__").to_ascii_uppercase()),
            }
        });
        if let Some(path) = &self.path {
            metadata = metadata.source(Source::File(path.clone()));
        }
        metadata
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let entries = self
            .entries()
            .map_err(|e| figment::Error::from(e.to_string()))?;
        let mut dict = Dict::new();
        for entry in entries {
            let path: Vec<&str> = entry.key.split('.').collect();
            insert(&mut dict, &path, entry.value);
        }
        Ok(Profile::Default.collect(dict))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(vars: &[(&str, &str)]) -> EnvLayer {
        EnvLayer::from_vars(
            "environment",
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            &EnvLayer::empty(),
        )
    }

    #[test]
    fn parts_assemble_with_escaping() {
        let l = layer(&[
            ("POSTGRES_USER", "app"),
            ("POSTGRES_PASSWORD", "p@ss:w/rd"),
            ("POSTGRES_SERVER", "db"),
            ("POSTGRES_DB", "main"),
        ]);
        assert_eq!(
            l.postgres_url_from_parts().unwrap(),
            "postgres://app:p%40ss%3Aw%2Frd@db:5432/main"
        );
    }

    #[test]
    fn overflow_without_size_is_refused() {
        let err = layer(&[("DB_MAX_OVERFLOW", "5")]).check().unwrap_err();
        assert!(err.to_string().contains("DB_MAX_OVERFLOW"), "{err}");
    }
}

//! Where the configuration comes from: the layers (defaults, TOML file,
//! `.env`, environment) and their merge. The only module that knows the
//! configuration is read with figment, so the library can move off it
//! without changing its API; the `figment` feature exposes the merge for
//! custom layering.

mod env;
mod explain;

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};

pub use explain::Setting;

use crate::config::{Config, DEFAULT_CONFIG_FILE};
use crate::error::{Error, Result};
use env::EnvLayer;

impl Config {
    /// Extracts and validates a configuration from any figment, for custom
    /// layering (feature `figment`). Start from [`ConfigLoader::figment`] to
    /// keep the standard layers.
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    #[cfg(feature = "figment")]
    pub fn from_figment(figment: &Figment) -> Result<Config> {
        extract(figment)
    }
}

/// Extracts and validates the configuration of a merged figment.
fn extract(figment: &Figment) -> Result<Config> {
    let config: Config = figment.extract().map_err(from_figment_error)?;
    config.validate()?;
    Ok(config)
}

/// Where the configuration layers come from; [`Config::load`] uses the
/// defaults.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ConfigLoader {
    file: Option<PathBuf>,
    dotenv: Option<Option<PathBuf>>,
    env: Option<Vec<(String, String)>>,
}

impl ConfigLoader {
    /// The standard layers.
    pub fn new() -> Self {
        ConfigLoader::default()
    }

    /// Read this TOML file; it must exist. Default: `$DBMANAGER_CONFIG`
    /// (must exist) or `dbmanager.toml` (optional).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Read this `.env` file (optional). Default: `.env`.
    pub fn dotenv(mut self, path: impl Into<PathBuf>) -> Self {
        self.dotenv = Some(Some(path.into()));
        self
    }

    /// Read no `.env` file.
    pub fn no_dotenv(mut self) -> Self {
        self.dotenv = Some(None);
        self
    }

    /// Use these variables instead of the process environment. Default: the
    /// process environment.
    pub fn env_vars<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.env = Some(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    fn env_var(&self, name: &str) -> Option<String> {
        match &self.env {
            Some(vars) => vars
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone()),
            None => std::env::var(name).ok(),
        }
        .filter(|v| !v.is_empty())
    }

    /// The TOML file to read and whether it must exist.
    fn config_file(&self) -> (PathBuf, bool) {
        match (&self.file, self.env_var(env::CONFIG_FILE_VAR)) {
            (Some(path), _) => (path.clone(), true),
            (None, Some(path)) => (PathBuf::from(path), true),
            (None, None) => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        }
    }

    fn env_layers(&self) -> Result<(EnvLayer, EnvLayer)> {
        let dotenv = match &self.dotenv {
            None => EnvLayer::dotenv(Path::new(".env"))?,
            Some(Some(path)) => EnvLayer::dotenv(path)?,
            Some(None) => EnvLayer::empty(),
        };
        let process = match &self.env {
            Some(vars) => EnvLayer::from_vars("environment", vars.clone(), &dotenv),
            None => EnvLayer::process(&dotenv),
        };
        dotenv.check()?;
        process.check()?;
        Ok((dotenv, process))
    }

    /// The layered figment, before extraction: defaults, file, `.env`,
    /// environment (feature `figment`).
    ///
    /// # Errors
    ///
    /// [`Error::ConfigFile`] for a named file that does not exist or a
    /// `.env` that cannot be parsed; [`Error::Config`] for a bad well-known
    /// variable (`DB_POOL_SIZE=abc`).
    #[cfg(feature = "figment")]
    pub fn figment(&self) -> Result<Figment> {
        self.layers()
    }

    /// The merged layers: defaults, file, `.env`, environment.
    fn layers(&self) -> Result<Figment> {
        let (file, must_exist) = self.config_file();
        if must_exist && !file.is_file() {
            return Err(Error::ConfigFile {
                path: file,
                problem: "does not exist (named by DBMANAGER_CONFIG or --config)".into(),
            });
        }
        let (dotenv, process) = self.env_layers()?;
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if file.exists() {
            figment = figment.merge(Toml::file_exact(file));
        }
        Ok(figment.merge(dotenv).merge(process))
    }

    /// Loads and validates the configuration.
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn load(&self) -> Result<Config> {
        extract(&self.layers()?)
    }

    /// Every effective setting with the layer it came from, secrets
    /// redacted; what `dbmanager config show` prints.
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn explain(&self) -> Result<Vec<Setting>> {
        let figment = self.layers()?;
        let config = extract(&figment)?;
        explain::settings(&figment, &config)
    }
}

/// Turns figment's error into ours: the key as a dotted path (or the file),
/// where it came from, and no secret value.
fn from_figment_error(error: figment::Error) -> Error {
    let error = error
        .into_iter()
        .next()
        .expect("a figment error holds at least one error");
    let key = error.path.join(".");
    let file = error
        .metadata
        .as_ref()
        .and_then(|m| m.source.as_ref())
        .and_then(|s| s.file_path())
        .map(Path::to_path_buf);
    let secret_key = key.contains("url") || key.contains("password");
    let mut problem = match &error.kind {
        figment::error::Kind::InvalidType(_, expected)
        | figment::error::Kind::InvalidValue(_, expected)
            if secret_key =>
        {
            format!("has an invalid value; expected {expected}")
        }
        figment::error::Kind::UnknownField(field, _) => {
            let full = if key.is_empty() {
                field.clone()
            } else if key == *field || key.ends_with(&format!(".{field}")) {
                key.clone()
            } else {
                format!("{key}.{field}")
            };
            return Error::config(full, unknown_field_problem(&error));
        }
        kind => kind.to_string(),
    };
    if key.is_empty() {
        if let Some(path) = file {
            return Error::ConfigFile {
                path,
                problem: one_line(&problem),
            };
        }
        return Error::config("(configuration)", problem);
    }
    if let Some(metadata) = &error.metadata {
        let profile = error.profile.clone().unwrap_or_default();
        let parts: Vec<&str> = error.path.iter().map(String::as_str).collect();
        match &file {
            Some(path) => problem.push_str(&format!(" (in {})", path.display())),
            None => problem.push_str(&format!(
                " (from {} {})",
                metadata.name,
                metadata.interpolate(&profile, &parts)
            )),
        }
    }
    Error::config(key, problem)
}

/// Parser messages draw the offending line with a caret; keep the words
/// only, so the error stays one line (and shows no value from the file).
fn one_line(message: &str) -> String {
    let is_drawing = |line: &str| {
        line.starts_with('|')
            || line
                .split_once(" |")
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
    };
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_drawing(l))
        .collect::<Vec<_>>()
        .join(": ")
}

fn unknown_field_problem(error: &figment::Error) -> String {
    let profile = error.profile.clone().unwrap_or_default();
    let parts: Vec<&str> = error.path.iter().map(String::as_str).collect();
    let origin = error
        .metadata
        .as_ref()
        .map(|m| match m.source.as_ref().and_then(|s| s.file_path()) {
            Some(path) => format!(" in {}", path.display()),
            None => format!(" (from {} {})", m.name, m.interpolate(&profile, &parts)),
        })
        .unwrap_or_default();
    match &error.kind {
        figment::error::Kind::UnknownField(_, expected) if !expected.is_empty() => {
            format!(
                "is not a known setting{origin}; expected one of {}",
                expected.join(", ")
            )
        }
        _ => format!("is not a known setting{origin}"),
    }
}

//! The effective configuration with where each value came from, for
//! `dbmanager config show`.

use figment::Figment;
use figment::value::Value;

use crate::config::Config;
use crate::error::{Error, Result};

/// One effective setting.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Setting {
    /// Dotted key (`postgres.pool.max_size`).
    pub key: String,
    /// The value as TOML would show it; secrets are `[redacted]`.
    pub value: String,
    /// Where it came from: `default`, `file dbmanager.toml`,
    /// `environment DB_POOL_SIZE`, `.env file DATABASE_URL`.
    pub source: String,
}

pub(super) fn settings(figment: &Figment, config: &Config) -> Result<Vec<Setting>> {
    // Serializing the config redacts its secrets.
    let value = Value::serialize(config)
        .map_err(|e| Error::config("(configuration)", format!("cannot be shown: {e}")))?;
    let mut out = Vec::new();
    walk(figment, "", &value, &mut out);
    Ok(out)
}

fn walk(figment: &Figment, prefix: &str, value: &Value, out: &mut Vec<Setting>) {
    if let Value::Dict(_, dict) = value {
        for (k, v) in dict {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            walk(figment, &key, v, out);
        }
        return;
    }
    out.push(Setting {
        key: prefix.to_string(),
        value: render(value),
        source: source_of(figment, prefix),
    });
}

fn render(value: &Value) -> String {
    match value {
        Value::String(_, s) => format!("{s:?}"),
        Value::Char(_, c) => format!("{:?}", c.to_string()),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => match (n.to_u128(), n.to_i128(), n.to_f64()) {
            (Some(u), _, _) => u.to_string(),
            (None, Some(i), _) => i.to_string(),
            (None, None, Some(f)) => f.to_string(),
            (None, None, None) => String::new(),
        },
        Value::Empty(_, _) => "(none)".into(),
        Value::Array(_, items) => format!(
            "[{}]",
            items.iter().map(render).collect::<Vec<_>>().join(", ")
        ),
        Value::Dict(_, _) => "{...}".into(),
    }
}

fn source_of(figment: &Figment, key: &str) -> String {
    // Keys absent from every layer (options left unset) come from defaults.
    if figment.find_value(key).is_err() {
        return "default".into();
    }
    let Some(metadata) = figment.find_metadata(key) else {
        return "default".into();
    };
    if let Some(path) = metadata.source.as_ref().and_then(|s| s.file_path()) {
        if metadata.name.contains(".env") {
            let parts: Vec<&str> = key.split('.').collect();
            return format!(
                ".env file {} ({})",
                metadata.interpolate(&Default::default(), &parts),
                path.display()
            );
        }
        return format!("file {}", path.display());
    }
    if metadata.name.starts_with("environment") {
        let parts: Vec<&str> = key.split('.').collect();
        return format!(
            "environment {}",
            metadata.interpolate(&Default::default(), &parts)
        );
    }
    "default".into()
}

//! Read replicas (`[postgres.replicas]`): where they are, how far behind
//! one may be before it gets no reads, and what happens when none can
//! serve.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::secret::DatabaseUrl;
use super::url::ConnectionString;
use crate::error::{Problems, positive};

/// Parameters of the primary's URL that make no sense for one replica: a
/// replica is one server, and it is read-only.
const PRIMARY_ONLY_PARAMS: &[&str] = &["hostaddr", "target_session_attrs", "load_balance_hosts"];

/// Read replica settings (`[postgres.replicas]`), used by
/// `db.postgres()?.replica()`.
///
/// Each replica gets a pool of its own with the settings of
/// `[postgres.pool]`, and is checked every `check_interval`: whether it
/// answers, and how far its replay is behind. Checkouts go to the least
/// busy replica that answers and is within `max_lag`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PostgresReplicasConfig {
    /// Replica URLs, each with its own credentials. Default: none.
    pub urls: Vec<DatabaseUrl>,
    /// Replica hosts (`host`, `host:port`, `[::1]:5433`) reached with the
    /// primary URL's user, password, database and parameters (less
    /// `target_session_attrs`, `hostaddr` and `load_balance_hosts`, which
    /// are about choosing the primary). Default: none.
    pub hosts: Vec<String>,
    /// A replica whose replay is further behind than this gets no new
    /// checkouts until it catches up. Default: 10 s.
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
    /// A replica whose replay is more than this many bytes of WAL behind
    /// the primary's position gets no new checkouts (judged when the
    /// primary answers the check). The time lag cannot see WAL not yet
    /// received: a replica that replayed all it received counts as 0 s
    /// behind however far its receiver trails. Default: none.
    pub max_lag_bytes: Option<u64>,
    /// What `replica().get()` does when no replica can serve (all down or
    /// lagging, or none configured). Default: `primary`.
    pub fallback: ReplicaFallback,
    /// How often every replica is checked (state and lag). A replica that
    /// went down or fell behind stops receiving checkouts within about this
    /// plus `check_timeout`; a checkout that cannot connect to it marks it
    /// down at once. Default: 1 s.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// How long one replica's check may take before it counts as down.
    /// Default: 2 s.
    #[serde(with = "humantime_serde")]
    pub check_timeout: Duration,
}

impl Default for PostgresReplicasConfig {
    fn default() -> Self {
        PostgresReplicasConfig {
            urls: Vec::new(),
            hosts: Vec::new(),
            max_lag: Duration::from_secs(10),
            max_lag_bytes: None,
            fallback: ReplicaFallback::Primary,
            check_interval: Duration::from_secs(1),
            check_timeout: Duration::from_secs(2),
        }
    }
}

/// What `replica().get()` does when no replica can serve
/// (`postgres.replicas.fallback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ReplicaFallback {
    /// Hand out a connection of the primary's pool: reads keep working,
    /// at the primary's cost.
    #[default]
    Primary,
    /// Fail with [`crate::Error::NoReplica`]: for reads that must not load
    /// the primary.
    Error,
}

impl PostgresReplicasConfig {
    /// Whether any replica is configured.
    pub fn is_configured(&self) -> bool {
        !self.urls.is_empty() || !self.hosts.is_empty()
    }

    pub(super) fn check(&self, primary: Option<&DatabaseUrl>, p: &mut Problems) {
        for (i, url) in self.urls.iter().enumerate() {
            super::postgres::check_url(&format!("postgres.replicas.urls[{i}]"), url, p);
        }
        if !self.hosts.is_empty() && primary.is_none() {
            p.push(
                "postgres.replicas.hosts",
                "reuses the primary URL's credentials, but postgres.url is not set",
            );
        }
        for (i, host) in self.hosts.iter().enumerate() {
            if let Err(problem) = split_host(host) {
                p.push(&format!("postgres.replicas.hosts[{i}]"), problem);
            }
        }
        positive("postgres.replicas.max_lag", self.max_lag, p);
        if self.max_lag_bytes == Some(0) {
            p.push(
                "postgres.replicas.max_lag_bytes",
                "must be at least 1 (a replica is never exactly at the primary's position while it writes)",
            );
        }
        positive("postgres.replicas.check_interval", self.check_interval, p);
        positive("postgres.replicas.check_timeout", self.check_timeout, p);
    }

    /// Every replica's URL, in configuration order: `urls`, then `hosts`
    /// on the primary's URL.
    pub(crate) fn replica_urls(&self, primary: Option<&DatabaseUrl>) -> Vec<DatabaseUrl> {
        let mut urls = self.urls.clone();
        let primary = primary.and_then(|url| ConnectionString::parse(url.expose()).ok());
        if let Some(primary) = primary {
            for host in &self.hosts {
                if let Ok((name, port)) = split_host(host) {
                    let url = primary
                        .with_host(name, port)
                        .without_params(PRIMARY_ONLY_PARAMS);
                    urls.push(DatabaseUrl::new(url));
                }
            }
        }
        urls
    }
}

/// `host`, `host:port` or `[v6]:port` as the host and the port, if any.
fn split_host(host: &str) -> Result<(&str, Option<u16>), String> {
    let host = host.trim();
    if host.is_empty() {
        return Err("is empty".into());
    }
    if host.contains(',') || host.contains('/') || host.contains('@') {
        return Err(format!(
            "`{host}` is not one host: write `host` or `host:port`, one entry per replica"
        ));
    }
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((name, "")) => (name, None),
            Some((name, port)) => match port.strip_prefix(':') {
                Some(port) => (name, Some(port)),
                None => return Err(format!("`{host}`: expected `[address]:port`")),
            },
            None => return Err(format!("`{host}`: `[` without `]`")),
        },
        None => match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    let port = port
        .map(|port| {
            port.parse::<u16>()
                .ok()
                .filter(|port| *port > 0)
                .ok_or_else(|| format!("`{host}`: the port must be a number from 1 to 65535"))
        })
        .transpose()?;
    Ok((name, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_take_the_primary_url_without_its_primary_only_parameters() {
        let config = PostgresReplicasConfig {
            hosts: vec![
                "replica-a".into(),
                "10.0.0.7:5433".into(),
                "[::1]:6000".into(),
            ],
            ..Default::default()
        };
        let primary = DatabaseUrl::new(
            "postgres://app:s3cret@p1:5432,p2:5432/app?sslmode=require&target_session_attrs=read-write",
        );
        let urls: Vec<String> = config
            .replica_urls(Some(&primary))
            .iter()
            .map(|u| u.expose().to_string())
            .collect();
        assert_eq!(
            urls,
            [
                "postgres://app:s3cret@replica-a/app?sslmode=require",
                "postgres://app:s3cret@10.0.0.7:5433/app?sslmode=require",
                "postgres://app:s3cret@[::1]:6000/app?sslmode=require",
            ]
        );
        let key_value = DatabaseUrl::new("host=p1 port=5432 user=app password=pw dbname=app");
        let urls = config.replica_urls(Some(&key_value));
        assert_eq!(
            urls[1].expose(),
            "host=10.0.0.7 port=5433 user=app password=pw dbname=app"
        );
    }

    #[test]
    fn a_bad_host_is_a_config_problem() {
        for bad in ["", "a,b", "h:0", "h:x", "[::1", "u@h", "[::1]x"] {
            assert!(split_host(bad).is_err(), "{bad:?}");
        }
    }
}

//! A PostgreSQL connection string, parsed once into typed options with
//! libpq's rules (not re-rendered for tokio-postgres to parse again).
//!
//! [`ConnectionString`] splits the text (URL or key/value); this gives each
//! value its type and libpq's meaning: percent-decoded URL parts, host,
//! `hostaddr` and port lists with an empty entry meaning the default, no
//! host at all meaning libpq's default Unix socket directory,
//! `connect_timeout` in whole seconds (0 or less: none),
//! `tcp_user_timeout` in milliseconds, and the six `sslmode`s. The result
//! carries the driver's settings in a `tokio_postgres::Config` built with
//! its setters, plus what tokio-postgres has no field for (the libpq
//! `sslmode`, the certificate files).

use std::net::IpAddr;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use tokio_postgres::config::{
    ChannelBinding, LoadBalanceHosts, SslNegotiation, TargetSessionAttrs,
};

use super::url::{ConnectionString, UrlParts};

/// The port libpq uses when none is given (or an empty one).
pub(crate) const DEFAULT_PORT: u16 = 5432;

/// Where libpq looks for the server's socket when the string names no host:
/// Debian's and Ubuntu's libpq (`DEFAULT_PGSOCKET_DIR`, as `pg_config
/// --configure` shows: `--runstatedir=/run`); upstream builds use `/tmp`.
pub(crate) const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// Its name as written in a connection string.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A connection string's options, typed. `Debug` is tokio-postgres'
/// own, which redacts the password.
#[derive(Debug, Clone)]
pub(crate) struct PgOptions {
    /// Everything tokio-postgres has a field for: hosts (one port per
    /// host), credentials, database, session options, timeouts,
    /// keepalives, `target_session_attrs`, `channel_binding`,
    /// `load_balance_hosts`. Its `ssl_mode` is left at the default: the
    /// connect path sets it per attempt from [`PgOptions::sslmode`].
    pub config: tokio_postgres::Config,
    /// `sslmode` as written; `None` when absent (libpq: `prefer`, or
    /// `verify-full` with `sslrootcert=system`).
    pub sslmode: Option<SslMode>,
    /// The certificate files, read by the TLS connector (feature `tls`).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub sslrootcert: Option<String>,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub sslcert: Option<String>,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub sslkey: Option<String>,
}

/// Parameter names libpq knows that this crate does not act on: named in
/// an error (any other name is not quoted, since a mis-split password can
/// land in the key position).
const LIBPQ_UNSUPPORTED: &[&str] = &[
    "passfile",
    "service",
    "gssencmode",
    "gsslib",
    "gssdelegation",
    "krbsrvname",
    "requirepeer",
    "require_auth",
    "sslcompression",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslpassword",
    "sslcertmode",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "replication",
    "client_encoding",
    "requiressl",
];

impl PgOptions {
    /// Parses `input` (a URL or a key/value string). The error says what is
    /// wrong without quoting a value.
    pub(crate) fn parse(input: &str) -> Result<PgOptions, String> {
        let parsed = ConnectionString::parse(input)?;
        PgOptions::from_parsed(&parsed)
    }

    /// Types an already split connection string.
    pub(crate) fn from_parsed(parsed: &ConnectionString) -> Result<PgOptions, String> {
        let mut raw = Raw::default();
        match parsed {
            ConnectionString::Url(url) => raw.url(url)?,
            ConnectionString::KeyValue(pairs) => {
                for (key, value) in pairs {
                    raw.set(key, value.clone())?;
                }
            }
        }
        raw.build()
    }
}

/// The values as written (decoded), last one of each key winning, as in
/// libpq.
#[derive(Default)]
struct Raw {
    host: Option<String>,
    hostaddr: Option<String>,
    port: Option<String>,
    user: Option<String>,
    password: Option<String>,
    dbname: Option<String>,
    options: Option<String>,
    application_name: Option<String>,
    fallback_application_name: Option<String>,
    connect_timeout: Option<String>,
    tcp_user_timeout: Option<String>,
    keepalives: Option<String>,
    keepalives_idle: Option<String>,
    keepalives_interval: Option<String>,
    keepalives_retries: Option<String>,
    target_session_attrs: Option<String>,
    channel_binding: Option<String>,
    load_balance_hosts: Option<String>,
    sslmode: Option<String>,
    sslnegotiation: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
}

fn decode(value: &str, what: &str) -> Result<String, String> {
    percent_decode_str(value)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("has a {what} whose percent-encoding does not decode to UTF-8"))
}

impl Raw {
    fn set(&mut self, key: &str, value: String) -> Result<(), String> {
        let slot = match key {
            "host" => &mut self.host,
            "hostaddr" => &mut self.hostaddr,
            "port" => &mut self.port,
            "user" => &mut self.user,
            "password" => &mut self.password,
            "dbname" => &mut self.dbname,
            "options" => &mut self.options,
            "application_name" => &mut self.application_name,
            "fallback_application_name" => &mut self.fallback_application_name,
            "connect_timeout" => &mut self.connect_timeout,
            "tcp_user_timeout" => &mut self.tcp_user_timeout,
            "keepalives" => &mut self.keepalives,
            "keepalives_idle" => &mut self.keepalives_idle,
            "keepalives_interval" => &mut self.keepalives_interval,
            "keepalives_retries" => &mut self.keepalives_retries,
            "target_session_attrs" => &mut self.target_session_attrs,
            "channel_binding" => &mut self.channel_binding,
            "load_balance_hosts" => &mut self.load_balance_hosts,
            "sslmode" => &mut self.sslmode,
            "sslnegotiation" => &mut self.sslnegotiation,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            key if LIBPQ_UNSUPPORTED.contains(&key) => {
                return Err(format!(
                    "has parameter `{key}`, which libpq knows but dbmanager does not support"
                ));
            }
            _ => {
                return Err(
                    "has an unknown parameter (its name is not repeated: it may be part of a password)"
                        .into(),
                );
            }
        };
        *slot = Some(value);
        Ok(())
    }

    /// The URL form: `scheme://[user[:password]@][host[:port][,...]][/dbname][?k=v&...]`,
    /// each part percent-decoded; query parameters override the parts.
    fn url(&mut self, url: &UrlParts) -> Result<(), String> {
        if url.scheme != "postgres" && url.scheme != "postgresql" {
            return Err(format!(
                "has scheme `{}`; expected `postgres://` or `postgresql://`",
                url.scheme
            ));
        }
        if let Some(user) = url.user.as_deref().filter(|u| !u.is_empty()) {
            self.user = Some(decode(user, "user name")?);
        }
        if let Some(password) = &url.password {
            self.password = Some(decode(password, "password")?);
        }
        if !url.hosts.is_empty() {
            let mut hosts = Vec::new();
            let mut ports = Vec::new();
            for spec in url.hosts.split(',') {
                let (host, port) = split_host_port(spec)?;
                hosts.push(decode(host, "host")?);
                ports.push(port.to_string());
            }
            self.host = Some(hosts.join(","));
            if ports.iter().any(|p| !p.is_empty()) {
                self.port = Some(ports.join(","));
            }
        }
        if let Some(path) = url.path.as_deref().filter(|p| !p.is_empty()) {
            self.dbname = Some(decode(path, "database name")?);
        }
        for (key, value) in &url.query {
            // libpq's URI form spells `ssl=true` as `sslmode=require`.
            if key == "ssl" && value == "true" {
                self.sslmode = Some("require".into());
                continue;
            }
            let value = decode(value, "query parameter")?;
            self.set(key, value)?;
        }
        Ok(())
    }

    fn build(self) -> Result<PgOptions, String> {
        let mut config = tokio_postgres::Config::new();
        let hosts = list(self.host.as_deref());
        let hostaddrs = list(self.hostaddr.as_deref());
        let ports = list(self.port.as_deref());
        let count = hosts.len().max(hostaddrs.len()).max(1);
        if !hosts.is_empty() && !hostaddrs.is_empty() && hosts.len() != hostaddrs.len() {
            return Err(format!(
                "names {} hosts and {} hostaddrs; give one hostaddr per host",
                hosts.len(),
                hostaddrs.len()
            ));
        }
        if ports.len() > 1 && ports.len() != count {
            return Err(format!(
                "names {count} hosts and {} ports; give one port, or one per host",
                ports.len()
            ));
        }
        for i in 0..count {
            let addr = hostaddrs.get(i).copied().unwrap_or("");
            let host = hosts.get(i).copied().unwrap_or("");
            if !addr.is_empty() {
                let ip: IpAddr = addr
                    .parse()
                    .map_err(|_| "has a hostaddr that is not an IP address".to_string())?;
                config.hostaddr(ip);
            }
            if host.is_empty() {
                // libpq: no host (and no hostaddr) is the default socket
                // directory; a hostaddr alone connects over TCP, and the
                // host list then stands for nothing.
                if addr.is_empty() || !hosts.is_empty() {
                    if addr.is_empty() {
                        config.host_path(DEFAULT_SOCKET_DIR);
                    } else {
                        config.host(addr);
                    }
                }
            } else {
                config.host(host);
            }
            let port = match ports.get(i).or(ports.first()).copied() {
                None | Some("") => DEFAULT_PORT,
                Some(p) => p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or("has a port that is not a number from 1 to 65535")?,
            };
            config.port(port);
        }
        if let Some(user) = self.user {
            config.user(user);
        }
        if let Some(password) = self.password {
            config.password(password);
        }
        if let Some(dbname) = self.dbname {
            config.dbname(dbname);
        }
        if let Some(options) = self.options {
            config.options(options);
        }
        if let Some(name) = self.application_name.or(self.fallback_application_name) {
            config.application_name(name);
        }
        if let Some(secs) = int("connect_timeout", self.connect_timeout.as_deref())?
            && secs > 0
        {
            // libpq rounds 1 up to 2: "rounding could cause connection to
            // fail unexpectedly quickly".
            config.connect_timeout(Duration::from_secs(secs.max(2) as u64));
        }
        if let Some(ms) = int("tcp_user_timeout", self.tcp_user_timeout.as_deref())?
            && ms > 0
        {
            config.tcp_user_timeout(Duration::from_millis(ms as u64));
        }
        if let Some(on) = int("keepalives", self.keepalives.as_deref())? {
            config.keepalives(on != 0);
        }
        if let Some(secs) = int("keepalives_idle", self.keepalives_idle.as_deref())?
            && secs > 0
        {
            config.keepalives_idle(Duration::from_secs(secs as u64));
        }
        if let Some(secs) = int("keepalives_interval", self.keepalives_interval.as_deref())?
            && secs > 0
        {
            config.keepalives_interval(Duration::from_secs(secs as u64));
        }
        if let Some(n) = int("keepalives_retries", self.keepalives_retries.as_deref())?
            && n > 0
        {
            config.keepalives_retries(u32::try_from(n).unwrap_or(u32::MAX));
        }
        if let Some(value) = self.target_session_attrs.as_deref() {
            config.target_session_attrs(match value {
                "any" => TargetSessionAttrs::Any,
                "read-write" => TargetSessionAttrs::ReadWrite,
                "read-only" => TargetSessionAttrs::ReadOnly,
                "primary" | "standby" | "prefer-standby" => {
                    return Err(format!(
                        "has target_session_attrs `{value}`, not supported (any, read-write, read-only are)"
                    ));
                }
                _ => return Err(invalid("target_session_attrs")),
            });
        }
        if let Some(value) = self.channel_binding.as_deref() {
            config.channel_binding(match value {
                "disable" => ChannelBinding::Disable,
                "prefer" => ChannelBinding::Prefer,
                "require" => ChannelBinding::Require,
                _ => return Err(invalid("channel_binding")),
            });
        }
        if let Some(value) = self.load_balance_hosts.as_deref() {
            config.load_balance_hosts(match value {
                "disable" => LoadBalanceHosts::Disable,
                "random" => LoadBalanceHosts::Random,
                _ => return Err(invalid("load_balance_hosts")),
            });
        }
        if let Some(value) = self.sslnegotiation.as_deref() {
            config.ssl_negotiation(match value {
                "postgres" => SslNegotiation::Postgres,
                "direct" => SslNegotiation::Direct,
                _ => return Err(invalid("sslnegotiation")),
            });
        }
        let sslmode = match self.sslmode.as_deref() {
            None => None,
            Some(value) => Some(SslMode::parse(value).ok_or_else(|| {
                format!("has unknown sslmode `{value}`; expected one of disable, allow, prefer, require, verify-ca, verify-full")
            })?),
        };
        Ok(PgOptions {
            config,
            sslmode,
            sslrootcert: self.sslrootcert,
            sslcert: self.sslcert,
            sslkey: self.sslkey,
        })
    }
}

fn invalid(key: &str) -> String {
    format!("has an invalid value for `{key}`")
}

/// An integer parameter, as libpq reads it (surrounding spaces allowed).
fn int(key: &str, value: Option<&str>) -> Result<Option<i64>, String> {
    value
        .map(|v| v.trim().parse::<i64>().map_err(|_| invalid(key)))
        .transpose()
}

/// A comma-separated list; an absent or empty value is no entry.
fn list(value: Option<&str>) -> Vec<&str> {
    match value {
        None | Some("") => Vec::new(),
        Some(v) => v.split(',').map(str::trim).collect(),
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`; the port may be empty.
fn split_host_port(spec: &str) -> Result<(&str, &str), String> {
    if let Some(rest) = spec.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("has an IPv6 host without its closing `]`")?;
        return match after {
            "" => Ok((host, "")),
            port => port
                .strip_prefix(':')
                .map(|p| (host, p))
                .ok_or_else(|| "has text after an IPv6 host's `]`".to_string()),
        };
    }
    Ok(match spec.rsplit_once(':') {
        Some((host, port)) => (host, port),
        None => (spec, ""),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::Host;

    fn hosts(o: &PgOptions) -> Vec<String> {
        o.config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect()
    }

    #[test]
    fn empty_port_is_the_default_port() {
        let o = PgOptions::parse("postgres://u@127.0.0.1:/db").unwrap();
        assert_eq!(hosts(&o), ["127.0.0.1"]);
        assert_eq!(o.config.get_ports(), [5432]);
        let o = PgOptions::parse("host=a,b port=,5433").unwrap();
        assert_eq!(o.config.get_ports(), [5432, 5433]);
    }

    #[test]
    fn no_host_is_the_default_socket_directory() {
        for input in ["postgres:///db", "postgres://u@/db", "dbname=x user=u"] {
            let o = PgOptions::parse(input).unwrap();
            assert_eq!(hosts(&o), [DEFAULT_SOCKET_DIR], "{input}");
            assert_eq!(o.config.get_ports(), [5432]);
        }
        let o = PgOptions::parse("postgres://%2Ftmp%2Fpg:5433/db").unwrap();
        assert_eq!(hosts(&o), ["/tmp/pg"]);
        assert_eq!(o.config.get_ports(), [5433]);
    }

    #[test]
    fn url_parts_are_decoded_and_query_overrides() {
        let o = PgOptions::parse(
            "postgresql://a%40b:p%2Fw@h1:1,[::1]:2/d%20b?application_name=x%20y&connect_timeout=3&tcp_user_timeout=1500&sslmode=allow",
        )
        .unwrap();
        assert_eq!(o.config.get_user(), Some("a@b"));
        assert_eq!(o.config.get_password(), Some(&b"p/w"[..]));
        assert_eq!(o.config.get_dbname(), Some("d b"));
        assert_eq!(hosts(&o), ["h1", "::1"]);
        assert_eq!(o.config.get_ports(), [1, 2]);
        assert_eq!(o.config.get_application_name(), Some("x y"));
        assert_eq!(
            o.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        assert_eq!(
            o.config.get_tcp_user_timeout(),
            Some(&Duration::from_millis(1500))
        );
        assert_eq!(o.sslmode, Some(SslMode::Allow));
    }

    #[test]
    fn hostaddr_alone_and_with_hosts() {
        let o = PgOptions::parse("hostaddr=127.0.0.1 port=5433").unwrap();
        assert_eq!(o.config.get_hostaddrs().len(), 1);
        assert_eq!(hosts(&o), Vec::<String>::new());
        let o = PgOptions::parse("host=a,b hostaddr=127.0.0.1,127.0.0.2").unwrap();
        assert_eq!(hosts(&o), ["a", "b"]);
        assert_eq!(o.config.get_hostaddrs().len(), 2);
        assert!(PgOptions::parse("host=a,b hostaddr=127.0.0.1").is_err());
        assert!(PgOptions::parse("host=a,b,c port=1,2").is_err());
    }

    #[test]
    fn zero_or_negative_connect_timeout_is_none() {
        for t in ["0", "-1"] {
            let o = PgOptions::parse(&format!("host=h connect_timeout={t}")).unwrap();
            assert_eq!(o.config.get_connect_timeout(), None);
        }
        assert!(PgOptions::parse("host=h connect_timeout=soon").is_err());
    }

    #[test]
    fn unknown_keys_are_not_quoted() {
        let err = PgOptions::parse("postgres://u:p@h/db?hunter2=x").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let err = PgOptions::parse("host=h passfile=/x").unwrap_err();
        assert!(err.contains("passfile"), "{err}");
        assert!(PgOptions::parse("mysql://u@h/db").is_err());
    }
}

//! Just enough connection-string handling to redact, inspect and rewrite
//! PostgreSQL and MongoDB URLs without a URL crate.
//!
//! Two forms are understood: URLs (`scheme://user:pass@host:port/db?k=v`,
//! several comma-separated hosts allowed) and libpq key/value strings
//! (`host=db user=app password='x y'`). Parse errors never quote the input,
//! since it may hold a password.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use super::secret::REDACTED;

/// Characters left as they are in a URL's user, password or path: RFC 3986's
/// unreserved set.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a user name, password or database name for a URL.
pub(crate) fn encode_userinfo(value: &str) -> String {
    utf8_percent_encode(value, COMPONENT).to_string()
}

fn decode(value: &str) -> Result<String, String> {
    percent_decode_str(value)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "percent-encoding does not decode to UTF-8".to_string())
}

/// A parsed connection string.
#[derive(Debug, Clone)]
pub(crate) enum ConnectionString {
    Url(UrlParts),
    KeyValue(Vec<(String, String)>),
}

/// The pieces of a URL, each still percent-encoded as written.
#[derive(Debug, Clone)]
pub(crate) struct UrlParts {
    pub scheme: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub hosts: String,
    pub path: Option<String>,
    pub query: Vec<(String, String)>,
}

impl ConnectionString {
    /// Parses a URL or a key/value string. The error says what is wrong
    /// without repeating the input.
    pub fn parse(input: &str) -> Result<Self, String> {
        let input = input.trim();
        if input.is_empty() {
            return Err("is empty".into());
        }
        match input.split_once("://") {
            Some((scheme, rest)) => parse_url(scheme, rest).map(ConnectionString::Url),
            None if input.contains('=') => parse_key_value(input).map(ConnectionString::KeyValue),
            None => {
                Err("is neither a URL (`scheme://...`) nor a key=value connection string".into())
            }
        }
    }

    /// The password, percent-decoded.
    pub fn password(&self) -> Option<String> {
        match self {
            ConnectionString::Url(u) => u.password.as_deref().and_then(|p| decode(p).ok()),
            ConnectionString::KeyValue(pairs) => lookup(pairs, "password"),
        }
    }

    /// The user name, percent-decoded.
    pub fn user(&self) -> Option<String> {
        match self {
            ConnectionString::Url(u) => u.user.as_deref().and_then(|p| decode(p).ok()),
            ConnectionString::KeyValue(pairs) => lookup(pairs, "user"),
        }
    }

    /// The database name (URL path or `dbname`), percent-decoded.
    pub fn database(&self) -> Option<String> {
        match self {
            ConnectionString::Url(u) => u
                .path
                .as_deref()
                .filter(|p| !p.is_empty())
                .and_then(|p| decode(p).ok()),
            ConnectionString::KeyValue(pairs) => lookup(pairs, "dbname"),
        }
    }

    /// The hosts part (`host:port[,host:port]`), for display.
    pub fn hosts(&self) -> String {
        match self {
            ConnectionString::Url(u) => u.hosts.clone(),
            ConnectionString::KeyValue(pairs) => {
                let host = lookup(pairs, "host").unwrap_or_else(|| "localhost".into());
                match lookup(pairs, "port") {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                }
            }
        }
    }

    /// A query parameter (URL) or key (key/value form).
    pub fn param(&self, key: &str) -> Option<String> {
        match self {
            ConnectionString::Url(u) => u
                .query
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| decode(v).ok()),
            ConnectionString::KeyValue(pairs) => lookup(pairs, key),
        }
    }

    /// The string again, with the database replaced.
    pub fn with_database(&self, database: &str) -> String {
        match self.clone() {
            ConnectionString::Url(mut u) => {
                u.path = Some(encode_userinfo(database));
                u.render(false)
            }
            ConnectionString::KeyValue(mut pairs) => {
                pairs.retain(|(k, _)| k != "dbname");
                pairs.push(("dbname".into(), database.into()));
                render_key_value(&pairs, false)
            }
        }
    }

    /// The connection string with one host in place of its host list (and
    /// its `hostaddr`): `port` when given, else the default port.
    pub fn with_host(&self, host: &str, port: Option<u16>) -> ConnectionString {
        match self.clone() {
            ConnectionString::Url(mut u) => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.to_string()
                };
                u.hosts = match port {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                };
                u.query
                    .retain(|(k, _)| !matches!(k.as_str(), "host" | "hostaddr" | "port"));
                ConnectionString::Url(u)
            }
            ConnectionString::KeyValue(mut pairs) => {
                pairs.retain(|(k, _)| k != "hostaddr");
                set_pair(&mut pairs, "host", Some(host.to_string()));
                set_pair(&mut pairs, "port", port.map(|p| p.to_string()));
                ConnectionString::KeyValue(pairs)
            }
        }
    }

    /// The string again without these parameters (URL query parameters or
    /// key/value pairs).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub fn without_params(&self, keys: &[&str]) -> String {
        match self.clone() {
            ConnectionString::Url(mut u) => {
                u.query.retain(|(k, _)| !keys.contains(&k.as_str()));
                u.render(false)
            }
            ConnectionString::KeyValue(mut pairs) => {
                pairs.retain(|(k, _)| !keys.contains(&k.as_str()));
                render_key_value(&pairs, false)
            }
        }
    }

    /// The string with the password replaced by `[redacted]`.
    pub fn redacted(&self) -> String {
        match self {
            ConnectionString::Url(u) => u.render(true),
            ConnectionString::KeyValue(pairs) => render_key_value(pairs, true),
        }
    }

    /// A short credential-free description: `user@host:port/db`.
    pub fn target(&self) -> String {
        let mut out = String::new();
        if let Some(user) = self.user() {
            out.push_str(&user);
            out.push('@');
        }
        out.push_str(&self.hosts());
        if let Some(db) = self.database() {
            out.push('/');
            out.push_str(&db);
        }
        out
    }
}

/// Parameters whose value is (or carries) a credential: passwords
/// (`password`, `sslpassword`), tokens and secrets in any spelling, and
/// MongoDB's `authMechanismProperties`, which holds an AWS session token or
/// an OIDC token.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password")
        || key.contains("token")
        || key.contains("secret")
        || key.contains("credential")
        || key == "pass"
        || key == "sslkey"
        || key == "authmechanismproperties"
}

impl UrlParts {
    fn render(&self, redact: bool) -> String {
        let mut out = format!("{}://", self.scheme);
        if let Some(user) = &self.user {
            out.push_str(user);
            if self.password.is_some() {
                out.push(':');
                out.push_str(if redact {
                    REDACTED
                } else {
                    self.password.as_deref().unwrap_or_default()
                });
            }
            out.push('@');
        }
        out.push_str(&self.hosts);
        if let Some(path) = &self.path {
            out.push('/');
            out.push_str(path);
        }
        if !self.query.is_empty() {
            out.push('?');
            let pairs: Vec<String> = self
                .query
                .iter()
                .map(|(k, v)| {
                    if redact && is_secret_key(k) {
                        format!("{k}={REDACTED}")
                    } else {
                        format!("{k}={v}")
                    }
                })
                .collect();
            out.push_str(&pairs.join("&"));
        }
        out
    }
}

fn parse_url(scheme: &str, rest: &str) -> Result<UrlParts, String> {
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
    {
        return Err("has an invalid URL scheme".into());
    }
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    // The authority ends at the first '/' after the last '@': a password may
    // itself contain '/' when it was not percent-encoded.
    let at = before_query.rfind('@');
    let slash = match at {
        Some(at) => before_query[at..].find('/').map(|i| at + i),
        None => before_query.find('/'),
    };
    let (authority, path) = match slash {
        Some(i) => (&before_query[..i], Some(&before_query[i + 1..])),
        None => (before_query, None),
    };
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(info) => match info.split_once(':') {
            Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
            None => (Some(info.to_string()), None),
        },
        None => (None, None),
    };
    if let Some(p) = &password {
        decode(p).map_err(|_| "has a password that is not valid percent-encoding".to_string())?;
    }
    if hosts.contains(char::is_whitespace) {
        return Err("has white space in its host".into());
    }
    for host in hosts.split(',').filter(|h| !h.is_empty()) {
        // An empty port is libpq's default port.
        if let Some((_, port)) = host.rsplit_once(':').filter(|_| !host.ends_with(']'))
            && !port.is_empty()
            && port.parse::<u16>().is_err()
        {
            return Err("has a port that is not a number from 0 to 65535".into());
        }
    }
    let query = match query {
        Some(q) if !q.is_empty() => q
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((k, v)) => Ok((k.to_string(), v.to_string())),
                // Not quoted: with an unencoded `?` in the password, the
                // "parameter" is the rest of the password.
                None => Err("has a query parameter without `=` (a `?` or `&` in the password must be percent-encoded)".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    Ok(UrlParts {
        scheme: scheme.to_string(),
        user,
        password,
        hosts: hosts.to_string(),
        path: path.map(str::to_string),
        query,
    })
}

/// Connection parameters whose names may be quoted in an error: anything
/// else in the key position could be a piece of a value.
const KNOWN_KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "connect_timeout",
    "sslmode",
    "sslnegotiation",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
    "tcp_user_timeout",
];

fn known_key(key: &str) -> String {
    if KNOWN_KEYS.contains(&key) {
        format!(" for `{key}`")
    } else {
        String::new()
    }
}

fn after_key(previous: Option<&(String, String)>) -> String {
    match previous {
        Some((key, _)) if KNOWN_KEYS.contains(&key.as_str()) => {
            format!(" after the value of `{key}`")
        }
        Some(_) => String::new(),
        None => " at its start".into(),
    }
}

fn parse_key_value(input: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = input.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            // The word is not quoted: it is most likely the rest of an
            // unquoted value with a space in it, such as a password.
            return Err(format!(
                "has a word without `=`{} (quote values that contain spaces: password='...')",
                after_key(pairs.last())
            ));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(format!(
                    "has an unterminated quoted value{}",
                    known_key(&key)
                ));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    value.extend(chars.next());
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

fn lookup(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

/// Sets `key` in place (first occurrence, others removed), appends it when
/// absent, or removes it for `None`.
fn set_pair(pairs: &mut Vec<(String, String)>, key: &str, value: Option<String>) {
    let first = pairs.iter().position(|(k, _)| k == key);
    let mut index = 0;
    pairs.retain(|(k, _)| {
        let keep = k != key || Some(index) == first;
        index += 1;
        keep
    });
    match (first, value) {
        (Some(i), Some(value)) => pairs[i].1 = value,
        (Some(i), None) => {
            pairs.remove(i);
        }
        (None, Some(value)) => pairs.push((key.to_string(), value)),
        (None, None) => {}
    }
}

fn render_key_value(pairs: &[(String, String)], redact: bool) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            if redact && is_secret_key(k) {
                format!("{k}={REDACTED}")
            } else if v.is_empty()
                || v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\')
            {
                format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parts_round_trip_and_redact() {
        let c =
            ConnectionString::parse("postgres://app:p%40ss@db:5432/app?sslmode=disable").unwrap();
        assert_eq!(c.user().as_deref(), Some("app"));
        assert_eq!(c.password().as_deref(), Some("p@ss"));
        assert_eq!(c.database().as_deref(), Some("app"));
        assert_eq!(c.param("sslmode").as_deref(), Some("disable"));
        assert_eq!(
            c.redacted(),
            "postgres://app:[redacted]@db:5432/app?sslmode=disable"
        );
        assert_eq!(
            c.with_database("test_app"),
            "postgres://app:p%40ss@db:5432/test_app?sslmode=disable"
        );
        assert_eq!(c.target(), "app@db:5432/app");
    }

    #[test]
    fn unencoded_slash_in_password_stays_in_userinfo() {
        let c = ConnectionString::parse("postgres://app:a/b@db/app").unwrap();
        assert_eq!(c.password().as_deref(), Some("a/b"));
        assert_eq!(c.database().as_deref(), Some("app"));
    }

    #[test]
    fn bad_port_is_an_error_that_does_not_quote_the_input() {
        let err = ConnectionString::parse("postgres://app:hunter2@db:99999/app").unwrap_err();
        assert!(!err.contains("hunter2"));
        assert!(err.contains("port"));
    }

    #[test]
    fn malformed_strings_are_errors_that_do_not_quote_a_password() {
        for (input, secret) in [
            (
                "host=db user=app password=correct horse dbname=app",
                "horse",
            ),
            ("host=db password='correct horse dbname=app", "correct"),
            ("host=db password=x horse='battery", "horse"),
            ("postgres://app:pa?ss@db/app", "ss@db"),
        ] {
            let err = ConnectionString::parse(input).unwrap_err();
            assert!(!err.contains(secret), "{input}: {err}");
        }
        let err = ConnectionString::parse("host=db password=correct horse").unwrap_err();
        assert!(err.contains("after the value of `password`"), "{err}");
    }

    #[test]
    fn key_value_quotes_and_escapes() {
        let c = ConnectionString::parse(r"host=db password='it\'s secret' dbname=app").unwrap();
        assert_eq!(c.password().as_deref(), Some("it's secret"));
        assert_eq!(
            c.with_database("x"),
            r"host=db password='it\'s secret' dbname=x"
        );
    }
}

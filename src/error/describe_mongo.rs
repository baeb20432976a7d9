//! One readable line for a MongoDB driver error.
//!
//! The driver's `Display` is `Kind: ..., labels: {...}, source: None, server
//! response: None`, and its server-selection errors embed a whole topology
//! with that text for each server. [`describe_mongo`] says instead what
//! happened, with the server when the driver names one, as
//! [`super::describe_postgres`] does for tokio-postgres. Public as
//! `dbmanager::mongo::describe_error`.

use mongodb::error::{Error as DriverError, ErrorKind, WriteFailure};

/// What went wrong, in one line: the cause, the server when the driver
/// names one, the code and code name of a server error. No `Debug` dumps.
pub fn describe_mongo(error: &DriverError) -> String {
    let text = match error.kind.as_ref() {
        ErrorKind::Io(io) => format!("I/O error: {io}"),
        ErrorKind::ServerSelection { message, .. } => server_selection(message),
        ErrorKind::ConnectionPoolCleared { message, .. } => pool_cleared(message),
        ErrorKind::Authentication { message, .. } => format!("authentication failed: {message}"),
        ErrorKind::Command(command) => server_error(
            "command failed",
            &command.message,
            Some(&command.code_name),
            command.code,
        ),
        ErrorKind::Write(WriteFailure::WriteError(write)) => server_error(
            "write failed",
            &write.message,
            write.code_name.as_deref(),
            write.code,
        ),
        ErrorKind::Write(WriteFailure::WriteConcernError(concern)) => server_error(
            "write concern failed",
            &concern.message,
            Some(&concern.code_name),
            concern.code,
        ),
        ErrorKind::InsertMany(insert) => {
            let mut parts = Vec::new();
            if let Some(errors) = insert.write_errors.as_ref().filter(|e| !e.is_empty()) {
                let first = &errors[0];
                parts.push(format!(
                    "{} write error(s), the first at index {}: {}",
                    errors.len(),
                    first.index,
                    server_error("", &first.message, first.code_name.as_deref(), first.code)
                ));
            }
            if let Some(concern) = &insert.write_concern_error {
                parts.push(server_error(
                    "write concern failed",
                    &concern.message,
                    Some(&concern.code_name),
                    concern.code,
                ));
            }
            format!("insert_many failed: {}", parts.join("; "))
        }
        ErrorKind::BulkWrite(bulk) => {
            let mut parts = Vec::new();
            if let Some((index, first)) = bulk.write_errors.iter().min_by_key(|(i, _)| **i) {
                parts.push(format!(
                    "{} write error(s), the first at index {index}: {}",
                    bulk.write_errors.len(),
                    server_error("", &first.message, first.code_name.as_deref(), first.code)
                ));
            }
            if let Some(concern) = bulk.write_concern_errors.first() {
                parts.push(server_error(
                    "write concern failed",
                    &concern.message,
                    Some(&concern.code_name),
                    concern.code,
                ));
            }
            format!("bulk write failed: {}", parts.join("; "))
        }
        ErrorKind::DnsResolve { message, .. } => format!("DNS resolution failed: {message}"),
        ErrorKind::InvalidTlsConfig { message, .. } => {
            format!("invalid TLS configuration: {message}")
        }
        ErrorKind::Shutdown => "the client has been shut down".to_string(),
        other => without_debug(&other.to_string()),
    };
    let mut text = one_line(&text);
    // A wrapped cause (the driver keeps some in `source`) is told once.
    let cause = std::error::Error::source(error)
        .and_then(|s| s.downcast_ref::<DriverError>())
        .map(describe_mongo);
    if let Some(cause) = cause.filter(|c| !text.contains(c.as_str())) {
        text.push_str(": ");
        text.push_str(&cause);
    }
    text
}

/// `"{what}: {message} ({CodeName}, code {code})"`, without empty parts.
fn server_error(what: &str, message: &str, code_name: Option<&str>, code: i32) -> String {
    let code = match code_name.filter(|n| !n.is_empty()) {
        Some(name) => format!("{name}, code {code}"),
        None => format!("code {code}"),
    };
    let message = message.trim();
    match (what.is_empty(), message.is_empty()) {
        (true, true) => format!("({code})"),
        (true, false) => format!("{message} ({code})"),
        (false, true) => format!("{what} ({code})"),
        (false, false) => format!("{what}: {message} ({code})"),
    }
}

/// `Server selection timeout: No available servers. Topology: { Type:
/// Single, Servers: [ { Address: h:p, Type: Unknown, Error: Kind: I/O
/// error: ..., labels: {}, ... } ] }` becomes `no available server within
/// the server selection timeout (h:p: I/O error: ...)`.
fn server_selection(message: &str) -> String {
    let (head, topology) = message.split_once("Topology:").unwrap_or((message, ""));
    let head = head.trim().trim_end_matches('.');
    let head = match head {
        "Server selection timeout: No available servers" => {
            "no available server within the server selection timeout".to_string()
        }
        h if h.starts_with("Server selection timeout: None of the available servers suitable") => {
            "no suitable server within the server selection timeout".to_string()
        }
        h => without_debug(h),
    };
    let servers: Vec<String> = topology
        .split("{ Address: ")
        .skip(1)
        .map(|server| {
            let address = server.split([',', ' ']).next().unwrap_or("").trim();
            match server.split_once("Error: ") {
                Some((_, error)) => {
                    // The error runs to the driver's Debug fields, or to the
                    // end of this server's entry.
                    let error = without_debug(error);
                    let error = error.split(" }").next().unwrap_or(&error).trim();
                    format!("{address}: {error}")
                }
                None => address.to_string(),
            }
        })
        .filter(|s| !s.is_empty())
        .collect();
    // The replica set the client requires (the driver names it before the
    // servers). A topology left without servers has removed every seed
    // that answered as something else: a standalone, another set.
    let set_name = topology
        .split("Servers: [")
        .next()
        .and_then(|t| t.split("Set Name: ").nth(1))
        .and_then(|t| t.split([',', ' ']).next())
        .filter(|n| !n.is_empty());
    match (set_name, servers.is_empty()) {
        (None, true) => head,
        (None, false) => format!("{head} ({})", servers.join("; ")),
        (Some(set), true) => {
            format!("{head} (replica set `{set}`: no seed answered as a member of it)")
        }
        (Some(set), false) => format!("{head} (replica set `{set}`; {})", servers.join("; ")),
    }
}

/// `Connection pool for h:p cleared because another operation failed with:
/// Kind: ..., labels: ...` keeps its sense and loses the Debug fields.
fn pool_cleared(message: &str) -> String {
    let message = without_debug(message);
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => message,
    }
}

/// Drops the driver's `Kind: ` prefixes and everything from `, labels: `
/// on (its `labels`, `source` and `server response` fields).
fn without_debug(text: &str) -> String {
    let mut text = text.replace("Kind: ", "");
    while let Some(start) = text.find(", labels: ") {
        // The fields end with `server response: None` or `Some(...)`; what
        // follows them (a closing brace of an enclosing entry) is kept.
        let rest = &text[start..];
        let end = match rest.find("server response: ") {
            Some(i) => {
                let value = &rest[i + "server response: ".len()..];
                let len = if value.starts_with("None") {
                    "None".len()
                } else {
                    balanced_len(value)
                };
                i + "server response: ".len() + len
            }
            None => rest.len(),
        };
        text.replace_range(start..start + end, "");
    }
    text.trim().to_string()
}

/// The length of `Some(...)` with balanced parentheses, or the whole text.
fn balanced_len(text: &str) -> usize {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    text.len()
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_selection_names_each_server_and_its_error() {
        let message = "Server selection timeout: No available servers. Topology: { Type: Single, \
            Servers: [ { Address: 127.0.0.1:34513, Type: Unknown, Error: Kind: I/O error: Connection \
            refused (os error 111), labels: {}, source: None, server response: None } ] }";
        assert_eq!(
            server_selection(message),
            "no available server within the server selection timeout \
             (127.0.0.1:34513: I/O error: Connection refused (os error 111))"
        );
    }

    #[test]
    fn server_selection_names_the_replica_set_the_client_requires() {
        let message = "Server selection timeout: No available servers. Topology: { Type: \
            ReplicaSetNoPrimary, Set Name: rs-absent }";
        assert_eq!(
            server_selection(message),
            "no available server within the server selection timeout (replica set `rs-absent`: \
             no seed answered as a member of it)"
        );
        let message = "Server selection timeout: No available servers. Topology: { Type: Single, \
            Set Name: rs-absent, Servers: [ { Address: 127.0.0.1:1, Type: Unknown, Error: Kind: \
            An invalid argument was provided: Connection string replicaSet name \"rs-absent\" does \
            not match actual name <none>, labels: {}, source: None, server response: None } ] }";
        assert_eq!(
            server_selection(message),
            "no available server within the server selection timeout (replica set `rs-absent`; \
             127.0.0.1:1: An invalid argument was provided: Connection string replicaSet name \
             \"rs-absent\" does not match actual name <none>)"
        );
    }

    #[test]
    fn pool_cleared_loses_the_debug_fields() {
        let message = "Connection pool for 127.0.0.1:1 cleared because another operation failed \
            with: Kind: I/O error: unexpected end of file, labels: {\"RetryableWriteError\"}, \
            source: None, server response: None";
        assert_eq!(
            pool_cleared(message),
            "connection pool for 127.0.0.1:1 cleared because another operation failed with: \
             I/O error: unexpected end of file"
        );
        assert_eq!(
            pool_cleared("Connection to 127.0.0.1:34513 interrupted due to server monitor timeout"),
            "connection to 127.0.0.1:34513 interrupted due to server monitor timeout"
        );
    }

    #[test]
    fn server_errors_show_message_name_and_code() {
        assert_eq!(
            server_error(
                "command failed",
                "ns not found",
                Some("NamespaceNotFound"),
                26
            ),
            "command failed: ns not found (NamespaceNotFound, code 26)"
        );
        assert_eq!(
            server_error("write failed", "E11000 duplicate key", None, 11000),
            "write failed: E11000 duplicate key (code 11000)"
        );
    }

    #[test]
    fn io_errors_are_one_line_without_debug_fields() {
        let error = DriverError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let text = describe_mongo(&error);
        assert!(text.starts_with("I/O error: "), "{text}");
        for debug in ["Kind:", "labels:", "source: None", "server response"] {
            assert!(!text.contains(debug), "{text}");
        }
    }
}

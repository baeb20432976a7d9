//! The MongoDB health probe: ping latency, server version and topology.

use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};

use super::MongoHandle;
use super::topology::ClientTopology;
use crate::config::scrub;
use crate::error::Error;
use crate::health::{ComponentHealth, HealthStatus, Topology};
use crate::metrics::{self, PoolLabel};

impl MongoHandle {
    /// Pings, then asks `hello` and `buildInfo`, all within `timeout`. The
    /// latency reported is the ping's.
    pub(crate) async fn probe(&self, timeout: Duration, required: bool) -> ComponentHealth {
        let mut health = ComponentHealth::new(required);
        health.database = Some(self.database_name().to_string());
        if self.is_draining() {
            health.error = Some("shutting down".into());
            health.pool = Some(self.status());
            return health;
        }
        // The pool as the application uses it, before the probe's own checkout.
        health.pool = Some(self.status());
        let admin = self.client().database("admin");
        let outcome = tokio::time::timeout(timeout, async {
            let started = Instant::now();
            admin
                .run_command(doc! { "ping": 1 })
                .await
                .map_err(|e| Error::mongo("ping", e))?;
            let latency = started.elapsed();
            let hello = admin
                .run_command(doc! { "hello": 1 })
                .await
                .map_err(|e| Error::mongo("hello", e))?;
            let build = admin
                .run_command(doc! { "buildInfo": 1 })
                .await
                .map_err(|e| Error::mongo("buildInfo", e))?;
            Ok::<_, Error>((latency, hello, build))
        })
        .await;
        match outcome {
            Ok(Ok((latency, hello, build))) => {
                metrics::probe(PoolLabel::MONGODB, latency);
                health.status = HealthStatus::Up;
                health.latency_ms = Some(latency.as_secs_f64() * 1000.0);
                health.server_version = build.get_str("version").ok().map(str::to_string);
                health.topology = Some(topology(&hello, self.target(), self.client_topology()));
            }
            Ok(Err(error)) => health.error = Some(scrub(&error.to_string(), self.secrets())),
            Err(_) => {
                health.error = Some(format!("no answer within the probe timeout of {timeout:?}"))
            }
        }
        health.checkout_wait_ms = self.events().take_recent_wait_ms();
        health
    }
}

/// Reads the deployment's shape from a `hello` reply, beside what the client
/// was told about it.
fn topology(hello: &Document, target: &str, client: &ClientTopology) -> Topology {
    let strings = |key: &str| -> Vec<String> {
        hello
            .get_array(key)
            .map(|a| {
                a.iter()
                    .filter_map(|h| h.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let set_name = hello.get_str("setName").ok().map(str::to_string);
    let kind = if set_name.is_some() {
        "replica_set"
    } else if hello.get_str("msg").ok() == Some("isdbgrid") {
        "sharded"
    } else {
        "standalone"
    };
    let mut servers = strings("hosts");
    servers.extend(strings("passives"));
    if servers.is_empty() {
        // `user@host:port/db` -> `host:port` (comma-separated seeds split).
        let hosts = target.rsplit('@').next().unwrap_or(target);
        let hosts = hosts.split('/').next().unwrap_or(hosts);
        servers = hosts.split(',').map(str::to_string).collect();
    }
    Topology {
        kind: kind.to_string(),
        servers,
        set_name,
        read_preference: Some(client.read_preference.clone()),
        read_preference_tags: client.tags.clone(),
        max_staleness_secs: client.max_staleness_secs,
        replica_set: client.replica_set.clone(),
        direct_connection: Some(client.direct_connection),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientTopology {
        ClientTopology {
            read_preference: "primary".into(),
            tags: Vec::new(),
            max_staleness_secs: None,
            replica_set: None,
            direct_connection: false,
        }
    }

    #[test]
    fn topology_kinds() {
        let standalone = topology(
            &doc! { "isWritablePrimary": true },
            "app@db:27017/app",
            &client(),
        );
        assert_eq!(standalone.kind, "standalone");
        assert_eq!(standalone.servers, ["db:27017"]);
        let rs = topology(
            &doc! { "setName": "rs0", "hosts": ["a:1", "b:2"] },
            "a:1,b:2",
            &client(),
        );
        assert_eq!(rs.kind, "replica_set");
        assert_eq!(rs.servers, ["a:1", "b:2"]);
        let sharded = topology(&doc! { "msg": "isdbgrid" }, "mongos:27017", &client());
        assert_eq!(sharded.kind, "sharded");
    }

    #[test]
    fn the_clients_settings_stand_beside_what_the_server_reports() {
        let settings = ClientTopology {
            read_preference: "secondaryPreferred".into(),
            tags: vec![[("dc".to_string(), "east".to_string())].into()],
            max_staleness_secs: Some(120),
            replica_set: Some("rs0".into()),
            direct_connection: true,
        };
        let rs = topology(
            &doc! { "setName": "rs0", "hosts": ["a:1"] },
            "a:1",
            &settings,
        );
        let json = serde_json::to_value(&rs).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "kind": "replica_set", "servers": ["a:1"], "set_name": "rs0",
                "read_preference": "secondaryPreferred",
                "read_preference_tags": [{ "dc": "east" }],
                "max_staleness_secs": 120,
                "replica_set": "rs0", "direct_connection": true
            })
        );
        // Absent settings are left out; the mode and direct connection are
        // always there.
        let plain = serde_json::to_value(topology(&doc! {}, "db:27017", &client())).unwrap();
        assert_eq!(
            plain,
            serde_json::json!({
                "kind": "standalone", "servers": ["db:27017"],
                "read_preference": "primary", "direct_connection": false
            })
        );
    }
}

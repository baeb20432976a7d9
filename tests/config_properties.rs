//! Bad settings never panic: any value of any duration, size or connection
//! string either loads, or is refused as a named `Error::Config` (or
//! `Error::ConfigFile`), and whatever loads builds a (lazy) manager.
//!
//! Properties over generated inputs; the case counts are fixed below so a
//! run states how much it tried.

use std::time::Duration;

use dbmanager::{Config, DatabaseManager, Error};
use proptest::prelude::*;

/// Cases for the loading property (no I/O: fast).
const LOAD_CASES: u32 = 2_000;
/// Cases for the property that also builds a lazy manager.
const BUILD_CASES: u32 = 200;

/// Every duration setting, as its environment variable.
const DURATIONS: &[&str] = &[
    "DBMANAGER_POSTGRES__STATEMENT_TIMEOUT",
    "DBMANAGER_POSTGRES__IDLE_IN_TRANSACTION_SESSION_TIMEOUT",
    "DBMANAGER_POSTGRES__KEEPALIVES_IDLE",
    "DBMANAGER_POSTGRES__KEEPALIVES_INTERVAL",
    "DBMANAGER_POSTGRES__TCP_USER_TIMEOUT",
    "DBMANAGER_POSTGRES__POOL__WAIT_TIMEOUT",
    "DBMANAGER_POSTGRES__POOL__CONNECT_TIMEOUT",
    "DBMANAGER_POSTGRES__POOL__RECYCLE_TIMEOUT",
    "DBMANAGER_POSTGRES__POOL__VERIFY_AFTER_IDLE",
    "DBMANAGER_POSTGRES__POOL__MAX_LIFETIME",
    "DBMANAGER_POSTGRES__POOL__IDLE_TIMEOUT",
    "DBMANAGER_POSTGRES__POOL__LEAK_DETECTION_THRESHOLD",
    "DBMANAGER_POSTGRES__POOL__SLOW_ACQUIRE_THRESHOLD",
    "DBMANAGER_POSTGRES__POOL__MAINTENANCE_INTERVAL",
    "DBMANAGER_MONGODB__CONNECT_TIMEOUT",
    "DBMANAGER_MONGODB__SERVER_SELECTION_TIMEOUT",
    "DBMANAGER_MONGODB__POOL__MAX_IDLE_TIME",
    "DBMANAGER_RETRY__INITIAL_DELAY",
    "DBMANAGER_RETRY__MAX_DELAY",
    "DBMANAGER_RETRY__MAX_ELAPSED",
    "DBMANAGER_HEALTH__PROBE_TIMEOUT",
    "DBMANAGER_SHUTDOWN__GRACE_PERIOD",
    "DBMANAGER_BOOTSTRAP__WAIT_TIMEOUT",
];

/// Every count setting, as its environment variable.
const COUNTS: &[&str] = &[
    "DBMANAGER_POSTGRES__POOL__MAX_SIZE",
    "DBMANAGER_POSTGRES__POOL__MIN_IDLE",
    "DBMANAGER_POSTGRES__POOL__MAX_IDLE",
    "DBMANAGER_MONGODB__POOL__MIN_SIZE",
    "DBMANAGER_MONGODB__POOL__MAX_SIZE",
    "DBMANAGER_RETRY__MAX_ATTEMPTS",
    "DBMANAGER_POSTGRES__KEEPALIVES_RETRIES",
    "DB_POOL_SIZE",
    "DB_MAX_OVERFLOW",
    "DB_POOL_TIMEOUT",
];

/// A duration as people (and mistakes) write it: zero, huge, fractional,
/// negative, in every unit, or not a duration at all.
fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            any::<u64>(),
            prop::sample::select(vec!["ns", "ms", "s", "m", "h", "d", "y"])
        )
            .prop_map(|(n, unit)| format!("{n}{unit}")),
        (0u64..100_000, prop::sample::select(vec!["ms", "s", "min"]))
            .prop_map(|(n, unit)| format!("{n}{unit}")),
        Just("18446744073709551615s".to_string()),
        Just("-5s".to_string()),
        Just("0s".to_string()),
        Just("1.5s".to_string()),
        "[ -~]{0,12}",
    ]
}

/// A count: small, at the limits of its type, negative, or text.
fn count_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (0u64..64).prop_map(|n| n.to_string()),
        2 => any::<u64>().prop_map(|n| n.to_string()),
        1 => Just(u64::MAX.to_string()),
        1 => Just("-1".to_string()),
        1 => Just("1e309".to_string()),
        1 => "[ -~]{0,8}",
    ]
}

/// A connection string: well-formed with odd parts, or arbitrary text.
fn url_text(scheme: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        (
            "[a-z@:/%?=&]{0,12}",
            "[ -~]{0,16}",
            any::<u16>(),
            "[ -~]{0,10}"
        )
            .prop_map(move |(user, password, port, db)| format!(
                "{scheme}://{user}:{password}@127.0.0.1:{port}/{db}"
            )),
        "[ -~]{0,40}",
        ("[ -~]{0,20}").prop_map(move |rest| format!("{scheme}://{rest}")),
    ]
}

fn settings() -> impl Strategy<Value = Vec<(String, String)>> {
    let durations = prop::collection::vec(
        (prop::sample::select(DURATIONS.to_vec()), duration_text()),
        0..4,
    );
    let counts = prop::collection::vec((prop::sample::select(COUNTS.to_vec()), count_text()), 0..4);
    (
        durations,
        counts,
        prop::option::of(url_text("postgres")),
        prop::option::of(url_text("mongodb")),
    )
        .prop_map(|(durations, counts, pg, mongo)| {
            let mut vars: Vec<(String, String)> = durations
                .into_iter()
                .chain(counts)
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            if let Some(url) = pg {
                vars.push(("DATABASE_URL".into(), url));
            }
            if let Some(url) = mongo {
                vars.push(("MONGODB_URL".into(), url));
            }
            vars
        })
}

/// Duration settings no other setting constrains.
const FREE_DURATIONS: &[&str] = &[
    "DBMANAGER_POSTGRES__POOL__WAIT_TIMEOUT",
    "DBMANAGER_POSTGRES__POOL__CONNECT_TIMEOUT",
    "DBMANAGER_POSTGRES__POOL__RECYCLE_TIMEOUT",
    "DBMANAGER_POSTGRES__POOL__MAX_LIFETIME",
    "DBMANAGER_POSTGRES__POOL__IDLE_TIMEOUT",
    "DBMANAGER_POSTGRES__POOL__LEAK_DETECTION_THRESHOLD",
    "DBMANAGER_POSTGRES__POOL__SLOW_ACQUIRE_THRESHOLD",
    "DBMANAGER_POSTGRES__POOL__MAINTENANCE_INTERVAL",
    "DBMANAGER_POSTGRES__STATEMENT_TIMEOUT",
    "DBMANAGER_POSTGRES__TCP_USER_TIMEOUT",
    "DBMANAGER_POSTGRES__KEEPALIVES_INTERVAL",
    "DBMANAGER_MONGODB__CONNECT_TIMEOUT",
    "DBMANAGER_MONGODB__SERVER_SELECTION_TIMEOUT",
    "DBMANAGER_MONGODB__POOL__MAX_IDLE_TIME",
    "DBMANAGER_HEALTH__PROBE_TIMEOUT",
    "DBMANAGER_SHUTDOWN__GRACE_PERIOD",
];

/// Settings that pass validation, biased to the extremes it allows (one
/// millisecond, a year, 10,000 connections), so building exercises the
/// arithmetic at its limits.
fn buildable_settings() -> impl Strategy<Value = Vec<(String, String)>> {
    let duration = prop_oneof![
        Just("1ms".to_string()),
        Just("365days".to_string()),
        (1u64..=31_536_000).prop_map(|s| format!("{s}s")),
    ];
    let durations = prop::collection::vec(
        (prop::sample::select(FREE_DURATIONS.to_vec()), duration),
        0..6,
    );
    let max_size = prop_oneof![Just(10_000usize), Just(1usize), 1usize..64];
    (
        durations,
        max_size,
        0usize..=2,
        prop::option::of((1u16.., "[a-z]{1,8}")),
        prop::option::of(1u16..),
    )
        .prop_map(|(durations, max_size, min_idle, pg, mongo)| {
            let mut vars: Vec<(String, String)> = durations
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            vars.push((
                "DBMANAGER_POSTGRES__POOL__MAX_SIZE".into(),
                max_size.to_string(),
            ));
            vars.push((
                "DBMANAGER_POSTGRES__POOL__MIN_IDLE".into(),
                min_idle.min(max_size).to_string(),
            ));
            vars.push((
                "DBMANAGER_MONGODB__POOL__MAX_SIZE".into(),
                max_size.to_string(),
            ));
            vars.push(("DBMANAGER_MONGODB__POOL__MIN_SIZE".into(), "0".into()));
            if let Some((port, db)) = pg {
                vars.push((
                    "DATABASE_URL".into(),
                    format!("postgres://u:p@127.0.0.1:{port}/{db}"),
                ));
            }
            if let Some(port) = mongo {
                vars.push(("MONGODB_URL".into(), format!("mongodb://127.0.0.1:{port}/")));
            }
            vars
        })
}

fn load(vars: &[(String, String)]) -> dbmanager::Result<Config> {
    Config::loader()
        .no_dotenv()
        .env_vars(vars.iter().cloned())
        .load()
}

fn refused_by_name(error: &Error) -> bool {
    match error {
        Error::Config { key, .. } => !key.is_empty(),
        Error::ConfigFile { .. } => true,
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(LOAD_CASES))]

    #[test]
    fn any_setting_loads_or_is_refused_by_name(vars in settings()) {
        match load(&vars) {
            Ok(config) => {
                // What loads also validates and serialises without panicking.
                prop_assert!(config.validate().is_ok());
                let _ = format!("{config:?}");
            }
            Err(error) => prop_assert!(refused_by_name(&error), "{error:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(BUILD_CASES))]

    #[test]
    fn whatever_loads_builds_a_lazy_manager_and_shuts_it_down(vars in buildable_settings()) {
        let config = load(&vars).expect("the buildable settings validate");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            // build_lazy opens nothing itself; mongodb+srv URLs are refused
            // by name (they need the eager build's DNS lookup). Nothing is
            // checked out, so shutdown returns at once whatever the grace
            // period; the bound only keeps a regression from hanging.
            match DatabaseManager::builder().config(config).build_lazy() {
                Ok(db) => {
                    assert!(db.liveness());
                    tokio::time::timeout(Duration::from_secs(30), db.shutdown())
                        .await
                        .expect("shutdown with nothing checked out returns")
                        .expect("shutdown succeeds");
                }
                Err(error) => assert!(
                    refused_by_name(&error) || matches!(error, Error::NotConfigured { .. }),
                    "{error:?}"
                ),
            }
        });
        // Background connects of the maintenance task may sit in a DNS
        // lookup on a blocking thread: do not wait for them.
        runtime.shutdown_background();
    }
}

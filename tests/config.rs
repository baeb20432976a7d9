//! Configuration: layering, the well-known variables, validation naming the
//! key, test databases, and redaction. Every layer is given explicitly, so
//! these tests do not depend on (or disturb) the process environment.

use std::time::Duration;

use dbmanager::config::{REDACTED, RecyclingMethod};
use dbmanager::{Config, Error};

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().unwrap())
    }
    fn file(&self, name: &str, contents: &str) -> std::path::PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

fn load(
    toml: Option<&str>,
    dotenv: Option<&str>,
    env: &[(&str, &str)],
) -> dbmanager::Result<Config> {
    let dir = Dir::new();
    let mut loader =
        Config::loader().env_vars(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    loader = match toml {
        Some(t) => loader.file(dir.file("dbmanager.toml", t)),
        None => loader.file(dir.file("dbmanager.toml", "")),
    };
    loader = match dotenv {
        Some(d) => loader.dotenv(dir.file(".env", d)),
        None => loader.no_dotenv(),
    };
    loader.load()
}

fn config_error_key(result: dbmanager::Result<Config>) -> (String, String) {
    match result {
        Err(Error::Config { key, problem }) => (key, problem),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn defaults_apply_when_nothing_is_set() {
    let config = load(None, None, &[]).unwrap();
    assert_eq!(config, Config::default());
    assert!(!config.postgres.is_configured());
    assert_eq!(config.postgres.pool.max_size, 16);
    assert_eq!(config.postgres.pool.wait_timeout, Duration::from_secs(30));
    assert_eq!(config.postgres.pool.recycling, RecyclingMethod::Auto);
    assert_eq!(config.shutdown.grace_period, Duration::from_secs(30));
}

#[test]
fn each_layer_overrides_the_one_below() {
    let toml = r#"
        [postgres]
        url = "postgres://file@db/file"
        application_name = "from-file"
        [postgres.pool]
        max_size = 10
        min_idle = 1
        wait_timeout = "11s"
        [health]
        probe_timeout = "3s"
    "#;
    let dotenv = "DATABASE_URL=postgres://dotenv@db/dotenv\nDBMANAGER_POSTGRES__POOL__MAX_SIZE=20\nDBMANAGER_POSTGRES__APPLICATION_NAME=from-dotenv\n";
    let env = [("DBMANAGER_POSTGRES__POOL__MAX_SIZE", "30")];

    let file_only = load(Some(toml), None, &[]).unwrap();
    assert_eq!(file_only.postgres.pool.max_size, 10);
    assert_eq!(
        file_only.postgres.url.as_ref().unwrap().expose(),
        "postgres://file@db/file"
    );

    let with_dotenv = load(Some(toml), Some(dotenv), &[]).unwrap();
    assert_eq!(with_dotenv.postgres.pool.max_size, 20);
    assert_eq!(with_dotenv.postgres.application_name, "from-dotenv");
    assert_eq!(
        with_dotenv.postgres.url.as_ref().unwrap().expose(),
        "postgres://dotenv@db/dotenv"
    );

    let all = load(Some(toml), Some(dotenv), &env).unwrap();
    assert_eq!(all.postgres.pool.max_size, 30, "environment beats .env");
    assert_eq!(
        all.postgres.application_name, "from-dotenv",
        ".env beats the file"
    );
    assert_eq!(
        all.postgres.pool.wait_timeout,
        Duration::from_secs(11),
        "the file beats defaults"
    );
    assert_eq!(all.health.probe_timeout, Duration::from_secs(3));
    assert_eq!(all.postgres.pool.min_idle, 1);
}

#[test]
fn dbmanager_config_names_the_file() {
    let dir = Dir::new();
    let path = dir.file("service.toml", "[postgres.pool]\nmax_size = 7\n");
    let config = Config::loader()
        .no_dotenv()
        .env_vars([("DBMANAGER_CONFIG", path.to_str().unwrap())])
        .load()
        .unwrap();
    assert_eq!(config.postgres.pool.max_size, 7);

    let missing = Config::loader()
        .no_dotenv()
        .env_vars([("DBMANAGER_CONFIG", "/nonexistent/dbmanager.toml")])
        .load();
    assert!(
        matches!(missing, Err(Error::ConfigFile { .. })),
        "{missing:?}"
    );
}

#[test]
fn seed_style_parts_assemble_an_escaped_url() {
    let config = load(
        None,
        Some("POSTGRES_USER=app\nPOSTGRES_PASSWORD=p@ss:w/rd\n"),
        &[
            ("POSTGRES_SERVER", "db.internal"),
            ("POSTGRES_PORT", "6543"),
            ("POSTGRES_DB", "main"),
        ],
    )
    .unwrap();
    assert_eq!(
        config.postgres.url.unwrap().expose(),
        "postgres://app:p%40ss%3Aw%2Frd@db.internal:6543/main",
        "parts split between .env and the environment assemble into one URL"
    );

    let host_alias = load(
        None,
        None,
        &[("POSTGRES_HOST", "h"), ("POSTGRES_USER", "u")],
    )
    .unwrap();
    assert_eq!(
        host_alias.postgres.url.unwrap().expose(),
        "postgres://u@h:5432/u"
    );

    let url_wins = load(
        None,
        None,
        &[
            ("DATABASE_URL", "postgres://x@y/z"),
            ("POSTGRES_SERVER", "ignored"),
        ],
    )
    .unwrap();
    assert_eq!(url_wins.postgres.url.unwrap().expose(), "postgres://x@y/z");
}

#[test]
fn sqlalchemy_pool_variables_map_to_the_pool() {
    let config = load(
        None,
        None,
        &[
            ("DB_POOL_SIZE", "5"),
            ("DB_MAX_OVERFLOW", "10"),
            ("DB_POOL_TIMEOUT", "2.5"),
        ],
    )
    .unwrap();
    assert_eq!(config.postgres.pool.max_size, 15, "max = size + overflow");
    assert_eq!(
        config.postgres.pool.max_idle,
        Some(5),
        "connections kept = pool size"
    );
    assert_eq!(
        config.postgres.pool.wait_timeout,
        Duration::from_millis(2500)
    );

    let size_only = load(None, None, &[("DB_POOL_SIZE", "8")]).unwrap();
    assert_eq!(size_only.postgres.pool.max_size, 8);

    let explicit_wins = load(
        None,
        None,
        &[
            ("DB_POOL_SIZE", "8"),
            ("DBMANAGER_POSTGRES__POOL__MAX_SIZE", "12"),
        ],
    )
    .unwrap();
    assert_eq!(explicit_wins.postgres.pool.max_size, 12);
}

#[test]
fn bad_values_are_errors_that_name_their_key() {
    let cases: Vec<(&str, dbmanager::Result<Config>, &str)> = vec![
        (
            "pool size 0",
            load(None, None, &[("DB_POOL_SIZE", "0")]),
            "DB_POOL_SIZE",
        ),
        (
            "max_size 0",
            load(Some("[postgres.pool]\nmax_size = 0\n"), None, &[]),
            "postgres.pool.max_size",
        ),
        (
            "negative pool size",
            load(None, None, &[("DBMANAGER_POSTGRES__POOL__MAX_SIZE", "-3")]),
            "postgres.pool.max_size",
        ),
        (
            "min_idle > max_size",
            load(
                Some("[postgres.pool]\nmax_size = 2\nmin_idle = 3\n"),
                None,
                &[],
            ),
            "postgres.pool.min_idle",
        ),
        (
            "zero duration",
            load(
                None,
                None,
                &[("DBMANAGER_POSTGRES__POOL__WAIT_TIMEOUT", "0s")],
            ),
            "postgres.pool.wait_timeout",
        ),
        (
            "unparseable duration",
            load(None, None, &[("DBMANAGER_HEALTH__PROBE_TIMEOUT", "soon")]),
            "health.probe_timeout",
        ),
        (
            "bad DB_POOL_TIMEOUT",
            load(None, None, &[("DB_POOL_TIMEOUT", "-1")]),
            "DB_POOL_TIMEOUT",
        ),
        (
            "overflow without size",
            load(None, None, &[("DB_MAX_OVERFLOW", "3")]),
            "DB_MAX_OVERFLOW",
        ),
        (
            "malformed URL",
            load(
                None,
                None,
                &[("DATABASE_URL", "postgres://app:hunter2@db:notaport/app")],
            ),
            "postgres.url",
        ),
        (
            "wrong scheme",
            load(
                None,
                None,
                &[("DATABASE_URL", "mysql://app:hunter2@db/app")],
            ),
            "postgres.url",
        ),
        (
            "unknown sslmode",
            load(
                None,
                None,
                &[(
                    "DATABASE_URL",
                    "postgres://app:hunter2@db/app?sslmode=sometimes",
                )],
            ),
            "postgres.url",
        ),
        (
            "unknown setting",
            load(None, None, &[("DBMANAGER_POSTGRES__POOL__MAX_SIZES", "3")]),
            "postgres.pool.max_sizes",
        ),
        (
            "retry that never gives up",
            load(Some("[retry]\nmax_attempts = 0\n"), None, &[]),
            "retry.max_attempts",
        ),
        (
            "mongo min > max",
            load(
                Some("[mongodb.pool]\nmin_size = 30\nmax_size = 20\n"),
                None,
                &[],
            ),
            "mongodb.pool.min_size",
        ),
        (
            "bad port part",
            load(None, None, &[("POSTGRES_PORT", "seventy")]),
            "POSTGRES_PORT",
        ),
    ];
    for (what, result, key) in cases {
        let (got, problem) = config_error_key(result);
        assert_eq!(got, key, "{what}: {problem}");
        assert!(
            !problem.contains("hunter2"),
            "{what} leaks the password: {problem}"
        );
        assert!(!problem.is_empty(), "{what}");
    }
}

#[test]
fn env_error_names_the_variable_that_set_it() {
    let err = load(None, None, &[("DBMANAGER_HEALTH__PROBE_TIMEOUT", "soon")]).unwrap_err();
    assert!(
        err.to_string().contains("DBMANAGER_HEALTH__PROBE_TIMEOUT"),
        "{err}"
    );
}

#[test]
fn a_config_file_that_does_not_parse_is_reported_with_its_path() {
    let dir = Dir::new();
    let path = dir.file("dbmanager.toml", "[postgres\nurl = ");
    let err = Config::loader()
        .file(&path)
        .no_dotenv()
        .env_vars(Vec::<(String, String)>::new())
        .load()
        .unwrap_err();
    match err {
        Error::ConfigFile { path: got, .. } => assert_eq!(got, path),
        other => panic!("expected a file error, got {other:?}"),
    }

    let bad_dotenv = dir.file(
        ".env",
        "DATABASE_URL=postgres://a:secret-pw@b/c\nthis line is 'not valid\n",
    );
    let err = Config::loader()
        .file(dir.file("empty.toml", ""))
        .dotenv(&bad_dotenv)
        .env_vars(Vec::<(String, String)>::new())
        .load()
        .unwrap_err();
    assert!(matches!(err, Error::ConfigFile { .. }), "{err:?}");
    assert!(!err.to_string().contains("secret-pw"), "{err}");
}

#[test]
fn test_database_is_derived_and_never_the_development_one() {
    let config = load(
        None,
        None,
        &[("DATABASE_URL", "postgres://app:pw@db:5432/app")],
    )
    .unwrap();
    let test = config.for_tests().unwrap();
    assert_eq!(
        test.postgres.url.unwrap().expose(),
        "postgres://app:pw@db:5432/test_app"
    );

    let explicit = load(
        None,
        None,
        &[
            ("DATABASE_URL", "postgres://app:pw@db:5432/app"),
            ("TEST_DATABASE_URL", "postgres://app:pw@db:5432/other_tests"),
        ],
    )
    .unwrap();
    assert_eq!(
        explicit.for_tests().unwrap().postgres.url.unwrap().expose(),
        "postgres://app:pw@db:5432/other_tests"
    );

    let same = load(
        None,
        None,
        &[
            ("DATABASE_URL", "postgres://app:pw@db:5432/app"),
            ("TEST_DATABASE_URL", "postgres://other:pw2@db:5432/app"),
        ],
    )
    .unwrap();
    let (key, problem) = config_error_key(same.for_tests());
    assert_eq!(key, "TEST_DATABASE_URL");
    assert!(problem.contains("development database"), "{problem}");
}

#[test]
fn debug_display_and_serialization_of_config_hide_passwords() {
    let config = load(
        None,
        None,
        &[
            ("DATABASE_URL", "postgres://app:pg-secret-1@db/app"),
            ("MONGO_USER", "m"),
            ("MONGO_PASSWORD", "mongo:secret@2"),
        ],
    )
    .unwrap();
    let shown = [
        format!("{config:?}"),
        format!("{:?}", config.postgres.url.as_ref().unwrap()),
        config.postgres.url.as_ref().unwrap().to_string(),
        serde_json::to_string(&config).unwrap(),
    ];
    for text in shown {
        assert!(!text.contains("pg-secret-1"), "{text}");
        assert!(
            !text.contains("mongo:secret@2") && !text.contains("mongo%3Asecret%402"),
            "{text}"
        );
        assert!(text.contains(REDACTED), "{text}");
    }
    let settings = Config::loader()
        .no_dotenv()
        .env_vars([("DATABASE_URL", "postgres://app:pg-secret-1@db/app")])
        .file(Dir::new().file("x.toml", ""))
        .explain()
        .unwrap();
    let url = settings.iter().find(|s| s.key == "postgres.url").unwrap();
    assert!(!url.value.contains("pg-secret-1"));
    assert_eq!(url.source, "environment DATABASE_URL");
    let size = settings
        .iter()
        .find(|s| s.key == "postgres.pool.max_size")
        .unwrap();
    assert_eq!(size.source, "default");
}

#[test]
fn config_show_hides_tokens_in_connection_parameters() {
    let settings = Config::loader()
        .no_dotenv()
        .env_vars([
            (
                "MONGODB_URL",
                "mongodb://db:27017/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:t0ken",
            ),
            ("DATABASE_URL", "postgres://app@db/app?password=pw1&application_name=k3y_app"),
        ])
        .explain()
        .unwrap();
    let shown: String = settings
        .iter()
        .map(|s| format!("{} = {}\n", s.key, s.value))
        .collect();
    for secret in ["t0ken", "pw1"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(shown.contains("authMechanism=MONGODB-AWS"), "{shown}");
    assert!(shown.contains("k3y_app"), "other parameters stay: {shown}");
}

#[test]
fn statement_cache_is_read_from_toml_and_the_environment_and_a_bad_value_names_the_key() {
    use dbmanager::config::StatementCache;
    let config = load(None, None, &[]).unwrap();
    assert_eq!(config.postgres.statement_cache, StatementCache::Named);
    let config = load(
        Some("[postgres]\nstatement_cache = \"unnamed\"\n"),
        None,
        &[],
    )
    .unwrap();
    assert_eq!(config.postgres.statement_cache, StatementCache::Unnamed);
    let config = load(
        None,
        None,
        &[("DBMANAGER_POSTGRES__STATEMENT_CACHE", "off")],
    )
    .unwrap();
    assert_eq!(config.postgres.statement_cache, StatementCache::Off);
    let (key, problem) = config_error_key(load(
        None,
        None,
        &[("DBMANAGER_POSTGRES__STATEMENT_CACHE", "sometimes")],
    ));
    assert!(key.contains("statement_cache"), "{key}: {problem}");
}

#[test]
fn mongodb_topology_settings_are_read_from_toml_and_the_environment() {
    use dbmanager::config::{ReadPreferenceMode, TagSet};
    let config = load(None, None, &[]).unwrap();
    assert_eq!(
        config.mongodb.read_preference, None,
        "unset: as the URL says"
    );
    assert!(config.mongodb.read_preference_tags.is_empty());
    assert_eq!(config.mongodb.max_staleness, None);
    assert_eq!(config.mongodb.replica_set, None);
    assert_eq!(config.mongodb.direct_connection, None);

    let config = load(
        Some(
            "[mongodb]\nurl = \"mongodb://db-1:27017,db-2:27017/\"\nread_preference = \"nearest\"\n\
             read_preference_tags = [{ dc = \"east\", rack = 1 }, {}]\nmax_staleness = \"2m\"\n\
             replica_set = \"rs0\"\ndirect_connection = false\n",
        ),
        None,
        &[],
    )
    .unwrap();
    let mongo = &config.mongodb;
    assert_eq!(mongo.read_preference, Some(ReadPreferenceMode::Nearest));
    assert_eq!(
        mongo.read_preference_tags,
        vec![
            TagSet::from([("dc".into(), "east".into()), ("rack".into(), "1".into())]),
            TagSet::new()
        ]
    );
    assert_eq!(mongo.max_staleness, Some(Duration::from_secs(120)));
    assert_eq!(mongo.replica_set.as_deref(), Some("rs0"));
    assert_eq!(mongo.direct_connection, Some(false));

    // The environment, over the file; a set name that looks like a number
    // stays a name.
    let config = load(
        Some("[mongodb]\nread_preference = \"nearest\"\n"),
        None,
        &[
            ("MONGODB_URL", "mongodb://db:27017/"),
            ("DBMANAGER_MONGODB__READ_PREFERENCE", "secondaryPreferred"),
            ("DBMANAGER_MONGODB__READ_PREFERENCE_TAGS", "[{dc=west},{}]"),
            ("DBMANAGER_MONGODB__MAX_STALENESS", "90s"),
            ("DBMANAGER_MONGODB__REPLICA_SET", "0001"),
            ("DBMANAGER_MONGODB__DIRECT_CONNECTION", "true"),
        ],
    )
    .unwrap();
    let mongo = &config.mongodb;
    assert_eq!(
        mongo.read_preference,
        Some(ReadPreferenceMode::SecondaryPreferred)
    );
    assert_eq!(
        mongo.read_preference_tags,
        vec![TagSet::from([("dc".into(), "west".into())]), TagSet::new()]
    );
    assert_eq!(mongo.max_staleness, Some(Duration::from_secs(90)));
    assert_eq!(mongo.replica_set.as_deref(), Some("0001"));
    assert_eq!(mongo.direct_connection, Some(true));

    // Other spellings of a mode.
    for spelling in [
        "secondary_preferred",
        "SecondaryPreferred",
        "secondary-preferred",
    ] {
        let config = load(
            None,
            None,
            &[("DBMANAGER_MONGODB__READ_PREFERENCE", spelling)],
        )
        .unwrap();
        assert_eq!(
            config.mongodb.read_preference,
            Some(ReadPreferenceMode::SecondaryPreferred),
            "{spelling}"
        );
    }
}

#[test]
fn invalid_mongodb_topology_settings_are_errors_that_name_their_key() {
    let url = |u: &str| ("MONGODB_URL", u.to_string());
    // (what, variables, the key named, words of the problem)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "unknown read preference",
            vec![("DBMANAGER_MONGODB__READ_PREFERENCE", "closest".into())],
            "mongodb.read_preference",
            "`closest` is not a read preference; expected one of primary, primaryPreferred",
        ),
        (
            "primary with tags",
            vec![
                ("DBMANAGER_MONGODB__READ_PREFERENCE", "primary".into()),
                (
                    "DBMANAGER_MONGODB__READ_PREFERENCE_TAGS",
                    "[{dc=east}]".into(),
                ),
            ],
            "mongodb.read_preference_tags",
            "cannot be used with read_preference = \"primary\"",
        ),
        (
            "primary with max staleness",
            vec![
                ("DBMANAGER_MONGODB__READ_PREFERENCE", "primary".into()),
                ("DBMANAGER_MONGODB__MAX_STALENESS", "120s".into()),
            ],
            "mongodb.max_staleness",
            "cannot be used with read_preference = \"primary\"",
        ),
        (
            "tags without a mode",
            vec![(
                "DBMANAGER_MONGODB__READ_PREFERENCE_TAGS",
                "[{dc=east}]".into(),
            )],
            "mongodb.read_preference_tags",
            "is set without `mongodb.read_preference`",
        ),
        (
            "max staleness without a mode",
            vec![("DBMANAGER_MONGODB__MAX_STALENESS", "120s".into())],
            "mongodb.max_staleness",
            "is set without `mongodb.read_preference`",
        ),
        (
            "max staleness below the driver's minimum",
            vec![
                ("DBMANAGER_MONGODB__READ_PREFERENCE", "secondary".into()),
                ("DBMANAGER_MONGODB__MAX_STALENESS", "30s".into()),
            ],
            "mongodb.max_staleness",
            "must be at least 90s",
        ),
        (
            "max staleness below heartbeat + 10 s",
            vec![
                ("DBMANAGER_MONGODB__READ_PREFERENCE", "secondary".into()),
                ("DBMANAGER_MONGODB__HEARTBEAT_FREQUENCY", "100s".into()),
                ("DBMANAGER_MONGODB__MAX_STALENESS", "100s".into()),
            ],
            "mongodb.max_staleness",
            "must be at least 110s",
        ),
        (
            "empty replica set name",
            vec![("DBMANAGER_MONGODB__REPLICA_SET", " ".into())],
            "mongodb.replica_set",
            "is empty",
        ),
        (
            "direct connection with several hosts",
            vec![
                url("mongodb://app:hunter2@db-1:27017,db-2:27017/"),
                ("DBMANAGER_MONGODB__DIRECT_CONNECTION", "true".into()),
            ],
            "mongodb.direct_connection",
            "the URL names 2 hosts",
        ),
        (
            "direct connection with mongodb+srv",
            vec![
                url("mongodb+srv://app:hunter2@cluster.example.com/"),
                ("DBMANAGER_MONGODB__DIRECT_CONNECTION", "true".into()),
            ],
            "mongodb.direct_connection",
            "`mongodb+srv://`",
        ),
        (
            "directConnection=true in a URL with several hosts",
            vec![url(
                "mongodb://app:hunter2@db-1:27017,db-2:27017/?directConnection=true",
            )],
            "mongodb.url",
            "the URL names 2 hosts",
        ),
        (
            "direct connection with a load balancer",
            vec![
                url("mongodb://app:hunter2@lb:27017/?loadBalanced=true"),
                ("DBMANAGER_MONGODB__DIRECT_CONNECTION", "true".into()),
            ],
            "mongodb.direct_connection",
            "loadBalanced=true",
        ),
        (
            "replica set with a load balancer",
            vec![
                url("mongodb://app:hunter2@lb:27017/?loadBalanced=true"),
                ("DBMANAGER_MONGODB__REPLICA_SET", "rs0".into()),
            ],
            "mongodb.replica_set",
            "loadBalanced=true",
        ),
        (
            "not a boolean",
            vec![("DBMANAGER_MONGODB__DIRECT_CONNECTION", "maybe".into())],
            "mongodb.direct_connection",
            "",
        ),
    ];
    for (what, env, key, wanted) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (got, problem) = config_error_key(load(None, None, &env));
        assert_eq!(got, key, "{what}: {problem}");
        assert!(problem.contains(wanted), "{what}: {problem}");
        assert!(
            !problem.contains("hunter2"),
            "{what} leaks the password: {problem}"
        );
    }

    // The typed `false` overrides the URL's `directConnection=true`, so the
    // URL's several hosts are fine.
    load(
        None,
        None,
        &[
            (
                "MONGODB_URL",
                "mongodb://db-1:27017,db-2:27017/?directConnection=true",
            ),
            ("DBMANAGER_MONGODB__DIRECT_CONNECTION", "false"),
        ],
    )
    .unwrap();
}

#[test]
fn the_unready_period_has_a_default_a_variable_and_a_bound() {
    let config = load(None, None, &[]).unwrap();
    assert_eq!(config.shutdown.unready_period, Duration::from_secs(5));
    let config = load(None, None, &[("DBMANAGER_SHUTDOWN__UNREADY_PERIOD", "12s")]).unwrap();
    assert_eq!(config.shutdown.unready_period, Duration::from_secs(12));
    let err = load(
        None,
        None,
        &[("DBMANAGER_SHUTDOWN__UNREADY_PERIOD", "400days")],
    )
    .unwrap_err();
    assert!(err.to_string().contains("shutdown.unready_period"), "{err}");
}

#[test]
fn the_silence_bound_is_off_at_zero_and_at_most_a_year() {
    let config = load(None, None, &[("DBMANAGER_POSTGRES__SILENCE_TIMEOUT", "0s")]).unwrap();
    assert_eq!(config.postgres.silence_timeout, Duration::ZERO);
    let err = load(
        None,
        None,
        &[("DBMANAGER_POSTGRES__SILENCE_TIMEOUT", "400days")],
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("postgres.silence_timeout"),
        "{err}"
    );
}

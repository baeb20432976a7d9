//! Read preference, replica set and direct connection: the typed settings
//! applied over the URL's options, and the client's effective choice as the
//! health report shows it.

use std::collections::BTreeMap;
use std::time::Duration;

use mongodb::options::{ClientOptions, ReadPreference, ReadPreferenceOptions, SelectionCriteria};

use crate::config::{MongoConfig, ReadPreferenceMode, TagSet};

/// Applies `read_preference` (with its tags and max staleness),
/// `replica_set` and `direct_connection` over what the URL set. Each typed
/// setting that is set wins; a typed `read_preference` replaces the URL's
/// whole read preference. `MongoConfig::check` has already refused the
/// combinations the driver would.
pub(super) fn apply(options: &mut ClientOptions, config: &MongoConfig) {
    if let Some(mode) = config.read_preference {
        options.selection_criteria = Some(SelectionCriteria::ReadPreference(read_preference(
            mode,
            &config.read_preference_tags,
            config.max_staleness,
        )));
    }
    if let Some(name) = &config.replica_set {
        options.repl_set_name = Some(name.clone());
    }
    if let Some(direct) = config.direct_connection {
        options.direct_connection = Some(direct);
    }
}

/// The driver's read preference for a mode, tags and max staleness.
fn read_preference(
    mode: ReadPreferenceMode,
    tags: &[TagSet],
    max_staleness: Option<Duration>,
) -> ReadPreference {
    let options = (!tags.is_empty() || max_staleness.is_some()).then(|| {
        ReadPreferenceOptions::builder()
            .tag_sets((!tags.is_empty()).then(|| {
                tags.iter()
                    .map(|set| set.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .collect::<Vec<_>>()
            }))
            .max_staleness(max_staleness)
            .build()
    });
    match mode {
        ReadPreferenceMode::Primary => ReadPreference::Primary,
        ReadPreferenceMode::PrimaryPreferred => ReadPreference::PrimaryPreferred { options },
        ReadPreferenceMode::Secondary => ReadPreference::Secondary { options },
        ReadPreferenceMode::SecondaryPreferred => ReadPreference::SecondaryPreferred { options },
        ReadPreferenceMode::Nearest => ReadPreference::Nearest { options },
    }
}

/// What the client was told about the deployment, from its final options
/// (URL and typed settings together).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientTopology {
    /// The read preference mode (`primary` when neither the URL nor the
    /// configuration names one: the driver's default).
    pub read_preference: String,
    /// Its tag sets.
    pub tags: Vec<TagSet>,
    /// Its max staleness, whole seconds (as sent to servers).
    pub max_staleness_secs: Option<u64>,
    /// The replica set name the servers must report.
    pub replica_set: Option<String>,
    /// Whether the client talks to its one host only.
    pub direct_connection: bool,
}

impl ClientTopology {
    pub(super) fn of(options: &ClientOptions) -> Self {
        let (mode, rp_options) = match &options.selection_criteria {
            Some(SelectionCriteria::ReadPreference(rp)) => describe(rp),
            // A predicate cannot come from a URL or the configuration.
            Some(_) => ("custom", None),
            None => ("primary", None),
        };
        let tags = rp_options
            .and_then(|o| o.tag_sets.as_ref())
            .map(|sets| {
                sets.iter()
                    .map(|set| {
                        set.iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect::<BTreeMap<_, _>>()
                    })
                    .collect()
            })
            .unwrap_or_default();
        ClientTopology {
            read_preference: mode.to_string(),
            tags,
            max_staleness_secs: rp_options
                .and_then(|o| o.max_staleness)
                .map(|d| d.as_secs()),
            replica_set: options.repl_set_name.clone(),
            // Unset is no direct connection: the driver discovers the
            // deployment from the seeds.
            direct_connection: options.direct_connection == Some(true),
        }
    }
}

fn describe(rp: &ReadPreference) -> (&'static str, Option<&ReadPreferenceOptions>) {
    match rp {
        ReadPreference::Primary => ("primary", None),
        ReadPreference::PrimaryPreferred { options } => ("primaryPreferred", options.as_ref()),
        ReadPreference::Secondary { options } => ("secondary", options.as_ref()),
        ReadPreference::SecondaryPreferred { options } => ("secondaryPreferred", options.as_ref()),
        ReadPreference::Nearest { options } => ("nearest", options.as_ref()),
        _ => ("unknown", None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn parsed(url: &str) -> ClientOptions {
        async { ClientOptions::parse(url).await }
            .now_or_never()
            .expect("no DNS for mongodb:// URLs")
            .unwrap()
    }

    #[test]
    fn unset_typed_settings_leave_the_urls_options() {
        let mut options = parsed(
            "mongodb://a:1/?readPreference=secondary&readPreferenceTags=dc:east&maxStalenessSeconds=120&replicaSet=rs0&directConnection=true",
        );
        apply(&mut options, &MongoConfig::default());
        let seen = ClientTopology::of(&options);
        assert_eq!(seen.read_preference, "secondary");
        assert_eq!(
            seen.tags,
            vec![TagSet::from([("dc".into(), "east".into())])]
        );
        assert_eq!(seen.max_staleness_secs, Some(120));
        assert_eq!(seen.replica_set.as_deref(), Some("rs0"));
        assert!(seen.direct_connection);
    }

    #[test]
    fn typed_settings_win_and_a_typed_mode_replaces_the_urls_whole_read_preference() {
        let mut options = parsed(
            "mongodb://a:1/?readPreference=secondary&readPreferenceTags=dc:east&maxStalenessSeconds=120&replicaSet=rs0&directConnection=true",
        );
        let config = MongoConfig {
            read_preference: Some(ReadPreferenceMode::Primary),
            replica_set: Some("rs1".into()),
            direct_connection: Some(false),
            ..MongoConfig::default()
        };
        apply(&mut options, &config);
        let seen = ClientTopology::of(&options);
        assert_eq!(seen.read_preference, "primary");
        assert!(seen.tags.is_empty());
        assert_eq!(seen.max_staleness_secs, None);
        assert_eq!(seen.replica_set.as_deref(), Some("rs1"));
        assert!(!seen.direct_connection);
        assert_eq!(
            options.selection_criteria,
            Some(SelectionCriteria::ReadPreference(ReadPreference::Primary))
        );
    }

    #[test]
    fn tags_and_max_staleness_go_with_the_typed_mode() {
        let mut options = parsed("mongodb://a:1/");
        assert_eq!(ClientTopology::of(&options).read_preference, "primary");
        let config = MongoConfig {
            read_preference: Some(ReadPreferenceMode::Nearest),
            read_preference_tags: vec![
                TagSet::from([("dc".into(), "east".into()), ("rack".into(), "1".into())]),
                TagSet::new(),
            ],
            max_staleness: Some(Duration::from_secs(95)),
            ..MongoConfig::default()
        };
        apply(&mut options, &config);
        let seen = ClientTopology::of(&options);
        assert_eq!(seen.read_preference, "nearest");
        assert_eq!(seen.tags, config.read_preference_tags);
        assert_eq!(seen.max_staleness_secs, Some(95));
        assert!(!seen.direct_connection);
        assert_eq!(seen.replica_set, None);
    }
}

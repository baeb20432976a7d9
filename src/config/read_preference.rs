//! MongoDB read preference: which members of a replica set may serve reads.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A MongoDB read preference mode (`mongodb.read_preference`), spelt as in
/// the driver and the connection string's `readPreference=` option.
///
/// Parsing ignores case, `_` and `-`: `secondaryPreferred`,
/// `secondary_preferred` and `SECONDARY-PREFERRED` are the same mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReadPreferenceMode {
    /// Reads go to the primary only (the driver's default).
    Primary,
    /// The primary when there is one, else a secondary.
    PrimaryPreferred,
    /// Secondaries only; fails while no secondary is available.
    Secondary,
    /// A secondary when there is one, else the primary.
    SecondaryPreferred,
    /// The member with the lowest latency, primary or secondary.
    Nearest,
}

impl ReadPreferenceMode {
    /// Every mode, in the order the documentation lists them.
    pub const ALL: [ReadPreferenceMode; 5] = [
        ReadPreferenceMode::Primary,
        ReadPreferenceMode::PrimaryPreferred,
        ReadPreferenceMode::Secondary,
        ReadPreferenceMode::SecondaryPreferred,
        ReadPreferenceMode::Nearest,
    ];

    /// The name as the driver and connection strings spell it
    /// (`secondaryPreferred`).
    pub fn as_str(self) -> &'static str {
        match self {
            ReadPreferenceMode::Primary => "primary",
            ReadPreferenceMode::PrimaryPreferred => "primaryPreferred",
            ReadPreferenceMode::Secondary => "secondary",
            ReadPreferenceMode::SecondaryPreferred => "secondaryPreferred",
            ReadPreferenceMode::Nearest => "nearest",
        }
    }
}

impl fmt::Display for ReadPreferenceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown read preference mode; its message lists
/// the valid ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownReadPreference(String);

impl fmt::Display for UnknownReadPreference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let valid: Vec<&str> = ReadPreferenceMode::ALL.iter().map(|m| m.as_str()).collect();
        write!(
            f,
            "`{}` is not a read preference; expected one of {}",
            self.0,
            valid.join(", ")
        )
    }
}

impl std::error::Error for UnknownReadPreference {}

impl FromStr for ReadPreferenceMode {
    type Err = UnknownReadPreference;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let folded: String = s
            .trim()
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        ReadPreferenceMode::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(&folded))
            .ok_or_else(|| UnknownReadPreference(s.to_string()))
    }
}

impl Serialize for ReadPreferenceMode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ReadPreferenceMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One tag set: a member matches when it carries every tag
/// (`{ dc = "east", rack = "1" }`); an empty set matches every member.
pub type TagSet = BTreeMap<String, String>;

/// Reads tag sets, accepting numbers and booleans as tag values (`rack = 1`
/// from TOML, or `[{rack=1}]` from the environment): tags are strings to
/// MongoDB.
pub(super) fn deserialize_tag_sets<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<TagSet>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Unsigned(u64),
        Signed(i64),
        Float(f64),
        Bool(bool),
    }
    let raw: Vec<BTreeMap<String, Scalar>> = Vec::deserialize(deserializer)?;
    Ok(raw
        .into_iter()
        .map(|set| {
            set.into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        Scalar::Text(s) => s,
                        Scalar::Unsigned(n) => n.to_string(),
                        Scalar::Signed(n) => n.to_string(),
                        Scalar::Float(n) => n.to_string(),
                        Scalar::Bool(b) => b.to_string(),
                    };
                    (k, v)
                })
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_in_the_drivers_spelling_and_common_variants() {
        for (text, mode) in [
            ("primary", ReadPreferenceMode::Primary),
            ("primaryPreferred", ReadPreferenceMode::PrimaryPreferred),
            ("secondary", ReadPreferenceMode::Secondary),
            ("secondaryPreferred", ReadPreferenceMode::SecondaryPreferred),
            (
                "secondary_preferred",
                ReadPreferenceMode::SecondaryPreferred,
            ),
            (
                "SECONDARY-PREFERRED",
                ReadPreferenceMode::SecondaryPreferred,
            ),
            (" nearest ", ReadPreferenceMode::Nearest),
        ] {
            assert_eq!(text.parse::<ReadPreferenceMode>(), Ok(mode), "{text}");
        }
        for mode in ReadPreferenceMode::ALL {
            assert_eq!(mode.as_str().parse::<ReadPreferenceMode>(), Ok(mode));
        }
        let err = "closest".parse::<ReadPreferenceMode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "`closest` is not a read preference; expected one of primary, primaryPreferred, \
             secondary, secondaryPreferred, nearest"
        );
    }
}

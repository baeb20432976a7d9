//! Where migrations come from: a folder of `<version>_<name>.up.sql` and
//! `<version>_<name>.down.sql` files, read at run time or embedded at
//! compile time, parsed and checked before anything runs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

#[cfg(any(test, feature = "testing"))]
use sha2::{Digest, Sha256};

use super::error::MigrateError;
#[cfg(any(test, feature = "testing"))]
use super::migration::hex;
use super::migration::{Migration, Script};

/// An ordered, checked set of migrations.
///
/// Build it with [`Migrations::from_dir`] (files read at run time) or
/// [`crate::embed_migrations!`] (files compiled into the binary). Both
/// check everything before anything runs: file names, duplicate versions,
/// down files without an up file, and that every file can be split into
/// statements.
#[derive(Clone, Default)]
pub struct Migrations {
    list: Vec<Migration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Up,
    Down,
}

/// A migration file name, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileName {
    pub version: i64,
    pub name: String,
    pub kind: Kind,
}

/// Parses `<version>_<name>.up.sql` / `.down.sql`.
///
/// Files that do not end in `.sql` (a README, `.gitkeep`) and hidden files
/// are not migrations: `Ok(None)`. A `.sql` file with any other name is an
/// error, since it is almost certainly a migration named wrongly.
pub(crate) fn parse_file_name(file: &str) -> Result<Option<FileName>, MigrateError> {
    let invalid = |problem: &str| MigrateError::InvalidName {
        file: file.to_string(),
        problem: problem.to_string(),
    };
    if file.starts_with('.') || !file.to_ascii_lowercase().ends_with(".sql") {
        return Ok(None);
    }
    let (stem, kind) = if let Some(stem) = file.strip_suffix(".up.sql") {
        (stem, Kind::Up)
    } else if let Some(stem) = file.strip_suffix(".down.sql") {
        (stem, Kind::Down)
    } else {
        return Err(invalid(
            "does not end in `.up.sql` or `.down.sql` (expected `<version>_<name>.up.sql`)",
        ));
    };
    let Some((digits, name)) = stem.split_once('_') else {
        return Err(invalid(
            "has no `_` between version and name (expected `<version>_<name>.up.sql`)",
        ));
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            "does not start with a version number (an integer or a timestamp such as 20240131093000)",
        ));
    }
    let version: i64 = digits
        .parse()
        .map_err(|_| invalid("has a version larger than 9223372036854775807"))?;
    if version == 0 {
        return Err(invalid(
            "has version 0, which stands for \"no migration applied\"; start at 1",
        ));
    }
    if name.is_empty() {
        return Err(invalid("has an empty name after the version"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(invalid(
            "has a name with characters other than ASCII letters, digits, `_` and `-`",
        ));
    }
    Ok(Some(FileName {
        version,
        name: name.to_string(),
        kind,
    }))
}

impl Migrations {
    /// Reads the migrations in a folder (not its subfolders).
    ///
    /// Files not ending in `.sql` and hidden files are ignored.
    ///
    /// # Errors
    ///
    /// [`MigrateError::Read`] when the folder or a file cannot be read;
    /// [`MigrateError::InvalidName`], [`MigrateError::DuplicateVersion`],
    /// [`MigrateError::DownWithoutUp`] and [`MigrateError::InvalidContent`]
    /// for a bad set of files.
    pub fn from_dir(path: impl AsRef<Path>) -> Result<Migrations, MigrateError> {
        let path = path.as_ref();
        let read_error = |path: &Path, source| MigrateError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| read_error(path, e))? {
            let entry = entry.map_err(|e| read_error(path, e))?;
            let file_path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if parse_file_name(&name)?.is_none() || !file_path.is_file() {
                continue;
            }
            let bytes = std::fs::read(&file_path).map_err(|e| read_error(&file_path, e))?;
            files.push((name, bytes));
        }
        Migrations::from_files(files)
    }

    /// The migrations of a folder embedded by [`crate::embed_migrations!`].
    ///
    /// # Errors
    ///
    /// As [`Migrations::from_dir`], except for reading.
    #[doc(hidden)]
    pub fn from_embedded(dir: &include_dir::Dir<'_>) -> Result<Migrations, MigrateError> {
        let files = dir
            .files()
            .filter_map(|file| {
                let name = file.path().file_name()?.to_str()?.to_string();
                Some((name, file.contents().to_vec()))
            })
            .collect();
        Migrations::from_files(files)
    }

    /// Builds the set from `(file name, content)` pairs.
    pub(crate) fn from_files(
        mut files: Vec<(String, Vec<u8>)>,
    ) -> Result<Migrations, MigrateError> {
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut ups: BTreeMap<i64, (FileName, String, Vec<u8>)> = BTreeMap::new();
        let mut downs: BTreeMap<i64, (FileName, String, Vec<u8>)> = BTreeMap::new();
        for (file, bytes) in files {
            let Some(parsed) = parse_file_name(&file)? else {
                continue;
            };
            let map = match parsed.kind {
                Kind::Up => &mut ups,
                Kind::Down => &mut downs,
            };
            if let Some((_, first, _)) = map.get(&parsed.version) {
                return Err(MigrateError::DuplicateVersion {
                    version: parsed.version,
                    first: first.clone(),
                    second: file,
                });
            }
            map.insert(parsed.version, (parsed, file, bytes));
        }
        for (version, (down, file, _)) in &downs {
            let matches = ups
                .get(version)
                .is_some_and(|(up, _, _)| up.name == down.name);
            if !matches {
                return Err(MigrateError::DownWithoutUp {
                    version: *version,
                    file: file.clone(),
                    expected: format!("{}.up.sql", file.trim_end_matches(".down.sql")),
                });
            }
        }
        let mut list = Vec::with_capacity(ups.len());
        for (version, (up, file, bytes)) in ups {
            let down = match downs.remove(&version) {
                Some((_, down_file, down_bytes)) => Some(Script::parse(&down_file, &down_bytes)?),
                None => None,
            };
            list.push(Migration {
                version,
                name: up.name,
                up: Script::parse(&file, &bytes)?,
                down,
            });
        }
        Ok(Migrations { list })
    }

    /// The migrations, by ascending version.
    pub fn iter(&self) -> std::slice::Iter<'_, Migration> {
        self.list.iter()
    }

    /// How many migrations there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The migration with this version.
    pub fn get(&self, version: i64) -> Option<&Migration> {
        self.list
            .binary_search_by_key(&version, |m| m.version)
            .ok()
            .map(|i| &self.list[i])
    }

    /// The highest version, if any.
    pub fn latest(&self) -> Option<i64> {
        self.list.last().map(|m| m.version)
    }

    /// A digest of the whole set (versions, names, checksums, transaction
    /// mode): equal digests mean the same schema. Names test templates.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        for m in &self.list {
            hasher.update(format!(
                "{}\t{}\t{}\t{}\n",
                m.version, m.name, m.up.checksum, m.up.transactional
            ));
        }
        hex(&hasher.finalize())
    }
}

impl<'a> IntoIterator for &'a Migrations {
    type Item = &'a Migration;
    type IntoIter = std::slice::Iter<'a, Migration>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl fmt::Debug for Migrations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.list).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(n, c)| (n.to_string(), c.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn file_names_parse_into_version_name_and_kind() {
        let parsed = parse_file_name("20240131093000_add-users.up.sql")
            .unwrap()
            .unwrap();
        assert_eq!(parsed.version, 20240131093000);
        assert_eq!(parsed.name, "add-users");
        assert_eq!(parsed.kind, Kind::Up);
        let down = parse_file_name("0007_x.down.sql").unwrap().unwrap();
        assert_eq!((down.version, down.kind), (7, Kind::Down));
        assert_eq!(parse_file_name("README.md").unwrap(), None);
        assert_eq!(parse_file_name(".1_hidden.up.sql").unwrap(), None);
    }

    #[test]
    fn bad_file_names_are_typed_errors() {
        for (file, says) in [
            ("1_users.sql", ".up.sql"),
            ("users.up.sql", "`_`"),
            ("v1_users.up.sql", "version number"),
            ("1_.up.sql", "empty name"),
            ("0_init.up.sql", "version 0"),
            ("99999999999999999999_x.up.sql", "larger"),
            ("1_add users.up.sql", "characters"),
            ("1_X.UP.SQL", ".up.sql"),
        ] {
            match parse_file_name(file) {
                Err(MigrateError::InvalidName { file: f, problem }) => {
                    assert_eq!(f, file);
                    assert!(problem.contains(says), "{file}: {problem}");
                }
                other => panic!("{file}: {other:?}"),
            }
        }
    }

    #[test]
    fn sets_are_ordered_by_version_and_pair_up_and_down() {
        let set = Migrations::from_files(files(&[
            ("10_c.up.sql", "SELECT 3"),
            ("2_b.up.sql", "SELECT 2"),
            ("2_b.down.sql", "SELECT -2"),
            ("1_a.up.sql", "SELECT 1"),
            ("notes.txt", "ignored"),
        ]))
        .unwrap();
        let versions: Vec<i64> = set.iter().map(Migration::version).collect();
        assert_eq!(versions, [1, 2, 10]);
        assert_eq!(set.get(2).unwrap().down_file(), Some("2_b.down.sql"));
        assert!(!set.get(10).unwrap().is_reversible());
        assert_eq!(set.latest(), Some(10));
    }

    #[test]
    fn duplicate_versions_and_orphan_downs_are_refused() {
        let err =
            Migrations::from_files(files(&[("1_a.up.sql", ""), ("001_b.up.sql", "")])).unwrap_err();
        assert!(
            matches!(err, MigrateError::DuplicateVersion { version: 1, .. }),
            "{err}"
        );
        let err =
            Migrations::from_files(files(&[("1_a.up.sql", ""), ("1_b.down.sql", "")])).unwrap_err();
        match err {
            MigrateError::DownWithoutUp {
                version, expected, ..
            } => {
                assert_eq!(version, 1);
                assert_eq!(expected, "1_b.up.sql");
            }
            other => panic!("{other}"),
        }
        let err = Migrations::from_files(files(&[("3_c.down.sql", "")])).unwrap_err();
        assert!(matches!(
            err,
            MigrateError::DownWithoutUp { version: 3, .. }
        ));
    }

    #[test]
    fn fingerprints_change_with_any_migration() {
        let a = Migrations::from_files(files(&[("1_a.up.sql", "SELECT 1")])).unwrap();
        let b = Migrations::from_files(files(&[("1_a.up.sql", "SELECT 2")])).unwrap();
        let a_crlf = Migrations::from_files(files(&[("1_a.up.sql", "SELECT 1\r\n")])).unwrap();
        let a_lf = Migrations::from_files(files(&[("1_a.up.sql", "SELECT 1\n")])).unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a_crlf.fingerprint(), a_lf.fingerprint());
    }
}

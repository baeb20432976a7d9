//! Declarative MongoDB indexes: declare them per collection, ensure them at
//! start-up. Idempotent, and loud when an index of the same name has
//! drifted from its declaration.

use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{Bson, Document};
use mongodb::options::IndexOptions;
use mongodb::{Database, IndexModel};

use super::MongoHandle;
use crate::error::{Error, Result};

/// One index: its keys and options.
///
/// ```
/// use std::time::Duration;
/// use dbmanager::mongo::IndexSpec;
/// use dbmanager::mongodb::bson::doc;
///
/// let by_email = IndexSpec::new(doc! { "email": 1 }).unique();
/// let sessions_expire = IndexSpec::new(doc! { "created_at": 1 }).ttl(Duration::from_secs(3600));
/// assert_eq!(by_email.index_name(), "email_1");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct IndexSpec {
    /// Keys in order, `1` / `-1` / `"text"` / `"2dsphere"` ...
    pub keys: Document,
    /// Name; default: the server's convention (`field_1_other_-1`).
    pub name: Option<String>,
    /// Reject duplicate keys.
    pub unique: bool,
    /// Skip documents without the indexed field.
    pub sparse: bool,
    /// Delete documents this long after the indexed date (TTL index).
    pub expire_after: Option<Duration>,
    /// Index only documents matching this filter.
    pub partial_filter: Option<Document>,
}

impl IndexSpec {
    /// An index on these keys, with no options.
    pub fn new(keys: Document) -> Self {
        IndexSpec {
            keys,
            name: None,
            unique: false,
            sparse: false,
            expire_after: None,
            partial_filter: None,
        }
    }

    /// Names the index.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Makes the index unique.
    pub fn unique(mut self) -> Self {
        self.unique = true;
        self
    }

    /// Makes the index sparse.
    pub fn sparse(mut self) -> Self {
        self.sparse = true;
        self
    }

    /// Makes it a TTL index.
    pub fn ttl(mut self, expire_after: Duration) -> Self {
        self.expire_after = Some(expire_after);
        self
    }

    /// Makes it a partial index.
    pub fn partial(mut self, filter: Document) -> Self {
        self.partial_filter = Some(filter);
        self
    }

    /// The name the index has on the server.
    pub fn index_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.keys
                .iter()
                .map(|(field, direction)| format!("{field}_{}", key_value(direction)))
                .collect::<Vec<_>>()
                .join("_")
        })
    }

    fn model(&self) -> IndexModel {
        let mut options = IndexOptions::default();
        options.name = Some(self.index_name());
        options.unique = self.unique.then_some(true);
        options.sparse = self.sparse.then_some(true);
        options.expire_after = self.expire_after;
        options.partial_filter_expression = self.partial_filter.clone();
        IndexModel::builder()
            .keys(self.keys.clone())
            .options(options)
            .build()
    }

    fn describe(&self) -> String {
        describe(
            &self.keys,
            self.unique,
            self.sparse,
            self.expire_after,
            self.partial_filter.as_ref(),
        )
    }
}

/// The indexes of one collection.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionIndexes {
    /// The collection.
    pub collection: String,
    /// Its indexes (besides `_id`).
    pub indexes: Vec<IndexSpec>,
}

impl CollectionIndexes {
    /// Declares the indexes of a collection.
    pub fn new(
        collection: impl Into<String>,
        indexes: impl IntoIterator<Item = IndexSpec>,
    ) -> Self {
        CollectionIndexes {
            collection: collection.into(),
            indexes: indexes.into_iter().collect(),
        }
    }
}

/// An index by collection and name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct IndexRef {
    /// The collection.
    pub collection: String,
    /// The index name.
    pub name: String,
}

/// What [`MongoHandle::ensure_indexes`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct IndexReport {
    /// Indexes created by this call.
    pub created: Vec<IndexRef>,
    /// Indexes that already existed with the declared definition.
    pub present: Vec<IndexRef>,
}

impl MongoHandle {
    /// Creates the declared indexes that do not exist yet in the default
    /// database. Running it again creates nothing.
    ///
    /// # Errors
    ///
    /// [`Error::IndexConflict`] when an index of the same name exists with
    /// another definition (nothing is dropped or changed); [`Error::Mongo`]
    /// for driver errors.
    pub async fn ensure_indexes(&self, declared: &[CollectionIndexes]) -> Result<IndexReport> {
        ensure_indexes(&self.database(), declared).await
    }
}

/// [`MongoHandle::ensure_indexes`] on any database.
///
/// # Errors
///
/// As [`MongoHandle::ensure_indexes`].
pub async fn ensure_indexes(
    database: &Database,
    declared: &[CollectionIndexes],
) -> Result<IndexReport> {
    let mut report = IndexReport::default();
    for collection in declared {
        let handle = database.collection::<Document>(&collection.collection);
        let existing: Vec<IndexModel> = match handle.list_indexes().await {
            Ok(cursor) => cursor
                .try_collect()
                .await
                .map_err(|e| Error::mongo("listing indexes", e))?,
            // A collection that does not exist yet has no indexes.
            Err(e) if is_namespace_not_found(&e) => Vec::new(),
            Err(e) => return Err(Error::mongo("listing indexes", e)),
        };
        let mut to_create = Vec::new();
        for spec in &collection.indexes {
            let name = spec.index_name();
            let found = existing.iter().find(|m| {
                m.options.as_ref().and_then(|o| o.name.as_deref()) == Some(name.as_str())
            });
            let reference = IndexRef {
                collection: collection.collection.clone(),
                name: name.clone(),
            };
            match found {
                Some(model) if same_definition(spec, model) => report.present.push(reference),
                Some(model) => {
                    return Err(Error::IndexConflict {
                        collection: collection.collection.clone(),
                        name,
                        existing: describe_model(model),
                        wanted: spec.describe(),
                    });
                }
                None => {
                    to_create.push(spec.model());
                    report.created.push(reference);
                }
            }
        }
        if !to_create.is_empty() {
            handle
                .create_indexes(to_create)
                .await
                .map_err(|e| Error::mongo("creating indexes", e))?;
        }
    }
    Ok(report)
}

fn is_namespace_not_found(error: &mongodb::error::Error) -> bool {
    matches!(error.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 26)
}

fn same_definition(spec: &IndexSpec, model: &IndexModel) -> bool {
    let options = model.options.clone().unwrap_or_default();
    same_keys(&spec.keys, &model.keys)
        && spec.unique == options.unique.unwrap_or(false)
        && spec.sparse == options.sparse.unwrap_or(false)
        && spec.expire_after.map(|d| d.as_secs()) == options.expire_after.map(|d| d.as_secs())
        && spec.partial_filter == options.partial_filter_expression
}

/// Key documents compared in order, numbers by value (the server may answer
/// `1` as an int32, an int64 or a double).
fn same_keys(a: &Document, b: &Document) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && key_value(va) == key_value(vb))
}

fn key_value(value: &Bson) -> String {
    match value {
        Bson::Int32(n) => n.to_string(),
        Bson::Int64(n) => n.to_string(),
        Bson::Double(n) if n.fract() == 0.0 => (*n as i64).to_string(),
        Bson::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn describe(
    keys: &Document,
    unique: bool,
    sparse: bool,
    expire_after: Option<Duration>,
    partial: Option<&Document>,
) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|(k, v)| format!("{k}: {}", key_value(v)))
        .collect();
    let mut out = format!("{{{}}}", keys.join(", "));
    if unique {
        out.push_str(" unique");
    }
    if sparse {
        out.push_str(" sparse");
    }
    if let Some(ttl) = expire_after {
        out.push_str(&format!(" ttl {}s", ttl.as_secs()));
    }
    if let Some(filter) = partial {
        out.push_str(&format!(" partial {filter}"));
    }
    out
}

fn describe_model(model: &IndexModel) -> String {
    let options = model.options.clone().unwrap_or_default();
    describe(
        &model.keys,
        options.unique.unwrap_or(false),
        options.sparse.unwrap_or(false),
        options.expire_after,
        options.partial_filter_expression.as_ref(),
    )
}

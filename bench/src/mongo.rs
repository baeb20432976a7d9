//! The MongoDB workloads: `ping` and `find-by-id`, through the manager or
//! through a bare driver client (the baseline the manager is compared
//! with).

use std::time::Instant;

use dbmanager::mongodb::bson::{Document, doc};
use dbmanager::mongodb::{Client, Collection};

use crate::error::{BenchError, Result};
use crate::runner::Step;
use crate::{BenchOptions, Workload};
use dbmanager::DatabaseManager;

/// Documents inserted per `insert_many` while seeding.
const SEED_BATCH: u32 = 1000;

/// Where a task gets its client from.
#[derive(Clone)]
pub(crate) enum Source {
    /// `db.mongo()?` on every operation, as a service does.
    Manager(DatabaseManager),
    /// A driver client without the manager.
    Driver { client: Client, database: String },
}

impl Source {
    /// The client, and the database the workload's collection lives in.
    #[inline]
    fn client(&self) -> Result<(&Client, &str)> {
        match self {
            Source::Manager(db) => {
                let handle = db.mongo()?;
                Ok((handle.client(), handle.database_name()))
            }
            Source::Driver { client, database } => Ok((client, database)),
        }
    }
}

/// One task's MongoDB operations.
pub(crate) struct MongoStep {
    source: Source,
    workload: Workload,
    collection: String,
    documents: u32,
    rng: fastrand::Rng,
}

impl Step for MongoStep {
    async fn step(&mut self) -> Result<Option<Instant>> {
        let (client, database) = self.source.client()?;
        if self.workload == Workload::MongoPing {
            client
                .database("admin")
                .run_command(doc! { "ping": 1 })
                .await
                .map_err(|e| BenchError::operation("ping", e))?;
        } else {
            let id = self.rng.u32(0..self.documents);
            let found = client
                .database(database)
                .collection::<Document>(&self.collection)
                .find_one(doc! { "_id": i64::from(id) })
                .await
                .map_err(|e| BenchError::operation("find by id", e))?;
            if found.is_none() {
                return Err(BenchError::MissingDataset {
                    workload: Workload::MongoFindById,
                    problem: format!(
                        "document {id} is missing from {database}.{}",
                        self.collection
                    ),
                    hint: "another process changed the collection during the run".into(),
                });
            }
        }
        Ok(None)
    }
}

/// Seeds what the workload needs and makes one step per task. Returns the
/// steps and a description of the data set.
pub(crate) async fn prepare(
    source: Source,
    options: &BenchOptions,
) -> Result<(Vec<MongoStep>, Option<String>)> {
    let dataset = if options.workload == Workload::MongoFindById {
        let (client, database) = source.client()?;
        let collection = client
            .database(database)
            .collection::<Document>(&options.mongo_collection);
        seed(&collection, options.mongo_documents).await?;
        Some(format!(
            "{database}.{}: {} documents",
            options.mongo_collection, options.mongo_documents
        ))
    } else {
        None
    };
    let steps = (0..options.tasks)
        .map(|task| MongoStep {
            source: source.clone(),
            workload: options.workload,
            collection: options.mongo_collection.clone(),
            documents: options.mongo_documents,
            rng: fastrand::Rng::with_seed(options.seed.wrapping_add(task as u64)),
        })
        .collect();
    Ok((steps, dataset))
}

/// Makes the collection hold exactly the documents `_id` 0 to `count - 1`,
/// rewriting it only when it does not already.
async fn seed(collection: &Collection<Document>, count: u32) -> Result<()> {
    let present = collection
        .count_documents(doc! {})
        .await
        .map_err(|e| BenchError::operation("counting the benchmark documents", e))?;
    let last = collection
        .find_one(doc! { "_id": i64::from(count - 1) })
        .await
        .map_err(|e| BenchError::operation("checking the benchmark documents", e))?;
    if present == u64::from(count) && last.is_some() {
        return Ok(());
    }
    collection
        .delete_many(doc! {})
        .await
        .map_err(|e| BenchError::operation("clearing the benchmark collection", e))?;
    let mut start = 0;
    while start < count {
        let end = (start + SEED_BATCH).min(count);
        let batch = (start..end).map(|id| {
            doc! {
                "_id": i64::from(id),
                "name": format!("document {id}"),
                "value": i64::from(id) * 7,
            }
        });
        collection
            .insert_many(batch)
            .await
            .map_err(|e| BenchError::operation("seeding the benchmark collection", e))?;
        start = end;
    }
    Ok(())
}

//! What can stop a benchmark run. Errors of single operations during the
//! run are counted in the report instead; these end the run.

use crate::workload::Workload;

/// A `Result` with [`BenchError`] as its error type.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A benchmark option (or the driver client options of the MongoDB
    /// baseline) is unusable.
    #[error("invalid benchmark option `{key}`: {problem}")]
    Option {
        /// The option (`bench.tasks`, `bench.workload`, ...).
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },

    /// The workload's data is missing: it was never created, or was created
    /// in another database.
    #[error("the {workload} benchmark cannot run: {problem}; {hint}")]
    MissingDataset {
        /// The workload that needs the data.
        workload: Workload,
        /// What is missing, and where it was looked for.
        problem: String,
        /// How to create it.
        hint: String,
    },

    /// A database operation of the benchmark (creating its table, seeding
    /// documents, one workload operation) failed.
    #[error("{what}: {error}")]
    Operation {
        /// What was being done.
        what: &'static str,
        /// The error; its message is already in this one's.
        error: Box<dbmanager::Error>,
    },

    /// The manager refused the run (database not configured, pool timeout,
    /// server error while priming).
    #[error(transparent)]
    Database(Box<dbmanager::Error>),
}

impl From<dbmanager::Error> for BenchError {
    fn from(error: dbmanager::Error) -> Self {
        BenchError::Database(Box::new(error))
    }
}

/// A driver error of a workload operation, as the crate's error would
/// carry it.
impl From<dbmanager::tokio_postgres::Error> for BenchError {
    fn from(error: dbmanager::tokio_postgres::Error) -> Self {
        dbmanager::Error::from(error).into()
    }
}

/// A driver error of a workload operation, as the crate's error would
/// carry it.
impl From<dbmanager::mongodb::error::Error> for BenchError {
    fn from(error: dbmanager::mongodb::error::Error) -> Self {
        dbmanager::Error::from(error).into()
    }
}

impl BenchError {
    /// The database layer's error, when the run failed there.
    pub fn database_error(&self) -> Option<&dbmanager::Error> {
        match self {
            BenchError::Operation { error, .. } | BenchError::Database(error) => Some(error),
            _ => None,
        }
    }

    pub(crate) fn option(key: &'static str, problem: impl Into<String>) -> Self {
        BenchError::Option {
            key,
            problem: problem.into(),
        }
    }

    pub(crate) fn operation(what: &'static str, error: impl Into<dbmanager::Error>) -> Self {
        BenchError::Operation {
            what,
            error: Box::new(error.into()),
        }
    }
}

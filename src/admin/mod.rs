//! Database administration outside the pool: direct connections to any
//! database of the configured server, creating and dropping databases and
//! extensions. Bootstrap, `testing` and the command line use it; it runs no
//! migration.

mod connection;
mod drop;

#[cfg(feature = "testing")]
pub(crate) use connection::{DirectConnection, admin_error, database_exists, drop_database};
pub(crate) use connection::{Server, create_database, ensure_extension, quote_ident};
pub use drop::{drop_configured_database, looks_like_test_database};

//! Deciding whether an error may go away if the operation is tried again.

#[cfg(feature = "mongodb")]
use crate::error::classify_mongo;
#[cfg(feature = "postgres")]
use crate::error::classify_postgres;
use crate::error::{Error, classify_io};

/// Errors that know whether retrying can help.
///
/// Implemented for this crate's [`Error`], `tokio_postgres::Error`,
/// `mongodb::error::Error` and `std::io::Error`, so [`super::retry`] works
/// with driver calls directly.
pub trait Transient {
    /// Whether a later attempt of the same operation may succeed.
    fn is_transient(&self) -> bool;
}

impl Transient for Error {
    fn is_transient(&self) -> bool {
        Error::is_transient(self)
    }
}

impl Transient for std::io::Error {
    fn is_transient(&self) -> bool {
        classify_io(self).is_transient()
    }
}

#[cfg(feature = "postgres")]
impl Transient for tokio_postgres::Error {
    fn is_transient(&self) -> bool {
        classify_postgres(self).is_transient()
    }
}

#[cfg(feature = "mongodb")]
impl Transient for mongodb::error::Error {
    fn is_transient(&self) -> bool {
        classify_mongo(self).is_transient()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailureKind;

    #[test]
    fn io_kinds_map_to_transient_failures() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify_io(&refused), FailureKind::Refused);
        assert!(refused.is_transient());
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(classify_io(&denied), FailureKind::Io);
    }

    #[test]
    fn permanent_kinds_are_not_transient() {
        for kind in [
            FailureKind::Authentication,
            FailureKind::UnknownDatabase,
            FailureKind::Tls,
            FailureKind::Other,
        ] {
            assert!(!kind.is_transient(), "{kind}");
        }
    }
}

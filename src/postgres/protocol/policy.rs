//! The one rule for what a pooled connection needs before a new caller may
//! have it, read from its exact session state ([`super::View`]). Both
//! moments a connection is looked at — its return, and its next checkout —
//! ask this function, so they cannot disagree. Pure: the executor
//! (`postgres::reuse`) does what it says and asks again.

use super::session::{TransactionStatus, View};

/// What to do next with a connection a caller let go of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Hand it out as it is.
    Ready,
    /// Wait for the server's answers: they need nothing from the client
    /// (housekeeping, a statement already done, a COPY TO STDOUT being
    /// read to its end).
    Wait,
    /// A statement its caller abandoned still runs: cancel it on the
    /// server, then wait for its answer.
    Cancel,
    /// One more `ReadyForQuery` may come after a failed COPY: send an empty
    /// query and read its answer, which settles it.
    Probe,
    /// A transaction block was left open or failed: `ROLLBACK`.
    Rollback,
    /// Close it: the connection ended, the session left what the model
    /// knows, or only the departed caller could have ended what it started.
    Close(&'static str),
}

/// The next step for a connection whose session reads `view`; `cancelled`
/// when a cancel was already sent for the work still running.
pub(crate) fn decide(view: &View, cancelled: bool) -> Action {
    if view.broken {
        return Action::Close("its session is broken or ended");
    }
    if view.awaits_client {
        return Action::Close("the server waits for what only the departed caller would send");
    }
    if view.awaiting > 0 {
        return if view.running && !cancelled {
            Action::Cancel
        } else {
            Action::Wait
        };
    }
    if view.stray_ready_possible {
        return Action::Probe;
    }
    if view.status != TransactionStatus::Idle {
        return Action::Rollback;
    }
    Action::Ready
}

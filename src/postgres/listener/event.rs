//! What a [`super::Listener`] yields.

use std::time::Duration;

/// One event of a [`super::Listener`]: `listener.next().await`.
///
/// Events are never lost silently: a notification that could not be
/// delivered is covered by a later [`ListenerEvent::Reconnected`] or
/// [`ListenerEvent::Lagged`], and on either the consumer resyncs (reads
/// the state the notifications describe again).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerEvent {
    /// A `NOTIFY` on a channel this listener listens to, in the order the
    /// server delivered them.
    Notification {
        /// The channel.
        channel: String,
        /// The payload (empty when none was given).
        payload: String,
        /// The process id of the server backend that sent it.
        process_id: i32,
    },
    /// The connection was lost and replaced, and every channel is listened
    /// again on the new one. Notifications sent while it was away are not
    /// delivered: resync now. Anything committed after this event is
    /// notified.
    Reconnected {
        /// From the moment the old connection was found lost to the moment
        /// every channel was listened again on the new one.
        gap: Duration,
    },
    /// The consumer fell more than `postgres.listener.buffer_size` events
    /// behind: the oldest unread ones were dropped. Resync now.
    Lagged {
        /// How many events were dropped.
        missed: u64,
    },
}

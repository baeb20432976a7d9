//! Reading a managed listener's events within a bound.

use std::time::Duration;

use dbmanager::{Listener, ListenerEvent};

/// The listener's next event within `bound`; panics when none came or the
/// stream ended.
pub async fn next_event(listener: &mut Listener, bound: Duration) -> ListenerEvent {
    tokio::time::timeout(bound, listener.next())
        .await
        .expect("an event within the bound")
        .expect("the listener is open")
}

//! The bounded buffer between a listener's connection and its consumer:
//! the connection always has room (the oldest unread event makes way), and
//! the consumer learns how many it missed.

use std::collections::VecDeque;

use super::event::ListenerEvent;

/// Unread events, at most `capacity` of them, plus a count of those dropped
/// to make room, delivered as one [`ListenerEvent::Lagged`] before the
/// events that follow the drop.
#[derive(Debug)]
pub(super) struct Buffer {
    events: VecDeque<ListenerEvent>,
    capacity: usize,
    missed: u64,
}

impl Buffer {
    pub fn new(capacity: usize) -> Self {
        Buffer {
            // Grown as needed: most listeners never hold more than a few.
            events: VecDeque::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
            missed: 0,
        }
    }

    /// Adds an event; returns whether the oldest unread one was dropped to
    /// make room. A dropped `Reconnected` needs no event of its own: the
    /// `Lagged` that replaces it asks for the same resync.
    pub fn push(&mut self, event: ListenerEvent) -> bool {
        let dropped = self.events.len() >= self.capacity;
        if dropped {
            self.events.pop_front();
            self.missed += 1;
        }
        self.events.push_back(event);
        dropped
    }

    /// The next event for the consumer: `Lagged` first when events were
    /// dropped (they were older than everything still buffered).
    pub fn pop(&mut self) -> Option<ListenerEvent> {
        if self.missed > 0 {
            let missed = std::mem::take(&mut self.missed);
            return Some(ListenerEvent::Lagged { missed });
        }
        self.events.pop_front()
    }

    /// Events (and a pending `Lagged`) the consumer has not read yet.
    pub fn len(&self) -> usize {
        self.events.len() + usize::from(self.missed > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(n: u32) -> ListenerEvent {
        ListenerEvent::Notification {
            channel: "c".into(),
            payload: n.to_string(),
            process_id: 1,
        }
    }

    #[test]
    fn overflow_drops_the_oldest_and_reports_them_once_before_the_rest() {
        let mut buffer = Buffer::new(3);
        let dropped: Vec<bool> = (0..5).map(|n| buffer.push(note(n))).collect();
        assert_eq!(dropped, [false, false, false, true, true]);
        assert_eq!(buffer.len(), 4);
        assert_eq!(buffer.pop(), Some(ListenerEvent::Lagged { missed: 2 }));
        let rest: Vec<_> = std::iter::from_fn(|| buffer.pop()).collect();
        assert_eq!(rest, [note(2), note(3), note(4)]);
        assert_eq!(buffer.len(), 0);
    }

    #[test]
    fn nothing_is_reported_missing_while_the_consumer_keeps_up() {
        let mut buffer = Buffer::new(2);
        for n in 0..100 {
            assert!(!buffer.push(note(n)));
            assert_eq!(buffer.pop(), Some(note(n)));
        }
        assert_eq!(buffer.pop(), None);
    }
}

//! The agent's set of streams: the configured ones, fixed at start, plus the discovered ones,
//! which come and go while the agent runs.
//!
//! Everything beside capture that reports on streams (the metrics exporter, the node
//! publisher, the device plugin) reads this one set, so a discovered stream is labelled,
//! advertised and exported exactly while it is in it. Only the agent's discovery loop changes
//! it. Readers take a cheap copy of the list (clones of [`StreamHealth`] handles) and never
//! block the writer for longer than that copy.

use tokio::sync::watch;

use super::StreamHealth;

/// The current streams, in order: configured ones first (configuration order), then discovered
/// ones (in the order they appeared). Cheap to clone; every clone sees the same set.
#[derive(Debug, Clone)]
pub struct StreamSet {
    tx: watch::Sender<Vec<StreamHealth>>,
}

impl StreamSet {
    /// A set holding `streams`.
    pub fn new(streams: Vec<StreamHealth>) -> StreamSet {
        StreamSet {
            tx: watch::Sender::new(streams),
        }
    }

    /// A copy of the current list.
    pub fn list(&self) -> Vec<StreamHealth> {
        self.tx.borrow().clone()
    }

    /// Every stream's health now.
    pub fn snapshots(&self) -> Vec<super::HealthSnapshot> {
        self.tx
            .borrow()
            .iter()
            .map(StreamHealth::snapshot)
            .collect()
    }

    /// How many streams the set holds.
    pub fn len(&self) -> usize {
        self.tx.borrow().len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.tx.borrow().is_empty()
    }

    /// The stream called `name`, if it is in the set.
    pub fn get(&self, name: &str) -> Option<StreamHealth> {
        self.tx.borrow().iter().find(|s| s.name() == name).cloned()
    }

    /// Add `health` at the end, replacing a stream of the same name in place.
    pub fn insert(&self, health: StreamHealth) {
        self.tx
            .send_modify(|v| match v.iter_mut().find(|s| s.name() == health.name()) {
                Some(slot) => *slot = health,
                None => v.push(health),
            });
    }

    /// Remove the stream called `name`; whether it was there.
    pub fn remove(&self, name: &str) -> bool {
        self.tx.send_if_modified(|v| {
            let before = v.len();
            v.retain(|s| s.name() != name);
            v.len() != before
        })
    }

    /// Replace the whole list (notifying followers only if the names or handles changed).
    pub fn replace(&self, streams: Vec<StreamHealth>) {
        self.tx.send_if_modified(|v| {
            let same =
                v.len() == streams.len() && v.iter().zip(&streams).all(|(a, b)| a.is_same(b));
            *v = streams;
            !same
        });
    }

    /// Follow changes (the device plugin): the receiver sees every new list.
    pub fn subscribe(&self) -> watch::Receiver<Vec<StreamHealth>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::kinds::DeviceClass;

    #[test]
    fn insert_replaces_by_name_and_subscribers_see_changes() {
        let set = StreamSet::new(vec![StreamHealth::new(
            "cam0",
            "camera",
            DeviceClass::Camera,
        )]);
        let mut rx = set.subscribe();
        rx.borrow_and_update();
        set.insert(StreamHealth::new("cam-a", "camera", DeviceClass::Camera));
        assert!(rx.has_changed().unwrap());
        let names = |s: &StreamSet| {
            s.list()
                .iter()
                .map(|h| h.name().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&set), ["cam0", "cam-a"]);
        set.insert(StreamHealth::new("cam-a", "serial", DeviceClass::Serial));
        assert_eq!(names(&set), ["cam0", "cam-a"]);
        assert_eq!(set.get("cam-a").unwrap().snapshot().kind, "serial");
        rx.borrow_and_update();
        assert!(!set.remove("nope"));
        assert!(!rx.has_changed().unwrap(), "no change, no notification");
        assert!(set.remove("cam-a"));
        assert_eq!(names(&set), ["cam0"]);
        assert_eq!(set.len(), 1);
    }
}

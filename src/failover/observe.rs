//! What the controller sees: [`NodeView`]s read from Node objects, and [`LeaseTracker`], which
//! turns successive reads of the agents' Leases into [`LeaseObservation`]s on the controller's
//! own monotonic clock.
//!
//! The tracker never compares a Lease's `renewTime` with the local clock: it only notices that
//! the Lease changed (its `resourceVersion`, holder or `renewTime` differ from the previous
//! read) and records *when it noticed*. A node whose clock is minutes off, or jumps, is judged
//! exactly like one whose clock is right.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;

use super::decide::{LeaseObservation, NodeView, Role, DEAD_TAINT_VALUE};
use super::{
    ACTIVE_LABEL, BATTERY_CRITICAL, DEVICE_FAILURE, FAILOVER_TAINT, GROUP_LABEL, ROLE_LABEL,
};

/// Read the parts of a Node the decision uses. `None` for a Node without a name.
pub fn node_view(node: &Node) -> Option<NodeView> {
    let name = node.metadata.name.clone()?;
    let labels = node.metadata.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    let spec = node.spec.as_ref();
    let conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let is_true = |t: &str| {
        conditions
            .iter()
            .any(|c| c.type_ == t && c.status == "True")
    };
    let failover = spec
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
        .iter()
        .find(|t| t.key == FAILOVER_TAINT && t.effect == "NoExecute");
    Some(NodeView {
        name,
        group: label(GROUP_LABEL).map(str::to_owned),
        role: Role::from_label(label(ROLE_LABEL)),
        active: label(ACTIVE_LABEL) == Some("true"),
        failover_taint: failover.is_some(),
        dead_taint: failover.is_some_and(|t| t.value.as_deref() == Some(DEAD_TAINT_VALUE)),
        battery_critical: is_true(BATTERY_CRITICAL),
        device_failure: is_true(DEVICE_FAILURE),
        ready: is_true("Ready"),
        unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
    })
}

/// The identity of one version of a Lease: any difference means the holder wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseKey {
    resource_version: Option<String>,
    holder: Option<String>,
    renew_time: Option<k8s_openapi::jiff::Timestamp>,
}

/// One read of a Lease: its version and its declared duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSighting {
    /// What identifies this version.
    pub key: LeaseKey,
    /// `spec.leaseDurationSeconds`, if set and positive.
    pub duration: Option<Duration>,
    /// The graceful-stop marker is set.
    pub stopped: bool,
}

impl LeaseSighting {
    /// Read a Lease object.
    pub fn of(lease: &Lease) -> LeaseSighting {
        let spec = lease.spec.as_ref();
        LeaseSighting {
            key: LeaseKey {
                resource_version: lease.metadata.resource_version.clone(),
                holder: spec.and_then(|s| s.holder_identity.clone()),
                renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            },
            duration: spec
                .and_then(|s| s.lease_duration_seconds)
                .filter(|d| *d > 0)
                .map(|d| Duration::from_secs(d.unsigned_abs().into())),
            stopped: lease
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(crate::kube::keys::STOPPED_ANNOTATION)),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    /// `None`: the Lease did not exist at the last read.
    key: Option<LeaseKey>,
    obs: LeaseObservation,
}

/// Observations of the agents' Leases, one per node, on the controller's clock.
#[derive(Debug, Clone)]
pub struct LeaseTracker {
    entries: HashMap<String, Entry>,
    last_read: Option<Instant>,
    default_duration: Duration,
    max_gap: Duration,
}

impl LeaseTracker {
    /// A tracker that assumes `default_duration` for Leases that do not declare one (and for
    /// missing Leases), and forgives a gap longer than `max_gap` between two reads (an API
    /// outage seen by the controller is not evidence against the nodes).
    pub fn new(default_duration: Duration, max_gap: Duration) -> LeaseTracker {
        LeaseTracker {
            entries: HashMap::new(),
            last_read: None,
            default_duration,
            max_gap,
        }
    }

    /// Record one read at `now`: every node the controller cares about, with its Lease as read
    /// (`None`: no Lease). Nodes not listed are forgotten.
    pub fn observe<'a>(
        &mut self,
        now: Instant,
        nodes: impl IntoIterator<Item = (&'a str, Option<LeaseSighting>)>,
    ) {
        // After a gap in our own reads, restart every clock: whatever the nodes did while we
        // could not look (probably: fail to reach the same API server) is not held against them.
        let forgive = self
            .last_read
            .is_some_and(|t| now.saturating_duration_since(t) > self.max_gap);
        self.last_read = Some(now);
        let mut seen = HashMap::with_capacity(self.entries.len());
        for (name, sighting) in nodes {
            let duration = sighting
                .as_ref()
                .and_then(|s| s.duration)
                .unwrap_or(self.default_duration);
            let stopped = sighting.as_ref().is_some_and(|s| s.stopped);
            let present = sighting.is_some();
            let key = sighting.map(|s| s.key);
            let entry = match self.entries.remove(name) {
                None => Entry {
                    key,
                    obs: LeaseObservation {
                        last_change: now,
                        changes: 0,
                        duration,
                        present,
                        stopped,
                    },
                },
                Some(mut e) => {
                    if e.key != key {
                        e.key = key;
                        e.obs.last_change = now;
                        e.obs.changes = e.obs.changes.saturating_add(1);
                    } else if forgive {
                        e.obs.last_change = now;
                    }
                    e.obs.duration = duration;
                    e.obs.present = present;
                    e.obs.stopped = stopped;
                    e
                }
            };
            seen.insert(name.to_owned(), entry);
        }
        self.entries = seen;
    }

    /// The current observations, by node name.
    pub fn observations(&self) -> BTreeMap<String, LeaseObservation> {
        self.entries
            .iter()
            .map(|(k, e)| (k.clone(), e.obs))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::decide::LeaseState;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    use proptest::prelude::*;

    const D: Duration = Duration::from_secs(2);

    fn key(rv: &str) -> Option<LeaseSighting> {
        Some(LeaseSighting {
            key: LeaseKey {
                resource_version: Some(rv.into()),
                holder: Some("n".into()),
                renew_time: None,
            },
            duration: Some(D),
            stopped: false,
        })
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn node_view_reads_labels_taints_and_conditions() {
        let cond = |t: &str, s: &str| NodeCondition {
            type_: t.into(),
            status: s.into(),
            ..Default::default()
        };
        let node = Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some(
                    [
                        (GROUP_LABEL, "cam"),
                        (ROLE_LABEL, "backup"),
                        (ACTIVE_LABEL, "true"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(vec![
                    Taint {
                        key: FAILOVER_TAINT.into(),
                        effect: "NoSchedule".into(),
                        ..Default::default()
                    },
                    Taint {
                        key: FAILOVER_TAINT.into(),
                        effect: "NoExecute".into(),
                        value: Some(DEAD_TAINT_VALUE.into()),
                        ..Default::default()
                    },
                ]),
                unschedulable: Some(true),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![
                    cond("Ready", "True"),
                    cond(BATTERY_CRITICAL, "True"),
                    cond(DEVICE_FAILURE, "False"),
                ]),
                ..Default::default()
            }),
        };
        let v = node_view(&node).unwrap();
        assert_eq!(
            v,
            NodeView {
                name: "n1".into(),
                group: Some("cam".into()),
                role: Role::Backup,
                active: true,
                failover_taint: true,
                dead_taint: true,
                battery_critical: true,
                device_failure: false,
                ready: true,
                unschedulable: true,
            }
        );
        let bare = Node {
            metadata: ObjectMeta {
                name: Some("n2".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let v = node_view(&bare).unwrap();
        assert_eq!(v.group, None);
        assert_eq!(v.role, Role::Unassigned);
        assert!(!v.active && !v.ready && !v.failover_taint && !v.unschedulable);
        // Only a NoExecute failover taint counts, and only ours is the dead-node taint.
        let mut agent = node.clone();
        if let Some(spec) = agent.spec.as_mut() {
            spec.taints = Some(vec![Taint {
                key: FAILOVER_TAINT.into(),
                effect: "NoExecute".into(),
                value: Some("battery-critical".into()),
                ..Default::default()
            }]);
        }
        let v = node_view(&agent).unwrap();
        assert!(v.failover_taint && !v.dead_taint);
        if let Some(spec) = agent.spec.as_mut() {
            spec.taints = Some(vec![Taint {
                key: FAILOVER_TAINT.into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            }]);
        }
        let v = node_view(&agent).unwrap();
        assert!(!v.failover_taint && !v.dead_taint);
        assert!(node_view(&Node::default()).is_none());
    }

    #[test]
    fn sighting_reads_a_lease() {
        let lease = Lease {
            metadata: ObjectMeta {
                resource_version: Some("42".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("n1".into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
                ..Default::default()
            }),
        };
        let s = LeaseSighting::of(&lease);
        assert_eq!(s.duration, Some(Duration::from_secs(15)));
        assert_eq!(s.key.resource_version.as_deref(), Some("42"));
        let mut odd = lease.clone();
        if let Some(spec) = odd.spec.as_mut() {
            spec.lease_duration_seconds = Some(-3);
        }
        assert_eq!(LeaseSighting::of(&odd).duration, None);
        assert_eq!(LeaseSighting::of(&Lease::default()).duration, None);
        // The graceful-stop marker.
        assert!(!s.stopped);
        let mut stopped = lease.clone();
        stopped.metadata.annotations = Some(
            [(
                crate::kube::keys::STOPPED_ANNOTATION.to_owned(),
                "2026-11-30T12:00:00Z".to_owned(),
            )]
            .into_iter()
            .collect(),
        );
        assert!(LeaseSighting::of(&stopped).stopped);
    }

    #[test]
    fn the_tracker_records_presence_and_the_stop_marker() {
        let t0 = Instant::now();
        let mut t = LeaseTracker::new(D, Duration::from_secs(10));
        t.observe(t0, [("n", None)]);
        assert!(!t.observations()["n"].present);
        let mut marked = key("1");
        if let Some(s) = marked.as_mut() {
            s.stopped = true;
        }
        t.observe(t0 + ms(100), [("n", marked)]);
        let o = t.observations()["n"];
        assert!(o.present && o.stopped);
        t.observe(t0 + ms(200), [("n", key("2"))]);
        let o = t.observations()["n"];
        assert!(o.present && !o.stopped);
    }

    #[test]
    fn unchanged_lease_expires_after_its_duration() {
        let t0 = Instant::now();
        let mut t = LeaseTracker::new(Duration::from_secs(40), Duration::from_secs(1));
        t.observe(t0, [("n", key("1"))]);
        assert_eq!(t.observations()["n"].state(t0), LeaseState::Unconfirmed);
        t.observe(t0 + ms(500), [("n", key("2"))]);
        assert_eq!(t.observations()["n"].state(t0 + ms(500)), LeaseState::Fresh);
        // Stops changing: read every 500 ms.
        let mut now = t0 + ms(500);
        for _ in 0..3 {
            now += ms(500);
            t.observe(now, [("n", key("2"))]);
            assert_eq!(t.observations()["n"].state(now), LeaseState::Fresh);
        }
        now += ms(500);
        t.observe(now, [("n", key("2"))]);
        assert_eq!(t.observations()["n"].state(now), LeaseState::Expired);
        // It comes back.
        now += ms(500);
        t.observe(now, [("n", key("3"))]);
        assert_eq!(t.observations()["n"].state(now), LeaseState::Fresh);
    }

    #[test]
    fn missing_lease_uses_the_default_duration_and_expires() {
        let t0 = Instant::now();
        let mut t = LeaseTracker::new(D, Duration::from_secs(10));
        t.observe(t0, [("n", None)]);
        t.observe(t0 + ms(1000), [("n", None)]);
        assert_eq!(t.observations()["n"].duration, D);
        assert_eq!(
            t.observations()["n"].state(t0 + ms(1000)),
            LeaseState::Unconfirmed
        );
        t.observe(t0 + ms(2000), [("n", None)]);
        assert_eq!(
            t.observations()["n"].state(t0 + ms(2000)),
            LeaseState::Expired
        );
        // Deleting a Lease is a change too, and so is creating one.
        t.observe(t0 + ms(2100), [("n", key("1"))]);
        assert_eq!(
            t.observations()["n"].state(t0 + ms(2100)),
            LeaseState::Fresh
        );
    }

    #[test]
    fn a_gap_in_our_reads_is_forgiven() {
        let t0 = Instant::now();
        let mut t = LeaseTracker::new(D, Duration::from_secs(1));
        t.observe(t0, [("n", key("1"))]);
        t.observe(t0 + ms(100), [("n", key("2"))]);
        // We could not read for 5 s (API outage); the Lease did not change meanwhile.
        let back = t0 + Duration::from_secs(5);
        t.observe(back, [("n", key("2"))]);
        assert_eq!(t.observations()["n"].state(back), LeaseState::Fresh);
        // But if it stays unchanged for the duration after that, it is dead.
        t.observe(back + ms(900), [("n", key("2"))]);
        t.observe(back + ms(1800), [("n", key("2"))]);
        t.observe(back + ms(2000), [("n", key("2"))]);
        assert_eq!(
            t.observations()["n"].state(back + ms(2000)),
            LeaseState::Expired
        );
    }

    #[test]
    fn forgotten_nodes_start_over() {
        let t0 = Instant::now();
        let mut t = LeaseTracker::new(D, Duration::from_secs(10));
        t.observe(t0, [("a", key("1")), ("b", key("1"))]);
        t.observe(t0 + ms(100), [("a", key("2"))]);
        assert!(!t.observations().contains_key("b"));
        t.observe(t0 + ms(200), [("a", key("2")), ("b", key("1"))]);
        assert_eq!(t.observations()["b"].changes, 0);
    }

    proptest! {
        /// Dead-node detection uses only what the controller observed and when: the Lease's
        /// own timestamps (any clock skew, even going backwards) change nothing but "changed".
        #[test]
        fn only_changes_and_observation_times_matter(
            steps in prop::collection::vec((1u64..700, any::<bool>(), any::<i64>()), 1..60),
        ) {
            let t0 = Instant::now();
            let mut skewed = LeaseTracker::new(D, Duration::from_secs(1));
            let mut plain = LeaseTracker::new(D, Duration::from_secs(1));
            let mut now = t0;
            let mut version = 0u64;
            let mut last_change = t0;
            let mut renew_time = None;
            skewed.observe(now, [("n", key("0"))]);
            plain.observe(now, [("n", key("0"))]);
            for (dt, renew, skew) in steps {
                now += ms(dt);
                if renew {
                    version += 1;
                    last_change = now;
                    // A skewed clock writes any timestamp, even one before the last.
                    renew_time =
                        k8s_openapi::jiff::Timestamp::from_second(skew % 100_000_000_000).ok();
                }
                let rv = version.to_string();
                let with_skew = Some(LeaseSighting {
                    key: LeaseKey {
                        resource_version: Some(rv.clone()),
                        holder: Some("n".into()),
                        renew_time,
                    },
                    duration: Some(D),
                    stopped: false,
                });
                let sk = if version == 0 { key("0") } else { with_skew };
                skewed.observe(now, [("n", sk)]);
                plain.observe(now, [("n", key(&rv))]);
                let a = skewed.observations()["n"].state(now);
                let b = plain.observations()["n"].state(now);
                prop_assert_eq!(a, b);
                let expect_dead = now.duration_since(last_change) >= D;
                prop_assert_eq!(a == LeaseState::Expired, expect_dead);
            }
        }
    }
}

//! Table tests and properties of [`decide`](super::decide).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const D: Duration = Duration::from_secs(2);
/// The policy of most tests: untaint revived nodes after the Lease duration.
const P: Policy = Policy {
    untaint_after: Some(D),
};

/// A healthy node of group `g`.
fn node(name: &str, g: &str, role: Role) -> NodeView {
    NodeView {
        name: name.into(),
        group: Some(g.into()),
        role,
        active: false,
        failover_taint: false,
        dead_taint: false,
        battery_critical: false,
        device_failure: false,
        ready: true,
        unschedulable: false,
    }
}

fn active(mut n: NodeView) -> NodeView {
    n.active = true;
    n
}

#[derive(Clone, Copy)]
enum L {
    Fresh,
    Pending,
    Dead,
    Missing,
}

struct World {
    now: Instant,
    nodes: Vec<NodeView>,
    leases: BTreeMap<String, LeaseObservation>,
    node_leases: BTreeMap<String, LeaseObservation>,
}

impl World {
    fn new() -> World {
        World {
            now: Instant::now() + Duration::from_secs(100),
            nodes: Vec::new(),
            leases: BTreeMap::new(),
            node_leases: BTreeMap::new(),
        }
    }

    /// Give `name` a kubelet Lease in state `l` (`L::Missing`: none).
    fn kubelet(mut self, name: &str, l: L) -> World {
        let obs = |ago: Duration, changes| LeaseObservation {
            last_change: self.now - ago,
            changes,
            duration: D,
            present: true,
            stopped: false,
        };
        let o = match l {
            L::Fresh => obs(Duration::from_millis(500), 3),
            L::Pending => obs(Duration::from_millis(500), 0),
            L::Dead => obs(D, 7),
            L::Missing => return self,
        };
        self.node_leases.insert(name.into(), o);
        self
    }

    /// `name`'s agent Lease: expired long ago, with the graceful-stop marker (`stopped`) or
    /// without, or absent altogether (`present == false`: the agent never started).
    fn agent_gone(mut self, name: &str, present: bool, stopped: bool) -> World {
        self.leases.insert(
            name.into(),
            LeaseObservation {
                last_change: self.now - D * 10,
                changes: u32::from(present),
                duration: D,
                present,
                stopped,
            },
        );
        self
    }

    fn with(mut self, n: NodeView, l: L) -> World {
        let obs = |ago: Duration, changes| LeaseObservation {
            last_change: self.now - ago,
            changes,
            duration: D,
            present: true,
            stopped: false,
        };
        match l {
            L::Fresh => {
                self.leases
                    .insert(n.name.clone(), obs(Duration::from_millis(500), 3));
            }
            L::Pending => {
                self.leases
                    .insert(n.name.clone(), obs(Duration::from_millis(500), 0));
            }
            L::Dead => {
                self.leases.insert(n.name.clone(), obs(D, 7));
            }
            L::Missing => {}
        }
        self.nodes.push(n);
        self
    }

    fn snap(&self) -> Snapshot {
        Snapshot {
            now: self.now,
            nodes: self.nodes.clone(),
            leases: self.leases.clone(),
            node_leases: self.node_leases.clone(),
        }
    }
}

fn set(node: &str) -> Action {
    Action::SetActive { node: node.into() }
}
fn clear(node: &str) -> Action {
    Action::ClearActive { node: node.into() }
}
fn taint(node: &str) -> Action {
    Action::Taint { node: node.into() }
}
fn untaint(node: &str) -> Action {
    Action::Untaint { node: node.into() }
}

/// The non-event actions.
fn writes(d: &Decision) -> Vec<Action> {
    d.actions
        .iter()
        .filter(|a| !matches!(a, Action::Event(_)))
        .cloned()
        .collect()
}

fn events(d: &Decision) -> Vec<(&str, &'static str, EventType)> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some((e.node.as_str(), e.reason, e.type_)),
            _ => None,
        })
        .collect()
}

#[test]
fn lease_state_thresholds() {
    let now = Instant::now() + Duration::from_secs(10);
    let o = |ago_ms: u64, changes| LeaseObservation {
        last_change: now - Duration::from_millis(ago_ms),
        changes,
        duration: D,
        present: true,
        stopped: false,
    };
    assert_eq!(o(0, 0).state(now), LeaseState::Unconfirmed);
    assert_eq!(o(1999, 0).state(now), LeaseState::Unconfirmed);
    assert_eq!(o(1999, 1).state(now), LeaseState::Fresh);
    assert_eq!(o(2000, 1).state(now), LeaseState::Expired);
    assert_eq!(o(2000, 0).state(now), LeaseState::Expired);
    // An observation from "the future" (clock read before the observation was stored) is fresh.
    let later = LeaseObservation {
        last_change: now + Duration::from_secs(1),
        changes: 1,
        duration: D,
        present: true,
        stopped: false,
    };
    assert_eq!(later.state(now), LeaseState::Fresh);
}

#[test]
fn role_labels() {
    assert_eq!(Role::from_label(None), Role::Unassigned);
    assert_eq!(Role::from_label(Some("primary")), Role::Primary);
    assert_eq!(Role::from_label(Some("backup")), Role::Backup);
    assert_eq!(Role::from_label(Some("observer")), Role::Excluded);
    assert_eq!(Role::from_label(Some("")), Role::Excluded);
}

#[test]
fn no_active_activates_the_healthy_primary() {
    let w = World::new()
        .with(node("b", "g", Role::Backup), L::Fresh)
        .with(node("p", "g", Role::Primary), L::Fresh);
    let d = decide(&w.snap(), &P, &Memory::default());
    assert_eq!(writes(&d), vec![set("p")]);
    assert_eq!(events(&d), vec![("p", EVENT_ACTIVATED, EventType::Normal)]);
    assert!(d.handovers.is_empty());
    assert_eq!(d.active["g"].as_deref(), Some("p"));
    assert_eq!(d.memory.chosen["g"], "p");
    assert_eq!(d.groups_without_healthy_backup, 0);
}

#[test]
fn no_active_skips_an_unhealthy_primary() {
    let mut p = node("p", "g", Role::Primary);
    p.battery_critical = true;
    let w = World::new()
        .with(p, L::Fresh)
        .with(node("b", "g", Role::Backup), L::Fresh);
    let d = decide(&w.snap(), &P, &Memory::default());
    assert_eq!(writes(&d), vec![set("b")]);
    assert_eq!(d.groups_without_healthy_backup, 1);
}

#[test]
fn no_active_waits_for_unconfirmed_leases() {
    let w = World::new()
        .with(node("p", "g", Role::Primary), L::Pending)
        .with(node("b", "g", Role::Backup), L::Missing);
    let d = decide(&w.snap(), &P, &Memory::default());
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(d.active["g"], None);
    assert_eq!(d.groups_without_healthy_backup, 0);
}

#[test]
fn no_active_waits_for_a_pending_primary_over_a_healthy_backup() {
    // The controller's first rounds: the backup's Lease happened to renew first.
    let w = World::new()
        .with(node("p", "g", Role::Primary), L::Pending)
        .with(node("b", "g", Role::Backup), L::Fresh);
    let d = decide(&w.snap(), &P, &Memory::default());
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(d.active["g"], None);
    // The primary renews: it is chosen.
    let w = World::new()
        .with(node("p", "g", Role::Primary), L::Fresh)
        .with(node("b", "g", Role::Backup), L::Fresh);
    let d = decide(&w.snap(), &P, &d.memory);
    assert_eq!(writes(&d), vec![set("p")]);
    // The primary never renews: once its Lease expires, the backup is chosen.
    let w = World::new()
        .with(node("p", "g", Role::Primary), L::Dead)
        .with(node("b", "g", Role::Backup), L::Fresh);
    let d = decide(&w.snap(), &P, &Memory::default());
    assert_eq!(writes(&d), vec![set("b")]);
}

#[test]
fn a_pending_node_ranked_below_a_healthy_one_is_not_waited_for() {
    let w = World::new()
        .with(node("p", "g", Role::Primary), L::Fresh)
        .with(node("b", "g", Role::Backup), L::Pending);
    let d = decide(&w.snap(), &P, &Memory::default());
    assert_eq!(writes(&d), vec![set("p")]);
}

#[test]
fn a_handover_does_not_wait_for_a_pending_better_node() {
    // The active backup is critical; the primary is pending, another backup healthy: hand over
    // to the healthy one now rather than wait for the primary.
    let mut b1 = active(node("b1", "g", Role::Backup));
    b1.battery_critical = true;
    let w = World::new()
        .with(b1, L::Fresh)
        .with(node("p", "g", Role::Primary), L::Pending)
        .with(node("b2", "g", Role::Backup), L::Fresh);
    let d = decide(&w.snap(), &P, &Memory::default());
    assert_eq!(writes(&d), vec![set("b2"), clear("b1")]);
}

#[test]
fn no_active_and_nobody_healthy_warns_once() {
    let w = World::new()
        .with(node("p", "g", Role::Primary), L::Dead)
        .with(node("b", "g", Role::Backup), L::Dead);
    let d = decide(&w.snap(), &P, &Memory::default());
    assert_eq!(writes(&d), vec![]);
    assert_eq!(
        events(&d),
        vec![("p", EVENT_NO_HEALTHY_BACKUP, EventType::Warning)]
    );
    assert_eq!(d.groups_without_healthy_backup, 1);
    let again = decide(&w.snap(), &P, &d.memory);
    assert!(again.actions.is_empty());
    assert_eq!(again.groups_without_healthy_backup, 1);
}

#[test]
fn healthy_active_is_kept() {
    let w = World::new()
        .with(active(node("p", "g", Role::Primary)), L::Fresh)
        .with(node("b", "g", Role::Backup), L::Fresh);
    let d = decide(&w.snap(), &P, &Memory::default());
    assert!(d.actions.is_empty());
    assert_eq!(d.active["g"].as_deref(), Some("p"));
}

#[test]
fn unconfirmed_active_is_kept() {
    let w = World::new()
        .with(active(node("p", "g", Role::Primary)), L::Missing)
        .with(node("b", "g", Role::Backup), L::Fresh);
    assert!(decide(&w.snap(), &P, &Memory::default()).actions.is_empty());
}

#[test]
fn not_ready_or_cordoned_active_is_kept() {
    let mut p = active(node("p", "g", Role::Primary));
    p.ready = false;
    p.unschedulable = true;
    let w = World::new()
        .with(p, L::Fresh)
        .with(node("b", "g", Role::Backup), L::Fresh);
    assert!(decide(&w.snap(), &P, &Memory::default()).actions.is_empty());
}

#[test]
fn each_reason_hands_over() {
    type Make = fn(&mut NodeView);
    let cases: [(Make, L, Reason, bool); 5] = [
        (
            |n| n.battery_critical = true,
            L::Fresh,
            Reason::BatteryCritical,
            false,
        ),
        (
            |n| n.device_failure = true,
            L::Fresh,
            Reason::DeviceFailure,
            false,
        ),
        (
            |n| n.failover_taint = true,
            L::Fresh,
            Reason::Tainted,
            false,
        ),
        (|_| {}, L::Dead, Reason::Dead, true),
        // Dead takes precedence, and a node already tainted is not tainted again.
        (
            |n| {
                n.battery_critical = true;
                n.failover_taint = true;
            },
            L::Dead,
            Reason::Dead,
            false,
        ),
    ];
    for (make, lease, reason, tainted) in cases {
        let mut p = active(node("p", "g", Role::Primary));
        make(&mut p);
        let w = World::new()
            .with(p, lease)
            .with(node("b", "g", Role::Backup), L::Fresh);
        let d = decide(&w.snap(), &P, &Memory::default());
        let mut want = vec![set("b"), clear("p")];
        if tainted {
            want.push(taint("p"));
        }
        assert_eq!(writes(&d), want, "{reason:?}");
        assert_eq!(
            events(&d),
            vec![
                ("p", EVENT_FAILED_OVER, EventType::Warning),
                ("b", EVENT_ACTIVATED, EventType::Normal)
            ]
        );
        assert_eq!(
            d.handovers,
            vec![Handover {
                group: "g".into(),
                from: "p".into(),
                to: "b".into(),
                reason
            }]
        );
        assert_eq!(d.active["g"].as_deref(), Some("b"));
        assert_eq!(d.memory.chosen["g"], "b");
        // The old primary is not a healthy spare.
        assert_eq!(d.groups_without_healthy_backup, 1);
    }
}

#[test]
fn dead_taint_is_retried_until_it_shows() {
    let w = World::new()
        .with(active(node("p", "g", Role::Primary)), L::Dead)
        .with(node("b", "g", Role::Backup), L::Fresh);
    let d1 = decide(&w.snap(), &P, &Memory::default());
    assert!(d1.memory.pending_taints.contains("p"));
    // The labels moved but the taint write failed.
    let w2 = World::new()
        .with(node("p", "g", Role::Primary), L::Dead)
        .with(active(node("b", "g", Role::Backup)), L::Fresh);
    let d2 = decide(&w2.snap(), &P, &d1.memory);
    assert_eq!(writes(&d2), vec![taint("p")]);
    assert!(events(&d2).is_empty());
    // Now the taint is there.
    let mut p = node("p", "g", Role::Primary);
    p.failover_taint = true;
    let w3 = World::new()
        .with(p, L::Dead)
        .with(active(node("b", "g", Role::Backup)), L::Fresh);
    let d3 = decide(&w3.snap(), &P, &d2.memory);
    assert!(d3.actions.is_empty());
    assert!(d3.memory.pending_taints.is_empty());
}

#[test]
fn revived_node_is_not_tainted_late() {
    let mut memory = Memory::default();
    memory.pending_taints.insert("p".into());
    let w = World::new()
        .with(node("p", "g", Role::Primary), L::Fresh)
        .with(active(node("b", "g", Role::Backup)), L::Fresh);
    let d = decide(&w.snap(), &P, &memory);
    assert!(d.actions.is_empty());
    assert!(d.memory.pending_taints.is_empty());
}

/// A world `dt` later than `w`, with the same nodes and Lease kinds.
fn later(dt: Duration, nodes: &[(NodeView, L)]) -> World {
    let mut w = World::new();
    w.now += dt;
    for (n, l) in nodes {
        w = w.with(n.clone(), *l);
    }
    w
}

fn dead_tainted(name: &str) -> NodeView {
    let mut n = node(name, "g", Role::Primary);
    n.failover_taint = true;
    n.dead_taint = true;
    n
}

#[test]
fn revived_node_is_untainted_after_the_hold_down() {
    let b = active(node("b", "g", Role::Backup));
    let nodes = [(dead_tainted("p"), L::Fresh), (b, L::Fresh)];
    let d1 = decide(
        &later(Duration::ZERO, &nodes).snap(),
        &P,
        &Memory::default(),
    );
    assert!(d1.actions.is_empty(), "{:?}", d1.actions);
    assert!(d1.memory.revived.contains_key("p"));
    let d2 = decide(&later(D / 2, &nodes).snap(), &P, &d1.memory);
    assert!(d2.actions.is_empty(), "{:?}", d2.actions);
    let d3 = decide(&later(D, &nodes).snap(), &P, &d2.memory);
    assert_eq!(writes(&d3), vec![untaint("p")]);
    assert_eq!(events(&d3), vec![("p", EVENT_RECOVERED, EventType::Normal)]);
    // It does not become active by that: the backup stays.
    assert_eq!(d3.active["g"].as_deref(), Some("b"));
    // Never, by policy.
    let never = Policy::default();
    let d = decide(&later(D * 10, &nodes).snap(), &never, &d3.memory);
    assert!(d.actions.is_empty());
}

#[test]
fn dying_again_restarts_the_hold_down() {
    let b = active(node("b", "g", Role::Backup));
    let fresh = [(dead_tainted("p"), L::Fresh), (b.clone(), L::Fresh)];
    let dead = [(dead_tainted("p"), L::Dead), (b, L::Fresh)];
    let d1 = decide(
        &later(Duration::ZERO, &fresh).snap(),
        &P,
        &Memory::default(),
    );
    let d2 = decide(&later(D / 2, &dead).snap(), &P, &d1.memory);
    assert!(d2.memory.revived.is_empty());
    let d3 = decide(&later(D, &fresh).snap(), &P, &d2.memory);
    assert!(d3.actions.is_empty(), "{:?}", d3.actions);
    let d4 = decide(&later(D * 2, &fresh).snap(), &P, &d3.memory);
    assert_eq!(writes(&d4), vec![untaint("p")]);
}

#[test]
fn the_agents_own_taint_is_never_removed() {
    let mut p = node("p", "g", Role::Primary);
    p.failover_taint = true;
    let nodes = [
        (p, L::Fresh),
        (active(node("b", "g", Role::Backup)), L::Fresh),
    ];
    let d1 = decide(
        &later(Duration::ZERO, &nodes).snap(),
        &P,
        &Memory::default(),
    );
    let d2 = decide(&later(D * 10, &nodes).snap(), &P, &d1.memory);
    assert!(d2.actions.is_empty(), "{:?}", d2.actions);
}

#[test]
fn never_activates_an_unfit_backup() {
    type Make = fn(&mut NodeView);
    let unfit: [(Make, L); 8] = [
        (|n| n.battery_critical = true, L::Fresh),
        (|n| n.device_failure = true, L::Fresh),
        (|n| n.failover_taint = true, L::Fresh),
        (|n| n.ready = false, L::Fresh),
        (|n| n.unschedulable = true, L::Fresh),
        (|n| n.role = Role::Excluded, L::Fresh),
        (|_| {}, L::Dead),
        (|_| {}, L::Dead),
    ];
    for (i, (make, lease)) in unfit.into_iter().enumerate() {
        let mut p = active(node("p", "g", Role::Primary));
        p.battery_critical = true;
        let mut b = node("b", "g", Role::Backup);
        make(&mut b);
        let w = World::new().with(p, L::Fresh).with(b, lease);
        let d = decide(&w.snap(), &P, &Memory::default());
        assert_eq!(writes(&d), vec![], "case {i}");
        assert_eq!(
            events(&d),
            vec![("p", EVENT_NO_HEALTHY_BACKUP, EventType::Warning)],
            "case {i}"
        );
        assert_eq!(d.active["g"].as_deref(), Some("p"));
        assert_eq!(d.groups_without_healthy_backup, 1);
        assert!(d.memory.warned.contains("g"));
    }
}

#[test]
fn pending_backup_means_wait_without_warning() {
    let mut p = active(node("p", "g", Role::Primary));
    p.battery_critical = true;
    let w = World::new()
        .with(p, L::Fresh)
        .with(node("b", "g", Role::Backup), L::Pending);
    let d = decide(&w.snap(), &P, &Memory::default());
    assert!(d.actions.is_empty());
    assert_eq!(d.groups_without_healthy_backup, 0);
}

#[test]
fn warning_clears_and_recurs() {
    let mut p = active(node("p", "g", Role::Primary));
    p.battery_critical = true;
    let stuck = World::new()
        .with(p.clone(), L::Fresh)
        .with(node("b", "g", Role::Backup), L::Dead);
    let d1 = decide(&stuck.snap(), &P, &Memory::default());
    assert_eq!(events(&d1).len(), 1);
    let d2 = decide(&stuck.snap(), &P, &d1.memory);
    assert!(events(&d2).is_empty());
    // The primary recovers: the warning clears.
    let ok = World::new()
        .with(active(node("p", "g", Role::Primary)), L::Fresh)
        .with(node("b", "g", Role::Backup), L::Dead);
    let d3 = decide(&ok.snap(), &P, &d2.memory);
    assert!(d3.memory.warned.is_empty());
    // It fails again: warned again.
    let d4 = decide(&stuck.snap(), &P, &d3.memory);
    assert_eq!(
        events(&d4),
        vec![("p", EVENT_NO_HEALTHY_BACKUP, EventType::Warning)]
    );
}

#[test]
fn recovered_primary_does_not_take_active_back() {
    let w = World::new()
        .with(node("p", "g", Role::Primary), L::Fresh)
        .with(active(node("b", "g", Role::Backup)), L::Fresh);
    let d = decide(&w.snap(), &P, &Memory::default());
    assert!(d.actions.is_empty());
    assert_eq!(d.active["g"].as_deref(), Some("b"));
    assert_eq!(d.groups_without_healthy_backup, 0);
}

#[test]
fn preference_primary_then_backup_then_unassigned_then_name() {
    let mut p = active(node("p", "g", Role::Primary));
    p.device_failure = true;
    let w = World::new()
        .with(p.clone(), L::Fresh)
        .with(node("a-unassigned", "g", Role::Unassigned), L::Fresh)
        .with(node("b2", "g", Role::Backup), L::Fresh)
        .with(node("b1", "g", Role::Backup), L::Fresh)
        .with(node("p2", "g", Role::Primary), L::Fresh);
    assert_eq!(
        writes(&decide(&w.snap(), &P, &Memory::default()))[0],
        set("p2")
    );
    let w = World::new()
        .with(p.clone(), L::Fresh)
        .with(node("a-unassigned", "g", Role::Unassigned), L::Fresh)
        .with(node("b2", "g", Role::Backup), L::Fresh)
        .with(node("b1", "g", Role::Backup), L::Fresh);
    assert_eq!(
        writes(&decide(&w.snap(), &P, &Memory::default()))[0],
        set("b1")
    );
    let w = World::new()
        .with(p, L::Fresh)
        .with(node("a-unassigned", "g", Role::Unassigned), L::Fresh)
        .with(node("b1", "g", Role::Backup), L::Dead);
    assert_eq!(
        writes(&decide(&w.snap(), &P, &Memory::default()))[0],
        set("a-unassigned")
    );
}

#[test]
fn two_actives_keep_the_chosen_or_the_best() {
    let w = World::new()
        .with(active(node("p", "g", Role::Primary)), L::Fresh)
        .with(active(node("b", "g", Role::Backup)), L::Fresh);
    let d = decide(&w.snap(), &P, &Memory::default());
    assert_eq!(writes(&d), vec![clear("b")]);
    assert_eq!(d.active["g"].as_deref(), Some("p"));
    let mut memory = Memory::default();
    memory.chosen.insert("g".into(), "b".into());
    let d = decide(&w.snap(), &P, &memory);
    assert_eq!(writes(&d), vec![clear("p")]);
    assert_eq!(d.active["g"].as_deref(), Some("b"));
}

#[test]
fn two_actives_keep_the_healthy_one() {
    let mut memory = Memory::default();
    memory.chosen.insert("g".into(), "p".into());
    let w = World::new()
        .with(active(node("p", "g", Role::Primary)), L::Dead)
        .with(active(node("b", "g", Role::Backup)), L::Fresh);
    let d = decide(&w.snap(), &P, &memory);
    assert_eq!(writes(&d), vec![clear("p")]);
    assert!(d.handovers.is_empty());
}

#[test]
fn two_unhealthy_actives_hand_over_once() {
    let mut b = active(node("b", "g", Role::Backup));
    b.battery_critical = true;
    let w = World::new()
        .with(active(node("p", "g", Role::Primary)), L::Dead)
        .with(b, L::Fresh)
        .with(node("c", "g", Role::Backup), L::Fresh);
    let d = decide(&w.snap(), &P, &Memory::default());
    assert_eq!(
        writes(&d),
        vec![clear("b"), set("c"), clear("p"), taint("p")]
    );
    assert_eq!(d.handovers.len(), 1);
}

#[test]
fn active_without_group_is_cleared() {
    let mut stray = active(node("x", "g", Role::Primary));
    stray.group = None;
    let mut empty = active(node("y", "g", Role::Primary));
    empty.group = Some(String::new());
    let w = World::new().with(stray, L::Fresh).with(empty, L::Fresh);
    let d = decide(&w.snap(), &P, &Memory::default());
    assert_eq!(writes(&d), vec![clear("x"), clear("y")]);
    assert!(d.active.is_empty());
}

#[test]
fn groups_are_independent() {
    let mut p1 = active(node("p1", "one", Role::Primary));
    p1.battery_critical = true;
    let w = World::new()
        .with(p1, L::Fresh)
        .with(node("b1", "one", Role::Backup), L::Fresh)
        .with(active(node("p2", "two", Role::Primary)), L::Fresh)
        .with(node("b2", "two", Role::Backup), L::Dead)
        .with(node("p3", "three", Role::Primary), L::Fresh);
    let d = decide(&w.snap(), &P, &Memory::default());
    // Groups in name order: one, three, two.
    assert_eq!(writes(&d), vec![set("b1"), clear("p1"), set("p3")]);
    assert_eq!(d.active["one"].as_deref(), Some("b1"));
    assert_eq!(d.active["two"].as_deref(), Some("p2"));
    assert_eq!(d.active["three"].as_deref(), Some("p3"));
    // one: p1 is critical; two: b2 is dead; three: p3 has no peer.
    assert_eq!(d.groups_without_healthy_backup, 3);
}

#[test]
fn memory_of_vanished_groups_is_dropped() {
    let mut memory = Memory::default();
    memory.chosen.insert("gone".into(), "x".into());
    memory.warned.insert("gone".into());
    memory.pending_taints.insert("x".into());
    let w = World::new().with(active(node("p", "g", Role::Primary)), L::Fresh);
    let d = decide(&w.snap(), &P, &memory);
    assert_eq!(d.memory, Memory::default());
}

// ---------------------------------------------------------------------------------------------
// Properties.

#[derive(Debug, Clone)]
struct GenNode {
    group: u8,
    role: Role,
    active: bool,
    taint: bool,
    dead_taint: bool,
    critical: bool,
    failure: bool,
    ready: bool,
    cordoned: bool,
    /// None: no observation; else (ms since last change, changes).
    lease: Option<(u64, u32)>,
}

fn gen_node() -> impl Strategy<Value = GenNode> {
    (
        (0u8..3, 0u8..4, any::<bool>()),
        (prop::bool::weighted(0.15), prop::bool::weighted(0.15)),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.1),
        prop::option::weighted(0.9, (0u64..4000, 0u32..3)),
    )
        .prop_map(
            |(
                (group, role, active),
                (taint, dead_taint),
                critical,
                failure,
                ready,
                cordoned,
                lease,
            )| GenNode {
                group,
                role: [
                    Role::Primary,
                    Role::Backup,
                    Role::Unassigned,
                    Role::Excluded,
                ][role as usize],
                active,
                taint,
                dead_taint,
                critical,
                failure,
                ready,
                cordoned,
                lease,
            },
        )
}

fn build(gen: &[GenNode], base: Instant) -> Snapshot {
    let now = base + Duration::from_secs(10);
    let mut nodes = Vec::new();
    let mut leases = BTreeMap::new();
    for (i, g) in gen.iter().enumerate() {
        let name = format!("n{i}");
        nodes.push(NodeView {
            name: name.clone(),
            group: Some(format!("g{}", g.group)),
            role: g.role,
            active: g.active,
            failover_taint: g.taint || g.dead_taint,
            dead_taint: g.dead_taint,
            battery_critical: g.critical,
            device_failure: g.failure,
            ready: g.ready,
            unschedulable: g.cordoned,
        });
        if let Some((ago, changes)) = g.lease {
            leases.insert(
                name,
                LeaseObservation {
                    last_change: now - Duration::from_millis(ago),
                    changes,
                    duration: D,
                    present: true,
                    stopped: false,
                },
            );
        }
    }
    Snapshot {
        now,
        nodes,
        leases,
        node_leases: BTreeMap::new(),
    }
}

/// The snapshot after the decision's writes succeeded.
fn apply(snap: &Snapshot, d: &Decision) -> Snapshot {
    let mut next = snap.clone();
    for a in &d.actions {
        for n in &mut next.nodes {
            match a {
                Action::SetActive { node } if *node == n.name => n.active = true,
                Action::ClearActive { node } if *node == n.name => n.active = false,
                Action::Taint { node } if *node == n.name => {
                    n.failover_taint = true;
                    n.dead_taint = true;
                }
                Action::Untaint { node } if *node == n.name => {
                    n.failover_taint = false;
                    n.dead_taint = false;
                }
                _ => {}
            }
        }
    }
    next
}

fn gen_memory() -> impl Strategy<Value = Memory> {
    prop::collection::btree_map(0u8..3, 0usize..8, 0..3).prop_map(|m| Memory {
        chosen: m
            .into_iter()
            .map(|(g, n)| (format!("g{g}"), format!("n{n}")))
            .collect(),
        ..Memory::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_activates_an_unhealthy_node(
        gen in prop::collection::vec(gen_node(), 0..8),
        memory in gen_memory(),
    ) {
        let snap = build(&gen, Instant::now());
        let d = decide(&snap, &P, &memory);
        let find = |node: &str| snap.nodes.iter().find(|n| n.name == node).unwrap();
        for a in &d.actions {
            match a {
                Action::SetActive { node } => {
                    let n = find(node);
                    prop_assert_eq!(snap.candidacy(n), Candidacy::Healthy, "{:?}", n);
                }
                // Only dead nodes are tainted, only revived ones untainted.
                Action::Taint { node } => {
                    prop_assert_eq!(snap.lease_state(node), LeaseState::Expired);
                    prop_assert!(!find(node).failover_taint);
                }
                Action::Untaint { node } => {
                    prop_assert_eq!(snap.lease_state(node), LeaseState::Fresh);
                    prop_assert!(find(node).dead_taint);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn one_active_per_group(
        gen in prop::collection::vec(gen_node(), 0..8),
        memory in gen_memory(),
    ) {
        let snap = build(&gen, Instant::now());
        let d = decide(&snap, &P, &memory);
        let after = apply(&snap, &d);
        let mut groups: BTreeMap<String, Vec<&NodeView>> = BTreeMap::new();
        for n in &after.nodes {
            groups.entry(n.group.clone().unwrap()).or_default().push(n);
        }
        for (g, members) in groups {
            let actives: Vec<&str> = members.iter().filter(|n| n.active).map(|n| n.name.as_str()).collect();
            prop_assert!(actives.len() <= 1, "group {} has actives {:?}", g, actives);
            prop_assert_eq!(d.active[&g].as_deref(), actives.first().copied());
            let any_healthy = members.iter().any(|n| snap.candidacy(n) == Candidacy::Healthy);
            // With nobody active before, a pending node ranked ahead of every healthy one is
            // waited for; otherwise a healthy node means an active one.
            let was_active = snap.nodes.iter().any(|n| n.active && n.group.as_ref() == Some(&g));
            let mut ranked: Vec<&NodeView> =
                snap.nodes.iter().filter(|n| n.group.as_ref() == Some(&g)).collect();
            ranked.sort_by(|a, b| rank(a).cmp(&rank(b)));
            let first_fit = ranked.iter().map(|n| snap.candidacy(n)).find(|c| *c != Candidacy::Unfit);
            let waits = !was_active && first_fit == Some(Candidacy::Pending);
            if any_healthy && !waits {
                prop_assert_eq!(actives.len(), 1, "group {} has a healthy node", g);
            }
            if waits {
                prop_assert!(actives.is_empty(), "group {} activated past a pending better node", g);
            }
        }
    }

    #[test]
    fn a_healthy_active_is_never_moved(
        gen in prop::collection::vec(gen_node(), 1..8),
        memory in gen_memory(),
    ) {
        let snap = build(&gen, Instant::now());
        let d = decide(&snap, &P, &memory);
        let mut groups: BTreeMap<&str, Vec<&NodeView>> = BTreeMap::new();
        for n in &snap.nodes {
            groups.entry(n.group.as_deref().unwrap()).or_default().push(n);
        }
        for (_, members) in groups {
            let actives: Vec<&&NodeView> = members.iter().filter(|n| n.active).collect();
            if actives.len() == 1 && snap.reason(actives[0]).is_none() {
                for a in &d.actions {
                    if let Action::SetActive { node } | Action::ClearActive { node } = a {
                        prop_assert!(!members.iter().any(|n| &n.name == node), "{:?}", a);
                    }
                }
            }
        }
    }

    #[test]
    fn one_round_reaches_a_fixpoint(
        gen in prop::collection::vec(gen_node(), 0..8),
        memory in gen_memory(),
    ) {
        let snap = build(&gen, Instant::now());
        let d1 = decide(&snap, &P, &memory);
        let after = apply(&snap, &d1);
        let d2 = decide(&after, &P, &d1.memory);
        prop_assert!(d2.actions.is_empty(), "second round acted: {:?}", d2.actions);
        prop_assert_eq!(d2.active, d1.active);
    }

    #[test]
    fn only_observation_deltas_matter(
        gen in prop::collection::vec(gen_node(), 0..8),
        memory in gen_memory(),
        shift_ms in 0u64..10_000_000,
        rounds in 1usize..4,
    ) {
        // The same observations at a different absolute time (another boot, another process)
        // give the same decisions, round after round: only "now minus an observation" counts.
        let base = Instant::now();
        let shifted = base + Duration::from_millis(shift_ms);
        let (mut ma, mut mb) = (memory.clone(), memory);
        for round in 0..rounds {
            let step = Duration::from_millis(700) * round as u32;
            let sa = build(&gen, base + step);
            let sb = build(&gen, shifted + step);
            let a = decide(&sa, &P, &ma);
            let b = decide(&sb, &P, &mb);
            prop_assert_eq!(&a.actions, &b.actions);
            prop_assert_eq!(&a.handovers, &b.handovers);
            prop_assert_eq!(&a.active, &b.active);
            prop_assert_eq!(a.groups_without_healthy_backup, b.groups_without_healthy_backup);
            let ages = |d: &Decision, now: Instant| -> Vec<(String, Duration)> {
                d.memory.revived.iter().map(|(n, t)| (n.clone(), now - *t)).collect()
            };
            prop_assert_eq!(ages(&a, sa.now), ages(&b, sb.now));
            ma = a.memory;
            mb = b.memory;
        }
    }

    #[test]
    fn dead_means_unchanged_for_the_duration(
        gen in prop::collection::vec(gen_node(), 1..8),
    ) {
        let snap = build(&gen, Instant::now());
        for (n, g) in snap.nodes.iter().zip(&gen) {
            let dead = matches!(g.lease, Some((ago, _)) if ago >= D.as_millis() as u64);
            prop_assert_eq!(snap.reason(n) == Some(Reason::Dead), dead);
        }
    }
}

// --- The kubelet's Lease: a stopped agent is not a dead node. ---

#[test]
fn a_crashed_agent_on_a_live_node_keeps_active_and_is_never_tainted() {
    for (stopped, why) in [(false, AgentDown::Crashed), (true, AgentDown::Stopped)] {
        let w = World::new()
            .with(active(node("p", "g", Role::Primary)), L::Missing)
            .with(node("b", "g", Role::Backup), L::Fresh)
            .agent_gone("p", true, stopped)
            .kubelet("p", L::Fresh)
            .kubelet("b", L::Fresh);
        let snap = w.snap();
        assert!(!snap.is_dead(&snap.nodes[0]));
        let d = decide(&snap, &P, &Memory::default());
        assert!(d.actions.is_empty(), "stopped={stopped}: {:?}", d.actions);
        assert!(d.handovers.is_empty());
        assert_eq!(d.active["g"].as_deref(), Some("p"));
        assert!(d.memory.pending_taints.is_empty());
        assert_eq!(d.agents_down.get("p"), Some(&why));
        assert_eq!(d.agents_down.len(), 1);
    }
}

#[test]
fn agent_and_kubelet_both_silent_is_a_dead_node() {
    for kubelet in [L::Dead, L::Missing] {
        let w = World::new()
            .with(active(node("p", "g", Role::Primary)), L::Dead)
            .with(node("b", "g", Role::Backup), L::Fresh)
            .kubelet("p", kubelet)
            .kubelet("b", L::Fresh);
        let d = decide(&w.snap(), &P, &Memory::default());
        assert_eq!(writes(&d), vec![set("b"), clear("p"), taint("p")]);
        assert_eq!(d.handovers[0].reason, Reason::Dead);
        assert!(d.agents_down.is_empty());
    }
}

#[test]
fn a_not_ready_node_with_a_silent_agent_is_dead_even_if_its_kubelet_renews() {
    let mut p = active(node("p", "g", Role::Primary));
    p.ready = false;
    let w = World::new()
        .with(p, L::Dead)
        .with(node("b", "g", Role::Backup), L::Fresh)
        .kubelet("p", L::Fresh);
    let d = decide(&w.snap(), &P, &Memory::default());
    assert_eq!(writes(&d), vec![set("b"), clear("p"), taint("p")]);
}

#[test]
fn a_kubelet_lease_not_yet_seen_renewing_is_waited_for_before_judging() {
    // The controller just started watching: the agent Lease is expired, the kubelet's exists
    // but has not been seen to change yet. Not dead yet; not a target either.
    let w = World::new()
        .with(active(node("p", "g", Role::Primary)), L::Dead)
        .with(node("b", "g", Role::Backup), L::Fresh)
        .kubelet("p", L::Pending);
    let snap = w.snap();
    assert!(!snap.is_dead(&snap.nodes[0]));
    let d = decide(&snap, &P, &Memory::default());
    assert!(d.actions.is_empty(), "{:?}", d.actions);
}

#[test]
fn a_late_primary_on_a_live_node_is_waited_for_however_long() {
    // Only the admin's labels: the primary's agent has never written a Lease, long past any
    // Lease duration, but its kubelet renews. The backup is not activated meanwhile.
    let w = World::new()
        .with(node("p", "g", Role::Primary), L::Missing)
        .with(node("b", "g", Role::Backup), L::Fresh)
        .agent_gone("p", false, false)
        .kubelet("p", L::Fresh)
        .kubelet("b", L::Fresh);
    let d = decide(&w.snap(), &P, &Memory::default());
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(d.active["g"], None);
    assert_eq!(d.agents_down.get("p"), Some(&AgentDown::NotStarted));
    // Its agent starts: it is activated.
    let w = World::new()
        .with(node("p", "g", Role::Primary), L::Fresh)
        .with(node("b", "g", Role::Backup), L::Fresh)
        .kubelet("p", L::Fresh)
        .kubelet("b", L::Fresh);
    let d = decide(&w.snap(), &P, &Memory::default());
    assert_eq!(writes(&d), vec![set("p")]);
}

#[test]
fn a_crashed_primary_agent_is_not_waited_for_and_a_dead_primary_node_neither() {
    let base = || {
        World::new()
            .with(node("p", "g", Role::Primary), L::Missing)
            .with(node("b", "g", Role::Backup), L::Fresh)
            .kubelet("b", L::Fresh)
    };
    // Crashed (Lease present, stale, no marker) on a live node.
    let w = base().agent_gone("p", true, false).kubelet("p", L::Fresh);
    assert_eq!(
        writes(&decide(&w.snap(), &P, &Memory::default())),
        vec![set("b")]
    );
    // Never started, but the node is dead too.
    let w = base().agent_gone("p", false, false).kubelet("p", L::Dead);
    assert_eq!(
        writes(&decide(&w.snap(), &P, &Memory::default())),
        vec![set("b")]
    );
    // A planned stop on a live node is waited for.
    let w = base().agent_gone("p", true, true).kubelet("p", L::Fresh);
    assert!(decide(&w.snap(), &P, &Memory::default()).actions.is_empty());
}

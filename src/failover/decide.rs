//! The failover decision: a pure function from what the controller sees (nodes, and its own
//! observations of the agents' Leases) to what it must do (label, unlabel, taint, tell).
//!
//! Nothing here does I/O or reads a clock: the current time is an input, and every time in the
//! input is an [`Instant`] of the controller's own monotonic clock. Lease timestamps written by
//! other machines never reach this module, which is what makes dead-node detection safe against
//! clock skew.
//!
//! The rules, per group (nodes labelled `edgeplex.io/group=<g>`):
//!
//! - exactly one node carries `edgeplex.io/active=true`;
//! - a node is *dead* ([`Snapshot::is_dead`]) when its agent's Lease has expired and its kubelet
//!   gives no sign of life ([`NodeLiveness::Down`]: the kubelet's Lease expired or absent, or
//!   `Ready` not `True`). An agent down on a node that is not dead ([`AgentDown`]: stopped
//!   gracefully, crashed, not started yet) is no reason to move or taint anything;
//! - an active node is moved only when it has a [`Reason`] to be moved (dead, battery critical,
//!   device failure, failover taint); a healthy active is never moved, so a recovered primary does
//!   not take `active` back (no flapping);
//! - the new active is always a healthy node ([`Candidacy::Healthy`]): Lease seen to change and not
//!   expired, Ready, schedulable, not tainted, no critical condition; primaries before backups
//!   before nodes without a role, then by name. When no node is active (a new group, or the
//!   controller's first look after a start), a better-ranked node whose Lease has not been seen
//!   to change yet is waited for until it confirms or expires, and one whose node is alive while
//!   its agent has not started yet or stopped gracefully is waited for as long as the node
//!   lives, so the primary is chosen whatever order the agents start in; a handover off a
//!   failing active node never waits;
//! - a node handed over because it is dead gets the failover taint (value
//!   [`DEAD_TAINT_VALUE`]), so its pods are evicted at once; other reasons leave the node to its
//!   agent, which taints it itself. When the dead node's Lease is seen renewing again for
//!   [`Policy::untaint_after`], that taint (only that one) is removed, so the node can serve as a
//!   backup again; it does not become active by that;
//! - when a move is needed and no node is healthy, nothing moves and one `NoHealthyBackup` event
//!   is emitted (again only after the situation has cleared and recurred).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

/// The admin-set role of a node in its group (label `edgeplex.io/role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// `primary`: preferred as the active node.
    Primary,
    /// `backup`: activated when no primary is healthy.
    Backup,
    /// No role label: a candidate after primaries and backups.
    Unassigned,
    /// Any other value: never activated (e.g. a node that only runs other work).
    Excluded,
}

impl Role {
    /// The role a label value names (`None` when the label is absent).
    pub fn from_label(value: Option<&str>) -> Role {
        match value {
            None => Role::Unassigned,
            Some("primary") => Role::Primary,
            Some("backup") => Role::Backup,
            Some(_) => Role::Excluded,
        }
    }
}

/// What the controller knows about one node, read from its labels, taints and conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// Value of `edgeplex.io/group`, if any.
    pub group: Option<String>,
    /// Value of `edgeplex.io/role`.
    pub role: Role,
    /// Whether `edgeplex.io/active=true` is set.
    pub active: bool,
    /// Whether the node has the taint `edgeplex.io/failover` with effect `NoExecute`.
    pub failover_taint: bool,
    /// Whether that taint is the one this controller puts on dead nodes ([`DEAD_TAINT_VALUE`]).
    pub dead_taint: bool,
    /// Condition `BatteryCritical` is `True`.
    pub battery_critical: bool,
    /// Condition `DeviceFailure` is `True`.
    pub device_failure: bool,
    /// Condition `Ready` is `True`.
    pub ready: bool,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
}

/// The controller's own observations of one agent Lease, all on its monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseObservation {
    /// When the controller last saw the Lease change (or first saw it, if it never changed).
    pub last_change: Instant,
    /// How many changes the controller has seen since it first looked.
    pub changes: u32,
    /// The Lease's `leaseDurationSeconds` (or the configured default).
    pub duration: Duration,
    /// Whether the Lease existed at the last look (`false`: never created, or deleted).
    pub present: bool,
    /// Whether its current version carries the graceful-stop marker
    /// ([`STOPPED_ANNOTATION`](crate::kube::keys::STOPPED_ANNOTATION)): the agent said it was
    /// stopping on purpose.
    pub stopped: bool,
}

/// Liveness of a node's agent as judged from [`LeaseObservation`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Seen to change, and the last change is younger than the Lease duration.
    Fresh,
    /// Not yet seen to change, and not yet expired: alive or dead, the controller cannot tell.
    Unconfirmed,
    /// Not seen to change for at least the Lease duration: the node is dead.
    Expired,
}

impl LeaseObservation {
    /// The state at `now`.
    pub fn state(&self, now: Instant) -> LeaseState {
        if now.saturating_duration_since(self.last_change) >= self.duration {
            LeaseState::Expired
        } else if self.changes > 0 {
            LeaseState::Fresh
        } else {
            LeaseState::Unconfirmed
        }
    }
}

/// Why an active node must hand over, in order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Its agent's Lease has not changed for its duration, and its kubelet gives no sign of
    /// life either ([`Snapshot::is_dead`]).
    Dead,
    /// Condition `BatteryCritical=True`.
    BatteryCritical,
    /// Condition `DeviceFailure=True`.
    DeviceFailure,
    /// Tainted `edgeplex.io/failover`.
    Tainted,
}

impl Reason {
    /// The `reason` label value of `edgeplex_failover_handovers_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Dead => "dead",
            Reason::BatteryCritical => "battery_critical",
            Reason::DeviceFailure => "device_failure",
            Reason::Tainted => "tainted",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Dead => {
                "its agent's Lease and its kubelet's Lease stopped changing for their durations (node dead)"
            }
            Reason::BatteryCritical => "condition BatteryCritical=True",
            Reason::DeviceFailure => "condition DeviceFailure=True",
            Reason::Tainted => "tainted edgeplex.io/failover",
        })
    }
}

/// Whether a node may become active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidacy {
    /// It may.
    Healthy,
    /// It would, but its Lease has not been seen to change yet: wait a renewal.
    Pending,
    /// It may not.
    Unfit,
}

/// Everything the decision looks at.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The controller's clock now.
    pub now: Instant,
    /// All nodes that carry the group or the active label.
    pub nodes: Vec<NodeView>,
    /// Lease observations by node name. A node without an entry counts as
    /// [`LeaseState::Unconfirmed`].
    pub leases: BTreeMap<String, LeaseObservation>,
    /// Observations of the kubelets' own Leases (`kube-node-lease/<node>`), by node name. A node
    /// without an entry (or whose kubelet Lease is absent) has no kubelet heartbeat to go by: it
    /// is judged by its agent's Lease alone, as before kubelet Leases were watched.
    pub node_leases: BTreeMap<String, LeaseObservation>,
}

/// Whether a node (its kubelet, not its agent) is alive, from the kubelet's Lease and `Ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeLiveness {
    /// The kubelet's Lease was seen renewing within its duration, and `Ready=True`.
    Alive,
    /// The kubelet's Lease exists but has not been seen to change yet (the controller just
    /// started looking), and `Ready=True`: wait before judging.
    Unknown,
    /// No kubelet heartbeat: its Lease is stale or absent, or `Ready` is not `True`.
    Down,
}

/// Why a node's agent is down while its node is not dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AgentDown {
    /// The agent's Lease carries the graceful-stop marker: a planned stop (rolling update,
    /// `snap refresh`, node drain).
    Stopped,
    /// The agent's Lease stopped changing without the marker: a crash (or a kill).
    Crashed,
    /// The node has no agent Lease at all: its agent has not started yet.
    NotStarted,
}

impl AgentDown {
    /// The `state` label value of `edgeplex_failover_agents_down`.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentDown::Stopped => "stopped",
            AgentDown::Crashed => "crashed",
            AgentDown::NotStarted => "not_started",
        }
    }
}

impl Snapshot {
    /// The Lease state of `node`.
    pub fn lease_state(&self, node: &str) -> LeaseState {
        self.leases
            .get(node)
            .map_or(LeaseState::Unconfirmed, |o| o.state(self.now))
    }

    /// Whether `node`'s kubelet is alive (see [`NodeLiveness`]).
    pub fn node_liveness(&self, node: &NodeView) -> NodeLiveness {
        let Some(kubelet) = self.node_leases.get(&node.name).filter(|o| o.present) else {
            return NodeLiveness::Down;
        };
        if !node.ready {
            return NodeLiveness::Down;
        }
        match kubelet.state(self.now) {
            LeaseState::Fresh => NodeLiveness::Alive,
            LeaseState::Unconfirmed => NodeLiveness::Unknown,
            LeaseState::Expired => NodeLiveness::Down,
        }
    }

    /// Whether `node` is dead: its agent's Lease has expired *and* its kubelet gives no sign of
    /// life ([`NodeLiveness::Down`]). A stopped agent on a live node is not a dead node.
    pub fn is_dead(&self, node: &NodeView) -> bool {
        self.lease_state(&node.name) == LeaseState::Expired
            && self.node_liveness(node) == NodeLiveness::Down
    }

    /// Whether `node`'s agent is down on a node that is not dead, and why.
    pub fn agent_down(&self, node: &NodeView) -> Option<AgentDown> {
        if self.lease_state(&node.name) != LeaseState::Expired || self.is_dead(node) {
            return None;
        }
        let obs = self.leases.get(&node.name);
        Some(match obs {
            Some(o) if o.present && o.stopped => AgentDown::Stopped,
            Some(o) if o.present => AgentDown::Crashed,
            _ => AgentDown::NotStarted,
        })
    }

    /// Why `node` must not stay active, if it must not (the reason of highest precedence).
    pub fn reason(&self, node: &NodeView) -> Option<Reason> {
        if self.is_dead(node) {
            Some(Reason::Dead)
        } else if node.battery_critical {
            Some(Reason::BatteryCritical)
        } else if node.device_failure {
            Some(Reason::DeviceFailure)
        } else if node.failover_taint {
            Some(Reason::Tainted)
        } else {
            None
        }
    }

    /// Whether `node` may become active.
    pub fn candidacy(&self, node: &NodeView) -> Candidacy {
        if node.role == Role::Excluded
            || !node.ready
            || node.unschedulable
            || self.reason(node).is_some()
        {
            return Candidacy::Unfit;
        }
        match self.lease_state(&node.name) {
            LeaseState::Fresh => Candidacy::Healthy,
            LeaseState::Unconfirmed => Candidacy::Pending,
            // Not dead (checked above): the node is alive or not judged yet; its agent is down.
            // A planned stop or an agent that has not started yet is waited for (while the node
            // lives); a crashed agent is not.
            LeaseState::Expired => match (self.node_liveness(node), self.agent_down(node)) {
                (NodeLiveness::Unknown, _) => Candidacy::Pending,
                (_, Some(AgentDown::Stopped | AgentDown::NotStarted)) => Candidacy::Pending,
                _ => Candidacy::Unfit,
            },
        }
    }
}

/// The value of the failover taint this controller puts on a dead node. The agent removes only
/// taints with its own values, so this one is the controller's to remove.
pub const DEAD_TAINT_VALUE: &str = "node-dead";

/// Tunables of the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// Remove the dead-node taint once the node's Lease has been fresh this long (`None`: never;
    /// an admin removes it).
    pub untaint_after: Option<Duration>,
}

/// What the decision remembers between rounds. Losing it (a new leader) is safe: it only
/// deduplicates events, retries taints and breaks ties between two active nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    /// The node this controller last activated, by group.
    pub chosen: BTreeMap<String, String>,
    /// Groups for which `NoHealthyBackup` was announced and has not cleared since.
    pub warned: BTreeSet<String>,
    /// Dead nodes handed over that must carry the failover taint until they do (or revive).
    pub pending_taints: BTreeSet<String>,
    /// Nodes carrying the dead-node taint whose Lease is fresh again, and since when.
    pub revived: BTreeMap<String, Instant>,
}

/// The type of a Kubernetes Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// `Normal`
    Normal,
    /// `Warning`
    Warning,
}

impl EventType {
    /// The API value.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Event reason: a node was labelled active.
pub const EVENT_ACTIVATED: &str = "Activated";
/// Event reason: the active node handed over.
pub const EVENT_FAILED_OVER: &str = "FailedOver";
/// Event reason: a move was needed and no node was healthy.
pub const EVENT_NO_HEALTHY_BACKUP: &str = "NoHealthyBackup";
/// Event reason: a node tainted as dead renewed its Lease again and was untainted.
pub const EVENT_RECOVERED: &str = "Recovered";

/// A Kubernetes Event about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSpec {
    /// The node it is about.
    pub node: String,
    /// Normal or Warning.
    pub type_: EventType,
    /// `Activated`, `FailedOver` or `NoHealthyBackup`.
    pub reason: &'static str,
    /// One human sentence.
    pub message: String,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Label the node `edgeplex.io/active=true`.
    SetActive {
        /// Node name.
        node: String,
    },
    /// Remove `edgeplex.io/active` from the node.
    ClearActive {
        /// Node name.
        node: String,
    },
    /// Add `edgeplex.io/failover=node-dead:NoExecute` to the node's taints (if it has no
    /// failover taint yet).
    Taint {
        /// Node name.
        node: String,
    },
    /// Remove the dead-node taint (only a failover taint with value [`DEAD_TAINT_VALUE`]).
    Untaint {
        /// Node name.
        node: String,
    },
    /// Emit an Event.
    Event(EventSpec),
}

/// A move of `active` within a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// The group.
    pub group: String,
    /// The node that was active.
    pub from: String,
    /// The node now active.
    pub to: String,
    /// Why.
    pub reason: Reason,
}

/// The outcome of one round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// What to write, in order: activations come before the matching deactivation.
    pub actions: Vec<Action>,
    /// Moves made this round.
    pub handovers: Vec<Handover>,
    /// The active node of each group once the actions are done (`None`: no active node).
    pub active: BTreeMap<String, Option<String>>,
    /// Groups in which no node other than the active one is healthy or pending.
    pub groups_without_healthy_backup: usize,
    /// Group members whose agent is down on a node that is not dead, and why.
    pub agents_down: BTreeMap<String, AgentDown>,
    /// Memory for the next round.
    pub memory: Memory,
}

/// Preference among candidates: primary, backup, unassigned; then by name.
fn rank(n: &NodeView) -> (Role, &str) {
    (n.role, n.name.as_str())
}

/// Decide one round. See the module docs for the rules.
pub fn decide(snap: &Snapshot, policy: &Policy, memory: &Memory) -> Decision {
    let mut d = Decision {
        memory: memory.clone(),
        ..Decision::default()
    };
    let mut groups: BTreeMap<&str, Vec<&NodeView>> = BTreeMap::new();
    for n in &snap.nodes {
        match n.group.as_deref() {
            Some(g) if !g.is_empty() => groups.entry(g).or_default().push(n),
            // `active` belongs to group members only.
            _ if n.active => d.actions.push(Action::ClearActive {
                node: n.name.clone(),
            }),
            _ => {}
        }
    }
    // Forget groups that no longer exist.
    d.memory
        .chosen
        .retain(|g, _| groups.contains_key(g.as_str()));
    d.memory.warned.retain(|g| groups.contains_key(g.as_str()));
    for (group, mut members) in groups {
        members.sort_by(|a, b| rank(a).cmp(&rank(b)));
        decide_group(snap, group, &members, &mut d);
    }
    // Dead nodes handed over keep being tainted until the taint shows, they revive or vanish.
    let nodes: BTreeMap<&str, &NodeView> =
        snap.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    d.memory.pending_taints.retain(|name| {
        nodes
            .get(name.as_str())
            .is_some_and(|n| !n.failover_taint && snap.is_dead(n))
    });
    // Agents down on nodes that are not dead: reported, never tainted or handed over for that.
    for n in snap.nodes.iter().filter(|n| n.group.is_some()) {
        if let Some(why) = snap.agent_down(n) {
            d.agents_down.insert(n.name.clone(), why);
        }
    }
    for name in &d.memory.pending_taints {
        let taint = Action::Taint { node: name.clone() };
        if !d.actions.contains(&taint) {
            d.actions.push(taint);
        }
    }
    // Nodes we tainted as dead that renew their Lease again get their taint back off after the
    // hold-down (retried each round until the taint is gone).
    d.memory.revived.clear();
    if let Some(hold) = policy.untaint_after {
        for n in snap.nodes.iter().filter(|n| n.dead_taint) {
            if snap.lease_state(&n.name) != LeaseState::Fresh {
                continue;
            }
            let since = memory.revived.get(&n.name).copied().unwrap_or(snap.now);
            d.memory.revived.insert(n.name.clone(), since);
            let fresh_for = snap.now.saturating_duration_since(since);
            if fresh_for >= hold {
                d.actions.push(Action::Untaint {
                    node: n.name.clone(),
                });
                d.actions.push(Action::Event(EventSpec {
                    node: n.name.clone(),
                    type_: EventType::Normal,
                    reason: EVENT_RECOVERED,
                    message: format!(
                        "{} has renewed its Lease for {}s: removed the dead-node taint; it can serve as a backup again",
                        n.name,
                        fresh_for.as_secs()
                    ),
                }));
            }
        }
    }
    d
}

fn decide_group(snap: &Snapshot, group: &str, members: &[&NodeView], d: &mut Decision) {
    let actives: Vec<&NodeView> = members.iter().copied().filter(|n| n.active).collect();
    // The active node after this round, and whether a needed move found no healthy node.
    let (after, stuck): (Option<&NodeView>, bool) = if actives.is_empty() {
        // Nobody is active (a new group, or a controller's first look): nothing is urgent, so a
        // better-ranked node whose Lease is not confirmed yet is waited for (at most its Lease
        // duration, after which it counts as dead) rather than passed over for whichever node
        // happened to renew first.
        match best(snap, members, Patience::WaitForBetter, |_| true) {
            Pick::Healthy(n) => {
                d.actions.push(Action::SetActive {
                    node: n.name.clone(),
                });
                d.actions.push(Action::Event(EventSpec {
                    node: n.name.clone(),
                    type_: EventType::Normal,
                    reason: EVENT_ACTIVATED,
                    message: format!("group {group}: {} is now the active node", n.name),
                }));
                d.memory.chosen.insert(group.to_owned(), n.name.clone());
                (Some(n), false)
            }
            Pick::Wait => (None, false),
            Pick::None => {
                if let Some(first) = members.first() {
                    warn_no_backup(
                        d,
                        group,
                        &first.name,
                        format!("group {group} has no active node and no healthy node to activate"),
                    );
                }
                (None, true)
            }
        }
    } else {
        // Keep one active: the healthy one this controller chose last, else the best healthy
        // one, else (none healthy) the chosen or best one, which then hands over below.
        let remembered = d.memory.chosen.get(group).map(String::as_str);
        let healthy: Vec<&NodeView> = actives
            .iter()
            .copied()
            .filter(|n| snap.reason(n).is_none())
            .collect();
        let pool = if healthy.is_empty() {
            &actives
        } else {
            &healthy
        };
        let keeper = pool
            .iter()
            .copied()
            .find(|n| Some(n.name.as_str()) == remembered)
            .unwrap_or(pool[0]);
        for n in &actives {
            if n.name != keeper.name {
                d.actions.push(Action::ClearActive {
                    node: n.name.clone(),
                });
            }
        }
        match snap.reason(keeper) {
            None => (Some(keeper), false),
            // A handover is urgent: the best node that is healthy now.
            Some(reason) => match best(snap, members, Patience::Urgent, |n| !n.active) {
                Pick::Healthy(to) => {
                    d.actions.push(Action::SetActive {
                        node: to.name.clone(),
                    });
                    d.actions.push(Action::ClearActive {
                        node: keeper.name.clone(),
                    });
                    let mut message = format!(
                        "group {group}: active moved from {} to {}: {reason}",
                        keeper.name, to.name
                    );
                    if reason == Reason::Dead {
                        d.memory.pending_taints.insert(keeper.name.clone());
                        if !keeper.failover_taint {
                            message.push_str("; tainted edgeplex.io/failover:NoExecute");
                        }
                    }
                    d.actions.push(Action::Event(EventSpec {
                        node: keeper.name.clone(),
                        type_: EventType::Warning,
                        reason: EVENT_FAILED_OVER,
                        message: message.clone(),
                    }));
                    d.actions.push(Action::Event(EventSpec {
                        node: to.name.clone(),
                        type_: EventType::Normal,
                        reason: EVENT_ACTIVATED,
                        message,
                    }));
                    d.handovers.push(Handover {
                        group: group.to_owned(),
                        from: keeper.name.clone(),
                        to: to.name.clone(),
                        reason,
                    });
                    d.memory.chosen.insert(group.to_owned(), to.name.clone());
                    (Some(to), false)
                }
                Pick::Wait => (Some(keeper), false),
                Pick::None => {
                    warn_no_backup(
                        d,
                        group,
                        &keeper.name,
                        format!(
                            "group {group}: active node {} must hand over ({reason}) but no other node is healthy; it stays active",
                            keeper.name
                        ),
                    );
                    (Some(keeper), true)
                }
            },
        }
    };
    if !stuck {
        d.memory.warned.remove(group);
    }
    let spare = members
        .iter()
        .filter(|n| Some(n.name.as_str()) != after.map(|a| a.name.as_str()))
        .any(|n| snap.candidacy(n) != Candidacy::Unfit);
    if !spare {
        d.groups_without_healthy_backup += 1;
    }
    d.active
        .insert(group.to_owned(), after.map(|n| n.name.clone()));
}

enum Pick<'a> {
    Healthy(&'a NodeView),
    /// None healthy yet, but some pending: wait for their Leases to be seen renewing.
    Wait,
    None,
}

/// How [`best`] treats a pending node ranked ahead of a healthy one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Patience {
    /// Take the best node healthy now (a handover: the active node is failing).
    Urgent,
    /// Wait for a better-ranked pending node to confirm or expire (first activation).
    WaitForBetter,
}

/// The best healthy node among `members` (already in preference order) that passes `filter`.
fn best<'a>(
    snap: &Snapshot,
    members: &[&'a NodeView],
    patience: Patience,
    filter: impl Fn(&NodeView) -> bool,
) -> Pick<'a> {
    let mut pending = false;
    for n in members.iter().copied().filter(|n| filter(n)) {
        match snap.candidacy(n) {
            Candidacy::Healthy if pending && patience == Patience::WaitForBetter => {
                return Pick::Wait
            }
            Candidacy::Healthy => return Pick::Healthy(n),
            Candidacy::Pending => pending = true,
            Candidacy::Unfit => {}
        }
    }
    if pending {
        Pick::Wait
    } else {
        Pick::None
    }
}

fn warn_no_backup(d: &mut Decision, group: &str, node: &str, message: String) {
    if d.memory.warned.insert(group.to_owned()) {
        d.actions.push(Action::Event(EventSpec {
            node: node.to_owned(),
            type_: EventType::Warning,
            reason: EVENT_NO_HEALTHY_BACKUP,
            message,
        }));
    }
}

#[cfg(test)]
mod tests;

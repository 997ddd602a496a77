//! The controller's I/O: watch Nodes and Leases, feed [`decide`], carry out its actions.
//!
//! This layer is deliberately thin. Only the leader looks at the cluster: for each leadership
//! term it starts four kube-runtime watches into reflector stores (Nodes labelled
//! `edgeplex.io/group`, Nodes labelled `edgeplex.io/active`, the agents' Leases in their
//! namespace, the kubelets' Leases in `kube-node-lease`) and decides from those stores on every
//! change and every poll interval, without any further read. A standby makes no request besides
//! the elector's look at the leader Lease. A new term starts from nothing: every Lease must be
//! seen to change (or to stay unchanged for its duration) before it is judged. The leader checks
//! its leadership again before every write.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, reflector, Store};
use kube::runtime::watcher::{self, watcher};
use kube::Client;
use tokio_stream::{Stream, StreamExt};
use tracing::Instrument;

use super::decide::{
    decide, Action, AgentDown, Decision, EventSpec, Memory, NodeView, Policy, Snapshot,
    DEAD_TAINT_VALUE,
};
use super::leader::{LeaderConfig, LeaderElector, Leadership};
use super::metrics::FailoverMetrics;
use super::observe::{node_view, LeaseSighting, LeaseTracker};
use super::{FailoverSettings, ACTIVE_LABEL, FAILOVER_TAINT, FIELD_MANAGER, GROUP_LABEL};
use crate::kube::KubeSettings;
use crate::shutdown::Shutdown;

/// How often a taint write is retried after a 409 conflict within one round.
const TAINT_ATTEMPTS: usize = 5;

/// The failover controller: leader election plus the reconcile loop.
pub struct Controller {
    client: Client,
    settings: FailoverSettings,
    kube: KubeSettings,
    identity: String,
    metrics: Arc<FailoverMetrics>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("settings", &self.settings)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// A controller that talks to `client`, reads the agents' Leases in `kube.lease_namespace`,
    /// counts into `metrics`, and takes part in the election as `identity` (unique per replica,
    /// e.g. the pod name).
    pub fn new(
        client: Client,
        settings: FailoverSettings,
        kube: KubeSettings,
        identity: String,
        metrics: FailoverMetrics,
    ) -> Controller {
        Controller {
            client,
            settings,
            kube,
            identity,
            metrics: Arc::new(metrics),
        }
    }

    /// Run until `shutdown`, then stop acting and release leadership.
    pub async fn run(self, shutdown: Shutdown) {
        let s = &self.settings;
        let mut elector = LeaderElector::new(
            self.client.clone(),
            LeaderConfig {
                namespace: s.namespace.clone(),
                name: s.lease_name.clone(),
                identity: self.identity.clone(),
                lease_duration: secs(s.lease_duration_secs),
                renew_interval: secs(s.renew_interval_secs),
                renew_deadline: secs(s.renew_deadline_secs),
            },
        );
        let leadership = elector.leadership();
        let mut reconciler = Reconciler::new(&self);
        let metrics = Arc::clone(&self.metrics);
        let on_error = move |_: &kube::Error| metrics.api_error("lease");
        let span = tracing::info_span!("failover", identity = %self.identity);
        async {
            tracing::info!(
                namespace = %s.namespace,
                lease = %s.lease_name,
                agent_lease_namespace = %self.kube.lease_namespace,
                "failover controller started"
            );
            tokio::join!(
                elector.participate(&shutdown, &on_error),
                reconciler.run(&leadership, &shutdown),
            );
            self.metrics.set_leader(false);
            self.metrics.clear_groups();
            elector.release_logged(&on_error).await;
            tracing::info!("failover controller stopped");
        }
        .instrument(span)
        .await;
    }
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::from_secs(1))
}

/// Kubelet Leases declare their duration (40 s by default); this is assumed if one does not.
const KUBELET_LEASE_DEFAULT: Duration = Duration::from_secs(40);

/// The four watches the leader keeps, by index into [`WatchState`].
const WATCHES: [&str; 4] = [
    "nodes_in_groups",
    "active_nodes",
    "agent_leases",
    "node_leases",
];

/// A term whose watch failed starts again after this, doubling up to [`TERM_RETRY_MAX`].
const TERM_RETRY_MIN: Duration = Duration::from_millis(500);
/// The longest wait before a new term after watch failures.
const TERM_RETRY_MAX: Duration = Duration::from_secs(30);
/// A term that lasted this long resets the retry delay.
const TERM_HEALTHY: Duration = Duration::from_secs(60);

/// What the watch drivers tell the reconcile loop.
#[derive(Debug, Default)]
struct WatchState {
    /// Per watch: its initial list has completed.
    ready: [AtomicBool; 4],
    /// Wakes the loop on every change.
    changed: tokio::sync::Notify,
}

impl WatchState {
    fn all_ready(&self) -> bool {
        self.ready.iter().all(|r| r.load(Ordering::Relaxed))
    }
}

/// The reflector stores of one leadership term.
struct Stores {
    grouped: Store<Node>,
    active: Store<Node>,
    agent_leases: Store<Lease>,
    node_leases: Store<Lease>,
}

struct Reconciler {
    client: Client,
    nodes: Api<Node>,
    events: Api<Event>,
    namespace: String,
    lease_namespace: String,
    identity: String,
    poll: Duration,
    agent_lease_default: Duration,
    max_gap: Duration,
    policy: Policy,
    metrics: Arc<FailoverMetrics>,
}

/// The state of one leadership term: built when it starts, dropped when it ends, so a standby
/// keeps nothing and a new term judges every Lease afresh.
struct Term {
    tracker: LeaseTracker,
    kubelets: LeaseTracker,
    memory: Memory,
    agents_down: BTreeMap<String, AgentDown>,
    /// `edgeplex.io/active` values this controller wrote that its watches may not show yet.
    written: Written,
    /// Dead-node taints this controller added (`true`) or removed (`false`), likewise.
    tainted: Written,
}

/// How long a label write of ours overrides what the watches show, at most: watch events arrive
/// within milliseconds, so this only ends an override that something else made stale (an admin
/// changing the label right after us).
const WRITE_OVERRIDE_MAX: Duration = Duration::from_secs(10);

/// Read-your-writes for the active label. A round decides from the reflector stores, which learn
/// of the controller's own write only when its watch event arrives; a round that ran before that
/// (woken by any other change, e.g. a Lease renewal) would see the old label and act again:
/// activate the same node twice, count a handover twice. Each successful write is remembered
/// here and laid over the stores until they show it (or [`WRITE_OVERRIDE_MAX`] passes).
#[derive(Debug, Default)]
struct Written(BTreeMap<String, (bool, Instant)>);

impl Written {
    fn record(&mut self, node: &str, active: bool, now: Instant) {
        self.0.insert(node.to_owned(), (active, now));
    }

    /// Lay the remembered writes over `views` (read from the stores at `now`), forgetting those
    /// the stores now show, or that are too old to trust. `shown` reads the written value from a
    /// view, `set` lays it over one.
    fn overlay(
        &mut self,
        views: &mut [NodeView],
        now: Instant,
        shown: fn(&NodeView) -> bool,
        set: fn(&mut NodeView, bool),
    ) {
        self.0
            .retain(|_, (_, at)| now.duration_since(*at) < WRITE_OVERRIDE_MAX);
        for v in views.iter_mut() {
            if let Some(&(value, _)) = self.0.get(&v.name) {
                if shown(v) == value {
                    self.0.remove(&v.name);
                } else {
                    set(v, value);
                }
            }
        }
    }

    /// [`Written::overlay`] of the active label.
    fn overlay_active(&mut self, views: &mut [NodeView], now: Instant) {
        self.overlay(views, now, |v| v.active, |v, a| v.active = a);
    }

    /// [`Written::overlay`] of the dead-node taint (a node has at most one failover taint: the
    /// controller adds its own only when there is none).
    fn overlay_dead_taint(&mut self, views: &mut [NodeView], now: Instant) {
        self.overlay(
            views,
            now,
            |v| v.dead_taint,
            |v, t| {
                v.dead_taint = t;
                v.failover_taint = t;
            },
        );
    }
}

impl Reconciler {
    fn new(c: &Controller) -> Reconciler {
        let s = &c.settings;
        let poll = secs(s.poll_interval_secs);
        Reconciler {
            client: c.client.clone(),
            nodes: Api::all(c.client.clone()),
            events: Api::namespaced(c.client.clone(), &s.namespace),
            namespace: s.namespace.clone(),
            lease_namespace: c.kube.lease_namespace.clone(),
            identity: c.identity.clone(),
            poll,
            agent_lease_default: secs(s.agent_lease_duration_secs),
            // A gap of several rounds in our own looking (a stalled process) is not the nodes'.
            max_gap: (poll * 5).max(Duration::from_secs(2)),
            policy: Policy {
                untaint_after: (s.untaint_after_secs > 0.0).then(|| secs(s.untaint_after_secs)),
            },
            metrics: Arc::clone(&c.metrics),
        }
    }

    /// Stand by until leading, lead until leadership is lost, again, until `shutdown`. A
    /// standby makes no request at all here (only the elector reads the leader Lease).
    async fn run(&mut self, leadership: &Leadership, shutdown: &Shutdown) {
        let standby_check = self.poll.min(Duration::from_millis(200));
        let mut retry = TERM_RETRY_MIN;
        while !shutdown.requested() {
            if leadership.is_leader() {
                self.metrics.set_leader(true);
                tracing::info!("leading: watching device groups");
                let started = Instant::now();
                let watch_failed = self.lead(leadership, shutdown).await;
                self.metrics.set_leader(false);
                self.metrics.clear_groups();
                if shutdown.requested() {
                    break;
                }
                if !watch_failed {
                    tracing::info!("not leading: standing by");
                    continue;
                }
                // A watch failed: the next term lists everything again and judges every Lease
                // afresh (what the nodes did while we could not see is not held against them).
                if started.elapsed() >= TERM_HEALTHY {
                    retry = TERM_RETRY_MIN;
                }
                tracing::info!(
                    retry_in_secs = retry.as_secs_f64(),
                    "a watch failed: starting over"
                );
                shutdown.sleep(retry).await;
                retry = (retry * 2).min(TERM_RETRY_MAX);
            } else {
                shutdown.sleep(standby_check).await;
            }
        }
    }

    /// One leadership term: watch the Nodes of the groups and the Leases, decide on every
    /// change and every poll interval, until leadership is lost, `shutdown`, or a watch fails
    /// (then `true`).
    async fn lead(&self, leadership: &Leadership, shutdown: &Shutdown) -> bool {
        let state = WatchState::default();
        let (grouped, w_grouped) = reflector::store::<Node>();
        let (active, w_active) = reflector::store::<Node>();
        let (agent_leases, w_agent) = reflector::store::<Lease>();
        let (node_leases, w_kubelet) = reflector::store::<Lease>();
        let stores = Stores {
            grouped,
            active,
            agent_leases,
            node_leases,
        };
        let nodes: Api<Node> = Api::all(self.client.clone());
        let agents: Api<Lease> = Api::namespaced(self.client.clone(), &self.lease_namespace);
        let kubelets: Api<Lease> =
            Api::namespaced(self.client.clone(), crate::kube::keys::NODE_LEASE_NAMESPACE);
        let cfg = watcher::Config::default;
        // No backoff inside the watchers: their first error ends the term (see `run`).
        let watches = async {
            tokio::select! {
                () = self.drive(0, &state, reflector(w_grouped, watcher(nodes.clone(), cfg().labels(GROUP_LABEL)))) => {}
                () = self.drive(1, &state, reflector(w_active, watcher(nodes, cfg().labels(ACTIVE_LABEL)))) => {}
                () = self.drive(2, &state, reflector(w_agent, watcher(agents, cfg()))) => {}
                () = self.drive(3, &state, reflector(w_kubelet, watcher(kubelets, cfg()))) => {}
            }
        };
        tokio::select! {
            () = watches => true,
            () = self.reconcile(&stores, &state, leadership, shutdown) => false,
        }
    }

    /// Feed one watch into its store, recording readiness; returns on its first error.
    async fn drive<K>(
        &self,
        i: usize,
        state: &WatchState,
        stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    ) {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(ev) => {
                    if matches!(ev, watcher::Event::InitDone) {
                        state.ready[i].store(true, Ordering::Relaxed);
                    }
                    state.changed.notify_one();
                }
                Err(e) => {
                    self.metrics.api_error(WATCHES[i]);
                    let forbidden = matches!(
                        &e,
                        watcher::Error::InitialListFailed(kube::Error::Api(s))
                            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
                            if s.code == 403
                    );
                    let hint = if forbidden {
                        "; grant the controller's service account manifests/failover/rbac.yaml (it lists and watches Nodes, the agents' Leases and kube-node-lease); it decides nothing until every watch has listed once"
                    } else {
                        ""
                    };
                    tracing::warn!(watch = WATCHES[i], error = %e, "watch failed{hint}");
                    return;
                }
            }
        }
    }

    async fn reconcile(
        &self,
        stores: &Stores,
        state: &WatchState,
        leadership: &Leadership,
        shutdown: &Shutdown,
    ) {
        let mut term = Term {
            tracker: LeaseTracker::new(self.agent_lease_default, self.max_gap),
            kubelets: LeaseTracker::new(KUBELET_LEASE_DEFAULT, self.max_gap),
            memory: Memory::default(),
            agents_down: BTreeMap::new(),
            written: Written::default(),
            tainted: Written::default(),
        };
        while !shutdown.requested() && leadership.is_leader() {
            if state.all_ready() {
                self.round(&mut term, stores, leadership).await;
            }
            tokio::select! {
                () = state.changed.notified() => {}
                () = tokio::time::sleep(self.poll) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    async fn round(&self, term: &mut Term, stores: &Stores, leadership: &Leadership) {
        let now = Instant::now();
        // A node in both stores: the group watch's copy wins (the active watch only adds the
        // nodes labelled active outside any group, whose label must go).
        let mut nodes: BTreeMap<String, Arc<Node>> = BTreeMap::new();
        for n in stores
            .active
            .state()
            .into_iter()
            .chain(stores.grouped.state())
        {
            if let Some(name) = n.metadata.name.clone() {
                nodes.insert(name, n);
            }
        }
        let mut views: Vec<_> = nodes.values().filter_map(|n| node_view(n)).collect();
        term.written.overlay_active(&mut views, now);
        term.tainted.overlay_dead_taint(&mut views, now);
        views.retain(|n| n.group.is_some() || n.active);
        let by_name = |store: &Store<Lease>| -> BTreeMap<String, Arc<Lease>> {
            store
                .state()
                .into_iter()
                .filter_map(|l| Some((l.metadata.name.clone()?, l)))
                .collect()
        };
        let agent_leases = by_name(&stores.agent_leases);
        let node_leases = by_name(&stores.node_leases);
        let members = || views.iter().filter(|n| n.group.is_some());
        term.tracker.observe(
            now,
            members().map(|n| {
                let name = n.name.as_str();
                (name, agent_leases.get(name).map(|l| LeaseSighting::of(l)))
            }),
        );
        term.kubelets.observe(
            now,
            members().map(|n| {
                let name = n.name.as_str();
                (name, node_leases.get(name).map(|l| LeaseSighting::of(l)))
            }),
        );
        let snapshot = Snapshot {
            now,
            nodes: views,
            leases: term.tracker.observations(),
            node_leases: term.kubelets.observations(),
        };
        let decision = decide(&snapshot, &self.policy, &term.memory);
        let (labels, taints) = self.execute(&decision, leadership).await;
        for (node, active) in labels {
            term.written.record(&node, active, Instant::now());
        }
        for (node, tainted) in taints {
            term.tainted.record(&node, tainted, Instant::now());
        }
        for (node, why) in &decision.agents_down {
            if term.agents_down.get(node) != Some(why) {
                match why {
                    AgentDown::Crashed => {
                        tracing::warn!(node = %node, "agent down without a graceful stop (crash?) on a live node: not a dead node, no taint, active stays")
                    }
                    AgentDown::Stopped => {
                        tracing::info!(node = %node, "agent stopped gracefully on a live node: not a dead node, no taint, active stays")
                    }
                    AgentDown::NotStarted => {
                        tracing::info!(node = %node, "no agent Lease yet on a live node: waiting for its agent")
                    }
                }
            }
        }
        for node in term.agents_down.keys() {
            if !decision.agents_down.contains_key(node) {
                tracing::info!(node = %node, "agent back (or node judged otherwise)");
            }
        }
        self.metrics.set_agents_down(decision.agents_down.values());
        term.agents_down = decision.agents_down.clone();
        term.memory = decision.memory;
        self.metrics
            .set_groups(&decision.active, decision.groups_without_healthy_backup);
    }

    /// Carry out the actions in order. A failed label write ends the round (the next round
    /// starts again from what the API shows); a failed event or taint is logged and skipped.
    /// Returns the active-label writes and the dead-taint changes that succeeded (node, value).
    async fn execute(
        &self,
        d: &Decision,
        leadership: &Leadership,
    ) -> (Vec<(String, bool)>, Vec<(String, bool)>) {
        let mut labelled = Vec::new();
        let mut written = Vec::new();
        let mut tainted = Vec::new();
        for action in &d.actions {
            if !leadership.is_leader() {
                tracing::warn!("leadership lost during a round; not writing further");
                break;
            }
            let result = match action {
                Action::SetActive { node } => {
                    let r = self.set_active(node).await;
                    if r.is_ok() {
                        tracing::info!(node = %node, "labelled {ACTIVE_LABEL}=true");
                        labelled.push(node.as_str());
                        written.push((node.clone(), true));
                    }
                    r.map_err(|e| ("set_active", e))
                }
                Action::ClearActive { node } => {
                    let r = self.clear_active(node).await;
                    if r.is_ok() {
                        tracing::info!(node = %node, "removed {ACTIVE_LABEL}");
                        written.push((node.clone(), false));
                    }
                    r.map_err(|e| ("clear_active", e))
                }
                Action::Taint { node } => {
                    match self.edit_taints(node, true).await {
                        Ok(true) => tainted.push((node.clone(), true)),
                        Ok(false) => {}
                        Err(e) => {
                            self.metrics.api_error("taint");
                            tracing::warn!(node = %node, error = %e, "cannot taint the dead node; retrying next round");
                        }
                    }
                    Ok(())
                }
                Action::Untaint { node } => {
                    match self.edit_taints(node, false).await {
                        Ok(true) => tainted.push((node.clone(), false)),
                        Ok(false) => {}
                        Err(e) => {
                            self.metrics.api_error("untaint");
                            tracing::warn!(node = %node, error = %e, "cannot untaint the revived node; retrying next round");
                        }
                    }
                    Ok(())
                }
                Action::Event(e) => {
                    if let Err(err) = self.event(e).await {
                        self.metrics.api_error("event");
                        tracing::warn!(node = %e.node, reason = e.reason, error = %err, "cannot record event");
                    }
                    Ok(())
                }
            };
            if let Err((op, e)) = result {
                self.metrics.api_error(op);
                tracing::warn!(error = %e, op, "label write failed; ending this round");
                break;
            }
        }
        for h in &d.handovers {
            if labelled.contains(&h.to.as_str()) {
                tracing::warn!(
                    group = %h.group, from = %h.from, to = %h.to, reason = h.reason.as_str(),
                    "handed over"
                );
                self.metrics.handover(&h.group, h.reason);
            }
        }
        (written, tainted)
    }

    async fn set_active(&self, node: &str) -> Result<(), kube::Error> {
        let patch = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": node, "labels": { ACTIVE_LABEL: "true" } },
        });
        self.nodes
            .patch(
                node,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map(drop)
    }

    async fn clear_active(&self, node: &str) -> Result<(), kube::Error> {
        // A merge patch with null removes the label whoever set it (an apply would only give up
        // our own ownership, and leave a label an admin set by hand).
        let patch = serde_json::json!({ "metadata": { "labels": { ACTIVE_LABEL: null } } });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        match self.nodes.patch(node, &params, &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Add (`add`) the dead-node taint `edgeplex.io/failover=node-dead:NoExecute` unless the
    /// node has a failover taint already, or remove it (only that value: the agent's own
    /// failover taint stays). Every other taint is kept: `spec.taints` is an atomic list, so
    /// this is a read-modify-write guarded by `resourceVersion`, retried on 409.
    /// Returns whether it changed the taints.
    async fn edit_taints(&self, node: &str, add: bool) -> Result<bool, kube::Error> {
        let is_failover = |t: &Taint| t.key == FAILOVER_TAINT && t.effect == "NoExecute";
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(current) = self.nodes.get_opt(node).await? else {
                return Ok(false);
            };
            let mut taints = current
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            if add {
                if taints.iter().any(is_failover) {
                    return Ok(false);
                }
                taints.push(Taint {
                    key: FAILOVER_TAINT.into(),
                    value: Some(DEAD_TAINT_VALUE.into()),
                    effect: "NoExecute".into(),
                    time_added: Some(Time(k8s_openapi::jiff::Timestamp::now())),
                });
            } else {
                let before = taints.len();
                taints
                    .retain(|t| !(is_failover(t) && t.value.as_deref() == Some(DEAD_TAINT_VALUE)));
                if taints.len() == before {
                    return Ok(false);
                }
            }
            // A merge patch carrying the resourceVersion just read: the API server refuses it
            // with 409 if anyone wrote the node since (kube-apiserver checks it as for a PUT).
            // A PUT of the whole typed Node would also drop fields newer than our API version.
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": current.metadata.resource_version },
                "spec": { "taints": taints },
            });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            match self.nodes.patch(node, &params, &Patch::Merge(&patch)).await {
                Ok(_) => {
                    if add {
                        tracing::warn!(node = %node, "tainted the dead node {FAILOVER_TAINT}={DEAD_TAINT_VALUE}:NoExecute");
                    } else {
                        tracing::info!(node = %node, "removed the dead-node taint: the node renews its Lease again");
                    }
                    return Ok(true);
                }
                Err(kube::Error::Api(s)) if s.is_conflict() && attempt < TAINT_ATTEMPTS => {
                    tracing::debug!(node = %node, attempt, "taint write conflicted; re-reading");
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn event(&self, e: &EventSpec) -> Result<(), kube::Error> {
        let now = k8s_openapi::jiff::Timestamp::now();
        let uid = self
            .nodes
            .get_opt(&e.node)
            .await
            .ok()
            .flatten()
            .and_then(|n| n.metadata.uid);
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    e.node,
                    now.as_nanosecond().unsigned_abs()
                )),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(e.node.clone()),
                uid,
                ..ObjectReference::default()
            },
            reason: Some(e.reason.into()),
            message: Some(e.message.clone()),
            type_: Some(e.type_.as_str().into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            action: Some("Failover".into()),
            reporting_component: Some(FIELD_MANAGER.into()),
            reporting_instance: Some(self.identity.clone()),
            source: Some(EventSource {
                component: Some(FIELD_MANAGER.into()),
                host: None,
            }),
            ..Event::default()
        };
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        tracing::info!(node = %e.node, reason = e.reason, message = %e.message, "event");
        self.events.create(&params, &event).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::decide::Role;

    fn view(name: &str, active: bool) -> NodeView {
        NodeView {
            name: name.into(),
            group: Some("g".into()),
            role: Role::Primary,
            active,
            failover_taint: false,
            dead_taint: false,
            battery_critical: false,
            device_failure: false,
            ready: true,
            unschedulable: false,
        }
    }

    #[test]
    fn a_write_overrides_the_stores_until_they_show_it() {
        let t0 = Instant::now();
        let mut written = Written::default();
        written.record("p", true, t0);
        written.record("b", false, t0);
        // The watches have not delivered the writes yet: the round sees them anyway.
        let mut views = vec![view("p", false), view("b", true), view("x", false)];
        written.overlay_active(&mut views, t0 + Duration::from_millis(5));
        assert_eq!(
            views.iter().map(|v| v.active).collect::<Vec<_>>(),
            [true, false, false]
        );
        // The stores show "p" now: its override is dropped, "b"'s stays.
        let mut views = vec![view("p", true), view("b", true)];
        written.overlay_active(&mut views, t0 + Duration::from_millis(10));
        assert!(views[0].active && !views[1].active);
        assert_eq!(written.0.keys().collect::<Vec<_>>(), ["b"]);
        // Later the label changes again (someone else): the stores are believed again.
        let mut views = vec![view("p", false)];
        written.overlay_active(&mut views, t0 + Duration::from_millis(20));
        assert!(!views[0].active);
        // An override the stores never confirm ends after WRITE_OVERRIDE_MAX.
        let mut views = vec![view("b", true)];
        written.overlay_active(&mut views, t0 + WRITE_OVERRIDE_MAX);
        assert!(views[0].active && written.0.is_empty());
    }

    #[test]
    fn a_removed_dead_taint_is_seen_gone_until_the_stores_agree() {
        let t0 = Instant::now();
        let mut tainted = Written::default();
        tainted.record("p", false, t0);
        let mut stale = view("p", false);
        stale.dead_taint = true;
        stale.failover_taint = true;
        let mut views = vec![stale.clone()];
        tainted.overlay_dead_taint(&mut views, t0);
        assert!(!views[0].dead_taint && !views[0].failover_taint);
        let mut views = vec![view("p", false)];
        tainted.overlay_dead_taint(&mut views, t0);
        assert!(tainted.0.is_empty());
    }
}

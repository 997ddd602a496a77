//! The controller's I/O: poll Nodes and agent Leases, feed [`decide`], carry out its actions.
//!
//! This layer is deliberately thin. Every replica polls and observes (so a standby that takes
//! over already knows which Leases have stopped changing); only the leader writes, and it checks
//! its leadership again before every write.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use tracing::Instrument;

use super::decide::{
    decide, Action, Decision, EventSpec, Memory, Policy, Snapshot, DEAD_TAINT_VALUE,
};
use super::leader::{LeaderConfig, LeaderElector, Leadership};
use super::metrics::FailoverMetrics;
use super::observe::{node_view, LeaseSighting, LeaseTracker};
use super::{FailoverSettings, ACTIVE_LABEL, FAILOVER_TAINT, FIELD_MANAGER};
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

struct Reconciler {
    nodes: Api<Node>,
    leases: Api<Lease>,
    events: Api<Event>,
    namespace: String,
    identity: String,
    poll: Duration,
    round_timeout: Duration,
    tracker: LeaseTracker,
    policy: Policy,
    memory: Memory,
    leading: bool,
    metrics: Arc<FailoverMetrics>,
}

impl Reconciler {
    fn new(c: &Controller) -> Reconciler {
        let s = &c.settings;
        let poll = secs(s.poll_interval_secs);
        Reconciler {
            nodes: Api::all(c.client.clone()),
            leases: Api::namespaced(c.client.clone(), &c.kube.lease_namespace),
            events: Api::namespaced(c.client.clone(), &s.namespace),
            namespace: s.namespace.clone(),
            identity: c.identity.clone(),
            poll,
            // A round makes a handful of requests, each bounded by the request timeout.
            round_timeout: secs(c.kube.request_timeout_secs) * 3,
            // A gap of several polls in our own reads is an outage on our side, not the nodes'.
            tracker: LeaseTracker::new(
                secs(s.agent_lease_duration_secs),
                (poll * 5).max(Duration::from_secs(2)),
            ),
            policy: Policy {
                untaint_after: (s.untaint_after_secs > 0.0).then(|| secs(s.untaint_after_secs)),
            },
            memory: Memory::default(),
            leading: false,
            metrics: Arc::clone(&c.metrics),
        }
    }

    async fn run(&mut self, leadership: &Leadership, shutdown: &Shutdown) {
        while !shutdown.requested() {
            match tokio::time::timeout(self.round_timeout, self.round(leadership)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "failover round failed; retrying"),
                Err(_) => tracing::warn!("failover round timed out; retrying"),
            }
            shutdown.sleep(self.poll).await;
        }
    }

    async fn round(&mut self, leadership: &Leadership) -> Result<(), kube::Error> {
        let nodes = self
            .nodes
            .list(&ListParams::default())
            .await
            .inspect_err(|_| {
                self.metrics.api_error("list_nodes");
            })?;
        let leases = self
            .leases
            .list(&ListParams::default())
            .await
            .inspect_err(|_| {
                self.metrics.api_error("list_leases");
            })?;
        let now = Instant::now();
        let views: Vec<_> = nodes
            .items
            .iter()
            .filter_map(node_view)
            .filter(|n| n.group.is_some() || n.active)
            .collect();
        let by_name: BTreeMap<&str, &Lease> = leases
            .items
            .iter()
            .filter_map(|l| Some((l.metadata.name.as_deref()?, l)))
            .collect();
        self.tracker.observe(
            now,
            views.iter().filter(|n| n.group.is_some()).map(|n| {
                let name = n.name.as_str();
                (name, by_name.get(name).map(|l| LeaseSighting::of(l)))
            }),
        );
        let leading = leadership.is_leader();
        self.metrics.set_leader(leading);
        if !leading {
            if self.leading {
                tracing::info!("not leading: standing by");
                self.metrics.clear_groups();
            }
            self.leading = false;
            self.memory = Memory::default();
            return Ok(());
        }
        if !self.leading {
            tracing::info!("leading: reconciling device groups");
            self.leading = true;
        }
        let snapshot = Snapshot {
            now,
            nodes: views,
            leases: self.tracker.observations(),
        };
        let decision = decide(&snapshot, &self.policy, &self.memory);
        self.execute(&decision, leadership).await;
        self.memory = decision.memory;
        self.metrics
            .set_groups(&decision.active, decision.groups_without_healthy_backup);
        Ok(())
    }

    /// Carry out the actions in order. A failed label write ends the round (the next round
    /// starts again from what the API shows); a failed event or taint is logged and skipped.
    async fn execute(&self, d: &Decision, leadership: &Leadership) {
        let mut labelled = Vec::new();
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
                    }
                    r.map_err(|e| ("set_active", e))
                }
                Action::ClearActive { node } => {
                    let r = self.clear_active(node).await;
                    if r.is_ok() {
                        tracing::info!(node = %node, "removed {ACTIVE_LABEL}");
                    }
                    r.map_err(|e| ("clear_active", e))
                }
                Action::Taint { node } => {
                    if let Err(e) = self.edit_taints(node, true).await {
                        self.metrics.api_error("taint");
                        tracing::warn!(node = %node, error = %e, "cannot taint the dead node; retrying next round");
                    }
                    Ok(())
                }
                Action::Untaint { node } => {
                    if let Err(e) = self.edit_taints(node, false).await {
                        self.metrics.api_error("untaint");
                        tracing::warn!(node = %node, error = %e, "cannot untaint the revived node; retrying next round");
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
    async fn edit_taints(&self, node: &str, add: bool) -> Result<(), kube::Error> {
        let is_failover = |t: &Taint| t.key == FAILOVER_TAINT && t.effect == "NoExecute";
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(current) = self.nodes.get_opt(node).await? else {
                return Ok(());
            };
            let mut taints = current
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            if add {
                if taints.iter().any(is_failover) {
                    return Ok(());
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
                    return Ok(());
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
                    return Ok(());
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

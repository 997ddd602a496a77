//! The publisher's I/O: one loop on the publisher's runtime that reads the inputs, asks
//! [`Decider`] what the node should look like, and writes the differences: labels and
//! annotations and conditions by server-side apply, the taint by read-modify-write, the Lease
//! by PUT with its resourceVersion. Every request is timed out, counted and retried with
//! backoff; failures are logged when they start and when they clear.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Instant;

use ::kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use ::kube::Client;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};
use tracing::Instrument;

use super::decide::{self, CondSpec, Decider, Desired};
use super::{secs, Identity, Inputs, NodeError, NodeMetrics, NodeSettings};
use crate::kube::{keys, FIELD_MANAGER};
use crate::shutdown::Shutdown;
use crate::source::Backoff;

/// Read-modify-write attempts on 409 before backing off.
const MAX_CONFLICTS: u32 = 5;

/// Publish until `shutdown`.
pub(super) async fn run(
    client: Client,
    id: Identity,
    settings: NodeSettings,
    inputs: Inputs,
    metrics: NodeMetrics,
    shutdown: Shutdown,
) {
    let span = tracing::info_span!("node_publisher", node = %id.node_name);
    Publisher::new(client, id, settings, metrics, shutdown)
        .run(inputs)
        .instrument(span)
        .await;
}

/// Retry state of one kind of work (node sync, Lease renewal).
#[derive(Debug)]
struct Track {
    what: &'static str,
    backoff: Backoff,
    retry_at: Option<Instant>,
    failing: Option<(String, Instant)>,
}

/// A factor in [0.5, 1): each retry waits between half and all of its backoff delay, so a fleet
/// of agents that lost the API server at the same moment does not come back at the same moment.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS once per process and stepped for each new instance.
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    0.5 + (bits >> 11) as f64 / (1u64 << 53) as f64 * 0.5
}

impl Track {
    fn new(what: &'static str, s: &NodeSettings) -> Track {
        Track::capped(what, s, s.retry_max_secs)
    }

    /// A track whose retries wait at most `max_secs` (or the settings' maximum, if lower).
    fn capped(what: &'static str, s: &NodeSettings, max_secs: f64) -> Track {
        let initial = s.retry_initial_secs.min(max_secs);
        Track {
            what,
            backoff: Backoff::new(secs(initial), secs(s.retry_max_secs.min(max_secs))),
            retry_at: None,
            failing: None,
        }
    }

    fn ready(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }

    /// A success. Returns whether it ends a run of failures.
    fn ok(&mut self, node: &str) -> bool {
        self.backoff.reset();
        self.retry_at = None;
        let Some((error, since)) = self.failing.take() else {
            return false;
        };
        tracing::info!(
            node,
            what = self.what,
            failed_for_secs = since.elapsed().as_secs_f64(),
            previous_error = %error,
            "kubernetes {} recovered", self.what
        );
        true
    }

    /// The API server answers again (the other track recovered): retry now rather than at the
    /// end of a backoff delay that was sized for an outage that is over. The backoff itself is
    /// kept, so an error of this request's own (403, 422) still backs off.
    fn retry_now(&mut self) {
        self.retry_at = None;
    }

    fn fail(&mut self, node: &str, e: &NodeError) {
        let delay = self.backoff.next_delay().mul_f64(jitter());
        self.retry_at = Some(Instant::now() + delay);
        if self.failing.is_none() {
            tracing::warn!(
                node,
                what = self.what,
                error = %e,
                "kubernetes {} failing; retrying with capped backoff (logged again when it recovers)",
                self.what
            );
            self.failing = Some((e.to_string(), Instant::now()));
        } else {
            tracing::debug!(node, what = self.what, error = %e, retry_in_secs = delay.as_secs_f64(), "retrying");
        }
    }
}

struct Publisher {
    nodes: Api<DynamicObject>,
    leases: Api<Lease>,
    id: Identity,
    settings: NodeSettings,
    metrics: NodeMetrics,
    shutdown: Shutdown,
    decider: Decider,
    /// The last desired state fully published.
    synced: Option<Desired>,
    applied_meta: Option<(BTreeMap<String, String>, BTreeMap<String, String>)>,
    applied_conditions: Option<Vec<CondSpec>>,
    /// Whether the node has been read once (to adopt a taint left by a previous run).
    seen_node: bool,
    lease: Option<Lease>,
    next_resync: Instant,
    next_lease: Instant,
    node_track: Track,
    lease_track: Track,
    /// Shutting down: the last Lease renewal carries the graceful-stop marker, and requests
    /// are no longer cut short by the shutdown.
    stopping: bool,
}

fn classify(e: &::kube::Error) -> &'static str {
    match e {
        ::kube::Error::Api(s) => match s.code {
            409 => "conflict",
            404 => "not_found",
            500..=599 => "server_error",
            _ => "client_error",
        },
        ::kube::Error::HyperError(_) | ::kube::Error::Service(_) => "transport",
        _ => "client_error",
    }
}

fn hint(e: &::kube::Error) -> &'static str {
    match e {
        ::kube::Error::Api(s) if s.code == 401 => {
            "; check the credentials (service account token or kubeconfig user)"
        }
        ::kube::Error::Api(s) if s.code == 403 => {
            "; grant the agent's service account the edgeplex-agent ClusterRole (manifests/)"
        }
        ::kube::Error::Api(s) if s.code >= 500 => "; the API server is failing",
        ::kube::Error::HyperError(_) | ::kube::Error::Service(_) => {
            "; the API server is unreachable"
        }
        _ => "",
    }
}

fn taints_of(node: &DynamicObject) -> Vec<Value> {
    node.data
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

impl Publisher {
    fn new(
        client: Client,
        id: Identity,
        settings: NodeSettings,
        metrics: NodeMetrics,
        shutdown: Shutdown,
    ) -> Publisher {
        let now = Instant::now();
        Publisher {
            nodes: Api::all_with(client.clone(), &ApiResource::erase::<Node>(&())),
            leases: Api::namespaced(client, &id.lease_namespace),
            decider: Decider::new(settings.rules()),
            node_track: Track::new("node sync", &settings),
            // The heartbeat is the liveness signal: never retried less often than it is due.
            lease_track: Track::capped("lease renewal", &settings, settings.heartbeat_secs),
            id,
            settings,
            metrics,
            shutdown,
            synced: None,
            applied_meta: None,
            applied_conditions: None,
            seen_node: false,
            lease: None,
            next_resync: now,
            next_lease: now,
            stopping: false,
        }
    }

    async fn run(mut self, inputs: Inputs) {
        tracing::info!(
            node = %self.id.node_name,
            lease = %format!("{}/{}", self.id.lease_namespace, self.id.node_name),
            "publishing node state to kubernetes"
        );
        let poll = secs(self.settings.poll_interval_secs);
        while !self.shutdown.requested() {
            let now = Instant::now();
            let desired = self.decider.decide(&inputs.observe(), now);
            let changed = self.synced.as_ref() != Some(&desired);
            if self.node_track.ready(now) && (changed || now >= self.next_resync) {
                match self.sync(desired).await {
                    Ok(published) => {
                        self.synced = Some(published);
                        self.next_resync = Instant::now() + secs(self.settings.resync_secs);
                        if self.node_track.ok(&self.id.node_name) {
                            self.lease_track.retry_now();
                        }
                        self.metrics
                            .synced(Timestamp::now().as_millisecond() as f64 / 1e3);
                    }
                    Err(NodeError::ShuttingDown) => break,
                    Err(e) => {
                        self.synced = None;
                        self.node_track.fail(&self.id.node_name, &e);
                    }
                }
            }
            if self.lease_track.ready(Instant::now()) && Instant::now() >= self.next_lease {
                match self.renew_lease().await {
                    Ok(()) => {
                        self.next_lease = Instant::now() + secs(self.settings.heartbeat_secs);
                        if self.lease_track.ok(&self.id.node_name) {
                            self.node_track.retry_now();
                        }
                    }
                    Err(NodeError::ShuttingDown) => break,
                    Err(e) => self.lease_track.fail(&self.id.node_name, &e),
                }
            }
            self.shutdown.sleep(poll).await;
        }
        self.mark_stopped().await;
        tracing::info!(node = %self.id.node_name, "node publisher stopped");
    }

    /// A graceful stop says so: one last renewal of the Lease carrying the annotation
    /// [`keys::STOPPED_ANNOTATION`], so the failover controller can tell this planned stop
    /// (rolling update, `snap refresh`, SIGTERM) from a crash. Bounded by one request timeout;
    /// skipped when this run never held its Lease.
    async fn mark_stopped(&mut self) {
        if self.lease.is_none() {
            return;
        }
        self.stopping = true;
        let timeout = self.id.request_timeout;
        match tokio::time::timeout(timeout, self.renew_lease()).await {
            Ok(Ok(())) => tracing::info!(
                node = %self.id.node_name,
                "marked the Lease {}: a graceful stop, not a crash",
                keys::STOPPED_ANNOTATION
            ),
            Ok(Err(e)) => {
                tracing::warn!(node = %self.id.node_name, error = %e, "cannot mark the Lease stopped; the controller will take this stop for a crash (it still does not evict a live node)")
            }
            Err(_) => {
                tracing::warn!(node = %self.id.node_name, "marking the Lease stopped timed out; the controller will take this stop for a crash (it still does not evict a live node)")
            }
        }
    }

    /// One request: timed out, raced against shutdown, counted.
    async fn call<T>(
        &self,
        verb: &'static str,
        what: impl FnOnce() -> String,
        fut: impl Future<Output = Result<T, ::kube::Error>>,
    ) -> Result<T, NodeError> {
        let timeout = self.id.request_timeout;
        let result = if self.stopping {
            tokio::time::timeout(timeout, fut).await
        } else {
            tokio::select! {
                r = tokio::time::timeout(timeout, fut) => r,
                _ = self.shutdown.cancelled() => return Err(NodeError::ShuttingDown),
            }
        };
        match result {
            Ok(Ok(v)) => {
                self.metrics.request(verb, "ok");
                Ok(v)
            }
            Ok(Err(e)) => {
                self.metrics.request(verb, classify(&e));
                Err(NodeError::Api {
                    what: what(),
                    hint: hint(&e),
                    source: e,
                })
            }
            Err(_) => {
                self.metrics.request(verb, "timeout");
                Err(NodeError::Timeout {
                    what: what(),
                    secs: timeout.as_secs_f64(),
                })
            }
        }
    }

    async fn get_node(&self) -> Result<DynamicObject, NodeError> {
        let name = &self.id.node_name;
        let r = self
            .call("get", || format!("get node {name}"), self.nodes.get(name))
            .await;
        match r {
            Err(e) if e.status_code() == Some(404) => {
                Err(NodeError::NodeNotFound { node: name.clone() })
            }
            r => r,
        }
    }

    /// Make the node show `desired`; returns what was published (with an adopted taint).
    async fn sync(&mut self, mut desired: Desired) -> Result<Desired, NodeError> {
        let mut node = self.get_node().await?;
        let name = self.id.node_name.clone();
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let annotations = node.metadata.annotations.clone().unwrap_or_default();
        self.metrics
            .set_active(labels.get(keys::ACTIVE).map(String::as_str) == Some("true"));
        let role = labels.get(keys::ROLE).map(String::as_str);
        if self.metrics.set_role(role) {
            tracing::info!(node = %self.id.node_name, role = role.unwrap_or("(none)"), "node role (edgeplex.io/role, set by the admin)");
        }
        if !self.seen_node {
            self.seen_node = true;
            if let Some(v) = decide::failover_taint(&taints_of(&node)) {
                if decide::is_agent_taint_value(&v) && desired.taint.is_none() {
                    // Left by a previous run: hold it down rather than lift it at once.
                    self.decider.adopt_taint(&v, Instant::now());
                    desired.taint = Some(if v == decide::TAINT_DEVICE {
                        decide::TAINT_DEVICE
                    } else {
                        decide::TAINT_BATTERY
                    });
                }
            }
        }

        let meta = (desired.labels.clone(), desired.annotations.clone());
        if self.applied_meta.as_ref() != Some(&meta)
            || !decide::meta_matches(&desired, &labels, &annotations)
        {
            // Empty maps are left out: applying without a key releases it.
            let mut metadata = json!({ "name": name });
            if !meta.0.is_empty() {
                metadata["labels"] = json!(meta.0);
            }
            if !meta.1.is_empty() {
                metadata["annotations"] = json!(meta.1);
            }
            let patch = json!({"apiVersion": "v1", "kind": "Node", "metadata": metadata});
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            // The reply is the node as now stored: the taint edit below starts from it, so it
            // does not run into a 409 caused by our own write.
            node = self
                .call(
                    "apply",
                    || format!("apply labels and annotations of node {name}"),
                    self.nodes.patch(&name, &pp, &Patch::Apply(&patch)),
                )
                .await?;
            self.applied_meta = Some(meta);
        }

        let current: Vec<Value> = node
            .data
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if self.applied_conditions.as_ref() != Some(&desired.conditions)
            || !decide::conditions_match(&desired.conditions, &current)
        {
            let conditions =
                decide::conditions_to_apply(&desired.conditions, &current, Timestamp::now());
            let patch = json!({
                "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                "status": {"conditions": conditions},
            });
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            node = self
                .call(
                    "apply",
                    || format!("apply conditions of node {name}"),
                    self.nodes.patch_status(&name, &pp, &Patch::Apply(&patch)),
                )
                .await?;
            for c in &desired.conditions {
                let before = current.iter().find(|x| x["type"] == c.type_);
                let was = before.map(|x| x["status"] == "True");
                if was != Some(c.status) {
                    tracing::info!(node = %name, condition = c.type_, status = c.status, reason = %c.reason, message = %c.message, "node condition");
                }
            }
            self.applied_conditions = Some(desired.conditions.clone());
        }

        self.reconcile_taint(node, desired.taint).await?;
        Ok(desired)
    }

    /// Add or remove our taint by read-modify-write with the node's resourceVersion, keeping
    /// every other taint; re-read and retry on 409.
    async fn reconcile_taint(
        &mut self,
        mut node: DynamicObject,
        want: Option<&'static str>,
    ) -> Result<(), NodeError> {
        let name = self.id.node_name.clone();
        for _ in 0..MAX_CONFLICTS {
            let taints = taints_of(&node);
            let Some(new) = decide::edit_taints(&taints, want, Timestamp::now()) else {
                self.metrics
                    .set_tainted(decide::failover_taint(&taints).is_some());
                return Ok(());
            };
            let mut body = node.clone();
            // Without managedFields the apiserver keeps the live ones.
            body.metadata.managed_fields = None;
            if !body.data["spec"].is_object() {
                body.data["spec"] = json!({});
            }
            if new.is_empty() {
                if let Some(spec) = body.data["spec"].as_object_mut() {
                    spec.remove("taints");
                }
            } else {
                body.data["spec"]["taints"] = Value::Array(new.clone());
            }
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            let r = self
                .call(
                    "replace",
                    || format!("replace node {name} to change its taints"),
                    self.nodes.replace(&name, &pp, &body),
                )
                .await;
            match r {
                Ok(_) => {
                    let tainted = decide::failover_taint(&new).is_some();
                    self.metrics.set_tainted(tainted);
                    if tainted {
                        tracing::warn!(node = %name, cause = want.unwrap_or_default(), "failover taint added: pods that do not tolerate edgeplex.io/failover leave this node now");
                    } else {
                        tracing::info!(node = %name, hold_down_secs = self.settings.hold_down_secs, "failover taint removed after its cause cleared");
                    }
                    return Ok(());
                }
                Err(e) if e.status_code() == Some(409) => {
                    tracing::debug!(node = %name, "node changed since read; re-reading before changing taints");
                    node = self.get_node().await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(NodeError::Conflicts {
            what: format!("change the taints of node {name}"),
            attempts: MAX_CONFLICTS,
        })
    }

    fn fresh_lease(&self, now: &MicroTime) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.id.node_name.clone()),
                namespace: Some(self.id.lease_namespace.clone()),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_owned(),
                        "edgeplex".to_owned(),
                    )]
                    .into_iter()
                    .collect(),
                ),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.id.node_name.clone()),
                lease_duration_seconds: Some(self.settings.lease_duration_secs as i32),
                acquire_time: Some(now.clone()),
                renew_time: Some(now.clone()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        }
    }

    /// Renew the Lease: PUT with the resourceVersion we hold; create it if missing; re-read
    /// it on 409.
    async fn renew_lease(&mut self) -> Result<(), NodeError> {
        let (ns, name) = (self.id.lease_namespace.clone(), self.id.node_name.clone());
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        for _ in 0..3 {
            if self.lease.is_none() {
                self.lease = self
                    .call(
                        "get",
                        || format!("get lease {ns}/{name}"),
                        self.leases.get_opt(&name),
                    )
                    .await?;
            }
            let now = MicroTime(Timestamp::now());
            // Kept if the write is cut short by the shutdown, for the graceful-stop marker.
            let held = self.lease.clone();
            let result = match self.lease.take() {
                // Stopping: never create a Lease just to say so.
                None if self.stopping => return Ok(()),
                None => {
                    let r = self
                        .call(
                            "create",
                            || format!("create lease {ns}/{name}"),
                            self.leases.create(&pp, &self.fresh_lease(&now)),
                        )
                        .await;
                    if let Err(NodeError::Api {
                        source: ::kube::Error::Api(s),
                        ..
                    }) = &r
                    {
                        if s.code == 404
                            && s.details.as_ref().is_some_and(|d| d.kind == "namespaces")
                        {
                            return Err(NodeError::NamespaceNotFound { namespace: ns });
                        }
                    }
                    r
                }
                Some(mut lease) => {
                    let spec = lease.spec.get_or_insert_with(Default::default);
                    if spec.holder_identity.as_deref() != Some(name.as_str()) {
                        spec.holder_identity = Some(name.clone());
                        spec.acquire_time = Some(now.clone());
                        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                    }
                    spec.renew_time = Some(now.clone());
                    spec.lease_duration_seconds = Some(self.settings.lease_duration_secs as i32);
                    lease.metadata.managed_fields = None;
                    // The graceful-stop marker: set by the last renewal of a stopping agent,
                    // removed by the first renewal of the next run.
                    let mut annotations = lease.metadata.annotations.take().unwrap_or_default();
                    if self.stopping {
                        annotations.insert(keys::STOPPED_ANNOTATION.to_owned(), now.0.to_string());
                    } else {
                        annotations.remove(keys::STOPPED_ANNOTATION);
                    }
                    lease.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
                    self.call(
                        "replace",
                        || format!("renew lease {ns}/{name}"),
                        self.leases.replace(&name, &pp, &lease),
                    )
                    .await
                }
            };
            match result {
                Ok(lease) => {
                    self.lease = Some(lease);
                    return Ok(());
                }
                Err(NodeError::ShuttingDown) => {
                    self.lease = held;
                    return Err(NodeError::ShuttingDown);
                }
                // Someone else wrote it (409), or it was deleted (404): re-read and retry.
                Err(e) if matches!(e.status_code(), Some(409) | Some(404)) => {
                    self.lease = None;
                }
                Err(e) => return Err(e),
            }
        }
        Err(NodeError::Conflicts {
            what: format!("renew lease {ns}/{name}"),
            attempts: 3,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_track_backs_off_doubling_to_its_cap_and_resets() {
        let s = NodeSettings {
            retry_initial_secs: 1.0,
            retry_max_secs: 4.0,
            ..NodeSettings::default()
        };
        let mut t = Track::new("node sync", &s);
        let e = NodeError::NodeNotFound { node: "n".into() };
        let start = Instant::now();
        assert!(t.ready(start));
        let mut gaps = Vec::new();
        for _ in 0..4 {
            let before = Instant::now();
            t.fail("n", &e);
            let at = t.retry_at.expect("a retry time");
            assert!(!t.ready(before), "not before the backoff");
            gaps.push(at.duration_since(before).as_secs_f64());
        }
        // Each gap is the doubling delay (capped) times a jitter in [0.5, 1).
        for (gap, full) in gaps.iter().zip([1.0, 2.0, 4.0, 4.0]) {
            assert!(*gap >= full * 0.5 - 0.01 && *gap < full + 0.01, "{gaps:?}");
        }
        let (_, since) = t.failing.clone().expect("failing");
        assert!(
            since <= start + Duration::from_secs(1),
            "the failure start is kept"
        );
        assert!(t.ok("n"), "a recovery");
        assert!(t.failing.is_none() && t.retry_at.is_none());
        assert!(!t.ok("n"), "a success is a recovery only after failures");
        t.fail("n", &e);
        let at = t.retry_at.expect("a retry time");
        assert!(
            at.duration_since(Instant::now()) <= Duration::from_secs(1),
            "reset"
        );
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let js: Vec<f64> = (0..1000).map(|_| jitter()).collect();
        assert!(js.iter().all(|j| (0.5..1.0).contains(j)));
        let distinct: std::collections::BTreeSet<u64> = js.iter().map(|j| j.to_bits()).collect();
        assert!(distinct.len() > 990, "jitter repeats: {}", distinct.len());
        let mean = js.iter().sum::<f64>() / js.len() as f64;
        assert!((0.7..0.8).contains(&mean), "mean {mean}");
    }

    #[test]
    fn the_lease_track_retries_at_least_every_heartbeat() {
        let s = NodeSettings {
            heartbeat_secs: 2.0,
            retry_initial_secs: 0.5,
            retry_max_secs: 30.0,
            ..NodeSettings::default()
        };
        let mut t = Track::capped("lease renewal", &s, s.heartbeat_secs);
        let e = NodeError::NodeNotFound { node: "n".into() };
        for _ in 0..10 {
            let before = Instant::now();
            t.fail("n", &e);
            let wait = t.retry_at.expect("retry").duration_since(before);
            assert!(wait <= Duration::from_secs(2), "{wait:?}");
        }
        // Another request got through: retry now, but keep backing off on our own errors.
        t.retry_now();
        assert!(t.ready(Instant::now()));
        let before = Instant::now();
        t.fail("n", &e);
        assert!(t.retry_at.expect("retry").duration_since(before) >= Duration::from_millis(999));
    }

    #[test]
    fn results_are_classified_for_the_metric() {
        let api = |code: u16| {
            ::kube::Error::Api(Box::new(
                ::kube::core::Status::failure("x", "y").with_code(code),
            ))
        };
        assert_eq!(classify(&api(409)), "conflict");
        assert_eq!(classify(&api(404)), "not_found");
        assert_eq!(classify(&api(503)), "server_error");
        assert_eq!(classify(&api(403)), "client_error");
        assert!(hint(&api(403)).contains("ClusterRole"));
    }
}

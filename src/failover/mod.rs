//! The failover controller (`edgeplex failover`): keeps one node per device group labelled
//! `edgeplex.io/active=true`, and moves that label to a healthy backup when the active node is
//! critical, failing, tainted or dead.
//!
//! It owns exactly two things on other nodes: the label `edgeplex.io/active` (written under field
//! manager `edgeplex-failover`) and, on a node it declared dead, the taint
//! `edgeplex.io/failover=node-dead:NoExecute`, which it removes again once the node has renewed
//! its Lease for `untaint_after_secs`. It must not touch anything else: labels, conditions and
//! the agent's own failover taint (values `battery-critical`, `device-failure`) belong to the
//! agent on each node (ARCHITECTURE.md: the agent writes only its own Node and Lease).
//!
//! # How it decides
//!
//! The decision is the pure function [`decide::decide`]; see that module for the rules. In
//! short: a node is *dead* when its agent's heartbeat Lease has not changed for the Lease's
//! `leaseDurationSeconds` **and** the node gives no sign of life either: its kubelet's own Lease
//! (`kube-node-lease/<node>`) has not changed for its duration, or is absent, or `Ready` is not
//! `True`. Every such duration is measured between the controller's own observations (never by
//! comparing `renewTime` with a clock, so clock skew cannot fake or hide a death). An agent that
//! stops on a live node (rolling update, `snap refresh`, crash) is *down*, not dead: no taint,
//! no eviction, `active` stays; a graceful stop marks its Lease `edgeplex.io/stopped`, which
//! tells it from a crash (docs/failover.md). The active
//! node hands over when it is dead, `BatteryCritical=True`, `DeviceFailure=True` or tainted
//! `edgeplex.io/failover`; it hands over only to a node that is healthy (Lease seen renewing,
//! Ready, schedulable, untainted, no critical condition), primaries (`edgeplex.io/role=primary`)
//! before backups before nodes without a role. A healthy active node is never moved, so a
//! recovered primary does not take `active` back. A dead node that handed over is tainted, so
//! its pods are evicted at once instead of after the default `tolerationSeconds` of 300 s. When
//! no node is healthy nothing moves; a `NoHealthyBackup` Event says so, and the gauge
//! `edgeplex_failover_groups_without_healthy_backup` counts groups without a spare at all times.
//!
//! # Running it
//!
//! A Deployment of two replicas (or one) in namespace `edgeplex`, with leader election over the
//! Lease `edgeplex-failover` ([`leader`]): one replica acts, the other stands by and makes no
//! request but its look at the leader Lease. The leader follows the group's Nodes and the
//! Leases through watches (kube-runtime `watcher` and `reflector`), never by listing the
//! cluster periodically; a new leader judges every Lease afresh. SIGTERM stops acting and
//! releases the Lease, so a standby takes over within one renew interval. The service account
//! needs: nodes get/list/watch/patch; leases list/watch in the agents' namespace and in
//! `kube-node-lease`; leases get/create/update on its own Lease; events create in its namespace.
//!
//! # The workload side
//!
//! The controller only moves a label; the scheduler and the taint manager move the pods. A
//! workload that must follow the active node of group `cam-a`:
//!
//! ```yaml
//! apiVersion: apps/v1
//! kind: Deployment            # or a ReplicaSet
//! metadata: { name: detector }
//! spec:
//!   replicas: 1
//!   selector: { matchLabels: { app: detector } }
//!   template:
//!     metadata: { labels: { app: detector } }
//!     spec:
//!       nodeSelector:
//!         edgeplex.io/group: cam-a
//!         edgeplex.io/active: "true"
//!       # NO toleration for edgeplex.io/failover: the taint must evict this pod at once.
//!       # (Keep the default not-ready/unreachable tolerations; the failover taint is faster.)
//!       containers:
//!         - name: detector
//!           image: registry.example/detector:1.4.2   # pre-pulled on the backup nodes
//!           imagePullPolicy: IfNotPresent
//! ```
//!
//! - **The nodeSelector on group *and* active** makes the replacement pod schedulable only on
//!   the newly activated node.
//! - **No toleration for `edgeplex.io/failover`**: when the node is tainted (by its agent before
//!   the battery runs out, or by this controller when the node is dead), the pod is evicted
//!   immediately and its ReplicaSet creates the replacement.
//! - **Pre-pull the image on every backup** (for example a DaemonSet on the group that runs the
//!   image with a sleep, or `ctr images pull` at provisioning), or the handover waits for a
//!   download over the edge uplink.
//! - Removing `active` from a node does not by itself evict anything (`nodeSelector` is
//!   IgnoredDuringExecution); the taint does.

mod controller;
pub mod decide;
pub mod leader;
pub mod metrics;
pub mod observe;
mod settings;

pub use controller::Controller;
pub use metrics::FailoverMetrics;
pub use settings::FailoverSettings;

use crate::shutdown::Shutdown;

/// Label naming a node's device group.
pub const GROUP_LABEL: &str = crate::kube::keys::GROUP;
/// Label on the active node of a group, value `true`; written only by this controller.
pub const ACTIVE_LABEL: &str = crate::kube::keys::ACTIVE;
/// Admin-set label: `primary` or `backup`.
pub const ROLE_LABEL: &str = crate::kube::keys::ROLE;
/// Taint key that makes a node hand over (effect `NoExecute`).
pub const FAILOVER_TAINT: &str = crate::kube::keys::FAILOVER_TAINT;
/// Node condition type set by the agent when its battery is critical.
pub const BATTERY_CRITICAL: &str = crate::kube::keys::BATTERY_CRITICAL;
/// Node condition type set by the agent when a critical device failed.
pub const DEVICE_FAILURE: &str = crate::kube::keys::DEVICE_FAILURE;
/// Field manager (and User-Agent) of every write the controller makes.
pub const FIELD_MANAGER: &str = crate::kube::FAILOVER_FIELD_MANAGER;

/// Errors that stop `edgeplex failover`.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    /// The tokio runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The metrics registry refused a metric (a bug).
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The metrics endpoint could not listen.
    #[error("cannot serve metrics on {addr}: {source}; pick another --metrics-listen or \"\" to disable")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Kubernetes client could not be built.
    #[error(transparent)]
    Kube(#[from] crate::kube::KubeError),
    /// The settings name no cluster (mode `auto` found neither a service account nor a
    /// kubeconfig).
    #[error("no Kubernetes cluster found: run in-cluster, or pass --kubeconfig")]
    NoCluster,
}

/// `edgeplex failover`: run the controller with `settings`, reaching the cluster as `kube` says,
/// until SIGTERM or SIGINT.
pub fn run(
    settings: &FailoverSettings,
    kube: &crate::kube::KubeSettings,
) -> Result<(), FailoverError> {
    let settings = settings.clone();
    let shutdown = Shutdown::install().map_err(FailoverError::Signals)?;
    let registry = crate::metrics::new_registry()?;
    let metrics = FailoverMetrics::register(&registry).map_err(FailoverError::Metrics)?;
    if let Some(addr) = settings.metrics_addr() {
        let endpoint = crate::http::Endpoint {
            registry: registry.clone(),
            refresh: Box::new(|| {}),
            readiness: Box::new(|| crate::http::Readiness::Ready),
        };
        let bound = crate::http::spawn(addr, endpoint, shutdown.clone())
            .map_err(|source| FailoverError::Listen { addr, source })?;
        tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(FailoverError::Runtime)?;
    runtime.block_on(async {
        let client = crate::kube::connect_as(kube, FIELD_MANAGER)
            .await?
            .ok_or(FailoverError::NoCluster)?;
        let identity = settings.resolved_identity();
        Controller::new(client, settings, kube.clone(), identity, metrics)
            .run(shutdown)
            .await;
        Ok::<(), FailoverError>(())
    })
}

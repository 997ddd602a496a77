//! The node publisher's metrics, registered into the registry it is handed.

use prometheus::{Gauge, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// `edgeplex_kube_*` and `edgeplex_node_*` metrics. Cheap to clone (shared counters).
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    requests: IntCounterVec,
    last_sync: Gauge,
    tainted: IntGauge,
    active: IntGauge,
    role: IntGaugeVec,
}

/// Every `verb` label value.
const VERBS: &[&str] = &["get", "create", "apply", "replace"];

impl NodeMetrics {
    /// Register the metrics into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<NodeMetrics> {
        let requests = IntCounterVec::new(
            Opts::new(
                "edgeplex_kube_requests_total",
                "Kubernetes API requests by the node publisher, by verb and result (ok, conflict, not_found, client_error, server_error, timeout, transport).",
            ),
            &["verb", "result"],
        )?;
        let last_sync = Gauge::new(
            "edgeplex_kube_last_sync_timestamp_seconds",
            "Unix time the node's labels, conditions and taint last matched what the agent asserts.",
        )?;
        let tainted = IntGauge::new(
            "edgeplex_node_failover_tainted",
            "1 while this node carries the edgeplex.io/failover NoExecute taint.",
        )?;
        let active = IntGauge::new(
            "edgeplex_node_active",
            "1 while this node carries edgeplex.io/active=true (set by the failover controller).",
        )?;
        let role = IntGaugeVec::new(
            Opts::new(
                "edgeplex_node_role_info",
                "1 for this node's edgeplex.io/role (set by the admin: primary, backup; empty when unset).",
            ),
            &["role"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(role.clone()))?;
        registry.register(Box::new(last_sync.clone()))?;
        registry.register(Box::new(tainted.clone()))?;
        registry.register(Box::new(active.clone()))?;
        // Make the common series exist from the start, so rate() works from the first failure.
        for verb in VERBS {
            requests.with_label_values(&[verb, "ok"]);
        }
        Ok(NodeMetrics {
            requests,
            last_sync,
            tainted,
            active,
            role,
        })
    }

    /// Count one request.
    pub fn request(&self, verb: &str, result: &str) {
        self.requests.with_label_values(&[verb, result]).inc();
    }

    /// Requests counted so far with `verb` and `result`.
    pub fn requests(&self, verb: &str, result: &str) -> u64 {
        self.requests.with_label_values(&[verb, result]).get()
    }

    /// The node matched what the agent asserts at Unix time `secs`.
    pub fn synced(&self, secs: f64) {
        self.last_sync.set(secs);
    }

    /// Whether the node carries the failover taint.
    pub fn set_tainted(&self, tainted: bool) {
        self.tainted.set(i64::from(tainted));
    }

    /// Whether the node is active in its group.
    pub fn set_active(&self, active: bool) {
        self.active.set(i64::from(active));
    }

    /// The node's `edgeplex.io/role` label (`None`: unset). Only the current value has a series.
    /// Returns whether the role changed (or was set for the first time).
    pub fn set_role(&self, role: Option<&str>) -> bool {
        let role = role.unwrap_or_default();
        if self.role.with_label_values(&[role]).get() == 1 {
            return false;
        }
        self.role.reset();
        self.role.with_label_values(&[role]).set(1);
        true
    }
}

//! The controller's metrics, registered into a registry the caller hands in (no globals).
//!
//! The names are a contract: alert rules and the Grafana dashboard use them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::decide::{AgentDown, Reason};

/// The failover controller's metrics.
#[derive(Debug)]
pub struct FailoverMetrics {
    handovers: IntCounterVec,
    active_node: IntGaugeVec,
    without_backup: IntGauge,
    leader: IntGauge,
    api_errors: IntCounterVec,
    agents_down: IntGaugeVec,
    /// The `active_node` series currently exported, to remove stale ones.
    exported: Mutex<BTreeMap<String, String>>,
}

impl FailoverMetrics {
    /// Register the metrics into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<FailoverMetrics> {
        let handovers = IntCounterVec::new(
            Opts::new(
                "edgeplex_failover_handovers_total",
                "Moves of edgeplex.io/active to another node of the group, by reason.",
            ),
            &["group", "reason"],
        )?;
        let active_node = IntGaugeVec::new(
            Opts::new(
                "edgeplex_failover_active_node",
                "1 for the node labelled edgeplex.io/active=true in each group (leader only).",
            ),
            &["group", "node"],
        )?;
        let without_backup = IntGauge::new(
            "edgeplex_failover_groups_without_healthy_backup",
            "Groups in which no node besides the active one could take over (leader only).",
        )?;
        let leader = IntGauge::new(
            "edgeplex_failover_leader",
            "1 while this controller instance holds the leader Lease.",
        )?;
        let api_errors = IntCounterVec::new(
            Opts::new(
                "edgeplex_failover_api_errors_total",
                "Kubernetes API requests of the controller that failed, by operation.",
            ),
            &["op"],
        )?;
        let agents_down = IntGaugeVec::new(
            Opts::new(
                "edgeplex_failover_agents_down",
                "Group members whose agent is down on a node that is not dead (leader only), by state: stopped (graceful stop), crashed, not_started.",
            ),
            &["state"],
        )?;
        registry.register(Box::new(agents_down.clone()))?;
        registry.register(Box::new(handovers.clone()))?;
        registry.register(Box::new(active_node.clone()))?;
        registry.register(Box::new(without_backup.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(api_errors.clone()))?;
        Ok(FailoverMetrics {
            handovers,
            active_node,
            without_backup,
            leader,
            api_errors,
            agents_down,
            exported: Mutex::new(BTreeMap::new()),
        })
    }

    /// Count one handover.
    pub fn handover(&self, group: &str, reason: Reason) {
        self.handovers
            .with_label_values(&[group, reason.as_str()])
            .inc();
    }

    /// Count one failed API request.
    pub fn api_error(&self, op: &str) {
        self.api_errors.with_label_values(&[op]).inc();
    }

    /// Set whether this instance leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Export the active node of each group and the count of groups without a healthy backup.
    pub fn set_groups(&self, active: &BTreeMap<String, Option<String>>, without_backup: usize) {
        let mut exported = self.exported.lock().unwrap_or_else(|e| e.into_inner());
        let now: BTreeMap<String, String> = active
            .iter()
            .filter_map(|(g, n)| n.as_ref().map(|n| (g.clone(), n.clone())))
            .collect();
        for (g, n) in exported.iter() {
            if now.get(g) != Some(n) {
                let _ = self.active_node.remove_label_values(&[g, n]);
            }
        }
        for (g, n) in &now {
            self.active_node.with_label_values(&[g, n]).set(1);
        }
        *exported = now;
        self.without_backup
            .set(i64::try_from(without_backup).unwrap_or(i64::MAX));
    }

    /// Clear what only the leader reports (on losing or never having leadership).
    /// Set `edgeplex_failover_agents_down` from the agents down now.
    pub fn set_agents_down<'a>(&self, down: impl IntoIterator<Item = &'a AgentDown>) {
        let mut counts: BTreeMap<AgentDown, i64> = [
            AgentDown::Stopped,
            AgentDown::Crashed,
            AgentDown::NotStarted,
        ]
        .into_iter()
        .map(|s| (s, 0))
        .collect();
        for d in down {
            *counts.entry(*d).or_default() += 1;
        }
        for (s, n) in counts {
            self.agents_down.with_label_values(&[s.as_str()]).set(n);
        }
    }

    pub fn clear_groups(&self) {
        self.set_groups(&BTreeMap::new(), 0);
        self.set_agents_down([]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_stale_series() {
        let registry = Registry::new();
        let m = FailoverMetrics::register(&registry).unwrap();
        m.set_leader(true);
        m.handover("cam", Reason::BatteryCritical);
        let mut active = BTreeMap::new();
        active.insert("cam".to_owned(), Some("n1".to_owned()));
        active.insert("gps".to_owned(), None);
        m.set_groups(&active, 1);
        let text = crate::metrics::encode(&registry);
        assert!(text.contains("edgeplex_failover_leader 1"), "{text}");
        assert!(text.contains(
            "edgeplex_failover_handovers_total{group=\"cam\",reason=\"battery_critical\"} 1"
        ));
        assert!(text.contains("edgeplex_failover_active_node{group=\"cam\",node=\"n1\"} 1"));
        assert!(text.contains("edgeplex_failover_groups_without_healthy_backup 1"));
        active.insert("cam".to_owned(), Some("n2".to_owned()));
        m.set_groups(&active, 0);
        let text = crate::metrics::encode(&registry);
        assert!(!text.contains("node=\"n1\""), "{text}");
        assert!(text.contains("edgeplex_failover_active_node{group=\"cam\",node=\"n2\"} 1"));
        m.clear_groups();
        let text = crate::metrics::encode(&registry);
        assert!(!text.contains("node=\"n2\""), "{text}");
        assert!(text.contains("edgeplex_failover_groups_without_healthy_backup 0"));
    }
}

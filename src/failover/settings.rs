//! Settings of `edgeplex failover`: the `[failover]` section of the configuration, loaded by
//! the same loader as the agent's (file < `EDGEPLEX_*` environment < flags), with `[kube]` and
//! `[log]` shared with the agent.

use serde::Deserialize;
use std::net::SocketAddr;

use crate::settings::check_secs;
use crate::settings::values::Listen;

/// `[failover]`: the controller's settings. Most keys also have a flag (see [`FailoverArgs`]).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverSettings {
    /// Namespace of the leader Lease and of the Events the controller records.
    pub namespace: String,
    /// Name of the leader-election Lease.
    pub lease_name: String,
    /// This replica's identity in the election; empty means `$POD_NAME`, else hostname-pid.
    pub identity: String,
    /// `leaseDurationSeconds` of the leader Lease: a standby takes over after the Lease has not
    /// changed for this long. Whole seconds.
    pub lease_duration_secs: f64,
    /// How often the leader renews and standbys look at the leader Lease.
    pub renew_interval_secs: f64,
    /// The leader stops acting when it has not renewed for this long; below the Lease duration.
    pub renew_deadline_secs: f64,
    /// Duration assumed for an agent Lease without `leaseDurationSeconds`, and for a node whose
    /// Lease is missing. The agents' Leases are in `kube.lease_namespace`.
    pub agent_lease_duration_secs: f64,
    /// How often the leader decides again from what it watches (no request), besides deciding
    /// on every change it is told of.
    pub poll_interval_secs: f64,
    /// Remove the taint the controller put on a dead node once the node's Lease has been seen
    /// renewing for this long; 0 keeps it until an admin removes it.
    pub untaint_after_secs: f64,
    /// Listen address of the controller's `/metrics`, `/healthz`, `/readyz`; `""` disables it.
    pub metrics_listen: Listen,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        FailoverSettings {
            namespace: "edgeplex".into(),
            lease_name: "edgeplex-failover".into(),
            identity: String::new(),
            lease_duration_secs: 15.0,
            renew_interval_secs: 2.0,
            renew_deadline_secs: 10.0,
            agent_lease_duration_secs: 40.0,
            poll_interval_secs: 1.0,
            untaint_after_secs: 60.0,
            metrics_listen: Listen::on(([0, 0, 0, 0], 9465).into()),
        }
    }
}

/// Whether `s` is a valid DNS-1123 label or subdomain (namespace and object names).
fn dns_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

impl FailoverSettings {
    /// Check every value. Errors are one line naming the key as `<prefix>.<key>` (or just the
    /// key when `prefix` is empty), the bad value and what is allowed.
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        let key = |k: &str| {
            if prefix.is_empty() {
                k.to_owned()
            } else {
                format!("{prefix}.{k}")
            }
        };
        for (k, v, max) in [
            ("namespace", &self.namespace, 63),
            ("lease_name", &self.lease_name, 253),
        ] {
            if !dns_name(v, max) || (max == 63 && v.contains('.')) {
                return Err(format!(
                    "{} = {v:?} is not a valid name: use up to {max} characters of a-z, 0-9 and -, starting and ending with a letter or digit",
                    key(k)
                ));
            }
        }
        for (k, v, lo, hi) in [
            ("lease_duration_secs", self.lease_duration_secs, 1.0, 3600.0),
            (
                "renew_interval_secs",
                self.renew_interval_secs,
                0.01,
                3600.0,
            ),
            (
                "renew_deadline_secs",
                self.renew_deadline_secs,
                0.01,
                3600.0,
            ),
            (
                "agent_lease_duration_secs",
                self.agent_lease_duration_secs,
                1.0,
                3600.0,
            ),
            ("poll_interval_secs", self.poll_interval_secs, 0.01, 3600.0),
        ] {
            check_secs(&key(k), v, lo, hi)?;
        }
        if !(0.0..=86400.0).contains(&self.untaint_after_secs) {
            return Err(format!(
                "{} = {} is out of range: allowed 0 (never) to 86400 seconds",
                key("untaint_after_secs"),
                self.untaint_after_secs
            ));
        }
        if self.lease_duration_secs.fract() != 0.0 {
            return Err(format!(
                "{} = {} must be whole seconds (it is written as leaseDurationSeconds)",
                key("lease_duration_secs"),
                self.lease_duration_secs
            ));
        }
        if self.renew_deadline_secs >= self.lease_duration_secs {
            return Err(format!(
                "{} = {} must be below {} = {}, or two leaders could act at once",
                key("renew_deadline_secs"),
                self.renew_deadline_secs,
                key("lease_duration_secs"),
                self.lease_duration_secs
            ));
        }
        if self.renew_interval_secs >= self.renew_deadline_secs {
            return Err(format!(
                "{} = {} must be below {} = {}, or the leader steps down between renewals",
                key("renew_interval_secs"),
                self.renew_interval_secs,
                key("renew_deadline_secs"),
                self.renew_deadline_secs
            ));
        }
        if self.identity.len() > 253 {
            return Err(format!(
                "{} is {} characters long: at most 253",
                key("identity"),
                self.identity.len()
            ));
        }
        Ok(())
    }

    /// The metrics address, if the endpoint is enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listen.addr()
    }

    /// The election identity: the configured one, else `$POD_NAME`, else `hostname-pid`.
    pub fn resolved_identity(&self) -> String {
        if !self.identity.is_empty() {
            return self.identity.clone();
        }
        if let Ok(pod) = std::env::var("POD_NAME") {
            if !pod.is_empty() {
                return pod;
            }
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let host = if host.is_empty() { "edgeplex" } else { &host };
        format!("{host}-{}", std::process::id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        FailoverSettings::default().validate("failover").unwrap();
        let s = FailoverSettings::default();
        assert_eq!(s.metrics_addr(), "0.0.0.0:9465".parse().ok());
    }

    #[test]
    fn errors_name_the_key() {
        type Edit = fn(&mut FailoverSettings);
        let cases: [(Edit, &str); 8] = [
            (|s| s.namespace = "Bad_NS".into(), "failover.namespace"),
            (|s| s.lease_name = String::new(), "failover.lease_name"),
            (
                |s| s.poll_interval_secs = 0.0,
                "failover.poll_interval_secs",
            ),
            (
                |s| s.lease_duration_secs = 2.5,
                "failover.lease_duration_secs",
            ),
            (
                |s| s.renew_deadline_secs = 15.0,
                "failover.renew_deadline_secs",
            ),
            (
                |s| s.renew_interval_secs = 10.0,
                "failover.renew_interval_secs",
            ),
            (
                |s| s.agent_lease_duration_secs = f64::NAN,
                "failover.agent_lease_duration_secs",
            ),
            (
                |s| s.untaint_after_secs = -1.0,
                "failover.untaint_after_secs",
            ),
        ];
        for (make, key) in cases {
            let mut s = FailoverSettings::default();
            make(&mut s);
            let e = s.validate("failover").unwrap_err();
            assert!(e.starts_with(key), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn identity_falls_back() {
        let mut s = FailoverSettings {
            identity: "me".into(),
            ..FailoverSettings::default()
        };
        assert_eq!(s.resolved_identity(), "me");
        s.identity.clear();
        assert!(!s.resolved_identity().is_empty());
    }
}

//! Settings of `edgeplex failover`: the `[failover]` section of the configuration, loaded by
//! the same loader as the agent's (file < `EDGEPLEX_*` environment < flags), with `[kube]` and
//! `[log]` shared with the agent.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

use crate::config::values::Listen;
use crate::config::{Config, ConfigError, Overrides};
use crate::kube::KubeMode;
use crate::settings::check_secs;

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
    /// How often Nodes and agent Leases are read.
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

/// `edgeplex failover`: the configuration file (`[failover]`, `[kube]`, `[log]`), overridden by
/// `EDGEPLEX_*` variables, overridden by these flags, each a short form of a key.
#[derive(Debug, Clone, Default, Args)]
pub struct FailoverArgs {
    /// Configuration file: the agent's schema; this command reads `[failover]`, `[kube]` and
    /// `[log]` [default: /etc/edgeplex/edgeplex.toml, if present].
    #[arg(long, short = 'c', env = "EDGEPLEX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override any configuration key, e.g. `--set failover.poll_interval_secs=0.5`
    /// (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Kubeconfig to use (`kube.kubeconfig`; an error if it cannot be read) [default: the
    /// in-cluster service account, else $KUBECONFIG or ~/.kube/config].
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (`kube.context`) [default: its current context].
    #[arg(long)]
    pub kube_context: Option<String>,
    /// Namespace of the leader Lease and of recorded Events (`failover.namespace`)
    /// [default: edgeplex].
    #[arg(long)]
    pub namespace: Option<String>,
    /// Name of the leader-election Lease (`failover.lease_name`) [default: edgeplex-failover].
    #[arg(long)]
    pub lease_name: Option<String>,
    /// Identity of this replica in the election (`failover.identity`) [default: $POD_NAME,
    /// else hostname-pid].
    #[arg(long)]
    pub identity: Option<String>,
    /// Seconds without a change of the leader Lease before a standby takes over
    /// (`failover.lease_duration_secs`) [default: 15].
    #[arg(long, value_name = "SECS")]
    pub lease_duration: Option<f64>,
    /// Seconds between renewals of the leader Lease (`failover.renew_interval_secs`)
    /// [default: 2].
    #[arg(long, value_name = "SECS")]
    pub renew_interval: Option<f64>,
    /// The leader stops acting when it could not renew for this many seconds
    /// (`failover.renew_deadline_secs`) [default: 10].
    #[arg(long, value_name = "SECS")]
    pub renew_deadline: Option<f64>,
    /// Namespace of the agents' per-node heartbeat Leases (`kube.lease_namespace`)
    /// [default: edgeplex].
    #[arg(long)]
    pub agent_lease_namespace: Option<String>,
    /// Seconds assumed for an agent Lease that declares no duration, or is missing
    /// (`failover.agent_lease_duration_secs`) [default: 40].
    #[arg(long, value_name = "SECS")]
    pub agent_lease_duration: Option<f64>,
    /// Seconds between reads of Nodes and agent Leases (`failover.poll_interval_secs`)
    /// [default: 1].
    #[arg(long, value_name = "SECS")]
    pub poll_interval: Option<f64>,
    /// Seconds a node the controller tainted as dead must renew its Lease before that taint is
    /// removed; 0 never removes it (`failover.untaint_after_secs`) [default: 60].
    #[arg(long, value_name = "SECS")]
    pub untaint_after: Option<f64>,
    /// Serve /metrics, /healthz and /readyz here; "" disables (`failover.metrics_listen`)
    /// [default: 0.0.0.0:9465].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Check the configuration, print it as TOML, and exit.
    #[arg(long)]
    pub check: bool,
}

impl FailoverArgs {
    /// The flags as key overrides, `log_flags` (the global `--log`, `--log-format`) included.
    pub fn overrides(&self, log_flags: Overrides) -> Overrides {
        let mut o = log_flags;
        o.set.extend(self.set.iter().cloned());
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        o.text("--kubeconfig", "kube.kubeconfig", path(&self.kubeconfig));
        o.text("--kube-context", "kube.context", self.kube_context.as_ref());
        o.text("--namespace", "failover.namespace", self.namespace.as_ref());
        o.text(
            "--lease-name",
            "failover.lease_name",
            self.lease_name.as_ref(),
        );
        o.text("--identity", "failover.identity", self.identity.as_ref());
        o.text(
            "--agent-lease-namespace",
            "kube.lease_namespace",
            self.agent_lease_namespace.as_ref(),
        );
        let secs = [
            (
                "--lease-duration",
                "failover.lease_duration_secs",
                self.lease_duration,
            ),
            (
                "--renew-interval",
                "failover.renew_interval_secs",
                self.renew_interval,
            ),
            (
                "--renew-deadline",
                "failover.renew_deadline_secs",
                self.renew_deadline,
            ),
            (
                "--agent-lease-duration",
                "failover.agent_lease_duration_secs",
                self.agent_lease_duration,
            ),
            (
                "--poll-interval",
                "failover.poll_interval_secs",
                self.poll_interval,
            ),
            (
                "--untaint-after",
                "failover.untaint_after_secs",
                self.untaint_after,
            ),
        ];
        for (flag, key, v) in secs {
            // `{:?}` keeps a float a float (`1.0`, not `1`), as the settings expect.
            o.flag(flag, key, v.map(|v| format!("{v:?}")));
        }
        o.text(
            "--metrics-listen",
            "failover.metrics_listen",
            self.metrics_listen.as_ref(),
        );
        o
    }

    /// Load and check the configuration for the controller.
    pub fn load(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
        log_flags: Overrides,
    ) -> Result<Config, ConfigError> {
        let mut config =
            crate::config::load(self.config.as_deref(), env, &self.overrides(log_flags))?;
        if self.kubeconfig.is_some() && config.kube.mode == KubeMode::Auto {
            // Named explicitly: a missing file is an error, not "no cluster".
            config.kube.mode = KubeMode::Kubeconfig;
        }
        if config.kube.mode == KubeMode::Off {
            return Err(ConfigError(
                "kube.mode = \"off\": the failover controller needs Kubernetes; use auto, in-cluster or kubeconfig".into(),
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: FailoverArgs,
    }

    fn load(args: &[&str]) -> Result<Config, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).unwrap();
        cli.args.load(Vec::new(), Overrides::default())
    }

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
    fn the_file_holds_failover_and_kube_sections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edgeplex.toml");
        std::fs::write(
            &path,
            "[failover]\nnamespace = \"kube-system\"\npoll_interval_secs = 0.5\n[kube]\nlease_namespace = \"agents\"\n",
        )
        .unwrap();
        let c = load(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(c.kube.lease_namespace, "agents");
        assert_eq!(c.failover.namespace, "kube-system");
        assert_eq!(c.failover.poll_interval_secs, 0.5);
        assert_eq!(c.failover.lease_name, "edgeplex-failover");
        std::fs::write(&path, "[failover]\npol_interval_secs = 1\n").unwrap();
        let e = load(&["--config", path.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("failover.pol_interval_secs is not a known key"),
            "{e}"
        );
        std::fs::write(&path, "[failover]\npoll_interval_secs = \"fast\"\n").unwrap();
        let e = load(&["--config", path.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("failover.poll_interval_secs: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failover.toml");
        std::fs::write(
            &path,
            "[failover]\nnamespace = \"from-file\"\nlease_name = \"file-lease\"\n",
        )
        .unwrap();
        let c = load(&[
            "--config",
            path.to_str().unwrap(),
            "--namespace",
            "from-flag",
            "--poll-interval",
            "0.25",
            "--metrics-listen",
            "",
        ])
        .unwrap();
        assert_eq!(c.kube.mode, KubeMode::Auto);
        assert_eq!(c.failover.namespace, "from-flag");
        assert_eq!(c.failover.lease_name, "file-lease");
        assert_eq!(c.failover.poll_interval_secs, 0.25);
        assert_eq!(c.failover.metrics_addr(), None);
        let e = load(&["--renew-deadline", "20"]).unwrap_err().to_string();
        assert!(e.contains("renew_deadline_secs"), "{e}");
        assert!(load(&["--config", "/nonexistent/f.toml"]).is_err());
        let e = load(&["--set", "kube.mode=off"]).unwrap_err().to_string();
        assert!(e.contains("kube.mode = \"off\""), "{e}");
        let c = load(&[
            "--kubeconfig",
            "/etc/kc",
            "--agent-lease-namespace",
            "agents",
        ])
        .unwrap();
        assert_eq!(c.kube.mode, KubeMode::Kubeconfig);
        assert_eq!(c.kube.kubeconfig, PathBuf::from("/etc/kc"));
        assert_eq!(c.kube.lease_namespace, "agents");
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

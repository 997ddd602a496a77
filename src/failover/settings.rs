//! Settings of `edgeplex failover`: an optional TOML file, overridden by `EDGEPLEX_FAILOVER_*`
//! environment variables, overridden by flags (clap gives env < flag; the file is below both).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use crate::config::ConfigError;
use crate::kube::{KubeMode, KubeSettings};

/// The controller's settings. Every key can also be given as a flag (see [`FailoverArgs`]).
#[derive(Debug, Clone, Deserialize, PartialEq)]
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
    /// Lease is missing.
    pub agent_lease_duration_secs: f64,
    /// How often Nodes and agent Leases are read.
    pub poll_interval_secs: f64,
    /// Remove the taint the controller put on a dead node once the node's Lease has been seen
    /// renewing for this long; 0 keeps it until an admin removes it.
    pub untaint_after_secs: f64,
    /// Listen address of `/metrics`, `/healthz`, `/readyz`; empty disables the endpoint.
    pub metrics_listen: String,
    /// `[kube]`: how to reach the cluster, as for the agent. `kube.lease_namespace` is where the
    /// agents' heartbeat Leases are (one per node, named after it); `kube.node_name` is unused.
    pub kube: KubeSettings,
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
            metrics_listen: "0.0.0.0:9465".into(),
            kube: KubeSettings::default(),
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
        self.kube.validate(&key("kube"))?;
        if self.kube.mode == KubeMode::Off {
            return Err(format!(
                "{} = \"off\": the failover controller needs Kubernetes; use auto, in-cluster or kubeconfig",
                key("kube.mode")
            ));
        }
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
            if !(lo..=hi).contains(&v) {
                return Err(format!(
                    "{} = {v} is out of range: allowed {lo} to {hi} seconds",
                    key(k)
                ));
            }
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
        if !self.metrics_listen.is_empty() && self.metrics_listen.parse::<SocketAddr>().is_err() {
            return Err(format!(
                "{} = {:?} is not an address: use HOST:PORT, e.g. 0.0.0.0:9465, or \"\" to disable",
                key("metrics_listen"),
                self.metrics_listen
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

    /// The metrics address, if the endpoint is enabled. Call after [`FailoverSettings::validate`].
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listen.parse().ok()
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

/// `edgeplex failover`: flags override the file; each flag has an `EDGEPLEX_FAILOVER_*` twin.
#[derive(Debug, Clone, Default, Args)]
pub struct FailoverArgs {
    /// TOML file with the settings: the flags' names with `_` and a `_secs` suffix for
    /// durations (namespace, lease_name, poll_interval_secs, ...) and a `[kube]` table as in
    /// the agent's configuration.
    #[arg(long, short = 'c', env = "EDGEPLEX_FAILOVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kubeconfig to use (an error if it cannot be read) [default: the in-cluster service
    /// account, else $KUBECONFIG or ~/.kube/config].
    #[arg(long, env = "EDGEPLEX_FAILOVER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context [default: its current context].
    #[arg(long, env = "EDGEPLEX_FAILOVER_KUBE_CONTEXT")]
    pub kube_context: Option<String>,
    /// Namespace of the leader Lease and of recorded Events [default: edgeplex].
    #[arg(long, env = "EDGEPLEX_FAILOVER_NAMESPACE")]
    pub namespace: Option<String>,
    /// Name of the leader-election Lease [default: edgeplex-failover].
    #[arg(long, env = "EDGEPLEX_FAILOVER_LEASE_NAME")]
    pub lease_name: Option<String>,
    /// Identity of this replica in the election [default: $POD_NAME, else hostname-pid].
    #[arg(long, env = "EDGEPLEX_FAILOVER_IDENTITY")]
    pub identity: Option<String>,
    /// Seconds without a change of the leader Lease before a standby takes over [default: 15].
    #[arg(long, env = "EDGEPLEX_FAILOVER_LEASE_DURATION", value_name = "SECS")]
    pub lease_duration: Option<f64>,
    /// Seconds between renewals of the leader Lease [default: 2].
    #[arg(long, env = "EDGEPLEX_FAILOVER_RENEW_INTERVAL", value_name = "SECS")]
    pub renew_interval: Option<f64>,
    /// The leader stops acting when it could not renew for this many seconds [default: 10].
    #[arg(long, env = "EDGEPLEX_FAILOVER_RENEW_DEADLINE", value_name = "SECS")]
    pub renew_deadline: Option<f64>,
    /// Namespace of the agents' per-node heartbeat Leases (`kube.lease_namespace`)
    /// [default: edgeplex].
    #[arg(long, env = "EDGEPLEX_FAILOVER_AGENT_LEASE_NAMESPACE")]
    pub agent_lease_namespace: Option<String>,
    /// Seconds assumed for an agent Lease that declares no duration, or is missing [default: 40].
    #[arg(
        long,
        env = "EDGEPLEX_FAILOVER_AGENT_LEASE_DURATION",
        value_name = "SECS"
    )]
    pub agent_lease_duration: Option<f64>,
    /// Seconds between reads of Nodes and agent Leases [default: 1].
    #[arg(long, env = "EDGEPLEX_FAILOVER_POLL_INTERVAL", value_name = "SECS")]
    pub poll_interval: Option<f64>,
    /// Seconds a node the controller tainted as dead must renew its Lease before that taint is
    /// removed; 0 never removes it [default: 60].
    #[arg(long, env = "EDGEPLEX_FAILOVER_UNTAINT_AFTER", value_name = "SECS")]
    pub untaint_after: Option<f64>,
    /// Serve /metrics, /healthz and /readyz here; "" disables [default: 0.0.0.0:9465].
    #[arg(long, env = "EDGEPLEX_FAILOVER_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Check the settings, print them, and exit.
    #[arg(long)]
    pub check: bool,
}

impl FailoverArgs {
    /// The settings: defaults, then the file (if any), then environment and flags; validated.
    pub fn settings(&self) -> Result<FailoverSettings, ConfigError> {
        let mut s = match &self.config {
            Some(path) => load_file(path)?,
            None => FailoverSettings::default(),
        };
        let set_str = |dst: &mut String, v: &Option<String>| {
            if let Some(v) = v {
                dst.clone_from(v);
            }
        };
        let set_f64 = |dst: &mut f64, v: Option<f64>| {
            if let Some(v) = v {
                *dst = v;
            }
        };
        if let Some(p) = &self.kubeconfig {
            s.kube.kubeconfig.clone_from(p);
            if s.kube.mode == KubeMode::Auto {
                // Named explicitly: a missing file is an error, not "no cluster".
                s.kube.mode = KubeMode::Kubeconfig;
            }
        }
        set_str(&mut s.kube.context, &self.kube_context);
        set_str(&mut s.kube.lease_namespace, &self.agent_lease_namespace);
        set_str(&mut s.namespace, &self.namespace);
        set_str(&mut s.lease_name, &self.lease_name);
        set_str(&mut s.identity, &self.identity);
        set_str(&mut s.metrics_listen, &self.metrics_listen);
        set_f64(&mut s.lease_duration_secs, self.lease_duration);
        set_f64(&mut s.renew_interval_secs, self.renew_interval);
        set_f64(&mut s.renew_deadline_secs, self.renew_deadline);
        set_f64(&mut s.agent_lease_duration_secs, self.agent_lease_duration);
        set_f64(&mut s.poll_interval_secs, self.poll_interval);
        set_f64(&mut s.untaint_after_secs, self.untaint_after);
        s.validate("").map_err(ConfigError)?;
        Ok(s)
    }
}

/// Read a settings file: top-level keys of [`FailoverSettings`].
pub fn load_file(path: &Path) -> Result<FailoverSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "cannot read {}: {e}; pass an existing file with --config",
            path.display()
        ))
    })?;
    parse(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
}

/// Parse settings from TOML text. Errors are one line naming the key.
pub fn parse(text: &str) -> Result<FailoverSettings, String> {
    let de = toml::de::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner
            .message()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        if path.is_empty() || path == "." {
            msg
        } else {
            format!("{path}: {msg}")
        }
    })
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

    #[test]
    fn defaults_are_valid() {
        FailoverSettings::default().validate("failover").unwrap();
        let s = FailoverSettings::default();
        assert_eq!(s.metrics_addr(), "0.0.0.0:9465".parse().ok());
    }

    #[test]
    fn errors_name_the_key() {
        type Edit = fn(&mut FailoverSettings);
        let cases: [(Edit, &str); 11] = [
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
                |s| s.metrics_listen = "nowhere".into(),
                "failover.metrics_listen",
            ),
            (
                |s| s.agent_lease_duration_secs = f64::NAN,
                "failover.agent_lease_duration_secs",
            ),
            (|s| s.kube.mode = KubeMode::Off, "failover.kube.mode"),
            (
                |s| s.untaint_after_secs = -1.0,
                "failover.untaint_after_secs",
            ),
            (
                |s| s.kube.lease_namespace = "A".into(),
                "failover.kube.lease_namespace",
            ),
        ];
        for (make, key) in cases {
            let mut s = FailoverSettings::default();
            make(&mut s);
            let e = s.validate("failover").unwrap_err();
            assert!(e.starts_with(key), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let s = FailoverSettings {
            poll_interval_secs: -1.0,
            ..FailoverSettings::default()
        };
        assert!(s
            .validate("")
            .unwrap_err()
            .starts_with("poll_interval_secs ="));
    }

    #[test]
    fn file_parses_and_rejects_unknown_keys() {
        let s = parse(
            "namespace = \"kube-system\"\npoll_interval_secs = 0.5\n[kube]\nlease_namespace = \"agents\"\n",
        )
        .unwrap();
        assert_eq!(s.kube.lease_namespace, "agents");
        assert_eq!(s.namespace, "kube-system");
        assert_eq!(s.poll_interval_secs, 0.5);
        assert_eq!(s.lease_name, "edgeplex-failover");
        let e = parse("pol_interval_secs = 1\n").unwrap_err();
        assert!(e.contains("pol_interval_secs"), "{e}");
        let e = parse("poll_interval_secs = \"fast\"\n").unwrap_err();
        assert!(e.starts_with("poll_interval_secs"), "{e}");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failover.toml");
        std::fs::write(
            &path,
            "namespace = \"from-file\"\nlease_name = \"file-lease\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "x",
            "--config",
            path.to_str().unwrap(),
            "--namespace",
            "from-flag",
            "--poll-interval",
            "0.25",
        ])
        .unwrap();
        let s = cli.args.settings().unwrap();
        assert_eq!(s.kube.mode, KubeMode::Auto);
        assert_eq!(s.namespace, "from-flag");
        assert_eq!(s.lease_name, "file-lease");
        assert_eq!(s.poll_interval_secs, 0.25);
        let bad = Cli::try_parse_from(["x", "--renew-deadline", "20"]).unwrap();
        let e = bad.args.settings().unwrap_err().to_string();
        assert!(e.contains("renew_deadline_secs"), "{e}");
        let missing = Cli::try_parse_from(["x", "--config", "/nonexistent/f.toml"]).unwrap();
        assert!(missing.args.settings().is_err());
        let kc = Cli::try_parse_from([
            "x",
            "--kubeconfig",
            "/etc/kc",
            "--agent-lease-namespace",
            "agents",
        ])
        .unwrap();
        let s = kc.args.settings().unwrap();
        assert_eq!(s.kube.mode, KubeMode::Kubeconfig);
        assert_eq!(s.kube.kubeconfig, PathBuf::from("/etc/kc"));
        assert_eq!(s.kube.lease_namespace, "agents");
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

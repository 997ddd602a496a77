//! Command-line interface: argument definitions (clap derive) and dispatch to the library.
//!
//! Every flag that has an environment twin names it with `env = "EDGEPLEX_..."`; precedence is
//! config file < environment < flag.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, Overrides};
use crate::kube::KubeMode;
use crate::telemetry::LogFormat;

/// edgeplex: share cameras and serial sensors with any number of pods, zero-copy.
#[derive(Debug, Parser)]
#[command(name = "edgeplex", version, about, propagate_version = true)]
pub struct Cli {
    /// Log output format [env: EDGEPLEX_LOG_FORMAT] [default: text].
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log filter, in `RUST_LOG` syntax, e.g. `info,edgeplex=debug` [env: EDGEPLEX_LOG]
    /// [default: info].
    #[arg(long, global = true)]
    pub log: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: publish every configured stream into its ring until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Read rings: list, inspect, or stream their messages.
    #[command(subcommand)]
    Ring(RingCommand),
    /// Run a synthetic camera and sensor into fresh rings, to see edgeplex work without hardware.
    Demo(crate::demo::DemoArgs),
    /// Measure ring fan-out cost and wake-up latency on this machine against a Unix-socket
    /// baseline, and print one JSON object.
    Bench(crate::bench::BenchArgs),
    /// Run the failover controller: keep one node per device group labelled
    /// edgeplex.io/active=true and move it to a healthy backup when the active node fails.
    Failover(FailoverArgs),
    /// Copy a window of a ring's messages into files (JSON lines or frames plus an index),
    /// optionally upload them with HTTP PUT, and remember where the export stopped.
    Export(crate::export::ExportArgs),
    /// List the cameras and serial ports this machine has, which discovery rule takes each and
    /// under which stream name, and why the others are left alone.
    Devices(crate::discovery::DevicesArgs),
    /// Internal: a reader process spawned by `edgeplex bench`.
    #[command(hide = true)]
    BenchReader(crate::bench::ReaderArgs),
}

/// `edgeplex run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file [default: /etc/edgeplex/edgeplex.toml, if present].
    #[arg(long, short = 'c', env = "EDGEPLEX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override any configuration key, e.g. `--set stream.cam0.width=1280` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Ring directory (overrides `ring.dir`).
    #[arg(long)]
    pub ring_dir: Option<PathBuf>,
    /// Metrics listen address (overrides `metrics.listen`).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Check the configuration as `run` would (without opening devices), print it as TOML,
    /// and exit.
    #[arg(long)]
    pub check: bool,
}

impl Cli {
    /// The global flags as configuration overrides (`log.level`, `log.format`).
    pub fn log_overrides(&self) -> Overrides {
        let mut o = Overrides::default();
        o.text("--log", "log.level", self.log.as_ref());
        o.text(
            "--log-format",
            "log.format",
            self.log_format.map(|f| match f {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }),
        );
        o
    }
}

impl RunArgs {
    /// The flags as configuration overrides, after `base` (the global ones).
    pub fn overrides(&self, base: Overrides) -> Overrides {
        let mut o = base;
        o.set.extend(self.set.iter().cloned());
        o.text(
            "--ring-dir",
            "ring.dir",
            self.ring_dir.as_ref().map(|p| p.display().to_string()),
        );
        o.text(
            "--metrics-listen",
            "metrics.listen",
            self.metrics_listen.as_ref(),
        );
        o
    }
}

/// `edgeplex ring ...`
#[derive(Debug, Subcommand)]
pub enum RingCommand {
    /// List the rings in a directory with geometry, epoch, head and age.
    Ls {
        /// Ring directory.
        #[arg(env = "EDGEPLEX_RING_DIR")]
        dir: PathBuf,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the decoded header of one ring.
    Inspect {
        /// Ring file.
        path: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write messages to stdout: raw payloads, or with --meta one JSON line per message.
    Cat(crate::ringtool::CatArgs),
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
    /// Seconds between decisions from the watched Nodes and Leases, besides one per change; no
    /// request (`failover.poll_interval_secs`) [default: 1].
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
    struct Args {
        #[command(flatten)]
        args: FailoverArgs,
    }

    fn load(args: &[&str]) -> Result<Config, ConfigError> {
        let cli = Args::try_parse_from(std::iter::once("x").chain(args.iter().copied())).unwrap();
        cli.args.load(Vec::new(), Overrides::default())
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
}

//! Connecting to Kubernetes: the `[kube]` settings, building a [`::kube::Client`] in-cluster or
//! from a kubeconfig (or not at all: standalone), and the names every edgeplex writer shares.
//!
//! It owns the client's construction only. It must not talk to the API server: building a
//! client needs no network, so an API server that is down at start-up never turns the agent
//! standalone, and the callers (the node publisher, the failover controller) retry and count
//! their own requests. For that reason the client's built-in retry layer is switched off, and
//! every client carries a `User-Agent` naming its component, because kube-rs sends none and
//! the apiserver would otherwise record unnamed writes under the field manager `""`.

use std::path::{Path, PathBuf};

use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::{Client, Config};
use serde::Deserialize;

/// Field manager of every write the agent makes.
pub const FIELD_MANAGER: &str = "edgeplex";

/// Field manager of every write the failover controller makes.
pub const FAILOVER_FIELD_MANAGER: &str = "edgeplex-failover";

/// Label, annotation, taint and condition names of the Kubernetes contract (README.md, "Kubernetes"), shared
/// by the node publisher and the failover controller.
pub mod keys {
    /// Prefix of every edgeplex label and annotation.
    pub const PREFIX: &str = "edgeplex.io/";
    /// Label: the node's group, from config, for DaemonSet and workload nodeSelectors.
    pub const GROUP: &str = "edgeplex.io/group";
    /// Label `true` while a camera stream is up.
    pub const CAMERA: &str = "edgeplex.io/camera";
    /// Label `true` while a serial stream is up.
    pub const SERIAL: &str = "edgeplex.io/serial";
    /// Label `true` on battery-powered nodes.
    pub const BATTERY: &str = "edgeplex.io/battery";
    /// Label `normal`, `low` or `critical`.
    pub const POWER: &str = "edgeplex.io/power";
    /// Label `true` on the node(s) of a group the failover controller made active. The agent
    /// only reads it.
    pub const ACTIVE: &str = "edgeplex.io/active";
    /// Label set by the admin: `primary` or `backup`. The agent only reads it.
    pub const ROLE: &str = "edgeplex.io/role";
    /// Annotation: battery detail, JSON.
    pub const BATTERY_ANNOTATION: &str = "edgeplex.io/battery";
    /// Annotation: the rings this node serves, JSON.
    pub const RINGS_ANNOTATION: &str = "edgeplex.io/rings";
    /// Annotation on the agent's own Lease, written by its last renewal before a graceful stop
    /// (SIGTERM/SIGINT), value the RFC 3339 time of the stop; the next renewal removes it. It
    /// tells the failover controller a planned restart from a crash.
    pub const STOPPED_ANNOTATION: &str = "edgeplex.io/stopped";
    /// Namespace of the kubelets' own heartbeat Leases (one per node, named after it).
    pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
    /// The taint key (effect `NoExecute`) that makes pods leave a node that must hand over.
    pub const FAILOVER_TAINT: &str = "edgeplex.io/failover";
    /// Node condition: the battery is critical (time to hand over).
    pub const BATTERY_CRITICAL: &str = "BatteryCritical";
    /// Node condition: a configured critical device is down.
    pub const DEVICE_FAILURE: &str = "DeviceFailure";
}

/// How the agent finds its cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KubeMode {
    /// A configured kubeconfig if it exists, else the pod's service account, else
    /// `$KUBECONFIG` or `~/.kube/config`, else standalone.
    #[default]
    Auto,
    /// The pod's service account; an error outside a pod.
    InCluster,
    /// `kubeconfig` (or `$KUBECONFIG`, `~/.kube/config`); an error if it cannot be read.
    Kubeconfig,
    /// Standalone: rings and metrics only.
    Off,
}

impl KubeMode {
    /// The config value: `auto`, `in-cluster`, `kubeconfig`, `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            KubeMode::Auto => "auto",
            KubeMode::InCluster => "in-cluster",
            KubeMode::Kubeconfig => "kubeconfig",
            KubeMode::Off => "off",
        }
    }
}

/// `[kube]`: how to reach Kubernetes and who this node is.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubeSettings {
    /// `auto`, `in-cluster`, `kubeconfig` or `off`.
    pub mode: KubeMode,
    /// Kubeconfig file (the snap's `snap set edgeplex kube.kubeconfig=...`); empty means
    /// `$KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: PathBuf,
    /// Kubeconfig context; empty means its current context.
    pub context: String,
    /// This node's name; empty means `$NODE_NAME` (the DaemonSet sets it from
    /// `spec.nodeName` through the downward API), else the host name in lower case.
    pub node_name: String,
    /// Namespace of the agents' heartbeat Leases (one per node, named after it). Not
    /// `kube-node-lease`: the kubelet's own Lease there already has the node's name.
    pub lease_namespace: String,
    /// Longest wait for one API request before it counts as failed, seconds.
    pub request_timeout_secs: f64,
}

impl Default for KubeSettings {
    fn default() -> Self {
        KubeSettings {
            mode: KubeMode::Auto,
            kubeconfig: PathBuf::new(),
            context: String::new(),
            node_name: String::new(),
            lease_namespace: "edgeplex".into(),
            request_timeout_secs: 10.0,
        }
    }
}

/// Errors connecting to Kubernetes.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// `mode = "in-cluster"` outside a pod, or the service account is not mounted.
    #[error("cannot use the in-cluster service account: {0}; run edgeplex as a pod with a service account, or set kube.mode = \"kubeconfig\" and kube.kubeconfig")]
    InCluster(#[source] ::kube::config::InClusterError),
    /// The kubeconfig cannot be read or used.
    #[error("cannot use kubeconfig {path}: {source}; check kube.kubeconfig (snap set edgeplex kube.kubeconfig=/path) and kube.context, or set kube.mode = \"off\" to run standalone")]
    Kubeconfig {
        /// The file (or `$KUBECONFIG`/`~/.kube/config` when none is configured).
        path: String,
        /// What went wrong.
        #[source]
        source: ::kube::config::KubeconfigError,
    },
    /// The client could not be built from a valid configuration (TLS material, proxy).
    #[error("cannot build the Kubernetes client: {0}; check the cluster's certificate data and proxy settings in the kubeconfig")]
    Client(#[source] ::kube::Error),
    /// No node name was configured and none could be found.
    #[error("cannot tell this node's name: {0}; set kube.node_name, or NODE_NAME from the downward API (fieldRef spec.nodeName)")]
    NodeName(String),
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a valid DNS subdomain (a Node name).
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

impl KubeSettings {
    /// Check the settings; the one-line error names the key (`{prefix}.lease_namespace`).
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        if !self.node_name.is_empty() && !is_dns_subdomain(&self.node_name) {
            return Err(format!(
                "{prefix}.node_name = {:?} is not a node name: use lower-case letters, digits, '-' and '.'",
                self.node_name
            ));
        }
        if !dns_label(&self.lease_namespace) {
            return Err(format!(
                "{prefix}.lease_namespace = {:?} is not a namespace name: use lower-case letters, digits and '-', at most 63",
                self.lease_namespace
            ));
        }
        if !(self.request_timeout_secs > 0.0 && self.request_timeout_secs <= 300.0) {
            return Err(format!(
                "{prefix}.request_timeout_secs = {} is out of range: allowed (0, 300] seconds",
                self.request_timeout_secs
            ));
        }
        let uses_kubeconfig = matches!(self.mode, KubeMode::Auto | KubeMode::Kubeconfig);
        if !self.context.is_empty() && !uses_kubeconfig {
            return Err(format!(
                "{prefix}.context is set but {prefix}.mode = {:?} does not read a kubeconfig",
                self.mode.as_str()
            ));
        }
        if !self.kubeconfig.as_os_str().is_empty() && !uses_kubeconfig {
            return Err(format!(
                "{prefix}.kubeconfig is set but {prefix}.mode = {:?} does not read it; use mode \"kubeconfig\" or \"auto\"",
                self.mode.as_str()
            ));
        }
        Ok(())
    }

    /// This node's name: `node_name`, else `$NODE_NAME`, else the host name in lower case.
    pub fn resolve_node_name(&self) -> Result<String, KubeError> {
        let from_env = std::env::var("NODE_NAME").ok();
        let hostname = || {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .or_else(|_| std::fs::read_to_string("/etc/hostname"))
                .ok()
        };
        let name = if !self.node_name.is_empty() {
            self.node_name.clone()
        } else if let Some(n) = from_env.filter(|n| !n.trim().is_empty()) {
            n.trim().to_owned()
        } else {
            hostname()
                .map(|h| h.trim().to_lowercase())
                .filter(|h| !h.is_empty())
                .ok_or_else(|| {
                    KubeError::NodeName("NODE_NAME is unset and the host name is unreadable".into())
                })?
        };
        if !is_dns_subdomain(&name) {
            return Err(KubeError::NodeName(format!(
                "{name:?} is not a valid node name"
            )));
        }
        Ok(name)
    }
}

fn default_kubeconfig() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        // The first file of a KUBECONFIG list.
        return std::env::split_paths(&p).next();
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".kube/config"))
}

async fn from_kubeconfig(path: &Path, context: &str) -> Result<Config, KubeError> {
    let err = |source| KubeError::Kubeconfig {
        path: path.display().to_string(),
        source,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(err)?;
    let options = KubeConfigOptions {
        context: (!context.is_empty()).then(|| context.to_owned()),
        ..Default::default()
    };
    Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(err)
}

/// Build the agent's client (User-Agent `edgeplex/VERSION`), or `None` for standalone. See
/// [`connect_as`].
pub async fn connect(settings: &KubeSettings) -> Result<Option<Client>, KubeError> {
    connect_as(settings, FIELD_MANAGER).await
}

/// Build a client for `component` (its User-Agent is `component/VERSION`), per
/// `settings.mode`; `None` means standalone (mode `off`, or `auto` with nothing to connect
/// to), and the caller says so once in its log. Needs no network. Call it on the runtime that
/// will drive the client: kube's client spawns its request buffer onto the current runtime,
/// so a client built on another (stopped or blocked) runtime hangs.
pub async fn connect_as(
    settings: &KubeSettings,
    component: &str,
) -> Result<Option<Client>, KubeError> {
    let configured =
        (!settings.kubeconfig.as_os_str().is_empty()).then(|| settings.kubeconfig.clone());
    let (mut config, source) = match settings.mode {
        KubeMode::Off => return Ok(None),
        KubeMode::InCluster => (
            Config::incluster().map_err(KubeError::InCluster)?,
            "in-cluster service account".to_owned(),
        ),
        KubeMode::Kubeconfig => {
            let path = configured.or_else(default_kubeconfig).unwrap_or_default();
            let config = from_kubeconfig(&path, &settings.context).await?;
            (config, format!("kubeconfig {}", path.display()))
        }
        KubeMode::Auto => {
            if let Some(path) = configured {
                if !path.exists() {
                    tracing::warn!(kubeconfig = %path.display(), "kube.kubeconfig does not exist; running standalone");
                    return Ok(None);
                }
                let config = from_kubeconfig(&path, &settings.context).await?;
                (config, format!("kubeconfig {}", path.display()))
            } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
                (
                    Config::incluster().map_err(KubeError::InCluster)?,
                    "in-cluster service account".to_owned(),
                )
            } else if let Some(path) = default_kubeconfig().filter(|p| p.exists()) {
                let config = from_kubeconfig(&path, &settings.context).await?;
                (config, format!("kubeconfig {}", path.display()))
            } else {
                return Ok(None);
            }
        }
    };
    // The callers retry with their own backoff and count every attempt; kube's retry layer
    // would hide an outage for minutes behind one slow call.
    config.default_retry = false;
    let agent = format!("{component}/{}", env!("CARGO_PKG_VERSION"));
    let value = ::hyper::header::HeaderValue::from_str(&agent)
        .unwrap_or_else(|_| ::hyper::header::HeaderValue::from_static(FIELD_MANAGER));
    config.headers.push((::hyper::header::USER_AGENT, value));
    tracing::info!(%source, server = %config.cluster_url, user_agent = %agent, "kubernetes client configured");
    Client::try_from(config)
        .map(Some)
        .map_err(KubeError::Client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_parse() {
        KubeSettings::default().validate("kube").expect("defaults");
        let s: KubeSettings = toml::from_str(
            "mode = \"kubeconfig\"\nkubeconfig = \"/var/snap/edgeplex/common/kubeconfig\"\nnode_name = \"edge-1\"\n",
        )
        .expect("parse");
        assert_eq!(s.mode, KubeMode::Kubeconfig);
        assert_eq!(s.lease_namespace, "edgeplex");
        s.validate("kube").expect("valid");
        let e = toml::from_str::<KubeSettings>("mode = \"cloud\"\n").expect_err("bad mode");
        assert!(e.to_string().contains("in-cluster"), "{e}");
        assert!(toml::from_str::<KubeSettings>("nodename = \"x\"\n").is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let bad = |f: fn(&mut KubeSettings)| {
            let mut s = KubeSettings::default();
            f(&mut s);
            let e = s.validate("kube").expect_err("invalid");
            assert!(!e.contains('\n'), "{e}");
            e
        };
        assert!(bad(|s| s.node_name = "Edge_1".into()).starts_with("kube.node_name = \"Edge_1\""));
        assert!(bad(|s| s.lease_namespace = String::new()).starts_with("kube.lease_namespace"));
        assert!(bad(|s| s.request_timeout_secs = 0.0).starts_with("kube.request_timeout_secs = 0"));
        assert!(bad(|s| {
            s.mode = KubeMode::InCluster;
            s.kubeconfig = "/x".into();
        })
        .starts_with("kube.kubeconfig is set"));
    }

    #[test]
    fn node_name_comes_from_settings_first() {
        let s = KubeSettings {
            node_name: "edge-7".into(),
            ..Default::default()
        };
        assert_eq!(s.resolve_node_name().expect("name"), "edge-7");
    }

    #[tokio::test]
    async fn off_is_standalone_and_a_missing_kubeconfig_is_an_error() {
        let off = KubeSettings {
            mode: KubeMode::Off,
            ..Default::default()
        };
        assert!(connect(&off).await.expect("off").is_none());
        let missing = KubeSettings {
            mode: KubeMode::Kubeconfig,
            kubeconfig: "/nonexistent/kubeconfig".into(),
            ..Default::default()
        };
        let Err(e) = connect(&missing).await else {
            panic!("a missing kubeconfig must be an error in mode kubeconfig");
        };
        assert!(e.to_string().contains("/nonexistent/kubeconfig"), "{e}");
        let auto = KubeSettings {
            kubeconfig: "/nonexistent/kubeconfig".into(),
            ..Default::default()
        };
        assert!(connect(&auto).await.expect("auto").is_none());
    }
}

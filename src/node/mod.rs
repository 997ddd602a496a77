//! The node publisher: tells Kubernetes what this node has and how healthy it is, and asks
//! for failover before the node dies.
//!
//! It owns, on its own node only (architecture invariant 6):
//!
//! - the labels `edgeplex.io/{group,camera,serial,battery,power}` and the annotations
//!   `edgeplex.io/{battery,rings}`, by server-side apply under field manager `edgeplex`, so
//!   keys it stops asserting disappear and other managers' keys are never touched;
//! - the conditions `BatteryCritical` and `DeviceFailure` on `nodes/status`, by server-side
//!   apply (conditions merge by `type`, so the kubelet's stay), with `lastTransitionTime` kept
//!   until the status flips;
//! - the `edgeplex.io/failover:NoExecute` taint while power is critical or a critical device
//!   is down, lifted after a hold-down. `spec.taints` is an atomic list, so the taint is only
//!   ever changed by read-modify-write with `resourceVersion` (retrying on 409), keeping every
//!   other taint;
//! - its heartbeat Lease, `<kube.lease_namespace>/<node name>`, renewed every few seconds.
//!
//! It runs on its own thread with its own tokio runtime ([`start`]) and only reads the
//! streams' [`StreamHealth`] and the power monitor's latest snapshot, so capture never waits
//! on it: an API-server outage never drops a frame. Requests time out, failures are retried
//! with capped exponential backoff, counted in `edgeplex_kube_requests_total{verb,result}`,
//! and logged once when they start and once when they clear. It writes only when something
//! changed, the node drifted, or a heartbeat is due.
//!
//! It must not write other nodes, read the ring files, or block its inputs. The decisions
//! are pure functions in [`decide`]; `publish` is the thin I/O layer around them.

pub mod decide;
mod metrics;
mod publish;

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

use crate::kube::{KubeError, KubeMode, KubeSettings};
use crate::power::PowerSnapshot;
use crate::shutdown::Shutdown;
use crate::source::{HealthSnapshot, StreamHealth};

pub use metrics::NodeMetrics;

/// `[node]`: what the publisher asserts and how often.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSettings {
    /// The node's group (`edgeplex.io/group`), e.g. `line-1`; empty for none.
    pub group: String,
    /// Streams whose failure is a `DeviceFailure` and a reason to fail over.
    pub critical_streams: Vec<String>,
    /// Put the failover taint on the node when it must hand over.
    pub failover_taint: bool,
    /// Seconds the taint stays after its cause clears, so it does not flap.
    pub hold_down_secs: f64,
    /// Seconds a critical stream must be down before it counts as failed (rides out a
    /// reconnect).
    pub device_grace_secs: f64,
    /// Seconds between Lease renewals.
    pub heartbeat_secs: f64,
    /// The Lease's `leaseDurationSeconds`: how long without a renewal before the failover
    /// controller calls the node dead. At least twice `heartbeat_secs`.
    pub lease_duration_secs: u32,
    /// Seconds between full re-reads of the node (drift, the `active` label) when nothing
    /// changed.
    pub resync_secs: f64,
    /// Seconds between looks at the streams and the power snapshot.
    pub poll_interval_secs: f64,
    /// First retry delay after a failed request, seconds.
    pub retry_initial_secs: f64,
    /// Longest retry delay, seconds.
    pub retry_max_secs: f64,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            group: String::new(),
            critical_streams: Vec::new(),
            failover_taint: true,
            hold_down_secs: 60.0,
            device_grace_secs: 5.0,
            heartbeat_secs: 5.0,
            lease_duration_secs: 20,
            resync_secs: 10.0,
            poll_interval_secs: 1.0,
            retry_initial_secs: 0.5,
            retry_max_secs: 30.0,
        }
    }
}

fn label_value(s: &str) -> bool {
    s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl NodeSettings {
    /// Check the settings; the one-line error names the key (`{prefix}.hold_down_secs`).
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        if !self.group.is_empty() && !label_value(&self.group) {
            return Err(format!(
                "{prefix}.group = {:?} is not a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
                self.group
            ));
        }
        let mut seen = BTreeSet::new();
        for s in &self.critical_streams {
            if s.is_empty() || !seen.insert(s) {
                return Err(format!(
                    "{prefix}.critical_streams lists {s:?} twice or empty; list each stream name once"
                ));
            }
        }
        for (key, v, lo, hi) in [
            ("hold_down_secs", self.hold_down_secs, 0.0, 86_400.0),
            ("device_grace_secs", self.device_grace_secs, 0.0, 3600.0),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(format!(
                    "{prefix}.{key} = {v} is out of range: allowed {lo} to {hi} seconds"
                ));
            }
        }
        for (key, v, hi) in [
            ("heartbeat_secs", self.heartbeat_secs, 300.0),
            ("resync_secs", self.resync_secs, 3600.0),
            ("poll_interval_secs", self.poll_interval_secs, 60.0),
            ("retry_initial_secs", self.retry_initial_secs, 3600.0),
            ("retry_max_secs", self.retry_max_secs, 3600.0),
        ] {
            if !(v > 0.0 && v <= hi) {
                return Err(format!(
                    "{prefix}.{key} = {v} is out of range: allowed (0, {hi}] seconds"
                ));
            }
        }
        if self.retry_max_secs < self.retry_initial_secs {
            return Err(format!(
                "{prefix}.retry_max_secs must be at least {prefix}.retry_initial_secs"
            ));
        }
        if !(1..=3600).contains(&self.lease_duration_secs)
            || f64::from(self.lease_duration_secs) < 2.0 * self.heartbeat_secs
        {
            return Err(format!(
                "{prefix}.lease_duration_secs = {} is out of range: allowed 1 to 3600 and at least twice {prefix}.heartbeat_secs ({}), so one late renewal is not a death",
                self.lease_duration_secs, self.heartbeat_secs
            ));
        }
        Ok(())
    }

    /// Check that every critical stream is a configured stream.
    pub fn validate_streams(&self, prefix: &str, configured: &[&str]) -> Result<(), String> {
        match self
            .critical_streams
            .iter()
            .find(|s| !configured.contains(&s.as_str()))
        {
            Some(s) => Err(format!(
                "{prefix}.critical_streams names {s:?}, which is not a configured stream; configured: {}",
                configured.join(", ")
            )),
            None => Ok(()),
        }
    }

    fn rules(&self) -> decide::Rules {
        decide::Rules {
            group: self.group.clone(),
            critical_streams: self.critical_streams.iter().cloned().collect(),
            device_grace: secs(self.device_grace_secs),
            hold_down: secs(self.hold_down_secs),
            failover_taint: self.failover_taint,
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

/// Which node and Lease the publisher writes, and how long one request may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The Node's name.
    pub node_name: String,
    /// The Lease's namespace (its name is the node's).
    pub lease_namespace: String,
    /// Longest wait for one request.
    pub request_timeout: Duration,
}

impl Identity {
    /// From the `[kube]` settings, resolving the node name.
    pub fn from_settings(kube: &KubeSettings) -> Result<Identity, KubeError> {
        Ok(Identity {
            node_name: kube.resolve_node_name()?,
            lease_namespace: kube.lease_namespace.clone(),
            request_timeout: secs(kube.request_timeout_secs),
        })
    }
}

type StreamsFn = Box<dyn Fn() -> Vec<HealthSnapshot> + Send>;

/// What the publisher reads: stream health and the power monitor's latest snapshot. It only
/// ever reads them (atomics, a mutex copy, a watch borrow), so it never blocks their writers.
pub struct Inputs {
    streams: StreamsFn,
    power: Option<watch::Receiver<Option<PowerSnapshot>>>,
}

impl std::fmt::Debug for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs")
            .field("power", &self.power.is_some())
            .finish_non_exhaustive()
    }
}

impl Inputs {
    /// The agent's streams, and no power monitor.
    pub fn new(streams: Vec<StreamHealth>) -> Inputs {
        Inputs::from_fn(move || streams.iter().map(StreamHealth::snapshot).collect())
    }

    /// Streams from any source of snapshots (tests, other front ends).
    pub fn from_fn(streams: impl Fn() -> Vec<HealthSnapshot> + Send + 'static) -> Inputs {
        Inputs {
            streams: Box::new(streams),
            power: None,
        }
    }

    /// Read power from `power`: the monitor's task sends each snapshot with
    /// `send_replace(Some(snapshot))`; `None` until the first sample.
    pub fn with_power(mut self, power: watch::Receiver<Option<PowerSnapshot>>) -> Inputs {
        self.power = Some(power);
        self
    }

    fn observe(&self) -> decide::Observation {
        decide::Observation {
            streams: (self.streams)(),
            power: self.power.as_ref().and_then(|p| p.borrow().clone()),
        }
    }
}

/// Errors of the node publisher.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Connecting failed (bad kubeconfig, no node name).
    #[error(transparent)]
    Kube(#[from] KubeError),
    /// The metrics could not be registered.
    #[error("cannot register the node publisher's metrics: {0}; register them once per registry")]
    Metrics(#[from] prometheus::Error),
    /// The thread or its runtime could not be started.
    #[error("cannot start the node publisher: {0}")]
    Start(#[source] std::io::Error),
    /// The node does not exist.
    #[error("node {node:?} does not exist in the cluster; set kube.node_name (or NODE_NAME) to the name `kubectl get nodes` shows")]
    NodeNotFound {
        /// The name looked up.
        node: String,
    },
    /// The Lease's namespace does not exist.
    #[error("namespace {namespace:?} of the heartbeat Lease does not exist; create it (kubectl create namespace {namespace}) or set kube.lease_namespace")]
    NamespaceNotFound {
        /// The namespace.
        namespace: String,
    },
    /// A request took longer than `kube.request_timeout_secs`.
    #[error("{what}: no answer within {secs} s; check that the API server is reachable")]
    Timeout {
        /// The request.
        what: String,
        /// The timeout.
        secs: f64,
    },
    /// The API server refused or failed a request.
    #[error("{what}: {source}{hint}")]
    Api {
        /// The request.
        what: String,
        /// The client's error.
        #[source]
        source: ::kube::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// The node kept changing between our read and our write.
    #[error("{what}: the node changed under us {attempts} times in a row; retrying with backoff")]
    Conflicts {
        /// The request.
        what: String,
        /// Attempts made.
        attempts: u32,
    },
    /// Shutdown was requested during a request.
    #[error("shutting down")]
    ShuttingDown,
}

impl NodeError {
    /// The HTTP status of an API error, if this is one.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            NodeError::Api {
                source: ::kube::Error::Api(s),
                ..
            } => Some(s.code),
            _ => None,
        }
    }
}

/// The running publisher thread.
#[derive(Debug)]
pub struct NodePublisher {
    thread: std::thread::JoinHandle<()>,
}

impl NodePublisher {
    /// Whether the thread has ended (after shutdown).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Wait for the thread to end; trigger the shutdown first.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Connect per `kube` and start publishing on a new thread with its own runtime; `Ok(None)`
/// when running standalone (mode `off`, or `auto` found no cluster), which is logged here,
/// once. Returns once the client is built and the node name resolved (no network needed), so
/// configuration errors come back here. Registers the metrics into `registry` unless
/// standalone. Stops soon after `shutdown` is triggered, even mid-request.
pub fn start(
    kube: &KubeSettings,
    settings: NodeSettings,
    inputs: Inputs,
    registry: &prometheus::Registry,
    shutdown: &Shutdown,
) -> Result<Option<NodePublisher>, NodeError> {
    if kube.mode == KubeMode::Off {
        tracing::info!("running standalone: kube.mode = \"off\"; rings and metrics only");
        return Ok(None);
    }
    let (tx, rx) = std::sync::mpsc::channel::<Result<bool, NodeError>>();
    let (kube, shutdown, registry) = (kube.clone(), shutdown.clone(), registry.clone());
    let failed = tx.clone();
    // The client spawns its request buffer on the runtime that builds it: build it on the
    // runtime that drives it.
    let thread = crate::thread::spawn_with_runtime(
        "node-publisher",
        move |e| {
            let _ = failed.send(Err(NodeError::Start(e)));
        },
        move || async move {
            let prepared = async {
                let Some(client) = crate::kube::connect(&kube).await? else {
                    return Ok(None);
                };
                let identity = Identity::from_settings(&kube)?;
                let metrics = NodeMetrics::register(&registry)?;
                Ok::<_, NodeError>(Some((client, identity, metrics)))
            };
            match prepared.await {
                Ok(Some((client, identity, metrics))) => {
                    let _ = tx.send(Ok(true));
                    publish::run(client, identity, settings, inputs, metrics, shutdown).await;
                }
                Ok(None) => {
                    let _ = tx.send(Ok(false));
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        },
    )
    .map_err(NodeError::Start)?;
    let started = rx.recv().unwrap_or_else(|_| {
        Err(NodeError::Start(std::io::Error::other(
            "the node publisher thread ended before connecting",
        )))
    });
    match started {
        Ok(true) => Ok(Some(NodePublisher { thread })),
        Ok(false) => {
            let _ = thread.join();
            tracing::info!(
                "running standalone: no kubeconfig and not in a pod; rings and metrics only"
            );
            Ok(None)
        }
        Err(e) => {
            let _ = thread.join();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_parse() {
        NodeSettings::default().validate("node").expect("defaults");
        let s: NodeSettings = toml::from_str(
            "group = \"line-1\"\ncritical_streams = [\"cam0\"]\nhold_down_secs = 120\n",
        )
        .expect("parse");
        assert_eq!(s.hold_down_secs, 120.0);
        s.validate("node").expect("valid");
        s.validate_streams("node", &["cam0", "gps0"])
            .expect("known");
        let e = s.validate_streams("node", &["gps0"]).expect_err("unknown");
        assert!(e.starts_with("node.critical_streams names \"cam0\""), "{e}");
        assert!(toml::from_str::<NodeSettings>("holddown = 1\n").is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let bad = |f: fn(&mut NodeSettings)| {
            let mut s = NodeSettings::default();
            f(&mut s);
            let e = s.validate("node").expect_err("invalid");
            assert!(!e.contains('\n'), "{e}");
            e
        };
        assert!(bad(|s| s.group = "a/b".into()).starts_with("node.group = \"a/b\""));
        assert!(bad(|s| s.hold_down_secs = -1.0).starts_with("node.hold_down_secs = -1"));
        assert!(bad(|s| s.heartbeat_secs = 0.0).starts_with("node.heartbeat_secs = 0"));
        assert!(bad(|s| s.lease_duration_secs = 6).starts_with("node.lease_duration_secs = 6"));
        assert!(bad(|s| s.critical_streams = vec!["a".into(), "a".into()])
            .starts_with("node.critical_streams"));
        assert!(bad(|s| s.retry_max_secs = 0.1).starts_with("node.retry_max_secs must be"));
    }
}

//! `edgeplex run`: the agent. Starts one thread per configured stream, each supervising its
//! device and ring, plus the power watcher, the node publisher and the metrics endpoint, and
//! drains them on SIGTERM or SIGINT within the grace period.
//!
//! Capture threads never wait on anything but their device; everything else the agent does
//! (metrics, Kubernetes) runs beside them, never in their path. `edgeplex demo` is this same
//! agent with a configuration of synthetic streams.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{Config, ConfigError};
use crate::ring::{self, CreateOptions};
use crate::shutdown::Shutdown;
use crate::source::{Backoff, HealthSnapshot, RingTarget, StreamHealth, StreamSet};

/// Why the agent could not start (configuration errors aside, which are [`ConfigError`]s).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A setting that can only be checked on this machine is wrong (exit 64).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// A stream's thread could not be started (the process is out of threads or memory).
    #[error("stream {stream}: cannot start its thread: {source}")]
    Spawn {
        /// The stream.
        stream: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The power watcher's thread could not be started.
    #[error("cannot start the power watcher: {0}")]
    Power(#[source] std::io::Error),
    /// The metrics registry refused a metric (a bug).
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The metrics endpoint could not listen (exit 64: pick another address).
    #[error("metrics.listen = {addr}: cannot serve: {source}; pick another address, or \"\" to disable the endpoint")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The node publisher could not start.
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
    /// The device plugin could not start.
    #[error(transparent)]
    DevicePlugin(#[from] crate::deviceplugin::DevicePluginError),
    /// The runtime that reads this node's labels could not be started.
    #[error("cannot start the runtime that reads this node's labels: {0}")]
    Runtime(#[source] std::io::Error),
    /// Discovery could not start (the device root cannot be watched).
    #[error(transparent)]
    Discovery(#[from] crate::discovery::live::LiveError),
}

impl AgentError {
    /// Whether the user fixes this in the configuration (exit 64).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            AgentError::Config(_)
                | AgentError::Listen { .. }
                | AgentError::Node(crate::node::NodeError::Kube(_))
                | AgentError::DevicePlugin(
                    crate::deviceplugin::DevicePluginError::Config(_)
                        | crate::deviceplugin::DevicePluginError::Dir { .. }
                )
        )
    }
}

/// How [`run`] runs besides what the configuration says.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop after this long (`edgeplex demo --duration`); `None` runs until SIGTERM/SIGINT.
    pub stop_after: Option<Duration>,
    /// A metrics endpoint that cannot listen is a warning, not an error (the demo).
    pub metrics_optional: bool,
}

/// What [`run`] reports once everything has started.
#[derive(Debug)]
pub struct Started<'a> {
    /// Every stream's health, in configuration order.
    pub streams: &'a [StreamHealth],
    /// Where the metrics endpoint listens, if it does.
    pub metrics: Option<SocketAddr>,
}

/// Check the ring directory as [`prepare_ring_dir`] would, without creating or changing
/// anything (`run --check`): a missing directory must be creatable on tmpfs.
pub fn check_ring_dir(config: &Config) -> Result<(), ConfigError> {
    ring::RingDir::check_path(&config.ring.dir, config.ring.allow_disk)
        .map_err(|e| ConfigError(format!("ring.dir: {e}")))
}

/// Check the ring directory before any stream starts, so a bad one is a config error (exit 64).
pub fn prepare_ring_dir(
    config: &Config,
) -> Result<(std::sync::Arc<ring::RingDir>, CreateOptions), ConfigError> {
    // Created when missing; refused unless only this uid can write it (and on tmpfs).
    let dir = ring::RingDir::create(&config.ring.dir, config.ring.allow_disk)
        .map_err(|e| ConfigError(format!("ring.dir: {e}")))?;
    match dir.sweep() {
        Ok(0) => {}
        Ok(freed) => tracing::info!(freed_bytes = freed, "removed leftover temporary ring files"),
        Err(e) => tracing::warn!(error = %e, "cannot sweep the ring directory"),
    }
    let options = CreateOptions {
        mode: config.ring.mode.bits(),
        group: config.ring.group.map(|g| g.0),
        allow_disk: config.ring.allow_disk,
    };
    Ok((std::sync::Arc::new(dir), options))
}

/// The agent's streams: their health, and their threads once started.
#[derive(Debug)]
pub struct Agent {
    /// Health of every stream, in configuration order.
    pub streams: Vec<StreamHealth>,
    threads: Vec<(String, JoinHandle<()>)>,
    shutdown: Shutdown,
    grace: Duration,
}

impl Agent {
    /// Check the ring directory and start every stream of `config`. Streams stop when
    /// `shutdown` is triggered.
    pub fn start(config: &Config, shutdown: &Shutdown) -> Result<Agent, AgentError> {
        let mut agent = Agent::new(config, shutdown);
        let ring_dir = prepare_ring_dir(config)?;
        agent.start_streams(config, ring_dir)?;
        Ok(agent)
    }

    /// The streams' health, before any thread starts.
    fn new(config: &Config, shutdown: &Shutdown) -> Agent {
        Agent {
            streams: config
                .streams
                .iter()
                .map(|(name, s)| StreamHealth::new(name, s.type_name(), s.class()))
                .collect(),
            threads: Vec::new(),
            shutdown: shutdown.clone(),
            grace: Duration::from_secs_f64(config.agent.grace_period_secs),
        }
    }

    fn start_streams(
        &mut self,
        config: &Config,
        (dir, options): (std::sync::Arc<ring::RingDir>, CreateOptions),
    ) -> Result<(), AgentError> {
        let backoff = Backoff::new(
            Duration::from_secs_f64(config.agent.retry_initial_secs),
            Duration::from_secs_f64(config.agent.retry_max_secs),
        );
        if config.streams.is_empty() {
            tracing::warn!("no streams configured; add [stream.NAME] sections to the config");
        }
        for ((name, stream), health) in config.streams.iter().zip(&self.streams) {
            let target = RingTarget {
                path: ring_path(&config.ring.dir, name),
                options: options.clone(),
                dir: Some(dir.clone()),
            };
            let thread = stream
                .spawn(name, target, health, &self.shutdown, &backoff)
                .map_err(|source| AgentError::Spawn {
                    stream: name.clone(),
                    source,
                })?;
            self.threads.push((name.clone(), thread));
        }
        Ok(())
    }

    /// Stop every stream and wait for them within the grace period.
    pub fn drain(self) {
        self.shutdown.trigger();
        let deadline = Instant::now() + self.grace;
        for (name, thread) in self.threads {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::warn!(stream = %name, grace_secs = self.grace.as_secs_f64(), "stream did not stop within the grace period; exiting anyway");
            }
        }
        tracing::info!("agent stopped");
    }
}

/// Run the agent with `config` until SIGTERM/SIGINT (or `options.stop_after`). `on_start` is
/// called once everything runs. Returns the streams' final health.
///
/// Order matters: everything that can fail on a setting (the ring directory, the metrics
/// address, the Kubernetes connection) is checked before the first ring is written, so a bad
/// setting never leaves rings behind with a dead writer.
pub fn run(
    config: &Config,
    options: &RunOptions,
    on_start: impl FnOnce(&Started<'_>),
) -> Result<Vec<HealthSnapshot>, AgentError> {
    let shutdown = Shutdown::install().map_err(AgentError::Signals)?;
    // Only this node's streams exist from here on: nothing else opens, labels, advertises or
    // waits for a stream that does not run on this node.
    let Some(selected) = select_streams(config, &shutdown)? else {
        return Ok(Vec::new()); // stopped while waiting for this node's labels
    };
    let config = &selected;
    let mut agent = Agent::new(config, &shutdown);
    let ring_dir = prepare_ring_dir(config)?;
    let power =
        crate::power::watch::spawn(config.power.clone(), &shutdown).map_err(AgentError::Power)?;
    let registry = crate::metrics::new_registry()?;
    // Configured streams now; discovered ones join and leave while the agent runs. Metrics,
    // node publisher and device plugin all follow this one set.
    let set = StreamSet::new(agent.streams.clone());
    let metrics = match config.metrics.listen.addr() {
        None => None,
        Some(addr) => match serve_metrics(
            addr,
            &registry,
            &set,
            &agent.streams,
            &required_streams(config),
            &power,
            &shutdown,
        ) {
            Ok(bound) => {
                tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz");
                Some(bound)
            }
            Err(e) if options.metrics_optional => {
                tracing::warn!(error = %e, "metrics endpoint not started");
                None
            }
            Err(e) => return Err(e),
        },
    };
    // Kubernetes runs on its own thread and runtime; an API-server outage never reaches capture.
    let inputs = {
        let set = set.clone();
        crate::node::Inputs::from_fn(move || set.snapshots()).with_power(power.subscribe())
    };
    let publisher = crate::node::start(
        &config.kube,
        config.node.clone(),
        inputs,
        &registry,
        &shutdown,
    )?;
    // The device plugin too: the kubelet never reaches capture.
    let plugin =
        crate::deviceplugin::follow(&config.device_plugin, &config.ring.dir, &set, &shutdown)?;
    agent.start_streams(config, ring_dir.clone())?;
    let discovery = start_discovery(config, &set, ring_dir, &registry, &shutdown)?;
    tracing::info!(
        ring_dir = %config.ring.dir.display(),
        streams = agent.streams.len(),
        discovered = set.len() - agent.streams.len(),
        version = env!("CARGO_PKG_VERSION"),
        "agent running"
    );
    on_start(&Started {
        streams: &agent.streams,
        metrics,
    });
    match options.stop_after {
        Some(d) => {
            shutdown.sleep_until(Instant::now() + d);
        }
        None => shutdown.wait(),
    }
    let streams = agent.streams.clone();
    agent.drain();
    if let Some(d) = discovery {
        d.join();
    }
    if let Some(p) = publisher {
        p.join();
    }
    if let Some(p) = plugin {
        p.join();
    }
    Ok(streams.iter().map(StreamHealth::snapshot).collect())
}

/// This node's part of `config`: only the streams whose `nodes` and `node_selector` select this
/// node (docs/fleet.md), and only those of the critical streams. The node's name comes from
/// `kube.node_name`, `NODE_NAME` or the host name; its labels, needed only when some stream has
/// a `node_selector`, from this node's own Node object, read once. Until that read succeeds
/// (the API server may be down at boot) no stream starts; it is retried with backoff. `Ok(None)`
/// when shutdown came first. A stream with neither key runs everywhere, and a configuration
/// without either key never needs the node's name.
pub fn select_streams(config: &Config, shutdown: &Shutdown) -> Result<Option<Config>, AgentError> {
    let placed = config
        .streams
        .values()
        .any(|s| !s.common.nodes.is_empty() || s.common.needs_labels());
    if !placed {
        return Ok(Some(config.clone()));
    }
    let node = config.kube.resolve_node_name().map_err(|e| {
        ConfigError(format!(
            "choosing this node's streams (stream.*.nodes, stream.*.node_selector): {e}"
        ))
    })?;
    let labels = match config.stream_needing_labels() {
        None => BTreeMap::new(),
        Some(stream) => match node_labels(config, &node, stream, shutdown)? {
            Some(labels) => labels,
            None => return Ok(None),
        },
    };
    let mut selected = config.clone();
    let left_out = selected.select_for_node(&node, &labels);
    tracing::info!(
        node = %node,
        streams = ?selected.streams.keys().collect::<Vec<_>>(),
        not_on_this_node = ?left_out,
        "selected this node's streams"
    );
    Ok(Some(selected))
}

/// The labels of Node `node`, read through the configured Kubernetes client, retried with the
/// node publisher's backoff until they come or `shutdown` (`Ok(None)`).
fn node_labels(
    config: &Config,
    node: &str,
    stream: &str,
    shutdown: &Shutdown,
) -> Result<Option<BTreeMap<String, String>>, AgentError> {
    let no_cluster = |why: &str| {
        AgentError::Config(ConfigError(format!(
            "stream.{stream}.node_selector needs this node's labels from Kubernetes, but {why}; select by name instead (stream.{stream}.nodes = [\"{node}\"]) or connect to the cluster ([kube])"
        )))
    };
    if config.kube.mode == crate::kube::KubeMode::Off {
        return Err(no_cluster("kube.mode = \"off\""));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    // The client is built on the runtime that drives it (see crate::kube::connect_as).
    rt.block_on(async {
        let client = crate::kube::connect(&config.kube)
            .await
            .map_err(|e| AgentError::Node(e.into()))?
            .ok_or_else(|| no_cluster("no kubeconfig was found and this is not a pod"))?;
        let nodes: ::kube::Api<k8s_openapi::api::core::v1::Node> = ::kube::Api::all(client);
        let timeout = Duration::try_from_secs_f64(config.kube.request_timeout_secs)
            .unwrap_or(Duration::from_secs(10));
        let mut backoff = Backoff::new(
            Duration::try_from_secs_f64(config.node.retry_initial_secs)
                .unwrap_or(Duration::from_millis(500)),
            Duration::try_from_secs_f64(config.node.retry_max_secs)
                .unwrap_or(Duration::from_secs(30)),
        );
        let mut failing = false;
        loop {
            let why = tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                got = tokio::time::timeout(timeout, nodes.get(node)) => match got {
                    Ok(Ok(n)) => {
                        if failing {
                            tracing::info!(node, "read this node's labels");
                        }
                        return Ok(Some(n.metadata.labels.unwrap_or_default()));
                    }
                    Ok(Err(::kube::Error::Api(s))) if s.code == 404 => format!(
                        "node {node:?} does not exist (yet); set kube.node_name (or NODE_NAME) to the name `kubectl get nodes` shows"
                    ),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {} s", timeout.as_secs_f64()),
                },
            };
            if !failing {
                tracing::warn!(
                    node,
                    error = %why,
                    "cannot read this node's labels to choose its streams; no stream starts until they are read; retrying with backoff"
                );
                failing = true;
            }
            if !shutdown.sleep(backoff.next_delay()).await {
                return Ok(None);
            }
        }
    })
}

/// Start the discovery loop when `[discovery]` has rules: it adds discovered streams to `set`
/// and removes them. `None` without rules (nothing is watched).
fn start_discovery(
    config: &Config,
    set: &StreamSet,
    (dir, options): (std::sync::Arc<ring::RingDir>, CreateOptions),
    registry: &prometheus::Registry,
    shutdown: &Shutdown,
) -> Result<Option<crate::discovery::live::Discovery>, AgentError> {
    use crate::discovery::live;
    if config.discovery.rules.is_empty() {
        return Ok(None);
    }
    let live = live::Live {
        roots: config.discovery.roots(),
        caps: Box::new(crate::discovery::V4l2Caps),
        settings: config.discovery.clone(),
        explicit: config.stream_configs(),
        set: set.clone(),
        ring_dir: dir,
        ring_path: config.ring.dir.clone(),
        ring_options: options,
        backoff: Backoff::new(
            Duration::from_secs_f64(config.agent.retry_initial_secs),
            Duration::from_secs_f64(config.agent.retry_max_secs),
        ),
        drain: Duration::from_secs_f64(config.agent.grace_period_secs),
        metrics: Some(live::LiveMetrics::register(registry)?),
    };
    Ok(Some(live::start(live, shutdown)?))
}

/// The ring path of stream `name` under `dir`: `<dir>/<name>/<name>.ring`.
pub fn ring_path(dir: &Path, name: &str) -> PathBuf {
    ring::ring_path(dir, name)
}

/// Serve `/metrics` for the streams of `set`, and `/healthz` and `/readyz` on `addr`, on the
/// endpoint's own thread. `/readyz` waits only for those of `configured` named in `required`: an
/// optional stream, or a discovered device that is absent, never makes the agent unready.
/// Returns the bound address.
#[allow(clippy::too_many_arguments)]
pub fn serve_metrics(
    addr: SocketAddr,
    registry: &prometheus::Registry,
    set: &StreamSet,
    configured: &[StreamHealth],
    required: &[String],
    power: &crate::power::watch::PowerState,
    shutdown: &Shutdown,
) -> Result<SocketAddr, AgentError> {
    let registry = registry.clone();
    let exporter = crate::metrics::StreamExporter::register(&registry, set.clone())?;
    let power = crate::metrics::PowerExporter::register(&registry, power.clone())?;
    let ready_streams = configured.to_vec();
    let required: Vec<String> = required.to_vec();
    let endpoint = crate::http::Endpoint {
        registry,
        refresh: Box::new(move || {
            exporter.refresh();
            power.refresh();
        }),
        readiness: Box::new(move || {
            let required: Vec<StreamHealth> = ready_streams
                .iter()
                .filter(|s| required.iter().any(|r| r == s.name()))
                .cloned()
                .collect();
            readiness(&required)
        }),
    };
    crate::http::spawn(addr, endpoint, shutdown.clone())
        .map_err(|source| AgentError::Listen { addr, source })
}

/// The streams `/readyz` waits for: those marked `required`.
pub fn required_streams(config: &Config) -> Vec<String> {
    config
        .streams
        .iter()
        .filter(|(_, s)| s.common.required)
        .map(|(name, _)| name.clone())
        .collect()
}

/// Ready when every stream in `streams` (the required ones) has started and its device is up.
pub fn readiness(streams: &[StreamHealth]) -> crate::http::Readiness {
    let problems: Vec<String> = streams
        .iter()
        .map(StreamHealth::snapshot)
        .filter(|s| !(s.started && s.up))
        .map(|s| match (s.started, s.last_error) {
            (false, _) => format!("stream {}: not started", s.name),
            (true, Some(e)) => format!("stream {}: down: {e}", s.name),
            (true, None) => format!("stream {}: opening its device", s.name),
        })
        .collect();
    if problems.is_empty() {
        crate::http::Readiness::Ready
    } else {
        crate::http::Readiness::NotReady(problems)
    }
}

//! `edgeplex run`: the agent. Starts one thread per configured stream, each supervising its
//! device and ring, and drains them on SIGTERM or SIGINT within the grace period.
//!
//! Capture threads never wait on anything but their device; everything else the agent does
//! (metrics, Kubernetes) must run beside them, never in their path.

use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::{Config, ConfigError, StreamConfig};
use crate::ring::{self, CreateOptions};
use crate::shutdown::Shutdown;
use crate::source::camera::CameraOpener;
use crate::source::serial::SerialOpener;
use crate::source::synthetic::{NmeaSimOpener, TestPatternOpener};
use crate::source::{supervise, Backoff, Opener, RingTarget, StreamHealth};

/// A running agent: its streams' health, for the rest of the process to look at.
#[derive(Debug)]
pub struct Agent {
    /// Health of every stream, in configuration order.
    pub streams: Vec<StreamHealth>,
    threads: Vec<(String, JoinHandle<()>)>,
    shutdown: Shutdown,
    grace: Duration,
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
        mode: config.ring_mode()?,
        group: config.ring_group()?,
        allow_disk: config.ring.allow_disk,
    };
    Ok((std::sync::Arc::new(dir), options))
}

impl Agent {
    /// Start every stream of `config`. Stops when `shutdown` is triggered.
    pub fn start(config: &Config, shutdown: &Shutdown) -> Result<Agent, ConfigError> {
        let (dir, options) = prepare_ring_dir(config)?;
        let backoff = Backoff::new(
            Duration::from_secs_f64(config.agent.retry_initial_secs),
            Duration::from_secs_f64(config.agent.retry_max_secs),
        );
        let mut agent = Agent {
            streams: Vec::new(),
            threads: Vec::new(),
            shutdown: shutdown.clone(),
            grace: Duration::from_secs_f64(config.agent.grace_period_secs),
        };
        if config.streams.is_empty() {
            tracing::warn!("no streams configured; add [stream.NAME] sections to the config");
        }
        for (name, stream) in &config.streams {
            let target = RingTarget {
                path: ring_path(&config.ring.dir, name),
                options: options.clone(),
                dir: Some(dir.clone()),
            };
            let health = StreamHealth::new(name, stream.type_name());
            let thread = match stream {
                StreamConfig::Camera(s) => spawn(
                    CameraOpener::new(name, s.clone()),
                    target,
                    &health,
                    shutdown,
                    &backoff,
                ),
                StreamConfig::Serial(s) => spawn(
                    SerialOpener::new(name, s.clone()),
                    target,
                    &health,
                    shutdown,
                    &backoff,
                ),
                StreamConfig::TestPattern(s) => spawn(
                    TestPatternOpener::new(name, s.clone()),
                    target,
                    &health,
                    shutdown,
                    &backoff,
                ),
                StreamConfig::NmeaSim(s) => spawn(
                    NmeaSimOpener::new(name, s.clone()),
                    target,
                    &health,
                    shutdown,
                    &backoff,
                ),
            };
            let thread = thread
                .map_err(|e| ConfigError(format!("stream.{name}: cannot start its thread: {e}")))?;
            agent.streams.push(health);
            agent.threads.push((name.clone(), thread));
        }
        Ok(agent)
    }

    /// Wait for shutdown, then for the streams to drain within the grace period.
    pub fn wait(self) {
        while self
            .shutdown
            .sleep_until(Instant::now() + Duration::from_secs(3600))
        {}
        self.drain();
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

fn spawn<O: Opener + 'static>(
    opener: O,
    target: RingTarget,
    health: &StreamHealth,
    shutdown: &Shutdown,
    backoff: &Backoff,
) -> std::io::Result<JoinHandle<()>> {
    let (health, shutdown, backoff) = (health.clone(), shutdown.clone(), backoff.clone());
    std::thread::Builder::new()
        .name(format!("stream-{}", health.name()))
        .spawn(move || supervise(opener, &target, &health, &shutdown, backoff))
}

/// `edgeplex run` with an already loaded configuration: run until SIGTERM/SIGINT.
pub fn run(config: &Config, stop_after: Option<Duration>) -> anyhow::Result<()> {
    let shutdown = Shutdown::install().context("install signal handlers")?;
    let agent = Agent::start(config, &shutdown)?;
    let power = crate::power::watch::spawn(config.power.clone(), &shutdown)
        .context("start the power watcher")?;
    let registry = crate::metrics::new_registry().context("build the metrics registry")?;
    // Kubernetes runs on its own thread and runtime; an API-server outage never reaches capture.
    let inputs = crate::node::Inputs::new(agent.streams.clone()).with_power(power.subscribe());
    let publisher = crate::node::start(
        &config.kube,
        config.node.clone(),
        inputs,
        &registry,
        &shutdown,
    )
    .map_err(|e| match e {
        crate::node::NodeError::Kube(k) => anyhow::Error::from(ConfigError(format!("kube: {k}"))),
        e => anyhow::Error::from(e).context("start the node publisher"),
    })?;
    if !config.metrics.listen.is_empty() {
        let addr = config.metrics_addr()?;
        let bound = serve_metrics(addr, &registry, &agent.streams, &power, &shutdown)
            .map_err(|e| ConfigError(format!("metrics.listen = {addr}: cannot serve: {e:#}")))?;
        tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz");
    }
    tracing::info!(
        ring_dir = %config.ring.dir.display(),
        streams = agent.streams.len(),
        version = env!("CARGO_PKG_VERSION"),
        "agent running"
    );
    if let Some(d) = stop_after {
        shutdown.sleep_until(Instant::now() + d);
    }
    agent.wait();
    if let Some(p) = publisher {
        p.join();
    }
    Ok(())
}

/// The ring path of stream `name` under `dir`: `<dir>/<name>/<name>.ring`.
pub fn ring_path(dir: &Path, name: &str) -> std::path::PathBuf {
    ring::ring_path(dir, name)
}

/// Serve `/metrics`, `/healthz` and `/readyz` for `streams` on `addr`, on the endpoint's own
/// thread. Returns the bound address.
pub fn serve_metrics(
    addr: std::net::SocketAddr,
    registry: &prometheus::Registry,
    streams: &[StreamHealth],
    power: &crate::power::watch::PowerState,
    shutdown: &Shutdown,
) -> anyhow::Result<std::net::SocketAddr> {
    let registry = registry.clone();
    let exporter = crate::metrics::StreamExporter::register(&registry, streams.to_vec())
        .context("register stream metrics")?;
    let power = crate::metrics::PowerExporter::register(&registry, power.clone())
        .context("register battery metrics")?;
    let ready_streams = streams.to_vec();
    let endpoint = crate::http::Endpoint {
        registry,
        refresh: Box::new(move || {
            exporter.refresh();
            power.refresh();
        }),
        readiness: Box::new(move || readiness(&ready_streams)),
    };
    Ok(crate::http::spawn(addr, endpoint, shutdown.clone())?)
}

/// Ready when every configured stream has started and its device is up.
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

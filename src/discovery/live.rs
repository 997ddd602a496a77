//! Discovery while the agent runs: devices that arrive become streams, devices that leave take
//! their streams down at once and, after `discovery.grace_secs`, out of the agent's
//! [`StreamSet`] (so out of the node's labels and annotation, the device plugin's resources and
//! the metrics).
//!
//! The loop runs on its own thread with its own tokio runtime. It learns of changes from
//! [`DevWatch`] (inotify on the device root, no polling), probes the node that changed with
//! [`probe_one`] (attributes from `/sys`; capabilities by `VIDIOC_QUERYCAP`), keeps the probes
//! of every node it knows, and after each change runs the rule engine's [`plan_keeping`] over
//! them all (claims of explicit streams resolved again each time; the streams it holds keep
//! their places under `max_streams`) and acts on the difference:
//!
//! - a planned stream that is not running starts: a [`StreamHealth`] joins the set and its
//!   supervised capture thread starts on the ring `<ring_dir>/<stream>/<stream>.ring`, created
//!   or reopened (epoch + 1, message numbers continue);
//! - a running stream that is no longer planned (its node left) is marked down at once and its
//!   thread stopped (releasing the device and the ring's lock); it stays in the set, down, for
//!   the grace period; if it is planned again in that time it restarts with the same health (a
//!   short gap to readers), else it leaves the set;
//! - a running stream whose planned settings changed (another path, say a by-id link that
//!   appeared) restarts on the new ones.
//!
//! A probe that fails in a way that can be a race with the kernel or udev (the node is not
//! registered yet, its permissions are not fixed yet) is retried a few times, shortly after.
//! Explicit streams are never touched here. This module must not block capture threads: it only
//! starts and stops them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::watch::{Change, DevWatch};
use super::{plan_keeping, probe_one, resolve_claims, scan, CapsProbe, DiscoverySettings, Outcome};
use super::{Planned, Probe, Reason, Roots};
use crate::ring::{CreateOptions, RingDir};
use crate::shutdown::Shutdown;
use crate::source::kinds::StreamConfig;
use crate::source::{Backoff, RingTarget, StreamHealth, StreamSet};

/// Retries of a probe that failed in a way a moment may fix, and the first delay (doubling).
const PROBE_RETRIES: u32 = 5;
const PROBE_RETRY_FIRST: Duration = Duration::from_millis(100);
/// How long a restarted stream waits for its previous thread to let go of the device and ring.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Everything the discovery loop needs from the agent.
pub struct Live {
    /// Where sysfs and the device nodes are.
    pub roots: Roots,
    /// How video nodes are asked for their capabilities.
    pub caps: Box<dyn CapsProbe + Send>,
    /// The rules, the limit and the grace period.
    pub settings: DiscoverySettings,
    /// The explicit streams (their devices are never taken by a rule).
    pub explicit: BTreeMap<String, StreamConfig>,
    /// The agent's streams; discovered ones are added and removed here.
    pub set: StreamSet,
    /// The ring directory, its path and the ring files' options.
    pub ring_dir: Arc<RingDir>,
    /// The ring directory's path.
    pub ring_path: PathBuf,
    /// File mode, group, disk policy of new rings.
    pub ring_options: CreateOptions,
    /// Each stream's reopen backoff.
    pub backoff: Backoff,
    /// How long a stopping stream's thread may take at shutdown.
    pub drain: Duration,
    /// What happened, for metrics.
    pub metrics: Option<LiveMetrics>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("roots", &self.roots)
            .field("rules", &self.settings.rules.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The running discovery loop.
#[derive(Debug)]
pub struct Discovery {
    thread: JoinHandle<()>,
}

impl Discovery {
    /// Wait for the loop to end (trigger the shutdown first); it stops its streams first.
    pub fn join(self) {
        let _ = self.thread.join();
    }

    /// Whether the loop has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The device root cannot be watched.
    #[error("discovery: cannot watch {dir} for devices (inotify): {error}; in a container, mount the host's /dev; in the snap, connect hardware-observe")]
    Watch {
        /// The device root.
        dir: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The thread or its runtime could not be started.
    #[error("discovery: cannot start its thread: {0}")]
    Start(std::io::Error),
}

/// Start the loop on its own thread: an initial scan, then events. Returns once the device root
/// is watched (so a device that arrives after this returns is seen) and the initial scan's
/// streams are started.
pub fn start(live: Live, shutdown: &Shutdown) -> Result<Discovery, LiveError> {
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), LiveError>>();
    let shutdown = shutdown.clone();
    let failed = tx.clone();
    let thread = crate::thread::spawn_with_runtime(
        "discovery",
        move |e| {
            let _ = failed.send(Err(LiveError::Start(e)));
        },
        move || {
            let span = tracing::info_span!("discovery", dev = %live.roots.dev.display());
            tracing::Instrument::instrument(
                async move {
                    let watch = match DevWatch::new(&live.roots.dev) {
                        Ok(w) => w,
                        Err(error) => {
                            let _ = tx.send(Err(LiveError::Watch {
                                dir: live.roots.dev.clone(),
                                error,
                            }));
                            return;
                        }
                    };
                    let mut state = State::new(live, shutdown.clone());
                    state.rescan();
                    state.apply(Instant::now()).await;
                    let _ = tx.send(Ok(()));
                    state.run(watch).await;
                },
                span,
            )
        },
    )
    .map_err(LiveError::Start)?;
    match rx.recv() {
        Ok(Ok(())) => Ok(Discovery { thread }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(LiveError::Start(std::io::Error::other(
                "the discovery thread ended before it started",
            )))
        }
    }
}

/// One discovered stream the loop started.
struct Entry {
    health: StreamHealth,
    planned: Planned,
    /// Its capture thread and that thread's own stop, while it runs.
    thread: Option<(JoinHandle<()>, Shutdown)>,
    /// Since when its device has been gone (it is down, in its grace period).
    gone_since: Option<Instant>,
}

impl Entry {
    /// Its thread runs and has not been asked to stop.
    fn running(&self) -> bool {
        self.thread
            .as_ref()
            .is_some_and(|(_, stop)| !stop.requested())
    }

    /// Ask its thread to stop (it lets go of the device and the ring within moments).
    fn stop(&self) {
        if let Some((_, stop)) = &self.thread {
            stop.trigger();
        }
    }
}

struct State {
    live: Live,
    shutdown: Shutdown,
    /// The last probe of every candidate node, by node name.
    probes: BTreeMap<String, Probe>,
    /// Nodes to probe again, when, and how many tries are left.
    retries: BTreeMap<String, (Instant, u32, Duration)>,
    entries: BTreeMap<String, Entry>,
    /// Re-plan at this time (a stream that could not restart yet).
    replan_at: Option<Instant>,
}

impl State {
    fn new(live: Live, shutdown: Shutdown) -> State {
        State {
            live,
            shutdown,
            probes: BTreeMap::new(),
            retries: BTreeMap::new(),
            entries: BTreeMap::new(),
            replan_at: None,
        }
    }

    async fn run(mut self, mut watch: DevWatch) {
        let mut watching = true;
        loop {
            let deadline = self.next_deadline();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                changes = watch.next(), if watching => match changes {
                    Ok(changes) => {
                        for c in changes {
                            if let Some(m) = &self.live.metrics {
                                m.event(&c);
                            }
                            self.change(c);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read device events any more; devices that arrive or leave from now on are not noticed until the agent restarts");
                        watching = false;
                    }
                },
                _ = sleep => {}
            }
            self.retry_due(Instant::now());
            self.apply(Instant::now()).await;
        }
        self.stop_all().await;
    }

    /// The earliest time something is due: a probe retry, a grace period's end, a re-plan.
    fn next_deadline(&self) -> Option<Instant> {
        let grace = self.grace();
        let graces = self
            .entries
            .values()
            .filter_map(|e| e.gone_since.map(|t| t + grace));
        let retries = self.retries.values().map(|(at, _, _)| *at);
        graces.chain(retries).chain(self.replan_at).min()
    }

    fn grace(&self) -> Duration {
        Duration::try_from_secs_f64(self.live.settings.grace_secs).unwrap_or(Duration::ZERO)
    }

    fn rescan(&mut self) {
        match scan(&self.live.roots, self.live.caps.as_ref()) {
            Ok(probes) => {
                self.probes = probes.into_iter().map(|p| (p.name.clone(), p)).collect();
                let retry: Vec<String> = self
                    .probes
                    .values()
                    .filter(|p| may_settle(p))
                    .map(|p| p.name.clone())
                    .collect();
                for name in retry {
                    self.schedule_retry(&name);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot scan for devices"),
        }
    }

    fn change(&mut self, change: Change) {
        match change {
            Change::Rescan => self.rescan(),
            Change::Node(name) | Change::Changed(name) => {
                let Some(name) = name.to_str() else { return };
                self.probe(name, None);
            }
            Change::Removed(name) => {
                let Some(name) = name.to_str() else { return };
                self.retries.remove(name);
                if self.probes.remove(name).is_some() {
                    tracing::debug!(node = name, "device node removed");
                }
            }
        }
    }

    /// Probe `name` and remember the result if it is a candidate node at all.
    fn probe(&mut self, name: &str, retry: Option<(u32, Duration)>) {
        let p = probe_one(&self.live.roots, self.live.caps.as_ref(), name);
        if matches!(p.result, Err(Reason::Unknown(_))) {
            // Not a camera or serial node (a disk, a tty without a device): not ours to track.
            self.probes.remove(name);
            self.retries.remove(name);
            return;
        }
        let settle = may_settle(&p);
        match &p.result {
            Ok(d) => tracing::debug!(node = name, kind = d.kind.as_str(), "device probed"),
            Err(r) => tracing::debug!(node = name, reason = %r, "node probed; not a device (yet)"),
        }
        self.probes.insert(name.to_owned(), p);
        if settle {
            match retry {
                Some((0, _)) => {
                    self.retries.remove(name);
                }
                Some((left, delay)) => {
                    self.retries
                        .insert(name.to_owned(), (Instant::now() + delay, left, delay * 2));
                }
                None => self.schedule_retry(name),
            }
        } else {
            self.retries.remove(name);
        }
    }

    fn schedule_retry(&mut self, name: &str) {
        self.retries.insert(
            name.to_owned(),
            (
                Instant::now() + PROBE_RETRY_FIRST,
                PROBE_RETRIES,
                PROBE_RETRY_FIRST * 2,
            ),
        );
    }

    fn retry_due(&mut self, now: Instant) {
        let due: Vec<(String, u32, Duration)> = self
            .retries
            .iter()
            .filter(|(_, (at, _, _))| *at <= now)
            .map(|(n, (_, left, next))| (n.clone(), *left, *next))
            .collect();
        for (name, left, next) in due {
            self.retries.remove(&name);
            self.probe(&name, Some((left - 1, next)));
        }
    }

    /// Plan over the current probes and bring the running streams in line.
    async fn apply(&mut self, now: Instant) {
        self.replan_at = None;
        let claims = resolve_claims(&self.live.roots, &self.live.explicit);
        let probes: Vec<Probe> = self.probes.values().cloned().collect();
        // Streams already running or in their grace period keep their places under
        // max_streams: a device plugged in later never pushes one out.
        let held: Vec<String> = self.entries.keys().cloned().collect();
        let mut outcomes = plan_keeping(&self.live.settings, &probes, &claims, &held);
        // A stream in its grace period whose device is still away keeps its place too, so a
        // replug finds it free and no other device starts only to be stopped again.
        let away = self
            .entries
            .keys()
            .filter(|name| {
                !outcomes
                    .iter()
                    .any(|o| matches!(o, Outcome::Stream(p) if &p.name == *name))
            })
            .count() as u32;
        if away > 0 {
            let mut settings = self.live.settings.clone();
            settings.max_streams = settings.max_streams.saturating_sub(away);
            outcomes = plan_keeping(&settings, &probes, &claims, &held);
        }
        if let Some(m) = &self.live.metrics {
            m.observe(&self.live.settings, &outcomes);
        }
        let mut wanted: BTreeMap<String, Planned> = BTreeMap::new();
        for o in outcomes {
            if let Outcome::Stream(p) = o {
                wanted.insert(p.name.clone(), p);
            }
        }
        // Streams whose device left, or whose settings changed: stop their threads.
        let grace = self.grace();
        let names: Vec<String> = self.entries.keys().cloned().collect();
        for name in names {
            let keep = wanted.get(&name);
            let e = self.entries.get_mut(&name).expect("listed above");
            let running = e.running();
            match keep {
                Some(p) if running && e.planned.config == p.config => {}
                Some(_) if running => {
                    tracing::info!(stream = %name, "discovered stream's settings changed; restarting it");
                    e.stop();
                }
                Some(_) => {}
                None if e.gone_since.is_none() => {
                    e.stop();
                    e.health.device_removed(&e.planned.device.devnode);
                    e.gone_since = Some(now);
                    tracing::warn!(stream = %name, device = %e.planned.device.devnode.display(), grace_secs = grace.as_secs_f64(), "device left: stream down; it stays labelled and advertised (down) for the grace period, and resumes its ring if the device returns");
                }
                None => {
                    let since = e.gone_since.unwrap_or(now);
                    if now.saturating_duration_since(since) < grace {
                        continue;
                    }
                    let mut e = self.entries.remove(&name).expect("listed above");
                    if let Some((thread, _)) = e.thread.take() {
                        if let Err(thread) = join_within(thread, STOP_WAIT, &name).await {
                            tracing::warn!(stream = %name, "its thread is left behind, still stopping");
                            drop(thread);
                        }
                    }
                    self.live.set.remove(&name);
                    tracing::info!(stream = %name, "device still gone after the grace period: stream no longer labelled or advertised; its ring stays for its return");
                    // Its place under max_streams is free now: plan again at once.
                    self.replan_at = Some(Instant::now());
                }
            }
        }
        // Start what is wanted and not running (after its previous thread let go).
        for (name, p) in wanted {
            if let Some(e) = self.entries.get_mut(&name) {
                if e.running() {
                    continue;
                }
                if let Some((thread, stop)) = e.thread.take() {
                    if let Err(thread) = join_within(thread, STOP_WAIT, &name).await {
                        // Still holding the device or ring: try again shortly.
                        e.thread = Some((thread, stop));
                        self.replan_at = Some(Instant::now() + Duration::from_secs(1));
                        continue;
                    }
                }
                let came_back = e.gone_since.take().is_some();
                e.planned = p;
                if came_back {
                    tracing::info!(stream = %name, device = %e.planned.device.devnode.display(), "device back within the grace period: stream resumes its ring");
                }
                self.spawn(&name);
            } else {
                let health = StreamHealth::new(&name, p.config.type_name(), p.config.class());
                tracing::info!(stream = %name, rule = %p.rule, device = %p.device.devnode.display(), path = %p.config_path().display(), "device discovered: starting its stream");
                self.entries.insert(
                    name.clone(),
                    Entry {
                        health: health.clone(),
                        planned: p,
                        thread: None,
                        gone_since: None,
                    },
                );
                self.live.set.insert(health);
                self.spawn(&name);
            }
        }
        if let Some(m) = &self.live.metrics {
            let running = self.entries.values().filter(|e| e.running()).count();
            m.streams(running, self.entries.len() - running);
        }
    }

    fn spawn(&mut self, name: &str) {
        let e = self.entries.get_mut(name).expect("entry exists");
        let stop = self.shutdown.child();
        let target = RingTarget {
            path: crate::ring::ring_path(&self.live.ring_path, name),
            options: self.live.ring_options.clone(),
            dir: Some(self.live.ring_dir.clone()),
        };
        match e
            .planned
            .config
            .spawn(name, target, &e.health, &stop, &self.live.backoff)
        {
            Ok(thread) => e.thread = Some((thread, stop)),
            Err(err) => {
                tracing::error!(stream = %name, error = %err, "cannot start the discovered stream's thread; retrying shortly");
                self.replan_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    /// Stop every discovered stream (at shutdown), waiting for each within the drain time.
    async fn stop_all(&mut self) {
        let deadline = Instant::now() + self.live.drain;
        for (_, e) in std::mem::take(&mut self.entries) {
            if let Some((thread, stop)) = e.thread {
                stop.trigger();
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = join_within(thread, left, e.health.name()).await;
            }
        }
        tracing::info!("discovery stopped");
    }
}

impl Planned {
    /// The device path the stream opens.
    pub fn config_path(&self) -> &Path {
        match &self.config {
            StreamConfig::Camera(c) => &c.device,
            StreamConfig::Serial(s) => &s.device,
            _ => &self.device.devnode,
        }
    }
}

/// A probe that may turn out differently a moment later: the node exists but the kernel has
/// not finished registering it or udev has not fixed its permissions yet.
fn may_settle(p: &Probe) -> bool {
    matches!(
        p.result,
        Err(Reason::CapsUnreadable(_)) | Err(Reason::NoDeviceNode) | Err(Reason::Unreadable(_))
    )
}

/// Wait up to `limit` for `thread` to end; the handle back (and a warning) if it did not.
async fn join_within(
    thread: JoinHandle<()>,
    limit: Duration,
    stream: &str,
) -> Result<(), JoinHandle<()>> {
    let deadline = Instant::now() + limit;
    while !thread.is_finished() {
        if Instant::now() >= deadline {
            tracing::warn!(
                stream,
                limit_secs = limit.as_secs_f64(),
                "stream thread did not stop in time"
            );
            return Err(thread);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = thread.join();
    Ok(())
}

/// The discovery loop's metrics: the rule engine's ([`crate::metrics::DiscoveryMetrics`]) plus
/// `edgeplex_discovery_streams{state}`, discovered streams running or down in their grace
/// period (`gone`).
#[derive(Debug)]
pub struct LiveMetrics {
    plan: crate::metrics::DiscoveryMetrics,
    streams: prometheus::IntGaugeVec,
}

impl LiveMetrics {
    /// Register into `registry`.
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<LiveMetrics> {
        let streams = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "edgeplex_discovery_streams",
                "Discovered streams: running, or down in their grace period (gone).",
            ),
            &["state"],
        )?;
        registry.register(Box::new(streams.clone()))?;
        for state in ["running", "gone"] {
            streams.with_label_values(&[state]).set(0);
        }
        Ok(LiveMetrics {
            plan: crate::metrics::DiscoveryMetrics::register(registry)?,
            streams,
        })
    }

    fn observe(&self, settings: &DiscoverySettings, outcomes: &[Outcome]) {
        self.plan.observe(settings, outcomes);
    }

    fn streams(&self, running: usize, gone: usize) {
        self.streams
            .with_label_values(&["running"])
            .set(running as i64);
        self.streams.with_label_values(&["gone"]).set(gone as i64);
    }

    fn event(&self, change: &Change) {
        self.plan.event(match change {
            Change::Node(_) => "add",
            Change::Removed(_) => "remove",
            Change::Changed(_) | Change::Rescan => "change",
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_roots_are_settings_and_must_be_absolute() {
        let parse =
            |text: &str| DiscoverySettings::from_value(toml::from_str(text).unwrap(), "discovery");
        let d = parse("").unwrap();
        assert_eq!(d.roots(), Roots::default());
        let d = parse("dev = \"/host/dev\"\nsys = \"/host/sys\"").unwrap();
        assert_eq!(d.roots().dev, Path::new("/host/dev"));
        assert_eq!(d.roots().sys, Path::new("/host/sys"));
        let e = parse("dev = \"host/dev\"").unwrap_err().to_string();
        assert!(
            e.contains("discovery.dev = \"host/dev\" must be an absolute path"),
            "{e}"
        );
    }

    #[test]
    fn only_probes_that_a_moment_can_fix_are_retried() {
        let probe = |result| Probe {
            name: "video0".into(),
            devnode: "/dev/video0".into(),
            result,
        };
        assert!(may_settle(&probe(Err(Reason::CapsUnreadable(
            "ENODEV".into()
        )))));
        assert!(may_settle(&probe(Err(Reason::NoDeviceNode))));
        assert!(!may_settle(&probe(Err(Reason::NotCapture {
            device_caps: 0
        }))));
        assert!(!may_settle(&probe(Err(Reason::NoRule))));
    }
}

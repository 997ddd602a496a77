//! The device plugin: serves the kubelet device-plugin API v1beta1 so that pods get rings as
//! extended resources, `edgeplex.io/<stream>: 1`, without `hostPath`.
//!
//! For every stream it owns one gRPC server on a Unix socket in the kubelet's device-plugin
//! directory (`edgeplex-<name>.sock`), registers it with the kubelet (`kubelet.sock`, version
//! `v1beta1`), and advertises `shares` virtual devices (`<name>-0` .. `<name>-<shares-1>`): that
//! many containers on the node may read the stream at once. The devices are `Healthy` while the
//! stream's device is up and `Unhealthy` while it is down ([`StreamHealth`], looked at every
//! [`HEALTH_INTERVAL`]). `Allocate` gives a container the stream's *directory*, read-only, at
//! `/run/edgeplex/<stream>`, and `EDGEPLEX_RING_<STREAM>` naming the ring file inside it: a
//! directory mount, not a file mount, so a geometry change (a new file renamed over the old)
//! is seen inside the container exactly as on the host.
//!
//! When the kubelet restarts it deletes every plugin socket and recreates `kubelet.sock`; the
//! plugin watches the directory with inotify (no polling) and then serves again on fresh
//! sockets and re-registers. The set of streams may change while it runs ([`follow`] the
//! agent's [`StreamSet`], where discovered streams come and go): a stream added to the set is
//! served and registered at once; a stream removed from it first sends an empty device list (so the kubelet drops its capacity at once), then stops
//! serving and removes its socket; sockets left by an earlier run for streams no longer
//! configured are swept at start.
//!
//! It runs on its own thread with its own tokio runtime, like the node publisher, and only
//! reads [`StreamHealth`]: capture never waits on it. It must not read or write ring files; the
//! only file-system writes are its own sockets and, in `Allocate`, creating a missing stream
//! directory so the container's bind mount has a source.

pub mod api;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::shutdown::Shutdown;
use crate::source::{StreamHealth, StreamSet};
use api::device_plugin::device_plugin_server::{self, DevicePluginServer};
use api::registration::registration_client::RegistrationClient;

/// The domain of every resource edgeplex advertises.
pub const RESOURCE_DOMAIN: &str = "edgeplex.io";
/// Where a stream's directory appears inside a container: `/run/edgeplex/<stream>`.
pub const CONTAINER_DIR: &str = "/run/edgeplex";
/// The kubelet's device-plugin directory: a constant in the kubelet (it does not follow
/// `--root-dir`), also on MicroK8s.
pub const DEFAULT_DIR: &str = "/var/lib/kubelet/device-plugins";
/// How often stream health is looked at; a change reaches the kubelet within this.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(250);
/// Prefix of the plugin's socket names in the device-plugin directory.
const SOCKET_PREFIX: &str = "edgeplex-";

/// `[device_plugin]`
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DevicePluginSettings {
    /// Serve the device-plugin API. Off by default: it needs the kubelet's directory.
    pub enabled: bool,
    /// The kubelet's device-plugin directory (holds `kubelet.sock`).
    pub dir: PathBuf,
    /// Containers that may read one stream at once on this node (devices per resource).
    pub shares: u32,
}

impl Default for DevicePluginSettings {
    fn default() -> Self {
        DevicePluginSettings {
            enabled: false,
            dir: PathBuf::from(DEFAULT_DIR),
            shares: 8,
        }
    }
}

impl DevicePluginSettings {
    /// Check the settings and, when enabled, that every stream can be served (see [`validate`]).
    /// `prefix` names the section in errors.
    pub fn validate(&self, prefix: &str, streams: &[&str]) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        let names: Vec<String> = streams.iter().map(|s| s.to_string()).collect();
        validate(self, &names).map_err(|e| format!("{prefix}: {e}"))
    }
}

/// Why the device plugin cannot run.
#[derive(Debug, thiserror::Error)]
pub enum DevicePluginError {
    /// A setting or stream name cannot be served.
    #[error("device_plugin: {0}")]
    Config(String),
    /// The directory could not be created or watched.
    #[error("device_plugin.dir = {dir:?}: {op}: {error}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// What was attempted.
        op: &'static str,
        /// The OS error.
        error: std::io::Error,
    },
    /// The thread or its runtime could not be started.
    #[error("cannot start the device-plugin thread: {0}")]
    Start(std::io::Error),
}

/// The directory holding stream `stream`'s ring file under the ring directory. This is the one
/// place the plugin knows the ring layout (`<ring_dir>/<stream>/<stream>.ring`); it is what a
/// container gets mounted.
pub fn stream_dir(ring_dir: &Path, stream: &str) -> PathBuf {
    crate::ring::stream_dir(ring_dir, stream)
}

/// The ring file's name inside [`stream_dir`].
fn ring_file_name(stream: &str) -> String {
    format!("{stream}.{}", crate::ring::RING_SUFFIX)
}

/// The resource name of `stream` without the domain: stream names are `[a-z0-9_-]`, the kubelet
/// expects a DNS label (`[a-z0-9-]`, alphanumeric at both ends, at most 63), so `_` becomes `-`.
/// A name that still is not a DNS label is an error, never silently changed further.
pub fn resource_suffix(stream: &str) -> Result<String, String> {
    let s: String = stream.replace('_', "-");
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(s)
    } else {
        Err(format!(
            "stream {stream:?} cannot be a resource name: {RESOURCE_DOMAIN}/{s} is not a DNS label (a-z, 0-9 and -, starting and ending with a letter or digit); rename the stream"
        ))
    }
}

/// `edgeplex.io/<suffix>`.
pub fn resource_name(stream: &str) -> Result<String, String> {
    Ok(format!("{RESOURCE_DOMAIN}/{}", resource_suffix(stream)?))
}

/// The environment variable naming stream `stream`'s ring inside a container:
/// `EDGEPLEX_RING_<STREAM>`, upper case, `-` as `_`.
pub fn env_name(stream: &str) -> String {
    format!(
        "EDGEPLEX_RING_{}",
        stream.to_ascii_uppercase().replace('-', "_")
    )
}

/// The socket file name of a resource suffix.
fn socket_name(suffix: &str) -> String {
    format!("{SOCKET_PREFIX}{suffix}.sock")
}

/// The device IDs of a resource: `<suffix>-<i>`.
fn device_ids(suffix: &str, shares: u32) -> Vec<String> {
    (0..shares).map(|i| format!("{suffix}-{i}")).collect()
}

/// Check that every stream can be served: a valid resource name, no two streams on the same
/// resource or environment variable, shares in range.
pub fn validate(settings: &DevicePluginSettings, streams: &[String]) -> Result<(), String> {
    if !(1..=1024).contains(&settings.shares) {
        return Err(format!(
            "shares = {} must be 1 ..= 1024 (containers that may read one stream at once)",
            settings.shares
        ));
    }
    let mut seen: HashMap<String, &str> = HashMap::new();
    for s in streams {
        let suffix = resource_suffix(s)?;
        // The longest device ID must fit the kubelet's 63 characters.
        if device_ids(&suffix, settings.shares)
            .last()
            .is_some_and(|id| id.len() > 63)
        {
            return Err(format!(
                "stream {s:?}: device IDs {suffix}-N exceed 63 characters; use a shorter name"
            ));
        }
        if let Some(other) = seen.insert(suffix.clone(), s) {
            return Err(format!(
                "streams {other:?} and {s:?} both map to {RESOURCE_DOMAIN}/{suffix} (and {}); rename one",
                env_name(s)
            ));
        }
    }
    Ok(())
}

/// The devices of a stream with health `up`.
fn devices(suffix: &str, shares: u32, up: bool) -> Vec<api::Device> {
    let health = if up { api::HEALTHY } else { api::UNHEALTHY };
    device_ids(suffix, shares)
        .into_iter()
        .map(|id| api::Device {
            id,
            health: health.into(),
            topology: None,
        })
        .collect()
}

/// The running device plugin.
#[derive(Debug)]
pub struct DevicePlugin {
    thread: std::thread::JoinHandle<()>,
    streams: StreamSet,
}

impl DevicePlugin {
    /// Replace the set of streams advertised. A stream no longer in the set stops being
    /// advertised; pods already running keep their mount until they end.
    /// A stream whose name cannot be a resource is logged and skipped.
    pub fn set_streams(&self, streams: Vec<StreamHealth>) {
        self.streams.replace(streams);
    }

    /// Wait for the thread to end (after shutdown was triggered); it removes its sockets.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Start serving `streams` per `settings`; `Ok(None)` when disabled. Names are checked here, so
/// a stream that cannot be a resource is a configuration error. Stops soon after `shutdown`.
pub fn start(
    settings: &DevicePluginSettings,
    ring_dir: &Path,
    streams: Vec<StreamHealth>,
    shutdown: &Shutdown,
) -> Result<Option<DevicePlugin>, DevicePluginError> {
    follow(settings, ring_dir, &StreamSet::new(streams), shutdown)
}

/// Like [`start`], advertising whatever `streams` holds as it changes (the agent's set, where
/// discovered streams come and go). The names in it now are checked here; a stream added later
/// whose name cannot be a resource is logged and not advertised.
pub fn follow(
    settings: &DevicePluginSettings,
    ring_dir: &Path,
    streams: &StreamSet,
    shutdown: &Shutdown,
) -> Result<Option<DevicePlugin>, DevicePluginError> {
    if !settings.enabled {
        return Ok(None);
    }
    let names: Vec<String> = streams.list().iter().map(|s| s.name().to_owned()).collect();
    validate(settings, &names).map_err(DevicePluginError::Config)?;
    let dir = settings.dir.clone();
    // The kubelet creates the directory when it starts; the agent may start first (boot).
    std::fs::create_dir_all(&dir).map_err(|error| DevicePluginError::Dir {
        dir: dir.clone(),
        op: "cannot create it",
        error,
    })?;
    let inotify = watch_dir(&dir)?;
    let rx = streams.subscribe();
    let ctx = Ctx {
        dir,
        ring_dir: ring_dir.to_path_buf(),
        shares: settings.shares,
    };
    let shutdown = shutdown.clone();
    let thread = crate::thread::spawn_with_runtime(
        "device-plugin",
        |e| tracing::error!(error = %e, "device plugin: cannot build its runtime; not serving"),
        move || {
            let span = tracing::info_span!("device_plugin", dir = %ctx.dir.display());
            tracing::Instrument::instrument(run(ctx, inotify, rx, shutdown), span)
        },
    )
    .map_err(DevicePluginError::Start)?;
    Ok(Some(DevicePlugin {
        thread,
        streams: streams.clone(),
    }))
}

fn watch_dir(dir: &Path) -> Result<inotify::Inotify, DevicePluginError> {
    let err = |op, error| DevicePluginError::Dir {
        dir: dir.to_path_buf(),
        op,
        error,
    };
    let inotify = inotify::Inotify::init().map_err(|e| err("inotify_init", e))?;
    inotify
        .watches()
        .add(
            dir,
            inotify::WatchMask::CREATE | inotify::WatchMask::MOVED_TO,
        )
        .map_err(|e| err("cannot watch it (inotify)", e))?;
    Ok(inotify)
}

/// What every task of the plugin needs to know.
#[derive(Debug, Clone)]
struct Ctx {
    dir: PathBuf,
    ring_dir: PathBuf,
    shares: u32,
}

/// One advertised stream.
struct Served {
    health: StreamHealth,
    suffix: String,
    devices: watch::Sender<Vec<api::Device>>,
    /// Stops the current server generation (a kubelet restart starts a new one).
    server: Option<oneshot::Sender<()>>,
    register: Option<tokio::task::JoinHandle<()>>,
}

impl Served {
    fn socket(&self, ctx: &Ctx) -> PathBuf {
        ctx.dir.join(socket_name(&self.suffix))
    }

    fn stop_server(&mut self) {
        if let Some(r) = self.register.take() {
            r.abort();
        }
        if let Some(stop) = self.server.take() {
            let _ = stop.send(());
        }
    }

    /// Serve on a fresh socket (replacing whatever is at its path), then register.
    fn serve_and_register(&mut self, ctx: &Ctx) {
        self.stop_server();
        let path = self.socket(ctx);
        let _ = std::fs::remove_file(&path);
        let listener = match tokio::net::UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(socket = %path.display(), error = %e, "device plugin: cannot bind its socket; not serving this stream until the kubelet restarts");
                return;
            }
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let (gen_tx, gen_rx) = watch::channel(false);
        let service = PluginService {
            stream: self.health.name().to_owned(),
            suffix: self.suffix.clone(),
            ring_dir: ctx.ring_dir.clone(),
            shares: ctx.shares,
            devices: self.devices.subscribe(),
            stopped: gen_rx,
        };
        let stream = self.health.name().to_owned();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.await;
                // End this generation's ListAndWatch streams, so the graceful shutdown ends.
                let _ = gen_tx.send(true);
            };
            let served = tonic::transport::Server::builder()
                .add_service(DevicePluginServer::new(service))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
                .await;
            if let Err(e) = served {
                tracing::error!(stream = %stream, error = %e, "device plugin: server failed");
            }
        });
        self.server = Some(stop_tx);
        let request = api::RegisterRequest {
            version: api::VERSION.into(),
            endpoint: socket_name(&self.suffix),
            resource_name: format!("{RESOURCE_DOMAIN}/{}", self.suffix),
            options: Some(options()),
        };
        self.register = Some(tokio::spawn(register_with_retry(ctx.dir.clone(), request)));
    }
}

fn options() -> api::DevicePluginOptions {
    api::DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: false,
    }
}

/// Register with the kubelet, retrying a few times (its socket exists a moment before it
/// listens). If it still fails, the next `kubelet.sock` creation triggers a new attempt.
async fn register_with_retry(dir: PathBuf, request: api::RegisterRequest) {
    let kubelet = dir.join(api::KUBELET_SOCKET);
    if !kubelet.exists() {
        tracing::info!(resource = %request.resource_name, dir = %dir.display(), "device plugin: waiting for the kubelet (no kubelet.sock yet)");
        return;
    }
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=6 {
        match tokio::time::timeout(Duration::from_secs(5), register(&kubelet, request.clone()))
            .await
        {
            Ok(Ok(())) => {
                tracing::info!(resource = %request.resource_name, endpoint = %request.endpoint, "device plugin: registered with the kubelet");
                return;
            }
            Ok(Err(e)) if attempt == 6 => {
                tracing::error!(resource = %request.resource_name, error = %e, "device plugin: the kubelet refused registration; retrying when it restarts");
            }
            Err(_) if attempt == 6 => {
                tracing::error!(resource = %request.resource_name, "device plugin: registration timed out; retrying when the kubelet restarts");
            }
            _ => {}
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
}

/// Open a gRPC channel over the Unix socket at `path`.
pub async fn unix_channel(
    path: &Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is required by the API and ignored by the connector.
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
}

async fn register(kubelet: &Path, request: api::RegisterRequest) -> Result<(), String> {
    let channel = unix_channel(kubelet)
        .await
        .map_err(|e| format!("connect {}: {e}", kubelet.display()))?;
    RegistrationClient::new(channel)
        .register(request)
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
    Ok(())
}

/// The plugin's main loop: reconcile the stream set, follow health, and re-register when the
/// kubelet comes back.
async fn run(
    ctx: Ctx,
    inotify: inotify::Inotify,
    mut streams: watch::Receiver<Vec<StreamHealth>>,
    shutdown: Shutdown,
) {
    let mut events = match inotify.into_event_stream([0u8; 4096]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "device plugin: cannot read inotify events; not serving");
            return;
        }
    };
    let mut served: BTreeMap<String, Served> = BTreeMap::new();
    let initial = streams.borrow_and_update().clone();
    sweep_stale(&ctx, &initial);
    reconcile(&ctx, &mut served, initial);
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if shutdown.requested() {
                    break;
                }
                for s in served.values() {
                    let now = devices(&s.suffix, ctx.shares, s.health.is_up());
                    s.devices.send_if_modified(|d| {
                        if *d == now { false } else { *d = now; true }
                    });
                }
            }
            changed = streams.changed() => {
                if changed.is_err() {
                    // The handle was dropped: keep serving the last set until shutdown.
                    std::future::pending::<()>().await;
                }
                let set = streams.borrow_and_update().clone();
                reconcile(&ctx, &mut served, set);
            }
            event = events.next() => {
                match event {
                    Some(Ok(ev)) if ev.name.as_deref() == Some(std::ffi::OsStr::new(api::KUBELET_SOCKET)) => {
                        tracing::info!("device plugin: kubelet.sock (re)created; serving again and re-registering");
                        for s in served.values_mut() {
                            s.serve_and_register(&ctx);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "device plugin: inotify read failed");
                    }
                    None => {
                        tracing::warn!("device plugin: inotify stream ended; kubelet restarts will not be noticed");
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
    for (_, mut s) in std::mem::take(&mut served) {
        s.stop_server();
        let _ = std::fs::remove_file(s.socket(&ctx));
    }
    // Let the servers see their stop signals before the runtime goes away.
    tokio::time::sleep(Duration::from_millis(50)).await;
    tracing::info!("device plugin stopped");
}

/// Start serving new streams and stop serving removed ones.
fn reconcile(ctx: &Ctx, served: &mut BTreeMap<String, Served>, set: Vec<StreamHealth>) {
    let wanted: BTreeSet<String> = set.iter().map(|s| s.name().to_owned()).collect();
    let removed: Vec<String> = served
        .keys()
        .filter(|k| !wanted.contains(*k))
        .cloned()
        .collect();
    for name in removed {
        if let Some(mut s) = served.remove(&name) {
            // An empty list first: the kubelet sets the resource's capacity to zero at once.
            s.devices.send_replace(Vec::new());
            s.stop_server();
            let _ = std::fs::remove_file(s.socket(ctx));
            tracing::info!(stream = %name, "device plugin: stream no longer advertised");
        }
    }
    for health in set {
        if let Some(s) = served.get_mut(health.name()) {
            // The same name with a new handle (a discovered stream that came back): follow it.
            s.health = health;
            continue;
        }
        let suffix = match resource_suffix(health.name()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "device plugin: not advertising this stream");
                continue;
            }
        };
        let (devices, _) = watch::channel(devices(&suffix, ctx.shares, health.is_up()));
        let mut s = Served {
            health,
            suffix,
            devices,
            server: None,
            register: None,
        };
        s.serve_and_register(ctx);
        served.insert(s.health.name().to_owned(), s);
    }
}

/// Remove sockets an earlier run left for streams that are no longer configured.
fn sweep_stale(ctx: &Ctx, streams: &[StreamHealth]) {
    use std::os::unix::fs::FileTypeExt;
    let ours: BTreeSet<String> = streams
        .iter()
        .filter_map(|s| resource_suffix(s.name()).ok())
        .map(|s| socket_name(&s))
        .collect();
    let Ok(entries) = std::fs::read_dir(&ctx.dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_socket = e.file_type().is_ok_and(|t| t.is_socket());
        if is_socket
            && name.starts_with(SOCKET_PREFIX)
            && name.ends_with(".sock")
            && !ours.contains(&name)
        {
            let _ = std::fs::remove_file(e.path());
            tracing::info!(socket = %name, "device plugin: removed the socket of a stream no longer configured");
        }
    }
}

/// The `DevicePlugin` service of one stream.
struct PluginService {
    stream: String,
    suffix: String,
    ring_dir: PathBuf,
    shares: u32,
    devices: watch::Receiver<Vec<api::Device>>,
    stopped: watch::Receiver<bool>,
}

impl PluginService {
    /// The mount and environment of one container that asked for `ids`.
    fn allocate_container(&self, ids: &[String]) -> Result<api::ContainerAllocateResponse, Status> {
        let known = device_ids(&self.suffix, self.shares);
        if ids.is_empty() {
            return Err(Status::invalid_argument(format!(
                "no device IDs in the request for {RESOURCE_DOMAIN}/{}",
                self.suffix
            )));
        }
        if let Some(bad) = ids.iter().find(|id| !known.contains(id)) {
            return Err(Status::not_found(format!(
                "unknown device {bad:?} for {RESOURCE_DOMAIN}/{}: this node advertises {}-0 .. {}-{}",
                self.suffix,
                self.suffix,
                self.suffix,
                self.shares - 1
            )));
        }
        let host = stream_dir(&self.ring_dir, &self.stream);
        // The bind mount needs a source; the stream's writer fills it once its device is up.
        std::fs::create_dir_all(&host)
            .map_err(|e| Status::internal(format!("cannot create {}: {e}", host.display())))?;
        let container_dir = format!("{CONTAINER_DIR}/{}", self.stream);
        let ring = format!("{container_dir}/{}", ring_file_name(&self.stream));
        Ok(api::ContainerAllocateResponse {
            envs: HashMap::from([(env_name(&self.stream), ring)]),
            mounts: vec![api::Mount {
                container_path: container_dir,
                host_path: host.display().to_string(),
                read_only: true,
            }],
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl device_plugin_server::DevicePlugin for PluginService {
    async fn get_device_plugin_options(
        &self,
        _: Request<api::Empty>,
    ) -> Result<Response<api::DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = ReceiverStream<Result<api::ListAndWatchResponse, Status>>;

    async fn list_and_watch(
        &self,
        _: Request<api::Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let mut devices = self.devices.clone();
        let mut stopped = self.stopped.clone();
        tokio::spawn(async move {
            loop {
                let list = devices.borrow_and_update().clone();
                let update = api::ListAndWatchResponse { devices: list };
                if tx.send(Ok(update)).await.is_err() {
                    break; // the kubelet hung up
                }
                tokio::select! {
                    changed = devices.changed() => if changed.is_err() { break },
                    _ = stopped.wait_for(|s| *s) => break,
                    _ = tx.closed() => break,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<api::PreferredAllocationRequest>,
    ) -> Result<Response<api::PreferredAllocationResponse>, Status> {
        // Every share is the same: take the ones that must be included, then the first others.
        let container_responses = request
            .into_inner()
            .container_requests
            .into_iter()
            .map(|c| {
                let size = usize::try_from(c.allocation_size).unwrap_or(0);
                let mut ids = c.must_include_device_ids;
                for id in c.available_device_ids {
                    if ids.len() >= size {
                        break;
                    }
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                api::ContainerPreferredAllocationResponse { device_ids: ids }
            })
            .collect();
        Ok(Response::new(api::PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<api::AllocateRequest>,
    ) -> Result<Response<api::AllocateResponse>, Status> {
        let container_responses = request
            .into_inner()
            .container_requests
            .iter()
            .map(|c| self.allocate_container(&c.devices_ids))
            .collect::<Result<Vec<_>, Status>>()?;
        tracing::info!(stream = %self.stream, containers = container_responses.len(), "device plugin: allocated");
        Ok(Response::new(api::AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<api::PreStartContainerRequest>,
    ) -> Result<Response<api::PreStartContainerResponse>, Status> {
        Ok(Response::new(api::PreStartContainerResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_are_dns_labels() {
        assert_eq!(resource_name("cam0").unwrap(), "edgeplex.io/cam0");
        assert_eq!(resource_name("front_cam").unwrap(), "edgeplex.io/front-cam");
        assert!(resource_name("cam_").is_err(), "must end alphanumeric");
        assert!(resource_name(&"a".repeat(64)).is_err());
        assert_eq!(env_name("front-cam"), "EDGEPLEX_RING_FRONT_CAM");
        assert_eq!(env_name("front_cam"), "EDGEPLEX_RING_FRONT_CAM");
    }

    #[test]
    fn validate_rejects_collisions_and_bad_shares() {
        let s = DevicePluginSettings::default();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(validate(&s, &names(&["cam0", "gps0"])).is_ok());
        let e = validate(&s, &names(&["cam-0", "cam_0"])).unwrap_err();
        assert!(e.contains("both map to edgeplex.io/cam-0"), "{e}");
        let zero = DevicePluginSettings {
            shares: 0,
            ..s.clone()
        };
        assert!(validate(&zero, &names(&["cam0"])).is_err());
        let long = DevicePluginSettings { shares: 1000, ..s };
        assert!(validate(&long, &names(&[&"a".repeat(61)])).is_err());
    }

    #[test]
    fn unknown_device_ids_are_refused() {
        let (_tx, devices) = watch::channel(Vec::new());
        let (_g, stopped) = watch::channel(false);
        let dir = tempfile::tempdir().unwrap();
        let svc = PluginService {
            stream: "cam_0".into(),
            suffix: "cam-0".into(),
            ring_dir: dir.path().into(),
            shares: 2,
            devices,
            stopped,
        };
        assert!(svc.allocate_container(&["cam-0-2".into()]).is_err());
        assert!(svc.allocate_container(&[]).is_err());
        let ok = svc.allocate_container(&["cam-0-1".into()]).unwrap();
        assert_eq!(
            ok.envs["EDGEPLEX_RING_CAM_0"],
            "/run/edgeplex/cam_0/cam_0.ring"
        );
        assert_eq!(
            ok.mounts[0].host_path,
            dir.path().join("cam_0").display().to_string()
        );
        assert!(ok.mounts[0].read_only);
        assert!(dir.path().join("cam_0").is_dir());
    }
}

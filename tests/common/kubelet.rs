//! A stand-in kubelet for the device-plugin tests: it serves the kubelet's `Registration`
//! service on `kubelet.sock` in a device-plugin directory and calls plugins over real gRPC
//! (tonic, the wire format a kubelet speaks).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgeplex::deviceplugin::api::registration::registration_server::{
    Registration, RegistrationServer,
};
use edgeplex::deviceplugin::api::{self, device_plugin::device_plugin_client::DevicePluginClient};
use edgeplex::deviceplugin::unix_channel;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status, Streaming};

/// Longest any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// The kubelet's side of registration: records every request.
struct Recorder(mpsc::UnboundedSender<api::RegisterRequest>);

#[tonic::async_trait]
impl Registration for Recorder {
    async fn register(
        &self,
        request: Request<api::RegisterRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        let r = request.into_inner();
        if r.version != api::VERSION {
            return Err(Status::invalid_argument(format!(
                "unsupported version {:?}",
                r.version
            )));
        }
        let _ = self.0.send(r);
        Ok(Response::new(api::Empty {}))
    }
}

/// A stand-in kubelet: serves `Registration` on `<dir>/kubelet.sock`.
pub struct Kubelet {
    dir: PathBuf,
    pub registrations: mpsc::UnboundedReceiver<api::RegisterRequest>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Kubelet {
    pub fn start(dir: &Path) -> Kubelet {
        let listener = tokio::net::UnixListener::bind(dir.join(api::KUBELET_SOCKET))
            .expect("bind kubelet.sock");
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(RegistrationServer::new(Recorder(tx)))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .expect("serve Registration");
        });
        Kubelet {
            dir: dir.to_path_buf(),
            registrations: rx,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// What a kubelet does when it restarts: stop serving, delete every socket in its
    /// device-plugin directory (its own and the plugins'), then serve `kubelet.sock` again.
    pub async fn restart(mut self) -> Kubelet {
        self.stop().await;
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            std::fs::remove_file(e.path()).unwrap();
        }
        Kubelet::start(&self.dir)
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            // Graceful shutdown waits for open connections; the plugins do not keep one.
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }

    /// The next `n` registrations, by resource name.
    pub async fn registrations(&mut self, n: usize) -> BTreeMap<String, api::RegisterRequest> {
        let mut got = BTreeMap::new();
        while got.len() < n {
            let r = tokio::time::timeout(WAIT, self.registrations.recv())
                .await
                .unwrap_or_else(|_| panic!("no registration within {WAIT:?}; got {got:?}"))
                .expect("registration channel open");
            got.insert(r.resource_name.clone(), r);
        }
        got
    }

    /// The plugin client of a registered endpoint.
    pub async fn plugin(&self, endpoint: &str) -> DevicePluginClient<tonic::transport::Channel> {
        let channel = unix_channel(&self.dir.join(endpoint))
            .await
            .unwrap_or_else(|e| panic!("connect to the plugin at {endpoint}: {e}"));
        DevicePluginClient::new(channel)
    }
}

/// The next `ListAndWatch` update whose health satisfies `want` (all devices), skipping others.
pub async fn wait_devices(
    updates: &mut Streaming<api::ListAndWatchResponse>,
    what: &str,
    want: impl Fn(&[api::Device]) -> bool,
) -> Vec<api::Device> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let next = tokio::time::timeout_at(deadline, updates.message())
            .await
            .unwrap_or_else(|_| panic!("{what}: no such ListAndWatch update within {WAIT:?}"))
            .expect("ListAndWatch stream error")
            .unwrap_or_else(|| panic!("{what}: ListAndWatch ended"));
        if want(&next.devices) {
            return next.devices;
        }
    }
}

/// All devices listed and all with health `health`.
pub fn all(health: &'static str) -> impl Fn(&[api::Device]) -> bool {
    move |d| !d.is_empty() && d.iter().all(|d| d.health == health)
}

/// The IDs of `devices`.
pub fn ids(devices: &[api::Device]) -> Vec<&str> {
    devices.iter().map(|d| d.id.as_str()).collect()
}

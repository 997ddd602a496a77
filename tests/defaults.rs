//! "Defaults harm nothing": the agent's default ConfigMap, taken from the manifests as users
//! apply them (`kubectl kustomize manifests/agent`), run by a real `edgeplex run` against the
//! test API server on a node that has none of the configured devices. Past the device grace
//! period, with the publisher still renewing its Lease, the node has no taint, no
//! `DeviceFailure=True`, and `/readyz` answers 200, though every stream is down.
//!
//! Only what differs between a pod and this test is overridden, each as the pod would get it:
//! the ring directory (EDGEPLEX_RING_DIR, the DaemonSet's env), the node name (NODE_NAME), the
//! API server (kube.mode/kubeconfig instead of the in-cluster service account), the metrics
//! address, the kubelet's device-plugin directory and the power-supply root (a node without a
//! battery). Stream, node and failover settings are the ConfigMap's own.
//!
//! Every wait is bounded by a generous deadline; no duration is asserted.

mod common;
mod kube_api;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{free_port, get};
use common::power::Sysfs;
use common::prom;
use edgeplex::kube::keys;
use kube_api::{wait_for, TestApiServer};
use serde_json::Value;

const NODE: &str = "edge-plain";
const DEADLINE: Duration = Duration::from_secs(60);

struct Killed(Child, std::path::PathBuf);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.1).unwrap_or_default();
            eprintln!("--- agent log ---\n{log}");
        }
    }
}

#[test]
fn the_default_configmap_harms_no_node_without_devices() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/agent");
    let Some(docs) = common::kustomize::render(&root) else {
        return;
    };
    let cm = common::kustomize::find(&docs, "ConfigMap", "edgeplex-agent").expect("ConfigMap");
    let text = cm["data"]["edgeplex.toml"].as_str().expect("edgeplex.toml");
    let config: toml::Table = text.parse().expect("the ConfigMap's TOML");
    let grace = config["node"]
        .get("device_grace_secs")
        .and_then(|v| v.as_float().or(v.as_integer().map(|i| i as f64)))
        .unwrap_or(5.0);
    let streams: Vec<String> = config["stream"]
        .as_table()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(
        !streams.is_empty(),
        "the default ConfigMap configures streams"
    );

    let server = TestApiServer::start();
    server.create_ready_node(NODE);
    let dir = common::shm_dir();
    let file = dir.path().join("edgeplex.toml");
    std::fs::write(&file, text).unwrap();
    let plugins = dir.path().join("device-plugins");
    std::fs::create_dir(&plugins).unwrap();
    let power = Sysfs::empty();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = dir.path().join("agent.log");
    let set = |k: &str, v: &str| format!("{k}={}", Value::String(v.into()));
    let started = Instant::now();
    let mut agent = Killed(
        Command::new(env!("CARGO_BIN_EXE_edgeplex"))
            .args(["run", "--config"])
            .arg(&file)
            .args(["--set", &set("kube.mode", "kubeconfig")])
            .args([
                "--set",
                &set(
                    "kube.kubeconfig",
                    server.kubeconfig_path().to_str().unwrap(),
                ),
            ])
            .args(["--set", &set("metrics.listen", &addr.to_string())])
            .args([
                "--set",
                &set("device_plugin.dir", plugins.to_str().unwrap()),
            ])
            .args([
                "--set",
                &set("power.sysfs_root", power.root().to_str().unwrap()),
            ])
            .env("EDGEPLEX_RING_DIR", dir.path().join("rings"))
            .env("NODE_NAME", NODE)
            .env_remove("EDGEPLEX_CONFIG")
            .env_remove("KUBECONFIG")
            .env_remove("RUST_LOG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn edgeplex run"),
        log,
    );

    // The agent runs every stream and each is down: there is no device.
    wait_for("every stream reported down", DEADLINE, || {
        if let Ok(Some(status)) = agent.0.try_wait() {
            panic!("the agent exited with {status}");
        }
        let (_, metrics) = get(addr, "/metrics").ok()?;
        streams
            .iter()
            .all(|s| {
                prom::value(&metrics, &format!("edgeplex_source_up{{stream=\"{s}\"}}")) == Some(0.0)
                    && prom::value(
                        &metrics,
                        &format!(
                            "edgeplex_source_errors_total{{stream=\"{s}\",kind=\"not_found\"}}"
                        ),
                    )
                    .is_some_and(|n| n >= 1.0)
            })
            .then_some(())
    });
    // Past the grace period after which a critical stream would count as failed, and then one
    // more Lease renewal: the publisher has looked at the streams since.
    wait_for("the device grace period to pass", DEADLINE, || {
        (started.elapsed() > Duration::from_secs_f64(grace + 2.0)).then_some(())
    });
    let renew = |s: &TestApiServer| -> Option<String> {
        s.lease("edgeplex", NODE)?
            .pointer("/spec/renewTime")?
            .as_str()
            .map(str::to_owned)
    };
    let before = wait_for("a Lease", DEADLINE, || renew(&server));
    wait_for("a Lease renewal after the grace period", DEADLINE, || {
        (renew(&server)? != before).then_some(())
    });
    wait_for("the node's rings annotation", DEADLINE, || {
        server
            .node(NODE)
            .pointer(&format!(
                "/metadata/annotations/{}",
                keys::RINGS_ANNOTATION.replace('/', "~1")
            ))
            .map(|_| ())
    });

    assert!(agent.0.try_wait().unwrap().is_none(), "the agent runs");
    let taints = server.taints(NODE);
    assert!(taints.is_empty(), "the node was tainted: {taints:?}");
    let failure = server.condition(NODE, keys::DEVICE_FAILURE);
    assert!(
        failure.as_ref().is_none_or(|c| c["status"] != "True"),
        "DeviceFailure=True on a node that merely lacks devices: {failure:?}"
    );
    let (code, body) = get(addr, "/readyz").unwrap();
    assert_eq!(code, 200, "/readyz on a node without devices: {body}");
    assert_eq!(server.label(NODE, keys::CAMERA), None);
    assert_eq!(server.label(NODE, keys::SERIAL), None);
}

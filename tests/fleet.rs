//! One configuration for a fleet of mixed nodes: three Nodes with different labels in the test
//! API server, one config file, three real `edgeplex run` agents. Each agent runs exactly the
//! streams selected for its node (by `node_selector` against its own Node's labels, or by
//! `nodes`), makes only their rings, labels its Node for them (`edgeplex.io/camera`,
//! `edgeplex.io/serial`, the `edgeplex.io/rings` annotation) and is Ready when its required
//! streams are up.
//!
//! Also: an agent whose Node does not exist yet starts no stream until it can read the labels;
//! a label change takes effect when the agent restarts (documented in docs/fleet.md).
//!
//! Every wait is bounded by a generous deadline; no duration is asserted.

mod common;
mod kube_api;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::http::{free_port, get};
use common::power::Sysfs;
use edgeplex::kube::keys;
use kube_api::{wait_for, TestApiServer};
use serde_json::{json, Value};

/// Watchdog for every wait: generous, only to fail a hang.
const DEADLINE: Duration = Duration::from_secs(60);

/// The fleet's one configuration. `{...}` parts are filled per agent only where they cannot be
/// shared in a test on one machine (ring directory, metrics port, node name; in a DaemonSet
/// these come from the pod: EDGEPLEX_RING_DIR, NODE_NAME).
const FLEET: &str = r#"
[kube]
mode = "kubeconfig"
lease_namespace = "edgeplex"
request_timeout_secs = 5

[node]
heartbeat_secs = 0.5
lease_duration_secs = 2
failover_taint = false
retry_initial_secs = 0.1
retry_max_secs = 0.5

# Nodes with a USB camera (labelled by the admin).
[stream.cam0]
type = "test-pattern"
required = true
node_selector = { "example.com/camera" = "usb" }
width = 64
height = 48
fps = 10
slot_count = 4

# Nodes with a u-blox GPS; optional: a node whose GPS is unplugged stays Ready.
[stream.gps0]
type = "nmea-sim"
node_selector = { "example.com/gps" = "ublox", "example.com/site" = "north" }
rate_hz = 10
slot_count = 16

# One named node has a lab probe.
[stream.probe0]
type = "nmea-sim"
nodes = ["edge-both"]
rate_hz = 10
slot_count = 16
"#;

/// The three nodes and their labels.
const NODES: &[(&str, &[(&str, &str)])] = &[
    (
        "edge-cam",
        &[("example.com/camera", "usb"), ("example.com/site", "north")],
    ),
    (
        "edge-gps",
        &[
            ("example.com/gps", "ublox"),
            ("example.com/site", "north"),
            ("example.com/camera", "csi"),
        ],
    ),
    (
        "edge-both",
        &[
            ("example.com/camera", "usb"),
            ("example.com/gps", "ublox"),
            ("example.com/site", "north"),
        ],
    ),
];

const STREAMS: &[&str] = &["cam0", "gps0", "probe0"];

/// Exactly which streams each node must run.
fn expected(node: &str) -> &'static [&'static str] {
    match node {
        "edge-cam" => &["cam0"],
        "edge-gps" => &["gps0"],
        "edge-both" => &["cam0", "gps0", "probe0"],
        _ => unreachable!(),
    }
}

/// One agent of the fleet: the shared config plus its node name, ring directory and port.
struct FleetAgent {
    node: String,
    child: Option<Child>,
    rings: tempfile::TempDir,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    _power: Sysfs,
}

impl FleetAgent {
    fn start(server: &TestApiServer, node: &str) -> FleetAgent {
        let rings = common::shm_dir();
        let dir = tempfile::tempdir().unwrap();
        let power = Sysfs::empty();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("edgeplex.toml");
        std::fs::write(&config, FLEET).unwrap();
        let mut a = FleetAgent {
            node: node.into(),
            child: None,
            rings,
            dir,
            addr,
            _power: power,
        };
        a.spawn(server, &config);
        a
    }

    fn spawn(&mut self, server: &TestApiServer, config: &Path) {
        let log = std::fs::File::create(self.dir.path().join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_edgeplex"))
            .args(["run", "--config"])
            .arg(config)
            .env("EDGEPLEX_RING_DIR", self.rings.path())
            .env("EDGEPLEX_METRICS_LISTEN", self.addr.to_string())
            .env("EDGEPLEX_KUBE__KUBECONFIG", server.kubeconfig_path())
            .env("EDGEPLEX_POWER__SYSFS_ROOT", self._power.root())
            .env("EDGEPLEX_DEVICE_PLUGIN__ENABLED", "true")
            .env("EDGEPLEX_DEVICE_PLUGIN__DIR", self.plugins())
            .env("EDGEPLEX_LOG", "info,edgeplex=debug")
            .env("NODE_NAME", &self.node)
            .env_remove("EDGEPLEX_CONFIG")
            .env_remove("KUBECONFIG")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn edgeplex run");
        self.child = Some(child);
    }

    fn restart(&mut self, server: &TestApiServer) {
        self.stop();
        let config = self.dir.path().join("edgeplex.toml");
        self.spawn(server, &config);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// This agent's stand-in for the kubelet's device-plugin directory.
    fn plugins(&self) -> PathBuf {
        let d = self.dir.path().join("device-plugins");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The streams the device plugin serves (its sockets), in name order.
    fn advertised(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.plugins())
            .unwrap()
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                Some(
                    name.strip_prefix("edgeplex-")?
                        .strip_suffix(".sock")?
                        .to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    }

    fn ring(&self, stream: &str) -> PathBuf {
        edgeplex::agent::ring_path(self.rings.path(), stream)
    }

    /// The streams that have a ring, in name order.
    fn rings_present(&self) -> Vec<&'static str> {
        STREAMS
            .iter()
            .copied()
            .filter(|s| self.ring(s).exists())
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
            panic!("agent {} exited with {status}:\n{}", self.node, self.log());
        }
    }
}

impl Drop for FleetAgent {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- agent {} log ---\n{}", self.node, self.log());
        }
    }
}

fn create_node(server: &TestApiServer, name: &str, labels: &[(&str, &str)]) {
    server.create_ready_node(name);
    create_labels(server, name, labels);
}

/// The admin's labels of node `name`, by server-side apply (manager `admin`).
fn create_labels(server: &TestApiServer, name: &str, labels: &[(&str, &str)]) {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    server.apply_as(
        "admin",
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": name, "labels": labels}}),
    );
}

/// The streams named in the node's `edgeplex.io/rings` annotation.
fn annotated_streams(server: &TestApiServer, node: &str) -> Option<Vec<String>> {
    let text = server
        .node(node)
        .pointer(&format!(
            "/metadata/annotations/{}",
            keys::RINGS_ANNOTATION.replace('/', "~1")
        ))?
        .as_str()?
        .to_owned();
    let rings: Vec<Value> = serde_json::from_str(&text).ok()?;
    Some(
        rings
            .iter()
            .filter_map(|r| r["stream"].as_str().map(str::to_owned))
            .collect(),
    )
}

/// Wait until `agent`'s node shows exactly its streams, all up, with the matching labels and
/// rings, and its `/readyz` answers 200.
fn wait_settled(server: &TestApiServer, agent: &mut FleetAgent, want: &[&str]) {
    let node = agent.node.clone();
    wait_for(
        &format!("{node} publishes its streams {want:?}"),
        DEADLINE,
        || {
            agent.assert_running();
            (annotated_streams(server, &node)? == want).then_some(())
        },
    );
    wait_for(&format!("{node}: rings of {want:?}"), DEADLINE, || {
        (agent.rings_present() == want).then_some(())
    });
    wait_for(&format!("{node}: /readyz 200"), DEADLINE, || {
        matches!(get(agent.addr, "/readyz"), Ok((200, _))).then_some(())
    });
    let has_camera = want.contains(&"cam0");
    let has_serial = want.iter().any(|s| *s != "cam0");
    wait_for(&format!("{node}: device labels"), DEADLINE, || {
        let camera = server.label(&node, keys::CAMERA);
        let serial = server.label(&node, keys::SERIAL);
        (camera.as_deref() == has_camera.then_some("true")
            && serial.as_deref() == has_serial.then_some("true"))
        .then_some(())
    });
    // The device plugin serves exactly these streams (one socket per resource).
    wait_for(
        &format!("{node}: device plugin serves {want:?}"),
        DEADLINE,
        || (agent.advertised() == want).then_some(()),
    );
    // Nothing else is advertised in the metrics either: a stream not on this node has no series.
    let (_, metrics) = get(agent.addr, "/metrics").unwrap();
    for s in STREAMS {
        let series = format!("edgeplex_source_up{{stream=\"{s}\"}}");
        assert_eq!(
            metrics.contains(&series),
            want.contains(s),
            "{node}: {series} in /metrics"
        );
    }
}

#[test]
fn one_config_three_nodes_each_runs_exactly_its_streams() {
    let server = TestApiServer::start();
    // edge-both joins late: its agent starts before its Node exists.
    for (name, labels) in &NODES[..2] {
        create_node(&server, name, labels);
    }
    let mut agents: Vec<FleetAgent> = NODES
        .iter()
        .map(|(name, _)| FleetAgent::start(&server, name))
        .collect();
    for a in &mut agents[..2] {
        let want = expected(&a.node);
        wait_settled(&server, a, want);
    }

    // edge-both: no Node, so no labels, so no stream yet; it keeps asking.
    let late = &mut agents[2];
    wait_for("edge-both asks for its Node twice", DEADLINE, || {
        (server.count("GET", "/api/v1/nodes/edge-both") >= 2).then_some(())
    });
    late.assert_running();
    assert!(
        late.rings_present().is_empty(),
        "a stream started before the node's labels were read"
    );
    create_node(&server, NODES[2].0, NODES[2].1);
    wait_settled(&server, late, expected("edge-both"));

    // The other nodes were never touched by edge-both's streams, and still have only theirs.
    for a in &agents {
        assert_eq!(a.rings_present(), expected(&a.node), "{}", a.node);
        assert_eq!(
            annotated_streams(&server, &a.node).unwrap(),
            expected(&a.node)
        );
    }

    // A label change takes effect when the agent restarts: edge-gps gets a USB camera (the
    // admin applies its whole set of labels again, with the camera's value changed).
    let mut labels = NODES[1].1.to_vec();
    labels.retain(|(k, _)| *k != "example.com/camera");
    labels.push(("example.com/camera", "usb"));
    create_labels(&server, "edge-gps", &labels);
    let gps = &mut agents[1];
    gps.restart(&server);
    wait_settled(&server, gps, &["cam0", "gps0"]);
}

/// Without Kubernetes there are no labels to read: a configuration that selects by label is a
/// configuration error (exit 64) with one line that says what to do, before any ring exists.
#[test]
fn a_label_selector_without_kubernetes_is_a_one_line_config_error() {
    let dir = common::shm_dir();
    let config = dir.path().join("edgeplex.toml");
    std::fs::write(
        &config,
        "[kube]\nmode = \"auto\"\n[metrics]\nlisten = \"\"\n\
         [stream.cam0]\ntype = \"test-pattern\"\nnode_selector = { \"example.com/camera\" = \"usb\" }\n",
    )
    .unwrap();
    let rings = dir.path().join("rings");
    let out = Command::new(env!("CARGO_BIN_EXE_edgeplex"))
        .args(["run", "--config"])
        .arg(&config)
        .env("EDGEPLEX_RING_DIR", &rings)
        .env("NODE_NAME", "edge-1")
        .env("HOME", dir.path()) // no ~/.kube/config
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("EDGEPLEX_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("node_selector"))
        .unwrap_or_else(|| panic!("no error naming node_selector: {stderr}"));
    assert!(
        line.contains("stream.cam0.node_selector needs this node's labels"),
        "{line}"
    );
    assert!(
        line.contains("edge-1") && line.contains("nodes = ["),
        "{line}"
    );
    assert!(!edgeplex::agent::ring_path(&rings, "cam0").exists());
}

//! A real `edgeplex run` agent for the Kubernetes tests: its sysfs power fixture
//! ([`super::power::Sysfs`]), its config
//! pointed at a test API server's kubeconfig, its ring directory on tmpfs, and its log.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use super::power::Sysfs;

/// What differs between the agents of the Kubernetes tests.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `kube.node_name`.
    pub node: String,
    /// `node.group`.
    pub group: String,
    /// `kube.lease_namespace`.
    pub lease_namespace: String,
    /// `node.lease_duration_secs`.
    pub lease_duration_secs: u32,
    /// `node.heartbeat_secs`.
    pub heartbeat_secs: f64,
    /// `node.hold_down_secs`.
    pub hold_down_secs: f64,
    /// `kube.request_timeout_secs`.
    pub request_timeout_secs: f64,
    /// Frames per second of the test-pattern camera `cam0`.
    pub fps: u32,
}

impl AgentConfig {
    /// Fast settings for node `node` in group `group`, Leases in namespace `edgeplex`.
    pub fn new(node: &str, group: &str) -> AgentConfig {
        AgentConfig {
            node: node.into(),
            group: group.into(),
            lease_namespace: "edgeplex".into(),
            lease_duration_secs: 2,
            heartbeat_secs: 0.5,
            hold_down_secs: 2.0,
            request_timeout_secs: 5.0,
            fps: 10,
        }
    }
}

/// One `edgeplex run` process with its config, ring directory and power fixture. Killed when
/// dropped; its log is printed if the test is failing.
pub struct Agent {
    pub name: String,
    child: Option<Child>,
    pub power: Sysfs,
    dir: tempfile::TempDir,
    rings: tempfile::TempDir,
}

impl Agent {
    /// Start an agent that reaches the API server through `kubeconfig`.
    pub fn start(kubeconfig: &Path, cfg: &AgentConfig) -> Agent {
        let power = Sysfs::on_battery();
        let dir = tempfile::tempdir().expect("config dir");
        let rings = super::shm_dir();
        let config = format!(
            r#"
[ring]
dir = {ring:?}

[metrics]
listen = ""

[log]
level = "info,edgeplex=debug"

[power]
sysfs_root = {sysfs:?}
poll_interval_secs = 0.2
low_tte_secs = 0
critical_tte_secs = 0
hysteresis_secs = 0
confirm_samples = 1

[kube]
mode = "kubeconfig"
kubeconfig = {kubeconfig:?}
node_name = "{node}"
lease_namespace = "{ns}"
request_timeout_secs = {timeout:?}

[node]
group = "{group}"
critical_streams = []
failover_taint = true
hold_down_secs = {hold:?}
heartbeat_secs = {heartbeat:?}
lease_duration_secs = {lease}

[stream.cam0]
type = "test-pattern"
width = 64
height = 48
fps = {fps}
slot_count = 8
"#,
            ring = rings.path().display().to_string(),
            sysfs = power.root().display().to_string(),
            kubeconfig = kubeconfig.display().to_string(),
            node = cfg.node,
            ns = cfg.lease_namespace,
            timeout = cfg.request_timeout_secs,
            group = cfg.group,
            hold = cfg.hold_down_secs,
            heartbeat = cfg.heartbeat_secs,
            lease = cfg.lease_duration_secs,
            fps = cfg.fps,
        );
        let path = dir.path().join("edgeplex.toml");
        fs::write(&path, config).expect("write config");
        let log = fs::File::create(dir.path().join("agent.log")).expect("agent log");
        let child = Command::new(env!("CARGO_BIN_EXE_edgeplex"))
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env_remove("EDGEPLEX_CONFIG")
            .env_remove("KUBECONFIG")
            .env_remove("NODE_NAME")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn edgeplex run");
        Agent {
            name: cfg.node.clone(),
            child: Some(child),
            power,
            dir,
            rings,
        }
    }

    /// The ring file of stream `stream`.
    pub fn ring(&self, stream: &str) -> PathBuf {
        edgeplex::agent::ring_path(self.rings.path(), stream)
    }

    /// SIGKILL the agent; returns when it is gone.
    pub fn kill(&mut self) -> Instant {
        let mut child = self.child.take().expect("the agent runs");
        child.kill().expect("SIGKILL the agent");
        child.wait().expect("reap the agent");
        Instant::now()
    }

    /// SIGTERM the agent (a graceful stop, as a rolling update or `snap refresh` does) and wait
    /// for it to exit, at most 20 s; returns when it is gone and whether it exited 0.
    #[allow(dead_code)] // not every test crate stops agents gracefully
    pub fn terminate(&mut self) -> (Instant, bool) {
        let mut child = self.child.take().expect("the agent runs");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait for the agent") {
                return (Instant::now(), status.success());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("agent {} did not exit within 20 s of SIGTERM", self.name);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The agent must still run (a crash would make the waits of a test time out obscurely).
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!(
                    "agent {} exited with {status}:\n{}",
                    self.name,
                    tail(&self.log(), 60)
                );
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- agent {} log ---\n{}", self.name, tail(&self.log(), 60));
        }
    }
}

/// A fast `edgeplex failover` controller process (poll 0.1 s, leader Lease 1 s). Killed when
/// dropped; its log is printed if the test is failing.
pub struct Controller {
    child: Child,
    log: PathBuf,
}

impl Controller {
    /// Start a controller that reaches the API server through `kubeconfig`, logging into
    /// `dir`. It reads agent Leases in `lease_namespace`; `missing_lease_secs` is the duration
    /// it assumes for a node whose Lease is missing (the agents declare theirs): how long it
    /// waits for a primary that has not shown up yet, at least the agents' `agent_lease_secs`.
    /// A node the controller tainted dead is untainted after renewing for 1 s.
    pub fn start(
        kubeconfig: &Path,
        dir: &Path,
        lease_namespace: &str,
        agent_lease_secs: u32,
        missing_lease_secs: u32,
    ) -> Controller {
        assert!(missing_lease_secs >= agent_lease_secs);
        let log = dir.join("failover.log");
        let file = fs::File::create(&log).expect("controller log");
        let child = Command::new(env!("CARGO_BIN_EXE_edgeplex"))
            .args(["failover", "--identity", "e2e", "--lease-duration", "1"])
            .args(["--renew-interval", "0.1", "--renew-deadline", "0.6"])
            .args([
                "--poll-interval",
                "0.1",
                "--agent-lease-namespace",
                lease_namespace,
            ])
            .args(["--agent-lease-duration", &missing_lease_secs.to_string()])
            .args(["--untaint-after", "1", "--metrics-listen", ""])
            .args(["--log", "info,edgeplex=debug"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env_remove("EDGEPLEX_FAILOVER_CONFIG")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn edgeplex failover");
        Controller { child, log }
    }

    /// Everything the controller logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The controller must still run.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "the controller exited with {status}:\n{}",
                tail(&self.log(), 60)
            );
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- controller log ---\n{}", tail(&self.log(), 60));
        }
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

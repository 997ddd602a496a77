//! `edgeplex run` as a real process: configuration errors, and restarts (SIGTERM and SIGKILL)
//! while reader processes keep reading the same rings.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const EDGEPLEX: &str = env!("CARGO_BIN_EXE_edgeplex");

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("edgeplex.toml");
    std::fs::write(&path, body).unwrap();
    path
}

fn run_check(config: &Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(EDGEPLEX)
        .args(["run", "--check", "--config"])
        .arg(config)
        .args(extra)
        .env_remove("EDGEPLEX_RING_DIR")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configs_exit_64_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[ring]\ndir = \"/dev/shm/x\"\ncolour = \"red\"\n",
            "ring.colour is not a known key",
        ),
        (
            "[stream.cam0]\ntype = \"camera\"\nwidth = 640\n",
            "stream.cam0.device is required",
        ),
        (
            "[stream.cam0]\ntype = \"test-pattern\"\nslot_count = 0\n",
            "stream.cam0.slot_count = 0",
        ),
        (
            "[stream.gps]\ntype = \"serial\"\ndevice = \"/dev/ttyS1\"\nbaud = 0\n",
            "stream.gps.baud",
        ),
        (
            "[stream.gps]\ntype = \"serial\"\ndevice = \"/dev/ttyS1\"\nbaud = \"fast\"\n",
            "stream.gps.baud",
        ),
        ("not toml [", "line 1"),
    ];
    for (body, want) in cases {
        let path = write_config(dir.path(), body);
        let (code, stderr) = run_check(&path, &[]);
        assert_eq!(code, 64, "{body:?}: exit code; stderr {stderr:?}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{body:?}: one line, got {stderr:?}"
        );
        assert!(
            stderr.contains(want),
            "{body:?}: {stderr:?} should mention {want:?}"
        );
    }
    let (code, stderr) = run_check(&dir.path().join("missing.toml"), &[]);
    assert_eq!(code, 64);
    assert!(stderr.contains("does not exist"), "{stderr}");
    let path = write_config(dir.path(), "[stream.cam0]\ntype = \"test-pattern\"\n");
    let (code, stderr) = run_check(&path, &["--set", "stream.cam0.fps=0"]);
    assert_eq!(code, 64);
    assert!(stderr.contains("stream.cam0.fps = 0"), "{stderr}");
}

#[test]
fn a_disk_ring_dir_is_refused() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let body = format!(
        "[ring]\ndir = \"{}\"\n[stream.cam0]\ntype = \"test-pattern\"\n",
        dir.path().join("rings").display()
    );
    let path = write_config(dir.path(), &body);
    let out = Command::new(EDGEPLEX)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("not on tmpfs"), "{stderr}");
}

struct Agent {
    child: Child,
}

impl Agent {
    fn start(config: &Path) -> Agent {
        let child = Command::new(EDGEPLEX)
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Agent { child }
    }

    fn signal(&mut self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        common::wait::wait_exit(
            &format!("the agent after {sig}"),
            &mut self.child,
            common::WATCHDOG,
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `ring cat --meta` reader process whose JSON lines arrive on a channel.
struct Reader {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Reader {
    fn start(ring: &Path) -> Reader {
        let mut child = Command::new(EDGEPLEX)
            .args([
                "ring",
                "cat",
                "--meta",
                "--from",
                "next",
                "--idle-timeout",
                "60",
            ])
            .arg(ring)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx
                    .send(serde_json::from_str::<Value>(&line).unwrap())
                    .is_err()
                {
                    break;
                }
            }
        });
        Reader { child, lines }
    }

    /// Wait for the next message line with an epoch satisfying `pred`.
    fn wait_for(&self, what: &str, mut pred: impl FnMut(&Value) -> bool, seen: &mut Vec<Value>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("timed out waiting for {what}"));
            let v = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
            seen.push(v.clone());
            if v.get("event").is_none() && pred(&v) {
                return;
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_file(path: &Path) {
    common::wait_until(&format!("{} to appear", path.display()), || path.exists());
}

#[test]
fn readers_continue_across_agent_restarts() {
    let rings = common::shm_dir();
    let body = format!(
        "[ring]\ndir = \"{}\"\n[metrics]\nlisten = \"\"\n[stream.cam0]\ntype = \"test-pattern\"\nwidth = 64\nheight = 48\nfps = 50\n[stream.gps0]\ntype = \"nmea-sim\"\nrate_hz = 50\n",
        rings.path().display()
    );
    let config = write_config(rings.path(), &body);
    let cam = edgeplex::ring::ring_path(rings.path(), "cam0");
    let gps = edgeplex::ring::ring_path(rings.path(), "gps0");
    let mut agent = Agent::start(&config);
    wait_for_file(&cam);
    wait_for_file(&gps);
    let readers = [Reader::start(&cam), Reader::start(&gps)];
    let mut seen = vec![Vec::new(), Vec::new()];
    for (r, s) in readers.iter().zip(seen.iter_mut()) {
        r.wait_for("first message", |_| true, s);
    }
    // SIGTERM: a graceful stop; then SIGKILL: no chance to clean up. Each time a new agent
    // continues the same rings with the next epoch, and the readers carry on.
    for (round, sig) in ["-TERM", "-KILL"].into_iter().enumerate() {
        agent.signal(sig);
        agent = Agent::start(&config);
        let want_epoch = round as u64 + 2;
        for (r, s) in readers.iter().zip(seen.iter_mut()) {
            r.wait_for(
                &format!("epoch {want_epoch} after {sig}"),
                |v| v["epoch"] == want_epoch,
                s,
            );
        }
    }
    drop(agent);
    for (name, lines) in ["cam0", "gps0"].iter().zip(&seen) {
        let msgs: Vec<&Value> = lines.iter().filter(|v| v.get("event").is_none()).collect();
        assert!(
            lines.iter().all(|v| v.get("event").is_none()),
            "{name}: no reopen or end events: {lines:?}"
        );
        for w in msgs.windows(2) {
            let (a, b) = (w[0]["seq"].as_u64().unwrap(), w[1]["seq"].as_u64().unwrap());
            let lost = w[1]["lost_before"].as_u64().unwrap();
            assert_eq!(
                b,
                a + 1 + lost,
                "{name}: sequence continues across restarts"
            );
            assert!(
                w[1]["epoch"].as_u64() >= w[0]["epoch"].as_u64(),
                "{name}: epochs never go back"
            );
            assert!(w[1]["intact"].as_bool().unwrap());
        }
    }
}

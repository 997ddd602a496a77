//! The Python reader in docs/examples, written from docs/RING.md alone, reads what the agent
//! writes: the spec is complete enough to interoperate.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

const EDGEPLEX: &str = env!("CARGO_BIN_EXE_edgeplex");

fn have_python() -> bool {
    Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn seq_and_hash(v: &[Value]) -> Vec<(u64, String)> {
    v.iter()
        .filter(|m| m.get("event").is_none())
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["fnv1a64"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn python_reader(ring: &Path, args: &[&str]) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/examples/ring_reader.py");
    let out = Command::new("timeout")
        .args(["60", "python3", script])
        .arg(ring)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run python reader");
    assert!(
        out.status.success(),
        "python reader failed: {:?}",
        out.status
    );
    lines(&out.stdout)
}

#[test]
fn python_reader_agrees_with_ring_cat() {
    assert!(
        have_python(),
        "python3 is needed for this test (Debian: python3)"
    );
    let dir = common::shm_dir();
    let status = Command::new(EDGEPLEX)
        .args([
            "demo",
            "--duration",
            "1.5",
            "--width",
            "64",
            "--height",
            "48",
            "--ring-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    for ring in ["cam0", "gps0"] {
        let ring = edgeplex::ring::ring_path(dir.path(), ring);
        let args = ["--from", "oldest", "--count", "5", "--idle-timeout", "0.2"];
        let py = python_reader(&ring, &args);
        let out = Command::new(EDGEPLEX)
            .args(["ring", "cat", "--meta", "--hash"])
            .arg(&ring)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        let rust = lines(&out.stdout);
        let (a, b) = (seq_and_hash(&py), seq_and_hash(&rust));
        assert_eq!(a.len(), 5, "python read {py:?}");
        assert_eq!(
            a,
            b,
            "python and rust readers disagree on {}",
            ring.display()
        );
    }
}

#[test]
fn python_reader_waits_on_the_futex() {
    assert!(
        have_python(),
        "python3 is needed for this test (Debian: python3)"
    );
    let dir = common::shm_dir();
    let mut demo = Command::new(EDGEPLEX)
        .args([
            "demo",
            "--duration",
            "20",
            "--fps",
            "20",
            "--width",
            "64",
            "--height",
            "48",
        ])
        .arg("--ring-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let ring = edgeplex::ring::ring_path(dir.path(), "cam0");
    for _ in 0..200 {
        if ring.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let py = python_reader(
        &ring,
        &["--from", "next", "--count", "10", "--idle-timeout", "10"],
    );
    let _ = demo.kill();
    let _ = demo.wait();
    let got = seq_and_hash(&py);
    assert_eq!(got.len(), 10, "python reader got {py:?}");
    for w in got.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "messages in order, none lost: {py:?}");
    }
}

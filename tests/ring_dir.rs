//! The ring directory: its layout (one directory per stream) and, below, whom it trusts.
//!
//! The hostile-user tests run the attacker's actions as a second real user (uid 65534) in a
//! child process, while the agent side runs as root (the test process).

mod common;

use std::path::Path;

use common::*;
use edgeplex::ring::{self, CreateOptions, RingSpec, StreamKind, Writer};

fn spec(name: &str) -> RingSpec {
    RingSpec {
        name: name.into(),
        kind: StreamKind::Serial,
        slot_count: 4,
        slot_size: 256,
        video: None,
    }
}

fn ring_ls(dir: &Path) -> String {
    let out = edgeplex()
        .args(["ring", "ls"])
        .arg(dir)
        .output()
        .expect("run edgeplex ring ls");
    assert!(out.status.success(), "ring ls failed: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn each_stream_has_its_own_directory_and_ring_ls_finds_it() {
    let dir = shm_dir();
    let mut writers = Vec::new();
    for name in ["cam0", "gps0"] {
        let path = ring::ring_path(dir.path(), name);
        assert_eq!(path, dir.path().join(name).join(format!("{name}.ring")));
        assert_eq!(ring::stream_dir(dir.path(), name), dir.path().join(name));
        writers.push(Writer::open(&path, &spec(name), &CreateOptions::default()).expect("writer"));
        assert!(path.is_file(), "{} was not created", path.display());
    }
    let listing = ring_ls(dir.path());
    let streams: Vec<&str> = listing
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(streams, ["cam0", "gps0"], "ring ls printed:\n{listing}");
}

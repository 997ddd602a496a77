//! The Python SDK's pytest suite (`python/tests`), run against real writer processes: this test
//! binary re-executed as `writer_child` (the library's `Writer`, driven by commands on stdin) and
//! as `reader_child` (the library's `Reader`, the Rust peer in the four-readers test), plus the
//! real `edgeplex` binary (`demo`, `ring cat`) and the C example.
//!
//! The Python environment is the virtual environment `.ci/run` creates (`target/pyenv`, or
//! `EDGEPLEX_PYENV`) with the package installed (`pip install ./python`). Without it the test
//! fails in CI (`CI` set) and is skipped elsewhere, saying how to create it. pytest's own exit
//! code decides: 5 ("no tests collected") fails like any other.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use edgeplex::ring::layout::{fourcc_from_str, VideoFormat};
use edgeplex::ring::{
    self, CreateOptions, Meta, Reader, Recv, RingSpec, Start, StreamKind, Writer,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const MARK: &str = "EDGEPLEX>";

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn say(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{MARK} {s}");
    let _ = out.flush();
}

/// A video ring writer driven by stdin: `publish N [FPS]` publishes N frames (at most FPS per
/// second; 0: as fast as it can) and answers `published head=H`; `flood SECONDS` publishes as
/// fast as it can for that long; EOF or `quit` stops it (the ring stays consistent).
///
/// Frame `seq` is filled with one byte value, `seq % 251`, when `EDGEPLEX_SDK_FILL=uniform` (a
/// torn read shows two values), else with a pattern that differs per frame and per byte.
#[test]
fn writer_child() {
    let Ok(path) = std::env::var("EDGEPLEX_SDK_WRITER") else {
        return;
    };
    let path = PathBuf::from(path);
    let (w, h): (u32, u32) = (
        env_or("EDGEPLEX_SDK_WIDTH", 64),
        env_or("EDGEPLEX_SDK_HEIGHT", 48),
    );
    let uniform = std::env::var("EDGEPLEX_SDK_FILL").as_deref() == Ok("uniform");
    let spec = RingSpec {
        name: path.file_stem().unwrap().to_string_lossy().into_owned(),
        kind: StreamKind::Video,
        slot_count: env_or("EDGEPLEX_SDK_SLOTS", 16),
        slot_size: u64::from(w * h * 2),
        video: Some(VideoFormat {
            width: w,
            height: h,
            fourcc: fourcc_from_str("YUYV").unwrap(),
            stride: w * 2,
        }),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let mut writer = Writer::open(&path, &spec, &CreateOptions::default()).unwrap();
    say(&format!(
        "ready epoch={} head={}",
        writer.epoch(),
        writer.head()
    ));
    let mut frame = vec![0u8; (w * h * 2) as usize];
    let mut device_seq = 0u64;
    let mut publish = |writer: &mut Writer| {
        let seq = writer.head();
        if uniform {
            frame.fill((seq % 251) as u8);
        } else {
            for (i, b) in frame.iter_mut().enumerate() {
                *b = (i as u64)
                    .wrapping_mul(31)
                    .wrapping_add(seq.wrapping_mul(7)) as u8;
            }
        }
        let meta = Meta {
            capture_ns: ring::monotonic_ns(),
            device_seq,
            flags: 0,
        };
        device_seq += 1;
        writer.publish(&frame, meta).unwrap();
    };
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["publish", n, rest @ ..] => {
                let n: u64 = n.parse().unwrap();
                let fps: f64 = rest.first().map_or(0.0, |f| f.parse().unwrap());
                for _ in 0..n {
                    publish(&mut writer);
                    if fps > 0.0 {
                        std::thread::sleep(Duration::from_secs_f64(1.0 / fps));
                    }
                }
            }
            ["flood", secs] => {
                let end = Instant::now() + Duration::from_secs_f64(secs.parse().unwrap());
                while Instant::now() < end {
                    publish(&mut writer);
                }
            }
            ["quit"] => break,
            other => panic!("writer_child: unknown command {other:?}"),
        }
        say(&format!("published head={}", writer.head()));
    }
}

/// The Rust reader in the four-readers test: the library's `Reader`, one JSON line per intact
/// message (`seq`, `len`, `fnv1a64`), like `ring cat --meta --hash`.
#[test]
fn reader_child() {
    let Ok(path) = std::env::var("EDGEPLEX_SDK_READER") else {
        return;
    };
    let count: u64 = env_or("EDGEPLEX_SDK_COUNT", 10);
    let mut reader = Reader::open(Path::new(&path), Start::Oldest).unwrap();
    let mut buf = Vec::new();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen < count && Instant::now() < deadline {
        if let Recv::Message(m) = reader.next(Duration::from_secs(1)).unwrap() {
            let (seq, lost) = (m.seq(), m.lost_before());
            if m.copy_to(&mut buf) {
                say(&format!(
                    "{{\"seq\":{seq},\"len\":{},\"lost_before\":{lost},\"fnv1a64\":\"{:016x}\"}}",
                    buf.len(),
                    ring::fnv1a64(&buf)
                ));
                seen += 1;
            }
        }
    }
}

fn pyenv() -> PathBuf {
    std::env::var_os("EDGEPLEX_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target/pyenv"))
}

#[test]
fn pytest_suite() {
    let python = pyenv().join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import edgeplex, numpy, pytest"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let how = format!(
            "the Python SDK tests need {} with the package installed: python3 -m venv \
             target/pyenv && target/pyenv/bin/pip install maturin numpy pytest ./python",
            python.display()
        );
        if std::env::var_os("CI").is_some() {
            panic!("{how}");
        }
        eprintln!("skipping: {how}");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let target_dir = exe.parent().unwrap().parent().unwrap();
    let status = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(Path::new(ROOT).join("python/tests"))
        .env("EDGEPLEX_BIN", env!("CARGO_BIN_EXE_edgeplex"))
        .env("EDGEPLEX_TEST_EXE", &exe)
        .env("EDGEPLEX_C_LIB", target_dir.join("libedgeplex_ring_c.a"))
        .env("EDGEPLEX_ROOT", ROOT)
        // The ring crate's examples, which `python/bench/latency.py` runs (built by
        // `cargo test --workspace`).
        .env("EDGEPLEX_EXAMPLES", target_dir.join("examples"))
        .env_remove("EDGEPLEX_LOG")
        .env_remove("EDGEPLEX_RING_DIR")
        .status()
        .expect("run pytest");
    assert!(status.success(), "pytest failed: {status}");
}

//! `edgeplex export` end to end: a real writer (the library's `Writer`, in this process), the real
//! binary as a child process, and a small HTTP server on loopback that records every PUT and can
//! be told to fail the first K requests.
//!
//! Nothing here depends on timing: the writer is idle while an export runs, publish times are set
//! explicitly where a test needs them, and every wait has a deadline.

mod common;

use common::shm_dir;
use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use edgeplex::ring::layout::{self, desc};
use edgeplex::ring::{CreateOptions, Meta, RingSpec, StreamKind, VideoFormat, Writer};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn serial_spec(slots: u32) -> RingSpec {
    RingSpec {
        name: "gps".into(),
        kind: StreamKind::Serial,
        slot_count: slots,
        slot_size: 256,
        video: None,
    }
}

fn open_writer(path: &Path, spec: &RingSpec) -> Writer {
    Writer::open(path, spec, &CreateOptions::default()).expect("open writer")
}

/// Publish `count` samples; message n carries `sample n epoch E` (or binary bytes when n % 7 == 3,
/// to exercise the base64 encoding).
fn publish(w: &mut Writer, count: u64) {
    for _ in 0..count {
        let n = w.head();
        let body = sample_body(n, w.epoch());
        let meta = Meta {
            capture_ns: 1_000 + n,
            device_seq: 10_000 + n,
            flags: 0,
        };
        assert_eq!(w.publish(&body, meta).expect("publish"), n);
    }
}

fn sample_body(n: u64, epoch: u64) -> Vec<u8> {
    if n % 7 == 3 {
        vec![0xff, 0xfe, n as u8, epoch as u8]
    } else {
        format!("sample {n} epoch {epoch}").into_bytes()
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c}"),
        }
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let pad = chunk.iter().filter(|&&c| c == b'=').count();
        let mut n = 0u32;
        for &c in chunk {
            n = (n << 6) | if c == b'=' { 0 } else { val(c) };
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    out
}

fn payload_of(line: &Value) -> Vec<u8> {
    let p = line["payload"].as_str().expect("payload string");
    match line["encoding"].as_str() {
        Some("utf8") => p.as_bytes().to_vec(),
        Some("base64") => base64_decode(p),
        other => panic!("unknown encoding {other:?}"),
    }
}

/// Run `edgeplex export ARGS...` to completion (with a watchdog).
fn export(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgeplex"))
        .arg("export")
        .args(args)
        .env_remove("EDGEPLEX_LOG")
        .env_remove("EDGEPLEX_LOG_FORMAT")
        .env_remove("EDGEPLEX_EXPORT_STATE")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn edgeplex export");
    common::wait::wait_exit("edgeplex export", &mut child, common::WATCHDOG);
    child.wait_with_output().expect("collect output")
}

/// Run an export that must succeed; return its summary.
fn export_ok(args: &[&str]) -> Value {
    let out = export(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "export {args:?} failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let summary: Value = serde_json::from_str(lines.next().expect("a summary line"))
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}): {stdout}"));
    assert!(lines.next().is_none(), "exactly one summary line: {stdout}");
    summary
}

fn read_lines(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    text.lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn files_of(summary: &Value) -> Vec<String> {
    summary["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f.as_str().expect("file name").to_owned())
        .collect()
}

fn samples(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l["type"] == "sample").collect()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

// ---------------------------------------------------------------------------------------------
// A recording HTTP server
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Put {
    method: String,
    path: String,
    body: Vec<u8>,
    checksum: Option<String>,
    status: u16,
}

struct Server {
    url: String,
    puts: Arc<Mutex<Vec<Put>>>,
    fail_first: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listen on 127.0.0.1:0 and answer 500 to the first `fail_first` requests, 201 afterwards.
    fn start(fail_first: usize) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}/upload", listener.local_addr().expect("addr"));
        let puts = Arc::new(Mutex::new(Vec::new()));
        let fail = Arc::new(AtomicUsize::new(fail_first));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (puts, fail, stop) = (puts.clone(), fail.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let _ = conn.set_nonblocking(false);
                            if let Some(put) = handle(conn, &fail) {
                                puts.lock().expect("lock").push(put);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Server {
            url,
            puts,
            fail_first: fail,
            stop,
            thread: Some(thread),
        }
    }

    fn puts(&self) -> Vec<Put> {
        self.puts.lock().expect("lock").clone()
    }

    fn fail_next(&self, k: usize) {
        self.fail_first.store(k, Ordering::Relaxed);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(conn: TcpStream, fail: &AtomicUsize) -> Option<Put> {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut r = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut len = 0usize;
    let mut checksum = None;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().ok()?,
            "x-edgeplex-fnv1a64" => checksum = Some(v.trim().to_owned()),
            _ => {}
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    let failing = fail
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| k.checked_sub(1))
        .is_ok();
    let status = if failing { 500 } else { 201 };
    let mut w = conn;
    let reason = if failing {
        "Internal Server Error"
    } else {
        "Created"
    };
    let _ = write!(
        w,
        "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    Some(Put {
        method,
        path,
        body,
        checksum,
        status,
    })
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// (1) Consecutive runs: no duplicates, no gaps; the second run has exactly the new messages.
#[test]
fn consecutive_runs_export_exactly_the_new_messages() {
    let dir = shm_dir();
    let ring = dir.path().join("gps.ring");
    let out = dir.path().join("out");
    let state = dir.path().join("state.json");
    let mut w = open_writer(&ring, &serial_spec(64));
    publish(&mut w, 30);

    let args = [
        s(&ring),
        "--out",
        s(&out),
        "--state",
        s(&state),
        "--since-last",
    ];
    let first = export_ok(&args);
    assert_eq!(first["from_seq"], 0);
    assert_eq!(first["to_seq"], 30);
    assert_eq!(first["exported"], 30);
    assert_eq!(first["gaps"], 0);

    publish(&mut w, 25);
    let second = export_ok(&args);
    assert_eq!(second["from_seq"], 30);
    assert_eq!(second["to_seq"], 55);
    assert_eq!(second["exported"], 25);
    assert_eq!(second["gaps"], 0);

    // Nothing new: an empty window, no files.
    let third = export_ok(&args);
    assert_eq!(third["exported"], 0);
    assert_eq!(third["gaps"], 0);
    assert!(files_of(&third).is_empty());

    let mut all = Vec::new();
    for summary in [&first, &second] {
        let files = files_of(summary);
        assert_eq!(files.len(), 1, "{summary}");
        let lines = read_lines(&out.join(&files[0]));
        assert!(lines.iter().all(|l| l["type"] == "sample"), "no gap lines");
        for l in samples(&lines) {
            let n = l["seq"].as_u64().expect("seq");
            assert_eq!(payload_of(l), sample_body(n, 1), "payload of {n}");
            assert_eq!(l["epoch"], 1);
            assert_eq!(l["device_seq"], 10_000 + n);
            assert_eq!(l["capture_ns"], 1_000 + n);
            assert!(l["publish_ns"].as_u64().expect("publish_ns") > 0);
            all.push(n);
        }
    }
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "no duplicates");
    assert_eq!(unique, (0..55).collect::<BTreeSet<u64>>(), "no gaps");
    // Some payloads were binary and went through base64.
    assert!(fs::read_to_string(out.join(&files_of(&first)[0]))
        .expect("read")
        .contains("\"encoding\":\"base64\""));

    let st: Value =
        serde_json::from_str(&fs::read_to_string(&state).expect("state")).expect("json");
    assert_eq!(st["next_seq"], 55);
    assert_eq!(st["last_seq"], 54);
    assert_eq!(st["last_epoch"], 1);
}

/// (2) A writer that laps the exporter between runs: the gap is counted exactly.
#[test]
fn a_lapped_exporter_counts_the_gap() {
    let dir = shm_dir();
    let ring = dir.path().join("gps.ring");
    let out = dir.path().join("out");
    let state = dir.path().join("state.json");
    let mut w = open_writer(&ring, &serial_spec(16));
    publish(&mut w, 10);
    let args = [s(&ring), "--out", s(&out), "--state", s(&state)];
    let first = export_ok(&args);
    assert_eq!(first["exported"], 10);
    assert_eq!(first["gaps"], 0);

    publish(&mut w, 100); // head 110; the ring safely holds the newest 15
    let second = export_ok(&args);
    assert_eq!(second["from_seq"], 10);
    assert_eq!(second["to_seq"], 110);
    assert_eq!(second["exported"], 15);
    assert_eq!(second["gaps"], 100 - 15);
    let ranges = second["gap_ranges"].as_array().expect("gap_ranges");
    assert_eq!(ranges.len(), 1);
    assert_eq!(ranges[0]["from_seq"], 10);
    assert_eq!(ranges[0]["to_seq"], 95);
    assert_eq!(ranges[0]["count"], 85);

    // The gap is in the file too, before the samples that follow it.
    let lines = read_lines(&out.join(&files_of(&second)[0]));
    assert_eq!(lines[0]["type"], "gap");
    assert_eq!(lines[0]["count"], 85);
    let seqs: Vec<u64> = samples(&lines)
        .iter()
        .map(|l| l["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (95..110).collect::<Vec<_>>());

    // exported + gaps covers the whole window, and the next run starts after it.
    publish(&mut w, 5);
    let third = export_ok(&args);
    assert_eq!(third["from_seq"], 110);
    assert_eq!(third["exported"], 5);
    assert_eq!(third["gaps"], 0);
}

/// (3) A failed upload leaves the state unchanged; the next run re-exports and uploads the same
/// window. A server that fails the first two PUTs makes the run retry and succeed.
#[test]
fn failed_upload_keeps_the_state_and_retries_succeed() {
    let dir = shm_dir();
    let ring = dir.path().join("gps.ring");
    let out = dir.path().join("out");
    let state = dir.path().join("state.json");
    let mut w = open_writer(&ring, &serial_spec(64));
    publish(&mut w, 20);
    let server = Server::start(0);
    let args = |retries: &'static str| {
        vec![
            s(&ring).to_owned(),
            "--out".into(),
            s(&out).to_owned(),
            "--state".into(),
            s(&state).to_owned(),
            "--upload".into(),
            server.url.clone(),
            "--retries".into(),
            retries.into(),
        ]
    };
    let run = |retries: &'static str| {
        let a = args(retries);
        export(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // A first successful run, so there is a state to keep.
    let ok = run("0");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let state_before = fs::read(&state).expect("state");
    publish(&mut w, 12);

    // Every attempt fails: exit 1, one line on stderr, state untouched.
    server.fail_next(3);
    let failed = run("2");
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("edgeplex:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("next run retries"), "{stderr}");
    assert_eq!(
        fs::read(&state).expect("state"),
        state_before,
        "state unchanged"
    );
    let puts = server.puts();
    assert_eq!(puts.len(), 1 + 3, "first run + 3 failed attempts");
    assert!(puts[1..].iter().all(|p| p.status == 500));

    // The server recovers after two more failures: the run retries and uploads the same window.
    server.fail_next(2);
    let retried = export_ok(&args("3").iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(retried["from_seq"], 20);
    assert_eq!(retried["to_seq"], 32);
    assert_eq!(retried["exported"], 12);
    assert_eq!(retried["uploaded"], 1);
    let puts = server.puts();
    assert_eq!(puts.len(), 4 + 3, "two failures, then success");
    let last = puts.last().expect("a put");
    assert_eq!(last.status, 201);
    assert_eq!(last.method, "PUT");
    let name = &files_of(&retried)[0];
    assert_eq!(last.path, format!("/upload/{name}"));
    // The failed run targeted the same file name: the very same window.
    assert!(puts[1..].iter().all(|p| p.path == last.path));
    assert_eq!(last.body, fs::read(out.join(name)).expect("output file"));
    assert_eq!(
        last.checksum.as_deref(),
        Some(format!("{:016x}", edgeplex::ring::fnv1a64(&last.body)).as_str())
    );
    let seqs: Vec<u64> = samples(&read_lines(&out.join(name)))
        .iter()
        .map(|l| l["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (20..32).collect::<Vec<_>>());
    let st: Value =
        serde_json::from_str(&fs::read_to_string(&state).expect("state")).expect("json");
    assert_eq!(st["next_seq"], 32);
}

/// (4) A video ring: one file per frame plus an index with the geometry.
#[test]
fn frames_become_files_plus_an_index() {
    let dir = shm_dir();
    let ring = dir.path().join("cam0.ring");
    let out = dir.path().join("out");
    let (width, height) = (32u32, 8u32);
    let spec = RingSpec {
        name: "cam0".into(),
        kind: StreamKind::Video,
        slot_count: 8,
        slot_size: u64::from(width * height * 2),
        video: Some(VideoFormat {
            width,
            height,
            fourcc: layout::fourcc_from_str("YUYV").expect("fourcc"),
            stride: width * 2,
        }),
    };
    let mut w = open_writer(&ring, &spec);
    let frame = |n: u64| vec![n as u8; (width * height * 2) as usize];
    for n in 0..5u64 {
        let meta = Meta {
            capture_ns: 7_000 + n,
            device_seq: n,
            flags: layout::FLAG_CAPTURE_REALTIME,
        };
        w.publish(&frame(n), meta).expect("publish frame");
    }
    let summary = export_ok(&[s(&ring), "--out", s(&out)]);
    assert_eq!(summary["format"], "frames");
    assert_eq!(summary["exported"], 5);
    let files = files_of(&summary);
    assert_eq!(files.len(), 6, "5 frames + index: {files:?}");
    let index_name = files.last().expect("index");
    assert!(index_name.ends_with(".index.jsonl"), "index uploads last");
    let index = read_lines(&out.join(index_name));
    assert_eq!(index.len(), 5);
    for (n, entry) in index.iter().enumerate() {
        let n = n as u64;
        assert_eq!(entry["type"], "frame");
        assert_eq!(entry["seq"], n);
        assert_eq!(entry["width"], width);
        assert_eq!(entry["height"], height);
        assert_eq!(entry["fourcc"], "YUYV");
        assert_eq!(entry["stride"], width * 2);
        assert_eq!(entry["capture_ns"], 7_000 + n);
        assert_eq!(entry["flags"], layout::FLAG_CAPTURE_REALTIME);
        let file = entry["file"].as_str().expect("file");
        assert_eq!(file, format!("cam0-{n}.yuyv"));
        assert_eq!(fs::read(out.join(file)).expect("frame file"), frame(n));
    }
    // No temporary files are left behind.
    let leftovers: Vec<PathBuf> = fs::read_dir(&out)
        .expect("out dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// (5) `--since 10s` selects by publish time: messages whose publish_ns is an hour old are left
/// out. (The test rewrites their `publish_ns` in the file instead of waiting.)
#[test]
fn since_selects_by_publish_time() {
    let dir = shm_dir();
    let ring = dir.path().join("gps.ring");
    let out = dir.path().join("out");
    let spec = serial_spec(64);
    let mut w = open_writer(&ring, &spec);
    publish(&mut w, 20);
    // Age messages 0..12 by one hour, as if they had been published then.
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&ring)
        .expect("open ring for the test's edit");
    for n in 0..12u64 {
        let at = layout::HEADER_SIZE + n * layout::DESC_SIZE + desc::PUBLISH_NS as u64;
        let mut cur = [0u8; 8];
        file.read_exact_at(&mut cur, at).expect("read publish_ns");
        let old = u64::from_le_bytes(cur) - 3_600_000_000_000;
        file.write_all_at(&old.to_le_bytes(), at)
            .expect("write publish_ns");
    }
    let summary = export_ok(&[s(&ring), "--out", s(&out), "--since", "10s"]);
    assert_eq!(summary["mode"], "since");
    assert_eq!(summary["exported"], 8);
    assert_eq!(summary["gaps"], 0);
    let seqs: Vec<u64> = samples(&read_lines(&out.join(&files_of(&summary)[0])))
        .iter()
        .map(|l| l["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (12..20).collect::<Vec<_>>());

    let all = export_ok(&[s(&ring), "--out", s(&out), "--since", "2h"]);
    assert_eq!(all["exported"], 20);
}

/// (6) Bad arguments exit 64 with one line saying what to do; a missing ring exits 66.
#[test]
fn bad_arguments_exit_64_with_one_line() {
    let dir = shm_dir();
    let ring = dir.path().join("gps.ring");
    let _w = open_writer(&ring, &serial_spec(8));
    let out = dir.path().join("out");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![s(&ring)], "--out"),
        (
            vec![s(&ring), "--out", s(&out), "--since", "soon"],
            "--since",
        ),
        (vec![s(&ring), "--out", s(&out), "--since", "1x"], "--since"),
        (vec![s(&ring), "--out", s(&out), "--since-last"], "--state"),
        (
            vec![s(&ring), "--out", s(&out), "--upload", "https://example/"],
            "--upload",
        ),
    ];
    for (args, mention) in cases {
        let o = export(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(mention), "{args:?}: {stderr}");
        assert!(o.stdout.is_empty());
    }
    assert!(!out.exists(), "nothing written on a usage error");

    let missing = dir.path().join("nope.ring");
    let o = export(&[s(&missing), "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(66));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr)
            .trim_end()
            .lines()
            .count(),
        1
    );
}

/// After a writer restart (new epoch), the next run continues exactly where the last one stopped.
#[test]
fn export_continues_across_a_writer_restart() {
    let dir = shm_dir();
    let ring = dir.path().join("gps.ring");
    let out = dir.path().join("out");
    let state = dir.path().join("state.json");
    let spec = serial_spec(32);
    let mut w = open_writer(&ring, &spec);
    publish(&mut w, 10);
    let epoch1 = w.epoch();
    let args = [s(&ring), "--out", s(&out), "--state", s(&state)];
    assert_eq!(export_ok(&args)["exported"], 10);
    publish(&mut w, 3);
    drop(w);

    let mut w = open_writer(&ring, &spec);
    let epoch2 = w.epoch();
    assert_eq!(epoch2, epoch1 + 1);
    publish(&mut w, 7);
    let summary = export_ok(&args);
    assert_eq!(summary["from_seq"], 10);
    assert_eq!(summary["to_seq"], 20);
    assert_eq!(summary["exported"], 10);
    assert_eq!(summary["gaps"], 0);
    assert_eq!(summary["reset"], false);
    let lines = read_lines(&out.join(&files_of(&summary)[0]));
    let got: Vec<(u64, u64)> = samples(&lines)
        .iter()
        .map(|l| {
            (
                l["seq"].as_u64().expect("seq"),
                l["epoch"].as_u64().expect("epoch"),
            )
        })
        .collect();
    let want: Vec<(u64, u64)> = (10..20)
        .map(|n| (n, if n < 13 { epoch1 } else { epoch2 }))
        .collect();
    assert_eq!(got, want);
    for l in samples(&lines) {
        let n = l["seq"].as_u64().expect("seq");
        let e = l["epoch"].as_u64().expect("epoch");
        assert_eq!(payload_of(l), sample_body(n, e));
    }
    let st: Value =
        serde_json::from_str(&fs::read_to_string(&state).expect("state")).expect("json");
    assert_eq!(st["last_epoch"], epoch2);
}

/// A ring re-created from scratch (numbering restarted) is detected: the export starts over.
#[test]
fn a_recreated_ring_resets_the_export() {
    let dir = shm_dir();
    let ring = dir.path().join("gps.ring");
    let out = dir.path().join("out");
    let state = dir.path().join("state.json");
    let spec = serial_spec(32);
    let mut w = open_writer(&ring, &spec);
    publish(&mut w, 20);
    let args = [s(&ring), "--out", s(&out), "--state", s(&state)];
    assert_eq!(export_ok(&args)["exported"], 20);
    drop(w);
    fs::remove_file(&ring).expect("remove ring");
    let mut w = open_writer(&ring, &spec);
    publish(&mut w, 5);
    let summary = export_ok(&args);
    assert_eq!(summary["reset"], true);
    assert_eq!(summary["from_seq"], 0);
    assert_eq!(summary["exported"], 5);
}

/// Two exports with one state file cannot run at once: the second refuses (exit 1) and changes
/// nothing.
#[test]
fn a_second_exporter_on_the_same_state_refuses() {
    let dir = shm_dir();
    let ring = dir.path().join("gps.ring");
    let out = dir.path().join("out");
    let state = dir.path().join("state.json");
    let mut w = open_writer(&ring, &serial_spec(16));
    publish(&mut w, 4);
    let lock = fs::File::create(dir.path().join("state.json.lock")).expect("lock file");
    lock.try_lock()
        .expect("take the lock as the 'other' exporter");
    let o = export(&[s(&ring), "--out", s(&out), "--state", s(&state)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("another export"));
    assert!(!state.exists());
    drop(lock);
    assert_eq!(
        export_ok(&[s(&ring), "--out", s(&out), "--state", s(&state)])["exported"],
        4
    );
}

/// Against a live writer in another process (`edgeplex demo`, a 500 fps camera on an 8-slot
/// ring and a 10 Hz NMEA sensor): whatever the race between writer and exporter, every message
/// of every window is either exported exactly once or counted as a gap, and consecutive windows
/// tile the stream with no overlap and no hole.
#[test]
fn live_writer_every_message_is_exported_or_counted() {
    let dir = shm_dir();
    let out = dir.path().join("out");
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut demo = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_edgeplex"))
            .args(["demo", "--ring-dir", s(dir.path()), "--metrics-listen", ""])
            .args(["--fps", "500", "--width", "64", "--height", "16"])
            .args(["--duration", "120"])
            .env_remove("EDGEPLEX_LOG")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn edgeplex demo"),
    );
    let cam = edgeplex::ring::ring_path(dir.path(), "cam0");
    let gps = edgeplex::ring::ring_path(dir.path(), "gps0");
    let head = |p: &Path| edgeplex::ring::inspect(p).map(|i| i.head).unwrap_or(0);
    common::wait_until("the demo to publish 20 frames and 2 samples", || {
        assert!(
            demo.0.try_wait().expect("try_wait").is_none(),
            "edgeplex demo exited early"
        );
        head(&cam) >= 20 && head(&gps) >= 2
    });

    for (ring, state) in [(&cam, "cam.state"), (&gps, "gps.state")] {
        let state = dir.path().join(state);
        let mut prev_to: Option<u64> = None;
        for _ in 0..4 {
            let summary = export_ok(&[s(ring), "--out", s(&out), "--state", s(&state)]);
            let from = summary["from_seq"].as_u64().expect("from");
            let to = summary["to_seq"].as_u64().expect("to");
            let exported = summary["exported"].as_u64().expect("exported");
            let gaps = summary["gaps"].as_u64().expect("gaps");
            if let Some(p) = prev_to {
                assert_eq!(from, p, "windows tile the stream: {summary}");
            }
            assert_eq!(exported + gaps, to - from, "{summary}");
            prev_to = Some(to);
            let Some(name) = files_of(&summary).pop() else {
                assert_eq!(to, from);
                continue;
            };
            // Every seq of the window appears exactly once: as a message or inside a gap line.
            let mut covered = Vec::new();
            for l in read_lines(&out.join(&name)) {
                match l["type"].as_str() {
                    Some("gap") => covered.extend(
                        l["from_seq"].as_u64().expect("gap from")
                            ..l["to_seq"].as_u64().expect("gap to"),
                    ),
                    Some("frame") => {
                        assert_eq!(l["len"], 64 * 16 * 2);
                        let file = out.join(l["file"].as_str().expect("file"));
                        assert_eq!(fs::metadata(file).expect("frame file").len(), 64 * 16 * 2);
                        covered.push(l["seq"].as_u64().expect("seq"));
                    }
                    Some("sample") => {
                        assert_eq!(l["encoding"], "utf8");
                        assert!(l["payload"].as_str().expect("payload").starts_with('$'));
                        covered.push(l["seq"].as_u64().expect("seq"));
                    }
                    other => panic!("unexpected line type {other:?}"),
                }
            }
            covered.sort_unstable();
            assert_eq!(covered, (from..to).collect::<Vec<_>>(), "{summary}");
            // Let the writer move on a little (progress, not timing, is what matters).
            let target = to + 3;
            common::wait_until(&format!("the writer to reach {target}"), || {
                head(ring) >= target
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile output directories and servers
// ---------------------------------------------------------------------------------------------

/// A server that accepts, reads the request, then trickles its response one byte every
/// `every`: each read sees progress, so only a deadline on the whole attempt ends it.
fn trickle_server(every: Duration) -> (String, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let url = format!("http://{}/upload", listener.local_addr().expect("addr"));
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let stop = stopped.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = conn.read(&mut buf);
                // Bounded: 44 bytes (about 90 s), and it stops with the test.
                for b in b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n" {
                    if stop.load(Ordering::Relaxed) || conn.write_all(&[*b]).is_err() {
                        return;
                    }
                    std::thread::sleep(every);
                }
            });
        }
    });
    (url, stop)
}

/// An upload server trickling one byte every 2 s cannot hold an attempt past
/// `--attempt-timeout`: the run fails with a message naming the deadline, the state file is
/// unchanged, and the next run against a good server uploads every message exactly once.
#[test]
fn an_upload_attempt_has_a_total_deadline_and_loses_nothing() {
    let dir = shm_dir();
    let ring = dir.path().join("gps.ring");
    let out = dir.path().join("out");
    let state = dir.path().join("state.json");
    let mut w = open_writer(&ring, &serial_spec(64));
    publish(&mut w, 10);
    let (slow, stop) = trickle_server(Duration::from_secs(2));
    let o = export(&[
        s(&ring),
        "--out",
        s(&out),
        "--state",
        s(&state),
        "--upload",
        &slow,
        "--retries",
        "1",
        "--attempt-timeout",
        "1",
    ]);
    stop.store(true, Ordering::Relaxed);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("deadline"),
        "the deadline is reported: {stderr}"
    );
    assert!(
        !state.exists(),
        "a failed upload must not advance the state"
    );

    let good = Server::start(0);
    let summary = export_ok(&[
        s(&ring),
        "--out",
        s(&out),
        "--state",
        s(&state),
        "--upload",
        &good.url,
    ]);
    assert_eq!(
        (summary["from_seq"].as_u64(), summary["exported"].as_u64()),
        (Some(0), Some(10))
    );
    let mut seqs = Vec::new();
    for put in good.puts() {
        for line in String::from_utf8_lossy(&put.body).lines() {
            let v: Value = serde_json::from_str(line).expect("json line");
            seqs.push(v["seq"].as_u64().expect("seq"));
        }
    }
    assert_eq!(
        seqs,
        (0..10).collect::<Vec<_>>(),
        "each message uploaded exactly once"
    );
}

/// In a shared `--out` directory, another user's symlinks are never followed: not at the
/// predictable old temporary name, not at the final name, not at the lock file.
#[test]
fn export_never_follows_symlinks_in_the_output_directory() {
    let dir = shm_dir();
    let ring = dir.path().join("gps.ring");
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let mut w = open_writer(&ring, &serial_spec(16));
    publish(&mut w, 3);
    // The names a root export used to write through: the lines file, and its temporary name
    // for any pid the attacker guesses (we plant the next few thousand after ours).
    let final_name = out.join("gps-0-3.jsonl");
    std::os::unix::fs::symlink(&victim, &final_name).unwrap();
    let me = std::process::id();
    for pid in me..me + 5000 {
        let _ = std::os::unix::fs::symlink(&victim, out.join(format!(".gps-0-3.jsonl.tmp.{pid}")));
    }
    let state = out.join("state.json");
    let planted = dir.path().join("planted");
    std::os::unix::fs::symlink(&planted, out.join("state.json.lock")).unwrap();
    let o = export(&[s(&ring), "--out", s(&out), "--state", s(&state)]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_ne!(
        o.status.code(),
        Some(0),
        "a symlinked lock file is refused: {stderr}"
    );
    assert!(!planted.exists(), "the lock symlink was followed: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    fs::remove_file(out.join("state.json.lock")).unwrap();
    export_ok(&[s(&ring), "--out", s(&out), "--state", s(&state)]);
    assert_eq!(
        fs::read(&victim).unwrap(),
        b"precious",
        "the symlink target was written"
    );
    assert!(
        !fs::symlink_metadata(&final_name)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the output replaced the symlink"
    );
    assert_eq!(read_lines(&final_name).len(), 3);
}

/// A state file claiming `next_seq = 2^64 - 1` is refused, not read as a phantom gap.
#[test]
fn a_state_file_with_next_seq_at_the_end_of_numbers_is_refused() {
    let dir = shm_dir();
    let ring = dir.path().join("gps.ring");
    let out = dir.path().join("out");
    let state = dir.path().join("state.json");
    let mut w = open_writer(&ring, &serial_spec(16));
    publish(&mut w, 3);
    let first = export_ok(&[s(&ring), "--out", s(&out), "--state", s(&state)]);
    assert_eq!(first["exported"], 3);
    let mut st: Value = serde_json::from_slice(&fs::read(&state).unwrap()).unwrap();
    st["next_seq"] = u64::MAX.into();
    fs::write(&state, serde_json::to_vec(&st).unwrap()).unwrap();
    let o = export(&[s(&ring), "--out", s(&out), "--state", s(&state)]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("next_seq"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

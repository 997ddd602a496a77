//! The metrics port faces the cluster network: idle and slowloris clients that hold hundreds of
//! connections open, and reopen each one the server closes, must not starve the kubelet's
//! probes or Prometheus' scrapes.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Connections the attacker keeps open: idle ones, and slowloris ones that trickle a header.
const IDLE: usize = 300;
const SLOW: usize = 100;
/// How long the attack lasts.
const ATTACK: Duration = Duration::from_secs(8);
/// The kubelet's default probe timeout is 1 s.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The demo process, and its ring directory (removed when dropped).
struct Demo(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_demo() -> (Demo, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let dir = common::shm_dir();
    let child = common::edgeplex()
        .args([
            "demo",
            "--duration",
            "120",
            "--metrics-listen",
            &addr.to_string(),
        ])
        .arg("--ring-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let demo = Demo(child, dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(addr, "/healthz").is_err() {
        assert!(
            Instant::now() < deadline,
            "the demo's endpoint never answered"
        );
        thread::sleep(Duration::from_millis(50));
    }
    (demo, addr)
}

/// One request with the probe's timeout; the time it took, or why it failed.
fn get(addr: SocketAddr, path: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(|e| e.to_string())?;
    let left = || {
        PROBE_TIMEOUT
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1))
    };
    s.set_write_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        s.set_read_timeout(Some(left()))
            .map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("{e} after {:?}", start.elapsed())),
        }
        if start.elapsed() > PROBE_TIMEOUT {
            return Err("timed out".into());
        }
    }
    let text = String::from_utf8_lossy(&body);
    if text.starts_with("HTTP/1.1 200") {
        Ok(start.elapsed())
    } else {
        Err(format!("answer: {:?}", text.lines().next()))
    }
}

/// Keep `n` connections open until `stop`; reopen each one the server closes. With `trickle`,
/// send one byte of a never-ending header every 200 ms on each (slowloris).
fn attacker(
    addr: SocketAddr,
    n: usize,
    trickle: bool,
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let open = || {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
            s.set_nonblocking(true).ok()?;
            if trickle {
                let _ = (&s).write(b"GET /metrics HTTP/1.1\r\nX-Slow: ");
            }
            opened.fetch_add(1, Ordering::Relaxed);
            Some(s)
        };
        let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| open()).collect();
        let mut buf = [0u8; 1024];
        let mut last_trickle = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let tick = trickle && last_trickle.elapsed() >= Duration::from_millis(200);
            if tick {
                last_trickle = Instant::now();
            }
            for c in conns.iter_mut() {
                let closed = match c {
                    None => true,
                    Some(s) => match s.read(&mut buf) {
                        Ok(0) => true,
                        Ok(_) => false,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            tick && s.write(b"a").is_err()
                        }
                        Err(_) => true,
                    },
                };
                if closed {
                    *c = open();
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
    })
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[test]
fn probes_and_scrapes_are_answered_under_a_connection_flood() {
    let (_demo, addr) = start_demo();
    let calm_probes: Vec<Duration> = (0..20)
        .map(|_| get(addr, "/healthz").expect("a calm probe"))
        .collect();
    let calm_scrapes: Vec<Duration> = (0..10)
        .map(|_| get(addr, "/metrics").expect("a calm scrape"))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let attackers = [
        attacker(addr, IDLE, false, Arc::clone(&stop), Arc::clone(&opened)),
        attacker(addr, SLOW, true, Arc::clone(&stop), Arc::clone(&opened)),
    ];
    // Let the flood fill every connection slot first.
    thread::sleep(Duration::from_secs(1));
    let start = Instant::now();
    let (mut probes, mut scrapes, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    let mut i = 0;
    while start.elapsed() < ATTACK {
        let path = if i % 4 == 3 { "/metrics" } else { "/healthz" };
        match get(addr, path) {
            Ok(d) if path == "/metrics" => scrapes.push(d),
            Ok(d) => probes.push(d),
            Err(e) => failures.push(format!("{path}: {e}")),
        }
        i += 1;
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().unwrap();
    }
    let total = probes.len() + scrapes.len() + failures.len();
    println!(
        "under {} idle + {} slowloris connections ({} opened in all): {}/{} requests answered; \
         probe p50 {:?} (calm {:?}), scrape p50 {:?} (calm {:?})",
        IDLE,
        SLOW,
        opened.load(Ordering::Relaxed),
        total - failures.len(),
        total,
        p50(probes.clone()),
        p50(calm_probes),
        p50(scrapes.clone()),
        p50(calm_scrapes),
    );
    // The old endpoint answered 0 of 20 probes under this attack. A loaded machine (two cores
    // running the whole suite) may still miss an odd one-second deadline, as a kubelet would
    // tolerate (failureThreshold 3); a starved endpoint misses them all.
    assert!(
        failures.len() * 10 <= total,
        "{} of {total} failed: {failures:?}",
        failures.len()
    );
    assert!(
        opened.load(Ordering::Relaxed) > (IDLE + SLOW) as u64,
        "the server never closed an attacker's connection: the flood did not reach the limit"
    );
    assert!(probes.len() >= 10 && scrapes.len() >= 3);
}

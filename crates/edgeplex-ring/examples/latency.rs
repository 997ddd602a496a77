//! Measure how long a message takes from publish to "in hand" for a Rust reader: the reader
//! side of the SDK bench (`python/bench/latency.py` runs this and the Python reader on the same
//! ring at once). Prints one JSON object.
//!
//! ```sh
//! cargo run --release -p edgeplex-ring --example latency -- RING COUNT
//! ```
//!
//! "In hand" is the payload pointer of the next message, in place (no copy), the equivalent of
//! a numpy view; latency is `realtime_ns()` then minus the message's `publish_ns`, which the
//! writer stores after the payload is written. CPU is the main thread's time on a CPU.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use edgeplex_ring::{realtime_ns, Reader, Recv, Start};

/// CPU time of this process's main thread, in nanoseconds (`/proc/self/schedstat`, the
/// scheduler's own accounting; no unsafe needed).
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(path), Some(count)) = (args.next().map(PathBuf::from), args.next()) else {
        eprintln!("usage: latency RING COUNT");
        return ExitCode::from(64);
    };
    let Ok(count) = count.to_string_lossy().parse::<usize>() else {
        eprintln!("latency: COUNT must be a whole number");
        return ExitCode::from(64);
    };
    let mut reader = match Reader::wait_open(&path, Start::Next, Duration::from_secs(30)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("latency: {e}");
            return ExitCode::from(66);
        }
    };
    let mut lat = Vec::with_capacity(count);
    let mut len = 0;
    let cpu0 = cpu_ns();
    while lat.len() < count {
        match reader.next(Duration::from_secs(5)) {
            Ok(Recv::Message(m)) => {
                let ptr = m.as_ptr();
                let now = realtime_ns();
                std::hint::black_box(ptr);
                len = m.len();
                lat.push(now.saturating_sub(m.publish_ns()));
            }
            Ok(Recv::Reopened) => {}
            Ok(Recv::TimedOut) => break,
            Err(e) => {
                eprintln!("latency: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let cpu = cpu_ns() - cpu0;
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"reader\":\"rust\",\"frames\":{},\"len\":{len},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"cpu_per_frame_us\":{:.1},\"bytes_copied_per_frame\":0,\"lost\":{}}}",
        lat.len(),
        q(0.5) as f64 / 1e3,
        q(0.9) as f64 / 1e3,
        q(0.99) as f64 / 1e3,
        cpu as f64 / 1e3 / lat.len().max(1) as f64,
        reader.lost()
    );
    ExitCode::SUCCESS
}

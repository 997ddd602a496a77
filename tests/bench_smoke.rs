//! Smoke test of `edgeplex bench --quick`: it runs to completion, prints one JSON object with
//! every section and ratio, and every ring reader accounts for every message.
//!
//! Nothing here asserts anything about time: CI machines are noisy, and the figures are for
//! people to read, not for tests to gate on.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use serde_json::Value;

/// Longest the quick bench may run before it is killed and the test fails.
const WATCHDOG: Duration = Duration::from_secs(120);

fn run_quick_bench() -> Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgeplex"))
        .args(["bench", "--quick", "--readers", "0,1,2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn edgeplex bench");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let pump = thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let status = common::wait::wait_exit("edgeplex bench --quick", &mut child, WATCHDOG);
    let out = pump
        .join()
        .expect("stdout reader thread")
        .expect("read bench stdout");
    assert!(status.success(), "edgeplex bench failed: {status}\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bench output is not JSON ({e}):\n{out}"))
}

fn runs<'a>(v: &'a Value, section: &str) -> &'a [Value] {
    v[section]["runs"]
        .as_array()
        .unwrap_or_else(|| panic!("{section}.runs is not an array"))
}

fn uint(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not an unsigned integer in {v}"))
}

fn check_run(run: &Value, what: &str) {
    let transport = run["transport"].as_str().expect("transport");
    let readers = uint(run, "readers") as usize;
    let published = uint(run, "published");
    let per = run["per_reader"].as_array().expect("per_reader");
    assert_eq!(per.len(), readers, "{what}: one entry per reader");
    assert!(published > 0, "{what}: published something");
    for (i, r) in per.iter().enumerate() {
        let (delivered, lost) = (uint(r, "delivered"), uint(r, "lost"));
        assert_eq!(
            delivered + lost,
            published,
            "{what} {transport} reader {i}: delivered {delivered} + lost {lost} != published"
        );
        assert_eq!(uint(r, "bad_payload"), 0, "{what} reader {i}: bad payload");
        assert_eq!(r["incomplete"], Value::Bool(false), "{what} reader {i}");
    }
    assert_eq!(
        uint(run, "delivered_total") + uint(run, "lost_total"),
        published * readers as u64,
        "{what}: totals"
    );
    assert_eq!(run["accounting_exact"], Value::Bool(true), "{what}");
    assert!(
        run["writer_cost_ns"]["p50_ns"].is_u64(),
        "{what}: writer cost present"
    );
    if readers > 0 {
        assert!(run["latency_ns"]["p99_ns"].is_u64(), "{what}: latency");
    }
}

#[test]
fn quick_bench_reports_everything_and_accounts_exactly() {
    let v = run_quick_bench();

    for key in [
        "machine",
        "config",
        "memcpy_4mib",
        "frames_4mib",
        "frames_4mib_zero_copy",
        "frames_4mib_priority_raised",
        "samples_64b",
        "stalled_reader_4mib",
        "ratios",
        "extra_ratios",
        "runtime_s",
    ] {
        assert!(!v[key].is_null(), "section {key} missing");
    }
    assert!(v["machine"]["nproc"].is_u64());
    assert!(v["memcpy_4mib"]["paced"]["p50_ns"].is_u64());
    assert!(v["memcpy_4mib"]["paced_gbps_p50"].is_number());

    for section in ["frames_4mib", "samples_64b"] {
        let runs = runs(&v, section);
        for n in [0u64, 1, 2] {
            let ring = runs
                .iter()
                .find(|r| r["transport"] == "ring" && r["readers"] == n)
                .unwrap_or_else(|| panic!("{section}: no ring run with {n} readers"));
            check_run(ring, &format!("{section} ring x{n}"));
            let uds = runs
                .iter()
                .find(|r| r["transport"] == "uds" && r["readers"] == n);
            if n == 0 {
                assert!(uds.is_none(), "{section}: no socket run without readers");
            } else {
                let uds = uds.unwrap_or_else(|| panic!("{section}: no uds run with {n} readers"));
                check_run(uds, &format!("{section} uds x{n}"));
                assert_eq!(
                    uint(uds, "lost_total"),
                    0,
                    "{section}: sockets lose nothing"
                );
            }
        }
    }

    // The zero-copy writer path, at every reader count: the same exact accounting (readers
    // check every payload's sequence tag, so the stand-in device's fill reached them intact),
    // the ring's own cost and the device's fill reported apart.
    let zc = runs(&v, "frames_4mib_zero_copy");
    for n in [0u64, 1, 2] {
        let run = zc
            .iter()
            .find(|r| r["readers"] == n)
            .unwrap_or_else(|| panic!("no zero-copy run with {n} readers"));
        check_run(run, &format!("zero-copy x{n}"));
        assert_eq!(run["writer_path"], "zero_copy");
        assert!(run["device_fill_ns"]["p50_ns"].is_u64(), "{run}");
        assert!(run["writer_cost_with_fill_ns"]["p50_ns"].is_u64(), "{run}");
    }
    assert_eq!(v["frames_4mib_zero_copy"]["slots"], 16 + 4);
    // The priority runs: both paths at the fewest and the most readers, with what the writer
    // got recorded (a real-time policy where permitted, else a nice value, else unchanged).
    let applied = v["config"]["writer_priority_applied"]
        .as_str()
        .expect("writer_priority_applied");
    let raised = runs(&v, "frames_4mib_priority_raised");
    for path in ["copy", "zero_copy"] {
        for n in [0u64, 2] {
            let run = raised
                .iter()
                .find(|r| r["writer_path"] == path && r["readers"] == n)
                .unwrap_or_else(|| panic!("no raised-priority {path} run with {n} readers"));
            check_run(run, &format!("raised {path} x{n}"));
            assert_eq!(run["writer_priority"], applied, "{run}");
        }
    }
    let refused = v["config"]["writer_priority_refused"]
        .as_array()
        .expect("writer_priority_refused");
    assert!(
        applied != "fifo:10" || refused.is_empty(),
        "fifo:10 applied yet reported refused: {refused:?}"
    );

    // The stalled reader loses messages instead of slowing the writer, and still accounts for
    // every one of them.
    let stalled = &v["stalled_reader_4mib"];
    assert_eq!(uint(stalled, "stalled_readers"), 1);
    check_run(stalled, "stalled");

    let ratios = v["ratios"].as_object().expect("ratios object");
    let names = [
        "writer_cost_4mib_16_readers_over_0",
        "writer_cost_4mib_over_memcpy",
        "latency_p50_4mib_uds_over_ring",
        "latency_p50_64b_ring_over_uds",
        "lost_by_keeping_up_readers",
        "zero_copy_writer_cost_4mib_over_copy",
        "zero_copy_writer_cost_4mib_over_memcpy",
        "writer_cost_4mib_16_readers_over_0_priority_raised",
    ];
    assert_eq!(ratios.len(), names.len(), "exactly the headline ratios");
    for name in names {
        let r = &ratios[name];
        assert!(r["value"].is_number(), "ratio {name} has no value: {r}");
        assert!(r["target"].is_string(), "ratio {name} has no target: {r}");
        assert!(r["met"].is_boolean(), "ratio {name}: met");
    }
    // Not asserted: that keeping-up readers lost nothing. On a loaded machine a reader can be
    // lapped; that is timing, and the exact accounting above is what must always hold.
    for name in [
        "writer_cost_4mib_stalled_reader_over_0",
        "zero_copy_with_fill_4mib_over_copy",
        "zero_copy_writer_cost_4mib_16_readers_over_0",
        "zero_copy_writer_cost_4mib_16_readers_over_0_priority_raised",
    ] {
        assert!(
            v["extra_ratios"][name]["value"].is_number(),
            "extra ratio {name}: {}",
            v["extra_ratios"][name]
        );
    }

    let dir = v["config"]["bench_dir"].as_str().expect("bench_dir");
    assert!(
        !std::path::Path::new(dir).exists(),
        "bench directory {dir} was not removed"
    );
}

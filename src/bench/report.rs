//! Turning raw runs into the reported figures: per-run summaries and the headline ratios.

use serde::Serialize;

use super::machine::CpuLoad;
use super::procs::ReaderReport;
use super::shm::WriterRun;
use super::stats::{ratio, Summary};

/// Which transport a run used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The shared-memory ring.
    Ring,
    /// The Unix-socket baseline.
    Uds,
}

/// How a ring writer fills its slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriterPath {
    /// `Writer::lend`, a copy of the frame into the slot, commit (MMAP capture and a copy).
    Copy,
    /// Slots lent ahead to a (stand-in) device that fills them; the writer only commits and
    /// lends (USERPTR capture).
    ZeroCopy,
}

/// One reader's figures in a run.
#[derive(Debug, Clone, Serialize)]
pub struct PerReader {
    /// Messages received intact.
    pub delivered: u64,
    /// Messages lost (lapped or torn; for sockets, never received).
    pub lost: u64,
    /// Messages found torn after use (included in `lost`).
    pub torn: u64,
    /// Intact messages whose first 8 bytes were not their sequence number.
    pub bad_payload: u64,
    /// The reader gave up (idle timeout or end of stream) before the last message.
    pub incomplete: bool,
    /// Its publish-to-reader latency.
    pub latency_ns: Option<Summary>,
}

/// One configuration: a transport, a message size, N readers.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Ring or socket baseline.
    pub transport: Transport,
    /// Number of reader processes.
    pub readers: usize,
    /// How many of them were stopped (SIGSTOP) for the whole run.
    pub stalled_readers: usize,
    /// Ring only: how the writer filled its slots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writer_path: Option<WriterPath>,
    /// The writer thread's raised priority during this run (`null`: normal).
    pub writer_priority: Option<String>,
    /// Messages sent.
    pub published: u64,
    /// Leading messages left out of the timing figures.
    pub warmup_excluded: u64,
    /// Messages that went late because the previous one overran the interval.
    pub pacing_overruns: u64,
    /// Wall time of the writer loop, seconds.
    pub elapsed_s: f64,
    /// Writer cost per message (ring: lend + copy + commit; sockets: send to every reader).
    pub writer_cost_ns: Option<Summary>,
    /// Ring only: messages during which the writer was switched off its CPU (on 2 CPUs, woken
    /// readers preempt it before it has read the clock).
    pub writer_switched_out_messages: Option<u64>,
    /// Ring only: time the writer spent runnable but off its CPU within the timed region.
    pub writer_run_delay_ns: Option<Summary>,
    /// Ring only: writer cost minus that run delay, per message: the writer's own work.
    pub writer_cost_minus_run_delay_ns: Option<Summary>,
    /// Zero-copy only: the stand-in device's fill of each slot (not in `writer_cost_ns`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_fill_ns: Option<Summary>,
    /// Zero-copy only: fill plus the ring's work (commit and lend), per message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writer_cost_with_fill_ns: Option<Summary>,
    /// Publish-to-reader latency, pooled over all readers.
    pub latency_ns: Option<Summary>,
    /// Sum of `delivered` over readers.
    pub delivered_total: u64,
    /// Sum of `lost` over readers.
    pub lost_total: u64,
    /// Sum of `torn` over readers.
    pub torn_total: u64,
    /// Sum of `bad_payload` over readers.
    pub bad_payload_total: u64,
    /// Every reader accounted for every message: `delivered + lost == published`.
    pub accounting_exact: bool,
    /// How busy the machine was while the writer ran (contention check).
    pub machine_load: CpuLoad,
    /// Each reader's figures.
    pub per_reader: Vec<PerReader>,
}

impl RunResult {
    /// Combine the writer's measurements with the readers' reports.
    pub fn new(
        transport: Transport,
        stalled_readers: usize,
        warmup: u64,
        w: &WriterRun,
        reports: &[ReaderReport],
    ) -> RunResult {
        let pooled: Vec<u64> = reports
            .iter()
            .flat_map(|r| r.latencies_ns.iter().copied())
            .collect();
        let sum = |f: fn(&ReaderReport) -> u64| reports.iter().map(f).sum::<u64>();
        RunResult {
            transport,
            readers: reports.len(),
            stalled_readers,
            writer_path: None,
            writer_priority: None,
            device_fill_ns: Summary::of(&w.fill_ns),
            writer_cost_with_fill_ns: (w.fill_ns.len() == w.costs_ns.len())
                .then(|| {
                    let both: Vec<u64> = w
                        .costs_ns
                        .iter()
                        .zip(&w.fill_ns)
                        .map(|(c, f)| c + f)
                        .collect();
                    Summary::of(&both)
                })
                .flatten()
                .filter(|_| !w.fill_ns.is_empty()),
            published: w.published,
            warmup_excluded: warmup.min(w.published),
            pacing_overruns: w.overruns,
            elapsed_s: w.elapsed.as_secs_f64(),
            writer_cost_ns: Summary::of(&w.costs_ns),
            writer_switched_out_messages: w.switched_out,
            writer_run_delay_ns: Summary::of(&w.run_delay_ns),
            writer_cost_minus_run_delay_ns: if w.run_delay_ns.len() == w.costs_ns.len() {
                let own: Vec<u64> = w
                    .costs_ns
                    .iter()
                    .zip(&w.run_delay_ns)
                    .map(|(c, d)| c.saturating_sub(*d))
                    .collect();
                Summary::of(&own)
            } else {
                None
            },
            latency_ns: Summary::of(&pooled),
            delivered_total: sum(|r| r.delivered),
            lost_total: sum(|r| r.lost),
            torn_total: sum(|r| r.torn),
            bad_payload_total: sum(|r| r.bad_payload),
            accounting_exact: reports.iter().all(|r| r.delivered + r.lost == w.published),
            machine_load: w
                .ticks
                .map(|t| t.load(w.elapsed.as_secs_f64()))
                .unwrap_or_default(),
            per_reader: reports
                .iter()
                .map(|r| PerReader {
                    delivered: r.delivered,
                    lost: r.lost,
                    torn: r.torn,
                    bad_payload: r.bad_payload,
                    incomplete: r.incomplete,
                    latency_ns: Summary::of(&r.latencies_ns),
                })
                .collect(),
        }
    }

    fn cost_p50(&self) -> Option<f64> {
        self.writer_cost_ns.map(|s| s.p50_ns as f64)
    }

    fn own_p50(&self) -> Option<f64> {
        self.writer_cost_minus_run_delay_ns.map(|s| s.p50_ns as f64)
    }

    fn with_fill_p50(&self) -> Option<f64> {
        self.writer_cost_with_fill_ns.map(|s| s.p50_ns as f64)
    }

    fn cost_mean(&self) -> Option<f64> {
        self.writer_cost_ns.map(|s| s.mean_ns)
    }

    fn latency_p50(&self) -> Option<f64> {
        self.latency_ns.map(|s| s.p50_ns as f64)
    }
}

/// How a ratio compares with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// The value must not exceed the target.
    AtMost,
    /// The value must reach the target.
    AtLeast,
    /// The value must equal the target.
    Exactly,
}

/// A headline figure with its target.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// The figure (`null` if the runs it needs were not made).
    pub value: Option<f64>,
    /// The target, e.g. `"<= 1.1"`.
    pub target: String,
    /// Whether the value meets the target.
    pub met: Option<bool>,
    /// Reader count the value was measured at (a fallback is named in `basis`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readers: Option<usize>,
    /// The same figure at 4 readers, where asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_4_readers: Option<f64>,
    /// The same figure computed from means instead of medians, for comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_means: Option<f64>,
    /// The same figure from writer costs minus the time the writer sat preempted (runnable,
    /// off its CPU) inside the timed region: the writer's own work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excluding_run_delay: Option<f64>,
    /// What exactly is divided by what.
    pub basis: String,
}

impl Ratio {
    fn new(value: Option<f64>, goal: Goal, target: f64, basis: String) -> Ratio {
        let met = value.map(|v| match goal {
            Goal::AtMost => v <= target,
            Goal::AtLeast => v >= target,
            Goal::Exactly => v == target,
        });
        let op = match goal {
            Goal::AtMost => "<=",
            Goal::AtLeast => ">=",
            Goal::Exactly => "==",
        };
        Ratio {
            value,
            target: format!("{op} {target}"),
            met,
            readers: None,
            at_4_readers: None,
            from_means: None,
            excluding_run_delay: None,
            basis,
        }
    }
}

/// The headline ratios, exactly the ones the issue asks for.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// Ring writer cost (p50) for 4 MiB frames with 16 readers over 0 readers.
    pub writer_cost_4mib_16_readers_over_0: Ratio,
    /// Ring writer cost (p50) for 4 MiB at 0 readers over the memcpy p50.
    pub writer_cost_4mib_over_memcpy: Ratio,
    /// Socket latency p50 over ring latency p50, 4 MiB frames.
    pub latency_p50_4mib_uds_over_ring: Ratio,
    /// Ring latency p50 over socket latency p50, 64 B samples.
    pub latency_p50_64b_ring_over_uds: Ratio,
    /// Messages lost by readers that were not stalled, all ring runs.
    pub lost_by_keeping_up_readers: Ratio,
    /// Zero-copy writer cost (commit + lend, p50) over the copying writer's, 4 MiB, 0 readers.
    pub zero_copy_writer_cost_4mib_over_copy: Ratio,
    /// Zero-copy writer cost (p50) over the paced memcpy p50.
    pub zero_copy_writer_cost_4mib_over_memcpy: Ratio,
    /// Copying writer cost (p50), 16 readers over 0, the writer's priority raised.
    pub writer_cost_4mib_16_readers_over_0_priority_raised: Ratio,
}

/// Figures beyond the headline ones.
#[derive(Debug, Clone, Serialize)]
pub struct ExtraRatios {
    /// Ring writer cost (p50) for 4 MiB with one SIGSTOPped reader over 0 readers.
    pub writer_cost_4mib_stalled_reader_over_0: Ratio,
    /// Zero-copy: the stand-in device's fill plus the ring's work (p50) over the copying
    /// writer's cost: lending costs nothing a copy does not.
    pub zero_copy_with_fill_4mib_over_copy: Ratio,
    /// Zero-copy writer cost (p50), 16 readers over 0, normal priority.
    pub zero_copy_writer_cost_4mib_16_readers_over_0: Ratio,
    /// Zero-copy writer cost (p50), 16 readers over 0, the writer's priority raised.
    pub zero_copy_writer_cost_4mib_16_readers_over_0_priority_raised: Ratio,
}

/// The 4 MiB frame runs, by writer path and priority.
#[derive(Debug, Clone, Copy)]
pub struct FrameRuns<'a> {
    /// Copying writer, normal priority (with the socket runs).
    pub copy: &'a [RunResult],
    /// Zero-copy writer, normal priority.
    pub zero_copy: &'a [RunResult],
    /// Both writers with the writer's priority raised.
    pub raised: &'a [RunResult],
}

fn find(runs: &[RunResult], t: Transport, n: usize) -> Option<&RunResult> {
    runs.iter()
        .find(|r| r.transport == t && r.readers == n && r.stalled_readers == 0)
}

fn find_path(runs: &[RunResult], path: WriterPath, n: usize) -> Option<&RunResult> {
    runs.iter().find(|r| {
        r.transport == Transport::Ring
            && r.writer_path == Some(path)
            && r.readers == n
            && r.stalled_readers == 0
    })
}

/// `many` readers over 0 for the runs of `path` in `runs`, with the usual companions.
fn fan_out(runs: &[RunResult], path: WriterPath, many: Option<usize>, basis: String) -> Ratio {
    let zero = find_path(runs, path, 0);
    let most = many.and_then(|n| find_path(runs, path, n));
    let mut r = Ratio::new(
        ratio(
            most.and_then(RunResult::cost_p50),
            zero.and_then(RunResult::cost_p50),
        ),
        Goal::AtMost,
        1.1,
        basis,
    );
    r.readers = most.map(|m| m.readers);
    r.from_means = ratio(
        most.and_then(RunResult::cost_mean),
        zero.and_then(RunResult::cost_mean),
    );
    r.excluding_run_delay = ratio(
        most.and_then(RunResult::own_p50),
        zero.and_then(RunResult::own_p50),
    );
    r
}

/// The smallest reader count above zero among the ring runs, preferring `want`.
fn pick(runs: &[RunResult], want: usize) -> Option<usize> {
    if find(runs, Transport::Ring, want).is_some() {
        return Some(want);
    }
    runs.iter()
        .filter(|r| r.transport == Transport::Ring && r.readers > 0 && r.stalled_readers == 0)
        .map(|r| r.readers)
        .min()
}

/// Latency ratio `num / den` (by transport) at `n` readers.
fn latency_ratio(runs: &[RunResult], num: Transport, den: Transport, n: usize) -> Option<f64> {
    ratio(
        find(runs, num, n).and_then(RunResult::latency_p50),
        find(runs, den, n).and_then(RunResult::latency_p50),
    )
}

/// Compute the headline ratios from the frame runs, the sample runs and the memcpy baseline.
pub fn ratios(
    frame_runs: &FrameRuns<'_>,
    samples: &[RunResult],
    memcpy_p50: Option<f64>,
    stalled: Option<&RunResult>,
) -> (Ratios, ExtraRatios) {
    use Transport::{Ring, Uds};
    let frames = frame_runs.copy;
    let zero = find(frames, Ring, 0);
    let most = if find(frames, Ring, 16).is_some() {
        Some(16)
    } else {
        frames
            .iter()
            .filter(|r| r.transport == Ring && r.stalled_readers == 0)
            .map(|r| r.readers)
            .max()
            .filter(|&n| n > 0)
    };
    let many = most.and_then(|n| find(frames, Ring, n));
    let mut fan = Ratio::new(
        ratio(
            many.and_then(RunResult::cost_p50),
            zero.and_then(RunResult::cost_p50),
        ),
        Goal::AtMost,
        1.1,
        match most {
            Some(16) | None => "ring writer cost p50, 4 MiB, 16 readers / 0 readers".into(),
            Some(n) => {
                format!("ring writer cost p50, 4 MiB, {n} readers / 0 readers (16 readers not run)")
            }
        },
    );
    fan.readers = most;
    fan.from_means = ratio(
        many.and_then(RunResult::cost_mean),
        zero.and_then(RunResult::cost_mean),
    );
    fan.excluding_run_delay = ratio(
        many.and_then(RunResult::own_p50),
        zero.and_then(RunResult::own_p50),
    );

    let mut vs_memcpy = Ratio::new(
        ratio(zero.and_then(RunResult::cost_p50), memcpy_p50),
        Goal::AtMost,
        1.25,
        "ring writer cost p50, 4 MiB, 0 readers / paced memcpy p50 of 4 MiB into a region > LLC"
            .into(),
    );
    vs_memcpy.readers = zero.map(|_| 0);

    let one = pick(frames, 1);
    let mut lat_frames = Ratio::new(
        one.and_then(|n| latency_ratio(frames, Uds, Ring, n)),
        Goal::AtLeast,
        10.0,
        format!(
            "latency p50, 4 MiB: Unix socket / ring, at {} reader(s)",
            one.map_or("1".into(), |n| n.to_string())
        ),
    );
    lat_frames.readers = one;
    lat_frames.at_4_readers = latency_ratio(frames, Uds, Ring, 4);

    let one = pick(samples, 1);
    let mut lat_samples = Ratio::new(
        one.and_then(|n| latency_ratio(samples, Ring, Uds, n)),
        Goal::AtMost,
        1.0,
        format!(
            "latency p50, 64 B: ring / Unix socket, at {} reader(s)",
            one.map_or("1".into(), |n| n.to_string())
        ),
    );
    lat_samples.readers = one;
    lat_samples.at_4_readers = latency_ratio(samples, Ring, Uds, 4);

    let lost: u64 = frames
        .iter()
        .chain(frame_runs.zero_copy)
        .chain(frame_runs.raised)
        .chain(samples)
        .filter(|r| r.transport == Ring && r.stalled_readers == 0)
        .map(|r| r.lost_total)
        .sum();
    let lost = Ratio::new(
        Some(lost as f64),
        Goal::Exactly,
        0.0,
        "messages lost, summed over every ring reader that was not stalled (both sizes, both \
         writer paths, both priorities)"
            .into(),
    );

    let mut stall = Ratio::new(
        ratio(
            stalled.and_then(RunResult::cost_p50),
            zero.and_then(RunResult::cost_p50),
        ),
        Goal::AtMost,
        1.1,
        "ring writer cost p50, 4 MiB, 1 SIGSTOPped reader / 0 readers (target set by the bench, \
         not the issue)"
            .into(),
    );
    stall.readers = stalled.map(|r| r.readers);
    stall.from_means = ratio(
        stalled.and_then(RunResult::cost_mean),
        zero.and_then(RunResult::cost_mean),
    );
    stall.excluding_run_delay = ratio(
        stalled.and_then(RunResult::own_p50),
        zero.and_then(RunResult::own_p50),
    );

    // Zero-copy against the copying writer and the memcpy floor, at 0 readers.
    let zc_zero = find_path(frame_runs.zero_copy, WriterPath::ZeroCopy, 0);
    let copy_zero = zero;
    let mut zc_vs_copy = Ratio::new(
        ratio(
            zc_zero.and_then(RunResult::cost_p50),
            copy_zero.and_then(RunResult::cost_p50),
        ),
        Goal::AtMost,
        0.25,
        "zero-copy writer cost p50 (commit + lend, the device's fill excluded) / copying writer \
         cost p50 (lend + copy + commit), 4 MiB, 0 readers (target set by the bench, after the \
         issue's CPU target for capture)"
            .into(),
    );
    zc_vs_copy.readers = zc_zero.map(|_| 0);
    zc_vs_copy.from_means = ratio(
        zc_zero.and_then(RunResult::cost_mean),
        copy_zero.and_then(RunResult::cost_mean),
    );
    let mut zc_vs_memcpy = Ratio::new(
        ratio(zc_zero.and_then(RunResult::cost_p50), memcpy_p50),
        Goal::AtMost,
        0.25,
        "zero-copy writer cost p50, 4 MiB, 0 readers / paced memcpy p50 of 4 MiB into a region > \
         LLC (target set by the bench)"
            .into(),
    );
    zc_vs_memcpy.readers = zc_zero.map(|_| 0);
    let mut zc_fill = Ratio::new(
        ratio(
            zc_zero.and_then(RunResult::with_fill_p50),
            copy_zero.and_then(RunResult::cost_p50),
        ),
        Goal::AtMost,
        1.1,
        "zero-copy (device fill + commit + lend) p50 / copying writer cost p50, 4 MiB, 0 readers: \
         lending adds nothing to a copy (target set by the bench)"
            .into(),
    );
    zc_fill.readers = zc_zero.map(|_| 0);

    let most_n = many.map(|m| m.readers);
    let label = |what: &str| match most_n {
        Some(16) | None => format!("{what}, 4 MiB, 16 readers / 0 readers"),
        Some(n) => format!("{what}, 4 MiB, {n} readers / 0 readers (16 readers not run)"),
    };
    let raised_copy = fan_out(
        frame_runs.raised,
        WriterPath::Copy,
        most_n,
        label("copying writer cost p50, writer priority raised"),
    );
    let zc_fan = fan_out(
        frame_runs.zero_copy,
        WriterPath::ZeroCopy,
        most_n,
        label(
            "zero-copy writer cost p50 (commit + lend), normal priority (target set by the bench)",
        ),
    );
    let zc_raised = fan_out(
        frame_runs.raised,
        WriterPath::ZeroCopy,
        most_n,
        label("zero-copy writer cost p50 (commit + lend), writer priority raised (target set by the bench)"),
    );

    (
        Ratios {
            writer_cost_4mib_16_readers_over_0: fan,
            writer_cost_4mib_over_memcpy: vs_memcpy,
            latency_p50_4mib_uds_over_ring: lat_frames,
            latency_p50_64b_ring_over_uds: lat_samples,
            lost_by_keeping_up_readers: lost,
            zero_copy_writer_cost_4mib_over_copy: zc_vs_copy,
            zero_copy_writer_cost_4mib_over_memcpy: zc_vs_memcpy,
            writer_cost_4mib_16_readers_over_0_priority_raised: raised_copy,
        },
        ExtraRatios {
            writer_cost_4mib_stalled_reader_over_0: stall,
            zero_copy_with_fill_4mib_over_copy: zc_fill,
            zero_copy_writer_cost_4mib_16_readers_over_0: zc_fan,
            zero_copy_writer_cost_4mib_16_readers_over_0_priority_raised: zc_raised,
        },
    )
}

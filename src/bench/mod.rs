//! `edgeplex bench`: fan-out cost and wake-up latency of rings against a Unix-socket baseline.
//!
//! One writer (this process) and N reader processes (`edgeplex bench-reader`, spawned from the
//! current executable), for 4 MiB frames and 64 B samples, paced at fixed intervals so that the
//! readers keep up and the CPU idles between messages as with a real camera. Each configuration
//! runs over a fresh ring and over connected Unix sockets (one copy per reader); a memcpy of the
//! same frames into a region larger than the last-level cache is the floor for the writer's
//! cost. One run stops its reader with SIGSTOP for the whole run, to show that a stalled reader
//! cannot slow the writer.
//!
//! Frames are also written the zero-copy way (V4L2 `USERPTR` capture): slots lent ahead to a
//! stand-in device that fills them, the ring's own work (commit, lend the next slot) timed apart
//! from the fill. And the frame runs at 0 and the most readers are repeated with the writer
//! thread's priority raised (`--writer-priority`, falling back to `--writer-nice`), to show how
//! much of the cost of many readers is readers preempting the writer.
//!
//! Everything lives in `<shm-dir>/edgeplex-bench-<pid>`, removed at the end (also on error).
//! Every wait is bounded; nothing here can hang.
//!
//! The output is one JSON object on stdout; progress goes to the log on stderr.

mod machine;
mod procs;
mod report;
mod shm;
mod stats;
mod uds;

pub use shm::spec as ring_spec;

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::{Args, ValueEnum};
use serde::Serialize;

use self::machine::{CpuLoad, CpuTicks, Machine, Memcpy, MemcpyResult};
use self::procs::{ReaderReport, ReaderSet};
use self::report::{ExtraRatios, Ratios, RunResult, Transport, WriterPath};
use self::shm::{Plan, WriterRun};
use self::stats::SourcePool;
use crate::shutdown::Shutdown;

/// Bytes of a frame.
const FRAME: usize = 4 << 20;
/// Bytes of a sample.
const SAMPLE: usize = 64;
/// Slots of the frame ring: 16 × 4 MiB = 64 MiB, larger than the last-level cache.
const FRAME_SLOTS: u32 = 16;
/// Slots the zero-copy writer keeps lent to its stand-in device (the camera's default `buffers`);
/// its ring has this many more slots, so readers keep the same history.
const LENT_AHEAD: u32 = 4;
/// Slots of the sample ring.
const SAMPLE_SLOTS: u32 = 1024;
/// Most reader processes one configuration may start.
const MAX_READERS: usize = 64;
/// How long a reader waits to be asked for its results, and then to be let go.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long reader processes may take to start and attach.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `edgeplex bench` options.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Reader process counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1,4,16")]
    pub readers: Vec<usize>,
    /// 4 MiB frames per configuration [default: 200, --quick: 30].
    #[arg(long)]
    pub frames: Option<u64>,
    /// 64 B samples per configuration [default: 2000, --quick: 300].
    #[arg(long)]
    pub samples: Option<u64>,
    /// Microseconds between frames.
    #[arg(long, default_value_t = 4500)]
    pub frame_interval_us: u64,
    /// Microseconds between samples.
    #[arg(long, default_value_t = 1000)]
    pub sample_interval_us: u64,
    /// Split the messages of every configuration into this many rounds, each running every
    /// configuration in turn, so slow drift in the machine's speed hits all of them alike
    /// [default: 4, --quick: 1].
    #[arg(long)]
    pub rounds: Option<u64>,
    /// Scheduling policy of the reader processes (`batch` shows how much of the writer's cost
    /// with many readers is readers preempting it on a small machine).
    #[arg(long, value_enum, default_value_t = ReaderPolicy::Normal)]
    pub reader_policy: ReaderPolicy,
    /// Raised priority of the writer thread for the priority runs: `fifo:N` or `rr:N` (real-time;
    /// needs CAP_SYS_NICE or RLIMIT_RTPRIO), or `none` for nice only.
    #[arg(long, default_value = "fifo:10")]
    pub writer_priority: String,
    /// Nice value of the writer thread for the priority runs when the real-time policy is
    /// refused or `none` (below 0 needs CAP_SYS_NICE).
    #[arg(long, default_value_t = -10, allow_negative_numbers = true)]
    pub writer_nice: i32,
    /// Shrink the counts so the whole run takes a few seconds (a smoke test, not a measurement).
    #[arg(long)]
    pub quick: bool,
    /// tmpfs directory in which to make the benchmark's own directory.
    #[arg(long, default_value = "/dev/shm")]
    pub shm_dir: PathBuf,
    /// A reader that gets nothing for this many milliseconds gives up.
    #[arg(long, default_value_t = 5000)]
    pub reader_idle_timeout_ms: u64,
}

/// Scheduling policy of the reader processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReaderPolicy {
    /// `SCHED_OTHER`, like the writer: a woken reader may preempt the writer.
    Normal,
    /// `SCHED_BATCH` (via `chrt -b 0`): woken readers never preempt the running writer.
    Batch,
}

impl ReaderPolicy {
    fn wrapper(self) -> &'static [&'static str] {
        match self {
            ReaderPolicy::Normal => &[],
            ReaderPolicy::Batch => &["chrt", "-b", "0"],
        }
    }
}

/// What a reader process reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReaderMode {
    /// A ring file.
    Ring,
    /// A Unix socket the writer listens on.
    Uds,
}

/// Options of the hidden reader process `edgeplex bench-reader`.
#[derive(Debug, Args)]
pub struct ReaderArgs {
    /// Transport.
    #[arg(long, value_enum)]
    pub mode: ReaderMode,
    /// Ring file or socket path.
    #[arg(long)]
    pub path: PathBuf,
    /// Messages the writer will send; the last is number `count - 1`.
    #[arg(long)]
    pub count: u64,
    /// Payload bytes per message (at least 8).
    #[arg(long)]
    pub size: usize,
    /// Leading messages to leave out of the latency figures.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Give up after this many milliseconds without a message.
    #[arg(long, default_value_t = 5000)]
    pub idle_timeout_ms: u64,
}

/// The resolved settings of a run, echoed in the output.
#[derive(Debug, Clone, Serialize)]
struct Config {
    readers: Vec<usize>,
    quick: bool,
    rounds: u64,
    frames: u64,
    frame_bytes: usize,
    frame_slots: u32,
    frame_interval_us: u64,
    frame_warmup_per_round: u64,
    samples: u64,
    sample_bytes: usize,
    sample_slots: u32,
    sample_interval_us: u64,
    sample_warmup_per_round: u64,
    source_frames: usize,
    source_bytes: u64,
    reader_idle_timeout_ms: u64,
    reader_policy: ReaderPolicy,
    /// Slots the zero-copy writer keeps lent (its ring has this many more).
    zero_copy_lent_slots: u32,
    /// What the priority runs asked for and what the writer thread got.
    writer_priority_asked: String,
    writer_priority_applied: String,
    /// Why a raised priority was refused, one line each.
    writer_priority_refused: Vec<String>,
    bench_dir: PathBuf,
}

/// One message size's runs.
#[derive(Debug, Serialize)]
struct SizeSection {
    bytes: usize,
    slots: u32,
    interval_us: u64,
    runs: Vec<RunResult>,
}

/// The whole output.
#[derive(Debug, Serialize)]
struct Output {
    bench: &'static str,
    version: &'static str,
    machine: Machine,
    config: Config,
    memcpy_4mib: MemcpyResult,
    frames_4mib: SizeSection,
    /// 4 MiB frames written the zero-copy way (lent slots filled by a stand-in device).
    frames_4mib_zero_copy: SizeSection,
    /// 4 MiB frame runs at 0 and the most readers with the writer's priority raised, both paths.
    frames_4mib_priority_raised: SizeSection,
    samples_64b: SizeSection,
    stalled_reader_4mib: RunResult,
    ratios: Ratios,
    extra_ratios: ExtraRatios,
    notes: Vec<&'static str>,
    /// Load averages when the run started and ended: other work on the machine skews figures.
    load_avg_start: Option<[f64; 3]>,
    load_avg_end: Option<[f64; 3]>,
    /// CPUs busy system-wide over the whole run, this benchmark included.
    machine_load: CpuLoad,
    runtime_s: f64,
}

/// Leading messages of each round left out of timing figures: 5%, at most 20.
fn warmup_for(count: u64) -> u64 {
    (count / 20).min(20)
}

/// One configuration: message size, transport, reader count, whether the readers are stopped,
/// how the writer fills slots, and whether its priority is raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Setup {
    frames: bool,
    transport: Transport,
    readers: usize,
    stall: bool,
    path: WriterPath,
    raised: bool,
}

/// The merged rounds of one configuration.
#[derive(Debug)]
struct Acc {
    setup: Setup,
    writer: WriterRun,
    readers: Vec<ReaderReport>,
}

fn accumulate(accs: &mut Vec<Acc>, setup: Setup, writer: WriterRun, readers: Vec<ReaderReport>) {
    match accs.iter_mut().find(|a| a.setup == setup) {
        Some(acc) => {
            acc.writer.merge(writer);
            for (a, r) in acc.readers.iter_mut().zip(readers) {
                a.merge(r);
            }
        }
        None => accs.push(Acc {
            setup,
            writer,
            readers,
        }),
    }
}

/// Run the benchmark and print one JSON object.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let ticks = CpuTicks::now();
    let load_avg_start = machine::load_avg();
    let mut readers = args.readers.clone();
    readers.sort_unstable();
    readers.dedup();
    ensure!(!readers.is_empty(), "--readers needs at least one count");
    ensure!(
        readers.iter().all(|&n| n <= MAX_READERS),
        "--readers counts must be at most {MAX_READERS}"
    );
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 4 });
    ensure!((1..=100).contains(&rounds), "--rounds must be 1 to 100");
    let frames = args.frames.unwrap_or(if args.quick { 30 } else { 200 });
    let samples = args.samples.unwrap_or(if args.quick { 300 } else { 2000 });
    let (frames_per_round, samples_per_round) = (frames.div_ceil(rounds), samples.div_ceil(rounds));
    ensure!(
        frames_per_round >= 2 && samples_per_round >= 2,
        "--frames and --samples must be at least 2 per round"
    );
    ensure!(
        (10..=1_000_000).contains(&args.frame_interval_us)
            && (10..=1_000_000).contains(&args.sample_interval_us),
        "intervals must be between 10 µs and 1 s"
    );
    ensure!(
        args.reader_idle_timeout_ms >= 100,
        "--reader-idle-timeout-ms must be at least 100"
    );
    let raise = if args.writer_priority == "none" {
        None
    } else {
        Some(
            args.writer_priority
                .parse::<crate::sched::Realtime>()
                .map_err(|e| anyhow::anyhow!("--writer-priority {e}, or none"))?,
        )
    };
    ensure!(
        (-20..=19).contains(&args.writer_nice),
        "--writer-nice must be in -20..=19"
    );
    let priority = crate::sched::Request {
        realtime: raise,
        nice: Some(args.writer_nice),
    };
    // Try it once now, to report what the priority runs will get (and why not more).
    let probe = std::thread::spawn(move || crate::sched::apply_to_current_thread(priority))
        .join()
        .map_err(|_| anyhow::anyhow!("the priority probe thread panicked"))?;
    for why in &probe.refused {
        tracing::warn!(refused = %why, applied = %probe.applied, "writer priority");
    }
    let shutdown = Shutdown::install().context("install signal handlers")?;
    let machine = Machine::probe();
    let llc = machine.llc_or_default();
    let dir = BenchDir::create(
        &args
            .shm_dir
            .join(format!("edgeplex-bench-{}", std::process::id())),
    )?;
    let frame_pool = SourcePool::new(SourcePool::count_for(llc, FRAME), FRAME);
    let sample_pool = SourcePool::new(16, SAMPLE);
    let frame_plan = Plan {
        count: frames_per_round,
        size: FRAME,
        interval: Duration::from_micros(args.frame_interval_us),
        warmup: warmup_for(frames_per_round),
    };
    let sample_plan = Plan {
        count: samples_per_round,
        size: SAMPLE,
        interval: Duration::from_micros(args.sample_interval_us),
        warmup: warmup_for(samples_per_round),
    };
    let config = Config {
        readers: readers.clone(),
        quick: args.quick,
        rounds,
        frames: frames_per_round * rounds,
        frame_bytes: FRAME,
        frame_slots: FRAME_SLOTS,
        frame_interval_us: args.frame_interval_us,
        frame_warmup_per_round: frame_plan.warmup,
        samples: samples_per_round * rounds,
        sample_bytes: SAMPLE,
        sample_slots: SAMPLE_SLOTS,
        sample_interval_us: args.sample_interval_us,
        sample_warmup_per_round: sample_plan.warmup,
        source_frames: frame_pool.len(),
        source_bytes: frame_pool.bytes(),
        reader_idle_timeout_ms: args.reader_idle_timeout_ms,
        reader_policy: args.reader_policy,
        zero_copy_lent_slots: LENT_AHEAD,
        writer_priority_asked: match raise {
            Some(rt) => format!("{rt}, else nice:{}", args.writer_nice),
            None => format!("nice:{}", args.writer_nice),
        },
        writer_priority_applied: probe.applied.clone(),
        writer_priority_refused: probe.refused.clone(),
        bench_dir: dir.path.clone(),
    };
    let ctx = Ctx {
        dir: &dir.path,
        shutdown: &shutdown,
        idle: Duration::from_millis(args.reader_idle_timeout_ms),
        policy: args.reader_policy,
        priority,
    };

    tracing::info!(
        dir = %dir.path.display(),
        nproc = machine.nproc,
        llc_bytes = llc,
        rounds,
        "edgeplex bench"
    );
    if let Some([one, ..]) = load_avg_start {
        if one > 0.5 {
            tracing::warn!(
                load_avg_1m = one,
                "the machine is busy; figures will include contention from other work"
            );
        }
    }

    let plain = |frames, transport, readers| Setup {
        frames,
        transport,
        readers,
        stall: false,
        path: WriterPath::Copy,
        raised: false,
    };
    let mut setups = Vec::new();
    for frames in [true, false] {
        for &n in &readers {
            for transport in [Transport::Ring, Transport::Uds] {
                if transport == Transport::Ring || n > 0 {
                    setups.push(plain(frames, transport, n));
                }
            }
            if frames {
                setups.push(Setup {
                    path: WriterPath::ZeroCopy,
                    ..plain(frames, Transport::Ring, n)
                });
            }
        }
        if frames {
            setups.push(Setup {
                readers: 1,
                stall: true,
                ..plain(frames, Transport::Ring, 1)
            });
            // The priority runs: no readers and the most readers, both writer paths.
            let most = readers.last().copied().unwrap_or(0);
            let mut ends = vec![readers[0], most];
            ends.dedup();
            for path in [WriterPath::Copy, WriterPath::ZeroCopy] {
                for &n in &ends {
                    setups.push(Setup {
                        path,
                        raised: true,
                        ..plain(frames, Transport::Ring, n)
                    });
                }
            }
        }
    }

    // Every round runs every configuration once, so that drift in the machine's speed (other
    // tenants, frequency) spreads over all of them instead of favouring whichever ran first.
    let mut memcpy = Memcpy::new(FRAME, (2 * llc).max(64 << 20));
    let mut memcpy_paced = Vec::new();
    let mut accs: Vec<Acc> = Vec::new();
    for round in 0..rounds {
        tracing::info!(round = round + 1, of = rounds, "round");
        memcpy_paced.extend(memcpy.paced(
            &frame_pool,
            frame_plan.count,
            frame_plan.interval,
            frame_plan.warmup,
            &shutdown,
        )?);
        for &setup in &setups {
            let (pool, plan, slots, label) = if setup.frames {
                (&frame_pool, &frame_plan, FRAME_SLOTS, "frames")
            } else {
                (&sample_pool, &sample_plan, SAMPLE_SLOTS, "samples")
            };
            let (w, reports) = match setup.transport {
                Transport::Ring => ctx.ring_run(label, pool, plan, slots, setup)?,
                Transport::Uds => ctx.uds_run(label, pool, plan, setup.readers)?,
            };
            accumulate(&mut accs, setup, w, reports);
        }
    }
    let memcpy_back = memcpy.back_to_back(&frame_pool);
    let memcpy = MemcpyResult::new(&memcpy, &frame_pool, &memcpy_paced, &memcpy_back);

    let (mut frame_runs, mut sample_runs, mut stalled) = (Vec::new(), Vec::new(), None);
    let (mut zero_copy_runs, mut raised_runs) = (Vec::new(), Vec::new());
    for acc in accs {
        let (warmup, runs) = if !acc.setup.frames {
            (sample_plan.warmup, &mut sample_runs)
        } else if acc.setup.raised {
            (frame_plan.warmup, &mut raised_runs)
        } else if acc.setup.path == WriterPath::ZeroCopy {
            (frame_plan.warmup, &mut zero_copy_runs)
        } else {
            (frame_plan.warmup, &mut frame_runs)
        };
        let stalled_readers = if acc.setup.stall {
            acc.setup.readers
        } else {
            0
        };
        let mut result = RunResult::new(
            acc.setup.transport,
            stalled_readers,
            warmup * rounds,
            &acc.writer,
            &acc.readers,
        );
        result.writer_path = (acc.setup.transport == Transport::Ring).then_some(acc.setup.path);
        result.writer_priority = acc.writer.priority.clone();
        if acc.setup.stall {
            stalled = Some(result);
        } else {
            runs.push(result);
        }
    }
    let stalled = stalled.context("the stalled-reader run is missing")?;
    let (ratios, extra_ratios) = report::ratios(
        &report::FrameRuns {
            copy: &frame_runs,
            zero_copy: &zero_copy_runs,
            raised: &raised_runs,
        },
        &sample_runs,
        memcpy.paced.map(|s| s.p50_ns as f64),
        Some(&stalled),
    );
    let out = Output {
        bench: "edgeplex ring fan-out vs Unix sockets",
        version: env!("CARGO_PKG_VERSION"),
        machine,
        config,
        memcpy_4mib: memcpy,
        frames_4mib: SizeSection {
            bytes: FRAME,
            slots: FRAME_SLOTS,
            interval_us: args.frame_interval_us,
            runs: frame_runs,
        },
        frames_4mib_zero_copy: SizeSection {
            bytes: FRAME,
            slots: FRAME_SLOTS + LENT_AHEAD,
            interval_us: args.frame_interval_us,
            runs: zero_copy_runs,
        },
        frames_4mib_priority_raised: SizeSection {
            bytes: FRAME,
            slots: FRAME_SLOTS,
            interval_us: args.frame_interval_us,
            runs: raised_runs,
        },
        samples_64b: SizeSection {
            bytes: SAMPLE,
            slots: SAMPLE_SLOTS,
            interval_us: args.sample_interval_us,
            runs: sample_runs,
        },
        stalled_reader_4mib: stalled,
        ratios,
        extra_ratios,
        notes: NOTES.to_vec(),
        load_avg_start,
        load_avg_end: machine::load_avg(),
        machine_load: CpuTicks::since(ticks)
            .map(|t| t.load(started.elapsed().as_secs_f64()))
            .unwrap_or_default(),
        runtime_s: started.elapsed().as_secs_f64(),
    };
    drop(dir);
    let mut json = serde_json::to_string_pretty(&out).context("serialise the results")?;
    json.push('\n');
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(json.as_bytes())
        .and_then(|()| stdout.flush())
        .context("write the results to stdout")?;
    Ok(())
}

const NOTES: &[&str] = &[
    "writer_cost (ring): Writer::lend + copy of the source frame + sequence tag + commit \
     (seqlock, head store, futex wake); (uds): send-start until the last reader's blocking \
     writev returned",
    "latency (ring): reader's CLOCK_REALTIME right after Reader::next returned, minus the \
     publish_ns the writer stamped at commit; (uds): after the whole message was read into the \
     reader's buffer, minus the writer's send-start stamp",
    "source frames rotate through a pool at least twice the LLC, so no copy reads a hot source",
    "latency and writer-cost figures leave out the first warm-up messages of each round; \
     delivery counts include them",
    "each configuration runs once per round (fresh ring or sockets, fresh reader processes); its \
     figures pool all rounds",
    "writer_run_delay_ns: time the writer thread spent runnable but off its CPU inside the timed \
     region (/proc/thread-self/schedstat); on 2 CPUs, readers woken by the publish often \
     preempt the writer before it reads the clock, so writer_cost_minus_run_delay_ns is the \
     writer's own work",
    "the stalled-reader run's latency is meaningless (the reader was stopped); its lost count \
     shows the ring dropping the oldest messages for it instead of slowing the writer",
    "zero-copy runs (writer_path zero_copy): the writer keeps config.zero_copy_lent_slots slots \
     lent (Lender), as the camera's USERPTR capture does; per frame a stand-in device fills the \
     oldest lent slot (a copy of the source frame: the bytes a device would DMA; device_fill_ns, \
     not in writer_cost_ns), then writer_cost_ns times the ring's own work: commit the slot \
     (seqlock, head store, futex wake) and lend the next; writer_cost_with_fill_ns is both",
    "priority runs (frames_4mib_priority_raised): readers start at normal priority, then the \
     writer thread gets config.writer_priority_applied for its timed loop only and goes back to \
     SCHED_OTHER after",
];

/// How long after the last message readers get to take it before they are asked to report.
fn settle(plan: &Plan) -> Duration {
    Duration::from_millis(20) + 2 * plan.interval
}

/// Shared state of the runs.
#[derive(Debug)]
struct Ctx<'a> {
    dir: &'a Path,
    shutdown: &'a Shutdown,
    idle: Duration,
    policy: ReaderPolicy,
    priority: crate::sched::Request,
}

impl Ctx<'_> {
    fn reader_args(&self, mode: &str, path: &Path, plan: &Plan) -> Vec<String> {
        vec![
            "--mode".into(),
            mode.into(),
            "--path".into(),
            path.display().to_string(),
            "--count".into(),
            plan.count.to_string(),
            "--size".into(),
            plan.size.to_string(),
            "--warmup".into(),
            plan.warmup.to_string(),
            "--idle-timeout-ms".into(),
            self.idle.as_millis().to_string(),
        ]
    }

    /// One ring configuration: fresh ring, `n` reader processes (stopped for the whole run if
    /// `stall`), paced writer, copying or zero-copy, at normal or raised priority.
    fn ring_run(
        &self,
        label: &str,
        pool: &SourcePool,
        plan: &Plan,
        slots: u32,
        setup: Setup,
    ) -> anyhow::Result<(WriterRun, Vec<ReaderReport>)> {
        let (n, stall) = (setup.readers, setup.stall);
        tracing::debug!(label, readers = n, stall, path = ?setup.path, raised = setup.raised, "ring run");
        let suffix = match (stall, setup.path, setup.raised) {
            (true, _, _) => "-stalled",
            (_, WriterPath::Copy, false) => "",
            (_, WriterPath::ZeroCopy, false) => "-zc",
            (_, WriterPath::Copy, true) => "-prio",
            (_, WriterPath::ZeroCopy, true) => "-zc-prio",
        };
        let slots = match setup.path {
            WriterPath::Copy => slots,
            WriterPath::ZeroCopy => slots + LENT_AHEAD,
        };
        let path = self.dir.join(format!("{label}-{n}{suffix}.ring"));
        let mut writer = shm::create(&path, plan.size, slots)?;
        let args = self.reader_args("ring", &path, plan);
        let mut set = ReaderSet::spawn(n, self.policy.wrapper(), |_| args.clone())?;
        set.wait_ready(READY_TIMEOUT, self.shutdown)?;
        if stall {
            for pid in set.pids() {
                procs::signal(pid, "STOP")?;
                procs::wait_stopped(pid, Duration::from_secs(2))?;
            }
        }
        // Raised only now: the reader processes were started at normal priority, and the
        // writer goes back to it right after its timed loop.
        let nice = crate::sched::current_nice();
        let during = setup.raised.then(|| {
            crate::sched::apply_to_current_thread(self.priority);
            crate::sched::current_thread()
        });
        let written = match setup.path {
            WriterPath::Copy => shm::write(&mut writer, pool, plan, self.shutdown),
            WriterPath::ZeroCopy => {
                shm::write_lent(&mut writer, pool, plan, LENT_AHEAD as usize, self.shutdown)
            }
        };
        if setup.raised {
            if let Err(e) = crate::sched::reset_current_thread(nice) {
                tracing::warn!(error = %e, "cannot put the writer back to normal priority");
            }
        }
        if stall {
            for pid in set.pids() {
                procs::signal(pid, "CONT")?;
            }
        }
        let mut written = written?;
        written.priority = during;
        let reports = set.collect(
            settle(plan),
            self.idle + Duration::from_secs(30),
            self.shutdown,
        )?;
        drop(writer);
        std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        Ok((written, reports))
    }

    /// One socket configuration: `n` reader processes connected to a listener here.
    fn uds_run(
        &self,
        label: &str,
        pool: &SourcePool,
        plan: &Plan,
        n: usize,
    ) -> anyhow::Result<(WriterRun, Vec<ReaderReport>)> {
        tracing::debug!(label, readers = n, "unix socket run");
        let path = self.dir.join(format!("{label}-{n}.sock"));
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("bind benchmark socket {}", path.display()))?;
        let args = self.reader_args("uds", &path, plan);
        let mut set = ReaderSet::spawn(n, self.policy.wrapper(), |_| args.clone())?;
        let mut streams = uds::accept(&listener, n, READY_TIMEOUT, self.shutdown)?;
        drop(listener);
        set.wait_ready(READY_TIMEOUT, self.shutdown)?;
        let written = uds::write(&mut streams, pool, plan, self.shutdown)?;
        // Closing the sockets ends the readers' streams.
        drop(streams);
        let reports = set.collect(
            settle(plan),
            self.idle + Duration::from_secs(30),
            self.shutdown,
        )?;
        std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        Ok((written, reports))
    }
}

/// The benchmark's own directory, removed with everything in it when dropped.
#[derive(Debug)]
struct BenchDir {
    path: PathBuf,
}

impl BenchDir {
    fn create(path: &Path) -> anyhow::Result<BenchDir> {
        // A directory left by an earlier run with the same pid holds nothing anyone needs.
        if path.exists() {
            std::fs::remove_dir_all(path)
                .with_context(|| format!("remove stale {}", path.display()))?;
        }
        std::fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))?;
        Ok(BenchDir {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "could not remove bench dir");
        }
    }
}

/// Print one line to stdout and flush it: how a reader process talks to the benchmark.
fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("write to stdout")
}

/// Run one reader process of the benchmark.
pub fn run_reader(args: &ReaderArgs) -> anyhow::Result<()> {
    ensure!(args.size >= 8, "--size must be at least 8 bytes");
    ensure!(args.count >= 1, "--count must be at least 1");
    let idle = Duration::from_millis(args.idle_timeout_ms);
    let control = procs::Control::listen();
    let done = |r: &ReaderReport| control.report(r, RELEASE_TIMEOUT);
    match args.mode {
        ReaderMode::Ring => shm::read(&args.path, args.count, args.warmup, idle, done),
        ReaderMode::Uds => uds::read(&args.path, args.count, args.size, args.warmup, idle, done),
    }
}

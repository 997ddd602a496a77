//! The ring side of the benchmark: the paced writer (in the parent) and the reader process.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::machine::{CpuTicks, SchedSample, SchedStat};
use super::procs::ReaderReport;
use super::stats::{nanos, Pacer, SourcePool};
use crate::ring::{self, CreateOptions, Lender, Meta, Reader, RingSpec, Start, StreamKind, Writer};
use crate::shutdown::Shutdown;

/// What the writer side of one run measured.
#[derive(Debug, Clone)]
pub struct WriterRun {
    /// Messages sent.
    pub published: u64,
    /// Cost of each message after the warm-up, ns.
    pub costs_ns: Vec<u64>,
    /// Messages released late because the previous one overran the interval.
    pub overruns: u64,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// System-wide CPU ticks meanwhile (a contention check).
    pub ticks: Option<CpuTicks>,
    /// Ring only: per message after the warm-up, the time the writer spent runnable but off
    /// its CPU (preempted) during the timed region, ns.
    pub run_delay_ns: Vec<u64>,
    /// Ring only: messages during whose timed region the writer was switched out.
    pub switched_out: Option<u64>,
    /// Zero-copy path only: per message after the warm-up, the time the stand-in device took to
    /// fill the lent slot (outside the timed ring work), ns.
    pub fill_ns: Vec<u64>,
    /// The writer thread's policy and priority during the run, when raised (read back from the
    /// kernel inside the run, not what was asked for).
    pub priority: Option<String>,
}

impl WriterRun {
    /// Add a later round of the same configuration.
    pub fn merge(&mut self, other: WriterRun) {
        self.published += other.published;
        self.costs_ns.extend(other.costs_ns);
        self.overruns += other.overruns;
        self.elapsed += other.elapsed;
        self.ticks = match (self.ticks, other.ticks) {
            (Some(a), Some(b)) => Some(a.plus(b)),
            _ => None,
        };
        let both = self.switched_out.zip(other.switched_out);
        self.switched_out = both.map(|(a, b)| a + b);
        self.run_delay_ns.extend(other.run_delay_ns);
        self.fill_ns.extend(other.fill_ns);
        if self.priority != other.priority {
            self.priority = Some(format!(
                "{} then {}",
                self.priority.as_deref().unwrap_or("normal"),
                other.priority.as_deref().unwrap_or("normal")
            ));
        }
    }
}

/// Shape of a run: how many messages of what size, how far apart.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Messages to send.
    pub count: u64,
    /// Payload bytes per message (at least 8: the first 8 hold the sequence number).
    pub size: usize,
    /// Interval between messages.
    pub interval: Duration,
    /// Leading messages left out of the timing figures (still sent and counted).
    pub warmup: u64,
}

/// The spec of a benchmark ring of `slots` slots of `size` bytes (video from 4 KiB up, serial
/// below), shared with the criterion benches in `benches/ring.rs`.
pub fn spec(name: &str, size: usize, slots: u32) -> RingSpec {
    RingSpec {
        name: name.to_owned(),
        kind: if size >= 4096 {
            StreamKind::Video
        } else {
            StreamKind::Serial
        },
        slot_count: slots,
        slot_size: size as u64,
        video: None,
    }
}

/// Create a fresh ring at `path` for a run.
pub fn create(path: &Path, size: usize, slots: u32) -> anyhow::Result<Writer> {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bench".into());
    let w = Writer::open(path, &spec(&name, size, slots), &CreateOptions::default())
        .with_context(|| format!("create benchmark ring {}", path.display()))?;
    if w.head() != 0 {
        bail!(
            "ring {} already held messages; expected a fresh file",
            path.display()
        );
    }
    Ok(w)
}

/// What a writer loop ([`write`], [`write_lent`]) records: per message after the warm-up, the
/// timed cost, the stand-in device's fill (zero-copy path only), and how long the writer was
/// kept off its CPU during the timed region; and the run as a whole.
struct Recorder {
    warmup: u64,
    costs: Vec<u64>,
    fills: Vec<u64>,
    delays: Vec<u64>,
    switched_out: u64,
    sched: SchedStat,
    ticks: Option<CpuTicks>,
    started: Instant,
}

impl Recorder {
    /// Check that `plan`'s messages fit `w` (8 bytes at least: the sequence tag), and start.
    fn start(w: &Writer, plan: &Plan) -> anyhow::Result<Recorder> {
        if plan.size < 8 || plan.size > w.capacity() {
            bail!(
                "message size {} does not fit 8..={} bytes",
                plan.size,
                w.capacity()
            );
        }
        let n = plan.count as usize;
        Ok(Recorder {
            warmup: plan.warmup,
            costs: Vec::with_capacity(n),
            fills: Vec::with_capacity(n),
            delays: Vec::with_capacity(n),
            switched_out: 0,
            sched: SchedStat::open(),
            ticks: CpuTicks::now(),
            started: Instant::now(),
        })
    }

    /// The writer thread's scheduler reading, taken just before and just after a timed region.
    fn sched(&mut self) -> Option<SchedSample> {
        self.sched.sample()
    }

    /// Message `i`: its timed `cost`, the device's `fill` if any, and the readings around it.
    fn record(
        &mut self,
        i: u64,
        cost: u64,
        fill: Option<u64>,
        before: Option<SchedSample>,
        after: Option<SchedSample>,
    ) {
        if i < self.warmup {
            return;
        }
        self.costs.push(cost);
        self.fills.extend(fill);
        if let (Some(a), Some(b)) = (before, after) {
            self.delays
                .push(b.run_delay_ns.saturating_sub(a.run_delay_ns));
            self.switched_out += u64::from(b.switches > a.switches);
        }
    }

    fn finish(self, plan: &Plan, pacer: &Pacer) -> WriterRun {
        let switched_out = (self.delays.len() == self.costs.len()).then_some(self.switched_out);
        WriterRun {
            published: plan.count,
            costs_ns: self.costs,
            overruns: pacer.overruns(),
            elapsed: self.started.elapsed(),
            ticks: CpuTicks::since(self.ticks),
            switched_out,
            run_delay_ns: self.delays,
            fill_ns: self.fills,
            priority: None,
        }
    }
}

/// Publish `plan.count` messages at fixed intervals, timing each one from `lend` through the
/// copy of the source frame to the return of `commit` (seqlock, head store, futex wake).
pub fn write(
    w: &mut Writer,
    pool: &SourcePool,
    plan: &Plan,
    shutdown: &Shutdown,
) -> anyhow::Result<WriterRun> {
    let mut rec = Recorder::start(w, plan)?;
    let mut pacer = Pacer::new(plan.interval);
    for i in 0..plan.count {
        if !pacer.wait(shutdown) {
            bail!("interrupted");
        }
        let src = &pool.get(i)[..plan.size];
        let meta = Meta {
            capture_ns: ring::monotonic_ns(),
            device_seq: i,
            flags: 0,
        };
        let before = rec.sched();
        let t0 = Instant::now();
        let mut loan = w.lend();
        let seq = loan.seq();
        let buf = loan.buf();
        buf[..plan.size].copy_from_slice(src);
        buf[..8].copy_from_slice(&seq.to_le_bytes());
        loan.commit(plan.size, meta);
        let cost = nanos(t0.elapsed());
        let after = rec.sched();
        rec.record(i, cost, None, before, after);
    }
    Ok(rec.finish(plan, &pacer))
}

/// Publish `plan.count` messages at fixed intervals the zero-copy way, as the camera's
/// user-pointer capture does: `ahead` slots stay lent ([`Lender`]); per message the stand-in
/// device fills the oldest lent slot (a copy of the source frame and its sequence tag: the bytes
/// a device would DMA, timed apart as `fill_ns`), then the ring's own work is timed: commit the
/// oldest slot (seqlock, head store, futex wake) and lend the next one.
pub fn write_lent(
    w: &mut Writer,
    pool: &SourcePool,
    plan: &Plan,
    ahead: usize,
    shutdown: &Shutdown,
) -> anyhow::Result<WriterRun> {
    let mut rec = Recorder::start(w, plan)?;
    let mut lender = Lender::new();
    for _ in 0..ahead.max(1) {
        if lender.lend(w).is_none() {
            bail!(
                "a ring of {} slots cannot lend {ahead}",
                w.geometry().slot_count
            );
        }
    }
    let mut pacer = Pacer::new(plan.interval);
    let result = (|| {
        for i in 0..plan.count {
            if !pacer.wait(shutdown) {
                bail!("interrupted");
            }
            let src = &pool.get(i)[..plan.size];
            let seq = lender.oldest().map(|s| s.seq()).context("no slot lent")?;
            // The device: writes the frame into the slot it was given.
            let t0 = Instant::now();
            let buf = lender.oldest_mut(w).context("no slot lent")?;
            buf[..plan.size].copy_from_slice(src);
            buf[..8].copy_from_slice(&seq.to_le_bytes());
            let fill = nanos(t0.elapsed());
            let meta = Meta {
                capture_ns: ring::monotonic_ns(),
                device_seq: i,
                flags: 0,
            };
            // The ring: publish the filled slot, lend the next one to the device.
            let before = rec.sched();
            let t1 = Instant::now();
            lender.commit_oldest(w, plan.size, meta);
            let next = lender.lend(w);
            let cost = nanos(t1.elapsed());
            let after = rec.sched();
            next.context("no slot left to lend")?;
            rec.record(i, cost, Some(fill), before, after);
        }
        Ok(())
    })();
    // No device writes the slots still lent: give them back unpublished.
    lender.abandon(w);
    result?;
    Ok(rec.finish(plan, &pacer))
}

/// The reader process: attach, say "ready", then take messages until the last one (number
/// `count - 1`) or `idle` passes without one; hand the report to `done` while the ring is
/// still mapped.
///
/// Latency is taken the moment `next` returns a message: `realtime_ns() - publish_ns()`. The
/// payload is then touched minimally (its first 8 bytes must hold the message number) and the
/// message finished.
pub fn read(
    path: &Path,
    count: u64,
    warmup: u64,
    idle: Duration,
    done: impl FnOnce(&ReaderReport) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut reader = Reader::open(path, Start::Next)
        .with_context(|| format!("open benchmark ring {}", path.display()))?;
    super::say(super::procs::READY)?;
    let mut report = ReaderReport {
        latencies_ns: Vec::with_capacity(count as usize),
        incomplete: true,
        ..ReaderReport::default()
    };
    loop {
        match reader.next(idle)? {
            ring::Recv::Message(m) => {
                let now = ring::realtime_ns();
                let latency = now.saturating_sub(m.publish_ns());
                let seq = m.seq();
                let mut tag = [0u8; 8];
                let tagged = m.len() >= 8 && {
                    m.copy_into_prefix(&mut tag);
                    tag == seq.to_le_bytes()
                };
                if m.finish() {
                    if !tagged {
                        report.bad_payload += 1;
                    }
                    if seq >= warmup {
                        report.latencies_ns.push(latency);
                    }
                } else {
                    report.torn += 1;
                }
                report.last_seq = Some(seq);
                if seq.wrapping_add(1) >= count {
                    report.incomplete = false;
                    break;
                }
            }
            ring::Recv::Reopened => continue,
            ring::Recv::TimedOut => break,
        }
    }
    // `delivered()` already leaves out messages found torn after use; `lost()` counts them.
    report.delivered = reader.delivered();
    report.lost = reader.lost();
    done(&report)
}

//! What the benchmark ran on, and the memcpy bandwidth baseline.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use super::stats::{nanos, Pacer, SourcePool, Summary};
use crate::shutdown::Shutdown;

/// LLC size assumed when sysfs does not tell (the figure measured on the reference machine).
pub const DEFAULT_LLC: u64 = 32 << 20;

/// The machine the benchmark ran on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs this process may run on.
    pub nproc: usize,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: Option<String>,
    /// CPU model name from `/proc/cpuinfo`.
    pub cpu_model: Option<String>,
    /// Size of the last-level cache of cpu0 in bytes, from sysfs.
    pub llc_bytes: Option<u64>,
    /// Level of that cache.
    pub llc_level: Option<u32>,
    /// Current clocksource (timestamps are cheap with `tsc`).
    pub clocksource: Option<String>,
    /// Transparent huge pages setting for anonymous memory (the memcpy region).
    pub thp_anon: Option<String>,
    /// Transparent huge pages setting for tmpfs/shmem (the ring).
    pub thp_shmem: Option<String>,
}

impl Machine {
    /// Look at this machine.
    pub fn probe() -> Machine {
        let (llc_bytes, llc_level) = match llc(Path::new("/sys/devices/system/cpu/cpu0/cache")) {
            Some((b, l)) => (Some(b), Some(l)),
            None => (None, None),
        };
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            cpu_model: std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            }),
            llc_bytes,
            llc_level,
            clocksource: read_trim(
                "/sys/devices/system/clocksource/clocksource0/current_clocksource",
            ),
            thp_anon: read_trim("/sys/kernel/mm/transparent_hugepage/enabled"),
            thp_shmem: read_trim("/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
        }
    }

    /// The LLC size to size regions against.
    pub fn llc_or_default(&self) -> u64 {
        self.llc_bytes.unwrap_or(DEFAULT_LLC)
    }
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The highest-level data or unified cache under a sysfs `cache` directory: (bytes, level).
fn llc(dir: &Path) -> Option<(u64, u32)> {
    let mut best: Option<(u64, u32)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("index") {
            continue;
        }
        let level: u32 = match std::fs::read_to_string(p.join("level")) {
            Ok(s) => match s.trim().parse() {
                Ok(l) => l,
                Err(_) => continue,
            },
            Err(_) => continue,
        };
        let kind = std::fs::read_to_string(p.join("type")).unwrap_or_default();
        if kind.trim() == "Instruction" {
            continue;
        }
        let Some(size) = std::fs::read_to_string(p.join("size"))
            .ok()
            .and_then(|s| parse_size(s.trim()))
        else {
            continue;
        };
        if best.is_none_or(|(_, l)| level > l) {
            best = Some((size, level));
        }
    }
    best
}

/// Parse a sysfs cache size such as `32768K` or `8M`.
fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// `/proc/loadavg`'s 1, 5 and 15 minute load averages.
pub fn load_avg() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// System-wide CPU time counters from the first line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTicks {
    busy: u64,
    steal: u64,
}

/// Clock ticks per second of `/proc/stat` (`USER_HZ`, 100 on every Linux architecture we run).
const USER_HZ: f64 = 100.0;

impl CpuTicks {
    /// Read the counters now (`None` without `/proc`).
    pub fn now() -> Option<CpuTicks> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        let line = s.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let field = |i: usize| v.get(i).copied().unwrap_or(0);
        Some(CpuTicks {
            busy: field(0) + field(1) + field(2) + field(5) + field(6),
            steal: field(7),
        })
    }

    /// The counters accumulated from `self` until `later`.
    pub fn until(self, later: CpuTicks) -> CpuTicks {
        CpuTicks {
            busy: later.busy.saturating_sub(self.busy),
            steal: later.steal.saturating_sub(self.steal),
        }
    }

    /// The ticks accumulated since `start` (`None` if either reading failed).
    pub fn since(start: Option<CpuTicks>) -> Option<CpuTicks> {
        Some(start?.until(CpuTicks::now()?))
    }

    /// Two spans' counters together.
    pub fn plus(self, other: CpuTicks) -> CpuTicks {
        CpuTicks {
            busy: self.busy + other.busy,
            steal: self.steal + other.steal,
        }
    }

    /// These counters (a span, from [`CpuTicks::until`]) as average CPUs over `wall_s` seconds.
    pub fn load(self, wall_s: f64) -> CpuLoad {
        let per_s =
            |t: u64| (wall_s > 0.0).then(|| (t as f64 / USER_HZ / wall_s * 100.0).round() / 100.0);
        CpuLoad {
            busy_cpus: per_s(self.busy),
            steal_cpus: per_s(self.steal),
        }
    }
}

/// How busy the whole machine was during a run: a check for contention from other work.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuLoad {
    /// Average CPUs busy, system-wide, this benchmark's processes included (10 ms ticks).
    pub busy_cpus: Option<f64>,
    /// Average CPUs stolen by the hypervisor.
    pub steal_cpus: Option<f64>,
}

/// The calling thread's scheduler statistics, `/proc/thread-self/schedstat`: how long it waited
/// runnable but not running (preempted, or woken and not yet on a CPU), and how many times it was
/// switched in. Read around each timed publish to tell the writer's own work from time it lost
/// to other processes on the same CPU.
#[derive(Debug)]
pub struct SchedStat {
    file: Option<std::fs::File>,
    buf: [u8; 128],
}

/// One reading of [`SchedStat`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedSample {
    /// Nanoseconds spent runnable on a run queue, waiting for a CPU.
    pub run_delay_ns: u64,
    /// Times the thread was switched onto a CPU.
    pub switches: u64,
}

impl SchedStat {
    /// Open the calling thread's schedstat file (readings are `None` if the kernel has none).
    pub fn open() -> SchedStat {
        SchedStat {
            file: std::fs::File::open("/proc/thread-self/schedstat").ok(),
            buf: [0; 128],
        }
    }

    /// Read it now. Must be called from the thread that opened it.
    pub fn sample(&mut self) -> Option<SchedSample> {
        use std::os::unix::fs::FileExt;
        let n = self.file.as_ref()?.read_at(&mut self.buf, 0).ok()?;
        let text = std::str::from_utf8(&self.buf[..n]).ok()?;
        let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
        let _on_cpu = f.next()??;
        Some(SchedSample {
            run_delay_ns: f.next()??,
            switches: f.next()??,
        })
    }
}

/// The memcpy baseline's results.
#[derive(Debug, Clone, Serialize)]
pub struct MemcpyResult {
    /// Bytes per copy.
    pub bytes: usize,
    /// Size of the prefaulted destination region the copies cycle through.
    pub region_bytes: u64,
    /// Distinct source frames in rotation and their total size.
    pub sources: usize,
    /// Total bytes of the source frames.
    pub source_bytes: u64,
    /// Copies paced like the ring's frames, after the warm-up.
    pub paced: Option<Summary>,
    /// Bandwidth at the paced p50, GB/s (10^9 bytes per second).
    pub paced_gbps_p50: Option<f64>,
    /// Bandwidth at the paced mean, GB/s.
    pub paced_gbps_mean: Option<f64>,
    /// Copies back to back, no pause: the machine's streaming figure.
    pub back_to_back: Option<Summary>,
    /// Bandwidth at the back-to-back p50, GB/s.
    pub back_to_back_gbps_p50: Option<f64>,
}

impl MemcpyResult {
    /// Summarise the copies `paced` (at the frame interval) and `back` (back to back).
    pub fn new(m: &Memcpy, pool: &SourcePool, paced: &[u64], back: &[u64]) -> MemcpyResult {
        let paced = Summary::of(paced);
        let back_to_back = Summary::of(back);
        let len = m.len;
        let gbps = |ns: f64| (ns > 0.0).then(|| len as f64 / ns);
        MemcpyResult {
            bytes: len,
            region_bytes: (m.slots * len) as u64,
            sources: pool.len(),
            source_bytes: pool.bytes(),
            paced_gbps_p50: paced.and_then(|s| gbps(s.p50_ns as f64)),
            paced_gbps_mean: paced.and_then(|s| gbps(s.mean_ns)),
            back_to_back_gbps_p50: back_to_back.and_then(|s| gbps(s.p50_ns as f64)),
            paced,
            back_to_back,
        }
    }
}

/// The memcpy baseline: copies of source frames into destinations cycling through a prefaulted
/// region larger than the last-level cache.
#[derive(Debug)]
pub struct Memcpy {
    dst: Vec<u8>,
    slots: usize,
    len: usize,
    next: u64,
}

impl Memcpy {
    /// A region of at least `region` bytes (and two frames) for copies of `len` bytes.
    pub fn new(len: usize, region: u64) -> Memcpy {
        let len = len.max(1);
        let slots = usize::try_from(region / len as u64)
            .unwrap_or(usize::MAX)
            .max(2);
        Memcpy {
            // A non-zero fill faults every page in now (a zeroed Vec maps the zero page lazily).
            dst: vec![0x5au8; slots * len],
            slots,
            len,
            next: 0,
        }
    }

    /// Time one copy of the next source into the next destination slot.
    fn one(&mut self, pool: &SourcePool) -> u64 {
        let i = self.next;
        self.next += 1;
        let slot = (i % self.slots as u64) as usize;
        let src = &pool.get(i)[..self.len];
        let out = &mut self.dst[slot * self.len..(slot + 1) * self.len];
        let t0 = Instant::now();
        out.copy_from_slice(black_box(src));
        black_box(&out[..]);
        nanos(t0.elapsed())
    }

    /// `count` copies at `interval`, like the ring writer's frames; the first `warmup` are
    /// left out of the result.
    pub fn paced(
        &mut self,
        pool: &SourcePool,
        count: u64,
        interval: Duration,
        warmup: u64,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Vec<u64>> {
        let mut out = Vec::with_capacity(count as usize);
        let mut pacer = Pacer::new(interval);
        for i in 0..count {
            if !pacer.wait(shutdown) {
                bail!("interrupted");
            }
            let ns = self.one(pool);
            if i >= warmup {
                out.push(ns);
            }
        }
        Ok(out)
    }

    /// Copies back to back through the whole region twice: the streaming figure.
    pub fn back_to_back(&mut self, pool: &SourcePool) -> Vec<u64> {
        let rounds = (2 * self.slots).max(16);
        (0..rounds).map(|_| self.one(pool)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sysfs_sizes() {
        assert_eq!(parse_size("32768K"), Some(32 << 20));
        assert_eq!(parse_size("8M"), Some(8 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("K"), None);
        assert_eq!(parse_size(""), None);
    }
}

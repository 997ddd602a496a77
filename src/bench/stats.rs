//! Summaries of timing samples, pacing at fixed intervals, and the rotating source frames.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::shutdown::Shutdown;

/// Count, mean and percentiles of a set of nanosecond samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Arithmetic mean, ns.
    pub mean_ns: f64,
    /// Median (nearest rank), ns.
    pub p50_ns: u64,
    /// 99th percentile (nearest rank), ns.
    pub p99_ns: u64,
    /// Smallest sample, ns.
    pub min_ns: u64,
    /// Largest sample, ns.
    pub max_ns: u64,
}

impl Summary {
    /// Summarise `samples` (in any order). `None` when there are none.
    pub fn of(samples: &[u64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let sum: u128 = sorted.iter().map(|&v| u128::from(v)).sum();
        Some(Summary {
            count: sorted.len(),
            mean_ns: sum as f64 / sorted.len() as f64,
            p50_ns: percentile(&sorted, 0.50),
            p99_ns: percentile(&sorted, 0.99),
            min_ns: sorted[0],
            max_ns: sorted[sorted.len() - 1],
        })
    }
}

/// Nearest-rank percentile of an ascending, non-empty slice.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Elapsed time as whole nanoseconds (saturating at `u64::MAX`, some 584 years).
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `a / b`, or `None` when either side is missing or `b` is zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Releases messages at fixed intervals, so the CPU idles between them as with a real camera.
///
/// When a message overruns its interval the next one goes at once and the schedule restarts
/// from there: the pacer never bursts to catch up.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    next: Instant,
    overruns: u64,
}

impl Pacer {
    /// A pacer whose first message goes after one `interval`.
    pub fn new(interval: Duration) -> Pacer {
        Pacer {
            interval,
            next: Instant::now() + interval,
            overruns: 0,
        }
    }

    /// Sleep until the next message is due. `false` if shutdown was requested meanwhile.
    pub fn wait(&mut self, shutdown: &Shutdown) -> bool {
        let now = Instant::now();
        if self.next < now {
            self.overruns += 1;
            self.next = now;
        } else if !shutdown.sleep_until(self.next) {
            return false;
        }
        self.next += self.interval;
        !shutdown.requested()
    }

    /// How many messages were released late because the previous one overran its interval.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }
}

/// Several distinct source frames used in rotation, together larger than the last-level cache,
/// so that no copy reads a source still hot from the previous use.
#[derive(Debug)]
pub struct SourcePool {
    frames: Vec<Vec<u8>>,
}

impl SourcePool {
    /// `count` frames of `len` bytes, each filled with its own byte value (which also faults
    /// every page in now rather than during a timed copy).
    pub fn new(count: usize, len: usize) -> SourcePool {
        let frames = (0..count.max(1))
            .map(|i| vec![(i % 251) as u8 + 1; len])
            .collect();
        SourcePool { frames }
    }

    /// How many frames to rotate through so that they add up to at least twice `llc` bytes
    /// (at least 4, at most 64).
    pub fn count_for(llc: u64, len: usize) -> usize {
        let len = len.max(1) as u64;
        let n = (2 * llc).div_ceil(len);
        (n as usize).clamp(4, 64)
    }

    /// The source for message `i`.
    pub fn get(&self, i: u64) -> &[u8] {
        &self.frames[(i % self.frames.len() as u64) as usize]
    }

    /// Number of frames in rotation.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Total bytes in rotation.
    pub fn bytes(&self) -> u64 {
        self.frames.iter().map(|f| f.len() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_samples() {
        let v: Vec<u64> = (1..=100).rev().collect();
        let s = Summary::of(&v).expect("non-empty");
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_ns, 50);
        assert_eq!(s.p99_ns, 99);
        assert_eq!((s.min_ns, s.max_ns), (1, 100));
        assert!((s.mean_ns - 50.5).abs() < 1e-9);
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(
            Summary::of(&[7]).map(|s| (s.p50_ns, s.p99_ns)),
            Some((7, 7))
        );
    }

    #[test]
    fn ratio_handles_missing_and_zero() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
    }

    #[test]
    fn pool_covers_twice_the_cache() {
        assert_eq!(SourcePool::count_for(32 << 20, 4 << 20), 16);
        assert_eq!(SourcePool::count_for(0, 64), 4);
        assert_eq!(SourcePool::count_for(u64::MAX / 4, 1), 64);
    }
}

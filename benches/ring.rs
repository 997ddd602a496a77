//! Criterion benches of the ring against their baselines:
//!
//! - `publish_4mib`: `Writer::publish` of a 4 MiB frame into a 16-slot ring on /dev/shm, against
//!   a plain memcpy of 4 MiB into a prefaulted region larger than the last-level cache. Sources
//!   rotate through a pool larger than the cache, so neither side copies from a hot source.
//! - `publish_64b`: `Writer::publish` of a 64 B sample (which always issues a futex wake),
//!   against writing 64 B into a connected Unix socket pair and reading them back out.
//! - `read_64b`: the reader's path for a 64 B message: `try_next`, a look at the payload, and
//!   `finish`.
//!
//! Kept short (10 samples, a few seconds each) so a full run finishes in about a minute. Ring
//! files live in `/dev/shm/edgeplex-criterion-<pid>`, removed at the end.

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use edgeplex::ring::{CreateOptions, Meta, Reader, Recv, Start, Writer};

const FRAME: usize = 4 << 20;
const FRAME_SLOTS: u32 = 16;
const SAMPLE: usize = 64;
const SAMPLE_SLOTS: u32 = 1024;
/// Region the memcpy baseline cycles through: 64 MiB, twice the 32 MiB L3 of the reference
/// machine, and the same size as the 16-slot frame ring.
const MEMCPY_REGION: usize = 64 << 20;
/// Distinct source frames in rotation (64 MiB): larger than the cache.
const SOURCES: usize = 16;

/// The bench's ring directory, removed on drop (also when a bench panics).
struct Dir(PathBuf);

impl Dir {
    fn create() -> Dir {
        let path = PathBuf::from(format!(
            "/dev/shm/edgeplex-criterion-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("create the bench ring directory in /dev/shm");
        Dir(path)
    }

    fn ring(&self, name: &str, size: usize, slots: u32) -> Writer {
        Writer::open(
            &self.path(name),
            &edgeplex::bench::ring_spec(name, size, slots),
            &CreateOptions::default(),
        )
        .expect("create a bench ring")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.ring"))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` distinct frames of `len` bytes, each page touched.
fn sources(n: usize, len: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8 + 1; len]).collect()
}

fn publish_4mib(c: &mut Criterion, dir: &Dir) {
    let pool = sources(SOURCES, FRAME);
    let mut g = c.benchmark_group("publish_4mib");
    g.throughput(Throughput::Bytes(FRAME as u64));

    let mut w = dir.ring("frames", FRAME, FRAME_SLOTS);
    let mut i = 0usize;
    g.bench_function("ring_publish_16_slots", |b| {
        b.iter(|| {
            i += 1;
            w.publish(black_box(&pool[i % SOURCES]), Meta::default())
                .expect("publish a frame")
        })
    });
    drop(w);
    remove(&dir.path("frames"));

    let mut region = vec![0x5au8; MEMCPY_REGION];
    let slots = MEMCPY_REGION / FRAME;
    let mut i = 0usize;
    g.bench_function(
        BenchmarkId::new("memcpy_into_region", format!("{}MiB", MEMCPY_REGION >> 20)),
        |b| {
            b.iter(|| {
                i += 1;
                let at = (i % slots) * FRAME;
                region[at..at + FRAME].copy_from_slice(black_box(&pool[i % SOURCES]));
                black_box(&region[at]);
            })
        },
    );
    g.finish();
}

fn publish_64b(c: &mut Criterion, dir: &Dir) {
    let pool = sources(SOURCES, SAMPLE);
    let mut g = c.benchmark_group("publish_64b");
    g.throughput(Throughput::Bytes(SAMPLE as u64));

    let mut w = dir.ring("samples", SAMPLE, SAMPLE_SLOTS);
    let mut i = 0usize;
    g.bench_function("ring_publish", |b| {
        b.iter(|| {
            i += 1;
            w.publish(black_box(&pool[i % SOURCES]), Meta::default())
                .expect("publish a sample")
        })
    });
    drop(w);
    remove(&dir.path("samples"));

    let (mut tx, mut rx) = UnixStream::pair().expect("a Unix socket pair");
    let mut buf = [0u8; SAMPLE];
    let mut i = 0usize;
    g.bench_function("uds_pair_write_read", |b| {
        b.iter(|| {
            i += 1;
            tx.write_all(black_box(&pool[i % SOURCES]))
                .expect("write to the socket");
            rx.read_exact(&mut buf).expect("read from the socket");
            black_box(&buf);
        })
    });
    g.finish();
}

fn read_64b(c: &mut Criterion, dir: &Dir) {
    let mut g = c.benchmark_group("read_64b");
    g.throughput(Throughput::Elements(1));
    let mut w = dir.ring("read", SAMPLE, SAMPLE_SLOTS);
    let mut r = Reader::open(&dir.path("read"), Start::Next).expect("open the bench ring");
    let payload = [7u8; SAMPLE];
    // Fill at most half the ring per round, so the reader is never lapped.
    let batch = u64::from(SAMPLE_SLOTS / 2);
    g.bench_function("try_next_finish", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let k = left.min(batch);
                for _ in 0..k {
                    w.publish(&payload, Meta::default())
                        .expect("publish a sample");
                }
                let t0 = Instant::now();
                for _ in 0..k {
                    match r.try_next().expect("read the ring") {
                        Recv::Message(m) => {
                            let mut first = [0u8; 1];
                            m.copy_into_prefix(&mut first);
                            black_box(first[0]);
                            assert!(m.finish(), "message torn in a single-threaded bench");
                        }
                        other => panic!("expected a message, got {other:?}"),
                    }
                }
                total += t0.elapsed();
                left -= k;
            }
            total
        })
    });
    g.finish();
    assert_eq!(r.lost(), 0, "the bench reader must never be lapped");
    drop(r);
    drop(w);
    remove(&dir.path("read"));
}

fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let dir = Dir::create();
    publish_4mib(&mut c, &dir);
    publish_64b(&mut c, &dir);
    read_64b(&mut c, &dir);
    drop(dir);
    c.final_summary();
}

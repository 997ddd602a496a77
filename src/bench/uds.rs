//! The baseline: the same fan-out over connected `SOCK_STREAM` Unix sockets, one copy per
//! reader.
//!
//! Each message is a 24-byte header (payload length, sequence number, the writer's
//! CLOCK_REALTIME send-start time, all little-endian `u64`) followed by the payload. The writer
//! sends it to each reader in turn with blocking writes; a reader reads the whole message into
//! its own buffer, then takes its latency as now minus send-start.

use std::io::{self, BufReader, IoSlice, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::machine::CpuTicks;
use super::procs::ReaderReport;
use super::shm::{Plan, WriterRun};
use super::stats::{nanos, Pacer, SourcePool};
use crate::ring;
use crate::shutdown::Shutdown;

/// Bytes of the per-message header.
pub const HEADER: usize = 24;

/// How long one blocking write may stall before the run fails (a dead reader, not a slow one).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accept `n` reader connections on `listener`, waiting at most `timeout`.
pub fn accept(
    listener: &UnixListener,
    n: usize,
    timeout: Duration,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<UnixStream>> {
    listener
        .set_nonblocking(true)
        .context("make the listening socket non-blocking")?;
    let deadline = Instant::now() + timeout;
    let mut streams = Vec::with_capacity(n);
    while streams.len() < n {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)
                    .context("make a reader socket blocking")?;
                s.set_write_timeout(Some(WRITE_TIMEOUT))
                    .context("set a write timeout")?;
                streams.push(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if shutdown.requested() {
                    bail!("interrupted");
                }
                if Instant::now() >= deadline {
                    bail!(
                        "only {} of {n} socket readers connected in time",
                        streams.len()
                    );
                }
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e).context("accept a socket reader"),
        }
    }
    Ok(streams)
}

/// Send `plan.count` messages at fixed intervals to every stream, timing each message from
/// send-start until the last reader's write has returned.
pub fn write(
    streams: &mut [UnixStream],
    pool: &SourcePool,
    plan: &Plan,
    shutdown: &Shutdown,
) -> anyhow::Result<WriterRun> {
    if plan.size < 8 {
        bail!("message size {} is below 8 bytes", plan.size);
    }
    let mut costs = Vec::with_capacity(plan.count as usize);
    let mut pacer = Pacer::new(plan.interval);
    let ticks = CpuTicks::now();
    let started = Instant::now();
    for i in 0..plan.count {
        if !pacer.wait(shutdown) {
            bail!("interrupted");
        }
        let src = &pool.get(i)[..plan.size];
        let t0 = Instant::now();
        let send_ns = ring::realtime_ns();
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(&(plan.size as u64).to_le_bytes());
        header[8..16].copy_from_slice(&i.to_le_bytes());
        header[16..].copy_from_slice(&send_ns.to_le_bytes());
        // The payload's first 8 bytes carry the sequence number, as in the ring; sent from
        // their own buffer so that no extra copy of the frame is made.
        let tag = i.to_le_bytes();
        for (r, s) in streams.iter_mut().enumerate() {
            write_all_vectored(s, &header, &tag, &src[8..])
                .with_context(|| format!("send message {i} to socket reader {r}"))?;
        }
        let cost = nanos(t0.elapsed());
        if i >= plan.warmup {
            costs.push(cost);
        }
    }
    let elapsed = started.elapsed();
    let ticks = CpuTicks::since(ticks);
    Ok(WriterRun {
        published: plan.count,
        costs_ns: costs,
        overruns: pacer.overruns(),
        elapsed,
        ticks,
        run_delay_ns: Vec::new(),
        switched_out: None,
        fill_ns: Vec::new(),
        priority: None,
    })
}

/// Write three buffers completely, with as few `writev` calls as the socket allows.
fn write_all_vectored(s: &mut UnixStream, a: &[u8], b: &[u8], c: &[u8]) -> io::Result<()> {
    let mut bufs = [IoSlice::new(a), IoSlice::new(b), IoSlice::new(c)];
    let mut slices: &mut [IoSlice<'_>] = &mut bufs;
    while !slices.is_empty() {
        match s.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The reader process: connect, say "ready", then read whole messages until the last one, the
/// end of the stream, or `idle` without data; hand the report to `done` while still connected.
pub fn read(
    path: &Path,
    count: u64,
    size: usize,
    warmup: u64,
    idle: Duration,
    done: impl FnOnce(&ReaderReport) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let stream = UnixStream::connect(path)
        .with_context(|| format!("connect to benchmark socket {}", path.display()))?;
    stream
        .set_read_timeout(Some(idle))
        .context("set the socket read timeout")?;
    // Fault the receive buffer in now, as a real consumer reuses its buffer.
    let mut buf = vec![0xffu8; size];
    super::say(super::procs::READY)?;
    let mut rd = BufReader::with_capacity(64 << 10, stream);
    let mut report = ReaderReport {
        latencies_ns: Vec::with_capacity(count as usize),
        incomplete: true,
        ..ReaderReport::default()
    };
    loop {
        let mut header = [0u8; HEADER];
        match rd.read_exact(&mut header) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(e).context("read a message header"),
        }
        let field = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let (len, seq, send_ns) = (field(0), field(8), field(16));
        if len != size as u64 {
            bail!("message {seq} is {len} bytes, expected {size}");
        }
        rd.read_exact(&mut buf)
            .with_context(|| format!("read the payload of message {seq}"))?;
        let latency = ring::realtime_ns().saturating_sub(send_ns);
        if buf[..8] != seq.to_le_bytes() {
            report.bad_payload += 1;
        }
        report.delivered += 1;
        if seq >= warmup {
            report.latencies_ns.push(latency);
        }
        report.last_seq = Some(seq);
        if seq.wrapping_add(1) >= count {
            report.incomplete = false;
            break;
        }
    }
    report.lost = count.saturating_sub(report.delivered);
    done(&report)
}

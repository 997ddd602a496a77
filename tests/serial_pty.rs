//! The serial source against a real pty pair: the test writes into the master side, the agent's
//! supervisor reads the slave side through a symlink (as it would `/dev/serial/by-id/...`) and
//! publishes into a ring on /dev/shm, and the test reads the ring back with a `Reader`.
//!
//! Every test checks the accounting promise: the published payloads plus the counted dropped
//! bytes are exactly the bytes written. Waits are bounded polls on observable state (ring
//! messages, health, the pty's unread-byte count); nothing asserts how long anything took.

mod common;

use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::wait::{try_wait_for, wait_for};
use edgeplex::ring::layout::{FLAG_CAPTURE_REALTIME, FLAG_TRUNCATED};
use edgeplex::ring::{self, CreateOptions, Reader, Recv, Start};
use edgeplex::shutdown::Shutdown;
use edgeplex::source::framing::{Event, Framer, Framing, Terminator};
use edgeplex::source::serial::{SerialOpener, SerialSettings};
use edgeplex::source::synthetic::NmeaSim;
use edgeplex::source::{supervise, Backoff, Opener, RingTarget, SourceError, StreamHealth};
use serialport::{SerialPort, TTYPort};

/// Longest any single wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(20);

/// The tests run one at a time: a freed pty number can be handed to the next `pair()`, and a
/// symlink still pointing at it must not reach another test's pty.
static PTY: Mutex<()> = Mutex::new(());

fn serial_test() -> MutexGuard<'static, ()> {
    PTY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pty pair. The test keeps its own handle on the slave so the pty stays up until the test
/// drops it, and to see how many written bytes the agent has not read yet.
struct Pty {
    master: TTYPort,
    slave: TTYPort,
}

impl Pty {
    fn new() -> Pty {
        let (master, slave) = TTYPort::pair().expect("create a pty pair");
        Pty { master, slave }
    }

    fn slave_path(&self) -> String {
        self.slave.name().expect("pty slave has a name")
    }

    /// Write all of `bytes` into the master side (the "device" sending).
    fn send(&mut self, mut bytes: &[u8]) {
        let deadline = Instant::now() + WAIT;
        while !bytes.is_empty() {
            match self.master.write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) =>
                {
                    assert!(
                        Instant::now() < deadline,
                        "pty master stayed full: the agent stopped reading"
                    );
                }
                Err(e) => panic!("write to the pty master: {e}"),
            }
        }
    }

    /// Bytes written that the agent has not read yet.
    fn unread(&self) -> u32 {
        self.slave
            .bytes_to_read()
            .expect("TIOCINQ on the pty slave")
    }
}

/// Point `link` at `target`, atomically (as udev replaces a by-id link).
fn point(link: &Path, target: &str) {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("create symlink");
    std::fs::rename(&tmp, link).expect("rename symlink into place");
}

/// One message read back from the ring.
#[derive(Debug, Clone)]
struct Msg {
    seq: u64,
    payload: Vec<u8>,
    flags: u32,
    device_seq: u64,
    capture_ns: u64,
    publish_ns: u64,
}

impl Msg {
    fn truncated(&self) -> bool {
        self.flags & FLAG_TRUNCATED != 0
    }
}

/// A serial stream under `supervise` on its own thread, plus a reader of its ring.
struct Stream {
    _dir: tempfile::TempDir,
    link: PathBuf,
    ring: PathBuf,
    health: StreamHealth,
    shutdown: Shutdown,
    thread: Option<JoinHandle<()>>,
    reader: Option<Reader>,
    got: Vec<Msg>,
}

impl Stream {
    /// Start a stream whose device is a symlink to `target` and wait for it to come up.
    fn start(target: &str, framing: Framing) -> Stream {
        let s = Stream::spawn(target, framing);
        s.wait_health("the stream to come up", |h| h.is_up());
        s
    }

    /// Start a stream without waiting for its device.
    fn spawn(target: &str, framing: Framing) -> Stream {
        let dir = common::shm_dir();
        let link = dir.path().join("ttyGPS");
        point(&link, target);
        let ring = dir.path().join("gps0.ring");
        let settings = SerialSettings {
            framing,
            slot_count: 4096,
            ..SerialSettings::new(&link)
        };
        settings.validate("stream.gps0").expect("valid settings");
        let opener = SerialOpener::new("gps0", settings);
        let health = StreamHealth::new(
            "gps0",
            "serial",
            edgeplex::source::kinds::DeviceClass::Serial,
        );
        let shutdown = Shutdown::default();
        let thread = {
            let target = RingTarget {
                path: ring.clone(),
                options: CreateOptions::default(),
                dir: None,
            };
            let (health, shutdown) = (health.clone(), shutdown.clone());
            thread::Builder::new()
                .name("gps0".into())
                .spawn(move || {
                    let backoff =
                        Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
                    supervise(opener, &target, &health, &shutdown, backoff);
                })
                .expect("spawn the stream thread")
        };
        Stream {
            _dir: dir,
            link,
            ring,
            health,
            shutdown,
            thread: Some(thread),
            reader: None,
            got: Vec::new(),
        }
    }

    fn wait_health(&self, what: &str, done: impl Fn(&StreamHealth) -> bool) {
        if try_wait_for(WAIT, || done(&self.health).then_some(())).is_none() {
            panic!("timed out waiting for {what}: {:?}", self.health.snapshot());
        }
    }

    /// Read every message the ring has now into `self.got`.
    fn drain(&mut self) {
        let ring = &self.ring;
        let reader = self
            .reader
            .get_or_insert_with(|| Reader::open(ring, Start::Oldest).expect("open the ring"));
        loop {
            match reader
                .next(Duration::from_millis(20))
                .expect("read the ring")
            {
                Recv::Message(m) => {
                    let (seq, flags, device_seq) = (m.seq(), m.flags(), m.device_seq());
                    let (capture_ns, publish_ns) = (m.capture_ns(), m.publish_ns());
                    let mut payload = Vec::new();
                    assert!(m.copy_to(&mut payload), "message {seq} torn");
                    self.got.push(Msg {
                        seq,
                        payload,
                        flags,
                        device_seq,
                        capture_ns,
                        publish_ns,
                    });
                }
                Recv::TimedOut => return,
                Recv::Reopened => panic!("the ring file was replaced; it must be reused"),
            }
        }
    }

    /// Read the ring until `done` holds.
    fn wait_for(&mut self, what: &str, done: impl Fn(&Stream) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            self.drain();
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {} messages, {} bytes, {:?}",
                self.got.len(),
                self.payload_bytes(),
                self.health.snapshot()
            );
        }
    }

    fn payload_bytes(&self) -> usize {
        self.got.iter().map(|m| m.payload.len()).sum()
    }

    fn dropped(&self) -> usize {
        self.health.snapshot().dropped_bytes as usize
    }

    /// Read until every one of `written` bytes is published or counted as dropped, then check
    /// that it is exactly so.
    fn wait_accounted(&mut self, written: usize) {
        self.wait_for(&format!("{written} bytes to be accounted for"), |s| {
            s.payload_bytes() + s.dropped() >= written
        });
        assert_eq!(
            self.payload_bytes() + self.dropped(),
            written,
            "published + dropped must equal written"
        );
    }

    fn payloads(&self) -> Vec<Vec<u8>> {
        self.got.iter().map(|m| m.payload.clone()).collect()
    }

    /// Stop the supervisor and wait for its thread.
    fn stop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            t.join().expect("the stream thread panicked");
        }
    }

    /// Checks every test ends with: consecutive message numbers and sample counters, every
    /// message stamped with CLOCK_REALTIME no later than its publish, nothing lost by the reader.
    fn check_stream_invariants(&self) {
        for (i, m) in self.got.iter().enumerate() {
            assert_eq!(m.seq, i as u64, "message numbers are consecutive");
            assert_eq!(m.device_seq, i as u64, "device_seq counts samples");
            assert_ne!(
                m.flags & FLAG_CAPTURE_REALTIME,
                0,
                "capture_ns is CLOCK_REALTIME"
            );
            assert!(m.capture_ns > 0 && m.capture_ns <= m.publish_ns, "{m:?}");
        }
        let reader = self.reader.as_ref().expect("the ring was read");
        assert_eq!(reader.lost(), 0);
        let snap = self.health.snapshot();
        assert_eq!(snap.messages as usize, self.got.len());
        assert_eq!(snap.bytes as usize, self.payload_bytes());
        assert_eq!(
            snap.truncated as usize,
            self.got.iter().filter(|m| m.truncated()).count()
        );
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lines(max_len: usize) -> Framing {
    Framing::Lines {
        max_len,
        terminator: Terminator(b'\n'),
    }
}

/// What the framer makes of `input` in one piece: the oracle for the ring's content.
fn frame_all(framing: Framing, input: &[u8]) -> (Vec<(Vec<u8>, bool)>, usize) {
    let mut f = Framer::new(framing);
    let mut messages = Vec::new();
    let mut dropped = 0;
    f.push(input, Instant::now(), |e| match e {
        Event::Message { bytes, truncated } => messages.push((bytes.to_vec(), truncated)),
        Event::Dropped(n) => dropped += n,
    });
    (messages, dropped)
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn garbage(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

#[test]
fn nmea_lines_arrive_one_per_message_with_their_crlf() {
    let _serial = serial_test();
    let mut pty = Pty::new();
    let mut s = Stream::start(&pty.slave_path(), lines(82));
    let mut sim = NmeaSim::new();
    let sentences: Vec<Vec<u8>> = (0..200).map(|_| sim.next_line()).collect();
    let all = sentences.concat();
    let before = ring::realtime_ns();
    // Odd-sized writes, so that sentences straddle reads.
    for piece in all.chunks(37) {
        pty.send(piece);
    }
    s.wait_accounted(all.len());
    assert_eq!(s.payloads(), sentences);
    assert!(s.got.iter().all(|m| !m.truncated()));
    assert!(s.got.iter().all(|m| m.capture_ns >= before));
    assert_eq!(s.dropped(), 0);
    s.stop();
    s.check_stream_invariants();
}

#[test]
fn over_long_lines_are_cut_flagged_and_the_rest_counted() {
    let _serial = serial_test();
    let mut pty = Pty::new();
    let mut s = Stream::start(&pty.slave_path(), lines(16));
    let long = [
        b"0123456789abcdefghijklmnopqrstuvwxyz++++".as_slice(),
        b"\n",
    ]
    .concat();
    assert_eq!(long.len(), 41);
    let input = [b"short\n".as_slice(), &long, b"ok\r\n"].concat();
    pty.send(&input);
    s.wait_accounted(input.len());
    assert_eq!(
        s.payloads(),
        [
            b"short\n".to_vec(),
            b"0123456789abcdef".to_vec(),
            b"ok\r\n".to_vec()
        ]
    );
    assert_eq!(
        s.got.iter().map(Msg::truncated).collect::<Vec<_>>(),
        [false, true, false]
    );
    let snap = s.health.snapshot();
    assert_eq!(snap.truncated, 1);
    assert_eq!(
        snap.dropped_bytes,
        41 - 16,
        "the cut-off rest, newline included"
    );
    s.stop();
    s.check_stream_invariants();
}

#[test]
fn binary_garbage_with_nul_and_invalid_utf8_is_published_as_is() {
    let _serial = serial_test();
    let mut pty = Pty::new();
    let framing = lines(64);
    let mut s = Stream::start(&pty.slave_path(), framing);
    let mut input = Vec::new();
    input.extend_from_slice(b"\x00\x00\x00\n");
    input.extend_from_slice(b"\xff\xfe\xc3\x28\xed\xa0\x80\xf0\x28\x8c\x28\r\n");
    input.extend_from_slice(b"\x03\x04\x11\x13\x1b[0m\x7f\r\n"); // control bytes, XON/XOFF
    input.extend_from_slice(&garbage(24 * 1024, 0x9e37_79b9_7f4a_7c15));
    input.push(b'\n');
    // Writes of varying size, so reads split the stream in many places.
    let mut rest = input.as_slice();
    let mut n = 1;
    while !rest.is_empty() {
        let k = n.min(rest.len());
        pty.send(&rest[..k]);
        rest = &rest[k..];
        n = n * 7 % 613 + 1;
    }
    s.wait_accounted(input.len());
    let (want, want_dropped) = frame_all(framing, &input);
    let got: Vec<(Vec<u8>, bool)> = s
        .got
        .iter()
        .map(|m| (m.payload.clone(), m.truncated()))
        .collect();
    assert_eq!(got.len(), want.len());
    assert_eq!(
        got, want,
        "the ring holds what the framer makes of the bytes"
    );
    assert_eq!(s.dropped(), want_dropped);
    assert!(
        want.iter().any(|(_, t)| *t),
        "the garbage has over-long lines"
    );
    s.stop();
    s.check_stream_invariants();
}

#[test]
fn fixed_records_and_a_partial_one_counted_at_stop() {
    let _serial = serial_test();
    let mut pty = Pty::new();
    let mut s = Stream::start(&pty.slave_path(), Framing::Records { size: 12 });
    let input = garbage(5 * 12 + 7, 42);
    let mut at = 0;
    for k in [5, 13, 20, 29] {
        pty.send(&input[at..at + k]);
        at += k;
    }
    assert_eq!(at, input.len());
    s.wait_for("5 records, and the tail read", |s| s.got.len() == 5);
    wait_for("the agent to read the tail", WAIT, || {
        (pty.unread() == 0).then_some(())
    });
    assert_eq!(s.payloads(), input[..60].chunks(12).collect::<Vec<_>>());
    assert_eq!(s.dropped(), 0);
    // The 7 bytes of a record that never completed are counted when the stream stops.
    s.stop();
    s.drain();
    assert_eq!(s.got.len(), 5);
    assert_eq!(s.dropped(), 7);
    assert_eq!(s.payload_bytes() + s.dropped(), input.len());
    s.check_stream_invariants();
}

#[test]
fn raw_chunks_flush_on_size_and_after_an_idle_gap() {
    let _serial = serial_test();
    let mut pty = Pty::new();
    let framing = Framing::Chunks {
        max_size: 32,
        idle_ms: 100,
    };
    let mut s = Stream::start(&pty.slave_path(), framing);
    let first = garbage(100, 7);
    pty.send(&first);
    // Three full chunks at once; the last 4 bytes only after the line goes quiet.
    s.wait_accounted(first.len());
    let second = garbage(10, 8);
    pty.send(&second);
    s.wait_accounted(first.len() + second.len());
    let sizes: Vec<usize> = s.got.iter().map(|m| m.payload.len()).collect();
    assert_eq!(sizes, [32, 32, 32, 4, 10]);
    assert_eq!(s.payloads().concat(), [first, second].concat());
    assert!(s.got.iter().all(|m| !m.truncated()));
    assert_eq!(s.dropped(), 0);
    s.stop();
    s.check_stream_invariants();
}

#[test]
fn a_vanished_port_is_reopened_and_resumes_the_same_ring() {
    let _serial = serial_test();
    let mut pty1 = Pty::new();
    let mut s = Stream::start(&pty1.slave_path(), lines(64));
    let ring_ino = std::fs::metadata(&s.ring).expect("ring exists").ino();
    let mut written = 0;

    // Two lines and the start of a third, all read by the agent before the port vanishes.
    let a = b"$A1*00\r\n$A2*00\r\n$A3,par";
    pty1.send(a);
    written += a.len();
    s.wait_for("A1 and A2", |s| s.got.len() == 2);
    wait_for("the agent to read the partial line", WAIT, || {
        (pty1.unread() == 0).then_some(())
    });

    // Unplug: the master closes, the slave hangs up and its /dev/pts node disappears.
    let Pty {
        master,
        slave: slave1,
    } = pty1;
    drop(master);
    s.wait_health("the stream to go down", |h| !h.is_up());
    let snap = s.health.snapshot();
    assert!(snap.last_error.is_some(), "{snap:?}");
    assert!(
        snap.errors
            .iter()
            .any(|(k, n)| *k == "disconnected" && *n >= 1),
        "{snap:?}"
    );
    // The partial line was not lost: it is published, flagged truncated.
    s.wait_accounted(written);
    assert_eq!(
        s.got.last().map(|m| m.payload.as_slice()),
        Some(&b"$A3,par"[..])
    );
    assert!(s.got.last().is_some_and(Msg::truncated));
    assert_eq!(s.health.snapshot().reconnects, 0);

    // Re-plug: a new pty, the by-id style link re-pointed at it.
    let mut pty2 = Pty::new();
    drop(slave1);
    point(&s.link, &pty2.slave_path());
    s.wait_health("the stream to come back", |h| h.is_up());
    let snap = s.health.snapshot();
    assert_eq!(snap.reconnects, 1);
    assert_eq!(snap.last_error, None);

    let b = b"$B1*00\r\n$B2*00\r\n";
    pty2.send(b);
    written += b.len();
    s.wait_accounted(written);
    assert_eq!(
        s.payloads(),
        [
            b"$A1*00\r\n".to_vec(),
            b"$A2*00\r\n".to_vec(),
            b"$A3,par".to_vec(),
            b"$B1*00\r\n".to_vec(),
            b"$B2*00\r\n".to_vec(),
        ]
    );
    assert_eq!(
        s.got.iter().map(Msg::truncated).collect::<Vec<_>>(),
        [false, false, true, false, false]
    );
    // The same ring file, followed by the same reader, with message numbers continuing.
    assert_eq!(
        std::fs::metadata(&s.ring).expect("ring exists").ino(),
        ring_ino
    );
    assert_eq!(s.reader.as_ref().map(Reader::reopened), Some(0));
    assert_eq!(s.dropped(), 0);
    s.stop();
    s.check_stream_invariants();
}

#[test]
fn a_port_that_is_not_there_yet_is_retried_until_it_appears() {
    let _serial = serial_test();
    let dir = common::shm_dir();
    let nowhere = dir.path().join("not-plugged-in");
    let mut s = Stream::spawn(nowhere.to_str().expect("utf-8 path"), lines(64));
    s.wait_health("the missing port to be reported", |h| {
        h.snapshot()
            .last_error
            .is_some_and(|e| e.contains("does not exist"))
    });
    assert!(!s.health.is_up());
    let mut pty = Pty::new();
    point(&s.link, &pty.slave_path());
    s.wait_health("the stream to come up", |h| h.is_up());
    assert_eq!(
        s.health.snapshot().reconnects,
        0,
        "a first open is not a reconnect"
    );
    pty.send(b"hello\n");
    s.wait_accounted(6);
    assert_eq!(s.payloads(), [b"hello\n".to_vec()]);
    s.stop();
    s.check_stream_invariants();
}

#[test]
fn a_second_opener_of_a_held_port_is_refused_as_busy() {
    let _serial = serial_test();
    let pty = Pty::new();
    let s = Stream::start(&pty.slave_path(), lines(64));
    let mut second = SerialOpener::new("intruder", SerialSettings::new(&s.link));
    let e = match second.open() {
        Ok(_) => panic!("a second opener got the port the stream holds"),
        Err(e) => e,
    };
    assert!(matches!(e, SourceError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("in use by another program"), "{e}");
    assert!(s.health.is_up(), "the stream keeps its port");
}

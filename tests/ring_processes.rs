//! Multi-process tests of the ring: real writer processes (this test binary re-executed with
//! its hidden `ring-writer` subcommand, see [`main`]) and real reader processes (`edgeplex ring
//! cat --meta --hash`), on tmpfs.
//!
//! This file is a `harness = false` test (Cargo.toml) run by `libtest-mimic`: its `main` either
//! runs the tests (the same command-line options and output as libtest) or, started as
//! `ring_processes ring-writer`, is a writer process. So the writer's body is a program, not a
//! test that passes by doing nothing when it is not a child.
//!
//! Coordination is by observable events, never by sleeping: a writer child prints protocol
//! lines (`EDGEPLEX> ready ...`, `published head=N`, `mid-message seq=N`) and takes commands on
//! stdin; a reader is known to have consumed everything below `head` when `/proc/PID/syscall`
//! shows it blocked in a shared `FUTEX_WAIT` on the ring's futex word with `head` as the
//! expected value ([`Proc::wait_parked`]). Every child runs under a watchdog.
//!
//! Several tests publish in "lockstep" batches: the writer publishes a batch of fewer than
//! `slot_count - 1` messages (paced or not) while the readers read concurrently, then waits
//! until every reader is parked before the next batch. No reader can then be lapped, so
//! "lost == 0" holds by construction instead of by timing, while every batch still races the
//! writer against the readers and wraps the ring many times.

mod common;

use std::fs::{self, File};
use std::io::BufRead;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::tools;
use common::*;
use edgeplex::ring::layout::{self, desc, off};
use edgeplex::ring::{self, CreateOptions, Reader, RingError, RingSpec, Start, StreamKind, Writer};

// ---------------------------------------------------------------------------------------------
// The test runner, and the writer subcommand
// ---------------------------------------------------------------------------------------------

/// `ring_processes ring-writer`: be a writer process ([`ring_writer`]). Anything else: run the
/// tests, with libtest's options (`--list`, a name filter, `--exact`, `--test-threads`, ...).
fn main() {
    if std::env::args().nth(1).as_deref() == Some(WRITER_SUBCOMMAND) {
        ring_writer();
        return;
    }
    macro_rules! trials {
        ($($name:ident),* $(,)?) => {
            vec![$(libtest_mimic::Trial::test(stringify!($name), || {
                $name();
                Ok(())
            })),*]
        };
    }
    let tests = trials![
        four_readers_see_every_message_in_order,
        free_running_readers_account_exactly_for_losses,
        stopped_reader_loses_messages_but_never_blocks_the_writer,
        delayed_reader_loses_oldest_messages_and_counts_them,
        late_readers_start_where_they_asked,
        writer_killed_mid_message_and_restarted,
        geometry_change_while_readers_run,
        read_only_file_and_read_only_mount,
        create_options_set_mode_and_group,
        disk_directory_is_refused_unless_allowed,
        second_writer_is_refused_while_the_first_lives,
        torn_reads_are_detected_across_processes,
        torn_messages_are_counted_once,
        lapped_readers_never_pass_a_torn_payload_as_intact,
        cat_flushes_each_line_before_it_waits,
    ];
    libtest_mimic::run(&libtest_mimic::Arguments::from_args(), tests).exit();
}

// ---------------------------------------------------------------------------------------------
// The writer process
// ---------------------------------------------------------------------------------------------

fn spec(slots: u32, slot_size: u64) -> RingSpec {
    RingSpec {
        name: "test".into(),
        kind: StreamKind::Bytes,
        slot_count: slots,
        slot_size,
        video: None,
    }
}

fn say(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{MARK} {s}");
    let _ = out.flush();
}

fn env_num<T: std::str::FromStr>(key: &str) -> T {
    std::env::var(key)
        .unwrap_or_else(|_| panic!("{key} not set"))
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number"))
}

/// Publish the next message: every third one with `publish` (a copy), the others with `lend`
/// and `commit` (filled in place).
fn publish_one(w: &mut Writer, epoch: u64, max_len: usize) {
    let n = w.head();
    let meta = meta_for(n, epoch);
    match n % 3 {
        0 => {
            let got = w
                .publish(&payload(n, epoch, max_len), meta)
                .expect("publish");
            assert_eq!(got, n);
        }
        _ => {
            let len = payload_len(n, epoch, max_len);
            let mut loan = w.lend();
            assert_eq!(loan.seq(), n);
            fill_payload(&mut loan.buf()[..len], n, epoch);
            assert_eq!(loan.commit(len, meta), n);
        }
    }
}

/// The body of a writer process ([`spawn_writer`] starts this binary as `ring_processes
/// ring-writer` with its geometry in the environment). Commands on stdin, one per line:
///
/// - `publish N PACE_US`: publish N messages, sleeping PACE_US between them; prints
///   `published head=H`.
/// - `poison`: lend the next slot, fill the first half of it with [`POISON`], print
///   `mid-message seq=N`, and hang there (the test SIGKILLs it).
/// - `exit` or end of input: drop the writer (a clean stop), print `exited`.
fn ring_writer() {
    let path = PathBuf::from(std::env::var(env::PATH).expect("path"));
    let spec = spec(env_num(env::SLOTS), env_num(env::SLOT_SIZE));
    let max_len: usize = env_num(env::MAX_LEN);
    let mut w = match Writer::open(&path, &spec, &CreateOptions::default()) {
        Ok(w) => w,
        Err(e) => {
            say(&format!("error open: {e}"));
            return;
        }
    };
    assert!(max_len <= w.capacity());
    let epoch = w.epoch();
    say(&format!(
        "ready head={} epoch={} slots={} slot_size={} pid={}",
        w.head(),
        epoch,
        w.geometry().slot_count,
        w.capacity(),
        std::process::id()
    ));
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["publish", n, pace_us] => {
                let (n, pace): (u64, u64) = (n.parse().unwrap(), pace_us.parse().unwrap());
                for _ in 0..n {
                    publish_one(&mut w, epoch, max_len);
                    if pace > 0 {
                        std::thread::sleep(Duration::from_micros(pace));
                    }
                }
                say(&format!("published head={}", w.head()));
            }
            ["poison"] => {
                let mut loan = w.lend();
                let seq = loan.seq();
                let buf = loan.buf();
                let half = buf.len() / 2;
                buf[..half].fill(POISON);
                say(&format!("mid-message seq={seq}"));
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            ["exit"] => break,
            other => panic!("writer child: unknown command {other:?}"),
        }
    }
    drop(w);
    say("exited");
}

/// Publish `count` messages in lockstep batches of `batch` (see the module docs), alternating
/// unpaced and paced batches; returns the head.
fn publish_lockstep(
    w: &mut Proc,
    readers: &mut [&mut Proc],
    path: &Path,
    mut head: u64,
    count: u64,
    batch: u64,
) -> u64 {
    let end = head + count;
    let mut k = 0;
    while head < end {
        let n = batch.min(end - head);
        let pace_us = [0, 100][k % 2];
        w.send(&format!("publish {n} {pace_us}"));
        let h = w.expect("published").u64("head");
        assert_eq!(h, head + n, "writer head");
        head = h;
        for r in readers.iter_mut() {
            // A reader that has its --count exits instead of parking; its output is checked
            // once it has exited.
            r.wait_parked_or_exit(path, head);
        }
        k += 1;
    }
    head
}

fn seqs(range: std::ops::Range<u64>) -> Vec<u64> {
    range.collect()
}

// ---------------------------------------------------------------------------------------------
// 1. One writer, four readers
// ---------------------------------------------------------------------------------------------

/// One writer and four `ring cat` processes: every reader gets every message, in order, with
/// exactly the payload published, and loses none (the writer never runs more than half a
/// ring ahead of the slowest reader; see the module docs).
fn four_readers_see_every_message_in_order() {
    let dir = shm_dir();
    let path = ring_path(&dir, "cam");
    let cfg = WriterCfg {
        slots: 64,
        slot_size: 4096,
        max_len: 4096,
    };
    const M: u64 = 2000;
    let mut w = spawn_writer("writer", &path, cfg);
    let ready = w.expect("ready");
    assert_eq!(ready.u64("head"), 0);
    let epoch = ready.u64("epoch");
    let count = M.to_string();
    let mut readers: Vec<Proc> = (0..4)
        .map(|i| {
            spawn_cat(
                &format!("reader{i}"),
                &path,
                &["--from", "oldest", "--count", &count],
            )
        })
        .collect();
    for r in &mut readers {
        r.wait_parked(&path, 0);
    }
    let mut refs: Vec<&mut Proc> = readers.iter_mut().collect();
    let head = publish_lockstep(&mut w, &mut refs, &path, 0, M, u64::from(cfg.slots / 2));
    assert_eq!(head, M);
    let expect = Expect::new(&[(epoch, cfg.max_len)]);
    for r in &mut readers {
        let out = finish_cat(r);
        let c = check_stream(&out, 0, &expect, Accounting::Exact);
        assert_eq!(
            out.seqs(),
            seqs(0..M),
            "{}: not every message in order",
            r.name
        );
        assert_eq!(
            (c.end.delivered, c.end.lost, c.end.cursor, c.torn),
            (M, 0, M, 0),
            "{}",
            r.name
        );
        assert_eq!(c.end.reopened, 0);
    }
    w.send("exit");
    w.expect("exited");
    w.wait_success();
}

/// A free-running writer over a small ring and four readers (two of them slowed down): readers
/// lose messages, and account for every one of them exactly; every intact message they do get
/// is exactly what was published.
fn free_running_readers_account_exactly_for_losses() {
    let dir = shm_dir();
    let path = ring_path(&dir, "fast");
    let cfg = WriterCfg {
        slots: 8,
        slot_size: 1024,
        max_len: 1024,
    };
    const M: u64 = 3000;
    let mut w = spawn_writer("writer", &path, cfg);
    let epoch = w.expect("ready").u64("epoch");
    // The idle timeout ends a reader only when it has caught up with a writer that has stopped.
    let idle = ["--from", "oldest", "--idle-timeout", "3"];
    let mut readers = vec![
        spawn_cat("reader0", &path, &idle),
        spawn_cat(
            "reader1",
            &path,
            &[&idle[..], &["--delay-ms", "1"]].concat(),
        ),
        spawn_cat("reader2", &path, &idle),
        spawn_cat(
            "reader3",
            &path,
            &[&idle[..], &["--delay-ms", "3"]].concat(),
        ),
    ];
    for r in &mut readers {
        r.wait_parked(&path, 0);
    }
    w.send(&format!("publish {M} 0"));
    assert_eq!(w.expect("published").u64("head"), M);
    let expect = Expect::new(&[(epoch, cfg.max_len)]);
    let mut lost_somewhere = false;
    for r in &mut readers {
        let out = finish_cat(r);
        let c = check_stream(&out, 0, &expect, Accounting::Exact);
        assert_eq!(c.end.cursor, M, "{}: did not reach the head", r.name);
        assert_eq!(
            out.seqs().last(),
            Some(&(M - 1)),
            "{}: the newest message is always there to read",
            r.name
        );
        lost_somewhere |= c.end.lost > 0;
    }
    // The 3 ms reader cannot keep up with 3000 unpaced messages in 8 slots.
    assert!(
        lost_somewhere,
        "no reader lost anything: the test exercised nothing"
    );
    w.send("exit");
    w.wait_success();
}

// ---------------------------------------------------------------------------------------------
// 2. A stalled reader cannot block the writer
// ---------------------------------------------------------------------------------------------

/// SIGSTOP a reader, have the writer publish everything while it is stopped, SIGCONT it: it
/// reports exactly the messages the writer lapped as lost and delivers the rest intact.
fn stopped_reader_loses_messages_but_never_blocks_the_writer() {
    let dir = shm_dir();
    let path = ring_path(&dir, "stall");
    let cfg = WriterCfg {
        slots: 16,
        slot_size: 512,
        max_len: 512,
    };
    const FIRST: u64 = 5;
    const M: u64 = 300;
    let retained = u64::from(cfg.slots) - 1;
    let oldest = M - retained;
    let mut w = spawn_writer("writer", &path, cfg);
    let epoch = w.expect("ready").u64("epoch");
    let want = (FIRST + retained).to_string();
    let mut slow = spawn_cat(
        "stopped reader",
        &path,
        &["--from", "oldest", "--count", &want, "--idle-timeout", "30"],
    );
    slow.wait_parked(&path, 0);
    w.send(&format!("publish {FIRST} 0"));
    assert_eq!(w.expect("published").u64("head"), FIRST);
    slow.wait_parked(&path, FIRST);

    slow.signal("STOP");
    wait_until("the reader to stop", || slow.sched_state() == 'T');
    w.send(&format!("publish {} 0", M - FIRST));
    assert_eq!(w.expect("published").u64("head"), M);
    assert_eq!(
        slow.sched_state(),
        'T',
        "the reader must still be stopped when the writer has published everything"
    );
    let info = ring::inspect(&path).expect("inspect");
    assert_eq!(info.head, M);
    assert!(info.writer_alive);
    slow.signal("CONT");

    let out = finish_cat(&mut slow);
    let c = check_stream(
        &out,
        0,
        &Expect::new(&[(epoch, cfg.max_len)]),
        Accounting::Exact,
    );
    let want: Vec<u64> = (0..FIRST).chain(oldest..M).collect();
    assert_eq!(out.seqs(), want);
    assert_eq!(out.msgs()[FIRST as usize].lost_before, oldest - FIRST);
    assert_eq!(
        (c.end.delivered, c.end.lost, c.end.cursor),
        (FIRST + retained, oldest - FIRST, M)
    );
    assert!(out.msgs().iter().all(|m| m.intact));
    w.send("exit");
    w.wait_success();
}

/// A reader slowed down with `--delay-ms` loses the oldest messages and counts them.
fn delayed_reader_loses_oldest_messages_and_counts_them() {
    let dir = shm_dir();
    let path = ring_path(&dir, "delay");
    let cfg = WriterCfg {
        slots: 8,
        slot_size: 256,
        max_len: 256,
    };
    const M: u64 = 200;
    let mut w = spawn_writer("writer", &path, cfg);
    let epoch = w.expect("ready").u64("epoch");
    let mut slow = spawn_cat(
        "delayed reader",
        &path,
        &[
            "--from",
            "oldest",
            "--delay-ms",
            "50",
            "--idle-timeout",
            "3",
        ],
    );
    slow.wait_parked(&path, 0);
    w.send(&format!("publish {M} 0"));
    assert_eq!(w.expect("published").u64("head"), M);
    let out = finish_cat(&mut slow);
    let c = check_stream(
        &out,
        0,
        &Expect::new(&[(epoch, cfg.max_len)]),
        Accounting::Exact,
    );
    assert_eq!(c.end.cursor, M);
    assert!(
        c.end.lost > 0,
        "a 50 ms/message reader kept up with {M} unpaced messages"
    );
    assert_eq!(out.seqs().last(), Some(&(M - 1)));
    w.send("exit");
    w.wait_success();
}

// ---------------------------------------------------------------------------------------------
// 3. Late attach
// ---------------------------------------------------------------------------------------------

/// Readers attaching to a ring that already holds M messages (writer idle): `--from oldest`
/// starts at exactly `M - (slot_count - 1)`, `--from newest` at `M - 1`, and `--from next`
/// gets only what is published after it attached.
fn late_readers_start_where_they_asked() {
    let dir = shm_dir();
    let path = ring_path(&dir, "late");
    let cfg = WriterCfg {
        slots: 16,
        slot_size: 256,
        max_len: 256,
    };
    const M: u64 = 100;
    const MORE: u64 = 10;
    let mut w = spawn_writer("writer", &path, cfg);
    let epoch = w.expect("ready").u64("epoch");
    let expect = Expect::new(&[(epoch, cfg.max_len)]);
    w.send(&format!("publish {M} 0"));
    assert_eq!(w.expect("published").u64("head"), M);

    // The writer is idle, so the idle timeout ends these readers only once they have drained.
    let first = M - (u64::from(cfg.slots) - 1);
    let mut oldest = spawn_cat(
        "oldest",
        &path,
        &["--from", "oldest", "--idle-timeout", "1"],
    );
    let mut newest = spawn_cat(
        "newest",
        &path,
        &["--from", "newest", "--idle-timeout", "1"],
    );
    let out = finish_cat(&mut oldest);
    let c = check_stream(&out, first, &expect, Accounting::Exact);
    assert_eq!(out.seqs(), seqs(first..M));
    assert_eq!((c.end.lost, c.end.cursor), (0, M));
    let out = finish_cat(&mut newest);
    let c = check_stream(&out, M - 1, &expect, Accounting::Exact);
    assert_eq!(out.seqs(), vec![M - 1]);
    assert_eq!((c.end.lost, c.end.cursor), (0, M));

    let mut next = spawn_cat(
        "next",
        &path,
        &[
            "--from",
            "next",
            "--count",
            &MORE.to_string(),
            "--idle-timeout",
            "30",
        ],
    );
    next.wait_parked(&path, M);
    w.send(&format!("publish {MORE} 0"));
    assert_eq!(w.expect("published").u64("head"), M + MORE);
    let out = finish_cat(&mut next);
    let c = check_stream(&out, M, &expect, Accounting::Exact);
    assert_eq!(out.seqs(), seqs(M..M + MORE));
    assert_eq!((c.end.lost, c.end.cursor), (0, M + MORE));
    w.send("exit");
    w.wait_success();
}

// ---------------------------------------------------------------------------------------------
// 4. Writer killed mid-message, then restarted
// ---------------------------------------------------------------------------------------------

/// SIGKILL a writer halfway through filling a slot with poison, restart it on the same path:
/// the new writer continues the sequence with the next epoch, and readers that ran throughout
/// (and one that attached between the kill and the restart) never see the poison, never
/// reopen, and lose nothing.
fn writer_killed_mid_message_and_restarted() {
    let dir = shm_dir();
    let path = ring_path(&dir, "restart");
    let cfg = WriterCfg {
        slots: 16,
        slot_size: 1024,
        max_len: 1024,
    };
    const K: u64 = 40;
    const L: u64 = 40;
    let batch = 8;
    let retained = u64::from(cfg.slots) - 1;
    let mut a = spawn_writer("writer A", &path, cfg);
    let epoch_a = a.expect("ready").u64("epoch");
    let total = (K + L).to_string();
    let args = [
        "--from",
        "oldest",
        "--count",
        &total,
        "--idle-timeout",
        "30",
    ];
    let mut r1 = spawn_cat("reader1", &path, &args);
    let mut r2 = spawn_cat("reader2", &path, &args);
    r1.wait_parked(&path, 0);
    r2.wait_parked(&path, 0);
    publish_lockstep(&mut a, &mut [&mut r1, &mut r2], &path, 0, K, batch);

    a.send("poison");
    assert_eq!(a.expect("mid-message").u64("seq"), K);
    // The slot really is mid-write, with the poison in it.
    let slot = K % u64::from(cfg.slots);
    let g = ring::inspect(&path).expect("inspect").geometry;
    let f = File::open(&path).expect("open ring");
    let mut word = [0u8; 8];
    f.read_exact_at(&mut word, g.desc_at(slot) + desc::SEQ as u64)
        .unwrap();
    assert_eq!(
        u64::from_le_bytes(word),
        2 * K + 1,
        "slot seq is 'writing K'"
    );
    let mut first = [0u8; 16];
    f.read_exact_at(&mut first, g.payload_at(slot)).unwrap();
    assert_eq!(first, [POISON; 16]);
    r1.wait_parked(&path, K);
    r2.wait_parked(&path, K);

    let status = a.kill();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let info = ring::inspect(&path).expect("inspect");
    assert!(!info.writer_alive, "the OFD lock dies with the writer");
    assert_eq!((info.head, info.epoch), (K, epoch_a));

    // A reader attaching while no writer runs.
    let late_count = (retained + L).to_string();
    let mut r3 = spawn_cat(
        "reader3 (attached after the kill)",
        &path,
        &[
            "--from",
            "oldest",
            "--count",
            &late_count,
            "--idle-timeout",
            "30",
        ],
    );
    r3.wait_parked(&path, K);

    let mut b = spawn_writer("writer B", &path, cfg);
    let ready = b.expect("ready");
    let epoch_b = ready.u64("epoch");
    assert_eq!(
        ready.u64("head"),
        K,
        "the restarted writer continues the sequence"
    );
    assert_eq!(epoch_b, epoch_a + 1, "the restarted writer bumps the epoch");
    let end = publish_lockstep(&mut b, &mut [&mut r1, &mut r2, &mut r3], &path, K, L, batch);
    assert_eq!(end, K + L);

    let expect = Expect::new(&[(epoch_a, cfg.max_len), (epoch_b, cfg.max_len)]);
    for (r, start) in [(&mut r1, 0), (&mut r2, 0), (&mut r3, K - retained)] {
        let out = finish_cat(r);
        let c = check_stream(&out, start, &expect, Accounting::Exact);
        assert_eq!(out.seqs(), seqs(start..K + L), "{}", r.name);
        assert_eq!((c.end.lost, c.end.reopened), (0, 0), "{}", r.name);
        assert_eq!(out.reopen_events(), 0);
        for m in out.msgs() {
            let want = if m.seq < K { epoch_a } else { epoch_b };
            assert_eq!(m.epoch, want, "{}: epoch of message {}", r.name, m.seq);
            assert!(m.intact);
        }
    }
    b.send("exit");
    b.wait_success();
}

// ---------------------------------------------------------------------------------------------
// 5. Geometry change
// ---------------------------------------------------------------------------------------------

/// A writer with one geometry publishes and exits; the next writer wants another slot size and
/// count, so it renames a new file over the old one and retires the old one. Readers follow:
/// one "reopened" event, message numbers continue, payloads intact, clean exit (no SIGBUS).
/// A reader stopped through all of it first drains what the retired file still holds, then
/// follows, and counts exactly what it missed in each file.
fn geometry_change_while_readers_run() {
    let dir = shm_dir();
    let path = ring_path(&dir, "geo");
    let cfg_a = WriterCfg {
        slots: 8,
        slot_size: 1024,
        max_len: 1000,
    };
    let cfg_b = WriterCfg {
        slots: 16,
        slot_size: 4096,
        max_len: 4000,
    };
    const K: u64 = 20;
    const L: u64 = 40;
    let mut a = spawn_writer("writer A", &path, cfg_a);
    let epoch_a = a.expect("ready").u64("epoch");
    let total = (K + L).to_string();
    let args = [
        "--from",
        "oldest",
        "--count",
        &total,
        "--idle-timeout",
        "30",
    ];
    let mut r1 = spawn_cat("reader1", &path, &args);
    let mut r2 = spawn_cat("reader2", &path, &args);
    // The lagging reader: stopped before the first message, resumed after the last.
    let (old_oldest, new_oldest) = (
        K - (u64::from(cfg_a.slots) - 1),
        K + L - (u64::from(cfg_b.slots) - 1),
    );
    let lag_delivered = (K - old_oldest) + (K + L - new_oldest);
    let lag_count = lag_delivered.to_string();
    let mut r3 = spawn_cat(
        "reader3 (stopped)",
        &path,
        &[
            "--from",
            "oldest",
            "--count",
            &lag_count,
            "--idle-timeout",
            "30",
        ],
    );
    for r in [&mut r1, &mut r2, &mut r3] {
        r.wait_parked(&path, 0);
    }
    r3.signal("STOP");
    wait_until("reader3 to stop", || r3.sched_state() == 'T');
    publish_lockstep(&mut a, &mut [&mut r1, &mut r2], &path, 0, K, 4);
    a.send("exit");
    a.expect("exited");
    a.wait_success();

    let old_file = File::open(&path).expect("open the old file");
    let old_inode = inode(&path);
    let mut b = spawn_writer("writer B", &path, cfg_b);
    let ready = b.expect("ready");
    let epoch_b = ready.u64("epoch");
    assert_eq!(
        ready.u64("head"),
        K,
        "message numbers continue in the new file"
    );
    assert_eq!(epoch_b, epoch_a + 1);
    assert_eq!(ready.u64("slots"), u64::from(cfg_b.slots));
    assert_ne!(
        inode(&path),
        old_inode,
        "a new file is renamed over the old one"
    );
    let mut state = [0u8; 4];
    old_file
        .read_exact_at(&mut state, off::STATE as u64)
        .unwrap();
    assert_ne!(
        u32::from_le_bytes(state) & layout::STATE_RETIRED,
        0,
        "the old file is marked retired"
    );
    assert_eq!(old_file.metadata().unwrap().len(), {
        let mut b = [0u8; 8];
        old_file
            .read_exact_at(&mut b, off::FILE_SIZE as u64)
            .unwrap();
        u64::from_le_bytes(b)
    });
    // Parked on the new file's futex: both readers have followed the rename.
    r1.wait_parked(&path, K);
    r2.wait_parked(&path, K);
    publish_lockstep(&mut b, &mut [&mut r1, &mut r2], &path, K, L, 8);
    r3.signal("CONT");

    let expect = Expect::new(&[(epoch_a, cfg_a.max_len), (epoch_b, cfg_b.max_len)]);
    for r in [&mut r1, &mut r2] {
        let out = finish_cat(r);
        let c = check_stream(&out, 0, &expect, Accounting::Exact);
        assert_eq!(out.seqs(), seqs(0..K + L), "{}", r.name);
        assert_eq!((c.end.lost, c.end.reopened), (0, 1), "{}", r.name);
        check_reopen_event(&out, K, cfg_b);
    }
    let out = finish_cat(&mut r3);
    let c = check_stream(&out, 0, &expect, Accounting::Exact);
    let want: Vec<u64> = (old_oldest..K).chain(new_oldest..K + L).collect();
    assert_eq!(
        out.seqs(),
        want,
        "the stopped reader drains the retired file first"
    );
    assert_eq!(
        (c.end.delivered, c.end.lost, c.end.cursor, c.end.reopened),
        (lag_delivered, old_oldest + (new_oldest - K), K + L, 1)
    );
    check_reopen_event(&out, K, cfg_b);
    b.send("exit");
    b.wait_success();
}

/// Exactly one reopened event, right before message `base`, describing the new geometry.
fn check_reopen_event(out: &CatOut, base: u64, cfg: WriterCfg) {
    assert_eq!(out.reopen_events(), 1, "{}: reopened events", out.name);
    let at = out
        .lines
        .iter()
        .position(|l| matches!(l, CatLine::Reopened(_)))
        .unwrap();
    let CatLine::Reopened(ev) = &out.lines[at] else {
        unreachable!()
    };
    let g = &ev["geometry"];
    assert_eq!(g["slot_count"], u64::from(cfg.slots), "{ev}");
    assert_eq!(g["slot_size"], cfg.slot_size, "{ev}");
    assert_eq!(g["base_seq"], base, "{ev}");
    let before = out.lines[..at].iter().rev().find_map(msg_seq);
    let after = out.lines[at + 1..].iter().find_map(msg_seq);
    assert!(
        before.is_none_or(|b| b < base),
        "{}: message {before:?} just before the reopen",
        out.name
    );
    assert!(
        after.is_some_and(|a| a >= base),
        "{}: message {after:?} just after the reopen",
        out.name
    );
}

fn msg_seq(l: &CatLine) -> Option<u64> {
    match l {
        CatLine::Msg(m) => Some(m.seq),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Permissions, read-only files and mounts
// ---------------------------------------------------------------------------------------------

fn setpriv_available() -> bool {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

fn i_am_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Run `ring cat --from oldest --idle-timeout 0.5` (the ring must have no live writer, so the
/// timeout only ends a drained reader) as `prefix...`, and return its parsed output.
fn cat_as(name: &str, prefix: &[&str], path: &Path) -> CatOut {
    let mut cmd = Command::new(prefix[0]);
    cmd.args(&prefix[1..])
        .arg(env!("CARGO_BIN_EXE_edgeplex"))
        .args(["ring", "cat"])
        .arg(path)
        .args([
            "--meta",
            "--hash",
            "--from",
            "oldest",
            "--idle-timeout",
            "0.5",
        ])
        .env_remove("EDGEPLEX_LOG");
    let mut p = Proc::spawn(name, cmd);
    finish_cat(&mut p)
}

/// A ring file chmod 0444 is readable by `ring cat` (as root, and as an unprivileged user for
/// whom read permission is the only way in), and so is a ring behind a read-only bind mount.
fn read_only_file_and_read_only_mount() {
    let dir = shm_dir();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let path = ring_path(&dir, "ro");
    let cfg = WriterCfg {
        slots: 8,
        slot_size: 512,
        max_len: 512,
    };
    const M: u64 = 5;
    let mut w = spawn_writer("writer", &path, cfg);
    let epoch = w.expect("ready").u64("epoch");
    w.send(&format!("publish {M} 0"));
    w.expect("published");
    w.send("exit");
    w.wait_success();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).unwrap();
    let expect = Expect::new(&[(epoch, cfg.max_len)]);
    let check = |out: CatOut| {
        check_stream(&out, 0, &expect, Accounting::Exact);
        assert_eq!(out.seqs(), seqs(0..M), "{}", out.name);
    };

    check(cat_as("reader (0444)", &["env"], &path));
    if setpriv_available() {
        check(cat_as(
            "reader (0444, uid 65534)",
            &[
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ],
            &path,
        ));
    } else {
        tools::missing("setpriv that can drop privileges (util-linux, as root): 0444 checked as this user only");
    }

    let unshare_ok = Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !unshare_ok {
        return tools::missing(
            "permission for `unshare -m` (util-linux, as root): the read-only bind mount check",
        );
    }
    let d = dir.path().display().to_string();
    let script = format!(
        "mount --bind -o ro '{d}' '{d}' || exit 97; \
         if touch '{d}/probe' 2>/dev/null; then echo 'mount is writable' >&2; exit 98; fi; \
         exec \"$0\" ring cat '{p}' --meta --hash --from oldest --idle-timeout 0.5",
        p = path.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c", &script, env!("CARGO_BIN_EXE_edgeplex")])
        .env_remove("EDGEPLEX_LOG");
    let mut p = Proc::spawn("reader (ro bind mount)", cmd);
    let status = p.wait();
    if status.code() == Some(97) {
        return tools::missing(&format!(
            "permission for `mount --bind` in a mount namespace: the read-only bind mount \
             check ({})",
            p.stderr().trim()
        ));
    }
    assert!(status.success(), "{status:?}: {}", p.stderr());
    check(CatOut::parse(&p.name, &p.seen));
}

/// `CreateOptions { mode, group }` gives the file exactly that mode (not narrowed by the
/// umask) and group, and that group is what lets an unprivileged reader in.
fn create_options_set_mode_and_group() {
    let dir = shm_dir();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let path = ring_path(&dir, "grp");
    let opts = CreateOptions {
        mode: 0o640,
        group: Some(65534),
        allow_disk: false,
    };
    let mut w = match Writer::open(&path, &spec(4, 256), &opts) {
        Ok(w) => w,
        Err(RingError::PermissionDenied { .. }) if !i_am_root() => {
            return tools::missing("root, or membership of group 65534: the group check");
        }
        Err(e) => panic!("Writer::open with mode 0640, group 65534: {e}"),
    };
    let epoch = w.epoch();
    for _ in 0..3 {
        publish_one(&mut w, epoch, 256);
    }
    let m = fs::metadata(&path).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!(m.gid(), 65534);
    drop(w);

    // A mode wider than the umask allows (0022 here, typically) is still applied exactly.
    let wide = ring_path(&dir, "wide");
    let w2 = Writer::open(
        &wide,
        &spec(4, 256),
        &CreateOptions {
            mode: 0o664,
            ..CreateOptions::default()
        },
    )
    .expect("open");
    assert_eq!(fs::metadata(&wide).unwrap().mode() & 0o7777, 0o664);
    drop(w2);

    if !setpriv_available() {
        return tools::missing(
            "setpriv that can drop privileges (util-linux, as root): the reader-side group check",
        );
    }
    let out = cat_as(
        "reader (gid 65534)",
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        &path,
    );
    check_stream(&out, 0, &Expect::new(&[(epoch, 256)]), Accounting::Exact);
    assert_eq!(out.seqs(), seqs(0..3));

    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=4242", "--regid=4242", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_edgeplex"))
        .args(["ring", "cat"])
        .arg(&path)
        .args(["--meta", "--idle-timeout", "0.5"])
        .env_remove("EDGEPLEX_LOG");
    let mut p = Proc::spawn("reader (outsider)", cmd);
    let status = p.wait();
    let err = p.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
}

// ---------------------------------------------------------------------------------------------
// 7. Disk-backed directories
// ---------------------------------------------------------------------------------------------

/// A ring directory on a disk filesystem is refused with `NotTmpfs` (mentioning tmpfs, and
/// leaving nothing behind), unless `allow_disk` is set.
fn disk_directory_is_refused_unless_allowed() {
    let base = [
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        PathBuf::from("/var/tmp"),
    ]
    .into_iter()
    .find(|d| ring::is_memory_fs(d).is_ok_and(|mem| !mem))
    .expect("no disk-backed directory to test with");
    let dir = tempfile::tempdir_in(&base).unwrap();
    let path = dir.path().join("disk.ring");
    match Writer::open(&path, &spec(4, 256), &CreateOptions::default()) {
        Err(e @ RingError::NotTmpfs { .. }) => {
            let RingError::NotTmpfs { dir: d } = &e else {
                unreachable!()
            };
            assert_eq!(d, dir.path());
            assert!(e.to_string().contains("tmpfs"), "{e}");
        }
        other => panic!("expected NotTmpfs, got {other:?}"),
    }
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "left files behind"
    );

    let allow = CreateOptions {
        allow_disk: true,
        ..CreateOptions::default()
    };
    let mut w = Writer::open(&path, &spec(4, 256), &allow).expect("allow_disk");
    let epoch = w.epoch();
    publish_one(&mut w, epoch, 256);
    drop(w);
    let mut r = Reader::open(&path, Start::Oldest).expect("reader");
    let ring::Recv::Message(m) = r.try_next().unwrap() else {
        panic!("no message")
    };
    let mut got = Vec::new();
    assert!(m.copy_to(&mut got));
    assert_eq!(got, payload(0, epoch, 256));
}

// ---------------------------------------------------------------------------------------------
// 8. One writer per ring
// ---------------------------------------------------------------------------------------------

/// While a writer process holds a ring, another `Writer::open` is refused with `WriterActive`
/// (naming that pid), whatever geometry it asks for, and the file is left alone. Once the
/// writer has stopped, the next one takes over and continues.
fn second_writer_is_refused_while_the_first_lives() {
    let dir = shm_dir();
    let path = ring_path(&dir, "one");
    let cfg = WriterCfg {
        slots: 8,
        slot_size: 256,
        max_len: 256,
    };
    let mut w = spawn_writer("writer", &path, cfg);
    let ready = w.expect("ready");
    let epoch = ready.u64("epoch");
    w.send("publish 3 0");
    w.expect("published");
    let ino = inode(&path);
    for (what, s) in [
        ("the same geometry", spec(cfg.slots, cfg.slot_size)),
        ("another geometry", spec(32, 8192)),
    ] {
        match Writer::open(&path, &s, &CreateOptions::default()) {
            Err(RingError::WriterActive { path: p, pid }) => {
                assert_eq!(p, path);
                assert_eq!(u64::from(pid), ready.u64("pid"), "pid of the live writer");
            }
            other => panic!("second writer with {what}: expected WriterActive, got {other:?}"),
        }
        assert_eq!(inode(&path), ino, "{what}: the file was replaced");
        let info = ring::inspect(&path).unwrap();
        assert_eq!((info.head, info.epoch, info.retired), (3, epoch, false));
        assert!(info.writer_alive);
    }
    w.send("exit");
    w.wait_success();
    assert!(!ring::inspect(&path).unwrap().writer_alive);
    let next = Writer::open(
        &path,
        &spec(cfg.slots, cfg.slot_size),
        &CreateOptions::default(),
    )
    .expect("the next writer");
    assert_eq!((next.head(), next.epoch()), (3, epoch + 1));
}

// ---------------------------------------------------------------------------------------------
// Torn messages
// ---------------------------------------------------------------------------------------------

/// A writer of ~1 MiB messages into 2 slots: readers still hashing or writing out a message
/// when the writer comes round again are lapped.
const LAPPED: WriterCfg = WriterCfg {
    slots: 2,
    slot_size: 1 << 20,
    max_len: 1 << 20,
};

/// The number of the syscall process `pid` is blocked in, and its first argument.
fn blocked_in(pid: u32) -> Option<(i64, u64)> {
    let sc = fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    let mut f = sc.split_whitespace();
    let nr = f.next()?.parse().ok()?; // "running" does not parse
    let arg0 = u64::from_str_radix(f.next()?.trim_start_matches("0x"), 16).ok()?;
    Some((nr, arg0))
}

/// A message the writer overwrites while a reader process is still writing it out cannot change
/// what the reader writes: `ring cat` copies each message out of the ring (a byte-wise atomic
/// copy, checked intact after it) before writing it. `ring cat` (raw output) is made to stop in
/// the middle of message 0, blocked writing its ~1 MiB payload into a pipe this test does not
/// read yet (a pipe holds 64 KiB); the writer process then laps it and overwrites message 0's
/// slot. When the pipe is drained, `ring cat` finishes writing exactly what was published.
/// (Before the payload API was made sound, `ring cat` wrote from the slot itself, and wrote the
/// torn bytes.)
fn torn_reads_are_detected_across_processes() {
    let dir = shm_dir();
    let path = ring_path(&dir, "torn-detect");
    let cfg = LAPPED;
    let mut w = spawn_writer("writer", &path, cfg);
    let epoch = w.expect("ready").u64("epoch");
    w.send("publish 1 0");
    assert_eq!(w.expect("published").u64("head"), 1);
    let published = payload(0, epoch, cfg.max_len);
    assert!(
        published.len() > 64 << 10,
        "message 0 must not fit in a pipe"
    );

    let mut cat = edgeplex()
        .args(["ring", "cat"])
        .arg(&path)
        .args(["--from", "oldest", "--count", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ring cat");
    let pid = cat.id();
    wait_until("ring cat to block writing message 0 to its stdout", || {
        if let Some(status) = cat.try_wait().expect("try_wait") {
            panic!("ring cat exited ({status}) instead of blocking on its full stdout pipe");
        }
        blocked_in(pid) == Some((libc::SYS_write, 1))
    });
    w.send("publish 2 0");
    assert_eq!(w.expect("published").u64("head"), 3);
    let info = ring::inspect(&path).expect("inspect");
    assert_eq!(info.head, 3, "message 2 is in message 0's slot");

    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut cat.stdout.take().expect("stdout"), &mut out)
        .expect("read ring cat's stdout");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut cat.stderr.take().expect("stderr"), &mut err)
        .expect("read ring cat's stderr");
    let status = common::wait::wait_exit("ring cat", &mut cat, WATCHDOG);
    assert!(status.success(), "ring cat: {status:?}: {err}");
    assert_eq!(
        out.len(),
        published.len(),
        "the descriptor's length was kept"
    );
    assert!(
        out == published,
        "ring cat wrote bytes the writer overwrote after they were copied out; stderr:\n{err}"
    );
    assert!(
        !err.contains("overwritten"),
        "an intact copy was called torn: {err}"
    );
    w.send("exit");
    w.wait_success();
}

/// A torn message (handed out, then found overwritten) is one message: it counts once, as
/// lost, so that `delivered + lost` is the number of messages the reader went through. The
/// reader (in this process) holds message 0 while the writer process laps it.
fn torn_messages_are_counted_once() {
    let dir = shm_dir();
    let path = ring_path(&dir, "torn-count");
    let cfg = WriterCfg {
        slots: 4,
        slot_size: 256,
        max_len: 256,
    };
    let mut w = spawn_writer("writer", &path, cfg);
    w.expect("ready");
    w.send("publish 1 0");
    w.expect("published");
    let mut r = Reader::open(&path, Start::Oldest).expect("open a reader");
    let ring::Recv::Message(m) = r.try_next().expect("read") else {
        panic!("message 0 is there to read")
    };
    assert_eq!(m.seq(), 0);
    // Messages 1-4: message 4 goes into message 0's slot.
    w.send(&format!("publish {} 0", cfg.slots));
    assert_eq!(w.expect("published").u64("head"), 5);
    assert!(!m.finish(), "message 0 was overwritten while held");
    assert_eq!(
        (r.delivered(), r.lost(), r.cursor()),
        (0, 1, 1),
        "after the torn message: delivered, lost, cursor"
    );
    // Message 1 is gone too (3 messages are retained); 2, 3 and 4 are intact.
    let mut seqs = Vec::new();
    while let ring::Recv::Message(m) = r.try_next().expect("read") {
        seqs.push((m.seq(), m.lost_before()));
        assert!(m.finish(), "message {} is intact", seqs.last().unwrap().0);
    }
    assert_eq!(seqs, [(2, 1), (3, 0), (4, 0)]);
    assert_eq!(
        (r.delivered(), r.lost(), r.cursor()),
        (3, 2, 5),
        "delivered + lost must be the 5 messages the reader went through, the torn one once"
    );
    w.send("exit");
    w.wait_success();
}

/// Two readers of a 2-slot ring of ~1 MiB messages from an unpaced writer: the writer laps
/// them while they hash, so they lose messages and some come out torn. Every message reported
/// intact must still be exactly what was published, and the accounting stays exact.
fn lapped_readers_never_pass_a_torn_payload_as_intact() {
    let dir = shm_dir();
    let path = ring_path(&dir, "torn-stress");
    let cfg = LAPPED;
    const M: u64 = 200;
    let mut w = spawn_writer("writer", &path, cfg);
    let epoch = w.expect("ready").u64("epoch");
    let idle = ["--from", "oldest", "--idle-timeout", "3"];
    let mut readers = [
        spawn_cat("reader0", &path, &idle),
        spawn_cat("reader1", &path, &idle),
    ];
    for r in &mut readers {
        r.wait_parked(&path, 0);
    }
    w.send(&format!("publish {M} 0"));
    assert_eq!(w.expect("published").u64("head"), M);
    let expect = Expect::new(&[(epoch, cfg.max_len)]);
    let (mut torn, mut lost) = (0, 0);
    for r in &mut readers {
        let out = finish_cat(r);
        let c = check_stream(&out, 0, &expect, Accounting::Exact);
        assert_eq!(c.end.cursor, M);
        torn += c.torn;
        lost += c.end.lost;
    }
    eprintln!("lapped readers: {lost} messages lost, {torn} of them torn");
    // Hashing 1 MiB takes the readers longer than the writer takes to fill one.
    assert!(
        lost > 0,
        "the writer never lapped a reader: nothing was exercised"
    );
    w.send("exit");
    w.wait_success();
}

// ---------------------------------------------------------------------------------------------
// Output reaches the consumer
// ---------------------------------------------------------------------------------------------

/// `ring cat` that has printed a message and is now waiting for the next one has flushed that
/// line: a consumer of a slow stream (a 1 Hz sensor) sees each message when it arrives.
fn cat_flushes_each_line_before_it_waits() {
    let dir = shm_dir();
    let path = ring_path(&dir, "slow");
    let cfg = WriterCfg {
        slots: 8,
        slot_size: 256,
        max_len: 256,
    };
    let mut w = spawn_writer("writer", &path, cfg);
    let epoch = w.expect("ready").u64("epoch");
    w.send("publish 1 0");
    w.expect("published");
    let mut r = spawn_cat("reader", &path, &["--from", "oldest"]);
    // Parked at head 1: message 0 has been read and written out, and the reader now blocks.
    r.wait_parked(&path, 1);
    // The line is already written, or never will be until more output piles up; the bound
    // only has to cover the pipe and this process's reader thread.
    let line = r.next_line_within(Duration::from_secs(10));
    let Some(line) = line else {
        panic!(
            "ring cat has read message 0 and is blocked waiting for the next one, but its \
             JSON line has not reached stdout (the output is block-buffered until exit)"
        );
    };
    let out = CatOut::parse("reader", &[line]);
    assert_eq!(out.seqs(), vec![0]);
    assert_eq!(out.msgs()[0].fnv1a64, payload_hash(0, epoch, 256));
    drop(r);
    w.send("exit");
    w.wait_success();
}

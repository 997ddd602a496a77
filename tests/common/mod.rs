//! The test-support library every integration test shares (`mod common;`):
//!
//! - [`tools`]: host tools a test needs, and the one rule when one is missing (skip outside CI,
//!   fail in CI);
//! - [`wait`]: waiting for a condition, bounded by a watchdog;
//! - [`prom`]: reading the Prometheus text format;
//! - [`http`]: a free loopback port and a bounded GET of the agent's endpoint;
//! - [`power`]: the `/sys/class/power_supply` fixture;
//! - [`agent`]: a real `edgeplex run` agent and `edgeplex failover` controller process;
//! - [`rbac`]: the permissions the manifests grant, and those a recorded run of requests used;
//! - here: child processes under a watchdog, the deterministic payload pattern test writers
//!   publish, parsing of `ring cat --meta` output, and `/proc` probes that tell when a reader
//!   process is parked on a ring's futex.
//!
//! Nothing here measures time: every wait is for an observable event (a line on a child's
//! stdout, a child blocked in `FUTEX_WAIT`, a child's exit), and the only clocks are watchdogs
//! that turn a hang into a test failure.

#![allow(dead_code)] // each test crate uses a different subset

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use edgeplex::ring::layout::off;
use edgeplex::ring::Meta;

pub mod agent;
pub mod http;
pub mod kubelet;
pub mod kustomize;
pub mod power;
pub mod prom;
pub mod rbac;
pub mod tools;
pub mod wait;

/// How long any child process may live before its watchdog kills it and the test fails; also
/// the limit of [`wait_until`].
#[allow(unused_imports)] // each test crate uses a different subset
pub use wait::{wait_until, WATCHDOG};

/// Marker that starts every protocol line a writer process prints (so that nothing else on its
/// stdout, a panic message say, is taken for one).
pub const MARK: &str = "EDGEPLEX>";

/// A fresh directory on tmpfs, removed when dropped.
pub fn shm_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("edgeplex-test-")
        .tempdir_in("/dev/shm")
        .expect("create a tempdir in /dev/shm")
}

/// `edgeplex` (the real binary of this package) with a clean logging environment.
pub fn edgeplex() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgeplex"));
    c.env_remove("EDGEPLEX_LOG")
        .env_remove("EDGEPLEX_LOG_FORMAT")
        .env_remove("EDGEPLEX_RING_DIR")
        .env_remove("RUST_LOG");
    c
}

// ---------------------------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------------------------

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn seed(seq: u64, epoch: u64) -> u64 {
    splitmix64(seq ^ epoch.rotate_left(40) ^ 0x6564_6765_706c_6578)
}

/// Length of message `seq` from a writer of epoch `epoch` whose payloads are at most `max_len`:
/// between `max_len / 2` and `max_len`, varying from message to message.
pub fn payload_len(seq: u64, epoch: u64, max_len: usize) -> usize {
    let half = max_len / 2;
    (half + (seed(seq, epoch) % (max_len - half + 1) as u64) as usize).max(1)
}

/// Fill `buf` with the payload bytes of message `seq` of epoch `epoch`.
pub fn fill_payload(buf: &mut [u8], seq: u64, epoch: u64) {
    let s = seed(seq, epoch);
    let mut chunks = buf.chunks_exact_mut(8);
    let mut i = 0u64;
    for c in &mut chunks {
        c.copy_from_slice(&splitmix64(s ^ i).to_le_bytes());
        i += 1;
    }
    let rest = chunks.into_remainder();
    let last = splitmix64(s ^ i).to_le_bytes();
    let n = rest.len();
    rest.copy_from_slice(&last[..n]);
}

/// The complete payload of message `seq` of epoch `epoch`.
pub fn payload(seq: u64, epoch: u64, max_len: usize) -> Vec<u8> {
    let mut v = vec![0u8; payload_len(seq, epoch, max_len)];
    fill_payload(&mut v, seq, epoch);
    v
}

/// The `fnv1a64` field `ring cat --hash` prints for that payload (memoised: several readers
/// check the same messages).
pub fn payload_hash(seq: u64, epoch: u64, max_len: usize) -> String {
    type Memo = Mutex<Option<HashMap<(u64, u64, usize), String>>>;
    static MEMO: Memo = Mutex::new(None);
    if let Some(h) = MEMO
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .get(&(seq, epoch, max_len))
    {
        return h.clone();
    }
    let h = format!(
        "{:016x}",
        edgeplex::ring::fnv1a64(&payload(seq, epoch, max_len))
    );
    MEMO.lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert((seq, epoch, max_len), h.clone());
    h
}

/// The descriptor metadata a test writer stores with message `seq` of epoch `epoch`.
pub fn meta_for(seq: u64, epoch: u64) -> Meta {
    Meta {
        capture_ns: seq.wrapping_mul(1_000).wrapping_add(epoch),
        device_seq: seq.wrapping_mul(3).wrapping_add(epoch << 32),
        flags: (seq % 3) as u32,
    }
}

/// The byte a killed writer leaves in the first half of the slot it was filling.
pub const POISON: u8 = 0xa5;

// ---------------------------------------------------------------------------------------------
// Child processes with watchdogs
// ---------------------------------------------------------------------------------------------

/// A child process whose stdout lines are collected by a thread, whose stderr is captured,
/// and which a watchdog kills after [`WATCHDOG`]. Dropping it kills it.
pub struct Proc {
    pub name: String,
    pid: u32,
    child: Arc<Mutex<Child>>,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every stdout line received so far, in order.
    pub seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    stdout_thread: Option<JoinHandle<()>>,
    stderr_thread: Option<JoinHandle<()>>,
    fired: Arc<AtomicBool>,
    stop_watchdog: Option<Sender<()>>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawn `cmd` with piped stdio under a watchdog.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        let stdout_thread = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_sink = Arc::clone(&stderr);
        let stderr_thread = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match stderr_pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => stderr_sink
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        let child = Arc::new(Mutex::new(child));
        let fired = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        {
            let child = Arc::clone(&child);
            let fired = Arc::clone(&fired);
            let name = name.to_owned();
            thread::spawn(move || {
                if let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(WATCHDOG) {
                    let mut c = child.lock().unwrap();
                    if matches!(c.try_wait(), Ok(None)) {
                        eprintln!("watchdog: killing {name} (pid {pid}) after {WATCHDOG:?}");
                        fired.store(true, Ordering::SeqCst);
                        let _ = c.kill();
                    }
                }
            });
        }
        Proc {
            name: name.to_owned(),
            pid,
            child,
            stdin,
            lines,
            seen: Vec::new(),
            stderr,
            stdout_thread: Some(stdout_thread),
            stderr_thread: Some(stderr_thread),
            fired,
            stop_watchdog: Some(stop_tx),
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What the child wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn context(&self) -> String {
        format!(
            "{} (pid {}){}\n--- stdout so far ---\n{}\n--- stderr ---\n{}",
            self.name,
            self.pid,
            if self.fired.load(Ordering::SeqCst) {
                " was KILLED BY THE WATCHDOG"
            } else {
                ""
            },
            self.seen.join("\n"),
            self.stderr()
        )
    }

    /// Send one line on the child's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        if let Err(e) = writeln!(stdin, "{line}").and_then(|_| stdin.flush()) {
            panic!("write {line:?} to {}: {e}\n{}", self.name, self.context());
        }
    }

    /// Close the child's stdin.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Wait for the next stdout line that carries [`MARK`] followed by `word`; returns its
    /// `key=value` fields. Panics if the child exits (or the watchdog kills it) first.
    pub fn expect(&mut self, word: &str) -> Fields {
        loop {
            match self.lines.recv() {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(at) = line.find(MARK) {
                        let rest = line[at + MARK.len()..].trim();
                        let mut tokens = rest.split_whitespace();
                        if tokens.next() == Some(word) {
                            return Fields::parse(tokens);
                        }
                        if rest.starts_with("error") {
                            panic!("{} reported {rest}\n{}", self.name, self.context());
                        }
                    }
                }
                Err(_) => {
                    let _ = self.try_status();
                    panic!(
                        "{} ended before printing {word:?} (status {:?})\n{}",
                        self.name,
                        self.status,
                        self.context()
                    );
                }
            }
        }
    }

    /// Wait up to `limit` for the next stdout line, if any. Used only to bound a wait for
    /// output that must already be on its way; `None` means none came.
    pub fn next_line_within(&mut self, limit: Duration) -> Option<String> {
        match self.lines.recv_timeout(limit) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(_) => None,
        }
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.lock().unwrap().try_wait().expect("try_wait");
        }
        self.status
    }

    /// Whether the child has exited (it is reaped if so).
    pub fn exited(&mut self) -> bool {
        self.try_status().is_some()
    }

    /// Wait for the child to exit (bounded by the watchdog) and collect the rest of its output.
    pub fn wait(&mut self) -> ExitStatus {
        let status = loop {
            if let Some(s) = self.try_status() {
                break s;
            }
            thread::sleep(Duration::from_millis(2));
        };
        if let Some(t) = self.stdout_thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        if let Some(stop) = self.stop_watchdog.take() {
            let _ = stop.send(());
        }
        assert!(
            !self.fired.load(Ordering::SeqCst),
            "watchdog fired\n{}",
            self.context()
        );
        status
    }

    /// Wait for the child to exit and require a clean exit (code 0, no signal).
    pub fn wait_success(&mut self) {
        let status = self.wait();
        assert!(
            status.success(),
            "{} exited with {status:?} (signal {:?})\n{}",
            self.name,
            status.signal(),
            self.context()
        );
    }

    /// SIGKILL the child and reap it; returns its status.
    pub fn kill(&mut self) -> ExitStatus {
        self.child.lock().unwrap().kill().expect("kill");
        self.wait()
    }

    /// Send a signal by name (`STOP`, `CONT`, ...) with kill(1). The child is not reaped while
    /// this `Proc` lives, so its pid cannot have been reused.
    pub fn signal(&mut self, sig: &str) {
        assert!(!self.exited(), "{} exited before SIG{sig}", self.name);
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill(1)");
        assert!(st.success(), "kill -{sig} {} failed", self.pid);
    }

    /// The scheduler state letter of the child (`R`, `S`, `T`, ...) from `/proc/PID/stat`.
    pub fn sched_state(&self) -> char {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        stat.rsplit(')')
            .next()
            .and_then(|s| s.trim_start().chars().next())
            .unwrap_or('?')
    }

    /// Wait until the child is parked in a shared `FUTEX_WAIT` on the futex word of the ring
    /// currently at `path`, expecting the value `head as u32`. For a reader, that means it has
    /// consumed every message below `head` of that file and is idle; for the test it also
    /// proves the futex is shared (no `FUTEX_PRIVATE_FLAG`). Panics if the child exits first.
    pub fn wait_parked(&mut self, path: &Path, head: u64) {
        if !self.wait_parked_or_exit(path, head) {
            self.wait();
            panic!(
                "{} exited instead of parking on {} at head {head}\n{}",
                self.name,
                path.display(),
                self.context()
            );
        }
    }

    /// Like [`Proc::wait_parked`], but a child that exits instead (a reader that has its
    /// `--count`) is fine: returns whether it parked.
    pub fn wait_parked_or_exit(&mut self, path: &Path, head: u64) -> bool {
        loop {
            if parked_on(self.pid, path, head as u32) {
                return true;
            }
            if self.exited() {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(stop) = self.stop_watchdog.take() {
            let _ = stop.send(());
        }
    }
}

/// Whether process `pid` is blocked in a shared `FUTEX_WAIT` (or `FUTEX_WAIT_BITSET`) on the
/// futex word of the file now at `path`, with `expected` as the value to wait on.
///
/// # Panics
/// If it waits on that word with `FUTEX_PRIVATE_FLAG`: the writer's wake-ups, from another
/// process, would never reach it.
pub fn parked_on(pid: u32, path: &Path, expected: u32) -> bool {
    let Ok(sc) = std::fs::read_to_string(format!("/proc/{pid}/syscall")) else {
        return false;
    };
    let mut fields = sc.split_whitespace();
    let Some(Ok(nr)) = fields.next().map(str::parse::<i64>) else {
        return false; // "running"
    };
    if nr != libc::SYS_futex {
        return false;
    }
    let args: Vec<u64> = fields
        .take(3)
        .filter_map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
        .collect();
    let [addr, op, val] = args[..] else {
        return false;
    };
    if !is_ring_futex(pid, path, addr) {
        return false;
    }
    let op = op as i32;
    assert!(
        op & libc::FUTEX_PRIVATE_FLAG == 0,
        "pid {pid} waits on the futex of {} with FUTEX_PRIVATE_FLAG (op {op:#x}): \
         cross-process wake-ups can never reach it",
        path.display()
    );
    let cmd = op & libc::FUTEX_CMD_MASK;
    (cmd == libc::FUTEX_WAIT || cmd == libc::FUTEX_WAIT_BITSET) && val as u32 == expected
}

/// Whether `addr` in process `pid` is the futex word of the file now at `path`.
fn is_ring_futex(pid: u32, path: &Path, addr: u64) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return false;
    };
    maps.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (Some(range), Some(_perms), Some(offset), Some(dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return false;
        };
        let Some((lo, hi)) = range.split_once('-') else {
            return false;
        };
        let (Ok(lo), Ok(hi), Ok(offset), Ok(inode)) = (
            u64::from_str_radix(lo, 16),
            u64::from_str_radix(hi, 16),
            u64::from_str_radix(offset, 16),
            inode.parse::<u64>(),
        ) else {
            return false;
        };
        let same_dev = dev
            .split_once(':')
            .and_then(|(ma, mi)| {
                Some((
                    u64::from_str_radix(ma, 16).ok()?,
                    u64::from_str_radix(mi, 16).ok()?,
                ))
            })
            .is_some_and(|(ma, mi)| libc::makedev(ma as u32, mi as u32) == meta.dev());
        inode == meta.ino()
            && same_dev
            && (lo..hi).contains(&addr)
            && addr - lo + offset == off::FUTEX as u64
    })
}

// ---------------------------------------------------------------------------------------------
// `ring cat --meta --hash`
// ---------------------------------------------------------------------------------------------

/// One message line of `ring cat --meta --hash`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct MetaLine {
    pub seq: u64,
    pub epoch: u64,
    pub len: usize,
    pub capture_ns: u64,
    pub device_seq: u64,
    pub publish_ns: u64,
    pub flags: u32,
    pub lost_before: u64,
    pub intact: bool,
    pub fnv1a64: String,
}

/// The final `{"event":"end",...}` line.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct End {
    pub delivered: u64,
    pub lost: u64,
    pub cursor: u64,
    pub reopened: u64,
}

/// One line of `ring cat --meta` output.
#[derive(Debug, Clone)]
pub enum CatLine {
    Msg(MetaLine),
    Reopened(serde_json::Value),
    End(End),
}

/// The parsed output of one `ring cat --meta --hash` run.
#[derive(Debug, Clone)]
pub struct CatOut {
    pub name: String,
    pub lines: Vec<CatLine>,
}

impl CatOut {
    pub fn parse(name: &str, raw: &[String]) -> CatOut {
        let lines = raw
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{name}: bad JSON line {l:?}: {e}"));
                match v.get("event").and_then(|e| e.as_str()) {
                    None => CatLine::Msg(
                        serde_json::from_value(v)
                            .unwrap_or_else(|e| panic!("{name}: bad message line {l:?}: {e}")),
                    ),
                    Some("reopened") => CatLine::Reopened(v),
                    Some("end") => CatLine::End(
                        serde_json::from_value(v)
                            .unwrap_or_else(|e| panic!("{name}: bad end line {l:?}: {e}")),
                    ),
                    Some(other) => panic!("{name}: unknown event {other:?} in {l:?}"),
                }
            })
            .collect();
        CatOut {
            name: name.to_owned(),
            lines,
        }
    }

    pub fn msgs(&self) -> Vec<&MetaLine> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                CatLine::Msg(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    pub fn seqs(&self) -> Vec<u64> {
        self.msgs().iter().map(|m| m.seq).collect()
    }

    pub fn end(&self) -> End {
        match self.lines.last() {
            Some(CatLine::End(e)) => *e,
            other => panic!("{}: last line is not the end event: {other:?}", self.name),
        }
    }

    pub fn reopen_events(&self) -> usize {
        self.lines
            .iter()
            .filter(|l| matches!(l, CatLine::Reopened(_)))
            .count()
    }
}

/// What a test knows about the writers of a stream: each epoch's payload size limit.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Payload `max_len` of the writer of each epoch.
    pub max_len_by_epoch: HashMap<u64, usize>,
}

impl Expect {
    pub fn new(pairs: &[(u64, usize)]) -> Expect {
        Expect {
            max_len_by_epoch: pairs.iter().copied().collect(),
        }
    }
}

/// Summary of a checked reader stream.
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    pub end: End,
    /// Message lines, intact or not.
    pub lines: u64,
    /// Message lines with `intact: false`.
    pub torn: u64,
    /// Sum of `lost_before` over the message lines.
    pub lost_in_lines: u64,
    /// Messages skipped after the last message line (in `end.lost`, in no line).
    pub lost_after_last: u64,
}

/// How strictly [`check_stream`] holds the end totals to `delivered + lost == cursor - start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accounting {
    /// Always: a torn message counts once, as lost (`torn_messages_are_counted_once` pins
    /// it deterministically; free-running tests hold every stream to it too).
    Exact,
}

/// Check one reader's stream against the writers' deterministic payloads and the accounting
/// rules, for a reader that started at message `start`:
///
/// - message numbers increase, and each jump is exactly `lost_before + 1`;
/// - every intact message has exactly the payload (length and hash) and descriptor metadata its
///   writer published for that number and epoch, and an epoch some test writer had;
/// - the end line's cursor is past the last message line; `end.lost` covers everything the
///   lines say was skipped (plus what was skipped after the last line), `end.delivered` covers
///   every intact line and at most every line, and `delivered + lost == cursor - start`.
pub fn check_stream(out: &CatOut, start: u64, expect: &Expect, acct: Accounting) -> Checked {
    let name = &out.name;
    let end = out.end();
    let mut next = start;
    let (mut lines, mut torn, mut lost_lines) = (0u64, 0u64, 0u64);
    for (i, line) in out.lines.iter().enumerate() {
        let m = match line {
            CatLine::Msg(m) => m,
            CatLine::End(_) => {
                assert_eq!(
                    i + 1,
                    out.lines.len(),
                    "{name}: end event before the last line"
                );
                continue;
            }
            CatLine::Reopened(_) => continue,
        };
        assert_eq!(
            m.seq,
            next.wrapping_add(m.lost_before),
            "{name}: line {i}: seq {} follows cursor {next} with lost_before {} (a jump must be \
             exactly lost_before + 1)",
            m.seq,
            m.lost_before
        );
        next = m.seq + 1;
        lines += 1;
        lost_lines += m.lost_before;
        if !m.intact {
            torn += 1;
            continue;
        }
        let max_len = *expect.max_len_by_epoch.get(&m.epoch).unwrap_or_else(|| {
            panic!(
                "{name}: message {} has epoch {} that no test writer had",
                m.seq, m.epoch
            )
        });
        assert_eq!(
            m.len,
            payload_len(m.seq, m.epoch, max_len),
            "{name}: message {} (epoch {}) is intact but has the wrong length",
            m.seq,
            m.epoch
        );
        assert_eq!(
            m.fnv1a64,
            payload_hash(m.seq, m.epoch, max_len),
            "{name}: message {} (epoch {}) is intact but its payload is not what was published",
            m.seq,
            m.epoch
        );
        let meta = meta_for(m.seq, m.epoch);
        assert_eq!(
            (m.capture_ns, m.device_seq, m.flags),
            (meta.capture_ns, meta.device_seq, meta.flags),
            "{name}: message {} has the wrong descriptor metadata",
            m.seq
        );
    }
    assert!(
        end.cursor >= next,
        "{name}: end.cursor {} is before the last message read ({next})",
        end.cursor
    );
    let lost_after_last = end.cursor - next;
    let span = end.cursor - start;
    assert!(
        end.lost >= lost_lines + lost_after_last,
        "{name}: end.lost {} < {lost_lines} skipped per the lines + {lost_after_last} skipped \
         after the last line",
        end.lost
    );
    assert!(
        (lines - torn..=lines).contains(&end.delivered),
        "{name}: end.delivered {} but {lines} message lines ({torn} torn)",
        end.delivered
    );
    let total = end.delivered + end.lost;
    let ok = match acct {
        Accounting::Exact => total == span,
    };
    assert!(
        ok,
        "{name}: end.delivered {} + end.lost {} = {total}, but the reader went from {start} to \
         cursor {} ({span} messages; {lines} lines, {torn} of them torn, {lost_lines} lost \
         before lines, {lost_after_last} after)",
        end.delivered, end.lost, end.cursor
    );
    Checked {
        end,
        lines,
        torn,
        lost_in_lines: lost_lines,
        lost_after_last,
    }
}

/// Start `edgeplex ring cat PATH --meta --hash ARGS...` under a watchdog.
pub fn spawn_cat(name: &str, path: &Path, args: &[&str]) -> Proc {
    let mut cmd = edgeplex();
    cmd.arg("ring")
        .arg("cat")
        .arg(path)
        .args(["--meta", "--hash"])
        .args(args);
    Proc::spawn(name, cmd)
}

/// Wait for a `ring cat` process to exit cleanly and parse its output.
pub fn finish_cat(p: &mut Proc) -> CatOut {
    p.wait_success();
    CatOut::parse(&p.name, &p.seen)
}

/// A path's inode number.
pub fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").ino()
}

/// `key=value` fields of a writer's protocol line.
#[derive(Debug, Clone, Default)]
pub struct Fields(pub HashMap<String, String>);

impl Fields {
    fn parse<'a>(tokens: impl Iterator<Item = &'a str>) -> Fields {
        Fields(
            tokens
                .filter_map(|t| t.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    pub fn u64(&self, key: &str) -> u64 {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("no {key}= in {:?}", self.0))
            .parse()
            .unwrap_or_else(|e| panic!("{key}= in {:?}: {e}", self.0))
    }
}

/// The hidden subcommand that makes the `ring_processes` test binary a writer process.
pub const WRITER_SUBCOMMAND: &str = "ring-writer";

/// Where a writer process is told what to do.
pub mod env {
    pub const PATH: &str = "EDGEPLEX_TEST_PATH";
    pub const SLOTS: &str = "EDGEPLEX_TEST_SLOTS";
    pub const SLOT_SIZE: &str = "EDGEPLEX_TEST_SLOT_SIZE";
    pub const MAX_LEN: &str = "EDGEPLEX_TEST_MAX_LEN";
}

/// Geometry and payload size of a writer process.
#[derive(Debug, Clone, Copy)]
pub struct WriterCfg {
    pub slots: u32,
    pub slot_size: u64,
    pub max_len: usize,
}

/// Start this test binary as a writer process (its [`WRITER_SUBCOMMAND`]) on `path`.
pub fn spawn_writer(name: &str, path: &Path, cfg: WriterCfg) -> Proc {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.arg(WRITER_SUBCOMMAND)
        .env(env::PATH, path)
        .env(env::SLOTS, cfg.slots.to_string())
        .env(env::SLOT_SIZE, cfg.slot_size.to_string())
        .env(env::MAX_LEN, cfg.max_len.to_string());
    Proc::spawn(name, cmd)
}

/// Path helper: a ring path inside a test directory.
pub fn ring_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(format!("{name}.ring"))
}

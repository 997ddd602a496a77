//! The reader processes of a benchmark configuration: spawn, wait for "ready", stall and resume,
//! collect each one's result line, and never leave one behind.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::shutdown::Shutdown;

/// The line a reader prints once it is attached and waiting.
pub const READY: &str = "ready";

/// What one reader process reports at the end, as one JSON line on stdout.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
pub struct ReaderReport {
    /// Messages handed to the reader intact (torn ones are not counted here).
    pub delivered: u64,
    /// Messages the reader never got intact: lapped by the writer, or torn (ring only). For
    /// the socket baseline, messages that never arrived.
    pub lost: u64,
    /// Messages found torn after use (ring only); included in `lost`.
    pub torn: u64,
    /// Intact messages whose first 8 bytes did not hold their sequence number.
    pub bad_payload: u64,
    /// Sequence number of the last message seen, if any.
    pub last_seq: Option<u64>,
    /// The reader stopped on its idle timeout (or end of stream) before the last message.
    pub incomplete: bool,
    /// Publish-to-reader latency of every intact message after the warm-up, ns.
    pub latencies_ns: Vec<u64>,
}

impl ReaderReport {
    /// Add a later round of the same reader slot.
    pub fn merge(&mut self, other: ReaderReport) {
        self.delivered += other.delivered;
        self.lost += other.lost;
        self.torn += other.torn;
        self.bad_payload += other.bad_payload;
        self.last_seq = other.last_seq;
        self.incomplete |= other.incomplete;
        self.latencies_ns.extend(other.latencies_ns);
    }
}

/// A set of running reader processes, killed on drop if still alive.
#[derive(Debug)]
pub struct ReaderSet {
    children: Vec<Child>,
    lines: Receiver<(usize, Option<String>)>,
    pumps: Vec<JoinHandle<()>>,
}

impl ReaderSet {
    /// Start `n` reader processes: `[wrapper...] current_exe() bench-reader <args_for(i)>`. The
    /// wrapper (such as `chrt -b 0`) must exec its command, so that the child's pid is the
    /// reader's.
    pub fn spawn(
        n: usize,
        wrapper: &[&str],
        args_for: impl Fn(usize) -> Vec<String>,
    ) -> anyhow::Result<ReaderSet> {
        let exe = std::env::current_exe().context("find the edgeplex executable")?;
        let (tx, rx) = mpsc::channel();
        let mut set = ReaderSet {
            children: Vec::with_capacity(n),
            lines: rx,
            pumps: Vec::with_capacity(n),
        };
        for i in 0..n {
            let mut cmd = match wrapper.split_first() {
                Some((program, rest)) => {
                    let mut c = Command::new(program);
                    c.args(rest).arg(&exe);
                    c
                }
                None => Command::new(&exe),
            };
            let mut child = cmd
                .arg("bench-reader")
                .args(args_for(i))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("spawn reader process {} ({})", i, exe.display()))?;
            let out = child.stdout.take();
            set.children.push(child);
            let Some(out) = out else {
                bail!("reader process {i} has no stdout pipe");
            };
            let tx = tx.clone();
            set.pumps.push(thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    match line {
                        Ok(l) => {
                            if tx.send((i, Some(l))).is_err() {
                                return;
                            }
                        }
                        Err(_) => break,
                    }
                }
                let _ = tx.send((i, None));
            }));
        }
        Ok(set)
    }

    /// Process ids of the readers.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Wait until every reader has printed "ready".
    pub fn wait_ready(&mut self, timeout: Duration, shutdown: &Shutdown) -> anyhow::Result<()> {
        let n = self.children.len();
        let mut ready = vec![false; n];
        let deadline = Instant::now() + timeout;
        while ready.iter().any(|r| !r) {
            let (i, line) = self.recv(deadline, shutdown, "to report ready")?;
            match line {
                Some(l) if l.trim() == READY => ready[i] = true,
                Some(l) => bail!("reader process {i} said {l:?} before \"ready\""),
                None => bail!(
                    "reader process {i} exited before it was ready (its error is on stderr above)"
                ),
            }
        }
        Ok(())
    }

    /// Give the readers `settle` to take the last message, ask each for its result line,
    /// collect them all, then let the readers exit and reap them.
    pub fn collect(
        &mut self,
        settle: Duration,
        timeout: Duration,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Vec<ReaderReport>> {
        if !shutdown.sleep_until(Instant::now() + settle) {
            bail!("interrupted");
        }
        for (i, child) in self.children.iter_mut().enumerate() {
            if let Some(stdin) = child.stdin.as_mut() {
                writeln!(stdin, "{REPORT}")
                    .and_then(|()| stdin.flush())
                    .with_context(|| format!("ask reader process {i} for its results"))?;
            }
        }
        let n = self.children.len();
        let mut reports: Vec<Option<ReaderReport>> = vec![None; n];
        let deadline = Instant::now() + timeout;
        while reports.iter().any(Option::is_none) {
            let (i, line) = self.recv(deadline, shutdown, "to report results")?;
            match line {
                Some(l) => {
                    let r: ReaderReport = serde_json::from_str(&l)
                        .with_context(|| format!("parse result line of reader process {i}"))?;
                    reports[i] = Some(r);
                }
                None if reports[i].is_none() => bail!(
                    "reader process {i} exited without reporting results (its error is on \
                     stderr above)"
                ),
                None => {}
            }
        }
        // Only now let the readers exit: a reader tearing down its process (and its mapping of
        // the ring) must not delay the others' last message.
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        self.reap(Duration::from_secs(5))?;
        Ok(reports.into_iter().flatten().collect())
    }

    fn recv(
        &self,
        deadline: Instant,
        shutdown: &Shutdown,
        what: &str,
    ) -> anyhow::Result<(usize, Option<String>)> {
        loop {
            if shutdown.requested() {
                bail!("interrupted");
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("timed out waiting for reader processes {what}");
            }
            let slice = (deadline - now).min(Duration::from_millis(100));
            match self.lines.recv_timeout(slice) {
                Ok(msg) => return Ok(msg),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("all reader processes closed their output {what}")
                }
            }
        }
    }

    /// Wait for every reader to exit, killing any still running after `grace`.
    fn reap(&mut self, grace: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + grace;
        for (i, child) in self.children.iter_mut().enumerate() {
            loop {
                match child.try_wait().context("wait for a reader process")? {
                    Some(status) if status.success() => break,
                    Some(status) => bail!("reader process {i} failed: {status}"),
                    None if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        bail!("reader process {i} did not exit after reporting; killed it");
                    }
                    None => thread::sleep(Duration::from_millis(2)),
                }
            }
        }
        for pump in self.pumps.drain(..) {
            let _ = pump.join();
        }
        Ok(())
    }
}

impl Drop for ReaderSet {
    fn drop(&mut self) {
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                // SIGKILL also ends a stopped process.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The line the benchmark sends a reader when it may print its results.
pub const REPORT: &str = "report";

/// In a reader process: the benchmark's instructions on stdin. The reader prints its results
/// only when asked (once the writer is done and every reader has had time to take the last
/// message), and exits only when stdin closes (once every reader has reported), so that no
/// reader's printing or exit (unmapping the ring) delays another reader's last message.
#[derive(Debug)]
pub struct Control {
    lines: Receiver<Option<String>>,
}

impl Control {
    /// Start listening on stdin (a thread that blocks on it and does nothing else).
    pub fn listen() -> Control {
        let (tx, rx) = mpsc::channel();
        // Detached: when a wait below times out the process exits with the thread blocked.
        thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                match line {
                    Ok(l) => {
                        if tx.send(Some(l)).is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = tx.send(None);
        });
        Control { lines: rx }
    }

    /// Wait (at most `limit`) to be asked, print `report` as one JSON line, then wait (at most
    /// `limit`) for stdin to close.
    pub fn report(self, report: &ReaderReport, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let wait = |deadline: Instant, until: fn(&Option<String>) -> bool| loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if until(&l) => return,
                Ok(None) | Err(_) => return,
                Ok(Some(_)) => {}
            }
        };
        wait(deadline, |l| l.as_deref().map(str::trim) == Some(REPORT));
        super::say(&serde_json::to_string(report).context("serialise the reader's results")?)?;
        wait(Instant::now() + limit, Option::is_none);
        Ok(())
    }
}

/// Send `signal` (e.g. `STOP`, `CONT`) to `pid` with the `kill` command: only `src/ring` may call
/// into libc directly, so there is no `libc::kill` here.
pub fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .with_context(|| format!("run `kill -{signal} {pid}`"))?;
    if !status.success() {
        bail!("`kill -{signal} {pid}` failed: {status}");
    }
    Ok(())
}

/// Wait until process `pid` is in the stopped state (`T` in `/proc/<pid>/stat`).
pub fn wait_stopped(pid: u32, timeout: Duration) -> anyhow::Result<()> {
    let path = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + timeout;
    loop {
        let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        // The state follows the parenthesised command name, which may itself hold spaces.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if state == Some("T") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("reader process {pid} did not stop (state {state:?})");
        }
        thread::sleep(Duration::from_millis(1));
    }
}

//! Host side of the VM test harness (tests/vm/README.md): build the cached kernel + base initramfs
//! once per test process (`build.sh`), boot one QEMU guest per scenario (`run.sh`), talk to the
//! guest's second UART while it runs, and collect the console.
//!
//! Use it from an integration test file with `mod vm;`:
//!
//! ```ignore
//! let Some(h) = vm::harness() else { return }; // tooling missing outside CI: skip
//! let out = h.scenario("test -c /dev/video0").file(EDGEPLEX).run();
//! out.assert_passed();
//! ```
//!
//! Tooling policy: when qemu, busybox-static, cpio or kmod is missing, or the kernel cannot be
//! fetched, [`harness`] fails in CI and otherwise prints why and returns `None`, so the test can
//! return early: `common::tools::missing`, the rule every test follows.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The guest prints this line (from /init) when the scenario body exited 0.
pub const PASS_MARKER: &str = "EDGEPLEX-VM-RESULT: PASS";

/// Default host-side limit for one VM run (boot + body); the guest kills the body 30 s earlier
/// so it can still print a FAIL marker.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// `build.sh` gets this long (first, uncached build: ~15 s here, mostly the 70 MB download).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

const VM_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vm");

/// Where kernel, base initramfs and per-run directories live: `$EDGEPLEX_VM_CACHE`, else
/// `target/tmp/vm` (Cargo's `CARGO_TARGET_TMPDIR`). Never inside the git tree.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("EDGEPLEX_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm"))
}

/// The built VM pieces; get it with [`harness`].
#[derive(Debug)]
pub struct Harness {
    cache: PathBuf,
    /// How long `build.sh` took in this process (≈2 s when cached).
    pub build_time: Duration,
}

/// Build (or reuse) the kernel and base initramfs, once per test process. `None` means: the
/// tooling is missing and we are not in CI (the reason was printed); in CI that panics instead.
pub fn harness() -> Option<&'static Harness> {
    static HARNESS: OnceLock<Option<Harness>> = OnceLock::new();
    HARNESS
        .get_or_init(|| {
            let cache = cache_dir();
            fs::create_dir_all(&cache).expect("create VM cache dir");
            remove_stale_runs(&cache.join("runs"));
            let started = Instant::now();
            let mut cmd = Command::new(Path::new(VM_DIR).join("build.sh"));
            cmd.arg(&cache);
            let (status, log) = run_logged(cmd, &cache.join("build.log"), BUILD_TIMEOUT);
            let build_time = started.elapsed();
            match status.and_then(|s| s.code()) {
                Some(0) => {
                    eprintln!("vm: build.sh ok in {build_time:.1?}");
                    Some(Harness { cache, build_time })
                }
                Some(2) => {
                    crate::common::tools::missing(&format!(
                        "the VM tooling (tests/vm/README.md):\n{}",
                        log.trim_end()
                    ));
                    None
                }
                other => panic!(
                    "vm: tests/vm/build.sh {} failed ({}):\n{log}",
                    cache.display(),
                    other.map_or_else(|| "killed or timed out".to_owned(), |c| format!("exit {c}"))
                ),
            }
        })
        .as_ref()
}

impl Harness {
    /// Start describing a guest run whose test body is `body` (a `sh -e` script).
    pub fn scenario(&self, body: &str) -> Scenario<'_> {
        Scenario {
            harness: self,
            body: body.to_owned(),
            files: Vec::new(),
            env: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Boot a guest that runs `body` with `files` in its /bin, wait for it, return the output.
    pub fn run_vm(&self, body: &str, files: &[&Path]) -> VmOutput {
        let mut s = self.scenario(body);
        for f in files {
            s = s.file(f);
        }
        s.run()
    }

    /// The cache directory (kernel, base initramfs, `runs/`).
    pub fn cache(&self) -> &Path {
        &self.cache
    }
}

/// One guest run being described: body, files, knobs. See [`Harness::scenario`].
#[derive(Debug)]
pub struct Scenario<'h> {
    harness: &'h Harness,
    body: String,
    files: Vec<(PathBuf, Option<String>)>,
    env: Vec<(String, String)>,
    timeout: Duration,
}

impl Scenario<'_> {
    /// Copy a host file to /bin/<its name> in the guest (ELF files bring their shared libraries).
    pub fn file(mut self, host: impl AsRef<Path>) -> Self {
        self.files.push((host.as_ref().to_owned(), None));
        self
    }

    /// Copy a host file to an absolute path in the guest.
    pub fn file_at(mut self, host: impl AsRef<Path>, guest: &str) -> Self {
        self.files
            .push((host.as_ref().to_owned(), Some(guest.to_owned())));
        self
    }

    /// Set a run.sh knob, e.g. `EDGEPLEX_VM_VIVID` = `n_devs=2,node_types=0x1,0x1` or
    /// `EDGEPLEX_VM_APPEND` (see tests/vm/run.sh).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Serve QEMU's QMP monitor (`RunningVm::qmp`) and declare the chardev `hs1c` on
    /// `RUN/hs1.sock` for a hotplugged device (`RunningVm::socket("hs1.sock")`).
    pub fn qmp(self) -> Self {
        self.env("EDGEPLEX_VM_QMP", "1")
    }

    /// Host-side hard limit for this VM (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Boot the guest and return while it runs (to talk to its UART); then [`RunningVm::wait`].
    pub fn start(self) -> RunningVm {
        static RUN_ID: AtomicU32 = AtomicU32::new(0);
        let cache = &self.harness.cache;
        let run_dir = cache.join("runs").join(format!(
            "{}-{}",
            std::process::id(),
            RUN_ID.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&run_dir);
        fs::create_dir_all(&run_dir).expect("create VM run dir");
        let body_path = run_dir.join("test.sh");
        fs::write(&body_path, &self.body).expect("write guest body");

        let mut cmd = Command::new(Path::new(VM_DIR).join("run.sh"));
        cmd.arg(cache).arg(&body_path);
        for (host, guest) in &self.files {
            match guest {
                None => cmd.arg(host),
                Some(g) => cmd.arg(format!("{}={g}", host.display())),
            };
        }
        cmd.env("EDGEPLEX_VM_RUN_DIR", &run_dir).env(
            "EDGEPLEX_VM_TIMEOUT",
            self.timeout.as_secs().max(10).to_string(),
        );
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let log = fs::File::create(run_dir.join("run.log")).expect("create run.log");
        // The live console goes to run.sh's stdout: drop it, console.log has it. Own process
        // group, so a watchdog kill also reaches qemu (run.sh keeps qemu in its group).
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        let child = cmd.spawn().expect("spawn tests/vm/run.sh");
        RunningVm {
            child: Some(child),
            run_dir,
            started: Instant::now(),
            // run.sh's own timeout fires first; this only catches a wedged run.sh
            deadline: Instant::now() + self.timeout + Duration::from_secs(60),
        }
    }

    /// Boot the guest, wait for it, return its output.
    pub fn run(self) -> VmOutput {
        self.start().wait()
    }
}

/// A guest that is booting or running. Dropping it kills the VM.
#[derive(Debug)]
pub struct RunningVm {
    child: Option<Child>,
    run_dir: PathBuf,
    started: Instant,
    deadline: Instant,
}

impl RunningVm {
    /// Connect to the guest's second UART (/dev/ttyS1 in the guest). qemu listens on
    /// RUN/uart.sock from its start, before the guest boots; bytes sent before the guest opens
    /// /dev/ttyS1 may be lost, so scenarios should handshake (the guest announces itself).
    pub fn uart(&mut self) -> Uart {
        let sock = self.run_dir.join("uart.sock");
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            match UnixStream::connect(&sock) {
                Ok(stream) => {
                    return Uart {
                        stream,
                        buf: Vec::new(),
                    }
                }
                Err(e) => {
                    if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                        panic!(
                            "vm: run.sh exited ({status}) before the UART socket was up:\n{}",
                            fs::read_to_string(self.run_dir.join("run.log")).unwrap_or_default()
                        );
                    }
                    assert!(Instant::now() < until, "vm: no UART socket {sock:?}: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Connect to a Unix socket qemu listens on in the run directory (`uart.sock`, and with
    /// [`Scenario::qmp`] `qmp.sock` and `hs1.sock`), retrying while qemu starts (bounded).
    pub fn socket(&mut self, name: &str) -> UnixStream {
        let sock = self.run_dir.join(name);
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            match UnixStream::connect(&sock) {
                Ok(s) => return s,
                Err(e) => {
                    if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                        panic!(
                            "vm: run.sh exited ({status}) before {name} was up:\n{}",
                            fs::read_to_string(self.run_dir.join("run.log")).unwrap_or_default()
                        );
                    }
                    assert!(Instant::now() < until, "vm: no socket {sock:?}: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// QEMU's QMP monitor, capabilities negotiated (needs [`Scenario::qmp`]).
    pub fn qmp(&mut self) -> Qmp {
        let stream = self.socket("qmp.sock");
        let mut q = Qmp {
            lines: Uart {
                stream,
                buf: Vec::new(),
            },
        };
        let greeting = q.read_message();
        assert!(
            greeting.get("QMP").is_some(),
            "vm: not a QMP greeting: {greeting}"
        );
        q.execute("qmp_capabilities", serde_json::json!({}))
            .expect("qmp_capabilities");
        q
    }

    /// Wait until the guest console has a line satisfying `pred` (the console so far is read
    /// again on each poll), and return it; panic after `timeout` or when the VM ends first.
    pub fn wait_console(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + timeout;
        loop {
            let console = fs::read(self.run_dir.join("console.log"))
                .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
                .unwrap_or_default();
            if let Some(l) = console.lines().find(|l| pred(l)) {
                return l.to_owned();
            }
            let ended = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok()?)
                .is_some();
            assert!(
                !ended && Instant::now() < until,
                "vm: no matching console line within {timeout:?} (VM ended: {ended}); last lines:\n{}",
                console.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for the VM to power off (bounded by the watchdog) and collect its output. The run
    /// directory is removed if the guest passed and kept (for its console.log) otherwise.
    pub fn wait(mut self) -> VmOutput {
        let mut child = self.child.take().expect("not waited yet");
        let status = wait_deadline(&mut child, self.deadline);
        let elapsed = self.started.elapsed();
        let console = fs::read(self.run_dir.join("console.log"))
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default();
        let log = fs::read_to_string(self.run_dir.join("run.log")).unwrap_or_default();
        let passed = status.is_some_and(|s| s.success()) && console.contains(PASS_MARKER);
        if passed {
            let _ = fs::remove_dir_all(&self.run_dir);
        }
        VmOutput {
            passed,
            status,
            console,
            log,
            elapsed,
            run_dir: self.run_dir.clone(),
        }
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            kill_group(child);
        }
    }
}

/// What one guest run left behind.
#[derive(Debug)]
pub struct VmOutput {
    /// run.sh exited 0 and the console has the PASS marker line.
    pub passed: bool,
    /// run.sh's exit status (`None`: the host watchdog killed it).
    pub status: Option<ExitStatus>,
    /// The guest console (kernel log, /init and body output), `\r` removed.
    pub console: String,
    /// run.sh's own messages (and on failure the console tail).
    pub log: String,
    /// Wall time from start to power-off.
    pub elapsed: Duration,
    /// Kept on failure: initrd.cpio, console.log, run.log, test.sh.
    pub run_dir: PathBuf,
}

impl VmOutput {
    /// Panic with the console tail unless the guest passed.
    pub fn assert_passed(&self) {
        assert!(
            self.passed,
            "VM scenario failed (run.sh status {:?}, {:.1?}); run dir kept: {}\n--- run.sh ---\n{}\
             --- last 80 console lines ---\n{}",
            self.status,
            self.elapsed,
            self.run_dir.display(),
            self.log,
            self.console_tail(80)
        );
    }

    /// The last `n` console lines.
    pub fn console_tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Console lines that start with `prefix`, with the prefix removed (scenario bodies print
    /// e.g. `PROBE: key=value` lines for the host to check).
    pub fn lines_with<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.console
            .lines()
            .filter_map(move |l| l.strip_prefix(prefix))
    }

    /// Guest seconds since boot when /init started the body (from its `running /test.sh` line).
    pub fn boot_secs(&self) -> Option<f64> {
        self.console
            .lines()
            .find(|l| l.starts_with("EDGEPLEX-VM: running /test.sh"))
            .and_then(|l| l.rsplit("up ").next())
            .and_then(|s| s.trim_end_matches('s').parse().ok())
    }
}

/// Host end of the guest's /dev/ttyS1: a Unix stream socket; every read is bounded.
#[derive(Debug)]
pub struct Uart {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Uart {
    /// Send bytes to the guest.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to VM UART");
    }

    /// Send `line` plus `\n`.
    pub fn send_line(&mut self, line: &str) {
        self.send(format!("{line}\n").as_bytes());
    }

    /// The next line from the guest (without `\r`/`\n`), or `None` after `timeout` or EOF.
    pub fn read_line(&mut self, timeout: Duration) -> Option<String> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let s = String::from_utf8_lossy(&line);
                return Some(s.trim_end_matches(['\r', '\n']).to_owned());
            }
            let left = until.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("set UART read timeout");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("read from VM UART: {e}"),
            }
        }
    }

    /// Read lines until one satisfies `pred` and return it; panic after `timeout`. Returns the
    /// skipped lines too, for error messages.
    pub fn expect_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.read_line(left) {
                Some(l) if pred(&l) => return l,
                Some(l) => seen.push(l),
                None => break,
            }
        }
        panic!("vm: no matching line from the guest UART within {timeout:?}; got {seen:?}");
    }

    /// The raw socket, e.g. to hand to a thread or a serial-sensor simulator.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

/// QEMU's QMP monitor: JSON commands and answers, one per line; asynchronous events are
/// skipped. Every read is bounded.
#[derive(Debug)]
pub struct Qmp {
    lines: Uart,
}

impl Qmp {
    fn read_message(&mut self) -> serde_json::Value {
        let line = self
            .lines
            .read_line(Duration::from_secs(30))
            .expect("vm: QMP answered nothing within 30 s");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("vm: QMP sent {line:?}: {e}"))
    }

    /// Run `command` with `arguments`: its `return` value, or its error's description.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let request = serde_json::json!({"execute": command, "arguments": arguments});
        self.lines.send_line(&request.to_string());
        for _ in 0..1000 {
            let m = self.read_message();
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                return Err(e.to_string());
            }
            // {"event": ...}: not the answer
        }
        panic!("vm: QMP: no answer to {command} among 1000 messages");
    }
}

/// Failed runs keep their directory (`runs/<pid>-<n>`) for inspection; drop those of test
/// processes that are gone.
fn remove_stale_runs(runs: &Path) {
    let Ok(entries) = fs::read_dir(runs) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let pid = name
            .to_string_lossy()
            .split('-')
            .next()
            .unwrap_or("")
            .to_owned();
        if !pid.is_empty() && !Path::new("/proc").join(&pid).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Run `cmd` in its own process group with stdout+stderr to `log_path`, bounded by `limit`.
fn run_logged(mut cmd: Command, log_path: &Path, limit: Duration) -> (Option<ExitStatus>, String) {
    let log = fs::File::create(log_path).expect("create log file");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let status = wait_deadline(&mut child, Instant::now() + limit);
    (status, fs::read_to_string(log_path).unwrap_or_default())
}

/// Wait for `child` until `deadline`; past it kill its process group and return `None`.
fn wait_deadline(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            eprintln!("vm: watchdog: killing process group {}", child.id());
            kill_group(child);
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGKILL the process group led by `child` (spawned with `process_group(0)`) and reap it.
fn kill_group(child: &mut Child) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

//! The ring directory: its layout (one directory per stream) and, below, whom it trusts.
//!
//! The hostile-user tests run the attacker's actions as a second real user (uid 65534) in a
//! child process, while the agent side runs as root (the test process).

mod common;

use std::path::Path;

use common::*;
use edgeplex::ring::{self, CreateOptions, RingSpec, StreamKind, Writer};

fn spec(name: &str) -> RingSpec {
    RingSpec {
        name: name.into(),
        kind: StreamKind::Serial,
        slot_count: 4,
        slot_size: 256,
        video: None,
    }
}

fn ring_ls(dir: &Path) -> String {
    let out = edgeplex()
        .args(["ring", "ls"])
        .arg(dir)
        .output()
        .expect("run edgeplex ring ls");
    assert!(out.status.success(), "ring ls failed: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn each_stream_has_its_own_directory_and_ring_ls_finds_it() {
    let dir = shm_dir();
    let mut writers = Vec::new();
    for name in ["cam0", "gps0"] {
        let path = ring::ring_path(dir.path(), name);
        assert_eq!(path, dir.path().join(name).join(format!("{name}.ring")));
        assert_eq!(ring::stream_dir(dir.path(), name), dir.path().join(name));
        writers.push(Writer::open(&path, &spec(name), &CreateOptions::default()).expect("writer"));
        assert!(path.is_file(), "{} was not created", path.display());
    }
    let listing = ring_ls(dir.path());
    let streams: Vec<&str> = listing
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(streams, ["cam0", "gps0"], "ring ls printed:\n{listing}");
}

// ---------------------------------------------------------------------------------------------
// Trust: the attacker is uid 65534, a real second user.
// ---------------------------------------------------------------------------------------------

const ATTACKER: u32 = 65534;

/// Run `script` with `sh -c` as the attacker (uid and gid 65534, no supplementary groups).
fn as_attacker(script: &str) {
    let id = ATTACKER.to_string();
    let st = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            &id,
            "--regid",
            &id,
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .status()
        .expect("run sh as uid 65534 with setpriv (util-linux)");
    assert!(st.success(), "attacker script failed: {script}");
}

/// A fresh name under /dev/shm that nobody has yet; removed (as root) on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let mut r = [0u8; 8];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut r)
            .unwrap();
        Scratch(std::path::PathBuf::from(format!(
            "/dev/shm/edgeplex-test-{tag}-{:016x}",
            u64::from_le_bytes(r)
        )))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `edgeplex run --ring-dir DIR` with no streams and no metrics: exit code and stderr. An agent
/// that accepts the directory keeps running; the watchdog then stops it and the test fails.
fn run_agent(ring_dir: &Path) -> (Option<i32>, String) {
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), "[metrics]\nlisten = \"\"\n").unwrap();
    let mut cmd = edgeplex();
    cmd.args(["run", "--config"])
        .arg(cfg.path())
        .arg("--ring-dir")
        .arg(ring_dir);
    let mut p = Proc::spawn("agent", cmd);
    let status = p.wait();
    (status.code(), p.stderr())
}

fn refused_with(ring_dir: &Path, words: &str) {
    let (code, stderr) = run_agent(ring_dir);
    assert_eq!(
        code,
        Some(64),
        "agent with ring dir {}: {stderr}",
        ring_dir.display()
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains(words), "{words:?} not in {stderr:?}");
}

#[test]
fn the_agent_refuses_a_ring_dir_another_user_owns() {
    let d = Scratch::new("owned");
    as_attacker(&format!("mkdir -m 0755 {}", d.0.display()));
    refused_with(&d.0, "owned by uid 65534");
}

#[test]
fn the_agent_refuses_a_symlinked_ring_dir() {
    let d = Scratch::new("link");
    let target = Scratch::new("target");
    as_attacker(&format!(
        "mkdir -m 0755 {t} && ln -s {t} {l}",
        t = target.0.display(),
        l = d.0.display()
    ));
    refused_with(&d.0, "symbolic link");
}

#[test]
fn the_agent_refuses_a_sticky_world_writable_dir_such_as_dev_shm() {
    refused_with(Path::new("/dev/shm"), "writable by group or others");
}

#[test]
fn a_missing_ring_dir_is_created_for_the_agent_only() {
    use std::os::unix::fs::MetadataExt;
    let d = Scratch::new("fresh");
    let dir = ring::RingDir::create(&d.0, false).expect("create");
    let w = dir
        .open_writer("cam0", &spec("cam0"), &CreateOptions::default())
        .expect("writer");
    for p in [d.0.clone(), d.0.join("cam0")] {
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(
            (m.uid(), m.mode() & 0o7777),
            (ring::effective_uid(), 0o755),
            "{}",
            p.display()
        );
    }
    assert_eq!(w.path(), ring::ring_path(&d.0, "cam0"));
}

/// A ring dir with a stream directory of the writer's, and a ring file built elsewhere (a
/// "victim" ring the attacker wants the writer to scribble over).
fn victim_ring(dir: &Path) -> std::path::PathBuf {
    let victim = dir.join("victim.ring");
    drop(Writer::open(&victim, &spec("gps0"), &CreateOptions::default()).unwrap());
    victim
}

fn epoch_of(p: &Path) -> u64 {
    ring::inspect(p).unwrap().epoch
}

#[test]
fn the_writer_never_follows_a_symlink_at_the_ring_path() {
    let d = shm_dir();
    let victim = victim_ring(d.path());
    let before = epoch_of(&victim);
    let path = ring::ring_path(d.path(), "gps0");
    std::fs::create_dir(path.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    let e = Writer::open(&path, &spec("gps0"), &CreateOptions::default()).unwrap_err();
    assert!(matches!(e, ring::RingError::Untrusted { .. }), "{e}");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert_eq!(
        epoch_of(&victim),
        before,
        "the symlink's target was reopened"
    );
}

#[test]
fn the_writer_refuses_a_ring_file_of_another_user_or_with_other_links() {
    let d = shm_dir();
    let victim = victim_ring(d.path());
    let before = epoch_of(&victim);
    let path = ring::ring_path(d.path(), "gps0");
    std::fs::create_dir(path.parent().unwrap()).unwrap();
    std::fs::hard_link(&victim, &path).unwrap();
    let e = Writer::open(&path, &spec("gps0"), &CreateOptions::default()).unwrap_err();
    assert!(e.to_string().contains("hard links"), "{e}");
    assert_eq!(
        epoch_of(&victim),
        before,
        "the other link's file was reopened"
    );
    std::fs::remove_file(&path).unwrap();
    std::fs::copy(&victim, &path).unwrap();
    std::os::unix::fs::chown(&path, Some(ATTACKER), Some(ATTACKER)).unwrap();
    let e = Writer::open(&path, &spec("gps0"), &CreateOptions::default()).unwrap_err();
    assert!(e.to_string().contains("owned by uid 65534"), "{e}");
}

#[test]
fn the_old_predictable_temporary_name_cannot_block_creation() {
    let d = shm_dir();
    let path = ring::ring_path(d.path(), "gps0");
    let stream = path.parent().unwrap();
    std::fs::create_dir(stream).unwrap();
    std::fs::create_dir(stream.join(format!(".gps0.ring.tmp.{}", std::process::id()))).unwrap();
    let w = Writer::open(&path, &spec("gps0"), &CreateOptions::default()).expect("created");
    drop(w);
    // And creation leaves no temporary file behind.
    let names: Vec<String> = std::fs::read_dir(stream)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp.") && !n.ends_with(&std::process::id().to_string()))
        .collect();
    assert!(names.is_empty(), "left behind: {names:?}");
}

/// The agent sweeps temporary files an earlier agent of its uid left (killed mid-creation),
/// in the ring directory (the old layout) and in stream directories; another uid's are kept.
#[test]
fn the_agent_sweeps_its_own_leftover_temporary_files_at_start() {
    let d = shm_dir();
    let stream = d.path().join("cam0");
    std::fs::create_dir(&stream).unwrap();
    let ours = [
        d.path().join(".cam0.ring.tmp.4242"),
        stream.join(".cam0.ring.tmp.0123456789abcdef"),
    ];
    for p in &ours {
        std::fs::write(p, vec![7u8; 1 << 20]).unwrap();
    }
    let theirs = stream.join(".cam0.ring.tmp.4343");
    std::fs::write(&theirs, b"x").unwrap();
    std::os::unix::fs::chown(&theirs, Some(ATTACKER), Some(ATTACKER)).unwrap();
    let st = edgeplex()
        .args([
            "demo",
            "--duration",
            "0.5",
            "--fps",
            "5",
            "--width",
            "16",
            "--height",
            "8",
        ])
        .args(["--metrics-listen", ""])
        .arg("--ring-dir")
        .arg(d.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    for p in &ours {
        assert!(!p.exists(), "{} was not swept", p.display());
    }
    assert!(theirs.exists(), "another user's file was removed");
}

/// A tmpfs of `size` mounted at a fresh directory (unmounted on drop), or `None` where this
/// process may not mount (outside CI only: in CI the test must run).
struct SmallTmpfs(tempfile::TempDir);

impl SmallTmpfs {
    fn mount(size: &str) -> Option<SmallTmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var_os("CI").is_none(),
                "cannot mount a tmpfs (needs root)"
            );
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(SmallTmpfs(dir))
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// 4 slots of 16 KiB: a ring of 72 KiB.
fn big_spec() -> RingSpec {
    RingSpec {
        slot_size: 16384,
        ..spec("gps0")
    }
}

const REOPEN_ROLE: &str = "EDGEPLEX_TEST_REOPEN";

/// Child: reopen the ring at `$EDGEPLEX_TEST_REOPEN` and publish into every slot. Does nothing
/// unless run as a child by the test below.
#[test]
fn reopen_child() {
    let Some(path) = std::env::var_os(REOPEN_ROLE) else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    match Writer::open(&path, &big_spec(), &CreateOptions::default()) {
        Ok(mut w) => {
            for _ in 0..4 {
                w.publish(&[1u8; 200], Default::default()).unwrap();
            }
            println!("REOPENED");
        }
        Err(e) => println!("REFUSED: {e}"),
    }
}

/// On a full tmpfs, reopening a ring with holes (punched, or never allocated) must fail with a
/// clear error, not kill the writer with SIGBUS at its first store into a hole.
#[test]
fn reopening_a_sparse_ring_on_a_full_tmpfs_is_an_error_not_sigbus() {
    use std::io::Write;
    use std::os::unix::process::ExitStatusExt;
    let Some(fs) = SmallTmpfs::mount("256k") else {
        return;
    };
    let path = ring::ring_path(fs.0.path(), "gps0");
    drop(Writer::open(&path, &big_spec(), &CreateOptions::default()).unwrap());
    let size = std::fs::metadata(&path).unwrap().len();
    let st = std::process::Command::new("fallocate")
        .args(["--punch-hole", "--offset", "8192", "--length"])
        .arg((size - 8192).to_string())
        .arg(&path)
        .status()
        .unwrap();
    assert!(st.success());
    let mut filler = std::fs::File::create(fs.0.path().join("filler")).unwrap();
    for _ in 0..1024 {
        if filler.write_all(&[0u8; 4096]).is_err() {
            break;
        }
    }
    drop(filler);
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "reopen_child", "--nocapture", "--test-threads=1"])
        .env(REOPEN_ROLE, &path);
    let out = {
        let mut child = Proc::spawn("reopen", cmd);
        let status = child.wait();
        assert_eq!(
            status.signal(),
            None,
            "the writer died of a signal (SIGBUS)"
        );
        child.seen.join("\n")
    };
    assert!(
        out.contains("REFUSED") && out.contains("no space"),
        "child said: {out}"
    );
}

/// `RingDir::check_path` (for `run --check`) applies the same rules without creating anything.
#[test]
fn check_path_applies_the_same_rules_without_creating() {
    let missing = Scratch::new("missing");
    ring::RingDir::check_path(&missing.0, false).expect("a missing dir is created later");
    assert!(!missing.0.exists(), "check_path created it");
    let e = ring::RingDir::check_path(Path::new("/dev/shm"), false).unwrap_err();
    assert!(e.to_string().contains("writable by group or others"), "{e}");
    let owned = Scratch::new("checked");
    as_attacker(&format!("mkdir -m 0755 {}", owned.0.display()));
    let e = ring::RingDir::check_path(&owned.0, false).unwrap_err();
    assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    let mine = shm_dir();
    ring::RingDir::check_path(mine.path(), false).expect("our own tmpfs dir passes");
}

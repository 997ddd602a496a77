//! The container image, built and run for real: `image/stage.sh` stages the binary this test
//! run built plus exactly its shared libraries, `buildah bud` builds the `Containerfile`
//! `FROM scratch`, and podman runs it (once per test run; the image is removed at the end).
//!
//! 1. The agent container writes rings into a shared tmpfs directory; a second container reads
//!    them through a read-only bind mount as uid 65534 with no capabilities, and every frame's
//!    hash and sequence number is checked against what the test pattern draws.
//! 2. A consumer container started with exactly the mounts and environment a device-plugin
//!    `Allocate` gave (from a real `edgeplex run` serving a stand-in kubelet) reads frames, and
//!    keeps reading after a geometry change on the host replaces the ring file.
//!
//! podman here needs `runc`, the cgroupfs manager and no default ulimits (crun fails on
//! setrlimit and on hybrid cgroups on these machines): the test writes that `containers.conf`.
//! Without buildah or podman the test is skipped, except in CI (`CI` set), where it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::kubelet::{Kubelet, WAIT};
use common::{CatOut, Proc};
use edgeplex::deviceplugin::api;
use edgeplex::ring::{CreateOptions, RingSpec, StreamKind, Writer};

const CONTAINERS_CONF: &str = "[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n";

/// buildah and podman, with this machine's `containers.conf`, and the image built for this run.
struct Image {
    conf: tempfile::TempDir,
    tag: String,
    containers: Mutex<Vec<String>>,
}

fn tool_present(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Image {
    /// Stage and build the image, or `None` (skip) when the tools are missing outside CI.
    fn build() -> Option<Image> {
        let missing: Vec<&str> = ["buildah", "podman"]
            .into_iter()
            .filter(|t| !tool_present(t))
            .collect();
        if !missing.is_empty() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must provide {missing:?} (.ci/run installs buildah and podman)"
            );
            eprintln!("SKIPPED: {missing:?} not installed (apt-get install buildah podman runc)");
            return None;
        }
        let conf = tempfile::tempdir().unwrap();
        std::fs::write(conf.path().join("containers.conf"), CONTAINERS_CONF).unwrap();
        let tag = format!("localhost/edgeplex-test:{}", std::process::id());
        let image = Image {
            conf,
            tag,
            containers: Mutex::new(Vec::new()),
        };
        let ctx = tempfile::tempdir().unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let staged = Command::new(repo.join("image/stage.sh"))
            .arg(env!("CARGO_BIN_EXE_edgeplex"))
            .arg(ctx.path().join("rootfs/amd64"))
            .output()
            .expect("run image/stage.sh");
        assert!(
            staged.status.success(),
            "image/stage.sh: {}",
            String::from_utf8_lossy(&staged.stderr)
        );
        let built = image
            .cmd("buildah")
            .args(["bud", "--quiet", "--platform", "linux/amd64", "-f"])
            .arg(repo.join("Containerfile"))
            .args(["-t", &image.tag])
            .arg(ctx.path())
            .output()
            .expect("run buildah");
        assert!(
            built.status.success(),
            "buildah bud: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let size = image.podman(&["image", "inspect", "--format", "{{.Size}}", &image.tag]);
        eprintln!(
            "image {} (test-profile binary, debug info stripped): {} bytes",
            image.tag,
            size.trim()
        );
        Some(image)
    }

    fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.env("CONTAINERS_CONF", self.conf.path().join("containers.conf"));
        c
    }

    /// Run podman to completion; its stdout.
    fn podman(&self, args: &[&str]) -> String {
        let out = self.cmd("podman").args(args).output().expect("run podman");
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podman run --rm --network none --name NAME` + `args` + the image + `command`, as a
    /// watched child process.
    fn run(&self, name: &str, args: &[String], command: &[String]) -> Proc {
        let name = format!("{name}-{}", std::process::id());
        self.containers.lock().unwrap().push(name.clone());
        let mut c = self.cmd("podman");
        c.args(["run", "--rm", "--network", "none", "--name", &name])
            .args(args)
            .arg(&self.tag)
            .args(command);
        Proc::spawn(&name, c)
    }

    /// Stop a container started by [`Image::run`] (SIGTERM, then SIGKILL after 10 s).
    fn stop(&self, name: &str) {
        let name = format!("{name}-{}", std::process::id());
        self.podman(&["stop", "--time", "10", &name]);
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        for name in self.containers.lock().unwrap().iter() {
            let _ = self
                .cmd("podman")
                .args(["rm", "--force", "--ignore", name])
                .output();
        }
        let _ = self
            .cmd("podman")
            .args(["rmi", "--force", &self.tag])
            .output();
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Wait until `path` exists, or fail if `proc` exits first.
fn wait_for_file(proc: &mut Proc, path: &Path) {
    let deadline = Instant::now() + WAIT;
    while !path.exists() {
        assert!(!proc.exited(), "{} exited: {}", proc.name, proc.stderr());
        assert!(
            Instant::now() < deadline,
            "no {} within {WAIT:?}: {}",
            path.display(),
            proc.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Read a consumer's stdout until it exits, then parse it as `ring cat --meta` output.
fn collect(proc: &mut Proc) -> CatOut {
    proc.wait_success();
    CatOut::parse(&proc.name, &proc.seen)
}

#[test]
fn containers_share_rings_read_only_and_follow_allocations() {
    let Some(image) = Image::build() else { return };
    agent_container_writes_and_an_unprivileged_container_reads(&image);
    consumer_started_from_an_allocation_follows_a_geometry_change(&image);
}

fn agent_container_writes_and_an_unprivileged_container_reads(image: &Image) {
    let shm = common::shm_dir();
    let rings = shm.path().join("rings");
    std::fs::create_dir(&rings).unwrap();
    let etc = tempfile::tempdir().unwrap();
    std::fs::write(
        etc.path().join("edgeplex.toml"),
        "[ring]\ndir = \"/rings\"\n[metrics]\nlisten = \"\"\n[kube]\nmode = \"off\"\n\
         [stream.cam0]\ntype = \"test-pattern\"\nwidth = 64\nheight = 48\nfps = 30\nslot_count = 8\n",
    )
    .unwrap();
    // The agent: root in its container (it owns the ring directory), default command `run`.
    let mut agent = image.run(
        "edgeplex-agent",
        &[
            "--user".into(),
            "0".into(),
            "-v".into(),
            format!("{}:/rings", rings.display()),
            "-v".into(),
            format!("{}:/etc/edgeplex:ro", etc.path().display()),
        ],
        &[],
    );
    let host_ring = edgeplex::agent::ring_path(&rings, "cam0");
    wait_for_file(&mut agent, &host_ring);
    let in_container = Path::new("/rings").join(host_ring.strip_prefix(&rings).unwrap());

    // The reader: uid 65534, no capabilities, read-only root and a read-only bind mount.
    let mut reader = image.run(
        "edgeplex-reader",
        &[
            "--cap-drop=all".into(),
            "--user".into(),
            "65534:65534".into(),
            "--read-only".into(),
            "-v".into(),
            format!("{}:/rings:ro", rings.display()),
        ],
        &strings(&[
            "ring",
            "cat",
            &in_container.display().to_string(),
            "--meta",
            "--hash",
            "--from",
            "next",
            "-n",
            "30",
        ]),
    );
    let out = collect(&mut reader);
    let msgs = out.msgs();
    assert_eq!(msgs.len(), 30, "{:?}", out.lines);
    let mut pattern = edgeplex::source::synthetic::TestPattern::new(64, 48);
    let mut frame = vec![0u8; pattern.frame_len()];
    for (i, m) in msgs.iter().enumerate() {
        assert!(m.intact, "{m:?}");
        if i > 0 {
            assert_eq!(m.seq, msgs[i - 1].seq + 1, "no gaps: {:?}", out.seqs());
        }
        let len = pattern.render(m.device_seq, &mut frame);
        assert_eq!(m.len, len);
        assert_eq!(
            m.fnv1a64,
            format!("{:016x}", edgeplex::ring::fnv1a64(&frame[..len])),
            "frame {} as the test pattern draws it",
            m.device_seq
        );
    }
    assert_eq!(out.end().lost, 0);

    // The agent stops cleanly on the SIGTERM `podman stop` sends.
    image.stop("edgeplex-agent");
    agent.wait_success();
}

fn consumer_started_from_an_allocation_follows_a_geometry_change(image: &Image) {
    let shm = common::shm_dir();
    let rings = shm.path().join("rings");
    let tmp = tempfile::tempdir().unwrap();
    let plugins = tmp.path().join("device-plugins");
    std::fs::create_dir(&plugins).unwrap();
    // The agent advertises cam0, but its device never opens: this test plays cam0's writer on
    // the host, so it can change the geometry at a moment of its choosing.
    let config = tmp.path().join("edgeplex.toml");
    std::fs::write(
        &config,
        format!(
            "[ring]\ndir = \"{}\"\n[metrics]\nlisten = \"\"\n[kube]\nmode = \"off\"\n\
             [device_plugin]\nenabled = true\ndir = \"{}\"\nshares = 2\n\
             [stream.cam0]\ntype = \"serial\"\ndevice = \"{}\"\n",
            rings.display(),
            plugins.display(),
            tmp.path().join("no-such-device").display()
        ),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut kubelet = rt.block_on(async { Kubelet::start(&plugins) });
    let mut cmd = common::edgeplex();
    cmd.args(["run", "--config"]).arg(&config);
    let mut agent = Proc::spawn("edgeplex run", cmd);
    let alloc = rt.block_on(async {
        let regs = kubelet.registrations(1).await;
        let mut plugin = kubelet.plugin(&regs["edgeplex.io/cam0"].endpoint).await;
        plugin
            .allocate(api::AllocateRequest {
                container_requests: vec![api::ContainerAllocateRequest {
                    devices_ids: vec!["cam0-1".into()],
                }],
            })
            .await
            .expect("allocate")
            .into_inner()
            .container_responses
            .remove(0)
    });

    // What the kubelet would hand the runtime: bind mounts and environment, and `$(VAR)` in the
    // container's args expanded from that environment.
    let mut args = strings(&["--cap-drop=all", "--user", "65534:65534", "--read-only"]);
    for m in &alloc.mounts {
        let ro = if m.read_only { ":ro" } else { "" };
        args.push("-v".into());
        args.push(format!("{}:{}{ro}", m.host_path, m.container_path));
    }
    for (k, v) in &alloc.envs {
        args.push("-e".into());
        args.push(format!("{k}={v}"));
    }
    let expand = |s: &str| {
        alloc
            .envs
            .iter()
            .fold(s.to_string(), |s, (k, v)| s.replace(&format!("$({k})"), v))
    };
    let command: Vec<String> = [
        "ring",
        "cat",
        "$(EDGEPLEX_RING_CAM0)",
        "--meta",
        "--hash",
        "--from",
        "oldest",
        "-n",
        "60",
    ]
    .iter()
    .map(|s| expand(s))
    .collect();
    assert_eq!(command[2], "/run/edgeplex/cam0/cam0.ring");

    // The host writer, at the ring path the mount and the variable name together.
    let m = &alloc.mounts[0];
    let host_ring = PathBuf::from(&m.host_path).join(
        Path::new(&command[2])
            .strip_prefix(&m.container_path)
            .expect("the ring is inside the mount"),
    );
    let phase = Arc::new(AtomicU8::new(0)); // 0: first geometry, 1: second, 2: stop
    let ready = Arc::new(AtomicBool::new(false));
    let epochs: Arc<Mutex<Vec<(u64, usize)>>> = Arc::default();
    let writer = {
        let (phase, ready, epochs, path) = (
            phase.clone(),
            ready.clone(),
            epochs.clone(),
            host_ring.clone(),
        );
        std::thread::spawn(move || {
            for (p, (slots, slot_size)) in [(0u8, (8u32, 4096u64)), (1, (4, 8192))] {
                let spec = RingSpec {
                    name: "cam0".into(),
                    kind: StreamKind::Bytes,
                    slot_count: slots,
                    slot_size,
                    video: None,
                };
                let mut w = Writer::open(&path, &spec, &CreateOptions::default())
                    .expect("open the host ring");
                let max = slot_size as usize;
                epochs.lock().unwrap().push((w.epoch(), max));
                ready.store(true, Ordering::SeqCst);
                while phase.load(Ordering::SeqCst) == p {
                    let (seq, epoch) = (w.head(), w.epoch());
                    w.publish(
                        &common::payload(seq, epoch, max),
                        common::meta_for(seq, epoch),
                    )
                    .expect("publish");
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
    };
    let deadline = Instant::now() + WAIT;
    while !ready.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the host writer did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let first_inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&host_ring).unwrap());

    let mut consumer = image.run("edgeplex-consumer", &args, &command);
    // Some frames of the first geometry, then the geometry changes under the running consumer.
    let mut read = 0;
    while read < 20 {
        let line = consumer
            .next_line_within(WAIT)
            .unwrap_or_else(|| panic!("consumer printed nothing: {}", consumer.stderr()));
        if line.contains("\"seq\"") {
            read += 1;
        }
    }
    phase.store(1, Ordering::SeqCst);
    let out = collect(&mut consumer);
    phase.store(2, Ordering::SeqCst);
    writer.join().unwrap();
    let second_inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&host_ring).unwrap());
    assert_ne!(
        first_inode, second_inode,
        "the geometry change replaced the file"
    );

    let epochs = epochs.lock().unwrap().clone();
    assert_eq!(epochs.len(), 2);
    assert_eq!(out.reopen_events(), 1, "{:?}", out.lines);
    assert_eq!(out.end().reopened, 1);
    let msgs = out.msgs();
    assert_eq!(msgs.len(), 60);
    for m in &msgs {
        let max = epochs
            .iter()
            .find(|(e, _)| *e == m.epoch)
            .unwrap_or_else(|| panic!("message of an unknown epoch: {m:?}"))
            .1;
        assert!(m.intact, "{m:?}");
        assert_eq!(
            m.fnv1a64,
            common::payload_hash(m.seq, m.epoch, max),
            "{m:?}"
        );
    }
    assert!(
        msgs.iter().any(|m| m.epoch == epochs[1].0),
        "frames of the new geometry were read"
    );

    agent.signal("TERM");
    agent.wait_success();
    rt.block_on(kubelet.stop());
}

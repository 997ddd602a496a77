//! The discovery loop on the host, over a fixture `/sys` and `/dev` whose serial "device" is a
//! real pty: the fixture's device node is a symlink to the pty's slave, created and removed as
//! the kernel would create and remove a node, so the loop sees it through inotify (no polling)
//! and the stream it starts reads real bytes. The real hardware version (vivid cameras, a
//! hotplugged PCI UART) is `tests/vm_hotplug.rs`.
//!
//! What it proves, with the agent's pieces (the [`StreamSet`] the node publisher, device plugin
//! and metrics follow; supervised capture threads; rings on tmpfs):
//! - a device that appears becomes a running stream named by its rule and carries data;
//! - a device that leaves marks its stream down at once; the stream stays in the set for the
//!   grace period, and a replug within it resumes the same stream (same health, same ring);
//! - after the grace period it leaves the set; a return brings it back into the same ring file
//!   with the epoch bumped and the message numbers continued.
//!
//! Waits are bounded polls on observable state; nothing asserts how long anything took.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::wait::wait_for;
use edgeplex::discovery::live::{self, Live};
use edgeplex::discovery::{CapsTable, DiscoverySettings, Roots};
use edgeplex::ring::{CreateOptions, Reader, RingDir, Start};
use edgeplex::shutdown::Shutdown;
use edgeplex::source::{Backoff, StreamSet};
use serialport::{SerialPort, TTYPort};

const WAIT: Duration = Duration::from_secs(20);
const GRACE_SECS: f64 = 1.5;

/// A fixture sysfs with two 16550-like ports `ttyFX0` and `ttyFX1` of driver `fx-uart` on
/// `platform/fx.0` and `platform/fx.1`, and an empty `/dev`.
struct Fixture {
    _tmp: tempfile::TempDir,
    _shm: tempfile::TempDir,
    roots: Roots,
    rings: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let sys = tmp.path().join("sys");
        let dev = tmp.path().join("dev");
        std::fs::create_dir_all(sys.join("bus/platform/drivers/fx-uart")).unwrap();
        std::fs::create_dir_all(sys.join("class/tty")).unwrap();
        std::fs::create_dir_all(sys.join("class/video4linux")).unwrap();
        for i in 0..2 {
            let parent = sys.join(format!("devices/platform/fx.{i}"));
            let tty = parent.join(format!("tty/ttyFX{i}"));
            std::fs::create_dir_all(&tty).unwrap();
            std::os::unix::fs::symlink(
                sys.join("bus/platform/drivers/fx-uart"),
                parent.join("driver"),
            )
            .unwrap();
            std::fs::write(tty.join("type"), "4\n").unwrap();
            std::os::unix::fs::symlink(&parent, tty.join("device")).unwrap();
            std::os::unix::fs::symlink(&tty, sys.join(format!("class/tty/ttyFX{i}"))).unwrap();
        }
        std::fs::create_dir_all(&dev).unwrap();
        let shm = common::shm_dir();
        Fixture {
            rings: shm.path().join("rings"),
            roots: Roots { sys, dev },
            _tmp: tmp,
            _shm: shm,
        }
    }

    /// "Plug in" port 0: the device node appears (a symlink to the pty's slave).
    fn plug(&self, slave: &TTYPort) {
        self.plug_port(0, slave);
    }

    fn plug_port(&self, port: u32, slave: &TTYPort) {
        let path = PathBuf::from(slave.name().expect("pty slave name"));
        std::os::unix::fs::symlink(path, self.roots.dev.join(format!("ttyFX{port}"))).unwrap();
    }

    /// "Unplug" port 0: the device node goes.
    fn unplug(&self) {
        self.unplug_port(0);
    }

    fn unplug_port(&self, port: u32) {
        std::fs::remove_file(self.roots.dev.join(format!("ttyFX{port}"))).unwrap();
    }

    fn ring(&self, stream: &str) -> PathBuf {
        edgeplex::ring::ring_path(&self.rings, stream)
    }
}

/// A pty pair standing for the device: the test writes into the master.
struct Device {
    master: TTYPort,
    slave: TTYPort,
}

impl Device {
    fn new() -> Device {
        let (master, slave) = TTYPort::pair().expect("create a pty pair");
        Device { master, slave }
    }

    fn send_line(&mut self, line: &str) {
        self.master
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to the pty");
    }
}

fn settings(max_streams: u32) -> DiscoverySettings {
    let t: toml::Value = toml::from_str(&format!(
        r#"
grace_secs = {GRACE_SECS}
max_streams = {max_streams}
[rule.gps]
kind = "serial"
driver = "fx-*"
name = "gps-{{port}}"
baud = 115200
"#
    ))
    .unwrap();
    DiscoverySettings::from_value(t, "discovery").unwrap()
}

fn start(f: &Fixture, set: &StreamSet, shutdown: &Shutdown) -> live::Discovery {
    start_with(f, set, shutdown, 16, None)
}

fn start_with(
    f: &Fixture,
    set: &StreamSet,
    shutdown: &Shutdown,
    max_streams: u32,
    metrics: Option<live::LiveMetrics>,
) -> live::Discovery {
    let dir = Arc::new(RingDir::create(&f.rings, false).unwrap());
    let live = Live {
        roots: f.roots.clone(),
        caps: Box::new(CapsTable::default()),
        settings: settings(max_streams),
        explicit: BTreeMap::new(),
        set: set.clone(),
        ring_dir: dir,
        ring_path: f.rings.clone(),
        ring_options: CreateOptions::default(),
        backoff: Backoff::new(Duration::from_millis(50), Duration::from_millis(200)),
        drain: Duration::from_secs(5),
        metrics,
    };
    live::start(live, shutdown).expect("discovery starts")
}

/// Read messages from `reader` until one equals `want` (bounded); its number and epoch.
fn read_until(reader: &mut Reader, want: &str) -> (u64, u64) {
    let deadline = Instant::now() + WAIT;
    let mut buf = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "no message {want:?} in the ring");
        if let Ok(edgeplex::ring::Recv::Message(m)) = reader.next(Duration::from_millis(200)) {
            let (seq, epoch) = (m.seq(), m.epoch());
            buf.clear();
            if m.copy_to(&mut buf) && String::from_utf8_lossy(&buf).trim_end() == want {
                return (seq, epoch);
            }
        }
    }
}

fn names(set: &StreamSet) -> Vec<String> {
    set.list().iter().map(|h| h.name().to_owned()).collect()
}

#[test]
fn a_serial_device_comes_goes_and_comes_back_into_the_same_ring() {
    let f = Fixture::new();
    let set = StreamSet::new(Vec::new());
    let shutdown = Shutdown::default();
    let discovery = start(&f, &set, &shutdown);
    assert!(set.is_empty(), "nothing plugged in yet: {:?}", names(&set));

    // Plug in: a stream named by the rule, carrying the device's bytes.
    let mut dev = Device::new();
    f.plug(&dev.slave);
    let health = wait_for("the discovered stream to be up", WAIT, || {
        set.get("gps-fx-0").filter(|h| h.is_up())
    });
    assert_eq!(names(&set), ["gps-fx-0"]);
    let ring = f.ring("gps-fx-0");
    let mut reader = Reader::open(&ring, Start::Oldest).expect("its ring exists");
    dev.send_line("$GPGGA,1");
    let (seq1, epoch1) = read_until(&mut reader, "$GPGGA,1");

    // Unplug: down at once, still in the set (advertised, down) during the grace period.
    f.unplug();
    wait_for("the stream to be marked down", WAIT, || {
        (!health.is_up()).then_some(())
    });
    assert!(set.get("gps-fx-0").is_some_and(|h| h.is_same(&health)));
    // Replug within the grace period: the same stream resumes (same health, same ring).
    f.plug(&dev.slave);
    wait_for("the stream to be up again", WAIT, || {
        health.is_up().then_some(())
    });
    assert!(set.get("gps-fx-0").is_some_and(|h| h.is_same(&health)));
    dev.send_line("$GPGGA,2");
    let (seq2, _) = read_until(&mut reader, "$GPGGA,2");
    assert!(seq2 > seq1);

    // Unplug for longer than the grace period: out of the set.
    f.unplug();
    wait_for("the stream to be marked down", WAIT, || {
        (!health.is_up()).then_some(())
    });
    wait_for("the stream to leave the set", WAIT, || {
        set.is_empty().then_some(())
    });
    assert!(ring.exists(), "the ring file stays for the device's return");

    // Back: the same ring file, epoch bumped, message numbers continued.
    f.plug(&dev.slave);
    let back = wait_for("the stream to come back", WAIT, || {
        set.get("gps-fx-0").filter(|h| h.is_up())
    });
    assert!(
        !back.is_same(&health),
        "a new stream after the grace period"
    );
    dev.send_line("$GPGGA,3");
    let (seq3, epoch3) = read_until(&mut reader, "$GPGGA,3");
    assert!(seq3 > seq2, "message numbers continue: {seq3} after {seq2}");
    assert!(epoch3 > epoch1, "epoch {epoch3} after {epoch1}");

    shutdown.trigger();
    discovery.join();
    drop(dev);
}

#[test]
fn a_node_that_is_no_rules_device_is_left_alone() {
    let f = Fixture::new();
    let set = StreamSet::new(Vec::new());
    let shutdown = Shutdown::default();
    let discovery = start(&f, &set, &shutdown);
    // A node sysfs does not know, then the fixture device; only the latter becomes a stream,
    // which also shows the first event was handled (events are handled in order).
    std::fs::write(f.roots.dev.join("sda"), b"").unwrap();
    let dev = Device::new();
    f.plug(&dev.slave);
    wait_for("the discovered stream to be up", WAIT, || {
        set.get("gps-fx-0").filter(|h| h.is_up())
    });
    assert_eq!(names(&set), ["gps-fx-0"]);
    shutdown.trigger();
    discovery.join();
    assert!(Path::new(&f.ring("gps-fx-0")).exists());
}

/// `max_streams = 1`: a device plugged in later never pushes out the running stream, even one
/// whose name sorts first; once the running stream's device has been gone for the grace period,
/// the waiting device takes its place.
#[test]
fn a_later_device_waits_for_a_place_under_max_streams() {
    let f = Fixture::new();
    let set = StreamSet::new(Vec::new());
    let shutdown = Shutdown::default();
    let registry = prometheus::Registry::new();
    let metrics = live::LiveMetrics::register(&registry).unwrap();
    let discovery = start_with(&f, &set, &shutdown, 1, Some(metrics));
    let (one, zero) = (Device::new(), Device::new());
    f.plug_port(1, &one.slave);
    wait_for("gps-fx-1 up", WAIT, || {
        set.get("gps-fx-1").filter(|h| h.is_up())
    });
    f.plug_port(0, &zero.slave);
    let refused = r#"edgeplex_discovery_devices{kind="serial",state="max_streams"} 1"#;
    wait_for("gps-fx-0 refused for the limit", WAIT, || {
        edgeplex::metrics::encode(&registry)
            .contains(refused)
            .then_some(())
    });
    assert_eq!(
        names(&set),
        ["gps-fx-1"],
        "the running stream keeps its place"
    );
    f.unplug_port(1);
    wait_for("gps-fx-0 takes the free place", WAIT, || {
        set.get("gps-fx-0").filter(|h| h.is_up())
    });
    assert_eq!(names(&set), ["gps-fx-0"]);
    shutdown.trigger();
    discovery.join();
}

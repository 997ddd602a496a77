//! Discovery and hotplug against real kernel devices in the QEMU guest (tests/vm/README.md): the
//! agent starts with no camera and no extra UART, and everything that follows is the kernel's
//! doing, seen by the agent through inotify on the guest's devtmpfs `/dev` (no udev runs in the
//! guest, so there are no by-id or by-path links; and vivid's instances all hang off one
//! platform device, `vivid.0`, so `{port}` would give both cameras the same name, which the rule
//! engine refuses: the camera rule names streams by node, which the guest numbers the same way
//! on every load).
//!
//! The agent watches `/dev` bind-mounted at `/host/dev` (`discovery.dev`), as the DaemonSet
//! mounts the host's `/dev`: inotify on a bind mount of devtmpfs sees the nodes the kernel
//! creates and removes.
//!
//! One boot, three scenes:
//!
//! 1. `modprobe vivid n_devs=2 node_types=0x1,0x20101`: four video nodes, two of them video
//!    capture (one per instance), one video output and one metadata capture. Exactly the two
//!    capture nodes become streams, `cam-video0` and `cam-video1` (rule `cams`, name
//!    `cam-{node}`). The guest prints how long after the module load each ring had its first
//!    frame (`FIRST-FRAME:`; the target is 2 s; printed, never asserted).
//! 2. The unplug dance (vivid's `disconnect` control, then `rmmod`, as `tests/vm_camera.rs`
//!    does): both streams are down at once (`/metrics`), still exported during the grace
//!    period, then gone from `/metrics` and logged as no longer labelled or advertised (the node
//!    publisher and the device plugin read the same set; the guest has no API server, so what
//!    the agent exports is what is checked). A second `modprobe` brings them back into the same
//!    ring files with the epoch bumped.
//! 3. A 16550 PCI card hotplugged through QMP (`device_add pci-serial`) becomes the stream
//!    `uart-0000-00-05-0` (rule `uarts`, name `uart-{port}`) and carries the bytes the host
//!    writes into the card's chardev; `device_del` takes it down and, after the grace period,
//!    away. The guest's built-in second UART (`/dev/ttyS1`) is an explicit stream, so the rule
//!    leaves it alone.

mod common;
mod vm;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const EDGEPLEX: &str = env!("CARGO_BIN_EXE_edgeplex");

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const BODY: &str = r##"
dmesg -n 1
fail() { echo "HOTPLUG-FAIL: $*"; sed 's/^/LOG: /' /tmp/agent.log; exit 1; }
wait_for() { # wait_for SECONDS TEST-ARGS...
  n=$(( $1 * 20 )); shift; i=0
  while ! [ "$@" ]; do i=$((i + 1)); [ $i -le $n ] || return 1; sleep 0.05; done
}
metrics() { { printf 'GET /metrics HTTP/1.0\r\nHost: guest\r\n\r\n'; sleep 0.5; } | nc -w 3 127.0.0.1 9464 2>/dev/null || true; }
wait_metric() { # wait_metric SECONDS PATTERN: until /metrics has a line matching PATTERN
  n=$(( $1 * 5 )); i=0
  until metrics | grep -q "$2"; do i=$((i + 1)); [ $i -le $n ] || return 1; sleep 0.2; done
}
wait_no_metric() { # wait_no_metric SECONDS PATTERN: until no line of /metrics matches PATTERN
  n=$(( $1 * 5 )); i=0
  while metrics | grep -q "$2"; do i=$((i + 1)); [ $i -le $n ] || return 1; sleep 0.2; done
}
now() { cut -d' ' -f1 /proc/uptime; }
R=/dev/shm/rings
mkdir -p $R
# As in the DaemonSet: the agent watches the host's /dev bind-mounted elsewhere (/host/dev).
mkdir -p /host/dev
mount --bind /dev /host/dev
printf '%s\n' \
  '[ring]' "dir = \"$R\"" \
  '[metrics]' 'listen = "127.0.0.1:9464"' \
  '[agent]' 'retry_initial_secs = 5' 'retry_max_secs = 5' \
  '[discovery]' 'grace_secs = 4' 'dev = "/host/dev"' \
  '[discovery.rule.cams]' 'kind = "camera"' 'driver = "vivid"' 'name = "cam-{node}"' \
  'width = 640' 'height = 480' 'format = "YUYV"' 'fps = 30' 'slot_count = 8' 'stall_timeout_secs = 3' \
  '[discovery.rule.uarts]' 'kind = "serial"' 'driver = "serial"' 'name = "uart-{port}"' 'baud = 115200' \
  '[stream.gps0]' 'type = "serial"' 'device = "/host/dev/ttyS1"' 'baud = 115200' > /tmp/edgeplex.toml
ls /dev/video* 2>/dev/null && fail "a camera before the test plugged one in"
edgeplex run --config /tmp/edgeplex.toml > /tmp/agent.log 2>&1 &
agent=$!
wait_metric 60 '^edgeplex_source_up{stream="gps0"}' || fail "agent not serving metrics"
metrics | grep -q 'stream="cam-' && fail "camera streams before any camera"
edgeplex devices --config /tmp/edgeplex.toml --dev /host/dev | sed 's/^/DEVICES0: /'

# --- 1. two vivid instances, one with output and metadata nodes -------------------------------
t0=$(now)
modprobe vivid n_devs=2 node_types=0x1,0x20101
for s in cam-video0 cam-video1; do
  wait_for 30 -e $R/$s/$s.ring || fail "no ring for $s"
  first=$(edgeplex ring cat $R/$s/$s.ring --meta --from oldest --count 1 --idle-timeout 30 | head -n1)
  t1=$(now)
  cap=$(echo "$first" | sed -n 's/.*"capture_ns":\([0-9]*\).*/\1/p')
  [ -n "$cap" ] || fail "no first frame in $s: $first"
  # The kernel's own time of registering the node (dmesg and capture_ns are both CLOCK_MONOTONIC;
  # /proc/uptime is CLOCK_BOOTTIME, the same without suspend).
  reg=$(dmesg | sed -n "s/^\[ *\([0-9.]*\)\].*registered as ${s#cam-}\$/\1/p" | tail -n1)
  echo "FIRST-FRAME: $s after_load_s=$(awk -v c="$cap" -v t="$t0" 'BEGIN{printf "%.3f", c/1e9 - t}') after_node_s=$(awk -v c="$cap" -v r="$reg" 'BEGIN{printf "%.3f", c/1e9 - r}') seen_by_ring_cat_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')"
done
ls /dev/video* | tr '\n' ' ' | sed 's/^/NODES: /'; echo
for v in /sys/class/video4linux/video*; do echo "NODE: $(basename $v) $(cat $v/name) $(basename $(readlink $v/device))"; done
ls $R | sed 's/^/RINGS1: /'
edgeplex devices --config /tmp/edgeplex.toml --dev /host/dev | sed 's/^/DEVICES1: /'
wait_metric 10 '^edgeplex_discovery_streams{state="running"} 2' || fail "discovery_streams running != 2"
metrics | grep -E '^edgeplex_(source_up|discovery)' | sed 's/^/METRICS1: /'
ino0=$(stat -c %i $R/cam-video0/cam-video0.ring)
ino1=$(stat -c %i $R/cam-video1/cam-video1.ring)
ep0=$(edgeplex ring inspect $R/cam-video0/cam-video0.ring | sed -n 's/^epoch: *//p')
ep1=$(edgeplex ring inspect $R/cam-video1/cam-video1.ring | sed -n 's/^epoch: *//p')
echo "EPOCH1: $ep0 $ep1"

# --- 2. unplug: down at once, gone after the grace period, back into the same rings ------------
for n in 0 1; do v4l2-ctl -d /dev/video$n -c disconnect=1 2>&1 | sed 's/^/V4L2CTL: /'; done
i=0
until rmmod vivid 2>/dev/null; do i=$((i + 1)); [ $i -le 500 ] || fail "rmmod vivid kept failing"; sleep 0.02; done
t_rm=$(now)
wait_for 10 ! -e /dev/video0 || fail "/dev/video0 still there"
m=$(metrics)
echo "$m" | grep -E '^edgeplex_(source_up|discovery_streams)' | sed 's/^/METRICS-DOWN: /'
echo "$m" | grep -q '^edgeplex_source_up{stream="cam-video0"} 0' || fail "cam-video0 not down right after rmmod"
echo "$m" | grep -q '^edgeplex_source_up{stream="cam-video1"} 0' || fail "cam-video1 not down right after rmmod"
wait_metric 5 '^edgeplex_discovery_streams{state="gone"} 2' || fail "the streams are not in their grace period"
wait_no_metric 30 'stream="cam-video' || fail "camera streams still exported after the grace period"
echo "GONE: after $(awk -v a="$t_rm" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}') s (grace 4 s)"
grep -c 'no longer labelled or advertised' /tmp/agent.log | sed 's/^/UNLABELLED: /'
kill -0 $agent || fail "agent died"
[ -e $R/cam-video0/cam-video0.ring ] || fail "ring removed"
t0=$(now)
modprobe vivid n_devs=2 node_types=0x1,0x20101
for s in cam-video0 cam-video1; do
  first=$(edgeplex ring cat $R/$s/$s.ring --meta --from next --count 1 --idle-timeout 30 | head -n1)
  t1=$(now)
  echo "REPLUG-FRAME: $s seen_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') $first"
done
[ "$(stat -c %i $R/cam-video0/cam-video0.ring)" = "$ino0" ] && echo "RING: cam-video0 same file" || echo "RING: cam-video0 replaced"
[ "$(stat -c %i $R/cam-video1/cam-video1.ring)" = "$ino1" ] && echo "RING: cam-video1 same file" || echo "RING: cam-video1 replaced"
ep0b=$(edgeplex ring inspect $R/cam-video0/cam-video0.ring | sed -n 's/^epoch: *//p')
ep1b=$(edgeplex ring inspect $R/cam-video1/cam-video1.ring | sed -n 's/^epoch: *//p')
echo "EPOCH2: $ep0b $ep1b"

# --- 3. a PCI serial card hotplugged through QMP -----------------------------------------------
U=uart-0000-00-05-0
ls /dev/ttyS* | tr '\n' ' ' | sed 's/^/TTYS-BEFORE: /'; echo
echo "HOST-ACTION: device_add"
wait_for 30 -e $R/$U/$U.ring || fail "no ring for the hotplugged UART"
ls /dev/ttyS* | tr '\n' ' ' | sed 's/^/TTYS-AFTER: /'; echo
edgeplex ring cat $R/$U/$U.ring --from next --count 3 --idle-timeout 30 | tr -d '\r' | sed 's/^/SERIAL: /'
metrics | grep -E "^edgeplex_source_up" | sed 's/^/METRICS3: /'
echo "HOST-ACTION: device_del"
wait_metric 30 "^edgeplex_source_up{stream=\"$U\"} 0" || fail "the UART stream never went down"
echo "UART: down"
wait_no_metric 30 "stream=\"$U\"" || fail "the UART stream still exported after the grace period"
echo "UART: gone"
metrics | grep -E '^edgeplex_(source_up|discovery)' | sed 's/^/METRICS-END: /'
grep -E 'discovered|device left|grace period|no longer|stream up|camera open' /tmp/agent.log | sed 's/^/LOG: /'
kill $agent
wait $agent || true
"##;

#[test]
fn discovered_cameras_and_a_hotplugged_uart_come_and_go() {
    let Some(h) = vm::harness() else { return };
    let mut running = h
        .scenario(BODY)
        .file(EDGEPLEX)
        .file("/usr/bin/v4l2-ctl")
        .env("EDGEPLEX_VM_VIVID", "none")
        .qmp()
        .timeout(secs(280))
        .start();
    let mut qmp = running.qmp();
    running.wait_console(secs(200), |l| l == "HOST-ACTION: device_add");
    qmp.execute(
        "device_add",
        serde_json::json!({"driver": "pci-serial", "id": "hs1", "chardev": "hs1c", "addr": "0x5"}),
    )
    .expect("device_add pci-serial");
    // The card's other end: send NMEA lines until the guest asks for the unplug.
    let card = running.socket("hs1.sock");
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut card = card;
            for n in 0..3000u32 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let line = format!("$GPGGA,{n:06},4807.038,N,01131.000,E*47\r\n");
                if card.write_all(line.as_bytes()).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    running.wait_console(secs(120), |l| l == "HOST-ACTION: device_del");
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    qmp.execute("device_del", serde_json::json!({"id": "hs1"}))
        .expect("device_del hs1");
    let out = running.wait();
    for prefix in [
        "FIRST-FRAME: ",
        "REPLUG-FRAME: ",
        "NODE: ",
        "DEVICES1: ",
        "METRICS1: ",
        "METRICS-DOWN: ",
        "GONE: ",
        "UNLABELLED: ",
        "RING: ",
        "EPOCH1: ",
        "EPOCH2: ",
        "TTYS-BEFORE: ",
        "TTYS-AFTER: ",
        "SERIAL: ",
        "UART: ",
        "METRICS-END: ",
        "LOG: ",
        "HOTPLUG-FAIL: ",
    ] {
        for l in out.lines_with(prefix) {
            eprintln!("{prefix}{l}");
        }
    }
    out.assert_passed();

    // 1. Exactly the two capture nodes became streams, named by the rule.
    let rings: Vec<&str> = out.lines_with("RINGS1: ").collect();
    assert_eq!(
        rings,
        ["cam-video0", "cam-video1", "gps0"],
        "rings after modprobe"
    );
    let nodes: Vec<&str> = out.lines_with("NODE: ").collect();
    assert_eq!(nodes.len(), 4, "vivid made four video nodes: {nodes:?}");
    let devices: Vec<&str> = out.lines_with("DEVICES1: ").collect();
    assert!(
        devices
            .iter()
            .any(|l| l.contains("not a video capture node")),
        "edgeplex devices says why the output and metadata nodes are not taken: {devices:?}"
    );
    assert_eq!(out.lines_with("FIRST-FRAME: ").count(), 2);
    // 2. Same rings, epoch bumped.
    let epochs = |p: &str| -> Vec<u64> {
        out.lines_with(p)
            .next()
            .unwrap_or_else(|| panic!("no {p}line"))
            .split_whitespace()
            .map(|e| e.parse().expect("epoch"))
            .collect()
    };
    let (before, after) = (epochs("EPOCH1: "), epochs("EPOCH2: "));
    assert_eq!(before.len(), 2);
    for (b, a) in before.iter().zip(&after) {
        assert!(a > b, "epoch bumped on return: {before:?} -> {after:?}");
    }
    let same: Vec<&str> = out.lines_with("RING: ").collect();
    assert_eq!(
        same,
        ["cam-video0 same file", "cam-video1 same file"],
        "the same ring files are reused"
    );
    assert_eq!(out.lines_with("REPLUG-FRAME: ").count(), 2);
    assert!(out.lines_with("UNLABELLED: ").any(|n| n.trim() == "2"));
    // 3. The hotplugged UART carried the host's bytes, went down, went away.
    let serial: Vec<&str> = out.lines_with("SERIAL: ").collect();
    assert_eq!(serial.len(), 3, "{serial:?}");
    assert!(
        serial.iter().all(|l| l.starts_with("$GPGGA,")),
        "{serial:?}"
    );
    assert_eq!(
        out.lines_with("UART: ").collect::<Vec<_>>(),
        ["down", "gone"]
    );
}

//! `edgeplex devices` inside a QEMU guest against real kernel devices: two `vivid` instances with
//! two video capture nodes and video output and metadata nodes, the console UART
//! (ttyS0), a real second 16550 (ttyS1) and the 8250 driver's placeholders (ttyS2, ...). The real
//! capability probe (`VIDIOC_QUERYCAP`'s `device_caps`) must take exactly the capture nodes, and
//! the real sysfs must tell the UART from the placeholders and the console.
//!
//! Tooling policy and harness: see tests/vm_camera.rs and tests/vm/README.md (skips outside CI
//! when qemu or the kernel is missing, fails in CI).

mod common;
mod vm;

use std::collections::BTreeMap;
use std::time::Duration;

const EDGEPLEX: &str = env!("CARGO_BIN_EXE_edgeplex");

const BODY: &str = r##"
dmesg -n 1
cat > /tmp/edgeplex.toml <<'TOML'
[discovery.rule.cams]
kind = "camera"
driver = "vivid"
name = "cam-{label}"
width = 640
height = 480
[discovery.rule.uart]
kind = "serial"
name = "uart-{node}"
baud = 115200
TOML
for n in /sys/class/video4linux/video*; do
  echo "V4L: $(basename "$n") $(cat "$n/name")"
done
edgeplex devices --config /tmp/edgeplex.toml --json > /tmp/devices.json
sed 's/^/DEVICES: /' /tmp/devices.json
edgeplex devices --config /tmp/edgeplex.toml | sed 's/^/TABLE: /'
# vivid makes every instance under one platform device (vivid.0): {port} names both the same.
edgeplex devices --config /tmp/edgeplex.toml --json --set 'discovery.rule.cams.name="cam-{port}"' \
  | sed 's/^/COLLIDE: /'
"##;

#[test]
fn devices_takes_exactly_the_capture_nodes_and_the_real_uart() {
    let Some(h) = vm::harness() else { return };
    let out = h
        .scenario(BODY)
        .file(EDGEPLEX)
        .env("EDGEPLEX_VM_VIVID", "n_devs=2,node_types=0x1,0x20101")
        .timeout(Duration::from_secs(240))
        .run();
    out.assert_passed();
    let table: Vec<&str> = out.lines_with("TABLE: ").collect();
    let v4l: BTreeMap<String, String> = out
        .lines_with("V4L: ")
        .map(|l| {
            let (node, name) = l.split_once(' ').unwrap();
            (node.to_owned(), name.to_owned())
        })
        .collect();
    // This kernel's vivid makes five nodes of n_devs=2 node_types=0x1,0x20101: vid-cap (0),
    // vid-cap, vid-out, meta-cap and meta-out (1).
    let capture = v4l.values().filter(|n| n.ends_with("-vid-cap")).count();
    assert_eq!(capture, 2, "{v4l:?}");
    assert!(
        v4l.len() >= 4,
        "capture, output and metadata nodes: {v4l:?}"
    );
    let devices: BTreeMap<String, serde_json::Value> = out
        .lines_with("DEVICES: ")
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (v["node"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    let mut cams = Vec::new();
    for (node, name) in &v4l {
        let d = &devices[node];
        if name.ends_with("-vid-cap") {
            let stream = d["stream"]["name"]
                .as_str()
                .unwrap_or_else(|| panic!("{node} ({name}) not taken: {d}\n{table:#?}"));
            assert_eq!(d["stream"]["rule"], "cams");
            assert_eq!(d["device"]["driver"], "vivid");
            cams.push(stream.to_owned());
        } else {
            assert_eq!(
                d["not_taken"]["reason"], "not_capture",
                "{node} ({name}) must be refused as no capture node: {d}\n{table:#?}"
            );
        }
    }
    cams.sort();
    assert_eq!(
        cams,
        ["cam-vivid-000-vid-cap", "cam-vivid-001-vid-cap"],
        "{table:#?}"
    );
    // The metadata node is refused for its own capabilities, though the device as a whole
    // captures video.
    let meta = v4l
        .iter()
        .find(|(_, n)| n.ends_with("-meta-cap"))
        .expect("a metadata node")
        .0;
    let msg = devices[meta]["not_taken"]["message"].as_str().unwrap();
    assert!(msg.contains("META_CAPTURE"), "{msg}");

    assert_eq!(
        devices["ttyS0"]["not_taken"]["reason"], "console",
        "{table:#?}"
    );
    assert_eq!(
        devices["ttyS1"]["stream"]["name"], "uart-ttys1",
        "{table:#?}"
    );
    let placeholders: Vec<&String> = devices
        .iter()
        .filter(|(n, d)| n.starts_with("ttyS") && d["not_taken"]["reason"] == "no_uart")
        .map(|(n, _)| n)
        .collect();
    assert!(
        !placeholders.is_empty(),
        "the 8250 placeholders are refused: {table:#?}"
    );
    assert!(table[0].starts_with("NODE "), "{table:#?}");

    // Named by {port}, the two vivid cameras would share cam-vivid-0: neither is taken.
    let collide: Vec<serde_json::Value> = out
        .lines_with("COLLIDE: ")
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let refused: Vec<&serde_json::Value> = collide
        .iter()
        .filter(|v| v["not_taken"]["reason"] == "collision")
        .collect();
    assert_eq!(refused.len(), 2, "{collide:#?}");
    assert!(collide
        .iter()
        .all(|v| v["kind"] != "camera" || v["stream"].is_null()));
}

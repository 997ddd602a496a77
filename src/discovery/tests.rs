//! The rule engine over fixture trees of `/sys` and `/dev` shaped like the kernel's.

#[path = "../../tests/common/devtree.rs"]
mod devtree;

use std::path::PathBuf;

use devtree::{DevTree, Usb};
use toml::Table;

use super::*;
use crate::config::Config;
use crate::source::kinds::StreamConfig;

const CAPTURE: u32 = edgeplex_v4l2::CAP_VIDEO_CAPTURE | 0x0400_0000; // | STREAMING
const META: u32 = edgeplex_v4l2::CAP_META_CAPTURE | 0x0400_0000;
const MPLANE: u32 = edgeplex_v4l2::CAP_VIDEO_CAPTURE_MPLANE;

const C920: Usb = Usb {
    port: "1-1",
    vendor: "046d",
    product: "082d",
    serial: Some("ABCD1234"),
    name: "HD Pro Webcam C920",
};

/// The fixture and the capabilities its video nodes report.
struct Machine {
    tree: DevTree,
    caps: CapsTable,
}

impl Machine {
    fn new() -> Machine {
        Machine {
            tree: DevTree::new(),
            caps: CapsTable::default(),
        }
    }

    fn roots(&self) -> Roots {
        Roots {
            sys: self.tree.sys(),
            dev: self.tree.dev(),
        }
    }

    /// A USB camera: its capture node `video{n}` and, like UVC, a metadata node `video{n+1}`.
    fn uvc(&mut self, n: u32, usb: &Usb) {
        let (cap, meta) = (format!("video{n}"), format!("video{}", n + 1));
        self.tree.usb_camera(&cap, usb, "1.0", 0);
        self.tree.usb_camera(&meta, usb, "1.0", 1);
        self.caps.0.insert(self.tree.dev().join(&cap), Ok(CAPTURE));
        self.caps.0.insert(self.tree.dev().join(&meta), Ok(META));
        let id = format!(
            "usb-{}_{}{}",
            usb.vendor,
            usb.name.replace(' ', "_"),
            usb.serial.map(|s| format!("_{s}")).unwrap_or_default()
        );
        self.tree
            .link("v4l/by-id", &format!("{id}-video-index0"), &cap);
        self.tree
            .link("v4l/by-id", &format!("{id}-video-index1"), &meta);
        let path = format!("pci-0000:00:14.0-usb-0:{}:1.0", &usb.port[2..]);
        self.tree
            .link("v4l/by-path", &format!("{path}-video-index0"), &cap);
        self.tree
            .link("v4l/by-path", &format!("{path}-video-index1"), &meta);
    }

    fn scan(&self) -> Vec<Probe> {
        scan(&self.roots(), &self.caps).expect("scan")
    }

    /// Scan and plan under configuration `toml` (rules and explicit streams; `/dev/` paths
    /// of explicit streams are read under the fixture's `dev/`).
    fn plan(&self, toml: &str) -> Vec<Outcome> {
        let config = config(toml);
        let claims = resolve_claims(&self.roots(), &config.stream_configs());
        plan(&config.discovery, &self.scan(), &claims)
    }
}

fn config(toml: &str) -> Config {
    Config::from_table(toml.parse::<Table>().expect("TOML")).unwrap_or_else(|e| panic!("{e}"))
}

/// `(node, stream name)` of the streams, `(node, reason code)` of the rest.
fn summary(outcomes: &[Outcome]) -> Vec<(String, String)> {
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Stream(p) => (p.device.name.clone(), p.name.clone()),
            Outcome::NotTaken { name, reason, .. } => (name.clone(), format!("!{}", reason.code())),
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn stream<'a>(outcomes: &'a [Outcome], node: &str) -> &'a Planned {
    outcomes
        .iter()
        .find_map(|o| match o {
            Outcome::Stream(p) if p.device.name == node => Some(p),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{node} is no stream: {outcomes:#?}"))
}

fn reason<'a>(outcomes: &'a [Outcome], node: &str) -> &'a Reason {
    outcomes
        .iter()
        .find_map(|o| match o {
            Outcome::NotTaken { name, reason, .. } if name == node => Some(reason),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{node} was taken: {outcomes:#?}"))
}

fn device_path(p: &Planned) -> PathBuf {
    plan::device_path(&p.config).unwrap().to_owned()
}

const CAMS: &str = r#"
[discovery.rule.cams]
kind = "camera"
name = ["cam-{serial}", "cam-{port}"]
width = 1280
height = 720
"#;

#[test]
fn a_uvc_camera_is_read_like_udev_reads_it() {
    let mut m = Machine::new();
    m.uvc(0, &C920);
    let probes = m.scan();
    let d = probes[0].result.as_ref().unwrap();
    assert_eq!(d.name, "video0");
    assert_eq!(d.devnode, m.tree.dev().join("video0"));
    assert_eq!(d.kind, Kind::Camera);
    assert_eq!(d.driver.as_deref(), Some("uvcvideo"));
    assert_eq!(d.vendor.as_deref(), Some("046d"));
    assert_eq!(d.product.as_deref(), Some("082d"));
    assert_eq!(d.serial.as_deref(), Some("ABCD1234"));
    assert_eq!(d.port.as_deref(), Some("1-1"));
    assert_eq!(d.index, Some(0));
    assert_eq!(d.label.as_deref(), Some("HD Pro Webcam C920"));
    assert_eq!(
        d.by_id,
        vec![m
            .tree
            .dev()
            .join("v4l/by-id/usb-046d_HD_Pro_Webcam_C920_ABCD1234-video-index0")]
    );
    assert_eq!(
        d.by_path,
        vec![m
            .tree
            .dev()
            .join("v4l/by-path/pci-0000:00:14.0-usb-0:1:1.0-video-index0")]
    );
    // As JSON: the device, or the reason.
    let json = serde_json::to_value(&probes[0]).unwrap();
    assert_eq!(json["device"]["serial"], "ABCD1234", "{json}");
    assert_eq!(
        serde_json::to_value(&probes[1]).unwrap()["not_taken"]["reason"],
        "not_capture"
    );
    // The metadata node of the same camera is seen and refused, with its capabilities.
    let meta = probes[1].result.as_ref().unwrap_err();
    assert_eq!(meta.code(), "not_capture");
    assert!(meta.to_string().contains("META_CAPTURE"), "{meta}");
}

#[test]
fn only_capture_nodes_become_streams() {
    let mut m = Machine::new();
    m.uvc(0, &C920);
    // A multi-planar capture node (a platform camera) and an output node.
    m.tree.platform_camera("video2", "vivid.0", "vivid", 0);
    m.caps.0.insert(m.tree.dev().join("video2"), Ok(MPLANE));
    m.tree.platform_camera("video3", "vivid.1", "vivid", 1);
    m.caps
        .0
        .insert(m.tree.dev().join("video3"), Ok(0x0000_0002 | 0x0400_0000));
    let out = m.plan(&format!("{CAMS}\n[discovery.rule.vivid]\nkind = \"camera\"\ndriver = \"vivid\"\nname = \"vivid-{{port}}\"\n"));
    assert_eq!(
        summary(&out),
        pairs(&[
            ("video0", "cam-abcd1234"),
            ("video1", "!not_capture"),
            ("video2", "cam-vivid-0"),
            ("video3", "!not_capture"),
        ])
    );
    // `cams` sorts before `vivid`: the first rule in name order takes video2.
    assert_eq!(stream(&out, "video2").rule, "cams");
    assert!(reason(&out, "video3").to_string().contains("VIDEO_OUTPUT"));
}

#[test]
fn the_stream_gets_the_rules_settings_and_a_stable_path() {
    let mut m = Machine::new();
    m.uvc(0, &C920);
    let out = m.plan(CAMS);
    let p = stream(&out, "video0");
    assert_eq!(p.rule, "cams");
    let StreamConfig::Camera(c) = &p.config else {
        panic!("{:?}", p.config)
    };
    assert_eq!((c.width, c.height, c.fps), (1280, 720, 30));
    // With a serial number, the by-id link names this very camera wherever it is plugged.
    assert_eq!(
        c.device,
        m.tree
            .dev()
            .join("v4l/by-id/usb-046d_HD_Pro_Webcam_C920_ABCD1234-video-index0")
    );
}

#[test]
fn two_identical_cameras_without_serial_are_named_by_port() {
    let mut m = Machine::new();
    let a = Usb {
        serial: None,
        ..C920
    };
    let b = Usb { port: "1-2", ..a };
    m.uvc(0, &a);
    m.uvc(2, &b);
    let out = m.plan(CAMS);
    assert_eq!(
        summary(&out),
        pairs(&[
            ("video0", "cam-1-1"),
            ("video1", "!not_capture"),
            ("video2", "cam-1-2"),
            ("video3", "!not_capture"),
        ])
    );
    // Without a serial number udev's by-id link is the same name for both (the last one wins):
    // the stream follows the port's by-path link instead.
    assert_eq!(
        device_path(stream(&out, "video2")),
        m.tree
            .dev()
            .join("v4l/by-path/pci-0000:00:14.0-usb-0:2:1.0-video-index0")
    );
}

#[test]
fn two_cameras_with_the_same_serial_take_neither_name() {
    let mut m = Machine::new();
    let b = Usb {
        port: "1-2",
        ..C920
    };
    m.uvc(0, &C920);
    let rule = "[discovery.rule.cams]\nkind = \"camera\"\nname = \"cam-{serial}\"\n";
    // Alone, the first camera is cam-abcd1234.
    assert_eq!(stream(&m.plan(rule), "video0").name, "cam-abcd1234");
    m.uvc(2, &b);
    let out = m.plan(rule);
    for (node, other) in [("video0", "video2"), ("video2", "video0")] {
        let r = reason(&out, node);
        assert_eq!(r.code(), "collision", "{r}");
        let text = r.to_string();
        assert!(text.contains("cam-abcd1234"), "{text}");
        assert!(
            text.contains(&m.tree.dev().join(other).display().to_string()),
            "{text}"
        );
        assert!(text.contains("{port}"), "says what to do: {text}");
    }
    // The same outcome whatever order the probes come in.
    let config = config(rule);
    let mut probes = m.scan();
    let forward = plan(&config.discovery, &probes, &[]);
    probes.reverse();
    assert_eq!(plan(&config.discovery, &probes, &[]), forward);
}

#[test]
fn a_camera_without_serial_lacks_the_field() {
    let mut m = Machine::new();
    m.uvc(
        0,
        &Usb {
            serial: None,
            ..C920
        },
    );
    let rule = "[discovery.rule.cams]\nkind = \"camera\"\nname = \"cam-{serial}\"\n";
    let out = m.plan(rule);
    let r = reason(&out, "video0");
    assert_eq!(r.code(), "missing_field");
    assert!(r.to_string().contains("{serial}"), "{r}");
    assert_eq!(r.rule(), Some("cams"));
    // An empty serial file is no serial either.
    let mut m = Machine::new();
    m.uvc(
        0,
        &Usb {
            serial: Some("  "),
            ..C920
        },
    );
    assert_eq!(reason(&m.plan(rule), "video0").code(), "missing_field");
}

#[test]
fn a_changed_by_id_name_keeps_the_stream_name_and_moves_the_path() {
    let mut m = Machine::new();
    m.uvc(0, &C920);
    let before = m.plan(CAMS);
    // New firmware reports another product string: udev's by-id link changes, the serial does
    // not.
    m.tree.unlink(
        "v4l/by-id",
        "usb-046d_HD_Pro_Webcam_C920_ABCD1234-video-index0",
    );
    let new = m.tree.link(
        "v4l/by-id",
        "usb-046d_C920_PRO_ABCD1234-video-index0",
        "video0",
    );
    let after = m.plan(CAMS);
    assert_eq!(
        stream(&before, "video0").name,
        stream(&after, "video0").name
    );
    assert_eq!(device_path(stream(&after, "video0")), new);
    // A rule that names by {by_id} follows the link's name: that is what {by_id} means.
    let by_id = "[discovery.rule.c]\nkind = \"camera\"\nname = \"{by_id}\"\n";
    assert_eq!(
        stream(&m.plan(by_id), "video0").name,
        "usb-046d_c920_pro_abcd1234-video-index0"
    );
}

#[test]
fn a_device_an_explicit_stream_names_is_left_to_it() {
    let mut m = Machine::new();
    m.uvc(0, &C920);
    m.uvc(
        2,
        &Usb {
            port: "1-2",
            serial: Some("XYZ"),
            ..C920
        },
    );
    // cam0 names the first camera by its by-id link, cam1 the second by its node.
    let explicit = format!(
        "{CAMS}\n[stream.cam0]\ntype = \"camera\"\ndevice = \"/dev/v4l/by-id/usb-046d_HD_Pro_Webcam_C920_ABCD1234-video-index0\"\n\
         [stream.cam1]\ntype = \"camera\"\ndevice = \"/dev/video2\"\n"
    );
    let out = m.plan(&explicit);
    assert_eq!(
        reason(&out, "video0"),
        &Reason::Claimed {
            stream: "cam0".into()
        }
    );
    assert_eq!(
        reason(&out, "video2"),
        &Reason::Claimed {
            stream: "cam1".into()
        }
    );
    // A by-path link that resolves to the node claims it too (compared after resolving).
    let by_path = format!(
        "{CAMS}\n[stream.cam0]\ntype = \"camera\"\ndevice = \"/dev/v4l/by-path/../by-path/pci-0000:00:14.0-usb-0:2:1.0-video-index0\"\n"
    );
    let out = m.plan(&by_path);
    assert_eq!(reason(&out, "video2").code(), "claimed");
    assert_eq!(stream(&out, "video0").name, "cam-abcd1234");
}

#[test]
fn a_rule_never_takes_an_explicit_streams_name() {
    let mut m = Machine::new();
    m.uvc(0, &C920);
    let toml = format!("{CAMS}\n[stream.cam-abcd1234]\ntype = \"test-pattern\"\n");
    let r = reason(&m.plan(&toml), "video0").clone();
    assert_eq!(r.code(), "name_taken", "{r}");
}

#[test]
fn max_streams_keeps_the_first_names() {
    let mut m = Machine::new();
    for (i, port) in ["1-3", "1-1", "1-2"].iter().enumerate() {
        m.uvc(
            2 * i as u32,
            &Usb {
                port,
                serial: None,
                ..C920
            },
        );
    }
    let out = m.plan(&format!("{CAMS}\n[discovery]\nmax_streams = 2\n"));
    let taken: Vec<&str> = out
        .iter()
        .filter_map(|o| match o {
            Outcome::Stream(p) => Some(p.name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(taken, ["cam-1-1", "cam-1-2"]);
    let r = reason(&out, "video0");
    assert_eq!(r.code(), "max_streams");
    assert!(r.to_string().contains("cam-1-3"), "{r}");
    // Running streams keep their places: cam-1-3 runs, a device plugged in later that sorts
    // first (cam-1-1) does not stop it.
    let c = config(&format!("{CAMS}\n[discovery]\nmax_streams = 2\n"));
    let probes = m.scan();
    let running = ["cam-1-3".to_owned(), "cam-1-2".to_owned()];
    let out = plan_keeping(&c.discovery, &probes, &[], &running);
    assert_eq!(stream(&out, "video0").name, "cam-1-3");
    assert_eq!(stream(&out, "video4").name, "cam-1-2");
    assert_eq!(reason(&out, "video2").code(), "max_streams");
    // 0 takes nothing.
    let out = m.plan(&format!("{CAMS}\n[discovery]\nmax_streams = 0\n"));
    assert!(out.iter().all(|o| matches!(o, Outcome::NotTaken { .. })));
}

#[test]
fn no_rule_takes_nothing() {
    let mut m = Machine::new();
    m.uvc(0, &C920);
    assert_eq!(reason(&m.plan(""), "video0"), &Reason::NoRule);
}

#[test]
fn rules_match_on_every_field() {
    let mut m = Machine::new();
    m.uvc(0, &C920);
    let cases = [
        ("driver = \"uvc*\"", true),
        ("driver = \"vivid\"", false),
        ("vendor = \"046D\"", true),
        ("vendor = \"1234\"", false),
        ("product = \"082d\"", true),
        ("product = \"082e\"", false),
        ("serial = \"ABCD*\"", true),
        ("serial = \"abcd*\"", false),
        ("by_id = \"*C920*-index0\"", true),
        ("by_id = \"*-index1\"", false),
        ("by_path = \"pci-*-usb-0:1:*\"", true),
        ("by_path = \"platform-*\"", false),
        (
            "vendor = \"046d\"\nproduct = \"082d\"\nserial = \"ABCD1234\"",
            true,
        ),
        ("vendor = \"046d\"\nproduct = \"0000\"", false),
    ];
    for (keys, want) in cases {
        let toml =
            format!("[discovery.rule.r]\nkind = \"camera\"\nname = \"c-{{serial}}\"\n{keys}\n");
        let out = m.plan(&toml);
        let taken = matches!(&out[0], Outcome::Stream(_));
        assert_eq!(taken, want, "{keys}: {:?}", summary(&out));
    }
    // A serial rule never takes a camera.
    let out = m.plan("[discovery.rule.r]\nkind = \"serial\"\nname = \"s-{node}\"\n");
    assert_eq!(reason(&out, "video0"), &Reason::NoRule);
}

#[test]
fn serial_ports_with_a_real_uart_or_usb_driver() {
    let m = Machine::new();
    let ftdi = Usb {
        port: "1-4",
        vendor: "0403",
        product: "6001",
        serial: Some("A50285BI"),
        name: "FT232R USB UART",
    };
    m.tree.usb_serial("ttyUSB0", &ftdi, "ftdi_sio");
    m.tree.link(
        "serial/by-id",
        "usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0",
        "ttyUSB0",
    );
    let acm = Usb {
        port: "1-5",
        vendor: "1546",
        product: "01a8",
        serial: None,
        name: "u-blox GNSS receiver",
    };
    m.tree.usb_serial("ttyACM0", &acm, "cdc_acm");
    m.tree
        .link("serial/by-path", "pci-0000:00:14.0-usb-0:5:1.0", "ttyACM0");
    m.tree.pci_serial("ttyS1", "0000:00:04.0");
    m.tree.pci_serial("ttyS0", "0000:00:03.0");
    m.tree.console("tty0 ttyS0");
    m.tree.placeholder_serial("ttyS2");
    m.tree.placeholder_serial("ttyS10");
    m.tree.virtual_tty("tty1");
    let out = m.plan(
        r#"
[discovery.rule.usb]
kind = "serial"
driver = "{ftdi_sio,cdc_acm}"
name = ["tty-{serial}", "tty-{port}"]
baud = 115200
[discovery.rule.uart]
kind = "serial"
driver = "serial"
name = "uart-{port}"
"#,
    );
    // glob has no {a,b}: the usb rule matches nothing; uart takes the PCI port.
    assert_eq!(
        summary(&out),
        pairs(&[
            ("ttyACM0", "!no_rule"),
            ("ttyS0", "!console"),
            ("ttyS1", "uart-0000-00-04-0"),
            ("ttyS2", "!no_uart"),
            ("ttyS10", "!no_uart"),
            ("ttyUSB0", "!no_rule"),
        ])
    );
    let out = m.plan(
        r#"
[discovery.rule.usb]
kind = "serial"
vendor = "0403"
name = ["tty-{serial}", "tty-{port}"]
baud = 115200
[discovery.rule.zgnss]
kind = "serial"
driver = "cdc_acm"
name = ["gnss-{serial}", "gnss-{port}"]
"#,
    );
    let usb = stream(&out, "ttyUSB0");
    assert_eq!(usb.name, "tty-a50285bi");
    let StreamConfig::Serial(s) = &usb.config else {
        panic!()
    };
    assert_eq!(s.baud, 115200);
    assert_eq!(
        s.device,
        m.tree
            .dev()
            .join("serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0")
    );
    let d = &usb.device;
    assert_eq!(d.driver.as_deref(), Some("ftdi_sio"));
    assert_eq!(d.port.as_deref(), Some("1-4"));
    let gnss = stream(&out, "ttyACM0");
    assert_eq!(gnss.name, "gnss-1-5");
    assert_eq!(
        device_path(gnss),
        m.tree
            .dev()
            .join("serial/by-path/pci-0000:00:14.0-usb-0:5:1.0")
    );
    // The virtual terminal is no candidate at all.
    assert!(m.scan().iter().all(|p| p.name != "tty1"));
    assert_eq!(
        probe_one(&m.roots(), &m.caps, "tty1").result,
        Err(Reason::NotSerial)
    );
}

#[test]
fn probe_one_sees_a_node_arrive_and_leave() {
    let mut m = Machine::new();
    let none = probe_one(&m.roots(), &m.caps, "video0");
    assert_eq!(none.result.unwrap_err().code(), "unknown");
    m.uvc(0, &C920);
    let p = probe_one(&m.roots(), &m.caps, "video0");
    assert_eq!(p.result.unwrap().serial.as_deref(), Some("ABCD1234"));
    // The node is in sysfs before udev (or devtmpfs) made /dev/video0.
    std::fs::remove_file(m.tree.dev().join("video0")).unwrap();
    assert_eq!(
        probe_one(&m.roots(), &m.caps, "video0").result,
        Err(Reason::NoDeviceNode)
    );
    m.tree.remove("video0");
    m.tree.remove("video1");
    assert!(m.scan().is_empty(), "{:?}", m.scan());
}

#[test]
fn templates_are_sanitised_into_stream_names() {
    let mut m = Machine::new();
    m.uvc(
        0,
        &Usb {
            serial: Some("Sn: 12/ab\u{e9}"),
            ..C920
        },
    );
    let rule = |t: &str| format!("[discovery.rule.r]\nkind = \"camera\"\nname = {t:?}\n");
    let cases = [
        ("Cam_{serial}", Some("cam_sn-12-ab\u{e9}")),
        ("{vendor}:{product}", Some("046d-082d")),
        ("--{node}--", Some("video0")),
        ("{kind}-{index}-{driver}", Some("camera-0-uvcvideo")),
        ("{label}", Some("hd-pro-webcam-c920")),
    ];
    // é is not a-z: it becomes '-' and a trailing '-' goes.
    let cases = cases.map(|(t, n)| (t, n.map(|n| n.replace('\u{e9}', ""))));
    for (template, want) in cases {
        let out = m.plan(&rule(template));
        match want {
            Some(name) => assert_eq!(stream(&out, "video0").name, name, "{template}"),
            None => panic!(),
        }
    }
    let long = "x".repeat(100) + "{serial}";
    let out = m.plan(&rule(&long));
    assert_eq!(stream(&out, "video0").name.len(), 63);
    // A serial of nothing but punctuation leaves no name.
    let mut m = Machine::new();
    m.uvc(
        0,
        &Usb {
            serial: Some("!!!"),
            ..C920
        },
    );
    let r = reason(&m.plan(&rule("{serial}")), "video0").clone();
    assert_eq!(r.code(), "bad_name", "{r}");
}

#[test]
fn hostile_trees_give_reasons_not_panics() {
    let mut m = Machine::new();
    m.uvc(0, &C920);
    // An attribute that cannot be read (a directory where the serial file should be; root can
    // read any file, so a mode would prove nothing here).
    let usb = m.tree.path("sys/devices/pci0000:00/0000:00:14.0/usb1/1-1");
    std::fs::remove_file(usb.join("serial")).unwrap();
    std::fs::create_dir(usb.join("serial")).unwrap();
    let r = probe_one(&m.roots(), &m.caps, "video0").result.unwrap_err();
    assert_eq!(r.code(), "unreadable");
    assert!(r.to_string().contains("serial"), "{r}");
    // A class entry that is a symlink loop.
    let class = m.tree.sys().join("class/video4linux");
    std::os::unix::fs::symlink("video7", class.join("video7")).unwrap();
    std::fs::write(m.tree.dev().join("video7"), b"").unwrap();
    m.caps.0.insert(m.tree.dev().join("video7"), Ok(CAPTURE));
    let r = probe_one(&m.roots(), &m.caps, "video7").result.unwrap_err();
    assert_eq!(r.code(), "unreadable", "{r}");
    // A by-id link that loops, and one that dangles, are no one's links.
    std::os::unix::fs::symlink("loop", m.tree.dev().join("v4l/by-id/loop")).unwrap();
    std::os::unix::fs::symlink("../../gone", m.tree.dev().join("v4l/by-id/gone")).unwrap();
    // A FIFO where an attribute should be does not hang the scan.
    let vdir = m
        .tree
        .path("sys/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/video4linux/video1");
    std::fs::remove_file(vdir.join("name")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(vdir.join("name"))
        .status()
        .is_ok_and(|s| s.success());
    // Capabilities that cannot be read, and outside text with newlines in it.
    m.tree.platform_camera("video8", "vivid.0", "vivid", 0);
    m.caps.0.insert(
        m.tree.dev().join("video8"),
        Err("cannot open\nvideo8: permission denied".into()),
    );
    // Node names with a newline in them (sysfs names are outside input too), reported in each
    // other's collision.
    for n in ["video\n9", "video\n10"] {
        m.tree.platform_camera(n, "vivid.9", "vivid", 0);
        m.caps.0.insert(m.tree.dev().join(n), Ok(CAPTURE));
    }
    let probes = m.scan();
    let out = plan(&config(CAMS).discovery, &probes, &[]);
    assert_eq!(reason(&out, "video\n9").code(), "collision");
    for o in &out {
        if let Outcome::NotTaken { reason, .. } = o {
            assert_eq!(reason.to_string().lines().count(), 1, "{reason}");
        }
    }
    assert_eq!(reason(&out, "video8").code(), "caps_unreadable");
    if fifo {
        assert_eq!(reason(&out, "video1").code(), "not_capture");
    }
    // Names from events are outside input too.
    for name in ["", ".", "..", "../../etc/passwd", "a\0b", "sda"] {
        let p = probe_one(&m.roots(), &m.caps, name);
        assert_eq!(p.result.unwrap_err().code(), "unknown", "{name:?}");
    }
    // A sys root that is not one is one error line.
    let bad = Roots {
        sys: m.tree.dev(),
        dev: m.tree.dev(),
    };
    let e = scan(&bad, &m.caps).unwrap_err().to_string();
    assert!(e.contains("not a sysfs root"), "{e}");
}

#[test]
fn rule_configuration_errors_name_the_key() {
    let r = "[discovery.rule.r]\n";
    let cases = [
        (
            format!("{r}name = \"x\""),
            "discovery.rule.r.kind is required",
        ),
        (
            format!("{r}kind = \"disk\"\nname = \"x\""),
            "discovery.rule.r.kind = \"disk\" is unknown",
        ),
        (
            format!("{r}kind = \"camera\""),
            "discovery.rule.r.name is required",
        ),
        (
            format!("{r}kind = \"camera\"\nname = \"cam-{{sn}}\""),
            "unknown field {sn}",
        ),
        (
            format!("{r}kind = \"camera\"\nname = \"cam-{{serial\""),
            "'{' without '}'",
        ),
        (
            format!("{r}kind = \"camera\"\nname = \"cam-}}\""),
            "'}' without '{'",
        ),
        (
            format!("{r}kind = \"camera\"\nname = []"),
            "discovery.rule.r.name = [] must be",
        ),
        (
            format!("{r}kind = \"camera\"\nname = [1]"),
            "discovery.rule.r.name: 1 must be a string",
        ),
        (
            format!("{r}kind = \"camera\"\nname = \"\""),
            "1 to 256 characters",
        ),
        (
            format!("{r}kind = \"camera\"\nname = \"x\"\nserial = \"[\""),
            "discovery.rule.r.serial = \"[\" is not a valid pattern",
        ),
        (
            format!("{r}kind = \"camera\"\nname = \"x\"\nby_id = \"a/b\""),
            "without '/'",
        ),
        (
            format!("{r}kind = \"camera\"\nname = \"x\"\nvendor = \"46d\""),
            "discovery.rule.r.vendor = \"46d\" is not a USB ID",
        ),
        (
            format!("{r}kind = \"camera\"\nname = \"x\"\nvendor = 1133"),
            "discovery.rule.r.vendor = 1133 must be a string",
        ),
        (
            format!("{r}kind = \"camera\"\nname = \"x\"\ndevice = \"/dev/video0\""),
            "discovery.rule.r.device: a rule fills in",
        ),
        (
            format!("{r}kind = \"camera\"\nname = \"x\"\ntype = \"serial\""),
            "discovery.rule.r.type",
        ),
        (
            format!("{r}kind = \"camera\"\nname = \"x\"\nwidth = 0"),
            "discovery.rule.r.width = 0 is out of range",
        ),
        (
            format!("{r}kind = \"camera\"\nname = \"x\"\nbaud = 9600"),
            "discovery.rule.r.baud is not a known key",
        ),
        (
            format!("{r}kind = \"serial\"\nname = \"x\"\nbaud = 1"),
            "discovery.rule.r.baud",
        ),
        (
            "[discovery.rule.R]\nkind = \"camera\"\nname = \"x\"".into(),
            "rule name \"R\"",
        ),
        (
            "[discovery]\nrule = 1".into(),
            "discovery.rule = 1 must be a table",
        ),
        (
            "[discovery.rule]\nr = 1".into(),
            "discovery.rule.r must be a table",
        ),
        (
            "[discovery]\nmax_streams = 5000".into(),
            "discovery.max_streams = 5000 is out of range",
        ),
        (
            "[discovery]\nmax_streams = -1".into(),
            "discovery.max_streams",
        ),
        (
            "[discovery]\ngrace_secs = nan".into(),
            "discovery.grace_secs = NaN is out of range",
        ),
        (
            "[discovery]\ngrace_secs = -1".into(),
            "discovery.grace_secs = -1 is out of range",
        ),
        (
            "[discovery]\ngrace = 1".into(),
            "discovery.grace is not a known key",
        ),
        ("discovery = 1".into(), "discovery = 1 must be a table"),
    ];
    for (text, want) in cases {
        let e = Config::from_table(text.parse::<Table>().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{text:?}: got {e:?}, want {want:?}");
        assert_eq!(e.lines().count(), 1, "one line: {e:?}");
    }
}

#[test]
fn sanitise_keeps_names_valid() {
    use proptest::prelude::*;
    proptest!(|(raw in any::<String>())| {
        let n = rules::sanitise(&raw);
        prop_assert!(n.len() <= rules::MAX_NAME_LEN);
        prop_assert!(n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'));
        if let Some(first) = n.bytes().next() {
            prop_assert!(first.is_ascii_alphanumeric());
            prop_assert!(n.bytes().last().unwrap().is_ascii_alphanumeric());
        }
    });
}

#[test]
fn templates_never_panic_on_any_text() {
    use proptest::prelude::*;
    proptest!(|(text in "[ -~]{0,40}")| {
        if let Ok(t) = Template::parse(&text) {
            prop_assert!(t.fields().all(|f| TEMPLATE_FIELDS.contains(&f)));
        }
    });
}

#[test]
fn metrics_show_the_plan() {
    let mut m = Machine::new();
    m.uvc(0, &C920);
    m.tree.placeholder_serial("ttyS3");
    let rules =
        format!("{CAMS}\n[discovery.rule.unused]\nkind = \"serial\"\nname = \"{{node}}\"\n");
    let config = config(&rules);
    let registry = crate::metrics::new_registry().unwrap();
    let metrics = crate::metrics::DiscoveryMetrics::register(&registry).unwrap();
    metrics.observe(&config.discovery, &plan(&config.discovery, &m.scan(), &[]));
    metrics.event("add");
    let text = crate::metrics::encode(&registry);
    for line in [
        "edgeplex_discovery_devices{kind=\"camera\",state=\"stream\"} 1",
        "edgeplex_discovery_devices{kind=\"camera\",state=\"not_capture\"} 1",
        "edgeplex_discovery_devices{kind=\"serial\",state=\"no_uart\"} 1",
        "edgeplex_discovery_rule_streams{rule=\"cams\"} 1",
        "edgeplex_discovery_rule_streams{rule=\"unused\"} 0",
        "edgeplex_discovery_events_total{action=\"add\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    // The camera leaves: its states go, the rule shows 0.
    m.tree.remove("video0");
    m.tree.remove("video1");
    metrics.observe(&config.discovery, &plan(&config.discovery, &m.scan(), &[]));
    let text = crate::metrics::encode(&registry);
    assert!(!text.contains("kind=\"camera\""), "{text}");
    assert!(
        text.contains("edgeplex_discovery_rule_streams{rule=\"cams\"} 0"),
        "{text}"
    );
}

/// The rules docs/discovery.md shows load, and do what the page says with its cameras.
#[test]
fn the_documented_rules_load() {
    let doc = include_str!("../../docs/discovery.md");
    let block = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a toml block");
    let c = config(block);
    assert_eq!(c.discovery.rules.len(), 2);
    let mut m = Machine::new();
    m.uvc(
        0,
        &Usb {
            serial: None,
            ..C920
        },
    );
    let out = plan(&c.discovery, &m.scan(), &[]);
    assert_eq!(stream(&out, "video0").name, "cam-1-1");
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(prop_oneof![
            Just("ABC".to_owned()),
            Just("abc".to_owned()),
            Just(" ".to_owned()),
            Just("!!".to_owned()),
            Just("a\nb".to_owned()),
            "[ -~]{0,8}",
            "\\PC{0,6}",
        ])
    }

    prop_compose! {
        fn device()(
            camera in any::<bool>(),
            n in 0u32..6,
            driver in text(), vendor in text(), product in text(), serial in text(),
            port in text(), label in text(),
            id in proptest::option::of(prop_oneof![Just("usb-x"), Just("usb-y"), Just("a:b")]),
        ) -> Probe {
            let name = if camera { format!("video{n}") } else { format!("ttyUSB{n}") };
            let devnode = PathBuf::from("/dev").join(&name);
            let link = |dir: &str| id.map(|i| PathBuf::from(dir).join(i)).into_iter().collect();
            Probe {
                name: name.clone(),
                devnode: devnode.clone(),
                result: Ok(Device {
                    name,
                    devnode,
                    kind: if camera { Kind::Camera } else { Kind::Serial },
                    driver, vendor, product, serial, port,
                    index: Some(n),
                    label,
                    by_id: link("/dev/v4l/by-id"),
                    by_path: link("/dev/v4l/by-path"),
                }),
            }
        }
    }

    fn rules() -> impl Strategy<Value = String> {
        let template = prop_oneof![
            Just("\"c-{serial}\""),
            Just("[\"c-{serial}\", \"c-{port}\"]"),
            Just("\"{label}\""),
            Just("\"{by_id}\""),
            Just("\"x\""),
            Just("\"{driver}{vendor}{product}\""),
            Just("[\"{node}\"]"),
        ];
        (
            proptest::collection::vec(
                (
                    any::<bool>(),
                    template,
                    proptest::option::of(prop_oneof![
                        Just("serial = \"A*\""),
                        Just("driver = \"*\""),
                        Just("by_id = \"usb-*\"")
                    ]),
                ),
                0..4,
            ),
            0u32..5,
        )
            .prop_map(|(rules, max)| {
                let mut s = format!("[discovery]\nmax_streams = {max}\n");
                for (i, (camera, t, m)) in rules.into_iter().enumerate() {
                    let kind = if camera { "camera" } else { "serial" };
                    s += &format!(
                        "[discovery.rule.r{i}]\nkind = \"{kind}\"\nname = {t}\n{}\n",
                        m.unwrap_or("")
                    );
                }
                s
            })
    }

    proptest! {
        /// Whatever the devices say and the rules ask: one outcome per node, valid and unique
        /// stream names, at most max_streams of them, one-line reasons, the same result in any
        /// input order.
        #[test]
        fn plans_are_sound(mut probes in proptest::collection::vec(device(), 0..8), rules in rules()) {
            probes.sort_by(|a, b| a.name.cmp(&b.name));
            probes.dedup_by(|a, b| a.name == b.name);
            let c = config(&rules);
            let out = plan(&c.discovery, &probes, &[]);
            prop_assert_eq!(out.len(), probes.len());
            let mut names = std::collections::BTreeSet::new();
            for o in &out {
                match o {
                    Outcome::Stream(p) => {
                        prop_assert!(names.insert(p.name.clone()), "{} twice", p.name);
                        let n = p.name.as_bytes();
                        prop_assert!(!n.is_empty() && n.len() <= 63 && n[0].is_ascii_alphanumeric());
                        prop_assert!(n.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_'));
                    }
                    Outcome::NotTaken { reason, .. } => {
                        prop_assert_eq!(reason.to_string().lines().count(), 1, "{}", reason);
                    }
                }
            }
            prop_assert!(names.len() <= c.discovery.max_streams as usize);
            probes.reverse();
            prop_assert_eq!(plan(&c.discovery, &probes, &[]), out);
        }
    }
}

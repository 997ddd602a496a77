//! The front door: what `edgeplex` says and exits with when a person gets something wrong, and
//! what it prints for people.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use edgeplex::ring::{CreateOptions, Meta, RingSpec, StreamKind, VideoFormat, Writer};

const EDGEPLEX: &str = env!("CARGO_BIN_EXE_edgeplex");

fn edgeplex(args: &[&str]) -> Output {
    let mut cmd = Command::new(EDGEPLEX);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("EDGEPLEX_")) {
        cmd.env_remove(k);
    }
    cmd.args(args).stdin(Stdio::null()).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Argument errors keep clap's whole message: the missing argument's name, the allowed values,
/// a similar subcommand. Still exit 64, and nothing on stdout.
#[test]
fn usage_errors_keep_claps_whole_message() {
    let cases: [(&[&str], &[&str]); 4] = [
        (&["ring", "ls"], &["<DIR>", "Usage: edgeplex ring ls"]),
        (
            &["ring", "cat", "x.ring", "--from", "latest"],
            &["'latest'", "oldest", "newest", "next"],
        ),
        (&["runn"], &["'runn'", "similar", "run"]),
        (&["export", "x.ring"], &["--out"]),
    ];
    for (args, wants) in cases {
        let o = edgeplex(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}");
        for want in wants {
            assert!(
                err.contains(want),
                "{args:?}: {err:?} should mention {want}"
            );
        }
    }
    let help = edgeplex(&["run", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--check"));
}

/// A bad demo flag is a usage error (64) that names the flag, and `localhost` is an address.
#[test]
fn demo_flags_are_checked_like_configuration() {
    for (args, want) in [
        (&["demo", "--fps", "0"][..], "--fps = 0"),
        (
            &["demo", "--metrics-listen", "nowhere"][..],
            "--metrics-listen",
        ),
        (&["demo", "--duration", "nan"][..], "--duration"),
    ] {
        let o = edgeplex(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = common::shm_dir();
    let listen = format!("localhost:{port}");
    let o = edgeplex(&[
        "demo",
        "--duration",
        "0.5",
        "--metrics-listen",
        &listen,
        "--ring-dir",
        dir.path().to_str().unwrap(),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        out.contains(&format!("curl http://127.0.0.1:{port}/metrics")),
        "{out}"
    );
}

/// `run --check` prints TOML that `run` accepts and that means the same configuration.
#[test]
fn run_check_prints_toml_that_run_accepts() {
    let dir = common::shm_dir();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/edgeplex.example.toml");
    let rings = dir.path().join("rings");
    let ring_dir = rings.to_str().unwrap();
    let first = edgeplex(&[
        "run",
        "--check",
        "--config",
        example,
        "--ring-dir",
        ring_dir,
    ]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let printed = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(printed.contains("[stream.cam0]"), "{printed}");
    assert!(!printed.contains("Config {"), "a Debug dump: {printed}");
    let file = dir.path().join("printed.toml");
    std::fs::write(&file, &printed).unwrap();
    let again = edgeplex(&["run", "--check", "--config", file.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(String::from_utf8_lossy(&again.stdout), printed);

    let failover = edgeplex(&[
        "failover",
        "--check",
        "--namespace",
        "ops",
        "--kubeconfig",
        "/k",
    ]);
    assert_eq!(failover.status.code(), Some(0), "{}", stderr(&failover));
    let text = String::from_utf8_lossy(&failover.stdout);
    assert!(
        text.contains("[failover]") && text.contains("namespace = \"ops\""),
        "{text}"
    );
    assert!(text.contains("mode = \"kubeconfig\""), "{text}");
}

/// One loader for both commands: the same environment rule and error style.
#[test]
fn failover_reads_the_same_environment_rule() {
    let mut cmd = Command::new(EDGEPLEX);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("EDGEPLEX_")) {
        cmd.env_remove(k);
    }
    let o = cmd
        .args(["failover", "--check", "--kubeconfig", "/k"])
        .env("EDGEPLEX_FAILOVER__POLL_INTERVAL_SECS", "0")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(64), "{err}");
    assert!(err.contains("failover.poll_interval_secs = 0"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// A metrics address that cannot be bound is found before any ring is written: nothing is left
/// behind with a dead writer.
#[test]
fn an_unbindable_metrics_port_leaves_no_rings() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = common::shm_dir();
    let rings = dir.path().join("rings");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[ring]\ndir = {:?}\n[kube]\nmode = \"off\"\n[stream.cam0]\ntype = \"test-pattern\"\n",
            rings.display()
        ),
    )
    .unwrap();
    let o = edgeplex(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--metrics-listen",
        &addr,
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(64), "{err}");
    assert!(err.contains("cannot serve"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&rings)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "rings left behind: {left:?}");
}

fn video_ring(dir: &Path) -> (std::path::PathBuf, Writer) {
    let path = dir.join("cam0.ring");
    let spec = RingSpec {
        name: "cam0".into(),
        kind: StreamKind::Video,
        slot_count: 4,
        slot_size: 4096,
        video: Some(VideoFormat {
            width: 32,
            height: 2,
            fourcc: u32::from_le_bytes(*b"YUYV"),
            stride: 64,
        }),
    };
    let mut w = Writer::open(&path, &spec, &CreateOptions::default()).unwrap();
    for _ in 0..3 {
        w.publish(&[0x1b; 128], Meta::default()).unwrap();
    }
    (path, w)
}

/// `ring cat` does not write video into a terminal unless asked to; a pipe gets it as before.
#[test]
fn ring_cat_refuses_to_write_video_to_a_terminal() {
    let dir = common::shm_dir();
    let (path, _w) = video_ring(dir.path());
    let path = path.to_str().unwrap();
    // `script` runs the command with its stdout on a pseudo-terminal.
    let on_tty = |extra: &str| {
        let cmd =
            format!("{EDGEPLEX} ring cat {path} --from oldest --count 3 {extra}; echo EXIT=$?");
        let o = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .expect("script (util-linux) runs a command on a terminal");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let refused = on_tty("");
    assert!(refused.contains("EXIT=64"), "{refused:?}");
    assert!(refused.contains("stdout is a terminal"), "{refused:?}");
    assert!(
        !refused.contains('\u{1b}'),
        "no payload reached the terminal: {refused:?}"
    );
    let forced = on_tty("--force");
    assert!(forced.contains("EXIT=0"), "{forced:?}");
    assert!(forced.contains('\u{1b}'), "{forced:?}");
    let meta = on_tty("--meta");
    assert!(
        meta.contains("EXIT=0") && meta.contains("\"seq\":0"),
        "{meta:?}"
    );
    // A pipe is not a terminal.
    let piped = edgeplex(&["ring", "cat", path, "--from", "oldest", "--count", "3"]);
    assert_eq!(piped.status.code(), Some(0), "{}", stderr(&piped));
    assert_eq!(piped.stdout.len(), 3 * 128);
}

/// `run --check` refuses what `run` would refuse (the snap's configure hook trusts it), so a
/// configuration it passes cannot put the daemon into a restart loop.
#[test]
fn run_check_refuses_what_run_refuses() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let shm = common::shm_dir();
    let disk_dir = dir.path().join("rings");
    let cases: Vec<(String, &str)> = vec![
        (
            format!("[ring]\ndir = {:?}\n", disk_dir.display()),
            "is not on tmpfs",
        ),
        ("[ring]\ndir = \"\"\n".into(), "ring.dir"),
        ("[ring]\ndir = \"/dev/shm/a\\u0000b\"\n".into(), "ring.dir"),
        (
            "[stream.big]\ntype = \"test-pattern\"\nwidth = 8192\nheight = 8192\nslot_count = 1024\n"
                .into(),
            "stream.big: its ring (1024 slots",
        ),
        (
            "[stream.gps]\ntype = \"nmea-sim\"\nrate_hz = 1e-300\n".into(),
            "stream.gps.rate_hz",
        ),
        (
            "[stream.gps]\ntype = \"serial\"\ndevice = \"/dev/tty\\u0000S1\"\n".into(),
            "stream.gps.device",
        ),
        (
            "[stream.cam]\ntype = \"camera\"\ndevice = \"/dev/video0\\u0000\"\n".into(),
            "stream.cam.device",
        ),
    ];
    for (body, want) in cases {
        let body = if body.starts_with("[ring]") {
            body
        } else {
            format!("[ring]\ndir = {:?}\n{body}", shm.path().join("r").display())
        };
        let file = dir.path().join("c.toml");
        std::fs::write(&file, &body).unwrap();
        let o = edgeplex(&["run", "--check", "--config", file.to_str().unwrap()]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(64), "{body:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{body:?}: {err}");
        assert!(
            err.contains(want),
            "{body:?}: {err:?} should mention {want:?}"
        );
    }
}

#[path = "common/devtree.rs"]
mod devtree;

/// `edgeplex devices` over a fixture tree: what each node is, which rule makes which stream,
/// and why the rest are left alone; JSON lines with `--json`; 64 for a bad flag or
/// configuration, 1 when the tree cannot be read as sysfs.
#[test]
fn devices_lists_what_discovery_makes_of_a_machine() {
    let t = devtree::DevTree::new();
    let ftdi = devtree::Usb {
        port: "1-4",
        vendor: "0403",
        product: "6001",
        serial: Some("A50285BI"),
        name: "FT232R USB UART",
    };
    t.usb_serial("ttyUSB0", &ftdi, "ftdi_sio");
    let by_id = "usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0";
    t.link("serial/by-id", by_id, "ttyUSB0");
    t.usb_serial(
        "ttyUSB1",
        &devtree::Usb {
            port: "1-5",
            serial: Some("B7"),
            ..ftdi
        },
        "ftdi_sio",
    );
    t.pci_serial("ttyS0", "0000:00:03.0");
    t.console("tty0 ttyS0");
    t.pci_serial("ttyS1", "0000:00:04.0");
    t.placeholder_serial("ttyS2");
    // A video node whose /dev entry is no V4L2 device: the real probe says so.
    t.platform_camera("video0", "vivid.0", "vivid", 0);
    let config = t.path("edgeplex.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[discovery.rule.uart]
kind = "serial"
driver = "serial"
name = "uart-{{port}}"
[discovery.rule.usb]
kind = "serial"
vendor = "0403"
name = "tty-{{serial}}"
baud = 115200
[discovery.rule.vivid]
kind = "camera"
name = "cam-{{port}}"
[stream.gps0]
type = "serial"
device = "/dev/serial/by-id/{by_id}"
"#
        ),
    )
    .unwrap();
    let (sys, dev) = (t.sys(), t.dev());
    let base = [
        "devices",
        "--config",
        config.to_str().unwrap(),
        "--sys",
        sys.to_str().unwrap(),
        "--dev",
        dev.to_str().unwrap(),
    ];
    let o = edgeplex(&base);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    let line = |node: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{node} ")))
            .unwrap_or_else(|| panic!("no {node} in:\n{out}"))
            .to_owned()
    };
    assert!(out.starts_with("NODE "), "{out}");
    assert!(
        line("ttyS0").contains("not taken: the kernel console"),
        "{out}"
    );
    assert!(
        line("ttyS1").contains("uart-0000-00-04-0 (rule uart, "),
        "{out}"
    );
    assert!(line("ttyS2").contains("not taken: no UART"), "{out}");
    assert!(
        line("ttyUSB0").contains("not taken: named by the explicit stream gps0"),
        "{out}"
    );
    let usb1 = line("ttyUSB1");
    for want in ["ftdi_sio", "0403:6001", "B7", "1-5", "tty-b7 (rule usb"] {
        assert!(usb1.contains(want), "{want}: {out}");
    }
    assert!(line("video0").contains("not a V4L2 device"), "{out}");

    let mut json = base.to_vec();
    json.push("--json");
    let o = edgeplex(&json);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    let usb1 = lines.iter().find(|v| v["node"] == "ttyUSB1").unwrap();
    assert_eq!(usb1["stream"]["name"], "tty-b7");
    assert_eq!(usb1["stream"]["type"], "serial");
    assert_eq!(usb1["device"]["vendor"], "0403");
    let video = lines.iter().find(|v| v["node"] == "video0").unwrap();
    assert_eq!(video["not_taken"]["reason"], "caps_unreadable");

    // Exit codes: a flag naming no directory and a bad rule are usage errors (64), a tree
    // that is not sysfs is a failure (1); each one line.
    let mut no_sys = base.to_vec();
    no_sys[4] = "/nonexistent";
    let mut not_sysfs = base.to_vec();
    not_sysfs[4] = dev.to_str().unwrap();
    let mut bad_rule = base.to_vec();
    bad_rule.extend(["--set", "discovery.rule.usb.name=cam-{sn}"]);
    for (args, code, want) in [
        (no_sys, 64, "--sys /nonexistent: not a directory"),
        (bad_rule, 64, "discovery.rule.usb.name"),
        (not_sysfs, 1, "not a sysfs root"),
    ] {
        let o = edgeplex(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(want), "{err}");
        assert!(o.stdout.is_empty());
    }
}

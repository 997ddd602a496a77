//! Checks of the snap: `snap/snapcraft.yaml`, the `configure` hook, and packing.
//!
//! - `snapcraft.yaml` is parsed and its fields checked (base, confinement, apps, plugs), and
//!   every app's command is a real `edgeplex` subcommand.
//! - The configure hook runs as a script against a fake `snapctl` (a shell script first in
//!   `PATH` serving `snapctl get -d` from a JSON fixture and logging `set`, `services` and
//!   `restart`), with `$SNAP/bin/edgeplex` the real binary. Good values write a TOML file that
//!   `edgeplex run --check` accepts; bad values fail the hook with the agent's own one-line
//!   message and leave the previous file alone.
//! - `meta/snap.yaml` (generated here from snapcraft.yaml) plus the built binary and the hook are
//!   packed with `snap pack`, and `unsquashfs -l` must list them. That needs Debian's `snapd` and
//!   `squashfs-tools` (no running snapd); without them the test says so and returns, and in CI
//!   it fails (`common::tools`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use common::tools;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_edgeplex");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn snapcraft() -> Value {
    let text = std::fs::read_to_string(root().join("snap/snapcraft.yaml")).unwrap();
    serde_yaml::from_str(&text).expect("snapcraft.yaml is YAML")
}

fn plugs(app: &Value) -> Vec<&str> {
    app["plugs"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn snapcraft_yaml_fields() {
    let y = snapcraft();
    assert_eq!(y["name"], "edgeplex");
    assert_eq!(y["base"], "core24");
    assert_eq!(y["confinement"], "strict");
    assert_eq!(
        y["version"],
        env!("CARGO_PKG_VERSION"),
        "snap and crate versions"
    );
    assert!(
        y["summary"].as_str().unwrap().len() <= 78,
        "snap summaries are at most 78"
    );
    let parts = y["parts"].as_object().unwrap();
    assert!(
        parts.values().any(|p| p["plugin"] == "rust"),
        "built with the rust plugin"
    );

    let apps = y["apps"].as_object().unwrap();
    let daemon = &apps["edgeplex"];
    assert_eq!(daemon["daemon"], "simple");
    assert_eq!(
        daemon["command"],
        "bin/edgeplex run --config $SNAP_DATA/edgeplex.toml"
    );
    assert_eq!(daemon["restart-condition"], "on-failure");
    let p = plugs(daemon);
    for want in [
        "camera",
        "serial-port",
        "hardware-observe",
        "network",
        "network-bind",
    ] {
        assert!(p.contains(&want), "the daemon plugs {want}");
    }
    assert!(
        apps["ring"]["command"]
            .as_str()
            .unwrap()
            .starts_with("bin/edgeplex ring"),
        "a ring command"
    );

    // Only interfaces snapd knows, and none that needs store approval to be useful here.
    let known = [
        "camera",
        "serial-port",
        "hardware-observe",
        "battery-observe",
        "network",
        "network-bind",
    ];
    for (name, app) in apps {
        for plug in plugs(app) {
            assert!(known.contains(&plug), "app {name}: unexpected plug {plug}");
        }
        assert!(app["daemon"].is_null() || name == "edgeplex", "one daemon");
        // Every command is a real subcommand of the binary.
        let command = app["command"].as_str().unwrap();
        let words: Vec<&str> = command.split_whitespace().collect();
        assert_eq!(words[0], "bin/edgeplex", "app {name}");
        let sub: Vec<&str> = words[1..]
            .iter()
            .take_while(|w| !w.starts_with('-'))
            .copied()
            .collect();
        let out = Command::new(BIN).args(&sub).arg("--help").output().unwrap();
        assert!(
            out.status.success(),
            "app {name}: edgeplex {sub:?} --help failed"
        );
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(flag),
                "app {name}: edgeplex {sub:?} has no {flag}"
            );
        }
    }
}

#[test]
fn the_hook_puts_rings_where_strict_confinement_allows() {
    // snapd's AppArmor template: /{dev,run}/shm/snap.@{SNAP_INSTANCE_NAME}.** mrwlkix
    let hook = std::fs::read_to_string(root().join("snap/hooks/configure")).unwrap();
    assert!(hook.contains("default_ring_dir=\"/dev/shm/snap.$instance.rings\""));
    assert!(hook.starts_with("#!/bin/sh\n"), "a POSIX sh script");
    let mode = std::fs::metadata(root().join("snap/hooks/configure"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "the hook is executable");
}

/// A fake snap environment: `$SNAP` with bin/edgeplex, `$SNAP_DATA`, and a fake `snapctl`.
struct FakeSnap {
    dir: tempfile::TempDir,
}

impl FakeSnap {
    fn new() -> FakeSnap {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("snap");
        std::fs::create_dir_all(snap.join("bin")).unwrap();
        std::os::unix::fs::symlink(BIN, snap.join("bin/edgeplex")).unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let fake = dir.path().join("fakebin");
        std::fs::create_dir_all(&fake).unwrap();
        // `get -d` serves the fixture; `get KEY` serves KEY's line of the flat fixture (written
        // by the test); set/services/restart are logged. Anything else fails loudly.
        let script = r#"#!/bin/sh
log="$FAKE_SNAPCTL_DIR/snapctl.log"
echo "$*" >>"$log"
case "$1" in
get)
	shift
	if [ "$1" = "-d" ] && [ $# -eq 1 ]; then cat "$FAKE_SNAPCTL_DIR/config.json"; exit 0; fi
	[ "$1" = "-d" ] && { echo "fake snapctl: get -d KEY is not faked" >&2; exit 1; }
	sed -n "s/^$1=//p" "$FAKE_SNAPCTL_DIR/config.flat"
	;;
set) ;;
services) echo "Service Startup Current Notes"; echo "$2 enabled ${FAKE_SERVICE_STATE:-inactive} -" ;;
restart) ;;
*) echo "fake snapctl: $* is not faked" >&2; exit 1 ;;
esac
"#;
        std::fs::write(fake.join("snapctl"), script).unwrap();
        std::fs::set_permissions(fake.join("snapctl"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        FakeSnap { dir }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn config_path(&self) -> PathBuf {
        self.data().join("edgeplex.toml")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("snapctl.log")).unwrap_or_default()
    }

    /// Run the hook with `config` as the snap's configuration.
    fn configure(&self, config: &Value, extra_env: &[(&str, &str)]) -> Output {
        std::fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_string_pretty(config).unwrap(),
        )
        .unwrap();
        let mut flat = String::new();
        flatten(config, "", &mut flat);
        std::fs::write(self.dir.path().join("config.flat"), flat).unwrap();
        let path = format!(
            "{}:{}",
            self.dir.path().join("fakebin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("sh");
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("EDGEPLEX_")) {
            cmd.env_remove(k);
        }
        cmd.arg(root().join("snap/hooks/configure"))
            .env("PATH", path)
            .env("SNAP", self.dir.path().join("snap"))
            .env("SNAP_DATA", self.data())
            .env("SNAP_NAME", "edgeplex")
            .env("SNAP_INSTANCE_NAME", "edgeplex")
            .env("FAKE_SNAPCTL_DIR", self.dir.path());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

fn flatten(v: &Value, prefix: &str, out: &mut String) {
    if let Value::Object(m) = v {
        for (k, v) in m {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            flatten(v, &key, out);
        }
    } else {
        out.push_str(&format!("{prefix}={v}\n"));
    }
}

/// What `snap set` would store for a typical node: a camera and a GPS, with snap's `-` keys.
fn good_config() -> Value {
    json!({
        "stream": {
            "cam0": {
                "type": "camera",
                "device": "/dev/video0",
                "width": 1280,
                "height": 720,
                "format": "YUYV",
                "slot-count": 8,
                "stall-timeout-secs": 5,
                "required": true
            },
            "gps0": {
                "type": "serial",
                "device": "/dev/ttyUSB0",
                "baud": 9600,
                "nodes": ["edge-1"],
                "framing": {"type": "lines", "max-len": 82, "terminator": "\n"}
            }
        },
        "ring": {"mode": "0644"},
        "log": {"level": "info,edgeplex=debug"},
        "kube": {"mode": "kubeconfig", "kubeconfig": "/var/snap/edgeplex/common/kubeconfig"},
        "node": {"group": "line-1", "critical-streams": ["cam0"]}
    })
}

/// The agent's own verdict on the same settings, given as `--set` flags: the snap keys mapped
/// to config keys here, independently of the hook (`-` becomes `_`, except in stream names).
fn agent_check(config: &Value) -> Output {
    let mut flat = String::new();
    flatten(config, "", &mut flat);
    let mut sets: Vec<String> = flat
        .lines()
        .map(|line| {
            let (key, value) = line.split_once('=').unwrap();
            let key: Vec<String> = key
                .split('.')
                .enumerate()
                .map(|(i, seg)| {
                    if i == 1 && key.starts_with("stream.") {
                        seg.to_owned()
                    } else {
                        seg.replace('-', "_")
                    }
                })
                .collect();
            format!("{}={value}", key.join("."))
        })
        .collect();
    if !sets.iter().any(|s| s.starts_with("ring.dir=")) {
        sets.push("ring.dir=\"/dev/shm/snap.edgeplex.rings\"".into());
    }
    let empty = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("EDGEPLEX_")) {
        cmd.env_remove(k);
    }
    cmd.args(["run", "--check", "--config"]).arg(empty.path());
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    cmd.output().unwrap()
}

fn awks() -> Vec<&'static str> {
    let mut v = vec!["awk"];
    if Command::new("busybox")
        .args(["awk", "BEGIN{}"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        v.push("busybox awk");
    }
    v
}

#[test]
fn configure_accepts_good_values_and_writes_the_toml() {
    for awk in awks() {
        let snap = FakeSnap::new();
        let out = snap.configure(&good_config(), &[("AWK", awk)]);
        assert!(
            out.status.success(),
            "{awk}: hook failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(snap.config_path()).unwrap();
        let t: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
        let cam = &t["stream"]["cam0"];
        assert_eq!(cam["device"].as_str(), Some("/dev/video0"));
        assert_eq!(cam["width"].as_integer(), Some(1280));
        assert_eq!(cam["slot_count"].as_integer(), Some(8), "- became _");
        // The per-stream keys every kind has (docs/fleet.md) pass through `snap set`.
        assert_eq!(cam["required"].as_bool(), Some(true));
        assert_eq!(
            t["stream"]["gps0"]["nodes"].as_array().unwrap()[0].as_str(),
            Some("edge-1")
        );
        assert_eq!(
            t["stream"]["gps0"]["framing"]["terminator"].as_str(),
            Some("\n")
        );
        assert_eq!(t["ring"]["mode"].as_str(), Some("0644"));
        assert_eq!(
            t["ring"]["dir"].as_str(),
            Some("/dev/shm/snap.edgeplex.rings"),
            "the strict-confinement ring dir by default"
        );
        assert_eq!(t["log"]["level"].as_str(), Some("info,edgeplex=debug"));
        assert_eq!(
            t["node"]["critical_streams"].as_array().unwrap()[0].as_str(),
            Some("cam0")
        );
        // The default is recorded, so `snap get edgeplex` shows it.
        assert!(snap
            .log()
            .contains("set ring.dir=/dev/shm/snap.edgeplex.rings"));

        // The agent accepts what the hook wrote.
        let check = Command::new(BIN)
            .args(["run", "--check", "--config"])
            .arg(snap.config_path())
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let printed = String::from_utf8_lossy(&check.stdout);
        assert!(printed.contains("snap.edgeplex.rings"), "{printed}");
    }
}

#[test]
fn configure_restarts_a_running_agent_only_on_change() {
    let snap = FakeSnap::new();
    let mut config = good_config();
    config["ring"]["dir"] = json!("/dev/shm/snap.edgeplex.rings");
    let active = [("FAKE_SERVICE_STATE", "active")];
    assert!(snap.configure(&config, &active).status.success());
    assert!(snap.log().contains("restart edgeplex.edgeplex"));
    assert!(!snap.log().contains("set ring.dir"), "ring.dir was set");

    std::fs::remove_file(snap.dir.path().join("snapctl.log")).unwrap();
    assert!(snap.configure(&config, &active).status.success());
    assert!(!snap.log().contains("restart"), "unchanged: no restart");

    config["stream"]["cam0"]["width"] = json!(640);
    config["stream"]["cam0"]["height"] = json!(480);
    assert!(snap.configure(&config, &[]).status.success());
    assert!(!snap.log().contains("restart"), "inactive: no restart");
}

/// Run the hook with `config`; it must fail with exactly the agent's message for it.
fn rejected(config: &Value, needle: &str) {
    let snap = FakeSnap::new();
    assert!(snap.configure(&good_config(), &[]).status.success());
    let before = std::fs::read_to_string(snap.config_path()).unwrap();

    let out = snap.configure(config, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "accepted: {config}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("edgeplex: "), "{stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr}");

    let agent = agent_check(config);
    assert_eq!(agent.status.code(), Some(64), "the agent exits 64");
    assert_eq!(
        stderr,
        String::from_utf8_lossy(&agent.stderr),
        "the hook says what the agent says"
    );

    let after = std::fs::read_to_string(snap.config_path()).unwrap();
    assert_eq!(before, after, "a rejected change leaves the config alone");
    assert!(!snap.data().join(".edgeplex.toml.new").exists());
}

#[test]
fn configure_rejects_zero_slots() {
    let mut c = good_config();
    c["stream"]["cam0"]["slot-count"] = json!(0);
    rejected(&c, "stream.cam0.slot_count");
}

#[test]
fn configure_rejects_an_unknown_key() {
    let mut c = good_config();
    c["stream"]["cam0"]["widht"] = json!(1280);
    rejected(&c, "stream.cam0.widht");
}

#[test]
fn configure_rejects_a_bad_baud_rate() {
    let mut c = good_config();
    c["stream"]["gps0"]["baud"] = json!(12);
    rejected(&c, "stream.gps0.baud = 12");
}

#[test]
fn configure_rejects_unreadable_json_without_writing() {
    let snap = FakeSnap::new();
    std::fs::write(snap.dir.path().join("config.json"), "{\"ring\": ").unwrap();
    // Bypass `configure()` (it would rewrite the fixture): run the hook directly.
    let out = Command::new("sh")
        .arg(root().join("snap/hooks/configure"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                snap.dir.path().join("fakebin").display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("SNAP", snap.dir.path().join("snap"))
        .env("SNAP_DATA", snap.data())
        .env("FAKE_SNAPCTL_DIR", snap.dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("edgeplex: snap configuration"));
    assert!(!snap.config_path().exists());
}

/// `meta/snap.yaml` from snapcraft.yaml: what snapcraft would generate, minus build data.
fn snap_yaml(y: &Value) -> Value {
    let mut apps = serde_json::Map::new();
    for (name, app) in y["apps"].as_object().unwrap() {
        let mut a = serde_json::Map::new();
        for key in [
            "command",
            "daemon",
            "restart-condition",
            "restart-delay",
            "stop-timeout",
            "plugs",
        ] {
            if !app[key].is_null() {
                a.insert(key.into(), app[key].clone());
            }
        }
        apps.insert(name.clone(), Value::Object(a));
    }
    json!({
        "name": y["name"],
        "version": y["version"],
        "summary": y["summary"],
        "description": y["description"],
        "base": y["base"],
        "grade": y["grade"],
        "confinement": y["confinement"],
        "license": y["license"],
        "architectures": [std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64")],
        "apps": apps,
    })
}

#[test]
fn snap_pack_builds_a_listable_snap() {
    let install = "apt-get install snapd squashfs-tools; .ci/run does";
    let (Some(snap), Some(unsquashfs)) = (
        tools::require("snap", install),
        tools::require("unsquashfs", install),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prime = dir.path().join("prime");
    std::fs::create_dir_all(prime.join("bin")).unwrap();
    std::fs::create_dir_all(prime.join("meta/hooks")).unwrap();
    std::fs::copy(BIN, prime.join("bin/edgeplex")).unwrap();
    std::fs::copy(
        root().join("snap/hooks/configure"),
        prime.join("meta/hooks/configure"),
    )
    .unwrap();
    std::fs::set_permissions(
        prime.join("meta/hooks/configure"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let meta = snap_yaml(&snapcraft());
    std::fs::write(
        prime.join("meta/snap.yaml"),
        serde_yaml::to_string(&meta).unwrap(),
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = Command::new(&snap)
        .arg("pack")
        .arg(&prime)
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "snap pack: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let file = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "snap"))
        .expect("a .snap file");
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("edgeplex_{}_", env!("CARGO_PKG_VERSION"))),
        "{name}"
    );
    let list = Command::new(&unsquashfs)
        .arg("-l")
        .arg(&file)
        .output()
        .unwrap();
    assert!(list.status.success());
    let listing = String::from_utf8_lossy(&list.stdout);
    for want in [
        "squashfs-root/bin/edgeplex",
        "squashfs-root/meta/snap.yaml",
        "squashfs-root/meta/hooks/configure",
    ] {
        assert!(
            listing.lines().any(|l| l.trim() == want),
            "{want} not in:\n{listing}"
        );
    }
    // The packed snap.yaml is the one we wrote.
    let cat = Command::new(&unsquashfs)
        .arg("-cat")
        .arg(&file)
        .arg("meta/snap.yaml")
        .output()
        .unwrap();
    if cat.status.success() {
        let packed: Value = serde_yaml::from_slice(&cat.stdout).unwrap();
        assert_eq!(packed, meta);
    }
}

/// A value holding a newline still gives one line of error: the hook prints with printf, not
/// dash's echo, which turned the agent's `\n` into a line break.
#[test]
fn configure_keeps_an_error_about_a_newline_on_one_line() {
    let mut c = good_config();
    c["stream"]["cam0"]["format"] = json!("AB\nC");
    rejected(&c, "stream.cam0.format");
}

/// A configuration over 64 KiB is refused before it is parsed; a large one below that is read
/// in one pass by every awk (the hook used to build strings a character at a time).
#[test]
fn configure_bounds_the_size_of_the_configuration() {
    for awk in awks() {
        let snap = FakeSnap::new();
        let mut c = good_config();
        c["stream"]["cam0"]["device"] = json!(format!("/dev/{}", "v".repeat(100_000)));
        let out = snap.configure(&c, &[("AWK", awk)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{awk}: accepted");
        assert_eq!(stderr.lines().count(), 1, "{awk}: {stderr}");
        assert!(stderr.contains("too large"), "{awk}: {stderr}");

        c["stream"]["cam0"]["device"] = json!(format!("/dev/{}", "v".repeat(60_000)));
        let out = snap.configure(&c, &[("AWK", awk)]);
        assert!(
            out.status.success(),
            "{awk}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let toml = std::fs::read_to_string(snap.config_path()).unwrap();
        assert!(toml.contains(&"v".repeat(60_000)), "{awk}");
    }
}

/// A ring directory strict confinement forbids is refused by the hook, not left to fail the
/// daemon on every start.
#[test]
fn configure_refuses_a_ring_dir_confinement_forbids() {
    for dir in [
        "/dev/shm/edgeplex",
        "/run/edgeplex",
        "/dev/shm/snap.edgeplex.rings/../x",
    ] {
        let snap = FakeSnap::new();
        let mut c = good_config();
        c["ring"] = json!({ "dir": dir });
        let out = snap.configure(&c, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{dir}: accepted");
        assert_eq!(stderr.lines().count(), 1, "{dir}: {stderr}");
        assert!(stderr.contains("ring.dir"), "{dir}: {stderr}");
    }
}

//! The observability endpoint as operators meet it: scraped by a real Prometheus, checked by
//! promtool, and hammered by hostile clients while the camera keeps its rate.
//!
//! Prometheus and promtool come from Debian's `prometheus` package, which `.ci/run` installs.
//! Without them the tests say so and return, and in CI they fail (`common::tools`).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::http::{free_port, get};
use common::wait::wait_for;
use common::{prom, tools};
use serde_json::Value;

const EDGEPLEX: &str = env!("CARGO_BIN_EXE_edgeplex");

/// Frames per second of the demo's camera.
const FPS: u32 = 30;

/// Watchdog for every wait here: generous, only to turn a hang into a failure.
const LIMIT: Duration = Duration::from_secs(60);

/// Tests here spawn processes, and one holds pty fds that are not close-on-exec: a process
/// spawned meanwhile would inherit them and keep the "unplugged" device alive. One at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn tool(name: &str) -> Option<PathBuf> {
    tools::require(name, "apt-get install prometheus; .ci/run does")
}

fn wait_http(addr: SocketAddr, path: &str) {
    wait_for(&format!("{addr}{path} to answer 200"), LIMIT, || {
        matches!(get(addr, path), Ok((200, _))).then_some(())
    });
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn demo(rings: &Path, metrics: SocketAddr, fps: u32) -> Proc {
    let child = Command::new(EDGEPLEX)
        .args([
            "demo",
            "--width",
            "320",
            "--height",
            "240",
            "--fps",
            &fps.to_string(),
        ])
        .arg("--ring-dir")
        .arg(rings)
        .args(["--metrics-listen", &metrics.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Proc(child)
}

#[test]
fn a_real_prometheus_scrapes_the_demo() {
    let _serial = one_at_a_time();
    let (Some(prometheus), Some(promtool)) = (tool("prometheus"), tool("promtool")) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let rings = common::shm_dir();
    let agent_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _demo = demo(rings.path(), agent_addr, FPS);
    wait_http(agent_addr, "/metrics");

    // promtool check metrics on a real scrape.
    let (_, scrape) = get(agent_addr, "/metrics").unwrap();
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let prom_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = work.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: edgeplex\n    static_configs:\n      - targets: [\"{agent_addr}\"]\n"
        ),
    )
    .unwrap();
    let _prom = Proc(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_http(prom_addr, "/-/ready");

    let query = |q: &str| -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", urlencode(q));
        let (status, body) = get(prom_addr, &path).unwrap();
        assert_eq!(status, 200, "{q}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    };
    let value = |r: &Value| r["value"][1].as_str().unwrap().parse::<f64>().unwrap();
    let counter = "edgeplex_ring_messages_published_total{stream=\"cam0\"}";
    let first = wait_for(&format!("Prometheus to scrape {counter}"), LIMIT, || {
        query(counter).first().map(value)
    });
    let later = wait_for(
        &format!("{counter} to increase past {first}"),
        LIMIT,
        || query(counter).first().map(value).filter(|v| *v > first),
    );
    assert!(later > first);
    let build = query("edgeplex_build_info");
    assert_eq!(build.len(), 1, "build info: {build:?}");
    assert_eq!(build[0]["metric"]["version"], env!("CARGO_PKG_VERSION"));
    for metric in ["edgeplex_battery_present", "edgeplex_power_class"] {
        assert!(
            !query(metric).is_empty(),
            "{metric} is missing from Prometheus"
        );
    }
    assert_eq!(
        query("edgeplex_source_up{stream=\"gps0\"}")
            .first()
            .map(value),
        Some(1.0)
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/manifests/monitoring/alerts.yaml"
    );
    let out = Command::new(promtool)
        .args(["check", "rules", rules])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_prometheus_rule_matches_the_alert_rules() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/monitoring");
    let plain = std::fs::read_to_string(format!("{dir}/alerts.yaml")).unwrap();
    let crd = std::fs::read_to_string(format!("{dir}/prometheusrule.yaml")).unwrap();
    let groups = |text: &str, indent: usize| -> Vec<String> {
        let from = text
            .lines()
            .position(|l| l.trim_start() == "groups:")
            .unwrap();
        text.lines()
            .skip(from)
            .map(|l| l.get(indent..).unwrap_or("").trim_end().to_owned())
            .collect()
    };
    assert_eq!(
        groups(&plain, 0),
        groups(&crd, 2),
        "prometheusrule.yaml must carry exactly the rules of alerts.yaml"
    );
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_owned())
        })
        .collect();
    for m in [
        "edgeplex_ring_messages_published_total",
        "edgeplex_battery_time_to_empty_seconds",
        "edgeplex_failover_handovers_total",
    ] {
        assert!(exprs.iter().any(|e| e.contains(m)), "dashboard lacks {m}");
    }
}

/// The newest message of a ring: its number and publish time; `None` while it has none.
fn newest(ring: &Path) -> Option<(u64, u64)> {
    let out = Command::new(EDGEPLEX)
        .args(["ring", "cat", "--meta", "--from", "newest", "--count", "1"])
        .args(["--idle-timeout", "0"])
        .arg(ring)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line: Value = serde_json::from_str(text.lines().next()?).ok()?;
    Some((line["seq"].as_u64()?, line["publish_ns"].as_u64()?))
}

/// 1000 scrapes from 16 concurrent clients plus slowloris connections. The endpoint answers
/// every scrape, closes the slow connections itself, and the camera keeps publishing. The
/// frame rate during the storm (measured from the ring's own publish timestamps) is printed
/// next to the configured rate for the record; it is not asserted, because tests do not assert
/// time.
#[test]
fn hostile_scrapers_do_not_stop_capture() {
    let _serial = one_at_a_time();
    let rings = common::shm_dir();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _demo = demo(rings.path(), addr, FPS);
    wait_http(addr, "/metrics");
    let cam = edgeplex::ring::ring_path(rings.path(), "cam0");
    wait_for("the camera's first frame", LIMIT, || newest(&cam));

    // Slowloris: connections that send half a request and then nothing.
    let slow: Vec<TcpStream> = (0..32)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    let storm_start = newest(&cam).expect("a frame");
    let before = storm_start.0;
    let workers: Vec<_> = (0..16)
        .map(|_| {
            std::thread::spawn(move || {
                let mut ok = 0;
                for _ in 0..1000 / 16 + 1 {
                    if let Ok((200, body)) = get(addr, "/metrics") {
                        if body.contains("edgeplex_build_info") {
                            ok += 1;
                        }
                    }
                }
                ok
            })
        })
        .collect();
    let ok: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let storm_end = newest(&cam).expect("a frame");
    assert!(
        ok >= 1000,
        "only {ok} of {} scrapes answered",
        (1000 / 16 + 1) * 16
    );
    assert!(
        storm_end.0 > before,
        "the camera kept publishing during the storm"
    );
    let stormy =
        (storm_end.0 - storm_start.0) as f64 / ((storm_end.1 - storm_start.1) as f64 / 1e9);

    // The server closes the slowloris connections by itself (header read timeout).
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 512];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue, // a 408 response before the close is fine
                Err(_) => break false,
            }
        };
        assert!(closed, "a slowloris connection was left open");
    }
    eprintln!(
        "camera rate from the ring during 1000 scrapes: {stormy:.3} fps (configured: {FPS} fps)"
    );
}

/// The endpoints tell the truth: a required serial device (a real pty) that vanishes makes
/// `/readyz` fail naming the stream and flips `edgeplex_source_up` to 0; when it returns, both
/// recover.
#[test]
fn readyz_and_source_up_follow_the_device() {
    let _serial = one_at_a_time();
    use serialport::{SerialPort, TTYPort};
    let rings = common::shm_dir();
    let link = rings.path().join("ttyGPS");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = rings.path().join("edgeplex.toml");
    std::fs::write(
        &config,
        format!(
            "[ring]\ndir = \"{dir}\"\n[metrics]\nlisten = \"{addr}\"\n[agent]\nretry_initial_secs = 0.1\nretry_max_secs = 0.5\n\
             [stream.gps0]\ntype = \"serial\"\nrequired = true\ndevice = \"{link}\"\nbaud = 9600\n\
             [stream.cam0]\ntype = \"test-pattern\"\nrequired = true\nwidth = 64\nheight = 48\nfps = 10\n",
            dir = rings.path().display(),
            link = link.display()
        ),
    )
    .unwrap();
    let _agent = Proc(
        Command::new(EDGEPLEX)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let source_up = |stream: &str| -> Option<f64> {
        let (_, body) = get(addr, "/metrics").ok()?;
        prom::value(&body, &format!("edgeplex_source_up{{stream=\"{stream}\"}}"))
    };
    let wait = |what: &str, f: &dyn Fn() -> bool| wait_for(what, LIMIT, || f().then_some(()));
    // The pty is made after the agent starts: its fds are not close-on-exec, and an agent that
    // inherited the master would keep the "device" alive after the test unplugs it. The agent
    // starts with the device missing and picks it up when it appears.
    let (master, slave) = TTYPort::pair().expect("create a pty pair");
    std::os::unix::fs::symlink(slave.name().unwrap(), &link).unwrap();
    wait("ready with the pty present", &|| {
        matches!(get(addr, "/readyz"), Ok((200, _)))
    });
    assert_eq!(source_up("gps0"), Some(1.0));

    // Unplug: the device's pty goes away.
    drop(master);
    drop(slave);
    wait("readyz fails", &|| {
        matches!(get(addr, "/readyz"), Ok((503, _)))
    });
    let (_, body) = get(addr, "/readyz").unwrap();
    assert!(
        body.contains("stream gps0: down"),
        "readyz names the stream and why: {body:?}"
    );
    assert!(
        !body.contains("cam0"),
        "the healthy stream is not blamed: {body:?}"
    );
    wait("source_up 0", &|| source_up("gps0") == Some(0.0));
    assert_eq!(source_up("cam0"), Some(1.0), "other streams keep running");

    // Plug back in: a new pty behind the same stable name.
    let (_master2, slave2) = TTYPort::pair().expect("create a pty pair");
    let tmp = rings.path().join("ttyGPS.new");
    std::os::unix::fs::symlink(slave2.name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, &link).unwrap();
    wait("readyz recovers", &|| {
        matches!(get(addr, "/readyz"), Ok((200, _)))
    });
    wait("source_up 1", &|| source_up("gps0") == Some(1.0));
    let (_, metrics) = get(addr, "/metrics").unwrap();
    assert_eq!(
        prom::value(
            &metrics,
            "edgeplex_source_reconnects_total{stream=\"gps0\"}"
        ),
        Some(1.0),
        "the reconnect is counted"
    );
}

/// `/readyz` waits only for streams marked `required`: a node whose optional sensor is missing
/// is Ready (while `edgeplex_source_up` still says the sensor is down). And a required device
/// refused to an agent in a pod gets a hint for a pod (the device cgroup), never `snap connect`.
#[test]
fn readyz_waits_only_for_required_streams_and_hints_fit_a_pod() {
    let _serial = one_at_a_time();
    let rings = common::shm_dir();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = rings.path().join("optional.toml");
    std::fs::write(
        &config,
        format!(
            "[ring]\ndir = \"{dir}\"\n[metrics]\nlisten = \"{addr}\"\n[kube]\nmode = \"off\"\n\
             [stream.gps9]\ntype = \"serial\"\ndevice = \"{missing}\"\nbaud = 9600\n\
             [stream.cam0]\ntype = \"test-pattern\"\nrequired = true\nwidth = 64\nheight = 48\nfps = 10\n",
            dir = rings.path().join("rings").display(),
            missing = rings.path().join("ttyNOPE").display(),
        ),
    )
    .unwrap();
    let source_up = |stream: &str| -> Option<f64> {
        let (_, body) = get(addr, "/metrics").ok()?;
        prom::value(&body, &format!("edgeplex_source_up{{stream=\"{stream}\"}}"))
    };
    {
        let _agent = Proc(
            Command::new(EDGEPLEX)
                .args(["run", "--config"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for("the optional sensor reported down", LIMIT, || {
            (source_up("gps9") == Some(0.0) && source_up("cam0") == Some(1.0)).then_some(())
        });
        let (code, body) = get(addr, "/readyz").unwrap();
        assert_eq!(
            code, 200,
            "an optional stream down keeps the node Ready: {body}"
        );
    }

    // In a pod, a required serial port the agent may not open.
    let device = rings.path().join("ttyLOCKED");
    std::fs::write(&device, b"").unwrap();
    let ring_dir = rings.path().join("rings-pod");
    std::fs::create_dir(&ring_dir).unwrap();
    let mut cmd = Command::new(EDGEPLEX);
    if rustix::process::geteuid().is_root() {
        // Root opens anything: the agent runs as nobody, owning its ring directory, and the
        // device is root's, mode 0600.
        use std::os::unix::process::CommandExt;
        std::os::unix::fs::chown(&ring_dir, Some(65534), Some(65534)).unwrap();
        std::os::unix::fs::chown(rings.path(), Some(65534), None).unwrap();
        std::fs::set_permissions(&device, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        cmd.uid(65534).gid(65534);
    } else {
        std::fs::set_permissions(&device, std::os::unix::fs::PermissionsExt::from_mode(0o000))
            .unwrap();
    }
    let pod_config = rings.path().join("pod.toml");
    std::fs::write(
        &pod_config,
        format!(
            "[ring]\ndir = \"{dir}\"\n[metrics]\nlisten = \"{addr}\"\n[kube]\nmode = \"off\"\n\
             [stream.gps0]\ntype = \"serial\"\nrequired = true\ndevice = \"{device}\"\nbaud = 9600\n",
            dir = ring_dir.display(),
            device = device.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &pod_config,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let _agent = Proc(
        cmd.args(["run", "--config"])
            .arg(&pod_config)
            .env("KUBERNETES_SERVICE_HOST", "10.152.183.1")
            .env_remove("SNAP_NAME")
            .env_remove("SNAP_INSTANCE_NAME")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let body = wait_for("readyz names the refused device", LIMIT, || {
        match get(addr, "/readyz") {
            Ok((503, body)) if body.contains("permission denied") => Some(body),
            _ => None,
        }
    });
    assert!(body.contains("stream gps0: down"), "{body}");
    assert!(body.contains("device cgroup"), "a hint for a pod: {body}");
    assert!(!body.contains("snap"), "no snap advice in a pod: {body}");
}

/// The DaemonSet mounts the host's `/dev` read-only (docs/device-access.md): a serial port opened
/// through a read-only mount still reads and is written to. The port is a real pty; the agent
/// sees the host's devpts (where the pty's device node lives) only through a read-only bind
/// mount in its own mount namespace, where creating a file fails.
#[test]
fn a_serial_port_reads_through_a_read_only_mount() {
    let _serial = one_at_a_time();
    use serialport::{SerialPort, TTYPort};
    if !rustix::process::geteuid().is_root() {
        return tools::missing("root, for a read-only bind mount in a mount namespace");
    }
    let unshare_ok = Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !unshare_ok {
        return tools::missing("permission for `unshare -m` (util-linux, as root)");
    }
    let work = common::shm_dir();
    let dev = work.path().join("host-dev");
    std::fs::create_dir(&dev).unwrap();
    // Made before the agent starts, so the agent inherits its fds; harmless here, nothing is
    // unplugged.
    let (mut master, slave) = TTYPort::pair().expect("create a pty pair");
    let pts = PathBuf::from(slave.name().unwrap());
    let (pts_dir, pts_name) = (pts.parent().unwrap(), pts.file_name().unwrap());
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = work.path().join("edgeplex.toml");
    std::fs::write(
        &config,
        format!(
            "[ring]\ndir = \"{rings}\"\n[metrics]\nlisten = \"{addr}\"\n[kube]\nmode = \"off\"\n\
             [agent]\nretry_initial_secs = 0.1\nretry_max_secs = 0.2\n\
             [stream.gps0]\ntype = \"serial\"\nrequired = true\ndevice = \"{port}\"\nbaud = 9600\n",
            rings = work.path().join("rings").display(),
            port = dev.join(pts_name).display(),
        ),
    )
    .unwrap();
    let d = dev.display().to_string();
    let script = format!(
        "mount --bind '{src}' '{d}' && mount -o remount,bind,ro '{d}' || exit 97; \
         if touch '{d}/probe' 2>/dev/null; then echo 'mount is writable' >&2; exit 98; fi; \
         exec \"$0\" run --config '{c}'",
        src = pts_dir.display(),
        c = config.display()
    );
    let mut agent = Proc(
        Command::new("unshare")
            .args(["-m", "sh", "-c", &script, EDGEPLEX])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let published = || -> Option<f64> {
        let (_, body) = get(addr, "/metrics").ok()?;
        prom::value(
            &body,
            "edgeplex_ring_messages_published_total{stream=\"gps0\"}",
        )
    };
    wait_for("sentences read through the read-only mount", LIMIT, || {
        if let Ok(Some(status)) = agent.0.try_wait() {
            let mut err = String::new();
            let _ = agent.0.stderr.take().unwrap().read_to_string(&mut err);
            panic!("the agent exited with {status}: {err}");
        }
        master
            .write_all(b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n")
            .ok()?;
        std::thread::sleep(Duration::from_millis(50));
        (published()? >= 3.0).then_some(())
    });
    let (code, body) = get(addr, "/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
    drop(slave);
}

/// The Prometheus text reader the tests use (`common::prom`) reads labels in any order,
/// escaped quotes, timestamps and comments, and tells a metric from one whose name it prefixes.
#[test]
fn the_prometheus_text_reader_reads_what_it_must() {
    let text = "# HELP x_total a counter\n# TYPE x_total counter\n\
                x_total{a=\"1\",b=\"q\\\"uote\"} 3\nx_total{a=\"2\",} 4 1700000000\ny 1.5\n\
                x_total_more 9\nz{} NaN\n";
    assert_eq!(
        prom::value(text, "x_total{b=\"q\\\"uote\",a=\"1\"}"),
        Some(3.0)
    );
    assert_eq!(prom::value(text, "x_total{a=\"2\"}"), Some(4.0));
    assert_eq!(
        prom::value(text, "x_total{a=\"1\"}"),
        None,
        "every label must match"
    );
    assert_eq!(prom::value(text, "y"), Some(1.5));
    assert!(prom::value(text, "z").is_some_and(f64::is_nan));
    assert_eq!(prom::sum(text, "x_total", &[]), 7.0, "not x_total_more");
    assert_eq!(prom::sum(text, "x_total", &[("a", "2")]), 4.0);
    assert_eq!(prom::sum(text, "x", &[]), 0.0, "a prefix is not a name");
}

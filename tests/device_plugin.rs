//! The device plugin against a stand-in kubelet that speaks the real protocol: the test serves
//! the kubelet's `Registration` service on `kubelet.sock` in a temporary device-plugin
//! directory and calls the plugin's `ListAndWatch` and `Allocate` over real gRPC (tonic on both
//! sides, the wire format a kubelet speaks), against a real `edgeplex run` process with a
//! synthetic camera and a serial stream on a real pty that the test unplugs and plugs back.
//!
//! Nothing here asserts how long anything took; each wait has a watchdog that fails a hang.
//! The time from unplugging to the `Unhealthy` update is printed.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::kubelet::{all, ids, wait_devices, Kubelet, WAIT};
use edgeplex::deviceplugin::api;
use serialport::{SerialPort, TTYPort};

/// One test at a time: a freed pty number can be handed to another test's `pair()`.
static PTY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Wait until the plugin's socket exists (the agent serves before any kubelet is there).
async fn wait_for_socket(agent: &mut common::Proc, path: &Path) {
    let deadline = Instant::now() + WAIT;
    while !path.exists() {
        assert!(!agent.exited(), "the agent exited: {}", agent.stderr());
        assert!(
            Instant::now() < deadline,
            "no {} within {WAIT:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A test's directories: the ring directory (tmpfs) and the kubelet's device-plugin directory.
struct Dirs {
    _shm: tempfile::TempDir,
    _tmp: tempfile::TempDir,
    rings: PathBuf,
    plugins: PathBuf,
    gps_link: PathBuf,
    config: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let shm = common::shm_dir();
        let tmp = tempfile::tempdir().unwrap();
        let plugins = tmp.path().join("device-plugins");
        std::fs::create_dir(&plugins).unwrap();
        Dirs {
            rings: shm.path().join("rings"),
            gps_link: tmp.path().join("gps"),
            config: tmp.path().join("edgeplex.toml"),
            plugins,
            _shm: shm,
            _tmp: tmp,
        }
    }

    /// Write the agent's config with the given streams (`cam0`, `gps_1`).
    fn config(&self, with_gps: bool) -> &Path {
        let mut body = format!(
            r#"
[ring]
dir = "{rings}"
[metrics]
listen = ""
[kube]
mode = "off"
[agent]
retry_initial_secs = 0.1
retry_max_secs = 0.2
[device_plugin]
enabled = true
dir = "{plugins}"
shares = 3
[stream.cam0]
type = "test-pattern"
width = 64
height = 48
fps = 20
slot_count = 4
"#,
            rings = self.rings.display(),
            plugins = self.plugins.display(),
        );
        if with_gps {
            body += &format!(
                "[stream.gps_1]\ntype = \"serial\"\ndevice = \"{}\"\nslot_count = 16\n",
                self.gps_link.display()
            );
        }
        std::fs::write(&self.config, body).unwrap();
        &self.config
    }

    fn agent(&self, with_gps: bool) -> common::Proc {
        let mut cmd = common::edgeplex();
        cmd.args(["run", "--config"])
            .arg(self.config(with_gps))
            .env("EDGEPLEX_LOG", "info");
        common::Proc::spawn("edgeplex run", cmd)
    }

    /// Plug a new pty in at the gps stream's device path.
    fn plug(&self) -> (TTYPort, TTYPort) {
        let (master, slave) = TTYPort::pair().expect("create a pty pair");
        let tmp = self.gps_link.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(slave.name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, &self.gps_link).unwrap();
        (master, slave)
    }

    /// Unplug: the device path disappears and the pty hangs up.
    fn unplug(&self, pty: (TTYPort, TTYPort)) {
        std::fs::remove_file(&self.gps_link).unwrap();
        drop(pty);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn registers_follows_health_and_allocates() {
    let _one = PTY.lock().await;
    let dirs = Dirs::new();
    let mut kubelet = Kubelet::start(&dirs.plugins);
    let mut agent = dirs.agent(true);
    // Plugged in after the agent started, so the agent does not inherit the pty's master (it
    // is not close-on-exec) and unplugging really hangs up.
    let pty = dirs.plug();

    // Registration: one resource per stream, `_` mapped to `-`, the API version the kubelet
    // speaks, an endpoint relative to the directory, and no optional calls asked for.
    let regs = kubelet.registrations(2).await;
    assert_eq!(
        regs.keys().collect::<Vec<_>>(),
        ["edgeplex.io/cam0", "edgeplex.io/gps-1"]
    );
    for (name, r) in &regs {
        assert_eq!(r.version, "v1beta1", "{name}");
        let suffix = name.strip_prefix("edgeplex.io/").unwrap();
        assert_eq!(r.endpoint, format!("edgeplex-{suffix}.sock"));
        assert!(dirs.plugins.join(&r.endpoint).exists(), "{name}: socket");
        let opts = r.options.clone().expect("options sent");
        assert!(!opts.pre_start_required && !opts.get_preferred_allocation_available);
    }

    // Health: the serial stream's shares follow its pty.
    let mut gps = kubelet.plugin(&regs["edgeplex.io/gps-1"].endpoint).await;
    let opts = gps
        .get_device_plugin_options(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opts, regs["edgeplex.io/gps-1"].options.clone().unwrap());
    let mut updates = gps
        .list_and_watch(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    let healthy = wait_devices(&mut updates, "gps healthy", all(api::HEALTHY)).await;
    assert_eq!(ids(&healthy), ["gps-1-0", "gps-1-1", "gps-1-2"]);

    let unplugged = Instant::now();
    dirs.unplug(pty);
    let down = wait_devices(
        &mut updates,
        "gps unhealthy after unplug",
        all(api::UNHEALTHY),
    )
    .await;
    eprintln!(
        "unplug to Unhealthy in ListAndWatch: {:?}",
        unplugged.elapsed()
    );
    assert_eq!(ids(&down), ["gps-1-0", "gps-1-1", "gps-1-2"]);

    let pty = dirs.plug();
    let replugged = Instant::now();
    wait_devices(&mut updates, "gps healthy after replug", all(api::HEALTHY)).await;
    eprintln!(
        "replug to Healthy in ListAndWatch: {:?}",
        replugged.elapsed()
    );

    // Allocate: a known share gets the stream's directory read-only and the ring's path.
    let mut cam = kubelet.plugin(&regs["edgeplex.io/cam0"].endpoint).await;
    let mut cam_updates = cam
        .list_and_watch(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    wait_devices(&mut cam_updates, "cam0 healthy", all(api::HEALTHY)).await;
    let resp = cam
        .allocate(api::AllocateRequest {
            container_requests: vec![
                api::ContainerAllocateRequest {
                    devices_ids: vec!["cam0-1".into()],
                },
                api::ContainerAllocateRequest {
                    devices_ids: vec!["cam0-0".into(), "cam0-2".into()],
                },
            ],
        })
        .await
        .expect("allocate known shares")
        .into_inner();
    assert_eq!(resp.container_responses.len(), 2);
    for c in &resp.container_responses {
        assert_eq!(
            c.mounts,
            [api::Mount {
                container_path: "/run/edgeplex/cam0".into(),
                host_path: dirs.rings.join("cam0").display().to_string(),
                read_only: true,
            }]
        );
        assert_eq!(
            c.envs,
            [(
                "EDGEPLEX_RING_CAM0".to_string(),
                "/run/edgeplex/cam0/cam0.ring".to_string()
            )]
            .into()
        );
        assert!(c.devices.is_empty(), "no device nodes: a ring is a file");
    }
    assert!(dirs.rings.join("cam0").is_dir(), "the mount source exists");
    let gps_alloc = gps
        .allocate(api::AllocateRequest {
            container_requests: vec![api::ContainerAllocateRequest {
                devices_ids: vec!["gps-1-2".into()],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        gps_alloc.container_responses[0].envs["EDGEPLEX_RING_GPS_1"],
        "/run/edgeplex/gps_1/gps_1.ring"
    );

    // Unknown IDs (out of range, another resource's, garbage) are errors, and the whole
    // request fails: the kubelet must not start a container with half an allocation.
    for bad in ["cam0-3", "gps-1-0", "", "../../etc"] {
        let err = cam
            .allocate(api::AllocateRequest {
                container_requests: vec![
                    api::ContainerAllocateRequest {
                        devices_ids: vec!["cam0-0".into()],
                    },
                    api::ContainerAllocateRequest {
                        devices_ids: vec![bad.into()],
                    },
                ],
            })
            .await
            .expect_err("unknown device id must fail");
        assert_eq!(err.code(), tonic::Code::NotFound, "{bad:?}: {err:?}");
        assert!(
            err.message().contains("cam0-0 .. cam0-2"),
            "{}",
            err.message()
        );
    }
    cam.pre_start_container(api::PreStartContainerRequest {
        devices_ids: vec!["cam0-0".into()],
    })
    .await
    .expect("PreStartContainer answers");

    // A graceful stop removes the plugin's sockets.
    agent.signal("TERM");
    agent.wait_success();
    let left: Vec<_> = std::fs::read_dir(&dirs.plugins)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("kubelet.sock")]);
    drop(pty);
    kubelet.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn reregisters_when_the_kubelet_restarts() {
    let dirs = Dirs::new();
    // The agent starts before the kubelet (as at boot): it registers once kubelet.sock appears.
    let mut agent = dirs.agent(false);
    wait_for_socket(&mut agent, &dirs.plugins.join("edgeplex-cam0.sock")).await;
    let mut kubelet = Kubelet::start(&dirs.plugins);
    let first = kubelet.registrations(1).await;
    assert!(first.contains_key("edgeplex.io/cam0"));
    let mut cam = kubelet.plugin("edgeplex-cam0.sock").await;
    let mut updates = cam
        .list_and_watch(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    wait_devices(&mut updates, "cam0 healthy", all(api::HEALTHY)).await;

    for round in 0..2 {
        kubelet = kubelet.restart().await;
        let again = kubelet.registrations(1).await;
        let r = &again["edgeplex.io/cam0"];
        assert_eq!(
            (r.version.as_str(), r.endpoint.as_str()),
            ("v1beta1", "edgeplex-cam0.sock")
        );
        // The plugin serves again on the recreated socket.
        let mut cam = kubelet.plugin(&r.endpoint).await;
        let mut updates = cam
            .list_and_watch(api::Empty {})
            .await
            .unwrap()
            .into_inner();
        let d = wait_devices(
            &mut updates,
            "cam0 after kubelet restart",
            all(api::HEALTHY),
        )
        .await;
        assert_eq!(ids(&d), ["cam0-0", "cam0-1", "cam0-2"], "round {round}");
    }
    assert!(!agent.exited(), "the agent runs on: {}", agent.stderr());
    agent.signal("TERM");
    agent.wait_success();
    kubelet.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_stream_that_goes_away_is_no_longer_advertised() {
    let _one = PTY.lock().await;
    let dirs = Dirs::new();
    let mut kubelet = Kubelet::start(&dirs.plugins);
    let pty = dirs.plug();
    let mut agent = dirs.agent(true);
    kubelet.registrations(2).await;
    agent.kill(); // a crash leaves its sockets behind
    assert!(dirs.plugins.join("edgeplex-gps-1.sock").exists());

    // Restarted without gps_1: its leftover socket is swept, only cam0 registers.
    let mut agent = dirs.agent(false);
    let regs = kubelet.registrations(1).await;
    assert_eq!(regs.keys().collect::<Vec<_>>(), ["edgeplex.io/cam0"]);
    let mut cam = kubelet.plugin("edgeplex-cam0.sock").await;
    let mut updates = cam
        .list_and_watch(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    wait_devices(&mut updates, "cam0", all(api::HEALTHY)).await;
    assert!(!dirs.plugins.join("edgeplex-gps-1.sock").exists());
    assert!(
        tokio::time::timeout(Duration::from_millis(500), kubelet.registrations.recv())
            .await
            .is_err(),
        "nothing else registers"
    );
    agent.signal("TERM");
    agent.wait_success();
    drop(pty);
    kubelet.stop().await;
}

/// In process, through the library: a stream removed from the running plugin's set sends an
/// empty device list (the kubelet zeroes its capacity), ends ListAndWatch and removes its socket.
#[tokio::test(flavor = "current_thread")]
async fn removing_a_stream_at_run_time_withdraws_it() {
    use edgeplex::deviceplugin::{start, DevicePluginSettings};
    use edgeplex::source::StreamHealth;
    let dirs = Dirs::new();
    let mut kubelet = Kubelet::start(&dirs.plugins);
    let settings = DevicePluginSettings {
        enabled: true,
        dir: dirs.plugins.clone(),
        shares: 2,
    };
    let (a, b) = (
        StreamHealth::new(
            "cam0",
            "test-pattern",
            edgeplex::source::kinds::DeviceClass::Camera,
        ),
        StreamHealth::new(
            "cam1",
            "test-pattern",
            edgeplex::source::kinds::DeviceClass::Camera,
        ),
    );
    let shutdown = edgeplex::shutdown::Shutdown::default();
    let plugin = start(&settings, &dirs.rings, vec![a.clone(), b], &shutdown)
        .unwrap()
        .expect("enabled");
    kubelet.registrations(2).await;
    let mut cam1 = kubelet.plugin("edgeplex-cam1.sock").await;
    let mut updates = cam1
        .list_and_watch(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    // Never opened: its shares are advertised, unhealthy.
    wait_devices(&mut updates, "cam1 listed", all(api::UNHEALTHY)).await;

    plugin.set_streams(vec![a]);
    wait_devices(&mut updates, "empty list", |d| d.is_empty()).await;
    let end = tokio::time::timeout(WAIT, updates.message())
        .await
        .expect("ListAndWatch ends");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    assert!(!dirs.plugins.join("edgeplex-cam1.sock").exists());
    assert!(dirs.plugins.join("edgeplex-cam0.sock").exists());

    shutdown.trigger();
    tokio::task::spawn_blocking(move || plugin.join())
        .await
        .unwrap();
    assert!(!dirs.plugins.join("edgeplex-cam0.sock").exists());
    kubelet.stop().await;
}

/// The agent's set of streams changes while the plugin runs (a discovered device arrives, and
/// one whose name cannot be a resource is skipped): the new stream is served and registered,
/// and follows its health.
#[tokio::test(flavor = "current_thread")]
async fn a_stream_added_at_run_time_is_advertised() {
    use edgeplex::deviceplugin::{follow, DevicePluginSettings};
    use edgeplex::source::kinds::DeviceClass;
    use edgeplex::source::{StreamHealth, StreamSet};
    let dirs = Dirs::new();
    let mut kubelet = Kubelet::start(&dirs.plugins);
    let settings = DevicePluginSettings {
        enabled: true,
        dir: dirs.plugins.clone(),
        shares: 2,
    };
    let set = StreamSet::new(vec![StreamHealth::new(
        "cam0",
        "test-pattern",
        DeviceClass::Camera,
    )]);
    let shutdown = edgeplex::shutdown::Shutdown::default();
    let plugin = follow(&settings, &dirs.rings, &set, &shutdown)
        .unwrap()
        .expect("enabled");
    kubelet.registrations(1).await;
    set.insert(StreamHealth::new("cam_", "camera", DeviceClass::Camera));
    set.insert(StreamHealth::new(
        "cam-usb-1",
        "camera",
        DeviceClass::Camera,
    ));
    let regs = kubelet.registrations(1).await;
    assert!(regs.contains_key("edgeplex.io/cam-usb-1"), "{regs:?}");
    let mut cam = kubelet.plugin("edgeplex-cam-usb-1.sock").await;
    let mut updates = cam
        .list_and_watch(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    wait_devices(
        &mut updates,
        "cam-usb-1 listed, not yet up",
        all(api::UNHEALTHY),
    )
    .await;
    assert!(!dirs.plugins.join("edgeplex-cam_.sock").exists());
    assert_eq!(
        std::fs::read_dir(&dirs.plugins).unwrap().count(),
        3,
        "kubelet.sock and two plugin sockets"
    );
    set.remove("cam-usb-1");
    wait_devices(&mut updates, "empty list", |d| d.is_empty()).await;
    shutdown.trigger();
    tokio::task::spawn_blocking(move || plugin.join())
        .await
        .unwrap();
    kubelet.stop().await;
}

#[test]
fn bad_stream_names_for_the_plugin_exit_64() {
    let dirs = Dirs::new();
    std::fs::write(
        &dirs.config,
        format!(
            "[ring]\ndir = \"{}\"\n[metrics]\nlisten = \"\"\n[kube]\nmode = \"off\"\n[device_plugin]\nenabled = true\ndir = \"{}\"\n[stream.cam_]\ntype = \"test-pattern\"\n",
            dirs.rings.display(),
            dirs.plugins.display()
        ),
    )
    .unwrap();
    for check in [false, true] {
        let mut cmd = common::edgeplex();
        cmd.args(["run", "--config"]).arg(&dirs.config);
        if check {
            cmd.arg("--check");
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "--check {check}: {err}");
        assert!(
            err.contains("device_plugin: stream \"cam_\" cannot be a resource name"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

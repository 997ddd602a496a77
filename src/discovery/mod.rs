//! Discovery on a snapshot: which camera and serial device nodes this machine has, what the
//! kernel says about each (driver, USB vendor and product, serial number, port, stable
//! `/dev/.../by-id` and `by-path` links), and which of them the configured rules turn into
//! streams, under which names, with which settings.
//!
//! Three steps, each testable alone over fixture trees of `/sys` and `/dev`:
//!
//! 1. [`scan`] / [`probe_one`] read sysfs and `/dev` under [`Roots`] and ask a [`CapsProbe`]
//!    (real: `VIDIOC_QUERYCAP`) whether a video node captures video: each candidate node becomes
//!    a [`Probe`], a [`Device`] or the reason it is not one;
//! 2. [`plan`] applies the rules ([`DiscoverySettings`]) to the probes, the explicit streams'
//!    claims and the stream limit: pure and deterministic, one [`Outcome`] per node;
//! 3. the caller acts on the outcomes (the agent starts streams, `edgeplex devices` prints them).
//!
//! This module never opens a device for streaming, never watches for events and never starts a
//! stream: the agent's discovery loop does, on top of it.

pub mod live;
mod plan;
mod report;
mod rules;
mod sysfs;
pub mod watch;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use plan::{plan, plan_keeping, resolve_claims, Claim, Outcome, Planned, Reason};
pub use report::{devices_command, render_json, render_text, DevicesArgs, DevicesError};
pub use rules::{DiscoverySettings, Match, Rule, Template, TEMPLATE_FIELDS};
pub use sysfs::{probe_one, scan};

/// What kind of device a node is, as discovery takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A V4L2 node whose own capabilities include video capture.
    Camera,
    /// A tty backed by a real UART or USB serial driver.
    Serial,
}

impl Kind {
    /// The stream `type` a device of this kind becomes.
    pub fn stream_type(self) -> &'static str {
        match self {
            Kind::Camera => "camera",
            Kind::Serial => "serial",
        }
    }

    /// `camera` or `serial`.
    pub fn as_str(self) -> &'static str {
        self.stream_type()
    }
}

/// One device node as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    /// The node's kernel name: `video0`, `ttyUSB0`, `ttyS1`.
    pub name: String,
    /// The node's path under the `/dev` root: `/dev/video0`.
    pub devnode: PathBuf,
    /// Camera or serial port.
    pub kind: Kind,
    /// The kernel driver bound to the node's device (`uvcvideo`, `vivid`, `ftdi_sio`, `serial`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// USB vendor ID, four lower-case hex digits (`046d`), when the device is on USB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// USB product ID, four lower-case hex digits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// The USB serial number, when the device reports one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Where it is plugged in: the USB port path (`1-1.2`) for USB devices, else the kernel
    /// name of the parent device (`0000:00:04.0`, `vivid.0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// The V4L2 node's index within its device (`/sys/class/video4linux/videoN/index`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// A human name: the V4L2 card name or the USB product string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// `/dev/v4l/by-id/*` or `/dev/serial/by-id/*` links that resolve to the node, sorted.
    pub by_id: Vec<PathBuf>,
    /// `/dev/v4l/by-path/*` or `/dev/serial/by-path/*` links that resolve to the node, sorted.
    pub by_path: Vec<PathBuf>,
}

impl Device {
    /// The path a stream should open: a by-id link when the device has a serial number (then
    /// the link names this one device wherever it is plugged), else a by-path link (the port),
    /// else the node itself.
    pub fn stable_path(&self) -> &Path {
        if self.serial.is_some() {
            if let Some(p) = self.by_id.first() {
                return p;
            }
        }
        self.by_path
            .first()
            .map(PathBuf::as_path)
            .unwrap_or(&self.devnode)
    }
}

/// One candidate node and what probing it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// The node's kernel name (`video1`).
    pub name: String,
    /// The node's path under the `/dev` root.
    pub devnode: PathBuf,
    /// The device, or why the node is not one discovery takes.
    #[serde(flatten, with = "probe_result")]
    pub result: Result<Device, Reason>,
}

mod probe_result {
    use serde::ser::SerializeMap;
    use serde::Serializer;

    use super::{Device, Reason};

    pub fn serialize<S: Serializer>(r: &Result<Device, Reason>, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        match r {
            Ok(d) => m.serialize_entry("device", d)?,
            Err(reason) => m.serialize_entry("not_taken", reason)?,
        }
        m.end()
    }
}

/// Where sysfs and the device nodes are: `/sys` and `/dev` on a machine, temporary directories
/// in tests and with `edgeplex devices --sys/--dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// The sysfs root (`/sys`).
    pub sys: PathBuf,
    /// The device directory (`/dev`).
    pub dev: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }
}

/// Asks a V4L2 node for its own capabilities (`device_caps`).
pub trait CapsProbe {
    /// The node's `device_caps` bits (`V4L2_CAP_*`), or why they cannot be read (one line).
    fn device_caps(&self, devnode: &Path) -> Result<u32, String>;
}

/// The real probe: `VIDIOC_QUERYCAP` through `edgeplex-v4l2`.
#[derive(Debug, Clone, Copy, Default)]
pub struct V4l2Caps;

impl CapsProbe for V4l2Caps {
    fn device_caps(&self, devnode: &Path) -> Result<u32, String> {
        match edgeplex_v4l2::query_caps(devnode) {
            Ok(c) => Ok(c.device_caps),
            Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => Err(format!(
                "{} is not a V4L2 device (VIDIOC_QUERYCAP: {e})",
                devnode.display()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(format!(
                "cannot open {}: {e}; connect the camera interface (snap connect edgeplex:camera) or add the agent's user to the video group",
                devnode.display()
            )),
            Err(e) => Err(format!("cannot query {}: {e}", devnode.display())),
        }
    }
}

/// A fixed table of capabilities by node path, for tests and fixture trees. A node missing from
/// the table fails like a node that is not a V4L2 device.
#[derive(Debug, Clone, Default)]
pub struct CapsTable(pub BTreeMap<PathBuf, Result<u32, String>>);

impl CapsProbe for CapsTable {
    fn device_caps(&self, devnode: &Path) -> Result<u32, String> {
        self.0.get(devnode).cloned().unwrap_or_else(|| {
            Err(format!(
                "{} is not a V4L2 device (not in the table)",
                devnode.display()
            ))
        })
    }
}

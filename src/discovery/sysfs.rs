//! Reading one node's description from sysfs and `/dev`, the way udev would, without libudev.
//!
//! - Cameras: `/sys/class/video4linux/videoN`, whose `device` link leads to the driver's device;
//!   a USB camera's USB device (`idVendor`, `idProduct`, `serial`) is an ancestor of that. Only
//!   `video*` nodes whose own capabilities (`device_caps`) include video capture are taken.
//! - Serial ports: `/sys/class/tty/NAME` with a `device` link (virtual terminals and ptys have
//!   none). A serial-core port (`ttyS*`, `ttyAMA*`) whose `type` reads `0` (`PORT_UNKNOWN`) is
//!   one of the placeholders the 8250 driver registers without a UART behind it, and is not
//!   taken; nor is a port listed in `/sys/class/tty/console/active` (the kernel console).
//! - Stable links: `/dev/v4l/by-id`, `/dev/v4l/by-path`, `/dev/serial/by-id`,
//!   `/dev/serial/by-path`, each resolved and kept when it leads to the node.
//!
//! Every read is bounded (ancestor walks, directory listings, file sizes) and every failure is a
//! [`Reason`], never a panic: sysfs is outside input as far as this code is concerned.

use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{CapsProbe, Device, Kind, Probe, Reason, Roots};

/// Deepest ancestor walk from a device to its USB device.
const MAX_DEPTH: usize = 32;
/// Most entries read from one directory.
const MAX_ENTRIES: usize = 4096;
/// Most bytes read from one attribute file.
const MAX_ATTR: u64 = 4096;

/// Why listing candidates failed as a whole.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ScanError(pub String);

/// Every candidate node under `roots`: `video*` nodes and ttys with a device behind them, each
/// probed, in natural name order (`video2` before `video10`).
pub fn scan(roots: &Roots, caps: &dyn CapsProbe) -> Result<Vec<Probe>, ScanError> {
    match std::fs::metadata(roots.sys.join("class")) {
        Ok(m) if m.is_dir() => {}
        Ok(_) | Err(_) => {
            return Err(ScanError(format!(
                "{} is not a sysfs root (it has no class/ directory); pass the directory sysfs is mounted on, e.g. --sys /sys",
                roots.sys.display()
            )))
        }
    }
    let mut names = Vec::new();
    for name in list(&roots.sys.join("class/video4linux"))? {
        if name.starts_with("video") {
            names.push(name);
        }
    }
    let tty = roots.sys.join("class/tty");
    for name in list(&tty)? {
        if std::fs::symlink_metadata(tty.join(&name).join("device")).is_ok() {
            names.push(name);
        }
    }
    names.sort_by(|a, b| natural(a).cmp(&natural(b)));
    names.dedup();
    Ok(names.iter().map(|n| probe_one(roots, caps, n)).collect())
}

/// The sort key of a node name: its text, then its number (`video10` after `video2`).
pub(crate) fn natural(name: &str) -> (&str, u64, &str) {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (text, num) = name.split_at(name.len() - digits);
    (text, num.parse().unwrap_or(u64::MAX), name)
}

/// Names in `dir` (none when it does not exist), at most [`MAX_ENTRIES`], sorted.
fn list(dir: &Path) -> Result<Vec<String>, ScanError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ScanError(format!("cannot list {}: {e}", dir.display())));
        }
    };
    let mut names: Vec<String> = rd
        .take(MAX_ENTRIES)
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Probe the node called `name` (`video0`, `ttyUSB0`: a name in `/dev`, as an inotify or uevent
/// event gives it).
pub fn probe_one(roots: &Roots, caps: &dyn CapsProbe, name: &str) -> Probe {
    let valid = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0']);
    if !valid {
        return Probe {
            name: name.to_owned(),
            devnode: PathBuf::from(name),
            result: Err(Reason::Unknown(format!("{name:?} is not a device name"))),
        };
    }
    let devnode = roots.dev.join(name);
    let video = roots.sys.join("class/video4linux").join(name);
    let tty = roots.sys.join("class/tty").join(name);
    let result = if std::fs::symlink_metadata(&video).is_ok() {
        camera(roots, caps, name, &video, &devnode)
    } else if std::fs::symlink_metadata(&tty).is_ok() {
        serial(roots, name, &tty, &devnode)
    } else {
        Err(Reason::Unknown(format!(
            "{name} is neither in {} nor in {}",
            roots.sys.join("class/video4linux").display(),
            roots.sys.join("class/tty").display()
        )))
    };
    Probe {
        name: name.to_owned(),
        devnode,
        result,
    }
}

fn camera(
    roots: &Roots,
    caps: &dyn CapsProbe,
    name: &str,
    class: &Path,
    devnode: &Path,
) -> Result<Device, Reason> {
    if !name.starts_with("video") {
        return Err(Reason::NotVideoNode);
    }
    node_exists(devnode)?;
    let bits = caps.device_caps(devnode).map_err(Reason::CapsUnreadable)?;
    let capture = edgeplex_v4l2::CAP_VIDEO_CAPTURE | edgeplex_v4l2::CAP_VIDEO_CAPTURE_MPLANE;
    if bits & capture == 0 {
        return Err(Reason::NotCapture { device_caps: bits });
    }
    let index = attr(&class.join("index"))?.and_then(|s| s.parse().ok());
    let label = attr(&class.join("name"))?;
    let mut d = described(roots, name, Kind::Camera, class, devnode, "v4l")?;
    d.index = index;
    if label.is_some() {
        d.label = label;
    }
    Ok(d)
}

fn serial(roots: &Roots, name: &str, class: &Path, devnode: &Path) -> Result<Device, Reason> {
    if std::fs::symlink_metadata(class.join("device")).is_err() {
        return Err(Reason::NotSerial);
    }
    if let Some(active) = attr(&roots.sys.join("class/tty/console/active"))? {
        if active.split_whitespace().any(|c| c == name) {
            return Err(Reason::Console);
        }
    }
    if attr(&class.join("type"))?.as_deref() == Some("0") {
        return Err(Reason::NoUart);
    }
    node_exists(devnode)?;
    described(roots, name, Kind::Serial, class, devnode, "serial")
}

fn node_exists(devnode: &Path) -> Result<(), Reason> {
    match std::fs::metadata(devnode) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Reason::NoDeviceNode),
        Err(e) => Err(Reason::Unreadable(format!(
            "cannot stat {}: {e}",
            devnode.display()
        ))),
    }
}

/// Driver, USB identity, port and links of the node whose class directory is `class`.
fn described(
    roots: &Roots,
    name: &str,
    kind: Kind,
    class: &Path,
    devnode: &Path,
    links_dir: &str,
) -> Result<Device, Reason> {
    let mut d = Device {
        name: name.to_owned(),
        devnode: devnode.to_owned(),
        kind,
        driver: None,
        vendor: None,
        product: None,
        serial: None,
        port: None,
        index: None,
        label: None,
        by_id: Vec::new(),
        by_path: Vec::new(),
    };
    let parent = match std::fs::canonicalize(class.join("device")) {
        Ok(p) => Some(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(Reason::Unreadable(format!(
                "cannot resolve {}: {e}",
                class.join("device").display()
            )))
        }
    };
    if let Some(parent) = parent {
        d.driver = link_name(&parent.join("driver"))?;
        d.port = parent.file_name().map(|n| n.to_string_lossy().into_owned());
        let sys = std::fs::canonicalize(&roots.sys).map_err(|e| {
            Reason::Unreadable(format!("cannot resolve {}: {e}", roots.sys.display()))
        })?;
        let mut dir = parent.as_path();
        for _ in 0..MAX_DEPTH {
            if !dir.starts_with(&sys) || dir == sys {
                break;
            }
            if let Some(vendor) = attr(&dir.join("idVendor"))? {
                d.vendor = Some(vendor.to_ascii_lowercase());
                d.product = attr(&dir.join("idProduct"))?.map(|p| p.to_ascii_lowercase());
                d.serial = attr(&dir.join("serial"))?;
                d.port = dir.file_name().map(|n| n.to_string_lossy().into_owned());
                if d.label.is_none() {
                    d.label = attr(&dir.join("product"))?;
                }
                break;
            }
            match dir.parent() {
                Some(p) => dir = p,
                None => break,
            }
        }
    }
    let target = std::fs::canonicalize(devnode)
        .map_err(|e| Reason::Unreadable(format!("cannot resolve {}: {e}", devnode.display())))?;
    d.by_id = links_to(&roots.dev.join(links_dir).join("by-id"), &target);
    d.by_path = links_to(&roots.dev.join(links_dir).join("by-path"), &target);
    Ok(d)
}

/// The links in `dir` that resolve to `target`, sorted. A link that does not resolve (dangling,
/// a loop, unreadable) is no one's.
fn links_to(dir: &Path, target: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .take(MAX_ENTRIES)
        .filter_map(|e| {
            let path = e.ok()?.path();
            (std::fs::canonicalize(&path).ok()? == target).then_some(path)
        })
        .collect();
    out.sort();
    out
}

/// The file name a symlink points to (`driver` -> `.../uvcvideo`), `None` when there is none.
fn link_name(link: &Path) -> Result<Option<String>, Reason> {
    match std::fs::read_link(link) {
        Ok(t) => Ok(t.file_name().map(|n| n.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Reason::Unreadable(format!(
            "cannot read {}: {e}",
            link.display()
        ))),
    }
}

/// A sysfs attribute, trimmed; `None` when the file does not exist or is empty. At most
/// [`MAX_ATTR`] bytes are read; bytes that are not UTF-8 are replaced.
fn attr(path: &Path) -> Result<Option<String>, Reason> {
    // Non-blocking: a FIFO where an attribute should be (a hostile tree) must not hang the scan.
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Reason::Unreadable(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let mut buf = Vec::new();
    file.take(MAX_ATTR)
        .read_to_end(&mut buf)
        .map_err(|e| Reason::Unreadable(format!("cannot read {}: {e}", path.display())))?;
    let text = String::from_utf8_lossy(&buf);
    let text = text.trim();
    Ok((!text.is_empty()).then(|| text.to_owned()))
}

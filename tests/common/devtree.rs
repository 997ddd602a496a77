//! Fixture trees of `/sys` and `/dev` shaped like the kernel's and udev's, for discovery tests:
//! device directories under `sys/devices/...`, class entries as relative symlinks to them
//! (`sys/class/video4linux/video0 -> ../../devices/.../video4linux/video0`), `device` and
//! `driver` links, USB attributes (`idVendor`, `idProduct`, `serial`, `product`) on the USB
//! device, device nodes as plain files in `dev/`, and udev's stable links
//! (`dev/v4l/by-id/NAME -> ../../video0`).
//!
//! Used by the unit tests of `src/discovery` (through `#[path]`) and by integration tests; it
//! depends on std and tempfile only.

#![allow(dead_code)]

use std::fs;
use std::path::{Component, Path, PathBuf};

/// A USB device: where it is plugged in and what it says about itself.
#[derive(Debug, Clone, Copy)]
pub struct Usb<'a> {
    /// USB port path, which is also the device's sysfs name (`1-1`, `1-1.2`).
    pub port: &'a str,
    /// `idVendor`.
    pub vendor: &'a str,
    /// `idProduct`.
    pub product: &'a str,
    /// `serial`, absent when `None`.
    pub serial: Option<&'a str>,
    /// `product` (the product string).
    pub name: &'a str,
}

/// A temporary `sys/` + `dev/` pair.
pub struct DevTree {
    dir: tempfile::TempDir,
}

impl Default for DevTree {
    fn default() -> Self {
        Self::new()
    }
}

impl DevTree {
    /// Empty class directories, an empty `/dev`.
    pub fn new() -> DevTree {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in [
            "sys/class/video4linux",
            "sys/class/tty",
            "sys/devices",
            "sys/bus/usb/drivers",
            "dev",
        ] {
            fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        DevTree { dir }
    }

    /// The sysfs root.
    pub fn sys(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    /// The `/dev` root.
    pub fn dev(&self) -> PathBuf {
        self.dir.path().join("dev")
    }

    /// `rel` under the tree's top directory (`sys/...`, `dev/...`).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Write attribute `name` = `value` (plus the newline sysfs ends values with) in `dir`.
    pub fn attr(&self, dir: &Path, name: &str, value: &str) {
        fs::create_dir_all(dir).expect("mkdir");
        fs::write(dir.join(name), format!("{value}\n")).expect("write attribute");
    }

    /// A relative symlink at `link` to `target`, as the kernel and udev make them.
    pub fn symlink(&self, target: &Path, link: &Path) {
        fs::create_dir_all(link.parent().unwrap()).expect("mkdir");
        let _ = fs::remove_file(link);
        std::os::unix::fs::symlink(relative(link.parent().unwrap(), target), link)
            .expect("symlink");
    }

    fn driver(&self, dev: &Path, bus: &str, driver: &str) {
        let d = self
            .sys()
            .join("bus")
            .join(bus)
            .join("drivers")
            .join(driver);
        fs::create_dir_all(&d).expect("mkdir driver");
        self.symlink(&d, &dev.join("driver"));
    }

    /// The USB device directory for `usb` (created with its attributes), under one PCI host
    /// controller.
    pub fn usb_device(&self, usb: &Usb) -> PathBuf {
        let dir = self
            .sys()
            .join("devices/pci0000:00/0000:00:14.0/usb1")
            .join(usb.port);
        self.attr(&dir, "idVendor", usb.vendor);
        self.attr(&dir, "idProduct", usb.product);
        self.attr(&dir, "product", usb.name);
        match usb.serial {
            Some(s) => self.attr(&dir, "serial", s),
            None => {
                let _ = fs::remove_file(dir.join("serial"));
            }
        }
        dir
    }

    /// A V4L2 node `node` (`video0`) of a USB camera on interface `iface` (`1.0`), with V4L2
    /// index `index` and the device node in `/dev`. Returns the node's sysfs directory.
    pub fn usb_camera(&self, node: &str, usb: &Usb, iface: &str, index: u32) -> PathBuf {
        let intf = self.usb_device(usb).join(format!("{}:{iface}", usb.port));
        fs::create_dir_all(&intf).expect("mkdir interface");
        self.driver(&intf, "usb", "uvcvideo");
        self.v4l_node(node, &intf, index, usb.name)
    }

    /// A V4L2 node of a platform device (`vivid.0`, driver `vivid`).
    pub fn platform_camera(&self, node: &str, parent: &str, driver: &str, index: u32) -> PathBuf {
        let dev = self.sys().join("devices/platform").join(parent);
        fs::create_dir_all(&dev).expect("mkdir platform device");
        self.driver(&dev, "platform", driver);
        self.v4l_node(node, &dev, index, &format!("{driver}-000-vid-cap"))
    }

    fn v4l_node(&self, node: &str, parent: &Path, index: u32, name: &str) -> PathBuf {
        let dir = parent.join("video4linux").join(node);
        self.attr(&dir, "index", &index.to_string());
        self.attr(&dir, "name", name);
        self.symlink(parent, &dir.join("device"));
        self.symlink(&dir, &self.sys().join("class/video4linux").join(node));
        fs::write(self.dev().join(node), b"").expect("device node");
        dir
    }

    /// A USB serial adapter's tty (`ttyUSB0`, driver `ftdi_sio`; `ttyACM0`, driver `cdc_acm`).
    pub fn usb_serial(&self, node: &str, usb: &Usb, driver: &str) -> PathBuf {
        let intf = self.usb_device(usb).join(format!("{}:1.0", usb.port));
        let port = if node.starts_with("ttyACM") {
            // cdc-acm: the tty's device is the interface.
            self.driver(&intf, "usb", driver);
            intf.clone()
        } else {
            // usb-serial: the tty's device is the port device under the interface.
            let p = intf.join(node);
            fs::create_dir_all(&p).expect("mkdir port");
            self.driver(&p, "usb-serial", driver);
            p
        };
        self.tty_node(node, &port, None)
    }

    /// A UART on a PCI card (`ttyS1` on `0000:00:04.0`, driver `serial`), `type` 4 (16550A).
    pub fn pci_serial(&self, node: &str, pci: &str) -> PathBuf {
        let dev = self.sys().join("devices/pci0000:00").join(pci);
        fs::create_dir_all(&dev).expect("mkdir pci");
        self.driver(&dev, "pci", "serial");
        self.tty_node(node, &dev, Some("4"))
    }

    /// One of the 8250 driver's ports without a UART (`type` 0).
    pub fn placeholder_serial(&self, node: &str) -> PathBuf {
        let dev = self.sys().join("devices/platform/serial8250");
        fs::create_dir_all(&dev).expect("mkdir serial8250");
        self.driver(&dev, "platform", "serial8250");
        self.tty_node(node, &dev, Some("0"))
    }

    /// A virtual terminal: a tty class entry with no `device` link.
    pub fn virtual_tty(&self, node: &str) -> PathBuf {
        let dir = self.sys().join("devices/virtual/tty").join(node);
        fs::create_dir_all(&dir).expect("mkdir vt");
        self.symlink(&dir, &self.sys().join("class/tty").join(node));
        fs::write(self.dev().join(node), b"").expect("device node");
        dir
    }

    /// `/sys/class/tty/console/active`.
    pub fn console(&self, active: &str) {
        let dir = self.sys().join("devices/virtual/tty/console");
        self.attr(&dir, "active", active);
        self.symlink(&dir, &self.sys().join("class/tty/console"));
    }

    fn tty_node(&self, node: &str, parent: &Path, uart_type: Option<&str>) -> PathBuf {
        let dir = parent.join("tty").join(node);
        fs::create_dir_all(&dir).expect("mkdir tty");
        if let Some(t) = uart_type {
            self.attr(&dir, "type", t);
        }
        self.symlink(parent, &dir.join("device"));
        self.symlink(&dir, &self.sys().join("class/tty").join(node));
        fs::write(self.dev().join(node), b"").expect("device node");
        dir
    }

    /// udev's stable link `dev/<dir>/<name>` (`v4l/by-id`, `serial/by-path`) to node `node`.
    pub fn link(&self, dir: &str, name: &str, node: &str) -> PathBuf {
        let link = self.dev().join(dir).join(name);
        self.symlink(&self.dev().join(node), &link);
        link
    }

    /// Remove a stable link.
    pub fn unlink(&self, dir: &str, name: &str) {
        fs::remove_file(self.dev().join(dir).join(name)).expect("remove link");
    }

    /// Unplug node `node`: its class entry, its sysfs directory, its device node and the
    /// stable links that led to it.
    pub fn remove(&self, node: &str) {
        for class in ["video4linux", "tty"] {
            let entry = self.sys().join("class").join(class).join(node);
            if let Ok(target) = fs::canonicalize(&entry) {
                let _ = fs::remove_dir_all(target);
            }
            let _ = fs::remove_file(entry);
        }
        let devnode = self.dev().join(node);
        for dir in ["v4l/by-id", "v4l/by-path", "serial/by-id", "serial/by-path"] {
            if let Ok(rd) = fs::read_dir(self.dev().join(dir)) {
                for e in rd.flatten() {
                    let points_here = fs::read_link(e.path())
                        .is_ok_and(|t| normalise(&e.path().parent().unwrap().join(t)) == devnode);
                    if points_here {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
        }
        let _ = fs::remove_file(devnode);
    }
}

/// `path` with `.` and `..` resolved lexically.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// The relative path from directory `from` to `to` (both absolute).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to[common..] {
        rel.push(c);
    }
    rel
}

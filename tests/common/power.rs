//! A `/sys/class/power_supply` fixture: the battery and mains supplies the power tests, the
//! agent tests and the end-to-end tests point the agent's sysfs reader at.

use std::fs;
use std::path::PathBuf;

/// A `/sys/class/power_supply` lookalike: supplies live under `devices/` and the class
/// directory holds symlinks to them, as in real sysfs.
pub struct Sysfs {
    dir: tempfile::TempDir,
}

impl Sysfs {
    /// An empty class directory.
    pub fn empty() -> Sysfs {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("class/power_supply")).expect("mkdir class");
        fs::create_dir_all(dir.path().join("devices")).expect("mkdir devices");
        Sysfs { dir }
    }

    /// A laptop-like node: battery `BAT0` discharging at 80 % and mains `AC` offline.
    pub fn on_battery() -> Sysfs {
        let s = Sysfs::empty();
        s.battery("Discharging", 80, 40_000_000);
        s.mains(false);
        s
    }

    /// The class directory (what `power.sysfs_root` names).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("class/power_supply")
    }

    /// Create or update a supply's attributes. Each is written whole (write, then rename), so a
    /// reader never sees half a value; sysfs values end in a newline.
    pub fn supply(&self, name: &str, attrs: &[(&str, &str)]) {
        let dev = self.dir.path().join("devices").join(name);
        if !dev.exists() {
            fs::create_dir_all(&dev).expect("mkdir supply");
            std::os::unix::fs::symlink(&dev, self.root().join(name)).expect("symlink");
        }
        for (attr, value) in attrs {
            let tmp = dev.join(format!(".{attr}.tmp"));
            fs::write(&tmp, format!("{value}\n")).expect("write attribute");
            fs::rename(&tmp, dev.join(attr)).expect("rename attribute");
        }
    }

    /// The directory of supply `name` (the class entry's target).
    pub fn device(&self, name: &str) -> PathBuf {
        self.dir.path().join("devices").join(name)
    }

    /// Remove one attribute of a supply.
    pub fn remove(&self, name: &str, attr: &str) {
        fs::remove_file(self.dir.path().join("devices").join(name).join(attr))
            .expect("remove attribute");
    }

    /// Battery `BAT0` as an ACPI laptop driver exposes it: energy in µWh (50 Wh full, 57 Wh
    /// design), a 9.5 W draw, 11.4 V, capacity in percent.
    pub fn battery(&self, status: &str, capacity: u32, energy_uwh: u64) {
        self.supply(
            "BAT0",
            &[
                ("type", "Battery"),
                ("status", status),
                ("present", "1"),
                ("capacity", &capacity.to_string()),
                ("capacity_level", "Normal"),
                ("voltage_now", "11400000"),
                ("power_now", "9500000"),
                ("energy_now", &energy_uwh.to_string()),
                ("energy_full", "50000000"),
                ("energy_full_design", "57000000"),
                ("technology", "Li-ion"),
                ("manufacturer", "ACME"),
            ],
        );
    }

    /// Mains supply `AC`.
    pub fn mains(&self, online: bool) {
        self.supply(
            "AC",
            &[
                ("type", "Mains"),
                ("online", if online { "1" } else { "0" }),
            ],
        );
    }
}

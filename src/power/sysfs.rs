//! The reader of the Linux power-supply class (`/sys/class/power_supply/<name>/<attribute>`).
//!
//! It owns turning a directory tree into [`Supply`] values and nothing else: no estimates, no
//! policy. It reads whatever root it is given, so tests point it at a fixture directory and the
//! agent at `/sys/class/power_supply`. Drivers differ in which attributes they expose, and some
//! fail reads with `EIO` or `ENODATA`; a missing, unreadable or malformed attribute is simply
//! absent (`None`). Only a root that cannot be listed at all is an error.
//!
//! Units follow the kernel ABI (`Documentation/ABI/testing/sysfs-class-power`): µV, µA, µW,
//! µWh, µAh, seconds, percent. Field names carry the unit.

use std::fs;
use std::io::Read;
use std::path::Path;

use serde::Serialize;

use super::PowerError;

/// Longest attribute read. Sysfs values are at most a page, real ones under 100 bytes; a bigger
/// file (a fixture gone wrong) is cut here and then fails to parse.
const MAX_ATTR_BYTES: u64 = 4096;

/// The `type` attribute: what kind of supply this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SupplyKind {
    /// `Battery`.
    Battery,
    /// `UPS`.
    Ups,
    /// `Mains`: an AC adapter or a DC input.
    Mains,
    /// `USB`, and the older kernels' `USB_DCP`, `USB_CDP`, `USB_PD`, ... types.
    Usb,
    /// `Wireless`: an inductive charger.
    Wireless,
    /// Any other value (for example `BrickID`).
    Other,
}

impl SupplyKind {
    /// Parse the kernel's text (without the trailing newline).
    pub fn parse(s: &str) -> SupplyKind {
        match s {
            "Battery" => SupplyKind::Battery,
            "UPS" => SupplyKind::Ups,
            "Mains" => SupplyKind::Mains,
            "Wireless" => SupplyKind::Wireless,
            s if s == "USB" || s.starts_with("USB_") => SupplyKind::Usb,
            _ => SupplyKind::Other,
        }
    }
}

/// The `status` attribute of a battery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// `Unknown`, or a value this version does not know.
    Unknown,
    /// `Charging`.
    Charging,
    /// `Discharging`: the battery is powering the load.
    Discharging,
    /// `Not charging`: external power is present but the battery is not being charged
    /// (charge limit reached, charger inhibited).
    NotCharging,
    /// `Full`.
    Full,
}

impl Status {
    /// Parse the kernel's text; an unknown word is [`Status::Unknown`].
    pub fn parse(s: &str) -> Status {
        match s {
            "Charging" => Status::Charging,
            "Discharging" => Status::Discharging,
            "Not charging" => Status::NotCharging,
            "Full" => Status::Full,
            _ => Status::Unknown,
        }
    }

    /// Lower-case words for humans: `"discharging"`, `"not charging"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Unknown => "unknown",
            Status::Charging => "charging",
            Status::Discharging => "discharging",
            Status::NotCharging => "not charging",
            Status::Full => "full",
        }
    }

    /// Whether this status says external power is present (`Charging`, `Full`,
    /// `Not charging`).
    pub fn implies_external_power(self) -> bool {
        matches!(self, Status::Charging | Status::Full | Status::NotCharging)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `capacity_level` attribute: the driver's coarse view of the charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CapacityLevel {
    /// `Unknown`, or a value this version does not know.
    Unknown,
    /// `Critical`.
    Critical,
    /// `Low`.
    Low,
    /// `Normal`.
    Normal,
    /// `High`.
    High,
    /// `Full`.
    Full,
}

impl CapacityLevel {
    /// Parse the kernel's text; an unknown word is [`CapacityLevel::Unknown`].
    pub fn parse(s: &str) -> CapacityLevel {
        match s {
            "Critical" => CapacityLevel::Critical,
            "Low" => CapacityLevel::Low,
            "Normal" => CapacityLevel::Normal,
            "High" => CapacityLevel::High,
            "Full" => CapacityLevel::Full,
            _ => CapacityLevel::Unknown,
        }
    }
}

/// The `scope` attribute: whether a battery powers the system or only a peripheral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// `Unknown`, or a value this version does not know.
    Unknown,
    /// `System`: it powers the machine.
    System,
    /// `Device`: it powers a peripheral only (a wireless mouse, a headset).
    Device,
}

impl Scope {
    /// Parse the kernel's text; an unknown word is [`Scope::Unknown`].
    pub fn parse(s: &str) -> Scope {
        match s {
            "System" => Scope::System,
            "Device" => Scope::Device,
            _ => Scope::Unknown,
        }
    }
}

/// One power supply as read from its sysfs directory. Every attribute is optional: drivers
/// expose different sets, and an unreadable or malformed value is `None`.
///
/// Values outside the ABI's valid range are `None` too: a capacity outside 0–100, a negative
/// voltage, energy or charge, a zero or negative full energy or charge, `present` or `online`
/// values other than those the ABI lists. Currents and powers keep their sign, because drivers
/// disagree on it (the ABI says negative while discharging; many report a positive magnitude);
/// use [`Supply::status`] for the direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Supply {
    /// Directory name, e.g. `BAT0`, `AC`, `axp20x-usb`.
    pub name: String,
    /// `type`.
    pub kind: Option<SupplyKind>,
    /// `scope`; most system batteries do not expose it.
    pub scope: Option<Scope>,
    /// `status` (batteries).
    pub status: Option<Status>,
    /// `present`: 0 absent, 1 present.
    pub present: Option<bool>,
    /// `online` (mains, USB, wireless): 0 offline, 1 or 2 online.
    pub online: Option<bool>,
    /// `capacity`, percent, 0–100.
    pub capacity_pct: Option<u8>,
    /// `capacity_level`.
    pub capacity_level: Option<CapacityLevel>,
    /// `voltage_now`, µV.
    pub voltage_uv: Option<i64>,
    /// `current_now`, µA, with the driver's sign.
    pub current_ua: Option<i64>,
    /// `power_now`, µW, with the driver's sign.
    pub power_uw: Option<i64>,
    /// `energy_now`, µWh.
    pub energy_uwh: Option<i64>,
    /// `energy_full`, µWh.
    pub energy_full_uwh: Option<i64>,
    /// `charge_now`, µAh.
    pub charge_uah: Option<i64>,
    /// `charge_full`, µAh.
    pub charge_full_uah: Option<i64>,
    /// `time_to_empty_now`, or else `time_to_empty_avg`, seconds, as the driver gives it.
    /// Drivers use 0 and 65535 minutes as "not available"; the monitor ignores those.
    pub time_to_empty_s: Option<u64>,
}

impl Supply {
    /// Whether a remaining-charge figure is present: capacity, energy or charge.
    fn has_level(&self) -> bool {
        self.capacity_pct.is_some() || self.energy_uwh.is_some() || self.charge_uah.is_some()
    }

    /// Whether this is a battery that powers the system: `type` is `Battery` (or `UPS` with a
    /// charge figure, or no `type` at all but a charge figure and no `online`), it is not
    /// marked absent (`present` = 0), and its `scope` is not `Device` (a peripheral's battery).
    pub fn is_system_battery(&self) -> bool {
        let battery_like = match self.kind {
            Some(SupplyKind::Battery) => true,
            Some(SupplyKind::Ups) => self.has_level(),
            None => self.has_level() && self.online.is_none(),
            Some(_) => false,
        };
        battery_like && self.present != Some(false) && self.scope != Some(Scope::Device)
    }

    /// Whether this is an external supply (mains, USB, wireless, or a UPS without a charge
    /// figure, or an untyped supply with `online`) that is online now.
    pub fn is_external_online(&self) -> bool {
        let external = match self.kind {
            Some(SupplyKind::Mains | SupplyKind::Usb | SupplyKind::Wireless) => true,
            Some(SupplyKind::Ups) => !self.has_level(),
            None => !self.has_level(),
            Some(SupplyKind::Battery | SupplyKind::Other) => false,
        };
        external && self.online == Some(true) && self.scope != Some(Scope::Device)
    }
}

/// Read every supply under `root` (normally `/sys/class/power_supply`), sorted by name.
///
/// Entries that are not directories (or symlinks to directories, as in real sysfs) are
/// skipped, and so are hidden names. An empty list means the node has no power supplies.
///
/// # Errors
///
/// [`PowerError::ReadRoot`] when `root` itself cannot be listed (missing, not a directory,
/// permission denied).
pub fn read_supplies(root: &Path) -> Result<Vec<Supply>, PowerError> {
    let entries = fs::read_dir(root).map_err(|source| PowerError::ReadRoot {
        path: root.to_path_buf(),
        source,
    })?;
    let mut supplies = Vec::new();
    for entry in entries {
        // A single entry that vanishes or errors mid-listing (hot-unplug) is skipped.
        let Ok(entry) = entry else { continue };
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // `is_dir` follows the symlinks that sysfs class directories are made of.
        if !path.is_dir() {
            continue;
        }
        supplies.push(read_supply(&path, name));
    }
    supplies.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(supplies)
}

/// Read one supply directory. Never fails: what cannot be read is `None`.
pub fn read_supply(dir: &Path, name: &str) -> Supply {
    let text = |attr: &str| read_attr(dir, attr);
    let int = |attr: &str| text(attr).as_deref().and_then(parse_int);
    let non_negative = |attr: &str| int(attr).filter(|v| *v >= 0);
    let positive = |attr: &str| int(attr).filter(|v| *v > 0);
    Supply {
        name: name.to_owned(),
        kind: text("type").as_deref().map(SupplyKind::parse),
        scope: text("scope").as_deref().map(Scope::parse),
        status: text("status").as_deref().map(Status::parse),
        present: int("present").and_then(|v| match v {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }),
        online: int("online").and_then(|v| match v {
            0 => Some(false),
            1 | 2 => Some(true),
            _ => None,
        }),
        capacity_pct: int("capacity")
            .filter(|v| (0..=100).contains(v))
            .and_then(|v| u8::try_from(v).ok()),
        capacity_level: text("capacity_level").as_deref().map(CapacityLevel::parse),
        voltage_uv: non_negative("voltage_now"),
        current_ua: int("current_now"),
        power_uw: int("power_now"),
        energy_uwh: non_negative("energy_now"),
        energy_full_uwh: positive("energy_full"),
        charge_uah: non_negative("charge_now"),
        charge_full_uah: positive("charge_full"),
        time_to_empty_s: non_negative("time_to_empty_now")
            .or_else(|| non_negative("time_to_empty_avg"))
            .and_then(|v| u64::try_from(v).ok()),
    }
}

/// Read one attribute as trimmed text; `None` when missing, unreadable (`EIO`, `ENODATA`,
/// a directory), not UTF-8, or empty.
fn read_attr(dir: &Path, attr: &str) -> Option<String> {
    let file = fs::File::open(dir.join(attr)).ok()?;
    let mut buf = Vec::new();
    file.take(MAX_ATTR_BYTES).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8(buf).ok()?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        None
    } else {
        Some(trimmed.to_owned())
    }
}

/// Parse a decimal integer as sysfs prints it; `None` for anything else (including values
/// beyond `i64`).
fn parse_int(s: &str) -> Option<i64> {
    s.trim().parse::<i64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write(dir: &Path, attr: &str, value: &str) {
        fs::write(dir.join(attr), value).expect("write fixture attribute");
    }

    #[test]
    fn parses_the_abi_words() {
        assert_eq!(SupplyKind::parse("Battery"), SupplyKind::Battery);
        assert_eq!(SupplyKind::parse("UPS"), SupplyKind::Ups);
        assert_eq!(SupplyKind::parse("Mains"), SupplyKind::Mains);
        assert_eq!(SupplyKind::parse("USB"), SupplyKind::Usb);
        assert_eq!(SupplyKind::parse("USB_PD"), SupplyKind::Usb);
        assert_eq!(SupplyKind::parse("Wireless"), SupplyKind::Wireless);
        assert_eq!(SupplyKind::parse("BrickID"), SupplyKind::Other);
        assert_eq!(Status::parse("Not charging"), Status::NotCharging);
        assert_eq!(Status::parse("Discharging"), Status::Discharging);
        assert_eq!(Status::parse("discharging"), Status::Unknown);
        assert_eq!(CapacityLevel::parse("Critical"), CapacityLevel::Critical);
        assert_eq!(CapacityLevel::parse("Bogus"), CapacityLevel::Unknown);
        assert_eq!(Scope::parse("Device"), Scope::Device);
        assert!(Status::Full.implies_external_power());
        assert!(!Status::Unknown.implies_external_power());
    }

    #[test]
    fn reads_values_with_newlines_and_rejects_out_of_range() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        write(d, "type", "Battery\n");
        write(d, "status", "Not charging\n");
        write(d, "capacity", "101\n");
        write(d, "voltage_now", "-5\n");
        write(d, "current_now", "-1500000\n");
        write(d, "energy_full", "0\n");
        write(d, "charge_now", "  2000000  \n");
        write(d, "present", "7\n");
        write(d, "time_to_empty_avg", "3600\n");
        let s = read_supply(d, "BAT0");
        assert_eq!(s.kind, Some(SupplyKind::Battery));
        assert_eq!(s.status, Some(Status::NotCharging));
        assert_eq!(s.capacity_pct, None, "capacity above 100 is not a capacity");
        assert_eq!(s.voltage_uv, None, "a negative voltage is garbage");
        assert_eq!(
            s.current_ua,
            Some(-1_500_000),
            "current keeps the driver's sign"
        );
        assert_eq!(s.energy_full_uwh, None, "a zero full energy is unusable");
        assert_eq!(s.charge_uah, Some(2_000_000));
        assert_eq!(s.present, None);
        assert_eq!(
            s.time_to_empty_s,
            Some(3600),
            "falls back to time_to_empty_avg"
        );
    }

    #[test]
    fn garbage_and_unreadable_attributes_are_absent() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        write(d, "capacity", "");
        write(d, "energy_now", "lots");
        write(d, "energy_full", "99999999999999999999999999");
        write(d, "voltage_now", "4.2");
        fs::write(d.join("status"), [0xff, 0xfe, 0x00]).expect("write");
        // A directory where a file should be: read fails with EISDIR, like EIO on a real driver.
        fs::create_dir(d.join("charge_now")).expect("mkdir");
        fs::write(d.join("power_now"), "1".repeat(100_000)).expect("write");
        let s = read_supply(d, "weird");
        assert_eq!(
            s,
            Supply {
                name: "weird".into(),
                ..Supply::default()
            }
        );
    }

    #[test]
    fn online_accepts_programmable_and_scope_excludes_peripherals() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        write(d, "type", "USB");
        write(d, "online", "2");
        assert!(read_supply(d, "usb").is_external_online());
        let mouse = Supply {
            name: "hidpp_battery_0".into(),
            kind: Some(SupplyKind::Battery),
            scope: Some(Scope::Device),
            capacity_pct: Some(50),
            ..Supply::default()
        };
        assert!(!mouse.is_system_battery());
        let untyped = Supply {
            name: "gauge".into(),
            capacity_pct: Some(50),
            ..Supply::default()
        };
        assert!(untyped.is_system_battery());
        let absent = Supply {
            name: "BAT1".into(),
            kind: Some(SupplyKind::Battery),
            present: Some(false),
            ..Supply::default()
        };
        assert!(!absent.is_system_battery());
    }

    #[test]
    fn missing_root_is_an_error_that_names_the_key() {
        let err = read_supplies(Path::new("/nonexistent/power_supply")).expect_err("missing root");
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/power_supply"), "{msg}");
        assert!(msg.contains("power.sysfs_root"), "{msg}");
    }

    proptest! {
        #[test]
        fn parse_int_never_panics_and_roundtrips(s in ".{0,40}", v in any::<i64>()) {
            let _ = parse_int(&s);
            prop_assert_eq!(parse_int(&format!("{v}\n")), Some(v));
        }

        #[test]
        fn any_file_contents_read_without_panic(contents in proptest::collection::vec(any::<u8>(), 0..64)) {
            let tmp = tempfile::tempdir().expect("tempdir");
            for attr in ["type", "status", "capacity", "capacity_level", "voltage_now",
                "current_now", "power_now", "energy_now", "energy_full", "charge_now",
                "charge_full", "online", "present", "scope", "time_to_empty_now"] {
                fs::write(tmp.path().join(attr), &contents).expect("write");
            }
            let s = read_supply(tmp.path(), "x");
            prop_assert!(s.capacity_pct.is_none_or(|c| c <= 100));
        }
    }
}

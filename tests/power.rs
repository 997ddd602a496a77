//! The battery monitor against sysfs-shaped fixture directories: the same reader that reads
//! `/sys/class/power_supply`, pointed at a temporary tree of real files and symlinks.

use std::fs;
use std::path::Path;

mod common;

use common::power::Sysfs;
use edgeplex::power::{
    read_supplies, CapacityLevel, EstimateSource, Monitor, PowerClass, PowerConfig, PowerError,
    Reason, Status, SupplyKind,
};

fn config(root: &Path) -> PowerConfig {
    PowerConfig {
        sysfs_root: root.to_path_buf(),
        confirm_samples: 1,
        ..PowerConfig::default()
    }
}

#[test]
fn reads_a_laptop_tree_with_mains_usb_and_a_peripheral() {
    let fs = Sysfs::empty();
    fs.battery("Discharging", 43, 21_500_000);
    fs.supply("AC", &[("type", "Mains"), ("online", "0")]);
    fs.supply(
        "ucsi-source-psy-USBC000:001",
        &[
            ("type", "USB"),
            ("online", "0"),
            ("usb_type", "C [PD] PD_PPS"),
            ("voltage_now", "5000000"),
            ("current_now", "0"),
        ],
    );
    fs.supply(
        "hidpp_battery_0",
        &[
            ("type", "Battery"),
            ("scope", "Device"),
            ("status", "Discharging"),
            ("capacity_level", "Critical"),
        ],
    );
    // Stray things a class directory should not contain, and that must not break the reader.
    fs::write(fs.root().join("stray-file"), "x").expect("write");
    fs::create_dir(fs.root().join(".hidden")).expect("mkdir");

    let supplies = read_supplies(&fs.root()).expect("read");
    let names: Vec<&str> = supplies.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "AC",
            "BAT0",
            "hidpp_battery_0",
            "ucsi-source-psy-USBC000:001"
        ]
    );
    let bat = &supplies[1];
    assert_eq!(bat.kind, Some(SupplyKind::Battery));
    assert_eq!(bat.status, Some(Status::Discharging));
    assert_eq!(bat.capacity_pct, Some(43));
    assert_eq!(bat.capacity_level, Some(CapacityLevel::Normal));
    assert_eq!(bat.voltage_uv, Some(11_400_000));
    assert_eq!(bat.power_uw, Some(9_500_000));
    assert_eq!(bat.energy_uwh, Some(21_500_000));
    assert_eq!(bat.energy_full_uwh, Some(50_000_000));
    assert_eq!(bat.present, Some(true));
    assert_eq!(bat.current_ua, None, "not exposed by this driver");
    assert_eq!(supplies[0].online, Some(false));
    assert_eq!(supplies[3].kind, Some(SupplyKind::Usb));

    let mut m = Monitor::new(config(&fs.root()));
    let s = m.sample(0.0, &supplies);
    assert!(s.battery && s.on_battery);
    assert_eq!(s.batteries, ["BAT0"], "the mouse battery is not the node's");
    assert_eq!(s.capacity_ratio, Some(0.43));
    assert_eq!(s.voltage_v, Some(11.4));
    assert_eq!(s.power_w, Some(9.5));
    assert_eq!(s.class, PowerClass::Normal);
    assert_eq!(
        s.message(),
        "capacity 43%, discharging, time to empty unknown"
    );
}

#[test]
fn a_discharge_then_mains_through_the_files() {
    let fs = Sysfs::empty();
    fs.supply("AC", &[("type", "Mains"), ("online", "0")]);
    let mut m = Monitor::new(config(&fs.root()));
    // 50 Wh battery at 9.5 W: energy falls ~2639 µWh per second.
    let mut energy: f64 = 10_500_000.0;
    let mut last = None;
    for i in 0..40 {
        let t = f64::from(i) * 10.0;
        let cap = (energy / 50_000_000.0 * 100.0).round() as u32;
        fs.battery("Discharging", cap, energy as u64);
        let s = m.sample(t, &read_supplies(&fs.root()).expect("read"));
        energy -= 9_500_000.0 / 3600.0 * 10.0;
        last = Some(s);
    }
    let s = last.expect("snapshot");
    assert_eq!(s.estimate, EstimateSource::Slope);
    let tte = s.time_to_empty_s.expect("estimate");
    let truth = (10_500_000.0 - 39.0 * 9_500_000.0 / 360.0) / 9_500_000.0 * 3600.0;
    assert!((tte - truth).abs() < 30.0, "{tte} vs {truth}");
    // About an hour left at 19%: low by capacity, not by time.
    assert_eq!(s.class, PowerClass::Low);
    assert_eq!(s.reason, Reason::CapacityLow);
    assert!(
        s.message().starts_with("capacity 19%, discharging, about"),
        "{}",
        s.message()
    );

    // Plugged in: the adapter comes online and the battery starts charging.
    fs.supply("AC", &[("online", "1")]);
    fs.battery("Charging", 19, energy as u64);
    let s = m.sample(400.0, &read_supplies(&fs.root()).expect("read"));
    assert!(!s.on_battery);
    assert_eq!(
        (s.class, s.reason),
        (PowerClass::Normal, Reason::ExternalPower)
    );
    assert_eq!(s.time_to_empty_s, None);
}

#[test]
fn a_battery_with_only_capacity_and_charge_files() {
    let fs = Sysfs::empty();
    // No type, no status: a minimal fuel-gauge driver.
    fs.supply(
        "fuel-gauge",
        &[
            ("capacity", "8"),
            ("charge_now", "250000"),
            ("charge_full", "3000000"),
        ],
    );
    let supplies = read_supplies(&fs.root()).expect("read");
    assert_eq!(supplies[0].kind, None);
    assert_eq!(supplies[0].charge_uah, Some(250_000));
    let mut m = Monitor::new(config(&fs.root()));
    let s = m.sample(0.0, &supplies);
    assert!(
        s.battery && s.on_battery,
        "no status and no mains: assume battery"
    );
    assert_eq!(s.capacity_ratio, Some(0.08));
    assert_eq!(
        (s.class, s.reason),
        (PowerClass::Critical, Reason::CapacityCritical)
    );
    assert_eq!(
        s.message(),
        "capacity 8%, on battery, time to empty unknown"
    );

    // Capacity file gone: the ratio comes from charge.
    fs.remove("fuel-gauge", "capacity");
    let s = m.sample(10.0, &read_supplies(&fs.root()).expect("read"));
    let r = s.capacity_ratio.expect("ratio from charge");
    assert!((r - 250_000.0 / 3_000_000.0).abs() < 1e-12);
}

#[test]
fn a_driver_that_reports_negative_current_when_discharging() {
    let fs = Sysfs::empty();
    let mut m = Monitor::new(config(&fs.root()));
    let mut s = None;
    for i in 0..4 {
        fs.supply(
            "battery",
            &[
                ("type", "Battery"),
                ("status", "Discharging"),
                ("present", "1"),
                ("capacity", "60"),
                ("voltage_now", "3800000"),
                ("current_now", "-1000000"),
                ("charge_now", "1500000"),
                ("charge_full", "2500000"),
            ],
        );
        fs.supply("usb", &[("type", "USB"), ("online", "0")]);
        s = Some(m.sample(f64::from(i), &read_supplies(&fs.root()).expect("read")));
    }
    let s = s.expect("snapshot");
    assert_eq!(s.power_w, Some(3.8), "|−1 A| × 3.8 V");
    // 1.5 Ah at 1 A: 90 minutes.
    assert_eq!(s.estimate, EstimateSource::Rate);
    assert_eq!(s.time_to_empty_s, Some(5400.0));
    assert_eq!(s.class, PowerClass::Normal);
}

#[test]
fn the_driver_time_to_empty_is_preferred() {
    let fs = Sysfs::empty();
    fs.supply(
        "bq27500-0",
        &[
            ("type", "Battery"),
            ("status", "Discharging"),
            ("capacity", "35"),
            ("current_now", "800000"),
            ("charge_now", "1000000"),
            ("time_to_empty_now", "540"),
            ("time_to_empty_avg", "9999"),
        ],
    );
    let mut m = Monitor::new(config(&fs.root()));
    let s = m.sample(0.0, &read_supplies(&fs.root()).expect("read"));
    assert_eq!(s.estimate, EstimateSource::Driver);
    assert_eq!(s.time_to_empty_s, Some(540.0));
    assert_eq!(
        (s.class, s.reason),
        (PowerClass::Critical, Reason::TimeToEmptyCritical)
    );
    assert_eq!(
        s.message(),
        "capacity 35%, discharging, about 9 min to empty"
    );
}

#[test]
fn unreadable_and_garbage_attributes_are_tolerated() {
    let fs = Sysfs::empty();
    fs.supply(
        "BAT1",
        &[
            ("type", "Battery"),
            ("status", "Discharging"),
            ("capacity", "-3"),
            ("energy_now", "NaN"),
            ("energy_full", "184467440737095516150"),
            ("power_now", ""),
            ("voltage_now", "12.6V"),
            ("online", "yes"),
        ],
    );
    // A read that fails (EIO on a real driver) looks like this to the reader.
    fs::create_dir(fs.device("BAT1").join("charge_now")).expect("mkdir");
    let supplies = read_supplies(&fs.root()).expect("read");
    let b = &supplies[0];
    assert_eq!(
        (
            b.capacity_pct,
            b.energy_uwh,
            b.energy_full_uwh,
            b.power_uw,
            b.voltage_uv
        ),
        (None, None, None, None, None)
    );
    assert_eq!((b.charge_uah, b.online), (None, None));
    let mut m = Monitor::new(config(&fs.root()));
    let s = m.sample(0.0, &supplies);
    assert!(s.battery && s.on_battery);
    assert_eq!(s.capacity_ratio, None);
    assert_eq!(s.class, PowerClass::Normal, "no evidence of a low battery");
}

#[test]
fn a_node_without_a_battery() {
    let fs = Sysfs::empty();
    fs.supply("AC", &[("type", "Mains"), ("online", "1")]);
    let mut m = Monitor::new(config(&fs.root()));
    let s = m.sample(0.0, &read_supplies(&fs.root()).expect("read"));
    assert!(!s.battery && !s.on_battery);
    assert_eq!((s.class, s.reason), (PowerClass::Normal, Reason::NoBattery));

    let empty = Sysfs::empty();
    assert!(read_supplies(&empty.root()).expect("read").is_empty());
}

#[test]
fn a_missing_root_is_an_error_that_suggests_the_fix() {
    let fs = Sysfs::empty();
    let missing = fs.root().join("nope");
    let err = read_supplies(&missing).expect_err("missing");
    assert!(matches!(err, PowerError::ReadRoot { .. }));
    let msg = err.to_string();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(msg.contains("power.sysfs_root"), "{msg}");
}

use super::*;
use crate::power::{Scope, SupplyKind};
use proptest::prelude::*;

fn battery(capacity: u8, status: Status) -> Supply {
    Supply {
        name: "BAT0".into(),
        kind: Some(SupplyKind::Battery),
        status: Some(status),
        present: Some(true),
        capacity_pct: Some(capacity),
        ..Supply::default()
    }
}

fn mains(online: bool) -> Supply {
    Supply {
        name: "AC".into(),
        kind: Some(SupplyKind::Mains),
        online: Some(online),
        ..Supply::default()
    }
}

fn config(confirm: u32) -> PowerConfig {
    PowerConfig {
        confirm_samples: confirm,
        ..PowerConfig::default()
    }
}

/// Feed capacities one per 10 s, all discharging, and return the classes.
fn classes(m: &mut Monitor, t0: f64, caps: &[u8]) -> Vec<PowerClass> {
    caps.iter()
        .enumerate()
        .map(|(i, c)| {
            m.sample(
                t0 + i as f64 * 10.0,
                &[battery(*c, Status::Discharging), mains(false)],
            )
            .class
        })
        .collect()
}

use PowerClass::{Critical, Low, Normal};

#[test]
fn no_battery_is_normal_and_says_so() {
    let mut m = Monitor::new(config(1));
    for supplies in [vec![], vec![mains(true)], vec![mains(false)]] {
        let s = m.sample(0.0, &supplies);
        assert!(!s.battery && !s.on_battery);
        assert_eq!(s.class, Normal);
        assert_eq!(s.reason, Reason::NoBattery);
        assert_eq!(s.estimate, EstimateSource::None);
        assert_eq!(s.message(), "no battery");
    }
    let mouse = Supply {
        scope: Some(Scope::Device),
        ..battery(3, Status::Discharging)
    };
    let s = m.sample(1.0, &[mouse]);
    assert!(!s.battery, "a peripheral's battery is not the node's");
}

#[test]
fn capacity_hysteresis_enters_at_threshold_and_leaves_above_the_band() {
    // Time rules off: this fast synthetic drain would otherwise trip them.
    let mut m = Monitor::new(PowerConfig {
        low_tte_secs: 0.0,
        critical_tte_secs: 0.0,
        ..config(1)
    });
    let got = classes(
        &mut m,
        0.0,
        &[21, 20, 21, 23, 24, 20, 10, 12, 13, 14, 23, 24, 9],
    );
    assert_eq!(
        got,
        [
            Normal, Low, Low, Low, Normal, Low, Critical, Critical, Critical, Low, Low, Normal,
            Critical
        ]
    );
}

#[test]
fn confirm_samples_ignores_a_single_glitch() {
    let mut m = Monitor::new(config(2));
    let got = classes(&mut m, 0.0, &[50, 5, 50, 50, 5, 5, 5, 50, 50]);
    assert_eq!(
        got,
        [Normal, Normal, Normal, Normal, Normal, Critical, Critical, Critical, Normal]
    );
}

#[test]
fn external_power_is_normal_at_once_and_restarts_the_window() {
    let mut m = Monitor::new(config(1));
    assert_eq!(classes(&mut m, 0.0, &[5]), [Critical]);
    let s = m.sample(10.0, &[battery(5, Status::Charging), mains(true)]);
    assert_eq!(
        (s.on_battery, s.class, s.reason),
        (false, Normal, Reason::ExternalPower)
    );
    assert_eq!(s.time_to_empty_s, None);
    assert_eq!(s.message(), "capacity 5%, charging, on external power");
    // Status unknown, but the mains supply is online.
    let s = m.sample(20.0, &[battery(5, Status::Unknown), mains(true)]);
    assert!(!s.on_battery);
    for st in [Status::Full, Status::NotCharging] {
        assert!(!m.sample(30.0, &[battery(100, st)]).on_battery, "{st}");
    }
}

#[test]
fn discharging_wins_over_an_online_charger_and_no_information_means_battery() {
    let mut m = Monitor::new(config(1));
    let s = m.sample(0.0, &[battery(5, Status::Discharging), mains(true)]);
    assert!(s.on_battery, "a weak charger does not stop the drain");
    assert_eq!(s.class, Critical);
    let bare = Supply {
        status: None,
        ..battery(50, Status::Unknown)
    };
    assert!(m.sample(10.0, std::slice::from_ref(&bare)).on_battery);
    assert!(!m.sample(20.0, &[bare, mains(true)]).on_battery);
}

#[test]
fn time_to_empty_hysteresis_uses_seconds_band() {
    let mut m = Monitor::new(config(1));
    let mut at = |t: f64, tte: u64| {
        let b = Supply {
            time_to_empty_s: Some(tte),
            ..battery(80, Status::Discharging)
        };
        let s = m.sample(t, &[b]);
        assert_eq!(s.estimate, EstimateSource::Driver);
        (s.class, s.reason)
    };
    assert_eq!(at(0.0, 2000), (Normal, Reason::Discharging));
    assert_eq!(at(10.0, 1800), (Low, Reason::TimeToEmptyLow));
    assert_eq!(at(20.0, 600), (Critical, Reason::TimeToEmptyCritical));
    assert_eq!(at(30.0, 850), (Critical, Reason::TimeToEmptyCritical));
    assert_eq!(at(40.0, 900), (Critical, Reason::TimeToEmptyCritical));
    assert_eq!(at(50.0, 901), (Low, Reason::TimeToEmptyLow));
    assert_eq!(at(60.0, 2100), (Low, Reason::TimeToEmptyLow));
    assert_eq!(at(70.0, 2101), (Normal, Reason::Discharging));
}

#[test]
fn leaving_needs_both_capacity_and_time_above_their_bands() {
    let mut m = Monitor::new(config(1));
    let mut at = |t: f64, cap: u8, tte: u64| {
        let b = Supply {
            time_to_empty_s: Some(tte),
            ..battery(cap, Status::Discharging)
        };
        m.sample(t, &[b]).class
    };
    assert_eq!(at(0.0, 10, 5000), Critical);
    assert_eq!(
        at(10.0, 30, 700),
        Critical,
        "capacity cleared, time still in band"
    );
    assert_eq!(
        at(20.0, 12, 5000),
        Critical,
        "time cleared, capacity still in band"
    );
    assert_eq!(at(30.0, 30, 5000), Normal);
}

#[test]
fn zero_time_threshold_switches_the_rule_off() {
    let mut m = Monitor::new(PowerConfig {
        low_tte_secs: 0.0,
        critical_tte_secs: 0.0,
        ..config(1)
    });
    let b = Supply {
        time_to_empty_s: Some(30),
        ..battery(80, Status::Discharging)
    };
    assert_eq!(m.sample(0.0, &[b]).class, Normal);
}

#[test]
fn driver_figure_is_preferred_and_its_sentinels_ignored() {
    let mut m = Monitor::new(config(1));
    let mut last = None;
    for i in 0..20 {
        let t = i as f64 * 10.0;
        let b = Supply {
            // 40 Wh falling 1 mWh per second: 40000 s by slope.
            energy_uwh: Some(40_000_000 - 1_000 * (t as i64)),
            energy_full_uwh: Some(50_000_000),
            time_to_empty_s: Some(match i {
                0..=9 => 7200,
                10..=14 => 0,
                _ => DRIVER_TTE_SENTINEL_SECS,
            }),
            ..battery(80, Status::Discharging)
        };
        last = Some(m.sample(t, &[b]));
        let s = last.as_ref().expect("snapshot");
        if i <= 9 {
            assert_eq!(s.estimate, EstimateSource::Driver);
            assert_eq!(s.time_to_empty_s, Some(7200.0));
        } else {
            assert_eq!(s.estimate, EstimateSource::Slope, "sample {i}");
        }
    }
    let s = last.expect("snapshot");
    let expect = (40_000_000.0 - 190_000.0) / 1_000.0;
    let got = s.time_to_empty_s.expect("slope estimate");
    assert!((got - expect).abs() <= 1.0, "{got} vs {expect}");
}

#[test]
fn rate_bridges_until_the_slope_window_is_long_enough() {
    let mut m = Monitor::new(config(1));
    let mut sources = Vec::new();
    for i in 0..17 {
        let t = i as f64 * 10.0;
        let b = Supply {
            energy_uwh: Some(36_000_000 - 10_000 * (t as i64)),
            // The driver reports discharge power with a negative sign.
            power_uw: Some(-36_000_000),
            ..battery(60, Status::Discharging)
        };
        let s = m.sample(t, &[b]);
        sources.push(s.estimate);
        // 36 Wh at 36 W is one hour, less what was used; the slope agrees.
        if let Some(tte) = s.time_to_empty_s {
            assert!((tte - (3600.0 - t)).abs() < 1.0, "t={t}: {tte}");
        }
    }
    use EstimateSource::{None as No, Rate, Slope};
    // A slope is trusted once it spans a quarter of the 600 s window.
    let mut expect = vec![No, No];
    expect.extend([Rate; 13]);
    expect.extend([Slope; 2]);
    assert_eq!(sources, expect);
}

#[test]
fn a_young_slope_is_reported_but_cannot_move_the_class() {
    let mut m = Monitor::new(config(1));
    for i in 0..16 {
        let t = i as f64 * 10.0;
        // 10 Wh falling 20 mWh per second (72 W): 500 s to empty at the start. No power or
        // current figure, so no rate either.
        let b = Supply {
            energy_uwh: Some(10_000_000 - 20_000 * (t as i64)),
            energy_full_uwh: Some(50_000_000),
            ..battery(80, Status::Discharging)
        };
        let s = m.sample(t, &[b]);
        let truth = 500.0 - t;
        match t {
            0.0..60.0 => assert_eq!(s.estimate, EstimateSource::None),
            60.0..150.0 => {
                assert_eq!(s.estimate, EstimateSource::Slope);
                assert!((s.time_to_empty_s.expect("tte") - truth).abs() < 1.0);
                assert_eq!(s.class, Normal, "t={t}: too young to act on");
            }
            _ => {
                assert_eq!((s.class, s.reason), (Critical, Reason::TimeToEmptyCritical));
            }
        }
    }
}

#[test]
fn a_lost_estimate_is_counted_down_then_dropped() {
    let mut m = Monitor::new(config(1));
    let with = |tte: Option<u64>| Supply {
        time_to_empty_s: tte,
        ..battery(80, Status::Discharging)
    };
    assert_eq!(
        m.sample(0.0, &[with(Some(1000))]).time_to_empty_s,
        Some(1000.0)
    );
    let s = m.sample(100.0, &[with(None)]);
    assert_eq!(
        (s.time_to_empty_s, s.estimate),
        (Some(900.0), EstimateSource::Driver)
    );
    let s = m.sample(600.0, &[with(None)]);
    assert_eq!(s.time_to_empty_s, Some(400.0));
    assert_eq!(s.class, Critical, "the carried estimate still counts");
    let s = m.sample(601.0, &[with(None)]);
    assert_eq!(
        (s.time_to_empty_s, s.estimate),
        (None, EstimateSource::None)
    );
}

#[test]
fn capacity_level_stands_in_when_there_is_no_capacity_figure() {
    let mut m = Monitor::new(config(1));
    let lvl = |l: CapacityLevel| Supply {
        name: "gauge".into(),
        kind: Some(SupplyKind::Battery),
        status: Some(Status::Discharging),
        capacity_level: Some(l),
        ..Supply::default()
    };
    assert_eq!(m.sample(0.0, &[lvl(CapacityLevel::Normal)]).class, Normal);
    assert_eq!(m.sample(10.0, &[lvl(CapacityLevel::Low)]).class, Low);
    let s = m.sample(20.0, &[lvl(CapacityLevel::Critical)]);
    assert_eq!((s.class, s.reason), (Critical, Reason::CapacityCritical));
    assert_eq!(
        s.message(),
        "capacity unknown, discharging, time to empty unknown"
    );
    assert_eq!(m.sample(30.0, &[lvl(CapacityLevel::High)]).class, Normal);
}

#[test]
fn units_are_converted_from_the_kernel_abi() {
    let mut m = Monitor::new(config(1));
    let b = Supply {
        voltage_uv: Some(12_000_000),
        current_ua: Some(-2_000_000),
        charge_uah: Some(3_000_000),
        charge_full_uah: Some(6_000_000),
        capacity_pct: None,
        ..battery(0, Status::Discharging)
    };
    let s = m.sample(0.0, std::slice::from_ref(&b));
    assert_eq!(s.voltage_v, Some(12.0));
    assert_eq!(s.power_w, Some(24.0), "|−2 A| × 12 V");
    assert_eq!(s.capacity_ratio, Some(0.5), "charge over full charge");
    let p = Supply {
        power_uw: Some(5_000_000),
        ..b
    };
    assert_eq!(m.sample(10.0, &[p]).power_w, Some(5.0), "power_now wins");
}

#[test]
fn current_sign_convention_does_not_matter() {
    let run = |current: i64| {
        let mut m = Monitor::new(config(1));
        let mut s = None;
        for i in 0..3 {
            let b = Supply {
                charge_uah: Some(1_000_000),
                current_ua: Some(current),
                ..battery(50, Status::Discharging)
            };
            s = Some(m.sample(i as f64, &[b]));
        }
        s.expect("snapshot")
    };
    let neg = run(-500_000);
    let pos = run(500_000);
    assert_eq!(neg.time_to_empty_s, Some(7200.0));
    assert_eq!(neg.time_to_empty_s, pos.time_to_empty_s);
    assert_eq!(neg.estimate, EstimateSource::Rate);
}

#[test]
fn two_batteries_are_summed_and_a_swap_restarts_the_window() {
    let mut m = Monitor::new(config(1));
    let two = |e0: i64, e1: i64| {
        let b = |name: &str, e: i64| Supply {
            name: name.into(),
            energy_uwh: Some(e),
            energy_full_uwh: Some(40_000_000),
            capacity_pct: None,
            time_to_empty_s: Some(100),
            ..battery(0, Status::Discharging)
        };
        vec![b("BAT0", e0), b("BAT1", e1)]
    };
    let mut s = None;
    for i in 0..10 {
        let t = i as f64 * 10.0;
        let used = 2_000 * (t as i64);
        s = Some(m.sample(t, &two(20_000_000 - used, 20_000_000)));
    }
    let s = s.expect("snapshot");
    assert_eq!(s.batteries, ["BAT0", "BAT1"]);
    assert_eq!(
        s.estimate,
        EstimateSource::Slope,
        "no driver figure for several batteries"
    );
    let cap = s.capacity_ratio.expect("capacity");
    assert!((cap - (40e6 - 180_000.0) / 80e6).abs() < 1e-9, "{cap}");
    let tte = s.time_to_empty_s.expect("tte");
    assert!((tte - (40e6 - 180_000.0) / 2_000.0).abs() <= 1.0, "{tte}");
    // BAT1 pulled: one battery, a new series; its own driver figure applies.
    let one = vec![two(0, 0)[0].clone()];
    let s = m.sample(100.0, &one);
    assert_eq!(
        (s.estimate, s.time_to_empty_s),
        (EstimateSource::Driver, Some(100.0))
    );
}

#[test]
fn messages_read_well() {
    let mut snap = PowerSnapshot {
        battery: true,
        on_battery: true,
        batteries: vec!["BAT0".into()],
        capacity_ratio: Some(0.07),
        status: Some(Status::Discharging),
        voltage_v: None,
        power_w: None,
        time_to_empty_s: Some(12.0 * 60.0 + 10.0),
        estimate: EstimateSource::Slope,
        class: Critical,
        reason: Reason::CapacityCritical,
    };
    assert_eq!(
        snap.message(),
        "capacity 7%, discharging, about 12 min to empty"
    );
    snap.time_to_empty_s = Some(2.0 * 3600.0 + 5.0 * 60.0);
    assert_eq!(
        snap.message(),
        "capacity 7%, discharging, about 2 h 5 min to empty"
    );
    snap.time_to_empty_s = Some(20.0);
    assert_eq!(
        snap.message(),
        "capacity 7%, discharging, less than 1 min to empty"
    );
    snap.status = None;
    snap.time_to_empty_s = None;
    assert_eq!(
        snap.message(),
        "capacity 7%, on battery, time to empty unknown"
    );
    snap.on_battery = false;
    assert_eq!(snap.message(), "capacity 7%, on external power");
}

#[test]
fn snapshot_serializes_for_the_annotation() {
    let mut m = Monitor::new(config(1));
    let b = Supply {
        time_to_empty_s: Some(500),
        ..battery(7, Status::Discharging)
    };
    let s = m.sample(0.0, &[b]);
    let json = serde_json::to_value(&s).expect("json");
    assert_eq!(json["class"], "critical");
    assert_eq!(json["estimate"], "driver");
    assert_eq!(json["reason"], "CapacityCritical");
    assert_eq!(json["status"], "discharging");
    assert_eq!(json["time_to_empty_s"], 500.0);
    assert_eq!(s.class.as_str(), "critical");
    assert_eq!(s.reason.as_str(), "CapacityCritical");
}

#[test]
fn odd_clocks_do_not_panic() {
    let mut m = Monitor::new(config(1));
    for t in [100.0, 50.0, f64::NAN, f64::INFINITY, -1.0, 50.0, 50.0] {
        let s = m.sample(t, &[battery(50, Status::Discharging)]);
        assert_eq!(s.class, Normal);
    }
}

/// A steady discharge seen through noisy readings.
#[derive(Debug, Clone)]
struct Discharge {
    full_wh: f64,
    hours_full_to_empty: f64,
    start_pct: f64,
    /// Uniform noise in [-1, 1], one per sample, for capacity and energy.
    noise: Vec<(f64, f64)>,
    with_energy: bool,
    driver_tte: bool,
}

fn discharge() -> impl Strategy<Value = Discharge> {
    (
        10.0f64..100.0,
        0.5f64..8.0,
        30.0f64..100.0,
        proptest::collection::vec((-1.0f64..1.0, -1.0f64..1.0), 4000),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(full_wh, hours, start, noise, with_energy, driver_tte)| Discharge {
                full_wh,
                hours_full_to_empty: hours,
                start_pct: start,
                noise,
                with_energy,
                driver_tte,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A linear discharge with ±1% noise on capacity (rounded to whole percent, as drivers
    /// print it), on energy and on the driver's figure: the class only ever goes up (Normal, then
    /// Low, then Critical), so each threshold is crossed once, with default settings.
    #[test]
    fn noisy_discharge_never_flaps(d in discharge()) {
        let mut m = Monitor::new(PowerConfig::default());
        let full = d.full_wh * 1e6;
        let pct_per_s = 100.0 / (d.hours_full_to_empty * 3600.0);
        let mut prev = Normal;
        let mut changes = Vec::new();
        for (i, (n_cap, n_e)) in d.noise.iter().enumerate() {
            let t = i as f64 * 10.0;
            let pct = d.start_pct - pct_per_s * t;
            if pct <= 0.5 { break; }
            let true_tte = pct / pct_per_s;
            let b = Supply {
                capacity_pct: Some((pct + n_cap).round().clamp(0.0, 100.0) as u8),
                energy_uwh: d.with_energy.then_some(((pct / 100.0 + 0.01 * n_e) * full).max(0.0) as i64),
                energy_full_uwh: Some(full as i64),
                time_to_empty_s: d.driver_tte.then_some((true_tte * (1.0 + 0.01 * n_e)) as u64),
                ..battery(0, Status::Discharging)
            };
            let s = m.sample(t, &[b]);
            if s.class != prev {
                changes.push((t, pct, s.time_to_empty_s, true_tte, prev, s.class));
                prop_assert!(s.class > prev, "flapped: {changes:?}");
                prev = s.class;
            }
        }
        prop_assert_eq!(prev, Critical, "a discharge to empty ends critical: {:?}", changes);
    }

    /// Whatever the readings, sampling never panics and the snapshot is sane.
    #[test]
    fn arbitrary_readings_never_panic(
        steps in proptest::collection::vec(
            (any::<Option<i64>>(), any::<Option<i64>>(), any::<Option<i64>>(),
             any::<Option<u8>>(), any::<Option<u64>>(), 0u8..6, any::<Option<bool>>(), -1e12f64..1e12),
            1..40),
    ) {
        let mut m = Monitor::new(config(1));
        for (e, c, p, cap, tte, st, online, t) in steps {
            let status = [Status::Unknown, Status::Charging, Status::Discharging,
                Status::NotCharging, Status::Full, Status::Discharging][usize::from(st)];
            let b = Supply {
                energy_uwh: e,
                energy_full_uwh: e.map(|v| v.wrapping_mul(3)),
                charge_uah: c,
                charge_full_uah: c,
                current_ua: c,
                power_uw: p,
                voltage_uv: p,
                capacity_pct: cap,
                time_to_empty_s: tte,
                ..battery(0, status)
            };
            let ac = Supply { online, ..mains(false) };
            let s = m.sample(t, &[b, ac]);
            if let Some(r) = s.capacity_ratio {
                prop_assert!(r.is_finite());
            }
            if let Some(x) = s.time_to_empty_s {
                prop_assert!(x >= 0.0 && x.is_finite());
            }
            let _ = s.message();
            prop_assert!(s.on_battery || s.class == Normal);
        }
    }
}

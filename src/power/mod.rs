//! Battery monitor: reads the Linux power-supply class and says how much time the node has left
//! on battery, so workloads can move before it runs flat.
//!
//! It owns three things. [`read_supplies`] turns a `power_supply`-shaped directory into
//! [`Supply`] values, in the kernel's units (µV, µA, µW, µWh, µAh), treating anything missing
//! or malformed as absent. [`Monitor::sample`] turns readings plus a time into a
//! [`PowerSnapshot`]: on battery or not, a time-to-empty estimate (the driver's figure, else a
//! least-squares slope over a sliding window, else remaining energy over the median draw), and
//! a [`PowerClass`] with hysteresis. [`PowerConfig`] holds the thresholds.
//!
//! Its core (`sysfs`, `estimate`, `monitor`) must not talk to Kubernetes, export metrics,
//! spawn threads or read the clock: [`watch`], the one part that does, samples it on its own
//! thread, passes the time in, and hands snapshots to the node publisher and the metrics. Holding a failover taint down after power returns is the publisher's job; this
//! module reports `Normal` as soon as external power is back.
//!
//! # Time to empty
//!
//! Only while on battery, in this order of preference:
//!
//! 1. the driver's `time_to_empty_now` (or `_avg`), for a single battery, unless it is one of
//!    the "no figure" values (0, or 65535 minutes and more);
//! 2. a least-squares line over the last `window_secs` of energy, else charge, else capacity
//!    samples, once it has [`MIN_SLOPE_SAMPLES`] samples over [`MIN_SLOPE_SPAN_SECS`] and its
//!    slope is [`MIN_T_STAT`] standard errors below zero (noise alone gives no estimate). The
//!    remaining amount is the line's value now, not the last noisy reading. Its range comes
//!    from the slope's 99.9% confidence interval (Student's t), and the slope may move the
//!    class only once its samples span a quarter of the window;
//! 3. remaining energy over the median `power_now` (or charge over the median `current_now`)
//!    in the window, as upower does; it bridges the first minutes after unplugging;
//! 4. a younger slope (reported, but unable to move the class);
//! 5. the last estimate, counted down, for up to `window_secs`.
//!
//! Currents and powers are used as magnitudes: drivers disagree on their sign, and the
//! battery's `status` says which way energy flows.
//!
//! # Classification
//!
//! On battery, a class is entered when capacity ≤ its `*_capacity_pct`, or when even the
//! optimistic end of the estimate's range is ≤ its `*_tte_secs` (a zero time threshold
//! switches that rule off; with no capacity figure the driver's `capacity_level` stands in).
//! It is left only when capacity > threshold + `hysteresis_pct` and the pessimistic end of
//! the estimate (if any) > threshold + `hysteresis_secs`. So an uncertain estimate moves
//! nothing. Any change of class on battery also needs `confirm_samples` consecutive samples
//! that agree.
//!
//! The node is on battery when a battery says `Discharging` (even with a charger online: a
//! weak charger still drains it), or when no battery says `Charging`, `Full` or `Not charging`
//! and no mains, USB or wireless supply is online. With no information at all it assumes
//! battery, the safe side. Off battery the class is `Normal` at once: the cause has cleared.

mod estimate;
mod monitor;
mod sysfs;
pub mod watch;

use std::path::PathBuf;

use serde::Deserialize;

pub use estimate::{MIN_SLOPE_SAMPLES, MIN_SLOPE_SPAN_SECS, MIN_T_STAT};
pub use monitor::{EstimateSource, Monitor, PowerClass, PowerSnapshot, Reason};
pub use sysfs::{read_supplies, read_supply, CapacityLevel, Scope, Status, Supply, SupplyKind};

/// Errors of the battery monitor.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// The power-supply class directory cannot be listed.
    #[error("cannot read power-supply directory {path}: {source}; set power.sysfs_root to the power_supply class directory (default /sys/class/power_supply), and mount /sys into the container")]
    ReadRoot {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// `[power]`: where to read and when to call the battery low or critical.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PowerConfig {
    /// The power-supply class directory; a fixture directory in tests.
    pub sysfs_root: PathBuf,
    /// Seconds between samples.
    pub poll_interval_secs: f64,
    /// Length of the sliding window for the slope, seconds. Longer is steadier but slower to
    /// follow a change of load.
    pub window_secs: f64,
    /// Capacity at or below which the class is `low`, percent.
    pub low_capacity_pct: f64,
    /// Capacity at or below which the class is `critical`, percent.
    pub critical_capacity_pct: f64,
    /// Time to empty at or below which the class is `low`, seconds; 0 switches it off.
    pub low_tte_secs: f64,
    /// Time to empty at or below which the class is `critical`, seconds: the handover budget.
    /// 0 switches it off.
    pub critical_tte_secs: f64,
    /// Capacity must rise this many points above a threshold to leave its class.
    pub hysteresis_pct: f64,
    /// Time to empty must rise this many seconds above a threshold to leave its class.
    pub hysteresis_secs: f64,
    /// Consecutive samples that must agree before the class changes on battery.
    pub confirm_samples: u32,
}

impl Default for PowerConfig {
    fn default() -> Self {
        PowerConfig {
            sysfs_root: PathBuf::from("/sys/class/power_supply"),
            poll_interval_secs: 10.0,
            window_secs: 600.0,
            low_capacity_pct: 20.0,
            critical_capacity_pct: 10.0,
            low_tte_secs: 1800.0,
            critical_tte_secs: 600.0,
            hysteresis_pct: 3.0,
            hysteresis_secs: 300.0,
            confirm_samples: 2,
        }
    }
}

impl PowerConfig {
    /// Check the settings; the one-line error names the key (`{prefix}.window_secs`), the
    /// value and the rule.
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        if self.sysfs_root.as_os_str().is_empty() {
            return Err(format!(
                "{prefix}.sysfs_root is empty: give the power-supply class directory, normally /sys/class/power_supply"
            ));
        }
        let range = |key: &str, v: f64, lo: f64, hi: f64, unit: &str| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!(
                    "{prefix}.{key} = {v} is out of range: allowed {lo} to {hi} {unit}"
                ))
            }
        };
        if !(self.poll_interval_secs > 0.0 && self.poll_interval_secs <= 3600.0) {
            return Err(format!(
                "{prefix}.poll_interval_secs = {} is out of range: allowed (0, 3600] seconds",
                self.poll_interval_secs
            ));
        }
        range("window_secs", self.window_secs, 0.0, 86_400.0, "seconds")?;
        let min_window =
            MIN_SLOPE_SPAN_SECS.max(self.poll_interval_secs * (MIN_SLOPE_SAMPLES as f64 - 1.0));
        if self.window_secs < min_window {
            return Err(format!(
                "{prefix}.window_secs = {} is too short: a slope needs {MIN_SLOPE_SAMPLES} samples over at least {MIN_SLOPE_SPAN_SECS} s, so at least {min_window} s with {prefix}.poll_interval_secs = {}",
                self.window_secs, self.poll_interval_secs
            ));
        }
        range(
            "low_capacity_pct",
            self.low_capacity_pct,
            0.0,
            100.0,
            "percent",
        )?;
        range(
            "critical_capacity_pct",
            self.critical_capacity_pct,
            0.0,
            100.0,
            "percent",
        )?;
        if self.critical_capacity_pct >= self.low_capacity_pct {
            return Err(format!(
                "{prefix}.critical_capacity_pct = {} must be below {prefix}.low_capacity_pct ({})",
                self.critical_capacity_pct, self.low_capacity_pct
            ));
        }
        range("low_tte_secs", self.low_tte_secs, 0.0, 86_400.0, "seconds")?;
        range(
            "critical_tte_secs",
            self.critical_tte_secs,
            0.0,
            86_400.0,
            "seconds",
        )?;
        if self.critical_tte_secs > self.low_tte_secs {
            return Err(format!(
                "{prefix}.critical_tte_secs = {} must not be above {prefix}.low_tte_secs ({}); 0 switches a time rule off",
                self.critical_tte_secs, self.low_tte_secs
            ));
        }
        range("hysteresis_pct", self.hysteresis_pct, 0.0, 50.0, "percent")?;
        if self.low_capacity_pct + self.hysteresis_pct >= 100.0 {
            return Err(format!(
                "{prefix}.low_capacity_pct + {prefix}.hysteresis_pct = {} must be below 100, or a full battery would stay low",
                self.low_capacity_pct + self.hysteresis_pct
            ));
        }
        range(
            "hysteresis_secs",
            self.hysteresis_secs,
            0.0,
            86_400.0,
            "seconds",
        )?;
        if !(1..=100).contains(&self.confirm_samples) {
            return Err(format!(
                "{prefix}.confirm_samples = {} is out of range: allowed 1 to 100",
                self.confirm_samples
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        PowerConfig::default()
            .validate("power")
            .expect("default config");
    }

    #[test]
    fn parses_toml_with_integers_and_rejects_unknown_keys() {
        let c: PowerConfig = toml::from_str(
            "sysfs_root = \"/tmp/ps\"\nlow_capacity_pct = 25\ncritical_tte_secs = 900\nconfirm_samples = 3\n",
        )
        .expect("parse");
        assert_eq!(c.sysfs_root, PathBuf::from("/tmp/ps"));
        assert_eq!(c.low_capacity_pct, 25.0);
        assert_eq!(c.critical_tte_secs, 900.0);
        assert_eq!(c.confirm_samples, 3);
        assert_eq!(c.window_secs, 600.0, "unset keys keep their defaults");
        c.validate("power").expect("valid");
        let err = toml::from_str::<PowerConfig>("low_capacity = 20\n").expect_err("unknown key");
        assert!(err.to_string().contains("low_capacity"), "{err}");
    }

    #[test]
    fn errors_name_the_key_the_value_and_the_rule() {
        let bad = |f: fn(&mut PowerConfig)| {
            let mut c = PowerConfig::default();
            f(&mut c);
            let e = c.validate("power").expect_err("invalid");
            assert!(!e.contains('\n'), "one line: {e}");
            e
        };
        assert_eq!(
            bad(|c| c.critical_capacity_pct = 30.0),
            "power.critical_capacity_pct = 30 must be below power.low_capacity_pct (20)"
        );
        assert!(bad(|c| c.critical_tte_secs = 2000.0).starts_with(
            "power.critical_tte_secs = 2000 must not be above power.low_tte_secs (1800)"
        ));
        assert!(bad(|c| c.low_capacity_pct = 101.0)
            .starts_with("power.low_capacity_pct = 101 is out of range"));
        assert!(bad(|c| c.poll_interval_secs = 0.0).starts_with("power.poll_interval_secs = 0 "));
        assert!(
            bad(|c| c.poll_interval_secs = f64::NAN).starts_with("power.poll_interval_secs = NaN ")
        );
        assert!(bad(|c| c.window_secs = 30.0).starts_with("power.window_secs = 30 is too short"));
        assert!(bad(|c| {
            c.poll_interval_secs = 60.0;
            c.window_secs = 120.0;
        })
        .contains("at least 240 s"));
        assert!(bad(|c| c.hysteresis_pct = -1.0).starts_with("power.hysteresis_pct = -1 "));
        assert!(bad(|c| {
            c.low_capacity_pct = 90.0;
            c.hysteresis_pct = 10.0;
        })
        .contains("must be below 100"));
        assert!(bad(|c| c.confirm_samples = 0).starts_with("power.confirm_samples = 0 "));
        assert!(bad(|c| c.sysfs_root = PathBuf::new()).starts_with("power.sysfs_root is empty"));
    }

    #[test]
    fn zero_time_thresholds_are_allowed() {
        let c = PowerConfig {
            low_tte_secs: 0.0,
            critical_tte_secs: 0.0,
            ..PowerConfig::default()
        };
        c.validate("power").expect("time rules off");
    }
}

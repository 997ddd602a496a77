//! The battery monitor: from a list of [`Supply`] readings and the time, a [`PowerSnapshot`]
//! with a time-to-empty estimate and a [`PowerClass`] that does not flap.
//!
//! [`Monitor::sample`] is deterministic: the caller passes the time, so tests feed synthetic
//! series and the agent passes seconds from its own monotonic clock.

use serde::Serialize;

use super::estimate::{Estimate, Point, Window, MIN_SLOPE_SPAN_SECS};
use super::sysfs::{CapacityLevel, Status, Supply};
use super::PowerConfig;

/// Drivers report these as "no figure": 0, and 65535 minutes (the SBS/bq27xxx all-ones
/// register) or more.
const DRIVER_TTE_SENTINEL_SECS: u64 = 65_535 * 60;

/// The power class published as the `edgeplex.io/power` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerClass {
    /// On external power, or on battery with plenty left.
    Normal,
    /// On battery below the low thresholds.
    Low,
    /// On battery below the critical thresholds: time to hand over.
    Critical,
}

impl PowerClass {
    /// The label value: `normal`, `low` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerClass::Normal => "normal",
            PowerClass::Low => "low",
            PowerClass::Critical => "critical",
        }
    }
}

impl std::fmt::Display for PowerClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the time-to-empty figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EstimateSource {
    /// The driver's `time_to_empty_now` (or `_avg`).
    Driver,
    /// A least-squares slope of energy, charge or capacity over the sliding window.
    Slope,
    /// Remaining energy (charge) over the median power (current) draw in the window, used
    /// until the window is long enough for a slope.
    Rate,
    /// No estimate: not discharging, or not enough evidence yet.
    None,
}

/// Why the class is what it is; a CamelCase word fit for a Node condition's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Reason {
    /// No system battery on this node.
    NoBattery,
    /// External power is present (mains online, or the battery charging, full or idle).
    ExternalPower,
    /// On battery, above every threshold.
    Discharging,
    /// Capacity at or below the low threshold (or the driver says `Low`).
    CapacityLow,
    /// Time to empty at or below the low threshold.
    TimeToEmptyLow,
    /// Capacity at or below the critical threshold (or the driver says `Critical`).
    CapacityCritical,
    /// Time to empty at or below the critical threshold.
    TimeToEmptyCritical,
}

impl Reason {
    /// The CamelCase word.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoBattery => "NoBattery",
            Reason::ExternalPower => "ExternalPower",
            Reason::Discharging => "Discharging",
            Reason::CapacityLow => "CapacityLow",
            Reason::TimeToEmptyLow => "TimeToEmptyLow",
            Reason::CapacityCritical => "CapacityCritical",
            Reason::TimeToEmptyCritical => "TimeToEmptyCritical",
        }
    }
}

/// What the monitor concluded from one sample. Serializes to JSON for the node annotation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PowerSnapshot {
    /// Whether the node has a system battery (the `edgeplex.io/battery` label).
    pub battery: bool,
    /// Whether the node is running its battery down now.
    pub on_battery: bool,
    /// Names of the batteries considered, e.g. `["BAT0"]`.
    pub batteries: Vec<String>,
    /// Remaining capacity, 0.0–1.0.
    pub capacity_ratio: Option<f64>,
    /// Battery status (combined over several batteries: any discharging wins).
    pub status: Option<Status>,
    /// Battery voltage, volts.
    pub voltage_v: Option<f64>,
    /// Power flowing out of (or into) the battery, watts, as a magnitude; the direction is in
    /// `status`.
    pub power_w: Option<f64>,
    /// Estimated seconds until empty, whole seconds; only while on battery.
    pub time_to_empty_s: Option<f64>,
    /// Where `time_to_empty_s` came from.
    pub estimate: EstimateSource,
    /// The class, with hysteresis applied.
    pub class: PowerClass,
    /// Why the class is what it is.
    pub reason: Reason,
}

impl PowerSnapshot {
    /// One line for humans, e.g. `"capacity 7%, discharging, about 12 min to empty"`.
    pub fn message(&self) -> String {
        if !self.battery {
            return "no battery".to_owned();
        }
        let capacity = match self.capacity_ratio {
            Some(r) => format!("capacity {:.0}%", r * 100.0),
            None => "capacity unknown".to_owned(),
        };
        if !self.on_battery {
            return match self.status {
                Some(s) if s.implies_external_power() => {
                    format!("{capacity}, {s}, on external power")
                }
                _ => format!("{capacity}, on external power"),
            };
        }
        let status = self.status.unwrap_or(Status::Unknown);
        let status = if status == Status::Unknown {
            "on battery"
        } else {
            status.as_str()
        };
        match self.time_to_empty_s {
            Some(s) => format!("{capacity}, {status}, {} to empty", human_duration(s)),
            None => format!("{capacity}, {status}, time to empty unknown"),
        }
    }
}

/// `"less than 1 min"`, `"about 12 min"`, `"about 2 h 5 min"`.
fn human_duration(secs: f64) -> String {
    if secs.is_nan() || secs < 60.0 {
        return "less than 1 min".to_owned();
    }
    let minutes = (secs / 60.0).round() as u64;
    if minutes < 90 {
        format!("about {minutes} min")
    } else {
        format!("about {} h {} min", minutes / 60, minutes % 60)
    }
}

/// The last estimate, carried forward while no fresh one is available.
#[derive(Debug, Clone, Copy)]
struct Carried {
    t: f64,
    estimate: Estimate,
    source: EstimateSource,
}

/// The battery monitor. Feed it readings with [`Monitor::sample`] at the poll interval.
///
/// It keeps a sliding window of samples taken while discharging, the last estimate, and the
/// current class. Build it from a configuration that passed [`PowerConfig::validate`]; with an
/// invalid one it still never panics, but its classes may be useless.
#[derive(Debug, Clone)]
pub struct Monitor {
    config: PowerConfig,
    window: Window,
    /// The batteries the window's samples came from; a change restarts the window.
    batteries: Vec<String>,
    carried: Option<Carried>,
    class: PowerClass,
    reason: Reason,
    /// Consecutive samples whose target class was above / below the current class.
    up: u32,
    down: u32,
}

impl Monitor {
    /// A monitor with no history, in class `Normal`.
    pub fn new(config: PowerConfig) -> Monitor {
        Monitor {
            window: Window::new(config.window_secs),
            config,
            batteries: Vec::new(),
            carried: None,
            class: PowerClass::Normal,
            reason: Reason::NoBattery,
            up: 0,
            down: 0,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &PowerConfig {
        &self.config
    }

    /// The current class.
    pub fn class(&self) -> PowerClass {
        self.class
    }

    /// Take one sample. `now_s` is seconds on any monotonic clock (for example
    /// `start.elapsed().as_secs_f64()`); `supplies` is what [`super::read_supplies`] returned.
    pub fn sample(&mut self, now_s: f64, supplies: &[Supply]) -> PowerSnapshot {
        let bats = Batteries::new(supplies);
        let names = bats.names();
        if names != self.batteries {
            // Hot-swap or first sight: sums over a different set are not one series.
            self.window.clear();
            self.carried = None;
            self.batteries = names.clone();
        }
        if bats.list.is_empty() {
            self.reset(Reason::NoBattery);
            return PowerSnapshot {
                battery: false,
                on_battery: false,
                batteries: names,
                capacity_ratio: None,
                status: None,
                voltage_v: None,
                power_w: None,
                time_to_empty_s: None,
                estimate: EstimateSource::None,
                class: self.class,
                reason: self.reason,
            };
        }

        let capacity_pct = bats.capacity_pct();
        let power_uw = bats.power_draw_uw();
        let on_battery = bats.draining(supplies);
        let mut snapshot = PowerSnapshot {
            battery: true,
            on_battery,
            batteries: names,
            capacity_ratio: capacity_pct.map(|p| p / 100.0),
            status: bats.status(),
            voltage_v: bats.voltage_uv().map(|v| v / 1e6),
            power_w: power_uw.map(|p| p / 1e6),
            time_to_empty_s: None,
            estimate: EstimateSource::None,
            class: PowerClass::Normal,
            reason: Reason::ExternalPower,
        };
        if !on_battery {
            // The cause has cleared: Normal at once. Holding a taint down before removing it
            // is the node publisher's job.
            self.window.clear();
            self.carried = None;
            self.reset(Reason::ExternalPower);
            return snapshot;
        }

        self.window.push(Point {
            t: now_s,
            energy_uwh: bats.sum(|b| b.energy_uwh),
            charge_uah: bats.sum(|b| b.charge_uah),
            capacity_pct,
            power_uw,
            current_ua: bats.current_draw_ua(),
        });
        let (tte, source) = self.estimate(now_s, bats.driver_tte());
        snapshot.time_to_empty_s = tte.map(|e| e.tte.round());
        snapshot.estimate = source;

        self.classify(&Inputs {
            capacity_pct,
            level: bats.level(),
            tte,
        });
        snapshot.class = self.class;
        snapshot.reason = self.reason;
        snapshot
    }

    fn reset(&mut self, reason: Reason) {
        self.class = PowerClass::Normal;
        self.reason = reason;
        self.up = 0;
        self.down = 0;
    }

    /// The driver's figure; else a slope over at least half the window; else the rate; else a
    /// younger slope, reported but with an uninformative range so it cannot move the class;
    /// else the last estimate counted down (for up to a window's length, so a flickering
    /// estimate does not flip the class).
    fn estimate(&mut self, now: f64, driver: Option<f64>) -> (Option<Estimate>, EstimateSource) {
        let mature_span = MIN_SLOPE_SPAN_SECS.max(self.config.window_secs / 4.0);
        let slope = self.window.slope_time_to_empty();
        let (mature, young) = match slope {
            Some(s) if s.span >= mature_span => (Some(s.estimate), None),
            Some(s) => (None, Some(s.estimate.unconfirmed())),
            None => (None, None),
        };
        let fresh = driver
            .map(|s| (Estimate::exact(s), EstimateSource::Driver))
            .or_else(|| mature.map(|e| (e, EstimateSource::Slope)))
            .or_else(|| {
                self.window
                    .rate_time_to_empty()
                    .map(|s| (Estimate::exact(s), EstimateSource::Rate))
            })
            .or_else(|| young.map(|e| (e, EstimateSource::Slope)));
        if let Some((estimate, source)) = fresh {
            self.carried = Some(Carried {
                t: now,
                estimate,
                source,
            });
            return (Some(estimate), source);
        }
        match self.carried {
            Some(c) if now >= c.t && now - c.t <= self.config.window_secs => {
                (Some(c.estimate.aged(now - c.t)), c.source)
            }
            _ => {
                self.carried = None;
                (None, EstimateSource::None)
            }
        }
    }

    /// Whether class `k`'s condition holds; with `band`, the widened hysteresis condition
    /// for staying in `k`. Returns the reason.
    fn check(&self, k: PowerClass, i: &Inputs, band: bool) -> Option<Reason> {
        let c = &self.config;
        let (cap_thr, tte_thr, level_hit, cap_reason, tte_reason) = match k {
            PowerClass::Normal => return Some(Reason::Discharging),
            PowerClass::Low => (
                c.low_capacity_pct,
                c.low_tte_secs,
                matches!(i.level, Some(CapacityLevel::Low | CapacityLevel::Critical)),
                Reason::CapacityLow,
                Reason::TimeToEmptyLow,
            ),
            PowerClass::Critical => (
                c.critical_capacity_pct,
                c.critical_tte_secs,
                matches!(i.level, Some(CapacityLevel::Critical)),
                Reason::CapacityCritical,
                Reason::TimeToEmptyCritical,
            ),
        };
        let (cap_band, tte_band) = if band {
            (c.hysteresis_pct, c.hysteresis_secs)
        } else {
            (0.0, 0.0)
        };
        // The driver's coarse level stands in only when there is no capacity figure.
        let cap_hit = match i.capacity_pct {
            Some(p) => p <= cap_thr + cap_band,
            None => level_hit,
        };
        if cap_hit {
            return Some(cap_reason);
        }
        // Enter on the optimistic end of the estimate, stay on the pessimistic end: an
        // uncertain estimate moves nothing. A zero time threshold switches the rule off.
        let tte_hit = tte_thr > 0.0
            && i.tte.is_some_and(|e| {
                if band {
                    e.lo <= tte_thr + tte_band
                } else {
                    e.hi <= tte_thr
                }
            });
        tte_hit.then_some(tte_reason)
    }

    /// Move the class toward the target, with hysteresis bands and `confirm_samples`.
    fn classify(&mut self, i: &Inputs) {
        use PowerClass::{Critical, Low, Normal};
        let entered = [Critical, Low]
            .into_iter()
            .find_map(|k| self.check(k, i, false).map(|r| (k, r)))
            .unwrap_or((Normal, Reason::Discharging));
        let held = [Critical, Low]
            .into_iter()
            .filter(|k| *k <= self.class)
            .find_map(|k| self.check(k, i, true).map(|r| (k, r)));
        let (target, reason) = match held {
            Some(h) if h.0 > entered.0 => h,
            _ => entered,
        };
        let confirm = self.config.confirm_samples.max(1);
        if target > self.class {
            self.down = 0;
            self.up = self.up.saturating_add(1);
            if self.up >= confirm {
                self.class = target;
                self.reason = reason;
                self.up = 0;
            }
        } else if target < self.class {
            self.up = 0;
            self.down = self.down.saturating_add(1);
            if self.down >= confirm {
                self.class = target;
                self.reason = reason;
                self.down = 0;
            }
        } else {
            self.up = 0;
            self.down = 0;
            self.reason = reason;
        }
    }
}

/// What classification looks at.
#[derive(Debug)]
struct Inputs {
    capacity_pct: Option<f64>,
    level: Option<CapacityLevel>,
    tte: Option<Estimate>,
}

/// The system batteries among the supplies, and their combined figures.
#[derive(Debug)]
struct Batteries<'a> {
    list: Vec<&'a Supply>,
}

impl<'a> Batteries<'a> {
    fn new(supplies: &'a [Supply]) -> Batteries<'a> {
        Batteries {
            list: supplies.iter().filter(|s| s.is_system_battery()).collect(),
        }
    }

    fn names(&self) -> Vec<String> {
        self.list.iter().map(|b| b.name.clone()).collect()
    }

    /// Sum of a field over all batteries, if every one has it.
    fn sum(&self, field: impl Fn(&Supply) -> Option<i64>) -> Option<f64> {
        self.list
            .iter()
            .map(|b| field(b).map(|v| v as f64))
            .sum::<Option<f64>>()
    }

    /// Whether the batteries are running down. A battery that says `Discharging` wins over an
    /// online charger (a charger too weak for the load still drains the battery); otherwise a
    /// status of charging, full or not charging, or an online external supply, means external
    /// power; with no information at all, assume battery (the safe side).
    fn draining(&self, supplies: &[Supply]) -> bool {
        let statuses = || self.list.iter().filter_map(|b| b.status);
        if statuses().any(|s| s == Status::Discharging) {
            return true;
        }
        if statuses().any(Status::implies_external_power) {
            return false;
        }
        !supplies.iter().any(Supply::is_external_online)
    }

    fn status(&self) -> Option<Status> {
        let statuses: Vec<Status> = self.list.iter().filter_map(|b| b.status).collect();
        [
            Status::Discharging,
            Status::Charging,
            Status::NotCharging,
            Status::Full,
            Status::Unknown,
        ]
        .into_iter()
        .find(|s| statuses.contains(s))
    }

    /// Percent, 0–100: a single battery's `capacity`, else energy or charge now over full
    /// (summed over batteries), else the mean `capacity`.
    fn capacity_pct(&self) -> Option<f64> {
        if let [b] = self.list[..] {
            if let Some(c) = b.capacity_pct {
                return Some(f64::from(c).min(100.0));
            }
        }
        let ratio = |now: fn(&Supply) -> Option<i64>, full: fn(&Supply) -> Option<i64>| {
            let pct = self.sum(now)? / self.sum(full)? * 100.0;
            pct.is_finite().then(|| pct.clamp(0.0, 100.0))
        };
        ratio(|b| b.energy_uwh, |b| b.energy_full_uwh)
            .or_else(|| ratio(|b| b.charge_uah, |b| b.charge_full_uah))
            .or_else(|| {
                let total = self.sum(|b| b.capacity_pct.map(i64::from))?;
                Some((total / self.list.len() as f64).min(100.0))
            })
    }

    /// Power draw in µW as a magnitude: `power_now`, else `|current_now| × voltage_now`.
    fn power_draw_uw(&self) -> Option<f64> {
        self.list
            .iter()
            .map(|b| {
                b.power_uw.map(|p| (p as f64).abs()).or_else(|| {
                    // µA × µV = 1e-12 W = 1e-6 µW.
                    Some((b.current_ua? as f64).abs() * b.voltage_uv? as f64 / 1e6)
                })
            })
            .sum()
    }

    /// Current draw in µA as a magnitude, whatever sign convention the driver uses.
    fn current_draw_ua(&self) -> Option<f64> {
        self.list
            .iter()
            .map(|b| b.current_ua.map(|c| (c as f64).abs()))
            .sum()
    }

    /// Mean voltage in µV over batteries that report a non-zero one.
    fn voltage_uv(&self) -> Option<f64> {
        let v: Vec<f64> = self
            .list
            .iter()
            .filter_map(|b| b.voltage_uv.filter(|v| *v > 0))
            .map(|v| v as f64)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }

    /// The driver's coarse level, for a single battery.
    fn level(&self) -> Option<CapacityLevel> {
        match self.list[..] {
            [b] => b.capacity_level,
            _ => None,
        }
    }

    /// The driver's time to empty, for a single battery, without the "no figure" values.
    fn driver_tte(&self) -> Option<f64> {
        match self.list[..] {
            [b] => b
                .time_to_empty_s
                .filter(|s| *s > 0 && *s < DRIVER_TTE_SENTINEL_SECS)
                .map(|s| s as f64),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;

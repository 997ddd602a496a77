//! The publisher's decisions, without I/O: from stream health, the power snapshot, the node as
//! last read and the time, what the node's labels, annotations, conditions and failover taint
//! should be. Deterministic: the caller passes both clocks in.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use crate::kube::keys;
use crate::power::{PowerClass, PowerSnapshot};
use crate::source::kinds::DeviceClass;
use crate::source::HealthSnapshot;

/// Taint value when the battery is critical. The agent removes only taints with its own
/// values, so a failover taint the controller put on a dead node stays the controller's.
pub const TAINT_BATTERY: &str = "battery-critical";
/// Taint value when a critical device is down.
pub const TAINT_DEVICE: &str = "device-failure";

/// What the decisions depend on, besides time.
#[derive(Debug, Clone)]
pub struct Rules {
    /// `edgeplex.io/group`; empty for none.
    pub group: String,
    /// Streams whose failure is a `DeviceFailure`.
    pub critical_streams: BTreeSet<String>,
    /// How long a critical stream must be down before it is a failure.
    pub device_grace: Duration,
    /// How long the taint stays after its cause clears.
    pub hold_down: Duration,
    /// Whether to taint at all.
    pub failover_taint: bool,
}

/// One look at the inputs.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// Every stream's health.
    pub streams: Vec<HealthSnapshot>,
    /// The power monitor's latest snapshot; `None` when there is no power monitor.
    pub power: Option<PowerSnapshot>,
}

/// A condition edgeplex asserts, without its timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CondSpec {
    /// `BatteryCritical` or `DeviceFailure`.
    pub type_: &'static str,
    /// `True` or `False`.
    pub status: bool,
    /// CamelCase reason.
    pub reason: String,
    /// For humans.
    pub message: String,
}

/// Everything edgeplex asserts on its node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    /// Labels (server-side apply, main resource).
    pub labels: BTreeMap<String, String>,
    /// Annotations (same apply).
    pub annotations: BTreeMap<String, String>,
    /// Conditions (server-side apply, status subresource).
    pub conditions: Vec<CondSpec>,
    /// The failover taint's value if it should be on the node, else `None`.
    pub taint: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failover {
    Idle,
    Wanted(&'static str),
    HoldDown { since: Instant, value: &'static str },
}

/// The stateful part: device grace periods and the taint's hold-down.
#[derive(Debug, Clone)]
pub struct Decider {
    rules: Rules,
    down_since: BTreeMap<String, Instant>,
    failover: Failover,
}

impl Decider {
    /// A decider with no history.
    pub fn new(rules: Rules) -> Decider {
        Decider {
            rules,
            down_since: BTreeMap::new(),
            failover: Failover::Idle,
        }
    }

    /// The node already carries our taint (an agent restart): hold it down from `now` instead
    /// of lifting it at once, unless a cause is active anyway.
    pub fn adopt_taint(&mut self, value: &str, now: Instant) {
        if self.failover == Failover::Idle {
            let value = if value == TAINT_DEVICE {
                TAINT_DEVICE
            } else {
                TAINT_BATTERY
            };
            self.failover = Failover::HoldDown { since: now, value };
        }
    }

    /// Decide from `obs` at monotonic time `now`.
    pub fn decide(&mut self, obs: &Observation, now: Instant) -> Desired {
        let mut d = Desired::default();
        if !self.rules.group.is_empty() {
            d.labels
                .insert(keys::GROUP.into(), self.rules.group.clone());
        }
        // The stream kinds' own classes decide (`test-pattern` is a camera, so `edgeplex demo`
        // shows the contract without hardware).
        let up = |class: DeviceClass| obs.streams.iter().any(|s| s.up && s.class == Some(class));
        if up(DeviceClass::Camera) {
            d.labels.insert(keys::CAMERA.into(), "true".into());
        }
        if up(DeviceClass::Serial) {
            d.labels.insert(keys::SERIAL.into(), "true".into());
        }
        if let Some(rings) = rings_annotation(&obs.streams) {
            d.annotations.insert(keys::RINGS_ANNOTATION.into(), rings);
        }

        let mut cause = None;
        if let Some(p) = &obs.power {
            if p.battery {
                d.labels.insert(keys::BATTERY.into(), "true".into());
                d.annotations
                    .insert(keys::BATTERY_ANNOTATION.into(), battery_annotation(p));
            }
            d.labels.insert(keys::POWER.into(), p.class.as_str().into());
            let critical = p.class == PowerClass::Critical;
            d.conditions.push(CondSpec {
                type_: keys::BATTERY_CRITICAL,
                status: critical,
                reason: p.reason.as_str().into(),
                message: p.message(),
            });
            if critical {
                cause = Some(TAINT_BATTERY);
            }
        }

        let device = self.device_condition(&obs.streams, now);
        if device.status && cause.is_none() {
            cause = Some(TAINT_DEVICE);
        }
        d.conditions.push(device);

        d.taint = if self.rules.failover_taint {
            self.step_failover(cause, now)
        } else {
            None
        };
        d
    }

    fn device_condition(&mut self, streams: &[HealthSnapshot], now: Instant) -> CondSpec {
        if self.rules.critical_streams.is_empty() {
            return CondSpec {
                type_: keys::DEVICE_FAILURE,
                status: false,
                reason: "NoCriticalDevices".into(),
                message: "no critical streams configured (node.critical_streams)".into(),
            };
        }
        let mut failed = Vec::new();
        for name in &self.rules.critical_streams {
            let s = streams.iter().find(|s| &s.name == name);
            match s {
                Some(s) if !s.up && s.last_error.is_some() => {
                    let since = *self.down_since.entry(name.clone()).or_insert(now);
                    if now.saturating_duration_since(since) >= self.rules.device_grace {
                        let why = s.last_error.clone().unwrap_or_default();
                        failed.push(format!(
                            "critical stream {name} ({}) is down: {why}",
                            s.kind
                        ));
                    }
                }
                Some(_) => {
                    self.down_since.remove(name);
                }
                None => failed.push(format!("critical stream {name} is not configured")),
            }
        }
        if failed.is_empty() {
            let names: Vec<&str> = self
                .rules
                .critical_streams
                .iter()
                .map(String::as_str)
                .collect();
            CondSpec {
                type_: keys::DEVICE_FAILURE,
                status: false,
                reason: "CriticalDevicesUp".into(),
                message: format!("critical streams up: {}", names.join(", ")),
            }
        } else {
            CondSpec {
                type_: keys::DEVICE_FAILURE,
                status: true,
                reason: "CriticalDeviceDown".into(),
                message: failed.join("; "),
            }
        }
    }

    fn step_failover(&mut self, cause: Option<&'static str>, now: Instant) -> Option<&'static str> {
        self.failover = match (self.failover, cause) {
            // The taint keeps the value it was added with while it stays.
            (Failover::Wanted(v), Some(_)) | (Failover::HoldDown { value: v, .. }, Some(_)) => {
                Failover::Wanted(v)
            }
            (Failover::Idle, Some(c)) => Failover::Wanted(c),
            (Failover::Wanted(v), None) => Failover::HoldDown {
                since: now,
                value: v,
            },
            (Failover::HoldDown { since, value }, None) => {
                if now.saturating_duration_since(since) >= self.rules.hold_down {
                    Failover::Idle
                } else {
                    Failover::HoldDown { since, value }
                }
            }
            (Failover::Idle, None) => Failover::Idle,
        };
        match self.failover {
            Failover::Idle => None,
            Failover::Wanted(v) | Failover::HoldDown { value: v, .. } => Some(v),
        }
    }
}

fn battery_annotation(p: &PowerSnapshot) -> String {
    // Whole percent and whole minutes, so the annotation changes at most about once a minute.
    let mut v = json!({
        "class": p.class.as_str(),
        "on_battery": p.on_battery,
        "summary": p.message(),
    });
    if let Some(r) = p.capacity_ratio {
        v["capacity_percent"] = json!((r * 100.0).round() as i64);
    }
    if let Some(s) = p.status {
        v["status"] = json!(s.as_str());
    }
    if let Some(t) = p.time_to_empty_s {
        v["time_to_empty_minutes"] = json!((t / 60.0).floor() as i64);
    }
    v.to_string()
}

fn rings_annotation(streams: &[HealthSnapshot]) -> Option<String> {
    if streams.is_empty() {
        return None;
    }
    let mut sorted: Vec<&HealthSnapshot> = streams.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let rings: Vec<Value> = sorted
        .iter()
        .map(|s| {
            let mut r = json!({"stream": s.name, "kind": s.kind, "up": s.up});
            if let Some((path, _, _)) = &s.ring {
                r["path"] = json!(path.display().to_string());
            }
            r
        })
        .collect();
    Some(Value::Array(rings).to_string())
}

/// `metav1.Time` for `t`: RFC 3339 in whole seconds, as the apiserver stores it.
pub fn k8s_time(t: Timestamp) -> String {
    Timestamp::new(t.as_second(), 0).unwrap_or(t).to_string()
}

/// Whether two API timestamps are the same instant, tolerating the apiserver's truncation to
/// whole seconds (less than a second apart). Unparseable times never match.
pub fn same_instant(a: &str, b: &str) -> bool {
    match (a.parse::<Timestamp>(), b.parse::<Timestamp>()) {
        (Ok(a), Ok(b)) => a.duration_since(b).abs().as_secs_f64() < 1.0,
        _ => false,
    }
}

fn status_str(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

fn find_condition<'a>(current: &'a [Value], type_: &str) -> Option<&'a Value> {
    current.iter().find(|c| c["type"] == type_)
}

/// The conditions to apply: `desired`, with `lastTransitionTime` kept from `current` while the
/// status is unchanged (now when it flips), and `lastHeartbeatTime` now.
pub fn conditions_to_apply(desired: &[CondSpec], current: &[Value], now: Timestamp) -> Vec<Value> {
    let now = k8s_time(now);
    desired
        .iter()
        .map(|d| {
            let status = status_str(d.status);
            let transition = find_condition(current, d.type_)
                .filter(|c| c["status"] == status)
                .and_then(|c| c["lastTransitionTime"].as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| now.clone());
            json!({
                "type": d.type_,
                "status": status,
                "reason": d.reason,
                "message": d.message,
                "lastTransitionTime": transition,
                "lastHeartbeatTime": now,
            })
        })
        .collect()
}

/// Whether `current` already shows every desired condition (status, reason, message, and a
/// transition time).
pub fn conditions_match(desired: &[CondSpec], current: &[Value]) -> bool {
    desired.iter().all(|d| {
        find_condition(current, d.type_).is_some_and(|c| {
            c["status"] == status_str(d.status)
                && c["reason"] == d.reason.as_str()
                && c["message"] == d.message.as_str()
                && c["lastTransitionTime"].is_string()
        })
    })
}

/// Whether `labels` and `annotations` on the node carry every desired value.
pub fn meta_matches(
    desired: &Desired,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> bool {
    desired.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        && desired
            .annotations
            .iter()
            .all(|(k, v)| annotations.get(k) == Some(v))
}

fn is_failover_taint(t: &Value) -> bool {
    t["key"] == keys::FAILOVER_TAINT && t["effect"] == "NoExecute"
}

/// The value of the failover taint on the node, if it has one.
pub fn failover_taint(taints: &[Value]) -> Option<String> {
    taints
        .iter()
        .find(|t| is_failover_taint(t))
        .map(|t| t["value"].as_str().unwrap_or_default().to_owned())
}

/// Whether a failover taint value is one the agent sets (and so may remove).
pub fn is_agent_taint_value(v: &str) -> bool {
    v == TAINT_BATTERY || v == TAINT_DEVICE
}

/// The node's new taint list, if it must change: ours added (with `timeAdded`) or removed,
/// every other taint kept as it is, in order. A failover taint someone else put there (the
/// controller, on a dead node) is never removed.
pub fn edit_taints(current: &[Value], want: Option<&str>, now: Timestamp) -> Option<Vec<Value>> {
    let existing = failover_taint(current);
    match (want, existing) {
        (Some(value), None) => {
            let mut out = current.to_vec();
            out.push(json!({
                "key": keys::FAILOVER_TAINT,
                "value": value,
                "effect": "NoExecute",
                "timeAdded": k8s_time(now),
            }));
            Some(out)
        }
        (None, Some(v)) if is_agent_taint_value(&v) => Some(
            current
                .iter()
                .filter(|t| !is_failover_taint(t))
                .cloned()
                .collect(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests;

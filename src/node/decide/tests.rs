use std::path::PathBuf;

use super::*;
use crate::power::{EstimateSource, Reason, Status};

fn rules() -> Rules {
    Rules {
        group: "line-1".into(),
        critical_streams: ["cam0".to_owned()].into_iter().collect(),
        device_grace: Duration::from_secs(5),
        hold_down: Duration::from_secs(60),
        failover_taint: true,
    }
}

fn power_rules() -> Rules {
    Rules {
        critical_streams: BTreeSet::new(),
        ..rules()
    }
}

fn stream(name: &str, kind: &str, up: bool, error: Option<&str>) -> HealthSnapshot {
    HealthSnapshot {
        name: name.into(),
        kind: kind.into(),
        class: Some(match kind {
            "camera" | "test-pattern" => crate::source::kinds::DeviceClass::Camera,
            _ => crate::source::kinds::DeviceClass::Serial,
        }),
        up,
        started: true,
        last_error: error.map(str::to_owned),
        ring: Some((
            PathBuf::from(format!("/dev/shm/edgeplex/{name}/{name}.ring")),
            8,
            4096,
        )),
        ..Default::default()
    }
}

pub(crate) fn power(class: PowerClass, capacity: f64, tte_s: Option<f64>) -> PowerSnapshot {
    PowerSnapshot {
        battery: true,
        on_battery: true,
        batteries: vec!["BAT0".into()],
        capacity_ratio: Some(capacity),
        status: Some(Status::Discharging),
        voltage_v: Some(11.1),
        power_w: Some(6.0),
        time_to_empty_s: tte_s,
        estimate: EstimateSource::Slope,
        class,
        reason: match class {
            PowerClass::Normal => Reason::Discharging,
            PowerClass::Low => Reason::CapacityLow,
            PowerClass::Critical => Reason::CapacityCritical,
        },
    }
}

fn mains() -> PowerSnapshot {
    PowerSnapshot {
        on_battery: false,
        status: Some(Status::Charging),
        time_to_empty_s: None,
        reason: Reason::ExternalPower,
        ..power(PowerClass::Normal, 0.5, None)
    }
}

fn cond<'a>(d: &'a Desired, t: &str) -> &'a CondSpec {
    d.conditions
        .iter()
        .find(|c| c.type_ == t)
        .expect("condition")
}

#[test]
fn labels_follow_devices_and_power() {
    let mut dec = Decider::new(rules());
    let t0 = Instant::now();
    let obs = Observation {
        streams: vec![
            stream("cam0", "camera", true, None),
            stream("gps0", "serial", false, Some("gone")),
        ],
        power: Some(power(PowerClass::Low, 0.15, Some(3000.0))),
    };
    let d = dec.decide(&obs, t0);
    assert_eq!(
        d.labels.get(keys::GROUP).map(String::as_str),
        Some("line-1")
    );
    assert_eq!(d.labels.get(keys::CAMERA).map(String::as_str), Some("true"));
    assert!(!d.labels.contains_key(keys::SERIAL), "serial is down");
    assert_eq!(
        d.labels.get(keys::BATTERY).map(String::as_str),
        Some("true")
    );
    assert_eq!(d.labels.get(keys::POWER).map(String::as_str), Some("low"));
    assert!(
        !d.labels.contains_key(keys::ACTIVE),
        "never asserted by the agent"
    );
    let rings: Value = serde_json::from_str(&d.annotations[keys::RINGS_ANNOTATION]).unwrap();
    assert_eq!(rings[0]["stream"], "cam0");
    assert_eq!(rings[0]["path"], "/dev/shm/edgeplex/cam0/cam0.ring");
    let battery: Value = serde_json::from_str(&d.annotations[keys::BATTERY_ANNOTATION]).unwrap();
    assert_eq!(battery["capacity_percent"], 15);
    assert_eq!(battery["time_to_empty_minutes"], 50);
    assert_eq!(battery["status"], "discharging");
    let c = cond(&d, keys::BATTERY_CRITICAL);
    assert!(!c.status);
    assert_eq!(c.reason, "CapacityLow");
    assert_eq!(d.taint, None);

    let no_power = Observation {
        streams: vec![],
        power: None,
    };
    let d = dec.decide(&no_power, t0);
    assert!(!d.labels.contains_key(keys::POWER) && !d.labels.contains_key(keys::BATTERY));
    assert!(d
        .conditions
        .iter()
        .all(|c| c.type_ != keys::BATTERY_CRITICAL));
    assert!(d.annotations.is_empty());
}

#[test]
fn the_battery_annotation_changes_at_most_once_a_minute() {
    let mut dec = Decider::new(rules());
    let t0 = Instant::now();
    let a = |tte: f64| {
        let obs = Observation {
            streams: vec![],
            power: Some(power(PowerClass::Normal, 0.503, Some(tte))),
        };
        dec.clone().decide(&obs, t0).annotations[keys::BATTERY_ANNOTATION].clone()
    };
    assert_eq!(a(3605.0), a(3625.0));
    assert_ne!(a(3605.0), a(3500.0));
    let _ = dec.decide(&Observation::default(), t0);
}

#[test]
fn a_critical_device_fails_only_after_its_grace_period() {
    let mut dec = Decider::new(rules());
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let down = Observation {
        streams: vec![stream(
            "cam0",
            "camera",
            false,
            Some("/dev/video0 disconnected"),
        )],
        power: None,
    };
    let never_opened = Observation {
        streams: vec![stream("cam0", "camera", false, None)],
        power: None,
    };
    let up = Observation {
        streams: vec![stream("cam0", "camera", true, None)],
        power: None,
    };
    assert!(!cond(&dec.decide(&never_opened, at(0)), keys::DEVICE_FAILURE).status);
    assert!(!cond(&dec.decide(&down, at(1)), keys::DEVICE_FAILURE).status);
    assert!(!cond(&dec.decide(&down, at(5)), keys::DEVICE_FAILURE).status);
    let d = dec.decide(&down, at(6));
    let c = cond(&d, keys::DEVICE_FAILURE);
    assert!(c.status);
    assert_eq!(c.reason, "CriticalDeviceDown");
    assert!(
        c.message.contains("cam0") && c.message.contains("disconnected"),
        "{c:?}"
    );
    assert_eq!(d.taint, Some(TAINT_DEVICE));
    // Back up: the condition clears at once, the taint waits for the hold-down.
    let d = dec.decide(&up, at(7));
    assert!(!cond(&d, keys::DEVICE_FAILURE).status);
    assert_eq!(d.taint, Some(TAINT_DEVICE));
    // Down again: a fresh grace period.
    assert!(!cond(&dec.decide(&down, at(8)), keys::DEVICE_FAILURE).status);
}

#[test]
fn no_critical_streams_means_no_device_failure() {
    let mut dec = Decider::new(Rules {
        critical_streams: BTreeSet::new(),
        ..rules()
    });
    let obs = Observation {
        streams: vec![stream("cam0", "camera", false, Some("x"))],
        power: None,
    };
    let d = dec.decide(&obs, Instant::now() + Duration::from_secs(100));
    assert_eq!(cond(&d, keys::DEVICE_FAILURE).reason, "NoCriticalDevices");
    assert_eq!(d.taint, None);
}

#[test]
fn the_taint_is_held_down_after_its_cause_clears() {
    let mut dec = Decider::new(power_rules());
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let critical = Observation {
        streams: vec![],
        power: Some(power(PowerClass::Critical, 0.07, Some(700.0))),
    };
    let normal = Observation {
        streams: vec![],
        power: Some(mains()),
    };
    assert_eq!(dec.decide(&normal, at(0)).taint, None);
    let d = dec.decide(&critical, at(1));
    assert_eq!(d.taint, Some(TAINT_BATTERY));
    assert!(cond(&d, keys::BATTERY_CRITICAL).status);
    let d = dec.decide(&normal, at(2));
    assert!(
        !cond(&d, keys::BATTERY_CRITICAL).status,
        "the condition follows at once"
    );
    assert_eq!(d.taint, Some(TAINT_BATTERY), "the taint is held down");
    // Flapping back within the hold-down keeps it without a gap, and restarts the hold-down.
    assert_eq!(dec.decide(&critical, at(30)).taint, Some(TAINT_BATTERY));
    assert_eq!(dec.decide(&normal, at(31)).taint, Some(TAINT_BATTERY));
    assert_eq!(dec.decide(&normal, at(90)).taint, Some(TAINT_BATTERY));
    assert_eq!(dec.decide(&normal, at(91)).taint, None);
}

#[test]
fn an_adopted_taint_is_held_down_and_tainting_can_be_off() {
    let t0 = Instant::now();
    let normal = Observation {
        streams: vec![],
        power: Some(mains()),
    };
    let mut dec = Decider::new(power_rules());
    dec.adopt_taint(TAINT_BATTERY, t0);
    assert_eq!(
        dec.decide(&normal, t0 + Duration::from_secs(59)).taint,
        Some(TAINT_BATTERY)
    );
    assert_eq!(
        dec.decide(&normal, t0 + Duration::from_secs(60)).taint,
        None
    );

    let mut off = Decider::new(Rules {
        failover_taint: false,
        ..rules()
    });
    let critical = Observation {
        streams: vec![],
        power: Some(power(PowerClass::Critical, 0.05, None)),
    };
    let d = off.decide(&critical, t0);
    assert!(cond(&d, keys::BATTERY_CRITICAL).status);
    assert_eq!(d.taint, None);
}

#[test]
fn transition_time_is_kept_until_the_status_flips() {
    let t1: Timestamp = "2025-03-01T10:00:00.750Z".parse().unwrap();
    let t2: Timestamp = "2025-03-01T10:05:00Z".parse().unwrap();
    let spec = |status| CondSpec {
        type_: keys::BATTERY_CRITICAL,
        status,
        reason: "Discharging".into(),
        message: "m".into(),
    };
    let first = conditions_to_apply(&[spec(false)], &[], t1);
    assert_eq!(
        first[0]["lastTransitionTime"], "2025-03-01T10:00:00Z",
        "whole seconds"
    );
    let kubelet = json!({"type": "Ready", "status": "True"});
    let current = vec![kubelet, first[0].clone()];
    let again = conditions_to_apply(&[spec(false)], &current, t2);
    assert_eq!(again[0]["lastTransitionTime"], "2025-03-01T10:00:00Z");
    assert_eq!(again[0]["lastHeartbeatTime"], "2025-03-01T10:05:00Z");
    assert!(conditions_match(&[spec(false)], &current));
    assert!(!conditions_match(&[spec(true)], &current));
    let flipped = conditions_to_apply(&[spec(true)], &current, t2);
    assert_eq!(flipped[0]["lastTransitionTime"], "2025-03-01T10:05:00Z");
    assert!(same_instant(
        "2025-03-01T10:00:00Z",
        "2025-03-01T10:00:00.999999Z"
    ));
    assert!(!same_instant(
        "2025-03-01T10:00:00Z",
        "2025-03-01T10:00:01.5Z"
    ));
    assert!(!same_instant("yesterday", "2025-03-01T10:00:00Z"));
}

#[test]
fn taint_edits_keep_every_other_taint() {
    let now: Timestamp = "2025-03-01T10:00:00Z".parse().unwrap();
    let unreachable = json!({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"});
    let cordon = json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"});
    let others = vec![unreachable.clone(), cordon.clone()];
    let added = edit_taints(&others, Some(TAINT_BATTERY), now).expect("added");
    assert_eq!(added.len(), 3);
    assert_eq!(added[..2], others[..]);
    assert_eq!(added[2]["key"], keys::FAILOVER_TAINT);
    assert_eq!(added[2]["effect"], "NoExecute");
    assert_eq!(added[2]["value"], TAINT_BATTERY);
    assert_eq!(
        edit_taints(&added, Some(TAINT_DEVICE), now),
        None,
        "already there"
    );
    assert_eq!(edit_taints(&others, None, now), None, "nothing to remove");
    assert_eq!(edit_taints(&added, None, now), Some(others.clone()));
    let controllers = vec![
        unreachable,
        json!({"key": keys::FAILOVER_TAINT, "value": "lease-expired", "effect": "NoExecute"}),
    ];
    assert_eq!(
        edit_taints(&controllers, None, now),
        None,
        "not ours to remove"
    );
    assert_eq!(
        failover_taint(&controllers).as_deref(),
        Some("lease-expired")
    );
}

#[test]
fn meta_matches_compares_only_what_edgeplex_asserts() {
    let mut d = Desired::default();
    d.labels.insert(keys::GROUP.into(), "g".into());
    let mut labels = BTreeMap::new();
    labels.insert(keys::GROUP.to_owned(), "g".to_owned());
    labels.insert("kubernetes.io/hostname".to_owned(), "n".to_owned());
    assert!(meta_matches(&d, &labels, &BTreeMap::new()));
    labels.insert(keys::GROUP.to_owned(), "h".to_owned());
    assert!(!meta_matches(&d, &labels, &BTreeMap::new()));
}

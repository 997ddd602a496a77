//! What kube-apiserver does to every write that the tests depend on: timestamps serialized
//! at their API precision (`metav1.Time` in whole seconds, `MicroTime` in microseconds), and
//! the validation of label syntax, taints and lease durations.

use std::collections::BTreeSet;

use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use super::resources::{ApiError, Resource};

/// Now, truncated to whole seconds, RFC 3339 (`metav1.Time`).
pub fn now_seconds() -> String {
    let now = Timestamp::now();
    Timestamp::new(now.as_second(), 0)
        .unwrap_or(now)
        .to_string()
}

fn normalize_time(v: &mut Value, micro: bool, field: &str) -> Result<(), ApiError> {
    let Some(s) = v.as_str() else {
        return if v.is_null() {
            Ok(())
        } else {
            Err(ApiError::bad_request(format!(
                "{field}: expected an RFC 3339 time string"
            )))
        };
    };
    let t: Timestamp = s
        .parse()
        .map_err(|e| ApiError::bad_request(format!("{field}: parsing time {s:?}: {e}")))?;
    let whole = Timestamp::new(t.as_second(), 0)
        .map_err(|e| ApiError::bad_request(format!("{field}: {e}")))?
        .to_string();
    let out = if micro {
        let base = whole.trim_end_matches('Z');
        format!("{base}.{:06}Z", t.subsec_microsecond())
    } else {
        whole
    };
    *v = json!(out);
    Ok(())
}

/// Serialize times the way the apiserver does: `metav1.Time` to seconds, `MicroTime` to µs.
pub fn normalize_times(res: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    let conds = |obj: &mut Value| -> Result<(), ApiError> {
        if let Some(cs) = obj
            .pointer_mut("/status/conditions")
            .and_then(Value::as_array_mut)
        {
            for c in cs {
                for f in [
                    "lastTransitionTime",
                    "lastHeartbeatTime",
                    "lastProbeTime",
                    "lastUpdateTime",
                ] {
                    if let Some(t) = c.get_mut(f) {
                        normalize_time(t, false, f)?;
                    }
                }
            }
        }
        Ok(())
    };
    match (res.group, res.plural) {
        ("", "nodes") => {
            conds(obj)?;
            if let Some(ts) = obj
                .pointer_mut("/spec/taints")
                .and_then(Value::as_array_mut)
            {
                for t in ts {
                    if let Some(v) = t.get_mut("timeAdded") {
                        normalize_time(v, false, "spec.taints.timeAdded")?;
                    }
                }
            }
        }
        ("", "pods") => conds(obj)?,
        ("coordination.k8s.io", _) => {
            for f in ["renewTime", "acquireTime"] {
                if let Some(v) = obj.pointer_mut(&format!("/spec/{f}")) {
                    normalize_time(v, true, f)?;
                }
            }
        }
        (_, "events") => {
            for (p, micro) in [
                ("/eventTime", true),
                ("/series/lastObservedTime", true),
                ("/firstTimestamp", false),
                ("/lastTimestamp", false),
                ("/deprecatedFirstTimestamp", false),
                ("/deprecatedLastTimestamp", false),
            ] {
                if let Some(v) = obj.pointer_mut(p) {
                    normalize_time(v, micro, p)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn valid_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn valid_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

fn valid_qualified_name(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => valid_dns_subdomain(prefix) && valid_label_name(name),
        None => valid_label_name(key),
    }
}

/// The validation kube-apiserver does that the tests depend on: label syntax (a value cannot
/// hold `/`), annotation keys, taint effects and duplicate taints, lease duration.
pub fn validate(res: &Resource, name: &str, obj: &Value) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if !valid_qualified_name(k) {
                causes.push((
                    "metadata.labels".to_owned(),
                    format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.'"),
                ));
            }
            match v.as_str() {
                Some(v) if v.is_empty() || valid_label_name(v) => {}
                _ => causes.push((
                    "metadata.labels".to_owned(),
                    format!("Invalid value: {v}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                )),
            }
        }
    }
    if let Some(ann) = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        for (k, v) in ann {
            if !valid_qualified_name(k) || !v.is_string() {
                causes.push((
                    "metadata.annotations".to_owned(),
                    format!("Invalid value: {k:?}: annotation keys are qualified names and values strings"),
                ));
            }
        }
    }
    if res.plural == "nodes" {
        if let Some(taints) = obj.pointer("/spec/taints").and_then(Value::as_array) {
            let mut seen = BTreeSet::new();
            for (i, t) in taints.iter().enumerate() {
                let key = t.get("key").and_then(Value::as_str).unwrap_or_default();
                let effect = t.get("effect").and_then(Value::as_str).unwrap_or_default();
                if key.is_empty() || !valid_qualified_name(key) {
                    causes.push((
                        format!("spec.taints[{i}].key"),
                        format!("Invalid value: {key:?}"),
                    ));
                }
                if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
                    causes.push((
                        format!("spec.taints[{i}].effect"),
                        format!("Unsupported value: {effect:?}: supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""),
                    ));
                }
                if !seen.insert((key.to_owned(), effect.to_owned())) {
                    causes.push((
                        format!("spec.taints[{i}]"),
                        format!("Duplicate value: {{{key:?}, {effect:?}}}: taints must be unique by key and effect pair"),
                    ));
                }
            }
        }
    }
    if res.plural == "leases" {
        if let Some(d) = obj.pointer("/spec/leaseDurationSeconds") {
            if d.as_i64().is_none_or(|d| d <= 0) {
                causes.push((
                    "spec.leaseDurationSeconds".to_owned(),
                    format!("Invalid value: {d}: must be greater than 0"),
                ));
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(res, name, &causes))
    }
}

//! How settings are read and how their errors are worded, for every command and section.
//!
//! A settings struct is deserialized from a TOML table with [`typed`]; any error becomes a
//! [`ConfigError`]: one line that names the full dotted key (`stream.cam0.width`), the bad value
//! and what is allowed. Modules that own settings (`source::*`, `power`, `kube`, `node`,
//! `failover`) depend on this module, never on `config`, which assembles them.

pub mod values;

use serde::Deserialize;
use toml::{Table, Value};

/// A configuration or usage error: one line, naming the key (exit code 64).
#[derive(Debug, thiserror::Error)]
#[error("config error: {0}")]
pub struct ConfigError(pub String);

/// Deserialize `t`, the table at dotted key `prefix`, with errors that name the full key.
pub fn typed<T: for<'de> Deserialize<'de>>(t: Table, prefix: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(Value::Table(t)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let inner = inner.lines().next().unwrap_or_default().to_owned();
        let at = if path == "." || path.is_empty() {
            prefix.to_owned()
        } else if prefix.is_empty() {
            path
        } else {
            format!("{prefix}.{path}")
        };
        // serde names a missing or unknown field inside the message; lift it into the key.
        let key = |field: &str| {
            if at.ends_with(&format!(".{field}")) || at == field {
                at.clone()
            } else if at.is_empty() {
                field.to_owned()
            } else {
                format!("{at}.{field}")
            }
        };
        if let Some(field) = between(&inner, "missing field `", "`") {
            return ConfigError(format!("{} is required", key(field)));
        }
        if let Some(field) = between(&inner, "unknown field `", "`") {
            let allowed = inner.split_once(", expected ").map(|x| x.1).unwrap_or("");
            let allowed = allowed.trim_start_matches("one of ").replace('`', "");
            return ConfigError(format!(
                "{} is not a known key; allowed: {allowed}",
                key(field)
            ));
        }
        ConfigError(format!("{at}: {inner}"))
    })
}

/// The keys a settings table accepts, as its own "unknown key" error lists them (used to check
/// that the example configuration documents every key).
pub fn known_keys<T: for<'de> Deserialize<'de>>(mut probe: Table) -> Vec<String> {
    probe.insert("\u{1}probe".into(), Value::Integer(0));
    match typed::<T>(probe, "") {
        Ok(_) => Vec::new(),
        Err(ConfigError(msg)) => msg
            .split_once("allowed: ")
            .map(|(_, list)| {
                list.split(", ")
                    .flat_map(|k| k.split(" or "))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &s[s.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

/// Check that `v` seconds is a finite duration in `lo..=hi`, for key `key`.
pub fn check_secs(key: &str, v: f64, lo: f64, hi: f64) -> Result<(), String> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!(
            "{key} = {v} is out of range: allowed {lo} to {hi} seconds"
        ))
    }
}

/// Check the name of a stream or a discovery rule (`what`) at `prefix`: 1-63 characters of
/// a-z, 0-9, `-` and `_`, starting with a letter or digit (a path component, a label value and
/// a device-plugin resource name all accept it).
pub fn check_name(what: &str, name: &str, prefix: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "{prefix}: {what} name {name:?} must be 1-63 characters of a-z, 0-9, - and _, starting with a letter or digit"
        )))
    }
}

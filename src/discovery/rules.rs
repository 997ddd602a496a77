//! The `[discovery]` settings: the limit, the grace period, and the rules
//! (`[discovery.rule.NAME]`), each a match on what the kernel says about a device, a name
//! template, and the settings of the stream it becomes.
//!
//! A rule's table holds its own keys ([`RULE_KEYS`]) and, beside them, the stream settings of
//! its kind (`width`, `fps`, `baud`, `framing`, ... exactly as in `[stream.NAME]`, without
//! `device`, which discovery fills in, and without `type`, which `kind` decides). Everything is
//! checked at load time: a rule whose settings would not make a valid stream is a configuration
//! error, not a surprise when a device arrives.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Serialize, Serializer};
use toml::{Table, Value};

use super::{Device, Kind};
use crate::settings::{check_secs, typed, ConfigError};
use crate::source::kinds::StreamConfig;

/// The keys of a rule that are not stream settings.
pub const RULE_KEYS: &[&str] = &[
    "kind", "name", "driver", "vendor", "product", "serial", "by_id", "by_path",
];

/// The fields a name template can use, as `{field}`.
pub const TEMPLATE_FIELDS: &[&str] = &[
    "serial", "port", "by_id", "by_path", "vendor", "product", "driver", "node", "index", "kind",
    "label",
];

/// The longest stream name (a Kubernetes label value allows 63 characters).
pub const MAX_NAME_LEN: usize = 63;

/// `[discovery]`
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoverySettings {
    /// At most this many discovered streams run at once (explicit streams do not count).
    pub max_streams: u32,
    /// Seconds a discovered stream whose device left stays labelled and advertised, so that a
    /// replug looks like a short gap.
    pub grace_secs: f64,
    /// The rules by name; a device is taken by the first rule, in name order, that matches it.
    pub rules: BTreeMap<String, Rule>,
    /// Where the agent watches for device nodes: `/dev`, or where the host's `/dev` is mounted
    /// in a container (`/host/dev` in the DaemonSet).
    pub dev: std::path::PathBuf,
    /// Where sysfs is mounted.
    pub sys: std::path::PathBuf,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        DiscoverySettings {
            max_streams: 16,
            grace_secs: 30.0,
            rules: BTreeMap::new(),
            dev: "/dev".into(),
            sys: "/sys".into(),
        }
    }
}

impl DiscoverySettings {
    /// The sysfs and device roots the agent discovers under.
    pub fn roots(&self) -> super::Roots {
        super::Roots {
            sys: self.sys.clone(),
            dev: self.dev.clone(),
        }
    }
}

/// The `[discovery]` keys besides the rules.
#[derive(Debug, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Base {
    #[serde(default = "default_max")]
    max_streams: u32,
    #[serde(default = "default_grace")]
    grace_secs: f64,
    #[serde(default = "default_dev")]
    dev: std::path::PathBuf,
    #[serde(default = "default_sys")]
    sys: std::path::PathBuf,
}

fn default_dev() -> std::path::PathBuf {
    DiscoverySettings::default().dev
}

fn default_sys() -> std::path::PathBuf {
    DiscoverySettings::default().sys
}

fn default_max() -> u32 {
    DiscoverySettings::default().max_streams
}

fn default_grace() -> f64 {
    DiscoverySettings::default().grace_secs
}

/// Largest `discovery.max_streams`.
pub const MAX_STREAMS_LIMIT: u32 = 1024;

impl DiscoverySettings {
    /// Parse `[discovery]` (at dotted key `prefix`, normally `discovery`) and validate it.
    pub fn from_value(value: Value, prefix: &str) -> Result<DiscoverySettings, ConfigError> {
        let Value::Table(mut t) = value else {
            return Err(ConfigError(format!(
                "{prefix} = {value} must be a table ([{prefix}])"
            )));
        };
        let rules_raw = match t.remove("rule") {
            None => Table::new(),
            Some(Value::Table(r)) => r,
            Some(v) => {
                return Err(ConfigError(format!(
                    "{prefix}.rule = {v} must be a table of rules, e.g. [{prefix}.rule.cams]"
                )))
            }
        };
        let base: Base = typed(t, prefix)?;
        if base.max_streams > MAX_STREAMS_LIMIT {
            return Err(ConfigError(format!(
                "{prefix}.max_streams = {} is out of range: allowed 0..={MAX_STREAMS_LIMIT}",
                base.max_streams
            )));
        }
        check_secs(
            &format!("{prefix}.grace_secs"),
            base.grace_secs,
            0.0,
            86400.0,
        )
        .map_err(ConfigError)?;
        let rules = rules_raw
            .into_iter()
            .map(|(name, v)| {
                let p = format!("{prefix}.rule.{name}");
                crate::settings::check_name("rule", &name, &p)?;
                Ok((name, Rule::from_value(v, &p)?))
            })
            .collect::<Result<_, ConfigError>>()?;
        for (key, dir) in [("dev", &base.dev), ("sys", &base.sys)] {
            if !dir.is_absolute() {
                return Err(ConfigError(format!(
                    "{prefix}.{key} = {:?} must be an absolute path, e.g. \"/{key}\"",
                    dir.display()
                )));
            }
        }
        Ok(DiscoverySettings {
            max_streams: base.max_streams,
            grace_secs: base.grace_secs,
            rules,
            dev: base.dev,
            sys: base.sys,
        })
    }

    /// The keys of `[discovery]` and of a rule (`rule.*.KEY`), for the example-config check.
    pub fn keys() -> Vec<String> {
        let mut keys = crate::settings::known_keys::<Base>(Table::new());
        keys.extend(RULE_KEYS.iter().map(|k| format!("rule.*.{k}")));
        keys
    }
}

impl Serialize for DiscoverySettings {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = Table::new();
        t.insert(
            "max_streams".into(),
            Value::Integer(self.max_streams.into()),
        );
        t.insert("grace_secs".into(), Value::Float(self.grace_secs));
        t.insert("dev".into(), Value::String(self.dev.display().to_string()));
        t.insert("sys".into(), Value::String(self.sys.display().to_string()));
        if !self.rules.is_empty() {
            let rules = self
                .rules
                .iter()
                .map(|(n, r)| (n.clone(), Value::Table(r.to_table())))
                .collect();
            t.insert("rule".into(), Value::Table(rules));
        }
        t.serialize(s)
    }
}

/// One `[discovery.rule.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Which kind of device it takes, and so the stream type.
    pub kind: Kind,
    /// What else a device must have.
    pub matcher: Match,
    /// The name templates, tried in order: the first whose fields the device all has names it.
    pub name: Vec<Template>,
    /// The stream settings, without `device` and `type`, as written.
    pub settings: Table,
}

/// A rule's match: every given field must match (an absent one matches anything).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Match {
    /// Driver name pattern (`uvcvideo`, `ftdi_*`).
    pub driver: Option<glob::Pattern>,
    /// USB vendor ID, four lower-case hex digits.
    pub vendor: Option<String>,
    /// USB product ID, four lower-case hex digits.
    pub product: Option<String>,
    /// Serial number pattern.
    pub serial: Option<glob::Pattern>,
    /// Pattern on the file name of any of the device's by-id links.
    pub by_id: Option<glob::Pattern>,
    /// Pattern on the file name of any of the device's by-path links.
    pub by_path: Option<glob::Pattern>,
}

impl Match {
    /// Whether `d` has everything this match asks for.
    pub fn matches(&self, d: &Device) -> bool {
        fn glob(p: &Option<glob::Pattern>, v: Option<&str>) -> bool {
            match p {
                None => true,
                Some(p) => v.is_some_and(|v| p.matches(v)),
            }
        }
        fn any_link(p: &Option<glob::Pattern>, links: &[std::path::PathBuf]) -> bool {
            match p {
                None => true,
                Some(p) => links
                    .iter()
                    .filter_map(|l| l.file_name()?.to_str())
                    .any(|n| p.matches(n)),
            }
        }
        let id = |want: &Option<String>, have: &Option<String>| match want {
            None => true,
            Some(w) => have.as_deref() == Some(w.as_str()),
        };
        glob(&self.driver, d.driver.as_deref())
            && id(&self.vendor, &d.vendor)
            && id(&self.product, &d.product)
            && glob(&self.serial, d.serial.as_deref())
            && any_link(&self.by_id, &d.by_id)
            && any_link(&self.by_path, &d.by_path)
    }
}

impl Rule {
    /// Parse one rule from its table at dotted key `prefix` and validate it, its stream settings
    /// included.
    pub fn from_value(value: Value, prefix: &str) -> Result<Rule, ConfigError> {
        let Value::Table(mut t) = value else {
            return Err(ConfigError(format!(
                "{prefix} must be a table, e.g. [{prefix}] kind = \"camera\" name = \"cam-{{serial}}\""
            )));
        };
        let err = |key: &str, msg: String| ConfigError(format!("{prefix}.{key}{msg}"));
        let text = |t: &mut Table, key: &str| -> Result<Option<String>, ConfigError> {
            match t.remove(key) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(v) => Err(err(key, format!(" = {v} must be a string"))),
            }
        };
        let kind = match text(&mut t, "kind")?.as_deref() {
            Some("camera") => Kind::Camera,
            Some("serial") => Kind::Serial,
            Some(other) => {
                return Err(err(
                    "kind",
                    format!(" = {other:?} is unknown; allowed: camera, serial"),
                ))
            }
            None => return Err(err("kind", " is required: camera or serial".into())),
        };
        let name = match t.remove("name") {
            None => {
                return Err(err(
                    "name",
                    " is required: a template such as \"cam-{serial}\" or [\"cam-{serial}\", \"cam-{port}\"]"
                        .into(),
                ))
            }
            Some(Value::String(s)) => vec![s],
            Some(Value::Array(a)) if !a.is_empty() && a.len() <= 8 => a
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    v => Err(err("name", format!(": {v} must be a string"))),
                })
                .collect::<Result<_, _>>()?,
            Some(v) => {
                return Err(err(
                    "name",
                    format!(" = {v} must be a template string or a list of 1 to 8 of them"),
                ))
            }
        };
        let name = name
            .iter()
            .map(|s| Template::parse(s).map_err(|e| err("name", format!(" = {s:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let pattern = |t: &mut Table, key: &str| -> Result<Option<glob::Pattern>, ConfigError> {
            let Some(s) = text(t, key)? else {
                return Ok(None);
            };
            if key.starts_with("by_") && s.contains('/') {
                return Err(err(
                    key,
                    format!(" = {s:?} must match a link's file name, without '/'"),
                ));
            }
            glob::Pattern::new(&s)
                .map(Some)
                .map_err(|e| err(key, format!(" = {s:?} is not a valid pattern: {e}")))
        };
        let usb_id = |t: &mut Table, key: &str| -> Result<Option<String>, ConfigError> {
            let Some(s) = text(t, key)? else {
                return Ok(None);
            };
            if s.len() == 4 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(Some(s.to_ascii_lowercase()))
            } else {
                Err(err(
                    key,
                    format!(" = {s:?} is not a USB ID: give four hex digits, e.g. \"046d\""),
                ))
            }
        };
        let matcher = Match {
            driver: pattern(&mut t, "driver")?,
            vendor: usb_id(&mut t, "vendor")?,
            product: usb_id(&mut t, "product")?,
            serial: pattern(&mut t, "serial")?,
            by_id: pattern(&mut t, "by_id")?,
            by_path: pattern(&mut t, "by_path")?,
        };
        if t.contains_key("device") {
            return Err(err(
                "device",
                ": a rule fills in the device of what it matches; remove the key, or write an explicit [stream.NAME] for a fixed path".into(),
            ));
        }
        if t.contains_key("type") {
            return Err(err(
                "type",
                ": a rule's stream type is its kind; remove the key".into(),
            ));
        }
        let rule = Rule {
            kind,
            matcher,
            name,
            settings: t,
        };
        rule.stream_config(Path::new("/dev/discovered"), prefix)?;
        Ok(rule)
    }

    /// The stream this rule makes of the device at `device`; errors name keys under `prefix`.
    pub fn stream_config(&self, device: &Path, prefix: &str) -> Result<StreamConfig, ConfigError> {
        let path = device.to_str().ok_or_else(|| {
            ConfigError(format!("{prefix}: the device path {device:?} is not UTF-8"))
        })?;
        let mut t = self.settings.clone();
        t.insert("device".into(), Value::String(path.to_owned()));
        StreamConfig::parse(self.kind.stream_type(), t, prefix)
    }

    /// Whether the rule takes `d`.
    pub fn matches(&self, d: &Device) -> bool {
        d.kind == self.kind && self.matcher.matches(d)
    }

    /// The rule as the table it was read from.
    pub fn to_table(&self) -> Table {
        let mut t = self.settings.clone();
        let s = |v: &str| Value::String(v.to_owned());
        t.insert("kind".into(), s(self.kind.as_str()));
        let names: Vec<Value> = self.name.iter().map(|n| s(&n.text)).collect();
        t.insert(
            "name".into(),
            if names.len() == 1 {
                names[0].clone()
            } else {
                Value::Array(names)
            },
        );
        let m = &self.matcher;
        for (key, v) in [
            ("driver", m.driver.as_ref().map(glob::Pattern::as_str)),
            ("vendor", m.vendor.as_deref()),
            ("product", m.product.as_deref()),
            ("serial", m.serial.as_ref().map(glob::Pattern::as_str)),
            ("by_id", m.by_id.as_ref().map(glob::Pattern::as_str)),
            ("by_path", m.by_path.as_ref().map(glob::Pattern::as_str)),
        ] {
            if let Some(v) = v {
                t.insert(key.into(), s(v));
            }
        }
        t
    }
}

/// A stream name template: text with `{field}` placeholders ([`TEMPLATE_FIELDS`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// As written.
    pub text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(&'static str),
}

impl Template {
    /// Parse `text`; the error says which placeholder is wrong.
    pub fn parse(text: &str) -> Result<Template, String> {
        if text.is_empty() || text.len() > 256 {
            return Err("a template is 1 to 256 characters".into());
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Text(rest.to_owned()));
                    break;
                }
                Some(i) if rest.as_bytes()[i] == b'}' => {
                    return Err("'}' without '{'".into());
                }
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Text(rest[..i].to_owned()));
                    }
                    let after = &rest[i + 1..];
                    let end = after
                        .find(['{', '}'])
                        .filter(|&j| after.as_bytes()[j] == b'}')
                        .ok_or("'{' without '}'")?;
                    let field = &after[..end];
                    let known = TEMPLATE_FIELDS
                        .iter()
                        .find(|f| **f == field)
                        .ok_or_else(|| {
                            format!(
                                "unknown field {{{field}}}; fields: {}",
                                TEMPLATE_FIELDS
                                    .iter()
                                    .map(|f| format!("{{{f}}}"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        })?;
                    parts.push(Part::Field(known));
                    rest = &after[end + 1..];
                }
            }
        }
        Ok(Template {
            text: text.to_owned(),
            parts,
        })
    }

    /// The fields this template uses, in order.
    pub fn fields(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(*f),
            Part::Text(_) => None,
        })
    }

    /// The name for `d`, sanitised ([`sanitise`]); `Err` lists the fields `d` lacks.
    pub fn render(&self, d: &Device) -> Result<String, Vec<&'static str>> {
        let mut out = String::new();
        let mut missing = Vec::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => match field(d, f) {
                    Some(v) => out.push_str(&v),
                    None => missing.push(*f),
                },
            }
        }
        if missing.is_empty() {
            Ok(sanitise(&out))
        } else {
            Err(missing)
        }
    }
}

/// The value of template field `f` for `d`, if it has one (an empty value counts as none).
fn field(d: &Device, f: &str) -> Option<String> {
    let link = |links: &[std::path::PathBuf]| {
        links
            .first()
            .and_then(|l| l.file_name())
            .map(|n| n.to_string_lossy().into_owned())
    };
    let v = match f {
        "serial" => d.serial.clone(),
        "port" => d.port.clone(),
        "by_id" => link(&d.by_id),
        "by_path" => link(&d.by_path),
        "vendor" => d.vendor.clone(),
        "product" => d.product.clone(),
        "driver" => d.driver.clone(),
        "node" => Some(d.name.clone()),
        "index" => d.index.map(|i| i.to_string()),
        "kind" => Some(d.kind.as_str().to_owned()),
        "label" => d.label.clone(),
        _ => None,
    };
    v.filter(|s| !s.trim().is_empty())
}

/// Make `raw` a valid stream name: lower case; every run of characters other than `a-z`, `0-9`,
/// `-` and `_` becomes one `-`; no leading or trailing `-` or `_`; at most 63 characters. The
/// result may be empty, which is no name.
pub fn sanitise(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len().min(MAX_NAME_LEN + 1));
    for c in raw.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
            c
        } else {
            '-'
        };
        if c == '-' && out.ends_with('-') {
            continue;
        }
        out.push(c);
    }
    let trimmed = out.trim_matches(|c| c == '-' || c == '_');
    let mut name: String = trimmed.chars().take(MAX_NAME_LEN).collect();
    while name.ends_with(['-', '_']) {
        name.pop();
    }
    name
}

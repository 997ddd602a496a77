//! The configuration of `edgeplex run` and `edgeplex failover`: one TOML schema, one loader, one
//! set of override rules, one error style.
//!
//! Every setting has a dotted key (`ring.dir`, `stream.cam0.width`, `failover.namespace`), the
//! same keys `snap set` uses. A value comes from, in rising precedence:
//!
//! 1. the file (`--config PATH`, else `/etc/edgeplex/edgeplex.toml` when it exists);
//! 2. the environment: `EDGEPLEX_` + the key in upper case with `__` between its parts, e.g.
//!    `EDGEPLEX_RING__DIR=/run/edgeplex`, `EDGEPLEX_STREAM__CAM0__WIDTH=1280`,
//!    `EDGEPLEX_FAILOVER__NAMESPACE=edgeplex`; plus the short aliases `EDGEPLEX_RING_DIR`,
//!    `EDGEPLEX_METRICS_LISTEN`, `EDGEPLEX_LOG` and `EDGEPLEX_LOG_FORMAT`;
//! 3. flags: `--set KEY=VALUE` (repeatable) and each command's named flags (`--ring-dir`,
//!    `--namespace`, ...), which are short forms of keys.
//!
//! Values are parsed as TOML (`1280`, `true`, `"text"`), falling back to a plain string. The
//! merged table is parsed once, into types ([`values`]), and validated; every error is one line
//! naming the key, the bad value and what is allowed (exit 64). [`Config::to_toml`] prints the
//! effective configuration in the same syntax, which `edgeplex run` accepts again.

pub use crate::settings::values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

pub use crate::settings::ConfigError;
use crate::settings::{check_secs, typed};
pub use crate::source::kinds::StreamConfig;
use crate::telemetry::LogFormat;
pub use stream::{Stream, StreamCommon};
use values::{FileMode, GroupId, Listen, LogFilter};

mod stream;

/// Where both commands look for their configuration by default.
pub const DEFAULT_PATH: &str = "/etc/edgeplex/edgeplex.toml";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Config {
    /// Ring directory and file permissions.
    pub ring: RingConfig,
    /// The agent's metrics endpoint.
    pub metrics: MetricsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Agent behaviour.
    pub agent: AgentConfig,
    /// Battery monitoring.
    pub power: crate::power::PowerConfig,
    /// Connecting to Kubernetes (both commands).
    pub kube: crate::kube::KubeSettings,
    /// What the node publisher asserts on this Node.
    pub node: crate::node::NodeSettings,
    /// The kubelet device plugin (`[device_plugin]`).
    pub device_plugin: crate::deviceplugin::DevicePluginSettings,
    /// The failover controller (`edgeplex failover`).
    pub failover: crate::failover::FailoverSettings,
    /// Device discovery: rules that turn cameras and serial ports into streams.
    pub discovery: crate::discovery::DiscoverySettings,
    /// Streams by name.
    #[serde(rename = "stream")]
    pub streams: BTreeMap<String, Stream>,
}

/// `[ring]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RingConfig {
    /// Directory of the ring files; must be tmpfs unless `allow_disk`.
    pub dir: PathBuf,
    /// File mode: an octal string (`"0644"`) or number; never writable by group or others.
    pub mode: FileMode,
    /// Group of the ring files, by name or number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupId>,
    /// Accept a disk-backed ring directory.
    pub allow_disk: bool,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            dir: PathBuf::from("/dev/shm/edgeplex"),
            mode: FileMode::DEFAULT,
            group: None,
            allow_disk: false,
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Listen address of `/metrics`, `/healthz`, `/readyz`; `""` disables the endpoint.
    pub listen: Listen,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: Listen::on(([0, 0, 0, 0], 9464).into()),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Filter in `RUST_LOG` syntax.
    pub level: LogFilter,
    /// `text` or `json`.
    pub format: LogFormat,
}

/// `[agent]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Seconds the agent waits for streams to drain after SIGTERM before it exits anyway.
    pub grace_period_secs: f64,
    /// First retry delay after a device fails, seconds.
    pub retry_initial_secs: f64,
    /// Longest retry delay, seconds.
    pub retry_max_secs: f64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            grace_period_secs: 5.0,
            retry_initial_secs: 0.5,
            retry_max_secs: 30.0,
        }
    }
}

/// Where overrides come from, above the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--set KEY=VALUE`, in order.
    pub set: Vec<String>,
    /// Named flags as `(flag, key, value)`, e.g. `("--ring-dir", "ring.dir", "/run/x")`.
    pub flags: Vec<(&'static str, &'static str, String)>,
}

impl Overrides {
    /// Add named flag `flag` for `key` when it was given; `value` is read as TOML (`1.5`,
    /// `true`), else as a string, like `--set` values.
    pub fn flag(&mut self, flag: &'static str, key: &'static str, value: Option<impl ToString>) {
        if let Some(v) = value {
            self.flags.push((flag, key, v.to_string()));
        }
    }

    /// Add named flag `flag` for `key` when it was given; `value` is always a string (a path,
    /// a name, an address; `""` stays an empty string).
    pub fn text(&mut self, flag: &'static str, key: &'static str, value: Option<impl ToString>) {
        if let Some(v) = value {
            let quoted = Value::String(v.to_string()).to_string();
            self.flags.push((flag, key, quoted));
        }
    }
}

/// Environment variables that name other things than configuration keys.
const NON_CONFIG_ENV: &[&str] = &["EDGEPLEX_CONFIG"];

/// Short environment aliases of common keys.
const ENV_ALIASES: &[(&str, &str)] = &[
    ("EDGEPLEX_RING_DIR", "ring.dir"),
    ("EDGEPLEX_METRICS_LISTEN", "metrics.listen"),
    ("EDGEPLEX_LOG", "log.level"),
    ("EDGEPLEX_LOG_FORMAT", "log.format"),
];

/// Load the configuration: `file` (the default path may be absent; an explicit one must exist),
/// then `env`, then `overrides`.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let table = match file {
        Some(path) => read_file(path)?,
        None => match std::fs::metadata(DEFAULT_PATH) {
            Ok(_) => read_file(Path::new(DEFAULT_PATH))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Table::new(),
            Err(e) => return Err(ConfigError(format!("cannot read {DEFAULT_PATH}: {e}"))),
        },
    };
    load_over(table, env, overrides)
}

/// Load the configuration from `env` and `overrides` alone, without a file (the tool commands,
/// which read only the `log` keys).
pub fn load_without_file(
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    load_over(Table::new(), env, overrides)
}

fn load_over(
    mut table: Table,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("EDGEPLEX_") && !NON_CONFIG_ENV.contains(&k.as_str()))
        .collect();
    env.sort();
    for (name, value) in &env {
        let key = match ENV_ALIASES.iter().find(|(n, _)| n == name) {
            Some((_, key)) => (*key).to_owned(),
            None if name.contains("__") => name["EDGEPLEX_".len()..]
                .split("__")
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
                .join("."),
            None => continue, // other EDGEPLEX_* variables (tests, tools) are not config keys
        };
        // {name:?}: a name may hold anything, a newline included; the error stays one line.
        set_key(&mut table, &key, value).map_err(|e| ConfigError(format!("{name:?}: {e}")))?;
    }
    for (flag, key, value) in &overrides.flags {
        set_key(&mut table, key, value).map_err(|e| ConfigError(format!("{flag}: {e}")))?;
    }
    for kv in &overrides.set {
        let (key, value) = kv.split_once('=').ok_or_else(|| {
            ConfigError(format!(
                "--set {kv:?}: expected KEY=VALUE, e.g. --set stream.cam0.width=1280"
            ))
        })?;
        set_key(&mut table, key.trim(), value)
            .map_err(|e| ConfigError(format!("--set {key:?}: {e}")))?;
    }
    Config::from_table(table)
}

fn read_file(path: &Path) -> Result<Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "{} does not exist; pass --config PATH, or start from edgeplex.example.toml",
                path.display()
            ),
            _ => format!("cannot read {}: {e}", path.display()),
        })
    })?;
    text.parse::<Table>().map_err(|e| {
        let msg = e.message().lines().next().unwrap_or_default().to_owned();
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        ConfigError(match line {
            Some(l) => format!("{} line {l}: {msg}", path.display()),
            None => format!("{}: {msg}", path.display()),
        })
    })
}

/// Set dotted `key` to `raw` (parsed as a TOML value, else a string).
fn set_key(table: &mut Table, key: &str, raw: &str) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    let part_ok = |p: &&str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    if !parts.iter().all(part_ok) {
        return Err(format!(
            "{key:?} is not a valid key; keys look like ring.dir or stream.cam0.width"
        ));
    }
    let value = parse_value(raw);
    let mut t = table;
    for part in &parts[..parts.len() - 1] {
        let entry = t
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        t = match entry {
            Value::Table(inner) => inner,
            _ => return Err(format!("{key:?}: {part:?} is a value, not a table")),
        };
    }
    t.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> Value {
    let doc = format!("v = {raw}");
    match doc.parse::<Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_owned())),
        Err(_) => Value::String(raw.to_owned()),
    }
}

/// Top-level sections, in the order the example file shows them.
const SECTIONS: &[&str] = &[
    "ring",
    "metrics",
    "log",
    "agent",
    "power",
    "kube",
    "node",
    "device_plugin",
    "failover",
    "discovery",
    "stream",
];

impl Config {
    /// Parse and validate a merged table.
    pub fn from_table(mut table: Table) -> Result<Config, ConfigError> {
        let streams_raw = match table.remove("stream") {
            None => Table::new(),
            Some(Value::Table(t)) => t,
            Some(v) => {
                return Err(ConfigError(format!(
                    "stream = {v} must be a table of streams, e.g. [stream.cam0]"
                )))
            }
        };
        let config = Config {
            ring: section(&mut table, "ring")?,
            metrics: section(&mut table, "metrics")?,
            log: section(&mut table, "log")?,
            agent: section(&mut table, "agent")?,
            power: section(&mut table, "power")?,
            kube: section(&mut table, "kube")?,
            node: section(&mut table, "node")?,
            device_plugin: section(&mut table, "device_plugin")?,
            failover: section(&mut table, "failover")?,
            discovery: match table.remove("discovery") {
                None => Default::default(),
                Some(v) => crate::discovery::DiscoverySettings::from_value(v, "discovery")?,
            },
            streams: streams_raw
                .into_iter()
                .map(|(name, value)| {
                    let prefix = format!("stream.{name}");
                    crate::settings::check_name("stream", &name, &prefix)?;
                    Ok((name, Stream::from_value(value, &prefix)?))
                })
                .collect::<Result<_, ConfigError>>()?,
        };
        if let Some(key) = table.keys().next() {
            return Err(ConfigError(format!(
                "unknown key {key:?}; top-level sections are: {}",
                SECTIONS.join(", ")
            )));
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.power.validate("power").map_err(ConfigError)?;
        self.kube.validate("kube").map_err(ConfigError)?;
        self.node.validate("node").map_err(ConfigError)?;
        self.failover.validate("failover").map_err(ConfigError)?;
        let names: Vec<&str> = self.streams.keys().map(String::as_str).collect();
        self.node
            .validate_streams("node", &names)
            .map_err(ConfigError)?;
        self.device_plugin
            .validate("device_plugin", &names)
            .map_err(ConfigError)?;
        for (name, stream) in &self.streams {
            // A ring the reader would refuse (over the 64 GiB cap, say) fails `run` on every
            // retry; find it at load time, where `run --check` sees it too.
            let spec = stream.planned_ring(name);
            crate::ring::layout::Geometry::for_spec(&spec, 0, 0).map_err(|e| {
                ConfigError(format!(
                    "stream.{name}: its ring ({} slots of {} bytes) is not possible: {e}; lower the frame size or slot_count",
                    spec.slot_count, spec.slot_size
                ))
            })?;
        }
        if let Some(name) = self.stream_needing_labels() {
            if self.kube.mode == crate::kube::KubeMode::Off {
                return Err(ConfigError(format!(
                    "stream.{name}.node_selector needs this node's labels from Kubernetes, but kube.mode = \"off\"; select by name instead (stream.{name}.nodes = [...]) or set kube.mode"
                )));
            }
        }
        let a = &self.agent;
        for (key, v) in [
            ("agent.grace_period_secs", a.grace_period_secs),
            ("agent.retry_initial_secs", a.retry_initial_secs),
            ("agent.retry_max_secs", a.retry_max_secs),
        ] {
            check_secs(key, v, 0.001, 3600.0).map_err(ConfigError)?;
        }
        if a.retry_max_secs < a.retry_initial_secs {
            return Err(ConfigError(
                "agent.retry_max_secs must be at least agent.retry_initial_secs".into(),
            ));
        }
        let dir = self.ring.dir.as_os_str();
        if dir.is_empty() || dir.as_encoded_bytes().contains(&0) {
            return Err(ConfigError(format!(
                "ring.dir = {:?} is not a directory path; use e.g. /dev/shm/edgeplex",
                self.ring.dir
            )));
        }
        Ok(())
    }

    /// The first stream whose selection needs this node's labels (it has a `node_selector`).
    pub fn stream_needing_labels(&self) -> Option<&str> {
        self.streams
            .iter()
            .find(|(_, s)| s.common.needs_labels())
            .map(|(name, _)| name.as_str())
    }

    /// Each stream's kind and settings, without the keys that place it (what discovery
    /// compares its devices against).
    pub fn stream_configs(&self) -> BTreeMap<String, crate::source::kinds::StreamConfig> {
        self.streams
            .iter()
            .map(|(name, s)| (name.clone(), s.config.clone()))
            .collect()
    }

    /// Keep only the streams that run on the node called `node` with `labels` (see
    /// [`StreamCommon::applies_to`]); a critical stream that does not run here is not critical
    /// here. Returns the names of the streams left out.
    pub fn select_for_node(
        &mut self,
        node: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<String> {
        let left_out: Vec<String> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.applies_to(node, labels))
            .map(|(name, _)| name.clone())
            .collect();
        self.streams.retain(|name, _| !left_out.contains(name));
        self.node
            .critical_streams
            .retain(|name| !left_out.contains(name));
        left_out
    }

    /// The effective configuration as TOML, in the syntax the loader reads.
    pub fn to_toml(&self) -> String {
        // Every value serializes (paths are UTF-8 or refused at load time by TOML itself).
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }
}

fn section<T: for<'de> Deserialize<'de> + Default>(
    table: &mut Table,
    name: &str,
) -> Result<T, ConfigError> {
    match table.remove(name) {
        None => Ok(T::default()),
        Some(Value::Table(t)) => typed(t, name),
        Some(v) => Err(ConfigError(format!(
            "{name} = {v} must be a table ([{name}])"
        ))),
    }
}

/// Every key of the schema, as `section.key` (and `stream.<type>.key` for each stream kind):
/// what `edgeplex.example.toml` must document.
pub fn schema_keys() -> Vec<String> {
    use crate::settings::known_keys;
    let mut keys = Vec::new();
    let mut add = |section: &str, list: Vec<String>| {
        keys.extend(list.into_iter().map(|k| format!("{section}.{k}")));
    };
    add("ring", known_keys::<RingConfig>(Table::new()));
    add("metrics", known_keys::<MetricsConfig>(Table::new()));
    add("log", known_keys::<LogConfig>(Table::new()));
    add("agent", known_keys::<AgentConfig>(Table::new()));
    add(
        "power",
        known_keys::<crate::power::PowerConfig>(Table::new()),
    );
    add(
        "kube",
        known_keys::<crate::kube::KubeSettings>(Table::new()),
    );
    add(
        "node",
        known_keys::<crate::node::NodeSettings>(Table::new()),
    );
    add(
        "device_plugin",
        known_keys::<crate::deviceplugin::DevicePluginSettings>(Table::new()),
    );
    add(
        "failover",
        known_keys::<crate::failover::FailoverSettings>(Table::new()),
    );
    add("discovery", crate::discovery::DiscoverySettings::keys());
    for kind in StreamConfig::TYPES {
        let mut kind_keys = StreamConfig::keys(kind);
        kind_keys.extend(known_keys::<StreamCommon>(Table::new()));
        add(&format!("stream.{kind}"), kind_keys);
    }
    keys
}

#[cfg(test)]
mod tests;

//! The agent's configuration: a TOML file, overridden by `EDGEPLEX_*` environment variables,
//! overridden by flags.
//!
//! Every setting has a dotted key (`ring.dir`, `stream.cam0.width`), the same keys `snap set`
//! uses. Overrides address keys directly:
//!
//! - environment: `EDGEPLEX_` + the key in upper case with `__` between parts, e.g.
//!   `EDGEPLEX_RING__DIR=/run/edgeplex`, `EDGEPLEX_STREAM__CAM0__WIDTH=1280`; plus the short
//!   aliases `EDGEPLEX_RING_DIR`, `EDGEPLEX_METRICS_LISTEN`, `EDGEPLEX_LOG`, `EDGEPLEX_LOG_FORMAT`;
//! - flags: `--set KEY=VALUE` (repeatable), `--ring-dir`, `--metrics-listen`, `--log`,
//!   `--log-format`.
//!
//! Values are parsed as TOML (`1280`, `true`, `"text"`), falling back to a plain string. Every
//! error is one line naming the key, the bad value and what is allowed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::{Table, Value};

use crate::source::camera::CameraSettings;
use crate::source::serial::SerialSettings;
use crate::source::synthetic::{NmeaSimSettings, TestPatternSettings};

/// Where the agent looks for its configuration by default.
pub const DEFAULT_PATH: &str = "/etc/edgeplex/edgeplex.toml";

/// A configuration error: one line, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("config error: {0}")]
pub struct ConfigError(pub String);

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// Ring directory and file permissions.
    pub ring: RingConfig,
    /// The metrics endpoint.
    pub metrics: MetricsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Agent behaviour.
    pub agent: AgentConfig,
    /// Battery monitoring.
    pub power: crate::power::PowerConfig,
    /// Connecting to Kubernetes.
    pub kube: crate::kube::KubeSettings,
    /// What the node publisher asserts on this Node.
    pub node: crate::node::NodeSettings,
    /// The kubelet device plugin (`[device_plugin]`).
    pub device_plugin: crate::deviceplugin::DevicePluginSettings,
    /// Streams by name.
    pub streams: BTreeMap<String, StreamConfig>,
}

/// `[ring]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RingConfig {
    /// Directory of the ring files; must be tmpfs unless `allow_disk`.
    pub dir: PathBuf,
    /// File mode as an octal string (`"0644"`) or number.
    pub mode: Value,
    /// Group of the ring files, by name or number.
    pub group: Option<Value>,
    /// Accept a disk-backed ring directory.
    pub allow_disk: bool,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            dir: PathBuf::from("/dev/shm/edgeplex"),
            mode: Value::String("0644".into()),
            group: None,
            allow_disk: false,
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Listen address of `/metrics`, `/healthz`, `/readyz`; empty disables the endpoint.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "0.0.0.0:9464".into(),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Filter in `RUST_LOG` syntax.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// `[agent]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
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

/// One stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamConfig {
    /// A V4L2 camera.
    Camera(CameraSettings),
    /// A serial sensor.
    Serial(SerialSettings),
    /// The synthetic test-pattern camera.
    TestPattern(TestPatternSettings),
    /// The synthetic NMEA sensor.
    NmeaSim(NmeaSimSettings),
}

impl StreamConfig {
    /// The `type` value of this stream.
    pub fn type_name(&self) -> &'static str {
        match self {
            StreamConfig::Camera(_) => "camera",
            StreamConfig::Serial(_) => "serial",
            StreamConfig::TestPattern(_) => "test-pattern",
            StreamConfig::NmeaSim(_) => "nmea-sim",
        }
    }
}

const STREAM_TYPES: &str = "camera, serial, test-pattern, nmea-sim";

/// Flags that override configuration keys (highest precedence).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--set KEY=VALUE`, in order.
    pub set: Vec<String>,
    /// `--ring-dir`
    pub ring_dir: Option<PathBuf>,
    /// `--metrics-listen`
    pub metrics_listen: Option<String>,
    /// `--log`
    pub log: Option<String>,
    /// `--log-format`
    pub log_format: Option<String>,
}

/// Environment variables that are not configuration keys.
const NON_CONFIG_ENV: &[&str] = &["EDGEPLEX_CONFIG"];

/// Load the configuration: `file` (the default path may be absent; an explicit one must exist),
/// then `env`, then `flags`.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &Overrides,
) -> Result<Config, ConfigError> {
    let mut table = match file {
        Some(path) => read_file(path)?,
        None => match std::fs::read_to_string(DEFAULT_PATH) {
            Ok(_) => read_file(Path::new(DEFAULT_PATH))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Table::new(),
            Err(e) => return Err(ConfigError(format!("cannot read {DEFAULT_PATH}: {e}"))),
        },
    };
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("EDGEPLEX_"))
        .collect();
    env.sort();
    for (name, value) in &env {
        if NON_CONFIG_ENV.contains(&name.as_str()) {
            continue;
        }
        let key = match name.as_str() {
            "EDGEPLEX_RING_DIR" => "ring.dir".to_owned(),
            "EDGEPLEX_METRICS_LISTEN" => "metrics.listen".to_owned(),
            "EDGEPLEX_LOG" => "log.level".to_owned(),
            "EDGEPLEX_LOG_FORMAT" => "log.format".to_owned(),
            n if n.contains("__") => n["EDGEPLEX_".len()..]
                .split("__")
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
                .join("."),
            _ => continue, // other EDGEPLEX_* variables (tests, tools) are not config keys
        };
        set_key(&mut table, &key, value).map_err(|e| ConfigError(format!("{name}: {e}")))?;
    }
    let named = [
        (
            "ring.dir",
            flags.ring_dir.as_ref().map(|p| p.display().to_string()),
        ),
        ("metrics.listen", flags.metrics_listen.clone()),
        ("log.level", flags.log.clone()),
        ("log.format", flags.log_format.clone()),
    ];
    for (key, value) in named {
        if let Some(v) = value {
            set_key(&mut table, key, &v).map_err(|e| ConfigError(format!("--{key}: {e}")))?;
        }
    }
    for kv in &flags.set {
        let (key, value) = kv.split_once('=').ok_or_else(|| {
            ConfigError(format!(
                "--set {kv:?}: expected KEY=VALUE, e.g. --set stream.cam0.width=1280"
            ))
        })?;
        set_key(&mut table, key.trim(), value)
            .map_err(|e| ConfigError(format!("--set {key}: {e}")))?;
    }
    from_table(table)
}

fn read_file(path: &Path) -> Result<Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!(
                    "{} does not exist; pass --config PATH, or start from edgeplex.example.toml",
                    path.display()
                )
            }
            _ => format!("cannot read {}: {e}", path.display()),
        })
    })?;
    text.parse::<Table>().map_err(|e| {
        let msg = e.message().to_owned();
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
    if key.is_empty() || parts.iter().any(|p| p.is_empty()) {
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
            _ => return Err(format!("{key}: {part} is a value, not a table")),
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

/// Turn a merged table into a validated `Config`.
pub fn from_table(mut table: Table) -> Result<Config, ConfigError> {
    const TOP: &str = "ring, metrics, log, agent, power, kube, node, device_plugin, stream";
    let streams_raw = match table.remove("stream") {
        None => Table::new(),
        Some(Value::Table(t)) => t,
        Some(v) => {
            return Err(ConfigError(format!(
                "stream = {v} must be a table of streams, e.g. [stream.cam0]"
            )))
        }
    };
    let ring: RingConfig = section(&mut table, "ring")?;
    let metrics: MetricsConfig = section(&mut table, "metrics")?;
    let log: LogConfig = section(&mut table, "log")?;
    let agent: AgentConfig = section(&mut table, "agent")?;
    let power: crate::power::PowerConfig = section(&mut table, "power")?;
    let kube: crate::kube::KubeSettings = section(&mut table, "kube")?;
    let node: crate::node::NodeSettings = section(&mut table, "node")?;
    let device_plugin: crate::deviceplugin::DevicePluginSettings =
        section(&mut table, "device_plugin")?;
    if let Some(key) = table.keys().next() {
        return Err(ConfigError(format!(
            "unknown key {key:?}; top-level sections are: {TOP}"
        )));
    }
    let mut streams = BTreeMap::new();
    for (name, value) in streams_raw {
        let prefix = format!("stream.{name}");
        check_stream_name(&name, &prefix)?;
        let Value::Table(mut t) = value else {
            return Err(ConfigError(format!(
                "{prefix} must be a table with a type, e.g. [stream.{name}] type = \"camera\""
            )));
        };
        let kind = match t.remove("type") {
            Some(Value::String(s)) => s,
            Some(v) => {
                return Err(ConfigError(format!(
                    "{prefix}.type = {v} must be one of: {STREAM_TYPES}"
                )))
            }
            None => {
                return Err(ConfigError(format!(
                    "{prefix}.type is required: one of {STREAM_TYPES}"
                )))
            }
        };
        let stream = match kind.as_str() {
            "camera" => {
                let s: CameraSettings = typed(t, &prefix)?;
                s.validate(&prefix).map_err(ConfigError)?;
                StreamConfig::Camera(s)
            }
            "serial" => {
                let s: SerialSettings = typed(t, &prefix)?;
                s.validate(&prefix).map_err(ConfigError)?;
                StreamConfig::Serial(s)
            }
            "test-pattern" => {
                let s: TestPatternSettings = typed(t, &prefix)?;
                s.validate(&prefix).map_err(ConfigError)?;
                StreamConfig::TestPattern(s)
            }
            "nmea-sim" => {
                let s: NmeaSimSettings = typed(t, &prefix)?;
                s.validate(&prefix).map_err(ConfigError)?;
                StreamConfig::NmeaSim(s)
            }
            other => {
                return Err(ConfigError(format!(
                    "{prefix}.type = {other:?} is unknown; allowed: {STREAM_TYPES}"
                )))
            }
        };
        streams.insert(name, stream);
    }
    let config = Config {
        ring,
        metrics,
        log,
        agent,
        power,
        kube,
        node,
        device_plugin,
        streams,
    };
    config.validate()?;
    Ok(config)
}

fn check_stream_name(name: &str, prefix: &str) -> Result<(), ConfigError> {
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
            "{prefix}: stream name {name:?} must be 1-63 characters of a-z, 0-9, - and _, starting with a letter or digit"
        )))
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

/// Deserialize `t` with errors that name the full key.
fn typed<T: for<'de> Deserialize<'de>>(t: Table, prefix: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(Value::Table(t)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let inner = inner.lines().next().unwrap_or_default().to_owned();
        let at = if path == "." || path.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{path}")
        };
        // serde names a missing or unknown field inside the message; lift it into the key.
        let key = |field: &str| {
            if at.ends_with(&format!(".{field}")) {
                at.clone()
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

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &s[s.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

impl Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.power.validate("power").map_err(ConfigError)?;
        self.kube.validate("kube").map_err(ConfigError)?;
        self.node.validate("node").map_err(ConfigError)?;
        let names: Vec<&str> = self.streams.keys().map(String::as_str).collect();
        self.node
            .validate_streams("node", &names)
            .map_err(ConfigError)?;
        self.device_plugin
            .validate("device_plugin", &names)
            .map_err(ConfigError)?;
        self.ring_mode()?;
        self.ring_group()?;
        if !self.metrics.listen.is_empty() {
            self.metrics_addr()?;
        }
        if !["text", "json"].contains(&self.log.format.as_str()) {
            return Err(ConfigError(format!(
                "log.format = {:?} is unknown; allowed: text, json",
                self.log.format
            )));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError(format!(
                "log.level = {:?} is not a valid filter; use e.g. \"info\" or \"info,edgeplex=debug\"",
                self.log.level
            )));
        }
        let a = &self.agent;
        for (key, v) in [
            ("agent.grace_period_secs", a.grace_period_secs),
            ("agent.retry_initial_secs", a.retry_initial_secs),
            ("agent.retry_max_secs", a.retry_max_secs),
        ] {
            if !(v > 0.0 && v <= 3600.0) {
                return Err(ConfigError(format!(
                    "{key} = {v} is out of range: allowed (0, 3600] seconds"
                )));
            }
        }
        if a.retry_max_secs < a.retry_initial_secs {
            return Err(ConfigError(
                "agent.retry_max_secs must be at least agent.retry_initial_secs".into(),
            ));
        }
        Ok(())
    }

    /// The ring file mode.
    pub fn ring_mode(&self) -> Result<u32, ConfigError> {
        let v = &self.ring.mode;
        let mode = match v {
            Value::String(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8).ok(),
            Value::Integer(i) => u32::try_from(*i).ok(),
            _ => None,
        };
        let bad = |why: &str| ConfigError(format!("ring.mode = {v} {why}"));
        let mode =
            mode.ok_or_else(|| bad("is not an octal mode; use e.g. \"0644\" or \"0640\""))?;
        if mode > 0o777 {
            return Err(bad("is not a file mode: allowed 0000..0777"));
        }
        if mode & 0o022 != 0 {
            return Err(bad("lets readers write the ring; use \"0644\" or \"0640\""));
        }
        if mode & 0o600 != 0o600 {
            return Err(bad(
                "must give the owner (the agent) read and write, e.g. \"0644\"",
            ));
        }
        Ok(mode)
    }

    /// The ring files' group id, if configured.
    pub fn ring_group(&self) -> Result<Option<u32>, ConfigError> {
        match &self.ring.group {
            None => Ok(None),
            Some(Value::Integer(i)) => u32::try_from(*i)
                .map(Some)
                .map_err(|_| ConfigError(format!("ring.group = {i} is not a valid group id"))),
            Some(Value::String(name)) => match name.parse::<u32>() {
                Ok(gid) => Ok(Some(gid)),
                Err(_) => lookup_group(name).map(Some).ok_or_else(|| {
                    ConfigError(format!("ring.group = {name:?}: no such group in /etc/group; use a group name or number"))
                }),
            },
            Some(v) => Err(ConfigError(format!("ring.group = {v} must be a group name or number"))),
        }
    }

    /// The metrics listen address.
    pub fn metrics_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.metrics.listen.parse().map_err(|_| {
            ConfigError(format!(
                "metrics.listen = {:?} is not an address; use e.g. \"0.0.0.0:9464\" or \"127.0.0.1:9464\", or \"\" to disable",
                self.metrics.listen
            ))
        })
    }
}

/// Resolve a group name from /etc/group (the snap and container images have no NSS modules).
fn lookup_group(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        from_table(text.parse::<Table>().unwrap())
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse("").unwrap();
        assert_eq!(c.ring.dir, PathBuf::from("/dev/shm/edgeplex"));
        assert_eq!(c.ring_mode().unwrap(), 0o644);
        assert!(c.streams.is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[ring]\nbogus = 1", "ring.bogus is not a known key"),
            (
                "[stream.cam0]\ntype = \"camera\"",
                "stream.cam0.device is required",
            ),
            (
                "[stream.cam0]\ntype = \"camera\"\ndevice = \"/dev/video0\"\nslot_count = 0",
                "stream.cam0.slot_count = 0 is out of range",
            ),
            (
                "[stream.cam0]\ntype = \"camera\"\ndevice = \"/dev/video0\"\nwidht = 3",
                "stream.cam0.widht is not a known key",
            ),
            (
                "[stream.x]\ntype = \"lidar\"",
                "stream.x.type = \"lidar\" is unknown",
            ),
            ("[stream.X]\ntype = \"camera\"", "stream name \"X\""),
            ("[ring]\nmode = \"0666\"", "lets readers write"),
            (
                "[metrics]\nlisten = \"nowhere\"",
                "metrics.listen = \"nowhere\"",
            ),
            (
                "[stream.cam0]\ntype = \"camera\"\ndevice = \"/dev/video0\"\nwidth = \"wide\"",
                "stream.cam0.width: invalid type",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: got {e:?}, want {want:?}");
            assert_eq!(e.lines().count(), 1, "one line: {e:?}");
        }
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[ring]\ndir = \"/file\"\n[stream.cam0]\ntype = \"test-pattern\"\nwidth = 320\n",
        )
        .unwrap();
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let c = load(Some(&path), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.ring.dir, PathBuf::from("/file"));
        let e = env(&[
            ("EDGEPLEX_RING_DIR", "/env"),
            ("EDGEPLEX_STREAM__CAM0__WIDTH", "800"),
            ("EDGEPLEX_TEST_X", "y"),
        ]);
        let c = load(Some(&path), e.clone(), &Overrides::default()).unwrap();
        assert_eq!(c.ring.dir, PathBuf::from("/env"));
        assert!(matches!(&c.streams["cam0"], StreamConfig::TestPattern(s) if s.width == 800));
        let flags = Overrides {
            ring_dir: Some("/flag".into()),
            set: vec!["stream.cam0.width=1024".into()],
            ..Default::default()
        };
        let c = load(Some(&path), e, &flags).unwrap();
        assert_eq!(c.ring.dir, PathBuf::from("/flag"));
        assert!(matches!(&c.streams["cam0"], StreamConfig::TestPattern(s) if s.width == 1024));
    }

    #[test]
    fn the_shipped_example_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/edgeplex.example.toml");
        let c = load(Some(Path::new(path)), Vec::new(), &Overrides::default()).unwrap();
        assert!(c.streams.len() >= 4, "the example shows every stream type");
        let types: Vec<_> = c.streams.values().map(StreamConfig::type_name).collect();
        for t in ["camera", "serial", "test-pattern", "nmea-sim"] {
            assert!(types.contains(&t), "example lacks a {t} stream");
        }
    }
}

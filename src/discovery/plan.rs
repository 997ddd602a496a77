//! From probes to streams: which rule takes which device, under which name, and why every other
//! node is left alone. Pure: the same probes, claims and rules give the same outcomes.
//!
//! The order of decisions, for each device (nodes in natural name order):
//!
//! 1. a node that is no device keeps the reason probing gave;
//! 2. a device an explicit `[stream.NAME]` names (its path, or a link that resolves to it) is
//!    that stream's: [`Reason::Claimed`];
//! 3. the first rule in name order whose kind and match fit takes it, else [`Reason::NoRule`];
//! 4. its name is the first of the rule's templates whose fields the device all has, sanitised;
//!    none: [`Reason::MissingField`]; nothing left after sanitising: [`Reason::BadName`]; the
//!    name of an explicit stream: [`Reason::NameTaken`];
//! 5. two or more devices given the same name: **none of them** is taken
//!    ([`Reason::Collision`]), each reported with the others, so that a name (and its ring)
//!    never moves from one physical device to another when one of them is plugged in first;
//! 6. at most `max_streams`: the streams are kept in name order (with [`plan_keeping`], the
//!    running ones first), the rest are [`Reason::MaxStreams`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{sysfs::natural, Device, DiscoverySettings, Probe, Roots};
use crate::source::kinds::StreamConfig;

/// Why a node is not (or not yet) a discovered stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Not a device node discovery knows (`sda`, a bad name).
    Unknown(String),
    /// A V4L2 node that is not a video node (`v4l-subdev0`, `vbi0`, `radio0`, `swradio0`).
    NotVideoNode,
    /// A video node whose own capabilities lack video capture (a UVC metadata node, an output).
    NotCapture {
        /// The node's `device_caps`.
        device_caps: u32,
    },
    /// `VIDIOC_QUERYCAP` failed.
    CapsUnreadable(String),
    /// A tty with no device behind it (a virtual terminal, a pty).
    NotSerial,
    /// A serial-core port with no UART (`type` 0): one of the 8250 driver's placeholders.
    NoUart,
    /// The kernel console is on this port.
    Console,
    /// sysfs knows the node but `/dev` has no such file.
    NoDeviceNode,
    /// A sysfs or `/dev` entry could not be read or resolved.
    Unreadable(String),
    /// An explicit stream names this device.
    Claimed {
        /// The explicit stream.
        stream: String,
    },
    /// No rule matches.
    NoRule,
    /// The matching rule's templates need fields the device lacks.
    MissingField {
        /// The rule.
        rule: String,
        /// The fields the first template lacks.
        fields: Vec<&'static str>,
    },
    /// The template left nothing after sanitising.
    BadName {
        /// The rule.
        rule: String,
    },
    /// The name is an explicit stream's.
    NameTaken {
        /// The rule.
        rule: String,
        /// The name.
        name: String,
    },
    /// Other devices would get the same name.
    Collision {
        /// The rule.
        rule: String,
        /// The name.
        name: String,
        /// The other devices' nodes.
        others: Vec<PathBuf>,
    },
    /// Over `discovery.max_streams`.
    MaxStreams {
        /// The rule.
        rule: String,
        /// The name it would have had.
        name: String,
        /// The limit.
        max: u32,
    },
    /// The rule's settings refused this device's path.
    Invalid(String),
}

impl Reason {
    /// A short stable code, for metrics labels and JSON.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::Unknown(_) => "unknown",
            Reason::NotVideoNode => "not_video_node",
            Reason::NotCapture { .. } => "not_capture",
            Reason::CapsUnreadable(_) => "caps_unreadable",
            Reason::NotSerial => "not_serial",
            Reason::NoUart => "no_uart",
            Reason::Console => "console",
            Reason::NoDeviceNode => "no_device_node",
            Reason::Unreadable(_) => "unreadable",
            Reason::Claimed { .. } => "claimed",
            Reason::NoRule => "no_rule",
            Reason::MissingField { .. } => "missing_field",
            Reason::BadName { .. } => "bad_name",
            Reason::NameTaken { .. } => "name_taken",
            Reason::Collision { .. } => "collision",
            Reason::MaxStreams { .. } => "max_streams",
            Reason::Invalid(_) => "invalid",
        }
    }

    /// Every code, for metrics that list them all.
    pub const CODES: &'static [&'static str] = &[
        "unknown",
        "not_video_node",
        "not_capture",
        "caps_unreadable",
        "not_serial",
        "no_uart",
        "console",
        "no_device_node",
        "unreadable",
        "claimed",
        "no_rule",
        "missing_field",
        "bad_name",
        "name_taken",
        "collision",
        "max_streams",
        "invalid",
    ];

    /// The rule involved, if the reason is about one.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Reason::MissingField { rule, .. }
            | Reason::BadName { rule }
            | Reason::NameTaken { rule, .. }
            | Reason::Collision { rule, .. }
            | Reason::MaxStreams { rule, .. } => Some(rule),
            _ => None,
        }
    }
}

impl fmt::Display for Reason {
    /// One line: control characters of outside text (sysfs values, node names, errors) become
    /// `?`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = Text(self).to_string();
        if text.contains(char::is_control) {
            f.write_str(&text.replace(char::is_control, "?"))
        } else {
            f.write_str(&text)
        }
    }
}

struct Text<'a>(&'a Reason);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Reason::Unknown(m)
            | Reason::CapsUnreadable(m)
            | Reason::Unreadable(m)
            | Reason::Invalid(m) => f.write_str(m),
            Reason::NotVideoNode => write!(f, "not a video node (a sub-device, VBI or radio node)"),
            Reason::NotCapture { device_caps } => write!(
                f,
                "not a video capture node (device_caps {device_caps:#010x}: {})",
                caps_names(*device_caps)
            ),
            Reason::NotSerial => write!(f, "no device behind this tty (a virtual terminal or pty)"),
            Reason::NoUart => write!(
                f,
                "no UART behind this port (type 0: a placeholder the serial driver registers)"
            ),
            Reason::Console => write!(f, "the kernel console is on this port"),
            Reason::NoDeviceNode => write!(f, "no device node in /dev (yet)"),
            Reason::Claimed { stream } => write!(f, "named by the explicit stream {stream}"),
            Reason::NoRule => write!(f, "no rule matches"),
            Reason::MissingField { rule, fields } => write!(
                f,
                "rule {rule}: the device has no {}; add a fallback template, e.g. name = [\"...{{serial}}\", \"...{{port}}\"]",
                fields
                    .iter()
                    .map(|x| format!("{{{x}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Reason::BadName { rule } => write!(
                f,
                "rule {rule}: the name template leaves nothing of a-z, 0-9, - and _ for this device"
            ),
            Reason::NameTaken { rule, name } => write!(
                f,
                "rule {rule}: the name {name} is an explicit stream's; change the template"
            ),
            Reason::Collision { rule, name, others } => write!(
                f,
                "rule {rule}: the name {name} would also go to {}; none of them is taken: use a template that tells them apart, e.g. {{port}} or {{by_path}}",
                others
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Reason::MaxStreams { rule, name, max } => write!(
                f,
                "rule {rule}: would be {name}, but discovery.max_streams = {max} streams run already"
            ),
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("reason", self.code())?;
        if let Some(rule) = self.rule() {
            m.serialize_entry("rule", rule)?;
        }
        m.serialize_entry("message", &self.to_string())?;
        m.end()
    }
}

/// The names of the capability bits discovery cares about.
fn caps_names(bits: u32) -> String {
    const NAMES: &[(u32, &str)] = &[
        (0x0000_0001, "VIDEO_CAPTURE"),
        (0x0000_0002, "VIDEO_OUTPUT"),
        (0x0000_0004, "VIDEO_OVERLAY"),
        (0x0000_0010, "VBI_CAPTURE"),
        (0x0000_1000, "VIDEO_CAPTURE_MPLANE"),
        (0x0000_2000, "VIDEO_OUTPUT_MPLANE"),
        (0x0000_4000, "VIDEO_M2M_MPLANE"),
        (0x0000_8000, "VIDEO_M2M"),
        (0x0010_0000, "SDR_CAPTURE"),
        (0x0080_0000, "META_CAPTURE"),
        (0x0800_0000, "META_OUTPUT"),
        (0x1000_0000, "TOUCH"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if names.is_empty() {
        "no capture or output".into()
    } else {
        names.join("|")
    }
}

/// What an explicit stream names, for [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The explicit stream's name.
    pub stream: String,
    /// Its device path as configured, moved under the `/dev` root (`/dev/x` -> `DEV/x`).
    pub path: Option<PathBuf>,
    /// The node that path resolves to now (under the `/dev` root), if it resolves.
    pub resolved: Option<PathBuf>,
}

/// The claims of the explicit streams `streams`, resolved under `roots` now. Streams without a
/// device path (synthetic ones) claim only their name.
pub fn resolve_claims(roots: &Roots, streams: &BTreeMap<String, StreamConfig>) -> Vec<Claim> {
    let dev_canon = std::fs::canonicalize(&roots.dev).ok();
    streams
        .iter()
        .map(|(name, cfg)| {
            let path = device_path(cfg).map(|p| under_dev(roots, p));
            let resolved = path
                .as_ref()
                .and_then(|p| std::fs::canonicalize(p).ok())
                .map(|r| match &dev_canon {
                    Some(d) => match r.strip_prefix(d) {
                        Ok(rel) => roots.dev.join(rel),
                        Err(_) => r,
                    },
                    None => r,
                });
            Claim {
                stream: name.clone(),
                path,
                resolved,
            }
        })
        .collect()
}

/// The device path of an explicit stream, if its kind has one.
pub(crate) fn device_path(cfg: &StreamConfig) -> Option<&Path> {
    match cfg {
        StreamConfig::Camera(c) => Some(&c.device),
        StreamConfig::Serial(s) => Some(&s.device),
        _ => None,
    }
}

/// `/dev/x` as a path under `roots.dev`.
fn under_dev(roots: &Roots, p: &Path) -> PathBuf {
    match p.strip_prefix("/dev") {
        Ok(rel) if roots.dev != Path::new("/dev") => roots.dev.join(rel),
        _ => p.to_owned(),
    }
}

/// A device a rule turns into a stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Planned {
    /// The device.
    pub device: Device,
    /// The rule that took it.
    pub rule: String,
    /// The stream's name.
    pub name: String,
    /// The stream's settings, with the device path filled in ([`Device::stable_path`]).
    pub config: StreamConfig,
}

/// What becomes of one node.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It becomes a stream.
    Stream(Planned),
    /// It is left alone, and why.
    NotTaken {
        /// The node's kernel name.
        name: String,
        /// The node's path.
        devnode: PathBuf,
        /// The device, when probing found one.
        device: Option<Device>,
        /// Why.
        reason: Reason,
    },
}

impl Outcome {
    /// `camera` for a V4L2 node, `serial` for a tty (by its name, whether or not it was taken).
    pub fn class(&self) -> &'static str {
        let name = match self {
            Outcome::Stream(p) => &p.device.name,
            Outcome::NotTaken { name, .. } => name,
        };
        if name.starts_with("video") {
            "camera"
        } else {
            "serial"
        }
    }

    /// The node's path.
    pub fn devnode(&self) -> &Path {
        match self {
            Outcome::Stream(p) => &p.device.devnode,
            Outcome::NotTaken { devnode, .. } => devnode,
        }
    }
}

/// Decide every probe's outcome under `settings`' rules and limit, leaving alone what
/// `claims` (the explicit streams) name. One outcome per probe, in natural node-name order.
/// Over the limit, streams are kept in name order; [`plan_keeping`] keeps running ones first.
pub fn plan(settings: &DiscoverySettings, probes: &[Probe], claims: &[Claim]) -> Vec<Outcome> {
    plan_keeping(settings, probes, claims, &[])
}

/// [`plan`], where the streams named in `running` (those the agent runs now, or holds during
/// their grace period) keep their places under `discovery.max_streams` before new ones are
/// taken in name order: a device plugged in later never stops a running stream.
pub fn plan_keeping(
    settings: &DiscoverySettings,
    probes: &[Probe],
    claims: &[Claim],
    running: &[String],
) -> Vec<Outcome> {
    let mut probes: Vec<&Probe> = probes.iter().collect();
    probes.sort_by(|a, b| natural(&a.name).cmp(&natural(&b.name)));
    let mut out: Vec<Outcome> = probes.iter().map(|p| decide(settings, p, claims)).collect();
    // Collisions: every holder of a shared name is refused.
    let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, o) in out.iter().enumerate() {
        if let Outcome::Stream(p) = o {
            by_name.entry(p.name.clone()).or_default().push(i);
        }
    }
    for idx in by_name.values().filter(|v| v.len() > 1) {
        let nodes: Vec<PathBuf> = idx.iter().map(|&i| out[i].devnode().to_owned()).collect();
        for &i in idx {
            if let Outcome::Stream(p) = &out[i] {
                let p = p.clone();
                let others = nodes
                    .iter()
                    .filter(|n| **n != p.device.devnode)
                    .cloned()
                    .collect();
                out[i] = refuse(
                    p.device.clone(),
                    Reason::Collision {
                        rule: p.rule,
                        name: p.name,
                        others,
                    },
                );
            }
        }
    }
    // The limit: running streams first, then in name order.
    let mut taken: Vec<(bool, String, usize)> = out
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Outcome::Stream(p) => Some((!running.contains(&p.name), p.name.clone(), i)),
            _ => None,
        })
        .collect();
    taken.sort();
    for &(_, _, i) in taken.iter().skip(settings.max_streams as usize) {
        if let Outcome::Stream(p) = &out[i] {
            let p = p.clone();
            out[i] = refuse(
                p.device,
                Reason::MaxStreams {
                    rule: p.rule,
                    name: p.name,
                    max: settings.max_streams,
                },
            );
        }
    }
    out
}

fn refuse(device: Device, reason: Reason) -> Outcome {
    Outcome::NotTaken {
        name: device.name.clone(),
        devnode: device.devnode.clone(),
        device: Some(device),
        reason,
    }
}

fn decide(settings: &DiscoverySettings, probe: &Probe, claims: &[Claim]) -> Outcome {
    let device = match &probe.result {
        Ok(d) => d.clone(),
        Err(reason) => {
            return Outcome::NotTaken {
                name: probe.name.clone(),
                devnode: probe.devnode.clone(),
                device: None,
                reason: reason.clone(),
            }
        }
    };
    let claimed_by = claims.iter().find(|c| {
        c.resolved.as_deref() == Some(&device.devnode)
            || c.path.as_ref().is_some_and(|p| {
                *p == device.devnode || device.by_id.contains(p) || device.by_path.contains(p)
            })
    });
    if let Some(c) = claimed_by {
        let stream = c.stream.clone();
        return refuse(device, Reason::Claimed { stream });
    }
    let Some((rule_name, rule)) = settings.rules.iter().find(|(_, r)| r.matches(&device)) else {
        return refuse(device, Reason::NoRule);
    };
    let rule_name = rule_name.clone();
    let mut first_missing = None;
    let mut name = None;
    for t in &rule.name {
        match t.render(&device) {
            Ok(n) => {
                name = Some(n);
                break;
            }
            Err(missing) => {
                first_missing.get_or_insert(missing);
            }
        }
    }
    let Some(name) = name else {
        return refuse(
            device,
            Reason::MissingField {
                rule: rule_name,
                fields: first_missing.unwrap_or_default(),
            },
        );
    };
    if name.is_empty() || !name.as_bytes()[0].is_ascii_alphanumeric() {
        return refuse(device, Reason::BadName { rule: rule_name });
    }
    if claims.iter().any(|c| c.stream == name) {
        return refuse(
            device,
            Reason::NameTaken {
                rule: rule_name,
                name,
            },
        );
    }
    let prefix = format!("discovery.rule.{rule_name}");
    match rule.stream_config(device.stable_path(), &prefix) {
        Ok(config) => Outcome::Stream(Planned {
            device,
            rule: rule_name,
            name,
            config,
        }),
        Err(e) => refuse(device, Reason::Invalid(e.0)),
    }
}

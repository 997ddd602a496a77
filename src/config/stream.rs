//! What every stream has besides its kind's settings: whether `/readyz` waits for it
//! (`required`) and which nodes of a fleet run it (`nodes`, `node_selector`).
//!
//! These keys sit in `[stream.NAME]` beside `type` and the kind's own keys, for every kind.
//! [`Stream`] wraps the kind's [`StreamConfig`] (which stays as it is, so other producers of
//! streams need not know about placement) and dereferences to it.
//!
//! Selection is decided once, at start-up, from this node's name and (only when some stream
//! has a `node_selector`) the labels of this node's own Node object. A stream that is not
//! selected is dropped from the configuration before anything starts: it opens no device, makes
//! no ring, is not labelled, not advertised by the device plugin, and not in `/readyz`. A label
//! change takes effect when the agent restarts.

use std::collections::BTreeMap;
use std::ops::Deref;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::settings::{typed, ConfigError};
use crate::source::kinds::StreamConfig;

/// The keys every stream accepts besides `type` and its kind's keys.
pub const COMMON_KEYS: &[&str] = &["required", "nodes", "node_selector"];

/// `required`, `nodes` and `node_selector` of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamCommon {
    /// `/readyz` fails while this stream is down. Off by default: a node without an optional
    /// sensor is still Ready.
    pub required: bool,
    /// Run only on the nodes of these names; empty: on any node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Run only on nodes whose labels have all these values (`matchLabels`); empty: on any node.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
}

/// One configured stream: the keys every stream has, and its kind's settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stream {
    /// `required`, `nodes`, `node_selector`.
    #[serde(flatten)]
    pub common: StreamCommon,
    /// The kind and its settings.
    #[serde(flatten)]
    pub config: StreamConfig,
}

impl Deref for Stream {
    type Target = StreamConfig;

    fn deref(&self) -> &StreamConfig {
        &self.config
    }
}

impl From<StreamConfig> for Stream {
    /// A stream on every node, not required.
    fn from(config: StreamConfig) -> Stream {
        Stream {
            common: StreamCommon::default(),
            config,
        }
    }
}

impl Stream {
    /// Parse `[stream.NAME]` (at dotted key `prefix`): the common keys, then the kind's.
    pub fn from_value(value: Value, prefix: &str) -> Result<Stream, ConfigError> {
        let Value::Table(mut t) = value else {
            // The kind's parser words this error.
            return Ok(Stream::from(StreamConfig::from_value(value, prefix)?));
        };
        let mut common = Table::new();
        for key in COMMON_KEYS {
            if let Some(v) = t.remove(*key) {
                common.insert((*key).to_owned(), v);
            }
        }
        let common: StreamCommon = typed(common, prefix)?;
        common.validate(prefix).map_err(ConfigError)?;
        Ok(Stream {
            common,
            config: StreamConfig::from_value(Value::Table(t), prefix)?,
        })
    }

    /// Whether this stream runs on the node called `node` with `labels`.
    pub fn applies_to(&self, node: &str, labels: &BTreeMap<String, String>) -> bool {
        self.common.applies_to(node, labels)
    }
}

impl StreamCommon {
    /// Whether selection needs the node's labels (only the Kubernetes API has them).
    pub fn needs_labels(&self) -> bool {
        !self.node_selector.is_empty()
    }

    /// Whether a stream with these settings runs on the node called `node` with `labels`:
    /// its name is listed (or no names are) and every selector label has its value.
    pub fn applies_to(&self, node: &str, labels: &BTreeMap<String, String>) -> bool {
        (self.nodes.is_empty() || self.nodes.iter().any(|n| n == node))
            && self
                .node_selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Check node names and selector labels; errors are one line naming the key.
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        for n in &self.nodes {
            if !crate::kube::is_dns_subdomain(n) {
                return Err(format!(
                    "{prefix}.nodes lists {n:?}, which is not a node name; use the names `kubectl get nodes` shows (lower-case letters, digits, '-' and '.')"
                ));
            }
        }
        for (k, v) in &self.node_selector {
            if !label_key(k) {
                return Err(format!(
                    "{prefix}.node_selector: {k:?} is not a label key; use [prefix/]name, e.g. \"edgeplex.io/camera-model\" or \"zone\""
                ));
            }
            if !label_value(v) {
                return Err(format!(
                    "{prefix}.node_selector.{k} = {v:?} is not a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
                ));
            }
        }
        Ok(())
    }
}

/// A label value (may be empty).
fn label_value(s: &str) -> bool {
    s.is_empty() || label_name(s)
}

/// The name part of a label key, or a non-empty label value.
fn label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A label key: `name` or `prefix/name`, the prefix a DNS subdomain.
fn label_key(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => crate::kube::is_dns_subdomain(prefix) && label_name(name),
        None => label_name(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Stream, String> {
        let t: Table = text.parse().unwrap();
        Stream::from_value(Value::Table(t), "stream.s").map_err(|e| e.0)
    }

    #[test]
    fn common_keys_are_optional_and_parsed() {
        let s = parse("type = \"nmea-sim\"\n").unwrap();
        assert_eq!(s.common, StreamCommon::default());
        let s = parse(
            "type = \"nmea-sim\"\nrequired = true\nnodes = [\"edge-1\"]\nnode_selector = { \"edgeplex.io/gps\" = \"yes\", zone = \"\" }\n",
        )
        .unwrap();
        assert!(s.common.required);
        assert_eq!(s.type_name(), "nmea-sim");
        assert!(s.common.needs_labels());
    }

    #[test]
    fn selection_needs_every_condition() {
        let s = parse(
            "type = \"nmea-sim\"\nnodes = [\"a\", \"b\"]\nnode_selector = { gps = \"yes\" }\n",
        )
        .unwrap();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(s.applies_to("a", &labels(&[("gps", "yes"), ("x", "y")])));
        assert!(!s.applies_to("c", &labels(&[("gps", "yes")])), "name");
        assert!(!s.applies_to("a", &labels(&[("gps", "no")])), "value");
        assert!(!s.applies_to("a", &labels(&[])), "missing label");
        let any = parse("type = \"nmea-sim\"\n").unwrap();
        assert!(any.applies_to("whatever", &labels(&[])));
    }

    #[test]
    fn hostile_values_are_one_line_errors_naming_the_key() {
        for (text, want) in [
            ("required = \"yes\"", "stream.s.required"),
            ("nodes = \"edge-1\"", "stream.s.nodes"),
            ("nodes = [\"Edge_1\"]", "stream.s.nodes lists \"Edge_1\""),
            ("nodes = [\"\"]", "stream.s.nodes lists \"\""),
            ("node_selector = [\"a\"]", "stream.s.node_selector"),
            ("node_selector = { a = 1 }", "stream.s.node_selector"),
            (
                "node_selector = { \"a/b/c\" = \"x\" }",
                "stream.s.node_selector: \"a/b/c\"",
            ),
            (
                "node_selector = { \"\" = \"x\" }",
                "stream.s.node_selector: \"\"",
            ),
            (
                "node_selector = { a = \"x y\" }",
                "stream.s.node_selector.a = \"x y\"",
            ),
            (
                "node_selector = { a = \"x\\ny\" }",
                "stream.s.node_selector.a",
            ),
        ] {
            let e = parse(&format!("type = \"nmea-sim\"\n{text}\n")).unwrap_err();
            assert!(e.starts_with(want), "{text}: {e}");
            assert_eq!(e.lines().count(), 1, "{text}: {e}");
        }
    }
}

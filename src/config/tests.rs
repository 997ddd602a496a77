use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_table(text.parse::<Table>().unwrap())
}

fn example_path() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/edgeplex.example.toml"
    ))
}

#[test]
fn defaults_are_valid() {
    let c = parse("").unwrap();
    assert_eq!(c.ring.dir, PathBuf::from("/dev/shm/edgeplex"));
    assert_eq!(c.ring.mode.bits(), 0o644);
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(
        c.metrics.listen.addr(),
        Some("0.0.0.0:9464".parse().unwrap())
    );
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
            "[stream.cam0]\ntype = \"camera\"\ndevice = \"/dev/video0\"\nformat = \"YUV\"",
            "stream.cam0.format: \"YUV\" is not a four-character code",
        ),
        (
            "[stream.x]\ntype = \"lidar\"",
            "stream.x.type = \"lidar\" is unknown",
        ),
        ("[stream.X]\ntype = \"camera\"", "stream name \"X\""),
        (
            "[ring]\nmode = \"0666\"",
            "ring.mode: \"0666\" lets readers write",
        ),
        (
            "[ring]\nmode = \"rw\"",
            "ring.mode: \"rw\" is not an octal mode",
        ),
        (
            "[ring]\ngroup = \"no-such-group-here\"",
            "ring.group: \"no-such-group-here\": no such group",
        ),
        (
            "[metrics]\nlisten = \"nowhere\"",
            "metrics.listen: \"nowhere\" is not an address",
        ),
        (
            "[log]\nformat = \"xml\"",
            "log.format: unknown variant `xml`",
        ),
        (
            "[log]\nlevel = \"[[\"",
            "log.level: \"[[\" is not a valid filter",
        ),
        (
            "[stream.cam0]\ntype = \"camera\"\ndevice = \"/dev/video0\"\nwidth = \"wide\"",
            "stream.cam0.width: invalid type",
        ),
        (
            "[failover]\nnamespace = \"Bad_Name\"",
            "failover.namespace = \"Bad_Name\" is not a valid name",
        ),
        (
            "[agent]\ngrace_period_secs = nan",
            "agent.grace_period_secs = NaN is out of range",
        ),
        (
            "[ring]\ndir = \"\"",
            "ring.dir = \"\" is not a directory path",
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
        ("EDGEPLEX_FAILOVER__LEASE_NAME", "from-env"),
        ("EDGEPLEX_TEST_X", "y"),
    ]);
    let c = load(Some(&path), e.clone(), &Overrides::default()).unwrap();
    assert_eq!(c.ring.dir, PathBuf::from("/env"));
    assert_eq!(c.failover.lease_name, "from-env");
    assert!(matches!(&c.streams["cam0"].config, StreamConfig::TestPattern(s) if s.width == 800));
    let mut flags = Overrides {
        set: vec!["stream.cam0.width=1024".into()],
        ..Default::default()
    };
    flags.flag("--ring-dir", "ring.dir", Some("/flag"));
    flags.flag("--lease-name", "failover.lease_name", Some("from-flag"));
    flags.flag("--unused", "log.level", None::<String>);
    let c = load(Some(&path), e, &flags).unwrap();
    assert_eq!(c.ring.dir, PathBuf::from("/flag"));
    assert_eq!(c.failover.lease_name, "from-flag");
    assert!(matches!(&c.streams["cam0"].config, StreamConfig::TestPattern(s) if s.width == 1024));
}

#[test]
fn errors_from_the_environment_and_flags_are_one_line() {
    let env = vec![("EDGEPLEX_RING__MODE\nEVIL".to_owned(), "0666".to_owned())];
    let e = load(None, env, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert_eq!(e.lines().count(), 1, "{e:?}");
    assert!(e.contains("EDGEPLEX_RING__MODE\\nEVIL"), "{e}");
    let bad = Overrides {
        set: vec!["ring..dir=/x".into()],
        ..Default::default()
    };
    let e = load(None, Vec::new(), &bad).unwrap_err().to_string();
    assert!(e.contains("--set \"ring..dir\""), "{e}");
}

#[test]
fn the_shipped_example_parses_and_shows_every_kind() {
    let c = load(Some(example_path()), Vec::new(), &Overrides::default()).unwrap();
    let types: Vec<_> = c.streams.values().map(|s| s.type_name()).collect();
    for t in StreamConfig::TYPES {
        assert!(types.contains(t), "the example lacks a {t} stream");
    }
}

/// `edgeplex.example.toml` says it documents every key: each key of the schema appears in its
/// section, set or commented out (`# key = ...`).
#[test]
fn the_shipped_example_documents_every_key() {
    let text = std::fs::read_to_string(example_path()).unwrap();
    // Which keys each section of the file mentions, stream sections by their type.
    let mut mentioned: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    let mut stream_type: Option<String> = None;
    let flush = |section: &str,
                 ty: &Option<String>,
                 keys: &mut Vec<String>,
                 m: &mut BTreeMap<String, Vec<String>>| {
        let name = match (section.strip_prefix("stream."), ty) {
            (Some(_), Some(t)) => format!("stream.{t}"),
            // Every rule documents the rule keys: discovery.rule.* in the schema.
            _ if section.starts_with("discovery.rule.") => "discovery.rule.*".to_owned(),
            _ => section.to_owned(),
        };
        m.entry(name).or_default().append(keys);
    };
    let mut keys = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            flush(&section, &stream_type, &mut keys, &mut mentioned);
            section = h.to_owned();
            stream_type = None;
            continue;
        }
        let l = l.trim_start_matches('#').trim();
        if let Some((k, v)) = l.split_once('=') {
            let k = k.trim();
            if k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') && !k.is_empty() {
                if k == "type" && section.starts_with("stream.") {
                    stream_type = Some(v.trim().trim_matches('"').to_owned());
                } else {
                    keys.push(k.to_owned());
                }
            }
        }
    }
    flush(&section, &stream_type, &mut keys, &mut mentioned);
    let schema = schema_keys();
    assert!(
        schema.len() > 40,
        "the schema probe found too few keys: {schema:?}"
    );
    let missing: Vec<&String> = schema
        .iter()
        .filter(|full| {
            let (sec, key) = full.rsplit_once('.').unwrap();
            !mentioned
                .get(sec)
                .is_some_and(|m| m.iter().any(|k| k == key))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "edgeplex.example.toml does not document: {missing:?}"
    );
}

/// `run --check` prints TOML that `run` accepts, and it means the same configuration.
#[test]
fn the_printed_configuration_loads_back_unchanged() {
    let c = load(Some(example_path()), Vec::new(), &Overrides::default()).unwrap();
    let text = c.to_toml();
    let again = Config::from_table(text.parse::<Table>().expect("printed TOML parses"))
        .unwrap_or_else(|e| panic!("printed config is refused: {e}\n{text}"));
    assert_eq!(again, c, "{text}");
    let defaults = Config::from_table(Table::new()).unwrap();
    let text = defaults.to_toml();
    assert_eq!(Config::from_table(text.parse().unwrap()).unwrap(), defaults);
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    /// Keys of every section and kind, plus a few that do not exist.
    fn key() -> impl Strategy<Value = String> {
        let mut keys = schema_keys();
        keys.iter_mut().for_each(|k| {
            // `stream.<type>.key` becomes a stream of that type named s.
            if let Some(rest) = k.strip_prefix("stream.") {
                let (_, key) = rest.rsplit_once('.').unwrap();
                *k = format!("stream.s.{key}");
            }
            // `discovery.rule.*.key` becomes a key of the rule named r.
            *k = k.replace(".*.", ".r.");
        });
        keys.extend([
            "stream.s.type".into(),
            "x.y".into(),
            "ring".into(),
            "discovery.rule.r.width".into(),
            "discovery.rule.r.baud".into(),
            "discovery.rule.r.device".into(),
            "discovery.rule".into(),
        ]);
        proptest::sample::select(keys)
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("1e-300".to_owned()),
            Just("-1".to_owned()),
            Just("1e308".to_owned()),
            Just("nan".to_owned()),
            Just("inf".to_owned()),
            Just("0".to_owned()),
            Just("18446744073709551615".to_owned()),
            Just("\"\"".to_owned()),
            Just("\"a\\u0000b\"".to_owned()),
            Just("[]".to_owned()),
            Just("{ type = \"chunks\", max_size = 0 }".to_owned()),
            Just("\"camera\"".to_owned()),
            Just("\"serial\"".to_owned()),
            Just("\"test-pattern\"".to_owned()),
            Just("\"nmea-sim\"".to_owned()),
            Just("\"cam-{serial}\"".to_owned()),
            Just("[\"{port}\", \"{nope}\"]".to_owned()),
            Just("\"{\"".to_owned()),
            Just("\"[\"".to_owned()),
            Just("\"046d\"".to_owned()),
            any::<i64>().prop_map(|i| i.to_string()),
            any::<f64>().prop_map(|f| format!("{f:?}")),
            "[ -~]{0,12}",
        ]
    }

    proptest! {
        // 256 cases by default; PROPTEST_CASES=20000 for a longer hunt.
        /// No value of any key panics the loader; an error is always one line.
        #[test]
        fn no_value_panics_the_loader(pairs in proptest::collection::vec((key(), value()), 1..6)) {
            let overrides = Overrides {
                set: pairs.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                ..Default::default()
            };
            match load(None, Vec::new(), &overrides) {
                Ok(c) => {
                    // What loads must print and load again.
                    let text = c.to_toml();
                    prop_assert!(Config::from_table(text.parse().unwrap()).is_ok(), "{}", text);
                }
                Err(e) => prop_assert_eq!(e.to_string().lines().count(), 1, "{}", e),
            }
        }
    }
}

/// One configuration for a fleet: each node keeps only its streams, and a critical stream that
/// does not run on a node is not critical there.
#[test]
fn each_node_keeps_only_its_streams() {
    let c = parse(
        r#"
[node]
critical_streams = ["cam0", "gps0"]
[stream.cam0]
type = "test-pattern"
node_selector = { "example.com/camera" = "usb" }
[stream.gps0]
type = "nmea-sim"
nodes = ["edge-2"]
[stream.temp0]
type = "nmea-sim"
"#,
    )
    .unwrap();
    assert_eq!(c.stream_needing_labels(), Some("cam0"));
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let mut one = c.clone();
    let out = one.select_for_node("edge-1", &labels(&[("example.com/camera", "usb")]));
    assert_eq!(out, ["gps0"]);
    assert_eq!(one.streams.keys().collect::<Vec<_>>(), ["cam0", "temp0"]);
    assert_eq!(one.node.critical_streams, ["cam0"]);
    let mut two = c.clone();
    two.select_for_node("edge-2", &labels(&[("example.com/camera", "csi")]));
    assert_eq!(two.streams.keys().collect::<Vec<_>>(), ["gps0", "temp0"]);
    assert_eq!(two.node.critical_streams, ["gps0"]);
}

/// Without Kubernetes there are no labels: a node selector is refused at load time, in one line
/// that says what to do.
#[test]
fn a_node_selector_needs_kubernetes() {
    let e = parse(
        "[kube]\nmode = \"off\"\n[stream.cam0]\ntype = \"test-pattern\"\nnode_selector = { zone = \"a\" }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("stream.cam0.node_selector needs this node's labels")
            && e.contains("nodes = [...]"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1);
    // By name it works without Kubernetes.
    parse("[kube]\nmode = \"off\"\n[stream.cam0]\ntype = \"test-pattern\"\nnodes = [\"edge-1\"]\nrequired = true\n")
        .unwrap();
}

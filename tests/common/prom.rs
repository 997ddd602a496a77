//! Reading the Prometheus text exposition format (what `/metrics` serves and
//! `edgeplex::metrics::encode` returns): samples with their labels, looked up by series.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of `text`; comment lines (`# HELP`, `# TYPE`) and blank lines are skipped.
///
/// # Panics
/// On a line that is not a sample: the exposition must be well formed.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, rest) = split_series(l).unwrap_or_else(|e| panic!("{e} in {l:?}"));
            let value = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no value in {l:?}"));
            Sample {
                name: series.0,
                labels: series.1,
                value,
            }
        })
        .collect()
}

/// The value of the series written as in the exposition, e.g. `edgeplex_failover_leader` or
/// `edgeplex_failover_handovers_total{group="g",reason="dead"}` (labels in any order; all of
/// the series' labels must be given). `None` when absent.
pub fn value(text: &str, series: &str) -> Option<f64> {
    let ((name, labels), rest) =
        split_series(series).unwrap_or_else(|e| panic!("{e} in series {series:?}"));
    assert!(
        rest.trim().is_empty(),
        "series {series:?} has trailing text"
    );
    parse(text)
        .into_iter()
        .find(|s| s.name == name && s.labels == labels)
        .map(|s| s.value)
}

/// Sum of the samples of metric `name` whose labels include `labels` (0 when there are none).
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse(text)
        .into_iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

type Series = (String, BTreeMap<String, String>);

/// Split `name{k="v",...} rest` into the series and the rest.
fn split_series(line: &str) -> Result<(Series, &str), String> {
    let end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = line[..end].to_owned();
    if name.is_empty() {
        return Err("no metric name".into());
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[end..];
    if let Some(mut s) = rest.strip_prefix('{') {
        loop {
            s = s.trim_start_matches([',', ' ']);
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = s.split_once('=').ok_or("a label without '='")?;
            let quoted = after.strip_prefix('"').ok_or("an unquoted label value")?;
            let mut chars = quoted.char_indices();
            let mut value = String::new();
            let close = loop {
                match chars.next().ok_or("an unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("a dangling escape")?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.trim().to_owned(), value);
            s = &quoted[close + 1..];
        }
    }
    Ok(((name, labels), rest.trim_start()))
}

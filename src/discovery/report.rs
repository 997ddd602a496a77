//! `edgeplex devices`: what discovery sees on this machine, which rule takes what, the stream
//! names, and why every other node is left alone.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;

use super::{plan, resolve_claims, scan, Outcome, Roots, V4l2Caps};
use crate::config::{Config, ConfigError, Overrides};

/// `edgeplex devices`
#[derive(Debug, Clone, Default, Args)]
pub struct DevicesArgs {
    /// Configuration file, as for `run` (its `[discovery]` rules and explicit streams)
    /// [default: /etc/edgeplex/edgeplex.toml, if present].
    #[arg(long, short = 'c', env = "EDGEPLEX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override any configuration key, e.g. `--set discovery.max_streams=2` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where sysfs is mounted.
    #[arg(long, default_value = "/sys", value_name = "DIR")]
    pub sys: PathBuf,
    /// The device directory.
    #[arg(long, default_value = "/dev", value_name = "DIR")]
    pub dev: PathBuf,
    /// Print one JSON object per node instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl DevicesArgs {
    /// Load the configuration as `run` does, with these flags on top of `base`.
    pub fn load(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
        base: Overrides,
    ) -> Result<Config, ConfigError> {
        let mut o = base;
        o.set.extend(self.set.iter().cloned());
        crate::config::load(self.config.as_deref(), env, &o)
    }
}

/// Why `edgeplex devices` failed.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    /// A flag names no usable directory (exit 64).
    #[error("{0}")]
    Usage(String),
    /// Reading sysfs failed (exit 1).
    #[error("{0}")]
    Scan(String),
}

/// Scan `args`' roots with the real capability probe, plan with `config`, and render.
pub fn devices_command(args: &DevicesArgs, config: &Config) -> Result<String, DevicesError> {
    for (flag, dir) in [("--sys", &args.sys), ("--dev", &args.dev)] {
        if !dir.is_dir() {
            return Err(DevicesError::Usage(format!(
                "{flag} {}: not a directory",
                dir.display()
            )));
        }
    }
    let roots = Roots {
        sys: args.sys.clone(),
        dev: args.dev.clone(),
    };
    let probes = scan(&roots, &V4l2Caps).map_err(|e| DevicesError::Scan(e.0))?;
    let claims = resolve_claims(&roots, &config.stream_configs());
    let outcomes = plan(&config.discovery, &probes, &claims);
    Ok(if args.json {
        render_json(&outcomes)
    } else {
        render_text(&outcomes, config.discovery.rules.is_empty())
    })
}

/// One JSON object per line per node: `node`, `kind` (`camera` for a V4L2 node, `serial` for a
/// tty), `devnode`, `device` (when probed), and either
/// `stream` (`name`, `rule`, `type`, `path`) or `not_taken` (`reason`, `rule`, `message`).
pub fn render_json(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    for o in outcomes {
        let v = match o {
            Outcome::Stream(p) => serde_json::json!({
                "node": p.device.name,
                "kind": o.class(),
                "devnode": p.device.devnode,
                "device": p.device,
                "stream": {
                    "name": p.name,
                    "rule": p.rule,
                    "type": p.config.type_name(),
                    "path": super::plan::device_path(&p.config),
                },
            }),
            Outcome::NotTaken {
                name,
                devnode,
                device,
                reason,
            } => serde_json::json!({
                "node": name,
                "kind": o.class(),
                "devnode": devnode,
                "device": device,
                "not_taken": reason,
            }),
        };
        let _ = writeln!(out, "{v}");
    }
    out
}

/// A table: node, kind, driver, USB ID, serial, port, then the stream and rule, or the reason.
pub fn render_text(outcomes: &[Outcome], no_rules: bool) -> String {
    let mut rows: Vec<[String; 7]> = vec![[
        "NODE".into(),
        "KIND".into(),
        "DRIVER".into(),
        "USB".into(),
        "SERIAL".into(),
        "PORT".into(),
        "STREAM / WHY NOT".into(),
    ]];
    let dash = || "-".to_owned();
    for o in outcomes {
        let (name, device, last) = match o {
            Outcome::Stream(p) => (
                &p.device.name,
                Some(&p.device),
                format!(
                    "{} (rule {}, {})",
                    p.name,
                    p.rule,
                    super::plan::device_path(&p.config)
                        .map(|d| d.display().to_string())
                        .unwrap_or_default()
                ),
            ),
            Outcome::NotTaken {
                name,
                device,
                reason,
                ..
            } => (name, device.as_ref(), format!("not taken: {reason}")),
        };
        let text = |s: Option<&String>| s.map(|s| one_line(s)).unwrap_or_else(dash);
        rows.push([
            one_line(name),
            o.class().to_owned(),
            text(device.and_then(|d| d.driver.as_ref())),
            device
                .and_then(|d| Some(format!("{}:{}", d.vendor.as_ref()?, d.product.as_deref()?)))
                .unwrap_or_else(dash),
            text(device.and_then(|d| d.serial.as_ref())),
            text(device.and_then(|d| d.port.as_ref())),
            last,
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        for (w, c) in widths.iter().zip(r.iter()) {
            let _ = write!(out, "{c:<w$}  ");
        }
        let _ = writeln!(out, "{}", r[6]);
    }
    if outcomes.is_empty() {
        out.push_str("no camera or serial device found\n");
    }
    if no_rules {
        out.push_str(
            "no [discovery.rule.*] configured: discovery takes nothing; see docs/discovery.md\n",
        );
    }
    out
}

/// Outside text (serial numbers, labels) on one line of printable characters.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

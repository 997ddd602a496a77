//! Command-line interface: argument definitions (clap derive) and dispatch to the library.
//!
//! Every flag that has an environment twin names it with `env = "EDGEPLEX_..."`; precedence is
//! config file < environment < flag.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;
use crate::telemetry::LogFormat;

/// edgeplex: share cameras and serial sensors with any number of pods, zero-copy.
#[derive(Debug, Parser)]
#[command(name = "edgeplex", version, about, propagate_version = true)]
pub struct Cli {
    /// Log output format [env: EDGEPLEX_LOG_FORMAT] [default: text].
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log filter, in `RUST_LOG` syntax, e.g. `info,edgeplex=debug` [env: EDGEPLEX_LOG]
    /// [default: info].
    #[arg(long, global = true)]
    pub log: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: publish every configured stream into its ring until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Read rings: list, inspect, or stream their messages.
    #[command(subcommand)]
    Ring(RingCommand),
    /// Run a synthetic camera and sensor into fresh rings, to see edgeplex work without hardware.
    Demo(crate::demo::DemoArgs),
    /// Measure ring fan-out cost and wake-up latency on this machine against a Unix-socket
    /// baseline, and print one JSON object.
    Bench(crate::bench::BenchArgs),
    /// Run the failover controller: keep one node per device group labelled
    /// edgeplex.io/active=true and move it to a healthy backup when the active node fails.
    Failover(crate::failover::FailoverArgs),
    /// Copy a window of a ring's messages into files (JSON lines or frames plus an index),
    /// optionally upload them with HTTP PUT, and remember where the export stopped.
    Export(crate::export::ExportArgs),
    /// Internal: a reader process spawned by `edgeplex bench`.
    #[command(hide = true)]
    BenchReader(crate::bench::ReaderArgs),
}

/// `edgeplex run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file [default: /etc/edgeplex/edgeplex.toml, if present].
    #[arg(long, short = 'c', env = "EDGEPLEX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override any configuration key, e.g. `--set stream.cam0.width=1280` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Ring directory (overrides `ring.dir`).
    #[arg(long)]
    pub ring_dir: Option<PathBuf>,
    /// Metrics listen address (overrides `metrics.listen`).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Check the configuration as `run` would (without opening devices), print it as TOML,
    /// and exit.
    #[arg(long)]
    pub check: bool,
}

impl Cli {
    /// The global flags as configuration overrides (`log.level`, `log.format`).
    pub fn log_overrides(&self) -> Overrides {
        let mut o = Overrides::default();
        o.text("--log", "log.level", self.log.as_ref());
        o.text(
            "--log-format",
            "log.format",
            self.log_format.map(|f| match f {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }),
        );
        o
    }
}

impl RunArgs {
    /// The flags as configuration overrides, after `base` (the global ones).
    pub fn overrides(&self, base: Overrides) -> Overrides {
        let mut o = base;
        o.set.extend(self.set.iter().cloned());
        o.text(
            "--ring-dir",
            "ring.dir",
            self.ring_dir.as_ref().map(|p| p.display().to_string()),
        );
        o.text(
            "--metrics-listen",
            "metrics.listen",
            self.metrics_listen.as_ref(),
        );
        o
    }
}

/// `edgeplex ring ...`
#[derive(Debug, Subcommand)]
pub enum RingCommand {
    /// List the rings in a directory with geometry, epoch, head and age.
    Ls {
        /// Ring directory.
        #[arg(env = "EDGEPLEX_RING_DIR")]
        dir: PathBuf,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the decoded header of one ring.
    Inspect {
        /// Ring file.
        path: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write messages to stdout: raw payloads, or with --meta one JSON line per message.
    Cat(crate::ringtool::CatArgs),
}

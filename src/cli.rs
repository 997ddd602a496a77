//! Command-line interface: argument definitions (clap derive) and dispatch to the library.
//!
//! Every flag that has an environment twin names it with `env = "EDGEPLEX_..."`; precedence is
//! config file < environment < flag.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    /// The configuration value for this format.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }

    /// Parse a configuration value.
    pub fn from_name(name: &str) -> Option<LogFormat> {
        match name {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
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
    Demo(DemoArgs),
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
    /// Check the configuration, print it, and exit.
    #[arg(long)]
    pub check: bool,
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
    Cat(CatArgs),
}

/// `edgeplex ring cat`
#[derive(Debug, Args)]
pub struct CatArgs {
    /// Ring file.
    pub path: PathBuf,
    /// Stop after this many messages.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Where to start.
    #[arg(long, value_enum, default_value_t = From::Newest)]
    pub from: From,
    /// Print one JSON line of metadata per message instead of the payload, and a final
    /// `{"event":"end",...}` line with the delivered and lost totals.
    #[arg(long)]
    pub meta: bool,
    /// With --meta, add an FNV-1a 64-bit hash of each payload (`fnv1a64`).
    #[arg(long, requires = "meta")]
    pub hash: bool,
    /// Stop when no message arrives for this many seconds (default: wait forever).
    #[arg(long)]
    pub idle_timeout: Option<f64>,
    /// Sleep this many milliseconds after each message (to play a slow consumer).
    #[arg(long, hide = true, default_value_t = 0)]
    pub delay_ms: u64,
}

/// Where `ring cat` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum From {
    /// The oldest message the ring still holds.
    Oldest,
    /// The newest message already published.
    Newest,
    /// Only messages published after start.
    Next,
}

/// `edgeplex demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Ring directory to use (default: a fresh directory under /dev/shm).
    #[arg(long, env = "EDGEPLEX_RING_DIR")]
    pub ring_dir: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Camera frame rate.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Camera width in pixels.
    #[arg(long, default_value_t = 640)]
    pub width: u32,
    /// Camera height in pixels.
    #[arg(long, default_value_t = 480)]
    pub height: u32,
    /// Serve /metrics, /healthz and /readyz here ("" to disable).
    #[arg(
        long,
        env = "EDGEPLEX_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_listen: String,
}

//! `edgeplex demo`: the agent, run with a configuration of one synthetic camera and one
//! synthetic sensor in a fresh ring directory, so anyone can see edgeplex work on a machine
//! without hardware.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::agent::{ring_path, AgentError, RunOptions, Started};
use crate::config::{Config, ConfigError, StreamConfig};
use crate::kube::KubeMode;
use crate::settings::values::Listen;
use crate::source::synthetic::{NmeaSimSettings, TestPatternSettings};

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

impl DemoArgs {
    /// The agent configuration the demo runs. Bad flags are errors that name the flag (exit 64).
    pub fn config(&self, ring_dir: PathBuf) -> Result<Config, ConfigError> {
        let flag = |e: String| ConfigError(e.replace("--.", "--"));
        let camera = TestPatternSettings {
            width: self.width,
            height: self.height,
            fps: self.fps,
            slot_count: 8,
        };
        camera.validate("--").map_err(flag)?;
        let listen = Listen::parse(&self.metrics_listen)
            .map_err(|e| ConfigError(format!("--metrics-listen: {e}")))?;
        let mut config = Config::default();
        config.ring.dir = ring_dir;
        config.metrics.listen = listen;
        // The demo never talks to a cluster, whatever kubeconfig this machine has.
        config.kube.mode = KubeMode::Off;
        config.streams = BTreeMap::from([
            ("cam0".to_owned(), StreamConfig::TestPattern(camera).into()),
            (
                "gps0".to_owned(),
                StreamConfig::NmeaSim(NmeaSimSettings {
                    rate_hz: 10.0,
                    slot_count: 1024,
                })
                .into(),
            ),
        ]);
        Ok(config)
    }
}

/// Run the demo until Ctrl-C (or `--duration`).
pub fn run(args: &DemoArgs) -> Result<(), AgentError> {
    if let Some(d) = args.duration {
        if !(d.is_finite() && d >= 0.0) {
            return Err(ConfigError(format!(
                "--duration {d} must be a number of seconds, 0 or more"
            ))
            .into());
        }
    }
    let (dir, created) = match &args.ring_dir {
        Some(d) => (d.clone(), false),
        None => (
            PathBuf::from(format!("/dev/shm/edgeplex-demo-{}", std::process::id())),
            true,
        ),
    };
    let config = args.config(dir.clone())?;
    let options = RunOptions {
        stop_after: args.duration.map(Duration::from_secs_f64),
        // The demo still works without its endpoint (say, the port is taken).
        metrics_optional: true,
    };
    let result = crate::agent::run(&config, &options, |started| banner(args, &config, started));
    if created {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let counts: Vec<String> = result?
        .iter()
        .map(|h| format!("{} {} messages", h.name, h.messages))
        .collect();
    println!("stopped: {}", counts.join(", "));
    Ok(())
}

fn banner(args: &DemoArgs, config: &Config, started: &Started<'_>) {
    let dir = &config.ring.dir;
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "edgeplex".into());
    println!("edgeplex demo: publishing into {}", dir.display());
    println!(
        "  cam0/cam0.ring  synthetic camera {}x{} YUYV at {} fps",
        args.width & !1,
        args.height,
        args.fps
    );
    println!("  gps0/gps0.ring  synthetic NMEA sensor at 10 Hz");
    println!();
    println!("Read them from another terminal:");
    println!("  {me} ring ls {}", dir.display());
    println!(
        "  {me} ring cat {} --count 5",
        ring_path(dir, "gps0").display()
    );
    println!(
        "  {me} ring cat {} --meta --count 30",
        ring_path(dir, "cam0").display()
    );
    println!(
        "  python3 docs/examples/motion.py {}   (after pip install ./python)",
        ring_path(dir, "cam0").display()
    );
    if let Some(addr) = started.metrics {
        println!("  curl http://{addr}/metrics   (and /healthz, /readyz)");
    }
    println!("Press Ctrl-C to stop.");
}

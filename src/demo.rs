//! `edgeplex demo`: the agent with a synthetic camera and sensor in a fresh ring directory, so
//! anyone can see edgeplex work on a machine without hardware.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::agent::{ring_path, Agent};
use crate::cli::DemoArgs;
use crate::config::{Config, StreamConfig};
use crate::shutdown::Shutdown;
use crate::source::synthetic::{NmeaSimSettings, TestPatternSettings};

/// Run the demo until Ctrl-C (or `--duration`).
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let (dir, created) = match &args.ring_dir {
        Some(d) => (d.clone(), false),
        None => (
            PathBuf::from(format!("/dev/shm/edgeplex-demo-{}", std::process::id())),
            true,
        ),
    };
    let camera = TestPatternSettings {
        width: args.width,
        height: args.height,
        fps: args.fps,
        slot_count: 8,
    };
    camera
        .validate("--")
        .map_err(|e| anyhow::anyhow!(e.replace("--.", "--")))?;
    let sensor = NmeaSimSettings {
        rate_hz: 10.0,
        slot_count: 1024,
    };
    let mut config = Config::default();
    config.ring.dir = dir.clone();
    config.streams = BTreeMap::from([
        ("cam0".to_owned(), StreamConfig::TestPattern(camera)),
        ("gps0".to_owned(), StreamConfig::NmeaSim(sensor)),
    ]);

    let shutdown = Shutdown::install().context("install signal handlers")?;
    let agent = Agent::start(&config, &shutdown)?;
    let metrics = match args.metrics_listen.as_str() {
        "" => None,
        listen => {
            let addr = listen.parse().map_err(|_| {
                anyhow::anyhow!(
                    "--metrics-listen {listen:?} is not an address such as 127.0.0.1:9464"
                )
            })?;
            let power = crate::power::watch::spawn(config.power.clone(), &shutdown)
                .context("start the power watcher")?;
            let registry = crate::metrics::new_registry().context("build the metrics registry")?;
            match crate::agent::serve_metrics(addr, &registry, &agent.streams, &power, &shutdown) {
                Ok(bound) => Some(bound),
                Err(e) => {
                    // The demo still works without its endpoint (say, the port is taken).
                    tracing::warn!(error = %format!("{e:#}"), "metrics endpoint not started");
                    None
                }
            }
        }
    };
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "edgeplex".into());
    println!("edgeplex demo: publishing into {}", dir.display());
    println!(
        "  cam0.ring  synthetic camera {}x{} YUYV at {} fps",
        args.width & !1,
        args.height,
        args.fps
    );
    println!("  gps0.ring  synthetic NMEA sensor at 10 Hz");
    println!();
    println!("Read them from another terminal:");
    println!("  {me} ring ls {}", dir.display());
    println!(
        "  {me} ring cat {} --count 5",
        ring_path(&dir, "gps0").display()
    );
    println!(
        "  {me} ring cat {} --meta --count 30",
        ring_path(&dir, "cam0").display()
    );
    println!(
        "  python3 docs/examples/motion.py {}   (after pip install ./python)",
        ring_path(&dir, "cam0").display()
    );
    if let Some(addr) = metrics {
        println!("  curl http://{addr}/metrics   (and /healthz, /readyz)");
    }
    println!("Press Ctrl-C to stop.");

    let streams = agent.streams.clone();
    match args.duration {
        Some(secs) => {
            shutdown.sleep_until(Instant::now() + Duration::from_secs_f64(secs.max(0.0)));
            agent.drain();
        }
        None => agent.wait(),
    }
    let counts: Vec<String> = streams
        .iter()
        .map(|h| format!("{} {} messages", h.name(), h.snapshot().messages))
        .collect();
    println!("stopped: {}", counts.join(", "));
    if created {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

//! `edgeplex demo`: a synthetic camera and sensor publishing into fresh rings, so anyone can see
//! edgeplex work on a machine without hardware.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::DemoArgs;
use crate::ring::{self, layout, CreateOptions, Meta, RingSpec, StreamKind, VideoFormat, Writer};
use crate::shutdown::Shutdown;
use crate::source::synthetic::{NmeaSim, TestPattern};

/// Run the demo until Ctrl-C (or `--duration`).
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.fps > 0 && args.fps <= 1000,
        "--fps must be between 1 and 1000, got {}",
        args.fps
    );
    anyhow::ensure!(
        (2..=8192).contains(&args.width) && (1..=8192).contains(&args.height),
        "--width and --height must be between 2 and 8192"
    );
    let shutdown = Shutdown::install().context("install signal handlers")?;
    let (dir, created) = match &args.ring_dir {
        Some(d) => (d.clone(), false),
        None => (make_temp_dir()?, true),
    };
    std::fs::create_dir_all(&dir).map_err(|e| ring::RingError::io("create", &dir, e))?;
    let opts = CreateOptions::default();

    let pattern = TestPattern::new(args.width, args.height);
    let cam_spec = RingSpec {
        name: "cam0".into(),
        kind: StreamKind::Video,
        slot_count: 8,
        slot_size: pattern.frame_len() as u64,
        video: Some(VideoFormat {
            width: args.width & !1,
            height: args.height,
            fourcc: layout::fourcc_from_str("YUYV").expect("4 chars"),
            stride: pattern.stride(),
        }),
    };
    let gps_spec = RingSpec {
        name: "gps0".into(),
        kind: StreamKind::Serial,
        slot_count: 1024,
        slot_size: 128,
        video: None,
    };
    let cam = Writer::open(&dir.join("cam0.ring"), &cam_spec, &opts)?;
    let gps = Writer::open(&dir.join("gps0.ring"), &gps_spec, &opts)?;

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
    println!("  edgeplex ring ls {}", dir.display());
    println!(
        "  edgeplex ring cat {} --count 5",
        dir.join("gps0.ring").display()
    );
    println!(
        "  edgeplex ring cat {} --meta --count 30",
        dir.join("cam0.ring").display()
    );
    println!("Press Ctrl-C to stop.");

    let stop_at = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let cam_thread = {
        let shutdown = shutdown.clone();
        let period = Duration::from_secs_f64(1.0 / f64::from(args.fps));
        thread::Builder::new()
            .name("cam0".into())
            .spawn(move || camera_loop(cam, pattern, period, stop_at, &shutdown))
            .context("spawn camera thread")?
    };
    let gps_thread = {
        let shutdown = shutdown.clone();
        thread::Builder::new()
            .name("gps0".into())
            .spawn(move || sensor_loop(gps, Duration::from_millis(100), stop_at, &shutdown))
            .context("spawn sensor thread")?
    };
    let frames = cam_thread
        .join()
        .map_err(|_| anyhow::anyhow!("camera thread panicked"))?;
    let samples = gps_thread
        .join()
        .map_err(|_| anyhow::anyhow!("sensor thread panicked"))?;
    println!("stopped after {frames} frames and {samples} samples");
    if created {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn camera_loop(
    mut w: Writer,
    mut pattern: TestPattern,
    period: Duration,
    stop_at: Option<Instant>,
    shutdown: &Shutdown,
) -> u64 {
    let _span = tracing::info_span!("stream", stream = "cam0").entered();
    let mut next = Instant::now();
    let mut frames = 0u64;
    while stop_at.is_none_or(|t| Instant::now() < t) {
        let mut loan = w.lend();
        let len = pattern.render(frames, loan.buf());
        loan.commit(
            len,
            Meta {
                capture_ns: ring::monotonic_ns(),
                device_seq: frames,
                flags: 0,
            },
        );
        frames += 1;
        next += period;
        if !shutdown.sleep_until(next.min(stop_at.unwrap_or(next))) {
            break;
        }
    }
    frames
}

fn sensor_loop(
    mut w: Writer,
    period: Duration,
    stop_at: Option<Instant>,
    shutdown: &Shutdown,
) -> u64 {
    let _span = tracing::info_span!("stream", stream = "gps0").entered();
    let mut sim = NmeaSim::new();
    let mut next = Instant::now();
    let mut samples = 0u64;
    while stop_at.is_none_or(|t| Instant::now() < t) {
        let line = sim.next_line();
        let meta = Meta {
            capture_ns: ring::realtime_ns(),
            device_seq: samples,
            flags: layout::FLAG_CAPTURE_REALTIME,
        };
        if let Err(e) = w.publish(&line, meta) {
            tracing::error!(error = %e, "sensor sample dropped");
        }
        samples += 1;
        next += period;
        if !shutdown.sleep_until(next.min(stop_at.unwrap_or(next))) {
            break;
        }
    }
    samples
}

fn make_temp_dir() -> anyhow::Result<PathBuf> {
    let base = Path::new("/dev/shm");
    let dir = base.join(format!("edgeplex-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| ring::RingError::io("create", &dir, e))?;
    Ok(dir)
}

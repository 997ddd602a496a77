//! Publish synthetic YUYV frames into a ring: the library's writer in a dozen lines, and the
//! writer of the SDK bench (`python/bench/latency.py`).
//!
//! ```sh
//! cargo run --release -p edgeplex-ring --example write -- /dev/shm/bench/cam0.ring 1024 2048 30 300
//! ```
//!
//! Arguments: RING WIDTH HEIGHT FPS COUNT. Each frame is filled in place in its slot (no
//! intermediate buffer): a flat grey level that changes with the frame number.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use edgeplex_ring::layout::{fourcc_from_str, VideoFormat};
use edgeplex_ring::{monotonic_ns, CreateOptions, Meta, RingSpec, StreamKind, Writer};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nums: Option<Vec<u64>> = args.iter().skip(1).map(|a| a.parse().ok()).collect();
    let (Some(path), Some([w, h, fps, count])) = (
        args.first().map(PathBuf::from),
        nums.as_deref().and_then(|n| <[u64; 4]>::try_from(n).ok()),
    ) else {
        eprintln!("usage: write RING WIDTH HEIGHT FPS COUNT (whole numbers)");
        return ExitCode::from(64);
    };
    let (Ok(w), Ok(h)) = (u32::try_from(w), u32::try_from(h)) else {
        eprintln!("write: WIDTH and HEIGHT must fit 32 bits");
        return ExitCode::from(64);
    };
    let spec = RingSpec {
        name: path
            .file_stem()
            .map_or("cam0".into(), |s| s.to_string_lossy().into_owned()),
        kind: StreamKind::Video,
        slot_count: 8,
        slot_size: u64::from(w) * u64::from(h) * 2,
        video: Some(VideoFormat {
            width: w,
            height: h,
            fourcc: fourcc_from_str("YUYV").unwrap_or_default(),
            stride: w * 2,
        }),
    };
    let mut writer = match Writer::open(&path, &spec, &CreateOptions::default()) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("write: {e}");
            return ExitCode::from(66);
        }
    };
    let len = spec.slot_size as usize;
    let period = Duration::from_secs_f64(1.0 / fps.max(1) as f64);
    let mut next = Instant::now();
    for i in 0..count {
        let mut slot = writer.lend();
        let level = (slot.seq() % 200) as u8 + 16;
        slot.buf()[..len].fill(level);
        let meta = Meta {
            capture_ns: monotonic_ns(),
            device_seq: i,
            flags: 0,
        };
        slot.commit(len, meta);
        next += period;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    ExitCode::SUCCESS
}

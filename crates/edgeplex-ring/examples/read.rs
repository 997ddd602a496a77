//! Read a ring and print one line per message: its number, length, losses and payload hash.
//!
//! ```sh
//! cargo run -p edgeplex-ring --example read -- /dev/shm/edgeplex-demo-*/cam0/cam0.ring 10
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use edgeplex_ring::{fnv1a64, Reader, Recv, Start};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(path) = args.next().map(PathBuf::from) else {
        eprintln!("usage: read RING [COUNT]");
        return ExitCode::from(64);
    };
    let count: u64 = match args.next().map(|c| c.to_string_lossy().parse()) {
        None => 10,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("read: COUNT must be a whole number: {e}");
            return ExitCode::from(64);
        }
    };
    match read(&path, count) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("read: {e}");
            ExitCode::from(66)
        }
    }
}

fn read(path: &std::path::Path, count: u64) -> Result<(), edgeplex_ring::RingError> {
    let mut reader = Reader::open(path, Start::Newest)?;
    let g = reader.geometry();
    println!(
        "{}: {:?}, {} slots of {} bytes",
        g.name, g.kind, g.slot_count, g.slot_size
    );
    let mut payload = Vec::new();
    let mut seen = 0;
    while seen < count {
        match reader.next(Duration::from_secs(5))? {
            Recv::Message(msg) => {
                let (seq, lost) = (msg.seq(), msg.lost_before());
                if msg.copy_to(&mut payload) {
                    let hash = fnv1a64(&payload);
                    println!(
                        "seq {seq} len {} lost_before {lost} fnv1a64 {hash:016x}",
                        payload.len()
                    );
                    seen += 1;
                }
            }
            Recv::Reopened => println!("reopened: the ring's geometry changed"),
            Recv::TimedOut => println!(
                "no message for 5 s (writer alive: {})",
                reader.writer_alive()
            ),
        }
    }
    println!("lost {} of {}", reader.lost(), reader.cursor());
    Ok(())
}

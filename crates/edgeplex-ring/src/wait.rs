//! Waiting for a ring that does not exist yet: a consumer pod that starts before the agent
//! waits instead of crash-looping.
//!
//! It polls the path (every 10 ms at first, backing off to 250 ms): a ring appears once, by a
//! rename, so a missed event cannot happen, and polling works the same on a hostPath, a
//! device-plugin mount or a directory that does not exist yet.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::RingError;
use crate::reader::{Reader, Start};
use crate::HeaderInfo;

const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_millis(250);

/// Wait up to `timeout` for a valid ring to appear at `path`, then return its header.
///
/// Only a missing file (or directory) is waited for. Any other error (permission denied, a
/// corrupt or foreign file) returns at once: waiting would not fix it. After the timeout the
/// error is [`RingError::NotFound`].
pub fn wait_for_ring(path: &Path, timeout: Duration) -> Result<HeaderInfo, RingError> {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        match crate::inspect(path) {
            Err(RingError::NotFound { .. }) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(RingError::NotFound {
                        path: path.to_path_buf(),
                    });
                }
                std::thread::sleep(pause.min(deadline - now));
                pause = (pause * 2).min(MAX_PAUSE);
            }
            r => return r,
        }
    }
}

impl Reader {
    /// [`wait_for_ring`], then [`Reader::open`].
    pub fn wait_open(path: &Path, start: Start, timeout: Duration) -> Result<Reader, RingError> {
        let deadline = Instant::now() + timeout;
        loop {
            wait_for_ring(path, deadline.saturating_duration_since(Instant::now()))?;
            match Reader::open(path, start) {
                // Removed between the two calls (a writer's rename in progress): wait again.
                Err(RingError::NotFound { .. }) if Instant::now() < deadline => continue,
                r => return r,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ring_times_out_with_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cam0").join("cam0.ring");
        let err = wait_for_ring(&path, Duration::from_millis(30)).unwrap_err();
        assert!(matches!(err, RingError::NotFound { .. }), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_ring_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.ring");
        std::fs::write(&path, b"not a ring").unwrap();
        // A whole hour: the test would hang if a corrupt file were waited on.
        let err = wait_for_ring(&path, Duration::from_secs(3600)).unwrap_err();
        assert!(matches!(err, RingError::Corrupt { .. }), "{err}");
    }
}

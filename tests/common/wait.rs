//! Waiting for a condition, the one way every test does it: poll, starting at 1 ms and backing
//! off to 20 ms, until the condition holds, and panic naming what was awaited when a generous
//! limit passes. The limit is a watchdog against hangs, never a timing assertion: a test never
//! sleeps for a fixed time in the hope that something has happened meanwhile.

use std::time::{Duration, Instant};

/// The limit of [`wait_until`]: generous, only to turn a hang into a failure.
pub const WATCHDOG: Duration = Duration::from_secs(60);

const MAX_POLL: Duration = Duration::from_millis(20);

/// Poll `f` until it returns `Some`, or give up (`None`) after `timeout`.
pub fn try_wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut poll = Duration::from_millis(1);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(poll);
        poll = (poll * 2).min(MAX_POLL);
    }
}

/// Poll `f` until it returns `Some`, or panic after `timeout` naming `what`.
#[track_caller]
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    match try_wait_for(timeout, f) {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Poll `cond` until it holds; panics after [`WATCHDOG`] naming `what`.
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(what, WATCHDOG, || cond().then_some(()))
}

/// [`wait_for`] for async tests: yields to the runtime between polls.
pub async fn wait_for_async<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut poll = Duration::from_millis(1);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(MAX_POLL);
    }
}

/// Wait for `child` to exit, killing it and panicking after `timeout`.
#[track_caller]
pub fn wait_exit(
    what: &str,
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::process::ExitStatus {
    match try_wait_for(timeout, || child.try_wait().expect("try_wait")) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {timeout:?}; killed it");
        }
    }
}

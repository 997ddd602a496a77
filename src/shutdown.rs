//! Graceful shutdown: SIGINT and SIGTERM cancel one [`Shutdown`], which threads can poll or
//! sleep on and async tasks can await.
//!
//! Signals are received by a small thread (`signal-hook`'s iterator), never in a signal handler,
//! so cancelling may wake tasks and threads freely.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// A shared "please stop", raised by SIGINT or SIGTERM (or by hand). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    /// For threads that sleep: set under the lock and notified when cancelled.
    sleepers: Arc<Sleepers>,
}

/// Threads sleeping on one [`Shutdown`], and those of its [`Shutdown::child`]ren.
#[derive(Debug, Default)]
struct Sleepers {
    raised: Mutex<bool>,
    cv: Condvar,
    children: Mutex<Vec<Weak<Sleepers>>>,
}

impl Sleepers {
    fn raise(&self) {
        *self.raised.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
        let children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|p| p.into_inner()));
        for child in children.iter().filter_map(Weak::upgrade) {
            child.raise();
        }
    }
}

impl Shutdown {
    /// A shutdown raised by SIGINT and SIGTERM.
    pub fn install() -> std::io::Result<Shutdown> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let s = Shutdown::default();
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let raise = s.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    tracing::info!(signal = sig, "stopping");
                    raise.trigger();
                }
            })?;
        Ok(s)
    }

    /// Raise it by hand.
    pub fn trigger(&self) {
        self.token.cancel();
        self.sleepers.raise();
    }

    /// A shutdown of its own (one stream of several) that is also raised when this one is;
    /// triggering the child leaves this one alone.
    pub fn child(&self) -> Shutdown {
        let child = Shutdown {
            token: self.token.child_token(),
            sleepers: Arc::default(),
        };
        let mut children = self
            .sleepers
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        children.retain(|w| w.strong_count() > 0);
        children.push(Arc::downgrade(&child.sleepers));
        drop(children);
        if self.requested() {
            child.sleepers.raise();
        }
        child
    }

    /// Whether shutdown was requested.
    pub fn requested(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Wait (in async code) until shutdown is requested.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Sleep `d` in async code, waking at once on shutdown. Returns `false` on shutdown.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.token.cancelled() => false,
            _ = tokio::time::sleep(d) => !self.requested(),
        }
    }

    /// Block the thread until `deadline` or shutdown, whichever is first. Returns `false` on
    /// shutdown.
    pub fn sleep_until(&self, deadline: Instant) -> bool {
        let (lock, cv) = (&self.sleepers.raised, &self.sleepers.cv);
        let mut raised = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if *raised || self.token.is_cancelled() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            raised = cv
                .wait_timeout(raised, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Block the thread until shutdown.
    pub fn wait(&self) {
        while self.sleep_until(Instant::now() + Duration::from_secs(3600)) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleeping_thread_wakes_at_once() {
        let s = Shutdown::default();
        let t = {
            let s = s.clone();
            std::thread::spawn(move || s.sleep_until(Instant::now() + Duration::from_secs(600)))
        };
        s.trigger();
        assert!(!t.join().unwrap(), "woken by shutdown, not by the deadline");
        assert!(s.requested());
        assert!(!s.sleep_until(Instant::now() + Duration::from_secs(600)));
    }

    #[test]
    fn a_task_wakes_at_once() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let s = Shutdown::default();
        let t = s.clone();
        rt.block_on(async move {
            let sleeper = tokio::spawn(async move { t.sleep(Duration::from_secs(600)).await });
            s.trigger();
            assert!(!sleeper.await.unwrap());
            s.cancelled().await;
        });
    }

    #[test]
    fn a_child_stops_alone_or_with_its_parent() {
        let parent = Shutdown::default();
        let a = parent.child();
        let b = parent.child();
        let grandchild = b.child();
        a.trigger();
        assert!(a.requested() && !b.requested() && !parent.requested());
        assert!(!a.sleep_until(Instant::now() + Duration::from_secs(600)));
        let sleep = |s: &Shutdown| {
            let s = s.clone();
            std::thread::spawn(move || s.sleep_until(Instant::now() + Duration::from_secs(600)))
        };
        let (tb, tg) = (sleep(&b), sleep(&grandchild));
        parent.trigger();
        assert!(
            !tb.join().unwrap(),
            "the child's sleeper woke with its parent"
        );
        assert!(!tg.join().unwrap(), "and the grandchild's");
        assert!(b.requested() && grandchild.requested());
        assert!(
            parent.child().requested(),
            "a child of a raised parent is raised"
        );
    }
}

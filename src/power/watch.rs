//! The agent's battery watcher: samples the power-supply class on its own thread and keeps the
//! latest [`PowerSnapshot`] where metrics and the node publisher can read it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{read_supplies, Monitor, PowerClass, PowerConfig, PowerSnapshot};
use crate::shutdown::Shutdown;

/// The latest power snapshot, shared. `None` until the first sample. Async code (the node
/// publisher) can [`PowerState::subscribe`] to changes.
#[derive(Debug, Clone)]
pub struct PowerState {
    tx: Arc<tokio::sync::watch::Sender<Option<PowerSnapshot>>>,
}

impl Default for PowerState {
    fn default() -> Self {
        PowerState {
            tx: Arc::new(tokio::sync::watch::Sender::new(None)),
        }
    }
}

impl PowerState {
    /// The latest snapshot.
    pub fn get(&self) -> Option<PowerSnapshot> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every new snapshot.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<PowerSnapshot>> {
        self.tx.subscribe()
    }

    fn set(&self, s: PowerSnapshot) {
        self.tx.send_replace(Some(s));
    }
}

/// Take one sample now (so metrics have a value from the start), then keep sampling every
/// `poll_interval_secs` on a new thread until shutdown.
pub fn spawn(config: PowerConfig, shutdown: &Shutdown) -> std::io::Result<PowerState> {
    let state = PowerState::default();
    let period = Duration::from_secs_f64(config.poll_interval_secs);
    let mut monitor = Monitor::new(config.clone());
    let start = Instant::now();
    let mut last_error: Option<String> = None;
    let mut last_class: Option<PowerClass> = None;
    let mut sample = move |state: &PowerState| {
        let supplies = match read_supplies(&config.sysfs_root) {
            Ok(s) => {
                if last_error.take().is_some() {
                    tracing::info!(root = %config.sysfs_root.display(), "power supplies readable again");
                }
                s
            }
            Err(e) => {
                let msg = e.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, "cannot read power supplies; reporting no battery");
                    last_error = Some(msg);
                }
                Vec::new()
            }
        };
        let snap = monitor.sample(start.elapsed().as_secs_f64(), &supplies);
        if last_class != Some(snap.class) {
            // Logged when the class changes, not on every sample.
            tracing::info!(class = snap.class.as_str(), detail = %snap.message(), "power class");
            last_class = Some(snap.class);
        }
        state.set(snap);
    };
    sample(&state);
    let (thread_state, shutdown) = (state.clone(), shutdown.clone());
    std::thread::Builder::new()
        .name("power".into())
        .spawn(move || {
            let _span = tracing::info_span!("power").entered();
            while shutdown.sleep_until(Instant::now() + period) {
                sample(&thread_state);
            }
        })?;
    Ok(state)
}

//! The one way a long-running component (the node publisher, the device plugin, discovery) gets
//! its thread: named, with a current-thread tokio runtime of its own, built on that thread, so
//! that a component stalled on I/O cannot starve another and what it builds (a kube client's
//! request buffer, an inotify stream) is driven by the runtime that built it.

use std::future::Future;
use std::thread::JoinHandle;

/// Start thread `name` and run the future `make` returns on a current-thread runtime built on
/// that thread. If the runtime cannot be built, `failed` gets the error there instead. Errs only
/// if the thread cannot be spawned.
pub fn spawn_with_runtime<Fut>(
    name: &str,
    failed: impl FnOnce(std::io::Error) + Send + 'static,
    make: impl FnOnce() -> Fut + Send + 'static,
) -> std::io::Result<JoinHandle<()>>
where
    Fut: Future<Output = ()>,
{
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(make()),
                Err(e) => failed(e),
            }
        })
}

//! Device nodes arriving and leaving, from the kernel, without polling: inotify on the device
//! root (`/dev`, or a fixture) and on the directories of stable names under it
//! (`v4l/by-id`, `v4l/by-path`, `serial/by-id`, `serial/by-path`).
//!
//! Why inotify and not netlink uevents: uevents are delivered per network namespace, so an
//! agent in a pod without `hostNetwork` hears none, while a bind-mounted host `/dev` is the
//! host's devtmpfs, where the kernel itself creates and removes the nodes (raising `IN_CREATE`
//! and `IN_DELETE`) whether or not udev runs. udev comes later, if at all: it changes the
//! node's owner and mode (`IN_ATTRIB`) and adds the stable-name links, which is why those
//! directories are watched too (created on the fly: a directory that appears is watched as soon
//! as it is seen, and a rescan covers what it held before the watch).
//!
//! This module only reports what changed; reading attributes from `/sys` and deciding what a
//! node becomes is the rule engine's ([`super`]). It must not open device nodes.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};

use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask};
use tokio_stream::StreamExt;

/// The directories of stable names, relative to the device root, watched when they exist.
pub const LINK_DIRS: &[&str] = &[
    "v4l",
    "v4l/by-id",
    "v4l/by-path",
    "serial",
    "serial/by-id",
    "serial/by-path",
];

/// One thing that changed under the device root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A node appeared. The name is relative to the device root (`video0`, `ttyS1`).
    Node(OsString),
    /// A node's owner or mode changed (udev fixing permissions): look at it again.
    Changed(OsString),
    /// A node left.
    Removed(OsString),
    /// A stable name appeared, changed or left, a watched directory came or went, or events
    /// were lost: look at every node again.
    Rescan,
}

/// The inotify watches on one device root.
#[derive(Debug)]
pub struct DevWatch {
    root: PathBuf,
    events: EventStream<Vec<u8>>,
    /// Watched directories, relative to the root (`""` is the root).
    dirs: HashMap<WatchDescriptor, String>,
}

const ROOT_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM);

const LINKS_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::DELETE_SELF);

impl DevWatch {
    /// Watch `root` and the stable-name directories under it that exist now. Needs a tokio
    /// runtime (the events are read asynchronously).
    pub fn new(root: &Path) -> io::Result<DevWatch> {
        let inotify = Inotify::init()?;
        let events = inotify.into_event_stream(vec![0u8; 16 * 1024])?;
        let mut w = DevWatch {
            root: root.to_path_buf(),
            events,
            dirs: HashMap::new(),
        };
        let wd = w.events.watches().add(root, ROOT_MASK)?;
        w.dirs.insert(wd, String::new());
        for dir in LINK_DIRS {
            w.watch_links(dir);
        }
        Ok(w)
    }

    /// The device root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Watch one stable-name directory if it exists (it may not, or may vanish at any time).
    fn watch_links(&mut self, rel: &str) -> bool {
        let path = self.root.join(rel);
        if !path.is_dir() {
            return false;
        }
        match self.events.watches().add(&path, LINKS_MASK) {
            Ok(wd) => {
                self.dirs.insert(wd, rel.to_owned());
                true
            }
            Err(e) => {
                tracing::debug!(dir = %path.display(), error = %e, "cannot watch a stable-name directory");
                false
            }
        }
    }

    /// Wait for the next changes (at least one). `Err` when the inotify descriptor fails,
    /// which does not happen in practice; the caller should then fall back to rescans.
    pub async fn next(&mut self) -> io::Result<Vec<Change>> {
        loop {
            let event = match self.events.next().await {
                Some(e) => e?,
                None => return Err(io::Error::other("the inotify stream ended")),
            };
            let mut changes = Vec::new();
            self.interpret(event.wd, event.mask, event.name.as_deref(), &mut changes);
            if !changes.is_empty() {
                return Ok(changes);
            }
        }
    }

    fn interpret(
        &mut self,
        wd: WatchDescriptor,
        mask: EventMask,
        name: Option<&OsStr>,
        out: &mut Vec<Change>,
    ) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            out.push(Change::Rescan);
            return;
        }
        let Some(dir) = self.dirs.get(&wd).cloned() else {
            return;
        };
        if mask.contains(EventMask::IGNORED) || mask.contains(EventMask::DELETE_SELF) {
            // A stable-name directory went away (the last camera left).
            self.dirs.remove(&wd);
            if !dir.is_empty() {
                out.push(Change::Rescan);
            }
            return;
        }
        let Some(name) = name else { return };
        let is_dir = mask.contains(EventMask::ISDIR);
        let arrived = mask.intersects(EventMask::CREATE | EventMask::MOVED_TO);
        if is_dir {
            let rel = if dir.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{dir}/{}", name.to_string_lossy())
            };
            if arrived && LINK_DIRS.contains(&rel.as_str()) {
                // Watch it, and the directories under it that udev already made.
                self.watch_links(&rel);
                for sub in LINK_DIRS
                    .iter()
                    .filter(|d| d.starts_with(&format!("{rel}/")))
                {
                    self.watch_links(sub);
                }
                out.push(Change::Rescan);
            }
            return;
        }
        if !dir.is_empty() {
            out.push(Change::Rescan);
        } else if arrived {
            out.push(Change::Node(name.to_owned()));
        } else if mask.contains(EventMask::ATTRIB) {
            out.push(Change::Changed(name.to_owned()));
        } else if mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM) {
            out.push(Change::Removed(name.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    async fn next(w: &mut DevWatch) -> Vec<Change> {
        tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("an event within 10 s")
            .expect("inotify works")
    }

    #[test]
    fn nodes_and_stable_names_are_reported() {
        let dev = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let mut w = DevWatch::new(dev.path()).unwrap();
            std::fs::write(dev.path().join("video0"), b"").unwrap();
            assert_eq!(next(&mut w).await, [Change::Node("video0".into())]);
            std::fs::remove_file(dev.path().join("video0")).unwrap();
            assert_eq!(next(&mut w).await, [Change::Removed("video0".into())]);
            // udev makes /dev/v4l, then /dev/v4l/by-id, then the link.
            std::fs::create_dir(dev.path().join("v4l")).unwrap();
            assert_eq!(next(&mut w).await, [Change::Rescan]);
            std::fs::create_dir(dev.path().join("v4l/by-id")).unwrap();
            assert_eq!(next(&mut w).await, [Change::Rescan]);
            std::os::unix::fs::symlink("../../video0", dev.path().join("v4l/by-id/usb-cam"))
                .unwrap();
            assert_eq!(next(&mut w).await, [Change::Rescan]);
            // Mode change (udev fixing permissions).
            std::fs::write(dev.path().join("ttyS1"), b"").unwrap();
            assert_eq!(next(&mut w).await, [Change::Node("ttyS1".into())]);
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                dev.path().join("ttyS1"),
                std::fs::Permissions::from_mode(0o660),
            )
            .unwrap();
            assert_eq!(next(&mut w).await, [Change::Changed("ttyS1".into())]);
            // A subdirectory that is not a stable-name directory is ignored, as is what is in it.
            std::fs::create_dir(dev.path().join("shm")).unwrap();
            std::fs::write(dev.path().join("shm/x"), b"").unwrap();
            std::fs::write(dev.path().join("video1"), b"").unwrap();
            assert_eq!(next(&mut w).await, [Change::Node("video1".into())]);
        });
    }

    #[test]
    fn existing_stable_name_directories_are_watched_from_the_start() {
        let dev = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dev.path().join("serial/by-id")).unwrap();
        rt().block_on(async {
            let mut w = DevWatch::new(dev.path()).unwrap();
            std::os::unix::fs::symlink("../../ttyUSB0", dev.path().join("serial/by-id/usb-gps"))
                .unwrap();
            assert_eq!(next(&mut w).await, [Change::Rescan]);
            std::fs::remove_dir_all(dev.path().join("serial")).unwrap();
            let mut got = Vec::new();
            // Removing the tree: the link, the by-id directory, then serial itself.
            while got.len() < 2 {
                got.extend(next(&mut w).await);
            }
            assert!(got.iter().all(|c| *c == Change::Rescan), "{got:?}");
        });
    }
}

//! The export's state file (where the last run stopped) and its lock, and the atomic file
//! writes every output file goes through: unpredictable temporary names, never a symlink.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{usage, ExportState};

/// Take an exclusive lock on `<state>.lock` (kept, never removed: removing lock files races).
pub(super) fn lock_state(path: &Path) -> anyhow::Result<File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    if let Some(dir) = lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create state directory {}", dir.display()))?;
    }
    // Never through a symlink, and only a lock file of our own: in a shared directory another
    // user must not make this create a file elsewhere, nor hold our lock.
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&lock_path)
        .with_context(|| {
            format!(
                "cannot open lock file {} (a symlink is refused)",
                lock_path.display()
            )
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != crate::ring::effective_uid() {
        anyhow::bail!(
            "lock file {} is not a regular file of this user (uid {}); remove it, or keep the state file in a directory only you can write",
            lock_path.display(),
            meta.uid()
        );
    }
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another export using state file {} is running; let it finish (in Kubernetes set the CronJob's concurrencyPolicy: Forbid)",
            path.display()
        ),
        Err(fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
        }
    }
}

pub(super) fn load_state(path: &Path) -> anyhow::Result<Option<ExportState>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(usage(format!(
                "export: cannot read state file {}: {e}",
                path.display()
            )))
        }
    };
    let st: ExportState = serde_json::from_str(&text).map_err(|e| {
        usage(format!(
            "export: state file {} is not valid ({e}); fix or delete it (deleting exports everything the ring holds)",
            path.display()
        ))
    })?;
    if st.next_seq == u64::MAX || st.last_seq == Some(u64::MAX) {
        return Err(usage(format!(
            "export: state file {} is not valid (next_seq {} is beyond any ring); fix or delete it (deleting exports everything the ring holds)",
            path.display(),
            st.next_seq
        )));
    }
    if st.version != 1 {
        return Err(usage(format!(
            "export: state file {} has version {}, this edgeplex knows 1; delete it to start over",
            path.display(),
            st.version
        )));
    }
    Ok(Some(st))
}

pub(super) fn save_state(path: &Path, st: &ExportState) -> anyhow::Result<()> {
    let mut text = serde_json::to_vec(st)?;
    text.push(b'\n');
    write_atomic(path, |f| f.write_all(&text))
        .with_context(|| format!("cannot write state file {}", path.display()))
}

/// Write `path` through a temporary file in the same directory, fsync, rename, fsync the dir.
pub(super) fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let mut tmp = temp_file(path)?;
    fill(tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_parent(path)
}

/// A new file beside `path` under an unpredictable name (`O_CREAT|O_EXCL`, so never through a
/// symlink), removed unless persisted. Renaming it over `path` replaces a symlink there rather
/// than following it.
pub(super) fn temp_file(path: &Path) -> io::Result<tempfile::NamedTempFile> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp."))
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)
}

pub(super) fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => File::open(p)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

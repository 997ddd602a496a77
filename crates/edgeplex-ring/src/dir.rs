//! The ring directory and the per-stream directories in it: who the writer trusts, and how ring
//! files are opened without following anything a stranger put there.
//!
//! A [`RingDir`] is a directory descriptor checked once: not a symlink, owned by this process's
//! effective uid, writable by nobody else, on tmpfs. Everything below it is opened relative to
//! that descriptor (`openat`, `mkdirat`, `renameat`), never through a symlink (`O_NOFOLLOW`), so
//! no later change of the path can redirect the writer. This module never maps anything.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, CWD};

use super::error::RingError;
use super::writer::{CreateOptions, Writer};
use super::RingSpec;

/// Mode of the directories the writer creates: readers of any uid may traverse and list them.
const DIR_MODE: u32 = 0o755;

/// A directory the writer trusts: the ring directory, or one stream's directory inside it.
///
/// Open the ring directory once with [`RingDir::create`], then open every stream's writer
/// through [`RingDir::open_writer`].
#[derive(Debug)]
pub struct RingDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl RingDir {
    /// Open the ring directory at `path` for a writer, creating it (mode 0755, parents as
    /// needed) when it is missing, and refuse it unless this process can trust it: it must not
    /// be a symlink, must be owned by the effective uid, must not be writable by group or others
    /// (so a sticky world-writable directory such as `/dev/shm` itself is refused), and must be
    /// on tmpfs or ramfs unless `allow_disk`.
    pub fn create(path: &Path, allow_disk: bool) -> Result<RingDir, RingError> {
        if path.as_os_str().is_empty() {
            return Err(untrusted(
                path,
                "is empty; name a directory such as /dev/shm/edgeplex",
            ));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| RingError::io("create directory", parent, e))?;
        }
        let created = match rustix::fs::mkdirat(CWD, path, Mode::from_raw_mode(DIR_MODE)) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) => false,
            Err(e) => return Err(RingError::io("create directory", path, e.into())),
        };
        let fd = open_dir(CWD, path, path)?;
        let dir = RingDir {
            fd,
            path: path.to_path_buf(),
        };
        if created {
            dir.fix_mode()?;
        }
        dir.check()?;
        if !allow_disk {
            let magic = rustix::fs::fstatfs(&dir.fd)
                .map_err(|e| RingError::io("statfs", path, e.into()))?
                .f_type as i64;
            if magic != super::sys::TMPFS_MAGIC && magic != super::sys::RAMFS_MAGIC {
                return Err(RingError::NotTmpfs {
                    dir: path.to_path_buf(),
                });
            }
        }
        Ok(dir)
    }

    /// Check an existing ring directory the way [`RingDir::create`] does, without creating
    /// anything: for `run --check`. A missing directory passes (the writer will create it) when
    /// its parent exists and, unless `allow_disk`, is on tmpfs.
    pub fn check_path(path: &Path, allow_disk: bool) -> Result<(), RingError> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
                match parent {
                    Some(p) if !p.is_dir() => Err(untrusted(
                        path,
                        "cannot be created: its parent is not a directory",
                    )),
                    Some(p) if !allow_disk && !super::is_memory_fs(p)? => {
                        Err(RingError::NotTmpfs {
                            dir: path.to_path_buf(),
                        })
                    }
                    _ => Ok(()),
                }
            }
            _ => {
                let fd = open_dir(CWD, path, path)?;
                let dir = RingDir {
                    fd,
                    path: path.to_path_buf(),
                };
                dir.check()?;
                if !allow_disk && !super::is_memory_fs(path)? {
                    return Err(RingError::NotTmpfs {
                        dir: path.to_path_buf(),
                    });
                }
                Ok(())
            }
        }
    }

    /// Path of this directory (for messages; nothing is opened through it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory of `stream` inside this one (`<ring_dir>/<stream>/`), created when
    /// missing and checked like the ring directory.
    pub fn stream(&self, stream: &str) -> Result<RingDir, RingError> {
        check_name(&self.path, stream)?;
        let path = super::stream_dir(&self.path, stream);
        let created = match rustix::fs::mkdirat(&self.fd, stream, Mode::from_raw_mode(DIR_MODE)) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) => false,
            Err(e) => return Err(RingError::io("create directory", &path, e.into())),
        };
        let fd = open_dir(&self.fd, OsStr::new(stream), &path)?;
        let dir = RingDir { fd, path };
        if created {
            dir.fix_mode()?;
        }
        dir.check()?;
        Ok(dir)
    }

    /// Create, reopen or replace the ring of `stream` at `<ring_dir>/<stream>/<stream>.ring`
    /// (see [`Writer::open`]).
    pub fn open_writer(
        &self,
        stream: &str,
        spec: &RingSpec,
        opts: &CreateOptions,
    ) -> Result<Writer, RingError> {
        let dir = self.stream(stream)?;
        let file = format!("{stream}.{}", super::RING_SUFFIX);
        Writer::open_in(&dir, &file, spec, opts)
    }

    /// Remove the temporary files an earlier writer of this uid left behind (a writer killed
    /// while creating a ring), in this directory and in every stream directory in it. A
    /// temporary file that a live writer still holds locked is kept. Returns how many bytes
    /// were freed.
    pub fn sweep(&self) -> Result<u64, RingError> {
        let mut freed = self.sweep_here()?;
        for entry in self.entries()? {
            if entry.1 == rustix::fs::FileType::Directory && !entry.0.as_bytes().starts_with(b".") {
                if let Some(name) = entry.0.to_str() {
                    if let Ok(sub) = self.stream(name) {
                        freed += sub.sweep_here()?;
                    }
                }
            }
        }
        Ok(freed)
    }

    fn sweep_here(&self) -> Result<u64, RingError> {
        let mut freed = 0;
        for (name, kind) in self.entries()? {
            let b = name.as_bytes();
            if kind != rustix::fs::FileType::RegularFile
                || !b.starts_with(b".")
                || !b.windows(5).any(|w| w == b".tmp.")
            {
                continue;
            }
            let Ok(file) = self.open_file(&name, OFlags::RDONLY) else {
                continue;
            };
            let Ok(st) = rustix::fs::fstat(&file) else {
                continue;
            };
            if st.st_uid != rustix::process::geteuid().as_raw()
                || super::sys::writer_lock_held(&file).unwrap_or(true)
            {
                continue;
            }
            if rustix::fs::unlinkat(&self.fd, &name, AtFlags::empty()).is_ok() {
                freed += st.st_blocks as u64 * 512;
                trace_event!(info, path = %self.path.join(&name).display(), "removed a leftover temporary ring file");
            }
        }
        Ok(freed)
    }

    fn entries(&self) -> Result<Vec<(std::ffi::OsString, rustix::fs::FileType)>, RingError> {
        let io_err = |e: rustix::io::Errno| RingError::io("list", &self.path, e.into());
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.fd).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let kind = match entry.file_type() {
                rustix::fs::FileType::Unknown => {
                    rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
                        .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode))
                        .unwrap_or(rustix::fs::FileType::Unknown)
                }
                k => k,
            };
            out.push((name.to_os_string(), kind));
        }
        Ok(out)
    }

    /// Open `name` in this directory, never following a symlink, never blocking on a FIFO.
    pub(crate) fn open_file(&self, name: &OsStr, flags: OFlags) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )?;
        Ok(File::from(fd))
    }

    /// A new, unnamed file in this directory (`O_TMPFILE`), or where the filesystem lacks
    /// `O_TMPFILE`, one under an unpredictable name created with `O_EXCL`. Returns the file and
    /// the name it already has, if any.
    pub(crate) fn create_temp(
        &self,
        stem: &str,
        mode: u32,
    ) -> io::Result<(File, Option<std::ffi::OsString>)> {
        let mode = Mode::from_raw_mode(mode);
        // An anonymous file can later be named only through /proc/self/fd (linkat with
        // AT_SYMLINK_FOLLOW; AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH): without /proc, use a
        // random name from the start.
        let proc_fd = Path::new("/proc/self/fd").is_dir();
        match rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            mode,
        ) {
            Ok(fd) if proc_fd => return Ok((File::from(fd), None)),
            Ok(_) => {}
            Err(
                rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL,
            ) => {}
            Err(e) => return Err(e.into()),
        }
        for _ in 0..16 {
            let name = temp_name(stem)?;
            match rustix::fs::openat(
                &self.fd,
                &name,
                OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                mode,
            ) {
                Ok(fd) => return Ok((File::from(fd), Some(name))),
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temporary name after 16 random tries",
        ))
    }

    /// Put `file` (from [`RingDir::create_temp`]) at `name`, atomically replacing whatever is
    /// there: readers see either the old file or the complete new one.
    pub(crate) fn install(
        &self,
        file: &File,
        temp: Option<std::ffi::OsString>,
        stem: &str,
        name: &str,
    ) -> io::Result<()> {
        let temp = match temp {
            Some(t) => t,
            None => {
                // Give the anonymous file an unpredictable name, then rename it into place:
                // linkat cannot replace an existing file. The named window is the rename's.
                let t = temp_name(stem)?;
                let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file));
                rustix::fs::linkat(
                    CWD,
                    proc_path.as_str(),
                    &self.fd,
                    &t,
                    AtFlags::SYMLINK_FOLLOW,
                )
                .or_else(|_| {
                    rustix::fs::linkat(file.as_fd(), "", &self.fd, &t, AtFlags::EMPTY_PATH)
                })?;
                t
            }
        };
        rustix::fs::renameat(&self.fd, &temp, &self.fd, name).inspect_err(|_| {
            let _ = rustix::fs::unlinkat(&self.fd, &temp, AtFlags::empty());
        })?;
        Ok(())
    }

    /// Remove the temporary `name` after a failed creation.
    pub(crate) fn remove(&self, name: &OsStr) {
        let _ = rustix::fs::unlinkat(&self.fd, name, AtFlags::empty());
    }

    fn fix_mode(&self) -> Result<(), RingError> {
        // The umask must not narrow what readers of other uids need (traverse and list).
        rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(DIR_MODE))
            .map_err(|e| RingError::io("chmod", &self.path, e.into()))
    }

    fn check(&self) -> Result<(), RingError> {
        let st =
            rustix::fs::fstat(&self.fd).map_err(|e| RingError::io("stat", &self.path, e.into()))?;
        let euid = rustix::process::geteuid().as_raw();
        if st.st_uid != euid {
            return Err(untrusted(
                &self.path,
                &format!(
                    "is owned by uid {}, not by this process (uid {euid}); another user could \
                     replace ring files in it: use a directory the agent creates itself (remove \
                     this one, or point ring.dir elsewhere)",
                    st.st_uid
                ),
            ));
        }
        if st.st_mode & 0o022 != 0 {
            return Err(untrusted(
                &self.path,
                &format!(
                    "is writable by group or others (mode {:o}); another user could replace ring \
                     files in it: use a directory of its own such as /dev/shm/edgeplex, or run \
                     chmod go-w on it",
                    st.st_mode & 0o7777
                ),
            ));
        }
        Ok(())
    }
}

/// The effective uid of this process: the owner a ring directory and its files must have.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Random temporary name `.<stem>.tmp.<16 hex digits>`.
fn temp_name(stem: &str) -> io::Result<std::ffi::OsString> {
    let mut r = [0u8; 8];
    rustix::rand::getrandom(&mut r, rustix::rand::GetRandomFlags::empty())?;
    Ok(format!(".{stem}.tmp.{:016x}", u64::from_le_bytes(r)).into())
}

fn open_dir<Fd: AsFd>(at: Fd, name: impl AsRef<OsStr>, path: &Path) -> Result<OwnedFd, RingError> {
    let name = name.as_ref();
    let at = at.as_fd();
    rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        // With O_DIRECTORY, a symlink gives ENOTDIR rather than ELOOP: look at what is there.
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR
            if rustix::fs::statat(at, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
                rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink
            }) =>
        {
            untrusted(
                path,
                "is a symbolic link; name the real directory (a symlink could be changed to point \
                 anywhere)",
            )
        }
        rustix::io::Errno::NOTDIR => untrusted(path, "is not a directory"),
        e => RingError::io("open directory", path, e.into()),
    })
}

fn check_name(dir: &Path, stream: &str) -> Result<(), RingError> {
    if stream.is_empty()
        || stream == "."
        || stream == ".."
        || stream.starts_with('.')
        || stream.contains(['/', '\0'])
    {
        return Err(untrusted(
            &dir.join(stream),
            "is not a valid stream name: use letters, digits, '-' and '_'",
        ));
    }
    Ok(())
}

fn untrusted(path: &Path, reason: &str) -> RingError {
    RingError::Untrusted {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    }
}

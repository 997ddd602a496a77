//! Host tools a test needs (Prometheus, snap, Go, qemu, setpriv, ...) and the one rule for when
//! one is missing: **outside CI the test says why and returns; in CI it fails.**
//!
//! "In CI" means one thing everywhere: the `CI` environment variable is set to a non-empty
//! value. `.ci/run` exports `CI=true` (and so do most CI services), so a CI machine that lacks
//! a package `.ci/run` should have installed fails loudly instead of passing by skipping.
//!
//! ```ignore
//! let Some(promtool) = tools::find("promtool") else {
//!     return tools::missing("promtool (apt-get install prometheus)");
//! };
//! ```

use std::path::{Path, PathBuf};

/// Whether this run is CI: `CI` is set and not empty.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// What a test needs is missing: in CI, panic naming it; elsewhere print `skipped: ...` and
/// return, so the caller can `return tools::missing(...)`. `what` says what is missing and how
/// to install it.
#[track_caller]
pub fn missing(what: &str) {
    assert!(
        !in_ci(),
        "missing in CI (CI is set, so this fails instead of skipping): {what}"
    );
    eprintln!("skipped: missing {what} (in CI this fails)");
}

/// An executable named `name` on `PATH` or in the usual system directories (`/usr/sbin` and
/// `/sbin` are often not on a user's `PATH`).
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// [`find`], or [`missing`] with `install` (how to get it) when it is not there.
#[track_caller]
pub fn require(name: &str, install: &str) -> Option<PathBuf> {
    let found = find(name);
    if found.is_none() {
        missing(&format!("`{name}` ({install})"));
    }
    found
}

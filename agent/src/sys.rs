//! The one module that changes the system with raw syscalls (mount, statfs).

use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, TMPFS_MAGIC};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct SysError {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: nix::Error,
}

/// Whether `path` lies on a tmpfs (memory only: a secret written there never reaches a disk).
pub fn is_tmpfs(path: &Path) -> Result<bool, SysError> {
    statfs(path)
        .map(|s| s.filesystem_type() == TMPFS_MAGIC)
        .map_err(|source| SysError {
            what: "cannot statfs",
            path: path.to_owned(),
            source,
        })
}

/// Mounts a small private tmpfs at `path` (mode 0700, no devices, no setuid, no exec).
pub fn mount_private_tmpfs(path: &Path) -> Result<(), SysError> {
    mount(
        Some("node-agent-secrets"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700,size=1m"),
    )
    .map_err(|source| SysError {
        what: "cannot mount tmpfs on",
        path: path.to_owned(),
        source,
    })
}

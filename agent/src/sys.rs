//! The one module that changes the system with raw syscalls (mount, umount, statfs) or the mount command.

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

/// Mounts an NFSv4 export with a text option string (which must carry `addr=`: the kernel resolves no
/// names). Blocks for as long as the kernel's NFS client tries.
pub fn mount_nfs(source: &str, target: &Path, options: &str) -> Result<(), SysError> {
    mount(
        Some(source),
        target,
        Some("nfs4"),
        MsFlags::empty(),
        Some(options),
    )
    .map_err(|source| SysError {
        what: "cannot mount NFS on",
        path: target.to_owned(),
        source,
    })
}

/// Unmounts `target`; when it is busy, detaches it (it goes away once the last user closes it).
pub fn umount(target: &Path) -> Result<(), SysError> {
    use nix::mount::{umount2, MntFlags};
    umount2(target, MntFlags::empty())
        .or_else(|e| match e {
            nix::Error::EBUSY => umount2(target, MntFlags::MNT_DETACH),
            e => Err(e),
        })
        .map_err(|source| SysError {
            what: "cannot unmount",
            path: target.to_owned(),
            source,
        })
}

/// Runs `mount ARGS` (for helpers such as amazon-efs-utils' `mount -t efs`), stdin closed, output captured.
pub fn run_mount_command(args: &[String]) -> std::io::Result<std::process::Output> {
    std::process::Command::new("mount")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
}

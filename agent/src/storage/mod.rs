//! The role's data directory: an EFS subdirectory mounted at the datadir (created on first use), or a
//! plain local directory; in both cases guarded by a sentinel file that names whose data it is.
//!
//! The decisions are pure and unit-tested with plain values: `mountinfo` (parsing
//! `/proc/self/mountinfo`, what is mounted at the datadir), `retry` (what a failed attempt means, the
//! backoff), `sentinel` (whose data a directory holds), and the mount arguments in `efs`. [`prepare`]
//! carries them out in a fixed order (for EFS in `efs`), calling `sys` for the syscalls:
//!
//! 1. checks first: the owner exists, the mount helper exists (efs-utils), nothing else is mounted at
//!    the datadir;
//! 2. resolve the mount target's DNS name and mount `/{environment}/{role}` at the datadir, retrying
//!    with backoff while DNS or the mount target is not ready, up to `storage.mount_timeout_secs`;
//! 3. when the server says the subdirectory does not exist: mount the file system root on a private
//!    mountpoint beside the runtime directory, create the subdirectory (owner: the service user, 0750),
//!    unmount, and mount the subdirectory again; with an access point (`storage.efs_access_point_id`)
//!    the access point's root directory is the role's directory: its root `/` is mounted, never the
//!    file system root, and the access point's CreationInfo creates the directory;
//! 4. verify in `/proc/self/mountinfo` that the datadir is a mount of the expected source;
//! 5. check the sentinel, or create it on first use.
//!
//! Local storage: the owner exists, the directory is created (0750) or opened, then step 5.
//! This file holds the errors, the host facts, the owner and both entry points.
//!
//! Any failure stops the boot: geth never starts on the local root disk.

mod efs;
mod mountinfo;
mod retry;
mod sentinel;

use crate::config::storage::{Owner, SENTINEL};
use crate::config::StorageSettings;
use crate::sys::safefs::Dir;
use efs::{expected_source, prepare_efs};
use mountinfo::{mount_state, mounts, MountState};
use sentinel::{check_or_create_sentinel, expected_sentinel};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the data directory cannot be used. One line each, naming the object and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage: {target} not mountable at {datadir} after {}s: {cause} (check that the file system has a mount target in this availability zone, that its security group allows NFS, TCP 2049, from this host, and that the VPC has DNS resolution enabled; or raise storage.mount_timeout_secs)", waited.as_secs())]
    NotReady {
        target: String,
        datadir: PathBuf,
        waited: Duration,
        cause: String,
    },
    #[error("storage: cannot mount {target} at {datadir}: {cause}")]
    Mount {
        target: String,
        datadir: PathBuf,
        cause: String,
    },
    #[error("storage: {datadir} is a mount of {found} ({fs_type}), not of {expected}; unmount it (umount {datadir}) or fix storage.datadir")]
    WrongMount {
        datadir: PathBuf,
        found: String,
        fs_type: String,
        expected: String,
    },
    #[error("storage: {datadir} is not a mount of {expected} after mounting it (found {found}); refusing to start on the local disk")]
    NotVerified {
        datadir: PathBuf,
        expected: String,
        found: String,
    },
    #[error("storage: {0}")]
    Mismatch(String),
    #[error("storage: {path} is not a node-agent sentinel ({cause}); it guards against starting on another host's data: restore it, or delete it if this directory really is this host's")]
    BadSentinel { path: PathBuf, cause: String },
    #[error("storage: user {name} does not exist (it owns the role's data directory): create it (node-agent's sysusers.d entry does) or set storage.owner = \"UID:GID\"")]
    NoSuchUser { name: String },
    #[error("storage: amazon-efs-utils is not installed (no mount.efs in /sbin, /usr/sbin): install it or set storage.efs_utils = false")]
    NoEfsUtils,
    #[error("storage: {0}")]
    Fs(#[from] crate::sys::safefs::FsError),
    #[error("storage: {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_owned();
    move |source| StorageError::Io { what, path, source }
}

/// The host facts the storage step needs besides its settings.
#[derive(Debug, Clone)]
pub struct Host<'a> {
    pub environment: &'a str,
    /// Whose data: the role, or `backups`.
    pub role: &'a str,
    pub instance_id: &'a str,
    /// Local, non-persistent directory for the temporary root mountpoint.
    pub runtime_dir: &'a Path,
}

/// Whether the storage prepared at boot is still in place (for status): the expected mount at the datadir,
/// and the sentinel there. `Err` says what is wrong.
pub fn still_in_place(storage: &StorageSettings) -> Result<(), String> {
    let datadir = storage.datadir();
    if let StorageSettings::Efs(efs) = storage {
        let mounts = mounts().map_err(|e| format!("cannot read mountinfo: {e}"))?;
        match mount_state(&mounts, datadir, &expected_source(efs)) {
            MountState::Expected => {}
            MountState::Absent => {
                return Err(format!("nothing is mounted at {}", datadir.display()))
            }
            MountState::Other { source, fs_type } => {
                return Err(format!(
                    "{source} ({fs_type}) is mounted at {}",
                    datadir.display()
                ))
            }
        }
    }
    match datadir.join(SENTINEL).exists() {
        true => Ok(()),
        false => Err(format!("no sentinel in {}", datadir.display())),
    }
}

/// Makes the role's data directory ready, or fails; see the module documentation for the order.
pub async fn prepare(storage: &StorageSettings, host: &Host<'_>) -> Result<(), StorageError> {
    match storage {
        StorageSettings::Local { datadir, owner } => prepare_local(datadir, owner, host),
        StorageSettings::Efs(efs) => prepare_efs(efs, host).await,
    }
}

/// Numeric ids of the owner; `None` for the agent's own user, or when the agent is not root (it can give
/// nothing away then: what it creates is its own, as in local mode on a laptop).
fn resolve_owner(owner: &Owner) -> Result<Option<(u32, u32)>, StorageError> {
    if !crate::sys::is_root() {
        return Ok(None);
    }
    match owner {
        Owner::Agent => Ok(None),
        Owner::Ids { uid, gid } => Ok(Some((*uid, *gid))),
        Owner::User(name) => match crate::sys::lookup_user(name) {
            Ok(Some(ids)) => Ok(Some(ids)),
            Ok(None) => Err(StorageError::NoSuchUser { name: name.clone() }),
            Err(e) => Err(io("cannot look up user", Path::new("/etc/passwd"))(e)),
        },
    }
}

/// Creates `dir` (its missing parents 0755) owned by `ids` with mode 0750, or opens the existing one.
/// The bool: whether it was created here (an existing directory is never re-owned: its contents would not
/// follow). Through descriptors: its parents may belong to the service user.
fn create_owned_dir(dir: &Path, ids: Option<(u32, u32)>) -> Result<(Dir, bool), StorageError> {
    let (parent, name) = crate::sys::safefs::split(dir)?;
    // Another host of the same role may create it at the same moment: theirs is as good as ours.
    Ok(Dir::create_all(parent, 0o755)?.make_dir(name, 0o750, ids)?)
}

fn warn_if_owned_otherwise(dir: &Dir, ids: Option<(u32, u32)>) {
    if let (Some((uid, gid)), Ok(m)) = (ids, dir.stat()) {
        if (m.st_uid, m.st_gid) != (uid, gid) {
            tracing::warn!(
                dir = %dir.path().display(),
                owner = %format!("{}:{}", m.st_uid, m.st_gid),
                expected = %format!("{uid}:{gid}"),
                "data directory is owned by another user; left as is (fix with chown -R if the service cannot write it)"
            );
        }
    }
}

fn prepare_local(datadir: &Path, owner: &Owner, host: &Host<'_>) -> Result<(), StorageError> {
    let ids = resolve_owner(owner)?;
    let (dir, created) = create_owned_dir(datadir, ids)?;
    if created {
        tracing::info!(datadir = %datadir.display(), owner = %owner, "created the local data directory");
    } else {
        warn_if_owned_otherwise(&dir, ids);
    }
    let expected = expected_sentinel(host, None, &datadir.display().to_string());
    check_or_create_sentinel(&dir, &expected)
}

#[cfg(test)]
mod tests {
    use super::sentinel::Sentinel;
    use super::*;

    fn host(dir: &Path) -> Host<'_> {
        Host {
            environment: "dev",
            role: "rpc",
            instance_id: "i-1",
            runtime_dir: dir,
        }
    }

    #[test]
    fn local_storage_is_created_0750_with_a_sentinel_and_refused_for_another_role() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let datadir = tmp.path().join("data/dev/rpc");
        prepare_local(&datadir, &Owner::Agent, &host(tmp.path())).unwrap();
        let mode = std::fs::metadata(&datadir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o750);
        let s: Sentinel =
            serde_json::from_slice(&std::fs::read(datadir.join(SENTINEL)).unwrap()).unwrap();
        assert_eq!((s.environment.as_str(), s.role.as_str()), ("dev", "rpc"));
        assert_eq!(s.file_system_id, None);
        // Idempotent.
        prepare_local(&datadir, &Owner::Agent, &host(tmp.path())).unwrap();
        // A sealer pointed at the rpc directory.
        let mut sealer = host(tmp.path());
        sealer.role = "sealer";
        let e = prepare_local(&datadir, &Owner::Agent, &sealer).unwrap_err();
        assert!(e.to_string().contains("role rpc"), "{e}");
        assert!(!e.to_string().contains('\n'));
        // A sentinel that is not one.
        std::fs::write(datadir.join(SENTINEL), "not json").unwrap();
        let e = prepare_local(&datadir, &Owner::Agent, &host(tmp.path())).unwrap_err();
        assert!(
            e.to_string().contains("is not a node-agent sentinel"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_service_user_is_named_with_the_fix() {
        let e = resolve_owner(&Owner::User("no-such-user-here".into())).unwrap_err();
        assert!(
            e.to_string()
                .contains("user no-such-user-here does not exist"),
            "{e}"
        );
        assert!(e.to_string().contains("storage.owner"), "{e}");
    }
}

//! One agent per host: an exclusive lock on `runtime_dir/agent.lock`, taken by `run`, `prepare` and
//! `cleanup` before they change anything. Everything one agent shares with another on the same runtime
//! directory (the secrets directory, the status socket, the IPC socket, ports, log files) would otherwise
//! be emptied or replaced under the running one by a second start (an operator trying `run` by hand
//! while the service runs).
//!
//! flock(2) on a local file system (the runtime directory is on /run, a tmpfs): released when the holder
//! exits, however it exits. The holder's pid is written into the file for the message of the one refused.

use crate::sys::lock::{self, Locked, TryLock};
use crate::sys::safefs::{self, Dir, Owner};
use std::ffi::OsStr;
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

/// The lock file's name in the runtime directory.
pub const FILE: &str = "agent.lock";

/// A held lock; released when dropped or when the process exits.
#[derive(Debug)]
pub struct RunLock {
    _lock: Locked,
}

#[derive(Debug, thiserror::Error)]
pub enum RunLockError {
    #[error("another node-agent ({holder}) is using the runtime directory {dir} (it holds {path}): stop it first (systemctl stop node-agent), or give this one its own storage.runtime_dir")]
    Held {
        dir: PathBuf,
        path: PathBuf,
        holder: String,
    },
    #[error(transparent)]
    Fs(#[from] safefs::FsError),
    #[error("cannot use the lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Who holds the lock, from what the file says. Pure.
pub fn holder(text: &str) -> String {
    match text.trim().parse::<u32>() {
        Ok(pid) => format!("pid {pid}"),
        Err(_) => "pid unknown".into(),
    }
}

/// Takes the lock in `dir` at once or fails naming the holder. `owner`: who the file is given to (root
/// hands it to the service user, which takes the same lock in `run` after `prepare`).
pub fn acquire(dir: &Dir, owner: Owner) -> Result<RunLock, RunLockError> {
    let path = dir.path().join(FILE);
    let io = |source| RunLockError::Io {
        path: path.clone(),
        source,
    };
    let (file, writable) = dir.open_shared_file(OsStr::new(FILE), 0o640, owner)?;
    match lock::try_exclusive(file).map_err(io)? {
        TryLock::Locked(mut lock) => {
            if writable {
                lock.set_len(0).map_err(io)?;
                lock.rewind().map_err(io)?;
                lock.write_all(format!("{}\n", std::process::id()).as_bytes())
                    .map_err(io)?;
            }
            Ok(RunLock { _lock: lock })
        }
        TryLock::Held(mut file) => {
            let mut text = String::new();
            let _ = file
                .rewind()
                .and_then(|_| file.take(64).read_to_string(&mut text));
            Err(RunLockError::Held {
                dir: dir.path().to_owned(),
                path,
                holder: holder(&text),
            })
        }
    }
}

/// Takes the lock in `runtime_dir`, creating the directory (mode 0750, given to `owner` when created
/// here) when missing.
pub fn acquire_at(runtime_dir: &Path, owner: Owner) -> Result<RunLock, RunLockError> {
    let dir = Dir::create_all_owned(runtime_dir, 0o750, owner)?;
    acquire(&dir, owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_named_by_its_pid() {
        assert_eq!(holder("812\n"), "pid 812");
        assert_eq!(holder(""), "pid unknown");
        assert_eq!(holder("x"), "pid unknown");
    }

    #[test]
    fn a_second_lock_is_refused_naming_the_first_until_it_is_released() {
        let tmp = tempfile::tempdir().unwrap();
        let first = acquire_at(tmp.path(), None).unwrap();
        let e = acquire_at(tmp.path(), None).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("another node-agent (pid {})", std::process::id())),
            "{e}"
        );
        drop(first);
        acquire_at(tmp.path(), None).unwrap();
    }

    #[test]
    fn a_link_planted_in_place_of_the_lock_is_refused_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, tmp.path().join(FILE)).unwrap();
        let e = acquire_at(tmp.path(), None).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}

//! One live sealer per key: an exclusive advisory lock on a file in the sealer's (shared) data directory,
//! held by the agent for as long as it runs its geth. A replacement instance booting while the old one
//! still seals waits for the lease, then refuses naming the holder. NFSv4 (EFS) honours these locks; a
//! holder that dies loses the lock with its process (or its NFS lease, about 90 s later).

use nix::fcntl::{Flock, FlockArg};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// A held lease; released when dropped (or when the process dies).
pub struct Lease {
    _lock: Flock<std::fs::File>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("another sealer holds the signer key's lease {path} ({holder}); still held after {waited}s. Two sealers on one key fork the chain: stop the other instance first")]
    Held {
        path: PathBuf,
        holder: String,
        waited: u64,
    },
    #[error("cannot use the sealer lease {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn read_holder(file: &mut std::fs::File) -> String {
    let mut s = String::new();
    let _ = file
        .rewind()
        .and_then(|_| file.take(512).read_to_string(&mut s));
    let s = s.trim();
    if s.is_empty() {
        "holder unknown".into()
    } else {
        format!("held by {s}")
    }
}

/// Takes the lease, retrying every second up to `wait`. `holder` is written into the file for whoever
/// finds it taken (instance id, pid).
pub async fn acquire(path: &Path, holder: &str, wait: Duration) -> Result<Lease, LeaseError> {
    let io = |source| LeaseError::Io {
        path: path.to_owned(),
        source,
    };
    let start = Instant::now();
    let mut logged = false;
    loop {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .open(path)
            .map_err(io)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                lock.set_len(0).map_err(io)?;
                lock.rewind().map_err(io)?;
                lock.write_all(holder.as_bytes())
                    .and_then(|_| lock.sync_all())
                    .map_err(io)?;
                return Ok(Lease { _lock: lock });
            }
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let who = read_holder(&mut file);
                if start.elapsed() >= wait {
                    return Err(LeaseError::Held {
                        path: path.to_owned(),
                        holder: who,
                        waited: start.elapsed().as_secs(),
                    });
                }
                if !logged {
                    tracing::warn!(lease = %path.display(), %who, "another sealer holds the key's lease; waiting");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err((_, errno)) => return Err(io(std::io::Error::from(errno))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_holder_is_refused_naming_the_first_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lease");
        let first = acquire(&path, "i-aaa pid 1", Duration::ZERO).await.unwrap();
        let e = acquire(&path, "i-bbb pid 2", Duration::ZERO)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("(held by i-aaa pid 1)"), "{e}");
        drop(first);
        let _second = acquire(&path, "i-bbb pid 2", Duration::ZERO).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "i-bbb pid 2");
    }
}

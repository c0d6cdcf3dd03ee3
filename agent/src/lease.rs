//! One live sealer per key: an exclusive advisory lock on a file in the sealer's (shared) data directory,
//! held by the agent for as long as it runs its geth. A replacement instance booting while the old one
//! still seals waits for the lease, then refuses naming the holder. NFSv4 (EFS) honours these locks; a
//! holder that dies loses the lock with its process (or its NFS lease, about 90 s later).

use crate::sys::blocking::{OneAtATime, Outcome};
use crate::sys::lock::{self, Locked, TryLock};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// A held lease; released when dropped (or when the process dies).
pub struct Lease {
    lock: Locked,
    path: PathBuf,
    holder: String,
}

impl Lease {
    /// Confirms the lease is still this holder's: an I/O on the lock's own descriptor (once the NFS
    /// server has taken a lock back, the client fails I/O on that descriptor with EIO), and the file,
    /// opened again (NFS revalidates on open), still names this holder. Blocking: may wait as long as the
    /// file system does.
    fn confirm(&self) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 512];
        self.lock.read_at(&mut buf, 0).map_err(|e| {
            format!(
                "the lease's lock descriptor fails I/O ({e}): the file system took the lock back"
            )
        })?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&self.path)
            .map_err(|e| format!("cannot open {}: {e}", self.path.display()))?;
        let found = read_holder(&mut file);
        if found != format!("held by {}", self.holder) {
            return Err(format!("{} is now {found}", self.path.display()));
        }
        Ok(())
    }
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
        if let Some(lease) = try_take(path, holder).map_err(io)? {
            return Ok(lease);
        }
        let who = std::fs::File::open(path)
            .map(|mut f| read_holder(&mut f))
            .unwrap_or_else(|_| "holder unknown".into());
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
}

/// Keeps the sealer's lease for as long as the agent runs: every `interval` it is confirmed (off the
/// runtime's thread, within `interval`: on a hard NFS mount whose server is silent a check blocks for as
/// long as that lasts; one that has not answered is waited for again, never started twice). The moment
/// it is lost or cannot be confirmed, `fenced` is called with the reason (geth is killed at once, before
/// another host can take the lease: the NFS lease that protects it lasts about 90 s, far longer than one
/// interval) and the lock is let go; from then on it is taken again (never waiting) every `interval`,
/// and `held` is called once it is held and confirmed.
pub async fn keep(
    lease: Lease,
    interval: Duration,
    mut fenced: impl FnMut(&str),
    mut held: impl FnMut(),
) {
    let path = lease.path.clone();
    let holder = lease.holder.clone();
    let mut current = Some(std::sync::Arc::new(lease));
    let mut confirming = OneAtATime::default();
    let mut taking = OneAtATime::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match current.clone() {
            Some(lease) => {
                let checked = confirming.run(interval, move || lease.confirm()).await;
                let reason = match checked {
                    Outcome::Done(Ok(())) => continue,
                    Outcome::Done(Err(reason)) => reason,
                    Outcome::Failed | Outcome::Waiting(_) => format!(
                        "cannot confirm the sealer lease {} within {}s: the file system does not answer",
                        path.display(),
                        interval.as_secs_f64()
                    ),
                };
                tracing::error!(lease = %path.display(), %reason, "sealer lease lost: geth killed, and not started again until the lease is held");
                fenced(&reason);
                // The lock goes with the last reference: a check still blocked holds one until the file
                // system answers; the rest is dropped off the runtime's thread (closing a file on a
                // silent NFS server waits for it).
                confirming.forget();
                if let Some(old) = current.take() {
                    drop(tokio::task::spawn_blocking(move || drop(old)));
                }
            }
            None => {
                let (p, h) = (path.clone(), holder.clone());
                // Taken and confirmed in one step, so a lease that fails its check is let go off the
                // runtime's thread too.
                let taken = taking
                    .run(interval, move || {
                        let lease = try_take(&p, &h).ok().flatten()?;
                        lease.confirm().ok()?;
                        Some(lease)
                    })
                    .await;
                let Outcome::Done(Some(lease)) = taken else {
                    continue;
                };
                tracing::info!(lease = %path.display(), "sealer lease held again: geth may run");
                current = Some(std::sync::Arc::new(lease));
                held();
            }
        }
    }
}

/// One attempt to take the lease, without waiting: `None` when someone else holds it.
pub fn try_take(path: &Path, holder: &str) -> std::io::Result<Option<Lease>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o640)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    match lock::try_exclusive(file)? {
        TryLock::Locked(mut lock) => {
            lock.set_len(0)?;
            lock.rewind()?;
            lock.write_all(holder.as_bytes())?;
            lock.sync_all()?;
            Ok(Some(Lease {
                lock,
                path: path.to_owned(),
                holder: holder.to_owned(),
            }))
        }
        TryLock::Held(_) => Ok(None),
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

    #[tokio::test]
    async fn a_lease_renamed_by_another_holder_is_fenced_and_taken_again_once_free() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lease");
        let lease = acquire(&path, "i-aaa pid 1", Duration::ZERO).await.unwrap();
        assert_eq!(lease.confirm(), Ok(()));
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let (e1, e2) = (events.clone(), events.clone());
        let keeper = tokio::spawn(keep(
            lease,
            Duration::from_millis(100),
            move |r| e1.lock().unwrap().push(format!("fenced: {r}")),
            move || e2.lock().unwrap().push("held".into()),
        ));
        // Another host's agent took it over (its lease expired on the server, say): the file names it.
        std::fs::write(&path, "i-bbb pid 2").unwrap();
        let other = {
            let f = std::fs::OpenOptions::new().read(true).open(&path).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            // Our lock is let go once fenced; then the other holder's flock succeeds.
            loop {
                match lock::try_exclusive(f.try_clone().unwrap()).unwrap() {
                    TryLock::Locked(l) => break l,
                    TryLock::Held(_) if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    TryLock::Held(_) => panic!("never let go"),
                }
            }
        };
        let fenced_reason = events.lock().unwrap().first().cloned().unwrap();
        assert!(
            fenced_reason.contains("is now held by i-bbb pid 2"),
            "{fenced_reason}"
        );
        // While the other holds it, it is not taken again.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            events.lock().unwrap().len(),
            1,
            "{:?}",
            events.lock().unwrap()
        );
        drop(other);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !events.lock().unwrap().contains(&"held".to_owned()) {
            assert!(std::time::Instant::now() < deadline, "never held again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "i-aaa pid 1");
        keeper.abort();
    }
}

//! Advisory whole-file locks (flock(2)): one holder at a time, released when the holder drops the lock,
//! closes the file or exits, however it exits. NFSv4 (EFS) honours them too.

use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::ops::{Deref, DerefMut};

/// An exclusive lock held on a file, until dropped. Reads and writes go to the locked file.
#[derive(Debug)]
pub struct Locked(Flock<File>);

impl Deref for Locked {
    type Target = File;
    fn deref(&self) -> &File {
        &self.0
    }
}

impl DerefMut for Locked {
    fn deref_mut(&mut self) -> &mut File {
        &mut self.0
    }
}

/// What one attempt at the lock found.
#[derive(Debug)]
pub enum TryLock {
    Locked(Locked),
    /// Someone else holds it; the file is given back (to read who, say).
    Held(File),
}

/// Takes an exclusive lock on `file` without waiting.
pub fn try_exclusive(file: File) -> std::io::Result<TryLock> {
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(TryLock::Locked(Locked(lock))),
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => Ok(TryLock::Held(file)),
        Err((_, errno)) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Seek as _, Write as _};

    #[test]
    fn a_second_lock_is_refused_with_the_file_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lock");
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap()
        };
        let TryLock::Locked(mut first) = try_exclusive(open()).unwrap() else {
            panic!("not locked")
        };
        first.write_all(b"first").unwrap();
        let TryLock::Held(mut file) = try_exclusive(open()).unwrap() else {
            panic!("locked twice")
        };
        let mut text = String::new();
        file.rewind().unwrap();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "first");
        drop(first);
        assert!(matches!(try_exclusive(file).unwrap(), TryLock::Locked(_)));
    }
}

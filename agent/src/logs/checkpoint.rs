//! Durable shipping positions: which file (by identity, not name) and how far CloudWatch has accepted it.
//! Written temp + fsync + rename only after CloudWatch accepted the batch, so after a crash shipping
//! resumes there: nothing is lost, at most the last batch is sent again.

use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// A file's identity: it survives renames (rotation) and tells a new file from an old one of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// A place in a log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pos {
    pub file: FileId,
    pub offset: u64,
}

/// How many leading bytes of a file its fingerprint covers.
pub const HEAD: u64 = 256;

/// What is stored: the position, plus a fingerprint of the file's first bytes so that a new file that
/// reuses a deleted file's inode (common on ext4 right after rotation) is not mistaken for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub file: FileId,
    pub offset: u64,
    pub head_len: u64,
    pub head_hash: u64,
}

/// FNV-1a: tiny, stable across versions, plenty to tell two log files apart.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// (length, hash) of the first `min(HEAD, limit)` bytes of `file`.
pub fn fingerprint(file: &std::fs::File, limit: u64) -> std::io::Result<(u64, u64)> {
    let mut buf = vec![0u8; limit.min(HEAD) as usize];
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    Ok((got as u64, fnv1a(&buf[..got])))
}

impl Checkpoint {
    pub fn at(pos: Pos, file: &std::fs::File) -> std::io::Result<Checkpoint> {
        let (head_len, head_hash) = fingerprint(file, HEAD)?;
        Ok(Checkpoint {
            file: pos.file,
            offset: pos.offset,
            head_len,
            head_hash,
        })
    }

    /// Whether `file` (whose identity is `id`) is the file this checkpoint was taken in.
    pub fn matches(&self, id: FileId, file: &std::fs::File) -> bool {
        id == self.file
            && fingerprint(file, self.head_len)
                .is_ok_and(|(l, h)| l == self.head_len && h == self.head_hash)
    }

    /// Reads a checkpoint; a missing one is `None`, an unreadable or corrupt one is an error.
    pub fn load(path: &Path) -> std::io::Result<Option<Checkpoint>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the checkpoint atomically and durably: temp file, fsync, rename, fsync of the directory.
    pub fn store(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        Ok(crate::sys::replace::replace(path, 0o640, |f| {
            f.write_all(&bytes)
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_and_recognises_only_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        let b = dir.path().join("b.log");
        std::fs::write(&a, b"2024-05-01T12:00:00.000Z first line\nsecond\n").unwrap();
        std::fs::write(&b, b"2024-05-01T12:00:00.000Z other line\n").unwrap();
        let fa = std::fs::File::open(&a).unwrap();
        let fb = std::fs::File::open(&b).unwrap();
        let ida = FileId::of(&fa.metadata().unwrap());
        let idb = FileId::of(&fb.metadata().unwrap());
        let cp = Checkpoint::at(
            Pos {
                file: ida,
                offset: 37,
            },
            &fa,
        )
        .unwrap();
        let path = dir.path().join("cp/geth.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        cp.store(&path).unwrap();
        let back = Checkpoint::load(&path).unwrap().unwrap();
        assert_eq!(back, cp);
        assert!(back.matches(ida, &fa));
        assert!(!back.matches(idb, &fb));
        // Same identity but other content (an inode reused after deletion): not ours.
        assert!(!back.matches(ida, &fb));
        assert_eq!(
            Checkpoint::load(&dir.path().join("none.json")).unwrap(),
            None
        );
        std::fs::write(&path, b"{garbage").unwrap();
        assert!(Checkpoint::load(&path).is_err());
    }
}

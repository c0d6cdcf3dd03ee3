//! What the writer and the shipper of one log file share: the files that exist, oldest first, by
//! identity; where the shipper reads and where its checkpoint is; what was lost; and the wake-ups.

use super::Msg;
use crate::logs::checkpoint::FileId;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::mpsc;

/// A log file not yet compressed, in the order it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainFile {
    pub id: FileId,
    pub path: PathBuf,
}

/// What the writer and the shipper of one log file share.
#[derive(Debug, Default)]
pub struct ChainState {
    /// Uncompressed files, oldest first; the last one is being written.
    pub files: Vec<ChainFile>,
    /// Whether a shipper reads these files (else rotated files may be compressed at once).
    pub shipping: bool,
    /// The file the shipper reads (it holds it open, so deleting it loses nothing).
    pub reading: Option<FileId>,
    /// The file of the shipper's durable checkpoint: files before it are shipped.
    pub acked: Option<FileId>,
    /// The checkpoint's offset in that file.
    pub acked_offset: u64,
    /// Lines the writer could not write (disk full or failing).
    pub unwritten_lines: u64,
    /// Bytes rotated away before they were shipped (the buffer `keep_files × max_file_bytes` overflowed).
    pub lost_bytes: u64,
    pub rotations: u64,
}

#[derive(Debug, Default)]
pub struct Shared {
    state: Mutex<ChainState>,
    /// Wakes the shipper: new lines, or a rotation.
    pub notify: tokio::sync::Notify,
    /// Wakes the writer; weak, so it never keeps the writer from finishing.
    tick: Mutex<Option<mpsc::WeakSender<Msg>>>,
}

impl Shared {
    pub fn set_tick(&self, tx: mpsc::WeakSender<Msg>) {
        *self.tick.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    /// Asks the writer to look for files to compress.
    pub fn tick(&self) {
        let tx = self.tick.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(tx) = tx.and_then(|t| t.upgrade()) {
            let _ = tx.try_send(Msg::Tick);
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, ChainState> {
        // A panic while holding this lock aborts the process (panic = "abort"), so poison cannot be seen
        // in production; in tests the state is still consistent enough to read.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

//! One writer per log file: appends each line with a timestamp, rotates by size itself (rename + reopen,
//! so no copytruncate window can lose lines), keeps `keep_files` old files, gzips the ones already
//! shipped, and tells the shipper which files exist, oldest first, by identity.
//!
//! The writer runs on its own thread: a slow or full disk must never stall the agent's event loop, and
//! a child never waits on the disk for longer than its pipe and the line queue can absorb.
//!
//! `shared` is what the shipper sees, `rotate` the rotation by size, `compress` the gzip of shipped
//! files; this module opens, writes and runs the writer thread.

mod compress;
mod rotate;
mod shared;

use super::checkpoint::FileId;
use super::stamp;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

use rotate::{must_rotate, rotated_path, scan, Rotated};
pub use shared::{ChainFile, Shared};

/// Rotation settings (from `[logs]`).
#[derive(Debug, Clone)]
pub struct Rotation {
    pub max_file_bytes: u64,
    pub keep_files: u32,
    pub compress: bool,
}

/// What a writer receives.
#[derive(Debug)]
pub enum Msg {
    /// A line, without its newline.
    Line(Vec<u8>),
    /// The shipper moved on: old files may be compressible now.
    Tick,
}

/// Opens a log file for appending. The log directory belongs to the service user, and so may whatever is
/// planted there: a link is refused rather than followed, and a FIFO fails at once rather than blocking
/// the writer (O_NONBLOCK) and is then refused as not a regular file.
fn open_append_with(path: &Path, create: bool) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(create)
        .append(true)
        .mode(0o640)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => std::io::Error::other("is a symbolic link; remove it"),
            Some(nix::libc::ENXIO) => std::io::Error::other("is not a regular file; remove it"),
            _ => e,
        })?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("is not a regular file; remove it"));
    }
    Ok(file)
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    open_append_with(path, true)
}

/// The writer's state; lives on its own thread.
pub struct Writer {
    path: PathBuf,
    dir: PathBuf,
    name: String,
    rotation: Rotation,
    file: Option<std::fs::File>,
    size: u64,
    buf: Vec<u8>,
    buf_lines: u64,
    shared: Arc<Shared>,
    compressor: Option<std::thread::JoinHandle<()>>,
    /// (acked file, rotations, files) at the last compression check: nothing new, nothing to do.
    last_check: Option<(Option<FileId>, u64, usize)>,
    failures: u64,
}

impl Writer {
    /// Opens (appending) `path` if it exists and publishes the files that exist. Errors name nothing:
    /// the caller wraps them with the path.
    pub fn open(path: &Path, rotation: Rotation, shared: Arc<Shared>) -> std::io::Result<Writer> {
        let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Created at the first line: an absent file says the child never wrote anything.
        let file = match open_append_with(path, false) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let size = match &file {
            Some(f) => f.metadata()?.len(),
            None => 0,
        };
        let mut w = Writer {
            path: path.to_owned(),
            dir,
            name,
            rotation,
            file,
            size,
            buf: Vec::with_capacity(64 * 1024),
            buf_lines: 0,
            shared,
            compressor: None,
            last_check: None,
            failures: 0,
        };
        w.publish_chain();
        Ok(w)
    }

    /// Re-reads which uncompressed files exist, oldest first, active last.
    fn publish_chain(&mut self) {
        let mut rotated: Vec<Rotated> = scan(&self.dir, &self.name)
            .into_iter()
            .filter(|r| !r.gz)
            .collect();
        rotated.sort_by_key(|r| std::cmp::Reverse(r.index));
        let mut files: Vec<ChainFile> = rotated
            .into_iter()
            .map(|r| rotated_path(&self.path, r))
            .chain(std::iter::once(self.path.clone()))
            .filter_map(|path| {
                let meta = std::fs::metadata(&path).ok()?;
                Some(ChainFile {
                    id: FileId::of(&meta),
                    path,
                })
            })
            .collect();
        files.dedup_by_key(|f| f.id);
        self.shared.lock().files = files;
    }

    /// Queues one line (without its newline) for writing, rotating first when it would not fit.
    pub fn add(&mut self, line: &[u8], now_ms: i64) {
        let len = (stamp::PREFIX_LEN + line.len() + 1) as u64;
        if must_rotate(
            self.size + self.buf.len() as u64,
            len,
            self.rotation.max_file_bytes,
        ) {
            self.flush();
            self.rotate();
        }
        self.buf.extend_from_slice(&stamp::format(now_ms));
        self.buf.extend_from_slice(line);
        self.buf.push(b'\n');
        self.buf_lines += 1;
    }

    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes what is queued. The space is reserved first, so a full disk fails before anything is
    /// written: the shipper reads the file as it grows and must never see bytes that are then cut away.
    /// Where space cannot be reserved (a file system without fallocate) a partial write is cut off
    /// again. Either way the file only ever holds whole lines, and the lines that could not be written
    /// are counted: the child keeps running.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if self.file.is_none() {
            self.file = open_append(&self.path).ok();
            if let Some(f) = &self.file {
                self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                self.publish_chain();
            }
        }
        let result = match &mut self.file {
            Some(f) => crate::sys::reserve(f, self.size, self.buf.len()).and_then(|()| {
                f.write_all(&self.buf).inspect_err(|_| {
                    let _ = f.set_len(self.size);
                })
            }),
            None => Err(std::io::Error::other("log file is not open")),
        };
        match result {
            Ok(()) => self.size += self.buf.len() as u64,
            Err(e) => {
                self.failures += 1;
                let total = {
                    let mut s = self.shared.lock();
                    s.unwritten_lines += self.buf_lines;
                    s.unwritten_lines
                };
                if self.failures.is_power_of_two() {
                    tracing::warn!(file = %self.path.display(), error = %e, unwritten_lines = total, "cannot write log lines; the child keeps running");
                }
            }
        }
        self.buf.clear();
        self.buf_lines = 0;
        self.shared.notify.notify_one();
    }

    /// Writes what is left and waits for compression; the last thing the writer does.
    pub fn close(&mut self) {
        self.flush();
        self.wait_compressor();
        self.compress_shipped();
        self.wait_compressor();
    }

    /// The writer thread: lines from the channel until every sender is gone.
    pub fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        while let Some(msg) = rx.blocking_recv() {
            let now = stamp::now_ms();
            if let Msg::Line(line) = msg {
                self.add(&line, now);
            }
            // Everything already queued goes out in one write.
            while self.pending() < 1 << 20 {
                match rx.try_recv() {
                    Ok(Msg::Line(line)) => self.add(&line, now),
                    Ok(Msg::Tick) => {}
                    Err(_) => break,
                }
            }
            self.flush();
            self.compress_shipped();
        }
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const fn id(n: u64) -> FileId {
        FileId { dev: 1, ino: n }
    }

    pub(super) fn writer(dir: &Path, max: u64, keep: u32, compress: bool) -> (Writer, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        std::fs::write(dir.join("geth.log"), b"").unwrap();
        let w = Writer::open(
            &dir.join("geth.log"),
            Rotation {
                max_file_bytes: max,
                keep_files: keep,
                compress,
            },
            shared.clone(),
        )
        .unwrap();
        (w, shared)
    }

    pub(super) fn read_all(path: &Path) -> String {
        if path.extension().is_some_and(|e| e == "gz") {
            let mut s = String::new();
            std::io::Read::read_to_string(
                &mut flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()),
                &mut s,
            )
            .unwrap();
            s
        } else {
            std::fs::read_to_string(path).unwrap()
        }
    }

    /// A tmpfs of `size` on a temporary directory; unmounted on drop.
    struct SmallDisk(tempfile::TempDir);

    impl SmallDisk {
        fn new(size: &str) -> SmallDisk {
            let dir = tempfile::tempdir().unwrap();
            nix::mount::mount(
                Some("tmpfs"),
                dir.path(),
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some(format!("size={size}").as_str()),
            )
            .unwrap_or_else(|e| panic!("mount a tmpfs (the tests run as root): {e}"));
            SmallDisk(dir)
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn a_write_that_does_not_fit_touches_nothing_and_the_next_one_after_space_is_freed_does() {
        let disk = SmallDisk::new("64k");
        let dir = disk.0.path();
        let filler = dir.join("filler");
        std::fs::write(&filler, vec![0u8; 48 * 1024]).unwrap();
        let (mut w, shared) = writer(dir, 1 << 20, 2, false);
        let line = |i: usize| format!("line {i:04} {}", "x".repeat(90));
        for i in 0..40 {
            w.add(line(i).as_bytes(), 0);
        }
        w.flush();
        let path = dir.join("geth.log");
        let before = std::fs::metadata(&path).unwrap();
        assert_eq!(before.len(), 40 * 126);
        // 160 more lines (20 KB) do not fit in the ~11 KB left. The shipper reads the file while it is
        // written: it must never see bytes that are then cut away again, so nothing may be written.
        std::thread::sleep(std::time::Duration::from_millis(50));
        for i in 40..200 {
            w.add(line(i).as_bytes(), 0);
        }
        w.flush();
        assert_eq!(shared.lock().unwritten_lines, 160);
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(after.len(), before.len());
        assert_eq!(
            after.modified().unwrap(),
            before.modified().unwrap(),
            "the file was written to and cut back"
        );
        // Space again: the next lines go in after the whole ones.
        std::fs::remove_file(&filler).unwrap();
        w.add(line(200).as_bytes(), 0);
        w.close();
        let text = read_all(&path);
        let nums: Vec<&str> = text.lines().map(|l| &l[30..34]).collect();
        let want: Vec<String> = (0..40).chain([200]).map(|i| format!("{i:04}")).collect();
        assert_eq!(nums, want);
        assert_eq!(shared.lock().unwritten_lines, 160);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_full_disk_counts_unwritten_lines_and_leaves_only_whole_lines() {
        // /dev/full fails every write with ENOSPC.
        let Ok(full) = std::fs::OpenOptions::new().append(true).open("/dev/full") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let (mut w, shared) = writer(dir.path(), 1 << 20, 2, false);
        w.add(b"written", 0);
        w.flush();
        w.file = Some(full);
        w.add(b"lost 1", 0);
        w.add(b"lost 2", 0);
        w.flush();
        assert_eq!(shared.lock().unwritten_lines, 2);
        assert_eq!(
            read_all(&dir.path().join("geth.log")),
            "1970-01-01T00:00:00.000Z written\n"
        );
    }
}

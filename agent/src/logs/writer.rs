//! One writer per log file: appends each line with a timestamp, rotates by size itself (rename + reopen,
//! so no copytruncate window can lose lines), keeps `keep_files` old files, gzips the ones already
//! shipped, and tells the shipper which files exist, oldest first, by identity.
//!
//! The writer runs on its own thread: a slow or full disk must never stall the agent's event loop, and
//! a child never waits on the disk for longer than its pipe and the line queue can absorb.

use super::checkpoint::FileId;
use super::stamp;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// Rotation settings (from `[logs]`).
#[derive(Debug, Clone)]
pub struct Rotation {
    pub max_file_bytes: u64,
    pub keep_files: u32,
    pub compress: bool,
}

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

/// What a writer receives.
#[derive(Debug)]
pub enum Msg {
    /// A line, without its newline.
    Line(Vec<u8>),
    /// The shipper moved on: old files may be compressible now.
    Tick,
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

/// Whether a line of `incoming` bytes must go to a fresh file. A file always takes at least one line, so
/// a line longer than the limit is written whole rather than lost.
pub fn must_rotate(size: u64, incoming: u64, max: u64) -> bool {
    size > 0 && size + incoming > max
}

/// An old file on disk: `<name>.<index>` or `<name>.<index>.gz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotated {
    pub index: u32,
    pub gz: bool,
}

/// One step of a rotation, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Delete(Rotated),
    /// `<name>.<index>[.gz]` → `<name>.<index + 1>[.gz]`.
    Shift(Rotated),
    /// `<name>` → `<name>.1`; a new `<name>` is opened after.
    Retire,
}

/// The steps that rotate `<name>` when these old files exist, keeping `keep` (≥ 1) old files.
/// Oldest first, so no rename replaces a file that is still to be moved.
pub fn rotation_steps(existing: &[Rotated], keep: u32) -> Vec<Step> {
    let mut old = existing.to_vec();
    old.sort_by_key(|r| std::cmp::Reverse(r.index));
    let mut steps: Vec<Step> = old
        .into_iter()
        .map(|r| {
            if r.index >= keep {
                Step::Delete(r)
            } else {
                Step::Shift(r)
            }
        })
        .collect();
    steps.push(Step::Retire);
    steps
}

/// Rotated files that may be compressed: every one but the active file when nothing ships them, else
/// those before the shipper's checkpoint file (it never needs them again).
pub fn compressible(files: &[FileId], acked: Option<FileId>, shipping: bool) -> Vec<FileId> {
    let rotated = &files[..files.len().saturating_sub(1)];
    let done = if shipping {
        acked
            .and_then(|a| files.iter().position(|f| *f == a))
            .unwrap_or(0)
            .min(rotated.len())
    } else {
        rotated.len()
    };
    rotated[..done].to_vec()
}

/// Whether deleting `target` loses lines: only when a shipper has not reached it yet.
pub fn lost_if_deleted(
    files: &[FileId],
    target: FileId,
    reading: Option<FileId>,
    shipping: bool,
) -> bool {
    let Some(reading) = reading.filter(|_| shipping) else {
        return false;
    };
    match (
        files.iter().position(|f| *f == reading),
        files.iter().position(|f| *f == target),
    ) {
        (Some(r), Some(t)) => t > r,
        // The shipper is on a file already deleted (it holds it open): everything here is ahead of it.
        (None, _) => true,
        (Some(_), None) => false,
    }
}

/// The old files of `name` in `dir`.
pub fn scan(dir: &Path, name: &str) -> Vec<Rotated> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let f = e.file_name();
        let Some(rest) = f
            .to_str()
            .and_then(|f| f.strip_prefix(name)?.strip_prefix('.'))
        else {
            continue;
        };
        let (num, gz) = match rest.strip_suffix(".gz") {
            Some(n) => (n, true),
            None => (rest, false),
        };
        if let Ok(index) = num.parse::<u32>() {
            if index > 0 && num.bytes().all(|b| b.is_ascii_digit()) {
                out.push(Rotated { index, gz });
            }
        }
    }
    out
}

pub fn rotated_path(base: &Path, r: Rotated) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(format!(".{}{}", r.index, if r.gz { ".gz" } else { "" }));
    PathBuf::from(s)
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

    fn wait_compressor(&mut self) {
        if let Some(c) = self.compressor.take() {
            let _ = c.join();
        }
    }

    /// Rename + reopen: every line before this is in the renamed file, every line after in the new one.
    fn rotate(&mut self) {
        self.wait_compressor();
        let steps = rotation_steps(
            &scan(&self.dir, &self.name),
            self.rotation.keep_files.max(1),
        );
        for step in steps {
            let result = match step {
                Step::Delete(r) => {
                    let path = rotated_path(&self.path, r);
                    self.account_deletion(&path);
                    std::fs::remove_file(&path)
                }
                Step::Shift(r) => std::fs::rename(
                    rotated_path(&self.path, r),
                    rotated_path(
                        &self.path,
                        Rotated {
                            index: r.index + 1,
                            ..r
                        },
                    ),
                ),
                Step::Retire => std::fs::rename(
                    &self.path,
                    rotated_path(
                        &self.path,
                        Rotated {
                            index: 1,
                            gz: false,
                        },
                    ),
                ),
            };
            if let Err(e) = result {
                // Keep writing to the current file: a failed rotation must not lose lines.
                tracing::warn!(file = %self.path.display(), ?step, error = %e, "log rotation step failed");
                if step == Step::Retire {
                    self.publish_chain();
                    return;
                }
            }
        }
        self.file = open_append(&self.path).ok();
        self.size = 0;
        self.publish_chain();
        self.shared.lock().rotations += 1;
        self.shared.notify.notify_one();
        self.compress_shipped();
    }

    fn account_deletion(&self, path: &Path) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        let target = FileId::of(&meta);
        let mut s = self.shared.lock();
        let ids: Vec<FileId> = s.files.iter().map(|f| f.id).collect();
        if lost_if_deleted(&ids, target, s.reading, s.shipping) {
            s.lost_bytes += meta.len();
            let lost = s.lost_bytes;
            drop(s);
            tracing::error!(file = %path.display(), bytes = meta.len(), lost_bytes = lost, "deleting an old log file that was not shipped yet (keep_files × max_file_bytes too small for the outage)");
        }
    }

    /// Starts compressing the rotated files the shipper is done with, when there are any.
    pub fn compress_shipped(&mut self) {
        if !self.rotation.compress {
            return;
        }
        if let Some(c) = &self.compressor {
            if !c.is_finished() {
                return;
            }
            self.wait_compressor();
        }
        let todo: Vec<ChainFile> = {
            let s = self.shared.lock();
            let key = Some((s.acked, s.rotations, s.files.len()));
            if key == self.last_check {
                return;
            }
            self.last_check = key;
            let ids: Vec<FileId> = s.files.iter().map(|f| f.id).collect();
            let ok = compressible(&ids, s.acked, s.shipping);
            s.files
                .iter()
                .filter(|f| ok.contains(&f.id))
                .cloned()
                .collect()
        };
        if todo.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        self.compressor = std::thread::Builder::new()
            .name("log-gzip".into())
            .spawn(move || {
                for f in todo {
                    match gzip(&f.path) {
                        Ok(()) => shared.lock().files.retain(|c| c.id != f.id),
                        Err(e) => {
                            tracing::warn!(file = %f.path.display(), error = %e, "cannot compress old log file; keeping it as is")
                        }
                    }
                }
            })
            .ok();
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

/// `<path>` → `<path>.gz` (temp + fsync + rename), then removes `<path>`.
fn gzip(path: &Path) -> std::io::Result<()> {
    let mut gz_path = path.as_os_str().to_owned();
    gz_path.push(".gz");
    let gz_path = PathBuf::from(gz_path);
    let mut tmp = gz_path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut src = std::fs::File::open(path)?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o640)
        .open(&tmp)?;
    let mut enc =
        flate2::write::GzEncoder::new(std::io::BufWriter::new(out), flate2::Compression::default());
    std::io::copy(&mut src, &mut enc)?;
    let out = enc.finish()?.into_inner().map_err(|e| e.into_error())?;
    out.sync_all()?;
    std::fs::rename(&tmp, &gz_path)?;
    std::fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn id(n: u64) -> FileId {
        FileId { dev: 1, ino: n }
    }

    fn r(index: u32, gz: bool) -> Rotated {
        Rotated { index, gz }
    }

    #[test]
    fn rotation_happens_only_when_the_next_line_would_cross_the_limit() {
        assert!(!must_rotate(0, 10, 100));
        assert!(!must_rotate(90, 10, 100));
        assert!(must_rotate(91, 10, 100));
        // A line longer than the limit still goes whole into a fresh file.
        assert!(!must_rotate(0, 500, 100));
        assert!(must_rotate(1, 500, 100));
    }

    #[test]
    fn rotation_shifts_oldest_first_and_deletes_beyond_keep() {
        let existing = [r(1, false), r(3, true), r(2, true), r(4, true), r(5, true)];
        assert_eq!(
            rotation_steps(&existing, 5),
            [
                Step::Delete(r(5, true)),
                Step::Shift(r(4, true)),
                Step::Shift(r(3, true)),
                Step::Shift(r(2, true)),
                Step::Shift(r(1, false)),
                Step::Retire,
            ]
        );
        assert_eq!(rotation_steps(&[], 5), [Step::Retire]);
        // keep lowered: everything at or beyond it goes.
        assert_eq!(
            rotation_steps(&[r(1, false), r(2, false), r(3, false)], 2),
            [
                Step::Delete(r(3, false)),
                Step::Delete(r(2, false)),
                Step::Shift(r(1, false)),
                Step::Retire,
            ]
        );
    }

    #[test]
    fn only_files_the_shipper_is_done_with_are_compressed() {
        let files = [id(1), id(2), id(3), id(4)];
        assert_eq!(compressible(&files, Some(id(3)), true), [id(1), id(2)]);
        assert_eq!(
            compressible(&files, Some(id(4)), true),
            [id(1), id(2), id(3)]
        );
        assert_eq!(compressible(&files, Some(id(1)), true), []);
        assert_eq!(compressible(&files, None, true), []);
        // The active file never is, and without shipping every old file is.
        assert_eq!(compressible(&files, None, false), [id(1), id(2), id(3)]);
        assert_eq!(compressible(&[id(9)], Some(id(9)), true), []);
    }

    #[test]
    fn deleting_a_file_loses_lines_only_ahead_of_the_shipper() {
        let files = [id(1), id(2), id(3)];
        assert!(
            !lost_if_deleted(&files, id(1), Some(id(1)), true),
            "held open by the shipper"
        );
        assert!(!lost_if_deleted(&files, id(1), Some(id(2)), true));
        assert!(lost_if_deleted(&files, id(2), Some(id(1)), true));
        assert!(
            lost_if_deleted(&files, id(1), Some(id(7)), true),
            "shipper behind every file"
        );
        assert!(
            !lost_if_deleted(&files, id(1), Some(id(7)), false),
            "nothing ships"
        );
        assert!(!lost_if_deleted(&files, id(1), None, true));
    }

    #[test]
    fn scanning_finds_only_this_files_old_generations() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "geth.log",
            "geth.log.1",
            "geth.log.2.gz",
            "geth.log.10",
            "geth.log.3.gz.tmp",
            "geth.log.x",
            "geth.log.0",
            "bootnode.log.1",
            "geth.logx.1",
        ] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let mut found = scan(dir.path(), "geth.log");
        found.sort_by_key(|r| r.index);
        assert_eq!(found, [r(1, false), r(2, true), r(10, false)]);
    }

    fn writer(dir: &Path, max: u64, keep: u32, compress: bool) -> (Writer, Arc<Shared>) {
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

    fn read_all(path: &Path) -> String {
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

    #[test]
    fn rotation_keeps_every_line_in_order_across_files_and_bounds_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, shared) = writer(dir.path(), 1000, 3, false);
        for i in 0..60 {
            w.add(format!("line {i:03} {}", "x".repeat(40)).as_bytes(), 0);
            w.flush();
        }
        w.close();
        let names = ["geth.log.3", "geth.log.2", "geth.log.1", "geth.log"];
        let text: String = names
            .iter()
            .map(|n| read_all(&dir.path().join(n)))
            .collect();
        let lines: Vec<&str> = text.lines().collect();
        // 75 bytes a line, 13 lines a file: the newest 4 files hold the last 48 lines, in order.
        assert_eq!(lines.len(), 13 * 3 + 60 % 13);
        assert!(lines
            .iter()
            .all(|l| l.starts_with("1970-01-01T00:00:00.000Z line ")));
        let nums: Vec<usize> = lines.iter().map(|l| l[30..33].parse().unwrap()).collect();
        assert_eq!(nums, (60 - nums.len()..60).collect::<Vec<_>>());
        assert!(!dir.path().join("geth.log.4").exists());
        for n in names {
            assert!(std::fs::metadata(dir.path().join(n)).unwrap().len() <= 1000);
        }
        let s = shared.lock();
        assert_eq!(s.rotations, 4);
        assert_eq!(s.files.len(), 4);
        assert_eq!(s.lost_bytes, 0, "nothing ships, so nothing is lost");
    }

    #[test]
    fn rotated_files_are_compressed_only_once_shipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, shared) = writer(dir.path(), 1000, 5, true);
        shared.lock().shipping = true;
        let first = shared.lock().files[0].id;
        shared.lock().reading = Some(first);
        shared.lock().acked = Some(first);
        for i in 0..30 {
            w.add(format!("line {i:03} {}", "x".repeat(40)).as_bytes(), 0);
            w.flush();
        }
        w.wait_compressor();
        assert!(dir.path().join("geth.log.2").exists() && dir.path().join("geth.log.1").exists());
        assert!(
            !dir.path().join("geth.log.2.gz").exists(),
            "not shipped yet"
        );
        // The shipper moves on to the newest file: both old ones are done.
        let newest = shared.lock().files.last().unwrap().id;
        shared.lock().acked = Some(newest);
        w.compress_shipped();
        w.close();
        assert!(!dir.path().join("geth.log.2").exists());
        let text = read_all(&dir.path().join("geth.log.2.gz"))
            + &read_all(&dir.path().join("geth.log.1.gz"));
        assert_eq!(text.lines().count(), 26);
        assert!(text
            .lines()
            .next()
            .unwrap()
            .ends_with(&format!("line 000 {}", "x".repeat(40))));
        assert_eq!(shared.lock().files.len(), 1);
    }

    #[test]
    fn deleting_unshipped_files_is_counted_as_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, shared) = writer(dir.path(), 1000, 1, false);
        let first = shared.lock().files[0].id;
        // The shipper holds the file it reads open (which also keeps its inode from being reused).
        let _held = std::fs::File::open(dir.path().join("geth.log")).unwrap();
        {
            let mut s = shared.lock();
            s.shipping = true;
            s.reading = Some(first);
        }
        for i in 0..40 {
            w.add(format!("line {i:03} {}", "x".repeat(40)).as_bytes(), 0);
            w.flush();
        }
        w.close();
        // Files: #1 (read by the shipper, deleted: not lost), #2 deleted unread: lost.
        assert_eq!(shared.lock().lost_bytes, 13 * 75);
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

//! Rotation by size: when a line must go to a fresh file, the renames that make room for it (oldest
//! first, beyond `keep_files` deleted), and what deleting a file not yet shipped loses.

use super::{open_append, Writer};
use crate::logs::checkpoint::FileId;
use std::path::{Path, PathBuf};

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

impl Writer {
    /// Rename + reopen: every line before this is in the renamed file, every line after in the new one.
    pub(super) fn rotate(&mut self) {
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::{id, read_all, writer};
    use super::*;

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
}

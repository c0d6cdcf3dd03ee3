//! Chain backups: the blocks a full node has, exported in segment files that never change once they
//! are visible, listed in a manifest, checked, and restored into an empty datadir.
//!
//! - `segment`: what a segment file holds (its blocks' range and hashes), read from the file itself;
//! - this file: the manifest, the names, which ranges a round still has to export (pure), the
//!   exporter's lock, and `--list` / `--verify`;
//! - `export`: one round on the running node (`admin_exportChain` into a hidden file, fsync, verify,
//!   rename, manifest), and the task that runs a round every interval;
//! - `restore`: `geth init` + `geth import` of the segments in order into an empty datadir, checked.
//!
//! Segments are never rewritten: what a round finds half-written from a round that died is a hidden
//! `.partial-…` file, never in the manifest, removed and redone by the next round.

pub mod export;
pub mod restore;
pub mod segment;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The sentinel of the backups' directory names this instead of a role: every role may use it.
pub const SENTINEL_ROLE: &str = "backups";
pub const MANIFEST: &str = "manifest.json";
/// The exporter's lock: one exporter per environment.
pub const LOCK: &str = ".exporter.lock";
const PARTIAL: &str = ".partial-";

/// `manifest.json`: whose chain, and every segment in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub environment: String,
    pub network_id: u64,
    /// sha256 of the genesis file the exporting node was initialised with.
    pub genesis_sha256: String,
    /// Block 0's hash, as the exporting node reported it.
    pub genesis_hash: String,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub file: String,
    pub first: u64,
    pub first_hash: String,
    pub last: u64,
    pub last_hash: String,
    pub sha256: String,
    pub bytes: u64,
    pub created_at: u64,
    pub exported_by: String,
}

impl Manifest {
    /// The last block the segments cover without a gap from block 1 (0: none).
    pub fn covered_to(&self) -> u64 {
        let mut to = 0;
        for s in &self.segments {
            if s.first != to + 1 {
                break;
            }
            to = s.last;
        }
        to
    }

    pub fn newest(&self) -> Option<&Segment> {
        self.segments.last()
    }
}

/// The file name of the segment `first..=last`: sorts in block order.
pub fn segment_name(first: u64, last: u64) -> String {
    format!("{first:012}-{last:012}.rlp.gz")
}

/// The hidden name geth writes a segment under until it is checked.
pub fn partial_name(first: u64, last: u64, instance_id: &str) -> String {
    format!("{PARTIAL}{instance_id}-{}", segment_name(first, last))
}

pub fn is_partial(name: &str) -> bool {
    name.starts_with(PARTIAL)
}

/// The ranges a round exports: from after `covered_to` up to `confirmations` blocks behind `head`, in
/// segments of at most `segment_blocks`. Pure.
pub fn next_ranges(
    covered_to: u64,
    head: u64,
    confirmations: u64,
    segment_blocks: u64,
) -> Vec<(u64, u64)> {
    let finished = head.saturating_sub(confirmations);
    let mut out = Vec::new();
    let mut from = covered_to + 1;
    while from <= finished {
        let to = finished.min(from + segment_blocks.max(1) - 1);
        out.push((from, to));
        from = to + 1;
    }
    out
}

/// Why the backups cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup: no manifest in {dir}: no backup has been made there yet (the exporting node writes one every backup.interval_secs; `node-agent backup --now` on it makes one now)")]
    NoManifest { dir: PathBuf },
    #[error("backup: {path}: {cause}")]
    Bad { path: PathBuf, cause: String },
    #[error("backup: {0}")]
    Refused(String),
}

/// Reads the manifest of `dir`; `None` when there is none yet.
pub fn read_manifest(dir: &Path) -> Result<Option<Manifest>, BackupError> {
    let path = dir.join(MANIFEST);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| BackupError::Bad {
                path,
                cause: format!("not a node-agent backup manifest ({e})"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(BackupError::Bad {
            path,
            cause: e.to_string(),
        }),
    }
}

/// Who holds the exporter's lock of `dir`, as its file says; `None` when nobody wrote it.
pub fn lock_holder(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(LOCK)).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// One line per segment for `backup --list`, newest last.
pub fn list(manifest: &Manifest, now: u64) -> String {
    let mut out = format!(
        "backups of {} (network {}), blocks 1-{} in {} segments\n",
        manifest.environment,
        manifest.network_id,
        manifest.covered_to(),
        manifest.segments.len()
    );
    for s in &manifest.segments {
        out += &format!(
            "  {}  #{}-#{}  {} blocks  {}  {} old  by {}\n",
            s.file,
            s.first,
            s.last,
            s.last - s.first + 1,
            crate::status::bytes(s.bytes),
            crate::status::ago(now.saturating_sub(s.created_at)),
            s.exported_by
        );
    }
    out
}

/// Checks every segment of the manifest against its file: the bytes' sha256, the block range and the
/// first and last hashes. One line per problem; empty when all is well.
pub fn verify(dir: &Path, manifest: &Manifest) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expect_first = 1;
    let mut parent = manifest.genesis_hash.clone();
    for s in &manifest.segments {
        if s.first != expect_first {
            problems.push(format!(
                "{}: starts at #{}, but the segments before end at #{}",
                s.file,
                s.first,
                expect_first - 1
            ));
        }
        expect_first = s.last + 1;
        match segment::read(&dir.join(&s.file)) {
            Err(e) => problems.push(e),
            Ok(found) => {
                if let Some(why) = mismatch(s, &found) {
                    problems.push(format!("{}: {why}", s.file));
                } else if found.first_parent != parent {
                    problems.push(format!(
                        "{}: its first block's parent is {}, not the block before's hash {parent}",
                        s.file, found.first_parent
                    ));
                }
            }
        }
        parent = s.last_hash.clone();
    }
    problems
}

/// How a file differs from what the manifest says of it.
pub fn mismatch(s: &Segment, found: &segment::Summary) -> Option<String> {
    if found.sha256 != s.sha256 {
        return Some(format!(
            "sha256 {} differs from the manifest's {} (the file changed after it was written)",
            found.sha256, s.sha256
        ));
    }
    if (found.first, found.last) != (s.first, s.last) {
        return Some(format!(
            "holds #{}-#{}, the manifest says #{}-#{}",
            found.first, found.last, s.first, s.last
        ));
    }
    if found.first_hash != s.first_hash || found.last_hash != s.last_hash {
        return Some("its block hashes differ from the manifest's".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_exports_the_finished_blocks_after_the_backup_in_segments() {
        assert_eq!(next_ranges(0, 100, 120, 10), vec![]);
        assert_eq!(next_ranges(0, 125, 120, 10), vec![(1, 5)]);
        assert_eq!(
            next_ranges(0, 145, 20, 50),
            vec![(1, 50), (51, 100), (101, 125)]
        );
        assert_eq!(next_ranges(125, 145, 20, 50), vec![]);
        assert_eq!(next_ranges(125, 146, 20, 50), vec![(126, 126)]);
    }

    fn seg(first: u64, last: u64) -> Segment {
        Segment {
            file: segment_name(first, last),
            first,
            first_hash: String::new(),
            last,
            last_hash: String::new(),
            sha256: String::new(),
            bytes: 0,
            created_at: 0,
            exported_by: "i-1".into(),
        }
    }

    #[test]
    fn coverage_stops_at_the_first_gap_and_names_sort_in_block_order() {
        let mut m = Manifest {
            format: 1,
            environment: "e".into(),
            network_id: 1,
            genesis_sha256: String::new(),
            genesis_hash: String::new(),
            segments: vec![seg(1, 10), seg(11, 20)],
        };
        assert_eq!(m.covered_to(), 20);
        m.segments.push(seg(30, 40));
        assert_eq!(m.covered_to(), 20);
        assert!(segment_name(9, 10) < segment_name(11, 20));
        assert!(is_partial(&partial_name(1, 2, "i-1")));
        assert!(!is_partial(&segment_name(1, 2)));
    }
}

//! Restoring, offline (geth holds its datadir's lock, so nothing runs on it): the backups are checked
//! against their manifest first, then the datadir gets the pinned genesis (`geth init`), every segment in
//! order (`geth import`, its progress shown as blocks per second and the time left), and finally its
//! head is read back (`geth export` of the last block) and compared with the manifest's last hash.
//! Used by `node-agent restore --into DATADIR` and by a node seeding its empty datadir at boot.

use super::{read_manifest, segment, verify, BackupError, Manifest};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;
use tokio::io::AsyncBufReadExt;

/// What a restore is given.
pub struct Restore<'a> {
    pub geth: &'a Path,
    /// The pinned genesis, as checked at start.
    pub genesis: &'a [u8],
    /// Where `geth init` reads it from.
    pub genesis_file: &'a Path,
    /// The backups' directory.
    pub dir: &'a Path,
    pub datadir: &'a Path,
}

/// The restored chain's head.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    pub head: u64,
    pub head_hash: String,
    pub blocks_per_sec: f64,
}

fn refused(s: String) -> BackupError {
    BackupError::Refused(s)
}

impl Restore<'_> {
    /// Checks the backups and that they fit this chain and this datadir, before anything is written.
    pub fn check(&self) -> Result<Manifest, BackupError> {
        let manifest = read_manifest(self.dir)?.ok_or_else(|| BackupError::NoManifest {
            dir: self.dir.to_owned(),
        })?;
        let ours = crate::chain::geth::genesis_sha256(self.genesis);
        if manifest.genesis_sha256 != ours {
            return Err(refused(format!(
                "the backups in {} were made from another genesis (sha256 {}, this host's is {ours}): restore them only with the genesis their chain began with",
                self.dir.display(),
                manifest.genesis_sha256
            )));
        }
        if manifest.covered_to() == 0 {
            return Err(refused(format!(
                "{} lists no segment yet: nothing to restore",
                self.dir.display()
            )));
        }
        if self.datadir.join("geth/chaindata").exists() {
            return Err(refused(format!(
                "{} already holds a chain: restore only into an empty datadir",
                self.datadir.display()
            )));
        }
        if let Some(problem) = verify(self.dir, &manifest).into_iter().next() {
            return Err(refused(format!(
                "{problem}; `node-agent backup --verify` lists every problem"
            )));
        }
        Ok(manifest)
    }

    /// Restores into the datadir; `progress` gets one line at most every second.
    pub async fn run(&self, mut progress: impl FnMut(&str)) -> Result<Restored, BackupError> {
        let manifest = self.check()?;
        let last = manifest.covered_to();
        let datadir = self.datadir.display().to_string();
        let genesis = self.genesis_file.display().to_string();
        self.geth(&["init", "--datadir", &datadir, &genesis], &mut |_| {})
            .await?;
        let mut args = vec!["import".to_owned(), "--datadir".into(), datadir.clone()];
        let files: Vec<PathBuf> = manifest
            .segments
            .iter()
            .take_while(|s| s.last <= last)
            .map(|s| self.dir.join(&s.file))
            .collect();
        args.extend(files.iter().map(|f| f.display().to_string()));
        let start = Instant::now();
        let mut shown = Instant::now();
        let mut on_line = |line: &str| {
            let Some(n) = number_in(line) else { return };
            if shown.elapsed().as_secs() < 1 {
                return;
            }
            shown = Instant::now();
            progress(&progress_line(n, last, start.elapsed().as_secs_f64()));
        };
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.geth(&refs, &mut on_line).await?;
        let secs = start.elapsed().as_secs_f64();
        // The head, read back from the datadir itself.
        let scratch = tempfile::tempdir()
            .map_err(|e| refused(format!("cannot make a scratch directory: {e}")))?;
        let out = scratch.path().join("head.rlp");
        let (o, n) = (out.display().to_string(), last.to_string());
        self.geth(&["export", "--datadir", &datadir, &o, &n, &n], &mut |_| {})
            .await?;
        let head = segment::read(&out).map_err(refused)?;
        let want = manifest
            .segments
            .iter()
            .find(|s| s.last == last)
            .map(|s| s.last_hash.clone());
        if Some(&head.last_hash) != want.as_ref() {
            return Err(refused(format!(
                "after the import, block #{last} of {datadir} is {}, but the backup's is {}",
                head.last_hash,
                want.unwrap_or_default()
            )));
        }
        Ok(Restored {
            head: last,
            head_hash: head.last_hash,
            blocks_per_sec: last as f64 / secs.max(0.001),
        })
    }

    /// Runs geth with `args`, each line of its log to `line`; fails with its last `Fatal` line.
    async fn geth(&self, args: &[&str], line: &mut dyn FnMut(&str)) -> Result<(), BackupError> {
        let what = format!("geth {}", args[0]);
        let mut child = tokio::process::Command::new(self.geth)
            .args(args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| refused(format!("cannot run {}: {e}", self.geth.display())))?;
        let mut last_fatal = None;
        let mut last_line = String::new();
        if let Some(err) = child.stderr.take() {
            let mut lines = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                line(&l);
                if l.contains("Fatal") {
                    last_fatal = Some(l.clone());
                }
                if !l.trim().is_empty() {
                    last_line = l;
                }
            }
        }
        let status = child
            .wait()
            .await
            .map_err(|e| refused(format!("{what}: {e}")))?;
        if status.success() {
            return Ok(());
        }
        Err(refused(format!(
            "{what} failed ({status}): {}",
            last_fatal.unwrap_or(last_line).trim()
        )))
    }
}

/// The block number a geth import log line reports (`number=1234`).
fn number_in(line: &str) -> Option<u64> {
    let at = line.find("number=")? + "number=".len();
    // geth's terminal format writes large numbers with thousands separators (number=1,234,567).
    let digits: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .collect();
    digits.replace(',', "").parse().ok()
}

/// `restored #4000 of #10000, 2000 blocks/s, about 3s left`.
pub fn progress_line(done: u64, last: u64, secs: f64) -> String {
    let rate = done as f64 / secs.max(0.001);
    let left = (last.saturating_sub(done)) as f64 / rate.max(0.001);
    format!(
        "restored #{done} of #{last}, {rate:.0} blocks/s, about {} left",
        crate::status::ago(left.ceil() as u64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_read_from_imports_log_and_shown_with_rate_and_time_left() {
        let line = "INFO [12-01|03:00:00.000] Imported new chain segment               number=4000 hash=ab..cd blocks=2048";
        assert_eq!(number_in(line), Some(4000));
        assert_eq!(number_in("INFO Importing blockchain file=x"), None);
        assert_eq!(
            number_in("Imported new chain segment number=1,234,567 hash=x"),
            Some(1_234_567)
        );
        assert_eq!(
            progress_line(4000, 10_000, 2.0),
            "restored #4000 of #10000, 2000 blocks/s, about 3s left"
        );
    }
}

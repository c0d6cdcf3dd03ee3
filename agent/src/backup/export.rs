//! Exporting, on the running node: a round writes each finished range the backup lacks with
//! `admin_exportChain` into a hidden file, makes it durable (fsync), checks it block by block against
//! the node, renames it into place and records it in the manifest (written the same way). The task
//! holds the environment's exporter lock, runs a round every interval or when `backup --now` asks, and
//! publishes what status shows. A node that finds the lock held stands by and tries again each interval.

use super::{next_ranges, partial_name, read_manifest, segment, segment_name, Manifest, Segment};
use crate::chain::ipc::{ipc_call, ipc_call_within};
use crate::config::ExportSettings;
use crate::status::model::{BackupStatus, NewestSegment};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// What a round needs to know.
#[derive(Debug, Clone)]
pub struct Exporter {
    /// The backups' directory as prepared (mounted and guarded by its sentinel).
    pub place: crate::config::StorageSettings,
    pub dir: PathBuf,
    pub ipc: PathBuf,
    pub settings: ExportSettings,
    pub instance_id: String,
    pub environment: String,
    pub network_id: u64,
    pub genesis_sha256: String,
}

/// `backup --now`: a round, answered in one line.
pub type Ask = crate::status::BackupAsk;

async fn call(ipc: &Path, method: &str, params: Value) -> Result<Value, String> {
    ipc_call(ipc, method, params)
        .await
        .map_err(|e| e.to_string())
}

/// The hash the node has for block `n`.
async fn hash_of(ipc: &Path, n: u64) -> Result<String, String> {
    let b = call(
        ipc,
        "eth_getBlockByNumber",
        json!([format!("0x{n:x}"), false]),
    )
    .await?;
    b.get("hash")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("the node has no block #{n}"))
}

/// Runs `f` off the runtime's thread (file I/O on NFS may block).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("file I/O task failed: {e}"))?
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot fsync {}: {e}", dir.display()))
}

impl Exporter {
    /// One round: every finished range not yet backed up, in order. Stops at the first failure (what
    /// was written before it stays).
    pub async fn round(&self) -> Result<Vec<Segment>, String> {
        // Never onto the local disk under an EFS mount point that is not mounted.
        let place = self.place.clone();
        blocking(move || {
            crate::storage::still_in_place(&place)
                .map_err(|e| format!("the backups' directory is not in place: {e}"))
        })
        .await?;
        let head = call(&self.ipc, "eth_blockNumber", json!([])).await?;
        let head = head
            .as_str()
            .and_then(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).ok())
            .ok_or_else(|| format!("eth_blockNumber answered {head}"))?;
        let genesis_hash = hash_of(&self.ipc, 0).await?;
        let dir = self.dir.clone();
        let found = blocking(move || read_manifest(&dir).map_err(|e| e.to_string())).await?;
        let mut manifest = match found {
            Some(m) if m.genesis_hash != genesis_hash => {
                return Err(format!(
                    "{} holds backups of another chain (genesis {}; this node's is {genesis_hash}): point backup.path_template elsewhere",
                    self.dir.display(),
                    m.genesis_hash
                ))
            }
            Some(m) => m,
            None => Manifest {
                format: 1,
                environment: self.environment.clone(),
                network_id: self.network_id,
                genesis_sha256: self.genesis_sha256.clone(),
                genesis_hash,
                segments: Vec::new(),
            },
        };
        self.remove_partials().await?;
        let s = &self.settings;
        let mut written = Vec::new();
        for (first, last) in next_ranges(
            manifest.covered_to(),
            head,
            s.confirmations,
            s.segment_blocks,
        ) {
            let parent = match manifest.newest() {
                Some(s) => s.last_hash.clone(),
                None => manifest.genesis_hash.clone(),
            };
            let segment = self.export(first, last, &parent).await?;
            manifest.segments.push(segment.clone());
            let bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
            let path = self.dir.join(super::MANIFEST);
            // Durably: the one atomic write (temp file, fsync, rename, fsync of the directory).
            blocking(move || {
                crate::sys::replace::replace(&path, 0o644, |f| std::io::Write::write_all(f, &bytes))
                    .map_err(|e| e.to_string())
            })
            .await?;
            tracing::info!(first, last, file = %segment.file, bytes = segment.bytes, "backup segment written");
            written.push(segment);
        }
        Ok(written)
    }

    /// What a round that died left behind: hidden, never in the manifest, redone from scratch.
    async fn remove_partials(&self) -> Result<(), String> {
        let dir = self.dir.clone();
        blocking(move || {
            let entries = std::fs::read_dir(&dir)
                .map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if super::is_partial(&name) {
                    std::fs::remove_file(e.path())
                        .map_err(|err| format!("cannot remove {name}: {err}"))?;
                    tracing::info!(file = %name, "removed a segment a round left half-written");
                }
            }
            Ok(())
        })
        .await
    }

    /// Exports `first..=last` and checks it; returns its manifest entry once it is in place.
    async fn export(&self, first: u64, last: u64, parent: &str) -> Result<Segment, String> {
        let partial = self.dir.join(partial_name(first, last, &self.instance_id));
        let limit = Duration::from_secs(60) + Duration::from_millis(10) * (last - first + 1) as u32;
        let file = partial.display().to_string();
        let done = ipc_call_within(
            &self.ipc,
            "admin_exportChain",
            json!([file, first, last]),
            limit,
        )
        .await
        .map_err(|e| format!("exporting #{first}-#{last}: {e}"))?;
        if done != Value::Bool(true) {
            return Err(format!(
                "admin_exportChain #{first}-#{last} answered {done}"
            ));
        }
        let p = partial.clone();
        let found = blocking(move || {
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("cannot fsync {}: {e}", p.display()))?;
            segment::read(&p)
        })
        .await?;
        if found.first_parent != parent {
            return Err(format!(
                "the export of #{first}-#{last} begins with a block whose parent is {}, not #{}'s hash {parent}",
                found.first_parent,
                first - 1
            ));
        }
        if (found.first, found.last, found.blocks) != (first, last, last - first + 1) {
            return Err(format!(
                "the export of #{first}-#{last} holds #{}-#{} ({} blocks)",
                found.first, found.last, found.blocks
            ));
        }
        for (n, hash) in [(first, &found.first_hash), (last, &found.last_hash)] {
            let node = hash_of(&self.ipc, n).await?;
            if &node != hash {
                return Err(format!(
                    "the export's block #{n} is {hash}, the node's is {node} (a reorganisation during the export?)"
                ));
            }
        }
        let name = segment_name(first, last);
        let (from, to) = (partial, self.dir.join(&name));
        blocking(move || {
            std::fs::rename(&from, &to)
                .map_err(|e| format!("cannot rename {}: {e}", from.display()))?;
            sync_dir(to.parent().unwrap_or(Path::new(".")))
        })
        .await?;
        Ok(Segment {
            file: name,
            first,
            first_hash: found.first_hash,
            last,
            last_hash: found.last_hash,
            sha256: found.sha256,
            bytes: found.bytes,
            created_at: crate::clock::now_unix(),
            exported_by: self.instance_id.clone(),
        })
    }
}

/// A round's outcome for people.
fn summary(written: &[Segment], covered_to: u64) -> String {
    match written {
        [] => format!("nothing new to export: blocks 1-{covered_to} are backed up"),
        _ => format!(
            "wrote {} segment(s): {}; blocks 1-{covered_to} are backed up",
            written.len(),
            written
                .iter()
                .map(|s| format!("#{}-#{}", s.first, s.last))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The exporter's task: takes the environment's lock (or stands by while another node holds it), then
/// runs a round every interval and when asked, publishing the backups' state after each.
pub async fn run(ex: Exporter, mut asks: mpsc::Receiver<Ask>, report: watch::Sender<BackupStatus>) {
    let holder = format!("{} pid {}", ex.instance_id, std::process::id());
    let lock_path = ex.dir.join(super::LOCK);
    let mut lock = None;
    // The first round once geth has had a minute to come up, then every interval.
    let first = tokio::time::Instant::now() + ex.settings.interval.min(Duration::from_secs(60));
    let mut tick = tokio::time::interval_at(first, ex.settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status = BackupStatus {
        dir: ex.dir.display().to_string(),
        interval_secs: ex.settings.interval.as_secs(),
        ..BackupStatus::default()
    };
    // The lock at once (so whoever starts first exports), then a round each tick or when asked.
    let mut started = false;
    loop {
        let first = !std::mem::replace(&mut started, true);
        let ask = match first {
            true => None,
            false => tokio::select! {
                _ = tick.tick() => None,
                Some(ask) = asks.recv() => Some(ask),
            },
        };
        if lock.is_none() {
            let (path, who) = (lock_path.clone(), holder.clone());
            match blocking(move || {
                super::super::lease::try_take(&path, &who).map_err(|e| e.to_string())
            })
            .await
            {
                Ok(Some(held)) => {
                    tracing::info!(lock = %lock_path.display(), "this node exports the chain's backups");
                    lock = Some(held);
                }
                Ok(None) => {}
                Err(e) => {
                    status.error = Some(format!(
                        "cannot take the exporter lock {}: {e}",
                        lock_path.display()
                    ))
                }
            }
        }
        status.exporting = lock.is_some();
        let dir = ex.dir.clone();
        status.holder = blocking(move || Ok(super::lock_holder(&dir)))
            .await
            .unwrap_or_default();
        let outcome = match (&lock, first) {
            (Some(_), false) => Some(ex.round().await),
            _ => None,
        };
        match &outcome {
            Some(Ok(_)) => status.error = None,
            Some(Err(e)) => {
                tracing::error!(error = %e, "backup round failed; the next round tries again");
                status.error = Some(e.clone());
            }
            None => {}
        }
        let dir = ex.dir.clone();
        if let Ok(Some(m)) =
            blocking(move || super::read_manifest(&dir).map_err(|e| e.to_string())).await
        {
            status.covered_to = m.covered_to();
            status.segments = m.segments.len() as u64;
            status.newest = m.newest().map(|s| NewestSegment {
                first: s.first,
                last: s.last,
                bytes: s.bytes,
                created_at: s.created_at,
            });
        }
        report.send_replace(status.clone());
        if let Some(ask) = ask {
            let answer = match outcome {
                Some(Ok(written)) => Ok(summary(&written, status.covered_to)),
                Some(Err(e)) => Err(e),
                None => Err(format!(
                    "another node exports this environment's backups ({}); this one stands by",
                    status.holder.as_deref().unwrap_or("holder unknown")
                )),
            };
            let _ = ask.send(answer);
        }
    }
}

//! `node-agent backup --now | --list | --verify` and `node-agent restore --into DATADIR`: the operator's
//! side of the chain backups. `--now` asks the running agent (the exporter holds the environment's lock);
//! the others read the backups' directory themselves.

use crate::backup::restore::Restore;
use crate::backup::{self, BackupError};
use crate::boot::{make_plan, AgentError};
use crate::cli::{BackupArgs, RestoreArgs};
use crate::config::Settings;
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum BackupCmdError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Stdout(#[from] crate::out::StdoutError),
    #[error("backup: this host neither exports nor seeds backups (backup.role, storage.seed_from_backup), so none is mounted here: pass --from DIR")]
    NoPlace,
    #[error("backup --now: no agent answers on {path} ({source}): run it on the exporting node, where node-agent runs")]
    NotRunning {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("backup --now: {0}")]
    Round(String),
    #[error("backup --verify: {bad} of {all} segments fail their check (each named above)")]
    Verify { bad: usize, all: usize },
    #[error(transparent)]
    Privilege(#[from] crate::privileges::PrivilegeError),
}

/// The backups' directory: `--from`, else the one this host mounts.
fn place(settings: &Settings, from: &Option<PathBuf>) -> Result<PathBuf, BackupCmdError> {
    match (from, &settings.backup) {
        (Some(d), _) => Ok(d.clone()),
        (None, Some(b)) => Ok(b.place.datadir().to_owned()),
        (None, None) => Err(BackupCmdError::NoPlace),
    }
}

pub async fn backup(args: &BackupArgs) -> Result<(), BackupCmdError> {
    let (settings, _) = make_plan(&args.host).await?;
    if args.now {
        let done = round_now(&settings.runtime_dir.join(crate::status::SOCKET)).await?;
        crate::out::print(format!("{done}\n"))?;
        return Ok(());
    }
    let dir = place(&settings, &args.from)?;
    let manifest =
        backup::read_manifest(&dir)?.ok_or_else(|| BackupError::NoManifest { dir: dir.clone() })?;
    if args.list {
        let mut text = backup::list(&manifest, crate::clock::now_unix());
        if let Some(h) = backup::lock_holder(&dir) {
            text += &format!("exporter lock: {h}\n");
        }
        crate::out::print(text)?;
        return Ok(());
    }
    let (d, m) = (dir.clone(), manifest.clone());
    let problems = tokio::task::spawn_blocking(move || backup::verify(&d, &m))
        .await
        .unwrap_or_else(|e| vec![format!("verification failed: {e}")]);
    for p in &problems {
        eprintln!("node-agent: backup: {p}");
    }
    if !problems.is_empty() {
        return Err(BackupCmdError::Verify {
            bad: problems.len(),
            all: manifest.segments.len(),
        });
    }
    crate::out::print(format!(
        "{} segments verified: blocks 1-{} (sha256, block ranges, hashes)\n",
        manifest.segments.len(),
        manifest.covered_to()
    ))?;
    Ok(())
}

/// Asks the running agent for a round over its status socket, and waits for the outcome.
async fn round_now(path: &std::path::Path) -> Result<String, BackupCmdError> {
    let not_running = |source| BackupCmdError::NotRunning {
        path: path.to_owned(),
        source,
    };
    let mut s = tokio::net::UnixStream::connect(path)
        .await
        .map_err(not_running)?;
    s.write_all(format!("{}\n", crate::status::BACKUP_NOW).as_bytes())
        .await
        .map_err(not_running)?;
    let mut buf = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut buf)
        .await
        .map_err(not_running)?;
    let answer: serde_json::Value = serde_json::from_slice(&buf)
        .map_err(|e| BackupCmdError::Round(format!("the agent answered something else: {e}")))?;
    match (answer.get("done"), answer.get("error")) {
        (Some(done), _) => Ok(done.as_str().unwrap_or_default().to_owned()),
        (_, Some(e)) => Err(BackupCmdError::Round(
            e.as_str().unwrap_or_default().to_owned(),
        )),
        _ => Err(BackupCmdError::Round(format!("unexpected answer {answer}"))),
    }
}

pub async fn restore(args: &RestoreArgs) -> Result<(), BackupCmdError> {
    let (settings, plan) = make_plan(&args.host).await?;
    // The restored chain is the service user's, as if its geth had written it: root drops to it first,
    // and writes nothing itself.
    if crate::sys::is_root() {
        crate::privileges::drop_to(crate::privileges::resolve(&plan.user)?)?;
    }
    let dir = place(&settings, &args.from)?;
    let scratch = tempfile::tempdir()
        .map_err(|e| BackupError::Refused(format!("cannot make a scratch directory: {e}")))?;
    let genesis_file = scratch.path().join("genesis.json");
    std::fs::write(&genesis_file, settings.genesis.bytes())
        .map_err(|e| BackupError::Refused(format!("cannot write the genesis: {e}")))?;
    let r = Restore {
        geth: &settings.binaries.geth,
        genesis: settings.genesis.bytes(),
        genesis_file: &genesis_file,
        dir: &dir,
        datadir: &args.into,
    };
    let done = r.run(|line| eprintln!("node-agent: {line}")).await?;
    // The datadir is this genesis's from now on, as `geth init` at boot would have marked it.
    crate::chain::geth::mark(&args.into, settings.genesis.bytes()).map_err(AgentError::from)?;
    crate::out::print(format!(
        "restored {} up to #{} ({}), {:.0} blocks/s\n",
        args.into.display(),
        done.head,
        done.head_hash,
        done.blocks_per_sec
    ))?;
    Ok(())
}

//! geth-specific boot steps: the version guard and the first boot of a datadir (`geth init`, with a marker
//! so a datadir that holds another chain is refused, never wiped).

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The geth version check before the first start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionCheck {
    pub program: PathBuf,
    /// The pinned version, e.g. `1.13.15`.
    pub required: String,
    /// A sealer refuses any other version (1.14+ cannot seal Clique); other roles warn.
    pub strict: bool,
}

/// A one-shot command run before the children, when its condition holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InitPlan {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Human description of when it runs.
    pub when: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GethError {
    #[error("cannot run {program} {what}: {source}")]
    Run {
        program: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{program} is geth {found}, but a sealer needs exactly {required} (1.14+ cannot seal Clique): install the pinned release (resources/versions.toml)")]
    WrongVersion {
        program: String,
        found: String,
        required: String,
    },
    #[error("{program} version printed no \"Version:\" line: {output}")]
    NoVersion { program: String, output: String },
    #[error("datadir {datadir} holds a chain from another genesis (initialised from sha256 {have}, this host's genesis is sha256 {want}); node-agent never wipes chain data: fix chain.genesis, or move that directory away")]
    OtherGenesis {
        datadir: String,
        have: String,
        want: String,
    },
    #[error("geth init --datadir {datadir} refused: {reason}")]
    Init { datadir: String, reason: String },
    #[error("cannot write {path}: {source}")]
    Marker {
        path: String,
        source: std::io::Error,
    },
}

/// The version from `geth version` output (`Version: 1.13.15-stable` → `1.13.15`). Pure.
pub fn parse_version(output: &str) -> Option<String> {
    output.lines().find_map(|l| {
        let v = l.trim().strip_prefix("Version:")?.trim();
        let v = v.split('-').next().unwrap_or(v);
        (!v.is_empty()).then(|| v.to_owned())
    })
}

/// Runs `geth version` and applies the guard: a sealer refuses another version, other roles warn.
pub async fn check_version(check: &VersionCheck) -> Result<(), GethError> {
    let program = check.program.display().to_string();
    let run = tokio::process::Command::new(&check.program)
        .arg("version")
        .env_clear()
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    // A binary that does not answer `version` (not geth at all) must not hang the boot.
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), run)
        .await
        .map_err(|_| GethError::Run {
            program: program.clone(),
            what: "version",
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 30 s"),
        })?
        .map_err(|source| GethError::Run {
            program: program.clone(),
            what: "version",
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let found = parse_version(&text).ok_or_else(|| GethError::NoVersion {
        program: program.clone(),
        output: text.lines().next().unwrap_or("nothing").to_owned(),
    })?;
    if found == check.required {
        return Ok(());
    }
    if check.strict {
        return Err(GethError::WrongVersion {
            program,
            found,
            required: check.required.clone(),
        });
    }
    tracing::warn!(%program, %found, required = %check.required, "geth is not the pinned version");
    Ok(())
}

/// The marker recording which genesis a datadir was initialised from.
pub const GENESIS_MARKER: &str = ".node-agent-genesis.sha256";

/// The sha256 of a genesis file, as the marker (and a backup's manifest) records it.
pub fn genesis_sha256(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    crate::chain::genesis::encode_hex(&sha2::Sha256::digest(bytes))
}

/// First boot: `geth init` when the datadir holds no chain; a chain from another genesis is refused.
/// A datadir with a chain but no marker (made by hand or by older tooling) is checked by `geth init`
/// itself, which is idempotent for the same genesis and fails on another.
pub async fn first_boot(
    init: &InitPlan,
    datadir: &Path,
    genesis: &[u8],
) -> Result<bool, GethError> {
    let want = sha256_hex(genesis);
    let marker = datadir.join(GENESIS_MARKER);
    let has_chain = datadir.join("geth/chaindata").exists();
    if has_chain {
        if let Ok(have) = std::fs::read_to_string(&marker) {
            let have = have.trim().to_owned();
            if have == want {
                return Ok(false);
            }
            return Err(GethError::OtherGenesis {
                datadir: datadir.display().to_string(),
                have,
                want,
            });
        }
    }
    tracing::info!(datadir = %datadir.display(), "initialising the chain from the genesis (geth init)");
    let out = tokio::process::Command::new(&init.program)
        .args(&init.args)
        .env_clear()
        .stdin(Stdio::null())
        // A stop during boot drops this future: geth init goes with it.
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| GethError::Run {
            program: init.program.display().to_string(),
            what: "init",
            source,
        })?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let reason = text
            .lines()
            .rev()
            .find(|l| l.contains("Fatal"))
            .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
            .unwrap_or("no output")
            .trim()
            .to_owned();
        return Err(GethError::Init {
            datadir: datadir.display().to_string(),
            reason,
        });
    }
    mark(datadir, genesis)?;
    Ok(true)
}

/// Records in `datadir` that its chain began with `genesis` (after `geth init`, or a restore).
pub fn mark(datadir: &Path, genesis: &[u8]) -> Result<(), GethError> {
    let marker = datadir.join(GENESIS_MARKER);
    crate::sys::replace::replace(&marker, 0o644, |f| {
        std::io::Write::write_all(f, format!("{}\n", sha256_hex(genesis)).as_bytes())
    })
    .map_err(|e| GethError::Marker {
        path: marker.display().to_string(),
        source: e.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_read_from_geth_version_output() {
        let out = "Geth\nVersion: 1.13.15-stable\nGit Commit: c5ba367e\nArchitecture: amd64\n";
        assert_eq!(parse_version(out).as_deref(), Some("1.13.15"));
        assert_eq!(
            parse_version("Version: 1.14.0-unstable\n").as_deref(),
            Some("1.14.0")
        );
        assert_eq!(parse_version("geth version 1.13.15"), None);
        assert_eq!(parse_version("Version:\n"), None);
    }

    proptest::proptest! {
        #[test]
        fn any_version_output_parses_or_not(s in "\\PC{0,200}") {
            let _ = parse_version(&s);
        }
    }
}

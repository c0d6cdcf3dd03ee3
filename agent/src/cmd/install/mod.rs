//! `node-agent install --root DIR`: lays out everything a host needs under DIR (this binary, the systemd
//! unit, the sysusers.d and tmpfiles.d files, the default configuration unless one exists, the genesis) and
//! installs the pinned downloads only once they match `resources/versions.toml` (or a `--pins` file):
//! geth + bootnode from an archive with the pinned sha256, the ethstats server from a git clone at the
//! pinned commit. (The archive's signature is the bake's check, before this one: bake/provision.sh.)
//! The Packer bake and the boot test both run it, so what is tested is what is baked. Order: every check first (pins, checksums, archive contents), then the files, then `--enable`.
//!
//! `layout` decides what goes where, `download` checks the pinned downloads, `apply` writes; this module
//! orders the steps and runs systemd's tools for `--enable`.

mod apply;
mod download;
#[cfg(test)]
mod fixtures;
mod layout;

use crate::chain::pins::{self, PinError};
use crate::cli::InstallArgs;
use apply::apply;
use download::{check_sources, export_commit, private_scratch, take_verified, unpack};
use layout::{base_layout, ethstats_layout, geth_layout};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Any failure of `install`, naming the file, key or program it failed on.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Stdout(#[from] crate::out::StdoutError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error(
        "{path}: sha256 {actual} does not match {key} = {expected} in {pins}: refusing to install it \
         (a different or corrupted download)"
    )]
    ChecksumMismatch {
        path: PathBuf,
        pins: String,
        key: String,
        expected: String,
        actual: String,
    },
    #[error("{archive}: {problem}")]
    Archive { archive: PathBuf, problem: String },
    #[error("{program}: {problem}")]
    Activate { program: String, problem: String },
}

impl From<InstallError> for crate::boot::AgentError {
    fn from(e: InstallError) -> Self {
        crate::boot::AgentError::Refused(crate::error::error_chain(&e))
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Why a command did not succeed.
enum Ran {
    NotStarted(std::io::Error),
    /// It ran and failed; what it said on stderr.
    Failed(String),
}

/// Runs `cmd` to completion, its output captured.
fn run_checked(cmd: &mut Command) -> Result<(), Ran> {
    let out = cmd.output().map_err(Ran::NotStarted)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Ran::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

fn run_tool(program: &str, args: &[&str]) -> Result<(), InstallError> {
    run_checked(Command::new(program).args(args)).map_err(|r| InstallError::Activate {
        program: program.into(),
        problem: match r {
            Ran::NotStarted(e) => format!("cannot run it: {e}"),
            Ran::Failed(stderr) => format!("{} failed: {stderr}", args.join(" ")),
        },
    })
}

/// Creates the users and directories and enables the unit under `root`, with systemd's own tools (they
/// all work on a root that is not running).
fn enable(root: &Path) -> Result<Vec<String>, InstallError> {
    let r = format!("--root={}", root.display());
    run_tool("systemd-sysusers", &[&r, "node-agent.conf"])?;
    run_tool("systemd-tmpfiles", &[&r, "--create", "node-agent.conf"])?;
    run_tool("systemctl", &[&r, "enable", "node-agent.service"])?;
    Ok(vec![
        "created   user and group node-agent (systemd-sysusers)".into(),
        "created   /var/lib/node-agent, /var/log/node-agent, /run/node-agent (systemd-tmpfiles)"
            .into(),
        "enabled   node-agent.service".into(),
    ])
}

/// The name errors give the pins: the `--pins` file, else the built-in versions.toml.
fn pins_origin(args: &InstallArgs) -> String {
    match &args.pins {
        Some(p) => p.display().to_string(),
        None => pins::BUILT_IN.to_owned(),
    }
}

/// Everything `install` does, with the pins and the binary as values (tests pass their own).
pub fn install(
    root: &Path,
    args: &InstallArgs,
    pins_text: &str,
    binary: &Path,
) -> Result<Vec<String>, InstallError> {
    let mut entries = base_layout(binary, args.genesis.as_deref());
    let mut report = Vec::new();
    let scratch = private_scratch()?;
    if args.geth_archive.is_some() || args.ethstats_source.is_some() {
        let origin = pins_origin(args);
        let pins = pins::parse(pins_text, &origin)?;
        if let Some(archive) = &args.geth_archive {
            let verified = take_verified(archive, &pins.geth.sha256, &origin, scratch.path())?;
            report.push(format!(
                "verified  {} (sha256 {})",
                archive.display(),
                pins.geth.sha256
            ));
            let into = scratch.path().join("geth");
            fs::create_dir(&into).map_err(io_err("cannot create", &into))?;
            let top = unpack(archive, verified, &into)?;
            let more = geth_layout(&top);
            check_sources(archive, &more)?;
            entries.extend(more);
        }
        if let Some(repo) = &args.ethstats_source {
            let into = scratch.path().join("ethstats");
            let top = export_commit(repo, &pins.ethstats.commit, &origin, &into)?;
            report.push(format!(
                "verified  {} (commit {})",
                repo.display(),
                pins.ethstats.commit
            ));
            let more = ethstats_layout(&top);
            check_sources(repo, &more)?;
            entries.extend(more);
        }
    }
    if let Some(g) = &args.genesis {
        fs::metadata(g).map_err(io_err("cannot read the genesis", g))?;
    }
    report.extend(apply(root, &entries)?);
    if args.enable {
        report.extend(enable(root)?);
    }
    Ok(report)
}

/// `node-agent install`.
pub fn run(args: &InstallArgs) -> Result<(), InstallError> {
    let given;
    let pins_text = match &args.pins {
        Some(p) => {
            given = fs::read_to_string(p).map_err(io_err("cannot read the pins file", p))?;
            given.as_str()
        }
        None => pins::PINNED,
    };
    if args.print_downloads {
        let text: String = pins::parse(pins_text, &pins_origin(args))?
            .lines()
            .iter()
            .map(|line| format!("{line}\n"))
            .collect();
        crate::out::print(text)?;
        return Ok(());
    }
    // clap requires --root unless --print-downloads.
    let root = args.root.as_deref().unwrap_or(Path::new("/"));
    let exe = Path::new("/proc/self/exe");
    let binary = fs::read_link(exe).map_err(io_err("cannot find this program through", exe))?;
    let mut report = String::new();
    if let Some(p) = &args.pins {
        report.push_str(&format!(
            "pins      {} (given with --pins, not the built-in ones)\n",
            p.display()
        ));
    }
    for line in install(root, args, pins_text, &binary)? {
        report.push_str(&line);
        report.push('\n');
    }
    crate::out::print(report)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_fails_says_so_with_its_stderr() {
        assert!(run_checked(&mut Command::new("true")).is_ok());
        match run_checked(Command::new("sh").args(["-c", "echo 'no such archive' >&2; exit 2"])) {
            Err(Ran::Failed(stderr)) => assert_eq!(stderr, "no such archive"),
            _ => panic!("a failing command was not reported with its stderr"),
        }
        assert!(matches!(
            run_checked(&mut Command::new("/nonexistent/tool")),
            Err(Ran::NotStarted(_))
        ));
    }
}

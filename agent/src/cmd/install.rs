//! `node-agent install --root DIR`: lays out everything a host needs under DIR (this binary, the systemd
//! unit, the sysusers.d and tmpfiles.d files, the default configuration unless one exists, the genesis) and
//! installs the pinned downloads only once they match `resources/versions.toml` (or a `--pins` file):
//! geth + bootnode from an archive with the pinned sha256, the ethstats server from a git clone at the
//! pinned commit. (The archive's signature is the bake's check, before this one: bake/provision.sh.)
//! The Packer bake and the boot test both run it, so what is tested is what is baked. Order: every check first (pins, checksums, archive contents), then the files, then `--enable`.

use crate::cli::InstallArgs;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The unit, users and directories, embedded from `units/`.
pub const UNIT: &str = include_str!("../../../units/node-agent.service");
pub const SYSUSERS: &str = include_str!("../../../units/sysusers.d/node-agent.conf");
pub const TMPFILES: &str = include_str!("../../../units/tmpfiles.d/node-agent.conf");
/// The development genesis (dev signer): installed only when `--genesis` is not given and none exists.
const DEV_GENESIS: &str = crate::chain::genesis::DEV;

/// Where everything goes, relative to the root. Units and their companions live in the local vendor
/// directories (`/usr/local/lib/...`), so `/etc` stays free for an operator's overrides.
pub mod paths {
    pub const BINARY: &str = "usr/local/bin/node-agent";
    pub const UNIT: &str = "usr/local/lib/systemd/system/node-agent.service";
    pub const SYSUSERS: &str = "usr/local/lib/sysusers.d/node-agent.conf";
    pub const TMPFILES: &str = "usr/local/lib/tmpfiles.d/node-agent.conf";
    pub const CONFIG: &str = "etc/node-agent/config.toml";
    pub const GENESIS: &str = "usr/share/node-agent/genesis.json";
    pub const GETH: &str = "usr/local/bin/geth";
    pub const BOOTNODE: &str = "usr/local/bin/bootnode";
    pub const ETHSTATS_WRAPPER: &str = "usr/local/bin/ethstats-server";
    pub const ETHSTATS_APP: &str = "opt/ethstats-server";
    pub const ETHSTATS_SECRET_LINK: &str = "opt/ethstats-server/ws_secret.json";
    /// Where node-agent writes the ethstats secret at run time (`secrets.dir` default).
    pub const ETHSTATS_SECRET_TARGET: &str = "/run/node-agent/secrets/ws_secret.json";
}

/// Starts the pinned ethstats server from its app directory: app.js reads `ws_secret.json` beside itself.
const ETHSTATS_WRAPPER: &str = "#!/bin/sh
# Installed by `node-agent install`: runs the pinned ethstats server (resources/versions.toml).
# app.js reads ws_secret.json beside itself, a link to the file node-agent writes in its private directory.
cd /opt/ethstats-server || exit 1
PATH=/usr/local/bin:/usr/bin:/bin
export PATH
exec node app.js
";

/// What to do when the file is already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Replace,
    Keep,
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Text(&'static str),
    File(PathBuf),
}

/// One thing to lay out under the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File {
        path: &'static str,
        source: Source,
        mode: u32,
        existing: Existing,
    },
    /// A whole directory tree copied from an unpacked archive; dirs 0755, files 0644 or 0755.
    Tree { path: &'static str, from: PathBuf },
    Symlink {
        path: &'static str,
        target: &'static str,
    },
}

impl Entry {
    pub fn path(&self) -> &'static str {
        match self {
            Entry::File { path, .. } | Entry::Tree { path, .. } | Entry::Symlink { path, .. } => {
                path
            }
        }
    }
}

/// Where the built-in pins come from, as errors name them.
pub const BUILT_IN_PINS: &str = "resources/versions.toml";

/// The geth alltools archive, as the bake fetches and checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GethPin {
    pub url: String,
    /// Lowercase hex.
    pub sha256: String,
    /// The file name to save it as (the URL's last segment).
    pub file: String,
    /// The detached OpenPGP signature: `url` + `.asc`.
    pub signature_url: String,
    /// The signer's public key: a file name in `resources/` (the bake uploads it beside the binary).
    pub signing_key: String,
    /// The signer's primary key fingerprint: 40 uppercase hex digits.
    pub signing_key_fingerprint: String,
}

/// The ethstats server, pinned by commit: the bake clones `repository` and checks out `commit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthstatsPin {
    pub repository: String,
    /// 40 lowercase hex digits.
    pub commit: String,
}

/// Everything the bake fetches, from a versions.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins {
    pub geth: GethPin,
    pub ethstats: EthstatsPin,
}

impl Pins {
    /// `key=value` lines for the bake's shell script (`install --print-downloads`).
    pub fn lines(&self) -> Vec<String> {
        let (g, e) = (&self.geth, &self.ethstats);
        vec![
            format!("geth.url={}", g.url),
            format!("geth.sha256={}", g.sha256),
            format!("geth.file={}", g.file),
            format!("geth.signature_url={}", g.signature_url),
            format!("geth.signing_key={}", g.signing_key),
            format!("geth.signing_key_fingerprint={}", g.signing_key_fingerprint),
            format!("ethstats.repository={}", e.repository),
            format!("ethstats.commit={}", e.commit),
        ]
    }
}

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
    #[error(
        "{pins}: {key} is empty, and the bake refuses unpinned downloads: set it from a trusted copy \
         (README \"Pins\") and rebuild node-agent"
    )]
    Unpinned { pins: String, key: String },
    #[error("{pins}: {key}: {problem}")]
    BadPin {
        pins: String,
        key: String,
        problem: String,
    },
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

/// `n` hex digits, case-folded.
fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// The pins from a versions.toml text (`origin` names it in errors); fails closed on any empty or
/// malformed value, before anything is fetched.
pub fn pins(text: &str, origin: &str) -> Result<Pins, InstallError> {
    let bad = |key: &str, problem: String| InstallError::BadPin {
        pins: origin.to_owned(),
        key: key.to_owned(),
        problem,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad("(file)", e.message().to_owned()))?;
    let get = |name: &str, key: &str| -> Result<String, InstallError> {
        let full = format!("{name}.{key}");
        let value = table
            .get(name)
            .and_then(|t| t.get(key))
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad(&full, "missing (a string is expected)".into()))?;
        if value.is_empty() {
            return Err(InstallError::Unpinned {
                pins: origin.to_owned(),
                key: full,
            });
        }
        Ok(value.to_owned())
    };
    let url = get("geth", "url")?;
    let sha256 = get("geth", "sha256")?.to_ascii_lowercase();
    if !is_hex(&sha256, 64) {
        return Err(bad(
            "geth.sha256",
            format!("{sha256:?} is not 64 hex digits"),
        ));
    }
    let file = url
        .rsplit('/')
        .next()
        .filter(|f| !f.is_empty() && url.contains('/'))
        .ok_or_else(|| bad("geth.url", format!("{url:?} does not end in a file name")))?
        .to_owned();
    let signing_key = get("geth", "signing_key")?;
    if signing_key.contains('/') || signing_key.starts_with('.') {
        return Err(bad(
            "geth.signing_key",
            format!("{signing_key:?} is not a file name in resources/"),
        ));
    }
    // Fingerprints are often written in groups of four: compare them without spaces, in uppercase.
    let fingerprint: String = get("geth", "signing_key_fingerprint")?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    if !is_hex(&fingerprint, 40) {
        return Err(bad(
            "geth.signing_key_fingerprint",
            format!("{fingerprint:?} is not a v4 fingerprint (40 hex digits)"),
        ));
    }
    let commit = get("ethstats", "commit")?.to_ascii_lowercase();
    if !is_hex(&commit, 40) {
        return Err(bad(
            "ethstats.commit",
            format!("{commit:?} is not a full commit id (40 hex digits)"),
        ));
    }
    Ok(Pins {
        geth: GethPin {
            signature_url: format!("{url}.asc"),
            url,
            sha256,
            file,
            signing_key,
            signing_key_fingerprint: fingerprint,
        },
        ethstats: EthstatsPin {
            repository: get("ethstats", "repository")?,
            commit,
        },
    })
}

/// Copies the archive at `source` into the private directory `scratch` through one open descriptor,
/// hashing exactly the bytes written, and checks them against the pin. Returns the copy, rewound, for
/// `unpack`: what is unpacked is what was verified, whatever happens at `source` after it was opened
/// (a path re-opened after the check could have been swapped in between).
fn take_verified(
    source: &Path,
    sha256: &str,
    origin: &str,
    scratch: &Path,
) -> Result<fs::File, InstallError> {
    let mut input = fs::File::open(source).map_err(io_err("cannot open", source))?;
    let copy_path = scratch.join("geth.tar.gz");
    let mut copy = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&copy_path)
        .map_err(io_err("cannot create", &copy_path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("cannot read", source)(e)),
        };
        hasher.update(&buf[..n]);
        copy.write_all(&buf[..n])
            .map_err(io_err("cannot write", &copy_path))?;
    }
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if actual != sha256 {
        return Err(InstallError::ChecksumMismatch {
            path: source.to_owned(),
            pins: origin.to_owned(),
            key: "geth.sha256".into(),
            expected: sha256.to_owned(),
            actual,
        });
    }
    copy.rewind().map_err(io_err("cannot rewind", &copy_path))?;
    Ok(copy)
}

/// The files every host gets, whatever was downloaded. Pure: decides, does nothing.
pub fn base_layout(binary: &Path, genesis: Option<&Path>) -> Vec<Entry> {
    vec![
        Entry::File {
            path: paths::BINARY,
            source: Source::File(binary.to_owned()),
            mode: 0o755,
            existing: Existing::Replace,
        },
        Entry::File {
            path: paths::UNIT,
            source: Source::Text(UNIT),
            mode: 0o644,
            existing: Existing::Replace,
        },
        Entry::File {
            path: paths::SYSUSERS,
            source: Source::Text(SYSUSERS),
            mode: 0o644,
            existing: Existing::Replace,
        },
        Entry::File {
            path: paths::TMPFILES,
            source: Source::Text(TMPFILES),
            mode: 0o644,
            existing: Existing::Replace,
        },
        // An operator's or user-data's configuration wins over the defaults.
        Entry::File {
            path: paths::CONFIG,
            source: Source::Text(crate::config::EXAMPLE),
            mode: 0o644,
            existing: Existing::Keep,
        },
        match genesis {
            Some(g) => Entry::File {
                path: paths::GENESIS,
                source: Source::File(g.to_owned()),
                mode: 0o644,
                existing: Existing::Replace,
            },
            None => Entry::File {
                path: paths::GENESIS,
                source: Source::Text(DEV_GENESIS),
                mode: 0o644,
                existing: Existing::Keep,
            },
        },
    ]
}

/// geth and bootnode from an unpacked alltools archive (`geth-alltools-…/geth`).
pub fn geth_layout(unpacked_top: &Path) -> Vec<Entry> {
    vec![
        Entry::File {
            path: paths::GETH,
            source: Source::File(unpacked_top.join("geth")),
            mode: 0o755,
            existing: Existing::Replace,
        },
        Entry::File {
            path: paths::BOOTNODE,
            source: Source::File(unpacked_top.join("bootnode")),
            mode: 0o755,
            existing: Existing::Replace,
        },
    ]
}

/// The ethstats app from its exported source tree, its wrapper, and the link to the secret.
pub fn ethstats_layout(unpacked_top: &Path) -> Vec<Entry> {
    vec![
        Entry::Tree {
            path: paths::ETHSTATS_APP,
            from: unpacked_top.to_owned(),
        },
        Entry::Symlink {
            path: paths::ETHSTATS_SECRET_LINK,
            target: paths::ETHSTATS_SECRET_TARGET,
        },
        Entry::File {
            path: paths::ETHSTATS_WRAPPER,
            source: Source::Text(ETHSTATS_WRAPPER),
            mode: 0o755,
            existing: Existing::Replace,
        },
    ]
}

/// A private scratch directory (mode 0700, fresh random name, removed on drop): nobody else can swap
/// the copied archives or the unpacked files between their check and their use.
fn private_scratch() -> Result<tempfile::TempDir, InstallError> {
    let parent = std::env::temp_dir();
    tempfile::Builder::new()
        .prefix("node-agent-install-")
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(&parent)
        .map_err(io_err("cannot create a private directory in", &parent))
}

/// Unpacks a verified .tar.gz, read from `data` (the private copy `take_verified` returned), with the
/// system's tar and returns its single top-level directory. `archive` only names it in errors.
fn unpack(archive: &Path, data: fs::File, into: &Path) -> Result<PathBuf, InstallError> {
    run_checked(
        Command::new("tar")
            .args(["-xzf", "-", "-C"])
            .arg(into)
            .args(["--no-same-owner", "--no-same-permissions"])
            .stdin(Stdio::from(data)),
    )
    .map_err(|r| InstallError::Archive {
        archive: archive.to_owned(),
        problem: match r {
            Ran::NotStarted(e) => format!("cannot run tar: {e}"),
            Ran::Failed(stderr) => format!("tar failed: {stderr}"),
        },
    })?;
    let mut tops = Vec::new();
    for e in fs::read_dir(into).map_err(io_err("cannot list", into))? {
        let e = e.map_err(io_err("cannot list", into))?;
        tops.push(e.path());
    }
    match tops.as_slice() {
        [one] if one.is_dir() => Ok(one.clone()),
        _ => Err(InstallError::Archive {
            archive: archive.to_owned(),
            problem: format!(
                "expected one top-level directory, found {} entries",
                tops.len()
            ),
        }),
    }
}

/// Checks that every file an entry copies from exists, before anything is written.
fn check_sources(archive: &Path, entries: &[Entry]) -> Result<(), InstallError> {
    for e in entries {
        let from = match e {
            Entry::File {
                source: Source::File(p),
                ..
            } => p,
            Entry::Tree { from, .. } => from,
            _ => continue,
        };
        if !from.exists() {
            return Err(InstallError::Archive {
                archive: archive.to_owned(),
                problem: format!(
                    "has no {}",
                    from.file_name().unwrap_or_default().to_string_lossy()
                ),
            });
        }
    }
    Ok(())
}

fn create_parent(path: &Path) -> Result<(), InstallError> {
    if let Some(parent) = path.parent() {
        if !parent.is_dir() {
            fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
    }
    Ok(())
}

/// Writes `dest` atomically (temp file in the same directory, fsync, mode, rename), so a running binary
/// can be replaced and a crash never leaves half a file.
fn write_atomic(dest: &Path, source: &Source, mode: u32) -> Result<(), InstallError> {
    create_parent(dest)?;
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dest.with_file_name(format!(".{name}.install-{}", std::process::id()));
    let result = (|| {
        let mut out = fs::File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
        match source {
            Source::Text(t) => out
                .write_all(t.as_bytes())
                .map_err(io_err("cannot write", &tmp))?,
            Source::File(p) => {
                let mut input = fs::File::open(p).map_err(io_err("cannot open", p))?;
                io::copy(&mut input, &mut out).map_err(io_err("cannot copy", p))?;
            }
        }
        out.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("cannot set the mode of", &tmp))?;
        out.sync_all().map_err(io_err("cannot sync", &tmp))?;
        fs::rename(&tmp, dest).map_err(io_err("cannot rename into place", dest))?;
        sync_parent(dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes a new name in `path`'s directory durable: without it a crash after the rename can still lose
/// the name, though the file's data reached the disk.
fn sync_parent(path: &Path) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot sync the directory", dir))
}

/// Copies a tree with normalised modes: directories 0755, files 0755 when any execute bit was set, else
/// 0644. Symlinks are copied as links. `to` must not exist yet. Modes are set on each new file's and
/// directory's own descriptor (created `O_EXCL`, never through a link).
fn copy_tree(from: &Path, to: &Path) -> Result<(), InstallError> {
    let fs_err = |e: crate::sys::safefs::FsError| InstallError::Io {
        what: e.what,
        path: e.path,
        source: e.source,
    };
    let (parent, name) = crate::sys::safefs::split(to).map_err(fs_err)?;
    let (_, created) = crate::sys::safefs::Dir::open(parent)
        .and_then(|p| p.make_dir(name, 0o755, None))
        .map_err(fs_err)?;
    if !created {
        return Err(io_err("cannot create", to)(
            io::ErrorKind::AlreadyExists.into(),
        ));
    }
    for e in fs::read_dir(from).map_err(io_err("cannot list", from))? {
        let e = e.map_err(io_err("cannot list", from))?;
        let src = e.path();
        let dst = to.join(e.file_name());
        let meta = fs::symlink_metadata(&src).map_err(io_err("cannot stat", &src))?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&src).map_err(io_err("cannot read link", &src))?;
            symlink(&target, &dst).map_err(io_err("cannot create link", &dst))?;
        } else if meta.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            let mut input = fs::File::open(&src).map_err(io_err("cannot open", &src))?;
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&dst)
                .map_err(io_err("cannot create", &dst))?;
            io::copy(&mut input, &mut out).map_err(io_err("cannot copy to", &dst))?;
            out.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(io_err("cannot set the mode of", &dst))?;
        }
    }
    Ok(())
}

/// Replaces the directory `dest` with a copy of `from`: built beside it, then swapped in.
fn replace_tree(dest: &Path, from: &Path) -> Result<(), InstallError> {
    create_parent(dest)?;
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let new = dest.with_file_name(format!(".{name}.new"));
    let old = dest.with_file_name(format!(".{name}.old"));
    for leftover in [&new, &old] {
        if leftover.exists() {
            fs::remove_dir_all(leftover).map_err(io_err("cannot remove", leftover))?;
        }
    }
    copy_tree(from, &new)?;
    if dest.exists() {
        fs::rename(dest, &old).map_err(io_err("cannot move aside", dest))?;
    }
    fs::rename(&new, dest).map_err(io_err("cannot rename into place", dest))?;
    sync_parent(dest)?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(io_err("cannot remove", &old))?;
    }
    Ok(())
}

/// Lays the entries out under `root`; returns one line per entry saying what happened.
pub fn apply(root: &Path, entries: &[Entry]) -> Result<Vec<String>, InstallError> {
    let mut report = Vec::new();
    for e in entries {
        let dest = root.join(e.path());
        let shown = Path::new("/").join(e.path());
        match e {
            Entry::File {
                source,
                mode,
                existing,
                ..
            } => {
                if *existing == Existing::Keep && dest.exists() {
                    report.push(format!("kept      {}", shown.display()));
                    continue;
                }
                write_atomic(&dest, source, *mode)?;
                report.push(format!("installed {} ({mode:04o})", shown.display()));
            }
            Entry::Tree { from, .. } => {
                replace_tree(&dest, from)?;
                report.push(format!("installed {}/ (tree)", shown.display()));
            }
            Entry::Symlink { target, .. } => {
                create_parent(&dest)?;
                match fs::symlink_metadata(&dest) {
                    Ok(m) if m.file_type().is_symlink() => {
                        fs::remove_file(&dest).map_err(io_err("cannot replace", &dest))?
                    }
                    Ok(m) if m.is_dir() => {
                        fs::remove_dir_all(&dest).map_err(io_err("cannot replace", &dest))?
                    }
                    Ok(_) => fs::remove_file(&dest).map_err(io_err("cannot replace", &dest))?,
                    Err(_) => {}
                }
                symlink(target, &dest).map_err(io_err("cannot create link", &dest))?;
                sync_parent(&dest)?;
                report.push(format!("linked    {} -> {target}", shown.display()));
            }
        }
    }
    Ok(report)
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
        None => BUILT_IN_PINS.to_owned(),
    }
}

/// Exports the pinned commit's tree from the git checkout `repo` into `into` (`git archive`, so only the
/// committed files: no `.git`, nothing untracked or modified), after checking that the checkout is at
/// that commit. Returns the exported directory.
fn export_commit(
    repo: &Path,
    commit: &str,
    origin: &str,
    into: &Path,
) -> Result<PathBuf, InstallError> {
    let refuse = |problem: String| InstallError::Archive {
        archive: repo.to_owned(),
        problem,
    };
    let head = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"])
        .output()
        .map_err(|e| refuse(format!("cannot run git: {e}")))?;
    if !head.status.success() {
        return Err(refuse(
            "is not a git checkout with a commit (clone the pinned repository there)".into(),
        ));
    }
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    if head != commit {
        return Err(refuse(format!(
            "is at commit {head}, but ethstats.commit = {commit} in {origin}: check out the pinned \
             commit (git checkout --detach {commit})"
        )));
    }
    fs::create_dir(into).map_err(io_err("cannot create", into))?;
    let mut git = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "archive",
            "--format=tar",
            "--prefix=ethstats-server/",
            commit,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| refuse(format!("cannot run git archive: {e}")))?;
    let tar = git.stdout.take().map(|out| {
        Command::new("tar")
            .args(["-xf", "-", "-C"])
            .arg(into)
            .args(["--no-same-owner", "--no-same-permissions"])
            .stdin(Stdio::from(out))
            .output()
    });
    let git = git
        .wait_with_output()
        .map_err(|e| refuse(format!("git archive: {e}")))?;
    if !git.status.success() {
        return Err(refuse(format!(
            "git archive {commit} failed: {}",
            String::from_utf8_lossy(&git.stderr).trim()
        )));
    }
    match tar {
        Some(Ok(t)) if t.status.success() => {}
        Some(Ok(t)) => {
            return Err(refuse(format!(
                "tar failed: {}",
                String::from_utf8_lossy(&t.stderr).trim()
            )))
        }
        Some(Err(e)) => return Err(refuse(format!("cannot run tar: {e}"))),
        None => return Err(refuse("git archive gave no output".into())),
    }
    Ok(into.join("ethstats-server"))
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
        let pins = pins(pins_text, &origin)?;
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
        None => crate::chain::pins::PINNED,
    };
    if args.print_downloads {
        let text: String = pins(pins_text, &pins_origin(args))?
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
    use std::os::unix::fs::MetadataExt;

    fn args(root: &Path) -> InstallArgs {
        InstallArgs {
            root: Some(root.to_owned()),
            geth_archive: None,
            ethstats_source: None,
            genesis: None,
            enable: false,
            pins: None,
            print_downloads: false,
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    /// A fake binary standing in for /proc/self/exe.
    fn fake_binary(dir: &Path) -> PathBuf {
        let b = dir.join("node-agent-build");
        fs::write(&b, b"\x7fELF fake").unwrap();
        b
    }

    fn tar_gz(dir: &Path, top: &str, files: &[(&str, &str, u32)]) -> PathBuf {
        let src = dir.join("src");
        let _ = fs::remove_dir_all(&src);
        for (name, body, m) in files {
            let p = src.join(top).join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, body).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(*m)).unwrap();
        }
        let out = dir.join(format!("{top}.tar.gz"));
        let st = Command::new("tar")
            .arg("-czf")
            .arg(&out)
            .arg("-C")
            .arg(&src)
            .arg(top)
            .status()
            .unwrap();
        assert!(st.success());
        out
    }

    fn sha256_file(path: &Path) -> String {
        crate::chain::genesis::encode_hex(&Sha256::digest(fs::read(path).unwrap()))
    }

    /// Pins for a test archive; the ethstats commit is a made-up one unless given.
    fn pins_for(geth: &Path, ethstats_commit: Option<&str>) -> String {
        format!(
            "[geth]\nversion = \"1.13.15\"\nurl = \"https://example.invalid/geth-alltools.tar.gz\"\n\
             sha256 = \"{}\"\nsigning_key = \"test.asc\"\n\
             signing_key_fingerprint = \"{}\"\n[ethstats]\ncommit = \"{}\"\n\
             repository = \"https://example.invalid/ethstats-server.git\"\n",
            sha256_file(geth),
            "AB".repeat(20),
            ethstats_commit.unwrap_or(&"0a".repeat(20)),
        )
    }

    /// A git repository with one commit of `files`; returns it and the commit id.
    fn git_repo(dir: &Path, files: &[(&str, &str, u32)]) -> (PathBuf, String) {
        let repo = dir.join("ethstats-clone");
        for (name, body, m) in files {
            let p = repo.join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, body).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(*m)).unwrap();
        }
        let git = |args: &[&str]| {
            let out = Command::new("git")
                .arg("-C")
                .arg(&repo)
                .args([
                    "-c",
                    "user.name=t",
                    "-c",
                    "user.email=t@t",
                    "-c",
                    "commit.gpgsign=false",
                ])
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "git {args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        git(&["init", "-q"]);
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", "pinned"]);
        let commit = git(&["rev-parse", "HEAD"]);
        (repo, commit)
    }

    #[test]
    fn the_shipped_pins_are_complete() {
        let p = pins(crate::chain::pins::PINNED, BUILT_IN_PINS)
            .unwrap_or_else(|e| panic!("resources/versions.toml must give every pin: {e}"));
        // The checked facts of the reference (guix-crypto's geth-binary.hashes, the builder's key).
        assert_eq!(
            p.geth.sha256,
            "2f153cdcd9801d748d8f812cce9d7a432d155f52eb78018d09d881dfe354dfdd"
        );
        assert_eq!(
            p.geth.file,
            "geth-alltools-linux-amd64-1.13.15-c5ba367e.tar.gz"
        );
        assert_eq!(p.geth.signature_url, format!("{}.asc", p.geth.url));
        assert!(p.geth.url.starts_with("https://"));
        assert_eq!(
            p.geth.signing_key_fingerprint,
            "FDE5A1A044FA13D2F7ADA019A61A13569BA28146"
        );
        assert_eq!(p.geth.signing_key, "geth-linux-builder.asc");
        assert_eq!(
            p.ethstats.commit,
            "afaed6757842baff82dec8c9e0a01c661bbb88ab"
        );
        assert!(p.ethstats.repository.starts_with("https://"));
        let lines = p.lines();
        assert!(lines.contains(&format!("geth.sha256={}", p.geth.sha256)));
        assert!(lines.iter().all(|l| l.split_once('=').is_some()));
    }

    #[test]
    fn pins_refuse_empty_and_malformed_values_naming_the_key() {
        let good = pins_for(Path::new("/dev/null"), None);
        let p = pins(&good, "t.toml").unwrap();
        assert_eq!(p.geth.file, "geth-alltools.tar.gz");
        let spaced = good.replace(
            &"AB".repeat(20),
            "fde5 a1a0 44fa 13d2 f7ad  a019 a61a 1356 9ba2 8146",
        );
        assert_eq!(
            pins(&spaced, "t.toml")
                .unwrap()
                .geth
                .signing_key_fingerprint,
            "FDE5A1A044FA13D2F7ADA019A61A13569BA28146",
            "fingerprints compare without spaces, uppercase"
        );
        let sha = sha256_file(Path::new("/dev/null"));
        for (from, to, key, says) in [
            (sha.as_str(), "", "geth.sha256", "is empty"),
            (sha.as_str(), "AB", "geth.sha256", "64 hex digits"),
            ("test.asc", "", "geth.signing_key", "is empty"),
            ("test.asc", "../k.asc", "geth.signing_key", "file name"),
            (
                &"AB".repeat(20),
                "ABCD",
                "geth.signing_key_fingerprint",
                "40 hex",
            ),
            (&"0a".repeat(20), "", "ethstats.commit", "is empty"),
            (
                &"0a".repeat(20),
                "main",
                "ethstats.commit",
                "full commit id",
            ),
        ] {
            let e = pins(&good.replace(from, to), "t.toml")
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("t.toml: {key}")) && e.contains(says),
                "{key} {to:?}: {e}"
            );
        }
    }

    #[test]
    fn install_lays_out_the_host_with_explicit_modes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let bin = fake_binary(t.path());
        let report = install(&root, &args(&root), crate::chain::pins::PINNED, &bin).unwrap();
        for (p, m) in [
            (paths::BINARY, 0o755),
            (paths::UNIT, 0o644),
            (paths::SYSUSERS, 0o644),
            (paths::TMPFILES, 0o644),
            (paths::CONFIG, 0o644),
            (paths::GENESIS, 0o644),
        ] {
            assert_eq!(mode(&root.join(p)), m, "{p}");
        }
        assert_eq!(fs::read(root.join(paths::BINARY)).unwrap(), b"\x7fELF fake");
        assert_eq!(
            fs::read_to_string(root.join(paths::UNIT)).unwrap(),
            include_str!("../../../units/node-agent.service")
        );
        assert_eq!(
            fs::read_to_string(root.join(paths::CONFIG)).unwrap(),
            crate::config::EXAMPLE
        );
        // Without archives nothing pinned is installed (and empty pins are not even looked at).
        assert!(!root.join(paths::GETH).exists());
        assert!(report
            .iter()
            .any(|l| l.contains("/usr/local/bin/node-agent (0755)")));
        // No temp files left beside the installed ones.
        let bin_dir: Vec<_> = fs::read_dir(root.join("usr/local/bin")).unwrap().collect();
        assert_eq!(bin_dir.len(), 1);
    }

    #[test]
    fn install_twice_is_install_once_and_keeps_an_existing_config() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let bin = fake_binary(t.path());
        install(&root, &args(&root), crate::chain::pins::PINNED, &bin).unwrap();
        fs::write(root.join(paths::CONFIG), "[storage]\nkind = \"local\"\n").unwrap();
        let report = install(&root, &args(&root), crate::chain::pins::PINNED, &bin).unwrap();
        assert_eq!(
            fs::read_to_string(root.join(paths::CONFIG)).unwrap(),
            "[storage]\nkind = \"local\"\n"
        );
        assert!(report
            .iter()
            .any(|l| l.starts_with("kept") && l.contains("config.toml")));
        assert_eq!(mode(&root.join(paths::BINARY)), 0o755);
    }

    #[test]
    fn a_given_genesis_replaces_the_installed_one() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let bin = fake_binary(t.path());
        install(&root, &args(&root), crate::chain::pins::PINNED, &bin).unwrap();
        let g = t.path().join("chain.json");
        fs::write(&g, "{\"config\":{}}").unwrap();
        let mut a = args(&root);
        a.genesis = Some(g);
        install(&root, &a, crate::chain::pins::PINNED, &bin).unwrap();
        assert_eq!(
            fs::read_to_string(root.join(paths::GENESIS)).unwrap(),
            "{\"config\":{}}"
        );
    }

    #[test]
    fn pinned_archives_are_verified_then_unpacked_with_fixed_modes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let bin = fake_binary(t.path());
        let geth = tar_gz(
            t.path(),
            "geth-alltools-linux-amd64-1.13.15-c5ba367e",
            &[
                ("geth", "geth binary", 0o700),
                ("bootnode", "bootnode binary", 0o775),
                ("clef", "not wanted", 0o755),
            ],
        );
        let (clone, commit) = git_repo(
            t.path(),
            &[
                ("app.js", "// app", 0o600),
                ("bin/www", "#!/usr/bin/env node", 0o700),
            ],
        );
        // Neither untracked files nor the clone's .git are installed: only the pinned commit's tree.
        fs::write(clone.join("untracked.js"), "// not committed").unwrap();
        let pins = pins_for(&geth, Some(&commit));
        let mut a = args(&root);
        a.geth_archive = Some(geth);
        a.ethstats_source = Some(clone);
        for _ in 0..2 {
            install(&root, &a, &pins, &bin).unwrap();
            assert_eq!(
                fs::read_to_string(root.join(paths::GETH)).unwrap(),
                "geth binary"
            );
            assert_eq!(mode(&root.join(paths::GETH)), 0o755);
            assert_eq!(mode(&root.join(paths::BOOTNODE)), 0o755);
            assert!(!root.join("usr/local/bin/clef").exists());
            let app = root.join(paths::ETHSTATS_APP);
            assert_eq!(mode(&app), 0o755);
            assert_eq!(mode(&app.join("app.js")), 0o644);
            assert_eq!(mode(&app.join("bin/www")), 0o755);
            assert!(!app.join(".git").exists() && !app.join("untracked.js").exists());
            assert_eq!(
                fs::read_link(root.join(paths::ETHSTATS_SECRET_LINK)).unwrap(),
                Path::new("/run/node-agent/secrets/ws_secret.json")
            );
            assert_eq!(mode(&root.join(paths::ETHSTATS_WRAPPER)), 0o755);
            let leftovers: Vec<_> = fs::read_dir(root.join("opt"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(leftovers, vec![std::ffi::OsString::from("ethstats-server")]);
        }
    }

    #[test]
    fn an_ethstats_clone_at_another_commit_is_refused_before_anything_is_written() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let bin = fake_binary(t.path());
        let (clone, commit) = git_repo(t.path(), &[("app.js", "// app", 0o644)]);
        let mut a = args(&root);
        a.ethstats_source = Some(clone.clone());
        let pins = pins_for(Path::new("/dev/null"), None);
        let e = install(&root, &a, &pins, &bin).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "is at commit {commit}, but ethstats.commit = {}",
                "0a".repeat(20)
            )) && e.contains("git checkout --detach"),
            "{e}"
        );
        a.ethstats_source = Some(t.path().join("nothing"));
        let e = install(&root, &a, &pins, &bin).unwrap_err().to_string();
        assert!(e.contains("is not a git checkout"), "{e}");
        assert!(
            !root.exists(),
            "nothing may be installed when a check fails"
        );
    }

    #[test]
    fn a_tampered_archive_is_refused_before_anything_is_written() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let bin = fake_binary(t.path());
        let geth = tar_gz(
            t.path(),
            "geth-x",
            &[("geth", "a", 0o755), ("bootnode", "b", 0o755)],
        );
        // The ethstats commit is empty: a geth-only install still needs every pin filled (fail closed).
        let pins = pins_for(&geth, Some(""));
        let mut a = args(&root);
        a.geth_archive = Some(geth.clone());
        let e = install(&root, &a, &pins, &bin).unwrap_err();
        assert!(
            matches!(&e, InstallError::Unpinned { key, .. } if key == "ethstats.commit"),
            "{e}"
        );
        let pins = pins_for(&geth, None);
        fs::write(&geth, b"not the archive that was pinned").unwrap();
        let e = install(&root, &a, &pins, &bin).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("does not match geth.sha256"), "{msg}");
        assert!(
            !root.exists(),
            "nothing may be installed when a check fails"
        );
    }

    /// The archive path is a FIFO that serves the pinned archive to its first reader and another archive
    /// to every later one: a stand-in for a path swapped between the checksum check and the unpack.
    /// Reading the path twice (check, then unpack) installs the swapped bytes; reading it once does not.
    #[test]
    fn the_bytes_verified_are_the_bytes_unpacked_even_if_the_path_is_swapped_after_the_check() {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let bin = fake_binary(t.path());
        let pinned = tar_gz(
            t.path(),
            "geth-pinned",
            &[("geth", "pinned geth", 0o755), ("bootnode", "b", 0o755)],
        );
        let swapped = tar_gz(
            t.path(),
            "geth-swapped",
            &[("geth", "swapped geth", 0o755), ("bootnode", "b", 0o755)],
        );
        let pins = pins_for(&pinned, None);
        let fifo = t.path().join("geth.tar.gz");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let server = {
            let (fifo, stop) = (fifo.clone(), stop.clone());
            let (pinned, swapped) = (fs::read(pinned).unwrap(), fs::read(swapped).unwrap());
            std::thread::spawn(move || {
                // The fifo's descriptors in this process other than `except`.
                let open_here = |except: i32| {
                    fs::read_dir("/proc/self/fd").unwrap().flatten().any(|e| {
                        e.file_name().to_str().and_then(|n| n.parse().ok()) != Some(except)
                            && fs::read_link(e.path()).is_ok_and(|l| {
                                l.as_os_str().as_bytes() == fifo.as_os_str().as_bytes()
                            })
                    })
                };
                let wait_while = |busy: &dyn Fn() -> bool| {
                    while busy() && !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                };
                // Opening for writing waits for the first reader (install, checking the checksum).
                let Ok(mut w) = fs::OpenOptions::new().write(true).open(&fifo) else {
                    return;
                };
                let _ = w.write_all(&pinned);
                // Close only once that reader's descriptor is seen, then wait until it is closed:
                // a later writer joining while it still reads would hand it both archives as one.
                let mine = w.as_raw_fd();
                wait_while(&|| !open_here(mine));
                drop(w);
                wait_while(&|| open_here(-1));
                // Every later reader gets the other archive; without a reader the open fails (ENXIO).
                while !stop.load(Ordering::SeqCst) {
                    match fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(nix::libc::O_NONBLOCK)
                        .open(&fifo)
                    {
                        Ok(mut w) => {
                            let _ = w.write_all(&swapped);
                        }
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
                    }
                }
            })
        };
        let mut a = args(&root);
        a.geth_archive = Some(fifo);
        let result = install(&root, &a, &pins, &bin);
        stop.store(true, Ordering::SeqCst);
        // Releases the server if install failed before it opened the archive.
        let _ = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(t.path().join("geth.tar.gz"));
        server.join().unwrap();
        let report = result.unwrap();
        assert!(
            report.iter().any(|l| l.starts_with("verified")),
            "{report:?}"
        );
        assert_eq!(
            fs::read_to_string(root.join(paths::GETH)).unwrap(),
            "pinned geth"
        );
    }

    #[test]
    fn the_private_scratch_directory_is_0700_and_gone_afterwards() {
        let scratch = private_scratch().unwrap();
        let path = scratch.path().to_owned();
        assert_eq!(mode(&path), 0o700);
        drop(scratch);
        assert!(!path.exists());
    }

    #[test]
    fn an_archive_without_bootnode_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let bin = fake_binary(t.path());
        let geth = tar_gz(t.path(), "geth-linux-amd64", &[("geth", "a", 0o755)]);
        let pins = pins_for(&geth, None);
        let mut a = args(&root);
        a.geth_archive = Some(geth);
        let e = install(&root, &a, &pins, &bin).unwrap_err().to_string();
        assert!(e.contains("has no bootnode"), "{e}");
        assert!(!root.exists());
    }

    #[test]
    fn units_name_the_installed_paths() {
        assert!(UNIT.contains(&format!("ExecStart=/{} run", paths::BINARY)));
        assert!(UNIT.contains(&format!("ExecStartPre=+/{} prepare", paths::BINARY)));
        assert!(TMPFILES.contains("/run/node-agent/secrets           0700 node-agent node-agent"));
        // The service user matches the config default and has a fixed uid (it owns the data on EFS).
        assert!(SYSUSERS.contains("u node-agent     64100:64100"));
        assert!(crate::config::EXAMPLE.contains("service = \"node-agent\""));
        // The ethstats link points into the default secrets directory.
        assert!(crate::config::EXAMPLE.contains("dir = \"/run/node-agent/secrets\""));
        assert!(paths::ETHSTATS_SECRET_TARGET.starts_with("/run/node-agent/secrets/"));
    }
}

//! Laying the entries out under the root: each file written atomically (temp file, fsync, mode, rename,
//! directory fsync), trees copied through descriptors with normalised modes and swapped in whole, links
//! replaced. Says what it did, one line per entry.

use super::layout::{Entry, Existing, Source};
use super::{io_err, InstallError};
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::Path;

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
    let mut input: Box<dyn io::Read + '_> = match source {
        Source::Text(t) => Box::new(t.as_bytes()),
        Source::File(p) => Box::new(fs::File::open(p).map_err(io_err("cannot open", p))?),
    };
    crate::sys::replace::replace(dest, mode, |out| io::copy(&mut input, out).map(drop)).map_err(
        |e| InstallError::Io {
            what: e.what,
            path: e.path,
            source: e.source,
        },
    )
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::{args, fake_binary, mode};
    use super::super::install;
    use super::super::layout::paths;
    use std::fs;

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
            include_str!("../../../../units/node-agent.service")
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
}

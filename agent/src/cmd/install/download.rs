//! The pinned downloads, checked before anything is written: the geth archive copied once into a
//! private scratch directory, hashed on the way and compared with its pin, then unpacked from that very
//! copy; the ethstats clone checked to be at its pinned commit, then that commit's tree exported.

use super::layout::{Entry, Source};
use super::{io_err, run_checked, InstallError, Ran};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Copies the archive at `source` into the private directory `scratch` through one open descriptor,
/// hashing exactly the bytes written, and checks them against the pin. Returns the copy, rewound, for
/// `unpack`: what is unpacked is what was verified, whatever happens at `source` after it was opened
/// (a path re-opened after the check could have been swapped in between).
pub(super) fn take_verified(
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

/// A private scratch directory (mode 0700, fresh random name, removed on drop): nobody else can swap
/// the copied archives or the unpacked files between their check and their use.
pub(super) fn private_scratch() -> Result<tempfile::TempDir, InstallError> {
    let parent = std::env::temp_dir();
    tempfile::Builder::new()
        .prefix("node-agent-install-")
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(&parent)
        .map_err(io_err("cannot create a private directory in", &parent))
}

/// Unpacks a verified .tar.gz, read from `data` (the private copy `take_verified` returned), with the
/// system's tar and returns its single top-level directory. `archive` only names it in errors.
pub(super) fn unpack(archive: &Path, data: fs::File, into: &Path) -> Result<PathBuf, InstallError> {
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
pub(super) fn check_sources(archive: &Path, entries: &[Entry]) -> Result<(), InstallError> {
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

/// Exports the pinned commit's tree from the git checkout `repo` into `into` (`git archive`, so only the
/// committed files: no `.git`, nothing untracked or modified), after checking that the checkout is at
/// that commit. Returns the exported directory.
pub(super) fn export_commit(
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::{args, fake_binary, git_repo, mode, pins_for, tar_gz};
    use super::super::layout::paths;
    use super::super::{install, InstallError};
    use super::*;
    use crate::chain::pins::PinError;

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
            matches!(&e, InstallError::Pins(PinError::Unpinned { key, .. }) if key == "ethstats.commit"),
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
}

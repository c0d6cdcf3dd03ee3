//! Test fixtures of `install`: arguments, a stand-in binary, archives, a git clone and pins for them.

use crate::cli::InstallArgs;
use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn args(root: &Path) -> InstallArgs {
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

pub fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// Writes `body` to a new file at `path` (parents created) with exactly `mode`, set on its descriptor.
fn write_file(path: &Path, body: &str, mode: u32) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .unwrap();
    f.write_all(body.as_bytes()).unwrap();
    f.set_permissions(fs::Permissions::from_mode(mode)).unwrap();
}

/// A fake binary standing in for /proc/self/exe.
pub fn fake_binary(dir: &Path) -> PathBuf {
    let b = dir.join("node-agent-build");
    fs::write(&b, b"\x7fELF fake").unwrap();
    b
}

pub fn tar_gz(dir: &Path, top: &str, files: &[(&str, &str, u32)]) -> PathBuf {
    let src = dir.join("src");
    let _ = fs::remove_dir_all(&src);
    for (name, body, m) in files {
        let p = src.join(top).join(name);
        write_file(&p, body, *m);
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

pub fn sha256_file(path: &Path) -> String {
    crate::chain::genesis::encode_hex(&Sha256::digest(fs::read(path).unwrap()))
}

/// Pins for a test archive; the ethstats commit is a made-up one unless given.
pub fn pins_for(geth: &Path, ethstats_commit: Option<&str>) -> String {
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
pub fn git_repo(dir: &Path, files: &[(&str, &str, u32)]) -> (PathBuf, String) {
    let repo = dir.join("ethstats-clone");
    for (name, body, m) in files {
        let p = repo.join(name);
        write_file(&p, body, *m);
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

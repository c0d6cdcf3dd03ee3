//! `node-agent install` run as a user would: the real binary lays out a host under a scratch root.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_node-agent"))
        .args(args)
        .env_clear()
        .output()
        .expect("node-agent runs")
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn install_lays_out_the_running_binary_units_config_and_genesis() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let r = root.to_str().unwrap();
    let out = agent(&["install", "--root", r]);
    assert!(out.status.success(), "{}", text(&out));
    let expect = [
        ("usr/local/bin/node-agent", 0o755),
        ("usr/local/lib/systemd/system/node-agent.service", 0o644),
        ("usr/local/lib/sysusers.d/node-agent.conf", 0o644),
        ("usr/local/lib/tmpfiles.d/node-agent.conf", 0o644),
        ("etc/node-agent/config.toml", 0o644),
        ("usr/share/node-agent/genesis.json", 0o644),
    ];
    for (p, m) in expect {
        assert_eq!(mode(&root.join(p)), m, "{p}");
    }
    // The installed binary is this very program, and it runs from there.
    assert_eq!(
        fs::read(root.join("usr/local/bin/node-agent")).unwrap(),
        fs::read(env!("CARGO_BIN_EXE_node-agent")).unwrap()
    );
    let v = Command::new(root.join("usr/local/bin/node-agent"))
        .arg("version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains("geth 1.13.15"));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (installed, source) in [
        (
            "usr/local/lib/systemd/system/node-agent.service",
            "units/node-agent.service",
        ),
        (
            "usr/local/lib/tmpfiles.d/node-agent.conf",
            "units/tmpfiles.d/node-agent.conf",
        ),
        (
            "usr/local/lib/sysusers.d/node-agent.conf",
            "units/sysusers.d/node-agent.conf",
        ),
        (
            "etc/node-agent/config.toml",
            "resources/config.example.toml",
        ),
        (
            "usr/share/node-agent/genesis.json",
            "resources/genesis.json",
        ),
    ] {
        assert_eq!(
            fs::read(root.join(installed)).unwrap(),
            fs::read(repo.join(source)).unwrap(),
            "{installed} differs from {source}"
        );
    }

    // Again: the same tree, and the operator's config survives.
    fs::write(
        root.join("etc/node-agent/config.toml"),
        "[chain]\nnetwork_id = 7\n",
    )
    .unwrap();
    let again = agent(&["install", "--root", r]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        fs::read_to_string(root.join("etc/node-agent/config.toml")).unwrap(),
        "[chain]\nnetwork_id = 7\n"
    );
}

#[test]
fn print_downloads_gives_the_shipped_pins_and_an_empty_pin_fails_closed() {
    let list = agent(&["install", "--print-downloads"]);
    assert!(list.status.success(), "{}", text(&list));
    let stdout = String::from_utf8_lossy(&list.stdout);
    for want in [
        "geth.url=https://gethstore.blob.core.windows.net/builds/geth-alltools-linux-amd64-1.13.15-c5ba367e.tar.gz",
        "geth.sha256=2f153cdcd9801d748d8f812cce9d7a432d155f52eb78018d09d881dfe354dfdd",
        "geth.signature_url=https://gethstore.blob.core.windows.net/builds/geth-alltools-linux-amd64-1.13.15-c5ba367e.tar.gz.asc",
        "geth.signing_key=geth-linux-builder.asc",
        "geth.signing_key_fingerprint=FDE5A1A044FA13D2F7ADA019A61A13569BA28146",
        "ethstats.commit=afaed6757842baff82dec8c9e0a01c661bbb88ab",
    ] {
        assert!(stdout.lines().any(|l| l == want), "{want} not in:\n{stdout}");
    }

    // A pins file with an empty checksum: refused, naming the file and the key, before anything else.
    let t = tempfile::tempdir().unwrap();
    let shipped = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/versions.toml"),
    )
    .unwrap();
    let pins = t.path().join("pins.toml");
    fs::write(
        &pins,
        shipped.replace(
            "2f153cdcd9801d748d8f812cce9d7a432d155f52eb78018d09d881dfe354dfdd",
            "",
        ),
    )
    .unwrap();
    let p = pins.to_str().unwrap();
    let list = agent(&["install", "--print-downloads", "--pins", p]);
    assert_eq!(list.status.code(), Some(1), "{}", text(&list));
    let err = String::from_utf8_lossy(&list.stderr);
    assert!(
        err.starts_with(&format!("node-agent: error: {p}: geth.sha256 is empty")),
        "{err}"
    );
    assert!(err.contains("trusted copy"), "{err}");

    // An archive is never installed against an empty pin, whatever it holds.
    let archive = t.path().join("geth.tar.gz");
    fs::write(&archive, b"anything").unwrap();
    let root = t.path().join("root");
    let out = agent(&[
        "install",
        "--pins",
        p,
        "--root",
        root.to_str().unwrap(),
        "--geth-archive",
        archive.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!root.exists(), "nothing is installed when a pin is missing");
}

/// With --enable, systemd's own tools create the users and directories and enable the unit in the root.
/// Needs root (chown) and systemd-sysusers, systemd-tmpfiles, systemctl: skipped elsewhere.
#[test]
fn install_enable_creates_users_directories_and_the_wants_link() {
    let is_root = fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")))
        .unwrap_or(false);
    let tools = ["systemd-sysusers", "systemd-tmpfiles", "systemctl"]
        .iter()
        .all(|t| Command::new(t).arg("--version").output().is_ok());
    if !is_root || !tools {
        eprintln!("skipped: needs root and systemd's tools");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let out = Command::new(env!("CARGO_BIN_EXE_node-agent"))
        .args(["install", "--enable", "--root", root.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    let group = fs::read_to_string(root.join("etc/group")).unwrap();
    // One service user with fixed ids: it owns the chain data on EFS on every host.
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("node-agent:x:64100:64100:")),
        "{passwd}"
    );
    let operators = group
        .lines()
        .find(|l| l.starts_with("node-agent:"))
        .unwrap_or_else(|| panic!("no node-agent group in {group}"));
    for (dir, m) in [
        ("var/lib/node-agent", 0o755),
        ("var/lib/node-agent/data", 0o750),
        ("var/lib/node-agent/state", 0o750),
        ("var/log/node-agent", 0o750),
        ("run/node-agent", 0o750),
        ("run/node-agent/secrets", 0o700),
    ] {
        assert_eq!(mode(&root.join(dir)), m, "{dir}");
    }
    let gid: u32 = operators.split(':').nth(2).unwrap().parse().unwrap();
    assert_eq!(gid, 64100);
    let log_dir = fs::metadata(root.join("var/log/node-agent")).unwrap();
    assert_eq!((log_dir.uid(), log_dir.gid()), (64100, 64100));
    assert_eq!(
        fs::read_link(root.join("etc/systemd/system/multi-user.target.wants/node-agent.service"))
            .unwrap(),
        Path::new("/usr/local/lib/systemd/system/node-agent.service")
    );
}

/// The archives are copied and unpacked in a private scratch directory under TMPDIR, which goes away
/// with the run, even a refused one (an empty pin or a checksum that does not match).
#[test]
fn a_refused_archive_leaves_no_scratch_directory_behind() {
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let archive = t.path().join("geth.tar.gz");
    fs::write(&archive, b"not the pinned archive").unwrap();
    let root = t.path().join("root");
    let out = Command::new(env!("CARGO_BIN_EXE_node-agent"))
        .args(["install", "--root"])
        .arg(&root)
        .arg("--geth-archive")
        .arg(&archive)
        .env_clear()
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        !root.exists(),
        "nothing is installed from a refused archive"
    );
    let left: Vec<_> = fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

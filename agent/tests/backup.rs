//! Chain backups against the geth stand-in (its `admin_exportChain`, `geth import` and `geth export`
//! write and read RLP blocks whose hashes are keccak of their headers): rounds export exactly what is
//! missing, a kill -9 mid-export leaves nothing visible, `--verify` catches a corrupted segment, a
//! second exporter is refused, `restore` reproduces the head hash, and a new node seeds from the backup.

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const LOCAL_RPC: [&str; 5] = ["--local", "--role", "rpc", "--environment", "dev"];

/// An rpc host exporting into `backups` in segments of 10, two blocks behind its head, with rounds only
/// when asked (the interval is long); its geth seals a block every 0.2 s.
fn exporter(backups: &Path, extra: &str) -> Host {
    let host = Host::new(
        None,
        None,
        &format!(
            "[chain]\nethstats = \"\"\n[backup]\ninterval_secs = 3600\nsegment_blocks = 10\nconfirmations = 2\nlocal_dir = \"{}\"\n{extra}",
            backups.display()
        ),
    );
    geth_faults(&host.path("data/dev/rpc"), json!({"period": 0.2}));
    host
}

fn shared_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("backups dir");
    // The agents drop to SERVICE_UID: the directory is theirs, as prepare makes it on EFS.
    std::os::unix::fs::chown(d.path(), Some(SERVICE_UID), Some(SERVICE_UID)).expect("chown");
    d
}

fn cli(host: &Host, args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(LOCAL_RPC);
    let out = host.output(&all);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest")).unwrap()
}

fn ranges(dir: &Path) -> Vec<(u64, u64)> {
    manifest(dir)["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["first"].as_u64().unwrap(), s["last"].as_u64().unwrap()))
        .collect()
}

/// The files a reader of the directory sees as segments (hidden files are not).
fn visible_segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".rlp.gz") && !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// The head the agent's status reports.
fn head(host: &Host) -> u64 {
    host.status().1["children"][0]["chain"]["head"]
        .as_u64()
        .unwrap_or(0)
}

fn wait_head(host: &Host, at_least: u64) {
    wait_for(
        &format!("head #{at_least}"),
        Duration::from_secs(60),
        || (head(host) >= at_least).then_some(()),
    );
}

fn round(host: &Host) -> String {
    let (ok, out, err) = cli(host, &["backup", "--now"]);
    assert!(ok, "backup --now failed: {err}");
    out
}

#[test]
fn rounds_export_exactly_the_missing_ranges_and_a_kill_mid_export_leaves_nothing_visible() {
    let backups = shared_dir();
    let dir = backups.path();
    let host = exporter(dir, "");
    let mut agent = host.spawn_run(&LOCAL_RPC);
    agent.wait_ready();
    wait_head(&host, 25);
    let out = round(&host);
    let first = ranges(dir);
    // Whole segments of 10 from block 1, then the finished rest, two blocks behind the head.
    assert!(first.len() >= 3, "{first:?} ({out})");
    assert_eq!(first[0], (1, 10));
    assert_eq!(first[1], (11, 20));
    for w in first.windows(2) {
        assert_eq!(w[1].0, w[0].1 + 1, "a gap or an overlap: {first:?}");
    }
    assert!(out.starts_with("wrote "), "{out}");
    let covered = first.last().unwrap().1;
    // The next round exports only what came after.
    wait_head(&host, covered + 8);
    round(&host);
    let second = ranges(dir);
    assert_eq!(
        &second[..first.len()],
        &first[..],
        "segments were rewritten"
    );
    assert_eq!(second[first.len()].0, covered + 1, "{second:?}");
    let (ok, list, _) = cli(&host, &["backup", "--list"]);
    assert!(ok);
    assert!(
        list.contains(&format!("blocks 1-{}", second.last().unwrap().1)),
        "{list}"
    );
    assert!(list.contains("exporter lock: local-"), "{list}");

    // A slow export, killed mid-way with the agent: geth goes with it, leaving a hidden partial file.
    geth_faults(
        &host.path("data/dev/rpc"),
        json!({"period": 0.2, "export_delay": 0.3}),
    );
    let before = visible_segments(dir);
    wait_head(&host, second.last().unwrap().1 + 14);
    let asking = host
        .command(&["backup", "--now"])
        .args(LOCAL_RPC)
        .spawn()
        .unwrap();
    let partial = wait_for("a partial export", Duration::from_secs(20), || {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with(".partial-"))
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid()),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    let _ = agent.wait_exit();
    drop(asking);
    assert_eq!(
        visible_segments(dir),
        before,
        "a partial segment became visible"
    );
    assert_eq!(ranges(dir), second, "the manifest changed");
    assert!(dir.join(&partial).exists());

    // The next agent's round removes it and exports that range again, whole.
    geth_faults(&host.path("data/dev/rpc"), json!({"period": 0.2}));
    let mut agent = host.spawn_run(&LOCAL_RPC);
    agent.wait_ready();
    round(&host);
    assert!(
        !dir.join(&partial).exists(),
        "the partial file is still there"
    );
    let third = ranges(dir);
    assert_eq!(
        third[second.len()].0,
        second.last().unwrap().1 + 1,
        "{third:?}"
    );
    let (ok, out, err) = cli(&host, &["backup", "--verify"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("{} segments verified", third.len())),
        "{out}"
    );
    assert!(agent.terminate().success());
}

#[test]
fn a_second_exporter_is_refused_and_a_corrupted_segment_is_caught() {
    let backups = shared_dir();
    let dir = backups.path();
    let one = exporter(dir, "");
    let mut a = one.spawn_run(&[&LOCAL_RPC[..], &["--instance-id", "i-0first"]].concat());
    a.wait_ready();
    let two = exporter(dir, "");
    let mut b = two.spawn_run(&[&LOCAL_RPC[..], &["--instance-id", "i-0second"]].concat());
    b.wait_ready();
    wait_head(&one, 15);
    // The first agent took the lock at start; the second stands by and says who exports.
    let (ok, _, err) = cli(&two, &["backup", "--now", "--instance-id", "i-0second"]);
    assert!(!ok);
    assert!(
        err.contains("another node exports this environment's backups (i-0first pid"),
        "{err}"
    );
    let (_, doc) = two.status();
    assert_eq!(doc["backup"]["exporting"], false, "{doc:#}");
    assert!(doc["backup"]["holder"]
        .as_str()
        .unwrap()
        .starts_with("i-0first pid "));
    let out = round(&one);
    assert!(out.starts_with("wrote "), "{out}");
    let (_, doc) = one.status();
    assert_eq!(doc["backup"]["exporting"], true);
    assert!(
        doc["backup"]["covered_to"].as_u64().unwrap() >= 10,
        "{doc:#}"
    );

    // One flipped byte in the first segment: --verify names it and fails.
    let name = visible_segments(dir)[0].clone();
    let path = dir.join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let (ok, _, err) = cli(&one, &["backup", "--verify"]);
    assert!(!ok);
    assert!(err.contains(&name), "{err}");
    assert!(err.contains("segments fail their check"), "{err}");
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

#[test]
fn restore_reproduces_the_head_hash_and_a_new_node_seeds_from_the_backup() {
    let backups = shared_dir();
    let dir = backups.path();
    let source = exporter(dir, "");
    let mut agent = source.spawn_run(&LOCAL_RPC);
    agent.wait_ready();
    wait_head(&source, 30);
    round(&source);
    assert!(agent.terminate().success());
    let m = manifest(dir);
    let last = m["segments"].as_array().unwrap().last().unwrap().clone();

    // Offline restore into an empty directory, as root: it runs as the service user.
    let target = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(target.path(), Some(SERVICE_UID), Some(SERVICE_UID)).unwrap();
    let into = target.path().join("restored");
    let (ok, out, err) = cli(
        &source,
        &[
            "restore",
            "--into",
            into.to_str().unwrap(),
            "--from",
            dir.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "up to #{} ({})",
            last["last"],
            last["last_hash"].as_str().unwrap()
        )),
        "{out}"
    );
    let chaindata = into.join("geth/chaindata");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&chaindata).unwrap()),
        SERVICE_UID
    );
    // Not again into a datadir that holds a chain, nor from another genesis.
    let (ok, _, err) = cli(
        &source,
        &[
            "restore",
            "--into",
            into.to_str().unwrap(),
            "--from",
            dir.to_str().unwrap(),
        ],
    );
    assert!(!ok && err.contains("already holds a chain"), "{err}");
    let mut other = m.clone();
    other["genesis_sha256"] = json!("00".repeat(32));
    let elsewhere = shared_dir();
    copy_backups(dir, elsewhere.path(), &other);
    let (ok, _, err) = cli(
        &source,
        &[
            "restore",
            "--into",
            target.path().join("x").to_str().unwrap(),
            "--from",
            elsewhere.path().to_str().unwrap(),
        ],
    );
    assert!(
        !ok && err.contains("were made from another genesis"),
        "{err}"
    );

    // A new rpc node with an empty datadir seeds from the backup, then syncs only what came after it.
    let fresh = exporter(dir, "[storage]\nseed_from_backup = true\n");
    let mut node = fresh.spawn_run(&[&LOCAL_RPC[..], &["--instance-id", "i-0fresh"]].concat());
    node.wait_ready();
    let stderr = node.stderr();
    assert!(stderr.contains("seeded from the backup"), "{stderr}");
    let upto = last["last"].as_u64().unwrap();
    wait_head(&fresh, upto + 2);
    let imported: Vec<u64> = fresh
        .log("geth")
        .lines()
        .filter(|l| {
            l.contains("Imported new chain segment") || l.contains("Successfully sealed new block")
        })
        .filter_map(|l| {
            l.split("number=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .replace(',', "")
                .parse()
                .ok()
        })
        .collect();
    assert!(
        imported.first().is_some_and(|n| *n == upto + 1),
        "the seeded node's first new block is not #{}: {imported:?}",
        upto + 1
    );
    assert!(node.terminate().success());
}

/// A copy of the backups with `manifest` as theirs.
fn copy_backups(from: &Path, to: &Path, manifest: &Value) {
    for name in visible_segments(from) {
        std::fs::copy(from.join(&name), to.join(&name)).unwrap();
    }
    std::fs::write(to.join("manifest.json"), manifest.to_string()).unwrap();
}

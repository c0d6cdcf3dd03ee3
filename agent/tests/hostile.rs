//! A hostile service user: code running as node-agent's user (a compromised geth, say) plants symbolic
//! links, FIFOs and device links everywhere root later looks, then the agent is started again the three
//! ways root touches those places: `prepare` then `run` as the service user (the unit), `run` as root, and
//! `status` as root while the agent is down. Root must never change, follow into, print or hang on what was
//! planted: a root-owned 0600 canary keeps its owner, group, mode and content.

mod common;
use common::*;
use serde_json::json;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Every step root takes must end within this: a FIFO or /dev/zero must not hold it.
const STEP_LIMIT: Duration = Duration::from_secs(40);

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Root's files the service user must never get: a 0600 file and a 0700 directory holding one.
struct Canary {
    _dir: tempfile::TempDir,
    file: PathBuf,
    dir: PathBuf,
    marker: String,
}

/// Owner, group, mode and content of a path (not following a link there), and of a directory's entries.
fn snapshot(p: &Path) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let m = std::fs::symlink_metadata(p).expect("canary exists");
    let content = if m.is_file() {
        std::fs::read(p).unwrap()
    } else {
        Vec::new()
    };
    out.push((p.display().to_string(), m.uid(), m.gid(), m.mode(), content));
    if m.is_dir() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for n in names {
            out.extend(snapshot(&n));
        }
    }
    out
}

impl Canary {
    fn new() -> Canary {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let marker = format!("CANARY-{}-{}", std::process::id(), Rng::from_env().next());
        let file = dir.path().join("canary");
        std::fs::write(&file, format!("{marker}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let sub = dir.path().join("canary-dir");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(sub.join("inside"), format!("{marker}\n")).unwrap();
        Canary {
            _dir: dir,
            file,
            dir: sub,
            marker,
        }
    }

    fn state(&self) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let mut s = snapshot(&self.file);
        s.extend(snapshot(&self.dir));
        s
    }
}

/// Runs a shell command as the service user: what a compromised child could do.
fn as_service_user(script: &str) {
    let out = Command::new("sh")
        .args(["-euc", script])
        .uid(SERVICE_UID)
        .gid(SERVICE_UID)
        .output()
        .expect("run sh as the service user");
    assert!(
        out.status.success(),
        "the service user could not plant ({script}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command to its end, killing it after STEP_LIMIT (a hang is a failure).
fn bounded(mut cmd: Command, what: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("start node-agent");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > STEP_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} hung for {STEP_LIMIT:?}:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read(&err_path).unwrap(),
    }
}

/// A dev rpc host on local storage, whose local root belongs to the service user as tmpfiles.d makes it.
fn host(imds: &ImdsEmulator) -> Host {
    let host = Host::new(
        Some(&imds.endpoint()),
        None,
        "[secrets]\nsource = \"local\"\n",
    );
    let data = host.path("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(SERVICE_UID), Some(SERVICE_UID)).unwrap();
    host
}

/// Boots the agent as root once so every directory exists and belongs to the service user, then stops it.
fn first_boot(host: &Host) {
    let mut agent = host.spawn_run(&[]);
    agent.wait_ready();
    assert!(agent.terminate().success(), "{}", agent.stderr());
}

/// What one restart showed: each step's output, and whether `run` became ready.
struct Restart {
    outputs: Vec<(String, Output)>,
}

impl Restart {
    fn text(&self) -> String {
        self.outputs
            .iter()
            .map(|(what, o)| {
                format!(
                    "--- {what} (exit {:?})\n{}{}",
                    o.status.code(),
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .collect()
    }
}

/// `run` until ready (or its exit), then SIGTERM; bounded.
fn run_briefly(mut cmd: Command, what: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let err_path = dir.path().join("err");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("start node-agent run");
    let start = Instant::now();
    let mut signalled = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        if !signalled && (err.contains(" INFO ready children=") || start.elapsed() > STEP_LIMIT) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            signalled = true;
        }
        if start.elapsed() > STEP_LIMIT * 2 {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} hung:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: Vec::new(),
        stderr: std::fs::read(&err_path).unwrap(),
    }
}

/// The agent started again the three ways root touches the service user's trees.
fn restart_every_way(host: &Host, plant: &dyn Fn()) -> Restart {
    let mut outputs = Vec::new();
    plant();
    outputs.push((
        "prepare (root)".to_owned(),
        bounded(host.command(&["prepare"]), "prepare"),
    ));
    let mut run = host.command(&["run"]);
    run.uid(SERVICE_UID).gid(SERVICE_UID);
    outputs.push((
        "run (service user)".to_owned(),
        run_briefly(run, "run as the service user"),
    ));
    plant();
    outputs.push((
        "run (root)".to_owned(),
        run_briefly(host.command(&["run"]), "run as root"),
    ));
    plant();
    outputs.push((
        "status (root, agent down)".to_owned(),
        bounded(host.command(&["status"]), "status"),
    ));
    Restart { outputs }
}

fn check_untouched(canary: &Canary, before: &[(String, u32, u32, u32, Vec<u8>)], r: &Restart) {
    let text = r.text();
    assert_eq!(canary.state(), before, "the canary changed:\n{text}");
    assert!(
        !text.contains(&canary.marker),
        "planted content was printed:\n{text}"
    );
}

fn imds() -> ImdsEmulator {
    ImdsEmulator::start(&imds_config(json!({"Role": "rpc", "Environment": "dev"})))
}

/// Every test's start: a host booted once (its directories now the service user's) and a fresh canary
/// with its state before anything was planted.
struct Scene {
    imds: ImdsEmulator,
    host: Host,
    canary: Canary,
    before: Vec<(String, u32, u32, u32, Vec<u8>)>,
}

fn scene() -> Scene {
    let imds = imds();
    let host = host(&imds);
    first_boot(&host);
    let canary = Canary::new();
    let before = canary.state();
    Scene {
        imds,
        host,
        canary,
        before,
    }
}

#[test]
fn links_fifos_and_devices_planted_in_the_secrets_directory_are_removed_never_followed() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let Scene {
        imds: _imds,
        host,
        canary,
        before,
    } = scene();
    let secrets = host.secrets_dir();
    let plant = || {
        as_service_user(&format!(
            "cd {s}; ln -sfn {c} x; ln -sfn {c} ethstats-ws-secret; ln -sfn {d} d; ln -sfn /dev/zero z; rm -f p; mkfifo p; ln -sfn {c} geth-ethstats.toml; ln -sfn {c} .candidate-keystore",
            s = secrets.display(),
            c = canary.file.display(),
            d = canary.dir.display()
        ))
    };
    let r = restart_every_way(&host, &plant);
    check_untouched(&canary, &before, &r);
    // The agent ran both ways and wrote its secret over the planted link.
    for (what, o) in &r.outputs[1..3] {
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(" INFO ready children="),
            "{what} did not start:\n{}",
            r.text()
        );
    }
}

#[test]
fn a_local_data_directory_swapped_for_a_link_is_refused_naming_it() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let Scene {
        imds: _imds,
        host,
        canary,
        before,
    } = scene();
    let data = host.path("data");
    let plant = || {
        as_service_user(&format!(
            "cd {data}; [ -L dev ] || mv dev dev.old; ln -sfn {d} dev",
            data = data.display(),
            d = canary.dir.display()
        ))
    };
    let r = restart_every_way(&host, &plant);
    check_untouched(&canary, &before, &r);
    let (_, prepare) = &r.outputs[0];
    let line = error_line(prepare);
    assert!(
        line.contains(&format!("{}/dev", data.display())) && line.contains("symbolic link"),
        "{}",
        r.text()
    );
}

#[test]
fn a_sentinel_planted_as_a_link_fifo_or_device_is_refused_without_hanging_or_printing_it() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let Scene {
        imds: _imds,
        host,
        canary,
        before,
    } = scene();
    let datadir = host.path("data/dev/rpc");
    for target in [
        canary.file.display().to_string(),
        "/dev/zero".into(),
        "FIFO".into(),
    ] {
        let plant = || {
            let make = if target == "FIFO" {
                "mkfifo .node-agent-storage.json".to_owned()
            } else {
                format!("ln -sfn {target} .node-agent-storage.json")
            };
            as_service_user(&format!(
                "cd {}; rm -f .node-agent-storage.json; {make}",
                datadir.display()
            ))
        };
        let r = restart_every_way(&host, &plant);
        check_untouched(&canary, &before, &r);
        let (_, prepare) = &r.outputs[0];
        assert_eq!(prepare.status.code(), Some(1), "{target}: {}", r.text());
        let line = error_line(prepare);
        assert!(
            line.contains(".node-agent-storage.json")
                && (line.contains("symbolic link") || line.contains("not a regular file")),
            "{target}: {}",
            r.text()
        );
    }
}

#[test]
fn logs_and_sockets_planted_as_links_or_fifos_are_neither_followed_nor_printed() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let Scene {
        imds: _imds,
        host,
        canary,
        before,
    } = scene();
    for fifo in [false, true] {
        let plant = || {
            let agent_log = if fifo {
                "rm -f node-agent.log; mkfifo node-agent.log".to_owned()
            } else {
                format!("ln -sfn {} node-agent.log", canary.file.display())
            };
            as_service_user(&format!(
                "cd {logs}; {agent_log}; ln -sfn {c} geth.log; cd {run}; ln -sfn {c} status.sock; ln -sfn {d} geth.ipc",
                logs = host.path("logs").display(),
                run = host.path("run").display(),
                c = canary.file.display(),
                d = canary.dir.display(),
            ))
        };
        let r = restart_every_way(&host, &plant);
        check_untouched(&canary, &before, &r);
        let (_, status) = &r.outputs[3];
        assert_eq!(status.status.code(), Some(3), "{}", r.text());
    }
}

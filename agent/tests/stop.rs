//! Stopping at any point leaves nothing behind: SIGTERM during each boot step that can wait a long time
//! (Secrets Manager retries, the sealer lease, geth init) ends the agent at once; `cleanup` (the unit's
//! `ExecStopPost=+`) empties and unmounts the secrets tmpfs after a crash; no process of the agent's can
//! dump core.

mod common;
use common::*;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn sealer_imds() -> ImdsEmulator {
    ImdsEmulator::start(&imds_config(
        json!({"Role": "sealer", "Environment": "dev"}),
    ))
}

/// A dev sealer with local secrets (no AWS).
fn sealer(imds: &ImdsEmulator, extra: &str) -> Host {
    let host = Host::new(
        Some(&imds.endpoint()),
        None,
        "[secrets]\nsource = \"local\"\n[timeouts]\nsealer_lease_secs = 300\n",
    );
    if !extra.is_empty() {
        host.configure(extra);
    }
    host
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for `needle` in the agent's stderr, then sends SIGTERM and expects a clean exit within 10 s
/// (every boot wait here is minutes long), having logged the stop and written no secret that remains.
fn stop_while(host: &Host, agent: &mut Agent, needle: &str) {
    let start = Instant::now();
    while !agent.stderr().contains(needle) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never saw {needle:?}:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let start = Instant::now();
    let child = &mut agent.child;
    let status = wait_for("the agent to stop", Duration::from_secs(10), || {
        child.try_wait().ok().flatten()
    });
    assert!(status.success(), "{status}: {}", agent.stderr());
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(
        agent.stderr().contains("stop requested during boot"),
        "{}",
        agent.stderr()
    );
    assert_eq!(
        entries(&host.secrets_dir()),
        Vec::<String>::new(),
        "secrets left behind"
    );
}

#[test]
fn sigterm_while_secrets_manager_is_retried_stops_the_boot_at_once() {
    let imds = ImdsEmulator::start(&imds_config(json!({"Role": "rpc", "Environment": "dev"})));
    let mut host = Host::new(
        Some(&imds.endpoint()),
        None,
        "[timeouts]\nsecrets_secs = 300\n",
    );
    // Nothing listens there: every call fails and is retried.
    host.env.push((
        "AWS_ENDPOINT_URL".into(),
        format!("http://127.0.0.1:{}", free_port()),
    ));
    let mut agent = host.spawn_run(&[]);
    stop_while(&host, &mut agent, "Secrets Manager not available; retrying");
}

#[test]
fn sigterm_while_waiting_for_the_sealer_lease_stops_the_boot_at_once() {
    let imds = sealer_imds();
    let host = sealer(&imds, "");
    // Another holder: this test process, through the same kind of lock.
    let datadir = host.path("data/dev/sealer");
    std::fs::create_dir_all(&datadir).unwrap();
    let lease = std::fs::File::create(datadir.join(".node-agent-sealer.lease")).unwrap();
    std::os::unix::fs::fchown(&lease, Some(SERVICE_UID), Some(SERVICE_UID)).unwrap();
    let _held = nix::fcntl::Flock::lock(lease, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .expect("hold the lease");
    std::os::unix::fs::chown(&datadir, Some(SERVICE_UID), Some(SERVICE_UID)).unwrap();
    let mut agent = host.spawn_run(&[]);
    stop_while(
        &host,
        &mut agent,
        "another sealer holds the key's lease; waiting",
    );
}

#[test]
fn sigterm_during_geth_init_stops_the_boot_and_the_init_at_once() {
    let imds = sealer_imds();
    let host = sealer(&imds, "");
    // `exec`: the slow init is the very process the agent started (and must kill).
    let geth = geth_wrapper(
        host.dir.path(),
        "if [ \"$1\" = init ]; then exec sleep 613; fi",
    );
    host.configure(&format!("[binaries]\ngeth = \"{}\"\n", geth.display()));
    let mut agent = host.spawn_run(&[]);
    stop_while(&host, &mut agent, "initialising the chain from the genesis");
    let init_alive = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .any(|p| cmdline(p) == ["sleep", "613"] && alive(p))
    };
    wait_for("geth init to be gone", Duration::from_secs(5), || {
        (!init_alive()).then_some(())
    });
}

#[test]
fn cleanup_empties_and_unmounts_the_secrets_tmpfs_after_a_crash() {
    if !is_root() {
        eprintln!("skipped: mounting the secrets tmpfs needs root");
        return;
    }
    let imds = sealer_imds();
    let host = sealer(&imds, "");
    let mut agent = host.spawn_run(&[]);
    agent.wait_ready();
    // A crash: nothing of the agent's own runs on the way out.
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let secrets = host.secrets_dir();
    assert!(
        entries(&secrets).contains(&"sealer-password".to_owned()),
        "{:?}",
        entries(&secrets)
    );
    let mountinfo = || std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let shown = secrets.display().to_string();
    assert!(mountinfo()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&shown)));

    let out = host.output(&["cleanup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(entries(&secrets), Vec::<String>::new());
    assert!(
        !mountinfo()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(&shown)),
        "the secrets tmpfs is still mounted"
    );
    // Again (nothing left): still fine.
    assert!(host.output(&["cleanup"]).status.success());
}

/// `Max core file size` soft and hard limits of a process.
fn core_limit(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .map(|l| {
            l.split_whitespace()
                .skip(4)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

#[test]
fn neither_the_agent_nor_its_child_can_dump_core() {
    let imds = sealer_imds();
    let host = sealer(&imds, "");
    let mut agent = host.spawn_run(&[]);
    agent.wait_ready();
    let child = agent.the_child();
    assert_eq!(core_limit(agent.pid()), "0 0");
    assert_eq!(core_limit(child), "0 0");
    assert!(agent.terminate().success(), "{}", agent.stderr());
    if !is_root() {
        return;
    }
    // Started as the service user (the unit's way, after `prepare`): not dumpable all the same.
    assert!(host.output(&["prepare"]).status.success());
    use std::os::unix::process::CommandExt;
    let mut cmd = host.command(&["run"]);
    cmd.uid(SERVICE_UID).gid(SERVICE_UID);
    let log = host.path("agent-as-user.stderr");
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut agent = Agent { child, stderr: log };
    agent.wait_ready();
    assert_eq!(proc_status(agent.pid(), "Uid:")[0], SERVICE_UID.to_string());
    // Another process of the same user cannot look inside (as it could with a dumpable process).
    let peek = std::process::Command::new("cat")
        .arg(format!("/proc/{}/environ", agent.pid()))
        .uid(SERVICE_UID)
        .gid(SERVICE_UID)
        .output()
        .unwrap();
    assert!(
        !peek.status.success()
            && String::from_utf8_lossy(&peek.stderr).contains("Permission denied"),
        "the agent is dumpable: {peek:?}"
    );
    assert!(agent.terminate().success(), "{}", agent.stderr());
}

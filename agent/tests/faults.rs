//! Fault injection against the real agent on loopback: the services it depends on go away (at boot, and
//! for a minute while it runs), secrets rotate again and again under load, a child crash-loops or leaves
//! processes behind. Nothing may be lost, nothing may run that should not, and status must tell.
//! (SIGKILLs of the agent, CloudWatch outages and a full log disk are in `logs.rs`.)

mod common;
use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const OUTAGE: Duration = Duration::from_secs(60);
const GROUP: &str = "/node-agent/staging/bootnode";
const AGENT_STREAM: &str = "i-0123456789abcdef0/node-agent";
const LOCAL_BOOTNODE: [&str; 5] = ["--local", "--role", "bootnode", "--environment", "dev"];

fn status_text(host: &Host) -> String {
    String::from_utf8_lossy(&host.output(&["status"]).stdout).into_owned()
}

/// An executable `name` in `dir` that appends a line to `dir/starts` each time it runs, then runs
/// `body` (shell). The directory is writable by the service user the agent drops to.
fn wrapper(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let starts = dir.join("starts");
    script(
        dir,
        name,
        &format!("echo \"$$\" >> {}\n{body}", starts.display()),
    )
}

/// How many times a wrapper in `dir` was started.
fn starts(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("starts"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// A wrapper that records each start (`geth init` and `geth version` included) and then runs the geth
/// stand-in.
fn recorded_geth(dir: &Path) -> PathBuf {
    wrapper(
        dir,
        "geth",
        &format!(
            "exec {} \"$@\"",
            repo().join("tests/standins/geth").display()
        ),
    )
}

fn bootnode_imds() -> ImdsEmulator {
    ImdsEmulator::start(&imds_config(
        json!({"Role": "bootnode", "Environment": "staging"}),
    ))
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_secs(pid: i32) -> f64 {
    let fields = stat_fields(pid).unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .map(|i| {
            fields
                .get(*i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks as f64 / hz
}

/// Holds for `how_long`, checking every second that the agent is up and its one child is `child`.
fn hold(agent: &mut Agent, child: i32, how_long: Duration, during: &str) {
    let end = Instant::now() + how_long;
    while Instant::now() < end {
        if let Ok(Some(st)) = agent.child.try_wait() {
            panic!("the agent exited ({st}) {during}:\n{}", agent.stderr());
        }
        assert_eq!(
            children_of(agent.pid()),
            [child],
            "the child was replaced {during}:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[tokio::test]
async fn secrets_manager_gone_for_a_minute_keeps_the_child_shows_it_and_catches_up_on_rotation() {
    let moto = Moto::start();
    moto.seed_fixture_secrets("staging").await;
    let proxy = FaultProxy::start(&moto.endpoint());
    let imds = bootnode_imds();
    let mut host = Host::new(
        Some(&imds.endpoint()),
        Some(&moto.endpoint()),
        "[secrets]\nrotation_interval_secs = 2\n",
    );
    host.env
        .push(("AWS_ENDPOINT_URL_SECRETS_MANAGER".into(), proxy.endpoint()));
    let mut agent = host.spawn_run(&[]);
    agent.wait_ready();
    let child = agent.the_child();
    wait_for("a first rotation poll", Duration::from_secs(20), || {
        let (code, doc) = host.status();
        (code == Some(0) && doc["services"]["secrets_manager"]["ok_at"].is_u64()).then_some(())
    });

    proxy.set_rules(json!([{"target": "*", "drop": true}]));
    let began = Instant::now();
    let doc = wait_for(
        "status to report Secrets Manager failing",
        Duration::from_secs(30),
        || {
            let (code, doc) = host.status();
            (code == Some(1)).then_some(doc)
        },
    );
    let sm = &doc["services"]["secrets_manager"];
    assert_eq!(sm["ok"], false, "{doc:#}");
    assert!(
        sm["error"]
            .as_str()
            .is_some_and(|e| e.contains("Secrets Manager unreachable")),
        "{doc:#}"
    );
    assert_eq!(doc["children"][0]["state"], "ready", "{doc:#}");
    let text = status_text(&host);
    assert!(
        text.starts_with("DEGRADED") && text.contains("  rotation  Secrets Manager FAILING for"),
        "{text}"
    );
    // A rotation during the outage: picked up once Secrets Manager is back.
    let new_key = format!("{:064x}", 0xfeed_u64);
    moto.rotate_secret("staging/bootnode/nodekey", &new_key)
        .await;
    hold(
        &mut agent,
        child,
        OUTAGE.saturating_sub(began.elapsed()),
        "while Secrets Manager was unreachable",
    );
    assert_eq!(host.status().0, Some(1), "still degraded at the end");

    proxy.set_rules(json!([]));
    let key_file = host.secrets_dir().join("bootnode-nodekey");
    wait_for(
        "the rotated key on the tmpfs",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&key_file)
                .ok()
                .filter(|k| k.trim() == new_key)
        },
    );
    let second = wait_for("the restarted bootnode", Duration::from_secs(20), || {
        children_of(agent.pid()).into_iter().find(|p| *p != child)
    });
    let doc = wait_for("status healthy again", Duration::from_secs(30), || {
        let (code, doc) = host.status();
        (code == Some(0)).then_some(doc)
    });
    assert_eq!(doc["services"]["secrets_manager"]["ok"], true, "{doc:#}");
    assert_eq!(doc["children"][0]["restarts"], 1, "{doc:#}");
    assert_eq!(doc["children"][0]["pid"], second, "{doc:#}");
    let err = agent.stderr();
    assert!(err.contains("Secrets Manager answers again"), "{err}");
    assert_eq!(
        err.matches("restarting to pick up rotated secrets").count(),
        1,
        "{err}"
    );
    assert!(agent.terminate().success());
}

#[tokio::test]
async fn imds_gone_for_a_minute_keeps_the_child_and_shipping_and_status_shows_it() {
    let moto = Moto::start();
    moto.seed_fixture_secrets("staging").await;
    let mut imds = bootnode_imds();
    let host = Host::new(
        Some(&imds.endpoint()),
        Some(&moto.endpoint()),
        "[health]\nimds_interval_secs = 2\n",
    );
    let mut agent = host.spawn_run(&[]);
    agent.wait_ready();
    let child = agent.the_child();
    wait_for("a first IMDS check", Duration::from_secs(20), || {
        let (code, doc) = host.status();
        (code == Some(0) && doc["services"]["imds"]["ok_at"].is_u64()).then_some(())
    });

    imds.stop();
    let began = Instant::now();
    let doc = wait_for(
        "status to report IMDS failing",
        Duration::from_secs(30),
        || {
            let (code, doc) = host.status();
            (code == Some(1)).then_some(doc)
        },
    );
    assert_eq!(doc["services"]["imds"]["ok"], false, "{doc:#}");
    assert!(
        status_text(&host).contains("  imds      instance metadata FAILING for"),
        "{}",
        status_text(&host)
    );
    // CloudWatch still takes the agent's lines: the instance role's credentials are cached.
    let start = Instant::now();
    loop {
        let own = moto.log_messages(GROUP, AGENT_STREAM).await;
        if own
            .iter()
            .any(|m| m.contains("instance metadata unreachable"))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "the outage never reached CloudWatch:\n{}",
            agent.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    hold(
        &mut agent,
        child,
        OUTAGE.saturating_sub(began.elapsed()),
        "while IMDS was unreachable",
    );

    imds.resume();
    let doc = wait_for("status healthy again", Duration::from_secs(30), || {
        let (code, doc) = host.status();
        (code == Some(0)).then_some(doc)
    });
    assert_eq!(doc["services"]["imds"]["ok"], true, "{doc:#}");
    assert_eq!(doc["children"][0]["restarts"], 0, "{doc:#}");
    assert_eq!(children_of(agent.pid()), [child]);
    assert!(
        agent.stderr().contains("instance metadata answers again"),
        "{}",
        agent.stderr()
    );
    assert!(agent.terminate().success());
}

/// What a boot that cannot finish must leave: exit 1 with one error line, retries on the way, no child
/// ever started, no secret on disk.
fn assert_clean_boot_failure(
    host: &Host,
    out: &std::process::Output,
    bin: &Path,
    error: &str,
    retry: &str,
) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = error_line(out);
    assert!(line.contains(error), "{line}");
    assert!(
        err.matches(retry).count() >= 2,
        "fewer than two retries ({retry:?}):\n{err}"
    );
    assert_eq!(starts(bin), 0, "a child started:\n{err}");
    let left: Vec<_> = std::fs::read_dir(host.secrets_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "secrets left behind: {left:?}");
}

#[tokio::test]
async fn imds_secrets_manager_or_efs_unavailable_at_boot_is_retried_then_fails_cleanly() {
    let moto = Moto::start();
    moto.seed_fixture_secrets("staging").await;
    // A sealer: geth must never run, not even `geth init`, without its keystore or on the local disk.
    let bin = tempfile::tempdir().unwrap();
    let geth = recorded_geth(bin.path());
    let binaries = format!("[binaries]\ngeth = \"{}\"\n", geth.display());

    // The deadlines leave room for two of the agent's retries: each SDK call already retries inside
    // (about 2 s for Secrets Manager) before the agent sees a failure.

    // IMDS: nothing listens.
    let host = Host::new(
        None,
        Some(&moto.endpoint()),
        &format!("{binaries}[timeouts]\nimds_secs = 8\n"),
    );
    let out = host.output(&["run"]);
    assert_clean_boot_failure(
        &host,
        &out,
        bin.path(),
        "instance metadata service at",
        "instance metadata not available yet",
    );

    // Secrets Manager: every call dropped.
    let imds = ImdsEmulator::start(&imds_config(
        json!({"Role": "sealer", "Environment": "staging"}),
    ));
    let proxy = FaultProxy::start(&moto.endpoint());
    proxy.set_rules(json!([{"target": "*", "drop": true}]));
    let mut host = Host::new(
        Some(&imds.endpoint()),
        Some(&moto.endpoint()),
        &format!("{binaries}[timeouts]\nsecrets_secs = 10\n"),
    );
    host.env
        .push(("AWS_ENDPOINT_URL_SECRETS_MANAGER".into(), proxy.endpoint()));
    let out = host.output(&["run"]);
    assert_clean_boot_failure(
        &host,
        &out,
        bin.path(),
        "Secrets Manager unreachable after",
        "Secrets Manager not available; retrying",
    );

    // EFS: its mount target's name does not resolve.
    let imds = ImdsEmulator::start(&imds_config(
        json!({"Role": "sealer", "Environment": "staging", "EfsFileSystemId": "fs-0123456789abcdef0"}),
    ));
    let host = Host::new(
        Some(&imds.endpoint()),
        Some(&moto.endpoint()),
        &format!("{binaries}[storage]\nkind = \"efs\"\ndatadir = \"efs-data\"\nefs_dns_name = \"fs-0123456789abcdef0.efs.example.invalid\"\nmount_timeout_secs = 4\n"),
    );
    let out = host.output(&["run"]);
    assert_clean_boot_failure(
        &host,
        &out,
        bin.path(),
        "storage:",
        "file system not ready yet",
    );
    let datadir = host.path("efs-data");
    let local: Vec<_> = std::fs::read_dir(&datadir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        local.is_empty(),
        "written to the local disk instead of EFS: {local:?}"
    );

    // The control: with every service there, the same sealer boots, and the wrapper saw geth run.
    let imds = ImdsEmulator::start(&imds_config(
        json!({"Role": "sealer", "Environment": "staging"}),
    ));
    let host = Host::new(Some(&imds.endpoint()), Some(&moto.endpoint()), &binaries);
    let mut agent = host.spawn_run(&[]);
    agent.wait_ready();
    // `geth version`, `geth init`, then geth itself.
    assert_eq!(starts(bin.path()), 3, "{}", agent.stderr());
    assert!(agent.terminate().success());
}

#[tokio::test]
async fn imds_and_secrets_manager_that_come_back_during_the_boot_retries_let_it_finish() {
    let moto = Moto::start();
    moto.seed_fixture_secrets("staging").await;
    let proxy = FaultProxy::start(&moto.endpoint());
    proxy.set_rules(json!([{"target": "*", "drop": true}]));
    let port = free_port();
    let mut host = Host::new(
        Some(&format!("http://127.0.0.1:{port}")),
        Some(&moto.endpoint()),
        "[timeouts]\nimds_secs = 60\nsecrets_secs = 60\n",
    );
    host.env
        .push(("AWS_ENDPOINT_URL_SECRETS_MANAGER".into(), proxy.endpoint()));
    let mut agent = host.spawn_run(&[]);
    wait_for("IMDS retries", Duration::from_secs(20), || {
        (agent
            .stderr()
            .matches("instance metadata not available yet")
            .count()
            >= 2)
            .then_some(())
    });
    let _imds = ImdsEmulator::start_on(
        &imds_config(json!({"Role": "bootnode", "Environment": "staging"})),
        port,
    );
    wait_for("Secrets Manager retries", Duration::from_secs(30), || {
        (agent
            .stderr()
            .matches("Secrets Manager not available; retrying")
            .count()
            >= 2)
            .then_some(())
    });
    assert!(
        children_of(agent.pid()).is_empty(),
        "a child before its secrets"
    );
    proxy.set_rules(json!([]));
    agent.wait_ready();
    assert!(host.secrets_dir().join("bootnode-nodekey").is_file());
    assert!(agent.terminate().success());
}

/// A bootnode that prints about 20,000 lines a second (load), binds its UDP port (ready), and on SIGTERM
/// says so and exits 0.
const BUSY_BOOTNODE: &str = r#"#!/usr/bin/env python3
import os, signal, socket, sys, time
args = sys.argv[1:]
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", int(args[args.index("-addr") + 1].rsplit(":", 1)[1])))
stopping = False
def stop(*_):
    global stopping
    stopping = True
signal.signal(signal.SIGTERM, stop)
n, pid = 0, os.getpid()
while not stopping:
    os.write(1, "".join("load pid=%d line=%d %s\n" % (pid, n + i, "." * 60) for i in range(200)).encode())
    n += 200
    time.sleep(0.01)
os.write(1, b"graceful stop pid=%d\n" % pid)
"#;

#[tokio::test]
async fn ten_rotations_under_load_restart_the_child_gracefully_once_each() {
    use std::os::unix::fs::PermissionsExt as _;
    let moto = Moto::start();
    moto.seed_fixture_secrets("staging").await;
    let imds = bootnode_imds();
    let bin = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let busy = bin.path().join("busy-bootnode");
    std::fs::write(&busy, BUSY_BOOTNODE).unwrap();
    std::fs::set_permissions(&busy, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Shared with the status poller below.
    let host = std::sync::Arc::new(Host::new(
        Some(&imds.endpoint()),
        Some(&moto.endpoint()),
        &format!(
            "[binaries]\nbootnode = \"{}\"\n[secrets]\nrotation_interval_secs = 1\n[logs]\nmax_file_bytes = 4194304\nkeep_files = 3\n",
            busy.display()
        ),
    ));
    let mut agent = host.spawn_run(&[]);
    agent.wait_ready();
    let mut child = agent.the_child();

    // More load: operators polling status all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (stop, host) = (stop.clone(), host.clone());
        std::thread::spawn(move || {
            let mut answered = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if host.status().1["schema"] == 1 {
                    answered += 1;
                }
            }
            answered
        })
    };

    let key_file = host.secrets_dir().join("bootnode-nodekey");
    for i in 0..10u64 {
        let key = format!("{:064x}", 0x1000 + i);
        moto.rotate_secret("staging/bootnode/nodekey", &key).await;
        let next = wait_for(
            &format!("the restart for rotation {}", i + 1),
            Duration::from_secs(30),
            || children_of(agent.pid()).into_iter().find(|p| *p != child),
        );
        assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim(), key);
        child = next;
    }
    // Several more polls: no further restart.
    hold(
        &mut agent,
        child,
        Duration::from_secs(4),
        "after the last rotation",
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered = poller.join().unwrap();
    assert!(answered > 10, "status answered {answered} times under load");

    let (_, doc) = host.status();
    assert_eq!(doc["children"][0]["restarts"], 10, "{doc:#}");
    assert_eq!(doc["children"][0]["unhealthy_restarts"], 0, "{doc:#}");
    assert_eq!(
        doc["children"][0]["last_exit"], "exited with code 0",
        "{doc:#}"
    );
    let err = agent.stderr();
    assert_eq!(
        err.matches("restarting to pick up rotated secrets").count(),
        10,
        "{err}"
    );
    // Every stop was the child's own exit on SIGTERM, never a SIGKILL.
    let graceful = err
        .lines()
        .filter(|l| l.contains(" stopped ") && l.contains("how=exited with code 0"))
        .count();
    assert_eq!(graceful, 10, "{err}");
    assert!(!err.contains("SIGKILL"), "a stop was not graceful:\n{err}");
    assert!(agent.terminate().success());
}

#[test]
fn a_crash_looping_child_is_restarted_with_backoff_and_the_agent_stays_idle() {
    let bin = tempfile::tempdir().unwrap();
    let bootnode = wrapper(
        bin.path(),
        "bootnode",
        "echo 'fatal: cannot start' >&2\nexit 2",
    );
    let host = Host::new(
        None,
        None,
        &format!(
            "[binaries]\nbootnode = \"{}\"\n[restart]\ninitial_backoff_ms = 200\nmax_backoff_secs = 2\ncrash_loop_after = 3\n",
            bootnode.display()
        ),
    );
    let mut agent = host.spawn_run(&LOCAL_BOOTNODE);
    wait_for("the first start", Duration::from_secs(20), || {
        (starts(bin.path()) >= 1).then_some(())
    });
    let window = Duration::from_secs(20);
    let (cpu0, starts0, t0) = (cpu_secs(agent.pid()), starts(bin.path()), Instant::now());
    std::thread::sleep(window);
    let (cpu, restarts) = (cpu_secs(agent.pid()) - cpu0, starts(bin.path()) - starts0);
    let elapsed = t0.elapsed();
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent gave up:\n{}",
        agent.stderr()
    );
    eprintln!("crash loop: {restarts} restarts, {cpu:.2} CPU-s of the agent in {elapsed:?}");
    // Backoff 200 ms doubling to 2 s, jitter down to 0.8×: at most 4 ramp steps, then one per 1.6 s.
    let bound = 4 + (elapsed.as_secs_f64() / 1.6).ceil() as usize;
    assert!(
        (3..=bound).contains(&restarts),
        "{restarts} restarts in {elapsed:?} (bound {bound})"
    );
    // A tight loop would burn a core; the agent sleeps between restarts.
    assert!(
        cpu < 0.1 * elapsed.as_secs_f64(),
        "the agent used {cpu:.2} CPU-s in {elapsed:?} of crash loop"
    );
    // Between two starts (a start lasts milliseconds) status says so, and the host is down.
    wait_for(
        "status to show the crash loop",
        Duration::from_secs(10),
        || {
            let (code, doc) = host.status();
            (code == Some(2) && doc["children"][0]["state"] == "crash_loop").then_some(())
        },
    );
    assert!(agent
        .stderr()
        .contains("child is crash-looping; still restarting"));
    assert!(agent.terminate().success());
}

#[test]
fn a_child_that_leaves_a_process_holding_its_output_is_still_restarted_and_the_leftover_killed() {
    let bin = tempfile::tempdir().unwrap();
    // The shell exits at once; its background sleep keeps stdout and stderr open.
    let bootnode = wrapper(
        bin.path(),
        "bootnode",
        "sleep 617 &\necho 'started a helper'\nexit 1",
    );
    let host = Host::new(
        None,
        None,
        &format!("[binaries]\nbootnode = \"{}\"\n", bootnode.display()),
    );
    let mut agent = host.spawn_run(&LOCAL_BOOTNODE);
    wait_for("three starts", Duration::from_secs(40), || {
        (starts(bin.path()) >= 3).then_some(())
    });
    let err = agent.stderr();
    assert!(
        err.contains("output still open after the child exited"),
        "{err}"
    );
    assert!(agent.terminate().success());
    let sleepers: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| cmdline(*p) == ["sleep", "617"] && alive(*p))
        .collect();
    assert!(sleepers.is_empty(), "leftovers still running: {sleepers:?}");
}

//! Supervision against the stand-ins: privileges, readiness, restarts, health, graceful and forced stops,
//! no orphans, the version guard, the genesis guard and the one-sealer lease.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

const LOCAL_SEALER: [&str; 5] = ["--local", "--role", "sealer", "--environment", "dev"];
const LOCAL_RPC: [&str; 5] = ["--local", "--role", "rpc", "--environment", "dev"];

/// `restart_in=…` values the agent logged, in seconds.
fn restart_delays(stderr: &str) -> Vec<f64> {
    stderr
        .lines()
        .filter(|l| l.contains("child exited; restarting"))
        .filter_map(|l| l.split("restart_in=").nth(1))
        .filter_map(|v| {
            let v = v.split_whitespace().next()?;
            if let Some(ms) = v.strip_suffix("ms") {
                ms.parse::<f64>().ok().map(|x| x / 1000.0)
            } else {
                v.strip_suffix('s')?.parse().ok()
            }
        })
        .collect()
}

#[test]
fn agent_and_child_run_unprivileged_with_no_capabilities() {
    let host = Host::new(None, None, "");
    let mut agent = host.spawn_run(&LOCAL_SEALER);
    agent.wait_ready();
    let child = agent.the_child();
    let uid = SERVICE_UID.to_string();
    for pid in [agent.pid(), child] {
        for field in ["Uid:", "Gid:"] {
            let ids = proc_status(pid, field);
            assert_eq!(ids, vec![uid.clone(); 4], "pid {pid} {field}");
        }
        assert!(
            proc_status(pid, "Groups:").is_empty(),
            "pid {pid} keeps supplementary groups"
        );
        for cap in ["CapEff:", "CapPrm:", "CapAmb:"] {
            assert_eq!(
                proc_status(pid, cap),
                ["0000000000000000"],
                "pid {pid} {cap}"
            );
        }
        assert_eq!(proc_status(pid, "NoNewPrivs:"), ["1"], "pid {pid}");
    }
    // The secrets belong to the service user, and nobody else can read them.
    let meta = std::fs::metadata(host.secrets_dir().join("sealer-password")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), SERVICE_UID);
    assert!(agent.terminate().success(), "{}", agent.stderr());
}

#[test]
fn ready_is_sent_only_once_geth_answers_json_rpc() {
    let host = Host::new(None, None, "");
    // geth takes 2 s to come up (version and init are not delayed).
    let wrapper = geth_wrapper(
        host.dir.path(),
        r#"case "$1" in version|init) ;; *) sleep 2 ;; esac"#,
    );
    host.configure(&format!("[binaries]\ngeth = \"{}\"\n", wrapper.display()));
    let mut notify = NotifySocket::new();
    let mut cmd_env = host.command(&["run"]);
    let log = host.path("agent.stderr");
    let child = cmd_env
        .args(LOCAL_RPC)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut agent = Agent { child, stderr: log };
    wait_for("the child to start", Duration::from_secs(20), || {
        agent.stderr().contains("INFO started").then_some(())
    });
    assert!(!notify.saw("READY=1"), "READY before geth could answer");
    wait_for("READY=1", Duration::from_secs(30), || {
        notify.saw("READY=1").then_some(())
    });
    let stderr = agent.stderr();
    let serving = stderr.find("serving child=geth").expect("serving logged");
    assert!(
        stderr[serving..].contains("ready children=geth"),
        "{stderr}"
    );
    wait_for("STATUS with the head", Duration::from_secs(20), || {
        notify
            .messages()
            .iter()
            .any(|m| m.starts_with("STATUS=dev rpc: geth ready"))
            .then_some(())
    });
    wait_for("watchdog pings", Duration::from_secs(10), || {
        notify.saw("WATCHDOG=1").then_some(())
    });
    assert!(agent.terminate().success());
    assert!(notify.saw("STOPPING=1"));
}

#[test]
fn a_crashing_child_is_restarted_with_growing_delays_then_reported_as_crash_looping() {
    let host = Host::new(None, None, "[restart]\ncrash_loop_after = 3\n");
    geth_faults(&host.path("data/dev/rpc"), json!({"crash_after": 0.2}));
    let mut agent = host.spawn_run(&LOCAL_RPC);
    wait_for("four restarts", Duration::from_secs(60), || {
        (restart_delays(&agent.stderr()).len() >= 3).then_some(())
    });
    let delays = restart_delays(&agent.stderr());
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "delays do not grow: {delays:?}"
    );
    wait_for("the crash-loop state", Duration::from_secs(60), || {
        agent
            .stderr()
            .contains("child is crash-looping; still restarting")
            .then_some(())
    });
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent gave up"
    );
    assert!(agent.terminate().success(), "{}", agent.stderr());
}

/// `restart_in=…` of the restarts after failed health checks, in seconds.
fn unhealthy_delays(stderr: &str) -> Vec<f64> {
    stderr
        .lines()
        .filter(|l| l.contains("unhealthy past the grace period"))
        .filter_map(|l| l.split("restart_in=").nth(1))
        .filter_map(|v| {
            let v = v.split_whitespace().next()?;
            match v.strip_suffix("ms") {
                Some(ms) => ms.parse::<f64>().ok().map(|x| x / 1000.0),
                None => v.strip_suffix('s')?.parse().ok(),
            }
        })
        .collect()
}

#[test]
fn conditions_a_restart_cannot_fix_are_reported_not_restarted() {
    // A chain stalled upstream (no peer is ahead), and an rpc node without peers.
    for (args, faults, reason) in [
        (
            LOCAL_SEALER,
            json!({"period": 0.5, "stall_head_after": 2}),
            "no peer is ahead",
        ),
        (LOCAL_RPC, json!({"peers": 0}), "no peers"),
    ] {
        let host = Host::new(
            None,
            None,
            "[health]\nmax_head_age_secs = 2\nwarmup_secs = 0\ngrace_secs = 1\n",
        );
        geth_faults(&host.path(&format!("data/dev/{}", args[2])), faults);
        let mut agent = host.spawn_run(&args);
        agent.wait_ready();
        let first = agent.the_child();
        let doc = wait_for("the condition in status", Duration::from_secs(30), || {
            let (code, doc) = host.status();
            let r = doc["children"][0]["reason"].as_str().unwrap_or_default();
            (code == Some(1) && r.contains(reason)).then_some(doc)
        });
        let child = &doc["children"][0];
        assert_eq!(child["state"], "ready", "{doc}");
        assert!(
            child["reason"].as_str().unwrap().contains("not restarted"),
            "{doc}"
        );
        // Well past the grace period: the same geth.
        std::thread::sleep(Duration::from_secs(6));
        assert_eq!(children_of(agent.pid()), [first], "{}", agent.stderr());
        let stderr = agent.stderr();
        assert!(
            !stderr.contains("unhealthy past the grace period"),
            "{stderr}"
        );
        assert_eq!(host.status().1["children"][0]["unhealthy_restarts"], 0);
        assert!(agent.terminate().success());
    }
}

#[test]
fn a_head_stuck_while_peers_advance_is_restarted_with_a_backoff_that_escalates_into_crash_loop() {
    // Each run is longer than stable_after, its healthy part shorter: consecutive unhealthy restarts
    // escalate.
    let host = Host::new(
        None,
        None,
        "[health]\nmax_head_age_secs = 2\nwarmup_secs = 0\ngrace_secs = 3\n\
         [restart]\ninitial_backoff_ms = 400\nmax_backoff_secs = 10\nstable_after_secs = 5\ncrash_loop_after = 2\n",
    );
    // Each run: about 3 s healthy (1 s of blocks, then a head that is not yet 2 s old), then stuck
    // with peers 50 blocks ahead, restarted 3 s later.
    geth_faults(
        &host.path("data/dev/rpc"),
        json!({"period": 0.5, "stall_head_after": 1, "peers_ahead": 50}),
    );
    let mut agent = host.spawn_run(&LOCAL_RPC);
    agent.wait_ready();
    wait_for("three unhealthy restarts", Duration::from_secs(90), || {
        (agent
            .stderr()
            .matches("unhealthy past the grace period")
            .count()
            >= 3)
            .then_some(())
    });
    let stderr = agent.stderr();
    assert!(
        stderr.contains("child is crash-looping; still restarting"),
        "{stderr}"
    );
    let delays = unhealthy_delays(&stderr);
    assert!(
        delays.len() >= 3 && delays.windows(2).all(|w| w[1] > w[0]),
        "delays do not grow: {delays:?}\n{stderr}"
    );
    assert!(stderr.contains("while peers are at #"), "{stderr}");
    assert!(agent.terminate().success());
}

#[test]
fn a_child_ignoring_sigterm_is_killed_after_the_stop_timeout() {
    let host = Host::new(None, None, "[timeouts]\nstop_secs = 1\n");
    geth_faults(&host.path("data/dev/rpc"), json!({"ignore_sigterm": true}));
    let mut agent = host.spawn_run(&LOCAL_RPC);
    agent.wait_ready();
    let child = agent.the_child();
    assert!(agent.terminate().success(), "{}", agent.stderr());
    assert!(
        agent
            .stderr()
            .contains("did not stop in time; sending SIGKILL"),
        "{}",
        agent.stderr()
    );
    assert!(!alive(child));
}

#[test]
fn a_killed_agent_leaves_no_orphan() {
    let host = Host::new(None, None, "");
    let mut agent = host.spawn_run(&LOCAL_RPC);
    agent.wait_ready();
    let child = agent.the_child();
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    wait_for("the orphan to die", Duration::from_secs(10), || {
        (!alive(child)).then_some(())
    });
}

#[test]
fn a_sealer_refuses_another_geth_version_and_an_rpc_node_only_warns() {
    let host = Host::new(None, None, "");
    let wrapper = geth_wrapper(host.dir.path(), "export STANDIN_GETH_VERSION=1.14.0");
    host.configure(&format!("[binaries]\ngeth = \"{}\"\n", wrapper.display()));
    let out = host.output(&["run", "--local", "--role", "sealer", "--environment", "dev"]);
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(
        line.contains("is geth 1.14.0, but a sealer needs exactly 1.13.15"),
        "{line}"
    );
    assert!(
        !host.path("data/dev/sealer/geth").exists(),
        "geth ran on the datadir anyway"
    );

    let mut agent = host.spawn_run(&LOCAL_RPC);
    agent.wait_ready();
    assert!(
        agent.stderr().contains("geth is not the pinned version"),
        "{}",
        agent.stderr()
    );
    assert!(agent.terminate().success());
}

#[test]
fn a_datadir_from_another_genesis_is_refused_and_kept() {
    let host = Host::new(None, None, "");
    let mut agent = host.spawn_run(&LOCAL_RPC);
    agent.wait_ready();
    assert!(agent.terminate().success());

    // The same datadir, now with a different genesis in the config.
    let mut g: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo().join("resources/genesis.json")).unwrap())
            .unwrap();
    g["timestamp"] = json!("0x1");
    let other = host.path("other-genesis.json");
    std::fs::write(&other, g.to_string()).unwrap();
    host.configure(&format!("[chain]\ngenesis = \"{}\"\n", other.display()));
    let out = host.output(&["run", "--local", "--role", "rpc", "--environment", "dev"]);
    assert!(!out.status.success());
    assert!(
        error_line(&out).contains("holds a chain from another genesis"),
        "{}",
        error_line(&out)
    );
    assert!(
        host.path("data/dev/rpc/geth/chaindata").is_dir(),
        "chain data was touched"
    );
}

#[test]
fn a_datadir_initialised_elsewhere_with_another_genesis_is_refused_by_geth_init() {
    let host = Host::new(None, None, "");
    let datadir = host.path("data/dev/rpc");
    let mut g: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo().join("resources/genesis.json")).unwrap())
            .unwrap();
    g["timestamp"] = json!("0x1");
    let other = host.path("other-genesis.json");
    std::fs::write(&other, g.to_string()).unwrap();
    let init = std::process::Command::new(repo().join("tests/standins/geth"))
        .arg("init")
        .arg("--datadir")
        .arg(&datadir)
        .arg(&other)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    std::process::Command::new("chown")
        .arg("-R")
        .arg(format!("{SERVICE_UID}:{SERVICE_UID}"))
        .arg(&datadir)
        .status()
        .unwrap();
    let out = host.output(&["run", "--local", "--role", "rpc", "--environment", "dev"]);
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(
        line.contains("geth init") && line.contains("incompatible genesis"),
        "{line}"
    );
}

#[test]
fn a_second_sealer_on_the_same_key_is_refused_naming_the_holder() {
    let first = Host::new(None, None, "");
    let mut agent = first.spawn_run(&LOCAL_SEALER);
    agent.wait_ready();
    // Another host sharing the sealer's storage (as two instances share the EFS directory).
    let second = Host::new(
        None,
        None,
        &format!(
            "[storage]\nlocal_root = \"{}\"\n",
            first.path("data").display()
        ),
    );
    let out = second.output(&[
        "run",
        "--local",
        "--role",
        "sealer",
        "--environment",
        "dev",
        "--instance-id",
        "i-second",
    ]);
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(
        line.contains("another sealer holds the signer key's lease")
            && line.contains(&format!("pid {}", agent.pid())),
        "{line}"
    );
    assert_eq!(
        children_of(agent.pid()).len(),
        1,
        "the first sealer was disturbed"
    );
    assert!(agent.terminate().success());
}

#[test]
fn prepare_as_root_then_run_unprivileged_as_the_unit_does() {
    let host = Host::new(None, None, "");
    let out = host.output(&[
        "prepare",
        "--local",
        "--role",
        "rpc",
        "--environment",
        "dev",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for dir in ["logs", "run", "data/dev/rpc"] {
        let meta = std::fs::metadata(host.path(dir)).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&meta),
            SERVICE_UID,
            "{dir}"
        );
    }
    // As systemd starts ExecStart= with User=: unprivileged from the first instruction.
    let ids = format!("{SERVICE_UID}");
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args([
        "--reuid",
        &ids,
        "--regid",
        &ids,
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ]);
    cmd.arg(env!("CARGO_BIN_EXE_node-agent"));
    cmd.args(["run", "--config"])
        .arg(&host.config)
        .args(LOCAL_RPC);
    let log = host.path("agent.stderr");
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut agent = Agent { child, stderr: log };
    agent.wait_ready();
    assert!(
        !agent.stderr().contains("dropped privileges"),
        "there was nothing to drop"
    );
    let child = agent.the_child();
    assert_eq!(proc_status(child, "Uid:"), vec![SERVICE_UID.to_string(); 4]);
    assert_eq!(proc_status(child, "CapEff:"), ["0000000000000000"]);
    assert!(agent.terminate().success(), "{}", agent.stderr());

    let out = std::process::Command::new("setpriv")
        .args(["--reuid", &ids, "--regid", &ids, "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_node-agent"))
        .args(["prepare", "--config"])
        .arg(&host.config)
        .args(LOCAL_RPC)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        error_line(&out).contains("run it as root"),
        "{}",
        error_line(&out)
    );
}

#[test]
fn the_watchdog_is_fed_while_a_slow_child_stops() {
    let host = Host::new(None, None, "[timeouts]\nstop_secs = 20\n");
    // geth takes 6 s to stop gracefully: three times WatchdogSec.
    geth_faults(&host.path("data/dev/rpc"), json!({"shutdown_delay": 6}));
    let mut notify = NotifySocket::new();
    let log = host.path("agent.stderr");
    let child = host
        .command(&["run"])
        .args(LOCAL_RPC)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut agent = Agent { child, stderr: log };
    agent.wait_ready();
    wait_for("watchdog pings", Duration::from_secs(10), || {
        notify.saw("WATCHDOG=1").then_some(())
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_for("STOPPING=1", Duration::from_secs(5), || {
        notify.saw("STOPPING=1").then_some(())
    });
    let stopping_at = std::time::Instant::now();
    let mut last_ping = stopping_at;
    let mut longest = Duration::ZERO;
    let mut seen = notify.messages().len();
    let status = loop {
        let exited = agent.child.try_wait().unwrap();
        let msgs = notify.messages();
        if msgs[seen..]
            .iter()
            .any(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        {
            last_ping = std::time::Instant::now();
        }
        seen = msgs.len();
        longest = longest.max(last_ping.elapsed());
        if let Some(status) = exited {
            break status;
        }
        assert!(stopping_at.elapsed() < Duration::from_secs(30), "no exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{}", agent.stderr());
    assert!(
        stopping_at.elapsed() >= Duration::from_secs(5),
        "geth did not take its time to stop"
    );
    assert!(
        longest < Duration::from_millis(1900),
        "no WATCHDOG=1 for {longest:?} while stopping (WatchdogSec 2s):\n{}",
        agent.stderr()
    );
}

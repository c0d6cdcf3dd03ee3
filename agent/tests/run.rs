//! `node-agent run` end to end on loopback: IMDSv2 emulator → plan → secrets from moto into a private
//! directory → the stand-in started with its real command line → its output in the log pipeline →
//! graceful stop on SIGTERM.

mod common;
use common::*;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// The agent's one supervised child, once it is running.
fn file_mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

struct Rig {
    _moto: Moto,
    _imds: ImdsEmulator,
    host: Host,
}

async fn rig(role: &str, seed: bool) -> Rig {
    let moto = Moto::start();
    if seed {
        moto.seed_fixture_secrets("staging").await;
    }
    let imds = ImdsEmulator::start(&imds_config(
        json!({"Role": role, "Environment": "staging"}),
    ));
    let host = Host::new(Some(&imds.endpoint()), Some(&moto.endpoint()), "");
    Rig {
        _moto: moto,
        _imds: imds,
        host,
    }
}

#[tokio::test]
async fn sealer_gets_its_secrets_runs_geth_with_them_and_stops_on_sigterm() {
    let r = rig("sealer", true).await;
    let mut agent = r.host.spawn_run(&[]);
    agent.wait_ready();
    let child = agent.the_child();

    // The real command line, with the secrets only as paths into the private directory.
    let argv = cmdline(child);
    let line = argv.join(" ");
    let secrets = r.host.secrets_dir();
    assert!(line.contains("tests/standins/geth --datadir"), "{line}");
    assert!(
        line.contains(&format!("--password {}/sealer-password", secrets.display())),
        "{line}"
    );
    assert!(
        line.contains(&format!("--keystore {}/keystore", secrets.display())),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "--config {}/geth-ethstats.toml",
            secrets.display()
        )),
        "{line}"
    );
    assert!(
        !line.contains("dev-only"),
        "a secret value reached argv: {line}"
    );

    // Secrets: a private tmpfs of their own, 0700, files 0400, exactly the values in Secrets Manager.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mountinfo
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(secrets.to_str().unwrap())
                && l.contains(" - tmpfs ")),
        "no tmpfs mounted at {}",
        secrets.display()
    );
    assert_eq!(file_mode(&secrets), 0o700);
    for f in [
        "sealer-password",
        "keystore/signer.json",
        "ethstats-ws-secret",
        "geth-ethstats.toml",
    ] {
        assert_eq!(file_mode(&secrets.join(f)), 0o400, "{f}");
    }
    assert_eq!(
        std::fs::read_to_string(secrets.join("sealer-password")).unwrap(),
        "dev-only-password"
    );
    let toml = std::fs::read_to_string(secrets.join("geth-ethstats.toml")).unwrap();
    assert!(
        toml.contains(
            "URL = \"staging-sealer-i-0123456789abcdef0:dev-only-ws-secret@127.0.0.1:3000\""
        ),
        "{toml}"
    );

    // The datadir was initialised from the genesis on first boot, and geth's output reaches its log file.
    let ready = (0..400).any(|_| {
        let log = r.host.log("geth");
        let ok = log.contains("IPC endpoint opened") && log.contains("Unlocked account");
        if !ok {
            std::thread::sleep(Duration::from_millis(50));
        }
        ok
    });
    assert!(
        ready,
        "geth did not come up:\n{}\nagent:\n{}",
        r.host.log("geth"),
        agent.stderr()
    );

    let status = agent.terminate();
    assert!(status.success(), "agent exit {status}:\n{}", agent.stderr());
    assert!(!alive(child), "geth outlived the agent");
    assert!(
        r.host.log("geth").contains("Got interrupt, shutting down"),
        "geth was not stopped gracefully"
    );
    let left: Vec<_> = std::fs::read_dir(&secrets).unwrap().flatten().collect();
    assert!(left.is_empty(), "secrets left behind after stop: {left:?}");
    assert!(
        !agent.stderr().contains("dev-only"),
        "a secret value reached the agent's log"
    );
}

#[tokio::test]
async fn every_role_starts_its_own_program() {
    for (role, needle) in [
        ("rpc", "--http.api eth,net,web3"),
        ("bootnode", "-nodekey"),
        ("ethstats", "ethstats-server"),
    ] {
        let r = rig(role, true).await;
        let mut agent = r.host.spawn_run(&[]);
        agent.wait_ready();
        let child = agent.the_child();
        let line = cmdline(child).join(" ");
        assert!(line.contains(needle), "{role}: {line}");
        let status = agent.terminate();
        assert!(status.success(), "{role}: {status}\n{}", agent.stderr());
        assert!(!alive(child), "{role}: child outlived the agent");
    }
}

#[tokio::test]
async fn a_missing_secret_fails_the_boot_naming_it_and_starts_nothing() {
    let r = rig("bootnode", false).await;
    let mut agent = r.host.spawn_run(&[]);
    let status = agent.wait_exit();
    assert!(!status.success());
    let err = agent.stderr();
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("node-agent: error:"))
        .collect();
    assert_eq!(
        lines,
        ["node-agent: error: secret staging/bootnode/nodekey (environment staging) does not exist in Secrets Manager; create it (aws secretsmanager create-secret --name staging/bootnode/nodekey)"]
    );
    assert!(
        !r.host.path("logs/bootnode.log").exists(),
        "the child was started without its secret"
    );
}

#[tokio::test]
async fn a_crashing_child_is_restarted() {
    let r = rig("rpc", true).await;
    // The stand-in reads fault switches from its datadir.
    let datadir = r.host.path("data/staging/rpc");
    std::fs::create_dir_all(&datadir).unwrap();
    std::fs::write(
        datadir.join("standin-faults.json"),
        r#"{"crash_after": 0.5}"#,
    )
    .unwrap();
    let mut agent = r.host.spawn_run(&[]);
    agent.wait_ready();
    let first = agent.the_child();
    agent.restarted_child(first, Duration::from_secs(20));
    assert!(
        agent.stderr().contains("child exited; restarting"),
        "{}",
        agent.stderr()
    );
    assert!(agent.terminate().success());
}

#[test]
fn local_mode_runs_with_no_aws_and_secrets_from_a_directory() {
    let host = Host::new(None, None, "");
    let mut agent = host.spawn_run(&["--local", "--role", "sealer", "--environment", "dev"]);
    agent.wait_ready();
    let child = agent.the_child();
    assert!(cmdline(child).join(" ").contains("--mine"));
    assert_eq!(
        std::fs::read_to_string(host.secrets_dir().join("sealer-password")).unwrap(),
        "dev-only-password"
    );
    assert!(agent.terminate().success(), "{}", agent.stderr());
}

#[test]
fn first_boot_initialises_the_datadir_once() {
    let host = Host::new(None, None, "");
    let args = ["--local", "--role", "rpc", "--environment", "dev"];
    let mut agent = host.spawn_run(&args);
    agent.wait_ready();
    assert!(agent.terminate().success(), "{}", agent.stderr());
    assert!(
        agent
            .stderr()
            .contains("initialising the chain from the genesis"),
        "{}",
        agent.stderr()
    );
    assert!(host.path("data/dev/rpc/geth/chaindata").is_dir());

    let mut again = host.spawn_run(&args);
    again.wait_ready();
    assert!(again.terminate().success(), "{}", again.stderr());
    assert!(
        !again.stderr().contains("initialising"),
        "second boot ran geth init again:\n{}",
        again.stderr()
    );
}

#[test]
fn geth_init_is_given_the_genesis_bytes_that_were_checked() {
    let host = Host::new(None, None, "");
    let original = std::fs::read_to_string(repo().join("resources/genesis.json")).unwrap();
    let configured = host.path("genesis.json");
    std::fs::write(&configured, &original).unwrap();
    // Writable by the service user the agent (and so geth init) runs as.
    std::fs::set_permissions(
        &configured,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    // Between the check at start and `geth init`, the configured file changes under the agent.
    let wrapper = geth_wrapper(
        host.dir.path(),
        &format!(
            r#"case "$1" in init) echo '{{"not": "a genesis"}}' > {} ;; esac"#,
            configured.display()
        ),
    );
    host.configure(&format!(
        "[chain]\ngenesis = \"{}\"\n[binaries]\ngeth = \"{}\"\n",
        configured.display(),
        wrapper.display()
    ));
    let mut agent = host.spawn_run(&["--local", "--role", "rpc", "--environment", "dev"]);
    agent.wait_ready();
    assert!(agent.terminate().success(), "{}", agent.stderr());
    assert_eq!(
        std::fs::read_to_string(&configured).unwrap(),
        "{\"not\": \"a genesis\"}\n",
        "the wrapper did not change the configured file"
    );
    assert!(host.path("data/dev/rpc/geth/chaindata").is_dir());
    let given = host.path("run/genesis.json");
    assert_eq!(
        std::fs::read_to_string(&given).unwrap(),
        original,
        "geth init was not given the checked bytes"
    );
    let marker =
        std::fs::read_to_string(host.path("data/dev/rpc/.node-agent-genesis.sha256")).unwrap();
    use sha2::Digest as _;
    let want: String = sha2::Sha256::digest(original.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(marker.trim(), want);
}

/// Runs `node-agent ARGS` to its end, killing it (and failing) if it is still running after `limit`.
fn output_within(host: &Host, args: &[&str], limit: Duration) -> std::process::Output {
    let mut child = host
        .command(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start node-agent");
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "`node-agent {}` still running after {limit:?}:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_second_agent_on_the_same_runtime_directory_exits_at_once_and_changes_nothing() {
    use std::os::unix::fs::MetadataExt;
    let host = Host::new(None, None, "");
    let mut agent = host.spawn_run(&["--local", "--role", "rpc", "--environment", "dev"]);
    agent.wait_ready();
    let child = agent.the_child();
    let socket = host.path("run/status.sock");
    let socket_inode = std::fs::metadata(&socket).unwrap().ino();
    let secrets: Vec<_> = std::fs::read_dir(host.secrets_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(!secrets.is_empty());
    let holder = format!("pid {}", agent.pid());
    // The same role again (an operator trying it by hand), another role on the same runtime directory,
    // the root steps, and the secrets cleanup.
    for args in [
        &["run", "--local", "--role", "rpc", "--environment", "dev"][..],
        &["run", "--local", "--role", "sealer", "--environment", "dev"],
        &[
            "prepare",
            "--local",
            "--role",
            "rpc",
            "--environment",
            "dev",
        ],
        &["cleanup"],
    ] {
        let out = output_within(&host, args, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let line = error_line(&out);
        assert!(
            line.contains("another node-agent") && line.contains(&holder),
            "{args:?}: {line}"
        );
    }
    assert_eq!(children_of(agent.pid()), [child]);
    assert_eq!(std::fs::metadata(&socket).unwrap().ino(), socket_inode);
    let now: Vec<_> = std::fs::read_dir(host.secrets_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(now, secrets, "the secrets directory changed");
    let (code, doc) = host.status();
    assert_ne!(code, Some(3), "status says NOT RUNNING: {doc}");
    assert_eq!(doc["agent"]["pid"], agent.pid(), "{doc}");
    assert!(agent.terminate().success(), "{}", agent.stderr());
}

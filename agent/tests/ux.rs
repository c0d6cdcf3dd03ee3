//! What a new user meets in their first hour (issue 17): output commands into a reader that goes away,
//! `status` finding a local agent, `iam-policy` and local mode on a machine that is not a baked host,
//! errors that name the user's mistake, and output that does not mislead.

mod common;
use common::*;
use serde_json::Value;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const LOCAL_RPC: [&str; 5] = ["--local", "--role", "rpc", "--environment", "dev"];
const IAM_POLICY: [&str; 9] = [
    "iam-policy",
    "--role",
    "sealer",
    "--environment",
    "production",
    "--region",
    "eu-central-1",
    "--account-id",
    "123456789012",
];

fn agent(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_node-agent"));
    cmd.args(args).current_dir(repo());
    cmd
}

/// Runs `cmd` with a stdout whose reader is already gone: every write fails with EPIPE.
fn into_closed_pipe(mut cmd: Command) -> Output {
    let (read, write) = nix::unistd::pipe().expect("pipe");
    drop(read);
    let stdout = write.as_fd().try_clone_to_owned().expect("dup");
    drop(write);
    cmd.stdout(Stdio::from(stdout))
        .stderr(Stdio::piped())
        .output()
        .expect("run node-agent")
}

/// These tests are about a machine that is not a baked host.
fn fresh_machine() -> bool {
    let fresh = !Path::new("/etc/node-agent/config.toml").exists()
        && !Path::new("/usr/share/node-agent/genesis.json").exists();
    if !fresh {
        eprintln!("skipped: this machine has /etc/node-agent/config.toml or /usr/share/node-agent/genesis.json");
    }
    fresh
}

#[test]
fn output_commands_end_quietly_when_the_reader_goes_away() {
    let fixture = repo().join("tests/fixtures/local.toml");
    let fixture = fixture.to_str().unwrap();
    let check = [
        "check",
        "--local",
        "--role",
        "sealer",
        "--environment",
        "dev",
        "--config",
        fixture,
        "--json",
    ];
    let cases: Vec<(Vec<&str>, i32)> = vec![
        (vec!["version"], 0),
        (vec!["version", "--json"], 0),
        (check.to_vec(), 0),
        (check[..8].to_vec(), 0),
        (IAM_POLICY.to_vec(), 0),
        (vec!["install", "--print-downloads"], 0),
        (vec!["status", "--socket", "/nonexistent/status.sock"], 3),
        (
            vec!["status", "--json", "--socket", "/nonexistent/s.sock"],
            3,
        ),
    ];
    for (args, code) in cases {
        let out = into_closed_pipe(agent(&args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    }
}

#[test]
fn status_without_config_finds_the_agent_the_same_user_started_and_ignores_a_stale_record() {
    let mut host = Host::new(None, None, "");
    let runtime = tempfile::tempdir().expect("XDG_RUNTIME_DIR");
    let xdg = runtime.path().to_str().unwrap().to_owned();
    host.env.push(("XDG_RUNTIME_DIR".into(), xdg.clone()));
    let mut agent = host.spawn_run(&LOCAL_RPC);
    agent.wait_ready();
    // Started as root in local mode: it drops to the service user without a single warning (the
    // operators' group is missing here, which only matters on a real host).
    let stderr = agent.stderr();
    assert!(!stderr.contains(" WARN "), "{stderr}");

    let status = |args: &[&str]| {
        agent_cmd_without_config(args, &xdg)
            .output()
            .expect("run status")
    };
    let out = status(&["status", "--json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_ne!(
        out.status.code(),
        Some(3),
        "status did not find the agent: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(doc["host"]["role"], "rpc", "{doc}");

    agent.terminate();
    // The record is still there, but nothing answers on it: not running, and how to point status at it.
    let out = status(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.starts_with("NOT RUNNING") && text.contains("pass the same --config"),
        "{text}"
    );
}

/// `node-agent ARGS` with no `--config`, as a user types it.
fn agent_cmd_without_config(args: &[&str], xdg: &str) -> Command {
    let mut cmd = agent(args);
    cmd.env("XDG_RUNTIME_DIR", xdg);
    cmd
}

#[test]
fn iam_policy_as_documented_needs_no_host_config_and_no_genesis() {
    if !fresh_machine() {
        return;
    }
    let out = agent(&IAM_POLICY).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("a JSON policy");
    assert_eq!(doc["Version"], "2012-10-17");
    let text = doc.to_string();
    assert!(text.contains("production/sealer/keystore"), "{text}");

    let mut fs_policy = IAM_POLICY.to_vec();
    fs_policy.extend([
        "--file-system-policy",
        "--role-arn",
        "arn:aws:iam::123456789012:role/production-sealer",
    ]);
    let out = agent(&fs_policy).output().unwrap();
    let line = error_line(&out);
    assert!(
        line.contains("--efs-file-system-id") && !line.contains("tag"),
        "{line}"
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn local_mode_off_a_baked_host_uses_the_built_in_dev_genesis_and_says_so() {
    if !fresh_machine() {
        return;
    }
    let out = agent(&["check", "--local", "--role", "rpc", "--environment", "dev"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("built-in dev genesis"), "{stderr}");

    // And `run` initialises the chain from it.
    let host = Host::new(None, None, "");
    host.configure("[chain]\ngenesis = \"/usr/share/node-agent/genesis.json\"\n");
    let mut agent = host.spawn_run(&LOCAL_RPC);
    agent.wait_ready();
    assert!(agent.stderr().contains("built-in dev genesis"));
    let written = std::fs::read_to_string(host.path("run/genesis.json")).unwrap();
    let repo_genesis = std::fs::read_to_string(repo().join("resources/genesis.json")).unwrap();
    assert_eq!(written, repo_genesis);
    agent.terminate();

    // Without --local and without a config, the way out is named.
    let out = agent_plain(&["check"]);
    let line = error_line(&out);
    assert!(
        line.contains("--config") && line.contains("--local"),
        "{line}"
    );
}

fn agent_plain(args: &[&str]) -> Output {
    agent(args).output().unwrap()
}

#[test]
fn usage_errors_in_local_mode_exit_2_and_name_the_flag() {
    for (args, flag) in [
        (vec!["check", "--local", "--environment", "dev"], "--role"),
        (vec!["run", "--local", "--role", "rpc"], "--environment"),
        (
            vec![
                "check",
                "--local",
                "--role",
                "rpc",
                "--environment",
                "Dev_1",
            ],
            "--environment",
        ),
    ] {
        let out = agent_plain(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(flag) && !stderr.contains("instance tag"),
            "{args:?}: {stderr}"
        );
    }
}

/// get-secret with no credentials anywhere, and the instance metadata service at `imds`.
fn get_secret_without_credentials(imds: Option<&str>) -> Output {
    let empty = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = agent(&["get-secret", "production/sealer/password", "--timeout", "1"]);
    cmd.env("AWS_REGION", REGION)
        .env("AWS_CONFIG_FILE", empty.path())
        .env("AWS_SHARED_CREDENTIALS_FILE", empty.path())
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("NODE_AGENT_LOG");
    match imds {
        Some(e) => cmd.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", e),
        None => cmd.env("AWS_EC2_METADATA_DISABLED", "true"),
    };
    cmd.output().unwrap()
}

#[test]
fn missing_credentials_are_not_an_unreachable_secrets_manager() {
    let out = get_secret_without_credentials(None);
    let line = error_line(&out);
    assert!(
        line.contains("no AWS credentials")
            && line.contains("AWS_PROFILE")
            && line.contains("instance profile")
            && !line.contains("unreachable"),
        "{line}"
    );
    // Off EC2 the credential chain asks the instance metadata service too: its failure is reported in the
    // same terms, in short lines, never as the SDK's internal structs.
    let imds = format!("http://127.0.0.1:{}", free_port());
    let out = get_secret_without_credentials(Some(&imds));
    let line = error_line(&out);
    assert!(
        line.contains("no AWS credentials") && !line.contains("unreachable"),
        "{line}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for l in stderr.lines() {
        assert!(
            l.len() < 600 && !l.contains("ProviderError(") && !l.contains("{ source:"),
            "{l}"
        );
    }
}

#[test]
fn off_ec2_the_first_imds_retry_already_says_how_to_run_without_aws() {
    // Nothing answers at the rig's IMDS endpoint; timeouts.imds_secs is 3.
    let host = Host::new(None, None, "");
    let out = host.output(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr
        .lines()
        .find(|l| l.contains(" WARN "))
        .unwrap_or_default();
    assert!(first.contains("--local"), "{stderr}");
    assert!(error_line(&out).contains("--local"), "{stderr}");
}

#[test]
fn check_says_files_only_without_shipping_and_checks_local_secrets_like_run() {
    // The rig without moto: logs.ship = false.
    let host = Host::new(None, None, "");
    let out = host.output(&[
        "check",
        "--local",
        "--role",
        "sealer",
        "--environment",
        "dev",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("CloudWatch"), "{text}");
    assert!(text.contains("(file only: logs.ship = false)"), "{text}");

    let empty = tempfile::tempdir().unwrap();
    host.configure(&format!(
        "[secrets]\nlocal_dir = \"{}\"\n",
        empty.path().display()
    ));
    let out = host.output(&[
        "check",
        "--local",
        "--role",
        "sealer",
        "--environment",
        "dev",
    ]);
    let line = error_line(&out);
    assert!(
        line.contains("not found in local directory") && line.contains("create the file"),
        "{line}"
    );

    // A wrong password fails check as it would fail run: the keystore is opened.
    let secrets = tempfile::tempdir().unwrap();
    let fixtures = repo().join("tests/fixtures/secrets/dev");
    for (rel, value) in [
        (
            "dev/sealer/keystore",
            std::fs::read(fixtures.join("sealer/keystore")).unwrap(),
        ),
        ("dev/sealer/password", b"not the password".to_vec()),
        (
            "dev/ethstats/ws-secret",
            std::fs::read(fixtures.join("ethstats/ws-secret")).unwrap(),
        ),
    ] {
        let p = secrets.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, value).unwrap();
    }
    host.configure(&format!(
        "[secrets]\nlocal_dir = \"{}\"\n",
        secrets.path().display()
    ));
    let out = host.output(&[
        "check",
        "--local",
        "--role",
        "sealer",
        "--environment",
        "dev",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(line.contains("dev/sealer"), "{line}");
}

//! Secrets against moto: `get-secret` as the drop-in for get_secret.py, error classes through the fault
//! proxy, rotation reaching the running child, and no secret value anywhere it must not be.

mod common;
use common::*;
use serde_json::json;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

#[tokio::test]
async fn get_secret_prints_exactly_the_value_string_binary_or_field() {
    let moto = Moto::start();
    moto.put_secret("app/text", b"line one\nline two").await;
    let binary: Vec<u8> = vec![0, 1, 2, 255, 10, 13, 0x80];
    moto.secrets_client()
        .await
        .create_secret()
        .name("app/binary")
        .secret_binary(aws_smithy_types::Blob::new(binary.clone()))
        .send()
        .await
        .unwrap();
    moto.put_secret("app/json", br#"{"password":"pw\"1","user":"u"}"#)
        .await;

    let out = agent_with_aws(&moto.endpoint(), &["get-secret", "app/text"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"line one\nline two");
    let out = agent_with_aws(&moto.endpoint(), &["get-secret", "app/binary"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, binary);
    let out = agent_with_aws(
        &moto.endpoint(),
        &["get-secret", "app/json", "--field", "password"],
    )
    .output()
    .unwrap();
    assert_eq!(out.stdout, b"pw\"1");
    let out = agent_with_aws(
        &moto.endpoint(),
        &["get-secret", "app/json", "--field", "nope"],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        error_line(&out),
        "node-agent: error: secret app/json: has no field \"nope\""
    );
}

#[tokio::test]
async fn get_secret_writes_a_file_atomically_with_mode_and_owner() {
    let moto = Moto::start();
    moto.put_secret("app/text", b"value").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Two missing directories: the parents are created 0755, the file's own directory 0700 for the owner.
    let path = dir.path().join("out/private/secret");
    let owner = format!("{SERVICE_UID}:{SERVICE_UID}");
    let out = agent_with_aws(
        &moto.endpoint(),
        &[
            "get-secret",
            "app/text",
            "--out",
            path.to_str().unwrap(),
            "--mode",
            "0440",
            "--owner",
            &owner,
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read(&path).unwrap(), b"value");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o440);
    assert_eq!((meta.uid(), meta.gid()), (SERVICE_UID, SERVICE_UID));
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), 1, "temp file left behind: {names:?}");
    let out_dir = std::fs::metadata(dir.path().join("out")).unwrap();
    assert_eq!(out_dir.permissions().mode() & 0o7777, 0o755);
    let private = std::fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(private.permissions().mode() & 0o7777, 0o700);
    assert_eq!((private.uid(), private.gid()), (SERVICE_UID, SERVICE_UID));
    if nix::unistd::geteuid().is_root() {
        // The owner reaches it.
        use std::os::unix::process::CommandExt;
        let read = std::process::Command::new("cat")
            .arg(&path)
            .uid(SERVICE_UID)
            .gid(SERVICE_UID)
            .output()
            .unwrap();
        assert_eq!(
            read.stdout,
            b"value",
            "{}",
            String::from_utf8_lossy(&read.stderr)
        );
    }
}

#[tokio::test]
async fn get_secret_names_what_is_missing_or_denied_and_rides_out_throttling() {
    let moto = Moto::start();
    moto.put_secret("app/text", b"value").await;
    let proxy = FaultProxy::start(&moto.endpoint());

    let out = agent_with_aws(&proxy.endpoint(), &["get-secret", "app/missing"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        error_line(&out),
        "node-agent: error: secret app/missing does not exist in Secrets Manager; create it (aws secretsmanager create-secret --name app/missing)"
    );

    proxy.set_rules(
        json!([{"target": "secretsmanager.GetSecretValue", "type": "AccessDeniedException",
        "message": "User is not authorized to perform: secretsmanager:GetSecretValue"}]),
    );
    let out = agent_with_aws(&proxy.endpoint(), &["get-secret", "app/text"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        error_line(&out),
        "node-agent: error: secret app/text: access denied; grant the instance role secretsmanager:GetSecretValue on it"
    );

    proxy.set_rules(
        json!([{"target": "secretsmanager.GetSecretValue", "type": "DecryptionFailure",
        "message": "cannot decrypt with the KMS key"}]),
    );
    let out = agent_with_aws(&proxy.endpoint(), &["get-secret", "app/text"])
        .output()
        .unwrap();
    assert!(
        error_line(&out).contains("grant the instance role kms:Decrypt"),
        "{}",
        error_line(&out)
    );

    // The SDK retries a throttled call itself a few times, then node-agent keeps retrying to its deadline.
    proxy.set_rules(
        json!([{"target": "secretsmanager.GetSecretValue", "type": "ThrottlingException",
        "message": "Rate exceeded", "times": 5}]),
    );
    let out = agent_with_aws(&proxy.endpoint(), &["get-secret", "app/text"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"value");
}

#[tokio::test]
async fn boot_fails_at_once_on_access_denied_naming_secret_environment_and_permission() {
    let moto = Moto::start();
    moto.seed_fixture_secrets("staging").await;
    let proxy = FaultProxy::start(&moto.endpoint());
    proxy.set_rules(
        json!([{"target": "secretsmanager.GetSecretValue", "type": "AccessDeniedException",
        "message": "not authorized"}]),
    );
    let imds = ImdsEmulator::start(&imds_config(
        json!({"Role": "bootnode", "Environment": "staging"}),
    ));
    let host = Host::new(Some(&imds.endpoint()), Some(&proxy.endpoint()), "");
    let out = host.output(&["run"]);
    assert!(!out.status.success());
    assert_eq!(
        error_line(&out),
        "node-agent: error: secret staging/bootnode/nodekey (environment staging): access denied; grant the instance role secretsmanager:GetSecretValue on it"
    );
    assert!(
        !host.path("logs/bootnode.log").exists(),
        "the child started without its secret"
    );
}

#[tokio::test]
async fn a_rotated_secret_reaches_the_running_node_with_one_graceful_restart_and_leaks_nowhere() {
    let moto = Moto::start();
    moto.seed_fixture_secrets("staging").await;
    let imds = ImdsEmulator::start(&imds_config(
        json!({"Role": "sealer", "Environment": "staging"}),
    ));
    let host = Host::new(
        Some(&imds.endpoint()),
        Some(&moto.endpoint()),
        "[secrets]\nrotation_interval_secs = 1\n",
    );
    let mut agent = host.spawn_run(&[]);
    agent.wait_ready();
    let first = agent.the_child();

    moto.rotate_secret("staging/ethstats/ws-secret", "rotated-ws-secret-2")
        .await;
    let toml = host.secrets_dir().join("geth-ethstats.toml");
    wait_for(
        "the rotated secret in geth's config",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&toml)
                .ok()
                .filter(|t| t.contains("rotated-ws-secret-2"))
        },
    );
    let second = agent.restarted_child(first, Duration::from_secs(20));
    // Several more polling rounds: no further restart.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(children_of(agent.pid()), [second]);
    let stderr = agent.stderr();
    assert_eq!(
        stderr
            .matches("restarting to pick up rotated secrets")
            .count(),
        1,
        "{stderr}"
    );
    assert_eq!(
        std::fs::metadata(&toml).unwrap().permissions().mode() & 0o777,
        0o400
    );
    let geth_log = host.log("geth");
    assert!(
        geth_log.contains("Got interrupt, shutting down"),
        "the restart was not graceful"
    );

    // No secret value in any log (local files and CloudWatch), nor in any process's argv or environment.
    let values = [
        "dev-only-password",
        "dev-only-ws-secret",
        "rotated-ws-secret-2",
    ];
    let mut places = vec![
        ("agent stderr".to_string(), stderr.clone()),
        ("geth log".into(), geth_log),
    ];
    for entry in std::fs::read_dir(host.path("logs")).unwrap().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        places.push((
            entry.path().display().to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    let group = "/node-agent/staging/sealer";
    let mut shipped = Vec::new();
    for _ in 0..60 {
        shipped = moto
            .log_messages(group, "i-0123456789abcdef0/node-agent")
            .await;
        if !shipped.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        !shipped.is_empty(),
        "the agent's own log never reached CloudWatch"
    );
    shipped.extend(moto.log_messages(group, "i-0123456789abcdef0/geth").await);
    places.push(("CloudWatch events".into(), shipped.join("\n")));
    for pid in [agent.pid(), second] {
        for what in ["cmdline", "environ"] {
            let bytes = std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default();
            places.push((
                format!("/proc/{pid}/{what}"),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
    for (place, text) in &places {
        for v in values {
            assert!(!text.contains(v), "secret value {v:?} found in {place}");
        }
    }
    assert!(agent.terminate().success());
}

#[tokio::test]
async fn a_bad_new_version_is_refused_and_the_old_child_keeps_running() {
    let moto = Moto::start();
    moto.seed_fixture_secrets("staging").await;
    let imds = ImdsEmulator::start(&imds_config(
        json!({"Role": "bootnode", "Environment": "staging"}),
    ));
    let host = Host::new(
        Some(&imds.endpoint()),
        Some(&moto.endpoint()),
        "[secrets]\nrotation_interval_secs = 1\n",
    );
    let mut agent = host.spawn_run(&[]);
    agent.wait_ready();
    let child = agent.the_child();
    let key_file = host.secrets_dir().join("bootnode-nodekey");
    let before = std::fs::read(&key_file).unwrap();

    moto.rotate_secret("staging/bootnode/nodekey", "not-a-node-key")
        .await;
    wait_for("the refusal", Duration::from_secs(20), || {
        agent
            .stderr()
            .contains("secret rotation: new version refused; keeping the current secrets")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        children_of(agent.pid()),
        [child],
        "the child was restarted for a bad secret"
    );
    assert_eq!(std::fs::read(&key_file).unwrap(), before);
    let stderr = agent.stderr();
    assert!(
        stderr.contains("node key must be 64 hex digits"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("keeping the current secrets").count(),
        1,
        "the same bad version is reported once"
    );
    assert!(agent.terminate().success());
}

#[test]
fn secrets_changing_together_cause_one_restart() {
    // Local secrets behind a symlink: swapping it changes two secrets in one atomic step.
    let host = Host::new(None, None, "[secrets]\nrotation_interval_secs = 1\n");
    let a = host.path("secrets-a");
    let b = host.path("secrets-b");
    for dir in [&a, &b] {
        copy_fixture_secrets(dir);
    }
    std::fs::write(b.join("dev/ethstats/ws-secret"), "second-ws-secret").unwrap();
    let ks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("dev/sealer/keystore")).unwrap()).unwrap();
    std::fs::write(
        b.join("dev/sealer/keystore"),
        serde_json::to_vec_pretty(&ks).unwrap(),
    )
    .unwrap();
    let link = host.path("secrets");
    std::os::unix::fs::symlink(&a, &link).unwrap();
    host.configure(&format!("[secrets]\nlocal_dir = \"{}\"\n", link.display()));

    let mut agent = host.spawn_run(&["--local", "--role", "sealer", "--environment", "dev"]);
    agent.wait_ready();
    let first = agent.the_child();
    let tmp = host.path("secrets.tmp");
    std::os::unix::fs::symlink(&b, &tmp).unwrap();
    std::fs::rename(&tmp, &link).unwrap();

    let second = agent.restarted_child(first, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(children_of(agent.pid()), [second]);
    let stderr = agent.stderr();
    assert_eq!(
        stderr
            .matches("restarting to pick up rotated secrets")
            .count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("rotated secrets: dev/ethstats/ws-secret, dev/sealer/keystore"),
        "{stderr}"
    );
    assert!(agent.terminate().success());
}

/// The dev signer's keystore re-encrypted with `password` (the key stays the chain's signer).
fn keystore_with_password(dir: &std::path::Path, password: &str) -> Vec<u8> {
    let fixtures = repo().join("tests/fixtures/secrets/dev/sealer");
    let key = eth_keystore::decrypt_key(
        fixtures.join("keystore"),
        std::fs::read(fixtures.join("password")).unwrap(),
    )
    .unwrap();
    let mut rng = rand::thread_rng();
    eth_keystore::encrypt_key(dir, &mut rng, &key, password, Some("rekeyed")).unwrap();
    // The library leaves out geth's "address" field: the fixture's, as the key is the same.
    let fixture: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures.join("keystore")).unwrap()).unwrap();
    let mut ks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("rekeyed")).unwrap()).unwrap();
    ks["address"] = fixture["address"].clone();
    serde_json::to_vec(&ks).unwrap()
}

#[test]
fn a_new_keystore_and_its_new_password_rotated_a_poll_apart_are_installed_together() {
    let host = Host::new(None, None, "[secrets]\nrotation_interval_secs = 1\n");
    let local = host.path("secrets");
    copy_fixture_secrets(&local);
    host.configure(&format!("[secrets]\nlocal_dir = \"{}\"\n", local.display()));
    let rekeyed = keystore_with_password(host.dir.path(), "the-new-password");

    let mut agent = host.spawn_run(&["--local", "--role", "sealer", "--environment", "dev"]);
    agent.wait_ready();
    let first = agent.the_child();
    // The keystore first: with the old password it cannot be used yet, and is refused.
    std::fs::write(local.join("dev/sealer/keystore"), &rekeyed).unwrap();
    wait_for("the refusal", Duration::from_secs(20), || {
        agent
            .stderr()
            .contains("secret rotation: new version refused")
            .then_some(())
    });
    // A poll later, its password: the pair is new and is tried again, and installed.
    std::fs::write(local.join("dev/sealer/password"), "the-new-password").unwrap();
    let start = std::time::Instant::now();
    let second = loop {
        if let Some(p) = children_of(agent.pid()).into_iter().find(|p| *p != first) {
            break p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "geth not restarted on the new pair:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        std::fs::read(host.secrets_dir().join("sealer-password")).unwrap(),
        b"the-new-password"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(children_of(agent.pid()), [second], "{}", agent.stderr());
    let stderr = agent.stderr();
    assert!(
        stderr.contains("rotated secrets: dev/sealer/keystore, dev/sealer/password"),
        "{stderr}"
    );
    assert!(agent.terminate().success());
}

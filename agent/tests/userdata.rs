//! User-data as a configuration layer, read through the IMDS emulator: a default, then the file, then
//! user-data, then a tag; other user-data ignored; bad TOML named by user-data's line; none at all; too
//! large; and a host whose whole configuration is in user-data.

mod common;
use common::*;
use serde_json::{json, Value};

/// `check --json` of a bootnode host whose file sets `file` and whose user-data is `user_data`.
fn check(file: &str, user_data: Option<&str>, tags: Value) -> (bool, Value, String) {
    let mut cfg = imds_config(tags);
    if let Some(u) = user_data {
        cfg["user_data"] = json!(u);
    }
    let imds = ImdsEmulator::start(&cfg);
    let host = Host::new(Some(&imds.endpoint()), None, file);
    let out = host.output(&["check", "--json"]);
    let doc = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        doc,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const BOOTNODE: fn() -> Value = || json!({"Role": "bootnode", "Environment": "staging"});

#[test]
fn a_default_then_the_file_then_user_data_then_a_tag() {
    let file = "[logs]\nretention_days = 60\nkeep_files = 7\n[storage]\nkind = \"efs\"\nefs_file_system_id = \"fs-11111111\"\n";
    let user_data =
        "#node-agent\n[logs]\nretention_days = 90\n[health]\nlisten = \"127.0.0.1:18080\"\n";
    let mut tags = BOOTNODE();
    tags["EfsFileSystemId"] = json!("fs-22222222");
    let (ok, plan, err) = check(file, Some(user_data), tags);
    assert!(ok, "{err}");
    assert!(err.contains("configuration from user-data"), "{err}");
    // Each layer wins over the one before, key by key.
    assert_eq!(plan["log_retention_days"], 90, "user-data over the file");
    assert_eq!(plan["health_listen"], "127.0.0.1:18080");
    assert_eq!(
        plan["storage"]["file_system_id"], "fs-22222222",
        "the tag over the file"
    );
    let sources = &plan["sources"];
    assert_eq!(sources["logs.retention_days"], "user-data");
    assert_eq!(sources["health.listen"], "user-data");
    let path = sources["logs.keep_files"].as_str().unwrap();
    assert!(path.ends_with("/config.toml"), "{sources:#}");
    // The file's kind = "efs" is the default: not listed.
    assert!(sources.get("storage.kind").is_none(), "{sources:#}");
    assert_eq!(sources["storage.efs_file_system_id"], "tag EfsFileSystemId");
    // A default stays unlisted.
    assert!(sources.get("logs.compress").is_none(), "{sources:#}");
    // And `check` says the same for people.
    let imds = ImdsEmulator::start(&{
        let mut c = imds_config(BOOTNODE());
        c["user_data"] = json!(user_data);
        c
    });
    let host = Host::new(Some(&imds.endpoint()), None, file);
    let text = String::from_utf8_lossy(&host.output(&["check"]).stdout).into_owned();
    assert!(
        text.contains("  settings  from user-data: health.listen, logs.retention_days\n"),
        "{text}"
    );
}

#[test]
fn other_user_data_is_left_alone_and_none_is_fine() {
    let (ok, plan, err) = check(
        "",
        Some("#!/bin/sh\necho configured by cloud-init\n"),
        BOOTNODE(),
    );
    assert!(ok, "{err}");
    assert!(
        err.contains(
            "user-data is not node-agent configuration (its first line is not #node-agent)"
        ),
        "{err}"
    );
    assert_eq!(plan["log_retention_days"], 30);
    let (ok, plan, err) = check("", None, BOOTNODE());
    assert!(ok, "{err}");
    assert!(!err.contains("user-data"), "{err}");
    let sources = plan["sources"].as_object().unwrap();
    assert!(!sources.values().any(|v| v == "user-data"), "{sources:?}");
}

#[test]
fn bad_or_oversized_user_data_is_one_line_naming_user_data() {
    let (ok, _, err) = check(
        "",
        Some("#node-agent\n[logs]\nretention_dayz = 90\n"),
        BOOTNODE(),
    );
    assert!(!ok);
    let line = err
        .lines()
        .find(|l| l.starts_with("node-agent: error:"))
        .unwrap_or_default();
    assert!(
        line.starts_with("node-agent: error: user-data line 3: unknown field `retention_dayz`"),
        "{err}"
    );
    // Schema-valid, but a value the settings refuse: named by its key, as from the file.
    let (ok, _, err) = check(
        "",
        Some("#node-agent\n[logs]\nretention_days = 10\n"),
        BOOTNODE(),
    );
    assert!(!ok);
    assert!(
        err.contains("logs.retention_days: CloudWatch accepts"),
        "{err}"
    );
    let big = format!("#node-agent\n# {}\n", "x".repeat(17_000));
    let (ok, _, err) = check("", Some(&big), BOOTNODE());
    assert!(!ok);
    assert!(
        err.contains("user-data line 1: 17015 bytes, over EC2's limit of 16384"),
        "{err}"
    );
}

#[test]
fn the_whole_configuration_can_come_from_user_data() {
    if std::path::Path::new("/etc/node-agent/config.toml").exists() {
        eprintln!("skipped: this machine has /etc/node-agent/config.toml");
        return;
    }
    // The rig's own config, as user-data: no file at all on the host.
    let probe = Host::new(None, None, "");
    let config = std::fs::read_to_string(&probe.config).unwrap();
    let mut cfg = imds_config(BOOTNODE());
    cfg["user_data"] = json!(format!("#node-agent\n{config}"));
    let imds = ImdsEmulator::start(&cfg);
    let host = Host::new(Some(&imds.endpoint()), None, "");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_node-agent"))
        .args(["check", "--json"])
        .envs(host.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["sources"]["storage.kind"], "user-data");
    assert_eq!(plan["role"], "bootnode");
}

#[test]
fn cleanup_empties_the_secrets_directory_user_data_names() {
    let elsewhere = tempfile::tempdir_in("/dev/shm").unwrap();
    let secrets = elsewhere.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("sealer-password"), "hunter2").unwrap();
    let mut cfg = imds_config(BOOTNODE());
    cfg["user_data"] = json!(format!(
        "#node-agent\n[secrets]\ndir = \"{}\"\n",
        secrets.display()
    ));
    let imds = ImdsEmulator::start(&cfg);
    let host = Host::new(Some(&imds.endpoint()), None, "");
    let out = host.output(&["cleanup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !secrets.join("sealer-password").exists(),
        "the secret in user-data's secrets.dir is still there"
    );
}

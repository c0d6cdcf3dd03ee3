//! `node-agent check` against the IMDSv2 emulator: the plan for each role, and one clear line for each
//! kind of bad input.

mod common;
use common::*;
use serde_json::{json, Value};

fn check_json(tags: Value) -> (std::process::Output, Option<Value>) {
    let imds = ImdsEmulator::start(&imds_config(tags));
    let host = Host::new(Some(&imds.endpoint()), None, "");
    let out = host.output(&["check", "--json"]);
    let plan = serde_json::from_slice(&out.stdout).ok();
    (out, plan)
}

fn args(plan: &Value) -> Vec<String> {
    plan["children"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn check_plans_a_sealer_from_its_instance_tags() {
    let (out, plan) =
        check_json(json!({"Role": "sealer", "Environment": "staging", "Name": "ignored"}));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = plan.expect("JSON plan");
    assert_eq!(plan["role"], "sealer");
    assert_eq!(plan["environment"], "staging");
    assert_eq!(plan["identity"]["instance_id"], "i-0123456789abcdef0");
    assert_eq!(plan["identity"]["region"], REGION);
    let names: Vec<&str> = plan["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "staging/ethstats/ws-secret",
            "staging/sealer/keystore",
            "staging/sealer/password"
        ]
    );
    let a = args(&plan).join(" ");
    assert!(
        a.contains("--mine --miner.etherbase 0xea94d5964b36a107571e051649c2eb52ff0c323f"),
        "{a}"
    );
    assert!(a.contains("--nat extip:127.0.0.1"), "{a}");
    assert_eq!(
        plan["children"][0]["log"]["group"],
        "/node-agent/staging/sealer"
    );
    assert_eq!(
        plan["children"][0]["log"]["stream"],
        "i-0123456789abcdef0/geth"
    );
}

#[test]
fn check_plans_every_role_with_its_own_program() {
    for (role, program) in [
        ("rpc", "geth"),
        ("bootnode", "bootnode"),
        ("ethstats", "ethstats-server"),
    ] {
        let (out, plan) = check_json(json!({"Role": role, "Environment": "production"}));
        assert!(
            out.status.success(),
            "{role}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plan = plan.expect("JSON plan");
        let p = plan["children"][0]["program"].as_str().unwrap();
        assert!(p.ends_with(&format!("/{program}")), "{role}: {p}");
    }
}

#[test]
fn check_prints_a_readable_plan_with_full_command_lines() {
    let imds = ImdsEmulator::start(&imds_config(
        json!({"Role": "rpc", "Environment": "staging"}),
    ));
    // Shipping on (check never calls CloudWatch, so no moto is needed to print where the lines go).
    let host = Host::new(Some(&imds.endpoint()), None, "[logs]\nship = true\n");
    let out = host.output(&["check"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("role rpc, environment staging"), "{text}");
    assert!(
        text.contains("--http.api eth,net,web3 --http.corsdomain '*'"),
        "{text}"
    );
    assert!(
        text.contains("CloudWatch /node-agent/staging/rpc / i-0123456789abcdef0/geth"),
        "{text}"
    );
}

#[test]
fn check_has_no_side_effects() {
    let imds = ImdsEmulator::start(&imds_config(
        json!({"Role": "sealer", "Environment": "staging"}),
    ));
    let host = Host::new(Some(&imds.endpoint()), None, "");
    assert!(host.output(&["check"]).status.success());
    for dir in ["data", "logs", "run"] {
        assert!(!host.path(dir).exists(), "check created {dir}");
    }
    assert!(
        !host.secrets_dir().exists(),
        "check created the secrets directory"
    );
}

#[test]
fn missing_role_tag_is_one_line_listing_the_accepted_roles() {
    let (out, _) = check_json(json!({"Environment": "staging"}));
    assert!(!out.status.success());
    assert_eq!(
        error_line(&out),
        "node-agent: error: instance tag Role: missing; tag the instance with Role = one of sealer, rpc, bootnode, ethstats"
    );
}

#[test]
fn unknown_role_tag_is_refused() {
    let (out, _) = check_json(json!({"Role": "miner", "Environment": "staging"}));
    assert!(!out.status.success());
    assert!(error_line(&out)
        .contains("unknown role \"miner\"; accepted values: sealer, rpc, bootnode, ethstats"));
}

#[test]
fn disabled_tag_access_says_to_enable_instance_metadata_tags() {
    let (out, _) = check_json(Value::Null);
    assert!(!out.status.success());
    assert!(
        error_line(&out).contains("enable InstanceMetadataTags"),
        "{}",
        error_line(&out)
    );
}

#[test]
fn unreachable_imds_fails_after_the_deadline_naming_the_endpoint() {
    let host = Host::new(None, None, "[timeouts]\nimds_secs = 1\n");
    let endpoint = host
        .env
        .iter()
        .find(|(k, _)| k == "AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .unwrap()
        .1
        .clone();
    let out = host.output(&["check"]);
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(
        line.contains(&format!(
            "instance metadata service at {endpoint} unreachable"
        )),
        "{line}"
    );
}

#[test]
fn imds_that_comes_up_late_is_waited_for() {
    // The emulator answers 503 (booting) first, then recovers while the agent retries.
    let imds = ImdsEmulator::start(&json!({"faults": {"status": 503}}));
    let host = Host::new(Some(&imds.endpoint()), None, "[timeouts]\nimds_secs = 30\n");
    let mut child = host
        .command(&["check"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    imds.set_config(&imds_config(
        json!({"Role": "rpc", "Environment": "staging"}),
    ));
    let out = wait_for(
        "check to finish",
        std::time::Duration::from_secs(30),
        || child.try_wait().ok().flatten(),
    );
    assert!(out.success());
}

#[test]
fn unknown_config_key_is_one_line_naming_file_and_key() {
    let imds = ImdsEmulator::start(&imds_config(
        json!({"Role": "rpc", "Environment": "staging"}),
    ));
    let host = Host::new(Some(&imds.endpoint()), None, "");
    std::fs::write(&host.config, "[chain]\nnetwork = 5\n").unwrap();
    let out = host.output(&["check"]);
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(
        line.contains(&host.config.display().to_string()) && line.contains("network"),
        "{line}"
    );
}

#[test]
fn bad_environment_tag_explains_the_allowed_names() {
    let (out, _) = check_json(json!({"Role": "rpc", "Environment": "Prod/1"}));
    assert!(!out.status.success());
    assert!(error_line(&out)
        .contains("instance tag Environment: \"Prod/1\" is not a valid environment name"));
}

#[test]
fn local_mode_needs_no_aws_at_all() {
    let host = Host::new(None, None, "");
    let out = host.output(&[
        "check",
        "--local",
        "--role",
        "bootnode",
        "--environment",
        "dev",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["local"], true);
    assert_eq!(plan["secrets"][0]["name"], "dev/bootnode/nodekey");
    // A usage error (exit 2), from the argument parser, naming the missing flag.
    let out = host.output(&["check", "--local", "--role", "bootnode"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--environment"), "{stderr}");
}

//! Proves that `tests/rig/imds_emulator.py` is an IMDSv2 the AWS SDK's own clients accept, so the agent's
//! IMDS code can be tested against it instead of a real EC2 instance.

use std::error::Error as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use aws_config::imds::client::error::ImdsError;
use aws_config::imds::credentials::ImdsCredentialsProvider;
use aws_sdk_secretsmanager::config::ProvideCredentials;
use serde_json::{json, Value};

mod common;
use common::{emulator_script, python, ImdsEmulator};

// ---- tests ----

fn sealer_config() -> Value {
    json!({
        "instance_id": "i-0123456789abcdef0",
        "region": "eu-central-1",
        "availability_zone": "eu-central-1a",
        "local_ipv4": "10.0.1.10",
        "public_ipv4": "3.120.0.10",
        "tags": {"Role": "sealer", "Environment": "staging"},
        "iam_role": "node-agent-sealer",
        "credentials": {
            "AccessKeyId": "ASIAEMULATORSEALER01",
            "SecretAccessKey": "sealerSecretKeyEXAMPLE",
            "Token": "sealer-session-token"
        }
    })
}

fn status_of(err: &ImdsError) -> Option<u16> {
    match err {
        ImdsError::ErrorResponse(response) => Some(response.response().status().as_u16()),
        _ => None,
    }
}

#[test]
fn emulator_self_check_passes() {
    let out = Command::new(python())
        .arg(emulator_script())
        .arg("--self-check")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (set PYTHON?): {e}", python()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(" 0 failed"),
        "self-check failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn sdk_client_reads_identity_region_and_tags() {
    let emulator = ImdsEmulator::start(&sealer_config());
    let client = emulator.client();
    let get = |path: &'static str| {
        let client = client.clone();
        async move {
            let value = client
                .get(path)
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e}"));
            String::from(value)
        }
    };

    assert_eq!(
        get("/latest/meta-data/instance-id").await,
        "i-0123456789abcdef0"
    );
    assert_eq!(
        get("/latest/meta-data/placement/region").await,
        "eu-central-1"
    );
    assert_eq!(
        get("/latest/meta-data/tags/instance").await,
        "Environment\nRole"
    );
    assert_eq!(get("/latest/meta-data/tags/instance/Role").await, "sealer");
    assert_eq!(get("/latest/meta-data/public-ipv4").await, "3.120.0.10");
    let document: Value =
        serde_json::from_str(&get("/latest/dynamic/instance-identity/document").await)
            .expect("identity document is JSON");
    assert_eq!(document["region"], "eu-central-1");
    assert_eq!(document["instanceId"], "i-0123456789abcdef0");
    assert_eq!(document["availabilityZone"], "eu-central-1a");

    // One token, then reused: the SDK accepted the TTL header and cached the token.
    let requests = emulator.requests();
    assert_eq!(
        requests.first().map(String::as_str),
        Some("PUT /latest/api/token 200"),
        "{requests:#?}"
    );
    assert_eq!(
        requests.iter().filter(|r| r.starts_with("PUT ")).count(),
        1,
        "{requests:#?}"
    );
    assert!(
        requests.iter().skip(1).all(|r| r.ends_with(" 200")),
        "{requests:#?}"
    );
}

#[tokio::test]
async fn disabled_instance_tags_are_a_404_error_response() {
    let mut config = sealer_config();
    config["tags"] = Value::Null;
    config["public_ipv4"] = Value::Null;
    let emulator = ImdsEmulator::start(&config);
    let client = emulator.client();

    for path in [
        "/latest/meta-data/tags/instance",
        "/latest/meta-data/tags/instance/Role",
        "/latest/meta-data/public-ipv4",
    ] {
        let err = client.get(path).await.expect_err(path);
        assert_eq!(status_of(&err), Some(404), "GET {path} gave {err:?}");
    }
    // Still reachable otherwise: 404 means "not there", not "IMDS is down".
    assert!(client.get("/latest/meta-data/instance-id").await.is_ok());
}

#[tokio::test]
async fn sdk_credentials_provider_returns_configured_keys() {
    let emulator = ImdsEmulator::start(&sealer_config());
    let provider = ImdsCredentialsProvider::builder()
        .imds_client(emulator.client())
        .build();

    let credentials = provider
        .provide_credentials()
        .await
        .expect("credentials from the emulator");

    assert_eq!(credentials.access_key_id(), "ASIAEMULATORSEALER01");
    assert_eq!(credentials.secret_access_key(), "sealerSecretKeyEXAMPLE");
    assert_eq!(credentials.session_token(), Some("sealer-session-token"));
    let expiry = credentials.expiry().expect("IMDS credentials expire");
    assert!(
        expiry > SystemTime::now() + Duration::from_secs(5 * 3600),
        "expiry {expiry:?}"
    );

    // aws-config 1.13 goes straight to the classic path; should a newer SDK try
    // security-credentials-extended first, it must get EC2's 404 and fall back.
    let requests = emulator.requests();
    assert!(
        requests.contains(&"GET /latest/meta-data/iam/security-credentials/ 200".to_owned())
            && requests.contains(
                &"GET /latest/meta-data/iam/security-credentials/node-agent-sealer 200".to_owned()
            ),
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .filter(|r| r.contains("security-credentials-extended"))
            .all(|r| r.ends_with(" 404")),
        "{requests:#?}"
    );
}

#[tokio::test]
async fn credentials_provider_without_instance_role_reports_404() {
    let mut config = sealer_config();
    config["iam_role"] = Value::Null;
    let emulator = ImdsEmulator::start(&config);
    let provider = ImdsCredentialsProvider::builder()
        .imds_client(emulator.client())
        .build();

    let err = provider
        .provide_credentials()
        .await
        .expect_err("no role, no credentials");

    let chain = format!(
        "{err}: {}",
        err.source().map(ToString::to_string).unwrap_or_default()
    );
    assert!(chain.contains("404"), "{chain}");
}

#[tokio::test]
async fn rewritten_config_is_seen_on_next_request() {
    let emulator = ImdsEmulator::start(&sealer_config());
    let client = emulator.client();
    let role = "/latest/meta-data/tags/instance/Role";
    assert_eq!(
        String::from(client.get(role).await.expect("first read")),
        "sealer"
    );

    let mut config = sealer_config();
    config["tags"] = json!({"Role": "rpc"});
    emulator.set_config(&config);

    assert_eq!(
        String::from(client.get(role).await.expect("read after rewrite")),
        "rpc"
    );
    let tags = client
        .get("/latest/meta-data/tags/instance")
        .await
        .expect("tag keys after rewrite");
    assert_eq!(tags.as_ref(), "Role");
}

/// The two paths an Auto Scaling or Spot instance is told it is going away on: 404 (not in a group, no
/// interruption scheduled) until the config sets them, then the state text and the compact JSON notice.
#[tokio::test]
async fn sdk_client_reads_lifecycle_state_and_spot_action_and_gets_404_without_them() {
    const STATE: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";
    const SPOT: &str = "/latest/meta-data/spot/instance-action";
    let emulator = ImdsEmulator::start(&sealer_config());
    let client = emulator.client();
    for path in [STATE, SPOT] {
        let err = client.get(path).await.expect_err(path);
        assert_eq!(status_of(&err), Some(404), "GET {path} gave {err:?}");
    }

    let mut config = sealer_config();
    config["lifecycle_state"] = json!("InService");
    emulator.set_config(&config);
    assert_eq!(client.get(STATE).await.expect(STATE).as_ref(), "InService");
    assert_eq!(
        status_of(&client.get(SPOT).await.expect_err(SPOT)),
        Some(404)
    );

    config["lifecycle_state"] = json!("Terminated");
    config["spot_instance_action"] = json!({"action": "terminate", "time": "2026-12-01T03:00:00Z"});
    emulator.set_config(&config);
    assert_eq!(client.get(STATE).await.expect(STATE).as_ref(), "Terminated");
    let notice: Value = serde_json::from_str(client.get(SPOT).await.expect(SPOT).as_ref())
        .expect("the Spot notice is JSON");
    assert_eq!(
        notice,
        json!({"action": "terminate", "time": "2026-12-01T03:00:00Z"})
    );
    let listing = client.get("/latest/meta-data/").await.expect("listing");
    let entries: Vec<&str> = listing.as_ref().split('\n').collect();
    assert!(
        entries.contains(&"autoscaling/") && entries.contains(&"spot/"),
        "{entries:?}"
    );
}

#[tokio::test]
async fn outage_status_fails_token_load_until_it_clears() {
    let mut config = sealer_config();
    config["faults"] = json!({"status": 503});
    let emulator = ImdsEmulator::start(&config);
    // One attempt: the SDK's retries with backoff would only slow the test down.
    let client = emulator.client_builder().max_attempts(1).build();

    let err = client
        .get("/latest/meta-data/instance-id")
        .await
        .expect_err("IMDS answers 503");
    // An answered 503 is not a dispatch failure; aws-config 1.13 reports it as a token without TTL.
    assert!(
        matches!(&err, ImdsError::FailedToLoadToken(failure) if !failure.is_dispatch_failure()),
        "{err:?}"
    );

    emulator.set_config(&sealer_config());
    let id = client
        .get("/latest/meta-data/instance-id")
        .await
        .expect("IMDS back");
    assert_eq!(id.as_ref(), "i-0123456789abcdef0");
}

/// The delay hits the token PUT first, so a slow IMDS surfaces as a token dispatch failure (the
/// same class as "nothing listening"), never as an error response.
#[tokio::test]
async fn slow_imds_fails_token_load_as_a_dispatch_failure() {
    let mut config = sealer_config();
    config["faults"] = json!({"delay_ms": 1500});
    let emulator = ImdsEmulator::start(&config);
    let client = emulator
        .client_builder()
        .read_timeout(Duration::from_millis(300))
        .max_attempts(1)
        .build();

    let err = client
        .get("/latest/meta-data/instance-id")
        .await
        .expect_err("slower than the timeout");
    assert!(
        matches!(&err, ImdsError::FailedToLoadToken(failure) if failure.is_dispatch_failure()),
        "{err:?}"
    );
}

/// Documents an SDK behaviour the agent must handle itself: on a 401 the client retries with the
/// token it has cached (it refetches only when the token's own TTL runs out), so a token that IMDS
/// stopped honouring early (instance hibernated and resumed, say) fails every call until then.
#[tokio::test]
async fn sdk_client_keeps_a_revoked_token_until_its_ttl_expires() {
    let emulator = ImdsEmulator::start(&sealer_config());
    let client = emulator.client_builder().max_attempts(2).build();
    assert!(client.get("/latest/meta-data/instance-id").await.is_ok());

    let mut config = sealer_config();
    config["faults"] = json!({"token_epoch": 1});
    emulator.set_config(&config);

    let err = client
        .get("/latest/meta-data/instance-id")
        .await
        .expect_err("token revoked");
    assert_eq!(status_of(&err), Some(401), "{err:?}");
    let puts = emulator
        .requests()
        .iter()
        .filter(|r| r.starts_with("PUT "))
        .count();
    assert_eq!(
        puts,
        1,
        "the SDK refetched its token after a 401: {:#?}",
        emulator.requests()
    );

    // A fresh client (fresh token cache) gets a new token and works again.
    let id = emulator
        .client()
        .get("/latest/meta-data/instance-id")
        .await
        .expect("new client");
    assert_eq!(id.as_ref(), "i-0123456789abcdef0");
}

#[test]
fn dropping_the_emulator_kills_and_reaps_it() {
    let emulator = ImdsEmulator::start(&json!({}));
    let pid = emulator.child.id();
    let port = emulator.port;
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());

    drop(emulator);

    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still exists"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still open"
    );
}

//! The moto server (Secrets Manager, CloudWatch Logs) and the dev fixture secrets seeded into it.

use super::{free_port, python, repo, wait_for};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A moto server (Secrets Manager, CloudWatch Logs) on a free loopback port; killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new(python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start moto ({e}); install it with: pip install 'moto[server]'")
            });
        let mut moto = Moto { child, port };
        wait_for(
            "moto to accept connections",
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = moto.child.try_wait() {
                    panic!("moto exited ({status}); install it with: pip install 'moto[server]'");
                }
                TcpStream::connect(("127.0.0.1", port)).ok()
            },
        );
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A Secrets Manager client on moto, for seeding and rotating secrets in tests.
    pub async fn secrets_client(&self) -> aws_sdk_secretsmanager::Client {
        let conf = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
            .region(aws_sdk_secretsmanager::config::Region::new(REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
                "testing", "testing", None, None, "tests",
            ))
            .build();
        aws_sdk_secretsmanager::Client::from_conf(conf)
    }

    /// Stores a new version of an existing secret and moves AWSCURRENT to it (a rotation).
    pub async fn rotate_secret(&self, name: &str, value: &str) {
        self.secrets_client()
            .await
            .put_secret_value()
            .secret_id(name)
            .secret_string(value)
            .send()
            .await
            .unwrap_or_else(|e| panic!("rotating secret {name}: {e:?}"));
    }

    pub async fn put_secret(&self, name: &str, value: &[u8]) {
        let c = self.secrets_client().await;
        let text = String::from_utf8(value.to_vec()).expect("test secrets are text");
        c.create_secret()
            .name(name)
            .secret_string(text)
            .send()
            .await
            .unwrap_or_else(|e| panic!("seeding secret {name}: {e:?}"));
    }

    /// A CloudWatch Logs client on moto, for reading what the agent shipped.
    pub fn logs_client(&self) -> aws_sdk_cloudwatchlogs::Client {
        let conf = aws_sdk_cloudwatchlogs::Config::builder()
            .behavior_version(aws_sdk_cloudwatchlogs::config::BehaviorVersion::latest())
            .region(aws_sdk_cloudwatchlogs::config::Region::new(REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(aws_sdk_cloudwatchlogs::config::Credentials::new(
                "testing", "testing", None, None, "tests",
            ))
            .build();
        aws_sdk_cloudwatchlogs::Client::from_conf(conf)
    }

    /// Every message stored in a stream, oldest first (empty when the stream does not exist).
    pub async fn log_messages(&self, group: &str, stream: &str) -> Vec<String> {
        let c = self.logs_client();
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = match c
                .get_log_events()
                .log_group_name(group)
                .log_stream_name(stream)
                .start_from_head(true)
                .limit(10_000)
                .set_next_token(token.clone())
                .send()
                .await
            {
                Ok(p) => p,
                Err(_) => return out,
            };
            let events = page.events();
            if events.is_empty() {
                return out;
            }
            out.extend(
                events
                    .iter()
                    .map(|e| e.message().unwrap_or_default().to_owned()),
            );
            token = page.next_forward_token().map(str::to_owned);
        }
    }

    /// Seeds every dev fixture secret under `environment/`.
    pub async fn seed_fixture_secrets(&self, environment: &str) {
        for (name, path) in fixture_secrets() {
            let value = std::fs::read(&path).expect("fixture secret");
            self.put_secret(&format!("{environment}/{name}"), &value)
                .await;
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const REGION: &str = "eu-central-1";

/// The node id of `tests/fixtures/secrets/dev/bootnode/nodekey` (`bootnode -writeaddress`).
pub const BOOTNODE_ID: &str = "9843fd0fa5b2214145b545d3f9c6f12d6e572f2a93ec4c3eb2a42c1c1413418426bfd589f5728e06c07e85de3828607ad1b6acfd5d2f02a727a8f011cf7fdb43";

/// The dev secrets under `tests/fixtures/secrets/dev`, as (name without environment, path).
pub fn fixture_secrets() -> Vec<(String, PathBuf)> {
    let root = repo().join("tests/fixtures/secrets/dev");
    [
        "sealer/keystore",
        "sealer/password",
        "bootnode/nodekey",
        "ethstats/ws-secret",
    ]
    .iter()
    .map(|n| (n.to_string(), root.join(n)))
    .collect()
}

/// `node-agent ARGS` with AWS pointed at `endpoint` and test credentials (for get-secret and friends).
pub fn agent_with_aws(endpoint: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_node-agent"));
    cmd.args(args)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE");
    cmd
}

//! A host under test: its temp tree, generated config and environment, and the IMDS config for it.

use super::{free_port, free_udp_port, repo, Agent, BOOTNODE_ID, REGION};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The unprivileged uid (and gid) the agent drops to in tests: no passwd entry needed.
pub const SERVICE_UID: u32 = 64123;

/// An IMDS config for a host with these tags.
pub fn imds_config(tags: Value) -> Value {
    json!({
        "instance_id": "i-0123456789abcdef0",
        "region": REGION,
        "availability_zone": "eu-central-1a",
        "local_ipv4": "127.0.0.1",
        "public_ipv4": "127.0.0.1",
        "tags": tags,
        "iam_role": "node-agent",
        "credentials": {"AccessKeyId": "ASIAEMULATOR", "SecretAccessKey": "emulator", "Token": "emulator-token"}
    })
}

/// A host under test: a temp tree (config, data, logs; secrets on tmpfs) and the environment pointing
/// the agent at the emulators.
pub struct Host {
    pub dir: tempfile::TempDir,
    /// Under /dev/shm, so the secrets directory is tmpfs as in production.
    pub shm: tempfile::TempDir,
    pub config: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Host {
    /// `extra` is appended to the generated config (TOML).
    pub fn new(imds_endpoint: Option<&str>, moto_endpoint: Option<&str>, extra: &str) -> Host {
        let dir = tempfile::tempdir().expect("temp dir");
        let shm = tempfile::tempdir_in("/dev/shm").expect("temp dir on /dev/shm");
        // The agent drops to SERVICE_UID: it must be able to reach the trees below.
        for d in [dir.path(), shm.path()] {
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod temp dir");
        }
        let repo = repo();
        let d = dir.path();
        let config = d.join("config.toml");
        let text = format!(
            r#"[chain]
genesis = "{genesis}"
bootnodes = ["enode://{id}@127.0.0.1:30301"]
ethstats = "127.0.0.1:3000"
{chain_extra}
[binaries]
geth = "{standins}/geth"
bootnode = "{standins}/bootnode"
ethstats = "{standins}/ethstats-server"

[storage]
kind = "local"
local_root = "{d}/data"
runtime_dir = "{d}/run"

[secrets]
local_dir = "{fixtures}"
dir = "{shm}/secrets"

[logs]
dir = "{d}/logs"
ship = {ship}

[restart]
initial_backoff_ms = 200
max_backoff_secs = 2

[timeouts]
imds_secs = 3
secrets_secs = 3
stop_secs = 10
sealer_lease_secs = 1

[users]
service = "{uid}:{uid}"

[ports]
p2p = {p2p}
http = {http}
authrpc = {authrpc}
bootnode = {bootnode}
ethstats = {ethstats}

[health]
interval_secs = 1
warmup_secs = 20
grace_secs = 2
listen = "127.0.0.1:{health}"
"#,
            genesis = repo.join("resources/genesis.json").display(),
            id = BOOTNODE_ID,
            chain_extra = "",
            standins = repo.join("tests/standins").display(),
            d = d.display(),
            fixtures = repo.join("tests/fixtures/secrets").display(),
            shm = shm.path().display(),
            // Without moto there is no CloudWatch to ship to.
            ship = moto_endpoint.is_some(),
            uid = SERVICE_UID,
            p2p = free_port(),
            http = free_port(),
            authrpc = free_port(),
            bootnode = free_udp_port(),
            ethstats = free_port(),
            health = free_port(),
        );
        let text = if extra.is_empty() {
            text
        } else {
            merge_toml(&text, extra)
        };
        std::fs::write(&config, text).expect("write config");
        // Empty AWS profile files: the SDK must get credentials from the instance role (the emulator).
        let profile = d.join("aws-profile");
        std::fs::write(&profile, "").expect("write empty AWS profile");
        let profile = profile.display().to_string();
        let mut env = vec![
            ("AWS_CONFIG_FILE".into(), profile.clone()),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), profile),
            ("NODE_AGENT_LOG".into(), "info".into()),
        ];
        if let Some(e) = imds_endpoint {
            env.push(("AWS_EC2_METADATA_SERVICE_ENDPOINT".into(), e.into()));
        } else {
            // Nothing listens here: an unreachable IMDS.
            env.push((
                "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
                format!("http://127.0.0.1:{}", free_port()),
            ));
        }
        if let Some(m) = moto_endpoint {
            env.push(("AWS_ENDPOINT_URL".into(), m.into()));
        }
        Host {
            dir,
            shm,
            config,
            env,
        }
    }

    /// Merges `extra` (TOML) into the config.
    pub fn configure(&self, extra: &str) {
        let text = std::fs::read_to_string(&self.config).expect("read config");
        std::fs::write(&self.config, merge_toml(&text, extra)).expect("write config");
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn secrets_dir(&self) -> PathBuf {
        self.shm.path().join("secrets")
    }

    /// `node-agent ARGS --config <ours>` with the rig's environment (and none of the caller's AWS settings).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_node-agent"));
        cmd.args(args).arg("--config").arg(&self.config);
        for k in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_REGION",
            "AWS_PROFILE",
            "AWS_ENDPOINT_URL",
        ] {
            cmd.env_remove(k);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run node-agent")
    }

    /// Starts `node-agent run` in the background, its stderr captured to a file.
    pub fn spawn_run(&self, extra: &[&str]) -> Agent {
        let log = self.path("agent.stderr");
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        let child = self
            .command(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent stderr file"))
            .spawn()
            .expect("start node-agent run");
        Agent { child, stderr: log }
    }

    /// `status --json`: its exit code and document (null when it printed no JSON).
    pub fn status(&self) -> (Option<i32>, Value) {
        let out = self.output(&["status", "--json"]);
        let doc = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code(), doc)
    }

    /// `GET path` on the health endpoint (`health.listen`): the status code and the body.
    pub fn get_health(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let text = std::fs::read_to_string(&self.config).expect("read config");
        let doc: toml::Table = text.parse().expect("config");
        let addr = doc["health"]["listen"]
            .as_str()
            .expect("health.listen")
            .to_owned();
        let mut s = std::net::TcpStream::connect(&addr).expect("connect to the health endpoint");
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read the answer");
        let code = answer
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {answer}"));
        let body = answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        (code, body)
    }

    pub fn log(&self, child: &str) -> String {
        std::fs::read_to_string(self.path(&format!("logs/{child}.log"))).unwrap_or_default()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Outside local mode the agent mounts a private tmpfs on the secrets directory.
        let _ = nix::mount::umount2(&self.secrets_dir(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Appends `extra` lines to the section they name, so tests can override single keys.
fn merge_toml(base: &str, extra: &str) -> String {
    let mut doc: toml::Table = base.parse().expect("base config");
    let extra: toml::Table = extra.parse().expect("extra config");
    for (section, v) in extra {
        match (doc.get_mut(&section), v) {
            (Some(toml::Value::Table(t)), toml::Value::Table(e)) => t.extend(e),
            (_, v) => {
                doc.insert(section, v);
            }
        }
    }
    toml::to_string(&doc).expect("config serialises")
}

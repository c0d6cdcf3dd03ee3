//! The test rig: real emulators on loopback (moto for Secrets Manager and CloudWatch Logs, our IMDSv2
//! emulator) and the real `node-agent` binary driving the stand-ins under `tests/standins/`.
#![allow(dead_code)] // each test binary uses a different part of the rig

mod cwproxy;
mod imds;
#[allow(unused_imports)] // only the logs tests use the proxy
pub use cwproxy::*;
pub use imds::*;

use serde_json::{json, Value};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo root")
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `limit` naming `what`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The unprivileged uid (and gid) the agent drops to in tests: no passwd entry needed.
pub const SERVICE_UID: u32 = 64123;

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free loopback UDP port")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

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

/// A running `node-agent run`; killed on drop if the test did not stop it.
pub struct Agent {
    pub child: Child,
    pub stderr: PathBuf,
}

impl Agent {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The agent's one supervised child, once it is running.
    pub fn the_child(&self) -> i32 {
        let pid = self.pid();
        wait_for("the agent's child", Duration::from_secs(20), || {
            let kids = children_of(pid);
            (kids.len() == 1).then(|| kids[0])
        })
    }

    /// Waits until the agent has logged `ready`, or panics with what it said.
    pub fn wait_ready(&mut self) {
        let limit = Duration::from_secs(30);
        let start = Instant::now();
        loop {
            if self.stderr().contains(" INFO ready children=") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "node-agent exited ({status}) before ready:\n{}",
                    self.stderr()
                );
            }
            assert!(
                start.elapsed() < limit,
                "node-agent not ready after {limit:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal agent");
        let child = &mut self.child;
        wait_for(
            "node-agent to exit after SIGTERM",
            Duration::from_secs(30),
            || child.try_wait().ok().flatten(),
        )
    }

    /// Waits for the agent to exit by itself.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let child = &mut self.child;
        wait_for("node-agent to exit", Duration::from_secs(30), || {
            child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process's /proc/PID/stat fields after the command name (which may hold spaces and parentheses):
/// `[0]` is the state, `[1]` the parent pid, `[11]` and `[12]` utime and stime (fields 3, 4, 14 and 15 of
/// proc(5)).
pub fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Direct children of `pid`, from /proc.
pub fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| stat_fields(*p).and_then(|f| f.get(1)?.parse::<i32>().ok()) == Some(pid))
        .collect()
}

/// A process's argv.
pub fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && stat_fields(pid).is_none_or(|f| f.first().map(String::as_str) != Some("Z"))
}

/// The one line node-agent printed on stderr for a failed command.
pub fn error_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("node-agent: error:"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one error line, got:\n{err}"
    );
    lines[0].to_owned()
}

/// A systemd notify socket: what the agent tells systemd (READY=1, STATUS=, WATCHDOG=1, STOPPING=1).
pub struct NotifySocket {
    sock: std::os::unix::net::UnixDatagram,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    seen: Vec<String>,
}

impl NotifySocket {
    pub fn new() -> NotifySocket {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let path = dir.path().join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
        // The agent sends after dropping root.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod");
        sock.set_nonblocking(true).expect("nonblocking");
        NotifySocket {
            sock,
            path,
            _dir: dir,
            seen: Vec::new(),
        }
    }

    /// Every message so far, one per datagram.
    pub fn messages(&mut self) -> &[String] {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            self.seen
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        &self.seen
    }

    pub fn saw(&mut self, needle: &str) -> bool {
        self.messages()
            .iter()
            .any(|m| m.lines().any(|l| l == needle || l.starts_with(needle)))
    }
}

/// A process's /proc status field, e.g. `Uid:` → ["64123", ...].
pub fn proc_status(pid: i32, field: &str) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Writes an executable shell script `dir/name` that runs `body`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod script");
    path
}

/// Writes an executable wrapper that runs the geth stand-in with `prelude` (shell) before it.
pub fn geth_wrapper(dir: &Path, prelude: &str) -> PathBuf {
    script(
        dir,
        "geth-wrapper",
        &format!(
            "{prelude}\nexec {} \"$@\"",
            repo().join("tests/standins/geth").display()
        ),
    )
}

/// Writes the geth stand-in's fault switches into a datadir.
pub fn geth_faults(datadir: &Path, faults: Value) {
    std::fs::create_dir_all(datadir).expect("datadir");
    std::fs::write(datadir.join("standin-faults.json"), faults.to_string()).expect("faults file");
}

/// `tests/rig/aws_fault_proxy.py` in front of moto: answers chosen calls with AWS errors.
pub struct FaultProxy {
    child: Child,
    pub port: u16,
    rules: PathBuf,
    _dir: tempfile::TempDir,
}

impl FaultProxy {
    pub fn start(upstream: &str) -> FaultProxy {
        use std::io::BufRead;
        let dir = tempfile::tempdir().expect("temp dir");
        let rules = dir.path().join("rules.json");
        std::fs::write(&rules, "[]").expect("rules");
        let mut child = Command::new(python())
            .arg(repo().join("tests/rig/aws_fault_proxy.py"))
            .args(["--upstream", upstream, "--rules"])
            .arg(&rules)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the fault proxy");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("proxy port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("fault proxy printed {line:?}"));
        FaultProxy {
            child,
            port,
            rules,
            _dir: dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_rules(&self, rules: Value) {
        let tmp = self.rules.with_extension("tmp");
        std::fs::write(&tmp, rules.to_string()).expect("rules");
        std::fs::rename(&tmp, &self.rules).expect("rules");
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// A small seeded PRNG (splitmix64) for fault tests: the seed is printed, and NODE_AGENT_FAULT_SEED
/// repeats a failing run.
pub struct Rng(u64);

impl Rng {
    pub fn from_env() -> Rng {
        let seed = std::env::var("NODE_AGENT_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("NODE_AGENT_FAULT_SEED={seed}");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `lo..hi` for picking delays.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

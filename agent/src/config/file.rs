//! Step 1, the file as written: `/etc/node-agent/config.toml`, what is the same for every host of a fleet.
//! Strict TOML (unknown keys are errors) with every key defaulted; no validation beyond TOML here, that
//! is [`super::settings`]'s job.

use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The default configuration, also the documented example (`resources/config.example.toml`).
pub const EXAMPLE: &str = include_str!("../../../resources/config.example.toml");
/// Where `run` and `check` look when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/node-agent/config.toml";
/// The NFS options AWS recommends for EFS (EFS user guide, "Mounting on Amazon EC2 with a DNS name"):
/// the default of `storage.efs_mount_options`.
pub const EFS_MOUNT_OPTIONS: &str =
    "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport";

/// `/etc/node-agent/config.toml`: what is the same for every host of a fleet.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    pub chain: ChainFile,
    pub binaries: BinariesFile,
    pub storage: StorageFile,
    pub secrets: SecretsFile,
    pub logs: LogsFile,
    pub restart: RestartFile,
    pub timeouts: TimeoutsFile,
    pub users: UsersFile,
    pub ports: PortsFile,
    pub health: HealthFile,
    pub backup: BackupFile,
    pub metrics: super::metrics::MetricsFile,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChainFile {
    pub network_id: u64,
    pub genesis: PathBuf,
    /// The sealer's signer address; when empty, the single signer of the genesis.
    pub signer: String,
    /// enode URLs passed to geth's `--bootnodes`.
    pub bootnodes: Vec<String>,
    /// `host:port` of the ethstats server; empty disables reporting.
    pub ethstats: String,
    /// Name shown on the ethstats dashboard; `{role}`, `{environment}`, `{instance_id}` are replaced.
    pub ethstats_name: String,
}

impl Default for ChainFile {
    fn default() -> Self {
        ChainFile {
            network_id: 4242,
            genesis: "/usr/share/node-agent/genesis.json".into(),
            signer: String::new(),
            bootnodes: Vec::new(),
            ethstats: String::new(),
            ethstats_name: "{environment}-{role}-{instance_id}".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BinariesFile {
    pub geth: PathBuf,
    pub bootnode: PathBuf,
    pub ethstats: PathBuf,
}

impl Default for BinariesFile {
    fn default() -> Self {
        BinariesFile {
            geth: "/usr/local/bin/geth".into(),
            bootnode: "/usr/local/bin/bootnode".into(),
            ethstats: "/usr/local/bin/ethstats-server".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Efs,
    Local,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageFile {
    pub kind: StorageKind,
    /// `fs-…`; the `EfsFileSystemId` tag overrides it.
    pub efs_file_system_id: String,
    /// Directory inside the file system (EFS) or under `local_root` (local).
    pub path_template: String,
    /// Where the role's data directory appears on this host (the mount point for EFS).
    pub datadir: PathBuf,
    /// Root of the plain directories used by `kind = "local"`.
    pub local_root: PathBuf,
    /// Local, non-persistent state: geth's IPC socket (never on NFS), the status socket.
    pub runtime_dir: PathBuf,
    /// Who owns the role's directory when node-agent creates it: a user name or `UID:GID`; empty means
    /// the role's service user (`geth`, or `ethstats` for the ethstats role; the agent's own user with
    /// `--local`).
    pub owner: String,
    /// The NFS server to mount: a DNS name or IPv4 address; empty means the file system's own DNS name,
    /// `{file_system_id}.efs.{region}.amazonaws.com`.
    pub efs_dns_name: String,
    /// NFS mount options (node-agent adds `addr=` and `nosuid,nodev,noexec`).
    pub efs_mount_options: String,
    /// Mount with amazon-efs-utils (`mount -t efs -o tls,iam`: TLS in transit, IAM authorization).
    pub efs_utils: bool,
    /// `fsap-…`: mount through this EFS access point, whose root directory is the role's directory (needs
    /// `efs_utils`); the `EfsAccessPointId` tag overrides it.
    pub efs_access_point_id: String,
    /// How long boot waits for DNS and the mount target before it fails.
    pub mount_timeout_secs: u64,
    /// A node whose datadir holds no chain restores the newest backup before geth starts.
    pub seed_from_backup: bool,
    /// `[storage.rpc]`: the rpc role's own place.
    pub rpc: RpcStorageFile,
}

/// `[storage.rpc]`: rpc nodes scale out, and every geth locks its datadir, so each rpc node keeps a
/// directory of its own: on its own disk by default, or on EFS per instance.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RpcStorageFile {
    pub kind: StorageKind,
    /// "" means `storage.path_template`; on EFS it must contain `{instance_id}`.
    pub path_template: String,
}

impl Default for RpcStorageFile {
    fn default() -> Self {
        RpcStorageFile {
            kind: StorageKind::Local,
            path_template: String::new(),
        }
    }
}

impl StorageFile {
    /// Where a role keeps its data, and the directory template: `[storage.rpc]` for rpc nodes.
    pub fn place_of(&self, role: crate::host::Role) -> (StorageKind, &str) {
        match role {
            crate::host::Role::Rpc if self.rpc.path_template.is_empty() => {
                (self.rpc.kind, &self.path_template)
            }
            crate::host::Role::Rpc => (self.rpc.kind, &self.rpc.path_template),
            _ => (self.kind, &self.path_template),
        }
    }
}

impl Default for StorageFile {
    fn default() -> Self {
        StorageFile {
            kind: StorageKind::Efs,
            efs_file_system_id: String::new(),
            path_template: "/{environment}/{role}".into(),
            datadir: "/var/lib/node-agent/data".into(),
            local_root: "/var/lib/node-agent/local".into(),
            runtime_dir: "/run/node-agent".into(),
            owner: String::new(),
            efs_dns_name: String::new(),
            efs_mount_options: EFS_MOUNT_OPTIONS.into(),
            efs_utils: false,
            efs_access_point_id: String::new(),
            mount_timeout_secs: 300,
            seed_from_backup: false,
            rpc: RpcStorageFile::default(),
        }
    }
}

/// `[backup]`: which nodes export the chain, how, and where the segments go.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackupFile {
    /// The role whose node exports the chain (a full node, never the sealer); "" none.
    pub role: String,
    pub interval_secs: u64,
    /// Blocks per segment file.
    pub segment_blocks: u64,
    /// A block is exported only once the head is this many blocks past it.
    pub confirmations: u64,
    /// The backups' directory in the file system.
    pub path_template: String,
    /// Where it is mounted on this host.
    pub datadir: PathBuf,
    /// `fsap-…`: mount the backups' directory through this access point (root directory
    /// `path_template`); "" none.
    pub efs_access_point_id: String,
    /// With local storage: this directory instead of `storage.local_root` + `path_template`.
    pub local_dir: PathBuf,
}

impl Default for BackupFile {
    fn default() -> Self {
        BackupFile {
            role: "rpc".into(),
            interval_secs: 3600,
            segment_blocks: 10_000,
            confirmations: 120,
            path_template: "/{environment}/backups".into(),
            datadir: "/var/lib/node-agent/backups".into(),
            efs_access_point_id: String::new(),
            local_dir: PathBuf::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SecretSourceKind {
    Aws,
    Local,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsFile {
    pub source: SecretSourceKind,
    /// For `source = "local"`: a directory holding one file per secret name (`dev/sealer/password`).
    pub local_dir: PathBuf,
    /// The private directory the secrets are written to; must be on tmpfs outside local mode.
    pub dir: PathBuf,
    /// How often to look for rotated secrets (DescribeSecret, no value read).
    pub rotation_interval_secs: u64,
    /// The customer-managed KMS key the secrets are encrypted with, if any (for `iam-policy`).
    pub kms_key_arn: String,
    pub names: SecretNamesFile,
}

impl Default for SecretsFile {
    fn default() -> Self {
        SecretsFile {
            source: SecretSourceKind::Aws,
            local_dir: "/etc/node-agent/secrets".into(),
            dir: "/run/node-agent/secrets".into(),
            rotation_interval_secs: 300,
            kms_key_arn: String::new(),
            names: SecretNamesFile::default(),
        }
    }
}

/// A secret by name template, optionally one field of a JSON secret.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum SecretRefFile {
    Name(String),
    Field { name: String, field: String },
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecretNamesFile {
    pub sealer_keystore: SecretRefFile,
    pub sealer_password: SecretRefFile,
    pub bootnode_nodekey: SecretRefFile,
    pub ethstats_ws_secret: SecretRefFile,
}

impl Default for SecretNamesFile {
    fn default() -> Self {
        let n = |s: &str| SecretRefFile::Name(s.into());
        SecretNamesFile {
            sealer_keystore: n("{environment}/sealer/keystore"),
            sealer_password: n("{environment}/sealer/password"),
            bootnode_nodekey: n("{environment}/bootnode/nodekey"),
            ethstats_ws_secret: n("{environment}/ethstats/ws-secret"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogsFile {
    pub dir: PathBuf,
    pub group_template: String,
    pub stream_template: String,
    /// CloudWatch retention of the groups; 0 keeps events forever.
    pub retention_days: u32,
    /// Create the group and set its retention (else they are made beforehand, e.g. by Terraform).
    pub create_group: bool,
    pub max_file_bytes: u64,
    pub keep_files: u32,
    /// Gzip rotated files once they are shipped.
    pub compress: bool,
    /// Ship to CloudWatch Logs (else files only).
    pub ship: bool,
    /// A partial batch waits at most this long.
    pub flush_ms: u64,
    /// At stop, how long to keep shipping what is left before exiting.
    pub stop_flush_secs: u64,
}

impl Default for LogsFile {
    fn default() -> Self {
        LogsFile {
            dir: "/var/log/node-agent".into(),
            group_template: "/node-agent/{environment}/{role}".into(),
            stream_template: "{instance_id}/{child}".into(),
            retention_days: 30,
            create_group: true,
            max_file_bytes: 50 * 1024 * 1024,
            keep_files: 5,
            compress: true,
            ship: true,
            flush_ms: 1000,
            stop_flush_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RestartFile {
    pub initial_backoff_ms: u64,
    pub max_backoff_secs: u64,
    /// A run this long resets the backoff.
    pub stable_after_secs: u64,
    /// Quick failures in a row before the child is reported as crash-looping.
    pub crash_loop_after: u32,
}

impl Default for RestartFile {
    fn default() -> Self {
        RestartFile {
            initial_backoff_ms: 1000,
            max_backoff_secs: 60,
            stable_after_secs: 60,
            crash_loop_after: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsFile {
    /// How long boot waits for the instance metadata service.
    pub imds_secs: u64,
    /// How long boot retries Secrets Manager on throttling and network errors.
    pub secrets_secs: u64,
    /// How long a child gets after SIGTERM before SIGKILL (geth flushing state to EFS can take a while).
    pub stop_secs: u64,
    /// How long a booting sealer waits for another sealer to release the key's lease before giving up.
    pub sealer_lease_secs: u64,
    /// How often a running sealer confirms its lease (each check may take this long): geth is killed the
    /// moment it is lost or unconfirmed. Well under the NFS lease (about 90 s) that protects it.
    pub lease_check_secs: u64,
}

impl Default for TimeoutsFile {
    fn default() -> Self {
        TimeoutsFile {
            imds_secs: 120,
            secrets_secs: 120,
            stop_secs: 120,
            sealer_lease_secs: 60,
            lease_check_secs: 5,
        }
    }
}

/// Who the agent and its children run as after the root-only boot steps.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UsersFile {
    /// The agent and its children run as this user after the root-only boot steps: a user name, or
    /// `uid:gid`. A host runs one role, so one service user per host is all the separation there is.
    pub service: String,
    /// Group that may read `node-agent status` without sudo (owns the status socket).
    pub operators: String,
}

impl Default for UsersFile {
    fn default() -> Self {
        UsersFile {
            service: "node-agent".into(),
            operators: "node-agent".into(),
        }
    }
}

/// Listening ports of the children.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PortsFile {
    /// geth's p2p port (TCP and UDP).
    pub p2p: u16,
    /// The rpc role's public JSON-RPC port.
    pub http: u16,
    /// geth's authenticated Engine API, bound on 127.0.0.1 (unused by Clique, but geth 1.13 always binds it).
    pub authrpc: u16,
    /// The bootnode's discovery port (UDP).
    pub bootnode: u16,
    /// The ethstats dashboard.
    pub ethstats: u16,
}

impl Default for PortsFile {
    fn default() -> Self {
        PortsFile {
            p2p: 30303,
            http: 8545,
            authrpc: 8551,
            bootnode: 30301,
            ethstats: 3000,
        }
    }
}

/// Health checks of the children.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthFile {
    /// Seconds between checks.
    pub interval_secs: u64,
    /// A geth head older than this is stalled; 0 means six Clique periods.
    pub max_head_age_secs: u64,
    /// After a start, how long head age and peers are not held against a child.
    pub warmup_secs: u64,
    /// How long a child may stay unhealthy before it is restarted.
    pub grace_secs: u64,
    /// Seconds between checks that the instance metadata service still answers (and the host's role
    /// tags still say what they said at boot).
    pub imds_interval_secs: u64,
    /// The health endpoint's address; "" the role's default, "off" none.
    pub listen: String,
    /// An rpc node with fewer peers is not ready.
    pub min_peers: u64,
    /// When the instance is leaving (Auto Scaling's `Terminated`, a Spot notice): how long `/ready`
    /// fails before geth is stopped.
    pub drain_secs: u64,
    /// How often the instance metadata service is asked whether the instance is leaving.
    pub lifecycle_interval_secs: u64,
    /// The termination lifecycle hook to complete once geth has stopped; "" none.
    pub lifecycle_hook: String,
    /// The hook's Auto Scaling group; "" the instance's `aws:autoscaling:groupName` tag.
    pub autoscaling_group: String,
}

impl Default for HealthFile {
    fn default() -> Self {
        HealthFile {
            interval_secs: 10,
            max_head_age_secs: 0,
            warmup_secs: 120,
            grace_secs: 60,
            imds_interval_secs: 60,
            listen: String::new(),
            min_peers: 1,
            drain_secs: 30,
            lifecycle_interval_secs: 5,
            lifecycle_hook: String::new(),
            autoscaling_group: String::new(),
        }
    }
}

impl ConfigFile {
    /// Reads a config file; `None` means the built-in default.
    pub fn load(path: Option<&Path>) -> Result<(ConfigFile, PathBuf), ConfigError> {
        let Some(path) = path else {
            let file = Self::parse(EXAMPLE, Path::new("<built-in>"))?;
            return Ok((file, PathBuf::from("<built-in>")));
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut file = Self::parse(&text, path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        file.resolve_relative_to(&dir);
        Ok((file, path.to_owned()))
    }

    /// Relative paths in a config file are relative to the file's directory, not to wherever the agent
    /// happens to be started from.
    fn resolve_relative_to(&mut self, base: &Path) {
        for p in [
            &mut self.chain.genesis,
            &mut self.binaries.geth,
            &mut self.binaries.bootnode,
            &mut self.binaries.ethstats,
            &mut self.storage.datadir,
            &mut self.storage.local_root,
            &mut self.storage.runtime_dir,
            &mut self.secrets.local_dir,
            &mut self.secrets.dir,
            &mut self.logs.dir,
        ] {
            if p.is_relative() {
                *p = normalize(&base.join(&*p));
            }
        }
    }

    /// Parses TOML strictly: unknown keys are errors, so a typo never becomes a silent default.
    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            // toml's message spans several lines with a caret; keep it on one.
            message: one_line(&e.to_string()),
        })
    }
}

/// Removes `.` and `..` lexically, so paths read well in plans and messages.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_documents_exactly_the_defaults() {
        let parsed = ConfigFile::parse(EXAMPLE, Path::new("example")).unwrap();
        assert_eq!(parsed, ConfigFile::default());
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let e = ConfigFile::parse("[chain]\nnetwork_idd = 5\n", Path::new("c.toml")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("c.toml") && msg.contains("network_idd"),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[logs]\ndir = \"logs\"\n[binaries]\ngeth = \"/abs/geth\"\n",
        )
        .unwrap();
        let (f, _) = ConfigFile::load(Some(&path)).unwrap();
        assert_eq!(f.logs.dir, dir.path().join("logs"));
        assert_eq!(f.binaries.geth, Path::new("/abs/geth"));
    }

    #[test]
    fn json_field_secrets_parse_from_toml() {
        let f = ConfigFile::parse(
            "[secrets.names]\nsealer_password = { name = \"{environment}/sealer\", field = \"password\" }\n",
            Path::new("c"),
        )
        .unwrap();
        assert_eq!(
            f.secrets.names.sealer_password,
            SecretRefFile::Field {
                name: "{environment}/sealer".into(),
                field: "password".into()
            }
        );
    }

    proptest::proptest! {
        #[test]
        fn any_toml_text_is_a_config_or_a_one_line_error(text in "\\PC{0,300}") {
            if let Err(e) = ConfigFile::parse(&text, Path::new("c")) {
                proptest::prop_assert!(!e.to_string().contains('\n'));
            }
        }
    }
}

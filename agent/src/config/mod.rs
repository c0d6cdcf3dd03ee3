//! Configuration in three steps: the fleet-wide file (strict TOML), this host's identity and tags, then one
//! validated [`Settings`] value that everything after start-up reads. Pure: no I/O but reading files.

use crate::chain::genesis::{self, Genesis, GenesisError};
use crate::host::{tag, Role};
use crate::imds::Identity;
pub mod storage;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use storage::Owner;

/// The default configuration, also the documented example (`resources/config.example.toml`).
pub const EXAMPLE: &str = include_str!("../../../resources/config.example.toml");
/// Where `run` and `check` look when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/node-agent/config.toml";

// ---------------------------------------------------------------------------------------------------------
// The file.

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
            efs_mount_options: storage::EFS_MOUNT_OPTIONS.into(),
            efs_utils: false,
            efs_access_point_id: String::new(),
            mount_timeout_secs: 300,
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

/// The retention periods CloudWatch Logs accepts (PutRetentionPolicy), in days.
pub const RETENTION_DAYS: [u32; 22] = [
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

impl Default for LogsFile {
    fn default() -> Self {
        LogsFile {
            dir: "/var/log/node-agent".into(),
            group_template: "/node-agent/{environment}/{role}".into(),
            stream_template: "{instance_id}/{child}".into(),
            retention_days: 30,
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
}

impl Default for HealthFile {
    fn default() -> Self {
        HealthFile {
            interval_secs: 10,
            max_head_age_secs: 0,
            warmup_secs: 120,
            grace_secs: 60,
            imds_interval_secs: 60,
        }
    }
}

/// Why the configuration cannot be used. Each names the file or key to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source} (check the path given to --config)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {key}: {problem}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        problem: String,
    },
    #[error("instance tag {tag}: {problem}")]
    Tag { tag: &'static str, problem: String },
    #[error(transparent)]
    Genesis(#[from] GenesisError),
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

// ---------------------------------------------------------------------------------------------------------
// Tags.

/// This host's place in the fleet, from its tags (or local flags).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostTags {
    pub role: Role,
    pub environment: String,
    pub efs_file_system_id: Option<String>,
    pub efs_access_point_id: Option<String>,
}

impl HostTags {
    /// Validates the tags that matter; pure.
    pub fn from_tags(tags: &BTreeMap<String, String>) -> Result<HostTags, ConfigError> {
        let accepted = Role::ALL.map(Role::as_str).join(", ");
        let role = match tags.get(tag::ROLE).map(|s| s.trim()) {
            None | Some("") => {
                return Err(ConfigError::Tag {
                    tag: tag::ROLE,
                    problem: format!("missing; tag the instance with Role = one of {accepted}"),
                })
            }
            Some(v) => Role::parse(v).ok_or_else(|| ConfigError::Tag {
                tag: tag::ROLE,
                problem: format!("unknown role {v:?}; accepted values: {accepted}"),
            })?,
        };
        let environment =
            match tags.get(tag::ENVIRONMENT).map(|s| s.trim()) {
                None | Some("") => return Err(ConfigError::Tag {
                    tag: tag::ENVIRONMENT,
                    problem:
                        "missing; tag the instance with Environment = e.g. production or staging"
                            .into(),
                }),
                Some(v) => check_environment(v).map_err(|problem| ConfigError::Tag {
                    tag: tag::ENVIRONMENT,
                    problem,
                })?,
            };
        let efs_file_system_id = match tags.get(tag::EFS_FILE_SYSTEM_ID).map(|s| s.trim()) {
            None | Some("") => None,
            Some(v) => Some(check_fs_id(v).map_err(|problem| ConfigError::Tag {
                tag: tag::EFS_FILE_SYSTEM_ID,
                problem,
            })?),
        };
        let efs_access_point_id = match tags.get(tag::EFS_ACCESS_POINT_ID).map(|s| s.trim()) {
            None | Some("") => None,
            Some(v) => Some(
                check_access_point_id(v).map_err(|problem| ConfigError::Tag {
                    tag: tag::EFS_ACCESS_POINT_ID,
                    problem,
                })?,
            ),
        };
        Ok(HostTags {
            role,
            environment,
            efs_file_system_id,
            efs_access_point_id,
        })
    }
}

/// The environment names secrets, log groups and paths, so it must be safe in all three.
pub fn check_environment(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 32
        && v.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(v.to_owned())
    } else {
        Err(format!(
            "{v:?} is not a valid environment name: use 1-32 lowercase letters, digits and '-', e.g. staging"
        ))
    }
}

pub fn check_fs_id(v: &str) -> Result<String, String> {
    let hex = v.strip_prefix("fs-").unwrap_or("");
    if (8..=40).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(v.to_owned())
    } else {
        Err(format!(
            "{v:?} is not an EFS file system id (expected fs- followed by hex digits, e.g. fs-0123456789abcdef0)"
        ))
    }
}

/// `fsap-` and the 17 lowercase hex digits EFS gives every access point.
pub fn check_access_point_id(v: &str) -> Result<String, String> {
    let hex = v.strip_prefix("fsap-").unwrap_or("");
    if hex.len() == 17
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(v.to_owned())
    } else {
        Err(format!(
            "{v:?} is not an EFS access point id (expected fsap- followed by 17 lowercase hex digits, e.g. fsap-0123456789abcdef0; `aws efs describe-access-points` lists them)"
        ))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Settings.

/// Everything validated, for this host.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub role: Role,
    pub environment: String,
    pub local: bool,
    pub network_id: u64,
    pub genesis_path: PathBuf,
    /// Local mode with no genesis file: the built-in dev genesis, written to `genesis_path` at start.
    pub genesis_builtin: bool,
    pub genesis: Genesis,
    /// The address the sealer seals with (lowercase `0x…`).
    pub signer: String,
    pub bootnodes: Vec<String>,
    /// `host:port`.
    pub ethstats: Option<String>,
    pub ethstats_name: String,
    pub binaries: BinariesFile,
    pub storage: StorageSettings,
    pub runtime_dir: PathBuf,
    pub secrets: SecretsSettings,
    pub logs: LogsFile,
    pub restart: RestartFile,
    #[serde(skip)]
    pub timeouts: Timeouts,
    /// The user the agent and its children run as (name or `uid:gid`).
    pub user: String,
    /// The operators' group (status socket).
    pub operators: String,
    pub ports: PortsFile,
    pub health: HealthFile,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StorageSettings {
    Efs(EfsSettings),
    Local { datadir: PathBuf, owner: Owner },
}

/// The role's directory on EFS, mounted at `datadir`.
#[derive(Debug, Clone, Serialize)]
pub struct EfsSettings {
    pub file_system_id: String,
    /// Directory inside the file system, e.g. `/production/sealer`.
    pub path: String,
    pub datadir: PathBuf,
    /// The NFS server's name (or address) for this region.
    pub dns_name: String,
    pub mount_options: String,
    pub efs_utils: bool,
    /// `fsap-…`: mounted through this access point, whose root directory is `path`.
    pub access_point_id: Option<String>,
    pub owner: Owner,
    #[serde(skip)]
    pub mount_timeout: Duration,
}

impl StorageSettings {
    pub fn datadir(&self) -> &Path {
        match self {
            StorageSettings::Efs(e) => &e.datadir,
            StorageSettings::Local { datadir, .. } => datadir,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SecretsSettings {
    pub source: SecretSourceKind,
    pub local_dir: PathBuf,
    pub dir: PathBuf,
    #[serde(skip)]
    pub rotation_interval: Duration,
    pub kms_key_arn: Option<String>,
    pub names: SecretNames,
}

/// Secret references with `{environment}` already filled in.
#[derive(Debug, Clone, Serialize)]
pub struct SecretNames {
    pub sealer_keystore: SecretRef,
    pub sealer_password: SecretRef,
    pub bootnode_nodekey: SecretRef,
    pub ethstats_ws_secret: SecretRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretRef {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub secrets: Duration,
    pub stop: Duration,
    pub sealer_lease: Duration,
    pub lease_check: Duration,
}

/// Fills `{key}` placeholders; an unknown placeholder is an error naming it.
pub fn fill(template: &str, vars: &[(&str, &str)]) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in {template:?}"))?;
        let key = &after[..end];
        let value = vars
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let known: Vec<_> = vars.iter().map(|(k, _)| format!("{{{k}}}")).collect();
                format!(
                    "unknown placeholder {{{key}}} in {template:?}; known: {}",
                    known.join(", ")
                )
            })?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Settings {
    /// Validates the file against this host's identity. Reads the genesis file; nothing else.
    pub fn new(
        file: &ConfigFile,
        path: &Path,
        identity: &Identity,
        local: bool,
    ) -> Result<Settings, ConfigError> {
        let genesis = Genesis::load(&file.chain.genesis)?;
        Self::with_genesis(file, path, identity, local, genesis)
    }

    /// [`Settings::new`] with the genesis already read (the built-in one, or none needed: `iam-policy`).
    pub fn with_genesis(
        file: &ConfigFile,
        path: &Path,
        identity: &Identity,
        local: bool,
        genesis: Genesis,
    ) -> Result<Settings, ConfigError> {
        let tags = HostTags::from_tags(&identity.tags)?;
        let invalid = |key: &'static str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            problem,
        };
        let vars = [
            ("environment", tags.environment.as_str()),
            ("role", tags.role.as_str()),
            ("instance_id", identity.instance_id.as_str()),
        ];

        if file.chain.network_id == 0 {
            return Err(invalid(
                "chain.network_id",
                "must be a positive integer".into(),
            ));
        }
        let signer = if file.chain.signer.is_empty() {
            match genesis.signers.as_slice() {
                [one] => one.clone(),
                _ => {
                    return Err(invalid(
                        "chain.signer",
                        format!(
                            "the genesis lists {} signers; set chain.signer to the one this fleet's sealer uses",
                            genesis.signers.len()
                        ),
                    ))
                }
            }
        } else {
            let a = genesis::normalize_address(&file.chain.signer).ok_or_else(|| {
                invalid(
                    "chain.signer",
                    format!(
                        "{:?} is not a 0x-prefixed 20-byte address",
                        file.chain.signer
                    ),
                )
            })?;
            if !genesis.signers.contains(&a) {
                return Err(invalid(
                    "chain.signer",
                    format!("{a} is not an authorised signer in the genesis extraData"),
                ));
            }
            a
        };
        for b in &file.chain.bootnodes {
            check_enode(b).map_err(|p| invalid("chain.bootnodes", p))?;
        }
        let ethstats = if file.chain.ethstats.is_empty() {
            None
        } else {
            check_host_port(&file.chain.ethstats).map_err(|p| invalid("chain.ethstats", p))?;
            Some(file.chain.ethstats.clone())
        };
        let ethstats_name = fill(&file.chain.ethstats_name, &vars)
            .map_err(|p| invalid("chain.ethstats_name", p))?;
        if ethstats_name.contains(':') || ethstats_name.contains('@') {
            return Err(invalid(
                "chain.ethstats_name",
                "must not contain ':' or '@'".into(),
            ));
        }

        for (key, p) in [
            ("binaries.geth", &file.binaries.geth),
            ("binaries.bootnode", &file.binaries.bootnode),
            ("binaries.ethstats", &file.binaries.ethstats),
            ("storage.datadir", &file.storage.datadir),
            ("storage.local_root", &file.storage.local_root),
            ("storage.runtime_dir", &file.storage.runtime_dir),
            ("secrets.dir", &file.secrets.dir),
            ("logs.dir", &file.logs.dir),
        ] {
            if !p.is_absolute() {
                return Err(invalid(
                    key,
                    format!("{} must be an absolute path", p.display()),
                ));
            }
        }

        let sub = fill(&file.storage.path_template, &vars)
            .map_err(|p| invalid("storage.path_template", p))?;
        if !sub.starts_with('/') || sub.split('/').any(|c| c == "..") {
            return Err(invalid(
                "storage.path_template",
                format!("{sub:?} must be an absolute path inside the file system, without '..'"),
            ));
        }
        let kind = if local {
            StorageKind::Local
        } else {
            file.storage.kind
        };
        let st = &file.storage;
        // The data directory belongs to the service user the agent and its children run as.
        let default_owner = Owner::parse(&file.users.service, Owner::Agent)
            .map_err(|p| invalid("users.service", p))?;
        let owner =
            Owner::parse(&st.owner, default_owner).map_err(|p| invalid("storage.owner", p))?;
        let storage = match kind {
            StorageKind::Local => StorageSettings::Local {
                datadir: file.storage.local_root.join(sub.trim_start_matches('/')),
                owner,
            },
            StorageKind::Efs => {
                let id = match (&tags.efs_file_system_id, file.storage.efs_file_system_id.as_str()) {
                    (Some(t), _) => t.clone(),
                    (None, "") => {
                        return Err(invalid(
                            "storage.efs_file_system_id",
                            "no EFS file system: set it in the config or tag the instance with EfsFileSystemId".into(),
                        ))
                    }
                    (None, c) => check_fs_id(c).map_err(|p| invalid("storage.efs_file_system_id", p))?,
                };
                let dns_name = if st.efs_dns_name.is_empty() {
                    storage::efs_dns_name(&id, &identity.region)
                } else {
                    storage::check_host(&st.efs_dns_name)
                        .map_err(|p| invalid("storage.efs_dns_name", p))?;
                    if st.efs_utils && st.efs_dns_name.parse::<std::net::Ipv4Addr>().is_err() {
                        return Err(invalid(
                            "storage.efs_dns_name",
                            "with storage.efs_utils = true it must be the mount target's IPv4 address (passed as mounttargetip=), or empty".into(),
                        ));
                    }
                    st.efs_dns_name.clone()
                };
                storage::check_mount_options(&st.efs_mount_options)
                    .map_err(|p| invalid("storage.efs_mount_options", p))?;
                let access_point_id =
                    match (&tags.efs_access_point_id, st.efs_access_point_id.as_str()) {
                        (Some(t), _) => Some(t.clone()),
                        (None, "") => None,
                        (None, c) => Some(
                            check_access_point_id(c)
                                .map_err(|p| invalid("storage.efs_access_point_id", p))?,
                        ),
                    };
                if access_point_id.is_some() && !st.efs_utils {
                    return Err(invalid(
                        "storage.efs_access_point_id",
                        "an access point is mounted with amazon-efs-utils (mount -t efs -o tls,iam,accesspoint=): set storage.efs_utils = true, or remove the access point (config or EfsAccessPointId tag)".into(),
                    ));
                }
                if st.mount_timeout_secs == 0 {
                    return Err(invalid(
                        "storage.mount_timeout_secs",
                        "must be at least 1 second".into(),
                    ));
                }
                StorageSettings::Efs(EfsSettings {
                    file_system_id: id,
                    path: sub,
                    datadir: file.storage.datadir.clone(),
                    dns_name,
                    mount_options: st.efs_mount_options.clone(),
                    efs_utils: st.efs_utils,
                    access_point_id,
                    owner,
                    mount_timeout: Duration::from_secs(st.mount_timeout_secs),
                })
            }
        };

        let names = &file.secrets.names;
        let secret = |key: &'static str, r: &SecretRefFile| -> Result<SecretRef, ConfigError> {
            let (name, field) = match r {
                SecretRefFile::Name(n) => (n, None),
                SecretRefFile::Field { name, field } => (name, Some(field.clone())),
            };
            let name = fill(name, &vars).map_err(|p| invalid(key, p))?;
            check_secret_name(&name).map_err(|p| invalid(key, p))?;
            Ok(SecretRef { name, field })
        };
        let secrets = SecretsSettings {
            source: if local {
                SecretSourceKind::Local
            } else {
                file.secrets.source
            },
            local_dir: file.secrets.local_dir.clone(),
            dir: file.secrets.dir.clone(),
            rotation_interval: Duration::from_secs(file.secrets.rotation_interval_secs),
            kms_key_arn: match file.secrets.kms_key_arn.as_str() {
                "" => None,
                arn if arn.starts_with("arn:aws") && arn.contains(":kms:") => Some(arn.to_owned()),
                arn => {
                    return Err(invalid(
                        "secrets.kms_key_arn",
                        format!("{arn:?} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)"),
                    ))
                }
            },
            names: SecretNames {
                sealer_keystore: secret("secrets.names.sealer_keystore", &names.sealer_keystore)?,
                sealer_password: secret("secrets.names.sealer_password", &names.sealer_password)?,
                bootnode_nodekey: secret(
                    "secrets.names.bootnode_nodekey",
                    &names.bootnode_nodekey,
                )?,
                ethstats_ws_secret: secret(
                    "secrets.names.ethstats_ws_secret",
                    &names.ethstats_ws_secret,
                )?,
            },
        };

        let l = &file.logs;
        let log_vars = [vars[0], vars[1], vars[2], ("child", "geth")];
        fill(&l.group_template, &log_vars).map_err(|p| invalid("logs.group_template", p))?;
        fill(&l.stream_template, &log_vars).map_err(|p| invalid("logs.stream_template", p))?;
        if l.max_file_bytes < 64 * 1024 {
            return Err(invalid(
                "logs.max_file_bytes",
                "must be at least 65536".into(),
            ));
        }
        if l.keep_files == 0 {
            return Err(invalid("logs.keep_files", "must be at least 1".into()));
        }
        if l.retention_days != 0 && !RETENTION_DAYS.contains(&l.retention_days) {
            return Err(invalid(
                "logs.retention_days",
                format!("CloudWatch accepts 0 (never expire) or one of {RETENTION_DAYS:?}"),
            ));
        }
        if !(100..=5000).contains(&l.flush_ms) {
            return Err(invalid(
                "logs.flush_ms",
                "must be between 100 and 5000 (batches are sent at least every 5 s)".into(),
            ));
        }
        let r = &file.restart;
        if r.initial_backoff_ms == 0 || r.max_backoff_secs * 1000 < r.initial_backoff_ms {
            return Err(invalid(
                "restart.initial_backoff_ms",
                "must be positive and not above restart.max_backoff_secs".into(),
            ));
        }
        if r.crash_loop_after == 0 {
            return Err(invalid(
                "restart.crash_loop_after",
                "must be at least 1".into(),
            ));
        }
        let t = &file.timeouts;
        for (key, v) in [
            ("timeouts.imds_secs", t.imds_secs),
            ("timeouts.secrets_secs", t.secrets_secs),
            ("timeouts.stop_secs", t.stop_secs),
            ("health.interval_secs", file.health.interval_secs),
            ("health.imds_interval_secs", file.health.imds_interval_secs),
            (
                "secrets.rotation_interval_secs",
                file.secrets.rotation_interval_secs,
            ),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1 second".into()));
            }
        }
        if !(1..=30).contains(&t.lease_check_secs) {
            return Err(invalid(
                "timeouts.lease_check_secs",
                "must be between 1 and 30 seconds (another host may take an unconfirmed lease after the NFS lease, about 90 s)".into(),
            ));
        }

        let (user_key, user) = ("users.service", file.users.service.as_str());
        if user.is_empty() || user.starts_with("0:") || user == "root" {
            return Err(invalid(
                user_key,
                format!(
                    "{user:?}: name a dedicated unprivileged user (e.g. node-agent), never root"
                ),
            ));
        }
        let p = &file.ports;
        let ports = [p.p2p, p.http, p.authrpc, p.bootnode, p.ethstats];
        if ports.contains(&0) {
            return Err(invalid(
                "ports",
                "every port must be between 1 and 65535".into(),
            ));
        }

        Ok(Settings {
            role: tags.role,
            environment: tags.environment,
            local,
            network_id: file.chain.network_id,
            genesis_path: file.chain.genesis.clone(),
            genesis_builtin: false,
            genesis,
            signer,
            bootnodes: file.chain.bootnodes.clone(),
            ethstats,
            ethstats_name,
            binaries: file.binaries.clone(),
            storage,
            runtime_dir: file.storage.runtime_dir.clone(),
            secrets,
            logs: file.logs.clone(),
            restart: file.restart.clone(),
            timeouts: Timeouts {
                secrets: Duration::from_secs(t.secrets_secs),
                stop: Duration::from_secs(t.stop_secs),
                sealer_lease: Duration::from_secs(t.sealer_lease_secs),
                lease_check: Duration::from_secs(t.lease_check_secs),
            },
            user: user.to_owned(),
            operators: file.users.operators.clone(),
            ports: file.ports.clone(),
            health: file.health.clone(),
        })
    }
}

/// `enode://<128 hex>@host:port`.
fn check_enode(s: &str) -> Result<(), String> {
    let bad = || format!("{s:?} is not an enode URL (enode://<128 hex digits>@host:port)");
    let rest = s.strip_prefix("enode://").ok_or_else(bad)?;
    let (id, addr) = rest.split_once('@').ok_or_else(bad)?;
    let key = crate::chain::genesis::decode_hex(id)
        .filter(|k| k.len() == 64)
        .ok_or_else(bad)?;
    // geth refuses ("Bootstrap URL invalid") an id that is not a point on secp256k1.
    let mut sec1 = Vec::with_capacity(65);
    sec1.push(4);
    sec1.extend_from_slice(&key);
    if k256::PublicKey::from_sec1_bytes(&sec1).is_err() {
        return Err(format!(
            "{s:?}: the node id is not a valid secp256k1 public key"
        ));
    }
    let addr = addr.split('?').next().unwrap_or(addr);
    check_host_port(addr).map_err(|_| bad())
}

fn check_host_port(s: &str) -> Result<(), String> {
    let bad = || format!("{s:?} is not host:port");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(['/', '@', ' ']) {
        return Err(bad());
    }
    Ok(())
}

/// Secrets Manager names: 1-512 of letters, digits and `/_+=.@-`.
fn check_secret_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 512
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b))
        && !s.split('/').any(|c| c == ".." || c == ".");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid secret name (letters, digits and /_+=.@- only, no '..')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub(crate) fn identity(pairs: &[(&str, &str)]) -> Identity {
        Identity {
            region: "eu-central-1".into(),
            instance_id: "i-0abc".into(),
            availability_zone: "eu-central-1a".into(),
            private_ipv4: "10.0.1.10".into(),
            public_ipv4: Some("3.120.0.10".into()),
            tags: tags(pairs),
        }
    }

    fn example() -> ConfigFile {
        let mut f = ConfigFile::parse(EXAMPLE, Path::new("example")).unwrap();
        f.chain.genesis = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/genesis.json");
        f
    }

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
    fn missing_role_lists_the_accepted_values() {
        let e = HostTags::from_tags(&tags(&[("Environment", "staging")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "instance tag Role: missing; tag the instance with Role = one of sealer, rpc, bootnode, ethstats"
        );
        let e = HostTags::from_tags(&tags(&[("Role", "miner"), ("Environment", "staging")]))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown role \"miner\"; accepted values: sealer, rpc"),
            "{e}"
        );
    }

    #[test]
    fn environment_must_be_safe_in_names_and_paths() {
        for bad in ["", "Prod", "../x", "a/b", "-x", &"a".repeat(33)] {
            assert!(check_environment(bad).is_err(), "{bad}");
        }
        for good in ["production", "staging", "dev-2"] {
            assert!(check_environment(good).is_ok(), "{good}");
        }
        let e = HostTags::from_tags(&tags(&[("Role", "rpc")])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("instance tag Environment: missing"),
            "{e}"
        );
    }

    #[test]
    fn tags_override_the_file_system_and_name_every_path_by_environment() {
        let mut f = example();
        f.storage.efs_file_system_id = "fs-11111111".into();
        let id = identity(&[
            ("Role", "sealer"),
            ("Environment", "staging"),
            ("EfsFileSystemId", "fs-22222222"),
        ]);
        let s = Settings::new(&f, Path::new("c"), &id, false).unwrap();
        match &s.storage {
            StorageSettings::Efs(e) => {
                assert_eq!(e.file_system_id, "fs-22222222");
                assert_eq!(e.path, "/staging/sealer");
                assert_eq!(e.dns_name, "fs-22222222.efs.eu-central-1.amazonaws.com");
                assert_eq!(e.owner, Owner::User("node-agent".into()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.secrets.names.sealer_keystore.name,
            "staging/sealer/keystore"
        );
        assert_eq!(s.signer, "0xea94d5964b36a107571e051649c2eb52ff0c323f");
    }

    #[test]
    fn efs_mount_settings_are_validated_naming_their_key() {
        let id = identity(&[("Role", "rpc"), ("Environment", "staging")]);
        type Edit = Box<dyn Fn(&mut StorageFile)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "storage.efs_dns_name",
                Box::new(|s| s.efs_dns_name = "h:2049".into()),
            ),
            (
                "storage.efs_dns_name",
                Box::new(|s| {
                    s.efs_utils = true;
                    s.efs_dns_name = "nfs.internal".into();
                }),
            ),
            (
                "storage.efs_mount_options",
                Box::new(|s| s.efs_mount_options = "hard,addr=10.0.0.1".into()),
            ),
            (
                "storage.mount_timeout_secs",
                Box::new(|s| s.mount_timeout_secs = 0),
            ),
            ("storage.owner", Box::new(|s| s.owner = "root user".into())),
            (
                "storage.efs_access_point_id",
                Box::new(|s| {
                    s.efs_utils = true;
                    s.efs_access_point_id = "fsap-0123456789ABCDEF0".into();
                }),
            ),
            (
                "storage.efs_access_point_id",
                Box::new(|s| {
                    s.efs_utils = true;
                    s.efs_access_point_id = "fs-0123456789abcdef0".into();
                }),
            ),
            (
                "storage.efs_utils = true",
                Box::new(|s| s.efs_access_point_id = "fsap-0123456789abcdef0".into()),
            ),
        ];
        for (key, edit) in cases {
            let mut f = example();
            f.storage.efs_file_system_id = "fs-11111111".into();
            edit(&mut f.storage);
            let e = Settings::new(&f, Path::new("c"), &id, false)
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn the_data_directory_belongs_to_the_service_user() {
        let mut f = example();
        f.storage.efs_file_system_id = "fs-11111111".into();
        let owner = |role: &str, local: bool, f: &ConfigFile| {
            let id = identity(&[("Role", role), ("Environment", "staging")]);
            match Settings::new(f, Path::new("c"), &id, local)
                .unwrap()
                .storage
            {
                StorageSettings::Efs(e) => e.owner,
                StorageSettings::Local { owner, .. } => owner,
            }
        };
        // By default the data belongs to the service user, whatever the role or mode.
        assert_eq!(owner("sealer", false, &f), Owner::User("node-agent".into()));
        assert_eq!(
            owner("ethstats", false, &f),
            Owner::User("node-agent".into())
        );
        assert_eq!(owner("rpc", true, &f), Owner::User("node-agent".into()));
        f.storage.owner = "1000:1000".into();
        assert_eq!(
            owner("rpc", true, &f),
            Owner::Ids {
                uid: 1000,
                gid: 1000
            }
        );
        f.storage.efs_dns_name = "10.0.1.25".into();
        let id = identity(&[("Role", "rpc"), ("Environment", "staging")]);
        match Settings::new(&f, Path::new("c"), &id, false)
            .unwrap()
            .storage
        {
            StorageSettings::Efs(e) => assert_eq!(e.dns_name, "10.0.1.25"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_access_point_comes_from_the_tag_or_the_config_and_keeps_the_roles_path() {
        let mut f = example();
        f.storage.efs_file_system_id = "fs-11111111".into();
        f.storage.efs_utils = true;
        f.storage.efs_access_point_id = "fsap-0000000000000000a".into();
        let ap = |id: &Identity, f: &ConfigFile| match Settings::new(f, Path::new("c"), id, false)
            .map(|s| s.storage)
        {
            Ok(StorageSettings::Efs(e)) => {
                assert_eq!(
                    e.path, "/staging/sealer",
                    "the access point's root directory"
                );
                Ok(e.access_point_id)
            }
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        };
        let plain = identity(&[("Role", "sealer"), ("Environment", "staging")]);
        assert_eq!(ap(&plain, &f), Ok(Some("fsap-0000000000000000a".into())));
        let tagged = identity(&[
            ("Role", "sealer"),
            ("Environment", "staging"),
            ("EfsAccessPointId", "fsap-0123456789abcdef0"),
        ]);
        assert_eq!(ap(&tagged, &f), Ok(Some("fsap-0123456789abcdef0".into())));
        f.storage.efs_access_point_id.clear();
        assert_eq!(ap(&plain, &f), Ok(None));
        // The tag needs efs-utils as much as the config key does.
        f.storage.efs_utils = false;
        let e = ap(&tagged, &f).unwrap_err();
        assert!(e.contains("storage.efs_utils = true"), "{e}");
        let bad = identity(&[
            ("Role", "sealer"),
            ("Environment", "staging"),
            ("EfsAccessPointId", "fsap-123"),
        ]);
        let e = ap(&bad, &f).unwrap_err();
        assert!(
            e.starts_with(
                "instance tag EfsAccessPointId: \"fsap-123\" is not an EFS access point id"
            ),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }

    #[test]
    fn efs_without_a_file_system_says_where_to_set_it() {
        let id = identity(&[("Role", "rpc"), ("Environment", "staging")]);
        let e = Settings::new(&example(), Path::new("c"), &id, false).unwrap_err();
        assert!(e.to_string().contains("EfsFileSystemId"), "{e}");
    }

    #[test]
    fn local_mode_keeps_data_under_the_local_root() {
        let id = identity(&[("Role", "rpc"), ("Environment", "dev")]);
        let s = Settings::new(&example(), Path::new("c"), &id, true).unwrap();
        assert_eq!(
            s.storage.datadir(),
            Path::new("/var/lib/node-agent/local/dev/rpc")
        );
        assert_eq!(s.secrets.source, SecretSourceKind::Local);
    }

    #[test]
    fn a_signer_outside_the_genesis_is_refused() {
        let mut f = example();
        f.chain.signer = format!("0x{}", "12".repeat(20));
        let id = identity(&[("Role", "sealer"), ("Environment", "dev")]);
        let e = Settings::new(&f, Path::new("c"), &id, true).unwrap_err();
        assert!(e.to_string().contains("not an authorised signer"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let id = identity(&[("Role", "rpc"), ("Environment", "dev")]);
        type Edit = Box<dyn Fn(&mut ConfigFile)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "chain.bootnodes",
                Box::new(|f| f.chain.bootnodes = vec!["enode://xyz@h:1".into()]),
            ),
            (
                "chain.bootnodes",
                Box::new(|f| f.chain.bootnodes = vec![format!("enode://{}@h:1", "ab".repeat(64))]),
            ),
            (
                "chain.ethstats",
                Box::new(|f| f.chain.ethstats = "nohost".into()),
            ),
            (
                "storage.path_template",
                Box::new(|f| f.storage.path_template = "/{environment}/../x".into()),
            ),
            (
                "storage.path_template",
                Box::new(|f| f.storage.path_template = "/{zone}".into()),
            ),
            (
                "secrets.names.sealer_password",
                Box::new(|f| f.secrets.names.sealer_password = SecretRefFile::Name("a b".into())),
            ),
            ("logs.dir", Box::new(|f| f.logs.dir = "relative".into())),
            ("logs.keep_files", Box::new(|f| f.logs.keep_files = 0)),
            (
                "logs.retention_days",
                Box::new(|f| f.logs.retention_days = 10),
            ),
            ("logs.flush_ms", Box::new(|f| f.logs.flush_ms = 6000)),
            ("timeouts.stop_secs", Box::new(|f| f.timeouts.stop_secs = 0)),
        ];
        for (key, mutate) in cases {
            let mut f = example();
            mutate(&mut f);
            let e = Settings::new(&f, Path::new("c"), &id, true)
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
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
    fn templates_fill_known_placeholders_only() {
        assert_eq!(fill("/{a}/{b}", &[("a", "x"), ("b", "y")]).unwrap(), "/x/y");
        assert!(fill("{c}", &[("a", "x")]).unwrap_err().contains("{c}"));
        assert!(fill("{a", &[("a", "x")]).is_err());
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

        #[test]
        fn any_tags_are_accepted_or_refused_with_the_tag_named(
            role in proptest::option::of("\\PC{0,12}"),
            env in proptest::option::of("\\PC{0,40}"),
            fs in proptest::option::of("\\PC{0,30}"),
            ap in proptest::option::of("(fsap-)?[0-9a-fA-F]{15,18}|\\PC{0,30}"),
        ) {
            let mut t = BTreeMap::new();
            for (k, v) in [("Role", role), ("Environment", env), ("EfsFileSystemId", fs), ("EfsAccessPointId", ap)] {
                if let Some(v) = v { t.insert(k.to_string(), v); }
            }
            match HostTags::from_tags(&t) {
                Ok(h) => proptest::prop_assert!(check_environment(&h.environment).is_ok()),
                Err(e) => proptest::prop_assert!(e.to_string().starts_with("instance tag ")),
            }
        }

        #[test]
        fn templates_and_enodes_never_panic(s in "\\PC{0,80}") {
            let _ = fill(&s, &[("environment", "e"), ("role", "r")]);
            let _ = check_enode(&s);
            let _ = check_host_port(&s);
            let _ = check_secret_name(&s);
        }
    }
}

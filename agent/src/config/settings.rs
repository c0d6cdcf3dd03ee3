//! Step 2, the settings: one validated, fully typed [`Settings`] for this host, which everything after
//! start-up reads (durations as [`Duration`], templates filled, tags applied). Built from the file,
//! this host's identity and the genesis by one check per section, in order; each returns
//! its typed part or the first problem, naming the key. Pure: no I/O but reading the genesis file.

use super::backup::{self, BackupSettings};
use super::checks::{at_least_a_second, check_absolute, check_enode, check_host_port, fill};
use super::checks::{invalid, Invalid, RETENTION_DAYS};
use super::file::{
    BinariesFile, ChainFile, ConfigFile, LogsFile, PortsFile, RestartFile, TimeoutsFile, UsersFile,
};
use super::health::{self, HealthSettings};
use super::secrets::{self, SecretsSettings};
use super::storage::{self, Owner, StorageSettings};
use super::tags::HostTags;
use super::ConfigError;
use crate::chain::genesis::{self, Genesis};
use crate::host::Role;
use crate::imds::Identity;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything validated, for this host.
#[derive(Debug, Clone)]
pub struct Settings {
    pub role: Role,
    pub environment: String,
    pub local: bool,
    pub network_id: u64,
    pub genesis_path: PathBuf,
    /// Local mode with no genesis file: the built-in dev genesis is used instead.
    pub genesis_builtin: bool,
    /// The genesis as checked, with the bytes it was read from (what `geth init` is given).
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
    pub logs: LogsSettings,
    pub restart: RestartSettings,
    pub timeouts: Timeouts,
    /// The user the agent and its children run as (name or `uid:gid`, as written).
    pub user: String,
    /// The operators' group (status socket).
    pub operators: String,
    pub ports: PortsFile,
    pub health: HealthSettings,
    /// Where the chain's backups are and what this host does with them; `None`: nothing.
    pub backup: Option<BackupSettings>,
    pub metrics: super::metrics::MetricsSettings,
    /// Where each setting that is not its default comes from (`check`); filled by the boot.
    pub sources: std::collections::BTreeMap<String, String>,
}

/// Where the logs go and how they are rotated and shipped.
#[derive(Debug, Clone)]
pub struct LogsSettings {
    pub dir: PathBuf,
    pub group_template: String,
    pub stream_template: String,
    /// CloudWatch retention of the groups; 0 keeps events forever.
    pub retention_days: u32,
    /// The agent creates the group and sets its retention (`logs.create_group`).
    pub create_group: bool,
    pub max_file_bytes: u64,
    pub keep_files: u32,
    /// Gzip rotated files once they are shipped.
    pub compress: bool,
    /// Ship to CloudWatch Logs (else files only).
    pub ship: bool,
    /// A partial batch waits at most this long.
    pub flush: Duration,
    /// At stop, how long to keep shipping what is left before exiting.
    pub stop_flush: Duration,
}

/// How the supervisor restarts a child that exited or failed its health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartSettings {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A run this long resets the backoff.
    pub stable_after: Duration,
    /// Quick failures in a row before the child is reported as crash-looping.
    pub crash_loop_after: u32,
}

impl Default for RestartSettings {
    /// The shipped defaults.
    fn default() -> Self {
        restart(&RestartFile::default()).expect("the default [restart] is valid")
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub secrets: Duration,
    pub stop: Duration,
    pub sealer_lease: Duration,
    pub lease_check: Duration,
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
        let at = |e: Invalid| ConfigError::Invalid {
            path: path.to_owned(),
            key: e.key,
            problem: e.problem,
        };
        let vars = [
            ("environment", tags.environment.as_str()),
            ("role", tags.role.as_str()),
            ("instance_id", identity.instance_id.as_str()),
        ];
        let chain = chain(&file.chain, &genesis, &vars).map_err(at)?;
        paths(file).map_err(at)?;
        let service = users(&file.users).map_err(at)?;
        let region = &identity.region;
        let storage = storage::section(&file.storage, &service, &tags, region, local, &vars);
        let storage = storage.map_err(at)?;
        let backup = backup::section(
            &file.backup,
            &file.storage,
            &service,
            &tags,
            region,
            local,
            &vars,
        );
        let backup = backup.map_err(at)?;
        let secrets = secrets::section(&file.secrets, local, &vars).map_err(at)?;
        let logs = logs(&file.logs, &vars).map_err(at)?;
        let restart = restart(&file.restart).map_err(at)?;
        let timeouts = timeouts(&file.timeouts).map_err(at)?;
        let health = health::section(
            &file.health,
            genesis.period,
            tags.role,
            &identity.tags,
            local,
        );
        let health = health.map_err(at)?;
        let ports = ports(&file.ports).map_err(at)?;
        let metrics = super::metrics::section(&file.metrics).map_err(at)?;
        Ok(Settings {
            role: tags.role,
            environment: tags.environment,
            local,
            network_id: file.chain.network_id,
            genesis_path: file.chain.genesis.clone(),
            genesis_builtin: false,
            genesis,
            signer: chain.signer,
            bootnodes: file.chain.bootnodes.clone(),
            ethstats: chain.ethstats,
            ethstats_name: chain.ethstats_name,
            binaries: file.binaries.clone(),
            storage,
            runtime_dir: file.storage.runtime_dir.clone(),
            secrets,
            logs,
            restart,
            timeouts,
            user: file.users.service.clone(),
            operators: file.users.operators.clone(),
            ports,
            health,
            backup,
            metrics,
            sources: Default::default(),
        })
    }
}

/// What `[chain]` settles beyond its plain values.
struct Chain {
    signer: String,
    ethstats: Option<String>,
    ethstats_name: String,
}

/// `[chain]`: the signer is one of the genesis's (its only one when not set), bootnodes and ethstats
/// are well formed, the ethstats name is filled with `vars`.
fn chain(c: &ChainFile, genesis: &Genesis, vars: &[(&str, &str)]) -> Result<Chain, Invalid> {
    if c.network_id == 0 {
        return Err(Invalid::new(
            "chain.network_id",
            "must be a positive integer",
        ));
    }
    let signer = if c.signer.is_empty() {
        match genesis.signers.as_slice() {
            [one] => one.clone(),
            _ => {
                return Err(Invalid::new(
                    "chain.signer",
                    format!(
                        "the genesis lists {} signers; set chain.signer to the one this fleet's sealer uses",
                        genesis.signers.len()
                    ),
                ))
            }
        }
    } else {
        let a = genesis::normalize_address(&c.signer).ok_or_else(|| {
            Invalid::new(
                "chain.signer",
                format!("{:?} is not a 0x-prefixed 20-byte address", c.signer),
            )
        })?;
        if !genesis.signers.contains(&a) {
            return Err(Invalid::new(
                "chain.signer",
                format!("{a} is not an authorised signer in the genesis extraData"),
            ));
        }
        a
    };
    for b in &c.bootnodes {
        check_enode(b).map_err(invalid("chain.bootnodes"))?;
    }
    let ethstats = if c.ethstats.is_empty() {
        None
    } else {
        check_host_port(&c.ethstats).map_err(invalid("chain.ethstats"))?;
        Some(c.ethstats.clone())
    };
    let ethstats_name = fill(&c.ethstats_name, vars).map_err(invalid("chain.ethstats_name"))?;
    if ethstats_name.contains(':') || ethstats_name.contains('@') {
        return Err(Invalid::new(
            "chain.ethstats_name",
            "must not contain ':' or '@'",
        ));
    }
    Ok(Chain {
        signer,
        ethstats,
        ethstats_name,
    })
}

/// Every path the agent uses, whatever its section, is absolute.
fn paths(file: &ConfigFile) -> Result<(), Invalid> {
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
        check_absolute(p).map_err(invalid(key))?;
    }
    Ok(())
}

/// `[users]`: the service user, a user name or `UID:GID` but never root; it owns the data directory
/// unless `storage.owner` says otherwise.
fn users(u: &UsersFile) -> Result<Owner, Invalid> {
    let user = u.service.as_str();
    let owner = Owner::parse(user, Owner::Agent).map_err(invalid("users.service"))?;
    if user.is_empty() || user.starts_with("0:") || user == "root" {
        return Err(Invalid::new(
            "users.service",
            format!("{user:?}: name a dedicated unprivileged user (e.g. node-agent), never root"),
        ));
    }
    Ok(owner)
}

/// `[logs]`: the templates know their placeholders, rotation and batching are within bounds.
fn logs(l: &LogsFile, vars: &[(&str, &str)]) -> Result<LogsSettings, Invalid> {
    let mut log_vars = vars.to_vec();
    log_vars.push(("child", "geth"));
    fill(&l.group_template, &log_vars).map_err(invalid("logs.group_template"))?;
    fill(&l.stream_template, &log_vars).map_err(invalid("logs.stream_template"))?;
    if l.max_file_bytes < 64 * 1024 {
        return Err(Invalid::new(
            "logs.max_file_bytes",
            "must be at least 65536",
        ));
    }
    if l.keep_files == 0 {
        return Err(Invalid::new("logs.keep_files", "must be at least 1"));
    }
    if l.retention_days != 0 && !RETENTION_DAYS.contains(&l.retention_days) {
        return Err(Invalid::new(
            "logs.retention_days",
            format!("CloudWatch accepts 0 (never expire) or one of {RETENTION_DAYS:?}"),
        ));
    }
    if !(100..=5000).contains(&l.flush_ms) {
        return Err(Invalid::new(
            "logs.flush_ms",
            "must be between 100 and 5000 (batches are sent at least every 5 s)",
        ));
    }
    Ok(LogsSettings {
        dir: l.dir.clone(),
        group_template: l.group_template.clone(),
        stream_template: l.stream_template.clone(),
        retention_days: l.retention_days,
        create_group: l.create_group,
        max_file_bytes: l.max_file_bytes,
        keep_files: l.keep_files,
        compress: l.compress,
        ship: l.ship,
        flush: Duration::from_millis(l.flush_ms),
        stop_flush: Duration::from_secs(l.stop_flush_secs),
    })
}

/// `[restart]`: a positive first backoff, not above the cap.
fn restart(r: &RestartFile) -> Result<RestartSettings, Invalid> {
    let s = RestartSettings {
        initial_backoff: Duration::from_millis(r.initial_backoff_ms),
        max_backoff: Duration::from_secs(r.max_backoff_secs),
        stable_after: Duration::from_secs(r.stable_after_secs),
        crash_loop_after: r.crash_loop_after,
    };
    if s.initial_backoff.is_zero() || s.max_backoff < s.initial_backoff {
        return Err(Invalid::new(
            "restart.initial_backoff_ms",
            "must be positive and not above restart.max_backoff_secs",
        ));
    }
    if s.crash_loop_after == 0 {
        return Err(Invalid::new(
            "restart.crash_loop_after",
            "must be at least 1",
        ));
    }
    Ok(s)
}

/// `[timeouts]`: none is zero; the lease check is well within the NFS lease.
fn timeouts(t: &TimeoutsFile) -> Result<Timeouts, Invalid> {
    for (key, v) in [
        ("timeouts.imds_secs", t.imds_secs),
        ("timeouts.secrets_secs", t.secrets_secs),
        ("timeouts.stop_secs", t.stop_secs),
    ] {
        at_least_a_second(key, v)?;
    }
    if !(1..=30).contains(&t.lease_check_secs) {
        return Err(Invalid::new(
            "timeouts.lease_check_secs",
            "must be between 1 and 30 seconds (another host may take an unconfirmed lease after the NFS lease, about 90 s)",
        ));
    }
    Ok(Timeouts {
        secrets: Duration::from_secs(t.secrets_secs),
        stop: Duration::from_secs(t.stop_secs),
        sealer_lease: Duration::from_secs(t.sealer_lease_secs),
        lease_check: Duration::from_secs(t.lease_check_secs),
    })
}

/// `[ports]`: every port is a real one.
fn ports(p: &PortsFile) -> Result<PortsFile, Invalid> {
    if [p.p2p, p.http, p.authrpc, p.bootnode, p.ethstats].contains(&0) {
        return Err(Invalid::new(
            "ports",
            "every port must be between 1 and 65535",
        ));
    }
    Ok(p.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::{SecretRefFile, SecretSourceKind, EXAMPLE};

    fn identity(pairs: &[(&str, &str)]) -> Identity {
        Identity {
            region: "eu-central-1".into(),
            instance_id: "i-0abc".into(),
            availability_zone: "eu-central-1a".into(),
            private_ipv4: "10.0.1.10".into(),
            public_ipv4: Some("3.120.0.10".into()),
            tags: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn example() -> ConfigFile {
        let mut f = ConfigFile::parse(EXAMPLE, Path::new("example")).unwrap();
        f.chain.genesis = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/genesis.json");
        f
    }

    fn sealer(env: &str) -> Identity {
        identity(&[("Role", "sealer"), ("Environment", env)])
    }

    #[test]
    fn the_example_gives_typed_settings_named_by_environment_with_the_genesis_signer() {
        let mut f = example();
        f.storage.efs_file_system_id = "fs-11111111".into();
        let s = Settings::new(&f, Path::new("c"), &sealer("staging"), false).unwrap();
        assert_eq!((s.role, s.environment.as_str()), (Role::Sealer, "staging"));
        assert_eq!(
            s.secrets.names.sealer_keystore.name,
            "staging/sealer/keystore"
        );
        assert_eq!(s.signer, "0xea94d5964b36a107571e051649c2eb52ff0c323f");
        assert_eq!(s.ethstats_name, "staging-sealer-i-0abc");
        let secs = Duration::from_secs;
        assert_eq!(
            s.restart,
            RestartSettings {
                initial_backoff: secs(1),
                max_backoff: secs(60),
                stable_after: secs(60),
                crash_loop_after: 5
            }
        );
        assert_eq!(
            s.health,
            HealthSettings {
                interval: secs(10),
                max_head_age: secs(30), // six periods of 5 s
                warmup: secs(120),
                grace: secs(60),
                imds_interval: secs(60),
                listen: Some("127.0.0.1:8080".parse().unwrap()),
                min_peers: 1,
                drain: crate::config::health::DrainSettings {
                    wait: secs(30),
                    poll: secs(5),
                    hook: None,
                },
            }
        );
        assert_eq!(
            (s.logs.flush, s.logs.stop_flush),
            (Duration::from_millis(1000), secs(10))
        );
        assert_eq!(
            (s.timeouts.stop, s.timeouts.lease_check),
            (secs(120), secs(5))
        );
        f.health.max_head_age_secs = 90;
        let s = Settings::new(&f, Path::new("c"), &sealer("staging"), false).unwrap();
        assert_eq!(s.health.max_head_age, secs(90));
    }

    #[test]
    fn the_service_user_owns_the_data_directory() {
        let mut f = example();
        f.users.service = "64001:64002".into();
        let s = Settings::new(&f, Path::new("c"), &sealer("dev"), true).unwrap();
        assert_eq!(s.user, "64001:64002");
        let StorageSettings::Local { owner, .. } = s.storage else {
            panic!("{:?}", s.storage)
        };
        let (uid, gid) = (64001, 64002);
        assert_eq!(owner, Owner::Ids { uid, gid });
    }

    #[test]
    fn local_mode_keeps_data_under_the_local_root_and_reads_local_secrets() {
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
        let e = Settings::new(&f, Path::new("c"), &sealer("dev"), true).unwrap_err();
        assert!(e.to_string().contains("not an authorised signer"), "{e}");
    }

    #[test]
    fn bad_values_name_the_file_and_their_key_on_one_line() {
        let id = identity(&[("Role", "rpc"), ("Environment", "dev")]);
        type Edit = Box<dyn Fn(&mut ConfigFile)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("chain.network_id", Box::new(|f| f.chain.network_id = 0)),
            (
                "chain.bootnodes",
                Box::new(|f| f.chain.bootnodes = vec!["enode://xyz@h:1".into()]),
            ),
            (
                "chain.ethstats",
                Box::new(|f| f.chain.ethstats = "nohost".into()),
            ),
            (
                "chain.ethstats_name",
                Box::new(|f| f.chain.ethstats_name = "a:{role}".into()),
            ),
            (
                "binaries.geth",
                Box::new(|f| f.binaries.geth = "geth".into()),
            ),
            (
                "storage.path_template",
                Box::new(|f| f.storage.path_template = "/{environment}/../x".into()),
            ),
            (
                "secrets.names.sealer_password",
                Box::new(|f| f.secrets.names.sealer_password = SecretRefFile::Name("a b".into())),
            ),
            ("logs.dir", Box::new(|f| f.logs.dir = "relative".into())),
            (
                "logs.stream_template",
                Box::new(|f| f.logs.stream_template = "{zone}".into()),
            ),
            ("logs.keep_files", Box::new(|f| f.logs.keep_files = 0)),
            (
                "logs.retention_days",
                Box::new(|f| f.logs.retention_days = 10),
            ),
            ("logs.flush_ms", Box::new(|f| f.logs.flush_ms = 6000)),
            (
                "restart.initial_backoff_ms",
                Box::new(|f| f.restart.initial_backoff_ms = 61_000),
            ),
            (
                "restart.crash_loop_after",
                Box::new(|f| f.restart.crash_loop_after = 0),
            ),
            ("timeouts.stop_secs", Box::new(|f| f.timeouts.stop_secs = 0)),
            (
                "timeouts.lease_check_secs",
                Box::new(|f| f.timeouts.lease_check_secs = 31),
            ),
            (
                "health.imds_interval_secs",
                Box::new(|f| f.health.imds_interval_secs = 0),
            ),
            (
                "users.service",
                Box::new(|f| f.users.service = "root".into()),
            ),
            (
                "users.service",
                Box::new(|f| f.users.service = "0:0".into()),
            ),
            (
                "users.service",
                Box::new(|f| f.users.service = "a:b".into()),
            ),
            ("ports", Box::new(|f| f.ports.http = 0)),
        ];
        for (key, mutate) in cases {
            let mut f = example();
            mutate(&mut f);
            let e = Settings::new(&f, Path::new("c.toml"), &id, true)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("config c.toml: {key}: ")),
                "{key}: {e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
    }
}

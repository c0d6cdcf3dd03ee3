//! The boot, as the commands that run it: `check` (identity → settings → plan, printed), `prepare` (the
//! root-only steps), `run` (lock → root-only steps → secrets → status socket → drop to the service user →
//! logs → geth version guard → sealer lease → first-boot `geth init`, then the hand-over to `serve`, and
//! the secrets wiped and logs flushed however it ends) and `cleanup`. The steps themselves are in `steps`.

use crate::chain::geth;
use crate::cli::HostArgs;
use crate::config::{self, ConfigFile, Settings};
use crate::imds::{self, Identity};
use crate::plan::{self, Plan};
use crate::serve::{self, child, fed_while};
use crate::sys::safefs;
use crate::{lease, logs, privileges, secrets, status, storage, sys};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod runlock;
mod steps;

use steps::{
    bind_health, fetch_checked, first_boot, io, lock_runtime, materialize_secrets, prepare_storage,
    root_steps, status_socket_then_drop, take_lease,
};

/// Any failure of the agent, one line each.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Identity(#[from] imds::IdentityError),
    #[error(transparent)]
    Secret(#[from] secrets::SecretError),
    #[error(transparent)]
    Spawn(#[from] child::SpawnError),
    #[error(transparent)]
    Sys(#[from] sys::SysError),
    #[error(transparent)]
    Privilege(#[from] privileges::PrivilegeError),
    #[error(transparent)]
    Geth(#[from] geth::GethError),
    #[error(transparent)]
    Lease(#[from] lease::LeaseError),
    #[error(transparent)]
    Log(#[from] logs::LogError),
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error(transparent)]
    Fs(#[from] safefs::FsError),
    #[error(transparent)]
    Stdout(#[from] crate::out::StdoutError),
    #[error(transparent)]
    RunLock(#[from] runlock::RunLockError),
    #[error("health.listen {addr}: cannot listen: {source}; choose a free port (1024 or above), or health.listen = \"off\"")]
    HealthListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "local mode needs --role and --environment (e.g. --local --role rpc --environment dev)"
    )]
    LocalNeedsRole,
    #[error("no configuration at {} and none in user-data{why}: pass --config PATH (node-agent install lays one out), launch the instance with #node-agent user-data, or try it without AWS: --local --role ROLE --environment ENV", config::DEFAULT_PATH)]
    NoConfig {
        /// Why user-data could not be read, when it could not.
        why: String,
    },
    #[error(transparent)]
    Genesis(#[from] crate::chain::genesis::GenesisError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
}

/// Resolves identity and settings, and computes the plan. No side effects.
pub async fn make_plan(args: &HostArgs) -> Result<(Settings, Plan), AgentError> {
    let default = Path::new(config::DEFAULT_PATH);
    let path = match (&args.config, args.local) {
        (Some(p), _) => Some(p.as_path()),
        // Off EC2 the built-in defaults; on EC2 user-data may carry the whole configuration.
        (None, _) if !default.exists() => None,
        (None, _) => Some(default),
    };
    let (mut file, path) = ConfigFile::load(path)?;
    // With no file, the configuration can only be in user-data: off EC2 that is known soon.
    let no_file = args.config.is_none() && !default.exists();
    let identity: Identity = if args.local {
        let (Some(role), Some(env)) = (args.role, args.environment.as_deref()) else {
            return Err(AgentError::LocalNeedsRole);
        };
        imds::local(role.as_str(), env, args.instance_id.as_deref())
    } else if no_file {
        imds::at_boot(std::time::Duration::from_secs(20))
            .await
            .map_err(|e| AgentError::NoConfig {
                why: format!(" (the instance metadata service does not answer: {e})"),
            })?
    } else {
        imds::at_boot(std::time::Duration::from_secs(
            file.timeouts.imds_secs.max(1),
        ))
        .await?
    };
    let user_data = match args.local {
        true => None,
        false => layer_user_data(&mut file, &path).await?,
    };
    if !args.local && user_data.is_none() && no_file {
        return Err(AgentError::NoConfig { why: String::new() });
    }
    // Local mode off a baked host: no genesis where the image puts it. The built-in dev genesis lets one
    // try the agent anywhere.
    let builtin = args.local
        && file.chain.genesis == config::ChainFile::default().genesis
        && !file.chain.genesis.exists();
    let settings = if builtin {
        tracing::info!(missing = %file.chain.genesis.display(), "local mode: no genesis file there; using the built-in dev genesis (set chain.genesis for another)");
        let genesis = crate::chain::genesis::Genesis::dev()?;
        let mut settings = Settings::with_genesis(&file, &path, &identity, args.local, genesis)?;
        settings.genesis_builtin = true;
        settings
    } else {
        Settings::new(&file, &path, &identity, args.local)?
    };
    let mut settings = settings;
    settings.sources = config::userdata::sources(
        &file,
        &path,
        &file_keys(&path),
        user_data.as_ref(),
        &tag_sources(&identity),
    );
    let plan = plan::plan(&identity, &settings);
    Ok((settings, plan))
}

/// User-data read once at boot: when it is node-agent configuration, merged over `file`.
async fn layer_user_data(
    file: &mut ConfigFile,
    path: &Path,
) -> Result<Option<toml::Table>, AgentError> {
    let raw = imds::user_data().await?;
    match config::userdata::read(raw.as_deref())? {
        config::userdata::UserData::Absent => Ok(None),
        config::userdata::UserData::Other => {
            tracing::info!("user-data is not node-agent configuration (its first line is not #node-agent): left to whatever reads it");
            Ok(None)
        }
        config::userdata::UserData::Config(table) => {
            *file = config::userdata::layered(file, &table)?;
            let keys = config::userdata::keys(&table);
            tracing::info!(over = %path.display(), keys = %keys.join(","), "configuration from user-data");
            Ok(Some(table))
        }
    }
}

/// The keys the configuration file's own text sets (none for the built-in defaults).
fn file_keys(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .map(|t| config::userdata::keys(&t))
        .unwrap_or_default()
}

/// The settings the instance's tags override.
fn tag_sources(identity: &Identity) -> Vec<(&'static str, &'static str)> {
    use crate::host::tag;
    [
        ("storage.efs_file_system_id", tag::EFS_FILE_SYSTEM_ID),
        ("storage.efs_access_point_id", tag::EFS_ACCESS_POINT_ID),
    ]
    .into_iter()
    .filter(|(_, t)| identity.tags.contains_key(*t))
    .collect()
}

/// `node-agent check`. With local secrets (local mode), also reads and checks them as `run` would: a
/// missing file or a keystore that does not open fails here, not at the first start. Secrets Manager is
/// not asked: `check` works without credentials.
pub async fn check(args: &HostArgs, json: bool) -> Result<(), AgentError> {
    let (settings, plan) = make_plan(args).await?;
    if settings.secrets.source == config::SecretSourceKind::Local && !plan.secrets.is_empty() {
        let source = secrets::Source::Local(settings.secrets.local_dir.clone());
        fetch_checked(&source, &settings, &plan).await?;
    }
    let text = if json {
        serde_json::to_string_pretty(&plan).unwrap_or_default() + "\n"
    } else {
        plan.to_string()
    };
    crate::out::print(text)?;
    Ok(())
}

/// `node-agent prepare`: the root-only boot steps, then exit.
pub async fn prepare(args: &HostArgs) -> Result<(), AgentError> {
    let (settings, plan) = make_plan(args).await?;
    if !crate::sys::is_root() {
        return Err(AgentError::Refused(
            "prepare mounts storage and the secrets tmpfs: run it as root (the unit runs it as ExecStartPre=+)".into(),
        ));
    }
    let _lock = lock_runtime(&settings, &plan)?;
    let account = privileges::resolve(&plan.user)?;
    root_steps(&settings, &plan, account).await?;
    tracing::info!(user = %plan.user, "prepared storage, directories and the secrets tmpfs");
    Ok(())
}

/// `node-agent run`.
pub async fn run(args: &HostArgs) -> Result<(), AgentError> {
    let (settings, plan) = make_plan(args).await?;
    // Held until the very end: the secrets are wiped and the logs flushed under it.
    let _lock = lock_runtime(&settings, &plan)?;
    tracing::info!(role = %plan.role, environment = %plan.environment, instance = %plan.identity.instance_id, "plan ready");
    // Before any privilege drop: the record belongs to whoever started the agent, as does `status`.
    status::record_socket(&settings.runtime_dir.join(status::SOCKET));
    for c in &plan.children {
        if !c.program.is_file() {
            return Err(AgentError::Refused(format!(
                "{} binary {} not found; install it or set binaries.{} in the config",
                c.name,
                c.program.display(),
                c.name
            )));
        }
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io("cannot install signal handler", Path::new("SIGTERM")))?;

    // Opened once privileges are dropped, so the log files and checkpoints belong to the service user;
    // the agent's lines from before wait in memory and open its log file.
    let mut pipeline = None;
    // Every boot step can wait a long time (EFS, Secrets Manager retries, the sealer lease, geth init):
    // SIGTERM or SIGINT ends the boot wherever it is. Dropping the boot future ends its waits and kills the
    // process it runs; the secrets directory is emptied below either way.
    let boot = async {
        // Started as root: the root-only steps, then the drop (nothing long-running stays root). Started
        // as the service user (the unit, after `prepare`): those steps are done; what they made is checked.
        let account = if crate::sys::is_root() {
            let account = privileges::resolve(&plan.user)?;
            root_steps(&settings, &plan, account).await?;
            Some(account)
        } else {
            prepare_storage(&settings, &plan).await?;
            None
        };
        let secrets = materialize_secrets(&settings, &plan, account).await?;
        let health = bind_health(&settings)?;
        let status_socket = status_socket_then_drop(&settings, account)?;
        let (mut logs, sinks, metrics) = logs::Logs::start(&settings.logs, &plan).await?;
        let logs_status = logs.status();
        pipeline = Some(logs);
        if let Some(check) = &plan.version_check {
            geth::check_version(check).await?;
        }
        let lease = take_lease(&settings, &plan).await?;
        first_boot(&settings, &plan).await?;
        Ok::<_, AgentError>((
            secrets,
            (status_socket, health),
            (sinks, logs_status, metrics),
            lease,
        ))
    };
    let booted = tokio::select! {
        r = boot => r.map(Some),
        _ = sigterm.recv() => Ok(None),
        _ = tokio::signal::ctrl_c() => Ok(None),
    };
    let result = match booted {
        Ok(Some((secrets, (status_socket, health), logs, lease))) => {
            let boot = serve::Handover {
                secrets,
                status_socket,
                health,
                logs,
                lease,
            };
            Ok(serve::supervise(&settings, &plan, boot, &mut sigterm).await?)
        }
        Ok(None) => {
            tracing::info!("stop requested during boot: stopping before anything started");
            Ok(())
        }
        Err(e) => Err(e),
    };
    secrets::wipe_dir(&plan.secrets_dir);
    if let Some(logs) = pipeline {
        if let Err(e) = &result {
            // Into the agent's log file (and CloudWatch) too, not only stderr.
            tracing::error!("{}", crate::error::error_chain(e));
        }
        // Each writer may take 5 s, then the shippers `stop_flush_secs`.
        let writers = Duration::from_secs(5 * (plan.children.len() as u64 + 1));
        fed_while(
            logs.shutdown(),
            writers + settings.logs.stop_flush + Duration::from_secs(10),
        )
        .await;
    }
    result
}

/// `node-agent cleanup` (the unit's `ExecStopPost=+`): empties the secrets directory and unmounts its
/// tmpfs, so that no secret outlives the agent, even one that crashed or was killed. Reads only the config
/// file's `secrets.dir` (no instance metadata, no network): it must work whatever else is down.
pub async fn cleanup(config: Option<&Path>) -> Result<(), AgentError> {
    let path = config.unwrap_or(Path::new(config::DEFAULT_PATH));
    let (mut file, path) = ConfigFile::load(Some(path).filter(|p| p.exists()))?;
    // The secrets directory may be user-data's (read as `run` read it): briefly, since off EC2, or with
    // IMDS gone, the file's is all there is.
    let layered = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        layer_user_data(&mut file, &path),
    )
    .await;
    if let Ok(Err(e)) = layered {
        tracing::warn!(error = %e, "user-data not applied: cleaning up what the file names");
    }
    // Not while an agent runs on these secrets (a hand-run cleanup). No runtime directory: no agent ran.
    let _lock = match safefs::Dir::open(&file.storage.runtime_dir) {
        Ok(runtime) => {
            let st = runtime.stat()?;
            let owner = crate::sys::is_root().then_some((st.st_uid, st.st_gid));
            Some(runlock::acquire(&runtime, owner)?)
        }
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e.into()),
    };
    let dir_path = &file.secrets.dir;
    let dir = match safefs::Dir::open(dir_path) {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    dir.empty()?;
    if crate::sys::is_root() && dir.is_mount_root()? && dir.is_tmpfs()? {
        // Unmounted through the descriptor's path, detached since that descriptor still holds it.
        if let Err(e) = crate::sys::detach_mount(&dir.proc_path()) {
            tracing::warn!(dir = %dir_path.display(), error = %e, "cannot unmount the secrets tmpfs (it is empty)");
        }
    }
    tracing::info!(dir = %dir_path.display(), "secrets directory emptied");
    Ok(())
}

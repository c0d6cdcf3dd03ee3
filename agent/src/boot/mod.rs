//! `run` and `check`: identity → settings → plan, then (for `run`) storage → secrets → first-boot init →
//! children under supervision → graceful stop. Each step is one function so later steps plug in here.

use crate::chain::geth;
use crate::cli::HostArgs;
use crate::config::{self, ConfigFile, Settings, StorageSettings};
use crate::imds::{self, Identity};
use crate::plan::{self, Plan};
use crate::serve::{self, child, fed_while};
use crate::sys::safefs;
use crate::{lease, logs, privileges, secrets, status, storage, sys};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod runlock;

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
    #[error(
        "local mode needs --role and --environment (e.g. --local --role rpc --environment dev)"
    )]
    LocalNeedsRole,
    #[error("no configuration at {}: pass --config PATH (node-agent install lays one out), or try it without AWS: --local --role ROLE --environment ENV", config::DEFAULT_PATH)]
    NoConfig,
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
        (None, true) if !default.exists() => None,
        (None, false) if !default.exists() => return Err(AgentError::NoConfig),
        (None, _) => Some(default),
    };
    let (mut file, path) = ConfigFile::load(path)?;
    let identity: Identity = if args.local {
        let (Some(role), Some(env)) = (args.role, args.environment.as_deref()) else {
            return Err(AgentError::LocalNeedsRole);
        };
        imds::local(role.as_str(), env, args.instance_id.as_deref())
    } else {
        imds::at_boot(std::time::Duration::from_secs(
            file.timeouts.imds_secs.max(1),
        ))
        .await?
    };
    // Local mode off a baked host: no genesis where the image puts it. The built-in dev genesis lets one
    // try the agent anywhere; `run` writes it beside geth's socket for `geth init`.
    let builtin = args.local
        && file.chain.genesis == config::ChainFile::default().genesis
        && !file.chain.genesis.exists();
    let settings = if builtin {
        tracing::info!(missing = %file.chain.genesis.display(), "local mode: no genesis file there; using the built-in dev genesis (set chain.genesis for another)");
        file.chain.genesis = file.storage.runtime_dir.join(DEV_GENESIS_FILE);
        let mut settings = Settings::with_genesis(
            &file,
            &path,
            &identity,
            args.local,
            crate::chain::genesis::Genesis::dev()?,
        )?;
        settings.genesis_builtin = true;
        settings
    } else {
        Settings::new(&file, &path, &identity, args.local)?
    };
    let plan = plan::plan(&identity, &settings);
    Ok((settings, plan))
}

/// Where `run` writes the built-in dev genesis in local mode, in `storage.runtime_dir`.
const DEV_GENESIS_FILE: &str = "dev-genesis.json";

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

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AgentError {
    let path = path.to_owned();
    move |source| AgentError::Io { what, path, source }
}

/// Creates `dir` with `mode` (parents 0755, so a service user can reach it), or opens it; either way its
/// mode is set, and its owner when given, through its descriptor. Idempotent.
fn create_dir(dir: &Path, mode: u32, owner: safefs::Owner) -> Result<safefs::Dir, AgentError> {
    let d = safefs::Dir::create_all(dir, mode)?;
    d.set(mode, owner)?;
    Ok(d)
}

/// The role's data directory, ready to use: mounted and verified (EFS) or created (local), its sentinel
/// checked. Fails closed: no child starts on the wrong data or on the local disk instead of EFS.
async fn prepare_storage(settings: &Settings, plan: &Plan) -> Result<(), AgentError> {
    let host = storage::Host {
        environment: &plan.environment,
        role: plan.role,
        instance_id: &plan.identity.instance_id,
        runtime_dir: &settings.runtime_dir,
    };
    Ok(storage::prepare(&plan.storage, &host).await?)
}

/// The private directory: must be tmpfs outside local mode (`prepare` mounts one).
fn prepare_secrets_dir(plan: &Plan) -> Result<(), AgentError> {
    let dir = &plan.secrets_dir;
    // Through its descriptor (this may run as root): created 0700 if missing, tightened if not.
    let d = safefs::Dir::create_all(dir, 0o700)?;
    d.set(0o700, None)?;
    if plan.local || d.is_tmpfs()? {
        return Ok(());
    }
    Err(AgentError::Refused(format!(
        "secrets directory {} is not on tmpfs: run `node-agent prepare` as root first (the unit's ExecStartPre does), or point secrets.dir at a tmpfs",
        dir.display()
    )))
}

/// The steps that need root, in a fixed order: storage (mount, create, verify), the directories the agent
/// and its children write (handed to the service user), the private tmpfs for the secrets. Idempotent:
/// run by `node-agent prepare` (the unit's `ExecStartPre=+`) and by `run` when started as root. Every
/// step acts through descriptors (`safefs`): these trees belong to the service user.
async fn root_steps(
    settings: &Settings,
    plan: &Plan,
    account: privileges::Account,
) -> Result<(), AgentError> {
    prepare_storage(settings, plan).await?;
    let owner = Some((account.uid.as_raw(), account.gid.as_raw()));
    let mut dirs = vec![settings.logs.dir.clone(), settings.runtime_dir.clone()];
    if let StorageSettings::Local { datadir, .. } = &plan.storage {
        dirs.push(datadir.clone());
    }
    for d in &dirs {
        create_dir(d, 0o750, owner)?;
    }
    fresh_secrets_dir(plan, owner)?;
    Ok(())
}

/// The secrets directory, fresh: a tmpfs of its own (nothing else shares its pages, and it can be kept
/// out of swap; one already mounted there by an earlier start is reused), emptied of whatever is in it
/// (an earlier run's files after a crash, or what the service user planted), and only its root handed to
/// the service user.
fn fresh_secrets_dir(plan: &Plan, owner: safefs::Owner) -> Result<(), AgentError> {
    let path = &plan.secrets_dir;
    let mut dir = safefs::Dir::create_all(path, 0o700)?;
    let tmpfs_here = |d: &safefs::Dir| -> Result<bool, safefs::FsError> {
        Ok(d.is_mount_root()? && d.is_tmpfs()?)
    };
    if !plan.local && !tmpfs_here(&dir)? {
        // mount(2) takes a path: the descriptor's, so a link swapped in meanwhile changes nothing.
        sys::mount_private_tmpfs(&dir.proc_path(), path)?;
        // The descriptor still names the directory underneath; the tmpfs root is what the path opens now.
        dir = safefs::Dir::open(path)?;
        if !tmpfs_here(&dir)? {
            return Err(AgentError::Refused(format!(
                "secrets directory {} is not the tmpfs just mounted there: something replaced it; check what is mounted there",
                path.display()
            )));
        }
    }
    dir.empty()?;
    dir.set(0o700, owner)?;
    Ok(())
}

/// One agent per runtime directory (see `runlock`), taken before anything is changed. Root hands the
/// lock file to the service user, who takes the same lock in `run` once `prepare` has exited.
fn lock_runtime(settings: &Settings, plan: &Plan) -> Result<runlock::RunLock, AgentError> {
    let owner = if nix::unistd::geteuid().is_root() {
        let account = privileges::resolve(&plan.user)?;
        Some((account.uid.as_raw(), account.gid.as_raw()))
    } else {
        None
    };
    Ok(runlock::acquire_at(&settings.runtime_dir, owner)?)
}

/// `node-agent prepare`: the root-only boot steps, then exit.
pub async fn prepare(args: &HostArgs) -> Result<(), AgentError> {
    let (settings, plan) = make_plan(args).await?;
    if !nix::unistd::geteuid().is_root() {
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

/// Every secret of the plan, fetched and checked one by one and as a set (what `run` writes, what
/// `check` proves can be written).
async fn fetch_checked(
    source: &secrets::Source,
    settings: &Settings,
    plan: &Plan,
) -> Result<secrets::SecretSet, AgentError> {
    let set = secrets::fetch_all(
        source,
        &plan.secrets,
        &settings.environment,
        &settings.signer,
        settings.timeouts.secrets,
    )
    .await?;
    secrets::check_set(&plan.secrets, &set, &settings.signer).await?;
    Ok(set)
}

/// Fetches every secret and renders the files built from them.
async fn materialize_secrets(
    settings: &Settings,
    plan: &Plan,
    owner: Option<privileges::Account>,
) -> Result<Option<(secrets::Source, secrets::SecretSet)>, AgentError> {
    if plan.secrets.is_empty() {
        return Ok(None);
    }
    prepare_secrets_dir(plan)?;
    let source = secrets::Source::new(&settings.secrets, &plan.identity.region).await;
    let set = fetch_checked(&source, settings, plan).await?;
    secrets::write_all(&plan.secrets, &plan.rendered, &set, owner)?;
    for s in &plan.secrets {
        tracing::info!(secret_name = %s.reference.name, file = %s.file.display(), "secret written");
    }
    Ok(Some((source, set)))
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
    let genesis = if settings.genesis_builtin {
        crate::chain::genesis::DEV.as_bytes().to_vec()
    } else {
        std::fs::read(&settings.genesis_path)
            .map_err(io("cannot read genesis", &settings.genesis_path))?
    };
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
        let account = if nix::unistd::geteuid().is_root() {
            let account = privileges::resolve(&plan.user)?;
            root_steps(&settings, &plan, account).await?;
            Some(account)
        } else {
            prepare_storage(&settings, &plan).await?;
            None
        };
        let secrets = materialize_secrets(&settings, &plan, account).await?;
        let status_socket = match account {
            Some(account) => {
                // Bound while still root, to give it to the operators' group.
                let socket = bind_status_socket(&settings, Some(account))?;
                privileges::drop_to(account)?;
                tracing::info!(
                    uid = account.uid.as_raw(),
                    gid = account.gid.as_raw(),
                    "dropped privileges"
                );
                socket
            }
            None => bind_status_socket(&settings, None)?,
        };
        let (mut logs, sinks) = logs::Logs::start(&settings.logs, &plan).await?;
        let logs_status = logs.status_json();
        pipeline = Some(logs);
        if let Some(check) = &plan.version_check {
            geth::check_version(check).await?;
        }
        let lease = match &plan.sealer_lease {
            Some(path) => {
                let holder = format!("{} pid {}", plan.identity.instance_id, std::process::id());
                Some(lease::acquire(path, &holder, settings.timeouts.sealer_lease).await?)
            }
            None => None,
        };
        if let Some(init) = &plan.init {
            if settings.genesis_builtin {
                write_dev_genesis(&settings.genesis_path)?;
            }
            geth::first_boot(init, plan.storage.datadir(), &genesis).await?;
        }
        Ok::<_, AgentError>((secrets, status_socket, (sinks, logs_status), lease))
    };
    let booted = tokio::select! {
        r = boot => r.map(Some),
        _ = sigterm.recv() => Ok(None),
        _ = tokio::signal::ctrl_c() => Ok(None),
    };
    let result = match booted {
        Ok(Some((secrets, status_socket, logs, lease))) => {
            let boot = serve::Handover {
                secrets,
                status_socket,
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

/// The built-in dev genesis for `geth init`, in local mode: written temp + rename by the (unprivileged)
/// agent into its own runtime directory.
fn write_dev_genesis(path: &Path) -> Result<(), AgentError> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, crate::chain::genesis::DEV)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(io("cannot write the built-in dev genesis to", path))
}

/// `node-agent cleanup` (the unit's `ExecStopPost=+`): empties the secrets directory and unmounts its
/// tmpfs, so that no secret outlives the agent, even one that crashed or was killed. Reads only the config
/// file's `secrets.dir` (no instance metadata, no network): it must work whatever else is down.
pub fn cleanup(config: Option<&Path>) -> Result<(), AgentError> {
    let path = config.unwrap_or(Path::new(config::DEFAULT_PATH));
    let (file, _) = ConfigFile::load(Some(path).filter(|p| p.exists()))?;
    // Not while an agent runs on these secrets (a hand-run cleanup). No runtime directory: no agent ran.
    let _lock = match safefs::Dir::open(&file.storage.runtime_dir) {
        Ok(runtime) => {
            let st = runtime.stat()?;
            let owner = nix::unistd::geteuid()
                .is_root()
                .then_some((st.st_uid, st.st_gid));
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
    if nix::unistd::geteuid().is_root() && dir.is_mount_root()? && dir.is_tmpfs()? {
        // Unmounted through the descriptor's path, detached since that descriptor still holds it.
        if let Err(e) = nix::mount::umount2(&dir.proc_path(), nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(dir = %dir_path.display(), error = %e, "cannot unmount the secrets tmpfs (it is empty)");
        }
    }
    tracing::info!(dir = %dir_path.display(), "secrets directory emptied");
    Ok(())
}

/// The status socket: `runtime_dir/status.sock`, mode 0660, group `users.operators` when that group
/// exists (operators in it need no sudo).
///
/// The runtime directory belongs to the service user, so the socket is bound, given its owner and mode in
/// a private directory made for it (nobody else can touch it there), then renamed into place: root never
/// changes anything by a path the service user could have swapped.
fn bind_status_socket(
    settings: &Settings,
    account: Option<privileges::Account>,
) -> Result<tokio::net::UnixListener, AgentError> {
    use std::ffi::OsStr;
    let runtime = create_dir(
        &settings.runtime_dir,
        0o750,
        account.map(|a| (a.uid.as_raw(), a.gid.as_raw())),
    )?;
    let group = match sys::lookup_group(&settings.operators) {
        Ok(Some(gid)) => Some(gid),
        // A laptop in local mode has no operators' group, and needs none: not worth a warning there.
        _ if settings.local => {
            tracing::info!(group = %settings.operators, "operators' group not found: status works for root and the service user");
            None
        }
        _ => {
            tracing::warn!(group = %settings.operators, "operators' group not found: status needs the service user or root");
            None
        }
    };
    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    let uid = account.map_or(euid, |a| a.uid.as_raw());
    let gid = group.or(account.map(|a| a.gid.as_raw())).unwrap_or(egid);
    let private = OsStr::new(".status-bind");
    runtime.remove_tree(private)?;
    let (dir, _) = runtime.make_dir(private, 0o700, None)?;
    let result = (|| {
        let name = OsStr::new(status::SOCKET);
        let listener = tokio::net::UnixListener::bind(dir.proc_path().join(name))
            .map_err(io("cannot listen on", &settings.runtime_dir.join(name)))?;
        // Only when it changes something: under the unit `run` starts as the service user, whose primary
        // group is the operators' group, and its seccomp filter (~@privileged) refuses chown outright.
        let owner = ((uid, gid) != (euid, egid)).then_some((uid, gid));
        dir.set_at(name, 0o660, owner)?;
        dir.rename_to(name, &runtime, name)?;
        Ok(listener)
    })();
    runtime.remove_dir(private)?;
    result
}

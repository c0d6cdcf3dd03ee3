//! `run` and `check`: identity → settings → plan, then (for `run`) storage → secrets → first-boot init →
//! children under supervision → graceful stop. Each step is one function so later steps plug in here.

use crate::cli::HostArgs;
use crate::config::{self, ConfigFile, Settings, StorageSettings};
use crate::identity::{self, Identity};
use crate::plan::{self, Plan};
use crate::supervisor::ChildStatus;
use crate::sys::safefs;
use crate::{
    geth, lease, logs, privileges, rotation, runlock, secrets, status, storage, supervisor, sys,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Any failure of the agent, one line each.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Secret(#[from] secrets::SecretError),
    #[error(transparent)]
    Spawn(#[from] supervisor::SpawnError),
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
    Genesis(#[from] crate::genesis::GenesisError),
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
        identity::local(role.as_str(), env, args.instance_id.as_deref())
    } else {
        identity::at_boot(std::time::Duration::from_secs(
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
            crate::genesis::Genesis::dev()?,
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

fn notify(state: &[sd_notify::NotifyState]) {
    // Outside systemd NOTIFY_SOCKET is unset and this does nothing.
    let _ = sd_notify::notify(state);
}

/// Awaits `work` (a part of the stop), feeding systemd's watchdog meanwhile, for at most `limit`: a
/// graceful stop of geth may take longer than `WatchdogSec`, yet is bounded by its own timeouts, so it
/// is given that long; a stop that overruns them is left to the watchdog.
async fn fed_while<F: std::future::Future>(work: F, limit: Duration) -> F::Output {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return work.await;
    };
    let until = Instant::now() + limit;
    let mut tick = tokio::time::interval(period / 2);
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick(), if Instant::now() < until => notify(&[sd_notify::NotifyState::Watchdog]),
        }
    }
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
        crate::genesis::DEV.as_bytes().to_vec()
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
            let boot = Booted {
                secrets,
                status_socket,
                logs,
                lease,
            };
            supervise(&settings, &plan, boot, &mut sigterm).await
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
            tracing::error!("{}", crate::identity::error_chain(e));
        }
        // Each writer may take 5 s, then the shippers `stop_flush_secs`.
        let writers = Duration::from_secs(5 * (plan.children.len() as u64 + 1));
        fed_while(
            logs.shutdown(),
            writers + Duration::from_secs(settings.logs.stop_flush_secs + 10),
        )
        .await;
    }
    result
}

/// The built-in dev genesis for `geth init`, in local mode: written temp + rename by the (unprivileged)
/// agent into its own runtime directory.
fn write_dev_genesis(path: &Path) -> Result<(), AgentError> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, crate::genesis::DEV)
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

/// Storage as status shows it.
fn storage_json(storage: &StorageSettings) -> serde_json::Value {
    match storage {
        StorageSettings::Efs(efs) => serde_json::json!({
            "kind": "efs", "source": format!("{}:{}", efs.file_system_id, efs.path), "datadir": efs.datadir,
        }),
        StorageSettings::Local { datadir, .. } => serde_json::json!({
            "kind": "local", "source": datadir, "datadir": datadir,
        }),
    }
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

/// One line for systemd's STATUS=.
fn status_line(plan: &Plan, children: &[ChildStatus]) -> String {
    let parts: Vec<String> = children
        .iter()
        .map(|c| {
            let state = serde_json::to_value(c.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            match (&c.reason, &c.chain) {
                (Some(r), _) => format!("{} {state} ({r})", c.name),
                (None, Some(chain)) if chain.head == 0 => format!(
                    "{} {state}, head #0 (no block yet), {} peers",
                    c.name, chain.peers
                ),
                (None, Some(chain)) => format!(
                    "{} {state}, head #{} {}s old, {} peers",
                    c.name, chain.head, chain.head_age_secs, chain.peers
                ),
                (None, None) => format!("{} {state}", c.name),
            }
        })
        .collect();
    format!("{} {}: {}", plan.environment, plan.role, parts.join("; "))
}

/// Every `interval`, asks IMDS for the identity again: status shows an outage (the children keep running;
/// the SDK keeps using the instance role's cached credentials, valid for hours), and a change of the tags
/// the agent reads is logged once (it takes effect at the next start).
async fn watch_imds(boot: Identity, interval: Duration, services: watch::Sender<status::Services>) {
    // Long enough for a couple of attempts; short enough that status is not stale for a whole interval.
    let deadline = interval.min(Duration::from_secs(5));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut drift_logged = false;
    loop {
        tick.tick().await;
        let got = identity::from_imds(deadline).await;
        let now = crate::health::now_unix();
        if let Ok(id) = &got {
            let changed: Vec<String> = [
                config::tag::ROLE,
                config::tag::ENVIRONMENT,
                config::tag::EFS_FILE_SYSTEM_ID,
                config::tag::EFS_ACCESS_POINT_ID,
            ]
            .iter()
            .filter(|k| boot.tags.get(**k) != id.tags.get(**k))
            .map(|k| {
                let show =
                    |t: &Identity| t.tags.get(*k).map_or("(none)".into(), |v| format!("{v:?}"));
                format!("{k} {} -> {}", show(&boot), show(id))
            })
            .collect();
            if !changed.is_empty() && !drift_logged {
                drift_logged = true;
                tracing::warn!(changed = %changed.join(", "), "instance tags changed since start; restart node-agent to apply them");
            }
        }
        services.send_modify(|s| {
            let Some(r) = s.imds.as_mut() else {
                return;
            };
            match &got {
                Ok(_) => {
                    if let Some(secs) = r.succeeded(now) {
                        tracing::info!(after_secs = secs, "instance metadata answers again");
                    }
                }
                Err(e) => {
                    if !r.failing() {
                        tracing::error!(error = %e, "instance metadata unreachable; children keep running");
                    }
                    r.failed(now, e.to_string());
                }
            }
        });
    }
}

/// What the boot made for the running agent.
struct Booted {
    secrets: Option<(secrets::Source, secrets::SecretSet)>,
    status_socket: tokio::net::UnixListener,
    logs: (Vec<logs::LineSink>, watch::Receiver<serde_json::Value>),
    /// The sealer's lease, kept (and geth fenced without it) for as long as the agent runs.
    lease: Option<lease::Lease>,
}

async fn supervise(
    settings: &Settings,
    plan: &Plan,
    boot: Booted,
    sigterm: &mut tokio::signal::unix::Signal,
) -> Result<(), AgentError> {
    let Booted {
        secrets,
        status_socket,
        logs: (sinks, logs_rx),
        lease,
    } = boot;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut statuses = Vec::new();
    let mut controls = Vec::new();
    let rules = supervisor::HealthRules::new(&settings.health);
    for (child, sink) in plan.children.iter().zip(sinks) {
        let (status_tx, status_rx) = watch::channel(ChildStatus::new_for(&child.name));
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        statuses.push(status_rx);
        controls.push(control_tx);
        tasks.spawn(supervisor::supervise(
            child.clone(),
            settings.restart.clone(),
            rules.clone(),
            settings.timeouts.stop,
            stop_rx.clone(),
            control_rx,
            status_tx,
            sink,
        ));
    }

    let now = crate::health::now_unix();
    let secret_infos: Vec<status::SecretInfo> = match &secrets {
        Some((_, set)) => plan
            .secrets
            .iter()
            .filter_map(|s| {
                set.get(s.kind).map(|f| status::SecretInfo {
                    name: s.reference.name.clone(),
                    version: f.version.clone(),
                    fetched_at: now,
                    error: None,
                })
            })
            .collect(),
        None => Vec::new(),
    };
    let (secrets_report, secrets_rx) = watch::channel(secret_infos);
    let (services, services_rx) = watch::channel(status::Services {
        secrets_manager: match &secrets {
            Some((secrets::Source::Aws(_), _)) => Some(status::Reach::default()),
            _ => None,
        },
        imds: (!plan.local).then(status::Reach::default),
    });
    let enode = secrets.as_ref().and_then(|(_, set)| {
        let key = set.get(plan::SecretKind::BootnodeNodekey)?;
        let id = secrets::node_id(&key.value)?;
        let ip = plan
            .identity
            .public_ipv4
            .as_deref()
            .unwrap_or(&plan.identity.private_ipv4);
        Some(format!("enode://{id}@{ip}:{}", settings.ports.bootnode))
    });
    let (storage_tx, storage_rx) = watch::channel(status::StorageProbe::default());
    let storage_task = tokio::spawn(status::watch_storage(
        plan.storage.clone(),
        Duration::from_secs(2),
        storage_tx,
    ));
    let sources = status::Sources {
        fixed: std::sync::Arc::new(status::Static {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started_at: now,
            role: plan.role.to_string(),
            environment: plan.environment.clone(),
            instance_id: plan.identity.instance_id.clone(),
            region: plan.identity.region.clone(),
            availability_zone: plan.identity.availability_zone.clone(),
            geth_pinned: crate::version::pinned_geth(),
            user: plan.user.clone(),
            storage: storage_json(&plan.storage),
            datadir: plan.storage.datadir().to_owned(),
            enode,
        }),
        children: statuses.clone(),
        secrets: secrets_rx,
        logs: logs_rx,
        services: services_rx,
        storage: storage_rx,
    };
    let status_task = tokio::spawn(status::serve(status_socket, sources));

    let mut rotation_task = None;
    if let Some((source, set)) = secrets {
        let rotation = rotation::Rotation {
            report: secrets_report,
            services: services.clone(),
            source,
            set,
            plan: plan.clone(),
            environment: settings.environment.clone(),
            signer: settings.signer.clone(),
            interval: settings.secrets.rotation_interval,
            deadline: settings.timeouts.secrets,
        };
        let controls = controls.clone();
        rotation_task = Some(tokio::spawn(async move { rotation.watch(&controls).await }));
    }

    // geth runs only while the sealer's lease is held: the keeper fences it the moment it is not.
    let lease_task = lease.and_then(|lease| {
        let i = plan.children.iter().position(|c| c.name == "geth")?;
        let (fence, unfence) = (controls[i].clone(), controls[i].clone());
        Some(tokio::spawn(lease::keep(
            lease,
            settings.timeouts.lease_check,
            move |reason| {
                let _ = fence.send(supervisor::Control::Fence(format!(
                    "sealer lease not held: {reason}"
                )));
            },
            move || {
                let _ = unfence.send(supervisor::Control::Unfence);
            },
        )))
    });

    let imds_task = (!plan.local).then(|| {
        tokio::spawn(watch_imds(
            plan.identity.clone(),
            Duration::from_secs(settings.health.imds_interval_secs),
            services,
        ))
    });

    let watchdog = sd_notify::watchdog_enabled();
    // A task that has not moved for this long is stuck: stop feeding the watchdog so systemd restarts us.
    let stuck_after =
        (rules.interval * 2 + Duration::from_secs(15)).max(watchdog.unwrap_or_default());
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut ready_sent = false;
    let mut last_status = String::new();
    let mut last_ping = Instant::now();
    let mut failure = None;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: stopping"); break; }
            Some(res) = tasks.join_next() => {
                if let Ok(Err(e)) = res { failure = Some(e); }
                break;
            }
            _ = tick.tick() => {
                let now: Vec<ChildStatus> = statuses.iter().map(|s| s.borrow().clone()).collect();
                if !ready_sent && now.iter().all(|c| c.ever_ready) {
                    ready_sent = true;
                    let names: Vec<&str> = plan.children.iter().map(|c| c.name.as_str()).collect();
                    notify(&[sd_notify::NotifyState::Ready]);
                    tracing::info!(children = %names.join(","), "ready");
                }
                let line = status_line(plan, &now);
                if line != last_status {
                    notify(&[sd_notify::NotifyState::Status(&line)]);
                    last_status = line;
                }
                if let Some(period) = watchdog {
                    let alive = now.iter().all(|c| c.heartbeat.elapsed() < stuck_after);
                    if alive && last_ping.elapsed() >= period / 2 {
                        notify(&[sd_notify::NotifyState::Watchdog]);
                        last_ping = Instant::now();
                    }
                }
            }
        }
    }
    for t in [rotation_task, imds_task, Some(storage_task)]
        .into_iter()
        .flatten()
    {
        t.abort();
    }
    status_task.abort();
    drop(controls);
    notify(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    // The children stop side by side: SIGTERM, SIGKILL after `stop_secs`, then their output drained.
    let stop_limit = settings.timeouts.stop + Duration::from_secs(15);
    let stopped = async {
        while let Some(res) = tasks.join_next().await {
            if let Ok(Err(e)) = res {
                failure.get_or_insert(e);
            }
        }
    };
    fed_while(stopped, stop_limit).await;
    // Only now that geth is gone: a replacement may take the lease from here on.
    if let Some(t) = lease_task {
        t.abort();
    }
    match failure {
        Some(e) => Err(e.into()),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

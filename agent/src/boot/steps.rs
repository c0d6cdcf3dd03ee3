//! The steps `run`, `prepare` and `check` are made of, each one function: the root-only ones (storage,
//! the directories handed to the service user, the secrets tmpfs, the status socket) act through
//! descriptors (`safefs`), since these trees belong to the service user.

use super::runlock;
use super::AgentError;
use crate::chain::geth;
use crate::config::{Settings, StorageSettings};
use crate::plan::Plan;
use crate::sys::safefs;
use crate::{lease, privileges, secrets, status, storage, sys};
use std::path::Path;

pub(super) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AgentError {
    let path = path.to_owned();
    move |source| AgentError::Io { what, path, source }
}

/// Creates `dir` with `mode` (parents 0755, so a service user can reach it), or opens it; either way its
/// mode is set, and its owner when given, through its descriptor. Idempotent.
pub(super) fn create_dir(
    dir: &Path,
    mode: u32,
    owner: safefs::Owner,
) -> Result<safefs::Dir, AgentError> {
    let d = safefs::Dir::create_all(dir, mode)?;
    d.set(mode, owner)?;
    Ok(d)
}

/// The role's data directory, ready to use: mounted and verified (EFS) or created (local), its sentinel
/// checked. Fails closed: no child starts on the wrong data or on the local disk instead of EFS.
pub(super) async fn prepare_storage(settings: &Settings, plan: &Plan) -> Result<(), AgentError> {
    let mut host = storage::Host {
        environment: &plan.environment,
        role: plan.role.as_str(),
        instance_id: &plan.identity.instance_id,
        runtime_dir: &settings.runtime_dir,
    };
    storage::prepare(&plan.storage, &host).await?;
    // The backups' directory, on the hosts that export or seed: mounted (or created) the same way, its
    // sentinel naming it `backups` for every role. Not the role's data: without it the node still
    // serves (the exporter's rounds fail and status says so), and the boot waits a minute at most.
    if let Some(backup) = &settings.backup {
        host.role = crate::backup::SENTINEL_ROLE;
        let mut place = backup.place.clone();
        if let StorageSettings::Efs(efs) = &mut place {
            efs.mount_timeout = efs.mount_timeout.min(std::time::Duration::from_secs(60));
        }
        if let Err(e) = storage::prepare(&place, &host).await {
            tracing::error!(error = %e, "the backups' directory is not available: this node neither exports nor seeds until a restart finds it");
        }
    }
    Ok(())
}

/// The private directory: must be tmpfs outside local mode (`prepare` mounts one).
pub(super) fn prepare_secrets_dir(plan: &Plan) -> Result<(), AgentError> {
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
pub(super) async fn root_steps(
    settings: &Settings,
    plan: &Plan,
    account: privileges::Account,
) -> Result<(), AgentError> {
    prepare_storage(settings, plan).await?;
    let owner = Some((account.uid.as_raw(), account.gid.as_raw()));
    let mut dirs = vec![settings.logs.dir.clone(), settings.runtime_dir.clone()];
    let backups = settings.backup.as_ref().map(|b| &b.place);
    for place in std::iter::once(&plan.storage).chain(backups) {
        if let StorageSettings::Local { datadir, .. } = place {
            dirs.push(datadir.clone());
        }
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
pub(super) fn fresh_secrets_dir(plan: &Plan, owner: safefs::Owner) -> Result<(), AgentError> {
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
pub(super) fn lock_runtime(
    settings: &Settings,
    plan: &Plan,
) -> Result<runlock::RunLock, AgentError> {
    let owner = if crate::sys::is_root() {
        let account = privileges::resolve(&plan.user)?;
        Some((account.uid.as_raw(), account.gid.as_raw()))
    } else {
        None
    };
    Ok(runlock::acquire_at(&settings.runtime_dir, owner)?)
}

/// Every secret of the plan, fetched and checked one by one and as a set (what `run` writes, what
/// `check` proves can be written).
pub(super) async fn fetch_checked(
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
pub(super) async fn materialize_secrets(
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
    let (euid, egid) = crate::sys::effective_ids();
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

/// The health endpoint's listening socket (`health.listen`), bound before the drop; `None` when off.
pub(super) fn bind_health(
    settings: &Settings,
) -> Result<Option<tokio::net::TcpListener>, AgentError> {
    let Some(addr) = settings.health.listen else {
        return Ok(None);
    };
    let bound = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|source| AgentError::HealthListen { addr, source })?;
    tracing::info!(%addr, "health endpoint: GET /ready, GET /live");
    Ok(Some(bound))
}

/// The status socket, then the drop to the service user when started as root: bound while still root, to
/// give it to the operators' group.
pub(super) fn status_socket_then_drop(
    settings: &Settings,
    account: Option<privileges::Account>,
) -> Result<tokio::net::UnixListener, AgentError> {
    let Some(account) = account else {
        return bind_status_socket(settings, None);
    };
    let socket = bind_status_socket(settings, Some(account))?;
    privileges::drop_to(account)?;
    tracing::info!(
        uid = account.uid.as_raw(),
        gid = account.gid.as_raw(),
        "dropped privileges"
    );
    Ok(socket)
}

/// The sealer's lease on its key, when the plan has one: waited for up to `timeouts.sealer_lease_secs`.
pub(super) async fn take_lease(
    settings: &Settings,
    plan: &Plan,
) -> Result<Option<lease::Lease>, AgentError> {
    let Some(path) = &plan.sealer_lease else {
        return Ok(None);
    };
    let holder = format!("{} pid {}", plan.identity.instance_id, std::process::id());
    Ok(Some(
        lease::acquire(path, &holder, settings.timeouts.sealer_lease).await?,
    ))
}

/// First boot, when the plan has it: `geth init` from the genesis bytes checked at start (written to the
/// runtime directory, not whatever the configured path holds by now), once per datadir.
pub(super) async fn first_boot(settings: &Settings, plan: &Plan) -> Result<(), AgentError> {
    let Some(init) = &plan.init else {
        return Ok(());
    };
    let genesis = settings.genesis.bytes();
    safefs::Dir::open(&settings.runtime_dir)?.write_file(
        std::ffi::OsStr::new(crate::chain::genesis::RUNTIME_FILE),
        genesis,
        0o644,
        None,
    )?;
    let datadir = plan.storage.datadir();
    if let Some(b) = settings.backup.as_ref().filter(|b| b.seed) {
        if !datadir.join("geth/chaindata").exists() {
            seed(settings, init, b.place.datadir(), datadir).await;
        }
    }
    geth::first_boot(init, datadir, genesis).await?;
    Ok(())
}

/// An empty datadir, seeded from the newest backup (`storage.seed_from_backup`): geth then syncs only
/// what came after it. Never fatal: without a usable backup the node syncs everything from its peers.
async fn seed(settings: &Settings, init: &geth::InitPlan, dir: &Path, datadir: &Path) {
    let genesis_file = settings
        .runtime_dir
        .join(crate::chain::genesis::RUNTIME_FILE);
    let restore = crate::backup::restore::Restore {
        geth: &init.program,
        genesis: settings.genesis.bytes(),
        genesis_file: &genesis_file,
        dir,
        datadir,
    };
    tracing::info!(from = %dir.display(), datadir = %datadir.display(), "empty datadir: restoring the newest backup before geth starts");
    match restore.run(|line| tracing::info!("{line}")).await {
        Ok(done) => {
            if let Err(e) = geth::mark(datadir, settings.genesis.bytes()) {
                tracing::warn!(error = %e, "cannot write the genesis marker; geth init checks the chain instead");
            }
            tracing::info!(head = done.head, hash = %done.head_hash, blocks_per_sec = format!("{:.0}", done.blocks_per_sec), "seeded from the backup; geth syncs the rest from its peers");
        }
        Err(e) => {
            tracing::error!(error = %e, "not seeded from the backup; geth syncs the whole chain from its peers")
        }
    }
}

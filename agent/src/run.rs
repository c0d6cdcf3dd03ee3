//! `run` and `check`: identity → settings → plan, then (for `run`) storage → secrets → first-boot init →
//! children under supervision → graceful stop. Each step is one function so later steps plug in here.

use crate::cli::HostArgs;
use crate::config::{self, ConfigFile, Settings};
use crate::identity::{self, Identity};
use crate::plan::{self, Plan, Rendered, SecretKind};
use crate::{secrets, storage, supervisor, sys};
use std::path::{Path, PathBuf};
use tokio::sync::{oneshot, watch};

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
    Storage(#[from] storage::StorageError),
    #[error(
        "local mode needs --role and --environment (e.g. --local --role rpc --environment dev)"
    )]
    LocalNeedsRole,
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
        (None, _) => Some(default),
    };
    let (file, path) = ConfigFile::load(path)?;
    let identity: Identity = if args.local {
        let (Some(role), Some(env)) = (args.role, args.environment.as_deref()) else {
            return Err(AgentError::LocalNeedsRole);
        };
        identity::local(role.as_str(), env, args.instance_id.as_deref())
    } else {
        identity::from_imds(std::time::Duration::from_secs(
            file.timeouts.imds_secs.max(1),
        ))
        .await?
    };
    let settings = Settings::new(&file, &path, &identity, args.local)?;
    let plan = plan::plan(&identity, &settings);
    Ok((settings, plan))
}

/// `node-agent check`.
pub async fn check(args: &HostArgs, json: bool) -> Result<(), AgentError> {
    let (_, plan) = make_plan(args).await?;
    if json {
        let text = serde_json::to_string_pretty(&plan).unwrap_or_default();
        println!("{text}");
    } else {
        print!("{plan}");
    }
    Ok(())
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AgentError {
    let path = path.to_owned();
    move |source| AgentError::Io { what, path, source }
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

/// The private directory: tmpfs outside local mode (mounted here when we are root and it is not yet).
fn prepare_secrets_dir(plan: &Plan) -> Result<(), AgentError> {
    let dir = &plan.secrets_dir;
    secrets::prepare_dir(dir)?;
    if plan.local || sys::is_tmpfs(dir)? {
        return Ok(());
    }
    if nix::unistd::geteuid().is_root() {
        sys::mount_private_tmpfs(dir)?;
        return Ok(());
    }
    Err(AgentError::Refused(format!(
        "secrets directory {} is not on tmpfs and node-agent is not root to mount one; point secrets.dir at a tmpfs such as /run/node-agent/secrets",
        dir.display()
    )))
}

/// Fetches every secret and renders the files built from them.
async fn materialize_secrets(settings: &Settings, plan: &Plan) -> Result<(), AgentError> {
    if plan.secrets.is_empty() {
        return Ok(());
    }
    prepare_secrets_dir(plan)?;
    let source = secrets::Source::new(&settings.secrets, &plan.identity.region).await;
    let values = secrets::materialize(
        &source,
        &plan.secrets,
        &settings.environment,
        &settings.signer,
        settings.timeouts.secrets,
    )
    .await?;
    let ws = || {
        values
            .iter()
            .find(|(k, _)| *k == SecretKind::EthstatsWsSecret)
            .map(|(_, v)| v)
            .ok_or_else(|| AgentError::Refused("ethstats secret missing from the plan".into()))
    };
    for r in &plan.rendered {
        match r {
            Rendered::GethEthstatsConfig { path, name, server } => {
                secrets::write_file(
                    path,
                    secrets::geth_ethstats_toml(name, ws()?, server).expose(),
                )?;
            }
            Rendered::EthstatsSecretJson { path } => {
                secrets::write_file(path, secrets::ethstats_secret_json(ws()?).expose())?;
            }
        }
    }
    Ok(())
}

/// Runs `geth init` when the datadir holds no chain; a genesis mismatch is refused, never wiped.
async fn first_boot(plan: &Plan) -> Result<(), AgentError> {
    let Some(init) = &plan.init else {
        return Ok(());
    };
    let datadir = plan.storage.datadir();
    if datadir.join("geth/chaindata").exists() {
        return Ok(());
    }
    tracing::info!(datadir = %datadir.display(), "empty datadir: initialising the chain from the genesis");
    let out = tokio::process::Command::new(&init.program)
        .args(&init.args)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(io("cannot run geth init", &init.program))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        return Err(AgentError::Refused(format!(
            "geth init --datadir {} failed ({}): {last}",
            datadir.display(),
            supervisor::describe(&out.status)
        )));
    }
    Ok(())
}

fn notify(state: &[sd_notify::NotifyState]) {
    // Outside systemd NOTIFY_SOCKET is unset and this does nothing.
    let _ = sd_notify::notify(state);
}

/// `node-agent run`.
pub async fn run(args: &HostArgs) -> Result<(), AgentError> {
    let (settings, plan) = make_plan(args).await?;
    tracing::info!(role = %plan.role, environment = %plan.environment, instance = %plan.identity.instance_id, "plan ready");
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
    prepare_storage(&settings, &plan).await?;
    let result = async {
        materialize_secrets(&settings, &plan).await?;
        first_boot(&plan).await?;
        supervise(&settings, &plan, &mut sigterm).await
    }
    .await;
    secrets::wipe_dir(&plan.secrets_dir);
    result
}

async fn supervise(
    settings: &Settings,
    plan: &Plan,
    sigterm: &mut tokio::signal::unix::Signal,
) -> Result<(), AgentError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut started = Vec::new();
    for child in &plan.children {
        let (tx, rx) = oneshot::channel();
        started.push(rx);
        tasks.spawn(supervisor::supervise(
            child.clone(),
            settings.restart.clone(),
            settings.timeouts.stop,
            stop_rx.clone(),
            tx,
        ));
    }
    let all_started = async {
        for rx in started {
            let _ = rx.await;
        }
    };
    // A child that cannot even be spawned fails the boot.
    tokio::select! {
        _ = all_started => {}
        Some(res) = tasks.join_next() => {
            if let Ok(Err(e)) = res { return Err(e.into()); }
        }
    }
    let names: Vec<&str> = plan.children.iter().map(|c| c.name.as_str()).collect();
    let status = format!(
        "{} {}: running {}",
        plan.environment,
        plan.role,
        names.join(", ")
    );
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ]);
    tracing::info!(children = %names.join(","), "ready");

    let mut failure = None;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        Some(res) = tasks.join_next() => {
            if let Ok(Err(e)) = res { failure = Some(e); }
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    while let Some(res) = tasks.join_next().await {
        if let Ok(Err(e)) = res {
            failure.get_or_insert(e);
        }
    }
    match failure {
        Some(e) => Err(e.into()),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

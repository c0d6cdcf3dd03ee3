//! The runtime: once booted, the children run under supervision (restart, health, fencing), the secrets
//! are watched for rotation, IMDS and storage are watched for status, the status socket answers, and
//! systemd hears of readiness, status and liveness, until SIGTERM stops it all in order.

pub mod child;
mod drain;
mod endpoint;
pub mod ethstats;
pub mod health;
mod metrics;
pub mod rotation;
mod watchers;

use crate::config::{Settings, StorageSettings};
use crate::plan::{self, Plan};
use crate::status::model::ChildStatus;
use crate::{imds, lease, logs, secrets, status};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub fn notify(state: &[sd_notify::NotifyState]) {
    // Outside systemd NOTIFY_SOCKET is unset and this does nothing.
    let _ = sd_notify::notify(state);
}

/// Awaits `work` (a part of the stop), feeding systemd's watchdog meanwhile, for at most `limit`: a
/// graceful stop of geth may take longer than `WatchdogSec`, yet is bounded by its own timeouts, so it
/// is given that long; a stop that overruns them is left to the watchdog.
pub async fn fed_while<F: std::future::Future>(work: F, limit: Duration) -> F::Output {
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

/// Storage as status shows it.
fn storage_place(storage: &StorageSettings) -> status::StoragePlace {
    match storage {
        StorageSettings::Efs(efs) => status::StoragePlace {
            kind: status::StorageKind::Efs,
            source: format!("{}:{}", efs.file_system_id, efs.path),
            datadir: efs.datadir.clone(),
        },
        StorageSettings::Local { datadir, .. } => status::StoragePlace {
            kind: status::StorageKind::Local,
            source: datadir.display().to_string(),
            datadir: datadir.clone(),
        },
    }
}

/// One line for systemd's STATUS=.
fn status_line(plan: &Plan, children: &[ChildStatus]) -> String {
    let parts: Vec<String> = children
        .iter()
        .map(|c| {
            let state = c.life.state.as_str();
            match (&c.life.reason, &c.chain) {
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

/// What the boot made for the running agent.
pub struct Handover {
    pub secrets: Option<(secrets::Source, secrets::SecretSet)>,
    pub status_socket: tokio::net::UnixListener,
    /// The health endpoint's socket (`health.listen`), when it serves.
    pub health: Option<tokio::net::TcpListener>,
    /// The children's sinks, the shipping state, and the EMF events' sink (`metrics.emf`).
    pub logs: (
        Vec<logs::LineSink>,
        watch::Receiver<status::LogsStatus>,
        Option<logs::LineSink>,
    ),
    /// The sealer's lease, kept (and geth fenced without it) for as long as the agent runs.
    pub lease: Option<lease::Lease>,
}

pub async fn supervise(
    settings: &Settings,
    plan: &Plan,
    boot: Handover,
    sigterm: &mut tokio::signal::unix::Signal,
) -> Result<(), child::SpawnError> {
    let Handover {
        secrets,
        status_socket,
        health,
        logs: (sinks, logs_rx, metrics_sink),
        lease,
    } = boot;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut statuses = Vec::new();
    let mut controls = Vec::new();
    let rules = child::HealthRules::new(&settings.health);
    for (child, sink) in plan.children.iter().zip(sinks) {
        let (status_tx, status_rx) = watch::channel(ChildStatus::new_for(&child.name));
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        statuses.push(status_rx);
        controls.push(control_tx);
        tasks.spawn(child::supervise(
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

    let now = crate::clock::now_unix();
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
    let storage_task = tokio::spawn(watchers::storage(
        plan.storage.clone(),
        Duration::from_secs(2),
        storage_tx,
    ));
    let watchdog = sd_notify::watchdog_enabled();
    let gate = status::Gate {
        listen: settings.health.listen.map(|a| a.to_string()),
        rules: status::verdict::ReadyRules {
            role: plan.role,
            max_head_age_secs: settings.health.max_head_age.as_secs(),
            min_peers: settings.health.min_peers,
            // A task that has not moved for this long is stuck: not live, and systemd's watchdog is no
            // longer fed, so systemd restarts us.
            stuck_after: (rules.interval * 2 + Duration::from_secs(15))
                .max(watchdog.unwrap_or_default()),
        },
    };
    // Why the instance is leaving, once it is: `/ready` fails from then on, for status too.
    let (draining_tx, draining_rx) = watch::channel(None::<String>);
    // Chain backups, on the nodes of the exporting role: a round every interval, or when asked.
    let mut backup_task = None;
    let (mut backup_rx, mut backup_now) = (None, None);
    if let Some((b, export)) = settings.backup.as_ref().and_then(|b| Some((b, b.export?))) {
        let exporter = crate::backup::export::Exporter {
            place: b.place.clone(),
            dir: b.place.datadir().to_owned(),
            ipc: settings.runtime_dir.join("geth.ipc"),
            settings: export,
            instance_id: plan.identity.instance_id.clone(),
            environment: plan.environment.clone(),
            network_id: settings.network_id,
            genesis_sha256: crate::chain::geth::genesis_sha256(settings.genesis.bytes()),
        };
        let (report, rx) = watch::channel(status::backup::BackupStatus::default());
        let (asks, asked) = mpsc::channel(4);
        backup_task = Some(tokio::spawn(crate::backup::export::run(
            exporter, asked, report,
        )));
        (backup_rx, backup_now) = (Some(rx), Some(asks));
    }
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
            geth_pinned: crate::chain::pins::pinned_geth(),
            user: plan.user.clone(),
            storage: storage_place(&plan.storage),
            enode,
            gate: gate.clone(),
        }),
        children: statuses.clone(),
        secrets: secrets_rx,
        logs: logs_rx,
        services: services_rx,
        storage: storage_rx,
        draining: draining_rx,
        backup: backup_rx,
        backup_now,
    };
    // The figures of the same document: EMF events every health check, Prometheus at each scrape.
    let emf_task = metrics_sink
        .zip(plan.metrics_log.as_ref())
        .map(|(sink, (_, ns))| {
            tokio::spawn(metrics::emf(
                sources.clone(),
                sink,
                ns.clone(),
                settings.health.interval,
            ))
        });
    let scrape: endpoint::Metrics = {
        let sources = sources.clone();
        std::sync::Arc::new(move || metrics::prometheus(&sources))
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
                let _ = fence.send(child::Control::Fence(format!(
                    "sealer lease not held: {reason}"
                )));
            },
            move || {
                let _ = unfence.send(child::Control::Unfence);
            },
        )))
    });

    let imds_task = (!plan.local).then(|| {
        tokio::spawn(watchers::imds(
            plan.identity.clone(),
            settings.health.imds_interval,
            services,
        ))
    });

    // The load balancer's endpoint answers from the verdict each tick publishes.
    let (verdict_tx, verdict_rx) = watch::channel(endpoint::Verdict::starting());
    let endpoint_task =
        health.map(|listener| tokio::spawn(endpoint::serve(listener, verdict_rx, scrape)));
    let drain = &settings.health.drain;
    let poll = (!plan.local).then_some(drain.poll);
    let mut leaving = std::pin::pin!(async move {
        match poll {
            Some(poll) => drain::leaving(poll).await,
            None => std::future::pending().await,
        }
    });
    let mut left: Option<(imds::Leaving, Instant)> = None;
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
            why = &mut leaving, if left.is_none() => {
                tracing::warn!(leaving = %why, drain_secs = drain.wait.as_secs(), "this instance is leaving: /ready fails from now; the children stop when the drain is over");
                draining_tx.send_replace(Some(why.to_string()));
                // At once, not at the next tick.
                verdict_tx.send_modify(|v| v.ready = Err(format!("draining: {why}")));
                left = Some((why, Instant::now() + drain.wait));
            }
            _ = tokio::time::sleep_until(left.as_ref().map_or_else(Instant::now, |l| l.1)), if left.is_some() => {
                tracing::info!("drained: stopping");
                break;
            }
            _ = tick.tick() => {
                let now: Vec<ChildStatus> = statuses.iter().map(|s| s.borrow().clone()).collect();
                if !ready_sent && now.iter().all(|c| c.life.ever_ready) {
                    ready_sent = true;
                    let names: Vec<&str> = plan.children.iter().map(|c| c.name.as_str()).collect();
                    notify(&[sd_notify::NotifyState::Ready]);
                    tracing::info!(children = %names.join(","), "ready");
                }
                let at = Instant::now();
                verdict_tx.send_replace(endpoint::Verdict {
                    ready: status::verdict::ready(&gate.rules, &now, draining_tx.borrow().as_deref()),
                    live: status::verdict::live(&gate.rules, &now, at),
                    at,
                });
                let line = match draining_tx.borrow().as_deref() {
                    Some(why) => format!("draining ({why}): {}", status_line(plan, &now)),
                    None => status_line(plan, &now),
                };
                if line != last_status {
                    notify(&[sd_notify::NotifyState::Status(&line)]);
                    last_status = line;
                }
                if let Some(period) = watchdog {
                    let alive = now.iter().all(|c| c.heartbeat.elapsed() < gate.rules.stuck_after);
                    if alive && last_ping.elapsed() >= period / 2 {
                        notify(&[sd_notify::NotifyState::Watchdog]);
                        last_ping = Instant::now();
                    }
                }
            }
        }
    }
    for t in [
        rotation_task,
        imds_task,
        Some(storage_task),
        backup_task,
        emf_task,
    ]
    .into_iter()
    .flatten()
    {
        t.abort();
    }
    status_task.abort();
    // Stopping: no new traffic from here on.
    verdict_tx.send_replace(endpoint::Verdict {
        ready: Err("stopping".into()),
        live: Ok(()),
        at: Instant::now(),
    });
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
    if let Some(t) = endpoint_task {
        t.abort();
    }
    // Only now that geth is gone: a replacement may take the lease from here on.
    if let Some(t) = lease_task {
        t.abort();
    }
    if let (Some((why, _)), Some(hook)) = (&left, &drain.hook) {
        let id = &plan.identity;
        if let Err(e) = drain::complete(hook, why, &id.instance_id, &id.region).await {
            tracing::error!(error = %e, "lifecycle action not completed");
        }
    }
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

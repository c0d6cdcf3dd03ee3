//! The runtime's watchers of what lies outside the children: the storage (probed off the runtime's
//! thread) and the instance metadata (an outage, a change of tags).

use crate::imds::{self, Identity};
use crate::status::{self, StorageProbe};
use crate::sys::blocking::{OneAtATime, Outcome};
use std::time::Duration;
use tokio::sync::watch;

/// How long one storage probe may take before status says the storage does not answer.
const PROBE_ANSWER: Duration = Duration::from_secs(1);

/// Probes the storage (mountinfo, the sentinel, free space) every `interval`, off the runtime's thread:
/// on a hard NFS mount whose server is silent, a stat blocks until the server answers, and on the
/// runtime's thread that would stop supervision, health, shipping and the watchdog with it. A probe that
/// has not answered within a second makes the storage DOWN ("not answering") until it does; no second
/// probe is started while one is blocked.
pub async fn storage(
    settings: crate::config::StorageSettings,
    interval: Duration,
    tx: watch::Sender<StorageProbe>,
) {
    let datadir = settings.datadir().to_owned();
    let mut probing = OneAtATime::default();
    loop {
        let (s, d) = (settings.clone(), datadir.clone());
        let probed = probing
            .run(PROBE_ANSWER, move || StorageProbe {
                check: crate::storage::still_in_place(&s),
                free_bytes: crate::sys::free_bytes(&d),
            })
            .await;
        match probed {
            Outcome::Done(found) => {
                if found.check.is_ok() && tx.borrow().check.is_err() {
                    tracing::info!(datadir = %datadir.display(), "storage answers again");
                }
                tx.send_replace(found);
            }
            Outcome::Failed => {}
            Outcome::Waiting(waited) => {
                let secs = waited.as_secs();
                let error = format!(
                    "storage not answering: a check of {} has been waiting for {secs}s (file system server unreachable?)",
                    datadir.display()
                );
                if tx.borrow().check.is_ok() {
                    tracing::error!(datadir = %datadir.display(), "storage not answering");
                }
                tx.send_replace(StorageProbe {
                    check: Err(error),
                    free_bytes: None,
                });
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Every `interval`, asks IMDS for the identity again: status shows an outage (the children keep running;
/// the SDK keeps using the instance role's cached credentials, valid for hours), and a change of the tags
/// the agent reads is logged once (it takes effect at the next start).
pub async fn imds(boot: Identity, interval: Duration, services: watch::Sender<status::Services>) {
    // Long enough for a couple of attempts; short enough that status is not stale for a whole interval.
    let deadline = interval.min(Duration::from_secs(5));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut drift_logged = false;
    loop {
        tick.tick().await;
        let got = imds::from_imds(deadline).await;
        let now = crate::clock::now_unix();
        if let Ok(id) = &got {
            let changed: Vec<String> = [
                crate::host::tag::ROLE,
                crate::host::tag::ENVIRONMENT,
                crate::host::tag::EFS_FILE_SYSTEM_ID,
                crate::host::tag::EFS_ACCESS_POINT_ID,
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

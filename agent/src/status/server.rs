//! The agent's side: what its tasks publish for status, the document assembled from it, and the socket
//! that answers with it.

use super::backup::{backup_now, BackupAsk, BACKUP_NOW};
use super::model::{
    overall, AgentPart, BackupStatus, ChildPart, ChildStatus, Document, EndpointPart, HostPart,
    LogsStatus, Pinned, ReachPart, SecretPart, ServicesPart, StorageKind, StoragePart,
};
use super::verdict::{self, ReadyRules};
use super::{REQUEST, SCHEMA};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// One secret as status shows it: never the value.
#[derive(Debug, Clone)]
pub struct SecretInfo {
    pub name: String,
    pub version: String,
    /// Unix time the version in use was fetched.
    pub fetched_at: u64,
    /// The last rotation problem, if the newest version was refused.
    pub error: Option<String>,
}

/// A service the agent keeps asking while it runs (Secrets Manager for rotation, IMDS for the identity):
/// when it last answered, and since when it has not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// Unix time of the last successful check.
    pub ok_at: Option<u64>,
    /// Unix time of the first failed check since the last success.
    pub failing_since: Option<u64>,
    pub error: Option<String>,
}

impl Reach {
    /// Records a success; returns how long the outage it ends lasted, if there was one.
    pub fn succeeded(&mut self, now: u64) -> Option<u64> {
        self.ok_at = Some(now);
        self.error = None;
        self.failing_since
            .take()
            .map(|since| now.saturating_sub(since))
    }

    pub fn failed(&mut self, now: u64, error: String) {
        self.failing_since.get_or_insert(now);
        self.error = Some(error);
    }

    pub fn failing(&self) -> bool {
        self.failing_since.is_some()
    }

    /// As the document shows it at `now`.
    fn part(&self, now: u64) -> ReachPart {
        ReachPart {
            ok: !self.failing(),
            ok_at: self.ok_at,
            ok_age_secs: self.ok_at.map(|t| now.saturating_sub(t)),
            failing_since: self.failing_since,
            failing_secs: self.failing_since.map(|t| now.saturating_sub(t)),
            error: self.error.clone(),
        }
    }
}

/// The services the agent keeps asking; `None` where it does not (local mode, no secrets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Services {
    pub secrets_manager: Option<Reach>,
    pub imds: Option<Reach>,
}

impl Services {
    pub fn failing(&self) -> bool {
        [&self.secrets_manager, &self.imds]
            .iter()
            .any(|r| r.as_ref().is_some_and(Reach::failing))
    }

    fn part(&self, now: u64) -> ServicesPart {
        ServicesPart {
            secrets_manager: self.secrets_manager.as_ref().map(|r| r.part(now)),
            imds: self.imds.as_ref().map(|r| r.part(now)),
        }
    }
}

/// What the last probe of the role's storage found.
#[derive(Debug, Clone)]
pub struct StorageProbe {
    /// Mounted as expected with its sentinel; `Err` says what is wrong (or that it does not answer).
    pub check: Result<(), String>,
    pub free_bytes: Option<u64>,
}

impl Default for StorageProbe {
    /// Before the first probe: the boot has just verified it.
    fn default() -> Self {
        StorageProbe {
            check: Ok(()),
            free_bytes: None,
        }
    }
}

/// Where the role's storage is.
#[derive(Debug, Clone)]
pub struct StoragePlace {
    pub kind: StorageKind,
    /// `fs-…:/path` on EFS, the directory itself when local.
    pub source: String,
    pub datadir: PathBuf,
}

/// What does not change while the agent runs.
#[derive(Debug, Clone)]
pub struct Static {
    pub agent_version: String,
    pub pid: u32,
    pub started_at: u64,
    pub role: String,
    pub environment: String,
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
    pub geth_pinned: String,
    pub user: String,
    pub storage: StoragePlace,
    /// For the bootnode: its enode URL, derived from its key.
    pub enode: Option<String>,
    pub gate: Gate,
}

/// The health endpoint's address and the rules its verdict follows.
#[derive(Debug, Clone)]
pub struct Gate {
    /// `health.listen`, when it serves.
    pub listen: Option<String>,
    pub rules: ReadyRules,
}

/// Where the server reads the live parts.
#[derive(Clone)]
pub struct Sources {
    pub fixed: Arc<Static>,
    pub children: Vec<watch::Receiver<ChildStatus>>,
    pub secrets: watch::Receiver<Vec<SecretInfo>>,
    /// Log shipping state, as the log pipeline publishes it.
    pub logs: watch::Receiver<LogsStatus>,
    pub services: watch::Receiver<Services>,
    /// The storage, as the last probe found it (`watch_storage`): status never touches it itself.
    pub storage: watch::Receiver<StorageProbe>,
    /// Why the instance is leaving, once it is (the drain): `/ready` fails.
    pub draining: watch::Receiver<Option<String>>,
    /// Chain backups, on the nodes of the exporting role.
    pub backup: Option<watch::Receiver<BackupStatus>>,
    /// Asks the exporter for a round now (`backup --now`).
    pub backup_now: Option<tokio::sync::mpsc::Sender<BackupAsk>>,
}

/// The live parts at one moment.
struct Live {
    children: Vec<ChildStatus>,
    secrets: Vec<SecretInfo>,
    logs: LogsStatus,
    services: Services,
    storage: StorageProbe,
    draining: Option<String>,
    backup: Option<BackupStatus>,
    at: tokio::time::Instant,
}

impl Sources {
    fn now(&self) -> Live {
        Live {
            children: self.children.iter().map(|c| c.borrow().clone()).collect(),
            secrets: self.secrets.borrow().clone(),
            logs: self.logs.borrow().clone(),
            services: self.services.borrow().clone(),
            storage: self.storage.borrow().clone(),
            draining: self.draining.borrow().clone(),
            backup: self.backup.as_ref().map(|b| b.borrow().clone()),
            at: tokio::time::Instant::now(),
        }
    }
}

/// Builds the document from the sources.
pub fn document(src: &Sources) -> Document {
    assemble(&src.fixed, src.now(), crate::clock::now_unix())
}

/// The document of `live` at `now`. Pure.
fn assemble(fixed: &Static, live: Live, now: u64) -> Document {
    let endpoint = endpoint(&fixed.gate, &live);
    let check = live.storage.check;
    let since = |t: u64| now.saturating_sub(t);
    let children = live
        .children
        .iter()
        .map(|c| ChildPart {
            name: c.name.clone(),
            state: c.life.state,
            pid: c.life.pid,
            started_at: c.life.started_at,
            restarts: c.life.restarts,
            unhealthy_restarts: c.life.unhealthy_restarts,
            last_exit: c.life.last_exit.clone(),
            reason: c.life.reason.clone(),
            chain: c.chain.clone(),
            ever_ready: c.life.ever_ready,
            uptime_secs: c
                .life
                .started_at
                .filter(|_| c.life.pid.is_some())
                .map(since),
            user: fixed.user.clone(),
            ethstats: c.ethstats.clone(),
        })
        .collect();
    Document {
        schema: SCHEMA,
        overall: overall(
            &live.children,
            check.is_ok(),
            live.logs.degraded
                || live.services.failing()
                || live.backup.as_ref().is_some_and(|b| b.degraded(now)),
        ),
        agent: AgentPart {
            version: fixed.agent_version.clone(),
            pid: fixed.pid,
            started_at: fixed.started_at,
            uptime_secs: since(fixed.started_at),
            user: fixed.user.clone(),
        },
        host: HostPart {
            role: fixed.role.clone(),
            environment: fixed.environment.clone(),
            instance_id: fixed.instance_id.clone(),
            region: fixed.region.clone(),
            availability_zone: fixed.availability_zone.clone(),
        },
        pinned: Pinned {
            geth: fixed.geth_pinned.clone(),
        },
        children,
        bootnode_enode: fixed.enode.clone(),
        storage: StoragePart {
            kind: fixed.storage.kind,
            source: fixed.storage.source.clone(),
            datadir: fixed.storage.datadir.clone(),
            free_bytes: live.storage.free_bytes,
            check_ok: check.is_ok(),
            check_error: check.err(),
        },
        secrets: live
            .secrets
            .into_iter()
            .map(|s| SecretPart {
                age_secs: since(s.fetched_at),
                name: s.name,
                version: s.version,
                fetched_at: s.fetched_at,
                error: s.error,
            })
            .collect(),
        logs: Some(live.logs),
        services: live.services.part(now),
        endpoint: Some(endpoint),
        backup: live.backup,
    }
}

/// The verdict the health endpoint answers, from the same function and inputs. Pure.
fn endpoint(gate: &Gate, now: &Live) -> EndpointPart {
    let ready = verdict::ready(&gate.rules, &now.children, now.draining.as_deref());
    let live = verdict::live(&gate.rules, &now.children, now.at);
    EndpointPart {
        listen: gate.listen.clone(),
        ready: ready.is_ok(),
        ready_reason: ready.err(),
        live: live.is_ok(),
        live_reason: live.err(),
    }
}

/// Serves the socket until the task is dropped. Each connection: one request line (at most 64 bytes,
/// 2 s), one JSON answer (2 s to take it), close. Nothing a client sends changes anything. At most 64
/// connections are served at once; more clients wait in the socket's listen queue, which holds no
/// descriptor or memory of the agent, so a flood of clients cannot exhaust either, and an idle client
/// holds its place for 2 s at most.
pub async fn serve(listener: tokio::net::UnixListener, src: Sources) {
    const MAX_CONNECTIONS: usize = 64;
    const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // A free slot first, then accept: waiting clients stay in the kernel's queue.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let src = src.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, 64));
            let got = tokio::time::timeout(CLIENT_TIMEOUT, reader.read_line(&mut line)).await;
            let answer = match got {
                Ok(Ok(_)) if line.trim() == REQUEST => serde_json::to_vec(&document(&src)),
                Ok(Ok(_)) if line.trim() == BACKUP_NOW => {
                    serde_json::to_vec(&backup_now(src.backup_now.as_ref()).await)
                }
                _ => serde_json::to_vec(
                    &serde_json::json!({"error": format!("unknown request; send \"{REQUEST}\\n\"")}),
                ),
            };
            let mut bytes = answer.unwrap_or_default();
            bytes.push(b'\n');
            // A client that does not read must not keep its slot either.
            let _ = tokio::time::timeout(CLIENT_TIMEOUT, async {
                write.write_all(&bytes).await?;
                write.shutdown().await
            })
            .await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::tests::{wire, FULL, SPARSE};
    use super::super::model::{EthstatsSample, GethSample, State, StreamStatus};
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn fixed(full: bool) -> Static {
        let (role, environment, instance_id, region, zone, user) = if full {
            (
                "sealer",
                "production",
                "i-0abc",
                "eu-west-1",
                "eu-west-1a",
                "geth",
            )
        } else {
            ("rpc", "dev", "i-local", "local", "local", "alice")
        };
        let storage = if full {
            StoragePlace {
                kind: StorageKind::Efs,
                source: "fs-1:/production/sealer".into(),
                datadir: "/var/lib/node-agent/data".into(),
            }
        } else {
            StoragePlace {
                kind: StorageKind::Local,
                source: "/tmp/data".into(),
                datadir: "/tmp/data".into(),
            }
        };
        Static {
            agent_version: "0.1.0".into(),
            pid: if full { 4242 } else { 7 },
            started_at: NOW - if full { 4000 } else { 5 },
            role: role.into(),
            environment: environment.into(),
            instance_id: instance_id.into(),
            region: region.into(),
            availability_zone: zone.into(),
            geth_pinned: "1.13.15".into(),
            user: user.into(),
            storage,
            enode: full.then(|| "enode://ab@10.0.0.1:30301".into()),
            gate: Gate {
                listen: full.then(|| "0.0.0.0:8080".into()),
                rules: ReadyRules {
                    role: if full {
                        crate::host::Role::Sealer
                    } else {
                        crate::host::Role::Rpc
                    },
                    max_head_age_secs: 30,
                    min_peers: 1,
                    stuck_after: Duration::from_secs(35),
                },
            },
        }
    }

    /// The inputs of `model::tests::FULL`: every part filled.
    fn full() -> Live {
        let now_ms = (NOW * 1000) as i64;
        let mut geth = ChildStatus::new_for("geth");
        geth.life.state = State::Ready;
        geth.life.pid = Some(42);
        geth.life.started_at = Some(NOW - 61);
        (geth.life.restarts, geth.life.unhealthy_restarts) = (1, 2);
        geth.life.last_exit = Some("exited with code 1".into());
        geth.life.reason = Some("warming up: no peers".into());
        geth.chain = Some(GethSample {
            head: 120,
            head_age_secs: 3,
            peers: 2,
            syncing: true,
            highest: Some(130),
            authorised: Some(true),
            mining: Some(false),
        });
        geth.life.ever_ready = true;
        geth.ethstats = Some(EthstatsSample {
            server: "10.0.0.9:3000".into(),
            answered: true,
            reporting: vec!["production-rpc-i-0def".into()],
            inactive: vec!["production-sealer-i-0abc".into()],
            node: Some("production-sealer-i-0abc".into()),
            listed: Some(false),
            error: None,
        });
        let mut ethstats = ChildStatus::new_for("ethstats");
        ethstats.life.state = State::BackingOff;
        ethstats.life.started_at = Some(NOW - 10);
        ethstats.life.restarts = 3;
        ethstats.life.last_exit = Some("killed by signal 9".into());
        ethstats.life.reason = Some("backing off 4s".into());
        let secret = |name: &str, version: &str, age: u64, error: Option<&str>| SecretInfo {
            name: name.into(),
            version: version.into(),
            fetched_at: NOW - age,
            error: error.map(str::to_owned),
        };
        let stream = |child: &str| StreamStatus {
            child: child.into(),
            file: format!("/var/log/node-agent/{child}.log").into(),
            group: "/node-agent/production".into(),
            stream: format!("sealer/i-0abc/{child}"),
            shipping: true,
            ..StreamStatus::default()
        };
        let denied = "PutRetentionPolicy denied";
        Live {
            children: vec![geth, ethstats],
            secrets: vec![
                secret("production/sealer/password", "v2", 30, None),
                secret("production/sealer/key", "v1", 7200, Some("bad key")),
            ],
            logs: LogsStatus {
                summary: format!("CloudWatch failing for 31s (ThrottlingException), lag 2.0 KiB, 3 lines not written (disk), 2 events rejected by CloudWatch, 4.0 KiB rotated away unshipped, error: {denied}"),
                degraded: true,
                errors: vec![denied.into()],
                lag_bytes: 2048,
                streams: vec![
                    StreamStatus {
                        last_success_ms: Some(now_ms - 2000),
                        lag_bytes: 2048,
                        events_sent: 10,
                        batches_sent: 2,
                        retries: 1,
                        rejected_too_old: 1,
                        rejected_invalid: 1,
                        last_rejected: Some("too old".into()),
                        last_error: Some("ThrottlingException".into()),
                        setup_error: Some(denied.into()),
                        failing_since_ms: Some(now_ms - 31_000),
                        unwritten_lines: 3,
                        lost_bytes: 4096,
                        ..stream("geth")
                    },
                    StreamStatus {
                        last_success_ms: Some(now_ms - 1000),
                        ..stream("node-agent")
                    },
                ],
            },
            services: Services {
                secrets_manager: Some(Reach {
                    ok_at: Some(NOW - 100),
                    failing_since: Some(NOW - 40),
                    error: Some("timeout".into()),
                }),
                imds: Some(Reach {
                    ok_at: Some(NOW - 5),
                    ..Reach::default()
                }),
            },
            draining: None,
            backup: None,
            storage: StorageProbe {
                check: Ok(()),
                free_bytes: Some(8_000_000_000),
            },
            at: tokio::time::Instant::now(),
        }
    }

    /// The inputs of `model::tests::SPARSE`.
    fn sparse() -> Live {
        Live {
            children: vec![ChildStatus::new_for("geth")],
            secrets: Vec::new(),
            logs: LogsStatus {
                summary: "files only (not shipped)".into(),
                streams: vec![StreamStatus::default()],
                ..LogsStatus::default()
            },
            services: Services::default(),
            draining: None,
            backup: None,
            storage: StorageProbe {
                check: Err("sentinel missing".into()),
                free_bytes: None,
            },
            at: tokio::time::Instant::now(),
        }
    }

    #[test]
    fn the_document_on_the_wire_is_the_one_the_agent_always_sent() {
        for (full, live, expected) in [(true, full(), FULL), (false, sparse(), SPARSE)] {
            let doc = assemble(&fixed(full), live, NOW);
            assert_eq!(serde_json::to_string(&doc).unwrap(), wire(expected));
            let back: Document =
                serde_json::from_slice(&serde_json::to_vec(&doc).unwrap()).unwrap();
            assert_eq!(back, doc);
        }
    }

    #[test]
    fn the_verdict_counts_log_shipping_services_and_storage() {
        let verdict = |f: &dyn Fn(&mut Live)| {
            let mut live = sparse();
            live.children[0].life.state = State::Ready;
            live.storage.check = Ok(());
            f(&mut live);
            assemble(&fixed(false), live, NOW).overall
        };
        use super::super::model::Overall;
        assert_eq!(verdict(&|_| {}), Overall::Healthy);
        assert_eq!(verdict(&|l| l.logs.degraded = true), Overall::Degraded);
        assert_eq!(
            verdict(&|l| l.services.imds = Some(Reach {
                failing_since: Some(1),
                ..Reach::default()
            })),
            Overall::Degraded
        );
        assert_eq!(
            verdict(&|l| l.storage.check = Err("gone".into())),
            Overall::Down
        );
    }

    #[test]
    fn a_failing_service_degrades_until_it_answers_again() {
        let mut services = Services {
            secrets_manager: Some(Reach::default()),
            imds: None,
        };
        assert!(!services.failing());
        let sm = services.secrets_manager.as_mut().unwrap();
        assert_eq!(sm.succeeded(100), None);
        sm.failed(160, "dispatch failure".into());
        sm.failed(220, "timeout".into());
        assert_eq!(
            (sm.ok_at, sm.failing_since, sm.error.as_deref()),
            (Some(100), Some(160), Some("timeout")),
            "the outage began at the first failure; the error is the latest"
        );
        assert!(services.failing());
        let part = services.part(250);
        assert_eq!(
            part.secrets_manager.map(|r| (r.ok, r.failing_secs)),
            Some((false, Some(90)))
        );
        assert_eq!(part.imds, None);

        assert_eq!(
            services.secrets_manager.as_mut().unwrap().succeeded(260),
            Some(100),
            "the outage lasted from the first failure to the success"
        );
        assert!(!services.failing());
        let part = services.part(262).secrets_manager.unwrap();
        assert_eq!(
            (part.ok, part.ok_age_secs, part.error),
            (true, Some(2), None)
        );
    }
}

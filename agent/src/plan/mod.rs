//! The plan: everything this host will do, computed as a pure function of its identity and settings.
//! `check` prints it; `run` carries it out. Nothing here touches the system.

use crate::chain::geth::{InitPlan, VersionCheck};
use crate::config::{fill, SecretRef, Settings, StorageSettings};
use crate::host::Role;
use crate::imds::Identity;
use serde::Serialize;

use std::path::{Path, PathBuf};

/// Which secret, by its purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    SealerKeystore,
    SealerPassword,
    BootnodeNodekey,
    EthstatsWsSecret,
}

/// A secret to fetch and where it lands in the private directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedSecret {
    pub kind: SecretKind,
    #[serde(flatten)]
    pub reference: SecretRef,
    pub file: PathBuf,
}

/// A file written into the private directory from secret values (kept out of argv).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rendered {
    /// geth's `--config` TOML holding `[Ethstats] URL = "name:secret@host:port"`.
    GethEthstatsConfig {
        path: PathBuf,
        name: String,
        server: String,
    },
    /// The ethstats server's `ws_secret.json` (`["secret"]`), which it reads when `WS_SECRET` is not
    /// set in its environment (where secrets never go).
    EthstatsSecretJson { path: PathBuf },
}

/// A process the agent starts and supervises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChildPlan {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub secrets: Vec<SecretKind>,
    pub log: LogTarget,
    /// How to tell that the child serves, and whether it stays healthy.
    pub probe: Probe,
}

/// Readiness and health check of a child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Probe {
    /// JSON-RPC over geth's IPC socket: answers, head age, peers, and for a sealer its signer status.
    Geth {
        ipc: PathBuf,
        /// The sealer's address, which must stay in `clique_getSigners`.
        signer: Option<String>,
        /// Head older than this is a stall.
        max_head_age_secs: u64,
        /// Where geth reports to ethstats, when it does: status shows whether the dashboard lists it.
        ethstats: Option<EthstatsReport>,
    },
    /// A UDP port bound on this host (the bootnode's discovery port).
    Udp { port: u16 },
    /// The ethstats server on this loopback port: its dashboard websocket answers with the node list.
    Ethstats { port: u16 },
}

/// The ethstats server a geth node reports to, and the name it reports as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EthstatsReport {
    /// `host:port`.
    pub server: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogTarget {
    pub file: PathBuf,
    pub group: String,
    pub stream: String,
}

/// When Auto Scaling terminates the instance or Spot interrupts it: `/ready` fails, geth keeps serving
/// for `drain_secs`, stops, and the lifecycle hook (if any) is completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeavingPlan {
    pub drain_secs: u64,
    pub lifecycle_hook: Option<crate::config::LifecycleHook>,
}

/// The EMF events' name in the log directory and in the stream template's `{child}`.
pub const METRICS: &str = "metrics";

/// Everything `run` will do on this host, in order.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub identity: Identity,
    pub role: Role,
    pub environment: String,
    pub local: bool,
    pub storage: StorageSettings,
    pub secrets_dir: PathBuf,
    pub secrets: Vec<PlannedSecret>,
    pub rendered: Vec<Rendered>,
    pub init: Option<InitPlan>,
    pub children: Vec<ChildPlan>,
    pub agent_log: LogTarget,
    /// The EMF events (`metrics.emf`): their file and stream, and the namespace.
    pub metrics_log: Option<(LogTarget, String)>,
    /// The health endpoint's address (`health.listen`).
    pub health_listen: Option<std::net::SocketAddr>,
    /// Every port this host listens on, and who should reach it.
    pub listens: Vec<ports::Listen>,
    /// Where each setting that is not its default comes from: the file, `user-data`, or `tag NAME`.
    pub sources: std::collections::BTreeMap<String, String>,
    /// What happens when the instance is leaving; `None` in local mode (no instance metadata).
    pub leaving: Option<LeavingPlan>,
    /// Chain backups: where, and whether this host exports or seeds.
    pub backup: Option<crate::config::backup::BackupSettings>,
    pub log_retention_days: u32,
    /// Whether the log files are shipped to CloudWatch Logs (`logs.ship`); files only when not.
    pub log_ship: bool,
    /// The user the agent drops to after the root-only steps.
    pub user: String,
    pub version_check: Option<VersionCheck>,
    /// The sealer's lease on its key: a lock file on shared storage held for the child's whole life.
    pub sealer_lease: Option<PathBuf>,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Computes the plan. Pure: same inputs, same plan.
pub fn plan(identity: &Identity, settings: &Settings) -> Plan {
    let dir = &settings.secrets.dir;
    let names = &settings.secrets.names;
    let secret = |kind, reference: &SecretRef, file: &str| PlannedSecret {
        kind,
        reference: reference.clone(),
        file: dir.join(file),
    };
    let log = |child: &str| {
        let vars = [
            ("environment", settings.environment.as_str()),
            ("role", settings.role.as_str()),
            ("instance_id", identity.instance_id.as_str()),
            ("child", child),
        ];
        // Templates were validated in Settings::new with the same placeholders.
        LogTarget {
            file: settings.logs.dir.join(format!("{child}.log")),
            group: fill(&settings.logs.group_template, &vars).unwrap_or_default(),
            stream: fill(&settings.logs.stream_template, &vars).unwrap_or_default(),
        }
    };
    let datadir = settings.storage.datadir();
    // Peers inside the VPC reach us on the private address; the bootnode advertises the public one.
    let advertised = if settings.role == Role::Bootnode {
        identity
            .public_ipv4
            .as_deref()
            .unwrap_or(&identity.private_ipv4)
    } else {
        &identity.private_ipv4
    };

    let mut secrets = Vec::new();
    let mut rendered = Vec::new();
    let mut children = Vec::new();
    let mut init = None;

    if settings.role.runs_geth() {
        let mut args: Vec<String> = vec![
            "--datadir".into(),
            s(datadir),
            "--networkid".into(),
            settings.network_id.to_string(),
            "--port".into(),
            settings.ports.p2p.to_string(),
            "--authrpc.port".into(),
            settings.ports.authrpc.to_string(),
            "--syncmode".into(),
            "full".into(),
            // The IPC socket stays on local disk: the datadir may be NFS.
            "--ipcpath".into(),
            s(&settings.runtime_dir.join("geth.ipc")),
        ];
        if !settings.local {
            args.extend(["--nat".into(), format!("extip:{advertised}")]);
        }
        if !settings.bootnodes.is_empty() {
            args.extend(["--bootnodes".into(), settings.bootnodes.join(",")]);
        }
        let mut child_secrets = Vec::new();
        if let Some(server) = &settings.ethstats {
            secrets.push(secret(
                SecretKind::EthstatsWsSecret,
                &names.ethstats_ws_secret,
                "ethstats-ws-secret",
            ));
            let path = dir.join("geth-ethstats.toml");
            args.extend(["--config".into(), s(&path)]);
            rendered.push(Rendered::GethEthstatsConfig {
                path,
                name: settings.ethstats_name.clone(),
                server: server.clone(),
            });
            child_secrets.push(SecretKind::EthstatsWsSecret);
        }
        match settings.role {
            Role::Sealer => {
                secrets.push(secret(
                    SecretKind::SealerKeystore,
                    &names.sealer_keystore,
                    "keystore/signer.json",
                ));
                secrets.push(secret(
                    SecretKind::SealerPassword,
                    &names.sealer_password,
                    "sealer-password",
                ));
                child_secrets.extend([SecretKind::SealerKeystore, SecretKind::SealerPassword]);
                args.extend([
                    "--mine".into(),
                    "--miner.etherbase".into(),
                    settings.signer.clone(),
                    "--unlock".into(),
                    settings.signer.clone(),
                    "--password".into(),
                    s(&dir.join("sealer-password")),
                    "--keystore".into(),
                    s(&dir.join("keystore")),
                ]);
            }
            _ => {
                args.extend(
                    [
                        "--http",
                        "--http.addr",
                        "0.0.0.0",
                        "--http.port",
                        &settings.ports.http.to_string(),
                        "--http.api",
                        "eth,net,web3",
                        "--http.corsdomain",
                        "*",
                        "--http.vhosts",
                        "*",
                    ]
                    .map(String::from),
                );
            }
        }
        init = Some(InitPlan {
            program: settings.binaries.geth.clone(),
            args: vec![
                "init".into(),
                "--datadir".into(),
                s(datadir),
                s(&settings
                    .runtime_dir
                    .join(crate::chain::genesis::RUNTIME_FILE)),
            ],
            when: format!(
                "the datadir holds no chain yet; {} is written from {} as checked",
                crate::chain::genesis::RUNTIME_FILE,
                if settings.genesis_builtin {
                    "the built-in dev genesis".to_owned()
                } else {
                    s(&settings.genesis_path)
                }
            ),
        });
        children.push(ChildPlan {
            name: "geth".into(),
            program: settings.binaries.geth.clone(),
            args,
            env: Vec::new(),
            cwd: Some(datadir.to_owned()),
            secrets: child_secrets,
            log: log("geth"),
            probe: Probe::Geth {
                ipc: settings.runtime_dir.join("geth.ipc"),
                signer: (settings.role == Role::Sealer).then(|| settings.signer.clone()),
                max_head_age_secs: settings.health.max_head_age.as_secs(),
                ethstats: settings.ethstats.as_ref().map(|server| EthstatsReport {
                    server: server.clone(),
                    name: settings.ethstats_name.clone(),
                }),
            },
        });
    } else if settings.role == Role::Bootnode {
        secrets.push(secret(
            SecretKind::BootnodeNodekey,
            &names.bootnode_nodekey,
            "bootnode-nodekey",
        ));
        let mut args = vec![
            "-nodekey".into(),
            s(&dir.join("bootnode-nodekey")),
            "-addr".into(),
            format!(":{}", settings.ports.bootnode),
        ];
        if !settings.local {
            args.extend(["-nat".into(), format!("extip:{advertised}")]);
        }
        children.push(ChildPlan {
            name: "bootnode".into(),
            program: settings.binaries.bootnode.clone(),
            args,
            env: Vec::new(),
            cwd: Some(datadir.to_owned()),
            secrets: vec![SecretKind::BootnodeNodekey],
            log: log("bootnode"),
            probe: Probe::Udp {
                port: settings.ports.bootnode,
            },
        });
    } else {
        secrets.push(secret(
            SecretKind::EthstatsWsSecret,
            &names.ethstats_ws_secret,
            "ethstats-ws-secret",
        ));
        rendered.push(Rendered::EthstatsSecretJson {
            path: dir.join("ws_secret.json"),
        });
        children.push(ChildPlan {
            name: "ethstats".into(),
            program: settings.binaries.ethstats.clone(),
            args: Vec::new(),
            env: vec![("PORT".into(), settings.ports.ethstats.to_string())],
            // Beside its ws_secret.json: the server resolves that file relative to itself, and the
            // installed app directory links its copy into the private directory.
            cwd: Some(dir.clone()),
            secrets: vec![SecretKind::EthstatsWsSecret],
            log: log("ethstats"),
            probe: Probe::Ethstats {
                port: settings.ports.ethstats,
            },
        });
    }

    Plan {
        identity: identity.clone(),
        role: settings.role,
        environment: settings.environment.clone(),
        local: settings.local,
        storage: settings.storage.clone(),
        secrets_dir: dir.clone(),
        secrets,
        rendered,
        init,
        children,
        agent_log: log("node-agent"),
        metrics_log: settings
            .metrics
            .emf_namespace
            .clone()
            .map(|ns| (log(METRICS), ns)),
        health_listen: settings.health.listen,
        listens: ports::listens(settings),
        sources: settings.sources.clone(),
        backup: settings.backup.clone(),
        leaving: (!settings.local).then(|| LeavingPlan {
            drain_secs: settings.health.drain.wait.as_secs(),
            lifecycle_hook: settings.health.drain.hook.clone(),
        }),
        log_retention_days: settings.logs.retention_days,
        log_ship: settings.logs.ship,
        user: settings.user.clone(),
        version_check: settings.role.runs_geth().then(|| VersionCheck {
            program: settings.binaries.geth.clone(),
            required: crate::chain::pins::pinned_geth(),
            strict: settings.role == Role::Sealer,
        }),
        sealer_lease: (settings.role == Role::Sealer)
            .then(|| datadir.join(".node-agent-sealer.lease")),
    }
}

pub mod ports;
mod show;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{ConfigFile, EXAMPLE};
    use std::collections::BTreeMap;

    pub(super) fn settings(role: &str, edit: impl Fn(&mut ConfigFile)) -> (Identity, Settings) {
        let mut f = ConfigFile::parse(EXAMPLE, Path::new("example")).unwrap();
        f.chain.genesis = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/genesis.json");
        f.storage.efs_file_system_id = "fs-0123456789abcdef0".into();
        edit(&mut f);
        let tags: BTreeMap<String, String> = [("Role", role), ("Environment", "production")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let id = Identity {
            region: "eu-central-1".into(),
            instance_id: "i-0abc".into(),
            availability_zone: "eu-central-1a".into(),
            private_ipv4: "10.0.1.10".into(),
            public_ipv4: Some("3.120.0.10".into()),
            tags,
        };
        let s = Settings::new(&f, Path::new("example"), &id, false).unwrap();
        (id, s)
    }

    fn args_of(p: &Plan) -> String {
        p.children[0].args.join(" ")
    }

    #[test]
    fn sealer_mines_with_the_genesis_signer_over_ipc_only() {
        let (id, s) = settings("sealer", |f| {
            f.chain.ethstats = "ethstats.internal:3000".into()
        });
        let p = plan(&id, &s);
        let a = args_of(&p);
        let signer = "0xea94d5964b36a107571e051649c2eb52ff0c323f";
        assert!(
            a.contains(&format!(
                "--mine --miner.etherbase {signer} --unlock {signer}"
            )),
            "{a}"
        );
        assert!(
            a.contains("--password /run/node-agent/secrets/sealer-password"),
            "{a}"
        );
        assert!(
            a.contains("--keystore /run/node-agent/secrets/keystore"),
            "{a}"
        );
        assert!(a.contains("--syncmode full"), "{a}");
        assert!(
            !a.contains("--http"),
            "a sealer with --unlock must not serve HTTP: {a}"
        );
        assert!(
            a.contains("--config /run/node-agent/secrets/geth-ethstats.toml"),
            "{a}"
        );
        assert!(
            !a.contains("ethstats.internal"),
            "the ethstats URL holds the secret: keep it out of argv: {a}"
        );
        let kinds: Vec<_> = p.secrets.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                SecretKind::EthstatsWsSecret,
                SecretKind::SealerKeystore,
                SecretKind::SealerPassword
            ]
        );
        assert_eq!(p.secrets[1].reference.name, "production/sealer/keystore");
        assert!(p.init.as_ref().unwrap().args.contains(&"init".to_string()));
    }

    #[test]
    fn rpc_serves_only_safe_apis_with_cors_for_metamask() {
        let (id, s) = settings("rpc", |_| {});
        let p = plan(&id, &s);
        let a = args_of(&p);
        assert!(
            a.contains("--http --http.addr 0.0.0.0 --http.port 8545 --http.api eth,net,web3"),
            "{a}"
        );
        assert!(a.contains("--http.corsdomain * --http.vhosts *"), "{a}");
        assert!(!a.contains("--unlock") && !a.contains("--mine"), "{a}");
        assert!(
            p.secrets.is_empty(),
            "no ethstats configured: no secret needed"
        );
        assert_eq!(p.children[0].log.group, "/node-agent/production/rpc");
        assert_eq!(p.children[0].log.stream, "i-0abc/geth");
    }

    #[test]
    fn bootnode_advertises_its_public_address_with_its_secret_key() {
        let (id, s) = settings("bootnode", |_| {});
        let p = plan(&id, &s);
        assert_eq!(
            args_of(&p),
            "-nodekey /run/node-agent/secrets/bootnode-nodekey -addr :30301 -nat extip:3.120.0.10"
        );
        assert!(p.init.is_none());
    }

    #[test]
    fn ethstats_reads_its_secret_from_a_file_not_the_environment() {
        let (id, s) = settings("ethstats", |_| {});
        let p = plan(&id, &s);
        let c = &p.children[0];
        assert_eq!(c.env, [("PORT".to_string(), "3000".to_string())]);
        assert_eq!(
            p.rendered,
            [Rendered::EthstatsSecretJson {
                path: "/run/node-agent/secrets/ws_secret.json".into()
            }]
        );
        assert_eq!(c.cwd.as_deref(), Some(Path::new("/run/node-agent/secrets")));
        assert!(!c.env.iter().any(|(k, _)| k == "WS_SECRET"));
    }
}

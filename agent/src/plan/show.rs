//! The plan as `check` prints it: every step `run` takes, in the order it takes them.

use super::{LogTarget, Plan, Rendered};
use crate::config::storage::{efs_utils_options, DATA_MOUNT_FLAGS, SENTINEL};
use crate::config::StorageSettings;
use crate::host::Role;
use std::fmt::{self, Write as _};
use std::path::Path;

/// Quotes an argument for display the way a shell would need it.
fn shell_quote(a: &str) -> String {
    if !a.is_empty()
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@+".contains(&b))
    {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

fn command_line(program: &Path, args: &[String]) -> String {
    let mut line = shell_quote(&program.display().to_string());
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(a));
    }
    line
}

impl Plan {
    /// Where a log file's lines go besides the file.
    fn destination(&self, log: &LogTarget, note: &str) -> String {
        if self.log_ship {
            format!(" -> CloudWatch {} / {}{note}", log.group, log.stream)
        } else {
            " (file only: logs.ship = false)".into()
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = &self.identity;
        let mut out = String::new();
        let mode = if self.local { " (local mode)" } else { "" };
        writeln!(
            out,
            "plan for {} — role {}, environment {}{mode}",
            id.instance_id, self.role, self.environment
        )?;
        writeln!(
            out,
            "  identity  region {}, zone {}, private {}, public {}",
            id.region,
            id.availability_zone,
            id.private_ipv4,
            id.public_ipv4.as_deref().unwrap_or("none")
        )?;
        // Where the settings that are not defaults come from, one line per source.
        let mut by_source: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for (key, source) in &self.sources {
            by_source.entry(source).or_default().push(key);
        }
        for (source, keys) in by_source {
            writeln!(out, "  settings  from {source}: {}", keys.join(", "))?;
        }
        match &self.storage {
            StorageSettings::Efs(e) => {
                let how = match (&e.access_point_id, e.efs_utils) {
                    (Some(ap), _) => format!(
                        " through access point {ap} with efs-utils (tls,iam; the access point creates it)"
                    ),
                    (None, true) => format!(
                        " with efs-utils (tls,iam; created when missing, owner {} 0750)",
                        e.owner
                    ),
                    (None, false) => {
                        format!(" (created when missing, owner {} 0750)", e.owner)
                    }
                };
                writeln!(
                    out,
                    "  storage   EFS {}:{} mounted at {} from {}{how}",
                    e.file_system_id,
                    e.path,
                    e.datadir.display(),
                    e.dns_name,
                )?;
                let options = if e.efs_utils {
                    efs_utils_options(&e.mount_options)
                } else {
                    e.mount_options.clone()
                };
                writeln!(
                    out,
                    "  mount     options {options} (and {DATA_MOUNT_FLAGS}); sentinel {SENTINEL} checked or created"
                )?;
                if self.role == Role::Rpc && !e.path.contains(&id.instance_id) {
                    writeln!(
                        out,
                        "  scaling   every rpc node would share {}: only one geth can hold it (geth locks its datadir); to run more, put {{instance_id}} in storage.rpc.path_template or keep storage.rpc.kind = \"local\"",
                        e.path
                    )?;
                }
                if !e.efs_utils {
                    writeln!(
                        out,
                        "  exposure  plain NFS: any host that reaches TCP 2049 can mount any path of {} (use efs_utils and an access point)",
                        e.file_system_id
                    )?;
                }
            }
            StorageSettings::Local { datadir, owner } => writeln!(
                out,
                "  storage   local directory {} (owner {owner})",
                datadir.display()
            )?,
        }
        writeln!(
            out,
            "  secrets   into {} (0700, files 0400)",
            self.secrets_dir.display()
        )?;
        for sec in &self.secrets {
            let field = sec
                .reference
                .field
                .as_deref()
                .map(|f| format!(" field {f}"))
                .unwrap_or_default();
            writeln!(
                out,
                "    {}{field} -> {}",
                sec.reference.name,
                sec.file.display()
            )?;
        }
        for r in &self.rendered {
            match r {
                Rendered::GethEthstatsConfig { path, name, server } => writeln!(
                    out,
                    "    rendered {} (ethstats {name}@{server})",
                    path.display()
                )?,
                Rendered::EthstatsSecretJson { path } => writeln!(
                    out,
                    "    rendered {} (the ethstats server's ws_secret.json)",
                    path.display()
                )?,
            }
        }
        writeln!(
            out,
            "  user      the steps above as root, then {} from here on",
            self.user
        )?;
        if let Some(v) = &self.version_check {
            let otherwise = if v.strict {
                "any other version is refused: 1.14+ cannot seal Clique"
            } else {
                "any other version is warned about"
            };
            writeln!(
                out,
                "  version   {} --version must say {}; {otherwise}",
                v.program.display(),
                v.required
            )?;
        }
        if let Some(lease) = &self.sealer_lease {
            writeln!(
                out,
                "  lease     {} taken before geth starts and held while it runs; geth is stopped whenever it is not held",
                lease.display()
            )?;
        }
        if let Some(init) = &self.init {
            writeln!(
                out,
                "  init      {}   (when {})",
                command_line(&init.program, &init.args),
                init.when
            )?;
        }
        for c in &self.children {
            writeln!(out, "  child {}", c.name)?;
            let env: String = c
                .env
                .iter()
                .map(|(k, v)| format!("{k}={} ", shell_quote(v)))
                .collect();
            writeln!(
                out,
                "    command {env}{}",
                command_line(&c.program, &c.args)
            )?;
            writeln!(
                out,
                "    log     {}{}",
                c.log.file.display(),
                self.destination(&c.log, "")
            )?;
        }
        let retention = format!(" (retention {} days)", self.log_retention_days);
        writeln!(
            out,
            "  agent log {}{}",
            self.agent_log.file.display(),
            self.destination(&self.agent_log, &retention)
        )?;
        if let Some((m, ns)) = &self.metrics_log {
            writeln!(
                out,
                "  metrics   every health check: EMF events (namespace {ns}) into {}{}",
                m.file.display(),
                self.destination(m, "")
            )?;
        }
        match self.health_listen {
            Some(addr) => writeln!(
                out,
                "  health    GET /ready, GET /live on {addr} (health.listen; for load balancers)"
            )?,
            None => writeln!(out, "  health    no endpoint (health.listen = \"off\")")?,
        }
        for l in &self.listens {
            writeln!(
                out,
                "  listens   {}/{} on {}: {} (from {})",
                l.port, l.protocol, l.address, l.what, l.from
            )?;
        }
        if let Some(b) = &self.backup {
            let place = match &b.place {
                StorageSettings::Efs(e) => format!(
                    "EFS {}:{} mounted at {}{}",
                    e.file_system_id,
                    e.path,
                    e.datadir.display(),
                    e.access_point_id
                        .as_deref()
                        .map(|ap| format!(" through {ap}"))
                        .unwrap_or_default()
                ),
                StorageSettings::Local { datadir, .. } => datadir.display().to_string(),
            };
            let mut what = Vec::new();
            if let Some(x) = &b.export {
                what.push(format!(
                    "exports every {}s when it holds the environment's exporter lock (segments of {} blocks, {} behind the head)",
                    x.interval.as_secs(),
                    x.segment_blocks,
                    x.confirmations
                ));
            }
            if b.seed {
                what.push("seeds an empty datadir from the newest backup".into());
            }
            writeln!(out, "  backup    {place}: {}", what.join("; "))?;
        }
        if let Some(l) = &self.leaving {
            let hook = match &l.lifecycle_hook {
                Some(h) => format!(", then completes lifecycle hook {} of {}", h.name, h.group),
                None => String::new(),
            };
            writeln!(
                out,
                "  leaving   on Terminated or a Spot notice: /ready fails, children stop after {}s (health.drain_secs){hook}, the agent exits",
                l.drain_secs
            )?;
        }
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan;
    use super::super::tests::settings;
    use super::*;

    #[test]
    fn plan_is_a_pure_function_of_its_inputs() {
        let (id, s) = settings("sealer", |_| {});
        assert_eq!(plan(&id, &s).to_string(), plan(&id, &s).to_string());
        let text = plan(&id, &s).to_string();
        assert!(
            text.contains("EFS fs-0123456789abcdef0:/production/sealer"),
            "{text}"
        );
    }

    #[test]
    fn check_says_what_plain_nfs_leaves_open_and_names_the_access_point() {
        let (id, s) = settings("sealer", |_| {});
        let text = plan(&id, &s).to_string();
        let exposure: Vec<&str> = text.lines().filter(|l| l.contains("TCP 2049")).collect();
        assert_eq!(
            exposure,
            ["  exposure  plain NFS: any host that reaches TCP 2049 can mount any path of fs-0123456789abcdef0 (use efs_utils and an access point)"],
            "{text}"
        );
        let (id, s) = settings("sealer", |f| {
            f.storage.efs_utils = true;
            f.storage.efs_access_point_id = "fsap-0123456789abcdef0".into();
        });
        let text = plan(&id, &s).to_string();
        assert!(!text.contains("TCP 2049"), "{text}");
        assert!(
            text.contains("EFS fs-0123456789abcdef0:/production/sealer mounted at /var/lib/node-agent/data from fs-0123456789abcdef0.efs.eu-central-1.amazonaws.com through access point fsap-0123456789abcdef0 with efs-utils"),
            "{text}"
        );
    }

    #[test]
    fn check_names_cloudwatch_only_when_logs_are_shipped() {
        let (id, s) = settings("rpc", |_| {});
        let text = plan(&id, &s).to_string();
        assert!(
            text.contains("    log     /var/log/node-agent/geth.log -> CloudWatch /node-agent/production/rpc / i-0abc/geth\n"),
            "{text}"
        );
        let (id, s) = settings("rpc", |f| f.logs.ship = false);
        let text = plan(&id, &s).to_string();
        assert!(!text.contains("CloudWatch"), "{text}");
        assert!(
            text.contains(
                "    log     /var/log/node-agent/geth.log (file only: logs.ship = false)\n"
            ) && text.contains(
                "  agent log /var/log/node-agent/node-agent.log (file only: logs.ship = false)\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn display_quotes_arguments_a_shell_would_split() {
        assert_eq!(shell_quote("*"), "'*'");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("--x=1"), "--x=1");
    }

    #[test]
    fn check_shows_every_step_run_takes_in_its_order() {
        let (id, s) = settings("sealer", |_| {});
        let text = plan(&id, &s).to_string();
        let steps: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
            .map(|l| l.split_whitespace().next().unwrap_or_default())
            .collect();
        assert_eq!(
            steps,
            [
                "identity", "storage", "mount", "exposure", "secrets", "user", "version", "lease",
                "init", "child", "agent", "metrics", "health", "listens", "listens", "listens",
                "listens", "leaving"
            ],
            "{text}"
        );
        assert!(
            text.contains("  mount     options nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport (and nosuid,nodev,noexec)"),
            "{text}"
        );
        assert!(
            text.contains("--version must say 1.13.15; any other version is refused"),
            "{text}"
        );
        assert!(
            text.contains("  lease     /var/lib/node-agent/data/.node-agent-sealer.lease taken before geth starts"),
            "{text}"
        );
        let (id, s) = settings("rpc", |f| {
            f.storage.efs_utils = true;
            f.storage.rpc.kind = crate::config::StorageKind::Efs;
            f.storage.rpc.path_template = "/{environment}/rpc/{instance_id}".into();
        });
        let text = plan(&id, &s).to_string();
        assert!(text.contains(":/production/rpc/i-0abc mounted"), "{text}");
        assert!(!text.contains("  scaling "), "{text}");
        for port in [
            "  listens   30303/tcp on 0.0.0.0: geth p2p (from nodes)",
            "  listens   30303/udp on 0.0.0.0: geth discovery (from nodes)",
            "  listens   8551/tcp on 127.0.0.1: geth Engine API (from this host)",
            "  listens   8545/tcp on 0.0.0.0: geth JSON-RPC (from load balancer)",
            "  listens   8080/tcp on 0.0.0.0: node-agent health endpoint (/ready, /live) (from load balancer)",
        ] {
            assert!(text.contains(port), "{port}\n{text}");
        }
        assert!(
            text.contains("  backup    EFS fs-0123456789abcdef0:/production/backups mounted at /var/lib/node-agent/backups: exports every 3600s when it holds the environment's exporter lock (segments of 10000 blocks, 120 behind the head)"),
            "{text}"
        );
        let (id, shared) = settings("rpc", |f| {
            f.storage.rpc.kind = crate::config::StorageKind::Efs
        });
        let shared = plan(&id, &shared).to_string();
        assert!(
            shared.contains(
                "  scaling   every rpc node would share /production/rpc: only one geth can hold it"
            ),
            "{shared}"
        );
        assert!(
            text.contains("  mount     options tls,iam,nfsvers=4.1"),
            "{text}"
        );
        assert!(text.contains("is warned about"), "{text}");
        assert!(!text.contains("  lease "), "{text}");
    }
}

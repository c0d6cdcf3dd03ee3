//! One process of a child: started in its own process group and tied to the agent's life, its output
//! pumped to the log pipeline; stopped gracefully or killed, and its output drained once it is gone.

use crate::logs;
use crate::plan::ChildPlan;
use crate::sys::proc::{self, Signal};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start {child} ({program}): {source}")]
    Spawn {
        child: String,
        program: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(#[from] logs::LogError),
}

/// Describes an exit for logs and status.
pub fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!(
            "killed by {}",
            Signal::try_from(s)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| format!("signal {s}"))
        ),
        _ => "exited".into(),
    }
}

/// A started process of a child.
pub struct Proc {
    child: tokio::process::Child,
    /// The tasks feeding its stdout and stderr to the log pipeline.
    pumps: Vec<JoinHandle<()>>,
    /// Its pid, which is also its process group's id.
    pub pid: Option<u32>,
    pub began: Instant,
}

impl Proc {
    /// Starts the child's process: clean environment, stdin closed, output piped to `sink`, its own
    /// process group, and killed by the kernel if the agent dies (no orphan geth holding the datadir
    /// lock).
    pub fn start(plan: &ChildPlan, sink: &logs::LineSink) -> Result<Proc, SpawnError> {
        let mut cmd = tokio::process::Command::new(&plan.program);
        cmd.args(&plan.args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .envs(plan.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if let Some(cwd) = &plan.cwd {
            cmd.current_dir(cwd);
        }
        proc::die_with_agent(&mut cmd);
        let mut child = cmd.spawn().map_err(|source| SpawnError::Spawn {
            child: plan.name.clone(),
            program: plan.program.display().to_string(),
            source,
        })?;
        let began = Instant::now();
        let pid = child.id();
        let pumps = [
            child
                .stdout
                .take()
                .map(|o| tokio::spawn(sink.clone().pump(o))),
            child
                .stderr
                .take()
                .map(|e| tokio::spawn(sink.clone().pump(e))),
        ];
        Ok(Proc {
            child,
            pumps: pumps.into_iter().flatten().collect(),
            pid,
            began,
        })
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> Option<ExitStatus> {
        self.child.wait().await.ok()
    }

    /// Sends SIGTERM, waits up to `timeout`, then SIGKILL. Returns how it ended.
    pub async fn stop(&mut self, name: &str, timeout: Duration) -> Option<ExitStatus> {
        let proc = &mut self.child;
        let pid = proc.id()?;
        tracing::info!(child = name, pid, "stopping (SIGTERM)");
        let _ = proc::signal(pid, Signal::SIGTERM);
        match tokio::time::timeout(timeout, proc.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                tracing::warn!(
                    child = name,
                    pid,
                    ?timeout,
                    "did not stop in time; sending SIGKILL"
                );
                // The whole process group: nothing the child started may outlive it.
                let _ = proc::signal_group(pid, Signal::SIGKILL);
                let _ = proc.start_kill();
                proc.wait().await.ok()
            }
        }
    }

    /// Kills the whole process group at once (SIGKILL, no grace) and waits for the process.
    pub async fn kill(&mut self) -> Option<ExitStatus> {
        if let Some(p) = self.child.id() {
            let _ = proc::signal_group(p, Signal::SIGKILL);
        }
        let _ = self.child.start_kill();
        self.child.wait().await.ok()
    }

    /// Waits for the output pumps to reach end of file. A process the child started may hold the pipes
    /// open after the child is gone; then, after [`DRAIN_LIMIT`], the rest of the child's process group
    /// is killed (nothing the child started may outlive it), and a pump still open after that (a process
    /// that left the group) is abandoned: the supervisor never hangs on a child's leftovers.
    pub async fn drain(self, name: &str) {
        let (mut pumps, pgid) = (self.pumps, self.pid);
        let deadline = Instant::now() + DRAIN_LIMIT;
        let mut open = false;
        for p in &mut pumps {
            if tokio::time::timeout_at(deadline, &mut *p).await.is_err() {
                open = true;
                break;
            }
        }
        if !open {
            return;
        }
        tracing::warn!(
            child = name,
            pgid,
            "output still open after the child exited; killing what is left of its process group"
        );
        if let Some(g) = pgid {
            let _ = proc::signal_group(g, Signal::SIGKILL);
        }
        let deadline = Instant::now() + DRAIN_LIMIT;
        for mut p in pumps {
            if tokio::time::timeout_at(deadline, &mut p).await.is_err() {
                tracing::warn!(
                    child = name,
                    "output held open by a process outside the child's group; no longer read"
                );
                p.abort();
            }
        }
    }
}

/// How long output may stay open after the child is gone before what holds it open is killed.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

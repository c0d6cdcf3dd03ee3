//! Supervision: start each child with its planned command line, feed its output to the log pipeline,
//! restart it with backoff when it exits, stop it gracefully on shutdown.

use crate::config::RestartFile;
use crate::logs;
use crate::plan::ChildPlan;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// What the restart policy says after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Restart after this delay.
    Backoff(Duration),
    /// Too many quick failures in a row: still restarting, slowly, and reported as such.
    CrashLoop(Duration),
}

impl Verdict {
    pub fn delay(self) -> Duration {
        match self {
            Verdict::Backoff(d) | Verdict::CrashLoop(d) => d,
        }
    }
}

/// Exponential backoff with jitter, reset by a stable run. Pure: time and randomness come in as values.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    initial: Duration,
    max: Duration,
    stable_after: Duration,
    crash_loop_after: u32,
    quick_failures: u32,
}

impl RestartPolicy {
    pub fn new(c: &RestartFile) -> Self {
        RestartPolicy {
            initial: Duration::from_millis(c.initial_backoff_ms),
            max: Duration::from_secs(c.max_backoff_secs),
            stable_after: Duration::from_secs(c.stable_after_secs),
            crash_loop_after: c.crash_loop_after,
            quick_failures: 0,
        }
    }

    /// Decides the next restart after a run of `ran_for`. `jitter` in [0, 1) spreads restarts of many
    /// hosts over ±20% of the delay.
    pub fn on_exit(&mut self, ran_for: Duration, jitter: f64) -> Verdict {
        if ran_for >= self.stable_after {
            self.quick_failures = 0;
        }
        let exp = self.quick_failures.min(20);
        self.quick_failures = self.quick_failures.saturating_add(1);
        let base = self
            .initial
            .saturating_mul(1u32 << exp.min(31))
            .min(self.max);
        let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        let delay = base.mul_f64(factor).min(self.max);
        if self.quick_failures > self.crash_loop_after {
            Verdict::CrashLoop(delay)
        } else {
            Verdict::Backoff(delay)
        }
    }
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

/// Starts the child's process: clean environment, stdin closed, output piped, its own process group, and
/// killed by the kernel if the agent dies (no orphan geth holding the datadir lock).
fn spawn(child: &ChildPlan) -> Result<tokio::process::Child, SpawnError> {
    let mut cmd = tokio::process::Command::new(&child.program);
    cmd.args(&child.args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(child.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    if let Some(cwd) = &child.cwd {
        cmd.current_dir(cwd);
    }
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| SpawnError::Spawn {
        child: child.name.clone(),
        program: child.program.display().to_string(),
        source,
    })
}

/// Sends SIGTERM, waits up to `timeout`, then SIGKILL. Returns how it ended.
async fn stop(
    proc: &mut tokio::process::Child,
    name: &str,
    timeout: Duration,
) -> Option<ExitStatus> {
    let pid = proc.id()?;
    tracing::info!(child = name, pid, "stopping (SIGTERM)");
    let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    match tokio::time::timeout(timeout, proc.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            tracing::warn!(
                child = name,
                pid,
                ?timeout,
                "did not stop in time; sending SIGKILL"
            );
            let _ = proc.start_kill();
            proc.wait().await.ok()
        }
    }
}

/// Resolves once shutdown has been asked for (or its sender is gone).
async fn stopping(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Runs one child until `shutdown` turns true: start, pump output, restart with backoff on exit.
pub async fn supervise(
    child: ChildPlan,
    policy: RestartFile,
    stop_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
    started: tokio::sync::oneshot::Sender<()>,
    sink: logs::LineSink,
) -> Result<(), SpawnError> {
    let mut policy = RestartPolicy::new(&policy);
    let mut started = Some(started);
    loop {
        let mut proc = spawn(&child)?;
        let began = Instant::now();
        let pid = proc.id().unwrap_or_default();
        tracing::info!(child = %child.name, pid, "started");
        if let Some(tx) = started.take() {
            let _ = tx.send(());
        }
        let pumps = [
            proc.stdout
                .take()
                .map(|o| tokio::spawn(sink.clone().pump(o))),
            proc.stderr
                .take()
                .map(|e| tokio::spawn(sink.clone().pump(e))),
        ];
        let status = tokio::select! {
            status = proc.wait() => status.ok(),
            _ = stopping(&mut shutdown) => {
                let status = stop(&mut proc, &child.name, stop_timeout).await;
                tracing::info!(child = %child.name, pid, how = %status.as_ref().map(describe).unwrap_or_default(), "stopped");
                for p in pumps.into_iter().flatten() {
                    let _ = p.await;
                }
                break;
            }
        };
        for p in pumps.into_iter().flatten() {
            let _ = p.await;
        }
        let ran_for = began.elapsed();
        let verdict = policy.on_exit(ran_for, rand::random::<f64>());
        let how = status
            .as_ref()
            .map(describe)
            .unwrap_or_else(|| "vanished".into());
        match verdict {
            Verdict::Backoff(d) => {
                tracing::warn!(child = %child.name, pid, %how, ?ran_for, restart_in = ?d, "child exited; restarting")
            }
            Verdict::CrashLoop(d) => {
                tracing::error!(child = %child.name, pid, %how, ?ran_for, restart_in = ?d, "child is crash-looping; still restarting")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(verdict.delay()) => {}
            _ = stopping(&mut shutdown) => break,
        }
    }
    drop(sink);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy::new(&RestartFile {
            initial_backoff_ms: 1000,
            max_backoff_secs: 60,
            stable_after_secs: 60,
            crash_loop_after: 5,
        })
    }

    const QUICK: Duration = Duration::from_secs(1);

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut p = policy();
        let delays: Vec<u64> = (0..9)
            .map(|_| p.on_exit(QUICK, 0.5).delay().as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn crash_loop_is_reported_after_n_quick_failures_but_restarts_continue() {
        let mut p = policy();
        let verdicts: Vec<Verdict> = (0..7).map(|_| p.on_exit(QUICK, 0.5)).collect();
        assert!(verdicts[..5]
            .iter()
            .all(|v| matches!(v, Verdict::Backoff(_))));
        assert!(matches!(verdicts[5], Verdict::CrashLoop(d) if d == Duration::from_secs(32)));
        assert!(matches!(verdicts[6], Verdict::CrashLoop(d) if d == Duration::from_secs(60)));
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let mut p = policy();
        for _ in 0..6 {
            p.on_exit(QUICK, 0.5);
        }
        assert_eq!(
            p.on_exit(Duration::from_secs(61), 0.5),
            Verdict::Backoff(Duration::from_secs(1))
        );
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_under_the_cap() {
        let mut lo = policy();
        let mut hi = policy();
        assert_eq!(lo.on_exit(QUICK, 0.0).delay(), Duration::from_millis(800));
        assert_eq!(hi.on_exit(QUICK, 0.999_999).delay().as_millis(), 1199);
        let mut p = policy();
        for _ in 0..10 {
            assert!(p.on_exit(QUICK, 1.0).delay() <= Duration::from_secs(60));
        }
    }
}

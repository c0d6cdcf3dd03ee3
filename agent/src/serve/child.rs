//! Supervision: start each child with its planned command line, feed its output to the log pipeline,
//! restart it with backoff when it exits, stop it gracefully on shutdown.

use super::health::{self, Health};
use crate::config::{HealthSettings, RestartSettings};
use crate::logs;
use crate::plan::{ChildPlan, Probe};
use crate::status::model::{ChildStatus, State};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
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
    pub fn new(c: &RestartSettings) -> Self {
        RestartPolicy {
            initial: c.initial_backoff,
            max: c.max_backoff,
            stable_after: c.stable_after,
            crash_loop_after: c.crash_loop_after,
            quick_failures: 0,
        }
    }

    /// Decides the next restart after a run of `ran_for`. `jitter` in [0, 1) spreads restarts of many
    /// hosts over ±20% of the delay.
    pub fn on_exit(&mut self, ran_for: Duration, jitter: f64) -> Verdict {
        self.next(ran_for >= self.stable_after, jitter)
    }

    /// Decides the restart after failed health checks. However long the run, only a healthy stretch of
    /// `stable_after` resets the backoff: consecutive restarts that did not help escalate, towards
    /// crash-loop, like quick exits.
    pub fn on_unhealthy(&mut self, healthy_for: Duration, jitter: f64) -> Verdict {
        self.next(healthy_for >= self.stable_after, jitter)
    }

    fn next(&mut self, stable: bool, jitter: f64) -> Verdict {
        if stable {
            self.quick_failures = 0;
        }
        let base = crate::backoff::doubling(self.initial, self.max, self.quick_failures.min(20));
        self.quick_failures = self.quick_failures.saturating_add(1);
        let delay = crate::backoff::jittered(base, jitter).min(self.max);
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
    let parent = nix::unistd::getpid();
    // SAFETY: prctl and getppid are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The agent may have died between fork and prctl: then nobody would kill us later.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other(
                    "node-agent exited while starting this child",
                ));
            }
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
            // The whole process group: nothing the child started may outlive it.
            let _ = signal::killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = proc.start_kill();
            proc.wait().await.ok()
        }
    }
}

/// How long output may stay open after the child is gone before what holds it open is killed.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Waits for the child's output pumps to reach end of file. A process the child started may hold the
/// pipes open after the child is gone; then, after [`DRAIN_LIMIT`], the rest of the child's process group
/// is killed (nothing the child started may outlive it), and a pump still open after that (a process that
/// left the group) is abandoned: the supervisor never hangs on a child's leftovers.
async fn drain(mut pumps: Vec<tokio::task::JoinHandle<()>>, pgid: Option<u32>, name: &str) {
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
        let _ = signal::killpg(Pid::from_raw(g as i32), Signal::SIGKILL);
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

/// Resolves once shutdown has been asked for (or its sender is gone).
async fn stopping(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Requests to a running supervisor.
#[derive(Debug, Clone)]
pub enum Control {
    /// Restart gracefully now (e.g. its secrets changed), without charging the backoff.
    Restart(String),
    /// Kill it at once (SIGKILL to its process group, no grace) and start nothing until `Unfence`: the
    /// sealer lost its lease, and another host may seal with the same key any moment.
    Fence(String),
    /// The reason to fence is gone: start again.
    Unfence,
}

/// Health settings for the monitor.
#[derive(Debug, Clone)]
pub struct HealthRules {
    pub interval: Duration,
    pub warmup: Duration,
    pub grace: Duration,
}

impl HealthRules {
    pub fn new(h: &HealthSettings) -> Self {
        HealthRules {
            interval: h.interval,
            warmup: h.warmup,
            grace: h.grace,
        }
    }
}

/// Why the run phase of one process ended.
enum Ended {
    Exited(Option<ExitStatus>),
    /// Why, and the longest healthy stretch of the run.
    Unhealthy(String, Duration),
    Asked(String),
    Fenced(String),
    Shutdown,
}

/// While fenced: waits (beating the heart, so the watchdog knows this task is alive) until `Unfence`.
/// `false` when shutdown came first.
async fn wait_unfenced(
    name: &str,
    mut reason: String,
    control: &mut mpsc::UnboundedReceiver<Control>,
    shutdown: &mut watch::Receiver<bool>,
    status: &watch::Sender<ChildStatus>,
) -> bool {
    loop {
        status.send_modify(|s| {
            s.state = State::Fenced;
            s.pid = None;
            s.reason = Some(reason.clone());
            s.heartbeat = Instant::now();
        });
        tokio::select! {
            c = control.recv() => match c {
                Some(Control::Unfence) => {
                    tracing::info!(child = name, "fence lifted: starting");
                    status.send_modify(|s| s.reason = None);
                    return true;
                }
                Some(Control::Fence(why)) => reason = why,
                // A restart asked for while fenced: the next start is one anyway.
                Some(Control::Restart(_)) => {}
                None => return false,
            },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopping(shutdown) => return false,
        }
    }
}

/// How long geth's head number has not moved, from the agent's own samples.
struct HeadTrack {
    head: Option<u64>,
    since: Instant,
}

/// Watches a running child: readiness first, then health every interval. Returns only when the child has
/// been unhealthy, in a way a restart can fix, for longer than the grace period (or never became ready
/// within warm-up + grace), with the longest healthy stretch of the run. Conditions a restart cannot fix
/// are shown in status and logged when they start and end.
async fn monitor(
    child: &ChildPlan,
    rules: &HealthRules,
    status: &watch::Sender<ChildStatus>,
) -> (String, Duration) {
    let began = Instant::now();
    let mut unhealthy_since: Option<Instant> = None;
    let mut healthy_since: Option<Instant> = None;
    let mut longest_healthy = Duration::ZERO;
    let mut external = false;
    let mut track = HeadTrack {
        head: None,
        since: Instant::now(),
    };
    let mut ready = false;
    loop {
        let verdict = if !ready {
            match health::ready(&child.probe).await {
                Ok(()) => {
                    ready = true;
                    tracing::info!(child = %child.name, after = ?began.elapsed(), "serving");
                    status.send_modify(|s| {
                        s.state = State::Ready;
                        s.ever_ready = true;
                        s.reason = None;
                        s.heartbeat = Instant::now();
                    });
                    continue;
                }
                Err(why) if began.elapsed() < rules.warmup => {
                    status.send_modify(|s| s.heartbeat = Instant::now());
                    tracing::debug!(child = %child.name, %why, "not serving yet");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                Err(why) => Health::Unhealthy(format!(
                    "not serving after {}s: {why}",
                    began.elapsed().as_secs()
                )),
            }
        } else {
            check(child, rules, began.elapsed(), status, &mut track).await
        };
        match &verdict {
            Health::Healthy => {
                let since = *healthy_since.get_or_insert_with(Instant::now);
                longest_healthy = longest_healthy.max(since.elapsed());
            }
            _ => healthy_since = None,
        }
        if external && !matches!(verdict, Health::External(_)) {
            external = false;
            tracing::info!(child = %child.name, "external condition cleared");
        }
        match verdict {
            Health::Healthy | Health::Warming(_) => {
                if unhealthy_since.take().is_some() {
                    tracing::info!(child = %child.name, "healthy again");
                }
                let note = match verdict {
                    Health::Warming(w) => Some(format!("warming up: {w}")),
                    _ => None,
                };
                status.send_modify(|s| {
                    s.state = State::Ready;
                    s.reason = note;
                    s.heartbeat = Instant::now();
                });
            }
            Health::External(why) => {
                unhealthy_since = None;
                if !external {
                    external = true;
                    tracing::warn!(child = %child.name, %why, "a condition restarting cannot fix; reported, not restarted");
                }
                status.send_modify(|s| {
                    s.state = State::Ready;
                    s.reason = Some(format!("{why} (external: not restarted)"));
                    s.heartbeat = Instant::now();
                });
            }
            Health::Unhealthy(why) => {
                let since = *unhealthy_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= rules.grace {
                    return (why, longest_healthy);
                }
                tracing::warn!(child = %child.name, %why, grace_left = ?rules.grace.saturating_sub(since.elapsed()), "unhealthy");
                status.send_modify(|s| {
                    s.state = State::Unhealthy;
                    s.reason = Some(why);
                    s.heartbeat = Instant::now();
                });
            }
        }
        tokio::time::sleep(rules.interval).await;
    }
}

/// One health round for a serving child.
async fn check(
    child: &ChildPlan,
    rules: &HealthRules,
    since_start: Duration,
    status: &watch::Sender<ChildStatus>,
    track: &mut HeadTrack,
) -> Health {
    match &child.probe {
        Probe::Geth {
            ipc,
            signer,
            max_head_age_secs,
        } => match health::sample_geth(ipc, signer.as_deref(), crate::clock::now_unix()).await {
            Ok(sample) => {
                if track.head != Some(sample.head) {
                    *track = HeadTrack {
                        head: Some(sample.head),
                        since: Instant::now(),
                    };
                }
                let verdict = health::assess_geth(
                    &sample,
                    signer.is_some(),
                    Duration::from_secs(*max_head_age_secs),
                    since_start,
                    rules.warmup,
                    track.since.elapsed(),
                );
                status.send_modify(|s| s.chain = Some(sample));
                verdict
            }
            // No answer on the IPC socket: a wedged geth, which a restart does fix.
            Err(e) => Health::Unhealthy(e.to_string()),
        },
        probe => match health::ready(probe).await {
            Ok(()) => Health::Healthy,
            Err(why) => Health::Unhealthy(why),
        },
    }
}

/// Runs one child until `shutdown` turns true: start, pump output, watch readiness and health, restart
/// with backoff on exit or after failed health checks, restart on request.
#[allow(clippy::too_many_arguments)] // each is one separate concern of the task; a struct would only rename them
pub async fn supervise(
    child: ChildPlan,
    policy: RestartSettings,
    rules: HealthRules,
    stop_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut control: mpsc::UnboundedReceiver<Control>,
    status: watch::Sender<ChildStatus>,
    sink: logs::LineSink,
) -> Result<(), SpawnError> {
    let mut policy = RestartPolicy::new(&policy);
    let mut fenced: Option<String> = None;
    loop {
        if let Some(reason) = fenced.take() {
            if !wait_unfenced(&child.name, reason, &mut control, &mut shutdown, &status).await {
                break;
            }
        }
        let mut proc = spawn(&child)?;
        let began = Instant::now();
        let pid = proc.id();
        tracing::info!(child = %child.name, pid, "started");
        status.send_modify(|s| {
            s.state = State::Starting;
            s.pid = pid;
            s.started_at = Some(crate::clock::now_unix());
            s.heartbeat = Instant::now();
        });
        let pumps = [
            proc.stdout
                .take()
                .map(|o| tokio::spawn(sink.clone().pump(o))),
            proc.stderr
                .take()
                .map(|e| tokio::spawn(sink.clone().pump(e))),
        ];
        let health = monitor(&child, &rules, &status);
        tokio::pin!(health);
        // Nobody can ask any more once every sender is gone: then only the other arms end this run.
        let mut asking = true;
        let ended = loop {
            break tokio::select! {
                exit = proc.wait() => Ended::Exited(exit.ok()),
                (why, healthy) = &mut health => Ended::Unhealthy(why, healthy),
                c = control.recv(), if asking => match c {
                    Some(Control::Restart(why)) => Ended::Asked(why),
                    Some(Control::Fence(why)) => Ended::Fenced(why),
                    Some(Control::Unfence) => continue,
                    None => {
                        asking = false;
                        continue;
                    }
                },
                _ = stopping(&mut shutdown) => Ended::Shutdown,
            };
        };
        let exit = match &ended {
            Ended::Exited(exit) => *exit,
            Ended::Fenced(why) => {
                // No grace: every second it runs it may seal beside the lease's new holder.
                let pid = proc.id();
                if let Some(p) = pid {
                    let _ = signal::killpg(Pid::from_raw(p as i32), Signal::SIGKILL);
                }
                let _ = proc.start_kill();
                let exit = proc.wait().await.ok();
                tracing::error!(child = %child.name, ?pid, reason = %why, "killed (SIGKILL): fenced");
                exit
            }
            _ => {
                status.send_modify(|s| s.state = State::Stopping);
                let exit = stop(&mut proc, &child.name, stop_timeout).await;
                tracing::info!(child = %child.name, pid, how = %exit.as_ref().map(describe).unwrap_or_default(), "stopped");
                exit
            }
        };
        drain(pumps.into_iter().flatten().collect(), pid, &child.name).await;
        let how = exit
            .as_ref()
            .map(describe)
            .unwrap_or_else(|| "vanished".into());
        status.send_modify(|s| {
            s.pid = None;
            s.last_exit = Some(how.clone());
            s.chain = None;
        });
        let delay = match ended {
            Ended::Shutdown => break,
            Ended::Fenced(why) => {
                fenced = Some(why);
                continue;
            }
            Ended::Asked(why) => {
                tracing::info!(child = %child.name, %why, "restarting on request");
                status.send_modify(|s| s.restarts += 1);
                continue;
            }
            Ended::Unhealthy(why, healthy_for) => {
                let verdict = policy.on_unhealthy(healthy_for, rand::random::<f64>());
                tracing::error!(child = %child.name, %why, restart_in = ?verdict.delay(), "unhealthy past the grace period; restarted");
                if let Verdict::CrashLoop(d) = verdict {
                    tracing::error!(child = %child.name, restart_in = ?d, "child is crash-looping; still restarting");
                }
                status.send_modify(|s| {
                    s.unhealthy_restarts += 1;
                    s.reason = Some(why);
                });
                verdict
            }
            Ended::Exited(_) => {
                let ran_for = began.elapsed();
                let verdict = policy.on_exit(ran_for, rand::random::<f64>());
                match verdict {
                    Verdict::Backoff(d) => {
                        tracing::warn!(child = %child.name, pid, %how, ?ran_for, restart_in = ?d, "child exited; restarting")
                    }
                    Verdict::CrashLoop(d) => {
                        tracing::error!(child = %child.name, pid, %how, ?ran_for, restart_in = ?d, "child is crash-looping; still restarting")
                    }
                }
                status.send_modify(|s| {
                    s.restarts += 1;
                    s.reason = Some(how.clone());
                });
                verdict
            }
        };
        status.send_modify(|s| {
            s.state = match delay {
                Verdict::Backoff(_) => State::BackingOff,
                Verdict::CrashLoop(_) => State::CrashLoop,
            };
        });
        // Back off, beating the heart so the watchdog knows this task is alive.
        let until = Instant::now() + delay.delay();
        let shut = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until.min(Instant::now() + Duration::from_secs(1))) => {
                    status.send_modify(|s| s.heartbeat = Instant::now());
                    if Instant::now() >= until { break false; }
                }
                _ = stopping(&mut shutdown) => break true,
            }
        };
        if shut {
            break;
        }
    }
    status.send_modify(|s| {
        s.state = State::Stopped;
        s.pid = None;
    });
    drop(sink);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy::new(&RestartSettings {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            stable_after: Duration::from_secs(60),
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

    /// Ten minutes of a child that dies 20 ms after each start, in virtual time, with the shipped
    /// defaults and random jitter: the restarts are bounded by the backoff, never a tight loop, and the
    /// loop is reported as one.
    #[test]
    fn a_ten_minute_crash_loop_in_virtual_time_restarts_a_bounded_number_of_times() {
        let conf = RestartSettings::default();
        let (initial, max) = (conf.initial_backoff, conf.max_backoff);
        for seed in [1u64, 0x9e37_79b9_7f4a_7c15, u64::MAX / 3] {
            let mut rng = seed;
            let mut jitter = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng >> 11) as f64 / (1u64 << 53) as f64
            };
            let mut p = RestartPolicy::new(&conf);
            let (run, horizon) = (Duration::from_millis(20), Duration::from_secs(600));
            let (mut clock, mut delays) = (Duration::ZERO, Vec::new());
            while clock < horizon {
                clock += run;
                let v = p.on_exit(run, jitter());
                if delays.len() >= conf.crash_loop_after as usize {
                    assert!(matches!(v, Verdict::CrashLoop(_)), "{v:?}");
                }
                delays.push(v.delay());
                clock += v.delay();
            }
            let shortest = delays.iter().min().copied().unwrap_or_default();
            assert!(shortest >= initial.mul_f64(0.8), "{shortest:?}");
            // The worst case: every delay at its lowest jitter. Doubling from `initial` until the cap,
            // then one restart per 0.8 × cap.
            let (mut ramp, mut steps, mut d) = (Duration::ZERO, 0u32, initial);
            while d < max {
                ramp += d.mul_f64(0.8) + run;
                steps += 1;
                d *= 2;
            }
            let per = max.mul_f64(0.8) + run;
            let bound = steps
                + (horizon.saturating_sub(ramp).as_secs_f64() / per.as_secs_f64()).ceil() as u32;
            assert!(
                delays.len() as u32 <= bound,
                "{} restarts in 10 minutes (bound {bound}): {delays:?}",
                delays.len()
            );
            assert!(delays.len() >= 10, "{delays:?}");
        }
    }

    #[test]
    fn unhealthy_restarts_escalate_into_crash_loop_however_long_each_run_unless_it_was_healthy_long_enough(
    ) {
        let mut p = policy();
        let delays: Vec<Verdict> = (0..7)
            .map(|_| p.on_unhealthy(Duration::from_secs(5), 0.5))
            .collect();
        let secs: Vec<u64> = delays.iter().map(|v| v.delay().as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60]);
        assert!(matches!(delays[5], Verdict::CrashLoop(_)));
        assert_eq!(
            p.on_unhealthy(Duration::from_secs(60), 0.5),
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

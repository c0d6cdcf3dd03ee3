//! Supervision: start each child with its planned command line, feed its output to the log pipeline,
//! watch its readiness and health, restart it with backoff when it exits or stays unhealthy, fence it
//! while the sealer's lease is not held, stop it gracefully on shutdown.
//!
//! What to do is decided in one place, the state machine of `state` (with the restart policy and health
//! rules of `policy`); this actor only does it (`spawn`: start, stop, kill, drain; probes; waits; logs)
//! and feeds back what happened, publishing what status shows after each step.

mod policy;
mod spawn;
mod state;
#[cfg(test)]
mod tests;

pub use policy::HealthRules;
pub use spawn::SpawnError;

use super::ethstats;
use super::health::{self, Health};
use crate::config::RestartSettings;
use crate::logs;
use crate::plan::{ChildPlan, EthstatsReport, Probe};
use crate::status::model::{ChildLife, ChildStatus, EthstatsSample, GethSample};
use policy::{RestartPolicy, Verdict};
use spawn::Proc;
use state::{Action, Event, Life, Note, Phase};
use std::future::Future;
use std::pin::Pin;
use std::process::ExitStatus;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

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

/// Runs one child until `shutdown` turns true: start, pump output, watch readiness and health, restart
/// with backoff on exit or after failed health checks, restart on request, fence on request.
#[allow(clippy::too_many_arguments)] // each is one separate concern of the task; a struct would only rename them
pub async fn supervise(
    child: ChildPlan,
    policy: RestartSettings,
    rules: HealthRules,
    stop_timeout: Duration,
    shutdown: watch::Receiver<bool>,
    control: mpsc::UnboundedReceiver<Control>,
    status: watch::Sender<ChildStatus>,
    sink: logs::LineSink,
) -> Result<(), SpawnError> {
    let (mut life, mut actions) = Life::new(RestartPolicy::new(&policy), rules.clone());
    let mut actor = Actor {
        child,
        warmup: rules.warmup,
        stop_timeout,
        shutdown,
        control,
        asking: true,
        status,
        sink,
        proc: None,
        probe: None,
        track: HeadTrack::new(),
        chain: None,
        ethstats: None,
        until: Instant::now(),
    };
    loop {
        actor.publish(&life.shown);
        // At most one action of a step yields the next event (spawning yields `Started`, a stop `Exited`).
        let mut next = None;
        for action in actions {
            if action == Action::Finish {
                return Ok(());
            }
            if let Some(event) = actor.perform(action).await? {
                next = Some(event);
            }
        }
        let event = match next {
            Some(event) => event,
            None => actor.listen(&life.phase).await,
        };
        actions = life.on(event, Instant::now(), rand::random::<f64>());
    }
}

/// What one probe round found, before it is judged.
enum Answer {
    /// Readiness.
    Readiness(Result<(), String>),
    /// A health round of a probe other than geth's.
    Check(Result<(), String>),
    /// A geth sample, when it was asked for, and whether the ethstats dashboard lists the node.
    Geth(
        Result<GethSample, health::ProbeError>,
        Instant,
        Option<EthstatsSample>,
    ),
    /// A health round of the ethstats server: the nodes its dashboard lists.
    Ethstats(EthstatsSample),
}

type Round = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// How long geth's head number has not moved, from the agent's own samples.
struct HeadTrack {
    head: Option<u64>,
    since: Instant,
}

impl HeadTrack {
    fn new() -> HeadTrack {
        HeadTrack {
            head: None,
            since: Instant::now(),
        }
    }
}

/// What woke the actor while it waited for the next event.
enum Woke {
    Exit(Option<ExitStatus>),
    Answer(Answer),
    Request(Option<Control>),
    Tick,
    Shutdown,
}

/// Does what the state machine decides, for one child.
struct Actor {
    child: ChildPlan,
    warmup: Duration,
    stop_timeout: Duration,
    shutdown: watch::Receiver<bool>,
    control: mpsc::UnboundedReceiver<Control>,
    /// Whether anybody can still send requests.
    asking: bool,
    status: watch::Sender<ChildStatus>,
    sink: logs::LineSink,
    /// The running process.
    proc: Option<Proc>,
    /// The running process's next probe round.
    probe: Option<Round>,
    track: HeadTrack,
    /// The last chain sample of the running geth.
    chain: Option<GethSample>,
    /// The last ethstats sample of the running process.
    ethstats: Option<EthstatsSample>,
    /// When the current restart delay ends.
    until: Instant,
}

impl Actor {
    /// Publishes what status shows, with the chain sample and a heartbeat (the watchdog's evidence that
    /// this task is alive).
    fn publish(&self, life: &ChildLife) {
        self.status.send_modify(|s| {
            s.life.clone_from(life);
            s.chain.clone_from(&self.chain);
            s.ethstats.clone_from(&self.ethstats);
            s.heartbeat = Instant::now();
        });
    }

    fn heartbeat(&self) {
        self.status.send_modify(|s| s.heartbeat = Instant::now());
    }

    /// Does one action; the event it yields, if it yields one at once.
    async fn perform(&mut self, action: Action) -> Result<Option<Event>, SpawnError> {
        let name = self.child.name.as_str();
        match action {
            Action::Spawn => {
                let proc = Proc::start(&self.child, &self.sink)?;
                let pid = proc.pid;
                tracing::info!(child = %name, pid, "started");
                self.proc = Some(proc);
                self.track = HeadTrack::new();
                return Ok(Some(Event::Started {
                    pid,
                    at: crate::clock::now_unix(),
                }));
            }
            Action::Probe { after, health } => {
                self.probe = Some(Box::pin(ask(self.child.probe.clone(), after, health)));
            }
            Action::Stop => {
                let Some(mut proc) = self.proc.take() else {
                    return Ok(Some(vanished()));
                };
                let exit = proc.stop(name, self.stop_timeout).await;
                tracing::info!(child = %name, pid = proc.pid, how = %exit.as_ref().map(spawn::describe).unwrap_or_default(), "stopped");
                return Ok(Some(self.gone(proc, exit).await));
            }
            Action::Kill(why) => {
                let Some(mut proc) = self.proc.take() else {
                    return Ok(Some(vanished()));
                };
                let exit = proc.kill().await;
                tracing::error!(child = %name, pid = ?proc.pid, reason = %why, "killed (SIGKILL): fenced");
                return Ok(Some(self.gone(proc, exit).await));
            }
            Action::Wait(delay) => self.until = Instant::now() + delay,
            Action::Log(note) => log(name, note),
            Action::Finish => {}
        }
        Ok(None)
    }

    /// The process is gone: its output is drained, its probes end, and what status shows of it goes.
    async fn gone(&mut self, proc: Proc, exit: Option<ExitStatus>) -> Event {
        self.probe = None;
        let began = proc.began;
        proc.drain(&self.child.name).await;
        self.chain = None;
        self.ethstats = None;
        Event::Exited {
            how: exit
                .as_ref()
                .map(spawn::describe)
                .unwrap_or_else(|| "vanished".into()),
            ran_for: began.elapsed(),
        }
    }

    /// Waits for the next event where the child stands.
    async fn listen(&mut self, phase: &Phase) -> Event {
        loop {
            let woke = match phase {
                Phase::Running(_) => tokio::select! {
                    exit = exited(&mut self.proc) => Woke::Exit(exit),
                    answer = answered(&mut self.probe) => Woke::Answer(answer),
                    c = self.control.recv(), if self.asking => Woke::Request(c),
                    _ = stopping(&mut self.shutdown) => Woke::Shutdown,
                },
                // Beating the heart meanwhile, so the watchdog knows this task is alive.
                Phase::BackingOff => tokio::select! {
                    _ = tokio::time::sleep_until(self.until.min(Instant::now() + Duration::from_secs(1))) => {
                        if Instant::now() >= self.until {
                            return Event::BackoffElapsed;
                        }
                        Woke::Tick
                    }
                    c = self.control.recv(), if self.asking => Woke::Request(c),
                    _ = stopping(&mut self.shutdown) => Woke::Shutdown,
                },
                Phase::Fenced => tokio::select! {
                    c = self.control.recv() => Woke::Request(c),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => Woke::Tick,
                    _ = stopping(&mut self.shutdown) => Woke::Shutdown,
                },
                // Every action leading here yields the event that ends it.
                Phase::Spawning | Phase::Stopping(_) | Phase::Stopped => {
                    stopping(&mut self.shutdown).await;
                    Woke::Shutdown
                }
            };
            return match woke {
                Woke::Exit(exit) => match self.proc.take() {
                    Some(proc) => self.gone(proc, exit).await,
                    None => vanished(),
                },
                Woke::Answer(answer) => {
                    self.probe = None;
                    self.judge(answer)
                }
                Woke::Request(Some(Control::Restart(why))) => Event::Restart(why),
                Woke::Request(Some(Control::Fence(why))) => Event::Fence(why),
                Woke::Request(Some(Control::Unfence)) => Event::Unfence,
                Woke::Request(None) => {
                    self.asking = false;
                    Event::NoMoreRequests
                }
                Woke::Shutdown => Event::Stop,
                Woke::Tick => {
                    self.heartbeat();
                    continue;
                }
            };
        }
    }

    /// Turns a probe's answer into an event; a geth sample is assessed against the head's progress.
    fn judge(&mut self, answer: Answer) -> Event {
        match answer {
            Answer::Readiness(Ok(())) => Event::Serving,
            Answer::Readiness(Err(why)) => Event::NotServing(why),
            Answer::Check(Ok(())) => Event::Health(Health::Healthy),
            Answer::Check(Err(why)) => Event::Health(Health::Unhealthy(why)),
            Answer::Ethstats(sample) => {
                // A dashboard that does not answer is a wedged server, which a restart does fix.
                let verdict = match sample.answered {
                    true => Health::Healthy,
                    false => Health::Unhealthy(sample.error.clone().unwrap_or_default()),
                };
                self.ethstats = Some(sample);
                Event::Health(verdict)
            }
            // No answer on the IPC socket: a wedged geth, which a restart does fix.
            Answer::Geth(Err(e), _, listing) => {
                self.ethstats = listing;
                Event::Health(Health::Unhealthy(e.to_string()))
            }
            Answer::Geth(Ok(sample), asked, listing) => {
                self.ethstats = listing;
                let Probe::Geth {
                    signer,
                    max_head_age_secs,
                    ..
                } = &self.child.probe
                else {
                    return Event::Health(Health::Healthy);
                };
                if self.track.head != Some(sample.head) {
                    self.track = HeadTrack {
                        head: Some(sample.head),
                        since: Instant::now(),
                    };
                }
                let since_start = self
                    .proc
                    .as_ref()
                    .map(|p| asked.saturating_duration_since(p.began))
                    .unwrap_or_default();
                let verdict = health::assess_geth(
                    &sample,
                    signer.is_some(),
                    Duration::from_secs(*max_head_age_secs),
                    since_start,
                    self.warmup,
                    self.track.since.elapsed(),
                );
                self.chain = Some(sample);
                Event::Health(verdict)
            }
        }
    }
}

/// A process that was gone before it could be stopped (never the case: a stop follows a running one).
fn vanished() -> Event {
    Event::Exited {
        how: "vanished".into(),
        ran_for: Duration::ZERO,
    }
}

/// One probe round, after `after`: readiness, or (`health`) a health round.
async fn ask(probe: Probe, after: Duration, health: bool) -> Answer {
    if !after.is_zero() {
        tokio::time::sleep(after).await;
    }
    match (&probe, health) {
        (_, false) => Answer::Readiness(health::ready(&probe).await),
        (
            Probe::Geth {
                ipc,
                signer,
                ethstats,
                ..
            },
            true,
        ) => {
            let asked = Instant::now();
            let (sample, listing) = tokio::join!(
                health::sample_geth(ipc, signer.as_deref(), crate::clock::now_unix()),
                listed(ethstats.as_ref()),
            );
            Answer::Geth(sample, asked, listing)
        }
        (Probe::Ethstats { port }, true) => {
            let server = ethstats::on_loopback(*port);
            Answer::Ethstats(ethstats::sample(
                &server,
                None,
                ethstats::nodes(&server).await,
            ))
        }
        (_, true) => Answer::Check(health::ready(&probe).await),
    }
}

/// Whether the ethstats dashboard geth reports to lists it (`None` when it reports to none).
async fn listed(report: Option<&EthstatsReport>) -> Option<EthstatsSample> {
    let report = report?;
    let answer = ethstats::nodes(&report.server).await;
    Some(ethstats::sample(&report.server, Some(&report.name), answer))
}

/// Resolves when the running process exits (never, when none runs).
async fn exited(proc: &mut Option<Proc>) -> Option<ExitStatus> {
    match proc {
        Some(p) => p.wait().await,
        None => std::future::pending().await,
    }
}

/// Resolves with the next probe round's answer (never, when none is due).
async fn answered(probe: &mut Option<Round>) -> Answer {
    match probe {
        Some(round) => round.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Resolves once shutdown has been asked for (or its sender is gone).
async fn stopping(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Logs a decision of the state machine.
fn log(name: &str, note: Note) {
    match note {
        Note::Serving { after } => tracing::info!(child = %name, ?after, "serving"),
        Note::NotServingYet(why) => tracing::debug!(child = %name, %why, "not serving yet"),
        Note::HealthyAgain => tracing::info!(child = %name, "healthy again"),
        Note::External(why) => {
            tracing::warn!(child = %name, %why, "a condition restarting cannot fix; reported, not restarted")
        }
        Note::ExternalCleared => tracing::info!(child = %name, "external condition cleared"),
        Note::Unhealthy { why, grace_left } => {
            tracing::warn!(child = %name, %why, ?grace_left, "unhealthy")
        }
        Note::Exited {
            pid,
            how,
            ran_for,
            verdict,
        } => match verdict {
            Verdict::Backoff(d) => {
                tracing::warn!(child = %name, pid, %how, ?ran_for, restart_in = ?d, "child exited; restarting")
            }
            Verdict::CrashLoop(d) => {
                tracing::error!(child = %name, pid, %how, ?ran_for, restart_in = ?d, "child is crash-looping; still restarting")
            }
        },
        Note::Recovering { why, verdict } => {
            tracing::error!(child = %name, %why, restart_in = ?verdict.delay(), "unhealthy past the grace period; restarted");
            if let Verdict::CrashLoop(d) = verdict {
                tracing::error!(child = %name, restart_in = ?d, "child is crash-looping; still restarting");
            }
        }
        Note::RestartingOnRequest(why) => {
            tracing::info!(child = %name, %why, "restarting on request")
        }
        Note::FenceLifted => tracing::info!(child = name, "fence lifted: starting"),
    }
}

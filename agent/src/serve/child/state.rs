//! A child's life as a state machine: where it stands (its [`Phase`], and what status shows of it) and
//! what happened (an [`Event`]) decide where it goes and what to do next ([`Action`]s). [`Life::on`] is
//! the one place a state is decided. Pure: time, the jitter of the restart delays and every outcome
//! come in as values; the actor (`super`) does the actions (spawn, probe, stop, kill, wait, log) and
//! feeds back what came of them.

use super::policy::{HealthRules, RestartPolicy, Verdict};
use crate::serve::health::Health;
use crate::status::model::{ChildLife, State};
use std::time::Duration;
use tokio::time::Instant;

/// How soon readiness is asked again while a child is not serving yet, within its warm-up.
const READY_POLL: Duration = Duration::from_millis(250);

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The process was spawned: its pid and the Unix time it started.
    Started { pid: Option<u32>, at: u64 },
    /// Readiness answered: it serves.
    Serving,
    /// Readiness did not answer yet, with why.
    NotServing(String),
    /// One health round of a serving child.
    Health(Health),
    /// The process is gone and its output drained: how it ended, and how long it ran.
    Exited { how: String, ran_for: Duration },
    /// Asked to restart gracefully (its secrets changed), without charging the backoff.
    Restart(String),
    /// Asked to kill it at once and start nothing until [`Event::Unfence`]: the sealer lost its lease.
    Fence(String),
    /// The reason to fence is gone.
    Unfence,
    /// Nobody can ask anything any more.
    NoMoreRequests,
    /// Shutdown: stop the child, then supervising.
    Stop,
    /// The restart delay is over.
    BackoffElapsed,
}

/// What follows once a process being stopped is gone.
#[derive(Debug, Clone, PartialEq)]
pub enum Then {
    Shutdown,
    /// Start again at once, without charging the backoff (asked, with why).
    Restart(String),
    /// Back off, then start again: unhealthy past the grace period (why), after this long healthy at
    /// most.
    Recover {
        why: String,
        healthy_for: Duration,
    },
    /// Start nothing until unfenced (why).
    Fence(String),
}

/// Where the supervisor is with its child.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// A process is to be started.
    Spawning,
    /// A process runs: readiness is watched, then health.
    Running(Run),
    /// A process is being stopped (gracefully, or killed when fenced). The actor reads no request
    /// meanwhile (the stop is bounded): they wait for the next phase.
    Stopping(Then),
    /// Waiting out the restart delay.
    BackingOff,
    /// Not running, and not started until unfenced.
    Fenced,
    /// Done.
    Stopped,
}

/// What the probes have seen of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    began: Instant,
    ready: bool,
    unhealthy_since: Option<Instant>,
    healthy_since: Option<Instant>,
    longest_healthy: Duration,
    /// A condition a restart cannot fix is being reported (logged when it starts and when it ends).
    external: bool,
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a process; [`Event::Started`] follows.
    Spawn,
    /// Probe after `after`: readiness until the child serves, then a health round. [`Event::Serving`],
    /// [`Event::NotServing`] or [`Event::Health`] follows.
    Probe { after: Duration, health: bool },
    /// SIGTERM, SIGKILL after the stop timeout; [`Event::Exited`] follows.
    Stop,
    /// SIGKILL to the process group now, no grace (fenced, why); [`Event::Exited`] follows.
    Kill(String),
    /// Wait this long; [`Event::BackoffElapsed`] follows.
    Wait(Duration),
    /// Say what was decided.
    Log(Note),
    /// Supervising is over.
    Finish,
}

/// Decisions worth a log line.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    Serving {
        after: Duration,
    },
    NotServingYet(String),
    HealthyAgain,
    /// A condition a restart cannot fix began.
    External(String),
    ExternalCleared,
    Unhealthy {
        why: String,
        grace_left: Duration,
    },
    /// The process exited by itself, and the restart it gets.
    Exited {
        pid: Option<u32>,
        how: String,
        ran_for: Duration,
        verdict: Verdict,
    },
    /// Stopped for being unhealthy past the grace period, and the restart it gets.
    Recovering {
        why: String,
        verdict: Verdict,
    },
    RestartingOnRequest(String),
    FenceLifted,
}

/// A supervised child's life.
#[derive(Debug, Clone)]
pub struct Life {
    pub phase: Phase,
    pub shown: ChildLife,
    policy: RestartPolicy,
    rules: HealthRules,
}

impl Life {
    /// A child about to be started, and the first action.
    pub fn new(policy: RestartPolicy, rules: HealthRules) -> (Life, Vec<Action>) {
        let life = Life {
            phase: Phase::Spawning,
            shown: ChildLife::default(),
            policy,
            rules,
        };
        (life, vec![Action::Spawn])
    }

    /// The transition: `event` happened at `now`; `jitter` in [0, 1) spreads a restart delay decided
    /// here. Returns what to do, in order. An event that means nothing where the child stands changes
    /// nothing.
    pub fn on(&mut self, event: Event, now: Instant, jitter: f64) -> Vec<Action> {
        let phase = std::mem::replace(&mut self.phase, Phase::Stopped);
        let (phase, actions) = self.decide(phase, event, now, jitter);
        self.phase = phase;
        // A crash loop lasts through the restarts it backs off between, until the child serves again.
        match self.shown.state {
            State::CrashLoop => self.shown.crash_looping = true,
            State::Ready => self.shown.crash_looping = false,
            _ => {}
        }
        actions
    }

    fn decide(
        &mut self,
        phase: Phase,
        event: Event,
        now: Instant,
        jitter: f64,
    ) -> (Phase, Vec<Action>) {
        use Action as A;
        use Event as E;
        use Phase as P;
        let s = &mut self.shown;
        match (phase, event) {
            (P::Spawning, E::Started { pid, at }) => {
                s.state = State::Starting;
                s.pid = pid;
                s.started_at = Some(at);
                let probe = A::Probe {
                    after: Duration::ZERO,
                    health: false,
                };
                (P::Running(Run::new(now)), vec![probe])
            }
            (P::Running(run), e @ (E::Serving | E::NotServing(_) | E::Health(_))) => {
                self.probed(run, e, now)
            }
            (P::Running(_), E::Exited { how, ran_for }) => {
                let verdict = self.policy.on_exit(ran_for, jitter);
                let pid = s.pid.take();
                s.last_exit = Some(how.clone());
                s.restarts += 1;
                s.reason = Some(how.clone());
                s.state = backing_off(verdict);
                let note = Note::Exited {
                    pid,
                    how,
                    ran_for,
                    verdict,
                };
                (P::BackingOff, vec![A::Log(note), A::Wait(verdict.delay())])
            }
            (P::Running(_), E::Restart(why)) => {
                s.state = State::Stopping;
                (P::Stopping(Then::Restart(why)), vec![A::Stop])
            }
            (P::Running(_), E::Stop) => {
                s.state = State::Stopping;
                (P::Stopping(Then::Shutdown), vec![A::Stop])
            }
            // No grace: every second it runs it may seal beside the lease's new holder. Status shows
            // where it was until it is gone.
            (P::Running(_), E::Fence(why)) => {
                (P::Stopping(Then::Fence(why.clone())), vec![A::Kill(why)])
            }
            (P::Stopping(then), E::Exited { how, .. }) => {
                s.pid = None;
                s.last_exit = Some(how);
                match then {
                    Then::Shutdown => {
                        s.state = State::Stopped;
                        (P::Stopped, vec![A::Finish])
                    }
                    Then::Restart(why) => {
                        s.restarts += 1;
                        (
                            P::Spawning,
                            vec![A::Log(Note::RestartingOnRequest(why)), A::Spawn],
                        )
                    }
                    Then::Recover { why, healthy_for } => {
                        let verdict = self.policy.on_unhealthy(healthy_for, jitter);
                        s.unhealthy_restarts += 1;
                        s.reason = Some(why.clone());
                        s.state = backing_off(verdict);
                        let note = Note::Recovering { why, verdict };
                        (P::BackingOff, vec![A::Log(note), A::Wait(verdict.delay())])
                    }
                    Then::Fence(why) => self.fence(why),
                }
            }
            (P::BackingOff, E::BackoffElapsed) => (P::Spawning, vec![A::Spawn]),
            // Nothing runs: the next start is the restart asked for.
            (phase @ (P::BackingOff | P::Fenced), E::Restart(_)) => (phase, Vec::new()),
            // Not started again when the delay ends, while the lease is not held.
            (P::BackingOff | P::Fenced, E::Fence(why)) => self.fence(why),
            (P::Fenced, E::Unfence) => {
                s.reason = None;
                (P::Spawning, vec![A::Log(Note::FenceLifted), A::Spawn])
            }
            // Fenced with nobody left to lift it: it could never start again.
            (P::BackingOff | P::Fenced, E::Stop) | (P::Fenced, E::NoMoreRequests) => {
                s.state = State::Stopped;
                s.pid = None;
                (P::Stopped, vec![A::Finish])
            }
            (phase, _) => (phase, Vec::new()),
        }
    }

    fn fence(&mut self, why: String) -> (Phase, Vec<Action>) {
        let s = &mut self.shown;
        s.state = State::Fenced;
        s.pid = None;
        s.reason = Some(why);
        (Phase::Fenced, Vec::new())
    }

    /// Judges a probe's answer: serving, not yet, healthy, warming up, wrong in a way a restart cannot
    /// fix (reported, not restarted for), or unhealthy (restarted once that lasts past the grace
    /// period; never serving within warm-up + grace counts as that).
    fn probed(&mut self, mut run: Run, event: Event, now: Instant) -> (Phase, Vec<Action>) {
        use Action as A;
        let (s, rules) = (&mut self.shown, &self.rules);
        let ran = now.saturating_duration_since(run.began);
        let verdict = match event {
            Event::Serving if !run.ready => {
                run.ready = true;
                s.state = State::Ready;
                s.ever_ready = true;
                s.reason = None;
                let next = A::Probe {
                    after: Duration::ZERO,
                    health: true,
                };
                let note = A::Log(Note::Serving { after: ran });
                return (Phase::Running(run), vec![note, next]);
            }
            Event::NotServing(why) if !run.ready && ran < rules.warmup => {
                let next = A::Probe {
                    after: READY_POLL,
                    health: false,
                };
                return (
                    Phase::Running(run),
                    vec![A::Log(Note::NotServingYet(why)), next],
                );
            }
            Event::NotServing(why) if !run.ready => {
                Health::Unhealthy(format!("not serving after {}s: {why}", ran.as_secs()))
            }
            Event::NotServing(why) => Health::Unhealthy(why),
            Event::Health(h) => h,
            _ => Health::Healthy,
        };
        let mut actions = Vec::new();
        match &verdict {
            Health::Healthy => {
                let since = *run.healthy_since.get_or_insert(now);
                run.longest_healthy = run
                    .longest_healthy
                    .max(now.saturating_duration_since(since));
            }
            _ => run.healthy_since = None,
        }
        if run.external && !matches!(verdict, Health::External(_)) {
            run.external = false;
            actions.push(A::Log(Note::ExternalCleared));
        }
        match verdict {
            Health::Healthy | Health::Warming(_) => {
                if run.unhealthy_since.take().is_some() {
                    actions.push(A::Log(Note::HealthyAgain));
                }
                s.state = State::Ready;
                s.reason = match verdict {
                    Health::Warming(w) => Some(format!("warming up: {w}")),
                    _ => None,
                };
            }
            Health::External(why) => {
                run.unhealthy_since = None;
                if !run.external {
                    run.external = true;
                    actions.push(A::Log(Note::External(why.clone())));
                }
                s.state = State::Ready;
                s.reason = Some(format!("{why} (external: not restarted)"));
            }
            Health::Unhealthy(why) => {
                let since = *run.unhealthy_since.get_or_insert(now);
                let unhealthy_for = now.saturating_duration_since(since);
                if unhealthy_for >= rules.grace {
                    s.state = State::Stopping;
                    let then = Then::Recover {
                        why,
                        healthy_for: run.longest_healthy,
                    };
                    return (Phase::Stopping(then), vec![A::Stop]);
                }
                let grace_left = rules.grace.saturating_sub(unhealthy_for);
                actions.push(A::Log(Note::Unhealthy {
                    why: why.clone(),
                    grace_left,
                }));
                s.state = State::Unhealthy;
                s.reason = Some(why);
            }
        }
        actions.push(A::Probe {
            after: rules.interval,
            health: run.ready,
        });
        (Phase::Running(run), actions)
    }
}

impl Run {
    fn new(began: Instant) -> Run {
        Run {
            began,
            ready: false,
            unhealthy_since: None,
            healthy_since: None,
            longest_healthy: Duration::ZERO,
            external: false,
        }
    }
}

/// The state shown while waiting out a restart delay.
fn backing_off(verdict: Verdict) -> State {
    match verdict {
        Verdict::Backoff(_) => State::BackingOff,
        Verdict::CrashLoop(_) => State::CrashLoop,
    }
}

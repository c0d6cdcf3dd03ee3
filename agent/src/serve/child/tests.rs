//! The child's state machine, driven with plain events, times and jitter: what status shows after each
//! step, and what the actor is told to do.

use super::policy::{HealthRules, RestartPolicy, Verdict};
use super::state::{Action, Event, Life, Note, Phase, Then};
use crate::config::RestartSettings;
use crate::serve::health::Health;
use crate::status::model::State;
use std::time::Duration;
use tokio::time::Instant;

const INTERVAL: Duration = Duration::from_secs(10);
const WARMUP: Duration = Duration::from_secs(120);
const GRACE: Duration = Duration::from_secs(60);
const QUICK: Duration = Duration::from_millis(20);

/// A life on the default restart policy (1 s doubling to 60 s, stable after 60 s, crash-loop after 5),
/// with a clock of its own.
struct Rig {
    life: Life,
    t0: Instant,
    now: Duration,
}

impl Rig {
    fn new() -> Rig {
        let rules = HealthRules {
            interval: INTERVAL,
            warmup: WARMUP,
            grace: GRACE,
        };
        let (life, first) = Life::new(RestartPolicy::new(&RestartSettings::default()), rules);
        assert_eq!(first, [Action::Spawn]);
        Rig {
            life,
            t0: Instant::now(),
            now: Duration::ZERO,
        }
    }

    /// A process runs, not serving yet.
    fn starting() -> Rig {
        let mut r = Rig::new();
        r.on(Event::Started {
            pid: Some(41),
            at: 1_700_000_000,
        });
        r
    }

    /// A process serves.
    fn ready() -> Rig {
        let mut r = Rig::starting();
        r.on(Event::Serving);
        r
    }

    fn backing_off() -> Rig {
        let mut r = Rig::starting();
        r.on(exited("exited with code 1", QUICK));
        r
    }

    fn fenced() -> Rig {
        let mut r = Rig::ready();
        r.on(Event::Fence("lease lost".into()));
        r.on(exited("killed by SIGKILL", QUICK));
        r
    }

    fn stopped() -> Rig {
        let mut r = Rig::starting();
        r.on(Event::Stop);
        r.on(exited("exited with code 0", QUICK));
        r
    }

    fn on(&mut self, event: Event) -> Vec<Action> {
        self.life.on(event, self.t0 + self.now, 0.5)
    }

    /// Moves the clock to `secs` after the start.
    fn at(&mut self, secs: u64) -> &mut Rig {
        self.now = Duration::from_secs(secs);
        self
    }

    fn state(&self) -> State {
        self.life.shown.state
    }

    fn reason(&self) -> Option<&str> {
        self.life.shown.reason.as_deref()
    }
}

fn exited(how: &str, ran_for: Duration) -> Event {
    Event::Exited {
        how: how.into(),
        ran_for,
    }
}

/// The actions' kinds, for tables.
fn kinds(actions: &[Action]) -> Vec<&'static str> {
    actions
        .iter()
        .map(|a| match a {
            Action::Spawn => "spawn",
            Action::Probe { .. } => "probe",
            Action::Stop => "stop",
            Action::Kill(_) => "kill",
            Action::Wait(_) => "wait",
            Action::Log(_) => "log",
            Action::Finish => "finish",
        })
        .collect()
}

fn probe(after: Duration, health: bool) -> Action {
    Action::Probe { after, health }
}

#[test]
fn requests_and_shutdown_in_every_phase() {
    use Event as E;
    let fence = || E::Fence("lease lost again".into());
    let restart = || E::Restart("secrets changed".into());
    type Setup = fn() -> Rig;
    #[rustfmt::skip]
    let table: Vec<(&str, Setup, Event, State, Vec<&str>)> = vec![
        ("starting", Rig::starting, restart(), State::Stopping, vec!["stop"]),
        ("starting", Rig::starting, fence(), State::Starting, vec!["kill"]),
        ("starting", Rig::starting, E::Unfence, State::Starting, vec![]),
        ("starting", Rig::starting, E::Stop, State::Stopping, vec!["stop"]),
        ("starting", Rig::starting, E::NoMoreRequests, State::Starting, vec![]),
        ("starting", Rig::starting, E::BackoffElapsed, State::Starting, vec![]),
        ("ready", Rig::ready, restart(), State::Stopping, vec!["stop"]),
        ("ready", Rig::ready, fence(), State::Ready, vec!["kill"]),
        ("ready", Rig::ready, E::Unfence, State::Ready, vec![]),
        ("ready", Rig::ready, E::Stop, State::Stopping, vec!["stop"]),
        ("ready", Rig::ready, E::NoMoreRequests, State::Ready, vec![]),
        ("backing off", Rig::backing_off, restart(), State::BackingOff, vec![]),
        ("backing off", Rig::backing_off, fence(), State::Fenced, vec![]),
        ("backing off", Rig::backing_off, E::Unfence, State::BackingOff, vec![]),
        ("backing off", Rig::backing_off, E::Stop, State::Stopped, vec!["finish"]),
        ("backing off", Rig::backing_off, E::NoMoreRequests, State::BackingOff, vec![]),
        ("backing off", Rig::backing_off, E::BackoffElapsed, State::BackingOff, vec!["spawn"]),
        ("fenced", Rig::fenced, restart(), State::Fenced, vec![]),
        ("fenced", Rig::fenced, fence(), State::Fenced, vec![]),
        ("fenced", Rig::fenced, E::Unfence, State::Fenced, vec!["log", "spawn"]),
        ("fenced", Rig::fenced, E::Stop, State::Stopped, vec!["finish"]),
        ("fenced", Rig::fenced, E::NoMoreRequests, State::Stopped, vec!["finish"]),
        ("fenced", Rig::fenced, E::BackoffElapsed, State::Fenced, vec![]),
        ("stopped", Rig::stopped, restart(), State::Stopped, vec![]),
        ("stopped", Rig::stopped, fence(), State::Stopped, vec![]),
        ("stopped", Rig::stopped, E::Unfence, State::Stopped, vec![]),
        ("stopped", Rig::stopped, E::BackoffElapsed, State::Stopped, vec![]),
    ];
    for (name, setup, event, state, actions) in table {
        let mut r = setup();
        let shown = format!("{name} + {event:?}");
        assert_eq!(kinds(&r.on(event)), actions, "{shown}");
        assert_eq!(r.state(), state, "{shown}");
    }
}

#[test]
fn a_child_is_probed_for_readiness_then_for_health_at_its_interval() {
    let mut r = Rig::new();
    let actions = r.on(Event::Started {
        pid: Some(41),
        at: 1_700_000_000,
    });
    assert_eq!(actions, [probe(Duration::ZERO, false)]);
    let shown = &r.life.shown;
    assert_eq!(
        (shown.pid, shown.started_at),
        (Some(41), Some(1_700_000_000))
    );
    assert_eq!(r.state(), State::Starting);

    let actions = r.at(5).on(Event::NotServing("no IPC socket".into()));
    assert_eq!(kinds(&actions), ["log", "probe"]);
    assert_eq!(actions[1], probe(Duration::from_millis(250), false));
    assert_eq!(r.state(), State::Starting);
    assert!(!r.life.shown.ever_ready);

    let actions = r.at(7).on(Event::Serving);
    assert_eq!(
        actions,
        [
            Action::Log(Note::Serving {
                after: Duration::from_secs(7)
            }),
            probe(Duration::ZERO, true)
        ]
    );
    assert_eq!((r.state(), r.reason()), (State::Ready, None));
    assert!(r.life.shown.ever_ready);

    assert_eq!(
        r.at(8).on(Event::Health(Health::Healthy)),
        [probe(INTERVAL, true)]
    );
}

#[test]
fn warming_and_external_conditions_are_shown_as_ready_and_never_restarted() {
    let mut r = Rig::ready();
    r.at(10)
        .on(Event::Health(Health::Warming("no peers yet".into())));
    assert_eq!(
        (r.state(), r.reason()),
        (State::Ready, Some("warming up: no peers yet"))
    );
    let why = || Event::Health(Health::External("upstream stalled".into()));
    let first = r.at(20).on(why());
    assert_eq!(
        first[0],
        Action::Log(Note::External("upstream stalled".into()))
    );
    // Logged once, however long it lasts; never a restart.
    for t in 1..20 {
        assert_eq!(r.at(20 + t * 10).on(why()), [probe(INTERVAL, true)]);
    }
    assert_eq!(
        (r.state(), r.reason()),
        (
            State::Ready,
            Some("upstream stalled (external: not restarted)")
        )
    );
    let cleared = r.at(300).on(Event::Health(Health::Healthy));
    assert_eq!(
        cleared,
        [Action::Log(Note::ExternalCleared), probe(INTERVAL, true)]
    );
    assert_eq!((r.state(), r.reason()), (State::Ready, None));
}

#[test]
fn unhealthy_within_the_grace_period_is_shown_then_forgiven_when_healthy_again() {
    let mut r = Rig::ready();
    let sick = || Event::Health(Health::Unhealthy("head stuck".into()));
    let actions = r.at(10).on(sick());
    assert_eq!(
        actions[0],
        Action::Log(Note::Unhealthy {
            why: "head stuck".into(),
            grace_left: GRACE
        })
    );
    r.at(60).on(sick());
    assert_eq!(
        (r.state(), r.reason()),
        (State::Unhealthy, Some("head stuck"))
    );
    let actions = r.at(65).on(Event::Health(Health::Healthy));
    assert_eq!(
        actions,
        [Action::Log(Note::HealthyAgain), probe(INTERVAL, true)]
    );
    assert_eq!((r.state(), r.reason()), (State::Ready, None));
    // The grace period starts again from the next unhealthy round.
    r.at(100).on(sick());
    assert_eq!(r.state(), State::Unhealthy);
    assert_eq!(kinds(&r.at(159).on(sick())), ["log", "probe"]);
    assert_eq!(r.at(160).on(sick()), [Action::Stop]);
    assert_eq!(r.state(), State::Stopping);
}

#[test]
fn a_child_never_serving_within_warmup_and_grace_is_restarted_as_unhealthy_with_backoff() {
    let mut r = Rig::starting();
    let not = || Event::NotServing("no IPC socket".into());
    r.at(119).on(not());
    assert_eq!((r.state(), r.reason()), (State::Starting, None));
    let actions = r.at(121).on(not());
    assert_eq!(kinds(&actions), ["log", "probe"]);
    assert_eq!(actions[1], probe(INTERVAL, false));
    assert_eq!(
        (r.state(), r.reason()),
        (
            State::Unhealthy,
            Some("not serving after 121s: no IPC socket")
        )
    );
    assert_eq!(r.at(181).on(not()), [Action::Stop]);
    assert_eq!(
        r.life.phase,
        Phase::Stopping(Then::Recover {
            why: "not serving after 181s: no IPC socket".into(),
            healthy_for: Duration::ZERO
        })
    );
    assert_eq!(r.state(), State::Stopping);
    let actions = r.on(exited("killed by SIGTERM", Duration::from_secs(182)));
    assert_eq!(
        actions,
        [
            Action::Log(Note::Recovering {
                why: "not serving after 181s: no IPC socket".into(),
                verdict: Verdict::Backoff(Duration::from_secs(1))
            }),
            Action::Wait(Duration::from_secs(1))
        ]
    );
    let shown = &r.life.shown;
    assert_eq!(shown.state, State::BackingOff);
    assert_eq!((shown.restarts, shown.unhealthy_restarts), (0, 1));
    assert_eq!(shown.last_exit.as_deref(), Some("killed by SIGTERM"));
    assert_eq!(shown.pid, None);
    assert_eq!(
        shown.reason.as_deref(),
        Some("not serving after 181s: no IPC socket")
    );
}

/// Runs a serving child healthy for `healthy` seconds, then unhealthy past the grace period, and returns
/// the restart delay it gets.
fn unhealthy_run(r: &mut Rig, healthy: u64) -> Duration {
    r.at(0).on(Event::Started {
        pid: Some(7),
        at: 0,
    });
    r.on(Event::Serving);
    for t in (0..=healthy).step_by(10) {
        r.at(t).on(Event::Health(Health::Healthy));
    }
    let sick = || Event::Health(Health::Unhealthy("head stuck".into()));
    r.at(healthy + 1).on(sick());
    assert_eq!(r.at(healthy + 61).on(sick()), [Action::Stop]);
    let actions = r.on(exited(
        "killed by SIGTERM",
        Duration::from_secs(healthy + 62),
    ));
    let Some(Action::Wait(d)) = actions.last() else {
        panic!("{actions:?}")
    };
    assert_eq!(r.on(Event::BackoffElapsed), [Action::Spawn]);
    *d
}

#[test]
fn unhealthy_restarts_escalate_unless_the_run_was_healthy_for_long_enough() {
    let mut r = Rig::new();
    let delays: Vec<u64> = [30, 30, 30, 61, 30]
        .into_iter()
        .map(|healthy| unhealthy_run(&mut r, healthy).as_secs())
        .collect();
    assert_eq!(delays, [1, 2, 4, 1, 2]);
    assert_eq!(r.life.shown.unhealthy_restarts, 5);
}

#[test]
fn a_child_exiting_quickly_is_restarted_with_growing_delays_and_shown_as_crash_looping() {
    let mut r = Rig::new();
    let mut seen = Vec::new();
    for _ in 0..7 {
        r.on(Event::Started {
            pid: Some(9),
            at: 0,
        });
        assert_eq!(r.state(), State::Starting);
        let actions = r.on(exited("exited with code 1", QUICK));
        let Some(Action::Wait(d)) = actions.last() else {
            panic!("{actions:?}")
        };
        seen.push((r.state(), d.as_secs()));
        // The state stays until the next process has started.
        assert_eq!(r.on(Event::BackoffElapsed), [Action::Spawn]);
        assert!(matches!(r.state(), State::BackingOff | State::CrashLoop));
    }
    use State::{BackingOff as B, CrashLoop as C};
    assert_eq!(
        seen,
        [(B, 1), (B, 2), (B, 4), (B, 8), (B, 16), (C, 32), (C, 60)]
    );
    let shown = &r.life.shown;
    assert_eq!((shown.restarts, shown.unhealthy_restarts), (7, 0));
    assert_eq!(shown.reason.as_deref(), Some("exited with code 1"));
    assert_eq!(shown.last_exit.as_deref(), Some("exited with code 1"));
    assert_eq!(shown.pid, None);
    // A stable run resets it.
    r.on(Event::Started {
        pid: Some(9),
        at: 0,
    });
    let actions = r.on(exited("exited with code 0", Duration::from_secs(61)));
    assert_eq!(actions.last(), Some(&Action::Wait(Duration::from_secs(1))));
    assert_eq!(r.state(), State::BackingOff);
}

#[test]
fn a_stop_while_starting_stops_the_process_then_ends() {
    let mut r = Rig::starting();
    assert_eq!(r.on(Event::Stop), [Action::Stop]);
    assert_eq!(r.state(), State::Stopping);
    assert_eq!(r.life.shown.pid, Some(41));
    // Requests wait while it stops.
    assert!(r.on(Event::Restart("secrets changed".into())).is_empty());
    assert_eq!(r.on(exited("exited with code 0", QUICK)), [Action::Finish]);
    let shown = &r.life.shown;
    assert_eq!((shown.state, shown.pid), (State::Stopped, None));
    assert_eq!(shown.last_exit.as_deref(), Some("exited with code 0"));
    assert_eq!(shown.restarts, 0);
}

#[test]
fn a_restart_asked_for_starts_again_at_once_without_charging_the_backoff() {
    let mut r = Rig::ready();
    r.at(30)
        .on(Event::Health(Health::Warming("3 blocks behind".into())));
    assert_eq!(
        r.on(Event::Restart("secrets changed".into())),
        [Action::Stop]
    );
    assert_eq!(r.state(), State::Stopping);
    let actions = r.on(exited("exited with code 0", Duration::from_secs(31)));
    assert_eq!(
        actions,
        [
            Action::Log(Note::RestartingOnRequest("secrets changed".into())),
            Action::Spawn
        ]
    );
    // The reason stays what it was until the child says otherwise.
    assert_eq!(
        (r.state(), r.reason()),
        (State::Stopping, Some("warming up: 3 blocks behind"))
    );
    assert_eq!(r.life.shown.restarts, 1);
    r.on(Event::Started {
        pid: Some(42),
        at: 1,
    });
    assert_eq!(r.state(), State::Starting);
    let actions = r.on(exited("exited with code 1", QUICK));
    assert_eq!(actions.last(), Some(&Action::Wait(Duration::from_secs(1))));
}

#[test]
fn a_fenced_child_is_killed_at_once_and_not_started_until_unfenced() {
    let mut r = Rig::ready();
    assert_eq!(
        r.on(Event::Fence("lease lost".into())),
        [Action::Kill("lease lost".into())]
    );
    // Shown where it was until it is gone.
    assert_eq!(r.state(), State::Ready);
    assert!(r.on(exited("killed by SIGKILL", QUICK)).is_empty());
    let shown = &r.life.shown;
    assert_eq!((shown.state, shown.pid), (State::Fenced, None));
    assert_eq!(shown.reason.as_deref(), Some("lease lost"));
    assert_eq!(shown.last_exit.as_deref(), Some("killed by SIGKILL"));
    assert_eq!((shown.restarts, shown.unhealthy_restarts), (0, 0));
    r.on(Event::Fence("held by i-0other".into()));
    assert_eq!(r.reason(), Some("held by i-0other"));
    assert_eq!(
        r.on(Event::Unfence),
        [Action::Log(Note::FenceLifted), Action::Spawn]
    );
    assert_eq!((r.state(), r.reason()), (State::Fenced, None));
    r.on(Event::Started {
        pid: Some(43),
        at: 2,
    });
    assert_eq!(r.state(), State::Starting);
}

#[test]
fn a_child_fenced_while_backing_off_is_not_started_when_the_delay_ends() {
    let mut r = Rig::backing_off();
    assert!(r.on(Event::Fence("lease lost".into())).is_empty());
    assert_eq!((r.state(), r.reason()), (State::Fenced, Some("lease lost")));
    assert!(r.on(Event::BackoffElapsed).is_empty());
    assert_eq!(r.life.phase, Phase::Fenced);
    assert_eq!(
        r.on(Event::Unfence),
        [Action::Log(Note::FenceLifted), Action::Spawn]
    );
}

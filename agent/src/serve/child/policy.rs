//! The restart policy (exponential backoff with jitter, reset by a stable run, crash-loop after too many
//! quick failures) and the health rules, from the configuration. Pure: time and randomness come in as
//! values.

use crate::config::{HealthSettings, RestartSettings};
use std::time::Duration;

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

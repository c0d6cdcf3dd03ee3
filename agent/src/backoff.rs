//! Waiting between attempts: doubling waits, with jitter where many hosts retry the same service
//! (CloudWatch, a child's restart), or up to a deadline for a service that may answer later (IMDS in
//! early boot, Secrets Manager).

use std::time::Duration;
use tokio::time::Instant;

/// Doubling waits from `first` up to `max`, for as long as the next one still ends within `deadline` of
/// the first attempt.
#[derive(Debug)]
pub struct Backoff {
    start: Instant,
    deadline: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts counting now, at the first attempt.
    pub fn new(first: Duration, max: Duration, deadline: Duration) -> Backoff {
        Backoff {
            start: Instant::now(),
            deadline,
            next: first,
            max,
        }
    }

    /// Time since the first attempt.
    pub fn waited(&self) -> Duration {
        self.start.elapsed()
    }

    /// The wait before the next attempt, or `None` when it would end past the deadline.
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.next_after(self.waited())
    }

    /// [`Backoff::next_delay`] when `waited` has passed since the first attempt. Pure.
    fn next_after(&mut self, waited: Duration) -> Option<Duration> {
        let delay = self.next;
        if waited + delay > self.deadline {
            return None;
        }
        self.next = (delay * 2).min(self.max);
        Some(delay)
    }
}

/// The `attempt`th (from 0) of waits doubling from `first`, capped at `cap`. Pure.
pub fn doubling(first: Duration, cap: Duration, attempt: u32) -> Duration {
    first.saturating_mul(1u32 << attempt.min(31)).min(cap)
}

/// `delay` spread over ±20% by `jitter` in [0, 1), so many hosts do not retry in step. Pure.
pub fn jittered(delay: Duration, jitter: f64) -> Duration {
    delay.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubling_caps_and_jitter_spreads_by_a_fifth() {
        let ms = Duration::from_millis;
        let waits: Vec<u128> = (0..6)
            .map(|n| doubling(ms(200), ms(2000), n).as_millis())
            .collect();
        assert_eq!(waits, [200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(doubling(ms(1), ms(5), u32::MAX), ms(5));
        assert_eq!(jittered(ms(1000), 0.0), ms(800));
        assert_eq!(jittered(ms(1000), 0.5), ms(1000));
        assert_eq!(jittered(ms(1000), 7.0), ms(1200));
    }

    #[test]
    fn waits_double_to_the_cap_and_stop_before_the_deadline() {
        let secs = Duration::from_secs;
        let mut b = Backoff::new(secs(1), secs(4), secs(20));
        let (mut waited, mut waits) = (Duration::ZERO, Vec::new());
        while let Some(d) = b.next_after(waited) {
            waits.push(d.as_secs());
            waited += d;
        }
        // 1+2+4+4+4+4 = 19 s; one more 4 s wait would end at 23 s, past the deadline.
        assert_eq!(waits, [1, 2, 4, 4, 4, 4]);
        // An attempt that itself took long counts too.
        let mut b = Backoff::new(secs(1), secs(4), secs(20));
        assert_eq!(b.next_after(secs(19)), Some(secs(1)));
        assert_eq!(b.next_after(secs(19)), None);
    }
}

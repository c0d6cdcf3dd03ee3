//! Waiting between attempts at a service that may answer later (IMDS in early boot, Secrets Manager):
//! doubling waits, given up once the next wait would end past the deadline.

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

#[cfg(test)]
mod tests {
    use super::*;

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

//! Blocking steps kept off the runtime's thread, with a time limit, one at a time: on a hard NFS mount
//! whose server is silent, a stat, an open or a read blocks for as long as the outage lasts. On the
//! runtime's thread that would stop everything else with it; started anew on every check, it would pile
//! up blocked threads over a long outage.

use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How one call of [`OneAtATime::run`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    Done(T),
    /// The step panicked.
    Failed,
    /// No answer within the limit: the step stays in flight, for this long so far.
    Waiting(Duration),
}

/// Runs blocking steps on tokio's blocking pool, never more than one in flight.
#[derive(Debug)]
pub struct OneAtATime<T> {
    /// A step that has not answered yet, and when it started.
    pending: Option<(JoinHandle<T>, Instant)>,
}

impl<T> Default for OneAtATime<T> {
    fn default() -> Self {
        OneAtATime { pending: None }
    }
}

impl<T: Send + 'static> OneAtATime<T> {
    /// Gives a step at most `limit` to answer. While an earlier step has not answered, that one is waited
    /// for again instead (its answer is the one returned) and `step` is dropped unstarted.
    pub async fn run(
        &mut self,
        limit: Duration,
        step: impl FnOnce() -> T + Send + 'static,
    ) -> Outcome<T> {
        let (mut handle, since) = self
            .pending
            .take()
            .unwrap_or_else(|| (tokio::task::spawn_blocking(step), Instant::now()));
        match tokio::time::timeout(limit, &mut handle).await {
            Ok(Ok(done)) => Outcome::Done(done),
            Ok(Err(_)) => Outcome::Failed,
            Err(_) => {
                self.pending = Some((handle, since));
                Outcome::Waiting(since.elapsed())
            }
        }
    }

    /// Gives up on a step still in flight: the next call starts a new one. (Its thread runs on until the
    /// step returns; what it returns is dropped there.)
    pub fn forget(&mut self) {
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{mpsc, Arc};

    /// For a step that blocks: how long it is given each time.
    const LIMIT: Duration = Duration::from_millis(50);
    /// For a step that answers: long enough on a loaded machine.
    const AMPLE: Duration = Duration::from_secs(20);

    #[tokio::test]
    async fn a_blocked_step_is_waited_for_again_never_started_twice_and_its_answer_is_returned() {
        let started = Arc::new(AtomicU32::new(0));
        let (release, blocked) = mpsc::channel::<()>();
        let blocked = Arc::new(std::sync::Mutex::new(blocked));
        let step = |answer: u32| {
            let (started, blocked) = (started.clone(), blocked.clone());
            move || {
                started.fetch_add(1, Ordering::SeqCst);
                let _ = blocked.lock().unwrap().recv();
                answer
            }
        };
        let mut one = OneAtATime::default();
        assert!(matches!(one.run(LIMIT, step(1)).await, Outcome::Waiting(_)));
        let Outcome::Waiting(waited) = one.run(LIMIT, step(2)).await else {
            panic!("answered while blocked")
        };
        assert!(waited >= LIMIT * 2, "{waited:?}");
        release.send(()).unwrap();
        assert_eq!(one.run(AMPLE, step(3)).await, Outcome::Done(1));
        assert_eq!(started.load(Ordering::SeqCst), 1);
        drop(release);
        assert_eq!(one.run(AMPLE, step(4)).await, Outcome::Done(4));
        assert_eq!(started.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_forgotten_or_failed_step_is_replaced_by_the_next() {
        let mut one = OneAtATime::default();
        let (_hold, blocked) = mpsc::channel::<()>();
        assert!(matches!(
            one.run(LIMIT, move || {
                let _ = blocked.recv();
                0
            })
            .await,
            Outcome::Waiting(_)
        ));
        one.forget();
        assert_eq!(one.run(AMPLE, || 7).await, Outcome::Done(7));
        assert_eq!(
            one.run(AMPLE, || -> u32 { panic!("step failed") }).await,
            Outcome::Failed
        );
        assert_eq!(one.run(AMPLE, || 8).await, Outcome::Done(8));
    }
}

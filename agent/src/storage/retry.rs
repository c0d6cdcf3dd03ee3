//! Retry decisions for mount attempts: what a failure means (from errno or efs-utils' words), how long one
//! attempt may take, and the backoff up to the deadline. Pure.

use nix::errno::Errno;
use std::time::Duration;

/// What one mount attempt's failure means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server has no such directory: create it (once), then mount again.
    Missing,
    /// DNS or the mount target is not ready yet (early boot, a new mount target): retry until the deadline.
    NotReady(String),
    /// Waiting will not help.
    Fatal(String),
}

/// Classifies mount(2)'s error for an NFS mount.
pub fn classify_errno(e: Errno) -> Failure {
    use Errno::*;
    match e {
        ENOENT => Failure::Missing,
        ECONNREFUSED | ETIMEDOUT | EHOSTUNREACH | ENETUNREACH | EHOSTDOWN | ENETDOWN | ECONNRESET
        | EAGAIN | EIO | EINTR => Failure::NotReady(e.desc().to_owned()),
        EPERM => Failure::Fatal(
            "operation not permitted: node-agent must run as root to mount (it drops privileges for its children)"
                .into(),
        ),
        EACCES => Failure::Fatal(
            "access denied by the server: check the file system policy allows this instance role to mount (elasticfilesystem:ClientMount, ClientWrite, ClientRootAccess)"
                .into(),
        ),
        ENODEV => Failure::Fatal(
            "the kernel has no NFS client (filesystem type nfs4 unknown): load the nfsv4 module or use a kernel with NFS"
                .into(),
        ),
        EINVAL => Failure::Fatal(
            "the kernel rejected the mount options: check storage.efs_mount_options".into(),
        ),
        other => Failure::Fatal(other.desc().to_owned()),
    }
}

/// Classifies a failed `mount -t efs` from its output (it reports through text, not errno).
pub fn classify_helper_output(stderr: &str) -> Failure {
    let last = stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("mount -t efs failed without a message")
        .to_owned();
    let lower = stderr.to_ascii_lowercase();
    let fatal = [
        "access denied",
        "permission denied",
        "unknown filesystem type",
        "only root can",
    ];
    if lower.contains("no such file or directory") {
        Failure::Missing
    } else if fatal.iter().any(|w| lower.contains(w)) {
        Failure::Fatal(last)
    } else {
        // efs-utils words DNS and connection failures many ways; they all heal by waiting.
        Failure::NotReady(last)
    }
}

/// The longest one mount attempt may take. An EFS mount answers in well under a second; one that hangs
/// (a mount target that drops packets) is killed and tried again, with a fresh DNS answer.
pub const ATTEMPT_LIMIT: Duration = Duration::from_secs(30);

/// Exponential backoff up to a deadline: 1 s, 2 s, 4 s … at most `max`, the last wait cut to end at the
/// deadline, so one last attempt happens right at it.
#[derive(Debug, Clone)]
pub struct Retry {
    deadline: Duration,
    next: Duration,
    max: Duration,
}

impl Retry {
    pub fn new(deadline: Duration) -> Retry {
        Retry {
            deadline,
            next: Duration::from_secs(1),
            max: Duration::from_secs(10),
        }
    }

    /// How long the attempt starting now may take: [`ATTEMPT_LIMIT`], cut to end at the deadline, but
    /// at least a second so the last attempt can still succeed.
    pub fn attempt_limit(&self, elapsed: Duration) -> Duration {
        let left = self.deadline.saturating_sub(elapsed);
        left.min(ATTEMPT_LIMIT).max(Duration::from_secs(1))
    }

    /// How long to wait before the next attempt, given the time spent so far; `None`: give up.
    pub fn next_delay(&mut self, elapsed: Duration) -> Option<Duration> {
        let left = self
            .deadline
            .checked_sub(elapsed)
            .filter(|d| !d.is_zero())?;
        let d = self.next.min(left);
        self.next = (self.next * 2).min(self.max);
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_that_heal_by_waiting_are_retried_and_the_rest_fail_at_once() {
        assert_eq!(classify_errno(Errno::ENOENT), Failure::Missing);
        for e in [
            Errno::ECONNREFUSED,
            Errno::ETIMEDOUT,
            Errno::EHOSTUNREACH,
            Errno::EIO,
        ] {
            assert!(matches!(classify_errno(e), Failure::NotReady(_)), "{e}");
        }
        for (e, says) in [
            (Errno::EPERM, "root"),
            (Errno::EACCES, "file system policy"),
            (Errno::ENODEV, "NFS client"),
            (Errno::EINVAL, "efs_mount_options"),
        ] {
            match classify_errno(e) {
                Failure::Fatal(m) => assert!(m.contains(says), "{e}: {m}"),
                other => panic!("{e}: {other:?}"),
            }
        }
    }

    #[test]
    fn efs_utils_failures_are_classified_from_their_words() {
        assert_eq!(
            classify_helper_output("mount.nfs4: mounting fs-1:/x failed, reason given by server: No such file or directory\n"),
            Failure::Missing
        );
        assert!(matches!(
            classify_helper_output(
                "mount.nfs4: access denied by server while mounting 127.0.0.1:/"
            ),
            Failure::Fatal(_)
        ));
        assert_eq!(
            classify_helper_output("Failed to resolve \"fs-1.efs.eu-central-1.amazonaws.com\"\n\n"),
            Failure::NotReady("Failed to resolve \"fs-1.efs.eu-central-1.amazonaws.com\"".into())
        );
    }

    #[test]
    fn backoff_doubles_to_ten_seconds_and_ends_exactly_at_the_deadline() {
        let mut r = Retry::new(Duration::from_secs(30));
        let s = Duration::from_secs;
        assert_eq!(r.next_delay(s(0)), Some(s(1)));
        assert_eq!(r.next_delay(s(1)), Some(s(2)));
        assert_eq!(r.next_delay(s(3)), Some(s(4)));
        assert_eq!(r.next_delay(s(7)), Some(s(8)));
        assert_eq!(r.next_delay(s(15)), Some(s(10)));
        assert_eq!(r.next_delay(s(25)), Some(s(5)));
        assert_eq!(r.next_delay(s(30)), None);
        assert_eq!(r.next_delay(s(31)), None);
    }

    #[test]
    fn a_hanging_attempt_is_cut_at_thirty_seconds_or_the_deadline() {
        let r = Retry::new(Duration::from_secs(300));
        let s = Duration::from_secs;
        assert_eq!(r.attempt_limit(s(0)), s(30));
        assert_eq!(r.attempt_limit(s(290)), s(10));
        assert_eq!(r.attempt_limit(s(300)), s(1));
        assert_eq!(r.attempt_limit(s(400)), s(1));
    }
}

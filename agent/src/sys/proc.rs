//! Processes: signals to one process or to its whole group, and a child's tie to the agent's life.

use nix::errno::Errno;
use nix::unistd::Pid;

pub use nix::sys::signal::Signal;

/// A pid as the kernel takes it, refusing 0 and what does not fit: `kill(0, …)` and a negative pid would
/// signal the agent's own group or some other group instead of the one process meant.
fn target(pid: u32) -> nix::Result<Pid> {
    match i32::try_from(pid) {
        Ok(p) if p > 0 => Ok(Pid::from_raw(p)),
        _ => Err(Errno::EINVAL),
    }
}

/// Sends `sig` to the process `pid` (kill(2)).
pub fn signal(pid: u32, sig: Signal) -> nix::Result<()> {
    nix::sys::signal::kill(target(pid)?, sig)
}

/// Sends `sig` to every process in the group `pgid` (killpg(2)): a child started in its own group
/// (`process_group(0)`) and whatever it started.
pub fn signal_group(pgid: u32, sig: Signal) -> nix::Result<()> {
    nix::sys::signal::killpg(target(pgid)?, sig)
}

/// Makes the kernel kill the command's process (SIGKILL) when the agent dies, however it dies: no orphan
/// (a geth holding the datadir lock) outlives the agent. If the agent is already gone by the time the
/// child runs its setup, the child refuses to start instead.
pub fn die_with_agent(cmd: &mut tokio::process::Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: between fork and exec the hook only calls prctl(2) and getppid(2), both async-signal-safe,
    // allocates nothing on success and touches no memory of the parent.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_zero_and_pids_beyond_the_kernels_range_are_refused_not_sent_to_a_group() {
        assert_eq!(signal(0, Signal::SIGTERM), Err(Errno::EINVAL));
        assert_eq!(signal_group(0, Signal::SIGKILL), Err(Errno::EINVAL));
        assert_eq!(signal(u32::MAX, Signal::SIGKILL), Err(Errno::EINVAL));
        assert_eq!(signal_group(1 << 31, Signal::SIGKILL), Err(Errno::EINVAL));
    }

    #[tokio::test]
    async fn a_group_signal_reaches_the_child_started_in_its_own_group() {
        let mut cmd = tokio::process::Command::new("sleep");
        cmd.arg("30").process_group(0).kill_on_drop(true);
        die_with_agent(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let pid = child.id().unwrap();
        signal_group(pid, Signal::SIGKILL).unwrap();
        let status = child.wait().await.unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));
    }
}

//! The one area that calls the system directly: every raw syscall and every `unsafe` of the crate lives
//! here, behind small safe functions. This file: mounts (mount, umount, the mount command), space
//! (fallocate, statvfs), users (/etc/passwd, the uid/gid drop, no_new_privs) and the host name. Beside it:
//! `safefs` (root's descriptor-based file primitives), `proc` (signals, process groups, a child's tie to
//! the agent), `lock` (flock) and `blocking` (blocking steps off the runtime's thread).

pub mod blocking;
pub mod lock;
pub mod proc;
pub mod replace;
pub mod safefs;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::unistd::{Gid, Uid};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct SysError {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: nix::Error,
}

/// Mounts a small private tmpfs at `target` (mode 0700, no devices, no setuid, no exec, no swap where the
/// kernel allows it); errors name `shown` (`target` may be a descriptor's /proc path).
pub fn mount_private_tmpfs(target: &Path, shown: &Path) -> Result<(), SysError> {
    let path = target;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let tmpfs = |options: &str| {
        mount(
            Some("node-agent-secrets"),
            path,
            Some("tmpfs"),
            flags,
            Some(options),
        )
    };
    // noswap (Linux 6.4+) keeps the secrets' pages off any swap device; older kernels refuse the option.
    tmpfs("mode=0700,size=1m,noswap")
        .or_else(|_| tmpfs("mode=0700,size=1m"))
        .map_err(|source| SysError {
            what: "cannot mount tmpfs on",
            path: shown.to_owned(),
            source,
        })
}

/// How a mount attempt made in a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Mounted,
    Failed(Errno),
    /// No answer within the limit: the attempt was killed.
    TimedOut,
}

/// Mounts an NFSv4 export for data only (nosuid, nodev, noexec) with an NFS option string, which must
/// carry `addr=` (the kernel resolves no names).
///
/// The call is made in a child process, killed after `limit`: for a hard mount whose server does not
/// answer, the kernel's NFS client retries inside mount(2) for as long as it takes, and only SIGKILL
/// interrupts it. The mount itself is visible here (same mount namespace).
pub fn mount_nfs(
    source: &str,
    target: &Path,
    options: &str,
    limit: Duration,
) -> Result<Attempt, SysError> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    let err = |what: &'static str| {
        let path = target.to_owned();
        move |source| SysError { what, path, source }
    };
    let c = |b: &[u8]| {
        CString::new(b).map_err(|_| err("NUL byte in mount arguments for")(Errno::EINVAL))
    };
    // Everything the child needs is allocated before the fork.
    let (src, tgt, fstype, data) = (
        c(source.as_bytes())?,
        c(target.as_os_str().as_bytes())?,
        c(b"nfs4")?,
        c(options.as_bytes())?,
    );
    let flags = (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC).bits();
    // SAFETY: the child calls only mount(2) and _exit(2), both async-signal-safe, on memory prepared
    // before the fork; it touches no lock another thread could hold.
    let pid = match unsafe { fork() }.map_err(err("cannot fork to mount"))? {
        ForkResult::Child => unsafe {
            let r = nix::libc::mount(
                src.as_ptr(),
                tgt.as_ptr(),
                fstype.as_ptr(),
                flags,
                data.as_ptr().cast(),
            );
            let code = if r == 0 {
                0
            } else {
                Errno::last_raw().clamp(1, 255)
            };
            nix::libc::_exit(code)
        },
        ForkResult::Parent { child } => child,
    };
    let start = Instant::now();
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG))
            .map_err(err("cannot wait for the mount of"))?
        {
            WaitStatus::Exited(_, 0) => return Ok(Attempt::Mounted),
            WaitStatus::Exited(_, code) => return Ok(Attempt::Failed(Errno::from_raw(code))),
            WaitStatus::StillAlive if start.elapsed() < limit => {
                std::thread::sleep(Duration::from_millis(20))
            }
            WaitStatus::StillAlive => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = waitpid(pid, None);
                return Ok(Attempt::TimedOut);
            }
            // Killed by someone else, or stopped: treat as no answer.
            _ => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = waitpid(pid, None);
                return Ok(Attempt::TimedOut);
            }
        }
    }
}

/// Unmounts `target` (a link there is refused, not followed); when it is busy, detaches it (it goes away
/// once the last user closes it).
pub fn umount(target: &Path) -> Result<(), SysError> {
    use nix::mount::{umount2, MntFlags};
    umount2(target, MntFlags::UMOUNT_NOFOLLOW)
        .or_else(|e| match e {
            nix::Error::EBUSY => umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW),
            e => Err(e),
        })
        .map_err(|source| SysError {
            what: "cannot unmount",
            path: target.to_owned(),
            source,
        })
}

/// Runs `mount ARGS` (amazon-efs-utils' `mount -t efs`) in its own process group, stdin closed, killing
/// the whole group (the helper and the mount.nfs4 it starts) after `limit`. `None`: timed out.
pub fn run_mount_command(args: &[String], limit: Duration) -> std::io::Result<Option<Output>> {
    use std::io::Read as _;
    use std::os::unix::process::CommandExt as _;
    let mut child = std::process::Command::new("mount")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() >= limit {
            let _ = proc::signal_group(child.id(), proc::Signal::SIGKILL);
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = Vec::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_end(&mut stderr)?;
    }
    Ok(Some(Output {
        status,
        stdout: Vec::new(),
        stderr,
    }))
}

/// Allocates `len` bytes of `f` from `at` without changing its size, so that writing them cannot run
/// out of space halfway. Fine where the file system cannot do it: the write then finds out itself.
pub fn reserve(f: &std::fs::File, at: u64, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(at), Ok(len)) = (i64::try_from(at), i64::try_from(len)) else {
        return Ok(());
    };
    match nix::fcntl::fallocate(
        f.as_raw_fd(),
        nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        at,
        len,
    ) {
        Err(e @ (Errno::ENOSPC | Errno::EDQUOT | Errno::EIO | Errno::EFBIG)) => Err(e.into()),
        _ => Ok(()),
    }
}

/// Looks a user up in /etc/passwd: its uid and primary gid.
///
/// Read directly rather than through getpwnam(3): the static binary cannot load glibc's NSS modules
/// (nsswitch.conf's `systemd` module would be dlopen()ed into a static process and crash it). The service
/// users are system users that systemd-sysusers writes into /etc/passwd and /etc/group.
pub fn lookup_user(name: &str) -> std::io::Result<Option<(u32, u32)>> {
    Ok(passwd_user(&std::fs::read_to_string("/etc/passwd")?, name))
}

/// Looks a group up in /etc/group (see `lookup_user` for why not getgrnam(3)).
pub fn lookup_group(name: &str) -> std::io::Result<Option<u32>> {
    Ok(group_gid(&std::fs::read_to_string("/etc/group")?, name))
}

/// `name:x:uid:gid:...` lines. Pure.
pub fn passwd_user(text: &str, name: &str) -> Option<(u32, u32)> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// `name:x:gid:members` lines. Pure.
pub fn group_gid(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok())?
    })
}

/// Clears the process's supplementary groups (setgroups(2) with none).
pub fn clear_groups() -> nix::Result<()> {
    nix::unistd::setgroups(&[])
}

/// Sets the real, effective and saved gid (setresgid(2)): all three, so none is left to switch back to.
pub fn set_gids(gid: Gid) -> nix::Result<()> {
    nix::unistd::setresgid(gid, gid, gid)
}

/// Sets the real, effective and saved uid (setresuid(2)). Once root's uid is gone, groups and gids can no
/// longer change: [`clear_groups`] and [`set_gids`] come first.
pub fn set_uids(uid: Uid) -> nix::Result<()> {
    nix::unistd::setresuid(uid, uid, uid)
}

/// Sets no_new_privs (prctl(2) PR_SET_NO_NEW_PRIVS): neither this process nor anything it executes can
/// gain privileges (setuid binaries, file capabilities). It cannot be unset.
pub fn set_no_new_privs() -> nix::Result<()> {
    nix::sys::prctl::set_no_new_privs()
}

/// Whether this process can become root again (setuid(0) or setgid(0) succeeds; if so, it now is).
pub fn can_become_root() -> bool {
    nix::unistd::setuid(Uid::from_raw(0)).is_ok() || nix::unistd::setgid(Gid::from_raw(0)).is_ok()
}

/// The host's name (gethostname(2)); `None` if it is not UTF-8.
pub fn hostname() -> Option<String> {
    nix::unistd::gethostname().ok()?.into_string().ok()
}

/// Bytes available to an unprivileged user on the file system holding `path`.
pub fn free_bytes(path: &std::path::Path) -> Option<u64> {
    nix::sys::statvfs::statvfs(path)
        .ok()
        .map(|s| s.blocks_available() * s.fragment_size())
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// This process's effective uid and gid.
pub fn effective_ids() -> (u32, u32) {
    (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    )
}

/// Detaches the mount at `target` (`umount2(MNT_DETACH)`): gone from the tree at once, released when the
/// last descriptor into it closes.
pub fn detach_mount(target: &Path) -> nix::Result<()> {
    nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)
}

/// No core dumps of this process or its children: not dumpable (which also keeps other processes of the
/// same user from ptrace and /proc/PID/mem), and a core size limit of 0 that children inherit.
pub fn no_core_dumps() {
    let _ = nix::sys::prctl::set_dumpable(false);
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
}

/// `bytes` in an anonymous in-memory file (memfd, named `name` in /proc), sealed against any change once
/// written; the file is positioned at its end.
pub fn sealed_memfd(name: &std::ffi::CStr, bytes: &[u8]) -> std::io::Result<std::fs::File> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    use std::io::Write as _;
    use std::os::fd::AsRawFd as _;
    let fd = memfd_create(
        name,
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    fcntl(
        file.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_and_group_lines_are_read_by_name() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nnode-agent:x:64100:64100:node-agent:/var/lib/node-agent:/usr/sbin/nologin\n";
        assert_eq!(passwd_user(passwd, "node-agent"), Some((64100, 64100)));
        assert_eq!(passwd_user(passwd, "node"), None);
        assert_eq!(passwd_user("bad:x:notanumber:1\n::\n", "bad"), None);
        let group = "root:x:0:\nnode-agent:x:64100:alice,bob\n";
        assert_eq!(group_gid(group, "node-agent"), Some(64100));
        assert_eq!(group_gid(group, "wheel"), None);
    }

    proptest::proptest! {
        #[test]
        fn any_passwd_text_is_parsed_without_panic(text in "\\PC{0,300}", name in "[a-z:]{0,8}") {
            let _ = passwd_user(&text, &name);
            let _ = group_gid(&text, &name);
        }
    }
}

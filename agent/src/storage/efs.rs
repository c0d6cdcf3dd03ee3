//! EFS: the mount arguments (kernel NFS client or amazon-efs-utils), the role's directory and the source
//! the datadir must show, and the mount itself: attempts with retries, creating the role's directory on
//! first use, then the check of the mount and the sentinel (steps 2 to 5 of [`super`]).

use super::mountinfo::{mount_state, nfs_source, read_mounts, ExpectedSource, MountState};
use super::retry::{classify_errno, classify_helper_output, Failure, Retry};
use super::sentinel::{check_or_create_sentinel, expected_sentinel};
use super::{io, resolve_owner, warn_if_owned_otherwise, Host, StorageError};
use crate::config::storage::DATA_MOUNT_FLAGS;
use crate::sys::safefs::Dir;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The private mountpoint for the file system root (to create the role's directory), beside the runtime
/// directory: `/run/.node-agent-efs-root` for `/run/node-agent`. Not inside it, where the service user
/// can write.
pub fn root_mountpoint(runtime_dir: &Path) -> PathBuf {
    let name = runtime_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "node-agent".into());
    runtime_dir.with_file_name(format!(".{name}-efs-root"))
}

/// mount(2)'s option string for NFS: the kernel resolves no names, so the server address goes in `addr=`.
pub fn kernel_mount_options(options: &str, addr: Ipv4Addr) -> String {
    format!("{options},addr={addr}")
}

/// `mount` arguments for amazon-efs-utils: TLS to the mount target and IAM authorization, through an
/// access point when there is one.
pub fn efs_utils_args(
    file_system_id: &str,
    path: &str,
    target: &Path,
    options: &str,
    mount_target_ip: Option<Ipv4Addr>,
    access_point_id: Option<&str>,
) -> Vec<String> {
    let mut o = crate::config::storage::efs_utils_options(options);
    if let Some(ap) = access_point_id {
        o.push_str(&format!(",accesspoint={ap}"));
    }
    if let Some(ip) = mount_target_ip {
        o.push_str(&format!(",mounttargetip={ip}"));
    }
    vec![
        "-t".into(),
        "efs".into(),
        "-o".into(),
        o,
        nfs_source(file_system_id, path),
        target.display().to_string(),
    ]
}

/// The path mounted from the file system: the role's directory, or `/` through an access point (whose
/// root directory is the role's directory; the server resolves it, the client never names it).
fn source_path(efs: &crate::config::EfsSettings) -> &str {
    match efs.access_point_id {
        Some(_) => "/",
        None => &efs.path,
    }
}

/// The role's directory as messages name it.
fn target_name(efs: &crate::config::EfsSettings) -> String {
    let target = nfs_source(&efs.dns_name, &efs.path);
    match &efs.access_point_id {
        Some(ap) => format!("{target} (access point {ap})"),
        None => target,
    }
}

/// What an EFS datadir must be a mount of.
pub(super) fn expected_source(efs: &crate::config::EfsSettings) -> ExpectedSource {
    if efs.access_point_id.is_some() {
        // Always efs-utils with TLS: the kernel sees only the local tunnel, `127.0.0.1:/`. Never the DNS
        // name: `DNS:/` would be the whole file system mounted without the access point. Which access
        // point the tunnel serves is not in mountinfo; the sentinel (environment, role) checks that.
        return ExpectedSource {
            hosts: vec!["127.0.0.1".into()],
            path: "/".into(),
        };
    }
    let mut expected = ExpectedSource {
        hosts: vec![efs.dns_name.clone()],
        path: efs.path.clone(),
    };
    if efs.efs_utils {
        // efs-utils' TLS tunnel: the kernel talks to a local stunnel/efs-proxy port.
        expected.hosts.push("127.0.0.1".into());
    }
    expected
}

/// Mount attempts for one file system: the kernel's NFS client, or amazon-efs-utils.
struct Mounter<'a> {
    efs: &'a crate::config::EfsSettings,
}

impl Mounter<'_> {
    fn target(&self, path: &str) -> String {
        nfs_source(&self.efs.dns_name, path)
    }

    /// The mount target's IPv4 address; DNS failures mean "not ready yet".
    async fn resolve(&self) -> Result<Ipv4Addr, Failure> {
        let name = self.efs.dns_name.as_str();
        if let Ok(ip) = name.parse::<Ipv4Addr>() {
            return Ok(ip);
        }
        let addrs = tokio::net::lookup_host((name, 2049))
            .await
            .map_err(|e| Failure::NotReady(format!("cannot resolve {name}: {e}")))?;
        addrs
            .filter_map(|a| match a.ip() {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .next()
            .ok_or_else(|| Failure::NotReady(format!("{name} has no IPv4 address yet")))
    }

    /// One attempt to mount `path` of the file system on the directory `at` (nosuid, nodev, noexec), given
    /// at most `limit`.
    async fn mount(&self, path: &str, at: &Dir, limit: Duration) -> Result<(), Failure> {
        let efs = self.efs;
        let timed_out = || {
            Failure::NotReady(format!(
                "no answer from the mount target within {:.0}s",
                limit.as_secs_f64()
            ))
        };
        if efs.efs_utils {
            let ip = efs.dns_name.parse::<Ipv4Addr>().ok();
            let options = format!("{},{DATA_MOUNT_FLAGS}", efs.mount_options);
            // mount.efs takes a path; `at` was opened without following any link someone other than
            // root could have placed.
            let ap = efs.access_point_id.as_deref();
            let args = efs_utils_args(&efs.file_system_id, path, at.path(), &options, ip, ap);
            // Off the runtime's thread (an attempt may take `limit`): a stop request is seen meanwhile.
            let run =
                tokio::task::spawn_blocking(move || crate::sys::run_mount_command(&args, limit));
            let done = run
                .await
                .map_err(|e| Failure::Fatal(format!("mount attempt aborted: {e}")))?;
            return match done {
                Err(e) => Err(Failure::Fatal(format!("cannot run mount: {e}"))),
                Ok(None) => Err(timed_out()),
                Ok(Some(out)) if out.status.success() => Ok(()),
                Ok(Some(out)) => Err(classify_helper_output(&String::from_utf8_lossy(
                    &out.stderr,
                ))),
            };
        }
        let ip = self.resolve().await?;
        let options = kernel_mount_options(&efs.mount_options, ip);
        // The descriptor's path: a link swapped in since `at` was opened changes nothing. The descriptor
        // is duplicated for the attempt, which runs off the runtime's thread (it may take `limit`) and
        // may outlive this future when a stop request drops it.
        let fd = at.try_clone_fd().map_err(|e| {
            Failure::Fatal(format!("cannot duplicate the mountpoint descriptor: {e}"))
        })?;
        let source = self.target(path);
        let attempt = tokio::task::spawn_blocking(move || {
            let target = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            crate::sys::mount_nfs(&source, &target, &options, limit)
        });
        let done = attempt
            .await
            .map_err(|e| Failure::Fatal(format!("mount attempt aborted: {e}")))?;
        match done {
            Err(e) => Err(Failure::Fatal(e.to_string())),
            Ok(crate::sys::Attempt::Mounted) => Ok(()),
            Ok(crate::sys::Attempt::Failed(errno)) => Err(classify_errno(errno)),
            Ok(crate::sys::Attempt::TimedOut) => Err(timed_out()),
        }
    }

    /// Mounts the root on a private mountpoint (root's, 0700, beside the runtime directory), creates `path`
    /// in it through descriptors (missing parents root-owned 0755, the role's directory `ids`' 0750, no
    /// link followed: other hosts' service users own parts of this tree), unmounts.
    async fn create_dir(
        &self,
        path: &str,
        runtime_dir: &Path,
        ids: Option<(u32, u32)>,
        limit: Duration,
    ) -> Result<(), Failure> {
        let fatal = |e: StorageError| Failure::Fatal(crate::error::error_chain(&e));
        let mp = root_mountpoint(runtime_dir);
        let (parent, name) = crate::sys::safefs::split(&mp).map_err(|e| fatal(e.into()))?;
        let parent = Dir::create_all(parent, 0o755).map_err(|e| fatal(e.into()))?;
        let (dir, _) = parent
            .make_dir(name, 0o700, None)
            .map_err(|e| fatal(e.into()))?;
        let st = dir.stat().map_err(|e| fatal(e.into()))?;
        if st.st_uid != 0 || st.st_mode & 0o077 != 0 {
            return Err(Failure::Fatal(format!(
                "{} must be root's own 0700 directory (found owner {} mode {:o}): remove it",
                mp.display(),
                st.st_uid,
                st.st_mode & 0o7777
            )));
        }
        // A crash between mount and unmount leaves the root mounted here; start clean.
        if dir.is_mount_root().map_err(|e| fatal(e.into()))? {
            let _ = crate::sys::umount(&mp);
        }
        self.mount("/", &dir, limit).await?;
        tracing::info!(target = %self.target(path), "creating the role's directory in the file system");
        let created = Dir::open(&mp)
            .map_err(StorageError::from)
            .and_then(|root| create_below(&root, path, ids));
        if let Err(e) = crate::sys::umount(&mp) {
            tracing::warn!(mountpoint = %mp.display(), error = %e, "cannot unmount the file system root");
        }
        let _ = parent.remove_dir(name);
        created.map_err(fatal)
    }
}

/// Creates the relative `path` below `root` one component at a time, never following a link: missing
/// parents 0755 (root's), the last one 0750 owned by `ids`.
fn create_below(root: &Dir, path: &str, ids: Option<(u32, u32)>) -> Result<(), StorageError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut cur: Option<Dir> = None;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let (mode, owner) = if last { (0o750, ids) } else { (0o755, None) };
        let here = cur.as_ref().unwrap_or(root);
        let (next, _) = here.make_dir(std::ffi::OsStr::new(part), mode, owner)?;
        cur = Some(next);
    }
    Ok(())
}

pub(super) async fn prepare_efs(
    efs: &crate::config::EfsSettings,
    host: &Host<'_>,
) -> Result<(), StorageError> {
    let datadir = &efs.datadir;
    let target = target_name(efs);
    // Checks first.
    let ids = resolve_owner(&efs.owner)?;
    if efs.efs_utils
        && !["/sbin/mount.efs", "/usr/sbin/mount.efs"]
            .iter()
            .any(|p| Path::new(p).exists())
    {
        return Err(StorageError::NoEfsUtils);
    }
    let expected = expected_source(efs);
    // The mountpoint, opened without following any link that someone other than root could have placed
    // (only then is resolving it by path below the same directory).
    let mountpoint = Dir::create_all(datadir, 0o755)?;
    let datadir = std::fs::canonicalize(datadir).map_err(io("cannot resolve", datadir))?;

    let mut mounted_here = false;
    match mount_state(&read_mounts()?, &datadir, &expected) {
        MountState::Expected => {
            tracing::info!(target = %target, datadir = %datadir.display(), "already mounted");
        }
        MountState::Other { source, fs_type } => {
            return Err(StorageError::WrongMount {
                datadir: datadir.clone(),
                found: source,
                fs_type,
                expected: expected.to_string(),
            })
        }
        MountState::Absent => {
            mount_with_retry(efs, &mountpoint, &datadir, &expected, host, ids).await?;
            mounted_here = true;
            tracing::info!(target = %target, datadir = %datadir.display(), "mounted");
        }
    }

    // Fail closed: whatever happened above, geth starts only on the expected mount.
    let result = match mount_state(&read_mounts()?, &datadir, &expected) {
        MountState::Expected => {
            let s = expected_sentinel(host, Some(&efs.file_system_id), &efs.path);
            // Opened again: the mountpoint's descriptor names the directory under the mount.
            Dir::open(&datadir)
                .map_err(StorageError::from)
                .and_then(|d| {
                    check_or_create_sentinel(&d, &s)?;
                    warn_if_owned_otherwise(&d, ids);
                    Ok(())
                })
        }
        MountState::Absent => Err(StorageError::NotVerified {
            datadir: datadir.clone(),
            expected: expected.to_string(),
            found: "nothing mounted".into(),
        }),
        MountState::Other { source, fs_type } => Err(StorageError::NotVerified {
            datadir: datadir.clone(),
            expected: expected.to_string(),
            found: format!("{source} ({fs_type})"),
        }),
    };
    if result.is_err() && mounted_here {
        // Leave the host as we found it: a later run must not take someone else's data as "already mounted".
        let _ = crate::sys::umount(&datadir);
    }
    result
}

async fn mount_with_retry(
    efs: &crate::config::EfsSettings,
    mountpoint: &Dir,
    datadir: &Path,
    expected: &ExpectedSource,
    host: &Host<'_>,
    ids: Option<(u32, u32)>,
) -> Result<(), StorageError> {
    let m = Mounter { efs };
    let target = target_name(efs);
    let start = tokio::time::Instant::now();
    let mut retry = Retry::new(efs.mount_timeout);
    let mut created = false;
    loop {
        let limit = retry.attempt_limit(start.elapsed());
        let failure = match m.mount(source_path(efs), mountpoint, limit).await {
            Ok(()) => return Ok(()),
            // The access point creates its root directory itself (CreationInfo); node-agent never mounts
            // the file system root for it, the role's IAM policy does not even allow that.
            Err(Failure::Missing) if efs.access_point_id.is_some() => Failure::Fatal(format!(
                "the access point's root directory {} does not exist and the access point did not create it: give the access point CreationInfo (owner 64100:64100, mode 0750)",
                efs.path
            )),
            Err(Failure::Missing) if !created => {
                tracing::info!(target = %target, "the role's directory does not exist yet");
                match m.create_dir(&efs.path, host.runtime_dir, ids, limit).await {
                    Ok(()) => {
                        created = true;
                        continue;
                    }
                    Err(f) => f,
                }
            }
            Err(Failure::Missing) => Failure::Fatal(format!(
                "the server still reports {} missing after node-agent created it",
                efs.path
            )),
            Err(f) => f,
        };
        // An attempt killed at its limit may have mounted in the same instant: never mount twice.
        if mount_state(&read_mounts()?, datadir, expected) == MountState::Expected {
            return Ok(());
        }
        let cause = match failure {
            Failure::NotReady(cause) => cause,
            Failure::Fatal(cause) => {
                return Err(StorageError::Mount {
                    target,
                    datadir: datadir.to_owned(),
                    cause,
                })
            }
            Failure::Missing => {
                return Err(StorageError::Mount {
                    target,
                    datadir: datadir.to_owned(),
                    cause: "the server reports the file system root missing".into(),
                })
            }
        };
        let Some(delay) = retry.next_delay(start.elapsed()) else {
            return Err(StorageError::NotReady {
                target,
                datadir: datadir.to_owned(),
                waited: start.elapsed(),
                cause,
            });
        };
        tracing::warn!(target = %target, %cause, retry_in = ?delay, "file system not ready yet");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::storage::{Owner, EFS_MOUNT_OPTIONS};
    use crate::storage::mountinfo::parse_mountinfo;

    #[test]
    fn kernel_mount_gets_the_efs_options_and_the_resolved_address() {
        let o = kernel_mount_options(EFS_MOUNT_OPTIONS, Ipv4Addr::new(10, 0, 1, 25));
        assert_eq!(o, "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport,addr=10.0.1.25");
        assert_eq!(
            nfs_source("fs-1.efs.x.amazonaws.com", "/staging/rpc"),
            "fs-1.efs.x.amazonaws.com:/staging/rpc"
        );
    }

    #[test]
    fn efs_utils_mounts_with_tls_and_iam() {
        let a = efs_utils_args(
            "fs-12345678",
            "/staging/rpc",
            Path::new("/var/lib/node-agent/data"),
            EFS_MOUNT_OPTIONS,
            None,
            None,
        );
        assert_eq!(a[..3], ["-t", "efs", "-o"]);
        assert!(a[3].starts_with("tls,iam,nfsvers=4.1,"), "{}", a[3]);
        assert_eq!(
            a[4..],
            ["fs-12345678:/staging/rpc", "/var/lib/node-agent/data"]
        );
        let a = efs_utils_args(
            "fs-1",
            "/",
            Path::new("/m"),
            "hard",
            Some(Ipv4Addr::new(10, 0, 0, 5)),
            None,
        );
        assert_eq!(a[3], "tls,iam,hard,mounttargetip=10.0.0.5");
    }

    fn efs_settings(access_point_id: Option<&str>) -> crate::config::EfsSettings {
        crate::config::EfsSettings {
            file_system_id: "fs-0123456789abcdef0".into(),
            path: "/staging/sealer".into(),
            datadir: "/var/lib/node-agent/data".into(),
            dns_name: "fs-0123456789abcdef0.efs.eu-central-1.amazonaws.com".into(),
            mount_options: EFS_MOUNT_OPTIONS.into(),
            efs_utils: true,
            access_point_id: access_point_id.map(str::to_owned),
            owner: Owner::Agent,
            mount_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn an_access_point_mounts_its_root_through_efs_utils_and_only_that_tunnel_mount_passes() {
        let efs = efs_settings(Some("fsap-0123456789abcdef0"));
        assert_eq!(
            source_path(&efs),
            "/",
            "the access point's root is the role's directory"
        );
        let a = efs_utils_args(
            &efs.file_system_id,
            source_path(&efs),
            &efs.datadir,
            "hard",
            None,
            efs.access_point_id.as_deref(),
        );
        assert_eq!(
            a,
            [
                "-t",
                "efs",
                "-o",
                "tls,iam,hard,accesspoint=fsap-0123456789abcdef0",
                "fs-0123456789abcdef0:/",
                "/var/lib/node-agent/data"
            ]
        );
        let dd = Path::new("/var/lib/node-agent/data");
        let state = |line: &str| {
            mount_state(
                &parse_mountinfo(&format!("1 1 0:1 / {} rw - {line}", dd.display())),
                dd,
                &expected_source(&efs),
            )
        };
        // What efs-utils' TLS tunnel shows for an access point mount.
        assert_eq!(
            state("nfs4 127.0.0.1:/ rw,vers=4.1,port=20127,addr=127.0.0.1"),
            MountState::Expected
        );
        // The whole file system over plain NFS, or a subdirectory through the tunnel: not the access point.
        for other in [
            "nfs4 fs-0123456789abcdef0.efs.eu-central-1.amazonaws.com:/ rw,addr=10.0.1.25",
            "nfs4 127.0.0.1:/production/sealer rw,port=20127",
            "tmpfs 127.0.0.1:/ rw",
        ] {
            assert!(
                matches!(state(other), MountState::Other { .. }),
                "{other} must be refused"
            );
        }
        assert_eq!(
            target_name(&efs),
            "fs-0123456789abcdef0.efs.eu-central-1.amazonaws.com:/staging/sealer (access point fsap-0123456789abcdef0)"
        );
        // Without one, the role's directory is mounted by its path, as before.
        let plain = efs_settings(None);
        assert_eq!(source_path(&plain), "/staging/sealer");
        assert!(expected_source(&plain).hosts.contains(&plain.dns_name));
    }
}

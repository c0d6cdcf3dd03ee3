//! The role's data directory: an EFS subdirectory mounted at the datadir (created on first use), or a
//! plain local directory; in both cases guarded by a sentinel file that names whose data it is.
//!
//! The first part is pure (names, mount arguments, mountinfo parsing, sentinel checks, retry decisions)
//! and unit-tested with plain values. The second part, [`prepare`], carries the decisions out in a fixed
//! order, calling `sys` for the syscalls:
//!
//! 1. checks first: the owner exists, the mount helper exists (efs-utils), nothing else is mounted at
//!    the datadir;
//! 2. resolve the mount target's DNS name and mount `/{environment}/{role}` at the datadir, retrying
//!    with backoff while DNS or the mount target is not ready, up to `storage.mount_timeout_secs`;
//! 3. when the server says the subdirectory does not exist: mount the file system root on a private
//!    mountpoint under the runtime directory, create the subdirectory (owner: the service user, 0750),
//!    unmount, and mount the subdirectory again; with an access point (`storage.efs_access_point_id`)
//!    the access point's root directory is the role's directory: its root `/` is mounted, never the
//!    file system root, and the access point's CreationInfo creates the directory;
//! 4. verify in `/proc/self/mountinfo` that the datadir is a mount of the expected source;
//! 5. check the sentinel, or create it on first use.
//!
//! Any failure stops the boot: geth never starts on the local root disk.

use crate::config::storage::{Owner, DATA_MOUNT_FLAGS, SENTINEL};
use crate::config::StorageSettings;
use crate::host::Role;
use crate::sys::safefs::Dir;
use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the file system root is mounted, under the runtime directory, while a subdirectory is created.
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

/// The `source` argument of mount(2) and the name mountinfo shows: `HOST:/PATH`.
pub fn nfs_source(host: &str, path: &str) -> String {
    format!("{host}:{path}")
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
    let mut o = format!("tls,iam,{options}");
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

// ---------------------------------------------------------------------------------------------------------
// /proc/self/mountinfo.

/// One line of `/proc/self/mountinfo` (proc(5)), the fields that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    pub super_options: String,
}

/// Reads a mountinfo file. Not `read_to_string`: the kernel does not escape bytes that are not UTF-8,
/// and one such mount point anywhere on the host must not make every mount unverifiable.
fn read_mountinfo(path: &Path) -> std::io::Result<String> {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Where the kernel lists this process's mounts.
const MOUNTINFO_PATH: &str = "/proc/self/mountinfo";

/// This process's mounts, as the kernel lists them now.
pub fn mounts() -> std::io::Result<Vec<MountEntry>> {
    read_mountinfo(Path::new(MOUNTINFO_PATH)).map(|t| parse_mountinfo(&t))
}

/// Parses mountinfo; lines that do not fit the format are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let mount_point = left.get(4)?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(mount_point)),
                fs_type: right.next()?.to_owned(),
                source: unescape(right.next()?),
                super_options: right.next().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

/// The kernel escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Three octal digits of one byte: the first is at most 3 (`\777` is not an escape).
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount visible at `path`: the last one mounted there (later mounts hide earlier ones).
pub fn mount_at<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    mounts.iter().rev().find(|m| m.mount_point == path)
}

/// What the datadir must be a mount of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedSource {
    /// Hosts the source may name: the DNS name; `127.0.0.1` too with efs-utils' TLS tunnel.
    pub hosts: Vec<String>,
    /// The directory inside the file system, e.g. `/staging/sealer`.
    pub path: String,
}

impl fmt::Display for ExpectedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.hosts.first().map(String::as_str).unwrap_or("?");
        write!(f, "{}", nfs_source(host, &self.path))
    }
}

fn trim_path(p: &str) -> &str {
    match p.trim_end_matches('/') {
        "" => "/",
        t => t,
    }
}

impl ExpectedSource {
    /// Whether a mountinfo entry is this NFS source.
    pub fn matches(&self, m: &MountEntry) -> bool {
        if !m.fs_type.starts_with("nfs") {
            return false;
        }
        let Some((host, path)) = m.source.rsplit_once(":/") else {
            return false;
        };
        let path = format!("/{path}");
        self.hosts.iter().any(|h| h == host) && trim_path(&path) == trim_path(&self.path)
    }
}

/// What is mounted at the datadir now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountState {
    /// Nothing: mount it.
    Absent,
    /// The expected file system and directory: nothing to do.
    Expected,
    /// Something else: refuse, never mount over it or use it.
    Other { source: String, fs_type: String },
}

/// Classifies the datadir's mount against the expected source.
pub fn mount_state(mounts: &[MountEntry], datadir: &Path, expected: &ExpectedSource) -> MountState {
    match mount_at(mounts, datadir) {
        None => MountState::Absent,
        Some(m) if expected.matches(m) => MountState::Expected,
        Some(m) => MountState::Other {
            source: m.source.clone(),
            fs_type: m.fs_type.clone(),
        },
    }
}

// ---------------------------------------------------------------------------------------------------------
// Retry decisions.

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

// ---------------------------------------------------------------------------------------------------------
// The sentinel.

/// `.node-agent-storage.json`: whose data a directory holds. Written on first use, checked every boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sentinel {
    /// `null` for local storage.
    pub file_system_id: Option<String>,
    pub environment: String,
    pub role: String,
    /// The directory inside the file system (EFS) or on this host (local), when it was created.
    #[serde(default)]
    pub path: String,
    /// The instance that created it, for people reading it.
    #[serde(default)]
    pub created_by: String,
    /// Seconds since the epoch.
    #[serde(default)]
    pub created_at: u64,
}

impl Sentinel {
    fn owner_line(&self) -> String {
        let fs = self.file_system_id.as_deref().unwrap_or("local disk");
        format!(
            "environment {}, role {}, file system {fs}",
            self.environment, self.role
        )
    }
}

/// `None` when `found` belongs to the host described by `expected`; otherwise the one-line reason.
pub fn sentinel_mismatch(found: &Sentinel, expected: &Sentinel, path: &Path) -> Option<String> {
    if found.file_system_id == expected.file_system_id
        && found.environment == expected.environment
        && found.role == expected.role
    {
        return None;
    }
    Some(format!(
        "{} says this data belongs to {}, but this host is {}: refusing to start on another host's data (fix the Role/Environment tags, storage.path_template or the file system id; never copy a sentinel)",
        path.display(),
        found.owner_line(),
        expected.owner_line()
    ))
}

// ---------------------------------------------------------------------------------------------------------
// Errors.

/// Why the data directory cannot be used. One line each, naming the object and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage: {target} not mountable at {datadir} after {}s: {cause} (check that the file system has a mount target in this availability zone, that its security group allows NFS, TCP 2049, from this host, and that the VPC has DNS resolution enabled; or raise storage.mount_timeout_secs)", waited.as_secs())]
    NotReady {
        target: String,
        datadir: PathBuf,
        waited: Duration,
        cause: String,
    },
    #[error("storage: cannot mount {target} at {datadir}: {cause}")]
    Mount {
        target: String,
        datadir: PathBuf,
        cause: String,
    },
    #[error("storage: {datadir} is a mount of {found} ({fs_type}), not of {expected}; unmount it (umount {datadir}) or fix storage.datadir")]
    WrongMount {
        datadir: PathBuf,
        found: String,
        fs_type: String,
        expected: String,
    },
    #[error("storage: {datadir} is not a mount of {expected} after mounting it (found {found}); refusing to start on the local disk")]
    NotVerified {
        datadir: PathBuf,
        expected: String,
        found: String,
    },
    #[error("storage: {0}")]
    Mismatch(String),
    #[error("storage: {path} is not a node-agent sentinel ({cause}); it guards against starting on another host's data: restore it, or delete it if this directory really is this host's")]
    BadSentinel { path: PathBuf, cause: String },
    #[error("storage: user {name} does not exist (it owns the role's data directory): create it (node-agent's sysusers.d entry does) or set storage.owner = \"UID:GID\"")]
    NoSuchUser { name: String },
    #[error("storage: amazon-efs-utils is not installed (no mount.efs in /sbin, /usr/sbin): install it or set storage.efs_utils = false")]
    NoEfsUtils,
    #[error("storage: {0}")]
    Fs(#[from] crate::sys::safefs::FsError),
    #[error("storage: {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_owned();
    move |source| StorageError::Io { what, path, source }
}

// ---------------------------------------------------------------------------------------------------------
// Doing it.

/// The host facts the storage step needs besides its settings.
#[derive(Debug, Clone)]
pub struct Host<'a> {
    pub environment: &'a str,
    pub role: Role,
    pub instance_id: &'a str,
    /// Local, non-persistent directory for the temporary root mountpoint.
    pub runtime_dir: &'a Path,
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
fn expected_source(efs: &crate::config::EfsSettings) -> ExpectedSource {
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

/// Whether the storage prepared at boot is still in place (for status): the expected mount at the datadir,
/// and the sentinel there. `Err` says what is wrong.
pub fn still_in_place(storage: &StorageSettings) -> Result<(), String> {
    let datadir = storage.datadir();
    if let StorageSettings::Efs(efs) = storage {
        let mounts = mounts().map_err(|e| format!("cannot read mountinfo: {e}"))?;
        match mount_state(&mounts, datadir, &expected_source(efs)) {
            MountState::Expected => {}
            MountState::Absent => {
                return Err(format!("nothing is mounted at {}", datadir.display()))
            }
            MountState::Other { source, fs_type } => {
                return Err(format!(
                    "{source} ({fs_type}) is mounted at {}",
                    datadir.display()
                ))
            }
        }
    }
    match datadir.join(SENTINEL).exists() {
        true => Ok(()),
        false => Err(format!("no sentinel in {}", datadir.display())),
    }
}

/// Makes the role's data directory ready, or fails; see the module documentation for the order.
pub async fn prepare(storage: &StorageSettings, host: &Host<'_>) -> Result<(), StorageError> {
    match storage {
        StorageSettings::Local { datadir, owner } => prepare_local(datadir, owner, host),
        StorageSettings::Efs(efs) => prepare_efs(efs, host).await,
    }
}

fn expected_sentinel(host: &Host<'_>, file_system_id: Option<&str>, path: &str) -> Sentinel {
    Sentinel {
        file_system_id: file_system_id.map(str::to_owned),
        environment: host.environment.to_owned(),
        role: host.role.as_str().to_owned(),
        path: path.to_owned(),
        created_by: host.instance_id.to_owned(),
        created_at: crate::clock::now_unix(),
    }
}

/// Numeric ids of the owner; `None` for the agent's own user, or when the agent is not root (it can give
/// nothing away then: what it creates is its own, as in local mode on a laptop).
fn resolve_owner(owner: &Owner) -> Result<Option<(u32, u32)>, StorageError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match owner {
        Owner::Agent => Ok(None),
        Owner::Ids { uid, gid } => Ok(Some((*uid, *gid))),
        Owner::User(name) => match crate::sys::lookup_user(name) {
            Ok(Some(ids)) => Ok(Some(ids)),
            Ok(None) => Err(StorageError::NoSuchUser { name: name.clone() }),
            Err(e) => Err(io("cannot look up user", Path::new("/etc/passwd"))(e)),
        },
    }
}

/// Creates `dir` (its missing parents 0755) owned by `ids` with mode 0750, or opens the existing one.
/// The bool: whether it was created here (an existing directory is never re-owned: its contents would not
/// follow). Through descriptors: its parents may belong to the service user.
fn create_owned_dir(dir: &Path, ids: Option<(u32, u32)>) -> Result<(Dir, bool), StorageError> {
    let (parent, name) = crate::sys::safefs::split(dir)?;
    // Another host of the same role may create it at the same moment: theirs is as good as ours.
    Ok(Dir::create_all(parent, 0o755)?.make_dir(name, 0o750, ids)?)
}

fn warn_if_owned_otherwise(dir: &Dir, ids: Option<(u32, u32)>) {
    if let (Some((uid, gid)), Ok(m)) = (ids, dir.stat()) {
        if (m.st_uid, m.st_gid) != (uid, gid) {
            tracing::warn!(
                dir = %dir.path().display(),
                owner = %format!("{}:{}", m.st_uid, m.st_gid),
                expected = %format!("{uid}:{gid}"),
                "data directory is owned by another user; left as is (fix with chown -R if the service cannot write it)"
            );
        }
    }
}

fn prepare_local(datadir: &Path, owner: &Owner, host: &Host<'_>) -> Result<(), StorageError> {
    let ids = resolve_owner(owner)?;
    let (dir, created) = create_owned_dir(datadir, ids)?;
    if created {
        tracing::info!(datadir = %datadir.display(), owner = %owner, "created the local data directory");
    } else {
        warn_if_owned_otherwise(&dir, ids);
    }
    let expected = expected_sentinel(host, None, &datadir.display().to_string());
    check_or_create_sentinel(&dir, &expected)
}

/// The most a sentinel can be: it is a few hundred bytes of JSON.
const SENTINEL_MAX: usize = 64 * 1024;

/// Reads the sentinel and compares it, or writes it when the directory has none. The data directory may
/// belong to the service user (and on EFS, to every host's): the sentinel is read only if it is a regular
/// file, never through a link, and at most 64 KiB of it.
fn check_or_create_sentinel(datadir: &Dir, expected: &Sentinel) -> Result<(), StorageError> {
    let name = std::ffi::OsStr::new(SENTINEL);
    let path = datadir.path().join(SENTINEL);
    match datadir.read_file(name, SENTINEL_MAX, crate::sys::safefs::Part::Head) {
        Ok(bytes) => {
            let found: Sentinel =
                serde_json::from_slice(&bytes).map_err(|e| StorageError::BadSentinel {
                    path: path.clone(),
                    cause: e.to_string(),
                })?;
            match sentinel_mismatch(&found, expected, &path) {
                None => Ok(()),
                Some(reason) => Err(StorageError::Mismatch(reason)),
            }
        }
        Err(e) if e.is_not_found() => {
            if datadir.has_entries()? {
                tracing::warn!(datadir = %datadir.path().display(), "data directory has data but no sentinel: claiming it for this environment and role");
            }
            let text = serde_json::to_vec_pretty(expected).unwrap_or_default();
            // 0644: `run`, as the service user, must read what `prepare` (root) wrote.
            datadir.write_file(name, &text, 0o644, None)?;
            tracing::info!(sentinel = %path.display(), "sentinel written");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn read_mounts() -> Result<Vec<MountEntry>, StorageError> {
    mounts().map_err(io("cannot read", Path::new(MOUNTINFO_PATH)))
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

async fn prepare_efs(
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
    use crate::config::storage::EFS_MOUNT_OPTIONS;

    const MOUNTINFO: &str = "\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
25 22 0:22 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,size=100m,mode=755
98 22 0:50 / /var/lib/node-agent/data rw,nosuid,nodev,noexec,relatime shared:60 - nfs4 fs-0123456789abcdef0.efs.eu-central-1.amazonaws.com:/staging/sealer rw,vers=4.1,rsize=1048576,wsize=1048576,namlen=255,hard,noresvport,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.0.1.10,local_lock=none,addr=10.0.1.25
99 22 0:51 / /mnt/with\\040space rw - tmpfs none rw
garbage line
";

    fn efs_expected() -> ExpectedSource {
        ExpectedSource {
            hosts: vec!["fs-0123456789abcdef0.efs.eu-central-1.amazonaws.com".into()],
            path: "/staging/sealer".into(),
        }
    }

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

    #[test]
    fn mountinfo_is_parsed_with_escapes() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 4);
        assert_eq!(m[2].fs_type, "nfs4");
        assert_eq!(
            m[2].source,
            "fs-0123456789abcdef0.efs.eu-central-1.amazonaws.com:/staging/sealer"
        );
        assert!(m[2].super_options.contains("addr=10.0.1.25"));
        assert_eq!(m[3].mount_point, Path::new("/mnt/with space"));
        assert_eq!(unescape(r"a\134b\011c"), "a\\b\tc");
        assert_eq!(unescape(r"trailing\04"), r"trailing\04");
        // Only byte values are escapes: a first digit above 3 is text (it overflowed a byte before).
        assert_eq!(unescape(r"a\777b\400"), r"a\777b\400");
        assert_eq!(unescape(r"\377"), "\u{FFFD}");
    }

    #[test]
    fn a_mount_point_that_is_not_utf8_does_not_hide_the_others() {
        // The kernel escapes only space, tab, newline and backslash: other bytes arrive raw.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mountinfo");
        let mut text = b"30 22 0:40 / /media/caf\xe9 rw - vfat /dev/sdb1 rw\n".to_vec();
        text.extend_from_slice(MOUNTINFO.as_bytes());
        std::fs::write(&file, text).unwrap();
        let m = parse_mountinfo(&read_mountinfo(&file).unwrap());
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].mount_point, Path::new("/media/caf\u{FFFD}"));
        assert_eq!(
            mount_state(&m, Path::new("/var/lib/node-agent/data"), &efs_expected()),
            MountState::Expected
        );
    }

    /// How the kernel writes a path or source into mountinfo (`mangle` in fs/proc_namespace.c).
    fn kernel_escape(s: &str) -> String {
        s.chars()
            .map(|c| match c {
                ' ' | '\t' | '\n' | '\\' => format!("\\{:03o}", c as u32),
                c => c.to_string(),
            })
            .collect()
    }

    /// Text as the kernel never escapes it, but with the characters it does escape, and octal lookalikes.
    fn path_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            "\\PC{1,6}",
            proptest::sample::select(vec![
                " ", "\t", "\n", "\\", "\\040", "\\777", " - ", "\r", "é", "-"
            ])
            .prop_map(str::to_owned),
        ];
        proptest::collection::vec(piece, 0..8).prop_map(|v| v.concat())
    }

    fn entry() -> impl proptest::strategy::Strategy<Value = (String, MountEntry)> {
        use proptest::prelude::*;
        let optional = proptest::collection::vec(
            prop_oneof![
                (1..999u32).prop_map(|n| format!("shared:{n}")),
                (1..999u32).prop_map(|n| format!("master:{n}")),
                (1..999u32).prop_map(|n| format!("propagate_from:{n}")),
                Just("unbindable".to_owned()),
            ],
            0..3,
        );
        (
            (any::<u32>(), any::<u32>(), any::<u16>(), any::<u16>()),
            path_text(),
            path_text(),
            "[a-z,=0-9]{1,30}",
            optional,
            "[a-z0-9]{1,8}(\\.[a-z]{1,6})?",
            path_text().prop_filter("kernel shows \"none\" for no source", |s| !s.is_empty()),
            "[a-zA-Z0-9=,:./_-]{0,60}",
        )
            .prop_map(
                |(
                    (id, parent, major, minor),
                    root,
                    point,
                    opts,
                    optional,
                    fs_type,
                    source,
                    sopts,
                )| {
                    let mut fields = vec![
                        id.to_string(),
                        parent.to_string(),
                        format!("{major}:{minor}"),
                        kernel_escape(&format!("/{root}")),
                        kernel_escape(&format!("/{point}")),
                        opts,
                    ];
                    fields.extend(optional);
                    let line = format!(
                        "{} - {fs_type} {} {sopts}",
                        fields.join(" "),
                        kernel_escape(&source)
                    );
                    let want = MountEntry {
                        mount_point: PathBuf::from(format!("/{point}")),
                        fs_type,
                        source,
                        super_options: sopts,
                    };
                    (line, want)
                },
            )
    }

    proptest::proptest! {
        #[test]
        fn any_mountinfo_text_is_parsed_without_panic(
            text in "\\PC{0,400}",
            tokens in proptest::collection::vec(
                proptest::sample::select(vec!["\\", "\\777", "\\0", "\\12", "7", " ", " - ", "/", "\n", "-", "é", "\\3"]),
                0..80,
            ),
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
        ) {
            let _ = parse_mountinfo(&text);
            let _ = parse_mountinfo(&tokens.concat());
            let _ = parse_mountinfo(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn well_formed_mountinfo_lines_parse_back_to_their_fields(
            entries in proptest::collection::vec(entry(), 1..6),
        ) {
            let text: String = entries.iter().map(|(line, _)| format!("{line}\n")).collect();
            let want: Vec<MountEntry> = entries.into_iter().map(|(_, e)| e).collect();
            proptest::prop_assert_eq!(parse_mountinfo(&text), want);
        }
    }

    #[test]
    fn the_expected_mount_is_recognised_and_anything_else_refused() {
        let m = parse_mountinfo(MOUNTINFO);
        let dd = Path::new("/var/lib/node-agent/data");
        assert_eq!(mount_state(&m, dd, &efs_expected()), MountState::Expected);
        assert_eq!(
            mount_state(&m, Path::new("/var/lib/other"), &efs_expected()),
            MountState::Absent
        );
        // Another role's directory, or another file system, at our datadir.
        let mut rpc = efs_expected();
        rpc.path = "/staging/rpc".into();
        assert!(matches!(
            mount_state(&m, dd, &rpc),
            MountState::Other { .. }
        ));
        let mut other_fs = efs_expected();
        other_fs.hosts = vec!["fs-99999999.efs.eu-central-1.amazonaws.com".into()];
        assert!(matches!(
            mount_state(&m, dd, &other_fs),
            MountState::Other { .. }
        ));
        // A tmpfs named like the source is still not NFS.
        let fake = parse_mountinfo(
            "1 1 0:1 / /d rw - tmpfs fs-0123456789abcdef0.efs.eu-central-1.amazonaws.com:/staging/sealer rw",
        );
        assert!(matches!(
            mount_state(&fake, Path::new("/d"), &efs_expected()),
            MountState::Other { .. }
        ));
    }

    #[test]
    fn the_last_mount_on_a_path_is_the_visible_one() {
        let m = parse_mountinfo(&format!(
            "{MOUNTINFO}120 98 0:60 / /var/lib/node-agent/data rw - tmpfs tmpfs rw\n"
        ));
        let s = mount_state(&m, Path::new("/var/lib/node-agent/data"), &efs_expected());
        assert_eq!(
            s,
            MountState::Other {
                source: "tmpfs".into(),
                fs_type: "tmpfs".into()
            }
        );
    }

    #[test]
    fn efs_utils_tls_mounts_show_the_local_tunnel_and_trailing_slashes_do_not_matter() {
        let m = parse_mountinfo(
            "1 1 0:1 / /d rw - nfs4 127.0.0.1:/staging/sealer/ rw,port=20313,addr=127.0.0.1",
        );
        let mut e = efs_expected();
        assert!(matches!(
            mount_state(&m, Path::new("/d"), &e),
            MountState::Other { .. }
        ));
        e.hosts.push("127.0.0.1".into());
        assert_eq!(mount_state(&m, Path::new("/d"), &e), MountState::Expected);
        let root = parse_mountinfo("1 1 0:1 / /r rw - nfs4 h:/ rw");
        let e = ExpectedSource {
            hosts: vec!["h".into()],
            path: "/".into(),
        };
        assert_eq!(
            mount_state(&root, Path::new("/r"), &e),
            MountState::Expected
        );
    }

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

    fn sentinel(fs: Option<&str>, env: &str, role: &str) -> Sentinel {
        Sentinel {
            file_system_id: fs.map(str::to_owned),
            environment: env.into(),
            role: role.into(),
            path: "/x".into(),
            created_by: "i-1".into(),
            created_at: 1,
        }
    }

    #[test]
    fn a_sentinel_of_another_host_is_refused_naming_both_sides() {
        let p = Path::new("/d/.node-agent-storage.json");
        let me = sentinel(Some("fs-2"), "staging", "rpc");
        // Same owner, created by another instance at another time: fine.
        let mut other_instance = me.clone();
        other_instance.created_by = "i-9".into();
        other_instance.created_at = 7;
        assert_eq!(sentinel_mismatch(&other_instance, &me, p), None);
        let m = sentinel_mismatch(&sentinel(Some("fs-1"), "production", "sealer"), &me, p).unwrap();
        assert_eq!(
            m,
            "/d/.node-agent-storage.json says this data belongs to environment production, role sealer, file system fs-1, but this host is environment staging, role rpc, file system fs-2: refusing to start on another host's data (fix the Role/Environment tags, storage.path_template or the file system id; never copy a sentinel)"
        );
        for wrong in [
            sentinel(Some("fs-2"), "staging", "sealer"),
            sentinel(Some("fs-2"), "production", "rpc"),
            sentinel(None, "staging", "rpc"),
        ] {
            assert!(sentinel_mismatch(&wrong, &me, p).is_some(), "{wrong:?}");
        }
    }

    #[test]
    fn sentinel_json_round_trips_and_tolerates_added_fields() {
        let s = sentinel(None, "dev", "sealer");
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"file_system_id\":null"), "{text}");
        let back: Sentinel = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
        let newer: Sentinel = serde_json::from_str(
            r#"{"file_system_id":"fs-1","environment":"dev","role":"rpc","future":true}"#,
        )
        .unwrap();
        assert_eq!(newer.role, "rpc");
    }

    fn host(dir: &Path) -> Host<'_> {
        Host {
            environment: "dev",
            role: Role::Rpc,
            instance_id: "i-1",
            runtime_dir: dir,
        }
    }

    #[test]
    fn local_storage_is_created_0750_with_a_sentinel_and_refused_for_another_role() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let datadir = tmp.path().join("data/dev/rpc");
        prepare_local(&datadir, &Owner::Agent, &host(tmp.path())).unwrap();
        let mode = std::fs::metadata(&datadir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o750);
        let s: Sentinel =
            serde_json::from_slice(&std::fs::read(datadir.join(SENTINEL)).unwrap()).unwrap();
        assert_eq!((s.environment.as_str(), s.role.as_str()), ("dev", "rpc"));
        assert_eq!(s.file_system_id, None);
        // Idempotent.
        prepare_local(&datadir, &Owner::Agent, &host(tmp.path())).unwrap();
        // A sealer pointed at the rpc directory.
        let mut sealer = host(tmp.path());
        sealer.role = Role::Sealer;
        let e = prepare_local(&datadir, &Owner::Agent, &sealer).unwrap_err();
        assert!(e.to_string().contains("role rpc"), "{e}");
        assert!(!e.to_string().contains('\n'));
        // A sentinel that is not one.
        std::fs::write(datadir.join(SENTINEL), "not json").unwrap();
        let e = prepare_local(&datadir, &Owner::Agent, &host(tmp.path())).unwrap_err();
        assert!(
            e.to_string().contains("is not a node-agent sentinel"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_service_user_is_named_with_the_fix() {
        let e = resolve_owner(&Owner::User("no-such-user-here".into())).unwrap_err();
        assert!(
            e.to_string()
                .contains("user no-such-user-here does not exist"),
            "{e}"
        );
        assert!(e.to_string().contains("storage.owner"), "{e}");
    }
}

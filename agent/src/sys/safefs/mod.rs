//! Root's file primitives: everything root does to a tree the service user can write goes through
//! directory descriptors, never by path.
//!
//! The threat: code running as the service user (a compromised geth on the public rpc node) plants a
//! symbolic link, a FIFO or a device where root later looks (`ln -s /etc/shadow secrets/x`), then kills
//! the agent so that root's next `prepare` acts on it. So:
//! - a path is opened one component at a time with `O_NOFOLLOW`; a symbolic link is followed only where
//!   nobody but root could have placed it (in a root-owned directory no one else can write), which keeps
//!   system links such as `/var/run` working and refuses every link in the service user's trees;
//! - directories are created with their mode (`mkdirat`), then fixed with `fchmod`/`fchown` on their own
//!   descriptor: the inode changed is the one opened, whatever is renamed meanwhile;
//! - files are created `O_EXCL|O_NOFOLLOW`, read `O_NOFOLLOW|O_NONBLOCK` (a FIFO cannot hang the reader),
//!   must be regular files, and are read up to a bound;
//! - trees are emptied with `unlinkat`, never descending through a link;
//! - syscalls that only take a path (mount(2), bind(2)) get `/proc/self/fd/N` of a checked descriptor.

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use walk::walk;

mod walk;

/// How many symbolic links one path may pass through (the kernel's own limit).
const MAX_LINKS: usize = 40;
/// How deep `empty` descends: the secrets tmpfs holds files, not trees; deeper means someone built it.
const MAX_DEPTH: usize = 16;

/// A failure naming the path it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct FsError {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl From<FsError> for std::io::Error {
    fn from(e: FsError) -> std::io::Error {
        std::io::Error::new(e.source.kind(), e)
    }
}

impl FsError {
    fn new(what: &'static str, path: &Path, errno: Errno) -> FsError {
        FsError {
            what,
            path: path.to_owned(),
            source: errno.into(),
        }
    }

    fn refused(what: &'static str, path: &Path, why: String) -> FsError {
        FsError {
            what,
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, why),
        }
    }

    /// Whether the object was missing (ENOENT).
    pub fn is_not_found(&self) -> bool {
        self.source.kind() == std::io::ErrorKind::NotFound
    }
}

/// An open directory, and the path it was reached by (for messages only: nothing is done by that path).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// Who a created file or directory is given to.
pub type Owner = Option<(u32, u32)>;

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Only root can change which object a name in this directory stands for: owned by root, and writable
/// by no group or other, or sticky (like /tmp: others may add names but not replace root's).
fn trusted(st: &FileStat) -> bool {
    st.st_uid == 0 && (st.st_mode & 0o022 == 0 || st.st_mode & 0o1000 != 0)
}

/// Whether the link `link` in directory `dir` can only have been placed by root.
fn trusted_link(dir: &FileStat, link: &FileStat) -> bool {
    trusted(dir) && (dir.st_mode & 0o022 == 0 || link.st_uid == 0)
}

fn is_kind(st: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == kind
}

/// What to do with a path component that does not exist.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Missing {
    Fail,
    /// Create it with this mode (explicitly set, whatever the umask) and owner.
    Create(u32, Owner),
}

impl Dir {
    /// Opens the directory at `path` without following any link that someone other than root could
    /// have placed. `path` is made absolute against the working directory.
    pub fn open(path: &Path) -> Result<Dir, FsError> {
        walk(path, Missing::Fail, Missing::Fail)
    }

    /// Opens `path`, creating missing directories: parents 0755 (a service user must be able to pass
    /// through what root creates), the last one with `mode`. Existing ones keep their mode and owner.
    pub fn create_all(path: &Path, mode: u32) -> Result<Dir, FsError> {
        Dir::create_all_owned(path, mode, None)
    }

    /// `create_all`, and the last directory, when created here, is given to `owner`.
    pub fn create_all_owned(path: &Path, mode: u32, owner: Owner) -> Result<Dir, FsError> {
        walk(
            path,
            Missing::Create(0o755, None),
            Missing::Create(mode, owner),
        )
    }

    /// The path this directory was reached by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// A path that names exactly this directory for syscalls that only take paths (mount(2), bind(2)):
    /// the kernel resolves it to the open descriptor, not by walking names again.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.raw()))
    }

    /// A second descriptor of this directory (for work that may outlive `self`).
    pub fn try_clone_fd(&self) -> std::io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    fn child(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    pub fn stat(&self) -> Result<FileStat, FsError> {
        nix::sys::stat::fstat(self.raw()).map_err(|e| FsError::new("cannot stat", &self.path, e))
    }

    /// Whether this directory lies on a tmpfs.
    pub fn is_tmpfs(&self) -> Result<bool, FsError> {
        nix::sys::statfs::fstatfs(self.fd.as_fd())
            .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
            .map_err(|e| FsError::new("cannot statfs", &self.path, e))
    }

    /// Whether a file system is mounted exactly here (this directory is its root): `..` lies on another
    /// device.
    pub fn is_mount_root(&self) -> Result<bool, FsError> {
        let parent = nix::sys::stat::fstatat(Some(self.raw()), "..", AtFlags::empty())
            .map_err(|e| FsError::new("cannot stat the parent of", &self.path, e))?;
        Ok(parent.st_dev != self.stat()?.st_dev)
    }

    /// Renames `name` here to `to` in `dest` (replacing what is there; a link there is replaced, not
    /// followed).
    pub fn rename_to(&self, name: &OsStr, dest: &Dir, to: &OsStr) -> Result<(), FsError> {
        nix::fcntl::renameat(Some(self.raw()), name, Some(dest.raw()), to)
            .map_err(|e| FsError::new("cannot rename into place", &dest.child(to), e))
    }

    /// Removes `name` and, if it is a directory, everything in it (through descriptors). Missing is fine.
    pub fn remove_tree(&self, name: &OsStr) -> Result<(), FsError> {
        match nix::unistd::unlinkat(
            Some(self.raw()),
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EISDIR) => {
                self.open_dir(name)?.empty()?;
                self.remove_dir(name)
            }
            Err(e) => Err(FsError::new("cannot remove", &self.child(name), e)),
        }
    }

    /// Removes the empty subdirectory `name`. Missing is fine.
    pub fn remove_dir(&self, name: &OsStr) -> Result<(), FsError> {
        match nix::unistd::unlinkat(
            Some(self.raw()),
            name,
            nix::unistd::UnlinkatFlags::RemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(FsError::new("cannot remove", &self.child(name), e)),
        }
    }

    /// Sets the owner and mode of `name` here without following a link (a socket root just bound, say).
    pub fn set_at(&self, name: &OsStr, mode: u32, owner: Owner) -> Result<(), FsError> {
        let path = self.child(name);
        if let Some((uid, gid)) = owner {
            nix::unistd::fchownat(
                Some(self.raw()),
                name,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| FsError::new("cannot change the owner of", &path, e))?;
        }
        // fchmodat cannot refuse links on Linux: only in a directory nobody else can write.
        nix::sys::stat::fchmodat(
            Some(self.raw()),
            name,
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| FsError::new("cannot set the mode of", &path, e))
    }

    /// Sets this directory's mode and, when given, its owner (on the descriptor: the inode opened).
    pub fn set(&self, mode: u32, owner: Owner) -> Result<(), FsError> {
        if let Some((uid, gid)) = owner {
            let st = self.stat()?;
            if (st.st_uid, st.st_gid) != (uid, gid) {
                nix::unistd::fchown(
                    self.raw(),
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                )
                .map_err(|e| FsError::new("cannot change the owner of", &self.path, e))?;
            }
        }
        nix::sys::stat::fchmod(self.raw(), Mode::from_bits_truncate(mode))
            .map_err(|e| FsError::new("cannot set the mode of", &self.path, e))
    }

    /// Opens the subdirectory `name` (a link there is refused).
    pub fn open_dir(&self, name: &OsStr) -> Result<Dir, FsError> {
        let path = self.child(name);
        match nix::fcntl::openat(Some(self.raw()), name, dir_flags(), Mode::empty()) {
            // SAFETY: openat returned a new descriptor that nothing else owns.
            Ok(fd) => Ok(Dir {
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
                path,
            }),
            Err(Errno::ELOOP | Errno::ENOTDIR) => Err(self.not_a_dir(name)),
            Err(e) => Err(FsError::new("cannot open directory", &path, e)),
        }
    }

    fn not_a_dir(&self, name: &OsStr) -> FsError {
        let path = self.child(name);
        let what =
            match nix::sys::stat::fstatat(Some(self.raw()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if is_kind(&st, SFlag::S_IFLNK) => {
                    "is a symbolic link (root does not follow links others can plant; remove it):"
                }
                _ => "is not a directory (remove it):",
            };
        FsError::refused(
            "refusing",
            &path,
            format!("{} {what}", path.display())
                .trim_end_matches(':')
                .to_owned(),
        )
    }

    /// Creates the subdirectory `name` with `mode` (set explicitly after creation, whatever the umask)
    /// and `owner`, or opens the existing one as it is. The bool: whether it was created here.
    pub fn make_dir(&self, name: &OsStr, mode: u32, owner: Owner) -> Result<(Dir, bool), FsError> {
        match nix::sys::stat::mkdirat(Some(self.raw()), name, Mode::from_bits_truncate(mode)) {
            Ok(()) => {
                let d = self.open_dir(name)?;
                d.set(mode, owner)?;
                Ok((d, true))
            }
            Err(Errno::EEXIST) => Ok((self.open_dir(name)?, false)),
            Err(e) => Err(FsError::new(
                "cannot create directory",
                &self.child(name),
                e,
            )),
        }
    }

    /// Writes `bytes` to `name` atomically: a dot-prefixed temp file created `O_EXCL|O_NOFOLLOW` with
    /// mode 0600, fsync, its owner and final mode set on the descriptor, rename, fsync of the directory.
    pub fn write_file(
        &self,
        name: &OsStr,
        bytes: &[u8],
        mode: u32,
        owner: Owner,
    ) -> Result<(), FsError> {
        use std::io::Write as _;
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = tmp_name.as_os_str();
        let tmp_path = self.child(tmp);
        let _ = nix::unistd::unlinkat(
            Some(self.raw()),
            tmp,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        let fd = nix::fcntl::openat(
            Some(self.raw()),
            tmp,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| FsError::new("cannot create", &tmp_path, e))?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let result = (|| {
            let io = |e: std::io::Error| FsError {
                what: "cannot write",
                path: tmp_path.clone(),
                source: e,
            };
            file.write_all(bytes)
                .and_then(|_| file.sync_all())
                .map_err(io)?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(io)?;
            }
            nix::sys::stat::fchmod(file.as_raw_fd(), Mode::from_bits_truncate(mode))
                .map_err(|e| FsError::new("cannot set the mode of", &tmp_path, e))?;
            nix::fcntl::renameat(Some(self.raw()), tmp, Some(self.raw()), name)
                .map_err(|e| FsError::new("cannot rename into place", &self.child(name), e))
        })();
        drop(file);
        if result.is_err() {
            let _ = nix::unistd::unlinkat(
                Some(self.raw()),
                tmp,
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
            return result;
        }
        self.sync()
    }

    /// Opens the regular file `name` here for reading and writing, creating it with `mode` when missing
    /// (never truncated, a link there refused, a FIFO or device refused). When `owner` is given, the
    /// file's owner and mode are set on its descriptor. A file this user may only read is opened
    /// read-only (the bool says whether it is writable).
    pub fn open_shared_file(
        &self,
        name: &OsStr,
        mode: u32,
        owner: Owner,
    ) -> Result<(std::fs::File, bool), FsError> {
        let path = self.child(name);
        let flags = OFlag::O_CREAT
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let open = |access| {
            nix::fcntl::openat(
                Some(self.raw()),
                name,
                flags | access,
                Mode::from_bits_truncate(mode),
            )
        };
        let (fd, writable) = match open(OFlag::O_RDWR) {
            Ok(fd) => (Ok(fd), true),
            Err(Errno::EACCES) => (open(OFlag::O_RDONLY), false),
            Err(e) => (Err(e), true),
        };
        let fd = fd.map_err(|e| open_failed(&path, e))?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let st = nix::sys::stat::fstat(file.as_raw_fd())
            .map_err(|e| FsError::new("cannot stat", &path, e))?;
        if !is_kind(&st, SFlag::S_IFREG) {
            return Err(FsError::refused(
                "refusing",
                &path,
                format!("{} is not a regular file (remove it)", path.display()),
            ));
        }
        if let Some((uid, gid)) = owner {
            if (st.st_uid, st.st_gid) != (uid, gid) {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|e| FsError {
                    what: "cannot change the owner of",
                    path: path.clone(),
                    source: e,
                })?;
            }
            nix::sys::stat::fchmod(file.as_raw_fd(), Mode::from_bits_truncate(mode))
                .map_err(|e| FsError::new("cannot set the mode of", &path, e))?;
        }
        Ok((file, writable))
    }

    /// fsync of the directory itself (a rename in it is durable after this).
    pub fn sync(&self) -> Result<(), FsError> {
        nix::unistd::fsync(self.raw()).map_err(|e| FsError::new("cannot fsync", &self.path, e))
    }

    /// Reads the regular file `name` (no link, no FIFO, no device), at most `limit` bytes: the first ones
    /// (`Part::Head`, and a longer file is an error) or the last ones (`Part::Tail`).
    pub fn read_file(&self, name: &OsStr, limit: usize, part: Part) -> Result<Vec<u8>, FsError> {
        let path = self.child(name);
        let fd = nix::fcntl::openat(
            Some(self.raw()),
            name,
            OFlag::O_RDONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY
                | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| open_failed(&path, e))?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        read_regular(file, &path, limit, part)
    }

    /// Whether the directory has any entry besides `.` and `..`.
    pub fn has_entries(&self) -> Result<bool, FsError> {
        let mut d = self.list()?;
        let found = d
            .iter()
            .filter_map(Result::ok)
            .any(|e| !matches!(e.file_name().to_bytes(), b"." | b".."));
        Ok(found)
    }

    fn list(&self) -> Result<nix::dir::Dir, FsError> {
        // A descriptor of its own: the listing's position must not be shared with `self`.
        nix::dir::Dir::openat(Some(self.raw()), ".", dir_flags(), Mode::empty())
            .map_err(|e| FsError::new("cannot list", &self.path, e))
    }

    /// Removes everything in this directory, descending into subdirectories through descriptors only.
    pub fn empty(&self) -> Result<(), FsError> {
        self.empty_at(0)
    }

    fn empty_at(&self, depth: usize) -> Result<(), FsError> {
        let names: Vec<OsString> = self
            .list()?
            .iter()
            .filter_map(Result::ok)
            .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect();
        for name in names {
            match nix::unistd::unlinkat(
                Some(self.raw()),
                name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            ) {
                Ok(()) | Err(Errno::ENOENT) => continue,
                Err(Errno::EISDIR) if depth < MAX_DEPTH => {}
                Err(e) => return Err(FsError::new("cannot remove", &self.child(&name), e)),
            }
            let sub = self.open_dir(&name)?;
            sub.empty_at(depth + 1)?;
            drop(sub);
            match nix::unistd::unlinkat(
                Some(self.raw()),
                name.as_os_str(),
                nix::unistd::UnlinkatFlags::RemoveDir,
            ) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(FsError::new("cannot remove", &self.child(&name), e)),
            }
        }
        Ok(())
    }
}

/// An `O_NOFOLLOW` open that failed: a link there is named as one (ELOOP), anything else as it is.
fn open_failed(path: &Path, e: Errno) -> FsError {
    match e {
        Errno::ELOOP => FsError::refused(
            "refusing",
            path,
            format!(
                "{} is a symbolic link (root does not follow links others can plant; remove it)",
                path.display()
            ),
        ),
        e => FsError::new("cannot open", path, e),
    }
}

/// Which part of a file `read_file` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The whole file, which must not be longer than the limit.
    Head,
    /// The last `limit` bytes.
    Tail,
}

/// Opens a file root reads from a place others can write (`O_NOFOLLOW` on the last component, the
/// directories above walked as `Dir::open` does) and reads it as `Dir::read_file` does.
pub fn read_file(path: &Path, limit: usize, part: Part) -> Result<Vec<u8>, FsError> {
    let (parent, name) = split(path)?;
    Dir::open(parent)?.read_file(name, limit, part)
}

/// The directory part and the last component of `path`.
pub fn split(path: &Path) -> Result<(&Path, &OsStr), FsError> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => Ok((
            if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            },
            name,
        )),
        _ => Err(FsError::new("not a file path:", path, Errno::EINVAL)),
    }
}

fn read_regular(
    file: std::fs::File,
    path: &Path,
    limit: usize,
    part: Part,
) -> Result<Vec<u8>, FsError> {
    use std::io::{Read as _, Seek as _};
    let st = nix::sys::stat::fstat(file.as_raw_fd())
        .map_err(|e| FsError::new("cannot stat", path, e))?;
    if !is_kind(&st, SFlag::S_IFREG) {
        return Err(FsError::refused(
            "refusing",
            path,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let len = u64::try_from(st.st_size).unwrap_or(0);
    let mut file = file;
    let limit64 = limit as u64;
    if len > limit64 {
        match part {
            Part::Head => {
                return Err(FsError::refused(
                    "refusing",
                    path,
                    format!("{} is larger than {limit} bytes", path.display()),
                ))
            }
            Part::Tail => {
                file.seek(std::io::SeekFrom::Start(len - limit64))
                    .map_err(|e| FsError {
                        what: "cannot seek in",
                        path: path.to_owned(),
                        source: e,
                    })?;
            }
        }
    }
    let mut buf = Vec::with_capacity(limit.min(len as usize));
    file.take(limit64)
        .read_to_end(&mut buf)
        .map_err(|e| FsError {
            what: "cannot read",
            path: path.to_owned(),
            source: e,
        })?;
    Ok(buf)
}

/// Borrows the descriptor (for calls that take one).
impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests;

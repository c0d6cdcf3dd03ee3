//! The walk down a path as root: one component at a time from `/`, following a symbolic link only where
//! nobody but root could have placed it (see the module documentation of `safefs`).

use super::{dir_flags, is_kind, trusted, trusted_link, Dir, FsError, Missing, MAX_LINKS};
use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{Mode, SFlag};
use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Walks `path` from `/` one component at a time (see the module documentation).
pub(super) fn walk(path: &Path, parents: Missing, last: Missing) -> Result<Dir, FsError> {
    let absolute;
    let path = if path.is_absolute() {
        path
    } else {
        let cwd = std::env::current_dir().map_err(|e| FsError {
            what: "cannot resolve (no working directory)",
            path: path.to_owned(),
            source: e,
        })?;
        absolute = cwd.join(path);
        &absolute
    };
    let root = || -> Result<Vec<Dir>, FsError> {
        let fd = nix::fcntl::open("/", dir_flags(), Mode::empty())
            .map_err(|e| FsError::new("cannot open", Path::new("/"), e))?;
        // SAFETY: open returned a new descriptor that nothing else owns.
        Ok(vec![Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: PathBuf::from("/"),
        }])
    };
    // The open directories from `/` down (`..` pops one), and the components still to walk, in reverse.
    let mut stack = root()?;
    let mut todo: Vec<OsString> = components(path);
    todo.reverse();
    let mut links = 0;
    let mut untrusted_seen = false;
    while let Some(name) = todo.pop() {
        let is_last = todo.is_empty();
        match name.as_bytes() {
            b"/" => {
                stack = root()?;
                untrusted_seen = false;
                continue;
            }
            b"." => continue,
            b".." => {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            _ => {}
        }
        let cur = stack.last().expect("the walk always holds /");
        let missing = if is_last { last } else { parents };
        let next = match nix::fcntl::openat(
            Some(cur.raw()),
            name.as_os_str(),
            dir_flags(),
            Mode::empty(),
        ) {
            // SAFETY: openat returned a new descriptor that nothing else owns.
            Ok(fd) => Dir {
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
                path: cur.child(&name),
            },
            Err(Errno::ENOENT) => match missing {
                Missing::Fail => {
                    return Err(FsError::new(
                        "no such directory",
                        &cur.child(&name),
                        Errno::ENOENT,
                    ))
                }
                Missing::Create(mode, owner) => cur.make_dir(&name, mode, owner)?.0,
            },
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                let st = nix::sys::stat::fstatat(
                    Some(cur.raw()),
                    name.as_os_str(),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| FsError::new("cannot stat", &cur.child(&name), e))?;
                if !is_kind(&st, SFlag::S_IFLNK) {
                    return Err(cur.not_a_dir(&name));
                }
                // Once the walk has passed through a directory others can write, nothing below it is
                // root's choice any more, however it is owned (it may have been moved there).
                if untrusted_seen || !trusted_link(&cur.stat()?, &st) {
                    return Err(FsError::refused(
                        "refusing",
                        &cur.child(&name),
                        format!(
                            "{} is a symbolic link in {}, which users other than root can write (root does not follow links others can plant; replace it with a directory)",
                            cur.child(&name).display(),
                            cur.path.display()
                        ),
                    ));
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(FsError::new(
                        "too many symbolic links in",
                        path,
                        Errno::ELOOP,
                    ));
                }
                let target = nix::fcntl::readlinkat(Some(cur.raw()), name.as_os_str())
                    .map_err(|e| FsError::new("cannot read link", &cur.child(&name), e))?;
                let mut more = components(Path::new(&target));
                more.reverse();
                todo.extend(more);
                continue;
            }
            Err(e) => return Err(FsError::new("cannot open directory", &cur.child(&name), e)),
        };
        if !trusted(&next.stat()?) {
            untrusted_seen = true;
        }
        stack.push(next);
    }
    let mut last_dir = stack.pop().expect("the walk always holds /");
    // Messages name the path as given, not as resolved through links.
    last_dir.path = path.to_owned();
    Ok(last_dir)
}

/// A path's components as names, with `/` for the root.
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::RootDir => Some(OsString::from("/")),
            Component::CurDir => None,
            Component::ParentDir => Some(OsString::from("..")),
            Component::Normal(n) => Some(n.to_owned()),
            Component::Prefix(_) => None,
        })
        .collect()
}

//! Replacing a file whole, for files in trees the process itself owns (the log pipeline's checkpoints and
//! compressed files, what `install` lays out): the one atomic write. Root acting in a tree the service
//! user can write uses `safefs::Dir::write_file` instead, which never follows a path.

use super::safefs::FsError;
use std::fs::File;
use std::io;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// The temp file `replace` writes before the rename: `.NAME.tmp` beside `dest`, so a crash leaves at
/// most one, which the next replace of the same file truncates.
pub fn temp_path(dest: &Path) -> PathBuf {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    dest.with_file_name(format!(".{name}.tmp"))
}

/// Replaces `dest` atomically and durably: `fill` writes the new content into the temp file (opened
/// without following a link, mode `mode` whatever the umask), which is synced and renamed over `dest`,
/// then the directory is synced so the new name survives a crash. On any failure the temp file is
/// removed and `dest` is left as it was. Each error names the step and the path.
pub fn replace(
    dest: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), FsError> {
    let tmp = temp_path(dest);
    let err = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| FsError { what, path, source }
    };
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(err("cannot create", &tmp))?;
        fill(&mut f).map_err(err("cannot write", &tmp))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(err("cannot set the mode of", &tmp))?;
        f.sync_all().map_err(err("cannot sync", &tmp))?;
        std::fs::rename(&tmp, dest).map_err(err("cannot rename into place", dest))?;
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err("cannot sync the directory", dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn a_file_is_replaced_whole_with_its_mode_and_no_temp_left() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("state.json");
        std::fs::write(&dest, "old").unwrap();
        replace(&dest, 0o640, |f| f.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "new");
        assert_eq!(std::fs::metadata(&dest).unwrap().mode() & 0o777, 0o640);
        assert!(!temp_path(&dest).exists());
    }

    #[test]
    fn a_failed_fill_leaves_the_old_file_and_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("state.json");
        std::fs::write(&dest, "old").unwrap();
        let e = replace(&dest, 0o600, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(e.what, "cannot write");
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "old");
        assert!(!temp_path(&dest).exists());
    }

    #[test]
    fn a_link_planted_at_the_temp_name_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("state.json");
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, temp_path(&dest)).unwrap();
        assert!(replace(&dest, 0o600, |f| f.write_all(b"x")).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    }
}

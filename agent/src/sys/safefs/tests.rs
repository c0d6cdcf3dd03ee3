//! Root's descriptor primitives against planted links, FIFOs and devices.

use super::*;
use std::os::unix::fs::{symlink, PermissionsExt};

fn tmp() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

#[test]
fn opens_and_creates_directories_with_their_modes() {
    let t = tmp();
    let d = Dir::create_all(&t.path().join("a/b/c"), 0o700).unwrap();
    assert_eq!(d.path(), t.path().join("a/b/c"));
    let mode = |p: &str| {
        std::fs::metadata(t.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        (mode("a"), mode("a/b"), mode("a/b/c")),
        (0o755, 0o755, 0o700)
    );
    // Existing ones are opened as they are.
    std::fs::set_permissions(
        t.path().join("a/b/c"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    Dir::create_all(&t.path().join("a/b/c"), 0o700).unwrap();
    assert_eq!(mode("a/b/c"), 0o750);
    Dir::open(&t.path().join("a/./b/../b/c")).unwrap();
}

#[test]
fn a_link_in_a_directory_others_can_write_is_refused() {
    let t = tmp();
    let shared = t.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::create_dir(t.path().join("target")).unwrap();
    symlink(t.path().join("target"), shared.join("x")).unwrap();
    let e = Dir::open(&shared.join("x")).unwrap_err();
    assert!(e.to_string().contains("is a symbolic link in"), "{e}");
    let e = Dir::create_all(&shared.join("x/y"), 0o700).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert!(!t.path().join("target/y").exists());
    // The same link where only root could have made it is followed.
    symlink(t.path().join("target"), t.path().join("rootlink")).unwrap();
    if nix::unistd::geteuid().is_root() {
        Dir::open(&t.path().join("rootlink")).unwrap();
    }
}

#[test]
fn files_are_written_with_their_mode_and_read_only_when_regular() {
    let t = tmp();
    let d = Dir::open(t.path()).unwrap();
    d.write_file(OsStr::new("f"), b"hello", 0o640, None)
        .unwrap();
    let p = t.path().join("f");
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o640
    );
    assert_eq!(
        d.read_file(OsStr::new("f"), 64, Part::Head).unwrap(),
        b"hello"
    );
    assert_eq!(d.read_file(OsStr::new("f"), 3, Part::Tail).unwrap(), b"llo");
    assert!(d.read_file(OsStr::new("f"), 3, Part::Head).is_err());
    symlink(&p, t.path().join("l")).unwrap();
    let e = d.read_file(OsStr::new("l"), 64, Part::Head).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    nix::unistd::mkfifo(&t.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
    let e = d.read_file(OsStr::new("fifo"), 64, Part::Head).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    // Writing through a planted link replaces the link, never the file it names.
    d.write_file(OsStr::new("l"), b"new", 0o600, None).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"hello");
    assert!(!t.path().join("l").is_symlink());
}

#[test]
fn emptying_removes_links_without_following_them() {
    let t = tmp();
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"k").unwrap();
    let inner = t.path().join("inner");
    std::fs::create_dir_all(inner.join("sub/deeper")).unwrap();
    std::fs::write(inner.join("sub/deeper/f"), b"x").unwrap();
    std::fs::write(inner.join("f"), b"x").unwrap();
    symlink(&outside, inner.join("dirlink")).unwrap();
    symlink(outside.join("keep"), inner.join("filelink")).unwrap();
    nix::unistd::mkfifo(&inner.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
    let d = Dir::open(&inner).unwrap();
    assert!(d.has_entries().unwrap());
    d.empty().unwrap();
    assert!(!d.has_entries().unwrap());
    assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"k");
}

//! `/proc/self/mountinfo`: its lines parsed (undoing the kernel's octal escapes), the mount visible at a
//! path, and whether the datadir is a mount of the expected NFS source. Pure but for reading the file.

use super::{io, StorageError};
use std::fmt;
use std::path::{Path, PathBuf};

/// The `source` argument of mount(2) and the name mountinfo shows: `HOST:/PATH`.
pub fn nfs_source(host: &str, path: &str) -> String {
    format!("{host}:{path}")
}

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

pub(super) fn read_mounts() -> Result<Vec<MountEntry>, StorageError> {
    mounts().map_err(io("cannot read", Path::new(MOUNTINFO_PATH)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! The `[storage]` section: its vocabulary (the EFS mount options and DNS name, who owns a data
//! directory), the typed [`StorageSettings`] this host gets, and the check that builds them from the
//! file and the tags. Pure: `config` checks them, `storage` acts on them.

use super::checks::{
    at_least_a_second, check_access_point_id, check_fs_id, fill, invalid, Invalid,
};
pub use super::file::EFS_MOUNT_OPTIONS;
use super::file::{StorageFile, StorageKind};
use super::tags::HostTags;
use crate::host::Role;
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The sentinel's file name, in the root of the data directory.
pub const SENTINEL: &str = ".node-agent-storage.json";

/// Mount flags for the data directory, as mount(8) options: geth keeps only data there, nothing to
/// execute. mount(2) takes them as flags, not in the NFS option string (the NFS parser rejects them).
pub const DATA_MOUNT_FLAGS: &str = "nosuid,nodev,noexec";

/// The options amazon-efs-utils mounts with: TLS to the mount target and IAM authorization, then
/// `storage.efs_mount_options` (the mount adds the access point and the mount target's address).
pub fn efs_utils_options(options: &str) -> String {
    format!("tls,iam,{options}")
}

/// `FS_ID.efs.REGION.amazonaws.com` (`.amazonaws.com.cn` in the China regions).
pub fn efs_dns_name(file_system_id: &str, region: &str) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("{file_system_id}.efs.{region}.{suffix}")
}

/// A DNS name or an IPv4 address, as `storage.efs_dns_name` accepts it.
pub fn check_host(s: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if s.len() <= 253 && s.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a DNS name or IPv4 address (e.g. fs-0123456789abcdef0.efs.eu-central-1.amazonaws.com or 10.0.1.25)"
        ))
    }
}

/// Validates `storage.efs_mount_options`: comma-separated NFS options, without `addr=` (added here).
pub fn check_mount_options(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!(
            "must not be empty; the EFS default is {EFS_MOUNT_OPTIONS:?}"
        ));
    }
    for o in s.split(',') {
        let key = o.split('=').next().unwrap_or_default();
        if o.is_empty() || !o.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
            return Err(format!("{s:?}: {o:?} is not an NFS mount option"));
        }
        if key == "addr" {
            return Err(format!(
                "{s:?}: leave out addr=, node-agent resolves the DNS name and adds it"
            ));
        }
        if matches!(key, "nfsvers" | "vers") && !o.ends_with("=4.1") && !o.ends_with("=4.2") {
            return Err(format!("{s:?}: EFS needs NFS 4.1 (nfsvers=4.1)"));
        }
    }
    Ok(())
}

/// Who owns a data directory node-agent creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A user by name, looked up at run time; its primary group.
    User(String),
    /// Numeric ids.
    Ids { uid: u32, gid: u32 },
    /// Whoever runs the agent (local mode).
    Agent,
}

impl Owner {
    /// A user name or `UID:GID`, as `storage.owner` and `users.service` take them; empty means `default`.
    pub fn parse(s: &str, default: Owner) -> Result<Owner, String> {
        if s.is_empty() {
            return Ok(default);
        }
        if let Some((u, g)) = s.split_once(':') {
            return match (u.parse(), g.parse()) {
                (Ok(uid), Ok(gid)) => Ok(Owner::Ids { uid, gid }),
                _ => Err(format!("{s:?} is not UID:GID (e.g. 1000:1000)")),
            };
        }
        let ok = s.len() <= 32
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Owner::User(s.to_owned()))
        } else {
            Err(format!("{s:?} is not a user name or UID:GID"))
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::User(n) => f.write_str(n),
            Owner::Ids { uid, gid } => write!(f, "{uid}:{gid}"),
            Owner::Agent => f.write_str("the agent's user"),
        }
    }
}

impl Serialize for Owner {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where the role's data lives on this host.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StorageSettings {
    Efs(EfsSettings),
    Local { datadir: PathBuf, owner: Owner },
}

/// The role's directory on EFS, mounted at `datadir`.
#[derive(Debug, Clone, Serialize)]
pub struct EfsSettings {
    pub file_system_id: String,
    /// Directory inside the file system, e.g. `/production/sealer`.
    pub path: String,
    pub datadir: PathBuf,
    /// The NFS server's name (or address) for this region.
    pub dns_name: String,
    pub mount_options: String,
    pub efs_utils: bool,
    /// `fsap-…`: mounted through this access point, whose root directory is `path`.
    pub access_point_id: Option<String>,
    pub owner: Owner,
    #[serde(skip)]
    pub mount_timeout: Duration,
}

impl StorageSettings {
    pub fn datadir(&self) -> &Path {
        match self {
            StorageSettings::Efs(e) => &e.datadir,
            StorageSettings::Local { datadir, .. } => datadir,
        }
    }
}

/// The `[storage]` section for this host: the role's directory (`path_template` filled with `vars`),
/// on EFS or under `local_root` (in `local` mode, and for rpc nodes unless `[storage.rpc]` says
/// otherwise); owned by `storage.owner`, else by `service` (the
/// service user). The `EfsFileSystemId` and `EfsAccessPointId` tags override the file's ids.
pub fn section(
    st: &StorageFile,
    service: &Owner,
    tags: &HostTags,
    region: &str,
    local: bool,
    vars: &[(&str, &str)],
) -> Result<StorageSettings, Invalid> {
    let (kind, template) = st.place_of(tags.role);
    let key = match tags.role {
        Role::Rpc if !st.rpc.path_template.is_empty() => "storage.rpc.path_template",
        _ => "storage.path_template",
    };
    let at = Place {
        kind: if local { StorageKind::Local } else { kind },
        template: (key, template),
        datadir: &st.datadir,
        local_dir: None,
        access_point: tags
            .efs_access_point_id
            .clone()
            .map(Ok)
            .unwrap_or_else(|| Err(st.efs_access_point_id.as_str())),
        access_point_key: "storage.efs_access_point_id",
    };
    place(st, service, tags, region, vars, at)
}

/// Where one directory of the file system goes on this host (the role's, or the backups').
pub struct Place<'a> {
    pub kind: StorageKind,
    /// The key the template comes from, and the template.
    pub template: (&'static str, &'a str),
    /// The mount point on EFS.
    pub datadir: &'a Path,
    /// A local directory to use as is, instead of `local_root` + the filled template.
    pub local_dir: Option<&'a Path>,
    /// The access point: from a tag (`Ok`, checked), or as configured (`Err`, "" for none).
    pub access_point: Result<String, &'a str>,
    /// The key that configures it.
    pub access_point_key: &'static str,
}

/// The directory `at` describes, checked, with the file system settings of `[storage]`.
pub fn place(
    st: &StorageFile,
    service: &Owner,
    tags: &HostTags,
    region: &str,
    vars: &[(&str, &str)],
    at: Place<'_>,
) -> Result<StorageSettings, Invalid> {
    let (key, template) = at.template;
    let sub = fill(template, vars).map_err(invalid(key))?;
    if !sub.starts_with('/') || sub.split('/').any(|c| c == "..") {
        return Err(Invalid::new(
            key,
            format!("{sub:?} must be an absolute path inside the file system, without '..'"),
        ));
    }
    // The data directory belongs to the service user the agent and its children run as.
    let owner = Owner::parse(&st.owner, service.clone()).map_err(invalid("storage.owner"))?;
    if at.kind == StorageKind::Local {
        return Ok(StorageSettings::Local {
            datadir: match at.local_dir {
                Some(d) => d.to_owned(),
                None => st.local_root.join(sub.trim_start_matches('/')),
            },
            owner,
        });
    }
    let id =
        match (&tags.efs_file_system_id, st.efs_file_system_id.as_str()) {
            (Some(t), _) => t.clone(),
            (None, "") => return Err(Invalid::new(
                "storage.efs_file_system_id",
                "no EFS file system: set it in the config or tag the instance with EfsFileSystemId",
            )),
            (None, c) => check_fs_id(c).map_err(invalid("storage.efs_file_system_id"))?,
        };
    let dns_name = if st.efs_dns_name.is_empty() {
        efs_dns_name(&id, region)
    } else {
        check_host(&st.efs_dns_name).map_err(invalid("storage.efs_dns_name"))?;
        if st.efs_utils && st.efs_dns_name.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(Invalid::new(
                "storage.efs_dns_name",
                "with storage.efs_utils = true it must be the mount target's IPv4 address (passed as mounttargetip=), or empty",
            ));
        }
        st.efs_dns_name.clone()
    };
    check_mount_options(&st.efs_mount_options).map_err(invalid("storage.efs_mount_options"))?;
    let access_point_id = match at.access_point {
        Ok(t) => Some(t),
        Err("") => None,
        Err(c) => Some(check_access_point_id(c).map_err(invalid(at.access_point_key))?),
    };
    if access_point_id.is_some() && !st.efs_utils {
        return Err(Invalid::new(
            at.access_point_key,
            "an access point is mounted with amazon-efs-utils (mount -t efs -o tls,iam,accesspoint=): set storage.efs_utils = true, or remove the access point (config or EfsAccessPointId tag)",
        ));
    }
    at_least_a_second("storage.mount_timeout_secs", st.mount_timeout_secs)?;
    Ok(StorageSettings::Efs(EfsSettings {
        file_system_id: id,
        path: sub,
        datadir: at.datadir.to_owned(),
        dns_name,
        mount_options: st.efs_mount_options.clone(),
        efs_utils: st.efs_utils,
        access_point_id,
        owner,
        mount_timeout: Duration::from_secs(st.mount_timeout_secs),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_name_follows_the_region_partition() {
        assert_eq!(
            efs_dns_name("fs-0123456789abcdef0", "eu-central-1"),
            "fs-0123456789abcdef0.efs.eu-central-1.amazonaws.com"
        );
        assert_eq!(
            efs_dns_name("fs-12345678", "cn-north-1"),
            "fs-12345678.efs.cn-north-1.amazonaws.com.cn"
        );
    }

    #[test]
    fn mount_options_are_checked() {
        assert!(check_mount_options(EFS_MOUNT_OPTIONS).is_ok());
        assert!(check_mount_options(&format!("{EFS_MOUNT_OPTIONS},port=20490")).is_ok());
        assert!(check_mount_options("").unwrap_err().contains("nfsvers=4.1"));
        assert!(check_mount_options("hard,addr=1.2.3.4")
            .unwrap_err()
            .contains("addr="));
        assert!(check_mount_options("nfsvers=3")
            .unwrap_err()
            .contains("4.1"));
        assert!(check_mount_options("hard,,soft").is_err());
        assert!(check_mount_options("hard, soft").is_err());
    }

    #[test]
    fn hosts_are_names_or_ipv4() {
        for ok in ["fs-1.efs.eu-central-1.amazonaws.com", "10.0.2.2", "nfs"] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a..b", "-a.b", "a b", "[::1]", "h:2049", "x/y"] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn owner_is_a_name_or_numeric_ids() {
        let d = || Owner::User("geth".into());
        assert_eq!(Owner::parse("", d()).unwrap(), d());
        assert_eq!(
            Owner::parse("ethstats", d()).unwrap(),
            Owner::User("ethstats".into())
        );
        assert_eq!(
            Owner::parse("1000:1001", d()).unwrap(),
            Owner::Ids {
                uid: 1000,
                gid: 1001
            }
        );
        for bad in ["Geth", "1000:", "a:b", "geth user", "x/y"] {
            assert!(Owner::parse(bad, d()).is_err(), "{bad}");
        }
    }

    fn tags(role: Role, fs: Option<&str>, ap: Option<&str>) -> HostTags {
        HostTags {
            role,
            environment: "staging".into(),
            efs_file_system_id: fs.map(Into::into),
            efs_access_point_id: ap.map(Into::into),
        }
    }

    /// The example's `[storage]` (the defaults) with a file system set in the file.
    fn file() -> StorageFile {
        StorageFile {
            efs_file_system_id: "fs-11111111".into(),
            ..StorageFile::default()
        }
    }

    fn build(st: &StorageFile, tags: &HostTags, local: bool) -> Result<StorageSettings, Invalid> {
        let vars = [
            ("environment", tags.environment.as_str()),
            ("role", tags.role.as_str()),
            ("instance_id", "i-0abc"),
        ];
        let service = Owner::User("node-agent".into());
        section(st, &service, tags, "eu-central-1", local, &vars)
    }

    fn efs(st: &StorageFile, tags: &HostTags) -> Result<EfsSettings, String> {
        match build(st, tags, false) {
            Ok(StorageSettings::Efs(e)) => Ok(e),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(format!("{}: {}", e.key, e.problem)),
        }
    }

    #[test]
    fn the_tag_overrides_the_file_system_and_the_path_names_environment_and_role() {
        let e = efs(&file(), &tags(Role::Sealer, Some("fs-22222222"), None)).unwrap();
        assert_eq!(e.file_system_id, "fs-22222222");
        assert_eq!(e.path, "/staging/sealer");
        assert_eq!(e.dns_name, "fs-22222222.efs.eu-central-1.amazonaws.com");
        assert_eq!(e.owner, Owner::User("node-agent".into()));
        assert_eq!(e.mount_timeout, Duration::from_secs(300));
    }

    #[test]
    fn efs_mount_settings_are_validated_naming_their_key() {
        type Edit = Box<dyn Fn(&mut StorageFile)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "storage.efs_dns_name",
                Box::new(|s| s.efs_dns_name = "h:2049".into()),
            ),
            (
                "storage.efs_dns_name",
                Box::new(|s| {
                    s.efs_utils = true;
                    s.efs_dns_name = "nfs.internal".into();
                }),
            ),
            (
                "storage.efs_mount_options",
                Box::new(|s| s.efs_mount_options = "hard,addr=10.0.0.1".into()),
            ),
            (
                "storage.mount_timeout_secs",
                Box::new(|s| s.mount_timeout_secs = 0),
            ),
            ("storage.owner", Box::new(|s| s.owner = "root user".into())),
            (
                "storage.efs_access_point_id",
                Box::new(|s| {
                    s.efs_utils = true;
                    s.efs_access_point_id = "fsap-0123456789ABCDEF0".into();
                }),
            ),
            (
                "storage.efs_access_point_id",
                Box::new(|s| {
                    s.efs_utils = true;
                    s.efs_access_point_id = "fs-0123456789abcdef0".into();
                }),
            ),
            (
                "storage.efs_utils = true",
                Box::new(|s| s.efs_access_point_id = "fsap-0123456789abcdef0".into()),
            ),
            (
                "storage.path_template",
                Box::new(|s| s.path_template = "/{environment}/../x".into()),
            ),
            (
                "storage.path_template",
                Box::new(|s| s.path_template = "/{zone}".into()),
            ),
        ];
        for (key, edit) in cases {
            let mut f = file();
            edit(&mut f);
            let e = efs(&f, &tags(Role::Sealer, None, None)).unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn the_data_directory_belongs_to_the_service_user_unless_storage_owner_says() {
        let owner = |role: Role, local: bool, f: &StorageFile| match build(
            f,
            &tags(role, None, None),
            local,
        ) {
            Ok(StorageSettings::Efs(e)) => e.owner,
            Ok(StorageSettings::Local { owner, .. }) => owner,
            Err(e) => panic!("{e:?}"),
        };
        let mut f = file();
        let service = Owner::User("node-agent".into());
        // By default the data belongs to the service user, whatever the role or mode.
        assert_eq!(owner(Role::Sealer, false, &f), service);
        assert_eq!(owner(Role::Ethstats, false, &f), service);
        assert_eq!(owner(Role::Rpc, true, &f), service);
        f.owner = "1000:1000".into();
        assert_eq!(
            owner(Role::Rpc, true, &f),
            Owner::Ids {
                uid: 1000,
                gid: 1000
            }
        );
        f.efs_dns_name = "10.0.1.25".into();
        let e = efs(&f, &tags(Role::Sealer, None, None)).unwrap();
        assert_eq!(e.dns_name, "10.0.1.25");
    }

    #[test]
    fn an_access_point_comes_from_the_tag_or_the_config_and_keeps_the_roles_path() {
        let mut f = file();
        f.efs_utils = true;
        f.efs_access_point_id = "fsap-0000000000000000a".into();
        let ap = |tag: Option<&str>, f: &StorageFile| {
            efs(f, &tags(Role::Sealer, None, tag)).map(|e| {
                assert_eq!(
                    e.path, "/staging/sealer",
                    "the access point's root directory"
                );
                e.access_point_id
            })
        };
        let tagged = Some("fsap-0123456789abcdef0");
        assert_eq!(ap(None, &f), Ok(Some("fsap-0000000000000000a".into())));
        assert_eq!(ap(tagged, &f), Ok(Some("fsap-0123456789abcdef0".into())));
        f.efs_access_point_id.clear();
        assert_eq!(ap(None, &f), Ok(None));
        // The tag needs efs-utils as much as the config key does.
        f.efs_utils = false;
        let e = ap(tagged, &f).unwrap_err();
        assert!(e.contains("storage.efs_utils = true"), "{e}");
    }

    #[test]
    fn efs_without_a_file_system_says_where_to_set_it() {
        let e = efs(&StorageFile::default(), &tags(Role::Sealer, None, None)).unwrap_err();
        assert!(e.contains("EfsFileSystemId"), "{e}");
    }

    #[test]
    fn an_rpc_node_keeps_a_directory_of_its_own_on_its_disk_by_default() {
        let s = build(&file(), &tags(Role::Rpc, None, None), false).unwrap();
        assert!(
            matches!(&s, StorageSettings::Local { datadir, .. } if datadir == Path::new("/var/lib/node-agent/local/staging/rpc")),
            "{s:?}"
        );
        // The other roles keep theirs on EFS.
        assert!(efs(&file(), &tags(Role::Bootnode, None, None)).is_ok());
    }

    #[test]
    fn an_rpc_node_on_efs_has_a_directory_per_instance_with_its_own_template() {
        let mut f = file();
        f.rpc.kind = StorageKind::Efs;
        // One directory for every rpc node: allowed (one rpc node), `check` warns.
        assert_eq!(
            efs(&f, &tags(Role::Rpc, None, None)).unwrap().path,
            "/staging/rpc"
        );
        f.rpc.path_template = "/{environment}/rpc/{instance_id}".into();
        let e = efs(&f, &tags(Role::Rpc, None, None)).unwrap();
        assert_eq!(e.path, "/staging/rpc/i-0abc");
        // The sealer keeps its one directory.
        let s = efs(&f, &tags(Role::Sealer, None, None)).unwrap();
        assert_eq!(s.path, "/staging/sealer");
        f.rpc.path_template = "/{environment}/../{instance_id}".into();
        let e = efs(&f, &tags(Role::Rpc, None, None)).unwrap_err();
        assert!(e.starts_with("storage.rpc.path_template: "), "{e}");
    }

    #[test]
    fn local_mode_keeps_data_under_the_local_root() {
        let s = build(&file(), &tags(Role::Rpc, None, None), true).unwrap();
        assert_eq!(
            s.datadir(),
            Path::new("/var/lib/node-agent/local/staging/rpc")
        );
    }
}

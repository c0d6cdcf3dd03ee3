//! The `[backup]` section: which nodes export the chain, how often and in what segments, where the
//! segments go (a directory of the EFS file system, mounted like the role's), and whether a node with an
//! empty datadir seeds from them. The file's part, the typed [`BackupSettings`] and the check. Pure.

use super::checks::{at_least_a_second, check_absolute, invalid, Invalid};
use super::file::{BackupFile, StorageFile, StorageKind};
use super::storage::{self, Owner, Place, StorageSettings};
use super::tags::HostTags;
use crate::host::Role;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// Where the backups are, and what this host does with them.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSettings {
    pub place: StorageSettings,
    /// This host's node exports; `None` when it only seeds.
    pub export: Option<ExportSettings>,
    /// An empty datadir is restored from the newest backup before geth starts.
    pub seed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExportSettings {
    #[serde(skip)]
    pub interval: Duration,
    pub segment_blocks: u64,
    pub confirmations: u64,
}

/// `[backup]` for this host: `None` when it neither exports nor seeds (nothing is mounted then).
pub fn section(
    b: &BackupFile,
    st: &StorageFile,
    service: &Owner,
    tags: &HostTags,
    region: &str,
    local: bool,
    vars: &[(&str, &str)],
) -> Result<Option<BackupSettings>, Invalid> {
    let exporter = match b.role.as_str() {
        "" => None,
        r => match Role::parse(r).ok_or(()) {
            Ok(Role::Sealer) => return Err(Invalid::new(
                "backup.role",
                "the sealer never exports (an export holds geth's database while it seals): name a full node such as \"rpc\", or \"\" for none",
            )),
            Ok(Role::Rpc) => Some(Role::Rpc),
            Ok(other) => return Err(Invalid::new(
                "backup.role",
                format!("{other} runs no geth: name a full node such as \"rpc\", or \"\" for none"),
            )),
            Err(_) => return Err(Invalid::new(
                "backup.role",
                format!("{r:?} is not a role: \"rpc\", or \"\" for none"),
            )),
        },
    };
    let (export, seed) = uses(b, st, tags.role);
    debug_assert!(!export || exporter == Some(tags.role));
    at_least_a_second("backup.interval_secs", b.interval_secs)?;
    if b.segment_blocks == 0 {
        return Err(Invalid::new("backup.segment_blocks", "must be at least 1"));
    }
    check_absolute(&b.datadir).map_err(invalid("backup.datadir"))?;
    if !b.local_dir.as_os_str().is_empty() {
        check_absolute(&b.local_dir).map_err(invalid("backup.local_dir"))?;
    }
    if !export && !seed {
        return Ok(None);
    }
    let at = Place {
        kind: if local { StorageKind::Local } else { st.kind },
        template: ("backup.path_template", &b.path_template),
        datadir: &b.datadir,
        local_dir: Some(b.local_dir.as_path()).filter(|d| !d.as_os_str().is_empty()),
        access_point: Err(b.efs_access_point_id.as_str()),
        access_point_key: "backup.efs_access_point_id",
    };
    let place = storage::place(st, service, tags, region, vars, at)?;
    if place.datadir() == st.datadir || place.datadir() == storage_local(st, tags, vars) {
        return Err(Invalid::new(
            "backup.datadir",
            "the backups must be in a directory of their own, not the role's data directory",
        ));
    }
    Ok(Some(BackupSettings {
        place,
        export: export.then_some(ExportSettings {
            interval: Duration::from_secs(b.interval_secs),
            segment_blocks: b.segment_blocks,
            confirmations: b.confirmations,
        }),
        seed,
    }))
}

/// Whether a role's hosts export (`backup.role`) and seed (`storage.seed_from_backup`, a geth role).
pub fn uses(b: &BackupFile, st: &StorageFile, role: Role) -> (bool, bool) {
    (
        b.role == role.as_str() && role == Role::Rpc,
        st.seed_from_backup && role.runs_geth(),
    )
}

/// The role's local data directory, to keep the backups out of it.
fn storage_local(st: &StorageFile, tags: &HostTags, vars: &[(&str, &str)]) -> PathBuf {
    let (_, template) = st.place_of(tags.role);
    let sub = super::checks::fill(template, vars).unwrap_or_default();
    st.local_root.join(sub.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(role: Role) -> HostTags {
        HostTags {
            role,
            environment: "staging".into(),
            efs_file_system_id: Some("fs-11111111".into()),
            efs_access_point_id: None,
        }
    }

    fn build(
        b: &BackupFile,
        st: &StorageFile,
        role: Role,
    ) -> Result<Option<BackupSettings>, Invalid> {
        let vars = [
            ("environment", "staging"),
            ("role", role.as_str()),
            ("instance_id", "i-0abc"),
        ];
        let service = Owner::User("node-agent".into());
        section(b, st, &service, &tags(role), "eu-central-1", false, &vars)
    }

    #[test]
    fn the_rpc_node_exports_to_the_environments_backups_directory_on_efs() {
        let b = BackupFile::default();
        let s = build(&b, &StorageFile::default(), Role::Rpc)
            .unwrap()
            .unwrap();
        let StorageSettings::Efs(efs) = &s.place else {
            panic!("{:?}", s.place)
        };
        assert_eq!(efs.path, "/staging/backups");
        assert_eq!(efs.datadir, PathBuf::from("/var/lib/node-agent/backups"));
        assert_eq!(
            efs.access_point_id, None,
            "the role's access point is not the backups'"
        );
        let e = s.export.unwrap();
        assert_eq!((e.segment_blocks, e.confirmations), (10_000, 120));
        assert!(!s.seed);
    }

    #[test]
    fn other_roles_mount_nothing_unless_they_seed() {
        let b = BackupFile::default();
        let mut st = StorageFile::default();
        assert!(build(&b, &st, Role::Sealer).unwrap().is_none());
        assert!(build(&b, &st, Role::Bootnode).unwrap().is_none());
        st.seed_from_backup = true;
        let s = build(&b, &st, Role::Sealer).unwrap().unwrap();
        assert!(s.seed && s.export.is_none());
        // Nothing to seed without a geth.
        assert!(build(&b, &st, Role::Ethstats).unwrap().is_none());
    }

    #[test]
    fn bad_values_name_their_key() {
        type Edit = fn(&mut BackupFile);
        let cases: [(&str, Edit); 7] = [
            ("backup.efs_access_point_id", |b| {
                b.efs_access_point_id = "fsap-x".into()
            }),
            ("backup.role", |b| b.role = "sealer".into()),
            ("backup.role", |b| b.role = "bootnode".into()),
            ("backup.role", |b| b.role = "archive".into()),
            ("backup.interval_secs", |b| b.interval_secs = 0),
            ("backup.segment_blocks", |b| b.segment_blocks = 0),
            ("backup.path_template", |b| {
                b.path_template = "/{nope}".into()
            }),
        ];
        for (key, edit) in cases {
            let mut b = BackupFile::default();
            edit(&mut b);
            let e = build(&b, &StorageFile::default(), Role::Rpc).unwrap_err();
            assert_eq!(e.key, key, "{}", e.problem);
        }
        let mut b = BackupFile {
            datadir: "/var/lib/node-agent/data".into(),
            ..BackupFile::default()
        };
        let e = build(&b, &StorageFile::default(), Role::Rpc).unwrap_err();
        assert_eq!(e.key, "backup.datadir");
        // Off: nothing checked beyond the values, nothing mounted.
        b = BackupFile::default();
        b.role.clear();
        assert!(build(&b, &StorageFile::default(), Role::Rpc)
            .unwrap()
            .is_none());
    }

    #[test]
    fn with_local_storage_the_backups_are_a_local_directory() {
        let st = StorageFile {
            kind: StorageKind::Local,
            ..StorageFile::default()
        };
        let mut b = BackupFile::default();
        let s = build(&b, &st, Role::Rpc).unwrap().unwrap();
        assert_eq!(
            s.place.datadir(),
            PathBuf::from("/var/lib/node-agent/local/staging/backups")
        );
        b.local_dir = "/srv/shared-backups".into();
        let s = build(&b, &st, Role::Rpc).unwrap().unwrap();
        assert_eq!(s.place.datadir(), PathBuf::from("/srv/shared-backups"));
    }
}

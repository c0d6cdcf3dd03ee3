//! The sentinel, `.node-agent-storage.json`: whose data a directory holds (file system, environment,
//! role), compared on every boot and written on first use.

use super::{Host, StorageError};
use crate::config::storage::SENTINEL;
use crate::sys::safefs::Dir;
use serde::{Deserialize, Serialize};
use std::path::Path;

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

pub(super) fn expected_sentinel(
    host: &Host<'_>,
    file_system_id: Option<&str>,
    path: &str,
) -> Sentinel {
    Sentinel {
        file_system_id: file_system_id.map(str::to_owned),
        environment: host.environment.to_owned(),
        role: host.role.to_owned(),
        path: path.to_owned(),
        created_by: host.instance_id.to_owned(),
        created_at: crate::clock::now_unix(),
    }
}

/// The most a sentinel can be: it is a few hundred bytes of JSON.
const SENTINEL_MAX: usize = 64 * 1024;

/// Reads the sentinel and compares it, or writes it when the directory has none. The data directory may
/// belong to the service user (and on EFS, to every host's): the sentinel is read only if it is a regular
/// file, never through a link, and at most 64 KiB of it.
pub(super) fn check_or_create_sentinel(
    datadir: &Dir,
    expected: &Sentinel,
) -> Result<(), StorageError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

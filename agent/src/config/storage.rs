//! The storage settings' own vocabulary: the EFS mount options and DNS name, and who owns a data
//! directory. Pure: `config` checks them, `storage` acts on them.

use serde::Serialize;
use std::fmt;

/// The sentinel's file name, in the root of the data directory.
pub const SENTINEL: &str = ".node-agent-storage.json";

/// Mount flags for the data directory, as mount(8) options: geth keeps only data there, nothing to
/// execute. mount(2) takes them as flags, not in the NFS option string (the NFS parser rejects them).
pub const DATA_MOUNT_FLAGS: &str = "nosuid,nodev,noexec";

/// The NFS options AWS recommends for EFS (EFS user guide, "Mounting on Amazon EC2 with a DNS name").
pub const EFS_MOUNT_OPTIONS: &str =
    "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport";

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
    /// `storage.owner`: empty means `default`; `NAME` or `UID:GID` otherwise.
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
}

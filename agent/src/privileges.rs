//! Dropping root for good: after the root-only boot steps the agent becomes the role's service user, with
//! no supplementary groups and no capabilities, and so do all its children.

use crate::config::storage::Owner;
use nix::unistd::{Gid, Uid};

/// A resolved service user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub uid: Uid,
    pub gid: Gid,
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("service user {0:?} does not exist: install the sysusers.d file (systemd-sysusers) or set users.service to an existing user or uid:gid")]
    NoSuchUser(String),
    #[error("service user {spec:?} resolves to uid {uid} / gid {gid}: it must not be root")]
    Root { spec: String, uid: u32, gid: u32 },
    #[error("cannot look up user {spec:?} in /etc/passwd: {source}")]
    Lookup {
        spec: String,
        source: std::io::Error,
    },
    #[error("cannot {step} while dropping privileges: {source}")]
    Drop {
        step: &'static str,
        source: nix::Error,
    },
    #[error("privilege drop did not hold: {0}")]
    Verify(String),
}

/// Parses `UID:GID` or looks a user name up in the user database (the spelling `users.service` takes,
/// parsed by the one parser config uses).
pub fn resolve(spec: &str) -> Result<Account, PrivilegeError> {
    let (uid, gid) = match Owner::parse(spec, Owner::Agent) {
        Ok(Owner::Ids { uid, gid }) => (uid, gid),
        Ok(Owner::User(name)) => crate::sys::lookup_user(&name)
            .map_err(|source| PrivilegeError::Lookup {
                spec: spec.into(),
                source,
            })?
            .ok_or_else(|| PrivilegeError::NoSuchUser(spec.into()))?,
        Ok(Owner::Agent) | Err(_) => return Err(PrivilegeError::NoSuchUser(spec.into())),
    };
    let account = Account {
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(gid),
    };
    if account.uid.is_root() || account.gid.as_raw() == 0 {
        return Err(PrivilegeError::Root {
            spec: spec.into(),
            uid: account.uid.as_raw(),
            gid: account.gid.as_raw(),
        });
    }
    Ok(account)
}

/// Drops to `account` in the fixed order setgroups → setgid → setuid, sets no-new-privs, then checks it
/// cannot be undone and no capability is left.
pub fn drop_to(account: Account) -> Result<(), PrivilegeError> {
    let step = |step: &'static str| move |source| PrivilegeError::Drop { step, source };
    crate::sys::clear_groups().map_err(step("clear supplementary groups"))?;
    crate::sys::set_gids(account.gid).map_err(step("setgid"))?;
    crate::sys::set_uids(account.uid).map_err(step("setuid"))?;
    crate::sys::set_no_new_privs().map_err(step("set no_new_privs"))?;
    verify(account)
}

/// Proves the drop: regaining root fails, and /proc/self/status shows the account and no capabilities.
fn verify(account: Account) -> Result<(), PrivilegeError> {
    if crate::sys::can_become_root() {
        return Err(PrivilegeError::Verify(
            "setuid(0) succeeded after the drop".into(),
        ));
    }
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| PrivilegeError::Verify(format!("cannot read /proc/self/status: {e}")))?;
    check_status(&status, account).map_err(PrivilegeError::Verify)
}

/// Checks a /proc/PID/status text: every uid and gid field is the account's, no groups, no capability.
pub fn check_status(status: &str, account: Account) -> Result<(), String> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .ok_or_else(|| format!("no {name} line"))
    };
    let uid = account.uid.as_raw().to_string();
    let gid = account.gid.as_raw().to_string();
    let uids = field("Uid:")?;
    let gids = field("Gid:")?;
    if uids.len() != 4 || uids.iter().any(|u| *u != uid) {
        return Err(format!("Uid is {uids:?}, expected {uid} four times"));
    }
    if gids.len() != 4 || gids.iter().any(|g| *g != gid) {
        return Err(format!("Gid is {gids:?}, expected {gid} four times"));
    }
    if !field("Groups:")?.is_empty() {
        return Err("supplementary groups remain".into());
    }
    for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        let v = field(cap)?;
        if v.first().map(|x| x.trim_start_matches('0')) != Some("") {
            return Err(format!("{cap} {v:?} is not empty"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct() -> Account {
        Account {
            uid: Uid::from_raw(64001),
            gid: Gid::from_raw(64002),
        }
    }

    const GOOD: &str = "Name:\tgeth\nUid:\t64001\t64001\t64001\t64001\nGid:\t64002\t64002\t64002\t64002\nGroups:\t\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n";

    #[test]
    fn a_clean_drop_passes_the_status_check() {
        check_status(GOOD, acct()).unwrap();
    }

    #[test]
    fn any_root_id_group_or_capability_left_fails_the_check() {
        let cases = [
            GOOD.replace(
                "Uid:\t64001\t64001\t64001\t64001",
                "Uid:\t64001\t0\t64001\t64001",
            ),
            GOOD.replace(
                "Gid:\t64002\t64002\t64002\t64002",
                "Gid:\t64002\t64002\t0\t64002",
            ),
            GOOD.replace("Groups:\t\n", "Groups:\t27\n"),
            GOOD.replace("CapEff:\t0000000000000000", "CapEff:\t0000000000200000"),
            GOOD.replace("CapAmb:\t0000000000000000", "CapAmb:\t0000000000000001"),
            GOOD.replace("Gid:", "Xid:"),
        ];
        for bad in cases {
            assert!(check_status(&bad, acct()).is_err(), "{bad}");
        }
    }

    #[test]
    fn numeric_accounts_resolve_and_root_is_refused() {
        assert_eq!(resolve("64001:64002").unwrap(), acct());
        assert!(matches!(resolve("0:0"), Err(PrivilegeError::Root { .. })));
        assert!(matches!(resolve("root"), Err(PrivilegeError::Root { .. })));
        assert!(matches!(
            resolve("no-such-user-here"),
            Err(PrivilegeError::NoSuchUser(_))
        ));
    }
}

//! What a host is in the fleet: its role, and the names of the instance tags that say so.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The four roles of the chain; one per host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Sealer,
    Rpc,
    Bootnode,
    Ethstats,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Sealer, Role::Rpc, Role::Bootnode, Role::Ethstats];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sealer => "sealer",
            Role::Rpc => "rpc",
            Role::Bootnode => "bootnode",
            Role::Ethstats => "ethstats",
        }
    }

    /// Roles that run geth and keep a chain datadir.
    pub fn runs_geth(self) -> bool {
        matches!(self, Role::Sealer | Role::Rpc)
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The instance tags node-agent reads. Others (Name, aws:*) are ignored.
pub mod tag {
    pub const ROLE: &str = "Role";
    pub const ENVIRONMENT: &str = "Environment";
    pub const EFS_FILE_SYSTEM_ID: &str = "EfsFileSystemId";
    pub const EFS_ACCESS_POINT_ID: &str = "EfsAccessPointId";
}

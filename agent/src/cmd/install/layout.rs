//! What `install` lays out where: the files every host gets, and those from the pinned downloads, as
//! entries (path, source, mode, what to do with an existing file). Pure: decides, does nothing.

use std::path::{Path, PathBuf};

/// The unit, users and directories, embedded from `units/`.
pub const UNIT: &str = include_str!("../../../../units/node-agent.service");
pub const SYSUSERS: &str = include_str!("../../../../units/sysusers.d/node-agent.conf");
pub const TMPFILES: &str = include_str!("../../../../units/tmpfiles.d/node-agent.conf");
/// The development genesis (dev signer): installed only when `--genesis` is not given and none exists.
const DEV_GENESIS: &str = crate::chain::genesis::DEV;

/// Where everything goes, relative to the root. Units and their companions live in the local vendor
/// directories (`/usr/local/lib/...`), so `/etc` stays free for an operator's overrides.
pub mod paths {
    pub const BINARY: &str = "usr/local/bin/node-agent";
    pub const UNIT: &str = "usr/local/lib/systemd/system/node-agent.service";
    pub const SYSUSERS: &str = "usr/local/lib/sysusers.d/node-agent.conf";
    pub const TMPFILES: &str = "usr/local/lib/tmpfiles.d/node-agent.conf";
    pub const CONFIG: &str = "etc/node-agent/config.toml";
    pub const GENESIS: &str = "usr/share/node-agent/genesis.json";
    pub const GETH: &str = "usr/local/bin/geth";
    pub const BOOTNODE: &str = "usr/local/bin/bootnode";
    pub const ETHSTATS_WRAPPER: &str = "usr/local/bin/ethstats-server";
    pub const ETHSTATS_APP: &str = "opt/ethstats-server";
    pub const ETHSTATS_SECRET_LINK: &str = "opt/ethstats-server/ws_secret.json";
    /// Where node-agent writes the ethstats secret at run time (`secrets.dir` default).
    pub const ETHSTATS_SECRET_TARGET: &str = "/run/node-agent/secrets/ws_secret.json";
}

/// Starts the pinned ethstats server from its app directory: app.js reads `ws_secret.json` beside itself.
const ETHSTATS_WRAPPER: &str = "#!/bin/sh
# Installed by `node-agent install`: runs the pinned ethstats server (resources/versions.toml).
# app.js reads ws_secret.json beside itself, a link to the file node-agent writes in its private directory.
cd /opt/ethstats-server || exit 1
PATH=/usr/local/bin:/usr/bin:/bin
export PATH
exec node app.js
";

/// What to do when the file is already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Replace,
    Keep,
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Text(&'static str),
    File(PathBuf),
}

/// One thing to lay out under the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File {
        path: &'static str,
        source: Source,
        mode: u32,
        existing: Existing,
    },
    /// A whole directory tree copied from an unpacked archive; dirs 0755, files 0644 or 0755.
    Tree { path: &'static str, from: PathBuf },
    Symlink {
        path: &'static str,
        target: &'static str,
    },
}

impl Entry {
    pub fn path(&self) -> &'static str {
        match self {
            Entry::File { path, .. } | Entry::Tree { path, .. } | Entry::Symlink { path, .. } => {
                path
            }
        }
    }
}

/// The files every host gets, whatever was downloaded. Pure: decides, does nothing.
pub fn base_layout(binary: &Path, genesis: Option<&Path>) -> Vec<Entry> {
    vec![
        Entry::File {
            path: paths::BINARY,
            source: Source::File(binary.to_owned()),
            mode: 0o755,
            existing: Existing::Replace,
        },
        Entry::File {
            path: paths::UNIT,
            source: Source::Text(UNIT),
            mode: 0o644,
            existing: Existing::Replace,
        },
        Entry::File {
            path: paths::SYSUSERS,
            source: Source::Text(SYSUSERS),
            mode: 0o644,
            existing: Existing::Replace,
        },
        Entry::File {
            path: paths::TMPFILES,
            source: Source::Text(TMPFILES),
            mode: 0o644,
            existing: Existing::Replace,
        },
        // An operator's or user-data's configuration wins over the defaults.
        Entry::File {
            path: paths::CONFIG,
            source: Source::Text(crate::config::EXAMPLE),
            mode: 0o644,
            existing: Existing::Keep,
        },
        match genesis {
            Some(g) => Entry::File {
                path: paths::GENESIS,
                source: Source::File(g.to_owned()),
                mode: 0o644,
                existing: Existing::Replace,
            },
            None => Entry::File {
                path: paths::GENESIS,
                source: Source::Text(DEV_GENESIS),
                mode: 0o644,
                existing: Existing::Keep,
            },
        },
    ]
}

/// geth and bootnode from an unpacked alltools archive (`geth-alltools-…/geth`).
pub fn geth_layout(unpacked_top: &Path) -> Vec<Entry> {
    vec![
        Entry::File {
            path: paths::GETH,
            source: Source::File(unpacked_top.join("geth")),
            mode: 0o755,
            existing: Existing::Replace,
        },
        Entry::File {
            path: paths::BOOTNODE,
            source: Source::File(unpacked_top.join("bootnode")),
            mode: 0o755,
            existing: Existing::Replace,
        },
    ]
}

/// The ethstats app from its exported source tree, its wrapper, and the link to the secret.
pub fn ethstats_layout(unpacked_top: &Path) -> Vec<Entry> {
    vec![
        Entry::Tree {
            path: paths::ETHSTATS_APP,
            from: unpacked_top.to_owned(),
        },
        Entry::Symlink {
            path: paths::ETHSTATS_SECRET_LINK,
            target: paths::ETHSTATS_SECRET_TARGET,
        },
        Entry::File {
            path: paths::ETHSTATS_WRAPPER,
            source: Source::Text(ETHSTATS_WRAPPER),
            mode: 0o755,
            existing: Existing::Replace,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_name_the_installed_paths() {
        assert!(UNIT.contains(&format!("ExecStart=/{} run", paths::BINARY)));
        assert!(UNIT.contains(&format!("ExecStartPre=+/{} prepare", paths::BINARY)));
        assert!(TMPFILES.contains("/run/node-agent/secrets           0700 node-agent node-agent"));
        // The service user matches the config default and has a fixed uid (it owns the data on EFS).
        assert!(SYSUSERS.contains("u node-agent     64100:64100"));
        assert!(crate::config::EXAMPLE.contains("service = \"node-agent\""));
        // The ethstats link points into the default secrets directory.
        assert!(crate::config::EXAMPLE.contains("dir = \"/run/node-agent/secrets\""));
        assert!(paths::ETHSTATS_SECRET_TARGET.starts_with("/run/node-agent/secrets/"));
    }
}

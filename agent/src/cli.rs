//! Command-line definitions only.

use crate::config::Role;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Bootstraps and supervises one host of a private geth Clique chain.
#[derive(Debug, Parser)]
#[command(name = "node-agent", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bootstrap this host and supervise its role until SIGTERM.
    Run(HostArgs),
    /// Print the plan for this host without changing anything; exit 0 when it is valid.
    Check {
        #[command(flatten)]
        host: HostArgs,
        /// Print the plan as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Print the agent version and the pinned component versions.
    Version {
        #[arg(long)]
        json: bool,
    },
    /// Install this binary, the systemd unit, users, directories, config and genesis under a root, and
    /// the pinned downloads after checking their sha256.
    Install(InstallArgs),
}

/// `node-agent install`: lay out a host under a root (used by the bake and the boot test).
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Root to install into: / when baking a host, a scratch directory in tests.
    #[arg(long, value_name = "DIR", required_unless_present = "print_downloads")]
    pub root: Option<PathBuf>,
    /// The geth alltools archive (geth + bootnode); its sha256 must match geth.sha256 in versions.toml.
    #[arg(long, value_name = "PATH")]
    pub geth_archive: Option<PathBuf>,
    /// The ethstats server's source archive; its sha256 must match ethstats.sha256.
    #[arg(long, value_name = "PATH")]
    pub ethstats_archive: Option<PathBuf>,
    /// The chain's genesis [default: keep the installed one, else the built-in development genesis].
    #[arg(long, value_name = "PATH")]
    pub genesis: Option<PathBuf>,
    /// Also create the users and directories and enable the unit (systemd-sysusers, systemd-tmpfiles,
    /// systemctl, all with --root).
    #[arg(long)]
    pub enable: bool,
    /// Print the pinned downloads (name, URL, sha256, file name; tab-separated) and exit. Fails while a
    /// checksum or commit in versions.toml is empty.
    #[arg(long, conflicts_with_all = ["root", "geth_archive", "ethstats_archive", "genesis", "enable"])]
    pub print_downloads: bool,
}

/// Where the host's identity and configuration come from.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// Configuration file [default: /etc/node-agent/config.toml; with --local and no file there, the built-in defaults].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Local mode: identity from flags instead of IMDS, secrets from a local directory, storage in a local
    /// directory. No AWS needed.
    #[arg(long)]
    pub local: bool,
    /// Role in local mode.
    #[arg(long, requires = "local", value_enum)]
    pub role: Option<Role>,
    /// Environment in local mode, e.g. dev.
    #[arg(long, requires = "local", value_name = "NAME")]
    pub environment: Option<String>,
    /// Instance id in local mode [default: local-<hostname>].
    #[arg(long, requires = "local", value_name = "ID")]
    pub instance_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn role_flag_needs_local_mode() {
        let e = Cli::try_parse_from(["node-agent", "check", "--role", "rpc"]).unwrap_err();
        assert!(e.to_string().contains("--local"), "{e}");
    }
}

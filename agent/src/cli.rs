//! Command-line definitions only.

use crate::host::Role;
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
    /// Only the root-only boot steps (storage, directories, the secrets tmpfs), then exit: the unit runs
    /// this as root before `run` starts unprivileged.
    Prepare(HostArgs),
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
    /// Ask the running agent how this host is doing. Exit 0 healthy, 1 degraded, 2 down, 3 not running.
    Status(StatusArgs),
    /// Print a secret's current value (a drop-in for get_secret.py), or write it to a file.
    GetSecret(GetSecretArgs),
    /// Print the least-privilege IAM policy for a role's instance profile.
    IamPolicy(IamPolicyArgs),
    /// Install this binary, the systemd unit, users, directories, config and genesis under a root, and
    /// the pinned downloads after checking their sha256.
    Install(InstallArgs),
    /// Chain backups: a round now on the exporting node (--now), the segments (--list), or a check of
    /// every segment against the manifest (--verify).
    Backup(BackupArgs),
    /// Restore the backups into an empty datadir, offline: geth init, geth import of every segment,
    /// then the head checked against the manifest. Run it as the service user.
    Restore(RestoreArgs),
    /// Empty the secrets directory and unmount its tmpfs (the unit runs this as root after every stop,
    /// crash or kill included).
    Cleanup {
        /// Configuration file, for secrets.dir [default: /etc/node-agent/config.toml].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status as one JSON document (schema in the README).
    #[arg(long)]
    pub json: bool,
    /// Refresh in place every --interval seconds until interrupted.
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
    #[arg(long, value_name = "SECS", default_value_t = 2, requires = "watch")]
    pub interval: u64,
    /// Configuration file, for the socket and log paths [default: /etc/node-agent/config.toml].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The agent's status socket [default: RUNTIME_DIR/status.sock from the config].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GetSecretArgs {
    /// Secret name or ARN.
    pub name: String,
    /// Print one field of a JSON secret.
    #[arg(long, value_name = "KEY")]
    pub field: Option<String>,
    /// Staging label to read.
    #[arg(long, value_name = "STAGE", default_value = "AWSCURRENT")]
    pub version_stage: String,
    /// Write the value to this file atomically instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Mode of --out, octal.
    #[arg(long, value_name = "MODE", default_value = "0400", requires = "out", value_parser = parse_mode)]
    pub mode: u32,
    /// Owner of --out: a user name or uid:gid.
    #[arg(long, value_name = "USER", requires = "out")]
    pub owner: Option<String>,
    /// Give up after this many seconds of throttling or network errors.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode such as 0400"))
}

#[derive(Debug, Args)]
pub struct IamPolicyArgs {
    /// Configuration file [default: /etc/node-agent/config.toml].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub role: Role,
    /// Environment, e.g. production.
    #[arg(long, value_name = "NAME", value_parser = crate::config::check_environment)]
    pub environment: String,
    /// Region of the ARNs, e.g. eu-central-1.
    #[arg(long, value_name = "REGION", value_parser = parse_region)]
    pub region: String,
    /// Account of the ARNs: 12 digits.
    #[arg(long, value_name = "ID", value_parser = parse_account_id)]
    pub account_id: String,
    /// EFS file system, when the config leaves it to the EfsFileSystemId tag.
    #[arg(long, value_name = "FS_ID", value_parser = crate::config::check_fs_id)]
    pub efs_file_system_id: Option<String>,
    /// EFS access point of this role, when the config leaves it to the EfsAccessPointId tag.
    #[arg(long, value_name = "FSAP_ID", value_parser = crate::config::check_access_point_id)]
    pub efs_access_point_id: Option<String>,
    /// Print this role's EFS file system policy (mount only through its access point, only over TLS)
    /// instead of the identity policy.
    #[arg(long, requires = "role_arn")]
    pub file_system_policy: bool,
    /// The instance profile's IAM role, the principal of --file-system-policy.
    #[arg(long, value_name = "ARN", requires = "file_system_policy", value_parser = parse_role_arn)]
    pub role_arn: Option<String>,
}

/// An AWS region name such as eu-central-1 or us-gov-west-1; never a wildcard.
fn parse_region(s: &str) -> Result<String, String> {
    let parts: Vec<&str> = s.split('-').collect();
    let ok = parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("must be a region name such as eu-central-1 (no wildcards: the policy names exact ARNs)".into())
    }
}

/// A 12-digit AWS account id.
fn parse_account_id(s: &str) -> Result<String, String> {
    if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(s.to_owned())
    } else {
        Err("must be 12 digits, e.g. 123456789012 (aws sts get-caller-identity shows it)".into())
    }
}

/// `arn:PARTITION:iam::ACCOUNT:role/NAME`.
fn parse_role_arn(s: &str) -> Result<String, String> {
    let ok = s.strip_prefix("arn:aws").and_then(|r| {
        let (_, rest) = r.split_once(":iam::")?;
        let (account, name) = rest.split_once(":role/")?;
        Some(parse_account_id(account).is_ok() && !name.is_empty() && !name.contains('*'))
    });
    if ok == Some(true) {
        Ok(s.to_owned())
    } else {
        Err(
            "must be an IAM role ARN such as arn:aws:iam::123456789012:role/production-sealer"
                .into(),
        )
    }
}

/// `node-agent install`: lay out a host under a root (used by the bake and the boot test).
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Root to install into: / when baking a host, a scratch directory in tests.
    #[arg(long, value_name = "DIR", required_unless_present = "print_downloads")]
    pub root: Option<PathBuf>,
    /// The geth alltools archive (geth + bootnode); its sha256 must match geth.sha256 in the pins. (Its
    /// signature is checked before, by the bake: bake/provision.sh.)
    #[arg(long, value_name = "PATH")]
    pub geth_archive: Option<PathBuf>,
    /// A git clone of the ethstats server checked out at ethstats.commit of the pins; that commit's tree
    /// is installed (git archive).
    #[arg(long, value_name = "DIR")]
    pub ethstats_source: Option<PathBuf>,
    /// The chain's genesis [default: keep the installed one, else the built-in development genesis].
    #[arg(long, value_name = "PATH")]
    pub genesis: Option<PathBuf>,
    /// Also create the users and directories and enable the unit (systemd-sysusers, systemd-tmpfiles,
    /// systemctl, all with --root).
    #[arg(long)]
    pub enable: bool,
    /// A versions.toml to use instead of the built-in one, for the bake's tests (a throwaway-signed
    /// archive) and for baking other versions; a release bake uses the built-in pins.
    #[arg(long, value_name = "FILE")]
    pub pins: Option<PathBuf>,
    /// Print the pinned downloads as key=value lines (geth.url, geth.sha256, geth.file,
    /// geth.signature_url, geth.signing_key, geth.signing_key_fingerprint, ethstats.repository,
    /// ethstats.commit) and exit. Fails while a pin is empty or malformed.
    #[arg(long, conflicts_with_all = ["root", "geth_archive", "ethstats_source", "genesis", "enable"])]
    pub print_downloads: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["now", "list", "verify"])))]
pub struct BackupArgs {
    #[command(flatten)]
    pub host: HostArgs,
    /// Run a round now on this host's running agent (it must be the exporter) and say what it wrote.
    #[arg(long)]
    pub now: bool,
    /// The segments: range, size, age, and who exported them.
    #[arg(long)]
    pub list: bool,
    /// Re-read every segment and check it against the manifest (sha256, block range, hashes); exit 1
    /// naming each bad one.
    #[arg(long)]
    pub verify: bool,
    /// The backups' directory [default: backup.datadir (mounted on the hosts that export or seed)].
    #[arg(long, value_name = "DIR", conflicts_with = "now")]
    pub from: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub host: HostArgs,
    /// The datadir to restore into: empty, or not yet there. geth must not run on it.
    #[arg(long, value_name = "DATADIR")]
    pub into: PathBuf,
    /// The backups' directory [default: backup.datadir (mounted on the hosts that export or seed)].
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
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
    #[arg(long, requires = "local", required_if_eq("local", "true"), value_enum)]
    pub role: Option<Role>,
    /// Environment in local mode, e.g. dev.
    #[arg(
        long,
        requires = "local",
        required_if_eq("local", "true"),
        value_name = "NAME",
        value_parser = crate::config::check_environment
    )]
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
    fn modes_are_octal() {
        assert_eq!(parse_mode("0400"), Ok(0o400));
        assert_eq!(parse_mode("640"), Ok(0o640));
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("rw").is_err());
    }

    #[test]
    fn iam_policy_needs_an_exact_region_and_account_and_names_the_flag_that_is_wrong() {
        let base = [
            "node-agent",
            "iam-policy",
            "--role",
            "sealer",
            "--environment",
            "staging",
        ];
        let parse = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            Cli::try_parse_from(args)
        };
        let e = parse(&["--region", "eu-central-1"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--account-id"), "{e}");
        let e = parse(&["--account-id", "123456789012"]).unwrap_err();
        assert!(e.to_string().contains("--region"), "{e}");
        for (flag, value, says) in [
            ("--account-id", "*", "must be 12 digits"),
            ("--account-id", "12345678901", "must be 12 digits"),
            ("--region", "*", "no wildcards"),
            ("--region", "eu-central", "region name"),
        ] {
            let mut extra = vec!["--region", "eu-central-1", "--account-id", "123456789012"];
            let i = extra.iter().position(|a| *a == flag).unwrap();
            extra[i + 1] = value;
            let e = parse(&extra).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
            let text = e.to_string();
            assert!(text.contains(flag) && text.contains(says), "{text}");
        }
        let ok = parse(&["--region", "us-gov-west-1", "--account-id", "123456789012"]);
        assert!(ok.is_ok(), "{ok:?}");
        // The file system policy needs its principal, and the principal only makes sense there.
        let e = parse(&[
            "--region",
            "eu-central-1",
            "--account-id",
            "123456789012",
            "--file-system-policy",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("--role-arn"), "{e}");
        assert_eq!(
            parse_role_arn("arn:aws:iam::123456789012:role/staging-sealer"),
            Ok("arn:aws:iam::123456789012:role/staging-sealer".into())
        );
        assert!(parse_role_arn("arn:aws:iam::*:role/x").is_err());
        assert!(parse_role_arn("arn:aws:iam::123456789012:user/x").is_err());
    }

    #[test]
    fn local_mode_without_role_or_environment_is_a_usage_error_naming_the_flag() {
        for (args, flag) in [
            (vec!["check", "--local", "--environment", "dev"], "--role"),
            (vec!["run", "--local", "--role", "rpc"], "--environment"),
        ] {
            let e = Cli::try_parse_from(std::iter::once("node-agent").chain(args)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
            assert!(e.to_string().contains(flag), "{e}");
        }
    }

    #[test]
    fn a_bad_environment_flag_is_a_usage_error_naming_the_flag_not_a_tag() {
        for args in [
            vec![
                "check",
                "--local",
                "--role",
                "rpc",
                "--environment",
                "Dev_1",
            ],
            vec![
                "iam-policy",
                "--role",
                "rpc",
                "--environment",
                "Dev_1",
                "--region",
                "eu-central-1",
                "--account-id",
                "123456789012",
            ],
        ] {
            let e = Cli::try_parse_from(std::iter::once("node-agent").chain(args)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
            let text = e.to_string();
            assert!(
                text.contains("--environment") && !text.contains("instance tag"),
                "{text}"
            );
        }
    }

    #[test]
    fn role_flag_needs_local_mode() {
        let e = Cli::try_parse_from(["node-agent", "check", "--role", "rpc"]).unwrap_err();
        assert!(e.to_string().contains("--local"), "{e}");
    }
}

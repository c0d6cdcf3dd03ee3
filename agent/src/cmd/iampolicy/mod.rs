//! `node-agent iam-policy`: the least-privilege policy for a role's instance profile, computed from the
//! same plan `run` carries out, so it names exactly the secrets and log group that role touches; and,
//! with `--file-system-policy`, the role's part of the EFS file system policy.

use crate::cli::IamPolicyArgs;
use crate::config::{self, ConfigError, ConfigFile, EfsSettings, Settings, StorageSettings};
use crate::imds;
use crate::plan::{self, Plan};
use serde_json::{json, Value};
use std::path::Path;

/// Why no policy could be printed.
#[derive(Debug, thiserror::Error)]
pub enum IamPolicyError {
    #[error(transparent)]
    Stdout(#[from] crate::out::StdoutError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Genesis(#[from] crate::chain::genesis::GenesisError),
    #[error("iam-policy --file-system-policy: {environment}/{role} mounts nothing of EFS (its data is local, and it neither exports nor seeds backups): there is no file system policy to print")]
    NotEfs { environment: String, role: String },
    #[error("iam-policy --file-system-policy: {environment}/{role} mounts a directory without an EFS access point: pass --efs-access-point-id fsap-… or set storage.efs_access_point_id, and backup.efs_access_point_id for the backups' directory (without one, IAM cannot tell the directories apart)")]
    NoAccessPoint { environment: String, role: String },
    #[error("iam-policy: {environment}/{role} keeps its data on EFS and no file system is given, but {why}: pass --efs-file-system-id fs-… (or set storage.efs_file_system_id in the --config file)")]
    NoFileSystem {
        environment: String,
        role: String,
        why: &'static str,
    },
    #[error("iam-policy: --role-arn {arn} is in another account than --account-id {account}")]
    OtherAccount { arn: String, account: String },
}

/// The ARN partition of a region: `aws`, `aws-cn` or `aws-us-gov`.
fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// Where an ARN is: partition, region, account.
struct Arns<'a> {
    partition: &'static str,
    region: &'a str,
    account: &'a str,
}

impl Arns<'_> {
    fn of(&self, service: &str, resource: &str) -> String {
        format!(
            "arn:{}:{service}:{}:{}:{resource}",
            self.partition, self.region, self.account
        )
    }

    fn file_system(&self, efs: &EfsSettings) -> String {
        self.of(
            "elasticfilesystem",
            &format!("file-system/{}", efs.file_system_id),
        )
    }

    fn access_point(&self, access_point_id: &str) -> String {
        self.of(
            "elasticfilesystem",
            &format!("access-point/{access_point_id}"),
        )
    }
}

/// The EFS actions a role needs. Without an access point, efs-utils mounts as root and root creates and
/// chowns the role's directory: that needs ClientRootAccess. Through an access point every operation
/// runs as its POSIX user and its CreationInfo creates the directory: root access is never needed.
fn efs_actions(efs: &EfsSettings) -> Value {
    if efs.efs_utils && efs.access_point_id.is_none() {
        json!([
            "elasticfilesystem:ClientMount",
            "elasticfilesystem:ClientWrite",
            "elasticfilesystem:ClientRootAccess"
        ])
    } else {
        json!([
            "elasticfilesystem:ClientMount",
            "elasticfilesystem:ClientWrite"
        ])
    }
}

/// The host's directories on EFS: the role's, and the backups' on the hosts that export or seed (both of
/// one file system).
fn efs_places<'a>(plan: &'a Plan, settings: &'a Settings) -> Vec<&'a EfsSettings> {
    let backups = settings.backup.as_ref().map(|b| &b.place);
    std::iter::once(&plan.storage)
        .chain(backups)
        .filter_map(|p| match p {
            StorageSettings::Efs(e) => Some(e),
            StorageSettings::Local { .. } => None,
        })
        .collect()
}

/// The identity policy document. Pure.
pub fn policy(plan: &Plan, settings: &Settings, region: &str, account: &str) -> Value {
    let arns = Arns {
        partition: partition(region),
        region,
        account,
    };
    let mut statements = Vec::new();
    if !plan.secrets.is_empty() {
        // Secrets Manager appends six random characters to a secret's ARN.
        let arns: Vec<String> = plan
            .secrets
            .iter()
            .map(|s| {
                arns.of(
                    "secretsmanager",
                    &format!("secret:{}-??????", s.reference.name),
                )
            })
            .collect();
        statements.push(json!({
            "Sid": "ReadThisRolesSecrets",
            "Effect": "Allow",
            "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
            "Resource": arns,
        }));
        if let Some(key) = &settings.secrets.kms_key_arn {
            statements.push(json!({
                "Sid": "DecryptSecretsWithTheirKey",
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": key,
                // Only for Secrets Manager decrypting this role's secrets, never a direct Decrypt call.
                "Condition": {"StringEquals": {"kms:ViaService": format!("secretsmanager.{region}.amazonaws.com")}},
            }));
        }
    }
    // Exactly the calls the shipper makes. Log-group actions (CreateLogGroup, PutRetentionPolicy) are
    // authorized on the group's ARN, stream actions on `GROUP:*`; AWS documents both forms, so both go in.
    let group_arn = arns.of("logs", &format!("log-group:{}", plan.agent_log.group));
    // Groups made beforehand (logs.create_group = false) need neither group action.
    let actions = match settings.logs.create_group {
        true => json!([
            "logs:CreateLogGroup",
            "logs:PutRetentionPolicy",
            "logs:CreateLogStream",
            "logs:PutLogEvents"
        ]),
        false => json!(["logs:CreateLogStream", "logs:PutLogEvents"]),
    };
    statements.push(json!({
        "Sid": "ShipThisRolesLogs",
        "Effect": "Allow",
        "Action": actions,
        "Resource": [group_arn.clone(), format!("{group_arn}:*")],
    }));
    let places = efs_places(plan, settings);
    if let Some(efs) = places.first() {
        // Needed when the file system policy requires IAM authorization (mount -o iam); harmless otherwise.
        let root = places
            .iter()
            .find(|e| e.efs_utils && e.access_point_id.is_none());
        let mut s = json!({
            "Sid": "MountThisRolesFileSystem",
            "Effect": "Allow",
            "Action": efs_actions(root.unwrap_or(efs)),
            "Resource": arns.file_system(efs),
        });
        // Limited to the access points only when every directory is mounted through one.
        let aps: Option<Vec<String>> = places
            .iter()
            .map(|e| e.access_point_id.as_deref().map(|ap| arns.access_point(ap)))
            .collect();
        match aps.as_deref() {
            Some([one]) => {
                s["Condition"] = json!({"StringEquals": {"elasticfilesystem:AccessPointArn": one}})
            }
            Some(many) => {
                s["Condition"] = json!({"StringEquals": {"elasticfilesystem:AccessPointArn": many}})
            }
            None => {}
        }
        statements.push(s);
    }
    if let Some(hook) = &settings.health.drain.hook {
        let mut s = json!({
            "Sid": "CompleteThisRolesTerminationHook",
            "Effect": "Allow",
            "Action": "autoscaling:CompleteLifecycleAction",
            "Resource": arns.of(
                "autoscaling",
                &format!("autoScalingGroup:*:autoScalingGroupName/{}", hook.group),
            ),
        });
        // The group is named by the instance's tag at run time: any group tagged for this role.
        if hook.group == "*" {
            s["Condition"] = json!({"StringEquals": {
                format!("autoscaling:ResourceTag/{}", crate::host::tag::ENVIRONMENT): plan.environment,
                format!("autoscaling:ResourceTag/{}", crate::host::tag::ROLE): plan.role.as_str(),
            }});
        }
        statements.push(s);
    }
    json!({"Version": "2012-10-17", "Statement": statements})
}

/// The role's part of the EFS file system policy: this role may mount and write only through its access
/// point, and nobody may use the file system without TLS. Statements of several roles merge into one
/// policy (the Deny is the same in each, the Allow's Sid names the environment and role). Pure.
pub fn file_system_policy(
    efs: &EfsSettings,
    access_points: &[&str],
    environment: &str,
    role: &str,
    role_arn: &str,
    region: &str,
    account: &str,
) -> Value {
    let arns = Arns {
        partition: partition(region),
        region,
        account,
    };
    let fs = arns.file_system(efs);
    let aps = match access_points {
        [one] => json!(arns.access_point(one)),
        many => json!(many
            .iter()
            .map(|a| arns.access_point(a))
            .collect::<Vec<_>>()),
    };
    // Sids are letters and digits only.
    let sid: String = format!("Mount-{environment}-{role}-ThroughItsAccessPoint")
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": sid,
                "Effect": "Allow",
                "Principal": {"AWS": role_arn},
                "Action": efs_actions(efs),
                "Resource": fs,
                "Condition": {
                    "StringEquals": {"elasticfilesystem:AccessPointArn": aps},
                    "Bool": {"elasticfilesystem:AccessedViaMountTarget": "true"},
                },
            },
            {
                "Sid": "DenyWithoutTls",
                "Effect": "Deny",
                "Principal": {"AWS": "*"},
                "Action": [
                    "elasticfilesystem:ClientMount",
                    "elasticfilesystem:ClientWrite",
                    "elasticfilesystem:ClientRootAccess"
                ],
                "Resource": fs,
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
        ],
    })
}

/// `node-agent iam-policy`. Runs where Terraform runs, not on a host: without `--config` and with no
/// `/etc/node-agent/config.toml` it takes the built-in defaults, and it reads only the keys the policy
/// depends on (no genesis: the policy does not depend on the chain's signers).
/// A lifecycle hook's group not named in the file is the instance's `aws:autoscaling:groupName` tag,
/// known only there: the grant is on any group tagged for this environment and role.
fn group_known_on_the_instance(file: &ConfigFile, id: &mut imds::Identity) {
    if file.health.autoscaling_group.is_empty() {
        id.tags.insert(config::health::GROUP_TAG.into(), "*".into());
    }
}

pub fn run(args: &IamPolicyArgs) -> Result<(), IamPolicyError> {
    let default = Path::new(config::DEFAULT_PATH);
    let path = match &args.config {
        Some(p) => Some(p.as_path()),
        None => Some(default).filter(|p| p.exists()),
    };
    let (mut file, path) = ConfigFile::load(path)?;
    // The genesis and the signer shape the sealer's command line, never its grants.
    file.chain.signer.clear();
    let genesis = crate::chain::genesis::Genesis::dev()?;
    let (environment, role) = (args.environment.clone(), args.role.as_str().to_owned());
    let (export, seed) = config::backup::uses(&file.backup, &file.storage, args.role);
    let efs = file.storage.place_of(args.role).0 == config::StorageKind::Efs
        || (file.storage.kind == config::StorageKind::Efs && (export || seed));
    if efs && args.efs_file_system_id.is_none() && file.storage.efs_file_system_id.is_empty() {
        if args.file_system_policy || file.storage.efs_utils {
            return Err(IamPolicyError::NoFileSystem {
                environment,
                role,
                why: if args.file_system_policy {
                    "the file system policy names it"
                } else {
                    "storage.efs_utils = true mounts with IAM authorization"
                },
            });
        }
        // Plain NFS mounts never ask IAM: the policy is complete without the EFS statement.
        eprintln!("node-agent: note: no EFS file system given (--efs-file-system-id or storage.efs_file_system_id): the policy has no elasticfilesystem statement, which plain NFS mounts (storage.efs_utils = false) do not use");
        file.storage.kind = config::StorageKind::Local;
        file.storage.rpc.kind = config::StorageKind::Local;
    }
    let mut id = imds::local(args.role.as_str(), &args.environment, Some("i-any"));
    id.region = args.region.clone();
    for (tag, value) in [
        (
            crate::host::tag::EFS_FILE_SYSTEM_ID,
            &args.efs_file_system_id,
        ),
        (
            crate::host::tag::EFS_ACCESS_POINT_ID,
            &args.efs_access_point_id,
        ),
    ] {
        if let Some(v) = value {
            id.tags.insert(tag.into(), v.clone());
        }
    }
    group_known_on_the_instance(&file, &mut id);
    let settings = Settings::with_genesis(&file, &path, &id, false, genesis)?;
    let plan = plan::plan(&id, &settings);
    let doc = match &args.role_arn {
        Some(arn) if args.file_system_policy => {
            if !arn.contains(&format!(":iam::{}:", args.account_id)) {
                return Err(IamPolicyError::OtherAccount {
                    arn: arn.clone(),
                    account: args.account_id.clone(),
                });
            }
            let (environment, role) = (args.environment.clone(), args.role.as_str().to_owned());
            let places = efs_places(&plan, &settings);
            let Some(efs) = places.first() else {
                return Err(IamPolicyError::NotEfs { environment, role });
            };
            let Some(aps) = places
                .iter()
                .map(|e| e.access_point_id.as_deref())
                .collect::<Option<Vec<&str>>>()
            else {
                return Err(IamPolicyError::NoAccessPoint { environment, role });
            };
            file_system_policy(
                efs,
                &aps,
                &environment,
                &role,
                arn,
                &args.region,
                &args.account_id,
            )
        }
        _ => policy(&plan, &settings, &args.region, &args.account_id),
    };
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    crate::out::print(text + "\n")?;
    Ok(())
}

#[cfg(test)]
mod tests;

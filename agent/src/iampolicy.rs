//! `node-agent iam-policy`: the least-privilege policy for a role's instance profile, computed from the
//! same plan `run` carries out, so it names exactly the secrets and log group that role touches.

use crate::cli::IamPolicyArgs;
use crate::config::{self, ConfigFile, Settings, StorageSettings};
use crate::identity;
use crate::plan::{self, Plan};
use serde_json::{json, Value};
use std::path::Path;

/// The policy document. Pure.
pub fn policy(plan: &Plan, settings: &Settings, region: &str, account: &str) -> Value {
    let mut statements = Vec::new();
    if !plan.secrets.is_empty() {
        // Secrets Manager appends six random characters to a secret's ARN.
        let arns: Vec<String> = plan
            .secrets
            .iter()
            .map(|s| {
                format!(
                    "arn:aws:secretsmanager:{region}:{account}:secret:{}-??????",
                    s.reference.name
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
            let mut s = json!({
                "Sid": "DecryptSecretsWithTheirKey",
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": key,
            });
            if region != "*" {
                s["Condition"] = json!({"StringEquals": {"kms:ViaService": format!("secretsmanager.{region}.amazonaws.com")}});
            }
            statements.push(s);
        }
    }
    let group = &plan.agent_log.group;
    let group_arn = format!("arn:aws:logs:{region}:{account}:log-group:{group}");
    statements.push(json!({
        "Sid": "CreateThisRolesLogGroup",
        "Effect": "Allow",
        "Action": ["logs:CreateLogGroup", "logs:PutRetentionPolicy", "logs:DescribeLogStreams"],
        "Resource": group_arn,
    }));
    statements.push(json!({
        "Sid": "ShipThisRolesLogs",
        "Effect": "Allow",
        "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": format!("{group_arn}:log-stream:*"),
    }));
    if let StorageSettings::Efs(efs) = &plan.storage {
        let file_system_id = &efs.file_system_id;
        // Needed when the file system policy requires IAM authorisation (mount -o iam); harmless otherwise.
        statements.push(json!({
            "Sid": "MountThisRolesFileSystem",
            "Effect": "Allow",
            // With efs-utils' IAM authorization, root creating the role's directory also needs root access.
            "Action": if efs.efs_utils {
                json!(["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite", "elasticfilesystem:ClientRootAccess"])
            } else {
                json!(["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"])
            },
            "Resource": format!("arn:aws:elasticfilesystem:{region}:{account}:file-system/{file_system_id}"),
        }));
    }
    json!({"Version": "2012-10-17", "Statement": statements})
}

/// `node-agent iam-policy`.
pub fn run(args: &IamPolicyArgs) -> Result<(), crate::run::AgentError> {
    let path = args
        .config
        .as_deref()
        .unwrap_or(Path::new(config::DEFAULT_PATH));
    let (file, path) = ConfigFile::load(Some(path))?;
    let mut id = identity::local(args.role.as_str(), &args.environment, Some("i-any"));
    id.region = args.region.clone();
    if let Some(fs) = &args.efs_file_system_id {
        id.tags
            .insert(config::tag::EFS_FILE_SYSTEM_ID.into(), fs.clone());
    }
    let settings = Settings::new(&file, &path, &id, false)?;
    let plan = plan::plan(&id, &settings);
    let doc = policy(&plan, &settings, &args.region, &args.account_id);
    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EXAMPLE;
    use crate::identity::Identity;

    fn build(role: &str, edit: impl Fn(&mut ConfigFile)) -> Value {
        let mut f = ConfigFile::parse(EXAMPLE, Path::new("example")).unwrap();
        f.chain.genesis = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/genesis.json");
        f.storage.efs_file_system_id = "fs-0123456789abcdef0".into();
        edit(&mut f);
        let mut id: Identity = identity::local(role, "production", Some("i-any"));
        id.region = "eu-central-1".into();
        let s = Settings::new(&f, Path::new("example"), &id, false).unwrap();
        policy(&plan::plan(&id, &s), &s, "eu-central-1", "123456789012")
    }

    fn statement<'a>(doc: &'a Value, sid: &str) -> Option<&'a Value> {
        doc["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == sid)
    }

    #[test]
    fn a_sealer_may_read_exactly_its_own_secrets() {
        let doc = build("sealer", |f| {
            f.chain.ethstats = "ethstats.internal:3000".into()
        });
        let s = statement(&doc, "ReadThisRolesSecrets").unwrap();
        assert_eq!(
            s["Action"],
            json!([
                "secretsmanager:GetSecretValue",
                "secretsmanager:DescribeSecret"
            ])
        );
        let base = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:production";
        assert_eq!(
            s["Resource"],
            json!([
                format!("{base}/ethstats/ws-secret-??????"),
                format!("{base}/sealer/keystore-??????"),
                format!("{base}/sealer/password-??????"),
            ])
        );
        assert!(
            statement(&doc, "DecryptSecretsWithTheirKey").is_none(),
            "no kms:Decrypt unless configured"
        );
    }

    #[test]
    fn logs_are_limited_to_the_roles_group_and_kms_appears_only_when_configured() {
        let arn = "arn:aws:kms:eu-central-1:123456789012:key/abcd";
        let doc = build("bootnode", |f| f.secrets.kms_key_arn = arn.into());
        let logs = statement(&doc, "ShipThisRolesLogs").unwrap();
        assert_eq!(
            logs["Resource"],
            "arn:aws:logs:eu-central-1:123456789012:log-group:/node-agent/production/bootnode:log-stream:*"
        );
        let kms = statement(&doc, "DecryptSecretsWithTheirKey").unwrap();
        assert_eq!(kms["Resource"], arn);
        assert_eq!(
            kms["Condition"]["StringEquals"]["kms:ViaService"],
            "secretsmanager.eu-central-1.amazonaws.com"
        );
        let text = doc.to_string();
        assert!(
            !text.contains("sealer/"),
            "a bootnode must not read the sealer's key: {text}"
        );
        assert!(
            !text.contains("\"*\""),
            "no wildcard actions or resources: {text}"
        );
    }

    #[test]
    fn an_rpc_node_without_ethstats_reads_no_secret() {
        let doc = build("rpc", |_| {});
        assert!(statement(&doc, "ReadThisRolesSecrets").is_none());
        assert!(statement(&doc, "MountThisRolesFileSystem").is_some());
    }
}

//! The policies `iam-policy` prints, checked grant by grant for each role and setting.

use super::*;
use crate::config::EXAMPLE;
use crate::imds::Identity;

fn build(role: &str, edit: impl Fn(&mut ConfigFile)) -> Value {
    let mut f = ConfigFile::parse(EXAMPLE, Path::new("example")).unwrap();
    f.chain.genesis = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/genesis.json");
    f.storage.efs_file_system_id = "fs-0123456789abcdef0".into();
    edit(&mut f);
    let mut id: Identity = imds::local(role, "production", Some("i-any"));
    id.region = "eu-central-1".into();
    group_known_on_the_instance(&f, &mut id);
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
    let group = "arn:aws:logs:eu-central-1:123456789012:log-group:/node-agent/production/bootnode";
    assert_eq!(logs["Resource"], json!([group, format!("{group}:*")]));
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

/// Every string in the document that is an ARN.
fn arns(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) if s.starts_with("arn:") => vec![s.clone()],
        Value::Array(a) => a.iter().flat_map(arns).collect(),
        Value::Object(o) => o.values().flat_map(arns).collect(),
        _ => Vec::new(),
    }
}

fn with_access_point(f: &mut ConfigFile) {
    f.storage.efs_utils = true;
    f.storage.efs_access_point_id = "fsap-0123456789abcdef0".into();
}

#[test]
fn logs_are_granted_on_both_forms_of_the_group_arn_for_exactly_the_calls_the_shipper_makes() {
    let doc = build("rpc", |_| {});
    let logs: Vec<&Value> = doc["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s.to_string().contains("logs:"))
        .collect();
    assert_eq!(logs.len(), 1, "{doc:#}");
    assert_eq!(
        logs[0]["Action"],
        json!([
            "logs:CreateLogGroup",
            "logs:PutRetentionPolicy",
            "logs:CreateLogStream",
            "logs:PutLogEvents"
        ])
    );
    let group = "arn:aws:logs:eu-central-1:123456789012:log-group:/node-agent/production/rpc";
    assert_eq!(logs[0]["Resource"], json!([group, format!("{group}:*")]));
    assert!(!doc.to_string().contains("DescribeLogStreams"), "{doc:#}");
}

#[test]
fn every_arn_names_the_region_and_account_and_kms_decrypt_only_goes_through_secrets_manager() {
    let key = "arn:aws:kms:eu-central-1:123456789012:key/abcd";
    for role in ["sealer", "rpc", "bootnode", "ethstats"] {
        for ap in [false, true] {
            let doc = build(role, |f| {
                f.chain.ethstats = "ethstats.internal:3000".into();
                f.secrets.kms_key_arn = key.into();
                if ap {
                    with_access_point(f);
                }
            });
            let found = arns(&doc);
            assert!(found.len() >= 3, "{doc:#}");
            for arn in found {
                let parts: Vec<&str> = arn.splitn(6, ':').collect();
                assert_eq!(parts[..2], ["arn", "aws"], "{arn}");
                assert_eq!(parts[3..5], ["eu-central-1", "123456789012"], "{arn}");
            }
            for s in doc["Statement"].as_array().unwrap() {
                if s["Action"].to_string().contains("kms:Decrypt") {
                    assert_eq!(
                        s["Condition"],
                        json!({"StringEquals": {"kms:ViaService": "secretsmanager.eu-central-1.amazonaws.com"}}),
                        "{role}: {s:#}"
                    );
                }
            }
            assert!(doc.to_string().contains("kms:Decrypt"), "{role}: {doc:#}");
        }
    }
}

#[test]
fn arns_follow_the_regions_partition() {
    let mut f = ConfigFile::parse(EXAMPLE, Path::new("example")).unwrap();
    f.chain.genesis = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/genesis.json");
    f.storage.efs_file_system_id = "fs-0123456789abcdef0".into();
    let mut id: Identity = imds::local("rpc", "production", Some("i-any"));
    id.region = "cn-north-1".into();
    let s = Settings::new(&f, Path::new("example"), &id, false).unwrap();
    let doc = policy(&plan::plan(&id, &s), &s, "cn-north-1", "123456789012");
    let found = arns(&doc);
    assert!(!found.is_empty());
    assert!(
        found.iter().all(|a| a.starts_with("arn:aws-cn:")),
        "{found:?}"
    );
}

#[test]
fn an_access_point_limits_the_identity_policy_to_it_and_needs_no_root_access() {
    let ap_arn =
        "arn:aws:elasticfilesystem:eu-central-1:123456789012:access-point/fsap-0123456789abcdef0";
    let doc = build("sealer", with_access_point);
    let efs = statement(&doc, "MountThisRolesFileSystem").unwrap();
    assert_eq!(
        efs["Action"],
        json!([
            "elasticfilesystem:ClientMount",
            "elasticfilesystem:ClientWrite"
        ])
    );
    assert_eq!(
        efs["Resource"],
        "arn:aws:elasticfilesystem:eu-central-1:123456789012:file-system/fs-0123456789abcdef0"
    );
    assert_eq!(
        efs["Condition"],
        json!({"StringEquals": {"elasticfilesystem:AccessPointArn": ap_arn}})
    );
    // Without one, efs-utils mounts as root and root creates the directory.
    let doc = build("sealer", |f| f.storage.efs_utils = true);
    let efs = statement(&doc, "MountThisRolesFileSystem").unwrap();
    assert!(
        efs["Action"].to_string().contains("ClientRootAccess"),
        "{efs:#}"
    );
    assert!(efs.get("Condition").is_none(), "{efs:#}");
}

#[test]
fn the_file_system_policy_lets_only_the_role_mount_only_its_access_point_only_over_tls() {
    let mut f = ConfigFile::parse(EXAMPLE, Path::new("example")).unwrap();
    f.chain.genesis = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/genesis.json");
    f.storage.efs_file_system_id = "fs-0123456789abcdef0".into();
    with_access_point(&mut f);
    let mut id: Identity = imds::local("sealer", "staging", Some("i-any"));
    id.region = "eu-central-1".into();
    let s = Settings::new(&f, Path::new("example"), &id, false).unwrap();
    let StorageSettings::Efs(efs) = &s.storage else {
        panic!("{:?}", s.storage)
    };
    let role = "arn:aws:iam::123456789012:role/staging-sealer";
    let doc = file_system_policy(
        efs,
        &["fsap-0123456789abcdef0"],
        "staging",
        "sealer",
        role,
        "eu-central-1",
        "123456789012",
    );
    let fs = "arn:aws:elasticfilesystem:eu-central-1:123456789012:file-system/fs-0123456789abcdef0";
    let allow = statement(&doc, "MountStagingSealerThroughItsAccessPoint").unwrap();
    assert_eq!(allow["Effect"], "Allow");
    assert_eq!(allow["Principal"], json!({"AWS": role}));
    assert_eq!(
        allow["Action"],
        json!([
            "elasticfilesystem:ClientMount",
            "elasticfilesystem:ClientWrite"
        ])
    );
    assert_eq!(allow["Resource"], fs);
    assert_eq!(
        allow["Condition"]["StringEquals"]["elasticfilesystem:AccessPointArn"],
        "arn:aws:elasticfilesystem:eu-central-1:123456789012:access-point/fsap-0123456789abcdef0"
    );
    let deny = statement(&doc, "DenyWithoutTls").unwrap();
    assert_eq!(deny["Effect"], "Deny");
    assert_eq!(deny["Resource"], fs);
    assert_eq!(
        deny["Condition"],
        json!({"Bool": {"aws:SecureTransport": "false"}})
    );
    assert_eq!(doc["Statement"].as_array().map(Vec::len), Some(2));
    for arn in arns(&doc) {
        assert!(
            arn.contains(":123456789012:") && !arn.contains('*'),
            "{arn}"
        );
    }
}

#[test]
fn the_termination_hook_is_granted_only_where_one_is_configured() {
    let hook = "CompleteThisRolesTerminationHook";
    assert!(statement(&build("rpc", |_| {}), hook).is_none());
    let named = build("rpc", |f| {
        f.health.lifecycle_hook = "rpc-terminate".into();
        f.health.autoscaling_group = "production-rpc".into();
    });
    let s = statement(&named, hook).expect("the hook's statement");
    assert_eq!(s["Action"], "autoscaling:CompleteLifecycleAction");
    assert_eq!(
        s["Resource"],
        "arn:aws:autoscaling:eu-central-1:123456789012:autoScalingGroup:*:autoScalingGroupName/production-rpc"
    );
    assert!(s.get("Condition").is_none());
    // The group comes from the instance's tag: any group tagged with this environment and role.
    let tagged = build("rpc", |f| f.health.lifecycle_hook = "rpc-terminate".into());
    let s = statement(&tagged, hook).expect("the hook's statement");
    assert!(s["Resource"]
        .as_str()
        .unwrap()
        .ends_with("autoScalingGroupName/*"));
    assert_eq!(
        s["Condition"]["StringEquals"]["autoscaling:ResourceTag/Role"],
        "rpc"
    );
}

#[test]
fn an_rpc_node_without_ethstats_reads_no_secret_and_mounts_only_the_backups() {
    let doc = build("rpc", |_| {});
    assert!(statement(&doc, "ReadThisRolesSecrets").is_none());
    // Its chain is on its own disk (storage.rpc.kind = "local"); the file system holds the backups it
    // exports (backup.role = "rpc").
    assert!(statement(&doc, "MountThisRolesFileSystem").is_some());
    let no_backups = build("rpc", |f| f.backup.role.clear());
    assert!(statement(&no_backups, "MountThisRolesFileSystem").is_none());
    // Through access points: both, the role's and the backups'.
    let both = build("sealer", |f| {
        with_access_point(f);
        f.storage.seed_from_backup = true;
        f.backup.efs_access_point_id = "fsap-0000000000000000b".into();
    });
    let s = statement(&both, "MountThisRolesFileSystem").unwrap();
    let aps = &s["Condition"]["StringEquals"]["elasticfilesystem:AccessPointArn"];
    assert_eq!(aps.as_array().map(Vec::len), Some(2), "{s:#}");
    assert!(
        aps.to_string()
            .contains("access-point/fsap-0000000000000000b"),
        "{s:#}"
    );
    let on_efs = build("rpc", |f| {
        f.storage.rpc.kind = config::StorageKind::Efs;
        f.storage.rpc.path_template = "/{environment}/rpc/{instance_id}".into();
    });
    assert!(statement(&on_efs, "MountThisRolesFileSystem").is_some());
}

#[test]
fn groups_made_beforehand_need_no_group_actions() {
    let doc = build("bootnode", |f| f.logs.create_group = false);
    let s = statement(&doc, "ShipThisRolesLogs").unwrap();
    assert_eq!(
        s["Action"],
        json!(["logs:CreateLogStream", "logs:PutLogEvents"])
    );
}

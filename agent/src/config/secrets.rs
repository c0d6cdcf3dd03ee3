//! The `[secrets]` section: the typed [`SecretsSettings`] this host gets (where secrets come from and
//! go, and their names with `{environment}` filled in), and the check that builds them. Pure.

use super::checks::{at_least_a_second, check_secret_name, fill, invalid, Invalid};
use super::file::{SecretRefFile, SecretSourceKind, SecretsFile};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct SecretsSettings {
    pub source: SecretSourceKind,
    pub local_dir: PathBuf,
    pub dir: PathBuf,
    #[serde(skip)]
    pub rotation_interval: Duration,
    pub kms_key_arn: Option<String>,
    pub names: SecretNames,
}

/// Secret references with `{environment}` already filled in.
#[derive(Debug, Clone, Serialize)]
pub struct SecretNames {
    pub sealer_keystore: SecretRef,
    pub sealer_password: SecretRef,
    pub bootnode_nodekey: SecretRef,
    pub ethstats_ws_secret: SecretRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretRef {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The `[secrets]` section for this host: local files in `local` mode, names filled with `vars` and
/// checked against what Secrets Manager accepts.
pub fn section(
    file: &SecretsFile,
    local: bool,
    vars: &[(&str, &str)],
) -> Result<SecretsSettings, Invalid> {
    let kms_key_arn = match file.kms_key_arn.as_str() {
        "" => None,
        arn if arn.starts_with("arn:aws") && arn.contains(":kms:") => Some(arn.to_owned()),
        arn => {
            return Err(Invalid::new(
                "secrets.kms_key_arn",
                format!("{arn:?} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)"),
            ))
        }
    };
    let secret = |key: &'static str, r: &SecretRefFile| -> Result<SecretRef, Invalid> {
        let (name, field) = match r {
            SecretRefFile::Name(n) => (n, None),
            SecretRefFile::Field { name, field } => (name, Some(field.clone())),
        };
        let name = fill(name, vars).map_err(invalid(key))?;
        check_secret_name(&name).map_err(invalid(key))?;
        Ok(SecretRef { name, field })
    };
    let n = &file.names;
    let names = SecretNames {
        sealer_keystore: secret("secrets.names.sealer_keystore", &n.sealer_keystore)?,
        sealer_password: secret("secrets.names.sealer_password", &n.sealer_password)?,
        bootnode_nodekey: secret("secrets.names.bootnode_nodekey", &n.bootnode_nodekey)?,
        ethstats_ws_secret: secret("secrets.names.ethstats_ws_secret", &n.ethstats_ws_secret)?,
    };
    at_least_a_second(
        "secrets.rotation_interval_secs",
        file.rotation_interval_secs,
    )?;
    Ok(SecretsSettings {
        source: if local {
            SecretSourceKind::Local
        } else {
            file.source
        },
        local_dir: file.local_dir.clone(),
        dir: file.dir.clone(),
        rotation_interval: Duration::from_secs(file.rotation_interval_secs),
        kms_key_arn,
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(edit: impl Fn(&mut SecretsFile), local: bool) -> Result<SecretsSettings, String> {
        let mut f = SecretsFile::default();
        edit(&mut f);
        let vars = [("environment", "staging"), ("role", "sealer")];
        section(&f, local, &vars).map_err(|e| format!("{}: {}", e.key, e.problem))
    }

    #[test]
    fn names_are_filled_with_the_environment() {
        let s = build(|_| {}, false).unwrap();
        assert_eq!(s.names.sealer_keystore.name, "staging/sealer/keystore");
        assert_eq!(s.names.sealer_keystore.field, None);
        assert_eq!(s.source, SecretSourceKind::Aws);
        assert_eq!(s.rotation_interval, Duration::from_secs(300));
        let f = |f: &mut SecretsFile| {
            f.names.sealer_password = SecretRefFile::Field {
                name: "{environment}/sealer".into(),
                field: "password".into(),
            }
        };
        let s = build(f, true).unwrap();
        assert_eq!(
            s.names.sealer_password,
            SecretRef {
                name: "staging/sealer".into(),
                field: Some("password".into())
            }
        );
        assert_eq!(s.source, SecretSourceKind::Local, "local mode reads files");
    }

    #[test]
    fn bad_values_name_their_key() {
        type Edit = Box<dyn Fn(&mut SecretsFile)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "secrets.names.sealer_password",
                Box::new(|f| f.names.sealer_password = SecretRefFile::Name("a b".into())),
            ),
            (
                "secrets.names.bootnode_nodekey",
                Box::new(|f| f.names.bootnode_nodekey = SecretRefFile::Name("{zone}/k".into())),
            ),
            (
                "secrets.kms_key_arn",
                Box::new(|f| f.kms_key_arn = "alias/mine".into()),
            ),
            (
                "secrets.rotation_interval_secs",
                Box::new(|f| f.rotation_interval_secs = 0),
            ),
        ];
        for (key, edit) in cases {
            let e = build(edit, false).unwrap_err();
            assert!(e.starts_with(key), "{key}: {e}");
        }
    }
}

//! Secrets: fetched from Secrets Manager (or a local directory), held in a redacting, zeroizing type, and
//! written only into the private directory, atomically, mode 0400.

use crate::config::{SecretRef, SecretSourceKind, SecretsSettings};
use crate::identity::error_chain;
use crate::plan::{PlannedSecret, SecretKind};
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;
use zeroize::Zeroizing;

/// A secret's bytes. Never printed: `Debug` and `Display` redact; the memory is zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretValue(Zeroizing::new(bytes))
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(<redacted, {} bytes>)", self.0.len())
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a secret could not be had. Names the secret and what to fix; never carries its value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret {name} (environment {environment}): access denied; grant the instance role secretsmanager:GetSecretValue on it{kms}")]
    AccessDenied {
        name: String,
        environment: String,
        kms: &'static str,
    },
    #[error("secret {name} (environment {environment}) does not exist in Secrets Manager; create it (aws secretsmanager create-secret --name {name})")]
    NotFound { name: String, environment: String },
    #[error("secret {name} (environment {environment}) cannot be decrypted: grant the instance role kms:Decrypt on the secret's KMS key")]
    Decryption { name: String, environment: String },
    #[error("secret {name}: Secrets Manager unreachable after {}s: {cause}", waited.as_secs())]
    Unavailable {
        name: String,
        waited: Duration,
        cause: String,
    },
    #[error("secret {name}: {cause}")]
    Other { name: String, cause: String },
    #[error("secret {name} not found in local directory {dir}: create the file {path}")]
    LocalMissing {
        name: String,
        dir: PathBuf,
        path: PathBuf,
    },
    #[error("secret {name}: {problem}")]
    Invalid { name: String, problem: String },
    #[error("cannot write secret file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where secrets come from.
pub enum Source {
    Aws(aws_sdk_secretsmanager::Client),
    Local(PathBuf),
}

impl Source {
    /// Secrets Manager in `region` with the standard credential chain (the instance role on EC2), or
    /// the local directory.
    pub async fn new(settings: &SecretsSettings, region: &str) -> Source {
        match settings.source {
            SecretSourceKind::Local => Source::Local(settings.local_dir.clone()),
            SecretSourceKind::Aws => {
                let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(region.to_owned()))
                    .load()
                    .await;
                Source::Aws(aws_sdk_secretsmanager::Client::new(&conf))
            }
        }
    }

    /// Fetches one secret's current value, retrying transient failures up to `deadline`.
    pub async fn fetch(
        &self,
        reference: &SecretRef,
        environment: &str,
        deadline: Duration,
    ) -> Result<SecretValue, SecretError> {
        let raw = match self {
            Source::Local(dir) => {
                let path = dir.join(&reference.name);
                match std::fs::read(&path) {
                    Ok(b) => SecretValue::new(b),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(SecretError::LocalMissing {
                            name: reference.name.clone(),
                            dir: dir.clone(),
                            path,
                        })
                    }
                    Err(e) => {
                        return Err(SecretError::Other {
                            name: reference.name.clone(),
                            cause: format!("{}: {e}", path.display()),
                        })
                    }
                }
            }
            Source::Aws(client) => {
                fetch_aws(client, &reference.name, environment, deadline).await?
            }
        };
        match &reference.field {
            None => Ok(raw),
            Some(field) => json_field(&raw, field).map_err(|problem| SecretError::Invalid {
                name: reference.name.clone(),
                problem,
            }),
        }
    }
}

async fn fetch_aws(
    client: &aws_sdk_secretsmanager::Client,
    name: &str,
    environment: &str,
    deadline: Duration,
) -> Result<SecretValue, SecretError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        let cause = match client.get_secret_value().secret_id(name).send().await {
            Ok(out) => {
                if let Some(s) = out.secret_string {
                    return Ok(SecretValue::new(s.into_bytes()));
                }
                if let Some(b) = out.secret_binary {
                    return Ok(SecretValue::new(b.into_inner()));
                }
                return Err(SecretError::Other {
                    name: name.into(),
                    cause: "Secrets Manager returned neither SecretString nor SecretBinary".into(),
                });
            }
            Err(e) => match classify(&e) {
                Class::Retry => error_chain(&e),
                Class::Final(code, message) => {
                    let (name, environment) = (name.to_owned(), environment.to_owned());
                    return Err(match code.as_str() {
                        "AccessDeniedException" => SecretError::AccessDenied {
                            kms: if message.contains("KMS") || message.contains("kms") {
                                " and kms:Decrypt on its KMS key"
                            } else {
                                ""
                            },
                            name,
                            environment,
                        },
                        "ResourceNotFoundException" => SecretError::NotFound { name, environment },
                        "DecryptionFailure" => SecretError::Decryption { name, environment },
                        _ => SecretError::Other {
                            name,
                            cause: format!("{code}: {message}"),
                        },
                    });
                }
            },
        };
        let waited = start.elapsed();
        if waited + delay > deadline {
            return Err(SecretError::Unavailable {
                name: name.into(),
                waited,
                cause,
            });
        }
        tracing::warn!(secret_name = name, %cause, retry_in = ?delay, "Secrets Manager not available; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

enum Class {
    Retry,
    Final(String, String),
}

fn classify<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Class {
    match e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            let code = err.code().unwrap_or("Unknown").to_owned();
            let message = err.message().unwrap_or("").to_owned();
            match code.as_str() {
                "ThrottlingException"
                | "InternalServiceError"
                | "ServiceUnavailable"
                | "RequestTimeout" => Class::Retry,
                _ => Class::Final(code, message),
            }
        }
        // Dispatch failures, timeouts and unparseable responses are the network's fault: retry.
        _ => Class::Retry,
    }
}

/// One string field of a JSON secret.
fn json_field(raw: &SecretValue, field: &str) -> Result<SecretValue, String> {
    let v: serde_json::Value = serde_json::from_slice(raw.expose())
        .map_err(|_| format!("is not a JSON object, so field {field:?} cannot be read"))?;
    match v.get(field) {
        Some(serde_json::Value::String(s)) => Ok(SecretValue::new(s.clone().into_bytes())),
        Some(_) => Err(format!("field {field:?} is not a string")),
        None => Err(format!("has no field {field:?}")),
    }
}

/// Checks a value is usable for its purpose before any child sees it; returns what to write.
pub fn validate(
    kind: SecretKind,
    name: &str,
    value: &SecretValue,
    signer: &str,
) -> Result<SecretValue, SecretError> {
    let invalid = |problem: String| SecretError::Invalid {
        name: name.to_owned(),
        problem,
    };
    match kind {
        SecretKind::BootnodeNodekey => {
            let text = std::str::from_utf8(value.expose())
                .map_err(|_| invalid("node key is not text".into()))?;
            let hex = text.trim();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    "node key must be 64 hex digits (a 32-byte secp256k1 key, as `bootnode -genkey` writes)".into(),
                ));
            }
            Ok(SecretValue::new(hex.as_bytes().to_vec()))
        }
        SecretKind::SealerKeystore => {
            let v: serde_json::Value = serde_json::from_slice(value.expose()).map_err(|_| {
                invalid("keystore is not JSON (expected a geth keystore V3 file)".into())
            })?;
            let address = v
                .get("address")
                .and_then(|a| a.as_str())
                .and_then(|a| {
                    crate::genesis::normalize_address(&format!("0x{}", a.trim_start_matches("0x")))
                })
                .ok_or_else(|| invalid("keystore has no valid \"address\" field".into()))?;
            if v.get("crypto").or_else(|| v.get("Crypto")).is_none() {
                return Err(invalid("keystore has no \"crypto\" section".into()));
            }
            if address != signer {
                return Err(invalid(format!(
                    "keystore is for {address}, but the chain's signer is {signer} (chain.signer / genesis extraData)"
                )));
            }
            Ok(value.clone())
        }
        SecretKind::SealerPassword => {
            // geth reads the first line of --password files.
            let first = value
                .expose()
                .split(|b| *b == b'\n')
                .next()
                .unwrap_or_default();
            let first = first.strip_suffix(b"\r").unwrap_or(first);
            if first.is_empty() {
                return Err(invalid("password is empty".into()));
            }
            Ok(SecretValue::new(first.to_vec()))
        }
        SecretKind::EthstatsWsSecret => {
            let v = value.expose();
            let v = v.strip_suffix(b"\n").unwrap_or(v);
            if v.is_empty()
                || v.iter()
                    .any(|b| b":@\"\\\n\r".contains(b) || b.is_ascii_control())
            {
                return Err(invalid(
                    "ethstats secret must be non-empty and free of ':', '@', quotes, backslashes and control characters (geth's --ethstats URL format cannot carry them)".into(),
                ));
            }
            Ok(SecretValue::new(v.to_vec()))
        }
    }
}

/// Creates the private directory (0700). Idempotent; tightens the mode of an existing one.
pub fn prepare_dir(dir: &Path) -> Result<(), SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| SecretError::Write {
        path: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// Writes `value` to `path` atomically (temp file, fsync, rename), mode 0400.
pub fn write_file(path: &Path, value: &[u8]) -> Result<(), SecretError> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let err = |p: &Path| {
        let p = p.to_owned();
        move |source| SecretError::Write { path: p, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(err(parent))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Dot-prefixed so geth's keystore scan never picks up a half-written file.
    let tmp = parent.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&tmp)
        .map_err(err(&tmp))?;
    f.write_all(value)
        .and_then(|_| f.sync_all())
        .map_err(err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err(path))
}

/// Removes everything in the private directory; called when the agent stops.
pub fn wipe_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// geth's `--config` TOML carrying the ethstats URL, so the secret stays out of argv.
pub fn geth_ethstats_toml(name: &str, secret: &SecretValue, server: &str) -> SecretValue {
    let mut v = Vec::with_capacity(64);
    v.extend_from_slice(b"[Ethstats]\nURL = \"");
    v.extend_from_slice(name.as_bytes());
    v.push(b':');
    v.extend_from_slice(secret.expose());
    v.push(b'@');
    v.extend_from_slice(server.as_bytes());
    v.extend_from_slice(b"\"\n");
    SecretValue::new(v)
}

/// The ethstats server's `ws_secret.json`: a JSON array of accepted secrets.
pub fn ethstats_secret_json(secret: &SecretValue) -> SecretValue {
    // validate() already refused quotes, backslashes and control characters, so no escaping is needed.
    let mut v = Vec::with_capacity(secret.expose().len() + 5);
    v.extend_from_slice(b"[\"");
    v.extend_from_slice(secret.expose());
    v.extend_from_slice(b"\"]\n");
    SecretValue::new(v)
}

/// Fetches, validates and writes every secret of the plan. Fails closed: any error stops the boot.
pub async fn materialize(
    source: &Source,
    secrets: &[PlannedSecret],
    environment: &str,
    signer: &str,
    deadline: Duration,
) -> Result<Vec<(SecretKind, SecretValue)>, SecretError> {
    let mut values = Vec::with_capacity(secrets.len());
    for s in secrets {
        let raw = source.fetch(&s.reference, environment, deadline).await?;
        let value = validate(s.kind, &s.reference.name, &raw, signer)?;
        write_file(&s.file, value.expose())?;
        tracing::info!(secret_name = %s.reference.name, file = %s.file.display(), "secret written");
        values.push((s.kind, value));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const SIGNER: &str = "0xea94d5964b36a107571e051649c2eb52ff0c323f";

    #[test]
    fn secret_values_never_format_their_contents() {
        let v = SecretValue::new(b"hunter2".to_vec());
        assert_eq!(format!("{v}"), "<redacted>");
        assert!(!format!("{v:?}").contains("hunter2"));
        assert!(!format!("{:?}", Some(&v)).contains("hunter2"));
    }

    #[test]
    fn files_are_written_atomically_with_mode_0400() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/secret");
        write_file(&path, b"one").unwrap();
        write_file(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o400
        );
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["secret"], "no temp file left behind");
    }

    #[test]
    fn node_key_must_be_32_bytes_of_hex() {
        let ok = SecretValue::new(format!("{}\n", "ab".repeat(32)).into_bytes());
        assert_eq!(
            validate(SecretKind::BootnodeNodekey, "n", &ok, SIGNER)
                .unwrap()
                .expose(),
            "ab".repeat(32).as_bytes()
        );
        for bad in ["", "xyz", &"ab".repeat(31)] {
            let e = validate(
                SecretKind::BootnodeNodekey,
                "n",
                &SecretValue::new(bad.into()),
                SIGNER,
            )
            .unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("secret n: node key must be 64 hex digits"),
                "{e}"
            );
        }
    }

    #[test]
    fn keystore_must_belong_to_the_chain_signer() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/secrets/dev/sealer/keystore");
        let ks = SecretValue::new(std::fs::read(path).unwrap());
        validate(SecretKind::SealerKeystore, "k", &ks, SIGNER).unwrap();
        let other = format!("0x{}", "11".repeat(20));
        let e = validate(SecretKind::SealerKeystore, "k", &ks, &other).unwrap_err();
        assert!(e.to_string().contains("but the chain's signer is"), "{e}");
        let e = validate(
            SecretKind::SealerKeystore,
            "k",
            &SecretValue::new(b"{".to_vec()),
            SIGNER,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
    }

    #[test]
    fn ethstats_secret_cannot_break_the_url() {
        for bad in ["", "a:b", "a@b", "a\"b"] {
            assert!(
                validate(
                    SecretKind::EthstatsWsSecret,
                    "w",
                    &SecretValue::new(bad.into()),
                    SIGNER
                )
                .is_err(),
                "{bad}"
            );
        }
        let toml = geth_ethstats_toml("n1", &SecretValue::new(b"s3".to_vec()), "h:3000");
        assert_eq!(toml.expose(), b"[Ethstats]\nURL = \"n1:s3@h:3000\"\n");
        let json = ethstats_secret_json(&SecretValue::new(b"s3".to_vec()));
        assert_eq!(
            serde_json::from_slice::<Vec<String>>(json.expose()).unwrap(),
            ["s3"]
        );
    }

    #[test]
    fn json_fields_are_extracted_or_named_when_missing() {
        let raw = SecretValue::new(br#"{"password":"pw","n":1}"#.to_vec());
        assert_eq!(json_field(&raw, "password").unwrap().expose(), b"pw");
        assert!(json_field(&raw, "n").unwrap_err().contains("not a string"));
        assert!(json_field(&raw, "x")
            .unwrap_err()
            .contains("no field \"x\""));
        assert!(json_field(&SecretValue::new(b"pw".to_vec()), "x")
            .unwrap_err()
            .contains("not a JSON object"));
    }

    #[test]
    fn private_directory_is_0700_even_if_it_existed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_dir(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}

//! Where secrets come from: Secrets Manager (with retries, and its errors turned into the permission to
//! fix) or a local directory; a value and the version it came from.

use super::json::json_field;
use super::{SecretError, SecretValue};
use crate::backoff::Backoff;
use crate::config::{SecretRef, SecretSourceKind, SecretsSettings};
use crate::error::error_chain;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

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

    /// Fetches one secret's current value and its version, retrying transient failures up to
    /// `deadline`. `version` pins a version id (rotation); `stage` defaults to AWSCURRENT.
    pub async fn fetch(
        &self,
        reference: &SecretRef,
        environment: &str,
        wanted: Wanted<'_>,
        deadline: Duration,
    ) -> Result<Fetched, SecretError> {
        let fetched = match self {
            Source::Local(dir) => {
                let value = read_local(dir, &reference.name)?;
                let version = local_version(&value);
                Fetched { value, version }
            }
            Source::Aws(client) => retrying(&reference.name, environment, deadline, || async {
                let mut req = client.get_secret_value().secret_id(&reference.name);
                req = match wanted {
                    Wanted::Version(v) => req.version_id(v),
                    Wanted::Stage(st) => req.version_stage(st),
                };
                req.send().await
            })
            .await
            .and_then(|out| {
                let version = out.version_id.clone().unwrap_or_default();
                let value = if let Some(s) = out.secret_string {
                    SecretValue::new(s.into_bytes())
                } else if let Some(b) = out.secret_binary {
                    SecretValue::new(b.into_inner())
                } else {
                    return Err(SecretError::Other {
                        name: reference.name.clone(),
                        cause: "Secrets Manager returned neither SecretString nor SecretBinary"
                            .into(),
                    });
                };
                Ok(Fetched { value, version })
            })?,
        };
        match &reference.field {
            None => Ok(fetched),
            Some(field) => Ok(Fetched {
                value: json_field(&fetched.value, field).map_err(|problem| {
                    SecretError::Invalid {
                        name: reference.name.clone(),
                        problem,
                    }
                })?,
                version: fetched.version,
            }),
        }
    }

    /// The version the secret's AWSCURRENT stage points at, without reading the value (DescribeSecret).
    /// Local secrets are versioned by a hash of their contents.
    pub async fn current_version(
        &self,
        reference: &SecretRef,
        environment: &str,
        deadline: Duration,
    ) -> Result<String, SecretError> {
        match self {
            Source::Local(dir) => Ok(local_version(&read_local(dir, &reference.name)?)),
            Source::Aws(client) => {
                let out = retrying(&reference.name, environment, deadline, || async {
                    client
                        .describe_secret()
                        .secret_id(&reference.name)
                        .send()
                        .await
                })
                .await?;
                out.version_ids_to_stages
                    .unwrap_or_default()
                    .into_iter()
                    .find(|(_, stages)| stages.iter().any(|s| s == CURRENT))
                    .map(|(id, _)| id)
                    .ok_or_else(|| SecretError::Other {
                        name: reference.name.clone(),
                        cause: "no version carries the AWSCURRENT stage".into(),
                    })
            }
        }
    }
}

/// The stage every reader follows.
pub const CURRENT: &str = "AWSCURRENT";

/// Which version of a secret to read.
#[derive(Debug, Clone, Copy)]
pub enum Wanted<'a> {
    Stage(&'a str),
    Version(&'a str),
}

/// A secret value with the version it came from.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub value: SecretValue,
    pub version: String,
}

fn read_local(dir: &Path, name: &str) -> Result<SecretValue, SecretError> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(b) => Ok(SecretValue::new(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SecretError::LocalMissing {
            name: name.to_owned(),
            dir: dir.to_owned(),
            path,
        }),
        Err(e) => Err(SecretError::Other {
            name: name.to_owned(),
            cause: format!("{}: {e}", path.display()),
        }),
    }
}

/// A local secret's version: an HMAC-SHA256 of the value under a key drawn once per process. It changes
/// when the value changes within one run (rotation compares versions), but unlike a bare hash, which
/// status and the logs show, it cannot be brute-forced back to a short password.
fn local_version(value: &SecretValue) -> String {
    use hmac::{Hmac, Mac};
    use rand::RngCore;
    static KEY: std::sync::OnceLock<Zeroizing<[u8; 64]>> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut key = Zeroizing::new([0u8; 64]);
        rand::rngs::OsRng.fill_bytes(&mut key[..]);
        key
    });
    let mut mac = <Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new(&(**key).into());
    mac.update(value.expose());
    format!(
        "local:{}",
        crate::chain::genesis::encode_hex(&mac.finalize().into_bytes()[..8])
    )
}

/// Runs one Secrets Manager call, retrying throttling and network errors up to `deadline`; access,
/// existence and decryption errors end it at once with the permission to fix.
async fn retrying<T, E, R, F, Fut>(
    name: &str,
    environment: &str,
    deadline: Duration,
    mut call: F,
) -> Result<T, SecretError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SdkError<E, R>>>,
{
    let mut backoff = Backoff::new(
        Duration::from_millis(250),
        Duration::from_secs(10),
        deadline,
    );
    loop {
        let (cause, credentials) = match call().await {
            Ok(out) => return Ok(out),
            Err(e) => match classify(&e) {
                Class::Retry => (error_chain(&e), false),
                Class::Credentials { retry: true, cause } => (cause, true),
                Class::Credentials {
                    retry: false,
                    cause,
                } => {
                    return Err(SecretError::NoCredentials {
                        name: name.into(),
                        waited: Duration::ZERO,
                        cause,
                    })
                }
                Class::Final(code, message) => {
                    let name = name.to_owned();
                    // Shown after the name: " (environment staging)", or nothing for get-secret.
                    let environment = if environment.is_empty() {
                        String::new()
                    } else {
                        format!(" (environment {environment})")
                    };
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
        let Some(delay) = backoff.next_delay() else {
            let (name, waited) = (name.into(), backoff.waited());
            return Err(if credentials {
                SecretError::NoCredentials {
                    name,
                    waited,
                    cause,
                }
            } else {
                SecretError::Unavailable {
                    name,
                    waited,
                    cause,
                }
            });
        };
        if credentials {
            tracing::warn!(secret_name = name, %cause, retry_in = ?delay, "no AWS credentials yet; retrying");
        } else {
            tracing::warn!(secret_name = name, %cause, retry_in = ?delay, "Secrets Manager not available; retrying");
        }
        tokio::time::sleep(delay).await;
    }
}

enum Class {
    Retry,
    /// The SDK found no credentials: not the service's fault. `retry` while a provider may still answer
    /// (the instance metadata service early in boot); at once when no source has any.
    Credentials {
        retry: bool,
        cause: String,
    },
    Final(String, String),
}

fn classify<E, R>(e: &SdkError<E, R>) -> Class
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
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
        // Dispatch failures, timeouts and unparseable responses are the network's fault: retry; unless the
        // request never left because there were no credentials to sign it with.
        _ => match credentials_error(e) {
            Some(c) => c,
            None => Class::Retry,
        },
    }
}

/// The credentials problem somewhere in the SDK's chain of causes, if that is what failed.
fn credentials_error(e: &(dyn std::error::Error + 'static)) -> Option<Class> {
    use aws_credential_types::provider::error::CredentialsError;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<CredentialsError>() {
            let one_line = |s: String| s.split_whitespace().collect::<Vec<_>>().join(" ");
            return Some(match c {
                CredentialsError::CredentialsNotLoaded(_) => Class::Credentials {
                    retry: false,
                    cause: "none in the environment, the profile files, web identity, the container or the instance metadata service".into(),
                },
                CredentialsError::ProviderError(_) | CredentialsError::ProviderTimedOut(_) => {
                    Class::Credentials {
                        retry: true,
                        cause: one_line(error_chain(c)),
                    }
                }
                _ => Class::Credentials {
                    retry: false,
                    cause: one_line(error_chain(c)),
                },
            });
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_version_is_keyed_and_follows_the_value() {
        use sha2::Digest;
        let a = SecretValue::new(b"hunter2".to_vec());
        let b = SecretValue::new(b"hunter3".to_vec());
        assert_eq!(local_version(&a), local_version(&a.clone()));
        assert_ne!(local_version(&a), local_version(&b));
        let bare = crate::chain::genesis::encode_hex(&sha2::Sha256::digest(a.expose())[..8]);
        assert!(
            !local_version(&a).contains(&bare),
            "a bare hash can be brute-forced"
        );
        assert!(local_version(&a).starts_with("local:"));
    }

    #[tokio::test]
    async fn a_rewritten_local_secret_gets_a_new_version_that_rotation_sees() {
        let dir = tempfile::tempdir().unwrap();
        let reference = SecretRef {
            name: "dev/ws".into(),
            field: None,
        };
        std::fs::create_dir(dir.path().join("dev")).unwrap();
        let source = Source::Local(dir.path().to_owned());
        let read = || async {
            let current = source
                .current_version(&reference, "", Duration::from_secs(1))
                .await
                .unwrap();
            let fetched = source
                .fetch(
                    &reference,
                    "",
                    Wanted::Stage(CURRENT),
                    Duration::from_secs(1),
                )
                .await
                .unwrap();
            assert_eq!(
                current, fetched.version,
                "the polled and fetched versions agree"
            );
            current
        };
        std::fs::write(dir.path().join("dev/ws"), "one").unwrap();
        let one = read().await;
        assert_eq!(read().await, one);
        std::fs::write(dir.path().join("dev/ws"), "two").unwrap();
        let two = read().await;
        // A new value is a new version: what rotation compares.
        assert_ne!(one, two);
    }
}

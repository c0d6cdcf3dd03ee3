//! Secrets: fetched from Secrets Manager (or a local directory), held in a redacting, zeroizing type, and
//! written only into the private directory, atomically, mode 0400.

use crate::backoff::Backoff;
use crate::config::{SecretRef, SecretSourceKind, SecretsSettings};
use crate::error::error_chain;
use crate::plan::{PlannedSecret, Rendered, SecretKind};
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;
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
    #[error("secret {name}{environment}: access denied; grant the instance role secretsmanager:GetSecretValue on it{kms}")]
    AccessDenied {
        name: String,
        environment: String,
        kms: &'static str,
    },
    #[error("secret {name}{environment} does not exist in Secrets Manager; create it (aws secretsmanager create-secret --name {name})")]
    NotFound { name: String, environment: String },
    #[error("secret {name}{environment} cannot be decrypted: grant the instance role kms:Decrypt on the secret's KMS key")]
    Decryption { name: String, environment: String },
    #[error("secret {name}: Secrets Manager unreachable after {}s: {cause}", waited.as_secs())]
    Unavailable {
        name: String,
        waited: Duration,
        cause: String,
    },
    #[error("secret {name}: no AWS credentials{}: {cause} (on EC2: attach an instance profile to the instance; elsewhere: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)", if waited.is_zero() { String::new() } else { format!(" after {}s", waited.as_secs()) })]
    NoCredentials {
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
    #[error(transparent)]
    Fs(#[from] crate::sys::safefs::FsError),
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

/// A JSON text read without copying its values: serde_json's `Value` would copy every string of a
/// secret into a `String` that is never zeroed.
enum Json<'a> {
    /// The members of an object, each value the raw text inside the caller's buffer (last duplicate
    /// wins, as with `Value`).
    Object(BTreeMap<String, &'a RawValue>),
    /// Valid JSON, but not an object.
    Other,
    Invalid,
}

fn json(text: &[u8]) -> Json<'_> {
    match serde_json::from_slice::<BTreeMap<String, &RawValue>>(text) {
        Ok(members) => Json::Object(members),
        // Skipping a value checks it without copying its strings.
        Err(_) if serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok() => Json::Other,
        Err(_) => Json::Invalid,
    }
}

/// The members of a nested object; none when the value is not an object.
fn nested_members(raw: &RawValue) -> BTreeMap<String, &RawValue> {
    match json(raw.get().as_bytes()) {
        Json::Object(members) => members,
        Json::Other | Json::Invalid => BTreeMap::new(),
    }
}

/// A JSON string's bytes, decoded into a buffer allocated once at the literal's length (the decoded
/// text is never longer), so no reallocation leaves a copy behind; the caller wraps it in a zeroizing
/// type. `Ok(None)` when the value is not a string; `Err` for an escape serde_json skipped without
/// judging it (a lone surrogate), which its `Value` refuses.
fn json_string(raw: &RawValue) -> Result<Option<Vec<u8>>, ()> {
    let text = raw.get().as_bytes().trim_ascii();
    let Some(inner) = text.strip_prefix(b"\"").and_then(|t| t.strip_suffix(b"\"")) else {
        return Ok(None);
    };
    let hex4 = |at: usize| -> Result<u32, ()> {
        let digits = inner.get(at..at + 4).ok_or(())?;
        digits.iter().try_fold(0u32, |n, d| {
            Ok(n * 16 + char::from(*d).to_digit(16).ok_or(())?)
        })
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        if inner[i] != b'\\' {
            out.push(inner[i]);
            i += 1;
            continue;
        }
        let escaped = *inner.get(i + 1).ok_or(())?;
        i += 2;
        let byte = match escaped {
            b'"' | b'\\' | b'/' => escaped,
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let mut code = hex4(i)?;
                i += 4;
                if (0xd800..0xdc00).contains(&code) {
                    if inner.get(i..i + 2) != Some(b"\\u") {
                        return Err(());
                    }
                    let low = hex4(i + 2)?;
                    if !(0xdc00..0xe000).contains(&low) {
                        return Err(());
                    }
                    code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
                    i += 6;
                }
                let c = char::from_u32(code).ok_or(())?;
                // Encoded in place: no temporary holds the character.
                let at = out.len();
                out.resize(at + c.len_utf8(), 0);
                c.encode_utf8(&mut out[at..]);
                continue;
            }
            _ => return Err(()),
        };
        out.push(byte);
    }
    Ok(Some(out))
}

/// One string field of a JSON secret, copied once, into zeroizing memory.
fn json_field(raw: &SecretValue, field: &str) -> Result<SecretValue, String> {
    let not_object = || format!("is not a JSON object, so field {field:?} cannot be read");
    let members = match json(raw.expose()) {
        Json::Object(members) => members,
        Json::Other => return Err(format!("has no field {field:?}")),
        Json::Invalid => return Err(not_object()),
    };
    match members.get(field).map(|v| json_string(v)) {
        Some(Ok(Some(s))) => Ok(SecretValue::new(s)),
        Some(Ok(None)) => Err(format!("field {field:?} is not a string")),
        Some(Err(())) => Err(not_object()),
        None => Err(format!("has no field {field:?}")),
    }
}

/// Decodes hex into a buffer allocated once at its final length (`genesis::decode_hex` collects
/// through an iterator that grows its buffer, leaving copies of a key behind).
fn decode_secret_hex(hex: &str) -> Option<Zeroizing<Vec<u8>>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Zeroizing::new(Vec::with_capacity(hex.len() / 2));
    for pair in hex.as_bytes().chunks(2) {
        let digit = |d: u8| char::from(d).to_digit(16);
        out.push((digit(pair[0])? * 16 + digit(pair[1])?) as u8);
    }
    Some(out)
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
            let bytes = decode_secret_hex(hex).unwrap_or_default();
            if k256::SecretKey::from_slice(&bytes).is_err() {
                return Err(invalid(
                    "node key is not a valid secp256k1 private key (zero or above the curve order)"
                        .into(),
                ));
            }
            Ok(SecretValue::new(hex.as_bytes().to_vec()))
        }
        SecretKind::SealerKeystore => {
            // Only the public fields are read; the encrypted key is never copied.
            let members = match json(value.expose()) {
                Json::Object(members) => members,
                Json::Other => BTreeMap::new(),
                Json::Invalid => {
                    return Err(invalid(
                        "keystore is not JSON (expected a geth keystore V3 file)".into(),
                    ))
                }
            };
            let address = members
                .get("address")
                .and_then(|a| json_string(a).ok().flatten())
                .and_then(|a| String::from_utf8(a).ok())
                .and_then(|a| {
                    crate::chain::genesis::normalize_address(&format!(
                        "0x{}",
                        a.trim_start_matches("0x")
                    ))
                })
                .ok_or_else(|| invalid("keystore has no valid \"address\" field".into()))?;
            if !members.contains_key("crypto") && !members.contains_key("Crypto") {
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

/// Writes `value` to `path` atomically with `mode`, owned by `owner` when given (the caller is root).
/// The temp file gets its final mode and owner before it is renamed into place. A missing directory is
/// created 0700 and given to `owner` too, so that the owner can reach the file (its missing parents are
/// created 0755). Everything goes through descriptors: a link planted at `path` is replaced, not
/// followed, and a link anywhere above it that someone other than root could have placed is refused.
pub fn write_file_as(
    path: &Path,
    value: &[u8],
    mode: u32,
    owner: Option<crate::privileges::Account>,
) -> Result<(), SecretError> {
    let owner = owner.map(|a| (a.uid.as_raw(), a.gid.as_raw()));
    let (parent, name) = crate::sys::safefs::split(path)?;
    crate::sys::safefs::Dir::create_all_owned(parent, 0o700, owner)?
        .write_file(name, value, mode, owner)?;
    Ok(())
}

/// Removes everything in the private directory (never following a link planted there); called when the
/// agent stops, and by `node-agent cleanup` after it.
pub fn wipe_dir(dir: &Path) {
    match crate::sys::safefs::Dir::open(dir).and_then(|d| d.empty()) {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => tracing::warn!(error = %e, "cannot empty the secrets directory"),
    }
}

/// geth's `--config` TOML carrying the ethstats URL, so the secret stays out of argv.
pub fn geth_ethstats_toml(name: &str, secret: &SecretValue, server: &str) -> SecretValue {
    render(&[
        b"[Ethstats]\nURL = \"",
        name.as_bytes(),
        b":",
        secret.expose(),
        b"@",
        server.as_bytes(),
        b"\"\n",
    ])
}

/// Concatenates `parts` into a buffer allocated once at its final length: a buffer that grew would
/// leave a copy of the secret behind in the memory it was moved out of.
fn render(parts: &[&[u8]]) -> SecretValue {
    let mut v = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        v.extend_from_slice(p);
    }
    SecretValue::new(v)
}

/// The ethstats server's `ws_secret.json`: a JSON array of accepted secrets.
pub fn ethstats_secret_json(secret: &SecretValue) -> SecretValue {
    // validate() already refused quotes, backslashes and control characters, so no escaping is needed.
    render(&[b"[\"", secret.expose(), b"\"]\n"])
}

/// The host's secrets as currently written: value and version of each.
#[derive(Debug, Clone, Default)]
pub struct SecretSet {
    entries: Vec<(SecretKind, Fetched)>,
}

impl SecretSet {
    pub fn get(&self, kind: SecretKind) -> Option<&Fetched> {
        self.entries
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, f)| f)
    }

    /// Replaces (or adds) one secret.
    pub fn set(&mut self, kind: SecretKind, fetched: Fetched) {
        match self.entries.iter_mut().find(|(k, _)| *k == kind) {
            Some(e) => e.1 = fetched,
            None => self.entries.push((kind, fetched)),
        }
    }

    /// (kind, version) of every secret, for status and rotation.
    pub fn versions(&self) -> Vec<(SecretKind, String)> {
        self.entries
            .iter()
            .map(|(k, f)| (*k, f.version.clone()))
            .collect()
    }
}

/// Fetches and validates every secret of the plan (nothing is written yet). Fails closed.
pub async fn fetch_all(
    source: &Source,
    secrets: &[PlannedSecret],
    environment: &str,
    signer: &str,
    deadline: Duration,
) -> Result<SecretSet, SecretError> {
    let mut set = SecretSet::default();
    for s in secrets {
        let fetched = source
            .fetch(&s.reference, environment, Wanted::Stage(CURRENT), deadline)
            .await?;
        let value = validate(s.kind, &s.reference.name, &fetched.value, signer)?;
        set.set(
            s.kind,
            Fetched {
                value,
                version: fetched.version,
            },
        );
    }
    Ok(set)
}

/// Checks what only the whole set can show: the keystore decrypts with the password into the signer's
/// key. Nothing is written to any directory (the keystore library reads an in-memory file).
pub async fn check_set(
    secrets: &[PlannedSecret],
    set: &SecretSet,
    signer: &str,
) -> Result<(), SecretError> {
    let (Some(ks), Some(pw)) = (
        set.get(SecretKind::SealerKeystore),
        set.get(SecretKind::SealerPassword),
    ) else {
        return Ok(());
    };
    let name = secrets
        .iter()
        .find(|s| s.kind == SecretKind::SealerKeystore)
        .map(|s| s.reference.name.clone())
        .unwrap_or_default();
    check_kdf(&name, &ks.value)?;
    let candidate = keystore_in_memory(&name, &ks.value)?;
    // The keystore library reads a path: this descriptor's, which names no directory entry anyone
    // could replace (the secrets directory is the service user's, and this may run as root).
    let path = PathBuf::from(format!("/proc/self/fd/{}", candidate.as_raw_fd()));
    let password = pw.value.clone();
    let decrypted = tokio::task::spawn_blocking(move || {
        let decrypted = eth_keystore::decrypt_key(&path, password.expose());
        drop(candidate);
        (decrypted, path)
    })
    .await
    .map_err(|e| SecretError::Other {
        name: name.clone(),
        cause: format!("keystore check aborted: {e}"),
    })?;
    let key = zeroize::Zeroizing::new(match decrypted {
        (Ok(key), _) => key,
        (Err(eth_keystore::KeystoreError::StdIo(e)), path) => {
            return Err(SecretError::Other {
                name,
                cause: format!(
                    "cannot read the keystore's in-memory copy through {} ({e}): is /proc mounted?",
                    path.display()
                ),
            })
        }
        (Err(e), _) => {
            return Err(SecretError::Invalid {
                name,
                problem: format!("keystore does not decrypt with the sealer password ({e})"),
            })
        }
    });
    let address = address_of(&key).ok_or_else(|| SecretError::Invalid {
        name: name.clone(),
        problem: "keystore holds no valid secp256k1 key".into(),
    })?;
    if address != signer {
        return Err(SecretError::Invalid {
            name,
            problem: format!("keystore decrypts to {address}, not the chain's signer {signer}"),
        });
    }
    Ok(())
}

/// The keystore in an anonymous in-memory file (memfd), sealed against any change once written.
fn keystore_in_memory(name: &str, keystore: &SecretValue) -> Result<std::fs::File, SecretError> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    use std::io::Write;
    let failed = |e: std::io::Error| SecretError::Other {
        name: name.to_owned(),
        cause: format!("cannot hold the keystore in memory for its check (memfd): {e}"),
    };
    let fd = memfd_create(
        c"node-agent-keystore",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )
    .map_err(|e| failed(e.into()))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(keystore.expose()).map_err(failed)?;
    fcntl(
        file.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_SEAL,
        ),
    )
    .map_err(|e| failed(e.into()))?;
    Ok(file)
}

/// Refuses keystore parameters the decryption library would panic on or that would take the host's
/// memory (scrypt n above geth's standard 2^18 needs more than 256 MiB).
fn check_kdf(name: &str, keystore: &SecretValue) -> Result<(), SecretError> {
    let invalid = |problem: &str| SecretError::Invalid {
        name: name.to_owned(),
        problem: problem.to_owned(),
    };
    // Only the public parameters are read; the encrypted key is never copied.
    let top = match json(keystore.expose()) {
        Json::Object(members) => members,
        Json::Other => BTreeMap::new(),
        Json::Invalid => return Err(invalid("keystore is not JSON")),
    };
    let crypto = nested_members(
        top.get("crypto")
            .or_else(|| top.get("Crypto"))
            .ok_or_else(|| invalid("keystore has no crypto section"))?,
    );
    let params = nested_members(
        crypto
            .get("kdfparams")
            .ok_or_else(|| invalid("keystore has no kdfparams"))?,
    );
    let num = |k: &str| {
        params
            .get(k)
            .and_then(|v| serde_json::from_str::<u64>(v.get()).ok())
    };
    let string = |v: Option<&&RawValue>| v.and_then(|v| json_string(v).ok().flatten());
    if num("dklen") != Some(32) {
        return Err(invalid("keystore kdfparams.dklen must be 32"));
    }
    let iv = string(
        crypto
            .get("cipherparams")
            .map(|c| nested_members(c))
            .as_ref()
            .and_then(|c| c.get("iv")),
    )
    .unwrap_or_default();
    if iv.len() != 32 || !iv.iter().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid("keystore cipherparams.iv must be 16 bytes of hex"));
    }
    match string(crypto.get("kdf")).as_deref() {
        Some(b"scrypt") => {
            let n = num("n").unwrap_or(0);
            let ok = n.is_power_of_two()
                && (2..=1 << 18).contains(&n)
                && num("r") == Some(8)
                && (1..=4).contains(&num("p").unwrap_or(0));
            if !ok {
                return Err(invalid("keystore scrypt parameters out of range (n a power of two up to 262144, r 8, p 1-4)"));
            }
        }
        Some(b"pbkdf2") => {
            if !(1..=10_000_000).contains(&num("c").unwrap_or(0)) {
                return Err(invalid("keystore pbkdf2 iteration count out of range"));
            }
        }
        _ => return Err(invalid("keystore kdf must be scrypt or pbkdf2")),
    }
    Ok(())
}

/// The Ethereum address of a secp256k1 private key (lowercase 0x…).
fn address_of(private_key: &[u8]) -> Option<String> {
    use sha3::Digest;
    let secret = k256::SecretKey::from_slice(private_key).ok()?;
    let point =
        k256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&secret.public_key(), false);
    let hash = sha3::Keccak256::digest(&point.as_bytes()[1..]);
    Some(format!(
        "0x{}",
        crate::chain::genesis::encode_hex(&hash[12..])
    ))
}

/// The node id (uncompressed public key without the 0x04 prefix, hex) of a validated node key.
pub fn node_id(nodekey: &SecretValue) -> Option<String> {
    let hex = std::str::from_utf8(nodekey.expose()).ok()?.trim();
    let bytes = decode_secret_hex(hex)?;
    let secret = k256::SecretKey::from_slice(&bytes).ok()?;
    let point =
        k256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&secret.public_key(), false);
    Some(crate::chain::genesis::encode_hex(&point.as_bytes()[1..]))
}

/// Writes every secret file and every file rendered from them, each atomically.
/// `owner`: who gets the files when the caller is root.
pub fn write_all(
    secrets: &[PlannedSecret],
    rendered: &[Rendered],
    set: &SecretSet,
    owner: Option<crate::privileges::Account>,
) -> Result<(), SecretError> {
    let write_file = |path: &Path, value: &[u8]| write_file_as(path, value, 0o400, owner);
    for s in secrets {
        if let Some(f) = set.get(s.kind) {
            write_file(&s.file, f.value.expose())?;
        }
    }
    let ws = set.get(SecretKind::EthstatsWsSecret).map(|f| &f.value);
    for r in rendered {
        match (r, ws) {
            (Rendered::GethEthstatsConfig { path, name, server }, Some(ws)) => {
                write_file(path, geth_ethstats_toml(name, ws, server).expose())?
            }
            (Rendered::EthstatsSecretJson { path }, Some(ws)) => {
                write_file(path, ethstats_secret_json(ws).expose())?
            }
            (_, None) => {}
        }
    }
    Ok(())
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
        write_file_as(&path, b"one", 0o400, None).unwrap();
        write_file_as(&path, b"two", 0o400, None).unwrap();
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
    fn rendered_files_are_built_in_buffers_of_their_exact_length() {
        // A buffer that grew would have left a copy of the secret in the memory it moved out of.
        let secret = SecretValue::new(
            b"a-longer-ethstats-secret-than-64-bytes-of-headroom-would-fit-in".to_vec(),
        );
        for rendered in [
            geth_ethstats_toml("a-node-name", &secret, "ethstats.internal:3000"),
            ethstats_secret_json(&secret),
        ] {
            assert_eq!(rendered.0.capacity(), rendered.expose().len());
        }
    }

    #[test]
    fn json_string_fields_are_decoded_like_serde_json_does() {
        let raw = SecretValue::new(
            br#"{"password":"p\"w\\\/\b\f\n\r\t\u0041\u00e9\ud83d\ude00x"}"#.to_vec(),
        );
        let v = json_field(&raw, "password").unwrap();
        assert_eq!(
            v.expose(),
            "p\"w\\/\u{8}\u{c}\n\r\tA\u{e9}\u{1f600}x".as_bytes()
        );
        // The buffer is sized once, at the literal's length: never reallocated.
        assert!(v.0.capacity() >= v.expose().len());
        // The last of duplicate fields wins, as with serde_json's Value.
        let dup = SecretValue::new(br#"{"password":"one","password":"two"}"#.to_vec());
        assert_eq!(json_field(&dup, "password").unwrap().expose(), b"two");
        // A lone surrogate is not JSON serde_json accepts as a string: refused as before.
        let lone = SecretValue::new(br#"{"password":"\ud83d"}"#.to_vec());
        assert!(json_field(&lone, "password")
            .unwrap_err()
            .contains("not a JSON object"));
        // Valid JSON that is not an object has no fields.
        let list = SecretValue::new(br#"["password"]"#.to_vec());
        assert!(json_field(&list, "password")
            .unwrap_err()
            .contains("no field"));
    }

    fn fixture(name: &str) -> SecretValue {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/secrets/dev/sealer");
        SecretValue::new(std::fs::read(dir.join(name)).unwrap())
    }

    fn keystore_set(password: &[u8]) -> SecretSet {
        let mut set = SecretSet::default();
        let ks = validate(
            SecretKind::SealerKeystore,
            "k",
            &fixture("keystore"),
            SIGNER,
        )
        .unwrap();
        let pw = validate(
            SecretKind::SealerPassword,
            "p",
            &SecretValue::new(password.to_vec()),
            SIGNER,
        )
        .unwrap();
        for (kind, value) in [
            (SecretKind::SealerKeystore, ks),
            (SecretKind::SealerPassword, pw),
        ] {
            set.set(
                kind,
                Fetched {
                    value,
                    version: "1".into(),
                },
            );
        }
        set
    }

    #[tokio::test]
    async fn the_keystore_check_needs_no_directory_and_leaves_no_descriptor() {
        let set = keystore_set(fixture("password").expose());
        check_set(&[], &set, SIGNER).await.unwrap();
        // No descriptor is left open behind the check.
        let memfds = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().contains("node-agent-keystore"))
                })
                .count()
        };
        let e = check_set(&[], &keystore_set(b"not the password"), SIGNER)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("keystore does not decrypt with the sealer password"),
            "{e}"
        );
        assert_eq!(memfds(), 0);
    }

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

    proptest::proptest! {
        #[test]
        fn any_secret_payload_is_validated_or_refused_without_echoing_it(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let v = SecretValue::new(bytes.clone());
            for kind in [SecretKind::SealerKeystore, SecretKind::SealerPassword, SecretKind::BootnodeNodekey, SecretKind::EthstatsWsSecret] {
                if let Err(e) = validate(kind, "n", &v, SIGNER) {
                    let text = String::from_utf8_lossy(&bytes);
                    if text.len() >= 8 {
                        proptest::prop_assert!(!e.to_string().contains(text.as_ref()), "error echoes the secret");
                    }
                }
            }
            proptest::prop_assert_eq!(check_kdf("n", &v).map_err(|e| e.to_string()), check_kdf_as_before(&v));
            let _ = json_field(&v, "password");
            let _ = node_id(&v);
        }

        #[test]
        fn any_string_field_reads_back_exactly(text in proptest::prelude::any::<String>()) {
            let raw = SecretValue::new(serde_json::to_vec(&serde_json::json!({"f": text})).unwrap());
            let read = json_field(&raw, "f").unwrap();
            proptest::prop_assert_eq!(read.expose(), text.as_bytes());
        }

        #[test]
        fn keystore_shaped_json_never_panics(
            dklen in 0u64..100, n in 0u64..(1 << 20), r in 0u64..20, p in 0u64..10,
            iv in "[0-9a-f]{0,40}", kdf in "(scrypt|pbkdf2|other)",
        ) {
            let ks = serde_json::json!({"address": "ea94d5964b36a107571e051649c2eb52ff0c323f", "crypto": {
                "kdf": kdf, "kdfparams": {"dklen": dklen, "n": n, "r": r, "p": p, "c": n, "salt": "00"},
                "cipherparams": {"iv": iv}, "ciphertext": "00", "mac": "00"}});
            let ks = SecretValue::new(ks.to_string().into_bytes());
            // Same verdict and message as the check written over serde_json's Value (which copied).
            proptest::prop_assert_eq!(
                check_kdf("n", &ks).map_err(|e| e.to_string()),
                check_kdf_as_before(&ks)
            );
        }
    }

    /// check_kdf as it was written over serde_json's Value: the reference for its replacement.
    fn check_kdf_as_before(keystore: &SecretValue) -> Result<(), String> {
        let invalid = |problem: &str| format!("secret n: {problem}");
        let v: serde_json::Value = serde_json::from_slice(keystore.expose())
            .map_err(|_| invalid("keystore is not JSON"))?;
        let crypto = v
            .get("crypto")
            .or_else(|| v.get("Crypto"))
            .ok_or_else(|| invalid("keystore has no crypto section"))?;
        let params = crypto
            .get("kdfparams")
            .ok_or_else(|| invalid("keystore has no kdfparams"))?;
        let num = |k: &str| params.get(k).and_then(serde_json::Value::as_u64);
        if num("dklen") != Some(32) {
            return Err(invalid("keystore kdfparams.dklen must be 32"));
        }
        let iv = crypto
            .pointer("/cipherparams/iv")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        if iv.len() != 32 || !iv.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("keystore cipherparams.iv must be 16 bytes of hex"));
        }
        match crypto.get("kdf").and_then(serde_json::Value::as_str) {
            Some("scrypt") => {
                let n = num("n").unwrap_or(0);
                let ok = n.is_power_of_two()
                    && (2..=1 << 18).contains(&n)
                    && num("r") == Some(8)
                    && (1..=4).contains(&num("p").unwrap_or(0));
                if !ok {
                    return Err(invalid("keystore scrypt parameters out of range (n a power of two up to 262144, r 8, p 1-4)"));
                }
            }
            Some("pbkdf2") => {
                if !(1..=10_000_000).contains(&num("c").unwrap_or(0)) {
                    return Err(invalid("keystore pbkdf2 iteration count out of range"));
                }
            }
            _ => return Err(invalid("keystore kdf must be scrypt or pbkdf2")),
        }
        Ok(())
    }
}

//! Secrets: fetched from Secrets Manager (or a local directory), held in a redacting, zeroizing type, and
//! written only into the private directory, atomically, mode 0400.
//!
//! The steps, in the order `boot` takes them:
//!
//! 1. [`Source`] (`source`): Secrets Manager with the instance role's credentials, or a local directory;
//!    a field of a JSON secret is read out of it without copying the rest (`json`);
//! 2. [`fetch_all`]: every secret of the plan fetched and checked for its purpose ([`validate`], `check`);
//! 3. [`check_set`] (`check`): what only the whole set shows: the keystore decrypts with the password into
//!    the signer's key;
//! 4. [`write_all`] (`write`): the secret files and the files rendered from them, each atomically;
//! 5. [`wipe_dir`] when the agent stops.
//!
//! Rotation (`serve::rotation`) polls [`Source::current_version`] and takes steps 2 to 4 again for the
//! secrets whose version changed. This file holds the value type, the errors, the set and [`fetch_all`].

mod check;
mod json;
mod source;
mod write;

pub use check::{check_set, node_id, validate};
pub use source::{Fetched, Source, Wanted, CURRENT};
pub use write::{wipe_dir, write_all, write_file_as};

use crate::plan::{PlannedSecret, SecretKind};
use std::fmt;
use std::path::PathBuf;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_never_format_their_contents() {
        let v = SecretValue::new(b"hunter2".to_vec());
        assert_eq!(format!("{v}"), "<redacted>");
        assert!(!format!("{v:?}").contains("hunter2"));
        assert!(!format!("{:?}", Some(&v)).contains("hunter2"));
    }
}

//! Configuration, in three steps:
//! 1. [`file`]: the fleet-wide file as written (strict TOML, every key defaulted, nothing checked);
//! 2. [`settings`]: one validated, fully typed [`Settings`] for this host, which everything after
//!    start-up reads: built section by section from the file, this host's [`tags`] and the genesis;
//! 3. [`checks`]: the pure validators the sections are built with.
//!
//! [`storage`], [`secrets`], [`health`] and [`backup`] are those sections whole: their vocabulary, typed settings and check.
//! Pure: no I/O but reading files.

pub mod backup;
pub mod checks;
pub mod file;
pub mod health;
pub mod metrics;
pub mod secrets;
pub mod settings;
pub mod storage;
pub mod tags;
pub mod userdata;

pub use backup::ExportSettings;
pub use checks::{check_access_point_id, check_environment, check_fs_id, fill};
pub use file::{ChainFile, ConfigFile, SecretSourceKind, StorageKind, DEFAULT_PATH, EXAMPLE};
pub use health::{HealthSettings, LifecycleHook};
pub use secrets::{SecretRef, SecretsSettings};
pub use settings::{LogsSettings, RestartSettings, Settings};
pub use storage::{EfsSettings, StorageSettings};

use crate::chain::genesis::GenesisError;
use std::path::PathBuf;

/// Why the configuration cannot be used. Each names the file or key to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source} (check the path given to --config)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("user-data line {line}: {message} (user-data that starts with #node-agent is node-agent's configuration: fix it in the launch template, whose user-data the instance reads at boot)")]
    UserData { line: usize, message: String },
    #[error("config {path}: {key}: {problem}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        problem: String,
    },
    #[error("instance tag {tag}: {problem}")]
    Tag { tag: &'static str, problem: String },
    #[error(transparent)]
    Genesis(#[from] GenesisError),
}

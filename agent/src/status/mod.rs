//! `node-agent status`: the running agent answers on a local Unix socket (read-only: one request word,
//! one JSON document back); the command renders it for humans or prints the JSON, and maps it to an exit
//! code for scripts and load-balancer checks.
//!
//! `model` is the document (one type for the agent that sends it and the command that reads it) and the
//! verdict; `server` assembles it from what the agent's tasks publish and answers on the socket;
//! `client` is the command; `render` the layout for people; `verdict` the load balancer's ready and live,
//! which the health endpoint serves and the document shows.

pub mod backup;
mod client;
pub mod metrics;
pub mod model;
mod render;
mod server;
pub mod verdict;

pub use backup::{BackupAsk, BACKUP_NOW};
pub use client::{command, record_socket};
pub use model::{LogsStatus, StorageKind};
pub use render::{ago, bytes};
pub use server::{
    document, serve, Gate, Reach, SecretInfo, Services, Sources, Static, StoragePlace, StorageProbe,
};

/// The JSON document's schema version; bumped only on incompatible changes.
pub const SCHEMA: u32 = 1;
/// The only request the socket understands.
pub const REQUEST: &str = "status";
/// The socket's file name in the runtime directory.
pub const SOCKET: &str = "status.sock";
/// Exit code when no agent answers.
pub const EXIT_NOT_RUNNING: u8 = 3;

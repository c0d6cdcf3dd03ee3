//! The chain backups' part of the document (what the exporter publishes after each round, and when it
//! is degraded), and the socket's request for a round now (`backup --now`).

use serde::{Deserialize, Serialize};

/// Chain backups as the exporter publishes them (status's `backup` part).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupStatus {
    /// The backups' directory.
    pub dir: String,
    /// Whether this node exports (holds the lock); otherwise who does, if anyone.
    pub exporting: bool,
    pub holder: Option<String>,
    pub interval_secs: u64,
    /// Blocks 1 to this are backed up.
    pub covered_to: u64,
    pub segments: u64,
    /// The newest segment: its range, size and when it was written.
    pub newest: Option<NewestSegment>,
    /// The last round's failure; cleared by a round that succeeds.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewestSegment {
    pub first: u64,
    pub last: u64,
    pub bytes: u64,
    pub created_at: u64,
}

impl BackupStatus {
    /// Degraded when this node exports and the newest backup is older than twice the interval, or the
    /// last round failed.
    pub fn degraded(&self, now: u64) -> bool {
        if !self.exporting {
            return false;
        }
        let stale = match &self.newest {
            Some(n) => now.saturating_sub(n.created_at) > 2 * self.interval_secs,
            None => false,
        };
        stale || self.error.is_some()
    }
}

/// `backup --now`: the round's outcome in one line.
pub type BackupAsk = tokio::sync::oneshot::Sender<Result<String, String>>;

/// The socket's request for a backup round now.
pub const BACKUP_NOW: &str = "backup now";

/// Runs a backup round on the exporter and answers its outcome; slow (a round takes as long as its
/// export), so the client waits, with its own limit.
pub async fn backup_now(asks: Option<&tokio::sync::mpsc::Sender<BackupAsk>>) -> serde_json::Value {
    let Some(asks) = asks else {
        return serde_json::json!({"error": "this node does not export backups (backup.role names another role, or \"\")"});
    };
    let (ask, answer) = tokio::sync::oneshot::channel();
    if asks.send(ask).await.is_err() {
        return serde_json::json!({"error": "the exporter is not running"});
    }
    match answer.await {
        Ok(Ok(done)) => serde_json::json!({"done": done}),
        Ok(Err(e)) => serde_json::json!({"error": e}),
        Err(_) => serde_json::json!({"error": "the exporter stopped before answering"}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exporting() -> BackupStatus {
        BackupStatus {
            exporting: true,
            interval_secs: 60,
            covered_to: 300,
            segments: 3,
            newest: Some(NewestSegment {
                first: 201,
                last: 300,
                bytes: 2048,
                created_at: 1000,
            }),
            ..BackupStatus::default()
        }
    }

    #[test]
    fn a_stale_or_failing_backup_degrades_only_the_exporting_node() {
        let mut b = exporting();
        assert!(!b.degraded(1100));
        assert!(b.degraded(1121));
        b.error = Some("IPC down".into());
        assert!(b.degraded(1001));
        b.exporting = false;
        assert!(!b.degraded(5000));
    }
}

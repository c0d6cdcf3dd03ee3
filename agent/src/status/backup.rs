//! The chain backups' part of the document: what the exporter publishes after each round, when it is
//! degraded, and its line for people.

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

/// The `backup` line for people.
pub fn line(b: &BackupStatus, now: u64) -> String {
    let mut out = match &b.newest {
        Some(n) => format!(
            "blocks 1-{} in {} segments, newest #{}-#{} {} old ({})",
            b.covered_to,
            b.segments,
            n.first,
            n.last,
            super::render::ago(now.saturating_sub(n.created_at)),
            super::render::bytes(n.bytes)
        ),
        None => "no segment yet".to_owned(),
    };
    match (b.exporting, &b.holder) {
        (true, _) => out += "; this node exports",
        (false, Some(h)) => out += &format!("; exported by {h}, this node stands by"),
        (false, None) => out += "; no node exports yet",
    }
    if b.degraded(now) && b.error.is_none() {
        out += &format!(
            " (STALE: older than twice backup.interval_secs, {}s)",
            b.interval_secs
        );
    }
    if let Some(e) = &b.error {
        out += &format!("; last round failed: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_or_failing_backup_degrades_only_the_exporting_node() {
        let mut b = BackupStatus {
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
        };
        assert!(!b.degraded(1100));
        assert_eq!(
            line(&b, 1100),
            "blocks 1-300 in 3 segments, newest #201-#300 100s old (2.0 KiB); this node exports"
        );
        assert!(b.degraded(1121));
        assert!(line(&b, 1121).ends_with("(STALE: older than twice backup.interval_secs, 60s)"));
        b.error = Some("IPC down".into());
        assert!(b.degraded(1001));
        b.exporting = false;
        b.holder = Some("i-0other pid 7".into());
        assert!(!b.degraded(5000));
        assert!(line(&b, 5000).contains("exported by i-0other pid 7, this node stands by"));
    }
}

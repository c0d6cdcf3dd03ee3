//! What the log pipeline tells `status`: each stream's shipping progress, and the `logs` part of the
//! status document judged from them (pure).

use super::writer;
use crate::status::model::StreamStatus;
use crate::status::{bytes, LogsStatus};
use std::sync::{Arc, Mutex};

/// One log file and, when shipping, its stream.
pub(super) struct Target {
    pub(super) status: Arc<Mutex<StreamStatus>>,
    pub(super) shared: Arc<writer::Shared>,
}

/// A read-only view of the shipping state, for `node-agent status`.
#[derive(Clone)]
pub struct StatusSource(pub(super) Arc<Vec<Target>>);

impl StatusSource {
    /// One entry per log file: shipping progress, lag, retries, rejected events, local losses.
    pub fn snapshot(&self) -> Vec<StreamStatus> {
        self.0
            .iter()
            .map(|t| {
                let mut st = t.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let s = t.shared.lock();
                st.unwritten_lines = s.unwritten_lines;
                st.lost_bytes = s.lost_bytes;
                st
            })
            .collect()
    }
}

/// Shipping failing this long makes the host degraded.
const DEGRADED_AFTER_MS: i64 = 30_000;

/// The status document's `logs` part. Pure.
pub fn status(streams: &[StreamStatus], now_ms: i64) -> LogsStatus {
    let shipping = streams.iter().any(|s| s.shipping);
    let lag: u64 = streams.iter().map(|s| s.lag_bytes).sum();
    let failing = streams
        .iter()
        .filter_map(|s| s.failing_since_ms.map(|t| (now_ms - t, s)))
        .max_by_key(|(d, _)| *d);
    let unwritten: u64 = streams.iter().map(|s| s.unwritten_lines).sum();
    let lost: u64 = streams.iter().map(|s| s.lost_bytes).sum();
    let rejected: u64 = streams
        .iter()
        .map(|s| s.rejected_too_old + s.rejected_too_new + s.rejected_expired + s.rejected_invalid)
        .sum();
    let mut summary = if !shipping {
        "files only (not shipped)".to_owned()
    } else if let Some((d, s)) = failing {
        format!(
            "CloudWatch failing for {}s ({}), lag {}",
            d / 1000,
            s.last_error.as_deref().unwrap_or("?"),
            bytes(lag)
        )
    } else {
        match streams.iter().filter_map(|s| s.last_success_ms).max() {
            Some(t) => format!(
                "last shipped {}s ago, lag {}",
                (now_ms - t).max(0) / 1000,
                bytes(lag)
            ),
            None => format!("nothing shipped yet, lag {}", bytes(lag)),
        }
    };
    for (n, what) in [
        (unwritten, "lines not written (disk)"),
        (rejected, "events rejected by CloudWatch"),
    ] {
        if n > 0 {
            summary.push_str(&format!(", {n} {what}"));
        }
    }
    if lost > 0 {
        summary.push_str(&format!(", {} rotated away unshipped", bytes(lost)));
    }
    // Every stream of a group meets the same refusal: each once.
    let errors: std::collections::BTreeSet<&str> = streams
        .iter()
        .filter_map(|s| s.setup_error.as_deref())
        .collect();
    if let Some(first) = errors.first() {
        summary.push_str(&format!(", error: {first}"));
    }
    LogsStatus {
        summary,
        // A refused setup needs a policy fix, however well shipping goes.
        degraded: failing.is_some_and(|(d, _)| d >= DEGRADED_AFTER_MS) || !errors.is_empty(),
        errors: errors.into_iter().map(str::to_owned).collect(),
        lag_bytes: lag,
        streams: streams.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_says_how_shipping_goes_and_turns_degraded_after_30_s_of_failures() {
        let ok = StreamStatus {
            shipping: true,
            last_success_ms: Some(8_000),
            lag_bytes: 2048,
            ..StreamStatus::default()
        };
        let v = status(std::slice::from_ref(&ok), 10_000);
        assert_eq!(v.summary, "last shipped 2s ago, lag 2.0 KiB");
        assert!(!v.degraded);
        let failing = StreamStatus {
            failing_since_ms: Some(0),
            last_error: Some("ThrottlingException".into()),
            unwritten_lines: 3,
            ..ok.clone()
        };
        let v = status(&[ok.clone(), failing.clone()], 29_999);
        assert!(!v.degraded);
        let v = status(&[ok.clone(), failing.clone()], 30_000);
        assert!(v.degraded);
        assert_eq!(
            v.summary,
            "CloudWatch failing for 30s (ThrottlingException), lag 4.0 KiB, 3 lines not written (disk)"
        );
        assert_eq!((v.lag_bytes, v.streams), (4096, vec![ok, failing]));
        let off = status(&[StreamStatus::default()], 0);
        assert_eq!(off.summary, "files only (not shipped)");
    }

    #[test]
    fn a_refused_log_group_setup_is_an_error_in_status_even_while_shipping_works() {
        let denied = "CreateLogGroup /g: access denied (AccessDeniedException: no): the instance role needs logs:CreateLogGroup on the log group; `node-agent iam-policy` prints the grants";
        let s = StreamStatus {
            shipping: true,
            last_success_ms: Some(9_000),
            setup_error: Some(denied.into()),
            ..StreamStatus::default()
        };
        let v = status(&[s.clone(), s], 10_000);
        assert!(v.degraded);
        assert_eq!(v.errors, [denied]);
        assert_eq!(
            v.summary,
            format!("last shipped 1s ago, lag 0 B, error: {denied}")
        );
        let ok = status(&[StreamStatus::default()], 0);
        assert!(ok.errors.is_empty());
    }
}

//! The CloudWatch Logs side of shipping: the client, the calls that set up the group and stream and put
//! events, and how their answers are told apart (done, missing, failed, denied, invalid). Retrying is
//! the shipper's.

use super::Stream;
use crate::error::error_chain;
use crate::logs::batch;
use aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata;
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use std::time::Duration;

/// The CloudWatch Logs client. Retries are ours (counted, never giving up), so the SDK's are off.
#[derive(Clone, Debug)]
pub struct Client(aws_sdk_cloudwatchlogs::Client);

impl Client {
    pub async fn new(region: &str) -> Client {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_owned()))
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .build(),
            )
            .load()
            .await;
        Client(aws_sdk_cloudwatchlogs::Client::new(&conf))
    }
}

pub(super) enum Put {
    Done,
    /// The group or stream is gone: create it and send again.
    Missing,
    /// The error, and whether it was AccessDenied.
    Failed(String, bool),
    /// Refused for what it holds: the same events would be refused again.
    Invalid(String),
}

/// Why the group or stream could not be set up.
pub(super) enum Setup {
    /// Throttling, 5xx, network: retried.
    Failed(String),
    /// The instance role may not: retried too (the policy may be fixed), but an error, not a warning.
    Denied(String),
}

const ACCESS_DENIED: &str = "AccessDeniedException";

/// One line for an AccessDenied: the call, the group, the service's words and the fix.
fn denied_message(action: &str, target: &str, cause: &str) -> String {
    format!("{action} {target}: access denied ({cause}): the instance role needs logs:{action} on the log group; `node-agent iam-policy` prints the grants")
}

impl Stream {
    /// Creates the group, sets its retention, creates the stream. AccessDenied on the group or its
    /// retention is an error (status and log) but not the end: a group made beforehand still takes the
    /// stream. The stream itself is needed.
    pub(super) async fn try_ensure(&self) -> Result<(), Setup> {
        let c = &self.client.0;
        let mut denied = Vec::new();
        let creating = self.create_group;
        // Made beforehand (logs.create_group = false): the instance role is not even granted these calls.
        let created = match creating {
            true => c
                .create_log_group()
                .log_group_name(&self.group)
                .send()
                .await
                .err(),
            false => None,
        };
        if let Some(e) = created {
            match e.code() {
                Some("ResourceAlreadyExistsException") => {}
                Some(ACCESS_DENIED) => denied.push(denied_message(
                    "CreateLogGroup",
                    &self.group,
                    &error_chain(&e),
                )),
                _ => {
                    return Err(Setup::Failed(format!(
                        "CreateLogGroup {}: {}",
                        self.group,
                        error_chain(&e)
                    )))
                }
            }
        }
        if creating && self.retention_days > 0 {
            if let Err(e) = c
                .put_retention_policy()
                .log_group_name(&self.group)
                .retention_in_days(self.retention_days as i32)
                .send()
                .await
            {
                match e.code() {
                    Some(ACCESS_DENIED) => denied.push(denied_message(
                        "PutRetentionPolicy",
                        &self.group,
                        &error_chain(&e),
                    )),
                    _ => {
                        return Err(Setup::Failed(format!(
                            "PutRetentionPolicy {}: {}",
                            self.group,
                            error_chain(&e)
                        )))
                    }
                }
            }
        }
        {
            let mut st = self.status();
            // Once per refusal, not at every retry of the stream.
            for d in &denied {
                if !st
                    .setup_error
                    .as_deref()
                    .is_some_and(|e| e.contains(d.as_str()))
                {
                    tracing::error!(group = %self.group, stream = %self.stream, error = %d, "CloudWatch Logs refused to set up the log group; shipping goes on if the group exists");
                }
            }
            st.setup_error = (!denied.is_empty()).then(|| denied.join("; "));
        }
        match c
            .create_log_stream()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ResourceAlreadyExistsException") => Ok(()),
            Err(e) if e.code() == Some(ACCESS_DENIED) => {
                let target = format!("{}/{}", self.group, self.stream);
                denied.push(denied_message("CreateLogStream", &target, &error_chain(&e)));
                Err(Setup::Denied(denied.join("; ")))
            }
            Err(e) => Err(Setup::Failed(format!(
                "CreateLogStream {}/{}: {}",
                self.group,
                self.stream,
                error_chain(&e)
            ))),
        }
    }

    async fn put(&self, events: Vec<InputLogEvent>) -> Put {
        let n = events.len() as u64;
        let result = self
            .client
            .0
            .put_log_events()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .set_log_events(Some(events))
            .send()
            .await;
        match result {
            Ok(out) => {
                if let Some(r) = out.rejected_log_events_info() {
                    let too_new = r
                        .too_new_log_event_start_index()
                        .map_or(0, |i| n.saturating_sub(i as u64));
                    let too_old = r.too_old_log_event_end_index().map_or(0, |i| i as u64 + 1);
                    let expired = r.expired_log_event_end_index().map_or(0, |i| i as u64 + 1);
                    if too_new + too_old + expired > 0 {
                        tracing::warn!(group = %self.group, stream = %self.stream, too_new, too_old, expired, "CloudWatch rejected log events outside its time window");
                    }
                    let mut st = self.status();
                    st.rejected_too_new += too_new;
                    st.rejected_too_old += too_old;
                    st.rejected_expired += expired;
                }
                Put::Done
            }
            Err(e) if e.code() == Some("ResourceNotFoundException") => Put::Missing,
            Err(e) if e.code() == Some("InvalidParameterException") => {
                Put::Invalid(error_chain(&e))
            }
            Err(e) if e.code() == Some(ACCESS_DENIED) => Put::Failed(
                denied_message("PutLogEvents", &self.group, &error_chain(&e)),
                true,
            ),
            Err(e) => Put::Failed(error_chain(&e), false),
        }
    }

    /// Sends `events`. When CloudWatch refuses them as invalid, sends them again part by part
    /// ([`batch::Bisect`]) until each refused event is alone, sets those aside (counted, logged, in
    /// status) and ships the rest. Any other failure ends it: the whole batch is sent again later (parts
    /// accepted meanwhile are sent twice, as after a crash).
    pub(super) async fn put_or_set_aside(&self, events: Vec<InputLogEvent>) -> Put {
        let mut parts = batch::Bisect::new(events.len());
        while let Some(part) = parts.next_part() {
            let answer = if part.len() == events.len() {
                self.put(events.clone()).await
            } else {
                self.put(events[part.clone()].to_vec()).await
            };
            match answer {
                Put::Done => {}
                Put::Invalid(why) => {
                    if parts.refused(part.clone()) {
                        let bytes = events[part.start].message().len();
                        tracing::error!(group = %self.group, stream = %self.stream, bytes, error = %why, "CloudWatch refused a log event as invalid; set aside (lost), shipping the rest");
                        let mut st = self.status();
                        st.rejected_invalid += 1;
                        st.last_rejected = Some(why);
                    }
                }
                other => return other,
            }
        }
        Put::Done
    }
}

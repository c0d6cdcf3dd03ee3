//! Who this host is: region, instance, addresses and tags, from IMDSv2 (or from flags in local mode).

use crate::backoff::Backoff;
use aws_config::imds::client::error::ImdsError;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// This instance, as EC2 describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub region: String,
    pub instance_id: String,
    pub availability_zone: String,
    pub private_ipv4: String,
    pub public_ipv4: Option<String>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("instance metadata service at {endpoint} unreachable after {}s: {cause} (check that the instance has IMDSv2 enabled and a hop limit of at least 1{hint})", waited.as_secs())]
    Unreachable {
        endpoint: String,
        waited: Duration,
        cause: String,
        /// At boot, the way out for someone who is not on EC2 at all.
        hint: &'static str,
    },
    #[error("instance tags are not readable from instance metadata (404 on /latest/meta-data/tags/instance): enable InstanceMetadataTags on the instance or its launch template (aws ec2 modify-instance-metadata-options --instance-metadata-tags enabled)")]
    TagsDisabled,
    #[error("instance metadata {path}: {cause}")]
    Bad { path: String, cause: String },
}

/// Where IMDS is, for messages: the SDK's own resolution order.
pub fn imds_endpoint() -> String {
    std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .unwrap_or_else(|_| "http://169.254.169.254".into())
}

fn status(e: &ImdsError) -> Option<u16> {
    match e {
        ImdsError::ErrorResponse(r) => Some(r.response().status().as_u16()),
        _ => None,
    }
}

/// What to do off EC2, where no instance metadata service will ever answer.
const NOT_ON_EC2: &str = "; not on EC2? run without AWS with --local --role ROLE --environment ENV";

/// The identity at boot: like [`from_imds`], but the first retry and the final error say how to run off EC2
/// (`--local`), so nobody waits two minutes to learn it.
pub async fn at_boot(deadline: Duration) -> Result<Identity, IdentityError> {
    read_retrying(deadline, NOT_ON_EC2).await
}

/// Reads the identity, retrying while IMDS is not answering yet (early boot), up to `deadline`.
pub async fn from_imds(deadline: Duration) -> Result<Identity, IdentityError> {
    read_retrying(deadline, "").await
}

async fn read_retrying(deadline: Duration, hint: &'static str) -> Result<Identity, IdentityError> {
    let client = client();
    let endpoint = imds_endpoint();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5), deadline);
    let mut first = true;
    loop {
        match read(&client).await {
            Ok(id) => return Ok(id),
            Err(Attempt::Final(e)) => return Err(e),
            Err(Attempt::Retry(cause)) => {
                let Some(delay) = backoff.next_delay() else {
                    return Err(IdentityError::Unreachable {
                        endpoint,
                        waited: backoff.waited(),
                        cause,
                        hint,
                    });
                };
                if std::mem::take(&mut first) && !hint.is_empty() {
                    tracing::warn!(%endpoint, %cause, retry_in = ?delay, until = ?deadline, "instance metadata not available yet; retrying (not on EC2? pass --local --role ROLE --environment ENV to run without AWS)");
                } else {
                    tracing::warn!(%endpoint, %cause, retry_in = ?delay, "instance metadata not available yet");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

enum Attempt {
    Retry(String),
    Final(IdentityError),
}

async fn get(client: &aws_config::imds::Client, path: &str) -> Result<Option<String>, Attempt> {
    match client.get(path).await {
        Ok(v) => Ok(Some(v.as_ref().to_owned())),
        Err(e) if status(&e) == Some(404) => Ok(None),
        // A 4xx other than 404 will not heal by waiting (403: IMDS disabled for this instance).
        Err(e) if status(&e).is_some_and(|s| (400..500).contains(&s)) => {
            Err(Attempt::Final(IdentityError::Bad {
                path: path.into(),
                cause: format!("HTTP {}", status(&e).unwrap_or_default()),
            }))
        }
        Err(e) => Err(Attempt::Retry(crate::error::error_chain(&e))),
    }
}

async fn required(client: &aws_config::imds::Client, path: &str) -> Result<String, Attempt> {
    get(client, path).await?.ok_or_else(|| {
        Attempt::Final(IdentityError::Bad {
            path: path.into(),
            cause: "not found".into(),
        })
    })
}

async fn read(client: &aws_config::imds::Client) -> Result<Identity, Attempt> {
    let document = required(client, "/latest/dynamic/instance-identity/document").await?;
    let doc: serde_json::Value = serde_json::from_str(&document).map_err(|e| {
        Attempt::Final(IdentityError::Bad {
            path: "/latest/dynamic/instance-identity/document".into(),
            cause: format!("not JSON: {e}"),
        })
    })?;
    let field = |k: &str| -> Result<String, Attempt> {
        doc.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| {
                Attempt::Final(IdentityError::Bad {
                    path: "/latest/dynamic/instance-identity/document".into(),
                    cause: format!("no {k}"),
                })
            })
    };
    let region = match std::env::var("AWS_REGION") {
        Ok(r) if !r.is_empty() => r,
        _ => field("region")?,
    };
    let instance_id = field("instanceId")?;
    let availability_zone = field("availabilityZone")?;
    let private_ipv4 = required(client, "/latest/meta-data/local-ipv4").await?;
    let public_ipv4 = get(client, "/latest/meta-data/public-ipv4").await?;
    let keys = get(client, "/latest/meta-data/tags/instance")
        .await?
        .ok_or(Attempt::Final(IdentityError::TagsDisabled))?;
    let mut tags = BTreeMap::new();
    for key in keys.lines().map(str::trim).filter(|k| !k.is_empty()) {
        // Keys exposed through IMDS are restricted to [A-Za-z0-9+-=._:@], so they are safe in a path.
        if let Some(v) = get(client, &format!("/latest/meta-data/tags/instance/{key}")).await? {
            tags.insert(key.to_owned(), v);
        }
    }
    Ok(Identity {
        region,
        instance_id,
        availability_zone,
        private_ipv4,
        public_ipv4,
        tags,
    })
}

/// Why this instance is going away, as its metadata says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leaving {
    /// Auto Scaling is terminating it: `autoscaling/target-lifecycle-state` is `Terminated`.
    Terminated,
    /// A Spot interruption is scheduled (`spot/instance-action`): terminate, stop or hibernate, at `time`.
    Spot { action: String, time: String },
}

impl std::fmt::Display for Leaving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Leaving::Terminated => f.write_str("Auto Scaling is terminating this instance"),
            Leaving::Spot { action, time } => write!(f, "Spot interruption: {action} at {time}"),
        }
    }
}

/// A client with short timeouts: a question that fails is asked again (by the caller's retries or poll).
pub fn client() -> aws_config::imds::Client {
    aws_config::imds::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(2))
        .build()
}

/// `autoscaling/target-lifecycle-state`: `None` when the instance is not in an Auto Scaling group.
pub async fn lifecycle_state(client: &aws_config::imds::Client) -> Result<Option<String>, String> {
    let path = "/latest/meta-data/autoscaling/target-lifecycle-state";
    match get(client, path).await {
        Ok(v) => Ok(v.map(|s| s.trim().to_owned())),
        Err(Attempt::Retry(cause)) => Err(cause),
        Err(Attempt::Final(e)) => Err(e.to_string()),
    }
}

/// Whether the instance is leaving: its lifecycle state is `Terminated`, or a Spot interruption is
/// scheduled. Both are 404 (`None`) on an instance that stays.
pub async fn leaving(client: &aws_config::imds::Client) -> Result<Option<Leaving>, String> {
    if lifecycle_state(client).await?.as_deref() == Some("Terminated") {
        return Ok(Some(Leaving::Terminated));
    }
    let path = "/latest/meta-data/spot/instance-action";
    let notice = match get(client, path).await {
        Ok(v) => v,
        Err(Attempt::Retry(cause)) => return Err(cause),
        Err(Attempt::Final(e)) => return Err(e.to_string()),
    };
    Ok(notice.map(|text| spot_notice(&text)))
}

/// `{"action": "terminate", "time": "2026-12-01T03:00:00Z"}`; a notice that does not parse still means
/// the instance is leaving.
fn spot_notice(text: &str) -> Leaving {
    let doc: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let field = |k: &str| {
        doc.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("(unreadable notice)")
            .to_owned()
    };
    Leaving::Spot {
        action: field("action"),
        time: field("time"),
    }
}

/// The instance's user-data (`None`: there is none), read once at boot. User-data that is not UTF-8
/// (gzip, binary MIME parts: cloud-init's, never node-agent's) comes back as empty bytes, which no
/// reader takes for configuration.
pub async fn user_data() -> Result<Option<Vec<u8>>, IdentityError> {
    let path = "/latest/user-data";
    match get(&client(), path).await {
        Ok(v) => Ok(v.map(String::into_bytes)),
        // The SDK's client refuses a body that is not UTF-8 with this message (aws-config 1.x).
        Err(Attempt::Retry(cause)) if cause.contains("invalid UTF-8") => Ok(Some(Vec::new())),
        Err(Attempt::Retry(cause)) => Err(IdentityError::Bad {
            path: path.into(),
            cause,
        }),
        Err(Attempt::Final(e)) => Err(e),
    }
}

/// Identity for local mode, from flags: no IMDS involved.
pub fn local(role: &str, environment: &str, instance_id: Option<&str>) -> Identity {
    let host = crate::sys::hostname().unwrap_or_else(|| "localhost".into());
    let mut tags = BTreeMap::new();
    tags.insert(crate::host::tag::ROLE.into(), role.into());
    tags.insert(crate::host::tag::ENVIRONMENT.into(), environment.into());
    Identity {
        region: std::env::var("AWS_REGION").unwrap_or_else(|_| "local".into()),
        instance_id: instance_id
            .map(str::to_owned)
            .unwrap_or(format!("local-{host}")),
        availability_zone: "local".into(),
        private_ipv4: "127.0.0.1".into(),
        public_ipv4: None,
        tags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spot_notice_says_its_action_and_time_and_any_notice_means_leaving() {
        assert_eq!(
            spot_notice(r#"{"action":"stop","time":"2026-12-01T03:00:00Z"}"#).to_string(),
            "Spot interruption: stop at 2026-12-01T03:00:00Z"
        );
        assert!(matches!(spot_notice("garbage"), Leaving::Spot { .. }));
    }
}

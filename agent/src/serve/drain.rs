//! Leaving: Auto Scaling's scale-in and Spot interruptions. [`leaving`] asks the instance metadata until
//! the instance is going away; the runtime then fails `/ready`, keeps serving for `health.drain_secs`
//! while the load balancer takes the node out, stops its children, and [`complete`] completes the
//! termination lifecycle hook, so the instance goes without waiting out the hook's timeout.

use crate::config::LifecycleHook;
use crate::imds::{self, Leaving};
use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use std::time::Duration;

/// Polls the instance metadata every `poll` until the instance is leaving, and says why. A poll that
/// fails is logged once per outage and asked again with a new client (the SDK's client keeps a token
/// IMDS no longer accepts until the token's TTL runs out).
pub async fn leaving(poll: Duration) -> Leaving {
    let mut client = imds::client();
    let mut failing = false;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match imds::leaving(&client).await {
            Ok(Some(why)) => return why,
            Ok(None) if failing => {
                failing = false;
                tracing::info!("instance metadata answers whether this instance is leaving again");
            }
            Ok(None) => {}
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot ask the instance metadata whether this instance is leaving; asking again");
                }
                failing = true;
                client = imds::client();
            }
        }
    }
}

/// Completes `hook` for this instance (CONTINUE) once its children have stopped. Only while Auto
/// Scaling is terminating it: after a Spot notice the lifecycle state is asked first, since an instance
/// outside a group, or one Spot stops rather than terminates, has no lifecycle action waiting.
pub async fn complete(
    hook: &LifecycleHook,
    why: &Leaving,
    instance_id: &str,
    region: &str,
) -> Result<(), String> {
    if let Leaving::Spot { .. } = why {
        let state = imds::lifecycle_state(&imds::client()).await?;
        if state.as_deref() != Some("Terminated") {
            tracing::info!(
                state = state.as_deref().unwrap_or("not in an Auto Scaling group"),
                "no lifecycle action to complete"
            );
            return Ok(());
        }
    }
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
        .load()
        .await;
    let client = aws_sdk_autoscaling::Client::new(&conf);
    let sent = client
        .complete_lifecycle_action()
        .auto_scaling_group_name(&hook.group)
        .lifecycle_hook_name(&hook.name)
        .instance_id(instance_id)
        .lifecycle_action_result("CONTINUE")
        .send()
        .await;
    match sent {
        Ok(_) => {
            tracing::info!(hook = %hook.name, group = %hook.group, "lifecycle action completed (CONTINUE)");
            Ok(())
        }
        Err(e) => {
            let fix = match e.code() {
                Some("AccessDenied") => "; the instance role needs autoscaling:CompleteLifecycleAction on the group (`node-agent iam-policy` prints the grants)",
                Some("ValidationError") => "; check health.lifecycle_hook and health.autoscaling_group against the group's hooks",
                _ => "",
            };
            Err(format!(
                "CompleteLifecycleAction {} of {}: {}{fix}; the instance leaves when the hook's timeout runs out",
                hook.name,
                hook.group,
                crate::error::error_chain(&e)
            ))
        }
    }
}

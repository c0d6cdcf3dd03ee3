//! The `[health]` section: how the children are checked, the health endpoint a load balancer asks, and
//! how the host drains when it is leaving (Auto Scaling scale-in, a Spot interruption). Its typed
//! [`HealthSettings`] and the check that builds them from the file and the tags. Pure.

use super::checks::{at_least_a_second, Invalid};
use super::file::HealthFile;
use crate::host::Role;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// The tag EC2 Auto Scaling puts on every instance it launches: the group's name.
pub const GROUP_TAG: &str = "aws:autoscaling:groupName";

/// Health checks of the children and of the instance metadata service, the endpoint, the drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    pub interval: Duration,
    /// A geth head older than this is stalled (`health.max_head_age_secs`, or six Clique periods).
    pub max_head_age: Duration,
    /// After a start, how long head age and peers are not held against a child.
    pub warmup: Duration,
    /// How long a child may stay unhealthy before it is restarted.
    pub grace: Duration,
    /// Between checks that the instance metadata service still answers.
    pub imds_interval: Duration,
    /// Where the health endpoint listens (`health.listen`); `None` when off.
    pub listen: Option<SocketAddr>,
    /// An rpc node with fewer peers is not ready (`health.min_peers`).
    pub min_peers: u64,
    pub drain: DrainSettings,
}

/// What the host does when Auto Scaling or Spot takes the instance away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainSettings {
    /// How long `/ready` fails before geth is stopped (`health.drain_secs`).
    pub wait: Duration,
    /// How often the instance metadata service is asked whether the instance is leaving.
    pub poll: Duration,
    /// The termination lifecycle hook to complete once geth has stopped; `None` without one.
    pub hook: Option<LifecycleHook>,
}

/// An Auto Scaling termination lifecycle hook: the instance waits in `Terminating:Wait` until it is
/// completed (or its heartbeat timeout runs out).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LifecycleHook {
    pub group: String,
    pub name: String,
}

/// `[health]`: the intervals are not zero; a head age limit of 0 means six Clique periods; a lifecycle
/// hook needs its group, from `health.autoscaling_group` or the instance's `aws:autoscaling:groupName`
/// tag. In local mode there is no instance metadata service, so nothing to drain from: no hook.
pub fn section(
    h: &HealthFile,
    clique_period: u64,
    role: Role,
    tags: &BTreeMap<String, String>,
    local: bool,
) -> Result<HealthSettings, Invalid> {
    at_least_a_second("health.interval_secs", h.interval_secs)?;
    at_least_a_second("health.imds_interval_secs", h.imds_interval_secs)?;
    at_least_a_second("health.lifecycle_interval_secs", h.lifecycle_interval_secs)?;
    if h.drain_secs > MAX_DRAIN_SECS {
        return Err(Invalid::new(
            "health.drain_secs",
            format!("{} is more than {MAX_DRAIN_SECS} (a Spot interruption gives two minutes in all; a lifecycle hook's timeout is at most 7200 s)", h.drain_secs),
        ));
    }
    let max_head_age = match h.max_head_age_secs {
        0 => clique_period.saturating_mul(6),
        n => n,
    };
    Ok(HealthSettings {
        interval: Duration::from_secs(h.interval_secs),
        max_head_age: Duration::from_secs(max_head_age),
        warmup: Duration::from_secs(h.warmup_secs),
        grace: Duration::from_secs(h.grace_secs),
        imds_interval: Duration::from_secs(h.imds_interval_secs),
        listen: listen(&h.listen, role)?,
        min_peers: h.min_peers,
        drain: DrainSettings {
            wait: Duration::from_secs(h.drain_secs),
            poll: Duration::from_secs(h.lifecycle_interval_secs),
            hook: if local { None } else { hook(h, tags)? },
        },
    })
}

/// The longest drain: a termination lifecycle hook waits at most 7200 s.
const MAX_DRAIN_SECS: u64 = 3600;

/// `health.listen`: an address and port, "" for the role's default, or "off".
pub fn listen(listen: &str, role: Role) -> Result<Option<SocketAddr>, Invalid> {
    let text = match (listen, role) {
        ("off", _) => return Ok(None),
        ("", Role::Rpc | Role::Ethstats) => "0.0.0.0:8080",
        ("", Role::Sealer | Role::Bootnode) => "127.0.0.1:8080",
        (text, _) => text,
    };
    match text.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(Some(a)),
        _ => Err(Invalid::new(
            "health.listen",
            format!("{text:?} is not an address and port such as 0.0.0.0:8080 (or \"off\")"),
        )),
    }
}

/// `health.lifecycle_hook` and the group it belongs to.
fn hook(h: &HealthFile, tags: &BTreeMap<String, String>) -> Result<Option<LifecycleHook>, Invalid> {
    if h.lifecycle_hook.is_empty() {
        return Ok(None);
    }
    let name_ok = h.lifecycle_hook.len() <= 255
        && h.lifecycle_hook
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_/".contains(&b));
    if !name_ok {
        return Err(Invalid::new(
            "health.lifecycle_hook",
            format!(
                "{:?} is not a lifecycle hook name (letters, digits, - _ /; at most 255)",
                h.lifecycle_hook
            ),
        ));
    }
    let group = match (h.autoscaling_group.as_str(), tags.get(GROUP_TAG)) {
        ("", Some(tag)) => tag.clone(),
        ("", None) => return Err(Invalid::new(
            "health.autoscaling_group",
            format!("health.lifecycle_hook is set but the Auto Scaling group is unknown: set health.autoscaling_group, or enable instance metadata tags so the {GROUP_TAG} tag is readable"),
        )),
        (g, _) => g.to_owned(),
    };
    if group.len() > 255 || group.chars().any(char::is_control) {
        return Err(Invalid::new(
            "health.autoscaling_group",
            format!("{group:?} is not an Auto Scaling group name (printable, at most 255)"),
        ));
    }
    Ok(Some(LifecycleHook {
        group,
        name: h.lifecycle_hook.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::super::tags::tests::tags;
    use super::*;

    fn build(
        edit: impl Fn(&mut HealthFile),
        tags: &BTreeMap<String, String>,
    ) -> Result<HealthSettings, Invalid> {
        let mut h = HealthFile::default();
        edit(&mut h);
        section(&h, 5, Role::Rpc, tags, false)
    }

    #[test]
    fn the_drain_defaults_to_thirty_seconds_without_a_hook() {
        let s = build(|_| {}, &tags(&[])).unwrap();
        assert_eq!(s.drain.wait, Duration::from_secs(30));
        assert_eq!(s.drain.poll, Duration::from_secs(5));
        assert_eq!(s.drain.hook, None);
    }

    #[test]
    fn the_hooks_group_comes_from_the_file_else_from_the_auto_scaling_tag() {
        let hook = |h: &mut HealthFile| h.lifecycle_hook = "rpc-terminate".into();
        let from_tag = build(hook, &tags(&[(GROUP_TAG, "prod-rpc")])).unwrap();
        assert_eq!(
            from_tag.drain.hook,
            Some(LifecycleHook {
                group: "prod-rpc".into(),
                name: "rpc-terminate".into()
            })
        );
        let both = |h: &mut HealthFile| {
            hook(h);
            h.autoscaling_group = "named".into();
        };
        let named = build(both, &tags(&[(GROUP_TAG, "prod-rpc")])).unwrap();
        assert_eq!(named.drain.hook.unwrap().group, "named");
        let e = build(hook, &tags(&[])).unwrap_err();
        assert_eq!(e.key, "health.autoscaling_group");
        assert!(e.problem.contains(GROUP_TAG), "{}", e.problem);
        // Local mode has no instance metadata to drain from.
        let mut h = HealthFile::default();
        hook(&mut h);
        assert_eq!(
            section(&h, 5, Role::Rpc, &tags(&[]), true)
                .unwrap()
                .drain
                .hook,
            None
        );
    }

    #[test]
    fn bad_drain_values_name_their_key() {
        type Edit = fn(&mut HealthFile);
        let cases: [(&str, Edit); 4] = [
            ("health.lifecycle_hook", |h| {
                h.lifecycle_hook = "no spaces".into()
            }),
            ("health.drain_secs", |h| h.drain_secs = 86_400),
            ("health.lifecycle_interval_secs", |h| {
                h.lifecycle_interval_secs = 0
            }),
            ("health.autoscaling_group", |h| {
                h.lifecycle_hook = "x".into();
                h.autoscaling_group = "a\nb".into();
            }),
        ];
        for (key, edit) in cases {
            assert_eq!(build(edit, &tags(&[])).unwrap_err().key, key);
        }
    }

    #[test]
    fn listen_defaults_per_role() {
        assert_eq!(
            listen("", Role::Rpc).unwrap(),
            Some("0.0.0.0:8080".parse().unwrap())
        );
        assert_eq!(
            listen("", Role::Sealer).unwrap(),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(listen("off", Role::Rpc).unwrap(), None);
        for bad in ["8080", "localhost:8080", "0.0.0.0:0"] {
            assert_eq!(listen(bad, Role::Rpc).unwrap_err().key, "health.listen");
        }
    }
}

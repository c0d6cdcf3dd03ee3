//! Following secret rotation: poll each secret's AWSCURRENT version (DescribeSecret, no value read); when
//! versions change, fetch and validate the new values as a set, replace the files atomically, then restart
//! each child that uses one of them, gracefully and once. A bad new version keeps the old one in place.

use crate::plan::{Plan, SecretKind};
use crate::secrets::{self, Fetched, SecretSet, Source, Wanted};
use crate::serve::child::Control;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// The versions of every secret at one poll: what a refusal is recorded against.
pub type Combination = Vec<(SecretKind, String)>;

/// How many refused combinations are remembered (the oldest is forgotten first: at worst it is tried,
/// and refused, once more).
const REFUSALS_KEPT: usize = 64;

/// Which secrets moved, given the versions in use, the versions now current and the combinations
/// already refused. A refusal holds for exactly the versions it was made with: a new keystore refused
/// with the old password is tried again once its new password arrives. Pure.
pub fn changed(
    in_use: &[(SecretKind, String)],
    current: &[(SecretKind, String)],
    refused: &[Combination],
) -> Vec<SecretKind> {
    if refused.iter().any(|r| r.as_slice() == current) {
        return Vec::new();
    }
    current
        .iter()
        .filter(|(k, v)| in_use.iter().find(|(u, _)| u == k).map(|(_, uv)| uv) != Some(v))
        .map(|(k, _)| *k)
        .collect()
}

/// Records that `current` was refused.
fn refuse(refused: &mut Vec<Combination>, current: &[(SecretKind, String)]) {
    if refused.len() >= REFUSALS_KEPT {
        refused.remove(0);
    }
    refused.push(current.to_vec());
}

/// Indexes of the children using any of `kinds`, each once. Pure.
pub fn affected(plan: &Plan, kinds: &[SecretKind]) -> Vec<usize> {
    plan.children
        .iter()
        .enumerate()
        .filter(|(_, c)| c.secrets.iter().any(|s| kinds.contains(s)))
        .map(|(i, _)| i)
        .collect()
}

/// Why a poll round did not install new versions.
#[derive(Debug)]
enum RoundError {
    /// Secrets Manager did not answer (or refused us): nothing learned, the next round asks again.
    Unreachable(secrets::SecretError),
    /// A new version was read and is not usable: it is refused until another version replaces it.
    Refused(secrets::SecretError),
}

/// Whether a failure to read a new version says something about the version (refuse it) or only about
/// reaching it (ask again next round).
fn refuses_version(e: &secrets::SecretError) -> bool {
    matches!(e, secrets::SecretError::Invalid { .. })
}

/// The rotation watcher's state.
pub struct Rotation {
    /// Where status reads the versions in use and the last refusal.
    pub report: tokio::sync::watch::Sender<Vec<crate::status::SecretInfo>>,
    /// Where status reads whether Secrets Manager answers.
    pub services: tokio::sync::watch::Sender<crate::status::Services>,
    pub source: Source,
    pub set: SecretSet,
    pub plan: Plan,
    pub environment: String,
    pub signer: String,
    pub interval: Duration,
    pub deadline: Duration,
}

impl Rotation {
    /// Polls forever (the task is dropped at shutdown).
    pub async fn watch(mut self, controls: &[UnboundedSender<Control>]) {
        let mut refused: Vec<Combination> = Vec::new();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let result = self.round(&mut refused).await;
            if !matches!(result, Err(RoundError::Unreachable(_))) {
                self.reached();
            }
            match result {
                Ok(Some(kinds)) => {
                    let names: Vec<&str> = self
                        .plan
                        .secrets
                        .iter()
                        .filter(|s| kinds.contains(&s.kind))
                        .map(|s| s.reference.name.as_str())
                        .collect();
                    let why = format!("rotated secrets: {}", names.join(", "));
                    for i in affected(&self.plan, &kinds) {
                        tracing::info!(child = %self.plan.children[i].name, %why, "restarting to pick up rotated secrets");
                        let _ = controls[i].send(Control::Restart(why.clone()));
                    }
                }
                Ok(None) => {}
                Err(RoundError::Unreachable(e)) => {
                    let msg = crate::error::error_chain(&e);
                    tracing::error!(error = %msg, "secret rotation: Secrets Manager unreachable; keeping the current secrets and asking again next round");
                    let now = crate::clock::now_unix();
                    self.services.send_modify(|s| {
                        if let Some(sm) = s.secrets_manager.as_mut() {
                            sm.failed(now, msg);
                        }
                    });
                }
                Err(RoundError::Refused(e)) => {
                    let msg = crate::error::error_chain(&e);
                    tracing::error!(error = %msg, "secret rotation: new version refused; keeping the current secrets");
                    self.report.send_modify(|infos| {
                        for i in infos.iter_mut() {
                            if msg.contains(&i.name) {
                                i.error = Some(msg.clone());
                            }
                        }
                    });
                }
            }
        }
    }

    /// Records that Secrets Manager answered this round, for status (nothing for local secrets, where
    /// status shows no Secrets Manager).
    fn reached(&self) {
        let now = crate::clock::now_unix();
        self.services.send_modify(|s| {
            if let Some(secs) = s.secrets_manager.as_mut().and_then(|sm| sm.succeeded(now)) {
                tracing::info!(
                    after_secs = secs,
                    "secret rotation: Secrets Manager answers again"
                );
            }
        });
    }

    /// One poll. `Ok(Some(kinds))` when new versions were installed.
    async fn round(
        &mut self,
        refused: &mut Vec<Combination>,
    ) -> Result<Option<Vec<SecretKind>>, RoundError> {
        let mut current = Vec::new();
        for s in &self.plan.secrets {
            let v = self
                .source
                .current_version(&s.reference, &self.environment, self.deadline)
                .await
                .map_err(RoundError::Unreachable)?;
            current.push((s.kind, v));
        }
        let kinds = changed(&self.set.versions(), &current, refused);
        if kinds.is_empty() {
            return Ok(None);
        }
        // Validate the new versions together (a new keystore may come with a new password).
        let mut candidate = self.set.clone();
        for s in self.plan.secrets.iter().filter(|s| kinds.contains(&s.kind)) {
            let version = current
                .iter()
                .find(|(k, _)| *k == s.kind)
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let wanted = match self.source {
                Source::Aws(_) => Wanted::Version(&version),
                Source::Local(_) => Wanted::Stage(secrets::CURRENT),
            };
            let fetched = self
                .source
                .fetch(&s.reference, &self.environment, wanted, self.deadline)
                .await;
            let checked = fetched.and_then(|fetched| {
                secrets::validate(s.kind, &s.reference.name, &fetched.value, &self.signer)
            });
            match checked {
                Ok(value) => candidate.set(
                    s.kind,
                    Fetched {
                        value,
                        version: version.clone(),
                    },
                ),
                Err(e) if refuses_version(&e) => {
                    refuse(refused, &current);
                    return Err(RoundError::Refused(e));
                }
                Err(e) => return Err(RoundError::Unreachable(e)),
            }
        }
        if let Err(e) = secrets::check_set(&self.plan.secrets, &candidate, &self.signer).await {
            refuse(refused, &current);
            return Err(RoundError::Refused(e));
        }
        secrets::write_all(&self.plan.secrets, &self.plan.rendered, &candidate, None)
            .map_err(RoundError::Refused)?;
        self.set = candidate;
        let now = crate::clock::now_unix();
        self.report.send_modify(|infos| {
            for s in self.plan.secrets.iter().filter(|s| kinds.contains(&s.kind)) {
                let fetched = self.set.get(s.kind);
                if let (Some(info), Some(f)) = (
                    infos.iter_mut().find(|i| i.name == s.reference.name),
                    fetched,
                ) {
                    info.version = f.version.clone();
                    info.fetched_at = now;
                    info.error = None;
                }
            }
        });
        let unique: BTreeSet<SecretKind> = kinds.iter().copied().collect();
        Ok(Some(unique.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SecretKind::*;

    fn v(pairs: &[(SecretKind, &str)]) -> Vec<(SecretKind, String)> {
        pairs.iter().map(|(k, s)| (*k, s.to_string())).collect()
    }

    #[test]
    fn only_moved_versions_not_refused_in_this_combination_count() {
        let in_use = v(&[(SealerKeystore, "a"), (SealerPassword, "b")]);
        assert!(changed(&in_use, &in_use, &[]).is_empty());
        let now = v(&[(SealerKeystore, "a2"), (SealerPassword, "b2")]);
        assert_eq!(
            changed(&in_use, &now, &[]),
            [SealerKeystore, SealerPassword]
        );
        assert!(changed(&in_use, &now, std::slice::from_ref(&now)).is_empty());
    }

    #[test]
    fn a_keystore_refused_with_the_old_password_is_tried_again_with_the_new_one() {
        let in_use = v(&[(SealerKeystore, "a"), (SealerPassword, "b")]);
        let keystore_first = v(&[(SealerKeystore, "a2"), (SealerPassword, "b")]);
        let mut refused = Vec::new();
        assert_eq!(
            changed(&in_use, &keystore_first, &refused),
            [SealerKeystore]
        );
        refuse(&mut refused, &keystore_first);
        assert!(changed(&in_use, &keystore_first, &refused).is_empty());
        let then_password = v(&[(SealerKeystore, "a2"), (SealerPassword, "b2")]);
        assert_eq!(
            changed(&in_use, &then_password, &refused),
            [SealerKeystore, SealerPassword]
        );
    }

    #[test]
    fn refusals_kept_are_bounded() {
        let mut refused = Vec::new();
        for i in 0..200 {
            refuse(&mut refused, &v(&[(SealerKeystore, &i.to_string())]));
        }
        assert_eq!(refused.len(), REFUSALS_KEPT);
        assert_eq!(refused[REFUSALS_KEPT - 1], v(&[(SealerKeystore, "199")]));
    }
}

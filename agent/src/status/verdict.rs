//! A load balancer's two questions, answered from what the supervisor already knows: is this node ready
//! to take traffic (`/ready`), and is the agent alive (`/live`). Pure: the health endpoint and `status`
//! ask the same functions with the same inputs, so they cannot disagree.

use super::model::{ChildStatus, State};
use crate::host::Role;
use std::time::Duration;
use tokio::time::Instant;

/// What readiness is judged against (`[health]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyRules {
    pub role: Role,
    /// A head older than this is not ready (`health.max_head_age_secs`).
    pub max_head_age_secs: u64,
    /// An rpc node with fewer peers is not ready (`health.min_peers`).
    pub min_peers: u64,
    /// A supervising task that has not moved for this long is stuck (not live).
    pub stuck_after: Duration,
}

/// Whether the node should take traffic; `Err` says why not, in one line.
pub fn ready(
    rules: &ReadyRules,
    children: &[ChildStatus],
    draining: Option<&str>,
) -> Result<(), String> {
    if let Some(why) = draining {
        return Err(format!("draining: {why}"));
    }
    if children.is_empty() {
        return Err("no child supervised".into());
    }
    for c in children {
        if c.life.state != State::Ready {
            let why = c
                .life
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            return Err(format!("{} is {}{why}", c.name, c.life.state.as_str()));
        }
        match rules.role {
            Role::Rpc | Role::Sealer => geth_ready(rules, c)?,
            Role::Ethstats => match &c.ethstats {
                Some(e) if e.answered => {}
                Some(e) => {
                    return Err(format!(
                        "the dashboard does not answer: {}",
                        e.error.as_deref().unwrap_or("no answer")
                    ))
                }
                None => return Err("the dashboard not asked yet".into()),
            },
            // Ready means its discovery port is bound.
            Role::Bootnode => {}
        }
    }
    Ok(())
}

/// A geth child: caught up, fresh, connected (rpc), sealing as an authorised signer (sealer).
fn geth_ready(rules: &ReadyRules, c: &ChildStatus) -> Result<(), String> {
    let Some(s) = &c.chain else {
        return Err(format!("{}: no chain sample yet", c.name));
    };
    if s.syncing {
        let target = s
            .highest
            .map(|h| format!(", peers at #{h}"))
            .unwrap_or_default();
        return Err(format!("syncing: head #{}{target}", s.head));
    }
    if s.head == 0 {
        return Err("no block yet (head #0 is the genesis)".into());
    }
    if s.head_age_secs > rules.max_head_age_secs {
        return Err(format!(
            "head #{} is {}s old (health.max_head_age_secs {})",
            s.head, s.head_age_secs, rules.max_head_age_secs
        ));
    }
    match rules.role {
        Role::Sealer if s.authorised != Some(true) => {
            Err("not an authorised signer (clique_getSigners)".into())
        }
        Role::Sealer if s.mining != Some(true) => Err("not sealing (eth_mining is false)".into()),
        Role::Rpc if s.peers < rules.min_peers => Err(format!(
            "{} peers (health.min_peers {})",
            s.peers, rules.min_peers
        )),
        _ => Ok(()),
    }
}

/// Whether the agent is alive: every supervising task moves, and no child is crash-looping.
pub fn live(rules: &ReadyRules, children: &[ChildStatus], now: Instant) -> Result<(), String> {
    for c in children {
        let still = now.saturating_duration_since(c.heartbeat);
        if still > rules.stuck_after {
            return Err(format!(
                "{}'s supervisor has not moved for {}s",
                c.name,
                still.as_secs()
            ));
        }
        if c.life.crash_looping || c.life.state == State::CrashLoop {
            let why = c.life.reason.as_deref().unwrap_or("restarting");
            return Err(format!("{} is crash-looping: {why}", c.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::model::{EthstatsSample, GethSample};

    fn rules(role: Role) -> ReadyRules {
        ReadyRules {
            role,
            max_head_age_secs: 30,
            min_peers: 1,
            stuck_after: Duration::from_secs(35),
        }
    }

    fn geth(head: u64, age: u64, peers: u64) -> ChildStatus {
        let mut c = ChildStatus::new_for("geth");
        c.life.state = State::Ready;
        c.chain = Some(GethSample {
            head,
            head_age_secs: age,
            peers,
            syncing: false,
            highest: None,
            authorised: None,
            mining: None,
        });
        c
    }

    fn sealer(authorised: bool, mining: bool) -> ChildStatus {
        let mut c = geth(10, 2, 0);
        let s = c.chain.as_mut().unwrap();
        (s.authorised, s.mining) = (Some(authorised), Some(mining));
        c
    }

    #[test]
    fn an_rpc_node_is_ready_only_caught_up_fresh_and_connected() {
        let r = rules(Role::Rpc);
        assert_eq!(ready(&r, &[geth(10, 2, 1)], None), Ok(()));
        let cases: [(ChildStatus, &str); 4] = [
            (
                geth(10, 31, 3),
                "head #10 is 31s old (health.max_head_age_secs 30)",
            ),
            (geth(10, 2, 0), "0 peers (health.min_peers 1)"),
            (geth(0, 2, 3), "no block yet (head #0 is the genesis)"),
            (
                {
                    let mut c = geth(10, 2, 3);
                    let s = c.chain.as_mut().unwrap();
                    (s.syncing, s.highest) = (true, Some(900));
                    c
                },
                "syncing: head #10, peers at #900",
            ),
        ];
        for (child, why) in cases {
            assert_eq!(ready(&r, &[child], None), Err(why.to_owned()));
        }
        let mut warming = geth(10, 2, 1);
        warming.chain = None;
        assert_eq!(
            ready(&r, &[warming], None),
            Err("geth: no chain sample yet".into())
        );
        let mut starting = geth(10, 2, 1);
        starting.life.state = State::BackingOff;
        starting.life.reason = Some("backing off 4s".into());
        assert_eq!(
            ready(&r, &[starting], None),
            Err("geth is backing_off: backing off 4s".into())
        );
        assert_eq!(
            ready(&r, &[geth(10, 2, 1)], Some("scale-in (Terminated)")),
            Err("draining: scale-in (Terminated)".into())
        );
    }

    #[test]
    fn a_sealer_is_ready_sealing_as_an_authorised_signer_with_a_fresh_head_and_no_peers() {
        let r = rules(Role::Sealer);
        assert_eq!(ready(&r, &[sealer(true, true)], None), Ok(()));
        assert_eq!(
            ready(&r, &[sealer(false, true)], None),
            Err("not an authorised signer (clique_getSigners)".into())
        );
        assert_eq!(
            ready(&r, &[sealer(true, false)], None),
            Err("not sealing (eth_mining is false)".into())
        );
        let mut stale = sealer(true, true);
        stale.chain.as_mut().unwrap().head_age_secs = 60;
        assert!(ready(&r, &[stale], None).unwrap_err().contains("60s old"));
    }

    #[test]
    fn the_bootnode_is_ready_when_bound_and_ethstats_when_its_dashboard_answers() {
        let mut boot = ChildStatus::new_for("bootnode");
        assert_eq!(
            ready(&rules(Role::Bootnode), std::slice::from_ref(&boot), None),
            Err("bootnode is starting".into())
        );
        boot.life.state = State::Ready;
        assert_eq!(ready(&rules(Role::Bootnode), &[boot], None), Ok(()));

        let mut es = ChildStatus::new_for("ethstats");
        es.life.state = State::Ready;
        let r = rules(Role::Ethstats);
        assert_eq!(
            ready(&r, std::slice::from_ref(&es), None),
            Err("the dashboard not asked yet".into())
        );
        let sample = |answered: bool| EthstatsSample {
            server: "127.0.0.1:3000".into(),
            answered,
            reporting: Vec::new(),
            inactive: Vec::new(),
            node: None,
            listed: None,
            error: (!answered).then(|| "refused".into()),
        };
        es.ethstats = Some(sample(false));
        assert_eq!(
            ready(&r, std::slice::from_ref(&es), None),
            Err("the dashboard does not answer: refused".into())
        );
        es.ethstats = Some(sample(true));
        assert_eq!(ready(&r, &[es], None), Ok(()));
        assert_eq!(ready(&r, &[], None), Err("no child supervised".into()));
    }

    #[test]
    fn live_fails_on_a_stuck_supervisor_or_a_crash_loop_and_not_on_an_unhealthy_child() {
        let r = rules(Role::Rpc);
        let mut c = geth(10, 900, 0);
        c.life.state = State::Unhealthy;
        let now = c.heartbeat + Duration::from_secs(5);
        assert_eq!(live(&r, std::slice::from_ref(&c), now), Ok(()));
        assert_eq!(
            live(
                &r,
                std::slice::from_ref(&c),
                c.heartbeat + Duration::from_secs(40)
            ),
            Err("geth's supervisor has not moved for 40s".into())
        );
        c.life.state = State::CrashLoop;
        c.life.reason = Some("exited 5 times in 60s".into());
        assert_eq!(
            live(&r, std::slice::from_ref(&c), now),
            Err("geth is crash-looping: exited 5 times in 60s".into())
        );
        // Between the restarts of a crash loop the child shows `starting`: still not live.
        (c.life.state, c.life.reason, c.life.crash_looping) = (State::Starting, None, true);
        assert_eq!(
            live(&r, &[c], now),
            Err("geth is crash-looping: restarting".into())
        );
    }
}

//! Readiness and health of the children: geth over JSON-RPC on its IPC socket (chain-aware), the bootnode's
//! UDP port, the ethstats dashboard's websocket (`super::ethstats`). Probing does I/O; judging a sample is pure.

use crate::plan::Probe;
use crate::status::model::GethSample;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// The verdict on one sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Not held against the child yet (warm-up), with what is not yet right.
    Warming(String),
    /// Wrong in a way restarting geth cannot fix (an upstream stall, no peers, a sealer voted out of the
    /// signer set): reported in status, never restarted for.
    External(String),
    /// Wrong in a way a restart can fix (a wedged IPC, a head stuck while peers advance).
    Unhealthy(String),
}

/// Judges a geth sample. `head_still_for`: how long the head's number has not moved (as seen by the
/// agent's own samples). Pure: the rules and the times come in as values.
pub fn assess_geth(
    s: &GethSample,
    sealer: bool,
    max_head_age: Duration,
    since_start: Duration,
    warmup: Duration,
    head_still_for: Duration,
) -> Health {
    if s.authorised == Some(false) {
        // Never improves by waiting or restarting: the signer set or the key is wrong.
        return Health::External(
            "the sealer's address is not in clique_getSigners (voted out of the signer set, or the wrong key)"
                .into(),
        );
    }
    let mut fixable = Vec::new();
    let mut external = Vec::new();
    if s.mining == Some(false) {
        fixable.push("not sealing (eth_mining is false)".to_string());
    }
    let (head, age, limit) = (s.head, s.head_age_secs, max_head_age.as_secs());
    // The genesis' timestamp says when the chain was designed (often 0), not how stale the node is.
    let genesis = "no block yet (head #0 is the genesis)";
    match s.highest.filter(|h| *h > head) {
        Some(h) if head_still_for > max_head_age => fixable.push(format!(
            "head #{head} stuck for {}s while peers are at #{h}",
            head_still_for.as_secs()
        )),
        Some(h) if head == 0 && age > limit => {
            external.push(format!("syncing: {genesis}, peers are at #{h}"))
        }
        Some(h) if age > limit => {
            external.push(format!("syncing: head #{head} is {age}s old, peers are at #{h}"))
        }
        None if head == 0 && age > limit => external.push(genesis.into()),
        None if age > limit => external.push(format!(
            "chain stalled upstream: head #{head} is {age}s old (limit {limit}s) and no peer is ahead"
        )),
        _ => {}
    }
    // A lone sealer has no peers and that is fine; a node that must sync does need them.
    if !sealer && s.peers == 0 {
        external.push("no peers".into());
    }
    let warming = since_start < warmup;
    if !fixable.is_empty() {
        fixable.append(&mut external);
        match warming {
            true => Health::Warming(fixable.join(", ")),
            false => Health::Unhealthy(fixable.join(", ")),
        }
    } else if !external.is_empty() {
        match warming {
            true => Health::Warming(external.join(", ")),
            false => Health::External(external.join(", ")),
        }
    } else {
        Health::Healthy
    }
}

pub use crate::chain::ipc::{ipc_call, ProbeError};

fn hex_u64(method: &str, v: &Value) -> Result<u64, ProbeError> {
    v.as_str()
        .and_then(|s| s.strip_prefix("0x"))
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| ProbeError::Rpc {
            method: method.into(),
            message: format!("expected a hex quantity, got {v}"),
        })
}

/// Reads a full sample from geth.
pub async fn sample_geth(
    ipc: &Path,
    signer: Option<&str>,
    now_unix: u64,
) -> Result<GethSample, ProbeError> {
    let block = ipc_call(ipc, "eth_getBlockByNumber", json!(["latest", false])).await?;
    let head = hex_u64(
        "eth_getBlockByNumber",
        block.get("number").unwrap_or(&Value::Null),
    )?;
    let ts = hex_u64(
        "eth_getBlockByNumber",
        block.get("timestamp").unwrap_or(&Value::Null),
    )?;
    let peers = hex_u64(
        "net_peerCount",
        &ipc_call(ipc, "net_peerCount", json!([])).await?,
    )?;
    let sync = ipc_call(ipc, "eth_syncing", json!([])).await?;
    let syncing = !matches!(sync, Value::Bool(false));
    let highest = sync
        .get("highestBlock")
        .and_then(|v| hex_u64("eth_syncing", v).ok());
    let mining = match signer {
        None => None,
        Some(_) => Some(matches!(
            ipc_call(ipc, "eth_mining", json!([])).await?,
            Value::Bool(true)
        )),
    };
    let authorised = match signer {
        None => None,
        Some(addr) => {
            let signers = ipc_call(ipc, "clique_getSigners", json!([])).await?;
            let list = signers.as_array().ok_or_else(|| ProbeError::Rpc {
                method: "clique_getSigners".into(),
                message: format!("expected a list, got {signers}"),
            })?;
            Some(
                list.iter()
                    .filter_map(Value::as_str)
                    .any(|s| s.eq_ignore_ascii_case(addr)),
            )
        }
    };
    Ok(GethSample {
        head,
        head_age_secs: now_unix.saturating_sub(ts),
        peers,
        syncing,
        highest,
        authorised,
        mining,
    })
}

/// Whether a UDP port is bound on this host, from /proc/self/net/udp and udp6 (/proc/net may be hidden in the unit).
pub fn udp_bound(port: u16) -> bool {
    ["/proc/self/net/udp", "/proc/self/net/udp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .any(|table| udp_table_has_port(&table, port))
}

/// Parses a /proc/net/udp table for a local port. Pure.
pub fn udp_table_has_port(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|line| {
        line.split_whitespace()
            .nth(1)
            .and_then(|local| local.rsplit_once(':'))
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            == Some(port)
    })
}

/// Whether the child serves yet (readiness). `Ok(())` when it does, otherwise why not.
pub async fn ready(probe: &Probe) -> Result<(), String> {
    match probe {
        Probe::Geth { ipc, .. } => ipc_call(ipc, "eth_blockNumber", json!([]))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Probe::Udp { port } => udp_bound(*port)
            .then_some(())
            .ok_or_else(|| format!("UDP port {port} not bound yet")),
        Probe::Ethstats { port } => super::ethstats::nodes(&super::ethstats::on_loopback(*port))
            .await
            .map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::ipc::rpc_result;

    fn sample(head_age_secs: u64, peers: u64, authorised: Option<bool>) -> GethSample {
        GethSample {
            head: 10,
            head_age_secs,
            peers,
            syncing: false,
            highest: None,
            authorised,
            mining: authorised,
        }
    }

    const MAX: Duration = Duration::from_secs(30);
    const WARM: Duration = Duration::from_secs(120);
    const LONG: Duration = Duration::from_secs(600);
    const STILL: Duration = Duration::ZERO;

    #[test]
    fn a_fresh_head_is_healthy_and_a_stalled_chain_nobody_is_ahead_of_is_external() {
        assert_eq!(
            assess_geth(&sample(5, 0, Some(true)), true, MAX, LONG, WARM, STILL),
            Health::Healthy
        );
        assert_eq!(
            assess_geth(&sample(31, 0, Some(true)), true, MAX, LONG, WARM, LONG),
            Health::External(
                "chain stalled upstream: head #10 is 31s old (limit 30s) and no peer is ahead"
                    .into()
            )
        );
    }

    #[test]
    fn a_head_at_the_genesis_is_no_block_yet_not_decades_old() {
        let mut s = sample(1_796_058_877, 0, Some(true));
        s.head = 0;
        match assess_geth(&s, true, MAX, Duration::from_secs(5), WARM, STILL) {
            Health::Warming(why) => assert_eq!(why, "no block yet (head #0 is the genesis)"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_head_stuck_while_peers_advance_is_for_a_restart_but_a_moving_sync_is_not() {
        let behind = GethSample {
            highest: Some(50),
            syncing: true,
            ..sample(300, 3, None)
        };
        assert_eq!(
            assess_geth(&behind, false, MAX, LONG, WARM, Duration::from_secs(31)),
            Health::Unhealthy("head #10 stuck for 31s while peers are at #50".into())
        );
        assert_eq!(
            assess_geth(&behind, false, MAX, LONG, WARM, Duration::from_secs(5)),
            Health::External("syncing: head #10 is 300s old, peers are at #50".into())
        );
    }

    #[test]
    fn warm_up_forgives_stale_heads_and_missing_peers_and_a_wrong_signer_is_external() {
        let early = Duration::from_secs(10);
        assert!(matches!(
            assess_geth(&sample(999, 0, None), false, MAX, early, WARM, STILL),
            Health::Warming(_)
        ));
        assert!(matches!(
            assess_geth(&sample(1, 1, Some(false)), true, MAX, early, WARM, STILL),
            Health::External(_)
        ));
        assert!(matches!(
            assess_geth(&sample(1, 1, Some(false)), true, MAX, LONG, WARM, STILL),
            Health::External(_)
        ));
    }

    #[test]
    fn an_rpc_node_without_peers_is_reported_after_warm_up_but_a_lone_sealer_is_fine() {
        assert_eq!(
            assess_geth(&sample(1, 0, None), false, MAX, LONG, WARM, STILL),
            Health::External("no peers".into())
        );
        assert_eq!(
            assess_geth(&sample(1, 0, Some(true)), true, MAX, LONG, WARM, STILL),
            Health::Healthy
        );
    }

    #[test]
    fn a_sealer_that_does_not_seal_is_for_a_restart() {
        let s = GethSample {
            mining: Some(false),
            ..sample(1, 0, Some(true))
        };
        assert!(matches!(
            assess_geth(&s, true, MAX, LONG, WARM, STILL),
            Health::Unhealthy(_)
        ));
    }

    #[test]
    fn proc_net_udp_is_parsed_for_the_local_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                     \x20  0: 00000000:765D 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 1234 2\n";
        assert!(udp_table_has_port(table, 30301));
        assert!(!udp_table_has_port(table, 30303));
        assert!(!udp_table_has_port("garbage\n\n: :", 1));
    }

    #[test]
    fn rpc_errors_and_bad_quantities_are_errors_not_panics() {
        let e = rpc_result(
            "m",
            json!({"error": {"code": -32601, "message": "no such method"}}),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "JSON-RPC m: no such method");
        assert!(rpc_result("m", json!({})).is_err());
        assert_eq!(hex_u64("m", &json!("0x1f")).unwrap(), 31);
        for bad in [json!(31), json!("1f"), json!("0xzz"), json!(null)] {
            assert!(hex_u64("m", &bad).is_err());
        }
    }

    proptest::proptest! {
        #[test]
        fn any_json_rpc_answer_is_a_result_or_an_error(s in "\\PC{0,200}") {
            if let Ok(v) = serde_json::from_str::<Value>(&s) {
                let _ = rpc_result("m", v.clone());
                let _ = hex_u64("m", &v);
            }
        }

        #[test]
        fn any_proc_net_udp_text_is_parsed_without_panic(s in "\\PC{0,400}", port in proptest::num::u16::ANY) {
            let _ = udp_table_has_port(&s, port);
        }
    }
}

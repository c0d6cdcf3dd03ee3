//! The ethstats dashboard, asked the way a browser asks it: a websocket to `/primus`, the `ready` event,
//! and the `init` answer that lists every node. It proves the server's websocket endpoint serves (the
//! ethstats child's readiness, more than a TCP accept) and tells which nodes report: status shows them on
//! the ethstats host, and on a geth host whether this node is among them.
//!
//! The dashboard endpoint needs no secret and is not subject to the server's limit on new `/api`
//! connections. The answer is bounded: one message of at most [`MAX_MESSAGE`] bytes, at most
//! [`MAX_MESSAGES`] messages read, names cut to printable characters.

use crate::status::model::EthstatsSample;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// The largest message read: the node list is a few KiB per node.
const MAX_MESSAGE: usize = 4 << 20;
/// Messages read while waiting for `init` (charts and pings may come first).
const MAX_MESSAGES: usize = 64;
/// Nodes kept from one list, and characters kept of a name.
const MAX_NODES: usize = 1000;
const MAX_NAME: usize = 100;
/// How long one ask may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// One node as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    /// Whether it reports now (the server keeps nodes that went away, inactive).
    pub active: bool,
}

/// The ethstats server this host runs, as [`nodes`] asks it: its port on loopback.
pub fn on_loopback(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// The nodes the dashboard at `server` (`host:port`) lists, within [`TIMEOUT`].
pub async fn nodes(server: &str) -> Result<Vec<Listed>, String> {
    let url = format!("ws://{server}/primus");
    match tokio::time::timeout(TIMEOUT, ask(&url)).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("{url}: no node list within {}s", TIMEOUT.as_secs())),
    }
}

async fn ask(url: &str) -> Result<Vec<Listed>, String> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    ws.send(Message::text(r#"{"emit":["ready"]}"#))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    for _ in 0..MAX_MESSAGES {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                if let Some(list) = init_nodes(text.as_str()).map_err(|e| format!("{url}: {e}"))? {
                    let _ = ws.close(None).await;
                    return Ok(list);
                }
            }
            Some(Ok(Message::Close(_))) | None => {
                return Err(format!("{url}: closed before sending its node list"))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("{url}: {e}")),
        }
    }
    Err(format!("{url}: {MAX_MESSAGES} messages but no node list"))
}

/// The node list in a dashboard message: `{"emit":["init",{"nodes":[…]}]}`; `None` for any other
/// message. Pure.
pub fn init_nodes(text: &str) -> Result<Option<Vec<Listed>>, String> {
    let Ok(message) = serde_json::from_str::<Value>(text) else {
        return Ok(None);
    };
    let Some(emit) = message.get("emit").and_then(Value::as_array) else {
        return Ok(None);
    };
    if emit.first().and_then(Value::as_str) != Some("init") {
        return Ok(None);
    }
    let nodes = emit
        .get(1)
        .and_then(|data| data.get("nodes"))
        .and_then(Value::as_array)
        .ok_or("the init message has no nodes list")?;
    Ok(Some(
        nodes
            .iter()
            .take(MAX_NODES)
            .filter_map(|n| {
                let name = n
                    .pointer("/info/name")
                    .or_else(|| n.get("id"))
                    .and_then(Value::as_str)?;
                Some(Listed {
                    name: printable(name),
                    active: n.pointer("/stats/active").and_then(Value::as_bool) == Some(true),
                })
            })
            .collect(),
    ))
}

/// A name as status may print it: control characters replaced, at most [`MAX_NAME`] characters.
fn printable(name: &str) -> String {
    name.chars()
        .take(MAX_NAME)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The sample status shows, from one ask of `server`; `node` is the name a geth host reports as. Pure.
pub fn sample(
    server: &str,
    node: Option<&str>,
    answer: Result<Vec<Listed>, String>,
) -> EthstatsSample {
    let (answered, listed, error) = match answer {
        Ok(listed) => (true, listed, None),
        Err(e) => (false, Vec::new(), Some(e)),
    };
    let mut reporting: Vec<String> = listed
        .iter()
        .filter(|n| n.active)
        .map(|n| n.name.clone())
        .collect();
    reporting.sort();
    reporting.dedup();
    let mut inactive: Vec<String> = listed
        .into_iter()
        .filter(|n| !n.active && !reporting.contains(&n.name))
        .map(|n| n.name)
        .collect();
    inactive.sort();
    inactive.dedup();
    EthstatsSample {
        server: server.to_owned(),
        answered,
        listed: node
            .filter(|_| answered)
            .map(|n| reporting.iter().any(|r| r == n)),
        node: node.map(str::to_owned),
        reporting,
        inactive,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `init` message as goerli/ethstats-server sends it (one node trimmed to the fields read).
    const INIT: &str = r#"{"emit":["init",{"nodes":[
        {"id":"dev-rpc-i-1","info":{"name":"dev-rpc-i-1","node":"Geth/v1.13.15"},"stats":{"active":true,"peers":1}},
        {"id":"dev-sealer-i-2","info":{"name":"dev-sealer-i-2"},"stats":{"active":false}},
        {"id":"only-id","stats":{"active":true}},
        {"id":"bell\u0007","info":{"name":"bell\u0007"},"stats":{"active":true}},
        {"info":{},"stats":{"active":true}}
    ]}]}"#;

    #[test]
    fn the_init_message_gives_names_and_activity_and_other_messages_give_none() {
        let list = init_nodes(INIT).unwrap().unwrap();
        let names: Vec<(&str, bool)> = list.iter().map(|n| (n.name.as_str(), n.active)).collect();
        assert_eq!(
            names,
            [
                ("dev-rpc-i-1", true),
                ("dev-sealer-i-2", false),
                ("only-id", true),
                ("bell?", true)
            ]
        );
        for other in [
            r#"{"action":"charts","data":{}}"#,
            r#""primus::ping::1700000000000""#,
            r#"{"emit":["client-latency",{"latency":1}]}"#,
            "not json",
        ] {
            assert_eq!(init_nodes(other), Ok(None), "{other}");
        }
        assert!(init_nodes(r#"{"emit":["init",{}]}"#)
            .unwrap_err()
            .contains("no nodes list"));
    }

    #[test]
    fn a_sample_sorts_names_and_says_whether_this_node_is_listed() {
        let listed = |name: &str, active| Listed {
            name: name.into(),
            active,
        };
        let list = vec![
            listed("b", true),
            listed("a", true),
            listed("c", false),
            listed("a", false),
        ];
        let s = sample("10.0.0.9:3000", Some("c"), Ok(list.clone()));
        assert_eq!(
            (s.reporting, s.inactive),
            (vec!["a".into(), "b".into()], vec!["c".into()])
        );
        assert_eq!((s.answered, s.listed, s.error), (true, Some(false), None));
        assert_eq!(sample("x:1", Some("a"), Ok(list)).listed, Some(true));
        let down = sample("x:1", Some("a"), Err("refused".into()));
        assert_eq!((down.answered, down.listed), (false, None));
        assert_eq!(down.error.as_deref(), Some("refused"));
        assert_eq!(sample("x:1", None, Ok(Vec::new())).listed, None);
    }
}

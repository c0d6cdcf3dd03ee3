//! `node-agent version`: this build and the component versions pinned in `resources/versions.toml`.

use crate::chain::pins::pinned;

/// `node-agent version`.
pub fn print(json: bool) -> Result<(), crate::out::StdoutError> {
    let agent = env!("CARGO_PKG_VERSION");
    let table = pinned();
    let component = |name: &str, key: &str| -> String {
        table
            .get(name)
            .and_then(|c| c.get(key))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let text = if json {
        let doc = serde_json::json!({
            "node_agent": agent,
            "geth": {"version": component("geth", "version"), "commit": component("geth", "commit")},
            "ethstats": {"name": component("ethstats", "name"), "version": component("ethstats", "version")},
        });
        format!("{doc}\n")
    } else {
        let geth = component("geth", "version");
        format!(
            "node-agent {agent}\ngeth {geth} ({})\nbootnode {geth} (from the geth alltools archive)\nethstats {} {}\n",
            component("geth", "commit"),
            component("ethstats", "name"),
            component("ethstats", "version")
        )
    };
    crate::out::print(text).map(drop)
}

//! `node-agent version`: this build and the component versions pinned in `resources/versions.toml`.

/// `node-agent version`.
pub fn print(json: bool) -> Result<(), crate::out::StdoutError> {
    let agent = env!("CARGO_PKG_VERSION");
    let crate::chain::pins::Pins { geth, ethstats } = crate::chain::pins::built_in();
    let text = if json {
        let doc = serde_json::json!({
            "node_agent": agent,
            "geth": {"version": geth.version, "commit": geth.commit},
            "ethstats": {"name": ethstats.name, "version": ethstats.version},
        });
        format!("{doc}\n")
    } else {
        format!(
            "node-agent {agent}\ngeth {} ({})\nbootnode {} (from the geth alltools archive)\nethstats {} {}\n",
            geth.version, geth.commit, geth.version, ethstats.name, ethstats.version
        )
    };
    crate::out::print(text).map(drop)
}

//! `node-agent version`: this build and the component versions pinned in `resources/versions.toml`.

/// The pinned versions, embedded at build time from the repository's single source.
pub const PINNED: &str = include_str!("../../resources/versions.toml");

/// The pinned geth version, e.g. `1.13.15`.
pub fn pinned_geth() -> String {
    pinned()
        .get("geth")
        .and_then(|g| g.get("version"))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned()
}

fn pinned() -> toml::Table {
    // The file is part of the build and checked by a unit test, so this parse cannot fail at run time.
    PINNED.parse().unwrap_or_default()
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn pinned_versions_parse_and_pin_the_last_clique_sealing_geth() {
        let t: toml::Table = super::PINNED.parse().unwrap();
        assert!(t.contains_key("ethstats"));
        assert_eq!(t["geth"]["version"].as_str(), Some("1.13.15"));
    }
}

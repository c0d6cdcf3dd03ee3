//! The component versions pinned in `resources/versions.toml`, embedded at build time.

/// The pinned versions, embedded at build time from the repository's single source.
pub const PINNED: &str = include_str!("../../../resources/versions.toml");

/// The pinned geth version, e.g. `1.13.15`.
pub fn pinned_geth() -> String {
    pinned()
        .get("geth")
        .and_then(|g| g.get("version"))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned()
}

pub fn pinned() -> toml::Table {
    // The file is part of the build and checked by a unit test, so this parse cannot fail at run time.
    PINNED.parse().unwrap_or_default()
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

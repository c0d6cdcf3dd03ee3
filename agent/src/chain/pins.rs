//! The component versions pinned in `resources/versions.toml`, embedded at build time, and the one place
//! a versions.toml is parsed: the versions `node-agent version` prints and the sealer's geth guard
//! requires, and the downloads the bake fetches and `node-agent install` checks (every one filled and
//! well-formed, or refused naming its key).

use std::sync::OnceLock;

/// The pinned versions, embedded at build time from the repository's single source.
pub const PINNED: &str = include_str!("../../../resources/versions.toml");

/// Where the built-in pins come from, as errors name them.
pub const BUILT_IN: &str = "resources/versions.toml";

/// The geth alltools archive, as the bake fetches and checks it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GethPin {
    /// The release, e.g. `1.13.15`; empty when the file does not say (only the downloads must be pinned).
    pub version: String,
    /// The release's commit; empty when the file does not say.
    pub commit: String,
    pub url: String,
    /// Lowercase hex.
    pub sha256: String,
    /// The file name to save it as (the URL's last segment).
    pub file: String,
    /// The detached OpenPGP signature: `url` + `.asc`.
    pub signature_url: String,
    /// The signer's public key: a file name in `resources/` (the bake uploads it beside the binary).
    pub signing_key: String,
    /// The signer's primary key fingerprint: 40 uppercase hex digits.
    pub signing_key_fingerprint: String,
}

/// The ethstats server, pinned by commit: the bake clones `repository` and checks out `commit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EthstatsPin {
    /// The project, e.g. `goerli/ethstats-server`; empty when the file does not say.
    pub name: String,
    /// The commit's short form; empty when the file does not say.
    pub version: String,
    pub repository: String,
    /// 40 lowercase hex digits.
    pub commit: String,
}

/// Everything the bake fetches, from a versions.toml.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins {
    pub geth: GethPin,
    pub ethstats: EthstatsPin,
}

impl Pins {
    /// `key=value` lines for the bake's shell script (`install --print-downloads`).
    pub fn lines(&self) -> Vec<String> {
        let (g, e) = (&self.geth, &self.ethstats);
        vec![
            format!("geth.url={}", g.url),
            format!("geth.sha256={}", g.sha256),
            format!("geth.file={}", g.file),
            format!("geth.signature_url={}", g.signature_url),
            format!("geth.signing_key={}", g.signing_key),
            format!("geth.signing_key_fingerprint={}", g.signing_key_fingerprint),
            format!("ethstats.repository={}", e.repository),
            format!("ethstats.commit={}", e.commit),
        ]
    }
}

/// A versions.toml that pins nothing usable, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{pins}: {key} is empty, and the bake refuses unpinned downloads: set it from a trusted copy \
         (README \"Pins\") and rebuild node-agent"
    )]
    Unpinned { pins: String, key: String },
    #[error("{pins}: {key}: {problem}")]
    BadPin {
        pins: String,
        key: String,
        problem: String,
    },
}

/// `n` hex digits, case-folded.
fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// The pins from a versions.toml text (`origin` names it in errors); fails closed on any empty or
/// malformed download pin, before anything is fetched. The versions beside them are read as they are.
pub fn parse(text: &str, origin: &str) -> Result<Pins, PinError> {
    let bad = |key: &str, problem: String| PinError::BadPin {
        pins: origin.to_owned(),
        key: key.to_owned(),
        problem,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad("(file)", e.message().to_owned()))?;
    let get = |name: &str, key: &str| -> Result<String, PinError> {
        let full = format!("{name}.{key}");
        let value = table
            .get(name)
            .and_then(|t| t.get(key))
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad(&full, "missing (a string is expected)".into()))?;
        if value.is_empty() {
            return Err(PinError::Unpinned {
                pins: origin.to_owned(),
                key: full,
            });
        }
        Ok(value.to_owned())
    };
    // What is only shown (and what the geth guard compares): as written, empty when missing.
    let shown = |name: &str, key: &str| -> String {
        table
            .get(name)
            .and_then(|c| c.get(key))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let url = get("geth", "url")?;
    let sha256 = get("geth", "sha256")?.to_ascii_lowercase();
    if !is_hex(&sha256, 64) {
        return Err(bad(
            "geth.sha256",
            format!("{sha256:?} is not 64 hex digits"),
        ));
    }
    let file = url
        .rsplit('/')
        .next()
        .filter(|f| !f.is_empty() && url.contains('/'))
        .ok_or_else(|| bad("geth.url", format!("{url:?} does not end in a file name")))?
        .to_owned();
    let signing_key = get("geth", "signing_key")?;
    if signing_key.contains('/') || signing_key.starts_with('.') {
        return Err(bad(
            "geth.signing_key",
            format!("{signing_key:?} is not a file name in resources/"),
        ));
    }
    // Fingerprints are often written in groups of four: compare them without spaces, in uppercase.
    let fingerprint: String = get("geth", "signing_key_fingerprint")?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    if !is_hex(&fingerprint, 40) {
        return Err(bad(
            "geth.signing_key_fingerprint",
            format!("{fingerprint:?} is not a v4 fingerprint (40 hex digits)"),
        ));
    }
    let commit = get("ethstats", "commit")?.to_ascii_lowercase();
    if !is_hex(&commit, 40) {
        return Err(bad(
            "ethstats.commit",
            format!("{commit:?} is not a full commit id (40 hex digits)"),
        ));
    }
    Ok(Pins {
        geth: GethPin {
            version: shown("geth", "version"),
            commit: shown("geth", "commit"),
            signature_url: format!("{url}.asc"),
            url,
            sha256,
            file,
            signing_key,
            signing_key_fingerprint: fingerprint,
        },
        ethstats: EthstatsPin {
            name: shown("ethstats", "name"),
            version: shown("ethstats", "version"),
            repository: get("ethstats", "repository")?,
            commit,
        },
    })
}

/// The built-in pins, parsed once.
pub fn built_in() -> &'static Pins {
    static PINS: OnceLock<Pins> = OnceLock::new();
    // The file is part of the build and checked by a unit test, so this parse cannot fail at run time.
    PINS.get_or_init(|| parse(PINNED, BUILT_IN).unwrap_or_default())
}

/// The pinned geth version, e.g. `1.13.15`.
pub fn pinned_geth() -> String {
    built_in().geth.version.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_versions_parse_and_pin_the_last_clique_sealing_geth() {
        let t: toml::Table = super::PINNED.parse().unwrap();
        assert!(t.contains_key("ethstats"));
        assert_eq!(t["geth"]["version"].as_str(), Some("1.13.15"));
        assert_eq!(pinned_geth(), "1.13.15");
    }

    #[test]
    fn the_shipped_pins_are_complete() {
        let p = parse(PINNED, BUILT_IN)
            .unwrap_or_else(|e| panic!("resources/versions.toml must give every pin: {e}"));
        assert_eq!(&p, built_in());
        // The checked facts of the reference (guix-crypto's geth-binary.hashes, the builder's key).
        assert_eq!(
            p.geth.sha256,
            "2f153cdcd9801d748d8f812cce9d7a432d155f52eb78018d09d881dfe354dfdd"
        );
        assert_eq!(
            p.geth.file,
            "geth-alltools-linux-amd64-1.13.15-c5ba367e.tar.gz"
        );
        assert_eq!(p.geth.signature_url, format!("{}.asc", p.geth.url));
        assert!(p.geth.url.starts_with("https://"));
        assert_eq!(
            p.geth.signing_key_fingerprint,
            "FDE5A1A044FA13D2F7ADA019A61A13569BA28146"
        );
        assert_eq!(p.geth.signing_key, "geth-linux-builder.asc");
        assert_eq!(
            p.ethstats.commit,
            "afaed6757842baff82dec8c9e0a01c661bbb88ab"
        );
        assert!(p.ethstats.repository.starts_with("https://"));
        // What `node-agent version` shows.
        assert_eq!(
            (p.geth.version.as_str(), p.geth.commit.as_str()),
            ("1.13.15", "c5ba367eb6232e3eddd7d6226bfd374449c63164")
        );
        assert_eq!(
            (p.ethstats.name.as_str(), p.ethstats.version.as_str()),
            ("goerli/ethstats-server", "afaed67")
        );
        let lines = p.lines();
        assert!(lines.contains(&format!("geth.sha256={}", p.geth.sha256)));
        assert!(lines.iter().all(|l| l.split_once('=').is_some()));
    }

    /// Pins as a test gives them: the sha256 of the empty file, a made-up ethstats commit.
    fn pins_text() -> String {
        format!(
            "[geth]\nversion = \"1.13.15\"\nurl = \"https://example.invalid/geth-alltools.tar.gz\"\n\
             sha256 = \"{}\"\nsigning_key = \"test.asc\"\n\
             signing_key_fingerprint = \"{}\"\n[ethstats]\ncommit = \"{}\"\n\
             repository = \"https://example.invalid/ethstats-server.git\"\n",
            EMPTY_SHA256,
            "AB".repeat(20),
            "0a".repeat(20),
        )
    }

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn pins_refuse_empty_and_malformed_values_naming_the_key() {
        let good = pins_text();
        let p = parse(&good, "t.toml").unwrap();
        assert_eq!(p.geth.file, "geth-alltools.tar.gz");
        // Only the downloads must be pinned: what is only shown may be missing.
        assert_eq!((p.geth.commit.as_str(), p.ethstats.name.as_str()), ("", ""));
        let spaced = good.replace(
            &"AB".repeat(20),
            "fde5 a1a0 44fa 13d2 f7ad  a019 a61a 1356 9ba2 8146",
        );
        assert_eq!(
            parse(&spaced, "t.toml")
                .unwrap()
                .geth
                .signing_key_fingerprint,
            "FDE5A1A044FA13D2F7ADA019A61A13569BA28146",
            "fingerprints compare without spaces, uppercase"
        );
        let sha = EMPTY_SHA256;
        for (from, to, key, says) in [
            (sha, "", "geth.sha256", "is empty"),
            (sha, "AB", "geth.sha256", "64 hex digits"),
            ("test.asc", "", "geth.signing_key", "is empty"),
            ("test.asc", "../k.asc", "geth.signing_key", "file name"),
            (
                &"AB".repeat(20),
                "ABCD",
                "geth.signing_key_fingerprint",
                "40 hex",
            ),
            (&"0a".repeat(20), "", "ethstats.commit", "is empty"),
            (
                &"0a".repeat(20),
                "main",
                "ethstats.commit",
                "full commit id",
            ),
        ] {
            let e = parse(&good.replace(from, to), "t.toml")
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("t.toml: {key}")) && e.contains(says),
                "{key} {to:?}: {e}"
            );
        }
    }
}

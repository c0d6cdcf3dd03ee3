//! The Clique genesis: parsed and checked before anything runs, so a wrong file is one clear line at boot
//! instead of a geth that forks off on its own chain.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The built-in development genesis (`resources/genesis.json`, the public dev signer): what `install`
/// lays out without `--genesis`, and what local mode uses when no genesis file is there. Never for a
/// real chain.
pub const DEV: &str = include_str!("../../../resources/genesis.json");

/// What node-agent needs to know of the genesis.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Genesis {
    pub chain_id: u64,
    /// Seconds between blocks.
    pub period: u64,
    pub epoch: u64,
    /// Authorised signers from `extraData`, lowercase `0x` addresses.
    pub signers: Vec<String>,
    /// The exact bytes that were checked: what `geth init` is given (see [`RUNTIME_FILE`]).
    #[serde(skip)]
    bytes: Vec<u8>,
}

/// The checked genesis, as `run` writes it into `storage.runtime_dir` for `geth init`: geth reads the
/// bytes node-agent checked, not whatever the configured path holds by then.
pub const RUNTIME_FILE: &str = "genesis.json";

#[derive(Debug, thiserror::Error)]
pub enum GenesisError {
    #[error("cannot read genesis {path}: {source} (set chain.genesis in the config)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("genesis {path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("genesis {path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawGenesis {
    config: RawChainConfig,
    extra_data: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawChainConfig {
    chain_id: Option<u64>,
    clique: Option<RawClique>,
}

#[derive(Deserialize)]
struct RawClique {
    period: u64,
    epoch: u64,
}

const VANITY: usize = 32;
const SEAL: usize = 65;
const ADDRESS: usize = 20;

impl Genesis {
    /// Reads and checks a genesis file.
    pub fn load(path: &Path) -> Result<Self, GenesisError> {
        let text = std::fs::read(path).map_err(|source| GenesisError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_named(&text, path)
    }

    /// The bytes this genesis was parsed from.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The built-in development genesis, [`DEV`].
    pub fn dev() -> Result<Self, GenesisError> {
        Self::parse_named(DEV.as_bytes(), Path::new("<built-in dev genesis>"))
    }

    fn parse_named(text: &[u8], path: &Path) -> Result<Self, GenesisError> {
        Self::parse(text).map_err(|e| match e {
            ParseError::Json(source) => GenesisError::Json {
                path: path.to_owned(),
                source,
            },
            ParseError::Invalid(what) => GenesisError::Invalid {
                path: path.to_owned(),
                what,
            },
        })
    }

    /// Parses genesis JSON; pure, so it is fuzzable and testable without files.
    pub fn parse(text: &[u8]) -> Result<Self, ParseError> {
        let raw: RawGenesis = serde_json::from_slice(text).map_err(ParseError::Json)?;
        let invalid = |s: &str| ParseError::Invalid(s.to_owned());
        let chain_id = raw
            .config
            .chain_id
            .ok_or_else(|| invalid("config.chainId is missing"))?;
        let clique = raw.config.clique.ok_or_else(|| {
            invalid(
                "config.clique is missing: node-agent runs Clique proof-of-authority chains only",
            )
        })?;
        if clique.period == 0 {
            return Err(invalid(
                "config.clique.period is 0 (blocks on demand); set the block period in seconds, e.g. 5",
            ));
        }
        if clique.epoch == 0 {
            return Err(invalid("config.clique.epoch is 0; use e.g. 30000"));
        }
        let hex = raw
            .extra_data
            .strip_prefix("0x")
            .ok_or_else(|| invalid("extraData must start with 0x"))?;
        let bytes = decode_hex(hex).ok_or_else(|| invalid("extraData is not valid hex"))?;
        if bytes.len() < VANITY + SEAL || !(bytes.len() - VANITY - SEAL).is_multiple_of(ADDRESS) {
            return Err(invalid(
                "extraData must be 32 bytes of vanity, 20 bytes per signer, then 65 zero bytes",
            ));
        }
        let signers: Vec<String> = bytes[VANITY..bytes.len() - SEAL]
            .chunks(ADDRESS)
            .map(|a| format!("0x{}", encode_hex(a)))
            .collect();
        if signers.is_empty() {
            return Err(invalid(
                "extraData lists no signer: add the sealer's address after the 32 vanity bytes",
            ));
        }
        Ok(Genesis {
            chain_id,
            period: clique.period,
            epoch: clique.epoch,
            signers,
            bytes: text.to_vec(),
        })
    }
}

/// Why genesis text was refused.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("{0}")]
    Json(serde_json::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Decodes lowercase or uppercase hex without a prefix.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Lowercase hex without a prefix.
pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a `0x` + 40 hex digit address and returns it in lowercase.
pub fn normalize_address(s: &str) -> Option<String> {
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    (hex.len() == 40 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("0x{}", hex.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn genesis_with(extra: &str, clique: &str) -> String {
        format!(r#"{{"config":{{"chainId":4242{clique}}},"extraData":"{extra}"}}"#)
    }

    fn extra(signers: &[&str]) -> String {
        format!(
            "0x{}{}{}",
            "00".repeat(32),
            signers.concat(),
            "00".repeat(65)
        )
    }

    const CLIQUE: &str = r#","clique":{"period":5,"epoch":30000}"#;

    #[test]
    fn repository_genesis_is_a_five_second_clique_chain_with_one_signer() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/genesis.json");
        let g = Genesis::load(&path).unwrap();
        assert_eq!((g.period, g.epoch), (5, 30000));
        assert_eq!(g.signers.len(), 1);
    }

    #[test]
    fn signers_are_read_from_extra_data() {
        let a = "11".repeat(20);
        let b = "AB".repeat(20);
        let g = Genesis::parse(genesis_with(&extra(&[&a, &b]), CLIQUE).as_bytes()).unwrap();
        assert_eq!(
            g.signers,
            vec![format!("0x{a}"), format!("0x{}", "ab".repeat(20))]
        );
        assert_eq!(g.chain_id, 4242);
    }

    #[test]
    fn non_clique_genesis_is_refused_with_the_reason() {
        let e =
            Genesis::parse(genesis_with(&extra(&[&"11".repeat(20)]), "").as_bytes()).unwrap_err();
        assert!(e.to_string().contains("config.clique is missing"), "{e}");
    }

    #[test]
    fn extra_data_of_the_wrong_length_is_refused() {
        for bad in ["0x00", "0xzz", "00", &format!("0x{}", "00".repeat(97 + 19))] {
            let e = Genesis::parse(genesis_with(bad, CLIQUE).as_bytes()).unwrap_err();
            assert!(e.to_string().contains("extraData"), "{bad}: {e}");
        }
        let e = Genesis::parse(genesis_with(&extra(&[]), CLIQUE).as_bytes()).unwrap_err();
        assert!(e.to_string().contains("no signer"), "{e}");
    }

    #[test]
    fn garbage_is_a_json_error_not_a_panic() {
        for bad in [&b""[..], b"{", b"[]", b"{\"config\":1}", &[0xff, 0xfe]] {
            assert!(Genesis::parse(bad).is_err());
        }
    }

    #[test]
    fn addresses_are_checked_and_lowercased() {
        let a = format!("0x{}", "Ab".repeat(20));
        assert_eq!(
            normalize_address(&a),
            Some(format!("0x{}", "ab".repeat(20)))
        );
        assert_eq!(normalize_address("0x1234"), None);
        assert_eq!(normalize_address(&"ab".repeat(20)), None);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_a_genesis_or_an_error_never_a_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Genesis::parse(&bytes);
        }

        #[test]
        fn any_extra_data_is_parsed_or_refused(extra in "(0x)?[0-9a-fA-Fz]{0,400}", period in 0u64..10) {
            let text = format!(r#"{{"config":{{"chainId":1,"clique":{{"period":{period},"epoch":30000}}}},"extraData":"{extra}"}}"#);
            if let Ok(g) = Genesis::parse(text.as_bytes()) {
                proptest::prop_assert!(!g.signers.is_empty() && g.period > 0);
            }
        }

        #[test]
        fn hex_round_trips(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            proptest::prop_assert_eq!(decode_hex(&encode_hex(&bytes)), Some(bytes));
        }

        #[test]
        fn decode_hex_never_panics_on_unicode(s in "\\PC{0,40}") {
            let _ = decode_hex(&s);
            let _ = normalize_address(&s);
        }
    }
}

//! Checking values before any child sees them: each secret for its purpose (keystore for the signer,
//! password, node key, ethstats secret), then the set (the keystore decrypts into the signer's key).

use super::json::{json, json_string, nested_members, Json};
use super::{SecretError, SecretSet, SecretValue};
use crate::plan::{PlannedSecret, SecretKind};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use zeroize::Zeroizing;

/// Decodes hex into a buffer allocated once at its final length (`genesis::decode_hex` collects
/// through an iterator that grows its buffer, leaving copies of a key behind).
fn decode_secret_hex(hex: &str) -> Option<Zeroizing<Vec<u8>>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Zeroizing::new(Vec::with_capacity(hex.len() / 2));
    for pair in hex.as_bytes().chunks(2) {
        let digit = |d: u8| char::from(d).to_digit(16);
        out.push((digit(pair[0])? * 16 + digit(pair[1])?) as u8);
    }
    Some(out)
}

/// Checks a value is usable for its purpose before any child sees it; returns what to write.
pub fn validate(
    kind: SecretKind,
    name: &str,
    value: &SecretValue,
    signer: &str,
) -> Result<SecretValue, SecretError> {
    let invalid = |problem: String| SecretError::Invalid {
        name: name.to_owned(),
        problem,
    };
    match kind {
        SecretKind::BootnodeNodekey => {
            let text = std::str::from_utf8(value.expose())
                .map_err(|_| invalid("node key is not text".into()))?;
            let hex = text.trim();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    "node key must be 64 hex digits (a 32-byte secp256k1 key, as `bootnode -genkey` writes)".into(),
                ));
            }
            let bytes = decode_secret_hex(hex).unwrap_or_default();
            if k256::SecretKey::from_slice(&bytes).is_err() {
                return Err(invalid(
                    "node key is not a valid secp256k1 private key (zero or above the curve order)"
                        .into(),
                ));
            }
            Ok(SecretValue::new(hex.as_bytes().to_vec()))
        }
        SecretKind::SealerKeystore => {
            // Only the public fields are read; the encrypted key is never copied.
            let members = match json(value.expose()) {
                Json::Object(members) => members,
                Json::Other => BTreeMap::new(),
                Json::Invalid => {
                    return Err(invalid(
                        "keystore is not JSON (expected a geth keystore V3 file)".into(),
                    ))
                }
            };
            let address = members
                .get("address")
                .and_then(|a| json_string(a).ok().flatten())
                .and_then(|a| String::from_utf8(a).ok())
                .and_then(|a| {
                    crate::chain::genesis::normalize_address(&format!(
                        "0x{}",
                        a.trim_start_matches("0x")
                    ))
                })
                .ok_or_else(|| invalid("keystore has no valid \"address\" field".into()))?;
            if !members.contains_key("crypto") && !members.contains_key("Crypto") {
                return Err(invalid("keystore has no \"crypto\" section".into()));
            }
            if address != signer {
                return Err(invalid(format!(
                    "keystore is for {address}, but the chain's signer is {signer} (chain.signer / genesis extraData)"
                )));
            }
            Ok(value.clone())
        }
        SecretKind::SealerPassword => {
            // geth reads the first line of --password files.
            let first = value
                .expose()
                .split(|b| *b == b'\n')
                .next()
                .unwrap_or_default();
            let first = first.strip_suffix(b"\r").unwrap_or(first);
            if first.is_empty() {
                return Err(invalid("password is empty".into()));
            }
            Ok(SecretValue::new(first.to_vec()))
        }
        SecretKind::EthstatsWsSecret => {
            let v = value.expose();
            let v = v.strip_suffix(b"\n").unwrap_or(v);
            if v.is_empty()
                || v.iter()
                    .any(|b| b":@\"\\\n\r".contains(b) || b.is_ascii_control())
            {
                return Err(invalid(
                    "ethstats secret must be non-empty and free of ':', '@', quotes, backslashes and control characters (geth's --ethstats URL format cannot carry them)".into(),
                ));
            }
            Ok(SecretValue::new(v.to_vec()))
        }
    }
}

/// Checks what only the whole set can show: the keystore decrypts with the password into the signer's
/// key. Nothing is written to any directory (the keystore library reads an in-memory file).
pub async fn check_set(
    secrets: &[PlannedSecret],
    set: &SecretSet,
    signer: &str,
) -> Result<(), SecretError> {
    let (Some(ks), Some(pw)) = (
        set.get(SecretKind::SealerKeystore),
        set.get(SecretKind::SealerPassword),
    ) else {
        return Ok(());
    };
    let name = secrets
        .iter()
        .find(|s| s.kind == SecretKind::SealerKeystore)
        .map(|s| s.reference.name.clone())
        .unwrap_or_default();
    check_kdf(&name, &ks.value)?;
    let candidate = keystore_in_memory(&name, &ks.value)?;
    // The keystore library reads a path: this descriptor's, which names no directory entry anyone
    // could replace (the secrets directory is the service user's, and this may run as root).
    let path = PathBuf::from(format!("/proc/self/fd/{}", candidate.as_raw_fd()));
    let password = pw.value.clone();
    let decrypted = tokio::task::spawn_blocking(move || {
        let decrypted = eth_keystore::decrypt_key(&path, password.expose());
        drop(candidate);
        (decrypted, path)
    })
    .await
    .map_err(|e| SecretError::Other {
        name: name.clone(),
        cause: format!("keystore check aborted: {e}"),
    })?;
    let key = zeroize::Zeroizing::new(match decrypted {
        (Ok(key), _) => key,
        (Err(eth_keystore::KeystoreError::StdIo(e)), path) => {
            return Err(SecretError::Other {
                name,
                cause: format!(
                    "cannot read the keystore's in-memory copy through {} ({e}): is /proc mounted?",
                    path.display()
                ),
            })
        }
        (Err(e), _) => {
            return Err(SecretError::Invalid {
                name,
                problem: format!("keystore does not decrypt with the sealer password ({e})"),
            })
        }
    });
    let address = address_of(&key).ok_or_else(|| SecretError::Invalid {
        name: name.clone(),
        problem: "keystore holds no valid secp256k1 key".into(),
    })?;
    if address != signer {
        return Err(SecretError::Invalid {
            name,
            problem: format!("keystore decrypts to {address}, not the chain's signer {signer}"),
        });
    }
    Ok(())
}

/// The keystore in an anonymous in-memory file (memfd), sealed against any change once written.
fn keystore_in_memory(name: &str, keystore: &SecretValue) -> Result<std::fs::File, SecretError> {
    crate::sys::sealed_memfd(c"node-agent-keystore", keystore.expose()).map_err(|e| {
        SecretError::Other {
            name: name.to_owned(),
            cause: format!("cannot hold the keystore in memory for its check (memfd): {e}"),
        }
    })
}

/// Refuses keystore parameters the decryption library would panic on or that would take the host's
/// memory (scrypt n above geth's standard 2^18 needs more than 256 MiB).
fn check_kdf(name: &str, keystore: &SecretValue) -> Result<(), SecretError> {
    let invalid = |problem: &str| SecretError::Invalid {
        name: name.to_owned(),
        problem: problem.to_owned(),
    };
    // Only the public parameters are read; the encrypted key is never copied.
    let top = match json(keystore.expose()) {
        Json::Object(members) => members,
        Json::Other => BTreeMap::new(),
        Json::Invalid => return Err(invalid("keystore is not JSON")),
    };
    let crypto = nested_members(
        top.get("crypto")
            .or_else(|| top.get("Crypto"))
            .ok_or_else(|| invalid("keystore has no crypto section"))?,
    );
    let params = nested_members(
        crypto
            .get("kdfparams")
            .ok_or_else(|| invalid("keystore has no kdfparams"))?,
    );
    let num = |k: &str| {
        params
            .get(k)
            .and_then(|v| serde_json::from_str::<u64>(v.get()).ok())
    };
    let string = |v: Option<&&RawValue>| v.and_then(|v| json_string(v).ok().flatten());
    if num("dklen") != Some(32) {
        return Err(invalid("keystore kdfparams.dklen must be 32"));
    }
    let iv = string(
        crypto
            .get("cipherparams")
            .map(|c| nested_members(c))
            .as_ref()
            .and_then(|c| c.get("iv")),
    )
    .unwrap_or_default();
    if iv.len() != 32 || !iv.iter().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid("keystore cipherparams.iv must be 16 bytes of hex"));
    }
    match string(crypto.get("kdf")).as_deref() {
        Some(b"scrypt") => {
            let n = num("n").unwrap_or(0);
            let ok = n.is_power_of_two()
                && (2..=1 << 18).contains(&n)
                && num("r") == Some(8)
                && (1..=4).contains(&num("p").unwrap_or(0));
            if !ok {
                return Err(invalid("keystore scrypt parameters out of range (n a power of two up to 262144, r 8, p 1-4)"));
            }
        }
        Some(b"pbkdf2") => {
            if !(1..=10_000_000).contains(&num("c").unwrap_or(0)) {
                return Err(invalid("keystore pbkdf2 iteration count out of range"));
            }
        }
        _ => return Err(invalid("keystore kdf must be scrypt or pbkdf2")),
    }
    Ok(())
}

/// The Ethereum address of a secp256k1 private key (lowercase 0x…).
fn address_of(private_key: &[u8]) -> Option<String> {
    use sha3::Digest;
    let secret = k256::SecretKey::from_slice(private_key).ok()?;
    let point =
        k256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&secret.public_key(), false);
    let hash = sha3::Keccak256::digest(&point.as_bytes()[1..]);
    Some(format!(
        "0x{}",
        crate::chain::genesis::encode_hex(&hash[12..])
    ))
}

/// The node id (uncompressed public key without the 0x04 prefix, hex) of a validated node key.
pub fn node_id(nodekey: &SecretValue) -> Option<String> {
    let hex = std::str::from_utf8(nodekey.expose()).ok()?.trim();
    let bytes = decode_secret_hex(hex)?;
    let secret = k256::SecretKey::from_slice(&bytes).ok()?;
    let point =
        k256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&secret.public_key(), false);
    Some(crate::chain::genesis::encode_hex(&point.as_bytes()[1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::json::json_field;
    use crate::secrets::write::{ethstats_secret_json, geth_ethstats_toml};
    use crate::secrets::Fetched;
    use std::path::Path;

    const SIGNER: &str = "0xea94d5964b36a107571e051649c2eb52ff0c323f";

    #[test]
    fn node_key_must_be_32_bytes_of_hex() {
        let ok = SecretValue::new(format!("{}\n", "ab".repeat(32)).into_bytes());
        assert_eq!(
            validate(SecretKind::BootnodeNodekey, "n", &ok, SIGNER)
                .unwrap()
                .expose(),
            "ab".repeat(32).as_bytes()
        );
        for bad in ["", "xyz", &"ab".repeat(31)] {
            let e = validate(
                SecretKind::BootnodeNodekey,
                "n",
                &SecretValue::new(bad.into()),
                SIGNER,
            )
            .unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("secret n: node key must be 64 hex digits"),
                "{e}"
            );
        }
    }

    #[test]
    fn keystore_must_belong_to_the_chain_signer() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/secrets/dev/sealer/keystore");
        let ks = SecretValue::new(std::fs::read(path).unwrap());
        validate(SecretKind::SealerKeystore, "k", &ks, SIGNER).unwrap();
        let other = format!("0x{}", "11".repeat(20));
        let e = validate(SecretKind::SealerKeystore, "k", &ks, &other).unwrap_err();
        assert!(e.to_string().contains("but the chain's signer is"), "{e}");
        let e = validate(
            SecretKind::SealerKeystore,
            "k",
            &SecretValue::new(b"{".to_vec()),
            SIGNER,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
    }

    #[test]
    fn ethstats_secret_cannot_break_the_url() {
        for bad in ["", "a:b", "a@b", "a\"b"] {
            assert!(
                validate(
                    SecretKind::EthstatsWsSecret,
                    "w",
                    &SecretValue::new(bad.into()),
                    SIGNER
                )
                .is_err(),
                "{bad}"
            );
        }
        let toml = geth_ethstats_toml("n1", &SecretValue::new(b"s3".to_vec()), "h:3000");
        assert_eq!(toml.expose(), b"[Ethstats]\nURL = \"n1:s3@h:3000\"\n");
        let json = ethstats_secret_json(&SecretValue::new(b"s3".to_vec()));
        assert_eq!(
            serde_json::from_slice::<Vec<String>>(json.expose()).unwrap(),
            ["s3"]
        );
    }

    fn fixture(name: &str) -> SecretValue {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/secrets/dev/sealer");
        SecretValue::new(std::fs::read(dir.join(name)).unwrap())
    }

    fn keystore_set(password: &[u8]) -> SecretSet {
        let mut set = SecretSet::default();
        let ks = validate(
            SecretKind::SealerKeystore,
            "k",
            &fixture("keystore"),
            SIGNER,
        )
        .unwrap();
        let pw = validate(
            SecretKind::SealerPassword,
            "p",
            &SecretValue::new(password.to_vec()),
            SIGNER,
        )
        .unwrap();
        for (kind, value) in [
            (SecretKind::SealerKeystore, ks),
            (SecretKind::SealerPassword, pw),
        ] {
            set.set(
                kind,
                Fetched {
                    value,
                    version: "1".into(),
                },
            );
        }
        set
    }

    #[tokio::test]
    async fn the_keystore_check_needs_no_directory_and_leaves_no_descriptor() {
        let set = keystore_set(fixture("password").expose());
        check_set(&[], &set, SIGNER).await.unwrap();
        // No descriptor is left open behind the check.
        let memfds = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().contains("node-agent-keystore"))
                })
                .count()
        };
        let e = check_set(&[], &keystore_set(b"not the password"), SIGNER)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("keystore does not decrypt with the sealer password"),
            "{e}"
        );
        assert_eq!(memfds(), 0);
    }

    proptest::proptest! {
        #[test]
        fn any_secret_payload_is_validated_or_refused_without_echoing_it(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let v = SecretValue::new(bytes.clone());
            for kind in [SecretKind::SealerKeystore, SecretKind::SealerPassword, SecretKind::BootnodeNodekey, SecretKind::EthstatsWsSecret] {
                if let Err(e) = validate(kind, "n", &v, SIGNER) {
                    let text = String::from_utf8_lossy(&bytes);
                    if text.len() >= 8 {
                        proptest::prop_assert!(!e.to_string().contains(text.as_ref()), "error echoes the secret");
                    }
                }
            }
            proptest::prop_assert_eq!(check_kdf("n", &v).map_err(|e| e.to_string()), check_kdf_as_before(&v));
            let _ = json_field(&v, "password");
            let _ = node_id(&v);
        }

        #[test]
        fn keystore_shaped_json_never_panics(
            dklen in 0u64..100, n in 0u64..(1 << 20), r in 0u64..20, p in 0u64..10,
            iv in "[0-9a-f]{0,40}", kdf in "(scrypt|pbkdf2|other)",
        ) {
            let ks = serde_json::json!({"address": "ea94d5964b36a107571e051649c2eb52ff0c323f", "crypto": {
                "kdf": kdf, "kdfparams": {"dklen": dklen, "n": n, "r": r, "p": p, "c": n, "salt": "00"},
                "cipherparams": {"iv": iv}, "ciphertext": "00", "mac": "00"}});
            let ks = SecretValue::new(ks.to_string().into_bytes());
            // Same verdict and message as the check written over serde_json's Value (which copied).
            proptest::prop_assert_eq!(
                check_kdf("n", &ks).map_err(|e| e.to_string()),
                check_kdf_as_before(&ks)
            );
        }
    }

    /// check_kdf as it was written over serde_json's Value: the reference for its replacement.
    fn check_kdf_as_before(keystore: &SecretValue) -> Result<(), String> {
        let invalid = |problem: &str| format!("secret n: {problem}");
        let v: serde_json::Value = serde_json::from_slice(keystore.expose())
            .map_err(|_| invalid("keystore is not JSON"))?;
        let crypto = v
            .get("crypto")
            .or_else(|| v.get("Crypto"))
            .ok_or_else(|| invalid("keystore has no crypto section"))?;
        let params = crypto
            .get("kdfparams")
            .ok_or_else(|| invalid("keystore has no kdfparams"))?;
        let num = |k: &str| params.get(k).and_then(serde_json::Value::as_u64);
        if num("dklen") != Some(32) {
            return Err(invalid("keystore kdfparams.dklen must be 32"));
        }
        let iv = crypto
            .pointer("/cipherparams/iv")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        if iv.len() != 32 || !iv.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("keystore cipherparams.iv must be 16 bytes of hex"));
        }
        match crypto.get("kdf").and_then(serde_json::Value::as_str) {
            Some("scrypt") => {
                let n = num("n").unwrap_or(0);
                let ok = n.is_power_of_two()
                    && (2..=1 << 18).contains(&n)
                    && num("r") == Some(8)
                    && (1..=4).contains(&num("p").unwrap_or(0));
                if !ok {
                    return Err(invalid("keystore scrypt parameters out of range (n a power of two up to 262144, r 8, p 1-4)"));
                }
            }
            Some("pbkdf2") => {
                if !(1..=10_000_000).contains(&num("c").unwrap_or(0)) {
                    return Err(invalid("keystore pbkdf2 iteration count out of range"));
                }
            }
            _ => return Err(invalid("keystore kdf must be scrypt or pbkdf2")),
        }
        Ok(())
    }
}

//! The pure validators the settings are built with: one value in, the value (or `()`) or a one-line
//! problem out. The key is added by the section that asks (see [`Invalid`]); the CLI uses a few
//! directly as value parsers.

use std::path::Path;

/// A config key and what is wrong with its value: what each section of [`super::settings`] returns;
/// the file's path is added around it ([`super::ConfigError::Invalid`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: &'static str,
    pub problem: String,
}

impl Invalid {
    pub fn new(key: &'static str, problem: impl Into<String>) -> Invalid {
        Invalid {
            key,
            problem: problem.into(),
        }
    }
}

/// Names the key of a validator's problem: `check_x(v).map_err(invalid("section.key"))`.
pub fn invalid(key: &'static str) -> impl Fn(String) -> Invalid {
    move |problem| Invalid { key, problem }
}

/// The environment names secrets, log groups and paths, so it must be safe in all three.
pub fn check_environment(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 32
        && v.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(v.to_owned())
    } else {
        Err(format!(
            "{v:?} is not a valid environment name: use 1-32 lowercase letters, digits and '-', e.g. staging"
        ))
    }
}

/// `fs-` and the hex digits of an EFS file system id.
pub fn check_fs_id(v: &str) -> Result<String, String> {
    let hex = v.strip_prefix("fs-").unwrap_or("");
    if (8..=40).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(v.to_owned())
    } else {
        Err(format!(
            "{v:?} is not an EFS file system id (expected fs- followed by hex digits, e.g. fs-0123456789abcdef0)"
        ))
    }
}

/// `fsap-` and the 17 lowercase hex digits EFS gives every access point.
pub fn check_access_point_id(v: &str) -> Result<String, String> {
    let hex = v.strip_prefix("fsap-").unwrap_or("");
    if hex.len() == 17
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(v.to_owned())
    } else {
        Err(format!(
            "{v:?} is not an EFS access point id (expected fsap- followed by 17 lowercase hex digits, e.g. fsap-0123456789abcdef0; `aws efs describe-access-points` lists them)"
        ))
    }
}

/// The retention periods CloudWatch Logs accepts (PutRetentionPolicy), in days.
pub const RETENTION_DAYS: [u32; 22] = [
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

/// Fills `{key}` placeholders; an unknown placeholder is an error naming it.
pub fn fill(template: &str, vars: &[(&str, &str)]) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in {template:?}"))?;
        let key = &after[..end];
        let value = vars
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let known: Vec<_> = vars.iter().map(|(k, _)| format!("{{{k}}}")).collect();
                format!(
                    "unknown placeholder {{{key}}} in {template:?}; known: {}",
                    known.join(", ")
                )
            })?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `enode://<128 hex>@host:port`.
pub fn check_enode(s: &str) -> Result<(), String> {
    let bad = || format!("{s:?} is not an enode URL (enode://<128 hex digits>@host:port)");
    let rest = s.strip_prefix("enode://").ok_or_else(bad)?;
    let (id, addr) = rest.split_once('@').ok_or_else(bad)?;
    let key = crate::chain::genesis::decode_hex(id)
        .filter(|k| k.len() == 64)
        .ok_or_else(bad)?;
    // geth refuses ("Bootstrap URL invalid") an id that is not a point on secp256k1.
    let mut sec1 = Vec::with_capacity(65);
    sec1.push(4);
    sec1.extend_from_slice(&key);
    if k256::PublicKey::from_sec1_bytes(&sec1).is_err() {
        return Err(format!(
            "{s:?}: the node id is not a valid secp256k1 public key"
        ));
    }
    let addr = addr.split('?').next().unwrap_or(addr);
    check_host_port(addr).map_err(|_| bad())
}

pub fn check_host_port(s: &str) -> Result<(), String> {
    let bad = || format!("{s:?} is not host:port");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(['/', '@', ' ']) {
        return Err(bad());
    }
    Ok(())
}

/// Secrets Manager names: 1-512 of letters, digits and `/_+=.@-`.
pub fn check_secret_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 512
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b))
        && !s.split('/').any(|c| c == ".." || c == ".");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid secret name (letters, digits and /_+=.@- only, no '..')"
        ))
    }
}

/// A number of seconds that must not be zero.
pub fn at_least_a_second(key: &'static str, secs: u64) -> Result<(), Invalid> {
    if secs == 0 {
        return Err(Invalid::new(key, "must be at least 1 second"));
    }
    Ok(())
}

/// Every path the agent uses is absolute (relative ones in a file were resolved against its directory).
pub fn check_absolute(p: &Path) -> Result<(), String> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(format!("{} must be an absolute path", p.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_must_be_safe_in_names_and_paths() {
        for bad in ["", "Prod", "../x", "a/b", "-x", &"a".repeat(33)] {
            assert!(check_environment(bad).is_err(), "{bad}");
        }
        for good in ["production", "staging", "dev-2"] {
            assert!(check_environment(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn bootnodes_are_enode_urls_of_curve_points() {
        assert!(check_enode("enode://xyz@h:1").is_err());
        let off_curve = format!("enode://{}@h:1", "ab".repeat(64));
        let e = check_enode(&off_curve).unwrap_err();
        assert!(e.contains("not a valid secp256k1 public key"), "{e}");
        for bad in ["nohost", ":1", "h:0", "h:x", "a/b:1"] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
        assert!(check_host_port("ethstats.internal:3000").is_ok());
    }

    #[test]
    fn templates_fill_known_placeholders_only() {
        assert_eq!(fill("/{a}/{b}", &[("a", "x"), ("b", "y")]).unwrap(), "/x/y");
        assert!(fill("{c}", &[("a", "x")]).unwrap_err().contains("{c}"));
        assert!(fill("{a", &[("a", "x")]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn templates_and_enodes_never_panic(s in "\\PC{0,80}") {
            let _ = fill(&s, &[("environment", "e"), ("role", "r")]);
            let _ = check_enode(&s);
            let _ = check_host_port(&s);
            let _ = check_secret_name(&s);
        }
    }
}

//! Writing secrets: each secret's file and the files rendered from them (geth's ethstats config, the
//! ethstats server's secret list), atomically, through descriptors; and wiping them when the agent stops.

use super::{SecretError, SecretSet, SecretValue};
use crate::plan::{PlannedSecret, Rendered, SecretKind};
use std::path::Path;

/// Writes `value` to `path` atomically with `mode`, owned by `owner` when given (the caller is root).
/// The temp file gets its final mode and owner before it is renamed into place. A missing directory is
/// created 0700 and given to `owner` too, so that the owner can reach the file (its missing parents are
/// created 0755). Everything goes through descriptors: a link planted at `path` is replaced, not
/// followed, and a link anywhere above it that someone other than root could have placed is refused.
pub fn write_file_as(
    path: &Path,
    value: &[u8],
    mode: u32,
    owner: Option<crate::privileges::Account>,
) -> Result<(), SecretError> {
    let owner = owner.map(|a| (a.uid.as_raw(), a.gid.as_raw()));
    let (parent, name) = crate::sys::safefs::split(path)?;
    crate::sys::safefs::Dir::create_all_owned(parent, 0o700, owner)?
        .write_file(name, value, mode, owner)?;
    Ok(())
}

/// Removes everything in the private directory (never following a link planted there); called when the
/// agent stops, and by `node-agent cleanup` after it.
pub fn wipe_dir(dir: &Path) {
    match crate::sys::safefs::Dir::open(dir).and_then(|d| d.empty()) {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => tracing::warn!(error = %e, "cannot empty the secrets directory"),
    }
}

/// geth's `--config` TOML carrying the ethstats URL, so the secret stays out of argv.
pub fn geth_ethstats_toml(name: &str, secret: &SecretValue, server: &str) -> SecretValue {
    render(&[
        b"[Ethstats]\nURL = \"",
        name.as_bytes(),
        b":",
        secret.expose(),
        b"@",
        server.as_bytes(),
        b"\"\n",
    ])
}

/// Concatenates `parts` into a buffer allocated once at its final length: a buffer that grew would
/// leave a copy of the secret behind in the memory it was moved out of.
fn render(parts: &[&[u8]]) -> SecretValue {
    let mut v = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        v.extend_from_slice(p);
    }
    SecretValue::new(v)
}

/// The ethstats server's `ws_secret.json`: a JSON array of accepted secrets.
pub fn ethstats_secret_json(secret: &SecretValue) -> SecretValue {
    // validate() already refused quotes, backslashes and control characters, so no escaping is needed.
    render(&[b"[\"", secret.expose(), b"\"]\n"])
}

/// Writes every secret file and every file rendered from them, each atomically.
/// `owner`: who gets the files when the caller is root.
pub fn write_all(
    secrets: &[PlannedSecret],
    rendered: &[Rendered],
    set: &SecretSet,
    owner: Option<crate::privileges::Account>,
) -> Result<(), SecretError> {
    let write_file = |path: &Path, value: &[u8]| write_file_as(path, value, 0o400, owner);
    for s in secrets {
        if let Some(f) = set.get(s.kind) {
            write_file(&s.file, f.value.expose())?;
        }
    }
    let ws = set.get(SecretKind::EthstatsWsSecret).map(|f| &f.value);
    for r in rendered {
        match (r, ws) {
            (Rendered::GethEthstatsConfig { path, name, server }, Some(ws)) => {
                write_file(path, geth_ethstats_toml(name, ws, server).expose())?
            }
            (Rendered::EthstatsSecretJson { path }, Some(ws)) => {
                write_file(path, ethstats_secret_json(ws).expose())?
            }
            (_, None) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_written_atomically_with_mode_0400() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/secret");
        write_file_as(&path, b"one", 0o400, None).unwrap();
        write_file_as(&path, b"two", 0o400, None).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o400
        );
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["secret"], "no temp file left behind");
    }

    #[test]
    fn rendered_files_are_built_in_buffers_of_their_exact_length() {
        // A buffer that grew would have left a copy of the secret in the memory it moved out of.
        let secret = SecretValue::new(
            b"a-longer-ethstats-secret-than-64-bytes-of-headroom-would-fit-in".to_vec(),
        );
        for rendered in [
            geth_ethstats_toml("a-node-name", &secret, "ethstats.internal:3000"),
            ethstats_secret_json(&secret),
        ] {
            assert_eq!(rendered.0.capacity(), rendered.expose().len());
        }
    }
}

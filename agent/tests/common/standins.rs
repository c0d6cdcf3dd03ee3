//! Scripts around the stand-ins under `tests/standins/`: wrappers and the geth stand-in's fault switches.

use super::repo;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Writes an executable shell script `dir/name` that runs `body`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod script");
    path
}

/// Writes an executable wrapper that runs the geth stand-in with `prelude` (shell) before it.
pub fn geth_wrapper(dir: &Path, prelude: &str) -> PathBuf {
    script(
        dir,
        "geth-wrapper",
        &format!(
            "{prelude}\nexec {} \"$@\"",
            repo().join("tests/standins/geth").display()
        ),
    )
}

/// Writes the geth stand-in's fault switches into a datadir.
pub fn geth_faults(datadir: &Path, faults: Value) {
    std::fs::create_dir_all(datadir).expect("datadir");
    std::fs::write(datadir.join("standin-faults.json"), faults.to_string()).expect("faults file");
}

/// A copy of the dev-only secrets (`tests/fixtures/secrets`) at `dir`, for tests that change them.
pub fn copy_fixture_secrets(dir: &Path) {
    assert!(std::process::Command::new("cp")
        .arg("-r")
        .arg(repo().join("tests/fixtures/secrets"))
        .arg(dir)
        .status()
        .expect("cp")
        .success());
}

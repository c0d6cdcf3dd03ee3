//! The real ethstats server (goerli/ethstats-server at the pinned commit), prepared by
//! `tests/ethstats/prepare` into a cache outside the clone, laid out for one host the way
//! `node-agent install --ethstats-source` lays it out: an app directory whose `ws_secret.json` is a link
//! to the file the agent writes, and a wrapper that starts `node app.js` there.

use super::{repo, script};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The prepared app directory, or `None` (said loudly) when the vendored archive is absent.
pub fn real_server() -> Option<PathBuf> {
    static APP: OnceLock<Option<PathBuf>> = OnceLock::new();
    APP.get_or_init(|| {
        let out = std::process::Command::new(repo().join("tests/ethstats/prepare"))
            .output()
            .expect("run tests/ethstats/prepare");
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())),
            Some(3) => {
                note(&format!(
                    "SKIPPED: the real ethstats server was NOT tested: {}",
                    stderr.trim()
                ));
                None
            }
            _ => panic!("tests/ethstats/prepare failed ({}): {stderr}", out.status),
        }
    })
    .clone()
}

/// Lays out the server for one host under `dir`: `dir/app` (app.js copied, since it requires
/// `./ws_secret.json` beside its real path; the rest linked into the cache) with `ws_secret.json` a link
/// into `secrets_dir`, and the wrapper `dir/ethstats-server` (the `binaries.ethstats` to configure).
pub fn install_real_server(prepared: &Path, dir: &Path, secrets_dir: &Path) -> PathBuf {
    let app = dir.join("app");
    std::fs::create_dir_all(&app).expect("app dir");
    std::fs::copy(prepared.join("app.js"), app.join("app.js")).expect("copy app.js");
    for name in ["lib", "node_modules", "dist", "bin", "package.json"] {
        std::os::unix::fs::symlink(prepared.join(name), app.join(name)).expect("link into the app");
    }
    std::os::unix::fs::symlink(
        secrets_dir.join("ws_secret.json"),
        app.join("ws_secret.json"),
    )
    .expect("link ws_secret.json");
    let node = which("node").expect("node on PATH (tests/ethstats/prepare installs it)");
    script(
        dir,
        "ethstats-server",
        &format!(
            "cd {} || exit 1\nexec {} app.js",
            app.display(),
            node.display()
        ),
    )
}

/// A line for people, shown after all tests by tests/run (`NODE_AGENT_TEST_NOTES`): the test harness keeps
/// a passing test's output quiet, and a skip or an artifact must not go unseen.
pub fn note(line: &str) {
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("NODE_AGENT_TEST_NOTES") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The first `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

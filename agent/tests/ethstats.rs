//! The real ethstats server (goerli/ethstats-server, Node.js) as the ethstats role under the agent, with the
//! geth stand-in reporting to it over the real protocol (primus websocket `/api`): the chain of trust from
//! the secret the agent writes (`ws_secret.json`, geth's `--config`) to the dashboard, status on both
//! sides, a rotation of the WS secret, and the dashboard page in headless Chromium.
//!
//! Skipped, loudly, when the vendored archive of the server is absent (`tests/ethstats/prepare` says so).

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const ENV: &str = "dev";

/// A local host of `role` whose secrets come from `secrets` and whose geth reports (as `name`) to the
/// ethstats server on `port`.
fn host(role: &str, secrets: &Path, port: u16, name: &str) -> Host {
    let extra = format!(
        "[chain]\nethstats = \"127.0.0.1:{port}\"\nethstats_name = \"{name}\"\n\
         [secrets]\nlocal_dir = \"{}\"\nrotation_interval_secs = 1\n\
         [ports]\nethstats = {port}\n",
        secrets.display()
    );
    let host = Host::new(None, None, &extra);
    // geth retries its ethstats login every second instead of every 10 (real geth's pace).
    geth_faults(
        &host.path(&format!("data/{ENV}/{role}")),
        json!({"ethstats_retry": 1}),
    );
    host
}

fn run(host: &Host, role: &str) -> Agent {
    let mut agent = host.spawn_run(&["--local", "--role", role, "--environment", ENV]);
    agent.wait_ready();
    agent
}

/// The first child's ethstats sample in `status --json`, once `pred` holds for it.
/// Polls the ethstats host's status until its sample satisfies `pred`. Two minutes: after a rotation the
/// server and both geth nodes restart, and a geth that found the server not yet up retries every 10 s (as
/// geth does); on a loaded 2-core machine that has taken over a minute.
fn ethstats_until(host: &Host, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, Duration::from_secs(120), || {
        let (_, doc) = host.status();
        let sample = doc["children"][0]["ethstats"].clone();
        pred(&sample).then_some(sample)
    })
}

fn reporting(sample: &Value) -> Vec<&str> {
    sample["reporting"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A copy of the test's secrets, with `ws_secret` as the environment's ethstats secret.
fn secrets_copy(dir: &Path, ws_secret: &str) -> PathBuf {
    copy_fixture_secrets(dir);
    set_ws_secret(dir, ws_secret);
    dir.to_owned()
}

/// Replaces the ethstats secret in a local secrets directory in one rename.
fn set_ws_secret(dir: &Path, value: &str) {
    let file = dir.join(format!("{ENV}/ethstats/ws-secret"));
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, value).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
}

#[test]
fn the_real_ethstats_server_lists_nodes_with_the_right_secret_refuses_a_wrong_one_and_follows_rotation(
) {
    let Some(prepared) = real_server() else {
        return;
    };
    let port = free_port();
    let scratch = tempfile::tempdir().unwrap();
    let shared = secrets_copy(&scratch.path().join("shared"), "first-ws-secret");
    let wrong = secrets_copy(&scratch.path().join("wrong"), "not-the-ws-secret");

    // The ethstats host: the real server under the agent, reading the ws_secret.json the agent wrote.
    let ethstats = host("ethstats", &shared, port, "unused");
    let wrapper = install_real_server(&prepared, ethstats.dir.path(), &ethstats.secrets_dir());
    ethstats.configure(&format!(
        "[binaries]\nethstats = \"{}\"\n",
        wrapper.display()
    ));
    // Ready means the dashboard's websocket answered with its node list, not only a TCP accept.
    let server = run(&ethstats, "ethstats");
    let first = ethstats_until(&ethstats, "the dashboard's answer", |s| {
        s["answered"] == true
    });
    assert_eq!(reporting(&first), Vec::<&str>::new());
    assert_eq!(first["server"], format!("127.0.0.1:{port}"));

    let bootnode = host("bootnode", &shared, port, "unused");
    let boot = run(&bootnode, "bootnode");
    let sealer = host("sealer", &shared, port, "dev-sealer-a");
    let sealing = run(&sealer, "sealer");
    let rpc = host("rpc", &shared, port, "dev-rpc-b");
    let serving = run(&rpc, "rpc");

    // A node with the right secret appears, on the dashboard and in status on both sides.
    let listed = ethstats_until(&ethstats, "the sealer and the rpc node reporting", |s| {
        reporting(s) == ["dev-rpc-b", "dev-sealer-a"]
    });
    assert_eq!(listed["inactive"], json!([]));
    let text = String::from_utf8_lossy(&ethstats.output(&["status"]).stdout).into_owned();
    assert!(
        text.contains("ethstats: 2 nodes reporting: dev-rpc-b, dev-sealer-a"),
        "{text}"
    );
    for (h, name) in [(&sealer, "dev-sealer-a"), (&rpc, "dev-rpc-b")] {
        let s = ethstats_until(h, "this node listed", |s| s["listed"] == true);
        assert_eq!(s["node"], name);
        let text = String::from_utf8_lossy(&h.output(&["status"]).stdout).into_owned();
        assert!(
            text.contains(&format!(
                "ethstats: reporting as {name} to 127.0.0.1:{port} (listed on its dashboard)"
            )),
            "{text}"
        );
    }
    // New heads arrive as `block` messages (the server ignores block #0, the genesis).
    wait_for(
        "a block reported over the websocket",
        Duration::from_secs(30),
        || {
            let log = ethstats.log("ethstats");
            (log.contains("Connected: ") && log.contains("[BLK] Block: ")).then_some(())
        },
    );

    dashboard_in_chromium(port, &["dev-sealer-a", "dev-rpc-b"]);

    // One with a wrong secret is refused: the server says so, geth says so, and status on its host.
    let intruder = host("rpc", &wrong, port, "dev-intruder-c");
    let mut refused = run(&intruder, "rpc");
    let not = ethstats_until(&intruder, "the intruder's verdict", |s| {
        s["answered"] == true
    });
    wait_for(
        "the server refusing the intruder",
        Duration::from_secs(30),
        || {
            let log = ethstats.log("ethstats");
            (log.contains("Closed - wrong auth") && log.contains("dev-intruder-c")).then_some(())
        },
    );
    wait_for("geth's refused login", Duration::from_secs(30), || {
        intruder
            .log("geth")
            .contains("Stats login failed")
            .then_some(())
    });
    assert_eq!(not["listed"], false);
    assert!(!reporting(&ethstats_until(&ethstats, "a list", |_| true)).contains(&"dev-intruder-c"));
    let text = String::from_utf8_lossy(&intruder.output(&["status"]).stdout).into_owned();
    assert!(
        text.contains("dev-intruder-c NOT listed as reporting"),
        "{text}"
    );
    assert!(refused.terminate().success());

    // A rotation of the WS secret: the server restarts with the new ws_secret.json only, so every
    // geth that appears on it again logged in with the new secret.
    let server_pid = server.the_child();
    let geths = [sealing.the_child(), serving.the_child()];
    set_ws_secret(&shared, "second-ws-secret");
    server.restarted_child(server_pid, Duration::from_secs(30));
    let written = std::fs::read_to_string(ethstats.secrets_dir().join("ws_secret.json")).unwrap();
    assert!(
        written.contains("second-ws-secret") && !written.contains("first-ws-secret"),
        "{written}"
    );
    for (agent, before) in [(&sealing, geths[0]), (&serving, geths[1])] {
        agent.restarted_child(before, Duration::from_secs(30));
    }
    for h in [&sealer, &rpc] {
        let toml = std::fs::read_to_string(h.secrets_dir().join("geth-ethstats.toml")).unwrap();
        assert!(
            toml.contains(":second-ws-secret@"),
            "geth's --config has the new secret"
        );
    }
    ethstats_until(&ethstats, "both nodes back with the new secret", |s| {
        reporting(s) == ["dev-rpc-b", "dev-sealer-a"]
    });
    for mut agent in [serving, sealing, boot, server] {
        assert!(agent.terminate().success());
    }
}

/// The dashboard page in headless Chromium lists `names`; its screenshot is kept as a test artifact.
fn dashboard_in_chromium(port: u16, names: &[&str]) {
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find_map(which) else {
        note("SKIPPED: the dashboard in a browser was NOT tested: no chromium on PATH (apt-get install chromium)");
        return;
    };
    let url = format!("http://127.0.0.1:{port}/");
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ethstats");
    std::fs::create_dir_all(&artifacts).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let browse = |what: &str| {
        let out = std::process::Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1600,900",
                // The page fills its node table from the dashboard websocket after it loads.
                "--virtual-time-budget=15000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(what)
            .arg(&url)
            .output()
            .expect("run chromium");
        assert!(
            out.status.success(),
            "chromium {what}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = browse("--dump-dom");
    for name in names {
        assert!(
            dom.contains(name),
            "the dashboard page does not list {name}:\n{dom}"
        );
    }
    let shot = artifacts.join("dashboard.png");
    browse(&format!("--screenshot={}", shot.display()));
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG: {}", shot.display());
    note(&format!(
        "the ethstats dashboard in headless Chromium, listing {}: {}",
        names.join(", "),
        shot.display()
    ));
}

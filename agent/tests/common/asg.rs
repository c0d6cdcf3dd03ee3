//! The Auto Scaling stand-in (`tests/rig/asg_responder.py`, `CompleteLifecycleAction` only) as a test fixture.

use super::{python, repo};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A running `tests/rig/asg_responder.py` on a free loopback port; killed and reaped on drop.
pub struct AsgResponder {
    child: Child,
    pub port: u16,
    record_path: PathBuf,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl AsgResponder {
    /// Starts it accepting only calls signed with these credentials (the session token is required).
    pub fn start(access_key: &str, secret_key: &str, session_token: &str) -> AsgResponder {
        let dir = tempfile::tempdir().expect("temp dir for the Auto Scaling responder");
        let record_path = dir.path().join("calls.jsonl");
        let log_path = dir.path().join("requests.log");
        let child = Command::new(python())
            .arg(responder_script())
            .args(["--access-key", access_key, "--secret-key", secret_key])
            .args(["--session-token", session_token, "--port", "0"])
            .arg("--record")
            .arg(&record_path)
            .arg("--log")
            .arg(&log_path)
            // If this test process dies without running Drop, the responder sees EOF and exits.
            .arg("--exit-with-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} (set PYTHON?): {e}", python()));
        // From here on Drop kills the child, including when reading the port fails.
        let mut responder = AsgResponder {
            child,
            port: 0,
            record_path,
            log_path,
            _dir: dir,
        };
        responder.port = responder.read_port();
        responder
    }

    fn read_port(&mut self) -> u16 {
        let stdout = self.child.stdout.take().expect("responder stdout is piped");
        super::read_port_line(stdout, "the Auto Scaling responder")
    }

    /// The endpoint for `AWS_ENDPOINT_URL_AUTO_SCALING`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The calls it accepted, oldest first: `{action, params, access_key, region, signed_headers, time}`.
    pub fn records(&self) -> Vec<Value> {
        read_lines(&self.record_path)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("record {l:?}: {e}")))
            .collect()
    }

    /// Every request, accepted or not, as `METHOD PATH STATUS CODE-OR-ACTION` lines.
    pub fn requests(&self) -> Vec<String> {
        read_lines(&self.log_path)
    }
}

impl Drop for AsgResponder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lines(path: &PathBuf) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("reading {}: {e}", path.display()),
    }
}

pub fn responder_script() -> PathBuf {
    repo().join("tests/rig/asg_responder.py")
}

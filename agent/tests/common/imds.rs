//! The IMDSv2 emulator (`tests/rig/imds_emulator.py`) as a test fixture.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aws_config::imds;
use serde_json::Value;

/// A running `tests/rig/imds_emulator.py` on a free loopback port; killed and reaped on drop.
pub struct ImdsEmulator {
    pub child: Child,
    pub port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl ImdsEmulator {
    /// Writes `config` and starts the emulator on it, waiting until it accepts connections.
    pub fn start(config: &Value) -> Self {
        Self::start_on(config, 0)
    }

    /// Like [`ImdsEmulator::start`], on `port` (0: a free one).
    pub fn start_on(config: &Value, port: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the IMDS emulator");
        let config_path = dir.path().join("imds.json");
        let log_path = dir.path().join("requests.log");
        write_json_atomically(&config_path, config);
        let child = spawn_emulator(&config_path, &log_path, port);
        // From here on Drop kills the child, including when reading the port fails.
        let mut emulator = ImdsEmulator {
            child,
            port: 0,
            config_path,
            log_path,
            _dir: dir,
        };
        emulator.port = emulator.read_port();
        emulator
    }

    /// Kills the emulator: connections to its port are refused until [`ImdsEmulator::resume`].
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the emulator again on the same port and config.
    pub fn resume(&mut self) {
        self.child = spawn_emulator(&self.config_path, &self.log_path, self.port);
        let port = self.read_port();
        assert_eq!(port, self.port, "the emulator came back on another port");
    }

    pub fn read_port(&mut self) -> u16 {
        let stdout = self.child.stdout.take().expect("emulator stdout is piped");
        read_port_line(stdout, "the IMDS emulator")
    }

    /// Base URL to hand to the IMDS client, like `http://169.254.169.254`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An SDK IMDS client builder pointed at this emulator.
    pub fn client_builder(&self) -> imds::client::Builder {
        imds::Client::builder()
            .endpoint(self.endpoint())
            .expect("emulator endpoint is a valid URI")
            // The SDK's 1 s defaults are for a real IMDS; a 2-core CI machine running tests in
            // parallel can stall a Python process longer than that.
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(5))
    }

    /// An SDK IMDS client pointed at this emulator.
    pub fn client(&self) -> imds::Client {
        self.client_builder().build()
    }

    /// Replaces the config; the emulator reads it again on its next request.
    pub fn set_config(&self, config: &Value) {
        write_json_atomically(&self.config_path, config);
    }

    /// Requests served so far, as `METHOD PATH STATUS` lines.
    pub fn requests(&self) -> Vec<String> {
        match std::fs::read_to_string(&self.log_path) {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("reading {}: {e}", self.log_path.display()),
        }
    }
}

impl Drop for ImdsEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_emulator(config: &Path, log: &Path, port: u16) -> Child {
    Command::new(python())
        .arg(emulator_script())
        .arg("--config")
        .arg(config)
        .arg("--log")
        .arg(log)
        .arg("--port")
        .arg(port.to_string())
        // If this test process dies without running Drop, the emulator sees EOF and exits.
        .arg("--exit-with-stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} (set PYTHON?): {e}", python()))
}

pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

pub fn emulator_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/rig/imds_emulator.py")
}

/// Temp file + rename, so the emulator never reads a half-written config.
pub fn write_json_atomically(path: &Path, value: &Value) {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(value).expect("config serialises");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
}

/// The port a rig prints on its first line of stdout once it listens (within 20 s, or a panic naming
/// `what`).
pub fn read_port_line(stdout: std::process::ChildStdout, what: &str) -> u16 {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(read);
    });
    let line = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => panic!("reading {what}'s port line: {e}"),
        Err(_) => panic!("{what} printed no port within 20 s"),
    };
    line.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{what} exited or printed {line:?} instead of its port"))
}

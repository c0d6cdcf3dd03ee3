//! The AWS fault proxy (`tests/rig/aws_fault_proxy.py`) as a test fixture.

use super::{python, repo};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// `tests/rig/aws_fault_proxy.py` in front of moto: answers chosen calls with AWS errors.
pub struct FaultProxy {
    child: Child,
    pub port: u16,
    rules: PathBuf,
    _dir: tempfile::TempDir,
}

impl FaultProxy {
    pub fn start(upstream: &str) -> FaultProxy {
        use std::io::BufRead;
        let dir = tempfile::tempdir().expect("temp dir");
        let rules = dir.path().join("rules.json");
        std::fs::write(&rules, "[]").expect("rules");
        let mut child = Command::new(python())
            .arg(repo().join("tests/rig/aws_fault_proxy.py"))
            .args(["--upstream", upstream, "--rules"])
            .arg(&rules)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the fault proxy");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("proxy port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("fault proxy printed {line:?}"));
        FaultProxy {
            child,
            port,
            rules,
            _dir: dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_rules(&self, rules: Value) {
        let tmp = self.rules.with_extension("tmp");
        std::fs::write(&tmp, rules.to_string()).expect("rules");
        std::fs::rename(&tmp, &self.rules).expect("rules");
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

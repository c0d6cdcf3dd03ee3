//! A running agent: its process handle, the systemd notify socket it talks to, and its error line.

use super::{children_of, wait_for};
use std::path::PathBuf;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

/// A running `node-agent run`; killed on drop if the test did not stop it.
pub struct Agent {
    pub child: Child,
    pub stderr: PathBuf,
}

impl Agent {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The agent's one supervised child, once it is running.
    pub fn the_child(&self) -> i32 {
        let pid = self.pid();
        wait_for("the agent's child", Duration::from_secs(20), || {
            let kids = children_of(pid);
            (kids.len() == 1).then(|| kids[0])
        })
    }

    /// Waits up to `within` for the agent's child to be a process other than `before` (a restart), and
    /// returns it.
    pub fn restarted_child(&self, before: i32, within: Duration) -> i32 {
        let pid = self.pid();
        wait_for("a restarted child", within, || {
            children_of(pid).into_iter().find(|p| *p != before)
        })
    }

    /// Waits until the agent has logged `ready`, or panics with what it said.
    pub fn wait_ready(&mut self) {
        let limit = Duration::from_secs(30);
        let start = Instant::now();
        loop {
            if self.stderr().contains(" INFO ready children=") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "node-agent exited ({status}) before ready:\n{}",
                    self.stderr()
                );
            }
            assert!(
                start.elapsed() < limit,
                "node-agent not ready after {limit:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal agent");
        let child = &mut self.child;
        wait_for(
            "node-agent to exit after SIGTERM",
            Duration::from_secs(30),
            || child.try_wait().ok().flatten(),
        )
    }

    /// Waits for the agent to exit by itself.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let child = &mut self.child;
        wait_for("node-agent to exit", Duration::from_secs(30), || {
            child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The one line node-agent printed on stderr for a failed command.
pub fn error_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("node-agent: error:"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one error line, got:\n{err}"
    );
    lines[0].to_owned()
}

/// A systemd notify socket: what the agent tells systemd (READY=1, STATUS=, WATCHDOG=1, STOPPING=1).
pub struct NotifySocket {
    sock: std::os::unix::net::UnixDatagram,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    seen: Vec<String>,
}

impl NotifySocket {
    pub fn new() -> NotifySocket {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let path = dir.path().join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
        // The agent sends after dropping root.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod");
        sock.set_nonblocking(true).expect("nonblocking");
        NotifySocket {
            sock,
            path,
            _dir: dir,
            seen: Vec::new(),
        }
    }

    /// Every message so far, one per datagram.
    pub fn messages(&mut self) -> &[String] {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            self.seen
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        &self.seen
    }

    pub fn saw(&mut self, needle: &str) -> bool {
        self.messages()
            .iter()
            .any(|m| m.lines().any(|l| l == needle || l.starts_with(needle)))
    }
}

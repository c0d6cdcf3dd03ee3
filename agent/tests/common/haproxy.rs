//! HAProxy in front of rpc hosts, health-checking them the way an ALB target group does: `GET /ready` on
//! the agent's health port, 200 = healthy, a new target out of the pool until it has passed its checks,
//! and a failed request never retried on another target (so a test cannot be hidden from its failures).

use super::{free_port, wait_for};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

/// The backend's name in the generated config (and in `show servers state`).
const BACKEND: &str = "fleet";
/// Forced, so the initial state file can name it.
const BACKEND_ID: u32 = 10;

/// One target: geth's HTTP port, checked on the agent's health port.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub port: u16,
    pub health_port: u16,
}

/// A running `haproxy -db` on a free loopback port; stopped and reaped on drop.
pub struct Haproxy {
    child: Child,
    /// Held open: a shell between us and haproxy kills it when this reaches EOF (we died).
    stdin: Option<ChildStdin>,
    pub port: u16,
    socket: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts HAProxy with every target out of the pool: each joins after 2 passed checks (500 ms apart).
    pub fn start(targets: &[Target]) -> Haproxy {
        match Command::new("haproxy").arg("-v").output() {
            Ok(out) if out.status.success() => {}
            other => panic!(
                "haproxy is needed for the fleet tests and cannot run ({other:?}); install it with \
                 `apt-get install -y haproxy` (.ci/run does)"
            ),
        }
        let dir = tempfile::tempdir().expect("temp dir for haproxy");
        let port = free_port();
        let socket = dir.path().join("admin.sock");
        let state = dir.path().join("initial-state");
        let config = dir.path().join("haproxy.cfg");
        let stderr = dir.path().join("haproxy.stderr");
        std::fs::write(&state, initial_state(targets)).expect("write the initial server state");
        std::fs::write(&config, config_text(port, &socket, &state, targets))
            .expect("write haproxy.cfg");
        // `sh` waits on its stdin (ours) and kills haproxy at EOF: no orphan if the test is SIGKILLed.
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"haproxy -db -f "$1" & cat >/dev/null; kill $! 2>/dev/null; wait"#)
            .arg("sh")
            .arg(&config)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("haproxy stderr file"))
            .spawn()
            .expect("start haproxy under sh");
        let mut haproxy = Haproxy {
            stdin: None,
            child,
            port,
            socket,
            stderr,
            _dir: dir,
        };
        haproxy.stdin = haproxy.child.stdin.take();
        wait_for("haproxy to listen", Duration::from_secs(10), || {
            let log = haproxy.log();
            // With every target out of the pool HAProxy alerts "has no server available": expected.
            let failed = log
                .lines()
                .any(|l| l.contains("[ALERT]") && !l.contains("has no server available"));
            assert!(!failed, "haproxy failed to start:\n{log}");
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        // The state file was applied: no target started in the pool (HAProxy 2.6 would start them UP).
        let log = haproxy.log();
        for t in targets {
            assert!(
                log.contains(&format!(
                    "Server {BACKEND}/{} is DOWN, changed from server-state",
                    t.name
                )),
                "haproxy did not start {} out of the pool:\n{log}",
                t.name
            );
        }
        haproxy
    }

    /// The frontend, like an ALB's DNS name.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What haproxy printed (warnings name each state change and its reason).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// One runtime API command on the admin socket, its whole answer.
    pub fn command(&self, cmd: &str) -> String {
        let mut s = UnixStream::connect(&self.socket)
            .unwrap_or_else(|e| panic!("haproxy admin socket {}: {e}", self.socket.display()));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("{cmd}\n").as_bytes())
            .expect("write to the admin socket");
        let mut answer = String::new();
        s.read_to_string(&mut answer)
            .expect("read the admin socket");
        answer
    }

    /// Each target's state: true when it is in the pool (UP: taking new requests).
    pub fn in_pool(&self) -> BTreeMap<String, bool> {
        // `show servers state`: be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ...
        // op_state 2 is running (1 starting, also served); admin_state 0 is neither maintenance nor drain.
        self.command(&format!("show servers state {BACKEND}"))
            .lines()
            .filter(|l| !l.starts_with('#') && l.split(' ').count() > 6)
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f[3].to_owned(), matches!(f[5], "1" | "2") && f[6] == "0")
            })
            .collect()
    }

    /// Waits until `name` is in the pool (`up`) or out of it.
    pub fn wait_pool(&self, name: &str, up: bool, within: Duration) {
        let what = format!("haproxy to mark {name} {}", if up { "UP" } else { "DOWN" });
        wait_for(&what, within, || {
            (self.in_pool().get(name) == Some(&up)).then_some(())
        });
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        drop(self.stdin.take()); // sh kills haproxy and exits
        let child = &mut self.child;
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !gone {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn config_text(
    port: u16,
    socket: &std::path::Path,
    state: &std::path::Path,
    targets: &[Target],
) -> String {
    let servers: String = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!(
                "    server {} 127.0.0.1:{} id {} check port {} inter 500ms fall 2 rise 2\n",
                t.name,
                t.port,
                i + 1,
                t.health_port
            )
        })
        .collect();
    format!(
        r#"global
    stats socket {socket} mode 600 level admin
    server-state-file {state}

defaults
    mode http
    load-server-state-from-file global
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    timeout check 1s
    # An ALB does not retry a failed request on another target: neither do we, so failures show.
    retries 0
    no option redispatch

frontend rpc
    bind 127.0.0.1:{port}
    default_backend {BACKEND}

backend {BACKEND}
    id {BACKEND_ID}
    balance roundrobin
    option httpchk GET /ready
    http-check expect status 200
    # Which target answered, for the test's per-target counts.
    http-response set-header X-Backend %s
{servers}"#,
        socket = socket.display(),
        state = state.display(),
    )
}

/// A `show servers state` dump (format 1) with every target stopped and its check health at 0: HAProxy
/// loads it at start, so a target needs `rise` passed checks before its first request, as an ALB target.
fn initial_state(targets: &[Target]) -> String {
    let mut text = String::from(
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight \
         srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state \
         srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl \
         srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n",
    );
    for (i, t) in targets.iter().enumerate() {
        // op_state 0 (stopped), admin 0, weights 1, check status 8 / result 2 (failed), health 0,
        // check state 6 (configured, enabled), forced ids.
        text.push_str(&format!(
            "{BACKEND_ID} {BACKEND} {} {} 127.0.0.1 0 0 1 1 0 8 2 0 6 0 1 1 - {} - 0 {} - - 0\n",
            i + 1,
            t.name,
            t.port,
            t.health_port
        ));
    }
    text
}

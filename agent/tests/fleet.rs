//! Three rpc hosts behind HAProxy, which checks `GET /ready` on each like an ALB target group (500 ms apart,
//! 2 to join or leave, no retry of a failed request), while a client calls `eth_blockNumber` through it 20 ms
//! after each answer. A host takes traffic only once ready, leaves the pool when its head stalls or it is told it goes
//! away (Auto Scaling scale-in, Spot interruption), and the client never sees a failed request.

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const GROUP: &str = "fleet-rpc";
const HOOK: &str = "fleet-rpc-terminate";
/// The lifecycle keys of the agent's `[health]` (drain before stopping; how often IMDS is asked).
const LIFECYCLE: &str =
    "drain_secs = 4\nlifecycle_interval_secs = 1\nlifecycle_hook = \"fleet-rpc-terminate\"\n";

/// Each fleet runs a dozen processes and a busy client: one at a time, so a 2-core machine keeps its timing.
static ONE_FLEET_AT_A_TIME: Mutex<()> = Mutex::new(());

/// One rpc host: its IMDS, its tree and config, its agent.
struct Node {
    name: &'static str,
    imds: ImdsEmulator,
    host: Host,
    agent: Agent,
}

impl Node {
    fn instance_id(name: &str) -> String {
        format!("i-0fleet000000000{name}")
    }

    fn imds(name: &str) -> Value {
        let mut c = imds_config(
            json!({"Role": "rpc", "Environment": "fleet", "aws:autoscaling:groupName": GROUP}),
        );
        c["instance_id"] = json!(Node::instance_id(name));
        c["lifecycle_state"] = json!("InService");
        c
    }

    /// Starts the agent; `health` is added to its `[health]`, `faults` to the geth stand-in's (1 s blocks).
    fn start(
        name: &'static str,
        moto: &Moto,
        asg: &AsgResponder,
        health: &str,
        faults: Value,
    ) -> Node {
        let imds = ImdsEmulator::start(&Node::imds(name));
        let extra = format!("[logs]\nship = false\n[health]\nmax_head_age_secs = 3\n{health}");
        let mut host = Host::new(Some(&imds.endpoint()), Some(&moto.endpoint()), &extra);
        host.env
            .push(("AWS_ENDPOINT_URL_AUTO_SCALING".into(), asg.endpoint()));
        Node::geth_faults_of(&host, faults);
        let agent = host.spawn_run(&[]);
        Node {
            name,
            imds,
            host,
            agent,
        }
    }

    /// Blocks every second: the stand-in's timestamps are whole seconds, one apart at least, so a shorter
    /// period would run the head's time ahead of the clock and hide a stall for as long.
    fn geth_faults_of(host: &Host, faults: Value) {
        let mut all = json!({"period": 1});
        all.as_object_mut()
            .unwrap()
            .extend(faults.as_object().cloned().unwrap_or_default());
        geth_faults(&host.path("data/fleet/rpc"), all);
    }

    fn set_geth_faults(&self, faults: Value) {
        Node::geth_faults_of(&self.host, faults);
    }

    fn set_imds(&self, key: &str, value: Value) {
        let mut c = Node::imds(self.name);
        c[key] = value;
        self.imds.set_config(&c);
    }

    fn target(&self) -> Target {
        let doc: toml::Table = std::fs::read_to_string(&self.host.config)
            .unwrap()
            .parse()
            .unwrap();
        let listen = doc["health"]["listen"].as_str().unwrap();
        Target {
            name: self.name.into(),
            port: doc["ports"]["http"].as_integer().unwrap() as u16,
            health_port: listen.rsplit(':').next().unwrap().parse().unwrap(),
        }
    }

    /// `/ready`: 200 or 503 and the reason.
    fn ready(&self) -> (u16, String) {
        let (code, body) = self.host.get_health("/ready");
        let reason = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_owned));
        (code, reason.unwrap_or_default())
    }

    /// Waits for `/ready` to answer `code`; returns the reason. On timeout says what it answered instead.
    fn wait_ready_code(&self, code: u16, within: Duration) -> String {
        let start = Instant::now();
        loop {
            let (c, reason) = self.ready();
            if c == code {
                return reason;
            }
            if start.elapsed() > within {
                let status = self.host.output(&["status"]);
                panic!(
                    "{}'s /ready still answers {c} ({reason}) after {within:?}, not {code}:\n{}",
                    self.name,
                    String::from_utf8_lossy(&status.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One client call through the balancer: when, which target answered, and what went wrong if anything.
#[derive(Debug, Clone)]
struct Call {
    at: Instant,
    backend: Option<String>,
    error: Option<String>,
}

/// `eth_blockNumber` through HAProxy on a thread, 20 ms after each answer (15-20 calls a second here), each
/// call on a new connection.
struct Client {
    stop: Arc<AtomicBool>,
    calls: Arc<Mutex<Vec<Call>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(port: u16) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (s, c) = (stop.clone(), calls.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let call = call(port);
                c.lock().unwrap().push(call);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Client {
            stop,
            calls,
            thread: Some(thread),
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Calls `name` answered at or after `since` (and before `until`).
    fn served_by(&self, name: &str, since: Instant, until: Option<Instant>) -> usize {
        self.calls()
            .iter()
            .filter(|c| {
                c.backend.as_deref() == Some(name)
                    && c.at >= since
                    && until.is_none_or(|u| c.at < u)
            })
            .count()
    }

    /// Waits until `name` has answered a call made after `since`.
    fn wait_served_by(&self, name: &str, since: Instant, within: Duration) {
        wait_for(&format!("{name} to answer a client call"), within, || {
            (self.served_by(name, since, None) > 0).then_some(())
        });
    }

    /// Stops the client and asserts that not one call failed, naming each failure (time since `t0`).
    fn assert_no_failures(mut self, t0: Instant) -> Vec<Call> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("client thread");
        }
        let calls = self.calls();
        let failed: Vec<String> = calls
            .iter()
            .filter_map(|c| {
                let e = c.error.as_ref()?;
                Some(format!(
                    "{:>7.3}s {:?}: {e}",
                    (c.at - t0).as_secs_f64(),
                    c.backend
                ))
            })
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {} client calls failed:\n{}",
            failed.len(),
            calls.len(),
            failed.join("\n")
        );
        assert!(
            calls.len() > 100,
            "the client made only {} calls",
            calls.len()
        );
        calls
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One JSON-RPC POST through the balancer with short timeouts; any non-200, I/O or JSON-RPC error fails it.
fn call(port: u16) -> Call {
    let at = Instant::now();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}"#;
    let exchange = || -> std::io::Result<String> {
        let mut s =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    };
    let answer = match exchange() {
        Ok(a) => a,
        Err(e) => {
            return Call {
                at,
                backend: None,
                error: Some(format!("I/O: {e}")),
            }
        }
    };
    let (head, payload) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let backend = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("x-backend: ")
                .or_else(|| l.strip_prefix("X-Backend: "))
        })
        .map(str::to_owned);
    let status = head.split(' ').nth(1).unwrap_or("none");
    // The stand-in answers with Content-Length; a chunked answer still has the JSON between its braces.
    let json = payload
        .find('{')
        .zip(payload.rfind('}'))
        .map(|(a, b)| &payload[a..=b])
        .unwrap_or("");
    let error = match serde_json::from_str::<Value>(json) {
        _ if status != "200" => Some(format!(
            "HTTP {status}: {}",
            head.lines().next().unwrap_or("")
        )),
        Ok(v) if v["result"].as_str().is_some_and(|r| r.starts_with("0x")) => None,
        Ok(v) => Some(format!("JSON-RPC: {v}")),
        Err(e) => Some(format!("not JSON ({e}): {payload:?}")),
    };
    Call { at, backend, error }
}

/// The fleet's shared services: moto (secrets), the Auto Scaling responder (the instance role's keys).
fn services() -> (Moto, AsgResponder) {
    let moto = Moto::start();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime to seed moto")
        .block_on(moto.seed_fixture_secrets("fleet"));
    let asg = AsgResponder::start("ASIAEMULATOR", "emulator", "emulator-token");
    (moto, asg)
}

/// a. Warm-up: a syncing node never joins the pool nor answers a call; once caught up it joins.
/// b. A stalled head: the node leaves the pool with no failed call, and returns once its head moves again.
#[test]
fn a_node_takes_traffic_only_while_ready_and_leaves_and_rejoins_on_a_stall() {
    let _one = ONE_FLEET_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (moto, asg) = services();
    let mut nodes = vec![
        Node::start("a", &moto, &asg, "", json!({})),
        Node::start("b", &moto, &asg, "", json!({})),
        Node::start("c", &moto, &asg, "", json!({"peers_ahead": 50})),
    ];
    let targets: Vec<Target> = nodes.iter().map(Node::target).collect();
    let lb = Haproxy::start(&targets);
    for n in &mut nodes {
        n.agent.wait_ready();
    }
    let [a, _, c] = &nodes[..] else {
        unreachable!()
    };
    lb.wait_pool("a", true, Duration::from_secs(30));
    lb.wait_pool("b", true, Duration::from_secs(30));
    let t0 = Instant::now();
    let client = Client::start(lb.port);

    // a. c is syncing: /ready is 503 every time we ask, HAProxy never lets it in, it answers nothing.
    let reason = c.wait_ready_code(503, Duration::from_secs(10));
    assert!(reason.starts_with("syncing: head #"), "{reason}");
    let watch_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < watch_until {
        let (code, reason) = c.ready();
        assert_eq!(code, 503, "c turned ready while syncing ({reason})");
        assert!(!lb.in_pool()["c"], "HAProxy put the syncing c in the pool");
        std::thread::sleep(Duration::from_millis(200));
    }
    let caught_up = Instant::now();
    assert_eq!(
        client.served_by("c", t0, None),
        0,
        "the syncing c answered client calls"
    );
    assert!(
        !lb.log().contains("Server fleet/c is UP"),
        "HAProxy marked c UP:\n{}",
        lb.log()
    );
    assert!(client.served_by("a", t0, None) > 0 && client.served_by("b", t0, None) > 0);
    c.set_geth_faults(json!({}));
    c.wait_ready_code(200, Duration::from_secs(10));
    lb.wait_pool("c", true, Duration::from_secs(5));
    client.wait_served_by("c", caught_up, Duration::from_secs(5));

    // b. a's head stops: /ready fails on head age (3 s), HAProxy takes it out, no call fails.
    a.set_geth_faults(json!({"stall_head_after": 0}));
    let reason = a.wait_ready_code(503, Duration::from_secs(10));
    assert!(
        reason.contains("s old (health.max_head_age_secs 3)"),
        "{reason}"
    );
    lb.wait_pool("a", false, Duration::from_secs(3));
    // Calls already on their way when the check flipped may still land on a: give them 200 ms.
    let out_since = Instant::now() + Duration::from_millis(200);
    std::thread::sleep(Duration::from_secs(2));
    let back = Instant::now();
    assert_eq!(
        client.served_by("a", out_since, Some(back)),
        0,
        "a answered calls while out of the pool"
    );
    a.set_geth_faults(json!({}));
    a.wait_ready_code(200, Duration::from_secs(10));
    lb.wait_pool("a", true, Duration::from_secs(5));
    client.wait_served_by("a", back, Duration::from_secs(5));

    let calls = client.assert_no_failures(t0);
    eprintln!("{}", summary(&calls, &lb));
    for n in &mut nodes {
        assert!(n.agent.terminate().success(), "{}", n.agent.stderr());
    }
}

/// c. Scale-in: the lifecycle state turns Terminated; the node drains, stops geth, completes the hook, exits 0.
/// d. Spot interruption: the same drain and exit, and no lifecycle call (its state stays InService).
#[test]
fn scale_in_and_spot_interruption_drain_the_node_without_a_failed_request() {
    let _one = ONE_FLEET_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (moto, asg) = services();
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .into_iter()
        .map(|n| Node::start(n, &moto, &asg, LIFECYCLE, json!({})))
        .collect();
    let targets: Vec<Target> = nodes.iter().map(Node::target).collect();
    let lb = Haproxy::start(&targets);
    for n in &mut nodes {
        n.agent.wait_ready();
        lb.wait_pool(n.name, true, Duration::from_secs(30));
    }
    let t0 = Instant::now();
    let client = Client::start(lb.port);
    std::thread::sleep(Duration::from_secs(1));

    // c. Scale-in of a.
    drain(
        &mut nodes[0],
        &lb,
        &client,
        "lifecycle_state",
        json!("Terminated"),
    );
    let records = asg.records();
    assert_eq!(records.len(), 1, "{records:#?}\n{:#?}", asg.requests());
    let r = &records[0];
    assert_eq!(r["action"], "CompleteLifecycleAction");
    assert_eq!(
        r["params"],
        json!({"AutoScalingGroupName": GROUP, "LifecycleHookName": HOOK,
               "InstanceId": Node::instance_id("a"), "LifecycleActionResult": "CONTINUE"}),
        "{r:#}"
    );
    assert_eq!(r["access_key"], "ASIAEMULATOR");
    assert_eq!(r["region"], REGION);

    // d. Spot interruption of b, two minutes ahead as EC2 announces it.
    let time = utc_in("+2 minutes");
    drain(
        &mut nodes[1],
        &lb,
        &client,
        "spot_instance_action",
        json!({"action": "terminate", "time": time}),
    );
    assert_eq!(
        asg.records().len(),
        1,
        "a lifecycle call for the Spot node: {:#?}",
        asg.records()
    );

    // c still serves, alone; the two that left never came back.
    let in_pool = lb.in_pool();
    assert!(
        !in_pool["a"] && !in_pool["b"] && in_pool["c"],
        "{in_pool:?}"
    );
    let alone = Instant::now();
    client.wait_served_by("c", alone, Duration::from_secs(2));
    let calls = client.assert_no_failures(t0);
    eprintln!("{}", summary(&calls, &lb));
    assert!(nodes[2].agent.terminate().success());
}

/// Tells `node` (through its IMDS) it goes away, then checks it drains: /ready fails at once with
/// `draining: `, HAProxy takes it out before geth stops, geth stops gracefully after drain_secs, exit 0.
fn drain(node: &mut Node, lb: &Haproxy, client: &Client, key: &str, value: Value) {
    let geth = node.agent.the_child();
    let told = Instant::now();
    node.set_imds(key, value);
    let reason = node.wait_ready_code(503, Duration::from_secs(3));
    let failing_after = told.elapsed();
    assert!(reason.starts_with("draining: "), "{reason}");
    lb.wait_pool(node.name, false, Duration::from_secs(3));
    let out = Instant::now() + Duration::from_millis(200);
    assert!(
        children_of(node.agent.pid()).contains(&geth),
        "geth stopped before the balancer took {} out",
        node.name
    );
    let status = node.agent.wait_exit();
    let stopped_after = told.elapsed();
    assert!(
        status.success(),
        "{} exited {status}:\n{}",
        node.name,
        node.agent.stderr()
    );
    assert!(
        stopped_after >= Duration::from_secs(4),
        "{} did not wait drain_secs: {stopped_after:?}",
        node.name
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{geth}")).exists(),
        "geth {geth} outlived its agent"
    );
    assert!(
        node.host
            .log("geth")
            .contains("Got interrupt, shutting down"),
        "geth was not stopped gracefully"
    );
    assert_eq!(
        client.served_by(node.name, out, None),
        0,
        "{} answered calls after leaving",
        node.name
    );
    eprintln!(
        "{}: /ready failing {failing_after:?} after the notice, exited after {stopped_after:?}",
        node.name
    );
}

/// Calls answered by each target, then HAProxy's lines about targets going UP or DOWN with their reasons.
fn summary(calls: &[Call], lb: &Haproxy) -> String {
    let mut per = std::collections::BTreeMap::new();
    for c in calls {
        *per.entry(c.backend.clone().unwrap_or_default())
            .or_insert(0) += 1;
    }
    let log = lb.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Server fleet/"))
        .collect();
    format!(
        "{} calls, none failed, answered by {per:?}\n{}",
        calls.len(),
        lines.join("\n")
    )
}

/// `date -u` at an offset such as "+2 minutes", as EC2 writes times: 2026-12-01T03:00:00Z.
fn utc_in(offset: &str) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", offset, "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8(out.stdout)
        .expect("date prints ASCII")
        .trim()
        .to_owned()
}

/// The responder checks what botocore (an SDK this repository does not share code with) signs: the
/// accepted call is recorded as sent, and a wrong secret or a tampered body are refused.
#[test]
fn the_auto_scaling_responder_accepts_botocore_signed_calls_and_refuses_bad_ones() {
    let asg = AsgResponder::start("ASIAEMULATOR", "emulator", "emulator-token");
    let script = r#"
import sys, botocore.session, botocore.exceptions
from botocore.config import Config
def client(secret, **kw):
    return botocore.session.get_session().create_client("autoscaling", region_name="eu-central-1",
        endpoint_url=sys.argv[1], aws_access_key_id="ASIAEMULATOR", aws_secret_access_key=secret,
        aws_session_token="emulator-token", config=Config(retries={"max_attempts": 1}), **kw)
call = dict(AutoScalingGroupName="fleet-rpc", LifecycleHookName="hook", InstanceId="i-0botocore", LifecycleActionResult="CONTINUE")
client("emulator").complete_lifecycle_action(**call)
for secret, args in (("wrong", call), ("emulator", {**call, "LifecycleActionResult": "MAYBE"})):
    try:
        client(secret).complete_lifecycle_action(**args)
        print("accepted", secret, args)
    except botocore.exceptions.ClientError as e:
        print(e.response["Error"]["Code"])
"#;
    let out = std::process::Command::new(python())
        .args(["-c", script, &asg.endpoint()])
        .output()
        .expect("python3 with botocore (installed with moto)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "SignatureDoesNotMatch\nValidationError\n");
    let records = asg.records();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["params"]["InstanceId"], "i-0botocore");
    assert_eq!(
        records[0]["signed_headers"],
        json!(["content-type", "host", "x-amz-date", "x-amz-security-token"])
    );
}

#[test]
fn the_auto_scaling_responder_self_check_passes() {
    let out = std::process::Command::new(python())
        .arg(responder_script())
        .arg("--self-check")
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(" 0 failed"),
        "{stdout}"
    );
}

//! `node-agent status` against a running agent with the stand-ins: output and exit code in each state,
//! the JSON checked against `resources/status.schema.json`.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const LOCAL_RPC: [&str; 5] = ["--local", "--role", "rpc", "--environment", "dev"];
const LOCAL_SEALER: [&str; 5] = ["--local", "--role", "sealer", "--environment", "dev"];

/// Checks a document against the published schema (Python's jsonschema; CI installs it).
fn assert_schema(doc: &Value) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), doc.to_string()).unwrap();
    let out = std::process::Command::new(python())
        .args(["-c", "import json,sys,jsonschema; jsonschema.validate(json.load(open(sys.argv[1])), json.load(open(sys.argv[2])))"])
        .arg(file.path())
        .arg(repo().join("resources/status.schema.json"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "status JSON does not match the schema:\n{}\n{doc:#}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn status_json(host: &Host) -> (i32, Value) {
    let out = host.output(&["status", "--json"]);
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_schema(&doc);
    (out.status.code().unwrap_or(-1), doc)
}

/// Polls status until `pred` holds for its JSON.
fn status_until(host: &Host, what: &str, pred: impl Fn(i32, &Value) -> bool) -> (i32, Value) {
    wait_for(what, Duration::from_secs(60), || {
        let (code, doc) = status_json(host);
        pred(code, &doc).then_some((code, doc))
    })
}

#[test]
fn a_healthy_rpc_node_reports_exit_0_with_chain_and_process_details() {
    let host = Host::new(None, None, "");
    let mut agent = host.spawn_run(&LOCAL_RPC);
    agent.wait_ready();
    let (code, doc) = status_until(&host, "healthy", |code, doc| {
        code == 0 && doc["children"][0]["chain"].is_object()
    });
    assert_eq!(code, 0);
    assert_eq!(doc["overall"], "healthy");
    assert_eq!(doc["host"]["role"], "rpc");
    let geth = &doc["children"][0];
    assert_eq!(geth["state"], "ready");
    assert_eq!(geth["user"], format!("{SERVICE_UID}:{SERVICE_UID}"));
    assert_eq!(
        geth["pid"].as_i64().unwrap() as i32,
        children_of(agent.pid())[0]
    );
    assert!(geth["chain"]["peers"].as_u64().unwrap() >= 1);
    assert_eq!(doc["storage"]["kind"], "local");
    assert!(doc["storage"]["free_bytes"].as_u64().unwrap() > 0);
    assert_eq!(doc["secrets"][0]["name"], "dev/ethstats/ws-secret");
    assert!(
        !doc.to_string().contains("dev-only-ws-secret"),
        "status shows a secret value"
    );

    let out = host.output(&["status"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HEALTHY — dev rpc on local-"), "{text}");
    assert!(text.contains("geth      ready"), "{text}");
    assert!(
        text.contains("secret    dev/ethstats/ws-secret version local:"),
        "{text}"
    );
    // The load balancer's view, from the same verdict (as of the main loop's last tick).
    wait_for("/ready", Duration::from_secs(5), || {
        (host.get_health("/ready") == (200, r#"{"ready":true}"#.into())).then_some(())
    });
    assert_eq!(host.get_health("/live"), (200, r#"{"live":true}"#.into()));
    assert_eq!(
        host.get_health("/"),
        (
            404,
            r#"{"error":"not found: GET /ready, /live or /metrics"}"#.into()
        )
    );
    let (_, doc) = status_json(&host);
    assert_eq!(doc["endpoint"]["ready"], true, "{doc:#}");
    assert!(text.contains("  endpoint  127.0.0.1:"), "{text}");
    assert!(agent.terminate().success());
}

#[test]
fn a_stalled_head_is_degraded_with_the_reason() {
    let host = Host::new(
        None,
        None,
        "[health]\nmax_head_age_secs = 2\nwarmup_secs = 0\ngrace_secs = 600\n",
    );
    geth_faults(
        &host.path("data/dev/sealer"),
        json!({"period": 0.5, "stall_head_after": 1}),
    );
    let mut agent = host.spawn_run(&LOCAL_SEALER);
    agent.wait_ready();
    let (code, doc) = status_until(&host, "degraded", |code, _| code == 1);
    assert_eq!(doc["overall"], "degraded");
    // A lone sealer's stalled chain: nobody is ahead, a restart would not help; reported.
    assert_eq!(doc["children"][0]["state"], "ready");
    let reason = doc["children"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("s old (limit 2s)"), "{doc:#}");
    assert!(reason.ends_with("(external: not restarted)"), "{doc:#}");
    assert_eq!(doc["children"][0]["chain"]["authorised"], true);
    assert_eq!(code, 1);
    let text = String::from_utf8_lossy(&host.output(&["status"]).stdout).into_owned();
    assert!(text.starts_with("DEGRADED"), "{text}");
    assert!(
        text.contains("why: chain stalled upstream: head #"),
        "{text}"
    );
    // Out of the load balancer's pool, with the reason; still live (a restart would not help). The
    // endpoint answers from the main loop's last tick, at most 500 ms behind the document.
    let (_, body) = wait_for("/ready failing", Duration::from_secs(5), || {
        let (code, body) = host.get_health("/ready");
        (code == 503).then_some((code, body))
    });
    let body: Value = serde_json::from_str(&body).unwrap();
    let why = body["reason"].as_str().unwrap();
    assert!(why.contains("s old (health.max_head_age_secs 2)"), "{why}");
    assert_eq!(host.get_health("/live").0, 200);
    assert_eq!(status_json(&host).1["endpoint"]["ready"], false);
    assert!(agent.terminate().success());
}

#[test]
fn a_health_port_in_use_fails_the_boot_with_one_line_naming_health_listen() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let host = Host::new(
        None,
        None,
        &format!("[health]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let out = host.output(&["run", "--local", "--role", "rpc", "--environment", "dev"]);
    assert!(!out.status.success());
    assert_eq!(
        error_line(&out),
        format!("node-agent: error: health.listen 127.0.0.1:{port}: cannot listen: Address already in use (os error 98); choose a free port (1024 or above), or health.listen = \"off\"")
    );
    let bad = Host::new(None, None, "[health]\nlisten = \"everywhere\"\n");
    let out = bad.output(&["check", "--local", "--role", "rpc", "--environment", "dev"]);
    assert!(!out.status.success());
    assert!(
        error_line(&out).contains(
            "health.listen: \"everywhere\" is not an address and port such as 0.0.0.0:8080"
        ),
        "{}",
        error_line(&out)
    );
}

#[test]
fn a_crash_looping_child_is_down() {
    let host = Host::new(None, None, "[restart]\ncrash_loop_after = 1\n");
    geth_faults(&host.path("data/dev/rpc"), json!({"crash_after": 0.1}));
    let mut agent = host.spawn_run(&LOCAL_RPC);
    let (code, doc) = status_until(&host, "crash loop", |_, doc| {
        doc["children"][0]["state"] == "crash_loop"
    });
    assert_eq!(code, 2);
    assert_eq!(doc["overall"], "down");
    assert_eq!(doc["endpoint"]["live"], false, "{doc:#}");
    let (_, body) = wait_for("/live failing", Duration::from_secs(5), || {
        let (code, body) = host.get_health("/live");
        (code == 503).then_some((code, body))
    });
    assert!(body.contains("geth is crash-looping"), "{body}");
    assert!(doc["children"][0]["restarts"].as_u64().unwrap() >= 2);
    assert!(
        doc["children"][0]["last_exit"]
            .as_str()
            .unwrap()
            .starts_with("exited with code"),
        "{doc:#}"
    );
    assert!(agent.terminate().success());
}

#[test]
fn a_stopped_agent_is_reported_as_not_running_with_exit_3() {
    let host = Host::new(None, None, "");
    let out = host.output(&["status"]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("NOT RUNNING — node-agent is not running (no answer on "),
        "{text}"
    );
    let (code, doc) = status_json(&host);
    assert_eq!(code, 3);
    assert_eq!(doc["overall"], "not_running");
}

#[test]
fn the_socket_answers_one_request_only_and_changes_nothing() {
    use std::io::{Read, Write};
    let host = Host::new(None, None, "");
    let mut agent = host.spawn_run(&LOCAL_RPC);
    agent.wait_ready();
    let path = host.path("run/status.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions())
            & 0o777;
    assert_eq!(mode, 0o660);
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.write_all(b"restart geth\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("unknown request"), "{answer}");
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.write_all(&vec![b'x'; 100_000]).ok();
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok();
    assert_eq!(children_of(agent.pid()).len(), 1);
    assert!(agent.terminate().success());
}

#[test]
fn storage_gone_from_under_the_node_is_down() {
    let host = Host::new(None, None, "");
    let mut agent = host.spawn_run(&LOCAL_RPC);
    agent.wait_ready();
    status_until(&host, "healthy", |code, _| code == 0);
    std::fs::remove_file(host.path("data/dev/rpc/.node-agent-storage.json")).unwrap();
    // The storage is probed every 2 s (off the agent's main thread): the next probe sees it.
    let start = std::time::Instant::now();
    let (code, doc) = status_until(&host, "storage down", |code, _| code == 2);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(code, 2);
    assert_eq!(doc["storage"]["check_ok"], false);
    assert!(
        doc["storage"]["check_error"]
            .as_str()
            .unwrap()
            .starts_with("no sentinel in "),
        "{doc:#}"
    );
    let text = String::from_utf8_lossy(&host.output(&["status"]).stdout).into_owned();
    assert!(text.contains("CHECK FAILED: no sentinel in"), "{text}");
    assert!(agent.terminate().success());
}

/// What the agent sent back on one connection before closing it: `None` for a closed connection
/// without an answer, else the one JSON line. Panics on anything else, or when nothing comes in 10 s.
fn answer_of(s: &mut std::os::unix::net::UnixStream) -> Option<Value> {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    if let Err(e) = s.read_to_end(&mut buf) {
        // A reset after the answer is fine (the agent closed with our bytes unread); silence is not.
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "no answer and no close within 10 s"
        );
    }
    if buf.is_empty() {
        return None;
    }
    let text = String::from_utf8(buf).expect("the answer is UTF-8");
    assert!(
        text.ends_with('\n') && text.matches('\n').count() == 1,
        "not one line: {text:?}"
    );
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}")))
}

/// The answer to a bad request: the one-line error, or a closed connection.
fn assert_refused(answer: Option<Value>, what: &str) {
    if let Some(doc) = answer {
        assert!(
            doc["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("unknown request")),
            "{what}: {doc}"
        );
        assert_eq!(doc.as_object().map(|o| o.len()), Some(1), "{what}: {doc}");
    }
}

fn assert_document(answer: Option<Value>, what: &str) {
    let doc = answer.unwrap_or_else(|| panic!("{what}: closed without an answer"));
    assert_eq!(doc["schema"], 1, "{what}: {doc}");
    assert!(doc["children"].is_array(), "{what}: {doc}");
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn garbage_on_the_status_socket_never_harms_the_agent_and_idle_clients_block_no_one() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let mut rng = Rng::from_env();
    let host = Host::new(None, None, "");
    let mut agent = host.spawn_run(&LOCAL_RPC);
    agent.wait_ready();
    status_until(&host, "healthy", |code, _| code == 0);
    let child = agent.the_child();
    let path = host.path("run/status.sock");
    let connect = || UnixStream::connect(&path).expect("connect to the status socket");
    let send = |bytes: &[u8], close_write: bool| {
        let mut s = connect();
        s.write_all(bytes).expect("send");
        if close_write {
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        answer_of(&mut s)
    };

    // Random bytes of every length around the 64-byte request limit, with and without an end.
    for len in [1, 7, 63, 64, 65, 4096, 70_000] {
        let mut bytes = rng.bytes(len);
        bytes.retain(|b| *b != b'\n');
        bytes.push(b'\n');
        assert_refused(send(&bytes, false), &format!("{len} random bytes"));
        assert_refused(
            send(&bytes[..len / 2], true),
            &format!("{len} random bytes, EOF"),
        );
    }
    // A 1 MB line: the agent answers after 64 bytes and closes while we are still writing.
    let mut s = connect();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut line = vec![b'x'; 1 << 20];
        line.push(b'\n');
        let _ = w.write_all(&line);
    });
    assert_refused(answer_of(&mut s), "a 1 MB line");
    writer.join().unwrap();
    // Connected and gone at once; connected and silent; a request without its newline.
    drop(connect());
    assert_refused(answer_of(&mut connect()), "a silent client");
    let mut s = connect();
    s.write_all(b"status").unwrap();
    assert_refused(answer_of(&mut s), "\"status\" without newline, held open");
    // Complete requests: the end of the stream ends the request too, and what follows the newline is
    // ignored.
    assert_document(send(b"status", true), "\"status\" then EOF");
    let mut junk = b"status\n".to_vec();
    junk.extend(rng.bytes(5000));
    assert_document(send(&junk, false), "\"status\\n\" then junk");

    // 200 clients at once, every other one sending garbage: each gets its own answer.
    let clients: Vec<_> = (0..200)
        .map(|i| {
            let path = path.clone();
            let garbage = rng.bytes(100);
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&path).expect("connect");
                if i % 2 == 0 {
                    s.write_all(b"status\n").unwrap();
                    assert_document(answer_of(&mut s), "one of 200 at once");
                } else {
                    let _ = s.write_all(&garbage);
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    assert_refused(answer_of(&mut s), "garbage, one of 200 at once");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client saw a wrong answer");
    }

    // 100 clients that connect and say nothing: the agent holds a bounded number of them (no
    // descriptor for the rest), and a real query still gets its answer.
    let idle_before = open_fds(agent.pid());
    let idle: Vec<UnixStream> = (0..100).map(|_| connect()).collect();
    let mut most = 0;
    for _ in 0..10 {
        most = most.max(open_fds(agent.pid()));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        most <= idle_before + 64 + 8,
        "{most} descriptors open with 100 idle clients ({idle_before} before): connections are not bounded"
    );
    let (_, doc) = status_json(&host);
    assert_eq!(doc["children"][0]["pid"], child, "{doc:#}");
    drop(idle);

    // Nothing of this changed anything: the same agent and child, and status answers as before.
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "{}",
        agent.stderr()
    );
    assert_eq!(children_of(agent.pid()), [child]);
    let (_, doc) = status_until(&host, "healthy after the garbage", |code, _| code == 0);
    assert_eq!(doc["children"][0]["restarts"], 0, "{doc:#}");
    assert!(agent.terminate().success(), "{}", agent.stderr());
}

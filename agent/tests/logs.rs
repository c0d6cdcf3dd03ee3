//! Log files and CloudWatch Logs shipping, end to end: the real agent supervises a child that prints
//! known lines, writes them to rotated files and ships them to moto through a proxy that checks every
//! PutLogEvents against CloudWatch's limits and injects throttling, 5xx and outages.

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const GROUP: &str = "/node-agent/staging/bootnode";
const STREAM: &str = "i-0123456789abcdef0/bootnode";
const AGENT_STREAM: &str = "i-0123456789abcdef0/node-agent";
const STAMP: usize = 25;

/// A child that prints lines as `emit.json` beside it says (re-read at each start), then idles. Steps:
/// `lines` (numbered lines of `width` bytes, `per_sec` of them a second, or all at once), `big` (one
/// line of that many bytes), `raw` (these bytes), `touch` (creates `marks/NAME` once everything before
/// is written to the pipe), `wait` (until `marks/NAME` exists).
const EMITTER: &str = r#"#!/usr/bin/env python3
import json, os, socket, sys, time
# Ready, as the agent judges a bootnode: bound to its UDP port.
args = sys.argv[1:]
if "-addr" in args:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", int(args[args.index("-addr") + 1].rsplit(":", 1)[1])))
here = os.path.dirname(os.path.abspath(__file__))
plan = json.load(open(os.path.join(here, "emit.json")))
out, pid, n = sys.stdout.buffer, os.getpid(), 0
def line(width):
    global n
    text = "run=%d seq=%07d " % (pid, n)
    n += 1
    return (text + "." * max(0, width - len(text))).encode() + b"\n"
def mark(name):
    return os.path.join(here, "marks", name)
for step in plan:
    if "touch" in step:
        open(mark(step["touch"]), "w").close()
    elif "wait" in step:
        while not os.path.exists(mark(step["wait"])):
            time.sleep(0.05)
    elif "raw" in step:
        out.write(bytes(step["raw"]))
    elif "big" in step:
        pattern = b"0123456789abcdefghijklmnopqrstuvwxyz"
        big = (pattern * (step["big"] // len(pattern) + 1))[: step["big"]]
        out.write(big + b"\n")
    else:
        width, total, rate = step.get("width", 100), step["lines"], step.get("per_sec", 0)
        if rate <= 0:
            out.write(b"".join(line(width) for _ in range(total)))
        else:
            start, sent = time.time(), 0
            while sent < total:
                due = min(total, int((time.time() - start) * rate) + 1)
                out.write(b"".join(line(width) for _ in range(due - sent)))
                out.flush()
                sent = due
                time.sleep(0.01)
    out.flush()
while True:
    time.sleep(3600)
"#;

struct Rig {
    moto: Moto,
    _imds: ImdsEmulator,
    proxy: CwProxy,
    host: Host,
    emitter: tempfile::TempDir,
}

/// A bootnode host whose "bootnode" is the emitter, shipping through the proxy. `logs` is extra
/// `[logs]` TOML.
async fn rig(emit: Value, logs: &str) -> Rig {
    let moto = Moto::start();
    moto.seed_fixture_secrets("staging").await;
    let imds = ImdsEmulator::start(&imds_config(
        json!({"Role": "bootnode", "Environment": "staging"}),
    ));
    let proxy = CwProxy::start(moto.port);
    let emitter = tempfile::tempdir().expect("emitter dir");
    let script = emitter.path().join("emit.py");
    std::fs::write(&script, EMITTER).expect("write emitter");
    // The agent drops to the service user before it starts the child.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(emitter.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(emitter.path().join("emit.json"), emit.to_string()).unwrap();
    let marks = emitter.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    std::fs::set_permissions(&marks, std::fs::Permissions::from_mode(0o777)).unwrap();
    let extra = format!(
        "[binaries]\nbootnode = \"{}\"\n[logs]\nflush_ms = 200\n{logs}\n",
        script.display()
    );
    let mut host = Host::new(Some(&imds.endpoint()), Some(&moto.endpoint()), &extra);
    host.env
        .push(("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS".into(), proxy.endpoint()));
    Rig {
        moto,
        _imds: imds,
        proxy,
        host,
        emitter,
    }
}

impl Rig {
    fn mark(&self, name: &str) -> PathBuf {
        self.emitter.path().join("marks").join(name)
    }

    /// Waits until the child has created `marks/NAME`.
    fn wait_mark(&self, name: &str, limit: Duration, agent: &Agent) {
        let start = Instant::now();
        while !self.mark(name).exists() {
            assert!(
                start.elapsed() < limit,
                "the child did not reach {name:?} in {limit:?}; agent:\n{}",
                tail(&agent.stderr())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn set_emit(&self, emit: Value) {
        std::fs::write(self.emitter.path().join("emit.json"), emit.to_string()).unwrap();
    }

    /// Every line of the child's log files, oldest file first, without the timestamps.
    fn file_lines(&self) -> Vec<String> {
        file_lines(&self.host.path("logs"), "bootnode.log")
    }

    async fn shipped(&self, stream: &str) -> Vec<String> {
        self.moto.log_messages(GROUP, stream).await
    }

    /// Waits until moto holds at least `n` events in the child's stream.
    async fn wait_shipped(&self, n: usize, limit: Duration, agent: &Agent) -> Vec<String> {
        let start = Instant::now();
        loop {
            let got = self.shipped(STREAM).await;
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < limit,
                "{} of {n} events shipped after {limit:?}; agent:\n{}",
                got.len(),
                tail(&agent.stderr())
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `name.N[.gz]` from the highest N down, then `name`: the order the lines were written.
fn log_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut old: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let f = e.file_name().to_string_lossy().into_owned();
            let rest = f.strip_prefix(name)?.strip_prefix('.')?;
            let n = rest.strip_suffix(".gz").unwrap_or(rest).parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    // Compression writes `.N.gz` before it removes `.N`: while both exist, take one.
    old.sort_by_key(|(n, p)| {
        (
            std::cmp::Reverse(*n),
            p.extension().is_none_or(|e| e != "gz"),
        )
    });
    old.dedup_by_key(|(n, _)| *n);
    old.into_iter()
        .map(|(_, p)| p)
        .chain(std::iter::once(dir.join(name)))
        .collect()
}

/// Every line of the files, oldest first, without the timestamps, bytes that are not UTF-8 as U+FFFD
/// (as CloudWatch gets them). Read again when a file was compressed away while reading (the files must
/// not be rotating: read them when the child is quiet).
fn file_lines(dir: &Path, name: &str) -> Vec<String> {
    loop {
        if let Some(lines) = try_file_lines(dir, name) {
            return lines;
        }
    }
}

fn try_file_lines(dir: &Path, name: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for p in log_files(dir, name) {
        let mut bytes = Vec::new();
        let f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(_) if p.file_name().is_some_and(|f| f == name) => continue,
            Err(_) => return None,
        };
        if p.extension().is_some_and(|e| e == "gz") {
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(f), &mut bytes).unwrap();
        } else {
            std::io::Read::read_to_end(&mut { f }, &mut bytes).unwrap();
        }
        // As CloudWatch gets them: bytes that are not UTF-8 as U+FFFD.
        let text = String::from_utf8_lossy(&bytes);
        for l in text.lines() {
            assert!(
                l.len() > STAMP && l.as_bytes()[23] == b'Z',
                "unstamped line {l:?} in {}",
                p.display()
            );
            out.push(l[STAMP..].to_owned());
        }
    }
    Some(out)
}

fn assert_same_lines(shipped: &[String], written: &[String]) {
    assert_eq!(
        shipped.len(),
        written.len(),
        "event count differs from line count"
    );
    if let Some(i) = (0..shipped.len()).find(|i| shipped[*i] != written[*i]) {
        panic!(
            "first difference at line {i}: shipped {:?}, written {:?}",
            &shipped[i][..shipped[i].len().min(80)],
            &written[i][..written[i].len().min(80)]
        );
    }
}

#[tokio::test]
async fn a_burst_of_50000_lines_arrives_complete_in_order_within_every_putlogevents_limit() {
    let r = rig(json!([{"lines": 50_000, "width": 120}]), "").await;
    let mut agent = r.host.spawn_run(&[]);
    agent.wait_ready();
    let shipped = r
        .wait_shipped(50_000, Duration::from_secs(120), &agent)
        .await;
    let written = r.file_lines();
    assert_eq!(written.len(), 50_000);
    assert_same_lines(&shipped, &written);
    let seqs: Vec<usize> = shipped
        .iter()
        .map(|m| m[m.find("seq=").unwrap() + 4..][..7].parse().unwrap())
        .collect();
    assert_eq!(seqs, (0..50_000).collect::<Vec<_>>());

    r.proxy.assert_limits_kept();
    let puts = r.proxy.accepted(STREAM);
    let biggest = puts.iter().map(|p| p.bytes).max().unwrap();
    assert!(
        biggest > 1_000_000,
        "batches are filled close to 1 MiB, biggest {biggest}"
    );
    assert!(puts.len() < 20, "{} calls for 50,000 lines", puts.len());

    // The group exists with the configured retention; the agent's own log is a stream beside the child's.
    let groups = r
        .moto
        .logs_client()
        .describe_log_groups()
        .log_group_name_prefix(GROUP)
        .send()
        .await
        .unwrap();
    assert_eq!(groups.log_groups()[0].retention_in_days(), Some(30));
    let own = r.shipped(AGENT_STREAM).await;
    assert!(
        own.iter().any(|m| m.contains("ready children=bootnode")),
        "{own:?}"
    );
    assert!(agent.terminate().success(), "{}", agent.stderr());
}

#[tokio::test]
async fn a_10_mb_line_and_bytes_that_are_not_utf8_arrive_as_valid_events_that_rejoin_exactly() {
    let bad = b"bad \xff\xfe utf8, a NUL \x00, a CR \r inside\n";
    let r = rig(
        json!([{"lines": 1}, {"big": 10_000_000}, {"raw": bad.to_vec()}, {"lines": 1}]),
        "",
    )
    .await;
    let mut agent = r.host.spawn_run(&[]);
    agent.wait_ready();
    let child = agent.the_child();
    // 10,000,000 bytes are 38 pieces of 262,118 and one of 39,516: one line and one event each.
    let shipped = r.wait_shipped(42, Duration::from_secs(120), &agent).await;
    assert_eq!(shipped.len(), 42);
    assert!(
        shipped[0].contains("seq=0000000") && shipped[41].contains("seq=0000001"),
        "{:?}",
        &shipped[41][..shipped[41].len().min(40)]
    );
    assert!(shipped[1..40].iter().all(|p| p.len() <= 262_118));
    let big: String = shipped[1..40].concat();
    let pattern = "0123456789abcdefghijklmnopqrstuvwxyz";
    let expected = pattern.repeat(10_000_000 / pattern.len() + 1)[..10_000_000].to_owned();
    assert_eq!(big.len(), expected.len());
    assert!(big == expected, "the pieces do not rejoin into the line");
    // In the file as it was printed; in CloudWatch, which takes only UTF-8, with U+FFFD for each.
    assert_eq!(
        shipped[40],
        "bad \u{FFFD}\u{FFFD} utf8, a NUL \u{0}, a CR \r inside"
    );
    let raw = std::fs::read(r.host.path("logs/bootnode.log")).unwrap();
    assert!(
        raw.windows(bad.len() - 1)
            .any(|w| w == &bad[..bad.len() - 1]),
        "the file does not hold the bytes as printed"
    );
    assert_same_lines(&shipped, &r.file_lines());
    r.proxy.assert_limits_kept();
    assert_eq!(children_of(agent.pid()), [child], "the child was restarted");
    assert!(agent.terminate().success(), "{}", agent.stderr());
}

#[tokio::test]
async fn rotation_mid_stream_keeps_every_line_in_order_and_compresses_shipped_files() {
    let r = rig(
        json!([{"lines": 30_000, "width": 100, "per_sec": 10_000}]),
        "max_file_bytes = 65536\nkeep_files = 100\ncompress = true",
    )
    .await;
    let mut agent = r.host.spawn_run(&[]);
    agent.wait_ready();
    let shipped = r
        .wait_shipped(30_000, Duration::from_secs(120), &agent)
        .await;
    r.proxy.assert_limits_kept();

    // Every rotated file CloudWatch has fully accepted gets compressed (in the background: wait for it
    // to settle before reading the files).
    let logs = r.host.path("logs");
    let start = Instant::now();
    loop {
        let plain = log_files(&logs, "bootnode.log")
            .iter()
            .filter(|f| {
                f.extension().is_none_or(|e| e != "gz") && f.file_name().unwrap() != "bootnode.log"
            })
            .count();
        if plain == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{plain} shipped files left uncompressed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let files = log_files(&logs, "bootnode.log");
    assert!(
        files.len() > 40,
        "{} files: rotation happened many times",
        files.len()
    );
    let active = std::fs::metadata(logs.join("bootnode.log")).unwrap().len();
    assert!(active <= 65536, "the active file is {active} bytes");
    assert_same_lines(&shipped, &r.file_lines());
    assert!(agent.terminate().success());
}

#[tokio::test]
async fn repeated_sigkill_during_shipping_loses_no_line_and_resends_at_most_one_batch_per_kill() {
    let r = rig(
        json!([{"lines": 1_000_000, "width": 100, "per_sec": 3000}]),
        "max_file_bytes = 262144\nkeep_files = 200",
    )
    .await;
    // Each batch spends a while "in flight", so kills land between CloudWatch accepting and the
    // checkpoint being stored.
    r.proxy.state().delay = Duration::from_millis(40);
    let mut rng = Rng::from_env();
    let kills = 20;
    for k in 0..kills {
        let mut agent = r.host.spawn_run(&[]);
        agent.wait_ready();
        let child = agent.the_child();
        std::thread::sleep(Duration::from_millis(rng.range(200, 2500)));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.pid()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        agent.wait_exit();
        // No orphan: the kernel kills the child with the agent (PR_SET_PDEATHSIG).
        wait_for(
            &format!("the child {child} to die with the agent (kill {})", k + 1),
            Duration::from_secs(5),
            || (!alive(child)).then_some(()),
        );
    }
    // Last run: a few more lines, then everything must arrive.
    r.set_emit(json!([{"lines": 10}]));
    let mut agent = r.host.spawn_run(&[]);
    agent.wait_ready();
    let written = r.file_lines();
    assert!(
        written.len() > kills * 600,
        "{} lines written",
        written.len()
    );
    let start = Instant::now();
    let shipped = loop {
        let shipped = r.shipped(STREAM).await;
        let unique: std::collections::HashSet<&String> = shipped.iter().collect();
        if unique.len() >= r.file_lines().len() {
            break shipped;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} of {} lines shipped:\n{}",
            unique.len(),
            written.len(),
            tail(&agent.stderr())
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(agent.terminate().success());
    // Quiet now (the agent flushed at stop): the files and the stream are final.
    let written = r.file_lines();
    let shipped = {
        let again = r.shipped(STREAM).await;
        assert!(again.len() >= shipped.len());
        again
    };

    // Every line present, in order once duplicates are removed.
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<String> = shipped
        .iter()
        .filter(|m| seen.insert(m.as_str()))
        .cloned()
        .collect();
    assert_same_lines(&firsts, &written);
    // Duplicates: at most one batch per kill.
    let dups = shipped.len() - firsts.len();
    let biggest = r
        .proxy
        .accepted(STREAM)
        .iter()
        .map(|p| p.messages.len())
        .max()
        .unwrap();
    eprintln!(
        "{} lines written, {} events shipped, {dups} duplicates after {kills} kills (batches up to {biggest} events)",
        written.len(),
        shipped.len()
    );
    assert!(
        dups <= kills * biggest,
        "{dups} duplicates after {kills} kills (batches up to {biggest})"
    );
    r.proxy.assert_limits_kept();
}

/// Newlines in the child's current log file: its line count while it is being written (`file_lines`
/// could catch a line half-copied).
fn lines_on_disk(r: &Rig) -> usize {
    let bytes = std::fs::read(r.host.path("logs/bootnode.log")).unwrap_or_default();
    bytes.iter().filter(|b| **b == b'\n').count()
}

#[tokio::test]
async fn a_60_s_cloudwatch_outage_keeps_the_child_running_and_every_line_arrives_after() {
    // The child prints for 70 s, through the outage and beyond its end.
    const RATE: usize = 100;
    const TOTAL: usize = RATE * 70;
    let r = rig(
        json!([{"lines": TOTAL, "width": 80, "per_sec": RATE}, {"touch": "done"}]),
        "",
    )
    .await;
    r.proxy.set_fault(Fault::Down);
    let mut agent = r.host.spawn_run(&[]);
    agent.wait_ready();
    let ready = Instant::now();
    let outage = Duration::from_secs(60);
    let child = agent.the_child();

    // status shows the backlog: degraded (exit 1) once shipping has failed for 30 s.
    let doc = wait_for(
        "status to report the shipping backlog during the outage",
        outage.saturating_sub(ready.elapsed()),
        || {
            let (code, doc) = r.host.status();
            (code == Some(1)).then_some(doc)
        },
    );
    assert_eq!(doc["logs"]["degraded"], true, "{doc:#}");
    let summary = doc["logs"]["summary"].as_str().unwrap_or_default();
    assert!(summary.starts_with("CloudWatch failing for"), "{summary}");
    let text = String::from_utf8_lossy(&r.host.output(&["status"]).stdout).into_owned();
    assert!(
        text.starts_with("DEGRADED") && text.contains("logs      CloudWatch failing for"),
        "{text}"
    );
    assert!(agent.stderr().contains("retrying"), "{}", agent.stderr());
    assert!(r.shipped(STREAM).await.is_empty());
    let midway = lines_on_disk(&r);

    std::thread::sleep(outage.saturating_sub(ready.elapsed()));
    // The child printed on through the outage, and its lines went to disk.
    let at_end = lines_on_disk(&r);
    assert!(
        at_end >= midway + 10 * RATE,
        "{midway} lines on disk halfway, {at_end} at the end of the outage"
    );
    assert_eq!(
        r.host.status().0,
        Some(1),
        "still degraded at the end of the outage"
    );
    r.proxy.set_fault(Fault::None);

    r.wait_mark("done", Duration::from_secs(60), &agent);
    let shipped = r.wait_shipped(TOTAL, Duration::from_secs(90), &agent).await;
    let written = r.file_lines();
    assert_same_lines(&shipped, &written);
    let seqs: Vec<usize> = shipped.iter().map(|m| seq(m)).collect();
    assert_eq!(seqs, (0..TOTAL).collect::<Vec<_>>());
    let doc = wait_for("status healthy again", Duration::from_secs(60), || {
        let (code, doc) = r.host.status();
        (code == Some(0)).then_some(doc)
    });
    // The same child all along: the agent kept it running, no restart.
    assert_eq!(doc["children"][0]["pid"], child, "{doc:#}");
    assert_eq!(doc["children"][0]["restarts"], 0, "{doc:#}");
    assert_eq!(children_of(agent.pid()), [child]);
    r.proxy.assert_limits_kept();
    assert!(agent.terminate().success());
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_until_accepted() {
    let r = rig(json!([{"lines": 3000, "width": 80, "per_sec": 1000}]), "").await;
    r.proxy.set_fault(Fault::Throttle(3));
    let mut agent = r.host.spawn_run(&[]);
    agent.wait_ready();
    wait_for("three throttled calls", Duration::from_secs(30), || {
        (r.proxy.state().faults_served >= 3).then_some(())
    });
    r.proxy.set_fault(Fault::Unavailable(2));
    let shipped = r.wait_shipped(3000, Duration::from_secs(60), &agent).await;
    assert_same_lines(&shipped, &r.file_lines());
    assert_eq!(r.proxy.state().faults_served, 5);
    assert!(
        agent
            .stderr()
            .contains("PutLogEvents accepted after retries"),
        "{}",
        agent.stderr()
    );
    r.proxy.assert_limits_kept();
    assert!(agent.terminate().success());
}

#[tokio::test]
async fn events_too_old_for_cloudwatch_are_counted_and_the_rest_arrive() {
    let r = rig(json!([{"lines": 1}]), "").await;
    // A file left from before: three lines from 20 days ago, two from now.
    let logs = r.host.path("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stamp = |secs: u64| {
        let out = std::process::Command::new("date")
            .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%S.000Z"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let old = stamp(now - 20 * 86_400);
    let recent = stamp(now - 60);
    let text =
        format!("{old} old 1\n{old} old 2\n{old} old 3\n{recent} recent 1\n{recent} recent 2\n");
    std::fs::write(logs.join("bootnode.log"), text).unwrap();
    // As the agent left it: owned by the service user it runs as.
    std::os::unix::fs::chown(
        logs.join("bootnode.log"),
        Some(SERVICE_UID),
        Some(SERVICE_UID),
    )
    .unwrap();

    let mut agent = r.host.spawn_run(&[]);
    agent.wait_ready();
    let shipped = r.wait_shipped(3, Duration::from_secs(60), &agent).await;
    assert_eq!(shipped[..2], ["recent 1", "recent 2"]);
    assert!(shipped[2].starts_with("run="));
    let err = agent.stderr();
    assert!(
        err.contains("rejected log events") && err.contains("too_old=3"),
        "{err}"
    );
    assert!(agent.terminate().success());
}

#[tokio::test]
async fn access_denied_on_create_log_group_is_an_error_in_status_and_the_agent_log_and_shipping_goes_on(
) {
    let r = rig(json!([{"lines": 20, "width": 40}]), "").await;
    // The group exists (made by Terraform), but the role may not create it.
    r.moto
        .logs_client()
        .create_log_group()
        .log_group_name(GROUP)
        .send()
        .await
        .expect("create the group in moto");
    r.proxy.set_fault(Fault::Denied("CreateLogGroup"));
    let mut agent = r.host.spawn_run(&[]);
    agent.wait_ready();
    let (code, doc) = wait_for(
        "status to report the refused CreateLogGroup",
        Duration::from_secs(30),
        || {
            let (code, doc) = r.host.status();
            let listed = doc["logs"]["errors"]
                .as_array()
                .is_some_and(|e| !e.is_empty());
            listed.then_some((code, doc))
        },
    );
    let errors = &doc["logs"]["errors"];
    assert_eq!(
        errors.as_array().map(Vec::len),
        Some(1),
        "one group, one error: {doc:#}"
    );
    let error = errors[0].as_str().unwrap_or_default();
    assert!(
        error.starts_with(&format!("CreateLogGroup {GROUP}: access denied"))
            && error.contains("logs:CreateLogGroup")
            && error.contains("node-agent iam-policy"),
        "{error}"
    );
    assert_eq!(child_stream(&doc)["setup_error"], error, "{doc:#}");
    assert_eq!(doc["logs"]["degraded"], true, "{doc:#}");
    assert_eq!(code, Some(1), "degraded: {doc:#}");
    assert!(
        doc["logs"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("error: CreateLogGroup")),
        "{doc:#}"
    );
    // An error in the agent's log (stderr and its file), not a debug line.
    let logged = |text: &str| {
        text.lines().any(|l| {
            l.contains("ERROR") && l.contains("CreateLogGroup") && l.contains("access denied")
        })
    };
    assert!(logged(&agent.stderr()), "{}", tail(&agent.stderr()));
    wait_for(
        "the error in node-agent.log",
        Duration::from_secs(10),
        || logged(&r.host.log("node-agent")).then_some(()),
    );
    // The group exists, so the lines still arrive.
    let shipped = r.wait_shipped(20, Duration::from_secs(60), &agent).await;
    assert_eq!(shipped.len(), 20);
    assert!(r.proxy.state().faults_served >= 1);
    assert!(agent.terminate().success());
}

#[tokio::test]
async fn with_groups_made_beforehand_the_agent_never_asks_to_create_one() {
    let r = rig(
        json!([{"lines": 20, "width": 40}]),
        "create_group = false\n",
    )
    .await;
    r.moto
        .logs_client()
        .create_log_group()
        .log_group_name(GROUP)
        .send()
        .await
        .expect("create the group in moto");
    // The role may do neither (iam-policy grants neither): a call would be an error in status.
    r.proxy.set_fault(Fault::Denied("CreateLogGroup"));
    let mut agent = r.host.spawn_run(&[]);
    agent.wait_ready();
    let shipped = r.wait_shipped(20, Duration::from_secs(60), &agent).await;
    assert_eq!(shipped.len(), 20);
    assert_eq!(
        r.proxy.state().faults_served,
        0,
        "CreateLogGroup was called"
    );
    let (_, doc) = r.host.status();
    assert_eq!(doc["logs"]["errors"], json!([]), "{doc:#}");
    assert!(agent.terminate().success());
}

/// The status of the child's stream (`logs.streams[]`).
fn child_stream(doc: &Value) -> Value {
    doc["logs"]["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["child"] == "bootnode"))
        .cloned()
        .unwrap_or(Value::Null)
}

/// A small tmpfs mounted for one test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0755").as_str()),
        )
        .unwrap_or_else(|e| {
            panic!(
                "mount a tmpfs on {} (the tests run as root): {e}",
                at.display()
            )
        });
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// `run=PID seq=NNNNNNN ....` → NNNNNNN.
fn seq(line: &str) -> usize {
    line.find("seq=")
        .and_then(|i| line.get(i + 4..i + 11))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an emitter line: {:?}", &line[..line.len().min(80)]))
}

#[tokio::test]
async fn a_full_log_disk_loses_counted_lines_only_keeps_the_child_running_and_recovers() {
    const FLOOD: usize = 20_000;
    let r = rig(
        json!([
            {"lines": FLOOD, "width": 200},
            {"touch": "flooded"},
            {"wait": "go"},
            {"lines": 100, "width": 60},
            {"touch": "done"},
        ]),
        "",
    )
    .await;
    // The log directory is a 2 MiB disk, 1.75 MiB of it taken by a file of root's: about 1,000 of the
    // 20,000 lines (4.5 MB) fit.
    let logs = r.host.path("logs");
    let _disk = Tmpfs::mount(&logs, "2m");
    let filler = logs.join("filler");
    std::fs::write(&filler, vec![0u8; (2048 - 256) * 1024]).unwrap();
    let mut agent = r.host.spawn_run(&[]);
    agent.wait_ready();
    let child = agent.the_child();

    // The child prints everything: the full disk does not block it.
    r.wait_mark("flooded", Duration::from_secs(60), &agent);
    // Every line is in the file or counted as not written; none half-written.
    let (written, unwritten) = wait_for(
        "every line written or counted",
        Duration::from_secs(30),
        || {
            let written = r.file_lines();
            let unwritten = child_stream(&r.host.status().1)["unwritten_lines"].as_u64()?;
            (written.len() + unwritten as usize == FLOOD).then_some((written, unwritten))
        },
    );
    eprintln!(
        "{} lines written, {unwritten} counted as not written",
        written.len()
    );
    // Only what was flushed before the disk filled fits: the first flushes may already be too big.
    assert!(unwritten > 10_000, "{unwritten} unwritten");
    let seqs: Vec<usize> = written.iter().map(|l| seq(l)).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "lines out of order");
    assert!(written.iter().all(|l| l.len() == 200), "a line was cut");
    // Visible: in status (text and JSON) and in the agent's log on stderr.
    let (_, doc) = r.host.status();
    let summary = doc["logs"]["summary"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(summary.contains("lines not written (disk)"), "{summary}");
    let text = String::from_utf8_lossy(&r.host.output(&["status"]).stdout).into_owned();
    assert!(text.contains("lines not written (disk)"), "{text}");
    assert!(
        agent
            .stderr()
            .contains("cannot write log lines; the child keeps running"),
        "{}",
        agent.stderr()
    );
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent exited"
    );
    assert_eq!(children_of(agent.pid()), [child], "the child was restarted");

    // Space again: the child's next lines are written and shipped.
    std::fs::remove_file(&filler).unwrap();
    std::fs::write(r.mark("go"), b"").unwrap();
    r.wait_mark("done", Duration::from_secs(30), &agent);
    let all = wait_for(
        "the lines after the disk was freed",
        Duration::from_secs(30),
        || {
            let lines = r.file_lines();
            lines
                .last()
                .is_some_and(|l| seq(l) == FLOOD + 99)
                .then_some(lines)
        },
    );
    assert_eq!(&all[..written.len()], &written[..]);
    let after: Vec<usize> = all[written.len()..].iter().map(|l| seq(l)).collect();
    assert_eq!(after, (FLOOD..FLOOD + 100).collect::<Vec<_>>());
    let shipped = r
        .wait_shipped(all.len(), Duration::from_secs(60), &agent)
        .await;
    assert_same_lines(&shipped, &all);
    let (_, doc) = r.host.status();
    assert_eq!(child_stream(&doc)["unwritten_lines"], unwritten, "{doc:#}");
    assert_eq!(doc["children"][0]["pid"], child, "{doc:#}");
    assert_eq!(children_of(agent.pid()), [child], "the child was restarted");
    r.proxy.assert_limits_kept();
    assert!(agent.terminate().success(), "{}", agent.stderr());
}

#[tokio::test]
async fn an_event_cloudwatch_refuses_as_invalid_is_set_aside_counted_and_the_rest_arrive() {
    let poison: Vec<u8> = b"this event is refused\n".to_vec();
    let r = rig(
        json!([{"lines": 30}, {"raw": poison}, {"lines": 30}, {"touch": "done"}]),
        "",
    )
    .await;
    r.proxy.set_fault(Fault::Invalid("is refused"));
    let mut agent = r.host.spawn_run(&[]);
    agent.wait_ready();
    r.wait_mark("done", Duration::from_secs(20), &agent);
    let shipped = r.wait_shipped(60, Duration::from_secs(60), &agent).await;
    let written: Vec<String> = r
        .file_lines()
        .into_iter()
        .filter(|l| !l.contains("is refused"))
        .collect();
    assert_same_lines(&shipped, &written);
    // Status is published every second or so.
    let doc = wait_for("the rejection in status", Duration::from_secs(10), || {
        let (_, doc) = r.host.status();
        (child_stream(&doc)["rejected_invalid"] == 1).then_some(doc)
    });
    let stream = child_stream(&doc);
    assert!(
        stream["last_rejected"]
            .as_str()
            .is_some_and(|e| e.contains("InvalidParameterException")),
        "{doc:#}"
    );
    assert!(
        doc["logs"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("1 events rejected by CloudWatch")),
        "{doc:#}"
    );
    assert!(
        agent.stderr().contains("set aside"),
        "{}",
        tail(&agent.stderr())
    );
    r.proxy.assert_limits_kept();
    assert!(agent.terminate().success());
}

#[tokio::test]
async fn a_log_file_truncated_by_copytruncate_keeps_shipping_every_line_written_after() {
    let r = rig(
        json!([{"lines": 20}, {"touch": "before"}, {"wait": "truncated"}, {"lines": 40}, {"touch": "after"}]),
        "",
    )
    .await;
    let mut agent = r.host.spawn_run(&[]);
    agent.wait_ready();
    r.wait_mark("before", Duration::from_secs(20), &agent);
    let before = r.wait_shipped(20, Duration::from_secs(60), &agent).await;
    // copytruncate: copy the file aside, then truncate it in place (the writer keeps its descriptor).
    let log = r.host.path("logs/bootnode.log");
    std::fs::copy(&log, r.host.path("bootnode.log.copy")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    // At once more than the file held before: its size alone does not tell.
    std::fs::write(r.mark("truncated"), "").unwrap();
    r.wait_mark("after", Duration::from_secs(20), &agent);
    let shipped = r.wait_shipped(60, Duration::from_secs(60), &agent).await;
    let after = r.file_lines();
    assert_eq!(after.len(), 40);
    assert_same_lines(&shipped[before.len()..], &after);
    assert!(
        agent.stderr().contains("truncated"),
        "{}",
        tail(&agent.stderr())
    );
    assert!(agent.terminate().success());
}

//! Metrics from a running stand-in chain: the EMF events in the `{instance_id}/metrics` stream (in moto)
//! follow the format and carry the chain's values, a stalled head included; `GET /metrics` parses as
//! Prometheus text and says what `status --json` says.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const GROUP: &str = "/node-agent/staging/rpc";
const STREAM: &str = "i-0123456789abcdef0/metrics";

/// An rpc host shipping to moto, checking every second, whose geth seals a block every 0.5 s and then
/// stalls after `stall` seconds.
async fn host(moto: &Moto, imds: &ImdsEmulator, stall: u64) -> Host {
    moto.seed_fixture_secrets("staging").await;
    let host = Host::new(
        Some(&imds.endpoint()),
        Some(&moto.endpoint()),
        "[chain]\nethstats = \"\"\n[health]\nmax_head_age_secs = 3\nmin_peers = 1\n[backup]\nrole = \"\"\n",
    );
    geth_faults(
        &host.path("data/staging/rpc"),
        json!({"period": 0.5, "stall_head_after": stall}),
    );
    host
}

/// An event's metric names and dimension sets, checked against the EMF rules the agent's unit test
/// spells out (here: the shape CloudWatch needs to extract them).
fn metrics_of(event: &Value) -> Vec<String> {
    let d = &event["_aws"]["CloudWatchMetrics"][0];
    assert!(event["_aws"]["Timestamp"].is_i64(), "{event}");
    assert_eq!(d["Namespace"], "NodeAgent");
    assert_eq!(
        d["Dimensions"],
        json!([
            ["Environment", "Role"],
            ["Environment", "Role", "InstanceId"]
        ])
    );
    for k in ["Environment", "Role", "InstanceId"] {
        assert!(event[k].is_string(), "{k} missing: {event}");
    }
    d["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["Name"].as_str().unwrap().to_owned();
            assert!(event[&name].is_number(), "{name} is not a number: {event}");
            name
        })
        .collect()
}

#[tokio::test]
async fn emf_events_carry_the_chains_figures_and_show_a_stalled_head() {
    let moto = Moto::start();
    let imds = ImdsEmulator::start(&imds_config(
        json!({"Role": "rpc", "Environment": "staging"}),
    ));
    let host = host(&moto, &imds, 6).await;
    let mut agent = host.spawn_run(&[]);
    agent.wait_ready();
    // Until the stall, the block number climbs and the node is healthy; after it, the head ages past
    // health.max_head_age_secs and the node is not.
    let events = wait_for_async_events(&moto, |events| {
        events.iter().any(|e| {
            e["BlockNumber"].as_f64().is_some_and(|n| n >= 3.0)
                && e["HeadAgeSeconds"].as_f64().is_some_and(|a| a > 5.0)
        })
    })
    .await;
    // The first events may come before geth's first sample: no chain figures in them yet.
    let names = metrics_of(events.last().unwrap());
    for m in [
        "HeadAgeSeconds",
        "BlockNumber",
        "Peers",
        "Syncing",
        "Restarts",
        "CrashLooping",
        "Healthy",
        "ShippingLagBytes",
        "LinesLost",
    ] {
        assert!(names.iter().any(|n| n == m), "{m} missing: {names:?}");
    }
    assert!(
        !names.iter().any(|n| n == "Sealing"),
        "an rpc node does not seal"
    );
    assert_eq!(events[0]["Role"], "rpc");
    assert_eq!(events[0]["Child"], "geth");
    let blocks: Vec<f64> = events
        .iter()
        .filter_map(|e| e["BlockNumber"].as_f64())
        .collect();
    assert!(blocks.windows(2).all(|w| w[1] >= w[0]), "{blocks:?}");
    assert!(
        blocks.last().unwrap() > &blocks[0],
        "the head never moved: {blocks:?}"
    );
    assert!(
        events.iter().any(|e| e["Healthy"] == 1.0),
        "never healthy before the stall"
    );
    let stalled = events.last().unwrap();
    assert_eq!(stalled["Healthy"], 0.0, "{stalled}");
    assert_eq!(stalled["Peers"], 1.0);
    assert_eq!(stalled["LinesLost"], 0.0);
    // One event per check: about one a second, not a burst.
    assert!(events.len() >= 5, "{}", events.len());
    assert!(agent.terminate().success());
}

/// The EMF events of the metrics stream once `done` holds for them.
async fn wait_for_async_events(moto: &Moto, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = std::time::Instant::now();
    loop {
        let events: Vec<Value> = moto
            .log_messages(GROUP, STREAM)
            .await
            .iter()
            .map(|m| serde_json::from_str(m).unwrap_or_else(|e| panic!("{e}: {m}")))
            .collect();
        if done(&events) {
            return events;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no such events after 60 s: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn the_prometheus_endpoint_parses_and_matches_status() {
    let moto = Moto::start();
    let imds = ImdsEmulator::start(&imds_config(
        json!({"Role": "rpc", "Environment": "staging"}),
    ));
    // Stalled from the start: the head stays put, so status and the scrape agree on it.
    let host = host(&moto, &imds, 2).await;
    let mut agent = host.spawn_run(&[]);
    agent.wait_ready();
    let doc = wait_for("a stalled head in status", Duration::from_secs(30), || {
        let (_, doc) = host.status();
        let age = doc["children"][0]["chain"]["head_age_secs"].as_u64()?;
        (age > 3).then_some(doc)
    });
    let (code, text) = host.get_health("/metrics");
    assert_eq!(code, 200, "{text}");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let value = |name: &str| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        assert_eq!(s.labels.get("environment"), Some("staging"));
        assert_eq!(s.labels.get("role"), Some("rpc"));
        assert_eq!(s.labels.get("instance_id"), Some("i-0123456789abcdef0"));
        assert_eq!(s.labels.get("child"), Some("geth"));
        match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    let geth = &doc["children"][0];
    assert_eq!(
        value("node_agent_block_number"),
        geth["chain"]["head"].as_f64().unwrap()
    );
    assert_eq!(
        value("node_agent_peers"),
        geth["chain"]["peers"].as_f64().unwrap()
    );
    assert_eq!(value("node_agent_syncing"), 0.0);
    assert_eq!(
        value("node_agent_restarts_total"),
        geth["restarts"].as_f64().unwrap()
    );
    assert_eq!(value("node_agent_crash_looping"), 0.0);
    let healthy = if doc["overall"] == "healthy" {
        1.0
    } else {
        0.0
    };
    assert_eq!(value("node_agent_healthy"), healthy);
    assert!(
        value("node_agent_head_age_seconds") >= geth["chain"]["head_age_secs"].as_f64().unwrap()
    );
    assert!(agent.terminate().success());
}

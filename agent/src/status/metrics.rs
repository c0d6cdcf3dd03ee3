//! The status document as metrics: one set of figures per child, taken from the document `status --json`
//! prints (one source, so the two cannot drift), written as CloudWatch Embedded Metric Format events
//! (JSON log events CloudWatch turns into metrics) and as Prometheus' text format (`GET /metrics`).
//! Pure: the document and the time come in as values.

use super::model::{Document, Overall, State};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{json, Map, Value};
use std::sync::atomic::AtomicU64;

/// How a figure adds up over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value now (head age, peers).
    Gauge,
    /// A count since the agent started (restarts, lines lost): a Prometheus counter, and in EMF the
    /// increase since the previous event, so CloudWatch's Sum over a period is what happened in it.
    Counter,
}

/// One metric: its EMF name and unit, its Prometheus name, and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    /// A CloudWatch unit.
    pub unit: &'static str,
    pub prometheus: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn m(
    name: &'static str,
    unit: &'static str,
    prometheus: &'static str,
    kind: Kind,
    help: &'static str,
) -> Metric {
    Metric {
        name,
        unit,
        prometheus,
        kind,
        help,
    }
}

/// Every metric, in the order they are written. docs/metrics.md lists them with their meaning.
pub const METRICS: [Metric; 12] = [
    m(
        "HeadAgeSeconds",
        "Seconds",
        "node_agent_head_age_seconds",
        Kind::Gauge,
        "Age of geth's head block",
    ),
    m(
        "BlockNumber",
        "None",
        "node_agent_block_number",
        Kind::Gauge,
        "geth's head block number",
    ),
    m(
        "Peers",
        "Count",
        "node_agent_peers",
        Kind::Gauge,
        "geth's peer count",
    ),
    m(
        "Syncing",
        "None",
        "node_agent_syncing",
        Kind::Gauge,
        "1 while geth syncs (eth_syncing), else 0",
    ),
    m(
        "Sealing",
        "None",
        "node_agent_sealing",
        Kind::Gauge,
        "Sealer only: 1 while it seals as an authorised signer, else 0",
    ),
    m(
        "Restarts",
        "Count",
        "node_agent_restarts_total",
        Kind::Counter,
        "Restarts of the child by the agent",
    ),
    m(
        "CrashLooping",
        "None",
        "node_agent_crash_looping",
        Kind::Gauge,
        "1 while the child is crash-looping, else 0",
    ),
    m(
        "Healthy",
        "None",
        "node_agent_healthy",
        Kind::Gauge,
        "1 when status says healthy, 0 when degraded or down",
    ),
    m(
        "ShippingLagBytes",
        "Bytes",
        "node_agent_shipping_lag_bytes",
        Kind::Gauge,
        "Log bytes written and not yet accepted by CloudWatch Logs",
    ),
    m(
        "LinesLost",
        "Count",
        "node_agent_lines_lost_total",
        Kind::Counter,
        "Log lines lost: not written (disk full) or refused by CloudWatch",
    ),
    m(
        "SecretAgeSeconds",
        "Seconds",
        "node_agent_secret_age_seconds",
        Kind::Gauge,
        "Age of the oldest secret the host holds (since it was fetched)",
    ),
    m(
        "BackupAgeSeconds",
        "Seconds",
        "node_agent_backup_age_seconds",
        Kind::Gauge,
        "Exporting node only: age of the newest backup segment",
    ),
];

/// One child's figures: `(metric, value)` for the metrics that apply to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub child: String,
    pub values: Vec<(Metric, f64)>,
}

fn flag(b: bool) -> f64 {
    f64::from(u8::from(b))
}

fn metric(name: &str) -> Metric {
    METRICS
        .iter()
        .copied()
        .find(|m| m.name == name)
        .unwrap_or(METRICS[0])
}

/// The figures of every child of the document, at `now` (Unix seconds). The host's own figures
/// (health, shipping, secrets, backup) go with each child: one host runs one role, and one child.
pub fn figures(doc: &Document, now: u64) -> Vec<Figures> {
    let logs = doc.logs.clone().unwrap_or_default();
    let lost: u64 = logs
        .streams
        .iter()
        .map(|s| {
            s.unwritten_lines
                + s.rejected_too_old
                + s.rejected_too_new
                + s.rejected_expired
                + s.rejected_invalid
        })
        .sum();
    let secret_age = doc.secrets.iter().map(|s| s.age_secs).max();
    let backup_age = doc
        .backup
        .as_ref()
        .filter(|b| b.exporting)
        .and_then(|b| b.newest.as_ref())
        .map(|n| now.saturating_sub(n.created_at));
    doc.children
        .iter()
        .map(|c| {
            let mut v = Vec::new();
            if let Some(chain) = &c.chain {
                v.push((metric("HeadAgeSeconds"), chain.head_age_secs as f64));
                v.push((metric("BlockNumber"), chain.head as f64));
                v.push((metric("Peers"), chain.peers as f64));
                v.push((metric("Syncing"), flag(chain.syncing)));
                if doc.host.role == "sealer" {
                    let sealing = chain.mining == Some(true) && chain.authorised == Some(true);
                    v.push((metric("Sealing"), flag(sealing)));
                }
            }
            v.push((metric("Restarts"), f64::from(c.restarts)));
            v.push((metric("CrashLooping"), flag(c.state == State::CrashLoop)));
            v.push((metric("Healthy"), flag(doc.overall == Overall::Healthy)));
            v.push((metric("ShippingLagBytes"), logs.lag_bytes as f64));
            v.push((metric("LinesLost"), lost as f64));
            if let Some(age) = secret_age {
                v.push((metric("SecretAgeSeconds"), age as f64));
            }
            if let Some(age) = backup_age {
                v.push((metric("BackupAgeSeconds"), age as f64));
            }
            Figures {
                child: c.name.clone(),
                values: v,
            }
        })
        .collect()
}

/// The dimension sets of every event: per environment and role, and per instance.
pub const DIMENSIONS: [&[&str]; 2] = [
    &["Environment", "Role"],
    &["Environment", "Role", "InstanceId"],
];

/// One EMF event for `f` (JSON, one line). Counters are written as their increase since `before`
/// (the previous event's cumulative values; none: since the agent started).
pub fn emf(
    doc: &Document,
    f: &Figures,
    namespace: &str,
    timestamp_ms: i64,
    before: Option<&Figures>,
) -> String {
    let mut root = Map::new();
    let metrics: Vec<Value> = f
        .values
        .iter()
        .map(|(m, _)| json!({"Name": m.name, "Unit": m.unit}))
        .collect();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": DIMENSIONS,
                "Metrics": metrics,
            }],
        }),
    );
    root.insert("Environment".into(), json!(doc.host.environment));
    root.insert("Role".into(), json!(doc.host.role));
    root.insert("InstanceId".into(), json!(doc.host.instance_id));
    root.insert("Child".into(), json!(f.child));
    for (m, value) in &f.values {
        let value = match (m.kind, before) {
            (Kind::Counter, Some(b)) => {
                let was = b
                    .values
                    .iter()
                    .find(|(p, _)| p.name == m.name)
                    .map_or(0.0, |(_, v)| *v);
                // A counter that went down restarted (a new agent): all of it is new.
                if *value >= was {
                    value - was
                } else {
                    *value
                }
            }
            _ => *value,
        };
        root.insert(m.name.into(), json!(value));
    }
    Value::Object(root).to_string()
}

/// The Prometheus text exposition of every child's figures, labelled by environment, role, instance
/// and child.
pub fn prometheus(doc: &Document, figures: &[Figures]) -> String {
    type Labels = Vec<(String, String)>;
    let mut registry = Registry::default();
    for m in METRICS {
        let labelled = |f: &Figures| -> Labels {
            vec![
                ("environment".into(), doc.host.environment.clone()),
                ("role".into(), doc.host.role.clone()),
                ("instance_id".into(), doc.host.instance_id.clone()),
                ("child".into(), f.child.clone()),
            ]
        };
        let values = figures.iter().filter_map(|f| {
            let v = f.values.iter().find(|(x, _)| x.name == m.name)?.1;
            Some((labelled(f), v))
        });
        match m.kind {
            Kind::Gauge => {
                let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
                for (labels, v) in values {
                    family.get_or_create(&labels).set(v);
                }
                registry.register(m.prometheus, m.help, family);
            }
            Kind::Counter => {
                let family = Family::<Labels, Counter<f64, AtomicU64>>::default();
                for (labels, v) in values {
                    family.get_or_create(&labels).inc_by(v);
                }
                // The crate adds `_total` to a counter's name itself.
                registry.register(m.prometheus.trim_end_matches("_total"), m.help, family);
            }
        }
    }
    let mut out = String::new();
    let _ = encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::super::model::tests::FULL;
    use super::*;

    fn doc() -> Document {
        serde_json::from_str(FULL).unwrap()
    }

    /// The EMF specification's rules for one event: the `_aws` object with a millisecond Timestamp and
    /// CloudWatchMetrics directives; each directive a Namespace, at most 30 dimensions per set, at most 100
    /// metrics, each metric a Name and a valid Unit; every dimension and metric a member of the root, the
    /// dimensions strings and the metrics numbers.
    fn check_emf(text: &str) -> Result<Value, String> {
        const UNITS: [&str; 27] = [
            "Seconds",
            "Microseconds",
            "Milliseconds",
            "Bytes",
            "Kilobytes",
            "Megabytes",
            "Gigabytes",
            "Terabytes",
            "Bits",
            "Kilobits",
            "Megabits",
            "Gigabits",
            "Terabits",
            "Percent",
            "Count",
            "Bytes/Second",
            "Kilobytes/Second",
            "Megabytes/Second",
            "Gigabytes/Second",
            "Terabytes/Second",
            "Bits/Second",
            "Kilobits/Second",
            "Megabits/Second",
            "Gigabits/Second",
            "Terabits/Second",
            "Count/Second",
            "None",
        ];
        if text.contains('\n') {
            return Err("an event is one line".into());
        }
        let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let aws = v.get("_aws").ok_or("no _aws")?;
        aws.get("Timestamp")
            .and_then(Value::as_i64)
            .ok_or("Timestamp is not an integer")?;
        let directives = aws["CloudWatchMetrics"]
            .as_array()
            .ok_or("no CloudWatchMetrics")?;
        for d in directives {
            let ns = d["Namespace"].as_str().ok_or("no Namespace")?;
            if ns.is_empty() || ns.len() > 255 || ns.starts_with("AWS/") {
                return Err(format!("bad Namespace {ns}"));
            }
            for set in d["Dimensions"].as_array().ok_or("no Dimensions")? {
                let set = set.as_array().ok_or("a dimension set is not an array")?;
                if set.len() > 30 {
                    return Err("more than 30 dimensions".into());
                }
                for k in set {
                    let k = k.as_str().ok_or("a dimension is not a string")?;
                    if !v[k].is_string() {
                        return Err(format!("dimension {k} is not a string member of the root"));
                    }
                }
            }
            let metrics = d["Metrics"].as_array().ok_or("no Metrics")?;
            if metrics.len() > 100 {
                return Err("more than 100 metrics".into());
            }
            for m in metrics {
                let name = m["Name"].as_str().ok_or("a metric without a Name")?;
                if name.is_empty() || name.len() > 255 {
                    return Err(format!("bad metric name {name}"));
                }
                if !UNITS.contains(&m["Unit"].as_str().unwrap_or("None")) {
                    return Err(format!(
                        "{name}: unit {} is not a CloudWatch unit",
                        m["Unit"]
                    ));
                }
                if !v[name].is_number() {
                    return Err(format!("{name} is not a number member of the root"));
                }
            }
        }
        Ok(v)
    }

    #[test]
    fn every_event_follows_the_emf_specification() {
        let d = doc();
        let figures = figures(&d, 1_700_000_000);
        assert_eq!(figures.len(), 2);
        for f in &figures {
            let e = emf(&d, f, "NodeAgent", 1_700_000_000_000, None);
            let v = check_emf(&e).unwrap_or_else(|why| panic!("{why}: {e}"));
            assert_eq!(v["Environment"], "production");
            assert_eq!(v["InstanceId"], "i-0abc");
        }
        let geth = emf(&d, &figures[0], "NodeAgent", 1, None);
        let v: Value = serde_json::from_str(&geth).unwrap();
        assert_eq!(v["HeadAgeSeconds"], 3.0);
        assert_eq!(v["BlockNumber"], 120.0);
        assert_eq!(v["Syncing"], 1.0);
        // The document's sealer is authorised but not mining.
        assert_eq!(v["Sealing"], 0.0);
        assert_eq!(v["Healthy"], 0.0, "the document is degraded");
        assert_eq!(v["SecretAgeSeconds"], 7200.0);
        // The ethstats child has no chain figures.
        let e: Value = serde_json::from_str(&emf(&d, &figures[1], "NodeAgent", 1, None)).unwrap();
        assert!(e.get("HeadAgeSeconds").is_none());
        // A bad directive is caught by the checker itself.
        assert!(check_emf(&geth.replace("\"Seconds\"", "\"Sec\"")).is_err());
        assert!(check_emf(&geth.replace("\"NodeAgent\"", "\"AWS/EC2\"")).is_err());
    }

    #[test]
    fn counters_are_written_as_their_increase_since_the_last_event() {
        let d = doc();
        let now = figures(&d, 1);
        let mut before = now[0].clone();
        for (m, v) in &mut before.values {
            if m.name == "Restarts" {
                *v -= 1.0;
            }
        }
        let e: Value = serde_json::from_str(&emf(&d, &now[0], "N", 1, Some(&before))).unwrap();
        assert_eq!(e["Restarts"], 1.0);
        let first: Value = serde_json::from_str(&emf(&d, &now[0], "N", 1, None)).unwrap();
        assert_eq!(first["Restarts"], 1.0, "the geth of FULL restarted once");
    }

    #[test]
    fn prometheus_text_has_every_figure_with_its_labels() {
        let d = doc();
        let text = prometheus(&d, &figures(&d, 1_700_000_000));
        assert!(
            text.contains("# TYPE node_agent_head_age_seconds gauge"),
            "{text}"
        );
        assert!(text.contains("node_agent_head_age_seconds{environment=\"production\",role=\"sealer\",instance_id=\"i-0abc\",child=\"geth\"} 3.0"), "{text}");
        assert!(
            text.contains("# TYPE node_agent_restarts counter"),
            "{text}"
        );
        assert!(text.contains("node_agent_restarts_total{"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

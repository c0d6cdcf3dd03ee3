//! What status reports, as types: the document the agent sends and `status` reads (one type for both
//! ends, so they cannot drift apart), the parts the agent's tasks publish for it, and the verdict.
//!
//! The JSON is a published format (`resources/status.schema.json`): field names, their order and their
//! nulls are the wire format, pinned by the tests below. Parts an agent of schema 1 may lack (added
//! within the schema) read as absent or empty.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tokio::time::Instant;

/// What one geth probe saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GethSample {
    pub head: u64,
    /// Seconds since the head block's timestamp.
    pub head_age_secs: u64,
    pub peers: u64,
    pub syncing: bool,
    /// The highest block the peers announced (`eth_syncing`'s `highestBlock`), while syncing.
    pub highest: Option<u64>,
    /// For a sealer: whether its address is in `clique_getSigners`.
    pub authorised: Option<bool>,
    /// For a sealer: whether geth is sealing (`eth_mining`).
    pub mining: Option<bool>,
}

/// What the ethstats dashboard (its `/primus` endpoint, asked as a browser asks it) listed at one probe:
/// on the ethstats host, every node; on a geth host, whether this node is among them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EthstatsSample {
    /// The server asked (`host:port`).
    pub server: String,
    /// The dashboard sent its node list.
    pub answered: bool,
    /// The names of the nodes reporting now (active), sorted.
    pub reporting: Vec<String>,
    /// Nodes the dashboard still lists but that stopped reporting, sorted.
    pub inactive: Vec<String>,
    /// On a geth host: the name this node reports as.
    pub node: Option<String>,
    /// On a geth host: whether `node` is among `reporting`.
    pub listed: Option<bool>,
    /// Why the dashboard did not answer.
    pub error: Option<String>,
}

/// Where a child is in its life, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Starting,
    Ready,
    Unhealthy,
    BackingOff,
    CrashLoop,
    Stopping,
    Stopped,
    /// Not running, and not to be started: the sealer's lease is not held (the reason says why).
    Fenced,
}

impl State {
    /// Its name in the document.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Unhealthy => "unhealthy",
            State::BackingOff => "backing_off",
            State::CrashLoop => "crash_loop",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Fenced => "fenced",
        }
    }
}

/// What the supervisor decides of a child's life: its state machine (`serve::child::state`) is the one
/// place these are set.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildLife {
    pub state: State,
    pub pid: Option<u32>,
    /// Unix time of the current process's start.
    pub started_at: Option<u64>,
    /// Restarts after exits (crashes) and after failed health checks, since the agent started.
    pub restarts: u32,
    pub unhealthy_restarts: u32,
    pub last_exit: Option<String>,
    /// Why the child is unhealthy, backing off or crash-looping.
    pub reason: Option<String>,
    /// Whether it has served at least once since the agent started.
    pub ever_ready: bool,
    /// Crash-looping: from the restart that found it so until it serves again (the restarts in between
    /// show `starting` and `crash_loop` in turn).
    pub crash_looping: bool,
}

impl Default for ChildLife {
    fn default() -> Self {
        ChildLife {
            state: State::Starting,
            pid: None,
            started_at: None,
            restarts: 0,
            unhealthy_restarts: 0,
            last_exit: None,
            reason: None,
            ever_ready: false,
            crash_looping: false,
        }
    }
}

/// A child's status, published on every change and on every health round: its life as decided, and what
/// the actor adds.
#[derive(Debug, Clone)]
pub struct ChildStatus {
    pub name: String,
    pub life: ChildLife,
    /// The last chain sample of a geth child.
    pub chain: Option<GethSample>,
    /// The last ethstats sample: the server's nodes (ethstats), or this node's listing (geth).
    pub ethstats: Option<EthstatsSample>,
    /// When the supervising task last made progress (the watchdog's evidence).
    pub heartbeat: Instant,
}

impl ChildStatus {
    pub fn new_for(name: &str) -> Self {
        ChildStatus {
            name: name.to_owned(),
            life: ChildLife::default(),
            chain: None,
            ethstats: None,
            heartbeat: Instant::now(),
        }
    }
}

/// What `node-agent status` shows for one log stream; the shipper keeps it up to date.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamStatus {
    pub child: String,
    pub file: PathBuf,
    pub group: String,
    pub stream: String,
    /// Whether lines are shipped at all (`logs.ship`).
    pub shipping: bool,
    /// Unix milliseconds of the last batch CloudWatch accepted.
    pub last_success_ms: Option<i64>,
    /// Bytes written to the files and not yet accepted by CloudWatch.
    pub lag_bytes: u64,
    pub events_sent: u64,
    pub batches_sent: u64,
    /// Failed calls that were retried (throttling, 5xx, network, ...).
    pub retries: u64,
    pub rejected_too_old: u64,
    pub rejected_too_new: u64,
    pub rejected_expired: u64,
    /// Events CloudWatch refused as invalid (retrying cannot help): set aside, lost.
    pub rejected_invalid: u64,
    /// Why the last event was set aside.
    pub last_rejected: Option<String>,
    pub last_error: Option<String>,
    /// What the instance role may not do to the group or stream (AccessDenied on CreateLogGroup,
    /// PutRetentionPolicy, CreateLogStream): shipping may go on, but the policy needs fixing.
    pub setup_error: Option<String>,
    /// Unix milliseconds since when calls fail without a success in between.
    pub failing_since_ms: Option<i64>,
    /// Lines the writer could not write (disk full).
    pub unwritten_lines: u64,
    /// Bytes rotated away before they were shipped.
    pub lost_bytes: u64,
}

/// Log shipping as the log pipeline publishes it (every second) and the document carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogsStatus {
    /// One line for people.
    pub summary: String,
    /// Shipping has failed long enough, or its setup was refused: the host is degraded.
    pub degraded: bool,
    /// The setup refusals, each once.
    pub errors: Vec<String>,
    pub lag_bytes: u64,
    pub streams: Vec<StreamStatus>,
}

pub use super::backup::{BackupStatus, NewestSegment};

/// Overall verdict, also the exit code of `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overall {
    Healthy,
    Degraded,
    Down,
}

impl Overall {
    pub fn exit_code(self) -> u8 {
        match self {
            Overall::Healthy => 0,
            Overall::Degraded => 1,
            Overall::Down => 2,
        }
    }

    /// Its name in the document.
    pub fn as_str(self) -> &'static str {
        match self {
            Overall::Healthy => "healthy",
            Overall::Degraded => "degraded",
            Overall::Down => "down",
        }
    }
}

/// The status document: the agent's answer on the socket, and what `status` renders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// [`super::SCHEMA`].
    pub schema: u32,
    pub overall: Overall,
    pub agent: AgentPart,
    pub host: HostPart,
    pub pinned: Pinned,
    pub children: Vec<ChildPart>,
    /// For the bootnode: its enode URL.
    #[serde(default)]
    pub bootnode_enode: Option<String>,
    pub storage: StoragePart,
    #[serde(default)]
    pub secrets: Vec<SecretPart>,
    /// Always sent; absent reads as "-".
    #[serde(default)]
    pub logs: Option<LogsStatus>,
    #[serde(default)]
    pub services: ServicesPart,
    /// Absent from agents before the health endpoint.
    #[serde(default)]
    pub endpoint: Option<EndpointPart>,
    /// Chain backups, on the nodes of the exporting role (absent elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,
}

/// What the health endpoint answers (`health.listen`): the same verdict as `/ready` and `/live`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPart {
    /// Where `/ready` and `/live` are served; null when `health.listen = "off"`.
    pub listen: Option<String>,
    pub ready: bool,
    pub ready_reason: Option<String>,
    pub live: bool,
    pub live_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPart {
    pub version: String,
    pub pid: u32,
    /// Unix seconds.
    pub started_at: u64,
    pub uptime_secs: u64,
    /// The user the agent (and its children) run as.
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPart {
    pub role: String,
    pub environment: String,
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
}

/// The versions this build pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pinned {
    pub geth: String,
}

/// A child as the document shows it: its [`ChildStatus`] (but the heartbeat), its uptime and user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildPart {
    pub name: String,
    pub state: State,
    pub pid: Option<u32>,
    #[serde(default)]
    pub started_at: Option<u64>,
    pub restarts: u32,
    pub unhealthy_restarts: u32,
    pub last_exit: Option<String>,
    pub reason: Option<String>,
    pub chain: Option<GethSample>,
    #[serde(default)]
    pub ever_ready: bool,
    /// Only while a process runs.
    pub uptime_secs: Option<u64>,
    pub user: String,
    /// The last ethstats sample; absent from agents before the ethstats probe.
    #[serde(default)]
    pub ethstats: Option<EthstatsSample>,
}

/// What the role's storage is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Efs,
    Local,
}

/// The storage and what its last probe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoragePart {
    pub kind: StorageKind,
    /// `fs-…:/path` on EFS, the directory itself when local.
    pub source: String,
    pub datadir: PathBuf,
    pub free_bytes: Option<u64>,
    /// The expected mount (EFS) and the sentinel are in place.
    pub check_ok: bool,
    #[serde(default)]
    pub check_error: Option<String>,
}

/// One secret: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretPart {
    pub name: String,
    pub version: String,
    /// Unix seconds the version in use was fetched.
    pub fetched_at: u64,
    pub age_secs: u64,
    /// Why the newest version was refused.
    pub error: Option<String>,
}

/// The services the agent keeps asking; `None` where it does not (local mode, no secrets).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesPart {
    pub secrets_manager: Option<ReachPart>,
    pub imds: Option<ReachPart>,
}

/// When a service last answered, and since when it has not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReachPart {
    /// False from the first failed check until one succeeds.
    pub ok: bool,
    pub ok_at: Option<u64>,
    pub ok_age_secs: Option<u64>,
    pub failing_since: Option<u64>,
    pub failing_secs: Option<u64>,
    pub error: Option<String>,
}

/// Judges the children, the storage, and the services around them (log shipping, Secrets Manager, IMDS:
/// `services_degraded` when one of them is failing). Pure.
pub fn overall(children: &[ChildStatus], storage_ok: bool, services_degraded: bool) -> Overall {
    let serving = |c: &ChildStatus| matches!(c.life.state, State::Ready) && c.life.reason.is_none();
    // Storage gone from under a running geth is as bad as no geth: it may be writing to the local disk.
    if !storage_ok
        || children
            .iter()
            .all(|c| !matches!(c.life.state, State::Ready | State::Unhealthy))
    {
        return Overall::Down;
    }
    if children.iter().all(serving) && !services_degraded {
        Overall::Healthy
    } else {
        Overall::Degraded
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The document of a sealer with every part filled, as the agent sends it (taken from the agent
    /// before the document had a type; `server`'s test builds it from the same inputs).
    pub const FULL: &str = r#"{
      "schema": 1, "overall": "degraded",
      "agent": {"version": "0.1.0", "pid": 4242, "started_at": 1699996000, "uptime_secs": 4000, "user": "geth"},
      "host": {"role": "sealer", "environment": "production", "instance_id": "i-0abc", "region": "eu-west-1",
        "availability_zone": "eu-west-1a"},
      "pinned": {"geth": "1.13.15"},
      "children": [
        {"name": "geth", "state": "ready", "pid": 42, "started_at": 1699999939, "restarts": 1, "unhealthy_restarts": 2,
          "last_exit": "exited with code 1", "reason": "warming up: no peers",
          "chain": {"head": 120, "head_age_secs": 3, "peers": 2, "syncing": true, "highest": 130, "authorised": true,
            "mining": false},
          "ever_ready": true, "uptime_secs": 61, "user": "geth",
          "ethstats": {"server": "10.0.0.9:3000", "answered": true, "reporting": ["production-rpc-i-0def"],
            "inactive": ["production-sealer-i-0abc"], "node": "production-sealer-i-0abc", "listed": false,
            "error": null}},
        {"name": "ethstats", "state": "backing_off", "pid": null, "started_at": 1699999990, "restarts": 3,
          "unhealthy_restarts": 0, "last_exit": "killed by signal 9", "reason": "backing off 4s", "chain": null,
          "ever_ready": false, "uptime_secs": null, "user": "geth", "ethstats": null}
      ],
      "bootnode_enode": "enode://ab@10.0.0.1:30301",
      "storage": {"kind": "efs", "source": "fs-1:/production/sealer", "datadir": "/var/lib/node-agent/data",
        "free_bytes": 8000000000, "check_ok": true, "check_error": null},
      "secrets": [
        {"name": "production/sealer/password", "version": "v2", "fetched_at": 1699999970, "age_secs": 30, "error": null},
        {"name": "production/sealer/key", "version": "v1", "fetched_at": 1699992800, "age_secs": 7200, "error": "bad key"}
      ],
      "logs": {
        "summary": "CloudWatch failing for 31s (ThrottlingException), lag 2.0 KiB, 3 lines not written (disk), 2 events rejected by CloudWatch, 4.0 KiB rotated away unshipped, error: PutRetentionPolicy denied",
        "degraded": true, "errors": ["PutRetentionPolicy denied"], "lag_bytes": 2048,
        "streams": [
          {"child": "geth", "file": "/var/log/node-agent/geth.log", "group": "/node-agent/production",
            "stream": "sealer/i-0abc/geth", "shipping": true, "last_success_ms": 1699999998000, "lag_bytes": 2048,
            "events_sent": 10, "batches_sent": 2, "retries": 1, "rejected_too_old": 1, "rejected_too_new": 0,
            "rejected_expired": 0, "rejected_invalid": 1, "last_rejected": "too old", "last_error": "ThrottlingException",
            "setup_error": "PutRetentionPolicy denied", "failing_since_ms": 1699999969000, "unwritten_lines": 3,
            "lost_bytes": 4096},
          {"child": "node-agent", "file": "/var/log/node-agent/node-agent.log", "group": "/node-agent/production",
            "stream": "sealer/i-0abc/node-agent", "shipping": true, "last_success_ms": 1699999999000, "lag_bytes": 0,
            "events_sent": 0, "batches_sent": 0, "retries": 0, "rejected_too_old": 0, "rejected_too_new": 0,
            "rejected_expired": 0, "rejected_invalid": 0, "last_rejected": null, "last_error": null,
            "setup_error": null, "failing_since_ms": null, "unwritten_lines": 0, "lost_bytes": 0}
        ]
      },
      "services": {
        "secrets_manager": {"ok": false, "ok_at": 1699999900, "ok_age_secs": 100, "failing_since": 1699999960,
          "failing_secs": 40, "error": "timeout"},
        "imds": {"ok": true, "ok_at": 1699999995, "ok_age_secs": 5, "failing_since": null, "failing_secs": null,
          "error": null}
      },
      "endpoint": {"listen": "0.0.0.0:8080", "ready": false, "ready_reason": "syncing: head #120, peers at #130",
        "live": true, "live_reason": null}
    }"#;

    /// A local rpc node with its storage check failed and nothing optional (taken as [`FULL`] was).
    pub const SPARSE: &str = r#"{
      "schema": 1, "overall": "down",
      "agent": {"version": "0.1.0", "pid": 7, "started_at": 1699999995, "uptime_secs": 5, "user": "alice"},
      "host": {"role": "rpc", "environment": "dev", "instance_id": "i-local", "region": "local",
        "availability_zone": "local"},
      "pinned": {"geth": "1.13.15"},
      "children": [
        {"name": "geth", "state": "starting", "pid": null, "started_at": null, "restarts": 0, "unhealthy_restarts": 0,
          "last_exit": null, "reason": null, "chain": null, "ever_ready": false, "uptime_secs": null, "user": "alice",
          "ethstats": null}
      ],
      "bootnode_enode": null,
      "storage": {"kind": "local", "source": "/tmp/data", "datadir": "/tmp/data", "free_bytes": null,
        "check_ok": false, "check_error": "sentinel missing"},
      "secrets": [],
      "logs": {"summary": "files only (not shipped)", "degraded": false, "errors": [], "lag_bytes": 0,
        "streams": [
          {"child": "", "file": "", "group": "", "stream": "", "shipping": false, "last_success_ms": null, "lag_bytes": 0,
            "events_sent": 0, "batches_sent": 0, "retries": 0, "rejected_too_old": 0, "rejected_too_new": 0,
            "rejected_expired": 0, "rejected_invalid": 0, "last_rejected": null, "last_error": null,
            "setup_error": null, "failing_since_ms": null, "unwritten_lines": 0, "lost_bytes": 0}
        ]},
      "services": {"secrets_manager": null, "imds": null},
      "endpoint": {"listen": null, "ready": false, "ready_reason": "geth is starting", "live": true,
        "live_reason": null}
    }"#;

    /// `text` as the agent sends it: compact, in the order written.
    pub fn wire(text: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(text).expect("a JSON literal");
        serde_json::to_string(&v).unwrap()
    }

    pub fn parse(text: &str) -> Document {
        serde_json::from_str(text).expect("a status document")
    }

    #[test]
    fn the_document_reads_and_writes_the_wire_format_unchanged() {
        for text in [FULL, SPARSE] {
            let doc = parse(text);
            let sent = serde_json::to_string(&doc).unwrap();
            assert_eq!(sent, wire(text));
            assert_eq!(
                parse(&sent),
                doc,
                "serialize → deserialize is the same document"
            );
        }
    }

    #[test]
    fn the_parts_added_within_schema_1_may_be_absent() {
        let mut v: serde_json::Value = serde_json::from_str(SPARSE).unwrap();
        let o = v.as_object_mut().unwrap();
        for part in ["bootnode_enode", "secrets", "logs", "services"] {
            o.remove(part);
        }
        o["storage"].as_object_mut().unwrap().remove("check_error");
        o["children"][0]
            .as_object_mut()
            .unwrap()
            .remove("started_at");
        o.insert("from_a_newer_agent".into(), serde_json::json!({"x": 1}));
        let doc: Document = serde_json::from_value(v).expect("lenient");
        assert_eq!(
            (doc.logs, doc.services, doc.secrets.len()),
            (None, ServicesPart::default(), 0)
        );
        assert_eq!(doc.storage.check_error, None);
    }

    #[test]
    fn names_match_the_wire() {
        for s in [
            State::Starting,
            State::Ready,
            State::Unhealthy,
            State::BackingOff,
            State::CrashLoop,
            State::Stopping,
            State::Stopped,
            State::Fenced,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for o in [Overall::Healthy, Overall::Degraded, Overall::Down] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
    }

    fn child(state: State, reason: Option<&str>) -> ChildStatus {
        let mut c = ChildStatus::new_for("geth");
        c.life.state = state;
        c.life.reason = reason.map(str::to_owned);
        c
    }

    #[test]
    fn overall_follows_the_children_and_shipping() {
        assert_eq!(
            overall(&[child(State::Ready, None)], true, false),
            Overall::Healthy
        );
        assert_eq!(
            overall(&[child(State::Ready, None)], true, true),
            Overall::Degraded
        );
        assert_eq!(
            overall(
                &[child(State::Ready, Some("warming up: no peers"))],
                true,
                false
            ),
            Overall::Degraded
        );
        assert_eq!(
            overall(
                &[child(State::Unhealthy, Some("head stalled"))],
                true,
                false
            ),
            Overall::Degraded
        );
        for down in [
            State::CrashLoop,
            State::BackingOff,
            State::Starting,
            State::Stopped,
        ] {
            assert_eq!(
                overall(&[child(down, None)], true, false),
                Overall::Down,
                "{down:?}"
            );
        }
        assert_eq!(
            [Overall::Healthy, Overall::Degraded, Overall::Down].map(Overall::exit_code),
            [0, 1, 2]
        );
    }
}

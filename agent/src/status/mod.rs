//! `node-agent status`: the running agent answers on a local Unix socket (read-only: one request word,
//! one JSON document back); the command renders it for humans or prints the JSON, and maps it to an exit
//! code for scripts and load-balancer checks.

pub mod model;

use model::{ChildStatus, State};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// The JSON document's schema version; bumped only on incompatible changes.
pub const SCHEMA: u32 = 1;
/// The only request the socket understands.
pub const REQUEST: &str = "status";
/// The socket's file name in the runtime directory.
pub const SOCKET: &str = "status.sock";

/// Overall verdict, also the exit code of `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
}

/// Exit code when no agent answers.
pub const EXIT_NOT_RUNNING: u8 = 3;

/// One secret as status shows it: never the value.
#[derive(Debug, Clone, Serialize)]
pub struct SecretInfo {
    pub name: String,
    pub version: String,
    /// Unix time the version in use was fetched.
    pub fetched_at: u64,
    /// The last rotation problem, if the newest version was refused.
    pub error: Option<String>,
}

/// A service the agent keeps asking while it runs (Secrets Manager for rotation, IMDS for the identity):
/// when it last answered, and since when it has not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reach {
    /// Unix time of the last successful check.
    pub ok_at: Option<u64>,
    /// Unix time of the first failed check since the last success.
    pub failing_since: Option<u64>,
    pub error: Option<String>,
}

impl Reach {
    /// Records a success; returns how long the outage it ends lasted, if there was one.
    pub fn succeeded(&mut self, now: u64) -> Option<u64> {
        self.ok_at = Some(now);
        self.error = None;
        self.failing_since
            .take()
            .map(|since| now.saturating_sub(since))
    }

    pub fn failed(&mut self, now: u64, error: String) {
        self.failing_since.get_or_insert(now);
        self.error = Some(error);
    }

    pub fn failing(&self) -> bool {
        self.failing_since.is_some()
    }
}

/// The services the agent keeps asking; `None` where it does not (local mode, no secrets).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Services {
    pub secrets_manager: Option<Reach>,
    pub imds: Option<Reach>,
}

impl Services {
    pub fn failing(&self) -> bool {
        [&self.secrets_manager, &self.imds]
            .iter()
            .any(|r| r.as_ref().is_some_and(Reach::failing))
    }
}

/// What does not change while the agent runs.
#[derive(Debug, Clone, Serialize)]
pub struct Static {
    pub agent_version: String,
    pub pid: u32,
    pub started_at: u64,
    pub role: String,
    pub environment: String,
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
    pub geth_pinned: String,
    pub user: String,
    pub storage: Value,
    pub datadir: PathBuf,
    /// For the bootnode: its enode URL, derived from its key.
    pub enode: Option<String>,
}

/// Where the server reads the live parts.
#[derive(Clone)]
pub struct Sources {
    pub fixed: std::sync::Arc<Static>,
    pub children: Vec<watch::Receiver<ChildStatus>>,
    pub secrets: watch::Receiver<Vec<SecretInfo>>,
    /// Log shipping state, as its module publishes it (JSON, so status needs no knowledge of it).
    pub logs: watch::Receiver<Value>,
    pub services: watch::Receiver<Services>,
    /// The storage, as the last probe found it (`watch_storage`): status never touches it itself.
    pub storage: watch::Receiver<StorageProbe>,
}

/// What the last probe of the role's storage found.
#[derive(Debug, Clone)]
pub struct StorageProbe {
    /// Mounted as expected with its sentinel; `Err` says what is wrong (or that it does not answer).
    pub check: Result<(), String>,
    pub free_bytes: Option<u64>,
}

impl Default for StorageProbe {
    /// Before the first probe: the boot has just verified it.
    fn default() -> Self {
        StorageProbe {
            check: Ok(()),
            free_bytes: None,
        }
    }
}

/// Judges the children, the storage, and the services around them (log shipping, Secrets Manager, IMDS:
/// `services_degraded` when one of them is failing). Pure.
pub fn overall(children: &[ChildStatus], storage_ok: bool, services_degraded: bool) -> Overall {
    let serving = |c: &ChildStatus| matches!(c.state, State::Ready) && c.reason.is_none();
    // Storage gone from under a running geth is as bad as no geth: it may be writing to the local disk.
    if !storage_ok
        || children
            .iter()
            .all(|c| !matches!(c.state, State::Ready | State::Unhealthy))
    {
        return Overall::Down;
    }
    if children.iter().all(serving) && !services_degraded {
        Overall::Healthy
    } else {
        Overall::Degraded
    }
}

/// Builds the document from the sources.
pub fn document(src: &Sources) -> Value {
    let children: Vec<ChildStatus> = src.children.iter().map(|c| c.borrow().clone()).collect();
    let logs = src.logs.borrow().clone();
    let logs_degraded = logs
        .get("degraded")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let now = crate::clock::now_unix();
    let fixed = &src.fixed;
    let probe = src.storage.borrow().clone();
    let mut storage = fixed.storage.clone();
    storage["free_bytes"] = probe.free_bytes.map(Value::from).unwrap_or(Value::Null);
    let check = probe.check;
    storage["check_ok"] = Value::from(check.is_ok());
    storage["check_error"] = check
        .as_ref()
        .err()
        .map(|e| Value::from(e.as_str()))
        .unwrap_or(Value::Null);
    let services = src.services.borrow().clone();
    let secrets: Vec<Value> = src
        .secrets
        .borrow()
        .iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name, "version": s.version, "fetched_at": s.fetched_at,
                "age_secs": now.saturating_sub(s.fetched_at), "error": s.error,
            })
        })
        .collect();
    let children_json: Vec<Value> = children
        .iter()
        .map(|c| {
            let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
            v["uptime_secs"] = c
                .started_at
                .filter(|_| c.pid.is_some())
                .map(|t| Value::from(now.saturating_sub(t)))
                .unwrap_or(Value::Null);
            v["user"] = Value::from(fixed.user.clone());
            v
        })
        .collect();
    serde_json::json!({
        "schema": SCHEMA,
        "overall": overall(&children, check.is_ok(), logs_degraded || services.failing()),
        "agent": {
            "version": fixed.agent_version, "pid": fixed.pid, "started_at": fixed.started_at,
            "uptime_secs": now.saturating_sub(fixed.started_at), "user": fixed.user,
        },
        "host": {
            "role": fixed.role, "environment": fixed.environment, "instance_id": fixed.instance_id,
            "region": fixed.region, "availability_zone": fixed.availability_zone,
        },
        "pinned": {"geth": fixed.geth_pinned},
        "children": children_json,
        "bootnode_enode": fixed.enode,
        "storage": storage,
        "secrets": secrets,
        "logs": logs,
        "services": services_json(&services, now),
    })
}

fn services_json(services: &Services, now: u64) -> Value {
    let one = |r: &Option<Reach>| match r {
        None => Value::Null,
        Some(r) => serde_json::json!({
            "ok": !r.failing(),
            "ok_at": r.ok_at,
            "ok_age_secs": r.ok_at.map(|t| now.saturating_sub(t)),
            "failing_since": r.failing_since,
            "failing_secs": r.failing_since.map(|t| now.saturating_sub(t)),
            "error": r.error,
        }),
    };
    serde_json::json!({
        "secrets_manager": one(&services.secrets_manager),
        "imds": one(&services.imds),
    })
}

/// Serves the socket until the task is dropped. Each connection: one request line (at most 64 bytes,
/// 2 s), one JSON answer (2 s to take it), close. Nothing a client sends changes anything. At most 64
/// connections are served at once; more clients wait in the socket's listen queue, which holds no
/// descriptor or memory of the agent, so a flood of clients cannot exhaust either, and an idle client
/// holds its place for 2 s at most.
pub async fn serve(listener: tokio::net::UnixListener, src: Sources) {
    const MAX_CONNECTIONS: usize = 64;
    const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // A free slot first, then accept: waiting clients stay in the kernel's queue.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let src = src.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, 64));
            let got = tokio::time::timeout(CLIENT_TIMEOUT, reader.read_line(&mut line)).await;
            let answer = match got {
                Ok(Ok(_)) if line.trim() == REQUEST => document(&src),
                _ => {
                    serde_json::json!({"error": format!("unknown request; send \"{REQUEST}\\n\"")})
                }
            };
            let mut bytes = serde_json::to_vec(&answer).unwrap_or_default();
            bytes.push(b'\n');
            // A client that does not read must not keep its slot either.
            let _ = tokio::time::timeout(CLIENT_TIMEOUT, async {
                write.write_all(&bytes).await?;
                write.shutdown().await
            })
            .await;
            drop(slot);
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("node-agent is not running (no answer on {path}: {source})")]
    NotRunning {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("node-agent on {path} answered with something that is not a status document: {what}")]
    BadAnswer { path: PathBuf, what: String },
}

/// Asks the agent for its status document.
pub async fn query(path: &Path) -> Result<Value, StatusError> {
    let not_running = |source| StatusError::NotRunning {
        path: path.to_owned(),
        source,
    };
    let ask = async {
        let mut s = tokio::net::UnixStream::connect(path)
            .await
            .map_err(not_running)?;
        s.write_all(format!("{REQUEST}\n").as_bytes())
            .await
            .map_err(not_running)?;
        let mut buf = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(
            &mut tokio::io::AsyncReadExt::take(s, 4 << 20),
            &mut buf,
        )
        .await
        .map_err(not_running)?;
        Ok::<_, StatusError>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .map_err(|_| {
            not_running(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer within 5 s",
            ))
        })??;
    let doc: Value = serde_json::from_slice(&buf).map_err(|e| StatusError::BadAnswer {
        path: path.to_owned(),
        what: e.to_string(),
    })?;
    if doc.get("schema").and_then(Value::as_u64) != Some(SCHEMA as u64) {
        return Err(StatusError::BadAnswer {
            path: path.to_owned(),
            what: "missing or unknown schema version".into(),
        });
    }
    Ok(doc)
}

fn ago(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `12.0 MiB`, `2.0 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The compact human layout. Pure.
pub fn render(doc: &Value) -> String {
    use std::fmt::Write;
    let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let mut out = String::new();
    let h = &doc["host"];
    let a = &doc["agent"];
    // Only geth roles run the pinned geth; the bootnode and ethstats hosts do not.
    let pinned = match h["role"].as_str() {
        Some("bootnode" | "ethstats") => String::new(),
        _ => format!(", geth pinned {}", s(&doc["pinned"]["geth"])),
    };
    let _ = writeln!(
        out,
        "{} — {} {} on {} (agent {} up {}{pinned})",
        s(&doc["overall"]).to_uppercase(),
        s(&h["environment"]),
        s(&h["role"]),
        s(&h["instance_id"]),
        s(&a["version"]),
        ago(n(&a["uptime_secs"])),
    );
    for c in doc["children"].as_array().into_iter().flatten() {
        let pid = c["pid"]
            .as_u64()
            .map(|p| format!("pid {p}"))
            .unwrap_or_else(|| "no process".into());
        let up = c["uptime_secs"]
            .as_u64()
            .map(|u| format!(", up {}", ago(u)))
            .unwrap_or_default();
        let _ = write!(
            out,
            "  {:<9} {:<11} {pid}, user {}{up}, restarts {} (+{} unhealthy)",
            s(&c["name"]),
            s(&c["state"]),
            s(&c["user"]),
            n(&c["restarts"]),
            n(&c["unhealthy_restarts"]),
        );
        if let Some(e) = c["last_exit"].as_str() {
            let _ = write!(out, ", last {e}");
        }
        out.push('\n');
        if let Some(r) = c["reason"].as_str() {
            let _ = writeln!(out, "            why: {r}");
        }
        let chain = &c["chain"];
        if chain.is_object() {
            // The genesis' timestamp is when the chain was designed (often 0), not an age worth showing.
            let age = match n(&chain["head"]) {
                0 => "(no block yet)".to_owned(),
                _ => format!("{} old", ago(n(&chain["head_age_secs"]))),
            };
            let mut line = format!(
                "            chain: head #{} {age}, {} peers{}",
                n(&chain["head"]),
                n(&chain["peers"]),
                if chain["syncing"].as_bool() == Some(true) {
                    ", syncing"
                } else {
                    ""
                }
            );
            match chain["authorised"].as_bool() {
                Some(true) => line.push_str(", authorised signer"),
                Some(false) => line.push_str(", NOT an authorised signer"),
                None => {}
            }
            match chain["mining"].as_bool() {
                Some(true) => line.push_str(", sealing"),
                Some(false) => line.push_str(", NOT sealing"),
                None => {}
            }
            let _ = writeln!(out, "{line}");
        }
    }
    if let Some(e) = doc["bootnode_enode"].as_str() {
        let _ = writeln!(out, "  enode     {e}");
    }
    let st = &doc["storage"];
    let check = match (st["check_ok"].as_bool(), st["check_error"].as_str()) {
        (Some(true), _) if st["kind"] == "local" => "sentinel ok".to_owned(),
        (Some(true), _) => "mounted, sentinel ok".to_owned(),
        (_, Some(e)) => format!("CHECK FAILED: {e}"),
        _ => "not checked".to_owned(),
    };
    let free = st["free_bytes"]
        .as_u64()
        .map(bytes)
        .unwrap_or_else(|| "?".into());
    let source = st["source"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| s(&st["kind"]));
    let _ = writeln!(
        out,
        "  storage   {source} at {}, {check}, {free} free",
        s(&st["datadir"])
    );
    for sec in doc["secrets"].as_array().into_iter().flatten() {
        let err = sec["error"]
            .as_str()
            .map(|e| format!(" — newest version refused: {e}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  secret    {} version {} fetched {} ago{err}",
            s(&sec["name"]),
            s(&sec["version"]),
            ago(n(&sec["age_secs"]))
        );
    }
    for (label, key, what) in [
        ("rotation", "secrets_manager", "Secrets Manager"),
        ("imds", "imds", "instance metadata"),
    ] {
        let r = &doc["services"][key];
        if !r.is_object() {
            continue;
        }
        let state = match (r["ok"].as_bool(), r["ok_age_secs"].as_u64()) {
            (Some(false), _) => format!(
                "{what} FAILING for {}: {}",
                ago(n(&r["failing_secs"])),
                s(&r["error"])
            ),
            (_, Some(age)) => format!("{what} answered {} ago", ago(age)),
            _ => format!("{what} not asked yet"),
        };
        let _ = writeln!(out, "  {label:<9} {state}");
    }
    let logs = &doc["logs"];
    if let Some(summary) = logs.get("summary").and_then(Value::as_str) {
        let _ = writeln!(out, "  logs      {summary}");
    } else {
        let _ = writeln!(
            out,
            "  logs      {}",
            if logs.is_null() {
                "-".into()
            } else {
                logs.to_string()
            }
        );
    }
    out
}

/// What `status` can say when the agent does not answer.
pub fn offline_report(agent_log: &Path) -> String {
    let mut out = String::new();
    if let Ok(o) = std::process::Command::new("systemctl")
        .args([
            "show",
            "node-agent.service",
            "--property=ActiveState,SubState,Result,ExecMainStatus",
        ])
        .output()
    {
        let text = String::from_utf8_lossy(&o.stdout);
        let line: Vec<&str> = text.lines().collect();
        if o.status.success() && !line.is_empty() {
            out.push_str(&format!(
                "  unit      node-agent.service {}\n",
                line.join(" ")
            ));
        }
    }
    // Read as root, from a directory the service user writes: never through a link, never a FIFO or a
    // device, and only the end of it.
    match crate::sys::safefs::read_file(agent_log, OFFLINE_TAIL, crate::sys::safefs::Part::Tail) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("  last lines of {}:\n", agent_log.display()));
            for l in &lines[lines.len().saturating_sub(10)..] {
                out.push_str(&format!("    {l}\n"));
            }
        }
        Err(e) if e.is_not_found() => {
            out.push_str(&format!("  no agent log at {}\n", agent_log.display()))
        }
        Err(e) => out.push_str(&format!("  cannot show the agent log: {e}\n")),
    }
    out
}

/// How much of the agent's log the offline report reads (its last lines are in there).
const OFFLINE_TAIL: usize = 64 * 1024;

/// `text` safe for a terminal: control characters (escape sequences among them) from the socket or a log
/// file become `?`; line breaks stay.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\n' { '?' } else { c })
        .collect()
}

/// The name of the record a running agent leaves for `status` (see [`record_socket`]).
const RECORD: &str = "status-socket";

/// The invoking user's private directory for the record: `$XDG_RUNTIME_DIR/node-agent`, else
/// `/run/user/UID/node-agent`, else `/tmp/node-agent-UID`.
fn record_dir() -> PathBuf {
    let uid = nix::unistd::geteuid().as_raw();
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(d) if d.is_absolute() => d.join("node-agent"),
        _ => {
            let run_user = PathBuf::from(format!("/run/user/{uid}"));
            if run_user.is_dir() {
                run_user.join("node-agent")
            } else {
                PathBuf::from(format!("/tmp/node-agent-{uid}"))
            }
        }
    }
}

/// The record directory, opened without following links, and only when it is this user's own and
/// nobody else's to write (a `/tmp/node-agent-0` made by someone else is ignored, not trusted).
fn own_record_dir(create: bool) -> Option<crate::sys::safefs::Dir> {
    let path = record_dir();
    let dir = if create {
        crate::sys::safefs::Dir::create_all(&path, 0o700)
    } else {
        crate::sys::safefs::Dir::open(&path)
    }
    .ok()?;
    let st = dir.stat().ok()?;
    (st.st_uid == nix::unistd::geteuid().as_raw() && st.st_mode & 0o077 == 0).then_some(dir)
}

/// Records where this agent's status socket is, so that `status` run by the same user without `--config`
/// finds an agent started with one (the local quick start). Best effort: status also tries the default
/// config's socket, and never trusts the record without the socket answering.
pub fn record_socket(socket: &Path) {
    let Ok(socket) = std::path::absolute(socket) else {
        return;
    };
    let written = own_record_dir(true).map(|dir| {
        let mut text = socket.into_os_string().into_encoded_bytes();
        text.push(b'\n');
        dir.write_file(std::ffi::OsStr::new(RECORD), &text, 0o600, None)
    });
    if !matches!(written, Some(Ok(()))) {
        tracing::debug!(dir = %record_dir().display(), "cannot record the status socket for `node-agent status`");
    }
}

/// The socket the last agent this user started recorded, if any.
fn recorded_socket() -> Option<PathBuf> {
    let dir = own_record_dir(false)?;
    let bytes = dir
        .read_file(
            std::ffi::OsStr::new(RECORD),
            4096,
            crate::sys::safefs::Part::Head,
        )
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let path = PathBuf::from(text.trim_end_matches('\n'));
    path.is_absolute().then_some(path)
}

/// `node-agent status`; returns the exit code.
pub async fn command(args: &crate::cli::StatusArgs) -> u8 {
    let config_path = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_PATH));
    // The socket and log locations come from the config when it is readable; status works without it.
    let file = crate::config::ConfigFile::load(Some(&config_path))
        .map(|(f, _)| f)
        .unwrap_or_default();
    let mut socket = args
        .socket
        .clone()
        .unwrap_or_else(|| file.storage.runtime_dir.join(SOCKET));
    let agent_log = file.logs.dir.join("node-agent.log");
    let guessing = args.socket.is_none() && args.config.is_none();
    if guessing && query(&socket).await.is_err() {
        // Not the host's agent: the one this user started last, with its own --config, if it answers.
        if let Some(recorded) = recorded_socket().filter(|r| *r != socket) {
            if query(&recorded).await.is_ok() {
                socket = recorded;
            }
        }
    }
    loop {
        let (code, text) = match query(&socket).await {
            Ok(doc) => {
                let code = doc["overall"]
                    .as_str()
                    .map(|o| match o {
                        "healthy" => Overall::Healthy,
                        "degraded" => Overall::Degraded,
                        _ => Overall::Down,
                    })
                    .unwrap_or(Overall::Down)
                    .exit_code();
                let text = if args.json {
                    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
                } else {
                    printable(&render(&doc))
                };
                (code, text)
            }
            Err(e) => {
                let text = if args.json {
                    let doc = serde_json::json!({"schema": SCHEMA, "overall": "not_running", "error": e.to_string()});
                    format!("{doc}\n")
                } else {
                    let hint = if guessing {
                        "  started with --config? pass the same --config to status (or --socket PATH)\n"
                    } else {
                        ""
                    };
                    printable(&format!(
                        "NOT RUNNING — {e}\n{hint}{}",
                        offline_report(&agent_log)
                    ))
                };
                (EXIT_NOT_RUNNING, text)
            }
        };
        let clear = if args.watch { "\x1b[H\x1b[2J" } else { "" };
        // The reader went away (`status | head`): done, quietly, with the verdict as the exit code.
        match crate::out::print(format!("{clear}{text}")) {
            Ok(true) => {}
            Ok(false) => return code,
            Err(e) => {
                eprintln!("node-agent: error: {e}");
                return code;
            }
        }
        if !args.watch {
            return code;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(args.interval.max(1))) => {}
            _ = tokio::signal::ctrl_c() => return code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(state: State, reason: Option<&str>) -> ChildStatus {
        let mut c = ChildStatus::new_for("geth");
        c.state = state;
        c.reason = reason.map(str::to_owned);
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

    #[test]
    fn render_shows_state_chain_and_secrets_without_values() {
        let doc = serde_json::json!({
            "schema": 1, "overall": "healthy",
            "agent": {"version": "0.1.0", "uptime_secs": 4000},
            "host": {"role": "sealer", "environment": "production", "instance_id": "i-1"},
            "pinned": {"geth": "1.13.15"},
            "children": [{"name": "geth", "state": "ready", "pid": 42, "user": "geth", "uptime_secs": 61,
                "restarts": 1, "unhealthy_restarts": 0, "last_exit": "exited with code 1",
                "chain": {"head": 120, "head_age_secs": 3, "peers": 0, "syncing": false, "authorised": true, "mining": true}}],
            "storage": {"kind": "efs", "source": "fs-1:/production/sealer", "datadir": "/var/lib/node-agent/data",
                "check_ok": true, "free_bytes": 8_000_000_000u64},
            "secrets": [{"name": "production/sealer/password", "version": "v2", "age_secs": 30}],
            "logs": {"summary": "last shipped 2s ago, lag 0 B"},
        });
        let text = render(&doc);
        assert!(
            text.starts_with("HEALTHY — production sealer on i-1 (agent 0.1.0 up 66m"),
            "{text}"
        );
        assert!(text.contains("geth      ready       pid 42, user geth, up 61s, restarts 1 (+0 unhealthy), last exited with code 1"), "{text}");
        assert!(
            text.contains("chain: head #120 3s old, 0 peers, authorised signer, sealing"),
            "{text}"
        );
        assert!(text.contains("storage   fs-1:/production/sealer at /var/lib/node-agent/data, mounted, sentinel ok, 7.5 GiB free"), "{text}");
        assert!(
            text.contains("secret    production/sealer/password version v2 fetched 30s ago"),
            "{text}"
        );
    }

    #[test]
    fn render_says_no_block_yet_at_the_genesis_and_names_geth_only_for_geth_roles() {
        let doc = |role: &str, head: u64| {
            serde_json::json!({
                "overall": "degraded", "host": {"role": role}, "pinned": {"geth": "1.13.15"},
                "children": [{"name": "geth", "state": "ready",
                    "chain": {"head": head, "head_age_secs": 1_796_058_877u64, "peers": 0}}],
            })
        };
        let text = render(&doc("sealer", 0));
        assert!(
            text.contains("chain: head #0 (no block yet), 0 peers"),
            "{text}"
        );
        assert!(!text.contains("d old"), "{text}");
        assert!(text.contains(", geth pinned 1.13.15)"), "{text}");
        assert!(render(&doc("rpc", 7)).contains("chain: head #7 20787d old"));
        for role in ["bootnode", "ethstats"] {
            let text = render(&doc(role, 0));
            assert!(!text.contains("geth pinned"), "{role}: {text}");
        }
    }

    #[test]
    fn a_failing_service_degrades_until_it_answers_again() {
        let mut services = Services {
            secrets_manager: Some(Reach::default()),
            imds: None,
        };
        assert!(!services.failing());
        let sm = services.secrets_manager.as_mut().unwrap();
        assert_eq!(sm.succeeded(100), None);
        sm.failed(160, "dispatch failure".into());
        sm.failed(220, "timeout".into());
        assert_eq!(
            (sm.ok_at, sm.failing_since, sm.error.as_deref()),
            (Some(100), Some(160), Some("timeout")),
            "the outage began at the first failure; the error is the latest"
        );
        assert!(services.failing());
        let doc = serde_json::json!({"services": services_json(&services, 250)});
        assert_eq!(doc["services"]["secrets_manager"]["failing_secs"], 90);
        assert_eq!(doc["services"]["imds"], Value::Null);
        let text = render(&doc);
        assert!(
            text.contains("  rotation  Secrets Manager FAILING for 90s: timeout\n"),
            "{text}"
        );
        assert!(!text.contains("imds"), "{text}");

        assert_eq!(
            services.secrets_manager.as_mut().unwrap().succeeded(260),
            Some(100),
            "the outage lasted from the first failure to the success"
        );
        assert!(!services.failing());
        services.imds = Some(Reach::default());
        let text = render(&serde_json::json!({"services": services_json(&services, 262)}));
        assert!(
            text.contains("  rotation  Secrets Manager answered 2s ago\n")
                && text.contains("  imds      instance metadata not asked yet\n"),
            "{text}"
        );
    }

    #[test]
    fn text_for_a_terminal_carries_no_control_characters() {
        let doc = serde_json::json!({"overall": "healthy", "host": {"role": "rpc\u{1b}[2J", "environment": "a\u{9b}b\r"}});
        let text = printable(&render(&doc));
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(
            text.contains("a?b?") && text.contains("rpc?[2J"),
            "{text:?}"
        );
    }

    #[test]
    fn render_survives_an_empty_document() {
        let text = render(&serde_json::json!({}));
        assert!(text.starts_with("- — "), "{text}");
    }

    proptest::proptest! {
        #[test]
        fn render_never_panics_on_any_json(s in "\\PC{0,300}") {
            if let Ok(v) = serde_json::from_str::<Value>(&s) {
                let _ = render(&v);
            }
        }
    }
}

//! The `status` command's side: ask the agent on its socket, find the socket, say what can be said when
//! nothing answers.

use super::model::Document;
use super::render::{printable, render};
use super::{EXIT_NOT_RUNNING, REQUEST, SCHEMA, SOCKET};
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

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

/// The agent's answer: the document, and its JSON as sent (what `--json` prints).
pub struct Answer {
    pub document: Document,
    pub json: Value,
}

/// Asks the agent for its status document.
pub async fn query(path: &Path) -> Result<Answer, StatusError> {
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
    answer(path, &buf)
}

/// What the agent on `path` answered, read. Pure.
fn answer(path: &Path, buf: &[u8]) -> Result<Answer, StatusError> {
    let bad = |what: String| StatusError::BadAnswer {
        path: path.to_owned(),
        what,
    };
    let json: Value = serde_json::from_slice(buf).map_err(|e| bad(e.to_string()))?;
    if json.get("schema").and_then(Value::as_u64) != Some(SCHEMA as u64) {
        return Err(bad("missing or unknown schema version".into()));
    }
    let document = Document::deserialize(&json).map_err(|e| bad(e.to_string()))?;
    Ok(Answer { document, json })
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

/// The name of the record a running agent leaves for `status` (see [`record_socket`]).
const RECORD: &str = "status-socket";

/// The invoking user's private directory for the record: `$XDG_RUNTIME_DIR/node-agent`, else
/// `/run/user/UID/node-agent`, else `/tmp/node-agent-UID`.
fn record_dir() -> PathBuf {
    let uid = crate::sys::effective_ids().0;
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
    (st.st_uid == crate::sys::effective_ids().0 && st.st_mode & 0o077 == 0).then_some(dir)
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
            Ok(answer) => {
                let code = answer.document.overall.exit_code();
                // As sent: what a newer agent of the same schema adds is printed too.
                let text = if args.json {
                    serde_json::to_string_pretty(&answer.json).unwrap_or_default() + "\n"
                } else {
                    printable(&render(&answer.document))
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
    use super::super::model::tests::{wire, FULL};
    use super::*;

    #[test]
    fn an_answer_is_a_document_of_this_schema() {
        let path = Path::new("/run/node-agent/status.sock");
        let sent = wire(FULL) + "\n";
        let got = answer(path, sent.as_bytes()).expect("the agent's document");
        assert_eq!(got.document.overall.exit_code(), 1);
        assert_eq!(serde_json::to_string(&got.json).unwrap() + "\n", sent);
        for (bad, what) in [
            (
                "{\"error\": \"unknown request\"}",
                "missing or unknown schema version",
            ),
            (
                "{\"schema\": 2, \"overall\": \"down\"}",
                "missing or unknown schema version",
            ),
            (
                "{\"schema\": 1, \"overall\": \"down\"}",
                "missing field `agent`",
            ),
            (
                "{\"schema\": 1, \"overall\": \"fine\"}",
                "unknown variant `fine`",
            ),
            ("not json", "expected ident"),
        ] {
            match answer(path, bad.as_bytes()) {
                Err(e @ StatusError::BadAnswer { .. }) => assert!(
                    e.to_string().starts_with(&format!(
                        "node-agent on {} answered with something that is not a status document: {what}",
                        path.display()
                    )),
                    "{bad}: {e}"
                ),
                other => panic!("{bad}: {:?}", other.map(|a| a.json)),
            }
        }
    }
}

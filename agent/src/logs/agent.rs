//! The agent's own log: `tracing` events teed into its log file (kept in memory until the file is
//! open), shipped like a child's.

use super::writer::Msg;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// The agent's own lines logged before its log file is open, kept for it.
const EARLY_LINES: usize = 10_000;

/// The agent's own log, teed from `tracing` into its log file (stderr gets it too, for journald).
struct AgentTee {
    sink: Option<mpsc::Sender<Msg>>,
    early: Vec<Vec<u8>>,
    dropped: u64,
}

static AGENT_TEE: Mutex<AgentTee> = Mutex::new(AgentTee {
    sink: None,
    early: Vec::new(),
    dropped: 0,
});

fn agent_tee() -> std::sync::MutexGuard<'static, AgentTee> {
    AGENT_TEE.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn attach_agent_log(tx: mpsc::Sender<Msg>) {
    let mut t = agent_tee();
    for line in std::mem::take(&mut t.early) {
        if tx.try_send(Msg::Line(line)).is_err() {
            t.dropped += 1;
        }
    }
    t.sink = Some(tx);
}

pub(super) fn detach_agent_log() {
    agent_tee().sink = None;
}

/// A `tracing_subscriber` writer that sends the agent's log lines to its log file. Never blocks: when the
/// file's queue is full the line only reaches stderr.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentLog;

/// One formatted event on its way to the agent's log file.
pub struct AgentLogLine(Vec<u8>);

impl std::io::Write for AgentLogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for AgentLogLine {
    fn drop(&mut self) {
        let mut t = agent_tee();
        for line in self.0.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let sent = match &t.sink {
                Some(tx) => tx.try_send(Msg::Line(line.to_vec())).is_ok(),
                None if t.early.len() < EARLY_LINES => {
                    t.early.push(line.to_vec());
                    true
                }
                None => false,
            };
            if !sent {
                t.dropped += 1;
            }
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for AgentLog {
    type Writer = AgentLogLine;

    fn make_writer(&'a self) -> AgentLogLine {
        AgentLogLine(Vec::new())
    }
}

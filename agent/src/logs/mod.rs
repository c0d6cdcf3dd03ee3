//! The log pipeline: every child's stdout and stderr, and the agent's own log, line by line into its own
//! file under the log directory (timestamped, rotated by size), and from those files to CloudWatch Logs.
//!
//! `pump` (one per output stream) → `LineSink` → writer thread (one per file: stamp, rotate, compress) →
//! file → shipper task (one per file: batch, PutLogEvents, checkpoint). The files are the buffer between
//! the two halves, so a slow or absent CloudWatch never slows a child down.

mod agent;
mod batch;
mod checkpoint;
mod report;
mod ship;
mod stamp;
mod writer;

use crate::config::LogsSettings;
use crate::plan::{LogTarget, Plan, METRICS};
use crate::status::LogsStatus;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, watch};

pub use agent::AgentLog;
use agent::{attach_agent_log, detach_agent_log};
use report::Target;
pub use report::{status, StatusSource};
pub use ship::StreamStatus;
use writer::Msg;
pub use writer::Rotation;

/// Longest line kept whole; longer ones are split into pieces of this size (each one CloudWatch event).
pub const MAX_LINE: usize = batch::MAX_MESSAGE_BYTES;
/// The agent's own log: its name in the log directory and in the stream template's `{child}`.
pub const AGENT: &str = "node-agent";
/// Lines queued per file before a child's output waits (then its pipe, then the child).
const QUEUE: usize = 4096;

#[derive(Debug, thiserror::Error)]
#[error("cannot open log file {path}: {source}")]
pub struct LogError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Where one child's lines go. Cheap to clone: one per output stream.
#[derive(Clone)]
pub struct LineSink {
    tx: mpsc::Sender<Msg>,
}

/// The length of `b` without an incomplete UTF-8 sequence at its end.
fn utf8_cut(b: &[u8]) -> usize {
    for back in 1..=b.len().min(4) {
        let c = b[b.len() - back];
        if c & 0xC0 == 0x80 {
            continue;
        }
        let needed = match c {
            0xF0..=0xF7 => 4,
            0xE0..=0xEF => 3,
            0xC0..=0xDF => 2,
            _ => 1,
        };
        return if needed > back {
            b.len() - back
        } else {
            b.len()
        };
    }
    b.len()
}

impl LineSink {
    /// One line (without its newline), waiting while the writer's queue is full.
    pub async fn line(&self, line: Vec<u8>) {
        let _ = self.tx.send(Msg::Line(line)).await;
    }

    /// Forwards every line of `reader` until EOF. Splits over-long lines (between characters when the
    /// text is UTF-8); keeps invalid UTF-8 as is.
    pub async fn pump(self, reader: impl AsyncRead + Unpin) {
        let mut reader = BufReader::with_capacity(64 * 1024, reader);
        let mut carry = Vec::new();
        // The last line sent was cut at the limit: a line end right after it ends that line, it does
        // not make an empty one.
        let mut cut = false;
        loop {
            let mut line = std::mem::take(&mut carry);
            let room = (MAX_LINE - line.len()) as u64;
            let n = match tokio::io::AsyncReadExt::take(&mut reader, room)
                .read_until(b'\n', &mut line)
                .await
            {
                Ok(n) => n,
                Err(_) => break,
            };
            if n == 0 {
                if !line.is_empty() {
                    let _ = self.tx.send(Msg::Line(line)).await;
                }
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if std::mem::take(&mut cut) && line.is_empty() {
                    continue;
                }
            } else if line.len() == MAX_LINE {
                let mut at = utf8_cut(&line);
                // A CR here may be half of a CRLF: it goes with the next piece, to be seen with its LF.
                if at == MAX_LINE && line[at - 1] == b'\r' {
                    at -= 1;
                }
                carry = line.split_off(at);
                cut = true;
            }
            if self.tx.send(Msg::Line(line)).await.is_err() {
                break;
            }
        }
    }
}

/// Opens (appending) one log file and starts its writer thread. The handle resolves when every sink is
/// gone and the last line is written.
fn open_file(
    path: &Path,
    rotation: Rotation,
    shipping: bool,
) -> Result<(LineSink, tokio::task::JoinHandle<()>, Arc<writer::Shared>), LogError> {
    let err = |source| LogError {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(err)?;
    }
    let shared = Arc::new(writer::Shared::default());
    shared.lock().shipping = shipping;
    let w = writer::Writer::open(path, rotation, shared.clone()).map_err(err)?;
    let (tx, rx) = mpsc::channel::<Msg>(QUEUE);
    shared.set_tick(tx.downgrade());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            w.run(rx);
            let _ = done_tx.send(());
        })
        .map_err(err)?;
    let handle = tokio::spawn(async move {
        let _ = done_rx.await;
    });
    Ok((LineSink { tx }, handle, shared))
}

/// The running log pipeline of the agent.
pub struct Logs {
    writers: Vec<tokio::task::JoinHandle<()>>,
    agent_writer: Option<tokio::task::JoinHandle<()>>,
    shippers: tokio::task::JoinSet<()>,
    stop: watch::Sender<bool>,
    stop_flush: Duration,
    status: StatusSource,
    publisher: Option<tokio::task::JoinHandle<()>>,
}

impl Logs {
    /// Opens every log file of the plan (children, the EMF events, the agent), routes the agent's own log
    /// into its file, and starts shipping when `logs.ship` is on. Returns one sink per child, in plan
    /// order, and the EMF events' sink when they are written.
    pub async fn start(
        settings: &LogsSettings,
        plan: &Plan,
    ) -> Result<(Logs, Vec<LineSink>, Option<LineSink>), LogError> {
        let rotation = Rotation {
            max_file_bytes: settings.max_file_bytes,
            keep_files: settings.keep_files,
            compress: settings.compress,
        };
        let targets: Vec<(&str, &LogTarget)> = plan
            .children
            .iter()
            .map(|c| (c.name.as_str(), &c.log))
            .chain(plan.metrics_log.iter().map(|(t, _)| (METRICS, t)))
            .chain(std::iter::once((AGENT, &plan.agent_log)))
            .collect();
        // Local mode without AWS_REGION has no CloudWatch to ship to.
        let ship = settings.ship && !(plan.local && plan.identity.region == "local");
        if settings.ship && !ship {
            tracing::info!("local mode without AWS_REGION: logs stay in files, not shipped");
        }
        let mut sinks = Vec::new();
        let mut writers = Vec::new();
        let mut shared_all = Vec::new();
        for (_, t) in &targets {
            let (sink, handle, shared) = open_file(&t.file, rotation.clone(), ship)?;
            sinks.push(sink);
            writers.push(handle);
            shared_all.push(shared);
        }
        let agent_sink = sinks.pop();
        let agent_writer = writers.pop();
        let metrics_sink = plan.metrics_log.as_ref().and_then(|_| sinks.pop());
        if let Some(s) = agent_sink {
            attach_agent_log(s.tx);
        }

        let (stop, stop_rx) = watch::channel(false);
        let mut shippers = tokio::task::JoinSet::new();
        let client = if ship {
            Some(ship::Client::new(&plan.identity.region).await)
        } else {
            None
        };
        let mut status = Vec::new();
        for ((name, t), shared) in targets.iter().zip(shared_all) {
            let st = Arc::new(Mutex::new(StreamStatus {
                child: name.to_string(),
                file: t.file.clone(),
                group: t.group.clone(),
                stream: t.stream.clone(),
                shipping: ship,
                ..StreamStatus::default()
            }));
            if let Some(client) = &client {
                let dir = t
                    .file
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(".checkpoints");
                std::fs::create_dir_all(&dir).map_err(|source| LogError {
                    path: dir.clone(),
                    source,
                })?;
                let name = t.file.file_name().map(|n| n.to_string_lossy().into_owned());
                let stream = ship::Stream {
                    client: client.clone(),
                    group: t.group.clone(),
                    stream: t.stream.clone(),
                    retention_days: settings.retention_days,
                    create_group: settings.create_group,
                    flush: settings.flush,
                    shared: shared.clone(),
                    checkpoint: dir.join(format!("{}.json", name.unwrap_or_default())),
                    status: st.clone(),
                };
                shippers.spawn(stream.run(stop_rx.clone()));
            }
            status.push(Target { status: st, shared });
        }
        if ship {
            tracing::info!(group = %plan.agent_log.group, streams = status.len(), "shipping logs to CloudWatch Logs");
        }
        Ok((
            Logs {
                writers,
                agent_writer,
                shippers,
                stop,
                stop_flush: settings.stop_flush,
                status: StatusSource(Arc::new(status)),
                publisher: None,
            },
            sinks,
            metrics_sink,
        ))
    }

    /// The shipping state as `node-agent status` shows it, refreshed every second.
    pub fn status(&mut self) -> watch::Receiver<LogsStatus> {
        let src = self.status.clone();
        let (tx, rx) = watch::channel(status(&src.snapshot(), stamp::now_ms()));
        self.publisher = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if tx.send(status(&src.snapshot(), stamp::now_ms())).is_err() {
                    return;
                }
            }
        }));
        rx
    }

    /// After the children stopped: writes their last lines, closes the agent's log file, and ships what
    /// is left for up to `logs.stop_flush_secs`. What does not make it stays in the files and is shipped
    /// from the checkpoint at the next start.
    pub async fn shutdown(mut self) {
        let grace = Duration::from_secs(5);
        for w in self.writers.drain(..) {
            if tokio::time::timeout(grace, w).await.is_err() {
                tracing::warn!("a log writer did not finish; some lines may be missing");
            }
        }
        detach_agent_log();
        if let Some(w) = self.agent_writer.take() {
            let _ = tokio::time::timeout(grace, w).await;
        }
        if let Some(p) = self.publisher.take() {
            p.abort();
        }
        let _ = self.stop.send(true);
        let all = async { while self.shippers.join_next().await.is_some() {} };
        if tokio::time::timeout(self.stop_flush, all).await.is_err() {
            self.shippers.abort_all();
            let lag: u64 = self.status.snapshot().iter().map(|s| s.lag_bytes).sum();
            tracing::warn!(lag_bytes = lag, "CloudWatch did not take every line before the stop deadline; the rest ships at the next start");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation() -> Rotation {
        Rotation {
            max_file_bytes: 1 << 30,
            keep_files: 2,
            compress: false,
        }
    }

    /// The lines of a log file without their timestamps.
    fn lines(path: &Path) -> Vec<Vec<u8>> {
        let text = std::fs::read(path).unwrap();
        text.split(|c| *c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                assert!(stamp::parse(l).is_some(), "{}", String::from_utf8_lossy(l));
                l[stamp::PREFIX_LEN..].to_vec()
            })
            .collect()
    }

    #[tokio::test]
    async fn lines_from_two_streams_arrive_whole_and_long_lines_are_split_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/geth.log");
        let (sink, task, _) = open_file(&path, rotation(), false).unwrap();
        let long = vec![b'x'; MAX_LINE + 10];
        let mut a = b"one\r\ntwo\n".to_vec();
        a.extend_from_slice(&long);
        a.push(b'\n');
        let b: &[u8] = b"\xff\xfeinvalid utf8\nlast without newline";
        sink.clone().pump(&a[..]).await;
        sink.pump(b).await;
        task.await.unwrap();
        let lines = lines(&path);
        assert_eq!(lines[0], b"one");
        assert_eq!(lines[1], b"two");
        assert_eq!(lines[2].len(), MAX_LINE);
        assert_eq!(lines[3].len(), 10);
        assert_eq!(lines[4], b"\xff\xfeinvalid utf8");
        assert_eq!(lines[5], b"last without newline");
    }

    #[tokio::test]
    async fn a_line_exactly_at_the_limit_leaves_no_empty_line_or_stray_cr_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("geth.log");
        let (sink, task, _) = open_file(&path, rotation(), false).unwrap();
        let mut text = vec![b'a'; MAX_LINE];
        text.push(b'\n');
        text.extend(vec![b'b'; MAX_LINE - 1]);
        text.extend(b"\r\nlast\n");
        sink.pump(&text[..]).await;
        task.await.unwrap();
        let lines = lines(&path);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], vec![b'a'; MAX_LINE]);
        assert_eq!(lines[1], vec![b'b'; MAX_LINE - 1]);
        assert_eq!(lines[2], b"last");
    }

    #[tokio::test]
    async fn a_long_line_is_never_cut_inside_a_character() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("geth.log");
        let (sink, task, _) = open_file(&path, rotation(), false).unwrap();
        // "é" is two bytes: MAX_LINE is even, so one byte of offset puts a character across the cut.
        let mut text = b"a".to_vec();
        text.extend("é".repeat(MAX_LINE).as_bytes());
        sink.pump(&text[..]).await;
        task.await.unwrap();
        let lines = lines(&path);
        assert!(lines.iter().all(|l| std::str::from_utf8(l).is_ok()));
        assert_eq!(lines.concat(), text);
    }

    /// A reader that hands out the given chunks one read at a time, as a pipe would.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some(mut chunk) = self.0.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.0.push_front(chunk.split_off(n));
                }
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Output as children write it: any bytes (NUL, CR, invalid UTF-8), runs around the line limit
    /// without a newline, multi-byte characters across it, every kind of line end.
    fn output() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let near = |n: usize| (n - 4..=n + 4).boxed();
        let segment = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            (
                proptest::sample::select(vec![b'x', 0, b'\r', 0xff, 0x80]),
                prop_oneof![near(MAX_LINE), near(2 * MAX_LINE), 0..10usize],
            )
                .prop_map(|(b, n)| vec![b; n]),
            (
                proptest::sample::select(vec!["é", "€", "😀"]),
                prop_oneof![near(MAX_LINE), 0..10usize],
                0..4usize,
            )
                .prop_map(|(c, n, skew)| {
                    let mut v = b"abc"[..skew.min(3)].to_vec();
                    v.extend(c.repeat(n / c.len()).as_bytes());
                    v
                }),
            proptest::sample::select(vec![&b"\n"[..], b"\r\n", b"\r", b"\n\n"])
                .prop_map(<[u8]>::to_vec),
        ];
        proptest::collection::vec(segment, 0..8).prop_map(|v| v.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(48))]
        #[test]
        fn any_output_ends_in_the_file_byte_for_byte_split_only_at_the_limit(
            output in output(),
            cuts in proptest::collection::vec(1..70_000usize, 1..40),
        ) {
            // The same bytes in pieces of arbitrary sizes.
            let mut chunks = std::collections::VecDeque::new();
            let mut rest = &output[..];
            for c in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (a, b) = rest.split_at((*c).min(rest.len()));
                chunks.push_back(a.to_vec());
                rest = b;
            }
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("geth.log");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (sink, task, _) = open_file(&path, rotation(), false).unwrap();
                sink.pump(Chunks(chunks)).await;
                task.await.unwrap();
            });
            let file = if path.exists() { lines(&path) } else { Vec::new() };
            // The child's lines: a newline ends one (with a CR before it), the end of output too.
            let mut want: Vec<&[u8]> = output.split(|b| *b == b'\n').collect();
            if want.last().is_some_and(|l| l.is_empty()) {
                want.pop();
            }
            let ended = want.len().saturating_sub(usize::from(!output.ends_with(b"\n")));
            for l in &mut want[..ended] {
                if let Some(s) = l.strip_suffix(b"\r") {
                    *l = s;
                }
            }
            // Each line is in the file whole, or in pieces where only the last is short.
            let mut got = file.iter();
            for (i, l) in want.iter().enumerate() {
                let mut joined = Vec::new();
                loop {
                    let piece = got.next();
                    proptest::prop_assert!(piece.is_some(), "line {} of {} missing", i, want.len());
                    let piece = piece.unwrap();
                    proptest::prop_assert!(piece.len() <= MAX_LINE);
                    joined.extend_from_slice(piece);
                    if joined.len() >= l.len() {
                        break;
                    }
                    proptest::prop_assert!(piece.len() + 4 > MAX_LINE, "line {} cut at {} bytes", i, piece.len());
                }
                proptest::prop_assert!(&joined[..] == *l, "line {} differs: {} vs {} bytes, file pieces {:?}", i, joined.len(), l.len(), file.iter().map(Vec::len).collect::<Vec<_>>());
            }
            proptest::prop_assert_eq!(got.count(), 0, "lines the child did not write");
        }
    }

    #[test]
    fn incomplete_utf8_sequences_at_the_end_are_found() {
        assert_eq!(utf8_cut(b"abc"), 3);
        assert_eq!(utf8_cut("aé".as_bytes()), 3);
        assert_eq!(utf8_cut(&"aé".as_bytes()[..2]), 1);
        assert_eq!(utf8_cut(&"a€".as_bytes()[..3]), 1);
        assert_eq!(utf8_cut(&"a😀".as_bytes()[..4]), 1);
        assert_eq!(utf8_cut(b"a\xff"), 2);
    }
}

//! Shipping one log file (and its rotated predecessors) to one CloudWatch Logs stream.
//!
//! The files are the buffer: the shipper reads them from its durable checkpoint, oldest file first,
//! following files by identity across rotation, and moves the checkpoint only after CloudWatch accepted a
//! batch. Every failure is retried with backoff, never dropped; while CloudWatch is unreachable the
//! files grow and shipping catches up afterwards.

use super::batch::{self, Batch, Batcher, Event};
use super::checkpoint::{self, fingerprint, Checkpoint, FileId, Pos};
use super::stamp;
use super::writer::{ChainFile, Shared};
use crate::error::error_chain;
use aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata;
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How much of a file is read at once.
const CHUNK: usize = 1 << 20;
/// Retry delays: doubling from the first to the cap, ±20% jitter.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

pub use crate::status::model::StreamStatus;

/// The CloudWatch Logs client. Retries are ours (counted, never giving up), so the SDK's are off.
#[derive(Clone, Debug)]
pub struct Client(aws_sdk_cloudwatchlogs::Client);

impl Client {
    pub async fn new(region: &str) -> Client {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_owned()))
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .build(),
            )
            .load()
            .await;
        Client(aws_sdk_cloudwatchlogs::Client::new(&conf))
    }
}

/// Exponential backoff with jitter; `reset` after a success.
#[derive(Debug)]
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        let base = crate::backoff::doubling(BACKOFF_FIRST, BACKOFF_CAP, self.0);
        self.0 = self.0.saturating_add(1);
        crate::backoff::jittered(base, rand::random::<f64>())
    }
}

/// Where the events of one file go, and how.
pub struct Stream {
    pub client: Client,
    pub group: String,
    pub stream: String,
    pub retention_days: u32,
    pub flush: Duration,
    pub shared: Arc<Shared>,
    pub checkpoint: PathBuf,
    pub status: Arc<Mutex<StreamStatus>>,
}

/// An open file being read.
struct Reader {
    id: FileId,
    file: Arc<std::fs::File>,
    /// `buf[..filled]`: bytes read but not yet turned into events; `buf[0]` is at file offset `start`.
    /// The rest is room for the next read (zeroed once, not at every read).
    buf: Vec<u8>,
    filled: usize,
    start: u64,
    last_ts: Option<i64>,
    /// Fingerprint of the file's first bytes when first read (see [`Reader::truncated`]).
    head: (u64, u64),
}

impl Reader {
    fn new(id: FileId, file: impl Into<Arc<std::fs::File>>, offset: u64) -> Reader {
        let file = file.into();
        let head = fingerprint(&file, checkpoint::HEAD).unwrap_or((0, 0));
        Reader {
            id,
            file,
            buf: Vec::new(),
            filled: 0,
            start: offset,
            last_ts: None,
            head,
        }
    }

    /// Whether another program truncated the file under us (copytruncate): it is shorter than what was
    /// read from it, or its first bytes are not the ones it began with (it was truncated and has grown
    /// again since, possibly past where we are).
    fn truncated(&mut self) -> bool {
        let Ok(meta) = self.file.metadata() else {
            return false;
        };
        if meta.len() < self.start + self.filled as u64 {
            return true;
        }
        match fingerprint(&self.file, self.head.0) {
            Ok(now) if now != self.head => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
        if self.head.0 < checkpoint::HEAD && meta.len() > self.head.0 {
            if let Ok(longer) = fingerprint(&self.file, checkpoint::HEAD) {
                self.head = longer;
            }
        }
        false
    }

    /// Reads the next chunk; 0 at end of file.
    async fn read_more(&mut self) -> std::io::Result<usize> {
        let file = self.file.clone();
        let old = self.filled;
        let at = self.start + old as u64;
        let mut buf = std::mem::take(&mut self.buf);
        if buf.len() < old + CHUNK {
            buf.resize(old + CHUNK, 0);
        }
        let (buf, n) = tokio::task::spawn_blocking(move || {
            let n = file.read_at(&mut buf[old..old + CHUNK], at);
            (buf, n)
        })
        .await
        .map_err(std::io::Error::other)?;
        self.buf = buf;
        let n = n.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "log read failed");
            0
        });
        self.filled += n;
        Ok(n)
    }

    /// Turns every complete line read so far into events. With `whole`, the file is finished and a last
    /// line without newline counts too. A line too long to buffer is cut where a character ends.
    fn parse(&mut self, batcher: &mut Batcher) -> usize {
        self.parse_inner(batcher, false)
    }

    fn parse_final(&mut self, batcher: &mut Batcher) -> usize {
        self.parse_inner(batcher, true)
    }

    fn parse_inner(&mut self, batcher: &mut Batcher, whole: bool) -> usize {
        let mut at = 0;
        let mut events = 0;
        let filled = self.filled;
        while at < filled {
            let (end, next) = match memchr::memchr(b'\n', &self.buf[at..filled]) {
                Some(i) => (at + i, at + i + 1),
                None if whole => (filled, filled),
                None if filled - at >= 4 * batch::MAX_MESSAGE_BYTES => {
                    // No newline in sight: ship a large piece now rather than buffer without bound.
                    // Not inside a character, but back at most 3 bytes: a run of continuation bytes
                    // (not UTF-8 at all) must not take the cut back to `at`, which would never end.
                    let end = at + 2 * batch::MAX_MESSAGE_BYTES;
                    let mut cut = end;
                    while cut > end - 3 && (self.buf[cut] & 0xC0) == 0x80 {
                        cut -= 1;
                    }
                    (cut, cut)
                }
                None => break,
            };
            let line_off = self.start + at as u64;
            let raw = &self.buf[at..end];
            let (ts, msg, skip) = match stamp::parse(raw) {
                Some((ts, msg)) => (ts, msg, stamp::PREFIX_LEN),
                None => (self.last_ts.unwrap_or_else(stamp::now_ms), raw, 0),
            };
            self.last_ts = Some(ts);
            let pieces = batch::split(msg, batch::MAX_MESSAGE_BYTES);
            let n = pieces.len();
            for (i, p) in pieces.into_iter().enumerate() {
                let offset = if i + 1 == n {
                    self.start + next as u64
                } else {
                    line_off + (skip + p.raw_end) as u64
                };
                batcher.push(Event {
                    timestamp: ts,
                    message: p.text,
                    resume: Pos {
                        file: self.id,
                        offset,
                    },
                });
                events += 1;
            }
            at = next;
        }
        self.buf.copy_within(at..filled, 0);
        self.filled -= at;
        self.start += at as u64;
        events
    }
}

enum Put {
    Done,
    /// The group or stream is gone: create it and send again.
    Missing,
    /// The error, and whether it was AccessDenied.
    Failed(String, bool),
    /// Refused for what it holds: the same events would be refused again.
    Invalid(String),
}

/// Why the group or stream could not be set up.
enum Setup {
    /// Throttling, 5xx, network: retried.
    Failed(String),
    /// The instance role may not: retried too (the policy may be fixed), but an error, not a warning.
    Denied(String),
}

const ACCESS_DENIED: &str = "AccessDeniedException";

/// One line for an AccessDenied: the call, the group, the service's words and the fix.
fn denied_message(action: &str, target: &str, cause: &str) -> String {
    format!("{action} {target}: access denied ({cause}): the instance role needs logs:{action} on the log group; `node-agent iam-policy` prints the grants")
}

impl Stream {
    fn status(&self) -> std::sync::MutexGuard<'_, StreamStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ships until `stop` turns true and everything written has been accepted. The caller bounds the time
    /// it waits for that; dropping this future loses nothing (the checkpoint stays where CloudWatch is).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let Some(mut reader) = self.start(&mut stop).await else {
            return;
        };
        self.ensure().await;
        let mut batcher = Batcher::default();
        let mut pending_since: Option<Instant> = None;
        let mut backoff = Backoff(0);
        // Files read from but not yet covered by the checkpoint: kept open for its fingerprint.
        let mut open: VecDeque<(FileId, Arc<std::fs::File>)> = VecDeque::new();
        open.push_back((reader.id, reader.file.clone()));
        loop {
            let mut failed = false;
            while let Some(b) = batcher.next_full() {
                if !self.send(b, &mut open, &mut backoff).await {
                    failed = true;
                    break;
                }
            }
            if failed {
                tokio::time::sleep(backoff.next()).await;
                self.rewind(&mut reader, &mut batcher, &mut open);
                pending_since = None;
                continue;
            }
            if batcher.is_empty() {
                pending_since = None;
            }
            if reader.truncated() {
                self.restart_truncated(&mut reader, &mut batcher, &mut open, &mut backoff)
                    .await;
                pending_since = None;
                continue;
            }
            let n = reader.read_more().await.unwrap_or(0);
            if n > 0 {
                if reader.parse(&mut batcher) > 0 && pending_since.is_none() {
                    pending_since = Some(Instant::now());
                }
                continue;
            }
            if let Some(next) = self.successor(reader.id) {
                // The writer renamed our file and writes elsewhere: what it wrote before is in by now.
                while reader.read_more().await.unwrap_or(0) > 0 {
                    reader.parse(&mut batcher);
                }
                reader.parse_final(&mut batcher);
                if !batcher.is_empty() && pending_since.is_none() {
                    pending_since = Some(Instant::now());
                }
                let last_ts = reader.last_ts;
                reader = self.open_successor(next).await;
                reader.last_ts = last_ts;
                open.push_back((reader.id, reader.file.clone()));
                self.shared.lock().reading = Some(reader.id);
                if batcher.is_empty() {
                    // Everything before is accepted: the old file can be compressed.
                    self.advance(
                        Pos {
                            file: reader.id,
                            offset: 0,
                        },
                        &mut open,
                    )
                    .await;
                }
                continue;
            }
            let stopping = *stop.borrow();
            if !batcher.is_empty() {
                let due = pending_since.is_none_or(|t| t.elapsed() >= self.flush);
                if stopping || due {
                    if let Some(b) = batcher.next_any() {
                        if !self.send(b, &mut open, &mut backoff).await {
                            tokio::time::sleep(backoff.next()).await;
                            self.rewind(&mut reader, &mut batcher, &mut open);
                            pending_since = None;
                        }
                    }
                    continue;
                }
            } else if stopping {
                self.update_lag();
                return;
            }
            self.update_lag();
            let wait = match pending_since {
                Some(t) => self.flush.saturating_sub(t.elapsed()),
                None => Duration::from_secs(1),
            };
            tokio::select! {
                _ = self.shared.notify.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                r = stop.changed(), if !stopping => {
                    // The agent dropped its handle without a shutdown: nothing waits for us.
                    if r.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Another program truncated the file being read (copytruncate). What was read before it goes out
    /// first, in one attempt (the rest of the old content is in that program's copy; what cannot be sent
    /// is counted as lost), then shipping starts again at the file's start, where the writer (appending)
    /// puts every line written since.
    async fn restart_truncated(
        &self,
        reader: &mut Reader,
        batcher: &mut Batcher,
        open: &mut VecDeque<(FileId, Arc<std::fs::File>)>,
        backoff: &mut Backoff,
    ) {
        let read_to = reader.start + reader.filled as u64;
        let file = self.status().file.clone();
        tracing::warn!(file = %file.display(), read_to, "log file truncated by another program (copytruncate?); shipping on from its new start");
        let mut lost = 0;
        while let Some(b) = batcher.next_any() {
            let bytes = b.bytes as u64;
            if lost > 0 || !self.send(b, open, backoff).await {
                lost += bytes;
            }
        }
        if lost > 0 {
            tracing::warn!(file = %file.display(), lost_bytes = lost, "lines read before the truncation could not be shipped; they are in the copy made by the truncating program");
            self.status().lost_bytes += lost;
        }
        let (id, f, last_ts) = (reader.id, reader.file.clone(), reader.last_ts);
        *reader = Reader::new(id, f, 0);
        reader.last_ts = last_ts;
        self.advance(
            Pos {
                file: id,
                offset: 0,
            },
            open,
        )
        .await;
    }

    /// Opens the file and offset to resume from: the checkpoint's file (found by identity and
    /// fingerprint) or, without one, the oldest file from its start.
    async fn start(&self, stop: &mut watch::Receiver<bool>) -> Option<Reader> {
        let cp = match Checkpoint::load(&self.checkpoint) {
            Ok(cp) => cp,
            Err(e) => {
                tracing::warn!(checkpoint = %self.checkpoint.display(), error = %e, "unreadable log checkpoint; shipping from the oldest file");
                None
            }
        };
        loop {
            let files = self.shared.lock().files.clone();
            if let Some(cp) = &cp {
                for f in &files {
                    let Ok(file) = std::fs::File::open(&f.path) else {
                        continue;
                    };
                    if cp.matches(f.id, &file) {
                        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                        let offset = cp.offset.min(size);
                        self.set_position(f.id, offset);
                        return Some(Reader::new(f.id, file, offset));
                    }
                }
                tracing::warn!(file = %self.status().file.display(), "the checkpoint's file is gone; shipping from the oldest file");
            }
            if let Some(f) = files.first() {
                if let Ok(reader) = self.open_file(f) {
                    self.set_position(reader.id, 0);
                    return Some(reader);
                }
            }
            // Nothing written yet; at stop, nothing ever will be.
            if *stop.borrow() {
                return None;
            }
            tokio::select! {
                _ = self.shared.notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                r = stop.changed() => if r.is_err() { return None; },
            }
        }
    }

    /// Back to the last accepted position: the unsent batches are read again from the files.
    fn rewind(
        &self,
        reader: &mut Reader,
        batcher: &mut Batcher,
        open: &mut VecDeque<(FileId, Arc<std::fs::File>)>,
    ) {
        let offset = self.shared.lock().acked_offset;
        let Some((id, file)) = open.front().cloned() else {
            return;
        };
        open.truncate(1);
        let last_ts = reader.last_ts;
        *reader = Reader::new(id, file, offset);
        reader.last_ts = last_ts;
        *batcher = Batcher::default();
        self.shared.lock().reading = Some(id);
    }

    fn set_position(&self, file: FileId, offset: u64) {
        let mut s = self.shared.lock();
        s.reading = Some(file);
        s.acked = Some(file);
        s.acked_offset = offset;
    }

    fn open_file(&self, f: &ChainFile) -> std::io::Result<Reader> {
        let file = std::fs::File::open(&f.path)?;
        let id = FileId::of(&file.metadata()?);
        if id != f.id {
            return Err(std::io::Error::other("renamed while opening"));
        }
        Ok(Reader::new(id, file, 0))
    }

    /// The file written after `cur`, once `cur` is no longer written; the oldest file when `cur` was
    /// deleted (those in between were lost to rotation and counted by the writer).
    fn successor(&self, cur: FileId) -> Option<ChainFile> {
        let s = self.shared.lock();
        match s.files.iter().position(|f| f.id == cur) {
            Some(p) => s.files.get(p + 1).cloned(),
            None => s.files.first().cloned(),
        }
    }

    async fn open_successor(&self, mut next: ChainFile) -> Reader {
        loop {
            match self.open_file(&next) {
                Ok(r) => return r,
                // A rotation moved it between our look and our open: look again.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let s = self.shared.lock();
                    if let Some(f) = s.files.iter().find(|f| f.id == next.id) {
                        next = f.clone();
                    } else if let Some(f) = s.files.first() {
                        next = f.clone();
                    }
                }
            }
        }
    }

    /// Creates the group (with its retention) and the stream when missing; retried until it works.
    async fn ensure(&self) {
        let mut backoff = Backoff(0);
        loop {
            match self.try_ensure().await {
                Ok(()) => {
                    let mut st = self.status();
                    st.last_error = None;
                    st.failing_since_ms = None;
                    return;
                }
                Err(Setup::Failed(e)) => {
                    let delay = backoff.next();
                    self.failed(
                        &e,
                        false,
                        backoff.0,
                        "cannot create the CloudWatch log stream; retrying",
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(Setup::Denied(e)) => {
                    let delay = backoff.next();
                    self.status().setup_error = Some(e.clone());
                    self.failed(
                        &e,
                        true,
                        backoff.0,
                        "not allowed to create the CloudWatch log stream; retrying",
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Creates the group, sets its retention, creates the stream. AccessDenied on the group or its
    /// retention is an error (status and log) but not the end: a group made beforehand still takes the
    /// stream. The stream itself is needed.
    async fn try_ensure(&self) -> Result<(), Setup> {
        let c = &self.client.0;
        let mut denied = Vec::new();
        if let Err(e) = c
            .create_log_group()
            .log_group_name(&self.group)
            .send()
            .await
        {
            match e.code() {
                Some("ResourceAlreadyExistsException") => {}
                Some(ACCESS_DENIED) => denied.push(denied_message(
                    "CreateLogGroup",
                    &self.group,
                    &error_chain(&e),
                )),
                _ => {
                    return Err(Setup::Failed(format!(
                        "CreateLogGroup {}: {}",
                        self.group,
                        error_chain(&e)
                    )))
                }
            }
        }
        if self.retention_days > 0 {
            if let Err(e) = c
                .put_retention_policy()
                .log_group_name(&self.group)
                .retention_in_days(self.retention_days as i32)
                .send()
                .await
            {
                match e.code() {
                    Some(ACCESS_DENIED) => denied.push(denied_message(
                        "PutRetentionPolicy",
                        &self.group,
                        &error_chain(&e),
                    )),
                    _ => {
                        return Err(Setup::Failed(format!(
                            "PutRetentionPolicy {}: {}",
                            self.group,
                            error_chain(&e)
                        )))
                    }
                }
            }
        }
        {
            let mut st = self.status();
            // Once per refusal, not at every retry of the stream.
            for d in &denied {
                if !st
                    .setup_error
                    .as_deref()
                    .is_some_and(|e| e.contains(d.as_str()))
                {
                    tracing::error!(group = %self.group, stream = %self.stream, error = %d, "CloudWatch Logs refused to set up the log group; shipping goes on if the group exists");
                }
            }
            st.setup_error = (!denied.is_empty()).then(|| denied.join("; "));
        }
        match c
            .create_log_stream()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ResourceAlreadyExistsException") => Ok(()),
            Err(e) if e.code() == Some(ACCESS_DENIED) => {
                let target = format!("{}/{}", self.group, self.stream);
                denied.push(denied_message("CreateLogStream", &target, &error_chain(&e)));
                Err(Setup::Denied(denied.join("; ")))
            }
            Err(e) => Err(Setup::Failed(format!(
                "CreateLogStream {}/{}: {}",
                self.group,
                self.stream,
                error_chain(&e)
            ))),
        }
    }

    fn failed(&self, error: &str, denied: bool, attempt: u32, what: &str) {
        let retries = {
            let mut st = self.status();
            st.retries += 1;
            st.last_error = Some(error.to_owned());
            st.failing_since_ms.get_or_insert_with(stamp::now_ms);
            st.retries
        };
        // Logged sparsely: while CloudWatch is down these lines land in the agent's own log too.
        if attempt.is_power_of_two() {
            if denied {
                tracing::error!(group = %self.group, stream = %self.stream, attempt, retries, %error, "{what}");
            } else {
                tracing::warn!(group = %self.group, stream = %self.stream, attempt, retries, %error, "{what}");
            }
        }
    }

    async fn put(&self, events: Vec<InputLogEvent>) -> Put {
        let n = events.len() as u64;
        let result = self
            .client
            .0
            .put_log_events()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .set_log_events(Some(events))
            .send()
            .await;
        match result {
            Ok(out) => {
                if let Some(r) = out.rejected_log_events_info() {
                    let too_new = r
                        .too_new_log_event_start_index()
                        .map_or(0, |i| n.saturating_sub(i as u64));
                    let too_old = r.too_old_log_event_end_index().map_or(0, |i| i as u64 + 1);
                    let expired = r.expired_log_event_end_index().map_or(0, |i| i as u64 + 1);
                    if too_new + too_old + expired > 0 {
                        tracing::warn!(group = %self.group, stream = %self.stream, too_new, too_old, expired, "CloudWatch rejected log events outside its time window");
                    }
                    let mut st = self.status();
                    st.rejected_too_new += too_new;
                    st.rejected_too_old += too_old;
                    st.rejected_expired += expired;
                }
                Put::Done
            }
            Err(e) if e.code() == Some("ResourceNotFoundException") => Put::Missing,
            Err(e) if e.code() == Some("InvalidParameterException") => {
                Put::Invalid(error_chain(&e))
            }
            Err(e) if e.code() == Some(ACCESS_DENIED) => Put::Failed(
                denied_message("PutLogEvents", &self.group, &error_chain(&e)),
                true,
            ),
            Err(e) => Put::Failed(error_chain(&e), false),
        }
    }

    /// Sends `events`. When CloudWatch refuses them as invalid, sends them again part by part
    /// ([`batch::Bisect`]) until each refused event is alone, sets those aside (counted, logged, in
    /// status) and ships the rest. Any other failure ends it: the whole batch is sent again later (parts
    /// accepted meanwhile are sent twice, as after a crash).
    async fn put_or_set_aside(&self, events: Vec<InputLogEvent>) -> Put {
        let mut parts = batch::Bisect::new(events.len());
        while let Some(part) = parts.next_part() {
            let answer = if part.len() == events.len() {
                self.put(events.clone()).await
            } else {
                self.put(events[part.clone()].to_vec()).await
            };
            match answer {
                Put::Done => {}
                Put::Invalid(why) => {
                    if parts.refused(part.clone()) {
                        let bytes = events[part.start].message().len();
                        tracing::error!(group = %self.group, stream = %self.stream, bytes, error = %why, "CloudWatch refused a log event as invalid; set aside (lost), shipping the rest");
                        let mut st = self.status();
                        st.rejected_invalid += 1;
                        st.last_rejected = Some(why);
                    }
                }
                other => return other,
            }
        }
        Put::Done
    }

    /// Sends one batch; once CloudWatch accepted it, moves the checkpoint past it. `false` when it must
    /// be sent again (after a backoff, re-read from the files: nothing is kept in memory to resend).
    async fn send(
        &self,
        batch: Batch,
        open: &mut VecDeque<(FileId, Arc<std::fs::File>)>,
        backoff: &mut Backoff,
    ) -> bool {
        let Some(resume) = batch.resume() else {
            return true;
        };
        let count = batch.events.len() as u64;
        let events: Vec<InputLogEvent> = batch
            .events
            .into_iter()
            .filter_map(|e| {
                InputLogEvent::builder()
                    .timestamp(e.timestamp)
                    .message(e.message)
                    .build()
                    .ok()
            })
            .collect();
        match self.put_or_set_aside(events).await {
            Put::Done | Put::Invalid(_) => {}
            Put::Missing => {
                self.failed(
                    "the log group or stream does not exist",
                    false,
                    backoff.0 + 1,
                    "recreating the CloudWatch log stream",
                );
                self.ensure().await;
                return false;
            }
            Put::Failed(e, denied) => {
                self.failed(&e, denied, backoff.0 + 1, "PutLogEvents failed; retrying");
                return false;
            }
        }
        if backoff.0 > 0 {
            tracing::info!(group = %self.group, stream = %self.stream, attempts = backoff.0 + 1, "PutLogEvents accepted after retries");
            *backoff = Backoff(0);
        }
        {
            let mut st = self.status();
            st.last_success_ms = Some(stamp::now_ms());
            st.events_sent += count;
            st.batches_sent += 1;
            st.last_error = None;
            st.failing_since_ms = None;
        }
        self.advance(resume, open).await;
        true
    }

    /// Stores the checkpoint durably, then tells the writer which files are done.
    async fn advance(&self, pos: Pos, open: &mut VecDeque<(FileId, Arc<std::fs::File>)>) {
        while open.len() > 1 && open.front().is_some_and(|(id, _)| *id != pos.file) {
            open.pop_front();
        }
        let Some((_, file)) = open.iter().find(|(id, _)| *id == pos.file).cloned() else {
            return;
        };
        let path = self.checkpoint.clone();
        let stored = tokio::task::spawn_blocking(move || Checkpoint::at(pos, &file)?.store(&path))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        if let Err(e) = stored {
            tracing::warn!(checkpoint = %self.checkpoint.display(), error = %e, "cannot store the log checkpoint; lines may be sent twice after a restart");
        }
        let moved = {
            let mut s = self.shared.lock();
            let moved = s.acked != Some(pos.file);
            s.acked = Some(pos.file);
            s.acked_offset = pos.offset;
            moved
        };
        if moved {
            self.shared.tick();
        }
        self.update_lag();
    }

    /// Bytes in the files not yet accepted: the rest of the checkpoint's file and every file after it.
    fn update_lag(&self) {
        let (files, acked, offset) = {
            let s = self.shared.lock();
            (s.files.clone(), s.acked, s.acked_offset)
        };
        let from = acked
            .and_then(|a| files.iter().position(|f| f.id == a))
            .unwrap_or(0);
        let lag = files[from.min(files.len())..]
            .iter()
            .map(|f| {
                let size = std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0);
                if Some(f.id) == acked {
                    size.saturating_sub(offset)
                } else {
                    size
                }
            })
            .sum();
        self.status().lag_bytes = lag;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader_over(text: &[u8]) -> (Reader, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.log");
        std::fs::write(&p, text).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let id = FileId::of(&f.metadata().unwrap());
        let mut r = Reader::new(id, f, 0);
        r.buf = text.to_vec();
        r.filled = text.len();
        (r, dir)
    }

    fn events(b: &mut Batcher) -> Vec<Event> {
        std::iter::from_fn(|| b.next_any())
            .flat_map(|b| b.events)
            .collect()
    }

    #[test]
    fn lines_become_events_stamped_with_their_write_time_and_resume_after_their_newline() {
        let text = b"2024-05-01T12:00:00.000Z first\nno prefix\n\n2024-05-01T12:00:01.000Z partial";
        let (mut r, _d) = reader_over(text);
        let mut b = Batcher::default();
        assert_eq!(r.parse(&mut b), 2);
        let ev = events(&mut b);
        assert_eq!(ev[0].message, "first");
        assert_eq!(ev[0].timestamp, 1_714_564_800_000);
        assert_eq!(ev[0].resume.offset, 31);
        assert_eq!(ev[1].message, "no prefix");
        assert_eq!(
            ev[1].timestamp, 1_714_564_800_000,
            "a line without a stamp takes the previous one"
        );
        assert_eq!(ev[1].resume.offset, 41);
        // The empty line is skipped; the partial line waits for its newline.
        assert_eq!(r.start, 42);
        assert_eq!(r.parse_final(&mut b), 1);
        let last = events(&mut b);
        assert_eq!(last[0].message, "partial");
        assert_eq!(last[0].resume.offset, text.len() as u64);
    }

    #[test]
    fn a_long_line_resumes_inside_itself_after_each_piece() {
        let mut text = b"2024-05-01T12:00:00.000Z ".to_vec();
        text.extend(std::iter::repeat_n(b'y', batch::MAX_MESSAGE_BYTES * 2 + 5));
        text.push(b'\n');
        let (mut r, _d) = reader_over(&text);
        let mut b = Batcher::default();
        assert_eq!(r.parse(&mut b), 3);
        let ev = events(&mut b);
        let offsets: Vec<u64> = ev.iter().map(|e| e.resume.offset).collect();
        let m = batch::MAX_MESSAGE_BYTES as u64;
        assert_eq!(offsets, [25 + m, 25 + 2 * m, text.len() as u64]);
        assert!(ev.iter().all(|e| e.timestamp == 1_714_564_800_000));
    }

    /// Log files as they may be found: stamped lines and lines without a stamp, any bytes (NUL, CR,
    /// invalid UTF-8), lines around the event limit and runs of megabytes without a newline.
    fn file_text() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let m = batch::MAX_MESSAGE_BYTES;
        let near = |n: usize| (n - 4..=n + 4).boxed();
        let segment = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            // A stamp only ever starts a line.
            proptest::collection::vec(any::<u8>(), 0..100).prop_map(|v| {
                let mut line = b"\n2024-05-01T12:00:00.000Z ".to_vec();
                line.extend(v);
                line
            }),
            (
                proptest::sample::select(vec![b'x', 0, b'\r', 0xff, 0x80, 0xf0]),
                prop_oneof![near(m), near(2 * m), near(4 * m), near(5 * m), 0..10usize],
            )
                .prop_map(|(b, n)| vec![b; n]),
            (proptest::sample::select(vec!["é", "€", "😀"]), near(m))
                .prop_map(|(c, n)| c.repeat(n / c.len()).into_bytes()),
            Just(b"\n".to_vec()),
        ];
        proptest::collection::vec(segment, 0..8).prop_map(|v| v.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(48))]
        #[test]
        fn any_file_becomes_events_cloudwatch_accepts_with_every_character(text in file_text()) {
            let (mut r, _d) = reader_over(&text);
            let mut b = Batcher::default();
            r.parse(&mut b);
            r.parse_final(&mut b);
            let batches: Vec<Batch> = std::iter::from_fn(|| b.next_any()).collect();
            let mut last = 0;
            let mut shipped = String::new();
            for batch in &batches {
                proptest::prop_assert!(batch.events.len() <= batch::MAX_BATCH_EVENTS);
                proptest::prop_assert!(batch.bytes <= batch::MAX_BATCH_BYTES);
                for e in &batch.events {
                    proptest::prop_assert!(!e.message.is_empty());
                    proptest::prop_assert!(e.message.len() + batch::EVENT_OVERHEAD <= batch::MAX_EVENT_BYTES);
                    proptest::prop_assert!(e.resume.offset > last && e.resume.offset <= text.len() as u64);
                    last = e.resume.offset;
                    shipped.push_str(&e.message);
                }
            }
            // Every character arrives, invalid bytes as U+FFFD; lines too long to buffer are cut in
            // pieces that may count a broken sequence differently.
            let lines: Vec<&[u8]> = text.split(|c| *c == b'\n').collect();
            if lines.iter().all(|l| l.len() < 4 * batch::MAX_MESSAGE_BYTES) {
                let want: String = lines
                    .iter()
                    .map(|l| match stamp::parse(l) {
                        Some((_, msg)) => String::from_utf8_lossy(msg),
                        None => String::from_utf8_lossy(l),
                    })
                    .collect();
                proptest::prop_assert!(shipped == want, "{} characters shipped, {} written", shipped.chars().count(), want.chars().count());
            }
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let mut b = Backoff(0);
        let d: Vec<Duration> = (0..10).map(|_| b.next()).collect();
        assert!(d[0] >= Duration::from_millis(160) && d[0] <= Duration::from_millis(240));
        assert!(d[3] >= Duration::from_millis(1280) && d[3] <= Duration::from_millis(1920));
        assert!(d[9] <= Duration::from_secs(12) && d[9] >= Duration::from_secs(8));
    }
}

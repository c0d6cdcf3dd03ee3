//! Shipping one log file (and its rotated predecessors) to one CloudWatch Logs stream.
//!
//! The files are the buffer: the shipper reads them from its durable checkpoint, oldest file first,
//! following files by identity across rotation, and moves the checkpoint only after CloudWatch accepted a
//! batch. Every failure is retried with backoff, never dropped; while CloudWatch is unreachable the
//! files grow and shipping catches up afterwards.
//!
//! `reader` turns the files into events, `cloudwatch` talks to CloudWatch Logs; this module is the
//! shipping loop and its retry and outage policy.

mod cloudwatch;
mod reader;

pub use cloudwatch::Client;

use super::batch::{Batch, Batcher};
use super::checkpoint::{Checkpoint, FileId, Pos};
use super::stamp;
use super::writer::{ChainFile, Shared};
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use cloudwatch::{Put, Setup};
use reader::Reader;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Retry delays: doubling from the first to the cap, ±20% jitter.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

pub use crate::status::model::StreamStatus;

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
    /// Create the group and set its retention; else they exist already (made with the stack).
    pub create_group: bool,
    pub flush: Duration,
    pub shared: Arc<Shared>,
    pub checkpoint: PathBuf,
    pub status: Arc<Mutex<StreamStatus>>,
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

    #[test]
    fn backoff_doubles_to_its_cap() {
        let mut b = Backoff(0);
        let d: Vec<Duration> = (0..10).map(|_| b.next()).collect();
        assert!(d[0] >= Duration::from_millis(160) && d[0] <= Duration::from_millis(240));
        assert!(d[3] >= Duration::from_millis(1280) && d[3] <= Duration::from_millis(1920));
        assert!(d[9] <= Duration::from_secs(12) && d[9] >= Duration::from_secs(8));
    }
}

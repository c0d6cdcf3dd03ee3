//! A log file read back as CloudWatch events: whole lines from where shipping stands, each with the time
//! its stamp says, long lines in pieces; every event carries the position to resume after it. Notices a
//! file truncated under it (copytruncate).

use crate::logs::batch::{self, Batcher, Event};
use crate::logs::checkpoint::{self, fingerprint, FileId, Pos};
use crate::logs::stamp;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// How much of a file is read at once.
const CHUNK: usize = 1 << 20;

/// An open file being read.
pub(super) struct Reader {
    pub(super) id: FileId,
    pub(super) file: Arc<std::fs::File>,
    /// `buf[..filled]`: bytes read but not yet turned into events; `buf[0]` is at file offset `start`.
    /// The rest is room for the next read (zeroed once, not at every read).
    buf: Vec<u8>,
    pub(super) filled: usize,
    pub(super) start: u64,
    pub(super) last_ts: Option<i64>,
    /// Fingerprint of the file's first bytes when first read (see [`Reader::truncated`]).
    head: (u64, u64),
}

impl Reader {
    pub(super) fn new(id: FileId, file: impl Into<Arc<std::fs::File>>, offset: u64) -> Reader {
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
    pub(super) fn truncated(&mut self) -> bool {
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
    pub(super) async fn read_more(&mut self) -> std::io::Result<usize> {
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
    pub(super) fn parse(&mut self, batcher: &mut Batcher) -> usize {
        self.parse_inner(batcher, false)
    }

    pub(super) fn parse_final(&mut self, batcher: &mut Batcher) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::batch::Batch;

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
}

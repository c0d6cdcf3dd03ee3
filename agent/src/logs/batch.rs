//! Cutting log lines into PutLogEvents batches that CloudWatch accepts as they are. Pure.
//!
//! The limits (CloudWatch Logs PutLogEvents): a batch is at most 1,048,576 bytes counted as the UTF-8
//! message bytes plus 26 bytes per event, at most 10,000 events, in chronological order, spanning at
//! most 24 hours; an event's message is 1 to 256 KiB (the pre-2025 per-event limit, still valid).

use super::checkpoint::Pos;
use std::collections::VecDeque;

pub const MAX_BATCH_BYTES: usize = 1_048_576;
pub const EVENT_OVERHEAD: usize = 26;
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// Largest event CloudWatch takes, overhead included.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
/// Largest message: longer lines are split into pieces of at most this many bytes.
pub const MAX_MESSAGE_BYTES: usize = MAX_EVENT_BYTES - EVENT_OVERHEAD;
/// A batch must not span 24 hours or more.
pub const MAX_SPAN_MS: i64 = 24 * 3600 * 1000;

/// One log event, with where to resume in the file once it (and everything before it) is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub timestamp: i64,
    pub message: String,
    pub resume: Pos,
}

impl Event {
    fn size(&self) -> usize {
        self.message.len() + EVENT_OVERHEAD
    }
}

/// Events that go into one PutLogEvents call.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    pub events: Vec<Event>,
    /// Counted as CloudWatch counts: message bytes + 26 per event.
    pub bytes: usize,
}

impl Batch {
    /// Where to resume once this batch is accepted.
    pub fn resume(&self) -> Option<Pos> {
        self.events.last().map(|e| e.resume)
    }

    /// Whether `e` can join this batch without breaking a limit.
    fn admits(&self, e: &Event) -> bool {
        let (Some(first), Some(last)) = (self.events.first(), self.events.last()) else {
            return true;
        };
        self.events.len() < MAX_BATCH_EVENTS
            && self.bytes + e.size() <= MAX_BATCH_BYTES
            // A clock stepping back starts a new batch instead of reordering or re-stamping events.
            && e.timestamp >= last.timestamp
            && e.timestamp - first.timestamp < MAX_SPAN_MS
    }
}

/// Accumulates events into batches, in order. Closed batches wait in a queue until sent.
#[derive(Debug, Default)]
pub struct Batcher {
    open: Batch,
    closed: VecDeque<Batch>,
}

impl Batcher {
    /// Adds an event whose message is 1..=MAX_MESSAGE_BYTES bytes (see [`split`]).
    pub fn push(&mut self, e: Event) {
        debug_assert!(!e.message.is_empty() && e.message.len() <= MAX_MESSAGE_BYTES);
        if !self.open.admits(&e) {
            self.closed.push_back(std::mem::take(&mut self.open));
        }
        if self.open.events.is_empty() {
            // Typical batches hold thousands of events: skip the first doublings.
            self.open.events.reserve(1024);
        }
        self.open.bytes += e.size();
        self.open.events.push(e);
        // Full: no further event could join, so do not wait for one to find out.
        if self.open.events.len() == MAX_BATCH_EVENTS
            || self.open.bytes + EVENT_OVERHEAD + 1 > MAX_BATCH_BYTES
        {
            self.closed.push_back(std::mem::take(&mut self.open));
        }
    }

    /// The oldest batch that is complete.
    pub fn next_full(&mut self) -> Option<Batch> {
        self.closed.pop_front()
    }

    /// The oldest batch, complete or not (flush).
    pub fn next_any(&mut self) -> Option<Batch> {
        self.closed
            .pop_front()
            .or_else(|| (!self.open.events.is_empty()).then(|| std::mem::take(&mut self.open)))
    }

    pub fn is_empty(&self) -> bool {
        self.closed.is_empty() && self.open.events.is_empty()
    }

    /// Events waiting, complete batches or not.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.open.events.len() + self.closed.iter().map(|b| b.events.len()).sum::<usize>()
    }
}

/// A piece of a line: its text and how many raw bytes of the line it covers (from the line's start).
#[derive(Debug, PartialEq, Eq)]
pub struct Piece {
    pub text: String,
    pub raw_end: usize,
}

/// Turns a raw line into messages CloudWatch accepts: valid UTF-8 (invalid bytes become U+FFFD), each
/// at most `max` bytes, cut at character boundaries. Never drops text. An empty line gives no piece
/// (CloudWatch rejects empty messages).
pub fn split(raw: &[u8], max: usize) -> Vec<Piece> {
    if raw.len() <= max {
        if let Ok(s) = std::str::from_utf8(raw) {
            return if s.is_empty() {
                Vec::new()
            } else {
                vec![Piece {
                    text: s.to_owned(),
                    raw_end: raw.len(),
                }]
            };
        }
    }
    let max = max.max(4);
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut consumed = 0;
    let cut = |cur: &mut String, consumed: usize, out: &mut Vec<Piece>| {
        if !cur.is_empty() {
            out.push(Piece {
                text: std::mem::take(cur),
                raw_end: consumed,
            });
        }
    };
    for chunk in raw.utf8_chunks() {
        let mut valid = chunk.valid();
        while !valid.is_empty() {
            let room = max - cur.len();
            let mut take = room.min(valid.len());
            while !valid.is_char_boundary(take) {
                take -= 1;
            }
            if take == 0 {
                cut(&mut cur, consumed, &mut out);
                continue;
            }
            cur.push_str(&valid[..take]);
            consumed += take;
            valid = &valid[take..];
        }
        if !chunk.invalid().is_empty() {
            if cur.len() + '\u{FFFD}'.len_utf8() > max {
                cut(&mut cur, consumed, &mut out);
            }
            cur.push('\u{FFFD}');
            consumed += chunk.invalid().len();
        }
    }
    cut(&mut cur, consumed, &mut out);
    out
}

/// Sending a batch part by part after CloudWatch refused it as invalid (an error retrying cannot fix):
/// the refused part is halved until each refused event is alone, so that it can be set aside and every
/// other event shipped, in order. Pure: the caller sends the parts.
#[derive(Debug)]
pub struct Bisect {
    /// The parts still to send, the next one last.
    todo: Vec<std::ops::Range<usize>>,
}

impl Bisect {
    /// A batch of `len` events.
    pub fn new(len: usize) -> Bisect {
        Bisect {
            todo: std::iter::once(0..len).filter(|r| !r.is_empty()).collect(),
        }
    }

    /// The next part to send.
    pub fn next_part(&mut self) -> Option<std::ops::Range<usize>> {
        self.todo.pop()
    }

    /// `part` was refused as invalid: `true` when it is one event, to set aside; otherwise its halves
    /// are sent next, the first first.
    pub fn refused(&mut self, part: std::ops::Range<usize>) -> bool {
        if part.len() <= 1 {
            return true;
        }
        let mid = part.start + part.len() / 2;
        self.todo.push(mid..part.end);
        self.todo.push(part.start..mid);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::checkpoint::FileId;

    /// Runs a bisection against a service that refuses any part holding a bad event: (events shipped in
    /// order, events set aside, calls made).
    fn bisect(len: usize, bad: &[usize]) -> (Vec<usize>, Vec<usize>, usize) {
        let (mut shipped, mut aside, mut calls) = (Vec::new(), Vec::new(), 0);
        let mut b = Bisect::new(len);
        while let Some(part) = b.next_part() {
            calls += 1;
            if part.clone().any(|i| bad.contains(&i)) {
                if b.refused(part.clone()) {
                    aside.push(part.start);
                }
            } else {
                shipped.extend(part);
            }
        }
        (shipped, aside, calls)
    }

    #[test]
    fn a_refused_batch_is_halved_until_only_the_bad_events_are_left_out() {
        let (shipped, aside, calls) = bisect(10, &[3, 7]);
        assert_eq!(aside, [3, 7]);
        assert_eq!(shipped, [0, 1, 2, 4, 5, 6, 8, 9]);
        assert!(calls <= 1 + 2 * 2 * 4, "{calls} calls");
        assert_eq!(bisect(1, &[0]), (vec![], vec![0], 1));
        assert_eq!(bisect(0, &[]), (vec![], vec![], 0));
    }

    proptest::proptest! {
        #[test]
        fn bisection_ships_every_good_event_in_order_and_sets_aside_exactly_the_bad_ones(
            len in 1usize..3000,
            bad in proptest::collection::btree_set(0usize..3000, 0..6),
        ) {
            let bad: Vec<usize> = bad.into_iter().filter(|i| *i < len).collect();
            let (shipped, aside, calls) = bisect(len, &bad);
            proptest::prop_assert_eq!(&aside, &bad);
            let good: Vec<usize> = (0..len).filter(|i| !bad.contains(i)).collect();
            proptest::prop_assert_eq!(shipped, good);
            // At most two calls per level per bad event, plus the first.
            let levels = usize::BITS - len.leading_zeros();
            proptest::prop_assert!(calls <= 1 + 2 * bad.len() * levels as usize);
        }
    }

    const F: FileId = FileId { dev: 1, ino: 2 };

    fn ev(ts: i64, len: usize, offset: u64) -> Event {
        Event {
            timestamp: ts,
            message: "x".repeat(len),
            resume: Pos { file: F, offset },
        }
    }

    fn drain(b: &mut Batcher) -> Vec<Batch> {
        std::iter::from_fn(|| b.next_any()).collect()
    }

    /// Every limit CloudWatch enforces on one PutLogEvents call.
    fn assert_valid(batch: &Batch) {
        assert!(!batch.events.is_empty());
        assert!(batch.events.len() <= MAX_BATCH_EVENTS);
        let bytes: usize = batch.events.iter().map(|e| e.message.len() + 26).sum();
        assert_eq!(bytes, batch.bytes);
        assert!(bytes <= MAX_BATCH_BYTES, "{bytes} bytes");
        assert!(batch
            .events
            .windows(2)
            .all(|w| w[0].timestamp <= w[1].timestamp));
        let span = batch.events.last().unwrap().timestamp - batch.events[0].timestamp;
        assert!(span < MAX_SPAN_MS);
        assert!(batch
            .events
            .iter()
            .all(|e| !e.message.is_empty() && e.message.len() + 26 <= MAX_EVENT_BYTES));
    }

    #[test]
    fn batches_close_at_exactly_the_byte_limit_counting_26_bytes_per_event() {
        let mut b = Batcher::default();
        // 4 events of 262,118 + 26 = 262,144 bytes fill 1,048,576 exactly.
        for i in 0..5 {
            b.push(ev(1000, MAX_MESSAGE_BYTES, i));
        }
        let out = drain(&mut b);
        assert_eq!(
            out.iter().map(|b| b.events.len()).collect::<Vec<_>>(),
            [4, 1]
        );
        assert_eq!(out[0].bytes, MAX_BATCH_BYTES);
        assert!(b.next_full().is_none());
        out.iter().for_each(assert_valid);
    }

    #[test]
    fn one_byte_over_the_limit_starts_a_new_batch() {
        let mut b = Batcher::default();
        // 10 × 100,026 + 48,316 = 1,048,576: exactly full.
        for i in 0..10 {
            b.push(ev(0, 100_000, i));
        }
        b.push(ev(0, 48_290, 10));
        let full = b.next_full().unwrap();
        assert_eq!((full.events.len(), full.bytes), (11, MAX_BATCH_BYTES));
        // One byte more does not fit: it opens the next batch.
        for i in 0..10 {
            b.push(ev(0, 100_000, i));
        }
        b.push(ev(0, 48_291, 10));
        assert_eq!(b.next_full().map(|b| b.events.len()), Some(10));
        assert_eq!(b.next_any().map(|b| b.events.len()), Some(1));
        assert!(b.is_empty());
    }

    #[test]
    fn batches_hold_at_most_ten_thousand_events() {
        let mut b = Batcher::default();
        for i in 0..25_001 {
            b.push(ev(i as i64, 10, i));
        }
        assert_eq!(b.len(), 25_001);
        let out = drain(&mut b);
        assert_eq!(
            out.iter().map(|b| b.events.len()).collect::<Vec<_>>(),
            [10_000, 10_000, 5_001]
        );
        out.iter().for_each(assert_valid);
        assert_eq!(out[0].resume().unwrap().offset, 9_999);
    }

    #[test]
    fn a_batch_never_spans_24_hours() {
        let mut b = Batcher::default();
        b.push(ev(0, 1, 1));
        b.push(ev(MAX_SPAN_MS - 1, 1, 2));
        b.push(ev(MAX_SPAN_MS, 1, 3));
        let out = drain(&mut b);
        assert_eq!(
            out.iter().map(|b| b.events.len()).collect::<Vec<_>>(),
            [2, 1]
        );
    }

    #[test]
    fn a_clock_stepping_back_starts_a_new_batch_and_keeps_every_timestamp() {
        let mut b = Batcher::default();
        for (i, ts) in [10, 20, 20, 15, 30].into_iter().enumerate() {
            b.push(ev(ts, 1, i as u64));
        }
        let out = drain(&mut b);
        let stamps: Vec<Vec<i64>> = out
            .iter()
            .map(|b| b.events.iter().map(|e| e.timestamp).collect())
            .collect();
        assert_eq!(stamps, [vec![10, 20, 20], vec![15, 30]]);
    }

    #[test]
    fn random_streams_always_give_valid_batches_in_order() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Batcher::default();
        let mut ts = 0i64;
        let mut offsets = Vec::new();
        for i in 0..20_000u64 {
            ts += rng.gen_range(-1_000..3_600_000);
            let len = if rng.gen_bool(0.01) {
                MAX_MESSAGE_BYTES
            } else {
                rng.gen_range(1..300)
            };
            b.push(ev(ts, len, i));
            offsets.push(i);
        }
        let out = drain(&mut b);
        out.iter().for_each(assert_valid);
        let seen: Vec<u64> = out
            .iter()
            .flat_map(|b| b.events.iter().map(|e| e.resume.offset))
            .collect();
        assert_eq!(seen, offsets, "every event, once, in order");
    }

    #[test]
    fn long_lines_are_split_at_character_boundaries_and_nothing_is_lost() {
        let line = "é".repeat(10) + "abc";
        let pieces = split(line.as_bytes(), 5);
        let texts: Vec<&str> = pieces.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(texts, ["éé", "éé", "éé", "éé", "ééa", "bc"]);
        assert_eq!(texts.concat(), line);
        assert_eq!(pieces.last().unwrap().raw_end, line.len());
        assert!(pieces.windows(2).all(|w| w[0].raw_end < w[1].raw_end));
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters_within_the_limit() {
        let raw = b"ab\xff\xfecd\xe2\x82";
        let pieces = split(raw, 4);
        let texts: Vec<&str> = pieces.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(texts.concat(), String::from_utf8_lossy(raw));
        assert!(pieces.iter().all(|p| p.text.len() <= 4));
        assert_eq!(pieces.last().unwrap().raw_end, raw.len());
        assert_eq!(split(b"", 10), []);
        assert_eq!(
            split(b"short", 10),
            [Piece {
                text: "short".into(),
                raw_end: 5
            }]
        );
    }

    #[test]
    fn a_3_mb_line_becomes_twelve_events_that_rejoin_exactly() {
        let line: String = (0..3_000_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let pieces = split(line.as_bytes(), MAX_MESSAGE_BYTES);
        assert_eq!(pieces.len(), 12);
        assert!(pieces.iter().all(|p| p.text.len() <= MAX_MESSAGE_BYTES));
        let joined: String = pieces.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(joined, line);
    }
}

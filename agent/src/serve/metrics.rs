//! The figures of the status document, out: an EMF event per child every health check into the
//! `metrics` log stream (shipped like every log line), and the Prometheus text for `GET /metrics`.

use crate::logs::LineSink;
use crate::status::{self, metrics::Figures};
use std::time::Duration;

/// Writes one EMF event per child every `interval`, counters as their increase since the last one.
pub async fn emf(sources: status::Sources, sink: LineSink, namespace: String, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before: Vec<Figures> = Vec::new();
    loop {
        tick.tick().await;
        let doc = status::document(&sources);
        let now_ms = crate::clock::now_unix_ms();
        let figures = status::metrics::figures(&doc, (now_ms / 1000) as u64);
        for f in &figures {
            let last = before.iter().find(|b| b.child == f.child);
            let event = status::metrics::emf(&doc, f, &namespace, now_ms, last);
            sink.line(event.into_bytes()).await;
        }
        before = figures;
    }
}

/// The Prometheus text of the document as it stands.
pub fn prometheus(sources: &status::Sources) -> String {
    let doc = status::document(sources);
    let figures = status::metrics::figures(&doc, crate::clock::now_unix());
    status::metrics::prometheus(&doc, &figures)
}

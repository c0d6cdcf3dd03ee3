//! The health endpoint a load balancer checks (`health.listen`): `GET /ready` and `GET /live`, 200 or 503
//! with a one-line JSON reason. The answers come from the verdict the main loop publishes every tick
//! (`status::verdict`, from the supervisor's cached state); a request never reaches geth. `GET /metrics`
//! serves the status document's figures in Prometheus' text format (`status::metrics`), built from the
//! same cached state at the request.
//!
//! Bounded: HTTP/1 by hyper, GET only, fixed small bodies, at most [`MAX_CONNECTIONS`] connections at a
//! time (more are closed at once), a header deadline and a connection lifetime. Nothing secret is in a
//! body: reasons name states, heads and peers.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request head.
const HEADER_DEADLINE: Duration = Duration::from_secs(2);
/// How long one connection may stay open (keep-alive included).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// A verdict older than this means the main loop stopped: neither ready nor live.
const STALE_AFTER: Duration = Duration::from_secs(5);

/// What the main loop last decided.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub ready: Result<(), String>,
    pub live: Result<(), String>,
    pub at: Instant,
}

impl Verdict {
    /// Before the first tick.
    pub fn starting() -> Verdict {
        Verdict {
            ready: Err("starting".into()),
            live: Ok(()),
            at: Instant::now(),
        }
    }
}

/// The Prometheus text of the figures as they stand.
pub type Metrics = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves until the task is aborted.
pub async fn serve(listener: TcpListener, verdict: watch::Receiver<Verdict>, metrics: Metrics) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let verdict = verdict.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = match req.uri().path() {
                    "/metrics" => exposition(req.method(), &*metrics),
                    path => respond(req.method(), path, &verdict.borrow(), Instant::now()),
                };
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_DEADLINE)
                .max_buf_size(8192)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(slot);
        });
    }
}

/// `GET /metrics`: the text format, version 0.0.4 (what Prometheus scrapes).
fn exposition(method: &Method, metrics: &dyn Fn() -> String) -> Response<Full<Bytes>> {
    if method != Method::GET {
        return not_get();
    }
    let mut r = plain(StatusCode::OK, metrics());
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn not_get() -> Response<Full<Bytes>> {
    let mut r = plain(
        StatusCode::METHOD_NOT_ALLOWED,
        "{\"error\":\"method not allowed: GET only\"}",
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET"));
    r
}

/// The answer to one request, from `verdict` as it stands at `now`. Pure.
fn respond(method: &Method, path: &str, verdict: &Verdict, now: Instant) -> Response<Full<Bytes>> {
    let which = match path {
        "/ready" => Which::Ready,
        "/live" => Which::Live,
        _ => {
            return plain(
                StatusCode::NOT_FOUND,
                "{\"error\":\"not found: GET /ready, /live or /metrics\"}",
            )
        }
    };
    if method != Method::GET {
        return not_get();
    }
    let stale = now.saturating_duration_since(verdict.at);
    let result = if stale > STALE_AFTER {
        Err(format!(
            "the agent's main loop has not run for {}s",
            stale.as_secs()
        ))
    } else {
        match which {
            Which::Ready => verdict.ready.clone(),
            Which::Live => verdict.live.clone(),
        }
    };
    let key = match which {
        Which::Ready => "ready",
        Which::Live => "live",
    };
    let (code, body) = match result {
        Ok(()) => (StatusCode::OK, format!("{{\"{key}\":true}}")),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ key: false, "reason": why }).to_string(),
        ),
    };
    plain(code, body)
}

enum Which {
    Ready,
    Live,
}

fn plain(code: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn verdict(ready: Result<(), String>, live: Result<(), String>) -> Verdict {
        Verdict {
            ready,
            live,
            at: Instant::now(),
        }
    }

    async fn body(r: Response<Full<Bytes>>) -> (u16, String) {
        let code = r.status().as_u16();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        (code, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn ready_and_live_answer_200_or_503_with_a_one_line_reason() {
        let v = verdict(Err("syncing: head #10, peers at #900".into()), Ok(()));
        let now = v.at;
        assert_eq!(
            body(respond(&Method::GET, "/ready", &v, now)).await,
            (
                503,
                r#"{"ready":false,"reason":"syncing: head #10, peers at #900"}"#.into()
            )
        );
        assert_eq!(
            body(respond(&Method::GET, "/live", &v, now)).await,
            (200, r#"{"live":true}"#.into())
        );
        let ok = verdict(Ok(()), Ok(()));
        assert_eq!(
            body(respond(&Method::GET, "/ready", &ok, ok.at)).await,
            (200, r#"{"ready":true}"#.into())
        );
    }

    #[tokio::test]
    async fn a_stale_verdict_is_neither_ready_nor_live() {
        let ok = verdict(Ok(()), Ok(()));
        let later = ok.at + Duration::from_secs(6);
        for path in ["/ready", "/live"] {
            let (code, text) = body(respond(&Method::GET, path, &ok, later)).await;
            assert_eq!(code, 503);
            assert!(text.contains("main loop has not run for 6s"), "{text}");
        }
    }

    #[tokio::test]
    async fn only_get_on_the_two_paths() {
        let ok = verdict(Ok(()), Ok(()));
        let r = respond(&Method::POST, "/ready", &ok, ok.at);
        assert_eq!(r.headers()[ALLOW], "GET");
        assert_eq!(body(r).await.0, 405);
        assert_eq!(body(respond(&Method::GET, "/", &ok, ok.at)).await.0, 404);
        assert_eq!(
            body(respond(&Method::GET, "/ready/x", &ok, ok.at)).await.0,
            404
        );
        let text = || "# EOF\n".to_owned();
        let r = exposition(&Method::GET, &text);
        assert_eq!(
            r.headers()[CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(body(r).await, (200, "# EOF\n".into()));
        assert_eq!(body(exposition(&Method::HEAD, &text)).await.0, 405);
    }
}

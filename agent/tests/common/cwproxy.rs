//! A recording, fault-injecting HTTP proxy in front of moto for CloudWatch Logs: moto enforces neither
//! the PutLogEvents size/count limits nor ever throttles, so this proxy checks every PutLogEvents the
//! agent sends against CloudWatch's limits and can answer with throttling, 5xx, AccessDenied, or a dead
//! network.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What the proxy does to the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// The next n PutLogEvents get `400 ThrottlingException`.
    Throttle(u32),
    /// The next n PutLogEvents get `503 ServiceUnavailableException`.
    Unavailable(u32),
    /// Every connection is closed without an answer (CloudWatch unreachable).
    Down,
    /// Every call of this operation (e.g. "CreateLogGroup") gets `400 AccessDeniedException`, as from a
    /// role whose policy lacks it.
    Denied(&'static str),
    /// Every PutLogEvents holding an event whose message contains this text gets
    /// `400 InvalidParameterException`, as for an event the service will never take.
    Invalid(&'static str),
}

/// One PutLogEvents call as the agent sent it.
#[derive(Debug, Clone)]
pub struct Put {
    pub group: String,
    pub stream: String,
    pub messages: Vec<String>,
    pub bytes: usize,
    /// Forwarded to moto and answered 200.
    pub accepted: bool,
}

#[derive(Debug)]
pub struct ProxyState {
    pub fault: Fault,
    /// Added before forwarding each PutLogEvents (widens the window between "sent" and "checkpointed").
    pub delay: Duration,
    pub puts: Vec<Put>,
    /// Every broken PutLogEvents limit, described.
    pub violations: Vec<String>,
    pub faults_served: u64,
}

pub struct CwProxy {
    pub port: u16,
    state: Arc<Mutex<ProxyState>>,
    stop: Arc<AtomicBool>,
}

/// Checks one PutLogEvents body against CloudWatch's limits; returns the problems.
pub fn check_limits(body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let events = body["logEvents"].as_array().cloned().unwrap_or_default();
    if events.is_empty() {
        out.push("empty batch".into());
    }
    if events.len() > 10_000 {
        out.push(format!("{} events (max 10,000)", events.len()));
    }
    let mut bytes = 0usize;
    let mut last = i64::MIN;
    let (mut first, mut max_ts) = (i64::MAX, i64::MIN);
    for (i, e) in events.iter().enumerate() {
        let msg = e["message"].as_str().unwrap_or_default();
        let ts = e["timestamp"].as_i64().unwrap_or_default();
        if msg.is_empty() {
            out.push(format!("event {i}: empty message"));
        }
        if msg.len() + 26 > 256 * 1024 {
            out.push(format!(
                "event {i}: {} bytes (max 256 KiB with overhead)",
                msg.len() + 26
            ));
        }
        if ts < last {
            out.push(format!(
                "event {i}: timestamp {ts} before {last} (not chronological)"
            ));
        }
        last = ts;
        first = first.min(ts);
        max_ts = max_ts.max(ts);
        bytes += msg.len() + 26;
    }
    if bytes > 1_048_576 {
        out.push(format!(
            "{bytes} bytes (max 1,048,576 counting 26 per event)"
        ));
    }
    if !events.is_empty() && max_ts - first >= 24 * 3600 * 1000 {
        out.push(format!("spans {} ms (max 24 h)", max_ts - first));
    }
    out
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let end = line == "\r\n";
        head.push_str(&line);
        if end {
            break;
        }
    }
    let len = header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((head, body))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn respond(w: &mut TcpStream, status: &str, kind: &str, body: &str) {
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-ErrorType: {kind}\r\nx-amzn-RequestId: proxy\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = w.write_all(text.as_bytes());
}

/// Sends the request to moto on a fresh connection and relays its answer; returns moto's status code.
fn forward(upstream: u16, head: &str, body: &[u8], client: &mut TcpStream) -> Option<u16> {
    let mut lines = head.lines();
    let mut out = format!("{}\r\n", lines.next()?);
    for l in lines.filter(|l| !l.is_empty()) {
        let k = l
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if k != "connection" {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut up = TcpStream::connect(("127.0.0.1", upstream)).ok()?;
    up.write_all(out.as_bytes()).ok()?;
    up.write_all(body).ok()?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp).ok()?;
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let rhead = String::from_utf8_lossy(&resp[..split]).into_owned();
    let rbody = &resp[split + 4..];
    let status: u16 = rhead.split_whitespace().nth(1)?.parse().ok()?;
    let mut reply = String::new();
    for (i, l) in rhead.lines().enumerate() {
        let k = l
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if i == 0
            || !matches!(
                k.as_str(),
                "connection" | "content-length" | "transfer-encoding"
            )
        {
            reply.push_str(l);
            reply.push_str("\r\n");
        }
    }
    reply.push_str(&format!("Content-Length: {}\r\n\r\n", rbody.len()));
    client.write_all(reply.as_bytes()).ok()?;
    client.write_all(rbody).ok()?;
    Some(status)
}

impl CwProxy {
    /// Starts the proxy in front of moto's port.
    pub fn start(upstream: u16) -> CwProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let port = listener.local_addr().expect("proxy addr").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let state = Arc::new(Mutex::new(ProxyState {
            fault: Fault::None,
            delay: Duration::ZERO,
            puts: Vec::new(),
            violations: Vec::new(),
            faults_served: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let st = st.clone();
                        let sp = sp.clone();
                        std::thread::spawn(move || serve(conn, upstream, st, sp));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        CwProxy { port, state, stop }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn state(&self) -> MutexGuard<'_, ProxyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_fault(&self, f: Fault) {
        self.state().fault = f;
    }

    /// Accepted PutLogEvents to this stream, in the order they were sent.
    pub fn accepted(&self, stream: &str) -> Vec<Put> {
        self.state()
            .puts
            .iter()
            .filter(|p| p.accepted && p.stream == stream)
            .cloned()
            .collect()
    }

    /// Panics listing every PutLogEvents limit the agent broke.
    pub fn assert_limits_kept(&self) {
        let s = self.state();
        assert!(
            s.violations.is_empty(),
            "PutLogEvents limits broken: {:#?}",
            s.violations
        );
        assert!(!s.puts.is_empty(), "no PutLogEvents seen");
    }
}

impl Drop for CwProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(conn: TcpStream, upstream: u16, state: Arc<Mutex<ProxyState>>, stop: Arc<AtomicBool>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    while !stop.load(Ordering::Relaxed) {
        let Some((head, body)) = read_request(&mut r) else {
            return;
        };
        let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
        if lock().fault == Fault::Down {
            let _ = w.shutdown(Shutdown::Both);
            return;
        }
        let target = header(&head, "x-amz-target").unwrap_or_default();
        let fault = lock().fault;
        if let Fault::Denied(op) = fault {
            if target.strip_suffix(op).is_some_and(|t| t.ends_with('.')) {
                lock().faults_served += 1;
                let body = format!(
                    r#"{{"__type":"AccessDeniedException","message":"User: arn:aws:sts::123456789012:assumed-role/node/i-0123456789abcdef0 is not authorized to perform: logs:{op} because no identity-based policy allows the logs:{op} action"}}"#
                );
                respond(&mut w, "400 Bad Request", "AccessDeniedException", &body);
                continue;
            }
        }
        let is_put = target.ends_with(".PutLogEvents");
        let mut record = None;
        if is_put {
            let json: Value = serde_json::from_slice(&body).unwrap_or_default();
            let problems = check_limits(&json);
            let messages: Vec<String> = json["logEvents"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                .collect();
            let put = Put {
                group: json["logGroupName"].as_str().unwrap_or_default().into(),
                stream: json["logStreamName"].as_str().unwrap_or_default().into(),
                bytes: messages.iter().map(|m| m.len() + 26).sum(),
                messages,
                accepted: false,
            };
            let mut s = lock();
            s.violations
                .extend(problems.into_iter().map(|p| format!("{}: {p}", put.stream)));
            // A canned error instead of forwarding: the fault that remains, and the answer.
            let canned = match s.fault {
                Fault::Throttle(n) if n > 0 => Some((
                    Fault::Throttle(n - 1),
                    "400 Bad Request",
                    "ThrottlingException",
                    r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
                )),
                Fault::Unavailable(n) if n > 0 => Some((
                    Fault::Unavailable(n - 1),
                    "503 Service Unavailable",
                    "ServiceUnavailableException",
                    r#"{"__type":"ServiceUnavailableException","message":"try again"}"#,
                )),
                Fault::Invalid(text) if put.messages.iter().any(|m| m.contains(text)) => Some((
                    s.fault,
                    "400 Bad Request",
                    "InvalidParameterException",
                    r#"{"__type":"InvalidParameterException","message":"Log event rejected: invalid content"}"#,
                )),
                _ => None,
            };
            if let Some((rest, status, kind, body)) = canned {
                s.fault = rest;
                s.faults_served += 1;
                s.puts.push(put);
                drop(s);
                respond(&mut w, status, kind, body);
                continue;
            }
            let delay = s.delay;
            s.puts.push(put);
            record = Some(s.puts.len() - 1);
            drop(s);
            std::thread::sleep(delay);
        }
        let status = forward(upstream, &head, &body, &mut w);
        if let (Some(i), Some(200)) = (record, status) {
            lock().puts[i].accepted = true;
        }
        if status.is_none() {
            return;
        }
    }
}

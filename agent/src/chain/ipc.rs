//! JSON-RPC to geth over its IPC socket: one call, one answer, bounded in size and time.

use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Io(String),
    #[error("JSON-RPC {method}: {message}")]
    Rpc { method: String, message: String },
}

const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// One JSON-RPC call over a geth IPC socket.
pub async fn ipc_call(path: &Path, method: &str, params: Value) -> Result<Value, ProbeError> {
    ipc_call_within(path, method, params, RPC_TIMEOUT).await
}

/// [`ipc_call`] with its own time limit (an export takes as long as the blocks it writes).
pub async fn ipc_call_within(
    path: &Path,
    method: &str,
    params: Value,
    limit: Duration,
) -> Result<Value, ProbeError> {
    let io = |e: std::io::Error| ProbeError::Io(format!("IPC {}: {e}", path.display()));
    let call = async {
        let mut sock = tokio::net::UnixStream::connect(path).await.map_err(io)?;
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let mut bytes = serde_json::to_vec(&req).unwrap_or_default();
        bytes.push(b'\n');
        sock.write_all(&bytes).await.map_err(io)?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            let n = sock.read(&mut chunk).await.map_err(io)?;
            if n == 0 {
                return Err(ProbeError::Io(format!(
                    "IPC {}: closed before answering",
                    path.display()
                )));
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > 1 << 20 {
                return Err(ProbeError::Io(format!(
                    "IPC {}: answer too large",
                    path.display()
                )));
            }
            // geth writes one JSON value per answer; parse as soon as it is complete.
            let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
            match it.next() {
                Some(Ok(v)) => return Ok(v),
                Some(Err(e)) if e.is_eof() => continue,
                Some(Err(e)) => {
                    return Err(ProbeError::Io(format!(
                        "IPC {}: bad JSON: {e}",
                        path.display()
                    )))
                }
                None => continue,
            }
        }
    };
    let answer = tokio::time::timeout(limit, call).await.map_err(|_| {
        ProbeError::Io(format!(
            "IPC {}: no answer within {}s",
            path.display(),
            limit.as_secs()
        ))
    })??;
    rpc_result(method, answer)
}

/// The `result` of a JSON-RPC answer, or its error.
pub fn rpc_result(method: &str, answer: Value) -> Result<Value, ProbeError> {
    if let Some(e) = answer.get("error") {
        let message = e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("error")
            .to_owned();
        return Err(ProbeError::Rpc {
            method: method.into(),
            message,
        });
    }
    answer
        .get("result")
        .cloned()
        .ok_or_else(|| ProbeError::Rpc {
            method: method.into(),
            message: "answer has no result".into(),
        })
}

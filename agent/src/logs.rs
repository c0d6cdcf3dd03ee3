//! The log pipeline: every child's stdout and stderr, line by line, into its own file under the log
//! directory. One writer task per child owns the file, so lines from both streams never interleave
//! mid-line.

use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// Longest line kept whole; longer ones are split into pieces of this size rather than dropped.
pub const MAX_LINE: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("cannot open log file {path}: {source}")]
pub struct LogError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Where one child's lines go. Cheap to clone: one per output stream.
#[derive(Clone)]
pub struct LineSink {
    tx: mpsc::Sender<Vec<u8>>,
}

/// Opens (appending) the child's log file and starts its writer task.
pub async fn open(path: &Path) -> Result<(LineSink, tokio::task::JoinHandle<()>), LogError> {
    let err = |source| LogError {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(err)?;
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(err)?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
    let file_name = path.display().to_string();
    let task = tokio::spawn(async move {
        let mut failed = 0u64;
        while let Some(mut line) = rx.recv().await {
            line.push(b'\n');
            if file.write_all(&line).await.is_err() {
                // A full disk must not stop the child: count and go on.
                failed += 1;
                if failed.is_power_of_two() {
                    tracing::warn!(file = %file_name, failed, "cannot write log lines");
                }
            }
        }
        let _ = file.flush().await;
    });
    Ok((LineSink { tx }, task))
}

impl LineSink {
    /// Forwards every line of `reader` until EOF. Splits over-long lines; keeps invalid UTF-8 as is.
    pub async fn pump(self, reader: impl AsyncRead + Unpin) {
        let mut reader = BufReader::with_capacity(64 * 1024, reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = match tokio::io::AsyncReadExt::take(&mut reader, MAX_LINE as u64)
                .read_until(b'\n', &mut line)
                .await
            {
                Ok(n) => n,
                Err(_) => break,
            };
            if n == 0 {
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            if self.tx.send(std::mem::take(&mut line)).await.is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_from_two_streams_arrive_whole_and_long_lines_are_split_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/geth.log");
        let (sink, task) = open(&path).await.unwrap();
        let long = vec![b'x'; MAX_LINE + 10];
        let mut a = b"one\r\ntwo\n".to_vec();
        a.extend_from_slice(&long);
        a.push(b'\n');
        let b: &[u8] = b"\xff\xfeinvalid utf8\nlast without newline";
        sink.clone().pump(&a[..]).await;
        sink.pump(b).await;
        task.await.unwrap();
        let text = std::fs::read(&path).unwrap();
        let lines: Vec<&[u8]> = text.split(|c| *c == b'\n').collect();
        assert_eq!(lines[0], b"one");
        assert_eq!(lines[1], b"two");
        assert_eq!(lines[2].len(), MAX_LINE);
        assert_eq!(lines[3].len(), 10);
        assert_eq!(lines[4], b"\xff\xfeinvalid utf8");
        assert_eq!(lines[5], b"last without newline");
    }
}

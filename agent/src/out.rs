//! A command's output on stdout. A reader that goes away early (`node-agent check --json | head`) ends the
//! output quietly, as it does for other Unix tools, instead of a panic: Rust ignores SIGPIPE, so `print!`
//! would panic on EPIPE, and restoring SIGPIPE would kill the long-running agent on any closed pipe.

use std::io::Write;

/// Standard output could not be written, for a reason other than its reader going away.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output: {0}")]
pub struct StdoutError(#[from] std::io::Error);

/// Writes `text` to stdout and flushes it. `Ok(false)` when the reader has gone (EPIPE): the caller stops
/// printing and ends as if it had printed everything.
pub fn print(text: impl AsRef<[u8]>) -> Result<bool, StdoutError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_ref()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(StdoutError(e)),
    }
}

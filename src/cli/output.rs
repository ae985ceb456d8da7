//! Lines to stdout (and stderr) that never panic when the reader has gone away.
//!
//! Rust starts every program with SIGPIPE ignored, so writing into a pipe whose reader has
//! exited fails with `EPIPE` instead of killing the process — and `println!` turns that
//! failure into a panic ("failed printing to stdout: Broken pipe"). `dhtnode bootstrap --json |
//! head -3` is ordinary use, not an error: the reader has all it wanted. So commands print
//! through [`line`] / [`json_line`], which report a closed stdout as the value
//! `Err(`[`Closed`]`)` for the command to act on (a node stops the way SIGTERM stops it, a
//! one-shot command finishes quietly), and keep real I/O failures (a full disk behind `>
//! file`) as errors.
//!
//! ```ignore
//! // `?` passes real I/O errors up; `Err(Closed)` is the reader having left.
//! if output::line(format_args!("{peer}"))?.is_err() {
//!     break; // nobody reads any more: stop producing output
//! }
//! ```
//!
//! Once stdout is found closed it stays closed: later calls return `Err(Closed)` at once
//! without writing, so a command may keep calling them on its way out.

use std::fmt::Display;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Stdout's reader has gone away (`EPIPE`): the expected end of a `| head` pipeline, not a
/// failure. Stop writing and finish as usual (exit 0, or the command's normal status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed by its reader")
    }
}

impl std::error::Error for Closed {}

/// The outcome of one write to stdout: `Ok(())` written, `Err(Closed)` nobody reads any more.
/// Real I/O failures are the outer `io::Result` of [`line`] and [`json_line`].
pub type Written = Result<(), Closed>;

/// Set once a write met `EPIPE`; later writes are skipped.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `s` and a newline to stdout and flushes, so the line reaches a pipe at once.
///
/// `Ok(Err(Closed))` if the reader has closed the pipe (now or at an earlier call), `Err` for
/// any other I/O failure. Takes anything `Display`: a `&str`, a `String` or
/// `format_args!(...)` (which formats without allocating).
pub fn line(s: impl Display) -> io::Result<Written> {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return Ok(Err(Closed));
    }
    let mut out = io::stdout().lock();
    match writeln!(out, "{s}").and_then(|()| out.flush()) {
        Ok(()) => Ok(Ok(())),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
            Ok(Err(Closed))
        }
        Err(e) => Err(e),
    }
}

/// Writes `v` as one line of JSON to stdout, like [`line`]; a value that cannot be
/// serialized is an `Err` (of kind `InvalidData`).
pub fn json_line(v: &impl serde::Serialize) -> io::Result<Written> {
    line(serde_json::to_string(v)?)
}

/// Writes `s` and a newline to stderr, ignoring failure: `eprintln!` without its panic when
/// stderr is closed (`2>&1 | head`), since there is nowhere left to report that failure.
pub fn err_line(s: impl Display) {
    let _ = writeln!(io::stderr().lock(), "{s}");
}

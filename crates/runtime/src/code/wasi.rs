//! WASI 0.2 for components (CONTRACT.md §13), sandboxed: no preopened
//! directory, no network, an empty environment and argument list, no stdin;
//! clocks and random work. Each line a guest writes to stdout or stderr goes
//! into the node's log (`info` and `warn`) with the module's name — never into
//! a bounded buffer whose writes could fail (a guest's `println!` panics when
//! its write fails).
//!
//! A store gets its WASI context the first time a WASI import runs
//! ([`super::host::HostState`]'s `WasiView`), so core modules and components
//! that import no WASI pay nothing for it.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

/// The longest line kept whole: a guest writing more without a newline has
/// it logged in pieces of this size.
const MAX_LINE: usize = 16 << 10;

/// One store's WASI context and the resources (streams) its guest holds.
pub(crate) struct WasiState {
    pub(crate) ctx: WasiCtx,
    pub(crate) table: ResourceTable,
}

impl WasiState {
    /// The sandbox of the module `module`'s store.
    pub(crate) fn new(module: &Arc<str>) -> WasiState {
        let mut builder = WasiCtxBuilder::new();
        builder.stdout(GuestOutput::new(module, Stream::Stdout)).stderr(GuestOutput::new(module, Stream::Stderr));
        WasiState { ctx: builder.build(), table: ResourceTable::new() }
    }
}

impl std::fmt::Debug for WasiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasiState").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// A guest's stdout or stderr: whole lines into the log. Every stream the
/// guest opens on it shares the line being written.
#[derive(Debug, Clone)]
struct GuestOutput {
    module: Arc<str>,
    stream: Stream,
    line: Arc<Mutex<Lines>>,
}

impl GuestOutput {
    fn new(module: &Arc<str>, stream: Stream) -> GuestOutput {
        GuestOutput { module: Arc::clone(module), stream, line: Arc::default() }
    }

    fn write(&self, bytes: &[u8]) {
        let mut lines = self.line.lock().unwrap_or_else(PoisonError::into_inner);
        lines.push(bytes, |line| self.log(line));
    }

    fn log(&self, line: &str) {
        let module = &*self.module;
        match self.stream {
            Stream::Stdout => tracing::info!(target: "zest::guest", module, stream = "stdout", "{line}"),
            Stream::Stderr => tracing::warn!(target: "zest::guest", module, stream = "stderr", "{line}"),
        }
    }
}

/// Bytes written so far of a line not yet ended.
#[derive(Debug, Default)]
struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Adds `bytes`, handing `emit` each line they end (without its newline,
    /// invalid UTF-8 replaced), and a line's first [`MAX_LINE`] bytes when it
    /// grows past them.
    fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&str)) {
        while !bytes.is_empty() {
            let end = bytes.iter().position(|&b| b == b'\n');
            let room = MAX_LINE - self.partial.len();
            let take = end.unwrap_or(bytes.len()).min(room);
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let ended = bytes.first() == Some(&b'\n');
            if ended || self.partial.len() == MAX_LINE {
                let line = self.partial.strip_suffix(b"\r").unwrap_or(&self.partial);
                emit(&String::from_utf8_lossy(line));
                self.partial.clear();
                if ended {
                    bytes = &bytes[1..];
                }
            }
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        GuestOutput::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(1 << 20)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        bytes: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        GuestOutput::write(&self, bytes);
        std::task::Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(writes: &[&[u8]]) -> (Vec<String>, Vec<u8>) {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for bytes in writes {
            lines.push(bytes, |line| out.push(line.to_string()));
        }
        (out, lines.partial)
    }

    #[test]
    fn writes_become_whole_lines_whatever_their_pieces() {
        let (lines, rest) = lines_of(&[b"hel", b"lo\nwor", b"ld\r\n\n", b"tail"]);
        assert_eq!(lines, ["hello", "world", ""]);
        assert_eq!(rest, b"tail", "an unended line waits for its end");
    }

    #[test]
    fn a_line_past_the_limit_is_logged_in_pieces_and_nothing_is_refused() {
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let (lines, rest) = lines_of(&[&long, b"\n"]);
        assert_eq!(lines.iter().map(String::len).collect::<Vec<_>>(), [MAX_LINE, MAX_LINE, 5]);
        assert!(rest.is_empty());
        let (lines, _) = lines_of(&[&[0xff, b'a', b'\n']]);
        assert_eq!(lines, ["\u{fffd}a"], "invalid UTF-8 is replaced, not dropped");
    }
}

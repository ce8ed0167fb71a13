//! Decompression on its own thread: a producer reads the decoded stream in chunks and hands them to the unpacker
//! through a bounded channel, so that zstd works on one core while the unpacker hashes, writes and links on
//! another. At most [`DEPTH`] chunks of [`CHUNK`] bytes are in flight (plus one each side), whatever the archive.
//! An error of the stream reaches the unpacker as the same `io::Error`, in its place; an unpacker that stops
//! early (a refusal) drops its end, and the producer stops at its next chunk.

use std::io::{self, Read};
use std::sync::mpsc;
use std::thread::Scope;

/// Bytes per chunk.
const CHUNK: usize = 256 << 10;
/// Chunks queued between the threads.
const DEPTH: usize = 4;

/// The unpacker's end: reads what the producer decoded, in order.
pub(super) struct Piped {
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    /// Emptied chunks go back to the producer for reuse.
    spare: mpsc::SyncSender<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
    done: bool,
}

/// Starts reading `input` on a thread of `scope`; returns the end to read from.
pub(super) fn spawn<'scope, R: Read + Send + 'scope>(scope: &'scope Scope<'scope, '_>, mut input: R) -> Piped {
    let (tx, chunks) = mpsc::sync_channel::<io::Result<Vec<u8>>>(DEPTH);
    let (spare, spares) = mpsc::sync_channel::<Vec<u8>>(DEPTH + 2);
    scope.spawn(move || loop {
        let mut buf = spares.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        buf.resize(CHUNK, 0);
        let mut filled = 0;
        let result = loop {
            match input.read(&mut buf[filled..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    filled += n;
                    if filled == CHUNK {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        buf.truncate(filled);
        let end = filled < CHUNK;
        if filled > 0 && tx.send(Ok(buf)).is_err() {
            return;
        }
        match result {
            // An empty chunk says the stream ended.
            Ok(()) if end => {
                let _ = tx.send(Ok(Vec::new()));
                return;
            }
            Ok(()) => {}
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    });
    Piped { chunks, spare, current: Vec::new(), at: 0, done: false }
}

impl Read for Piped {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            if self.done || out.is_empty() {
                return Ok(0);
            }
            let next = match self.chunks.recv() {
                Ok(Ok(chunk)) => chunk,
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // The producer is gone without saying why: it panicked.
                Err(_) => {
                    self.done = true;
                    return Err(io::Error::other("the decompression thread stopped"));
                }
            };
            if next.is_empty() {
                self.done = true;
            }
            let used = std::mem::replace(&mut self.current, next);
            let _ = self.spare.try_send(used);
            self.at = 0;
        }
        let n = out.len().min(self.current.len() - self.at);
        out[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields `data` in reads of odd sizes, then fails with `fail` if given.
    struct Odd {
        data: Vec<u8>,
        at: usize,
        fail: Option<io::ErrorKind>,
    }

    impl Read for Odd {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() {
                return match self.fail {
                    Some(kind) => Err(io::Error::new(kind, "broken")),
                    None => Ok(0),
                };
            }
            let n = out.len().min(self.data.len() - self.at).min(7919);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn passes_every_byte_in_order() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 12345] {
            let data = data(len);
            let got = std::thread::scope(|s| {
                let mut out = Vec::new();
                spawn(s, Odd { data: data.clone(), at: 0, fail: None }).read_to_end(&mut out).unwrap();
                out
            });
            assert_eq!(got, data, "length {len}");
        }
    }

    #[test]
    fn an_error_arrives_after_the_bytes_before_it() {
        let data = data(3 * CHUNK + 5);
        std::thread::scope(|s| {
            let mut p = spawn(s, Odd { data: data.clone(), at: 0, fail: Some(io::ErrorKind::UnexpectedEof) });
            let mut got = vec![0; data.len()];
            p.read_exact(&mut got).unwrap();
            assert_eq!(got, data);
            let e = p.read(&mut [0; 16]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
            assert_eq!(p.read(&mut [0; 16]).unwrap(), 0, "nothing after the error");
        });
    }

    #[test]
    fn a_reader_that_stops_early_stops_the_producer() {
        // An endless input: the scope can only end if the producer notices that its reader is gone.
        struct Endless;
        impl Read for Endless {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                out.fill(1);
                Ok(out.len())
            }
        }
        std::thread::scope(|s| {
            let mut p = spawn(s, Endless);
            let mut got = [0; 1000];
            p.read_exact(&mut got).unwrap();
            drop(p);
        });
    }
}

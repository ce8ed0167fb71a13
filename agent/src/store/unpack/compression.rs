//! The compression around the tar stream: zstd only, with a bounded window; any other format (gzip, bzip2, xz,
//! lz4, zip, a plain tar) is named in the refusal, and the decoder's errors say what they mean for the archive.

use std::io::{self, Read};

use super::{Limits, Refusal, UnpackError};

/// What a stream that does not start like zstd is, when its first bytes say so.
pub(super) fn not_zstd(head: &[u8]) -> Option<&'static str> {
    const ZSTD: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    // Skippable frames (0x184D2A50..5F, little-endian) may come first in a zstd stream.
    let skippable = head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18];
    if head.len() < 4 || head.starts_with(&ZSTD) || skippable {
        return None;
    }
    Some(if head.starts_with(&[0x1f, 0x8b]) {
        "a gzip stream (.tar.gz)"
    } else if head.starts_with(b"BZh") {
        "a bzip2 stream (.tar.bz2)"
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        "an xz stream (.tar.xz)"
    } else if head.starts_with(&[0x04, 0x22, 0x4d, 0x18]) {
        "an lz4 stream"
    } else if head.starts_with(b"PK\x03\x04") {
        "a zip archive"
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        "an uncompressed tar archive"
    } else {
        // Unknown bytes: zstd itself says what is wrong with them (the stream is corrupt).
        return None;
    })
}

/// The zstd decoder's errors, as what they mean for the archive.
pub(super) struct ZstdErrors<'a, R> {
    pub(super) inner: R,
    pub(super) limits: &'a Limits,
}

impl<R: Read> Read for ZstdErrors<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let text = e.to_string();
            if text.contains("too much memory") || text.contains("indowLog") {
                io::Error::new(io::ErrorKind::OutOfMemory, format!("window over {}", self.limits.max_window))
            } else if text.contains("incomplete frame") || e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(io::ErrorKind::UnexpectedEof, "the zstd stream ends inside a frame")
            } else {
                io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {text}"))
            }
        })
    }
}

pub(super) fn zstd_error(e: io::Error, limits: &Limits) -> UnpackError {
    let reason = match e.kind() {
        io::ErrorKind::OutOfMemory => Refusal::WindowTooLarge { max: limits.max_window },
        io::ErrorKind::UnexpectedEof => Refusal::Truncated { what: e.to_string() },
        _ => Refusal::Corrupt { what: e.to_string() },
    };
    UnpackError { entry: None, offset: None, reason, source: Some(e) }
}

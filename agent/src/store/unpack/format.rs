//! The tar format, read by hand: 512-byte blocks, headers (v7, ustar with its prefix, GNU, PAX), numeric fields
//! (octal, or base-256 for large values), checksums (unsigned, or the signed sum some old tools wrote), PAX
//! records and the end of the archive. It knows offsets, so every refusal can say where; it decides nothing about
//! what may be written (that is the unpacker's).
//!
//! Which entry types carry data follows POSIX and GNU tar: links (`1`, `2`), directories (`5`, and old-style
//! regular entries whose name ends in `/`), devices and FIFOs carry none, whatever their size field says.

use std::io::{self, Read};

pub const BLOCK: usize = 512;

/// One header block, where it was read, and its fields.
#[derive(Clone)]
pub struct Header {
    pub block: [u8; BLOCK],
    /// Byte offset of the header in the (uncompressed) archive.
    pub offset: u64,
}

impl Header {
    pub fn typeflag(&self) -> u8 {
        self.block[156]
    }

    fn ustar(&self) -> bool {
        &self.block[257..263] == b"ustar\0"
    }

    /// The name, with the ustar prefix (`prefix/name`) when the header is POSIX ustar.
    pub fn name(&self) -> Vec<u8> {
        let name = cstr(&self.block[..100]);
        if self.ustar() {
            let prefix = cstr(&self.block[345..500]);
            if !prefix.is_empty() {
                let mut out = prefix.to_vec();
                out.push(b'/');
                out.extend_from_slice(name);
                return out;
            }
        }
        name.to_vec()
    }

    pub fn linkname(&self) -> Vec<u8> {
        cstr(&self.block[157..257]).to_vec()
    }

    pub fn size(&self) -> Result<u64, &'static str> {
        numeric(&self.block[124..136]).ok_or("size")
    }

    pub fn mode(&self) -> Result<u32, &'static str> {
        numeric(&self.block[100..108]).map(|m| (m & 0o7777) as u32).ok_or("mode")
    }

    /// Whether the checksum matches: the sum of the header's bytes with the checksum field as spaces, unsigned
    /// as POSIX says, or signed as some old tools (and GNU tar's reader) also accept.
    pub fn checksum_ok(&self) -> bool {
        let Some(stored) = numeric(&self.block[148..156]) else { return false };
        let (mut unsigned, mut signed) = (0u64, 0i64);
        for (i, &b) in self.block.iter().enumerate() {
            let b = if (148..156).contains(&i) { b' ' } else { b };
            unsigned += u64::from(b);
            signed += i64::from(b as i8);
        }
        stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed)
    }
}

/// The bytes of a NUL-terminated field (all of it when it has no NUL).
fn cstr(field: &[u8]) -> &[u8] {
    field.iter().position(|b| *b == 0).map_or(field, |n| &field[..n])
}

/// A numeric field, read as GNU tar reads it: optional leading spaces, then octal digits up to a space or a NUL
/// (what follows that terminator is ignored; a field that starts with a NUL is 0), or base-256 (first byte 0x80)
/// for values that do not fit. `None`: not a number, or negative.
pub fn numeric(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] != 0x80 {
            return None;
        }
        return field[1..].iter().try_fold(0u64, |n, &b| n.checked_mul(256)?.checked_add(u64::from(b)));
    }
    let start = field.iter().position(|b| *b != b' ').unwrap_or(field.len());
    let rest = &field[start..];
    let end = rest.iter().position(|b| *b == b' ' || *b == 0).unwrap_or(rest.len());
    rest[..end].iter().try_fold(0u64, |n, &b| {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        n.checked_mul(8)?.checked_add(u64::from(b - b'0'))
    })
}

/// Reads blocks and data, counting the offset.
pub struct Blocks<R> {
    inner: R,
    pub offset: u64,
}

/// How a read ended short.
#[derive(Debug)]
pub enum Short {
    /// The stream ended (after `got` of the bytes wanted).
    End {
        got: u64,
    },
    Io(io::Error),
}

impl<R: Read> Blocks<R> {
    pub fn new(inner: R) -> Blocks<R> {
        Blocks { inner, offset: 0 }
    }

    /// Fills `buf` completely, or says how far it got.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), Short> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => return Err(Short::End { got: got as u64 }),
                Ok(n) => {
                    got += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Short::Io(e)),
            }
        }
        Ok(())
    }

    /// The next block; `Ok(None)` when the stream ends exactly at a block boundary.
    pub fn block(&mut self) -> Result<Option<[u8; BLOCK]>, Short> {
        let mut b = [0u8; BLOCK];
        match self.fill(&mut b) {
            Ok(()) => Ok(Some(b)),
            Err(Short::End { got: 0 }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads `size` bytes of data into `sink` (piece by piece) and the padding to the next block.
    pub fn data(&mut self, size: u64, sink: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> Result<(), DataError> {
        let mut buf = vec![0u8; (64 << 10).min(size.max(1) as usize).max(BLOCK)];
        let mut left = size;
        while left > 0 {
            let n = buf.len().min(left as usize);
            self.fill(&mut buf[..n]).map_err(|e| match e {
                Short::End { got } => DataError::Short(Short::End { got: size - left + got }),
                other => DataError::Short(other),
            })?;
            sink(&buf[..n]).map_err(DataError::Sink)?;
            left -= n as u64;
        }
        let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
        if pad > 0 {
            self.fill(&mut buf[..pad]).map_err(|e| match e {
                // A stream cut inside the padding after the last data: still a cut stream.
                Short::End { .. } => DataError::Short(Short::End { got: size }),
                other => DataError::Short(other),
            })?;
        }
        Ok(())
    }

    /// Skips `size` bytes of data and their padding.
    pub fn skip(&mut self, size: u64) -> Result<(), DataError> {
        self.data(size, &mut |_| Ok(()))
    }
}

#[derive(Debug)]
pub enum DataError {
    Short(Short),
    Sink(io::Error),
}

/// One PAX record: `LENGTH KEY=VALUE\n`, where LENGTH counts the whole record.
pub struct PaxRecord<'a> {
    pub key: &'a str,
    pub value: &'a [u8],
}

/// Parses PAX extended header data strictly (as GNU tar does): a record without its newline, with a length that
/// does not fit, or without `=`, is malformed. The error says at which byte of the data.
pub fn pax_records(data: &[u8]) -> Result<Vec<PaxRecord<'_>>, usize> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        // Some writers pad the data with NULs.
        if data[at..].iter().all(|b| *b == 0) {
            break;
        }
        let rest = &data[at..];
        let sp = rest.iter().position(|b| *b == b' ').ok_or(at)?;
        let len: usize = std::str::from_utf8(&rest[..sp]).ok().and_then(|s| s.parse().ok()).ok_or(at)?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(at);
        }
        let body = &rest[sp + 1..len - 1];
        let eq = body.iter().position(|b| *b == b'=').ok_or(at)?;
        let key = std::str::from_utf8(&body[..eq]).map_err(|_| at)?;
        if key.is_empty() {
            return Err(at);
        }
        out.push(PaxRecord { key, value: &body[eq + 1..] });
        at += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_fields() {
        assert_eq!(numeric(b"0000644\0"), Some(0o644));
        assert_eq!(numeric(b"   644 \0"), Some(0o644));
        assert_eq!(numeric(b"\0\0\0\0\0\0\0\0"), Some(0));
        assert_eq!(numeric(b"        "), Some(0));
        assert_eq!(numeric(b"12x4\0"), None);
        // Up to the terminator; what follows it is not read (old tools left junk there).
        assert_eq!(numeric(b"4324\x0036\x00"), Some(0o4324));
        assert_eq!(numeric(b"\0\0\0\0\0\0\x000016\x00"), Some(0), "a field that starts with NUL is empty");
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[11] = 5;
        big[10] = 1;
        assert_eq!(numeric(&big), Some(261));
        assert_eq!(numeric(&[0xff; 12]), None);
    }

    #[test]
    fn pax_records_are_strict() {
        let ok = pax_records(b"13 path=name\n8 a=bcd\n").unwrap();
        assert_eq!((ok[0].key, ok[0].value), ("path", &b"name"[..]));
        assert_eq!(pax_records(b"13 path=name").err(), Some(0), "no trailing newline");
        assert_eq!(pax_records(b"99 path=name\n").err(), Some(0));
        assert_eq!(pax_records(b"12 pathname\n").err(), Some(0));
        assert_eq!(pax_records(b"13 path=name\n8 x=yz\n").err(), Some(13));
        // A value may hold newlines and NULs: the length says where it ends.
        let v = pax_records(b"16 SCHILY.x=a\nb\n").unwrap();
        assert_eq!(v[0].value, b"a\nb");
    }

    #[test]
    fn signed_checksums_are_accepted() {
        let mut h = Header { block: [0u8; BLOCK], offset: 0 };
        h.block[..3].copy_from_slice(b"\xe9t\xe9");
        h.block[156] = b'0';
        let unsigned: u64 = h.block.iter().map(|b| u64::from(*b)).sum::<u64>() + 8 * 32;
        let signed: i64 = h.block.iter().map(|b| i64::from(*b as i8)).sum::<i64>() + 8 * 32;
        for sum in [unsigned as i64, signed] {
            h.block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            assert!(h.checksum_ok(), "{sum}");
        }
        h.block[148..156].copy_from_slice(b"000001\0 ");
        assert!(!h.checksum_ok());
    }
}

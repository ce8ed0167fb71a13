//! Byte-level mutations of a tar stream: header fields set to interesting values, bit flips, insertions,
//! deletions, duplicated and swapped blocks; then, mostly, repaired checksums so that the mutation reaches the
//! parser instead of its checksum test.

use super::case::G;
use crate::tarw::{fix_checksums, Tar};

/// Byte-level mutations, mostly aimed at header fields, then (mostly) repaired checksums.
pub(super) fn mutate(g: &mut G, out: &mut Tar) {
    let k = g.rng.usize(1..=6);
    for _ in 0..k {
        if out.bytes.is_empty() {
            return;
        }
        let len = out.bytes.len();
        let what = match g.rng.u32(0..100) {
            0..=44 if !out.headers.is_empty() => {
                let h = g.pick(&out.headers);
                let (start, end) = g.pick(&[
                    (0, 100),
                    (100, 108),
                    (124, 136),
                    (156, 157),
                    (157, 257),
                    (257, 265),
                    (345, 500),
                    (329, 345),
                ]);
                let at = h + g.rng.usize(start..end);
                if at < len {
                    out.bytes[at] = g.pick(b"\0/.7 \x80\xff0125xgLKS");
                }
                format!("set byte {at}")
            }
            45..=59 if !out.headers.is_empty() => {
                let h = g.pick(&out.headers);
                let value: &[u8] = g.pick(&[
                    b"77777777777\0".as_slice(),
                    b"\x80\0\0\0\0\0\0\x01\0\0\0\0",
                    b"00000001000\0",
                    b"0\0",
                    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
                ]);
                // Header offsets go stale after insertions, deletions and cuts: aim only inside the stream.
                let at = (h + 124).min(len);
                let n = value.len().min(len - at);
                out.bytes[at..at + n].copy_from_slice(&value[..n]);
                format!("size field of header at {h}")
            }
            60..=74 => {
                let at = g.rng.usize(0..len);
                out.bytes[at] ^= 1 << g.rng.u32(0..8);
                format!("flip a bit at {at}")
            }
            75..=82 => {
                let at = g.rng.usize(0..=len);
                let n = g.pick(&[1, 7, 512, 100]);
                let junk = g.bytes(n);
                out.bytes.splice(at..at, junk);
                format!("insert {n} bytes at {at}")
            }
            83..=90 => {
                let at = g.rng.usize(0..len);
                let n = g.rng.usize(1..=(len - at).min(1024));
                out.bytes.drain(at..at + n);
                format!("delete {n} bytes at {at}")
            }
            91..=95 if len >= 512 => {
                let from = g.rng.usize(0..len / 512) * 512;
                let n = 512 * g.rng.usize(1..4);
                let chunk = out.bytes[from..(from + n).min(len)].to_vec();
                let to = g.rng.usize(0..=len / 512) * 512;
                out.bytes.splice(to..to, chunk);
                format!("copy blocks at {from} to {to}")
            }
            _ if len >= 1024 => {
                let a = g.rng.usize(0..len / 512) * 512;
                let b = g.rng.usize(0..len / 512) * 512;
                if a != b {
                    let (lo, hi) = (a.min(b), a.max(b));
                    let (left, right) = out.bytes.split_at_mut(hi);
                    left[lo..lo + 512].swap_with_slice(&mut right[..512]);
                }
                format!("swap blocks at {a} and {b}")
            }
            _ => "nothing".into(),
        };
        g.note(format!("  mutation: {what}"));
    }
    if g.chance(80) {
        fix_checksums(&mut out.bytes);
        g.note("  checksums repaired".into());
    }
}

//! How a case's tar bytes are fed: as plain tar, or compressed with zstd in one frame, in two, behind a skippable
//! frame, with a content checksum (corrupted, for cases that may be refused), with the compressed bytes
//! mutated, or as noise.

use std::io::Write;

use super::case::G;
use super::sandbox::Feed;

/// Wraps the tar bytes for one of the two entry points. Benign archives only get valid wrappings.
pub(super) fn pack(g: &mut G, tar: Vec<u8>, valid: bool) -> (Feed, Vec<u8>) {
    let roll = if valid { g.rng.u32(0..94) } else { g.rng.u32(0..100) };
    let level = g.pick(&[-5, 1, 1, 1, 3]);
    let zst = |tar: &[u8]| zstd::encode_all(tar, level).unwrap();
    match roll {
        0..=34 => {
            g.note("fed as plain tar".into());
            (Feed::Tar, tar)
        }
        35..=79 => {
            g.note(format!("fed as one zstd frame (level {level})"));
            (Feed::Zst, zst(&tar))
        }
        80..=86 => {
            let cut = g.rng.usize(0..=tar.len());
            g.note(format!("fed as two zstd frames split at {cut}"));
            let mut out = zst(&tar[..cut]);
            out.extend(zst(&tar[cut..]));
            (Feed::Zst, out)
        }
        87..=90 => {
            let n = g.rng.usize(0..64);
            g.note(format!("fed as zstd behind a skippable frame of {n} bytes"));
            let mut out = (0x184d_2a50u32 + g.rng.u32(0..16)).to_le_bytes().to_vec();
            out.extend((n as u32).to_le_bytes());
            out.extend(g.bytes(n));
            out.extend(zst(&tar));
            (Feed::Zst, out)
        }
        91..=93 => {
            g.note("fed as zstd with a content checksum".into());
            let mut enc = zstd::stream::Encoder::new(Vec::new(), level).unwrap();
            enc.include_checksum(true).unwrap();
            enc.write_all(&tar).unwrap();
            let mut out = enc.finish().unwrap();
            if !valid {
                let n = out.len();
                out[n - 1 - g.rng.usize(0..4)] ^= 1 << g.rng.u32(0..8);
                g.note("  with the checksum corrupted".into());
            }
            (Feed::Zst, out)
        }
        94..=97 => {
            let mut out = zst(&tar);
            let k = g.rng.usize(1..5);
            for _ in 0..k {
                if out.is_empty() {
                    break;
                }
                match g.rng.u32(0..4) {
                    0 => out.truncate(g.rng.usize(0..out.len())),
                    1 => {
                        let i = g.rng.usize(0..out.len());
                        out.insert(i, g.rng.u8(..));
                    }
                    2 => {
                        out.remove(g.rng.usize(0..out.len()));
                    }
                    _ => {
                        let i = g.rng.usize(0..out.len());
                        out[i] = g.rng.u8(..);
                    }
                }
            }
            g.note(format!("fed as zstd with {k} byte mutations of the compressed stream"));
            (Feed::Zst, out)
        }
        _ => {
            let mut out = if g.chance(50) { vec![0x28, 0xb5, 0x2f, 0xfd] } else { Vec::new() };
            let n = g.rng.usize(0..256);
            out.extend(g.bytes(n));
            g.note(format!("fed to zstd as {} bytes of noise", out.len()));
            (Feed::Zst, out)
        }
    }
}

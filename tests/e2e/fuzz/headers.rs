//! Header blocks field by field: modes with setuid, setgid and sticky; numeric fields in octal, base-256 and
//! garbage; bad, signed and missing checksums; PAX bodies with sound and refused keys, malformed records;
//! extension records with sizes that lie; and single headers of random bytes.

use super::case::{shown, G};
use super::hostile::end;
use super::names::hostile_name;
use crate::tarw::{base256, hdr, octal, pax_record, put, set_checksum, Format, Hdr, Tar};

/// A mode: the usual ones, the dangerous bits, anything in 12 bits, and more than fits.
pub(super) fn hostile_mode(g: &mut G) -> u64 {
    match g.rng.u32(0..100) {
        0..=49 => g.pick(&[0o644, 0o755, 0o4755, 0o2755, 0o6777, 0o1777, 0o7777, 0o777, 0, 0o666, 0o200, 0o022]),
        50..=89 => g.rng.u64(0..0o10000),
        90..=97 => g.rng.u64(0..1 << 21),
        _ => g.rng.u64(..),
    }
}

/// A numeric field, mostly as tar writes it, sometimes in ways readers disagree on or reject.
fn hostile_num(g: &mut G, field: &mut [u8], v: u64) {
    match g.rng.u32(0..100) {
        0..=74 => octal(field, v),
        75..=79 => {
            let text = format!("{v:o} ");
            let w = field.len();
            if text.len() <= w {
                field.fill(b' ');
                field[w - text.len()..].copy_from_slice(text.as_bytes());
            } else {
                octal(field, v);
            }
        }
        80..=84 => base256(field, v),
        85..=87 => {
            let text = format!("{v:0width$o}", width = field.len());
            put(field, text.as_bytes());
        }
        88..=90 => field.fill(0),
        91..=93 => g.rng.fill(field),
        94..=96 => {
            octal(field, v);
            let i = g.rng.usize(0..field.len());
            field[i] = g.pick(b"89 -+x\xff");
        }
        _ => {
            field.fill(0xff);
        }
    }
}

/// `h` as a header block, sound, or (at `g.chaos` percent) with wild numeric fields, device numbers, junk and
/// checksums good, off, signed, blank or random.
pub(super) fn hostile_header(g: &mut G, h: &Hdr) -> [u8; 512] {
    if !g.chance(g.chaos) {
        return h.bytes();
    }
    let mut b = [0u8; 512];
    put(&mut b[0..100], h.name);
    hostile_num(g, &mut b[100..108], h.mode);
    let (uid, gid) = if g.chance(90) { (0, 0) } else { (g.rng.u64(..1 << 21), g.rng.u64(..)) };
    hostile_num(g, &mut b[108..116], uid);
    hostile_num(g, &mut b[116..124], gid);
    if g.chance(90) {
        octal(&mut b[124..136], h.size);
    } else {
        hostile_num(g, &mut b[124..136], h.size);
    }
    hostile_num(g, &mut b[136..148], 1_700_000_000);
    b[156] = h.kind;
    put(&mut b[157..257], h.link);
    h.put_magic(&mut b);
    if matches!(h.kind, b'3' | b'4') || g.chance(3) {
        let (major, minor) = (g.rng.u64(..300), g.rng.u64(..300));
        hostile_num(g, &mut b[329..337], major);
        hostile_num(g, &mut b[337..345], minor);
    }
    if g.chance(3) {
        g.rng.fill(&mut b[500..512]);
    }
    match g.rng.u32(0..100) {
        0..=95 => set_checksum(&mut b),
        96 => {
            set_checksum(&mut b);
            b[150] ^= 1;
        }
        97 => {
            // The signed-char sum some old tars wrote.
            b[148..156].fill(b' ');
            let sum: i32 = b.iter().map(|x| i32::from(*x as i8)).sum();
            b[148..156].copy_from_slice(format!("{:06o}\0 ", sum as u32 & 0o777777).as_bytes());
        }
        98 => b[148..156].fill(b' '),
        _ => g.rng.fill(&mut b[148..156]),
    }
    b
}

/// A PAX extended header's body: path, linkpath and size with mostly sound lengths, and everything else.
pub(super) fn hostile_pax(g: &mut G, names: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    for _ in 0..g.rng.usize(1..4) {
        let key: Vec<u8> = g
            .pick(&[
                "path",
                "linkpath",
                "size",
                "mtime",
                "uid",
                "gid",
                "uname",
                "comment",
                "SCHILY.xattr.user.a",
                "LIBARCHIVE.xattr.user.b",
                "SCHILY.acl.access",
                "GNU.sparse.major",
                "GNU.sparse.map",
                "SCHILY.fflags",
                "RHT.security.selinux",
                "security.capability",
                "",
                "path ",
                "PATH",
            ])
            .into();
        let value: Vec<u8> = match key.as_slice() {
            b"size" | b"uid" | b"mtime" => {
                g.pick(&["0", "1", "512", "-1", "99999999999999999999", "abc", "", "1.5", " 1"]).into()
            }
            _ => hostile_name(g, names),
        };
        let mut rec = pax_record(&key, &value);
        match g.rng.u32(0..100) {
            0..=84 => {}
            85..=87 => {
                rec.pop();
            }
            88..=90 => rec = rec.iter().map(|b| if *b == b'=' { b'~' } else { *b }).collect(),
            91..=93 => rec.insert(0, b'9'),
            94..=96 => rec = format!("0 {}\n", String::from_utf8_lossy(&key)).into_bytes(),
            _ => {
                let n = g.rng.usize(0..40);
                rec = g.bytes(n);
            }
        }
        body.extend(rec);
    }
    body
}

/// An extension record (PAX local or global, GNU long name or link) as its own entry, with any body.
pub(super) fn push_record(g: &mut G, out: &mut Tar, kind: u8, body: &[u8], format: Format) {
    let size = match g.rng.u32(0..100) {
        _ if !g.chance(g.chaos) => body.len() as u64,
        0..=89 => body.len() as u64,
        90..=94 => g.pick(&[0, 1 << 16, (1 << 16) + 1, 1 << 30, u64::MAX >> 1]),
        _ => (body.len() as u64).saturating_add(g.rng.u64(1..600)),
    };
    let name: &[u8] = if kind == b'L' || kind == b'K' { b"././@LongLink" } else { b"PaxHeaders/x" };
    let header = hostile_header(g, &Hdr { size, format, ..hdr(kind, name) });
    out.append(header, body);
    g.note(format!("  record {} size {size}: {}", kind as char, shown(body)));
}

/// One header with random fields and a sound checksum, then the end.
pub(super) fn single_header(g: &mut G) -> Tar {
    let mut out = Tar::new();
    let mut h = [0u8; 512];
    g.rng.fill(&mut h);
    if g.chance(50) {
        h[257..263].copy_from_slice(b"ustar\0");
    }
    if g.chance(50) {
        octal(&mut h[124..136], g.rng.u64(0..2000));
    }
    set_checksum(&mut h);
    let n = g.rng.usize(0..1500);
    let body = g.bytes(n);
    g.note(format!("one random header ({:?} type) and {n} bytes", h[156] as char));
    out.append(h, &body);
    end(g, &mut out);
    out
}

//! Hostile archives: entries of every type from the pools of `names.rs`, sizes that disagree with their bodies,
//! names and targets given in PAX and GNU records (sound, twice, or left without an entry), headers from
//! `headers.rs`, and every way an archive may end. A third are "tame": sound headers, records and ends, and only
//! files, directories and links, so that they get further.

use super::case::{shown, G};
use super::headers::{hostile_header, hostile_mode, hostile_pax, push_record};
use super::names::{hostile_name, hostile_target, tame_name};
use crate::tarw::{pax_record, ustar_split, Format, Hdr, Tar};

/// A hostile archive. `tame` ones keep sound headers, records and ends, and only files, directories and links,
/// so that most get as far as the symlink checks at the end instead of stopping at their first broken header.
pub(super) fn hostile(g: &mut G, tame: bool) -> Tar {
    let mut out = Tar::new();
    let mut names: Vec<Vec<u8>> = Vec::new();
    let format = g.pick(&[Format::Ustar, Format::Ustar, Format::Gnu, Format::V7]);
    g.chaos = if tame { 0 } else { 15 };
    g.note(format!("hostile archive{}, {format:?} headers", if tame { " (tame)" } else { "" }));
    for _ in 0..g.rng.usize(1..=if tame { 14 } else { 10 }) {
        let kind = if tame { g.pick(b"0055222211") } else { g.pick(b"00000\x00755522222111346SVMNADxgLKZ") };
        let kind = if !tame && g.chance(2) { g.rng.u8(..) } else { kind };
        let name = if tame && g.chance(75) { tame_name(g, &names) } else { hostile_name(g, &names) };
        let link = match kind {
            b'1' if tame && !names.is_empty() && g.chance(70) => g.pick(&names),
            b'1' | b'2' => hostile_target(g, &names, &name),
            _ if g.chance(5) => hostile_name(g, &names),
            _ => Vec::new(),
        };
        let mode = if tame { hostile_mode(g) & 0o7777 } else { hostile_mode(g) };
        let body_len = match kind {
            b'0' | b'\0' | b'7' => g.pick(&[0, 0, 1, 5, 64, 511, 512, 513, 2000]),
            _ if g.chance(10) => g.rng.usize(1..700),
            _ => 0,
        };
        let body = if g.chance(50) { g.bytes(body_len) } else { vec![b'\0'; body_len] };
        let size = match g.rng.u32(0..100) {
            _ if tame => body_len as u64,
            0..=84 => body_len as u64,
            85..=89 => body_len as u64 + g.rng.u64(1..600),
            90..=94 => (body_len as u64).saturating_sub(g.rng.u64(1..600)),
            _ => g.pick(&[1 << 32, 0o77777777777, (4 << 30) - 1, 4 << 30, u64::MAX, 1 << 62]),
        };

        // Extension records before the entry: how its name and target are given, and chaos.
        let mut pax = Vec::new();
        let mut hname = name.clone();
        let mut prefix = Vec::new();
        let long = name.len() > 100 || name.contains(&0);
        match (long, g.rng.u32(0..100)) {
            (_, 0..=9) | (true, 10..=44) => {
                pax.extend(pax_record(b"path", &name));
                hname = g.pick(&[b"decoy".as_slice(), b"", b"../decoy", &name]).to_vec();
            }
            (_, 45..=54) | (true, 55..=84) => {
                let mut rec = name.clone();
                if g.chance(80) {
                    rec.push(0);
                }
                push_record(g, &mut out, b'L', &rec, format);
                hname = g.pick(&[b"decoy".as_slice(), b"././@LongLink", &name]).to_vec();
            }
            (true, 85..=94) => {
                if let Some((p, n)) = ustar_split(&name) {
                    (prefix, hname) = (p, n);
                }
            }
            _ => {}
        }
        let mut hlink = link.clone();
        if link.len() > 100 || link.contains(&0) || g.chance(10) {
            if g.chance(50) {
                pax.extend(pax_record(b"linkpath", &link));
            } else {
                let mut rec = link.clone();
                rec.push(0);
                push_record(g, &mut out, b'K', &rec, format);
            }
            hlink = g.pick(&[b"decoy".as_slice(), b"", b"/etc/passwd"]).to_vec();
        }
        if g.chance(10) {
            let claimed = if tame || g.chance(70) { size } else { size.wrapping_add(g.rng.u64(1..10)) };
            pax.extend(pax_record(b"size", claimed.to_string().as_bytes()));
        }
        if !tame && g.chance(12) {
            pax.extend(hostile_pax(g, &names));
        }
        if !pax.is_empty() {
            push_record(g, &mut out, b'x', &pax, format);
        }
        if !tame && g.chance(8) {
            let extra = g.pick(b"xxgLK");
            let body = if extra == b'x' || extra == b'g' { hostile_pax(g, &names) } else { hostile_name(g, &names) };
            push_record(g, &mut out, extra, &body, format);
        }

        let h = Hdr { kind, name: &hname, prefix: &prefix, link: &hlink, mode, size, format };
        let header = hostile_header(g, &h);
        out.append(header, &body);
        g.note(format!(
            "  {} {} mode {mode:o} size {size} ({body_len} bytes){}",
            shown(&[kind]),
            shown(&name),
            if link.is_empty() { String::new() } else { format!(" -> {}", shown(&link)) }
        ));
        if !name.is_empty() {
            names.push(name);
        }
    }
    if tame {
        out.append_end();
        return out;
    }
    if g.chance(5) {
        let body = hostile_pax(g, &names);
        let kind = g.pick(b"xL");
        push_record(g, &mut out, kind, &body, format);
        g.note("  a record with no entry after it".into());
    }
    end(g, &mut out);
    out
}

/// The end of the archive: two zero blocks, or fewer, or more, or garbage after them, or a cut.
pub(super) fn end(g: &mut G, out: &mut Tar) {
    let how = match g.rng.u32(0..100) {
        0..=69 => {
            out.bytes.extend_from_slice(&[0; 1024]);
            "two zero blocks"
        }
        70..=77 => {
            out.bytes.extend_from_slice(&[0; 512]);
            "one zero block"
        }
        78..=82 => "no end blocks",
        83..=87 => {
            let n = if g.chance(5) { (1 << 20) + 4096 } else { g.rng.usize(1..8192) };
            out.bytes.resize(out.bytes.len() + 1024 + n, 0);
            "end blocks and more zeros"
        }
        88..=93 => {
            out.bytes.extend_from_slice(&[0; 1024]);
            let n = g.rng.usize(1..100);
            let junk = g.bytes(n);
            out.bytes.extend(junk);
            "end blocks and garbage"
        }
        _ => {
            out.bytes.extend_from_slice(&[0; 1024]);
            let cut = g.rng.usize(0..out.bytes.len());
            out.bytes.truncate(cut);
            "cut short"
        }
    };
    g.note(format!("  end: {how}"));
}

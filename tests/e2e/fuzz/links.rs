//! Symlink archives: a few sound directories and files, then symlinks with hostile targets, sometimes an entry
//! through one of them. They reach the unpacker's final symlink checks, which any earlier refusal would skip.

use std::collections::BTreeSet;

use super::case::{shown, G};
use super::names::{hostile_target, WORDS};
use crate::tarw::{hdr, pax_record, Format, Hdr, Tar};

/// Sound headers for a few directories and files with distinct names, then symlinks with distinct names and
/// hostile targets (to those entries, to each other, outward, absolute, in loops): the symlink checks at the end
/// of the unpack are reached in nearly every case.
pub(super) fn links(g: &mut G) -> Tar {
    let mut out = Tar::new();
    let format = g.pick(&[Format::Ustar, Format::Gnu, Format::V7]);
    g.note(format!("symlink archive, {format:?} headers"));
    let mut dirs: Vec<Vec<u8>> = vec![Vec::new()];
    let mut names: Vec<Vec<u8>> = Vec::new();
    let mut taken = BTreeSet::new();
    let under = |parent: &[u8], name: &str| {
        if parent.is_empty() {
            name.as_bytes().to_vec()
        } else {
            [parent, b"/", name.as_bytes()].concat()
        }
    };
    for _ in 0..g.rng.usize(0..6) {
        let parent = g.pick(&dirs);
        let path = under(&parent, g.pick(WORDS));
        if !taken.insert(path.clone()) {
            continue;
        }
        let dir = g.chance(50);
        let (kind, data) = if dir {
            (b'5', Vec::new())
        } else {
            let n = g.rng.usize(0..100);
            (b'0', g.bytes(n))
        };
        out.append(Hdr { mode: 0o755, size: data.len() as u64, format, ..hdr(kind, &path) }.bytes(), &data);
        g.note(format!("  {} {}", kind as char, shown(&path)));
        if dir {
            dirs.push(path.clone());
        }
        names.push(path);
    }
    for i in 0..g.rng.usize(1..=8) {
        let parent = g.pick(&dirs);
        let path = under(&parent, &format!("l{i}"));
        let target = hostile_target(g, &names, &path);
        let mut pax = Vec::new();
        let mut hlink = target.clone();
        if target.len() > 100 || target.contains(&0) {
            pax = pax_record(b"linkpath", &target);
            hlink = Vec::new();
        }
        if !pax.is_empty() {
            out.append_record(b'x', b"PaxHeaders/l", &pax, format);
        }
        let h = Hdr { link: &hlink, mode: 0o777, format, ..hdr(b'2', &path) };
        out.append(h.bytes(), &[]);
        g.note(format!("  2 {} -> {}", shown(&path), shown(&target)));
        names.push(path);
    }
    if g.chance(15) {
        // Something through one of the links: refused, whatever the link resolves to.
        let via = g.pick(&names);
        let path = [via.as_slice(), b"/pwned"].concat();
        out.append(Hdr { size: 1, format, ..hdr(b'0', &path) }.bytes(), b"!");
        g.note(format!("  0 {}", shown(&path)));
    }
    out.append_end();
    out
}

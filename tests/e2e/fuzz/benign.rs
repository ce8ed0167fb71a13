//! Benign archives: well-formed files, directories, symlinks and hard links (long names in PAX, GNU or
//! ustar-prefix records, any mode), and the model of the tree each must unpack to: the positive control.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use switchback::unpack::{Report, UnpackError};

use super::case::{shown, G};
use super::sandbox::walk;
use crate::tarw::{hdr, pax_record, ustar_split, Format, Hdr, Tar};

/// What a benign archive must unpack to. Paths are `/`-joined, relative to the release root.
#[derive(Default)]
pub(super) struct Model {
    dirs: BTreeMap<String, u32>,
    files: BTreeMap<String, (Vec<u8>, u32)>,
    symlinks: BTreeMap<String, String>,
    hardlinks: BTreeMap<String, String>,
}

impl Model {
    pub(super) fn check(&self, staging: &Path, outcome: &Result<Report, UnpackError>) -> Vec<String> {
        let report = match outcome {
            Ok(r) => r,
            Err(e) => return vec![format!("a benign archive was refused: {e} ({:?})", e.reason)],
        };
        let mut problems = Vec::new();
        let bytes: u64 = self.files.values().map(|(d, _)| d.len() as u64).sum();
        let counts = (report.files, report.symlinks, report.hardlinks, report.bytes);
        let want = (self.files.len() as u64, self.symlinks.len() as u64, self.hardlinks.len() as u64, bytes);
        if counts != want {
            problems.push(format!("report {report:?}, expected (files, symlinks, hardlinks, bytes) {want:?}"));
        }
        let mut found = BTreeSet::new();
        walk(staging, &mut Vec::new(), &mut |rel, _| {
            found.insert(String::from_utf8_lossy(&rel.join(&b'/')).into_owned());
        });
        let expected: BTreeSet<String> = self
            .dirs
            .keys()
            .chain(self.files.keys())
            .chain(self.symlinks.keys())
            .chain(self.hardlinks.keys())
            .cloned()
            .collect();
        if found != expected {
            problems.push(format!(
                "unpacked paths differ: extra {:?}, missing {:?}",
                found.difference(&expected).collect::<Vec<_>>(),
                expected.difference(&found).collect::<Vec<_>>()
            ));
            return problems;
        }
        let md = |p: &str| fs::symlink_metadata(staging.join(p)).unwrap();
        let root_mode = fs::symlink_metadata(staging).unwrap().mode() & 0o7777;
        if root_mode != 0o755 {
            problems.push(format!("the release root has mode {root_mode:o}, expected 755"));
        }
        for (p, mode) in &self.dirs {
            let m = md(p);
            if !m.is_dir() || m.mode() & 0o7777 != *mode {
                problems.push(format!(
                    "directory {p}: {:?} mode {:o}, expected mode {mode:o}",
                    m.file_type(),
                    m.mode()
                ));
            }
        }
        for (p, (data, mode)) in &self.files {
            let m = md(p);
            if !m.is_file() || m.mode() & 0o7777 != *mode || fs::read(staging.join(p)).ok().as_ref() != Some(data) {
                problems.push(format!(
                    "file {p}: {:?} mode {:o}, expected {mode:o} and its data",
                    m.file_type(),
                    m.mode()
                ));
            }
        }
        for (p, target) in &self.symlinks {
            let got = fs::read_link(staging.join(p)).map(|t| t.as_os_str().as_bytes().to_vec()).ok();
            if got.as_deref() != Some(target.as_bytes()) {
                problems.push(format!("symlink {p}: {got:?}, expected -> {target}"));
            }
        }
        for (p, target) in &self.hardlinks {
            if md(p).ino() != md(target).ino() || !md(p).is_file() {
                problems.push(format!("hard link {p} is not {target}"));
            }
        }
        problems
    }
}

fn file_mode(mode: u32) -> u32 {
    (mode & 0o555) | 0o400
}

fn dir_mode(mode: u32) -> u32 {
    (mode & 0o755) | 0o700
}

/// A name no sibling has, mostly short, sometimes long enough to need a long-name record.
fn fresh(g: &mut G, taken: &BTreeSet<String>, parent: &str) -> String {
    loop {
        let len = if g.chance(10) { g.rng.usize(90..200) } else { g.rng.usize(1..12) };
        let name: String =
            (0..len).map(|_| g.pick(&['a', 'b', 'c', 'x', 'y', 'z', '0', '7', '_', '-', '.', 'Q'])).collect();
        if name == "." || name == ".." {
            continue;
        }
        let path = if parent.is_empty() { name } else { format!("{parent}/{name}") };
        if !taken.contains(&path) && path.len() < 3000 {
            return path;
        }
    }
}

/// From the directory `from` to `to`, both relative to the root (`""` is the root).
fn relative(g: &mut G, from: &str, to: &str) -> String {
    let split = |s: &str| -> Vec<String> { s.split('/').filter(|c| !c.is_empty()).map(String::from).collect() };
    let (f, t) = (split(from), split(to));
    let common = if g.chance(30) { 0 } else { f.iter().zip(&t).take_while(|(a, b)| a == b).count() };
    let mut parts: Vec<String> = vec!["..".into(); f.len() - common];
    parts.extend(t[common..].iter().cloned());
    if parts.is_empty() {
        return ".".into();
    }
    let rel = parts.join("/");
    if g.chance(15) {
        format!("./{rel}")
    } else {
        rel
    }
}

/// A well-formed archive and the tree it must unpack to.
pub(super) fn benign(g: &mut G) -> (Tar, Model) {
    let mut out = Tar::new();
    let mut model = Model::default();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut dirs: Vec<String> = vec![String::new()];
    let mut files: Vec<String> = Vec::new();
    let mut all: Vec<String> = vec![String::new()];
    let format = g.pick(&[Format::Ustar, Format::Gnu, Format::V7]);
    g.note(format!("benign archive, {format:?} headers"));
    if g.chance(10) {
        let data = pax_record(b"comment", b"generated by the fuzz test");
        out.append_record(b'g', b"pax_global_header", &data, format);
        g.note("  global PAX header with a comment".into());
    }
    for _ in 0..g.rng.usize(1..=16) {
        let roll = g.rng.u32(0..100);
        let mode = if g.chance(70) { g.pick(&[0o644, 0o755, 0o600, 0o700]) } else { g.rng.u32(0..0o10000) };
        match roll {
            0..=19 => {
                // A directory: new, or one that exists (explicitly or implicitly), which takes the new mode.
                let path = if g.chance(25) && dirs.len() > 1 {
                    g.pick(&dirs[1..])
                } else {
                    let parent = g.pick(&dirs);
                    fresh(g, &taken, &parent)
                };
                let old_style = g.chance(10);
                let name = if old_style || g.chance(30) { format!("{path}/") } else { path.clone() };
                benign_entry(g, &mut out, if old_style { b'0' } else { b'5' }, &name, "", mode, &[], format);
                if taken.insert(path.clone()) {
                    dirs.push(path.clone());
                    all.push(path.clone());
                }
                model.dirs.insert(path, dir_mode(mode));
            }
            20..=59 => {
                let mut parent = g.pick(&dirs);
                if g.chance(20) {
                    // Under a directory the archive never names: made implicitly.
                    parent = fresh(g, &taken, &parent);
                    taken.insert(parent.clone());
                    dirs.push(parent.clone());
                    all.push(parent.clone());
                    model.dirs.insert(parent.clone(), 0o755);
                }
                let path = fresh(g, &taken, &parent);
                let len = g.pick(&[0, 1, 100, 511, 512, 513, 3000]);
                let data = if g.chance(50) { g.bytes(len) } else { vec![b'z'; len] };
                let kind = g.pick(b"00\x007");
                benign_entry(g, &mut out, kind, &path, "", mode, &data, format);
                taken.insert(path.clone());
                files.push(path.clone());
                all.push(path.clone());
                model.files.insert(path, (data, file_mode(mode)));
            }
            60..=79 => {
                let parent = g.pick(&dirs);
                let path = fresh(g, &taken, &parent);
                let to = g.pick(&all);
                let target = relative(g, &parent, &to);
                benign_entry(g, &mut out, b'2', &path, &target, 0o777, &[], format);
                taken.insert(path.clone());
                all.push(path.clone());
                model.symlinks.insert(path, target);
            }
            _ if !files.is_empty() => {
                let parent = g.pick(&dirs);
                let path = fresh(g, &taken, &parent);
                let to = g.pick(&files);
                let target = if g.chance(20) { format!("./{to}") } else { to.clone() };
                benign_entry(g, &mut out, b'1', &path, &target, mode, &[], format);
                taken.insert(path.clone());
                all.push(path.clone());
                model.hardlinks.insert(path, to);
            }
            _ => {}
        }
    }
    if model.files.is_empty() && model.symlinks.is_empty() && model.dirs.is_empty() {
        benign_entry(g, &mut out, b'0', "only", "", 0o644, b"x", format);
        model.files.insert("only".into(), (b"x".to_vec(), file_mode(0o644)));
    }
    out.append_end();
    (out, model)
}

/// One well-formed entry: long names and targets go in a PAX, GNU or ustar-prefix record, as a real tar would.
#[allow(clippy::too_many_arguments)]
fn benign_entry(g: &mut G, out: &mut Tar, kind: u8, name: &str, link: &str, mode: u32, data: &[u8], format: Format) {
    let mut name = name.as_bytes().to_vec();
    if g.chance(15) {
        name = [b"./".as_slice(), &name].concat();
    }
    let link = link.as_bytes().to_vec();
    let (mut hprefix, mut hname) = (Vec::new(), name.clone());
    let mut pax = Vec::new();
    let mut how = "";
    if name.len() > 100 {
        let split = if format == Format::Ustar { ustar_split(&name) } else { None };
        match (split, g.rng.u32(0..3)) {
            (Some((p, n)), 0) => {
                (hprefix, hname) = (p, n);
                how = " (ustar prefix)";
            }
            (_, 1) => {
                out.append_gnu_long(b'L', &name, format);
                how = " (GNU long name)";
            }
            _ => {
                pax.extend(pax_record(b"path", &name));
                how = " (PAX path)";
            }
        }
    }
    if link.len() > 100 {
        if g.chance(50) {
            out.append_gnu_long(b'K', &link, format);
        } else {
            pax.extend(pax_record(b"linkpath", &link));
        }
    }
    if g.chance(10) {
        pax.extend(pax_record(b"mtime", b"1700000000.5"));
        pax.extend(pax_record(b"size", data.len().to_string().as_bytes()));
        pax.extend(pax_record(b"uname", b"someone"));
    }
    if !pax.is_empty() {
        out.append_record(b'x', b"PaxHeaders/entry", &pax, format);
    }
    let size = data.len() as u64;
    let h = Hdr { link: &link, prefix: &hprefix, mode: mode.into(), size, format, ..hdr(kind, &hname) };
    out.append(h.bytes(), data);
    g.note(format!(
        "  {} {} {:o}{}{how} {} bytes",
        shown(&[kind]),
        shown(&name),
        mode,
        if link.is_empty() { String::new() } else { format!(" -> {}", shown(&link)) },
        data.len()
    ));
}

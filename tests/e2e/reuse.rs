//! Reuse of unchanged files (`reuse = auto | reflink | hardlink | off`): a redeploy shares every file whose
//! content, final mode and owner are those of a file of the current or last good release, and nothing else; the
//! release it makes is exactly what `reuse = "off"` makes (same tree, same modes and owners, same index); prune and
//! rollback stay correct with inodes shared between releases; a donor whose owner differs or that was tampered
//! with is never shared; a name of the archive that is the unpacker's own temporary name changes nothing.
//!
//! Tests that assert sharing by inode configure `reuse = "hardlink"`; the `auto` test asks the filesystem of the
//! temporary directory whether it can reflink and expects a hard link (same inode) or a reflink (a new inode with
//! the same bytes) accordingly. This file holds the release model, the tree walk and the redeploy tests;
//! `reuse/safety.rs` prune and rollback, owners, tampered donors and hostile names. `delta.rs` uses the release
//! model and the tree walk too.

mod safety;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::harness::*;
use crate::hostile::noise;

const HARDLINK: &str = "reuse = \"hardlink\"\n";
const BIG: usize = (1 << 20) + (100 << 10);

/// A release as the archive holds it: directories (made from the entries' parents, all 0755), files in archive
/// order, hard links and symlinks after them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Spec {
    pub(crate) files: Vec<(String, Vec<u8>, u32)>,
    pub(crate) hardlinks: Vec<(String, String)>,
    pub(crate) symlinks: Vec<(String, String)>,
    pub(crate) dirs: Vec<String>,
}

impl Spec {
    /// About 300 files of 0 B to 16 KB in directories up to five deep (some executable, some 0600, two empty),
    /// two files over 1 MiB, a hard link and a symlink.
    fn v1() -> Spec {
        let mut s = Spec::default();
        s.file("version.txt", b"v1", 0o644);
        s.file("bin/run", b"#!/bin/sh\nexec true\n", 0o755);
        s.file("assets/big.bin", &noise(BIG, 11), 0o644);
        s.file("assets/big2.bin", &noise(BIG - 1000, 12), 0o644);
        s.file("app/empty-a", b"", 0o644);
        s.file("app/empty-b", b"", 0o644);
        for i in 0..300u64 {
            let dir = format!("app/m{}/s{}", i % 5, (i / 5) % 3);
            let path = if i % 7 == 0 { format!("{dir}/deep/er/f{i}.txt") } else { format!("{dir}/f{i}.txt") };
            let size = [10, 200, 1000, 4096, 3000, 16_000][(i % 6) as usize];
            let mode = match i % 10 {
                3 => 0o755,
                7 => 0o600,
                _ => 0o644,
            };
            s.file(&path, &noise(size, 1000 + i), mode);
        }
        s.hardlinks.push(("app/alias.txt".into(), "app/m0/s0/deep/er/f0.txt".into()));
        s.symlinks.push(("app/config".into(), "m1/s0/f1.txt".into()));
        s
    }

    pub(crate) fn file(&mut self, path: &str, data: &[u8], mode: u32) {
        match self.files.iter_mut().find(|f| f.0 == path) {
            Some(f) => (f.1, f.2) = (data.to_vec(), mode),
            None => self.files.push((path.to_owned(), data.to_vec(), mode)),
        }
    }

    pub(crate) fn get(&self, path: &str) -> &(String, Vec<u8>, u32) {
        self.files.iter().find(|f| f.0 == path).unwrap_or_else(|| panic!("{path} is not in the release"))
    }

    pub(crate) fn remove(&mut self, path: &str) -> (String, Vec<u8>, u32) {
        let i = self.files.iter().position(|f| f.0 == path).unwrap();
        self.files.remove(i)
    }

    fn all_dirs(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self.dirs.iter().cloned().collect();
        let paths = self.files.iter().map(|f| &f.0).chain(self.hardlinks.iter().chain(&self.symlinks).map(|l| &l.0));
        for p in paths {
            let mut p = Path::new(p.as_str());
            while let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty()) {
                out.insert(parent.to_str().unwrap().to_owned());
                p = parent;
            }
        }
        out
    }

    pub(crate) fn archive(&self) -> Vec<u8> {
        let mut r = Release::new();
        for d in self.all_dirs() {
            r = r.dir(&d, 0o755);
        }
        for (p, data, mode) in &self.files {
            r = r.file(p, data, *mode);
        }
        for (p, t) in &self.hardlinks {
            r = r.hardlink(p, t);
        }
        for (p, t) in &self.symlinks {
            r = r.symlink(p, t);
        }
        r.build()
    }

    /// The tree the unpacker must make of this archive (modes sanitized, root's, the app's group if `group`).
    pub(crate) fn expected(&self, group: Option<u32>) -> Vec<Row> {
        let gid = group.unwrap_or(0);
        let mut out = vec![(".".to_owned(), Kind::Dir, 0o755, 0, gid)];
        out.extend(self.all_dirs().into_iter().map(|d| (d, Kind::Dir, 0o755, 0, gid)));
        for (p, data, mode) in &self.files {
            out.push((p.clone(), Kind::File(data.clone()), file_mode(*mode, group.is_some()), 0, gid));
        }
        for (p, t) in &self.hardlinks {
            let (_, data, mode) = self.get(t);
            out.push((p.clone(), Kind::File(data.clone()), file_mode(*mode, group.is_some()), 0, gid));
        }
        for (p, t) in &self.symlinks {
            out.push((p.clone(), Kind::Symlink(t.clone()), 0o777, 0, 0));
        }
        out.sort();
        out
    }
}

/// The unpacker's file modes (`store/unpack/tree.rs`): no write or special bits, owner read, the group given the
/// owner's bits when the app has an owner.
fn file_mode(mode: u32, group: bool) -> u32 {
    let m = (mode & 0o555) | 0o400;
    if group {
        m | ((m >> 3) & 0o050)
    } else {
        m
    }
}

/// What `next` changed in a release.
#[derive(Debug, Default)]
struct Changes {
    /// Paths whose content changed (`version.txt` among them).
    changed: Vec<String>,
    mode_changed: String,
    added: String,
    removed: String,
    /// (old path, new path) of a file moved with its content and mode.
    renamed: (String, String),
}

/// The next release after `s`, round `r` (each round other files): about 1% of the files changed, one added, one
/// removed, one given another mode only, one moved.
fn next(s: &Spec, r: usize) -> (Spec, Changes) {
    let mut n = s.clone();
    let pool: Vec<String> = s.files.iter().map(|f| f.0.clone()).filter(|p| p.starts_with("app/m")).collect();
    let pick = |i: usize| pool[(i + 7 * r) % pool.len()].clone();
    let mut c = Changes::default();
    n.file("version.txt", format!("v{}", r + 1).as_bytes(), 0o644);
    c.changed.push("version.txt".into());
    // The same size with other bytes, a few bytes more, other bytes of a large file.
    let same_size = pick(11);
    let len = s.get(&same_size).1.len();
    let mode = s.get(&same_size).2;
    n.file(&same_size, &noise(len, 50_000 + r as u64), mode);
    let grown = pick(53);
    let (_, mut data, mode) = s.get(&grown).clone();
    data.extend_from_slice(b"+more");
    n.file(&grown, &data, mode);
    n.file("assets/big2.bin", &noise(BIG - 1000, 60_000 + r as u64), 0o644);
    c.changed.extend([same_size, grown, "assets/big2.bin".into()]);
    let m = (97..).map(pick).find(|p| s.get(p).2 == 0o644).unwrap();
    let data = s.get(&m).1.clone();
    n.file(&m, &data, 0o755);
    c.mode_changed = m;
    c.added = format!("app/added-{r}/new.txt");
    n.file(&c.added, format!("added in round {r}").as_bytes(), 0o644);
    c.removed = pick(151);
    n.remove(&c.removed);
    let old = pick(211);
    let (_, data, mode) = n.remove(&old);
    let new = format!("app/moved-{r}/{}", Path::new(&old).file_name().unwrap().to_str().unwrap());
    n.file(&new, &data, mode);
    c.renamed = (old, new);
    for p in [&c.mode_changed, &c.removed, &c.renamed.0] {
        assert!(!c.changed.contains(p), "round {r} picked {p} twice");
    }
    (n, c)
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

/// One entry as a reader sees it: path, type and content, permission bits, uid, gid.
pub(crate) type Row = (String, Kind, u32, u32, u32);

/// One entry of a tree on disk, with where its data lives.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) row: Row,
    pub(crate) inode: Inode,
    pub(crate) nlink: u64,
}

/// Every entry under `root` (links not followed), by path relative to it.
pub(crate) fn walk(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_str().unwrap();
        let rel = if rel.is_empty() { ".".to_owned() } else { rel.to_owned() };
        let kind = if m.file_type().is_symlink() {
            Kind::Symlink(std::fs::read_link(&p).unwrap().to_str().unwrap().to_owned())
        } else if m.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            Kind::Dir
        } else {
            assert!(m.is_file(), "{}: not a file, directory or symlink", p.display());
            Kind::File(std::fs::read(&p).unwrap())
        };
        let row = (rel.clone(), kind, m.mode() & 0o7777, m.uid(), m.gid());
        out.insert(rel, Node { row, inode: (m.dev(), m.ino()), nlink: m.nlink() });
    }
    out
}

pub(crate) fn rows(t: &BTreeMap<String, Node>) -> Vec<Row> {
    t.values().map(|n| n.row.clone()).collect()
}

/// A file's (dev, ino).
pub(crate) type Inode = (u64, u64);

/// The inodes of a tree's files, by (content, mode).
fn inodes(t: &BTreeMap<String, Node>) -> HashMap<(Vec<u8>, u32), HashSet<Inode>> {
    let mut out: HashMap<_, HashSet<_>> = HashMap::new();
    for n in t.values() {
        if let Kind::File(data) = &n.row.1 {
            out.entry((data.clone(), n.row.2)).or_default().insert(n.inode);
        }
    }
    out
}

fn all_inodes(t: &BTreeMap<String, Node>) -> HashSet<Inode> {
    t.values().filter(|n| matches!(n.row.1, Kind::File(_))).map(|n| n.inode).collect()
}

#[track_caller]
pub(crate) fn assert_tree(h: &Host, v: &str, spec: &Spec, group: Option<u32>) -> BTreeMap<String, Node> {
    let t = walk(&h.root().join("releases").join(v));
    let (got, want) = (rows(&t), spec.expected(group));
    if got != want {
        let short = |r: &Vec<Row>| -> BTreeSet<String> {
            r.iter()
                .map(|(p, k, m, u, g)| {
                    let k = match k {
                        Kind::Dir => "dir".to_owned(),
                        Kind::File(d) => format!("file {} bytes {:?}", d.len(), &d[..d.len().min(12)]),
                        Kind::Symlink(t) => format!("-> {t}"),
                    };
                    format!("{p} {k} {m:o} {u}:{g}")
                })
                .collect()
        };
        let (g, w) = (short(&got), short(&want));
        panic!(
            "releases/{v} is not what its archive holds:\n  on disk only: {:#?}\n  expected only: {:#?}",
            g.difference(&w).collect::<Vec<_>>(),
            w.difference(&g).collect::<Vec<_>>()
        );
    }
    t
}

/// Deploys `spec` as `v` (exit 0); returns the unpack step's detail.
#[track_caller]
fn deploy(h: &Host, v: &str, spec: &Spec) -> String {
    let a = h.archive(&format!("{v}.tar.zst"), &spec.archive());
    let out = h.run(&["--json", "deploy", "web", "--file", a.to_str().unwrap(), "--version", v]);
    out.expect(0);
    let doc = out.json();
    let step = doc["steps"].as_array().unwrap().iter().find(|s| s["step"] == "unpack").cloned();
    let detail = step.unwrap_or_else(|| panic!("no unpack step: {doc:#}"))["detail"].as_str().unwrap().to_owned();
    assert_eq!(h.current().as_deref(), Some(v), "{out:#?}");
    detail
}

/// The files of `new` that a release of `donors` can share (same content and final mode; same owner assumed):
/// their number and bytes.
fn shareable(donors: &[&Spec], new: &Spec) -> (usize, u64) {
    let have: HashSet<(&[u8], u32)> =
        donors.iter().flat_map(|s| s.files.iter().map(|f| (f.1.as_slice(), file_mode(f.2, false)))).collect();
    let shared: Vec<_> = new.files.iter().filter(|f| have.contains(&(f.1.as_slice(), file_mode(f.2, false)))).collect();
    (shared.len(), shared.iter().map(|f| f.1.len() as u64).sum())
}

#[track_caller]
fn assert_shared_count(detail: &str, n: usize, bytes: u64) {
    let want = format!("; {n} files ({}) shared with releases on disk", bytesize::ByteSize(bytes).display().iec());
    assert!(detail.ends_with(&want), "the unpack detail `{detail}` should end with `{want}`");
}

/// Whether the filesystem of `dir` makes reflinks (`cp --reflink=always` succeeds there).
fn reflinks(dir: &Path) -> bool {
    let (a, b) = (dir.join("reflink-probe"), dir.join("reflink-probe-copy"));
    std::fs::write(&a, noise(64 << 10, 5)).unwrap();
    let ok = std::process::Command::new("cp").arg("--reflink=always").arg(&a).arg(&b).status().unwrap().success();
    let _ = (std::fs::remove_file(&a), std::fs::remove_file(&b));
    ok
}

/// A fresh host deploying `spec` as `v` with `reuse = "off"`: the tree and index every reuse must equal.
fn reference(v: &str, spec: &Spec) -> (Vec<Row>, Vec<u8>) {
    let h = Host::with_app_config("reuse = \"off\"\n");
    let detail = deploy(&h, v, spec);
    assert!(!detail.contains("shared"), "{detail}");
    let index = std::fs::read(h.state_dir().join(format!("index/{v}.jsonl"))).unwrap();
    (rows(&walk(&h.root().join("releases").join(v))), index)
}

/// Deploys v1 and a 1%-changed v2 on a host configured with `config` and checks what was shared: `hardlink`,
/// shared files are v1's inodes; otherwise they are new inodes (reflinks). Then that v2 is what `reuse = "off"`
/// makes of the same archive on a fresh host, and that v1 was left as it was.
fn redeploy_shares_unchanged_files(config: &str, hardlink: bool) {
    let h = Host::with_app_config(config);
    let v1 = Spec::v1();
    let d1 = deploy(&h, "v1", &v1);
    assert!(!d1.contains("shared"), "nothing to share on a first deploy: {d1}");
    let t1 = assert_tree(&h, "v1", &v1, None);
    let (v2, c) = next(&v1, 1);
    let d2 = deploy(&h, "v2", &v2);
    let t2 = assert_tree(&h, "v2", &v2, None);

    let (n, bytes) = shareable(&[&v1], &v2);
    // All but the 4 changed, the added and the one whose mode changed (the moved one is shared).
    assert_eq!(n, v2.files.len() - c.changed.len() - 2);
    assert_shared_count(&d2, n, bytes);

    let by_content = inodes(&t1);
    let v1_inodes = all_inodes(&t1);
    let mut shared = 0;
    for n2 in t2.values() {
        let Kind::File(data) = &n2.row.1 else { continue };
        let path = &n2.row.0;
        match by_content.get(&(data.clone(), n2.row.2)) {
            Some(donors) if hardlink => {
                assert!(donors.contains(&n2.inode), "{path}: unchanged but not a hard link to v1's file");
                shared += 1;
            }
            _ => assert!(!v1_inodes.contains(&n2.inode), "{path}: shares an inode of v1 but is not v1's file"),
        }
    }
    if hardlink {
        // Every shared file, plus the archive's hard link to one of them.
        assert_eq!(shared, n + 1);
    }
    let ino = |t: &BTreeMap<String, Node>, p: &str| t[p].inode;
    let unique = "app/m2/s0/f2.txt";
    assert_eq!(ino(&t1, unique) == ino(&t2, unique), hardlink, "{unique}");
    assert_eq!(ino(&t1, "assets/big.bin") == ino(&t2, "assets/big.bin"), hardlink, "a file over 1 MiB");
    assert_eq!(ino(&t1, &c.renamed.0) == ino(&t2, &c.renamed.1), hardlink, "a moved file: {:?}", c.renamed);
    for p in c.changed.iter().chain([&c.mode_changed, &c.added]) {
        assert!(!v1_inodes.contains(&ino(&t2, p)), "{p} changed but shares an inode of v1");
    }
    assert_eq!(t2[&c.mode_changed].row.2, 0o555);
    assert_eq!(ino(&t2, "app/alias.txt"), ino(&t2, "app/m0/s0/deep/er/f0.txt"), "the archive's hard link");

    // The donor is untouched, and the result is what writing every file makes.
    assert_eq!(rows(&walk(&h.root().join("releases/v1"))), rows(&t1));
    let (want, index) = reference("v2", &v2);
    assert_eq!(rows(&t2), want, "v2 differs from the same archive deployed with reuse = \"off\"");
    assert_eq!(std::fs::read(h.state_dir().join("index/v2.jsonl")).unwrap(), index, "v2's index");
}

#[test]
fn a_redeploy_hard_links_every_unchanged_file_and_changes_nothing_else() {
    redeploy_shares_unchanged_files(HARDLINK, true);
}

#[test]
fn auto_shares_by_reflink_or_hard_link_as_the_filesystem_can() {
    let probe = tempfile::tempdir().unwrap();
    let hardlink = !reflinks(probe.path());
    redeploy_shares_unchanged_files("", hardlink);
}

#[test]
fn reuse_off_shares_nothing() {
    let h = Host::with_app_config("reuse = \"off\"\n");
    let v1 = Spec::v1();
    deploy(&h, "v1", &v1);
    let (v2, _) = next(&v1, 1);
    let d2 = deploy(&h, "v2", &v2);
    assert!(!d2.contains("shared"), "{d2}");
    assert!(d2.starts_with(&format!("{} files, ", v2.files.len())), "{d2}");
    let t1 = assert_tree(&h, "v1", &v1, None);
    let t2 = assert_tree(&h, "v2", &v2, None);
    let v1_inodes = all_inodes(&t1);
    let common: Vec<_> = t2.values().filter(|n| v1_inodes.contains(&n.inode)).map(|n| &n.row.0).collect();
    assert!(common.is_empty(), "files of v2 share inodes with v1: {common:?}");
    assert!(t2.values().filter(|n| matches!(n.row.1, Kind::File(_))).all(|n| n.nlink <= 2), "only the alias");
}

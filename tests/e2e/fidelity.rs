//! Fidelity: a release is what GNU tar would extract from the archive, or the archive is refused on purpose (the
//! README's "What an archive may contain"). Three kinds of evidence, all through the real binary:
//! - reproductions of the format's corner cases, built byte by byte with the tests' raw tar writer (`tarw`); where
//!   the archive is accepted, the release is also compared with GNU tar's own extraction of the same bytes
//!   (`fidelity/reproductions.rs`);
//! - a differential test: trees packed by GNU tar in each of its formats (and appended to with `tar -r`), deployed,
//!   and compared with what GNU tar extracts from the same archive (`fidelity/differential.rs`);
//! - a real Python virtualenv and a real node_modules tree, deployed and run from `current` (`fidelity/apps.rs`).
//!
//! This file holds what they share: comparing trees, running commands, writing files.

mod apps;
mod differential;
mod reproductions;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// What one path of an unpacked tree is: its type, a file's contents and executable bits, a link's target.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File { len: u64, sha256: String, exec: u32 },
    Link(PathBuf),
}

/// Every path under a root, and which regular files share an inode (groups of two or more names).
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    nodes: BTreeMap<PathBuf, Node>,
    groups: BTreeSet<Vec<PathBuf>>,
}

fn snapshot(root: &Path) -> Snapshot {
    let mut nodes = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<PathBuf>> = BTreeMap::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(root.join(&dir)).unwrap_or_else(|e| panic!("{}: {e}", root.join(&dir).display())) {
            let rel = dir.join(e.unwrap().file_name());
            let path = root.join(&rel);
            let md = std::fs::symlink_metadata(&path).unwrap();
            let node = if md.file_type().is_symlink() {
                Node::Link(std::fs::read_link(&path).unwrap())
            } else if md.is_dir() {
                dirs.push(rel.clone());
                Node::Dir
            } else if md.is_file() {
                inodes.entry((md.dev(), md.ino())).or_default().push(rel.clone());
                let data = std::fs::read(&path).unwrap();
                Node::File { len: md.len(), sha256: hex::encode(Sha256::digest(&data)), exec: md.mode() & 0o111 }
            } else {
                panic!("{}: neither a directory, a regular file nor a symlink", path.display());
            };
            nodes.insert(rel, node);
        }
    }
    let groups = inodes.into_values().filter(|g| g.len() > 1).map(|mut g| {
        g.sort();
        g
    });
    Snapshot { nodes, groups: groups.collect() }
}

/// Asserts that `ours` (a release) and `gnu` (GNU tar's extraction) hold the same tree, naming every difference.
#[track_caller]
fn assert_same(case: &str, ours: &Snapshot, gnu: &Snapshot) {
    if ours == gnu {
        return;
    }
    let mut diff = Vec::new();
    let paths: BTreeSet<&PathBuf> = ours.nodes.keys().chain(gnu.nodes.keys()).collect();
    for p in paths {
        let (a, b) = (ours.nodes.get(p), gnu.nodes.get(p));
        if a != b {
            diff.push(format!("  {}: release {a:?}, GNU tar {b:?}", p.display()));
        }
    }
    if ours.groups != gnu.groups {
        diff.push(format!("  hard-link groups: release {:?}, GNU tar {:?}", ours.groups, gnu.groups));
    }
    panic!("{case}: the release differs from GNU tar's extraction:\n{}", diff.join("\n"));
}

/// Runs a command that must succeed; returns its stdout.
#[track_caller]
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// GNU tar's extraction of `archive` (any compression GNU tar detects), into a new temporary directory.
fn gnu_extract(archive: &Path) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    run(Command::new("tar").arg("-xf").arg(archive).arg("-C").arg(out.path()).arg("--no-same-owner"));
    out
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn put_file(root: &Path, rel: &str, data: &[u8], mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

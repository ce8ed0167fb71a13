//! Differential: trees packed by GNU tar in each of its formats (and appended to with `tar -r`), unpacked by us
//! and by GNU tar, and compared.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{assert_same, gnu_extract, put_file, read, run, snapshot};
use crate::harness::*;
use crate::hostile::noise;

fn put_symlink(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, p).unwrap();
}

fn put_hardlink(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::hard_link(root.join(target), p).unwrap();
}

/// Every kind of entry, every name short enough for v7 (under 100 bytes).
fn tree_basic(root: &Path) {
    for (i, (name, len)) in
        [("empty", 0), ("one", 1), ("block-511", 511), ("block-512", 512), ("block-513", 513), ("rec", 10240)]
            .into_iter()
            .enumerate()
    {
        put_file(root, name, &noise(len, i as u64 + 1), 0o644);
    }
    put_file(root, "big.bin", &noise(1_500_000, 11), 0o644);
    put_file(root, "a/b/c/deep.txt", b"deep", 0o644);
    put_file(root, "with space/file name.txt", b"spaces", 0o644);
    put_file(root, "utf8/héllo wörld ☃.txt", "ünïcødé".as_bytes(), 0o644);
    put_file(root, "utf8/日本語/ファイル.txt", "日本語".as_bytes(), 0o640);
    put_file(root, "bin/run.sh", b"#!/bin/sh\necho run\n", 0o755);
    put_file(root, "bin/group-exec", b"#!/bin/sh\n", 0o750);
    put_file(root, "bin/owner-exec", b"#!/bin/sh\n", 0o700);
    put_file(root, "secret.txt", b"s", 0o600);
    put_file(root, "lib/libx.so.1", b"\x7fELF", 0o755);
    put_hardlink(root, "hard/one", "a/b/c/deep.txt");
    put_hardlink(root, "hard/two", "a/b/c/deep.txt");
    put_hardlink(root, "big-copy.bin", "big.bin");
    put_symlink(root, "lib/libx.so", "libx.so.1");
    put_symlink(root, "a/up", "../with space");
    put_symlink(root, "dirlink", "a/b");
    put_symlink(root, "a/b/c/back", "../../../one");
    put_symlink(root, "utf8/link ☃", "héllo wörld ☃.txt");
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::create_dir_all(root.join("a/empty")).unwrap();
}

/// Paths over 100 bytes that ustar can still hold (a prefix of at most 155 bytes, a name of at most 100).
fn tree_long_ustar(root: &Path) {
    let (d, f) = ("d".repeat(90), "f".repeat(90));
    put_file(root, &format!("long/{d}/{f}.txt"), b"long", 0o644);
    put_file(root, &"n".repeat(99), b"99", 0o644);
    put_file(root, &format!("long/{}/{}.txt", "é".repeat(45), "ü".repeat(45)), b"utf8", 0o755);
    put_file(root, "short.txt", b"short", 0o644);
    put_hardlink(root, &format!("long/{d}/hl-{}", "h".repeat(80)), "short.txt");
    put_symlink(root, &format!("long/{d}/sl"), &format!("{f}.txt"));
    std::fs::create_dir_all(root.join(format!("long/{d}/{}", "e".repeat(99)))).unwrap();
}

/// Paths over 255 bytes with 200-byte components, and long link targets: GNU and PAX only.
fn tree_long_gnu(root: &Path) {
    let (c, e) = ("c".repeat(200), "e".repeat(200));
    put_file(root, &format!("{c}/{e}"), b"very long", 0o644);
    put_file(root, &format!("{c}/{}/{}.txt", "é".repeat(100), "x".repeat(250)), b"utf8", 0o755);
    put_file(root, "short.txt", b"short", 0o644);
    put_symlink(root, "to-long", &format!("{c}/{e}"));
    put_symlink(root, &format!("{c}/back-{}", "b".repeat(150)), "../short.txt");
    put_hardlink(root, "hl-long", &format!("{c}/{e}"));
    put_hardlink(root, &format!("{c}/{}", "h".repeat(255)), "short.txt");
    std::fs::create_dir_all(root.join(format!("{c}/{}", "z".repeat(255)))).unwrap();
}

/// Writes a tree under the given directory.
type MakeTree = fn(&Path);

/// What to pack: a tree, a GNU tar format, and whether to append changed copies with `tar -r` afterwards.
struct Case {
    tree: MakeTree,
    tree_name: &'static str,
    format: &'static str,
    append: bool,
}

#[test]
fn gnu_tar_archives_unpack_as_gnu_tar_unpacks_them() {
    let h = Host::new();
    let mut cases = Vec::new();
    let trees: [(&'static str, MakeTree, &[&'static str]); 3] = [
        ("basic", tree_basic, &["gnu", "oldgnu", "ustar", "pax", "v7"]),
        ("long_ustar", tree_long_ustar, &["gnu", "ustar", "pax"]),
        ("long_gnu", tree_long_gnu, &["gnu", "oldgnu", "pax"]),
    ];
    for (tree_name, tree, formats) in trees {
        for format in formats {
            cases.push(Case { tree, tree_name, format, append: false });
        }
    }
    for format in ["gnu", "pax"] {
        cases.push(Case { tree: tree_basic, tree_name: "basic", format, append: true });
    }

    for (i, c) in cases.iter().enumerate() {
        let name = format!("{}-{}{}", c.tree_name, c.format, if c.append { "-appended" } else { "" });
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("src");
        std::fs::create_dir(&src).unwrap();
        (c.tree)(&src);
        let tar_path = work.path().join(format!("{name}.tar"));
        // Half the archives name `./` and its contents, half list the top-level names.
        let mut create = Command::new("tar");
        create.arg(format!("--format={}", c.format)).arg("-cf").arg(&tar_path).arg("-C").arg(&src);
        if i % 2 == 0 {
            create.arg(".");
        } else {
            let mut top: Vec<_> = std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().file_name()).collect();
            top.sort();
            create.args(top);
        }
        run(&mut create);
        if c.append {
            // A changed copy of a plain file, of one name of a hard-link group (which leaves the group, as a new
            // file), and a new file, appended as `tar -r` does.
            put_file(&src, "block-513", b"changed, and shorter", 0o755);
            std::fs::remove_file(src.join("hard/one")).unwrap();
            put_file(&src, "hard/one", b"a new file", 0o644);
            put_file(&src, "added/new.txt", b"new", 0o644);
            run(Command::new("tar")
                .arg(format!("--format={}", c.format))
                .arg("-rf")
                .arg(&tar_path)
                .arg("-C")
                .arg(&src)
                .args(["./block-513", "./hard/one", "./added/new.txt"]));
        }
        let zst_path = work.path().join(format!("{name}.tar.zst"));
        run(Command::new("zstd").args(["-q", "-f"]).arg(&tar_path).arg("-o").arg(&zst_path));

        let version = format!("d{i}");
        h.deploy(&zst_path, &version).expect(0);
        let release = h.root().join("releases").join(&version);
        let gnu = gnu_extract(&zst_path);
        let theirs = snapshot(gnu.path());
        if !c.append {
            // The tree itself survived GNU tar's round trip (so the comparison below is about something).
            assert_same(&format!("{name} (the source against GNU tar)"), &snapshot(&src), &theirs);
        } else {
            assert_eq!(read(&release.join("block-513")), "changed, and shorter", "{name}");
            assert!(!theirs.groups.iter().any(|g| g.contains(&PathBuf::from("hard/one"))), "{name}");
        }
        assert_same(&name, &snapshot(&release), &theirs);
    }
    eprintln!("differential: {} GNU tar archives compared with GNU tar's own extraction", cases.len());
    assert_eq!(cases.len(), 13);
}

//! Fidelity: a release is what GNU tar would extract from the archive, or the archive is refused on purpose (the
//! README's "What an archive may contain"). Three kinds of evidence, all through the real binary:
//! - reproductions of the format's corner cases, built byte by byte with the tests' raw tar writer (`tarw`); where
//!   the archive is accepted, the release is also compared with GNU tar's own extraction of the same bytes;
//! - a differential test: trees packed by GNU tar in each of its formats (and appended to with `tar -r`), deployed,
//!   and compared with what GNU tar extracts from the same archive;
//! - a real Python virtualenv and a real node_modules tree, deployed and run from `current`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::harness::*;
use crate::hostile::{accepted, noise, refused};
use crate::tarw::{hdr, Hdr, Tar};

// ---------------------------------------------------------------------------------------------------------------
// Comparing trees
// ---------------------------------------------------------------------------------------------------------------

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

/// Deploys the uncompressed `tar` (as v2, after a v1), which must be accepted, and checks the release against GNU
/// tar's own extraction of the same bytes. Returns the release's directory.
#[track_caller]
fn accepted_like_gnu(h: &Host, case: &str, tar: &[u8]) -> PathBuf {
    let rel = accepted(h, case, &zst(tar));
    let raw = h.path().join(format!("{case}.tar"));
    std::fs::write(&raw, tar).unwrap();
    let gnu = gnu_extract(&raw);
    assert_same(case, &snapshot(&rel), &snapshot(gnu.path()));
    rel
}

/// The header's byte sum with its checksum field as spaces: (unsigned, signed).
fn sums(block: &mut [u8; 512]) -> (i64, i64) {
    block[148..156].fill(b' ');
    (block.iter().map(|b| i64::from(*b)).sum(), block.iter().map(|b| i64::from(*b as i8)).sum())
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// ---------------------------------------------------------------------------------------------------------------
// A. Reproductions
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn directory_sizes_swallow_nothing() {
    // A directory's size counts no data, for type `5` and for an old-style regular entry named `.../`: the file
    // right after each must not be read as the directory's data.
    let h = Host::new();
    let tar = Tar::new()
        .push(Hdr { size: 10_000, ..hdr(b'5', b"d/") }, b"")
        .file("d/after-dir.txt", b"one")
        .push(Hdr { size: 10_000, ..hdr(b'0', b"old-style/") }, b"")
        .file("old-style/after.txt", b"two")
        .end();
    let rel = accepted_like_gnu(&h, "directory_sizes", &tar);
    assert_eq!(read(&rel.join("d/after-dir.txt")), "one");
    assert_eq!(read(&rel.join("old-style/after.txt")), "two");
    assert!(rel.join("old-style").is_dir());
}

#[test]
fn pax_record_without_newline_is_refused() {
    let h = Host::new();
    let data = b"13 path=name";
    let a = Tar::new()
        .file("first", b"x")
        .push(Hdr { size: data.len() as u64, ..hdr(b'x', b"PaxHeaders/name") }, data)
        .file("pwned-unterminated", b"x")
        .zst();
    let reason = "at byte 1024: malformed PAX record at byte 0 of the extended header";
    refused(&h, "pax_record_without_newline", &a, None, reason);
}

#[test]
fn same_file_twice_keeps_the_last() {
    let h = Host::new();
    let tar = Tar::new().file("twice.txt", b"first").file("other.txt", b"o").file("twice.txt", b"second, longer").end();
    let rel = accepted_like_gnu(&h, "same_file_twice", &tar);
    assert_eq!(read(&rel.join("twice.txt")), "second, longer");
    assert_eq!(read(&rel.join("other.txt")), "o");
}

#[test]
fn file_then_symlink_of_the_same_name_is_refused() {
    let h = Host::new();
    let a = Tar::new().file("pwned-dup", b"x").symlink("pwned-dup", "../../../../outside/pwned").zst();
    let reason = "entry `pwned-dup` (header at byte 1024): the path appears twice in the archive";
    refused(&h, "file_then_symlink", &a, Some("pwned-dup"), reason);
}

#[test]
fn what_follows_the_end_marker_is_ignored() {
    // A blocked archive (whole 10240-byte records) with junk in the rest of the last record.
    let h = Host::new();
    let mut tar = Tar::new().file("blocked.txt", b"x").end();
    let junk = noise(10240 - tar.len(), 7);
    assert!(junk.iter().filter(|b| **b != 0).count() > junk.len() / 2);
    tar.extend(junk);
    assert_eq!(tar.len(), 10240);
    let rel = accepted_like_gnu(&h, "junk_in_last_record", &tar);
    assert_eq!(read(&rel.join("blocked.txt")), "x");

    // Stale buffer contents: a copy of the archive's own first header (a valid one) in the last record's padding.
    let h = Host::new();
    let mut tar = Tar::new().file("stale.txt", b"x").end();
    let first = tar[..1024].to_vec();
    tar.extend(first);
    tar.resize(10240, 0);
    accepted_like_gnu(&h, "stale_header_in_padding", &tar);

    // One zero block, then a block that is no header.
    let h = Host::new();
    let mut tar = Tar::new().file("lone.txt", b"x").unterminated();
    tar.extend([0; 512]);
    tar.extend(noise(512, 8));
    let rel = accepted_like_gnu(&h, "lone_zero_block_then_junk", &tar);
    assert_eq!(read(&rel.join("lone.txt")), "x");

    // 14 bytes of text after the last record.
    let h = Host::new();
    let mut tar = Tar::new().file("text.txt", b"x").end();
    tar.resize(10240, 0);
    tar.extend(b"14 bytes text\n");
    assert_eq!(tar.len(), 10240 + 14);
    accepted_like_gnu(&h, "text_after_last_record", &tar);
}

#[test]
fn a_second_archive_is_refused() {
    let h = Host::new();
    let mut tar = Tar::new().file("first", b"x").end();
    tar.extend(Tar::new().file("pwned-second", b"y").end());
    assert_eq!(tar.len(), 4096, "a short file: not whole records");
    let reason = "at byte 2048: a second archive follows the end of the archive (a tar header at byte 2048)";
    refused(&h, "a_second_archive", &zst(&tar), None, reason);
}

#[test]
fn signed_checksum_is_accepted() {
    let h = Host::new();
    let name = "café-signé.txt".as_bytes();
    let mut block = Hdr { size: 6, ..hdr(b'0', name) }.bytes();
    let (unsigned, signed) = sums(&mut block);
    assert!(signed < unsigned, "the name's bytes >= 0x80 make the sums differ");
    block[148..156].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
    let tar = Tar::new().block(block, b"signed").end();
    let rel = accepted_like_gnu(&h, "signed_checksum", &tar);
    assert_eq!(read(&rel.join("café-signé.txt")), "signed");
}

#[test]
fn solaris_x_header_sets_the_path() {
    let h = Host::new();
    let tar = Tar::new().pax(b'X', &[("path", b"solaris/renamed.txt")]).file("original.txt", b"x").end();
    let rel = accepted_like_gnu(&h, "solaris_x", &tar);
    assert_eq!(read(&rel.join("solaris/renamed.txt")), "x");
    assert!(!rel.join("original.txt").exists());
}

#[test]
fn hardlink_size_carries_no_data() {
    let h = Host::new();
    let tar = Tar::new()
        .file("target.txt", b"target")
        .push(Hdr { size: 100, link: b"target.txt", ..hdr(b'1', b"link.txt") }, b"")
        .file("after.txt", b"after")
        .end();
    let rel = accepted_like_gnu(&h, "hardlink_size", &tar);
    let (t, l) = (std::fs::metadata(rel.join("target.txt")).unwrap(), std::fs::metadata(rel.join("link.txt")).unwrap());
    assert_eq!(t.ino(), l.ino(), "the link must share its target's inode");
    assert_eq!(read(&rel.join("link.txt")), "target");
    assert_eq!(read(&rel.join("after.txt")), "after");
}

#[test]
fn gnu_long_name_ends_at_its_nul() {
    let h = Host::new();
    let data = b"long/real-name.txt\0stale bytes after the NUL";
    let tar = Tar::new()
        .push(Hdr { size: data.len() as u64, ..hdr(b'L', b"././@LongLink") }, data)
        .file("placeholder", b"x")
        .end();
    let rel = accepted_like_gnu(&h, "long_name_nul", &tar);
    assert_eq!(read(&rel.join("long/real-name.txt")), "x");
    assert_eq!(std::fs::read_dir(rel.join("long")).unwrap().count(), 1);
    assert!(!rel.join("placeholder").exists());
}

#[test]
fn a_later_pax_header_replaces_the_earlier_whole() {
    // The first header's `path=a` is forgotten: the entry keeps its own name and takes the second's linkpath.
    let h = Host::new();
    let tar = Tar::new()
        .file("target.txt", b"t")
        .pax(b'x', &[("path", b"a")])
        .pax(b'x', &[("linkpath", b"target.txt")])
        .symlink("from-header", "ignored")
        .end();
    let rel = accepted_like_gnu(&h, "two_pax_headers", &tar);
    assert_eq!(std::fs::read_link(rel.join("from-header")).unwrap(), Path::new("target.txt"));
    assert!(std::fs::symlink_metadata(rel.join("a")).is_err(), "the first header's path was applied");
}

#[test]
fn checksum_junk_after_its_nul_is_ignored() {
    let h = Host::new();
    let mut block = Hdr { size: 4, ..hdr(b'0', b"junk-sum.txt") }.bytes();
    let (unsigned, _) = sums(&mut block);
    let field = format!("{unsigned:05o}\x0036");
    assert_eq!(field.len(), 8);
    block[148..156].copy_from_slice(field.as_bytes());
    let tar = Tar::new().block(block, b"junk").end();
    let rel = accepted_like_gnu(&h, "checksum_junk", &tar);
    assert_eq!(read(&rel.join("junk-sum.txt")), "junk");
}

#[test]
fn gnu_dumpdir_is_a_directory() {
    let h = Host::new();
    let listing = b"Yfile.txt\0Nold.txt\0\0";
    let tar = Tar::new()
        .push(Hdr { mode: 0o755, size: listing.len() as u64, ..hdr(b'D', b"dump/") }, listing)
        .file("dump/file.txt", b"f")
        .end();
    let rel = accepted_like_gnu(&h, "dumpdir", &tar);
    assert!(std::fs::symlink_metadata(rel.join("dump")).unwrap().is_dir());
    assert_eq!(read(&rel.join("dump/file.txt")), "f");
    assert_eq!(std::fs::read_dir(rel.join("dump")).unwrap().count(), 1, "the listing is no entry");
}

#[test]
fn an_archive_may_end_without_its_marker() {
    let h = Host::new();
    let rel = accepted_like_gnu(&h, "no_end_marker", &Tar::new().file("noend.txt", b"x").unterminated());
    assert_eq!(read(&rel.join("noend.txt")), "x");

    let h = Host::new();
    let a = zst(&Tar::new().file("before", b"x").pax(b'x', &[("path", b"pwned-orphan")]).unterminated());
    let reason = "at byte 2048: the stream is truncated: it ends after the extension records at byte 1024";
    refused(&h, "ends_after_pax", &a, None, reason);
}

#[test]
fn refusals_name_the_entry_and_its_offset() {
    // The entry's own header, not that of the PAX header naming it: 1536 (600-byte file) + 1024 (PAX).
    let h = Host::new();
    let a = Tar::new().file("a", &[b'a'; 600]).pax(b'x', &[("path", b"pwned-fifo")]).special(b'6', "fifo").zst();
    let reason = "entry `pwned-fifo` (header at byte 2560): fifos are refused";
    refused(&h, "offset_of_entry", &a, Some("pwned-fifo"), reason);

    // Before any entry can be named: the offset alone.
    let h = Host::new();
    let mut tar = Tar::new().file("a", b"a").file("b", b"b").end();
    tar[2048..2560].copy_from_slice(&noise(512, 9));
    let reason = "at byte 2048: the stream is corrupt: the header checksum does not match";
    refused(&h, "offset_of_bad_header", &zst(&tar), None, reason);

    let h = Host::new();
    let a = Tar::new().dir("d/").file("d/x", b"x").hardlink("pwned-h", "d").zst();
    let reason = "entry `pwned-h` (header at byte 1536): hard link target `d` is not a regular file";
    refused(&h, "offset_of_hardlink", &a, Some("pwned-h"), reason);
}

#[test]
fn links_to_system_dirs_and_shared_are_kept() {
    let h = Host::new();
    let up = format!("{}usr/lib", "../".repeat(20));
    let tar = Tar::new()
        .dir("venvish/bin/")
        .symlink("venvish/bin/python3", "/usr/bin/python3")
        .symlink("shared-link", "../../shared/data")
        .symlink("up-to-usr", &up)
        .end();
    let rel = accepted_like_gnu(&h, "links_kept", &tar);
    assert_eq!(std::fs::read_link(rel.join("venvish/bin/python3")).unwrap(), Path::new("/usr/bin/python3"));
    assert_eq!(std::fs::read_link(rel.join("shared-link")).unwrap(), Path::new("../../shared/data"));
    assert_eq!(std::fs::read_link(rel.join("up-to-usr")).unwrap(), Path::new(&up));
}

#[test]
fn links_elsewhere_or_through_a_link_are_refused() {
    let h = Host::new();
    let a = Tar::new().symlink("x", "/etc/shadow").zst();
    refused(&h, "link_to_etc_shadow", &a, Some("x"), "symlink target `/etc/shadow` is absolute");
    let h = Host::new();
    refused(&h, "link_to_etc_shadow", &a, Some("x"), "the app's `outside_links`");

    let h = Host::with_app_config("outside_links = []");
    let a = Tar::new().dir("venvish/bin/").symlink("venvish/bin/python3", "/usr/bin/python3").zst();
    refused(&h, "no_outside_links", &a, Some("venvish/bin/python3"), "symlink target `/usr/bin/python3` is absolute");

    let h = Host::new();
    let a = Tar::new().dir("dir/").symlink("link", "dir").file("link/file", b"x").zst();
    refused(&h, "path_through_link", &a, Some("link/file"), "the path goes through `link`");
}

// ---------------------------------------------------------------------------------------------------------------
// B. Differential: GNU tar's archives, unpacked by us and by GNU tar
// ---------------------------------------------------------------------------------------------------------------

fn put_file(root: &Path, rel: &str, data: &[u8], mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

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

// ---------------------------------------------------------------------------------------------------------------
// C. Real application trees, run from `current`
// ---------------------------------------------------------------------------------------------------------------

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A host whose service is started by `start` (a shell command run in `ROOT/current`, with `PORT` and `PIDFILE`
/// replaced), stopping the previous instance first, and checked on its /healthz. The returned [`Service`] stops
/// what the pid file names when dropped.
fn app_host(start: &str) -> (Host, Service) {
    let h = Host::new();
    let port = free_port();
    let pidfile = h.path().join("service.pid");
    let pid = pidfile.display().to_string();
    let start = start.replace("PORT", &port.to_string()).replace("PIDFILE", &pid);
    let script = format!(
        "{BIN} demo-service stop --pidfile {pid}; cd {root}/current && (nohup {start} </dev/null >/dev/null 2>&1 & echo $! > {pid})",
        root = h.root().display()
    );
    h.write_config(&format!(
        "[apps.web.service]\nrestart = [\"/bin/sh\", \"-c\", {}]\ntimeout = \"10s\"\n\n[[apps.web.checks]]\nhttp = \"http://127.0.0.1:{port}/healthz\"\nexpect_status = 200\ntimeout = \"1s\"\n\n[apps.web.health]\ninterval = \"100ms\"\nhealthy_after = 2\ndeadline = \"15s\"\n",
        toml_str(&script)
    ));
    (h, Service { port, pidfile })
}

/// Packs `dir` with GNU tar and zstd as an archive under the host.
fn pack(h: &Host, dir: &Path, name: &str) -> PathBuf {
    let out = h.path().join("archives").join(format!("{name}.tar.zst"));
    run(Command::new("tar").arg("--zstd").arg("-cf").arg(&out).arg("-C").arg(dir).arg("."));
    out
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(program)).find(|p| p.is_file())
}

const APP_PY: &str = r#"import http.server, sys
import greeting

PORT = int(sys.argv[1])
VERSION = open("version.txt").read().strip()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok" if self.path == "/healthz" else greeting.hello(VERSION, sys.prefix != sys.base_prefix).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
"#;

#[test]
fn python_virtualenv_runs_from_current() {
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        eprintln!("skipping python_virtualenv_runs_from_current: /usr/bin/python3 is absent");
        return;
    }
    let (h, svc) = app_host("venv/bin/python3 app.py PORT");
    let work = tempfile::tempdir().unwrap();
    let app = work.path().join("app");
    run(Command::new(python).args(["-m", "venv", "--without-pip"]).arg(app.join("venv")));
    let lib = app.join("venv/lib");
    let pyver = std::fs::read_dir(&lib)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .find(|n| n.to_string_lossy().starts_with("python3"));
    let site = lib.join(pyver.expect("venv/lib/python3.*")).join("site-packages");
    // A module only the virtualenv has: the service imports it, so it runs in the venv or not at all.
    let greeting = "def hello(version, in_venv):\n    return f\"hello from {version} (venv: {in_venv})\"\n";
    put_file(&site, "greeting.py", greeting.as_bytes(), 0o644);
    put_file(&app, "app.py", APP_PY.as_bytes(), 0o644);

    for v in ["v1", "v2"] {
        put_file(&app, "version.txt", v.as_bytes(), 0o644);
        let out = h.deploy(&pack(&h, &app, v), v);
        out.expect(0);
        assert_eq!(h.current().as_deref(), Some(v));
        assert_eq!(svc.get("/"), Some((200, format!("hello from {v} (venv: True)"))), "{out:#?}");
    }
    let link = h.root().join("current/venv/bin/python3");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), python);
    let status = run(Command::new(&link).args(["-c", "import sys, greeting; print(sys.prefix != sys.base_prefix)"]));
    assert_eq!(status.trim(), "True");
}

#[test]
fn node_modules_tree_runs_from_current() {
    let (Some(node), Some(npm)) = (which("node"), which("npm")) else {
        eprintln!("skipping node_modules_tree_runs_from_current: node or npm is missing");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let (lib, app) = (work.path().join("lib"), work.path().join("app"));
    let npm_cmd = |dir: &Path, args: &[&str]| {
        run(Command::new(&npm)
            .args(args)
            .args(["--offline", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir)
            .env("npm_config_cache", work.path().join("npm-cache"))
            .env("npm_config_update_notifier", "false"))
    };
    put_file(&lib, "package.json", br#"{"name":"lib","version":"1.0.0","main":"index.js","bin":{"x":"bin/x"}}"#, 0o644);
    put_file(&lib, "index.js", b"exports.greet = (v) => `hello from ${v} via lib`;\n", 0o644);
    put_file(&lib, "bin/x", b"#!/usr/bin/env node\nconsole.log(require('../index.js').greet('x'));\n", 0o755);
    put_file(&app, "package.json", br#"{"name":"app","version":"1.0.0","private":true}"#, 0o644);
    npm_cmd(&lib, &["pack", "--pack-destination", app.to_str().unwrap()]);
    npm_cmd(&app, &["install", "./lib-1.0.0.tgz"]);
    assert_eq!(std::fs::read_link(app.join("node_modules/.bin/x")).unwrap(), Path::new("../lib/bin/x"));
    let server = "const http = require('http'), fs = require('fs'), lib = require('lib');\n\
        const version = fs.readFileSync('version.txt', 'utf8').trim();\n\
        http.createServer((req, res) => {\n  res.setHeader('Connection', 'close');\n  \
        res.end(req.url === '/healthz' ? 'ok' : lib.greet(version));\n}).listen(Number(process.argv[2]), '127.0.0.1');\n";
    put_file(&app, "server.js", server.as_bytes(), 0o644);
    put_file(&app, "version.txt", b"v1", 0o644);

    let (h, svc) = app_host(&format!("{} server.js PORT", node.display()));
    let out = h.deploy(&pack(&h, &app, "v1"), "v1");
    out.expect(0);
    assert_eq!(svc.get("/"), Some((200, "hello from v1 via lib".to_owned())), "{out:#?}");
    let bin = h.root().join("current/node_modules/.bin/x");
    let target = std::fs::read_link(&bin).unwrap();
    assert!(target.is_relative(), "{}", target.display());
    let release = h.root().join("releases/v1").canonicalize().unwrap();
    let resolved = bin.canonicalize().unwrap();
    assert!(resolved.starts_with(&release), "{} resolves outside the release", resolved.display());
    assert_eq!(run(&mut Command::new(&bin)).trim(), "hello from x via lib");
}

//! Reproductions of the tar format's corner cases, built byte by byte with the tests' raw tar writer (`tarw`):
//! each is accepted as GNU tar extracts it (and compared with GNU tar's extraction of the same bytes) or refused
//! on purpose, naming the entry and its offset.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{assert_same, gnu_extract, read, snapshot};
use crate::harness::*;
use crate::hostile::{accepted, noise, refused};
use crate::tarw::{hdr, Hdr, Tar};

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

//! Hostile entries: device nodes, fifos, sparse and unknown types, paths that appear twice, and PAX and GNU
//! extension records (xattrs, sizes, records too large, global paths, malformed records).

use super::{accepted, outside, refused, UP_TO_OUTSIDE};
use crate::harness::*;
use crate::tarw::{hdr, pax_records, Hdr, Tar};

// ---------------------------------------------------------------------------------------------------------------
// Entry types
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn char_device() {
    let h = Host::new();
    let a = Tar::new().special(b'3', "pwned-chr").zst();
    refused(&h, "char_device", &a, Some("pwned-chr"), "device nodes are refused");
}

#[test]
fn block_device() {
    let h = Host::new();
    let a = Tar::new().special(b'4', "pwned-blk").zst();
    refused(&h, "block_device", &a, Some("pwned-blk"), "device nodes are refused");
}

#[test]
fn fifo() {
    let h = Host::new();
    let a = Tar::new().special(b'6', "pwned-fifo").zst();
    refused(&h, "fifo", &a, Some("pwned-fifo"), "fifos are refused");
}

#[test]
fn gnu_sparse() {
    let h = Host::new();
    let a = Tar::new().push(Hdr { size: 512, ..hdr(b'S', b"pwned-sparse") }, &[7; 512]).zst();
    refused(&h, "gnu_sparse", &a, Some("pwned-sparse"), "sparse files are refused");
}

#[test]
fn unknown_type() {
    let h = Host::new();
    let a = Tar::new().special(b'Z', "pwned-z").zst();
    refused(&h, "unknown_type", &a, Some("pwned-z"), "unknown entry type 'Z'");
}

#[test]
fn solaris_extended_header_type() {
    // `X` is Solaris tar's spelling of a PAX extended header (GNU tar reads it as one): its path applies.
    let h = Host::new();
    let a = Tar::new().pax(b'X', &[("path", b"renamed.txt")]).file("original.txt", b"x").zst();
    let rel = accepted(&h, "solaris_extended_header_type", &a);
    assert_eq!(std::fs::read(rel.join("renamed.txt")).unwrap(), b"x");
    assert!(!rel.join("original.txt").exists());
}

// ---------------------------------------------------------------------------------------------------------------
// Duplicates
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn duplicate_file_then_symlink() {
    let h = Host::new();
    let a = Tar::new().file("pwned-dup", b"x").symlink("pwned-dup", UP_TO_OUTSIDE).zst();
    refused(&h, "duplicate_file_then_symlink", &a, Some("pwned-dup"), "the path appears twice in the archive");
}

#[test]
fn duplicate_file_then_directory() {
    let h = Host::new();
    let a = Tar::new().file("pwned-dup", b"x").dir("pwned-dup/").zst();
    let reason = "the path appears twice with a different type";
    refused(&h, "duplicate_file_then_directory", &a, Some("pwned-dup/"), reason);
}

#[test]
fn duplicate_directory_then_file() {
    let h = Host::new();
    let a = Tar::new().dir("pwned-dup/").file("pwned-dup", b"x").zst();
    let reason = "the path appears twice with a different type";
    refused(&h, "duplicate_directory_then_file", &a, Some("pwned-dup"), reason);
}

// ---------------------------------------------------------------------------------------------------------------
// PAX and GNU extension records
// ---------------------------------------------------------------------------------------------------------------

fn refused_pax_key(case: &str, key: &str) {
    let h = Host::new();
    let a = Tar::new().pax(b'x', &[(key, b"\x01\x00\x00\x02\xff\xff\xff\xff")]).file("pwned-xattr", b"x").zst();
    refused(&h, case, &a, None, &format!("PAX record `{key}` is refused"));
}

#[test]
fn pax_xattr_capability() {
    refused_pax_key("pax_xattr_capability", "SCHILY.xattr.security.capability");
}

#[test]
fn pax_libarchive_xattr() {
    refused_pax_key("pax_libarchive_xattr", "LIBARCHIVE.xattr.user.x");
}

#[test]
fn pax_gnu_sparse() {
    refused_pax_key("pax_gnu_sparse", "GNU.sparse.major");
}

#[test]
fn pax_size_overrides_the_header() {
    // POSIX: a PAX `size` overrides the header's (GNU tar reads it so): 5 bytes of data, whatever the header says.
    let h = Host::new();
    let a = Tar::new().pax(b'x', &[("size", b"5")]).file("sized", b"abc").file("next", b"12345").zst();
    let rel = accepted(&h, "pax_size_overrides_the_header", &a);
    assert_eq!(std::fs::read(rel.join("sized")).unwrap(), b"abc\0\0");
    assert_eq!(std::fs::read(rel.join("next")).unwrap(), b"12345");
}

#[test]
fn pax_record_too_large() {
    let h = Host::new();
    let comment = vec![b'c'; 70_000];
    let a = Tar::new().pax(b'x', &[("comment", &comment)]).file("pwned-big-pax", b"x").zst();
    let size = pax_records(&[("comment", &comment)]).len();
    let reason = format!("a PAX record of {size} bytes exceeds the limit of 65536 bytes");
    refused(&h, "pax_record_too_large", &a, None, &reason);
}

#[test]
fn gnu_long_name_too_large() {
    let h = Host::new();
    let name = format!("pwned/{}", "n/".repeat(35_000));
    let a = Tar::new().gnu_long(b'L', &name).file("innocent.txt", b"x").zst();
    let reason = format!("a long name record of {} bytes exceeds the limit of 65536 bytes", name.len() + 1);
    refused(&h, "gnu_long_name_too_large", &a, None, &reason);
}

#[test]
fn pax_global_path() {
    // A global header may not rename entries: `path` there would apply to every entry that follows.
    let h = Host::new();
    let p = outside(&h, "pwned");
    let a = Tar::new().pax(b'g', &[("path", p.as_bytes())]).file("innocent.txt", b"x").zst();
    refused(&h, "pax_global_path", &a, None, "PAX record `path` in a global header is refused");
}

#[test]
fn pax_record_malformed() {
    let h = Host::new();
    let a = Tar::new().push(Hdr { size: 9, ..hdr(b'x', b"PaxHeaders/x") }, b"99 path=\n").file("pwned-m", b"x").zst();
    refused(&h, "pax_record_malformed", &a, None, "malformed PAX record");
}

//! Broken streams (empty, truncated, corrupt, with a second archive or garbage after the end) and the limits on
//! entries, size, path length, depth and the zstd window.

use std::io::Write;

use super::{accepted, noise, refused};
use crate::harness::*;
use crate::tarw::{hdr, Hdr, Tar};

// ---------------------------------------------------------------------------------------------------------------
// Broken streams
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn empty_archive() {
    let h = Host::new();
    refused(&h, "empty_archive", &Tar::new().zst(), None, "the archive is empty");
}

#[test]
fn empty_zstd_stream() {
    let h = Host::new();
    refused(&h, "empty_zstd_stream", &zst(b""), None, "the archive is empty");
}

#[test]
fn entry_truncated_mid_data() {
    let h = Host::new();
    let mut tar = Tar::new().file("pwned-cut", &noise(10_000, 1)).end();
    tar.truncate(512 + 3000);
    refused(&h, "entry_truncated_mid_data", &zst(&tar), Some("pwned-cut"), "the stream is truncated");
}

#[test]
fn directory_size_is_ignored() {
    // A directory's size field counts no data (POSIX; GNU tar): the next header follows at once. Skipping 10,000
    // bytes would swallow the next entry, and lose it silently.
    let h = Host::new();
    let a = Tar::new()
        .push(Hdr { size: 10_000, ..hdr(b'5', b"d/") }, b"")
        .push(Hdr { size: 10_000, ..hdr(b'0', b"old-style/") }, b"")
        .file("d/after.txt", b"kept")
        .zst();
    let rel = accepted(&h, "directory_size_is_ignored", &a);
    assert_eq!(std::fs::read(rel.join("d/after.txt")).unwrap(), b"kept");
    assert!(rel.join("old-style").is_dir());
}

#[test]
fn compressed_stream_cut_in_half() {
    let h = Host::new();
    let mut a = Tar::new().file("pwned-half", &noise(256 << 10, 2)).zst();
    a.truncate(a.len() / 2);
    refused(&h, "compressed_stream_cut_in_half", &a, None, "the stream is truncated");
}

#[test]
fn random_garbage() {
    let h = Host::new();
    refused(&h, "random_garbage", &noise(4096, 3), None, "the stream is corrupt");
}

#[test]
fn non_zero_data_after_end_blocks() {
    let h = Host::new();
    let mut tar = Tar::new().file("pwned-trailer", b"x").end();
    tar.extend(Tar::new().file("pwned-smuggled", b"y").end());
    let reason = "a second archive follows the end of the archive";
    refused(&h, "non_zero_data_after_end_blocks", &zst(&tar), None, reason);
}

#[test]
fn garbage_after_zstd_frame() {
    let h = Host::new();
    let mut a = Tar::new().file("pwned-frame", b"x").zst();
    a.extend(noise(1000, 4));
    refused(&h, "garbage_after_zstd_frame", &a, None, "the stream is corrupt");
}

#[test]
fn missing_end_blocks() {
    // An archive that ends where an entry ends, without the end-of-archive marker: GNU tar extracts it, and so do
    // we (zstd's frame says the stream is whole). Extension records left without their entry are a cut stream.
    let h = Host::new();
    let a = zst(&Tar::new().file("noend", b"x").unterminated());
    let rel = accepted(&h, "missing_end_blocks", &a);
    assert_eq!(std::fs::read(rel.join("noend")).unwrap(), b"x");
    let h = Host::new();
    let a = zst(&Tar::new().file("before", b"x").pax(b'x', &[("path", b"pwned-orphan")]).unterminated());
    refused(&h, "missing_end_blocks", &a, None, "the stream is truncated: it ends after the extension records");
}

#[test]
fn bad_header_checksum() {
    let h = Host::new();
    let mut tar = Tar::new().file("pwned-sum", b"x").end();
    tar[0] = b'P'; // the name changes, the checksum does not
    refused(&h, "bad_header_checksum", &zst(&tar), None, "the stream is corrupt");
}

// ---------------------------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------------------------

const SMALL_LIMITS: &str = "limits = { max_entries = 10, max_unpacked = \"1KiB\", max_path_len = 64, max_depth = 4 }";

#[test]
fn limit_entries() {
    let h = Host::with_app_config(SMALL_LIMITS);
    let a = (0..11).fold(Tar::new(), |t, i| t.file(format!("pwned-{i}"), b"x")).zst();
    refused(&h, "limit_entries", &a, None, "more than 10 entries");
}

#[test]
fn limit_unpacked_size() {
    let h = Host::with_app_config(SMALL_LIMITS);
    let a = Tar::new().file("pwned-big", &[b'b'; 2048]).zst();
    refused(&h, "limit_unpacked_size", &a, Some("pwned-big"), "unpacked size exceeds the limit of 1024 bytes");
}

#[test]
fn limit_path_length() {
    let h = Host::with_app_config(SMALL_LIMITS);
    let name = format!("pwned-{}", "p".repeat(94));
    assert_eq!(name.len(), 100);
    let a = Tar::new().file(&name, b"x").zst();
    refused(&h, "limit_path_length", &a, Some(&name), "the path is 100 bytes long (limit 64)");
}

#[test]
fn limit_depth() {
    let h = Host::with_app_config(SMALL_LIMITS);
    let a = Tar::new().file("a/b/c/d/pwned", b"x").zst();
    refused(&h, "limit_depth", &a, Some("a/b/c/d/pwned"), "the path is 5 levels deep (limit 4)");
}

#[test]
fn file_claims_huge_size() {
    // The header claims 8 GiB - 1 (the largest octal size) over the default 4 GiB limit; no data follows.
    let h = Host::new();
    let a = zst(&Tar::new().push(Hdr { size: 0o77777777777, ..hdr(b'0', b"pwned-huge") }, b"").unterminated());
    refused(&h, "file_claims_huge_size", &a, Some("pwned-huge"), "unpacked size exceeds the limit of 4294967296 bytes");
}

#[test]
fn limit_zstd_window() {
    // 4 MiB of noise with a 1 MiB block repeated 3 MiB later, compressed with a 16 MiB window (window_log 24).
    let mut data = noise(4 << 20, 5);
    let block = data[..1 << 20].to_vec();
    data[3 << 20..].copy_from_slice(&block);
    let tar = Tar::new().file("pwned-window", &data).end();
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(24)).unwrap();
    enc.long_distance_matching(true).unwrap();
    enc.write_all(&tar).unwrap();
    let archive = enc.finish().unwrap();
    assert!(archive.len() < tar.len() - (512 << 10), "the repeat should have been found 3 MiB back");

    let h = Host::with_app_config("limits = { max_window = \"1MiB\" }");
    refused(&h, "limit_zstd_window", &archive, None, "the zstd window exceeds the limit of 1048576 bytes");

    // Control: with the default 16 MiB limit the same archive unpacks.
    let h = Host::new();
    h.deploy_simple("v1").expect(0);
    let dir = h.root().join("releases/v2");
    let path = h.archive("limit_zstd_window.tar.zst", &archive);
    h.deploy(&path, "v2").expect(0);
    assert!(std::fs::read(dir.join("pwned-window")).unwrap() == data);
}

//! Hostile and broken archives, built byte by byte with the tests' raw tar writer (`tarw`; the tar crate's
//! builder refuses to write most of them). Each must be refused with a message naming the problem, leave
//! `current`, the releases directory and everything outside the app root untouched, and leave the agent able to
//! deploy again. Positive controls at the end prove the checks are not over-broad.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::tarw::{hdr, pax_records, Hdr, Tar};

// ---------------------------------------------------------------------------------------------------------------
// Shared assertions
// ---------------------------------------------------------------------------------------------------------------

/// Deterministic incompressible bytes.
pub(crate) fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `DIR/outside/NAME`, as an absolute path string.
fn outside(h: &Host, name: &str) -> String {
    format!("{}/{name}", h.outside().display())
}

/// From a release directory (`DIR/srv/web/releases/V`) to `DIR/outside`.
const UP_TO_OUTSIDE: &str = "../../../../outside";

/// Deploys `v1`, then `archive` as `v2`, which must be refused naming `entry` (when given) and `reason`; then
/// checks that nothing changed and that the agent still deploys.
#[track_caller]
pub(crate) fn refused(h: &Host, case: &str, archive: &[u8], entry: Option<&str>, reason: &str) {
    h.deploy_simple("v1").expect(0);
    let path = h.archive(&format!("{case}.tar.zst"), archive);
    let out = h.deploy(&path, "v2");
    assert_eq!(out.code, 1, "{case}: expected a refusal (exit 1): {out:#?}");
    let head = format!("error: refused archive {}: ", path.display());
    assert!(out.stderr.contains(&head), "{case}: stderr lacks `{head}`: {out:#?}");
    if let Some(entry) = entry {
        let named = format!("entry `{entry}` (header at byte ");
        assert!(out.stderr.contains(&named), "{case}: stderr does not name the entry (`{named}`): {out:#?}");
    }
    assert!(out.stderr.contains(reason), "{case}: stderr does not say `{reason}`: {out:#?}");
    assert_untouched(h, case);
}

/// After a refused `v2`: `current` is still `v1`, nothing escaped, no staging directory is left, and `v3` deploys.
#[track_caller]
pub(crate) fn assert_untouched(h: &Host, case: &str) {
    assert_eq!(h.current().as_deref(), Some("v1"), "{case}: current moved");
    assert_eq!(h.read_current("version.txt"), "v1", "{case}: the current release changed");
    assert_eq!(h.escapes("pwned"), Vec::<PathBuf>::new(), "{case}: something was written where it must not be");
    assert_eq!(h.release_dirs(), ["v1"], "{case}: a staging directory or release was left behind");
    h.deploy_simple("v3").expect(0);
    assert_eq!(h.current().as_deref(), Some("v3"), "{case}: the agent no longer deploys");
    assert_eq!(h.read_current("version.txt"), "v3", "{case}: the agent no longer deploys");
}

/// Deploys `v1`, then `archive` as `v2`, which must succeed; returns the new release's directory.
#[track_caller]
pub(crate) fn accepted(h: &Host, case: &str, archive: &[u8]) -> PathBuf {
    h.deploy_simple("v1").expect(0);
    let path = h.archive(&format!("{case}.tar.zst"), archive);
    let out = h.deploy(&path, "v2");
    assert_eq!(out.code, 0, "{case}: expected the archive to be accepted: {out:#?}");
    assert_eq!(h.current().as_deref(), Some("v2"), "{case}");
    assert_eq!(h.escapes("pwned"), Vec::<PathBuf>::new(), "{case}");
    assert_eq!(h.release_dirs(), ["v1", "v2"], "{case}");
    h.root().join("releases/v2")
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

const ABSOLUTE: &str = "absolute paths are refused";
const PARENT: &str = "`..` components are refused";

// ---------------------------------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn path_absolute() {
    let h = Host::new();
    let p = outside(&h, "pwned");
    refused(&h, "path_absolute", &Tar::new().file(&p, b"x").zst(), Some(&p), ABSOLUTE);
}

#[test]
fn path_parent() {
    let h = Host::new();
    refused(&h, "path_parent", &Tar::new().file("../pwned", b"x").zst(), Some("../pwned"), PARENT);
}

#[test]
fn path_parent_after_a_component() {
    let h = Host::new();
    let a = Tar::new().dir("a/").file("a/../../pwned", b"x").zst();
    refused(&h, "path_parent_after_a_component", &a, Some("a/../../pwned"), PARENT);
}

#[test]
fn path_dotdot_as_whole_name() {
    let h = Host::new();
    refused(&h, "path_dotdot_as_whole_name", &Tar::new().file("..", b"pwned").zst(), Some(".."), PARENT);
}

#[test]
fn path_absolute_in_ustar_prefix() {
    let h = Host::new();
    let dir = h.outside().display().to_string();
    let a = Tar::new().push(Hdr { size: 1, prefix: dir.as_bytes(), ..hdr(b'0', b"pwned") }, b"x").zst();
    refused(&h, "path_absolute_in_ustar_prefix", &a, Some(&outside(&h, "pwned")), ABSOLUTE);
}

#[test]
fn pax_path_absolute() {
    let h = Host::new();
    let p = outside(&h, "pwned");
    let a = Tar::new().pax(b'x', &[("path", p.as_bytes())]).file("innocent.txt", b"x").zst();
    refused(&h, "pax_path_absolute", &a, Some(&p), ABSOLUTE);
}

#[test]
fn pax_path_parent() {
    let h = Host::new();
    let p = format!("{UP_TO_OUTSIDE}/pwned");
    let a = Tar::new().pax(b'x', &[("path", p.as_bytes())]).file("innocent.txt", b"x").zst();
    refused(&h, "pax_path_parent", &a, Some(&p), PARENT);
}

#[test]
fn gnu_long_name_absolute() {
    let h = Host::new();
    let p = outside(&h, &format!("pwned-{}", "x".repeat(120)));
    let a = Tar::new().gnu_long(b'L', &p).file("innocent.txt", b"x").zst();
    refused(&h, "gnu_long_name_absolute", &a, Some(&p), ABSOLUTE);
}

#[test]
fn gnu_long_name_parent() {
    let h = Host::new();
    let p = format!("{}{UP_TO_OUTSIDE}/pwned", "a/".repeat(60));
    let a = Tar::new().gnu_long(b'L', &p).file("innocent.txt", b"x").zst();
    refused(&h, "gnu_long_name_parent", &a, Some(&p), PARENT);
}

#[test]
fn path_component_too_long() {
    let h = Host::new();
    let p = format!("pwned-{}", "c".repeat(300));
    let a = Tar::new().gnu_long(b'L', &p).file("innocent.txt", b"x").zst();
    refused(&h, "path_component_too_long", &a, Some(&p), "a path component is longer than 255 bytes");
}

#[test]
fn pax_path_with_nul() {
    let h = Host::new();
    let a = Tar::new().pax(b'x', &[("path", b"pwned\0/../../x")]).file("innocent.txt", b"x").zst();
    refused(&h, "pax_path_with_nul", &a, None, "the path contains a NUL byte");
}

// ---------------------------------------------------------------------------------------------------------------
// Symlinks
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn symlink_absolute_target() {
    let h = Host::new();
    let t = outside(&h, "pwned");
    let a = Tar::new().symlink("pwned-abs", &t).zst();
    refused(&h, "symlink_absolute_target", &a, Some("pwned-abs"), &format!("symlink target `{t}` is absolute"));
}

#[test]
fn symlink_parent_target() {
    let h = Host::new();
    let a = Tar::new().symlink("pwned-up", "../../pwned").zst();
    let reason = "symlink target `../../pwned` escapes the release";
    refused(&h, "symlink_parent_target", &a, Some("pwned-up"), reason);
}

#[test]
fn symlink_chain_escapes_only_when_followed() {
    // Lexically `x/a/../..` is the release root; really `x/a` is `x`, so it is the release's parent.
    let h = Host::new();
    let a = Tar::new().dir("x/").symlink("x/a", ".").symlink("pwned-chain", "x/a/../..").zst();
    let reason = "symlink target `x/a/../..` escapes the release";
    refused(&h, "symlink_chain_escapes_only_when_followed", &a, Some("pwned-chain"), reason);
}

#[test]
fn symlink_chain_to_outside() {
    let h = Host::new();
    let t = format!("a/{UP_TO_OUTSIDE}/pwned");
    let a = Tar::new().symlink("a", ".").symlink("pwned-b", &t).zst();
    refused(&h, "symlink_chain_to_outside", &a, Some("pwned-b"), "escapes the release");
}

#[test]
fn symlink_loop() {
    let h = Host::new();
    let a = Tar::new().symlink("pwned-p", "pwned-q").symlink("pwned-q", "pwned-p").zst();
    refused(&h, "symlink_loop", &a, None, "resolves through too many links");
}

#[test]
fn symlink_then_file_through_it() {
    let h = Host::new();
    let a = Tar::new().symlink("pwned-link", UP_TO_OUTSIDE).file("pwned-link/pwned", b"x").zst();
    let reason = "the path goes through `pwned-link`, which is not a directory of the archive";
    refused(&h, "symlink_then_file_through_it", &a, Some("pwned-link/pwned"), reason);
}

#[test]
fn symlink_to_dir_then_file_under_it() {
    let h = Host::new();
    let a = Tar::new().dir("d/").symlink("pwned-s", "d").file("pwned-s/pwned", b"x").zst();
    let reason = "the path goes through `pwned-s`, which is not a directory of the archive";
    refused(&h, "symlink_to_dir_then_file_under_it", &a, Some("pwned-s/pwned"), reason);
}

#[test]
fn pax_linkpath_absolute() {
    let h = Host::new();
    let t = outside(&h, "pwned");
    let a = Tar::new().pax(b'x', &[("linkpath", t.as_bytes())]).symlink("pwned-pax", "innocent").zst();
    refused(&h, "pax_linkpath_absolute", &a, Some("pwned-pax"), &format!("symlink target `{t}` is absolute"));
}

#[test]
fn gnu_long_link_escapes() {
    let h = Host::new();
    let t = format!("{}{UP_TO_OUTSIDE}/pwned", "../".repeat(40));
    let a = Tar::new().gnu_long(b'K', &t).symlink("pwned-k", "innocent").zst();
    refused(&h, "gnu_long_link_escapes", &a, Some("pwned-k"), &format!("symlink target `{t}` escapes the release"));
}

// ---------------------------------------------------------------------------------------------------------------
// Hard links
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn hardlink_parent_target() {
    let h = Host::new();
    let a = Tar::new().hardlink("pwned-h", "../outside/pwned").zst();
    let reason = "hard link target `../outside/pwned` is outside the release";
    refused(&h, "hardlink_parent_target", &a, Some("pwned-h"), reason);
}

#[test]
fn hardlink_absolute_target() {
    let h = Host::new();
    let t = outside(&h, "pwned");
    let a = Tar::new().hardlink("pwned-h", &t).zst();
    let reason = format!("hard link target `{t}` is outside the release");
    refused(&h, "hardlink_absolute_target", &a, Some("pwned-h"), &reason);
}

#[test]
fn hardlink_to_directory() {
    let h = Host::new();
    let a = Tar::new().dir("d/").hardlink("pwned-h", "d").zst();
    refused(&h, "hardlink_to_directory", &a, Some("pwned-h"), "hard link target `d` is not a regular file");
}

#[test]
fn hardlink_to_symlink() {
    let h = Host::new();
    let a = Tar::new().file("a.txt", b"a").symlink("s", "a.txt").hardlink("pwned-h", "s").zst();
    refused(&h, "hardlink_to_symlink", &a, Some("pwned-h"), "hard link target `s` is not a regular file");
}

#[test]
fn hardlink_to_later_entry() {
    let h = Host::new();
    let a = Tar::new().hardlink("pwned-h", "later.txt").file("later.txt", b"x").zst();
    let reason = "hard link target `later.txt` has not appeared earlier in the archive";
    refused(&h, "hardlink_to_later_entry", &a, Some("pwned-h"), reason);
}

#[test]
fn hardlink_to_itself() {
    let h = Host::new();
    let a = Tar::new().hardlink("pwned-h", "pwned-h").zst();
    let reason = "hard link target `pwned-h` has not appeared earlier in the archive";
    refused(&h, "hardlink_to_itself", &a, Some("pwned-h"), reason);
}

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

// ---------------------------------------------------------------------------------------------------------------
// Positive controls: these must be accepted
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn accepts_dot_slash_paths() {
    let h = Host::new();
    let a = Tar::new().dir("./").dir("./etc/").file("./etc/app.conf", b"conf").file("./version.txt", b"v2").zst();
    let rel = accepted(&h, "accepts_dot_slash_paths", &a);
    assert_eq!(std::fs::read_to_string(rel.join("etc/app.conf")).unwrap(), "conf");
    assert_eq!(h.read_current("version.txt"), "v2");
}

#[test]
fn accepts_symlinks_that_stay_inside() {
    let h = Host::new();
    let a = Tar::new()
        .dir("lib/")
        .file("lib/libx.so.1", b"elf")
        .symlink("lib/libx.so", "libx.so.1")
        .dir("bin/")
        .symlink("bin/up", "../lib")
        .zst();
    let rel = accepted(&h, "accepts_symlinks_that_stay_inside", &a);
    assert_eq!(std::fs::read_link(rel.join("lib/libx.so")).unwrap(), Path::new("libx.so.1"));
    assert_eq!(std::fs::read_link(rel.join("bin/up")).unwrap(), Path::new("../lib"));
    assert_eq!(std::fs::read_to_string(rel.join("lib/libx.so")).unwrap(), "elf");
    assert_eq!(std::fs::read_to_string(rel.join("bin/up/libx.so.1")).unwrap(), "elf");
}

#[test]
fn accepts_hardlink_to_earlier_file() {
    let h = Host::new();
    let a = Tar::new().dir("d/").file("d/a.txt", b"same").hardlink("b.txt", "d/a.txt").zst();
    let rel = accepted(&h, "accepts_hardlink_to_earlier_file", &a);
    let (a, b) = (std::fs::metadata(rel.join("d/a.txt")).unwrap(), std::fs::metadata(rel.join("b.txt")).unwrap());
    assert_eq!(a.ino(), b.ino(), "both names must be the same file");
    assert_eq!(a.nlink(), 2);
    assert_eq!(std::fs::read_to_string(rel.join("b.txt")).unwrap(), "same");
}

#[test]
fn accepts_pax_global_comment() {
    // What `git archive` writes first: a global header with the commit id.
    let h = Host::new();
    let a = Tar::new()
        .pax(b'g', &[("comment", b"3f786850e387550fdab836ed7e6dc881de23001b")])
        .file("version.txt", b"v2")
        .zst();
    accepted(&h, "accepts_pax_global_comment", &a);
    assert_eq!(h.read_current("version.txt"), "v2");
}

#[test]
fn accepts_pax_path_and_times() {
    let h = Host::new();
    let name = format!("docs/{}.txt", "q".repeat(150));
    let a = Tar::new()
        .pax(b'x', &[("path", name.as_bytes()), ("mtime", b"1700000000.5"), ("uname", b"builder")])
        .file("docs/truncated", b"pax")
        .zst();
    let rel = accepted(&h, "accepts_pax_path_and_times", &a);
    assert_eq!(std::fs::read_to_string(rel.join(&name)).unwrap(), "pax");
    assert!(!rel.join("docs/truncated").exists());
}

#[test]
fn accepts_gnu_long_name() {
    let h = Host::new();
    let name = format!("docs/{}.txt", "n".repeat(191));
    assert_eq!(name.len(), 200);
    let a = Tar::new().gnu_long(b'L', &name).file(&name[..100], b"long").zst();
    let rel = accepted(&h, "accepts_gnu_long_name", &a);
    assert_eq!(std::fs::read_to_string(rel.join(&name)).unwrap(), "long");
}

#[test]
fn accepts_and_strips_special_modes() {
    let h = Host::new();
    let a = Tar::new()
        .dir_mode("tmp/", 0o1777)
        .dir_mode("shared-dir/", 0o2777)
        .file_mode("bin/tool", b"#!/bin/sh\n", 0o6777)
        .file_mode("data.txt", b"d", 0o666)
        .file_mode("private.txt", b"p", 0o000)
        .zst();
    let rel = accepted(&h, "accepts_and_strips_special_modes", &a);
    assert_eq!(mode(&rel.join("bin/tool")), 0o555);
    assert_eq!(mode(&rel.join("tmp")), 0o755);
    assert_eq!(mode(&rel.join("shared-dir")), 0o755);
    assert_eq!(mode(&rel.join("data.txt")), 0o444);
    assert_eq!(mode(&rel.join("private.txt")), 0o400);
}

#[test]
fn files_are_read_only() {
    let h = Host::new();
    let a = Tar::new()
        .file_mode("a.txt", b"a", 0o644)
        .file_mode("run.sh", b"#!/bin/sh\n", 0o775)
        .file_mode("w.txt", b"w", 0o222)
        .dir("d/")
        .file_mode("d/e.txt", b"e", 0o666)
        .zst();
    let rel = accepted(&h, "files_are_read_only", &a);
    for f in ["a.txt", "run.sh", "w.txt", "d/e.txt"] {
        let m = mode(&rel.join(f));
        assert_eq!(m & 0o222, 0, "{f} has write bits: {m:o}");
        assert_eq!(m & 0o400, 0o400, "{f} is not readable by its owner: {m:o}");
    }
    assert_eq!(mode(&rel.join("run.sh")), 0o555);
}

// ---------------------------------------------------------------------------------------------------------------
// Resource exhaustion through symlink resolution
// ---------------------------------------------------------------------------------------------------------------

/// `l0 -> .`, `l1 -> l0/l0`, ..., `lN -> lN-1/lN-1`: each link is shallow (N levels of nesting), but resolving
/// `lN` follows 2^N links. The kernel gives up after 40 links in one lookup (ELOOP); the unpacker must refuse such
/// an archive promptly instead of spending exponential time in its own resolution.
#[test]
fn symlink_doubling_chain_is_refused_promptly() {
    let h = Host::new();
    h.deploy_simple("v1").expect(0);
    let mut tar = Tar::new().symlink("pwned-l0", ".");
    for i in 1..=32 {
        tar = tar.symlink(format!("pwned-l{i}"), format!("pwned-l{0}/pwned-l{0}", i - 1));
    }
    let path = h.archive("symlink_doubling_chain.tar.zst", &tar.zst());
    let mut child = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&h.config)
        .args(["deploy", "web", "--file", path.to_str().unwrap(), "--version", "v2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("symlink_doubling_chain: still resolving links after 20 s (exponential symlink resolution)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "symlink_doubling_chain: expected a refusal: {stderr}");
    assert!(stderr.contains("resolves through too many links"), "symlink_doubling_chain: {stderr}");
    assert_untouched(&h, "symlink_doubling_chain");
}

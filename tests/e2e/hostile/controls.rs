//! Positive controls: archives that must be accepted, so that the checks are not over-broad; and what the unpacker
//! makes of modes (special bits stripped, files read-only).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::accepted;
use crate::harness::*;
use crate::tarw::Tar;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

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

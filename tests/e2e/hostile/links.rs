//! Hostile links: symbolic links that escape the release (directly, through a chain, a PAX linkpath or a GNU long
//! link), paths through links, hard links to what is not an earlier regular file of the release, and a chain of
//! links that would take exponential time to resolve.

use std::time::{Duration, Instant};

use super::{assert_untouched, outside, refused, UP_TO_OUTSIDE};
use crate::harness::*;
use crate::tarw::Tar;

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

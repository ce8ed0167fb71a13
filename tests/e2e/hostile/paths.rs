//! Hostile entry names: absolute, with `..`, in a ustar prefix, a PAX `path` or a GNU long name, too long, with a
//! NUL byte.

use super::{outside, refused, UP_TO_OUTSIDE};
use crate::harness::*;
use crate::tarw::{hdr, Hdr, Tar};

const ABSOLUTE: &str = "absolute paths are refused";
const PARENT: &str = "`..` components are refused";

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

//! Hostile and broken archives, built byte by byte with the tests' raw tar writer (`tarw`; the tar crate's
//! builder refuses to write most of them). Each must be refused with a message naming the problem, leave
//! `current`, the releases directory and everything outside the app root untouched, and leave the agent able to
//! deploy again. Positive controls (`hostile/controls.rs`) prove the checks are not over-broad.
//! This file holds the assertions every case shares; `hostile/paths.rs` entry names, `hostile/links.rs` symbolic
//! and hard links, `hostile/entries.rs` entry types, duplicates and extension records, `hostile/streams.rs`
//! broken streams and limits.

mod controls;
mod entries;
mod links;
mod paths;
mod streams;

use std::path::PathBuf;

use crate::harness::*;

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

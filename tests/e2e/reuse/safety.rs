//! Reuse where it could go wrong: releases that share inodes are pruned and rolled back to, a donor of another
//! owner, a donor changed on disk after it was verified, and the unpacker's own temporary name in an archive.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{
    assert_shared_count, assert_tree, deploy, next, noise, reference, rows, shareable, walk, Spec, BIG, HARDLINK,
};
use crate::harness::*;
use crate::security::User;

/// Paths of `v1` whose content is unique in it (so the file has one donor) and that `next(v1, 1)` and
/// `next(v2, 2)` leave as they are.
const STEADY: [&str; 6] =
    ["app/m2/s0/f2.txt", "app/m3/s0/f3.txt", "app/m4/s0/f4.txt", "app/m0/s1/f5.txt", "assets/big.bin", "bin/run"];

#[track_caller]
fn assert_steady(a: &Spec, b: &Spec) {
    for p in STEADY {
        assert_eq!(a.get(p), b.get(p), "{p} must be the same in both releases");
    }
}

fn status(h: &Host) -> serde_json::Value {
    h.run(&["--json", "status", "web"]).expect(0).json()["apps"][0].clone()
}

#[test]
fn prune_and_rollback_keep_releases_that_share_inodes_intact() {
    let h = Host::with_app_config(HARDLINK);
    let v1 = Spec::v1();
    let (v2, _) = next(&v1, 1);
    let (v3, _) = next(&v2, 2);
    assert_steady(&v1, &v3);
    deploy(&h, "v1", &v1);
    deploy(&h, "v2", &v2);
    let d3 = deploy(&h, "v3", &v3);
    let (n, bytes) = shareable(&[&v2], &v3);
    assert_shared_count(&d3, n, bytes);
    let t1 = walk(&h.root().join("releases/v1"));
    let t3 = walk(&h.root().join("releases/v3"));
    for p in STEADY {
        assert_eq!(t1[p].inode, t3[p].inode, "{p}: one inode in all three releases");
        assert_eq!(t3[p].nlink, 3, "{p}");
    }

    // keep 1: the current release (v3) and the rollback target (v2) stay.
    let out = h.run(&["--json", "prune", "web", "--keep", "1"]).expect(0).json();
    assert_eq!(out["removed"], serde_json::json!(["v1"]));
    assert_eq!(h.release_dirs(), vec!["v2", "v3"]);
    assert!(!h.state_dir().join("index/v1.jsonl").exists());
    assert_tree(&h, "v2", &v2, None);
    let t3 = assert_tree(&h, "v3", &v3, None);
    for p in STEADY {
        assert_eq!(t3[p].nlink, 2, "{p}: v1's name is gone, v2's and v3's stay");
    }

    // The rollback checks v2 against its index before switching; then v3 (now bad) is deployed again from disk,
    // checked the same way.
    let rb = h.run(&["--json", "rollback", "web"]).expect(0).json();
    assert_eq!((rb["from"].as_str(), rb["to"].as_str()), (Some("v3"), Some("v2")), "{rb:#}");
    assert_eq!(h.current().as_deref(), Some("v2"));
    assert_eq!(h.read_current("version.txt"), "v2");
    let s = status(&h);
    assert_eq!((s["current"].as_str(), s["last_good"].as_str()), (Some("v2"), Some("v2")), "{s:#}");
    h.run(&["deploy", "web", "--version", "v3", "--force"]).expect(0);
    assert_eq!(h.current().as_deref(), Some("v3"));
    assert_tree(&h, "v2", &v2, None);
    assert_tree(&h, "v3", &v3, None);
    let s = status(&h);
    assert_eq!((s["current"].as_str(), s["last_good"].as_str()), (Some("v3"), Some("v3")), "{s:#}");
    let releases: Vec<&str> =
        s["releases"].as_array().unwrap().iter().map(|r| r["version"].as_str().unwrap()).collect();
    assert_eq!(releases, ["v2", "v3"], "{s:#}");
    assert!(s["in_flight"].is_null() && s["degraded"].is_null(), "{s:#}");
    assert_eq!(s["bad"], serde_json::json!([]), "{s:#}");
}

#[test]
fn a_file_of_another_owner_is_not_shared() {
    let u = User::new();
    let h = Host::with_app_config(HARDLINK);
    let v1 = Spec::v1();
    deploy(&h, "v1", &v1);
    // The same files, now given the app's group: v1's (root's group) cannot be shared.
    h.write_config(&format!("owner = \"{}\"\n{HARDLINK}", u.name));
    let (v2, _) = next(&v1, 1);
    let d2 = deploy(&h, "v2", &v2);
    assert!(!d2.contains("shared"), "{d2}");
    let t1 = assert_tree(&h, "v1", &v1, None);
    let t2 = assert_tree(&h, "v2", &v2, Some(u.gid));
    for n in t2.values() {
        let same = t1.values().find(|o| o.inode == n.inode && matches!(n.row.1, super::Kind::File(_)));
        assert!(same.is_none(), "{} (group {}) shares v1's {:?}", n.row.0, n.row.4, same.map(|o| &o.row));
    }
    // The next release of the same owner shares with v2.
    let (v3, _) = next(&v2, 2);
    let d3 = deploy(&h, "v3", &v3);
    let (n, bytes) = shareable(&[&v2], &v3);
    assert_shared_count(&d3, n, bytes);
    let t3 = assert_tree(&h, "v3", &v3, Some(u.gid));
    for p in STEADY {
        assert_eq!(t2[p].inode, t3[p].inode, "{p}");
    }
}

/// Deploys v1, lets `tamper` change `releases/v1` as root, then deploys v2, in which the files `paths` are as
/// in v1's archive: each must have the archive's content and sanitized mode and not be v1's inode, and none of
/// them is counted as shared.
fn tampered_donor(paths: &[&str], tamper: impl FnOnce(&Path)) -> Host {
    let h = Host::with_app_config(HARDLINK);
    let v1 = Spec::v1();
    deploy(&h, "v1", &v1);
    let dir = h.root().join("releases/v1");
    tamper(&dir);
    let t1 = walk(&dir);
    let untouched = v1.expected(None);
    for p in paths {
        assert_ne!(Some(&t1[*p].row), untouched.iter().find(|r| r.0 == *p), "{p} was not tampered with");
    }
    let (v2, _) = next(&v1, 1);
    assert_steady(&v1, &v2);
    let d2 = deploy(&h, "v2", &v2);
    let t2 = walk(&h.root().join("releases/v2"));
    let want = v2.expected(None);
    let mut wrong = Vec::new();
    for p in paths {
        let row = want.iter().find(|r| r.0 == *p).unwrap();
        if t2[*p].row != *row || t2[*p].inode == t1[*p].inode {
            wrong.push(format!(
                "{p}: mode {:o}, {}, {}",
                t2[*p].row.2,
                if t2[*p].row.1 == row.1 { "the archive's content" } else { "NOT the archive's content" },
                if t2[*p].inode == t1[*p].inode { "the tampered v1 file's inode" } else { "a new inode" }
            ));
        }
    }
    assert!(wrong.is_empty(), "v2 took files from a tampered v1 (unpack: `{d2}`):\n{}", wrong.join("\n"));
    assert_tree(&h, "v2", &v2, None);
    let (n, mut bytes) = shareable(&[&v1], &v2);
    bytes -= paths.iter().map(|p| v2.get(p).1.len() as u64).sum::<u64>();
    assert_shared_count(&d2, n - paths.len(), bytes);
    h
}

#[test]
fn a_donor_whose_mode_or_owner_changed_is_not_shared() {
    let h = tampered_donor(&["app/m2/s0/f2.txt", "bin/run", "app/m4/s0/f4.txt"], |v1| {
        let set = |p: &str, m: u32| std::fs::set_permissions(v1.join(p), std::fs::Permissions::from_mode(m)).unwrap();
        set("app/m2/s0/f2.txt", 0o644);
        set("bin/run", 0o4555);
        std::os::unix::fs::chown(v1.join("app/m4/s0/f4.txt"), Some(65534), Some(65534)).unwrap();
    });
    // v1 is not the release that was verified any more: it is not switched to.
    let out = h.run(&["rollback", "web", "--to", "v1"]);
    out.expect(1);
    assert!(out.stderr.contains("not the release that was verified"), "{}", out.stderr);
    assert_eq!(h.current().as_deref(), Some("v2"));
}

#[test]
fn a_donor_whose_bytes_changed_is_not_shared() {
    // Two files rewritten in place (the same inode, size, mode and owner; other bytes), one small and one over
    // 1 MiB; and one replaced by a new inode of root's with the same mode and size and other bytes.
    tampered_donor(&["app/m0/s1/f5.txt", "assets/big.bin", "app/m3/s0/f3.txt"], |v1| {
        let len = |p: &Path| std::fs::metadata(p).unwrap().len() as usize;
        for p in ["app/m0/s1/f5.txt", "assets/big.bin"] {
            let p = v1.join(p);
            let bytes = noise(len(&p), 77);
            std::fs::OpenOptions::new().write(true).open(&p).unwrap().write_all(&bytes).unwrap();
        }
        let (p, tmp) = (v1.join("app/m3/s0/f3.txt"), v1.join("app/m3/s0/.f3.new"));
        std::fs::write(&tmp, noise(len(&p), 78)).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o555)).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
    });
}

#[test]
fn a_donor_directory_replaced_by_a_link_is_not_followed() {
    // As root: v1's `app/m1` becomes a link to a copy of it outside the release (the same files, modes, owner).
    let h = Host::with_app_config(HARDLINK);
    let v1 = Spec::v1();
    deploy(&h, "v1", &v1);
    let m1 = h.root().join("releases/v1/app/m1");
    let copy = h.outside().join("m1");
    assert!(std::process::Command::new("cp").arg("-a").arg(&m1).arg(&copy).status().unwrap().success());
    std::fs::remove_dir_all(&m1).unwrap();
    std::os::unix::fs::symlink(&copy, &m1).unwrap();
    let (v2, _) = next(&v1, 1);
    let d2 = deploy(&h, "v2", &v2);
    let t2 = assert_tree(&h, "v2", &v2, None);
    let outside: std::collections::HashSet<_> = walk(&copy).values().map(|n| n.inode).collect();
    let taken: Vec<_> = t2.values().filter(|n| outside.contains(&n.inode)).map(|n| &n.row.0).collect();
    assert!(taken.is_empty(), "v2 shares files reached through a link in v1: {taken:?}");
    let mut reachable = v1.clone();
    reachable.files.retain(|f| !f.0.starts_with("app/m1/"));
    let (n, bytes) = shareable(&[&reachable], &v2);
    assert_shared_count(&d2, n, bytes);
}

#[test]
fn the_unpackers_temporary_name_in_an_archive_changes_nothing() {
    let h = Host::with_app_config(HARDLINK);
    let mut v1 = Spec::v1();
    v1.file("assets/big3.bin", &noise(BIG + 10, 13), 0o644);
    deploy(&h, "v1", &v1);
    let mut v2 = v1.clone();
    v2.file("version.txt", b"v2", 0o644);
    let at = |s: &Spec, p: &str| s.files.iter().position(|f| f.0 == p).unwrap();
    // Before the large file whose temporary name it is: a copy of that file (so itself shareable).
    let big = v1.get("assets/big.bin").1.clone();
    v2.files.insert(at(&v2, "assets/big.bin"), ("assets/.switchback-shared-big.bin".into(), big, 0o644));
    // After the large file: other bytes.
    v2.files
        .insert(at(&v2, "assets/big2.bin") + 1, ("assets/.switchback-shared-big2.bin".into(), b"mine".into(), 0o600));
    // A directory by that name (directories come first in the archive), with a file in it.
    v2.file("assets/.switchback-shared-big3.bin/inside", b"inside", 0o644);
    let d2 = deploy(&h, "v2", &v2);
    let t2 = assert_tree(&h, "v2", &v2, None);
    assert!(d2.contains("shared with releases on disk"), "{d2}");
    let t1 = walk(&h.root().join("releases/v1"));
    assert_eq!(t1["assets/big2.bin"].inode, t2["assets/big2.bin"].inode, "big2.bin was shared before its name came");
    assert_eq!(rows(&t1), rows(&walk(&h.root().join("releases/v1"))));
    let (want, index) = reference("v2", &v2);
    assert_eq!(rows(&t2), want);
    assert_eq!(std::fs::read(h.state_dir().join("index/v2.jsonl")).unwrap(), index);
}

#[test]
fn a_large_file_with_a_name_of_the_longest_length_deploys_again() {
    // The temporary name beside it (`.switchback-shared-NAME`) is longer than a name may be; the file is the first
    // the redeploy may share, with the default `reuse` (auto: a reflink is tried first).
    let h = Host::new();
    let mut v1 = Spec::v1();
    let long = format!("assets/{}.bin", "l".repeat(251));
    v1.files.insert(0, (long.clone(), noise(BIG, 14), 0o644));
    deploy(&h, "v1", &v1);
    let mut v2 = v1.clone();
    v2.file("version.txt", b"v2", 0o644);
    let d2 = deploy(&h, "v2", &v2);
    assert_tree(&h, "v2", &v2, None);
    let (n, bytes) = shareable(&[&v1], &v2);
    assert!(d2.contains("shared with releases on disk") && n > 1 && bytes > 0, "{d2}");
}

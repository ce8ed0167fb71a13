//! Hosts that cannot or must not use the delta: one without its base downloads the full artifact; one whose base
//! changed on disk after it was indexed, or that downloads a delta that is not what the manifest says, falls back
//! to the full artifact and deploys it (`deploy --version` and the daemon), and nothing is refused for good.

use std::io::Write;

use super::{
    assert_download, assert_same_release, deployed_event, recorded_sha, step, Channel, DELTA, KEPT_SMALL, V1, V2,
};
use crate::bucket::{wait_for, Daemon};
use crate::daemon::{wait_served, HEALTH, LIVE};
use crate::harness::*;
use crate::hostile::noise;

const FULL: &str = "releases/2.0.0.tar.zst";

/// `deploy --json web --version 2.0.0` (exit 0).
#[track_caller]
fn deploy_v2(h: &Host) -> (serde_json::Value, String) {
    let out = h.run(&["--json", "deploy", "web", "--version", V2]);
    out.expect(0);
    (out.json(), out.stderr)
}

/// A follower of the channel with v1 deployed from its archive (as recorded as the channel's own v1).
fn with_v1(c: &Channel) -> Host {
    let h = c.follower();
    h.deploy(&c.p.a1, V1).expect(0);
    h
}

#[track_caller]
fn assert_only_releases(h: &Host) {
    assert_eq!(h.release_dirs(), [V1, V2], "nothing is left of an assembly that was given up");
}

#[test]
fn deploy_by_version_downloads_the_delta_only_on_a_host_with_its_base() {
    let c = Channel::new();
    let (full, delta) = (c.full_size(), c.p.delta.size);

    // A host without v1: the full artifact.
    let fresh = c.follower();
    let (out, _) = deploy_v2(&fresh);
    assert_eq!(out["downloaded"].as_u64(), Some(full), "{out:#}");
    assert_download(&out["steps"], full, full, FULL);
    let detail = step(&out["steps"], "download")["detail"].as_str().unwrap();
    assert!(!detail.contains("delta"), "{detail}");
    assert_same_release(&fresh, V2, &c.p.reference);
    assert_eq!(recorded_sha(&fresh, V2), c.full_sha());

    // A host with v1: the delta, and the same release, recorded as the full artifact.
    let h = with_v1(&c);
    let (out, _) = deploy_v2(&h);
    assert_eq!(out["downloaded"].as_u64(), Some(delta), "{out:#}");
    assert_download(&out["steps"], delta, delta, DELTA);
    assert_same_release(&h, V2, &c.p.reference);
    assert_eq!(recorded_sha(&h, V2), c.full_sha());
    assert_only_releases(&h);
}

#[test]
fn deploy_by_version_falls_back_to_the_full_artifact_when_the_base_changed() {
    // A file of v1 that v2 references was rewritten after v1 was indexed: the delta cannot be assembled, and the
    // full artifact is deployed instead.
    let c = Channel::new();
    let (full, delta) = (c.full_size(), c.p.delta.size);
    let h = with_v1(&c);
    rewrite_kept_file(&h);
    let (out, stderr) = deploy_v2(&h);
    assert!(stderr.contains("the delta of 2.0.0 was not used"), "{stderr}");
    assert!(stderr.contains("fetching the full artifact"), "{stderr}");
    assert_download(&out["steps"], full, full, FULL);
    let got = std::fs::read(h.root().join("releases").join(V2).join(KEPT_SMALL)).unwrap();
    assert!(got == c.p.v2.get(KEPT_SMALL).1, "{KEPT_SMALL} of 2.0.0 is not the archive's");
    assert_same_release(&h, V2, &c.p.reference);
    assert_eq!(recorded_sha(&h, V2), c.full_sha());
    assert_only_releases(&h);
    // Both came over the network for this deploy (the text output shows both downloads): the delta, then the
    // full artifact.
    assert_eq!(out["downloaded"].as_u64(), Some(delta + full), "bytes over the network: {out:#}");
}

/// A channel whose delta object holds other bytes of the same size (the manifest unchanged).
fn corrupt_delta() -> Channel {
    let c = Channel::new();
    let p = c.object(DELTA);
    let len = std::fs::metadata(&p).unwrap().len() as usize;
    std::fs::write(&p, noise(len, 4242)).unwrap();
    c
}

/// A daemon-followed host (the demo service, checked) on v1 whose `releases/1.0.0` `tamper` may change, left to
/// deploy the channel's v2: it must end up on v2 deployed from the full artifact (the release the full artifact
/// makes, recorded with its sha256), with nothing marked bad or refused. Returns the daemon's log.
fn daemon_takes_the_full_artifact(c: &Channel, tamper: impl FnOnce(&Host)) -> String {
    let full = c.full_size();
    let (h, svc) = Service::host_with(|_| c.source(), HEALTH, "");
    h.deploy(&c.p.a1, V1).expect(0);
    tamper(&h);
    let mut d = Daemon::start(&h, &[]);
    wait_for("2.0.0 to go live", LIVE, || h.current().as_deref() == Some(V2));
    wait_served(&svc, V2);
    let ev = deployed_event(&h, V2);
    assert_download(&ev["steps"], full, full, FULL);
    assert_same_release(&h, V2, &c.p.reference);
    assert_eq!(recorded_sha(&h, V2), c.full_sha());
    assert_only_releases(&h);
    // Not refused for good: nothing is marked bad or refused.
    let st = h.run(&["--json", "status", "web"]).expect(0).json()["apps"][0].clone();
    assert_eq!(st["bad"], serde_json::json!([]), "{st:#}");
    assert!(st["last_refusal"].is_null(), "{st:#}");
    assert!(d.alive());
    assert_eq!(d.stop(), 0);
    d.log()
}

/// Rewrites a file of `releases/1.0.0` that v2 references in place, as root: the same size, other bytes, and so
/// an mtime newer than v1's index.
fn rewrite_kept_file(h: &Host) {
    let f = h.root().join("releases").join(V1).join(KEPT_SMALL);
    let len = std::fs::metadata(&f).unwrap().len() as usize;
    std::fs::OpenOptions::new().write(true).open(&f).unwrap().write_all(&noise(len, 31_337)).unwrap();
    let mtime = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
    assert!(mtime(&f) > mtime(&h.state_dir().join("index/1.0.0.jsonl")), "the rewrite is not newer than the index");
}

#[test]
fn the_daemon_falls_back_to_the_full_artifact_when_the_base_changed() {
    let c = Channel::new();
    let log = daemon_takes_the_full_artifact(&c, rewrite_kept_file);
    let line = log.lines().find(|l| l.contains("the delta of 2.0.0 against 1.0.0 was not used"));
    let line = line.unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(KEPT_SMALL) && line.contains("fetching the full artifact"), "{line}");
}

#[test]
fn the_daemon_detects_a_corrupt_delta_and_deploys_the_full_artifact() {
    let c = corrupt_delta();
    let log = daemon_takes_the_full_artifact(&c, |_| {});
    let line = log.lines().find(|l| l.contains("cannot fetch the delta of 2.0.0")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("sha256") && line.contains("fetching the full artifact"), "{line}");
}

#[test]
fn deploy_by_version_detects_a_corrupt_delta_and_deploys_the_full_artifact() {
    let c = corrupt_delta();
    let full = c.full_size();
    let h = with_v1(&c);
    let out = h.run(&["--json", "deploy", "web", "--version", V2]);
    assert_eq!(out.code, 0, "a corrupt delta failed the deploy instead of falling back to the full artifact: {out:#?}");
    assert!(out.stderr.contains("fetching the full artifact"), "{}", out.stderr);
    assert_download(&out.json()["steps"], full, full, FULL);
    assert_same_release(&h, V2, &c.p.reference);
    assert_eq!(recorded_sha(&h, V2), c.full_sha());
}

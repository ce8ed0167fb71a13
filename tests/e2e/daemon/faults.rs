//! What a bad bucket cannot do to the daemon: manifests tampered with, signed by an untrusted key, replayed or
//! expired, and a corrupt artifact, change nothing; a dropped download resumes; an outage keeps the release.

use super::{S3Host, HEALTH, LIVE};
use crate::bucket::{accepted_sequence, keygen, publish, release_dir, wait_for, wait_for_clock_past, Daemon};
use crate::harness::Host;

#[test]
fn refused_manifests_and_a_corrupt_artifact_change_nothing() {
    let s = S3Host::new(HEALTH);
    let mut d = s.daemon();
    let bucket = s.garage.client(&s.garage.endpoint());
    let manifest = "web/channels/production.json";
    let sig = "web/channels/production.json.minisig";
    s.publish("1.0.0", 200);
    s.wait_current("1.0.0");
    let (old_m, old_s) = (bucket.get(manifest), bucket.get(sig));
    let refusal = |what: &str, needle: &str, d: &mut Daemon| {
        wait_for(&format!("the daemon to refuse {what}"), LIVE, || d.log().contains(needle));
        assert!(d.alive(), "the daemon died on {what}");
    };

    // Tampered: the bytes changed after signing.
    let tampered = String::from_utf8(old_m.clone()).unwrap().replace("1.0.0", "6.6.6");
    bucket.put(manifest, tampered.as_bytes());
    refusal("a tampered manifest", "bad signature", &mut d);

    // Signed by a key that is not trusted.
    let other = Host::new();
    let (other_key, _) = keygen(&other, "intruder");
    let dir = release_dir(&s.host, "2.0.0", 200);
    s.publish_with_key(&other_key, "2.0.0", &[dir.to_str().unwrap()]).expect(0);
    refusal("an untrusted key", "not among the trusted_keys", &mut d);
    assert_eq!(s.host.current().as_deref(), Some("1.0.0"));

    // A newer manifest, then the old one copied back: a replay. (The channel's manifest is the intruder's, so
    // publish takes its sequence from the clock.)
    wait_for_clock_past(accepted_sequence(&s.host));
    s.publish("3.0.0", 200);
    s.wait_current("3.0.0");
    bucket.put(sig, &old_s);
    bucket.put(manifest, &old_m);
    refusal("a replayed manifest", "replayed: sequence", &mut d);

    // Expired: signed with a validity of one second, put in place after it ran out.
    let staging = Host::new();
    let base = format!("file://{}", staging.path().join("bucket").display());
    // A new base: its first sequence comes from the clock.
    wait_for_clock_past(accepted_sequence(&s.host));
    let dir4 = release_dir(&s.host, "4.0.0", 200);
    publish(&s.host, &[], &base, &s.key, "4.0.0", &["--expires-in", "1s", dir4.to_str().unwrap()]).expect(0);
    let staged = staging.path().join("bucket/web");
    let staged_manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(staged.join("channels/production.json")).unwrap()).unwrap();
    let expires = humantime::parse_rfc3339_weak(staged_manifest["expires"].as_str().unwrap()).unwrap();
    wait_for("the staged manifest to expire", LIVE, || std::time::SystemTime::now() > expires);
    bucket.put("web/releases/4.0.0.tar.zst", &std::fs::read(staged.join("releases/4.0.0.tar.zst")).unwrap());
    bucket.put(sig, &std::fs::read(staged.join("channels/production.json.minisig")).unwrap());
    bucket.put(manifest, &std::fs::read(staged.join("channels/production.json")).unwrap());
    refusal("an expired manifest", "expired at", &mut d);

    // A valid manifest whose artifact in the bucket is not the one it names (same size, one byte flipped).
    let dir5 = release_dir(&s.host, "5.0.0", 200);
    publish(&s.host, &[], &base, &s.key, "5.0.0", &[dir5.to_str().unwrap()]).expect(0);
    let mut artifact = std::fs::read(staged.join("releases/5.0.0.tar.zst")).unwrap();
    let mid = artifact.len() / 2;
    artifact[mid] ^= 0xff;
    bucket.put("web/releases/5.0.0.tar.zst", &artifact);
    bucket.put(sig, &std::fs::read(staged.join("channels/production.json.minisig")).unwrap());
    bucket.put(manifest, &std::fs::read(staged.join("channels/production.json")).unwrap());
    refusal("a corrupt artifact", "the manifest says", &mut d);
    s.wait_polls(2);

    // Nothing changed on the host: still 3.0.0, no release of the refused versions, no download left over.
    assert_eq!(s.host.current().as_deref(), Some("3.0.0"));
    assert!(s.svc.get("/version.txt").unwrap().1.ends_with("3.0.0"));
    let dirs = s.host.release_dirs();
    for v in ["2.0.0", "4.0.0", "5.0.0", "6.6.6"] {
        assert!(!dirs.contains(&v.to_owned()), "{v} reached the disk: {dirs:?}");
    }
    let downloads = s.host.state_dir().join("downloads");
    let left: Vec<_> =
        std::fs::read_dir(&downloads).map(|r| r.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "downloads left over: {left:?}");
    // The corrupt artifact is not fetched again at every poll.
    let fetches = s.proxy.requests("GET /releases/web/releases/5.0.0.tar.zst").len();
    s.wait_polls(3);
    assert_eq!(s.proxy.requests("GET /releases/web/releases/5.0.0.tar.zst").len(), fetches);
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_dropped_download_resumes_with_a_range_request() {
    let s = S3Host::new(HEALTH);
    let mut d = s.daemon();
    let dir = release_dir(&s.host, "1.0.0", 200);
    // 3 MiB that zstd cannot shrink, so the artifact is large enough to cut.
    let noise: Vec<u8> = (0..3 << 20).map(|_| fastrand::u8(..)).collect();
    std::fs::write(dir.join("blob.bin"), &noise).unwrap();
    // Four cuts: more than the object store client's own resumed retries, so the agent's own resume (from the
    // partial file it kept) is exercised too.
    s.proxy.cut_responses_after(1 << 20, 4);
    s.publish_with_key(&s.key, "1.0.0", &[dir.to_str().unwrap()]).expect(0);
    s.wait_current("1.0.0");
    let gets = s.proxy.requests("GET /releases/web/releases/1.0.0.tar.zst");
    // The client resumes by itself first (bounded ranges); when it gives up, the agent resumes from the partial
    // file it kept (an open range from the partial file's length).
    assert!(gets.len() >= 4, "expected ranged retries: {gets:#?}");
    assert!(
        gets[1..].iter().all(|g| g.to_ascii_lowercase().contains("range: bytes=")),
        "a retry started over: {gets:#?}"
    );
    assert!(gets.last().unwrap().trim_end().ends_with('-'), "the agent did not resume its partial file: {gets:#?}");
    assert_eq!(std::fs::read(s.host.root().join("current/blob.bin")).unwrap(), noise);
    assert!(d.log().contains("retrying"), "{}", d.log());
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_bucket_outage_keeps_the_release_and_the_daemon_resumes() {
    let mut s = S3Host::new(HEALTH);
    let mut d = s.daemon();
    s.publish("1.0.0", 200);
    s.wait_current("1.0.0");
    s.garage.stop();
    let last_poll = || s.status()["daemon"]["last_poll"].as_str().unwrap_or("").to_owned();
    wait_for("a failed poll", LIVE, || last_poll().contains("poll failed"));
    // And a later one (polls are stamped to the second): the daemon goes on polling through the outage.
    let first = last_poll();
    wait_for("another failed poll", LIVE, || {
        let p = last_poll();
        p != first && p.contains("poll failed")
    });
    assert!(d.alive(), "the daemon died in the outage; log:\n{}", d.log());
    assert_eq!(s.host.current().as_deref(), Some("1.0.0"));
    assert!(s.svc.get("/version.txt").unwrap().1.ends_with("1.0.0"));
    s.garage.restart();
    s.publish("2.0.0", 200);
    s.wait_current("2.0.0");
    assert_eq!(d.stop(), 0);
}

//! What `switchback publish` writes (deterministic, immutable, checked by minisign itself, promotable) and what
//! `deploy --version` fetches: only what a signed manifest names.

use std::time::Duration;

use super::{file_host, file_publish, HEALTH};
use crate::bucket::{publish, release_dir};

#[test]
fn deploy_by_version_fetches_only_what_a_signed_manifest_names() {
    let (host, _svc, key, base) = file_host(HEALTH);
    file_publish(&host, &key, &base, "1.0.0", 200, &[]);
    host.run(&["deploy", "web", "--version", "1.0.0"]).expect(0);
    assert_eq!(host.current().as_deref(), Some("1.0.0"));
    // An artifact that no manifest names is not fetched.
    std::fs::copy(
        host.path().join("bucket/web/releases/1.0.0.tar.zst"),
        host.path().join("bucket/web/releases/9.9.9.tar.zst"),
    )
    .unwrap();
    // Not published: a plain failure (exit 1) that says what the signed manifest names, not a usage error.
    let out = host.run(&["deploy", "web", "--version", "9.9.9"]);
    out.expect(1);
    assert!(out.stderr.contains("signed manifest") && out.stderr.contains("names `1.0.0`"), "{}", out.stderr);
    assert_eq!(host.current().as_deref(), Some("1.0.0"));
}

#[test]
fn publish_is_deterministic_immutable_minisign_compatible_and_can_promote() {
    let (host, _svc, key, base) = file_host(HEALTH);
    let dir = release_dir(&host, "1.0.0", 200);
    let base2 = format!("file://{}/bucket2", host.path().display());
    let run = |b: &str| publish(&host, &[], b, &key, "1.0.0", &["--json", dir.to_str().unwrap()]);
    let first = run(&base).expect(0).json();
    // Same tree, other mtimes: the same bytes.
    std::fs::write(dir.join("version.txt"), "1.0.0").unwrap();
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options().write(true).open(dir.join("version.txt")).unwrap().set_modified(an_hour_ago).unwrap();
    let second = run(&base2).expect(0).json();
    assert_eq!(first["sha256"], second["sha256"], "packing is not deterministic");
    // The same version with other content is refused: releases are immutable.
    std::fs::write(dir.join("extra"), "x").unwrap();
    let out = run(&base);
    out.expect(2);
    assert!(out.stderr.contains("immutable"), "{}", out.stderr);

    // minisign itself verifies what publish signed.
    let channel = host.path().join("bucket/web/channels/production.json");
    let verify = std::process::Command::new("minisign")
        .arg("-V")
        .arg("-p")
        .arg(key.with_extension("pub"))
        .arg("-m")
        .arg(&channel)
        .output()
        .expect("minisign is installed by tests/run");
    assert!(verify.status.success(), "minisign -V: {}", String::from_utf8_lossy(&verify.stderr));

    // Promotion: 2.0.0 is published, then the channel is pointed back at 1.0.0 with a higher sequence.
    file_publish(&host, &key, &base, "2.0.0", 200, &[]);
    let seq2: serde_json::Value = serde_json::from_slice(&std::fs::read(&channel).unwrap()).unwrap();
    let out = publish(&host, &[], &base, &key, "1.0.0", &["--promote-only", "--json"]);
    let promoted = out.expect(0).json();
    assert_eq!(promoted["version"], "1.0.0");
    assert_eq!(promoted["uploaded"], false);
    assert!(promoted["sequence"].as_u64() > seq2["sequence"].as_u64());
    assert_eq!(promoted["sha256"], first["sha256"]);
}

//! Crash tests: the real binary is SIGKILLed at each named crash point of a deploy (feature `crash-points`), or by
//! the test with a real `kill -9`; then `current` must still name a complete release and the next command must
//! converge (no staging left, state agreeing with the symlink, history saying what was recovered).

use crate::harness::*;

#[cfg(feature = "crash-points")]
const POINTS: &[&str] = &[
    "after-unpack",
    "after-staging-durable",
    "after-release-rename",
    "before-switch",
    "after-temp-symlink",
    "after-switch",
    "after-state-write",
    "after-restart",
    "after-commit",
];

/// `current` resolves to a complete release: every file of the release it names has that release's content.
fn assert_complete(h: &Host) -> String {
    let v = h.current().expect("current exists");
    assert_eq!(h.read_current("version.txt"), v, "current -> {v} holds another release's files");
    assert_eq!(h.read_current("payload/data.bin").len(), 64 << 10, "current -> {v} is incomplete");
    v
}

fn release(v: &str) -> Vec<u8> {
    Release::new()
        .file("version.txt", v.as_bytes(), 0o644)
        .file("payload/data.bin", &vec![v.as_bytes()[1]; 64 << 10], 0o644)
        .build()
}

#[cfg(feature = "crash-points")]
#[test]
fn every_crash_point_converges() {
    for point in POINTS {
        let h = Host::new();
        let v1 = h.archive("v1.tar.zst", &release("v1"));
        h.deploy(&v1, "v1").expect(0);
        let v2 = h.archive("v2.tar.zst", &release("v2"));
        let out = h.run_env(
            &["deploy", "web", "--file", v2.to_str().unwrap(), "--version", "v2"],
            &[("SWITCHBACK_CRASH_AT", point)],
        );
        assert_eq!(out.code, -1, "{point}: the process must die by SIGKILL: {out:?}");
        let live = assert_complete(&h);
        // The next changing command reconciles, then works.
        let v3 = h.archive("v3.tar.zst", &release("v3"));
        h.deploy(&v3, "v3").expect(0);
        assert_eq!(assert_complete(&h), "v3", "{point}");
        assert!(!h.release_dirs().iter().any(|d| d.starts_with('.')), "{point}: leftovers {:?}", h.release_dirs());
        let s = h.run(&["--json", "status", "web"]).expect(0).json();
        assert!(s["apps"][0]["in_flight"].is_null(), "{point}: {s}");
        assert_eq!(s["apps"][0]["current"], "v3");
        let history = h.history();
        let recovered = history.iter().any(|e| e["op"] == "recover");
        let crashed_mid_deploy = *point != "after-commit";
        assert_eq!(recovered, crashed_mid_deploy, "{point}: history {history:?}");
        if ["after-switch", "after-state-write", "after-restart"].contains(point) {
            // v2 went live unproven; the reconcile verified and committed it before v3.
            assert_eq!(live, "v2", "{point}");
            assert!(history.iter().any(|e| e["op"] == "recover" && e["version"] == "v2"), "{point}");
        }
    }
}

#[test]
fn kill_9_during_restart_is_finished_by_the_next_command() {
    let h = Host::new();
    h.write_config("[apps.web.service]\nrestart = [\"sleep\", \"2\"]\ntimeout = \"10s\"");
    let v1 = h.archive("v1.tar.zst", &release("v1"));
    h.deploy(&v1, "v1").expect(0);
    let v2 = h.archive("v2.tar.zst", &release("v2"));
    let mut child = std::process::Command::new(BIN)
        .args([
            "--config",
            h.config.to_str().unwrap(),
            "deploy",
            "web",
            "--file",
            v2.to_str().unwrap(),
            "--version",
            "v2",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the journal says the switch is done and the restart runs.
    let state = h.state_dir().join("state.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&state).is_ok_and(|s| s.contains("\"checking\"")) {
        assert!(std::time::Instant::now() < deadline, "deploy never reached the restart");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(assert_complete(&h), "v2");
    let s = h.run(&["--json", "status", "web"]).expect(0).json();
    assert_eq!(s["apps"][0]["in_flight"]["step"], "checking", "status shows the interrupted step: {s}");
    // Any changing command reconciles first: v2 is restarted, verified and committed.
    h.run(&["prune", "web"]).expect(0);
    let s = h.run(&["--json", "status", "web"]).expect(0).json();
    assert!(s["apps"][0]["in_flight"].is_null());
    assert_eq!(s["apps"][0]["last_good"], "v2");
    let rec = h.history().into_iter().find(|e| e["op"] == "recover").unwrap();
    assert!(rec["reason"].as_str().unwrap().contains("interrupted at step checking"), "{rec}");
}

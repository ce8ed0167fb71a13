//! Restart, health checks and automatic rollback against a real HTTP service (the binary's demo service, started
//! and restarted through the configured `restart` command).

use crate::harness::*;

const FAST: &str = "interval = \"200ms\"\nhealthy_after = 2\ndeadline = \"2s\"";

fn deploy(h: &Host, name: &str, r: Release) -> Out {
    let a = h.archive(&format!("{name}.tar.zst"), &r.build());
    h.deploy(&a, name)
}

fn last_event(h: &Host) -> serde_json::Value {
    h.history().last().unwrap().clone()
}

fn status(h: &Host) -> serde_json::Value {
    h.run(&["--json", "status", "web"]).expect(0).json()["apps"][0].clone()
}

#[test]
fn healthy_release_is_committed_and_served() {
    let (h, svc) = Service::host(FAST, "");
    deploy(&h, "v1", service_release("v1", 200)).expect(0);
    assert_eq!(svc.get("/").unwrap(), (200, "hello from v1".to_owned()));
    let s = status(&h);
    assert_eq!(s["last_good"], "v1");
    assert_eq!(s["checked"], true);
    assert_eq!(s["last_health"]["healthy"], true);
    let ev = last_event(&h);
    let steps: Vec<&str> = ev["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    for want in ["verify", "unpack", "switch", "restart", "checks"] {
        assert!(steps.contains(&want), "history steps {steps:?} lack {want}");
    }
}

/// Deploys a failing v2 over a healthy v1 and checks the automatic rollback; returns v2's bad reason.
fn assert_rolled_back(extra: &str, v2: Release) -> String {
    let (h, svc) = Service::host(FAST, extra);
    deploy(&h, "v1", service_release("v1", 200)).expect(0);
    let out = deploy(&h, "v2", v2);
    out.expect(3);
    assert!(out.stderr.contains("rolled back to `v1`"), "{}", out.stderr);
    assert_eq!(h.current().as_deref(), Some("v1"));
    assert_eq!(svc.get("/").unwrap(), (200, "hello from v1".to_owned()), "the old version must be served again");
    let s = status(&h);
    assert_eq!(s["current"], "v1");
    assert_eq!(s["last_good"], "v1");
    let bad = s["bad"].as_array().unwrap();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0]["version"], "v2");
    let ev = last_event(&h);
    assert_eq!(ev["outcome"], "rolled-back");
    assert_eq!(ev["version"], "v2");
    // A bad version is not deployed again without --force.
    let again =
        h.run(&["deploy", "web", "--file", h.path().join("archives/v2.tar.zst").to_str().unwrap(), "--version", "v2"]);
    again.expect(1);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    bad[0]["reason"].as_str().unwrap().to_owned()
}

#[test]
fn unhealthy_release_is_rolled_back() {
    let reason = assert_rolled_back("", service_release("v2", 500));
    assert!(reason.contains("status 500"), "{reason}");
}

#[test]
fn crashing_release_is_rolled_back() {
    let reason = assert_rolled_back("", service_release("v2", 200).file("crash", b"1", 0o644));
    assert!(reason.contains("not healthy within"), "{reason}");
}

#[test]
fn release_failing_during_bake_is_rolled_back() {
    let reason = assert_rolled_back("bake = \"3s\"", service_release("v2", 200).file("unhealthy_after", b"1", 0o644));
    assert!(reason.contains("bake window"), "{reason}");
}

#[test]
fn detection_stays_within_deadline_plus_one_interval() {
    let (h, _svc) = Service::host(FAST, "");
    deploy(&h, "v1", service_release("v1", 200)).expect(0);
    deploy(&h, "v2", service_release("v2", 500)).expect(3);
    let ev = last_event(&h);
    let steps = ev["steps"].as_array().unwrap();
    let checks = steps.iter().find(|s| s["step"] == "checks").unwrap()["ms"].as_u64().unwrap();
    // deadline 2s + interval 200ms, plus the duration of one round of checks against a live port.
    assert!(checks <= 2_200 + 300, "detection took {checks} ms");
    // The rollback adds only a switch, a restart and its own checks.
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(names.iter().filter(|n| **n == "switch").count(), 2, "{names:?}");
}

#[test]
fn failing_rollback_exits_4_and_reports_degraded() {
    let flag_dir = tempfile::tempdir().unwrap();
    let flag = flag_dir.path().join("healthy");
    std::fs::write(&flag, "").unwrap();
    let extra = format!("\n[[apps.web.checks]]\nexec = [\"test\", \"-e\", \"{}\"]", flag.display());
    let (h, _svc) = Service::host(FAST, &extra);
    deploy(&h, "v1", service_release("v1", 200)).expect(0);
    std::fs::remove_file(&flag).unwrap();
    let out = deploy(&h, "v2", service_release("v2", 200));
    out.expect(4);
    assert!(out.stderr.contains("ROLLBACK FAILED"), "{}", out.stderr);
    assert_eq!(h.current().as_deref(), Some("v1"), "left on the last good release");
    let s = status(&h);
    assert!(s["degraded"].as_str().unwrap().contains("v1"), "{s}");
    assert_eq!(last_event(&h)["outcome"], "rollback-failed");
}

#[test]
fn hooks_get_their_environment_and_failures_act() {
    let marker = tempfile::tempdir().unwrap();
    let log = marker.path().join("hooks.log");
    let script = format!("#!/bin/sh\necho \"$SWITCHBACK_HOOK $SWITCHBACK_APP $SWITCHBACK_VERSION $SWITCHBACK_PREVIOUS_VERSION $PWD\" >> {}\n", log.display());
    let (h, svc) = Service::host(FAST, "");
    let v1 = service_release("v1", 200).file(".switchback/hooks/before_activate", script.as_bytes(), 0o755);
    deploy(&h, "v1", v1).expect(0);
    let v2 = service_release("v2", 200).file(".switchback/hooks/before_activate", script.as_bytes(), 0o755);
    deploy(&h, "v2", v2).expect(0);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[1].starts_with("before_activate web v2 v1 "), "{text}");
    assert!(lines[1].ends_with("releases/v2"), "runs in the new release: {text}");

    // A failing before_activate changes nothing.
    let failing = service_release("v3", 200).file(
        ".switchback/hooks/before_activate",
        b"#!/bin/sh\necho migration broke\nexit 7\n",
        0o755,
    );
    let out = deploy(&h, "v3", failing);
    out.expect(1);
    assert!(out.stderr.contains("before_activate") && out.stderr.contains("nothing was activated"), "{}", out.stderr);
    assert_eq!(h.current().as_deref(), Some("v2"));
    assert_eq!(svc.get("/").unwrap().1, "hello from v2");
    assert_eq!(last_event(&h)["output"][0], "migration broke");

    // A failing after_activate rolls back.
    let failing = service_release("v4", 200).file(".switchback/hooks/after_activate", b"#!/bin/sh\nexit 1\n", 0o755);
    deploy(&h, "v4", failing).expect(3);
    assert_eq!(h.current().as_deref(), Some("v2"));
}

#[test]
fn check_command_reports_each_check() {
    let (h, _svc) = Service::host(FAST, "");
    deploy(&h, "v1", service_release("v1", 200)).expect(0);
    let out = h.run(&["--json", "check", "web"]).expect(0).json();
    assert_eq!(out["results"][0]["ok"], true);
    let (h2, _svc2) = Service::host(FAST, "");
    // No service answering at all: the check fails with exit 1 and says why.
    std::fs::create_dir_all(h2.root().join("releases/v1")).unwrap();
    std::os::unix::fs::symlink("releases/v1", h2.root().join("current")).unwrap();
    let out = h2.run(&["check", "web"]);
    out.expect(1);
    assert!(out.stdout.contains("FAIL"), "{out:?}");
}

#[test]
fn manual_rollback_restarts_and_checks() {
    let (h, svc) = Service::host(FAST, "");
    deploy(&h, "v1", service_release("v1", 200)).expect(0);
    deploy(&h, "v2", service_release("v2", 200)).expect(0);
    assert_eq!(svc.get("/").unwrap().1, "hello from v2");
    let out = h.run(&["rollback", "web", "--to", "v9"]);
    out.expect(1);
    assert!(out.stderr.contains("on disk: v1, v2"), "{}", out.stderr);
    h.run(&["rollback", "web", "--reason", "bad numbers"]).expect(0);
    assert_eq!(svc.get("/").unwrap().1, "hello from v1");
    let s = status(&h);
    assert!(s["bad"][0]["reason"].as_str().unwrap().contains("bad numbers"));
}

//! Rollback epochs (issue 14, point 5): a release declares an `epoch` in its archive's `.switchback/release.toml`
//! or in its signed manifest (`publish --epoch`). Going back to a lower epoch by hand needs `--force` and says
//! why; an automatic rollback never crosses an epoch: the app stays on the release that failed, degraded. Driven
//! against the demo HTTP service, a `file://` channel and the real daemon.

use std::time::Duration;

use crate::bucket::{publish, release_dir, wait_for, wait_for_a_round};
use crate::daemon::{file_host, file_publish, wait_served, HEALTH};
use crate::harness::*;

const FAST: &str = "start_period = \"0s\"\ninterval = \"100ms\"\nhealthy_after = 2\ndeadline = \"2s\"";

/// A release of the demo service that declares `epoch` (none: no `release.toml`).
fn release(version: &str, health: u16, epoch: Option<u64>) -> Release {
    let r = service_release(version, health);
    match epoch {
        Some(e) => r.file(".switchback/release.toml", format!("epoch = {e}\n").as_bytes(), 0o644),
        None => r,
    }
}

fn deploy(h: &Host, version: &str, r: Release) -> Out {
    let a = h.archive(&format!("{version}.tar.zst"), &r.build());
    h.deploy(&a, version)
}

fn status(h: &Host) -> serde_json::Value {
    h.run(&["--json", "status", "web"]).expect(0).json()["apps"][0].clone()
}

/// Each release on disk with its epoch, as `status --json` says.
fn epochs(h: &Host) -> Vec<(String, u64)> {
    let s = status(h);
    s["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["version"].as_str().unwrap().to_owned(), r["epoch"].as_u64().unwrap()))
        .collect()
}

fn bad(h: &Host) -> Vec<String> {
    status(h)["bad"].as_array().unwrap().iter().map(|b| b["version"].as_str().unwrap().to_owned()).collect()
}

/// What a refused command must leave as it was: the symlink, the state file, history.
struct Unchanged {
    current: Option<String>,
    state: Vec<u8>,
    history: Vec<u8>,
}

impl Unchanged {
    fn now(h: &Host) -> Unchanged {
        Unchanged {
            current: h.current(),
            state: std::fs::read(h.state_dir().join("state.json")).unwrap(),
            history: std::fs::read(h.state_dir().join("history.jsonl")).unwrap(),
        }
    }

    #[track_caller]
    fn check(&self, h: &Host, what: &str) {
        assert_eq!(h.current(), self.current, "{what} moved `current`");
        assert!(std::fs::read(h.state_dir().join("state.json")).unwrap() == self.state, "{what} changed the state");
        assert!(std::fs::read(h.state_dir().join("history.jsonl")).unwrap() == self.history, "{what} wrote history");
    }
}

#[track_caller]
fn says_lower_epoch(out: &Out, current: &str, current_epoch: u64, target: &str, target_epoch: u64) {
    out.expect(1);
    for want in [
        format!("`{current}` (epoch {current_epoch})"),
        format!("`{target}` is of the lower epoch {target_epoch}"),
        "--force".to_owned(),
    ] {
        assert!(out.stderr.contains(&want), "the refusal does not say {want:?}: {}", out.stderr);
    }
}

#[test]
fn a_manual_rollback_across_an_epoch_is_refused_unless_forced() {
    let (h, svc) = Service::host(FAST, "");
    deploy(&h, "v1", release("v1", 200, None)).expect(0);
    deploy(&h, "v2", release("v2", 200, Some(1))).expect(0);
    assert_eq!(epochs(&h), [("v1".to_owned(), 0), ("v2".to_owned(), 1)]);

    let before = Unchanged::now(&h);
    says_lower_epoch(&h.run(&["rollback", "web"]), "v2", 1, "v1", 0);
    before.check(&h, "a refused rollback");
    says_lower_epoch(&h.run(&["rollback", "web", "--to", "v1", "--reason", "try"]), "v2", 1, "v1", 0);
    before.check(&h, "a refused rollback --to");
    let out = h.run(&["--json", "rollback", "web"]);
    out.expect(1);
    let doc = out.json();
    assert_eq!(doc["exit_code"], 1, "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("lower epoch 0"), "{doc}");
    before.check(&h, "a refused rollback (--json)");
    assert_eq!(svc.get("/").unwrap(), (200, "hello from v2".to_owned()));

    // --force goes through, as any rollback: restarted, checked, the release left marked bad.
    let out = h.run(&["--json", "rollback", "web", "--force", "--reason", "the migration is reverted"]);
    out.expect(0);
    assert_eq!((out.json()["from"].as_str(), out.json()["to"].as_str()), (Some("v2"), Some("v1")));
    assert_eq!(h.current().as_deref(), Some("v1"));
    assert_eq!(svc.get("/").unwrap(), (200, "hello from v1".to_owned()));
    let s = status(&h);
    assert_eq!((s["current"].as_str(), s["last_good"].as_str()), (Some("v1"), Some("v1")), "{s:#}");
    assert_eq!(bad(&h), ["v2"]);
    let ev = h.history().pop().unwrap();
    assert_eq!(
        (ev["op"].as_str(), ev["outcome"].as_str(), ev["version"].as_str()),
        (Some("rollback"), Some("ok"), Some("v1"))
    );
}

#[test]
fn a_rollback_within_an_epoch_needs_no_force() {
    let (h, svc) = Service::host(FAST, "");
    deploy(&h, "v0", release("v0", 200, Some(0))).expect(0);
    deploy(&h, "v1", release("v1", 200, Some(1))).expect(0);
    deploy(&h, "v2", release("v2", 200, Some(1))).expect(0);
    h.run(&["rollback", "web"]).expect(0);
    assert_eq!(h.current().as_deref(), Some("v1"));
    assert_eq!(svc.get("/").unwrap(), (200, "hello from v1".to_owned()));
    // The next one back is v0, of epoch 0: that one is refused.
    let before = Unchanged::now(&h);
    says_lower_epoch(&h.run(&["rollback", "web"]), "v1", 1, "v0", 0);
    before.check(&h, "a refused rollback");
    // Within the epoch, and with v2's bad mark (from the rollback) cleared, no --force is needed to go to v2.
    h.run(&["clear", "web", "--bad", "v2", "--reason", "fixed"]).expect(0);
    h.run(&["rollback", "web", "--to", "v2"]).expect(0);
    assert_eq!(h.current().as_deref(), Some("v2"));
}

#[test]
fn every_switch_back_to_a_lower_epoch_needs_force() {
    let h = Host::new();
    let a = |v: &str, epoch: Option<u64>| {
        let r = Release::new().file("version.txt", v.as_bytes(), 0o644);
        let r = match epoch {
            Some(e) => {
                r.file(".switchback/release.toml", format!("# the schema of v{v}\nepoch = {e}\n").as_bytes(), 0o644)
            }
            None => r,
        };
        h.archive(&format!("{v}.tar.zst"), &r.build())
    };
    let (v1, v2, v3) = (a("1", None), a("2", Some(2)), a("3", Some(1)));
    h.deploy(&v1, "1").expect(0);
    h.deploy(&v2, "2").expect(0);

    // A deploy of the release on disk, with and without --file: refused, recorded as a failed deploy.
    let state = std::fs::read(h.state_dir().join("state.json")).unwrap();
    says_lower_epoch(&h.run(&["deploy", "web", "--version", "1"]), "2", 2, "1", 0);
    says_lower_epoch(&h.deploy(&v1, "1"), "2", 2, "1", 0);
    assert_eq!(h.current().as_deref(), Some("2"));
    assert!(std::fs::read(h.state_dir().join("state.json")).unwrap() == state, "a refused deploy changed the state");
    let ev = h.history().pop().unwrap();
    assert_eq!(
        (ev["op"].as_str(), ev["outcome"].as_str(), ev["version"].as_str()),
        (Some("deploy"), Some("failed"), Some("1"))
    );
    // A pin that would switch to it.
    let before = Unchanged::now(&h);
    says_lower_epoch(&h.run(&["pin", "web", "1"]), "2", 2, "1", 0);
    before.check(&h, "a refused pin");
    let s = status(&h);
    assert!(s["pin"].is_null() && s["current"] == "2", "{s:#}");

    // A new release of a lower epoch is unpacked and recorded, but not activated.
    let out = h.deploy(&v3, "3");
    says_lower_epoch(&out, "2", 2, "3", 1);
    assert_eq!(h.current().as_deref(), Some("2"));
    assert_eq!(epochs(&h), [("1".to_owned(), 0), ("2".to_owned(), 2), ("3".to_owned(), 1)]);
    let s = status(&h);
    assert!(s["in_flight"].is_null() && s["degraded"].is_null(), "{s:#}");
    let ev = h.history().pop().unwrap();
    assert_eq!((ev["op"].as_str(), ev["outcome"].as_str()), (Some("deploy"), Some("failed")), "{ev}");
    // The next command finds nothing to recover.
    h.run(&["prune", "web", "--keep", "5"]).expect(0);
    assert!(!h.history().iter().any(|e| e["op"] == "recover"), "{:#?}", h.history());

    // --force lets each through.
    h.run(&["deploy", "web", "--version", "3", "--force"]).expect(0);
    assert_eq!(h.current().as_deref(), Some("3"));
    h.run(&["pin", "web", "1", "--force"]).expect(0);
    assert_eq!(h.current().as_deref(), Some("1"));
    assert_eq!(status(&h)["pin"]["version"], "1");
    // Forward to a higher epoch is never held.
    h.run(&["unpin", "web"]).expect(0);
    h.run(&["deploy", "web", "--version", "2"]).expect(0);
    assert_eq!(h.current().as_deref(), Some("2"));
    // `releases` says the epochs to people too.
    let text = h.run(&["releases", "web"]).expect(0).stdout.clone();
    assert!(text.lines().next().unwrap().contains("EPOCH"), "{text}");
}

/// Deploys a healthy v1 of epoch 0, then a failing v2 of epoch 1; checks the app stayed on v2, degraded.
fn assert_held_on_v2(h: &Host, svc: &Service, out: &Out) {
    out.expect(4);
    let doc = out.json();
    assert_eq!(doc["exit_code"], 4, "{doc}");
    let err = doc["error"].as_str().unwrap();
    for want in ["`v2`", "`v1` is of epoch 0 and `v2` of epoch 1", "never crosses an epoch", "DEGRADED"] {
        assert!(err.contains(want), "the error does not say {want:?}: {err}");
    }
    assert_eq!(h.current().as_deref(), Some("v2"));
    wait_served(svc, "v2");
    let s = status(h);
    assert_eq!((s["current"].as_str(), s["last_good"].as_str()), (Some("v2"), Some("v1")), "{s:#}");
    let degraded = s["degraded"].as_str().unwrap_or_else(|| panic!("not degraded: {s:#}"));
    assert!(degraded.contains("epoch 1") && degraded.contains("epoch 0"), "{degraded}");
    assert!(s["in_flight"].is_null(), "{s:#}");
    assert_eq!(s["health"]["verdict"], "unhealthy", "{s:#}");
    assert!(bad(h).is_empty(), "the release the app stays on is not marked bad: {s:#}");
    let human = h.run(&["status", "web"]).expect(0).stdout.clone();
    assert!(human.contains("DEGRADED") && human.contains("v2 (epoch 1)"), "{human}");
}

#[test]
fn an_automatic_rollback_never_crosses_an_epoch() {
    let (h, svc) = Service::host(FAST, "");
    deploy(&h, "v1", release("v1", 200, None)).expect(0);
    let a2 = h.archive("v2.tar.zst", &release("v2", 500, Some(1)).build());
    let out = h.run(&["--json", "deploy", "web", "--file", a2.to_str().unwrap(), "--version", "v2"]);
    assert_held_on_v2(&h, &svc, &out);
    let ev = h.history().pop().unwrap();
    assert_eq!((ev["op"].as_str(), ev["outcome"].as_str()), (Some("deploy"), Some("degraded")), "{ev}");
    assert!(ev["reason"].as_str().unwrap().contains("epoch"), "{ev}");

    // A person's ways out: a rollback by hand still needs --force ...
    says_lower_epoch(&h.run(&["rollback", "web"]), "v2", 1, "v1", 0);
    // ... a redeploy of v2 proves it again (still failing here: held again, never rolled back) ...
    let out = h.run(&["--json", "deploy", "web", "--version", "v2"]);
    assert_held_on_v2(&h, &svc, &out);
    // ... and a forced rollback ends it.
    h.run(&["rollback", "web", "--force"]).expect(0);
    assert_eq!(h.current().as_deref(), Some("v1"));
    wait_served(&svc, "v1");
    let s = status(&h);
    assert!(s["degraded"].is_null(), "{s:#}");
}

#[cfg(feature = "crash-points")]
#[test]
fn a_recovery_after_a_crash_never_crosses_an_epoch() {
    let (h, svc) = Service::host(FAST, "");
    deploy(&h, "v1", release("v1", 200, None)).expect(0);
    let a2 = h.archive("v2.tar.zst", &release("v2", 500, Some(1)).build());
    let args = ["deploy", "web", "--file", a2.to_str().unwrap(), "--version", "v2"];
    let out = h.run_env(&args, &[("SWITCHBACK_CRASH_AT", "after-restart")]);
    assert_eq!(out.code, -1, "the deploy must die by SIGKILL: {out:#?}");
    assert_eq!(h.current().as_deref(), Some("v2"));
    // The next command finishes the deploy: v2 fails its checks, and is not rolled back across its epoch.
    h.run(&["prune", "web"]).expect(0);
    assert_eq!(h.current().as_deref(), Some("v2"));
    wait_served(&svc, "v2");
    let s = status(&h);
    assert!(s["degraded"].as_str().is_some_and(|d| d.contains("never crosses an epoch")), "{s:#}");
    assert!(s["in_flight"].is_null() && bad(&h).is_empty(), "{s:#}");
    let rec = h.history().into_iter().rfind(|e| e["op"] == "recover").expect("a recover event");
    assert_eq!(rec["outcome"], "degraded", "{rec}");
}

#[test]
fn the_daemon_never_rolls_back_across_an_epoch_and_does_not_retry() {
    let (host, svc, key, base) = file_host(HEALTH);
    let mut d = crate::bucket::Daemon::start(&host, &[]);
    file_publish(&host, &key, &base, "v1", 200, &[]);
    wait_for("v1 to go live", Duration::from_secs(30), || host.current().as_deref() == Some("v1"));
    wait_served(&svc, "v1");
    // v2 migrates the schema (epoch 1) and fails its checks.
    file_publish(&host, &key, &base, "v2", 500, &["--epoch", "1"]);
    wait_for("the deploy of v2 to end", Duration::from_secs(30), || {
        host.history().iter().any(|e| e["op"] == "deploy" && e["version"] == "v2")
    });
    let ev = host.history().into_iter().rfind(|e| e["op"] == "deploy").unwrap();
    assert_eq!(ev["outcome"], "degraded", "{ev}");
    assert_eq!(ev["who"]["daemon"], true, "{ev}");
    assert_eq!(host.current().as_deref(), Some("v2"));
    let s = status(&host);
    assert!(s["degraded"].as_str().is_some_and(|d| d.contains("epoch")), "{s:#}");
    assert_eq!(s["channel"]["epoch"], 1, "{s:#}");
    // The daemon stays put: no second deploy, no rollback, however many rounds.
    for _ in 0..3 {
        wait_for_a_round(&host);
    }
    let deploys = host.history().iter().filter(|e| e["op"] == "deploy" || e["op"] == "rollback").count();
    assert_eq!(deploys, 2, "{:#?}", host.history());
    assert_eq!(host.current().as_deref(), Some("v2"));

    // A manifest that names v1 again (a promotion back) is held by the daemon, not followed.
    publish(&host, &[], &base, &key, "v1", &["--promote-only"]).expect(0);
    wait_for("the daemon to hold v1", Duration::from_secs(30), || {
        status(&host)["daemon"]["activity"].as_str().is_some_and(|a| a.contains("epoch"))
    });
    wait_for_a_round(&host);
    assert_eq!(host.current().as_deref(), Some("v2"));
    let deploys = host.history().iter().filter(|e| e["op"] == "deploy" || e["op"] == "rollback").count();
    assert_eq!(deploys, 2, "{:#?}", host.history());
    assert_eq!(d.stop(), 0, "log:\n{}", d.log());
}

#[test]
fn a_manifest_and_an_archive_that_disagree_on_the_epoch_are_refused() {
    let (host, _svc, key, base) = file_host(HEALTH);
    let dir = release_dir(&host, "v1", 200);
    std::fs::create_dir_all(dir.join(".switchback")).unwrap();
    std::fs::write(dir.join(".switchback/release.toml"), "epoch = 2\n").unwrap();
    publish(&host, &[], &base, &key, "v1", &["--epoch", "1", dir.to_str().unwrap()]).expect(0);
    let out = host.run(&["deploy", "web", "--version", "v1"]);
    out.expect(1);
    for want in [
        "epoch 2",
        "its archive's .switchback/release.toml",
        "its signed manifest says epoch 1",
        "nothing was activated",
    ] {
        assert!(out.stderr.contains(want), "the refusal does not say {want:?}: {}", out.stderr);
    }
    assert_eq!(host.current(), None);
    assert!(host.release_dirs().is_empty(), "{:?}", host.release_dirs());
    assert!(status(&host)["releases"].as_array().unwrap().is_empty());

    // One whose manifest says the epoch it declares deploys, and so does one that only its manifest declares.
    let dir2 = release_dir(&host, "v2", 200);
    std::fs::create_dir_all(dir2.join(".switchback")).unwrap();
    std::fs::write(dir2.join(".switchback/release.toml"), "epoch = 2\n").unwrap();
    publish(&host, &[], &base, &key, "v2", &["--epoch", "2", dir2.to_str().unwrap()]).expect(0);
    host.run(&["deploy", "web", "--version", "v2"]).expect(0);
    let dir3 = release_dir(&host, "v3", 200);
    publish(&host, &[], &base, &key, "v3", &["--epoch", "3", dir3.to_str().unwrap()]).expect(0);
    host.run(&["deploy", "web", "--version", "v3"]).expect(0);
    assert_eq!(epochs(&host), [("v2".to_owned(), 2), ("v3".to_owned(), 3)]);
}

#[test]
fn a_malformed_release_toml_is_refused_and_changes_nothing() {
    let (h, _svc) = Service::host(FAST, "");
    deploy(&h, "v1", release("v1", 200, Some(1))).expect(0);
    let before = Unchanged::now(&h);
    let state = std::fs::read(h.state_dir().join("state.json")).unwrap();
    for (i, (text, says)) in [
        (&b"epoch = \"two\"\n"[..], "line 1"),
        (b"epoch = -1\n", "line 1"),
        (b"epoch = 2\nschema = 7\n", "unknown field `schema`"),
        (b"epoch = 18446744073709551616\n", "line 1"),
    ]
    .into_iter()
    .enumerate()
    {
        let v = format!("bad{i}");
        let out = deploy(&h, &v, service_release(&v, 200).file(".switchback/release.toml", text, 0o644));
        out.expect(1);
        for want in ["refused archive", ".switchback/release.toml", says] {
            assert!(out.stderr.contains(want), "{text:?}: the refusal does not say {want:?}: {}", out.stderr);
        }
        assert_eq!(h.release_dirs(), ["v1"], "{text:?} left a release or its staging behind");
        assert_eq!(h.current(), before.current);
        assert_eq!(std::fs::read(h.state_dir().join("state.json")).unwrap(), state, "{text:?} changed the state");
    }
    // A link in its place is never followed, even to a valid file of the release.
    let linked = service_release("bad9", 200)
        .file("real.toml", b"epoch = 5\n", 0o644)
        .symlink(".switchback/release.toml", "../real.toml");
    let out = deploy(&h, "bad9", linked);
    out.expect(1);
    assert!(out.stderr.contains(".switchback/release.toml") && out.stderr.contains("is a link"), "{}", out.stderr);
    assert_eq!(h.release_dirs(), ["v1"]);
    assert_eq!(h.current(), before.current);
    let s = status(&h);
    assert!(s["in_flight"].is_null() && s["degraded"].is_null(), "{s:#}");
}

/// An operator's switch forward to a higher epoch that fails is not undone across the epoch either.
#[test]
fn a_failed_switch_to_a_higher_epoch_stays_there() {
    // An exec check that fails for the version that has a file in `flags` (exec checks see SWITCHBACK_VERSION).
    let flags = tempfile::tempdir().unwrap();
    let check = format!(
        "\n[[apps.web.checks]]\nexec = [\"sh\", \"-c\", \"test ! -e {}/$SWITCHBACK_VERSION\"]\ntimeout = \"2s\"",
        flags.path().display()
    );
    let (h, svc) = Service::host(FAST, &check);
    deploy(&h, "v1", release("v1", 200, None)).expect(0);
    deploy(&h, "v2", release("v2", 200, Some(1))).expect(0);
    h.run(&["rollback", "web", "--force"]).expect(0);
    assert_eq!(h.current().as_deref(), Some("v1"));
    // v2 is broken now; pinning it (marked bad by the rollback, hence --force) switches to it, and it fails.
    std::fs::write(flags.path().join("v2"), "").unwrap();
    let out = h.run(&["--json", "pin", "web", "v2", "--force"]);
    out.expect(4);
    let err = out.json()["error"].as_str().unwrap().to_owned();
    assert!(err.contains("`v1` is of epoch 0 and `v2` of epoch 1") && err.contains("DEGRADED"), "{err}");
    assert_eq!(h.current().as_deref(), Some("v2"));
    wait_served(&svc, "v2");
    let s = status(&h);
    assert!(s["degraded"].as_str().is_some_and(|d| d.contains("never crosses an epoch")), "{s:#}");
    assert!(s["pin"].is_null() && s["in_flight"].is_null(), "{s:#}");
    let ev = h.history().pop().unwrap();
    assert_eq!((ev["op"].as_str(), ev["outcome"].as_str()), (Some("pin"), Some("degraded")), "{ev}");
}

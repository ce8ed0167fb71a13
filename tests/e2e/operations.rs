//! Operations that tell the truth (issue 10): one end-to-end test per point, driving the real binary against the
//! demo HTTP service, a `file://` channel or a Garage S3 server, and the real daemon where the point is about it.
//! This file holds the commands run by hand; `operations/daemon.rs` the daemon's side of operations (cancels,
//! status, history, polls); `operations/host.rs` downloads, host faults and a daemon kept responsive by long work.
//!
//! Already tested elsewhere, and not repeated here: point 5's `deploy --version V` that no signed manifest names
//! (exit 1 naming what the manifest names) is
//! `daemon::publish::deploy_by_version_fetches_only_what_a_signed_manifest_names`.

mod daemon;
mod host;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::bucket::{keygen, publish, release_dir, wait_for};
use crate::harness::*;

pub(crate) const FAST: &str = "start_period = \"0s\"\ninterval = \"100ms\"\nhealthy_after = 2\ndeadline = \"2s\"";

/// A child process killed (and reaped) on drop, so that a failed test leaves nothing running.
pub(crate) struct Reap(pub(crate) std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `status web --json`, the app's object.
pub(crate) fn status(h: &Host) -> serde_json::Value {
    h.run(&["--json", "status", "web"]).expect(0).json()["apps"][0].clone()
}

/// `status web` for people.
pub(crate) fn status_text(h: &Host) -> String {
    h.run(&["status", "web"]).expect(0).stdout.clone()
}

/// Appends TOML to the host's configuration (an extra `[[apps.web.checks]]`, say).
pub(crate) fn append_config(h: &Host, toml: &str) {
    let text = std::fs::read_to_string(&h.config).unwrap();
    std::fs::write(&h.config, format!("{text}\n{toml}\n")).unwrap();
}

/// The history event of the deploy of `v`, once it is recorded (`current` switches before the checks end).
pub(crate) fn deploy_event(h: &Host, v: &str) -> serde_json::Value {
    let find = || h.history().into_iter().rfind(|e| e["op"] == "deploy" && e["version"] == v);
    wait_for(&format!("the deploy of {v} to be recorded"), Duration::from_secs(30), || find().is_some());
    find().unwrap()
}

/// Stops the demo service, as a crash of the service would.
pub(crate) fn kill_service(svc: &Service) {
    let st = Command::new(BIN).args(["demo-service", "stop", "--pidfile"]).arg(&svc.pidfile).status().unwrap();
    assert!(st.success());
}

/// The notify datagrams a daemon sends to `sock`, collected by a thread of their own until dropped.
pub(crate) struct Notes {
    pub(crate) seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Notes {
    pub(crate) fn listen(sock: std::os::unix::net::UnixDatagram) -> Notes {
        use std::sync::atomic::Ordering;
        let (seen, stop) = (std::sync::Arc::default(), std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)));
        let (s2, t2): (std::sync::Arc<std::sync::Mutex<Vec<String>>>, _) = (std::sync::Arc::clone(&seen), stop.clone());
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !t2.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    s2.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        });
        Notes { seen, stop }
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().flat_map(|m| m.lines().map(str::to_owned).collect::<Vec<_>>()).collect()
    }
}

impl Drop for Notes {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Every JSON document on stdout (they must all parse).
#[track_caller]
fn documents(out: &Out) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_str(&out.stdout)
        .into_iter::<serde_json::Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("stdout is not a sequence of JSON documents ({e}): {out:#?}"))
}

/// A check that fails for the release whose version has a file in `flags` (exec checks see SWITCHBACK_VERSION).
fn flag_check(flags: &Path) -> String {
    format!(
        "\n[[apps.web.checks]]\nexec = [\"sh\", \"-c\", \"test ! -e {}/$SWITCHBACK_VERSION\"]\ntimeout = \"2s\"",
        flags.display()
    )
}

fn deploy_release(h: &Host, v: &str, r: Release) -> Out {
    let a = h.archive(&format!("{v}.tar.zst"), &r.build());
    h.deploy(&a, v)
}

/// Point 2.
#[test]
fn a_failed_manual_rollback_returns_to_the_release_it_left_and_marks_only_the_target_bad() {
    let flags = tempfile::tempdir().unwrap();
    let (h, svc) = Service::host(FAST, &flag_check(flags.path()));
    deploy_release(&h, "v1", service_release("v1", 200)).expect(0);
    deploy_release(&h, "v2", service_release("v2", 200)).expect(0);
    // v1 is broken now (its database migrated away, say); v2 is current and healthy.
    std::fs::write(flags.path().join("v1"), "").unwrap();

    let out = h.run(&["--json", "rollback", "web", "--reason", "try v1"]);
    out.expect(3);
    let doc = documents(&out).pop().unwrap();
    assert_eq!(doc["exit_code"], 3, "{doc}");
    let err = doc["error"].as_str().unwrap();
    assert!(err.contains("`v1` is marked bad") && err.contains("back on `v2`, healthy"), "{err}");
    assert_eq!(h.current().as_deref(), Some("v2"));
    assert_eq!(svc.get("/").unwrap(), (200, "hello from v2".to_owned()), "v2 must be served again");
    let s = status(&h);
    let bad: Vec<&str> = s["bad"].as_array().unwrap().iter().map(|b| b["version"].as_str().unwrap()).collect();
    assert_eq!(bad, ["v1"], "only the failed target is bad: {s:#}");
    assert_eq!(s["last_good"], "v2", "{s:#}");
    assert!(s["degraded"].is_null(), "{s:#}");
    assert_eq!((s["health"]["verdict"].as_str(), s["health"]["version"].as_str()), (Some("healthy"), Some("v2")));
    let ev = h.history().pop().unwrap();
    assert_eq!((ev["op"].as_str(), ev["outcome"].as_str()), (Some("rollback"), Some("rolled-back")), "{ev}");

    // A pin that has to switch to a release that fails goes back the same way, and pins nothing.
    let out = h.run(&["pin", "web", "v1", "--force"]);
    out.expect(3);
    assert!(out.stderr.contains("back on `v2`"), "{}", out.stderr);
    assert_eq!(h.current().as_deref(), Some("v2"));
    let s = status(&h);
    assert!(s["pin"].is_null() && s["degraded"].is_null(), "{s:#}");
    assert_eq!(svc.get("/").unwrap().1, "hello from v2");
}

/// Points 3 and 5 (`publish --to` without a scheme).
#[test]
fn publish_refuses_bytes_that_are_not_a_release_and_a_base_without_a_scheme() {
    let h = Host::new();
    let (key, _) = keygen(&h, "ci");
    let base = format!("file://{}/bucket", h.path().display());
    let channel = h.path().join("bucket/web/channels/production.json");
    let dir = release_dir(&h, "1.0.0", 200);
    publish(&h, &[], &base, &key, "1.0.0", &[dir.to_str().unwrap()]).expect(0);
    let before = std::fs::read(&channel).unwrap();

    let text = h.archive("notes.txt", b"hello\n");
    let gz = h.archive("2.0.0.tar.gz", &gzip(&Release::new().file("version.txt", b"2.0.0", 0o644).tar()));
    for (file, says) in [(&text, "refused archive"), (&gz, "gzip stream (.tar.gz)")] {
        let out = publish(&h, &[], &base, &key, "2.0.0", &["--file", file.to_str().unwrap()]);
        out.expect(1);
        assert!(out.stderr.contains(says) && out.stderr.contains(&file.display().to_string()), "{}", out.stderr);
        assert_eq!(std::fs::read(&channel).unwrap(), before, "a refused archive changed the channel");
        assert!(!h.path().join("bucket/web/releases/2.0.0.tar.zst").exists(), "a refused archive was uploaded");
    }
    // The version is not burned: the real 2.0.0 publishes.
    let dir2 = release_dir(&h, "2.0.0", 200);
    let out = publish(&h, &[], &base, &key, "2.0.0", &["--json", dir2.to_str().unwrap()]).expect(0).json();
    assert_eq!(out["version"], "2.0.0");

    // A base without a scheme is a usage error that says what to write.
    let out = publish(&h, &[], "/a/dir", &key, "3.0.0", &[dir2.to_str().unwrap()]);
    out.expect(2);
    assert!(out.stderr.contains("--to `/a/dir` is not a URL") && out.stderr.contains("file:///"), "{}", out.stderr);
    assert!(!out.stderr.contains("relative URL without a base"), "{}", out.stderr);
    assert!(!Path::new("/a/dir").exists());
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut c = Command::new("gzip").arg("-c").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    c.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// Point 4.
#[test]
fn json_output_is_one_document_on_failure_and_on_argument_errors() {
    let (h, svc) = Service::host(FAST, "");
    deploy_release(&h, "v1", service_release("v1", 200)).expect(0);
    let out = h.run(&["--json", "check", "web"]).expect(0).json();
    assert_eq!(out["healthy"], true);

    kill_service(&svc);
    let out = h.run(&["--json", "check", "web"]);
    out.expect(1);
    let docs = documents(&out);
    assert_eq!(docs.len(), 1, "{out:#?}");
    let doc = &docs[0];
    assert_eq!(
        (doc["schema"].as_u64(), doc["healthy"].as_bool(), doc["exit_code"].as_u64()),
        (Some(1), Some(false), Some(1))
    );
    assert_eq!(doc["results"][0]["ok"], false, "{doc:#}");
    assert!(doc["error"].as_str().unwrap().contains("health checks of `web` failed"), "{doc:#}");

    // Argument errors, wherever --json is, and a failure of the command itself: one document each.
    let cases: [(&[&str], i32, &str); 4] = [
        (&["deploy", "web", "--json", "--frobnicate"], 2, "--frobnicate"),
        (&["--json", "frobnicate"], 2, "frobnicate"),
        (&["--json", "deploy", "web", "--version", "v9", "--file", "/nonexistent.tar.zst"], 1, "/nonexistent.tar.zst"),
        // The document says what is missing, as the text on stderr does.
        (&["--json", "deploy", "web"], 2, "--version"),
    ];
    for (args, code, says) in cases {
        let out = h.run(args);
        out.expect(code);
        let docs = documents(&out);
        assert_eq!(docs.len(), 1, "{args:?}: {out:#?}");
        assert_eq!((docs[0]["schema"].as_u64(), docs[0]["exit_code"].as_i64()), (Some(1), Some(code as i64)));
        assert!(docs[0]["error"].as_str().unwrap().contains(says), "{args:?}: {:#}", docs[0]);
    }
}

/// Point 10.
#[test]
fn config_check_refuses_zero_intervals_and_a_restart_program_that_does_not_exist() {
    let h = Host::new();
    let state = h.state_dir().parent().unwrap().display().to_string();
    std::fs::write(
        &h.config,
        format!(
            "[agent]\nstate_dir = \"{state}\"\npoll_interval = \"0s\"\n\n[apps.web]\nroot = \"{}\"\n",
            h.root().display()
        ),
    )
    .unwrap();
    let out = h.run(&["config", "check"]);
    out.expect(2);
    assert!(out.stderr.contains("agent.poll_interval: expected at least 100ms, got 0s"), "{}", out.stderr);
    // The daemon refuses it too, at once, instead of polling in a busy loop.
    let mut d = crate::bucket::Daemon::start(&h, &[]);
    wait_for("the daemon to refuse its configuration", Duration::from_secs(10), || !d.alive());
    assert_eq!(d.child.as_mut().unwrap().wait().unwrap().code(), Some(2), "{}", d.log());

    for (toml, says) in [
        ("[apps.web.health]\ndeadline = \"0s\"", "apps.web.health.deadline: expected more than 0s"),
        (
            "[apps.web.service]\nrestart = [\"/nonexistent/restart-web\"]",
            "apps.web.service.restart: `/nonexistent/restart-web` is not an executable file on this host",
        ),
        (
            "[apps.web.service]\nrestart = [\"no-such-restart-program\"]",
            "apps.web.service.restart: `no-such-restart-program` is not found on PATH",
        ),
    ] {
        h.write_config(toml);
        let out = h.run(&["config", "check"]);
        out.expect(2);
        assert!(out.stderr.contains(says) && out.stderr.contains(h.config.to_str().unwrap()), "{}", out.stderr);
        // A deploy never gets as far as a restart that cannot run (the old way to "ROLLBACK FAILED").
        let out = h.deploy_simple("v1");
        out.expect(2);
        assert!(!out.stderr.contains("ROLLBACK FAILED"), "{}", out.stderr);
        assert_eq!(h.current(), None);
    }
}

/// Point 11: archive formats named, the lock's holder named, no message that repeats itself, `demo --keep`.
#[test]
fn messages_name_the_format_the_lock_holder_and_what_demo_keeps() {
    let h = Host::new();
    let tar = Release::new().file("version.txt", b"v1", 0o644).tar();
    for (name, bytes, says) in [
        ("v1.tar.gz", gzip(&tar), "it is a gzip stream (.tar.gz), not zstd"),
        ("v1.tar", tar.clone(), "it is an uncompressed tar archive, not zstd"),
    ] {
        let a = h.archive(name, &bytes);
        let out = h.deploy(&a, "v1");
        out.expect(1);
        assert!(out.stderr.contains(says) && out.stderr.contains(&a.display().to_string()), "{}", out.stderr);
        assert!(!out.stderr.contains("Unknown frame descriptor"), "{}", out.stderr);
    }

    // A deploy held inside its before_activate hook holds the lock: who and what are said.
    h.deploy_simple("v1").expect(0);
    let (held, hold) = (h.path().join("held"), h.path().join("hold"));
    std::fs::write(&hold, "").unwrap();
    let hook = format!("#!/bin/sh\ntouch {}\nwhile [ -e {} ]; do sleep 0.05; done\n", held.display(), hold.display());
    let v2 = Release::new().file("version.txt", b"v2", 0o644).file(
        ".switchback/hooks/before_activate",
        hook.as_bytes(),
        0o755,
    );
    let a = h.archive("v2.tar.zst", &v2.build());
    let mut holder = Reap(
        Command::new(BIN)
            .args(["--config", h.config.to_str().unwrap(), "deploy", "web", "--version", "v2", "--file"])
            .arg(&a)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the deploy to hold the lock in its hook", Duration::from_secs(30), || held.exists());
    let out = h.run(&["--wait", "300ms", "prune", "web"]);
    std::fs::remove_file(&hold).unwrap();
    out.expect(5);
    let who = format!("another switchback command (pid {}) holds it for `deploy v2` since ", holder.0.id());
    assert!(out.stderr.contains(&who), "{}", out.stderr);
    assert!(holder.0.wait().unwrap().success());

    // A failed deploy says "deploy of" once.
    let (hs, _svc) = Service::host(FAST, "");
    deploy_release(&hs, "1.0.0", service_release("1.0.0", 200)).expect(0);
    let out = deploy_release(&hs, "2.2.0-bad", service_release("2.2.0-bad", 500));
    out.expect(3);
    assert_eq!(out.stderr.matches("deploy of").count(), 1, "{}", out.stderr);
    let ev = hs.history().pop().unwrap();
    assert_eq!(ev["reason"].as_str().unwrap().matches("deploy of").count(), 1, "{ev}");

    // The demo keeps its directory with --keep, and says so (in a directory of the test's own).
    let tmp = tempfile::tempdir().unwrap();
    let out: Out = Command::new(BIN).args(["demo", "--keep"]).env("TMPDIR", tmp.path()).output().unwrap().into();
    out.expect(0);
    assert!(out.stdout.contains("the directory is kept (--keep)"), "{}", out.stdout);
    assert!(!out.stdout.contains("is removed"), "{}", out.stdout);
    let kept = out.stdout.lines().find_map(|l| l.strip_prefix("kept ")).expect("the demo names what it kept");
    let kept = Path::new(kept.split(" (config:").next().unwrap());
    assert!(kept.starts_with(tmp.path()) && kept.join("switchback.toml").is_file(), "{}", kept.display());
}

/// `clear APP`: the degraded state and bad marks end on purpose, recorded with who and why; and the README's other
/// way out, `deploy --version CURRENT`, proves the current release again.
#[test]
fn clear_ends_a_degraded_state_on_purpose_and_history_says_who_and_why() {
    let flags = tempfile::tempdir().unwrap();
    let broken = flags.path().join("all");
    // Every release fails while `all` exists: a deploy's rollback fails too, and the app needs a person.
    let check =
        format!("\n[[apps.web.checks]]\nexec = [\"sh\", \"-c\", \"test ! -e {}\"]\ntimeout = \"2s\"", broken.display());
    let (h, svc) = Service::host(FAST, &check);
    deploy_release(&h, "v1", service_release("v1", 200)).expect(0);
    let degrade = |v: &str| {
        std::fs::write(&broken, "").unwrap();
        let out = deploy_release(&h, v, service_release(v, 200));
        out.expect(4);
        assert!(out.stderr.contains("ROLLBACK FAILED"), "{}", out.stderr);
        std::fs::remove_file(&broken).unwrap();
        let s = status(&h);
        assert!(s["degraded"].as_str().unwrap().contains("v1 is not healthy either"), "{s:#}");
        assert!(status_text(&h).contains("DEGRADED"));
    };
    degrade("v2");
    // The cause is fixed: deploying the current version restarts and checks it, and ends the degraded state.
    let out = h.run(&["--json", "deploy", "web", "--version", "v1"]).expect(0).json();
    assert_eq!(out["outcome"], "deployed", "{out:#}");
    assert!(status(&h)["degraded"].is_null());
    assert_eq!(svc.get("/").unwrap().1, "hello from v1");

    degrade("v3");
    let out = h.run(&["--json", "clear", "web", "--reason", "database restored by hand"]).expect(0).json();
    assert!(out["degraded"].as_str().unwrap().contains("v1 is not healthy either"), "{out:#}");
    assert_eq!(out["bad"], serde_json::json!([]));
    let s = status(&h);
    assert!(s["degraded"].is_null(), "{s:#}");
    assert!(!status_text(&h).contains("DEGRADED"));
    let ev = h.history().pop().unwrap();
    assert_eq!(
        (ev["op"].as_str(), ev["outcome"].as_str(), ev["version"].as_str()),
        (Some("clear"), Some("ok"), Some("v1"))
    );
    assert_eq!(ev["reason"], "cleared the degraded state: database restored by hand", "{ev}");
    assert_eq!((ev["who"]["uid"].as_u64(), ev["who"]["daemon"].as_bool()), (Some(0), Some(false)), "{ev}");
    let text = h.run(&["history", "web", "--limit", "1"]).expect(0).stdout.clone();
    assert!(text.contains("clear") && text.contains("root (uid 0)") && text.contains("database restored"), "{text}");

    // A bad mark is cleared only by name (or --all-bad), and then the version deploys without --force.
    let out = h.run(&["clear", "web", "--bad", "v9"]);
    out.expect(2);
    assert!(out.stderr.contains("`v9` of `web` is not marked bad (marked bad: v2, v3)"), "{}", out.stderr);
    let out = h.run(&["--json", "clear", "web", "--bad", "v3", "--reason", "fixed in place"]).expect(0).json();
    assert_eq!(out["bad"], serde_json::json!(["v3"]));
    let ev = h.history().pop().unwrap();
    assert_eq!(ev["reason"], "cleared the bad mark of v3: fixed in place", "{ev}");
    h.deploy(&h.path().join("archives/v3.tar.zst"), "v3").expect(0);
    assert_eq!(svc.get("/").unwrap().1, "hello from v3");
}

//! The daemon's side of operations: an operator's pin or rollback during its checks, what `status` says (the
//! dashboard, health, refusals, the URL it polls), polls that fail, one daemon per state directory, history.

use std::time::{Duration, Instant};

use super::{append_config, deploy_event, kill_service, status, status_text, Notes};
use crate::bucket::{trust_new_key, wait_for, Daemon};
use crate::daemon::{file_host, file_publish, notify_socket, wait_served, S3Host, HEALTH, LIVE};
use crate::harness::*;

/// Waits until `current` names `v`, looking every 5 ms (to act right after the switch).
fn wait_switch(h: &Host, v: &str) {
    let start = Instant::now();
    while h.current().as_deref() != Some(v) {
        assert!(start.elapsed() < LIVE, "current never became {v}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// After an operator's command ended the daemon's deploy: on `v`, served, healthy, not degraded, no false alarm.
#[track_caller]
fn settled_on(h: &Host, svc: &Service, v: &str, d: &Daemon) {
    assert_eq!(h.current().as_deref(), Some(v));
    assert_eq!(svc.get("/").unwrap(), (200, format!("hello from {v}")));
    let s = status(h);
    assert!(s["degraded"].is_null(), "{s:#}");
    assert_eq!((s["health"]["verdict"].as_str(), s["health"]["version"].as_str()), (Some("healthy"), Some(v)), "{s:#}");
    let text = status_text(h);
    assert!(!text.contains("DEGRADED") && !text.contains("UNHEALTHY"), "{text}");
    let log = d.log();
    assert!(!log.contains("ROLLBACK FAILED") && !log.contains("not healthy either"), "{log}");
}

/// Point 1 (and the lock's holder named when it is the daemon, point 11).
#[test]
fn an_operators_pin_or_rollback_during_the_daemons_checks_ends_on_what_they_asked_for_healthy() {
    // Checks that take about 3 s: long enough to act during them.
    let health = "start_period = \"0s\"\ninterval = \"100ms\"\nhealthy_after = 25\ndeadline = \"15s\"";
    let (h, svc, key, base) = file_host(health);
    file_publish(&h, &key, &base, "1.0.0", 200, &[]);
    h.run(&["deploy", "web", "--version", "1.0.0"]).expect(0);
    let mut d = Daemon::start(&h, &[]);
    let pid = d.child.as_ref().unwrap().id();

    // A pin issued the moment the daemon switched to 2.0.0.
    file_publish(&h, &key, &base, "2.0.0", 200, &[]);
    wait_switch(&h, "2.0.0");
    let out = h.run(&["--json", "pin", "web", "1.0.0", "--reason", "hold"]).expect(0).json();
    assert_eq!(out["pin"], "1.0.0");
    settled_on(&h, &svc, "1.0.0", &d);
    let s = status(&h);
    assert_eq!(s["pin"]["version"], "1.0.0", "the pin must be on what the operator named: {s:#}");
    let bad = s["bad"].as_array().unwrap();
    assert!(
        bad.iter().any(|b| b["version"] == "2.0.0" && b["reason"].as_str().unwrap().contains("switchback pin")),
        "{s:#}"
    );
    assert!(d.log().contains("cancelled during the checks"), "the pin did not come during the checks:\n{}", d.log());
    // Polls later (the daemon's own check of the current release included), still true.
    std::thread::sleep(Duration::from_secs(2));
    settled_on(&h, &svc, "1.0.0", &d);

    // A rollback issued while the daemon checks 3.0.0; meanwhile a command that does not cancel is told who waits.
    h.run(&["unpin", "web"]).expect(0);
    file_publish(&h, &key, &base, "3.0.0", 200, &[]);
    wait_switch(&h, "3.0.0");
    let out = h.run(&["--wait", "200ms", "prune", "web"]);
    out.expect(5);
    assert!(
        out.stderr.contains(&format!("the daemon (pid {pid}) holds it for `deploy 3.0.0` since")),
        "{}",
        out.stderr
    );
    let out = h.run(&["--json", "rollback", "web", "--reason", "not now"]).expect(0).json();
    assert_eq!((out["from"].as_str(), out["to"].as_str()), (Some("3.0.0"), Some("1.0.0")), "{out:#}");
    settled_on(&h, &svc, "1.0.0", &d);
    let s = status(&h);
    assert!(s["bad"].as_array().unwrap().iter().any(|b| b["version"] == "3.0.0"), "{s:#}");
    let ev = h.history().into_iter().rfind(|e| e["op"] == "rollback").unwrap();
    assert!(ev["reason"].as_str().unwrap().contains("the daemon's deploy of 3.0.0 was cancelled"), "{ev}");
    std::thread::sleep(Duration::from_secs(2));
    settled_on(&h, &svc, "1.0.0", &d);
    assert_eq!(d.stop(), 0);
}

/// The status dashboard: current version, health with its version and time, what the daemon is doing, the URL it
/// polls (redacted: no credential of the bucket anywhere), degraded and why until a person clears it. The last
/// refusal is `refusals_stay_in_status_...` below.
#[test]
fn status_is_a_truthful_dashboard_for_an_app_following_an_s3_channel() {
    let s = S3Host::new(HEALTH);
    let flag = s.host.path().join("flag");
    std::fs::write(&flag, "").unwrap();
    append_config(&s.host, &format!("[[apps.web.checks]]\nexec = [\"test\", \"-e\", \"{}\"]", flag.display()));
    let mut d = s.daemon();
    let pid = d.child.as_ref().unwrap().id();
    s.publish("1.0.0", 200);
    s.wait_current("1.0.0");
    let url = "s3://releases/web/channels/production.json";
    wait_for("the daemon to say it is on 1.0.0", LIVE, || s.status()["daemon"]["activity"] == "on 1.0.0 healthy");
    let st = s.status();
    assert_eq!(
        (st["current"].as_str(), st["source"].as_str(), st["daemon"]["source"].as_str()),
        (Some("1.0.0"), Some(url), Some(url))
    );
    let health = &st["health"];
    assert_eq!((health["verdict"].as_str(), health["version"].as_str()), (Some("healthy"), Some("1.0.0")), "{st:#}");
    let at = humantime::parse_rfc3339_weak(health["at"].as_str().unwrap()).unwrap();
    assert!(at.elapsed().unwrap() < Duration::from_secs(60), "{st:#}");
    assert!(st["degraded"].is_null() && st["last_refusal"].is_null() && st["channel"]["version"] == "1.0.0", "{st:#}");
    let text = status_text(&s.host);
    for want in
        ["current    1.0.0".to_owned(), format!("source     {url}"), format!("daemon     pid {pid}: on 1.0.0 healthy")]
    {
        assert!(text.contains(&want), "status lacks `{want}`:\n{text}");
    }
    health_line(&text, "healthy", "1.0.0");
    let json = s.host.run(&["--json", "status"]).stdout.clone();
    for secret in [&s.garage.secret, &s.garage.key_id] {
        assert!(!json.contains(secret.as_str()) && !text.contains(secret.as_str()), "status shows a credential");
    }

    // Every release fails now: the way back fails too, and the app is degraded, saying why, until a person acts.
    std::fs::remove_file(&flag).unwrap();
    s.publish("3.0.0", 200);
    wait_for("the app to be degraded", LIVE, || !s.status()["degraded"].is_null());
    let why = s.status()["degraded"].as_str().unwrap().to_owned();
    assert!(why.contains("the rollback to 1.0.0 switched and restarted, but 1.0.0 is not healthy either"), "{why}");
    assert!(status_text(&s.host).contains(&format!("DEGRADED   {why}")));
    assert!(d.log().contains("ROLLBACK FAILED for `web`"), "{}", d.log());
    // The cause goes away: the daemon's check sees 1.0.0 healthy, and the app stays degraded until cleared.
    std::fs::write(&flag, "").unwrap();
    wait_for("the daemon's check to pass", LIVE, || {
        let h = s.status()["health"].clone();
        h["verdict"] == "healthy" && h["by"] == "daemon" && h["version"] == "1.0.0"
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(s.status()["degraded"].as_str(), Some(why.as_str()));
    assert_eq!(s.host.current().as_deref(), Some("1.0.0"));
    s.host.run(&["clear", "web", "--reason", "flag restored"]).expect(0);
    assert!(s.status()["degraded"].is_null());
    assert_eq!(d.stop(), 0);
}

/// Point 11: a deploy the daemon rolled back is said once, not "deploy of V failed: deploy of `V` ... failed": in
/// `STATUS=` (what `status` shows as the daemon's activity), in its log and in history.
#[test]
fn a_deploy_the_daemon_rolled_back_is_said_without_repeating_itself() {
    let (h, _svc, key, base) = file_host(HEALTH);
    // STATUS= at every change (a 400 ms watchdog: the daemon looks 5 times a second).
    let (sock, mut env) = notify_socket(&h);
    env.retain(|(k, _)| k != "WATCHDOG_USEC");
    env.push(("WATCHDOG_USEC".to_owned(), "400000".to_owned()));
    let notes = Notes::listen(sock);
    let mut d = Daemon::start(&h, &env);
    file_publish(&h, &key, &base, "1.0.0", 200, &[]);
    deploy_event(&h, "1.0.0");
    file_publish(&h, &key, &base, "2.2.0-bad", 500, &[]);
    let ev = deploy_event(&h, "2.2.0-bad");
    assert_eq!(ev["outcome"], "rolled-back", "{ev}");
    let failed = |l: &String| l.starts_with("STATUS=web ") && l.contains("2.2.0-bad") && l.contains("failed");
    wait_for("STATUS= to report the failed deploy", LIVE, || notes.lines().iter().any(failed));
    let said: Vec<String> = notes.lines().into_iter().filter(failed).collect();
    let reason = ev["reason"].as_str().unwrap().to_owned();
    for line in said.iter().map(String::as_str).chain(d.log().lines()).chain([reason.as_str()]) {
        assert!(line.matches("deploy of").count() <= 1, "repeats itself: {line}");
    }
    assert_eq!(d.stop(), 0);
}

/// Point 8: health is the newest check of the current release; the daemon checks it while idle and `status` says
/// which version, when, and by whom.
#[test]
fn status_health_follows_the_service_between_deploys() {
    let (h, svc, key, base) = file_host(HEALTH);
    let mut d = Daemon::start(&h, &[]);
    file_publish(&h, &key, &base, "1.0.0", 200, &[]);
    wait_for("1.0.0 to go live", LIVE, || h.current().as_deref() == Some("1.0.0"));
    wait_served(&svc, "1.0.0");
    // The service answers before the deploy's checks end; until then status claims nothing.
    wait_for("the deploy's checks to pass", LIVE, || status(&h)["health"]["verdict"] == "healthy");
    assert_eq!(status(&h)["health"]["version"], "1.0.0");

    kill_service(&svc);
    wait_for("status to say unhealthy", LIVE, || status(&h)["health"]["verdict"] == "unhealthy");
    let st = status(&h);
    let health = &st["health"];
    assert_eq!((health["version"].as_str(), health["by"].as_str()), (Some("1.0.0"), Some("daemon")), "{st:#}");
    let line = health_line(&status_text(&h), "UNHEALTHY", "1.0.0");
    assert!(line.contains("(the daemon's check of 1.0.0: http "), "{line}");
    wait_for("the daemon's activity to say so", LIVE, || status(&h)["daemon"]["activity"] == "on 1.0.0 UNHEALTHY");
    // It reports; it does not roll back a release that passed its bake, nor say it twice in the log.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(h.current().as_deref(), Some("1.0.0"));
    assert_eq!(d.log().matches("1.0.0 is not healthy now").count(), 1, "{}", d.log());

    // The service comes back: so does the verdict.
    let restart = std::process::Command::new(BIN)
        .args(["demo-service", "restart", "--root", h.root().to_str().unwrap(), "--port", &svc.port.to_string()])
        .arg("--pidfile")
        .arg(&svc.pidfile)
        .status();
    assert!(restart.unwrap().success());
    wait_for("status to say healthy again", LIVE, || status(&h)["health"]["verdict"] == "healthy");
    assert_eq!(d.stop(), 0);
}

/// Point 7.
#[test]
fn refusals_stay_in_status_until_a_newer_manifest_is_accepted() {
    let (h, _svc, key, base) = file_host(HEALTH);
    let channel = h.path().join("bucket/web/channels");
    file_publish(&h, &key, &base, "1.0.0", 200, &[]);
    let old = ["production.json.minisig", "production.json"].map(|f| std::fs::read(channel.join(f)).unwrap());
    let mut d = Daemon::start(&h, &[]);
    wait_for("1.0.0 to go live", LIVE, || h.current().as_deref() == Some("1.0.0"));
    file_publish(&h, &key, &base, "2.0.0", 200, &[]);
    wait_for("2.0.0 to go live", LIVE, || h.current().as_deref() == Some("2.0.0"));

    // The old manifest put back: a replay, refused.
    for (name, bytes) in ["production.json.minisig", "production.json"].iter().zip(&old) {
        std::fs::write(channel.join(".tmp"), bytes).unwrap();
        std::fs::rename(channel.join(".tmp"), channel.join(name)).unwrap();
    }
    wait_for("the replay to be refused", LIVE, || !status(&h)["last_refusal"].is_null());
    let refusal = status(&h)["last_refusal"].as_str().unwrap().to_owned();
    assert!(refusal.contains("replayed: sequence") && refusal.contains("production.json"), "{refusal}");
    // Three later polls that find nothing new: the refusal is still what status says.
    let mut polls = std::collections::BTreeSet::new();
    wait_for("three more polls", LIVE, || {
        let st = status(&h);
        let poll = st["daemon"]["last_poll"].as_str().unwrap_or("").to_owned();
        if poll.ends_with(" unchanged") {
            polls.insert(poll);
        }
        polls.len() >= 3
    });
    let st = status(&h);
    assert_eq!(
        (st["last_refusal"].as_str(), st["daemon"]["last_refusal"].as_str()),
        (Some(refusal.as_str()), Some(refusal.as_str()))
    );
    assert!(status_text(&h).contains(&format!("REFUSED    {refusal}")));
    assert_eq!(h.current().as_deref(), Some("2.0.0"));

    // A newer manifest is accepted: the refusal is over.
    file_publish(&h, &key, &base, "3.0.0", 200, &[]);
    wait_for("3.0.0 to go live", LIVE, || h.current().as_deref() == Some("3.0.0"));
    // daemon.json is written once a second: the acceptance shows within that.
    wait_for("the refusal to be over", Duration::from_secs(3), || status(&h)["last_refusal"].is_null());
    assert!(!status_text(&h).contains("REFUSED"));
    assert_eq!(d.stop(), 0);
}

/// Point 6: a channel with no manifest is named (log and status) and said once, then summarised; resolved, it says
/// so.
#[test]
fn a_channel_with_no_manifest_is_named_once_then_summarised() {
    let (h, _svc, key, base) = file_host(HEALTH);
    let url = format!("{base}/web/channels/production.json");
    let mut d = Daemon::start(&h, &[]);
    wait_for("ten polls of an empty channel", LIVE, || d.log().contains("still (10 polls since"));
    let log = d.log();
    let said = format!("no manifest is published at {url}");
    assert_eq!(log.lines().filter(|l| l.contains(&said)).count(), 2, "once, then the summary after 10:\n{log}");
    assert_eq!(log.matches("web: still (").count(), 1, "{log}");
    let st = status(&h);
    assert_eq!((st["source"].as_str(), st["daemon"]["source"].as_str()), (Some(url.as_str()), Some(url.as_str())));
    assert!(st["daemon"]["last_poll"].as_str().unwrap().contains(&format!("no manifest is published at {url}")));
    assert!(status_text(&h).contains(&format!("source     {url}")));
    file_publish(&h, &key, &base, "1.0.0", 200, &[]);
    wait_for("1.0.0 to go live", LIVE, || h.current().as_deref() == Some("1.0.0"));
    assert!(d.log().contains("web: resolved after "), "{}", d.log());
    assert_eq!(d.stop(), 0);
}

/// Point 6: an unreachable bucket says why (connection refused), in the daemon's status and in `deploy`; a plain
/// http endpoint needs `allow_http`, said by `config check`.
#[test]
fn an_unreachable_bucket_says_connection_refused_and_plain_http_needs_allow_http() {
    let port = free_port();
    let keys = |allow: bool| {
        format!(
            "source = \"s3://releases/web\"\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"garage\"\n{}trusted_keys = [\"PUBLIC_KEY\"]\n",
            if allow { "allow_http = true\n" } else { "" }
        )
    };
    let (h, _svc) = Service::host_with(|_| keys(true), HEALTH, "");
    trust_new_key(&h);
    let env: Vec<(String, String)> =
        [("AWS_ACCESS_KEY_ID", "GK0"), ("AWS_SECRET_ACCESS_KEY", "0"), ("AWS_REGION", "garage")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .to_vec();
    let mut d = Daemon::start(&h, &env);
    wait_for("a failed poll", LIVE, || {
        status(&h)["daemon"]["last_poll"].as_str().is_some_and(|p| p.contains("poll failed"))
    });
    let poll = status(&h)["daemon"]["last_poll"].as_str().unwrap().to_lowercase();
    assert!(
        poll.contains("connection refused") && poll.contains("s3://releases/web/channels/production.json"),
        "{poll}"
    );
    assert!(d.log().to_lowercase().contains("connection refused"), "{}", d.log());
    assert_eq!(d.stop(), 0);
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = h.run_env(&["deploy", "web", "--version", "1.0.0"], &envs);
    out.expect(1);
    assert!(out.stderr.to_lowercase().contains("connection refused"), "{}", out.stderr);

    let cfg = std::fs::read_to_string(&h.config).unwrap().replace("allow_http = true\n", "");
    std::fs::write(&h.config, cfg).unwrap();
    let out = h.run(&["config", "check"]);
    out.expect(2);
    assert!(
        out.stderr.contains("apps.web.endpoint: `http://127.0.0.1:") && out.stderr.contains("allow_http = true"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("builder error"), "{}", out.stderr);
}

/// Point 9.
#[test]
fn a_second_daemon_on_the_same_state_directory_exits_5_naming_the_first() {
    let (h, _svc, _key, _base) = file_host(HEALTH);
    let mut first = Daemon::start(&h, &[]);
    wait_for("the first daemon to be ready", LIVE, || first.log().contains("daemon ready"));
    let mut second = Daemon::start(&h, &[]);
    wait_for("the second daemon to exit", Duration::from_secs(10), || !second.alive());
    assert_eq!(second.child.as_mut().unwrap().wait().unwrap().code(), Some(5), "{}", second.log());
    let pid = first.child.as_ref().unwrap().id();
    let state = h.state_dir().parent().unwrap().display().to_string();
    let says = format!("another switchback daemon (pid {pid}) already runs on the state directory {state}");
    assert!(second.log().contains(&says), "{}", second.log());
    assert!(first.alive());
    assert_eq!(first.stop(), 0);
}

/// Point 13 (and point 8's interrupted step): history lists what prunes removed (automatic ones too), tells the
/// daemon from a person, shows times; a deploy the daemon's SIGTERM interrupted is `interrupted`, status calls its
/// dead step INTERRUPTED, and the recovery that finishes it records how long it took.
#[test]
fn history_says_what_was_pruned_who_acted_and_when_and_what_a_shutdown_interrupted() {
    let (h, svc, key, base) = file_host(HEALTH);
    let mut d = Daemon::start(&h, &[]);
    for v in ["1.0.0", "2.0.0", "3.0.0", "4.0.0"] {
        file_publish(&h, &key, &base, v, 200, &[]);
        wait_for(&format!("{v} to go live"), LIVE, || h.current().as_deref() == Some(v));
    }
    wait_served(&svc, "4.0.0");
    deploy_event(&h, "4.0.0");
    // keep = 3: the deploy of 4.0.0 pruned 1.0.0, and that is an event of its own, by the daemon.
    let events = h.history();
    let prune = events.iter().find(|e| e["op"] == "prune").unwrap_or_else(|| panic!("no prune event: {events:#?}"));
    assert_eq!(prune["removed"], serde_json::json!(["1.0.0"]), "{prune}");
    assert_eq!(prune["reason"], "after the deploy of 4.0.0 (keep 3)", "{prune}");
    assert_eq!(prune["who"]["daemon"], true, "{prune}");
    h.run(&["prune", "web", "--keep", "2"]).expect(0);
    let prune = h.history().pop().unwrap();
    assert_eq!((prune["op"].as_str(), prune["who"]["daemon"].as_bool()), (Some("prune"), Some(false)), "{prune}");
    assert_eq!(prune["removed"], serde_json::json!(["2.0.0"]), "{prune}");

    // Slow checks from now on; the daemon is stopped while it checks 5.0.0.
    let fast = std::fs::read_to_string(&h.config).unwrap();
    std::fs::write(
        &h.config,
        fast.replace("healthy_after = 2\ndeadline = \"5s\"", "healthy_after = 100\ndeadline = \"30s\""),
    )
    .unwrap();
    d.signal("HUP");
    wait_for("the configuration to be reloaded", LIVE, || d.log().contains("configuration reloaded"));
    file_publish(&h, &key, &base, "5.0.0", 200, &[]);
    wait_for("the daemon to check 5.0.0", LIVE, || {
        status(&h)["daemon"]["activity"].as_str().is_some_and(|a| a.contains("deploying 5.0.0 (checks"))
    });
    assert_eq!(d.stop(), 0, "{}", d.log());
    let ev = h.history().into_iter().rfind(|e| e["op"] == "deploy").unwrap();
    assert_eq!((ev["version"].as_str(), ev["outcome"].as_str()), (Some("5.0.0"), Some("interrupted")), "{ev}");
    assert!(ev["reason"].as_str().unwrap().contains("interrupted by the daemon's shutdown"), "{ev}");
    assert_eq!(ev["who"]["daemon"], true, "{ev}");
    let st = status(&h);
    assert_eq!(
        (st["in_flight"]["version"].as_str(), st["in_flight_interrupted"].as_bool()),
        (Some("5.0.0"), Some(true)),
        "{st:#}"
    );
    // Health: nothing checked 5.0.0 to the end, so nothing is claimed about it.
    assert_eq!(st["health"]["verdict"], "unknown", "{st:#}");
    let text = status_text(&h);
    assert!(text.contains("INTERRUPTED: that process is gone"), "{text}");
    assert!(text.contains("unknown: no check of 5.0.0 yet (the last one was of 4.0.0 at "), "{text}");

    // The next command finishes it (restart and verify), and the recovery's event says how long that took.
    std::fs::write(&h.config, &fast).unwrap();
    h.run(&["unpin", "web"]).expect(0);
    let rec = h.history().into_iter().rfind(|e| e["op"] == "recover").expect("a recover event");
    assert!(rec["reason"].as_str().unwrap().contains("5.0.0 is healthy"), "{rec}");
    let steps: u64 = rec["steps"].as_array().unwrap().iter().map(|s| s["ms"].as_u64().unwrap()).sum();
    let took = rec["duration_ms"].as_u64().unwrap();
    assert!(took > 0 && took >= steps, "the recovery took {took} ms for steps of {steps} ms: {rec}");
    assert_eq!(status(&h)["in_flight"], serde_json::Value::Null);

    // The view for people: every line starts with its time, and says who acted.
    let text = h.run(&["history", "web"]).expect(0).stdout.clone();
    for line in text.lines() {
        let time = line.split_whitespace().next().unwrap();
        let t =
            humantime::parse_rfc3339_weak(time).unwrap_or_else(|e| panic!("`{line}` does not start with a time: {e}"));
        assert!(t.elapsed().unwrap() < Duration::from_secs(600), "{line}");
    }
    let interrupted = text.lines().find(|l| l.contains(" deploy ") && l.contains("interrupted")).unwrap();
    assert!(interrupted.contains("the daemon as root (uid 0)"), "{interrupted}");
    let human = text.lines().find(|l| l.contains(" prune ") && l.contains("keep 2")).unwrap();
    assert!(human.contains("root (uid 0)") && !human.contains("the daemon"), "{human}");
}

/// The `health` line of `status` for people: the verdict, then the time of the check (a real time, recent), then
/// whose check of which version. Returns the line.
#[track_caller]
fn health_line(text: &str, verdict: &str, version: &str) -> String {
    let line =
        text.lines().find(|l| l.starts_with("  health     ")).unwrap_or_else(|| panic!("no health line:\n{text}"));
    let rest = line.trim_start_matches("  health     ");
    let at = rest.strip_prefix(&format!("{verdict} at ")).unwrap_or_else(|| panic!("not {verdict}: {line}"));
    let time = at.split_whitespace().next().unwrap();
    let t = humantime::parse_rfc3339_weak(time).unwrap_or_else(|e| panic!("no time in `{line}`: {e}"));
    assert!(t.elapsed().unwrap() < Duration::from_secs(60), "{line}");
    assert!(at.contains(&format!(" of {version}: ")), "not about {version}: {line}");
    line.to_owned()
}

//! The daemon following a channel, in S3 (Garage), Azure blob storage (Azurite) and an inbox: new releases go
//! live, a bad one is rolled back, an idle poll is one conditional request; and what holds it: a manual rollback
//! (which also cancels its deploy), a pin, a manifest that expired while held.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{file_host, file_publish, wait_served, S3Host, HEALTH, LIVE};
use crate::bucket::{publish, release_dir, trust_new_key, wait_for, wait_for_a_round, Azurite, Daemon, Proxy};
use crate::harness::Service;

#[test]
fn follows_the_channel_rolls_back_a_bad_release_and_a_manual_rollback_sticks() {
    let s = S3Host::new(HEALTH);
    let mut d = s.daemon();
    s.publish("1.0.0", 200);
    let took = s.wait_current("1.0.0");
    // One poll interval (500 ms, ±10%) plus the deploy's own time (restart and two passes of 100 ms).
    assert!(took < Duration::from_secs(10), "1.0.0 went live {took:?} after publish");

    // A release that fails its checks is rolled back and marked bad; the daemon goes on.
    s.publish("2.0.0", 500);
    wait_for("2.0.0 to be marked bad", LIVE, || s.bad().contains(&"2.0.0".to_owned()));
    // The mark comes just before the switch back: wait for the switch and for the service to answer from it.
    s.wait_current("1.0.0");
    assert_eq!(s.host.current().as_deref(), Some("1.0.0"));
    assert!(d.alive());

    s.publish("3.0.0", 200);
    s.wait_current("3.0.0");

    // A manual rollback while the daemon runs sticks: the channel still names 3.0.0, which is now bad.
    s.host.run(&["rollback", "web", "--reason", "smoke"]).expect(0);
    assert_eq!(s.host.current().as_deref(), Some("1.0.0"));
    // The daemon's next decision holds 3.0.0 as bad, and it polls on without bringing it back.
    wait_for("the daemon to hold 3.0.0 as bad", LIVE, || {
        s.activity().contains("3.0.0 is marked bad") || s.host.current().as_deref() != Some("1.0.0")
    });
    s.wait_polls(2);
    assert_eq!(s.host.current().as_deref(), Some("1.0.0"));
    assert!(s.bad().contains(&"3.0.0".to_owned()));
    let st = s.status();
    assert!(st["daemon"]["activity"].as_str().unwrap().contains("3.0.0 is marked bad"), "{st:#}");
    assert!(!st["daemon"]["last_poll"].as_str().unwrap().is_empty(), "{st:#}");

    // A pin holds the app until unpin.
    s.host.run(&["pin", "web", "1.0.0"]).expect(0);
    s.publish("4.0.0", 200);
    // 4.0.0 is accepted and held for the pin (until then the hold was for 3.0.0, which is bad), poll after poll.
    wait_for("the daemon to hold 4.0.0 for the pin", LIVE, || {
        s.activity().contains("pinned to 1.0.0") || s.host.current().as_deref() != Some("1.0.0")
    });
    s.wait_polls(2);
    assert_eq!(s.host.current().as_deref(), Some("1.0.0"));
    assert!(s.status()["daemon"]["activity"].as_str().unwrap().contains("pinned to 1.0.0"));
    s.host.run(&["unpin", "web"]).expect(0);
    s.wait_current("4.0.0");

    let ops: Vec<String> = s.host.history().iter().map(|e| e["op"].as_str().unwrap().to_owned()).collect();
    for op in ["accept", "deploy", "rollback", "pin", "unpin"] {
        assert!(ops.contains(&op.to_owned()), "history lacks {op}: {ops:?}");
    }
    // What the daemon did says it was the daemon, whichever of its threads recorded it; the operator's pin not.
    for e in s.host.history() {
        let by_daemon = e["who"]["daemon"].as_bool().unwrap();
        match e["op"].as_str().unwrap() {
            "accept" => assert!(by_daemon, "an accept recorded as not the daemon's: {e:#}"),
            "pin" | "unpin" => assert!(!by_daemon, "an operator's command recorded as the daemon's: {e:#}"),
            _ => {}
        }
    }
    assert_eq!(d.stop(), 0, "SIGTERM must end the daemon with 0; log:\n{}", d.log());
    assert!(!s.host.state_dir().join("daemon.json").exists(), "the daemon's status file outlived it");
}

#[test]
fn an_idle_poll_is_one_conditional_request() {
    let s = S3Host::new(HEALTH);
    let mut d = s.daemon();
    s.publish("1.0.0", 200);
    s.wait_current("1.0.0");
    // Idle from the first poll answered 304 on. The 4 s that follow are the measure: polls per unit of time.
    wait_for("an idle poll", LIVE, || s.proxy.lines().iter().any(|l| l.starts_with("HTTP/") && l.contains(" 304 ")));
    let mark = s.proxy.lines().len();
    std::thread::sleep(Duration::from_secs(4));
    let lines: Vec<String> = s.proxy.lines()[mark..].to_vec();
    let requests: Vec<&String> = lines.iter().filter(|l| !l.starts_with("HTTP/")).collect();
    let responses: Vec<&String> = lines.iter().filter(|l| l.starts_with("HTTP/")).collect();
    // 4 s at 500 ms ±10%: between 6 and 9 polls.
    assert!((5..=10).contains(&requests.len()), "{} requests in 4 s: {requests:#?}", requests.len());
    for r in &requests {
        assert!(r.starts_with("GET /releases/web/channels/production.json "), "unexpected request {r}");
        assert!(r.to_ascii_lowercase().contains("if-none-match:"), "unconditional poll: {r}");
    }
    assert!(responses.iter().all(|r| r.contains(" 304 ")), "{responses:#?}");
    let rss = std::fs::read_to_string(format!("/proc/{}/status", d.child.as_ref().unwrap().id()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .to_owned();
    eprintln!("idle daemon (test build): {} requests in 4 s, all 304; {rss}", requests.len());
    assert!(d.alive());
}

#[test]
fn a_manifest_that_expires_while_held_is_not_acted_on() {
    let s = S3Host::new(HEALTH);
    let mut d = s.daemon();
    s.publish("1.0.0", 200);
    s.wait_current("1.0.0");
    s.host.run(&["pin", "web", "1.0.0"]).expect(0);

    // Accepted while in date, held by the pin until after it expired.
    let dir = release_dir(&s.host, "2.0.0", 200);
    s.publish_with_key(&s.key, "2.0.0", &["--expires-in", "6s", dir.to_str().unwrap()]).expect(0);
    wait_for("2.0.0 to be accepted", LIVE, || s.status()["channel"]["version"] == "2.0.0");
    let expires = s.status()["channel"]["expires"].as_str().unwrap().to_owned();
    wait_for("the manifest to expire", LIVE, || {
        humantime::parse_rfc3339_weak(&expires).unwrap() < std::time::SystemTime::now()
    });
    s.host.run(&["unpin", "web"]).expect(0);
    wait_for("the daemon to hold the expired manifest", LIVE, || s.activity().contains("expired"));
    s.wait_polls(2);
    assert_eq!(s.host.current().as_deref(), Some("1.0.0"));
    assert!(!s.host.release_dirs().contains(&"2.0.0".to_owned()), "an expired manifest's release was fetched");
    let human = s.host.run(&["status", "web"]).expect(0).stdout.clone();
    assert!(human.contains("EXPIRED"), "{human}");

    // A newer manifest in date is followed again.
    s.publish("3.0.0", 200);
    s.wait_current("3.0.0");
    assert_eq!(d.stop(), 0, "log:\n{}", d.log());
}

/// The same channel protocol against Azure Blob Storage (Azurite): publish, the daemon following it, idle polls
/// that are one conditional request each, a second release.
#[test]
fn follows_a_channel_in_azure_blob_storage() {
    let az = Azurite::start();
    let proxy = Proxy::start(az.port);
    let endpoint = Azurite::endpoint(&proxy.endpoint());
    let (host, svc) = Service::host_with(
        |_| {
            format!(
                "source = \"az://{}/web\"\nendpoint = \"{endpoint}\"\nallow_http = true\ntrusted_keys = [\"PUBLIC_KEY\"]\n",
                az.container
            )
        },
        HEALTH,
        "",
    );
    let key = trust_new_key(&host);
    let env = az.env();
    let direct = Azurite::endpoint(&format!("http://127.0.0.1:{}", az.port));
    let base = format!("az://{}", az.container);
    let publish_version = |v: &str| {
        let dir = release_dir(&host, v, 200);
        publish(&host, &env, &base, &key, v, &["--endpoint", &direct, "--allow-http", dir.to_str().unwrap()]).expect(0);
    };
    let mut d = Daemon::start(&host, &env);
    publish_version("1.0.0");
    wait_for("1.0.0 to go live", LIVE, || host.current().as_deref() == Some("1.0.0"));
    wait_served(&svc, "1.0.0");

    // Idle from the first poll answered 304 on. The 3 s that follow are the measure: polls per unit of time.
    wait_for("an idle poll", LIVE, || proxy.lines().iter().any(|l| l.starts_with("HTTP/") && l.contains(" 304")));
    let mark = proxy.lines().len();
    std::thread::sleep(Duration::from_secs(3));
    let lines: Vec<String> = proxy.lines()[mark..].to_vec();
    let requests: Vec<&String> = lines.iter().filter(|l| !l.starts_with("HTTP/")).collect();
    assert!((3..=8).contains(&requests.len()), "{} requests in 3 s: {requests:#?}", requests.len());
    for r in &requests {
        assert!(r.starts_with("GET /devstoreaccount1/releases/web/channels/production.json "), "unexpected {r}");
        assert!(r.to_ascii_lowercase().contains("if-none-match:"), "unconditional poll: {r}");
    }
    for l in lines.iter().filter(|l| l.starts_with("HTTP/")) {
        assert!(l.contains(" 304"), "an idle poll was answered {l}");
    }

    publish_version("2.0.0");
    wait_for("2.0.0 to go live", LIVE, || host.current().as_deref() == Some("2.0.0"));
    wait_served(&svc, "2.0.0");
    assert_eq!(d.stop(), 0, "log:\n{}", d.log());
}

#[test]
fn an_inbox_drop_is_deployed_at_once_held_while_pinned_and_a_bad_one_is_set_aside() {
    let (host, svc, key, base) = file_host(HEALTH);
    let inbox = host.path().join("inbox");
    let cfg = std::fs::read_to_string(&host.config)
        .unwrap()
        .replace(&format!("source = \"{base}/web\"\n"), &format!("inbox = \"{}\"\n", inbox.display()));
    std::fs::write(&host.config, cfg).unwrap();
    let mut d = Daemon::start(&host, &[]);
    wait_for("the daemon to be ready", LIVE, || d.log().contains("daemon ready"));
    file_publish(&host, &key, &base, "1.0.0", 200, &[]);
    let published = host.path().join("bucket/web");
    let drop_in = |name: &str, from: PathBuf| {
        let tmp = inbox.join(format!(".{name}.tmp"));
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, inbox.join(name)).unwrap();
    };
    let start = Instant::now();
    drop_in("1.0.0.tar.zst", published.join("releases/1.0.0.tar.zst"));
    drop_in("web.json.minisig", published.join("channels/production.json.minisig"));
    drop_in("web.json", published.join("channels/production.json"));
    wait_for("the inbox drop to go live", LIVE, || host.current().as_deref() == Some("1.0.0"));
    eprintln!("inbox drop live after {:?}", start.elapsed());
    wait_served(&svc, "1.0.0");
    let empty = || std::fs::read_dir(&inbox).unwrap().next().is_none();
    wait_for("the inbox to be emptied", LIVE, empty);

    // A drop for a pinned app waits in the inbox until the pin is gone, then goes live.
    host.run(&["pin", "web", "1.0.0"]).expect(0);
    file_publish(&host, &key, &base, "2.0.0", 200, &[]);
    drop_in("2.0.0.tar.zst", published.join("releases/2.0.0.tar.zst"));
    drop_in("web.json.minisig", published.join("channels/production.json.minisig"));
    drop_in("web.json", published.join("channels/production.json"));
    wait_for("the daemon to hold the drop", LIVE, || d.log().contains("not deploying 2.0.0: pinned to 1.0.0"));
    wait_for_a_round(&host);
    assert!(inbox.join("web.json").exists() && inbox.join("2.0.0.tar.zst").exists(), "a held drop was removed");
    assert_eq!(host.current().as_deref(), Some("1.0.0"));
    host.run(&["unpin", "web"]).expect(0);
    wait_for("the held drop to go live after unpin", LIVE, || host.current().as_deref() == Some("2.0.0"));
    wait_for("the inbox to be emptied again", LIVE, empty);

    // A manifest whose signature does not match is refused, set aside, and nothing changes.
    file_publish(&host, &key, &base, "3.0.0", 200, &[]);
    drop_in("3.0.0.tar.zst", published.join("releases/3.0.0.tar.zst"));
    drop_in("web.json.minisig", published.join("channels/production.json.minisig"));
    let forged =
        std::fs::read_to_string(published.join("channels/production.json")).unwrap().replace("\"size\"", "\"size\" ");
    std::fs::write(inbox.join(".web.json.tmp"), forged).unwrap();
    std::fs::rename(inbox.join(".web.json.tmp"), inbox.join("web.json")).unwrap();
    wait_for("the forged manifest to be set aside", LIVE, || inbox.join("web.json.refused").exists());
    assert_eq!(host.current().as_deref(), Some("2.0.0"));
    assert!(d.log().contains("bad signature"), "{}", d.log());
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_manual_rollback_cancels_the_daemons_deploy_promptly() {
    let (host, _svc, key, base) = file_host(HEALTH);
    file_publish(&host, &key, &base, "1.0.0", 200, &[]);
    host.run(&["deploy", "web", "--version", "1.0.0"]).expect(0);
    // From now on a deploy bakes for a minute.
    let cfg = std::fs::read_to_string(&host.config)
        .unwrap()
        .replace("deadline = \"5s\"", "deadline = \"5s\"\nbake = \"60s\"");
    std::fs::write(&host.config, cfg).unwrap();
    let mut d = Daemon::start(&host, &[]);
    file_publish(&host, &key, &base, "2.0.0", 200, &[]);
    wait_for("the daemon to bake 2.0.0", LIVE, || {
        host.run(&["status", "web", "--json"]).json()["apps"][0]["daemon"]["activity"]
            .as_str()
            .is_some_and(|a| a.contains("baking"))
    });
    let start = Instant::now();
    let out = host.run(&["rollback", "web", "--reason", "stop that"]);
    out.expect(0);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "the rollback waited {took:?} for a 60 s bake: {out:?}");
    assert_eq!(host.current().as_deref(), Some("1.0.0"));
    let status = host.run(&["status", "web", "--json"]).json()["apps"][0].clone();
    let bad = status["bad"].as_array().unwrap();
    assert!(bad.iter().any(|b| b["version"] == "2.0.0"), "{status:#}");
    // The daemon's next decision holds 2.0.0 as bad.
    wait_for("the daemon to hold 2.0.0 as bad", LIVE, || {
        let st = host.run(&["status", "web", "--json"]).json();
        st["apps"][0]["daemon"]["activity"].as_str().is_some_and(|a| a.contains("2.0.0 is marked bad"))
            || host.current().as_deref() != Some("1.0.0")
    });
    assert_eq!(host.current().as_deref(), Some("1.0.0"), "the daemon brought 2.0.0 back");
    assert!(!host.state_dir().join("cancel").exists());
    assert_eq!(d.stop(), 0);
}
